//! Root end-to-end test of wake-up causes read from the waker's stack when
//! stacks are reused (the default): one thread waking another through an
//! eventfd and a pipe in turn, both with write(2), must not share a class.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{require_root, SERIAL};

const ROUNDS: u64 = 10;

#[test]
fn an_eventfd_and_a_pipe_written_by_one_thread_keep_their_own_causes() {
    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = common::build_c(dir.path(), "fdwake", &["-O1", "-pthread"]);
    let mut prog = Command::new(&bin)
        .args([ROUNDS.to_string(), "20".into()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting fdwake");
    let mut out = BufReader::new(prog.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("fdwake pid");
    let pid: u32 = line.trim().parse().unwrap_or_else(|_| panic!("fdwake printed {line:?}, not its pid"));

    let (json, ready) = (dir.path().join("out.jsonl"), dir.path().join("ready"));
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
    prog.stdin.take().expect("stdin").write_all(b"g").expect("go");
    let mut tally = String::new();
    out.read_to_string(&mut tally).expect("fdwake's tally");
    assert!(prog.wait().expect("fdwake").success(), "fdwake failed: {tally}");
    assert_eq!(tally.trim(), format!("eventfd {ROUNDS} pipe {ROUNDS}"));
    // The trace ends by itself when its target exits.
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
    let err = common::piped_stderr(&mut nd);
    assert!(st.success(), "netdrift failed ({st}): {err}");

    let lines: Vec<Value> =
        std::fs::read_to_string(&json).expect("JSON written").lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
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
