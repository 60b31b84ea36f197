//! `/proc/PID/maps`: parsed, searched, and used to name frames no symbol
//! covers (`[unknown] libfoo.so+0x1a2b`, never a bare `[unknown]`).
//!
//! The parser takes the text, so it is tested without a live /proc.

/// One line of /proc/PID/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `rwxp`-style permissions.
    pub perms: String,
    /// File offset of `start`.
    pub offset: u64,
    /// `major:minor` of the file's device.
    pub dev: String,
    /// Inode of the file, 0 for anonymous memory.
    pub inode: u64,
    /// File path, `[heap]`-style pseudo name, or empty for anonymous memory.
    pub path: String,
}

impl Mapping {
    /// Executable?
    pub fn exec(&self) -> bool {
        self.perms.as_bytes().get(2) == Some(&b'x')
    }

    /// Backed by a file (a path and an inode)?
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }

    /// Offset of `addr` in the file (or in the mapping, when not file-backed).
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr.wrapping_sub(self.start).wrapping_add(if self.is_file() { self.offset } else { 0 })
    }

    /// Short module name: the file's base name (without ` (deleted)`), or
    /// the pseudo name (`[vdso]`, `[heap]`), or `[anon]`.
    pub fn module(&self) -> String {
        if self.path.is_empty() {
            return "[anon]".into();
        }
        if self.path.starts_with('[') {
            return self.path.clone();
        }
        let p = self.path.strip_suffix(" (deleted)").unwrap_or(&self.path);
        p.rsplit('/').next().unwrap_or(p).to_string()
    }
}

/// Parse the text of /proc/PID/maps; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mapping> {
    let mut v: Vec<Mapping> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(6, ' ');
            let range = it.next()?;
            let perms = it.next()?.to_string();
            let offset = u64::from_str_radix(it.next()?, 16).ok()?;
            let dev = it.next()?.to_string();
            let inode = it.next()?.parse().ok()?;
            let path = it.next().unwrap_or("").trim_start().to_string();
            let (s, e) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                perms,
                offset,
                dev,
                inode,
                path,
            })
        })
        .collect();
    v.sort_by_key(|m| m.start);
    v
}

/// The mapping that holds `addr`.
pub fn find(maps: &[Mapping], addr: u64) -> Option<&Mapping> {
    let i = maps.partition_point(|m| m.start <= addr);
    let m = maps.get(i.checked_sub(1)?)?;
    (addr < m.end).then_some(m)
}

/// The name of a user frame no symbol covers: `[unknown] MODULE+0xOFFSET`,
/// or `[unknown] 0xADDR` when the address is in no mapping at all.
pub fn unknown_frame(maps: &[Mapping], addr: u64) -> String {
    match find(maps, addr) {
        Some(m) if m.path.is_empty() => format!("[unknown] [anon] 0x{addr:x}"),
        Some(m) => format!("[unknown] {}+0x{:x}", m.module(), m.file_offset(addr)),
        None => format!("[unknown] 0x{addr:x}"),
    }
}

/// The name of a kernel frame kallsyms does not cover.
pub fn unknown_kernel_frame(addr: u64) -> String {
    format!("[unknown] [kernel] 0x{addr:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 1311 /tmp/x/pipewake
55d0c0a01000-55d0c0a02000 r-xp 00001000 08:01 1311 /tmp/x/pipewake
55d0c1c2e000-55d0c1c4f000 rw-p 00000000 00:00 0                          [heap]
7f2a4c000000-7f2a4c021000 rw-p 00000000 00:00 0 
7f2a4d628000-7f2a4d77d000 r-xp 00026000 08:01 2622 /usr/lib/x86_64-linux-gnu/libc.so.6
7f2a4d900000-7f2a4d901000 r-xp 00002000 08:01 4242 /opt/app/libfoo.so (deleted)
7ffd1a5f0000-7ffd1a5f2000 r-xp 00000000 00:00 0                          [vdso]
";

    #[test]
    fn parses_and_finds() {
        let m = parse(MAPS);
        assert_eq!(m.len(), 7);
        let libc = find(&m, 0x7f2a4d628000 + 0x10).unwrap();
        assert!(libc.exec() && libc.is_file());
        assert_eq!(libc.module(), "libc.so.6");
        assert_eq!(libc.file_offset(0x7f2a4d628010), 0x26010);
        assert_eq!(find(&m, 0x7f2a4d77d000), None);
        assert_eq!(find(&m, 0x1000), None);
        assert_eq!(m[2].path, "[heap]");
        assert_eq!(m[3].path, "");
    }

    /// A path is the whole rest of the line (spaces and ` (deleted)`
    /// included); a line too short is skipped.
    #[test]
    fn paths_are_whole() {
        let l = "7f00-7f10 r-xp 00000000 fe:01 1234                       /opt/my app/libx.so.1 (deleted)";
        assert_eq!(parse(l)[0].path, "/opt/my app/libx.so.1 (deleted)");
        assert_eq!(parse("7f00-7f10 rw-p 00000000 00:00 0 ")[0].path, "");
        assert_eq!(parse("7f00-7f10 rw-p 00000000 00:00 0                  [heap]")[0].path, "[heap]");
        assert!(parse("short line").is_empty());
    }

    #[test]
    fn unknown_frames_carry_module_and_offset() {
        let m = parse(MAPS);
        assert_eq!(unknown_frame(&m, 0x7f2a4d900a2b), "[unknown] libfoo.so+0x2a2b");
        assert_eq!(unknown_frame(&m, 0x55d0c0a01234), "[unknown] pipewake+0x1234");
        assert_eq!(unknown_frame(&m, 0x7ffd1a5f0100), "[unknown] [vdso]+0x100");
        assert_eq!(unknown_frame(&m, 0x7f2a4c000010), "[unknown] [anon] 0x7f2a4c000010");
        assert_eq!(unknown_frame(&m, 0x10), "[unknown] 0x10");
        assert_eq!(unknown_frame(&[], 0xabc), "[unknown] 0xabc");
        assert_eq!(unknown_kernel_frame(0xffffffff81000000), "[unknown] [kernel] 0xffffffff81000000");
        for a in [0x7f2a4d900a2bu64, 0x10, 0x7f2a4c000010] {
            assert_ne!(unknown_frame(&m, a), "[unknown]");
        }
    }
}
