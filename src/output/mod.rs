//! Renderers, one module per format, and the escaping every format needs:
//! comm names, paths and symbols come from the traced system.

pub mod html;
pub mod json;
pub mod perfetto;
pub mod text;

/// Where an output file is written until it is complete: `PATH.partial`,
/// renamed to PATH at the end, so a file at PATH is never half-written.
pub fn partial_path(p: &std::path::Path) -> std::path::PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".partial");
    std::path::PathBuf::from(s)
}

/// What an uncommitted [`PartialFile`] leaves when dropped (the run failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDrop {
    /// `PATH.partial` stays, with what was written: clearly marked incomplete.
    Keep,
    /// It is removed: an output written only at the end has nothing worth keeping.
    Remove,
}

/// An output file written as `PATH.partial` and renamed to PATH by
/// [`PartialFile::commit`] only, so a file at PATH is never half-written.
/// A PATH that exists and is not a regular file (/dev/null, a FIFO,
/// /dev/stdout) is written in place: renaming over it would replace it.
/// A symbolic link is followed: the file it names is the one replaced.
pub struct PartialFile {
    /// As the user gave it: for messages.
    path: std::path::PathBuf,
    /// The file written: `path` with its symbolic links followed.
    target: std::path::PathBuf,
    w: Option<std::io::BufWriter<std::fs::File>>,
    on_drop: OnDrop,
    /// Written in place (not a regular file): nothing to rename or remove.
    in_place: bool,
}

/// The file an output to PATH goes to, and whether it is written in place.
/// In place: a device, FIFO or socket (a rename would replace it), or an
/// open file named through /proc/PID/fd or /dev/fd (`/dev/stdout` into a
/// shell's `> out.txt`: a rename would leave the shell's file empty and put a
/// regular file where the link was). Other symbolic links are followed, so
/// the rename replaces the file they name and leaves the link.
pub fn output_target(path: &std::path::Path) -> (std::path::PathBuf, bool) {
    let mut p = path.to_path_buf();
    // As many links as the kernel follows (MAXSYMLINKS).
    for _ in 0..40 {
        if is_fd_path(&p) {
            return (p, true);
        }
        match std::fs::symlink_metadata(&p) {
            // /proc's other links (root, cwd, exe) name no path read_link can give back.
            Ok(m) if m.file_type().is_symlink() && !p.starts_with("/proc") => match std::fs::read_link(&p) {
                Ok(to) => p = p.parent().map(|d| d.join(&to)).unwrap_or(to),
                Err(_) => return (p, false),
            },
            Ok(m) => return (p, !m.is_file() && !m.is_dir() && !m.file_type().is_symlink()),
            Err(_) => return (p, false),
        }
    }
    // A loop of links (refused before the run by `check_file_path`).
    (path.to_path_buf(), false)
}

/// The fd N of a resolved output path ([`output_target`]) naming one of
/// this process's own open files (/proc/self/fd/N, /proc/PID/fd/N with our
/// pid, /dev/fd/N; /dev/stderr leads to one), if it is open.
pub fn own_fd(target: &std::path::Path) -> Option<i32> {
    let (n, mine) = fd_path(target)?;
    let fd: i32 = n.parse().ok()?;
    (mine && std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists()).then_some(fd)
}

/// An open file named through a process's fd table: /proc/PID/fd/N (also
/// `self`, `thread-self`, /proc/PID/task/TID/fd/N) or /dev/fd/N.
fn is_fd_path(p: &std::path::Path) -> bool {
    fd_path(p).is_some()
}

/// For [`is_fd_path`]: the fd number's text, and whether the fd table is
/// this process's own (/dev/fd, /proc/self|thread-self|OUR_PID/fd).
fn fd_path(p: &std::path::Path) -> Option<(&str, bool)> {
    let c: Vec<&str> = p.components().filter_map(|c| c.as_os_str().to_str()).collect();
    let num = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let who = |s: &str| num(s) || s == "self" || s == "thread-self";
    let mine = |s: &str| s == "self" || s == "thread-self" || s == std::process::id().to_string();
    let (n, own) = match c.as_slice() {
        ["/", "dev", "fd", n] => (*n, true),
        ["/", "proc", w, "fd", n] if who(w) => (*n, mine(w)),
        ["/", "proc", w, "task", t, "fd", n] if who(w) && num(t) => (*n, false),
        _ => return None,
    };
    num(n).then_some((n, own))
}

/// Open an output written in place, for appending. A FIFO with no reader
/// yet is waited for, with a line saying so, and a signal ends the wait
/// (`Interrupted`): a blocking open would say nothing and outlast Ctrl-C.
pub fn open_in_place(p: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    if !std::fs::metadata(p).is_ok_and(|m| m.file_type().is_fifo()) {
        return std::fs::OpenOptions::new().append(true).open(p);
    }
    let mut said = false;
    loop {
        match std::fs::OpenOptions::new().append(true).custom_flags(libc::O_NONBLOCK).open(p) {
            Ok(f) => {
                // Writes then wait for the reader, as on any pipe.
                // SAFETY: fcntl on an fd this File owns, open across the calls.
                unsafe {
                    let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
                    libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
                }
                return Ok(f);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if crate::trace::signalled() {
                    return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted while waiting for its reader"));
                }
                if !said {
                    eprintln!("netdrift: waiting for a reader of the FIFO {} (Ctrl-C stops)", term_safe(&p.display().to_string()));
                    said = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

impl PartialFile {
    pub fn create(path: &std::path::Path, on_drop: OnDrop) -> crate::error::Result<Self> {
        let err = |e| crate::error::Error::Output { path: path.to_path_buf(), source: e };
        let (target, in_place) = output_target(path);
        let f = if in_place {
            // Appending: a shell's `>> log` behind /dev/stdout keeps its start.
            open_in_place(&target).map_err(err)?
        } else {
            // The error names the file that could not be made.
            let partial = partial_path(&target);
            std::fs::File::create(&partial).map_err(|e| crate::error::Error::Output { path: partial_path(path), source: e })?
        };
        Ok(PartialFile { path: path.to_path_buf(), target, w: Some(std::io::BufWriter::with_capacity(1 << 16, f)), on_drop, in_place })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Flush and rename to PATH.
    pub fn commit(mut self) -> crate::error::Result<()> {
        let err = |path: &std::path::Path, e| crate::error::Error::write(path, e);
        let w = self.w.take().ok_or_else(|| err(&self.path, std::io::Error::other("already committed")))?;
        let f = w.into_inner().map_err(|e| err(&self.path, e.into_error()))?;
        if self.in_place {
            return Ok(());
        }
        // On disk before it takes the final name: a full disk or quota can
        // show only here (NFS), and a crash must not leave an empty PATH.
        f.sync_all().map_err(|e| err(&self.path, e))?;
        drop(f);
        std::fs::rename(partial_path(&self.target), &self.target).map_err(|e| err(&self.path, e))
    }

    /// Remove `PATH.partial` now (the run failed before writing anything).
    pub fn discard(mut self) {
        self.w = None;
        if !self.in_place {
            let _ = std::fs::remove_file(partial_path(&self.target));
        }
    }
}

impl std::fmt::Debug for PartialFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PartialFile({}, open: {})", self.path.display(), self.w.is_some())
    }
}

impl PartialFile {
    /// A write error names the file and the fix (a full disk during a trace).
    fn named(&self, e: std::io::Error) -> std::io::Error {
        std::io::Error::new(e.kind(), crate::error::Error::Write { path: self.path.clone(), source: e })
    }
}

impl std::io::Write for PartialFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.w.as_mut().ok_or_else(|| std::io::Error::other("committed"))?.write(buf);
        r.map_err(|e| self.named(e))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.w.as_mut().map_or(Ok(()), |w| w.flush());
        r.map_err(|e| self.named(e))
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Some(mut w) = self.w.take() {
            if self.on_drop == OnDrop::Remove && !self.in_place {
                drop(w);
                let _ = std::fs::remove_file(partial_path(&self.target));
            } else {
                let _ = std::io::Write::flush(&mut w);
            }
        }
    }
}

/// Characters a name from the traced system must not carry to a reader
/// as they are: controls (C0, DEL, C1: escape sequences), the invisible
/// format characters that reorder or hide text (bidi marks, overrides and
/// isolates, zero-width ones, soft hyphen, line/paragraph separators, BOM,
/// tag characters), and U+FFFE/U+FFFF, which XML (an SVG) refuses.
pub fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{ad}'
                | '\u{61c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{fffe}'
                | '\u{ffff}'
                | '\u{e0000}'..='\u{e007f}'
        )
}

/// A string from the traced system, safe for a terminal: control and
/// invisible format characters (see [`invisible`]) become `\xNN` / `\u{..}`,
/// and a backslash `\\`, so a name spelling `\x1b` cannot pass for one
/// holding an escape.
pub fn term_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || invisible(c)) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if invisible(c) {
            if (c as u32) < 0x100 {
                out.push_str(&format!("\\x{:02x}", c as u32));
            } else {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// How a chain's socket event reads in the text and HTML chains.
pub(crate) fn ready_what(s: &crate::analysis::ChainSock) -> String {
    use crate::events::ReadyHook;
    match s.hook {
        ReadyHook::SkDataReady | ReadyHook::EpollItem | ReadyHook::Accept | ReadyHook::IoWait => "socket ready".to_string(),
        ReadyHook::InetSockSetState => format!("state -> {}", s.sock.state_name()),
    }
}

/// A hop's time off CPU in the middle of handling, for the text and HTML
/// chains: (times, what, ns, why), each shown when times > 0.
pub(crate) fn off_cpu(h: &crate::analysis::Hop) -> [(u32, &'static str, u64, &'static str); 2] {
    [
        (h.preemptions, "preempted", h.preempted_ns, "waiting for a CPU again (involuntary switches)"),
        (h.blocked, "blocked", h.blocked_ns, "off CPU while handling (a lock or a blocking call)"),
    ]
}

/// A duration in ns as a short human string: 812ns, 12.3us, 4.56ms, 1.234s.
pub fn dur(ns: u64) -> String {
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}us", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", ns as f64 / 1e6)
    } else {
        format!("{:.3}s", ns as f64 / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a process's fd table is written through; other /proc paths
    /// (a process's root or cwd) are ordinary files, written as FILE.partial.
    #[test]
    fn only_fd_paths_are_written_in_place() {
        for p in ["/proc/self/fd/1", "/proc/123/fd/4", "/proc/thread-self/fd/2", "/proc/1/task/7/fd/3", "/dev/fd/9", "/dev/stdout"] {
            assert!(output_target(std::path::Path::new(p)).1, "{p}");
        }
        let d = tempfile::tempdir().unwrap();
        let via_cwd = std::path::Path::new("/proc/self/root").join(d.path().strip_prefix("/").unwrap()).join("out.json");
        assert_eq!(output_target(&via_cwd), (via_cwd.clone(), false));
        assert!(!output_target(std::path::Path::new("/proc/self/fdx/1")).1);
        assert!(output_target(std::path::Path::new("/dev/null")).1);
    }
    use std::io::Write;
    use std::os::unix::fs::FileTypeExt;
    use std::path::Path;

    #[test]
    fn a_directory_in_the_way_of_the_partial_file_is_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("x.json.partial")).unwrap();
        let Err(e) = PartialFile::create(&d.path().join("x.json"), OnDrop::Keep) else { panic!("a directory is in the way") };
        let m = e.to_string();
        assert!(m.starts_with(&format!("cannot write {}/x.json.partial (a directory is in the way", d.path().display())), "{m}");
    }

    #[test]
    fn a_device_or_fifo_is_written_in_place_never_replaced() {
        // `-o /dev/null` once renamed /dev/null.partial over the device.
        for on_drop in [OnDrop::Keep, OnDrop::Remove] {
            let mut f = PartialFile::create(Path::new("/dev/null"), on_drop).expect("open /dev/null");
            f.write_all(b"{}\n").unwrap();
            f.commit().expect("commit");
            assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device(), "/dev/null is still the device");
            assert!(!Path::new("/dev/null.partial").exists());
            drop(PartialFile::create(Path::new("/dev/null"), on_drop).expect("open /dev/null"));
            assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
        }
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
        };
        let mut f = PartialFile::create(&fifo, OnDrop::Keep).expect("open the fifo");
        f.write_all(b"through the pipe\n").unwrap();
        f.commit().expect("commit");
        assert_eq!(reader.join().unwrap(), "through the pipe\n");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        assert!(!partial_path(&fifo).exists());
    }

    #[test]
    fn strips_escape_sequences() {
        assert_eq!(term_safe("\x1b[31mred\x07"), "\\x1b[31mred\\x07");
        assert_eq!(term_safe("plain <b>"), "plain <b>");
        assert_eq!(term_safe("a\u{9b}b"), "a\\x9bb");
        // A name spelling an escape is told apart from one holding it.
        assert_eq!(term_safe("\\x1b[31m"), "\\\\x1b[31m");
        assert_ne!(term_safe("\\x1b"), term_safe("\x1b"));
    }

    #[test]
    fn durations() {
        assert_eq!(dur(812), "812ns");
        assert_eq!(dur(12_345), "12.3us");
        assert_eq!(dur(4_560_000), "4.56ms");
        assert_eq!(dur(1_234_000_000), "1.234s");
    }

    #[test]
    fn partial_file_is_renamed_only_on_commit() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = |n: &str| dir.path().join(n);
        let exists = |n: &str| path(n).exists();

        let mut f = PartialFile::create(&path("a"), OnDrop::Keep).unwrap();
        f.write_all(b"x").unwrap();
        assert!(exists("a.partial") && !exists("a"));
        f.commit().unwrap();
        assert!(!exists("a.partial") && std::fs::read(path("a")).unwrap() == b"x");

        // A failed run: Keep leaves what was written, marked partial; Remove leaves nothing.
        let mut f = PartialFile::create(&path("b"), OnDrop::Keep).unwrap();
        f.write_all(b"half").unwrap();
        drop(f);
        assert_eq!(std::fs::read(path("b.partial")).unwrap(), b"half");
        assert!(!exists("b"));
        drop(PartialFile::create(&path("c"), OnDrop::Remove).unwrap());
        assert!(!exists("c.partial") && !exists("c"));
        PartialFile::create(&path("d"), OnDrop::Keep).unwrap().discard();
        assert!(!exists("d.partial") && !exists("d"));
    }
}
