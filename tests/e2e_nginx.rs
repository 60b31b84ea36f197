//! End to end on the real Debian nginx: `netdrift trace -p <master> --json`
//! must see every client connection accepted by a worker, with the right
//! ports, a chain, and the epoll fd mapping of the accepted fd.
//!
//! Needs root (it loads BPF programs) and nginx (`apt-get install nginx`).
//! Without root it fails, unless NETDRIFT_SKIP_ROOT_TESTS=1 is set.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::require_root;

const NGINX: &str = "/usr/sbin/nginx";
/// Client connections.
const K: usize = 10;
/// netdrift's own duration: a backstop, the test stops it with SIGINT.
const TRACE_DURATION_S: &str = "30";

fn nginx_binary() -> PathBuf {
    let p = Path::new(NGINX);
    if p.exists() {
        return p.to_path_buf();
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = dir.join("nginx");
            if c.exists() {
                return c;
            }
        }
    }
    panic!("nginx not found ({NGINX} or on PATH): install nginx (apt-get install nginx)");
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

fn pid_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry but is gone for our purposes.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => stat_fields(&s).map(|f| f.0 != 'Z').unwrap_or(false),
        Err(_) => false,
    }
}

/// (state, ppid) from the text of /proc/PID/stat (comm may contain spaces and parens).
fn stat_fields(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Live children of `parent`, from /proc/*/stat.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for ent in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = ent.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((state, ppid)) = stat_fields(&stat) {
            if ppid == parent && state != 'Z' {
                out.push(pid);
            }
        }
    }
    out.sort_unstable();
    out
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; pid is one we started.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// A private nginx, stopped (SIGTERM, then SIGKILL) when dropped, even on panic.
struct Nginx {
    master: u32,
    workers: Vec<u32>,
    port: u16,
}

impl Nginx {
    fn start(bin: &Path, dir: &Path) -> Nginx {
        Self::start_with(bin, dir, "")
    }

    /// `listen_opts` is appended to the listen directive (e.g. " reuseport").
    fn start_with(bin: &Path, dir: &Path, listen_opts: &str) -> Nginx {
        let mut last_err = String::new();
        // The free port can be taken between our probe and nginx's bind: retry.
        for _attempt in 0..3 {
            let port = free_port();
            let conf = dir.join("nginx.conf");
            let pid_file = dir.join("nginx.pid");
            let error_log = dir.join("error.log");
            fs::write(
                &conf,
                format!(
                    "worker_processes 2;\n\
                     daemon on;\n\
                     pid {pid};\n\
                     error_log {err};\n\
                     events {{ worker_connections 256; }}\n\
                     http {{\n\
                     \x20   access_log off;\n\
                     \x20   server {{\n\
                     \x20       listen 127.0.0.1:{port}{listen_opts};\n\
                     \x20       location / {{ return 200 \"ok\\n\"; }}\n\
                     \x20   }}\n\
                     }}\n",
                    pid = pid_file.display(),
                    err = error_log.display(),
                ),
            )
            .expect("write nginx.conf");
            let out = Command::new(bin).arg("-c").arg(&conf).arg("-p").arg(dir).output().expect("run nginx");
            if !out.status.success() {
                last_err = format!(
                    "nginx exited with {}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr),
                    fs::read_to_string(&error_log).unwrap_or_default()
                );
                if last_err.contains("Address already in use") {
                    continue;
                }
                panic!("could not start nginx: {last_err}");
            }
            // daemon on: the master writes its pid file, then forks the workers.
            let deadline = Instant::now() + Duration::from_secs(5);
            let master = loop {
                if let Some(p) = fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<u32>().ok()) {
                    break p;
                }
                assert!(Instant::now() < deadline, "nginx wrote no pid file {}", pid_file.display());
                std::thread::sleep(Duration::from_millis(20));
            };
            // From here on the guard owns the master.
            let mut n = Nginx { master, workers: Vec::new(), port };
            loop {
                let kids = children_of(master);
                if kids.len() == 2 {
                    n.workers = kids;
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "nginx master {master} has children {kids:?}, expected 2 workers; error.log:\n{}",
                    fs::read_to_string(&error_log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            return n;
        }
        panic!("could not start nginx on a free port: {last_err}");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let mut all = vec![self.master];
        all.extend(&self.workers);
        signal(self.master, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while all.iter().any(|&p| pid_alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for &p in &all {
            if pid_alive(p) {
                eprintln!("nginx pid {p} ignored SIGTERM: SIGKILL");
                signal(p, libc::SIGKILL);
            }
        }
    }
}

/// netdrift running in the background, killed when dropped if still running.
struct Tracer {
    child: Child,
    stderr_path: PathBuf,
}

impl Tracer {
    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Wait (20 s at most) until the probes are attached.
    fn wait_ready(&mut self, ready: &Path) {
        let path = &self.stderr_path;
        common::wait_ready(ready, &mut self.child, Duration::from_secs(20), |_| fs::read_to_string(path).unwrap_or_default());
    }

    /// SIGINT, a clean exit `within` that, and the JSON Lines it wrote to `out` (text and parsed).
    fn stop_json(&mut self, out: &Path, within: Duration) -> (String, Vec<Value>) {
        signal(self.child.id(), libc::SIGINT);
        let st = self.wait_timeout(within).expect("netdrift exits after SIGINT");
        assert!(st.success(), "{}", self.stderr());
        let text = fs::read_to_string(out).expect("output");
        let lines = text.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
        (text, lines)
    }

    fn wait_timeout(&mut self, t: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + t;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait netdrift") {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), libc::SIGINT);
            if self.wait_timeout(Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// One request on a new connection; returns the client's local port.
fn request(port: u16) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to nginx on {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let local = s.local_addr().unwrap().port();
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").expect("write request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    assert!(resp.starts_with("HTTP/1.1 200"), "nginx answered (client port {local}):\n{resp}");
    assert!(resp.contains("ok"), "no \"ok\" in the body (client port {local}):\n{resp}");
    local
}

fn ty(v: &Value) -> &str {
    v["type"].as_str().unwrap_or("")
}

fn pid_of(v: &Value) -> u32 {
    v["task"]["pid"].as_u64().unwrap_or(0) as u32
}

fn ts(v: &Value) -> u64 {
    v["ts"].as_u64().unwrap_or(0)
}

fn addr(v: &Value) -> Option<SocketAddr> {
    v.as_str()?.parse().ok()
}

fn show(evs: &[&Value]) -> String {
    evs.iter().map(|v| format!("  {v}\n")).collect()
}

#[test]
fn nginx_accepts_are_traced_with_ports_chains_and_epoll_fds() {
    if !require_root() {
        return;
    }
    let nginx_bin = nginx_binary();
    let started = Instant::now();
    let tmp = tempfile::Builder::new().prefix("netdrift-e2e-nginx").tempdir().expect("tempdir");
    let dir = tmp.path();

    let ngx = Nginx::start(&nginx_bin, dir);
    let (master, workers, port) = (ngx.master, ngx.workers.clone(), ngx.port);
    eprintln!("nginx: master {master}, workers {workers:?}, port {port}");

    // Trace it.
    let out_path = dir.join("out.jsonl");
    let ready = dir.join("ready");
    let stderr_path = dir.join("netdrift.stderr");
    let child = Command::new(env!("CARGO_BIN_EXE_netdrift"))
        .arg("trace")
        .arg("-p")
        .arg(master.to_string())
        .arg("--json")
        .arg("--output-file")
        .arg(&out_path)
        .arg("--ready-file")
        .arg(&ready)
        .arg(TRACE_DURATION_S)
        .stdin(Stdio::null())
        .stdout(Stdio::from(fs::File::create(dir.join("netdrift.stdout")).unwrap()))
        .stderr(Stdio::from(fs::File::create(&stderr_path).unwrap()))
        .spawn()
        .expect("spawn netdrift");
    let mut tracer = Tracer { child, stderr_path };
    tracer.wait_ready(&ready);
    eprintln!("netdrift ready after {:?}", started.elapsed());

    // Client: K sequential requests, each on a new connection.
    let mut client_ports = Vec::new();
    for i in 0..K {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(30));
        }
        client_ports.push(request(port));
    }
    eprintln!("client ports: {client_ports:?}");

    // Stop the trace.
    std::thread::sleep(Duration::from_millis(500));
    signal(tracer.child.id(), libc::SIGINT);
    let status = tracer
        .wait_timeout(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("netdrift did not exit within 15 s of SIGINT; stderr:\n{}", tracer.stderr()));
    let stderr = tracer.stderr();
    assert!(status.success(), "netdrift exited with {status}; stderr:\n{stderr}");
    eprintln!("netdrift stderr:\n{stderr}");

    let mut partial = out_path.as_os_str().to_owned();
    partial.push(".partial");
    assert!(!Path::new(&partial).exists(), "{} is left over after a clean exit", Path::new(&partial).display());
    let text = fs::read_to_string(&out_path)
        .unwrap_or_else(|e| panic!("read {}: {e} (netdrift writes FILE.partial, then renames it)\nstderr:\n{stderr}", out_path.display()));
    let lines: Vec<Value> = text
        .lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {} is not JSON ({e}): {l}", i + 1)))
        .collect();
    assert!(lines.len() >= 2, "output has {} lines:\n{text}", lines.len());
    let first = &lines[0];
    let summary = lines.last().unwrap();
    assert_eq!(ty(first), "start", "first line: {first}");
    assert_eq!(ty(summary), "summary", "last line: {summary}");
    let start_pids: BTreeSet<u64> = first["pids"].as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default();
    assert!(start_pids.contains(&(master as u64)), "start line does not list the master {master}: {first}");
    let events: Vec<&Value> = lines[1..lines.len() - 1].iter().collect();
    for e in &events {
        assert!(
            e["ts"].is_u64()
                && e["cpu"].is_u64()
                && e["task"]["pid"].is_u64()
                && e["task"]["tid"].is_u64()
                && e["task"]["comm"].is_string()
                && e.get("chain").is_some(),
            "event lacks ts/cpu/task/chain: {e}"
        );
    }
    let by_type = |t: &str| -> Vec<&Value> { events.iter().copied().filter(|e| ty(e) == t).collect() };
    let is_worker = |p: u32| workers.contains(&p);

    // No records lost.
    assert_eq!(summary["lost"]["ringbuf"].as_u64(), Some(0), "ring buffer lost records: {summary}");

    // Accepts: exactly K successful ones, all in workers, one per client connection.
    let accepts = by_type("accept");
    let ok_accepts: Vec<&Value> = accepts.iter().copied().filter(|e| e["ret"].as_i64().map(|r| r >= 0).unwrap_or(false)).collect();
    assert_eq!(ok_accepts.len(), K, "expected {K} accepts with ret >= 0, got {}:\n{}", ok_accepts.len(), show(&accepts));
    let not_in_worker: Vec<&Value> = ok_accepts.iter().copied().filter(|e| !is_worker(pid_of(e))).collect();
    assert!(not_in_worker.is_empty(), "accepts not made by a worker {workers:?} (master {master}):\n{}", show(&not_in_worker));
    let mut traced_ports = Vec::new();
    for a in &ok_accepts {
        let remote = addr(&a["peer"]["remote"]).unwrap_or_else(|| panic!("accept without peer.remote: {a}"));
        let local = addr(&a["peer"]["local"]).unwrap_or_else(|| panic!("accept without peer.local: {a}"));
        assert_eq!(remote.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST), "peer.remote is not 127.0.0.1: {a}");
        assert_eq!(local.port(), port, "peer.local port is not nginx's {port}: {a}");
        assert!(!a["chain"].is_null(), "accept has no chain: {a}");
        traced_ports.push(remote.port());
    }
    let mut want = client_ports.clone();
    want.sort_unstable();
    traced_ports.sort_unstable();
    assert_eq!(traced_ports, want, "peer.remote ports of the accepts != the client's local ports:\n{}", show(&ok_accepts));

    // Each accepted fd later comes back from epoll_wait in the same process,
    // mapped to that fd (epoll data -> fd read from the kernel's epoll item:
    // an `epoll_reg` by the accepting thread, with the data word epoll_wait
    // returns), before the fd is accepted again; and is closed by that process.
    let epoll_exits = by_type("epoll_exit");
    let regs = by_type("epoll_reg");
    for a in &ok_accepts {
        let (tid, fd, at) = (a["task"]["tid"].as_u64(), a["ret"].as_i64(), ts(a));
        let reg = regs.iter().find(|r| r["task"]["tid"].as_u64() == tid && r["fd"].as_i64() == fd && ts(r) > at);
        let reg = reg.unwrap_or_else(|| {
            panic!("no epoll_reg of fd {fd:?} by thread {tid:?} after its accept:\n  {a}\nepoll_regs:\n{}", show(&regs))
        });
        let data = reg["data"].as_u64();
        let returned = epoll_exits.iter().any(|e| {
            ts(e) > ts(reg)
                && e["task"]["tid"].as_u64() == tid
                && e["events"].as_array().map(|v| v.iter().any(|x| x["data"].as_u64() == data && x["fd"].as_i64() == fd)).unwrap_or(false)
        });
        assert!(returned, "epoll_wait never returned the data word {data:?} of {reg} as fd {fd:?}");
    }
    let closes = by_type("close");
    for a in &ok_accepts {
        let (pid, fd, at) = (pid_of(a), a["ret"].as_i64().unwrap(), ts(a));
        let client = addr(&a["peer"]["remote"]).unwrap().port();
        let until = ok_accepts
            .iter()
            .filter(|b| pid_of(b) == pid && b["ret"].as_i64() == Some(fd) && ts(b) > at)
            .map(|b| ts(b))
            .min()
            .unwrap_or(u64::MAX);
        let found = epoll_exits.iter().any(|e| {
            pid_of(e) == pid
                && ts(e) > at
                && ts(e) < until
                && e["events"].as_array().map(|evs| evs.iter().any(|x| x["fd"].as_i64() == Some(fd))).unwrap_or(false)
        });
        if !found {
            let related: Vec<&Value> = events
                .iter()
                .copied()
                .filter(|e| {
                    pid_of(e) == pid && ts(e) >= at && ts(e) < until && matches!(ty(e), "epoll_exit" | "epoll_ctl" | "epoll_map" | "close")
                })
                .collect();
            panic!(
                "no epoll_exit of pid {pid} after the accept of fd {fd} (client port {client}) returned an event with \"fd\": {fd}\naccept:\n  {a}\nepoll events of pid {pid} in between:\n{}",
                show(&related)
            );
        }
        let closed = closes.iter().any(|c| {
            pid_of(c) == pid
                && c["fd"].as_i64() == Some(fd)
                && ts(c) > at
                && ts(c) <= until
                && addr(&c["sock"]["remote"]).map(|r| r.port()) == Some(client)
        });
        if !closed {
            let related: Vec<&Value> = closes.iter().copied().filter(|c| pid_of(c) == pid && ts(c) > at).collect();
            panic!(
                "no close of fd {fd} (client port {client}) by pid {pid} after its accept:\n  {a}\ncloses of pid {pid} after it:\n{}",
                show(&related)
            );
        }
    }

    // The listen socket became ready, and /proc mapped it to fds in both workers and the master.
    let listen_ready: Vec<&Value> = by_type("sock_ready")
        .into_iter()
        .filter(|e| e["sock"]["state_name"] == "LISTEN" && addr(&e["sock"]["local"]).map(|a| a.port()) == Some(port))
        .collect();
    assert!(!listen_ready.is_empty(), "no sock_ready for the LISTEN socket on port {port}:\n{}", show(&by_type("sock_ready")));
    let with_workers = listen_ready.iter().any(|e| {
        let pids: BTreeSet<u32> =
            e["fds"].as_array().map(|a| a.iter().filter_map(|f| f["pid"].as_u64()).map(|p| p as u32).collect()).unwrap_or_default();
        workers.iter().all(|w| pids.contains(w)) && pids.contains(&master)
    });
    assert!(with_workers, "no LISTEN sock_ready whose fds list both workers {workers:?} and the master {master}:\n{}", show(&listen_ready));

    // Every socket event is joined by the wake-up it caused: one left alone
    // would be an open chain holding later chains back until it expires.
    let wake_chains: BTreeSet<u64> = by_type("wake").iter().filter_map(|e| e["chain"].as_u64()).collect();
    let orphans: Vec<&Value> =
        by_type("sock_ready").into_iter().filter(|e| !e["chain"].as_u64().is_some_and(|c| wake_chains.contains(&c))).collect();
    assert!(orphans.is_empty(), "sock_ready events no wake-up joined:\n{}", show(&orphans));

    // Only targets are woken.
    let stray: Vec<&Value> = by_type("wake")
        .into_iter()
        .filter(|e| {
            let p = e["target"]["pid"].as_u64().unwrap_or(0) as u32;
            p != master && !is_worker(p)
        })
        .collect();
    assert!(stray.is_empty(), "wake events for a task that is neither the master {master} nor a worker {workers:?}:\n{}", show(&stray));

    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &events {
        *counts.entry(ty(e)).or_default() += 1;
    }
    eprintln!(
        "events by type: {counts:?}; accepts per worker: {:?}; test took {:?}",
        {
            let mut m: BTreeMap<u32, usize> = BTreeMap::new();
            for a in &ok_accepts {
                *m.entry(pid_of(a)).or_default() += 1;
            }
            m
        },
        started.elapsed()
    );
    drop(tracer);
    drop(ngx);
}

/// `netdrift ARGS --output-file DIR/out.jsonl` in the background, probes attached.
fn start_tracer(dir: &Path, args: &[&str]) -> (Tracer, PathBuf) {
    let (out_path, ready, stderr_path) = (dir.join("out.jsonl"), dir.join("ready"), dir.join("netdrift.stderr"));
    let child = Command::new(env!("CARGO_BIN_EXE_netdrift"))
        .args(args)
        .arg("--output-file")
        .arg(&out_path)
        .arg("--ready-file")
        .arg(&ready)
        .arg(TRACE_DURATION_S)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(&stderr_path).unwrap()))
        .spawn()
        .expect("spawn netdrift");
    let mut tracer = Tracer { child, stderr_path };
    tracer.wait_ready(&ready);
    (tracer, out_path)
}

/// Run `netdrift herd` (plus `extra` flags) on an nginx, K sequential
/// connections; returns the summary line's `analysis.herd` rows (their
/// listen address checked against nginx's port), the client ports and the workers.
fn herd_run(listen_opts: &str, extra: &[&str]) -> (Vec<Value>, Vec<u16>, Vec<u32>) {
    let tmp = tempfile::Builder::new().prefix("netdrift-e2e-herd").tempdir().expect("tempdir");
    let dir = tmp.path();
    let ngx = Nginx::start_with(&nginx_binary(), dir, listen_opts);
    let master = ngx.master.to_string();
    let mut args = vec!["herd", "-p", &master, "--json"];
    args.extend_from_slice(extra);
    let (mut tracer, out_path) = start_tracer(dir, &args);
    // Both workers asleep before each connection.
    let ports: Vec<u16> = (0..K)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(40));
            request(ngx.port)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (_, lines) = tracer.stop_json(&out_path, Duration::from_secs(15));
    let stderr = tracer.stderr();
    assert!(stderr.contains("thundering herd"), "the text summary has the herd table:\n{stderr}");
    assert!(!stderr.contains("latency per stage"), "herd prints the herd table only:\n{stderr}");
    let last = lines.last().unwrap();
    assert_eq!(ty(last), "summary");
    let rows = last["analysis"]["herd"].as_array().cloned().unwrap_or_default();
    eprintln!("nginx{listen_opts} {extra:?}: herd rows {}", serde_json::to_string_pretty(&rows).unwrap());
    for r in &rows {
        // Read by the wake-up program from the listen socket itself.
        assert_eq!(r["local"].as_str(), Some(format!("127.0.0.1:{}", ngx.port).as_str()), "{r}");
    }
    (rows, ports, ngx.workers.clone())
}

#[test]
fn nginx_herd_plain_and_reuseport() {
    if !require_root() {
        return;
    }
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    // reuseport: one listen socket per worker, the kernel picks one: no herd.
    // This run takes the programs of older kernels (wake-up: a helper call
    // per socket field, no bpf_rdonly_cast; sched_switch: the state read
    // from the task, no prev_state), so that both builds are checked.
    let (rows, _, _) = herd_run(" reuseport", &["--bench-probed-reads"]);
    assert!(!rows.is_empty(), "listen sockets seen");
    let conns: u64 = rows.iter().map(|r| n(r, "connections")).sum();
    assert_eq!(conns, K as u64, "every connection accepted once: {rows:?}");
    for r in &rows {
        assert_eq!(n(r, "wasted"), 0, "reuseport: no wake-up for nothing: {r}");
        assert!(n(r, "wakeups") <= n(r, "events"), "reuseport: one thread per event: {r}");
    }
    // Plain: nginx registers the shared listen socket with EPOLLEXCLUSIVE on
    // Linux >= 4.5, so at most one sleeping worker is woken per event.
    let (rows, _, _) = herd_run("", &[]);
    assert_eq!(rows.len(), 1, "one shared listen socket: {rows:?}");
    let r = &rows[0];
    assert_eq!(n(r, "connections"), K as u64, "{r}");
    assert!(n(r, "wasted") * 5 <= K as u64, "EPOLLEXCLUSIVE keeps wasted wake-ups rare: {r}");
}

/// Ring-buffer memory is reused once the ring wraps, and a reserved record is
/// not zeroed: every field a record can leave unset would show the bytes of
/// an older record. A 1 MiB ring wrapped several times by a few thousand
/// connections; without `--packets` no socket event may carry a packet, an
/// accept that failed has no peer, and backlogs are the listener's.
#[test]
fn reused_ring_memory_leaves_no_stale_fields() {
    if !require_root() {
        return;
    }
    const CONNS: usize = 3000;
    let tmp = tempfile::Builder::new().prefix("netdrift-e2e-ring").tempdir().expect("tempdir");
    let dir = tmp.path();
    let ngx = Nginx::start(&nginx_binary(), dir);
    let (mut tracer, out_path) = start_tracer(dir, &["trace", "-p", &ngx.master.to_string(), "--json", "--ringbuf-size", "1"]);
    // Two clients at once, so that both workers race for connections.
    let port = ngx.port;
    let clients: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                (0..CONNS / 2).for_each(|_| {
                    request(port);
                })
            })
        })
        .collect();
    clients.into_iter().for_each(|c| c.join().expect("client thread"));
    std::thread::sleep(Duration::from_millis(300));
    let (text, lines) = tracer.stop_json(&out_path, Duration::from_secs(30));
    let summary = lines.last().expect("summary");
    assert_eq!(ty(summary), "summary");
    let bytes: usize = text.len();
    eprintln!("{} lines, {bytes} bytes of JSON; summary lost {}", lines.len(), summary["lost"]);
    let n = |t: &str| lines.iter().filter(|e| ty(e) == t).count();
    // Records are 100-500 bytes: 16,000 of them go round the 1 MiB ring several times
    // (records the ring had no room for count too: the tracer of a debug build is slow).
    let records = summary["stats"]["events"].as_u64().unwrap_or(0) + summary["lost"]["ringbuf"].as_u64().unwrap_or(0);
    assert!(records >= 16_000 && n("sock_ready") >= 100, "the ring wrapped: {records} records, {} socket events", n("sock_ready"));

    let with_packet: Vec<&Value> = lines.iter().filter(|e| ty(e) == "sock_ready" && e.get("packet").is_some()).collect();
    assert!(
        with_packet.is_empty(),
        "{} socket events carry a packet without --packets, e.g.:\n{}",
        with_packet.len(),
        show(&with_packet[..with_packet.len().min(3)])
    );
    let max_backlog = |a: &Value| a["max_backlog"].as_u64().unwrap_or(u64::MAX);
    let failed_accepts = lines.iter().filter(|e| ty(e) == "accept" && e["ret"].as_i64().unwrap_or(0) < 0).count();
    eprintln!("{} accepts, {failed_accepts} failed", n("accept"));
    for a in lines.iter().filter(|e| ty(e) == "accept") {
        let failed = a["ret"].as_i64().unwrap_or(0) < 0;
        assert!(!failed || a["peer"].is_null(), "a failed accept has a peer: {a}");
        assert_eq!(max_backlog(a), 511, "nginx listens with backlog 511: {a}");
        assert!(a["backlog"].as_u64().unwrap_or(u64::MAX) <= 511, "queue length within the backlog: {a}");
    }
    let packet_stage = &summary["analysis"]["latency"]["packet_to_ready"];
    assert_eq!(packet_stage["count"].as_u64(), Some(0), "packet -> socket ready measured without --packets: {packet_stage}");
}

/// A private nginx in a new temporary directory, both workers pinned to CPU 0:
/// under load they take turns on it, sleep and get woken.
fn pinned_nginx(prefix: &str) -> (tempfile::TempDir, Nginx) {
    let tmp = tempfile::Builder::new().prefix(prefix).tempdir().expect("tempdir");
    let ngx = Nginx::start(&nginx_binary(), tmp.path());
    ngx.workers.iter().for_each(|&w| common::pin(w, 0));
    (tmp, ngx)
}

/// Keep-alive clients, each sending one request at a time until `dur` has
/// passed and pausing `pause` after each response (idle workers sleep and
/// get woken); returns the number of answered requests.
fn keepalive_load(port: u16, conns: usize, dur: Duration, pause: Duration) -> u64 {
    let deadline = Instant::now() + dur;
    let clients: Vec<_> = (0..conns)
        .map(|_| {
            std::thread::spawn(move || {
                let connect = || {
                    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    s
                };
                let (mut s, mut done, mut buf) = (connect(), 0u64, [0u8; 4096]);
                while Instant::now() < deadline {
                    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("write request");
                    let mut got = Vec::new();
                    while !got.ends_with(b"ok\n") {
                        match s.read(&mut buf) {
                            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                            // nginx closes a keep-alive connection after keepalive_requests (1000).
                            _ => break,
                        }
                    }
                    if got.ends_with(b"ok\n") {
                        done += 1;
                    } else {
                        s = connect();
                    }
                    if !pause.is_zero() {
                        std::thread::sleep(pause);
                    }
                }
                done
            })
        })
        .collect();
    clients.into_iter().map(|c| c.join().expect("client thread")).sum()
}

/// A worker woken from a voluntary sleep waits for a CPU, and that wait is
/// measured. Two workers share one CPU under keep-alive load; on kernels with
/// DELAY_DEQUEUE (6.12+) a worker that blocks often stays queued, asleep,
/// until picked: the wake-up must still say it was off the CPU
/// (`target_on_rq` false) and its switch-in must follow. So, per worker, in
/// time order: after a voluntary switch-out, no wake-up claims it never
/// left, and the next switch record is a switch-in (all but a rare few).
#[test]
fn a_worker_woken_from_sleep_always_gets_its_run_queue_wait() {
    if !require_root() {
        return;
    }
    let (tmp, ngx) = pinned_nginx("netdrift-e2e-runq");
    let dir = tmp.path();
    // Records lost would break the pairs: a ring that holds the whole second of load even
    // if a debug build's tracer, on a busy machine, reads nothing during it.
    let (mut tracer, out_path) = start_tracer(dir, &["trace", "-p", &ngx.master.to_string(), "--json", "--ringbuf-size", "256"]);
    let requests = keepalive_load(ngx.port, 8, Duration::from_millis(1000), Duration::ZERO);
    std::thread::sleep(Duration::from_millis(300));
    let (_, mut lines) = tracer.stop_json(&out_path, Duration::from_secs(30));
    let summary = lines.pop().expect("summary");
    assert_eq!(ty(&summary), "summary");
    assert_eq!(summary["lost"]["ringbuf"].as_u64(), Some(0), "no record lost: {}", summary["lost"]);
    assert!(summary["lost"]["skipped"].is_object(), "the summary reports the program runs the kernel skipped: {}", summary["lost"]);
    let delayed = &lines[0]["features"]["delayed_dequeue"];
    assert!(delayed.is_boolean(), "the start line says whether the kernel can keep a sleeper queued: {}", lines[0]);
    eprintln!("kernel keeps sleepers queued (DELAY_DEQUEUE): {delayed}");
    epoll_enters_pair_with_exits(&lines, &ngx.workers);
    lines.retain(|e| matches!(ty(e), "switch_in" | "switch_out" | "wake"));
    lines.sort_by_key(ts);
    let tid = |e: &Value, k: &str| e[k]["tid"].as_u64().unwrap_or(0) as u32;
    let (mut after_sleep, mut sleeps, mut unpaired, mut example) = (0, 0, 0, String::new());
    // Back on a CPU from a sleep that no wake-up ended: the one in flight at the switch-out
    // brought it back, and that switch-out should have said `woken`.
    let (mut unwoken, mut unwoken_example) = (0, String::new());
    for &w in &ngx.workers {
        let mine: Vec<&Value> =
            lines.iter().filter(|e| if ty(e) == "wake" { tid(e, "target") == w } else { tid(e, "task") == w }).collect();
        // Some(true): last switch record was a voluntary switch-out.
        let mut asleep: Option<bool> = None;
        let mut woken_since = false;
        // A wake-up while it was still on its way out: Some(target_on_rq).
        let mut early_wake: Option<bool> = None;
        for (i, e) in mine.iter().enumerate() {
            let context = || show(&mine[i.saturating_sub(4)..(i + 2).min(mine.len())]);
            match ty(e) {
                "switch_out" => {
                    if asleep == Some(true) {
                        unpaired += 1;
                        if example.is_empty() {
                            example = format!("worker {w}:\n{}", context());
                        }
                    }
                    // `woken`: a wake-up that found it running was in flight; it is runnable.
                    asleep = Some(!e["involuntary"].as_bool().unwrap_or(true) && e["woken"] != Value::Bool(true));
                    sleeps += asleep.unwrap_or(false) as usize;
                    // A wake-up that found it already dequeued (target_on_rq false) ends this sleep too.
                    woken_since = early_wake == Some(false);
                }
                "switch_in" => {
                    if asleep == Some(true) && !woken_since {
                        unwoken += 1;
                        if unwoken_example.is_empty() {
                            unwoken_example = format!("worker {w}:\n{}", context());
                        }
                    }
                    asleep = Some(false);
                    early_wake = None;
                }
                _ if asleep != Some(true) => early_wake = e["target_on_rq"].as_bool(),
                _ => {
                    woken_since = true;
                    after_sleep += 1;
                    assert_eq!(
                        e["target_on_rq"],
                        Value::Bool(false),
                        "worker {w}: woken from sleep as if it never left the CPU:\n{}",
                        context()
                    );
                }
            }
        }
    }
    let wake_to_cpu = summary["analysis"]["latency"]["wake_to_cpu"]["count"].as_u64().unwrap_or(0);
    let woken = lines.iter().filter(|e| e["woken"] == Value::Bool(true)).count();
    eprintln!(
        "{requests} requests; {sleeps} voluntary sleeps, {unpaired} without a switch-in before the next switch-out; \
         {woken} switch-outs with a wake-up in flight; {after_sleep} wake-ups from a sleep; {wake_to_cpu} run-queue waits measured; \
         {unwoken} back on a CPU unwoken; runs skipped {}",
        summary["lost"]["skipped"]
    );
    // Before the DELAY_DEQUEUE and racing-dequeue handling, about half of them. A rare
    // residue (a few per 10,000 here) is a return to the CPU for which the kernel fired no
    // sched_switch at all: ftrace's own sched_switch events, recorded alongside, have the same gaps.
    assert!(unpaired * 200 <= sleeps, "{unpaired} of {sleeps} sleeps have no switch-in, e.g. {example}");
    assert_eq!(unwoken, 0, "back on a CPU with no wake-up after a sleep, e.g. {unwoken_example}");
    assert!(requests > 1000 && after_sleep > 100, "the load made the workers sleep and wake: {requests} requests, {after_sleep} wake-ups");
    assert!(
        wake_to_cpu as usize >= after_sleep * 9 / 10,
        "a run-queue wait for (nearly) every wake-up from sleep: {wake_to_cpu} of {after_sleep}"
    );
}

/// Each `epoll_enter` (written lazily, by the thread's switch-out or by a
/// waker on another CPU, whichever comes first) is written once, before its
/// exit in the stream, and is the call its `epoll_exit` returns from: same
/// `enter_ts`, epfd and syscall. Only a thread's last call may still be in
/// progress when the trace stops.
fn epoll_enters_pair_with_exits(lines: &[Value], tids: &[u32]) {
    let tid = |e: &Value| e["task"]["tid"].as_u64().unwrap_or(0) as u32;
    for &t in tids {
        let enters: Vec<(usize, &Value)> = lines.iter().enumerate().filter(|(_, e)| ty(e) == "epoll_enter" && tid(e) == t).collect();
        let exits: std::collections::BTreeMap<u64, (usize, &Value)> = lines
            .iter()
            .enumerate()
            .filter(|(_, e)| ty(e) == "epoll_exit" && tid(e) == t)
            .map(|(i, e)| (e["enter_ts"].as_u64().unwrap_or(0), (i, e)))
            .collect();
        let mut seen = BTreeSet::new();
        let last = enters.iter().map(|(_, e)| ts(e)).max();
        for &(i, e) in &enters {
            assert!(seen.insert(ts(e)), "thread {t}: epoll_enter written twice for one call: {e}");
            match exits.get(&ts(e)) {
                Some(&(j, x)) => assert!(
                    x["epfd"] == e["epfd"] && x["syscall"] == e["syscall"] && i < j,
                    "thread {t}: epoll_enter (line {i}) is not the call its exit (line {j}) returns from:\n  {e}\n  {x}"
                ),
                None => assert_eq!(Some(ts(e)), last, "thread {t}: an epoll_enter with no epoll_exit before its next call: {e}"),
            }
        }
        assert!(enters.len() > 10, "thread {t}: {} epoll_enter records under load (it blocked in epoll_wait)", enters.len());
    }
}

/// offwake names the waker of a worker's sleep even when the wake-up comes
/// while the worker is still switching out (the waker's stacks take
/// microseconds, and the switch-out opens the period meanwhile, or its
/// insert lands between the switch-out's lookup and write). Under keep-alive
/// load on one CPU those races are frequent: before they were handled, about
/// a tenth of nginx's blocked periods here had no waker, then up to 1%; now
/// almost none.
#[test]
fn offwake_names_the_waker_of_nearly_every_worker_sleep_under_load() {
    if !require_root() {
        return;
    }
    let (tmp, ngx) = pinned_nginx("netdrift-e2e-owload");
    let dir = tmp.path();
    let (mut tracer, out_path) = start_tracer(dir, &["offwake", "-p", &ngx.master.to_string(), "--json"]);
    let requests = keepalive_load(ngx.port, 8, Duration::from_millis(1500), Duration::ZERO);
    let (_, lines) = tracer.stop_json(&out_path, Duration::from_secs(30));
    let summary = lines.iter().find(|l| ty(l) == "summary").expect("summary line");
    let periods = summary["periods"].as_u64().expect("periods");
    let not_seen = summary["not_seen"].as_u64().expect("not_seen");
    eprintln!(
        "{requests} requests, {periods} blocked periods, {not_seen} without a waker, early wake-ups {}, rewakes {}",
        summary["early_wakes"], summary["rewakes"]
    );
    assert!(requests > 1000 && periods > 1000, "the load made the workers sleep: {requests} requests, {periods} periods");
    assert!(not_seen * 200 < periods, "{not_seen} of {periods} blocked periods have no waker: {summary}");
    // The workers' sleeps in epoll_wait are attributed to the clients' softirqs or syscalls.
    let worker_keys: Vec<&Value> =
        lines.iter().filter(|l| ty(l) == "offwake" && ngx.workers.contains(&(l["blocked"]["tid"].as_u64().unwrap_or(0) as u32))).collect();
    let named: u64 = worker_keys.iter().filter(|l| l["waker"]["context"] != "not_seen").map(|l| l["count"].as_u64().unwrap_or(0)).sum();
    let all: u64 = worker_keys.iter().map(|l| l["count"].as_u64().unwrap_or(0)).sum();
    assert!(all > 1000 && named * 200 >= all * 199, "workers' periods with a waker: {named} of {all}");
    // Workers sleep in epoll_wait, interruptibly; now and then one waits on a
    // lock uninterruptibly (D: the listener's in a racing accept, the epoll
    // set's mutex). A waker that comes while one is still switching out
    // overwrites its state with TASK_WAKING: the state must come from
    // sched_switch's prev_state (read as `?` before).
    let states: BTreeSet<String> =
        worker_keys.iter().flat_map(|l| l["blocked"]["states"].as_array().cloned().unwrap_or_default()).map(|s| s.to_string()).collect();
    let in_d: u64 = worker_keys
        .iter()
        .filter(|l| l["blocked"]["states"].as_array().is_some_and(|s| s.iter().any(|s| s == "D")))
        .map(|l| l["count"].as_u64().unwrap_or(0))
        .sum();
    if netdrift::probes::sched_switch_has_prev_state() {
        assert!(states.contains("\"S\"") && states.iter().all(|s| s == "\"S\"" || s == "\"D\""), "{states:?}: {summary}");
        assert!(in_d * 100 <= all, "{in_d} of {all} worker periods uninterruptible: {summary}");
        assert_eq!(summary["state_unknown"], 0, "{summary}");
    } else {
        eprintln!("kernel < 5.18, no prev_state: {} periods of unknown state", summary["state_unknown"]);
    }
}

/// (waker tid, woken tid, `stack_sig`): what the BPF side reuses a stack for.
type ReuseKey = (u64, u64, String);
/// (cause, context, via_epoll).
type Class = (String, String, bool);

/// Each wake-up's key (the kernel's: waker, woken thread, `stack_sig`), class
/// and whether it reused a stack.
fn wake_classes(lines: &[Value]) -> Vec<(ReuseKey, Class, bool)> {
    lines
        .iter()
        .filter(|l| ty(l) == "wake")
        .map(|l| {
            let sig = l["stack_sig"].as_str().expect("every wake line has its stack_sig").to_string();
            let key = (l["task"]["tid"].as_u64().unwrap_or(0), l["target"]["tid"].as_u64().unwrap_or(0), sig);
            let class = (l["cause"].to_string(), l["context"].to_string(), l["via_epoll"].as_bool().unwrap_or(false));
            (key, class, l["stack_reused"] == Value::Bool(true))
        })
        .collect()
}

/// Without --stacks a wake-up takes a stack only if none was taken in the
/// last 100 ms for the same waker, woken thread, socket hook and state, and
/// waker's syscall, and reuses that one's class. Checked in two runs under
/// keep-alive load: with --stacks (every stack taken) the class is indeed
/// constant per key here, so reuse loses nothing; without, nearly every
/// wake-up reuses, the stacks taken are bounded by the elapsed time, and each
/// reused class is one taken before for its key.
#[test]
fn wake_ups_reuse_the_class_of_a_recent_stack_of_the_same_waker() {
    if !require_root() {
        return;
    }
    let (tmp, ngx) = pinned_nginx("netdrift-e2e-reuse");
    let dir = tmp.path();
    let run = |extra: &[&str]| {
        let master = ngx.master.to_string();
        let mut args = vec!["trace", "-p", &master, "--json", "--ringbuf-size", "64"];
        args.extend_from_slice(extra);
        let (mut tracer, out_path) = start_tracer(dir, &args);
        let started = Instant::now();
        // Paced: the faster the tracer, the less busy-looping workers sleep; a pause
        // after each response makes them idle, so every run has wake-ups.
        let requests = keepalive_load(ngx.port, 8, Duration::from_millis(1000), Duration::from_micros(200));
        let (_, lines) = tracer.stop_json(&out_path, Duration::from_secs(30));
        (requests, started.elapsed(), lines)
    };

    let (requests, _, lines) = run(&["--stacks"]);
    let summary = lines.iter().find(|l| ty(l) == "summary").expect("summary line");
    assert_eq!(summary["stats"]["stacks_reused"], 0, "--stacks reuses no stack: {}", summary["stats"]);
    assert_eq!(lines[0]["stack_reuse_ns"], 0, "the start line says every stack is taken: {}", lines[0]);
    let wakes = wake_classes(&lines);
    assert!(wakes.len() > 100, "the load woke the workers: {requests} requests, {} wake-ups", wakes.len());
    let with_stack = lines.iter().filter(|l| ty(l) == "wake" && l["waker_stack"].as_array().is_some_and(|s| !s.is_empty())).count();
    assert_eq!(with_stack, wakes.len(), "--stacks: every wake-up has its stack");
    let mut first: HashMap<_, _> = HashMap::new();
    let mut differ = Vec::new();
    for (key, class, _) in &wakes {
        let f = first.entry(key.clone()).or_insert_with(|| class.clone());
        if f != class {
            differ.push(format!("{key:?}: {class:?}, first {f:?}"));
        }
    }
    let differ_examples = differ.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
    let differ = differ.len();
    eprintln!(
        "--stacks: {} wake-ups, {} keys, {differ} with another class than their key's first (e.g. {differ_examples})",
        wakes.len(),
        first.len()
    );
    assert!(differ * 100 <= wakes.len(), "the class is constant per key for this load: {differ} of {} differ", wakes.len());

    let (requests, elapsed, lines) = run(&[]);
    let summary = lines.iter().find(|l| ty(l) == "summary").expect("summary line");
    assert_eq!(summary["lost"]["ringbuf"].as_u64(), Some(0), "no record lost: {}", summary["lost"]);
    assert_eq!(lines[0]["stack_reuse_ns"], 100_000_000, "the start line gives the reuse window: {}", lines[0]);
    let wakes = wake_classes(&lines);
    let reused = wakes.iter().filter(|w| w.2).count();
    assert_eq!(summary["stats"]["stacks_reused"].as_u64(), Some(reused as u64), "the summary counts the reused: {}", summary["stats"]);
    let mut taken: HashMap<ReuseKey, (usize, BTreeSet<Class>)> = HashMap::new();
    let (mut mismatched, mut orphans) = (0, 0);
    for (key, class, reused) in &wakes {
        if !reused {
            let t = taken.entry(key.clone()).or_default();
            t.0 += 1;
            t.1.insert(class.clone());
        } else {
            match taken.get(key) {
                Some((_, c)) => mismatched += !c.contains(class) as usize,
                None => orphans += 1,
            }
        }
    }
    let stacks: usize = taken.values().map(|t| t.0).sum();
    let state_wakes = wakes.iter().filter(|w| w.1 .0 == "\"socket_state\"").count();
    eprintln!("socket_state wake-ups: {state_wakes} ({} reused)", wakes.iter().filter(|w| w.2 && w.1 .0 == "\"socket_state\"").count());
    eprintln!(
        "{requests} requests in {elapsed:?}: {} wake-ups, {reused} reused a stack, {stacks} stacks taken for {} keys",
        wakes.len(),
        taken.len()
    );
    assert!(wakes.len() > 100 && reused * 10 >= wakes.len() * 9, "nearly every wake-up reuses a stack: {reused} of {}", wakes.len());
    // A client thread wakes a worker from a few syscalls (write, read, connect, close).
    let bound = (elapsed.as_millis() as usize / 100 + 2) * taken.len().max(1) * 4;
    assert!(stacks <= bound, "at most one stack per key per 100 ms: {stacks} taken for {} keys in {elapsed:?}", taken.len());
    assert_eq!(orphans, 0, "every reused class follows a stack taken for its key");
    assert_eq!(mismatched, 0, "every reused class is one taken for its key");
}
