//! The pipeline of `netdrift trace`: ring buffer -> events -> enrich (stack
//! classification, /proc facts) -> correlate -> text or JSON, optionally
//! recorded. `netdrift analyze` feeds a recording through the same
//! [`Pipeline`], so its output is the live one.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libbpf_rs::RingBufferBuilder;
use serde_json::{json, Value};

use crate::analysis::{Annotation, Chain, Correlator, Stats};
use crate::error::{Error, Result};
use crate::events::{decode, Event, GapFinder, Kind, Task};
use crate::output::json;
use crate::output::text::{ringbuf_fix, summary, summary_sections, Losses, ReaderCpu, TextRenderer};
use crate::output::{partial_path, OnDrop, PartialFile};
use crate::probes::{ProbeConfig, Probes};
use crate::procfs;
use crate::summary::Summary;
use crate::symbolize::{classify, KernelSyms, WakeClass};

/// Set by SIGINT/SIGTERM.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// The ready file written, as a C string (null when none is there): the
/// second signal's handler removes it before the process dies.
static READY_PATH: std::sync::atomic::AtomicPtr<libc::c_char> = std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_signal(sig: libc::c_int) {
    if !SIGNALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    // The second: the run dies by the signal, and its ready file must not
    // tell a script that probes are attached. unlink, signal and raise are
    // async-signal-safe.
    let p = READY_PATH.load(Ordering::SeqCst);
    // SAFETY: `p` is null or a leaked NUL-terminated path that is never freed.
    unsafe {
        if !p.is_null() {
            libc::unlink(p);
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Whether SIGINT or SIGTERM arrived.
pub fn signalled() -> bool {
    SIGNALLED.load(Ordering::SeqCst)
}

/// Route SIGINT and SIGTERM to a flag so the trace ends with its summary.
/// Once: a second Ctrl-C kills a run stuck in loading, symbolizing or
/// writing (the programs detach with the process; a `.partial` file stays
/// as the mark of an unfinished output; the ready file is removed).
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid (empty mask, no flags) before the
        // fields are set; the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
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

/// What the summary at the end shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Report {
    /// Chains as they complete, then every summary section.
    #[default]
    Full,
    /// Only the thundering-herd table and the counts (`netdrift herd`).
    Herd,
}

pub struct TraceOptions {
    pub probe: ProbeConfig,
    pub duration: Option<Duration>,
    pub json: bool,
    pub stacks: bool,
    pub ready_file: Option<PathBuf>,
    pub sink: Sink,
    /// Save the raw events here (`netdrift analyze` replays them).
    pub record: Option<PathBuf>,
    /// A chain idle this long is printed as incomplete.
    pub idle: Duration,
    /// Keep completed chains in the result (tests, demo).
    pub keep_chains: bool,
    /// Stop when this is set (the demo's client sets it).
    pub stop: Option<Arc<AtomicBool>>,
    /// Called once the probes are attached.
    pub on_ready: Option<Box<dyn FnOnce() + Send>>,
    /// Print no chains (the caller wants only the result).
    pub quiet: bool,
    pub report: Report,
    /// Extra outputs fed every event and chain (`--perfetto`, `netdrift report`).
    pub observers: Vec<Box<dyn Observer>>,
    /// Benchmark only: count the records and drop them undecoded.
    pub discard: bool,
}

/// An extra output: fed every event (as ingested, with what the correlator
/// joined it to) and every completed chain, written when the trace ends.
/// `--perfetto` (output::perfetto) and `netdrift report` (output::html).
pub trait Observer {
    /// Check the output can be written, before anything is loaded.
    fn open(&mut self) -> Result<()> {
        Ok(())
    }
    /// The `start` record (`t0_ns`, targets, features).
    fn start(&mut self, _start: &Value) {}
    /// Shows every wake-up's own waker stack (else most reuse an earlier one's class).
    fn needs_stacks(&self) -> bool {
        false
    }
    fn event(&mut self, ev: &Event, ann: &Annotation);
    fn chain(&mut self, c: &Chain);
    /// The trace ended: write the output.
    fn finish(&mut self, end: &TraceEnd<'_>, syms: &mut KernelSyms) -> Result<()>;
}

/// What the trace saw, for [`Observer::finish`].
pub struct TraceEnd<'a> {
    pub stats: &'a Stats,
    pub summary: &'a Summary,
    pub losses: &'a Losses,
    pub secs: f64,
    pub reason: &'a str,
    pub ringbuf_mib: u32,
    pub decode_errors: u64,
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
            record: None,
            idle: Duration::from_secs(2),
            keep_chains: false,
            stop: None,
            on_ready: None,
            quiet: false,
            report: Report::Full,
            observers: Vec::new(),
            discard: false,
        }
    }
}

/// What a finished trace saw.
#[derive(Debug, Default)]
pub struct TraceResult {
    pub stats: Stats,
    pub summary: Summary,
    pub losses: Losses,
    pub chains: Vec<Chain>,
    pub decode_errors: u64,
    pub reason: String,
    pub notes: Vec<String>,
    /// The summary text as printed.
    pub summary_text: String,
}

/// CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Where the chains or JSON lines go.
enum Out {
    Stdout(BufWriter<std::io::Stdout>),
    /// Kept as FILE.partial if the trace fails after it started.
    File(PartialFile),
}

impl Out {
    fn is_file(&self) -> bool {
        matches!(self, Out::File(_))
    }

    fn commit(self) -> Result<()> {
        match self {
            Out::Stdout(mut w) => Ok(w.flush().map_err(stdout_error)?),
            Out::File(f) => f.commit(),
        }
    }

    /// The trace failed before it started: leave nothing behind.
    fn discard(self) {
        if let Out::File(f) = self {
            f.discard();
        }
    }
}

/// A failed write to stdout named as such (a file's error names its file);
/// its kind kept, so a broken pipe is still recognised.
fn stdout_error(e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("writing to standard output: {e}"))
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Out::Stdout(w) => w.write(buf).map_err(stdout_error),
            Out::File(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::Stdout(w) => w.flush().map_err(stdout_error),
            Out::File(f) => f.flush(),
        }
    }
}

/// Open the output: a file is checked writable before anything is loaded.
fn open_sink(sink: &Sink) -> Result<Out> {
    match sink {
        Sink::Stdout => Ok(Out::Stdout(BufWriter::with_capacity(1 << 16, std::io::stdout()))),
        Sink::File(p) => Ok(Out::File(PartialFile::create(p, OnDrop::Keep)?)),
    }
}

/// An output path must name a file, not a directory (checked before anything
/// is loaded, so a bad path costs nothing).
pub fn check_file_path(p: &Path) -> Result<()> {
    let refuse = |errno| Err(Error::Output { path: p.to_path_buf(), source: std::io::Error::from_raw_os_error(errno) });
    if p.is_dir() {
        return refuse(libc::EISDIR);
    }
    // A loop of symbolic links names no file: replacing the link would hide the mistake.
    if std::fs::metadata(p).is_err_and(|e| e.raw_os_error() == Some(libc::ELOOP)) {
        return refuse(libc::ELOOP);
    }
    // An immutable or append-only file cannot be replaced: the rename at the
    // end would fail after the whole run.
    let (target, in_place) = crate::output::output_target(p);
    if in_place {
        return Ok(());
    }
    if target.is_file() && replace_protected(&target) {
        return refuse(libc::EPERM);
    }
    // FILE.partial is made there, and renamed: a missing or read-only
    // directory, or an append-only one (a name cannot leave it).
    let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if replace_protected(dir) {
        return refuse(libc::EPERM);
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Usage(format!("{}: a NUL in the path", p.display())))?;
    // SAFETY: `c` is a NUL-terminated path that lives across the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return refuse(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EACCES));
    }
    Ok(())
}

/// Has the file or directory at `p` the immutable or append-only attribute (`chattr +i/+a`)?
fn replace_protected(p: &Path) -> bool {
    const FS_IMMUTABLE_FL: libc::c_long = 0x10;
    const FS_APPEND_FL: libc::c_long = 0x20;
    let Ok(f) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(p) else { return false };
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes an int into `flags`, which is larger and
    // lives across the call; the fd is open.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags as *mut libc::c_long) };
    r == 0 && flags & (FS_IMMUTABLE_FL | FS_APPEND_FL) != 0
}

/// The file a path names, for comparing outputs however they are spelled
/// (`./a`, `dir/../a`, a link): resolved if it exists, else its directory is.
pub fn file_identity(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match (std::fs::canonicalize(dir), p.file_name()) {
        (Ok(d), Some(n)) => d.join(n),
        _ => p.to_path_buf(),
    }
}

/// Outputs of one run: files, not directories, all different (also as one
/// another's `.partial`), each creatable.
pub fn check_outputs(paths: &[&Path]) -> Result<()> {
    let mut seen: Vec<(PathBuf, PathBuf, &Path)> = Vec::new();
    for p in paths {
        check_file_path(p)?;
        let (target, in_place) = crate::output::output_target(p);
        if in_place && file_identity(&target) == Path::new("/dev/null") {
            // Two outputs thrown away do not collide (a FIFO or a terminal would interleave them).
            continue;
        }
        let (id, partial) = (file_identity(&target), file_identity(&partial_path(&target)));
        if let Some((_, _, q)) = seen.iter().find(|(i, ip, _)| *i == id || *ip == id || *i == partial) {
            return Err(Error::Usage(if q == p {
                format!("{} is given for two outputs: give each output its own file", p.display())
            } else {
                format!("{} and {} are one file (or one is the other's .partial): give each output its own file", q.display(), p.display())
            }));
        }
        seen.push((id, partial, p));
    }
    Ok(())
}

/// Before anything is attached: a ready file left by an earlier run is
/// removed (a script waiting for it must not go on too early), and the
/// place is checked writable.
pub fn prepare_ready_file(path: &Path) -> Result<()> {
    let (target, in_place) = crate::output::output_target(path);
    if in_place {
        return Ok(());
    }
    let p = target.as_path();
    let err = |e| Error::Output { path: path.to_path_buf(), source: e };
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let tmp = partial_path(p);
    File::create(&tmp).map_err(err)?;
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

/// A written ready file: removed when dropped (the probes detached), if
/// it is still the regular file this process wrote, so that a script
/// reusing the path never takes a stale one for a new run's readiness.
pub struct ReadyFile {
    path: Option<PathBuf>,
}

impl Drop for ReadyFile {
    fn drop(&mut self) {
        READY_PATH.store(std::ptr::null_mut(), Ordering::SeqCst);
        if let Some(p) = self.path.take() {
            if std::fs::read_to_string(&p).is_ok_and(|s| s == format!("{}\n", std::process::id())) {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

/// Write the ready file atomically, so a waiting script never reads half of it.
pub fn write_ready_file(path: &Path) -> Result<ReadyFile> {
    let err = |e| Error::Write { path: path.to_path_buf(), source: e };
    // A FIFO or device is written in place: a rename would replace it.
    let (target, in_place) = crate::output::output_target(path);
    let p = target.as_path();
    let line = format!("{}\n", std::process::id());
    if let Some(fd) = crate::output::own_fd(p) {
        // One of netdrift's own fds (/dev/stderr): written to it, at its offset,
        // as netdrift's other lines are (a reopened file has an offset of its own).
        use std::io::Write as _;
        // SAFETY: the fd is open in this process (its /proc/self/fd entry resolved);
        // ManuallyDrop keeps it open after the write.
        let mut f = std::mem::ManuallyDrop::new(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        f.write_all(line.as_bytes()).map_err(err)?;
    } else if in_place {
        // Appending: a FIFO, a device, another process's fd.
        use std::io::Write as _;
        crate::output::open_in_place(p).and_then(|mut f| f.write_all(line.as_bytes())).map_err(err)?;
    } else {
        let tmp = partial_path(p);
        std::fs::write(&tmp, line).map_err(err)?;
        std::fs::rename(&tmp, p).map_err(err)?;
        if let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) {
            // Leaked: the signal handler may read it at any time.
            READY_PATH.store(c.into_raw(), Ordering::SeqCst);
        }
        return Ok(ReadyFile { path: Some(p.to_path_buf()) });
    }
    // Written in place (a FIFO, a device, an fd): nothing to remove.
    Ok(ReadyFile { path: None })
}

/// Add what /proc knows before an event is correlated: which fds hold a
/// socket, which fd an epoll data word stands for. Live only: a recording
/// keeps these facts as events.
struct Enricher {
    /// Waker stacks repeat: classify each distinct one once.
    classes: std::collections::HashMap<u64, (Vec<u64>, crate::symbolize::WakeClass)>,
    /// The class of the last stack taken for (waker, woken thread, `stack_sig`),
    /// for the wake-ups that reuse it.
    by_sig: HashMap<(u32, u32, u64), crate::symbolize::WakeClass>,
    tried_inos: HashSet<u64>,
    /// (pid, epfd, data) looked up in fdinfo, with the pid's close count then:
    /// after a close, data words can stand for new fds, so look again.
    tried_epoll: HashMap<(u32, i32, u64), u64>,
    /// Processes with an entry in `tried_epoll`.
    epoll_pids: HashSet<u32>,
    /// (pid, epfd, data, socket inode) looked up again because the word's
    /// fd was not the socket that woke the thread (`return_maybe_stale`).
    tried_stale: HashSet<(u32, i32, u64, u64)>,
    closes: HashMap<u32, u64>,
    handlers: Vec<crate::handlers::Resolved>,
    /// Every socket fd of the targets at the last full /proc scan, so that
    /// one scan answers for every socket then held (300 servers' listeners:
    /// one scan of 300 fd tables, not one per listener).
    fd_index: FdIndex,
}

/// Socket inode -> its (pid, fd)s, and back, as last read from /proc/PID/fd.
#[derive(Default)]
struct FdIndex {
    by_ino: HashMap<u64, Vec<(u32, i32)>>,
    by_fd: HashMap<(u32, i32), u64>,
}

impl FdIndex {
    fn insert(&mut self, pid: u32, fd: i32, ino: u64) {
        self.remove(pid, fd);
        self.by_fd.insert((pid, fd), ino);
        self.by_ino.entry(ino).or_default().push((pid, fd));
    }

    fn remove(&mut self, pid: u32, fd: i32) {
        if let Some(ino) = self.by_fd.remove(&(pid, fd)) {
            if let Some(v) = self.by_ino.get_mut(&ino) {
                v.retain(|&e| e != (pid, fd));
                if v.is_empty() {
                    self.by_ino.remove(&ino);
                }
            }
        }
    }

    fn forget_pid(&mut self, pid: u32) {
        let fds: Vec<i32> = self.by_fd.keys().filter(|k| k.0 == pid).map(|k| k.1).collect();
        for fd in fds {
            self.remove(pid, fd);
        }
    }

    /// Read `pid`'s socket fds from /proc into the index (an fd closed
    /// unseen stays until `holders` or `forget_pid` drops it); returns
    /// them as (fd, inode).
    fn read_pid(&mut self, pid: u32) -> Vec<(i32, u64)> {
        let fds = procfs::socket_fds(pid);
        for &(fd, ino) in &fds {
            self.insert(pid, fd, ino);
        }
        fds
    }

    /// The holders of `ino` as indexed, each checked against /proc (an fd
    /// closed without a close record, by exec or close_range, is dropped);
    /// None when the index does not have it.
    fn holders(&mut self, ino: u64) -> Option<Vec<(u32, i32)>> {
        let v = self.by_ino.get(&ino)?.clone();
        type Holders = Vec<(u32, i32)>;
        let (live, gone): (Holders, Holders) = v.into_iter().partition(|&(pid, fd)| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .ok()
                .and_then(|l| l.to_str().and_then(procfs::socket_ino))
                .is_some_and(|i| i == ino)
        });
        for (pid, fd) in gone {
            self.remove(pid, fd);
        }
        (!live.is_empty()).then_some(live)
    }
}

/// An `fd_map` event at (`ts`, `cpu`): `pid` (named `comm`) holds socket `ino` as `fd`.
fn fd_fact(pid: u32, comm: &Rc<str>, fd: i32, ino: u64, ts: u64, cpu: u32) -> Event {
    Event { ts, cpu, task: Task { pid, tid: pid, comm: comm.clone() }, kind: Kind::FdMap { ino, fd } }
}

fn proc_comm(pid: u32) -> Rc<str> {
    procfs::comm(pid, pid).unwrap_or_default().into()
}

impl Enricher {
    /// The process is gone (its pid may be reused): what was learnt of it goes.
    fn forget_pid(&mut self, pid: u32) {
        self.closes.remove(&pid);
        self.fd_index.forget_pid(pid);
        // Most processes that exit (tracing everything) were never looked up in fdinfo.
        if self.epoll_pids.remove(&pid) {
            self.tried_epoll.retain(|k, _| k.0 != pid);
        }
    }

    fn facts(&mut self, ev: &mut Event, corr: &Correlator, pids: &HashSet<u32>, syms: &mut KernelSyms) -> Vec<Event> {
        let mut out = Vec::new();
        match &mut ev.kind {
            Kind::Wake { target, stack_reused: true, stack_sig, cause, context, via_epoll, .. } => {
                // Not seen (the map was reset): unknown, as a lost stack.
                let c = self.by_sig.get(&(ev.task.tid, target.tid, *stack_sig)).copied().unwrap_or(WakeClass::UNKNOWN);
                *cause = Some(c.cause);
                *context = Some(c.context);
                *via_epoll = c.via_epoll;
            }
            Kind::Wake { target, stack, stack_sig, cause, context, via_epoll, waker_is_kthread, .. } => {
                // The class depends on the stack and on who the waker is.
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for a in stack.iter().chain([ev.task.tid as u64, *waker_is_kthread as u64].iter()) {
                    h = (h ^ a).wrapping_mul(0x100_0000_01b3);
                }
                h ^= ev.task.comm.len() as u64;
                let c = match self.classes.get(&h) {
                    Some((st, c)) if st == stack => *c,
                    _ => {
                        let names = syms.stack_names(stack);
                        let c = classify(&ev.task, *waker_is_kthread, &names);
                        if self.classes.len() > 65_536 {
                            self.classes.clear();
                        }
                        self.classes.insert(h, (stack.clone(), c));
                        c
                    }
                };
                if !stack.is_empty() {
                    if self.by_sig.len() > 65_536 {
                        self.by_sig.clear();
                    }
                    self.by_sig.insert((ev.task.tid, target.tid, *stack_sig), c);
                }
                *cause = Some(c.cause);
                *context = Some(c.context);
                *via_epoll = c.via_epoll;
            }
            Kind::Handler { id, events, name, flags, .. } => {
                if let Some(h) = self.handlers.get(*id as usize) {
                    *name = Some(h.name.clone());
                    *flags = events.map(|e| h.decoder.decode(e));
                }
            }
            Kind::SockReady { sock, .. } => {
                if self.tried_inos.len() > 100_000 {
                    self.tried_inos.clear();
                }
                if sock.ino != 0 && !corr.fds.knows(sock.ino) && self.tried_inos.insert(sock.ino) {
                    let holders = match self.fd_index.holders(sock.ino) {
                        Some(h) => h,
                        None => {
                            // Not held at the last scan: scan every target again.
                            if self.fd_index.by_fd.len() > 1_000_000 {
                                self.fd_index = FdIndex::default();
                            }
                            let mut ps: Vec<u32> = pids.iter().copied().collect();
                            ps.sort_unstable();
                            let mut h = Vec::new();
                            for pid in ps {
                                h.extend(
                                    self.fd_index.read_pid(pid).into_iter().filter(|&(_, ino)| ino == sock.ino).map(|(fd, _)| (pid, fd)),
                                );
                            }
                            h
                        }
                    };
                    out.extend(holders.into_iter().map(|(pid, fd)| fd_fact(pid, &proc_comm(pid), fd, sock.ino, ev.ts, ev.cpu)));
                }
            }
            Kind::Close { fd, .. } => {
                *self.closes.entry(ev.task.pid).or_default() += 1;
                self.fd_index.remove(ev.task.pid, *fd);
            }
            Kind::EpollExit { epfd, events, .. } => {
                let pid = ev.task.pid;
                let gen = self.closes.get(&pid).copied().unwrap_or(0);
                let stale = corr.return_maybe_stale(ev.task.tid, pid, *epfd, events).is_some_and(|ino| {
                    if self.tried_stale.len() > 100_000 {
                        self.tried_stale.clear();
                    }
                    self.tried_stale.insert((pid, *epfd, events[0].data, ino))
                });
                let missing = stale
                    || events
                        .iter()
                        .any(|e| corr.epoll_fd(pid, *epfd, e.data).is_none() && self.tried_epoll.get(&(pid, *epfd, e.data)) != Some(&gen));
                if missing {
                    if self.tried_epoll.len() > 100_000 {
                        self.tried_epoll.clear();
                        self.epoll_pids.clear();
                    }
                    self.epoll_pids.insert(pid);
                    for e in events.iter() {
                        self.tried_epoll.insert((pid, *epfd, e.data), gen);
                    }
                    for ent in procfs::epoll_entries(pid, *epfd) {
                        if corr.epoll_fd(pid, *epfd, ent.data) != Some(ent.fd) {
                            out.push(Event {
                                ts: ev.ts,
                                cpu: ev.cpu,
                                task: ev.task.clone(),
                                kind: Kind::EpollMap { epfd: *epfd, fd: ent.fd, data: ent.data },
                            });
                        }
                    }
                }
            }
            _ => {}
        }
        out
    }
}

/// Correlate and render events; shared by the live trace and `analyze`.
pub struct Pipeline {
    pub corr: Correlator,
    /// The reader's totals at the last loss check, and its time summed over
    /// the intervals in which records were lost.
    reader_last: ReaderCpu,
    reader_lossy: ReaderCpu,
    /// Reused for every JSON line.
    json_buf: Vec<u8>,
    syms: KernelSyms,
    renderer: TextRenderer,
    out: Out,
    record: Option<PartialFile>,
    json: bool,
    stacks: bool,
    quiet: bool,
    keep_chains: bool,
    report: Report,
    /// A live trace of -p targets without their children (--no-children):
    /// an empty herd may be the children's (nginx's workers).
    pub no_children: bool,
    chains: Vec<Chain>,
    observers: Vec<Box<dyn Observer>>,
    /// A socket event waits for the next record of its CPU, its wake-up,
    /// whose stack may disprove it (see [`Correlator::joins`]): at most one
    /// per CPU.
    held: Vec<Held>,
}

struct Held {
    ev: Event,
    /// A wake-up carrying it did not join it (its thread was handling, or
    /// its stack disproves the socket): the next wake-up of a herd may.
    refused: bool,
    /// Records of its CPU were lost while it was held.
    gap: bool,
}

/// The first line of a recording.
pub const RECORD_MAGIC: &str = "netdrift-record";
/// The recording format's version, in its first line: a reader refuses any other.
pub const RECORD_VERSION: u64 = 1;

/// The type of a recording's last line.
const RECORD_END: &str = "netdrift-record-end";

/// Longest line a recording is read with. An event is at most a few KiB (a
/// wake-up's stack, an epoll_wait's events); a file without newlines (a
/// binary file, /dev/zero) must not be read whole as one line.
const MAX_RECORD_LINE: usize = 1 << 20;

/// The first line of a recording: [`RECORD_MAGIC`], the format version and
/// the trace's `start` record.
pub fn write_record_start(w: &mut impl Write, start: &Value) -> std::io::Result<()> {
    writeln!(w, "{}", json::record(RECORD_MAGIC, json!({"version": RECORD_VERSION, "start": start})))
}

/// One event of a recording, as [`analyze`] reads it back.
pub fn write_record_event(w: &mut impl Write, ev: &Event) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, ev).map_err(std::io::Error::from)?;
    w.write_all(b"\n")
}

/// The last line of a recording: how the trace ended and what it lost.
/// Without it [`analyze`] calls the recording incomplete.
pub fn write_record_end(
    w: &mut impl Write,
    reason: &str,
    secs: f64,
    losses: &Losses,
    decode_errors: u64,
    ringbuf_mib: u32,
    epoll_empty_summed: u64,
) -> std::io::Result<()> {
    let end = json!({"type": RECORD_END, "reason": reason, "duration_s": secs, "lost": losses, "decode_errors": decode_errors, "ringbuf_mib": ringbuf_mib, "epoll_empty_summed": epoll_empty_summed});
    writeln!(w, "{end}")
}

/// The next line of a recording without its line end, None at the end of
/// the file (a line longer than [`MAX_RECORD_LINE`] is an error), and
/// whether it was cut short: the input ended inside it, with no newline (a
/// torn last line, not a long one).
fn next_record_line_cut(input: &mut impl BufRead) -> Option<(std::io::Result<String>, bool)> {
    let mut buf = Vec::new();
    // One byte past the limit tells a line of exactly the limit from a longer one.
    match input.by_ref().take(MAX_RECORD_LINE as u64 + 1).read_until(b'\n', &mut buf) {
        Ok(0) => return None,
        Ok(_) => {}
        Err(e) => return Some((Err(e), false)),
    }
    let mut cut = false;
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    } else if buf.len() > MAX_RECORD_LINE {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidData, format!("line longer than {} MiB", MAX_RECORD_LINE >> 20));
        return Some((Err(e), false));
    } else {
        cut = true;
    }
    let line =
        String::from_utf8(buf).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "stream did not contain valid UTF-8"));
    Some((line, cut))
}

/// Records decoded and processed at a time.
const READ_SLICE: usize = 512;

/// Wait up to `timeout_ms` for the ring buffer's epoll fd; a signal ends the wait early.
fn wait_readable(epfd: i32, timeout_ms: i32) -> Result<()> {
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: `ev` is a valid buffer for one event and lives across the call.
    let n = unsafe { libc::epoll_wait(epfd, &mut ev, 1, timeout_ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::Bpf(format!("waiting for the ring buffer: {e}")));
        }
    }
    Ok(())
}

impl Pipeline {
    fn new(opts: &TraceOptions, t0: u64, out: Out) -> Self {
        Pipeline {
            json_buf: Vec::with_capacity(1024),
            corr: Correlator::with_idle(opts.idle.as_nanos() as u64),
            reader_last: ReaderCpu::default(),
            reader_lossy: ReaderCpu::default(),
            syms: KernelSyms::new(),
            renderer: TextRenderer { t0, stacks: opts.stacks },
            out,
            record: None,
            json: opts.json,
            stacks: opts.stacks,
            quiet: opts.quiet || opts.report == Report::Herd,
            keep_chains: opts.keep_chains,
            report: opts.report,
            no_children: false,
            chains: Vec::new(),
            observers: Vec::new(),
            held: Vec::new(),
        }
    }

    fn start_line(&mut self, start: &Value) -> Result<()> {
        self.corr.stats.handler_probes = start["handlers"].as_array().map_or(0, |h| h.len() as u64);
        self.corr.tracer_tid = start["reader_tid"].as_u64().and_then(|t| u32::try_from(t).ok()).unwrap_or(0);
        if self.corr.tracer_tid != 0 {
            // Known: 0 until counted (unknown stays None, null in JSON).
            self.corr.stats.preempted_by_tracer = Some(0);
            self.corr.stats.preempted_by_tracer_ns = Some(0);
        }
        if self.json {
            writeln!(self.out, "{}", json::line(&json::record("start", start.clone())))?;
        }
        if let Some(r) = &mut self.record {
            write_record_start(r, start)?;
        }
        for o in self.observers.iter_mut() {
            o.start(start);
        }
        Ok(())
    }

    /// Losses since the last call, as they happen (perf's LOST records): a
    /// `lost` line in the JSON stream, and on stderr unless this is the final
    /// call (the summary follows). The `lost` lines add up to the summary's totals.
    fn report_losses(&mut self, now: &Losses, last: &mut Losses, secs: f64, ringbuf_mib: u32, last_call: bool) -> Result<()> {
        // The reader over this check's interval: were records lost while it waited for a CPU?
        let window = now.reader.since(&self.reader_last);
        self.reader_last = now.reader;
        let d = now.growth_since(last);
        if d.iter().all(|&n| n == 0) {
            return Ok(());
        }
        if d[0] > 0 {
            self.reader_lossy.add(&window);
        }
        let fix = if d[0] > 0 { ringbuf_fix(ringbuf_mib, window, secs) } else { String::new() };
        if self.json {
            let line = json::record(
                "lost",
                json!({"ts": monotonic_ns(), "ringbuf": d[0], "stack": d[1], "map_full": d[2], "user_read": d[3], "skipped": d[4], "fix": fix}),
            );
            writeln!(self.out, "{}", json::line(&line))?;
        }
        if !last_call {
            let what =
                ["records (ring buffer full)", "stacks", "map-full", "unreadable epoll arrays", "program runs skipped by the kernel"];
            let parts: Vec<String> = d.iter().zip(what).filter(|(n, _)| **n > 0).map(|(n, w)| format!("{n} {w}")).collect();
            let fix = if fix.is_empty() { String::new() } else { format!(": {fix}") };
            eprintln!("netdrift: LOST in the last {secs:.1} s: {}{fix}", parts.join(", "));
        }
        last.raise_to(now);
        Ok(())
    }

    /// One event, enriched already.
    fn ingest(&mut self, mut ev: Event) -> Result<()> {
        if let Some(r) = &mut self.record {
            write_record_event(r, &ev)?;
        }
        if self.corr.repeated_enter(&ev) {
            return Ok(());
        }
        match ev.kind {
            // Not its CPU's next record as a held socket event goes: a gap
            // marker (the held event's chain, made later, spans the gap too)...
            Kind::RecordsLost { .. } => {
                for h in self.held.iter_mut().filter(|h| h.ev.cpu == ev.cpu) {
                    h.gap = true;
                }
                return self.process(ev);
            }
            // ...and an epoll_enter, which a waker may write between the
            // wake-ups of a herd for the next thread's call.
            Kind::EpollEnter { .. } => return self.process(ev),
            _ => {}
        }
        if let Some(i) = self.held.iter().position(|h| h.ev.cpu == ev.cpu) {
            let mut held = self.held.swap_remove(i);
            let carried = match (&held.ev.kind, &ev.kind) {
                (Kind::SockReady { seq, .. }, Kind::Wake { sock_seq, .. }) => seq == sock_seq,
                _ => false,
            };
            if carried && !self.corr.joins(&held.ev, &ev) {
                // Not this wake-up's socket: it is written unjoined, and the
                // socket event waits for the rest of a herd.
                if let Kind::Wake { sock_seq, .. } = &mut ev.kind {
                    *sock_seq = 0;
                }
                held.refused = true;
                self.held.push(held);
            } else if carried || !held.refused {
                // Joined, or the next record is not its wake-up: it stands.
                self.release(held)?;
            } else {
                // A guess no wake-up confirmed: left out of the stream (a later
                // wake-up that carries it loses it in `process`, as it is in no chain).
                self.corr.stats.sockets_disproved += 1;
            }
        }
        if matches!(ev.kind, Kind::SockReady { .. }) {
            self.held.push(Held { ev, refused: false, gap: false });
            return Ok(());
        }
        self.process(ev)
    }

    /// A held socket event goes into the stream after all.
    fn release(&mut self, held: Held) -> Result<()> {
        let seq = match held.ev.kind {
            Kind::SockReady { seq, .. } => seq,
            _ => 0,
        };
        self.process(held.ev)?;
        if held.gap {
            self.corr.mark_records_lost(seq);
        }
        Ok(())
    }

    fn process(&mut self, mut ev: Event) -> Result<()> {
        let ann = self.corr.ingest(&ev);
        if let Kind::Wake { sock_seq, .. } = &mut ev.kind {
            // Not joined to that socket event (its cause disproves it, a relay,
            // woken while handling): the outputs must not pair them.
            if *sock_seq != 0 && !self.corr.seq_in_chain(*sock_seq, ann.chain) {
                *sock_seq = 0;
            }
        }
        for o in self.observers.iter_mut() {
            o.event(&ev, &ann);
        }
        if self.json {
            // The event is ours now: shape it for output in place.
            let raw = json::shape(&mut ev, &ann);
            let stack = (self.stacks && matches!(ev.kind, Kind::Wake { .. })).then(|| self.syms.frames(&raw));
            json::write_event(&mut self.json_buf, &ev, &ann, stack.as_deref()).map_err(std::io::Error::from)?;
            self.out.write_all(&self.json_buf)?;
        }
        Ok(())
    }

    // Boxed on purpose: a chain is large, and they are moved in and out of the correlator's maps.
    #[allow(clippy::vec_box)]
    fn flush_chains(&mut self, chains: Vec<Box<Chain>>) -> Result<()> {
        for c in chains {
            for o in self.observers.iter_mut() {
                o.chain(&c);
            }
            if !self.json && !self.quiet {
                writeln!(self.out, "{}", self.renderer.chain(&c, &mut self.syms))?;
            }
            if self.keep_chains {
                self.chains.push(*c);
            } else {
                self.corr.recycle(c);
            }
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<()> {
        let done = self.corr.drain_completed();
        self.flush_chains(done)?;
        self.out.flush()?;
        Ok(())
    }

    /// Close every chain, print the summary, commit the files.
    fn finish(mut self, mut losses: Losses, decode_errors: u64, secs: f64, ringbuf_mib: u32, reason: &str) -> Result<TraceResult> {
        // Live, the reader's time in the intervals that lost records says
        // more about their cause than the whole run's (a replay keeps the recorded figures).
        if self.reader_lossy.wall_ns > 0 {
            losses.reader = self.reader_lossy;
        }
        for held in std::mem::take(&mut self.held) {
            if held.refused {
                self.corr.stats.sockets_disproved += 1;
            } else {
                self.release(held)?;
            }
        }
        let rest = self.corr.finish();
        self.flush_chains(rest)?;
        let stats = self.corr.stats();
        let analysis = self.corr.summary.build();
        let sections = match self.report {
            Report::Full => summary_sections(&analysis, losses.ringbuf > 0),
            Report::Herd => herd_only(&analysis, losses.ringbuf > 0, self.no_children),
        };
        let note = crate::output::text::no_epoll_note(&stats, &analysis.herd).map(|n| format!("  {n}\n")).unwrap_or_default();
        let text = format!("{sections}{}{note}", summary(&stats, &losses, secs, ringbuf_mib, reason));
        if self.json {
            let line = json::record(
                "summary",
                json!({
                    "reason": reason,
                    "duration_s": secs,
                    "stats": stats,
                    "analysis": analysis,
                    "lost": if reason == INCOMPLETE_RECORDING { Value::Null } else { json!(losses) },
                    "decode_errors": if reason == INCOMPLETE_RECORDING { Value::Null } else { json!(decode_errors) },
                    "fix": if losses.ringbuf > 0 { ringbuf_fix(ringbuf_mib, losses.reader, secs) } else { String::new() },
                }),
            );
            writeln!(self.out, "{}", json::line(&line))?;
        }
        if let Some(mut r) = self.record.take() {
            write_record_end(&mut r, reason, secs, &losses, decode_errors, ringbuf_mib, stats.epoll_empty_summed.unwrap_or(0))?;
            r.commit()?;
        }
        let end = TraceEnd { stats: &stats, summary: &analysis, losses: &losses, secs, reason, ringbuf_mib, decode_errors };
        for o in self.observers.iter_mut() {
            o.finish(&end, &mut self.syms)?;
        }
        let Pipeline { mut out, .. } = self;
        let to_file = out.is_file();
        if to_file && !self.json {
            // The file is the report: chains and summary, losses included (herd: the summary only).
            write!(out, "{text}")?;
        }
        out.commit()?;
        // Not print!: a closed pipe must end the run with an error, not a panic.
        if self.json || to_file {
            let _ = std::io::stderr().write_all(text.as_bytes());
        } else {
            let mut o = std::io::stdout().lock();
            o.write_all(text.as_bytes())?;
            o.flush()?;
        }
        Ok(TraceResult {
            stats,
            summary: analysis,
            losses,
            chains: self.chains,
            decode_errors,
            reason: reason.to_string(),
            notes: Vec::new(),
            summary_text: text,
        })
    }
}

fn herd_only(s: &Summary, lost: bool, no_children: bool) -> String {
    let only = Summary { herd: s.herd.clone(), ..Default::default() };
    let t = summary_sections(&only, lost);
    if t.is_empty() {
        let hint = if no_children {
            " (with --no-children: the listen sockets may be waited on in the children, as nginx's workers do)"
        } else {
            ""
        };
        format!("\nthundering herd: no listen-socket wake-ups seen{hint}\n")
    } else {
        t
    }
}

/// Run a trace until the duration ends, a signal arrives, the targets exit
/// or `opts.stop` is set.
pub fn run(mut opts: TraceOptions) -> Result<TraceResult> {
    crate::probes::preflight()?;
    let mut outs: Vec<&Path> = Vec::new();
    if let Sink::File(p) = &opts.sink {
        outs.push(p);
    }
    outs.extend(opts.record.as_deref());
    outs.extend(opts.ready_file.as_deref());
    check_outputs(&outs)?;
    if let Some(p) = &opts.ready_file {
        prepare_ready_file(p)?;
    }
    let out = open_sink(&opts.sink)?;
    // Until the probes are attached, a failure leaves no file behind.
    let fail = |out: Out, record: Option<PartialFile>, e: Error| -> Result<TraceResult> {
        out.discard();
        if let Some(r) = record {
            r.discard();
        }
        Err(e)
    };
    let record = match opts.record.as_deref().map(|p| PartialFile::create(p, OnDrop::Keep)).transpose() {
        Ok(r) => r,
        Err(e) => return fail(out, None, e),
    };
    for o in opts.observers.iter_mut() {
        if let Err(e) = o.open() {
            return fail(out, record, e);
        }
    }
    if opts.stacks || opts.record.is_some() || opts.observers.iter().any(|o| o.needs_stacks()) {
        opts.probe.stack_reuse_ns = 0;
    }
    let mut open_object = MaybeUninit::uninit();
    let probes = match Probes::load(&opts.probe, &mut open_object) {
        Ok(p) => p,
        Err(e) => return fail(out, record, e),
    };
    let t0 = monotonic_ns();
    let started = Instant::now();
    let reader_start = ReaderCpu::now();

    let mut live_tgids: HashSet<u32> = opts.probe.tgids.iter().chain(&probes.forked).copied().collect();
    let mut live_tids: HashSet<u32> = opts.probe.tids.iter().copied().collect();
    let watch_exit = opts.probe.ends_with_targets();
    let mut pids: HashSet<u32> = live_tgids.clone();
    pids.extend(live_tids.iter().filter_map(|&t| procfs::tgid_of(t)));

    let queue: Rc<RefCell<Vec<Event>>> = Rc::new(RefCell::new(Vec::new()));
    let bad = Rc::new(RefCell::new(0u64));
    let discarded = Rc::new(std::cell::Cell::new(0u64));
    let mut builder = RingBufferBuilder::new();
    {
        let q = queue.clone();
        let bad = bad.clone();
        let discarded = discarded.clone();
        let discard = opts.discard;
        let mut gaps = GapFinder::default();
        builder.add(&probes.skel.maps.events, move |data: &[u8]| {
            if discard {
                discarded.set(discarded.get() + 1);
                return 0;
            }
            // Before the record that shows it, even one that does not decode.
            if let Some(gap) = gaps.gap_before(data) {
                q.borrow_mut().push(gap.event());
            }
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
    let mut pipe = Pipeline::new(&opts, t0, out);
    pipe.no_children = !opts.probe.follow_children && !opts.probe.tgids.is_empty();
    pipe.record = record;
    pipe.observers = std::mem::take(&mut opts.observers);
    let start = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "t0_ns": t0,
        "pids": opts.probe.tgids,
        "tids": opts.probe.tids,
        "comms": opts.probe.comms,
        "features": probes.features,
        "notes": probes.notes,
        "ringbuf_bytes": opts.probe.ringbuf_bytes,
        "stack_reuse_ns": opts.probe.stack_reuse_ns * opts.probe.capture_stacks as u64,
        "packets": opts.probe.packets,
        "epoll_ctl": opts.probe.epoll_ctl,
        "handlers": opts.probe.handlers,
        "idle_ms": opts.idle.as_millis() as u64,
        // This thread reads the ring buffer: a target it preempts waits for netdrift.
        // SAFETY: gettid has no preconditions.
        "reader_tid": unsafe { libc::gettid() },
    });
    pipe.start_line(&start)?;
    // A run already told to stop (a signal while loading) never says ready.
    // Dropped after the probes (declared after them): removed once detached.
    let _ready = match opts.ready_file.as_ref().filter(|_| !signalled()) {
        Some(p) => Some(write_ready_file(p)?),
        None => None,
    };
    if let Some(f) = opts.on_ready.take() {
        f();
    }

    let mut enr = Enricher {
        classes: Default::default(),
        by_sig: Default::default(),
        tried_inos: HashSet::new(),
        tried_epoll: HashMap::new(),
        epoll_pids: HashSet::new(),
        tried_stale: HashSet::new(),
        closes: HashMap::new(),
        handlers: opts.probe.handlers.clone(),
        fd_index: FdIndex::default(),
    };
    let mut last_check = Instant::now();
    let mut missed_tids: HashSet<u32> = HashSet::new();
    let (mut last_loss_check, mut reported) = (Instant::now(), Losses::default());
    let ringbuf_mib = opts.probe.ringbuf_bytes >> 20;
    let reason;

    // Swapped with the queue each round: both keep their capacity, so a
    // batch of thousands of records is not regrown (and copied) every time.
    let mut batch: Vec<Event> = Vec::new();
    let trace_all = opts.probe.trace_all();
    let root = crate::procfs::is_root();
    // Targets found unreadable after the start, each said once.
    let mut unreadable: HashSet<u32> = HashSet::new();
    let mut process =
        |pipe: &mut Pipeline, live_tgids: &mut HashSet<u32>, live_tids: &mut HashSet<u32>, pids: &mut HashSet<u32>| -> Result<()> {
            std::mem::swap(&mut *queue.borrow_mut(), &mut batch);
            for mut ev in batch.drain(..) {
                let mut exec_of = None;
                if !root {
                    say_unreadable_target(&ev.kind, &mut unreadable);
                }
                match &ev.kind {
                    Kind::TaskNew { child, reason: 3 } => {
                        enr.forget_pid(child.pid);
                        // Its fds are read again once the correlator has forgotten
                        // them; tracing everything, only if it had any known.
                        if !trace_all || pipe.corr.fds.knows_pid(child.pid) {
                            exec_of = Some((child.pid, ev.ts, ev.cpu));
                        }
                        if !trace_all {
                            // Already a target, unless the record that made it one was lost.
                            pids.insert(child.pid);
                        }
                        // A thread traced by tid (-t) that ran exec goes on under the process's pid.
                        if ev.task.tid != child.tid && live_tids.remove(&ev.task.tid) {
                            live_tids.insert(child.tid);
                        }
                    }
                    Kind::TaskNew { child, .. } => {
                        live_tgids.insert(child.pid);
                        pids.insert(child.pid);
                    }
                    Kind::TaskExit { group_dead } => {
                        if *group_dead {
                            live_tgids.remove(&ev.task.pid);
                            pids.remove(&ev.task.pid);
                            enr.forget_pid(ev.task.pid);
                        }
                        live_tids.remove(&ev.task.tid);
                    }
                    _ => {}
                }
                for f in enr.facts(&mut ev, &pipe.corr, pids, &mut pipe.syms) {
                    pipe.ingest(f)?;
                }
                pipe.ingest(ev)?;
                if let Some((pid, ts, cpu)) = exec_of {
                    // Exec closed its close-on-exec fds: what it holds now.
                    enr.fd_index.forget_pid(pid);
                    let comm = proc_comm(pid);
                    for (fd, ino) in enr.fd_index.read_pid(pid) {
                        pipe.ingest(fd_fact(pid, &comm, fd, ino, ts, cpu))?;
                    }
                }
            }
            pipe.drain()
        };

    loop {
        // Records are submitted without a wake-up until 1/8 of the ring is
        // full (see submit() in netdrift.bpf.c): every 100 ms, read what is
        // there anyway.
        wait_readable(rb.epoll_fd(), 100)?;
        // In slices, each processed and its finished chains freed before the
        // next is decoded: a megabyte of records at once made thousands of
        // allocations live together, past malloc's per-thread caches.
        // Bounded in time: a stream faster than us must not keep the
        // duration, the stop flag and the targets' exit from being checked.
        let reading = Instant::now();
        loop {
            let n = rb.consume_raw_n(READ_SLICE);
            // EINTR: a signal (SIGCONT after a stop, SIGWINCH...) is not an error.
            if n < 0 && n != -libc::EINTR {
                return Err(Error::Bpf(format!("reading the ring buffer: {}", std::io::Error::from_raw_os_error(-n))));
            }
            process(&mut pipe, &mut live_tgids, &mut live_tids, &mut pids)?;
            if n < READ_SLICE as i32 || SIGNALLED.load(Ordering::SeqCst) || reading.elapsed() >= Duration::from_millis(100) {
                break;
            }
        }
        if SIGNALLED.load(Ordering::SeqCst) {
            reason = "interrupted";
            break;
        }
        if opts.stop.as_ref().map(|s| s.load(Ordering::SeqCst)).unwrap_or(false) {
            reason = "done";
            break;
        }
        if let Some(d) = opts.duration {
            if started.elapsed() >= d {
                reason = "duration reached";
                break;
            }
        }
        if watch_exit && last_check.elapsed() >= Duration::from_millis(500) {
            last_check = Instant::now();
            // Exit records can be lost; /proc cannot. A zombie is gone (an
            // unreaped child that exited before the attach left no record).
            live_tgids.retain(|&p| procfs::process_alive(p));
            if !live_tids.is_empty() {
                missed_tids = check_tids(&mut live_tids, &missed_tids, &probes.target_tids(), procfs::alive);
            }
        }
        if watch_exit && live_tgids.is_empty() && live_tids.is_empty() {
            reason = "target exited";
            break;
        }
        // Last in the round: a round that ends the trace leaves its losses to the summary.
        if last_loss_check.elapsed() >= Duration::from_secs(1) {
            let secs = last_loss_check.elapsed().as_secs_f64();
            last_loss_check = Instant::now();
            let mut now = probes.losses();
            now.reader = ReaderCpu::now().since(&reader_start);
            pipe.report_losses(&now, &mut reported, secs, ringbuf_mib, false)?;
            // A killed run's recording then holds all but its last second.
            if let Some(r) = &mut pipe.record {
                r.flush()?;
            }
        }
    }
    let _ = rb.consume();
    process(&mut pipe, &mut live_tgids, &mut live_tids, &mut pids)?;
    let mut losses = probes.losses();
    losses.reader = ReaderCpu::now().since(&reader_start);
    pipe.report_losses(&losses, &mut reported, last_loss_check.elapsed().as_secs_f64(), ringbuf_mib, true)?;
    // The totals the lost lines add up to, should this last reading have failed low.
    losses.raise_to(&reported);
    let decode_errors = *bad.borrow();
    pipe.corr.stats.epoll_empty_summed = Some(probes.empty_returns_summed());
    if opts.discard {
        // Counted as events, so the benchmark's events/s stays comparable.
        pipe.corr.stats.events += discarded.get();
        eprintln!("netdrift: --bench-discard: {} records read and dropped undecoded", discarded.get());
    }
    // Round like the text does, so a replay prints the same figure.
    let secs = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    let mut result = pipe.finish(losses, decode_errors, secs, ringbuf_mib, reason)?;
    result.notes = probes.notes.clone();
    drop(probes);
    Ok(result)
}

/// A process that became a target after the start (-c, a setuid exec), whose
/// files this non-root netdrift cannot read: said once, as the start-up check
/// would have refused it.
fn say_unreadable_target(kind: &Kind, said: &mut HashSet<u32>) {
    if let Kind::TaskNew { child, reason: 2 | 3 } = kind {
        if said.contains(&child.pid) {
            return;
        }
        if let Some(why) = crate::procfs::fd_access_problem(child.pid) {
            said.insert(child.pid);
            eprintln!(
                "netdrift: {why}: pid {} ({}) became a target, but its sockets go unnamed: {}",
                child.pid,
                crate::output::term_safe(&child.comm),
                crate::procfs::FD_ACCESS_FIX
            );
        }
    }
}

/// Which threads traced by tid (-t) are still alive; returns those missing
/// from /proc this time. A thread gone at two checks in a row is dropped: one
/// that runs exec loses its tid a moment before its exec record (which moves
/// it to the pid) is read. The kernel's tid set (`bpf_tids`) is asked too, so
/// a thread it moved is followed even when that record is read late or lost.
fn check_tids(live: &mut HashSet<u32>, missed: &HashSet<u32>, bpf_tids: &[u32], exists: impl Fn(u32) -> bool) -> HashSet<u32> {
    for &t in bpf_tids {
        if !live.contains(&t) && exists(t) {
            live.insert(t);
        }
    }
    let mut missed_now = HashSet::new();
    live.retain(|&t| {
        if exists(t) {
            return true;
        }
        if missed.contains(&t) {
            return false;
        }
        missed_now.insert(t);
        true
    });
    missed_now
}

/// Options of `netdrift analyze`.
#[derive(Debug, Clone, Default)]
pub struct AnalyzeOptions {
    pub json: bool,
    pub stacks: bool,
    pub sink: Sink,
    pub report: Report,
}

/// Replay a recording through the same pipeline as the live trace.
pub fn analyze(path: &Path, aopts: &AnalyzeOptions) -> Result<TraceResult> {
    analyze_with(path, aopts, Vec::new(), false)
}

/// [`analyze`], feeding `observers` too; `quiet` prints no chains.
pub fn analyze_with(path: &Path, aopts: &AnalyzeOptions, observers: Vec<Box<dyn Observer>>, quiet: bool) -> Result<TraceResult> {
    let f = File::open(path).map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))?;
    analyze_reader(path, BufReader::new(f), aopts, observers, quiet)
}

/// [`analyze_with`] on a recording already open; errors name it `path`.
pub fn analyze_reader(
    path: &Path,
    mut input: impl BufRead,
    aopts: &AnalyzeOptions,
    mut observers: Vec<Box<dyn Observer>>,
    quiet: bool,
) -> Result<TraceResult> {
    let bad = |n: usize, why: String| Error::Usage(format!("{}: line {n}: {why} (not a netdrift --record file?)", path.display()));
    let empty = || {
        // A killed run's recording holds nothing if it died within its first second.
        if path.extension().is_some_and(|e| e == "partial") {
            Error::Usage(format!("{}: empty: the run that wrote it was killed before its first records were written", path.display()))
        } else {
            bad(1, "empty file".into())
        }
    };
    let (first, first_cut) = next_record_line_cut(&mut input).ok_or_else(empty)?;
    let first = first.map_err(|e| bad(1, e.to_string()))?;
    let head: Value = serde_json::from_str(&first).map_err(|e| {
        // A start record begun, the file ending inside it: killed within its first second.
        let magic = format!("{{\"type\":{RECORD_MAGIC:?}");
        if first_cut && (first.starts_with("{\"start\":{") || first.starts_with(&magic)) {
            Error::Usage(format!(
                "{}: cut inside its first line, the start record: the run that wrote it was killed before it was written whole; nothing to analyze",
                path.display()
            ))
        } else {
            bad(1, e.to_string())
        }
    })?;
    if head["type"] != RECORD_MAGIC {
        return Err(bad(1, format!("expected type {RECORD_MAGIC:?}")));
    }
    // Another version's records may mean other things: refused, not half-read.
    if head["version"].as_u64() != Some(RECORD_VERSION) {
        return Err(Error::Usage(format!(
            "{}: recording format version {}, this netdrift reads version {RECORD_VERSION}: analyze it with the netdrift that recorded it",
            path.display(),
            head.get("version").map_or("missing".into(), |v| v.to_string())
        )));
    }
    let start = head["start"].clone();
    let t0 = start["t0_ns"].as_u64().unwrap_or(0);
    let mut opts = TraceOptions {
        json: aopts.json,
        stacks: aopts.stacks,
        sink: aopts.sink.clone(),
        report: aopts.report,
        quiet,
        ..Default::default()
    };
    // Chains close as they did live: same idle timeout (recordings without it used the default).
    if let Some(ms) = start["idle_ms"].as_u64() {
        opts.idle = Duration::from_millis(ms);
    }
    for o in observers.iter_mut() {
        o.open()?;
    }
    let mut pipe = Pipeline::new(&opts, t0, open_sink(&opts.sink)?);
    pipe.observers = observers;
    pipe.start_line(&start)?;
    let mut end: Option<Value> = None;
    let (mut n, mut torn, mut last_ts) = (1, false, t0);
    while let Some((line, cut)) = next_record_line_cut(&mut input) {
        n += 1;
        // An event straight into its type (most lines, and twice as fast as
        // through a Value); anything else (the end line, a bad or torn line) through a Value.
        let ev = match line.as_ref().ok().and_then(|l| serde_json::from_str::<Event>(l).ok()) {
            Some(ev) => ev,
            None => {
                // A read error (invalid UTF-8, an I/O error, a line too long) names the file and line too.
                let v = line.map_err(|e| e.to_string()).and_then(|l| serde_json::from_str::<Value>(&l).map_err(|e| e.to_string()));
                let v = match v {
                    Ok(v) => v,
                    // The input ended inside this line: a recording cut short (SIGKILL, a
                    // full disk) is torn there, not corrupt. A whole bad line is refused.
                    Err(_) if cut => {
                        torn = true;
                        break;
                    }
                    Err(e) => return Err(bad(n, e)),
                };
                if v["type"] == RECORD_END {
                    end = Some(v);
                    break;
                }
                serde_json::from_value(v).map_err(|e| bad(n, e.to_string()))?
            }
        };
        last_ts = last_ts.max(ev.ts);
        pipe.ingest(ev)?;
        pipe.drain()?;
    }
    let Some(end) = end else {
        // What it holds is analysed; the totals of its end record (losses) are unknown.
        eprintln!(
            "netdrift: {}: the recording is incomplete (no end record{}: netdrift was killed?): the summary covers the {} records it holds; losses are unknown",
            crate::output::term_safe(&path.display().to_string()),
            if torn { ", its last line cut" } else { "" },
            n - 1 - usize::from(torn)
        );
        let secs = last_ts.saturating_sub(t0) as f64 / 1e9;
        return pipe.finish(Losses::default(), 0, secs, (start["ringbuf_bytes"].as_u64().unwrap_or(0) >> 20) as u32, INCOMPLETE_RECORDING);
    };
    let losses: Losses = serde_json::from_value(end["lost"].clone()).unwrap_or_default();
    // Recordings of versions that summed none have no such key: 0.
    pipe.corr.stats.epoll_empty_summed = Some(end["epoll_empty_summed"].as_u64().unwrap_or(0));
    pipe.finish(
        losses,
        end["decode_errors"].as_u64().unwrap_or(0),
        end["duration_s"].as_f64().unwrap_or(0.0),
        end["ringbuf_mib"].as_u64().unwrap_or(0) as u32,
        end["reason"].as_str().unwrap_or("?"),
    )
}

/// The end reason of a replay whose recording has no end record: its losses are unknown.
pub const INCOMPLETE_RECORDING: &str = "recording incomplete";

#[cfg(test)]
mod tests {
    use super::*;

    /// The index answers for a socket held at its scan while the fd still
    /// holds it, and drops an entry /proc no longer confirms.
    #[test]
    fn fd_index_holders_are_checked_against_proc() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (pid, fd) = (std::process::id(), l.as_raw_fd());
        let ino = std::fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino();
        let mut idx = FdIndex::default();
        assert!(idx.read_pid(pid).contains(&(fd, ino)));
        assert_eq!(idx.holders(ino), Some(vec![(pid, fd)]));
        // Another socket now: the entry is stale and goes.
        idx.insert(pid, fd, ino + 1);
        assert_eq!(idx.holders(ino + 1), None);
        assert!(idx.by_fd.is_empty() || !idx.by_fd.contains_key(&(pid, fd)));
        idx.insert(pid, fd, ino);
        idx.remove(pid, fd);
        assert_eq!(idx.holders(ino), None);
        idx.insert(pid, fd, ino);
        idx.forget_pid(pid);
        assert!(idx.by_fd.keys().all(|k| k.0 != pid) && idx.by_ino.is_empty());
    }

    /// -t 12 runs exec: its tid vanishes, and the kernel moved the target to
    /// the pid (10). Read late or lost, the exec record cannot say so: the
    /// kernel's tid set does, and the trace goes on; a thread that really
    /// exited is dropped at its second miss.
    #[test]
    fn a_tid_target_moved_by_the_kernel_is_followed_without_its_record() {
        // 21 exited (the kernel dropped it from its set at the exit).
        let alive: HashSet<u32> = [10].into();
        let exists = |t: u32| alive.contains(&t);
        let mut live: HashSet<u32> = [12, 21].into();
        let missed = check_tids(&mut live, &HashSet::new(), &[10], exists);
        assert_eq!((live.clone(), missed.clone()), ([10, 12, 21].into(), [12, 21].into()));
        let missed = check_tids(&mut live, &missed, &[10], exists);
        assert_eq!((live, missed), ([10].into(), HashSet::new()));
        // Without the kernel's word, only the two-miss rule: the trace ends.
        let mut live: HashSet<u32> = [12].into();
        let missed = check_tids(&mut live, &HashSet::new(), &[], exists);
        check_tids(&mut live, &missed, &[], exists);
        assert!(live.is_empty());
    }

    #[test]
    fn a_recording_without_line_ends_is_refused_not_read_whole() {
        // /dev/zero as a recording: one endless line.
        let zeros = BufReader::new(std::io::repeat(0));
        let e = analyze_reader(Path::new("/dev/zero"), zeros, &AnalyzeOptions::default(), Vec::new(), true).expect_err("refused");
        let e = e.to_string();
        assert!(e.contains("/dev/zero: line 1: line longer than 1 MiB"), "{e}");
    }

    #[test]
    fn record_lines_end_at_newlines_up_to_the_limit() {
        let mut text = vec![b'a'; MAX_RECORD_LINE];
        text.extend_from_slice(b"\nb\r\n\nc");
        let mut r = &text[..];
        assert_eq!(next_record_line_cut(&mut r).map(|(l, _)| l).unwrap().unwrap().len(), MAX_RECORD_LINE);
        let rest: Vec<String> = std::iter::from_fn(|| next_record_line_cut(&mut r).map(|(l, _)| l)).map(|l| l.unwrap()).collect();
        assert_eq!(rest, ["b", "", "c"]);

        let mut long = &[b'a'; MAX_RECORD_LINE + 1][..];
        assert_eq!(next_record_line_cut(&mut long).map(|(l, _)| l).unwrap().unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn what_the_record_writer_writes_the_reader_reads() {
        let ev = Event { ts: 5, cpu: 1, task: Task { pid: 7, tid: 7, comm: "w".into() }, kind: Kind::TaskExit { group_dead: true } };
        let mut rec = Vec::new();
        write_record_start(&mut rec, &json!({"t0_ns": 1, "idle_ms": 50})).unwrap();
        write_record_event(&mut rec, &ev).unwrap();
        write_record_end(&mut rec, "done", 1.5, &Losses { ringbuf: 3, ..Default::default() }, 2, 8, 0).unwrap();
        let r = analyze_reader(Path::new("t.ndr"), &rec[..], &AnalyzeOptions::default(), Vec::new(), true).unwrap();
        assert_eq!((r.stats.events, r.losses.ringbuf, r.decode_errors, r.reason.as_str()), (1, 3, 2, "done"));

        // Cut before its end record, or inside it: what it holds, marked incomplete.
        let cut = &rec[..rec.len() - 1 - rec[..rec.len() - 1].iter().rev().position(|&b| b == b'\n').unwrap()];
        for cut in [cut, &rec[..rec.len() - 10]] {
            let r = analyze_reader(Path::new("t.ndr"), cut, &AnalyzeOptions::default(), Vec::new(), true).unwrap();
            assert_eq!((r.stats.events, r.reason.as_str()), (1, INCOMPLETE_RECORDING));
        }
        // A whole bad last line (ended by its newline): refused, not taken as torn.
        let whole = [cut, b"{\"ts\":\n"].concat();
        let e =
            analyze_reader(Path::new("t.ndr"), &whole[..], &AnalyzeOptions::default(), Vec::new(), true).expect_err("refused").to_string();
        assert!(e.contains("t.ndr: line 3"), "{e}");
        // A bad line that is not the last: refused.
        let mid = [cut, b"{\"ts\":\n"].concat();
        let mid = [&mid[..], &rec[cut.len()..]].concat();
        let e =
            analyze_reader(Path::new("t.ndr"), &mid[..], &AnalyzeOptions::default(), Vec::new(), true).expect_err("refused").to_string();
        assert!(e.contains("t.ndr: line 3"), "{e}");
    }
}
