//! Correlation of events into chains: socket ready -> thread(s) woken -> on
//! CPU -> epoll_wait returned -> accept/close. Pure Rust over [`Event`]s, so
//! it runs the same on a live trace, a recording or a fixture.

use std::collections::BTreeMap;

/// The correlator looks up several maps per event: a fast hasher, keyed at
/// random (keys come from the traced system).
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

use serde::Serialize;

use crate::events::{Cause, EpEvent, Event, Kind, Packet, ReadyHook, SockInfo, Syscall, Task, WakerContext, TYPE_NAMES};
use crate::summary::SummaryBuilder;

/// Where a socket inode is open: (pid, fd) pairs.
#[derive(Debug, Default, Clone)]
pub struct FdTable {
    by_ino: HashMap<u64, Vec<(u32, i32)>>,
    by_fd: HashMap<(u32, i32), u64>,
    /// Processes with an entry (some maybe closed since).
    pids: std::collections::HashSet<u32>,
    /// Bumped by every change (see `Resolved`).
    gen: u64,
}

impl FdTable {
    pub fn insert(&mut self, ino: u64, pid: u32, fd: i32) {
        if ino == 0 || fd < 0 {
            return;
        }
        self.gen += 1;
        self.pids.insert(pid);
        if let Some(old) = self.by_fd.insert((pid, fd), ino) {
            if old != ino {
                self.unlink(old, pid, fd);
            }
        }
        let v = self.by_ino.entry(ino).or_default();
        if !v.contains(&(pid, fd)) {
            v.push((pid, fd));
            v.sort_unstable();
        }
    }

    fn unlink(&mut self, ino: u64, pid: u32, fd: i32) {
        if let Some(v) = self.by_ino.get_mut(&ino) {
            v.retain(|&p| p != (pid, fd));
            if v.is_empty() {
                self.by_ino.remove(&ino);
            }
        }
    }

    pub fn remove(&mut self, pid: u32, fd: i32) {
        self.gen += 1;
        if let Some(ino) = self.by_fd.remove(&(pid, fd)) {
            self.unlink(ino, pid, fd);
        }
    }

    /// A forked child holds what its parent held, under the same fds.
    pub fn copy_pid(&mut self, from: u32, to: u32) {
        let held: Vec<(i32, u64)> = self.by_fd.iter().filter(|(k, _)| k.0 == from).map(|(k, &ino)| (k.1, ino)).collect();
        for (fd, ino) in held {
            self.insert(ino, to, fd);
        }
    }

    /// The process is gone: none of its fds holds anything (its pid may be reused).
    pub fn remove_pid(&mut self, pid: u32) {
        // Most processes that exit (tracing everything: compilers, shells) held no socket.
        if !self.pids.remove(&pid) {
            return;
        }
        let fds: Vec<i32> = self.by_fd.keys().filter(|k| k.0 == pid).map(|k| k.1).collect();
        for fd in fds {
            self.remove(pid, fd);
        }
    }

    /// Every (pid, fd) that holds socket inode `ino`.
    pub fn fds(&self, ino: u64) -> &[(u32, i32)] {
        self.by_ino.get(&ino).map(|v| v.as_slice()).unwrap_or(&[])
    }

    pub fn ino(&self, pid: u32, fd: i32) -> Option<u64> {
        self.by_fd.get(&(pid, fd)).copied()
    }

    pub fn knows(&self, ino: u64) -> bool {
        self.by_ino.contains_key(&ino)
    }

    /// Whether any fd of process `pid` is known.
    pub fn knows_pid(&self, pid: u32) -> bool {
        self.pids.contains(&pid)
    }
}

/// The socket event that starts a chain.
#[derive(Debug, Clone, Serialize)]
pub struct ChainSock {
    pub hook: ReadyHook,
    pub ts: u64,
    pub cpu: u32,
    /// Task on the CPU when the socket became ready.
    pub task: Task,
    pub sock: SockInfo,
    /// (pid, fd) in the targets that hold this socket.
    pub fds: Vec<(u32, i32)>,
    /// With --packets: the packet that made it ready.
    pub packet: Option<Packet>,
    /// With --packets: the NAPI poll that carried the packet.
    pub napi: Option<NapiPoll>,
}

/// The end of the NAPI poll that carried a chain's packet.
#[derive(Debug, Clone, Serialize)]
pub struct NapiPoll {
    pub ts: u64,
    pub cpu: u32,
    /// "" for the per-CPU backlog (loopback).
    pub dev: String,
    pub work: i32,
    pub budget: i32,
}

#[derive(Debug, Clone, Serialize)]
pub struct WakeInfo {
    pub ts: u64,
    /// CPU the waker ran on.
    pub cpu: u32,
    pub waker: Task,
    pub cause: Cause,
    pub context: WakerContext,
    pub via_epoll: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OnCpu {
    pub ts: u64,
    pub cpu: u32,
    pub prev_cpu: u32,
    pub migrated: bool,
    /// Wake-up -> on CPU.
    pub runq_ns: u64,
    /// Woken while still on a CPU: it never left.
    pub never_left: bool,
    /// The task it replaced on the CPU.
    pub replaced: Option<Task>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReturnedEvent {
    pub events: u32,
    pub data: u64,
    /// fd the data stands for, when known.
    pub fd: Option<i32>,
    /// The socket behind that fd, when known (shared with the correlator's
    /// view of it: an epoll_wait return names up to 16 of them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sock: Option<std::rc::Rc<SockInfo>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EpollReturn {
    pub ts: u64,
    pub epfd: i32,
    pub ret: i32,
    pub syscall: Syscall,
    pub events: Vec<ReturnedEvent>,
    /// Whether the chain's socket is among the returned fds (None: unknown);
    /// with `nested`, among those the nested instance returned.
    pub lists_sock: Option<bool>,
    /// An epoll instance in this one's set was returned, and the thread's
    /// next epoll_wait was on it: what that returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nested: Option<Box<EpollReturn>>,
}

impl EpollReturn {
    /// Returned `fd` and has no nested return yet: an epoll_wait on `fd`
    /// now is on a nested instance, and continues this hop.
    /// It, or its nested instance's return, listed `fd`.
    fn lists_fd(&self, fd: i32) -> bool {
        self.with_nested().flat_map(|e| e.events.iter()).any(|r| r.fd == Some(fd))
    }

    /// This return, then its nested instance's if any.
    pub fn with_nested(&self) -> impl Iterator<Item = &EpollReturn> {
        std::iter::once(self).chain(self.nested.as_deref())
    }

    fn awaits_nested(&self, fd: i32) -> bool {
        self.nested.is_none() && self.lists_fd(fd)
    }

    /// Events returned but not in `events` (past the first 16, or an
    /// unreadable array); 0 for an error return.
    pub fn not_read(&self) -> usize {
        usize::try_from(self.ret).unwrap_or(0).saturating_sub(self.events.len())
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Accept {
        ts: u64,
        syscall: Syscall,
        listen_fd: i32,
        ret: i32,
        peer: Option<SockInfo>,
        listen: Option<SockInfo>,
        backlog: u32,
        max_backlog: u32,
    },
    Close {
        ts: u64,
        fd: i32,
        sock: Option<SockInfo>,
    },
    /// An application handler entered (uprobe).
    Handler {
        ts: u64,
        name: String,
        fd: Option<i64>,
        flags: Option<String>,
    },
}

impl Action {
    pub fn ts(&self) -> u64 {
        match self {
            Action::Accept { ts, .. } | Action::Close { ts, .. } | Action::Handler { ts, .. } => *ts,
        }
    }
}

/// One thread's part in a chain.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Hop {
    pub target: Task,
    /// None when epoll_wait returned without sleeping.
    pub wake: Option<WakeInfo>,
    pub on_cpu: Option<OnCpu>,
    pub epoll: Option<EpollReturn>,
    pub actions: Vec<Action>,
    /// Went back to sleep inside epoll_wait without returning: the event
    /// was gone (another thread took it).
    pub slept_again: Option<u64>,
    /// Preempted while handling: how often, and how long it waited for a CPU again.
    pub preemptions: u32,
    pub preempted_ns: u64,
    /// Blocked while handling (asleep between its epoll_wait return and the
    /// next epoll_wait: a lock, a blocking call): how often, and how long.
    pub blocked: u32,
    pub blocked_ns: u64,
    #[serde(skip)]
    blocked_since: Option<u64>,
    #[serde(skip)]
    done: bool,
    /// Woken by another thread's epoll_wait passing on the readiness
    /// (`Correlator::relayed_by`), so inside epoll_wait, as a thread woken
    /// through epoll is.
    #[serde(skip)]
    relayed: bool,
    /// Handed the work by a thread handling this chain (a futex, an eventfd
    /// or a pipe from that thread's own code: a listener passing a
    /// connection to a worker pool), not woken by the chain's event: no part
    /// of a herd.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub handoff: bool,
}

impl Hop {
    /// The thread accepted a connection in this hop.
    pub fn accepted(&self) -> bool {
        self.actions.iter().any(|a| matches!(a, Action::Accept { ret, .. } if *ret >= 0))
    }
    /// The thread tried to accept and got EAGAIN.
    pub fn accept_failed(&self) -> bool {
        self.actions.iter().any(|a| matches!(a, Action::Accept { ret, .. } if *ret == -11))
    }
    /// Its epoll_wait returned something to handle besides listen sockets:
    /// a connection, or an fd that is no socket (a pipe, an eventfd).
    fn returned_other_work(&self) -> bool {
        self.epoll.as_ref().is_some_and(|e| {
            let nested_fd = e.nested.as_ref().map(|n| n.epfd);
            let other = |r: &ReturnedEvent| match &r.sock {
                Some(s) => !s.is_listen(),
                // The nested instance is no work: what it returned is.
                None => r.fd.is_some() && r.fd != nested_fd,
            };
            e.with_nested().flat_map(|r| r.events.iter()).any(other)
        })
    }
    /// Woken for nothing: went back to sleep in epoll_wait, or found nothing
    /// to accept or its epoll_wait returned without this chain's socket, and
    /// nothing else to handle either.
    pub fn wasted(&self) -> bool {
        self.wake.is_some()
            && !self.handoff
            && (self.slept_again.is_some()
                || (!self.accepted()
                    && (self.accept_failed() || self.epoll.as_ref().and_then(|e| e.lists_sock) == Some(false))
                    && !self.returned_other_work()))
    }

    /// Last timestamp in this hop.
    pub fn end_ts(&self) -> u64 {
        let mut t = self.wake.as_ref().map(|w| w.ts).unwrap_or(0);
        if let Some(o) = &self.on_cpu {
            t = t.max(o.ts);
        }
        if let Some(e) = &self.epoll {
            t = t.max(e.ts);
        }
        if let Some(s) = self.slept_again {
            t = t.max(s);
        }
        for a in &self.actions {
            t = t.max(a.ts());
        }
        t
    }
}

/// One wake-up chain.
#[derive(Debug, Clone, Serialize)]
pub struct Chain {
    pub id: u64,
    pub start_ts: u64,
    pub sock: Option<ChainSock>,
    pub hops: Vec<Hop>,
    /// Closed by the idle timeout or the end of the trace, not by every
    /// thread going back to sleep.
    pub incomplete: bool,
    /// Open when the ring buffer lost records: a step may be missing or
    /// joined to the wrong wake-up.
    pub records_lost: bool,
    /// Begun at an epoll_wait return whose thread did sleep: its wake-up is
    /// in an earlier chain, closed incomplete (--idle-ms) before the return.
    pub woken_in_closed_chain: bool,
}

impl Chain {
    pub fn end_ts(&self) -> u64 {
        self.hops.iter().map(|h| h.end_ts()).max().unwrap_or(self.start_ts).max(self.start_ts)
    }
    /// Threads woken for nothing: woken with this chain's socket, but neither
    /// accepted nor saw the socket in their epoll_wait return.
    pub fn wasted(&self) -> usize {
        self.hops.iter().filter(|h| h.wasted()).count()
    }
    /// Threads the chain's event woke (a hand-off is not one).
    pub fn woken(&self) -> usize {
        self.hops.iter().filter(|h| h.wake.is_some() && !h.handoff).count()
    }
}

/// What the correlator learned about one event, for the JSON stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Annotation {
    pub chain: Option<u64>,
    /// For sock_ready: the (pid, fd) holding the socket.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fds: Vec<(u32, i32)>,
    /// For epoll_exit: the fd each returned entry stands for.
    #[serde(skip_serializing_if = "EpFds::is_empty")]
    pub ep_fds: EpFds,
    /// For wake: joined its chain as a hand-off (`Hop::handoff`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub handoff: bool,
}

/// The fds of one epoll_wait return's entries, inline: an annotation is made
/// for every record, and most records are epoll_wait returns.
#[derive(Clone, Copy, Default)]
pub struct EpFds {
    len: u8,
    fds: [Option<i32>; EpFds::CAP],
}

impl EpFds {
    /// The BPF side copies at most this many entries (ND_MAX_EP_EVENTS).
    pub const CAP: usize = 16;

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries past [`EpFds::CAP`] are left unresolved.
    pub fn push(&mut self, fd: Option<i32>) {
        if (self.len as usize) < Self::CAP {
            self.fds[self.len as usize] = fd;
            self.len += 1;
        }
    }
}

impl std::ops::Deref for EpFds {
    type Target = [Option<i32>];
    fn deref(&self) -> &[Option<i32>] {
        &self.fds[..self.len as usize]
    }
}

impl std::fmt::Debug for EpFds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for EpFds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

/// Counters kept over the whole trace.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub events: u64,
    pub by_type: BTreeMap<String, u64>,
    pub chains: u64,
    pub chains_incomplete: u64,
    /// Chains open when records were lost (`Chain::records_lost`).
    pub chains_records_lost: u64,
    /// Lost records the stream marks (`records_lost` events).
    pub records_lost: u64,
    pub wakes: u64,
    pub accepts: u64,
    pub accept_eagain: u64,
    pub accept_errors: u64,
    pub closes: u64,
    /// Of `closes`, those of a socket.
    pub socket_closes: u64,
    /// Of `socket_closes`, those of a TCP connection (not a listener, not a
    /// unix or UDP socket): what to set against the accepts.
    #[serde(default)]
    pub connection_closes: u64,
    /// Events epoll_wait returned whose data word was not mapped to an fd.
    pub epoll_data_unmapped: u64,
    /// epoll_wait returns of nothing counted in the kernel, not written (and
    /// not in `events` or `by_type`): each came after another return of
    /// nothing of its thread, with no sleep, preemption or wake-up between.
    /// None: unknown (a recording without its end line).
    #[serde(default)]
    pub epoll_empty_summed: Option<u64>,
    pub handlers: u64,
    /// Handler symbols probed (the start line's `handlers`): with none
    /// called, the summary says so instead of leaving the count out.
    #[serde(default)]
    pub handler_probes: u64,
    pub herd_chains: u64,
    /// Wake-ups of a thread already woken in the same chain (not a new hop).
    pub repeated_wakes: u64,
    pub wasted_wakes: u64,
    /// Socket events left out: the wake-up they were read for was for
    /// something else (its stack named another cause, or it came while
    /// the thread was handling).
    pub sockets_disproved: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    /// A thread slept twice with no switch-in seen between: the switch-in
    /// record of that run is missing (its run-queue wait is unknown), but the
    /// wake-up before it ran, and ends like one that was seen running.
    pub missed_switch_ins: u64,
    /// Wake-ups with no stack of their own: their cause and context are those
    /// of the last stack taken for the same waker, woken thread and `stack_sig`.
    pub stacks_reused: u64,
    /// Targets preempted by netdrift's own ring-buffer reader, and the time
    /// they waited for their CPU back: the tracer's share of their delays.
    /// None where the reader is unknown (a recording made before its tid was kept).
    pub preempted_by_tracer: Option<u64>,
    pub preempted_by_tracer_ns: Option<u64>,
}

#[derive(Debug, Default)]
struct ThreadCtx {
    /// (chain id, hop index) not finished yet.
    pending: Vec<(u64, usize)>,
    /// Inside epoll_wait (entered, not returned).
    in_epoll: bool,
    /// Time of the last epoll_enter seen: an exit whose enter_ts is newer
    /// had its enter left out (it returned without blocking).
    last_enter_ts: u64,
    /// The epoll fd of that call.
    last_enter_epfd: i32,
    /// Switched out voluntarily, with no switch-in seen since.
    asleep: bool,
    /// Preempted, with no switch-in seen since.
    preempted: bool,
    /// Woken in this epoll_wait, in a chain closed (--idle-ms) before it returned.
    woken_in_closed_chain: bool,
}

/// Task states of `switch_out` (include/linux/sched.h).
const TASK_UNINTERRUPTIBLE: u32 = 0x2;
const TASK_WAKING: u32 = 0x200;
const TASK_RTLOCK_WAIT: u32 = 0x1000;
pub(crate) const TASK_DEAD: u32 = 0x80;
const EPOLL_CTL_ADD: i32 = 1;
const EPOLL_CTL_DEL: i32 = 2;
const EPOLL_CTL_MOD: i32 = 3;

fn hook_matches(hook: ReadyHook, cause: Cause) -> bool {
    match hook {
        ReadyHook::SkDataReady => matches!(cause, Cause::SocketReadable | Cause::Unknown),
        ReadyHook::InetSockSetState => matches!(cause, Cause::SocketState | Cause::Unknown),
        // Read where the woken thread waits: it is that wake-up's socket.
        ReadyHook::EpollItem | ReadyHook::Accept => true,
        // Its socket, unless the stack names something else (a signal, a timer).
        ReadyHook::IoWait => {
            matches!(cause, Cause::SocketReadable | Cause::SocketWritable | Cause::SocketState | Cause::Unknown)
        }
    }
}

/// Which fd each epoll data word stands for, per (pid, epfd), indexed both
/// ways: a close or EPOLL_CTL_DEL finds its entries without a scan (a busy
/// server closes thousands of fds a second, with thousands registered).
#[derive(Debug, Default)]
struct EpollMap {
    by_data: HashMap<(u32, i32, u64), i32>,
    /// (pid, fd) -> the (epfd, data) it is registered with.
    by_fd: HashMap<(u32, i32), Vec<(i32, u64)>>,
    /// Processes with an entry (some maybe removed since).
    pids: std::collections::HashSet<u32>,
    /// Bumped by every change (see `Resolved`).
    gen: u64,
}

impl EpollMap {
    fn get(&self, pid: u32, epfd: i32, data: u64) -> Option<i32> {
        self.by_data.get(&(pid, epfd, data)).copied()
    }

    /// `fd` is registered in `epfd` with `data` (an ADD, a MOD, or /proc).
    fn insert(&mut self, pid: u32, epfd: i32, data: u64, fd: i32) {
        self.gen += 1;
        self.pids.insert(pid);
        self.remove_in(pid, epfd, fd);
        if let Some(old) = self.by_data.insert((pid, epfd, data), fd) {
            // The word stood for another fd before: that fd lost it.
            if let Some(v) = self.by_fd.get_mut(&(pid, old)) {
                v.retain(|&(e, d)| !(e == epfd && d == data));
            }
        }
        self.by_fd.entry((pid, fd)).or_default().push((epfd, data));
    }

    /// `fd` left `epfd` (EPOLL_CTL_DEL).
    fn remove_in(&mut self, pid: u32, epfd: i32, fd: i32) {
        self.gen += 1;
        if let Some(v) = self.by_fd.get_mut(&(pid, fd)) {
            v.retain(|&(e, d)| {
                if e != epfd {
                    return true;
                }
                if self.by_data.get(&(pid, e, d)) == Some(&fd) {
                    self.by_data.remove(&(pid, e, d));
                }
                false
            });
            if v.is_empty() {
                self.by_fd.remove(&(pid, fd));
            }
        }
    }

    /// A forked child shares its parent's epoll sets, under the same fds.
    fn copy_pid(&mut self, from: u32, to: u32) {
        let words: Vec<(i32, u64, i32)> = self.by_data.iter().filter(|(k, _)| k.0 == from).map(|(k, &fd)| (k.1, k.2, fd)).collect();
        for (epfd, data, fd) in words {
            self.insert(to, epfd, data, fd);
        }
    }

    /// The process is gone, with its epoll sets.
    fn remove_pid(&mut self, pid: u32) {
        if !self.pids.remove(&pid) {
            return;
        }
        self.gen += 1;
        self.by_data.retain(|k, _| k.0 != pid);
        self.by_fd.retain(|k, _| k.0 != pid);
    }

    /// `fd` was closed: it left every epoll set.
    fn remove_fd(&mut self, pid: u32, fd: i32) {
        self.gen += 1;
        for (e, d) in self.by_fd.remove(&(pid, fd)).unwrap_or_default() {
            if self.by_data.get(&(pid, e, d)) == Some(&fd) {
                self.by_data.remove(&(pid, e, d));
            }
        }
    }
}

/// A cached [`Correlator::resolve`] answer, valid while `gen` (the sum of
/// the change counters of the fd table, the epoll map and the socket view,
/// which only grow) is unchanged.
#[derive(Debug, Default, Clone)]
struct Resolved {
    key: (u32, i32, u64),
    gen: u64,
    fd: Option<i32>,
    sock: Option<std::rc::Rc<SockInfo>>,
}

impl Resolved {
    const SLOTS: usize = 512;

    fn slot((pid, epfd, data): (u32, i32, u64)) -> usize {
        // data is usually a pointer: drop its alignment bits.
        let h = (data >> 4) ^ (data >> 13) ^ (epfd as u64) ^ ((pid as u64) << 3);
        h as usize % Self::SLOTS
    }
}

/// Builds chains from events in ring-buffer order.
#[derive(Debug, Default)]
pub struct Correlator {
    next_id: u64,
    /// Boxed: a chain is large, and B-tree nodes move their values on insert.
    open: BTreeMap<u64, Box<Chain>>,
    /// sock seq -> (chain id, hook).
    by_seq: HashMap<u64, (u64, ReadyHook)>,
    threads: HashMap<u32, ThreadCtx>,
    pub fds: FdTable,
    /// Last known view of each socket inode the targets hold.
    socks: HashMap<u64, std::rc::Rc<SockInfo>>,
    epoll_map: EpollMap,
    /// chain id -> the sock seq that started it (to forget it when the chain ends).
    chain_seq: HashMap<u64, u64>,
    /// Finished chains in id order (they come almost in order), held until
    /// no older chain is open. Boxed as in `open`: a chain moves between them
    /// without copying. A deque, so releasing the front does not move what
    /// is held (a Vec split every batch was O(held): with one chain open for
    /// seconds, most of the tracer's CPU).
    #[allow(clippy::vec_box)]
    completed: std::collections::VecDeque<Box<Chain>>,
    pub stats: Stats,
    /// Events per kind, in `TYPE_NAMES` order (`stats()` names them).
    type_counts: [u64; TYPE_NAMES.len()],
    pub summary: SummaryBuilder,
    last_ts: u64,
    /// Chains idle this long (in event time) are closed as incomplete.
    idle_ns: u64,
    next_expiry_ts: u64,
    /// Bumped when `socks` changes (see `Resolved`).
    socks_gen: u64,
    resolved: Vec<Resolved>,
    /// Reused buffers of the per-record paths (taken, used, put back).
    scratch_pending: Vec<(u64, usize)>,
    scratch_ids: Vec<u64>,
    /// Chains already written, handed back by [`Correlator::recycle`]: a
    /// new chain reuses one's box and hop list instead of allocating both
    /// (a chain per epoll_wait return on a busy server).
    #[allow(clippy::vec_box)]
    spare: Vec<Box<Chain>>,
    /// The returned-event lists of recycled chains, emptied, for the next returns.
    spare_returned: Vec<Vec<ReturnedEvent>>,
    /// Socket events whose chain no wake-up has joined yet although one
    /// carrying it was seen: (seq, the last such wake-up's ts, its CPU).
    /// Dropped once no later wake-up can carry it (`drop_expired_unjoined`).
    unjoined: Vec<(u64, u64, u32)>,
    /// The tid of netdrift's ring-buffer reader (0: unknown), and the
    /// targets it preempted, by tid, since when.
    pub tracer_tid: u32,
    tracer_preempted: HashMap<u32, u64>,
}

/// How long after a TCP state change on a CPU the kernel side still takes
/// it for the socket of a wake-up there (`sock_window_ns` of netdrift.bpf.c).
pub const SOCK_WINDOW_NS: u64 = 2_000_000;
/// The wake-ups of one socket event follow each other on the waker's CPU
/// within this (`herd_gap_ns` of netdrift.bpf.c); a later one starts a new event.
pub const HERD_GAP_NS: u64 = 1_000_000;

impl Correlator {
    /// A correlator closing chains idle for 2 s.
    pub fn new() -> Self {
        Self::with_idle(2_000_000_000)
    }

    /// The counters, with `by_type` filled in.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.by_type = TYPE_NAMES.iter().zip(self.type_counts).filter(|(_, n)| *n > 0).map(|(k, n)| (k.to_string(), n)).collect();
        s
    }

    /// Chains idle for `idle_ns` of event time are closed as incomplete.
    /// Event time, not wall time, so a recording replays identically.
    pub fn with_idle(idle_ns: u64) -> Self {
        Correlator { idle_ns, summary: SummaryBuilder::new(), ..Default::default() }
    }

    fn new_chain(&mut self, ts: u64) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let chain = match self.spare.pop() {
            Some(mut c) => {
                let mut hops = std::mem::take(&mut c.hops);
                hops.clear();
                *c = Chain { id, start_ts: ts, sock: None, hops, incomplete: false, records_lost: false, woken_in_closed_chain: false };
                c
            }
            // Most chains have one hop: room for one, not the four a first push reserves.
            None => Box::new(Chain {
                id,
                start_ts: ts,
                sock: None,
                hops: Vec::with_capacity(1),
                incomplete: false,
                records_lost: false,
                woken_in_closed_chain: false,
            }),
        };
        self.open.insert(id, chain);
        id
    }

    /// Hand back a chain returned by [`Correlator::drain_completed`] once it
    /// is written: its memory serves a later chain.
    pub fn recycle(&mut self, mut c: Box<Chain>) {
        const KEEP: usize = 256;
        if self.spare.len() >= KEEP {
            return;
        }
        for h in c.hops.iter_mut() {
            if let Some(e) = h.epoll.take() {
                let mut v = e.events;
                if self.spare_returned.len() < KEEP && v.capacity() > 0 {
                    v.clear();
                    self.spare_returned.push(v);
                }
            }
        }
        self.spare.push(c);
    }

    fn hop_mut(&mut self, (id, idx): (u64, usize)) -> Option<&mut Hop> {
        self.open.get_mut(&id).and_then(|c| c.hops.get_mut(idx))
    }

    /// Mark a thread's pending hops done when `pred` holds, and close chains
    /// whose hops are all done.
    fn finish_hops(&mut self, tid: u32, pred: impl Fn(&Hop) -> bool) {
        let mut pending = match self.threads.get_mut(&tid) {
            Some(t) if !t.pending.is_empty() => std::mem::take(&mut t.pending),
            _ => return,
        };
        let mut touched = std::mem::take(&mut self.scratch_ids);
        touched.clear();
        pending.retain(|&p| match self.hop_mut(p) {
            Some(h) if pred(h) => {
                h.done = true;
                touched.push(p.0);
                false
            }
            Some(_) => true,
            None => false,
        });
        if let Some(t) = self.threads.get_mut(&tid) {
            t.pending = pending;
        }
        for &id in &touched {
            self.maybe_complete(id);
        }
        self.scratch_ids = touched;
    }

    fn maybe_complete(&mut self, id: u64) {
        let done = self.open.get(&id).map(|c| !c.hops.is_empty() && c.hops.iter().all(|h| h.done)).unwrap_or(false);
        if done {
            if let Some(c) = self.open.remove(&id) {
                self.complete(c);
            }
        }
    }

    fn complete(&mut self, c: Box<Chain>) {
        if let Some(seq) = self.chain_seq.remove(&c.id) {
            self.by_seq.remove(&seq);
        }
        if c.hops.is_empty() {
            return;
        }
        self.stats.chains += 1;
        if c.incomplete {
            self.stats.chains_incomplete += 1;
        }
        if c.records_lost {
            // A lost wake-up or epoll_wait return can make a thread look woken
            // for nothing, or hide one: such a chain is not counted as a herd.
            self.stats.chains_records_lost += 1;
        } else {
            if c.woken() > 1 {
                self.stats.herd_chains += 1;
            }
            self.stats.wasted_wakes += c.wasted() as u64;
        }
        self.summary.chain(&c);
        if self.completed.back().is_none_or(|b| b.id < c.id) {
            self.completed.push_back(c);
        } else {
            let at = self.completed.partition_point(|b| b.id < c.id);
            self.completed.insert(at, c);
        }
    }

    /// Chains finished since the last call, in id order: a chain is held
    /// back while an older one is still open, so output reads in time order.
    pub fn drain_completed(&mut self) -> Vec<Box<Chain>> {
        // A chain no wake-up joined (yet) prints nothing: it holds nothing back.
        // `open` is ordered by id: the first is the oldest.
        let oldest_open = self.open.values().find(|c| !c.hops.is_empty()).map(|c| c.id).unwrap_or(u64::MAX);
        let ready = self.completed.partition_point(|c| c.id < oldest_open);
        self.completed.drain(..ready).collect()
    }

    /// Close chains idle for `idle_ns` before the newest event seen.
    pub fn expire(&mut self, idle_ns: u64) {
        let limit = self.last_ts.saturating_sub(idle_ns);
        let old: Vec<u64> = self.open.values().filter(|c| c.end_ts() < limit).map(|c| c.id).collect();
        for id in old {
            self.force_close(id);
        }
    }

    /// A wake-up carried socket event `seq` but did not join its chain (its
    /// thread was handling, or its stack disproves the socket). A later
    /// wake-up of the same event may still join it (the rest of a herd): the
    /// chain is closed only once none can.
    fn defer_unjoined(&mut self, seq: u64, wake_ts: u64, cpu: u32) {
        if let Some(&(id, _)) = self.by_seq.get(&seq).filter(|_| seq != 0) {
            if self.open.get(&id).is_some_and(|c| c.hops.is_empty()) {
                match self.unjoined.iter_mut().find(|u| u.0 == seq) {
                    Some(u) => u.1 = u.1.max(wake_ts),
                    None => self.unjoined.push((seq, wake_ts, cpu)),
                }
            }
        }
    }

    /// Close the deferred socket events no wake-up can carry any more: a
    /// newer one on the same CPU replaced it (`cpu`), or the herd's gap has
    /// passed since the last wake-up that carried it (twice: event times of
    /// different CPUs are not ordered).
    fn drop_expired_unjoined(&mut self, now: u64, cpu: Option<u32>) {
        let mut i = 0;
        while i < self.unjoined.len() {
            let (seq, ts, c) = self.unjoined[i];
            if Some(c) == cpu || now > ts.saturating_add(2 * HERD_GAP_NS) {
                self.unjoined.swap_remove(i);
                self.drop_unjoined(seq);
            } else {
                i += 1;
            }
        }
    }

    /// Records were lost while socket event `seq` waited to be written: its chain spans the gap.
    pub fn mark_records_lost(&mut self, seq: u64) {
        if let Some(&(id, _)) = self.by_seq.get(&seq).filter(|_| seq != 0) {
            if let Some(c) = self.open.get_mut(&id) {
                c.records_lost = true;
            }
        }
    }

    /// Close the chain of socket event `seq` if no wake-up joined it: it
    /// prints nothing and would stay open until it expired.
    fn drop_unjoined(&mut self, seq: u64) {
        if let Some(&(id, _)) = self.by_seq.get(&seq).filter(|_| seq != 0) {
            if self.open.get(&id).is_some_and(|c| c.hops.is_empty()) {
                self.force_close(id);
            }
        }
    }

    fn force_close(&mut self, id: u64) {
        if let Some(mut c) = self.open.remove(&id) {
            c.incomplete = c.hops.iter().any(|h| !h.done);
            for t in self.threads.values_mut() {
                // A thread woken in epoll_wait and not returned yet: its return
                // will start a chain of its own, which must not read as "did not sleep".
                // Not only after an epoll_enter seen: the thread's first wait may have begun before the trace.
                let woken = |p: &(u64, usize)| p.0 == id && c.hops.get(p.1).is_some_and(|h| h.wake.is_some() && h.epoll.is_none());
                if t.pending.iter().any(woken) {
                    t.woken_in_closed_chain = true;
                }
                t.pending.retain(|p| p.0 != id);
            }
            self.complete(c);
        }
    }

    /// Close every open chain (end of trace) and return all completed ones.
    pub fn finish(&mut self) -> Vec<Box<Chain>> {
        self.unjoined.clear();
        let ids: Vec<u64> = self.open.keys().copied().collect();
        for id in ids {
            self.force_close(id);
        }
        self.drain_completed()
    }

    fn epoll_entered(&mut self, tid: u32, ts: u64, epfd: i32) {
        let t = self.threads.entry(tid).or_default();
        t.in_epoll = true;
        t.woken_in_closed_chain = false;
        t.last_enter_ts = ts;
        t.last_enter_epfd = epfd;
        // Back to waiting: this thread's part of its chains is over, unless
        // it now waits on the nested epoll instance its last return listed.
        self.finish_hops(tid, |h| {
            !h.epoll.as_ref().is_some_and(|e| e.awaits_nested(epfd)) && (h.on_cpu.is_some() || h.epoll.is_some() || h.wake.is_none())
        });
    }

    /// Feed one event; returns what it was joined to.
    pub fn ingest(&mut self, ev: &Event) -> Annotation {
        self.stats.events += 1;
        // Named only when the stats are read: no string compare per event.
        self.type_counts[ev.type_index()] += 1;
        self.last_ts = self.last_ts.max(ev.ts);
        if self.idle_ns > 0 && self.last_ts >= self.next_expiry_ts {
            self.expire(self.idle_ns);
            self.next_expiry_ts = self.last_ts.saturating_add(self.idle_ns / 10);
        }
        self.summary.event(ev);
        if !self.unjoined.is_empty() {
            let replaced_on = matches!(ev.kind, Kind::SockReady { .. }).then_some(ev.cpu);
            self.drop_expired_unjoined(ev.ts, replaced_on);
        }
        let tid = ev.task.tid;
        let pid = ev.task.pid;
        let mut ann = Annotation::default();
        match &ev.kind {
            Kind::SockReady { sock, seq, hook, packet, .. } => {
                self.remember(sock);
                let id = self.new_chain(ev.ts);
                let fds = self.fds.fds(sock.ino).to_vec();
                ann.fds = fds.clone();
                if let Some(c) = self.open.get_mut(&id) {
                    c.sock = Some(ChainSock {
                        hook: *hook,
                        ts: ev.ts,
                        cpu: ev.cpu,
                        task: ev.task.clone(),
                        sock: (**sock).clone(),
                        fds,
                        packet: packet.as_deref().cloned(),
                        napi: None,
                    });
                }
                self.by_seq.insert(*seq, (id, *hook));
                self.chain_seq.insert(id, *seq);
                ann.chain = Some(id);
            }
            Kind::Wake { target, sock_seq, stack, target_on_rq, cause, context, via_epoll, target_cpu, stack_reused, .. } => {
                self.stats.wakes += 1;
                self.stats.stacks_reused += *stack_reused as u64;
                if let Some(p) = self.handling(target.tid) {
                    // It slept inside its handler (the listener's lock in a
                    // herd's losing accept, a blocking send): still that hop,
                    // and the socket it blocked on starts no chain of its
                    // own unless another thread's wake-up joins it.
                    self.defer_unjoined(*sock_seq, ev.ts, ev.cpu);
                    ann.chain = Some(p.0);
                    return ann;
                }
                // Woken through epoll again inside the same epoll_wait, having
                // run since its last epoll wake-up: it found nothing and went
                // back on the epoll wait queue (the only way such a wake-up
                // reaches it), so that one was for nothing, as if it had
                // switched out (its second wake-up came first).
                let requeued = self.threads.get(&target.tid).filter(|t| *via_epoll && t.in_epoll).map(|t| t.pending.clone());
                if let Some(pending) = requeued {
                    for p in pending {
                        if let Some(h) = self.hop_mut(p) {
                            let woken_by_epoll = h.wake.as_ref().is_some_and(|w| w.via_epoll);
                            if woken_by_epoll && h.on_cpu.is_some() && h.epoll.is_none() && h.actions.is_empty() {
                                h.slept_again.get_or_insert(ev.ts);
                            }
                        }
                    }
                }
                // A new blocking period: what the thread did since its last wake is over.
                self.finish_hops(target.tid, |h| h.on_cpu.is_some() || h.wake.is_none());
                let cause = cause.unwrap_or(Cause::Unknown);
                let relayed = match cause {
                    _ if *via_epoll => None,
                    // An epoll_ctl adding or modifying a ready fd: the one its caller handles.
                    Cause::EpollRelay => self.relayed_by(ev.task.tid).or_else(|| self.active_chain(ev.task.tid, |_| true)),
                    // The stack does not say (none, or a kernel that names it otherwise).
                    Cause::Other | Cause::Unknown if ev.task.pid == target.pid => self.relayed_by(ev.task.tid),
                    _ => None,
                };
                // The stack must agree with the hook, or the socket was another wake-up's.
                let (id, handed) = match (relayed, self.by_seq.get(sock_seq)) {
                    (Some(id), _) => {
                        // The socket read for it is the waker's event, seen again.
                        self.defer_unjoined(*sock_seq, ev.ts, ev.cpu);
                        (id, false)
                    }
                    (None, Some(&(id, hook))) if *sock_seq != 0 && self.open.contains_key(&id) && hook_matches(hook, cause) => (id, false),
                    _ => {
                        // Its socket was a guess the stack disproves.
                        self.defer_unjoined(*sock_seq, ev.ts, ev.cpu);
                        // A worker handed the work by a thread of its process handling a chain.
                        let handoff = (matches!(cause, Cause::Futex | Cause::Eventfd | Cause::Pipe)
                            && *context == Some(WakerContext::Process)
                            && ev.task.pid == target.pid
                            && ev.task.tid != target.tid)
                            .then(|| self.active_chain(ev.task.tid, |_| true))
                            .flatten();
                        match handoff {
                            Some(id) => (id, true),
                            None => (self.new_chain(ev.ts), false),
                        }
                    }
                };
                let on_cpu = target_on_rq.then(|| OnCpu {
                    ts: ev.ts,
                    cpu: *target_cpu,
                    prev_cpu: *target_cpu,
                    migrated: false,
                    runq_ns: 0,
                    never_left: true,
                    replaced: None,
                });
                let hop = Hop {
                    target: target.clone(),
                    relayed: relayed.is_some(),
                    handoff: handed,
                    wake: Some(WakeInfo {
                        ts: ev.ts,
                        cpu: ev.cpu,
                        waker: ev.task.clone(),
                        cause,
                        context: context.unwrap_or(WakerContext::Unknown),
                        via_epoll: *via_epoll,
                        stack: stack.clone(),
                    }),
                    on_cpu,
                    ..Default::default()
                };
                // Woken again for the same socket event before it ran: one hop.
                let again = self.threads.get(&target.tid).map(|t| t.pending.iter().any(|p| p.0 == id)).unwrap_or(false);
                if again {
                    self.stats.repeated_wakes += 1;
                } else if let Some(c) = self.open.get_mut(&id) {
                    ann.handoff = hop.handoff;
                    c.hops.push(hop);
                    let idx = c.hops.len() - 1;
                    self.threads.entry(target.tid).or_default().pending.push((id, idx));
                }
                ann.chain = Some(id);
            }
            Kind::SwitchIn { runnable_ts, prev_cpu, prev_tid, prev_comm, after_preempt } => {
                if !self.tracer_preempted.is_empty() {
                    if let Some(since) = self.tracer_preempted.remove(&tid) {
                        *self.stats.preempted_by_tracer_ns.get_or_insert(0) += ev.ts.saturating_sub(since);
                    }
                }
                let pending = match self.threads.get_mut(&tid) {
                    Some(t) => {
                        t.asleep = false;
                        t.preempted = false;
                        t.pending.clone()
                    }
                    None => Vec::new(),
                };
                let mut first = true;
                for p in pending {
                    if let Some(h) = self.hop_mut(p) {
                        if *after_preempt {
                            // Back on a CPU after being preempted mid-handling.
                            h.preemptions += 1;
                            h.preempted_ns += ev.ts.saturating_sub(*runnable_ts);
                            ann.chain.get_or_insert(p.0);
                        } else if let Some(since) = h.blocked_since.take() {
                            h.blocked += 1;
                            h.blocked_ns += ev.ts.saturating_sub(since);
                            ann.chain.get_or_insert(p.0);
                        } else if h.on_cpu.is_none() && h.wake.is_some() {
                            let since = if first { *runnable_ts } else { h.wake.as_ref().map(|w| w.ts).unwrap_or(*runnable_ts) };
                            first = false;
                            h.on_cpu = Some(OnCpu {
                                ts: ev.ts,
                                cpu: ev.cpu,
                                prev_cpu: *prev_cpu,
                                migrated: *prev_cpu != ev.cpu,
                                runq_ns: ev.ts.saturating_sub(since),
                                never_left: false,
                                replaced: Some(Task { pid: 0, tid: *prev_tid, comm: prev_comm.clone() }),
                            });
                            ann.chain.get_or_insert(p.0);
                        }
                    }
                }
            }
            Kind::SwitchOut { involuntary, woken, state, next_tid, .. } => {
                // A switch-out ends whatever the last one began: if its
                // switch-in was a lost record, that wait is unknown, not this long.
                if !self.tracer_preempted.is_empty() {
                    self.tracer_preempted.remove(&tid);
                }
                if *involuntary {
                    self.stats.involuntary_switches += 1;
                    let t = self.threads.entry(tid).or_default();
                    // Off its CPU already: the switch-in of the run now ending is missing.
                    if std::mem::replace(&mut t.preempted, true) || std::mem::take(&mut t.asleep) {
                        self.stats.missed_switch_ins += 1;
                    }
                    if self.tracer_tid != 0 && *next_tid == self.tracer_tid {
                        *self.stats.preempted_by_tracer.get_or_insert(0) += 1;
                        self.tracer_preempted.insert(tid, ev.ts);
                    }
                } else {
                    self.stats.voluntary_switches += 1;
                }
                ann.chain = self.threads.get(&tid).and_then(|t| t.pending.first()).map(|p| p.0);
                // A dead thread's last switch-out comes after its task_exit: no new state for it.
                if !*involuntary && *state & TASK_DEAD == 0 {
                    let t = self.threads.entry(tid).or_default();
                    // Off its CPU already (asleep or preempted): it ran since, so the
                    // switch-in record of that run is missing.
                    let missed_in = t.asleep || std::mem::take(&mut t.preempted);
                    t.asleep = !*woken;
                    // Asleep again in epoll_wait without having returned: woken for nothing.
                    let in_epoll = t.in_epoll;
                    let epfd = t.last_enter_epfd;
                    let pending = t.pending.clone();
                    if missed_in {
                        self.stats.missed_switch_ins += 1;
                    }
                    // An uninterruptible sleep (a mutex such as the epoll set's, a
                    // socket lock in accept) is not a wait for events: the thread
                    // is still on its way to handle what woke it. TASK_WAKING
                    // (kernels before 5.18) says nothing of the state.
                    let on_a_lock = *state != TASK_WAKING && *state & (TASK_UNINTERRUPTIBLE | TASK_RTLOCK_WAIT) != 0;
                    let ts = ev.ts;
                    for p in pending {
                        if let Some(h) = self.hop_mut(p) {
                            if missed_in {
                                // The switch-in that ended that block is lost: its
                                // length is unknown, and it must not take the next wake-up.
                                h.blocked_since = None;
                            }
                            // A relayed wake-up finds the thread inside epoll_wait too.
                            let via_epoll = h.wake.as_ref().map(|w| w.via_epoll).unwrap_or(false) || h.relayed;
                            if in_epoll && h.actions.is_empty() && h.epoll.as_ref().is_some_and(|e| e.awaits_nested(epfd)) {
                                // Asleep in the nested instance its outer return listed: it was empty.
                                h.slept_again = Some(ts);
                            } else if (h.epoll.is_some() && !in_epoll) || (on_a_lock && !*woken && h.wake.is_some() && h.epoll.is_none()) {
                                h.blocked_since = Some(ts);
                            } else if *woken {
                                // Its wake-up found it still running, and it is runnable again: it waits
                                // for a CPU from here, and the switch-in says when it got one.
                                if h.on_cpu.as_ref().is_some_and(|o| o.never_left) {
                                    h.on_cpu = None;
                                }
                            } else if (h.on_cpu.is_some() || missed_in) && h.epoll.is_none() && h.wake.is_some() {
                                if !(in_epoll || via_epoll) {
                                    // Woken outside epoll (a futex, a blocking accept or read), ran,
                                    // and sleeps again: that wake-up's story is over. Left open, it
                                    // held back every later chain until the thread's next wake-up.
                                    h.done = true;
                                } else if h.actions.is_empty() {
                                    h.slept_again = Some(ts);
                                }
                            }
                        }
                    }
                    self.finish_hops(tid, |h| h.slept_again.is_some() || h.done);
                }
            }
            Kind::EpollEnter { epfd, .. } => self.epoll_entered(tid, ev.ts, *epfd),
            Kind::EpollExit { epfd, ret, syscall, events, enter_ts } => {
                if *enter_ts != 0 && self.threads.get(&tid).map(|t| *enter_ts > t.last_enter_ts).unwrap_or(true) {
                    // Its enter was not written (nothing happened to the thread in the call): it is implied.
                    self.epoll_entered(tid, *enter_ts, *epfd);
                }
                let t = self.threads.entry(tid).or_default();
                t.in_epoll = false;
                let woken_in_closed_chain = std::mem::take(&mut t.woken_in_closed_chain);
                let mut returned: Vec<ReturnedEvent> = self.spare_returned.pop().unwrap_or_default();
                returned.reserve(events.len());
                for e in events.iter() {
                    let (fd, sock) = self.resolve(pid, *epfd, e.data);
                    self.stats.epoll_data_unmapped += u64::from(fd.is_none());
                    ann.ep_fds.push(fd);
                    returned.push(ReturnedEvent { events: e.events, data: e.data, fd, sock });
                }
                let mut pending = std::mem::take(&mut self.scratch_pending);
                pending.clear();
                if let Some(t) = self.threads.get(&tid) {
                    pending.extend_from_slice(&t.pending);
                }
                pending.retain(|p| {
                    self.open
                        .get(&p.0)
                        .and_then(|c| c.hops.get(p.1))
                        .map(|h| h.epoll.as_ref().is_none_or(|e| e.awaits_nested(*epfd)))
                        .unwrap_or(false)
                });
                if pending.is_empty() && *ret > 0 {
                    // Events were ready: epoll_wait returned without sleeping.
                    let id = self.new_chain(ev.ts);
                    if let Some(c) = self.open.get_mut(&id) {
                        // No wake-up: it found the event while running (or its
                        // wake-up's chain was closed before this return).
                        c.hops.push(Hop { target: ev.task.clone(), ..Default::default() });
                        c.woken_in_closed_chain = woken_in_closed_chain;
                    }
                    self.threads.entry(tid).or_default().pending.push((id, 0));
                    pending.push((id, 0));
                }
                // Every returned event read (not an unreadable array, not past the
                // first 16) and resolved: only then can "not listed" be told.
                let all_known = returned.len() as i64 >= i64::from(*ret) && returned.iter().all(|r| r.fd.is_some());
                let mut returned = Some(returned);
                for (i, p) in pending.iter().enumerate() {
                    let evs = returned.as_deref().unwrap_or_default();
                    let lists_sock = self.open.get(&p.0).and_then(|c| c.sock.as_ref()).map(|s| {
                        if !s.fds.iter().any(|(fp, _)| *fp == pid) {
                            None
                        } else {
                            Some(evs.iter().any(|r| r.fd.map(|f| s.fds.contains(&(pid, f))).unwrap_or(false)))
                        }
                    });
                    // The last hop takes the array, the others a copy.
                    let evs = if i + 1 == pending.len() { returned.take().unwrap_or_default() } else { evs.to_vec() };
                    if let Some(h) = self.hop_mut(*p) {
                        let r = EpollReturn {
                            ts: ev.ts,
                            epfd: *epfd,
                            ret: *ret,
                            syscall: *syscall,
                            events: evs,
                            lists_sock: match lists_sock.flatten() {
                                Some(false) if !all_known => None,
                                other => other,
                            },
                            nested: None,
                        };
                        match &mut h.epoll {
                            // The outer return listed the nested instance, never the socket.
                            Some(outer) => {
                                outer.lists_sock = r.lists_sock;
                                outer.nested = Some(Box::new(r));
                            }
                            None => h.epoll = Some(r),
                        }
                        ann.chain.get_or_insert(p.0);
                    }
                }
                self.scratch_pending = pending;
                if *ret < 0 {
                    // An error (EINTR): nothing to handle. A timeout (0) stays
                    // open like a return of events: the loop's timer callbacks
                    // run next, and join the timer's chain until the thread waits again.
                    self.finish_hops(tid, |h| h.epoll.is_some());
                }
            }
            Kind::EpollCtl { epfd, op, fd, data, err, .. } => {
                match *op {
                    EPOLL_CTL_ADD | EPOLL_CTL_MOD if *err == 0 => self.epoll_map.insert(pid, *epfd, *data, *fd),
                    EPOLL_CTL_DEL => self.epoll_map.remove_in(pid, *epfd, *fd),
                    _ => {}
                }
                ann.chain = self.active_chain(tid, |_| false);
            }
            Kind::EpollMap { epfd, fd, data } | Kind::EpollReg { epfd, fd, data, .. } => self.epoll_map.insert(pid, *epfd, *data, *fd),
            Kind::RecordsLost { records } => {
                self.stats.records_lost = self.stats.records_lost.saturating_add(*records);
                // A switch-in may be among them: those waits are unknown.
                self.tracer_preempted.clear();
                // Which chain the lost records were of is unknown: every open one may miss a step.
                for c in self.open.values_mut() {
                    c.records_lost = true;
                }
            }
            Kind::FdMap { ino, fd } => self.fds.insert(*ino, pid, *fd),
            Kind::Accept { syscall, listen_fd, ret, peer, listen, backlog, max_backlog, .. } => {
                if *ret >= 0 {
                    self.stats.accepts += 1;
                    if let Some(p) = peer {
                        self.fds.insert(p.ino, pid, *ret);
                        self.remember(p);
                    }
                } else if *ret == -11 {
                    self.stats.accept_eagain += 1;
                } else {
                    self.stats.accept_errors += 1;
                }
                if let Some(l) = listen {
                    self.fds.insert(l.ino, pid, *listen_fd);
                }
                let lfd = *listen_fd;
                let lino = listen.as_ref().map(|l| l.sk);
                let id = self.active_chain(tid, |c| {
                    c.sock.as_ref().map(|s| Some(s.sock.sk) == lino).unwrap_or(false)
                        || c.hops.iter().any(|h| h.target.tid == tid && h.epoll.as_ref().is_some_and(|e| e.lists_fd(lfd)))
                });
                if let Some(id) = id {
                    let action = Action::Accept {
                        ts: ev.ts,
                        syscall: *syscall,
                        listen_fd: *listen_fd,
                        ret: *ret,
                        peer: peer.as_deref().cloned(),
                        listen: listen.as_deref().cloned(),
                        backlog: *backlog,
                        max_backlog: *max_backlog,
                    };
                    self.push_action(id, tid, action);
                }
                ann.chain = id;
            }
            Kind::Close { fd, sock } => {
                self.stats.closes += 1;
                self.stats.socket_closes += u64::from(sock.is_some());
                // A peer, even after a reset: not a socket that never connected (lighttpd's probe socket).
                self.stats.connection_closes +=
                    u64::from(sock.as_ref().is_some_and(|s| s.ip() && s.protocol == 6 && !s.is_listen() && s.remote.port() != 0));
                let f = *fd;
                let sk = sock.as_ref().map(|s| s.sk);
                let id = self.active_chain(tid, |c| {
                    c.sock.as_ref().map(|s| Some(s.sock.sk) == sk).unwrap_or(false)
                        || c.hops.iter().any(|h| h.target.tid == tid && h.epoll.as_ref().is_some_and(|e| e.lists_fd(f)))
                });
                if let Some(id) = id {
                    self.push_action(id, tid, Action::Close { ts: ev.ts, fd: *fd, sock: sock.as_deref().cloned() });
                    // A socket closed before /proc was read for it: its close names the fd.
                    if let Some(s) = self.open.get_mut(&id).and_then(|c| c.sock.as_mut()) {
                        if Some(s.sock.sk) == sk && s.fds.is_empty() {
                            s.fds.push((pid, f));
                        }
                    }
                }
                if let Some(ino) = self.fds.ino(pid, *fd) {
                    if self.fds.fds(ino).len() <= 1 {
                        self.forget(ino);
                    }
                }
                self.fds.remove(pid, *fd);
                self.epoll_map.remove_fd(pid, f);
                ann.chain = id;
            }
            Kind::Napi { seq, dev, work, budget } => {
                if let Some(&(id, _)) = self.by_seq.get(seq) {
                    if let Some(s) = self.open.get_mut(&id).and_then(|c| c.sock.as_mut()) {
                        s.napi = Some(NapiPoll { ts: ev.ts, cpu: ev.cpu, dev: dev.clone(), work: *work, budget: *budget });
                        ann.chain = Some(id);
                    }
                }
            }
            Kind::Handler { id: hid, fd, name, flags, .. } => {
                self.stats.handlers += 1;
                let f = fd.map(|f| f as i32);
                let id = self.active_chain(tid, |c| {
                    f.is_some_and(|f| c.hops.iter().any(|h| h.target.tid == tid && h.epoll.as_ref().is_some_and(|e| e.lists_fd(f))))
                });
                if let Some(cid) = id {
                    let action = Action::Handler {
                        ts: ev.ts,
                        name: name.clone().unwrap_or_else(|| format!("handler #{hid}")),
                        fd: *fd,
                        flags: flags.clone(),
                    };
                    self.push_action(cid, tid, action);
                }
                ann.chain = id;
            }
            // A forked child (nginx's new worker after a reload) has its
            // parent's sockets from the start: its first wake-ups must find them.
            Kind::TaskNew { child, reason: 1 } => {
                self.fds.copy_pid(pid, child.pid);
                self.epoll_map.copy_pid(pid, child.pid);
            }
            // A target ran a new program: what it held may be gone (close-on-exec,
            // no syscall). The live reader re-reads its sockets from /proc after this.
            Kind::TaskNew { child, reason: 3 } => {
                self.forget_fds(child.pid);
                // Run by a thread other than the leader: it goes on as `child.tid`, its old tid ends.
                if tid != child.tid {
                    self.end_thread(tid);
                }
            }
            Kind::SockState { .. } | Kind::TaskNew { .. } => {}
            Kind::TaskExit { group_dead } => {
                self.end_thread(tid);
                if *group_dead {
                    // Pids are reused too: a new process must not resolve through this one's fds.
                    self.forget_fds(pid);
                }
            }
        }
        ann
    }

    /// Tids are reused: a new thread must not inherit this one's hops or state.
    fn end_thread(&mut self, tid: u32) {
        self.finish_hops(tid, |_| true);
        self.threads.remove(&tid);
    }

    /// What process `pid` held (fds, epoll words) is no longer known to be its.
    fn forget_fds(&mut self, pid: u32) {
        self.fds.remove_pid(pid);
        self.epoll_map.remove_pid(pid);
    }

    // The socket view changes only here (its counter feeds `resolve`'s cache).
    fn remember(&mut self, s: &SockInfo) {
        if s.ino != 0 {
            self.socks.insert(s.ino, std::rc::Rc::new(s.clone()));
            self.socks_gen += 1;
        }
    }

    fn forget(&mut self, ino: u64) {
        self.socks.remove(&ino);
        self.socks_gen += 1;
    }

    /// The fd and socket an epoll data word stands for. Three map lookups,
    /// for each of the ~5 entries of every epoll_wait return, and the
    /// answer rarely changes: cached until any of the three maps changes.
    fn resolve(&mut self, pid: u32, epfd: i32, data: u64) -> (Option<i32>, Option<std::rc::Rc<SockInfo>>) {
        let key = (pid, epfd, data);
        if let Some(r) = self.cached(key) {
            return (r.fd, r.sock.clone());
        }
        let gen = self.resolved_gen();
        if self.resolved.is_empty() {
            self.resolved.resize(Resolved::SLOTS, Resolved::default());
        }
        let slot = &mut self.resolved[Resolved::slot(key)];
        let fd = self.epoll_map.get(pid, epfd, data);
        let sock = fd.and_then(|f| self.fds.ino(pid, f)).and_then(|ino| self.socks.get(&ino)).cloned();
        *slot = Resolved { key, gen, fd, sock: sock.clone() };
        (fd, sock)
    }

    /// An `epoll_enter` already seen: recordings of builds before the BPF
    /// side claimed each call's lazy enter with a compare-and-swap can hold
    /// two, one from the thread's CPU and one from a waker's; the copy
    /// carries nothing new.
    pub fn repeated_enter(&self, ev: &Event) -> bool {
        matches!(ev.kind, Kind::EpollEnter { .. }) && self.threads.get(&ev.task.tid).is_some_and(|t| t.in_epoll && t.last_enter_ts == ev.ts)
    }

    /// Whether `wake`, the record after socket event `ready` on its CPU,
    /// joins its chain (else the socket event is left out). The next record
    /// is not always its wake-up: then the socket event stands.
    pub fn joins(&self, ready: &Event, wake: &Event) -> bool {
        match (&ready.kind, &wake.kind) {
            (Kind::SockReady { seq, hook, .. }, Kind::Wake { sock_seq, target, cause, .. }) if seq == sock_seq => {
                self.handling(target.tid).is_none() && hook_matches(*hook, cause.unwrap_or(Cause::Unknown))
            }
            _ => true,
        }
    }

    /// Whether the one entry `tid`'s epoll_wait returned may be mapped to a
    /// stale fd: the word stands for a socket other than the one the kernel
    /// read off that thread's ready list when it woke it, which `pid` holds.
    /// A server that reuses data words (apache: a pool's connection struct)
    /// moves a word to a new fd with an EPOLL_CTL_DEL and ADD netdrift does
    /// not see without `--epoll-ctl`, the old fd still open. (Another
    /// thread may also have taken that socket first: then /proc says so.)
    /// Returns that socket's inode.
    pub fn return_maybe_stale(&self, tid: u32, pid: u32, epfd: i32, events: &[EpEvent]) -> Option<u64> {
        let [e] = events else { return None };
        let ino = self.epoll_map.get(pid, epfd, e.data).and_then(|fd| self.fds.ino(pid, fd))?;
        self.pending(tid).find_map(|(_, c, h)| {
            let s = c.sock.as_ref().filter(|s| s.hook == ReadyHook::EpollItem)?;
            let held = self.fds.fds(s.sock.ino).iter().any(|&(p, _)| p == pid);
            (h.epoll.is_none() && h.wake.as_ref().is_some_and(|w| w.via_epoll) && s.sock.ino != ino && held).then_some(s.sock.ino)
        })
    }

    /// Socket event `seq` began `chain`.
    pub fn seq_in_chain(&self, seq: u64, chain: Option<u64>) -> bool {
        chain.is_some() && self.by_seq.get(&seq).map(|p| p.0) == chain
    }

    /// The chain whose readiness `waker` passes on: woken through epoll and
    /// not returned yet, it is inside epoll_wait, where the only thread it
    /// can wake (not through ep_poll_callback) is the next waiter of the same
    /// instance, because level-triggered items stay ready (ep_done_scan).
    /// That is the same readiness. (Neither thread's epoll_enter need have
    /// been seen: both may have waited since before the trace.) A thread
    /// woken by such a relay is inside epoll_wait too, and passes it on again.
    fn relayed_by(&self, waker: u32) -> Option<u64> {
        self.pending_hops(waker, |_, h| h.epoll.is_none() && h.wake.as_ref().is_some_and(|w| w.via_epoll || h.relayed)).next().map(|p| p.0)
    }

    /// A hop the thread is handling: its epoll_wait returned in it, and it
    /// has not called epoll_wait again.
    fn handling(&self, tid: u32) -> Option<(u64, usize)> {
        let t = self.threads.get(&tid)?;
        if !t.in_epoll {
            if let Some(p) = self.returned_hops(tid).next() {
                return Some(p);
            }
        }
        // Blocked on a lock on its way to the return: the wake-up is the lock's.
        self.pending_hops(tid, |_, h| h.blocked_since.is_some()).next()
    }

    /// The thread's pending hops for which `pred(chain, hop)` holds.
    fn pending_hops<'a>(&'a self, tid: u32, pred: impl Fn(&Chain, &Hop) -> bool + 'a) -> impl Iterator<Item = (u64, usize)> + 'a {
        self.pending(tid).filter(move |(_, c, h)| pred(c, h)).map(|(p, _, _)| p)
    }

    /// The thread's pending hops still open, with their chains.
    fn pending(&self, tid: u32) -> impl Iterator<Item = ((u64, usize), &Chain, &Hop)> + '_ {
        let pending = self.threads.get(&tid).map(|t| t.pending.as_slice()).unwrap_or_default();
        pending.iter().filter_map(move |&p| {
            let c = self.open.get(&p.0)?;
            Some((p, &**c, c.hops.get(p.1)?))
        })
    }

    /// The thread's pending hops whose epoll_wait has returned in them.
    fn returned_hops(&self, tid: u32) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.pending_hops(tid, |_, h| h.epoll.is_some())
    }

    /// The thread's pending hops that woke it where it blocked on the chain's
    /// socket itself, in `accept` or a read/recv/write/send (no epoll), or
    /// that handed it the chain's work, and that it has run in since: what
    /// it does next handles that socket.
    fn blocked_on_sock_hops(&self, tid: u32) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.pending_hops(tid, |c, h| {
            (h.handoff || c.sock.as_ref().is_some_and(|s| matches!(s.hook, ReadyHook::Accept | ReadyHook::IoWait)))
                && h.epoll.is_none()
                && h.on_cpu.is_some()
                && h.wake.as_ref().is_some_and(|w| !w.via_epoll)
        })
    }

    /// The chain this thread is handling now (it returned from epoll_wait in
    /// it, or was woken where it blocked on the chain's socket): the one
    /// `prefer` picks, else the first.
    fn active_chain(&self, tid: u32, prefer: impl Fn(&Chain) -> bool) -> Option<u64> {
        let mut active: Vec<u64> = self.returned_hops(tid).map(|p| p.0).collect();
        if active.is_empty() {
            active.extend(self.blocked_on_sock_hops(tid).map(|p| p.0));
        }
        active.iter().copied().find(|id| self.open.get(id).map(|c| prefer(c)).unwrap_or(false)).or_else(|| active.first().copied())
    }

    fn push_action(&mut self, id: u64, tid: u32, a: Action) {
        let idx = self.threads.get(&tid).and_then(|t| t.pending.iter().find(|p| p.0 == id)).map(|p| p.1);
        if let Some(idx) = idx {
            if let Some(h) = self.hop_mut((id, idx)) {
                h.actions.push(a);
            }
        }
    }

    /// The fd an epoll data word stands for in `pid`'s `epfd`, if known.
    /// Asked for every entry of every epoll_wait return before it is
    /// correlated: answered from `resolve`'s cache when it is current.
    pub fn epoll_fd(&self, pid: u32, epfd: i32, data: u64) -> Option<i32> {
        match self.cached((pid, epfd, data)) {
            Some(r) => r.fd,
            None => self.epoll_map.get(pid, epfd, data),
        }
    }

    /// Sum of the change counters `Resolved` entries are valid for.
    fn resolved_gen(&self) -> u64 {
        self.fds.gen + self.epoll_map.gen + self.socks_gen
    }

    /// `resolve`'s cached answer for `key`, if it is still current.
    fn cached(&self, key: (u32, i32, u64)) -> Option<&Resolved> {
        let gen = self.resolved_gen();
        self.resolved.get(Resolved::slot(key)).filter(|r| r.gen == gen && r.key == key && gen != 0)
    }

    pub fn open_chains(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
pub(crate) mod tests;
