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

/// A string from the traced system, safe for a terminal: control characters
/// (escape sequences included) become `\xNN` / `\u{..}`.
pub fn term_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| c.is_control()) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
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

    #[test]
    fn strips_escape_sequences() {
        assert_eq!(term_safe("\x1b[31mred\x07"), "\\x1b[31mred\\x07");
        assert_eq!(term_safe("plain <b>"), "plain <b>");
        assert_eq!(term_safe("a\u{9b}b"), "a\\x9bb");
    }

    #[test]
    fn durations() {
        assert_eq!(dur(812), "812ns");
        assert_eq!(dur(12_345), "12.3us");
        assert_eq!(dur(4_560_000), "4.56ms");
        assert_eq!(dur(1_234_000_000), "1.234s");
    }
}
