//! What a user acts on, built from completed chains and events: thundering
//! herd per listen socket, the latency breakdown of every chain (log2
//! histograms and percentiles), the slowest chains as waterfalls, and wake-up
//! causes, contexts and wakers per thread. Pure Rust: a live trace and
//! `netdrift analyze` of its recording build the same summary.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use serde::Serialize;

use crate::analysis::{Action, Chain};
use crate::events::{Cause, Event, Kind, SockInfo, Task, WakerContext};

/// Latency samples of one stage, in ns, in bounded memory: a log-linear
/// histogram (32 sub-buckets per power of two, so a percentile is within
/// 1/32 of the true value) plus exact count, sum and max. A day-long trace
/// costs the same 16 KiB as a second-long one.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Hist {
    #[serde(skip)]
    buckets: Vec<u64>,
    /// Counts per log2 bucket of microseconds (runqlat's), exact: a
    /// sub-bucket of `buckets` can straddle a power of two of microseconds.
    #[serde(skip)]
    us_log2: Vec<u64>,
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
}

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;

/// Bucket of a value: exact below 32, then 32 buckets per power of two.
fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let sub = (v >> (e - SUB_BITS)) & (SUB - 1);
    ((e - SUB_BITS + 1) as u64 * SUB + sub) as usize
}

/// Smallest value of a bucket.
fn bucket_low(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let e = i / SUB + SUB_BITS as u64 - 1;
    let sub = i % SUB;
    (1u64 << e) | (sub << (e - SUB_BITS as u64))
}

impl Hist {
    /// Add every value of `other`.
    pub fn merge(&mut self, other: &Hist) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        if self.us_log2.len() < other.us_log2.len() {
            self.us_log2.resize(other.us_log2.len(), 0);
        }
        for (a, b) in self.us_log2.iter_mut().zip(&other.us_log2) {
            *a += b;
        }
        self.count += other.count;
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    pub fn add(&mut self, ns: u64) {
        let b = bucket_of(ns);
        if self.buckets.len() <= b {
            self.buckets.resize(b + 1, 0);
        }
        self.buckets[b] += 1;
        let us = ns / 1000;
        let j = if us <= 1 { 0 } else { 63 - us.leading_zeros() as usize };
        if self.us_log2.len() <= j {
            self.us_log2.resize(j + 1, 0);
        }
        self.us_log2[j] += 1;
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Nearest-rank percentile (p in 0..=100), None when empty: the lowest
    /// value of the bucket holding that rank (the exact max for p = 100).
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((p / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        if rank >= self.count {
            return Some(self.max_ns);
        }
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_low(i).min(self.max_ns));
            }
        }
        Some(self.max_ns)
    }

    /// log2 buckets over microseconds, like runqlat: bucket i holds
    /// [2^i, 2^(i+1)-1] us (bucket 0 holds 0 and 1).
    pub fn log2_us(&self) -> &[u64] {
        &self.us_log2
    }
}

/// The four stages of a chain.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// socket ready -> thread woken (the herd's spread: the socket is read at the first sched_waking).
    pub ready_to_wake: Hist,
    /// thread woken -> on CPU (run-queue wait).
    pub wake_to_cpu: Hist,
    /// on CPU -> epoll_wait returned to user space.
    pub cpu_to_return: Hist,
    /// epoll_wait returned -> the handler, or the accept/close of that fd.
    pub return_to_handler: Hist,
    /// packet received -> socket ready (with --packets).
    pub packet_to_ready: Hist,
    /// first event -> last event of the chain.
    pub total: Hist,
    /// Every wait for a CPU of the targets, after a wake-up or a preemption
    /// (what runqlat measures).
    pub runq_all: Hist,
}

impl Latency {
    /// The stages in chain order, with the names the outputs show.
    pub fn stages(&self) -> [(&'static str, &Hist); 7] {
        [
            ("packet -> socket ready", &self.packet_to_ready),
            // The socket is read at the first wake-up: this is the spread of a herd.
            ("ready -> woken (herd spread)", &self.ready_to_wake),
            ("woken -> on CPU (run queue)", &self.wake_to_cpu),
            ("on CPU -> epoll_wait returned", &self.cpu_to_return),
            ("returned -> accept/close/handler", &self.return_to_handler),
            ("whole chain", &self.total),
            ("run queue, every wait (runqlat)", &self.runq_all),
        ]
    }
}

/// Thundering herd on one listen socket.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HerdRow {
    pub local: String,
    pub sk: String,
    /// Socket inode: a listen socket closed and another made at its kernel
    /// address (a restart on the same port) is a row of its own.
    pub ino: u64,
    /// Successful accepts on this socket.
    pub connections: u64,
    /// Chains that started at this socket.
    pub events: u64,
    /// Threads woken by those chains.
    pub wakeups: u64,
    /// Threads woken for nothing (found nothing, EAGAIN, or slept again).
    pub wasted: u64,
    /// Chains that started at this socket while records were lost: left out
    /// of `events`, `wakeups` and `wasted` (a step of theirs may be missing).
    pub events_records_lost: u64,
    /// Connections accepted in those chains: left out of `herd_ratio()`.
    pub connections_records_lost: u64,
    /// Accepts per thread.
    pub winners: BTreeMap<String, u64>,
    /// Wasted wake-ups per thread.
    pub losers: BTreeMap<String, u64>,
}

impl HerdRow {
    /// Threads woken per socket event (1.0: no herd).
    pub fn wakeups_per_event(&self) -> f64 {
        if self.events == 0 {
            0.0
        } else {
            self.wakeups as f64 / self.events as f64
        }
    }
    /// Wasted wake-ups per connection, over the connections of the chains
    /// counted (not those accepted in a chain left out).
    pub fn herd_ratio(&self) -> f64 {
        let conns = self.connections.saturating_sub(self.connections_records_lost);
        if conns == 0 {
            self.wasted as f64
        } else {
            self.wasted as f64 / conns as f64
        }
    }
}

/// Wake-ups and switches of one target thread.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ThreadRow {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub wakeups: u64,
    pub by_cause: BTreeMap<String, u64>,
    pub by_context: BTreeMap<String, u64>,
    pub voluntary: u64,
    pub involuntary: u64,
    /// Wakers by "comm[pid]" (softirq/irq contexts named as such).
    pub wakers: BTreeMap<String, u64>,
    pub runq: Hist,
    /// 0 for one thread; N for the row of N exited threads of one process
    /// and name (`tid` 0), so that a server making a thread per connection
    /// keeps a bounded summary.
    #[serde(skip_serializing_if = "is_zero")]
    pub exited_threads: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl ThreadRow {
    /// Its label: `comm[tid]`, or `comm of pid P (N exited threads)` (the
    /// pid tells apart the rows of two processes of one name, and matches
    /// the herd's `comm[tid]` of a process's main thread).
    pub fn label(&self, comm: &str) -> String {
        if self.exited_threads > 0 {
            let n = self.exited_threads;
            format!("{comm} of pid {} ({n} exited thread{})", self.pid, if n == 1 { "" } else { "s" })
        } else {
            format!("{comm}[{}]", self.tid)
        }
    }

    fn absorb(&mut self, o: ThreadRow) {
        let add = |a: &mut BTreeMap<String, u64>, b: BTreeMap<String, u64>| {
            for (k, v) in b {
                *a.entry(k).or_default() += v;
            }
        };
        self.wakeups += o.wakeups;
        add(&mut self.by_cause, o.by_cause);
        add(&mut self.by_context, o.by_context);
        self.voluntary += o.voluntary;
        self.involuntary += o.involuntary;
        add(&mut self.wakers, o.wakers);
        self.runq.merge(&o.runq);
        self.exited_threads += o.exited_threads.max(1);
    }
}

/// One of the slowest chains, as stage offsets from its first event.
#[derive(Debug, Clone, Serialize)]
pub struct Waterfall {
    pub chain: u64,
    pub title: String,
    pub total_ns: u64,
    /// (stage label, offset ns from the chain start).
    pub steps: Vec<(String, u64)>,
}

/// Everything the summary shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub latency: Latency,
    pub herd: Vec<HerdRow>,
    pub threads: Vec<ThreadRow>,
    pub slowest: Vec<Waterfall>,
}

impl Summary {
    /// A herd row's socket: its address, and its kernel address when another
    /// row has the same one (SO_REUSEPORT: one listen socket per worker),
    /// and its inode when that is the same too (a socket made again there).
    pub fn herd_label(&self, r: &HerdRow) -> String {
        let same = |x: &&HerdRow| x.local == r.local;
        if self.herd.iter().filter(same).count() == 1 {
            r.local.clone()
        } else if self.herd.iter().filter(same).filter(|x| x.sk == r.sk).count() > 1 {
            format!("{} sk {} ino {}", r.local, r.sk, r.ino)
        } else {
            format!("{} sk {}", r.local, r.sk)
        }
    }
}

/// A function name without its parameter list, for narrow columns.
pub fn short_name(n: &str) -> &str {
    match n.find('(') {
        Some(i) if i > 0 => &n[..i],
        _ => n,
    }
}

/// How long a retired tid's late chains count in its process's exited row.
const RETIRED_NS: u64 = 10_000_000_000;

/// Collects the summary from events and completed chains.
#[derive(Debug, Default)]
pub struct SummaryBuilder {
    latency: Latency,
    /// By kernel address and inode.
    herd: BTreeMap<(u64, u64), HerdRow>,
    /// The latest inode seen of each kernel address, for a record without one.
    herd_ino: HashMap<u64, u64>,
    threads: HashMap<u32, ThreadRow>,
    /// Rows of exited threads, by (pid, comm).
    exited: HashMap<(u32, String), ThreadRow>,
    /// tid -> (pid, exit time, name of its exited row, flag) of threads
    /// exited lately: their chains can complete after the exit, and count
    /// in the exited row.
    /// The flag: its final switch-out (TASK_DEAD) was seen, or none comes
    /// (an exec ended the tid): a switch-in under it now is a new thread.
    retired: HashMap<u32, (u32, u64, String, bool)>,
    /// (exit time, tid) in time order, to forget `retired` entries in turn.
    retired_order: std::collections::VecDeque<(u64, u32)>,
    slowest: Vec<Waterfall>,
    keep_slowest: usize,
    /// Reused for the waker label of every wake-up.
    label: String,
    /// A waking process's name, failing its main thread's: its first thread
    /// seen waking a target in its own context (a record names its thread
    /// only), so its threads count as one waker.
    process_names: HashMap<u32, Rc<str>>,
    /// pid -> its main thread's latest name, from wake-ups (as waker or
    /// woken; a target's own records name its thread row): the process's
    /// name, which its other threads' wake-ups are filed under.
    main_names: HashMap<u32, Rc<str>>,
}

/// The first byte of a process-context waker's key (then its pid): named in
/// `build`, once the main thread's name may have been seen.
const PROCESS_KEY: char = '\0';

/// A process-context waker gets a placeholder key (`build` names it), and
/// `process` is asked then only: an interrupted thread (a shell about to
/// exec python) must not name a waker it never was.
fn waker_label(out: &mut String, t: &Task, process: impl FnOnce(), ctx: WakerContext, cpu: u32) {
    use std::fmt::Write as _;
    out.clear();
    let _ = match ctx {
        WakerContext::IdleIrq => write!(out, "irq on idle CPU{cpu}"),
        WakerContext::Ksoftirqd => write!(out, "{}[{}]", t.comm, t.tid),
        WakerContext::SoftirqOnIrqExit => write!(out, "softirq on CPU{cpu} (interrupting {}[{}])", t.comm, t.tid),
        WakerContext::Irq => write!(out, "irq on CPU{cpu} (interrupting {}[{}])", t.comm, t.tid),
        _ => {
            debug_assert!(ctx.own());
            process();
            write!(out, "{PROCESS_KEY}{}", t.pid)
        }
    };
}

/// `t`'s name, if it is a main thread, as its process's latest name.
fn main_name(names: &mut HashMap<u32, Rc<str>>, t: &Task) {
    if t.tid == t.pid && names.get(&t.pid).is_none_or(|n| *n != t.comm) {
        names.insert(t.pid, t.comm.clone());
    }
}

/// Count one more of `key`, allocating it only the first time.
fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_string(), 1);
        }
    }
}

/// When a chain starts (its packet, with --packets) and how long it took.
pub fn chain_start_total(c: &Chain) -> (u64, u64) {
    let start = c.sock.as_ref().and_then(|s| s.packet.as_ref().map(|p| p.ts)).unwrap_or(c.start_ts).min(c.start_ts);
    (start, c.end_ts().saturating_sub(start))
}

/// [`chain_start_total`] of a chain whose whole length counts (the latency's
/// `whole chain`, the slowest chains): a wake-up in it, and no step that may
/// be missing (closed early, or open across lost records).
pub fn chain_span(c: &Chain) -> Option<(u64, u64)> {
    (!c.incomplete && !c.records_lost && c.hops.iter().any(|h| h.wake.is_some())).then(|| chain_start_total(c))
}

fn thread_key(t: &Task) -> String {
    format!("{}[{}]", t.comm, t.tid)
}

impl SummaryBuilder {
    pub fn new() -> Self {
        SummaryBuilder { keep_slowest: 5, ..Default::default() }
    }

    fn thread(&mut self, t: &Task) -> &mut ThreadRow {
        if !self.threads.contains_key(&t.tid) {
            // The row it joined at its exit: a late chain's records may carry
            // an older name (its creator's, before it named itself).
            if let Some(comm) = self.retired.get(&t.tid).filter(|r| r.0 == t.pid).map(|r| r.2.clone()) {
                return self.exited_row(t.pid, &comm);
            }
        }
        let row = self.threads.entry(t.tid).or_insert_with(|| ThreadRow {
            pid: t.pid,
            tid: t.tid,
            comm: t.comm.to_string(),
            ..Default::default()
        });
        // Its latest name: a new thread is seen under its creator's name
        // until it names itself (memcached's mc-worker).
        if row.comm != *t.comm {
            row.comm = t.comm.to_string();
        }
        row
    }

    /// The row of `pid`'s exited threads named `comm`.
    fn exited_row(&mut self, pid: u32, comm: &str) -> &mut ThreadRow {
        self.exited.entry((pid, comm.to_string())).or_insert_with(|| ThreadRow { pid, comm: comm.to_string(), ..Default::default() })
    }

    /// A thread exited: its row joins its process's exited row.
    fn retire(&mut self, t: &Task, ts: u64, exec: bool) {
        // Chains complete within the idle timeout of their last event (2 s by
        // default): ten seconds on, nothing of a retired tid is pending.
        while let Some(&(at, tid)) = self.retired_order.front() {
            if ts.saturating_sub(at) < RETIRED_NS {
                break;
            }
            self.retired_order.pop_front();
            if self.retired.get(&tid).is_some_and(|r| r.1 == at) {
                self.retired.remove(&tid);
            }
        }
        self.retired_order.push_back((ts, t.tid));
        let comm = if let Some(row) = self.threads.remove(&t.tid) {
            // Its latest name: the exit's, or (an exec renames the thread
            // before its old tid ends) the row's.
            let comm = if exec { row.comm.clone() } else { t.comm.to_string() };
            self.exited_row(t.pid, &comm).absorb(row);
            comm
        } else {
            // Its exit is the first record of it: it still counts as one.
            self.exited_row(t.pid, &t.comm).exited_threads += 1;
            t.comm.to_string()
        };
        self.retired.insert(t.tid, (t.pid, ts, comm, exec));
    }

    fn herd_row(&mut self, s: &SockInfo) -> &mut HerdRow {
        let ino = match s.ino {
            0 => self.herd_ino.get(&s.sk).copied().unwrap_or(0),
            ino => {
                if self.herd_ino.insert(s.sk, ino) != Some(ino) {
                    // Counted before its inode was known: the same socket.
                    if let Some(mut r) = self.herd.remove(&(s.sk, 0)) {
                        r.ino = ino;
                        self.herd.insert((s.sk, ino), r);
                    }
                }
                ino
            }
        };
        self.herd.entry((s.sk, ino)).or_insert_with(|| HerdRow {
            local: s.local_text(),
            sk: format!("0x{:x}", s.sk),
            ino,
            ..Default::default()
        })
    }

    /// A waker key as the summary shows it: a process-context waker's
    /// `comm (pid P)`, by its main thread's name where one was seen.
    fn waker_name(&self, key: &str) -> String {
        let Some(pid) = key.strip_prefix(PROCESS_KEY).and_then(|p| p.parse::<u32>().ok()) else {
            return key.to_string();
        };
        let row = self.threads.get(&pid).filter(|r| r.pid == pid).map(|r| r.comm.as_str());
        let comm = row.or(self.main_names.get(&pid).map(|n| &**n)).or(self.process_names.get(&pid).map(|n| &**n)).unwrap_or("?");
        format!("{comm} (pid {pid})")
    }

    /// Per-event counts (switches, accepts) that chains do not hold.
    pub fn event(&mut self, ev: &Event) {
        // Switched in under a retired tid after its final switch-out: a new
        // thread, with its own row. Before it, the exiting thread still runs
        // (preempted and switched in again between its exit and that switch-out).
        if matches!(ev.kind, Kind::SwitchIn { .. }) && self.retired.get(&ev.task.tid).is_some_and(|r| r.3) {
            self.retired.remove(&ev.task.tid);
        }
        match &ev.kind {
            Kind::TaskExit { .. } => self.retire(&ev.task, ev.ts, false),
            // A thread other than the leader ran exec: its old tid ends, and
            // it goes on under the process's pid (retired by the leader's exit).
            Kind::TaskNew { child, reason: 3 } => {
                if ev.task.tid != child.tid {
                    self.retire(&ev.task, ev.ts, true);
                }
                self.retired.remove(&child.tid);
            }
            Kind::SwitchIn { runnable_ts, .. } => {
                let w = ev.ts.saturating_sub(*runnable_ts);
                self.latency.runq_all.add(w);
                self.thread(&ev.task).runq.add(w);
            }
            Kind::SwitchOut { involuntary, state, .. } => {
                let t = self.thread(&ev.task);
                if *involuntary {
                    t.involuntary += 1;
                } else {
                    t.voluntary += 1;
                }
                if state & crate::analysis::TASK_DEAD != 0 {
                    if let Some(r) = self.retired.get_mut(&ev.task.tid) {
                        r.3 = true;
                    }
                }
            }
            // Every wake-up, also those that join no chain of their own (a
            // futex or a lock while handling, a repeat before it ran), so
            // the rows add up to the headline's count.
            Kind::Wake { target, cause, context, .. } => {
                let mut label = std::mem::take(&mut self.label);
                let context = context.unwrap_or(WakerContext::Unknown);
                let (names, mains) = (&mut self.process_names, &mut self.main_names);
                // Only a waker in its own context names its process: an
                // interrupted task may be a shell about to exec the real one.
                let process = || {
                    names.entry(ev.task.pid).or_insert_with(|| ev.task.comm.clone());
                    main_name(mains, &ev.task);
                };
                waker_label(&mut label, &ev.task, process, context, ev.cpu);
                // Every event would cost a lookup: wake-ups name the rest.
                main_name(&mut self.main_names, target);
                let t = self.thread(target);
                t.wakeups += 1;
                bump(&mut t.by_cause, cause.unwrap_or(Cause::Unknown).key());
                bump(&mut t.by_context, context.key());
                bump(&mut t.wakers, &label);
                self.label = label;
            }
            Kind::Accept { ret, listen: Some(l), .. } if *ret >= 0 && l.is_listen() => {
                let key = thread_key(&ev.task);
                let row = self.herd_row(l);
                row.connections += 1;
                *row.winners.entry(key).or_default() += 1;
            }
            _ => {}
        }
    }

    /// A completed chain.
    pub fn chain(&mut self, c: &Chain) {
        let listen = c.sock.as_ref().filter(|s| s.sock.is_listen()).map(|s| s.sock.clone());
        if let Some(l) = listen.as_ref().filter(|_| c.records_lost) {
            // Every accept of this listener in it (an accept loop takes several per hop).
            let accepted = c
                .hops
                .iter()
                .flat_map(|h| &h.actions)
                .filter(|a| matches!(a, Action::Accept { ret, listen: Some(al), .. } if *ret >= 0 && al.sk == l.sk))
                .count() as u64;
            let row = self.herd_row(l);
            row.events_records_lost += 1;
            row.connections_records_lost += accepted;
        } else if let Some(l) = &listen {
            let (woken, wasted) = (c.woken() as u64, c.wasted() as u64);
            let losers: Vec<String> = c.hops.iter().filter(|h| h.wasted()).map(|h| thread_key(&h.target)).collect();
            let row = self.herd_row(l);
            row.events += 1;
            row.wakeups += woken;
            row.wasted += wasted;
            for k in losers {
                *row.losers.entry(k).or_default() += 1;
            }
        }
        if let Some(s) = &c.sock {
            if let Some(p) = &s.packet {
                self.latency.packet_to_ready.add(s.ts.saturating_sub(p.ts));
            }
        }
        for h in &c.hops {
            // A hand-off is no part of the event's spread.
            if let Some(w) = h.wake.as_ref().filter(|_| !h.handoff) {
                if let Some(s) = &c.sock {
                    self.latency.ready_to_wake.add(w.ts.saturating_sub(s.ts));
                }
            }
            if let Some(o) = &h.on_cpu {
                if !o.never_left {
                    self.latency.wake_to_cpu.add(o.runq_ns);
                }
                if let Some(e) = &h.epoll {
                    if h.wake.is_some() {
                        self.latency.cpu_to_return.add(e.ts.saturating_sub(o.ts));
                    }
                }
            }
            if let Some(e) = &h.epoll {
                if let Some(first) = h.actions.first() {
                    self.latency.return_to_handler.add(first.ts().saturating_sub(e.ts));
                }
            }
        }
        if let Some((start, total)) = chain_span(c) {
            self.latency.total.add(total);
            self.consider_slowest(c, start, total);
        }
    }

    fn consider_slowest(&mut self, c: &Chain, start: u64, total: u64) {
        if self.slowest.len() >= self.keep_slowest && self.slowest.last().map(|w| w.total_ns >= total).unwrap_or(false) {
            return;
        }
        let mut steps: Vec<(String, u64)> = Vec::new();
        let off = |ts: u64| ts.saturating_sub(start);
        let title = match &c.sock {
            Some(s) => {
                if let Some(p) = &s.packet {
                    steps.push((format!("packet {} {}B", if p.dev.is_empty() { "backlog" } else { &p.dev }, p.len), off(p.ts)));
                }
                steps.push(("socket ready".into(), off(s.ts)));
                s.sock.describe()
            }
            None => c.hops.first().and_then(|h| h.wake.as_ref()).map(|w| format!("wake-up: {}", w.cause.name())).unwrap_or_default(),
        };
        for h in &c.hops {
            let who = thread_key(&h.target);
            if let Some(w) = &h.wake {
                steps.push((format!("woke {who}"), off(w.ts)));
            }
            if let Some(o) = &h.on_cpu {
                steps.push((format!("{who} on CPU{}", o.cpu), off(o.ts)));
            }
            if let Some(e) = &h.epoll {
                steps.push((format!("{who} {} returned {}", e.syscall.name(), e.ret), off(e.ts)));
            }
            for a in &h.actions {
                match a {
                    Action::Accept { ts, syscall, ret, .. } => steps.push((format!("{who} {} = {ret}", syscall.name()), off(*ts))),
                    Action::Close { ts, fd, .. } => steps.push((format!("{who} close({fd})"), off(*ts))),
                    Action::Handler { ts, name, .. } => steps.push((format!("{who} {}", short_name(name)), off(*ts))),
                }
            }
            if let Some(ts) = h.slept_again {
                steps.push((format!("{who} asleep again"), off(ts)));
            }
        }
        steps.sort_by_key(|s| s.1);
        self.slowest.push(Waterfall { chain: c.id, title, total_ns: total, steps });
        self.slowest.sort_by(|a, b| b.total_ns.cmp(&a.total_ns).then(a.chain.cmp(&b.chain)));
        self.slowest.truncate(self.keep_slowest);
    }

    pub fn build(&self) -> Summary {
        let mut threads: Vec<ThreadRow> = self.threads.values().chain(self.exited.values()).cloned().collect();
        for t in &mut threads {
            // Two keys may name one waker: add them up.
            let mut named = BTreeMap::new();
            for (k, v) in std::mem::take(&mut t.wakers) {
                *named.entry(self.waker_name(&k)).or_default() += v;
            }
            t.wakers = named;
        }
        // Exited rows all have tid 0: pid and name make the order (and a replay) stable.
        threads.sort_by(|a, b| b.wakeups.cmp(&a.wakeups).then(a.tid.cmp(&b.tid)).then(a.pid.cmp(&b.pid)).then(a.comm.cmp(&b.comm)));
        let mut herd: Vec<HerdRow> = self.herd.values().cloned().collect();
        herd.sort_by(|a, b| b.wasted.cmp(&a.wasted).then(a.local.cmp(&b.local)));
        // Winners and losers by their thread's latest name, as the thread
        // rows are (a thread that named itself during the trace: one key).
        let latest = |m: &BTreeMap<String, u64>| -> BTreeMap<String, u64> {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                let tid = k.rsplit_once('[').and_then(|(_, t)| t.strip_suffix(']')?.parse::<u32>().ok());
                let key = tid.and_then(|t| self.threads.get(&t)).map(|r| format!("{}[{}]", r.comm, r.tid)).unwrap_or_else(|| k.clone());
                *out.entry(key).or_default() += v;
            }
            out
        };
        for r in &mut herd {
            r.winners = latest(&r.winners);
            r.losers = latest(&r.losers);
        }
        Summary { latency: self.latency.clone(), herd, threads, slowest: self.slowest.clone() }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reuseport_rows_are_told_apart_by_their_socket() {
        let row = |local: &str, sk: &str| HerdRow { local: local.into(), sk: sk.into(), ..Default::default() };
        let s = Summary { herd: vec![row("0.0.0.0:80", "0x1"), row("0.0.0.0:80", "0x2"), row("0.0.0.0:443", "0x3")], ..Default::default() };
        let labels: Vec<String> = s.herd.iter().map(|r| s.herd_label(r)).collect();
        assert_eq!(labels, ["0.0.0.0:80 sk 0x1", "0.0.0.0:80 sk 0x2", "0.0.0.0:443"]);
    }

    /// A listen socket closed and made again at the same kernel address (a
    /// server restarting its listener) is a row of its own, told by inode.
    #[test]
    fn a_listener_made_again_at_its_address_is_a_row_of_its_own() {
        let mut b = SummaryBuilder::new();
        let worker = Task { pid: 10, tid: 11, comm: "worker".into() };
        let listen = |ino: u64| SockInfo { sk: 0xff00, ino, ..crate::output::perfetto::tests::listen() };
        let accept = |ts: u64, ino: u64| Event {
            ts,
            cpu: 0,
            task: worker.clone(),
            kind: Kind::Accept {
                listen_fd: 3,
                ret: 5,
                syscall: crate::events::Syscall::Accept4,
                enter_ts: ts,
                listen: Some(Box::new(listen(ino))),
                backlog: 0,
                max_backlog: 128,
                peer: None,
            },
        };
        for (ts, ino) in [(1, 100), (2, 0), (3, 100), (4, 200), (5, 200), (6, 0)] {
            b.event(&accept(ts, ino));
        }
        let s = b.build();
        let rows: Vec<(u64, u64)> = s.herd.iter().map(|r| (r.ino, r.connections)).collect();
        assert_eq!(rows, [(100, 3), (200, 3)]);
        let labels: Vec<String> = s.herd.iter().map(|r| s.herd_label(r)).collect();
        assert_eq!(labels, ["127.0.0.1:80 sk 0xff00 ino 100", "127.0.0.1:80 sk 0xff00 ino 200"]);
    }

    use super::*;

    /// Two threads of one client process waking a worker are one waker,
    /// named after the first of them seen.
    #[test]
    fn a_processs_threads_are_one_waker() {
        let mut b = SummaryBuilder::new();
        let worker = Task { pid: 10, tid: 11, comm: "worker".into() };
        let wake = |ts: u64, tid: u32, comm: &str| Event {
            ts,
            cpu: 0,
            task: Task { pid: 20, tid, comm: comm.into() },
            kind: crate::analysis::tests::wake(worker.clone(), 0, Cause::SocketReadable),
        };
        b.event(&wake(1, 21, "cl_a"));
        b.event(&wake(2, 22, "cl_b"));
        b.event(&wake(3, 22, "cl_b"));
        let s = b.build();
        assert_eq!(s.threads[0].wakers, BTreeMap::from([("cl_a (pid 20)".to_string(), 3)]));
    }

    /// A thread waking its own process's main thread is filed under the
    /// process's name (its main thread's), not its own; so is a later waker
    /// thread once the main thread was seen, in any record, before or after.
    #[test]
    fn a_waker_process_is_named_by_its_main_thread() {
        let mut b = SummaryBuilder::new();
        let blocker = Task { pid: 20, tid: 20, comm: "ow_blocker".into() };
        let worker = Task { pid: 10, tid: 11, comm: "worker".into() };
        let wake = |ts: u64, target: &Task, tid: u32, comm: &str| Event {
            ts,
            cpu: 0,
            task: Task { pid: 20, tid, comm: comm.into() },
            kind: crate::analysis::tests::wake(target.clone(), 0, Cause::Futex),
        };
        b.event(&wake(1, &worker, 22, "ow_other"));
        b.event(&wake(2, &blocker, 21, "ow_writer"));
        b.event(&wake(3, &blocker, 21, "ow_writer"));
        // A target's main thread seen only in its own records (a switch).
        let main30 = Task { pid: 30, tid: 30, comm: "srv_main".into() };
        b.event(&Event {
            ts: 4,
            cpu: 0,
            task: main30,
            kind: Kind::SwitchOut { involuntary: true, woken: false, state: 0, next_tid: 0, next_comm: "swapper/0".into() },
        });
        b.event(&Event {
            ts: 5,
            cpu: 0,
            task: Task { pid: 30, tid: 31, comm: "srv_io".into() },
            kind: crate::analysis::tests::wake(worker.clone(), 0, Cause::Futex),
        });
        let s = b.build();
        let rows: BTreeMap<&str, &BTreeMap<String, u64>> = s.threads.iter().map(|t| (t.comm.as_str(), &t.wakers)).collect();
        assert_eq!(rows["ow_blocker"], &BTreeMap::from([("ow_blocker (pid 20)".to_string(), 2)]));
        assert_eq!(rows["worker"], &BTreeMap::from([("ow_blocker (pid 20)".to_string(), 1), ("srv_main (pid 30)".to_string(), 1)]));
    }

    /// A process first seen only interrupted (a shell shim in an irq's
    /// timer wake-up, just before it runs exec) is named by its first wake
    /// in its own context, not by the thread the irq interrupted.
    #[test]
    fn an_interrupted_thread_does_not_name_its_process() {
        let mut b = SummaryBuilder::new();
        let worker = Task { pid: 10, tid: 11, comm: "worker".into() };
        let wake = |ts: u64, comm: &str, ctx: WakerContext| {
            let mut kind = crate::analysis::tests::wake(worker.clone(), 0, Cause::SocketReadable);
            if let Kind::Wake { context, .. } = &mut kind {
                *context = Some(ctx);
            }
            Event { ts, cpu: 1, task: Task { pid: 20, tid: 20, comm: comm.into() }, kind }
        };
        b.event(&wake(1, "bash", WakerContext::Irq));
        b.event(&wake(2, "python3", WakerContext::SoftirqInSyscall));
        b.event(&wake(3, "python3", WakerContext::SoftirqInSyscall));
        let s = b.build();
        let want = BTreeMap::from([("irq on CPU1 (interrupting bash[20])".to_string(), 1), ("python3 (pid 20)".to_string(), 2)]);
        assert_eq!(s.threads[0].wakers, want);

        // Its main thread seen only interrupted (`taskset`, before it execs
        // the program) does not name the process its worker thread wakes from.
        let mut b = SummaryBuilder::new();
        b.event(&wake(1, "taskset", WakerContext::Irq));
        let mut w1 = wake(2, "", WakerContext::Process);
        w1.task = Task { pid: 20, tid: 21, comm: "wk_w1".into() };
        b.event(&w1);
        let s = b.build();
        let want = BTreeMap::from([("irq on CPU1 (interrupting taskset[20])".to_string(), 1), ("wk_w1 (pid 20)".to_string(), 1)]);
        assert_eq!(s.threads[0].wakers, want);
    }

    /// A new thread is first seen under its creator's name: its row takes
    /// the name it gives itself (memcached's mc-worker threads).
    #[test]
    fn a_thread_row_has_the_threads_latest_name() {
        let mut b = SummaryBuilder::new();
        let ev = |ts: u64, comm: &str| Event {
            ts,
            cpu: 0,
            task: Task { pid: 10, tid: 11, comm: comm.into() },
            kind: Kind::SwitchOut { involuntary: false, woken: false, state: 1, next_tid: 0, next_comm: "swapper/0".into() },
        };
        let listen = crate::output::perfetto::tests::listen();
        let accept = Kind::Accept {
            enter_ts: 0,
            listen_fd: 3,
            ret: 5,
            syscall: crate::events::Syscall::Accept4,
            backlog: 0,
            max_backlog: 128,
            listen: Some(Box::new(listen)),
            peer: None,
        };
        b.event(&ev(1, "mcd2"));
        b.event(&Event { kind: accept, ..ev(2, "mcd2") });
        b.event(&ev(3, "mc-worker"));
        let s = b.build();
        assert_eq!((s.threads.len(), s.threads[0].comm.as_str(), s.threads[0].voluntary), (1, "mc-worker", 2));
        // The herd names the winner as its row does.
        assert_eq!(s.herd[0].winners, BTreeMap::from([("mc-worker[11]".to_string(), 1)]));
    }

    /// A thread per connection: each exited thread's row joins one row of
    /// its process and name, so the summary stays bounded; a live thread
    /// keeps its own.
    #[test]
    fn exited_threads_fold_into_one_row() {
        let mut b = SummaryBuilder::new();
        let task = |tid: u32| Task { pid: 10, tid, comm: "conn".into() };
        let ev = |ts: u64, tid: u32, kind: Kind| Event { ts, cpu: 0, task: task(tid), kind };
        let out = || Kind::SwitchOut { involuntary: false, woken: false, state: 1, next_tid: 0, next_comm: "swapper/0".into() };
        let run = |t: u64| Kind::SwitchIn { runnable_ts: t, prev_cpu: 0, after_preempt: false, prev_tid: 0, prev_comm: "swapper/0".into() };
        for tid in 100..1100u32 {
            let t0 = u64::from(tid) * 1000;
            b.event(&ev(t0, tid, run(t0 - 500)));
            b.event(&ev(t0 + 1, tid, out()));
            b.event(&ev(t0 + 2, tid, Kind::TaskExit { group_dead: false }));
            // Its final switch-out (TASK_DEAD) comes after the exit.
            b.event(&ev(
                t0 + 3,
                tid,
                Kind::SwitchOut { involuntary: false, woken: false, state: 0x80, next_tid: 0, next_comm: "swapper/0".into() },
            ));
        }
        // A new thread under an exited tid gets its own row.
        b.event(&ev(9_000_000, 100, run(8_999_000)));
        b.event(&ev(5_000_000, 7, out()));
        let s = b.build();
        assert_eq!(s.threads.len(), 3, "{:?}", s.threads.iter().map(|t| t.label(&t.comm)).collect::<Vec<_>>());
        let gone = s.threads.iter().find(|t| t.exited_threads > 0).expect("the exited row");
        assert_eq!((gone.exited_threads, gone.tid, gone.voluntary, gone.runq.count), (1000, 0, 2000, 1000));
        assert_eq!(s.threads.iter().find(|t| t.tid == 100).map(|t| t.runq.count), Some(1), "the new thread 100");
        assert_eq!(gone.label("conn"), format!("conn of pid {} (1000 exited threads)", gone.pid));
        assert_eq!(s.threads.iter().find(|t| t.tid == 7).map(|t| t.label("conn")), Some("conn[7]".to_string()));
    }

    /// A record of an exited thread that comes after its exit and carries an
    /// older name (its creator's) joins the row the thread joined, not a row
    /// of its own labelled `comm[0]`.
    #[test]
    fn a_late_record_under_an_older_name_joins_the_exited_row() {
        let mut b = SummaryBuilder::new();
        let ev = |ts: u64, comm: &str, kind: Kind| Event { ts, cpu: 0, task: Task { pid: 10, tid: 12, comm: comm.into() }, kind };
        let out = |state: u32| Kind::SwitchOut { involuntary: false, woken: false, state, next_tid: 0, next_comm: "swapper/0".into() };
        b.event(&ev(1, "memcached", out(1)));
        b.event(&ev(2, "mc-log", out(1)));
        b.event(&ev(3, "mc-log", Kind::TaskExit { group_dead: false }));
        b.event(&ev(4, "memcached", out(0x80)));
        let s = b.build();
        let labels: Vec<String> = s.threads.iter().map(|t| t.label(&t.comm)).collect();
        assert_eq!(labels, ["mc-log of pid 10 (1 exited thread)"]);
        assert_eq!(s.threads[0].voluntary, 3);
    }

    /// A thread seen only under its creator's name exits under its own: its
    /// row is summed under that (the exit's) name. Preempted and switched in
    /// again between its exit and its final switch-out, it is still that
    /// thread, not a new row; a switch-in after the final switch-out is.
    #[test]
    fn an_exiting_thread_is_summed_under_its_exit_name_until_its_final_switch_out() {
        let labels = |reused: bool| {
            let mut b = SummaryBuilder::new();
            let ev = |ts: u64, comm: &str, kind: Kind| Event { ts, cpu: 0, task: Task { pid: 10, tid: 12, comm: comm.into() }, kind };
            let out = |involuntary: bool, state: u32| Kind::SwitchOut {
                involuntary,
                woken: false,
                state,
                next_tid: 0,
                next_comm: "swapper/0".into(),
            };
            let run =
                |t: u64| Kind::SwitchIn { runnable_ts: t, prev_cpu: 0, after_preempt: true, prev_tid: 0, prev_comm: "swapper/0".into() };
            b.event(&ev(1, "churn", out(false, 1)));
            b.event(&ev(2, "acc", Kind::TaskExit { group_dead: false }));
            b.event(&ev(3, "acc", out(true, 0)));
            b.event(&ev(5, "acc", run(4)));
            b.event(&ev(6, "acc", out(false, 0x80)));
            if reused {
                // The tid, reused by a new thread.
                b.event(&ev(9, "acc", run(8)));
            }
            b.build().threads.iter().map(|t| t.label(&t.comm)).collect::<Vec<String>>()
        };
        assert_eq!(labels(false), ["acc of pid 10 (1 exited thread)"]);
        assert_eq!(labels(true), ["acc of pid 10 (1 exited thread)", "acc[12]"]);
    }

    /// A thread whose first record is its exit still counts as one exited
    /// thread; exited rows (all tid 0) come in one order, run after run.
    #[test]
    fn exited_rows_count_every_thread_and_keep_their_order() {
        let rows = || {
            let mut b = SummaryBuilder::new();
            for pid in 1..=10u32 {
                let task = Task { pid, tid: pid + 100, comm: format!("p{pid}").into() };
                b.event(&Event { ts: 10, cpu: 0, task: task.clone(), kind: Kind::TaskExit { group_dead: false } });
                let dead = Kind::SwitchOut { involuntary: false, woken: false, state: 0x80, next_tid: 0, next_comm: "swapper/0".into() };
                b.event(&Event { ts: 11, cpu: 0, task, kind: dead });
            }
            b.build().threads.iter().map(|t| (t.pid, t.tid, t.exited_threads)).collect::<Vec<_>>()
        };
        let first = rows();
        assert_eq!(first, (1..=10).map(|p| (p, 0, 1)).collect::<Vec<_>>());
        for _ in 0..5 {
            assert_eq!(rows(), first);
        }
    }

    /// 2000 ns is 2 us: in runqlat's "2 -> 3" bucket, though its
    /// sub-bucket (1984-2015 ns) starts below 2 us.
    #[test]
    fn log2_buckets_are_exact_at_their_edges() {
        let mut h = Hist::default();
        for ns in [1_999, 2_000, 4_000, 4_031, 3_999] {
            h.add(ns);
        }
        assert_eq!(h.log2_us(), vec![1, 2, 2]);
        let mut m = Hist::default();
        m.merge(&h);
        m.merge(&h);
        assert_eq!(m.log2_us(), vec![2, 4, 4]);
    }

    #[test]
    fn hist_percentiles_and_buckets() {
        let mut h = Hist::default();
        for ns in [500, 1_500, 3_000, 7_000, 1_000_000] {
            h.add(ns);
        }
        let p50 = h.percentile(50.0).unwrap();
        assert!((3_000 - 3_000 / 32..=3_000).contains(&p50), "{p50}");
        assert_eq!(h.percentile(100.0), Some(1_000_000));
        assert_eq!(h.percentile(1.0), Some(496), "within 1/32 below 500");
        // 0us,1us -> 0; 3us -> 1; 7us -> 2; 1000us -> 9
        assert_eq!(h.log2_us(), vec![2, 1, 1, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(Hist::default().percentile(99.0), None);
    }

    #[test]
    fn hist_buckets_are_tight_and_bounded() {
        for v in [0u64, 1, 31, 32, 33, 63, 64, 1000, 123_456, 1 << 40, u64::MAX] {
            let lo = bucket_low(bucket_of(v));
            assert!(lo <= v && v - lo <= v / 32, "{v} -> {lo}");
        }
        let mut h = Hist::default();
        for v in 0..200_000u64 {
            h.add(v * 1000);
        }
        assert!(h.buckets.len() < 2048, "memory is bounded: {}", h.buckets.len());
        let p50 = h.percentile(50.0).unwrap();
        assert!((96_000_000..=100_000_000).contains(&p50), "{p50}");
    }
}
