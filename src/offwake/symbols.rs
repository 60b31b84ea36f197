//! User-space addresses -> names, for processes that may be gone by the end.
//!
//! A process is symbolized through blazesym's `Source::Process` while it
//! lives (binaries are read through /proc/PID/map_files, so this works inside
//! containers). When it is first seen, its /proc/PID/maps is kept and every
//! executable file it maps is held open; frames of a process that exited
//! (or that `Source::Process` could not name) are then looked up in those
//! files by file offset, and what is still unknown is printed with its module
//! and offset from the snapshot.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;

use blazesym::symbolize::source::{Elf, Process, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use blazesym::Pid;

use super::procmaps::{self, Mapping};
use crate::procfs::{process_alive, start_time};

/// At most this many binaries are held open (one per file, shared by processes).
const MAX_HELD_FILES: usize = 4096;

/// A process's memory map when it was first seen.
#[derive(Debug, Clone)]
struct Snapshot {
    /// Start time (clock ticks after boot) from /proc/PID/stat: tells a
    /// reused pid from the process that was seen.
    start_time: Option<u64>,
    maps: Vec<Mapping>,
}

/// Symbolizes user stacks of many processes, with a cache.
pub struct UserSyms {
    symbolizer: Symbolizer,
    snapshots: HashMap<u32, Snapshot>,
    /// Executable files held open, by (device, inode).
    files: HashMap<(String, u64), File>,
    /// (pid, address, is the innermost frame) -> name.
    cache: HashMap<(u32, u64, bool), String>,
    /// Stacks cut where the frame-pointer walk left the process's code.
    pub cut: u64,
    /// Distinct (pid, stack) cut, so a stack shared by keys counts once.
    cut_seen: std::collections::HashSet<(u32, Vec<u64>)>,
    /// Per process: the mappings a return address must fall in (the
    /// snapshot's and, while it runs, its live ones: an exec or a dlopen
    /// since the snapshot adds code).
    code_maps: HashMap<u32, Vec<Mapping>>,
}

/// The frame that ends a stack cut where its frame-pointer walk left the code.
pub const CUT_FRAME: &str = "[frame pointer left the code]";

impl Default for UserSyms {
    fn default() -> Self {
        Self::new()
    }
}

impl UserSyms {
    /// A symbolizer that demangles C++ and Rust names; no source lines (not printed).
    pub fn new() -> Self {
        let symbolizer = Symbolizer::builder().enable_demangling(true).enable_code_info(false).enable_inlined_fns(false).build();
        UserSyms {
            symbolizer,
            snapshots: HashMap::new(),
            files: HashMap::new(),
            cache: HashMap::new(),
            cut: 0,
            cut_seen: Default::default(),
            code_maps: HashMap::new(),
        }
    }

    /// Number of processes with a maps snapshot.
    pub fn snapshots(&self) -> usize {
        self.snapshots.len()
    }

    /// Keep /proc/PID/maps and hold the process's executables open, once per
    /// process. False when the process is already gone.
    pub fn snapshot(&mut self, pid: u32) -> bool {
        if pid == 0 {
            return false;
        }
        let st = start_time(pid);
        if let Some(s) = self.snapshots.get(&pid) {
            if s.start_time == st || st.is_none() {
                return true;
            }
        }
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { return false };
        let maps = procmaps::parse(&text);
        for m in maps.iter().filter(|m| m.exec() && m.is_file()) {
            let key = (m.dev.clone(), m.inode);
            if self.files.contains_key(&key) || self.files.len() >= MAX_HELD_FILES {
                continue;
            }
            let via_map_files = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
            let via_root = format!("/proc/{pid}/root{}", m.path.strip_suffix(" (deleted)").unwrap_or(&m.path));
            if let Ok(f) = File::open(via_map_files).or_else(|_| File::open(via_root)) {
                self.files.insert(key, f);
            }
        }
        self.snapshots.insert(pid, Snapshot { start_time: st, maps });
        true
    }

    /// Names for a user stack of `pid`, innermost first. Return addresses
    /// (every frame but the innermost) are looked up one byte back, inside
    /// the call instruction, so a call at the very end of a function is not
    /// named after the next one.
    ///
    /// A binary built without frame pointers (most distribution packages)
    /// gives a walk that wanders into data: the stack is cut at the first
    /// return address outside the process's executable mappings, and ends
    /// with [`CUT_FRAME`] instead of frames named from text or heap words.
    pub fn frames(&mut self, pid: u32, addrs: &[u64]) -> Vec<String> {
        if !self.code_maps.contains_key(&pid) {
            let maps = self.code_maps_of(pid);
            self.code_maps.insert(pid, maps);
        }
        let maps = &self.code_maps[&pid];
        let in_code = |a: u64| maps.iter().any(|m| m.start <= a && a < m.end);
        let keep = if maps.is_empty() {
            addrs.len()
        } else {
            (1..addrs.len()).find(|&i| !in_code(addrs[i].saturating_sub(1))).unwrap_or(addrs.len())
        };
        let want: Vec<(u64, bool)> = addrs[..keep].iter().enumerate().map(|(i, &a)| (a, i == 0)).collect();
        self.resolve(pid, &want);
        let mut names: Vec<String> = want
            .iter()
            .map(|&(a, leaf)| self.cache.get(&(pid, a, leaf)).cloned().unwrap_or_else(|| format!("[unknown] 0x{a:x}")))
            .collect();
        if keep < addrs.len() {
            if self.cut_seen.insert((pid, addrs.to_vec())) {
                self.cut += 1;
            }
            names.push(CUT_FRAME.to_string());
        }
        names
    }

    /// The snapshot's executable mappings, and the live ones while the
    /// process it was taken of runs (empty when gone and never seen).
    fn code_maps_of(&self, pid: u32) -> Vec<Mapping> {
        let mut maps: Vec<Mapping> =
            self.snapshots.get(&pid).map(|s| s.maps.iter().filter(|m| m.exec()).cloned().collect()).unwrap_or_default();
        if self.live_same(pid) {
            maps.extend(live_maps(pid).into_iter().filter(|m| m.exec()));
        }
        maps
    }

    /// Is `pid` running, and the process its snapshot (if any) was taken of?
    fn live_same(&self, pid: u32) -> bool {
        process_alive(pid)
            && match self.snapshots.get(&pid).map(|s| s.start_time) {
                Some(Some(st)) => start_time(pid) == Some(st),
                _ => true,
            }
    }

    fn resolve(&mut self, pid: u32, want: &[(u64, bool)]) {
        let missing: Vec<(u64, bool)> = want.iter().copied().filter(|&(a, l)| !self.cache.contains_key(&(pid, a, l))).collect();
        if missing.is_empty() {
            return;
        }
        let lookup = |(a, leaf): (u64, bool)| if leaf { a } else { a.saturating_sub(1) };
        let live_same = self.live_same(pid);
        let mut names: Vec<Option<String>> = vec![None; missing.len()];
        if live_same {
            let addrs: Vec<u64> = missing.iter().map(|&m| lookup(m)).collect();
            let src = Source::Process(Process::new(Pid::from(pid)));
            if let Ok(syms) = self.symbolizer.symbolize(&src, Input::AbsAddr(&addrs)) {
                for (n, s) in names.iter_mut().zip(syms) {
                    if let Symbolized::Sym(sym) = s {
                        *n = Some(sym.name.to_string());
                    }
                }
            }
        }
        // The snapshot, or the maps as they are now when the process was never snapshotted.
        let maps: Vec<Mapping> = match self.snapshots.get(&pid) {
            Some(s) => s.maps.clone(),
            None if live_same => live_maps(pid),
            None => Vec::new(),
        };
        for (i, &(a, leaf)) in missing.iter().enumerate() {
            if names[i].is_none() {
                let la = lookup((a, leaf));
                if let Some(m) = procmaps::find(&maps, la) {
                    if let Some(f) = self.files.get(&(m.dev.clone(), m.inode)) {
                        let path = format!("/proc/self/fd/{}", f.as_raw_fd());
                        let src = Source::Elf(Elf::new(path));
                        if let Ok(Symbolized::Sym(sym)) = self.symbolizer.symbolize_single(&src, Input::FileOffset(m.file_offset(la))) {
                            names[i] = Some(sym.name.to_string());
                        }
                    }
                }
            }
            let name = names[i].take().unwrap_or_else(|| procmaps::unknown_frame(&maps, a));
            self.cache.insert((pid, a, leaf), name);
        }
    }
}

/// /proc/PID/maps as it is now, parsed (empty if the process is gone).
fn live_maps(pid: u32) -> Vec<Mapping> {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).map(|t| procmaps::parse(&t)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::stat_start_time;

    #[test]
    fn stat_start_time_with_hostile_comm() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 200";
        assert_eq!(stat_start_time(stat), Some(987654));
        assert_eq!(stat_start_time("garbage"), None);
    }

    #[test]
    fn names_own_frames_and_survives_unknown() {
        let me = std::process::id();
        let mut s = UserSyms::new();
        assert!(s.snapshot(me));
        let f = stat_start_time as *const () as u64;
        let names = s.frames(me, &[f + 1, f + 2]);
        assert!(names[0].contains("stat_start_time") && names[1].contains("stat_start_time"), "{names:?}");
        // Rust names come demangled, without the hash.
        assert!(names[0].contains("::") && !names[0].starts_with("_ZN") && !names[0].starts_with("_R"), "{names:?}");
        assert_eq!(s.cut, 0);
        // A leaf outside any mapping is named by its address.
        assert_eq!(s.frames(me, &[0x10]), ["[unknown] 0x10"]);
    }

    /// A walk without frame pointers returns text or heap words: the stack
    /// is cut at the first one outside the executable mappings, and counted.
    #[test]
    fn a_walk_that_leaves_the_code_is_cut() {
        let me = std::process::id();
        let mut s = UserSyms::new();
        assert!(s.snapshot(me));
        let f = stat_start_time as *const () as u64;
        let heap = Box::new([0u64; 4]);
        let h = heap.as_ptr() as u64;
        let stack = [f + 1, f + 2, h + 8, f + 3, 0x343a_2a20_7265_7672];
        let names = s.frames(me, &stack);
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names[1].contains("stat_start_time"), "{names:?}");
        assert_eq!(names[2], CUT_FRAME);
        assert_eq!(s.cut, 1);
        // The same stack again (another key): counted once.
        s.frames(me, &stack);
        assert_eq!(s.cut, 1);
    }

    /// Code mapped after the snapshot (an exec, a dlopen) is code too: the
    /// live mappings count while the process runs.
    #[test]
    fn code_mapped_after_the_snapshot_is_not_cut() {
        let me = std::process::id();
        let mut s = UserSyms::new();
        assert!(s.snapshot(me));
        // The snapshot as if taken before this code was mapped.
        let f = stat_start_time as *const () as u64;
        s.snapshots.get_mut(&me).unwrap().maps.retain(|m| !(m.start <= f && f < m.end));
        let names = s.frames(me, &[f + 1, f + 2]);
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(s.cut, 0);
    }
}
