//! Command line (clap derive). BCC-style flags: -p PID, -t TID, -c COMM,
//! a trailing duration in seconds.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

macro_rules! trace_examples {
    () => {
        "    netdrift trace -p $(pgrep -o nginx)  # nginx master and workers, to Ctrl-C
    netdrift trace -p 1234 10            # pid 1234 for 10 seconds
    netdrift trace -c redis-server --stacks   # each waker's kernel stack
    # from a server's first connection: start netdrift, then the server
    netdrift trace -c redis-server --wait --ready-file /tmp/ready
    # two threads, JSON Lines to a file:
    netdrift trace -t 4449 -t 4450 --json -o chains.jsonl
    # for scripts: the file appears once the probes are attached:
    netdrift trace -p 1234 --ready-file /tmp/ready 30
    # redis' acceptTcpHandler and readQueryFromClient in the chains:
    netdrift trace -c redis-server --preset redis
    # a libevent callback, with its fd and flags (docs/handlers.md):
    netdrift trace -p 42 --handler 'exe:*on_event*:fd=arg0:events=arg1/libevent'"
    };
}

const EXAMPLES: &str = concat!(
    "EXAMPLES:\n    netdrift demo                        # built-in Envoy-like server: a herd\n",
    trace_examples!(),
    "\n    netdrift doctor                      # what this kernel supports"
);

const TRACE_EXAMPLES: &str = concat!("EXAMPLES:\n", trace_examples!());

#[derive(Debug, Parser)]
#[command(
    name = "netdrift",
    version,
    about = "Follow a network event through the kernel into an epoll server: packet -> socket -> epoll -> wake-up -> run queue -> CPU -> epoll_wait -> handler",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace the wake-up chains of target processes or threads.
    #[command(after_help = TRACE_EXAMPLES)]
    Trace(TraceArgs),
    /// Start a built-in Envoy-like server (two workers, one shared listen
    /// socket) and a client, and trace it: no target needed.
    #[command(after_help = DEMO_EXAMPLES)]
    Demo(DemoArgs),
    /// Check what this kernel and these privileges allow, by loading tiny programs
    /// (exit status 1 when `netdrift trace` cannot run here).
    #[command(
        after_help = "EXAMPLES:\n    netdrift doctor          # each check, then what netdrift can do here\n    netdrift doctor --json   # the same as one JSON object"
    )]
    Doctor(DoctorArgs),
    /// Trace like `trace` but print only the thundering-herd table: per listen socket, connections, wake-ups, wake-ups for nothing, who won and lost (with --json, the event lines as `trace --json` writes them, and the table on stderr).
    #[command(after_help = "EXAMPLES:\n    # does nginx wake several workers per connection?\n    netdrift herd -p $(pgrep -o nginx) 30")]
    Herd(TraceArgs),
    /// Rebuild chains and every summary from a file saved with `--record`.
    #[command(
        after_help = "EXAMPLES:\n    netdrift trace -p 1234 --record run.ndr 30 && netdrift analyze run.ndr\n    netdrift analyze run.ndr --json -o run.jsonl"
    )]
    Analyze(AnalyzeArgs),
    /// Off-CPU time by blocked stack and waker stack (BCC's offwaketime), summed in the kernel: blocked time and run-queue wait per key. Without -p/-t/-c, every thread but netdrift's.
    #[command(after_help = OFFWAKE_EXAMPLES)]
    Offwake(OffwakeArgs),
    /// Write one self-contained HTML report (summary, herd table, latency histograms, off-wake flame graph, chain diagrams with kernel source links), from a live trace or from a `--record` file.
    #[command(after_help = REPORT_EXAMPLES)]
    Report(ReportArgs),
}

#[derive(Debug, Args, Clone)]
pub struct OutputArgs {
    /// Print JSON Lines (one object per event, with its chain id) instead of chain blocks. Schema: docs/json.md.
    #[arg(long)]
    pub json: bool,
    /// Take every waker's kernel stack (not one per waker and class each 100 ms) and print it in the chain blocks and the JSON wake lines, symbolized from /proc/kallsyms (`report` and --record take every stack anyway).
    #[arg(long)]
    pub stacks: bool,
    /// Write the output to FILE (as FILE.partial until the trace ends cleanly; a device or FIFO such as /dev/null is written in place).
    #[arg(short = 'o', long = "output-file", value_name = "FILE")]
    pub output_file: Option<PathBuf>,
    /// Ring buffer size in MiB (a power of two). Raise it when the summary reports lost records.
    #[arg(long = "ringbuf-size", value_name = "MIB", default_value_t = DEFAULT_RINGBUF_MIB, value_parser = parse_ringbuf)]
    pub ringbuf_mib: u32,
    /// Close a chain still waiting for a thread after this many milliseconds (it is printed as incomplete; at most one day).
    #[arg(long = "idle-ms", value_name = "MS", default_value_t = DEFAULT_IDLE_MS, value_parser = parse_idle_ms)]
    pub idle_ms: u64,
    /// Also save the raw events to FILE; `netdrift analyze FILE` rebuilds every chain and summary from it.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Also trace the receive path before the socket (net:netif_receive_skb, napi:napi_poll), so chains start at the packet. Runs a program on every received packet.
    #[arg(long)]
    pub packets: bool,
    /// Also trace epoll_ctl(2) (every registration change). Off by default: a syscall tracepoint runs for every
    /// process's epoll_ctl, not only the targets' (its cost on a loaded nginx: docs/benchmark.md). Without it, the data word of an accepted socket is read from the kernel's epoll item and others
    /// from /proc/PID/fdinfo. Use it when fds are registered by another thread than the one that accepted them.
    #[arg(long)]
    pub epoll_ctl: bool,
    /// Also write a Perfetto / chrome://tracing timeline (Chrome trace-event JSON) to FILE: a track per thread, per-CPU waker tracks, arrows socket -> wake-up -> epoll_wait return. See docs/report.md.
    #[arg(long, value_name = "FILE")]
    pub perfetto: Option<PathBuf>,
}

/// The command line, with `herd`'s help told apart from `trace`'s where
/// their shared flags do other things (herd prints no chain blocks).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command().mut_subcommand("herd", |c| {
        c.mut_arg("json", |a| {
            a.help("Print JSON Lines (the event lines as `trace --json` writes them, schema docs/json.md) instead of the herd table, which goes to stderr.")
        })
        .mut_arg("stacks", |a| {
            a.help("With --json: take every waker's kernel stack and put it in the JSON wake lines (refused without --json: the herd table has no stacks).")
        })
        .mut_arg("output_file", |a| {
            a.help("Write the herd table and summary (with --json: the event lines) to FILE (as FILE.partial until the trace ends cleanly; a device or FIFO is written in place); the table and summary are also printed on stderr.")
        })
    })
}

/// Parse the process's arguments through [`command`].
pub fn try_parse() -> Result<Cli, clap::Error> {
    use clap::FromArgMatches;
    let mut cmd = command();
    let mut m = cmd.try_get_matches_from_mut(std::env::args_os())?;
    let mut cli = Cli::from_arg_matches_mut(&mut m).map_err(|e| e.format(&mut cmd))?;
    match &mut cli.command {
        Command::Trace(t) | Command::Herd(t) => t.target.dedup(),
        Command::Report(r) => r.trace.target.dedup(),
        Command::Offwake(o) => o.target.dedup(),
        Command::Demo(_) | Command::Analyze(_) | Command::Doctor(_) => {}
    }
    Ok(cli)
}

/// `--ringbuf-size` when not given (MiB).
pub const DEFAULT_RINGBUF_MIB: u32 = 8;
/// `--idle-ms` when not given.
pub const DEFAULT_IDLE_MS: u64 = 2000;

/// Who to trace: shared by every tracing command.
#[derive(Debug, Args, Clone, Default)]
pub struct TargetArgs {
    /// Trace this process: all its threads and its child processes, including ones created later. Repeatable.
    #[arg(short = 'p', long = "pid", value_name = "PID", value_parser = parse_id)]
    pub pids: Vec<u32>,
    /// Trace this thread only. Repeatable.
    #[arg(short = 't', long = "tid", value_name = "TID", value_parser = parse_id)]
    pub tids: Vec<u32>,
    /// Trace processes (or threads) with this name, and processes that exec it later. Repeatable, at most 8.
    #[arg(short = 'c', long = "comm", value_name = "COMM")]
    pub comms: Vec<String>,
    /// With -p, do not follow child processes.
    #[arg(long, requires = "pids")]
    pub no_children: bool,
    /// With -c, start even when no process has that name yet: the ones that exec it later are traced (start netdrift, then the server).
    #[arg(long, requires = "comms")]
    pub wait: bool,
}

impl TargetArgs {
    /// A target given twice is one target (and one of the 8 -c names).
    pub fn dedup(&mut self) {
        fn once<T: Clone + Eq + std::hash::Hash>(v: &mut Vec<T>) {
            let mut seen = std::collections::HashSet::new();
            v.retain(|x| seen.insert(x.clone()));
        }
        once(&mut self.pids);
        once(&mut self.tids);
        once(&mut self.comms);
    }

    pub fn is_empty(&self) -> bool {
        self.pids.is_empty() && self.tids.is_empty() && self.comms.is_empty()
    }
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Join an application handler to the chains: BINARY:GLOB[:fd=argN][:events=argM/DECODER]. BINARY is `exe`, a path (an absolute one is looked up in the target's root, its links followed there) or a library name in the target's maps (`libevent`); GLOB matches mangled and demangled names; DECODER is libevent, epoll, ae or raw. Repeatable.
    #[arg(long = "handler", value_name = "SPEC", value_parser = parse_handler)]
    pub handlers: Vec<crate::handlers::HandlerSpec>,
    /// Handler probes for a known server: envoy, redis, nginx, memcached (libevent). Repeatable.
    #[arg(long = "preset", value_name = "NAME", value_parser = ["envoy", "redis", "nginx", "memcached", "libevent"])]
    pub presets: Vec<String>,
    /// Write a file (containing netdrift's pid) once the probes are attached, for scripts; removed once they are detached.
    #[arg(long = "ready-file", value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutputArgs,
    /// Stop after this many seconds (default: until Ctrl-C or the targets exit).
    #[arg(value_name = "DURATION", value_parser = parse_seconds)]
    pub duration: Option<f64>,
    /// Benchmark only (bench/run.sh): capture no waker stacks, so wake-ups have no cause or context.
    #[arg(long, hide = true)]
    pub bench_no_stacks: bool,
    /// Benchmark only (bench/run.sh): read the ring buffer and drop the records undecoded, to measure the kernel side alone.
    #[arg(long, hide = true)]
    pub bench_discard: bool,
    /// Benchmark and tests only: load the programs of older kernels (a helper call per socket field as before 6.2, the sleep state read from the task as before 5.18).
    #[arg(long, hide = true)]
    pub bench_probed_reads: bool,
    /// Benchmark only (bench/run.sh): attach every program as usual but have each return at once: the cost of attaching alone.
    #[arg(long, hide = true)]
    pub bench_empty: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of client connections.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 5)]
    pub connections: usize,
    /// Pause between connections in milliseconds, so both workers are asleep when the next arrives.
    #[arg(long = "gap-ms", value_name = "MS", default_value_t = 50)]
    pub gap_ms: u64,
    /// Worker threads.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub workers: usize,
    /// CPU time each request burns in the worker, in microseconds (long handlers get preempted).
    #[arg(long = "work-us", value_name = "US", default_value_t = 0)]
    pub work_us: u64,
    /// How workers share the listen socket: shared (like Envoy: herd), exclusive (EPOLLEXCLUSIVE), reuseport (SO_REUSEPORT).
    #[arg(long, default_value = "shared", value_parser = ["shared", "exclusive", "reuseport"])]
    pub mode: String,
    /// Write FILE (holding netdrift's pid) once the probes are attached; removed once they are detached.
    #[arg(long = "ready-file", value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// A file written by `netdrift trace --record FILE`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print JSON Lines, as `trace --json` would have.
    #[arg(long)]
    pub json: bool,
    /// Print each waker's kernel stack (symbolized with this machine's kallsyms: same boot only).
    #[arg(long)]
    pub stacks: bool,
    /// Write the output to FILE (as FILE.partial until complete; a device or FIFO is written in place).
    #[arg(short = 'o', long = "output-file", value_name = "FILE")]
    pub output_file: Option<PathBuf>,
    /// Print only the thundering-herd table.
    #[arg(long)]
    pub herd: bool,
    /// Also write a Perfetto / chrome://tracing timeline (Chrome trace-event JSON) to FILE. See docs/report.md.
    #[arg(long, value_name = "FILE")]
    pub perfetto: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_handler(s: &str) -> Result<crate::handlers::HandlerSpec, String> {
    s.parse()
}

fn parse_id(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|_| format!("{s:?} is not a number: give a numeric id (see `ps -e` / `ps -eL`)"))?;
    if v == 0 {
        return Err("0 is not a valid id (pid 0 is the idle task); give a real process or thread id".into());
    }
    Ok(v)
}

fn parse_idle_ms(s: &str) -> Result<u64, String> {
    let v: u64 = s.parse().map_err(|_| format!("{s:?} is not a whole number of milliseconds (1 to 86400000)"))?;
    if !(1..=86_400_000).contains(&v) {
        return Err(format!("{v} is not in 1..=86400000 (1 ms to one day)"));
    }
    Ok(v)
}

/// A trailing duration: a number of seconds (range checked with the rest of the command line).
fn parse_seconds(s: &str) -> Result<f64, String> {
    s.parse().map_err(|_| format!("{s:?} is not a number of seconds (e.g. 10 or 2.5)"))
}

fn parse_ringbuf(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|_| format!("{s:?} is not a number of MiB"))?;
    if v == 0 || !v.is_power_of_two() || v > 1024 {
        return Err(format!("{v} MiB: the ring buffer size must be a power of two between 1 and 1024"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
        command().debug_assert();
    }

    /// herd's help speaks of the herd table, not of chain blocks it never prints.
    #[test]
    fn herd_help_describes_herd() {
        let help = |sub: &str| {
            let h = command().find_subcommand_mut(sub).expect(sub).render_long_help().to_string();
            h.split_whitespace().collect::<Vec<_>>().join(" ")
        };
        let herd = help("herd");
        assert!(!herd.contains("chain blocks"), "{herd}");
        assert!(herd.contains("instead of the herd table") && herd.contains("refused without --json"), "{herd}");
        assert!(help("trace").contains("instead of chain blocks"));
    }

    #[test]
    fn parses_bcc_style() {
        let c = Cli::try_parse_from(["netdrift", "trace", "-p", "12", "-p", "13", "-t", "14", "--json", "5"]).unwrap();
        match c.command {
            Command::Trace(t) => {
                assert_eq!(t.target.pids, vec![12, 13]);
                assert_eq!(t.target.tids, vec![14]);
                assert_eq!(t.duration, Some(5.0));
                assert!(t.out.json);
            }
            _ => panic!(),
        }
        assert!(Cli::try_parse_from(["netdrift", "trace", "-p", "0"]).is_err());
        assert!(Cli::try_parse_from(["netdrift", "trace", "-p", "abc"]).is_err());
        assert!(Cli::try_parse_from(["netdrift", "trace", "--ringbuf-size", "3"]).is_err());
    }

    #[test]
    fn a_target_given_twice_is_one() {
        let mut t = TargetArgs {
            pids: vec![5, 6, 5],
            tids: vec![7, 7],
            comms: ["herd", "x", "herd"].map(String::from).to_vec(),
            ..Default::default()
        };
        t.dedup();
        assert_eq!((t.pids, t.tids, t.comms), (vec![5, 6], vec![7], vec!["herd".to_string(), "x".into()]));
    }
}

const OFFWAKE_EXAMPLES: &str = "\
EXAMPLES:
    netdrift offwake -p 1234 10    # pid 1234 for 10 s, like BCC's offwaketime
    netdrift offwake -f 5          # every thread but netdrift's, folded, 5 s
    # folded, for flamegraph.pl / inferno / speedscope:
    netdrift offwake -c redis-server -f -o out.folded 30
    # an off-wake flame graph (waker frames above the -- separator):
    netdrift offwake -t 4449 --svg offwake.svg 10
    # D-state sleeps of 1 ms or more, as JSON Lines:
    netdrift offwake -p 1234 --json --state uninterruptible -m 1000";

/// `netdrift offwake`: BCC-style flags (-p/-t/-c, -u/-k, -U/-K, -m/-M, -f, -d).
#[derive(Debug, Args)]
pub struct OffwakeArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Only user threads (no kernel threads).
    #[arg(short = 'u', long = "user-threads-only", conflicts_with = "kernel_threads_only")]
    pub user_threads_only: bool,
    /// Only kernel threads.
    #[arg(short = 'k', long = "kernel-threads-only")]
    pub kernel_threads_only: bool,
    /// Capture user stacks only (no kernel stacks).
    #[arg(short = 'U', long = "user-stacks-only", conflicts_with = "kernel_stacks_only")]
    pub user_stacks_only: bool,
    /// Capture kernel stacks only (no user stacks).
    #[arg(short = 'K', long = "kernel-stacks-only")]
    pub kernel_stacks_only: bool,
    /// Count only periods off CPU (switch-out -> back on CPU, as BCC's -m) of at least this many microseconds.
    #[arg(short = 'm', long = "min-block-us", value_name = "US", default_value_t = 1)]
    pub min_block_us: u64,
    /// Count only periods off CPU of at most this many microseconds.
    #[arg(short = 'M', long = "max-block-us", value_name = "US")]
    pub max_block_us: Option<u64>,
    /// Task state at switch-out that counts: interruptible (S), uninterruptible (D) or any sleeping state.
    #[arg(long, value_name = "STATE", default_value = "any", value_parser = ["interruptible", "uninterruptible", "any"])]
    pub state: String,
    /// Entries of the stack-trace map. Raise it when the summary reports stacks lost to EEXIST/ENOMEM.
    #[arg(long = "stack-storage-size", value_name = "N", default_value_t = 16384)]
    pub stack_storage_size: u32,
    /// Entries of the in-kernel totals map (distinct stack/waker keys). Raise it when the summary reports the map full.
    #[arg(long = "max-keys", value_name = "N", default_value_t = 16384)]
    pub max_keys: u32,
    /// Print folded stacks (`blocked;...;--;...;waker N`, N in microseconds) for flamegraph.pl, inferno or speedscope.
    #[arg(short = 'f', long, conflicts_with = "json")]
    pub folded: bool,
    /// Print JSON Lines: one object per key (stacks as arrays, both times, counts), then a summary with the losses.
    #[arg(long)]
    pub json: bool,
    /// Also write an off-wake flame graph (SVG, waker frames in another colour above --) to FILE.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Which time the folded output and the flame graph count: total (blocked + run-queue wait, BCC's), blocked or runq.
    #[arg(long, value_name = "METRIC", default_value = "total", value_parser = ["total", "blocked", "runq"])]
    pub metric: String,
    /// Insert `-` between the kernel and the user stack of each side.
    #[arg(short = 'd', long)]
    pub delimited: bool,
    /// Write the output to FILE (as FILE.partial until it is complete; a device or FIFO is written in place).
    #[arg(short = 'o', long = "output-file", value_name = "FILE")]
    pub output_file: Option<PathBuf>,
    /// Write a file (containing netdrift's pid) once the programs are attached, for scripts; removed once they are detached.
    #[arg(long = "ready-file", value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Stop after this many seconds (default: until Ctrl-C or the targets exit).
    #[arg(value_name = "DURATION", value_parser = parse_seconds)]
    pub duration: Option<f64>,
}

const REPORT_EXAMPLES: &str = "\
EXAMPLES:
    # trace nginx for 30 s, then write the report:
    netdrift report nginx.html -p $(pgrep -o nginx) 30
    # from a recording (no root needed):
    netdrift report run.html --from run.ndr
    # also a Perfetto timeline:
    netdrift report demo.html -t 4449 --perfetto demo.json 10";

const DEMO_EXAMPLES: &str = "\
EXAMPLES:
    netdrift demo                   # 5 connections: each wakes both workers
    netdrift demo --mode exclusive  # EPOLLEXCLUSIVE: one worker per connection
    netdrift demo --mode reuseport  # SO_REUSEPORT: one listen socket per worker
    netdrift demo -n 20 --json -o demo.jsonl   # 20 connections, as JSON Lines
    netdrift demo --work-us 3000 --stacks      # long handlers, waker stacks";

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The HTML file to write (as FILE.partial until it is complete). Open it in any browser: it fetches nothing.
    #[arg(value_name = "FILE.html")]
    pub file: PathBuf,
    /// Build the report from a file saved with `netdrift trace --record` instead of tracing (no root needed; stacks are symbolized with this machine's kallsyms).
    #[arg(long, value_name = "RECORDING")]
    pub from: Option<PathBuf>,
    /// What to trace when not --from: the targets, duration and flags of `netdrift trace`.
    #[command(flatten)]
    pub trace: TraceArgs,
}
