use super::*;
use crate::events::{EpEvent, Event, Kind, ReadyHook, SockInfo, Task};

fn t(pid: u32, tid: u32, comm: &str) -> Task {
    Task { pid, tid, comm: comm.into() }
}

fn sock(sk: u64, ino: u64, local: &str, remote: &str, state: u8) -> SockInfo {
    SockInfo { sk, ino, netns: 1, family: 2, protocol: 6, local: local.parse().unwrap(), remote: remote.parse().unwrap(), state }
}

fn ev(ts: u64, cpu: u32, task: Task, kind: Kind) -> Event {
    Event { ts, cpu, task, kind }
}

/// A wake-up of `target` through epoll, from a softirq in the waker's syscall.
pub(crate) fn wake(target: Task, seq: u64, cause: Cause) -> Kind {
    Kind::Wake {
        target,
        sock_seq: seq,
        stack: vec![],
        stack_err: 0,
        target_cpu: 0,
        waker_is_kthread: false,
        target_on_rq: false,
        cause: Some(cause),
        context: Some(WakerContext::SoftirqInSyscall),
        via_epoll: true,
        stack_reused: false,
        stack_sig: 0,
    }
}

fn switch_in(runnable_ts: u64, prev_cpu: u32) -> Kind {
    Kind::SwitchIn { runnable_ts, prev_cpu, after_preempt: false, prev_tid: 0, prev_comm: "swapper/0".into() }
}

fn epoll_exit(epfd: i32, data: &[u64]) -> Kind {
    Kind::EpollExit {
        enter_ts: 0,
        epfd,
        ret: data.len() as i32,
        syscall: Syscall::EpollWait,
        events: data.iter().map(|&d| EpEvent { events: 1, data: d, fd: None }).collect(),
    }
}

/// `sock` ready at `ts[0]` on CPU 1 in `waker`, which wakes `w` at `ts[1]`;
/// `w` gets a CPU at `ts[2]`.
fn ready_wake_run(waker: &Task, w: &Task, sock: SockInfo, seq: u64, ts: [u64; 3]) -> [Event; 3] {
    let ready = Kind::SockReady { sock: sock.into(), seq, hook: ReadyHook::SkDataReady, new_state: None, packet: None };
    [
        ev(ts[0], 1, waker.clone(), ready),
        ev(ts[1], 1, waker.clone(), wake(w.clone(), seq, Cause::SocketReadable)),
        ev(ts[2], 1, w.clone(), switch_in(ts[1], 0)),
    ]
}

/// Feed `evs`, then close what is still open: every chain, in id order.
// The correlator's own type: chains are boxed so written ones can be recycled.
#[allow(clippy::vec_box)]
fn all_chains(c: &mut Correlator, evs: &[Event]) -> Vec<Box<Chain>> {
    for e in evs {
        c.ingest(e);
    }
    let mut chains = c.drain_completed();
    chains.extend(c.finish());
    chains
}

fn accept(lfd: i32, ret: i32, peer: Option<SockInfo>) -> Kind {
    Kind::Accept {
        enter_ts: 0,
        listen_fd: lfd,
        ret,
        syscall: Syscall::Accept4,
        backlog: 0,
        max_backlog: 128,
        listen: None,
        peer: peer.map(Box::new),
    }
}

/// The herd's set-up: two workers of pid 10 (w0 tid 11, w1 tid 12) watch
/// listen socket ino 500 (fd 3) in their own epoll (epfd 4 and 5), and
/// `between` (events before the connection), then a client connection
/// (seq 7) wakes w1 at 1100 and w0 at 1200.
fn herd_start(between: impl IntoIterator<Item = Event>) -> Vec<Event> {
    let w0 = t(10, 11, "demo:worker_0");
    let w1 = t(10, 12, "demo:worker_1");
    let client = t(20, 20, "client");
    let lsock = sock(0xaaa, 500, "127.0.0.1:8080", "0.0.0.0:0", 10);
    let mut evs = vec![
        ev(0, 0, w0.clone(), Kind::FdMap { ino: 500, fd: 3 }),
        ev(0, 0, w0.clone(), Kind::EpollMap { epfd: 4, fd: 3, data: 3 }),
        ev(0, 0, w1.clone(), Kind::EpollMap { epfd: 5, fd: 3, data: 3 }),
    ];
    evs.extend(between);
    evs.extend([
        ev(
            1000,
            1,
            client.clone(),
            Kind::SockReady { sock: lsock.into(), seq: 7, hook: ReadyHook::SkDataReady, new_state: None, packet: None },
        ),
        ev(1100, 1, client.clone(), wake(w1, 7, Cause::SocketReadable)),
        ev(1200, 1, client, wake(w0, 7, Cause::SocketReadable)),
    ]);
    evs
}

/// [`herd_start`], then w0 accepts and w1 gets EAGAIN.
fn herd_events() -> Vec<Event> {
    let w0 = t(10, 11, "demo:worker_0");
    let w1 = t(10, 12, "demo:worker_1");
    let peer = sock(0xbbb, 501, "127.0.0.1:8080", "127.0.0.1:40000", 1);
    let mut evs = herd_start([]);
    evs.extend([
        ev(3000, 0, w0.clone(), switch_in(1200, 0)),
        ev(3500, 1, w1.clone(), switch_in(1100, 0)),
        ev(4000, 0, w0.clone(), epoll_exit(4, &[3])),
        ev(4200, 1, w1.clone(), epoll_exit(5, &[3])),
        ev(4500, 0, w0.clone(), accept(3, 6, Some(peer))),
        ev(4600, 1, w1.clone(), accept(3, -11, None)),
        ev(4700, 0, w0.clone(), Kind::EpollCtl { epfd: 4, op: 1, fd: 6, events: 1, data: 6, err: 0 }),
        ev(5000, 1, w1.clone(), Kind::EpollEnter { epfd: 5, maxevents: 64, syscall: Syscall::EpollWait }),
        ev(5100, 0, w0.clone(), Kind::EpollEnter { epfd: 4, maxevents: 64, syscall: Syscall::EpollWait }),
    ]);
    evs
}

/// A correlator that has seen the herd; then worker 0, a client and the
/// accepted connection (fd 6 of worker 0).
fn after_herd() -> (Correlator, Task, Task, SockInfo) {
    let mut c = Correlator::new();
    for e in herd_events() {
        c.ingest(&e);
    }
    c.drain_completed();
    (c, t(10, 11, "demo:worker_0"), t(20, 20, "client"), sock(0xbbb, 501, "127.0.0.1:8080", "127.0.0.1:40000", 1))
}

#[test]
fn herd_chain_has_both_workers_one_accept() {
    let mut c = Correlator::new();
    let anns: Vec<Annotation> = herd_events().iter().map(|e| c.ingest(e)).collect();
    let chains = c.drain_completed();
    assert_eq!(chains.len(), 1, "{chains:#?}");
    let ch = &chains[0];
    assert_eq!(ch.sock.as_ref().unwrap().fds, vec![(10, 3)]);
    assert_eq!(ch.hops.len(), 2);
    assert_eq!(ch.woken(), 2);
    assert_eq!(ch.wasted(), 1);
    assert!(!ch.incomplete);
    let w0 = ch.hops.iter().find(|h| h.target.tid == 11).unwrap();
    assert!(w0.accepted());
    assert_eq!(w0.on_cpu.as_ref().unwrap().runq_ns, 1800);
    assert!(!w0.on_cpu.as_ref().unwrap().migrated);
    assert_eq!(w0.epoll.as_ref().unwrap().lists_sock, Some(true));
    let w1 = ch.hops.iter().find(|h| h.target.tid == 12).unwrap();
    assert!(w1.accept_failed());
    assert!(w1.on_cpu.as_ref().unwrap().migrated);
    // Every event but the /proc facts and the final epoll enters joins chain 1.
    let joined = anns.iter().filter(|a| a.chain == Some(ch.id)).count();
    assert_eq!(joined, 10);
    assert_eq!(c.stats.herd_chains, 1);
    assert_eq!(c.stats.wasted_wakes, 1);
    assert_eq!(c.stats.accepts, 1);
    assert_eq!(c.stats.accept_eagain, 1);
}

/// After the herd: the connection (fd 6) readable, w0 woken, its epoll_wait
/// returning the data words `returned`, (an accept on the listener, fd 3,
/// finding nothing,) and the connection closed.
fn conn_handled(client: &Task, w0: &Task, conn: &SockInfo, returned: &[u64], eagain: bool) -> Vec<Event> {
    let mut evs = vec![
        ev(
            10_000,
            1,
            client.clone(),
            Kind::SockReady { sock: conn.clone().into(), seq: 8, hook: ReadyHook::SkDataReady, new_state: None, packet: None },
        ),
        ev(10_010, 1, client.clone(), wake(w0.clone(), 8, Cause::SocketReadable)),
        ev(10_500, 1, w0.clone(), switch_in(10_010, 0)),
        ev(10_600, 1, w0.clone(), epoll_exit(4, returned)),
    ];
    if eagain {
        evs.push(ev(10_650, 1, w0.clone(), accept(3, -11, None)));
    }
    evs.push(ev(10_700, 1, w0.clone(), Kind::Close { fd: 6, sock: Some(conn.clone().into()) }));
    evs.push(ev(10_800, 1, w0.clone(), Kind::EpollEnter { epfd: 4, maxevents: 64, syscall: Syscall::EpollWait }));
    evs
}

/// Woken by the listener (a new connection another worker takes), its
/// epoll_wait returns only its own connection's data: it had work, so the
/// wake-up is not one for nothing, as with an EAGAIN beside that data.
#[test]
fn a_listener_wake_up_that_finds_other_work_is_not_wasted() {
    let (mut c, w0, client, conn) = after_herd();
    let lsock = sock(0xaaa, 500, "127.0.0.1:8080", "0.0.0.0:0", 10);
    let evs = [
        ev(
            10_000,
            1,
            client.clone(),
            Kind::SockReady { sock: lsock.into(), seq: 9, hook: ReadyHook::SkDataReady, new_state: None, packet: None },
        ),
        ev(10_010, 1, client.clone(), wake(w0.clone(), 9, Cause::SocketReadable)),
        ev(10_500, 1, w0.clone(), switch_in(10_010, 0)),
        ev(10_600, 1, w0.clone(), epoll_exit(4, &[6])),
        ev(10_700, 1, w0.clone(), Kind::Close { fd: 6, sock: Some(conn.into()) }),
        ev(10_800, 1, w0.clone(), Kind::EpollEnter { epfd: 4, maxevents: 64, syscall: Syscall::EpollWait }),
    ];
    for e in &evs {
        c.ingest(e);
    }
    let chains = c.drain_completed();
    let h = &chains.iter().find(|ch| ch.sock.as_ref().is_some_and(|s| s.sock.is_listen())).expect("the listener's chain").hops[0];
    assert_eq!(h.epoll.as_ref().unwrap().lists_sock, Some(false));
    assert!(!h.wasted(), "{h:#?}");
}

#[test]
fn data_connection_chain_and_close() {
    let (mut c, w0, client, conn) = after_herd();
    let evs = conn_handled(&client, &w0, &conn, &[6], false);
    let anns: Vec<_> = evs.iter().map(|e| c.ingest(e)).collect();
    let chains = c.drain_completed();
    assert_eq!(chains.len(), 1);
    let ch = &chains[0];
    assert_eq!(ch.sock.as_ref().unwrap().fds, vec![(10, 6)], "fd learned from accept");
    assert_eq!(anns[3].ep_fds[..], [Some(6)], "data mapped through epoll_ctl");
    let h = &ch.hops[0];
    assert_eq!(h.epoll.as_ref().unwrap().lists_sock, Some(true));
    assert!(matches!(h.actions[..], [Action::Close { fd: 6, .. }]));
    assert_eq!(ch.wasted(), 0);
    assert!(c.fds.fds(501).is_empty(), "close forgets the fd");
}

/// Woken for its connection's data, its epoll_wait returned the listener
/// too (another worker had taken that connection): the EAGAIN of its accept
/// does not make the wake-up one for nothing, it had a request to handle.
#[test]
fn an_eagain_beside_a_connection_to_handle_is_not_a_wasted_wake_up() {
    let (mut c, w0, client, conn) = after_herd();
    let before = c.stats.wasted_wakes;
    let evs = conn_handled(&client, &w0, &conn, &[6, 3], true);
    for e in &evs {
        c.ingest(e);
    }
    let chains = c.drain_completed();
    assert_eq!(chains.len(), 1);
    let h = &chains[0].hops[0];
    assert!(h.accept_failed() && !h.accepted());
    assert!(!h.wasted(), "{h:#?}");
    assert_eq!(c.stats.wasted_wakes, before);
}

#[test]
fn timer_wake_is_not_joined_to_socket_and_idle_expiry() {
    let mut c = Correlator::new();
    let w = t(10, 11, "w");
    let other = t(30, 30, "x");
    c.ingest(&ev(
        100,
        0,
        other.clone(),
        Kind::SockReady {
            sock: sock(1, 2, "1.1.1.1:1", "2.2.2.2:2", 1).into(),
            seq: 1,
            hook: ReadyHook::SkDataReady,
            new_state: None,
            packet: None,
        },
    ));
    let a = c.ingest(&ev(110, 0, other.clone(), wake(w.clone(), 1, Cause::Timer)));
    assert_ne!(a.chain, Some(1), "a timer wake is not the socket's");
    c.ingest(&ev(10_000_000_000, 0, w.clone(), Kind::EpollEnter { epfd: 4, maxevents: 1, syscall: Syscall::EpollWait }));
    c.expire(1_000_000_000);
    let chains = c.drain_completed();
    // The socket chain had no thread: it is dropped, not reported.
    assert_eq!(chains.len(), 1);
    assert_eq!(chains[0].hops[0].wake.as_ref().unwrap().cause, Cause::Timer);
    assert!(chains[0].incomplete);
}

/// An epoll_wait that times out (returns 0) is followed by the loop's timer
/// callbacks (libevent's EV_TIMEOUT, memcached's clock): they join the
/// timer's chain, which ends when the thread waits again.
#[test]
fn a_timer_callback_after_a_timeout_joins_the_timer_chain() {
    let mut c = Correlator::new();
    let w = t(10, 11, "w");
    let irq = t(0, 0, "swapper/0");
    c.ingest(&ev(100, 0, w.clone(), Kind::EpollEnter { epfd: 4, maxevents: 8, syscall: Syscall::EpollWait }));
    let woke = c.ingest(&ev(1_000, 0, irq, wake(w.clone(), 0, Cause::Timer)));
    c.ingest(&ev(1_100, 0, w.clone(), switch_in(1_000, 0)));
    let ret =
        c.ingest(&ev(1_200, 0, w.clone(), Kind::EpollExit { enter_ts: 100, epfd: 4, ret: 0, syscall: Syscall::EpollWait, events: vec![] }));
    let handler = Kind::Handler { id: 0, fd: None, events: Some(1), name: Some("clock_handler".into()), flags: Some("EV_TIMEOUT".into()) };
    let h = c.ingest(&ev(1_300, 0, w.clone(), handler));
    assert!(woke.chain.is_some());
    assert_eq!((ret.chain, h.chain), (woke.chain, woke.chain), "the return and the callback are the timer's");
    c.ingest(&ev(1_400, 0, w.clone(), Kind::EpollEnter { epfd: 4, maxevents: 8, syscall: Syscall::EpollWait }));
    let chains = c.drain_completed();
    assert_eq!(chains.len(), 1, "{chains:#?}");
    let hop = &chains[0].hops[0];
    assert!(!chains[0].incomplete);
    assert_eq!(hop.epoll.as_ref().map(|e| e.ret), Some(0));
    assert!(matches!(&hop.actions[..], [Action::Handler { name, .. }] if name == "clock_handler"), "{hop:#?}");
}

/// A thread woken in epoll_wait whose chain the idle timeout closed before
/// it returned (a long wait for a CPU) did sleep: the chain its return
/// begins says so, not "epoll_wait did not sleep".
#[test]
fn a_return_after_its_wake_chain_expired_is_not_called_sleepless() {
    let (w, other) = (t(10, 11, "w"), t(30, 30, "x"));
    // Woken at 1 us, its chain expired, on a CPU 20 ms later; `entered`: its epoll_enter was seen.
    let run = |entered: bool| {
        let mut c = Correlator::new();
        if entered {
            c.ingest(&ev(100, 0, w.clone(), Kind::EpollEnter { epfd: 4, maxevents: 8, syscall: Syscall::EpollWait }));
        }
        c.ingest(&ev(1_000, 1, other.clone(), wake(w.clone(), 0, Cause::Timer)));
        c.ingest(&ev(20_000_000, 1, other.clone(), Kind::EpollEnter { epfd: 7, maxevents: 1, syscall: Syscall::EpollWait }));
        c.expire(10_000_000);
        c.ingest(&ev(20_000_100, 0, w.clone(), switch_in(1_000, 0)));
        c.ingest(&ev(20_000_200, 0, w.clone(), epoll_exit(4, &[9])));
        c.ingest(&ev(20_000_300, 0, w.clone(), Kind::EpollEnter { epfd: 4, maxevents: 8, syscall: Syscall::EpollWait }));
        let chains = c.drain_completed();
        (c, chains)
    };
    // The first wait of a trace began before it: no epoll_enter seen.
    let (_, chains) = run(false);
    assert!(chains.len() == 2 && chains[1].woken_in_closed_chain, "{chains:#?}");

    let (mut c, chains) = run(true);
    assert_eq!(chains.len(), 2, "{chains:#?}");
    assert!(chains[0].incomplete && !chains[0].woken_in_closed_chain);
    assert!(chains[1].hops[0].wake.is_none() && chains[1].woken_in_closed_chain, "{:#?}", chains[1]);
    let r = crate::output::text::TextRenderer { t0: 0, stacks: false };
    let text = r.chain(&chains[1], &mut crate::symbolize::KernelSyms::new());
    assert!(text.contains("epoll_wait slept: its wake-up is in an earlier chain") && !text.contains("without sleeping"), "{text}");
    assert!(text.contains("w[11] returned from epoll_wait (woken in an earlier chain)") && !text.contains("was running"), "{text}");
    // The next return that finds events while running is sleepless again.
    let a = c.ingest(&ev(20_000_400, 0, w.clone(), epoll_exit(4, &[9])));
    c.ingest(&ev(20_000_500, 0, w.clone(), Kind::EpollEnter { epfd: 4, maxevents: 8, syscall: Syscall::EpollWait }));
    let chains = c.drain_completed();
    assert_eq!((chains.len(), Some(chains[0].id)), (1, a.chain));
    assert!(!chains[0].woken_in_closed_chain);
}

#[test]
fn epoll_without_sleeping_makes_a_chain() {
    let mut c = Correlator::new();
    let w = t(10, 11, "w");
    let a = c.ingest(&ev(1, 0, w.clone(), epoll_exit(4, &[9])));
    assert!(a.chain.is_some());
    let b = c.ingest(&ev(2, 0, w.clone(), accept(9, 10, None)));
    assert_eq!(a.chain, b.chain);
    c.ingest(&ev(3, 0, w.clone(), Kind::EpollEnter { epfd: 4, maxevents: 1, syscall: Syscall::EpollWait }));
    let chains = c.drain_completed();
    assert_eq!(chains.len(), 1);
    assert!(chains[0].hops[0].wake.is_none());
    assert!(chains[0].hops[0].accepted());
}

#[test]
fn fdtable_dup_and_shared() {
    let mut f = FdTable::default();
    f.insert(7, 1, 3);
    f.insert(7, 1, 9);
    f.insert(7, 2, 3);
    assert_eq!(f.fds(7), &[(1, 3), (1, 9), (2, 3)]);
    f.insert(8, 1, 3);
    assert_eq!(f.fds(7), &[(1, 9), (2, 3)]);
    f.remove(2, 3);
    assert_eq!(f.fds(7), &[(1, 9)]);
}

#[test]
fn a_thread_woken_twice_by_one_event_is_one_hop() {
    let mut c = Correlator::new();
    let mut evs = herd_events();
    // A second wake of worker_1 for the same listen-socket event.
    let dup = evs[4].clone();
    evs.insert(5, Event { ts: 1150, ..dup });
    for e in &evs {
        c.ingest(e);
    }
    let chains = c.drain_completed();
    assert_eq!(chains.len(), 1);
    assert_eq!(chains[0].woken(), 2);
    assert_eq!(chains[0].wasted(), 1);
    assert_eq!(c.stats.repeated_wakes, 1);
}

/// An epoll_wait that returned without blocking has no epoll_enter record,
/// only its exit's enter_ts: the chains are the same as with the enter written.
#[test]
fn unwritten_epoll_enter_is_implied_by_the_exit() {
    let w0 = t(10, 11, "demo:worker_0");
    // herd_events ends with both workers back in epoll_wait; here w0's next
    // call (entered at 5100) returns at once with data on fd 6.
    let mut with_enter = herd_events();
    let events = vec![EpEvent { events: 1, data: 6, fd: None }];
    with_enter.push(ev(5200, 0, w0.clone(), Kind::EpollExit { enter_ts: 5100, epfd: 4, ret: 1, syscall: Syscall::EpollWait, events }));
    let without: Vec<Event> = with_enter.iter().filter(|e| !(e.ts == 5100 && matches!(e.kind, Kind::EpollEnter { .. }))).cloned().collect();
    assert_eq!(without.len() + 1, with_enter.len());
    let run = |evs: &[Event]| {
        let mut c = Correlator::new();
        let anns: Vec<Option<u64>> = evs.iter().map(|e| (e.ts, c.ingest(e).chain)).filter(|(ts, _)| *ts != 5100).map(|(_, a)| a).collect();
        let chains = c.finish();
        (format!("{chains:?}"), anns, c.stats.chains, c.stats.chains_incomplete)
    };
    let (a, b) = (run(&with_enter), run(&without));
    // The herd chain, complete (w0's part ended when it entered epoll_wait
    // again), and one for the call that returned at once, still being handled.
    assert_eq!((a.2, a.3), (2, 1), "{}", a.0);
    assert!(a.0.starts_with("[Chain { id: 1,") && a.0.contains("woken_in_closed_chain: false }, Chain { id: 2,"), "{}", a.0);
    assert_eq!(a, b);
}

/// The epoll data -> fd map, both ways: a re-registration, a word reused for
/// another fd, EPOLL_CTL_DEL and close each leave exactly the live entries.
#[test]
fn epoll_map_tracks_registrations_both_ways() {
    let mut m = EpollMap::default();
    m.insert(1, 5, 0xa, 7);
    m.insert(1, 6, 0xa, 7); // the same fd in a second epoll set
    m.insert(1, 5, 0xb, 8);
    assert_eq!((m.get(1, 5, 0xa), m.get(1, 6, 0xa), m.get(1, 5, 0xb)), (Some(7), Some(7), Some(8)));
    m.insert(1, 5, 0xc, 7); // MOD: fd 7 now has another word in set 5
    assert_eq!((m.get(1, 5, 0xa), m.get(1, 5, 0xc)), (None, Some(7)));
    m.insert(1, 5, 0xb, 9); // word 0xb reused for fd 9: fd 8 lost it
    assert_eq!(m.get(1, 5, 0xb), Some(9));
    m.remove_fd(1, 8);
    assert_eq!(m.get(1, 5, 0xb), Some(9), "closing fd 8 does not touch fd 9's word");
    m.remove_in(1, 6, 7); // DEL from set 6 only
    assert_eq!((m.get(1, 6, 0xa), m.get(1, 5, 0xc)), (None, Some(7)));
    m.remove_fd(1, 7);
    m.remove_fd(1, 9);
    assert_eq!((m.get(1, 5, 0xc), m.get(1, 5, 0xb)), (None, None));
    assert!(m.by_data.is_empty() && m.by_fd.values().all(|v| v.is_empty()), "{m:?}");
    assert_eq!(m.get(2, 5, 0xc), None, "per pid");
}

#[test]
fn epoll_data_resolution_follows_close_and_reuse() {
    let mut c = Correlator::new();
    let w = t(10, 11, "nginx");
    let reg = |fd: i32| Kind::EpollCtl { epfd: 7, op: 1, fd, events: 1, data: 0x7f00_1000, err: 0 };
    let sock_a = sock(0xa, 601, "127.0.0.1:80", "127.0.0.1:40001", 1);
    let sock_b = sock(0xb, 602, "127.0.0.1:80", "127.0.0.1:40002", 1);
    let steps: Vec<(Kind, Option<i32>, Option<u64>)> = vec![
        (reg(6), None, None),
        (Kind::FdMap { ino: 601, fd: 6 }, None, None),
        (Kind::SockReady { sock: sock_a.clone().into(), seq: 1, hook: ReadyHook::EpollItem, new_state: None, packet: None }, None, None),
        (epoll_exit(7, &[0x7f00_1000]), Some(6), Some(601)),
        (epoll_exit(7, &[0x7f00_1000]), Some(6), Some(601)),
        // Closed: the word stands for nothing until it is registered again.
        (Kind::Close { fd: 6, sock: Some(sock_a.into()) }, None, None),
        (epoll_exit(7, &[0x7f00_1000]), None, None),
        // The same word for another fd (nginx reuses its connection slots).
        (reg(9), None, None),
        (epoll_exit(7, &[0x7f00_1000]), Some(9), None),
        (Kind::FdMap { ino: 602, fd: 9 }, None, None),
        (Kind::SockReady { sock: sock_b.into(), seq: 2, hook: ReadyHook::EpollItem, new_state: None, packet: None }, None, None),
        (epoll_exit(7, &[0x7f00_1000]), Some(9), Some(602)),
    ];
    for (i, (kind, fd, ino)) in steps.into_iter().enumerate() {
        let is_exit = matches!(kind, Kind::EpollExit { .. });
        let ann = c.ingest(&ev(1000 + i as u64 * 100, 1, w.clone(), kind));
        if !is_exit {
            continue;
        }
        assert_eq!(ann.ep_fds[..], [fd], "step {i}");
        let chain = c.open.values().chain(c.completed.iter()).find(|ch| Some(ch.id) == ann.chain).expect("the return joins a chain");
        let got = chain
            .hops
            .iter()
            .filter_map(|h| h.epoll.as_ref())
            .flat_map(|e| e.events.iter())
            .last()
            .and_then(|r| r.sock.as_ref())
            .map(|s| s.ino);
        assert_eq!(got, ino, "step {i}: the socket behind the fd");
    }
}

/// The recorded case: w1 wins the herd and holds the listener's lock in
/// accept4; w0's accept4 sleeps on that lock and w1's release_sock wakes it
/// (cause other, no socket). That wake-up is part of w0's handling, not a
/// new chain: its EAGAIN still counts against the herd's chain.
#[test]
fn a_wake_up_while_handling_stays_in_the_hop() {
    let w0 = t(10, 11, "demo:worker_0");
    let w1 = t(10, 12, "demo:worker_1");
    let mut evs = herd_events();
    // Drop the original accepts and enters (from 4500 on); replay the contention.
    evs.retain(|e| e.ts < 4500);
    let lock_wake = Kind::Wake {
        target: w1.clone(),
        sock_seq: 0,
        stack: vec![],
        stack_err: 0,
        target_cpu: 1,
        waker_is_kthread: false,
        target_on_rq: false,
        cause: Some(Cause::Other),
        context: Some(WakerContext::Process),
        via_epoll: false,
        stack_reused: false,
        stack_sig: 0,
    };
    evs.extend([
        // w1 blocks inside accept4 on the socket lock w0 holds.
        ev(4400, 1, w1.clone(), Kind::SwitchOut { involuntary: false, woken: false, state: 2, next_tid: 0, next_comm: "swapper/1".into() }),
        ev(4500, 0, w0.clone(), lock_wake),
        ev(4550, 0, w0.clone(), accept(3, 6, Some(sock(0xbbb, 501, "127.0.0.1:8080", "127.0.0.1:40000", 1)))),
        ev(4600, 1, w1.clone(), switch_in(4500, 1)),
        ev(4700, 1, w1.clone(), accept(3, -11, None)),
        ev(5000, 1, w1.clone(), Kind::EpollEnter { epfd: 5, maxevents: 64, syscall: Syscall::EpollWait }),
        ev(5100, 0, w0.clone(), Kind::EpollEnter { epfd: 4, maxevents: 64, syscall: Syscall::EpollWait }),
    ]);
    let mut c = Correlator::new();
    let chains = all_chains(&mut c, &evs);
    assert_eq!(chains.len(), 1, "no chain of its own for the lock wake-up: {chains:#?}");
    let ch = &chains[0];
    assert!(!ch.incomplete);
    assert_eq!((ch.woken(), ch.wasted()), (2, 1));
    let h1 = ch.hops.iter().find(|h| h.target.tid == 12).unwrap();
    assert!(h1.accept_failed(), "w1's EAGAIN is in the herd's chain: {h1:#?}");
    assert_eq!((h1.blocked, h1.blocked_ns), (1, 200), "blocked once, 4400 -> 4600");
    assert_eq!(c.stats.wakes, 3);
    assert_eq!(c.stats.wasted_wakes, 1);
    // The per-thread rows count the lock wake-up too: they add up to the headline.
    let s = c.summary.build();
    assert_eq!(s.threads.iter().map(|t| t.wakeups).sum::<u64>(), c.stats.wakes);
    let r1 = s.threads.iter().find(|t| t.tid == 12).unwrap();
    assert_eq!(r1.wakeups, 2);
    assert_eq!(r1.by_cause, BTreeMap::from([("socket_readable".to_string(), 1), ("other".to_string(), 1)]));
    assert_eq!(r1.wakers.get("demo:worker_0 (pid 10)"), Some(&1), "{:?}", r1.wakers);
    let text = crate::output::text::TextRenderer { t0: 0, stacks: false }.chain(ch, &mut crate::symbolize::KernelSyms::new());
    assert!(text.contains("blocked 1 time, 200ns off CPU while handling"), "{text}");
    // The hop's totals come after its timed steps (the EAGAIN at 4700).
    let (eagain, blocked) = (text.find("= -EAGAIN").unwrap(), text.find("blocked 1 time").unwrap());
    assert!(eagain < blocked, "{text}");
}

/// A state-change socket the waker's stack disproves (a timer woke the
/// thread) joins nothing, and neither it nor a later lone socket event holds
/// back the chains after it.
#[test]
fn a_socket_event_nothing_joined_holds_nothing_back() {
    let w = t(10, 11, "worker");
    let other = sock(0xccc, 600, "127.0.0.1:8080", "127.0.0.1:40001", 8);
    let state =
        |seq| Kind::SockReady { sock: other.clone().into(), seq, hook: ReadyHook::InetSockSetState, new_state: Some(8), packet: None };
    let mut evs = vec![
        // A lone socket event whose wake-up record was lost.
        ev(500, 1, t(0, 0, "swapper/1"), state(10)),
        ev(1000, 0, t(0, 0, "swapper/0"), state(9)),
        ev(1000, 0, t(0, 0, "swapper/0"), wake(w.clone(), 9, Cause::Timer)),
        ev(2000, 0, w.clone(), switch_in(1000, 0)),
        ev(3000, 0, w.clone(), Kind::EpollEnter { epfd: 4, maxevents: 64, syscall: Syscall::EpollWait }),
    ];
    let mut c = Correlator::new();
    for e in evs.drain(..) {
        c.ingest(&e);
    }
    let chains = c.drain_completed();
    assert_eq!(chains.len(), 1, "{chains:#?}");
    assert!(chains[0].sock.is_none(), "the timer's wake-up has no socket");
    assert_eq!(chains[0].hops[0].wake.as_ref().unwrap().cause, Cause::Timer);
    assert_eq!(c.open_chains(), 2, "the disproved one stays open while another wake-up could carry it");
    c.ingest(&ev(1000 + 2 * SOCK_WINDOW_NS + 1, 0, w.clone(), Kind::EpollEnter { epfd: 4, maxevents: 64, syscall: Syscall::EpollWait }));
    assert_eq!(c.open_chains(), 1, "the lone event stays open until it expires");
    assert!(c.drain_completed().is_empty() && c.finish().is_empty(), "and neither prints");
    assert_eq!(c.stats.chains, 1);
}

/// A handler blocked in send() on a full socket: the wake-up names that
/// socket (io_wait) but belongs to the hop being handled; the socket event
/// starts no chain left open.
#[test]
fn a_blocking_send_while_handling_opens_no_chain() {
    let w0 = t(10, 11, "demo:worker_0");
    let conn = sock(0xddd, 700, "127.0.0.1:8080", "127.0.0.1:40002", 1);
    let mut evs = herd_events();
    evs.retain(|e| e.ts < 4500 || e.task.tid != 11);
    evs.extend([
        ev(4400, 0, w0.clone(), Kind::SwitchOut { involuntary: false, woken: false, state: 1, next_tid: 0, next_comm: "swapper/0".into() }),
        ev(
            4450,
            1,
            t(0, 0, "swapper/1"),
            Kind::SockReady { sock: conn.into(), seq: 30, hook: ReadyHook::IoWait, new_state: None, packet: None },
        ),
        ev(4450, 1, t(0, 0, "swapper/1"), wake(w0.clone(), 30, Cause::SocketWritable)),
        ev(4700, 0, w0.clone(), switch_in(4450, 0)),
        ev(4800, 0, w0.clone(), accept(3, 6, Some(sock(0xbbb, 501, "127.0.0.1:8080", "127.0.0.1:40000", 1)))),
        ev(5100, 0, w0.clone(), Kind::EpollEnter { epfd: 4, maxevents: 64, syscall: Syscall::EpollWait }),
    ]);
    evs.sort_by_key(|e| e.ts);
    let mut c = Correlator::new();
    for e in &evs {
        c.ingest(e);
    }
    // Another thread's wake-up could still join it within the window; none can after.
    c.ingest(&ev(
        4450 + 2 * SOCK_WINDOW_NS + 1,
        0,
        t(20, 20, "client"),
        Kind::EpollCtl { epfd: 9, op: 2, fd: 7, events: 0, data: 0, err: 0 },
    ));
    let chains = c.drain_completed();
    assert_eq!(chains.len(), 1, "{chains:#?}");
    assert_eq!(c.open_chains(), 0, "the send's socket event is not left open");
    let h0 = chains[0].hops.iter().find(|h| h.target.tid == 11).unwrap();
    assert!(h0.accepted());
    assert_eq!((h0.blocked, h0.blocked_ns), (1, 300));
}

/// A new connection wakes first a worker that is still handling the last
/// one (its wake-up stays in that hop), then the other, waiting in
/// epoll_wait: the second is the connection's chain, with its socket.
#[test]
fn a_herd_whose_first_wake_up_finds_a_handling_worker_keeps_its_socket() {
    let w0 = t(10, 11, "demo:worker_0");
    let w1 = t(10, 12, "demo:worker_1");
    let client = t(20, 21, "client");
    let lsock = sock(0xaaa, 500, "127.0.0.1:8080", "0.0.0.0:0", 10);
    let peer = sock(0xccc, 502, "127.0.0.1:8080", "127.0.0.1:40001", 1);
    let mut evs = herd_events();
    // w1 does not go back to epoll_wait: still handling at the next connection.
    evs.retain(|e| !(e.task.tid == 12 && matches!(e.kind, Kind::EpollEnter { .. })));
    let ready = Kind::SockReady { sock: lsock.into(), seq: 9, hook: ReadyHook::SkDataReady, new_state: None, packet: None };
    evs.extend([
        ev(6000, 1, client.clone(), ready),
        ev(6050, 1, client.clone(), wake(w1.clone(), 9, Cause::SocketReadable)),
        ev(6100, 1, client.clone(), wake(w0.clone(), 9, Cause::SocketReadable)),
        ev(6500, 0, w0.clone(), switch_in(6100, 0)),
        ev(6600, 0, w0.clone(), epoll_exit(4, &[3])),
        ev(6700, 0, w0.clone(), accept(3, 7, Some(peer))),
        ev(6800, 0, w0.clone(), Kind::EpollEnter { epfd: 4, maxevents: 64, syscall: Syscall::EpollWait }),
    ]);
    let chains = all_chains(&mut Correlator::new(), &evs);
    let second = chains.iter().find(|c| c.hops.iter().any(|h| h.target.tid == 11 && h.wake.as_ref().is_some_and(|w| w.ts == 6100)));
    let second = second.unwrap_or_else(|| panic!("no chain for w0's wake-up: {chains:#?}"));
    let s = second.sock.as_ref().unwrap_or_else(|| panic!("the connection's socket was lost: {second:#?}"));
    assert_eq!((s.sock.ino, s.ts), (500, 6000));
    assert_eq!(second.hops.len(), 1, "w1's wake-up stays in its own hop: {second:#?}");
    assert!(second.hops[0].accepted());
    assert_eq!(chains.iter().filter(|c| c.sock.as_ref().is_some_and(|s| s.ts == 6000)).count(), 1);
}

/// A wake-up that finds the worker still on its CPU, on its way to sleep,
/// races with the dequeue: the worker switches out anyway and that wake-up
/// puts it back on a run queue (BPF marks the switch-out `woken`). The hop
/// waits for a CPU from the switch-out, and it was not woken for nothing.
#[test]
fn a_wake_up_racing_the_dequeue_waits_for_a_cpu() {
    let run = |woken: bool| {
        let (mut c, w0, client, conn) = after_herd();
        let mut on_cpu = wake(w0.clone(), 8, Cause::SocketReadable);
        if let Kind::Wake { target_on_rq, .. } = &mut on_cpu {
            *target_on_rq = true;
        }
        let out = Kind::SwitchOut { involuntary: false, woken, state: 1, next_tid: 0, next_comm: "swapper/1".into() };
        let evs = [
            ev(
                10_000,
                0,
                client.clone(),
                Kind::SockReady { sock: conn.into(), seq: 8, hook: ReadyHook::EpollItem, new_state: None, packet: None },
            ),
            ev(10_010, 0, client.clone(), on_cpu),
            ev(10_020, 1, w0.clone(), out),
            ev(10_500, 1, w0.clone(), switch_in(10_020, 1)),
            ev(10_600, 1, w0.clone(), epoll_exit(4, &[6])),
            ev(10_800, 1, w0.clone(), Kind::EpollEnter { epfd: 4, maxevents: 64, syscall: Syscall::EpollWait }),
        ];
        let chains = all_chains(&mut c, &evs);
        (chains, c.stats.wasted_wakes)
    };
    let (chains, wasted_before) = run(true);
    let ch = chains.iter().find(|c| c.hops.iter().any(|h| h.wake.as_ref().is_some_and(|w| w.ts == 10_010))).expect("the chain");
    let h = &ch.hops[0];
    let on_cpu = h.on_cpu.as_ref().expect("on CPU");
    assert_eq!((on_cpu.ts, on_cpu.runq_ns, on_cpu.never_left), (10_500, 480, false), "run queue from the switch-out: {h:#?}");
    assert!(h.epoll.is_some(), "its epoll_wait return is in the hop: {h:#?}");
    assert_eq!(ch.wasted(), 0);
    // Without the mark, the same switch-out reads as going back to sleep: woken for nothing.
    let (_, wasted) = run(false);
    assert_eq!(wasted, wasted_before + 1, "the herd's own wasted wake-up, plus this one");
}

/// The lazy epoll_enter of one call can be written twice (by the thread's
/// CPU and by a waker's); the copy is recognised, a later call is not.
#[test]
fn a_second_copy_of_one_epoll_enter_is_recognised() {
    let w0 = t(10, 11, "demo:worker_0");
    let enter = |ts| ev(ts, 0, w0.clone(), Kind::EpollEnter { epfd: 4, maxevents: 64, syscall: Syscall::EpollWait });
    let mut c = Correlator::new();
    assert!(!c.repeated_enter(&enter(100)));
    c.ingest(&enter(100));
    assert!(c.repeated_enter(&enter(100)));
    assert!(!c.repeated_enter(&enter(200)), "another call");
    c.ingest(&ev(150, 0, w0.clone(), epoll_exit(4, &[6])));
    assert!(!c.repeated_enter(&enter(100)), "the call returned: not in epoll_wait any more");
}

fn futex_wake(target: Task) -> Kind {
    Kind::Wake {
        target,
        sock_seq: 0,
        stack: vec![],
        stack_err: 0,
        target_cpu: 0,
        waker_is_kthread: false,
        target_on_rq: false,
        cause: Some(Cause::Futex),
        context: Some(WakerContext::Process),
        via_epoll: false,
        stack_reused: false,
        stack_sig: 0,
    }
}

fn sleep() -> Kind {
    Kind::SwitchOut { involuntary: false, woken: false, state: 1, next_tid: 0, next_comm: "swapper/0".into() }
}

#[test]
fn a_thread_woken_outside_epoll_ends_its_chain_when_it_sleeps_again() {
    // redis's jemalloc_bg_thd: woken by a futex, runs, sleeps for seconds.
    let main = t(10, 10, "redis-server");
    let bg = t(10, 15, "jemalloc_bg_thd");
    let mut c = Correlator::new();
    c.ingest(&ev(1000, 0, main.clone(), futex_wake(bg.clone())));
    c.ingest(&ev(1500, 1, bg.clone(), switch_in(1000, 1)));
    assert!(c.drain_completed().is_empty(), "still running");
    c.ingest(&ev(2000, 1, bg.clone(), sleep()));
    let done = c.drain_completed();
    assert_eq!(done.len(), 1, "its chain ends when it sleeps again");
    assert!(!done[0].incomplete);
    assert_eq!(done[0].wasted(), 0, "it ran: not a wake-up for nothing");
}

#[test]
fn chains_are_released_in_id_order_behind_the_oldest_open_one() {
    let waker = t(10, 10, "main");
    let threads: Vec<Task> = (0..4).map(|i| t(10, 20 + i, "worker")).collect();
    let mut c = Correlator::new();
    for (i, th) in threads.iter().enumerate() {
        let ts = 1000 + 100 * i as u64;
        c.ingest(&ev(ts, 0, waker.clone(), futex_wake(th.clone())));
        c.ingest(&ev(ts + 50, 1, th.clone(), switch_in(ts, 1)));
    }
    // Chains 1..=4 are open; 1 and 3 end, 2 and 4 stay open.
    c.ingest(&ev(2000, 1, threads[0].clone(), sleep()));
    c.ingest(&ev(2100, 1, threads[2].clone(), sleep()));
    let ids = |v: Vec<Box<Chain>>| v.iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!(ids(c.drain_completed()), vec![1], "3 waits for the older 2");
    c.ingest(&ev(2200, 1, threads[1].clone(), sleep()));
    assert_eq!(ids(c.drain_completed()), vec![2, 3]);
    assert!(c.drain_completed().is_empty(), "4 is still open");
    c.ingest(&ev(2300, 1, threads[3].clone(), sleep()));
    assert_eq!(ids(c.drain_completed()), vec![4]);
}

#[test]
fn a_thread_woken_in_a_blocking_accept_handles_that_accept() {
    // A thread-per-connection server: main blocks in accept(3), no epoll.
    let main = t(10, 10, "server");
    let client = t(20, 20, "client");
    let lsock = sock(0xaaa, 500, "127.0.0.1:8080", "0.0.0.0:0", 10);
    let peer = sock(0xbbb, 501, "127.0.0.1:8080", "127.0.0.1:40000", 1);
    let mut w = wake(main.clone(), 7, Cause::SocketReadable);
    if let Kind::Wake { via_epoll, .. } = &mut w {
        *via_epoll = false;
    }
    let mut c = Correlator::new();
    c.ingest(&ev(
        1000,
        1,
        client.clone(),
        Kind::SockReady { sock: lsock.into(), seq: 7, hook: ReadyHook::Accept, new_state: None, packet: None },
    ));
    c.ingest(&ev(1000, 1, client.clone(), w));
    c.ingest(&ev(1500, 0, main.clone(), switch_in(1000, 0)));
    c.ingest(&ev(1600, 0, main.clone(), accept(3, 4, Some(peer))));
    c.ingest(&ev(2000, 0, main.clone(), sleep()));
    let done = c.drain_completed();
    assert_eq!(done.len(), 1, "{done:#?}");
    let hop = &done[0].hops[0];
    assert!(matches!(hop.actions.as_slice(), [Action::Accept { ret: 4, .. }]), "the accept is the chain's: {hop:#?}");
    assert!(!done[0].incomplete);
}

#[test]
fn a_thread_that_sleeps_twice_ran_in_between_even_with_no_switch_in() {
    // The herd's loser has no switch-in record for its run (seen rarely on
    // a live kernel): it was asleep, was woken, and sleeps again, so it ran,
    // found nothing and the wake-up was for nothing.
    let w0 = t(10, 11, "demo:worker_0");
    let w1 = t(10, 12, "demo:worker_1");
    let client = t(20, 20, "client");
    let lsock = sock(0xaaa, 500, "127.0.0.1:8080", "0.0.0.0:0", 10);
    let peer = sock(0xbbb, 501, "127.0.0.1:8080", "127.0.0.1:40000", 1);
    let mut c = Correlator::new();
    for e in [
        ev(0, 0, w0.clone(), Kind::FdMap { ino: 500, fd: 3 }),
        ev(0, 0, w0.clone(), Kind::EpollMap { epfd: 4, fd: 3, data: 3 }),
        ev(0, 0, w1.clone(), Kind::EpollMap { epfd: 5, fd: 3, data: 3 }),
        ev(500, 0, w0.clone(), sleep()),
        ev(600, 1, w1.clone(), sleep()),
        ev(
            1000,
            1,
            client.clone(),
            Kind::SockReady { sock: lsock.into(), seq: 7, hook: ReadyHook::EpollItem, new_state: None, packet: None },
        ),
        ev(1100, 1, client.clone(), wake(w0.clone(), 7, Cause::SocketReadable)),
        ev(1200, 1, client.clone(), wake(w1.clone(), 7, Cause::SocketReadable)),
        ev(3000, 0, w0.clone(), switch_in(1100, 0)),
        ev(4000, 0, w0.clone(), epoll_exit(4, &[3])),
        ev(4500, 0, w0.clone(), accept(3, 6, Some(peer))),
    ] {
        c.ingest(&e);
    }
    assert!(c.drain_completed().is_empty(), "the loser has not slept again yet");
    c.ingest(&ev(5000, 1, w1.clone(), sleep()));
    c.ingest(&ev(5100, 0, w0.clone(), Kind::EpollEnter { epfd: 4, maxevents: 64, syscall: Syscall::EpollWait }));
    c.ingest(&ev(5200, 0, w0.clone(), sleep()));
    let done = c.drain_completed();
    assert_eq!(done.len(), 1, "{done:#?}");
    let ch = &done[0];
    assert!(!ch.incomplete, "both hops ended: {ch:#?}");
    assert_eq!((ch.woken(), ch.wasted()), (2, 1));
    let loser = ch.hops.iter().find(|h| h.target.tid == 12).unwrap();
    assert!(loser.on_cpu.is_none(), "its run-queue wait is unknown, not made up");
    assert_eq!(loser.slept_again, Some(5000));
    assert_eq!(c.stats.missed_switch_ins, 1);
    // A thread's state does not outlive it: a reused tid starts awake.
    c.ingest(&ev(6000, 1, w1.clone(), Kind::TaskExit { group_dead: false }));
    c.ingest(&ev(7000, 1, w1.clone(), sleep()));
    assert_eq!(c.stats.missed_switch_ins, 1);
    // Preempted, then asleep, then preempted, each switch-in lost: each run's is missing.
    let preempted = || Kind::SwitchOut { involuntary: true, woken: false, state: 0, next_tid: 0, next_comm: "swapper/0".into() };
    c.ingest(&ev(
        7500,
        1,
        w1.clone(),
        Kind::SwitchIn { runnable_ts: 7400, prev_cpu: 1, prev_tid: 0, prev_comm: "swapper/1".into(), after_preempt: false },
    ));
    c.ingest(&ev(8000, 1, w1.clone(), preempted()));
    c.ingest(&ev(9000, 1, w1.clone(), sleep()));
    assert_eq!(c.stats.missed_switch_ins, 2);
    c.ingest(&ev(9500, 1, w1.clone(), preempted()));
    assert_eq!(c.stats.missed_switch_ins, 3);
}

/// `epoll_fd` answers from the resolve cache only while it is current: a
/// close or a new registration after a return changes the answer at once.
#[test]
fn epoll_fd_follows_changes_after_a_cached_answer() {
    let w = t(10, 11, "worker");
    let mut c = Correlator::new();
    c.ingest(&ev(1, 0, w.clone(), Kind::EpollMap { epfd: 4, fd: 7, data: 0xabc0 }));
    assert_eq!(c.epoll_fd(10, 4, 0xabc0), Some(7));
    // The return resolves (and caches) both words, one of them unknown.
    c.ingest(&ev(2, 0, w.clone(), epoll_exit(4, &[0xabc0, 0xdef0])));
    assert_eq!(c.epoll_fd(10, 4, 0xabc0), Some(7));
    assert_eq!(c.epoll_fd(10, 4, 0xdef0), None);
    c.ingest(&ev(3, 0, w.clone(), Kind::EpollMap { epfd: 4, fd: 9, data: 0xdef0 }));
    assert_eq!(c.epoll_fd(10, 4, 0xdef0), Some(9));
    c.ingest(&ev(4, 0, w.clone(), epoll_exit(4, &[0xabc0, 0xdef0])));
    c.ingest(&ev(5, 0, w.clone(), Kind::Close { fd: 7, sock: None }));
    assert_eq!(c.epoll_fd(10, 4, 0xabc0), None, "closed: no longer in the set");
    assert_eq!(c.epoll_fd(10, 4, 0xdef0), Some(9));
    // Another pid or epfd with the same word is not confused with it.
    assert_eq!(c.epoll_fd(12, 4, 0xdef0), None);
    assert_eq!(c.epoll_fd(10, 5, 0xdef0), None);
}

/// The summary of the herd: its herd row (winner and loser by name), each
/// worker's wake-up causes, contexts, wakers and run-queue wait, the latency
/// stages and the chain's waterfall, all from one chain.
#[test]
fn summary_of_a_herd_names_winner_loser_causes_and_steps() {
    let lsock = sock(0xaaa, 500, "127.0.0.1:8080", "0.0.0.0:0", 10);
    let mut c = Correlator::new();
    for mut e in herd_events() {
        // The listener as the kernel reports it at the accept.
        if let Kind::Accept { listen, .. } = &mut e.kind {
            *listen = Some(Box::new(lsock.clone()));
        }
        c.ingest(&e);
    }
    assert_eq!(c.drain_completed().len(), 1);
    let s = c.summary.build();

    assert_eq!(s.herd.len(), 1, "{:#?}", s.herd);
    let h = &s.herd[0];
    assert_eq!(h.local, "127.0.0.1:8080");
    assert_eq!((h.connections, h.events, h.wakeups, h.wasted), (1, 1, 2, 1), "{h:#?}");
    assert_eq!(h.winners, BTreeMap::from([("demo:worker_0[11]".to_string(), 1)]));
    assert_eq!(h.losers, BTreeMap::from([("demo:worker_1[12]".to_string(), 1)]));

    assert_eq!(s.threads.len(), 2, "{:#?}", s.threads);
    for (tid, runq) in [(11, 1800), (12, 2400)] {
        let t = s.threads.iter().find(|t| t.tid == tid).unwrap();
        assert_eq!(t.wakeups, 1);
        assert_eq!(t.by_cause, BTreeMap::from([("socket_readable".to_string(), 1)]));
        assert_eq!(t.by_context, BTreeMap::from([("softirq_in_syscall".to_string(), 1)]));
        // Softirq in the client's own syscall: the client process is the waker.
        assert_eq!(t.wakers, BTreeMap::from([("client (pid 20)".to_string(), 1)]));
        assert_eq!((t.runq.count, t.runq.max_ns), (1, runq), "tid {tid}");
    }

    // Socket ready at 1000, wake-ups at 1100 and 1200, on CPU after 1800 / 2400 ns.
    assert_eq!((s.latency.ready_to_wake.count, s.latency.ready_to_wake.sum_ns), (2, 100 + 200));
    assert_eq!((s.latency.wake_to_cpu.count, s.latency.wake_to_cpu.sum_ns), (2, 1800 + 2400));
    assert_eq!(s.latency.total.count, 1);

    assert_eq!(s.slowest.len(), 1);
    let w = &s.slowest[0];
    assert_eq!(w.title, "LISTEN 127.0.0.1:8080");
    // From the socket event (1000) to the last step, worker 1's failed accept at 4600.
    assert_eq!(w.total_ns, 3600);
    let steps: Vec<(&str, u64)> = w.steps.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    assert_eq!(
        steps,
        [
            ("socket ready", 0),
            ("woke demo:worker_1[12]", 100),
            ("woke demo:worker_0[11]", 200),
            ("demo:worker_0[11] on CPU0", 2000),
            ("demo:worker_1[12] on CPU1", 2500),
            ("demo:worker_0[11] epoll_wait returned 1", 3000),
            ("demo:worker_1[12] epoll_wait returned 1", 3200),
            ("demo:worker_0[11] accept4 = 6", 3500),
            ("demo:worker_1[12] accept4 = -11", 3600),
        ]
    );
}

/// A thread woken by a signal out of epoll_wait, which returns -EINTR.
pub(crate) fn interrupted_epoll_chain() -> Chain {
    let mut c = Correlator::new();
    let w = t(10, 11, "w");
    let killer = t(30, 30, "kill");
    c.ingest(&ev(100, 0, w.clone(), Kind::EpollEnter { epfd: 4, maxevents: 8, syscall: Syscall::EpollWait }));
    c.ingest(&ev(200, 1, killer, wake(w.clone(), 0, Cause::Signal)));
    c.ingest(&ev(300, 0, w.clone(), switch_in(200, 0)));
    let exit = Kind::EpollExit { enter_ts: 100, epfd: 4, ret: -4, syscall: Syscall::EpollWait, events: vec![] };
    let mut chains = all_chains(&mut c, &[ev(400, 0, w.clone(), exit)]);
    assert_eq!(chains.len(), 1, "{chains:#?}");
    *chains.pop().unwrap()
}

/// -EINTR is shown as such, not as a count of events (it once printed
/// "+18446744073709551612 more").
#[test]
fn an_interrupted_epoll_wait_shows_its_errno() {
    let r = crate::output::text::TextRenderer { t0: 0, stacks: false };
    let text = r.chain(&interrupted_epoll_chain(), &mut crate::symbolize::KernelSyms::new());
    assert!(text.contains("epoll_wait(4)") && text.contains("returned -EINTR\n"), "{text}");
    assert!(!text.contains("more"), "{text}");
}

/// An epoll_wait that returned events the program could not read (the user
/// array unreadable: `events` empty, `ret` 1) does not say the socket was
/// missing: the wake-up is not counted as for nothing.
#[test]
fn unread_returned_events_do_not_make_a_wake_up_wasted() {
    let (mut c, w0, client, conn) = after_herd();
    let unread = Kind::EpollExit { enter_ts: 0, epfd: 4, ret: 1, syscall: Syscall::EpollWait, events: vec![] };
    let mut evs = ready_wake_run(&client, &w0, conn, 8, [10_000, 10_010, 10_500]).to_vec();
    evs.push(ev(10_600, 1, w0.clone(), unread));
    evs.push(ev(10_800, 1, w0.clone(), Kind::EpollEnter { epfd: 4, maxevents: 64, syscall: Syscall::EpollWait }));
    let chains = all_chains(&mut c, &evs);
    let ch = chains.iter().find(|ch| ch.sock.is_some()).expect("the socket's chain");
    assert_eq!(ch.hops[0].epoll.as_ref().unwrap().lists_sock, None, "{ch:#?}");
    assert_eq!(ch.wasted(), 0);
}

/// Woken for a connection, the worker blocks on a mutex (uninterruptible:
/// the epoll set's, while another thread changes it) before its epoll_wait
/// returns. That is not "asleep again, woken for nothing": the mutex's
/// wake-up stays in its hop, which goes on to return and accept.
#[test]
fn a_lock_on_the_way_to_the_return_is_not_a_wasted_wake_up() {
    let mut c = Correlator::new();
    let w0 = t(10, 11, "w0");
    let client = t(20, 20, "client");
    let other = t(10, 12, "w1");
    let lsock = sock(0xaaa, 500, "127.0.0.1:8080", "0.0.0.0:0", 10);
    let peer = sock(0xbbb, 501, "127.0.0.1:8080", "127.0.0.1:40000", 1);
    let on_a_lock = Kind::SwitchOut { involuntary: false, woken: false, state: 2, next_tid: 0, next_comm: "swapper/0".into() };
    let mut evs = vec![
        ev(0, 0, w0.clone(), Kind::FdMap { ino: 500, fd: 3 }),
        ev(0, 0, w0.clone(), Kind::EpollMap { epfd: 4, fd: 3, data: 3 }),
        ev(100, 0, w0.clone(), Kind::EpollEnter { epfd: 4, maxevents: 8, syscall: Syscall::EpollWait }),
        ev(150, 0, w0.clone(), sleep()),
    ];
    evs.extend(ready_wake_run(&client, &w0, lsock, 7, [1000, 1100, 2000]));
    evs.extend([
        ev(2100, 0, w0.clone(), on_a_lock),
        ev(3000, 1, other.clone(), wake(w0.clone(), 0, Cause::Other)),
        ev(3500, 0, w0.clone(), switch_in(3000, 0)),
        ev(3600, 0, w0.clone(), epoll_exit(4, &[3])),
        ev(3700, 0, w0.clone(), accept(3, 9, Some(peer))),
        ev(3800, 0, w0.clone(), Kind::EpollEnter { epfd: 4, maxevents: 8, syscall: Syscall::EpollWait }),
    ]);
    let chains = all_chains(&mut c, &evs);
    assert_eq!(chains.len(), 1, "the mutex's wake-up starts no chain: {chains:#?}");
    let ch = &chains[0];
    assert_eq!(ch.wasted(), 0, "{ch:#?}");
    let h = &ch.hops[0];
    assert!(h.accepted(), "{h:#?}");
    assert_eq!((h.blocked, h.blocked_ns), (1, 1400), "blocked on the lock 2100 -> 3500");
}

/// A process gone (its last thread's task_exit): its fds and epoll words are
/// forgotten, so a new process with the same pid resolves nothing through
/// them; a thread's own exit leaves them.
#[test]
fn a_gone_process_leaves_no_fds_to_a_reused_pid() {
    let mut c = Correlator::new();
    let w = t(10, 11, "w");
    let leader = t(10, 10, "w");
    c.ingest(&ev(0, 0, w.clone(), Kind::FdMap { ino: 500, fd: 3 }));
    c.ingest(&ev(0, 0, w.clone(), Kind::EpollMap { epfd: 4, fd: 3, data: 3 }));
    c.ingest(&ev(10, 0, leader, Kind::TaskExit { group_dead: false }));
    assert_eq!(c.fds.fds(500), [(10, 3)]);
    assert_eq!(c.epoll_fd(10, 4, 3), Some(3));
    c.ingest(&ev(20, 0, w, Kind::TaskExit { group_dead: true }));
    assert!(c.fds.fds(500).is_empty());
    assert_eq!(c.epoll_fd(10, 4, 3), None);
}

/// A target's forked child (a new nginx worker) holds its parent's sockets
/// and epoll words from the start.
#[test]
fn a_forked_child_inherits_its_parents_fds_and_epoll_words() {
    let mut c = Correlator::new();
    let master = t(10, 10, "master");
    let child = t(20, 20, "worker");
    c.ingest(&ev(0, 0, master.clone(), Kind::FdMap { ino: 500, fd: 3 }));
    c.ingest(&ev(0, 0, master.clone(), Kind::EpollMap { epfd: 4, fd: 3, data: 7 }));
    c.ingest(&ev(10, 0, master, Kind::TaskNew { child, reason: 1 }));
    assert_eq!(c.fds.fds(500), [(10, 3), (20, 3)]);
    assert_eq!(c.epoll_fd(20, 4, 7), Some(3));
    assert_eq!(c.epoll_fd(10, 4, 7), Some(3), "the parent keeps them");
}

/// That child runs another program: what it inherited is forgotten (the
/// live reader then reads what survived the exec from /proc); the parent
/// keeps its own.
#[test]
fn a_child_that_execs_forgets_what_it_inherited() {
    let mut c = Correlator::new();
    let master = t(10, 10, "master");
    let child = t(20, 20, "worker");
    c.ingest(&ev(0, 0, master.clone(), Kind::FdMap { ino: 500, fd: 3 }));
    c.ingest(&ev(0, 0, master.clone(), Kind::EpollMap { epfd: 4, fd: 3, data: 7 }));
    c.ingest(&ev(10, 0, master, Kind::TaskNew { child: child.clone(), reason: 1 }));
    c.ingest(&ev(20, 1, child.clone(), Kind::TaskNew { child: t(20, 20, "helper"), reason: 3 }));
    assert_eq!(c.fds.fds(500), [(10, 3)]);
    assert_eq!((c.epoll_fd(20, 4, 7), c.epoll_fd(10, 4, 7)), (None, Some(3)));
    c.ingest(&ev(20, 1, child, Kind::FdMap { ino: 500, fd: 5 }));
    assert_eq!(c.fds.fds(500), [(10, 3), (20, 5)], "a socket kept across the exec, as read again");
}

/// Records lost on a CPU: the chains open at that point of the stream are
/// marked (a step may be missing); those opened after it are not.
#[test]
fn chains_open_across_lost_records_are_marked() {
    let (waker, w0, w1) = (t(20, 20, "client"), t(10, 11, "w0"), t(10, 12, "w1"));
    let s = |port: u16| sock(port as u64, port as u64, "127.0.0.1:8080", &format!("127.0.0.1:{port}"), 1);
    let gap = ev(2500, 1, t(0, 0, ""), Kind::RecordsLost { records: 7 });
    let mut evs: Vec<Event> = ready_wake_run(&waker, &w0, s(40001), 1, [1000, 1100, 2000]).into();
    evs.push(gap);
    evs.extend(ready_wake_run(&waker, &w1, s(40002), 2, [3000, 3100, 4000]));
    evs.push(ev(5000, 0, w0.clone(), Kind::EpollEnter { epfd: 4, maxevents: 64, syscall: Syscall::EpollWait }));
    evs.push(ev(5100, 0, w1.clone(), Kind::EpollEnter { epfd: 4, maxevents: 64, syscall: Syscall::EpollWait }));
    let mut c = Correlator::new();
    let chains = all_chains(&mut c, &evs);
    assert_eq!(chains.len(), 2, "{chains:#?}");
    assert!(chains[0].records_lost && !chains[1].records_lost, "{chains:#?}");
    assert_eq!((c.stats.records_lost, c.stats.chains_records_lost), (7, 1));
    let text = crate::output::text::TextRenderer { t0: 0, stacks: false }.chain(&chains[0], &mut crate::symbolize::KernelSyms::new());
    assert!(text.contains("[records lost while open]"), "{text}");
}

/// The same accept with another returned fd.
fn with_ret(k: &Kind, fd: i32) -> Kind {
    let mut k = k.clone();
    if let Kind::Accept { ret, .. } = &mut k {
        *ret = fd;
    }
    k
}

/// A herd open across lost records: a missing step can make a worker look
/// woken for nothing (or hide one), so the herd counts leave it out and say so.
#[test]
fn a_herd_open_across_lost_records_is_left_out_of_the_herd_counts() {
    let mut evs = herd_events();
    let listen = sock(0xaaa, 500, "127.0.0.1:8080", "0.0.0.0:0", 10);
    // The accept names its listener, as the live reader's do.
    for e in evs.iter_mut() {
        if let Kind::Accept { listen: l, .. } = &mut e.kind {
            *l = Some(Box::new(listen.clone()));
        }
    }
    evs.insert(6, ev(2500, 1, t(0, 0, ""), Kind::RecordsLost { records: 3 }));
    // An accept loop: worker 0 takes a second connection in the same hop.
    let first = evs.iter().find(|e| matches!(&e.kind, Kind::Accept { ret: 6, .. })).unwrap().clone();
    let second = Event { ts: 4550, kind: with_ret(&first.kind, 9), ..first };
    let at = evs.iter().position(|e| e.ts > 4550).unwrap();
    evs.insert(at, second);
    let mut c = Correlator::new();
    let chains = all_chains(&mut c, &evs);
    assert_eq!(chains.len(), 1, "{chains:#?}");
    assert!(chains[0].records_lost && chains[0].woken() == 2 && chains[0].wasted() == 1, "{chains:#?}");
    assert_eq!((c.stats.herd_chains, c.stats.wasted_wakes, c.stats.chains_records_lost), (0, 0, 1));
    let s = c.summary.build();
    let row = &s.herd[0];
    assert_eq!((row.connections, row.events, row.wakeups, row.wasted, row.events_records_lost), (2, 0, 0, 0, 1), "{row:?}");
    // Its accepts are left out of the ratio's connections too.
    assert_eq!((row.connections_records_lost, row.herd_ratio()), (2, 0.0));
    let text = crate::output::text::summary_sections(&s, true);
    assert!(text.contains("left out: 1 event open when records were lost"), "{text}");
    // A lost accept is in no chain: the row says its counts are lower bounds.
    assert!(text.contains("records were lost (see below): these counts are lower bounds"), "{text}");
    assert!(!crate::output::text::summary_sections(&s, false).contains("lower bounds"));
}

/// A worker that was running (epoll_wait did not sleep) and found the
/// listener emptied by another was not woken for nothing: its EAGAIN says
/// only that nothing was left.
#[test]
fn an_eagain_of_a_running_thread_is_not_woken_for_nothing() {
    let w1 = t(10, 12, "demo:worker_1");
    let evs = vec![
        ev(0, 1, w1.clone(), Kind::FdMap { ino: 500, fd: 3 }),
        ev(0, 1, w1.clone(), Kind::EpollMap { epfd: 5, fd: 3, data: 3 }),
        ev(900, 1, w1.clone(), Kind::EpollEnter { epfd: 5, maxevents: 64, syscall: Syscall::EpollWait }),
        ev(1000, 1, w1.clone(), epoll_exit(5, &[3])),
        ev(1100, 1, w1.clone(), accept(3, -11, None)),
        ev(1200, 1, w1.clone(), Kind::EpollEnter { epfd: 5, maxevents: 64, syscall: Syscall::EpollWait }),
    ];
    let mut c = Correlator::new();
    let chains = all_chains(&mut c, &evs);
    assert_eq!(chains.len(), 1, "{chains:#?}");
    assert!(chains[0].hops[0].wake.is_none(), "{:#?}", chains[0]);
    let text = crate::output::text::TextRenderer { t0: 0, stacks: false }.chain(&chains[0], &mut crate::symbolize::KernelSyms::new());
    assert!(text.contains("= -EAGAIN  (nothing left to accept)") && !text.contains("woken for nothing"), "{text}");
    assert_eq!(c.stats.wasted_wakes, 0);
}

/// A target preempted by netdrift's own reader is counted, with the time
/// until it ran again; one preempted by anything else is not.
#[test]
fn preemptions_by_the_tracer_are_counted_apart() {
    let w = t(10, 11, "w");
    let mut c = Correlator::new();
    c.tracer_tid = 99;
    let out = |next_tid| Kind::SwitchOut { involuntary: true, woken: false, state: 0, next_tid, next_comm: "x".into() };
    let back = |since| Kind::SwitchIn { runnable_ts: since, prev_cpu: 0, after_preempt: true, prev_tid: 0, prev_comm: "x".into() };
    let sleep = Kind::SwitchOut { involuntary: false, woken: false, state: 1, next_tid: 0, next_comm: "x".into() };
    let evs = [
        ev(1000, 0, w.clone(), out(99)),
        ev(3000, 0, w.clone(), back(1000)),
        ev(4000, 0, w.clone(), out(7)),
        ev(9000, 0, w.clone(), back(4000)),
        // Preempted by the reader, its switch-in lost: the next switch-out
        // ends that wait, which is not charged up to the switch-in 3 s later.
        ev(10_000, 0, w.clone(), out(99)),
        ev(11_000, 0, w.clone(), sleep),
        ev(3_000_000_000, 0, w.clone(), back(2_999_999_000)),
    ];
    for e in &evs {
        c.ingest(e);
    }
    let s = c.stats();
    assert_eq!((s.involuntary_switches, s.preempted_by_tracer, s.preempted_by_tracer_ns), (3, Some(2), Some(2000)));
    let text = crate::output::text::summary(&s, &Default::default(), 1.0, 8, "done");
    assert!(text.contains("netdrift's own reader preempted the targets 2 times, 2.0us before they ran again"), "{text}");
    // A recording without the reader's tid: unknown, not 0.
    let s = Correlator::new().stats();
    assert_eq!((s.preempted_by_tracer, s.preempted_by_tracer_ns), (None, None));
}

/// The herd of `herd_events` through nested epoll instances: each worker's
/// outer instance (14, 15) returns its inner one (4, 5), whose epoll_wait
/// (timeout 0, its enter implied) returns the listener. The inner returns
/// continue the hops: one chain, w0 accepts, w1's EAGAIN is wasted; the
/// inner fd returned is no work of its own.
#[test]
fn a_nested_epoll_return_continues_the_hop() {
    let w0 = t(10, 11, "demo:worker_0");
    let w1 = t(10, 12, "demo:worker_1");
    let mut evs: Vec<Event> = herd_events()
        .into_iter()
        .flat_map(|e| match (&e.kind, e.task.tid) {
            // Before each inner return, the outer one.
            (Kind::EpollExit { epfd, .. }, tid) => {
                let inner = *epfd;
                let mut inner_ret = e.clone();
                if let Kind::EpollExit { enter_ts, .. } = &mut inner_ret.kind {
                    *enter_ts = e.ts - 10;
                }
                let outer = ev(e.ts - 50, e.cpu, if tid == 11 { w0.clone() } else { w1.clone() }, epoll_exit(inner + 10, &[inner as u64]));
                vec![outer, inner_ret]
            }
            _ => vec![e],
        })
        .collect();
    evs.insert(0, ev(0, 0, w0.clone(), Kind::EpollMap { epfd: 14, fd: 4, data: 4 }));
    evs.insert(0, ev(0, 0, w1.clone(), Kind::EpollMap { epfd: 15, fd: 5, data: 5 }));
    let mut c = Correlator::new();
    let chains = all_chains(&mut c, &evs);
    assert_eq!(chains.len(), 1, "{chains:#?}");
    let ch = &chains[0];
    assert_eq!((ch.woken(), ch.wasted()), (2, 1), "{ch:#?}");
    let hop = |tid| ch.hops.iter().find(|h| h.target.tid == tid).unwrap();
    let outer = hop(11).epoll.as_ref().unwrap();
    assert_eq!((outer.epfd, outer.nested.as_ref().map(|n| n.epfd), outer.lists_sock), (14, Some(4), Some(true)));
    assert!(hop(11).accepted());
    assert!(hop(12).accept_failed() && hop(12).wasted(), "{:#?}", hop(12));
    assert_eq!((c.stats.herd_chains, c.stats.wasted_wakes), (1, 1));
    let text = crate::output::text::TextRenderer { t0: 0, stacks: false }.chain(ch, &mut crate::symbolize::KernelSyms::new());
    assert!(text.contains("epoll_wait(4)") && text.contains("(fd 4 is in epoll 14's set)"), "{text}");
}

/// A socket the targets held before the trace and closed before /proc was
/// read for it: its chain learns the fd from the close.
#[test]
fn a_socket_closed_before_proc_was_read_is_named_by_its_close() {
    let w0 = t(10, 11, "worker");
    let client = t(20, 20, "client");
    let conn = sock(0xccc, 777, "127.0.0.1:8080", "127.0.0.1:40001", 1);
    let mut c = Correlator::new();
    let chains = all_chains(&mut c, &conn_handled(&client, &w0, &conn, &[6], false));
    assert_eq!(chains.len(), 1, "{chains:#?}");
    assert_eq!(chains[0].sock.as_ref().unwrap().fds, vec![(10, 6)], "from the close");
}

/// A herd loser that ran, found nothing and went back on its epoll wait
/// queue, where a pipe it also watches woke it before it switched out: its
/// listen-socket wake-up was for nothing all the same (haproxy's threads
/// pass connections to each other through a pipe).
#[test]
fn a_herd_loser_woken_again_before_it_slept_was_woken_for_nothing() {
    let w0 = t(10, 11, "demo:worker_0");
    let w1 = t(10, 12, "demo:worker_1");
    let peer = sock(0xbbb, 501, "127.0.0.1:8080", "127.0.0.1:40000", 1);
    let enter = |epfd: i32| Kind::EpollEnter { epfd, maxevents: 64, syscall: Syscall::EpollWait };
    let mut evs = herd_start([ev(900, 1, w1.clone(), enter(5)), ev(950, 0, w0.clone(), enter(4))]);
    evs.extend([
        ev(3000, 0, w0.clone(), switch_in(1200, 0)),
        ev(3500, 1, w1.clone(), switch_in(1100, 1)),
        ev(4000, 0, w0.clone(), epoll_exit(4, &[3])),
        ev(4500, 0, w0.clone(), accept(3, 6, Some(peer))),
        // w0 hands the connection to w1 through a pipe w1's epoll watches.
        ev(4600, 0, w0.clone(), wake(w1.clone(), 0, Cause::Pipe)),
        ev(4800, 1, w1.clone(), epoll_exit(5, &[9])),
    ]);
    let mut c = Correlator::new();
    let chains = all_chains(&mut c, &evs);
    let herd = chains.iter().find(|ch| ch.hops.len() == 2).expect("the listen socket's chain");
    assert_eq!((herd.woken(), herd.wasted()), (2, 1), "{herd:#?}");
    let loser = herd.hops.iter().find(|h| h.target.tid == 12).unwrap();
    assert_eq!(loser.slept_again, Some(4600));
    assert_eq!(c.stats.wasted_wakes, 1);
}

/// A TCP socket closed without ever having had a peer is no connection
/// close; one reset by its peer (state CLOSE, the peer still known) is.
#[test]
fn a_socket_that_never_connected_is_not_a_connection_close() {
    let w = t(10, 11, "w");
    let mut c = Correlator::new();
    let close = |fd: i32, s: SockInfo| Kind::Close { fd, sock: Some(Box::new(s)) };
    c.ingest(&ev(1, 0, w.clone(), close(3, sock(0x1, 1, "0.0.0.0:0", "0.0.0.0:0", 7))));
    c.ingest(&ev(2, 0, w.clone(), close(4, sock(0x2, 2, "127.0.0.1:80", "127.0.0.1:40000", 7))));
    c.ingest(&ev(3, 0, w.clone(), close(5, sock(0x3, 3, "127.0.0.1:80", "127.0.0.1:40001", 1))));
    assert_eq!((c.stats.socket_closes, c.stats.connection_closes), (3, 2));
}

/// Two workers wait in one shared epoll instance (level-triggered listener).
/// The one the connection wakes, returning from epoll_wait with the listener
/// still ready, wakes the next waiter itself (ep_done_scan): that is the same
/// readiness, so the same chain, not a new one at the listener.
#[test]
fn a_wake_up_relayed_by_a_returning_epoll_wait_joins_its_chain() {
    let w0 = t(10, 11, "srv");
    let w1 = t(10, 12, "srv");
    let client = t(20, 20, "client");
    let lsock = sock(0xaaa, 500, "127.0.0.1:8080", "0.0.0.0:0", 10);
    let peer = sock(0xbbb, 501, "127.0.0.1:8080", "127.0.0.1:40000", 1);
    let ready = |seq, hook| Kind::SockReady { sock: lsock.clone().into(), seq, hook, new_state: None, packet: None };
    let enter = || Kind::EpollEnter { epfd: 4, maxevents: 1, syscall: Syscall::EpollWait };
    let mut relay = wake(w1.clone(), 9, Cause::Other);
    if let Kind::Wake { via_epoll, context, .. } = &mut relay {
        *via_epoll = false;
        *context = Some(WakerContext::Process);
    }
    // With the threads' epoll_enter seen, and without (both waiting since before the trace).
    for seen in [true, false] {
        let mut evs = vec![
            ev(0, 0, w0.clone(), Kind::FdMap { ino: 500, fd: 3 }),
            ev(0, 0, w0.clone(), Kind::EpollMap { epfd: 4, fd: 3, data: 3 }),
            ev(10, 0, w0.clone(), enter()),
            ev(20, 1, w1.clone(), enter()),
        ];
        if !seen {
            evs.truncate(2);
        }
        evs.extend([
            ev(1000, 1, client.clone(), ready(7, ReadyHook::EpollItem)),
            ev(1100, 1, client.clone(), wake(w0.clone(), 7, Cause::SocketReadable)),
            ev(1500, 0, w0.clone(), switch_in(1100, 0)),
            // The kernel reads the listener from w1's ready list: a new event at first sight.
            ev(1600, 0, w0.clone(), ready(9, ReadyHook::EpollItem)),
            ev(1600, 0, w0.clone(), relay.clone()),
            ev(1700, 0, w0.clone(), epoll_exit(4, &[3])),
            ev(1800, 0, w0.clone(), accept(3, 6, Some(peer.clone()))),
            ev(2000, 1, w1.clone(), switch_in(1600, 1)),
            ev(2100, 1, w1.clone(), epoll_exit(4, &[3])),
            ev(2200, 1, w1.clone(), accept(3, -11, None)),
            ev(2300, 1, w1.clone(), enter()),
            ev(2400, 0, w0.clone(), enter()),
        ]);
        let mut c = Correlator::new();
        let chains: Vec<Box<Chain>> = all_chains(&mut c, &evs).into_iter().filter(|ch| !ch.hops.is_empty()).collect();
        assert_eq!(chains.len(), 1, "{chains:#?}");
        let ch = &chains[0];
        assert_eq!((ch.woken(), ch.wasted()), (2, 1), "{ch:#?}");
        assert_eq!(c.stats.herd_chains, 1);
        let w1_hop = ch.hops.iter().find(|h| h.target.tid == 12).unwrap();
        assert!(w1_hop.accept_failed(), "{w1_hop:#?}");
    }
}

/// Four threads share one epoll instance. The one the connection wakes
/// passes the listener's readiness on while it returns (ep_done_scan), the
/// thread it woke passes it on again, and its epoll_ctl adding the accepted
/// connection (ready: the request came with it) wakes a fourth: one chain.
#[test]
fn epoll_relays_again_and_from_epoll_ctl_join_one_chain() {
    let w: Vec<Task> = (0..4).map(|i| t(10, 11 + i, "srv")).collect();
    let client = t(20, 20, "client");
    let lsock = sock(0xaaa, 500, "127.0.0.1:8080", "0.0.0.0:0", 10);
    let peer = sock(0xbbb, 501, "127.0.0.1:8080", "127.0.0.1:40000", 1);
    let ready = |seq| Kind::SockReady { sock: lsock.clone().into(), seq, hook: ReadyHook::EpollItem, new_state: None, packet: None };
    let relay = |target: &Task, seq| {
        let mut k = wake(target.clone(), seq, Cause::EpollRelay);
        if let Kind::Wake { via_epoll, context, .. } = &mut k {
            *via_epoll = false;
            *context = Some(WakerContext::Process);
        }
        k
    };
    let evs = vec![
        ev(0, 0, w[0].clone(), Kind::FdMap { ino: 500, fd: 3 }),
        ev(0, 0, w[0].clone(), Kind::EpollMap { epfd: 4, fd: 3, data: 3 }),
        ev(1000, 1, client.clone(), ready(7)),
        ev(1100, 1, client.clone(), wake(w[0].clone(), 7, Cause::SocketReadable)),
        ev(1500, 0, w[0].clone(), switch_in(1100, 0)),
        ev(1600, 0, w[0].clone(), ready(9)),
        ev(1600, 0, w[0].clone(), relay(&w[1], 9)),
        ev(1700, 0, w[0].clone(), epoll_exit(4, &[3])),
        ev(1800, 0, w[0].clone(), accept(3, 6, Some(peer.clone()))),
        ev(1850, 0, w[0].clone(), Kind::EpollMap { epfd: 4, fd: 6, data: 6 }),
        // epoll_ctl(ADD, 6), after its return.
        ev(1900, 0, w[0].clone(), ready(11)),
        ev(1900, 0, w[0].clone(), relay(&w[3], 11)),
        ev(2000, 1, w[1].clone(), switch_in(1600, 1)),
        // w1, woken by a relay, relays again before it returns.
        ev(2050, 1, w[1].clone(), ready(13)),
        ev(2050, 1, w[1].clone(), relay(&w[2], 13)),
        ev(2100, 1, w[1].clone(), epoll_exit(4, &[3])),
        ev(2200, 1, w[1].clone(), accept(3, -11, None)),
        ev(2300, 0, w[2].clone(), switch_in(2050, 0)),
        ev(2400, 0, w[2].clone(), sleep()),
        ev(2500, 1, w[3].clone(), switch_in(1900, 1)),
        ev(2600, 1, w[3].clone(), epoll_exit(4, &[6])),
    ];
    let mut c = Correlator::new();
    let chains: Vec<Box<Chain>> = all_chains(&mut c, &evs).into_iter().filter(|ch| !ch.hops.is_empty()).collect();
    assert_eq!(chains.len(), 1, "{chains:#?}");
    let ch = &chains[0];
    let tids: Vec<u32> = ch.hops.iter().map(|h| h.target.tid).collect();
    // In the order woken: w3 (by the epoll_ctl) before w2.
    assert_eq!(tids, [11, 12, 14, 13]);
    // w1 found nothing to accept, w2 nothing at all; w3 got the connection.
    assert_eq!((ch.woken(), ch.wasted()), (4, 2), "{ch:#?}");
    assert!(ch.hops[3].slept_again.is_some(), "{:#?}", ch.hops[3]);
    assert_eq!(c.stats.herd_chains, 1);
}

/// A listener thread accepts and hands the connection to an idle worker
/// through a futex (apache's event MPM, a thread pool): the worker's part
/// is the connection's chain, and no herd. A timer from an interrupt while
/// the listener runs, or a futex wake-up by a thread handling nothing, is not.
#[test]
fn a_futex_hand_off_by_the_handling_thread_joins_its_chain() {
    let (l, w, w2, client) = (t(10, 11, "listener"), t(10, 12, "worker"), t(10, 13, "worker"), t(20, 20, "client"));
    let lsock = sock(0xaaa, 500, "127.0.0.1:8080", "0.0.0.0:0", 10);
    let peer = sock(0xbbb, 501, "127.0.0.1:8080", "127.0.0.1:40000", 1);
    let from_code = |target: &Task, cause, context| {
        let mut k = wake(target.clone(), 0, cause);
        if let Kind::Wake { via_epoll, context: c, .. } = &mut k {
            (*via_epoll, *c) = (false, Some(context));
        }
        k
    };
    let evs = vec![
        ev(0, 0, l.clone(), Kind::FdMap { ino: 500, fd: 3 }),
        ev(0, 0, l.clone(), Kind::EpollMap { epfd: 4, fd: 3, data: 3 }),
        ev(
            1000,
            1,
            client.clone(),
            Kind::SockReady { sock: lsock.into(), seq: 7, hook: ReadyHook::EpollItem, new_state: None, packet: None },
        ),
        ev(1100, 1, client.clone(), wake(l.clone(), 7, Cause::SocketReadable)),
        ev(1500, 0, l.clone(), switch_in(1100, 0)),
        ev(1600, 0, l.clone(), epoll_exit(4, &[3])),
        ev(1700, 0, l.clone(), accept(3, 6, Some(peer.clone()))),
        ev(1750, 0, l.clone(), from_code(&w2, Cause::Timer, WakerContext::Irq)),
        ev(1800, 0, l.clone(), from_code(&w, Cause::Futex, WakerContext::Process)),
        ev(1900, 0, l.clone(), Kind::EpollEnter { epfd: 4, maxevents: 1, syscall: Syscall::EpollWait }),
        ev(2000, 1, w.clone(), switch_in(1800, 1)),
        ev(2100, 1, w.clone(), Kind::Close { fd: 6, sock: Some(peer.into()) }),
        ev(2200, 1, w.clone(), sleep()),
        // The worker, handling nothing now, wakes another: a chain of its own.
        ev(2300, 1, w.clone(), from_code(&w2, Cause::Futex, WakerContext::Process)),
    ];
    let mut c = Correlator::new();
    let chains: Vec<Box<Chain>> = all_chains(&mut c, &evs).into_iter().filter(|ch| !ch.hops.is_empty()).collect();
    let conn = chains.iter().find(|ch| ch.sock.is_some()).expect("the connection's chain");
    let tids: Vec<(u32, bool)> = conn.hops.iter().map(|h| (h.target.tid, h.handoff)).collect();
    assert_eq!(tids, [(11, false), (12, true)], "{conn:#?}");
    assert!(matches!(conn.hops[1].actions[..], [Action::Close { fd: 6, .. }]), "{:#?}", conn.hops[1]);
    assert_eq!((conn.woken(), conn.wasted()), (1, 0));
    assert_eq!(c.stats.herd_chains, 0);
    // The timer's and the idle worker's wake-ups of w2: chains of their own.
    assert_eq!(chains.iter().filter(|ch| ch.sock.is_none() && ch.hops.iter().all(|h| h.target.tid == 13)).count(), 2, "{chains:#?}");
}
