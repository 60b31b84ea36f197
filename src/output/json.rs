//! JSON Lines: one object per event, joined to its chain. Schema: docs/json.md.

use serde_json::{json, Map, Value};

use crate::analysis::Annotation;
use crate::events::{epoll_flags, tcp_state_name, Event, Kind};

/// Add readable names next to raw numbers (TCP state, epoll flags).
fn decorate(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.contains_key("sk") {
                if let Some(s) = m.get("state").and_then(|s| s.as_i64()) {
                    m.insert("state_name".into(), Value::from(tcp_state_name(s as i32)));
                }
            }
            for (_, x) in m.iter_mut() {
                decorate(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(decorate),
        _ => {}
    }
}

/// One event as a JSON object; `waker_stack` is the symbolized stack when asked for.
pub fn event(ev: &Event, ann: &Annotation, waker_stack: Option<&[String]>) -> Value {
    let mut v = serde_json::to_value(ev).unwrap_or(Value::Null);
    decorate(&mut v);
    if let Value::Object(m) = &mut v {
        m.insert("chain".into(), ann.chain.map(Value::from).unwrap_or(Value::Null));
        match &ev.kind {
            Kind::SockReady { .. } => {
                m.insert("fds".into(), json!(ann.fds.iter().map(|(p, f)| json!({"pid": p, "fd": f})).collect::<Vec<_>>()));
            }
            Kind::EpollExit { events, .. } => {
                let evs: Vec<Value> = events
                    .iter()
                    .enumerate()
                    .map(|(i, e)| {
                        json!({
                            "events": e.events,
                            "flags": epoll_flags(e.events),
                            "data": e.data,
                            "fd": ann.ep_fds.get(i).copied().flatten(),
                        })
                    })
                    .collect();
                m.insert("events".into(), Value::Array(evs));
            }
            Kind::EpollCtl { events, .. } => {
                m.insert("flags".into(), Value::from(epoll_flags(*events)));
            }
            Kind::Wake { .. } => {
                if let Some(st) = waker_stack {
                    m.insert("waker_stack".into(), json!(st));
                }
                m.remove("stack");
            }
            _ => {}
        }
    }
    v
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
                sock: SockInfo { sk: 0xff, ino: 9, netns: 1, family: 2, protocol: 6, local: "127.0.0.1:80".parse().unwrap(), remote: "0.0.0.0:0".parse().unwrap(), state: 10 },
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
