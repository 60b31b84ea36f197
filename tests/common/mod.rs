//! Helpers shared by the root end-to-end tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netdrift::demo::{self, DemoConfig, DemoServer, ListenMode};
use netdrift::probes::ProbeConfig;
use netdrift::trace::{self, TraceOptions, TraceResult};

/// A TCP socket of a hand-made recording (IPv4, netns 1).
pub fn tcp_sock(sk: u64, ino: u64, state: u8, local: &str, remote: &str) -> netdrift::events::SockInfo {
    netdrift::events::SockInfo {
        sk,
        ino,
        netns: 1,
        family: 2,
        protocol: 6,
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        state,
    }
}

/// A wake-up of `target` for socket event `seq` as the live reader makes
/// it: a readable socket, from softirq in the waker's syscall, via epoll.
pub fn socket_wake(target: &netdrift::events::Task, seq: u64, stack: Vec<u64>) -> netdrift::events::Kind {
    use netdrift::events::{Cause, Kind, WakerContext};
    Kind::Wake {
        target: target.clone(),
        sock_seq: seq,
        stack,
        stack_err: 0,
        target_cpu: 0,
        waker_is_kthread: false,
        target_on_rq: false,
        cause: Some(Cause::SocketReadable),
        context: Some(WakerContext::SoftirqInSyscall),
        via_epoll: true,
        stack_reused: false,
        stack_sig: 0,
    }
}

/// BPF needs root; CI is root. Say so loudly rather than skip silently.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("NETDRIFT_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!("skipped: needs root (NETDRIFT_SKIP_ROOT_TESTS=1)");
        return false;
    }
    panic!("this test loads BPF programs and needs root: run `./run test` as root, with cargo on root's PATH (or set NETDRIFT_SKIP_ROOT_TESTS=1 to skip)");
}

/// One trace at a time within a test binary.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub struct DemoRun {
    pub result: TraceResult,
    pub ports: Vec<u16>,
    pub tids: Vec<u32>,
    pub accepted: u64,
}

/// Pin a thread to one CPU.
pub fn pin(tid: u32, cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(tid as i32, std::mem::size_of::<libc::cpu_set_t>(), &set), 0, "pin {tid} to CPU{cpu}");
    }
}

/// The demo client's outcome, run from a tracer's `on_ready`. The client
/// thread stops the tracer whatever happens; the test thread checks the
/// outcome (a panic in the client thread would be lost).
#[derive(Clone, Default)]
pub struct ClientResult(Arc<Mutex<Option<ClientOutcome>>>);

/// The client's connections, or why it failed.
type ClientOutcome = Result<Vec<demo::ClientConn>, String>;

impl ClientResult {
    /// `on_ready`: after 100 ms, `k` connections `gap` apart, then `linger`, then `stop`.
    pub fn run_then_stop(
        &self,
        addr: std::net::SocketAddr,
        k: usize,
        gap: Duration,
        stop: Arc<AtomicBool>,
        linger: Duration,
    ) -> impl FnOnce() + Send + 'static {
        let slot = self.0.clone();
        move || {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                let r = demo::run_client(addr, k, gap).map_err(|e| e.to_string());
                *slot.lock().unwrap() = Some(r);
                std::thread::sleep(linger);
                stop.store(true, Ordering::SeqCst);
            });
        }
    }

    /// The connections, every request answered (panics otherwise).
    pub fn take(&self) -> Vec<demo::ClientConn> {
        let r = self.0.lock().unwrap().take().expect("the client ran");
        let conns = r.unwrap_or_else(|e| panic!("client: {e}"));
        let unanswered = conns.iter().filter(|c| !c.ok).count();
        assert_eq!(unanswered, 0, "{unanswered} of {} requests unanswered", conns.len());
        conns
    }
}

/// Start the demo server, trace its workers while a client opens `k`
/// connections `gap` apart; `setup` runs on the worker tids before tracing.
pub fn run_demo_with(cfg: DemoConfig, k: usize, gap: Duration, setup: impl FnOnce(&[u32])) -> DemoRun {
    let server = DemoServer::start(&cfg).expect("demo server");
    let addr = server.addr();
    let tids = server.worker_tids();
    setup(&tids);
    let stop = Arc::new(AtomicBool::new(false));
    let client = ClientResult::default();
    let opts = TraceOptions {
        probe: ProbeConfig { tids: tids.clone(), follow_children: false, ..Default::default() },
        keep_chains: true,
        quiet: true,
        stop: Some(stop.clone()),
        // A client that hangs must not hang the test.
        duration: Some(Duration::from_secs(60)),
        on_ready: Some(Box::new(client.run_then_stop(addr, k, gap, stop.clone(), Duration::from_millis(300)))),
        ..Default::default()
    };
    let result = trace::run(opts).expect("trace");
    let stats = server.shutdown().expect("shutdown");
    let ports: Vec<u16> = client.take().iter().map(|c| c.local_port).collect();
    assert_eq!(ports.len(), k, "client finished");
    DemoRun { result, ports, tids, accepted: stats.accepted() }
}

pub fn run_demo(mode: ListenMode, k: usize) -> DemoRun {
    run_demo_with(DemoConfig { workers: 2, mode, port: 0, work_us: 0 }, k, Duration::from_millis(40), |_| {})
}

/// Everything an exited child wrote to its piped stderr ("" if not piped).
pub fn piped_stderr(child: &mut Child) -> String {
    let mut e = String::new();
    if let Some(mut p) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut p, &mut e);
    }
    e
}

/// Wait until netdrift's ready file exists (its probes are attached). Panics
/// with its stderr (from `stderr`, called once the child has exited) if it
/// exits first, or if the file is not there within `timeout` (the child is
/// killed first, so a piped stderr can be read to its end).
pub fn wait_ready(ready: &Path, child: &mut Child, timeout: Duration, mut stderr: impl FnMut(&mut Child) -> String) {
    let t = Instant::now();
    while !ready.exists() {
        if let Some(st) = child.try_wait().expect("try_wait netdrift") {
            panic!("netdrift exited ({st}) before writing its ready file {}: {}", ready.display(), stderr(child));
        }
        if t.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("netdrift wrote no ready file {} within {timeout:?}; stderr: {}", ready.display(), stderr(child));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Make a FIFO at `p`.
pub fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("a path with no NUL");
    // SAFETY: a valid NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", p.display());
}

/// Build tests/progs/`name`.c into `dir` with `cc` and `flags`; returns the
/// binary. Libraries (`-l...`) go after the source, as the linker wants.
pub fn build_c(dir: &Path, name: &str, flags: &[&str]) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/progs/{name}.c"));
    let bin = dir.join(name);
    let (libs, flags): (Vec<&str>, Vec<&str>) = flags.iter().partition(|f| f.starts_with("-l"));
    let out = std::process::Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .args(libs)
        .output()
        .expect("running cc (install a C compiler: apt-get install gcc)");
    assert!(out.status.success(), "cc failed: {}", String::from_utf8_lossy(&out.stderr));
    bin
}

/// tests/progs/threadexec.c built in `dir` and started: it prints the tid of
/// a thread that runs exec once the file `go` exists. Returns the child and that tid.
pub fn start_threadexec(dir: &Path, go: &Path) -> (Child, u32) {
    use std::io::BufRead;
    let prog = build_c(dir, "threadexec", &["-O1", "-pthread"]);
    let mut target = std::process::Command::new(&prog).arg(go).stdout(std::process::Stdio::piped()).spawn().expect("starting threadexec");
    let mut line = String::new();
    std::io::BufReader::new(target.stdout.take().expect("stdout")).read_line(&mut line).expect("threadexec tid");
    let tid: u32 = line.trim().parse().unwrap_or_else(|_| panic!("threadexec printed {line:?}, not a tid"));
    (target, tid)
}
