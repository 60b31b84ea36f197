//! Root end-to-end tests of the summary: herd per listen socket on the demo
//! server's three modes, run-queue wait under a CPU-bound competitor, and
//! `analyze` reproducing the live output from a recording.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use netdrift::demo::{DemoConfig, ListenMode};
use netdrift::summary::HerdRow;

mod common;
use common::{pin, require_root, run_demo, run_demo_with, SERIAL};

const K: usize = 8;

fn listen_row(rows: &[HerdRow]) -> &HerdRow {
    assert_eq!(rows.len(), 1, "one shared listen socket: {rows:#?}");
    &rows[0]
}

#[test]
fn herd_found_on_shared_listener_only() {
    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    assert!(cpus >= 2, "the herd needs two CPUs so both workers sleep at once; this machine has {cpus}");

    let r = run_demo(ListenMode::Shared, K);
    let row = listen_row(&r.result.summary.herd);
    assert_eq!(row.connections, K as u64, "{row:#?}");
    assert_eq!(row.events, K as u64, "one listen-socket event per connection: {row:#?}");
    // Connections are driven one at a time with both workers asleep: each
    // wakes both, one accepts, the other was woken for nothing.
    assert!(row.wasted as f64 >= 0.75 * K as f64 && row.wasted <= K as u64, "about one wasted wake-up per connection: {row:#?}");
    assert!(row.herd_ratio() >= 0.75);
    assert_eq!(row.winners.values().sum::<u64>(), K as u64);
    assert!(r.result.summary_text.contains("EPOLLEXCLUSIVE"), "the fix is suggested:\n{}", r.result.summary_text);

    for mode in [ListenMode::Exclusive, ListenMode::ReusePort] {
        let r = run_demo(mode, K);
        let rows = &r.result.summary.herd;
        let conns: u64 = rows.iter().map(|r| r.connections).sum();
        let wasted: u64 = rows.iter().map(|r| r.wasted).sum();
        assert_eq!(conns, K as u64, "{mode:?}: {rows:#?}");
        assert!(wasted <= 1, "{mode:?}: about zero wasted wake-ups: {rows:#?}");
        if mode == ListenMode::ReusePort {
            // One socket per worker, each in its own worker's epoll set: one
            // winner per row, a different one each. Both rows unless the
            // kernel's hash of the 4-tuples sent all K to one (p = 2^(1-K)).
            assert!((1..=2).contains(&rows.len()), "{mode:?}: {rows:#?}");
            let winners: BTreeSet<&String> = rows.iter().flat_map(|r| r.winners.keys()).collect();
            assert!(rows.iter().all(|r| r.winners.len() == 1 && r.losers.is_empty()), "{mode:?}: {rows:#?}");
            assert_eq!(winners.len(), rows.len(), "{mode:?}: each socket's connections go to its own worker: {rows:#?}");
        } else {
            assert_eq!(rows.len(), 1, "{mode:?}: one shared listen socket: {rows:#?}");
        }
        assert!(!r.result.summary_text.contains("register the listen socket with EPOLLEXCLUSIVE"), "{mode:?}: no fix suggested");
    }
}

/// Let a thread run anywhere again.
fn unpin(tid: u32) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in 0..std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(tid as i32, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Busy threads pinned to `cpu` until the returned flag is set.
fn hogs(cpu: usize, n: usize) -> (Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let hs = (0..n)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // SAFETY: gettid has no preconditions.
                pin(unsafe { libc::gettid() } as u32, cpu);
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    (stop, hs)
}

#[test]
fn cpu_hog_moves_runqueue_wait_up_and_preempts() {
    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // One worker on CPU0; each request burns 5 ms, longer than a scheduler
    // slice, so a competitor on that CPU preempts it.
    let cfg = DemoConfig { workers: 1, mode: ListenMode::Shared, port: 0, work_us: 5000 };
    // The worker alone on CPU0; this thread, the tracer and the client on CPU1.
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() } as u32;
    let pin_all = |tids: &[u32]| {
        tids.iter().for_each(|&t| pin(t, 0));
        pin(me, 1);
    };
    let quiet = run_demo_with(cfg.clone(), 6, Duration::from_millis(40), pin_all);

    let (stop, hs) = hogs(0, 4);
    let busy = run_demo_with(cfg, 6, Duration::from_millis(40), pin_all);
    stop.store(true, Ordering::Relaxed);
    hs.into_iter().for_each(|h| h.join().unwrap());

    // Every wait for a CPU (after wake-ups and preemptions), as runqlat shows it.
    let q = &quiet.result.summary.latency.runq_all;
    let b = &busy.result.summary.latency.runq_all;
    let (q50, b50) = (q.percentile(50.0).unwrap(), b.percentile(50.0).unwrap());
    eprintln!("run-queue wait p50: quiet {q50} ns, with competitor {b50} ns");
    eprintln!("quiet buckets {:?}\nbusy buckets {:?}", q.log2_us(), b.log2_us());
    // Samples of 1 ms and more (log2 bucket 10 and up): a competitor's slice.
    let slow = |h: &netdrift::summary::Hist| h.log2_us().iter().skip(10).sum::<u64>();
    assert!(
        slow(b) > slow(q) && slow(b) >= 2,
        "the competitor moves run-queue waits to the >= 1 ms buckets: quiet {:?}, busy {:?}",
        q.log2_us(),
        b.log2_us()
    );
    assert!(b.sum_ns > q.sum_ns, "more time in the run queue with a competitor: {} vs {} ns", b.sum_ns, q.sum_ns);
    unpin(me);
    let invol =
        |r: &common::DemoRun| -> u64 { r.result.summary.threads.iter().filter(|t| r.tids.contains(&t.tid)).map(|t| t.involuntary).sum() };
    // Time spent waiting for the CPU again after a preemption, mid-request.
    let preempted = |r: &common::DemoRun| -> u64 { r.result.chains.iter().flat_map(|c| c.hops.iter()).map(|h| h.preempted_ns).sum() };
    eprintln!("involuntary switches of the worker: quiet {}, with competitor {}", invol(&quiet), invol(&busy));
    eprintln!("waiting after preemption: quiet {} ns, with competitor {} ns", preempted(&quiet), preempted(&busy));
    assert!(invol(&busy) > 0, "the worker is preempted by the competitor");
    // Milliseconds per request in all, and more than without the competitor. Not "10 ms more":
    // on a loaded machine the quiet run is preempted by the load too (24 ms against 28.7 ms seen).
    assert!(
        preempted(&busy) >= 10_000_000 && preempted(&busy) > preempted(&quiet),
        "preemptions by the competitor cost milliseconds per request"
    );
    assert!(busy.result.summary_text.contains("involuntary"), "{}", busy.result.summary_text);
}

#[test]
fn analyze_reproduces_the_live_output() {
    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("run.ndr");
    let bin = env!("CARGO_BIN_EXE_netdrift");
    let live = Command::new(bin).args(["demo", "-n", "4", "--packets", "--record"]).arg(&rec).output().unwrap();
    assert!(live.status.success(), "{}", String::from_utf8_lossy(&live.stderr));
    let replay = Command::new(bin).arg("analyze").arg(&rec).output().unwrap();
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    let (l, r) = (String::from_utf8_lossy(&live.stdout), String::from_utf8_lossy(&replay.stdout));
    assert!(l.contains("thundering herd, per listen socket") && l.contains("latency per stage"), "{l}");
    assert_eq!(l, r, "analyze prints exactly what the live trace printed");

    // JSON too: the replayed summary equals the live one.
    let live_json = dir.path().join("live.jsonl");
    let rec2 = dir.path().join("run2.ndr");
    let o = Command::new(bin).args(["demo", "-n", "3", "--json", "-o"]).arg(&live_json).arg("--record").arg(&rec2).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(bin).args(["analyze", "--json"]).arg(&rec2).output().unwrap();
    assert!(o.status.success());
    let last = |t: &str| -> serde_json::Value { serde_json::from_str(t.lines().last().unwrap()).unwrap() };
    let a = last(&std::fs::read_to_string(&live_json).unwrap());
    let b = last(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(a["type"], "summary");
    assert_eq!(a, b, "same summary line");

    // --packets: socket events carry the loopback packet received just before them.
    let text = std::fs::read_to_string(&rec).unwrap();
    let ready: Vec<serde_json::Value> =
        text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|v| v["type"] == "sock_ready").collect();
    let with_packet: Vec<&serde_json::Value> = ready.iter().filter(|v| v["packet"].is_object()).collect();
    assert!(with_packet.len() * 2 >= ready.len(), "most socket events have their packet: {} of {}", with_packet.len(), ready.len());
    for v in &with_packet {
        let p = &v["packet"];
        assert_eq!(p["dev"], "lo", "{v}");
        assert!(p["len"].as_u64().unwrap_or(0) > 0 && p["ts"].as_u64() <= v["ts"].as_u64(), "{v}");
    }

    // A truncated recording (its end record gone, or cut inside a line) is
    // analysed as far as it goes and marked incomplete, not passed off as whole.
    let cut = dir.path().join("cut.ndr");
    let keep: Vec<&str> = text.lines().collect();
    for body in [keep[..keep.len() - 1].join("\n"), text[..text.len() / 2].to_string()] {
        std::fs::write(&cut, body).unwrap();
        let o = Command::new(bin).arg("analyze").arg(&cut).output().unwrap();
        let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{err}");
        assert!(err.contains("the recording is incomplete"), "{err}");
        assert!(out.contains("recording incomplete after") && out.contains("lost: unknown"), "{out}");
        assert!(!out.contains("lost: 0 records"), "{out}");
    }
}

/// A thread woken once outside epoll and then asleep for good (redis's
/// jemalloc_bg_thd) ends its chain when it sleeps again: it neither holds
/// back the chains after it until the end of the trace nor ends incomplete.
#[test]
fn a_helper_asleep_for_good_holds_back_no_chain() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    use std::time::Instant;

    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = common::build_c(dir.path(), "helperwake", &["-O1", "-pthread"]);
    const N: usize = 20;
    let mut target = Command::new(&prog)
        .args([N.to_string(), "20".into(), "1500".into()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting helperwake");
    let mut out = BufReader::new(target.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("helperwake pid");
    let pid: u32 = line.trim().parse().unwrap_or_else(|_| panic!("helperwake printed {line:?}, not its pid"));

    let ready = dir.path().join("ready");
    let mut tracer = Command::new(env!("CARGO_BIN_EXE_netdrift"))
        .args(["trace", "-p", &pid.to_string(), "--ready-file"])
        .arg(&ready)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting netdrift");
    common::wait_ready(&ready, &mut tracer, Duration::from_secs(30), common::piped_stderr);
    // Chain blocks as they are printed, with when they were.
    let stdout = tracer.stdout.take().expect("stdout");
    let printed =
        std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).map(|l| (Instant::now(), l)).collect::<Vec<_>>());

    target.stdin.as_mut().expect("stdin").write_all(b"g").expect("go byte");
    line.clear();
    out.read_line(&mut line).expect("helperwake progress");
    assert_eq!(line.trim(), "slept");
    let slept = Instant::now();
    assert!(target.wait().expect("helperwake").success());
    // The target's exit ends the trace.
    let st = tracer.wait().expect("netdrift");
    let lines = printed.join().expect("reader");
    let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    assert!(st.success(), "netdrift failed: {}\n{text}", common::piped_stderr(&mut tracer));

    // Chain blocks: a header ("chain 7  at 105.34ms  wake-up: timer") to the next blank line.
    let mut blocks: Vec<(Instant, String)> = Vec::new();
    let mut open = false;
    for (t, l) in &lines {
        if l.starts_with("chain ") && l.contains("  at ") {
            blocks.push((*t, String::new()));
            open = true;
        } else if l.trim().is_empty() {
            open = false;
        }
        if open {
            let b = &mut blocks.last_mut().expect("a block").1;
            b.push_str(l);
            b.push('\n');
        }
    }
    // Its futex wake-up (the process's exit wakes it once more, to die).
    let helper: Vec<&String> = blocks.iter().map(|(_, b)| b).filter(|b| b.contains("woke hw:helper") && b.contains("futex")).collect();
    assert_eq!(helper.len(), 1, "one futex wake-up of the helper:\n{text}");
    assert!(!helper[0].lines().next().unwrap_or("").contains("[incomplete]"), "its chain ended when it slept again:\n{}", helper[0]);
    // Main's own wake-ups (one per sleep) were printed while it was still
    // running: the reader polls every 100 ms, and main slept 1.5 s more.
    let early = blocks.iter().filter(|(t, b)| *t < slept + Duration::from_millis(700) && b.contains(&format!("[{pid}]"))).count();
    assert!(early >= N / 2, "only {early} of main's {N} chains were printed before it stopped sleeping: held back\n{text}");
}

/// The port of an "addr:port" JSON string.
fn port_of(v: &serde_json::Value) -> Option<u16> {
    v.as_str()?.rsplit_once(':')?.1.parse().ok()
}

/// A thread-per-connection server with no epoll (tests/progs/blockaccept.c):
/// each accept belongs to the chain of the wake-up that found main blocked in
/// accept on the listener, with the client's port, and each close to a chain
/// of the connection's own thread.
#[test]
fn a_thread_per_connection_server_gets_its_accepts_and_closes_in_chains() {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, pid, port) = start_server(dir.path(), "blockaccept", &["-O1", "-pthread"]);
    let (out, ready) = (dir.path().join("out.jsonl"), dir.path().join("ready"));
    let tracer = json_tracer(&["-p", &pid.to_string()], &out, &ready);

    const K: usize = 5;
    let mut ports = Vec::new();
    for _ in 0..K {
        // Each step leaves time for the server's threads to block again.
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        ports.push(c.local_addr().expect("local addr").port());
        std::thread::sleep(Duration::from_millis(30));
        c.write_all(b"ping\n").expect("write");
        let mut echo = [0u8; 5];
        c.read_exact(&mut echo).expect("echo");
        std::thread::sleep(Duration::from_millis(30));
        drop(c);
        std::thread::sleep(Duration::from_millis(30));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop(tracer, server);

    let text = std::fs::read_to_string(&out).expect("output");
    let recs: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let kind = |r: &serde_json::Value, t: &str| r["type"] == t;
    // Chains started by the listener at main's wake-up in accept.
    let accept_chains: Vec<u64> = recs
        .iter()
        .filter(|r| kind(r, "sock_ready") && r["hook"] == "accept" && port_of(&r["sock"]["local"]) == Some(port))
        .filter_map(|r| r["chain"].as_u64())
        .collect();
    let accepts: Vec<&serde_json::Value> = recs.iter().filter(|r| kind(r, "accept") && r["ret"].as_i64().unwrap_or(-1) >= 0).collect();
    let mut got: Vec<u16> = accepts.iter().filter_map(|a| port_of(&a["peer"]["remote"])).collect();
    got.sort_unstable();
    ports.sort_unstable();
    assert_eq!(got, ports, "accepts' peer ports are the clients' ports");
    for a in &accepts {
        let c = a["chain"].as_u64().unwrap_or_else(|| panic!("accept in no chain: {a}"));
        assert!(accept_chains.contains(&c), "accept in chain {c}, not one the listener started {accept_chains:?}: {a}");
        assert_eq!(a["task"]["tid"].as_u64(), Some(pid as u64), "main accepts: {a}");
    }
    let closes: Vec<&serde_json::Value> =
        recs.iter().filter(|r| kind(r, "close") && port_of(&r["sock"]["remote"]).is_some_and(|p| ports.contains(&p))).collect();
    assert_eq!(closes.len(), K, "one close per connection:\n{text}");
    for c in &closes {
        assert!(c["chain"].as_u64().is_some(), "close in no chain: {c}");
        assert_ne!(c["task"]["tid"].as_u64(), Some(pid as u64), "a connection's thread closes it: {c}");
    }
}

/// An echo server on io_uring (tests/progs/uringecho.c) makes no
/// epoll_wait and no accept call: its wake-ups are traced, its accepts are
/// zero, and the summary says why rather than passing for an idle server.
#[test]
fn an_io_uring_server_is_woken_and_its_zero_accepts_explained() {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, pid, port) = start_server(dir.path(), "uringecho", &["-O1", "-luring"]);
    let (out, ready) = (dir.path().join("out.txt"), dir.path().join("ready"));
    let tracer = text_tracer(&["-p", &pid.to_string()], &out, &ready);
    const K: usize = 5;
    for _ in 0..K {
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        std::thread::sleep(Duration::from_millis(30));
        c.write_all(b"ping\n").expect("write");
        let mut echo = [0u8; 5];
        c.read_exact(&mut echo).expect("echo");
        assert_eq!(&echo, b"ping\n");
        std::thread::sleep(Duration::from_millis(30));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop(tracer, server);
    let text = std::fs::read_to_string(&out).expect("output");
    let headline =
        text.lines().find(|l| l.contains(" wake-ups, ") && l.contains(" accepts ")).unwrap_or_else(|| panic!("no headline:\n{text}"));
    let wakes: usize =
        headline.split(" wake-ups").next().and_then(|h| h.rsplit(' ').next()).and_then(|n| n.parse().ok()).expect("wake-ups");
    // Each connection's request waited for in the ring: woken at least once for it.
    assert!(wakes >= K, "{wakes} wake-ups for {K} connections: {headline}");
    assert!(headline.contains(" 0 accepts (and 0 EAGAIN"), "no accept call: {headline}");
    assert!(text.contains("no epoll_wait return and no accept of the targets was seen"), "the zeros are explained:\n{text}");
    assert!(!text.contains("thundering herd, per listen socket"), "no listener row:\n{text}");
}

/// tests/progs/`name`.c built and started: it prints "PID PORT" of its
/// listener. Returns the child, its pid and the port.
fn start_server(dir: &std::path::Path, name: &str, flags: &[&str]) -> (std::process::Child, u32, u16) {
    use std::io::{BufRead, BufReader};
    let prog = common::build_c(dir, name, flags);
    let mut server = Command::new(&prog).stdout(std::process::Stdio::piped()).spawn().expect("starting the server");
    let mut line = String::new();
    BufReader::new(server.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("the server's pid and port");
    let (pid, port) =
        line.trim().split_once(' ').and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u16>().ok()?))).expect("PID PORT");
    (server, pid, port)
}

/// Ctrl-C to the tracer (it must end with status 0), then the server killed.
fn stop(mut tracer: std::process::Child, mut server: std::process::Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(tracer.id() as libc::pid_t, libc::SIGINT) };
    let st = tracer.wait().expect("netdrift");
    let _ = server.kill();
    let _ = server.wait();
    assert!(st.success(), "netdrift failed: {}", common::piped_stderr(&mut tracer));
}

/// `netdrift trace ARGS --json -o OUT`, once its probes are attached.
fn json_tracer(args: &[&str], out: &std::path::Path, ready: &std::path::Path) -> std::process::Child {
    text_tracer(&[args, &["--json"]].concat(), out, ready)
}

/// `netdrift trace ARGS -o OUT`, once its probes are attached.
fn text_tracer(args: &[&str], out: &std::path::Path, ready: &std::path::Path) -> std::process::Child {
    let mut tracer = Command::new(env!("CARGO_BIN_EXE_netdrift"))
        .arg("trace")
        .args(args)
        .arg("-o")
        .arg(out)
        .arg("--ready-file")
        .arg(ready)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting netdrift");
    common::wait_ready(ready, &mut tracer, Duration::from_secs(30), common::piped_stderr);
    tracer
}

/// A traced server forks a child that runs another program
/// (tests/progs/execchild.c). The child starts with the parent's fds,
/// listener A among them (known from a first connection); its exec is a
/// `task_new` with reason 3, after which it holds only what survived (its
/// inheritable listener, read again from /proc), and a second connection
/// on A, close-on-exec, lists the parent alone.
#[test]
fn a_child_that_runs_another_program_keeps_only_what_survived_the_exec() {
    use std::io::{BufRead, BufReader};
    use std::net::TcpStream;
    use std::process::Stdio;
    use std::time::Instant;

    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = common::build_c(dir.path(), "execchild", &["-O1", "-pthread"]);
    let (child_ready, ready, out_path, rec) =
        (dir.path().join("child-ready"), dir.path().join("ready"), dir.path().join("out.jsonl"), dir.path().join("run.ndr"));
    let mut target = Command::new(&prog).arg(&child_ready).stdout(Stdio::piped()).spawn().expect("starting execchild");
    let pid = target.id();
    let mut out = BufReader::new(target.stdout.take().expect("stdout"));
    let mut read_pair = |what: &str| -> (i64, i64) {
        let mut line = String::new();
        out.read_line(&mut line).expect("execchild output");
        let v: Vec<i64> = line
            .strip_prefix(what)
            .unwrap_or_else(|| panic!("expected {what:?}, got {line:?}"))
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        (v[0], *v.get(1).unwrap_or(&0))
    };
    let (port_a, _) = read_pair("ports ");
    let (fd_a, fd_b) = read_pair("fds ");

    let rec_arg = rec.to_str().expect("utf-8 path");
    let mut tracer = json_tracer(&["-p", &pid.to_string(), "--record", rec_arg], &out_path, &ready);
    // Held open a while: the reader polls every 100 ms and reads /proc while the parent still runs.
    let connect = || {
        let conn = TcpStream::connect(("127.0.0.1", port_a as u16)).expect("connect to A");
        std::thread::sleep(Duration::from_millis(500));
        drop(conn);
    };
    connect();
    // The parent's and the child's lines, in either order.
    let (mut child, mut thread) = (0, 0);
    for _ in 0..2 {
        let mut line = String::new();
        out.read_line(&mut line).expect("execchild output");
        match line.split_once(' ') {
            Some(("child", n)) => child = n.trim().parse().expect("child pid"),
            Some(("thread", n)) => thread = n.trim().parse().expect("thread tid"),
            _ => panic!("unexpected line {line:?}"),
        }
    }
    let t = Instant::now();
    while !child_ready.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "the child did not start its new program");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    connect();
    assert!(target.wait().expect("execchild").success(), "execchild failed");
    // Both processes gone: the trace ends by itself.
    let st = tracer.wait().expect("netdrift");
    assert!(st.success(), "netdrift failed: {}", common::piped_stderr(&mut tracer));

    let live: Vec<serde_json::Value> =
        std::fs::read_to_string(&out_path).expect("output").lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    // The replay of the recording: the sockets read again after the exec are in it.
    let o = Command::new(env!("CARGO_BIN_EXE_netdrift")).args(["analyze", "--json"]).arg(&rec).output().expect("netdrift analyze");
    assert!(o.status.success(), "analyze failed: {}", String::from_utf8_lossy(&o.stderr));
    let replay: Vec<serde_json::Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    for (name, lines) in [("live", &live), ("replay", &replay)] {
        check_exec_run(name, lines, pid, (child, thread), port_a as u16, (fd_a, fd_b));
    }
}

fn check_exec_run(name: &str, lines: &[serde_json::Value], pid: u32, (child, thread): (i64, i64), port_a: u16, (fd_a, fd_b): (i64, i64)) {
    let text = |v: &[&serde_json::Value]| format!("{name}:\n{}", v.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("\n"));
    let of = |t: &str| lines.iter().filter(|l| l["type"] == t).collect::<Vec<_>>();
    let task_new = |reason: u32| lines.iter().position(|l| l["type"] == "task_new" && l["reason"] == reason && l["child"]["pid"] == child);
    let (forked, exec_at) = (task_new(1), task_new(3));
    let exec_at = exec_at.unwrap_or_else(|| panic!("no task_new with reason 3 for the child {child}:\n{}", text(&of("task_new"))));
    assert!(forked.is_some_and(|f| f < exec_at), "the fork comes first:\n{}", text(&of("task_new")));
    // Run by the child's second thread: it goes on under the child's pid, its own tid ends there.
    assert_eq!((&lines[exec_at]["task"]["tid"], &lines[exec_at]["child"]["tid"]), (&thread.into(), &child.into()), "{}", lines[exec_at]);
    // (The old leader's final switch-out, task dead, may be written under this tid: de_thread swaps the tids.)
    let dead = |l: &serde_json::Value| l["type"] == "switch_out" && l["state"].as_u64().unwrap_or(0) & 0x80 != 0;
    assert!(
        lines[exec_at + 1..].iter().all(|l| l["task"]["tid"] != thread || dead(l)),
        "{name}: records under tid {thread} after the exec"
    );
    let child_fds: Vec<&serde_json::Value> =
        lines[exec_at..].iter().filter(|l| l["type"] == "fd_map" && l["task"]["pid"] == child).collect();
    let fds: Vec<i64> = child_fds.iter().map(|l| l["fd"].as_i64().unwrap()).collect();
    assert_eq!(fds, [fd_b], "only the inheritable listener is the child's after the exec: {}", text(&child_fds));
    // The listener's events (not the connections', which share its port).
    let woke: Vec<&serde_json::Value> =
        of("sock_ready").into_iter().filter(|l| l["hook"] == "epoll_item" && port_of(&l["sock"]["local"]) == Some(port_a)).collect();
    assert_eq!(woke.len(), 2, "each connection to A woke the parent: {}", text(&of("sock_ready")));
    let holders = |w: &serde_json::Value| -> Vec<(i64, i64)> {
        w["fds"].as_array().expect("fds").iter().map(|f| (f["pid"].as_i64().unwrap(), f["fd"].as_i64().unwrap())).collect()
    };
    assert_eq!(holders(woke[0]), [(pid as i64, fd_a)], "before the fork, A is the parent's: {}", woke[0]);
    assert_eq!(holders(woke[1]), [(pid as i64, fd_a)], "A was closed in the child by its exec: {}", woke[1]);
}

/// Traced by thread (`-t`), a thread other than the leader runs exec
/// (tests/progs/threadexec.c): the trace follows it under the process's
/// pid until the new program exits, instead of ending at the exec.
#[test]
fn a_thread_traced_by_tid_is_followed_through_its_exec() {
    use std::time::Instant;

    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let (go, ready, out_path) = (dir.path().join("go"), dir.path().join("ready"), dir.path().join("out.jsonl"));
    let (mut target, tid) = common::start_threadexec(dir.path(), &go);
    let pid = target.id();
    let mut tracer = json_tracer(&["-t", &tid.to_string()], &out_path, &ready);
    std::fs::write(&go, b"").expect("go file");
    let t = Instant::now();
    assert!(target.wait().expect("threadexec").success(), "threadexec failed");
    // The new program naps for a second; the trace ends with it.
    let st = tracer.wait().expect("netdrift");
    let after = t.elapsed();
    assert!(st.success(), "netdrift failed: {}", common::piped_stderr(&mut tracer));
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&out_path).expect("output").lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let exec_at = lines
        .iter()
        .position(|l| l["type"] == "task_new" && l["reason"] == 3)
        .unwrap_or_else(|| panic!("no exec record: {:?}", lines.iter().map(|l| &l["type"]).collect::<Vec<_>>()));
    assert_eq!((&lines[exec_at]["task"]["tid"], &lines[exec_at]["child"]["tid"]), (&tid.into(), &pid.into()), "{}", lines[exec_at]);
    let naps = lines[exec_at..].iter().filter(|l| l["type"] == "switch_out" && l["task"]["tid"] == pid).count();
    assert!(naps >= 9, "the new program's ten naps are traced under tid {pid}: {naps} switch-outs");
    // Until the new program itself exited (not ended at the exec by a /proc check).
    assert!(
        lines.iter().any(|l| l["type"] == "task_exit" && l["task"]["tid"] == pid && l["group_dead"] == true),
        "the new program's exit is in the trace"
    );
    let summary = lines.last().expect("summary");
    assert_eq!(summary["reason"], "target exited", "{summary}");
    assert!(after >= Duration::from_millis(900), "threadexec ran {after:?} after the exec");
}
