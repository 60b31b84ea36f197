//! `netdrift report FILE.html`: one self-contained HTML page (inline CSS, JS
//! and SVG, nothing fetched) with the summary counters, the herd table,
//! latency histograms, wake-ups per thread, the off-wake flame graph and a
//! diagram of any chain in which every kernel function links to its source
//! at elixir.bootlin.com for the running kernel's version. See docs/report.md.
//!
//! Every string from the traced system (comm, symbols, addresses) is escaped:
//! [`esc`] for HTML text and attributes, inferno's XML escaping inside the
//! flame graph, and the chain data is JSON inside
//! `<script type="application/json">` with `<`, `>`, `&`, U+2028 and U+2029
//! written as `\uXXXX`, read by the page with `JSON.parse` and shown with
//! `textContent`. A Content-Security-Policy with a per-report nonce forbids
//! every fetch and every script but the report's own.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::analysis::{Action, Annotation, Chain, Hop};
use crate::error::{Error, Result};
use crate::events::{epoll_flags, errno_name, Event, Kind, SockInfo, Task};
use crate::output::{dur, off_cpu, ready_what, term_safe};
use crate::output::{OnDrop, PartialFile};
use crate::summary::{Hist, Summary};
use crate::symbolize::KernelSyms;
use crate::trace::{Observer, TraceEnd};

const CSS: &str = include_str!("html/report.css");
const GUARD_JS: &str = include_str!("html/guard.js");
const REPORT_JS: &str = include_str!("html/report.js");

/// Chains kept for the diagram (the five slowest are kept besides).
pub const MAX_CHAINS: usize = 2000;

/// Where kernel functions link to.
pub const ELIXIR: &str = "https://elixir.bootlin.com/linux";

/// Escape for HTML text and (quoted) attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// A string from the traced system, as HTML: control characters made
/// visible (as in the terminal), then escaped.
pub fn text(s: &str) -> String {
    esc(&term_safe(s))
}

/// JSON for a `<script type="application/json">` element: nothing in it can
/// end the element or be read as markup.
pub fn script_json(v: &Value) -> String {
    let s = serde_json::to_string(v).unwrap_or_else(|_| "null".into());
    let mut o = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '<' => o.push_str("\\u003c"),
            '>' => o.push_str("\\u003e"),
            '&' => o.push_str("\\u0026"),
            '\u{2028}' => o.push_str("\\u2028"),
            '\u{2029}' => o.push_str("\\u2029"),
            _ => o.push(c),
        }
    }
    o
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The elixir.bootlin.com tag of a kernel release: `6.18.44-fc-v669` -> `v6.18`.
/// None when the release does not start with MAJOR.MINOR.
pub fn elixir_version(release: &str) -> Option<String> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next().filter(|s| !s.is_empty())?;
    let rest = release.get(major.len()..)?;
    let rest = rest.strip_prefix('.')?;
    let minor: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if minor.is_empty() {
        return None;
    }
    Some(format!("v{}.{}", major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
}

/// The identifier a kernel symbol links to: the name without compiler
/// suffixes (`.isra.0`, `.constprop.0`, `.cold`), if it is a C identifier.
pub fn kernel_ident(sym: &str) -> Option<&str> {
    let base = sym.split('.').next()?;
    let mut chars = base.chars();
    let first = chars.next()?;
    if !(first.is_ascii_alphabetic() || first == '_') || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    Some(base)
}

/// The link of a kernel function at `base` (`https://elixir.bootlin.com/linux/v6.18`).
pub fn ident_url(base: &str, ident: &str) -> String {
    format!("{base}/C/ident/{ident}")
}

/// Per target thread: what the flame graph needs to know at a wake-up.
#[derive(Debug, Default, Clone)]
struct FlameThread {
    /// Voluntary switch-out not yet followed by a switch-in: (ts, task state, in epoll_wait).
    out: Option<(u64, u32, bool)>,
    in_epoll: bool,
}

/// (waker stack, woken thread, wait state).
type FoldKey = (Vec<u64>, String, String);
/// (weight in us, wake-ups, wake-ups with a known blocked time).
type FoldVal = (u64, u64, u64);

/// Collects what the report shows and writes it when the trace ends.
pub struct ReportWriter {
    path: PathBuf,
    recording: Option<PathBuf>,
    /// FILE.partial, created before tracing starts (a bad path fails first).
    file: Option<PartialFile>,
    start: Value,
    t0: u64,
    threads: HashMap<u32, FlameThread>,
    folded: HashMap<FoldKey, FoldVal>,
    chains: Vec<Chain>,
    /// The slowest complete chains beyond the cap.
    slow: Vec<Chain>,
    total_chains: u64,
    release: String,
}

/// From the packet (with --packets) to the last step: as the summary counts it.
fn chain_total(c: &Chain) -> u64 {
    crate::summary::chain_start_total(c).1
}

impl ReportWriter {
    /// A report written to `path`; `recording` is the `--record` file it is built from, if any.
    pub fn new(path: &Path, recording: Option<&Path>) -> Self {
        ReportWriter {
            path: path.to_path_buf(),
            recording: recording.map(Path::to_path_buf),
            file: None,
            start: Value::Null,
            t0: 0,
            threads: HashMap::new(),
            folded: HashMap::new(),
            chains: Vec::new(),
            slow: Vec::new(),
            total_chains: 0,
            release: kernel_release(),
        }
    }

    /// Use this kernel release for the links instead of the running kernel's.
    pub fn with_release(mut self, release: &str) -> Self {
        self.release = release.to_string();
        self
    }

    /// Feed one event.
    pub fn add_event(&mut self, ev: &Event) {
        match &ev.kind {
            // A dead thread's last switch-out comes after its task_exit: forget it (tids are reused).
            Kind::SwitchOut { state, .. } if *state & crate::analysis::TASK_DEAD != 0 => {
                self.threads.remove(&ev.task.tid);
            }
            Kind::TaskExit { .. } => {
                self.threads.remove(&ev.task.tid);
            }
            // Its old tid (a thread other than the leader ran exec).
            Kind::TaskNew { child, reason: 3 } if child.tid != ev.task.tid => {
                self.threads.remove(&ev.task.tid);
            }
            Kind::SwitchOut { involuntary, state, .. } => {
                let t = self.threads.entry(ev.task.tid).or_default();
                t.out = if *involuntary { None } else { Some((ev.ts, *state, t.in_epoll)) };
            }
            Kind::SwitchIn { .. } => {
                self.threads.entry(ev.task.tid).or_default().out = None;
            }
            Kind::EpollEnter { .. } => self.threads.entry(ev.task.tid).or_default().in_epoll = true,
            Kind::EpollExit { .. } => self.threads.entry(ev.task.tid).or_default().in_epoll = false,
            Kind::Wake { target, stack, target_on_rq, .. } => {
                let t = self.threads.entry(target.tid).or_default();
                let (state, blocked) = match (t.out.take(), target_on_rq) {
                    (_, true) => ("woken while still on a CPU".to_string(), None),
                    (Some((ts, _, true)), _) => ("blocked in epoll_wait".to_string(), Some(ev.ts.saturating_sub(ts))),
                    (Some((ts, st, false)), _) => (crate::events::task_state_text(st), Some(ev.ts.saturating_sub(ts))),
                    (None, false) => ("wait not seen (blocked before the trace)".to_string(), None),
                };
                let e = self.folded.entry((stack.clone(), target.comm.to_string(), state)).or_default();
                match blocked {
                    Some(ns) => {
                        e.0 += (ns / 1000).max(1);
                        e.2 += 1;
                    }
                    None => e.0 += 1,
                }
                e.1 += 1;
            }
            _ => {}
        }
    }

    /// Feed one completed chain.
    pub fn add_chain(&mut self, c: &Chain) {
        self.total_chains += 1;
        if self.chains.len() < MAX_CHAINS {
            self.chains.push(c.clone());
            return;
        }
        // The summary's slowest chains (its links) are among these: the same rule.
        let Some((_, total)) = crate::summary::chain_span(c) else { return };
        if self.slow.len() < 5 || self.slow.iter().any(|s| chain_total(s) < total) {
            self.slow.push(c.clone());
            self.slow.sort_by(|a, b| chain_total(b).cmp(&chain_total(a)).then(a.id.cmp(&b.id)));
            self.slow.truncate(5);
        }
    }

    fn elixir_base(&self) -> (String, String) {
        let v = elixir_version(&self.release).unwrap_or_else(|| "latest".to_string());
        (format!("{ELIXIR}/{v}"), v)
    }

    /// The whole page.
    pub fn render(&self, end: &TraceEnd<'_>, syms: &mut KernelSyms) -> String {
        let (base, version) = self.elixir_base();
        let nonce = nonce();
        let mut o = String::with_capacity(256 * 1024);
        let _ = write!(
            o,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; img-src 'none'; base-uri 'none'; form-action 'none'\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <meta name=\"generator\" content=\"netdrift {}\">\n<title>netdrift report</title>\n<style>\n{CSS}</style>\n<script nonce=\"{nonce}\">\n{GUARD_JS}</script>\n</head>\n<body>\n",
            env!("CARGO_PKG_VERSION")
        );
        self.header(&mut o, end, &version);
        o.push_str("<nav><a href=\"#nd-summary\">summary</a><a href=\"#nd-herd\">thundering herd</a><a href=\"#nd-latency\">latency</a><a href=\"#nd-threads\">threads</a><a href=\"#nd-flame\">off-wake flame graph</a><a href=\"#nd-chains\">chains</a></nav>\n");
        counters(&mut o, end);
        herd(&mut o, end.summary, end.losses.ringbuf > 0);
        latency(&mut o, end.summary);
        threads(&mut o, end.summary);
        self.flame(&mut o, syms, &base);
        let data = self.chain_data(syms, &base, &version);
        o.push_str("<section id=\"nd-chains\">\n<h2>Chains</h2>\n");
        let _ = writeln!(
            o,
            "<p class=\"hint\">One wake-up chain: socket ready &rarr; thread(s) woken &rarr; on CPU &rarr; epoll_wait returned &rarr; accept/close. Kernel functions link to their source in Linux {} at elixir.bootlin.com. {}</p>",
            esc(&version),
            if self.total_chains as usize > data["chains"].as_array().map(|a| a.len()).unwrap_or(0) {
                format!("Showing {} of {} chains (the first {MAX_CHAINS} and the slowest).", data["chains"].as_array().map(|a| a.len()).unwrap_or(0), self.total_chains)
            } else {
                String::new()
            }
        );
        if !end.summary.slowest.is_empty() {
            o.push_str("<p>Slowest: ");
            for w in &end.summary.slowest {
                let _ = write!(o, "<a href=\"#chain={}\">chain {} ({})</a> ", w.chain, w.chain, esc(&dur(w.total_ns)));
            }
            o.push_str("</p>\n");
        }
        o.push_str("<label for=\"nd-chain-select\">Chain: </label><select id=\"nd-chain-select\"></select>\n<div id=\"nd-chain-view\"></div>\n<noscript><p class=\"warn\">The chain diagram needs JavaScript.</p></noscript>\n</section>\n");
        let _ = writeln!(o, "<script type=\"application/json\" id=\"nd-data\">{}</script>", script_json(&data));
        let _ = write!(o, "<script nonce=\"{nonce}\">\n{REPORT_JS}</script>\n</body>\n</html>\n");
        o
    }

    fn header(&self, o: &mut String, end: &TraceEnd<'_>, version: &str) {
        o.push_str("<header>\n<h1>netdrift report</h1>\n");
        let s = &self.start;
        let mut targets: Vec<String> = Vec::new();
        let list = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).collect())
                .unwrap_or_default()
        };
        for (k, name) in [("pids", "pid"), ("tids", "tid"), ("comms", "comm")] {
            let l = list(&s[k]);
            if !l.is_empty() {
                targets.push(format!("{name} {}", l.join(",")));
            }
        }
        let what = match &self.recording {
            Some(p) => format!("from the recording {}", p.display()),
            None => "live trace".to_string(),
        };
        let _ = writeln!(
            o,
            "<p class=\"meta\">{} of {}: {} after {:.1} s. Kernel {} (source links: Linux {}).</p>",
            text(&what),
            text(&if targets.is_empty() { "?".to_string() } else { targets.join("; ") }),
            text(end.reason),
            end.secs,
            text(&self.release),
            esc(version)
        );
        let has_stacks = self.folded.keys().any(|k| !k.0.is_empty());
        if has_stacks && !crate::procfs::kallsyms_readable() {
            o.push_str("<p class=\"meta warn\">Kernel stacks are shown as addresses: /proc/kallsyms hides them from this user (kernel.kptr_restrict). Build the report as root, on the machine and boot that recorded the trace, to name and link the kernel functions.</p>\n");
        }
        for n in s["notes"].as_array().into_iter().flatten() {
            if let Some(n) = n.as_str() {
                let _ = writeln!(o, "<p class=\"meta warn\">{}</p>", text(n));
            }
        }
        o.push_str("</header>\n");
    }

    /// The off-wake flame graph: inferno's SVG, made static and inline.
    fn flame(&self, o: &mut String, syms: &mut KernelSyms, base: &str) {
        o.push_str("<section id=\"nd-flame\" class=\"flame\">\n<h2>Off-wake flame graph</h2>\n");
        let (lines, links) = self.folded_lines(syms, base);
        if lines.is_empty() {
            o.push_str("<p class=\"hint\">No wake-ups of the targets were seen.</p>\n</section>\n");
            return;
        }
        let known: u64 = self.folded.values().map(|v| v.2).sum();
        let all: u64 = self.folded.values().map(|v| v.1).sum();
        let _ = writeln!(
            o,
            "<p class=\"hint\">Bottom: the woken thread and how it waited; above the <code>--</code>: the waker's kernel stack, outermost frame first, innermost (the wake-up) at the top. Width: time blocked from switch-out to wake-up in microseconds ({known} of {all} wake-ups; the others count 1 each). Kernel functions link to their source.</p>"
        );
        match flame_svg(&lines, &links) {
            Some(svg) => {
                o.push_str(&svg);
                o.push('\n');
            }
            None => o.push_str("<p class=\"hint\">The flame graph could not be drawn.</p>\n"),
        }
        o.push_str("</section>\n");
    }

    /// Folded stacks `thread;state;--;outermost;...;innermost weight`, and
    /// the link of every kernel frame.
    pub fn folded_lines(&self, syms: &mut KernelSyms, base: &str) -> (Vec<String>, Vec<(String, String)>) {
        let mut agg: HashMap<String, u64> = HashMap::new();
        let mut links: HashMap<String, String> = HashMap::new();
        let clean = |s: &str| -> String { term_safe(s).replace(';', ":").replace(['\n', '\r'], " ") };
        for ((stack, comm, state), (w, _, _)) in &self.folded {
            let mut frames: Vec<String> = if stack.is_empty() { vec!["[no stack captured]".to_string()] } else { syms.frames(stack) };
            frames.reverse();
            let mut parts = vec![clean(comm), clean(state), "--".to_string()];
            for f in frames {
                let f = clean(&f);
                if let Some(id) = kernel_ident(&f) {
                    links.entry(f.clone()).or_insert_with(|| ident_url(base, id));
                }
                parts.push(f);
            }
            *agg.entry(parts.join(";")).or_default() += w;
        }
        let mut lines: Vec<String> = agg.into_iter().map(|(k, v)| format!("{k} {v}")).collect();
        lines.sort();
        let mut links: Vec<(String, String)> = links.into_iter().collect();
        links.sort();
        (lines, links)
    }

    /// The chains for the diagram, with a table of symbolized stacks.
    fn chain_data(&self, syms: &mut KernelSyms, base: &str, version: &str) -> Value {
        let mut stacks: Vec<Value> = Vec::new();
        let mut stack_ix: HashMap<Vec<u64>, usize> = HashMap::new();
        let mut chains: Vec<&Chain> = self.chains.iter().collect();
        for s in &self.slow {
            if !chains.iter().any(|c| c.id == s.id) {
                chains.push(s);
            }
        }
        chains.sort_by_key(|c| c.id);
        let mut out: Vec<Value> = Vec::new();
        for c in &chains {
            out.push(chain_json(c, self.t0, &mut |st: &[u64]| {
                if st.is_empty() {
                    return None;
                }
                if let Some(&i) = stack_ix.get(st) {
                    return Some(i);
                }
                let frames: Vec<Value> = syms.frames(st).into_iter().map(|f| json!([term_safe(&f), kernel_ident(&f)])).collect();
                stacks.push(Value::Array(frames));
                stack_ix.insert(st.to_vec(), stacks.len() - 1);
                Some(stacks.len() - 1)
            }));
        }
        let default_index = chains
            .iter()
            .position(|c| c.woken() > 1 && !c.incomplete)
            .or_else(|| chains.iter().enumerate().filter(|(_, c)| !c.incomplete).max_by_key(|(_, c)| chain_total(c)).map(|(i, _)| i))
            .unwrap_or(0);
        json!({
            "elixir": base,
            "elixir_version": version,
            "stacks": stacks,
            "chains": out,
            "default_index": default_index,
            "total_chains": self.total_chains,
        })
    }
}

fn nonce() -> String {
    let mut b = [0u8; 16];
    let ok = File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_ok();
    if !ok {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        b.copy_from_slice(&t.to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn task(t: &Task) -> String {
    format!("{}[{}]", term_safe(&t.comm), t.tid)
}

fn node(kind: &str, edge: Option<String>, title: String, lines: Vec<String>, stack: Option<usize>) -> Value {
    json!({"kind": kind, "edge": edge, "title": title, "lines": lines, "stack": stack})
}

/// One chain as the page's script draws it: the head (packet, socket) and
/// one row of steps per woken thread.
fn chain_json(c: &Chain, t0: u64, stack_of: &mut dyn FnMut(&[u64]) -> Option<usize>) -> Value {
    let rel = |ts: u64| format!("+{}", dur(ts.saturating_sub(c.start_ts)));
    let mut head: Vec<Value> = Vec::new();
    let title = match &c.sock {
        Some(s) => {
            if let Some(p) = &s.packet {
                let dev = if p.dev.is_empty() { "?".to_string() } else { term_safe(&p.dev).into_owned() };
                head.push(node(
                    "packet",
                    None,
                    "packet".into(),
                    vec![format!("{} bytes on {dev} (netif_receive_skb)", p.len), format!("CPU{}", s.cpu)],
                    None,
                ));
            }
            let what = ready_what(s);
            let fds = if s.fds.is_empty() {
                "fd unknown".to_string()
            } else {
                s.fds.iter().map(|(p, f)| format!("fd {f} of pid {p}")).collect::<Vec<_>>().join(", ")
            };
            let edge = s.packet.as_ref().map(|p| dur(s.ts.saturating_sub(p.ts)));
            head.push(node(
                "sock",
                edge,
                what,
                vec![
                    s.sock.describe(),
                    format!("CPU{} in {}", s.cpu, task(&s.task)),
                    format!("sk=0x{:x} ino={} netns={}", s.sock.sk, s.sock.ino, s.sock.netns),
                    fds,
                ],
                None,
            ));
            if let Some(np) = &s.napi {
                let dev = if np.dev.is_empty() { "the per-CPU backlog".to_string() } else { term_safe(&np.dev).into_owned() };
                head.push(node(
                    "packet",
                    Some(rel(np.ts)),
                    "napi poll ended".into(),
                    vec![format!("{} of budget {} packets from {dev}", np.work, np.budget)],
                    None,
                ));
            }
            s.sock.describe()
        }
        None => match c.hops.first().and_then(|h| h.wake.as_ref()) {
            Some(w) => format!("wake-up: {}", w.cause.name()),
            None if c.woken_in_closed_chain => format!("epoll_wait returned ({})", crate::output::text::CLOSED_WAKE),
            None => "epoll_wait returned without sleeping".to_string(),
        },
    };
    let hops: Vec<Value> = c.hops.iter().map(|h| hop_json(h, c.start_ts, c.woken_in_closed_chain, stack_of)).collect();
    let mut notes = Vec::new();
    if c.woken() > 1 {
        let winners = c.hops.iter().filter(|h| h.accepted()).count();
        if c.sock.as_ref().map(|s| s.sock.is_listen()).unwrap_or(false) {
            notes.push(format!(
                "! thundering herd: one listen-socket event woke {} threads, {} accepted, {} woken for nothing",
                c.woken(),
                winners,
                c.wasted()
            ));
        } else {
            notes.push(format!("! one event woke {} threads, {} woken for nothing", c.woken(), c.wasted()));
        }
    }
    let mut flags = String::new();
    if c.woken() > 1 {
        let _ = write!(flags, "  [{} woken, {} for nothing]", c.woken(), c.wasted());
    }
    if c.incomplete {
        flags.push_str("  [incomplete]");
    }
    if c.records_lost {
        flags.push_str("  [records lost while open]");
    }
    json!({
        "id": c.id,
        "label": format!("chain {}  at {}  {}  ({}){flags}", c.id, dur(c.start_ts.saturating_sub(t0)), title, dur(chain_total(c))),
        "head": head,
        "hops": hops,
        "notes": notes,
        "incomplete": c.incomplete,
        "records_lost": c.records_lost,
    })
}

fn hop_json(h: &Hop, start: u64, woken_in_closed_chain: bool, stack_of: &mut dyn FnMut(&[u64]) -> Option<usize>) -> Value {
    let rel = |ts: u64| format!("+{} after the chain began", dur(ts.saturating_sub(start)));
    let mut steps: Vec<Value> = Vec::new();
    let mut last = start;
    match &h.wake {
        Some(w) => {
            steps.push(node(
                "wake",
                Some(format!("+{}", dur(w.ts.saturating_sub(start)))),
                format!("{} {}", if h.handoff { "handed to" } else { "woke" }, task(&h.target)),
                vec![
                    format!("{}{}", w.cause.name(), if w.via_epoll { " via epoll" } else { "" }),
                    format!("by {} ({}) on CPU{}", task(&w.waker), w.context.name(), w.cpu),
                ],
                stack_of(&w.stack),
            ));
            last = w.ts;
        }
        None if woken_in_closed_chain => steps.push(node(
            "wake",
            None,
            format!("{} returned from epoll_wait", task(&h.target)),
            vec![crate::output::text::CLOSED_WAKE.into()],
            None,
        )),
        None => steps.push(node(
            "wake",
            None,
            format!("{} was running", task(&h.target)),
            vec!["its epoll_wait returned without sleeping".into()],
            None,
        )),
    }
    if let Some(c) = &h.on_cpu {
        if c.never_left {
            steps.push(node(
                "cpu",
                Some("no wait".into()),
                format!("still on CPU{}", c.cpu),
                vec!["woken before it left its CPU: no run-queue wait".into()],
                None,
            ));
        } else {
            let mut lines = vec![rel(c.ts)];
            if c.migrated {
                lines.push(format!("migrated from CPU{}", c.prev_cpu));
            }
            if let Some(r) = &c.replaced {
                if !r.comm.is_empty() {
                    lines.push(format!("replacing {}", task(r)));
                }
            }
            steps.push(node("cpu", Some(format!("{} in the run queue", dur(c.runq_ns))), format!("on CPU{}", c.cpu), lines, None));
        }
        last = last.max(c.ts);
    }
    // An outer return, then its nested instance's.
    for e in h.epoll.iter().flat_map(|e| e.with_nested()) {
        let mut lines: Vec<String> = e
            .events
            .iter()
            .map(|r| match (r.fd, &r.sock) {
                (Some(fd), Some(s)) => format!("fd {fd} {} ({})", epoll_flags(r.events), s.describe()),
                (Some(fd), None) => format!("fd {fd} {}", epoll_flags(r.events)),
                (None, _) => format!("data 0x{:x} {}", r.data, epoll_flags(r.events)),
            })
            .collect();
        if e.not_read() > 0 {
            lines.push(format!("+{} more", e.not_read()));
        }
        lines.push(rel(e.ts));
        steps.push(node(
            "epoll",
            Some(format!("+{}", dur(e.ts.saturating_sub(last)))),
            format!("{}({}) returned {}", e.syscall.name(), e.epfd, crate::events::ret_text(e.ret)),
            lines,
            None,
        ));
        last = last.max(e.ts);
    }
    for a in &h.actions {
        let (ts, title, lines) = action_text(a, h.accepted(), h.wake.is_some());
        let kind = if title.contains("EAGAIN") && !h.accepted() && h.wake.is_some() { "wasted" } else { "action" };
        let edge = ts.map(|t| {
            let e = format!("+{}", dur(t.saturating_sub(last)));
            last = last.max(t);
            e
        });
        let mut lines = lines;
        if let Some(t) = ts {
            lines.push(rel(t));
        }
        steps.push(node(kind, edge, title, lines, None));
    }
    // Its last step: the hop ends when the thread sleeps again.
    if let Some(ts) = h.slept_again {
        steps.push(node(
            "wasted",
            Some(format!("+{}", dur(ts.saturating_sub(last)))),
            "asleep again".into(),
            vec!["epoll_wait found nothing: woken for nothing".into(), rel(ts)],
            None,
        ));
    }
    // Totals over the whole hop, after its timed steps.
    for (n, what, ns, why) in off_cpu(h) {
        if n > 0 {
            steps.push(node(
                "preempt",
                None,
                format!("{what} {n} time{}", if n == 1 { "" } else { "s" }),
                vec![format!("{} {why}", dur(ns))],
                None,
            ));
        }
    }
    json!({"target": task(&h.target), "wasted": h.wasted(), "steps": steps})
}

/// (time, title, detail lines) of an action; unknown kinds by their JSON.
#[allow(unreachable_patterns)]
fn action_text(a: &Action, accepted: bool, woken: bool) -> (Option<u64>, String, Vec<String>) {
    match a {
        Action::Accept { ts, syscall, listen_fd, ret, peer, backlog, max_backlog, .. } => {
            if *ret >= 0 {
                let p = peer.as_ref().map(|p| p.remote_text()).unwrap_or_else(|| "?".into());
                (
                    Some(*ts),
                    format!("{}({listen_fd}) = fd {ret}", syscall.name()),
                    vec![format!("peer {p}"), format!("backlog {backlog}/{max_backlog}")],
                )
            } else {
                let hint = match (*ret == -11 && !accepted, woken) {
                    (true, true) => vec!["nothing to accept: woken for nothing".to_string()],
                    (true, false) => vec!["nothing left to accept".to_string()],
                    _ => vec![],
                };
                (Some(*ts), format!("{}({listen_fd}) = -{}", syscall.name(), errno_name(-ret)), hint)
            }
        }
        Action::Close { ts, fd, sock } => (Some(*ts), format!("close({fd})"), sock.as_ref().map(SockInfo::describe).into_iter().collect()),
        Action::Handler { ts, name, fd, flags } => {
            let mut lines = Vec::new();
            if let Some(fd) = fd {
                lines.push(format!("fd {fd}"));
            }
            if let Some(f) = flags {
                lines.push(term_safe(f).into_owned());
            }
            (Some(*ts), format!("handler {}", term_safe(name)), lines)
        }
        other => {
            let v = serde_json::to_value(other).unwrap_or(Value::Null);
            let name = v["action"].as_str().unwrap_or("action").to_string();
            let ts = v["ts"].as_u64();
            let lines = v
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| *k != "action" && *k != "ts")
                        .map(|(k, v)| format!("{k}: {}", term_safe(&v.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            (ts, term_safe(&name).into_owned(), lines)
        }
    }
}

fn counters(o: &mut String, end: &TraceEnd<'_>) {
    let s = end.stats;
    let l = end.losses;
    // A recording cut short lost its end record, which held these totals.
    let incomplete = end.reason == crate::trace::INCOMPLETE_RECORDING;
    let known = |v: String| if incomplete { "unknown (the recording is incomplete)".to_string() } else { v };
    o.push_str("<section id=\"nd-summary\">\n<h2>Summary</h2>\n<table class=\"counters\">\n");
    let rows: Vec<(&str, String)> = vec![
        ("events", s.events.to_string()),
        ("chains", format!("{} ({} incomplete)", s.chains, s.chains_incomplete)),
        ("wake-ups", s.wakes.to_string()),
        ("accepts", format!("{} (and {} EAGAIN, {} other errors)", s.accepts, s.accept_eagain, s.accept_errors)),
        (
            "socket closes",
            format!("{} ({} of TCP connections), {} closes of other fds", s.socket_closes, s.connection_closes, s.closes - s.socket_closes),
        ),
        ("chains that woke more than one thread", s.herd_chains.to_string()),
        ("wake-ups for nothing", s.wasted_wakes.to_string()),
        (
            "context switches of the targets",
            format!(
                "{} voluntary, {} involuntary{}",
                s.voluntary_switches,
                s.involuntary_switches,
                if s.missed_switch_ins > 0 { format!("; switch-ins not seen: {}", s.missed_switch_ins) } else { String::new() }
            ),
        ),
        (
            "targets preempted by netdrift's reader",
            match (s.preempted_by_tracer, s.preempted_by_tracer_ns) {
                (Some(n), Some(ns)) => format!("{n} ({} before they ran again)", dur(ns)),
                _ => "unknown (recorded before netdrift kept its reader's tid)".to_string(),
            },
        ),
        ("lost records (ring buffer full)", known(l.ringbuf.to_string())),
        ("chains open when records were lost", s.chains_records_lost.to_string()),
        ("lost stacks / map full / unreadable epoll arrays", known(format!("{} / {} / {}", l.stack, l.map_full, l.user_read))),
        ("losses per CPU", known(if l.counted() > 0 { l.per_cpu_text() } else { "-".into() })),
        ("program runs skipped by the kernel", known(l.skipped_total().to_string())),
        ("undecodable records", known(end.decode_errors.to_string())),
        ("epoll events left as data words", s.epoll_data_unmapped.to_string()),
        ("busy-poll epoll_wait returns of nothing, counted in the kernel", known(s.epoll_empty_summed.unwrap_or(0).to_string())),
        ("duration", format!("{:.1} s ({})", end.secs, end.reason)),
    ];
    for (k, v) in rows {
        let _ = writeln!(o, "<tr><th>{}</th><td class=\"num\">{}</td></tr>", esc(k), text(&v));
    }
    o.push_str("</table>\n");
    if l.ringbuf > 0 {
        let _ = writeln!(
            o,
            "<p class=\"warn\">Records were lost: {}.</p>",
            crate::output::text::ringbuf_fix(end.ringbuf_mib, end.losses.reader, end.secs)
        );
    }
    if l.skipped_total() > 0 {
        let _ = writeln!(o, "<p class=\"warn\">{}.</p>", text(&crate::output::text::skipped_text(&l.skipped)));
    }
    if let Some(note) = crate::output::text::no_epoll_note(s, &end.summary.herd) {
        let _ = writeln!(o, "<p class=\"warn\">{}.</p>", text(note));
    }
    if !s.by_type.is_empty() {
        o.push_str("<p class=\"hint\">Events by type: ");
        let v: Vec<String> = s.by_type.iter().map(|(k, n)| format!("{} {n}", text(k))).collect();
        o.push_str(&v.join(", "));
        o.push_str("</p>\n");
    }
    o.push_str("</section>\n");
}

fn herd(o: &mut String, s: &Summary, lost: bool) {
    o.push_str("<section id=\"nd-herd\">\n<h2>Thundering herd, per listen socket</h2>\n");
    if s.herd.is_empty() {
        o.push_str("<p class=\"hint\">No listen-socket wake-ups were seen.</p>\n</section>\n");
        return;
    }
    o.push_str("<table class=\"herd\">\n<tr><th>socket</th><th class=\"num\">conns</th><th class=\"num\">events</th><th class=\"num\">woken</th><th class=\"num\">wasted</th><th class=\"num\">woken/event</th><th class=\"num\">wasted/conn</th><th>accepted by</th><th>woken for nothing</th></tr>\n");
    let list = |m: &std::collections::BTreeMap<String, u64>| -> String {
        if m.is_empty() {
            return "-".into();
        }
        m.iter().map(|(k, v)| format!("{} {v}", text(k))).collect::<Vec<_>>().join(", ")
    };
    for r in &s.herd {
        let _ = writeln!(
            o,
            "<tr><td class=\"mono\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.2}</td><td class=\"num{}\">{:.2}</td><td>{}</td><td>{}</td></tr>",
            text(&s.herd_label(r)),
            r.connections,
            r.events,
            r.wakeups,
            r.wasted,
            r.wakeups_per_event(),
            if r.herd_ratio() >= 0.5 { " warn" } else { "" },
            r.herd_ratio(),
            list(&r.winners),
            list(&r.losers)
        );
    }
    o.push_str("</table>\n");
    if lost {
        o.push_str("<p class=\"warn\">Records were lost: every count here is a lower bound.</p>\n");
    }
    for r in s.herd.iter().filter(|r| r.events_records_lost > 0) {
        let n = r.events_records_lost;
        let _ = writeln!(
            o,
            "<p>{}: {n} event{} open when records were lost left out of these counts.</p>",
            text(&s.herd_label(r)),
            if n == 1 { "" } else { "s" }
        );
    }
    for r in s.herd.iter().filter(|r| r.herd_ratio() >= 0.5) {
        let _ = writeln!(
            o,
            "<p class=\"warn\">{}: {:.2} wasted wake-ups per connection: register the listen socket with EPOLLEXCLUSIVE, or give each worker its own listen socket with SO_REUSEPORT.</p>",
            text(&s.herd_label(r)),
            r.herd_ratio()
        );
    }
    o.push_str("</section>\n");
}

fn pct(h: &Hist, p: f64) -> String {
    h.percentile(p).map(dur).unwrap_or_else(|| "-".into())
}

/// Latency stages, as the text summary names them.
fn stages(s: &Summary) -> [(&'static str, &Hist); 7] {
    s.latency.stages()
}

fn latency(o: &mut String, s: &Summary) {
    o.push_str("<section id=\"nd-latency\">\n<h2>Latency per stage</h2>\n");
    let st = stages(s);
    if !st.iter().any(|(_, h)| h.count > 0) {
        o.push_str("<p class=\"hint\">No complete stage was measured.</p>\n</section>\n");
        return;
    }
    o.push_str("<table class=\"latency\">\n<tr><th>stage</th><th class=\"num\">count</th><th class=\"num\">p50</th><th class=\"num\">p90</th><th class=\"num\">p99</th><th class=\"num\">max</th></tr>\n");
    for (name, h) in st.iter().filter(|(_, h)| h.count > 0) {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(name),
            h.count,
            esc(&pct(h, 50.0)),
            esc(&pct(h, 90.0)),
            esc(&pct(h, 99.0)),
            esc(&dur(h.max_ns))
        );
    }
    o.push_str("</table>\n<div class=\"hists\">\n");
    for (name, h) in st.iter().filter(|(_, h)| h.count > 0) {
        o.push_str(&hist_svg(name, h));
        o.push('\n');
    }
    o.push_str("</div>\n</section>\n");
}

/// A bucket bound in microseconds, short.
fn us_label(us: u64) -> String {
    if us < 1000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{}ms", trim_num(us as f64 / 1000.0))
    } else {
        format!("{}s", trim_num(us as f64 / 1e6))
    }
}

fn trim_num(v: f64) -> String {
    if v >= 100.0 || (v - v.round()).abs() < 0.05 {
        format!("{:.0}", v)
    } else {
        format!("{:.1}", v)
    }
}

/// One stage's log2 histogram (microseconds) as an SVG bar chart.
pub fn hist_svg(title: &str, h: &Hist) -> String {
    let b = h.log2_us();
    let first = b.iter().position(|&n| n > 0).unwrap_or(0);
    let last = b.iter().rposition(|&n| n > 0).unwrap_or(0);
    let n = last + 1 - first;
    let bw: usize = (520 / n.max(1)).clamp(14, 46);
    let (left, top, plot_h) = (44usize, 48usize, 120usize);
    let width = (left + n * bw + 16).max(300);
    let height = top + plot_h + 46;
    let max = b.iter().copied().max().unwrap_or(1).max(1);
    let mut o = String::new();
    let _ = write!(
        o,
        "<svg class=\"hist\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{}\" font-family=\"sans-serif\" font-size=\"10\">",
        esc(&format!("{title}: log2 histogram in microseconds"))
    );
    let _ = write!(o, "<title>{}</title>", esc(&format!("{title}: {} samples", h.count)));
    let _ = write!(o, "<text x=\"{}\" y=\"16\" font-size=\"12\" font-weight=\"bold\" fill=\"#1d2330\">{}</text>", left, esc(title));
    let _ = write!(
        o,
        "<text x=\"{}\" y=\"28\" fill=\"#5b6474\">{} samples, p50 {}, p99 {}</text>",
        left,
        h.count,
        esc(&pct(h, 50.0)),
        esc(&pct(h, 99.0))
    );
    let base_y = top + plot_h;
    let _ = write!(o, "<line x1=\"{left}\" y1=\"{base_y}\" x2=\"{}\" y2=\"{base_y}\" stroke=\"#9aa8bd\"/>", left + n * bw);
    let _ = write!(o, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#5b6474\">{max}</text>", left - 4, top + 8);
    let _ = write!(o, "<text x=\"{}\" y=\"{base_y}\" text-anchor=\"end\" fill=\"#5b6474\">0</text>", left - 4);
    for (k, i) in (first..=last).enumerate() {
        let count = b.get(i).copied().unwrap_or(0);
        let bh = ((count as f64 / max as f64) * plot_h as f64).round() as usize;
        let x = left + k * bw;
        let (lo, hi) = if i == 0 { (0u64, 1u64) } else { (1u64 << i, (1u64 << (i + 1)) - 1) };
        let _ = write!(
            o,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{bh}\" fill=\"#5a8ad6\"><title>{}</title></rect>",
            x + 2,
            base_y - bh,
            bw.saturating_sub(4).max(2),
            esc(&format!("{lo} .. {hi} us: {count}"))
        );
        if count > 0 {
            let _ =
                write!(o, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#1d2330\">{count}</text>", x + bw / 2, base_y - bh - 3);
        }
        let _ = write!(
            o,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" transform=\"rotate(-45 {} {})\" fill=\"#5b6474\">{}</text>",
            x + bw / 2 + 3,
            base_y + 12,
            x + bw / 2 + 3,
            base_y + 12,
            esc(&us_label(lo))
        );
    }
    o.push_str("</svg>");
    o
}

fn threads(o: &mut String, s: &Summary) {
    o.push_str("<section id=\"nd-threads\">\n<h2>Wake-ups per thread</h2>\n");
    if s.threads.is_empty() {
        o.push_str("<p class=\"hint\">No target thread was seen.</p>\n</section>\n");
        return;
    }
    o.push_str("<table class=\"threads\">\n<tr><th>thread</th><th class=\"num\">wake-ups</th><th class=\"num\">voluntary</th><th class=\"num\">involuntary</th><th class=\"num\">run queue p50</th><th class=\"num\">p99</th><th>causes</th><th>waker contexts</th><th>top wakers</th></tr>\n");
    let join =
        |m: &std::collections::BTreeMap<String, u64>| m.iter().map(|(k, v)| format!("{} {v}", text(k))).collect::<Vec<_>>().join(", ");
    for t in &s.threads {
        let mut w: Vec<(&String, &u64)> = t.wakers.iter().collect();
        w.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let top: Vec<String> = w.iter().take(5).map(|(k, v)| format!("{} {v}", text(k))).collect();
        let _ = writeln!(
            o,
            "<tr><td class=\"mono\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            t.label(&text(&t.comm)),
            t.wakeups,
            t.voluntary,
            t.involuntary,
            esc(&pct(&t.runq, 50.0)),
            esc(&pct(&t.runq, 99.0)),
            join(&t.by_cause),
            join(&t.by_context),
            top.join(", ")
        );
    }
    o.push_str("</table>\n</section>\n");
}

/// Render folded lines with inferno, then make the SVG static: no script, no
/// event handlers, no zoom/search controls; kernel frames become links.
pub fn flame_svg(lines: &[String], links: &[(String, String)]) -> Option<String> {
    let mut attrs = String::new();
    for (f, url) in links {
        if !f.contains(['\t', '\n', '"']) && url.starts_with(ELIXIR) {
            let _ = writeln!(attrs, "{f}\thref={url}");
        }
    }
    let mut opt = inferno::flamegraph::Options::default();
    opt.func_frameattrs = inferno::flamegraph::FuncFrameAttrsMap::from_reader(std::io::Cursor::new(attrs.into_bytes())).ok()?;
    opt.title = "Off-wake time: who woke the targets".into();
    opt.subtitle = Some("bottom: woken thread and its wait; above --: the waker's kernel stack, outermost first".into());
    opt.count_name = "us".into();
    opt.colors = inferno::flamegraph::Palette::Multi(inferno::flamegraph::color::MultiPalette::Wakeup);
    opt.hash = true;
    opt.deterministic = true;
    opt.no_javascript = true;
    opt.image_width = Some(1200);
    let mut out = Vec::new();
    inferno::flamegraph::from_lines(&mut opt, lines.iter().map(String::as_str), &mut out).ok()?;
    sanitize_svg(&String::from_utf8(out).ok()?)
}

fn remove_between(s: &str, open: &str, close: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(open) {
        out.push_str(&rest[..i]);
        match rest[i..].find(close) {
            Some(j) => rest = &rest[i + j + close.len()..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// inferno's SVG made inert for inlining: from `<svg` on, without comments,
/// `<script>`, the `onload` handler and the controls that need the script.
/// None if anything active is left.
pub fn sanitize_svg(svg: &str) -> Option<String> {
    let start = svg.find("<svg")?;
    let mut s = remove_between(&svg[start..], "<!--", "-->");
    s = remove_between(&s, "<script", "</script>");
    s = s.replace(" onload=\"init(evt)\"", "");
    // inferno styles every SVG text of the page: keep it to the flame graph.
    s = s.replacen("\ntext {", "\n.flame svg text {", 1);
    for id in ["unzoom", "search", "matched", "details"] {
        s = remove_between(&s, &format!("<text id=\"{id}\""), "</text>");
    }
    svg_is_inert(&s).then_some(s)
}

/// No script, no event handler attribute, no javascript: URL, no element
/// that loads or embeds anything, and links only to elixir.bootlin.com.
pub fn svg_is_inert(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    for bad in ["<script", "<foreignobject", "<iframe", "<img", "<image", "<use", "<object", "<embed", "<!entity"] {
        if lower.contains(bad) {
            return false;
        }
    }
    // Inside every tag: no on* attribute, and any href goes to elixir.
    let mut rest = lower.as_str();
    while let Some(i) = rest.find('<') {
        let after = &rest[i + 1..];
        let end = after.find('>').unwrap_or(after.len());
        let tag = &after[..end];
        // In a tag only: a process may be named `javascript:x` (escaped text).
        if tag.contains("javascript:") {
            return false;
        }
        for (k, w) in tag.char_indices() {
            if w.is_ascii_whitespace() && tag[k + 1..].starts_with("on") {
                let name: String = tag[k + 1..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == ':').collect();
                let after_name = tag[k + 1 + name.len()..].trim_start();
                if name.len() > 2 && after_name.starts_with('=') {
                    return false;
                }
            }
        }
        let mut t = tag;
        while let Some(h) = t.find("href=\"") {
            let v = &t[h + 6..];
            if !(v.starts_with(ELIXIR) || v.starts_with('#')) {
                return false;
            }
            t = v;
        }
        rest = &after[end..];
    }
    true
}

impl Observer for ReportWriter {
    fn needs_stacks(&self) -> bool {
        true
    }
    fn open(&mut self) -> Result<()> {
        crate::trace::check_file_path(&self.path)?;
        self.file = Some(PartialFile::create(&self.path, OnDrop::Remove)?);
        Ok(())
    }

    fn start(&mut self, start: &Value) {
        self.start = start.clone();
        self.t0 = start["t0_ns"].as_u64().unwrap_or(0);
    }

    fn event(&mut self, ev: &Event, _ann: &Annotation) {
        self.add_event(ev);
    }

    fn chain(&mut self, c: &Chain) {
        self.add_chain(c);
    }

    fn finish(&mut self, end: &TraceEnd<'_>, syms: &mut KernelSyms) -> Result<()> {
        let page = self.render(end, syms);
        let mut f = match self.file.take() {
            Some(f) => f,
            None => PartialFile::create(&self.path, OnDrop::Remove)?,
        };
        f.write_all(page.as_bytes()).map_err(|e| Error::write(&self.path, e))?;
        f.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Stats;
    use crate::output::perfetto::tests::{feed, herd_events};
    use crate::output::text::Losses;

    /// Past the cap, the report keeps the summary's slowest chains (its
    /// links go to them): chains with no wake-up, however long, are not those.
    #[test]
    fn the_slowest_chains_past_the_cap_are_the_summarys() {
        let mut c = crate::analysis::Correlator::new();
        for e in herd_events() {
            c.ingest(&e);
        }
        let mut done = c.drain_completed();
        done.extend(c.finish());
        let base = done.into_iter().find(|k| crate::summary::chain_span(k).is_some()).expect("a woken, complete chain");
        let mut w = ReportWriter::new(Path::new("report.html"), None);
        let with = |id: u64, longer: u64, woken: bool| {
            let mut k = (*base).clone();
            k.id = id;
            let end = k.end_ts();
            k.hops[0].slept_again = Some(end + longer);
            if !woken {
                k.hops.iter_mut().for_each(|h| h.wake = None);
            }
            k
        };
        for id in 1..=MAX_CHAINS as u64 {
            w.add_chain(&with(id, 0, true));
        }
        for id in 3000..3005 {
            w.add_chain(&with(id, 10_000_000, false));
        }
        w.add_chain(&with(4000, 5_000_000, true));
        assert_eq!(w.slow.first().map(|k| k.id), Some(4000));
        assert!(w.slow.iter().all(|k| k.id < 3000 || k.id == 4000), "{:?}", w.slow.iter().map(|k| k.id).collect::<Vec<_>>());
    }

    #[test]
    fn an_interrupted_epoll_wait_shows_its_errno() {
        let v = chain_json(&crate::analysis::tests::interrupted_epoll_chain(), 0, &mut |_| None).to_string();
        assert!(v.contains("epoll_wait(4) returned -EINTR") && !v.contains("more"), "{v}");
    }

    #[test]
    fn escapes_text_and_script_json() {
        assert_eq!(esc("<img src=x onerror=alert(1)>&\"'"), "&lt;img src=x onerror=alert(1)&gt;&amp;&quot;&#39;");
        assert_eq!(text("\u{1b}[31mred"), "\\x1b[31mred");
        let v = json!({"c": "</script><img src=x>&\u{2028}\u{2029}"});
        let s = script_json(&v);
        assert!(!s.contains('<') && !s.contains('>') && !s.contains('&') && !s.contains('\u{2028}'), "{s}");
        let back: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn elixir_versions_and_idents() {
        assert_eq!(elixir_version("6.18.44-fc-v669").as_deref(), Some("v6.18"));
        assert_eq!(elixir_version("6.1.0-27-amd64").as_deref(), Some("v6.1"));
        assert_eq!(elixir_version("5.10").as_deref(), Some("v5.10"));
        assert_eq!(elixir_version("weird"), None);
        assert_eq!(elixir_version("6"), None);
        assert_eq!(kernel_ident("sock_def_readable.isra.0"), Some("sock_def_readable"));
        assert_eq!(kernel_ident("[unknown] 0xffff"), None);
        assert_eq!(kernel_ident("<img"), None);
        assert_eq!(
            ident_url("https://elixir.bootlin.com/linux/v6.18", "tcp_v4_rcv"),
            "https://elixir.bootlin.com/linux/v6.18/C/ident/tcp_v4_rcv"
        );
    }

    #[test]
    fn flame_graph_is_inert_and_links_kernel_frames() {
        let lines = vec![
            "<img src=x oner;blocked in epoll_wait;--;entry_SYSCALL_64;tcp_v4_rcv;sock_def_readable.isra.0;try_to_wake_up 120".to_string(),
            "w\"1'\\x1b[31m;sleeping (S);--;[unknown] 0xffffffff81000000 3".to_string(),
        ];
        let base = "https://elixir.bootlin.com/linux/v6.18";
        let links: Vec<(String, String)> = ["entry_SYSCALL_64", "tcp_v4_rcv", "sock_def_readable.isra.0", "try_to_wake_up"]
            .iter()
            .map(|f| (f.to_string(), ident_url(base, kernel_ident(f).unwrap())))
            .collect();
        let svg = flame_svg(&lines, &links).expect("rendered");
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(!svg.contains("<script") && !svg.contains("onload") && !svg.contains("<img"), "inert");
        assert!(svg.contains("&lt;img src=x oner"), "comm escaped");
        assert!(svg.contains("https://elixir.bootlin.com/linux/v6.18/C/ident/sock_def_readable"), "kernel frames link");
        assert!(svg_is_inert(&svg));
        assert!(!svg_is_inert("<svg><g onclick=\"x()\"></g></svg>"));
        assert!(!svg_is_inert("<svg><a href=\"https://evil.example/\">x</a></svg>"));
        assert!(svg_is_inert("<svg><text>onclick=\"x\"</text></svg>"), "text is not an attribute");
        assert!(svg_is_inert("<svg><g><title>javascript:alert(1)</title></g></svg>"), "a process named so: text");
        assert!(!svg_is_inert("<svg><a xlink:href=\"javascript:alert(1)\">x</a></svg>"));
    }

    #[test]
    fn report_from_fixture_is_self_contained_and_escaped() {
        let mut r = ReportWriter::new(Path::new("/nonexistent.html"), Some(Path::new("run<1>.ndr"))).with_release("6.18.44-fc-v669");
        r.start(&json!({"t0_ns": 500, "pids": [100], "tids": [], "comms": ["<b>"], "notes": ["<i>degraded</i>"]}));
        let mut c = crate::analysis::Correlator::new();
        let evs = herd_events();
        feed(&evs, &mut |e, a, ch| {
            if let (Some(e), Some(a)) = (e, a) {
                r.event(e, a);
            }
            if let Some(ch) = ch {
                r.chain(ch);
            }
        });
        for e in &evs {
            c.ingest(e);
        }
        c.finish();
        let stats: Stats = c.stats();
        let losses = Losses::default();
        let summary = c.summary.build();
        let end =
            TraceEnd { stats: &stats, summary: &summary, losses: &losses, secs: 1.0, reason: "done", ringbuf_mib: 8, decode_errors: 0 };
        let mut syms = KernelSyms::new();
        let page = r.render(&end, &mut syms);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(!page.contains("<img") && !page.contains("<b>") && !page.contains("<i>degraded"), "no markup from the trace");
        assert!(page.contains("&lt;img src=x oner"), "hostile comm shown as text");
        assert!(page.contains("\\u003cimg src=x oner"), "and escaped in the JSON data");
        assert!(!page.contains('\u{1b}'), "no raw escape byte");
        // Nothing to fetch: every src/href is a fragment or an elixir link.
        for attr in ["src=\"", "href=\""] {
            for (i, _) in page.match_indices(attr) {
                let v = &page[i + attr.len()..];
                assert!(v.starts_with('#') || v.starts_with(ELIXIR), "{attr}{}", &v[..v.len().min(60)]);
            }
        }
        assert!(page.contains("id=\"nd-herd\"") && page.contains("<svg class=\"hist\""));
        assert!(page.contains("id=\"nd-data\""));
        let j = page.split("id=\"nd-data\">").nth(1).unwrap().split("</script>").next().unwrap();
        let data: Value = serde_json::from_str(j).unwrap();
        assert_eq!(data["elixir"], "https://elixir.bootlin.com/linux/v6.18");
        assert_eq!(data["chains"].as_array().unwrap().len(), 1, "the fixture is one herd chain");
        let d = data["default_index"].as_u64().unwrap() as usize;
        assert_eq!(data["chains"][d]["hops"].as_array().unwrap().len(), 2, "the herd chain is shown first");
    }

    #[test]
    fn exited_threads_leave_no_flame_state() {
        let mut w = ReportWriter::new(Path::new("r.html"), None);
        let out = |state| Kind::SwitchOut { involuntary: false, woken: false, state, next_tid: 0, next_comm: "swapper/0".into() };
        for tid in 1..=1000 {
            let t = Task { pid: 7, tid, comm: "worker".into() };
            let at = |ts, kind| Event { ts, cpu: 0, task: t.clone(), kind };
            w.add_event(&at(10, Kind::EpollEnter { epfd: 3, maxevents: 8, syscall: crate::events::Syscall::EpollWait }));
            w.add_event(&at(20, out(1)));
            w.add_event(&at(30, Kind::TaskExit { group_dead: false }));
            w.add_event(&at(40, out(crate::analysis::TASK_DEAD)));
        }
        assert!(w.threads.is_empty(), "{} threads kept", w.threads.len());
    }

    #[test]
    fn histogram_svg_has_one_bar_per_bucket() {
        let mut h = Hist::default();
        for ns in [500, 3_000, 3_500, 1_000_000] {
            h.add(ns);
        }
        let s = hist_svg("a <stage>", &h);
        assert!(s.contains("a &lt;stage&gt;"));
        assert_eq!(s.matches("<rect").count(), 10, "buckets 0..=9");
    }
}
