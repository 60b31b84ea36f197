//! CLI tier: usage errors (no root needed) and the trace lifetime (root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::prelude::*;
use predicates::prelude::*;

mod common;
use common::require_root;

fn nd() -> Command {
    Command::cargo_bin("netdrift").unwrap()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// One line on stderr, exit code 2, nothing on stdout.
fn usage_error(args: &[&str], needle: &str) {
    let out = nd().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: one line, got: {err}");
    assert!(err.starts_with("netdrift: "), "{err}");
    assert!(err.contains(needle), "{args:?}: {err:?} should contain {needle:?}");
    assert!(out.stdout.is_empty(), "{args:?}: stdout {:?}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn bad_input_matrix() {
    usage_error(&["trace"], "no target");
    let names: Vec<String> = (0..9).map(|i| format!("nd-none-{i}")).collect();
    let nine: Vec<&str> = names.iter().flat_map(|n| ["-c", n.as_str()]).collect();
    usage_error(&[&["trace"][..], &nine].concat(), "at most 8 -c names");
    // One name given nine times is one name.
    let same: Vec<&str> = (0..9).flat_map(|_| ["-c", "nd-none-0"]).collect();
    usage_error(&[&["trace"][..], &same].concat(), "no running process or thread is named \"nd-none-0\"");
    // A name from the traced system quoted in an error stays one inert line.
    usage_error(&["trace", "-p", "1", "--handler", "/no/such\x1b]0;t\x07\nbin:f"], "/no/such\\x1b]0;t\\x07\\x0abin");
    usage_error(&["trace", "-p", "1", "--handler", "exe:f:foo=bar"], "unknown field foo=bar");
    usage_error(&["trace", "-p", "0"], "0 is not a valid id");
    usage_error(&["trace", "-p", "abc"], "not a number");
    usage_error(&["trace", "-p", "4194304"], "no process with pid 4194304");
    usage_error(&["trace", "-t", "4194304"], "no thread with tid 4194304");
    usage_error(&["trace", "-c", "no-such-comm-x"], "no running process or thread is named");
    usage_error(&["trace", "-c", "a-name-longer-than-15"], "1 to 15 bytes");
    usage_error(&["trace", "--ringbuf-size", "3", "-p", "1"], "power of two");
    usage_error(&["trace", "-p", "1", "--", "-5"], "positive number of seconds");
    // Past the limit the message gives, by a fraction too.
    usage_error(&["trace", "-p", "1", "4294967295.5"], "at most 4294967295");
    usage_error(&["trace", "-p", "1", "1e20"], "at most 4294967295");
    usage_error(&["offwake", "-p", "1", "1e20"], "at most 4294967295");
    usage_error(&["trace", "-p", "1", "--idle-ms", "0"], "not in 1..=86400000");
    usage_error(&["trace", "-p", "1", "--idle-ms", "1.5"], "\"1.5\" is not a whole number of milliseconds");
    usage_error(&["trace", "-p", "1", "x"], "\"x\" is not a number of seconds");
    usage_error(&["offwake", "-p", "1", "x"], "\"x\" is not a number of seconds");
    usage_error(&["trace", "--bogus"], "unexpected argument");
    usage_error(&["demo", "--mode", "fast"], "invalid value");
    usage_error(&["demo", "--workers", "0"], "--workers");
    // The HTML file is report's first argument: a duration or an -o NAME.html in its place is refused.
    usage_error(&["report", "-p", "1", "-o", "r.html", "5"], "report 5: the HTML file is the first argument");
    usage_error(&["report", "-p", "1", "summary.txt", "-o", "r.html", "5"], "-o takes the text summary");
}

/// A zombie (exited, not reaped) is no target: one line, exit 2, not a
/// trace that waits for it forever.
#[test]
fn a_zombie_target_is_refused() {
    let mut z = Command::new("true").spawn().unwrap();
    let pid = z.id().to_string();
    let t = Instant::now();
    while !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap().contains(") Z ") {
        assert!(t.elapsed() < Duration::from_secs(5), "true did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    usage_error(&["trace", "-p", &pid, "1"], "has exited (a zombie");
    usage_error(&["trace", "-t", &pid, "1"], "has exited");
    usage_error(&["offwake", "-p", &pid, "1"], "has exited (a zombie");
    z.wait().unwrap();
}

/// netdrift run from a target's shell is not a target itself (it would
/// trace its own output), nor is what runs it there (`sudo`, `timeout`):
/// the shell is, and only that.
#[test]
fn netdrift_is_not_its_own_target() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.jsonl");
    let nd = env!("CARGO_BIN_EXE_netdrift");
    // `; true`: the shell forks `timeout` rather than exec it; timeout forks netdrift.
    let script = format!("timeout 60 {nd} trace -p $$ --json -o {} 1; true", out.display());
    let sh = Command::new("sh").arg("-c").arg(&script).stderr(Stdio::piped()).spawn().unwrap();
    let sh_pid = sh.id();
    let o = sh.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&out);
    assert_eq!(lines[0]["pids"], serde_json::json!([sh_pid]), "the shell only: {}", lines[0]);
    assert!(!lines.iter().any(|l| l["type"] == "task_new" && l["child"]["comm"] == "netdrift"), "netdrift itself joined the targets");
}

/// A file that is not a whole recording: one line naming the file (and the
/// line), exit 2, whatever is wrong with it.
#[test]
fn bad_recordings_are_one_line_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let head = r#"{"type":"netdrift-record","version":1,"start":{"t0_ns":1}}"#;
    let cases: [(&str, &[u8], &str); 7] = [
        ("empty", b"", "line 1: empty file"),
        ("utf8", b"\xff\xfe\n", "line 1: stream did not contain valid UTF-8"),
        ("text", b"hello\n", "line 1: expected value"),
        ("other", b"{\"type\":\"start\"}\n", "line 1: expected type"),
        // Another format's records would be read as something else.
        (
            "v99",
            b"{\"type\":\"netdrift-record\",\"version\":99,\"start\":{\"t0_ns\":1}}\n",
            "recording format version 99, this netdrift reads version 1",
        ),
        ("vtext", b"{\"type\":\"netdrift-record\",\"version\":\"x\",\"start\":{\"t0_ns\":1}}\n", "format version \"x\""),
        ("vnone", b"{\"type\":\"netdrift-record\",\"start\":{\"t0_ns\":1}}\n", "format version missing"),
    ];
    for (name, body, needle) in cases {
        let p = dir.path().join(format!("{name}.ndr"));
        std::fs::write(&p, body).unwrap();
        usage_error(&["analyze", p.to_str().unwrap()], needle);
        usage_error(&["analyze", p.to_str().unwrap()], &format!("{name}.ndr"));
    }
    // Past the first line too.
    let p = dir.path().join("line2.ndr");
    std::fs::write(&p, [head.as_bytes(), b"\n\xff\n"].concat()).unwrap();
    usage_error(&["analyze", p.to_str().unwrap()], "line2.ndr: line 2: stream did not contain valid UTF-8");
    // Cut short (netdrift killed while recording): what it holds, marked incomplete.
    let p = dir.path().join("cut.ndr");
    std::fs::write(&p, [head.as_bytes(), b"\n{\"ts\":12,\"cp"].concat()).unwrap();
    let out = nd().arg("analyze").arg(&p).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("cut.ndr: the recording is incomplete (no end record, its last line cut"), "{stderr}");
    assert!(stdout.contains("recording incomplete after") && stdout.contains("lost: unknown"), "{stdout}");
}

#[test]
fn an_output_cannot_be_another_output_or_the_recording_read() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec.json");
    std::fs::write(&rec, "{}\n").unwrap();
    let rec = rec.to_str().unwrap();
    let html = dir.path().join("r.html");
    let html = html.to_str().unwrap();
    usage_error(&["report", html, "-p", "1", "--perfetto", html, "1"], "given for two outputs");
    usage_error(&["report", html, "-p", "1", "-o", html, "1"], "given for two outputs");
    usage_error(&["report", rec, "--from", rec], "the recording being read");
    // A live trace's flags with --from: named, not ignored.
    usage_error(&["report", html, "--from", rec, "-p", "1", "5"], "drop -p/-t/-c, the duration (they apply to a live trace)");
    let ready = dir.path().join("ready");
    usage_error(&["report", html, "--from", rec, "--ready-file", ready.to_str().unwrap()], "drop --ready-file");
    usage_error(
        &["report", html, "--from", rec, "--idle-ms", "5", "--packets", "--preset", "nginx"],
        "drop --preset, --packets, --idle-ms",
    );
    usage_error(&["report", html, "--from", rec, "--perfetto", rec], "the recording being read");
    usage_error(&["analyze", rec, "-o", rec], "the recording being read");
    usage_error(&["analyze", rec, "--perfetto", rec], "the recording being read");
    // The same files spelled otherwise, and one output as the other's .partial.
    let dir_s = dir.path().to_str().unwrap();
    let rec_dotted = format!("{dir_s}/./sub/../rec.json");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    usage_error(&["analyze", rec, "-o", &rec_dotted], "the recording being read");
    let o = format!("{dir_s}/o.txt");
    let o_other = format!("{dir_s}/sub/../o.txt");
    usage_error(&["analyze", rec, "-o", &o, "--perfetto", &o_other], "are one file");
    let o_partial = format!("{o}.partial");
    usage_error(&["analyze", rec, "-o", &o, "--perfetto", &o_partial], "are one file");
    usage_error(&["analyze", rec, "-o", &o_partial, "--perfetto", &o], "are one file");
    usage_error(&["offwake", "-p", "1", "-o", &o, "--svg", &o], "given for two outputs");
    usage_error(&["offwake", "-p", "1", "-o", &o, "--ready-file", &o_other], "are one file");
    std::fs::remove_dir(dir.path().join("sub")).unwrap();
    // Nothing was written, and the recording is untouched.
    assert!(!std::path::Path::new(html).exists());
    assert_eq!(std::fs::read_to_string(rec).unwrap(), "{}\n");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn thread_given_as_pid_is_refused() {
    // A thread of this test process that is not the main thread.
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let h = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tx.send(unsafe { libc::gettid() } as u32).unwrap();
        let _ = done_rx.recv();
    });
    let tid = rx.recv().unwrap().to_string();
    usage_error(&["trace", "-p", &tid], "is a thread, not a process");
    done_tx.send(()).unwrap();
    h.join().unwrap();
}

#[test]
fn every_command_has_examples_that_fit_80_columns() {
    for cmd in ["trace", "demo", "doctor", "herd", "analyze", "offwake", "report"] {
        let out = nd().args([cmd, "--help"]).env("COLUMNS", "80").output().unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cmd}");
        let ex = s.split_once("EXAMPLES:\n").map(|(_, e)| e).unwrap_or_else(|| panic!("{cmd} --help has no EXAMPLES:\n{s}"));
        for line in ex.lines().filter(|l| !l.trim().is_empty()) {
            // Each line is a command or a comment: clap wrapped none of them.
            let l = line.trim_start();
            assert!(l.starts_with("netdrift ") || l.starts_with('#'), "{cmd}: wrapped example line {line:?}");
            assert!(line.len() <= 80, "{cmd}: example line over 80 columns: {line:?}");
        }
    }
}

#[test]
fn help_has_examples_and_every_flag_documented() {
    let out = nd().args(["trace", "--help"]).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(s.contains("EXAMPLES:"), "{s}");
    for flag in ["--pid", "--tid", "--comm", "--json", "--stacks", "--output-file", "--ready-file", "--ringbuf-size", "[DURATION]"] {
        assert!(s.contains(flag), "--help lacks {flag}: {s}");
    }
}

#[test]
fn not_root_gets_one_line_and_loads_nothing() {
    if !is_root() {
        // Already unprivileged: check directly.
        usage_error(&["trace", "-p", "1", "1"], "needs root");
        return;
    }
    let bin = assert_cmd::cargo::cargo_bin("netdrift");
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("o.jsonl");
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(&bin)
        .args(["trace", "-p", "1", "--json", "-o"])
        .arg(&out_file)
        .arg("1")
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("needs root"), "{err}");
    assert!(!out_file.exists() && std::fs::read_dir(dir.path()).unwrap().next().is_none(), "no file left behind");
}

/// Inside a pid namespace of its own, pids are not the kernel's: every
/// command that loads programs refuses, in one line naming the fix, before
/// loading anything; doctor says why trace cannot run.
#[test]
fn a_child_pid_namespace_is_refused_with_the_fix() {
    if !require_root() {
        return;
    }
    let bin = assert_cmd::cargo::cargo_bin("netdrift");
    let in_ns = |args: &[&str]| {
        Command::new("unshare").args(["--pid", "--fork", "--mount-proc"]).arg(&bin).args(args).output().expect("unshare (util-linux)")
    };
    for args in [&["trace", "-p", "1", "1"][..], &["offwake", "-p", "1", "1"], &["demo", "--connections", "2"]] {
        let out = in_ns(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("child pid namespace") && err.contains("--pid=host"), "{args:?}: {err}");
    }
    let out = in_ns(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("pid_namespace")).unwrap_or_else(|| panic!("no pid_namespace line:\n{text}"));
    assert!(line.trim_start().starts_with("no") && line.contains("--pid=host"), "{line}");
    assert!(text.contains("trace cannot run") && text.contains("pid_namespace failed"), "{text}");
    assert_eq!(out.status.code(), Some(1), "doctor's status says trace cannot run: {text}");

    // The host's pid namespace under another namespace's /proc (a container's
    // mount namespace entered alone): /proc/self is missing, pids would not match.
    let mut holder =
        Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "sleep", "30"]).spawn().expect("unshare (util-linux)");
    std::thread::sleep(Duration::from_millis(300));
    // A host pid that the namespace's /proc does not show: refused for the
    // namespace before it is looked up (not "no process with pid").
    let holder_pid = holder.id().to_string();
    let under_its_proc = |args: &[&str]| {
        Command::new("nsenter").args(["--mount", "--target", &holder_pid]).arg(&bin).args(args).output().expect("nsenter (util-linux)")
    };
    let trace = under_its_proc(&["trace", "-p", &holder_pid, "1"]);
    let doctor = under_its_proc(&["doctor"]);
    let _ = holder.kill();
    let _ = holder.wait();
    let err = String::from_utf8_lossy(&trace.stderr);
    assert_eq!(trace.status.code(), Some(2), "{err}");
    assert!(err.contains("/proc is not netdrift's pid namespace's") && err.contains("--pid=host"), "{err}");
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(text.contains("/proc is another pid namespace's") && !text.contains("run it with sudo"), "{text}");
}

fn wait_for(p: &Path, timeout: Duration, child: &mut std::process::Child) {
    common::wait_ready(p, child, timeout, common::piped_stderr);
}

/// `netdrift trace --json TARGET... --ready-file DIR/ready -o DIR/OUT
/// [DURATION]`, started and attached: (the running tracer, its output path).
fn traced_json(dir: &Path, target: &[&str], out: &str, duration: Option<&str>) -> (std::process::Child, PathBuf) {
    let (ready, out) = (dir.join("ready"), dir.join(out));
    let mut child = nd()
        .args(["trace", "--json"])
        .args(target)
        .arg("--ready-file")
        .arg(&ready)
        .arg("-o")
        .arg(&out)
        .args(duration)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&ready, Duration::from_secs(20), &mut child);
    (child, out)
}

#[test]
fn sigint_ends_with_summary_and_complete_file() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut target = Command::new("sleep").arg("30").spawn().unwrap();
    let (child, out) = traced_json(dir.path(), &["-p", &target.id().to_string()], "out.jsonl", None);
    assert!(!out.exists(), "output is FILE.partial until the end");
    assert!(dir.path().join("out.jsonl.partial").exists());
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let _ = target.kill();
    let _ = target.wait();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "SIGINT exits 0: {err}");
    assert!(err.contains("interrupted"), "{err}");
    let text = std::fs::read_to_string(&out).expect("renamed to the final path");
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "summary");
    assert_eq!(last["reason"], "interrupted");
    assert_eq!(last["lost"]["ringbuf"], 0, "an idle target loses nothing: {last}");
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "start");
}

/// `trace -p` of `sleep SECS` (a child not reaped until the trace ends)
/// ends with it, well before its 30 s duration.
fn trace_ends_with_sleep(secs: &str) {
    let mut target = Command::new("sleep").arg(secs).spawn().unwrap();
    let t = Instant::now();
    let o = nd().args(["trace", "-p", &target.id().to_string(), "30"]).output().unwrap();
    let _ = target.wait();
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{all}");
    assert!(all.contains("target exited"), "{all}");
    assert!(t.elapsed() < Duration::from_secs(10), "ended with the target, not the duration: {all}");
}

/// An unreaped child that exits while netdrift loads (after its check of
/// the targets, before the attach: ~0.4 s here) is a zombie in /proc: gone
/// all the same (it once ran the whole duration, with no record of it).
#[test]
fn a_target_that_exits_while_netdrift_loads_ends_the_trace() {
    if !require_root() {
        return;
    }
    trace_ends_with_sleep("0.15");
}

#[test]
fn target_exit_ends_the_trace() {
    if !require_root() {
        return;
    }
    trace_ends_with_sleep("1");
}

/// A process whose leader thread exits (pthread_exit) while another thread
/// runs is still a target: the trace follows the live thread and ends when
/// the last thread exits: a task_exit per thread, group_dead on the last.
#[test]
fn leader_exit_is_not_process_exit() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = leader_exit_program(dir.path());
    let go = dir.path().join("go");
    let mut target = Command::new(&bin).arg(&go).arg(&go).spawn().unwrap();
    let (child, out) = traced_json(dir.path(), &["-p", &target.id().to_string()], "o.jsonl", Some("30"));
    // The leader exits now; the worker goes on for about 1.5 s.
    let t = Instant::now();
    std::fs::write(&go, "").unwrap();
    let o = child.wait_with_output().unwrap();
    let _ = target.wait();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(t.elapsed() >= Duration::from_millis(1000), "ended before the last thread: {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(20), "ended with the process, not the duration");
    let lines = json_lines(&out);
    assert_eq!(lines.last().unwrap()["reason"], "target exited");
    // One record per thread: the leader's says the process lives on.
    let exits: Vec<&serde_json::Value> = lines.iter().filter(|l| l["type"] == "task_exit").collect();
    assert_eq!(exits.len(), 2, "the leader, then the worker: {exits:?}");
    assert_eq!((&exits[0]["group_dead"], &exits[1]["group_dead"]), (&false.into(), &true.into()), "{exits:?}");
    assert_eq!(exits[0]["task"]["tid"], exits[0]["task"]["pid"], "the leader first: {exits:?}");
    assert_ne!(exits[1]["task"]["tid"], exits[1]["task"]["pid"], "the last thread was the worker, not the leader");
    // The worker was still traced after the leader left: its timer wake-ups.
    let worker = exits[1]["task"]["tid"].clone();
    let wakes = lines.iter().filter(|l| l["type"] == "wake" && l["target"]["tid"] == worker).count();
    assert!(wakes >= 5, "the worker's wake-ups after the leader's exit: {wakes}");
}

/// A program whose worker naps 15 times 100 ms once the file named by its
/// first argument exists, and whose leader thread calls pthread_exit once
/// the file named by its second exists (at once without one).
fn leader_exit_program(dir: &Path) -> PathBuf {
    let src = dir.join("leader_exit.c");
    std::fs::write(
        &src,
        r#"#include <pthread.h>
#include <unistd.h>
/* The worker's 1.5 s count from `go`, not from the start: a slow attach must not outlast it. */
static void *worker(void *go) {
    while (go && access(go, F_OK) != 0) usleep(10000);
    for (int i = 0; i < 15; i++) usleep(100000);
    return go;
}
int main(int argc, char **argv) {
    pthread_t t;
    pthread_create(&t, 0, worker, argc > 1 ? argv[1] : 0);
    while (argc > 2 && access(argv[2], F_OK) != 0) usleep(10000);
    pthread_exit(0);
}
"#,
    )
    .unwrap();
    let bin = dir.join("leader_exit");
    let cc = Command::new("cc").arg("-O1").arg("-pthread").arg("-o").arg(&bin).arg(&src).output().expect("cc (apt-get install gcc)");
    assert!(cc.status.success(), "{}", String::from_utf8_lossy(&cc.stderr));
    bin
}

/// The same process traced after its leader already exited: a zombie
/// leader, a live worker. The targets settled after the attach keep it.
#[test]
fn a_process_whose_leader_already_exited_is_traced() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = leader_exit_program(dir.path());
    let go = dir.path().join("go");
    let mut target = Command::new(&bin).arg(&go).spawn().unwrap();
    let pid = target.id();
    let t = Instant::now();
    while !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ") {
        assert!(t.elapsed() < Duration::from_secs(5), "the leader did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (child, out) = traced_json(dir.path(), &["-p", &pid.to_string()], "o.jsonl", Some("30"));
    // The worker's naps from now: an attach slower than them (a loaded
    // machine) must not find it gone.
    std::fs::write(&go, "").unwrap();
    let o = child.wait_with_output().unwrap();
    let _ = target.wait();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&out);
    let wakes = lines.iter().filter(|l| l["type"] == "wake" && l["target"]["pid"] == pid).count();
    assert!(wakes >= 3, "the worker's wake-ups: {wakes}");
}

#[test]
fn duration_and_doctor() {
    if !require_root() {
        return;
    }
    let mut target = Command::new("sleep").arg("30").spawn().unwrap();
    nd().args(["trace", "-p", &target.id().to_string(), "1"]).assert().success().stdout(predicate::str::contains("duration reached"));
    let _ = target.kill();
    let _ = target.wait();
    nd().arg("doctor").assert().success().stdout(predicate::str::contains("core:epoll_ready_list"));
    let out = nd().args(["doctor", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["checks"].as_array().unwrap().iter().any(|c| c["name"] == "prog:tp_btf" && c["ok"] == true));
}

/// Run a binary just written. A fork by another test thread while the file
/// was open for writing holds it open in that child until it execs: ETXTBSY.
fn spawn_fresh_binary(bin: &Path, arg: &str) -> std::process::Child {
    let mut tries = 0;
    loop {
        match Command::new(bin).arg(arg).spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r.expect("spawn"),
        }
    }
}

fn json_lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn pid_follows_children_forked_later() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The shell forks its child only after the trace has started.
    let mut sh = Command::new("sh").args(["-c", "read x; sleep 0.3; exit 0"]).stdin(Stdio::piped()).spawn().unwrap();
    let (child, out) = traced_json(dir.path(), &["-p", &sh.id().to_string()], "o.jsonl", Some("20"));
    use std::io::Write;
    sh.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let _ = sh.wait();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&out);
    let forks: Vec<_> = lines.iter().filter(|l| l["type"] == "task_new" && l["reason"] == 1).collect();
    assert!(forks.iter().any(|l| l["child"]["comm"] == "sleep" || l["task"]["pid"] == sh.id()), "fork of the target followed: {forks:?}");
    assert_eq!(lines.last().unwrap()["reason"], "target exited", "the trace ends with the target");
}

#[test]
fn comm_matches_running_and_exec_later() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A binary with a distinctive name gives a distinctive comm.
    let bin = dir.path().join("ndcommprobe");
    std::fs::copy("/bin/sleep", &bin).unwrap();
    let mut first = spawn_fresh_binary(&bin, "30");
    std::thread::sleep(Duration::from_millis(100));
    let (child, out) = traced_json(dir.path(), &["-c", "ndcommprobe"], "o.jsonl", Some("3"));
    let mut second = spawn_fresh_binary(&bin, "0.2");
    let _ = second.wait();
    // Every process of that name is gone: a -c trace goes on (another may start).
    let _ = first.kill();
    let _ = first.wait();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&out);
    assert_eq!(lines.last().unwrap()["reason"], "duration reached", "ran its 3 s after its targets exited");
    assert!(lines[0]["pids"].as_array().unwrap().contains(&serde_json::json!(first.id())), "running process matched: {}", lines[0]);
    assert!(
        lines.iter().any(|l| l["type"] == "task_new" && l["reason"] == 2 && l["child"]["pid"] == second.id()),
        "exec of the name joined the targets"
    );
}

/// `herd -p PID --no-children` that sees no listen socket says where the
/// listeners may be (nginx's master waits on none; its workers do).
#[test]
fn an_empty_herd_without_children_points_at_them() {
    if !require_root() {
        return;
    }
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id().to_string();
    let run = |extra: &[&str]| {
        let out = nd().args(["herd", "-p", &pid]).args(extra).arg("0.5").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let (without, with) = (run(&["--no-children"]), run(&[]));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(without.contains("no listen-socket wake-ups seen (with --no-children: the listen sockets may be"), "{without}");
    assert!(with.contains("no listen-socket wake-ups seen\n") && !with.contains("--no-children"), "{with}");
}

/// `-c NAME --wait` starts with no process of that name and traces the one
/// started later: redis-server under another name serves three clients,
/// and their three connections are the accepts seen, by their ports.
#[test]
fn comm_wait_traces_a_server_started_later() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("ndwaitredis");
    std::fs::copy("/usr/bin/redis-server", &bin).expect("redis-server (apt-get install redis-server)");
    usage_error(&["trace", "-c", "ndwaitredis", "1"], "add --wait");
    let (mut tracer, out) = traced_json(dir.path(), &["-c", "ndwaitredis", "--wait"], "o.jsonl", None);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut redis = Command::new(&bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the redis copy");
    let t = Instant::now();
    let connect = || std::net::TcpStream::connect(("127.0.0.1", port));
    let mut ports = Vec::new();
    while ports.len() < 3 {
        match connect() {
            Ok(mut c) => {
                use std::io::{Read, Write};
                ports.push(c.local_addr().unwrap().port());
                c.write_all(b"PING\r\n").unwrap();
                let mut buf = [0u8; 7];
                c.read_exact(&mut buf).unwrap();
                assert_eq!(&buf, b"+PONG\r\n");
            }
            Err(_) if ports.is_empty() && t.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("redis copy on port {port}: {e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(tracer.id() as libc::pid_t, libc::SIGINT) };
    let st = tracer.wait().unwrap();
    let _ = redis.kill();
    let _ = redis.wait();
    assert!(st.success(), "{}", common::piped_stderr(&mut tracer));
    let lines = json_lines(&out);
    assert_eq!(lines[0]["pids"], serde_json::json!([]), "nothing matched at the start: {}", lines[0]);
    let pid = serde_json::json!(redis.id());
    assert!(lines.iter().any(|l| l["type"] == "task_new" && l["reason"] == 2 && l["child"]["pid"] == pid), "its exec made it a target");
    let mut got: Vec<u64> = lines
        .iter()
        .filter(|l| l["type"] == "accept" && l["task"]["pid"] == pid && l["ret"].as_i64().unwrap_or(-1) >= 0)
        .filter_map(|l| l["peer"]["remote"].as_str()?.rsplit(':').next()?.parse().ok())
        .collect();
    got.sort_unstable();
    let mut want: Vec<u64> = ports.iter().map(|&p| p as u64).collect();
    want.sort_unstable();
    assert_eq!(got, want, "one accept per client, by the client's port");
}

/// A recording replays with the trace's own --idle-ms: a chain that waits
/// 500 ms for its thread is closed as incomplete at 100 ms, not at 2 s.
#[test]
fn analyze_replays_with_the_recorded_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let task = r#""task":{"pid":10,"tid":10,"comm":"worker"}"#;
    let t0 = 1_000_000u64;
    let t1 = t0 + 500_000_000;
    let run = |idle: &str| {
        let rec = dir.path().join(format!("run{idle}.ndr"));
        let lines = [
            format!(
                r#"{{"type":"netdrift-record","version":1,"start":{{"t0_ns":1000,"tids":[10],"pids":[],"comms":[],"handlers":[],"notes":[],"features":{{}},"packets":false,"epoll_ctl":false,"ringbuf_bytes":8388608,"version":"0"{idle}}}}}"#
            ),
            format!(
                r#"{{"ts":{t0},"cpu":0,"task":{{"pid":0,"tid":0,"comm":"swapper/0"}},"type":"wake","target":{{"pid":10,"tid":10,"comm":"worker"}},"sock_seq":0,"stack":[],"target_cpu":0,"waker_is_kthread":false,"target_on_rq":false,"cause":"timer","context":"idle_irq","via_epoll":false}}"#
            ),
            format!(
                r#"{{"ts":{t1},"cpu":0,{task},"type":"switch_in","runnable_ts":{t0},"prev_cpu":0,"after_preempt":false,"prev_tid":0,"prev_comm":"swapper/0"}}"#
            ),
            format!(r#"{{"ts":{},"cpu":0,{task},"type":"epoll_exit","enter_ts":0,"epfd":3,"ret":0,"syscall":"epoll_wait","events":[]}}"#, t1 + 1000),
            format!(r#"{{"ts":{},"cpu":0,{task},"type":"epoll_enter","epfd":3,"maxevents":8,"syscall":"epoll_wait"}}"#, t1 + 2000),
            r#"{"type":"netdrift-record-end","reason":"done","duration_s":1.0,"lost":{"ringbuf":0,"stack":0,"map_full":0,"user_read":0,"per_cpu":[]},"decode_errors":0,"ringbuf_mib":8}"#.to_string(),
        ];
        std::fs::write(&rec, lines.join("\n") + "\n").unwrap();
        let out = nd().args(["analyze", "--json"]).arg(&rec).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let summary = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
            .find(|v| v["type"] == "summary")
            .expect("a summary line");
        (summary["stats"]["chains"].as_u64().unwrap(), summary["stats"]["chains_incomplete"].as_u64().unwrap())
    };
    // Recorded without idle_ms (older versions): the 2 s default; the chain completes.
    assert_eq!(run(""), (1, 0));
    // Text to a file: the file holds the chains and the summary with its
    // losses (the terminal gets the summary too); --herd, the summary alone.
    let rec = dir.path().join("run.ndr");
    for (extra, chains) in [(None, true), (Some("--herd"), false)] {
        let txt = dir.path().join("out.txt");
        let out = nd().arg("analyze").arg(&rec).args(extra).arg("-o").arg(&txt).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let file = std::fs::read_to_string(&txt).unwrap();
        assert!(file.contains("1 chains (0 incomplete)") && file.contains("lost: 0 records"), "{extra:?}: {file}");
        assert_eq!(file.contains("chain 1 "), chains, "{extra:?}: {file}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("1 chains (0 incomplete)"));
    }
    // Two outputs thrown away do not collide.
    let out = nd().arg("analyze").arg(&rec).args(["-o", "/dev/null", "--perfetto", "/dev/null"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A recording cut inside its start line (killed within its first
    // second) is said to be one, not "not a recording".
    let head = std::fs::read_to_string(&rec).unwrap();
    let cut = dir.path().join("cut.ndr");
    std::fs::write(&cut, &head[..60]).unwrap();
    let out = nd().arg("analyze").arg(&cut).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cut inside its first line"), "{err}");
    // A full standard output is named as such: status 1, one line.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
    let out = nd().arg("analyze").arg(&rec).stdout(full).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.lines().any(|l| l.starts_with("netdrift: writing to standard output: No space left")), "{err}");
    assert_eq!(run(r#","idle_ms":2000"#), (1, 0));
    // Recorded with --idle-ms 100: closed before its thread ran.
    assert_eq!(run(r#","idle_ms":100"#), (1, 1));
}

/// `netdrift analyze --json` of a recording of `events` (pid 10 traced), written to `rec`.
fn analyze_events(rec: &Path, events: &[netdrift::events::Event]) -> Vec<serde_json::Value> {
    let mut body = r#"{"type":"netdrift-record","version":1,"start":{"t0_ns":1000,"tids":[],"pids":[10],"comms":[],"handlers":[],"notes":[],"features":{},"packets":false,"epoll_ctl":false,"ringbuf_bytes":8388608,"version":"0"}}"#.as_bytes().to_vec();
    body.push(b'\n');
    for e in events {
        netdrift::trace::write_record_event(&mut body, e).unwrap();
    }
    body.extend_from_slice(br#"{"type":"netdrift-record-end","reason":"done","duration_s":1.0,"lost":{"ringbuf":0,"stack":0,"map_full":0,"user_read":0,"per_cpu":[]},"decode_errors":0,"ringbuf_mib":8}"#);
    body.push(b'\n');
    std::fs::write(rec, body).unwrap();
    let out = nd().args(["analyze", "--json"]).arg(rec).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

/// A herd whose first wake-up goes to a worker still handling the last
/// connection: that wake-up stays in its hop (no socket), the socket event
/// waits, and the second worker's wake-up joins it.
#[test]
fn analyze_keeps_a_herds_socket_when_its_first_wake_up_finds_a_handling_worker() {
    use netdrift::events::{EpEvent, Event, Kind, ReadyHook, Syscall, Task};
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("run.ndr");
    let task = |tid: u32, comm: &str| Task { pid: if tid == 20 { 20 } else { 10 }, tid, comm: comm.into() };
    let (w0, w1, client) = (task(11, "worker_0"), task(12, "worker_1"), task(20, "client"));
    let listen = common::tcp_sock(0xaaa, 500, 10, "127.0.0.1:8080", "0.0.0.0:0");
    let ev = |ts: u64, cpu: u32, t: &Task, kind: Kind| Event { ts, cpu, task: t.clone(), kind };
    let ready = |seq| Kind::SockReady { sock: listen.clone().into(), seq, hook: ReadyHook::EpollItem, new_state: None, packet: None };
    let wake = |target: &Task, seq| common::socket_wake(target, seq, vec![]);
    let switch_in =
        |runnable_ts| Kind::SwitchIn { runnable_ts, prev_cpu: 0, after_preempt: false, prev_tid: 0, prev_comm: "swapper".into() };
    let exit = |epfd| Kind::EpollExit {
        enter_ts: 0,
        epfd,
        ret: 1,
        syscall: Syscall::EpollWait,
        events: vec![EpEvent { events: 1, data: 3, fd: None }],
    };
    let enter = |epfd| Kind::EpollEnter { epfd, maxevents: 64, syscall: Syscall::EpollWait };
    let gap = Kind::RecordsLost { records: 3 };
    let nobody = Task { pid: 0, tid: 0, comm: "".into() };
    // `between` comes on the waker's CPU between the two wake-ups of the second connection.
    let events = |between: Option<Event>| {
        let mut evs = vec![
            ev(1000, 1, &client, ready(1)),
            ev(1100, 1, &client, wake(&w0, 1)),
            ev(1500, 0, &w0, switch_in(1100)),
            ev(1600, 0, &w0, exit(4)),
            // w0 is handling its connection when the next one arrives.
            ev(2000, 1, &client, ready(2)),
            ev(2050, 1, &client, wake(&w0, 2)),
        ];
        evs.extend(between);
        evs.extend([
            ev(2100, 1, &client, wake(&w1, 2)),
            ev(2500, 1, &w1, switch_in(2100)),
            ev(2600, 1, &w1, exit(5)),
            ev(2700, 1, &w1, enter(5)),
            ev(2800, 0, &w0, enter(4)),
        ]);
        evs
    };
    let analyze = |events: &[Event]| analyze_events(&rec, events);

    // Another record of the waker's CPU comes between: the socket event is left
    // out, and w1's wake-up, which still carries it, points to nothing written.
    let lines = analyze(&events(Some(ev(2060, 1, &client, Kind::Close { fd: 9, sock: None }))));
    let of = |t: &str| lines.iter().filter(|e| e["type"] == t).collect::<Vec<_>>();
    assert_eq!(of("sock_ready").len(), 1, "{:#?}", of("sock_ready"));
    assert!(of("wake").iter().all(|w| w["sock_seq"] != 2), "no wake-up names the left-out event: {:#?}", of("wake"));
    assert_eq!(of("summary")[0]["stats"]["sockets_disproved"], 1);

    // Not the CPU's next record, so the herd still joins: a gap marker (the
    // chain then spans the gap), and the epoll_enter a waker writes for the
    // next thread's call, which carries that call's CPU.
    let lines = analyze(&events(Some(ev(2060, 1, &nobody, gap))));
    let of = |t: &str| lines.iter().filter(|e| e["type"] == t).collect::<Vec<_>>();
    assert_eq!(of("records_lost").len(), 1);
    assert_eq!(of("sock_ready").len(), 2, "{:#?}", of("sock_ready"));
    assert_eq!(of("summary")[0]["stats"]["chains_records_lost"], 2, "w0's open chain and the held one: {}", of("summary")[0]);
    let lines = analyze(&events(Some(ev(2060, 1, &w1, enter(5)))));
    let of = |t: &str| lines.iter().filter(|e| e["type"] == t).collect::<Vec<_>>();
    assert_eq!(of("sock_ready").len(), 2, "{:#?}", of("sock_ready"));
    assert_eq!(of("summary")[0]["stats"]["sockets_disproved"], 0);

    let lines = analyze(&events(None));
    let of = |t: &str| lines.iter().filter(|e| e["type"] == t).collect::<Vec<_>>();
    let ready = of("sock_ready");
    assert_eq!(ready.len(), 2, "both connections' socket events are written: {ready:#?}");
    let wakes = of("wake");
    assert_eq!(wakes.len(), 3);
    assert_eq!((&wakes[1]["sock_seq"], &wakes[1]["chain"]), (&0.into(), &wakes[0]["chain"]), "w0's wake-up stays in its hop: {}", wakes[1]);
    assert_eq!(wakes[2]["chain"], ready[1]["chain"], "w1's wake-up joins the second connection: {}", wakes[2]);
    assert_eq!(wakes[2]["sock_seq"], 2);
    let summary = of("summary");
    assert_eq!(summary[0]["stats"]["sockets_disproved"], 0, "{}", summary[0]);
    assert_eq!(summary[0]["stats"]["chains"], 2, "{}", summary[0]);
}

/// A socket event its wake-up's stack disproves (a timer woke the thread
/// right after a state change on that CPU) is left out of the JSON stream,
/// counted, and the wake-up points to no socket; one that holds is kept.
#[test]
fn analyze_leaves_out_a_socket_event_its_wake_up_disproves() {
    let dir = std::env::temp_dir().join(format!("netdrift-disproved-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rec = dir.join("run.ndr");
    let task = r#""task":{"pid":0,"tid":0,"comm":"swapper/0"}"#;
    let sock = |port: u16, state: u8| {
        format!(
            r#"{{"sk":"0xffff8881{port:08x}","ino":{port},"netns":1,"family":2,"protocol":6,"local":"127.0.0.1:8080","remote":"127.0.0.1:{port}","state":{state}}}"#
        )
    };
    let wake = |ts: u64, cpu: u32, seq: u64, cause: &str| {
        format!(
            r#"{{"ts":{ts},"cpu":{cpu},{task},"type":"wake","target":{{"pid":10,"tid":{},"comm":"worker"}},"sock_seq":{seq},"stack":[],"target_cpu":0,"waker_is_kthread":false,"target_on_rq":false,"cause":"{cause}","context":"softirq_on_irq_exit","via_epoll":false}}"#,
            10 + cpu
        )
    };
    let lines = [
        r#"{"type":"netdrift-record","version":1,"start":{"t0_ns":1000,"tids":[10,11],"pids":[],"comms":[],"handlers":[],"notes":[],"features":{},"packets":false,"epoll_ctl":false,"ringbuf_bytes":8388608,"version":"0"}}"#.to_string(),
        // Records of two CPUs interleave: each socket event waits for its own CPU's next.
        format!(r#"{{"ts":2000,"cpu":0,{task},"type":"sock_ready","sock":{},"seq":8192,"hook":"inet_sock_set_state","new_state":8}}"#, sock(40001, 8)),
        format!(r#"{{"ts":2050,"cpu":1,{task},"type":"sock_ready","sock":{},"seq":8193,"hook":"io_wait"}}"#, sock(40002, 1)),
        wake(2100, 0, 8192, "timer"),
        wake(2150, 1, 8193, "socket_readable"),
        r#"{"type":"netdrift-record-end","reason":"done","duration_s":1.0,"lost":{"ringbuf":0,"stack":0,"map_full":0,"user_read":0,"per_cpu":[]},"decode_errors":0,"ringbuf_mib":8}"#.to_string(),
    ];
    std::fs::write(&rec, lines.join("\n") + "\n").unwrap();
    let out = nd().args(["analyze", "--json"]).arg(&rec).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let of = |t: &str| events.iter().filter(|e| e["type"] == t).collect::<Vec<_>>();
    let ready = of("sock_ready");
    assert_eq!(ready.len(), 1, "only the socket event its wake-up confirms: {ready:#?}");
    assert_eq!(ready[0]["hook"], "io_wait");
    let wakes = of("wake");
    assert_eq!(wakes.len(), 2);
    assert_eq!((&wakes[0]["cause"], &wakes[0]["sock_seq"]), (&"timer".into(), &0.into()), "{}", wakes[0]);
    assert_eq!(wakes[1]["chain"], ready[0]["chain"], "the confirmed one is joined");
    let summary = of("summary");
    assert_eq!(summary[0]["stats"]["sockets_disproved"], 1, "{}", summary[0]);

    // -o /dev/null writes the device, and leaves it one (not a file renamed over it).
    let out = nd().args(["analyze", "--json", "-o", "/dev/null"]).arg(&rec).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty());
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device(), "/dev/null is still the device");
    assert!(!std::path::Path::new("/dev/null.partial").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// An output path that is a symbolic link: one into /proc/PID/fd (as
/// /dev/stdout is) is written through, so a shell's `> out.txt` gets the
/// output and the link stays; any other link keeps pointing at the file it
/// names, which is the one replaced.
#[test]
fn an_output_through_a_symbolic_link_leaves_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("m.ndr");
    let lines = [
        r#"{"type":"netdrift-record","version":1,"start":{"pids":[],"tids":[],"comms":[],"t0_ns":0,"version":"0.1.0"}}"#,
        r#"{"type":"netdrift-record-end","reason":"done","duration_s":1.0,"lost":{"ringbuf":0,"stack":0,"map_full":0,"user_read":0,"per_cpu":[]},"decode_errors":0,"ringbuf_mib":8}"#,
    ];
    std::fs::write(&rec, lines.join("\n") + "\n").unwrap();
    let (stdout_link, out, real, link) =
        (dir.path().join("stdout"), dir.path().join("out.txt"), dir.path().join("real.json"), dir.path().join("link.json"));
    std::os::unix::fs::symlink("/proc/self/fd/1", &stdout_link).unwrap();
    for _ in 0..2 {
        let o = std::fs::OpenOptions::new().create(true).append(true).open(&out).unwrap();
        let r = nd().args(["analyze", "--json", "-o"]).arg(&stdout_link).arg(&rec).stdout(o).output().unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    assert!(std::fs::symlink_metadata(&stdout_link).unwrap().file_type().is_symlink(), "the link was replaced");
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().filter(|l| l.contains(r#""type":"summary""#)).count(), 2, "appended, as the shell's >> asks: {text}");
    assert!(!dir.path().join("stdout.partial").exists() && !dir.path().join("fd").exists());

    std::fs::write(&real, "old\n").unwrap();
    std::os::unix::fs::symlink("real.json", &link).unwrap();
    let r = nd().args(["analyze", "--json", "-o"]).arg(&link).arg(&rec).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
    assert!(std::fs::read_to_string(&real).unwrap().contains(r#""type":"summary""#), "the file it names has the output");
    assert!(!dir.path().join("link.json.partial").exists() && !dir.path().join("real.json.partial").exists());
}

/// A state-change guess confirmed by one wake-up (a reader woken by the
/// reset) is carried, within the herd gap, by a timer wake-up of another
/// thread interrupting the same waker on that CPU: the timer's cause
/// disproves it, so that wake-up names no socket event.
#[test]
fn analyze_drops_a_socket_event_a_later_wake_ups_cause_disproves() {
    use netdrift::events::{Cause, Event, Kind, ReadyHook, Task, WakerContext};
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("run.ndr");
    let task = |pid: u32, tid: u32, comm: &str| Task { pid, tid, comm: comm.into() };
    let (reader, sleeper, client) = (task(10, 11, "reader"), task(10, 12, "sleeper"), task(20, 20, "client"));
    let conn = common::tcp_sock(0xbbb, 501, 7, "127.0.0.1:8080", "127.0.0.1:40000");
    let wake = |target: &Task, cause, context| {
        let mut k = common::socket_wake(target, 5, vec![]);
        if let Kind::Wake { cause: c, context: x, via_epoll, stack_reused, .. } = &mut k {
            (*c, *x, *via_epoll, *stack_reused) = (Some(cause), Some(context), false, cause == Cause::Timer);
        }
        k
    };
    let ev = |ts: u64, t: &Task, kind: Kind| Event { ts, cpu: 0, task: t.clone(), kind };
    let events = [
        ev(
            1000,
            &client,
            Kind::SockReady { sock: conn.into(), seq: 5, hook: ReadyHook::InetSockSetState, new_state: Some(7), packet: None },
        ),
        ev(1100, &client, wake(&reader, Cause::SocketState, WakerContext::Process)),
        ev(1400, &client, wake(&sleeper, Cause::Timer, WakerContext::Irq)),
    ];
    let lines = analyze_events(&rec, &events);
    let wake_of = |comm: &str| lines.iter().find(|e| e["type"] == "wake" && e["target"]["comm"] == comm).expect("its wake-up").clone();
    assert_eq!(wake_of("reader")["sock_seq"], 5, "the reset's own wake-up keeps it");
    let timer = wake_of("sleeper");
    assert_eq!(timer["sock_seq"], 0, "{timer}");
    assert_ne!(timer["chain"], wake_of("reader")["chain"], "{timer}");
}
