//! Reliability: loss accounting under a full ring buffer, the trace lifetime
//! under SIGINT/SIGTERM/SIGKILL, and bad input that must load nothing.
//!
//! Root tests (they load BPF programs, start nginx): without root they fail
//! and say so, unless NETDRIFT_SKIP_ROOT_TESTS=1. Each test is bounded in
//! time (the whole file runs in well under a minute) and sends traffic to
//! loopback only.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::require_root;

const NETDRIFT: &str = env!("CARGO_BIN_EXE_netdrift");

/// One netdrift at a time within this file: the tests compare the kernel's
/// program list before and after.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn nd() -> Command {
    Command::new(NETDRIFT)
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our child.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// A child process killed and reaped when dropped, even on panic.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process to trace that does nothing for a minute.
fn sleeper() -> Guard {
    Guard(Command::new("sleep").arg("60").spawn().expect("spawn sleep"))
}

/// Wait for netdrift's ready file; fail with its stderr if it exits first.
fn wait_ready(ready: &Path, child: &mut Child) {
    common::wait_ready(ready, child, Duration::from_secs(30), common::piped_stderr);
}

/// Wait for a child with a deadline; kill it and fail if it hangs.
fn wait_output(child: Child, timeout: Duration, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(o) => o.expect("wait for netdrift"),
        Err(_) => {
            signal(pid, libc::SIGKILL);
            panic!("{what}: netdrift did not exit within {timeout:?}");
        }
    }
}

// ---- BPF objects in the kernel -------------------------------------------

fn bpftool_json(what: &str) -> Vec<Value> {
    // In /usr/sbin, which a root shell from `su` (without -) may not have on PATH.
    let bpftool = if Path::new("/usr/sbin/bpftool").exists() { "/usr/sbin/bpftool" } else { "bpftool" };
    let out = Command::new(bpftool).args([what, "show", "-j"]).output().expect("bpftool (apt-get install bpftool)");
    assert!(out.status.success(), "bpftool {what} show: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
}

/// Ids of loaded programs named nd_* (netdrift's).
fn nd_programs() -> BTreeSet<u64> {
    bpftool_json("prog")
        .iter()
        .filter(|p| p["name"].as_str().map(|n| n.starts_with("nd_")).unwrap_or(false))
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

fn all_ids(what: &str) -> BTreeSet<u64> {
    bpftool_json(what).iter().filter_map(|p| p["id"].as_u64()).collect()
}

/// Programs and links are freed once their last fd closes (after an RCU
/// grace period): poll briefly for those a dead netdrift held.
fn wait_freed(progs: &BTreeSet<u64>, links: &BTreeSet<u64>, after: &str) {
    let t = Instant::now();
    loop {
        let (p, l) = (all_ids("prog"), all_ids("link"));
        let p_left: Vec<&u64> = progs.iter().filter(|i| p.contains(i)).collect();
        let l_left: Vec<&u64> = links.iter().filter(|i| l.contains(i)).collect();
        if p_left.is_empty() && l_left.is_empty() {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "after {after}, programs {p_left:?} and links {l_left:?} are still loaded");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (program ids, link ids) a process holds through its fds.
fn held_bpf_ids(pid: u32) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let (mut progs, mut links) = (BTreeSet::new(), BTreeSet::new());
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (progs, links);
    };
    for e in dir.flatten() {
        let Ok(text) = fs::read_to_string(e.path()) else { continue };
        for l in text.lines() {
            if let Some(v) = l.strip_prefix("prog_id:") {
                if let Ok(id) = v.trim().parse() {
                    progs.insert(id);
                }
            }
            if let Some(v) = l.strip_prefix("link_id:") {
                if let Ok(id) = v.trim().parse() {
                    links.insert(id);
                }
            }
        }
    }
    (progs, links)
}

// ---- a private nginx ------------------------------------------------------

const NGINX: &str = "/usr/sbin/nginx";

/// nginx with 2 workers on a free loopback port, stopped when dropped.
struct Nginx {
    dir: tempfile::TempDir,
    master: u32,
    port: u16,
}

impl Nginx {
    fn start() -> Nginx {
        assert!(Path::new(NGINX).exists(), "{NGINX} missing: apt-get install nginx (scripts/deps.sh test)");
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let d = dir.path().display();
            fs::write(
                dir.path().join("nginx.conf"),
                format!(
                    "worker_processes 2;\ndaemon on;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                     events {{ worker_connections 1024; }}\n\
                     http {{ access_log off; keepalive_requests 1000000;\n  server {{ listen 127.0.0.1:{port} backlog=1024; location / {{ return 200 \"ok\"; }} }}\n}}\n"
                ),
            )
            .unwrap();
            let out =
                Command::new(NGINX).arg("-c").arg(dir.path().join("nginx.conf")).arg("-p").arg(dir.path()).output().expect("run nginx");
            if !out.status.success() {
                last = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stderr),
                    fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
                );
                if last.contains("Address already in use") {
                    continue;
                }
                panic!("nginx did not start: {last}");
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Some(master) = fs::read_to_string(dir.path().join("nginx.pid")).ok().and_then(|s| s.trim().parse().ok()) {
                    let n = Nginx { dir, master, port };
                    // Both workers up and accepting.
                    while TcpStream::connect(n.addr()).is_err() {
                        assert!(Instant::now() < deadline, "nginx does not accept");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    return n;
                }
                assert!(Instant::now() < deadline, "nginx wrote no pid file");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("nginx found no free port: {last}");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        signal(self.master, libc::SIGTERM);
        let t = Instant::now();
        while Path::new(&format!("/proc/{}", self.master)).exists() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if Path::new(&format!("/proc/{}", self.master)).exists() {
            signal(self.master, libc::SIGKILL);
        }
        let _ = &self.dir;
    }
}

/// Keep-alive GETs from `conns` connections until `max` requests each or
/// `dur` elapse; returns the responses received.
fn load(addr: SocketAddr, conns: usize, max: usize, dur: Duration) -> usize {
    let handles: Vec<_> = (0..conns).map(|_| std::thread::spawn(move || requests(addr, max, dur))).collect();
    handles.into_iter().map(|h| h.join().expect("client thread")).sum()
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes it, CPU_ISSET reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set), 0, "sched_getaffinity");
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

/// One connection from each allowed CPU in turn (the client pinned there),
/// `max` requests each: every such CPU writes records (wake-ups are written
/// on the waker's CPU, and over loopback the client's send wakes the server).
fn load_from_each_cpu(addr: SocketAddr, cpus: &[usize], max: usize) -> usize {
    cpus.iter()
        .map(|&cpu| {
            std::thread::spawn(move || {
                // SAFETY: gettid has no preconditions.
                common::pin(unsafe { libc::gettid() } as u32, cpu);
                requests(addr, max, Duration::from_secs(5))
            })
            .join()
            .expect("client thread")
        })
        .sum()
}

/// Keep-alive GETs on one connection until `max` requests or `dur` elapse.
fn requests(addr: SocketAddr, max: usize, dur: Duration) -> usize {
    let mut s = TcpStream::connect(addr).expect("connect to nginx");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    let mut n = 0;
    while n < max && t.elapsed() < dur {
        s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
        // The response ends with the 2-byte body "ok".
        let mut got = Vec::new();
        loop {
            let k = s.read(&mut buf).expect("read response");
            assert!(k > 0, "nginx closed the connection");
            got.extend_from_slice(&buf[..k]);
            if got.ends_with(b"\r\n\r\nok") {
                break;
            }
        }
        n += 1;
    }
    n
}

fn json_lines(p: &Path) -> Vec<Value> {
    fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

// ---- loss accounting ------------------------------------------------------

/// A 1 MiB ring and a stopped consumer: the records of a burst of requests
/// must be counted as lost, per CPU, with the flag that fixes it.
#[test]
fn full_ring_buffer_is_reported_as_lost() {
    if !require_root() {
        return;
    }
    let _s = serial();
    let nginx = Nginx::start();
    let dir = tempfile::tempdir().unwrap();
    let (ready, out) = (dir.path().join("ready"), dir.path().join("out.jsonl"));
    let mut child = nd()
        .args(["trace", "--json", "--ringbuf-size", "1", "-p", &nginx.master.to_string(), "--ready-file"])
        .arg(&ready)
        .arg("-o")
        .arg(&out)
        .arg("60")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(&ready, &mut child);
    // Warm-up: nginx's workers are in epoll_wait, not mid-accept.
    load(nginx.addr(), 1, 10, Duration::from_secs(2));
    signal(child.id(), libc::SIGSTOP);
    // Thousands of requests while nobody reads the ring: each costs a few
    // hundred bytes of records (epoll exit/enter, switches, wake-ups).
    let served = load(nginx.addr(), 4, 5_000, Duration::from_millis(1500));
    signal(child.id(), libc::SIGCONT);
    // Once the reader has emptied the ring, a few more requests from every
    // CPU: each CPU's next record shows where its losses were.
    std::thread::sleep(Duration::from_millis(500));
    let cpus = allowed_cpus();
    load_from_each_cpu(nginx.addr(), &cpus, 20);
    // Past the reader's once-a-second look at the loss counters.
    std::thread::sleep(Duration::from_millis(1500));
    signal(child.id(), libc::SIGINT);
    let o = wait_output(child, Duration::from_secs(30), "after SIGINT");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "exit 0 after SIGINT: {err}");
    assert!(served >= 2_000, "the burst should be big enough to overflow 1 MiB: {served} requests");

    let lines = json_lines(&out);
    let sum = lines.last().unwrap();
    assert_eq!(sum["type"], "summary", "{sum}");
    let lost = &sum["lost"];
    let ringbuf = lost["ringbuf"].as_u64().expect("lost.ringbuf");
    eprintln!("burst of {served} requests while netdrift was stopped: {ringbuf} records lost");
    assert!(ringbuf > 0, "a 1 MiB ring with a stopped reader must drop records ({served} requests): {lost}");
    let per_cpu = lost["per_cpu"].as_array().expect("lost.per_cpu is an array");
    assert!(!per_cpu.is_empty(), "one entry per CPU: {lost}");
    let mut by_cpu = 0;
    for c in per_cpu {
        let c = c.as_array().expect("per-CPU entry is [ringbuf, stack, map_full, user_read]");
        assert_eq!(c.len(), 4, "{lost}");
        by_cpu += c[0].as_u64().unwrap();
    }
    assert_eq!(by_cpu, ringbuf, "per-CPU ring-buffer drops add up to the total: {lost}");
    let fix = sum["fix"].as_str().unwrap_or_default();
    assert!(fix.contains("--ringbuf-size"), "fix names the flag: {sum}");
    assert!(fix.contains("1 MiB"), "fix says the current size: {fix}");
    // As they happened: `lost` lines in the stream, adding up to the summary's total,
    // and a line on stderr once the reader ran again.
    let lost_lines: Vec<&serde_json::Value> = lines.iter().filter(|l| l["type"] == "lost").collect();
    let streamed: u64 = lost_lines.iter().map(|l| l["ringbuf"].as_u64().expect("lost.ringbuf")).sum();
    assert_eq!(streamed, ringbuf, "the stream's lost lines add up to the summary's total: {lost_lines:?}");
    assert!(lost_lines.iter().all(|l| l["ts"].is_u64() && l["fix"].as_str().unwrap_or("").contains("--ringbuf-size")), "{lost_lines:?}");
    assert!(err.contains("netdrift: LOST in the last"), "losses on stderr as they are seen: {err}");
    // The text summary (stderr with -o) says so too.
    assert!(err.contains("LOST: "), "text summary shows LOST: {err}");
    assert!(err.contains("--ringbuf-size"), "text summary names the flag: {err}");
    assert!(err.contains("; per CPU: CPU"), "text summary says which CPUs lost: {err}");
    assert!(lost["reader"]["run_ns"].as_u64().is_some_and(|n| n > 0), "the reader's own CPU time: {lost}");
    // Where they were: a records_lost event at each gap, before the first
    // record its CPU wrote after it (losses after a CPU's last record have
    // none; here every CPU wrote again).
    let gaps: Vec<&serde_json::Value> = lines.iter().filter(|l| l["type"] == "records_lost").collect();
    let marked: u64 = gaps.iter().map(|l| l["records"].as_u64().expect("records_lost.records")).sum();
    eprintln!("{} records_lost events for {marked} records; {} chains open across a gap", gaps.len(), sum["stats"]["chains_records_lost"]);
    assert!(marked > 0 && marked <= ringbuf, "the gaps are marked in the stream ({marked} of {ringbuf}): {gaps:?}");
    // Per CPU: every CPU we ran on wrote again after its losses (the load
    // after SIGCONT), so its gaps add up to its count.
    for (cpu, c) in per_cpu.iter().enumerate() {
        let on_cpu: u64 = gaps.iter().filter(|l| l["cpu"] == cpu).map(|l| l["records"].as_u64().unwrap()).sum();
        let count = c[0].as_u64().unwrap();
        if cpus.contains(&cpu) {
            assert_eq!(on_cpu, count, "CPU {cpu}'s gaps against its lost count: {gaps:?} {lost}");
        } else {
            assert!(on_cpu <= count, "CPU {cpu}: {gaps:?} {lost}");
        }
    }
    assert_eq!(sum["stats"]["records_lost"], marked, "{sum}");
    // The records it kept still decode and the stream still ends cleanly.
    assert_eq!(lines[0]["type"], "start");
    assert_eq!(sum["reason"], "interrupted");
}

// ---- lifetime -------------------------------------------------------------

fn signal_ends_with_summary(sig: libc::c_int, json: bool) {
    let name = if sig == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
    let target = sleeper();
    let dir = tempfile::tempdir().unwrap();
    let (ready, out) = (dir.path().join("ready"), dir.path().join("out.jsonl"));
    let mut cmd = nd();
    cmd.args(["trace", "-p", &target.0.id().to_string(), "--ready-file"]).arg(&ready);
    if json {
        cmd.arg("--json").arg("-o").arg(&out);
    }
    let mut child = cmd.arg("60").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_ready(&ready, &mut child);
    signal(child.id(), sig);
    let o = wait_output(child, Duration::from_secs(20), name);
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{name} ({}) exits 0: {stderr}", if json { "json" } else { "text" });
    if json {
        // Summary text on stderr, the complete JSON file under its final name.
        assert!(stderr.contains("interrupted after"), "{name}: summary on stderr: {stderr}");
        let lines = json_lines(&out);
        assert_eq!(lines[0]["type"], "start");
        let last = lines.last().unwrap();
        assert_eq!(last["type"], "summary", "{name}: the file ends with the summary");
        assert_eq!(last["reason"], "interrupted");
        assert!(!dir.path().join("out.jsonl.partial").exists(), "{name}: no .partial left");
    } else {
        assert!(stdout.contains("interrupted after"), "{name}: text summary on stdout: {stdout}");
        assert!(stdout.contains(" events"), "{name}: summary counts events: {stdout}");
        assert!(stdout.contains("lost:") || stdout.contains("LOST"), "{name}: summary reports losses: {stdout}");
    }
}

#[test]
fn sigterm_and_sigint_print_the_summary_and_exit_0() {
    if !require_root() {
        return;
    }
    let _s = serial();
    // tests/cli.rs covers SIGINT with --json.
    signal_ends_with_summary(libc::SIGTERM, true);
    signal_ends_with_summary(libc::SIGTERM, false);
    signal_ends_with_summary(libc::SIGINT, false);
}

/// SIGKILL cannot be caught: the kernel must drop every program and link
/// with the process's fds, and the output must stay marked incomplete.
#[test]
fn sigkill_leaves_no_bpf_and_only_a_partial_file() {
    if !require_root() {
        return;
    }
    let _s = serial();
    let target = sleeper();
    let dir = tempfile::tempdir().unwrap();
    let (ready, out) = (dir.path().join("ready"), dir.path().join("out.jsonl"));
    let partial = dir.path().join("out.jsonl.partial");
    let mut child = nd()
        .args(["trace", "--json", "-p", &target.0.id().to_string(), "--ready-file"])
        .arg(&ready)
        .arg("-o")
        .arg(&out)
        .arg("60")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(&ready, &mut child);
    let (progs, links) = held_bpf_ids(child.id());
    assert!(!progs.is_empty(), "a running netdrift holds its programs by fd");
    assert!(!links.is_empty(), "and its attachments as BPF links");
    let loaded = bpftool_json("prog");
    for id in &progs {
        let p = loaded.iter().find(|p| p["id"].as_u64() == Some(*id)).unwrap_or_else(|| panic!("prog {id} not in bpftool prog show"));
        assert!(p["name"].as_str().unwrap_or("").starts_with("nd_"), "netdrift's programs are named nd_*: {p}");
    }
    assert!(partial.exists() && !out.exists(), "FILE.partial while running");

    signal(child.id(), libc::SIGKILL);
    let o = wait_output(child, Duration::from_secs(10), "SIGKILL");
    assert_eq!(o.status.code(), None, "killed by a signal");
    wait_freed(&progs, &links, "SIGKILL");
    assert!(partial.exists(), "the output stays as FILE.partial");
    assert!(!out.exists(), "never FILE after SIGKILL: the trace did not end cleanly");
}

/// A FIFO with no reader as the output is waited for, said on stderr,
/// with nothing loaded; Ctrl-C ends the wait with status 0.
#[test]
fn a_fifo_output_waits_for_its_reader_and_ctrl_c_ends_the_wait() {
    if !require_root() {
        return;
    }
    let _s = serial();
    let target = sleeper();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("out.fifo");
    common::mkfifo(&fifo);
    let child = nd().args(["trace", "-p", &target.0.id().to_string(), "-o"]).arg(&fifo).arg("60").stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let (progs, links) = held_bpf_ids(child.id());
    assert!(progs.is_empty() && links.is_empty(), "nothing loaded while waiting for the reader");
    signal(child.id(), libc::SIGINT);
    let o = wait_output(child, Duration::from_secs(5), "SIGINT while waiting for a FIFO's reader");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("waiting for a reader of the FIFO {}", fifo.display())), "{err}");
    assert!(err.contains("nothing was traced"), "{err}");
}

/// A second Ctrl-C kills a run stuck writing (a FIFO whose reader stopped
/// reading): it dies by the signal, its ready file removed, nothing left loaded.
#[test]
fn a_second_ctrl_c_kills_and_removes_the_ready_file() {
    if !require_root() {
        return;
    }
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let (fifo, ready) = (dir.path().join("out.fifo"), dir.path().join("ready"));
    common::mkfifo(&fifo);
    let mut child = nd()
        .args(["demo", "-n", "2000", "--gap-ms", "0", "--json", "-o"])
        .arg(&fifo)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A reader that never reads: the pipe fills and netdrift's writes block.
    let _reader = fs::File::open(&fifo).expect("open the FIFO");
    wait_ready(&ready, &mut child);
    let (progs, links) = held_bpf_ids(child.id());
    std::thread::sleep(Duration::from_millis(1500));
    signal(child.id(), libc::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    signal(child.id(), libc::SIGINT);
    let o = wait_output(child, Duration::from_secs(10), "a second SIGINT");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(libc::SIGINT), "killed by the second Ctrl-C: {}", String::from_utf8_lossy(&o.stderr));
    assert!(!ready.exists(), "the ready file of a dead run is removed");
    wait_freed(&progs, &links, "a second SIGINT");
}

/// A recording is flushed once a second: a killed run's `.partial` holds
/// its records but the last second's, and `analyze` reads them.
#[test]
fn a_killed_recording_keeps_its_records_for_analyze() {
    if !require_root() {
        return;
    }
    let _s = serial();
    // A process that sleeps and forks: wake-ups, switches, exits.
    let target = Guard(Command::new("sh").args(["-c", "while :; do sleep 0.05; done"]).spawn().expect("spawn sh"));
    let dir = tempfile::tempdir().unwrap();
    let (ready, rec) = (dir.path().join("ready"), dir.path().join("rec.ndr"));
    let partial = dir.path().join("rec.ndr.partial");
    let mut child = nd()
        .args(["trace", "-p", &target.0.id().to_string(), "--ready-file"])
        .arg(&ready)
        .arg("--record")
        .arg(&rec)
        .arg("60")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(&ready, &mut child);
    std::thread::sleep(Duration::from_millis(2500));
    signal(child.id(), libc::SIGKILL);
    let _ = wait_output(child, Duration::from_secs(10), "SIGKILL");
    let len = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(len > 0, "the killed run's recording holds what it flushed: {} is {len} bytes", partial.display());
    let o = nd().arg("analyze").arg(&partial).output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "analyze of the partial recording: {err}");
    assert!(err.contains("the recording is incomplete"), "{err}");
    assert!(out.contains("recording incomplete") && out.contains("wake-ups"), "{out}");
    // What only the end line held is unknown, not 0.
    let o = nd().args(["analyze", "--json"]).arg(&partial).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let summary: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or("")).expect("a summary line");
    assert!(summary["lost"].is_null() && summary["stats"]["epoll_empty_summed"].is_null(), "{}", summary["stats"]);
    eprintln!("killed after 2.5 s: {len} bytes recorded; {}", out.lines().find(|l| l.contains("events,")).unwrap_or(""));
}

// ---- bad input ------------------------------------------------------------

/// Whether strace runs here (it records a run's bpf() calls).
fn strace_available() -> bool {
    Command::new("strace").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false)
}

/// Run netdrift (optionally as nobody) and check: exit code 2, one line on
/// stderr containing `needle`, nothing on stdout, and nothing loaded: no
/// bpf() call at all (with strace) and no new nd_* program.
fn bad_input(args: &[&str], needle: &str, as_nobody: bool, log: &Path) {
    bad_input_as(args, needle, as_nobody.then_some(""), log)
}

/// `bad_input`, as uid nobody with the capabilities `caps` (`setpriv`'s
/// list, e.g. `+bpf,+perfmon`; "" for none) when given.
fn bad_input_as(args: &[&str], needle: &str, nobody_caps: Option<&str>, log: &Path) {
    let as_nobody = nobody_caps.is_some();
    let before = nd_programs();
    let strace = strace_available();
    let mut cmd;
    if strace {
        cmd = Command::new("strace");
        cmd.args(["-f", "-qq", "-e", "trace=bpf", "-o"]).arg(log);
    } else {
        cmd = Command::new(if as_nobody { "setpriv" } else { NETDRIFT });
    }
    if as_nobody {
        if strace {
            cmd.arg("setpriv");
        }
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        match nobody_caps {
            Some(c) if !c.is_empty() => cmd.args([format!("--inh-caps={c}"), format!("--ambient-caps={c}")]),
            _ => cmd.arg("--inh-caps=-all"),
        };
        cmd.arg(NETDRIFT);
    } else if strace {
        cmd.arg(NETDRIFT);
    }
    let o = cmd.args(args).stdin(Stdio::null()).output().expect("run netdrift");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: exit 2, got {:?}: {err}", o.status);
    assert_eq!(err.lines().count(), 1, "{args:?}: one line on stderr, got: {err}");
    assert!(err.starts_with("netdrift: "), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err:?} should contain {needle:?}");
    assert!(o.stdout.is_empty(), "{args:?}: nothing on stdout: {:?}", String::from_utf8_lossy(&o.stdout));
    if strace {
        let calls = fs::read_to_string(log).unwrap_or_default();
        let bpf: Vec<&str> = calls.lines().filter(|l| l.contains("bpf(")).collect();
        assert!(bpf.is_empty(), "{args:?}: must not touch BPF, made {} bpf() calls, e.g. {:?}", bpf.len(), bpf.first());
    }
    let new: Vec<u64> = nd_programs().difference(&before).copied().collect();
    assert!(new.is_empty(), "{args:?}: new nd_* programs {new:?}");
}

#[test]
fn bad_input_gives_one_line_exit_2_and_loads_nothing() {
    if !require_root() {
        return;
    }
    let _s = serial();
    // `make deps-test` installs strace: without it the test could not see a bpf() call.
    assert!(strace_available(), "strace is needed to check that no bpf() call is made (apt-get install strace)");
    let target = sleeper();
    let pid = target.0.id().to_string();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("strace.log");
    let missing_dir: PathBuf = dir.path().join("no-such-dir").join("out.jsonl");
    let missing = missing_dir.to_str().unwrap();

    bad_input(&["trace", "-p", "4194304", "1"], "no process with pid 4194304", false, &log);
    bad_input(&["trace", "-p", "0", "1"], "0 is not a valid id", false, &log);
    bad_input(&["trace", "-p", "12ab", "1"], "not a number", false, &log);
    bad_input(&["trace", "-p", "-3", "1"], "unexpected argument '-3' found: every number netdrift takes is positive", false, &log);
    bad_input(&["trace", "-t", "4194304", "1"], "no thread with tid 4194304", false, &log);
    bad_input(&["trace", "-c", "nd-no-such-comm", "1"], "no running process or thread is named", false, &log);
    bad_input(&["trace", "-p", &pid, "--json", "-o", missing, "1"], "cannot write", false, &log);
    bad_input(&["trace", "-p", &pid, "--ringbuf-size", "0", "1"], "power of two", false, &log);
    bad_input(&["trace", "-p", &pid, "--", "0"], "positive number of seconds", false, &log);
    // Once a panic (a deadline past the clock's range).
    bad_input(&["trace", "-p", &pid, "1e20"], "at most 4294967295", false, &log);
    bad_input(&["offwake", "-p", &pid, "1e20"], "at most 4294967295", false, &log);
    bad_input(&["trace", "-p", &pid, "--idle-ms", "18446744073710", "1"], "not in 1..=86400000", false, &log);
    // Not root: one line naming the fix, before anything is loaded.
    bad_input(&["trace", "-p", &pid, "1"], "needs root", true, &log);
    // A .partial left by an earlier, interrupted run would prove nothing.
    let _ = std::fs::remove_file("/tmp/nd-nobody.jsonl.partial");
    bad_input(&["trace", "-p", &pid, "--json", "-o", "/tmp/nd-nobody.jsonl", "1"], "needs root", true, &log);
    assert!(!Path::new("/tmp/nd-nobody.jsonl.partial").exists(), "not root: no output file created");
    // Handlers are looked up in the target's files: not root is said first
    // (it was "binary not found", or "/proc/PID/exe is gone").
    bad_input(&["trace", "-p", &pid, "--preset", "nginx", "1"], "needs root", true, &log);
    bad_input(&["trace", "-p", &pid, "--handler", "libc:epoll_wait", "1"], "needs root", true, &log);
    // CAP_BPF + CAP_PERFMON load the programs, but another user's fds and
    // tracefs stay closed: said, not traced with sockets unnamed.
    let caps = Some("+bpf,+perfmon");
    bad_input_as(&["trace", "-p", &pid, "1"], &format!("cannot list /proc/{pid}/fd"), caps, &log);
    bad_input_as(&["trace", "-p", &pid, "1"], "(or add both CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE)", caps, &log);
    // Listing them is not reading them: the links and fdinfo take CAP_SYS_PTRACE.
    bad_input_as(
        &["trace", "-p", &pid, "1"],
        &format!("cannot read /proc/{pid}/fd/0 or its fdinfo"),
        Some("+bpf,+perfmon,+dac_read_search"),
        &log,
    );
    let own =
        Guard(Command::new("setpriv").args(["--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "60"]).spawn().expect("setpriv"));
    let own_pid = own.0.id().to_string();
    let t = Instant::now();
    while !fs::read_to_string(format!("/proc/{own_pid}/status")).unwrap_or_default().contains("Uid:\t65534") {
        assert!(t.elapsed() < Duration::from_secs(5), "setpriv did not become nobody");
        std::thread::sleep(Duration::from_millis(5));
    }
    bad_input_as(
        &["trace", "-p", &own_pid, "1"],
        "this user cannot read it: run netdrift as root (or add CAP_DAC_READ_SEARCH)",
        caps,
        &log,
    );
    // With tracefs readable too it traces; kernel addresses it cannot read are said at start.
    let nobody = |caps: &str, cmd: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", &format!("--inh-caps={caps}"), &format!("--ambient-caps={caps}")])
            .args(cmd)
            .output()
            .expect("setpriv")
    };
    let caps = "+bpf,+perfmon,+dac_read_search";
    // Linux 6.1 lists a few per-CPU symbols at address 0 first: any non-zero one of the first 1000.
    let first = String::from_utf8_lossy(&nobody(caps, &["head", "-1000", "/proc/kallsyms"]).stdout).to_string();
    let hidden = first.lines().all(|l| l.split_whitespace().next().is_none_or(|a| a.chars().all(|c| c == '0')));
    let o = nobody(caps, &[NETDRIFT, "trace", "-p", &own_pid, "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(err.contains("/proc/kallsyms shows no kernel addresses to netdrift"), hidden, "kallsyms line {first:?}: {err}");
    // doctor says the same, without root.
    let doctor = |caps: &str| -> serde_json::Value {
        let o = nobody(caps, &[NETDRIFT, "doctor", "--json"]);
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("doctor --json as nobody: {e}: {}", String::from_utf8_lossy(&o.stderr)))
    };
    let ok = |r: &serde_json::Value, name: &str| {
        r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .chain(r["features"].as_array().unwrap())
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {r}"))["ok"]
            == true
    };
    let r = doctor(caps);
    assert!(!ok(&r, "proc_fd") && ok(&r, "tracefs"), "{r}");
    assert_eq!(ok(&r, "kallsyms"), !hidden, "{r}");
    let r = doctor("+bpf,+perfmon,+dac_read_search,+sys_ptrace");
    assert!(ok(&r, "proc_fd"), "{r}");
    // Handlers attach as trace attaches them (multi-uprobe links where the kernel has them).
    if netdrift::probes::features().unwrap().uprobe_multi {
        assert!(ok(&r, "handler_probes"), "{r}");
    }

    // Flag conflicts declared in the CLI.
    bad_input(&["offwake", "-p", &pid, "-u", "-k", "1"], "cannot be used with", false, &log);
    bad_input(&["offwake", "-p", &pid, "-U", "-K", "1"], "cannot be used with", false, &log);
    bad_input(&["offwake", "-p", &pid, "--folded", "--json", "1"], "cannot be used with", false, &log);
    // Every stack taken and none printed.
    bad_input(&["herd", "-p", &pid, "--stacks", "1"], "herd prints no chains, so no stacks", false, &log);

    // Handler specs: an invalid glob, a missing binary, a binary that is not ELF.
    let not_elf = dir.path().join("not-elf");
    fs::write(&not_elf, "#!/bin/sh\necho not an ELF file\n").unwrap();
    let not_elf_spec = format!("{}:main*", not_elf.display());
    bad_input(&["trace", "-p", &pid, "--handler", "/nonexistent/bin/server:handle*", "1"], "not found", false, &log);
    bad_input(&["trace", "-p", &pid, "--handler", &not_elf_spec, "1"], "not an ELF file", false, &log);
    bad_input(&["trace", "-p", &pid, "--handler", "exe:[", "1"], "unclosed '['", false, &log);
    bad_input(&["trace", "-p", &pid, "--handler", "exe:", "1"], "empty glob", false, &log);
}

/// Without root, a target whose files netdrift cannot read is refused at
/// start; one that becomes a target later (`-c --wait`: root's process
/// started after the attach) cannot be refused, so it is said when it comes.
#[test]
fn late_target_netdrift_cannot_read_is_said() {
    if !require_root() {
        return;
    }
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let exe = dir.path().join("nd-late-tgt");
    fs::copy("/bin/sleep", &exe).unwrap();
    let ready = dir.path().join("ready");
    let caps = "+bpf,+perfmon,+dac_read_search";
    let mut nd = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", &format!("--inh-caps={caps}"), &format!("--ambient-caps={caps}")])
        .args([NETDRIFT, "trace", "-c", "nd-late-tgt", "--wait", "--ready-file"])
        .arg(&ready)
        .arg("3")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv");
    wait_ready(&ready, &mut nd);
    let late = Guard(Command::new(&exe).arg("10").stdin(Stdio::null()).spawn().expect("spawn the late target"));
    let o = wait_output(nd, Duration::from_secs(30), "trace as nobody");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let pid = late.0.id();
    let said: Vec<&str> = err.lines().filter(|l| l.contains("became a target")).collect();
    assert_eq!(said.len(), 1, "one line for the late target: {err}");
    assert!(said[0].contains(&format!("cannot read /proc/{pid}/fd/0 or its fdinfo")), "{err}");
    assert!(said[0].contains(&format!("pid {pid} (nd-late-tgt) became a target, but its sockets go unnamed")), "{err}");
    assert!(said[0].contains("CAP_SYS_PTRACE"), "{err}");
}

/// Output paths that cannot be written are refused before any program is
/// loaded (they were once found only after loading, or after the whole trace).
#[test]
fn unwritable_ready_file_or_output_dir_loads_nothing() {
    if !require_root() {
        return;
    }
    let _s = serial();
    let target = sleeper();
    let pid = target.0.id().to_string();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("strace.log");
    let missing = dir.path().join("no-such-dir").join("ready");
    bad_input(&["trace", "-p", &pid, "--ready-file", missing.to_str().unwrap(), "1"], "cannot write", false, &log);
    let out_dir = dir.path().join("a-directory");
    fs::create_dir(&out_dir).unwrap();
    bad_input(&["trace", "-p", &pid, "-o", out_dir.to_str().unwrap(), "1"], "it is a directory", false, &log);
    // Nothing can be made in /proc: said so, not blamed on file attributes.
    bad_input(&["trace", "-p", &pid, "-o", "/proc/self/status", "1"], "/proc and /sys take no new files", false, &log);
    // A loop of symbolic links is refused, not replaced by the output.
    let (la, lb) = (dir.path().join("lA"), dir.path().join("lB"));
    std::os::unix::fs::symlink(&lb, &la).unwrap();
    std::os::unix::fs::symlink(&la, &lb).unwrap();
    for opt in ["-o", "--record", "--perfetto"] {
        bad_input(&["trace", "-p", &pid, opt, la.to_str().unwrap(), "1"], "lead back to themselves", false, &log);
        assert!(fs::symlink_metadata(&la).unwrap().file_type().is_symlink(), "{opt}: the link is left as it was");
    }
    // The demo checks its outputs before its server starts (one line, not a banner first).
    bad_input(&["demo", "-o", missing.to_str().unwrap()], "cannot write", false, &log);
    let same = dir.path().join("same");
    bad_input(&["demo", "-o", same.to_str().unwrap(), "--perfetto", same.to_str().unwrap()], "given for two outputs", false, &log);
    // An immutable file cannot be replaced: refused before the run, not at its end.
    let frozen = dir.path().join("frozen");
    fs::write(&frozen, "").unwrap();
    if Command::new("chattr").arg("+i").arg(&frozen).status().is_ok_and(|s| s.success()) {
        // And a new file in an append-only directory: its .partial could not be renamed.
        let adir = dir.path().join("append-only");
        fs::create_dir(&adir).unwrap();
        let _ = Command::new("chattr").arg("+a").arg(&adir).status();
        let r = std::panic::catch_unwind(|| {
            bad_input(&["trace", "-p", &pid, "-o", frozen.to_str().unwrap(), "1"], "immutable", false, &log);
            bad_input(&["trace", "-p", &pid, "-o", adir.join("new").to_str().unwrap(), "1"], "append-only", false, &log);
        });
        let _ = Command::new("chattr").arg("-i").arg(&frozen).status();
        let _ = Command::new("chattr").arg("-a").arg(&adir).status();
        if let Err(e) = r {
            std::panic::resume_unwind(e);
        }
    } else {
        eprintln!("not checked: chattr +i is not supported on {} (the immutable-output case)", dir.path().display());
    }
}

/// What changes between the /proc scan of the targets and the attach, no
/// hook sees: a target that exited must leave the kernel lists all the same
/// (a process reusing its pid would be traced), and a child a target forked
/// must join them (nginx starting its workers). The live one stays.
#[test]
fn targets_changed_before_the_programs_ran_are_settled_after_the_attach() {
    if !require_root() {
        return;
    }
    let _g = serial();
    use libbpf_rs::{MapCore, MapFlags};
    let mut gone = Command::new("true").spawn().expect("true");
    let dead = gone.id();
    gone.wait().unwrap();
    // Forked by this process "after the scan": not in the list given.
    let child = sleeper();
    let kid = child.0.id();
    let live = std::process::id();
    let cfg = netdrift::probes::ProbeConfig { tgids: vec![dead, live], ..Default::default() };
    let mut obj = std::mem::MaybeUninit::uninit();
    let p = netdrift::probes::Probes::load(&cfg, &mut obj).expect("load");
    let listed: BTreeSet<u32> = p.skel.maps.targets_tgid.keys().map(|k| u32::from_ne_bytes(k[..4].try_into().unwrap())).collect();
    assert_eq!(listed, [live, kid].into(), "the exited pid {dead} is dropped, the child {kid} joins");
    assert_eq!(p.forked, [kid]);
    let bit = |id: u32| {
        let w = p.skel.maps.tgid_bits.lookup(&(id >> 6).to_ne_bytes(), MapFlags::ANY).unwrap().expect("word");
        u64::from_ne_bytes(w[..8].try_into().unwrap()) >> (id & 63) & 1
    };
    assert_eq!((bit(dead), bit(live), bit(kid)), (0, 1, 1));
}
