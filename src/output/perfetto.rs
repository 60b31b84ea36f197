//! `--perfetto FILE`: the trace as Chrome trace-event JSON, which
//! ui.perfetto.dev and chrome://tracing open.
//!
//! Layout (docs/report.md):
//! * one track per traced thread (pid = its process, tid = the thread):
//!   `epoll_wait` slices for the syscall, and inside and around them the
//!   thread's state: `on CPU`, `blocked in epoll_wait` (or `blocked`),
//!   `run queue` (woken, waiting for a CPU), `preempted`; instant events for
//!   accepts, closes, new and exiting tasks;
//! * one track per CPU under the synthetic process `kernel: softirq / wakers`
//!   for the waker side: `socket ready` and `wake` slices (and the packet,
//!   with `--packets`), instants for socket events;
//! * flow arrows socket ready -> each wake-up it caused -> the woken thread's
//!   epoll_wait return (or, for a thread woken for nothing, its first moment
//!   on a CPU); with `--packets`, packet -> socket ready too.
//!
//! Events are buffered in a compact form and written when the trace ends, as
//! `FILE.partial` renamed to FILE once complete. Slices on one track nest
//! properly (state slices are split at the syscall's edges), and every flow
//! point lies strictly inside a slice of its track, so the arrows bind.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::analysis::{Annotation, Chain};
use crate::error::{Error, Result};
use crate::events::{epoll_flags, Event, Kind, SockInfo, Task};
use crate::output::{OnDrop, PartialFile};
use crate::symbolize::KernelSyms;
use crate::trace::{Observer, TraceEnd};

/// The synthetic process holding one waker track per CPU. Above any real
/// pid (PID_MAX_LIMIT is 2^22) and within i32.
pub const SOFTIRQ_PID: u32 = 1_000_000_000;
/// The waker track of CPU n has tid `SOFTIRQ_TID_BASE + n`.
pub const SOFTIRQ_TID_BASE: u32 = 1_000_000_001;
/// Name of the synthetic waker process.
pub const SOFTIRQ_PROCESS: &str = "kernel: softirq / wakers";

/// Length of a waker-side point slice (socket ready, wake), unless the next
/// point on that CPU comes sooner.
const POINT_NS: u64 = 1_000;

#[derive(Debug, Clone)]
enum TK {
    In {
        cpu: u32,
        /// The kernel's start of the wait that ended here (0: unknown).
        runnable_ts: u64,
    },
    Out {
        involuntary: bool,
        state: u32,
    },
    Woken,
    Enter {
        epfd: i32,
        syscall: &'static str,
    },
    Exit {
        epfd: i32,
        ret: i32,
        enter_ts: u64,
        syscall: &'static str,
        args: Value,
    },
    Gone,
    /// Any other event of the thread: it was running.
    Running,
}

#[derive(Debug, Clone)]
struct TEv {
    ts: u64,
    seq: u64,
    cpu: u32,
    k: TK,
}

#[derive(Debug, Default)]
struct ThreadRec {
    pid: u32,
    comm: String,
    evs: Vec<TEv>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum PointKey {
    Packet,
    Sock,
    Wake(u32),
}

#[derive(Debug)]
struct Point {
    cpu: u32,
    ts: u64,
    seq: u64,
    key: PointKey,
    name: String,
    args: Value,
}

#[derive(Debug, Clone, Copy)]
enum Track {
    Thread { pid: u32, tid: u32 },
    Cpu(u32),
}

impl Track {
    fn ids(self) -> (u32, u32) {
        match self {
            Track::Thread { pid, tid } => (pid, tid),
            Track::Cpu(c) => (SOFTIRQ_PID, SOFTIRQ_TID_BASE + c),
        }
    }
}

#[derive(Debug)]
struct Instant {
    track: Track,
    ts: u64,
    seq: u64,
    name: String,
    args: Value,
}

/// Where a flow arrow starts or ends.
#[derive(Debug, Clone, Copy)]
enum Anchor {
    /// A waker-side point slice.
    Point { cpu: u32, ts: u64, key: PointKey },
    /// On a thread's track just before `ts` (an epoll_wait return).
    Before { tid: u32, ts: u64 },
    /// On a thread's track just after `ts` (it got a CPU).
    After { tid: u32, ts: u64 },
}

#[derive(Debug)]
struct FlowRec {
    name: &'static str,
    from: Anchor,
    to: Anchor,
}

/// A complete ("X") slice in ns.
#[derive(Debug, Clone)]
struct Slice {
    pid: u32,
    tid: u32,
    ts: u64,
    dur: u64,
    name: String,
    args: Value,
}

/// Collects the trace and writes the Chrome trace-event JSON at the end.
#[derive(Debug)]
pub struct PerfettoWriter {
    path: PathBuf,
    /// FILE.partial, created before tracing starts (a bad path fails first).
    file: Option<PartialFile>,
    t0: Option<u64>,
    seq: u64,
    threads: HashMap<u32, ThreadRec>,
    points: Vec<Point>,
    instants: Vec<Instant>,
    flows: Vec<FlowRec>,
    min_ts: u64,
    max_ts: u64,
    /// pid -> its main thread's latest name, from records made in its own
    /// context (one with no track of its own too) and wake-ups of it: the
    /// process's name.
    main_names: HashMap<u32, String>,
}

fn sock_args(s: &SockInfo) -> Value {
    json!({
        "sk": format!("0x{:x}", s.sk),
        "ino": s.ino,
        "netns": s.netns,
        "local": s.ip().then(|| s.local.to_string()),
        "remote": s.ip().then(|| s.remote.to_string()),
        "state": s.state_name(),
    })
}

fn task_label(t: &Task) -> String {
    format!("{}[{}]", t.comm, t.tid)
}

impl PerfettoWriter {
    /// A writer for `path`; nothing is created before [`Observer::open`].
    pub fn new(path: &Path) -> Self {
        PerfettoWriter {
            path: path.to_path_buf(),
            file: None,
            t0: None,
            seq: 0,
            threads: HashMap::new(),
            points: Vec::new(),
            instants: Vec::new(),
            flows: Vec::new(),
            min_ts: u64::MAX,
            max_ts: 0,
            main_names: HashMap::new(),
        }
    }

    fn main_name(&mut self, t: &Task) {
        if t.tid == t.pid && !t.comm.is_empty() && self.main_names.get(&t.pid).is_none_or(|n| **n != *t.comm) {
            self.main_names.insert(t.pid, t.comm.to_string());
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn thread(&mut self, t: &Task) -> &mut ThreadRec {
        let r = self.threads.entry(t.tid).or_default();
        r.pid = t.pid;
        if !t.comm.is_empty() {
            r.comm = t.comm.to_string();
        }
        r
    }

    fn push_tev(&mut self, t: &Task, ts: u64, cpu: u32, k: TK) {
        let seq = self.next_seq();
        self.thread(t).evs.push(TEv { ts, seq, cpu, k });
    }

    fn instant(&mut self, track: Track, ts: u64, name: String, args: Value) {
        let seq = self.next_seq();
        self.instants.push(Instant { track, ts, seq, name, args });
    }

    /// Feed one event (what the pipeline ingests).
    pub fn add_event(&mut self, ev: &Event, ann: &Annotation) {
        self.min_ts = self.min_ts.min(ev.ts);
        self.max_ts = self.max_ts.max(ev.ts);
        let chain = ann.chain.map(Value::from).unwrap_or(Value::Null);
        let me = Track::Thread { pid: ev.task.pid, tid: ev.task.tid };
        if let Some(t) = ev.own_task() {
            self.main_name(t);
        }
        if let Kind::Wake { target, .. } = &ev.kind {
            self.main_name(target);
        }
        match &ev.kind {
            Kind::SockReady { sock, hook, new_state, packet, .. } => {
                let what = match new_state {
                    Some(s) => format!("socket state -> {}", crate::events::tcp_state_name(*s)),
                    None => "socket ready".to_string(),
                };
                let name = format!("{what}: {}", sock.describe());
                let mut args = sock_args(sock);
                args["hook"] = json!(hook);
                args["in_task"] = json!(task_label(&ev.task));
                args["chain"] = chain.clone();
                args["fds"] = json!(ann.fds.iter().map(|(p, f)| format!("fd {f} of pid {p}")).collect::<Vec<_>>());
                if let Some(p) = packet {
                    self.min_ts = self.min_ts.min(p.ts);
                    let seq = self.next_seq();
                    self.points.push(Point {
                        cpu: ev.cpu,
                        ts: p.ts,
                        seq,
                        key: PointKey::Packet,
                        name: format!("packet {} {}B", if p.dev.is_empty() { "?" } else { &p.dev }, p.len),
                        args: json!({"dev": p.dev, "len": p.len, "ifindex": p.ifindex, "chain": chain}),
                    });
                }
                let seq = self.next_seq();
                self.points.push(Point { cpu: ev.cpu, ts: ev.ts, seq, key: PointKey::Sock, name: name.clone(), args: args.clone() });
                self.instant(Track::Cpu(ev.cpu), ev.ts, what, args);
            }
            Kind::Wake { target, target_on_rq, cause, context, via_epoll, stack_err, .. } => {
                let cause = cause.map(|c| c.name()).unwrap_or("unknown");
                let ctx = context.map(|c| c.name()).unwrap_or("unknown context");
                let seq = self.next_seq();
                self.points.push(Point {
                    cpu: ev.cpu,
                    ts: ev.ts,
                    seq,
                    key: PointKey::Wake(target.tid),
                    name: format!("wake {}", task_label(target)),
                    args: json!({
                        "target": task_label(target),
                        "waker": task_label(&ev.task),
                        "cause": cause,
                        "context": ctx,
                        "via_epoll": via_epoll,
                        "target_on_rq": target_on_rq,
                        "stack_err": stack_err,
                        "chain": chain,
                    }),
                });
                if *target_on_rq {
                    // Still on a CPU: no blocked period ends here.
                    self.thread(target);
                } else {
                    self.push_tev(target, ev.ts, ev.cpu, TK::Woken);
                }
            }
            Kind::SwitchIn { runnable_ts, .. } => self.push_tev(&ev.task, ev.ts, ev.cpu, TK::In { cpu: ev.cpu, runnable_ts: *runnable_ts }),
            Kind::SwitchOut { involuntary, woken, state, .. } => {
                self.push_tev(&ev.task, ev.ts, ev.cpu, TK::Out { involuntary: *involuntary, state: *state });
                if *woken {
                    // A wake-up already in flight: it waits for a CPU from here.
                    self.push_tev(&ev.task, ev.ts, ev.cpu, TK::Woken);
                }
            }
            Kind::EpollEnter { epfd, syscall, .. } => {
                self.push_tev(&ev.task, ev.ts, ev.cpu, TK::Enter { epfd: *epfd, syscall: syscall.name() })
            }
            Kind::EpollExit { epfd, ret, syscall, enter_ts, events } => {
                let evs: Vec<Value> = events
                    .iter()
                    .enumerate()
                    .map(|(i, e)| {
                        json!({
                            "fd": ann.ep_fds.get(i).copied().flatten(),
                            "flags": epoll_flags(e.events),
                            "data": format!("0x{:x}", e.data),
                        })
                    })
                    .collect();
                let args = json!({"epfd": epfd, "ret": ret, "events": evs, "chain": chain});
                self.push_tev(
                    &ev.task,
                    ev.ts,
                    ev.cpu,
                    TK::Exit { epfd: *epfd, ret: *ret, enter_ts: *enter_ts, syscall: syscall.name(), args },
                );
            }
            Kind::Accept { listen_fd, ret, syscall, peer, listen, backlog, max_backlog, .. } => {
                self.push_tev(&ev.task, ev.ts, ev.cpu, TK::Running);
                let name = if *ret >= 0 {
                    format!("{}({listen_fd}) = fd {ret}", syscall.name())
                } else {
                    format!("{}({listen_fd}) = -{}", syscall.name(), crate::events::errno_name(-ret))
                };
                let args = json!({
                    "listen_fd": listen_fd,
                    "ret": ret,
                    "peer": peer.as_ref().map(|p| p.remote_text()),
                    "listen": listen.as_ref().map(|l| l.local_text()),
                    "backlog": backlog,
                    "max_backlog": max_backlog,
                    "chain": chain,
                });
                self.instant(me, ev.ts, name, args);
            }
            Kind::Close { fd, sock } => {
                self.push_tev(&ev.task, ev.ts, ev.cpu, TK::Running);
                let args = json!({"fd": fd, "sock": sock.as_deref().map(SockInfo::describe), "chain": chain});
                self.instant(me, ev.ts, format!("close({fd})"), args);
            }
            Kind::SockState { sock, old, new } => {
                let args = json!({"sock": sock.describe(), "old": crate::events::tcp_state_name(*old), "new": crate::events::tcp_state_name(*new), "in_task": task_label(&ev.task)});
                self.instant(
                    Track::Cpu(ev.cpu),
                    ev.ts,
                    format!("tcp {} -> {}", crate::events::tcp_state_name(*old), crate::events::tcp_state_name(*new)),
                    args,
                );
            }
            Kind::TaskNew { child, reason } => {
                if *reason == 3 && child.tid != ev.task.tid {
                    // A thread other than the leader ran exec: its old tid's track
                    // ends here (under its old name: the record has the new one),
                    // and it runs on under the process's pid, whose leader is gone.
                    let seq = self.next_seq();
                    self.threads.entry(ev.task.tid).or_default().evs.push(TEv { ts: ev.ts, seq, cpu: ev.cpu, k: TK::Gone });
                    self.push_tev(child, ev.ts, ev.cpu, TK::Gone);
                    self.push_tev(child, ev.ts, ev.cpu, TK::In { cpu: ev.cpu, runnable_ts: 0 });
                }
                self.thread(child);
                let what = if *reason == 3 { "exec" } else { "new target" };
                let name = format!("{what} {}", task_label(child));
                self.instant(me, ev.ts, name, json!({"reason": reason}));
            }
            Kind::TaskExit { group_dead } => {
                self.push_tev(&ev.task, ev.ts, ev.cpu, TK::Gone);
                self.instant(me, ev.ts, "exit".into(), json!({"group_dead": group_dead}));
            }
            Kind::EpollCtl { .. } => self.push_tev(&ev.task, ev.ts, ev.cpu, TK::Running),
            Kind::Handler { id, fd, name, flags, .. } => {
                self.push_tev(&ev.task, ev.ts, ev.cpu, TK::Running);
                let n = name.clone().unwrap_or_else(|| format!("handler #{id}"));
                self.instant(me, ev.ts, format!("handler {n}"), json!({"fd": fd, "flags": flags, "chain": chain}));
            }
            // Facts from /proc and receive-path ends carry no thread activity.
            _ => {}
        }
    }

    /// Feed one completed chain: its arrows.
    pub fn add_chain(&mut self, c: &Chain) {
        if let Some(s) = c.sock.as_ref().filter(|s| s.packet.is_some() && c.hops.iter().any(|h| h.wake.is_some())) {
            let p = s.packet.as_ref().map(|p| p.ts).unwrap_or(s.ts);
            self.flows.push(FlowRec {
                name: "packet -> socket",
                from: Anchor::Point { cpu: s.cpu, ts: p, key: PointKey::Packet },
                to: Anchor::Point { cpu: s.cpu, ts: s.ts, key: PointKey::Sock },
            });
        }
        for h in &c.hops {
            let Some(w) = &h.wake else { continue };
            let wake = Anchor::Point { cpu: w.cpu, ts: w.ts, key: PointKey::Wake(h.target.tid) };
            if let Some(s) = &c.sock {
                self.flows.push(FlowRec {
                    name: "socket -> wake-up",
                    from: Anchor::Point { cpu: s.cpu, ts: s.ts, key: PointKey::Sock },
                    to: wake,
                });
            }
            let end = match (&h.epoll, &h.on_cpu) {
                (Some(e), _) => Some(Anchor::Before { tid: h.target.tid, ts: e.ts }),
                (None, Some(o)) => Some(Anchor::After { tid: h.target.tid, ts: o.ts }),
                _ => None,
            };
            if let Some(to) = end {
                self.flows.push(FlowRec { name: "wake-up -> epoll_wait return", from: wake, to });
            }
        }
    }

    /// The trace-event objects, metadata first, then by time.
    pub fn build(&self) -> Vec<Value> {
        let t0 = self.t0.unwrap_or(self.min_ts).min(self.min_ts);
        let t_end = self.max_ts.max(t0);
        let us = |ns: u64| (ns.saturating_sub(t0)) as f64 / 1000.0;
        let us_f = |ns: f64| (ns - t0 as f64) / 1000.0;

        // Thread tracks.
        let mut slices: Vec<Slice> = Vec::new();
        // Per thread: its syscall slices and its state slices, each sorted
        // and disjoint, for finding the slice a flow point falls in.
        let mut track_slices: HashMap<u32, [Vec<(u64, u64)>; 2]> = HashMap::new();
        let mut tids: Vec<&u32> = self.threads.keys().collect();
        tids.sort_unstable();
        for tid in tids {
            let t = &self.threads[tid];
            let (mut spans, mut states) = thread_slices(*tid, t, t_end);
            let iv = |v: &[Slice]| {
                let mut x: Vec<(u64, u64)> = v.iter().map(|s| (s.ts, s.ts + s.dur)).collect();
                x.sort_unstable();
                x
            };
            track_slices.insert(*tid, [iv(&spans), iv(&states)]);
            slices.append(&mut spans);
            slices.append(&mut states);
        }

        // Waker points, per CPU: strictly increasing starts, so each point
        // slice is at least 2 ns long and ends before the next begins.
        let mut by_cpu: BTreeMap<u32, Vec<&Point>> = BTreeMap::new();
        for p in &self.points {
            by_cpu.entry(p.cpu).or_default().push(p);
        }
        let mut placed: HashMap<(u32, u64, PointKey), (u64, u64)> = HashMap::new();
        for (cpu, mut pts) in by_cpu {
            pts.sort_by_key(|p| (p.ts, p.seq));
            let mut starts: Vec<u64> = Vec::with_capacity(pts.len());
            for p in &pts {
                let s = match starts.last() {
                    Some(&prev) => p.ts.max(prev + 2),
                    None => p.ts,
                };
                starts.push(s);
            }
            for (i, p) in pts.iter().enumerate() {
                let s = starts[i];
                let dur = match starts.get(i + 1) {
                    Some(&n) => (n - s).min(POINT_NS),
                    None => POINT_NS,
                };
                placed.entry((cpu, p.ts, p.key)).or_insert((s, dur));
                let (pid, tid) = Track::Cpu(cpu).ids();
                slices.push(Slice { pid, tid, ts: s, dur, name: p.name.clone(), args: p.args.clone() });
            }
        }

        let mut out: Vec<(f64, u8, i64, Value)> = Vec::new();
        for s in &slices {
            out.push((
                us(s.ts),
                0,
                -(s.dur as i64),
                json!({"ph": "X", "name": s.name, "cat": "netdrift", "pid": s.pid, "tid": s.tid, "ts": us(s.ts), "dur": s.dur as f64 / 1000.0, "args": s.args}),
            ));
        }
        for i in &self.instants {
            let (pid, tid) = i.track.ids();
            let ts = match i.track {
                // On a CPU track, at the point slice's (possibly nudged) start.
                Track::Cpu(c) => placed.get(&(c, i.ts, PointKey::Sock)).map(|p| p.0).unwrap_or(i.ts),
                Track::Thread { .. } => i.ts,
            };
            out.push((
                us(ts),
                1,
                i.seq as i64,
                json!({"ph": "i", "s": "t", "name": i.name, "cat": "netdrift", "pid": pid, "tid": tid, "ts": us(ts), "args": i.args}),
            ));
        }

        // Flows: both ends must resolve to a point strictly inside a slice.
        let resolve = |a: Anchor| -> Option<(u32, u32, f64)> {
            match a {
                Anchor::Point { cpu, ts, key } => {
                    let (s, dur) = *placed.get(&(cpu, ts, key))?;
                    let (pid, tid) = Track::Cpu(cpu).ids();
                    Some((pid, tid, s as f64 + dur as f64 / 2.0))
                }
                Anchor::Before { tid, ts } | Anchor::After { tid, ts } => {
                    let p = match a {
                        Anchor::Before { .. } => ts as f64 - 0.5,
                        _ => ts as f64 + 0.5,
                    };
                    let lists = track_slices.get(&tid)?;
                    let inside = lists.iter().any(|v| {
                        // The last interval starting before p (they are disjoint).
                        let i = v.partition_point(|&(s, _)| (s as f64) < p);
                        i > 0 && p < v[i - 1].1 as f64
                    });
                    let pid = self.threads.get(&tid)?.pid;
                    inside.then_some((pid, tid, p))
                }
            }
        };
        let mut id: u64 = 0;
        for f in &self.flows {
            let (Some((fp, ft, fts)), Some((tp, tt, tts))) = (resolve(f.from), resolve(f.to)) else { continue };
            if tts < fts {
                continue;
            }
            id += 1;
            out.push((
                us_f(fts),
                2,
                id as i64,
                json!({"ph": "s", "id": id, "name": f.name, "cat": "netdrift.flow", "pid": fp, "tid": ft, "ts": us_f(fts)}),
            ));
            out.push((
                us_f(tts),
                3,
                id as i64,
                json!({"ph": "f", "bp": "e", "id": id, "name": f.name, "cat": "netdrift.flow", "pid": tp, "tid": tt, "ts": us_f(tts)}),
            ));
        }
        out.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));

        // Metadata: names for every track that has events.
        let mut meta: Vec<Value> = Vec::new();
        // A process is named after its main thread when seen (a track, or in
        // any record), else "pid N: its threads' names".
        let mut procs: BTreeMap<u32, String> = BTreeMap::new();
        let mut tids: Vec<(&u32, &ThreadRec)> = self.threads.iter().collect();
        tids.sort_by_key(|(t, _)| **t);
        let mut comms: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
        for (tid, t) in &tids {
            if **tid == t.pid {
                procs.insert(t.pid, format!("{} [{}]", t.comm, t.pid));
            }
            let v = comms.entry(t.pid).or_default();
            if !v.contains(&t.comm.as_str()) {
                v.push(&t.comm);
            }
        }
        for (pid, v) in comms {
            let main = self.main_names.get(&pid);
            procs.entry(pid).or_insert_with(|| {
                if let Some(m) = main {
                    return format!("{m} [{pid}]");
                }
                let more = if v.len() > 3 { ", ..." } else { "" };
                format!("pid {pid}: {}{more}", v.iter().take(3).copied().collect::<Vec<_>>().join(", "))
            });
        }
        // Threads only named by instants (a new child before any activity).
        for i in &self.instants {
            if let Track::Thread { pid, .. } = i.track {
                procs.entry(pid).or_insert_with(|| format!("pid {pid}"));
            }
        }
        for (pid, name) in &procs {
            meta.push(json!({"ph": "M", "name": "process_name", "pid": pid, "tid": pid, "args": {"name": name}}));
            meta.push(json!({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": pid, "args": {"sort_index": 0}}));
        }
        let mut named: std::collections::HashSet<(u32, u32)> = std::collections::HashSet::new();
        for (tid, t) in &tids {
            named.insert((t.pid, **tid));
            meta.push(json!({"ph": "M", "name": "thread_name", "pid": t.pid, "tid": tid, "args": {"name": t.comm}}));
        }
        let mut cpus: Vec<u32> = self.points.iter().map(|p| p.cpu).collect();
        cpus.extend(self.instants.iter().filter_map(|i| match i.track {
            Track::Cpu(c) => Some(c),
            _ => None,
        }));
        cpus.sort_unstable();
        cpus.dedup();
        if !cpus.is_empty() {
            meta.push(
                json!({"ph": "M", "name": "process_name", "pid": SOFTIRQ_PID, "tid": SOFTIRQ_PID, "args": {"name": SOFTIRQ_PROCESS}}),
            );
            meta.push(json!({"ph": "M", "name": "process_sort_index", "pid": SOFTIRQ_PID, "tid": SOFTIRQ_PID, "args": {"sort_index": 1}}));
        }
        for c in cpus {
            let (pid, tid) = Track::Cpu(c).ids();
            named.insert((pid, tid));
            meta.push(json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": format!("CPU{c} wakers (softirq, irq, tasks)")}}));
            meta.push(json!({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": c}}));
        }
        // Instants of a thread seen nowhere else (e.g. a task_new child): name it.
        for i in &self.instants {
            if let Track::Thread { pid, tid } = i.track {
                if named.insert((pid, tid)) {
                    meta.push(json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": format!("tid {tid}")}}));
                }
            }
        }
        meta.extend(out.into_iter().map(|x| x.3));
        meta
    }

    /// Write `{"traceEvents": [...], "displayTimeUnit": "ns"}` to `w`.
    pub fn write_to(&self, w: &mut dyn Write) -> std::io::Result<()> {
        w.write_all(b"{\"traceEvents\":[\n")?;
        for (i, v) in self.build().iter().enumerate() {
            if i > 0 {
                w.write_all(b",\n")?;
            }
            // Names come from the traced system: escaped as the JSON stream's are.
            let mut buf = serde_json::to_vec(v)?;
            super::json::escape_invisible(&mut buf);
            w.write_all(&buf)?;
        }
        w.write_all(b"\n],\"displayTimeUnit\":\"ns\",\"otherData\":{\"generator\":\"netdrift ")?;
        w.write_all(env!("CARGO_PKG_VERSION").as_bytes())?;
        w.write_all(b"\"}}\n")?;
        Ok(())
    }
}

/// One state or syscall slice of a thread, before splitting.
struct Seg {
    start: u64,
    end: u64,
    name: String,
    args: Value,
}

/// The slices of one thread's track: epoll_wait syscalls, and the thread's
/// state split at the syscalls' edges so slices nest. Each list is disjoint.
fn thread_slices(tid: u32, t: &ThreadRec, t_end: u64) -> (Vec<Slice>, Vec<Slice>) {
    let mut evs = t.evs.clone();
    evs.sort_by_key(|e| (e.ts, e.seq));
    let first_ts = evs.first().map(|e| e.ts).unwrap_or(0);
    let mut states: Vec<Seg> = Vec::new();
    let mut spans: Vec<Seg> = Vec::new();

    struct St {
        running: Option<(u64, u32)>,
        /// Off CPU since: (ts, preempted, in epoll_wait, task state).
        off: Option<(u64, bool, bool, u32)>,
        woken: Option<u64>,
        in_ep: Option<(u64, i32, &'static str)>,
    }
    let mut st = St { running: None, off: None, woken: None, in_ep: None };
    fn push(v: &mut Vec<Seg>, start: u64, end: u64, name: &str, args: Value) {
        if end > start {
            v.push(Seg { start, end, name: name.to_string(), args });
        }
    }
    // Close the off-CPU period at `ts` (the thread runs again). `runnable`:
    // when the switch-in says the wait began (0: not known). Later than the
    // wake-up seen, records between were lost (the thread ran and slept
    // again): the wait starts there, and the time before it is left out.
    fn close_off(st: &mut St, states: &mut Vec<Seg>, ts: u64, runnable: u64) {
        let later = |w: u64| (runnable > w && runnable <= ts).then_some(runnable);
        if let Some((s, preempted, in_ep, state)) = st.off.take() {
            if preempted {
                push(states, s, ts, "preempted", json!({"note": "involuntary switch-out: runnable, waiting for a CPU"}));
            } else {
                // A wake-up whose record was lost: the switch-in's time.
                let woken = st.woken.or_else(|| later(s));
                let name = if in_ep { "blocked in epoll_wait" } else { "blocked" };
                push(states, s, woken.unwrap_or(ts), name, json!({"task_state": state}));
                if let Some(w) = woken {
                    let w = later(w).unwrap_or(w);
                    push(states, w, ts, "run queue", json!({"wait_ns": ts.saturating_sub(w)}));
                }
            }
        } else if let Some(w) = st.woken {
            let w = later(w).unwrap_or(w);
            push(states, w, ts, "run queue", json!({"wait_ns": ts.saturating_sub(w)}));
        }
        st.woken = None;
    }
    let mut last_span_end = first_ts;
    for (i, e) in evs.iter().enumerate() {
        let runs_now = !matches!(e.k, TK::In { .. } | TK::Woken);
        if i == 0 && runs_now && !matches!(e.k, TK::Gone) {
            st.running = Some((e.ts, e.cpu));
        }
        // Any event but a switch-in or wake-up happens on a CPU: if the
        // switch-in was lost, the thread runs again from here.
        if runs_now && st.running.is_none() && !matches!(e.k, TK::Gone) && (st.off.is_some() || st.woken.is_some()) {
            close_off(&mut st, &mut states, e.ts, 0);
            st.running = Some((e.ts, e.cpu));
        }
        match &e.k {
            TK::In { cpu, runnable_ts } => {
                if let Some((s, c)) = st.running.take() {
                    push(&mut states, s, e.ts, "on CPU", json!({"cpu": c}));
                }
                close_off(&mut st, &mut states, e.ts, *runnable_ts);
                st.running = Some((e.ts, *cpu));
            }
            TK::Out { involuntary, state } => {
                if let Some((s, c)) = st.running.take() {
                    push(&mut states, s, e.ts, "on CPU", json!({"cpu": c}));
                }
                st.off = Some((e.ts, *involuntary, st.in_ep.is_some(), *state));
                st.woken = None;
            }
            TK::Woken => {
                if st.running.is_none() && st.woken.is_none() {
                    st.woken = Some(e.ts);
                }
            }
            TK::Enter { epfd, syscall } => {
                // An enter without its exit (lost): forget it.
                st.in_ep = Some((e.ts, *epfd, syscall));
            }
            TK::Exit { epfd, ret, enter_ts, syscall, args } => {
                let start = match st.in_ep.take() {
                    Some((s, _, _)) => s,
                    None if *enter_ts != 0 => *enter_ts,
                    None => first_ts,
                }
                .max(last_span_end)
                .max(first_ts);
                let name = format!("{syscall}({epfd}) = {ret}");
                push(&mut spans, start, e.ts, &name, args.clone());
                last_span_end = last_span_end.max(e.ts);
            }
            TK::Gone => {
                if let Some((s, c)) = st.running.take() {
                    push(&mut states, s, e.ts, "on CPU", json!({"cpu": c}));
                }
                st.off = None;
                st.woken = None;
                if let Some((s, epfd, sc)) = st.in_ep.take() {
                    push(&mut spans, s.max(last_span_end), e.ts, &format!("{sc}({epfd})"), json!({"note": "the thread exited"}));
                    last_span_end = last_span_end.max(e.ts);
                }
            }
            TK::Running => {}
        }
    }
    // The trace ended: close what is open.
    if let Some((s, c)) = st.running.take() {
        push(&mut states, s, t_end, "on CPU", json!({"cpu": c, "note": "until the end of the trace"}));
    }
    if st.off.is_some() || st.woken.is_some() {
        close_off(&mut st, &mut states, t_end, 0);
    }
    if let Some((s, epfd, sc)) = st.in_ep.take() {
        push(&mut spans, s.max(last_span_end), t_end, &format!("{sc}({epfd})"), json!({"note": "no return before the end of the trace"}));
    }

    // Split the states at every syscall edge: each piece is then inside one
    // syscall slice or outside all of them.
    let mut edges: Vec<u64> = spans.iter().flat_map(|s| [s.start, s.end]).collect();
    edges.sort_unstable();
    edges.dedup();
    let spans: Vec<Slice> =
        spans.into_iter().map(|s| Slice { pid: t.pid, tid, ts: s.start, dur: s.end - s.start, name: s.name, args: s.args }).collect();
    let mut out: Vec<Slice> = Vec::new();
    for s in states {
        let mut a = s.start;
        let from = edges.partition_point(|&c| c <= s.start);
        for &c in edges[from..].iter().take_while(|&&c| c < s.end) {
            out.push(Slice { pid: t.pid, tid, ts: a, dur: c - a, name: s.name.clone(), args: s.args.clone() });
            a = c;
        }
        out.push(Slice { pid: t.pid, tid, ts: a, dur: s.end - a, name: s.name, args: s.args });
    }
    (spans, out)
}

impl Observer for PerfettoWriter {
    fn open(&mut self) -> Result<()> {
        crate::trace::check_file_path(&self.path)?;
        self.file = Some(PartialFile::create(&self.path, OnDrop::Remove)?);
        Ok(())
    }

    fn start(&mut self, start: &Value) {
        self.t0 = start["t0_ns"].as_u64().filter(|&t| t > 0);
    }

    fn event(&mut self, ev: &Event, ann: &Annotation) {
        self.add_event(ev, ann);
    }

    fn chain(&mut self, c: &Chain) {
        self.add_chain(c);
    }

    fn finish(&mut self, _end: &TraceEnd<'_>, _syms: &mut KernelSyms) -> Result<()> {
        let mut f = match self.file.take() {
            Some(f) => f,
            None => PartialFile::create(&self.path, OnDrop::Remove)?,
        };
        self.write_to(&mut f).map_err(|e| Error::write(&self.path, e))?;
        f.commit()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::analysis::Correlator;
    use crate::events::{Cause, EpEvent, ReadyHook, Syscall};

    fn task(tid: u32, comm: &str) -> Task {
        Task { pid: 100, tid, comm: comm.into() }
    }

    fn ev(ts: u64, cpu: u32, t: &Task, kind: Kind) -> Event {
        Event { ts, cpu, task: t.clone(), kind }
    }

    /// A listen socket, 127.0.0.1:80.
    pub(crate) fn listen() -> SockInfo {
        SockInfo {
            sk: 0xff,
            ino: 9,
            netns: 1,
            family: 2,
            protocol: 6,
            local: "127.0.0.1:80".parse().unwrap(),
            remote: "0.0.0.0:0".parse().unwrap(),
            state: 10,
        }
    }

    /// A herd: one connection wakes two workers, one accepts.
    pub(crate) fn herd_events() -> Vec<Event> {
        let w0 = task(101, "<img src=x oner");
        let w1 = task(102, "w\"1'\u{1b}[31m");
        let client = Task { pid: 200, tid: 200, comm: "client".into() };
        let wake = |target: &Task| crate::analysis::tests::wake(target.clone(), 1, Cause::SocketReadable);
        vec![
            ev(1_000, 0, &w0, Kind::FdMap { ino: 9, fd: 3 }),
            ev(1_000, 0, &w0, Kind::EpollCtl { epfd: 5, op: 1, fd: 3, events: 1, data: 3, err: 0 }),
            ev(1_100, 0, &w0, Kind::EpollEnter { epfd: 5, maxevents: 8, syscall: Syscall::EpollWait }),
            ev(1_200, 0, &w0, Kind::SwitchOut { involuntary: false, woken: false, state: 1, next_tid: 0, next_comm: "swapper/0".into() }),
            ev(1_300, 1, &w1, Kind::EpollEnter { epfd: 6, maxevents: 8, syscall: Syscall::EpollWait }),
            ev(1_400, 1, &w1, Kind::SwitchOut { involuntary: false, woken: false, state: 1, next_tid: 0, next_comm: "swapper/1".into() }),
            ev(
                10_000,
                1,
                &client,
                Kind::SockReady { sock: listen().into(), seq: 1, hook: ReadyHook::SkDataReady, new_state: None, packet: None },
            ),
            ev(10_100, 1, &client, wake(&w0)),
            ev(10_150, 1, &client, wake(&w1)),
            ev(
                12_000,
                0,
                &w0,
                Kind::SwitchIn { runnable_ts: 10_100, prev_cpu: 0, after_preempt: false, prev_tid: 0, prev_comm: "swapper/0".into() },
            ),
            ev(
                12_500,
                0,
                &w0,
                Kind::EpollExit {
                    enter_ts: 1_100,
                    epfd: 5,
                    ret: 1,
                    syscall: Syscall::EpollWait,
                    events: vec![EpEvent { events: 1, data: 3, fd: None }],
                },
            ),
            ev(
                13_000,
                0,
                &w0,
                Kind::Accept {
                    enter_ts: 12_900,
                    listen_fd: 3,
                    ret: 7,
                    syscall: Syscall::Accept4,
                    backlog: 0,
                    max_backlog: 128,
                    listen: Some(listen().into()),
                    peer: None,
                },
            ),
            ev(
                14_000,
                1,
                &w1,
                Kind::SwitchIn { runnable_ts: 10_150, prev_cpu: 1, after_preempt: false, prev_tid: 0, prev_comm: "swapper/1".into() },
            ),
            ev(14_300, 1, &w1, Kind::SwitchOut { involuntary: false, woken: false, state: 1, next_tid: 0, next_comm: "swapper/1".into() }),
            ev(15_000, 0, &w0, Kind::Close { fd: 7, sock: None }),
            ev(15_100, 0, &w0, Kind::EpollEnter { epfd: 5, maxevents: 8, syscall: Syscall::EpollWait }),
            ev(15_200, 0, &w0, Kind::SwitchOut { involuntary: false, woken: false, state: 1, next_tid: 0, next_comm: "swapper/0".into() }),
        ]
    }

    /// Receives each event with its annotation, and each completed chain.
    pub(crate) type Feed<'a> = dyn FnMut(Option<&Event>, Option<&Annotation>, Option<&Chain>) + 'a;

    pub(crate) fn feed(events: &[Event], w: &mut Feed<'_>) {
        let mut c = Correlator::new();
        for e in events {
            let ann = c.ingest(e);
            w(Some(e), Some(&ann), None);
            for ch in c.drain_completed() {
                w(None, None, Some(&ch));
            }
        }
        for ch in c.finish() {
            w(None, None, Some(&ch));
        }
    }

    /// The file `p` writes after seeing `evs` and their chains.
    fn written(p: &mut PerfettoWriter, evs: &[Event]) -> Vec<u8> {
        feed(evs, &mut |e, a, c| {
            if let (Some(e), Some(a)) = (e, a) {
                p.add_event(e, a);
            }
            if let Some(c) = c {
                p.add_chain(c);
            }
        });
        let mut buf = Vec::new();
        p.write_to(&mut buf).unwrap();
        buf
    }

    #[test]
    fn herd_trace_is_valid_and_has_arrows() {
        let mut p = PerfettoWriter::new(Path::new("/nonexistent"));
        p.t0 = Some(500);
        let buf = written(&mut p, &herd_events());
        let v: Value = serde_json::from_slice(&buf).expect("valid JSON");
        assert_eq!(v["displayTimeUnit"], "ns");
        let evs = v["traceEvents"].as_array().unwrap();
        let names: std::collections::HashSet<(u64, u64)> = evs
            .iter()
            .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
            .map(|e| (e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap()))
            .collect();
        assert!(evs.iter().any(|e| e["ph"] == "M" && e["args"]["name"] == "<img src=x oner"), "hostile name kept as data");
        for e in evs.iter().filter(|e| e["ph"] != "M") {
            assert!(names.contains(&(e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap())), "unnamed track: {e}");
        }
        let starts: Vec<&Value> = evs.iter().filter(|e| e["ph"] == "s").collect();
        let ends: Vec<&Value> = evs.iter().filter(|e| e["ph"] == "f").collect();
        // socket -> 2 wakes, wake -> epoll return (w0), wake -> on CPU (w1, woken for nothing).
        assert_eq!(starts.len(), 4, "{starts:?}");
        assert_eq!(ends.len(), 4);
        for s in &starts {
            assert!(ends.iter().any(|f| f["id"] == s["id"] && f["bp"] == "e" && f["name"] == s["name"]));
        }
        // Every flow point lies strictly inside an X slice of its track.
        let xs: Vec<&Value> = evs.iter().filter(|e| e["ph"] == "X").collect();
        for f in starts.iter().chain(ends.iter()) {
            let ts = f["ts"].as_f64().unwrap();
            assert!(
                xs.iter().any(|x| x["pid"] == f["pid"]
                    && x["tid"] == f["tid"]
                    && x["ts"].as_f64().unwrap() < ts
                    && ts < x["ts"].as_f64().unwrap() + x["dur"].as_f64().unwrap()),
                "flow point not inside a slice: {f}"
            );
        }
        let has = |n: &str| xs.iter().any(|x| x["name"].as_str().unwrap().starts_with(n));
        assert!(
            has("on CPU")
                && has("blocked in epoll_wait")
                && has("run queue")
                && has("epoll_wait(5) = 1")
                && has("socket ready")
                && has("wake ")
        );
        assert!(evs.iter().any(|e| e["ph"] == "i" && e["name"] == "accept4(3) = fd 7"));
        assert!(evs.iter().any(|e| e["ph"] == "i" && e["name"] == "close(7)"));
        // Proper nesting per track.
        let mut tracks: HashMap<(u64, u64), Vec<(f64, f64)>> = HashMap::new();
        for x in &xs {
            let ts = x["ts"].as_f64().unwrap();
            tracks.entry((x["pid"].as_u64().unwrap(), x["tid"].as_u64().unwrap())).or_default().push((ts, ts + x["dur"].as_f64().unwrap()));
        }
        for (_, mut v) in tracks {
            v.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
            let mut stack: Vec<f64> = Vec::new();
            for (s, e) in v {
                while stack.last().map(|&end| end <= s + 1e-9).unwrap_or(false) {
                    stack.pop();
                }
                if let Some(&top) = stack.last() {
                    assert!(e <= top + 1e-9, "slice [{s}, {e}] overlaps its parent ending at {top}");
                }
                stack.push(e);
            }
        }
        // The blocked period of w0 is 1.2us -> 10.1us, relative to t0 = 500 ns.
        let blocked = xs.iter().find(|x| x["name"] == "blocked in epoll_wait" && x["tid"] == 101).unwrap();
        assert_eq!(blocked["ts"].as_f64().unwrap(), 0.7);
        assert!((blocked["dur"].as_f64().unwrap() - 8.9).abs() < 1e-9);
    }

    /// A bidi override or C1 control in a comm is written as `\uXXXX`, as
    /// the JSON stream does: a terminal that shows the file sees no raw one.
    #[test]
    fn invisible_characters_are_escaped() {
        let mut p = PerfettoWriter::new(Path::new("/nonexistent"));
        let mut evs = herd_events();
        for e in evs.iter_mut().filter(|e| e.task.tid == 102) {
            e.task.comm = "w\u{202e}1\u{9b}2J".into();
        }
        let text = String::from_utf8(written(&mut p, &evs)).unwrap();
        assert!(!text.contains('\u{202e}') && !text.contains('\u{9b}'), "raw invisible character");
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        let evs = v["traceEvents"].as_array().unwrap();
        assert!(evs.iter().any(|e| e["args"]["name"] == "w\u{202e}1\u{9b}2J"), "the name reads back as it was");
    }

    /// A process is named after its main thread when a record made in its
    /// own context shows it, also one that makes no track of its own; else
    /// after its threads.
    #[test]
    fn a_process_is_named_after_its_main_thread_seen_without_a_track() {
        let process_name = |evs: &[Event]| {
            let mut p = PerfettoWriter::new(Path::new("/nonexistent"));
            for e in evs {
                p.add_event(e, &Annotation::default());
            }
            let out = p.build();
            assert!(!out.iter().any(|e| e["name"] == "thread_name" && e["tid"] == 100), "the main thread has no track");
            out.iter().find(|e| e["name"] == "process_name" && e["pid"] == 100).map(|e| e["args"]["name"].to_string())
        };
        let mut evs = herd_events();
        assert!(process_name(&evs).is_some_and(|n| n.starts_with("\"pid 100: ")));
        // Records made on top of the main thread (softirq, irq) do not name
        // it: the task interrupted may be a shell about to exec the server.
        let shell = Task { pid: 100, tid: 100, comm: "bash".into() };
        let mut irq_wake = crate::analysis::tests::wake(task(101, "w0"), 1, Cause::SocketReadable);
        if let Kind::Wake { context, .. } = &mut irq_wake {
            *context = Some(crate::events::WakerContext::SoftirqOnIrqExit);
        }
        evs.push(ev(20_000, 0, &shell, irq_wake));
        let ready = Kind::SockReady { sock: listen().into(), seq: 2, hook: ReadyHook::SkDataReady, new_state: None, packet: None };
        evs.push(ev(20_000, 0, &shell, ready));
        evs.push(ev(20_000, 0, &shell, Kind::SockState { sock: listen().into(), old: 1, new: 8 }));
        assert!(process_name(&evs).is_some_and(|n| n.starts_with("\"pid 100: ")), "named by an interrupted task");
        let main = Task { pid: 100, tid: 100, comm: "master".into() };
        evs.push(ev(20_000, 0, &main, Kind::FdMap { ino: 9, fd: 4 }));
        assert_eq!(process_name(&evs).as_deref(), Some("\"master [100]\""));
    }

    #[test]
    fn a_woken_switch_out_waits_in_the_run_queue() {
        let w = task(7, "w");
        let mut p = PerfettoWriter::new(Path::new("/nonexistent"));
        let evs = vec![
            ev(100, 0, &w, Kind::EpollEnter { epfd: 3, maxevents: 1, syscall: Syscall::EpollWait }),
            ev(400, 0, &w, Kind::SwitchOut { involuntary: false, woken: true, state: 1, next_tid: 1, next_comm: "x".into() }),
            ev(900, 0, &w, Kind::SwitchIn { runnable_ts: 400, prev_cpu: 0, after_preempt: false, prev_tid: 1, prev_comm: "x".into() }),
            ev(1_000, 0, &w, Kind::EpollExit { enter_ts: 100, epfd: 3, ret: 0, syscall: Syscall::EpollWait, events: vec![] }),
        ];
        for e in &evs {
            p.add_event(e, &Annotation::default());
        }
        let out = p.build();
        let names: Vec<&str> = out.iter().filter(|e| e["ph"] == "X").filter_map(|e| e["name"].as_str()).collect();
        assert!(names.contains(&"run queue") && !names.iter().any(|n| n.starts_with("blocked")), "{names:?}");
    }

    /// Records lost between a wake-up and a switch-in (the thread ran and
    /// slept again meanwhile): the run-queue slice starts where the
    /// switch-in says its wait began, not at the old wake-up.
    #[test]
    fn the_run_queue_starts_where_the_switch_in_says() {
        let (a, b) = (task(7, "a"), task(8, "b"));
        let mut p = PerfettoWriter::new(Path::new("/nonexistent"));
        let sleep = || Kind::SwitchOut { involuntary: false, woken: false, state: 1, next_tid: 1, next_comm: "x".into() };
        let switch_in = |runnable_ts| Kind::SwitchIn { runnable_ts, prev_cpu: 0, after_preempt: false, prev_tid: 1, prev_comm: "x".into() };
        let evs = vec![
            ev(100, 0, &a, sleep()),
            ev(200, 1, &b, crate::analysis::tests::wake(a.clone(), 0, Cause::SocketReadable)),
            // Lost: a's switch-in, its run, its sleep, the next wake-up at 900.
            ev(1_000, 0, &a, switch_in(900)),
            // b: its wake-up record lost.
            ev(1_100, 0, &b, sleep()),
            ev(2_000, 0, &b, switch_in(1_950)),
        ];
        for e in &evs {
            p.add_event(e, &Annotation::default());
        }
        let out = p.build();
        let slices = |tid: u32| -> Vec<(String, u64, u64)> {
            out.iter()
                .filter(|e| e["ph"] == "X" && e["tid"] == tid && e["name"] != "on CPU")
                .map(|e| {
                    let ns = |v: &Value| (v.as_f64().unwrap() * 1000.0).round() as u64;
                    (e["name"].as_str().unwrap().to_string(), ns(&e["ts"]), ns(&e["dur"]))
                })
                .collect()
        };
        let s = |n: &str, ts, dur| (n.to_string(), ts, dur);
        // Times from the first record (100).
        assert_eq!(slices(7), [s("blocked", 0, 100), s("run queue", 800, 100)], "not a run queue from the wake-up at 200");
        assert_eq!(slices(8), [s("blocked", 1_000, 850), s("run queue", 1_850, 50)], "a wake-up's record lost");
    }

    #[test]
    fn lost_events_still_nest() {
        let w = task(7, "w");
        let mut p = PerfettoWriter::new(Path::new("/nonexistent"));
        let evs = vec![
            // Exit without enter (began before the trace), a switch-in lost, an enter never returned.
            ev(100, 0, &w, Kind::EpollExit { enter_ts: 0, epfd: 3, ret: 0, syscall: Syscall::EpollWait, events: vec![] }),
            ev(200, 0, &w, Kind::SwitchOut { involuntary: true, woken: false, state: 0, next_tid: 1, next_comm: "x".into() }),
            ev(300, 0, &w, Kind::EpollEnter { epfd: 3, maxevents: 1, syscall: Syscall::EpollPwait }),
            ev(400, 0, &w, Kind::SwitchOut { involuntary: false, woken: false, state: 1, next_tid: 1, next_comm: "x".into() }),
            ev(500, 0, &w, Kind::EpollEnter { epfd: 3, maxevents: 1, syscall: Syscall::EpollPwait }),
        ];
        for e in &evs {
            p.add_event(e, &Annotation::default());
        }
        let out = p.build();
        let xs: Vec<(&str, f64, f64)> = out
            .iter()
            .filter(|e| e["ph"] == "X")
            .map(|x| (x["name"].as_str().unwrap(), x["ts"].as_f64().unwrap(), x["dur"].as_f64().unwrap()))
            .collect();
        // No epoll_wait slice without both ends; the sleep that no switch-in
        // ended stops at the next record of the thread.
        assert_eq!(
            xs,
            [("on CPU", 0.0, 0.1), ("preempted", 0.1, 0.1), ("on CPU", 0.2, 0.1), ("blocked in epoll_wait", 0.3, 0.1)],
            "{out:?}"
        );
    }

    #[test]
    fn an_exec_by_a_non_leader_thread_ends_its_old_track() {
        let (old, leader) = (task(7, "w"), task(100, "new"));
        // The exec record carries the new program's name already.
        let renamed = task(7, "new");
        let mut p = PerfettoWriter::new(Path::new("/nonexistent"));
        let evs = vec![
            ev(100, 0, &old, Kind::SwitchIn { runnable_ts: 100, prev_cpu: 0, after_preempt: false, prev_tid: 1, prev_comm: "x".into() }),
            ev(300, 0, &renamed, Kind::TaskNew { child: leader.clone(), reason: 3 }),
            ev(500, 0, &leader, Kind::SwitchOut { involuntary: false, woken: false, state: 1, next_tid: 1, next_comm: "x".into() }),
        ];
        for e in &evs {
            p.add_event(e, &Annotation::default());
        }
        let out = p.build();
        let on_cpu: Vec<(u64, f64, f64)> = out
            .iter()
            .filter(|e| e["ph"] == "X" && e["name"] == "on CPU")
            .map(|x| (x["tid"].as_u64().unwrap(), x["ts"].as_f64().unwrap(), x["dur"].as_f64().unwrap()))
            .collect();
        assert_eq!(on_cpu, [(7, 0.0, 0.2), (100, 0.2, 0.2)], "the old tid runs until the exec, then the pid: {out:?}");
        let name_of = |tid: u64| out.iter().find(|e| e["name"] == "thread_name" && e["tid"] == tid).map(|e| e["args"]["name"].clone());
        assert_eq!(name_of(7), Some(json!("w")), "the old track keeps its name: {out:?}");
        assert!(out.iter().any(|e| e["ph"] == "i" && e["name"].as_str().is_some_and(|n| n.starts_with("exec "))), "{out:?}");
    }
}
