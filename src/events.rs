//! Ring-buffer records -> typed [`Event`]s.
//!
//! The record layouts come from the skeleton's generated `types` (defined once
//! in `src/bpf/netdrift.h`). [`Event`] is the user-space form: owned, serde
//! (de)serializable, so the same analysis runs live, on recordings and on
//! hand-written fixtures.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::skel::types;

/// A task as the kernel named it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    /// Shared: a server has a handful of names and every record carries one.
    pub comm: Rc<str>,
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", crate::output::term_safe(&self.comm), self.tid)
    }
}

/// A socket as seen from the kernel. Serialized with its `state_name` too.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SockInfo {
    /// `struct sock` address.
    #[serde(deserialize_with = "hex_u64::deserialize")]
    pub sk: u64,
    /// Socket inode (what `/proc/PID/fd` shows as `socket:[ino]`), 0 if none.
    pub ino: u64,
    pub netns: u32,
    pub family: u16,
    pub protocol: u16,
    /// Unspecified (0.0.0.0:0) for a socket without IP addresses (unix): JSON null.
    #[serde(deserialize_with = "addr_or_null")]
    pub local: SocketAddr,
    #[serde(deserialize_with = "addr_or_null")]
    pub remote: SocketAddr,
    /// Kernel TCP state number (`include/net/tcp_states.h`).
    pub state: u8,
}

impl Serialize for SockInfo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("SockInfo", 10)?;
        st.serialize_field("sk", &format_args!("0x{:x}", self.sk))?;
        st.serialize_field("ino", &self.ino)?;
        st.serialize_field("netns", &self.netns)?;
        st.serialize_field("family", &self.family)?;
        st.serialize_field("protocol", &self.protocol)?;
        st.serialize_field("local", &self.ip().then_some(self.local))?;
        st.serialize_field("remote", &self.ip().then_some(self.remote))?;
        st.serialize_field("state", &self.state)?;
        st.serialize_field("state_name", self.state_name())?;
        st.end()
    }
}

impl SockInfo {
    pub fn state_name(&self) -> &'static str {
        tcp_state_name(self.state as i32)
    }
    pub fn is_listen(&self) -> bool {
        self.state == 10
    }

    /// Has IP addresses: IPv4, IPv6 (or an unknown family, 0, as in older recordings).
    pub fn ip(&self) -> bool {
        matches!(self.family, 0 | 2 | 10)
    }

    /// The family of a socket without IP addresses, as `ss` names it.
    fn family_name(&self) -> String {
        match self.family {
            1 => "unix".into(),
            16 => "netlink".into(),
            17 => "packet".into(),
            40 => "vsock".into(),
            f => format!("family {f}"),
        }
    }

    /// Its local address, or for a socket without IP addresses its family and inode.
    pub fn local_text(&self) -> String {
        if self.ip() {
            self.local.to_string()
        } else {
            format!("{} ino {}", self.family_name(), self.ino)
        }
    }

    /// Its remote address, or for a socket without IP addresses its family.
    pub fn remote_text(&self) -> String {
        if self.ip() {
            self.remote.to_string()
        } else {
            self.family_name()
        }
    }

    /// The IP protocol's name when it is not TCP (whose states the other
    /// lines name): `udp`, as `ss` names it.
    fn non_tcp_name(&self) -> Option<String> {
        match self.protocol {
            // 0: an older recording; 262: MPTCP, with TCP's states.
            0 | 6 | 262 => None,
            17 => Some("udp".into()),
            136 => Some("udplite".into()),
            255 => Some("raw".into()),
            p => Some(format!("ip proto {p}")),
        }
    }

    /// One line: `LISTEN 1.2.3.4:80`, `ESTABLISHED local <- remote`,
    /// `unix ESTABLISHED` for a socket without IP addresses, `udp local` or
    /// `udp local <- remote` (connected) for UDP, whose kernel state is not
    /// a TCP state.
    pub fn describe(&self) -> String {
        if !self.ip() {
            format!("{} {}", self.family_name(), self.state_name())
        } else if let Some(proto) = self.non_tcp_name() {
            // UDP uses TCP_ESTABLISHED for a connected socket and TCP_CLOSE for one
            // that is only bound: a peer is shown only when there is one.
            if self.state == 1 && self.remote.port() != 0 {
                format!("{proto} {} <- {}", self.local, self.remote)
            } else {
                format!("{proto} {}", self.local)
            }
        } else if self.is_listen() {
            format!("{} {}", self.state_name(), self.local)
        } else {
            format!("{} {} <- {}", self.state_name(), self.local, self.remote)
        }
    }
}

/// A socket address, or null (a socket without IP addresses) as the unspecified one.
fn addr_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    Ok(Option::<SocketAddr>::deserialize(d)?.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))))
}

/// How a thread slept, from its task state at the switch-out (`prev_state`),
/// named as `ps` does (include/linux/sched.h, `__task_state_index`): the
/// modifier bits (freezable, wake-kill, no-load...) do not change the letter.
pub fn task_state_text(state: u32) -> String {
    const INTERRUPTIBLE: u32 = 0x1;
    const UNINTERRUPTIBLE: u32 = 0x2;
    const WAKEKILL: u32 = 0x100;
    const NOLOAD: u32 = 0x400;
    const RTLOCK_WAIT: u32 = 0x1000;
    if state & RTLOCK_WAIT != 0 {
        return "uninterruptible (D, rt lock)".into();
    }
    if state & (UNINTERRUPTIBLE | NOLOAD) == UNINTERRUPTIBLE | NOLOAD {
        return "idle (I)".into();
    }
    match state & 0xff {
        INTERRUPTIBLE => "sleeping (S)".into(),
        UNINTERRUPTIBLE if state & WAKEKILL != 0 => "killable (D)".into(),
        UNINTERRUPTIBLE => "uninterruptible (D)".into(),
        0x4 => "stopped (T)".into(),
        0x8 => "traced (t)".into(),
        0x40 => "parked (P)".into(),
        0x80 => "dead (X)".into(),
        _ => format!("blocked (state 0x{state:x})"),
    }
}

/// Name of a kernel TCP state.
pub fn tcp_state_name(s: i32) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// One entry of the array `epoll_wait` returned. Serialized with its
/// `flags` (EPOLLIN|...) and, once known, the `fd` the data stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct EpEvent {
    pub events: u32,
    pub data: u64,
    /// Filled for output from the correlator's epoll_ctl / fdinfo map.
    #[serde(default)]
    pub fd: Option<i32>,
}

impl Serialize for EpEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("EpEvent", 4)?;
        st.serialize_field("events", &self.events)?;
        st.serialize_field("flags", &epoll_flags(self.events))?;
        st.serialize_field("data", &self.data)?;
        st.serialize_field("fd", &self.fd)?;
        st.end()
    }
}

/// Which syscall an epoll or accept record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Syscall {
    EpollWait,
    EpollPwait,
    EpollPwait2,
    Accept,
    Accept4,
    Unknown,
}

impl Syscall {
    fn from_raw(v: u32) -> Self {
        match v {
            1 => Syscall::EpollWait,
            2 => Syscall::EpollPwait,
            3 => Syscall::EpollPwait2,
            4 => Syscall::Accept,
            5 => Syscall::Accept4,
            _ => Syscall::Unknown,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Syscall::EpollWait => "epoll_wait",
            Syscall::EpollPwait => "epoll_pwait",
            Syscall::EpollPwait2 => "epoll_pwait2",
            Syscall::Accept => "accept",
            Syscall::Accept4 => "accept4",
            Syscall::Unknown => "?",
        }
    }
}

/// A received packet (`net:netif_receive_skb`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packet {
    pub ts: u64,
    pub len: u32,
    pub ifindex: u32,
    /// Device name (`lo`, `eth0`...).
    pub dev: String,
}

/// What made a socket ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadyHook {
    /// `sock:sk_data_ready`: data or a new connection arrived (recordings of
    /// versions that hooked every socket).
    SkDataReady,
    /// `sock:inet_sock_set_state`: FIN, RST, handshake done.
    InetSockSetState,
    /// The first item on the woken thread's epoll ready list.
    EpollItem,
    /// The listener the woken thread was blocked on in accept.
    Accept,
    /// The socket the woken thread was blocked on in read, recv, write,
    /// send or connect (a thread per connection, no epoll).
    IoWait,
}

impl ReadyHook {
    /// The name in JSON (serde's snake_case), without serializing.
    pub fn key(self) -> &'static str {
        match self {
            ReadyHook::SkDataReady => "sk_data_ready",
            ReadyHook::InetSockSetState => "inet_sock_set_state",
            ReadyHook::EpollItem => "epoll_item",
            ReadyHook::Accept => "accept",
            ReadyHook::IoWait => "io_wait",
        }
    }
}

/// Why a thread was woken, read from the waker's kernel stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    SocketReadable,
    SocketWritable,
    SocketState,
    Timer,
    Eventfd,
    Pipe,
    Futex,
    Signal,
    /// Passed on by the epoll instance itself to its next waiter: an
    /// epoll_wait returning with level-triggered items still ready
    /// (ep_done_scan), or an epoll_ctl adding or modifying a ready fd.
    EpollRelay,
    Other,
    /// No stack was captured.
    Unknown,
}

impl Cause {
    pub fn name(self) -> &'static str {
        match self {
            Cause::SocketReadable => "socket readable",
            Cause::SocketWritable => "socket writable",
            Cause::SocketState => "socket state change",
            Cause::Timer => "timer",
            Cause::Eventfd => "eventfd",
            Cause::Pipe => "pipe",
            Cause::Futex => "futex",
            Cause::Signal => "signal",
            Cause::EpollRelay => "epoll relay",
            Cause::Other => "other",
            Cause::Unknown => "unknown",
        }
    }

    /// The name in JSON (serde's snake_case), without serializing.
    pub fn key(self) -> &'static str {
        match self {
            Cause::SocketReadable => "socket_readable",
            Cause::SocketWritable => "socket_writable",
            Cause::SocketState => "socket_state",
            Cause::Timer => "timer",
            Cause::Eventfd => "eventfd",
            Cause::Pipe => "pipe",
            Cause::Futex => "futex",
            Cause::Signal => "signal",
            Cause::EpollRelay => "epoll_relay",
            Cause::Other => "other",
            Cause::Unknown => "unknown",
        }
    }
}

/// In what context the waker ran, read from its stack and identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WakerContext {
    /// softirq run inside a process's own syscall (loopback sender, `__local_bh_enable_ip`).
    SoftirqInSyscall,
    /// softirq run on irq exit while a process was interrupted.
    SoftirqOnIrqExit,
    /// the per-CPU softirq thread.
    Ksoftirqd,
    /// an idle CPU (swapper/N) in irq or softirq.
    IdleIrq,
    /// hard irq on a busy CPU.
    Irq,
    /// plain process context (futex_wake, write to a pipe/eventfd...).
    Process,
    /// a kernel thread other than ksoftirqd.
    KernelThread,
    Unknown,
}

impl WakerContext {
    pub fn name(self) -> &'static str {
        match self {
            WakerContext::SoftirqInSyscall => "softirq in its own syscall",
            WakerContext::SoftirqOnIrqExit => "softirq on irq exit, interrupting it",
            WakerContext::Ksoftirqd => "ksoftirqd",
            WakerContext::IdleIrq => "irq on an idle CPU",
            WakerContext::Irq => "hard irq, interrupting it",
            WakerContext::Process => "process context",
            WakerContext::KernelThread => "kernel thread",
            WakerContext::Unknown => "unknown context",
        }
    }

    /// The name in JSON (serde's snake_case), without serializing.
    pub fn key(self) -> &'static str {
        match self {
            WakerContext::SoftirqInSyscall => "softirq_in_syscall",
            WakerContext::SoftirqOnIrqExit => "softirq_on_irq_exit",
            WakerContext::Ksoftirqd => "ksoftirqd",
            WakerContext::IdleIrq => "idle_irq",
            WakerContext::Irq => "irq",
            WakerContext::Process => "process",
            WakerContext::KernelThread => "kernel_thread",
            WakerContext::Unknown => "unknown",
        }
    }

    /// The waker ran as itself, not as an irq or softirq on top of whatever
    /// task the CPU was running.
    pub fn own(self) -> bool {
        !matches!(self, WakerContext::SoftirqOnIrqExit | WakerContext::Irq | WakerContext::IdleIrq)
    }
}

/// What happened; [`Event`] adds when, where and to whom.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Kind {
    /// A socket woke a target: read at the wake-up from the woken thread's
    /// epoll ready list or the listener it accepts on (older recordings:
    /// `sock:sk_data_ready`). The task is the waker.
    SockReady {
        sock: Box<SockInfo>,
        seq: u64,
        /// How the socket was found; a TCP state change (FIN, RST) says so.
        hook: ReadyHook,
        /// For a state change, the state it moved to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_state: Option<i32>,
        /// With --packets: the packet received on this CPU just before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        packet: Option<Box<Packet>>,
    },
    /// An application handler was entered (`--handler`, `--preset`).
    Handler {
        /// Index of the attached symbol.
        id: u32,
        fd: Option<i64>,
        events: Option<u64>,
        /// Symbol name, filled by the live pipeline.
        #[serde(default)]
        name: Option<String>,
        /// `events` decoded (EV_READ|EV_ET...), filled by the live pipeline.
        #[serde(default)]
        flags: Option<String>,
    },
    /// With --packets: the NAPI poll that carried chain `seq`'s packet ended.
    Napi {
        seq: u64,
        dev: String,
        work: i32,
        budget: i32,
    },
    /// A target thread was woken. The task is the waker.
    Wake {
        target: Task,
        /// `SockReady::seq` seen just before on this CPU (0: none).
        sock_seq: u64,
        /// Waker kernel stack, innermost first.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        stack: Vec<u64>,
        /// `bpf_get_stack` error, 0 if fine.
        #[serde(default, skip_serializing_if = "is_zero_i32")]
        stack_err: i32,
        target_cpu: u32,
        waker_is_kthread: bool,
        /// Woken while still on a CPU (no run-queue wait follows).
        target_on_rq: bool,
        /// Filled from the stack by the live pipeline.
        #[serde(default)]
        cause: Option<Cause>,
        #[serde(default)]
        context: Option<WakerContext>,
        /// The wake went through `ep_poll_callback`.
        #[serde(default)]
        via_epoll: bool,
        /// No stack was taken: the class is that of the last stack taken for
        /// the same waker, woken thread and `stack_sig` (`STACK_REUSE_NS`).
        #[serde(default, skip_serializing_if = "is_false")]
        stack_reused: bool,
        /// The socket hook and state, the waker's context and syscall
        /// (`nd_wake.stack_sig`): with the two threads, what a reused stack is
        /// looked up by.
        #[serde(default, serialize_with = "hex_u64::serialize", deserialize_with = "hex_u64::deserialize")]
        stack_sig: u64,
    },
    /// A target thread got a CPU after being woken or preempted.
    SwitchIn {
        runnable_ts: u64,
        prev_cpu: u32,
        after_preempt: bool,
        prev_tid: u32,
        prev_comm: Rc<str>,
    },
    /// A target thread left the CPU.
    SwitchOut {
        involuntary: bool,
        /// Voluntary, but a wake-up that found it still running was in flight:
        /// that wake-up puts it back on a run queue (a switch-in follows).
        #[serde(default, skip_serializing_if = "is_false")]
        woken: bool,
        state: u32,
        next_tid: u32,
        next_comm: Rc<str>,
    },
    EpollEnter {
        epfd: i32,
        maxevents: i32,
        syscall: Syscall,
    },
    EpollExit {
        enter_ts: u64,
        epfd: i32,
        ret: i32,
        syscall: Syscall,
        events: Vec<EpEvent>,
    },
    EpollCtl {
        epfd: i32,
        op: i32,
        fd: i32,
        events: u32,
        data: u64,
        err: i32,
    },
    Accept {
        enter_ts: u64,
        listen_fd: i32,
        /// New fd, or -errno.
        ret: i32,
        syscall: Syscall,
        backlog: u32,
        max_backlog: u32,
        listen: Option<Box<SockInfo>>,
        peer: Option<Box<SockInfo>>,
    },
    Close {
        fd: i32,
        sock: Option<Box<SockInfo>>,
    },
    SockState {
        sock: Box<SockInfo>,
        old: i32,
        new: i32,
    },
    /// A process joined the targets (`reason` 1: fork of a target, 2: exec
    /// matching -c), or a target ran a new program (3: exec).
    TaskNew {
        child: Task,
        reason: u32,
    },
    TaskExit {
        group_dead: bool,
    },
    /// A fact read from /proc by the live pipeline: socket inode `ino` is `fd` in `pid`.
    FdMap {
        ino: u64,
        fd: i32,
    },
    /// An accepted socket's registration, read from the kernel's epoll item at
    /// the accepting thread's next epoll_wait: in `epfd`, `data` stands for `fd`.
    EpollReg {
        epfd: i32,
        fd: i32,
        events: u32,
        data: u64,
    },
    /// A fact read from /proc/PID/fdinfo/EPFD: in `epfd`, `data` stands for `fd`.
    EpollMap {
        epfd: i32,
        fd: i32,
        data: u64,
    },
    /// Records of this CPU the ring buffer had no room for, just before
    /// this point of the stream (from the next record's header).
    RecordsLost {
        records: u64,
    },
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// One event: when (CLOCK_MONOTONIC ns), on which CPU, about which task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub ts: u64,
    pub cpu: u32,
    pub task: Task,
    #[serde(flatten)]
    pub kind: Kind,
}

/// The `type` of each event kind, indexed by [`Event::type_index`].
pub const TYPE_NAMES: [&str; 18] = [
    "sock_ready",
    "wake",
    "switch_in",
    "switch_out",
    "epoll_enter",
    "epoll_exit",
    "epoll_ctl",
    "accept",
    "close",
    "sock_state",
    "task_new",
    "task_exit",
    "fd_map",
    "epoll_map",
    "epoll_reg",
    "napi",
    "handler",
    "records_lost",
];

impl Event {
    /// The record's task when the record was made in that task's own
    /// context: a socket's readiness or state change, a NAPI poll and a
    /// wake-up from an irq may run on top of any task (a shell about to exec
    /// the real program), which must not name anything after itself.
    pub fn own_task(&self) -> Option<&Task> {
        match &self.kind {
            Kind::SockReady { .. } | Kind::SockState { .. } | Kind::Napi { .. } | Kind::RecordsLost { .. } => None,
            Kind::Wake { context: Some(c), .. } if !c.own() => None,
            _ => Some(&self.task),
        }
    }

    /// Index of its kind in [`TYPE_NAMES`].
    pub fn type_index(&self) -> usize {
        match &self.kind {
            Kind::SockReady { .. } => 0,
            Kind::Wake { .. } => 1,
            Kind::SwitchIn { .. } => 2,
            Kind::SwitchOut { .. } => 3,
            Kind::EpollEnter { .. } => 4,
            Kind::EpollExit { .. } => 5,
            Kind::EpollCtl { .. } => 6,
            Kind::Accept { .. } => 7,
            Kind::Close { .. } => 8,
            Kind::SockState { .. } => 9,
            Kind::TaskNew { .. } => 10,
            Kind::TaskExit { .. } => 11,
            Kind::FdMap { .. } => 12,
            Kind::EpollMap { .. } => 13,
            Kind::EpollReg { .. } => 14,
            Kind::Napi { .. } => 15,
            Kind::Handler { .. } => 16,
            Kind::RecordsLost { .. } => 17,
        }
    }

    pub fn type_name(&self) -> &'static str {
        TYPE_NAMES[self.type_index()]
    }
}

/// A record that could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("record type {tag} needs {need} bytes, got {got}")]
    Truncated { tag: u32, need: usize, got: usize },
    #[error("unknown record type {0}")]
    UnknownType(u32),
}

/// Copy a `T` out of a byte slice; None if it is too short.
fn read<T: Copy + Default>(data: &[u8]) -> Option<T> {
    if data.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked above, T is a plain-old-data repr(C) type
    // generated from the BPF object's BTF, and read_unaligned has no alignment
    // requirement.
    Some(unsafe { std::ptr::read_unaligned(data.as_ptr() as *const T) })
}

/// A record in place, or a copy when its bytes are not aligned for `T`.
enum Rec<'a, T> {
    Ref(&'a T),
    Own(T),
}

impl<T> std::ops::Deref for Rec<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Rec::Ref(r) => r,
            Rec::Own(r) => r,
        }
    }
}

/// The record as `T`, read in place: ring-buffer records are 8-byte aligned,
/// and copying a whole record (the epoll array, the stack) would touch cache
/// lines the decoder never reads.
fn need<T: Copy + Default>(tag: u32, data: &[u8]) -> Result<Rec<'_, T>, DecodeError> {
    let truncated = || DecodeError::Truncated { tag, need: std::mem::size_of::<T>(), got: data.len() };
    if data.len() < std::mem::size_of::<T>() {
        return Err(truncated());
    }
    if (data.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
        // SAFETY: the length and the alignment are checked above, T is a
        // plain-old-data repr(C) type generated from the BPF object's BTF (any
        // bit pattern is a valid value), and the borrow lives as long as `data`.
        return Ok(Rec::Ref(unsafe { &*(data.as_ptr() as *const T) }));
    }
    read::<T>(data).map(Rec::Own).ok_or_else(truncated)
}

/// A kernel `char[16]` as a shared string, from a small per-thread cache of
/// recent names: no allocation for a name seen lately.
pub fn comm_rc(c: &[i8; 16]) -> Rc<str> {
    const SLOTS: usize = 32;
    /// (next slot to replace, recent (raw name, name) pairs)
    type Recent = (usize, Vec<([i8; 16], Rc<str>)>);
    thread_local! {
        static RECENT: std::cell::RefCell<Recent> = const { std::cell::RefCell::new((0, Vec::new())) };
    }
    // The BPF side copies a name up to its NUL into unzeroed ring-buffer
    // memory: the bytes after it are garbage, and must not split the key.
    let mut key = [0i8; 16];
    let n = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    key[..n].copy_from_slice(&c[..n]);
    let c = &key;
    RECENT.with(|r| {
        let mut r = r.borrow_mut();
        if let Some((_, name)) = r.1.iter().find(|(k, _)| k == c) {
            return name.clone();
        }
        let name: Rc<str> = comm_str(c).into();
        let (next, slots) = &mut *r;
        if slots.len() < SLOTS {
            slots.push((*c, name.clone()));
        } else {
            slots[*next] = (*c, name.clone());
            *next = (*next + 1) % SLOTS;
        }
        name
    })
}

/// A kernel `char[16]` as a String (lossy, up to the first NUL).
pub fn comm_str(c: &[i8]) -> String {
    let n = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    // SAFETY: i8 and u8 have the same size and alignment; n <= c.len().
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(c.as_ptr() as *const u8, n) };
    // One allocation per name: this runs for every record.
    String::from_utf8_lossy(bytes).into_owned()
}

fn ip(family: u16, raw: &[u8; 16]) -> IpAddr {
    match family {
        10 => Ipv6Addr::from(*raw).to_canonical(),
        2 => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}

fn sock(s: &types::nd_sock) -> Option<SockInfo> {
    if s.sk == 0 {
        return None;
    }
    Some(SockInfo {
        sk: s.sk,
        ino: s.ino,
        netns: s.netns,
        family: s.family,
        protocol: s.protocol,
        local: SocketAddr::new(ip(s.family, &s.laddr), s.lport),
        remote: SocketAddr::new(ip(s.family, &s.raddr), s.rport),
        state: s.state,
    })
}

fn task(h: &types::nd_hdr) -> Task {
    Task { pid: h.pid, tid: h.tid, comm: comm_rc(&h.comm) }
}

/// Per CPU, the lost-record count of its last record: a change is a gap
/// in the stream, just before the record that shows it.
#[derive(Debug, Default)]
pub struct GapFinder {
    last: Vec<u32>,
}

/// Records lost just before a record: on `cpu` (the CPU that wrote it), at about `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub cpu: u32,
    pub ts: u64,
    pub records: u64,
}

impl Gap {
    /// As an event of the stream, before the record that showed it.
    pub fn event(&self) -> Event {
        Event {
            ts: self.ts,
            cpu: self.cpu,
            task: Task { pid: 0, tid: 0, comm: "".into() },
            kind: Kind::RecordsLost { records: self.records },
        }
    }
}

impl GapFinder {
    /// The records lost on this record's CPU since that CPU's previous
    /// record, if any (counts start at 0 when the programs are loaded).
    pub fn gap_before(&mut self, data: &[u8]) -> Option<Gap> {
        let h: types::nd_hdr = read(data)?;
        let cpu = h.cpu as usize;
        if cpu >= self.last.len() {
            self.last.resize(cpu + 1, 0);
        }
        let n = h.cpu_lost.wrapping_sub(self.last[cpu]);
        // A count below the last one: this record was reserved before a
        // nested program's failed reserve that the last record already
        // showed (the count is read after the reserve). Not a gap.
        if n == 0 || n > u32::MAX / 2 {
            return None;
        }
        self.last[cpu] = h.cpu_lost;
        Some(Gap { cpu: h.cpu as u32, ts: h.ts, records: n as u64 })
    }
}

/// Decode one ring-buffer record.
pub fn decode(data: &[u8]) -> Result<Event, DecodeError> {
    let h: types::nd_hdr = read(data).ok_or(DecodeError::Short(data.len()))?;
    let tag = h.r#type as u32;
    let mut cpu = h.cpu as u32;
    let kind = match tag {
        1 => {
            let r = need::<types::nd_sock_ready>(tag, data)?;
            let s = sock(&r.sock).unwrap_or_else(|| null_sock(r.sock.sk));
            let (hook, new_state) = match r.hook {
                2 => (ReadyHook::InetSockSetState, Some(r.newstate)),
                3 => (ReadyHook::EpollItem, None),
                4 => (ReadyHook::Accept, None),
                5 => (ReadyHook::IoWait, None),
                _ => (ReadyHook::SkDataReady, None),
            };
            let packet =
                (r.pkt_ts != 0).then(|| Packet { ts: r.pkt_ts, len: r.pkt_len, ifindex: r.pkt_ifindex, dev: comm_str(&r.pkt_dev) });
            Kind::SockReady { sock: Box::new(s), seq: r.seq, hook, new_state, packet: packet.map(Box::new) }
        }
        2 => {
            let r = need::<types::nd_wake>(tag, data)?;
            let (stack, stack_err) = if r.stack_sz < 0 {
                (Vec::new(), r.stack_sz)
            } else {
                let n = (r.stack_sz as usize / 8).min(r.stack.len());
                (r.stack[..n].to_vec(), 0)
            };
            Kind::Wake {
                target: Task { pid: r.target_pid, tid: r.target_tid, comm: comm_rc(&r.target_comm) },
                sock_seq: r.sock_seq,
                stack,
                stack_err,
                target_cpu: r.target_cpu,
                waker_is_kthread: r.waker_is_kthread != 0,
                target_on_rq: r.target_on_rq != 0,
                cause: None,
                context: None,
                via_epoll: false,
                stack_reused: r.stack_reused != 0,
                stack_sig: r.stack_sig,
            }
        }
        3 => {
            let r = need::<types::nd_switch_in>(tag, data)?;
            Kind::SwitchIn {
                runnable_ts: r.runnable_ts,
                prev_cpu: r.prev_cpu,
                after_preempt: r.after_preempt != 0,
                prev_tid: r.prev_tid,
                prev_comm: comm_rc(&r.prev_comm),
            }
        }
        4 => {
            let r = need::<types::nd_switch_out>(tag, data)?;
            Kind::SwitchOut {
                involuntary: r.preempt != 0,
                woken: r.woken != 0,
                state: r.state,
                next_tid: r.next_tid,
                next_comm: comm_rc(&r.next_comm),
            }
        }
        5 => {
            let r = need::<types::nd_epoll_enter>(tag, data)?;
            // Written at the call, or later by a waker on another CPU: the call's CPU.
            cpu = r.call_cpu;
            Kind::EpollEnter { epfd: r.epfd, maxevents: r.maxevents, syscall: Syscall::from_raw(r.syscall) }
        }
        6 => {
            let r = need::<types::nd_epoll_exit>(tag, data)?;
            // The user's array as the kernel laid it out: `events` first, `data` in the last 8 bytes.
            let size = r.ev_size as usize;
            let n = if (12..=16).contains(&size) { (r.n_events as usize).min(r.ev_raw.len() / size) } else { 0 };
            let entry = |i: usize| {
                let e = &r.ev_raw[i * size..(i + 1) * size];
                let events = u32::from_ne_bytes(e[..4].try_into().unwrap_or_default());
                let data = u64::from_ne_bytes(e[size - 8..].try_into().unwrap_or_default());
                EpEvent { events, data, fd: None }
            };
            Kind::EpollExit {
                enter_ts: r.enter_ts,
                epfd: r.epfd,
                ret: r.ret,
                syscall: Syscall::from_raw(r.syscall),
                events: (0..n).map(entry).collect(),
            }
        }
        7 => {
            let r = need::<types::nd_accept>(tag, data)?;
            Kind::Accept {
                enter_ts: r.enter_ts,
                listen_fd: r.listen_fd,
                ret: r.ret,
                syscall: Syscall::from_raw(r.syscall),
                backlog: r.backlog,
                max_backlog: r.max_backlog,
                listen: sock(&r.listen).map(Box::new),
                peer: sock(&r.peer).map(Box::new),
            }
        }
        8 => {
            let r = need::<types::nd_close>(tag, data)?;
            Kind::Close { fd: r.fd, sock: if r.is_socket != 0 { sock(&r.sock).map(Box::new) } else { None } }
        }
        9 => {
            let r = need::<types::nd_sock_state>(tag, data)?;
            Kind::SockState { sock: Box::new(sock(&r.sock).unwrap_or_else(|| null_sock(0))), old: r.oldstate, new: r.newstate }
        }
        10 => {
            let r = need::<types::nd_task_new>(tag, data)?;
            Kind::TaskNew { child: Task { pid: r.child_pid, tid: r.child_tid, comm: comm_rc(&r.child_comm) }, reason: r.reason }
        }
        11 => {
            let r = need::<types::nd_task_exit>(tag, data)?;
            Kind::TaskExit { group_dead: r.group_dead != 0 }
        }
        12 => {
            let r = need::<types::nd_epoll_ctl>(tag, data)?;
            Kind::EpollCtl { epfd: r.epfd, op: r.op, fd: r.fd, events: r.events, data: r.data, err: r.ret }
        }
        13 => {
            let r = need::<types::nd_napi>(tag, data)?;
            Kind::Napi { seq: r.seq, dev: comm_str(&r.dev), work: r.work, budget: r.budget }
        }
        14 => {
            let r = need::<types::nd_handler>(tag, data)?;
            Kind::Handler {
                id: r.id,
                fd: (r.has & 1 != 0).then_some(r.fd),
                events: (r.has & 2 != 0).then_some(r.events),
                name: None,
                flags: None,
            }
        }
        15 => {
            let r = need::<types::nd_epoll_reg>(tag, data)?;
            Kind::EpollReg { epfd: r.epfd, fd: r.fd, events: r.events, data: r.data }
        }
        other => return Err(DecodeError::UnknownType(other)),
    };
    Ok(Event { ts: h.ts, cpu, task: task(&h), kind })
}

fn null_sock(sk: u64) -> SockInfo {
    SockInfo {
        sk,
        ino: 0,
        netns: 0,
        family: 0,
        protocol: 0,
        local: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        remote: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        state: 0,
    }
}

const EPOLL_NAMES: &[(u32, &str)] = &[
    (0x001, "EPOLLIN"),
    (0x002, "EPOLLPRI"),
    (0x004, "EPOLLOUT"),
    (0x008, "EPOLLERR"),
    (0x010, "EPOLLHUP"),
    (0x040, "EPOLLRDNORM"),
    (0x080, "EPOLLRDBAND"),
    (0x100, "EPOLLWRNORM"),
    (0x200, "EPOLLWRBAND"),
    (0x400, "EPOLLMSG"),
    (0x2000, "EPOLLRDHUP"),
    (1 << 28, "EPOLLEXCLUSIVE"),
    (1 << 29, "EPOLLWAKEUP"),
    (1 << 30, "EPOLLONESHOT"),
    (1 << 31, "EPOLLET"),
];

/// epoll event bits as names: `EPOLLIN|EPOLLET`.
pub fn epoll_flags(bits: u32) -> String {
    flag_names(bits as u64, epoll_names())
}

/// [`epoll_flags`] appended to a byte buffer, without allocating: every
/// returned epoll event is written with its names.
pub fn push_epoll_flags(out: &mut Vec<u8>, bits: u32) {
    // What epoll_wait returns is nearly always a mix of these six bits: their
    // 64 combinations are rendered once, the rest is built each time.
    const COMMON: u32 = 0x001 | 0x002 | 0x004 | 0x008 | 0x010 | 0x2000;
    static RENDERED: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    if bits & !COMMON == 0 {
        let table = RENDERED.get_or_init(|| {
            (0..64u32)
                .map(|i| {
                    let mut v = Vec::new();
                    push_flag_names(&mut v, common_bits(i) as u64, epoll_names());
                    v
                })
                .collect()
        });
        out.extend_from_slice(&table[common_index(bits)]);
        return;
    }
    push_flag_names(out, bits as u64, epoll_names());
}

fn epoll_names() -> impl Iterator<Item = (u64, &'static str)> {
    EPOLL_NAMES.iter().map(|&(b, n)| (b as u64, n))
}

/// The six common epoll bits packed into 0..64 (RDHUP, 0x2000, as bit 5).
fn common_index(bits: u32) -> usize {
    ((bits & 0x1f) | ((bits >> 8) & 0x20)) as usize
}

/// Inverse of [`common_index`].
fn common_bits(i: u32) -> u32 {
    (i & 0x1f) | ((i & 0x20) << 8)
}

/// Bits as `NAME|NAME|0xREST` from a table of (bit, name); "0" for none.
pub fn flag_names<'a>(bits: u64, table: impl IntoIterator<Item = (u64, &'a str)>) -> String {
    let mut out = Vec::with_capacity(32);
    push_flag_names(&mut out, bits, table);
    String::from_utf8(out).expect("flag names and hex digits are UTF-8")
}

/// [`flag_names`] appended to a byte buffer.
fn push_flag_names<'a>(out: &mut Vec<u8>, bits: u64, table: impl IntoIterator<Item = (u64, &'a str)>) {
    let start = out.len();
    let mut rest = bits;
    for (bit, name) in table {
        if bits & bit != 0 {
            if out.len() > start {
                out.push(b'|');
            }
            out.extend_from_slice(name.as_bytes());
            rest &= !bit;
        }
    }
    if rest != 0 {
        if out.len() > start {
            out.push(b'|');
        }
        out.extend_from_slice(format!("0x{rest:x}").as_bytes());
    }
    if out.len() == start {
        out.push(b'0');
    }
}

/// A syscall's return value: the count, or `-EINTR` and the like.
pub fn ret_text(ret: i32) -> String {
    if ret < 0 {
        format!("-{}", errno_name(ret.saturating_neg()))
    } else {
        ret.to_string()
    }
}

/// errno name for the common accept/epoll failures.
pub fn errno_name(e: i32) -> String {
    match e {
        1 => "EPERM".into(),
        4 => "EINTR".into(),
        9 => "EBADF".into(),
        11 => "EAGAIN".into(),
        12 => "ENOMEM".into(),
        14 => "EFAULT".into(),
        22 => "EINVAL".into(),
        23 => "ENFILE".into(),
        24 => "EMFILE".into(),
        103 => "ECONNABORTED".into(),
        _ => format!("errno {e}"),
    }
}

mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("0x{v:x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_states_are_named_without_modifier_bits() {
        assert_eq!(task_state_text(0x1), "sleeping (S)");
        // TASK_FREEZABLE | TASK_INTERRUPTIBLE, as a freezable kthread sleeps.
        assert_eq!(task_state_text(0x2001), "sleeping (S)");
        assert_eq!(task_state_text(0x2), "uninterruptible (D)");
        assert_eq!(task_state_text(0x102), "killable (D)");
        assert_eq!(task_state_text(0x402), "idle (I)");
        assert_eq!(task_state_text(0x1000), "uninterruptible (D, rt lock)");
        assert_eq!(task_state_text(0x200), "blocked (state 0x200)");
    }

    /// UDP's kernel states are TCP's numbers with another meaning: a bound
    /// socket is TCP_CLOSE, a connected one TCP_ESTABLISHED.
    #[test]
    fn udp_sockets_are_not_named_with_tcp_states() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let sock = |protocol: u16, state: u8, remote: &str| SockInfo {
            family: 2,
            protocol,
            state,
            local: a("127.0.0.1:53"),
            remote: a(remote),
            ..null_sock(1)
        };
        assert_eq!(sock(17, 7, "0.0.0.0:0").describe(), "udp 127.0.0.1:53");
        assert_eq!(sock(17, 1, "127.0.0.1:4000").describe(), "udp 127.0.0.1:53 <- 127.0.0.1:4000");
        assert_eq!(sock(6, 1, "127.0.0.1:4000").describe(), "ESTABLISHED 127.0.0.1:53 <- 127.0.0.1:4000");
        assert_eq!(sock(0, 10, "0.0.0.0:0").describe(), "LISTEN 127.0.0.1:53", "an older recording has no protocol");
        assert_eq!(sock(1, 7, "0.0.0.0:0").describe(), "ip proto 1 127.0.0.1:53");
    }

    fn hdr(tag: u32) -> types::nd_hdr {
        let mut h = types::nd_hdr { r#type: tag as u16, cpu: 1, ts: 42, pid: 100, tid: 101, ..Default::default() };
        for (i, b) in b"worker".iter().enumerate() {
            h.comm[i] = *b as i8;
        }
        h
    }

    fn bytes<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: T is a repr(C) POD record; viewing it as bytes is sound.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()).to_vec() }
    }

    #[test]
    fn gaps_are_found_per_cpu_from_the_header_counts() {
        let rec = |cpu: u16, lost: u32| {
            bytes(&types::nd_task_exit { hdr: types::nd_hdr { cpu, cpu_lost: lost, ts: 9, ..hdr(11) }, ..Default::default() })
        };
        let mut g = GapFinder::default();
        let mut n = |cpu, lost| g.gap_before(&rec(cpu, lost)).map(|gap| (gap.cpu, gap.records));
        assert_eq!(n(0, 0), None);
        assert_eq!(n(0, 3), Some((0, 3)), "3 lost on CPU 0 before this record");
        assert_eq!(n(1, 2), Some((1, 2)), "a CPU's first record shows its losses since load");
        assert_eq!(n(0, 3), None, "no new gap");
        assert_eq!(n(1, 2), None);
        assert_eq!(n(0, 70_003), Some((0, 70_000)), "more than 2^16 at once");
        assert_eq!(n(0, 70_002), None, "reserved before a nested program's failure it already showed");
        assert_eq!(n(0, 70_003), None, "and the count did not go back");
        assert_eq!(n(0, 70_004), Some((0, 1)));
        assert_eq!(n(0, 2_000_070_004), Some((0, 2_000_000_000)));
        assert_eq!(n(0, 4_000_070_004), Some((0, 2_000_000_000)));
        assert_eq!(n(0, 1), Some((0, 294_897_293)), "the 32-bit count wraps");
        assert_eq!(g.gap_before(&[1, 2, 3]), None, "a short record shows nothing");
        let gap = g.gap_before(&rec(3, 5)).unwrap();
        assert_eq!((gap.ts, gap.event().type_name()), (9, "records_lost"));
    }

    #[test]
    fn an_epoll_enter_written_by_a_waker_keeps_the_calls_cpu() {
        let r = types::nd_epoll_enter { hdr: types::nd_hdr { cpu: 1, ..hdr(5) }, epfd: 4, maxevents: 8, syscall: 1, call_cpu: 0 };
        assert_eq!(decode(&bytes(&r)).unwrap().cpu, 0);
    }

    #[test]
    fn decodes_accept_with_peer() {
        let mut r = types::nd_accept { hdr: hdr(7), listen_fd: 3, ret: 7, syscall: 5, backlog: 1, max_backlog: 128, ..Default::default() };
        r.peer.sk = 0xffff_8880_0000_1000;
        r.peer.family = 2;
        r.peer.lport = 8080;
        r.peer.rport = 40000;
        r.peer.state = 1;
        r.peer.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        r.peer.raddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        let e = decode(&bytes(&r)).unwrap();
        assert_eq!(e.ts, 42);
        assert_eq!(e.task, Task { pid: 100, tid: 101, comm: "worker".into() });
        match e.kind {
            Kind::Accept { listen_fd, ret, syscall, peer: Some(p), listen: None, .. } => {
                assert_eq!((listen_fd, ret, syscall), (3, 7, Syscall::Accept4));
                assert_eq!(p.remote, "127.0.0.2:40000".parse().unwrap());
                assert_eq!(p.local, "127.0.0.1:8080".parse().unwrap());
                assert_eq!(p.state_name(), "ESTABLISHED");
            }
            k => panic!("wrong kind {k:?}"),
        }
    }

    #[test]
    fn decodes_wake_stack_and_errors() {
        let mut r = types::nd_wake { hdr: hdr(2), target_pid: 5, target_tid: 6, stack_sz: 16, ..Default::default() };
        r.stack[0] = 0xffffffff81000000;
        r.stack[1] = 0xffffffff81000100;
        match decode(&bytes(&r)).unwrap().kind {
            Kind::Wake { stack, stack_err, target, .. } => {
                assert_eq!(stack.len(), 2);
                assert_eq!(stack_err, 0);
                assert_eq!(target.tid, 6);
            }
            k => panic!("wrong kind {k:?}"),
        }
        r.stack_sz = -14;
        match decode(&bytes(&r)).unwrap().kind {
            Kind::Wake { stack, stack_err, .. } => assert!(stack.is_empty() && stack_err == -14),
            k => panic!("wrong kind {k:?}"),
        }
    }

    #[test]
    fn decodes_switch_out_flags() {
        for (preempt, woken) in [(0, 0), (1, 0), (0, 1)] {
            let r = types::nd_switch_out { hdr: hdr(4), preempt, woken, state: 1, next_tid: 9, ..Default::default() };
            match decode(&bytes(&r)).unwrap().kind {
                Kind::SwitchOut { involuntary, woken: w, state, next_tid, .. } => {
                    assert_eq!((involuntary, w, state, next_tid), (preempt != 0, woken != 0, 1, 9));
                }
                k => panic!("wrong kind {k:?}"),
            }
        }
    }

    #[test]
    fn pushed_epoll_flags_match_the_names() {
        let common = (0..64).map(common_bits);
        for bits in common.chain([0x2001, 0x8000_2019, 0x4000_0000, 0x0800_0001, 0x0001_0000, 0x20, 0x2040]) {
            let mut buf = b"x".to_vec();
            push_epoll_flags(&mut buf, bits);
            assert_eq!(&buf[1..], epoll_flags(bits).as_bytes(), "{bits:#x}");
        }
    }

    #[test]
    fn keys_are_the_serde_names() {
        fn same<T: Serialize>(v: T, key: &str) {
            assert_eq!(serde_json::to_value(v).unwrap(), key);
        }
        use Cause::*;
        for c in [SocketReadable, SocketWritable, SocketState, Timer, Eventfd, Pipe, Futex, Signal, Other, Unknown] {
            same(c, c.key());
        }
        use WakerContext as W;
        for c in [W::SoftirqInSyscall, W::SoftirqOnIrqExit, W::Ksoftirqd, W::IdleIrq, W::Irq, W::Process, W::KernelThread, W::Unknown] {
            same(c, c.key());
        }
        for h in [ReadyHook::SkDataReady, ReadyHook::InetSockSetState, ReadyHook::EpollItem, ReadyHook::Accept, ReadyHook::IoWait] {
            same(h, h.key());
        }
    }

    #[test]
    fn comm_names_ignore_bytes_after_the_nul() {
        let mut a = [0i8; 16];
        let mut b = [0x55i8; 16];
        for (i, &ch) in b"nginx".iter().enumerate() {
            a[i] = ch as i8;
            b[i] = ch as i8;
        }
        b[5] = 0;
        let (x, y) = (comm_rc(&a), comm_rc(&b));
        assert_eq!(&*y, "nginx");
        assert!(Rc::ptr_eq(&x, &y), "one cached name whatever follows the NUL");
    }

    #[test]
    fn comm_names_are_shared_and_exact() {
        let mut c = [0i8; 16];
        for (i, b) in b"nginx".iter().enumerate() {
            c[i] = *b as i8;
        }
        let a = comm_rc(&c);
        assert_eq!(&*a, "nginx");
        assert!(Rc::ptr_eq(&a, &comm_rc(&c)), "a recent name is not allocated again");
        // More names than the cache holds: each still decodes to itself.
        for n in 0..100u8 {
            let mut d = [0i8; 16];
            d[0] = b'w' as i8;
            d[1] = (b'0' + n % 10) as i8;
            d[2] = (b'0' + n / 10) as i8;
            assert_eq!(&*comm_rc(&d), format!("w{}{}", n % 10, n / 10));
        }
        assert_eq!(&*comm_rc(&c), "nginx");
    }

    #[test]
    fn epoll_exit_respects_n_events_and_v6() {
        // Packed 12-byte entries (x86_64) and padded 16-byte ones (other arches).
        for size in [12usize, 16] {
            let mut r = types::nd_epoll_exit { hdr: hdr(6), ret: 20, n_events: 99, ev_size: size as u32, ..Default::default() };
            for i in 0..2 {
                r.ev_raw[i * size..i * size + 4].copy_from_slice(&(0x1u32 | 0x8000_0000).to_ne_bytes());
                r.ev_raw[(i + 1) * size - 8..(i + 1) * size].copy_from_slice(&(7 + i as u64).to_ne_bytes());
            }
            match decode(&bytes(&r)).unwrap().kind {
                Kind::EpollExit { events, ret, .. } => {
                    assert_eq!(ret, 20);
                    assert_eq!(events.len(), 256 / size, "clamped to the array ({size})");
                    assert_eq!(epoll_flags(events[0].events), "EPOLLIN|EPOLLET");
                    assert_eq!((events[0].data, events[1].data), (7, 8), "{size}");
                }
                k => panic!("wrong kind {k:?}"),
            }
        }
        // A size the decoder does not know gives no entries, not garbage.
        let r = types::nd_epoll_exit { hdr: hdr(6), ret: 1, n_events: 1, ev_size: 40, ..Default::default() };
        assert!(matches!(decode(&bytes(&r)).unwrap().kind, Kind::EpollExit { events, .. } if events.is_empty()));
        let mut s = types::nd_sock { sk: 1, family: 10, lport: 80, ..Default::default() };
        s.laddr[15] = 1;
        assert_eq!(sock(&s).unwrap().local, "[::1]:80".parse().unwrap());
    }

    #[test]
    fn rejects_short_and_unknown() {
        assert_eq!(decode(&[0u8; 4]), Err(DecodeError::Short(4)));
        let h = hdr(99);
        assert_eq!(decode(&bytes(&h)), Err(DecodeError::UnknownType(99)));
        let h = hdr(7);
        assert!(matches!(decode(&bytes(&h)), Err(DecodeError::Truncated { tag: 7, .. })));
    }

    #[test]
    fn type_names_are_the_serde_tags_of_every_kind() {
        let mut seen = std::collections::BTreeSet::new();
        let mut check = |e: &Event| {
            let v = serde_json::to_value(e).unwrap();
            assert_eq!(v["type"], e.type_name(), "{v}");
            seen.insert(e.type_index());
        };
        // Every record type, zeroed but for its tag (room for the largest record).
        for tag in 1..=types::nd_rec_type::ND_REC_EPOLL_REG.0 {
            let mut buf = bytes(&hdr(tag));
            buf.resize(8192, 0);
            check(&decode(&buf).unwrap_or_else(|e| panic!("tag {tag}: {e:?}")));
        }
        // The kinds user space makes: from /proc, and from the headers' loss counts.
        let task = Task { pid: 1, tid: 1, comm: "a".into() };
        check(&Event { ts: 1, cpu: 0, task: task.clone(), kind: Kind::FdMap { ino: 7, fd: 3 } });
        check(&Event { ts: 1, cpu: 0, task: task.clone(), kind: Kind::EpollMap { epfd: 4, fd: 3, data: 9 } });
        check(&Event { ts: 1, cpu: 0, task, kind: Kind::RecordsLost { records: 2 } });
        assert_eq!(seen.len(), TYPE_NAMES.len(), "kinds not covered: {seen:?}");
    }

    #[test]
    fn event_json_roundtrip() {
        let e = Event { ts: 1, cpu: 0, task: Task { pid: 1, tid: 1, comm: "a\"b".into() }, kind: Kind::Close { fd: 5, sock: None } };
        let s = serde_json::to_string(&e).unwrap();
        assert!(s.contains("\"type\":\"close\""), "{s}");
        assert_eq!(serde_json::from_str::<Event>(&s).unwrap(), e);
    }
}
