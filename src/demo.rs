//! A built-in demo server modelled on Envoy's worker architecture, used by
//! `netdrift demo` and by the tests.
//!
//! Each worker thread owns an epoll instance and runs an event loop on it,
//! like an Envoy worker (`wrk:worker_N`). How the workers share the listening
//! port is selected by [`ListenMode`]; that choice decides how many workers a
//! new connection wakes, which is exactly what netdrift is meant to show.
//!
//! A worker accepts at most once per readiness event, as Envoy does, so every
//! accepted connection is counted exactly once, and a worker whose
//! `epoll_wait` returned for a connection another worker took records an
//! `EAGAIN` in [`WorkerStats::accept_eagain`].
//!
//! `accept_eagain` is only a lower bound on wasted wake-ups: a woken worker
//! whose `epoll_wait` re-polls the listen socket after the winner accepted
//! finds nothing and goes back to sleep inside the kernel without returning.
//! Such wake-ups show up in a scheduler trace but in no counter here.
//!
//! Everything is plain `libc` syscalls on raw file descriptors so that the
//! kernel path (socket -> epoll -> wake-up -> `epoll_wait`) is not hidden
//! behind a runtime.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The reply every complete request gets.
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\nhello drift\n";

/// The request [`run_client`] sends.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n";

/// Listen backlog of every listen socket.
const BACKLOG: libc::c_int = 128;

/// Events fetched per `epoll_wait`.
const MAX_EVENTS: usize = 64;

/// A connection that sends more than this without finishing its headers is
/// dropped, so a misbehaving client cannot grow a buffer without bound.
const MAX_REQUEST: usize = 64 * 1024;

/// Thread names longer than this are truncated by the kernel (comm is 16
/// bytes with the NUL); "demo:worker_999" is exactly 15.
const MAX_WORKERS: usize = 1000;

/// How the workers share the listening port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListenMode {
    /// One listen socket that every worker adds to its own epoll instance
    /// with plain `EPOLLIN`: a new connection wakes every sleeping worker
    /// (thundering herd); the losers either get `EAGAIN` from `accept4` or,
    /// if the winner was faster, sleep again inside `epoll_wait`.
    #[default]
    Shared,
    /// One listen socket registered with `EPOLLIN | EPOLLEXCLUSIVE`: the
    /// kernel wakes (usually) one of the waiting workers.
    Exclusive,
    /// One listen socket per worker, all with `SO_REUSEPORT` on the same
    /// port: the kernel hashes each connection to one socket, hence to one
    /// worker.
    ReusePort,
}

impl ListenMode {
    /// Every mode, in the order of their documentation.
    pub const ALL: [ListenMode; 3] = [ListenMode::Shared, ListenMode::Exclusive, ListenMode::ReusePort];

    /// Parses `"shared"`, `"exclusive"` or `"reuseport"` (ASCII case is
    /// ignored); anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name().eq_ignore_ascii_case(s))
    }

    /// The name [`ListenMode::parse`] accepts for this mode.
    pub fn name(&self) -> &'static str {
        match self {
            ListenMode::Shared => "shared",
            ListenMode::Exclusive => "exclusive",
            ListenMode::ReusePort => "reuseport",
        }
    }
}

impl fmt::Display for ListenMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`DemoServer::start`] builds.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Number of worker threads (1 to 1000; default 2).
    pub workers: usize,
    /// How the workers share the port.
    pub mode: ListenMode,
    /// Port on 127.0.0.1; 0 picks an ephemeral port (see [`DemoServer::addr`]).
    pub port: u16,
    /// CPU time each request burns before the reply (a busy loop), in
    /// microseconds: makes handling long enough to be preempted.
    pub work_us: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig { workers: 2, mode: ListenMode::default(), port: 0, work_us: 0 }
    }
}

/// Counters of one worker, returned by [`DemoServer::shutdown`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Kernel thread id of the worker.
    pub tid: u32,
    /// Thread name (the kernel comm), `demo:worker_N`.
    pub name: String,
    /// Connections this worker accepted.
    pub accepted: u64,
    /// `accept4` calls that found the queue empty: wake-ups lost to another
    /// worker (a lower bound; see the module docs).
    pub accept_eagain: u64,
    /// Requests answered.
    pub requests: u64,
    /// `epoll_wait` returns with at least one event.
    pub wakeups: u64,
    /// `epoll_wait` returns whose events included a listen socket.
    pub listen_wakeups: u64,
}

/// Counters of all workers, index = worker number.
#[derive(Debug, Clone, Default)]
pub struct ServerStats {
    /// One entry per worker.
    pub workers: Vec<WorkerStats>,
}

impl ServerStats {
    /// Connections accepted by all workers.
    pub fn accepted(&self) -> u64 {
        self.workers.iter().map(|w| w.accepted).sum()
    }

    /// `EAGAIN`s from `accept4` over all workers.
    pub fn accept_eagain(&self) -> u64 {
        self.workers.iter().map(|w| w.accept_eagain).sum()
    }
}

/// A running demo server; stop it with [`DemoServer::shutdown`] (dropping it
/// also stops the workers, but discards their counters).
pub struct DemoServer {
    addr: SocketAddr,
    pid: u32,
    tids: Vec<u32>,
    names: Vec<String>,
    handles: Vec<JoinHandle<io::Result<WorkerStats>>>,
    // Dropped (closed) only after the workers are joined, because the
    // workers use the raw fds.
    listeners: Vec<OwnedFd>,
    stop: OwnedFd,
}

impl DemoServer {
    /// Binds the listen socket(s) and starts `cfg.workers` worker threads.
    ///
    /// Returns once every worker is running and has registered its epoll
    /// instance, so [`DemoServer::worker_tids`] is complete and a connection
    /// made right after this returns is seen by a waiting worker.
    pub fn start(cfg: &DemoConfig) -> io::Result<DemoServer> {
        if cfg.workers == 0 || cfg.workers > MAX_WORKERS {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("workers must be 1..={MAX_WORKERS}, not {}", cfg.workers)));
        }
        let reuseport = cfg.mode == ListenMode::ReusePort;
        let first = listen_socket(cfg.port, reuseport)?;
        let port = local_port(first.as_raw_fd())?;
        let mut listeners = vec![first];
        if reuseport {
            for _ in 1..cfg.workers {
                listeners.push(listen_socket(port, true)?);
            }
        }
        // SAFETY: eventfd takes no pointers; the result is checked by cvt.
        let stop = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: stop is a fresh fd that nothing else owns.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };

        let mut server = DemoServer {
            addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
            // SAFETY: getpid has no preconditions and cannot fail.
            pid: unsafe { libc::getpid() } as u32,
            tids: Vec::with_capacity(cfg.workers),
            names: Vec::with_capacity(cfg.workers),
            handles: Vec::with_capacity(cfg.workers),
            listeners,
            stop,
        };
        match server.spawn_workers(cfg) {
            Ok(()) => Ok(server),
            Err(e) => {
                // The setup error is the one worth reporting; workers that did
                // start have nothing useful to say.
                let _ = server.stop_and_join();
                Err(e)
            }
        }
    }

    fn spawn_workers(&mut self, cfg: &DemoConfig) -> io::Result<()> {
        let stop = self.stop.as_raw_fd();
        let mut ready = Vec::with_capacity(cfg.workers);
        for i in 0..cfg.workers {
            let listen: Vec<RawFd> = match cfg.mode {
                ListenMode::ReusePort => vec![self.listeners[i].as_raw_fd()],
                ListenMode::Shared | ListenMode::Exclusive => vec![self.listeners[0].as_raw_fd()],
            };
            let exclusive = cfg.mode == ListenMode::Exclusive;
            let work_us = cfg.work_us;
            let name = format!("demo:worker_{i}");
            let (tx, rx) = mpsc::sync_channel(1);
            let worker_name = name.clone();
            let handle =
                thread::Builder::new().name(name.clone()).spawn(move || worker_main(worker_name, listen, exclusive, stop, work_us, tx))?;
            self.handles.push(handle);
            self.names.push(name);
            ready.push(rx);
        }
        for (i, rx) in ready.into_iter().enumerate() {
            match rx.recv() {
                Ok(Ok(tid)) => self.tids.push(tid),
                Ok(Err(e)) => return Err(io::Error::new(e.kind(), format!("demo:worker_{i}: {e}"))),
                Err(_) => return Err(io::Error::other(format!("demo:worker_{i} died during setup"))),
            }
        }
        Ok(())
    }

    /// The address actually bound: 127.0.0.1 and the (possibly ephemeral)
    /// port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Process id of the server (this process).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kernel thread ids of the workers, index = worker number.
    pub fn worker_tids(&self) -> Vec<u32> {
        self.tids.clone()
    }

    /// Thread names of the workers (`demo:worker_N`), index = worker number.
    pub fn worker_names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// The listen socket fds: one in `Shared`/`Exclusive` mode, one per
    /// worker in `ReusePort` mode.
    pub fn listen_fds(&self) -> Vec<i32> {
        self.listeners.iter().map(|fd| fd.as_raw_fd()).collect()
    }

    /// Stops the workers through the stop eventfd, joins them, closes the
    /// listen sockets and returns the workers' counters.
    pub fn shutdown(mut self) -> io::Result<ServerStats> {
        self.stop_and_join()
        // Drop closes the fds; its own stop_and_join finds no handles left.
    }

    fn stop_and_join(&mut self) -> io::Result<ServerStats> {
        if self.handles.is_empty() {
            return Ok(ServerStats::default());
        }
        let one: u64 = 1;
        // The eventfd is never read, so it stays readable and wakes every
        // worker, however many are asleep.
        // SAFETY: the buffer is a live u64 of exactly the 8 bytes written.
        let n = unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        let signalled = if n == 8 { Ok(()) } else { Err(io::Error::last_os_error()) };
        if let Err(e) = signalled {
            // Joining now would hang forever; leave the threads detached.
            self.handles.clear();
            return Err(e);
        }
        let mut stats = ServerStats::default();
        let mut first_err = None;
        for (i, handle) in mem::take(&mut self.handles).into_iter().enumerate() {
            match handle.join() {
                Ok(Ok(w)) => stats.workers.push(w),
                Ok(Err(e)) => {
                    first_err.get_or_insert(io::Error::new(e.kind(), format!("demo:worker_{i}: {e}")));
                }
                Err(_) => {
                    first_err.get_or_insert(io::Error::other(format!("demo:worker_{i} panicked")));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

impl fmt::Debug for DemoServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemoServer")
            .field("addr", &self.addr)
            .field("pid", &self.pid)
            .field("tids", &self.tids)
            .field("listen_fds", &self.listen_fds())
            .finish()
    }
}

/// Turns a `-1` syscall return into the thread's `errno`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn set_int_opt(fd: RawFd, level: libc::c_int, opt: libc::c_int, val: libc::c_int) -> io::Result<()> {
    // SAFETY: optval points at a live c_int and optlen is its size.
    cvt(unsafe {
        libc::setsockopt(fd, level, opt, (&val as *const libc::c_int).cast(), mem::size_of::<libc::c_int>() as libc::socklen_t)
    })?;
    Ok(())
}

/// A nonblocking TCP listen socket on 127.0.0.1:`port`.
fn listen_socket(port: u16, reuseport: bool) -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers; the result is checked by cvt.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a fresh socket that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd();
    // Lets a restarted demo rebind a fixed port with connections in TIME_WAIT.
    set_int_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if reuseport {
        set_int_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: addr points at a live sockaddr_in and addrlen is its size.
    cvt(unsafe { libc::bind(raw, (&sin as *const libc::sockaddr_in).cast(), mem::size_of::<libc::sockaddr_in>() as libc::socklen_t) })?;
    // SAFETY: listen takes no pointers.
    cvt(unsafe { libc::listen(raw, BACKLOG) })?;
    Ok(fd)
}

/// The port a socket is bound to (resolves port 0 to the ephemeral port).
fn local_port(fd: RawFd) -> io::Result<u16> {
    // SAFETY: sockaddr_in is plain old data; all zeroes is a valid value.
    let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: addr and addrlen point at live values and len is sin's size.
    cvt(unsafe { libc::getsockname(fd, (&mut sin as *mut libc::sockaddr_in).cast(), &mut len) })?;
    Ok(u16::from_be(sin.sin_port))
}

fn epoll_add(epfd: RawFd, fd: RawFd, events: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: fd as u64 };
    // SAFETY: ev is a live epoll_event; the kernel copies it.
    cvt(unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
    Ok(())
}

/// Thread body: set up this worker's epoll, report the tid to `start`, then
/// run the event loop until the stop eventfd fires.
fn worker_main(
    name: String,
    listen: Vec<RawFd>,
    exclusive: bool,
    stop: RawFd,
    work_us: u64,
    ready: mpsc::SyncSender<io::Result<u32>>,
) -> io::Result<WorkerStats> {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() } as u32;
    let setup = || -> io::Result<OwnedFd> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked.
        let epfd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: epfd is a fresh fd that nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
        let mut listen_events = libc::EPOLLIN as u32;
        if exclusive {
            listen_events |= libc::EPOLLEXCLUSIVE as u32;
        }
        for &fd in &listen {
            epoll_add(epfd.as_raw_fd(), fd, listen_events)?;
        }
        // Never exclusive: shutdown must wake every worker.
        epoll_add(epfd.as_raw_fd(), stop, libc::EPOLLIN as u32)?;
        Ok(epfd)
    };
    let epfd = match setup() {
        Ok(epfd) => epfd,
        Err(e) => {
            let _ = ready.send(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(e);
        }
    };
    // The receiver only disappears if start() itself is gone; nothing to do.
    let _ = ready.send(Ok(tid));
    drop(ready);

    let mut worker = Worker {
        epfd,
        listen,
        stop,
        conns: HashMap::new(),
        work: Duration::from_micros(work_us),
        stats: WorkerStats { tid, name, ..WorkerStats::default() },
    };
    let result = worker.run();
    for (fd, _) in worker.conns.drain() {
        // SAFETY: fd was accepted by this worker and is closed only here.
        unsafe { libc::close(fd) };
    }
    result.map(|()| worker.stats)
}

/// One worker's event loop state.
struct Worker {
    epfd: OwnedFd,
    listen: Vec<RawFd>,
    stop: RawFd,
    /// Open connections and the request bytes read so far; owns the fds.
    conns: HashMap<RawFd, Vec<u8>>,
    /// Busy time per request.
    work: Duration,
    stats: WorkerStats,
}

impl Worker {
    fn run(&mut self) -> io::Result<()> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        loop {
            // SAFETY: events is a live array of MAX_EVENTS entries for the
            // kernel to fill.
            let n = unsafe { libc::epoll_wait(self.epfd.as_raw_fd(), events.as_mut_ptr(), MAX_EVENTS as libc::c_int, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                continue;
            }
            self.stats.wakeups += 1;
            let ready = &events[..n as usize];
            if ready.iter().any(|ev| self.listen.contains(&(ev.u64 as RawFd))) {
                self.stats.listen_wakeups += 1;
            }
            for ev in ready {
                // Copy the fields out: epoll_event is packed on x86_64.
                let (fd, flags) = (ev.u64 as RawFd, ev.events);
                if fd == self.stop {
                    return Ok(());
                } else if self.listen.contains(&fd) {
                    self.accept_one(fd);
                } else {
                    self.service(fd, flags);
                }
            }
        }
    }

    /// One `accept4` per readiness event, as an Envoy worker does, so the
    /// losers of a shared-socket race show up as `accept_eagain`.
    fn accept_one(&mut self, lfd: RawFd) {
        // SAFETY: null addr/addrlen are allowed and ask for no peer address.
        let fd = unsafe { libc::accept4(lfd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                self.stats.accept_eagain += 1;
            }
            // Other failures (ECONNABORTED, EMFILE, ...) concern one
            // connection, not the worker; level-triggered epoll retries.
            return;
        }
        self.stats.accepted += 1;
        // Edge-triggered is fine because service() always reads to EAGAIN;
        // data that arrived before this ADD is reported by the ADD itself.
        let events = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        if epoll_add(self.epfd.as_raw_fd(), fd, events).is_err() {
            // SAFETY: fd was just accepted and is owned by nothing else.
            unsafe { libc::close(fd) };
            return;
        }
        self.conns.insert(fd, Vec::new());
    }

    /// Reads what a connection has, answers a complete request, and closes
    /// the connection when it is answered, finished or broken.
    fn service(&mut self, fd: RawFd, flags: u32) {
        let Some(buf) = self.conns.get_mut(&fd) else {
            // A stale event for an fd closed earlier in this batch.
            return;
        };
        let mut eof = false;
        let mut chunk = [0u8; 4096];
        loop {
            // SAFETY: chunk is a live buffer of chunk.len() bytes.
            let n = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len()) };
            if n > 0 {
                buf.extend_from_slice(&chunk[..n as usize]);
                if buf.len() > MAX_REQUEST {
                    eof = true;
                    break;
                }
                continue;
            }
            if n == 0 {
                eof = true;
                break;
            }
            match io::Error::last_os_error().kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => break,
                _ => {
                    eof = true;
                    break;
                }
            }
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let t = std::time::Instant::now();
            while t.elapsed() < self.work {
                std::hint::spin_loop();
            }
            // The reply is far smaller than any socket send buffer, so one
            // nonblocking write suffices; a short write just truncates the
            // demo reply.
            // SAFETY: RESPONSE is a live static buffer of RESPONSE.len() bytes.
            unsafe { libc::write(fd, RESPONSE.as_ptr().cast(), RESPONSE.len()) };
            self.stats.requests += 1;
            self.close(fd);
            return;
        }
        let hangup = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        if eof || flags & hangup != 0 {
            self.close(fd);
        }
    }

    fn close(&mut self, fd: RawFd) {
        if self.conns.remove(&fd).is_some() {
            // Closing the last reference also removes the fd from the epoll.
            // SAFETY: fd was in conns, so this worker owns it and closes it
            // exactly once.
            unsafe { libc::close(fd) };
        }
    }
}

/// One connection made by [`run_client`].
#[derive(Debug, Clone)]
pub struct ClientConn {
    /// Local (ephemeral) port of the client side, which identifies the
    /// connection in a trace.
    pub local_port: u16,
    /// Whether the reply started with `HTTP/1.1 200`.
    pub ok: bool,
}

/// Makes `conns` sequential HTTP/1.1 requests to `addr`, sleeping `gap`
/// between connections so every worker is back in `epoll_wait` when the next
/// one arrives.
///
/// A failed connect is an error; a failure after connecting (write, read,
/// 5 s timeout, bad reply) is recorded as `ok: false` so the caller still
/// learns the port of the connection that went wrong.
pub fn run_client(addr: SocketAddr, conns: usize, gap: Duration) -> io::Result<Vec<ClientConn>> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let mut out = Vec::with_capacity(conns);
    for i in 0..conns {
        let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        let local_port = stream.local_addr()?.port();
        let exchange = |stream: &mut TcpStream| -> io::Result<Vec<u8>> {
            stream.set_read_timeout(Some(TIMEOUT))?;
            stream.set_write_timeout(Some(TIMEOUT))?;
            stream.write_all(REQUEST)?;
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply)?;
            Ok(reply)
        };
        let ok = exchange(&mut stream).is_ok_and(|reply| reply.starts_with(b"HTTP/1.1 200"));
        drop(stream);
        out.push(ClientConn { local_port, ok });
        if i + 1 < conns {
            thread::sleep(gap);
        }
    }
    Ok(out)
}
