//! The off-wake flame graph: folded lines drawn by inferno, the waker's
//! frames (above the `--` separator) in a different colour from the blocked
//! thread's, as flamegraph.pl's `--colors=chain` does.
//!
//! inferno's `wakeup` palette (used here as the base: blue background) paints
//! every frame alike, so waker frames are annotated `_[w]` (inferno strips the
//! annotation from the labels) and a palette map gives them aqua and the
//! blocked frames blue.

use std::collections::HashSet;

use inferno::flamegraph::color::{Color, MultiPalette, PaletteMap};
use inferno::flamegraph::{self, Options, Palette};

use super::model::{folded_lines, Entry, Metric, RenderOptions};

/// Suffix marking a waker frame for the colouring.
const WAKER_MARK: &str = "_[w]";

/// Mark every frame above the `--` separator of a folded stack as a waker frame.
pub fn mark_waker_frames(stack: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut above = false;
    for f in stack.split(';') {
        if above {
            out.push(format!("{f}{WAKER_MARK}"));
        } else {
            out.push(f.to_string());
            if f == "--" {
                above = true;
            }
        }
    }
    out.join(";")
}

fn hash01(name: &str) -> f32 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % 1000) as f32 / 1000.0
}

/// Blue for blocked frames, aqua for waker frames; the shade varies by name.
pub fn frame_color(name: &str) -> Color {
    let v = hash01(name);
    if name.ends_with(WAKER_MARK) {
        Color { r: 50 + (60.0 * v) as u8, g: 165 + (55.0 * v) as u8, b: 165 + (55.0 * v) as u8 }
    } else {
        Color { r: 80 + (60.0 * v) as u8, g: 80 + (60.0 * v) as u8, b: 205 + (50.0 * v) as u8 }
    }
}

/// Render the entries as an SVG flame graph.
pub fn render(entries: &[Entry], opts: &RenderOptions, title: &str) -> std::io::Result<Vec<u8>> {
    let lines: Vec<String> = folded_lines(entries, opts).into_iter().map(|(s, n)| format!("{} {n}", mark_waker_frames(&s))).collect();
    let mut palette = PaletteMap::default();
    let mut seen = HashSet::new();
    for l in &lines {
        let stack = l.rsplit_once(' ').map(|(s, _)| s).unwrap_or(l);
        for f in stack.split(';') {
            if f != "--" && seen.insert(f.to_string()) {
                palette.insert(f, frame_color(f));
            }
        }
    }
    let mut o = Options::default();
    o.colors = Palette::Multi(MultiPalette::Wakeup);
    o.title = title.to_string();
    o.subtitle = Some(
        match opts.metric {
            Metric::Total => "off-CPU time (blocked + run-queue wait); blue: blocked thread, aqua: waker (above --)",
            Metric::Blocked => "blocked time (switch-out -> wake-up); blue: blocked thread, aqua: waker (above --)",
            Metric::Runq => "run-queue wait (wake-up -> on CPU); blue: blocked thread, aqua: waker (above --)",
        }
        .to_string(),
    );
    o.count_name = "us".into();
    o.deterministic = true;
    o.palette_map = Some(&mut palette);
    let mut out = Vec::new();
    if lines.is_empty() {
        // inferno refuses empty input; an empty graph still says what it is.
        o.palette_map = None;
        flamegraph::from_lines(&mut o, ["[nothing recorded] 1"].iter().copied(), &mut out)?;
        return Ok(out);
    }
    flamegraph::from_lines(&mut o, lines.iter().map(|s| s.as_str()), &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_only_frames_above_the_separator() {
        assert_eq!(mark_waker_frames("r;a;b;--;c;d;w"), "r;a;b;--;c_[w];d_[w];w_[w]");
        assert_eq!(mark_waker_frames("r;a"), "r;a");
        assert_ne!(frame_color("x"), frame_color("x_[w]"));
        let w = frame_color("try_to_wake_up_[w]");
        assert!(w.g > w.r, "aqua");
        let b = frame_color("schedule");
        assert!(b.b > b.g, "blue");
    }
}
