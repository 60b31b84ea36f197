//! Finding (and if need be mounting) tracefs.
//!
//! Classic tracepoints (`SEC("tracepoint/syscalls/...")`) are attached by
//! libbpf through the event id in `<tracefs>/events/<category>/<name>/id`, so
//! they need tracefs mounted. `tp_btf` and `raw_tp` programs name their
//! tracepoint through BTF and do not.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where tracefs is mounted on current kernels.
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// Where debugfs exposes tracefs (older systems, and when debugfs is mounted).
pub const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// The mounted tracefs directory: `/sys/kernel/tracing` if it has `events/`,
/// else `/sys/kernel/debug/tracing` if that has `events/`, else `None`.
pub fn tracefs_dir() -> Option<PathBuf> {
    [TRACEFS, DEBUGFS_TRACING].iter().map(Path::new).find(|dir| dir.join("events").is_dir()).map(Path::to_path_buf)
}

/// Where tracefs is mounted, from /proc/self/mounts (readable by anyone).
pub fn tracefs_mount() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"tracefs")).then(|| f.get(1).map(|s| s.to_string())).flatten()
    })
}

/// The tracefs directory, mounting tracefs at `/sys/kernel/tracing` first if
/// no tracefs is mounted. Mounting needs CAP_SYS_ADMIN.
pub fn ensure_tracefs() -> Result<PathBuf> {
    if let Some(dir) = tracefs_dir() {
        return Ok(dir);
    }
    if let Some(at) = tracefs_mount() {
        // Mounted, but its events/ is not this user's to read (mode 0700).
        return Err(Error::Privilege(format!(
            "tracefs is mounted at {at} but this user cannot read it: run netdrift as root (or add CAP_DAC_READ_SEARCH)"
        )));
    }
    let how = format!("mount it by hand with `mount -t tracefs nodev {TRACEFS}`");
    if !Path::new(TRACEFS).is_dir() {
        return Err(Error::Feature(format!("tracefs is not mounted and {TRACEFS} does not exist (is sysfs mounted at /sys?): {how}")));
    }
    let source = CString::new("nodev").expect("literal has no NUL");
    let target = CString::new(TRACEFS).expect("literal has no NUL");
    let fstype = CString::new("tracefs").expect("literal has no NUL");
    // SAFETY: the three pointers come from live, NUL-terminated CStrings that
    // outlive the call; tracefs takes no mount data, so NULL is allowed.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(Error::Feature(format!("tracefs is not mounted and mounting it at {TRACEFS} failed ({err}): {how}")));
    }
    if Path::new(TRACEFS).join("events").is_dir() {
        Ok(PathBuf::from(TRACEFS))
    } else {
        Err(Error::Feature(format!(
            "mounted tracefs at {TRACEFS} but it has no events/ directory \
             (kernel built without CONFIG_EVENT_TRACING?)"
        )))
    }
}

/// Whether the classic tracepoint `<category>:<name>` exists in the mounted
/// tracefs (`events/<category>/<name>/id`). False when tracefs is not mounted.
pub fn has_tracepoint(category: &str, name: &str) -> bool {
    tracefs_dir().is_some_and(|dir| dir.join("events").join(category).join(name).join("id").is_file())
}
