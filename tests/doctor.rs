//! `netdrift::doctor`: the root test checks the report against independent
//! facts of the running kernel; the others test the pure helpers.
//!
//! The root test runs as root in CI. Elsewhere it fails, saying it needs
//! root, unless NETDRIFT_SKIP_ROOT_TESTS=1 is set.

use std::fs;
use std::path::Path;

use netdrift::doctor::{self, Check, Report};

mod common;
use common::require_root;

fn get<'r>(r: &'r Report, name: &str) -> &'r Check {
    r.check(name).unwrap_or_else(|| panic!("doctor reported no {name:?} line:\n{}", doctor::render_text(r, false)))
}

#[test]
fn doctor_matches_this_kernel() {
    if !require_root() {
        return;
    }
    let start = std::time::Instant::now();
    let r = doctor::run();
    let elapsed = start.elapsed();
    let text = doctor::render_text(&r, false);
    eprintln!("{text}(doctor took {elapsed:?})");

    // Every stable name is reported, with a detail.
    for name in [
        "kernel",
        "btf",
        "lockdown",
        "root",
        "pid_namespace",
        "cap_bpf",
        "cap_perfmon",
        "kallsyms",
        "proc_fd",
        "tracefs",
        "prog:tp_btf",
        "prog:raw_tp",
        "prog:tracepoint",
        "prog:syscall_tracepoint",
        "prog:fentry",
        "prog:kprobe",
        "prog:uprobe",
        "prog:uprobe_multi",
        "map:ringbuf",
        "map:task_storage",
        "helper:task_pt_regs",
        "helper:get_stack",
        "core:epoll_ready_list",
        "tp:inet_sock_set_state",
    ] {
        let c = get(&r, name);
        assert!(!c.detail.trim().is_empty(), "{name} has no detail:\n{text}");
        assert!(r.checks.iter().any(|c| c.name == name), "{name} is not among the checks");
    }
    for name in ["trace", "wake_causes", "socket_identity", "socket_reads", "tcp_state", "handler_probes", "offwake"] {
        let c = get(&r, name);
        assert!(!c.detail.trim().is_empty(), "{name} has no detail:\n{text}");
        assert!(r.features.iter().any(|c| c.name == name), "{name} is not among the features");
    }

    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(r.kernel, release.trim());
    assert!(get(&r, "root").ok, "running as root, yet:\n{text}");
    // What netdrift reads beside its programs, checked by reading it.
    assert_eq!(get(&r, "kallsyms").ok, netdrift::procfs::kallsyms_readable(), "{text}");
    assert_eq!(get(&r, "wake_causes").ok, get(&r, "kallsyms").ok, "{text}");
    assert!(get(&r, "proc_fd").ok, "root reads /proc/1/fd:\n{text}");

    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    assert_eq!(get(&r, "btf").ok, btf, "btf line disagrees with /sys/kernel/btf/vmlinux existing={btf}:\n{text}");

    assert!(get(&r, "prog:tp_btf").ok, "tp_btf must load, attach and fire here:\n{text}");
    assert!(get(&r, "map:ringbuf").ok, "ring buffer must work here:\n{text}");
    assert!(get(&r, "map:task_storage").ok, "task local storage must work here:\n{text}");
    assert!(get(&r, "helper:task_pt_regs").ok, "bpf_task_pt_regs must work here:\n{text}");

    assert!(get(&r, "core:epoll_ready_list").ok, "the epoll ready list must be readable here (BTF is present):\n{text}");

    // kprobe_events exists in tracefs only with CONFIG_KPROBE_EVENTS.
    let tracefs = netdrift::tracefs::ensure_tracefs().ok();
    let kprobes = Path::new("/sys/kernel/debug/kprobes").exists()
        || tracefs.as_ref().is_some_and(|d| d.join("kprobe_events").exists())
        || Path::new("/sys/kernel/tracing/kprobe_events").exists();
    assert_eq!(get(&r, "prog:kprobe").ok, kprobes, "kprobe line disagrees with kprobe support in debugfs/tracefs ({kprobes}):\n{text}");

    // Reported either way; whether it works depends on the kernel.
    assert!(get(&r, "prog:fentry").detail.contains("fentry"), "{text}");

    // Consistency with tracefs: a present sys_enter_epoll_wait tracepoint
    // must be attachable.
    if netdrift::tracefs::has_tracepoint("syscalls", "sys_enter_epoll_wait") {
        assert!(get(&r, "tracefs").ok, "{text}");
        assert!(get(&r, "prog:syscall_tracepoint").ok, "{text}");
    }

    // Features follow from the checks.
    assert_eq!(get(&r, "socket_identity").ok, get(&r, "core:epoll_ready_list").ok);
    assert_eq!(get(&r, "tcp_state").ok, get(&r, "tp:inet_sock_set_state").ok);
    // Handlers attach through multi-uprobe links where the kernel has them.
    let multi = netdrift::probes::features().unwrap().uprobe_multi;
    assert_eq!(get(&r, "handler_probes").ok, get(&r, if multi { "prog:uprobe_multi" } else { "prog:uprobe" }).ok, "{text}");
    if btf {
        let vmlinux = fs::read("/sys/kernel/btf/vmlinux").unwrap();
        assert_eq!(get(&r, "socket_reads").ok, netdrift::probes::btf_has(&vmlinux, "bpf_rdonly_cast"), "{text}");
    }
    let core = ["prog:tp_btf", "map:ringbuf", "map:task_storage", "helper:task_pt_regs", "helper:get_stack", "prog:syscall_tracepoint"];
    assert_eq!(get(&r, "trace").ok, core.iter().all(|n| get(&r, n).ok), "{text}");

    // Every line is rendered, and the JSON form works.
    for c in r.checks.iter().chain(&r.features) {
        assert!(text.contains(&c.name), "{} missing from the text", c.name);
    }
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["kernel"], r.kernel.as_str());
    assert_eq!(json["checks"].as_array().unwrap().len(), r.checks.len());

    assert!(elapsed.as_secs_f64() < 5.0, "doctor took {elapsed:?}");
}

#[test]
fn cap_eff_decoding() {
    let status = "Name:\tcat\nUmask:\t0022\nCapInh:\t0000000000000000\n\
                  CapPrm:\t000001ffffffffff\nCapEff:\t000001fffeffffff\nCapBnd:\t000001ffffffffff\n";
    let mask = doctor::parse_cap_eff(status).expect("CapEff parsed");
    assert_eq!(mask, 0x1fffeffffff);
    assert!(doctor::has_cap(mask, doctor::CAP_BPF));
    assert!(doctor::has_cap(mask, doctor::CAP_PERFMON));
    assert!(doctor::has_cap(mask, doctor::CAP_SYS_ADMIN));
    assert!(!doctor::has_cap(mask, 24), "CAP_SYS_RESOURCE is cleared in this mask");
    assert_eq!((doctor::CAP_SYS_ADMIN, doctor::CAP_PERFMON, doctor::CAP_BPF), (21, 38, 39));

    // An unprivileged process.
    let mask = doctor::parse_cap_eff("CapEff:\t0000000000000000\n").unwrap();
    assert!(!doctor::has_cap(mask, doctor::CAP_BPF));
    // Only CAP_BPF + CAP_PERFMON (e.g. setcap cap_bpf,cap_perfmon+ep).
    let mask = doctor::parse_cap_eff("CapEff:\t000000c000000000").unwrap();
    assert!(doctor::has_cap(mask, doctor::CAP_BPF) && doctor::has_cap(mask, doctor::CAP_PERFMON));
    assert!(!doctor::has_cap(mask, doctor::CAP_SYS_ADMIN));
    assert!(!doctor::has_cap(u64::MAX, 64), "out-of-range capability numbers are never set");

    assert_eq!(doctor::parse_cap_eff("CapPrm:\t0000000000000000\n"), None);
    assert_eq!(doctor::parse_cap_eff("CapEff:\tzz\n"), None);
}

#[test]
fn lockdown_parsing() {
    assert_eq!(doctor::parse_lockdown("[none] integrity confidentiality\n").as_deref(), Some("none"));
    assert_eq!(doctor::parse_lockdown("none [integrity] confidentiality\n").as_deref(), Some("integrity"));
    assert_eq!(doctor::parse_lockdown("none integrity [confidentiality]\n").as_deref(), Some("confidentiality"));
    assert_eq!(doctor::parse_lockdown("none integrity confidentiality\n"), None);
    assert_eq!(doctor::parse_lockdown(""), None);
    assert_eq!(doctor::parse_lockdown("[] x"), None);
}

#[test]
fn render_text_is_aligned_and_says_consequences() {
    let r = Report {
        kernel: "6.1.0-test".into(),
        checks: vec![
            Check { name: "btf".into(), ok: true, detail: "/sys/kernel/btf/vmlinux (5.3 MiB)".into() },
            Check { name: "core:epoll_ready_list".into(), ok: false, detail: "load failed -> socket address unknown".into() },
        ],
        features: vec![Check { name: "trace".into(), ok: true, detail: "core chain".into() }],
    };
    let plain = doctor::render_text(&r, false);
    assert!(plain.contains("6.1.0-test"), "{plain}");
    assert!(!plain.contains('\x1b'), "no colors asked for:\n{plain}");
    let lines: Vec<&str> = plain.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(lines.len(), 3, "{plain}");
    assert!(lines[0].trim_start().starts_with("ok  btf "), "{plain}");
    assert!(lines[1].trim_start().starts_with("no  core:epoll_ready_list "), "{plain}");
    assert!(lines[1].contains("socket address unknown"), "{plain}");
    // Details start in the same column.
    let col = |l: &str, d: &str| l.find(d).unwrap();
    assert_eq!(col(lines[0], "/sys/kernel"), col(lines[1], "load failed"));
    assert_eq!(col(lines[0], "/sys/kernel"), col(lines[2], "core chain"));

    let colored = doctor::render_text(&r, true);
    assert!(colored.contains("\x1b["), "colors asked for:\n{colored}");

    assert_eq!(r.check("trace").map(|c| c.ok), Some(true));
    assert!(r.check("nope").is_none());
}
