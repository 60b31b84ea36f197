//! Root end-to-end tests of wake-ups beyond one socket in one epoll set:
//! causes read from the waker's stack when stacks are reused (the default),
//! for one thread waking another through an eventfd and a pipe in turn, and
//! a herd through nested epoll instances, a herd of threads asleep before
//! the trace, and a busy poll summed in the kernel.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{pin, require_root, SERIAL};

const ROUNDS: u64 = 10;

/// A program of tests/progs built and started: it prints a first line (its
/// pid, or what the test needs), waits for a byte or the end of its stdin,
/// and prints its own tally at the end.
struct TestProg {
    name: &'static str,
    child: Child,
    out: BufReader<std::process::ChildStdout>,
    first_line: String,
}

impl TestProg {
    fn start(dir: &Path, name: &'static str, args: &[&str]) -> TestProg {
        let bin = common::build_c(dir, name, &["-O1", "-pthread"]);
        let mut child = Command::new(&bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first_line = String::new();
        out.read_line(&mut first_line).unwrap_or_else(|e| panic!("{name}'s first line: {e}"));
        TestProg { name, child, out, first_line }
    }

    /// Its go byte.
    fn go(&mut self) {
        self.child.stdin.as_mut().expect("stdin").write_all(b"g").expect("go");
    }

    /// Its stdin closed, its tally once it exited successfully.
    fn finish(mut self) -> String {
        drop(self.child.stdin.take());
        let mut tally = String::new();
        self.out.read_to_string(&mut tally).unwrap_or_else(|e| panic!("{}'s tally: {e}", self.name));
        assert!(self.child.wait().expect("wait").success(), "{} failed: {tally}", self.name);
        tally
    }
}

/// `netdrift trace -p pid --json -o FILE 30`, once its probes are attached.
fn trace_json(dir: &Path, pid: u32) -> (Child, PathBuf) {
    let (json, ready) = (dir.join("out.jsonl"), dir.join("ready"));
    let mut nd = Command::new(env!("CARGO_BIN_EXE_netdrift"))
        .args(["trace", "-p", &pid.to_string(), "--json", "-o"])
        .arg(&json)
        .arg("--ready-file")
        .arg(&ready)
        .arg("30")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("netdrift");
    common::wait_ready(&ready, &mut nd, Duration::from_secs(30), common::piped_stderr);
    (nd, json)
}

/// Every line of a `--json` output file, parsed.
fn json_lines(json: &Path) -> Vec<Value> {
    std::fs::read_to_string(json).expect("JSON written").lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

/// Waits for a trace to end by itself (its target exited); returns its stderr.
fn ended(nd: &mut Child) -> String {
    let t = Instant::now();
    let st = loop {
        if let Some(st) = nd.try_wait().expect("try_wait") {
            break st;
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = nd.kill();
            panic!("netdrift did not end after its target exited");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = common::piped_stderr(nd);
    assert!(st.success(), "netdrift failed ({st}): {err}");
    err
}

#[test]
fn an_eventfd_and_a_pipe_written_by_one_thread_keep_their_own_causes() {
    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut prog = TestProg::start(dir.path(), "fdwake", &[&ROUNDS.to_string(), "20"]);
    let line = prog.first_line.clone();
    let pid: u32 = line.trim().parse().unwrap_or_else(|_| panic!("fdwake printed {line:?}, not its pid"));

    let (mut nd, json) = trace_json(dir.path(), pid);
    prog.go();
    let tally = prog.finish();
    assert_eq!(tally.trim(), format!("eventfd {ROUNDS} pipe {ROUNDS}"));
    let err = ended(&mut nd);

    let lines = json_lines(&json);
    let summary = lines.last().expect("summary line");
    assert_eq!(summary["lost"]["ringbuf"], 0, "no record lost: {}", summary["lost"]);
    // The poker's wake-ups of the loop in time order: eventfd, pipe, eventfd...
    // (counts alone would not do: with a shared class, as many of each are wrong).
    let mut wakes: Vec<&Value> =
        lines.iter().filter(|l| l["type"] == "wake" && l["task"]["comm"] == "fw:poker" && l["target"]["comm"] == "fw:loop").collect();
    wakes.sort_by_key(|l| l["ts"].as_u64());
    let causes: Vec<&str> = wakes.iter().map(|l| l["cause"].as_str().unwrap_or("?")).collect();
    let reused = wakes.iter().filter(|l| l["stack_reused"] == Value::Bool(true)).count() as u64;
    eprintln!("fw:poker -> fw:loop wake-ups: {causes:?}, {reused} with a reused stack");
    let want: Vec<&str> = (0..ROUNDS).flat_map(|_| ["eventfd", "pipe"]).collect();
    assert_eq!(causes, want, "each wake-up's cause, in time order; stderr: {err}");
    // 20 ms apart, within the 100 ms reuse window: reuse was exercised, and kept each class apart.
    assert!(reused >= ROUNDS, "stack reuse was exercised: {reused} of {} wake-ups reused a stack", 2 * ROUNDS);
}

/// tests/progs/timerjoin.c traced to its end: `conns` connections reset by
/// its client. Its port, netdrift's stderr and JSON lines.
fn timerjoin_resets(dir: &Path, conns: usize) -> (String, String, Vec<Value>) {
    let mut prog = TestProg::start(dir, "timerjoin", &["serve", &conns.to_string()]);
    let line = prog.first_line.clone();
    let (pid, port) = line
        .split_once(' ')
        .and_then(|(p, q)| Some((p.parse::<u32>().ok()?, q.trim().to_string())))
        .unwrap_or_else(|| panic!("timerjoin printed {line:?}, not its pid and port"));
    let (mut nd, json) = trace_json(dir, pid);
    prog.go();
    let client = Command::new(dir.join("timerjoin")).args(["client", &port, &conns.to_string()]).status().expect("client");
    assert!(client.success(), "timerjoin client failed");
    let tally = prog.finish();
    assert_eq!(tally.trim(), format!("closed {conns}"));
    let err = ended(&mut nd);
    (port, err, json_lines(&json))
}

/// A reset wakes the server's loop through epoll; right after, on the same
/// CPU and interrupting the same client, a timer wakes the server's other
/// thread, asleep in nanosleep. The kernel side once gave that wake-up the
/// reset's event (a state change just before on that CPU, same waker): a
/// herd of two in half the chains. Only the loop is the reset's.
#[test]
fn a_timer_wake_up_after_a_reset_on_its_cpu_is_not_the_resets() {
    if !require_root() {
        return;
    }
    const CONNS: usize = 20;
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, err, lines) = timerjoin_resets(dir.path(), CONNS);
    let summary = lines.last().expect("summary line");
    assert_eq!(summary["lost"]["ringbuf"], 0, "no record lost: {}", summary["lost"]);
    let sleeper: Vec<&Value> = lines.iter().filter(|l| l["type"] == "wake" && l["target"]["comm"] == "tj:sleeper").collect();
    let by_client = sleeper.iter().filter(|l| l["task"]["comm"] == "timerjoin").count();
    let with_sock: Vec<&&Value> = sleeper.iter().filter(|l| l["sock_seq"].as_u64().unwrap_or(0) != 0).collect();
    eprintln!("tj:sleeper: {} wake-ups, {by_client} interrupting the client, {} with a socket event", sleeper.len(), with_sock.len());
    // The case was made: timer wake-ups interrupting the client after its resets.
    assert!(by_client >= CONNS / 2, "only {by_client} of the sleeper's wake-ups interrupted the client; stderr: {err}");
    assert!(with_sock.is_empty(), "a timer wake-up joined a socket event: {}", with_sock[0]);
    assert_eq!(summary["stats"]["herd_chains"], 0, "no chain woke two threads; stderr: {err}");
    assert_eq!(summary["stats"]["connection_closes"], CONNS, "every reset connection closed once");
}

/// A connection reset while the server sleeps in epoll_wait is found in its
/// ready list already CLOSE; the server then closes it and the kernel frees
/// it. Another process's sockets made next reuse that memory: their state
/// changes were once written as the server's (any process, any netns).
#[test]
fn state_changes_of_other_sockets_at_a_reset_sockets_address_are_not_the_targets() {
    if !require_root() {
        return;
    }
    const CONNS: usize = 20;
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    // This process, untraced, makes and closes loopback connections all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let churn_port = listener.local_addr().unwrap().port();
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut made = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let c = TcpStream::connect(("127.0.0.1", churn_port)).expect("churn connect");
                let (a, _) = listener.accept().expect("churn accept");
                drop((c, a));
                made += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            made
        })
    };
    let (port, err, lines) = timerjoin_resets(dir.path(), CONNS);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let made = churn.join().expect("churn thread");
    let summary = lines.last().expect("summary line");
    assert_eq!(summary["lost"]["ringbuf"], 0, "no record lost: {}", summary["lost"]);
    let states: Vec<&Value> = lines.iter().filter(|l| l["type"] == "sock_state").collect();
    let theirs = |l: &&Value| {
        let suffix = format!(":{port}");
        [&l["sock"]["local"], &l["sock"]["remote"]].iter().any(|a| a.as_str().is_some_and(|a| a.ends_with(&suffix)))
    };
    let foreign: Vec<&&Value> = states.iter().filter(|l| !theirs(l)).collect();
    eprintln!("{made} connections made and closed meanwhile; {} sock_state lines, {} not of port {port}", states.len(), foreign.len());
    assert!(made >= 100, "the churn made only {made} connections");
    assert!(foreign.is_empty(), "{} state changes of sockets the target never had, e.g. {}; stderr: {err}", foreign.len(), foreign[0]);
    // The resets themselves are the target's.
    let resets = states.iter().filter(|l| l["old"] == 1 && l["new"] == 7 && theirs(l)).count();
    assert_eq!(resets, CONNS, "one ESTABLISHED -> CLOSE per reset connection");
}

/// memcached's two workers both wait on its UDP socket: each datagram wakes
/// both. A datagram has no sequence number, so the kernel side once gave
/// every datagram of one client within 1 ms the first one's event: one
/// socket event for ten requests, the other chains without a socket.
#[test]
fn each_datagram_of_a_request_response_client_is_its_own_event() {
    if !require_root() {
        return;
    }
    const ROUNDS: usize = 10;
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let mut mc = Command::new("memcached")
        .args(["-p", "0", "-U", &port, "-l", "127.0.0.1", "-t", "2", "-u", "nobody"])
        .stdout(Stdio::null())
        .spawn()
        .expect("memcached (apt-get install memcached)");
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    client.connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    // memcached's UDP frame: request id, sequence, datagram count, reserved.
    let request = |id: u8| [&[0, id, 0, 0, 0, 1, 0, 0][..], b"version\r\n"].concat();
    let mut reply = [0u8; 64];
    let t = Instant::now();
    while client.send(&request(0)).is_err() || client.recv(&mut reply).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "memcached did not answer on UDP");
    }
    let (mut nd, json) = trace_json(dir.path(), mc.id());
    for i in 1..=ROUNDS {
        client.send(&request(i as u8)).unwrap();
        let n = client.recv(&mut reply).expect("memcached's reply");
        assert!(reply[8..n].starts_with(b"VERSION"), "{:?}", String::from_utf8_lossy(&reply[..n]));
        // Well inside the 1 ms in which a socket's wake-ups make one event, and
        // time for both workers to wait again: a worker still handling the
        // last datagram when the next comes keeps it in that chain (no event).
        std::thread::sleep(Duration::from_micros(300));
    }
    std::thread::sleep(Duration::from_millis(200));
    let _ = mc.kill();
    let _ = mc.wait();
    let err = ended(&mut nd);

    let lines = json_lines(&json);
    let me = std::process::id();
    let wakes: Vec<&Value> = lines.iter().filter(|l| l["type"] == "wake" && l["task"]["pid"] == me).collect();
    let events: std::collections::BTreeSet<u64> = wakes.iter().filter_map(|l| l["sock_seq"].as_u64()).filter(|&s| s != 0).collect();
    let udp_ready = lines.iter().filter(|l| l["type"] == "sock_ready" && l["sock"]["protocol"] == 17).count();
    eprintln!("{} wake-ups by the client, {} socket events, {udp_ready} UDP sock_ready lines", wakes.len(), events.len());
    // One per datagram (before: 1 for all ten), but for a worker still busy with the last one.
    assert!(events.len() >= ROUNDS - 2 && events.len() <= ROUNDS, "one socket event per datagram: {}; stderr: {err}", events.len());
    assert_eq!(udp_ready, events.len(), "one UDP sock_ready per event");
    assert!(wakes.len() >= ROUNDS, "every datagram woke a worker: {} wake-ups", wakes.len());
}

/// Each worker waits on an outer epoll instance holding an inner one that
/// holds the shared listener: the wake-up's socket is read one level down,
/// and the worker's epoll_wait on the inner instance continues its hop, so
/// the herd is counted as with a plain epoll set; a loser that then sleeps
/// in the inner one (no timeout) was woken for nothing too.
#[test]
fn a_herd_through_nested_epoll_instances_is_counted() {
    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    nested_herd("0");
    nested_herd("-1");
}

/// One run of nestedherd with that inner epoll_wait timeout.
fn nested_herd(inner_timeout_ms: &str) {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    assert!(cpus >= 2, "the herd needs two CPUs so both workers sleep at once; this machine has {cpus}");
    const K: u64 = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = TestProg::start(dir.path(), "nestedherd", &[inner_timeout_ms]);
    let line = prog.first_line.clone();
    let nums: Vec<u32> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert_eq!(nums.len(), 3, "nestedherd printed {line:?}");
    let (port, pid) = (nums[0] as u16, prog.child.id());
    pin(nums[1], 0);
    pin(nums[2], 1);

    let (mut nd, json) = trace_json(dir.path(), pid);
    // One at a time, both workers asleep before each.
    for _ in 0..K {
        std::thread::sleep(Duration::from_millis(50));
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.write_all(b"x").expect("send");
    }
    std::thread::sleep(Duration::from_millis(200));
    // It ends at the end of its stdin.
    let tally = prog.finish();
    let counts: Vec<u64> = tally.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert_eq!(counts.len(), 3, "nestedherd printed {tally:?}");
    let (accepted, eagain, empty) = (counts[0], counts[1], counts[2]);
    assert_eq!(accepted, K, "{tally}");
    let err = ended(&mut nd);
    let text = std::fs::read_to_string(&json).expect("JSON written");
    let summary: Value = serde_json::from_str(text.lines().last().expect("summary line")).expect("JSON");
    assert_eq!(summary["lost"]["ringbuf"], 0, "no record lost: {}", summary["lost"]);
    let herd = summary["analysis"]["herd"].as_array().expect("herd rows");
    assert_eq!(herd.len(), 1, "one listen socket: {herd:?}; stderr: {err}");
    let row = &herd[0];
    let n = |k: &str| row[k].as_u64().unwrap_or(u64::MAX);
    eprintln!("nested epoll herd, inner timeout {inner_timeout_ms}: {row}; nestedherd: {tally}");
    assert_eq!((n("connections"), n("events")), (K, K), "every connection one listen-socket event: {row}");
    // Each event woke both workers (no EPOLLEXCLUSIVE): one accepted, the other was
    // woken for nothing, whether it got EAGAIN, an empty inner list or slept again.
    assert!(n("wakeups") >= 2 * K - 1 && n("wakeups") <= 2 * K, "both workers woken per connection: {row}");
    assert_eq!(n("wasted"), n("wakeups") - K, "every wake-up but the accepting one's was for nothing: {row}");
    assert!(eagain + empty <= n("wasted"), "the losers' EAGAIN and empty inner lists ({eagain} + {empty}) are among the wasted: {row}");
    assert_eq!(summary["stats"]["wasted_wakes"].as_u64(), Some(n("wasted")), "the headline agrees: {}", summary["stats"]);
}

/// A herd of 16 threads asleep since before the trace: each connection
/// wakes all of them, the first one included. Their task state is made at
/// start; made by the first wake-up, all but ~4 found no room (map-full).
#[test]
fn a_herd_of_threads_asleep_before_the_trace_is_counted_from_its_first_connection() {
    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const N: u64 = 16;
    const K: u64 = 3;
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = TestProg::start(dir.path(), "wideherd", &[&N.to_string()]);
    let port: u16 = prog.first_line.trim().parse().unwrap_or_else(|_| panic!("wideherd printed {:?}", prog.first_line));
    let pid = prog.child.id();
    // All asleep in epoll_wait before the programs are attached.
    std::thread::sleep(Duration::from_millis(200));
    let (mut nd, json) = trace_json(dir.path(), pid);
    for _ in 0..K {
        let c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        drop(c);
        // Every thread back asleep before the next.
        std::thread::sleep(Duration::from_millis(150));
    }
    let tally = prog.finish();
    let counts: Vec<u64> = tally.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert_eq!(counts.first(), Some(&K), "wideherd printed {tally:?}");
    let err = ended(&mut nd);
    let text = std::fs::read_to_string(&json).expect("JSON written");
    let summary: Value = serde_json::from_str(text.lines().last().expect("summary line")).expect("JSON");
    let lost = &summary["lost"];
    assert_eq!((lost["ringbuf"].as_u64(), lost["map_full"].as_u64()), (Some(0), Some(0)), "nothing lost: {lost}; stderr: {err}");
    let herd = summary["analysis"]["herd"].as_array().expect("herd rows");
    assert_eq!(herd.len(), 1, "one listen socket: {herd:?}; stderr: {err}");
    let row = &herd[0];
    let n = |k: &str| row[k].as_u64().unwrap_or(u64::MAX);
    eprintln!("herd of {N}: {row}; wideherd: {tally}");
    assert_eq!((n("connections"), n("events")), (K, K), "{row}");
    assert_eq!(n("wakeups"), N * K, "every thread woken by every connection: {row}");
    assert_eq!(n("wasted"), (N - 1) * K, "all but the accepting thread woken for nothing, from the first connection: {row}");
    // Every thread's last switch-out (TASK_DEAD), the last one's too, though
    // its exit took the process off the target list before it.
    let dead = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "switch_out" && e["state"].as_u64().is_some_and(|s| s & 0x80 != 0))
        .count();
    assert_eq!(dead as u64, N + 1, "a TASK_DEAD switch-out per thread, main thread included");
}

/// Threads sharing one epoll instance, the listen socket level-triggered in
/// it, wake each other: the thread a connection woke passes the readiness on
/// as it returns, the woken one again, and the accepting thread's epoll_ctl
/// of the connection wakes one more. Every such wake-up is an `epoll_relay`
/// in that connection's chain: one herd event per connection.
#[test]
fn threads_sharing_one_epoll_instance_count_one_event_per_connection() {
    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const N: u64 = 4;
    const K: u64 = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = TestProg::start(dir.path(), "wideherd", &[&N.to_string(), "shared"]);
    let port: u16 = prog.first_line.trim().parse().unwrap_or_else(|_| panic!("wideherd printed {:?}", prog.first_line));
    let pid = prog.child.id();
    std::thread::sleep(Duration::from_millis(200));
    let (mut nd, json) = trace_json(dir.path(), pid);
    for _ in 0..K {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.write_all(b"ping\n").expect("send");
        let mut pong = [0u8; 5];
        c.read_exact(&mut pong).expect("the reply");
        assert_eq!(&pong, b"pong\n");
        drop(c);
        // Every thread back asleep before the next.
        std::thread::sleep(Duration::from_millis(150));
    }
    let tally = prog.finish();
    assert!(tally.starts_with(&format!("accepted {K} ")), "wideherd printed {tally:?}");
    let err = ended(&mut nd);
    let lines = json_lines(&json);
    let summary = lines.last().expect("summary line");
    let lost = &summary["lost"];
    assert_eq!((lost["ringbuf"].as_u64(), lost["map_full"].as_u64()), (Some(0), Some(0)), "nothing lost: {lost}; stderr: {err}");
    let relays: Vec<&Value> = lines.iter().filter(|e| e["type"] == "wake" && e["cause"] == "epoll_relay").collect();
    // At least the first relay of each connection: three threads wait still.
    assert!(relays.len() as u64 >= K, "{} epoll relays for {K} connections; stderr: {err}", relays.len());
    for r in &relays {
        assert_eq!((&r["via_epoll"], &r["task"]["pid"]), (&Value::Bool(false), &Value::from(pid)), "{r}");
    }
    let herd = summary["analysis"]["herd"].as_array().expect("herd rows");
    assert_eq!(herd.len(), 1, "one listen socket: {herd:?}; stderr: {err}");
    let row = &herd[0];
    let n = |k: &str| row[k].as_u64().unwrap_or(u64::MAX);
    eprintln!("shared instance of {N} threads: {row}; {} relays; wideherd: {tally}", relays.len());
    assert_eq!((n("connections"), n("events")), (K, K), "one event per connection, its relays in it: {row}");
    assert!(n("wakeups") > K, "each connection woke more than one thread: {row}");
}

/// A listener thread hands each connection to an idle worker through a
/// futex (apache's event MPM): the worker's wake-up and its close of the
/// connection are in the chain of the listener's accept, and no herd.
#[test]
fn a_connection_handed_to_a_worker_stays_in_its_chain() {
    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const K: usize = 6;
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = TestProg::start(dir.path(), "handoff", &["3"]);
    let port: u16 = prog.first_line.trim().parse().unwrap_or_else(|_| panic!("handoff printed {:?}", prog.first_line));
    let pid = prog.child.id();
    let (mut nd, json) = trace_json(dir.path(), pid);
    let mut client_ports = Vec::new();
    for _ in 0..K {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        client_ports.push(c.local_addr().unwrap().port());
        c.write_all(b"ping\n").expect("send");
        let mut pong = [0u8; 5];
        c.read_exact(&mut pong).expect("the reply");
        drop(c);
        std::thread::sleep(Duration::from_millis(100));
    }
    let tally = prog.finish();
    assert_eq!(tally.trim(), format!("handled {K}"));
    let err = ended(&mut nd);
    let lines = json_lines(&json);
    let summary = lines.last().expect("summary line");
    assert_eq!(summary["lost"]["ringbuf"], 0, "no record lost: {}", summary["lost"]);
    let peer_port = |s: &Value| s["remote"].as_str().and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse::<u16>().ok());
    // Each client port: the chain of its accept, the chain of its close.
    let mut accepted: Vec<(u16, u64)> = lines
        .iter()
        .filter(|e| e["type"] == "accept" && e["task"]["comm"] == "ho:listener" && e["ret"].as_i64().is_some_and(|r| r >= 0))
        .map(|e| (peer_port(&e["peer"]).expect("accept peer"), e["chain"].as_u64().expect("accept in a chain")))
        .collect();
    let mut closed: Vec<(u16, Option<u64>)> = lines
        .iter()
        .filter(|e| e["type"] == "close" && e["task"]["comm"] == "ho:worker" && e["sock"].is_object())
        .map(|e| (peer_port(&e["sock"]).expect("closed peer"), e["chain"].as_u64()))
        .collect();
    accepted.sort_unstable();
    closed.sort_unstable();
    client_ports.sort_unstable();
    let ports: Vec<u16> = accepted.iter().map(|a| a.0).collect();
    assert_eq!(ports, client_ports, "one accept per client port; stderr: {err}");
    // In the chain of its accept, or, when the worker read before the
    // request came, of the request's arrival on that connection.
    let requests: Vec<(u16, u64)> = lines
        .iter()
        .filter(|e| e["type"] == "sock_ready" && e["hook"] == "io_wait")
        .filter_map(|e| Some((peer_port(&e["sock"])?, e["chain"].as_u64()?)))
        .collect();
    assert_eq!(closed.len(), K, "{closed:?}");
    for (&(port, chain), &(p, accept_chain)) in closed.iter().zip(&accepted) {
        assert_eq!(port, p);
        let chain = chain.unwrap_or_else(|| panic!("the close of port {port} is in no chain; stderr: {err}"));
        assert!(
            chain == accept_chain || requests.contains(&(port, chain)),
            "port {port}: close in chain {chain}, accept in {accept_chain}"
        );
    }
    // The hand-off wake-ups: a worker's, by the listener, in those chains.
    let chains: Vec<u64> = accepted.iter().map(|a| a.1).collect();
    let handed = lines
        .iter()
        .filter(|e| e["type"] == "wake" && e["cause"] == "futex" && e["task"]["comm"] == "ho:listener" && e["handoff"] == true)
        .filter(|e| e["target"]["comm"] == "ho:worker" && e["chain"].as_u64().is_some_and(|c| chains.contains(&c)))
        .count();
    assert!(handed >= K, "{handed} futex wake-ups of a worker in the connections' chains, for {K}");
    let herd = summary["analysis"]["herd"].as_array().expect("herd rows");
    let row = &herd[0];
    eprintln!("hand-off: {row}; {handed} hand-offs");
    assert_eq!(
        (&row["connections"], &row["events"], &row["wakeups"], &row["wasted"]),
        (&K.into(), &K.into(), &K.into(), &0.into()),
        "{row}"
    );
    assert_eq!(summary["stats"]["herd_chains"], 0, "a hand-off is no herd");
}

/// An epoll data word moved to another connection while the first stays
/// open (an EPOLL_CTL_DEL and ADD, not traced by default): the return after
/// the move names the new connection's fd, not the old one's.
#[test]
fn a_data_word_moved_to_another_live_fd_resolves_to_the_new_one() {
    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut prog = TestProg::start(dir.path(), "wordreuse", &[]);
    let port: u16 = prog.first_line.trim().parse().unwrap_or_else(|_| panic!("wordreuse printed {:?}", prog.first_line));
    let mut a = TcpStream::connect(("127.0.0.1", port)).expect("connect A");
    let mut b = TcpStream::connect(("127.0.0.1", port)).expect("connect B");
    let mut line = String::new();
    prog.out.read_line(&mut line).expect("the fds");
    let fds: Vec<i64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let [fd_a, fd_b] = fds[..] else { panic!("wordreuse printed {line:?}") };
    let pid = prog.child.id();
    let (mut nd, json) = trace_json(dir.path(), pid);
    a.write_all(b"x").expect("write A");
    // Read by netdrift (every 100 ms at most) before the move.
    std::thread::sleep(Duration::from_millis(400));
    prog.go();
    line.clear();
    prog.out.read_line(&mut line).expect("moved");
    assert_eq!(line.trim(), "moved");
    b.write_all(b"y").expect("write B");
    std::thread::sleep(Duration::from_millis(100));
    let tally = prog.finish();
    assert_eq!(tally.trim(), "read 2");
    let err = ended(&mut nd);
    let lines = json_lines(&json);
    let returned: Vec<&Value> = lines
        .iter()
        .filter(|e| e["type"] == "epoll_exit" && e["task"]["comm"] == "wr:loop" && e["ret"] == 1)
        .map(|e| &e["events"][0]["fd"])
        .collect();
    assert_eq!(returned, [&Value::from(fd_a), &Value::from(fd_b)], "the word's fd at each return; stderr: {err}");
}

/// A loop polling epoll with timeout 0: every return of nothing after
/// another is counted in the kernel, not written; the returns written and
/// the ones counted add up to the program's own count of calls.
#[test]
fn a_busy_poll_is_counted_in_the_kernel_and_every_call_is_accounted_for() {
    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const CALLS: u64 = 200_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut prog = TestProg::start(dir.path(), "busypoll", &[&CALLS.to_string()]);
    let line = prog.first_line.clone();
    let pid: u32 = line.trim().parse().unwrap_or_else(|_| panic!("busypoll printed {line:?}, not its pid"));
    let (mut nd, json) = trace_json(dir.path(), pid);
    prog.go();
    let tally = prog.finish();
    let returned: u64 = tally.split_whitespace().last().and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("{tally}"));
    let err = ended(&mut nd);
    let lines = json_lines(&json);
    let summary = lines.last().expect("summary");
    assert_eq!(summary["lost"]["ringbuf"], 0, "no record lost: {}", summary["lost"]);
    let exits: Vec<&Value> = lines.iter().filter(|l| l["type"] == "epoll_exit" && l["task"]["comm"] == "bp:loop").collect();
    let written = exits.len() as u64;
    let with_events = exits.iter().filter(|l| l["ret"].as_i64().unwrap_or(0) > 0).count() as u64;
    let summed = summary["stats"]["epoll_empty_summed"].as_u64().expect("stats.epoll_empty_summed");
    eprintln!("busypoll: {tally}; netdrift: {written} epoll_exit lines ({with_events} with events), {summed} summed in the kernel");
    assert_eq!(with_events, returned, "every return with an event is written");
    assert_eq!(written + summed, CALLS, "every call is written or counted: {err}");
    // The first of each run of returns of nothing is written, and one after each
    // wake-up or switch-out: a few hundred, not 200,000.
    assert!(written < CALLS / 20, "a busy poll is summed, not written: {written} lines");
    assert!(err.contains("busy polling:"), "the text summary says so: {err}");
}
