//! /proc readers: targets, sockets held by fd, epoll registrations.
//!
//! Parsers take the text so they are tested without a live /proc.

use std::fs;
use std::path::Path;

/// Does /proc know this pid or tid?
pub fn task_exists(id: u32) -> bool {
    id != 0 && Path::new(&format!("/proc/{id}")).exists()
}

/// Start time of a process, field 22 of /proc/PID/stat.
pub fn start_time(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_start_time(&s)
}

/// Field 22 (starttime) of the text of /proc/PID/stat; comm may hold spaces and parens.
pub fn stat_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Is the thread alive (not gone, not a zombie)?
pub fn alive(tid: u32) -> bool {
    stat_alive(&format!("/proc/{tid}/stat")) == Some(true)
}

/// Is the process alive: a thread of it not gone nor a zombie? A leader that
/// called pthread_exit stays a zombie while the other threads run on.
pub fn process_alive(pid: u32) -> bool {
    match stat_alive(&format!("/proc/{pid}/stat")) {
        Some(true) => true,
        None => false,
        Some(false) => fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|d| {
            d.flatten().any(|e| stat_alive(&format!("/proc/{pid}/task/{}/stat", e.file_name().to_string_lossy())) == Some(true))
        }),
    }
}

/// From a stat file: alive, zombie/dead, or gone (None).
fn stat_alive(path: &str) -> Option<bool> {
    let s = fs::read_to_string(path).ok()?;
    let st = s.rfind(')').and_then(|i| s[i + 1..].split_whitespace().next())?;
    Some(st != "Z" && st != "X")
}

/// Thread group id of a task, from /proc/ID/status.
pub fn tgid_of(tid: u32) -> Option<u32> {
    let s = fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status_field(&s, "Tgid")
}

/// A numeric field of /proc/ID/status.
pub fn status_field(status: &str, key: &str) -> Option<u32> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The threads of a process.
pub fn threads(pid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// comm of a thread (or of a process, when tid == pid).
pub fn comm(pid: u32, tid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok().map(|s| s.trim_end_matches('\n').to_string())
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc").map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()).unwrap_or_default()
}

/// Is the task a kernel thread (PF_KTHREAD in /proc/PID/stat's flags)?
pub fn is_kthread(tid: u32) -> Option<bool> {
    let stat = fs::read_to_string(format!("/proc/{tid}/stat")).ok()?;
    let flags: u64 = stat[stat.rfind(')')? + 1..].split_whitespace().nth(6)?.parse().ok()?;
    Some(flags & 0x0020_0000 != 0)
}

/// Parent pid from the text of /proc/PID/stat (comm may hold spaces and parens).
pub fn stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Processes started at or after `since` (ticks after boot, as
/// /proc/PID/stat's starttime) that descend from one of `parents` through
/// such processes (since 0: every living descendant; since netdrift
/// started: the children targets forked while it was loading). One scan of
/// /proc.
pub fn forked_since(parents: &[u32], since: u64) -> Vec<u32> {
    // netdrift and its ancestors (run from a target's shell: `sudo`,
    // `timeout` between them) are no targets unless named: they relay
    // netdrift's own output, which would trace itself.
    let own = own_lineage();
    let procs: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter(|p| !own.contains(p) || parents.contains(p))
        .filter_map(|p| {
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let started = stat_start_time(&stat)?;
            (started >= since).then_some((p, stat_ppid(&stat)?))
        })
        .collect();
    let mut out: Vec<u32> = Vec::new();
    let mut frontier: Vec<u32> = parents.to_vec();
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &procs {
            if pp == parent && !parents.contains(&p) && !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out.sort_unstable();
    out
}

/// This process and its ancestors, up to pid 1 (left out).
fn own_lineage() -> Vec<u32> {
    let mut v = vec![std::process::id()];
    while let Some(pp) = fs::read_to_string(format!("/proc/{}/stat", v[v.len() - 1])).ok().and_then(|s| stat_ppid(&s)) {
        if pp <= 1 || v.contains(&pp) || v.len() > 4096 {
            break;
        }
        v.push(pp);
    }
    v
}

/// When this process started, in ticks after boot (/proc/self/stat's starttime).
pub fn own_start_ticks() -> Option<u64> {
    start_time(std::process::id())
}

/// Every living descendant process of `pid`.
pub fn descendants(pid: u32) -> Vec<u32> {
    forked_since(&[pid], 0)
}

/// Processes whose comm is `name` (tgids) and threads so named in other
/// processes (tids).
pub fn find_comm(name: &str) -> (Vec<u32>, Vec<u32>) {
    let mut tgids = Vec::new();
    let mut tids = Vec::new();
    let own = std::process::id();
    for pid in all_pids().into_iter().filter(|&p| p != own) {
        if comm(pid, pid).as_deref() == Some(name) {
            tgids.push(pid);
            continue;
        }
        for tid in threads(pid) {
            if tid != pid && comm(pid, tid).as_deref() == Some(name) {
                tids.push(tid);
            }
        }
    }
    tgids.sort_unstable();
    tids.sort_unstable();
    (tgids, tids)
}

/// Socket inode from a /proc/PID/fd link target such as `socket:[12345]`.
pub fn socket_ino(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// (fd, socket inode) for every socket a process holds.
pub fn socket_fds(pid: u32) -> Vec<(i32, u64)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let mut v: Vec<(i32, u64)> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let link = fs::read_link(e.path()).ok()?;
            Some((fd, socket_ino(link.to_str()?)?))
        })
        .collect();
    v.sort_unstable();
    v
}

/// One registration listed by /proc/PID/fdinfo/EPFD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpollEntry {
    pub fd: i32,
    pub events: u32,
    pub data: u64,
}

/// Parse the `tfd:` lines of an epoll fd's fdinfo.
pub fn parse_epoll_fdinfo(text: &str) -> Vec<EpollEntry> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            if it.next()? != "tfd:" {
                return None;
            }
            let fd = it.next()?.parse().ok()?;
            let mut events = None;
            let mut data = None;
            while let Some(k) = it.next() {
                match k {
                    "events:" => events = u32::from_str_radix(it.next()?, 16).ok(),
                    "data:" => data = u64::from_str_radix(it.next()?, 16).ok(),
                    _ => {}
                }
            }
            Some(EpollEntry { fd, events: events?, data: data? })
        })
        .collect()
}

pub fn epoll_entries(pid: u32, epfd: i32) -> Vec<EpollEntry> {
    fs::read_to_string(format!("/proc/{pid}/fdinfo/{epfd}")).map(|s| parse_epoll_fdinfo(&s)).unwrap_or_default()
}

/// Check the targets of -p/-t/-c: a missing pid or tid, a thread given as
/// -p, or a comm that names nothing are usage errors (exit 2). Returns the
/// tgids (with descendants when `follow_children`) and tids, sorted; with
/// `add_comm_matches`, the processes and threads named by -c are added.
/// With `wait`, a comm that names nothing yet is no error (--wait).
pub fn resolve_targets(
    pids: &[u32],
    tids: &[u32],
    comms: &[String],
    follow_children: bool,
    add_comm_matches: bool,
    wait: bool,
) -> crate::Result<(Vec<u32>, Vec<u32>)> {
    use crate::Error;
    let own = std::process::id();
    let mut tg = Vec::new();
    for &p in pids {
        if !task_exists(p) {
            return Err(Error::NoSuchPid(p));
        }
        match tgid_of(p) {
            Some(t) if t == own => return Err(Error::Usage(format!("{p} is netdrift itself"))),
            Some(t) if t == p => {}
            Some(_) => return Err(Error::Usage(format!("{p} is a thread, not a process: use -t {p}"))),
            // It exited between the two reads.
            None => return Err(Error::NoSuchPid(p)),
        }
        if !process_alive(p) {
            // A zombie: nothing of it runs again, and its pid stays until its parent reaps it.
            return Err(Error::Usage(format!("pid {p} has exited (a zombie its parent has not reaped): nothing to trace")));
        }
        tg.push(p);
        if follow_children {
            tg.extend(descendants(p));
        }
    }
    let mut td = Vec::new();
    for &t in tids {
        match tgid_of(t) {
            Some(_) if !task_exists(t) => return Err(Error::NoSuchTid(t)),
            Some(g) if g == own => return Err(Error::Usage(format!("{t} is a thread of netdrift itself"))),
            Some(_) if !alive(t) => return Err(Error::Usage(format!("thread {t} has exited: nothing to trace"))),
            Some(_) => {}
            None => return Err(Error::NoSuchTid(t)),
        }
        td.push(t);
    }
    for c in comms {
        if c.is_empty() || c.len() > 15 {
            return Err(Error::Usage(format!("-c {c:?}: a comm is 1 to 15 bytes (the kernel truncates names to 15)")));
        }
        let (p, t) = find_comm(c);
        if p.is_empty() && t.is_empty() && !wait {
            return Err(Error::NoSuchComm(c.clone()));
        }
        if add_comm_matches {
            tg.extend(p);
            td.extend(t);
        }
    }
    tg.sort_unstable();
    tg.dedup();
    td.sort_unstable();
    td.dedup();
    Ok((tg, td))
}

/// Targets in words, for the "tracing ..." line: `pid 1,2, tid 3, comm x`.
pub fn describe_targets(tgids: &[u32], tids: &[u32], comms: &[String]) -> String {
    let join = |x: &[u32]| x.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
    let mut v = Vec::new();
    if !tgids.is_empty() {
        v.push(format!("pid {}", join(tgids)));
    }
    if !tids.is_empty() {
        v.push(format!("tid {}", join(tids)));
    }
    if !comms.is_empty() {
        // Names as given, which may hold escape sequences: the line goes to a terminal.
        v.push(format!("comm {}", crate::output::term_safe(&comms.join(","))));
    }
    v.join(", ")
}

/// Effective capabilities bitmask of this process, from capget(2): right
/// even where /proc is not this process's (/proc/self/status would say nothing).
pub fn cap_eff_checked() -> Option<u64> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // _LINUX_CAPABILITY_VERSION_3: two 32-bit words.
    let mut h = Header { version: 0x2008_0522, pid: 0 };
    let mut d = [Data::default(); 2];
    // SAFETY: capget reads `h` and writes the two `Data` words of a V3 header,
    // both valid for the call; pid 0 is this thread.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr()) };
    (rc == 0).then(|| u64::from(d[0].effective) | (u64::from(d[1].effective) << 32))
}

/// Effective capabilities bitmask of this process (0 if unknown).
pub fn cap_eff() -> u64 {
    cap_eff_checked().unwrap_or(0)
}

/// The initial pid namespace's inode (PROC_PID_INIT_INO, fixed since Linux 3.8).
pub const INIT_PID_NS_INO: u64 = 0xEFFF_FFFC;

/// The inode of this process's pid namespace, if /proc says.
pub fn pid_namespace() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}

/// Whether /proc is this process's pid namespace's: /proc/self names it.
/// (A host-namespace process under another namespace's /proc has no
/// /proc/self; a /proc of an outer namespace names another pid.)
pub fn proc_is_ours() -> bool {
    fs::read_link("/proc/self").ok().and_then(|p| p.to_str()?.parse::<u32>().ok()) == Some(std::process::id())
}

/// Why pids here are not the kernel's, if they are not: netdrift's programs
/// compare and report the host's pids, and read /proc with them.
pub fn pid_namespace_problem() -> Option<String> {
    match pid_namespace() {
        Some(ns) if ns != INIT_PID_NS_INO => Some(format!("netdrift runs in a child pid namespace (pid:[{ns}])")),
        _ if !proc_is_ours() => Some("/proc is not netdrift's pid namespace's (/proc/self is not netdrift)".into()),
        _ => None,
    }
}

/// Whether /proc/kallsyms shows addresses to this process: kernel.kptr_restrict
/// hides them (from all at 2; at 1, from those without CAP_SYSLOG), and waker
/// stacks then cannot be named.
pub fn kallsyms_readable() -> bool {
    match std::fs::File::open("/proc/kallsyms") {
        Ok(f) => addresses_shown(std::io::BufReader::new(f)),
        Err(_) => false,
    }
}

/// Whether a kallsyms listing shows addresses: hidden, every one is zero;
/// shown, the first few may still be (per-CPU symbols at 0 on Linux 6.1:
/// `fixed_percpu_data`, `__per_cpu_start`), so the first 1000 are looked at.
fn addresses_shown(r: impl std::io::BufRead) -> bool {
    r.lines().take(1000).map_while(|l| l.ok()).any(|l| l.split_whitespace().next().is_some_and(|a| a.chars().any(|c| c != '0')))
}

/// Effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A numeric sysctl (`kernel/perf_event_paranoid`), if readable.
pub fn sysctl(name: &str) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/sys/{name}")).ok()?.trim().parse().ok()
}

/// Why kernel addresses are hidden, for messages: the sysctl's value and the fix.
pub fn kallsyms_hidden_why() -> String {
    let v = sysctl("kernel/kptr_restrict");
    let kr = v.map_or_else(|| "?".to_string(), |v| v.to_string());
    if is_root() {
        format!("kernel.kptr_restrict is {kr}: set it to 1 (sysctl kernel.kptr_restrict=1) for the trace")
    } else if v == Some(2) {
        format!("kernel.kptr_restrict is {kr}: set it to 1 (sysctl kernel.kptr_restrict=1) and run netdrift as root (or add CAP_SYSLOG)")
    } else {
        format!("kernel.kptr_restrict is {kr}: run netdrift as root (or add CAP_SYSLOG)")
    }
}

/// Why this process cannot read `pid`'s open files as netdrift does (list
/// /proc/PID/fd, read a link there and its fdinfo), if it cannot: another
/// user's process takes CAP_DAC_READ_SEARCH to list and CAP_SYS_PTRACE to read.
pub fn fd_access_problem(pid: u32) -> Option<String> {
    let denied = |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM));
    let dir = format!("/proc/{pid}/fd");
    let first = match std::fs::read_dir(&dir) {
        Ok(mut d) => d.find_map(|e| e.ok()).map(|e| e.file_name()),
        Err(e) if denied(&e) => return Some(format!("cannot list {dir} ({e})")),
        // Gone meanwhile: said elsewhere.
        Err(_) => return None,
    };
    let fd = first?;
    let fd = fd.to_string_lossy();
    if let Err(e) = std::fs::read_link(format!("{dir}/{fd}")).and_then(|_| std::fs::read(format!("/proc/{pid}/fdinfo/{fd}"))) {
        if denied(&e) {
            return Some(format!("cannot read {dir}/{fd} or its fdinfo ({e})"));
        }
    }
    None
}

/// The fix for [`fd_access_problem`].
pub const FD_ACCESS_FIX: &str = "run netdrift as root (or add both CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE)";

/// Target processes whose open files this process may not read (another
/// user's process without CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE): their
/// sockets would be nameless, and wake-ups blamed on other threads. Refused
/// before anything is loaded; as root (a process even root cannot read, in
/// a sandbox of its own), said in the returned notes and traced.
pub fn check_fd_access(pids: &[u32]) -> crate::Result<Vec<String>> {
    let root = is_root();
    let mut notes = Vec::new();
    for &p in pids {
        if let Some(why) = fd_access_problem(p) {
            if root {
                notes.push(format!("{why}: pid {p}'s sockets are not named and its epoll data words not mapped to fds"));
                continue;
            }
            return Err(crate::Error::Privilege(format!(
                "{why}: netdrift names a wake-up's socket from the target's open files; {FD_ACCESS_FIX}"
            )));
        }
    }
    Ok(notes)
}

/// Root, or CAP_BPF with CAP_PERFMON, or CAP_SYS_ADMIN.
pub fn privileged() -> bool {
    let caps = cap_eff();
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    has(21) || (has(39) && has(38))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_addresses_shown_past_per_cpu_zeros() {
        let shown = "0000000000000000 A fixed_percpu_data\n0000000000000000 A __per_cpu_start\n0000000000001000 A cpu_debug_store\nffffffffbb800000 T _stext\n";
        assert!(addresses_shown(shown.as_bytes()));
        let hidden = "0000000000000000 A fixed_percpu_data\n0000000000000000 T _stext\n0000000000000000 T x\n";
        assert!(!addresses_shown(hidden.as_bytes()));
        assert!(!addresses_shown("".as_bytes()));
    }

    /// An exited child not yet reaped is a zombie: it exists, and is not alive.
    #[test]
    fn a_zombie_is_not_alive() {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        let t = std::time::Instant::now();
        while alive(pid) && t.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(task_exists(pid) && !alive(pid));
        c.wait().unwrap();
        assert!(alive(std::process::id()));
    }

    #[test]
    fn parses_fdinfo_of_epoll() {
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\ntfd:        6 events:       19 data:     55d6a8c3f1e0  pos:0 ino:4a9f sdev:8\ntfd:        3 events: 80000001 data:                3  pos:0 ino:4a90 sdev:8\n";
        let v = parse_epoll_fdinfo(text);
        assert_eq!(v, vec![EpollEntry { fd: 6, events: 0x19, data: 0x55d6a8c3f1e0 }, EpollEntry { fd: 3, events: 0x8000_0001, data: 3 },]);
    }

    #[test]
    fn parses_stat_ppid_with_hostile_comm() {
        assert_eq!(stat_ppid("42 (a) b) c) S 7 42 42 0"), Some(7));
        assert_eq!(stat_ppid("garbage"), None);
    }

    #[test]
    fn parses_socket_links_and_status() {
        assert_eq!(socket_ino("socket:[98765]"), Some(98765));
        assert_eq!(socket_ino("pipe:[1]"), None);
        assert_eq!(status_field("Name:\tx\nTgid:\t77\nPid:\t78\n", "Tgid"), Some(77));
    }

    #[test]
    fn capget_agrees_with_proc_status() {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let from_proc = status.lines().find_map(|l| l.strip_prefix("CapEff:")).map(|v| u64::from_str_radix(v.trim(), 16).unwrap());
        assert_eq!(cap_eff_checked(), from_proc);
    }

    #[test]
    fn finds_own_threads_and_sockets() {
        let me = std::process::id();
        assert!(threads(me).contains(&me));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        // The listener's own inode (fstat of the socket), not just its fd number.
        let ino = fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap().ino();
        let found: Vec<(i32, u64)> = socket_fds(me).into_iter().filter(|(fd, _)| *fd == l.as_raw_fd()).collect();
        assert_eq!(found, [(l.as_raw_fd(), ino)]);
        drop(l);
        assert!(!socket_fds(me).iter().any(|&(_, i)| i == ino), "a closed socket is gone");
    }
}
