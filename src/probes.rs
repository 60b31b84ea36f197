//! Load, configure and attach the BPF programs; probe kernel features first
//! and turn optional programs off (autoload) instead of failing.

use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject};

use crate::error::{Error, Result};
use crate::output::text::Losses;
use crate::skel::{NetdriftSkel, NetdriftSkelBuilder};

const MAX_COMMS: usize = 8;

/// How long a waker stack's class stands for its signature's later wake-ups.
pub const STACK_REUSE_NS: u64 = 100_000_000;

/// What the programs are told before load.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub tgids: Vec<u32>,
    pub tids: Vec<u32>,
    pub comms: Vec<String>,
    pub follow_children: bool,
    pub ringbuf_bytes: u32,
    pub capture_stacks: bool,
    /// Load the programs of older kernels even where this one has better:
    /// the wake-up program that reads sockets with bpf_probe_read_kernel
    /// (no bpf_rdonly_cast, < 6.2) and the sched_switch program that reads
    /// the state from the task (no prev_state, < 5.18). Tests of those paths.
    pub probed_reads: bool,
    /// Benchmark only: every program returns at once, to measure what
    /// attaching them costs by itself.
    pub empty: bool,
    /// Take no waker stack when one was taken this recently for the same waker,
    /// woken thread and signature (`nd_wake.stack_sig`; the wake-up reuses its class); 0: every wake-up.
    pub stack_reuse_ns: u64,
    pub switch_out: bool,
    /// Write every epoll_enter at the syscall (else only when the thread blocks, is preempted or woken in it).
    pub epoll_enter: bool,
    /// How long after a TCP state change (FIN, RST) a wake-up on the same CPU is its consequence.
    pub sock_window_ns: u64,
    /// Trace the receive path (netif_receive_skb, napi_poll) before the socket.
    pub packets: bool,
    /// Application handlers to attach uprobes to.
    pub handlers: Vec<crate::handlers::Resolved>,
    /// Trace epoll_ctl(2) instead of reading accepted sockets' epoll items.
    pub epoll_ctl: bool,
}

impl ProbeConfig {
    /// No -p/-t/-c: every task but netdrift itself.
    pub fn trace_all(&self) -> bool {
        self.tgids.is_empty() && self.tids.is_empty() && self.comms.is_empty()
    }

    /// The trace ends when its targets have exited: they were named by pid
    /// or tid (processes of a -c name, or any task, may start later).
    pub fn ends_with_targets(&self) -> bool {
        self.comms.is_empty() && !self.trace_all()
    }
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            tgids: Vec::new(),
            tids: Vec::new(),
            comms: Vec::new(),
            follow_children: true,
            ringbuf_bytes: 8 << 20,
            capture_stacks: true,
            probed_reads: false,
            empty: false,
            stack_reuse_ns: STACK_REUSE_NS,
            switch_out: true,
            epoll_enter: false,
            sock_window_ns: crate::analysis::SOCK_WINDOW_NS,
            packets: false,
            handlers: Vec::new(),
            epoll_ctl: false,
        }
    }
}

/// Which optional hooks this kernel has.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Features {
    pub inet_sock_set_state: bool,
    pub epoll_pwait2: bool,
    pub accept: bool,
    pub netif_receive_skb: bool,
    pub napi_poll: bool,
    /// `struct file` lists the epoll items watching it (`f_ep`, 5.11+).
    pub file_epoll_items: bool,
    /// The scheduler can keep a sleeping task queued (`se.sched_delayed`, 6.12+):
    /// read at every wake-up so that its run-queue wait is not lost.
    pub delayed_dequeue: bool,
    /// `bpf_rdonly_cast` (6.2+): the wake-up program reads sockets with
    /// plain loads instead of a helper call per field.
    pub rdonly_cast: bool,
    /// sched_switch passes `prev_state` (5.18+): the state a thread slept in,
    /// which a waker racing its switch-out cannot overwrite.
    pub prev_state: bool,
    /// Multi-uprobe links (6.6+): a file's handlers share one link.
    pub uprobe_multi: bool,
}

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Is `name` in the kernel's BTF string table? tp_btf/X needs `btf_trace_X`.
pub fn btf_has(btf: &[u8], name: &str) -> bool {
    btf_has_each(btf, &[name])[0]
}

/// [`btf_has`] for several names in one pass over the BTF (several MiB:
/// a pass each made a debug build start a second later).
pub fn btf_has_each<const N: usize>(btf: &[u8], names: &[&str; N]) -> [bool; N] {
    let mut found = [false; N];
    // Every NUL-delimited string; the first has no NUL before it.
    for s in btf.split(|&b| b == 0).skip(1) {
        if let Some(i) = names.iter().position(|n| n.as_bytes() == s) {
            found[i] = true;
        }
    }
    found
}

/// Once the programs are attached: settle the targets listed from /proc
/// with what changed since, which no hook saw. A target that exited (a
/// zombie too: its pid comes back once reaped) is dropped; a child a target
/// forked since netdrift started is added (nginx starting its workers;
/// older children of a -c match are not followed, as before). `op(id,
/// is_tid, add)` runs the `nd_targets_op` program and says whether an add
/// found room. Returns the children added, and notes for the user (a
/// failure here leaves the trace running, as it was before this step).
pub fn settle_targets(
    tgids: &[u32],
    tids: &[u32],
    follow_children: bool,
    mut op: impl FnMut(u32, u32, u32) -> Result<bool>,
) -> (Vec<u32>, Vec<String>) {
    let (mut forked, mut notes) = (Vec::new(), Vec::new());
    let mut run = || -> Result<()> {
        // A process lives while one of its threads does (a leader that called
        // pthread_exit is a zombie beside them); a -t thread is itself.
        for &t in tgids {
            if !crate::procfs::process_alive(t) {
                op(t, 0, 0)?;
            }
        }
        for &t in tids {
            if !crate::procfs::alive(t) {
                op(t, 1, 0)?;
            }
        }
        if follow_children && !tgids.is_empty() {
            let since = crate::procfs::own_start_ticks().unwrap_or(u64::MAX);
            for c in crate::procfs::forked_since(tgids, since) {
                if !op(c, 0, 1)? {
                    notes.push(format!("child process {c} not traced: the target list is full"));
                } else if crate::procfs::process_alive(c) {
                    forked.push(c);
                } else {
                    // Gone since the scan: no exit hook saw it either.
                    op(c, 0, 0)?;
                }
            }
        }
        Ok(())
    };
    if let Err(e) = run() {
        notes.push(format!("targets changed while loading could not be settled ({e}): a child forked meanwhile may be missed"));
    }
    (forked, notes)
}

/// Give every thread of the targets its task storage before the programs
/// run. Created by a program, the first one of a thread comes from a small
/// per-CPU cache that a wake-up (interrupts off) cannot refill: one packet
/// waking a herd of more than ~4 threads asleep since before the trace
/// found no room for the rest (map-full, the herd miscounted). Made from
/// here, in a syscall, one at a time, each allocation may wait for a
/// refill. A thread needs a pidfd of its own (PIDFD_THREAD, Linux 6.9):
/// before that only leaders get one, and the note says so.
fn precreate_task_state(tasks: &impl MapCore, tgids: &[u32], tids: &[u32]) -> Option<String> {
    const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;
    let value = vec![0u8; tasks.value_size() as usize];
    let mut all: Vec<u32> = tgids.iter().flat_map(|&p| crate::procfs::threads(p)).chain(tids.iter().copied()).collect();
    all.sort_unstable();
    all.dedup();
    let mut failed = 0usize;
    for tid in all {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid as libc::pid_t, PIDFD_THREAD) } as i32;
        if fd < 0 {
            // Gone since the scan: nothing to miss.
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
                failed += 1;
            }
            continue;
        }
        // SAFETY: fd was just returned by pidfd_open and is owned here alone.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // NOEXIST: a thread that already has state keeps it.
        if let Err(e) = tasks.update(&fd.as_raw_fd().to_ne_bytes(), &value, MapFlags::NO_EXIST) {
            if e.kind() != libbpf_rs::ErrorKind::AlreadyExists && e.kind() != libbpf_rs::ErrorKind::NotFound {
                failed += 1;
            }
        }
    }
    (failed > 0).then(|| {
        format!(
            "{failed} target threads get their state only when first seen (this kernel gives no pidfd to a thread, Linux < 6.9, \
             or refused it): a herd of more than ~4 of them asleep since before the trace may show as map-full"
        )
    })
}

/// The ids (u32 keys) of a target list map.
/// Entry `key` of a per-CPU array of u64 counters: one value per CPU
/// (none if it cannot be read).
pub fn percpu_u64(map: &impl MapCore, key: u32) -> Vec<u64> {
    match map.lookup_percpu(&key.to_ne_bytes(), MapFlags::ANY) {
        Ok(Some(vals)) => {
            vals.iter().map(|v| v.get(..8).map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]))).unwrap_or(0)).collect()
        }
        _ => Vec::new(),
    }
}

pub fn map_ids(list: &impl MapCore) -> Vec<u32> {
    list.keys().filter_map(|k| Some(u32::from_ne_bytes(k.get(..4)?.try_into().ok()?))).collect()
}

/// Put `id` in a target list and set its bit (`targets_tgid` and
/// `tgid_bits`, or the tid pair, of targets.bpf.h, as its target_add()
/// does), before the programs are attached.
pub fn add_target(list: &impl MapCore, bits: &impl MapCore, id: u32) -> Result<()> {
    list.update(&id.to_ne_bytes(), &[1], MapFlags::ANY)?;
    let k = (id >> 6).to_ne_bytes();
    let old = bits.lookup(&k, MapFlags::ANY)?.and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok()).map(u64::from_ne_bytes);
    let word = old.unwrap_or(0) | 1u64 << (id & 63);
    bits.update(&k, &word.to_ne_bytes(), MapFlags::ANY)?;
    Ok(())
}

/// Does sched_switch pass `prev_state` (5.18+)? Its `btf_trace_sched_switch`
/// prototype then has five parameters: the context and four.
pub fn sched_switch_has_prev_state() -> bool {
    use libbpf_rs::btf::{types, Btf, ReferencesType};
    let Ok(btf) = Btf::from_vmlinux() else { return false };
    let Some(td) = btf.type_by_name::<types::Typedef<'_>>("btf_trace_sched_switch") else { return false };
    let Ok(ptr) = types::Ptr::try_from(td.referenced_type()) else { return false };
    types::FuncProto::try_from(ptr.referenced_type()).is_ok_and(|f| f.len() >= 5)
}

/// Targets, /proc lookups and netdrift's own pid would all be another
/// namespace's numbers than the programs': nothing would match, without a
/// word. Before targets are looked up in /proc.
pub fn check_pid_namespace() -> Result<()> {
    match crate::procfs::pid_namespace_problem() {
        Some(why) => Err(Error::PidNamespace(why)),
        None => Ok(()),
    }
}

/// Pid namespace, root/capabilities and BTF: checked before anything is loaded.
pub fn preflight() -> Result<()> {
    // First: the privilege check below reads /proc/self.
    check_pid_namespace()?;
    if !crate::procfs::privileged() {
        return Err(Error::NotPrivileged);
    }
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(Error::NoBtf);
    }
    Ok(())
}

/// Probe the optional hooks.
pub fn features() -> Result<Features> {
    let btf = std::fs::read(VMLINUX_BTF).map_err(|_| Error::NoBtf)?;
    let [inet_sock_set_state, netif_receive_skb, napi_poll, file_epoll_items, delayed_dequeue, rdonly_cast, uprobe_multi] = btf_has_each(
        &btf,
        &[
            "btf_trace_inet_sock_set_state",
            "btf_trace_netif_receive_skb",
            "btf_trace_napi_poll",
            "f_ep",
            "sched_delayed",
            "bpf_rdonly_cast",
            "bpf_uprobe_multi_link_attach",
        ],
    );
    Ok(Features {
        inet_sock_set_state,
        epoll_pwait2: crate::tracefs::has_tracepoint("syscalls", "sys_enter_epoll_pwait2"),
        accept: crate::tracefs::has_tracepoint("syscalls", "sys_enter_accept"),
        netif_receive_skb,
        napi_poll,
        file_epoll_items,
        delayed_dequeue,
        rdonly_cast,
        prev_state: sched_switch_has_prev_state(),
        uprobe_multi,
    })
}

/// Loaded and attached programs.
pub struct Probes<'obj> {
    pub skel: NetdriftSkel<'obj>,
    pub features: Features,
    /// One line per degraded feature, for the user.
    pub notes: Vec<String>,
    /// Handler uprobes; detached when dropped.
    pub handler_links: Vec<libbpf_rs::Link>,
    /// Children of the targets forked between the /proc scan and the attach,
    /// added to the targets after it (no fork hook saw them).
    pub forked: Vec<u32>,
}

impl Drop for Probes<'_> {
    fn drop(&mut self) {
        self.detach();
    }
}

/// A name as the kernel's `char comm[16]`.
pub fn comm_bytes(s: &str) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, b) in s.bytes().take(15).enumerate() {
        out[i] = b as i8;
    }
    out
}

impl<'obj> Probes<'obj> {
    /// Open, configure, load and attach. Needs tracefs for the syscall
    /// tracepoints: mounted here when absent.
    pub fn load(cfg: &ProbeConfig, open_object: &'obj mut MaybeUninit<OpenObject>) -> Result<Self> {
        // Commands check earlier too, to fail before their side effects (a
        // demo server, output files); this one guards library callers.
        preflight()?;
        crate::tracefs::ensure_tracefs()?;
        let features = features()?;
        let mut notes = Vec::new();
        if cfg.comms.len() > MAX_COMMS {
            return Err(Error::Usage(format!("at most {MAX_COMMS} -c names")));
        }

        let mut open = NetdriftSkelBuilder::default().open(open_object)?;
        {
            let ro = open.maps.rodata_data.as_deref_mut().ok_or_else(|| Error::Bpf("no .rodata in the BPF object".into()))?;
            ro.trace_all = cfg.trace_all();
            ro.has_tids = !cfg.tids.is_empty();
            ro.follow_children = cfg.follow_children;
            ro.n_comms = cfg.comms.len() as u32;
            for (i, c) in cfg.comms.iter().enumerate() {
                ro.comms[i] = comm_bytes(c);
            }
            ro.sock_window_ns = cfg.sock_window_ns;
            ro.herd_gap_ns = crate::analysis::HERD_GAP_NS;
            ro.emit_switch_out = cfg.switch_out;
            ro.emit_epoll_enter = cfg.epoll_enter;
            ro.capture_stacks = cfg.capture_stacks;
            ro.stack_reuse_ns = cfg.stack_reuse_ns;
            // The waker's context sharpens the stack-reuse key (x86_64: found
            // through the run queue; elsewhere read from thread_info with CO-RE).
            if cfg.capture_stacks && cfg.stack_reuse_ns > 0 && cfg!(target_arch = "x86_64") {
                if let crate::offwake::PreemptCount::Runqueue { pc_delta, cpu_delta } = crate::offwake::preempt_count_without_ksym() {
                    ro.pc_via_rq = true;
                    ro.pc_rq_delta = pc_delta;
                    ro.cpu_rq_delta = cpu_delta;
                }
            }
            ro.self_tgid = std::process::id();
            ro.trace_packets = cfg.packets;
            ro.epoll_ctl_traced = cfg.epoll_ctl || !features.file_epoll_items;
            ro.wakeup_bytes = (cfg.ringbuf_bytes / 8) as u64;
            ro.bench_empty = cfg.empty;
            ro.nr_epoll_wait = sysno::EPOLL_WAIT;
            ro.nr_epoll_pwait = libc::SYS_epoll_pwait as i32;
            ro.nr_epoll_pwait2 = libc::SYS_epoll_pwait2 as i32;
            ro.nr_accept = libc::SYS_accept as i32;
            ro.nr_accept4 = libc::SYS_accept4 as i32;
            ro.nr_sock_io = sysno::SOCK_IO;
        }
        open.maps.events.set_max_entries(cfg.ringbuf_bytes)?;
        // Unused target bit maps: 8 bytes instead of 512 KiB.
        if cfg.tids.is_empty() {
            open.maps.tid_bits.set_max_entries(1)?;
        }
        if cfg.trace_all() {
            open.maps.tgid_bits.set_max_entries(1)?;
        }
        // One of the two builds of the wake-up program (same records).
        if features.rdonly_cast && !cfg.probed_reads {
            open.progs.nd_sched_waking_probed.set_autoload(false);
        } else {
            open.progs.nd_sched_waking.set_autoload(false);
        }
        if features.prev_state && !cfg.probed_reads {
            open.progs.nd_sched_switch.set_autoload(false);
        } else {
            open.progs.nd_sched_switch_ps.set_autoload(false);
        }
        // Need bpf_get_attach_cookie (5.15): loaded only when used, one of the two.
        if cfg.handlers.is_empty() || features.uprobe_multi {
            open.progs.nd_handler.set_autoload(false);
        }
        if cfg.handlers.is_empty() || !features.uprobe_multi {
            open.progs.nd_handler_multi.set_autoload(false);
        }
        if !cfg.packets {
            // Every received packet would run them: off unless asked for.
            open.progs.nd_netif_receive_skb.set_autoload(false);
            open.progs.nd_napi_poll.set_autoload(false);
        } else if !(features.netif_receive_skb && features.napi_poll) {
            open.progs.nd_netif_receive_skb.set_autoload(false);
            open.progs.nd_napi_poll.set_autoload(false);
            notes.push("kernel lacks net:netif_receive_skb or napi:napi_poll as tp_btf: --packets shows nothing".into());
        }
        if !crate::procfs::kallsyms_readable() {
            notes.push(format!(
                "/proc/kallsyms shows no kernel addresses to netdrift, so waker stacks cannot be named: wake-up causes and contexts read unknown ({})",
                crate::procfs::kallsyms_hidden_why()
            ));
        }
        if !features.inet_sock_set_state {
            open.progs.nd_inet_sock_set_state.set_autoload(false);
            notes.push("kernel has no sock:inet_sock_set_state: TCP state changes are not reported".into());
        }
        if !features.epoll_pwait2 {
            open.progs.nd_enter_epoll_pwait2.set_autoload(false);
            open.progs.nd_exit_epoll_pwait2.set_autoload(false);
        }
        if !features.accept {
            // Architectures without accept(2) only have accept4.
            open.progs.nd_enter_accept.set_autoload(false);
            open.progs.nd_exit_accept.set_autoload(false);
        }
        if !cfg.epoll_ctl && features.file_epoll_items {
            // Runs for every process's epoll_ctl (see --epoll-ctl): off unless asked for.
            open.progs.nd_enter_epoll_ctl.set_autoload(false);
        } else if !cfg.epoll_ctl {
            notes.push(
                "kernel has no file->f_ep (Linux < 5.11): epoll data words are mapped by tracing every epoll_ctl (costs more)".into(),
            );
        }
        let mut skel = open.load().map_err(|e| Error::Bpf(format!("loading the BPF programs failed: {e:#}")))?;
        let probes_targets = |skel: &NetdriftSkel<'_>| -> Result<()> {
            for &t in &cfg.tgids {
                add_target(&skel.maps.targets_tgid, &skel.maps.tgid_bits, t)?;
            }
            for &t in &cfg.tids {
                add_target(&skel.maps.targets_tid, &skel.maps.tid_bits, t)?;
            }
            Ok(())
        };
        probes_targets(&skel)?;
        if let Some(n) = precreate_task_state(&skel.maps.tasks, &cfg.tgids, &cfg.tids) {
            notes.push(n);
        }
        skel.attach().map_err(attach_error)?;
        let (forked, settle_notes) = settle_targets(&cfg.tgids, &cfg.tids, cfg.follow_children, |id, is_tid, add| {
            let mut o = crate::skel::types::nd_target_op { id, is_tid, add };
            // SAFETY: nd_target_op is a repr(C) struct of three u32, viewed as its bytes (the program's context).
            let ctx = unsafe { std::slice::from_raw_parts_mut(&mut o as *mut _ as *mut u8, std::mem::size_of_val(&o)) };
            Ok(skel.progs.nd_targets_op.test_run(libbpf_rs::ProgramInput { context_in: Some(ctx), ..Default::default() })?.return_value
                == 0)
        });
        notes.extend(settle_notes);
        let mut handler_links = Vec::new();
        for h in &cfg.handlers {
            let c = crate::skel::types::nd_handler_cfg {
                fd_arg: h.fd_arg.map(i32::from).unwrap_or(-1),
                events_arg: h.events_arg.map(i32::from).unwrap_or(-1),
            };
            // SAFETY: nd_handler_cfg is a repr(C) struct of two i32, viewed as its bytes.
            let bytes = unsafe { std::slice::from_raw_parts(&c as *const _ as *const u8, std::mem::size_of_val(&c)) };
            skel.maps.handler_cfg.update(&h.id.to_ne_bytes(), bytes, MapFlags::ANY)?;
            if features.uprobe_multi {
                continue;
            }
            let opts = libbpf_rs::UprobeOpts { cookie: h.id as u64, ..Default::default() };
            let link = skel
                .progs
                .nd_handler
                .attach_uprobe_with_opts(-1, &h.path, h.offset as usize, opts)
                .map_err(|e| Error::Bpf(format!("uprobe on {} in {}: {e:#}", h.name, h.path.display())))?;
            handler_links.push(link);
        }
        if features.uprobe_multi {
            // One link per file, in the order the files were named.
            let mut files: Vec<(&Path, libbpf_rs::UprobeMultiOpts)> = Vec::new();
            for h in &cfg.handlers {
                let i = match files.iter().position(|(p, _)| *p == h.path.as_path()) {
                    Some(i) => i,
                    None => {
                        files.push((&h.path, libbpf_rs::UprobeMultiOpts::default()));
                        files.len() - 1
                    }
                };
                files[i].1.offsets.push(h.offset as usize);
                files[i].1.cookies.push(h.id as u64);
            }
            for (path, opts) in files {
                let n = opts.offsets.len();
                let link = skel
                    .progs
                    .nd_handler_multi
                    .attach_uprobe_multi_with_opts(-1, path, "", opts)
                    .map_err(|e| Error::Bpf(format!("uprobes on {n} functions in {}: {e:#}", path.display())))?;
                handler_links.push(link);
            }
        }
        Ok(Probes { skel, features, notes, handler_links, forked })
    }

    /// Detaches every program, the links closed at once on threads of
    /// their own: closing a syscall tracepoint's link waits for an RCU
    /// tasks-trace grace period (~80 ms here), one after another 0.8 s
    /// between the summary and the exit; waits that overlap share one.
    fn detach(&mut self) {
        let l = &mut self.skel.links;
        let links: Vec<libbpf_rs::Link> = [
            l.nd_targets_op.take(),
            l.nd_sched_waking.take(),
            l.nd_sched_waking_probed.take(),
            l.nd_sched_wakeup.take(),
            l.nd_sched_switch.take(),
            l.nd_sched_switch_ps.take(),
            l.nd_inet_sock_set_state.take(),
            l.nd_netif_receive_skb.take(),
            l.nd_napi_poll.take(),
            l.nd_process_fork.take(),
            l.nd_process_exec.take(),
            l.nd_process_exit.take(),
            l.nd_enter_epoll_wait.take(),
            l.nd_exit_epoll_wait.take(),
            l.nd_enter_epoll_pwait.take(),
            l.nd_exit_epoll_pwait.take(),
            l.nd_enter_epoll_pwait2.take(),
            l.nd_exit_epoll_pwait2.take(),
            l.nd_enter_epoll_ctl.take(),
            l.nd_enter_accept.take(),
            l.nd_exit_accept.take(),
            l.nd_enter_accept4.take(),
            l.nd_exit_accept4.take(),
            l.nd_enter_close.take(),
            l.nd_handler.take(),
            l.nd_handler_multi.take(),
        ]
        .into_iter()
        .flatten()
        .chain(self.handler_links.drain(..))
        .collect();
        std::thread::scope(|s| {
            for link in links {
                // A thread that cannot start drops its link here, in turn.
                let _ = std::thread::Builder::new().spawn_scoped(s, move || drop(link));
            }
        });
    }

    /// The threads traced by tid (-t) as the kernel side has them now: an
    /// exec moves a non-leader thread to the pid even if its record is lost.
    pub fn target_tids(&self) -> Vec<u32> {
        map_ids(&self.skel.maps.targets_tid)
    }

    /// epoll_wait returns of nothing counted in the kernel and not written:
    /// each followed another of its thread with nothing between (a busy poll).
    pub fn empty_returns_summed(&self) -> u64 {
        percpu_u64(&self.skel.maps.empty_returns, 0).iter().sum()
    }

    /// Sum the per-CPU loss counters (`enum nd_loss` of netdrift.h).
    pub fn losses(&self) -> Losses {
        use crate::skel::types::nd_loss as L;
        const N: usize = L::ND_LOSS_MAX.0 as usize;
        let mut l = Losses::default();
        let mut per_cpu: Vec<[u64; N]> = Vec::new();
        for which in 0..L::ND_LOSS_MAX.0 {
            let vals = percpu_u64(&self.skel.maps.losses, which);
            if per_cpu.len() < vals.len() {
                per_cpu.resize(vals.len(), [0; N]);
            }
            for (cpu, n) in vals.into_iter().enumerate() {
                per_cpu[cpu][which as usize] = n;
            }
        }
        for c in &per_cpu {
            l.ringbuf += c[L::ND_LOSS_RINGBUF.0 as usize];
            l.stack += c[L::ND_LOSS_STACK.0 as usize];
            l.map_full += c[L::ND_LOSS_MAP_FULL.0 as usize];
            l.user_read += c[L::ND_LOSS_USER_READ.0 as usize];
        }
        l.per_cpu = per_cpu;
        l.skipped = skipped_runs(self.skel.object().progs());
        l
    }
}

/// Runs of each loaded program that the kernel reports it skipped
/// (`bpf_prog_info.recursion_misses`) because the program, or for tracepoint
/// and uprobe programs any tracing program, was already running on that CPU:
/// a hit from an interrupt that came in during one. Older kernels do not
/// count every program type's skips: a lower bound there. Only programs with
/// a skipped run are listed.
pub fn skipped_runs<'a>(progs: impl Iterator<Item = libbpf_rs::Program<'a>>) -> BTreeMap<String, u64> {
    use std::os::fd::{AsFd, AsRawFd};
    let mut out = BTreeMap::new();
    for p in progs.filter(|p| p.autoload()) {
        let mut info = libbpf_sys::bpf_prog_info::default();
        let mut len = std::mem::size_of_val(&info) as u32;
        // SAFETY: a loaded program's fd; `info` is a zeroed bpf_prog_info of
        // `len` bytes with no array pointers set, so the kernel writes into it only.
        let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(p.as_fd().as_raw_fd(), &mut info, &mut len) };
        if rc == 0 && info.recursion_misses > 0 {
            out.insert(p.name().to_string_lossy().into_owned(), info.recursion_misses);
        }
    }
    out
}

/// Syscall numbers the BPF side matches a blocked task's saved registers with.
mod sysno {
    #[cfg(target_arch = "x86_64")]
    pub const EPOLL_WAIT: i32 = libc::SYS_epoll_wait as i32;
    /// Newer architectures only have epoll_pwait.
    #[cfg(not(target_arch = "x86_64"))]
    pub const EPOLL_WAIT: i32 = -1;
    /// Calls that block on the socket of their first argument (ND_NR_SOCK_IO).
    pub const SOCK_IO: [i32; 10] = [
        libc::SYS_read as i32,
        libc::SYS_readv as i32,
        libc::SYS_recvfrom as i32,
        libc::SYS_recvmsg as i32,
        libc::SYS_recvmmsg as i32,
        libc::SYS_write as i32,
        libc::SYS_writev as i32,
        libc::SYS_sendto as i32,
        libc::SYS_sendmsg as i32,
        libc::SYS_connect as i32,
    ];
}

/// An attach refused to a non-root netdrift at kernel.perf_event_paranoid 3
/// is a privilege, not a kernel, problem: Debian's and Ubuntu's kernels then
/// refuse perf events without CAP_SYS_ADMIN, CAP_PERFMON or not.
fn attach_error(e: libbpf_rs::Error) -> Error {
    if matches!(e.kind(), libbpf_rs::ErrorKind::PermissionDenied) && !crate::procfs::is_root() {
        if let Some(v) = crate::procfs::sysctl("kernel/perf_event_paranoid").filter(|&v| v >= 3) {
            return Error::Privilege(format!(
                "attaching the BPF programs was refused ({e}): kernel.perf_event_paranoid is {v}, at which this kernel refuses perf events without CAP_SYS_ADMIN: sysctl kernel.perf_event_paranoid=2, or run netdrift as root"
            ));
        }
    }
    Error::Bpf(format!("attaching the BPF programs failed: {e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn btf_string_search_is_exact() {
        let btf = b"\0btf_trace_sk_data_ready\0btf_trace_sched_switch\0";
        assert!(btf_has(btf, "btf_trace_sk_data_ready"));
        assert!(!btf_has(btf, "btf_trace_sk_data"));
        assert!(!btf_has(btf, "sk_data_ready"));
    }
}
