//! `netdrift doctor`: what this kernel and this process can really do.
//!
//! Every program-type line is verified by loading (and where meaningful
//! attaching and firing) a tiny program from `src/bpf/probe.bpf.c`, one fresh
//! skeleton per check with only that program autoloaded; nothing is guessed
//! from the kernel version. A failing check is data, never a panic: [`run`]
//! always returns a [`Report`].

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::net::{TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, PrintCallback, PrintLevel, ProgramMut, RingBufferBuilder, UprobeOpts};

use crate::probe_skel::{ProbeSkel, ProbeSkelBuilder};
use crate::tracefs;

/// Capability numbers (include/uapi/linux/capability.h).
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
const SECURITYFS: &str = "/sys/kernel/security";
/// How long a check lets its program run before looking at the counters.
const SETTLE: Duration = Duration::from_millis(10);

/// One line of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    /// Stable identifier, e.g. `prog:tp_btf`.
    pub name: String,
    pub ok: bool,
    /// What was found; when not ok, also what that means for netdrift.
    pub detail: String,
}

/// Everything `netdrift doctor` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// `uname -r`.
    pub kernel: String,
    /// Facts and program-type probes, in the order they ran.
    pub checks: Vec<Check>,
    /// What the checks mean for netdrift's features.
    pub features: Vec<Check>,
}

impl Report {
    /// The check (or, failing that, the feature) named `name`.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().chain(self.features.iter()).find(|c| c.name == name)
    }

    /// That check or feature was found and holds.
    pub fn ok(&self, name: &str) -> bool {
        self.check(name).is_some_and(|c| c.ok)
    }
}

impl Check {
    fn new(name: &str, ok: bool, detail: impl Into<String>) -> Self {
        Check { name: name.to_string(), ok, detail: detail.into() }
    }
    fn pass(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, true, detail)
    }
    /// A failed check: what happened, then what it means.
    fn fail(name: &str, what: impl AsRef<str>, consequence: &str) -> Self {
        Self::new(name, false, format!("{} -> {consequence}", what.as_ref()))
    }
}

/// Checks whose failure does not matter to netdrift (it never uses them).
const INFORMATIONAL: &[&str] = &["prog:raw_tp", "prog:fentry", "prog:kprobe", "prog:uprobe", "prog:uprobe_multi"];

// ---------------------------------------------------------------------------
// Pure helpers (unit-tested without root).

/// The `CapEff:` mask of a `/proc/<pid>/status` text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Whether capability number `cap` is set in `mask`.
pub fn has_cap(mask: u64, cap: u32) -> bool {
    cap < 64 && mask & (1u64 << cap) != 0
}

/// The selected mode of `/sys/kernel/security/lockdown` (the word in
/// brackets, e.g. `none [integrity] confidentiality` -> `integrity`).
pub fn parse_lockdown(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let len = text[start..].find(']')?;
    let mode = text[start..start + len].trim();
    (!mode.is_empty()).then(|| mode.to_string())
}

/// `(major, minor)` of a kernel release such as `6.18.44-fc-v669`.
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

// ---------------------------------------------------------------------------
// libbpf output capture: load failures make libbpf print warnings (and the
// verifier log) to stderr; during doctor they go to a buffer instead, and the
// useful line ends up in the check's detail.

static LIBBPF_LOG: Mutex<String> = Mutex::new(String::new());
/// One doctor at a time: the libbpf print callback is process-wide.
static RUN_LOCK: Mutex<()> = Mutex::new(());

fn capture_libbpf(_level: PrintLevel, msg: String) {
    if let Ok(mut log) = LIBBPF_LOG.lock() {
        if log.len() < 64 * 1024 {
            log.push_str(&msg);
        }
    }
}

fn take_libbpf_log() -> String {
    LIBBPF_LOG.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default()
}

/// Routes libbpf's print to the buffer until dropped, then restores it.
struct QuietLibbpf {
    prev: Option<(PrintLevel, PrintCallback)>,
}

impl QuietLibbpf {
    fn new() -> Self {
        take_libbpf_log();
        let prev = libbpf_rs::set_print(Some((PrintLevel::Warn, capture_libbpf as PrintCallback)));
        QuietLibbpf { prev }
    }
}

impl Drop for QuietLibbpf {
    fn drop(&mut self) {
        libbpf_rs::set_print(self.prev.take());
        take_libbpf_log();
    }
}

/// The most telling libbpf line of a failure: the first warning about the
/// program itself, plus the last line of a verifier log, if any. (Generic
/// lines such as the RLIMIT_MEMLOCK hints libbpf prints on any EPERM are
/// left out: they mislead more than they help.)
fn libbpf_reason(log: &str, prog: &str) -> Option<String> {
    let mut in_verifier_log = false;
    let mut verifier_last = None;
    let mut first = None;
    let prefix = format!("prog '{prog}': ");
    for line in log.lines() {
        let line = line.trim();
        if line.contains("-- BEGIN PROG LOAD LOG --") {
            in_verifier_log = true;
            continue;
        }
        if line.contains("-- END PROG LOAD LOG --") {
            in_verifier_log = false;
            continue;
        }
        if in_verifier_log {
            if !line.is_empty() && !line.starts_with("processed ") {
                verifier_last = Some(line.to_string());
            }
            continue;
        }
        let text = line.strip_prefix("libbpf: ").unwrap_or(line);
        if first.is_none() && text.starts_with(&prefix) {
            first = Some(text[prefix.len()..].to_string());
        }
    }
    match (first, verifier_last) {
        (Some(f), Some(v)) => Some(format!("{f} (verifier: {v})")),
        (Some(f), None) => Some(f),
        (None, Some(v)) => Some(format!("verifier: {v}")),
        (None, None) => None,
    }
}

fn bpf_error(e: &libbpf_rs::Error, prog: &str) -> String {
    let log = take_libbpf_log();
    let base = format!("{e:#}");
    match libbpf_reason(&log, prog) {
        Some(reason) if !base.contains(&reason) => format!("{base} (libbpf: {reason})"),
        _ => base,
    }
}

// ---------------------------------------------------------------------------
// Host facts.

fn uname() -> (String, String) {
    // SAFETY: utsname is plain old data, zero is a valid value; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        return (release.trim().to_string(), std::env::consts::ARCH.to_string());
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (field(&u.release), field(&u.machine))
}

fn check_kernel(release: &str, machine: &str) -> Check {
    match parse_kernel_version(release) {
        Some((ma, mi)) => Check::pass("kernel", format!("Linux {release} ({machine}), version {ma}.{mi}")),
        None => Check::pass("kernel", format!("Linux {release} ({machine}), version not parsable")),
    }
}

fn check_btf() -> Check {
    match fs::metadata(BTF_PATH) {
        Ok(m) if m.len() > 0 => match fs::File::open(BTF_PATH) {
            Ok(_) => Check::pass("btf", format!("{BTF_PATH} ({:.1} MiB)", m.len() as f64 / (1024.0 * 1024.0))),
            Err(e) => Check::fail("btf", format!("{BTF_PATH} exists but cannot be read: {e}"), "no CO-RE or tp_btf: netdrift cannot run"),
        },
        Ok(_) => Check::fail("btf", format!("{BTF_PATH} is empty"), "no CO-RE or tp_btf: netdrift cannot run"),
        Err(e) => Check::fail(
            "btf",
            format!("{BTF_PATH}: {e}"),
            "no CO-RE or tp_btf: netdrift cannot run (build the kernel with CONFIG_DEBUG_INFO_BTF=y)",
        ),
    }
}

fn mount_fs(fstype: &str, target: &str, flags: libc::c_ulong) -> std::io::Result<()> {
    let src = CString::new("none").expect("no NUL");
    let tgt = CString::new(target).map_err(std::io::Error::other)?;
    let ty = CString::new(fstype).map_err(std::io::Error::other)?;
    // SAFETY: valid NUL-terminated strings that outlive the call; no data.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), ty.as_ptr(), flags, std::ptr::null()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn check_lockdown() -> Check {
    let file = Path::new(SECURITYFS).join("lockdown");
    let mut mounted_here = false;
    let mut note = "";
    let text = match fs::read_to_string(&file) {
        Ok(t) => Some(t),
        Err(_) if !securityfs_mounted() => {
            // Mount it read-only just long enough to read the mode.
            match mount_fs("securityfs", SECURITYFS, libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC) {
                Ok(()) => {
                    mounted_here = true;
                    note = " (securityfs mounted briefly to read it)";
                    fs::read_to_string(&file).ok()
                }
                Err(_) => {
                    return Check::pass(
                        "lockdown",
                        "unknown (securityfs not mounted, and mounting it failed); the program checks below show what is allowed",
                    )
                }
            }
        }
        Err(_) => None,
    };
    if mounted_here {
        let tgt = CString::new(SECURITYFS).expect("no NUL");
        // SAFETY: valid NUL-terminated path; we mounted this securityfs above.
        unsafe { libc::umount2(tgt.as_ptr(), libc::MNT_DETACH) };
    }
    let Some(text) = text else {
        return Check::pass("lockdown", format!("none (no {}: lockdown LSM not built in){note}", file.display()));
    };
    match parse_lockdown(&text).as_deref() {
        Some("none") => Check::pass("lockdown", format!("none{note}")),
        Some("integrity") => {
            Check::pass("lockdown", format!("integrity{note}: debugfs and bpf_probe_write_user restricted, netdrift needs neither"))
        }
        Some("confidentiality") => Check::fail(
            "lockdown",
            format!("confidentiality{note}: BPF reads of kernel memory, perf and tracefs are blocked"),
            "netdrift cannot run (boot with lockdown=integrity or none)",
        ),
        Some(other) => Check::pass("lockdown", format!("{other}{note} (unknown mode)")),
        None => Check::pass("lockdown", format!("unparsable {:?}{note}", text.trim())),
    }
}

fn securityfs_mounted() -> bool {
    fs::read_to_string("/proc/self/mounts").map(|m| m.lines().any(|l| l.split_whitespace().nth(2) == Some("securityfs"))).unwrap_or(false)
}

struct Privileges {
    euid: u32,
    cap_eff: Option<u64>,
}

impl Privileges {
    fn read() -> Self {
        // SAFETY: geteuid cannot fail and has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let cap_eff =
            crate::procfs::cap_eff_checked().or_else(|| fs::read_to_string("/proc/self/status").ok().and_then(|s| parse_cap_eff(&s)));
        Privileges { euid, cap_eff }
    }
    fn cap(&self, cap: u32) -> bool {
        self.cap_eff.is_some_and(|m| has_cap(m, cap))
    }
    fn bpf(&self) -> bool {
        self.cap(CAP_BPF) || self.cap(CAP_SYS_ADMIN)
    }
    fn perfmon(&self) -> bool {
        self.cap(CAP_PERFMON) || self.cap(CAP_SYS_ADMIN)
    }
}

const NEED_PRIV: &str = crate::error::NEED_ROOT;

fn check_pid_namespace(ns: Option<u64>, proc_ours: bool) -> Check {
    const FIX: &str = "pids here are not the kernel's: run netdrift in the host's pid namespace with its /proc (docker run --pid=host, Kubernetes hostPID: true)";
    match ns {
        Some(n) if n != crate::procfs::INIT_PID_NS_INO => Check::fail("pid_namespace", format!("a child namespace (pid:[{n}])"), FIX),
        _ if !proc_ours => Check::fail("pid_namespace", "/proc is another pid namespace's (/proc/self is not this process)", FIX),
        Some(_) => Check::pass("pid_namespace", "the host's, with its /proc: pids here are the ones the kernel's programs see"),
        None => Check::pass("pid_namespace", "/proc/self/ns/pid unreadable; /proc/self is this process"),
    }
}

fn check_privileges(p: &Privileges) -> Vec<Check> {
    let mut out = Vec::new();
    let caps = match p.cap_eff {
        Some(m) => format!("CapEff {m:016x}"),
        None => "CapEff unreadable".to_string(),
    };
    out.push(if p.euid == 0 {
        Check::pass("root", format!("euid 0, {caps}"))
    } else if p.bpf() && p.perfmon() {
        Check::pass("root", format!("euid {} (not root: CAP_BPF and CAP_PERFMON load the programs; kallsyms, proc_fd and tracefs below say what else it reads), {caps}", p.euid))
    } else {
        Check::fail("root", format!("euid {}, {caps}", p.euid), NEED_PRIV)
    });
    let cap_line = |name: &str, cap: u32, label: &str| {
        if p.cap(cap) {
            Check::pass(name, format!("{label} ({cap}) effective"))
        } else if p.cap(CAP_SYS_ADMIN) {
            Check::pass(name, format!("{label} ({cap}) not effective, CAP_SYS_ADMIN is (enough)"))
        } else {
            Check::fail(name, format!("neither {label} ({cap}) nor CAP_SYS_ADMIN effective"), NEED_PRIV)
        }
    };
    out.push(cap_line("cap_bpf", CAP_BPF, "CAP_BPF"));
    out.push(cap_line("cap_perfmon", CAP_PERFMON, "CAP_PERFMON"));
    // What the programs' records are read against: checked by reading, as capabilities alone do not say.
    out.push(if crate::procfs::kallsyms_readable() {
        Check::pass("kallsyms", "/proc/kallsyms shows kernel addresses: waker stacks are named")
    } else {
        let fix = format!("waker stacks unnamed, wake-up causes and contexts unknown: {}", crate::procfs::kallsyms_hidden_why());
        Check::fail("kallsyms", "/proc/kallsyms shows zero addresses", &fix)
    });
    // No process of another user is sure to be readable even by one allowed
    // (pid 1 may be undumpable): told from the capabilities; trace reads each target's.
    let missing: Vec<&str> = [(CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"), (CAP_SYS_PTRACE, "CAP_SYS_PTRACE")]
        .iter()
        .filter(|(c, _)| !p.cap(*c))
        .map(|(_, n)| *n)
        .collect();
    out.push(if p.euid == 0 || missing.is_empty() {
        Check::pass("proc_fd", "another user's /proc/PID/fd and fdinfo are readable (root, or CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE): any target's sockets can be named")
    } else {
        Check::fail(
            "proc_fd",
            format!("not root, and {} not effective", missing.join(" and ")),
            &format!("trace refuses other users' processes (their sockets would be nameless): {}", crate::procfs::FD_ACCESS_FIX),
        )
    });

    out.push(match crate::procfs::sysctl("kernel/unprivileged_bpf_disabled") {
        Some(v) => {
            let meaning = match v {
                0 => "unprivileged BPF allowed",
                1 => "unprivileged BPF disabled until reboot",
                2 => "unprivileged BPF disabled",
                _ => "unknown value",
            };
            if v == 0 || p.bpf() {
                let why = if v == 0 { "" } else { "; irrelevant with CAP_BPF" };
                Check::pass("unprivileged_bpf_disabled", format!("{v} ({meaning}{why})"))
            } else {
                Check::fail("unprivileged_bpf_disabled", format!("{v} ({meaning}) and no CAP_BPF"), NEED_PRIV)
            }
        }
        None => Check::pass("unprivileged_bpf_disabled", "unreadable (kernel.unprivileged_bpf_disabled)"),
    });
    out.push(match crate::procfs::sysctl("kernel/perf_event_paranoid") {
        Some(v) => {
            if v >= 3 && p.perfmon() && !p.cap(CAP_SYS_ADMIN) {
                // Mainline reads 3 as 2; Debian's and Ubuntu's kernels refuse
                // every perf event without CAP_SYS_ADMIN there, CAP_PERFMON or
                // not: the prog: lines above say which this kernel does.
                Check::pass(
                    "perf_event_paranoid",
                    format!("{v}: enough with CAP_PERFMON on a mainline kernel; one with the level-3 patch (Debian's, Ubuntu's) refuses perf events without CAP_SYS_ADMIN: if prog:tracepoint says no, sysctl kernel.perf_event_paranoid=2 or run netdrift as root"),
                )
            } else if v <= 1 || p.perfmon() {
                let why = if v <= 1 { "" } else { "; irrelevant with CAP_PERFMON" };
                Check::pass("perf_event_paranoid", format!("{v}{why}"))
            } else {
                Check::fail("perf_event_paranoid", format!("{v} and no CAP_PERFMON: perf events (uprobes, tracepoints) denied"), NEED_PRIV)
            }
        }
        None => Check::pass("perf_event_paranoid", "unreadable (kernel.perf_event_paranoid)"),
    });
    out
}

fn check_tracefs() -> Check {
    let consequence = "classic syscall tracepoints unavailable: epoll_wait/accept/close not traced";
    if let Some(dir) = tracefs::tracefs_dir() {
        return Check::pass("tracefs", format!("mounted at {}", dir.display()));
    }
    match tracefs::ensure_tracefs() {
        Ok(dir) => Check::pass("tracefs", format!("was not mounted; netdrift mounted it at {}", dir.display())),
        Err(crate::Error::Feature(e) | crate::Error::Privilege(e)) => Check::fail("tracefs", e, consequence),
        Err(e) => Check::fail("tracefs", format!("not mounted, and netdrift cannot mount it: {e}"), consequence),
    }
}

// ---------------------------------------------------------------------------
// Program probes.

/// How a probe program is attached.
#[derive(Clone, Copy)]
enum Hook {
    /// `bpf_program__attach`, by section name.
    Auto,
    /// A uprobe on libc's `getpid` (or, without a shared libc, on
    /// [`netdrift_doctor_uprobe_target`] in this executable).
    Uprobe,
    /// The same through a multi-uprobe link, as trace attaches handlers
    /// where the kernel has them.
    UprobeMulti,
}

/// What makes an attached probe fire.
#[derive(Clone, Copy)]
enum Trigger {
    /// Sleep: at least a sched_switch and a sched_waking of this thread.
    Sleep,
    /// An `epoll_wait(2)` syscall (do_epoll_wait, sys_enter_epoll_wait).
    EpollWait,
    /// The uprobed function.
    UprobeCall,
    /// A TCP connection to ourselves over loopback (inet_sock_set_state).
    TcpLoopback,
}

/// What happened to one probe program.
struct Outcome {
    load: Result<(), String>,
    /// `None` when the load failed.
    attach: Option<Result<(), String>>,
    /// Whether the trigger ran (`Err` says why it could not).
    triggered: Result<(), String>,
    /// Increase of the `hits` counter while attached.
    hits: u64,
    /// Ring buffer records consumed after the trigger.
    records: i64,
    /// Where a uprobe went, e.g. `getpid in /usr/lib/libc.so.6`.
    target: Option<String>,
}

/// A function in this executable for the uprobe check when libc is static.
#[doc(hidden)]
#[no_mangle]
#[inline(never)]
pub extern "C" fn netdrift_doctor_uprobe_target(x: u64) -> u64 {
    std::hint::black_box(x).wrapping_add(1)
}

enum UprobeTarget {
    LibcGetpid(PathBuf),
    OwnExe(PathBuf),
}

impl UprobeTarget {
    fn find() -> Result<Self, String> {
        let maps = fs::read_to_string("/proc/self/maps").map_err(|e| format!("/proc/self/maps: {e}"))?;
        let libc = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| {
            let file = p.rsplit('/').next().unwrap_or(p);
            p.starts_with('/') && (file.starts_with("libc.so") || file.starts_with("libc-"))
        });
        if let Some(path) = libc {
            return Ok(UprobeTarget::LibcGetpid(PathBuf::from(path)));
        }
        std::env::current_exe()
            .map(UprobeTarget::OwnExe)
            .map_err(|e| format!("no shared libc mapped and the executable path is unknown: {e}"))
    }
    fn path(&self) -> &Path {
        match self {
            UprobeTarget::LibcGetpid(p) | UprobeTarget::OwnExe(p) => p,
        }
    }
    fn symbol(&self) -> &'static str {
        match self {
            UprobeTarget::LibcGetpid(_) => "getpid",
            UprobeTarget::OwnExe(_) => "netdrift_doctor_uprobe_target",
        }
    }
    fn call(&self) {
        match self {
            UprobeTarget::LibcGetpid(_) => {
                // SAFETY: getpid has no preconditions and cannot fail.
                std::hint::black_box(unsafe { libc::getpid() });
            }
            UprobeTarget::OwnExe(_) => {
                std::hint::black_box(netdrift_doctor_uprobe_target(std::hint::black_box(1)));
            }
        }
    }
}

fn read_hits(skel: &ProbeSkel<'_>) -> u64 {
    skel.maps
        .bss
        .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
        .ok()
        .flatten()
        .and_then(|v| v.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes))
        .unwrap_or(0)
}

fn run_trigger(trigger: Trigger, uprobe: Option<&UprobeTarget>) -> Result<(), String> {
    match trigger {
        Trigger::Sleep => {
            std::thread::sleep(SETTLE);
            Ok(())
        }
        Trigger::EpollWait => epoll_wait_once(),
        Trigger::UprobeCall => {
            let target = uprobe.ok_or("no uprobe target")?;
            target.call();
            Ok(())
        }
        Trigger::TcpLoopback => {
            let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("loopback TCP unavailable: {e}"))?;
            let addr = l.local_addr().map_err(|e| e.to_string())?;
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).map_err(|e| format!("loopback TCP connect: {e}"))?;
            let (mut s, _) = l.accept().map_err(|e| format!("loopback TCP accept: {e}"))?;
            c.write_all(b"netdrift").map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_millis(100))).map_err(|e| e.to_string())?;
            let mut buf = [0u8; 16];
            let _ = s.read(&mut buf);
            Ok(())
        }
    }
}

/// One `epoll_wait` syscall with a zero timeout. On x86_64 it is made
/// directly, so the syscall really is `epoll_wait` (not `epoll_pwait`).
fn epoll_wait_once() -> Result<(), String> {
    // SAFETY: plain syscall wrappers; the fd is ours and closed below.
    unsafe {
        let fd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        if fd < 0 {
            return Err(format!("epoll_create1: {}", std::io::Error::last_os_error()));
        }
        let mut ev: [libc::epoll_event; 1] = std::mem::zeroed();
        #[cfg(target_arch = "x86_64")]
        libc::syscall(libc::SYS_epoll_wait, fd, ev.as_mut_ptr(), 1, 0);
        #[cfg(not(target_arch = "x86_64"))]
        libc::epoll_wait(fd, ev.as_mut_ptr(), 1, 0);
        libc::close(fd);
    }
    Ok(())
}

/// Open a fresh probe skeleton with only `prog` autoloaded, load it, attach
/// it, run `trigger`, and count what fired.
fn probe(prog: &str, hook: Hook, trigger: Trigger) -> Outcome {
    let mut out = Outcome {
        load: Err("not attempted".into()),
        attach: None,
        triggered: Err("not attempted".into()),
        hits: 0,
        records: 0,
        target: None,
    };
    take_libbpf_log();
    let mut storage = MaybeUninit::uninit();
    let mut open = match ProbeSkelBuilder::default().open(&mut storage) {
        Ok(o) => o,
        Err(e) => {
            out.load = Err(format!("opening the probe object: {}", bpf_error(&e, prog)));
            return out;
        }
    };
    for mut p in open.open_object_mut().progs_mut() {
        let keep = p.name() == prog;
        p.set_autoload(keep);
    }
    // The ring buffer map is always created; make it one page, whatever the
    // page size (ringbuf sizes must be page multiples).
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let _ = open.maps.probe_rb.set_max_entries(u32::try_from(page).unwrap_or(4096).max(4096));
    let skel = match open.load() {
        Ok(s) => s,
        Err(e) => {
            out.load = Err(bpf_error(&e, prog));
            return out;
        }
    };
    out.load = Ok(());

    let Some(program) = skel.object().progs_mut().find(|p| p.name() == prog) else {
        out.attach = Some(Err(format!("program {prog} missing from the loaded object")));
        return out;
    };
    let uprobe_target = match hook {
        Hook::Uprobe | Hook::UprobeMulti => match UprobeTarget::find() {
            Ok(t) => {
                out.target = Some(format!("{} in {}", t.symbol(), t.path().display()));
                Some(t)
            }
            Err(e) => {
                out.attach = Some(Err(e));
                return out;
            }
        },
        Hook::Auto => None,
    };
    let before = read_hits(&skel);
    let link: Result<Link, String> = match &uprobe_target {
        None => program.attach().map_err(|e| bpf_error(&e, prog)),
        Some(t) if matches!(hook, Hook::UprobeMulti) => program
            .attach_uprobe_multi_with_opts(-1, t.path(), t.symbol(), libbpf_rs::UprobeMultiOpts::default())
            .map_err(|e| bpf_error(&e, prog)),
        Some(t) => attach_uprobe(&program, t).map_err(|e| bpf_error(&e, prog)),
    };
    let link = match link {
        Ok(l) => l,
        Err(e) => {
            out.attach = Some(Err(e));
            return out;
        }
    };
    out.attach = Some(Ok(()));

    // Only the ring buffer program writes records; the others leave it empty.
    let mut rb_builder = RingBufferBuilder::new();
    let rb = match rb_builder.add(&skel.maps.probe_rb, |_data: &[u8]| 0) {
        Ok(_) => rb_builder.build().ok(),
        Err(_) => None,
    };

    out.triggered = run_trigger(trigger, uprobe_target.as_ref());
    if !matches!(trigger, Trigger::Sleep) {
        // Let other CPUs' programs finish their increments.
        std::thread::sleep(Duration::from_millis(1));
    }
    out.hits = read_hits(&skel).saturating_sub(before);
    if let Some(rb) = &rb {
        out.records = i64::from(rb.consume_raw());
    }
    drop(rb);
    drop(link);
    out
}

fn attach_uprobe(program: &ProgramMut<'_>, target: &UprobeTarget) -> libbpf_rs::Result<Link> {
    let opts = UprobeOpts { func_name: Some(target.symbol().to_string()), ..Default::default() };
    // pid 0: this process only.
    program.attach_uprobe_with_opts(0, target.path(), 0, opts)
}

/// What counts as "it fired" for a probe.
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    /// The `hits` counter must have increased.
    Hits,
    /// Ring buffer records must have arrived.
    Records,
    /// Loading and attaching is all we can check.
    Attach,
}

fn outcome_check(name: &str, what: &str, o: &Outcome, expect: Expect, consequence: &str) -> Check {
    let what = match &o.target {
        Some(t) => format!("{what} on {t}"),
        None => what.to_string(),
    };
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    if let Err(e) = &o.load {
        return Check::fail(name, format!("{what}: load failed: {e}"), consequence);
    }
    match &o.attach {
        Some(Ok(())) => {}
        Some(Err(e)) => return Check::fail(name, format!("{what}: loaded; attach failed: {e}"), consequence),
        None => return Check::fail(name, format!("{what}: loaded; not attached"), consequence),
    }
    if let Err(why) = &o.triggered {
        return Check::pass(name, format!("{what}: loaded, attached (not exercised: {why})"));
    }
    match expect {
        Expect::Attach => Check::pass(name, format!("{what}: loaded, attached")),
        Expect::Hits if o.hits > 0 => Check::pass(name, format!("{what}: loaded, attached, fired ({})", plural(o.hits, "hit", "hits"))),
        Expect::Records if o.records > 0 => {
            Check::pass(name, format!("{what}: loaded, attached, {} received", plural(o.records.unsigned_abs(), "record", "records")))
        }
        Expect::Hits => Check::fail(name, format!("{what}: loaded and attached but never fired"), consequence),
        Expect::Records => Check::fail(name, format!("{what}: loaded and attached but no record arrived"), consequence),
    }
}

/// The program checks, in order.
struct ProgSpec {
    check: &'static str,
    prog: &'static str,
    what: &'static str,
    hook: Hook,
    trigger: Trigger,
    expect: Expect,
    consequence: &'static str,
}

fn prog_specs() -> Vec<ProgSpec> {
    // Syscall triggers are only certain to hit epoll_wait itself on x86_64.
    let epoll_expect = if cfg!(target_arch = "x86_64") { Expect::Hits } else { Expect::Attach };
    vec![
        ProgSpec {
            check: "prog:tp_btf",
            prog: "probe_tp_btf",
            what: "tp_btf/sched_switch",
            hook: Hook::Auto,
            trigger: Trigger::Sleep,
            expect: Expect::Hits,
            consequence: "the scheduler and socket hooks cannot run: netdrift trace cannot run",
        },
        ProgSpec {
            check: "prog:raw_tp",
            prog: "probe_raw_tp",
            what: "raw_tp/sched_switch",
            hook: Hook::Auto,
            trigger: Trigger::Sleep,
            expect: Expect::Hits,
            consequence: "informational: netdrift uses tp_btf, not raw_tp",
        },
        ProgSpec {
            check: "prog:tracepoint",
            prog: "probe_tracepoint",
            what: "tracepoint/sched/sched_switch",
            hook: Hook::Auto,
            trigger: Trigger::Sleep,
            expect: Expect::Hits,
            consequence: "classic tracepoints unusable: syscall events (epoll_wait/accept/close) missing",
        },
        ProgSpec {
            check: "prog:syscall_tracepoint",
            prog: "probe_syscall_tp",
            what: "tracepoint/syscalls/sys_enter_epoll_wait",
            hook: Hook::Auto,
            trigger: Trigger::EpollWait,
            expect: epoll_expect,
            consequence: "epoll_wait/accept/close not traced: chains end at the wake-up",
        },
        ProgSpec {
            check: "prog:fentry",
            prog: "probe_fentry",
            what: "fentry/do_epoll_wait",
            hook: Hook::Auto,
            trigger: Trigger::EpollWait,
            expect: epoll_expect,
            consequence: "informational: netdrift does not need fentry",
        },
        ProgSpec {
            check: "prog:kprobe",
            prog: "probe_kprobe",
            what: "kprobe/do_epoll_wait",
            hook: Hook::Auto,
            trigger: Trigger::EpollWait,
            expect: epoll_expect,
            consequence: "informational: netdrift does not need kprobes",
        },
        ProgSpec {
            check: "prog:uprobe",
            prog: "probe_uprobe",
            what: "uprobe",
            hook: Hook::Uprobe,
            trigger: Trigger::UprobeCall,
            expect: Expect::Hits,
            consequence:
                "single uprobes, which trace attaches handlers with before Linux 6.6 (handler_probes says which this kernel needs)",
        },
        ProgSpec {
            check: "prog:uprobe_multi",
            prog: "probe_uprobe_multi",
            what: "multi-uprobe link",
            hook: Hook::UprobeMulti,
            trigger: Trigger::UprobeCall,
            expect: Expect::Hits,
            consequence: "trace attaches handlers with these links where the kernel has them (Linux 6.6+), single uprobes before",
        },
        ProgSpec {
            check: "map:ringbuf",
            prog: "probe_ringbuf",
            what: "BPF_MAP_TYPE_RINGBUF from tp_btf/sched_switch",
            hook: Hook::Auto,
            trigger: Trigger::Sleep,
            expect: Expect::Records,
            consequence: "no event channel: netdrift trace cannot run (ring buffers need Linux >= 5.8)",
        },
        ProgSpec {
            check: "map:task_storage",
            prog: "probe_task_storage_get",
            what: "BPF_MAP_TYPE_TASK_STORAGE from tp_btf/sched_switch",
            hook: Hook::Auto,
            trigger: Trigger::Sleep,
            expect: Expect::Hits,
            consequence: "no per-thread state: netdrift trace cannot run (task local storage in tracing programs needs Linux >= 5.13)",
        },
        ProgSpec {
            check: "helper:task_pt_regs",
            prog: "probe_task_pt_regs",
            what: "bpf_task_pt_regs in tp_btf/sched_waking",
            hook: Hook::Auto,
            trigger: Trigger::Sleep,
            expect: Expect::Hits,
            consequence: "a blocked thread's syscall cannot be read: netdrift trace cannot run (bpf_task_pt_regs needs Linux >= 5.15)",
        },
        ProgSpec {
            check: "helper:get_stack",
            prog: "probe_stack",
            what: "bpf_get_stack in tp_btf/sched_waking",
            hook: Hook::Auto,
            trigger: Trigger::Sleep,
            expect: Expect::Hits,
            consequence: "no kernel stacks: wake-up causes cannot be classified",
        },
        ProgSpec {
            check: "core:epoll_ready_list",
            prog: "probe_epoll_ready_list",
            what: "a woken task's registers and epoll ready list (CO-RE: eventpoll.rdllist, epitem.rdllink) from tp_btf/sched_waking",
            hook: Hook::Auto,
            trigger: Trigger::Sleep,
            expect: Expect::Hits,
            consequence: "socket address of wake-ups unknown (causes still classified from stacks)",
        },
        ProgSpec {
            check: "tp:inet_sock_set_state",
            prog: "probe_inet_sock_set_state",
            what: "tp_btf/inet_sock_set_state",
            hook: Hook::Auto,
            trigger: Trigger::TcpLoopback,
            expect: Expect::Hits,
            consequence: "TCP state changes (connect/close) not shown",
        },
    ]
}

fn run_prog_check(spec: &ProgSpec, kernel: Option<(u32, u32)>) -> Check {
    let outcome = probe(spec.prog, spec.hook, spec.trigger);
    let mut check = outcome_check(spec.check, spec.what, &outcome, spec.expect, spec.consequence);
    if !check.ok {
        let old_kernel = |min: (u32, u32)| kernel.is_some_and(|k| k < min);
        let hint = match spec.check {
            "prog:tracepoint" | "prog:syscall_tracepoint" if tracefs::tracefs_dir().is_none() && tracefs::tracefs_mount().is_none() => {
                Some("tracefs is not mounted (`mount -t tracefs nodev /sys/kernel/tracing`)")
            }
            "map:ringbuf" if old_kernel((5, 8)) => Some("ring buffers exist since Linux 5.8"),
            "map:task_storage" if old_kernel((5, 13)) => Some("tracing programs can use task local storage since Linux 5.13"),
            "helper:task_pt_regs" if old_kernel((5, 15)) => Some("bpf_task_pt_regs exists since Linux 5.15"),
            "prog:tp_btf" if !Path::new(BTF_PATH).exists() => Some("tp_btf needs kernel BTF"),
            _ => None,
        };
        if let Some(hint) = hint {
            check.detail.push_str(&format!(" [{hint}]"));
        }
    }
    check
}

// ---------------------------------------------------------------------------
// Features.

fn features(r: &Report) -> Vec<Check> {
    // Which checks are missing; their own lines say why.
    let missing = |names: &[&str]| -> Vec<String> { names.iter().filter(|n| !r.ok(n)).map(|n| n.to_string()).collect() };
    let mut out = Vec::new();

    let core = [
        "pid_namespace",
        "prog:tp_btf",
        "map:ringbuf",
        "map:task_storage",
        "helper:task_pt_regs",
        "helper:get_stack",
        "prog:syscall_tracepoint",
        "tracefs",
    ];
    let m = missing(&core);
    out.push(if m.is_empty() {
        Check::pass(
            "trace",
            "core chain: tp_btf scheduler hooks, ring buffer, task local storage, saved registers, kernel stacks, syscall tracepoints",
        )
    } else {
        Check::new("trace", false, format!("core chain incomplete: {} failed (see above)", m.join(", ")))
    });

    out.push(if r.ok("kallsyms") {
        Check::pass("wake_causes", "waker stacks named from /proc/kallsyms: each wake-up's cause (socket, pipe, timer...) and context")
    } else {
        Check::new("wake_causes", false, "kallsyms failed (see above): wake-up causes and contexts read unknown")
    });

    out.push(if r.ok("core:epoll_ready_list") {
        Check::pass("socket_identity", "the woken thread's epoll ready list names the socket (address, port) behind each wake-up")
    } else {
        Check::new(
            "socket_identity",
            false,
            "core:epoll_ready_list failed (see above): wake-up causes still classified from stacks, socket address unknown",
        )
    });

    out.push(if r.ok("tp:inet_sock_set_state") {
        Check::pass("tcp_state", "inet_sock_set_state reports TCP state changes")
    } else {
        Check::new("tcp_state", false, "tp:inet_sock_set_state failed (see above): TCP state changes not shown")
    });

    let feats = crate::probes::features().unwrap_or_default();
    out.push(if feats.rdonly_cast {
        Check::pass("socket_reads", "the wake-up program reads sockets with plain loads (bpf_rdonly_cast)")
    } else {
        Check::new(
            "socket_reads",
            false,
            "no bpf_rdonly_cast in this kernel's BTF (Linux < 6.2): the wake-up program reads sockets with a helper call per field (~0.5 us more per wake-up)",
        )
    });

    out.push(if feats.file_epoll_items {
        Check::pass(
            "epoll_mapping",
            "accepted sockets' epoll data words read from the kernel's epoll item (file->f_ep): no epoll_ctl tracepoint",
        )
    } else {
        Check::new(
            "epoll_mapping",
            false,
            "no file->f_ep in this kernel's BTF (Linux < 5.11): trace falls back to tracing every epoll_ctl (costs more)",
        )
    });

    // Checked the way trace attaches them on this kernel.
    let handler_check = if feats.uprobe_multi { "prog:uprobe_multi" } else { "prog:uprobe" };
    out.push(if r.ok(handler_check) {
        Check::pass("handler_probes", format!("{handler_check}: uprobes attach and fire: handler functions can be timed"))
    } else {
        Check::new("handler_probes", false, format!("{handler_check} failed (see above): no handler probes"))
    });

    let state = |name: &str| if r.ok(name) { "works" } else { "unavailable" };
    let fallbacks =
        format!("kprobe/fentry fallbacks (informational, not needed): kprobe {}, fentry {}", state("prog:kprobe"), state("prog:fentry"));
    let m = missing(&["prog:tp_btf", "helper:get_stack"]);
    out.push(if m.is_empty() {
        Check::pass("offwake", format!("off-CPU/wake-up analysis from tp_btf sched_switch + sched_waking stacks; {fallbacks}"))
    } else {
        Check::new("offwake", false, format!("off-CPU/wake-up analysis unavailable: {} failed (see above); {fallbacks}", m.join(", ")))
    });
    out
}

// ---------------------------------------------------------------------------

/// Run one check, turning a panic into a failed check.
fn guarded(name: &str, f: impl FnOnce() -> Vec<Check>) -> Vec<Check> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        vec![Check::new(name, false, format!("check panicked: {msg} (a netdrift bug)"))]
    })
}

/// Run every check. Never panics: a failing check is a line of the report.
/// Mounts tracefs if it is not mounted (netdrift would do so anyway); may
/// mount securityfs for a moment to read the lockdown mode.
pub fn run() -> Report {
    let _serial = RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let _quiet = QuietLibbpf::new();

    let (release, machine) = uname();
    let kernel = parse_kernel_version(&release);
    let mut checks = Vec::new();
    checks.extend(guarded("kernel", || vec![check_kernel(&release, &machine)]));
    checks.extend(guarded("btf", || vec![check_btf()]));
    checks.extend(guarded("lockdown", || vec![check_lockdown()]));
    checks.extend(guarded("root", || check_privileges(&Privileges::read())));
    checks.extend(guarded("pid_namespace", || vec![check_pid_namespace(crate::procfs::pid_namespace(), crate::procfs::proc_is_ours())]));
    checks.extend(guarded("tracefs", || vec![check_tracefs()]));
    for spec in prog_specs() {
        checks.extend(guarded(spec.check, || vec![run_prog_check(&spec, kernel)]));
    }
    let mut report = Report { kernel: release, checks, features: Vec::new() };
    report.features = guarded("features", || features(&report));
    report
}

// ---------------------------------------------------------------------------
// Rendering.

/// The report as aligned text: `ok`/`no`, the check name, what was found
/// (and, when not ok, what it means). `color` adds ANSI colors.
pub fn render_text(r: &Report, color: bool) -> String {
    let width = r.checks.iter().chain(r.features.iter()).map(|c| c.name.len()).max().unwrap_or(0);
    let paint = |code: &str, s: &str| {
        if color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    let mut out = String::new();
    out.push_str(&format!("netdrift doctor: Linux {}\n", r.kernel));
    let section = |out: &mut String, title: &str, items: &[Check]| {
        out.push('\n');
        out.push_str(&paint("1", title));
        out.push('\n');
        for c in items {
            let mark = if c.ok {
                paint("32", "ok")
            } else if INFORMATIONAL.contains(&c.name.as_str()) {
                paint("33", "no")
            } else {
                paint("31", "no")
            };
            out.push_str(&format!("  {mark}  {:<width$}  {}\n", c.name, c.detail));
        }
    };
    section(&mut out, "checks", &r.checks);
    section(&mut out, "features", &r.features);
    let summary = if r.ok("trace") {
        paint("32", "netdrift trace can run on this machine")
    } else {
        paint("31", "netdrift trace cannot run as is: see the lines marked no")
    };
    out.push('\n');
    out.push_str(&summary);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_pid_namespace_fails_the_check_with_the_fix() {
        assert!(check_pid_namespace(Some(crate::procfs::INIT_PID_NS_INO), true).ok);
        let c = check_pid_namespace(Some(4026532201), true);
        assert!(!c.ok && c.detail.contains("pid:[4026532201]") && c.detail.contains("--pid=host"), "{}", c.detail);
        let c = check_pid_namespace(Some(crate::procfs::INIT_PID_NS_INO), false);
        assert!(!c.ok && c.detail.contains("/proc is another") && c.detail.contains("--pid=host"), "{}", c.detail);
        assert!(crate::procfs::proc_is_ours(), "the tests' /proc is their own");
    }

    #[test]
    fn reason_prefers_prog_line_and_verifier_tail() {
        let log = "libbpf: prog 'probe_x': BPF program load failed: Permission denied\n\
                   libbpf: prog 'probe_x': -- BEGIN PROG LOAD LOG --\n\
                   0: R1=ctx() R10=fp0\n\
                   attach to unsupported member\n\
                   processed 0 insns\n\
                   -- END PROG LOAD LOG --\n\
                   libbpf: failed to load object 'probe_bpf'\n";
        assert_eq!(
            libbpf_reason(log, "probe_x").as_deref(),
            Some("BPF program load failed: Permission denied (verifier: attach to unsupported member)")
        );
        assert_eq!(libbpf_reason("", "probe_x"), None);
    }

    #[test]
    fn kernel_version() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(parse_kernel_version("6.3"), Some((6, 3)));
        assert_eq!(parse_kernel_version("garbage"), None);
    }
}
