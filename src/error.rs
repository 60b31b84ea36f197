//! Error kinds of the library. The binary adds context with anyhow and
//! prints `{:#}`; `exit_code` maps a kind to the process exit status.

use std::path::PathBuf;

/// What [`Error::NotPrivileged`] says, and doctor with it.
pub const NEED_ROOT: &str = "netdrift needs root: run it with sudo (CAP_BPF and CAP_PERFMON load its programs; kernel addresses in /proc/kallsyms, tracefs and other users' /proc/PID/fd also take CAP_SYSLOG, CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE)";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command-line input: exit code 2.
    #[error("{0}")]
    Usage(String),
    #[error("no process with pid {0} (check the pid with `ps -p {0}`)")]
    NoSuchPid(u32),
    #[error("no thread with tid {0} (check it with `ls /proc/*/task/{0}`)")]
    NoSuchTid(u32),
    #[error("no running process or thread is named {0:?} (names are the 15-byte comm shown by `ps -eo comm` / `ps -eLo comm`; add --wait to trace one started later)")]
    NoSuchComm(String),
    #[error("{}", NEED_ROOT)]
    NotPrivileged,
    /// Allowed to load the programs, not to read what they need (exit code 2).
    #[error("{0}")]
    Privilege(String),
    #[error(
        "{0}: the kernel's programs see the host's pids, not these; run netdrift in the host's pid namespace with its /proc (docker run --pid=host, Kubernetes hostPID: true)"
    )]
    PidNamespace(String),
    #[error("this kernel has no BTF at /sys/kernel/btf/vmlinux: build it with CONFIG_DEBUG_INFO_BTF=y (netdrift needs BTF for CO-RE and tp_btf)")]
    NoBtf,
    /// An output refused before the run (exit code 2).
    #[error("cannot write {} ({})", path.display(), output_hint(path, source))]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An output that failed during or at the end of the run (a full disk).
    #[error("cannot write {} ({})", path.display(), output_hint(path, source))]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel feature missing: {0}")]
    Feature(String),
    #[error("BPF: {0}")]
    Bpf(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What to do about an output that cannot be written.
fn output_hint(path: &std::path::Path, e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => "free space there, or give that output a path on another file system",
        Some(libc::EISDIR) if path.as_os_str().as_encoded_bytes().ends_with(b".partial") => {
            "a directory is in the way of the file written until the run ends: remove it or give another name"
        }
        Some(libc::EISDIR) => "it is a directory: give a file name",
        // No file can be made there: a chattr hint would mislead.
        Some(_) if path.starts_with("/proc") || path.starts_with("/sys") => "/proc and /sys take no new files: give a path on a real file system",
        Some(libc::EPERM) => {
            "it or its directory is immutable or append-only (lsattr; chattr -i / -a clears that), or it is another user's file in a sticky directory such as /tmp: give another path"
        }
        _ if e.kind() == std::io::ErrorKind::Interrupted => "Ctrl-C or SIGTERM before its reader came: nothing was traced",
        Some(libc::ELOOP) => "its symbolic links lead back to themselves: remove the loop or give another path",
        _ => "give that output a path in a writable directory",
    }
}

impl Error {
    /// A failed write to the output at `path`: the error a [`PartialFile`]
    /// write already made (it names the file and the fix), or one made here.
    ///
    /// [`PartialFile`]: crate::output::PartialFile
    pub fn write(path: &std::path::Path, e: std::io::Error) -> Error {
        if !e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            return Error::Write { path: path.to_path_buf(), source: e };
        }
        match e.into_inner().map(|b| b.downcast::<Error>()) {
            Some(Ok(inner)) => *inner,
            // Not reached: checked to be an Error above.
            _ => Error::Write { path: path.to_path_buf(), source: std::io::Error::other("write failed") },
        }
    }

    /// Exit code for this error: 2 for what the user can fix on the command line.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_)
            | Error::NoSuchPid(_)
            | Error::NoSuchTid(_)
            | Error::NoSuchComm(_)
            | Error::NotPrivileged
            | Error::Privilege(_)
            | Error::PidNamespace(_)
            | Error::Output { .. } => 2,
            _ => 1,
        }
    }
}

impl From<libbpf_rs::Error> for Error {
    fn from(e: libbpf_rs::Error) -> Self {
        Error::Bpf(format!("{e:#}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
