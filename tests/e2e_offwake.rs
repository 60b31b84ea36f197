//! `netdrift offwake` end to end: a pipe reader woken by a writer thread (a C
//! program built here), the demo server's epoll workers woken through
//! sockets, the flame graph, and agreement between the output formats.
//! Golden renderings of synthetic stacks and the usage errors need no root.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netdrift::demo::{DemoConfig, DemoServer, ListenMode};
use netdrift::offwake::model::{self, Entry, RenderOptions};
use netdrift::offwake::{self, Format, OffwakeOptions, OutputOptions, Report, WakeContext};

mod common;
use common::{require_root, SERIAL};

const READER_FN: &str = "netdrift_test_blocked_reader";
const WRITER_FN: &str = "netdrift_test_waker_writer";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/offwake")
}

/// Kills a child process if the test fails before it is waited for.
struct Reaper(Option<Child>);

impl Reaper {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child")
    }

    /// Wait for the exit, at most `limit`; panics (after killing it) on timeout.
    fn wait(&mut self, limit: Duration, what: &str) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child().try_wait().expect("try_wait") {
                return st;
            }
            if t0.elapsed() > limit {
                let _ = self.child().kill();
                let _ = self.child().wait();
                panic!("{what} did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the (exited) child wrote to its piped stderr.
    fn stderr(&mut self) -> String {
        common::piped_stderr(self.child())
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Build tests/progs/pipewake.c into `dir` as the issue says: -O1, frame pointers, pthreads.
fn build_pipewake(dir: &Path) -> PathBuf {
    common::build_c(dir, "pipewake", &["-O1", "-fno-omit-frame-pointer", "-pthread"])
}

/// Start pipewake (waiting for its go byte); returns it and its pid.
fn start_pipewake(bin: &Path, n: u32, period_ms: u32) -> (Reaper, u32) {
    let mut child = Command::new(bin)
        .args([n.to_string(), period_ms.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting pipewake");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("pipewake pid");
    let pid: u32 = line.trim().parse().unwrap_or_else(|_| panic!("pipewake printed {line:?}, not its pid"));
    (Reaper(Some(child)), pid)
}

/// Folded lines of the reader blocked in its function, woken by the writer in its.
fn reader_writer_lines(folded: &str) -> Vec<(&str, u64)> {
    folded
        .lines()
        .filter_map(|l| {
            let (stack, n) = l.rsplit_once(' ')?;
            let n: u64 = n.parse().ok()?;
            let (blocked, waker) = stack.split_once(";--;")?;
            (blocked.starts_with("pw:reader;") && blocked.contains(READER_FN) && waker.contains(WRITER_FN) && waker.ends_with(";pw:writer"))
                .then_some((l, n))
        })
        .collect()
}

/// The flame graph is well-formed XML (every tag closed, names matched) and its text.
fn svg_text(svg: &[u8]) -> String {
    use quick_xml::events::Event;
    let mut r = quick_xml::Reader::from_reader(svg);
    let mut buf = Vec::new();
    let mut text = String::new();
    let mut depth = 0i64;
    let mut elements = 0;
    loop {
        match r.read_event_into(&mut buf) {
            Ok(Event::Start(_)) => {
                depth += 1;
                elements += 1;
            }
            Ok(Event::Empty(_)) => elements += 1,
            Ok(Event::End(_)) => depth -= 1,
            Ok(Event::Text(t)) => {
                text.push_str(&String::from_utf8_lossy(t.as_ref()));
                text.push('\n');
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("SVG is not well-formed XML at byte {}: {e}", r.buffer_position()),
        }
        buf.clear();
    }
    assert_eq!(depth, 0, "unclosed elements in the SVG");
    assert!(elements > 10, "an SVG with {elements} elements is no flame graph");
    text
}

fn load_fixture() -> Vec<Entry> {
    let s = std::fs::read_to_string(fixtures().join("entries.json")).expect("fixture");
    serde_json::from_str(&s).expect("fixture entries")
}

/// Compare with a golden file; NETDRIFT_BLESS=1 rewrites it.
fn golden(name: &str, got: &str) {
    let p = fixtures().join(name);
    if std::env::var("NETDRIFT_BLESS").as_deref() == Ok("1") {
        std::fs::write(&p, got).expect("bless");
    }
    let want = std::fs::read_to_string(&p).unwrap_or_else(|_| panic!("{} missing (NETDRIFT_BLESS=1 writes it)", p.display()));
    assert_eq!(got, want, "{name} differs from the golden file");
}

#[test]
fn fixture_renders_like_the_golden_files_and_totals_agree() {
    let entries = load_fixture();
    let opts = RenderOptions::default();
    let folded = model::folded(&entries, &opts);
    let text = model::text(&entries, &opts);
    golden("expected.folded", &folded);
    golden("expected.txt", &text);
    let t = model::totals(&entries);
    assert_eq!(model::folded_total(&folded), t.total_us);
    assert_eq!(model::text_total(&text), t.total_us);
    // The SVG has both sides' frames, in different colours.
    let svg = offwake::svg::render(&entries, &opts, "fixture").expect("svg");
    let txt = svg_text(&svg);
    for name in [READER_FN, WRITER_FN, "ep_poll_callback", "[softirq CPU1]", "[irq CPU0]"] {
        assert!(txt.contains(name), "SVG lacks {name}");
    }
    assert!(!txt.contains("_[w]"), "the colour annotation leaks into labels");
}

#[test]
fn usage_errors_are_one_line_exit_2() {
    let bin = env!("CARGO_BIN_EXE_netdrift");
    let cases: &[&[&str]] = &[
        &["offwake", "-p", "999999999"],
        &["offwake", "-t", "999999999"],
        &["offwake", "-u", "-k"],
        &["offwake", "-m", "10", "-M", "5"],
        &["offwake", "--state", "running"],
        &["offwake", "-f", "--json"],
        &["offwake", "--stack-storage-size", "0"],
        &["offwake", "0"],
    ];
    for args in cases {
        let out = Command::new(bin).args(*args).output().expect("netdrift");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one line, got {err:?}");
    }
    let out = Command::new(bin).args(["offwake", "-p", "999999999"]).output().expect("netdrift");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no process with pid 999999999"));
    // -k on a user process only (this test) would report nothing.
    let me = std::process::id().to_string();
    let out = Command::new(bin).args(["offwake", "-k", "-p", &me, "1"]).output().expect("netdrift");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("-k keeps kernel threads only, and every target is a user process"), "{err}");
}

/// Run the CLI on pipewake with the given extra arguments and duration;
/// returns the output file's contents and netdrift's stderr. With -p the
/// trace must end by itself when pipewake exits.
/// `cli_on_pipewake_once`, run again when a stack was lost to a hash
/// collision in the stack map: chance (a few dozen stacks in 16384 buckets),
/// reported, and not what these tests are about.
fn cli_on_pipewake(
    dir: &Path,
    n: u32,
    period_ms: u32,
    extra: &[&str],
    target: impl Fn(u32) -> Vec<String>,
    duration: &str,
) -> (String, String) {
    let (out, err) = cli_on_pipewake_once(dir, n, period_ms, extra, &target, duration);
    if !out.contains("stack: EEXIST]") {
        return (out, err);
    }
    // The loss must be reported where the user looks: the summary on stderr or in the text output.
    assert!(
        err.contains("hash collisions (EEXIST") || out.contains("hash collisions (EEXIST"),
        "a stack lost to EEXIST is not reported:\n{err}\n{out}"
    );
    eprintln!("a stack was lost to a hash collision in the stack map (EEXIST): running again");
    cli_on_pipewake_once(dir, n, period_ms, extra, &target, duration)
}

fn cli_on_pipewake_once(
    dir: &Path,
    n: u32,
    period_ms: u32,
    extra: &[&str],
    target: &impl Fn(u32) -> Vec<String>,
    duration: &str,
) -> (String, String) {
    let bin = build_pipewake(dir);
    let (mut pw, pid) = start_pipewake(&bin, n, period_ms);
    let out = dir.join("out");
    let ready = dir.join("ready");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netdrift"));
    cmd.arg("offwake").args(target(pid)).args(extra).arg("-o").arg(&out).arg("--ready-file").arg(&ready).arg(duration);
    let mut nd = Reaper(Some(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("netdrift")));
    common::wait_ready(&ready, nd.child(), Duration::from_secs(30), common::piped_stderr);
    pw.child().stdin.take().expect("stdin").write_all(b"g").expect("go");
    let st = pw.wait(Duration::from_secs(30), "pipewake");
    assert!(st.success(), "pipewake failed: {st}");
    let st = nd.wait(Duration::from_secs(30), "netdrift offwake after its target exited");
    let err = nd.stderr();
    assert!(st.success(), "netdrift offwake failed ({st}): {err}");
    if extra.iter().chain(target(pid).iter().map(|s| s.as_str()).collect::<Vec<_>>().iter()).any(|a| *a == "-p") {
        assert!(err.contains("target exited"), "netdrift should end when pipewake exits: {err}");
    }
    let s = std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("{}: {e}; stderr: {err}", out.display()));
    (s, err)
}

#[test]
fn pipe_reader_woken_by_writer_about_one_second() {
    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("offwake.svg");
    let svg_arg = svg.to_str().expect("utf-8 path").to_string();
    let (folded, _) = cli_on_pipewake(dir.path(), 20, 50, &["-f", "--svg", &svg_arg], |pid| vec!["-p".into(), pid.to_string()], "30");
    let lines = reader_writer_lines(&folded);
    assert!(!lines.is_empty(), "no folded line with pw:reader in {READER_FN} woken by pw:writer in {WRITER_FN}:\n{folded}");
    let total: u64 = lines.iter().map(|l| l.1).sum();
    eprintln!("pipe reader blocked, woken by the writer: {total} us over {} line(s)", lines.len());
    // 20 writes 50 ms apart: about 1 s, within 20%.
    assert!((800_000..=1_200_000).contains(&total), "reader off CPU {total} us, want about 1000000:\n{folded}");
    // Kernel side of both stacks: a pipe read, woken by a pipe write.
    let (l, _) = lines[0];
    assert!(l.contains("pipe_read;") && l.contains("pipe_write;"), "{l}");
    // The flame graph from the same run.
    let txt = svg_text(&std::fs::read(&svg).expect("svg written"));
    for name in [READER_FN, WRITER_FN, "pw:reader", "pw:writer", "--"] {
        assert!(txt.contains(name), "SVG lacks {name}");
    }
}

#[test]
fn comm_target_and_text_output() {
    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    // -c names the reader thread only: every block is the reader's.
    let (text, _) = cli_on_pipewake(dir.path(), 8, 25, &["--state", "interruptible"], |_| vec!["-c".into(), "pw:reader".into()], "2");
    let targets: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with("target:")).collect();
    assert!(!targets.is_empty(), "no blocks:\n{text}");
    assert!(targets.iter().all(|l| l.contains("pw:reader")), "{targets:?}");
    let block = text
        .split("\n\n")
        .find(|b| b.contains(READER_FN) && b.contains(WRITER_FN))
        .unwrap_or_else(|| panic!("no reader/writer block:\n{text}"));
    assert!(block.contains("waker:           pw:writer"), "{block}");
    // Waker frames above the separator, blocked below.
    let sep = block.find("--               --").expect("separator");
    assert!(block.find(WRITER_FN).unwrap() < sep && block.find(READER_FN).unwrap() > sep, "{block}");
    let total = model::text_total(block);
    assert!((8 * 25_000 * 8 / 10..=8 * 25_000 * 12 / 10).contains(&total), "{total} us:\n{block}");
}

/// Trace pipewake through the library and render every format from one report.
#[test]
fn formats_agree_on_one_report() {
    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = build_pipewake(dir.path());
    let run = |state_from_task| {
        let (mut pw, pid) = start_pipewake(&bin, 10, 30);
        let stdin = Arc::new(Mutex::new(pw.child().stdin.take()));
        let go = stdin.clone();
        let opts = OffwakeOptions {
            tgids: vec![pid],
            duration: Some(Duration::from_secs(30)),
            on_ready: Some(Box::new(move || {
                if let Some(mut s) = go.lock().unwrap().take() {
                    s.write_all(b"g").expect("go");
                }
            })),
            state_from_task,
            ..Default::default()
        };
        let report = offwake::run(opts).expect("offwake");
        assert!(pw.wait(Duration::from_secs(10), "pipewake").success());
        report
    };
    // The program of kernels before 5.18 loads and sees the same sleeps.
    let old = run(true);
    let c = &old.counters;
    if c.kernel_stack.eexist + c.user_stack.eexist == 0 {
        assert!(!c.any_loss(), "losses: {c:?}");
        let reader: u64 =
            old.entries.iter().filter(|e| e.blocked.comm == "pw:reader" && e.waker.task.comm == "pw:writer").map(|e| e.total_us()).sum();
        assert!((10 * 30_000 * 8 / 10..=10 * 30_000 * 12 / 10).contains(&reader), "the reader waits ~300 ms for the writer: {reader} us");
    }
    let mut report = run(false);
    let c = &report.counters;
    if c.kernel_stack.eexist + c.user_stack.eexist > 0 {
        // Two of the run's few dozen stacks hashed to one bucket of the stack
        // map (~1 run in 25: ASLR moves user stacks each run). A reported,
        // documented loss, not this test's subject: once more.
        eprintln!("stack map bucket collision, reported ({:?}, {:?}): running again", c.kernel_stack, c.user_stack);
        report = run(false);
    }
    assert_eq!(report.reason, "target exited");
    assert!(!report.counters.any_loss(), "losses: {:?}", report.counters);
    let render = |format| offwake::render(&report, &OutputOptions { format, ..Default::default() });
    let text = render(Format::Text);
    let folded = render(Format::Folded);
    let json = render(Format::Json);
    let t = report.totals();
    assert!(t.total_us > 0);
    assert_eq!(model::text_total(&text), t.total_us, "text");
    assert_eq!(model::folded_total(&folded), t.total_us, "folded");
    let objs: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let (summary, keys) = objs.split_last().expect("summary");
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["total_us"], t.total_us);
    assert_eq!(keys.iter().map(|k| k["total_us"].as_u64().unwrap()).sum::<u64>(), t.total_us, "json");
    assert!(keys.iter().all(|k| k["blocked_us"].as_u64().unwrap() + k["runq_us"].as_u64().unwrap() == k["total_us"].as_u64().unwrap()));
    let rw = keys
        .iter()
        .find(|k| k["blocked"]["user_stack"].to_string().contains(READER_FN) && k["waker"]["user_stack"].to_string().contains(WRITER_FN))
        .unwrap_or_else(|| panic!("no reader/writer key in {json}"));
    assert_eq!(rw["blocked"]["comm"], "pw:reader");
    assert_eq!(rw["waker"]["comm"], "pw:writer");
    assert_eq!(rw["waker"]["context"], "task");
    let svg = offwake::svg::render(&report.entries, &RenderOptions::default(), "t").expect("svg");
    let txt = svg_text(&svg);
    assert!(txt.contains(READER_FN) && txt.contains(WRITER_FN), "SVG lacks the functions");
    // The writer's nanosleep ends in the timer's hard irq: attributed to the irq, read from
    // preempt_count in the kernel wherever this kernel lets BPF find it.
    let timer = report
        .entries
        .iter()
        .find(|e| e.blocked.comm == "pw:writer" && e.waker.kernel.iter().any(|f| f == "hrtimer_wakeup"))
        .unwrap_or_else(|| panic!("no timer wake-up of the writer:\n{text}"));
    assert_eq!(timer.waker.context, WakeContext::Irq, "{timer:?}");
    assert!(timer.waker.user.is_empty(), "an irq has no user stack of its own: {timer:?}");
    if cfg!(target_arch = "x86_64") && report.preempt_count != offwake::PreemptCount::Stack {
        assert_eq!(report.counters.ctx_from_stack, 0, "preempt_count unreadable in BPF ({:?})", report.preempt_count);
    }
    // No frame is a bare [unknown].
    for e in &report.entries {
        for f in e.blocked_user.iter().chain(&e.waker.user).chain(&e.blocked_kernel).chain(&e.waker.kernel) {
            assert_ne!(f, "[unknown]", "bare unknown frame in {e:?}");
        }
    }
}

#[test]
fn demo_workers_blocked_in_epoll_woken_through_sockets() {
    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = DemoServer::start(&DemoConfig { workers: 2, mode: ListenMode::Shared, ..Default::default() }).expect("demo server");
    let addr = server.addr();
    let tids = server.worker_tids();
    let stop = Arc::new(AtomicBool::new(false));
    let client = common::ClientResult::default();
    let opts = OffwakeOptions {
        tids: tids.clone(),
        stop: Some(stop.clone()),
        duration: Some(Duration::from_secs(30)),
        on_ready: Some(Box::new(client.run_then_stop(addr, 8, Duration::from_millis(40), stop.clone(), Duration::from_millis(200)))),
        ..Default::default()
    };
    let report: Report = offwake::run(opts).expect("offwake");
    server.shutdown().expect("shutdown");
    assert_eq!(client.take().len(), 8, "8 connections");
    assert!(report.entries.iter().all(|e| tids.contains(&e.blocked.tid)), "only the workers are targets");
    let hit: Vec<&Entry> = report
        .entries
        .iter()
        .filter(|e| {
            let bk = e.blocked_kernel.join(";");
            let wk = e.waker.kernel.join(";");
            (bk.contains("ep_poll") || bk.contains("do_epoll_wait")) && wk.contains("ep_poll_callback") && wk.contains("sock_def_readable")
        })
        .collect();
    let all = model::text(&report.entries, &RenderOptions::default());
    assert!(!hit.is_empty(), "no worker blocked in epoll_wait woken via ep_poll_callback/sock_def_readable:\n{all}");
    // Loopback: the socket wake-up runs in softirq (in the client's own syscall) or in process context.
    for e in &hit {
        assert!(matches!(e.waker.context, WakeContext::Softirq | WakeContext::Task), "{e:?}");
    }
    let us: u64 = hit.iter().map(|e| e.total_us()).sum();
    assert!(us > 0, "{all}");
    // Each of the 8 connections made a socket readable for a worker blocked in epoll_wait.
    let periods: u64 = hit.iter().map(|e| e.count).sum();
    assert!(periods >= 8, "{periods} blocked periods ended by a readable socket for 8 connections:\n{all}");
    let shown: Vec<Entry> = hit.iter().map(|e| (*e).clone()).collect();
    eprintln!("{}", model::text(&shown, &RenderOptions::default()));
}

/// `offwake --svg FILE | head -1`: the reader leaves early, the SVG is
/// complete all the same, and the run ends quietly (status 0).
#[test]
fn the_svg_is_written_when_stdout_closes_early() {
    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("o.svg");
    let mut nd = Command::new(env!("CARGO_BIN_EXE_netdrift"))
        .args(["offwake", "--svg"])
        .arg(&svg)
        .arg("1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("netdrift");
    // Read nothing and close: the first write to stdout gets EPIPE.
    drop(nd.stdout.take());
    let out = nd.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {err}", out.status);
    let bytes = std::fs::read(&svg).unwrap_or_else(|e| panic!("{}: {e}; stderr: {err}", svg.display()));
    assert!(svg_text(&bytes).contains("--"), "a flame graph");
    assert!(!dir.path().join("o.svg.partial").exists());
}

/// Traced by thread (`-t`), a thread other than the leader runs exec
/// (tests/progs/threadexec.c): offwake follows it under the process's pid
/// (the new program's ten 100 ms naps are counted) and ends when that
/// program exits, not at the exec.
#[test]
fn a_thread_traced_by_tid_is_followed_through_its_exec() {
    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let go = dir.path().join("go");
    let (mut target, tid) = common::start_threadexec(dir.path(), &go);
    let pid = target.id();
    let go2 = go.clone();
    let opts = OffwakeOptions {
        tids: vec![tid],
        duration: Some(Duration::from_secs(20)),
        on_ready: Some(Box::new(move || std::fs::write(&go2, b"").expect("go file"))),
        ..Default::default()
    };
    let report = offwake::run(opts).expect("offwake");
    assert!(target.wait().expect("threadexec").success(), "threadexec failed");
    assert_eq!(report.reason, "target exited", "ended with the new program, not at the exec");
    let after: u64 = report.entries.iter().filter(|e| e.blocked.tid == pid).map(|e| e.count).sum();
    assert!(after >= 9, "the new program's ten naps are counted under tid {pid}: {after} periods");
    assert!(report.duration_s >= 0.9, "ran {} s", report.duration_s);
}
