//! /proc text comes from other processes (comm and the file names of
//! /proc/PID/maps are chosen by the traced program, fdinfo and stat are
//! formatted by the kernel): the parsers must accept any text without
//! panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netdrift::doctor::parse_cap_eff;
use netdrift::offwake::procmaps;
use netdrift::procfs::stat_start_time;
use netdrift::procfs::{parse_epoll_fdinfo, socket_ino, stat_ppid, status_field};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_epoll_fdinfo(&text);
    let _ = stat_ppid(&text);
    let _ = socket_ino(&text);
    // status_field with a key taken from the first line, and the usual keys.
    let (key, body) = text.split_once('\n').unwrap_or(("Tgid", &text));
    let _ = status_field(body, key);
    for k in ["Tgid", "Pid", "PPid", "VmHWM"] {
        let _ = status_field(&text, k);
    }
    let _ = procmaps::parse(&text);
    let _ = stat_start_time(&text);
    let _ = parse_cap_eff(&text);
});
