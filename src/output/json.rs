//! JSON Lines: one object per event, joined to its chain. Schema: docs/json.md.

use serde_json::{json, Map, Value};

use crate::analysis::Annotation;
use crate::events::{epoll_flags, push_epoll_flags, Event, Kind, Syscall};

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
            buf.extend_from_slice(b",\"fds\":");
            let fds: Vec<Value> = ann.fds.iter().map(|(p, f)| json!({"pid": p, "fd": f})).collect();
            serde_json::to_writer(&mut *buf, &fds)?;
        }
        Kind::EpollCtl { events, .. } | Kind::EpollReg { events, .. } => {
            buf.extend_from_slice(b",\"flags\":");
            serde_json::to_writer(&mut *buf, &epoll_flags(*events))?;
        }
        Kind::Wake { .. } => {
            if let Some(st) = waker_stack {
                buf.extend_from_slice(b",\"waker_stack\":");
                serde_json::to_writer(&mut *buf, st)?;
            }
        }
        _ => {}
    }
    buf.extend_from_slice(b"}\n");
    Ok(())
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
        kv(buf, b",\"task\":{\"pid\":", ev.task.pid);
        kv(buf, b",\"tid\":", ev.task.tid);
        buf.extend_from_slice(b",\"comm\":");
        string(buf, &ev.task.comm)?;
        buf.extend_from_slice(b"},\"type\":\"");
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
        Kind::SwitchOut { involuntary, state, next_tid, next_comm } => {
            head(buf, "switch_out")?;
            buf.extend_from_slice(if *involuntary { b",\"involuntary\":true".as_slice() } else { b",\"involuntary\":false" });
            kv(buf, b",\"state\":", *state);
            kv(buf, b",\"next_tid\":", *next_tid);
            buf.extend_from_slice(b",\"next_comm\":");
            string(buf, next_comm)?;
        }
        _ => return Ok(false),
    }
    buf.push(b'}');
    Ok(true)
}

/// One event as a JSON value (tests, tools); the live path uses [`write_event`].
pub fn event(ev: &Event, ann: &Annotation, waker_stack: Option<&[String]>) -> Value {
    let mut buf = Vec::new();
    let mut ev = ev.clone();
    if let Kind::EpollExit { events, .. } = &mut ev.kind {
        for (e, fd) in events.iter_mut().zip(&ann.ep_fds) {
            e.fd = *fd;
        }
    }
    if let Kind::Wake { stack, .. } = &mut ev.kind {
        stack.clear();
    }
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
    use crate::events::{SockInfo, Task};

    #[test]
    fn sock_ready_gets_state_name_fds_and_escapes() {
        let ev = Event {
            ts: 5,
            cpu: 1,
            task: Task { pid: 1, tid: 1, comm: "<img src=x onerror=alert(1)>\u{1b}".into() },
            kind: Kind::SockReady {
                sock: SockInfo {
                    sk: 0xff,
                    ino: 9,
                    netns: 1,
                    family: 2,
                    protocol: 6,
                    local: "127.0.0.1:80".parse().unwrap(),
                    remote: "0.0.0.0:0".parse().unwrap(),
                    state: 10,
                },
                seq: 3,
                hook: crate::events::ReadyHook::SkDataReady,
                new_state: None,
                packet: None,
            },
        };
        let ann = Annotation { chain: Some(4), fds: vec![(1, 3), (2, 3)], ep_fds: vec![] };
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
            kinds.push(Kind::SwitchOut { involuntary: b, state: 0x402, next_tid: 3, next_comm: "".into() });
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
