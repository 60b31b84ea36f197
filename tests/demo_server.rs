//! End-to-end tests of the built-in demo server: every listen mode serves
//! real connections, and the worker threads are what `netdrift` will trace.

use std::collections::HashSet;
use std::time::Duration;

use netdrift::demo::{run_client, DemoConfig, DemoServer, ListenMode};

const CONNS: usize = 10;
const GAP: Duration = Duration::from_millis(20);

fn check_mode(mode: ListenMode) {
    let cfg = DemoConfig { mode, ..DemoConfig::default() };
    let server = DemoServer::start(&cfg).expect("start demo server");
    let addr = server.addr();
    assert!(addr.ip().is_loopback(), "{mode}: {addr}");
    assert_ne!(addr.port(), 0, "{mode}: ephemeral port not resolved");
    assert_eq!(server.pid(), std::process::id());

    let tids = server.worker_tids();
    let names = server.worker_names();
    assert_eq!(tids.len(), cfg.workers, "{mode}");
    assert_eq!(names.len(), cfg.workers, "{mode}");
    assert!(tids.iter().all(|&t| t != 0), "{mode}: zero tid in {tids:?}");
    assert_eq!(tids.iter().collect::<HashSet<_>>().len(), tids.len(), "{mode}: duplicate tids {tids:?}");
    for (i, (tid, name)) in tids.iter().zip(&names).enumerate() {
        assert_eq!(name, &format!("demo:worker_{i}"));
        let comm =
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_else(|e| panic!("{mode}: comm of tid {tid}: {e}"));
        assert_eq!(comm.trim_end(), name, "{mode}: kernel comm of tid {tid}");
    }

    let fds = server.listen_fds();
    let want_fds = if mode == ListenMode::ReusePort { cfg.workers } else { 1 };
    assert_eq!(fds.len(), want_fds, "{mode}: listen fds {fds:?}");

    let conns = run_client(addr, CONNS, GAP).expect("run client");
    let stats = server.shutdown().expect("shutdown");

    assert_eq!(conns.len(), CONNS, "{mode}");
    assert!(conns.iter().all(|c| c.ok), "{mode}: failed connections in {conns:?}");
    let ports: HashSet<u16> = conns.iter().map(|c| c.local_port).collect();
    assert_eq!(ports.len(), CONNS, "{mode}: client ports not unique: {conns:?}");

    assert_eq!(stats.workers.len(), cfg.workers, "{mode}");
    assert_eq!(stats.accepted(), CONNS as u64, "{mode}: {stats:?}");
    let requests: u64 = stats.workers.iter().map(|w| w.requests).sum();
    assert_eq!(requests, CONNS as u64, "{mode}: {stats:?}");
    for (w, (tid, name)) in stats.workers.iter().zip(tids.iter().zip(&names)) {
        assert_eq!((&w.tid, &w.name), (tid, name), "{mode}: stats out of worker order");
        // Every accept attempt follows a wake-up that listed a listen fd.
        assert!(w.listen_wakeups <= w.wakeups, "{mode}: {w:?}");
        assert!(w.accepted + w.accept_eagain >= w.listen_wakeups, "{mode}: {w:?}");
    }
}

#[test]
fn shared_mode_serves_all_connections() {
    check_mode(ListenMode::Shared);
}

#[test]
fn exclusive_mode_serves_all_connections() {
    check_mode(ListenMode::Exclusive);
}

#[test]
fn reuseport_mode_serves_all_connections() {
    check_mode(ListenMode::ReusePort);
}

#[test]
fn listen_mode_parse_accepts_the_three_names() {
    assert_eq!(ListenMode::parse("shared"), Some(ListenMode::Shared));
    assert_eq!(ListenMode::parse("exclusive"), Some(ListenMode::Exclusive));
    assert_eq!(ListenMode::parse("reuseport"), Some(ListenMode::ReusePort));
    assert_eq!(ListenMode::parse("ReusePort"), Some(ListenMode::ReusePort));
}

#[test]
fn listen_mode_parse_rejects_other_names() {
    for bad in ["", "share", "reuse_port", "reuse-port", " shared", "exclusive ", "herd"] {
        assert_eq!(ListenMode::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn listen_mode_name_round_trips() {
    for mode in ListenMode::ALL {
        assert_eq!(ListenMode::parse(mode.name()), Some(mode));
        assert_eq!(mode.to_string(), mode.name());
    }
    assert_eq!(ListenMode::default(), ListenMode::Shared);
}

#[test]
fn zero_workers_is_rejected() {
    let cfg = DemoConfig { workers: 0, ..DemoConfig::default() };
    let err = DemoServer::start(&cfg).expect_err("0 workers must fail");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn dropping_a_server_stops_its_workers() {
    let server = DemoServer::start(&DemoConfig::default()).expect("start");
    let tids = server.worker_tids();
    drop(server);
    // join() returns when the thread clears its tid, slightly before the
    // kernel reaps the task, so give /proc a moment to catch up.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    for tid in tids {
        let task = format!("/proc/self/task/{tid}");
        while std::path::Path::new(&task).exists() {
            assert!(std::time::Instant::now() < deadline, "tid {tid} still alive after drop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
