//! Handler probes end to end: an Envoy-like C++ program on real libevent
//! (`--preset envoy`), Debian's redis-server (`--preset redis`), and the
//! errors for stripped binaries, globs without a match, missing and non-ELF
//! binaries.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::require_root;

fn nd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_netdrift"))
}

/// Build tests/progs/envoy_like.cc (needs g++ and libevent-dev).
fn build_envoy_like(dir: &Path) -> PathBuf {
    build_envoy_like_with(dir, "-levent")
}

/// The same, linked with `lib` (`-levent`, or `-levent_core` alone).
fn build_envoy_like_with(dir: &Path, lib: &str) -> PathBuf {
    let out = dir.join("envoy_like");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/envoy_like.cc");
    let st = Command::new("g++")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&out)
        .arg(&src)
        .arg(lib)
        .status()
        .expect("g++ (apt-get install g++ libevent-dev)");
    assert!(st.success(), "building {} failed: install g++ and libevent-dev", src.display());
    out
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the Envoy-like server; returns it and its port.
fn start_envoy_like(bin: &Path) -> (Proc, u16) {
    start_envoy_like_cmd(Command::new(bin))
}

/// The same, from a command for it (an environment of its own).
fn start_envoy_like_cmd(mut cmd: Command) -> (Proc, u16) {
    let mut child = cmd.arg("0").stdout(Stdio::piped()).spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while out.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    let s = String::from_utf8(line).unwrap();
    let port = s.strip_prefix("ready ").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("envoy_like said {s:?}"));
    (Proc(child), port)
}

/// Trace `pid` with extra args until `client` is done; returns the JSON lines.
fn trace_json(pid: u32, extra: &[&str], client: impl FnOnce()) -> Vec<Value> {
    trace_json_pids(&[pid], extra, client)
}

fn trace_json_pids(pids: &[u32], extra: &[&str], client: impl FnOnce()) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let (ready, out) = (dir.path().join("ready"), dir.path().join("out.jsonl"));
    let mut child = nd()
        .arg("trace")
        .args(pids.iter().flat_map(|p| ["-p".to_string(), p.to_string()]))
        .args(["--json", "--ready-file"])
        .arg(&ready)
        .arg("-o")
        .arg(&out)
        .args(extra)
        .arg("30")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_ready(&ready, &mut child, Duration::from_secs(20), common::piped_stderr);
    client();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn of_type<'a>(v: &'a [Value], t: &str) -> Vec<&'a Value> {
    v.iter().filter(|e| e["type"] == t).collect()
}

#[test]
fn envoy_preset_on_libevent_program() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = build_envoy_like(dir.path());
    let (srv, port) = start_envoy_like(&bin);
    let k = 5;
    let mut client_ports = Vec::new();
    let lines = trace_json(srv.0.id(), &["--preset", "envoy"], || {
        for _ in 0..k {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            client_ports.push(s.local_addr().unwrap().port());
            // Let the server accept and sleep again, so the request is its own chain.
            std::thread::sleep(Duration::from_millis(30));
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            std::thread::sleep(Duration::from_millis(30));
        }
    });
    assert_eq!(lines[0]["handlers"].as_array().map(|a| a.len()), Some(1), "one symbol for the preset: {}", lines[0]["handlers"]);
    assert!(lines[0]["handlers"][0]["name"].as_str().unwrap().contains("FileEventImpl::assignEvents"));
    let handlers = of_type(&lines, "handler");
    let accepts: Vec<&Value> = of_type(&lines, "accept").into_iter().filter(|a| a["ret"].as_i64().unwrap() >= 0).collect();
    assert_eq!(accepts.len(), k);
    let lfd = accepts[0]["listen_fd"].as_i64().unwrap();
    // One handler call on the listen fd with EV_READ per connection.
    let on_listen: Vec<_> = handlers.iter().filter(|h| h["fd"] == lfd).collect();
    assert_eq!(on_listen.len(), k, "{on_listen:?}");
    assert!(on_listen.iter().all(|h| h["flags"] == "EV_READ"), "{on_listen:?}");
    for a in &accepts {
        let fd = a["ret"].as_i64().unwrap();
        let port = a["peer"]["remote"].as_str().unwrap().rsplit(':').next().unwrap().parse::<u16>().unwrap();
        assert!(client_ports.contains(&port));
        // The request: a handler call with that fd and EV_READ|EV_ET, in the
        // chain of the socket event and of the epoll_wait return listing it.
        let h = handlers
            .iter()
            .find(|h| h["fd"] == fd && h["ts"].as_u64() > a["ts"].as_u64() && h["flags"] == "EV_READ|EV_ET")
            .unwrap_or_else(|| panic!("no EV_READ|EV_ET handler for fd {fd}: {handlers:?}"));
        let chain = &h["chain"];
        assert!(chain.is_u64(), "handler in a chain: {h}");
        let sr = of_type(&lines, "sock_ready")
            .into_iter()
            .find(|s| &s["chain"] == chain)
            .unwrap_or_else(|| panic!("socket event in chain {chain}"));
        assert_eq!(sr["sock"]["remote"].as_str().unwrap().rsplit(':').next().unwrap().parse::<u16>().unwrap(), port);
        let ep = of_type(&lines, "epoll_exit")
            .into_iter()
            .find(|e| &e["chain"] == chain)
            .unwrap_or_else(|| panic!("epoll_exit in chain {chain}"));
        assert!(ep["events"].as_array().unwrap().iter().any(|e| e["fd"] == fd), "epoll_wait returned fd {fd}: {ep}");
    }
}

/// redis-server on a free loopback port, its files in `dir`, accepting.
fn start_redis(dir: &Path) -> (Proc, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    let srv = Proc(child);
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "redis did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    (srv, port)
}

/// One PING and its reply on `s`.
fn ping(s: &mut TcpStream) {
    s.write_all(b"PING\r\n").unwrap();
    let mut b = [0u8; 7];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"+PONG\r\n");
}

#[test]
fn redis_preset() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (srv, port) = start_redis(dir.path());
    let (k, cmds) = (4, 3);
    // The preset's acceptTcpHandler given again by hand: probed once, reported once per call.
    let again = ["--preset", "redis", "--handler", "exe:acceptTcpHandler:fd=arg1:events=arg3/ae"];
    let lines = trace_json(srv.0.id(), &again, || {
        for _ in 0..k {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            for _ in 0..cmds {
                ping(&mut s);
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    });
    let handlers = of_type(&lines, "handler");
    let accepts: Vec<&Value> = of_type(&lines, "accept").into_iter().filter(|a| a["ret"].as_i64().unwrap() >= 0).collect();
    assert_eq!(accepts.len(), k);
    let lfd = accepts[0]["listen_fd"].as_i64().unwrap();
    let ath: Vec<_> = handlers.iter().filter(|h| h["name"] == "acceptTcpHandler").collect();
    assert_eq!(ath.len(), k, "one acceptTcpHandler per connection: {ath:?}");
    assert!(ath.iter().all(|h| h["fd"] == lfd && h["flags"] == "AE_READABLE"), "listening fd {lfd} and AE_READABLE: {ath:?}");
    // Each handler call sits in a chain, before the accept it leads to.
    for h in &ath {
        assert!(h["chain"].is_u64(), "{h}");
        assert!(
            accepts.iter().any(|a| a["chain"] == h["chain"] && a["ts"].as_u64() > h["ts"].as_u64()),
            "accept after acceptTcpHandler in chain {}",
            h["chain"]
        );
    }
    let rq = handlers.iter().filter(|h| h["name"] == "readQueryFromClient").count();
    assert!(rq >= k * cmds, "readQueryFromClient for each command: {rq} < {}", k * cmds);
}

/// Presets resolve in each target's own program: one trace of a libevent
/// server linked with libevent_core alone and of redis, with both presets.
#[test]
fn presets_for_two_servers_one_on_libevent_core() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = build_envoy_like_with(dir.path(), "-levent_core");
    let (ev, ev_port) = start_envoy_like(&bin);
    let (rd, rd_port) = start_redis(dir.path());
    let (ev_pid, rd_pid) = (ev.0.id(), rd.0.id());
    let k = 3;
    let lines = trace_json_pids(&[ev_pid, rd_pid], &["--preset", "libevent", "--preset", "redis"], || {
        for _ in 0..k {
            let mut s = TcpStream::connect(("127.0.0.1", ev_port)).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            let mut s = TcpStream::connect(("127.0.0.1", rd_port)).unwrap();
            ping(&mut s);
            std::thread::sleep(Duration::from_millis(30));
        }
    });
    let probed = lines[0]["handlers"].as_array().expect("start line's handlers");
    let path_of = |name: &str| probed.iter().find(|h| h["name"] == name).map(|h| h["path"].as_str().unwrap().to_string());
    let lib = path_of("event_active_nolock_").unwrap_or_else(|| panic!("libevent preset not probed: {probed:?}"));
    assert!(lib.contains("libevent_core-"), "the libevent_core the program maps: {lib}");
    assert!(path_of("acceptTcpHandler").is_some_and(|p| p.contains(&format!("/proc/{rd_pid}/"))), "redis's own exe: {probed:?}");
    let calls =
        |name: &str, pid: u32| of_type(&lines, "handler").into_iter().filter(|h| h["name"] == name && h["task"]["pid"] == pid).count();
    // The listener's and each connection's EV_READ, at least.
    assert!(calls("event_active_nolock_", ev_pid) >= 2 * k, "libevent activations in the libevent_core server");
    assert_eq!(calls("acceptTcpHandler", rd_pid), k, "one acceptTcpHandler per redis connection");
    assert!(calls("readQueryFromClient", rd_pid) >= k);
    assert_eq!(calls("event_active_nolock_", rd_pid) + calls("acceptTcpHandler", ev_pid), 0, "each server its own handlers");
}

/// Two processes of one program, the second given its own copy of libevent
/// (LD_LIBRARY_PATH): the preset probes both copies, and each process's
/// calls are recorded.
#[test]
fn a_preset_probes_each_copy_of_a_library() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = build_envoy_like(dir.path());
    let (a, a_port) = start_envoy_like(&bin);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", a.0.id())).unwrap();
    let lib = maps.split_whitespace().find(|w| w.contains("/libevent-2")).expect("envoy_like maps libevent").to_string();
    let copy_dir = dir.path().join("lib");
    std::fs::create_dir(&copy_dir).unwrap();
    // The soname the program asks for, not the versioned file name the maps show.
    let soname = "libevent-2.1.so.7";
    std::fs::copy(&lib, copy_dir.join(soname)).unwrap();
    let mut cmd = Command::new(&bin);
    cmd.env("LD_LIBRARY_PATH", &copy_dir);
    let (b_proc, b_port) = start_envoy_like_cmd(cmd);
    let (a_pid, b_pid) = (a.0.id(), b_proc.0.id());
    assert!(std::fs::read_to_string(format!("/proc/{b_pid}/maps")).unwrap().contains(copy_dir.to_str().unwrap()), "the copy is mapped");
    let lines = trace_json_pids(&[a_pid, b_pid], &["--preset", "libevent"], || {
        for port in [a_port, b_port] {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        }
    });
    let probed: Vec<&str> = lines[0]["handlers"].as_array().unwrap().iter().map(|h| h["path"].as_str().unwrap()).collect();
    assert_eq!(probed.len(), 2, "one probe per copy of libevent: {probed:?}");
    assert!(probed.iter().any(|p| p.contains(copy_dir.to_str().unwrap())), "{probed:?}");
    for pid in [a_pid, b_pid] {
        let n = of_type(&lines, "handler")
            .into_iter()
            .filter(|h| h["task"]["pid"] == pid && h["flags"].as_str().is_some_and(|f| f.contains("EV_READ")))
            .count();
        assert!(n >= 2, "pid {pid}: the listener's and the connection's EV_READ, got {n}");
    }
}

fn usage_error(args: &[&str], needle: &str) {
    let o = nd().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
}

#[test]
fn handler_errors() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = build_envoy_like(dir.path());
    let stripped = dir.path().join("envoy_stripped");
    std::fs::copy(&bin, &stripped).unwrap();
    assert!(Command::new("strip").arg("--strip-all").arg(&stripped).status().unwrap().success());
    let (srv, _) = start_envoy_like(&stripped);
    let pid = srv.0.id().to_string();
    // Stripped: the preset finds nothing, and says what it searched.
    usage_error(&["trace", "-p", &pid, "--preset", "envoy"], "function symbols searched");
    usage_error(
        &["trace", "-p", &pid, "--preset", "redis"],
        &format!("--preset redis (looked up in pid {pid}): --handler exe:acceptTcpHandler"),
    );
    usage_error(
        &["trace", "-c", "nd_not_yet", "--wait", "--preset", "redis"],
        "--preset redis: a preset is looked up in a running target's program",
    );
    drop(srv);
    let (srv, _) = start_envoy_like(&bin);
    let pid = srv.0.id().to_string();
    // A glob without a match suggests the closest names.
    usage_error(
        &["trace", "-p", &pid, "--handler", "exe:*FileEventImpl::assignEventz*"],
        "closest: Envoy::Event::FileEventImpl::assignEvents",
    );
    usage_error(&["trace", "-p", &pid, "--handler", "/no/such/binary:main"], "binary not found");
    usage_error(&["trace", "-p", &pid, "--handler", "/etc/passwd:main"], "is not an ELF file");
    usage_error(&["trace", "-p", &pid, "--handler", "exe:main["], "unclosed '['");
    usage_error(&["trace", "-p", &pid, "--handler", "exe:main:fd=arg7"], "arg0..arg5");
    usage_error(&["trace", "-p", &pid, "--preset", "apache"], "invalid value");
}

#[test]
fn memcached_preset_dispatcher_to_worker() {
    if !require_root() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("memcached")
        .args(["-p", &port.to_string(), "-U", "0", "-l", "127.0.0.1", "-t", "2", "-u", "nobody"])
        .stdout(Stdio::null())
        .spawn()
        .expect("memcached (apt-get install memcached)");
    let srv = Proc(child);
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "memcached did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let k = 4;
    let pid = srv.0.id();
    let lines = trace_json(pid, &["--preset", "memcached"], || {
        for _ in 0..k {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            s.write_all(b"version\r\n").unwrap();
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"VERSION ");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert!(
        lines[0]["handlers"][0]["path"].as_str().unwrap().contains("libevent"),
        "resolved in the target's maps: {}",
        lines[0]["handlers"]
    );
    // The dispatcher (main thread) accepts...
    let accepts: Vec<&Value> = of_type(&lines, "accept").into_iter().filter(|a| a["ret"].as_i64().unwrap() >= 0).collect();
    assert_eq!(accepts.len(), k);
    assert!(accepts.iter().all(|a| a["task"]["tid"] == pid), "accepted by the dispatcher thread");
    // ...then wakes a worker through its eventfd (libevent's notify pipe).
    let handoffs = of_type(&lines, "wake")
        .into_iter()
        .filter(|w| w["cause"] == "eventfd" || w["cause"] == "pipe")
        .filter(|w| w["task"]["tid"] == pid && w["target"]["tid"] != pid)
        .count();
    assert!(handoffs >= k, "dispatcher -> worker hand-offs: {handoffs}");
    let handlers = of_type(&lines, "handler");
    assert!(
        handlers.iter().filter(|h| h["flags"].as_str().unwrap_or("").contains("EV_READ")).count() >= 2 * k,
        "libevent activations with EV_READ: {handlers:?}"
    );
    assert!(handlers.iter().all(|h| h["name"] == "event_active_nolock_"));
}

#[test]
fn nginx_preset() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;\nevents {{ worker_connections 64; }}\nhttp {{ access_log off; server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let nginx = if Path::new("/usr/sbin/nginx").exists() { "/usr/sbin/nginx" } else { "nginx" };
    let child = Command::new(nginx).arg("-c").arg(&conf).arg("-p").arg(dir.path()).spawn().expect("nginx (apt-get install nginx)");
    let srv = Proc(child);
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "nginx did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let k = 4;
    let lines = trace_json(srv.0.id(), &["--preset", "nginx"], || {
        for _ in 0..k {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            assert!(r.contains("ok"));
            std::thread::sleep(Duration::from_millis(30));
        }
    });
    let handlers = of_type(&lines, "handler");
    let count = |n: &str| handlers.iter().filter(|h| h["name"] == n).count();
    assert_eq!(count("ngx_event_accept"), k, "{handlers:?}");
    assert_eq!(count("ngx_http_process_request"), k, "{handlers:?}");
    assert!(handlers.iter().filter(|h| h["name"] == "ngx_event_accept").all(|h| h["chain"].is_u64()), "accept handler joined to its chain");
}
