//! The Perfetto timeline and the HTML report, end to end.
//!
//! * Without root: a hand-written recording with hostile names goes through
//!   `netdrift analyze --perfetto` and `netdrift report --from` (run as
//!   nobody when the tests run as root: the report needs no privilege), the
//!   timeline is checked for structure and the page is opened in headless
//!   Chromium (offline).
//! * As root: demo-server workers renamed to hostile names
//!   (`<img src=x oner`, quotes, an escape sequence with U+2028) are traced
//!   live with `trace --perfetto --record`, `report`, and `report --from`:
//!   the terminal output holds no escape byte, the timeline is valid, and the
//!   pages run no injected script, fetch nothing, log no error, and show the
//!   chain diagram with kernel functions linked to elixir.bootlin.com.
//!
//! Screenshots go to target/test-artifacts/.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netdrift::demo::{self, DemoConfig, DemoServer, ListenMode};
use netdrift::events::{EpEvent, Event, Kind, ReadyHook, SockInfo, Syscall, Task};
use serde_json::{json, Value};

mod common;
use common::{require_root, SERIAL};

/// 15 bytes: what the kernel keeps of `<img src=x onerror=alert(1)>`.
const IMG: &str = "<img src=x oner";
/// Quotes and the end of a script element.
const QUOTES: &str = "x\"y'</script>";
/// An escape sequence and a JavaScript line separator.
const ESC: &str = "\u{1b}[31mR\u{2028}\u{1b}[0m";

const ELIXIR: &str = "https://elixir.bootlin.com/linux/";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_netdrift")
}

fn artifacts() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("test-artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------- Perfetto

/// Structural checks of a Chrome trace-event file; returns the parsed JSON.
fn check_perfetto(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).expect("the timeline parses as JSON");
    assert_eq!(v["displayTimeUnit"], "ns");
    let evs = v["traceEvents"].as_array().expect("traceEvents array");
    assert!(!evs.is_empty());
    let id = |e: &Value| (e["pid"].as_u64().expect("pid"), e["tid"].as_u64().expect("tid"));

    // Every event's thread is named.
    let named: HashSet<(u64, u64)> = evs.iter().filter(|e| e["ph"] == "M" && e["name"] == "thread_name").map(id).collect();
    let procs: HashSet<u64> =
        evs.iter().filter(|e| e["ph"] == "M" && e["name"] == "process_name").map(|e| e["pid"].as_u64().unwrap()).collect();
    for e in evs.iter().filter(|e| e["ph"] != "M") {
        assert!(named.contains(&id(e)), "event on a track without thread_name: {e}");
        assert!(procs.contains(&id(e).0), "event of a process without process_name: {e}");
        let ts = e["ts"].as_f64().expect("ts is a number");
        assert!(ts >= 0.0, "ts relative to the trace start: {e}");
    }

    // Flows: every start has its end (same id, name and category), ends bind to the enclosing slice.
    let mut starts: HashMap<u64, &Value> = HashMap::new();
    let mut ends: HashMap<u64, &Value> = HashMap::new();
    for e in evs {
        match e["ph"].as_str() {
            Some("s") => assert!(starts.insert(e["id"].as_u64().expect("flow id"), e).is_none(), "duplicate flow start {e}"),
            Some("f") => {
                assert_eq!(e["bp"], "e", "{e}");
                assert!(ends.insert(e["id"].as_u64().expect("flow id"), e).is_none(), "duplicate flow end {e}");
            }
            _ => {}
        }
    }
    assert_eq!(starts.len(), ends.len(), "as many flow ends as starts");
    for (k, s) in &starts {
        let f = ends.get(k).unwrap_or_else(|| panic!("flow {k} has no end: {s}"));
        assert_eq!((&s["name"], &s["cat"]), (&f["name"], &f["cat"]));
        assert!(f["ts"].as_f64().unwrap() >= s["ts"].as_f64().unwrap(), "flow {k} goes back in time");
    }

    // Per track: X slices sorted by start never overlap improperly, and
    // every flow point lies inside a slice of its track.
    let mut tracks: HashMap<(u64, u64), Vec<(f64, f64)>> = HashMap::new();
    let mut last_ts: HashMap<(u64, u64), f64> = HashMap::new();
    for e in evs.iter().filter(|e| e["ph"] == "X") {
        let ts = e["ts"].as_f64().unwrap();
        let dur = e["dur"].as_f64().expect("X has dur");
        assert!(dur >= 0.0, "{e}");
        // The file is written in time order: monotonic per track as written.
        let prev = last_ts.insert(id(e), ts).unwrap_or(f64::MIN);
        assert!(ts >= prev, "X events out of order on a track: {e}");
        tracks.entry(id(e)).or_default().push((ts, ts + dur));
    }
    const EPS: f64 = 1e-6;
    for (t, v) in tracks.iter_mut() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
        let mut stack: Vec<f64> = Vec::new();
        let mut prev_start = f64::MIN;
        for &(s, e) in v.iter() {
            assert!(s >= prev_start, "timestamps monotonic on {t:?}");
            prev_start = s;
            while stack.last().map(|&end| end <= s + EPS).unwrap_or(false) {
                stack.pop();
            }
            if let Some(&top) = stack.last() {
                assert!(e <= top + EPS, "track {t:?}: slice [{s}, {e}] starts inside one ending at {top} but outlives it");
            }
            stack.push(e);
        }
    }
    for e in starts.values().chain(ends.values()) {
        let ts = e["ts"].as_f64().unwrap();
        let inside = tracks.get(&id(e)).map(|v| v.iter().any(|&(s, en)| s < ts && ts < en)).unwrap_or(false);
        assert!(inside, "flow point outside every slice of its track: {e}");
    }
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    assert!(!Path::new(&partial).exists(), "no .partial left behind");
    v
}

fn thread_names(v: &Value) -> Vec<String> {
    v["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .map(|e| e["args"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn count(v: &Value, f: impl Fn(&Value) -> bool) -> usize {
    v["traceEvents"].as_array().unwrap().iter().filter(|e| f(e)).count()
}

// ---------------------------------------------------------------- Browser

fn chromium() -> PathBuf {
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"] {
        if Path::new(c).exists() {
            return PathBuf::from(c);
        }
    }
    panic!("these tests open the report in headless Chromium: install it (`scripts/deps.sh test`, or `apt-get install chromium`)");
}

/// Chromium, headless and offline: every host name fails to resolve, so a
/// fetch could only fail loudly.
fn chromium_cmd(profile: &Path) -> Command {
    let mut c = Command::new(chromium());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--enable-logging=stderr",
        "--v=0",
    ]);
    c.arg(format!("--user-data-dir={}", profile.display()));
    c.stdin(Stdio::null());
    c
}

fn run_with_timeout(mut c: Command, limit: Duration) -> std::process::Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("start chromium");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let e = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::process::Output { status, stdout: o.join().unwrap(), stderr: e.join().unwrap() }
}

/// The start tags of an HTML document with their attributes (names
/// lower-cased), skipping comments and the raw text of script and style.
fn tags(html: &str) -> Vec<(String, Vec<(String, String)>)> {
    let b = html.as_bytes();
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = html[i..].find('<') {
        let p = i + off;
        let next = b.get(p + 1).copied().unwrap_or(b' ');
        if html[p..].starts_with("<!--") {
            i = html[p..].find("-->").map(|e| p + e + 3).unwrap_or(b.len());
            continue;
        }
        if !next.is_ascii_alphabetic() {
            i = p + 1;
            continue;
        }
        let mut j = p + 1;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b':' || b[j] == b'-') {
            j += 1;
        }
        let name = lower[p + 1..j].to_string();
        let mut attrs = Vec::new();
        loop {
            while j < b.len() && (b[j] as char).is_ascii_whitespace() {
                j += 1;
            }
            if j >= b.len() || b[j] == b'>' {
                j += 1;
                break;
            }
            if b[j] == b'/' {
                j += 1;
                continue;
            }
            let a0 = j;
            while j < b.len() && !(b[j] as char).is_ascii_whitespace() && b[j] != b'=' && b[j] != b'>' && b[j] != b'/' {
                j += 1;
            }
            let an = lower[a0..j].to_string();
            while j < b.len() && (b[j] as char).is_ascii_whitespace() {
                j += 1;
            }
            let mut val = String::new();
            if j < b.len() && b[j] == b'=' {
                j += 1;
                while j < b.len() && (b[j] as char).is_ascii_whitespace() {
                    j += 1;
                }
                if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
                    let q = b[j];
                    let v0 = j + 1;
                    j = v0;
                    while j < b.len() && b[j] != q {
                        j += 1;
                    }
                    val = html[v0..j.min(b.len())].to_string();
                    j += 1;
                } else {
                    let v0 = j;
                    while j < b.len() && !(b[j] as char).is_ascii_whitespace() && b[j] != b'>' {
                        j += 1;
                    }
                    val = html[v0..j].to_string();
                }
            }
            if !an.is_empty() {
                attrs.push((an, val));
            }
        }
        if name == "script" || name == "style" {
            let close = format!("</{name}");
            j = lower[j.min(b.len())..].find(&close).map(|e| j + e).unwrap_or(b.len());
        }
        out.push((name, attrs));
        i = j.min(b.len());
    }
    out
}

/// Values of attribute `name` (or `*:name`, e.g. xlink:href) in every tag.
fn attr_values(html: &str, name: &str) -> Vec<String> {
    let suffix = format!(":{name}");
    tags(html).into_iter().flat_map(|(_, a)| a).filter(|(k, _)| k == name || k.ends_with(&suffix)).map(|(_, v)| v).collect()
}

/// URLs the page itself asked the network stack for, from Chromium's NetLog:
/// requests whose initiator is the page's (opaque, `null`) file:// origin or
/// whose isolation key is file://. Chromium's own background requests
/// (initiator "not an origin") are not the page's and fail offline anyway.
fn page_requests(netlog: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(netlog).unwrap_or_default();
    // Chromium may leave the closing brackets out when it exits; close them.
    let v: Value = serde_json::from_str(&text)
        .or_else(|_| serde_json::from_str(&format!("{}]}}", text.trim_end().trim_end_matches(','))))
        .unwrap_or_else(|e| panic!("NetLog {} unreadable: {e}", netlog.display()));
    let types = &v["constants"]["logEventTypes"];
    let start_job = types["URL_REQUEST_START_JOB"].as_u64().expect("NetLog event types");
    let mut out = Vec::new();
    for e in v["events"].as_array().into_iter().flatten() {
        if e["type"].as_u64() != Some(start_job) {
            continue;
        }
        let p = &e["params"];
        let initiator = p["initiator"].as_str().unwrap_or("");
        let nik = p["network_isolation_key"].as_str().unwrap_or("");
        if initiator == "null" || initiator.starts_with("file:") || nik.contains("file://") {
            out.push(p["url"].as_str().unwrap_or("?").to_string());
        }
    }
    out
}

/// What a report page does in a browser.
struct PageCheck {
    nodes: usize,
    links: usize,
    dom: String,
}

/// The page fetches nothing, runs no injected script, logs no error, and
/// draws the chain diagram; a screenshot is saved as `name`.png.
fn check_in_browser(html: &Path, name: &str) -> PageCheck {
    let src = std::fs::read_to_string(html).unwrap();
    // Statically: nothing to fetch. Links are fragments or elixir.bootlin.com.
    for attr in ["src", "href", "action", "formaction", "poster", "srcset", "data"] {
        for v in attr_values(&src, attr) {
            assert!(
                attr != "src" && attr != "srcset" && attr != "poster" && attr != "action" && attr != "formaction",
                "a {attr}= attribute in the report: {v:?}"
            );
            if attr == "href" {
                assert!(v.starts_with('#') || v.starts_with(ELIXIR), "href to {v:?}");
            }
        }
    }
    for (i, _) in src.match_indices("url(") {
        assert!(src[i + 4..].starts_with('#'), "url() to something else: {}", &src[i..(i + 60).min(src.len())]);
    }
    assert!(!src.to_ascii_lowercase().contains("@import"));
    assert!(!src.contains('\u{1b}'), "no raw escape byte in the page");

    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", html.display());
    let netlog = profile.path().join("netlog.json");
    let mut c = chromium_cmd(profile.path());
    c.arg(format!("--log-net-log={}", netlog.display())).arg("--dump-dom").arg(&url);
    let o = run_with_timeout(c, Duration::from_secs(90));
    let dom = String::from_utf8_lossy(&o.stdout).into_owned();
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "chromium --dump-dom failed: {log}");
    let requests = page_requests(&netlog);
    assert!(requests.is_empty(), "the page made network requests: {requests:?}");
    for l in log.lines() {
        assert!(
            !l.contains(":CONSOLE") && !l.contains("Uncaught") && !l.contains("net::ERR_") && !l.contains("Content Security Policy"),
            "browser console: {l}"
        );
    }
    let elements = tags(&dom);
    let root: HashMap<&str, &str> = elements
        .iter()
        .find(|(n, _)| n == "html")
        .map(|(_, a)| a.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
        .unwrap_or_default();
    assert_eq!(root.get("data-nd-ready"), Some(&"1"), "the page's script ran to the end: {root:?}");
    for marker in ["data-nd-error", "data-nd-alert", "data-nd-csp"] {
        assert!(!root.contains_key(marker), "{marker} = {:?}", root.get(marker));
    }
    assert!(!dom.to_ascii_lowercase().contains("<img"), "no <img> element in the DOM");
    assert!(elements.iter().all(|(n, _)| n != "img" && n != "iframe" && n != "object" && n != "embed"), "no injected element");
    assert!(elements.iter().all(|(_, a)| a.iter().all(|(k, _)| !k.starts_with("on"))), "no event handler attribute in the DOM");
    let scripts = elements.iter().filter(|(n, _)| n == "script").count();
    assert_eq!(scripts, 3, "only the report's own scripts (guard, data, chain diagram)");
    for v in attr_values(&dom, "href") {
        assert!(v.starts_with('#') || v.starts_with(ELIXIR), "href to {v:?} in the DOM");
    }
    assert!(attr_values(&dom, "src").is_empty(), "no src attribute in the DOM");
    let nodes = dom.matches("class=\"node ").count();
    let links = attr_values(&dom, "href").iter().filter(|v| v.starts_with(ELIXIR) && v.contains("/C/ident/")).count();

    let shot = artifacts().join(format!("{name}.png"));
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let mut c = chromium_cmd(profile.path());
    c.arg(format!("--screenshot={}", shot.display())).arg("--window-size=1280,2000").arg(&url);
    let o = run_with_timeout(c, Duration::from_secs(90));
    assert!(o.status.success(), "chromium --screenshot: {}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::metadata(&shot).map(|m| m.len() > 1000).unwrap_or(false), "screenshot {} written", shot.display());
    eprintln!("{name}: {nodes} chain nodes, {links} kernel source links; screenshot {}", shot.display());
    PageCheck { nodes, links, dom }
}

/// Run `args` as nobody when root (the report from a recording needs no
/// privilege), else as is.
fn unprivileged(args: &[&std::ffi::OsStr]) -> std::process::Output {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut c = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]).arg(bin());
        c
    } else {
        Command::new(bin())
    };
    c.args(args);
    c.output().expect("run netdrift")
}

fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    dir
}

// ---------------------------------------------------------------- fixture

fn task(pid: u32, tid: u32, comm: &str) -> Task {
    Task { pid, tid, comm: comm.into() }
}

fn sock(state: u8, local: &str, remote: &str) -> SockInfo {
    common::tcp_sock(0xffff_8881_0000_1000, 4242, state, local, remote)
}

/// A recording: one connection wakes three hostile-named workers (one
/// accepts, two were woken for nothing), then its data wakes the winner,
/// which closes it.
fn fixture_recording(path: &Path) {
    let t0: u64 = 5_000_000_000;
    let w = [task(300, 301, IMG), task(300, 302, QUOTES), task(300, 303, ESC)];
    let client = task(400, 400, "cl<i>ent&");
    let listen = sock(10, "127.0.0.1:8080", "0.0.0.0:0");
    let conn = SockInfo { ino: 4343, sk: 0xffff_8881_0000_2000, ..sock(1, "127.0.0.1:8080", "127.0.0.1:50000") };
    let wake = |target: &Task, seq: u64| {
        common::socket_wake(target, seq, vec![0xffff_ffff_8100_0000, 0xffff_ffff_8100_1000, 0xffff_ffff_8100_2000])
    };
    let ev = |ts: u64, cpu: u32, t: &Task, kind: Kind| Event { ts: t0 + ts, cpu, task: t.clone(), kind };
    let sin = |prev: u64| Kind::SwitchIn {
        runnable_ts: t0 + prev,
        prev_cpu: 0,
        after_preempt: false,
        prev_tid: 0,
        prev_comm: "swapper/0".into(),
    };
    let sout = || Kind::SwitchOut { involuntary: false, woken: false, state: 1, next_tid: 0, next_comm: "swapper/0".into() };
    let mut evs = vec![ev(1_000, 0, &w[0], Kind::FdMap { ino: 4242, fd: 3 })];
    for (i, t) in w.iter().enumerate() {
        let epfd = 5 + i as i32;
        let at = 2_000 + 1_000 * i as u64;
        evs.push(ev(at, (i % 2) as u32, t, Kind::EpollCtl { epfd, op: 1, fd: 3, events: 1, data: 3, err: 0 }));
        evs.push(ev(at + 100, (i % 2) as u32, t, Kind::EpollEnter { epfd, maxevents: 64, syscall: Syscall::EpollWait }));
        evs.push(ev(at + 200, (i % 2) as u32, t, sout()));
    }
    evs.extend([
        ev(
            100_000,
            1,
            &client,
            Kind::SockReady { sock: listen.clone().into(), seq: 1, hook: ReadyHook::SkDataReady, new_state: None, packet: None },
        ),
        ev(100_300, 1, &client, wake(&w[0], 1)),
        ev(100_600, 1, &client, wake(&w[1], 1)),
        ev(100_900, 1, &client, wake(&w[2], 1)),
        ev(110_000, 0, &w[0], sin(100_300)),
        ev(
            111_000,
            0,
            &w[0],
            Kind::EpollExit {
                enter_ts: t0 + 2_100,
                epfd: 5,
                ret: 1,
                syscall: Syscall::EpollWait,
                events: vec![EpEvent { events: 1, data: 3, fd: None }],
            },
        ),
        ev(
            112_000,
            0,
            &w[0],
            Kind::Accept {
                enter_ts: t0 + 111_500,
                listen_fd: 3,
                ret: 9,
                syscall: Syscall::Accept4,
                backlog: 0,
                max_backlog: 128,
                listen: Some(listen.clone().into()),
                peer: Some(conn.clone().into()),
            },
        ),
        ev(113_000, 0, &w[0], Kind::EpollCtl { epfd: 5, op: 1, fd: 9, events: 1, data: 9, err: 0 }),
        ev(113_500, 0, &w[0], Kind::EpollEnter { epfd: 5, maxevents: 64, syscall: Syscall::EpollWait }),
        ev(113_600, 0, &w[0], sout()),
        ev(120_000, 1, &w[1], sin(100_600)),
        ev(121_000, 1, &w[1], sout()),
        ev(130_000, 0, &w[2], sin(100_900)),
        ev(131_000, 0, &w[2], sout()),
        ev(
            200_000,
            1,
            &client,
            Kind::SockReady { sock: conn.clone().into(), seq: 2, hook: ReadyHook::SkDataReady, new_state: None, packet: None },
        ),
        ev(200_200, 1, &client, wake(&w[0], 2)),
        ev(205_000, 0, &w[0], sin(200_200)),
        ev(
            205_500,
            0,
            &w[0],
            Kind::EpollExit {
                enter_ts: t0 + 113_500,
                epfd: 5,
                ret: 1,
                syscall: Syscall::EpollWait,
                events: vec![EpEvent { events: 1, data: 9, fd: None }],
            },
        ),
        ev(207_000, 0, &w[0], Kind::Close { fd: 9, sock: Some(conn.clone().into()) }),
        ev(207_500, 0, &w[0], Kind::EpollEnter { epfd: 5, maxevents: 64, syscall: Syscall::EpollWait }),
        ev(207_600, 0, &w[0], sout()),
    ]);
    let mut out = String::new();
    let start = json!({"version": "test", "t0_ns": t0, "pids": [300], "tids": [], "comms": [], "features": {}, "notes": [], "ringbuf_bytes": 8 << 20, "packets": false});
    out.push_str(&json!({"type": "netdrift-record", "version": 1, "start": start}).to_string());
    out.push('\n');
    for e in &evs {
        out.push_str(&serde_json::to_string(e).unwrap());
        out.push('\n');
    }
    out.push_str(&json!({"type": "netdrift-record-end", "reason": "done", "duration_s": 1.0, "lost": {"ringbuf": 0, "stack": 0, "map_full": 0, "user_read": 0, "per_cpu": []}, "decode_errors": 0, "ringbuf_mib": 8}).to_string());
    out.push('\n');
    std::fs::write(path, out).unwrap();
}

#[test]
fn report_and_timeline_from_a_recording_need_no_root_and_are_safe() {
    let dir = open_dir();
    let rec = dir.path().join("fixture.ndr");
    fixture_recording(&rec);

    // analyze --perfetto
    let tl = dir.path().join("analyze.json");
    let o = unprivileged(&["analyze".as_ref(), rec.as_os_str(), "--perfetto".as_ref(), tl.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = check_perfetto(&tl);
    let names = thread_names(&v);
    for n in [IMG, QUOTES, ESC] {
        assert!(names.iter().any(|x| x == n), "thread {n:?} named as traced: {names:?}");
    }
    // socket -> 3 wakes and wake -> return/on CPU for each, for the listen chain; 2 for the data chain.
    assert_eq!(count(&v, |e| e["ph"] == "s"), 8, "flow arrows");
    // Sleeps in epoll_wait: the three workers' until the connection woke them,
    // the winner's until its data came, the two losers' until the end
    // (the winner's last one ends with the trace, at zero length: not drawn).
    assert_eq!(count(&v, |e| e["ph"] == "X" && e["name"] == "blocked in epoll_wait"), 6);
    assert!(count(&v, |e| e["ph"] == "i" && e["name"].as_str().unwrap_or("").starts_with("accept4(3)")) == 1);
    assert!(count(&v, |e| e["ph"] == "i" && e["name"] == "close(9)") == 1);
    assert!(count(&v, |e| e["ph"] == "i" && e["name"] == "socket ready") == 2);

    // report --from: no root, and the same timeline from it.
    let html = dir.path().join("fixture.html");
    let tl2 = dir.path().join("report.json");
    let o =
        unprivileged(&["report".as_ref(), html.as_os_str(), "--from".as_ref(), rec.as_os_str(), "--perfetto".as_ref(), tl2.as_os_str()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("report written"), "{err}");
    assert!(!o.stdout.contains(&0x1b) && !o.stderr.contains(&0x1b), "no escape byte on the terminal");
    assert_eq!(std::fs::read(&tl).unwrap(), std::fs::read(&tl2).unwrap(), "same timeline from analyze and report");
    let p = check_in_browser(&html, "report-fixture");
    // The fixture's herd chain: its nodes, drawn from the recording alone.
    assert_eq!(p.nodes, 11, "chain diagram of the fixture's herd chain");
    assert!(p.dom.contains("&lt;img src=x oner"), "the hostile name is shown as text");
    assert!(p.dom.contains("x\"y'&lt;/script&gt;") || p.dom.contains("x&quot;y'&lt;/script&gt;"), "quotes shown as text");
    assert!(p.dom.contains("\\x1b[31mR"), "escape shown as \\x1b");

    // A timeline that cannot be written fails before anything is read.
    let o = Command::new(bin()).args(["analyze"]).arg(&rec).args(["--perfetto", "/nonexistent-dir/x.json"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent-dir/x.json"));
    // --from and targets do not mix.
    let o = Command::new(bin()).args(["report", "x.html", "--from"]).arg(&rec).args(["-p", "1"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

// ---------------------------------------------------------------- live

fn set_comm(tid: u32, name: &str) {
    let p = format!("/proc/self/task/{tid}/comm");
    std::fs::write(&p, name.as_bytes()).unwrap_or_else(|e| panic!("{p}: {e}"));
    let got = std::fs::read(&p).unwrap();
    assert_eq!(&got[..got.len() - 1], name.as_bytes(), "comm of {tid} set");
}

fn wait_for(p: &Path, child: &mut std::process::Child) {
    common::wait_ready(p, child, Duration::from_secs(30), common::piped_stderr);
}

/// Run netdrift `args` (plus `-t` for each worker and a ready file) while the
/// client makes `k` connections; end it with SIGINT. Returns (stdout, stderr).
fn traced(args: &[&std::ffi::OsStr], tids: &[u32], addr: std::net::SocketAddr, k: usize, dir: &Path) -> (Vec<u8>, Vec<u8>) {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let ready = dir.join(format!("ready-{}", RUN.fetch_add(1, std::sync::atomic::Ordering::SeqCst)));
    let _ = std::fs::remove_file(&ready);
    let mut c = Command::new(bin());
    c.args(args);
    for t in tids {
        c.arg("-t").arg(t.to_string());
    }
    c.arg("--ready-file").arg(&ready);
    let out_path = dir.join("stdout.bin");
    let err_path = dir.join("stderr.bin");
    c.stdout(std::fs::File::create(&out_path).unwrap()).stderr(std::fs::File::create(&err_path).unwrap());
    let mut child = c.spawn().unwrap();
    wait_for(&ready, &mut child);
    std::thread::sleep(Duration::from_millis(150));
    let conns = demo::run_client(addr, k, Duration::from_millis(40)).expect("client");
    assert!(conns.iter().all(|c| c.ok), "every request answered");
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill with a pid we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = child.wait().unwrap();
    let (out, err) = (std::fs::read(&out_path).unwrap(), std::fs::read(&err_path).unwrap());
    assert!(st.success(), "netdrift {st}: {}", String::from_utf8_lossy(&err));
    (out, err)
}

#[test]
fn hostile_names_live_trace_timeline_and_reports() {
    if !require_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _ = chromium();
    let server = DemoServer::start(&DemoConfig { workers: 3, mode: ListenMode::Shared, port: 0, work_us: 0 }).expect("demo server");
    let tids = server.worker_tids();
    for (t, n) in tids.iter().zip([IMG, QUOTES, ESC]) {
        set_comm(*t, n);
    }
    let addr = server.addr();
    let dir = open_dir();
    let k = 5;

    // trace --stacks --perfetto --record: the terminal gets no escape byte.
    let tl = dir.path().join("live.json");
    let rec = dir.path().join("live.ndr");
    let (out, err) = traced(
        &["trace".as_ref(), "--stacks".as_ref(), "--perfetto".as_ref(), tl.as_os_str(), "--record".as_ref(), rec.as_os_str()],
        &tids,
        addr,
        k,
        dir.path(),
    );
    let text = String::from_utf8_lossy(&out);
    assert!(!out.contains(&0x1b), "escape byte in the trace output:\n{text}");
    assert!(!err.contains(&0x1b), "escape byte on stderr");
    assert!(text.contains("\\x1b[31mR"), "the escape-sequence comm is shown escaped:\n{text}");
    assert!(text.contains(IMG), "the chains name the workers:\n{text}");
    assert!(text.contains("woke "), "{text}");

    let v = check_perfetto(&tl);
    let names = thread_names(&v);
    for n in [IMG, QUOTES, ESC] {
        assert!(names.iter().any(|x| x == n), "thread {n:?} in the timeline: {names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("CPU")), "per-CPU waker tracks: {names:?}");
    let flows = count(&v, |e| e["ph"] == "s");
    assert!(flows >= 2 * k, "socket -> wake -> return arrows for {k} connections: {flows}");
    assert!(count(&v, |e| e["ph"] == "X" && e["name"] == "on CPU") >= k);
    assert!(count(&v, |e| e["ph"] == "X" && e["name"] == "blocked in epoll_wait") >= k);
    assert!(count(&v, |e| e["ph"] == "X" && e["name"].as_str().unwrap_or("").starts_with("epoll_wait(")) >= k);
    assert!(count(&v, |e| e["ph"] == "i" && e["name"].as_str().unwrap_or("").starts_with("accept4(")) >= k);
    assert!(count(&v, |e| e["ph"] == "i" && e["name"].as_str().unwrap_or("").starts_with("close(")) >= k);

    // report, live.
    let html = dir.path().join("live.html");
    let (_, err) = traced(&["report".as_ref(), html.as_os_str()], &tids, addr, k, dir.path());
    assert!(String::from_utf8_lossy(&err).contains("report written"));
    let p = check_in_browser(&html, "report-live");
    assert!(p.nodes >= 4, "chain diagram: socket, wake, on CPU, epoll return...: {} nodes", p.nodes);
    assert!(p.links >= 5, "the waker's kernel stack links to elixir: {} links", p.links);
    assert!(
        p.dom.contains("/C/ident/try_to_wake_up")
            || p.dom.contains("/C/ident/ep_poll_callback")
            || p.dom.contains("/C/ident/sock_def_readable"),
        "wake-up functions linked"
    );
    assert!(p.dom.contains("&lt;img src=x oner"), "hostile comm shown as text");
    let version = netdrift::output::html::elixir_version(&netdrift::output::html::kernel_release()).expect("kernel version");
    assert!(p.dom.contains(&format!("{ELIXIR}{version}/C/ident/")), "links to this kernel's version {version}");

    // report --from the recording, as nobody.
    let html2 = dir.path().join("recorded.html");
    let o = unprivileged(&["report".as_ref(), html2.as_os_str(), "--from".as_ref(), rec.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!o.stdout.contains(&0x1b) && !o.stderr.contains(&0x1b));
    let p = check_in_browser(&html2, "report-recorded");
    assert!(p.nodes >= 4, "{} nodes", p.nodes);
    assert!(p.dom.contains("&lt;img src=x oner"));
    assert!(p.links > 0 || p.dom.contains("kptr_restrict"), "without kallsyms the page says why functions are not linked");
    // As root, the same recording (same boot) names and links the kernel functions.
    let html3 = dir.path().join("recorded-root.html");
    let o = Command::new(bin()).arg("report").arg(&html3).arg("--from").arg(&rec).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p = check_in_browser(&html3, "report-recorded-root");
    assert!(p.links >= 5, "kernel functions linked from a recording: {} links", p.links);

    let stats = server.shutdown().expect("shutdown");
    assert_eq!(stats.accepted(), 2 * k as u64, "both traced runs served their connections");
}

/// The browser checks catch what they are for: an injected element with a
/// handler, a script error, a network fetch (so a passing report means something).
#[test]
fn browser_checks_catch_injection_errors_and_fetches() {
    let dir = open_dir();
    let ready = "<script>document.documentElement.setAttribute('data-nd-ready','1')</script>";
    let pages = [
        ("handler", format!("<!DOCTYPE html><html><body><div id=v></div><script>document.getElementById('v').innerHTML='<b onmouseover=x>hi</b>'</script>{ready}{ready}</body></html>")),
        ("error", format!("<!DOCTYPE html><html><body><script>undefinedFunction()</script>{ready}{ready}</body></html>")),
        ("fetch", format!("<!DOCTYPE html><html><body><script>fetch('https://example.invalid/x').catch(function(){{}})</script>{ready}{ready}</body></html>")),
        ("img", format!("<!DOCTYPE html><html><body><div id=v></div><script>document.getElementById('v').innerHTML='&lt;'.replace('&lt;','<')+'img>'</script>{ready}{ready}</body></html>")),
    ];
    for (name, page) in pages {
        let p = dir.path().join(format!("{name}.html"));
        std::fs::write(&p, page).unwrap();
        let r = std::panic::catch_unwind(|| check_in_browser(&p, &format!("selftest-{name}")));
        assert!(r.is_err(), "the browser check missed the {name} page");
    }
}

/// A return address is named after the function that made the call: the
/// address right after a function's last byte (a call that never returns
/// ends it) names that function, not the next one (its `__pfx_` padding).
#[test]
fn return_addresses_name_the_calling_function() {
    if !require_root() {
        return;
    }
    let text = std::fs::read_to_string("/proc/kallsyms").unwrap();
    let mut syms: Vec<(u64, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (addr, kind, name) = (f.next()?, f.next()?, f.next()?);
            (f.next().is_none() && matches!(kind, "t" | "T")).then(|| (u64::from_str_radix(addr, 16).ok(), name))
        })
        .filter_map(|(a, n)| Some((a?, n)))
        .collect();
    syms.sort();
    let i = syms.iter().position(|&(_, n)| n == "schedule").expect("schedule in /proc/kallsyms");
    let next = syms[i + 1..].iter().find(|s| s.0 > syms[i].0).expect("a symbol after schedule").0;
    assert_ne!(next, 0, "kallsyms addresses hidden (kptr_restrict)");
    let mut k = netdrift::symbolize::KernelSyms::new();
    let names = k.stack_names(&[syms[i].0, next]);
    assert_eq!(names[0].as_deref(), Some("schedule"), "the innermost frame as it is");
    assert_eq!(names[1].as_deref(), Some("schedule"), "a return address right after schedule names schedule");
    assert_ne!(k.names(&[next])[0].as_deref(), Some("schedule"), "the address itself is the next symbol");
}
