//! The default output: one block per chain, readable at a glance.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::analysis::{Action, Chain, Hop, Stats};
use crate::events::{epoll_flags, errno_name, Task};
use crate::output::{dur, off_cpu, ready_what, term_safe};
use crate::summary::{HerdRow, Hist, Summary};
use crate::symbolize::KernelSyms;

/// Per-CPU loss counters, summed for display.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Losses {
    pub ringbuf: u64,
    pub stack: u64,
    pub map_full: u64,
    pub user_read: u64,
    /// Per CPU: [ringbuf, stack, map_full, user_read].
    pub per_cpu: Vec<[u64; 4]>,
    /// Runs of a program the kernel skipped, by program (see `probes::skipped_runs`).
    #[serde(default)]
    pub skipped: BTreeMap<String, u64>,
    /// The ring-buffer reader's own CPU time, in the intervals that lost
    /// records (else over the whole trace): a reader that waited for a CPU
    /// loses records however big the ring is. Not a counter: `raise_to`
    /// leaves it alone.
    #[serde(default)]
    pub reader: ReaderCpu,
}

/// Time the thread reading the ring buffer ran and waited in a run queue
/// (`/proc/thread-self/schedstat`), in ns, over `wall_ns` of the trace.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReaderCpu {
    pub run_ns: u64,
    pub wait_ns: u64,
    #[serde(default)]
    pub wall_ns: u64,
}

impl ReaderCpu {
    /// This thread's totals so far (zero where schedstat is not there).
    pub fn now() -> Self {
        let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
        let mut f = text.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
        ReaderCpu { run_ns: f.next().unwrap_or(0), wait_ns: f.next().unwrap_or(0), wall_ns: crate::trace::monotonic_ns() }
    }

    pub fn since(&self, earlier: &ReaderCpu) -> ReaderCpu {
        ReaderCpu {
            run_ns: self.run_ns.saturating_sub(earlier.run_ns),
            wait_ns: self.wait_ns.saturating_sub(earlier.wait_ns),
            wall_ns: self.wall_ns.saturating_sub(earlier.wall_ns),
        }
    }

    /// Add another stretch of time.
    pub fn add(&mut self, o: &ReaderCpu) {
        self.run_ns += o.run_ns;
        self.wait_ns += o.wait_ns;
        self.wall_ns += o.wall_ns;
    }
}

impl Losses {
    pub fn any(&self) -> bool {
        self.counted() + self.skipped_total() > 0
    }

    /// [ringbuf, stack, map_full, user_read, skipped] lost since `earlier`.
    pub fn growth_since(&self, earlier: &Losses) -> [u64; 5] {
        let skipped = self.skipped.iter().map(|(p, n)| n.saturating_sub(earlier.skipped.get(p).copied().unwrap_or(0))).sum();
        [
            self.ringbuf.saturating_sub(earlier.ringbuf),
            self.stack.saturating_sub(earlier.stack),
            self.map_full.saturating_sub(earlier.map_full),
            self.user_read.saturating_sub(earlier.user_read),
            skipped,
        ]
    }

    /// Take in a later reading, field by field and never down: a counter
    /// read that failed once (as 0) must not count the same losses twice.
    pub fn raise_to(&mut self, now: &Losses) {
        self.ringbuf = self.ringbuf.max(now.ringbuf);
        self.stack = self.stack.max(now.stack);
        self.map_full = self.map_full.max(now.map_full);
        self.user_read = self.user_read.max(now.user_read);
        for (prog, n) in &now.skipped {
            let seen = self.skipped.entry(prog.clone()).or_default();
            *seen = (*seen).max(*n);
        }
    }

    /// What the programs counted themselves (all but the skipped runs).
    pub fn counted(&self) -> u64 {
        self.ringbuf + self.stack + self.map_full + self.user_read
    }

    /// The CPUs that lost anything, `CPU1 3, CPU2 2` (one busy CPU, an
    /// IRQ-heavy one, or all of them); "" if none.
    pub fn per_cpu_text(&self) -> String {
        let cpus: Vec<String> = self
            .per_cpu
            .iter()
            .enumerate()
            .filter(|(_, v)| v.iter().sum::<u64>() > 0)
            .map(|(cpu, v)| format!("CPU{cpu} {}", v.iter().sum::<u64>()))
            .collect();
        cpus.join(", ")
    }

    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// What fixes records lost to a full ring buffer over `secs` in which the
/// reader used `reader`: a reader kept off the CPUs (a low priority, CPUs
/// saturated by the load) or busy all the time loses records however big
/// the ring is; else the flag, the size now, and a size to try.
pub fn ringbuf_fix(mib: u32, reader: ReaderCpu, secs: f64) -> String {
    // Recordings made before wall_ns was kept: the whole run.
    let wall = if reader.wall_ns > 0 { reader.wall_ns as f64 } else { secs * 1e9 };
    let bigger = (mib.max(1) * 4).min(1024);
    if wall > 0.0 && reader.wait_ns as f64 > 0.05 * wall {
        return format!(
            "netdrift's reader waited {} for a CPU ({:.0}% of the time): give it one (a higher priority: nice -n -20 or chrt -f 1; or keep the load off a CPU with taskset); a bigger --ringbuf-size (now {mib} MiB; try {}) absorbs a burst, not a steady excess",
            dur(reader.wait_ns),
            100.0 * reader.wait_ns as f64 / wall,
            bigger
        );
    }
    if wall > 0.0 && reader.run_ns as f64 > 0.9 * wall {
        return format!(
            "netdrift's reader was busy {:.0}% of the time: trace fewer threads, or leave out --stacks; a bigger --ringbuf-size (now {mib} MiB) only absorbs bursts",
            100.0 * reader.run_ns as f64 / wall
        );
    }
    if mib >= 1024 {
        return format!("raise --ringbuf-size (now {mib} MiB, the most), or trace fewer threads");
    }
    format!("raise --ringbuf-size (now {mib} MiB; try --ringbuf-size {bigger})")
}

/// "N program runs skipped by the kernel (prog: n, ...)", or "" if none.
pub fn skipped_text(skipped: &BTreeMap<String, u64>) -> String {
    let total: u64 = skipped.values().sum();
    if total == 0 {
        return String::new();
    }
    let each: Vec<String> = skipped.iter().map(|(p, n)| format!("{} {n}", term_safe(p))).collect();
    format!(
        "{total} program runs skipped by the kernel, as a tracing program was already running on that CPU ({}): events of an interrupt that came in during one, not recorded",
        each.join(", ")
    )
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
            Some(s) => format!("{}  ({})", s.sock.describe(), fds_text(&s.fds)),
            None => match c.hops.first().and_then(|h| h.wake.as_ref()) {
                Some(w) => format!("wake-up: {}", w.cause.name()),
                None => {
                    let socks: Vec<String> = c
                        .hops
                        .iter()
                        .filter_map(|h| h.epoll.as_ref())
                        .flat_map(|e| e.events.iter())
                        .filter_map(|r| Some(format!("fd {} {}", r.fd?, r.sock.as_deref()?.describe())))
                        .collect();
                    match (socks.is_empty(), c.woken_in_closed_chain) {
                        (true, false) => "epoll_wait returned without sleeping".into(),
                        (false, false) => format!("{}  (ready while the thread was running: epoll_wait did not sleep)", socks.join(", ")),
                        (true, true) => format!("epoll_wait returned  ({CLOSED_WAKE})"),
                        (false, true) => format!("{}  ({CLOSED_WAKE})", socks.join(", ")),
                    }
                }
            },
        };
        let _ = writeln!(
            o,
            "chain {}  at {}  {}{}{}",
            c.id,
            dur(c.start_ts.saturating_sub(self.t0)),
            title,
            if c.incomplete { "  [incomplete]" } else { "" },
            if c.records_lost { "  [records lost while open]" } else { "" }
        );
        if let Some(p) = c.sock.as_ref().and_then(|s| s.packet.as_ref()) {
            let s = c.sock.as_ref().unwrap();
            let dev = if p.dev.is_empty() { "?".to_string() } else { term_safe(&p.dev).into_owned() };
            let _ = writeln!(
                o,
                "  {:<14} CPU{}  {} bytes on {} (netif_receive_skb), {} before the socket was ready",
                "packet",
                s.cpu,
                p.len,
                dev,
                dur(s.ts.saturating_sub(p.ts))
            );
        }
        if let Some(s) = &c.sock {
            let what = ready_what(s);
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
        if let Some(np) = c.sock.as_ref().and_then(|s| s.napi.as_ref()) {
            let dev =
                if np.dev.is_empty() { "the per-CPU backlog (loopback, veth, RPS)".to_string() } else { term_safe(&np.dev).into_owned() };
            let _ = writeln!(
                o,
                "  {:<14} CPU{}  {} of budget {} packets from {} {:>9}  (napi_poll ended)",
                "napi poll",
                np.cpu,
                np.work,
                np.budget,
                dev,
                rel(np.ts)
            );
        }
        let n = c.hops.len();
        for (i, h) in c.hops.iter().enumerate() {
            let last = i + 1 == n;
            let (branch, cont) = if last { ("`-", "   ") } else { ("|-", "|  ") };
            self.hop(&mut o, h, (branch, cont, c.woken_in_closed_chain), &rel, syms);
        }
        if c.woken() > 1 {
            let winners = c.hops.iter().filter(|h| h.accepted()).count();
            if c.sock.as_ref().map(|s| s.sock.is_listen()).unwrap_or(false) {
                let _ = writeln!(
                    o,
                    "  ! thundering herd: one listen-socket event woke {} threads, {} accepted, {} woken for nothing",
                    c.woken(),
                    winners,
                    c.wasted()
                );
            } else {
                let _ = writeln!(o, "  ! one event woke {} threads, {} woken for nothing", c.woken(), c.wasted());
            }
        }
        o
    }

    /// One hop: `tree` is its branch and continuation marks, and whether
    /// its chain began at a return whose wake-up is in an earlier chain.
    fn hop(&self, o: &mut String, h: &Hop, tree: (&str, &str, bool), rel: &dyn Fn(u64) -> String, syms: &mut KernelSyms) {
        let (branch, cont, woken_earlier) = tree;
        match &h.wake {
            Some(w) => {
                let _ = writeln!(
                    o,
                    "  {branch} {} {}  {:>9}  {}{}  by {} ({}) on CPU{}",
                    if h.handoff { "handed to" } else { "woke" },
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
            None if woken_earlier => {
                let _ = writeln!(o, "  {branch} {} returned from epoll_wait (woken in an earlier chain)", task(&h.target));
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
        // An outer return, then its nested instance's.
        for e in h.epoll.iter().flat_map(|e| e.with_nested()) {
            let note = match h.epoll.as_ref() {
                Some(outer) if !std::ptr::eq(outer, e) => format!("  (fd {} is in epoll {}'s set)", e.epfd, outer.epfd),
                _ => String::new(),
            };
            let list: Vec<String> = e
                .events
                .iter()
                .map(|r| match r.fd {
                    Some(fd) => format!("fd {fd} {}", epoll_flags(r.events)),
                    None => format!("data 0x{:x} {}", r.data, epoll_flags(r.events)),
                })
                .collect();
            let more = if e.not_read() > 0 { format!(" (+{} more)", e.not_read()) } else { String::new() };
            let _ = writeln!(
                o,
                "  {cont}   {}({}) {:>9}  returned {}{}{}{note}",
                e.syscall.name(),
                e.epfd,
                rel(e.ts),
                crate::events::ret_text(e.ret),
                if list.is_empty() { String::new() } else { format!(": {}", list.join(", ")) },
                more
            );
        }
        for a in &h.actions {
            match a {
                Action::Accept { ts, syscall, listen_fd, ret, peer, backlog, max_backlog, .. } => {
                    if *ret >= 0 {
                        let p = peer.as_ref().map(|p| p.remote_text()).unwrap_or_else(|| "?".into());
                        let _ = writeln!(
                            o,
                            "  {cont}   {}({listen_fd}) {:>9}  = fd {ret}  peer {p}  backlog {backlog}/{max_backlog}",
                            syscall.name(),
                            rel(*ts)
                        );
                    } else {
                        // Only a thread that was woken was woken for nothing; a running one found the queue emptied.
                        let hint = match (*ret == -11 && !h.accepted(), h.wake.is_some()) {
                            (true, true) => "  (nothing to accept: woken for nothing)",
                            (true, false) => "  (nothing left to accept)",
                            _ => "",
                        };
                        let _ = writeln!(o, "  {cont}   {}({listen_fd}) {:>9}  = -{}{hint}", syscall.name(), rel(*ts), errno_name(-ret));
                    }
                }
                Action::Handler { ts, name, fd, flags } => {
                    let mut args = Vec::new();
                    if let Some(fd) = fd {
                        args.push(format!("fd={fd}"));
                    }
                    if let Some(fl) = flags {
                        // Read from a recording: anything.
                        args.push(term_safe(fl).into_owned());
                    }
                    let args = if args.is_empty() { String::new() } else { format!("  ({})", args.join(", ")) };
                    let _ = writeln!(o, "  {cont}   handler {} {:>9}{args}", term_safe(name), rel(*ts));
                }
                Action::Close { ts, fd, sock } => {
                    let s = sock.as_ref().map(|s| format!("  {}", s.describe())).unwrap_or_default();
                    let _ = writeln!(o, "  {cont}   close({fd}) {:>9}{s}", rel(*ts));
                }
            }
        }
        // Its last step: the hop ends when the thread sleeps again.
        if let Some(ts) = h.slept_again {
            let _ = writeln!(o, "  {cont}   asleep again {:>9}  epoll_wait found nothing: woken for nothing", rel(ts));
        }
        // Totals over the whole hop, after its timed steps.
        for (n, what, ns, why) in off_cpu(h) {
            if n > 0 {
                let _ = writeln!(o, "  {cont}   {what} {n} time{}, {} {why}", if n == 1 { "" } else { "s" }, dur(ns));
            }
        }
    }
}

/// Said when a listener's connections were accepted but no wake-up was
/// read at it, and the targets never returned from epoll_wait: a poll,
/// select or io_uring loop, whose wake-ups have no socket, so its herd row
/// reads 0 where a herd may be. (A blocking accept is read at the listener.)
pub fn no_epoll_note(stats: &Stats, herd: &[HerdRow]) -> Option<&'static str> {
    let returns = stats.by_type.get("epoll_exit").copied().unwrap_or(0);
    if returns > 0 {
        return None;
    }
    let unmeasured = herd.iter().any(|r| r.connections > 0 && r.events == 0 && r.events_records_lost == 0);
    if unmeasured {
        return Some(
            "no epoll_wait return of the targets was seen: netdrift follows epoll loops; wake-ups in poll, select or io_uring name no socket, so the herd counts are not measured (accepts that got EAGAIN are the sign of a herd there)",
        );
    }
    // Woken, but never in epoll_wait or accept: an io_uring loop accepts and
    // reads without a syscall of its own, and its zeros would read as an idle server.
    (stats.wakes > 0 && herd.is_empty() && stats.accepts + stats.accept_eagain + stats.accept_errors == 0).then_some(
        "no epoll_wait return and no accept of the targets was seen: netdrift follows epoll loops and accept calls; a server on io_uring (or poll, select) serves connections without them, so its accepts, connections and herd are not counted here, only its wake-ups (a client blocked in read or connect is woken without them too: then nothing is missing)",
    )
}

/// Title note of a chain begun at a return whose wake-up's chain expired.
pub const CLOSED_WAKE: &str = "epoll_wait slept: its wake-up is in an earlier chain, closed incomplete by --idle-ms before this return";

/// The end-of-trace summary.
pub fn summary(stats: &Stats, losses: &Losses, secs: f64, ringbuf_mib: u32, why: &str) -> String {
    let mut o = String::new();
    // `why` comes from a recording's end line on a replay.
    let _ = writeln!(o, "\nnetdrift: {} after {secs:.1}s", term_safe(why));
    let _ = writeln!(
        o,
        "  {} events, {} chains ({} incomplete), {} wake-ups, {} accepts (and {} EAGAIN, {} other errors), {} socket closes ({} of TCP connections), {} closes of other fds{}",
        stats.events,
        stats.chains,
        stats.chains_incomplete,
        stats.wakes,
        stats.accepts,
        stats.accept_eagain,
        stats.accept_errors,
        stats.socket_closes,
        stats.connection_closes,
        stats.closes - stats.socket_closes,
        if stats.handlers > 0 || stats.handler_probes > 0 { format!(", {} handler calls", stats.handlers) } else { String::new() }
    );
    if stats.handlers == 0 && stats.handler_probes > 0 {
        let _ = writeln!(
            o,
            "  none of the {} handler symbols probed was called by the targets: does the server run these functions (inlined, another binary or library, idle)? `nm -D` / `readelf -s` on it, and docs/handlers.md",
            stats.handler_probes
        );
    }
    let _ = writeln!(o, "  {} chains woke more than one thread; {} wake-ups were for nothing", stats.herd_chains, stats.wasted_wakes);
    if let Some(n) = stats.epoll_empty_summed.filter(|&n| n > 0) {
        let _ = writeln!(
            o,
            "  busy polling: {n} epoll_wait returns of nothing, each after another of its thread with no sleep, preemption or wake-up between, counted in the kernel and not written"
        );
    }
    if stats.stacks_reused > 0 {
        let _ = writeln!(
            o,
            "  waker stacks: {} wake-up{} took the class of a stack taken < {} ms before for the same waker, woken thread, socket state, context and syscall (--stacks takes every one)",
            stats.stacks_reused,
            if stats.stacks_reused == 1 { "" } else { "s" },
            crate::probes::STACK_REUSE_NS / 1_000_000
        );
    }
    let _ = writeln!(
        o,
        "  context switches of the targets: {} voluntary, {} involuntary{}",
        stats.voluntary_switches,
        stats.involuntary_switches,
        if stats.missed_switch_ins > 0 {
            format!("; switch-ins not seen: {} (those runs have no run-queue wait)", stats.missed_switch_ins)
        } else {
            String::new()
        }
    );
    if let Some(n) = stats.preempted_by_tracer.filter(|&n| n > 0) {
        let _ = writeln!(
            o,
            "  netdrift's own reader preempted the targets {n} time{}, {} before they ran again: part of the delays above is the tracer's (run it on another CPU: taskset -c N netdrift ...)",
            if n == 1 { "" } else { "s" },
            dur(stats.preempted_by_tracer_ns.unwrap_or(0))
        );
    }
    if stats.epoll_data_unmapped > 0 {
        let _ = writeln!(
            o,
            "  {} events epoll_wait returned show a data word, not an fd: registered by another thread than the one that accepted (memcached's workers), or closed or taken out of the epoll set before /proc was read (nginx's accept_mutex); --epoll-ctl traces every registration and maps them all",
            stats.epoll_data_unmapped
        );
    }
    if losses.counted() > 0 {
        let cpus = losses.per_cpu_text();
        // Each fix only beside the loss it fixes.
        let _ = writeln!(
            o,
            "  LOST: {} records{}, {} stacks, {} map-full{}, {} unreadable epoll arrays{}",
            losses.ringbuf,
            if losses.ringbuf > 0 {
                format!(" (ring buffer full: {})", ringbuf_fix(ringbuf_mib, losses.reader, secs))
            } else {
                String::new()
            },
            losses.stack,
            losses.map_full,
            if losses.map_full > 0 {
                " (a thread's state not created in time: its wake-ups and switches are written, what they mean for its chains may be wrong)"
            } else {
                ""
            },
            losses.user_read,
            if cpus.is_empty() { String::new() } else { format!("; per CPU: {cpus}") }
        );
    }
    if stats.chains_records_lost > 0 {
        let _ = writeln!(
            o,
            "  {} chains were open when records were lost (marked [records lost while open]: a step may be missing; left out of the herd counts and the whole-chain latency)",
            stats.chains_records_lost
        );
    }
    if losses.skipped_total() > 0 {
        let _ = writeln!(o, "  LOST: {}", skipped_text(&losses.skipped));
    }
    if why == crate::trace::INCOMPLETE_RECORDING {
        let _ = writeln!(o, "  lost: unknown (the recording has no end record, which holds the totals)");
    } else if !losses.any() {
        let _ = writeln!(o, "  lost: 0 records, 0 stacks (ring buffer {ringbuf_mib} MiB)");
    }
    o
}

fn hist_block(o: &mut String, title: &str, h: &Hist) {
    let b = h.log2_us();
    if b.is_empty() {
        return;
    }
    let _ = writeln!(o, "  {title}");
    let _ = writeln!(o, "  {:>21} : {:<8} distribution", "usecs", "count");
    let max = *b.iter().max().unwrap_or(&1);
    let first = b.iter().position(|&n| n > 0).unwrap_or(0);
    for (i, &n) in b.iter().enumerate().skip(first) {
        let (lo, hi) = if i == 0 { (0u64, 1u64) } else { (1u64 << i, (1u64 << (i + 1)) - 1) };
        let stars = if max == 0 { 0 } else { ((n as f64 / max as f64) * 40.0).round() as usize };
        let _ = writeln!(o, "  {lo:>10} -> {hi:<8} : {n:<8} |{:<40}|", "*".repeat(stars));
    }
}

fn pct(h: &Hist, p: f64) -> String {
    h.percentile(p).map(dur).unwrap_or_else(|| "-".into())
}

/// The analysis sections of the summary: herd, latency, slowest chains,
/// threads. `lost`: records were lost (the counts are lower bounds).
pub fn summary_sections(s: &Summary, lost: bool) -> String {
    let mut o = String::new();
    if !s.herd.is_empty() {
        let _ = writeln!(o, "\nthundering herd, per listen socket:");
        let w = s.herd.iter().map(|r| s.herd_label(r).len()).max().unwrap_or(0).max(24);
        let _ = writeln!(
            o,
            "  {:<w$} {:>6} {:>7} {:>6} {:>7} {:>12} {:>12}",
            "socket", "conns", "events", "woken", "wasted", "woken/event", "wasted/conn"
        );
        for r in &s.herd {
            let _ = writeln!(
                o,
                "  {:<w$} {:>6} {:>7} {:>6} {:>7} {:>12.2} {:>12.2}",
                s.herd_label(r),
                r.connections,
                r.events,
                r.wakeups,
                r.wasted,
                r.wakeups_per_event(),
                r.herd_ratio()
            );
            let list = |m: &std::collections::BTreeMap<String, u64>| -> String {
                if m.is_empty() {
                    return "-".into();
                }
                m.iter().map(|(k, v)| format!("{} {v}", term_safe(k))).collect::<Vec<_>>().join(", ")
            };
            let _ = writeln!(o, "    accepted by: {}", list(&r.winners));
            let _ = writeln!(o, "    woken for nothing: {}", list(&r.losers));
            if lost {
                // An accept or wake-up lost is missing from every count here, not only from marked chains.
                let _ = writeln!(o, "    records were lost (see below): these counts are lower bounds");
            }
            if r.events_records_lost > 0 {
                let n = r.events_records_lost;
                let _ = writeln!(o, "    left out: {n} event{} open when records were lost", if n == 1 { "" } else { "s" });
            }
            if r.herd_ratio() >= 0.5 {
                let _ = writeln!(
                    o,
                    "    -> {:.2} wasted wake-ups per connection: register the listen socket with EPOLLEXCLUSIVE, or give each worker its own listen socket with SO_REUSEPORT",
                    r.herd_ratio()
                );
            }
        }
    }
    let l = &s.latency;
    let stages = l.stages();
    if stages.iter().any(|(_, h)| h.count > 0) {
        let _ = writeln!(o, "\nlatency per stage:");
        let _ = writeln!(o, "  {:<34} {:>7} {:>9} {:>9} {:>9} {:>9}", "stage", "count", "p50", "p90", "p99", "max");
        for (name, h) in stages.iter().filter(|(_, h)| h.count > 0) {
            let _ = writeln!(
                o,
                "  {:<34} {:>7} {:>9} {:>9} {:>9} {:>9}",
                name,
                h.count,
                pct(h, 50.0),
                pct(h, 90.0),
                pct(h, 99.0),
                dur(h.max_ns)
            );
        }
        for (name, h) in stages.iter().filter(|(_, h)| h.count > 0) {
            let _ = writeln!(o);
            hist_block(&mut o, name, h);
        }
    }
    if !s.slowest.is_empty() {
        let _ = writeln!(o, "\nslowest chains:");
        for w in &s.slowest {
            let _ = writeln!(o, "  chain {}  {}  {}", w.chain, dur(w.total_ns), term_safe(&w.title));
            let total = w.total_ns.max(1);
            for (label, off) in &w.steps {
                let pos = ((*off as f64 / total as f64) * 40.0).round() as usize;
                let bar = format!("{}#", " ".repeat(pos.min(40)));
                let _ = writeln!(o, "    {:<44} |{:<41}| +{}", term_safe(label), bar, dur(*off));
            }
        }
    }
    if !s.threads.is_empty() {
        let _ = writeln!(o, "\nwake-ups per thread:");
        for t in &s.threads {
            let join =
                |m: &std::collections::BTreeMap<String, u64>| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
            let _ = writeln!(
                o,
                "  {}  {} wake-up{}, switches {} voluntary / {} involuntary, run queue p50 {} p99 {}",
                t.label(&term_safe(&t.comm)),
                t.wakeups,
                if t.wakeups == 1 { "" } else { "s" },
                t.voluntary,
                t.involuntary,
                pct(&t.runq, 50.0),
                pct(&t.runq, 99.0)
            );
            if t.wakeups > 0 {
                let _ = writeln!(o, "    causes: {}", join(&t.by_cause));
                let _ = writeln!(o, "    waker contexts: {}", join(&t.by_context));
                let mut w: Vec<(&String, &u64)> = t.wakers.iter().collect();
                w.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                let top: Vec<String> = w.iter().take(5).map(|(k, v)| format!("{} {v}", term_safe(k))).collect();
                let _ = writeln!(o, "    top wakers: {}", top.join(", "));
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A poll or select loop: woken, accepting, never in epoll_wait, its
    /// listener's row with no event; a blocking accept's row has events.
    #[test]
    fn a_trace_without_epoll_returns_says_the_herd_is_not_measured() {
        let mut stats = Stats { wakes: 24, accepts: 5, accept_eagain: 3, ..Default::default() };
        let mut row = HerdRow { connections: 5, ..Default::default() };
        assert!(
            no_epoll_note(&stats, std::slice::from_ref(&row)).is_some_and(|n| n.contains("no epoll_wait return of the targets was seen"))
        );
        assert_eq!(no_epoll_note(&stats, &[]), None, "accepts but no listener: nothing to say");
        row.events = 5;
        assert_eq!(no_epoll_note(&stats, std::slice::from_ref(&row)), None, "a blocking accept's wake-ups were read at the listener");
        row.events = 0;
        stats.by_type.insert("epoll_exit".into(), 1);
        assert_eq!(no_epoll_note(&stats, &[row]), None);
    }

    /// An io_uring server: woken for its connections, yet no epoll_wait
    /// return, no accept call and no listener row: its zeros are explained.
    #[test]
    fn a_woken_target_with_no_epoll_or_accept_gets_the_note() {
        let mut stats = Stats { wakes: 15, ..Default::default() };
        assert!(no_epoll_note(&stats, &[]).is_some_and(|n| n.contains("no accept of the targets was seen") && n.contains("io_uring")));
        stats.wakes = 0;
        assert_eq!(no_epoll_note(&stats, &[]), None, "never woken: nothing to explain");
        stats.wakes = 15;
        stats.by_type.insert("epoll_exit".into(), 3);
        assert_eq!(no_epoll_note(&stats, &[]), None, "an epoll loop with no listener (a client)");
    }

    /// Handler probes that never fired are pointed out, not left out.
    #[test]
    fn handler_calls_are_counted_when_probed_even_when_none() {
        let l = Losses::default();
        let none = summary(&Stats::default(), &l, 1.0, 8, "done");
        assert!(!none.contains("handler"), "{none}");
        let idle = summary(&Stats { handler_probes: 3, ..Default::default() }, &l, 1.0, 8, "done");
        assert!(idle.contains(", 0 handler calls\n") && idle.contains("none of the 3 handler symbols probed was called"), "{idle}");
        let busy = summary(&Stats { handler_probes: 3, handlers: 7, ..Default::default() }, &l, 1.0, 8, "done");
        assert!(busy.contains(", 7 handler calls\n") && !busy.contains("none of the"), "{busy}");
    }

    #[test]
    fn summary_names_skipped_runs_apart_from_dropped_records() {
        let stats = Stats::default();
        let mut l = Losses::default();
        let clean = summary(&stats, &l, 1.0, 8, "done");
        assert!(clean.contains("lost: 0 records, 0 stacks (ring buffer 8 MiB)") && !clean.contains("LOST"), "{clean}");
        l.skipped.insert("nd_sched_waking".into(), 2);
        let s = summary(&stats, &l, 1.0, 8, "done");
        assert!(s.contains("LOST: 2 program runs skipped by the kernel") && s.contains("nd_sched_waking 2"), "{s}");
        assert!(!s.contains("records (ring buffer full") && !s.contains("lost: 0 records"), "{s}");
        l.ringbuf = 5;
        l.per_cpu = vec![[0; 4], [3, 0, 0, 0], [2, 0, 0, 0]];
        let s = summary(&stats, &l, 1.0, 8, "done");
        assert!(s.contains("unreadable epoll arrays; per CPU: CPU1 3, CPU2 2\n"), "{s}");
        assert!(
            s.contains("LOST: 5 records (ring buffer full: raise --ringbuf-size (now 8 MiB; try --ringbuf-size 32))")
                && s.contains("LOST: 2 program"),
            "{s}"
        );
        let st = Stats { accepts: 5, accept_eagain: 2, closes: 66, socket_closes: 5, connection_closes: 4, ..Default::default() };
        let s = summary(&st, &Losses::default(), 1.0, 8, "done");
        assert!(
            s.contains("5 accepts (and 2 EAGAIN, 0 other errors), 5 socket closes (4 of TCP connections), 61 closes of other fds"),
            "{s}"
        );
        assert!(!s.contains("data word"), "{s}");
        let s = summary(&Stats { epoll_data_unmapped: 3, ..st }, &Losses::default(), 1.0, 8, "done");
        assert!(s.contains("3 events epoll_wait returned show a data word, not an fd") && s.contains("--epoll-ctl"), "{s}");
        let idle = ReaderCpu { run_ns: 10_000_000, wait_ns: 1_000_000, wall_ns: 0 };
        assert_eq!(ringbuf_fix(512, idle, 1.0), "raise --ringbuf-size (now 512 MiB; try --ringbuf-size 1024)");
        assert!(ringbuf_fix(1024, idle, 1.0).contains("the most"));
        // Kept off the CPUs for 300 ms of 1 s, or busy 950 ms of it: not the ring's size.
        let starved = ringbuf_fix(8, ReaderCpu { run_ns: 10_000_000, wait_ns: 300_000_000, wall_ns: 0 }, 1.0);
        assert!(starved.starts_with("netdrift's reader waited 300.00ms for a CPU (30% of the time): give it one"), "{starved}");
        let busy = ringbuf_fix(8, ReaderCpu { run_ns: 950_000_000, wait_ns: 0, wall_ns: 0 }, 1.0);
        assert!(busy.starts_with("netdrift's reader was busy 95% of the time"), "{busy}");
    }

    #[test]
    fn growth_is_counted_once_across_a_failed_read() {
        let reading = |ringbuf: u64, skipped: &[(&str, u64)]| Losses {
            ringbuf,
            skipped: skipped.iter().map(|(p, n)| (p.to_string(), *n)).collect(),
            ..Default::default()
        };
        let mut last = Losses::default();
        let mut reported = [0u64; 5];
        // 5 lost; then a read that failed (0, a program missing); then 7 and more skips.
        for now in [reading(5, &[("a", 1), ("b", 2)]), reading(0, &[("b", 2)]), reading(7, &[("a", 1), ("b", 4)])] {
            let d = now.growth_since(&last);
            reported.iter_mut().zip(d).for_each(|(r, d)| *r += d);
            last.raise_to(&now);
        }
        assert_eq!(reported, [7, 0, 0, 0, 5], "the lines add up to the last reading");
    }

    #[test]
    fn losses_of_a_recording_without_skipped_runs_still_read() {
        let l: Losses = serde_json::from_str(r#"{"ringbuf":1,"stack":0,"map_full":0,"user_read":0,"per_cpu":[[1,0,0,0]]}"#).unwrap();
        assert_eq!((l.ringbuf, l.skipped_total()), (1, 0));
    }
}
