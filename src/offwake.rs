//! `netdrift offwake`: off-CPU time by blocked stack and waker stack, BCC's
//! `offwaketime` on tracepoints, summed in the kernel.
//!
//! `src/bpf/offwake.bpf.c` keeps, per target thread, the open blocked period
//! (switch-out time and stacks, then the first wake-up with the waker's
//! stacks and context) and adds it to a hash map at switch-in: blocked time
//! and run-queue wait separately. Only the totals cross to user space, read
//! once at the end. Stacks live in a stack-trace map, symbolized here: kernel
//! frames from kallsyms, user frames per process (see [`symbols`]).
//!
//! [`model`] holds the report types and the renderers (text like BCC's,
//! folded, JSON Lines), [`svg`] the flame graph.

pub mod model;
pub mod procmaps;
pub mod svg;
pub mod symbols;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::mem::MaybeUninit;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libbpf_rs::btf::ReferencesType;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, RingBufferBuilder};
use serde::Serialize;
use serde_json::json;

use crate::error::{Error, Result};
use crate::events::{Task, WakerContext};
use crate::offwake_skel::{types, OffwakeSkel, OffwakeSkelBuilder};
use crate::output::{OnDrop, PartialFile};
use crate::procfs;
use crate::symbolize::{classify, without_tracer_frames, KernelSyms};

pub use model::{Entry, Host, Metric, RenderOptions, Thread, Totals, WakeContext, Waker};

/// At most this many `-c` names (the BPF side compares them in a bounded loop).
pub const MAX_COMMS: usize = 8;
/// Default `--stack-storage-size`: entries of the stack-trace map.
pub const DEFAULT_STACK_STORAGE: u32 = 16384;
/// Default `--max-keys`: entries of the totals map.
pub const DEFAULT_MAX_KEYS: u32 = 16384;
/// Entries of the per-thread state map (threads blocked at once).
pub const SLEEP_MAP_ENTRIES: u32 = 65536;

const OW_STACK_NONE: i32 = -1000;
/// Counters of `enum ow_counter` (offwake.h).
const N_COUNTERS: usize = types::ow_counter::OW_COUNTER_MAX.0 as usize;

/// Which task states at switch-out open a blocked period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StateFilter {
    /// Any sleeping state (S, D, stopped, traced, parked...).
    #[default]
    Any,
    /// TASK_INTERRUPTIBLE (S).
    Interruptible,
    /// TASK_UNINTERRUPTIBLE (D, including TASK_KILLABLE and TASK_IDLE).
    Uninterruptible,
}

impl StateFilter {
    /// Parse `any`, `interruptible` or `uninterruptible`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "any" => Some(StateFilter::Any),
            "interruptible" => Some(StateFilter::Interruptible),
            "uninterruptible" => Some(StateFilter::Uninterruptible),
            _ => None,
        }
    }

    /// The mask the BPF program tests prev_state with; 0 means any.
    pub fn mask(self) -> u32 {
        match self {
            StateFilter::Any => 0,
            StateFilter::Interruptible => 0x1,
            StateFilter::Uninterruptible => 0x2,
        }
    }
}

/// What to trace and how; everything is given to the BPF program before load.
pub struct OffwakeOptions {
    /// Processes: all their threads (and children, with `follow_children`).
    pub tgids: Vec<u32>,
    /// Threads.
    pub tids: Vec<u32>,
    /// Threads or processes with these names (matched in the kernel, so later ones count too).
    pub comms: Vec<String>,
    /// With `tgids`: processes they fork later are traced too.
    pub follow_children: bool,
    /// Only user threads.
    pub user_threads_only: bool,
    /// Only kernel threads.
    pub kernel_threads_only: bool,
    /// Which task states at switch-out count.
    pub state: StateFilter,
    /// Periods off CPU (switch-out -> back on CPU) shorter than this are not counted (BCC's -m).
    pub min_block_us: u64,
    /// Periods off CPU longer than this are not counted (BCC's -M).
    pub max_block_us: Option<u64>,
    /// Capture user stacks.
    pub user_stacks: bool,
    /// Capture kernel stacks.
    pub kernel_stacks: bool,
    /// Entries of the stack-trace map (`--stack-storage-size`).
    pub stack_storage_size: u32,
    /// Entries of the totals map (`--max-keys`).
    pub max_keys: u32,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Written (with netdrift's pid) once the programs are attached.
    pub ready_file: Option<PathBuf>,
    /// Stop when this is set (tests).
    pub stop: Option<Arc<AtomicBool>>,
    /// Called once the programs are attached.
    pub on_ready: Option<Box<dyn FnOnce() + Send>>,
    /// Load the sched_switch program of kernels before 5.18 (reads the
    /// state from the task) even where prev_state is passed (tests).
    pub state_from_task: bool,
}

impl Default for OffwakeOptions {
    fn default() -> Self {
        OffwakeOptions {
            tgids: Vec::new(),
            tids: Vec::new(),
            comms: Vec::new(),
            follow_children: true,
            user_threads_only: false,
            kernel_threads_only: false,
            state: StateFilter::Any,
            min_block_us: 1,
            max_block_us: None,
            user_stacks: true,
            kernel_stacks: true,
            stack_storage_size: DEFAULT_STACK_STORAGE,
            max_keys: DEFAULT_MAX_KEYS,
            duration: None,
            ready_file: None,
            stop: None,
            on_ready: None,
            state_from_task: false,
        }
    }
}

impl OffwakeOptions {
    /// No -p/-t/-c: every thread but netdrift's own.
    pub fn trace_all(&self) -> bool {
        self.tgids.is_empty() && self.tids.is_empty() && self.comms.is_empty()
    }

    /// The run ends when its targets have exited (not with -c, nor all threads).
    pub fn ends_with_targets(&self) -> bool {
        self.comms.is_empty() && !self.trace_all()
    }
}

/// Stack-capture failures of one kind of stack, by errno.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StackErrors {
    /// -EEXIST: the hash bucket holds another stack.
    pub eexist: u64,
    /// -ENOMEM: the stack map is full.
    pub enomem: u64,
    /// -EFAULT: the stack could not be walked.
    pub efault: u64,
    /// Any other errno.
    pub other: u64,
}

impl StackErrors {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.eexist + self.enomem + self.efault + self.other
    }
}

/// The kernel's per-CPU counters, summed, with the per-CPU values kept.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    /// Kernel stacks not captured.
    pub kernel_stack: StackErrors,
    /// User stacks not captured.
    pub user_stack: StackErrors,
    /// New keys refused by the full totals map (`--max-keys`).
    pub max_keys_full: u64,
    /// Blocked periods not recorded: the per-thread state map was full.
    pub thread_map_full: u64,
    /// Processes whose first sighting was not reported (their maps were not snapshotted).
    pub new_pid_lost: u64,
    /// Blocked periods summed.
    pub periods: u64,
    /// Extra wake-ups of an already woken period (the first waker is kept).
    pub rewakes: u64,
    /// Periods whose wake-up was not seen.
    pub not_seen: u64,
    /// Wake-ups seen while the thread was still switching out.
    pub early_wakes: u64,
    /// Periods outside --min-block-us/--max-block-us.
    pub filtered: u64,
    /// Wake-ups whose context was read from the kernel stack (preempt_count not readable).
    pub ctx_from_stack: u64,
    /// Blocked periods never closed: the thread switched out again and the
    /// switch-in between was not seen, so they are not summed.
    pub no_switch_in: u64,
    /// Forked children not traced: the target process map was full.
    pub targets_full: u64,
    /// User stacks cut where the frame-pointer walk left the process's code
    /// (a binary built without frame pointers), counted in user space.
    pub user_stacks_cut: u64,
    /// Periods whose sleep state a waker overwrote before the switch-out was
    /// seen (kernels before 5.18, whose sched_switch passes no prev_state):
    /// shown as state `?`, kept by every `--state`.
    pub state_unknown: u64,
    /// Raw counters per CPU, indexed by `enum ow_counter` of offwake.h.
    pub per_cpu: Vec<Vec<u64>>,
    /// Runs of a program the kernel skipped, by program (`probes::skipped_runs`).
    pub skipped: std::collections::BTreeMap<String, u64>,
}

impl Counters {
    fn from_per_cpu(per_cpu: Vec<Vec<u64>>) -> Self {
        let mut s = [0u64; N_COUNTERS];
        for c in &per_cpu {
            for (i, v) in c.iter().enumerate().take(N_COUNTERS) {
                s[i] += v;
            }
        }
        use types::ow_counter as C;
        let n = |c: C| s[c.0 as usize];
        Counters {
            kernel_stack: StackErrors {
                eexist: n(C::OW_LOSS_KSTACK_EEXIST),
                enomem: n(C::OW_LOSS_KSTACK_ENOMEM),
                efault: n(C::OW_LOSS_KSTACK_EFAULT),
                other: n(C::OW_LOSS_KSTACK_OTHER),
            },
            user_stack: StackErrors {
                eexist: n(C::OW_LOSS_USTACK_EEXIST),
                enomem: n(C::OW_LOSS_USTACK_ENOMEM),
                efault: n(C::OW_LOSS_USTACK_EFAULT),
                other: n(C::OW_LOSS_USTACK_OTHER),
            },
            max_keys_full: n(C::OW_LOSS_AGG_FULL),
            thread_map_full: n(C::OW_LOSS_SLEEP_FULL),
            periods: n(C::OW_STAT_PERIODS),
            rewakes: n(C::OW_STAT_REWAKES),
            not_seen: n(C::OW_STAT_NOT_SEEN),
            early_wakes: n(C::OW_STAT_EARLY_WAKES),
            filtered: n(C::OW_STAT_FILTERED),
            new_pid_lost: n(C::OW_STAT_NEW_PID_LOST),
            ctx_from_stack: n(C::OW_STAT_CTX_UNKNOWN),
            no_switch_in: n(C::OW_STAT_NO_SWITCH_IN),
            targets_full: n(C::OW_LOSS_TARGETS_FULL),
            state_unknown: n(C::OW_STAT_STATE_UNKNOWN),
            user_stacks_cut: 0,
            per_cpu,
            skipped: Default::default(),
        }
    }

    /// Anything lost?
    pub fn any_loss(&self) -> bool {
        self.kernel_stack.total()
            + self.user_stack.total()
            + self.max_keys_full
            + self.thread_map_full
            + self.new_pid_lost
            + self.targets_full
            > 0
            || !self.skipped.is_empty()
    }
}

/// What a finished `offwake` saw.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// One per distinct blocked thread, stacks and waker.
    pub entries: Vec<Entry>,
    /// Losses and statistics from the kernel.
    pub counters: Counters,
    /// Seconds the programs were attached.
    pub duration_s: f64,
    /// Why it ended: duration reached, interrupted, target exited, done.
    pub reason: String,
    /// Entries of the stack-trace map (`--stack-storage-size`).
    pub stack_storage_size: u32,
    /// Entries of the totals map (`--max-keys`).
    pub max_keys: u32,
    /// Entries of the target process map (-p and their children).
    pub max_target_procs: u32,
    /// How the waker's context (task, softirq, irq) was read.
    pub preempt_count: PreemptCount,
    /// One line per degraded feature.
    pub notes: Vec<String>,
}

impl Report {
    /// Sums over the entries.
    pub fn totals(&self) -> Totals {
        model::totals(&self.entries)
    }

    /// One line per kind of loss, with the flag (or hint) that fixes it.
    pub fn fixes(&self) -> Vec<String> {
        let c = &self.counters;
        let mut v = Vec::new();
        let full = c.kernel_stack.eexist + c.kernel_stack.enomem + c.user_stack.eexist + c.user_stack.enomem;
        if full > 0 {
            v.push(format!(
                "{full} stacks lost to a full stack map or hash collisions (EEXIST {}, ENOMEM {}): raise --stack-storage-size (now {})",
                c.kernel_stack.eexist + c.user_stack.eexist,
                c.kernel_stack.enomem + c.user_stack.enomem,
                self.stack_storage_size
            ));
        }
        if c.user_stack.efault > 0 {
            v.push(format!(
                "{} user stacks could not be walked (EFAULT): user stacks need frame pointers (build with -fno-omit-frame-pointer)",
                c.user_stack.efault
            ));
        }
        if c.user_stacks_cut > 0 {
            v.push(format!(
                "{} user stacks were cut where the frame-pointer walk left the code (shown as {}): binaries built without frame pointers; rebuild with -fno-omit-frame-pointer for whole user stacks",
                c.user_stacks_cut,
                symbols::CUT_FRAME
            ));
        }
        if c.kernel_stack.efault + c.kernel_stack.other + c.user_stack.other > 0 {
            v.push(format!("{} stacks failed for other reasons", c.kernel_stack.efault + c.kernel_stack.other + c.user_stack.other));
        }
        if c.max_keys_full > 0 {
            v.push(format!(
                "{} blocked periods dropped, the totals map was full: raise --max-keys (now {})",
                c.max_keys_full, self.max_keys
            ));
        }
        if c.thread_map_full > 0 {
            v.push(format!(
                "{} blocked periods dropped: more than {SLEEP_MAP_ENTRIES} threads asleep at once (trace fewer with -p/-t/-c)",
                c.thread_map_full
            ));
        }
        if c.targets_full > 0 {
            v.push(format!(
                "{} forked processes not traced: more than {} target processes at once (name the ones that matter with -p/-t/-c)",
                c.targets_full, self.max_target_procs
            ));
        }
        if c.new_pid_lost > 0 {
            v.push(format!(
                "{} processes not snapshotted in time: their frames may show as [unknown] with an address only",
                c.new_pid_lost
            ));
        }
        v
    }
}

/// Ctrl-C and SIGTERM end the trace with its totals, as for `trace`.
pub use crate::trace::install_signal_handlers;
use crate::trace::signalled;

/// Resolve and check the targets as `trace` does (comms are matched in the
/// kernel, so running processes of that name are not added here).
pub fn resolve_targets(pids: &[u32], tids: &[u32], comms: &[String], follow_children: bool, wait: bool) -> Result<(Vec<u32>, Vec<u32>)> {
    if comms.len() > MAX_COMMS {
        return Err(Error::Usage(format!("at most {MAX_COMMS} -c names")));
    }
    procfs::resolve_targets(pids, tids, comms, follow_children, false, wait)
}

use crate::events::comm_str;
use crate::probes::comm_bytes;

/// Copy a `T` out of a map's bytes.
fn read<T: Copy + Default>(data: &[u8]) -> Option<T> {
    if data.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked above, T is a plain-old-data repr(C) type
    // generated from the BPF object's BTF, and read_unaligned has no alignment
    // requirement.
    Some(unsafe { std::ptr::read_unaligned(data.as_ptr() as *const T) })
}

/// Let netdrift hold many binaries open (one per executable file seen).
fn raise_nofile() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 && r.rlim_cur < r.rlim_max {
        r.rlim_cur = r.rlim_max.min(65536).max(r.rlim_cur);
        // SAFETY: setrlimit reads the rlimit we own; raising the soft limit up to the hard one needs no privilege.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    }
}

fn errno_name(e: i32) -> String {
    match -e {
        17 => "EEXIST".into(),
        12 => "ENOMEM".into(),
        14 => "EFAULT".into(),
        n => format!("errno {n}"),
    }
}

/// Reads stacks out of the stack-trace map, once per id.
struct StackReader<'a> {
    map: &'a dyn MapCore,
    cache: HashMap<i32, Option<Vec<u64>>>,
}

impl StackReader<'_> {
    fn get(&mut self, id: i32) -> Option<Vec<u64>> {
        if id < 0 {
            return None;
        }
        let map = self.map;
        self.cache
            .entry(id)
            .or_insert_with(|| {
                let v = map.lookup(&(id as u32).to_ne_bytes(), MapFlags::ANY).ok()??;
                Some(v.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]))).take_while(|&a| a != 0).collect())
            })
            .clone()
    }
}

/// Symbolizes both kinds of stacks.
struct Namer {
    kernel: KernelSyms,
    user: symbols::UserSyms,
}

impl Namer {
    /// Kernel frames, innermost first, without the tracer's own frames.
    fn kernel(&mut self, stacks: &mut StackReader<'_>, id: i32) -> Vec<String> {
        if id == OW_STACK_NONE {
            return Vec::new();
        }
        if id < 0 {
            return vec![format!("[missing kernel stack: {}]", errno_name(id))];
        }
        let Some(addrs) = stacks.get(id) else { return vec!["[missing kernel stack: not in the map]".into()] };
        let names = self.kernel.stack_names(&addrs);
        let frames = names
            .into_iter()
            .zip(&addrs)
            .map(|(n, &a)| match n {
                Some(n) => n.to_string(),
                None => procmaps::unknown_kernel_frame(a),
            })
            .collect();
        without_tracer_frames(frames)
    }

    /// User frames of `pid`, innermost first.
    fn user(&mut self, stacks: &mut StackReader<'_>, pid: u32, id: i32) -> Vec<String> {
        if id == OW_STACK_NONE {
            return Vec::new();
        }
        if id < 0 {
            return vec![format!("[missing user stack: {}]", errno_name(id))];
        }
        let Some(addrs) = stacks.get(id) else { return vec!["[missing user stack: not in the map]".into()] };
        self.user.frames(pid, &addrs)
    }
}

/// The waker's context: from preempt_count when the kernel gave it, else
/// from its kernel stack. Interrupt wakers also get where they ran.
fn waker_context(w: &types::ow_waker, comm: &str, kernel: &[String]) -> (WakeContext, Host) {
    let names: Vec<Option<Arc<str>>> = kernel.iter().map(|f| Some(Arc::from(f.as_str()))).collect();
    let task = Task { pid: w.pid, tid: w.tid, comm: comm.into() };
    let class = classify(&task, w.is_kthread != 0, &names).context;
    let ctx = match w.ctx {
        0 => WakeContext::Task,
        1 => WakeContext::Softirq,
        2 => WakeContext::Irq,
        3 => WakeContext::Nmi,
        5 => WakeContext::NotSeen,
        _ => match class {
            WakerContext::SoftirqInSyscall | WakerContext::SoftirqOnIrqExit | WakerContext::Ksoftirqd => WakeContext::Softirq,
            WakerContext::Irq => WakeContext::Irq,
            WakerContext::IdleIrq => {
                if kernel
                    .iter()
                    .any(|f| f.starts_with("handle_softirqs") || f.starts_with("__do_softirq") || f.starts_with("net_rx_action"))
                {
                    WakeContext::Softirq
                } else {
                    WakeContext::Irq
                }
            }
            _ => WakeContext::Task,
        },
    };
    let host = if w.tid == 0 {
        Host::Idle
    } else if w.is_kthread != 0 && comm.starts_with("ksoftirqd/") {
        Host::Ksoftirqd
    } else if ctx == WakeContext::Softirq && class == WakerContext::SoftirqInSyscall {
        Host::SyscallOf
    } else {
        Host::Interrupting
    };
    (ctx, host)
}

/// Read the totals map and name everything.
fn collect(skel: &crate::offwake_skel::OffwakeSkel<'_>, namer: &mut Namer) -> Vec<Entry> {
    let mut stacks = StackReader { map: &skel.maps.stacks, cache: HashMap::new() };
    let mut raw: Vec<(types::ow_key, types::ow_val)> = Vec::new();
    for k in skel.maps.agg.keys() {
        let Ok(Some(v)) = skel.maps.agg.lookup(&k, MapFlags::ANY) else { continue };
        if let (Some(key), Some(val)) = (read::<types::ow_key>(&k), read::<types::ow_val>(&v)) {
            raw.push((key, val));
        }
    }
    let mut entries = Vec::with_capacity(raw.len());
    for (k, v) in raw {
        let w = &k.waker;
        let wcomm = comm_str(&w.comm);
        let blocked_kernel = namer.kernel(&mut stacks, k.kstack);
        let blocked_user = namer.user(&mut stacks, k.pid, k.ustack);
        let mut waker_kernel = namer.kernel(&mut stacks, w.kstack);
        let (ctx, host) = waker_context(w, &wcomm, &waker_kernel);
        if matches!(ctx, WakeContext::Irq | WakeContext::Nmi | WakeContext::Softirq) && matches!(host, Host::Interrupting | Host::Idle) {
            waker_kernel = model::interrupt_frames(waker_kernel);
        }
        // An interrupt's user stack is the interrupted task's, not the waker's.
        let waker_user = if ctx == WakeContext::Task { namer.user(&mut stacks, w.pid, w.ustack) } else { Vec::new() };
        entries.push(Entry {
            blocked: Thread { comm: comm_str(&k.comm), pid: k.pid, tid: k.tid },
            blocked_kernel,
            blocked_user,
            states: vec![k.state],
            waker: Waker {
                context: ctx,
                task: Thread { comm: wcomm, pid: w.pid, tid: w.tid },
                // Taken for a context the kernel could not tell: a task's is no CPU's.
                cpu: if ctx == WakeContext::Task { 0 } else { w.cpu },
                host,
                kernel: waker_kernel,
                user: waker_user,
            },
            blocked_ns: v.blocked_ns,
            runq_ns: v.runq_ns,
            count: v.count,
        });
    }
    model::merge(entries)
}

fn read_counters(skel: &crate::offwake_skel::OffwakeSkel<'_>) -> Counters {
    let mut per_cpu: Vec<Vec<u64>> = Vec::new();
    for which in 0..N_COUNTERS as u32 {
        let vals = crate::probes::percpu_u64(&skel.maps.counters, which);
        if per_cpu.len() < vals.len() {
            per_cpu.resize(vals.len(), vec![0; N_COUNTERS]);
        }
        for (cpu, n) in vals.into_iter().enumerate() {
            per_cpu[cpu][which as usize] = n;
        }
    }
    Counters::from_per_cpu(per_cpu)
}

/// How the BPF program finds this CPU's preempt_count (to tell softirq/irq
/// wakers from tasks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PreemptCount {
    /// Through the ksym of the per-CPU variable (needs CONFIG_KALLSYMS_ALL).
    Ksym,
    /// At a distance from this CPU's run queue, both per-CPU data: the
    /// distances come from the BTF of the per-CPU section.
    Runqueue {
        /// Bytes from this CPU's `struct rq` to its preempt_count.
        pc_delta: i64,
        /// Bytes from it to its cpu_number (checked against the CPU); 0: not checked.
        cpu_delta: i64,
    },
    /// In thread_info (arm64 and others), read with CO-RE.
    ThreadInfo,
    /// Not readable: the context is read from the waker's kernel stack.
    #[default]
    Stack,
}

/// Is one of `names` in /proc/kallsyms?
fn kallsyms_has(names: &[&str]) -> bool {
    let Ok(f) = File::open("/proc/kallsyms") else { return false };
    use std::io::BufRead;
    std::io::BufReader::new(f).lines().map_while(|l| l.ok()).any(|l| l.split_whitespace().nth(2).is_some_and(|n| names.contains(&n)))
}

/// Byte offset of member `name` in the struct or union `ty`, looking into anonymous members.
fn member_offset(btf: &libbpf_rs::btf::Btf<'_>, ty: libbpf_rs::btf::TypeId, name: &str) -> Option<i64> {
    use libbpf_rs::btf::types::{Composite, MemberAttr};
    let t: libbpf_rs::btf::BtfType<'_> = btf.type_by_id(ty)?;
    let c = Composite::try_from(t.skip_mods_and_typedefs()).ok()?;
    for m in c.iter() {
        let bits = match m.attr {
            MemberAttr::Normal { offset } | MemberAttr::BitField { offset, .. } => offset,
        };
        match m.name {
            Some(n) if n == name => return Some(bits as i64 / 8),
            None => {
                if let Some(o) = member_offset(btf, m.ty, name) {
                    return Some(bits as i64 / 8 + o);
                }
            }
            _ => {}
        }
    }
    None
}

/// Offsets in the per-CPU section of `__preempt_count` (or
/// `pcpu_hot.preempt_count`), `cpu_number` and `runqueues`, from BTF.
fn percpu_offsets() -> Option<(i64, Option<i64>, i64)> {
    use libbpf_rs::btf::types::DataSec;
    let btf = libbpf_rs::btf::Btf::from_vmlinux().ok()?;
    let sec: DataSec<'_> = btf.type_by_name(".data..percpu")?;
    let mut vars: HashMap<String, (i64, libbpf_rs::btf::TypeId)> = HashMap::new();
    for v in sec.iter() {
        let Some(t) = btf.type_by_id::<libbpf_rs::btf::BtfType<'_>>(v.ty) else { continue };
        let Some(name) = t.name().and_then(|n| n.to_str()) else { continue };
        if matches!(name, "__preempt_count" | "cpu_number" | "runqueues" | "pcpu_hot") {
            let inner = libbpf_rs::btf::types::Var::try_from(t).ok().map(|v| v.referenced_type_id());
            vars.insert(name.to_string(), (v.offset as i64, inner.unwrap_or(v.ty)));
        }
    }
    let rq = vars.get("runqueues")?.0;
    let hot = vars.get("pcpu_hot").copied();
    let pc = match vars.get("__preempt_count") {
        Some(&(o, _)) => o,
        None => {
            let (o, ty) = hot?;
            o + member_offset(&btf, ty, "preempt_count")?
        }
    };
    let cpu = match vars.get("cpu_number") {
        Some(&(o, _)) => Some(o),
        None => hot.and_then(|(o, ty)| Some(o + member_offset(&btf, ty, "cpu_number")?)),
    };
    Some((pc, cpu, rq))
}

/// Where this kernel's preempt_count can be read from BPF.
pub fn preempt_count_access() -> PreemptCount {
    if !cfg!(target_arch = "x86_64") {
        return PreemptCount::ThreadInfo;
    }
    if kallsyms_has(&["__preempt_count", "pcpu_hot"]) {
        return PreemptCount::Ksym;
    }
    preempt_count_without_ksym()
}

/// Where preempt_count can be read from BPF without a ksym (x86_64).
pub fn preempt_count_without_ksym() -> PreemptCount {
    match percpu_offsets() {
        Some((pc, cpu, rq)) => PreemptCount::Runqueue { pc_delta: pc - rq, cpu_delta: cpu.map(|c| c - rq).unwrap_or(0) },
        None => PreemptCount::Stack,
    }
}

/// Open, configure and load the programs, with the sched_waking program that reads preempt_count as `pc` says.
fn load<'o>(opts: &OffwakeOptions, pc: PreemptCount, open_object: &'o mut MaybeUninit<libbpf_rs::OpenObject>) -> Result<OffwakeSkel<'o>> {
    let mut open = OffwakeSkelBuilder::default().open(open_object)?;
    {
        let ro = open.maps.rodata_data.as_deref_mut().ok_or_else(|| Error::Bpf("no .rodata in the offwake BPF object".into()))?;
        ro.trace_all = opts.trace_all();
        ro.has_tids = !opts.tids.is_empty();
        ro.follow_children = opts.follow_children;
        ro.n_comms = opts.comms.len() as u32;
        for (i, c) in opts.comms.iter().enumerate() {
            ro.comms[i] = comm_bytes(c);
        }
        ro.user_threads_only = opts.user_threads_only;
        ro.kernel_threads_only = opts.kernel_threads_only;
        ro.state_mask = opts.state.mask();
        ro.min_block_ns = opts.min_block_us.saturating_mul(1000);
        ro.max_block_ns = opts.max_block_us.map(|m| m.saturating_mul(1000)).unwrap_or(u64::MAX);
        ro.user_stacks = opts.user_stacks;
        ro.kernel_stacks = opts.kernel_stacks;
        ro.self_tgid = std::process::id();
        if let PreemptCount::Runqueue { pc_delta, cpu_delta } = pc {
            ro.pc_via_rq = true;
            ro.pc_rq_delta = pc_delta;
            ro.cpu_rq_delta = cpu_delta;
        }
    }
    // Only one sched_waking program loads: the ksym one needs kallsyms to know the variable.
    if pc == PreemptCount::Ksym {
        open.progs.ow_sched_waking.set_autoload(false);
    } else {
        open.progs.ow_sched_waking_ksym.set_autoload(false);
    }
    // Only one sched_switch program: the one reading prev_state fails to load where it is not passed.
    if !opts.state_from_task && crate::probes::sched_switch_has_prev_state() {
        open.progs.ow_sched_switch.set_autoload(false);
    } else {
        open.progs.ow_sched_switch_ps.set_autoload(false);
    }
    open.maps.stacks.set_max_entries(opts.stack_storage_size)?;
    // Unused target bit maps: 8 bytes instead of 512 KiB.
    if opts.tids.is_empty() {
        open.maps.tid_bits.set_max_entries(1)?;
    }
    if opts.trace_all() {
        open.maps.tgid_bits.set_max_entries(1)?;
    }
    open.maps.agg.set_max_entries(opts.max_keys)?;
    open.maps.sleeps.set_max_entries(SLEEP_MAP_ENTRIES)?;
    open.load().map_err(|e| Error::Bpf(format!("loading the offwake BPF programs failed: {e:#}")))
}

/// Load, attach, wait for the end (duration, signal, `stop`, or every
/// target gone), then read the totals and name their stacks.
pub fn run(mut opts: OffwakeOptions) -> Result<Report> {
    crate::probes::preflight()?;
    if opts.comms.len() > MAX_COMMS {
        return Err(Error::Usage(format!("at most {MAX_COMMS} -c names")));
    }
    if let Some(p) = &opts.ready_file {
        crate::trace::prepare_ready_file(p)?;
    }
    raise_nofile();
    let mut notes = Vec::new();
    let pc = preempt_count_access();
    if pc == PreemptCount::Stack {
        notes.push("this kernel's preempt_count cannot be located: softirq/irq wakers are recognised from their kernel stacks".to_string());
    }

    let mut namer = Namer { kernel: KernelSyms::new(), user: symbols::UserSyms::new() };
    // Processes known now are snapshotted before anything runs.
    for &p in &opts.tgids {
        namer.user.snapshot(p);
    }
    for &t in &opts.tids {
        if let Some(p) = procfs::tgid_of(t) {
            namer.user.snapshot(p);
        }
    }

    let mut open_object = MaybeUninit::uninit();
    let mut retry_object = MaybeUninit::uninit();
    let mut pc_used = pc;
    let mut skel = match load(&opts, pc, &mut open_object) {
        Ok(s) => s,
        Err(e) if pc == PreemptCount::Ksym => {
            pc_used = preempt_count_without_ksym();
            notes.push(format!("reading preempt_count through its ksym failed ({e}): using {pc_used:?} instead"));
            load(&opts, pc_used, &mut retry_object)?
        }
        Err(e) => return Err(e),
    };
    for &t in &opts.tgids {
        crate::probes::add_target(&skel.maps.targets_tgid, &skel.maps.tgid_bits, t)?;
    }
    for &t in &opts.tids {
        crate::probes::add_target(&skel.maps.targets_tid, &skel.maps.tid_bits, t)?;
    }
    skel.attach().map_err(|e| Error::Bpf(format!("attaching the offwake BPF programs failed: {e:#}")))?;
    // What changed while loading (the target list is read back from the kernel).
    let (_, settle_notes) = crate::probes::settle_targets(&opts.tgids, &opts.tids, opts.follow_children, |id, is_tid, add| {
        let mut o = types::nd_target_op { id, is_tid, add };
        // SAFETY: nd_target_op is a repr(C) struct of three u32, viewed as its bytes (the program's context).
        let ctx = unsafe { std::slice::from_raw_parts_mut(&mut o as *mut _ as *mut u8, std::mem::size_of_val(&o)) };
        Ok(skel.progs.nd_targets_op.test_run(libbpf_rs::ProgramInput { context_in: Some(ctx), ..Default::default() })?.return_value == 0)
    });
    notes.extend(settle_notes);
    let started = Instant::now();

    let new_pids: Rc<RefCell<Vec<u32>>> = Rc::default();
    let mut builder = RingBufferBuilder::new();
    {
        let q = new_pids.clone();
        builder.add(&skel.maps.new_pids, move |data: &[u8]| {
            if let Some(n) = read::<types::ow_new_pid>(data) {
                q.borrow_mut().push(n.pid);
            }
            0
        })?;
    }
    let rb = builder.build()?;

    // Removed when dropped, at the end of the run.
    let _ready = match &opts.ready_file {
        Some(p) => Some(crate::trace::write_ready_file(p)?),
        None => None,
    };
    if let Some(f) = opts.on_ready.take() {
        f();
    }

    let watch_exit = opts.ends_with_targets();
    let mut last_check = Instant::now();
    let reason;
    loop {
        if let Err(e) = rb.poll(Duration::from_millis(100)) {
            if !signalled() {
                return Err(e.into());
            }
        }
        for p in std::mem::take(&mut *new_pids.borrow_mut()) {
            namer.user.snapshot(p);
        }
        if signalled() {
            reason = "interrupted".to_string();
            break;
        }
        if opts.stop.as_ref().map(|s| s.load(Ordering::SeqCst)).unwrap_or(false) {
            reason = "done".to_string();
            break;
        }
        if let Some(d) = opts.duration {
            if started.elapsed() >= d {
                reason = "duration reached".to_string();
                break;
            }
        }
        if watch_exit && last_check.elapsed() >= Duration::from_millis(250) {
            last_check = Instant::now();
            let tgids: Vec<u32> = crate::probes::map_ids(&skel.maps.targets_tgid);
            // -t threads as the kernel has them: an exec moves one to the pid.
            let tids: Vec<u32> = crate::probes::map_ids(&skel.maps.targets_tid);
            let any = tgids.iter().any(|&p| crate::procfs::process_alive(p)) || tids.iter().any(|&t| crate::procfs::alive(t));
            if !any {
                reason = "target exited".to_string();
                break;
            }
        }
    }
    // Freeze the totals: detach, then read.
    skel.links = Default::default();
    let _ = rb.consume();
    for p in std::mem::take(&mut *new_pids.borrow_mut()) {
        namer.user.snapshot(p);
    }
    let duration_s = started.elapsed().as_secs_f64();
    let mut counters = read_counters(&skel);
    counters.skipped = crate::probes::skipped_runs(skel.object().progs());
    let entries = collect(&skel, &mut namer);
    counters.user_stacks_cut = namer.user.cut;
    Ok(Report {
        entries,
        counters,
        duration_s,
        reason,
        stack_storage_size: opts.stack_storage_size,
        max_keys: opts.max_keys,
        max_target_procs: skel.maps.targets_tgid.max_entries(),
        preempt_count: pc_used,
        notes,
    })
}

/// The main output's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Blocks like BCC's offwaketime.
    #[default]
    Text,
    /// One `stack N` line per stack, for flame graph tools.
    Folded,
    /// JSON Lines: one object per key, then a summary object.
    Json,
}

/// Where and how to write a report.
#[derive(Debug, Clone, Default)]
pub struct OutputOptions {
    /// Format of the main output.
    pub format: Format,
    /// Stack layout and value of the folded output and the flame graph.
    pub render: RenderOptions,
    /// The main output goes to this file (as FILE.partial until done), else stdout.
    pub output_file: Option<PathBuf>,
    /// Also write an SVG flame graph here.
    pub svg: Option<PathBuf>,
}

/// Output files created before anything is loaded (so an unwritable path
/// fails first), written and renamed into place by [`Outputs::finish`].
pub struct Outputs {
    opts: OutputOptions,
    /// Removed if dropped before `finish` (the run failed).
    files: Vec<PartialFile>,
}

impl Outputs {
    /// Create FILE.partial for the output file and the SVG.
    pub fn open(opts: &OutputOptions) -> Result<Self> {
        let files =
            opts.output_file.iter().chain(opts.svg.iter()).map(|p| PartialFile::create(p, OnDrop::Remove)).collect::<Result<_>>()?;
        Ok(Outputs { opts: opts.clone(), files })
    }

    /// Write the report (main output, SVG) and the summary (stdout for
    /// text on stdout, else stderr).
    pub fn finish(mut self, report: &Report) -> Result<()> {
        let main = render(report, &self.opts);
        let summary = summary_text(report);
        let mut files = std::mem::take(&mut self.files).into_iter();
        if let Some(p) = &self.opts.output_file {
            let mut f = files.next().ok_or_else(|| Error::Write { path: p.clone(), source: std::io::Error::other("not opened") })?;
            f.write_all(main.as_bytes()).map_err(|e| Error::write(p, e))?;
            f.commit()?;
        }
        // The files before stdout: `offwake --svg s.svg | head` still gets its SVG.
        if let Some(p) = &self.opts.svg {
            let mut f = files.next().ok_or_else(|| Error::Write { path: p.clone(), source: std::io::Error::other("not opened") })?;
            let bytes = svg::render(&report.entries, &self.opts.render, "Off-Wake Time Flame Graph")
                .map_err(|e| Error::Write { path: p.clone(), source: e })?;
            f.write_all(&bytes).map_err(|e| Error::write(p, e))?;
            f.commit()?;
        }
        let to_stdout = self.opts.output_file.is_none();
        let mut out = std::io::stdout().lock();
        let written = (|| -> std::io::Result<()> {
            if to_stdout {
                out.write_all(main.as_bytes())?;
            }
            if self.opts.format == Format::Text && to_stdout {
                out.write_all(summary.as_bytes())?;
            }
            out.flush()
        })();
        match written {
            // The reader has what it wanted, and every file is complete.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            r => r?,
        }
        if !(self.opts.format == Format::Text && to_stdout) {
            // Not eprint!: a closed stderr must not panic.
            let _ = std::io::stderr().write_all(summary.as_bytes());
        }
        Ok(())
    }
}

/// The main output of a report in the chosen format (JSON ends with its summary object).
pub fn render(report: &Report, opts: &OutputOptions) -> String {
    match opts.format {
        Format::Text => model::text(&report.entries, &opts.render),
        Format::Folded => model::folded(&report.entries, &opts.render),
        Format::Json => {
            let mut s = model::json_lines(&report.entries);
            s.push_str(&summary_json(report).to_string());
            s.push('\n');
            crate::output::json::escaped(s)
        }
    }
}

/// The summary object closing the JSON output.
pub fn summary_json(report: &Report) -> serde_json::Value {
    let t = report.totals();
    json!({
        "type": "summary",
        "reason": report.reason,
        "duration_s": report.duration_s,
        "keys": t.keys,
        "periods": t.count,
        "blocked_us": t.blocked_us,
        "runq_us": t.runq_us,
        "total_us": t.total_us,
        "rewakes": report.counters.rewakes,
        "early_wakes": report.counters.early_wakes,
        "not_seen": report.counters.not_seen,
        "filtered": report.counters.filtered,
        "no_switch_in": report.counters.no_switch_in,
        "state_unknown": report.counters.state_unknown,
        "user_stacks_cut": report.counters.user_stacks_cut,
        "lost": {
            "kernel_stack": report.counters.kernel_stack,
            "user_stack": report.counters.user_stack,
            "max_keys_full": report.counters.max_keys_full,
            "thread_map_full": report.counters.thread_map_full,
            "new_pid_lost": report.counters.new_pid_lost,
            "targets_full": report.counters.targets_full,
            "per_cpu": report.counters.per_cpu,
            "skipped": report.counters.skipped,
        },
        "stack_storage_size": report.stack_storage_size,
        "max_keys": report.max_keys,
        "fixes": report.fixes(),
        "preempt_count": report.preempt_count,
        "ctx_from_stack": report.counters.ctx_from_stack,
        "notes": report.notes,
    })
}

/// The closing summary for people: totals, losses and their fixes.
pub fn summary_text(report: &Report) -> String {
    let t = report.totals();
    let c = &report.counters;
    let mut o = String::new();
    for n in &report.notes {
        o.push_str(&format!("netdrift: {n}\n"));
    }
    o.push_str(&format!("netdrift offwake: {} after {:.1}s\n", report.reason, report.duration_s));
    o.push_str(&format!(
        "  {} keys, {} blocked periods: {} us blocked + {} us run-queue wait = {} us off CPU\n",
        t.keys, t.count, t.blocked_us, t.runq_us, t.total_us
    ));
    o.push_str(&format!(
        "  {} extra wake-ups ignored (first waker kept), {} woken while switching out, {} wake-ups not seen, {} periods outside -m/-M\n",
        c.rewakes, c.early_wakes, c.not_seen, c.filtered
    ));
    if c.no_switch_in > 0 {
        o.push_str(&format!("  {} blocked periods left out: their switch-in was not seen\n", c.no_switch_in));
    }
    if c.state_unknown > 0 {
        o.push_str(&format!(
            "  {} blocked periods with state ?: their waker overwrote it before the switch-out was seen (kept by any --state; Linux 5.18+ passes it)\n",
            c.state_unknown
        ));
    }
    let lost_cpus: Vec<String> = c
        .per_cpu
        .iter()
        .enumerate()
        .filter_map(|(cpu, v)| {
            use types::ow_counter as C;
            let at = |c: C| v.get(c.0 as usize).copied().unwrap_or(0);
            let n: u64 = v.iter().take(10).sum::<u64>() + at(C::OW_STAT_NEW_PID_LOST) + at(C::OW_LOSS_TARGETS_FULL);
            (n > 0).then(|| format!("CPU{cpu} {n}"))
        })
        .collect();
    o.push_str(&format!(
        "  lost: {} kernel stacks, {} user stacks, {} periods (totals map full), {} periods (thread map full), {} forked processes (target map full){}\n",
        c.kernel_stack.total(),
        c.user_stack.total(),
        c.max_keys_full,
        c.thread_map_full,
        c.targets_full,
        if lost_cpus.is_empty() { String::new() } else { format!("; per CPU: {}", lost_cpus.join(", ")) }
    ));
    if !c.skipped.is_empty() {
        o.push_str(&format!("  lost: {}\n", crate::output::text::skipped_text(&c.skipped)));
    }
    for f in report.fixes() {
        o.push_str(&format!("  fix: {f}\n"));
    }
    o
}

/// Targets in words, for the "tracing ..." line.
pub fn describe_targets(o: &OffwakeOptions) -> String {
    if o.trace_all() {
        return "all threads (but netdrift's)".into();
    }
    procfs::describe_targets(&o.tgids, &o.tids, &o.comms)
}

/// Set of pids in the report, for tests and tools.
pub fn pids(report: &Report) -> HashSet<u32> {
    report.entries.iter().flat_map(|e| [e.blocked.pid, e.waker.task.pid]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_filters_and_metrics_parse() {
        assert_eq!(StateFilter::parse("any").map(|s| s.mask()), Some(0));
        assert_eq!(StateFilter::parse("interruptible").map(|s| s.mask()), Some(1));
        assert_eq!(StateFilter::parse("uninterruptible").map(|s| s.mask()), Some(2));
        assert_eq!(StateFilter::parse("running"), None);
        assert_eq!(Metric::parse("runq"), Some(Metric::Runq));
    }

    #[test]
    fn counters_sum_per_cpu_and_name_fixes() {
        let mut a = vec![0u64; N_COUNTERS];
        let mut b = vec![0u64; N_COUNTERS];
        use types::ow_counter as C;
        a[C::OW_LOSS_KSTACK_EEXIST.0 as usize] = 2;
        b[C::OW_LOSS_USTACK_ENOMEM.0 as usize] = 1;
        b[C::OW_LOSS_USTACK_EFAULT.0 as usize] = 3;
        a[C::OW_LOSS_AGG_FULL.0 as usize] = 4;
        b[C::OW_STAT_PERIODS.0 as usize] = 7;
        let c = Counters::from_per_cpu(vec![a, b]);
        assert_eq!(c.kernel_stack.eexist, 2);
        assert_eq!(c.user_stack.enomem, 1);
        assert_eq!(c.periods, 7);
        assert!(c.any_loss());
        let r = Report { counters: c, stack_storage_size: 16384, max_keys: 100, ..Default::default() };
        let f = r.fixes().join("\n");
        assert!(f.contains("--stack-storage-size (now 16384)"), "{f}");
        assert!(f.contains("frame pointers"), "{f}");
        assert!(f.contains("--max-keys (now 100)"), "{f}");
        let s = summary_text(&r);
        assert!(s.contains("per CPU: CPU0 6, CPU1 4"), "{s}");
        let j = summary_json(&r);
        assert_eq!(j["lost"]["user_stack"]["efault"], 3);
        assert_eq!(j["lost"]["skipped"], json!({}));
    }

    #[test]
    fn every_summary_field_is_named_in_the_json_docs() {
        let docs = include_str!("../docs/json.md");
        let j = summary_json(&Report::default());
        let keys = j.as_object().unwrap().keys().chain(j["lost"].as_object().unwrap().keys());
        for k in keys.filter(|k| *k != "type") {
            assert!(docs.contains(&format!("`{k}`")), "docs/json.md does not name `{k}` of offwake's summary");
        }
    }

    #[test]
    fn skipped_runs_are_a_loss_in_text_and_json() {
        let mut c = Counters::from_per_cpu(vec![vec![0u64; N_COUNTERS]]);
        assert!(!c.any_loss());
        c.skipped.insert("ow_sched_switch".into(), 3);
        assert!(c.any_loss());
        let r = Report { counters: c, ..Default::default() };
        let s = summary_text(&r);
        assert!(s.contains("lost: 3 program runs skipped by the kernel") && s.contains("ow_sched_switch 3"), "{s}");
        assert_eq!(summary_json(&r)["lost"]["skipped"]["ow_sched_switch"], 3);
    }

    #[test]
    fn per_cpu_offsets_from_this_kernels_btf() {
        // Reads /sys/kernel/btf/vmlinux (world-readable): no root needed.
        if !cfg!(target_arch = "x86_64") || !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            return;
        }
        match preempt_count_without_ksym() {
            PreemptCount::Runqueue { pc_delta, .. } => assert_ne!(pc_delta, 0),
            other => eprintln!("no per-CPU offsets in this kernel's BTF: {other:?}"),
        }
    }

    #[test]
    fn context_from_the_stack_when_preempt_count_is_unknown() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut w = types::ow_waker { pid: 42, tid: 42, ctx: 4, ..Default::default() };
        let loopback = f(&[
            "try_to_wake_up",
            "ep_poll_callback",
            "sock_def_readable",
            "tcp_v4_rcv",
            "net_rx_action",
            "handle_softirqs",
            "do_softirq",
            "__local_bh_enable_ip",
            "ip_finish_output2",
            "tcp_sendmsg",
            "do_syscall_64",
        ]);
        assert_eq!(waker_context(&w, "curl", &loopback), (WakeContext::Softirq, Host::SyscallOf));
        let pipe = f(&["try_to_wake_up", "__wake_up_common", "pipe_write", "vfs_write", "do_syscall_64"]);
        assert_eq!(waker_context(&w, "writer", &pipe), (WakeContext::Task, Host::Interrupting));
        w.ctx = 2;
        w.tid = 0;
        w.pid = 0;
        assert_eq!(waker_context(&w, "swapper/1", &pipe), (WakeContext::Irq, Host::Idle));
        w.ctx = 5;
        assert_eq!(waker_context(&w, "", &[]).0, WakeContext::NotSeen);
    }
}
