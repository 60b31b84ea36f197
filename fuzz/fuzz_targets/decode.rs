//! Ring-buffer records are bytes written by the kernel side: `decode` must
//! turn any byte string into an event or an error, never panic. The same
//! input is also read as a stream of records (each prefixed by a 2-byte
//! length) fed to the correlator (with the gaps its headers' loss counts
//! show, as the live reader does), which must accept any sequence of events,
//! and each written as the live JSON line, which must parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netdrift::analysis::Correlator;
use netdrift::events::{decode, GapFinder};
use netdrift::output::json::write_event;

fuzz_target!(|data: &[u8]| {
    // The whole input as one record.
    if let Ok(ev) = decode(data) {
        let _ = serde_json::to_string(&ev).expect("an event always serializes");
    }

    // The input as a stream of records.
    let mut corr = Correlator::new();
    let mut gaps = GapFinder::default();
    let mut rest = data;
    let mut n = 0usize;
    let mut line = Vec::new();
    while rest.len() >= 2 {
        let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        rest = &rest[2..];
        let take = len.min(rest.len());
        let (rec, tail) = rest.split_at(take);
        rest = tail;
        // As the live reader does: a gap in a CPU's loss count is an event before the record.
        if let Some(gap) = gaps.gap_before(rec) {
            corr.ingest(&gap.event());
        }
        if let Ok(ev) = decode(rec) {
            let ann = corr.ingest(&ev);
            write_event(&mut line, &ev, &ann, None).expect("an event always writes");
            serde_json::from_slice::<serde_json::Value>(&line).expect("the live JSON line parses");
        }
        n += 1;
        if n % 8 == 0 {
            let _ = corr.drain_completed();
        }
    }
    let _ = corr.finish();
});
