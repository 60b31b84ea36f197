use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use netdrift::cli::{AnalyzeArgs, Command, DemoArgs, DoctorArgs, OutputArgs, TraceArgs};
use netdrift::demo::{self, DemoConfig, DemoServer, ListenMode};
use netdrift::error::Error;
use netdrift::probes::ProbeConfig;
use netdrift::procfs;
use netdrift::trace::{self, AnalyzeOptions, Report, Sink, TraceOptions};

fn main() {
    let cli = match netdrift::cli::try_parse() {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayVersion
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            // One line, like every other error; --help has the rest.
            // The message may span lines (a list of missing arguments): join
            // them, and leave usage and tips to --help.
            let text = e.render().to_string();
            let msg: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            let msg = msg.join(" ");
            let msg = msg.trim_start_matches("error: ");
            // `-p -5` reads as an unknown flag: say what is wrong with it.
            let negative = e.kind() == clap::error::ErrorKind::UnknownArgument
                && matches!(e.get(clap::error::ContextKind::InvalidArg), Some(clap::error::ContextValue::String(a))
                    if a.len() > 1 && a[1..].parse::<f64>().is_ok());
            let msg = if negative { format!("{msg}: every number netdrift takes is positive") } else { msg.to_string() };
            // The message quotes the arguments, which may hold escape sequences.
            eprintln!(
                "netdrift: {} (see netdrift --help)",
                if msg.is_empty() { "bad arguments".into() } else { netdrift::output::term_safe(&msg) }
            );
            std::process::exit(2);
        }
    };
    let files = written_files(&cli.command);
    let res = match cli.command {
        Command::Trace(a) => cmd_trace(a, Report::Full),
        Command::Herd(a) => cmd_trace(a, Report::Herd),
        Command::Analyze(a) => cmd_analyze(a),
        Command::Demo(a) => cmd_demo(a),
        Command::Doctor(a) => cmd_doctor(a),
        Command::Offwake(a) => cmd_offwake(a),
        Command::Report(a) => cmd_report(a),
    };
    if let Err(e) = res {
        // `netdrift trace | head` (or `-o FIFO` and its reader): the reader has
        // all it wanted, as with any filter; the programs detach with the
        // process. Not when files were being written too: they stay .partial,
        // and the status says so.
        let in_chain = |k: std::io::ErrorKind| e.chain().any(|c| io_error(c).is_some_and(|io| io.kind() == k));
        let broken_pipe = in_chain(std::io::ErrorKind::BrokenPipe);
        // A device or FIFO (/dev/null) is written in place: never .partial.
        // What is on disk says it: the pipe may break after an output was
        // committed (the summary is written last), and that one is whole.
        let on_disk = |kept: bool| -> Vec<String> {
            files
                .iter()
                .filter(|(f, k)| *k == kept && !netdrift::output::output_target(f).1)
                .filter_map(|(f, _)| {
                    let partial = netdrift::output::partial_path(f);
                    if kept {
                        partial.exists().then_some(partial)
                    } else {
                        (!f.exists()).then(|| f.clone())
                    }
                })
                .map(|p| p.display().to_string())
                .collect()
        };
        let (partial, removed) = (on_disk(true), on_disk(false));
        if partial.is_empty() && removed.is_empty() && broken_pipe {
            std::process::exit(0);
        }
        // Not eprintln: stderr may be a closed pipe too, and that must not panic. The
        // message can quote the traced system (a symbol, a path): one safe line.
        let msg = if broken_pipe {
            // The reader left while files were written: not a failure to explain, but they are incomplete.
            let closed = e
                .chain()
                .find_map(|c| {
                    // A file's write error travels inside an io::Error, its kind kept.
                    let inner = io_error(c).and_then(|io| io.get_ref()).and_then(|i| i.downcast_ref::<Error>());
                    match inner.or(c.downcast_ref::<Error>()) {
                        Some(Error::Write { path, .. }) => Some(format!("the reader of {} left", path.display())),
                        _ => None,
                    }
                })
                .unwrap_or_else(|| "standard output closed".into());
            let mut what = Vec::new();
            if !partial.is_empty() {
                what.push(format!("left incomplete as {}", partial.join(", ")));
            }
            if !removed.is_empty() {
                what.push(format!("not written: {}", removed.join(", ")));
            }
            format!("{closed} (broken pipe) before the end: {}", what.join("; "))
        } else {
            format!("{e:#}")
        };
        let _ = writeln!(std::io::stderr(), "netdrift: {}", netdrift::output::term_safe(&msg));
        // Ctrl-C while waiting for a FIFO's reader: ended as asked, nothing traced.
        let interrupted = in_chain(std::io::ErrorKind::Interrupted);
        let code =
            if interrupted && netdrift::trace::signalled() { 0 } else { e.downcast_ref::<Error>().map(|k| k.exit_code()).unwrap_or(1) };
        std::process::exit(code);
    }
}

/// The io::Error a link of an error chain is, or holds as its source.
fn io_error<'a>(c: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    c.downcast_ref::<std::io::Error>().or(match c.downcast_ref::<Error>() {
        Some(Error::Io(io) | Error::Output { source: io, .. } | Error::Write { source: io, .. }) => Some(io),
        _ => None,
    })
}

/// The files this command writes, each with whether a failed run leaves it
/// as FILE.partial (a stream) or removes it (written only at the end).
fn written_files(c: &Command) -> Vec<(std::path::PathBuf, bool)> {
    use std::path::PathBuf;
    let given = |ps: &[(&Option<PathBuf>, bool)]| ps.iter().filter_map(|(p, k)| Some(((*p).clone()?, *k))).collect::<Vec<_>>();
    let out = |o: &OutputArgs| given(&[(&o.output_file, true), (&o.record, true), (&o.perfetto, false)]);
    match c {
        Command::Trace(a) | Command::Herd(a) => out(&a.out),
        Command::Demo(a) => out(&a.out),
        Command::Analyze(a) => given(&[(&a.output_file, true), (&a.perfetto, false)]),
        Command::Offwake(a) => given(&[(&a.output_file, false), (&a.svg, false)]),
        Command::Report(a) => std::iter::once((a.file.clone(), false)).chain(out(&a.trace.out)).collect(),
        Command::Doctor(_) => Vec::new(),
    }
}

fn base_options(out: &OutputArgs) -> TraceOptions {
    TraceOptions {
        json: out.json,
        stacks: out.stacks,
        sink: out.output_file.clone().map(Sink::File).unwrap_or_default(),
        idle: Duration::from_millis(out.idle_ms),
        probe: ProbeConfig { ringbuf_bytes: out.ringbuf_mib << 20, packets: out.packets, epoll_ctl: out.epoll_ctl, ..Default::default() },
        record: out.record.clone(),
        observers: perfetto_observers(out.perfetto.as_deref()),
        ..Default::default()
    }
}

/// Every output of a run checked before anything is loaded or read: files,
/// all different, none of them the recording being read.
fn check_outputs(input: Option<&std::path::Path>, outs: &[Option<&std::path::Path>]) -> anyhow::Result<()> {
    let outs: Vec<&std::path::Path> = outs.iter().flatten().copied().collect();
    trace::check_outputs(&outs)?;
    if let Some(i) = input.filter(|i| outs.iter().any(|o| trace::file_identity(o) == trace::file_identity(i))) {
        return Err(Error::Usage(format!("{} is the recording being read: give the output another name", i.display())).into());
    }
    Ok(())
}

fn cmd_analyze(a: AnalyzeArgs) -> anyhow::Result<()> {
    check_outputs(Some(&a.file), &[a.output_file.as_deref(), a.perfetto.as_deref()])?;
    let opts = AnalyzeOptions {
        json: a.json,
        stacks: a.stacks,
        sink: a.output_file.clone().map(Sink::File).unwrap_or_default(),
        report: if a.herd { Report::Herd } else { Report::Full },
    };
    trace::analyze_with(&a.file, &opts, perfetto_observers(a.perfetto.as_deref()), false)?;
    Ok(())
}

/// The positional DURATION in seconds: positive, finite, at most ~136 years
/// (beyond, a deadline would overflow the clock).
fn duration_arg(d: Option<f64>) -> Result<Option<Duration>, Error> {
    let Some(d) = d else { return Ok(None) };
    match Duration::try_from_secs_f64(d) {
        Ok(v) if d > 0.0 && d <= f64::from(u32::MAX) => Ok(Some(v)),
        _ => Err(Error::Usage(format!("duration {d}: give a positive number of seconds, at most {}", u32::MAX))),
    }
}

fn cmd_trace_with(a: TraceArgs, report: Report, tweak: impl FnOnce(&mut TraceOptions)) -> anyhow::Result<()> {
    if a.target.is_empty() {
        return Err(Error::Usage("no target: give -p PID, -t TID or -c COMM (or try `netdrift demo`)".into()).into());
    }
    // Every stack taken (four times a wake-up's cost) and none printed.
    if report == Report::Herd && a.out.stacks && !a.out.json {
        return Err(Error::Usage(
            "herd prints no chains, so no stacks: use `netdrift trace --stacks`, or `herd --json --stacks` for the wake lines".into(),
        )
        .into());
    }
    // Before anything else is touched (tracefs, outputs).
    if a.target.comms.len() > netdrift::offwake::MAX_COMMS {
        return Err(Error::Usage(format!("at most {} -c names", netdrift::offwake::MAX_COMMS)).into());
    }
    let duration = duration_arg(a.duration)?;
    check_outputs(None, &[a.out.output_file.as_deref(), a.out.record.as_deref(), a.out.perfetto.as_deref(), a.ready_file.as_deref()])?;
    // Before the targets' files are read: without root, a handler's binary
    // "is not found" (its /proc/PID/root is not readable).
    netdrift::probes::preflight()?;
    let (tgids, tids) =
        procfs::resolve_targets(&a.target.pids, &a.target.tids, &a.target.comms, !a.target.no_children, true, a.target.wait)?;
    // Every target process: the -p ones and their children, and those of the -t threads.
    let target_pids: Vec<u32> = tgids.iter().copied().chain(tids.iter().filter_map(|&t| procfs::tgid_of(t))).collect();
    // Said once the command line is known to be good (the handlers resolve).
    let fd_notes = procfs::check_fd_access(&target_pids)?;
    // `exe` and library names are looked up in the first target the user named (-p, then
    // -t, then the first -c name's processes), not the lowest pid of the set (a child,
    // or a process of another -c name).
    let first_comm = || {
        let (p, t) = procfs::find_comm(a.target.comms.first()?);
        p.first().copied().or_else(|| t.first().and_then(|&t| procfs::tgid_of(t)))
    };
    let first_pid = a
        .target
        .pids
        .first()
        .copied()
        .or_else(|| a.target.tids.first().and_then(|&t| procfs::tgid_of(t)))
        .or_else(first_comm)
        .or_else(|| tgids.first().copied())
        .or_else(|| tids.first().and_then(|&t| procfs::tgid_of(t)));
    let mut handlers = netdrift::handlers::resolve(&a.handlers, first_pid, false)?;
    // A preset in each target's program: the first named, then the rest.
    let preset_pids = netdrift::handlers::distinct_programs(first_pid.into_iter().chain(target_pids.iter().copied()));
    for p in &a.presets {
        handlers.extend(netdrift::handlers::resolve_preset(p, &preset_pids)?);
    }
    let handlers = netdrift::handlers::merge(handlers)?;
    if handlers.len() > netdrift::handlers::MAX_HANDLERS {
        return Err(Error::Usage(format!(
            "{} handler symbols: at most {}; narrow the globs",
            handlers.len(),
            netdrift::handlers::MAX_HANDLERS
        ))
        .into());
    }
    for h in &handlers {
        eprintln!(
            "netdrift: handler {}: {} in {} (+0x{:x}) from {}",
            h.id,
            netdrift::output::term_safe(&h.name),
            netdrift::output::term_safe(&h.path.to_string_lossy()),
            h.offset,
            netdrift::output::term_safe(&h.spec)
        );
    }
    for n in fd_notes {
        eprintln!("netdrift: {}", netdrift::output::term_safe(&n));
    }
    if !handlers.is_empty() {
        // The one cost outside the targets (docs/handlers.md, "Cost").
        eprintln!("netdrift: handler uprobes trap in every process running these files, traced or not (a few us a call); only the targets' calls are recorded");
    }

    let mut opts = base_options(&a.out);
    opts.probe.handlers = handlers;
    opts.probe.tgids = tgids;
    opts.probe.tids = tids;
    opts.probe.comms = a.target.comms.clone();
    opts.probe.follow_children = !a.target.no_children;
    opts.duration = duration;
    opts.ready_file = a.ready_file.clone();
    opts.report = report;
    opts.probe.capture_stacks = !a.bench_no_stacks;
    opts.discard = a.bench_discard;
    opts.probe.probed_reads = a.bench_probed_reads;
    opts.probe.empty = a.bench_empty;
    tweak(&mut opts);
    trace::install_signal_handlers();
    let what = procfs::describe_targets(&opts.probe.tgids, &opts.probe.tids, &opts.probe.comms);
    let until = match a.duration {
        Some(d) => format!("for {d} s (Ctrl-C ends it sooner)"),
        None if !opts.probe.ends_with_targets() => "until Ctrl-C".to_string(),
        None => "until Ctrl-C or the targets exit".to_string(),
    };
    opts.on_ready = Some(Box::new(move || eprintln!("netdrift: tracing {what} {until}")));
    trace::run(opts)?;
    Ok(())
}

fn cmd_demo(a: DemoArgs) -> anyhow::Result<()> {
    if a.workers == 0 || a.workers > 64 {
        return Err(Error::Usage("--workers: 1 to 64".into()).into());
    }
    if a.connections == 0 {
        return Err(Error::Usage("--connections: at least 1".into()).into());
    }
    let mode = ListenMode::parse(&a.mode).ok_or_else(|| Error::Usage(format!("--mode {}", a.mode)))?;
    // Before the server starts (its banner would make the error a second line).
    check_outputs(None, &[a.out.output_file.as_deref(), a.out.record.as_deref(), a.out.perfetto.as_deref(), a.ready_file.as_deref()])?;
    netdrift::probes::preflight().context("demo")?;
    let server =
        DemoServer::start(&DemoConfig { workers: a.workers, mode, port: 0, work_us: a.work_us }).context("starting the demo server")?;
    let addr = server.addr();
    let names = server.worker_names();
    let tids = server.worker_tids();
    if !a.out.json {
        eprintln!(
            "netdrift demo: server on {addr} ({} listen socket), workers {}; client: {} connections, {} ms apart",
            match mode {
                ListenMode::Shared => "one shared, no EPOLLEXCLUSIVE",
                ListenMode::Exclusive => "one shared, EPOLLEXCLUSIVE",
                ListenMode::ReusePort => "one per worker, SO_REUSEPORT",
            },
            names.iter().zip(&tids).map(|(n, t)| format!("{n}[{t}]")).collect::<Vec<_>>().join(", "),
            a.connections,
            a.gap_ms
        );
        if std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) < 2 {
            eprintln!("netdrift demo: only one CPU: both workers may not be asleep at once, so the herd may not show");
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let client_result = Arc::new(std::sync::Mutex::new(None));
    let mut opts = base_options(&a.out);
    opts.probe.tids = tids;
    opts.probe.follow_children = false;
    opts.ready_file = a.ready_file.clone();
    opts.stop = Some(stop.clone());
    let (conns, gap) = (a.connections, Duration::from_millis(a.gap_ms));
    {
        let stop = stop.clone();
        let client_result = client_result.clone();
        opts.on_ready = Some(Box::new(move || {
            std::thread::Builder::new()
                .name("demo:client".into())
                .spawn(move || {
                    // Let both workers settle into epoll_wait first.
                    std::thread::sleep(Duration::from_millis(100));
                    let r = demo::run_client(addr, conns, gap);
                    *client_result.lock().unwrap() = Some(r);
                    std::thread::sleep(Duration::from_millis(200));
                    stop.store(true, Ordering::SeqCst);
                })
                .expect("spawning the demo client");
        }));
    }
    trace::install_signal_handlers();
    let res = trace::run(opts);
    let stats = server.shutdown().context("stopping the demo server")?;
    res?;
    let client = client_result.lock().unwrap().take();
    match client {
        Some(Ok(c)) => {
            let ok = c.iter().filter(|c| c.ok).count();
            if !a.out.json {
                eprintln!(
                    "netdrift demo: client got {ok}/{} responses; server accepted {} ({} accept4 calls found nothing)",
                    c.len(),
                    stats.accepted(),
                    stats.accept_eagain()
                );
            }
        }
        Some(Err(e)) => bail!("demo client: {e}"),
        None => {}
    }
    Ok(())
}

fn cmd_doctor(a: DoctorArgs) -> anyhow::Result<()> {
    let report = netdrift::doctor::run();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", netdrift::doctor::render_text(&report, false));
    }
    // Scriptable, like `nginx -t`: the report says why.
    if !report.ok("trace") {
        std::io::stdout().flush()?;
        std::process::exit(1);
    }
    Ok(())
}

fn cmd_offwake(a: netdrift::cli::OffwakeArgs) -> anyhow::Result<()> {
    use netdrift::offwake::{self, Format, Metric, OffwakeOptions, OutputOptions, RenderOptions, StateFilter};
    let duration = duration_arg(a.duration)?;
    if let Some(max) = a.max_block_us {
        if max < a.min_block_us {
            return Err(Error::Usage(format!("--max-block-us {max} is below --min-block-us {}", a.min_block_us)).into());
        }
    }
    if a.stack_storage_size == 0 || a.stack_storage_size > 1 << 22 {
        return Err(Error::Usage(format!("--stack-storage-size {}: give 1 to {}", a.stack_storage_size, 1u32 << 22)).into());
    }
    if a.max_keys == 0 || a.max_keys > 1 << 22 {
        return Err(Error::Usage(format!("--max-keys {}: give 1 to {}", a.max_keys, 1u32 << 22)).into());
    }
    check_outputs(None, &[a.output_file.as_deref(), a.svg.as_deref(), a.ready_file.as_deref()])?;
    netdrift::probes::check_pid_namespace()?;
    let (tgids, tids) = offwake::resolve_targets(&a.target.pids, &a.target.tids, &a.target.comms, !a.target.no_children, a.target.wait)?;
    // -u/-k that leave out every target named by id would report nothing.
    if (a.user_threads_only || a.kernel_threads_only) && a.target.comms.is_empty() && !(tgids.is_empty() && tids.is_empty()) {
        let kthreads: Vec<bool> = tgids.iter().chain(&tids).filter_map(|&t| procfs::is_kthread(t)).collect();
        if a.kernel_threads_only && !kthreads.is_empty() && kthreads.iter().all(|k| !k) {
            return Err(Error::Usage("-k keeps kernel threads only, and every target is a user process: drop -k".into()).into());
        }
        if a.user_threads_only && !kthreads.is_empty() && kthreads.iter().all(|&k| k) {
            return Err(Error::Usage("-u keeps user threads only, and every target is a kernel thread: drop -u".into()).into());
        }
    }
    let render = RenderOptions { metric: Metric::parse(&a.metric).unwrap_or_default(), delimited: a.delimited };
    let out = OutputOptions {
        format: if a.folded {
            Format::Folded
        } else if a.json {
            Format::Json
        } else {
            Format::Text
        },
        render,
        output_file: a.output_file.clone(),
        svg: a.svg.clone(),
    };
    netdrift::probes::preflight()?;
    let outputs = offwake::Outputs::open(&out)?;
    let mut opts = OffwakeOptions {
        tgids,
        tids,
        comms: a.target.comms.clone(),
        follow_children: !a.target.no_children,
        user_threads_only: a.user_threads_only,
        kernel_threads_only: a.kernel_threads_only,
        state: StateFilter::parse(&a.state).unwrap_or_default(),
        min_block_us: a.min_block_us,
        max_block_us: a.max_block_us,
        user_stacks: !a.kernel_stacks_only,
        kernel_stacks: !a.user_stacks_only,
        stack_storage_size: a.stack_storage_size,
        max_keys: a.max_keys,
        duration,
        ready_file: a.ready_file.clone(),
        ..Default::default()
    };
    let what = offwake::describe_targets(&opts);
    let until = match a.duration {
        Some(d) => format!("for {d} s (Ctrl-C ends it sooner)"),
        None if !opts.ends_with_targets() => "until Ctrl-C".to_string(),
        None => "until Ctrl-C or the targets exit".to_string(),
    };
    opts.on_ready = Some(Box::new(move || eprintln!("netdrift: off-wake time of {what} {until}")));
    offwake::install_signal_handlers();
    let report = offwake::run(opts)?;
    outputs.finish(&report)?;
    Ok(())
}

fn cmd_trace(a: TraceArgs, report: Report) -> anyhow::Result<()> {
    cmd_trace_with(a, report, |_| {})
}

/// `--perfetto FILE`: the timeline writer, if asked for.
fn perfetto_observers(p: Option<&std::path::Path>) -> Vec<Box<dyn trace::Observer>> {
    p.map(|p| Box::new(netdrift::output::perfetto::PerfettoWriter::new(p)) as Box<dyn trace::Observer>).into_iter().collect()
}

fn cmd_report(a: netdrift::cli::ReportArgs) -> anyhow::Result<()> {
    use netdrift::output::html::ReportWriter;
    let file = a.file.clone();
    let t = &a.trace;
    // `report -p PID -o r.html 5` would write the HTML to a file named 5 and trace until Ctrl-C.
    let is_html = |p: &std::path::Path| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"));
    let misplaced =
        file.to_str().is_some_and(|f| f.parse::<f64>().is_ok()) || (!is_html(&file) && t.out.output_file.as_deref().is_some_and(is_html));
    if misplaced {
        return Err(Error::Usage(format!(
            "report {}: the HTML file is the first argument and -o takes the text summary: netdrift report [OPTIONS] FILE.html [DURATION]",
            file.display()
        ))
        .into());
    }
    // The report's own file is one more output (the trace checks the others again).
    check_outputs(
        a.from.as_deref(),
        &[Some(&file), t.out.output_file.as_deref(), t.out.record.as_deref(), t.out.perfetto.as_deref(), t.ready_file.as_deref()],
    )?;
    match &a.from {
        Some(rec) => {
            // What only a live trace uses would be ignored without a word (a
            // script waiting for --ready-file would wait forever).
            let live_only = [
                ("-p/-t/-c", !t.target.is_empty()),
                ("the duration", t.duration.is_some()),
                ("--record", t.out.record.is_some()),
                ("--ready-file", t.ready_file.is_some()),
                ("--handler", !t.handlers.is_empty()),
                ("--preset", !t.presets.is_empty()),
                ("--packets", t.out.packets),
                ("--epoll-ctl", t.out.epoll_ctl),
                ("--ringbuf-size", t.out.ringbuf_mib != netdrift::cli::DEFAULT_RINGBUF_MIB),
                ("--idle-ms", t.out.idle_ms != netdrift::cli::DEFAULT_IDLE_MS),
            ];
            let given: Vec<&str> = live_only.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect();
            if !given.is_empty() {
                return Err(Error::Usage(format!(
                    "--from builds the report from a recording: drop {} (they apply to a live trace)",
                    given.join(", ")
                ))
                .into());
            }
            let mut observers: Vec<Box<dyn trace::Observer>> = vec![Box::new(ReportWriter::new(&file, Some(rec)))];
            observers.extend(perfetto_observers(t.out.perfetto.as_deref()));
            let opts = AnalyzeOptions {
                json: t.out.json,
                stacks: t.out.stacks,
                sink: t.out.output_file.clone().map(Sink::File).unwrap_or_default(),
                report: Report::Full,
            };
            trace::analyze_with(rec, &opts, observers, true)?;
        }
        None => cmd_trace_with(a.trace, Report::Full, move |o| {
            o.quiet = true;
            o.observers.push(Box::new(ReportWriter::new(&file, None)));
        })?,
    }
    eprintln!("netdrift: report written to {}", a.file.display());
    Ok(())
}
