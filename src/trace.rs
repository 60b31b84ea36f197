//! The live pipeline of `netdrift trace`: ring buffer -> events -> enrich
//! (stack classification, /proc facts) -> correlate -> text or JSON.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libbpf_rs::RingBufferBuilder;
use serde_json::json;

use crate::analysis::{Annotation, Chain, Correlator, Stats};
use crate::error::{Error, Result};
use crate::events::{decode, Event, Kind, Task};
use crate::output::json;
use crate::output::text::{summary, Losses, TextRenderer};
use crate::probes::{ProbeConfig, Probes};
use crate::procfs;
use crate::symbolize::{classify, KernelSyms};

/// Set by SIGINT/SIGTERM.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// Route SIGINT and SIGTERM to a flag so the trace ends with its summary.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Where the output goes.
#[derive(Debug, Clone, Default)]
pub enum Sink {
    #[default]
    Stdout,
    /// Written as `PATH.partial`, renamed to PATH when the trace ends cleanly.
    File(PathBuf),
}

pub struct TraceOptions {
    pub probe: ProbeConfig,
    pub duration: Option<Duration>,
    pub json: bool,
    pub stacks: bool,
    pub ready_file: Option<PathBuf>,
    pub sink: Sink,
    /// A chain idle this long is printed as incomplete.
    pub idle: Duration,
    /// Keep completed chains in the result (tests, demo).
    pub keep_chains: bool,
    /// Stop when this is set (the demo's client sets it).
    pub stop: Option<Arc<AtomicBool>>,
    /// Called once the probes are attached.
    pub on_ready: Option<Box<dyn FnOnce() + Send>>,
    /// Print chains at all (the demo prints its own header first).
    pub quiet: bool,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            probe: ProbeConfig::default(),
            duration: None,
            json: false,
            stacks: false,
            ready_file: None,
            sink: Sink::Stdout,
            idle: Duration::from_secs(2),
            keep_chains: false,
            stop: None,
            on_ready: None,
            quiet: false,
        }
    }
}

/// What a finished trace saw.
#[derive(Debug, Default)]
pub struct TraceResult {
    pub stats: Stats,
    pub losses: Losses,
    pub chains: Vec<Chain>,
    pub decode_errors: u64,
    pub reason: String,
    pub notes: Vec<String>,
}

/// CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn partial_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// Open the output: a file is checked writable before anything is loaded.
fn open_sink(sink: &Sink) -> Result<Box<dyn Write>> {
    match sink {
        Sink::Stdout => Ok(Box::new(BufWriter::new(std::io::stdout()))),
        Sink::File(p) => {
            let tmp = partial_path(p);
            let f = File::create(&tmp).map_err(|e| Error::Output { path: p.clone(), source: e })?;
            Ok(Box::new(BufWriter::new(f)))
        }
    }
}

/// Write the ready file atomically, so a waiting script never reads half of it.
pub fn write_ready_file(p: &Path) -> Result<()> {
    let tmp = partial_path(p);
    std::fs::write(&tmp, format!("{}\n", std::process::id())).map_err(|e| Error::Output { path: p.to_path_buf(), source: e })?;
    std::fs::rename(&tmp, p).map_err(|e| Error::Output { path: p.to_path_buf(), source: e })
}

/// Add what /proc knows before an event is correlated: which fds hold a
/// socket, which fd an epoll data word stands for.
struct Enricher {
    syms: KernelSyms,
    tried_inos: HashSet<u64>,
    tried_epoll: HashSet<(u32, i32, u64)>,
}

impl Enricher {
    fn facts(&mut self, ev: &mut Event, corr: &Correlator, pids: &HashSet<u32>) -> Vec<Event> {
        let mut out = Vec::new();
        match &mut ev.kind {
            Kind::Wake { stack, cause, context, via_epoll, waker_is_kthread, .. } => {
                let names = self.syms.names(stack);
                let c = classify(&ev.task, *waker_is_kthread, &names);
                *cause = Some(c.cause);
                *context = Some(c.context);
                *via_epoll = c.via_epoll;
            }
            Kind::SockReady { sock, .. } => {
                if sock.ino != 0 && !corr.fds.knows(sock.ino) && self.tried_inos.insert(sock.ino) {
                    for &pid in pids {
                        for (fd, ino) in procfs::socket_fds(pid) {
                            if ino == sock.ino {
                                out.push(Event {
                                    ts: ev.ts,
                                    cpu: ev.cpu,
                                    task: Task { pid, tid: pid, comm: procfs::comm(pid, pid).unwrap_or_default() },
                                    kind: Kind::FdMap { ino, fd },
                                });
                            }
                        }
                    }
                }
            }
            Kind::EpollExit { epfd, events, .. } => {
                let pid = ev.task.pid;
                let missing = events.iter().any(|e| corr.epoll_fd(pid, *epfd, e.data).is_none() && !self.tried_epoll.contains(&(pid, *epfd, e.data)));
                if missing {
                    for e in events.iter() {
                        self.tried_epoll.insert((pid, *epfd, e.data));
                    }
                    for ent in procfs::epoll_entries(pid, *epfd) {
                        if corr.epoll_fd(pid, *epfd, ent.data).is_none() {
                            out.push(Event { ts: ev.ts, cpu: ev.cpu, task: ev.task.clone(), kind: Kind::EpollMap { epfd: *epfd, fd: ent.fd, data: ent.data } });
                        }
                    }
                }
            }
            _ => {}
        }
        out
    }
}

/// Run a trace until the duration ends, a signal arrives, the targets exit
/// or `opts.stop` is set.
pub fn run(mut opts: TraceOptions) -> Result<TraceResult> {
    crate::probes::preflight()?;
    let mut out = open_sink(&opts.sink)?;
    let mut open_object = MaybeUninit::uninit();
    let probes = match Probes::load(&opts.probe, &mut open_object) {
        Ok(p) => p,
        Err(e) => {
            if let Sink::File(p) = &opts.sink {
                let _ = std::fs::remove_file(partial_path(p));
            }
            return Err(e);
        }
    };
    let t0 = monotonic_ns();
    let started = Instant::now();

    let mut live_tgids: HashSet<u32> = opts.probe.tgids.iter().copied().collect();
    let mut live_tids: HashSet<u32> = opts.probe.tids.iter().copied().collect();
    let watch_exit = opts.probe.comms.is_empty() && !(live_tgids.is_empty() && live_tids.is_empty());
    let scan_pids = |tg: &HashSet<u32>, td: &HashSet<u32>| -> HashSet<u32> {
        let mut s = tg.clone();
        s.extend(td.iter().filter_map(|&t| procfs::tgid_of(t)));
        s
    };
    let mut pids = scan_pids(&live_tgids, &live_tids);

    let queue: Rc<RefCell<Vec<Event>>> = Rc::new(RefCell::new(Vec::new()));
    let bad = Rc::new(RefCell::new(0u64));
    let mut builder = RingBufferBuilder::new();
    {
        let q = queue.clone();
        let bad = bad.clone();
        builder.add(&probes.skel.maps.events, move |data: &[u8]| {
            match decode(data) {
                Ok(e) => q.borrow_mut().push(e),
                Err(_) => *bad.borrow_mut() += 1,
            }
            0
        })?;
    }
    let rb = builder.build()?;

    for n in &probes.notes {
        eprintln!("netdrift: {n}");
    }
    if opts.json {
        let line = json::record(
            "start",
            json!({
                "version": env!("CARGO_PKG_VERSION"),
                "t0_ns": t0,
                "pids": opts.probe.tgids,
                "tids": opts.probe.tids,
                "comms": opts.probe.comms,
                "features": probes.features,
                "notes": probes.notes,
                "ringbuf_bytes": opts.probe.ringbuf_bytes,
            }),
        );
        writeln!(out, "{line}")?;
    }
    if let Some(p) = &opts.ready_file {
        write_ready_file(p)?;
    }
    if let Some(f) = opts.on_ready.take() {
        f();
    }

    let mut corr = Correlator::new();
    let mut enr = Enricher { syms: KernelSyms::new(), tried_inos: HashSet::new(), tried_epoll: HashSet::new() };
    let renderer = TextRenderer { t0, stacks: opts.stacks };
    let mut result = TraceResult { notes: probes.notes.clone(), ..Default::default() };
    let mut last_check = Instant::now();
    let reason;

    let process = |corr: &mut Correlator,
                       enr: &mut Enricher,
                       out: &mut Box<dyn Write>,
                       result: &mut TraceResult,
                       live_tgids: &mut HashSet<u32>,
                       live_tids: &mut HashSet<u32>,
                       pids: &mut HashSet<u32>|
     -> Result<()> {
        let batch: Vec<Event> = std::mem::take(&mut *queue.borrow_mut());
        for mut ev in batch {
            match &ev.kind {
                Kind::TaskNew { child, .. } => {
                    live_tgids.insert(child.pid);
                    pids.insert(child.pid);
                }
                Kind::TaskExit { group_dead } => {
                    if *group_dead {
                        live_tgids.remove(&ev.task.pid);
                    }
                    live_tids.remove(&ev.task.tid);
                }
                _ => {}
            }
            let facts = enr.facts(&mut ev, corr, pids);
            for f in facts.iter().chain(std::iter::once(&ev)) {
                let ann = corr.ingest(f);
                if opts.json {
                    let stack = match (&f.kind, opts.stacks) {
                        (Kind::Wake { stack, .. }, true) => Some(enr.syms.frames(stack)),
                        _ => None,
                    };
                    writeln!(out, "{}", json::event(f, &ann, stack.as_deref()))?;
                }
            }
        }
        corr.expire(opts.idle.as_nanos() as u64);
        emit_chains(corr.drain_completed(), &renderer, &mut enr.syms, out, result, &opts)?;
        Ok(())
    };

    loop {
        if let Err(e) = rb.poll(Duration::from_millis(100)) {
            if !SIGNALLED.load(Ordering::SeqCst) {
                return Err(e.into());
            }
        }
        process(&mut corr, &mut enr, &mut out, &mut result, &mut live_tgids, &mut live_tids, &mut pids)?;
        out.flush()?;
        if SIGNALLED.load(Ordering::SeqCst) {
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
        if watch_exit && last_check.elapsed() >= Duration::from_millis(500) {
            last_check = Instant::now();
            // Exit records can be lost; /proc cannot.
            live_tgids.retain(|&p| procfs::task_exists(p));
            live_tids.retain(|&t| procfs::task_exists(t));
        }
        if watch_exit && live_tgids.is_empty() && live_tids.is_empty() {
            reason = "target exited".to_string();
            break;
        }
    }
    let _ = rb.consume();
    process(&mut corr, &mut enr, &mut out, &mut result, &mut live_tgids, &mut live_tids, &mut pids)?;
    let rest = corr.finish();
    emit_chains(rest, &renderer, &mut enr.syms, &mut out, &mut result, &opts)?;
    result.losses = probes.losses();
    result.decode_errors = *bad.borrow();
    result.stats = corr.stats.clone();
    result.reason = reason;
    let secs = started.elapsed().as_secs_f64();
    let mib = opts.probe.ringbuf_bytes >> 20;
    if opts.json {
        let line = json::record(
            "summary",
            json!({
                "reason": result.reason,
                "duration_s": secs,
                "stats": result.stats,
                "lost": result.losses,
                "decode_errors": result.decode_errors,
                "fix": if result.losses.ringbuf > 0 { format!("raise --ringbuf-size (now {mib} MiB)") } else { String::new() },
            }),
        );
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    drop(out);
    if let Sink::File(p) = &opts.sink {
        std::fs::rename(partial_path(p), p).map_err(|e| Error::Output { path: p.clone(), source: e })?;
    }
    let text = summary(&result.stats, &result.losses, secs, mib, &result.reason);
    if opts.json || matches!(opts.sink, Sink::File(_)) || opts.quiet {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
    drop(probes);
    Ok(result)
}

fn emit_chains(chains: Vec<Chain>, r: &TextRenderer, syms: &mut KernelSyms, out: &mut Box<dyn Write>, result: &mut TraceResult, opts: &TraceOptions) -> Result<()> {
    for c in chains {
        if !opts.json && !opts.quiet {
            writeln!(out, "{}", r.chain(&c, syms))?;
        }
        if opts.keep_chains {
            result.chains.push(c);
        }
    }
    Ok(())
}

/// Annotation type re-exported for library users reading JSON.
pub type EventAnnotation = Annotation;
