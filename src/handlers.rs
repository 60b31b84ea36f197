//! Handler probes: `--handler BINARY:GLOB[:fd=argN][:events=argM/DECODER]`
//! and `--preset NAME`. Resolves the binary (inside the target's mount
//! namespace, in its maps, or its own executable), matches the glob against
//! mangled and demangled symbol names, and says what was searched when
//! nothing matches.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use blazesym::inspect::source::{Elf, Source};
use blazesym::inspect::{Inspector, SymInfo};
use blazesym::SymType;

use crate::error::Error;

/// How a handler's events argument is turned into names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decoder {
    /// libevent: EV_TIMEOUT, EV_READ, EV_WRITE, EV_SIGNAL, EV_PERSIST, EV_ET, EV_FINALIZE, EV_CLOSED.
    Libevent,
    /// epoll: EPOLLIN, EPOLLOUT...
    Epoll,
    /// redis ae: AE_READABLE, AE_WRITABLE, AE_BARRIER.
    Ae,
    /// hex.
    Raw,
}

impl Decoder {
    pub fn decode(self, v: u64) -> String {
        let table: &[(u64, &str)] = match self {
            Decoder::Libevent => &[
                (0x01, "EV_TIMEOUT"),
                (0x02, "EV_READ"),
                (0x04, "EV_WRITE"),
                (0x08, "EV_SIGNAL"),
                (0x10, "EV_PERSIST"),
                (0x20, "EV_ET"),
                (0x40, "EV_FINALIZE"),
                (0x80, "EV_CLOSED"),
            ],
            Decoder::Ae => &[(1, "AE_READABLE"), (2, "AE_WRITABLE"), (4, "AE_BARRIER")],
            Decoder::Epoll => return crate::events::epoll_flags(v as u32),
            Decoder::Raw => return format!("0x{v:x}"),
        };
        // Only the low 16 bits are flags (a `short` in libevent).
        let v = if self == Decoder::Libevent { v & 0xffff } else { v & 0xffff_ffff };
        crate::events::flag_names(v, table.iter().copied())
    }
}

impl FromStr for Decoder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "libevent" => Ok(Decoder::Libevent),
            "epoll" => Ok(Decoder::Epoll),
            "ae" | "redis" => Ok(Decoder::Ae),
            "raw" => Ok(Decoder::Raw),
            _ => Err(format!("unknown decoder {s:?}: use libevent, epoll, ae or raw")),
        }
    }
}

/// A shell-style glob: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`, `\x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    toks: Vec<Tok>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    Any,
    Star,
    Class(bool, Vec<(char, char)>),
}

impl Glob {
    pub fn new(text: &str) -> Result<Glob, String> {
        if text.is_empty() {
            return Err("empty glob".into());
        }
        let mut toks = Vec::new();
        let mut it = text.chars().peekable();
        while let Some(c) = it.next() {
            match c {
                '*' => {
                    if toks.last() != Some(&Tok::Star) {
                        toks.push(Tok::Star);
                    }
                }
                '?' => toks.push(Tok::Any),
                '\\' => toks.push(Tok::Lit(it.next().ok_or_else(|| format!("glob {text:?} ends with a lone '\\'"))?)),
                '[' => {
                    let neg = matches!(it.peek(), Some('!') | Some('^'));
                    if neg {
                        it.next();
                    }
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let c = it.next().ok_or_else(|| format!("glob {text:?} has an unclosed '['"))?;
                        if c == ']' && !first {
                            break;
                        }
                        first = false;
                        if it.peek() == Some(&'-') {
                            let mut look = it.clone();
                            look.next();
                            if let Some(&hi) = look.peek() {
                                if hi != ']' {
                                    it.next();
                                    it.next();
                                    ranges.push((c, hi));
                                    continue;
                                }
                            }
                        }
                        ranges.push((c, c));
                    }
                    toks.push(Tok::Class(neg, ranges));
                }
                c => toks.push(Tok::Lit(c)),
            }
        }
        Ok(Glob { text: text.to_string(), toks })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, s: &str) -> bool {
        let chars: Vec<char> = s.chars().collect();
        // Iterative matching with one backtrack point per star.
        let (mut p, mut i) = (0usize, 0usize);
        let (mut star_p, mut star_i) = (usize::MAX, 0usize);
        while i < chars.len() {
            let ok = match self.toks.get(p) {
                Some(Tok::Lit(c)) => *c == chars[i],
                Some(Tok::Any) => true,
                Some(Tok::Class(neg, r)) => r.iter().any(|(lo, hi)| (*lo..=*hi).contains(&chars[i])) != *neg,
                Some(Tok::Star) => {
                    star_p = p;
                    star_i = i;
                    p += 1;
                    continue;
                }
                None => false,
            };
            if ok {
                p += 1;
                i += 1;
            } else if star_p != usize::MAX {
                p = star_p + 1;
                star_i += 1;
                i = star_i;
            } else {
                return false;
            }
        }
        self.toks[p..].iter().all(|t| *t == Tok::Star)
    }

    /// The literal pieces, for suggesting close names.
    fn literals(&self) -> Vec<String> {
        let mut out = vec![String::new()];
        for t in &self.toks {
            match t {
                Tok::Lit(c) => out.last_mut().unwrap().push(*c),
                _ => out.push(String::new()),
            }
        }
        out.into_iter().filter(|s| s.len() >= 2).collect()
    }
}

/// One `--handler` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerSpec {
    pub binary: String,
    pub glob: Glob,
    pub fd_arg: Option<u8>,
    pub events_arg: Option<u8>,
    pub decoder: Decoder,
}

fn parse_arg(v: &str, what: &str) -> Result<u8, String> {
    let n: u8 = v.strip_prefix("arg").and_then(|n| n.parse().ok()).ok_or_else(|| format!("{what}={v}: give argN with N from 0 to 5"))?;
    if n > 5 {
        return Err(format!("{what}={v}: only arg0..arg5 (register arguments) can be read"));
    }
    Ok(n)
}

impl FromStr for HandlerSpec {
    type Err = String;

    /// `BINARY:GLOB[:fd=argN][:events=argM/DECODER]`; the glob may hold `::`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (binary, mut rest) =
            s.split_once(':').ok_or_else(|| format!("--handler {s:?}: expected BINARY:GLOB[:fd=argN][:events=argM/DECODER]"))?;
        if binary.is_empty() {
            return Err(format!("--handler {s:?}: empty BINARY (use exe, a path or a library name)"));
        }
        let (mut fd_arg, mut events_arg, mut decoder) = (None, None, Decoder::Raw);
        while let Some((head, tail)) = rest.rsplit_once(':') {
            let twice = |k: &str| format!("--handler {s:?}: {k}= given twice");
            if let Some(v) = tail.strip_prefix("fd=") {
                if fd_arg.is_some() {
                    return Err(twice("fd"));
                }
                fd_arg = Some(parse_arg(v, "fd")?);
            } else if let Some(v) = tail.strip_prefix("events=") {
                if events_arg.is_some() {
                    return Err(twice("events"));
                }
                let (a, d) = v.split_once('/').unwrap_or((v, "raw"));
                events_arg = Some(parse_arg(a, "events")?);
                decoder = d.parse()?;
            } else if let Some((k, v)) = tail.split_once('=').filter(|(k, v)| {
                // `name=value` reads as a field; C++'s `operator=`/`operator==` stay the glob's.
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase()) && !v.is_empty() && !v.starts_with('=')
            }) {
                return Err(format!("--handler {s:?}: unknown field {k}={v} (the fields are fd=argN and events=argM/DECODER)"));
            } else {
                break;
            }
            rest = head;
        }
        let glob = Glob::new(rest).map_err(|e| format!("--handler {s:?}: {e}"))?;
        Ok(HandlerSpec { binary: binary.to_string(), glob, fd_arg, events_arg, decoder })
    }
}

impl fmt::Display for HandlerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.binary, self.glob.as_str())?;
        if let Some(a) = self.fd_arg {
            write!(f, ":fd=arg{a}")?;
        }
        if let Some(a) = self.events_arg {
            write!(
                f,
                ":events=arg{a}/{}",
                serde_json::to_value(self.decoder).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

/// The probes of `--preset NAME`. A preset's spec may match nothing (builds
/// differ); the preset fails only if none matches.
pub fn preset(name: &str) -> Option<Vec<HandlerSpec>> {
    let specs: &[&str] = match name {
        // The reference article's probe: the lambda registered with libevent
        // inside FileEventImpl::assignEvents (GCC names it _FUN, clang __invoke).
        "envoy" => &[
            "exe:*FileEventImpl::assignEvents*::_FUN*:fd=arg0:events=arg1/libevent",
            "exe:*FileEventImpl::assignEvents*::__invoke*:fd=arg0:events=arg1/libevent",
        ],
        // acceptTcpHandler(aeEventLoop *el, int fd, void *privdata, int mask); readQueryFromClient(connection *conn).
        "redis" => &["exe:acceptTcpHandler:fd=arg1:events=arg3/ae", "exe:readQueryFromClient"],
        // ngx_event_accept(ngx_event_t *ev); ngx_http_init_connection(ngx_connection_t *c);
        // ngx_http_process_request(ngx_http_request_t *r), once per request.
        "nginx" => &["exe:ngx_event_accept", "exe:ngx_http_init_connection", "exe:ngx_http_process_request"],
        // memcached exports no handlers; libevent's activation of each ready event: event_active_nolock_(ev, res, ncalls).
        // In libevent, libevent_core (which programs may link alone) or the program (static).
        "memcached" | "libevent" => &[
            "libevent:event_active_nolock_:events=arg1/libevent",
            "libevent_core:event_active_nolock_:events=arg1/libevent",
            "exe:event_active_nolock_:events=arg1/libevent",
        ],
        _ => return None,
    };
    Some(specs.iter().map(|s| s.parse().expect("built-in preset parses")).collect())
}

/// Symbols one trace can attach to (ND_MAX_HANDLERS in netdrift.h).
pub const MAX_HANDLERS: usize = 256;

pub const PRESETS: &[&str] = &["envoy", "redis", "nginx", "memcached", "libevent"];

/// A symbol a handler probe is attached to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Resolved {
    /// Index: the uprobe's cookie and the record's id.
    pub id: u32,
    /// The file opened for the uprobe.
    pub path: PathBuf,
    /// Demangled (or plain) name.
    pub name: String,
    pub offset: u64,
    pub fd_arg: Option<u8>,
    pub events_arg: Option<u8>,
    pub decoder: Decoder,
    /// The `--handler` text it came from.
    pub spec: String,
}

/// A name as a human reads it: demangled C++ or Rust, or as is.
pub fn demangle(name: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return format!("{d:#}");
    }
    if name.starts_with("_Z") {
        if let Ok(sym) = cpp_demangle::Symbol::new(name) {
            if let Ok(d) = sym.demangle() {
                return d;
            }
        }
    }
    name.to_string()
}

fn is_elf(p: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(p)?;
    let mut magic = [0u8; 4];
    Ok(f.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF")
}

/// `path` as a process whose root directory is `root` sees it, if it
/// exists there. Symbolic links are followed by hand: through
/// /proc/PID/root the kernel would follow an absolute one (a container's
/// `/usr/bin/envoy -> /usr/local/bin/envoy`) from netdrift's own root, the
/// host's, and find another file or none.
fn in_root(root: &Path, path: &str) -> Option<PathBuf> {
    let mut todo: Vec<std::ffi::OsString> = Path::new(path).components().rev().map(|c| c.as_os_str().to_owned()).collect();
    let mut at = PathBuf::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        match c.to_str() {
            Some("/") | Some(".") => continue,
            Some("..") => {
                at.pop();
                continue;
            }
            _ => at.push(&c),
        }
        let here = root.join(&at);
        if std::fs::symlink_metadata(&here).ok()?.file_type().is_symlink() {
            // As many as the kernel follows (MAXSYMLINKS).
            links += 1;
            if links > 40 {
                return None;
            }
            let to = std::fs::read_link(&here).ok()?;
            at.pop();
            if to.is_absolute() {
                at = PathBuf::new();
            }
            todo.extend(to.components().rev().map(|c| c.as_os_str().to_owned()));
        }
    }
    Some(root.join(at))
}

/// Find BINARY: `exe`, a path (inside the target's root first), or a library
/// name in the target's maps.
pub fn resolve_binary(binary: &str, pid: Option<u32>) -> Result<PathBuf, Error> {
    let mut searched: Vec<String> = Vec::new();
    if binary == "exe" {
        let pid = pid.ok_or_else(|| {
            Error::Usage(
                "--handler exe:... (or a --preset): `exe` needs a running target process (-p PID, -t TID or -c COMM); with --wait, give handlers by the binary's path (--handler /usr/bin/x:GLOB)"
                    .into(),
            )
        })?;
        let p = PathBuf::from(format!("/proc/{pid}/exe"));
        if p.exists() {
            return Ok(p);
        }
        return Err(Error::Usage(format!("--handler exe: {} is gone (did pid {pid} exit?)", p.display())));
    }
    if binary.contains('/') {
        // A /proc path (/proc/PID/root/...) already names a file as the host sees it.
        if let (Some(pid), true) = (pid, binary.starts_with('/') && !binary.starts_with("/proc/")) {
            let root = PathBuf::from(format!("/proc/{pid}/root"));
            if let Some(inside) = in_root(&root, binary) {
                // The target runs the file as it was before a replacement
                // (an upgrade): probes on the new one would never fire.
                let seen = inside.strip_prefix(&root).map(|r| Path::new("/").join(r)).unwrap_or_else(|_| inside.clone());
                let deleted = format!("{} (deleted)", seen.display());
                if target_maps(pid).iter().any(|m| m.path == deleted) && !maps_file(pid, &inside) {
                    return Err(replaced(binary, pid, &seen.display().to_string()));
                }
                return Ok(inside);
            }
            // A host path of the container's file (an overlay's merged/...): only
            // if the target maps that very file, else its probes would never fire.
            let host = PathBuf::from(binary);
            if maps_file(pid, &host) {
                return Ok(host);
            }
            return Err(Error::Usage(format!(
                "--handler {binary}: binary not found in pid {pid}'s root (its mount namespace: {}{binary}), nor mapped by it from the host's path",
                root.display()
            )));
        }
        let p = PathBuf::from(binary);
        searched.push(p.display().to_string());
        if p.exists() {
            return Ok(p);
        }
    } else if let Some(pid) = pid {
        // A library name: look in what the target has mapped.
        let maps = target_maps(pid);
        let mut libs: Vec<&str> = maps.iter().map(|m| m.path.as_str()).filter(|p| p.starts_with('/')).collect();
        libs.dedup();
        let want = binary.trim_start_matches("lib");
        for l in &libs {
            let (l, deleted) = match l.strip_suffix(" (deleted)") {
                Some(l) => (l, true),
                None => (*l, false),
            };
            let base = l.rsplit('/').next().unwrap_or(l);
            let stem = base.trim_start_matches("lib");
            if base == binary || stem.starts_with(&format!("{want}.")) || stem.starts_with(&format!("{want}-")) {
                if deleted {
                    // The file on disk now is another one: probes there would never fire.
                    return Err(replaced(binary, pid, l));
                }
                return Ok(PathBuf::from(format!("/proc/{pid}/root{l}")));
            }
        }
        searched.push(format!("the {} files mapped by pid {pid}", libs.len()));
    } else {
        searched.push("nothing: a library name needs a running target process; give the library's path".into());
    }
    Err(Error::Usage(format!("--handler {binary}: binary not found (searched {})", searched.join(", "))))
}

/// `pid` maps `file` only as it was before it was replaced on disk.
fn replaced(binary: &str, pid: u32, file: &str) -> Error {
    Error::Usage(format!(
        "--handler {binary}: pid {pid} runs {file} as it was before it was replaced on disk (maps says deleted): restart the process to probe the new one"
    ))
}

/// /proc/PID/maps, parsed (empty if the process is gone).
fn target_maps(pid: u32) -> Vec<crate::offwake::procmaps::Mapping> {
    crate::offwake::procmaps::parse(&std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default())
}

/// Does `pid` map the file at `path`? A mapping of the same inode number
/// whose file, opened through /proc/PID/map_files, has the same inode, size
/// and modification time: maps shows the device of an overlay's lower layer
/// (before 6.8) or a btrfs volume, not the one stat() gives for `path`.
fn maps_file(pid: u32, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(path) else { return false };
    target_maps(pid).iter().any(|mm| {
        mm.inode == m.ino()
            && std::fs::metadata(format!("/proc/{pid}/map_files/{:x}-{:x}", mm.start, mm.end))
                .is_ok_and(|o| o.ino() == m.ino() && o.size() == m.size() && o.mtime() == m.mtime() && o.mtime_nsec() == m.mtime_nsec())
    })
}

/// Every function symbol of an ELF file: (raw name, demangled, file offset).
pub fn functions(path: &Path) -> Result<Vec<(String, String, u64)>, Error> {
    match is_elf(path) {
        Ok(true) => {}
        Ok(false) => return Err(Error::Usage(format!("--handler: {} is not an ELF file", path.display()))),
        Err(e) => return Err(Error::Usage(format!("--handler: cannot read {}: {e}", path.display()))),
    }
    let inspector = Inspector::new();
    let mut elf = Elf::new(path);
    elf.debug_syms = false;
    let src = Source::Elf(elf);
    let mut out = Vec::new();
    inspector
        .for_each(&src, |s: &SymInfo<'_>| {
            if s.sym_type == SymType::Function {
                if let Some(off) = s.file_offset {
                    if off != 0 {
                        out.push((s.name.to_string(), demangle(&s.name), off));
                    }
                }
            }
            std::ops::ControlFlow::Continue(())
        })
        .map_err(|e| Error::Usage(format!("--handler: reading symbols of {}: {e}", path.display())))?;
    // Aliases (read and __read) share an offset: all kept, so any of them
    // matches; resolve() attaches once per offset.
    out.sort_by(|a, b| a.2.cmp(&b.2).then(a.0.cmp(&b.0)));
    out.dedup();
    Ok(out)
}

/// Length of the longest common substring (bytes).
fn common_substring(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev = vec![0usize; b.len() + 1];
    let mut best = 0;
    for &x in a {
        let mut cur = vec![0usize; b.len() + 1];
        for (j, &y) in b.iter().enumerate() {
            if x == y {
                cur[j + 1] = prev[j] + 1;
                best = best.max(cur[j + 1]);
            }
        }
        prev = cur;
    }
    best
}

/// Up to three names closest to what the glob asks for.
fn closest(glob: &Glob, names: &[(String, String, u64)]) -> Vec<String> {
    let lits: Vec<String> = glob.literals().into_iter().map(|l| l.to_lowercase()).collect();
    let mut scored: Vec<(usize, &str)> = names
        .iter()
        .map(|(_, d, _)| {
            let low = d.to_lowercase();
            let hits: usize = lits.iter().map(|l| common_substring(l, &low)).sum();
            (hits, d.as_str())
        })
        .filter(|(h, _)| *h >= 4)
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.len().cmp(&b.1.len())));
    let mut out: Vec<String> = Vec::new();
    for (_, n) in scored {
        if !out.iter().any(|o| o == n) {
            out.push(n.to_string());
        }
        if out.len() == 3 {
            break;
        }
    }
    out
}

/// One probe per function. The same file and offset named twice (a preset
/// and a --handler, two presets of one library, overlapping globs) would
/// report every call twice: with the same arguments it is kept once, with
/// others it is a usage error. Ids are renumbered in order.
pub fn merge(all: Vec<Resolved>) -> Result<Vec<Resolved>, Error> {
    use std::os::unix::fs::MetadataExt;
    let mut out: Vec<Resolved> = Vec::new();
    // (device, inode) of the file, or its path where it cannot be read.
    type File = Result<(u64, u64), PathBuf>;
    let mut seen: HashMap<(File, u64), usize> = HashMap::new();
    for mut h in all {
        let file = std::fs::metadata(&h.path).map(|m| (m.dev(), m.ino())).map_err(|_| h.path.clone());
        if let Some(&i) = seen.get(&(file.clone(), h.offset)) {
            let f = &out[i];
            if (f.fd_arg, f.events_arg, f.decoder) != (h.fd_arg, h.events_arg, h.decoder) {
                return Err(Error::Usage(format!(
                    "{} in {} is probed as {} and as {} with other arguments: give it once",
                    h.name,
                    h.path.display(),
                    f.spec,
                    h.spec
                )));
            }
            continue;
        }
        seen.insert((file, h.offset), out.len());
        h.id = out.len() as u32;
        out.push(h);
    }
    Ok(out)
}

/// The processes, in order, whose executable and set of mapped files differ
/// from every earlier one's: nginx's workers are their master; a process
/// given another copy of a library with LD_LIBRARY_PATH, or still running a
/// replaced one, is not. (A process whose exe is unreadable is kept.)
pub fn distinct_programs(pids: impl IntoIterator<Item = u32>) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    pids.into_iter()
        .filter(|pid| {
            let Ok(exe) = std::fs::metadata(format!("/proc/{pid}/exe")).map(|m| (m.dev(), m.ino())) else { return true };
            let files: std::collections::BTreeSet<String> =
                target_maps(*pid).into_iter().map(|m| m.path).filter(|p| p.starts_with('/')).collect();
            seen.insert((exe, files))
        })
        .collect()
}

/// A preset resolved in every target running a program of its own (-p
/// REDIS -p NGINX --preset redis --preset nginx), `pids` from
/// [`distinct_programs`]. It fails only when it matches in none, with the
/// first target's reasons.
pub fn resolve_preset(name: &str, pids: &[u32]) -> Result<Vec<Resolved>, Error> {
    let specs = preset(name).ok_or_else(|| Error::Usage(format!("--preset {name}: no such preset (one of {})", PRESETS.join(", "))))?;
    let (mut out, mut first_err) = (Vec::new(), None);
    for &pid in pids {
        match resolve(&specs, Some(pid), true) {
            Ok(r) => out.extend(r),
            Err(e) => {
                first_err.get_or_insert((pid, e));
            }
        }
    }
    match (out.is_empty(), first_err) {
        (false, _) => Ok(out),
        (true, Some((pid, Error::Usage(m)))) if pids.len() == 1 => Err(Error::Usage(format!("--preset {name} (looked up in pid {pid}): {m}"))),
        (true, Some((pid, Error::Usage(m)))) => {
            let tried: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
            Err(Error::Usage(format!("--preset {name} (looked up in pids {}; pid {pid}'s reasons): {m}", tried.join(", "))))
        }
        (true, Some((_, e))) => Err(e),
        (true, None) => Err(Error::Usage(format!(
            "--preset {name}: a preset is looked up in a running target's program and libraries (-p PID, -t TID or -c COMM); with --wait, give its probes with the file's path in place of `exe` or the library name (--handler /usr/bin/x:GLOB...): {}",
            specs.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Resolve specs into symbols to attach. `tolerant`: a spec matching
/// nothing, or whose binary is not found, is fine as long as one spec
/// matched (presets).
pub fn resolve(specs: &[HandlerSpec], pid: Option<u32>, tolerant: bool) -> Result<Vec<Resolved>, Error> {
    let mut out: Vec<Resolved> = Vec::new();
    let mut misses: Vec<String> = Vec::new();
    for spec in specs {
        let path = match resolve_binary(&spec.binary, pid) {
            Ok(p) => p,
            Err(Error::Usage(m)) if tolerant => {
                misses.push(m);
                continue;
            }
            Err(e) => return Err(e),
        };
        let funcs = functions(&path)?;
        let before = out.len();
        let mut last_off = None;
        for (raw, dem, off) in &funcs {
            if last_off != Some(*off) && (spec.glob.matches(raw) || spec.glob.matches(dem)) {
                last_off = Some(*off);
                // Per glob here: symbols two globs share are merged before
                // the total is checked (main).
                if out.len() - before >= MAX_HANDLERS {
                    return Err(Error::Usage(format!("--handler {spec}: more than 256 symbols match: narrow the glob")));
                }
                out.push(Resolved {
                    id: out.len() as u32,
                    path: path.clone(),
                    name: dem.clone(),
                    offset: *off,
                    fd_arg: spec.fd_arg,
                    events_arg: spec.events_arg,
                    decoder: spec.decoder,
                    spec: spec.to_string(),
                });
            }
        }
        if out.len() == before {
            let near = closest(&spec.glob, &funcs);
            let hint = if funcs.is_empty() {
                " (the binary is stripped: it has no function symbols)".to_string()
            } else if near.is_empty() {
                String::new()
            } else {
                format!("; closest: {}", near.join(", "))
            };
            misses.push(format!(
                "--handler {spec}: no function of {} matches {:?} ({} function symbols searched){hint}",
                path.display(),
                spec.glob.as_str(),
                funcs.len()
            ));
        }
    }
    if !misses.is_empty() && (!tolerant || out.is_empty()) {
        return Err(Error::Usage(misses.join("; ")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_named_twice_is_probed_once() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let link = f.path().with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(f.path(), &link).unwrap();
        let h = |path: &Path, offset: u64, fd: Option<u8>, spec: &str| Resolved {
            id: 9,
            path: path.to_path_buf(),
            name: "acceptTcpHandler".into(),
            offset,
            fd_arg: fd,
            events_arg: None,
            decoder: Decoder::Raw,
            spec: spec.into(),
        };
        // The same file by two names, the same offset: once; another offset: twice.
        let m = merge(vec![h(f.path(), 0x10, Some(1), "a"), h(&link, 0x10, Some(1), "b"), h(f.path(), 0x20, Some(1), "c")]).unwrap();
        assert_eq!(m.iter().map(|h| (h.id, h.offset, h.spec.as_str())).collect::<Vec<_>>(), [(0, 0x10, "a"), (1, 0x20, "c")]);
        let e = merge(vec![h(f.path(), 0x10, Some(1), "a"), h(&link, 0x10, Some(2), "b")]).unwrap_err().to_string();
        assert!(e.contains("probed as a and as b with other arguments"), "{e}");
        let _ = std::fs::remove_file(&link);
    }

    #[test]
    fn globs() {
        let g = Glob::new("*FileEventImpl*assignEvents*").unwrap();
        assert!(g.matches("Envoy::Event::FileEventImpl::assignEvents(unsigned int, event_base*)::$_1::__invoke(int, short, void*)"));
        assert!(!g.matches("Envoy::Event::FileEventImpl::activate(unsigned int)"));
        assert!(Glob::new("accept?cpHandler").unwrap().matches("acceptTcpHandler"));
        assert!(Glob::new("read[QR]uery*").unwrap().matches("readQueryFromClient"));
        assert!(!Glob::new("read[!Q]uery*").unwrap().matches("readQueryFromClient"));
        assert!(Glob::new("a[a-c]z").unwrap().matches("abz"));
        assert!(Glob::new("x\\*").unwrap().matches("x*"));
        assert!(Glob::new("abc[").is_err());
        assert!(Glob::new("").is_err());
        assert!(Glob::new("**a**").unwrap().matches("xxa"));
    }

    #[test]
    fn specs_with_cpp_colons() {
        let s: HandlerSpec = "exe:*FileEventImpl::assignEvents*::_FUN*:fd=arg0:events=arg1/libevent".parse().unwrap();
        assert_eq!(s.binary, "exe");
        assert_eq!(s.glob.as_str(), "*FileEventImpl::assignEvents*::_FUN*");
        assert_eq!((s.fd_arg, s.events_arg, s.decoder), (Some(0), Some(1), Decoder::Libevent));
        assert_eq!(s.to_string(), "exe:*FileEventImpl::assignEvents*::_FUN*:fd=arg0:events=arg1/libevent");
        let s: HandlerSpec = "/usr/bin/redis-server:readQueryFromClient".parse().unwrap();
        assert_eq!((s.fd_arg, s.events_arg), (None, None));
        assert!("exe".parse::<HandlerSpec>().is_err());
        assert!("exe:f:fd=arg9".parse::<HandlerSpec>().is_err());
        assert!("exe:f:events=arg1/zzz".parse::<HandlerSpec>().is_err());
        assert!("exe:f:fd=arg1:fd=arg2".parse::<HandlerSpec>().unwrap_err().contains("fd= given twice"));
        assert!("exe:f:events=arg1:events=arg2/ae".parse::<HandlerSpec>().unwrap_err().contains("events= given twice"));
        assert!("exe:f[".parse::<HandlerSpec>().unwrap_err().contains("unclosed"));
        // A misspelt field is not taken for part of the glob.
        assert!("exe:f:foo=bar".parse::<HandlerSpec>().unwrap_err().contains("unknown field foo=bar"));
        assert!("exe:f:fd=arg0:event=arg1".parse::<HandlerSpec>().unwrap_err().contains("unknown field event=arg1"));
        let s: HandlerSpec = "exe:*Conn::operator=".parse().unwrap();
        assert_eq!(s.glob.as_str(), "*Conn::operator=");
        let s: HandlerSpec = "exe:*Addr::operator==:fd=arg1".parse().unwrap();
        assert_eq!((s.glob.as_str(), s.fd_arg), ("*Addr::operator==", Some(1)));
    }

    #[test]
    fn presets_probe_what_their_servers_define() {
        // (binary, function glob, fd arg, events arg, decoder) of each spec.
        type Row = (String, String, Option<u8>, Option<u8>, Decoder);
        let rows = |name: &str| -> Vec<Row> {
            let specs = preset(name).unwrap_or_else(|| panic!("preset {name}"));
            specs.iter().map(|s| (s.binary.clone(), s.glob.as_str().to_string(), s.fd_arg, s.events_arg, s.decoder)).collect()
        };
        let row = |b: &str, g: &str, fd: Option<u8>, ev: Option<u8>, d: Decoder| -> Row { (b.into(), g.into(), fd, ev, d) };
        assert_eq!(
            rows("envoy"),
            [
                row("exe", "*FileEventImpl::assignEvents*::_FUN*", Some(0), Some(1), Decoder::Libevent),
                row("exe", "*FileEventImpl::assignEvents*::__invoke*", Some(0), Some(1), Decoder::Libevent),
            ]
        );
        assert_eq!(
            rows("redis"),
            [row("exe", "acceptTcpHandler", Some(1), Some(3), Decoder::Ae), row("exe", "readQueryFromClient", None, None, Decoder::Raw)]
        );
        let nginx: Vec<Row> = ["ngx_event_accept", "ngx_http_init_connection", "ngx_http_process_request"]
            .into_iter()
            .map(|f| row("exe", f, None, None, Decoder::Raw))
            .collect();
        assert_eq!(rows("nginx"), nginx);
        let libevent: Vec<Row> = ["libevent", "libevent_core", "exe"]
            .into_iter()
            .map(|b| row(b, "event_active_nolock_", None, Some(1), Decoder::Libevent))
            .collect();
        assert_eq!(rows("memcached"), libevent);
        assert_eq!(rows("libevent"), libevent);
        assert_eq!(PRESETS.len(), 5, "every preset is checked above");
        assert!(preset("apache").is_none());
    }

    #[test]
    fn decoders() {
        assert_eq!(Decoder::Libevent.decode(0x22), "EV_READ|EV_ET");
        assert_eq!(Decoder::Libevent.decode(0x2), "EV_READ");
        assert_eq!(Decoder::Ae.decode(1), "AE_READABLE");
        assert_eq!(Decoder::Ae.decode(0x11), "AE_READABLE|0x10");
        assert_eq!(Decoder::Raw.decode(255), "0xff");
        assert_eq!(Decoder::Epoll.decode(0x2001), "EPOLLIN|EPOLLRDHUP");
    }

    /// A function the test binary surely keeps (a test fn itself may be inlined).
    #[inline(never)]
    fn netdrift_own_symbol_marker(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    #[test]
    fn demangles_and_reads_own_symbols() {
        assert_ne!(netdrift_own_symbol_marker(std::hint::black_box(1)), 0);
        assert_eq!(demangle("_ZN5Envoy5Event13FileEventImpl12assignEventsEj"), "Envoy::Event::FileEventImpl::assignEvents(unsigned int)");
        assert_eq!(demangle("plain_c"), "plain_c");
        let me = std::env::current_exe().unwrap();
        let f = functions(&me).unwrap();
        assert!(f.iter().any(|(_, d, _)| d.contains("netdrift_own_symbol_marker")), "test binary has its own symbols");
        let err = functions(Path::new("/proc/self/status")).unwrap_err().to_string();
        assert!(err.contains("not an ELF"), "{err}");
    }

    /// glibc's read and __read share an offset: either name matches, and
    /// the function is probed once.
    #[test]
    fn an_alias_matches_and_is_probed_once() {
        let me = Some(std::process::id());
        for glob in ["read", "__read"] {
            let spec: HandlerSpec = format!("libc:{glob}").parse().unwrap();
            let r = resolve(std::slice::from_ref(&spec), me, false).unwrap_or_else(|e| panic!("{glob}: {e}"));
            assert_eq!(r.len(), 1, "{glob}: {r:?}");
            assert_eq!(r[0].name, glob);
        }
        let spec: HandlerSpec = "libc:*read".parse().unwrap();
        let r = resolve(&[spec], me, false).unwrap();
        let mut offs: Vec<u64> = r.iter().map(|h| h.offset).collect();
        offs.dedup();
        assert_eq!(offs.len(), r.len(), "one probe per function: {r:?}");
    }

    /// The limit counts distinct symbols: two globs over the same ~190
    /// functions are not "more than 256".
    #[test]
    fn the_symbol_limit_counts_each_symbol_once() {
        let me = Some(std::process::id());
        let one = resolve(&["libc:g*".parse().unwrap()], me, false).unwrap();
        assert!(one.len() > MAX_HANDLERS / 2 && one.len() <= MAX_HANDLERS, "libc's g* should match 129-256 functions: {}", one.len());
        let specs: Vec<HandlerSpec> = ["libc:g*", "libc:[g]*"].iter().map(|s| s.parse().unwrap()).collect();
        let both = merge(resolve(&specs, me, false).expect("each glob is within the limit")).unwrap();
        assert_eq!(both.len(), one.len());
    }

    /// A path the target maps only as it was before a replacement is
    /// refused, as a library name is: probes on the new file never fire.
    #[test]
    fn a_path_replaced_under_the_target_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("sl");
        std::fs::copy("/bin/sleep", &bin).unwrap();
        let mut child = std::process::Command::new(&bin).arg("30").spawn().unwrap();
        let pid = Some(child.id());
        let path = bin.to_str().unwrap();
        // Wait until it runs the copy (exec done).
        for _ in 0..200 {
            if target_maps(child.id()).iter().any(|m| m.path == path) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(resolve_binary(path, pid).is_ok(), "the file it runs");
        let new = d.path().join("new");
        std::fs::copy("/bin/sleep", &new).unwrap();
        std::fs::rename(&new, &bin).unwrap();
        let e = resolve_binary(path, pid).unwrap_err().to_string();
        let _ = child.kill();
        let _ = child.wait();
        assert!(e.contains("replaced on disk"), "{e}");
    }

    /// A container's absolute link resolves inside its root, not the host's.
    #[test]
    fn paths_resolve_inside_the_targets_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("usr/local/bin/envoy"), "x").unwrap();
        std::os::unix::fs::symlink("/usr/local/bin/envoy", root.join("usr/bin/envoy")).unwrap();
        std::os::unix::fs::symlink("usr", root.join("opt")).unwrap();
        std::os::unix::fs::symlink("/loop", root.join("loop")).unwrap();
        let want = Some(root.join("usr/local/bin/envoy"));
        assert_eq!(in_root(root, "/usr/bin/envoy"), want);
        assert_eq!(in_root(root, "/opt/bin/../local/bin/envoy"), want);
        assert_eq!(in_root(root, "/opt/bin/envoy"), want);
        assert_eq!(in_root(root, "/usr/bin/missing"), None);
        assert_eq!(in_root(root, "/loop/x"), None);
    }

    /// A host path is taken for a target only when the target maps that
    /// very file; a /proc path is taken as given.
    #[test]
    fn a_host_path_counts_only_if_the_target_maps_it() {
        let me = std::process::id();
        let exe = std::env::current_exe().unwrap();
        assert!(maps_file(me, &exe));
        assert!(!maps_file(me, Path::new("/etc/hostname")));
        let p = format!("/proc/{me}/exe");
        assert_eq!(resolve_binary(&p, Some(me)).unwrap(), PathBuf::from(&p));
    }
}
