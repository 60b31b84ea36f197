//! netdrift: follow a network event through the Linux kernel into an epoll
//! server, with tracepoint-only eBPF programs.
//!
//! Modules by concern: [`probes`] loads and attaches the BPF programs,
//! [`events`] turns ring-buffer records into [`events::Event`], [`analysis`]
//! correlates events into chains (pure Rust, testable on fixtures),
//! [`symbolize`] names kernel addresses, [`output`] renders text and JSON.

pub mod analysis;
pub mod cli;
pub mod demo;
pub mod doctor;
pub mod error;
pub mod events;
pub mod handlers;
pub mod offwake;
pub mod output;
pub mod probes;
pub mod procfs;
pub mod summary;
pub mod symbolize;
pub mod trace;
pub mod tracefs;

pub use error::{Error, Result};

/// The skeleton generated from `src/bpf/netdrift.bpf.c`; its `types` module
/// holds the record layouts of `src/bpf/netdrift.h`.
pub mod skel {
    #![allow(clippy::all, missing_docs, non_camel_case_types, non_snake_case, dead_code, unused_imports)]
    include!(concat!(env!("OUT_DIR"), "/netdrift.skel.rs"));
}

/// The skeleton of `src/bpf/probe.bpf.c`, the feature probes of `doctor`.
pub mod probe_skel {
    #![allow(clippy::all, missing_docs, non_camel_case_types, non_snake_case, dead_code, unused_imports)]
    include!(concat!(env!("OUT_DIR"), "/probe.skel.rs"));
}

/// The skeleton of `src/bpf/offwake.bpf.c` (`netdrift offwake`); its `types`
/// module holds the key and value layouts of `src/bpf/offwake.h`.
pub mod offwake_skel {
    #![allow(clippy::all, missing_docs, non_camel_case_types, non_snake_case, dead_code, unused_imports)]
    include!(concat!(env!("OUT_DIR"), "/offwake.skel.rs"));
}
