//! A recording (`trace --record FILE`, read back by `analyze FILE` and
//! `report --from FILE`) is a file anyone can hand over: the reader must turn
//! any bytes into a replay or an error, never panic, hang or allocate without
//! bound. The input is read by the same function as `analyze`, so whatever
//! decodes goes through the correlator, the chain renderer and the summary.
#![no_main]

use std::path::Path;
use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use netdrift::trace::{analyze_reader, AnalyzeOptions};

static QUIET: Once = Once::new();

fn stdout_to_dev_null() {
    QUIET.call_once(|| {
        // The replay prints its chains and summary on stdout: thousands of runs
        // a second would bury libFuzzer's report (on stderr, kept).
        let null = std::fs::OpenOptions::new().write(true).open("/dev/null").expect("open /dev/null");
        // SAFETY: both are open descriptors; fd 1 now names /dev/null, and
        // `null` closes only its own descriptor when dropped.
        let r = unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), libc::STDOUT_FILENO) };
        assert!(r >= 0, "dup2 onto stdout failed");
    });
}

fuzz_target!(|data: &[u8]| {
    stdout_to_dev_null();
    // Text output without stacks: stacks would read /proc/kallsyms on every run.
    let opts = AnalyzeOptions::default();
    let _ = analyze_reader(Path::new("fuzz.ndr"), data, &opts, Vec::new(), false);
});
