//! JSON Lines: one object per event, joined to its chain. Schema: docs/json.md.

use serde_json::{Map, Value};

use crate::analysis::Annotation;
use crate::events::{epoll_flags, push_epoll_flags, Cause, Event, Kind, SockInfo, Syscall, Task, WakerContext};

/// Write one event as a JSON line into `buf` (cleared first): the event as
/// serialized (sockets carry `state_name`, epoll entries `flags` and `fd`),
/// with `chain` and, by type, `fds` (sock_ready), `flags`
/// (epoll_ctl) and `waker_stack` (wake, with --stacks). Serializes straight
/// into the buffer: no intermediate JSON tree, this runs for every event.
pub fn write_event(buf: &mut Vec<u8>, ev: &Event, ann: &Annotation, waker_stack: Option<&[String]>) -> serde_json::Result<()> {
    buf.clear();
    if !write_hot(buf, ev)? {
        serde_json::to_writer(&mut *buf, ev)?;
    }
    // Reopen the object's end and add the chain and the extras after the
    // event's own fields (appending: no copy of what is already written).
    buf.pop();
    buf.extend_from_slice(b",\"chain\":");
    match ann.chain {
        Some(c) => num(buf, c),
        None => buf.extend_from_slice(b"null"),
    }
    match &ev.kind {
        Kind::SockReady { .. } => {
            buf.extend_from_slice(b",\"fds\":[");
            for (i, (p, f)) in ann.fds.iter().enumerate() {
                kv(buf, if i > 0 { b",{\"pid\":" } else { b"{\"pid\":" }, *p);
                kv(buf, b",\"fd\":", *f);
                buf.push(b'}');
            }
            buf.push(b']');
        }
        Kind::EpollCtl { events, .. } | Kind::EpollReg { events, .. } => {
            buf.extend_from_slice(b",\"flags\":");
            serde_json::to_writer(&mut *buf, &epoll_flags(*events))?;
        }
        Kind::Wake { .. } => {
            if ann.handoff {
                buf.extend_from_slice(b",\"handoff\":true");
            }
            if let Some(st) = waker_stack {
                buf.extend_from_slice(b",\"waker_stack\":");
                serde_json::to_writer(&mut *buf, st)?;
            }
        }
        _ => {}
    }
    buf.extend_from_slice(b"}\n");
    escape_invisible(buf);
    Ok(())
}

/// Shape a decoded event for its JSON line, in place: epoll entries get the
/// fds the correlator resolved, and the raw waker stack (not part of the
/// line) is taken out and returned, for `--stacks` to symbolize.
pub fn shape(ev: &mut Event, ann: &Annotation) -> Vec<u64> {
    match &mut ev.kind {
        Kind::Wake { stack, .. } => std::mem::take(stack),
        Kind::EpollExit { events, .. } => {
            for (e, fd) in events.iter_mut().zip(ann.ep_fds.iter()) {
                e.fd = *fd;
            }
            Vec::new()
        }
        _ => Vec::new(),
    }
}

/// JSON text with every [`invisible`](super::invisible) character written
/// as a `\uXXXX` escape. serde_json escapes only C0 controls, `"` and `\`:
/// DEL, C1 controls (U+009B starts an escape sequence) and bidi overrides
/// would reach a terminal that shows the stream. Such characters can only be
/// inside strings, where an escape reads back as the same character.
pub fn escape_invisible(buf: &mut Vec<u8>) {
    // Each is DEL or starts with a byte above it: one pass with no early
    // exit (it vectorizes) clears the usual, all-ASCII line.
    if !buf.iter().fold(false, |seen, &b| seen | (b >= 0x7f)) {
        return;
    }
    // A raw newline is never in a string (serde escapes it): it ends a line.
    let escape = |c: char| c != '\n' && super::invisible(c);
    let Ok(s) = std::str::from_utf8(buf) else { return };
    if !s.chars().any(escape) {
        return;
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if escape(c) {
            // Above U+FFFF (tag characters) as a surrogate pair: JSON's \u takes four digits.
            for unit in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{:04x}", unit));
            }
        } else {
            out.push(c);
        }
    }
    *buf = out.into_bytes();
}

/// JSON text (one line or several) with invisible characters escaped.
pub fn escaped(text: String) -> String {
    let mut b = text.into_bytes();
    escape_invisible(&mut b);
    // Valid UTF-8 in, valid UTF-8 out.
    String::from_utf8(b).unwrap_or_default()
}

/// A whole JSON line (start, lost, summary), with invisible characters escaped.
pub fn line(v: &Value) -> String {
    escaped(v.to_string())
}

/// `key"0x..."`, as `{:x}` writes it, without the formatting machinery (one per wake-up line).
fn hex_kv(buf: &mut Vec<u8>, key: &[u8], v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    buf.extend_from_slice(key);
    buf.extend_from_slice(b"\"0x");
    let n = (64 - (v | 1).leading_zeros()).div_ceil(4);
    for i in (0..n).rev() {
        buf.push(DIGITS[(v >> (i * 4)) as usize & 15]);
    }
    buf.push(b'"');
}

fn num(buf: &mut Vec<u8>, v: impl itoa::Integer) {
    buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// `key` (with its comma, quotes and colon) and a number.
fn kv(buf: &mut Vec<u8>, key: &[u8], v: impl itoa::Integer) {
    buf.extend_from_slice(key);
    num(buf, v);
}

fn string(buf: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    serde_json::to_writer(&mut *buf, s)
}

fn syscall(buf: &mut Vec<u8>, s: Syscall) {
    buf.extend_from_slice(match s {
        Syscall::EpollWait => b"\"epoll_wait\"".as_slice(),
        Syscall::EpollPwait => b"\"epoll_pwait\"",
        Syscall::EpollPwait2 => b"\"epoll_pwait2\"",
        Syscall::Accept => b"\"accept\"",
        Syscall::Accept4 => b"\"accept4\"",
        Syscall::Unknown => b"\"unknown\"",
    });
}

/// The four kinds that make up nearly every record of a busy server
/// (epoll enter/exit, switch in/out), written by hand: the generic serde path
/// (a flattened, internally tagged enum) cost more than correlating them.
/// Byte for byte what serde writes (tested below). Returns false for the
/// other kinds, left to serde.
fn write_hot(buf: &mut Vec<u8>, ev: &Event) -> serde_json::Result<bool> {
    let head = |buf: &mut Vec<u8>, ty: &str| -> serde_json::Result<()> {
        kv(buf, b"{\"ts\":", ev.ts);
        kv(buf, b",\"cpu\":", ev.cpu);
        task(buf, b",\"task\":", &ev.task)?;
        buf.extend_from_slice(b",\"type\":\"");
        buf.extend_from_slice(ty.as_bytes());
        buf.push(b'"');
        Ok(())
    };
    match &ev.kind {
        Kind::EpollEnter { epfd, maxevents, syscall: sc } => {
            head(buf, "epoll_enter")?;
            kv(buf, b",\"epfd\":", *epfd);
            kv(buf, b",\"maxevents\":", *maxevents);
            buf.extend_from_slice(b",\"syscall\":");
            syscall(buf, *sc);
        }
        Kind::EpollExit { enter_ts, epfd, ret, syscall: sc, events } => {
            head(buf, "epoll_exit")?;
            kv(buf, b",\"enter_ts\":", *enter_ts);
            kv(buf, b",\"epfd\":", *epfd);
            kv(buf, b",\"ret\":", *ret);
            buf.extend_from_slice(b",\"syscall\":");
            syscall(buf, *sc);
            buf.extend_from_slice(b",\"events\":[");
            for (i, e) in events.iter().enumerate() {
                kv(buf, if i > 0 { b",{\"events\":" } else { b"{\"events\":" }, e.events);
                // Flag names are plain ASCII: no escaping needed.
                buf.extend_from_slice(b",\"flags\":\"");
                push_epoll_flags(buf, e.events);
                kv(buf, b"\",\"data\":", e.data);
                match e.fd {
                    Some(fd) => kv(buf, b",\"fd\":", fd),
                    None => buf.extend_from_slice(b",\"fd\":null"),
                }
                buf.push(b'}');
            }
            buf.push(b']');
        }
        Kind::SwitchIn { runnable_ts, prev_cpu, after_preempt, prev_tid, prev_comm } => {
            head(buf, "switch_in")?;
            kv(buf, b",\"runnable_ts\":", *runnable_ts);
            kv(buf, b",\"prev_cpu\":", *prev_cpu);
            buf.extend_from_slice(if *after_preempt { b",\"after_preempt\":true".as_slice() } else { b",\"after_preempt\":false" });
            kv(buf, b",\"prev_tid\":", *prev_tid);
            buf.extend_from_slice(b",\"prev_comm\":");
            string(buf, prev_comm)?;
        }
        Kind::SwitchOut { involuntary, woken, state, next_tid, next_comm } => {
            head(buf, "switch_out")?;
            buf.extend_from_slice(if *involuntary { b",\"involuntary\":true".as_slice() } else { b",\"involuntary\":false" });
            if *woken {
                buf.extend_from_slice(b",\"woken\":true");
            }
            kv(buf, b",\"state\":", *state);
            kv(buf, b",\"next_tid\":", *next_tid);
            buf.extend_from_slice(b",\"next_comm\":");
            string(buf, next_comm)?;
        }
        Kind::Wake {
            target,
            sock_seq,
            stack,
            stack_err,
            target_cpu,
            waker_is_kthread,
            target_on_rq,
            cause,
            context,
            via_epoll,
            stack_reused,
            stack_sig,
        } if stack.is_empty() => {
            head(buf, "wake")?;
            task(buf, b",\"target\":", target)?;
            kv(buf, b",\"sock_seq\":", *sock_seq);
            if *stack_err != 0 {
                kv(buf, b",\"stack_err\":", *stack_err);
            }
            kv(buf, b",\"target_cpu\":", *target_cpu);
            boolean(buf, b",\"waker_is_kthread\":", *waker_is_kthread);
            boolean(buf, b",\"target_on_rq\":", *target_on_rq);
            buf.extend_from_slice(b",\"cause\":");
            name_or_null(buf, cause.map(Cause::key));
            buf.extend_from_slice(b",\"context\":");
            name_or_null(buf, context.map(WakerContext::key));
            boolean(buf, b",\"via_epoll\":", *via_epoll);
            if *stack_reused {
                buf.extend_from_slice(b",\"stack_reused\":true");
            }
            // Hex like `sk`: a no-syscall waker's signature exceeds 2^53.
            hex_kv(buf, b",\"stack_sig\":", *stack_sig);
        }
        Kind::SockReady { sock, seq, hook, new_state, packet: None } => {
            head(buf, "sock_ready")?;
            buf.extend_from_slice(b",\"sock\":");
            sock_info(buf, sock);
            kv(buf, b",\"seq\":", *seq);
            buf.extend_from_slice(b",\"hook\":\"");
            buf.extend_from_slice(hook.key().as_bytes());
            buf.push(b'"');
            if let Some(n) = new_state {
                kv(buf, b",\"new_state\":", *n);
            }
        }
        _ => return Ok(false),
    }
    buf.push(b'}');
    Ok(true)
}

fn task(buf: &mut Vec<u8>, key: &[u8], t: &Task) -> serde_json::Result<()> {
    buf.extend_from_slice(key);
    kv(buf, b"{\"pid\":", t.pid);
    kv(buf, b",\"tid\":", t.tid);
    buf.extend_from_slice(b",\"comm\":");
    string(buf, &t.comm)?;
    buf.push(b'}');
    Ok(())
}

fn boolean(buf: &mut Vec<u8>, key: &[u8], v: bool) {
    buf.extend_from_slice(key);
    buf.extend_from_slice(if v { b"true".as_slice() } else { b"false" });
}

fn name_or_null(buf: &mut Vec<u8>, name: Option<&str>) {
    match name {
        Some(n) => {
            buf.push(b'"');
            buf.extend_from_slice(n.as_bytes());
            buf.push(b'"');
        }
        None => buf.extend_from_slice(b"null"),
    }
}

/// A socket as its `Serialize` writes it (addresses cannot need escaping).
fn sock_info(buf: &mut Vec<u8>, s: &SockInfo) {
    use std::io::Write;
    hex_kv(buf, b"{\"sk\":", s.sk);
    kv(buf, b",\"ino\":", s.ino);
    kv(buf, b",\"netns\":", s.netns);
    kv(buf, b",\"family\":", s.family);
    kv(buf, b",\"protocol\":", s.protocol);
    // Writing to a Vec cannot fail.
    if s.ip() {
        let _ = write!(buf, ",\"local\":\"{}\",\"remote\":\"{}\"", s.local, s.remote);
    } else {
        buf.extend_from_slice(b",\"local\":null,\"remote\":null");
    }
    kv(buf, b",\"state\":", s.state);
    buf.extend_from_slice(b",\"state_name\":\"");
    buf.extend_from_slice(s.state_name().as_bytes());
    buf.extend_from_slice(b"\"}");
}

/// One event as a JSON value (tests, tools); the live path uses [`write_event`].
pub fn event(ev: &Event, ann: &Annotation, waker_stack: Option<&[String]>) -> Value {
    let mut buf = Vec::new();
    let mut ev = ev.clone();
    shape(&mut ev, ann);
    write_event(&mut buf, &ev, ann, waker_stack).ok();
    serde_json::from_slice(&buf).unwrap_or(Value::Null)
}

/// A non-event line (`start`, `summary`): `{"type": kind, ...fields}`.
pub fn record(kind: &str, fields: Value) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), Value::from(kind));
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ReadyHook;

    /// DEL, a C1 CSI, a bidi override and a zero-width space in a comm: the
    /// line carries none of them raw, and reads back as the same name.
    #[test]
    fn invisible_characters_are_escaped_and_read_back() {
        let comm = "a\u{7f}b\u{9b}2J\u{202e}c\u{200b}\u{e9}";
        let ev = Event { ts: 1, cpu: 0, task: Task { pid: 1, tid: 2, comm: comm.into() }, kind: Kind::FdMap { ino: 1, fd: 3 } };
        let mut buf = Vec::new();
        write_event(&mut buf, &ev, &Annotation::default(), None).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(!text.trim_end_matches('\n').chars().any(crate::output::invisible), "{text:?}");
        assert!(text.contains(r"a\u007fb\u009b2J\u202ec\u200b\u{e9}".replace(r"\u{e9}", "\u{e9}").as_str()), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(v["task"]["comm"], comm);
        let l = line(&serde_json::json!({"threads": [comm]}));
        assert!(!l.chars().any(crate::output::invisible), "{l:?}");
        assert_eq!(serde_json::from_str::<Value>(&l).unwrap()["threads"][0], comm);
        assert_eq!(crate::output::term_safe(comm), "a\\x7fb\\x9b2J\\u{202e}c\\u{200b}\u{e9}");
        // A tag character is above U+FFFF: a surrogate pair, not `\ue0041` (U+E004 and "1").
        let tag = "py\u{e0041}x";
        let l = line(&serde_json::json!({"n": tag}));
        assert!(l.contains(r"py\udb40\udc41x"), "{l}");
        assert_eq!(serde_json::from_str::<Value>(&l).unwrap()["n"], tag);
    }

    /// A unix socket has no IP addresses: null in JSON (as Serialize and the
    /// fast writer both write it), read back, and named by family in text.
    #[test]
    fn a_unix_socket_has_null_addresses() {
        let sock = SockInfo {
            sk: 0xff,
            ino: 9,
            netns: 1,
            family: 1,
            protocol: 0,
            local: "0.0.0.0:0".parse().unwrap(),
            remote: "0.0.0.0:0".parse().unwrap(),
            state: 1,
        };
        let mut buf = Vec::new();
        sock_info(&mut buf, &sock);
        let fast: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(fast, serde_json::to_value(&sock).unwrap());
        assert!(fast["local"].is_null() && fast["remote"].is_null(), "{fast}");
        assert_eq!(serde_json::from_value::<SockInfo>(fast).unwrap(), sock);
        assert_eq!(
            (sock.describe(), sock.local_text(), sock.remote_text()),
            ("unix ESTABLISHED".into(), "unix ino 9".into(), "unix".into())
        );
        let tcp = SockInfo { family: 2, local: "127.0.0.1:80".parse().unwrap(), ..sock };
        assert_eq!(tcp.describe(), "ESTABLISHED 127.0.0.1:80 <- 0.0.0.0:0");
    }

    #[test]
    fn sock_ready_gets_state_name_fds_and_escapes() {
        let ev = Event {
            ts: 5,
            cpu: 1,
            task: Task { pid: 1, tid: 1, comm: "<img src=x onerror=alert(1)>\u{1b}".into() },
            kind: Kind::SockReady {
                sock: Box::new(SockInfo {
                    sk: 0xff,
                    ino: 9,
                    netns: 1,
                    family: 2,
                    protocol: 6,
                    local: "127.0.0.1:80".parse().unwrap(),
                    remote: "0.0.0.0:0".parse().unwrap(),
                    state: 10,
                }),
                seq: 3,
                hook: crate::events::ReadyHook::SkDataReady,
                new_state: None,
                packet: None,
            },
        };
        let ann = Annotation { chain: Some(4), fds: vec![(1, 3), (2, 3)], ..Default::default() };
        let v = event(&ev, &ann, None);
        assert_eq!(v["chain"], 4);
        assert_eq!(v["sock"]["state_name"], "LISTEN");
        assert_eq!(v["sock"]["sk"], "0xff");
        assert_eq!(v["fds"][1]["pid"], 2);
        let line = serde_json::to_string(&v).unwrap();
        assert!(line.contains("\\u001b"), "control chars are escaped: {line}");
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["task"]["comm"], "<img src=x onerror=alert(1)>\u{1b}");
    }

    #[test]
    fn hand_written_kinds_match_serde_byte_for_byte() {
        use crate::events::EpEvent;
        let comm = "a\"b\\c\u{1}\u{7f}é<x>";
        let task = Task { pid: 4_000_000_000, tid: 7, comm: comm.into() };
        let mut kinds = Vec::new();
        for sc in [Syscall::EpollWait, Syscall::EpollPwait, Syscall::EpollPwait2, Syscall::Accept, Syscall::Accept4, Syscall::Unknown] {
            kinds.push(Kind::EpollEnter { epfd: -1, maxevents: i32::MAX, syscall: sc });
            kinds.push(Kind::EpollExit {
                enter_ts: u64::MAX,
                epfd: 9,
                ret: -4,
                syscall: sc,
                events: vec![
                    EpEvent { events: 0x8000_2001, data: u64::MAX, fd: Some(4) },
                    EpEvent { events: 0, data: 0, fd: None },
                    EpEvent { events: 0x0800_0000, data: 1, fd: Some(-1) },
                ],
            });
        }
        kinds.push(Kind::EpollExit { enter_ts: 0, epfd: 0, ret: 0, syscall: Syscall::EpollWait, events: vec![] });
        for b in [false, true] {
            kinds.push(Kind::SwitchIn { runnable_ts: 1, prev_cpu: 2, after_preempt: b, prev_tid: 0, prev_comm: comm.into() });
            kinds.push(Kind::SwitchOut { involuntary: b, woken: b, state: 0x402, next_tid: 3, next_comm: "".into() });
        }
        let causes = [
            Cause::SocketReadable,
            Cause::SocketWritable,
            Cause::SocketState,
            Cause::Timer,
            Cause::Eventfd,
            Cause::Pipe,
            Cause::Futex,
            Cause::Signal,
            Cause::EpollRelay,
            Cause::Other,
            Cause::Unknown,
        ];
        let contexts = [
            WakerContext::SoftirqInSyscall,
            WakerContext::SoftirqOnIrqExit,
            WakerContext::Ksoftirqd,
            WakerContext::IdleIrq,
            WakerContext::Irq,
            WakerContext::Process,
            WakerContext::KernelThread,
            WakerContext::Unknown,
        ];
        for (i, c) in causes.iter().enumerate() {
            kinds.push(Kind::Wake {
                target: Task { pid: 1, tid: u32::MAX, comm: comm.into() },
                sock_seq: i as u64,
                stack: vec![],
                stack_err: if i % 2 == 1 { -14 } else { 0 },
                target_cpu: 7,
                waker_is_kthread: i % 3 == 0,
                target_on_rq: i % 2 == 0,
                cause: (i != 2).then_some(*c),
                context: (i != 3).then_some(contexts[i % contexts.len()]),
                via_epoll: i % 4 == 0,
                stack_reused: i % 3 == 1,
                stack_sig: i as u64,
            });
        }
        let hooks = [ReadyHook::SkDataReady, ReadyHook::InetSockSetState, ReadyHook::EpollItem, ReadyHook::Accept, ReadyHook::IoWait];
        for (i, (hook, state)) in hooks.iter().zip([1u8, 10, 7, 255, 8]).enumerate() {
            let (local, remote) = if i % 2 == 0 {
                ("127.0.0.1:80".parse().unwrap(), "10.1.2.3:65535".parse().unwrap())
            } else {
                ("[::1]:8080".parse().unwrap(), "[fe80::1%2]:1".parse().unwrap())
            };
            kinds.push(Kind::SockReady {
                sock: SockInfo { sk: u64::MAX - i as u64, ino: 9, netns: 4026531840, family: 10, protocol: 6, local, remote, state }.into(),
                seq: 1 << 40,
                hook: *hook,
                new_state: (i % 2 == 1).then_some(-3 + i as i32),
                packet: None,
            });
        }
        for kind in kinds {
            let ev = Event { ts: u64::MAX - 1, cpu: 3, task: task.clone(), kind };
            let mut fast = Vec::new();
            assert!(write_hot(&mut fast, &ev).unwrap(), "{ev:?} has a hand-written path");
            let generic = serde_json::to_vec(&ev).unwrap();
            assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(generic).unwrap());
        }
    }
}
