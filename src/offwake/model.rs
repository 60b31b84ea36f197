//! What `netdrift offwake` reports and how it is rendered: pure functions over
//! symbolized stacks (no BPF, no /proc), so they are tested with synthetic
//! stacks.
//!
//! Stacks are stored innermost frame first, as the kernel returns them.
//! Renderers follow BCC's `offwaketime`:
//!
//! * text: the waker (its user stack then its kernel stack, outermost first),
//!   a `--` separator, the blocked thread (kernel stack then user stack,
//!   innermost first), then the times: the two stacks meet at the wake-up;
//! * folded: `blocked_comm;blocked user (outermost first);blocked kernel;--;
//!   waker kernel (innermost first);waker user;waker_comm N`, which
//!   flamegraph.pl, inferno-flamegraph and speedscope draw with the waker
//!   upside down on top of the blocked stack.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// In which context a wake-up ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WakeContext {
    /// Process context of the waker task (a syscall, a kernel thread).
    Task,
    /// Serving a softirq.
    Softirq,
    /// A hard irq.
    Irq,
    /// A non-maskable interrupt.
    Nmi,
    /// No wake-up was seen for the blocked period.
    NotSeen,
}

/// Where an interrupt-context wake-up ran, for its description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Host {
    /// It interrupted the task (or ran on irq exit while it was interrupted).
    Interrupting,
    /// softirq run inside the task's own syscall (`local_bh_enable`, loopback sends).
    SyscallOf,
    /// The per-CPU softirq thread.
    Ksoftirqd,
    /// The CPU was idle.
    Idle,
}

/// A thread, as the kernel named it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Thread {
    /// Thread name (15 bytes at most).
    pub comm: String,
    /// Thread group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
}

/// Who woke a blocked period.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Waker {
    /// Task, softirq, irq, NMI, or not seen.
    pub context: WakeContext,
    /// The waker task; for interrupt contexts, the task that was on the CPU.
    pub task: Thread,
    /// CPU of the wake-up (interrupt contexts only, else 0).
    pub cpu: u32,
    /// Interrupt contexts: where the interrupt ran.
    pub host: Host,
    /// Kernel stack, innermost first.
    pub kernel: Vec<String>,
    /// User stack, innermost first (empty for kernel threads and interrupts).
    pub user: Vec<String>,
}

impl Waker {
    /// The name in the waker's place: its comm, or `[softirq CPU1]` for an
    /// interrupt. Not escaped: each output escapes it its own way, once.
    pub fn name(&self) -> String {
        match self.context {
            WakeContext::Task => self.task.comm.clone(),
            WakeContext::Softirq => format!("[softirq CPU{}]", self.cpu),
            WakeContext::Irq => format!("[irq CPU{}]", self.cpu),
            WakeContext::Nmi => format!("[nmi CPU{}]", self.cpu),
            WakeContext::NotSeen => "[waker not seen]".into(),
        }
    }

    /// The waker line of the text output, after `waker:`.
    pub fn describe(&self) -> String {
        let t = format!("{} {}", clean(&self.task.comm), self.task.tid);
        match self.context {
            WakeContext::Task => t,
            WakeContext::NotSeen => {
                format!("{} (the wake-up was not seen: it raced with the switch-out, or the kernel skipped a program run)", self.name())
            }
            _ => {
                let how = match self.host {
                    Host::Interrupting => format!("interrupting {t}"),
                    Host::SyscallOf => format!("in the syscall of {t}"),
                    Host::Ksoftirqd => format!("in {t}"),
                    Host::Idle => format!("idle CPU, {}", clean(&self.task.comm)),
                };
                format!("{} ({how})", self.name())
            }
        }
    }
}

/// One key of the kernel's totals: a blocked thread and stacks, its waker, the times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The thread that was off CPU.
    pub blocked: Thread,
    /// Kernel stack at switch-out, innermost first.
    pub blocked_kernel: Vec<String>,
    /// User stack at switch-out, innermost first.
    pub blocked_user: Vec<String>,
    /// Task states at switch-out (1 interruptible, 2 uninterruptible, ...), merged.
    pub states: Vec<u32>,
    /// Who woke it.
    pub waker: Waker,
    /// Switch-out -> wake-up, summed.
    pub blocked_ns: u64,
    /// Wake-up -> on CPU, summed.
    pub runq_ns: u64,
    /// Blocked periods summed.
    pub count: u64,
}

impl Entry {
    /// Blocked time in whole microseconds.
    pub fn blocked_us(&self) -> u64 {
        self.blocked_ns / 1000
    }

    /// Run-queue wait in whole microseconds.
    pub fn runq_us(&self) -> u64 {
        self.runq_ns / 1000
    }

    /// Off-CPU total in microseconds: by definition `blocked_us + runq_us`,
    /// so every output format adds up to the same number.
    pub fn total_us(&self) -> u64 {
        self.blocked_us() + self.runq_us()
    }

    /// The value of `metric` in microseconds.
    pub fn value_us(&self, metric: Metric) -> u64 {
        match metric {
            Metric::Total => self.total_us(),
            Metric::Blocked => self.blocked_us(),
            Metric::Runq => self.runq_us(),
        }
    }

    /// Everything but the times and states: entries with equal identities are merged.
    fn identity(&self) -> (&Thread, &Vec<String>, &Vec<String>, &Waker) {
        (&self.blocked, &self.blocked_kernel, &self.blocked_user, &self.waker)
    }
}

/// Which number the folded output and the flame graph use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Metric {
    /// blocked + run-queue wait (BCC's number).
    #[default]
    Total,
    /// Switch-out -> wake-up only.
    Blocked,
    /// Wake-up -> on CPU only.
    Runq,
}

impl Metric {
    /// Parse `total`, `blocked` or `runq`.
    pub fn parse(s: &str) -> Option<Metric> {
        match s {
            "total" => Some(Metric::Total),
            "blocked" => Some(Metric::Blocked),
            "runq" => Some(Metric::Runq),
            _ => None,
        }
    }
}

/// How the renderers lay stacks out.
#[derive(Debug, Clone, Copy, Default)]
pub struct RenderOptions {
    /// The number of the folded lines and the flame graph.
    pub metric: Metric,
    /// Put `-` between the user and the kernel stack of each side (BCC's -d).
    pub delimited: bool,
}

/// Sums over all entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Entries.
    pub keys: u64,
    /// Blocked periods.
    pub count: u64,
    /// Switch-out -> wake-up, microseconds.
    pub blocked_us: u64,
    /// Wake-up -> on CPU, microseconds.
    pub runq_us: u64,
    /// blocked_us + runq_us.
    pub total_us: u64,
}

/// Add the entries up.
pub fn totals(entries: &[Entry]) -> Totals {
    let mut t = Totals::default();
    for e in entries {
        t.keys += 1;
        t.count += e.count;
        t.blocked_us += e.blocked_us();
        t.runq_us += e.runq_us();
        t.total_us += e.total_us();
    }
    t
}

/// Merge entries whose stacks and threads render identically (different
/// stack ids can symbolize to the same frames).
pub fn merge(entries: Vec<Entry>) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
    let mut index: std::collections::HashMap<(Thread, Vec<String>, Vec<String>, Waker), usize> = std::collections::HashMap::new();
    for e in entries {
        let (a, b, c, d) = e.identity();
        let id = (a.clone(), b.clone(), c.clone(), d.clone());
        match index.get(&id) {
            Some(&i) => {
                let m = &mut out[i];
                m.blocked_ns += e.blocked_ns;
                m.runq_ns += e.runq_ns;
                m.count += e.count;
                for s in e.states {
                    if !m.states.contains(&s) {
                        m.states.push(s);
                    }
                }
                m.states.sort_unstable();
            }
            None => {
                index.insert(id, out.len());
                out.push(e);
            }
        }
    }
    out
}

/// Is `f` the entry of a hard interrupt or NMI (x86_64, arm64)?
pub fn is_interrupt_entry(f: &str) -> bool {
    f.starts_with("asm_sysvec_")
        || f.starts_with("asm_common_interrupt")
        || f.starts_with("asm_exc_nmi")
        || f.starts_with("el1h_64_irq")
        || f.starts_with("el0t_64_irq")
        || f.starts_with("el1h_64_fiq")
        || f.starts_with("el0t_64_fiq")
}

/// An interrupt's kernel stack (innermost first) goes on into the code it
/// interrupted, which did not cause the wake-up: keep it up to the
/// interrupt's entry.
pub fn interrupt_frames(kernel: Vec<String>) -> Vec<String> {
    match kernel.iter().position(|f| is_interrupt_entry(f)) {
        Some(i) => {
            let mut k = kernel;
            k.truncate(i + 1);
            k
        }
        None => kernel,
    }
}

/// A string from the traced system, safe for one line of output: control
/// and invisible characters (bidi overrides...: `output::invisible`) are
/// written as `trace` writes them (`\x1b`, `\u{202e}`), so one name reads
/// the same in both.
pub fn clean(s: &str) -> String {
    crate::output::term_safe(s).into_owned()
}

/// A frame or name for the folded format: `;` separates frames there, so it
/// becomes `:`; control and invisible characters are escaped as in
/// [`clean`] (U+FFFF would make the SVG drawn from these lines invalid XML).
pub fn folded_frame(s: &str) -> String {
    clean(s).replace(';', ":")
}

/// A thread name for the folded format: one that reads as structure there
/// (the `--` and `-` delimiters, or a `[...]` name the waker's place takes
/// for an interrupt) is quoted, so a thread named `--` or `[irq CPU0]`
/// cannot pass for them.
pub fn folded_comm(s: &str) -> String {
    let f = folded_frame(s);
    if f == "-" || f == "--" || f.starts_with('[') || f.starts_with('\'') {
        format!("'{f}'")
    } else {
        f
    }
}

/// The stack part of a folded line (everything but the value).
pub fn folded_stack(e: &Entry, opts: &RenderOptions) -> String {
    let mut parts: Vec<String> = Vec::new();
    parts.push(folded_comm(&e.blocked.comm));
    parts.extend(e.blocked_user.iter().rev().map(|f| folded_frame(f)));
    if opts.delimited && !e.blocked_user.is_empty() && !e.blocked_kernel.is_empty() {
        parts.push("-".into());
    }
    parts.extend(e.blocked_kernel.iter().rev().map(|f| folded_frame(f)));
    parts.push("--".into());
    parts.extend(e.waker.kernel.iter().map(|f| folded_frame(f)));
    if opts.delimited && !e.waker.user.is_empty() && !e.waker.kernel.is_empty() {
        parts.push("-".into());
    }
    parts.extend(e.waker.user.iter().map(|f| folded_frame(f)));
    parts.push(match e.waker.context {
        WakeContext::Task => folded_comm(&e.waker.task.comm),
        _ => folded_frame(&e.waker.name()),
    });
    let mut s = parts.join(";");
    // A stack ending in " 3" (a thread named `worker 3`) before its value
    // reads as a differential line (two counts) to flamegraph.pl and inferno.
    if let Some(at) = s.rfind(' ').filter(|&at| s[at + 1..].chars().all(|c| c.is_ascii_digit() || c == '.')) {
        s.replace_range(at..at + 1, "_");
    }
    s
}

/// Folded lines, one per distinct stack (entries that differ only in their
/// thread ids are summed), largest first; zero values are left out.
pub fn folded_lines(entries: &[Entry], opts: &RenderOptions) -> Vec<(String, u64)> {
    let mut sums: BTreeMap<String, u64> = BTreeMap::new();
    for e in entries {
        *sums.entry(folded_stack(e, opts)).or_default() += e.value_us(opts.metric);
    }
    let mut v: Vec<(String, u64)> = sums.into_iter().filter(|(_, n)| *n > 0).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// The folded output: `stack N` lines, N in microseconds.
pub fn folded(entries: &[Entry], opts: &RenderOptions) -> String {
    let mut o = String::new();
    for (s, n) in folded_lines(entries, opts) {
        let _ = writeln!(o, "{s} {n}");
    }
    o
}

/// Task state letters of `ps` for the states of a period (I: TASK_IDLE, an idle kernel thread).
pub fn state_name(state: u32) -> &'static str {
    if state & 0x402 == 0x402 {
        "I"
    } else if state & 0x2 != 0 {
        "D"
    } else if state & 0x1 != 0 {
        "S"
    } else if state & 0x4 != 0 {
        "T"
    } else if state & 0x8 != 0 {
        "t"
    } else {
        "?"
    }
}

/// One text block, BCC's layout plus the split of the time.
pub fn text_block(e: &Entry, opts: &RenderOptions) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "    {:<16} {}", "waker:", e.waker.describe());
    for f in e.waker.user.iter().rev() {
        let _ = writeln!(o, "    {}", clean(f));
    }
    if opts.delimited && !e.waker.user.is_empty() && !e.waker.kernel.is_empty() {
        let _ = writeln!(o, "    -");
    }
    for f in e.waker.kernel.iter().rev() {
        let _ = writeln!(o, "    {}", clean(f));
    }
    let _ = writeln!(o, "    {:<16} --", "--");
    for f in &e.blocked_kernel {
        let _ = writeln!(o, "    {}", clean(f));
    }
    if opts.delimited && !e.blocked_user.is_empty() && !e.blocked_kernel.is_empty() {
        let _ = writeln!(o, "    -");
    }
    for f in &e.blocked_user {
        let _ = writeln!(o, "    {}", clean(f));
    }
    let _ = writeln!(o, "    {:<16} {} {}", "target:", clean(&e.blocked.comm), e.blocked.tid);
    let states: Vec<&str> = e.states.iter().map(|s| state_name(*s)).collect();
    let _ = writeln!(
        o,
        "        {} us total = {} us blocked + {} us run-queue wait  ({} wake-up{}, state {})",
        e.total_us(),
        e.blocked_us(),
        e.runq_us(),
        e.count,
        if e.count == 1 { "" } else { "s" },
        if states.is_empty() { "?".to_string() } else { states.join(",") }
    );
    o
}

/// The text output: one block per entry, smallest first as BCC prints them
/// (the largest ends up last, next to the summary).
pub fn text(entries: &[Entry], opts: &RenderOptions) -> String {
    let mut v: Vec<&Entry> = entries.iter().collect();
    v.sort_by(|a, b| a.total_us().cmp(&b.total_us()).then_with(|| folded_stack(a, opts).cmp(&folded_stack(b, opts))));
    let mut o = String::new();
    for e in v {
        o.push_str(&text_block(e, opts));
        o.push('\n');
    }
    o
}

/// One entry as a JSON object (`type: "offwake"`).
pub fn json_entry(e: &Entry) -> Value {
    json!({
        "type": "offwake",
        "blocked": {
            "comm": e.blocked.comm,
            "pid": e.blocked.pid,
            "tid": e.blocked.tid,
            "states": e.states.iter().map(|s| state_name(*s)).collect::<Vec<_>>(),
            "kernel_stack": e.blocked_kernel,
            "user_stack": e.blocked_user,
        },
        "waker": {
            "name": e.waker.name(),
            "context": e.waker.context,
            "host": if matches!(e.waker.context, WakeContext::Task | WakeContext::NotSeen) { Value::Null } else { json!(e.waker.host) },
            "cpu": if matches!(e.waker.context, WakeContext::Task | WakeContext::NotSeen) { Value::Null } else { json!(e.waker.cpu) },
            "comm": e.waker.task.comm,
            "pid": e.waker.task.pid,
            "tid": e.waker.task.tid,
            "kernel_stack": e.waker.kernel,
            "user_stack": e.waker.user,
        },
        "blocked_us": e.blocked_us(),
        "runq_us": e.runq_us(),
        "total_us": e.total_us(),
        "count": e.count,
    })
}

/// JSON Lines: one object per entry, largest total first (no summary: the caller adds it).
pub fn json_lines(entries: &[Entry]) -> String {
    let mut v: Vec<&Entry> = entries.iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.total_us()));
    let mut o = String::new();
    for e in v {
        let _ = writeln!(o, "{}", json_entry(e));
    }
    o
}

/// Sum of the values of folded text (`stack N` lines), for checks.
pub fn folded_total(text: &str) -> u64 {
    text.lines().filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok()).sum()
}

/// Sum of the totals of text output (the `N us total` lines), for checks.
pub fn text_total(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let (n, rest) = l.split_once(' ')?;
            rest.starts_with("us total").then(|| n.parse::<u64>().ok()).flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn entry() -> Entry {
        Entry {
            blocked: Thread { comm: "pw:reader".into(), pid: 100, tid: 101 },
            // Innermost first, as the kernel gives them.
            blocked_kernel: v(&["__schedule", "schedule", "pipe_read", "vfs_read", "do_syscall_64"]),
            blocked_user: v(&["read", "netdrift_test_blocked_reader", "reader_main", "start_thread"]),
            states: vec![1],
            waker: Waker {
                context: WakeContext::Task,
                task: Thread { comm: "pw:writer".into(), pid: 100, tid: 102 },
                cpu: 0,
                host: Host::Interrupting,
                kernel: v(&["try_to_wake_up", "__wake_up_common", "pipe_write", "vfs_write", "do_syscall_64"]),
                user: v(&["write", "netdrift_test_waker_writer", "writer_main", "start_thread"]),
            },
            blocked_ns: 1_000_999_999,
            runq_ns: 20_500,
            count: 20,
        }
    }

    #[test]
    fn every_entry_field_is_named_in_the_json_docs() {
        let docs = include_str!("../../docs/json.md");
        let j = json_entry(&entry());
        let nested = ["blocked", "waker"].map(|k| j[k].as_object().unwrap().keys());
        for k in j.as_object().unwrap().keys().chain(nested.into_iter().flatten()).filter(|k| *k != "type") {
            assert!(docs.contains(&format!("`{k}`")), "docs/json.md does not name `{k}` of an offwake line");
        }
    }

    /// Names from the traced system: a waker thread named `worker 3` must not
    /// read as a differential line, and bidi overrides or U+FFFF (invalid in
    /// the SVG's XML) reach neither the folded lines nor the text.
    #[test]
    fn hostile_names_stay_inert_in_folded_lines_and_text() {
        let mut e = entry();
        e.waker.task.comm = "worker 3".into();
        e.blocked.comm = "\u{202e}evil\u{ffff}".into();
        let s = folded_stack(&e, &RenderOptions::default());
        assert!(s.ends_with(";worker_3") && s.starts_with("\\u{202e}evil\\u{ffff};"), "{s}");
        let line = folded(std::slice::from_ref(&e), &RenderOptions::default());
        assert_eq!(line.trim_end().rsplit(' ').nth(1).map(|t| t.parse::<f64>().is_err()), Some(true), "{line}");
        assert_eq!(clean("a\u{202e}b\u{61c}c\u{e0041}\u{1b}"), "a\\u{202e}b\\u{61c}c\\u{e0041}\\x1b");
        let svg = String::from_utf8(crate::offwake::svg::render(&[e], &RenderOptions::default(), "t").unwrap()).unwrap();
        assert!(!svg.contains('\u{ffff}') && !svg.contains('\u{202e}'), "raw in the SVG");
    }

    /// A waker's name is escaped once, as the blocked thread's: one holding
    /// ESC and one spelling `\x1b` read apart on both sides of `--`.
    #[test]
    fn waker_and_blocked_names_are_escaped_alike() {
        let mut e = entry();
        e.blocked.comm = "w\u{1b}[0m".into();
        e.waker.task.comm = "w\u{1b}[0m".into();
        let s = folded_stack(&e, &RenderOptions::default());
        assert!(s.starts_with("w\\x1b[0m;") && s.ends_with(";w\\x1b[0m"), "{s}");
        e.waker.task.comm = "w\\x1b[0m".into();
        assert!(folded_stack(&e, &RenderOptions::default()).ends_with(";w\\\\x1b[0m"));
    }

    #[test]
    fn folded_line_orders_like_bcc() {
        let e = entry();
        let s = folded_stack(&e, &RenderOptions::default());
        assert_eq!(
            s,
            "pw:reader;start_thread;reader_main;netdrift_test_blocked_reader;read;\
             do_syscall_64;vfs_read;pipe_read;schedule;__schedule;--;\
             try_to_wake_up;__wake_up_common;pipe_write;vfs_write;do_syscall_64;\
             write;netdrift_test_waker_writer;writer_main;start_thread;pw:writer"
        );
        let d = folded_stack(&e, &RenderOptions { delimited: true, ..Default::default() });
        assert!(d.contains("netdrift_test_blocked_reader;read;-;do_syscall_64"), "{d}");
        assert!(d.contains("do_syscall_64;-;write;netdrift_test_waker_writer"), "{d}");
        assert_eq!(folded(std::slice::from_ref(&e), &RenderOptions::default()), format!("{s} 1001019\n"));
        let b = folded(&[e], &RenderOptions { metric: Metric::Blocked, ..Default::default() });
        assert!(b.ends_with(" 1000999\n"), "{b}");
    }

    #[test]
    fn text_block_mirrors_stacks_around_the_separator() {
        let t = text_block(&entry(), &RenderOptions::default());
        let lines: Vec<&str> = t.lines().map(|l| l.trim()).collect();
        assert_eq!(lines[0], "waker:           pw:writer 102");
        // Waker: user outermost first, then kernel down to try_to_wake_up.
        assert_eq!(&lines[1..5], &["start_thread", "writer_main", "netdrift_test_waker_writer", "write"]);
        assert_eq!(lines[5], "do_syscall_64");
        assert_eq!(lines[9], "try_to_wake_up");
        assert_eq!(lines[10], "--               --");
        // Blocked: kernel innermost first, then user.
        assert_eq!(lines[11], "__schedule");
        assert_eq!(lines[16], "read");
        assert_eq!(lines[20], "target:          pw:reader 101");
        assert_eq!(lines[21], "1001019 us total = 1000999 us blocked + 20 us run-queue wait  (20 wake-ups, state S)");
    }

    #[test]
    fn interrupt_wakers_are_named_by_context() {
        let mut e = entry();
        e.waker.context = WakeContext::Softirq;
        e.waker.cpu = 1;
        e.waker.user.clear();
        e.waker.task = Thread { comm: "curl".into(), pid: 1234, tid: 1234 };
        assert_eq!(e.waker.name(), "[softirq CPU1]");
        assert_eq!(e.waker.describe(), "[softirq CPU1] (interrupting curl 1234)");
        e.waker.host = Host::SyscallOf;
        assert_eq!(e.waker.describe(), "[softirq CPU1] (in the syscall of curl 1234)");
        assert!(folded_stack(&e, &RenderOptions::default()).ends_with("do_syscall_64;[softirq CPU1]"));
        e.waker.context = WakeContext::Irq;
        assert_eq!(e.waker.name(), "[irq CPU1]");
        e.waker.context = WakeContext::NotSeen;
        assert_eq!(e.waker.name(), "[waker not seen]");
    }

    #[test]
    fn interrupt_stacks_stop_at_the_interrupt_entry() {
        let k =
            v(&[&crate::symbolize::tests::TIMER_IRQ_WAKE[..], &["clear_page_erms", "do_anonymous_page", "asm_exc_page_fault"]].concat());
        assert_eq!(interrupt_frames(k).last().map(|s| s.as_str()), Some("asm_sysvec_apic_timer_interrupt"));
        let ksoftirqd = v(&["try_to_wake_up", "sock_def_readable", "net_rx_action", "handle_softirqs", "run_ksoftirqd", "kthread"]);
        assert_eq!(interrupt_frames(ksoftirqd.clone()), ksoftirqd);
    }

    #[test]
    fn text_folded_and_json_agree_on_totals() {
        let mut a = entry();
        let mut b = entry();
        b.blocked.tid = 103; // same stacks, other thread: one folded line, two text blocks
        b.blocked_ns = 2_999;
        b.runq_ns = 1_999;
        a.runq_ns = 999; // rounds to 0 us
        let mut c = entry();
        c.waker.kernel.push("extra".into());
        c.blocked_ns = 5_000_000;
        let es = vec![a, b, c];
        let opts = RenderOptions::default();
        let f = folded(&es, &opts);
        assert_eq!(f.lines().count(), 2, "{f}");
        let t = text(&es, &opts);
        let tot = totals(&es);
        assert_eq!(folded_total(&f), tot.total_us);
        assert_eq!(text_total(&t), tot.total_us);
        assert_eq!(tot.total_us, tot.blocked_us + tot.runq_us);
        let j: u64 = json_lines(&es).lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["total_us"].as_u64().unwrap()).sum();
        assert_eq!(j, tot.total_us);
        // Text is smallest first.
        let firsts: Vec<u64> =
            t.lines().filter(|l| l.contains("us total")).map(|l| l.trim().split(' ').next().unwrap().parse().unwrap()).collect();
        assert_eq!(firsts.len(), 3, "one block per entry: {t}");
        assert!(firsts.windows(2).all(|w| w[0] <= w[1]), "{firsts:?}");
    }

    #[test]
    fn merge_sums_identical_renderings() {
        let mut b = entry();
        b.states = vec![2];
        let m = merge(vec![entry(), b, {
            let mut c = entry();
            c.blocked.tid = 7;
            c
        }]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].count, 40);
        assert_eq!(m[0].states, vec![1, 2]);
        assert_eq!(m[0].blocked_ns, 2 * 1_000_999_999);
    }

    #[test]
    fn hostile_names_stay_on_one_line_and_one_frame() {
        let mut e = entry();
        e.blocked.comm = "a;b\nc".into();
        e.blocked_user[0] = "operator;()".into();
        let s = folded_stack(&e, &RenderOptions::default());
        assert!(s.starts_with("a:b\\x0ac;"), "{s}");
        assert!(s.contains(";operator:();"), "{s}");
        assert!(!text_block(&e, &RenderOptions::default()).contains("a;b\nc"));
        // Names that read as the delimiter or as an interrupt's place are quoted.
        e.blocked.comm = "--".into();
        e.waker.task.comm = "[irq CPU0]".into();
        let s = folded_stack(&e, &RenderOptions::default());
        assert!(s.starts_with("'--';"), "{s}");
        assert_eq!(s.split(';').filter(|f| *f == "--").count(), 1, "{s}");
        assert!(s.ends_with(";'[irq CPU0]'"), "{s}");
        e.waker.context = WakeContext::Irq;
        e.waker.cpu = 0;
        assert!(folded_stack(&e, &RenderOptions::default()).ends_with(";[irq CPU0]"));
    }
}
