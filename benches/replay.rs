//! Replay benchmark: decode + correlation of ring-buffer records, per core.
//!
//! `cargo bench --bench replay`
//!
//! A synthetic stream shaped like `netdrift trace -p <nginx master>` on nginx
//! (2 workers) at saturation under wrk: records are built from the
//! skeleton's own `types::nd_*` (the layout the BPF programs write) and laid
//! out 8-byte aligned in one buffer, as in the ring buffer. The mix follows a
//! measured trace (docs/benchmark.md): ~60% epoll_exit (4.5 ready events on
//! average), ~14% switch_out, ~9% each epoll_enter, sock_ready and wake (a
//! 34-frame kernel stack, as loopback's), ~7% switch_in, and new connections
//! (epoll_ctl, accept, close). An `epoll_wait` that does not sleep writes
//! only its exit.
//!
//! Measured: `decode` then `Correlator::ingest` for every record (and, in
//! `decode+correlate+json`, its JSON line as `trace --json` writes it), with
//! `drain_completed` every 256 records, as the live pipeline does per batch.
//! Throughput is reported in elements (events) per second on one core.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use netdrift::analysis::Correlator;
use netdrift::events::decode;
use netdrift::output::json::{shape, write_event};
use netdrift::skel::types;

/// Records in one replayed stream.
const N: usize = 100_000;
/// drain_completed() every this many records.
const BATCH: usize = 256;

const MASTER: u32 = 1000;
const WORKERS: [u32; 2] = [1001, 1002];
const WRK: u32 = 2000;
const PORT: u16 = 8080;
const LISTEN_FD: i32 = 6;
const EPFD: i32 = 7;

/// Deterministic xorshift: the same stream every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn comm(name: &str) -> [i8; 16] {
    let mut c = [0i8; 16];
    for (i, b) in name.bytes().take(15).enumerate() {
        c[i] = b as i8;
    }
    c
}

// `..Default::default()` keeps building if the header grows a field.
#[allow(clippy::needless_update)]
fn hdr(tag: u32, ts: u64, cpu: u32, pid: u32, tid: u32, name: &str) -> types::nd_hdr {
    types::nd_hdr { r#type: tag as u16, cpu: cpu as u16, ts, pid, tid, comm: comm(name), ..Default::default() }
}

fn sock(sk: u64, ino: u64, lport: u16, rport: u16, state: u8) -> types::nd_sock {
    let mut s = types::nd_sock { sk, ino, netns: 4026531840, family: 2, protocol: 6, lport, rport, state, ..Default::default() };
    s.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    s.raddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    s
}

/// The stream: one buffer of 8-byte aligned records and their (offset, len).
struct Stream {
    buf: Vec<u8>,
    recs: Vec<(usize, usize)>,
}

impl Stream {
    fn push<T: Copy>(&mut self, r: &T) {
        // SAFETY: T is a repr(C) plain-old-data record generated from BTF;
        // viewing it as bytes is sound.
        let b = unsafe { std::slice::from_raw_parts(r as *const T as *const u8, std::mem::size_of::<T>()) };
        let off = self.buf.len();
        self.buf.extend_from_slice(b);
        self.buf.resize(off + b.len().div_ceil(8) * 8, 0);
        self.recs.push((off, b.len()));
    }
}

/// A connection nginx holds: fd, epoll data word (a pointer in nginx), sock.
#[derive(Clone, Copy)]
struct Conn {
    fd: i32,
    data: u64,
    sk: u64,
    ino: u64,
    port: u16,
}

fn build_stream(n: usize) -> Stream {
    let mut s = Stream { buf: Vec::with_capacity(n * 160), recs: Vec::with_capacity(n) };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut ts: u64 = 1_000_000_000;
    let mut seq: u64 = 0;
    let mut next_fd = 10;
    let mut next_port = 40000u16;
    let mut next_ino = 500_000u64;
    let listen = sock(0xffff_8880_1000_0000, 400_000, PORT, 0, 10);
    // Each worker's keep-alive connections (wrk -c50 spread over 2 workers).
    let mut conns: Vec<Vec<Conn>> = vec![Vec::new(), Vec::new()];
    let stack: Vec<u64> = (0..34).map(|i| 0xffff_ffff_8100_0000 + i * 0x1234).collect();

    while s.recs.len() < n {
        let w = rng.below(2) as usize;
        let tid = WORKERS[w];
        let cpu = 1;
        ts += 1_000 + rng.below(4_000);

        // A new connection now and then: accept4, epoll_ctl(ADD), later close.
        if conns[w].len() < 25 || rng.below(1000) == 0 {
            let c = Conn {
                fd: next_fd,
                data: 0x7f00_0000_0000 + next_fd as u64 * 0x1e0,
                sk: 0xffff_8881_0000_0000 + next_ino * 0x800,
                ino: next_ino,
                port: next_port,
            };
            next_fd += 1;
            next_port = next_port.wrapping_add(1).max(32768);
            next_ino += 1;
            let mut a = types::nd_accept {
                hdr: hdr(7, ts, cpu, tid, tid, "nginx"),
                enter_ts: ts - 800,
                listen_fd: LISTEN_FD,
                ret: c.fd,
                syscall: 5,
                backlog: 0,
                max_backlog: 4096,
                ..Default::default()
            };
            a.listen = listen;
            a.peer = sock(c.sk, c.ino, PORT, c.port, 1);
            s.push(&a);
            ts += 500;
            let e = types::nd_epoll_ctl {
                hdr: hdr(12, ts, cpu, tid, tid, "nginx"),
                epfd: EPFD,
                op: 1,
                fd: c.fd,
                events: 0x8000_2001,
                data: c.data,
                ..Default::default()
            };
            s.push(&e);
            conns[w].push(c);
            if conns[w].len() > 25 {
                let old = conns[w].remove(0);
                let mut cl =
                    types::nd_close { hdr: hdr(8, ts + 100, cpu, tid, tid, "nginx"), fd: old.fd, is_socket: 1, ..Default::default() };
                cl.sock = sock(old.sk, old.ino, PORT, old.port, 8);
                s.push(&cl);
            }
            continue;
        }

        // epoll_wait: either sleep (enter, switch out, socket ready, wake-up,
        // switch in) or return at once with ready connections (its enter is
        // not written: the exit carries its time).
        let enter_ts = ts;
        let sleeps = rng.below(100) < 15;
        if sleeps {
            let en =
                types::nd_epoll_enter { hdr: hdr(5, ts, cpu, tid, tid, "nginx"), epfd: EPFD, maxevents: 512, syscall: 1, call_cpu: cpu };
            s.push(&en);
            ts += 300;
            let so = types::nd_switch_out {
                hdr: hdr(4, ts, cpu, tid, tid, "nginx"),
                preempt: 0,
                state: 1,
                next_tid: WRK,
                next_comm: comm("wrk"),
                ..Default::default()
            };
            s.push(&so);
            let c = conns[w][rng.below(conns[w].len() as u64) as usize];
            seq += 1;
            ts += 2_000;
            let sr = types::nd_sock_ready {
                hdr: hdr(1, ts, 0, WRK, WRK, "wrk"),
                sock: sock(c.sk, c.ino, PORT, c.port, 1),
                seq,
                hook: 3,
                ..Default::default()
            };
            s.push(&sr);
            let mut wk = types::nd_wake {
                hdr: hdr(2, ts + 300, 0, WRK, WRK, "wrk"),
                target_pid: tid,
                target_tid: tid,
                target_comm: comm("nginx"),
                sock_seq: seq,
                sk: c.sk,
                stack_sz: (stack.len() * 8) as i32,
                target_cpu: cpu,
                ..Default::default()
            };
            wk.stack[..stack.len()].copy_from_slice(&stack);
            s.push(&wk);
            ts += 2_000;
            let si = types::nd_switch_in {
                hdr: hdr(3, ts, cpu, tid, tid, "nginx"),
                runnable_ts: ts - 1_700,
                prev_cpu: cpu,
                prev_tid: WRK,
                prev_comm: comm("wrk"),
                ..Default::default()
            };
            s.push(&si);
        } else if rng.below(100) < 7 {
            // Preempted and back (the tracer or wrk took the CPU for a moment).
            ts += 200;
            let so = types::nd_switch_out {
                hdr: hdr(4, ts, cpu, tid, tid, "nginx"),
                preempt: 1,
                state: 0,
                next_tid: WRK,
                next_comm: comm("wrk"),
                ..Default::default()
            };
            s.push(&so);
            ts += 1_500;
            let si = types::nd_switch_in {
                hdr: hdr(3, ts, cpu, tid, tid, "nginx"),
                runnable_ts: ts - 1_500,
                prev_cpu: cpu,
                after_preempt: 1,
                prev_tid: WRK,
                prev_comm: comm("wrk"),
                ..Default::default()
            };
            s.push(&si);
        }
        ts += 500;
        let ready = 1 + rng.below(8) as usize;
        let mut ex = types::nd_epoll_exit {
            hdr: hdr(6, ts, cpu, tid, tid, "nginx"),
            enter_ts,
            epfd: EPFD,
            ret: ready as i32,
            syscall: 1,
            n_events: ready as u32,
            ev_size: 12,
            ..Default::default()
        };
        // x86_64's packed struct epoll_event: events (4 bytes), data (8).
        for i in 0..ready {
            let c = conns[w][rng.below(conns[w].len() as u64) as usize];
            ex.ev_raw[i * 12..i * 12 + 4].copy_from_slice(&0x2001u32.to_ne_bytes());
            ex.ev_raw[i * 12 + 4..i * 12 + 12].copy_from_slice(&c.data.to_ne_bytes());
        }
        s.push(&ex);
    }
    s.recs.truncate(n);
    let _ = MASTER;
    s
}

fn replay(s: &Stream) -> u64 {
    replay_with(s).0
}

fn replay_with(s: &Stream) -> (u64, Correlator) {
    let mut corr = Correlator::new();
    let mut chains = 0u64;
    for (i, &(off, len)) in s.recs.iter().enumerate() {
        let ev = decode(&s.buf[off..off + len]).expect("synthetic records decode");
        black_box(corr.ingest(&ev));
        if i % BATCH == BATCH - 1 {
            // As the live pipeline: written chains are handed back.
            for c in corr.drain_completed() {
                chains += 1;
                corr.recycle(black_box(c));
            }
        }
    }
    chains += corr.finish().len() as u64;
    (chains, corr)
}

/// As `replay`, plus each event written as its JSON line (`trace --json`).
fn replay_json(s: &Stream) -> usize {
    let mut corr = Correlator::new();
    let mut buf = Vec::with_capacity(4096);
    let mut bytes = 0;
    for (i, &(off, len)) in s.recs.iter().enumerate() {
        let mut ev = decode(&s.buf[off..off + len]).expect("synthetic records decode");
        let ann = corr.ingest(&ev);
        black_box(shape(&mut ev, &ann));
        write_event(&mut buf, &ev, &ann, None).expect("serializes");
        bytes += black_box(&buf).len();
        if i % BATCH == BATCH - 1 {
            for c in corr.drain_completed() {
                corr.recycle(black_box(c));
            }
        }
    }
    black_box(corr.finish());
    bytes
}

fn bench(c: &mut Criterion) {
    let s = build_stream(N);
    // Sanity: every record decodes, and the stream forms chains.
    let (chains, corr) = replay_with(&s);
    assert!(chains > 1000, "the synthetic stream should form chains, got {chains}");
    eprintln!(
        "replay stream: {} records ({} bytes), {chains} chains ({} incomplete), by type {:?}",
        s.recs.len(),
        s.buf.len(),
        corr.stats.chains_incomplete,
        corr.stats().by_type
    );
    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);
    g.bench_function("decode", |b| {
        b.iter(|| {
            for &(off, len) in &s.recs {
                black_box(decode(black_box(&s.buf[off..off + len])).unwrap());
            }
        })
    });
    g.bench_function("decode+correlate", |b| b.iter_batched(|| (), |_| black_box(replay(&s)), BatchSize::PerIteration));
    g.bench_function("decode+correlate+json", |b| b.iter_batched(|| (), |_| black_box(replay_json(&s)), BatchSize::PerIteration));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
