//! JSON Lines: one object per event, joined to its chain. Schema: docs/json.md.

use serde_json::{json, Map, Value};

use crate::analysis::Annotation;
use crate::events::{epoll_flags, Event, Kind};

/// Write one event as a JSON line into `buf` (cleared first): the event as
/// serialized (sockets carry `state_name`, epoll entries `flags` and `fd`),
/// with `chain` and, by type, `fds` (sock_ready), `flags`
/// (epoll_ctl) and `waker_stack` (wake, with --stacks). Serializes straight
/// into the buffer: no intermediate JSON tree, this runs for every event.
pub fn write_event(buf: &mut Vec<u8>, ev: &Event, ann: &Annotation, waker_stack: Option<&[String]>) -> serde_json::Result<()> {
    buf.clear();
    serde_json::to_writer(&mut *buf, ev)?;
    // Reopen the object's end and add the chain and the extras after the
    // event's own fields (appending: no copy of what is already written).
    buf.pop();
    buf.extend_from_slice(b",\"chain\":");
    match ann.chain {
        Some(c) => buf.extend_from_slice(c.to_string().as_bytes()),
        None => buf.extend_from_slice(b"null"),
    }
    match &ev.kind {
        Kind::SockReady { .. } => {
            buf.extend_from_slice(b",\"fds\":");
            let fds: Vec<Value> = ann.fds.iter().map(|(p, f)| json!({"pid": p, "fd": f})).collect();
            serde_json::to_writer(&mut *buf, &fds)?;
        }
        Kind::EpollCtl { events, .. } => {
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
}
