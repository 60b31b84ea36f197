//! Kernel addresses -> names, and what a waker's stack says about the wake-up.
//!
//! One long-lived blazesym [`Symbolizer`] reads /proc/kallsyms once; names are
//! cached per address because the same few hundred frames repeat.

use std::collections::HashMap;
use std::sync::Arc;

use blazesym::symbolize::source::{Kernel, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use blazesym::MaybeDefault;

use crate::events::{Cause, Task, WakerContext};

/// Resolves kernel addresses, batched, with a cache.
pub struct KernelSyms {
    symbolizer: Symbolizer,
    cache: HashMap<u64, Option<Arc<str>>>,
}

impl Default for KernelSyms {
    fn default() -> Self {
        Self::new()
    }
}

impl KernelSyms {
    pub fn new() -> Self {
        KernelSyms { symbolizer: Symbolizer::new(), cache: HashMap::new() }
    }

    /// Names for `addrs` (None where kallsyms has no symbol).
    pub fn names(&mut self, addrs: &[u64]) -> Vec<Option<Arc<str>>> {
        let missing: Vec<u64> = addrs.iter().copied().filter(|a| !self.cache.contains_key(a)).collect();
        if !missing.is_empty() {
            let src = Source::Kernel(Kernel {
                kallsyms: MaybeDefault::Default,
                vmlinux: MaybeDefault::None,
                debug_syms: false,
                ..Default::default()
            });
            match self.symbolizer.symbolize(&src, Input::AbsAddr(&missing)) {
                Ok(syms) => {
                    for (a, s) in missing.iter().zip(syms) {
                        let name = match s {
                            Symbolized::Sym(sym) => Some(Arc::from(sym.name.as_ref())),
                            Symbolized::Unknown(_) => None,
                        };
                        self.cache.insert(*a, name);
                    }
                }
                Err(_) => {
                    for a in &missing {
                        self.cache.insert(*a, None);
                    }
                }
            }
        }
        addrs.iter().map(|a| self.cache.get(a).cloned().flatten()).collect()
    }

    /// Names for the frames of a stack, innermost first. Each frame below
    /// the first is a return address: it is looked up one byte back, inside
    /// its call, or a call that never returns (the last one of a function)
    /// would take the name of what follows (`__pfx_` padding, the next function).
    pub fn stack_names(&mut self, addrs: &[u64]) -> Vec<Option<Arc<str>>> {
        let lookup: Vec<u64> = addrs.iter().enumerate().map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) }).collect();
        self.names(&lookup)
    }

    /// Frame names for printing, innermost first, without netdrift's own
    /// BPF frames on top; unknown frames as `[unknown] 0xADDR`.
    pub fn frames(&mut self, addrs: &[u64]) -> Vec<String> {
        let f = self
            .stack_names(addrs)
            .into_iter()
            .zip(addrs)
            .map(|(n, a)| match n {
                Some(n) => n.to_string(),
                None => format!("[unknown] 0x{a:x}"),
            })
            .collect();
        without_tracer_frames(f)
    }
}

/// A stack without the tracer's frames on top. Up to the last of them near
/// the top, not only while they last: once the programs are unloaded (a
/// replay), a BPF program's frame takes the name of whatever symbol is below
/// its address, and the trampoline frames under it must go too.
pub fn without_tracer_frames(mut f: Vec<String>) -> Vec<String> {
    let n = tracer_frames_on_top(|i| f.get(i).is_some_and(|n| is_tracer_frame(n)));
    f.drain(..n);
    f
}

/// How many frames on top are the tracer's: the BPF program's, whatever its
/// name, if a trampoline frame follows it, and the run of trampoline frames.
/// Only that run: an interrupt taken inside another of netdrift's programs
/// (a socket-state hook in softirq) has that program's frames deeper down,
/// under the frames that say what woke the thread.
fn tracer_frames_on_top(tracer: impl Fn(usize) -> bool) -> usize {
    if !(tracer(0) || tracer(1)) {
        return 0;
    }
    let mut n = 1;
    while tracer(n) {
        n += 1;
    }
    n
}

/// Frames of the tracer itself (the BPF program and its tracepoint
/// trampoline): they top every stack captured in a BPF program.
fn is_tracer_frame(f: &str) -> bool {
    f.starts_with("bpf_prog_") || f.starts_with("bpf_trace_run") || f.starts_with("__bpf_trace_") || f.starts_with("__traceiter_")
}

/// What the waker's stack says: the cause, the context, whether epoll relayed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WakeClass {
    pub cause: Cause,
    pub context: WakerContext,
    pub via_epoll: bool,
}

impl WakeClass {
    /// No stack to say it.
    pub const UNKNOWN: WakeClass = WakeClass { cause: Cause::Unknown, context: WakerContext::Unknown, via_epoll: false };
}

/// Frames that belong to the wake-up machinery itself and say nothing of the cause.
fn is_plumbing(f: &str) -> bool {
    f.starts_with("try_to_wake_up")
        || f.starts_with("__wake_up")
        || f.starts_with("wake_up")
        || f.starts_with("autoremove_wake_function")
        || f.starts_with("default_wake_function")
        || f.starts_with("ep_autoremove_wake_function")
        || f.starts_with("pollwake")
        || f.starts_with("woken_wake_function")
        || f.starts_with("__traceiter")
        || f.starts_with("bpf_")
        || f.starts_with("ttwu")
}

fn cause_of(f: &str) -> Option<Cause> {
    let c = match f {
        "sock_def_readable" | "tcp_data_ready" | "sk_psock_data_ready" | "unix_stream_sendmsg" | "unix_dgram_sendmsg" => {
            Cause::SocketReadable
        }
        "sock_def_write_space" | "sk_stream_write_space" | "tcp_check_space" | "tcp_new_space" | "unix_write_space" => {
            Cause::SocketWritable
        }
        "sock_def_wakeup" | "sock_def_error_report" | "inet_csk_listen_stop" | "tcp_done" | "tcp_fin" | "tcp_reset" => Cause::SocketState,
        "hrtimer_wakeup" | "timerfd_tmrproc" | "process_timeout" | "hrtimer_run_queues" | "call_timer_fn" => Cause::Timer,
        "eventfd_write" | "eventfd_signal_mask" | "eventfd_signal" => Cause::Eventfd,
        "pipe_write" | "pipe_read" | "anon_pipe_write" | "anon_pipe_read" => Cause::Pipe,
        "futex_wake" | "futex_wake_mark" | "futex_wake_op" | "futex_requeue" | "wake_up_q" => Cause::Futex,
        "signal_wake_up_state" | "complete_signal" | "__send_signal_locked" => Cause::Signal,
        _ => return None,
    };
    Some(c)
}

/// An epoll instance waking its own waiters (`ep->wq`), not through
/// `ep_poll_callback`: a returning epoll_wait with items still ready
/// (ep_done_scan; ep_scan_ready_list before 5.11), or an epoll_ctl adding or
/// modifying a ready fd. The outer ones stand in where those are inlined.
fn is_epoll_relay(f: &str) -> bool {
    matches!(
        f,
        "ep_done_scan" | "ep_scan_ready_list" | "ep_send_events" | "ep_poll" | "do_epoll_wait" | "ep_insert" | "ep_modify" | "do_epoll_ctl"
    )
}

fn is_softirq(f: &str) -> bool {
    matches!(
        f,
        "handle_softirqs"
            | "__do_softirq"
            | "do_softirq"
            | "net_rx_action"
            | "__softirqentry_text_start"
            | "run_ksoftirqd"
            | "do_softirq_own_stack"
            | "__local_bh_enable_ip"
            | "run_timer_softirq"
            | "tasklet_action_common"
            | "irq_exit_rcu"
            | "__irq_exit_rcu"
    )
}

fn is_irq(f: &str) -> bool {
    f.starts_with("asm_common_interrupt")
        || f.starts_with("common_interrupt")
        || f.starts_with("asm_sysvec_")
        || f.starts_with("sysvec_")
        || f.starts_with("__sysvec_")
        || f == "hrtimer_interrupt"
        || f == "handle_irq_event"
        || f == "irq_exit_rcu"
        || f == "__irq_exit_rcu"
}

/// Classify a wake-up from its waker and the waker's stack (innermost first).
pub fn classify(waker: &Task, is_kthread: bool, frames: &[Option<Arc<str>>]) -> WakeClass {
    let mut cause = None;
    let mut via_epoll = false;
    let mut softirq = false;
    let mut irq = false;
    let mut irq_exit = false;
    let mut syscall = false;
    let mut first_caller = true;
    // The tracer's own frames on top: a BPF program's is misnamed when its
    // symbol is not in kallsyms (bpf_jit_kallsyms off), and must not pass
    // for the wake-up's caller.
    let ours = tracer_frames_on_top(|i| frames.get(i).and_then(|f| f.as_deref()).is_some_and(is_tracer_frame));
    for f in frames[ours..].iter().flatten() {
        let f: &str = f;
        // Compiler clones (.isra.0, .constprop.0, .part.0) keep the base name.
        let base = f.split('.').next().unwrap_or(f);
        if base == "ep_poll_callback" {
            via_epoll = true;
            continue;
        }
        if cause.is_none() && !is_plumbing(base) {
            // Only as the direct caller of the wake-up: an interrupt taken
            // inside epoll_wait has these frames further out.
            cause = if first_caller && is_epoll_relay(base) { Some(Cause::EpollRelay) } else { cause_of(base) };
            first_caller = false;
        }
        if is_softirq(base) {
            softirq = true;
        }
        if base == "irq_exit_rcu" || base == "__irq_exit_rcu" {
            irq_exit = true;
        }
        if is_irq(base) {
            irq = true;
        }
        if base == "do_syscall_64"
            || base.starts_with("entry_SYSCALL")
            || base.starts_with("__x64_sys_")
            || base.starts_with("__arm64_sys_")
        {
            syscall = true;
        }
    }
    // No frame named (no stack, or kallsyms hidden by kptr_restrict): nothing is known.
    let named = frames.iter().any(|f| f.is_some());
    let cause = if !named { Cause::Unknown } else { cause.unwrap_or(Cause::Other) };
    let context = if !named && waker.tid != 0 {
        WakerContext::Unknown
    } else if waker.tid == 0 {
        WakerContext::IdleIrq
    } else if is_kthread && waker.comm.starts_with("ksoftirqd/") {
        WakerContext::Ksoftirqd
    } else if softirq && (irq || irq_exit) {
        WakerContext::SoftirqOnIrqExit
    } else if softirq {
        if is_kthread {
            WakerContext::KernelThread
        } else {
            WakerContext::SoftirqInSyscall
        }
    } else if irq {
        WakerContext::Irq
    } else if is_kthread {
        WakerContext::KernelThread
    } else {
        let _ = syscall;
        WakerContext::Process
    };
    WakeClass { cause, context, via_epoll }
}

#[cfg(test)]
pub(crate) mod tests {
    /// Replayed, the BPF program's frame is named after a neighbouring
    /// symbol: the trampoline frames under it go all the same.
    #[test]
    fn tracer_frames_go_even_when_the_program_is_misnamed() {
        let v = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let replayed =
            v(&["__stop_runtime_ptr_USER_PTR_MAX", "bpf_trace_run1", "__traceiter_sched_waking", "try_to_wake_up", "ep_poll_callback"]);
        assert_eq!(without_tracer_frames(replayed), v(&["try_to_wake_up", "ep_poll_callback"]));
        let live = v(&["bpf_prog_abc_nd_sched_waking", "bpf_trace_run1", "try_to_wake_up"]);
        assert_eq!(without_tracer_frames(live), v(&["try_to_wake_up"]));
        assert_eq!(without_tracer_frames(v(&["try_to_wake_up"])), v(&["try_to_wake_up"]));
    }

    use super::*;

    /// A timer's wake-up from its interrupt, innermost first, down to the interrupt entry.
    pub(crate) const TIMER_IRQ_WAKE: [&str; 7] = [
        "try_to_wake_up",
        "hrtimer_wakeup",
        "__hrtimer_run_queues",
        "hrtimer_interrupt",
        "__sysvec_apic_timer_interrupt",
        "sysvec_apic_timer_interrupt",
        "asm_sysvec_apic_timer_interrupt",
    ];

    fn fr(names: &[&str]) -> Vec<Option<Arc<str>>> {
        names.iter().map(|n| Some(Arc::from(*n))).collect()
    }

    fn task(tid: u32, comm: &str) -> Task {
        Task { pid: tid, tid, comm: comm.into() }
    }

    #[test]
    fn loopback_sender_softirq_readable_via_epoll() {
        // The article's kubelet -> envoy stack, innermost first.
        let f = fr(&[
            "try_to_wake_up",
            "ep_autoremove_wake_function",
            "__wake_up_common",
            "__wake_up",
            "ep_poll_callback",
            "__wake_up_common",
            "__wake_up_sync_key",
            "sock_def_readable",
            "tcp_data_queue",
            "tcp_rcv_established",
            "tcp_v4_do_rcv",
            "tcp_v4_rcv",
            "ip_local_deliver_finish",
            "__netif_receive_skb_one_core",
            "process_backlog",
            "net_rx_action",
            "handle_softirqs",
            "do_softirq",
            "__local_bh_enable_ip",
            "__dev_queue_xmit",
            "ip_finish_output2",
            "tcp_sendmsg",
            "sock_write_iter",
            "vfs_write",
            "ksys_write",
            "do_syscall_64",
            "entry_SYSCALL_64_after_hwframe",
        ]);
        let c = classify(&task(4242, "curl"), false, &f);
        assert_eq!(c, WakeClass { cause: Cause::SocketReadable, context: WakerContext::SoftirqInSyscall, via_epoll: true });
    }

    /// The two stacks of a server whose threads share one epoll instance.
    #[test]
    fn an_epoll_instance_waking_its_next_waiter_is_a_relay() {
        let wake_plumbing = ["try_to_wake_up", "ep_autoremove_wake_function", "__wake_up_common", "__wake_up"];
        let with = |callers: &[&str]| fr(&[&wake_plumbing[..], callers].concat());
        let relay = |c: WakeClass| (c.cause, c.via_epoll);
        let returning = with(&["ep_done_scan", "ep_send_events", "do_epoll_wait", "__x64_sys_epoll_wait", "do_syscall_64"]);
        assert_eq!(relay(classify(&task(11, "srv"), false, &returning)), (Cause::EpollRelay, false));
        // Under the BPF program's frame, misnamed (its symbol not in kallsyms), and its trampoline.
        let traced = [fr(&["__stop_runtime_ptr_USER_PTR_MAX", "bpf_trace_run1", "__traceiter_sched_waking"]), returning.clone()].concat();
        assert_eq!(relay(classify(&task(11, "srv"), false, &traced)), (Cause::EpollRelay, false));
        // A timer interrupting another of netdrift's programs, in a reset's softirq.
        let ours = ["bpf_prog_1_nd_sched_waking", "bpf_trace_run1", "__traceiter_sched_waking"];
        let interrupted = [
            "bpf_prog_2_nd_inet_sock_set_state",
            "bpf_trace_run3",
            "__traceiter_inet_sock_set_state",
            "tcp_set_state",
            "tcp_done",
            "tcp_reset",
        ];
        let timer = fr(&[&ours[..], &TIMER_IRQ_WAKE, &interrupted].concat());
        assert_eq!(classify(&task(20, "client"), false, &timer).cause, Cause::Timer);
        let shown = without_tracer_frames(timer.iter().flatten().map(|f| f.to_string()).collect());
        assert_eq!(shown[..2], ["try_to_wake_up", "hrtimer_wakeup"]);
        let adding = with(&["do_epoll_ctl", "__x64_sys_epoll_ctl", "do_syscall_64", "entry_SYSCALL_64_after_hwframe"]);
        assert_eq!(relay(classify(&task(11, "srv"), false, &adding)), (Cause::EpollRelay, false));
        // An interrupt taken inside epoll_wait wakes for its own reasons.
        let irq = with(&["some_driver_complete", "__handle_irq_event_percpu", "common_interrupt", "ep_poll", "do_epoll_wait"]);
        assert_eq!(classify(&task(11, "srv"), false, &irq).cause, Cause::Other);
    }

    #[test]
    fn ksoftirqd_idle_and_timer() {
        let f = fr(&[
            "try_to_wake_up",
            "ep_poll_callback",
            "sock_def_readable",
            "tcp_v4_rcv",
            "net_rx_action",
            "handle_softirqs",
            "run_ksoftirqd",
            "kthread",
        ]);
        assert_eq!(classify(&task(18, "ksoftirqd/1"), true, &f).context, WakerContext::Ksoftirqd);
        let f = fr(&[&TIMER_IRQ_WAKE[..], &["default_idle"]].concat());
        let c = classify(&task(0, "swapper/0"), true, &f);
        assert_eq!((c.cause, c.context, c.via_epoll), (Cause::Timer, WakerContext::IdleIrq, false));
    }

    #[test]
    fn eventfd_futex_writable_and_clones() {
        let f = fr(&["try_to_wake_up", "ep_autoremove_wake_function", "ep_poll_callback", "eventfd_write", "vfs_write", "do_syscall_64"]);
        let c = classify(&task(7, "main"), false, &f);
        assert_eq!((c.cause, c.context, c.via_epoll), (Cause::Eventfd, WakerContext::Process, true));
        let f = fr(&["try_to_wake_up", "wake_up_q", "futex_wake", "do_futex", "__x64_sys_futex"]);
        assert_eq!(classify(&task(7, "main"), false, &f).cause, Cause::Futex);
        let f = fr(&["try_to_wake_up", "ep_poll_callback", "sock_def_write_space.isra.0", "tcp_ack"]);
        assert_eq!(classify(&task(7, "main"), false, &f).cause, Cause::SocketWritable);
        assert_eq!(classify(&task(7, "main"), false, &[]).cause, Cause::Unknown);
        // Frames with no names (kallsyms hidden from a replay): nothing known either.
        let c = classify(&task(7, "main"), false, &[None, None, None]);
        assert_eq!((c.cause, c.context), (Cause::Unknown, WakerContext::Unknown));
    }
}
