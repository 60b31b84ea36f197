//! The default output: one block per chain, readable at a glance.

use std::fmt::Write as _;

use crate::analysis::{Action, Chain, Hop, Stats};
use crate::events::{epoll_flags, errno_name, ReadyHook, SockInfo, Task};
use crate::output::{dur, term_safe};
use crate::symbolize::KernelSyms;

/// Per-CPU loss counters, summed for display.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Losses {
    pub ringbuf: u64,
    pub stack: u64,
    pub map_full: u64,
    pub user_read: u64,
    /// Per CPU: [ringbuf, stack, map_full, user_read].
    pub per_cpu: Vec<[u64; 4]>,
}

impl Losses {
    pub fn any(&self) -> bool {
        self.ringbuf + self.stack + self.map_full + self.user_read > 0
    }
}

fn sock_line(s: &SockInfo) -> String {
    if s.is_listen() {
        format!("{} {}", s.state_name(), s.local)
    } else {
        format!("{} {} <- {}", s.state_name(), s.local, s.remote)
    }
}

fn fds_text(fds: &[(u32, i32)]) -> String {
    if fds.is_empty() {
        return "fd unknown".into();
    }
    let v: Vec<String> = fds.iter().map(|(p, f)| format!("fd {f} of pid {p}")).collect();
    v.join(", ")
}

fn task(t: &Task) -> String {
    format!("{}[{}]", term_safe(&t.comm), t.tid)
}

/// Renders chains as text blocks.
pub struct TextRenderer {
    /// Monotonic ns of the trace start; block headers are relative to it.
    pub t0: u64,
    pub stacks: bool,
}

impl TextRenderer {
    pub fn chain(&self, c: &Chain, syms: &mut KernelSyms) -> String {
        let mut o = String::new();
        let rel = |ts: u64| format!("+{}", dur(ts.saturating_sub(c.start_ts)));
        let title = match &c.sock {
            Some(s) => format!("{}  ({})", sock_line(&s.sock), fds_text(&s.fds)),
            None => match c.hops.first().and_then(|h| h.wake.as_ref()) {
                Some(w) => format!("wake-up: {}", w.cause.name()),
                None => {
                    let socks: Vec<String> = c
                        .hops
                        .iter()
                        .filter_map(|h| h.epoll.as_ref())
                        .flat_map(|e| e.events.iter())
                        .filter_map(|r| Some(format!("fd {} {}", r.fd?, sock_line(r.sock.as_ref()?))))
                        .collect();
                    if socks.is_empty() {
                        "epoll_wait returned without sleeping".into()
                    } else {
                        format!("{}  (ready while the thread was running: epoll_wait did not sleep)", socks.join(", "))
                    }
                }
            },
        };
        let _ = writeln!(o, "chain {}  at {}  {}{}", c.id, dur(c.start_ts.saturating_sub(self.t0)), title, if c.incomplete { "  [incomplete]" } else { "" });
        if let Some(s) = &c.sock {
            let what = match s.hook {
                ReadyHook::SkDataReady => "socket ready".to_string(),
                ReadyHook::InetSockSetState => format!("state -> {}", s.sock.state_name()),
            };
            let _ = writeln!(
                o,
                "  {what:<14} CPU{}  in {}  sk=0x{:x} ino={} netns={}",
                s.cpu,
                task(&s.task),
                s.sock.sk,
                s.sock.ino,
                s.sock.netns
            );
        }
        let n = c.hops.len();
        for (i, h) in c.hops.iter().enumerate() {
            let last = i + 1 == n;
            let (branch, cont) = if last { ("`-", "   ") } else { ("|-", "|  ") };
            self.hop(&mut o, h, branch, cont, &rel, syms);
        }
        if c.woken() > 1 {
            let winners = c.hops.iter().filter(|h| h.accepted()).count();
            if c.sock.as_ref().map(|s| s.sock.is_listen()).unwrap_or(false) {
                let _ = writeln!(o, "  ! thundering herd: one listen-socket event woke {} threads, {} accepted, {} woken for nothing", c.woken(), winners, c.wasted());
            } else {
                let _ = writeln!(o, "  ! one event woke {} threads, {} woken for nothing", c.woken(), c.wasted());
            }
        }
        o
    }

    fn hop(&self, o: &mut String, h: &Hop, branch: &str, cont: &str, rel: &dyn Fn(u64) -> String, syms: &mut KernelSyms) {
        match &h.wake {
            Some(w) => {
                let _ = writeln!(
                    o,
                    "  {branch} woke {}  {:>9}  {}{}  by {} ({}) on CPU{}",
                    task(&h.target),
                    rel(w.ts),
                    w.cause.name(),
                    if w.via_epoll { " via epoll" } else { "" },
                    task(&w.waker),
                    w.context.name(),
                    w.cpu
                );
                if self.stacks && !w.stack.is_empty() {
                    for f in syms.frames(&w.stack) {
                        let _ = writeln!(o, "  {cont}     | {}", term_safe(&f));
                    }
                }
            }
            None => {
                let _ = writeln!(o, "  {branch} {} was running", task(&h.target));
            }
        }
        if let Some(c) = &h.on_cpu {
            if c.never_left {
                let _ = writeln!(o, "  {cont}   still on CPU{} when woken: no run-queue wait", c.cpu);
            } else {
                let mig = if c.migrated { format!(", migrated from CPU{}", c.prev_cpu) } else { String::new() };
                let _ = writeln!(o, "  {cont}   on CPU{} {:>9}  after {} in the run queue{}", c.cpu, rel(c.ts), dur(c.runq_ns), mig);
            }
        }
        if let Some(e) = &h.epoll {
            let list: Vec<String> = e
                .events
                .iter()
                .map(|r| match r.fd {
                    Some(fd) => format!("fd {fd} {}", epoll_flags(r.events)),
                    None => format!("data 0x{:x} {}", r.data, epoll_flags(r.events)),
                })
                .collect();
            let more = if e.ret as usize > e.events.len() { format!(" (+{} more)", e.ret as usize - e.events.len()) } else { String::new() };
            let _ = writeln!(o, "  {cont}   {}({}) {:>9}  returned {}: {}{}", e.syscall.name(), e.epfd, rel(e.ts), e.ret, list.join(", "), more);
        }
        if h.preemptions > 0 {
            let _ = writeln!(o, "  {cont}   preempted {} time(s), {} waiting for a CPU again (involuntary switches)", h.preemptions, dur(h.preempted_ns));
        }
        if let Some(ts) = h.slept_again {
            let _ = writeln!(o, "  {cont}   asleep again {:>9}  epoll_wait found nothing: woken for nothing", rel(ts));
        }
        for a in &h.actions {
            match a {
                Action::Accept { ts, syscall, listen_fd, ret, peer, backlog, max_backlog, .. } => {
                    if *ret >= 0 {
                        let p = peer.as_ref().map(|p| p.remote.to_string()).unwrap_or_else(|| "?".into());
                        let _ = writeln!(o, "  {cont}   {}({listen_fd}) {:>9}  = fd {ret}  peer {p}  backlog {backlog}/{max_backlog}", syscall.name(), rel(*ts));
                    } else {
                        let hint = if *ret == -11 { "  (nothing to accept: woken for nothing)" } else { "" };
                        let _ = writeln!(o, "  {cont}   {}({listen_fd}) {:>9}  = -{}{hint}", syscall.name(), rel(*ts), errno_name(-ret));
                    }
                }
                Action::Close { ts, fd, sock } => {
                    let s = sock.as_ref().map(|s| format!("  {}", sock_line(s))).unwrap_or_default();
                    let _ = writeln!(o, "  {cont}   close({fd}) {:>9}{s}", rel(*ts));
                }
            }
        }
    }
}

/// The end-of-trace summary.
pub fn summary(stats: &Stats, losses: &Losses, secs: f64, ringbuf_mib: u32, why: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "\nnetdrift: {why} after {secs:.1}s");
    let _ = writeln!(
        o,
        "  {} events, {} chains ({} incomplete), {} wake-ups, {} accepts ({} EAGAIN, {} other errors), {} closes",
        stats.events, stats.chains, stats.chains_incomplete, stats.wakes, stats.accepts, stats.accept_eagain, stats.accept_errors, stats.closes
    );
    let _ = writeln!(o, "  {} chains woke more than one thread; {} wake-ups were for nothing", stats.herd_chains, stats.wasted_wakes);
    let _ = writeln!(o, "  context switches of the targets: {} voluntary, {} involuntary", stats.voluntary_switches, stats.involuntary_switches);
    if losses.any() {
        let _ = writeln!(
            o,
            "  LOST: {} records (ring buffer full: raise --ringbuf-size, now {} MiB), {} stacks, {} map-full, {} unreadable epoll arrays",
            losses.ringbuf, ringbuf_mib, losses.stack, losses.map_full, losses.user_read
        );
    } else {
        let _ = writeln!(o, "  lost: 0 records, 0 stacks (ring buffer {ringbuf_mib} MiB)");
    }
    o
}
