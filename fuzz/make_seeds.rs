//! Seed corpus for the fuzz targets: one valid record of each type (built
//! from the skeleton's `types::nd_*`, the layout the BPF side writes) and a
//! stream forming a whole chain, in the `decode` target's stream format
//! (2-byte little-endian length, then the record); the same chain as a
//! recording written by netdrift's own recording writer, whole and cut short.
//! Run by scripts/fuzz.sh:
//!   cargo run --manifest-path fuzz/Cargo.toml --bin make_seeds -- fuzz/corpus
use std::fs;
use std::path::PathBuf;

use netdrift::events::decode;
use netdrift::output::text::Losses;
use netdrift::skel::types;
use netdrift::trace::{write_record_end, write_record_event, write_record_start};

fn bytes<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: T is a repr(C) plain-old-data record; viewing it as bytes is sound.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()).to_vec() }
}

fn hdr(tag: u32, ts: u64, pid: u32) -> types::nd_hdr {
    let mut h = types::nd_hdr { r#type: tag as u16, cpu: 1, ts, pid, tid: pid, ..Default::default() };
    for (i, b) in b"nginx".iter().enumerate() {
        h.comm[i] = *b as i8;
    }
    h
}

fn sock(sk: u64, ino: u64, state: u8) -> types::nd_sock {
    let mut s = types::nd_sock { sk, ino, netns: 1, family: 2, protocol: 6, lport: 80, rport: 40000, state, ..Default::default() };
    s.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    s.raddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    s
}

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let (w, waker) = (100u32, 200u32);
    let mut wake = types::nd_wake {
        hdr: hdr(2, 1_300, waker),
        target_pid: w,
        target_tid: w,
        sock_seq: 1,
        sk: 0x1000,
        stack_sz: 16,
        target_cpu: 1,
        ..Default::default()
    };
    wake.stack[0] = 0xffff_ffff_8100_0000;
    wake.stack[1] = 0xffff_ffff_8100_0100;
    let mut exit = types::nd_epoll_exit {
        hdr: hdr(6, 1_500, w),
        enter_ts: 1_000,
        epfd: 7,
        ret: 1,
        syscall: 1,
        n_events: 1,
        ev_size: 12,
        ..Default::default()
    };
    // x86_64's packed epoll_event: events (4 bytes), data (8).
    exit.ev_raw[..4].copy_from_slice(&1u32.to_ne_bytes());
    exit.ev_raw[4..12].copy_from_slice(&3u64.to_ne_bytes());
    let mut accept = types::nd_accept {
        hdr: hdr(7, 1_600, w),
        enter_ts: 1_550,
        listen_fd: 3,
        ret: 9,
        syscall: 5,
        max_backlog: 128,
        ..Default::default()
    };
    accept.listen = sock(0x1000, 11, 10);
    accept.peer = sock(0x2000, 12, 1);
    let mut close = types::nd_close { hdr: hdr(8, 1_900, w), fd: 9, is_socket: 1, ..Default::default() };
    close.sock = sock(0x2000, 12, 8);
    let chain: Vec<Vec<u8>> = vec![
        bytes(&types::nd_epoll_enter { hdr: hdr(5, 1_000, w), epfd: 7, maxevents: 512, syscall: 1, call_cpu: 1 }),
        bytes(&types::nd_switch_out { hdr: hdr(4, 1_100, w), preempt: 0, state: 1, next_tid: 0, ..Default::default() }),
        bytes(&types::nd_sock_ready { hdr: hdr(1, 1_200, waker), sock: sock(0x1000, 11, 10), seq: 1, hook: 1, ..Default::default() }),
        bytes(&wake),
        bytes(&types::nd_switch_in { hdr: hdr(3, 1_400, w), runnable_ts: 1_300, prev_cpu: 1, ..Default::default() }),
        bytes(&exit),
        bytes(&accept),
        bytes(&types::nd_epoll_ctl { hdr: hdr(12, 1_700, w), epfd: 7, op: 1, fd: 9, events: 0x2001, data: 9, ..Default::default() }),
        bytes(&types::nd_epoll_reg { hdr: hdr(15, 1_750, w), epfd: 7, fd: 9, events: 0x8000_2019, data: 9, ..Default::default() }),
        bytes(&types::nd_sock_state { hdr: hdr(9, 1_800, w), sock: sock(0x2000, 12, 8), oldstate: 1, newstate: 8, ..Default::default() }),
        bytes(&close),
        bytes(&types::nd_task_new { hdr: hdr(10, 2_000, w), child_pid: 101, child_tid: 101, reason: 1, ..Default::default() }),
        bytes(&types::nd_task_exit { hdr: hdr(11, 2_100, w), group_dead: 1, ..Default::default() }),
    ];
    let dir = root.join("decode");
    fs::create_dir_all(&dir).expect("create corpus dir");
    let mut stream = Vec::new();
    for rec in &chain {
        let tag = u16::from_ne_bytes(rec[..2].try_into().unwrap());
        fs::write(dir.join(format!("record-{tag:02}")), rec).expect("write seed");
        stream.extend_from_slice(&(rec.len() as u16).to_le_bytes());
        stream.extend_from_slice(rec);
    }
    fs::write(dir.join("stream-chain"), &stream).expect("write seed");

    let dir = root.join("recording");
    fs::create_dir_all(&dir).expect("create corpus dir");
    let mut rec = Vec::new();
    let start = serde_json::json!({"version": "0.0.0", "t0_ns": 900, "pids": [w], "tids": [], "comms": [], "idle_ms": 2000});
    write_record_start(&mut rec, &start).expect("write start");
    for raw in &chain {
        write_record_event(&mut rec, &decode(raw).expect("a seed record decodes")).expect("write event");
    }
    let events_end = rec.len();
    let losses = Losses { ringbuf: 1, per_cpu: vec![[1, 0, 0, 0]], ..Default::default() };
    write_record_end(&mut rec, "duration reached", 1.0, &losses, 0, 8, 0).expect("write end");
    fs::write(dir.join("whole"), &rec).expect("write seed");
    // Killed mid-write: the last event cut in the middle, no end record.
    fs::write(dir.join("truncated"), &rec[..events_end - 40]).expect("write seed");
    // Killed between two lines: every event whole, no end record.
    fs::write(dir.join("no-end"), &rec[..events_end]).expect("write seed");

    let dir = root.join("proc_parsers");
    fs::create_dir_all(&dir).expect("create corpus dir");
    let seeds: [(&str, &str); 4] = [
        ("fdinfo", "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\ntfd:        6 events:       19 data:     55d6a8c3f1e0  pos:0 ino:4a9f sdev:8\ntfd:        3 events: 80000001 data:                3  pos:0 ino:4a90 sdev:8\n"),
        ("stat", "42 (a) b) c) S 7 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 100 1000 100"),
        ("status", "Tgid\nName:\tnginx\nTgid:\t77\nPid:\t78\nPPid:\t1\nVmHWM:\t  1234 kB\n"),
        ("socket", "socket:[98765]"),
    ];
    for (name, text) in seeds {
        fs::write(dir.join(name), text).expect("write seed");
    }
    println!("seeds written under {}", root.display());
}
