#!/usr/bin/env bash
# Where the server's CPU goes, untraced and traced: samples of nginx's CPU.
#
#   sudo bench/cpu_share.sh                     # 6 s of samples per configuration
#   sudo ROUNDS=3 DURATION=8 bench/cpu_share.sh
#   sudo CONFIGS="untraced trace" bench/cpu_share.sh
#
# Same nginx and pinning as bench/run.sh (both workers on CPU 1, wrk on CPU
# 0, the tracer unpinned). Configurations: untraced, floor (bench/floor.bt:
# empty bpftrace programs on the tracepoints of trace's hot path) and trace. While wrk saturates nginx, `perf record -C 1 -e
# cpu-clock` samples the server's CPU; each sample is put in one category:
# nginx itself (user, kernel), the syscall slow path that any syscall
# tracepoint turns on for every task, the tracepoint-to-BPF dispatch, the
# BPF programs, the helpers and maps they call, the tracer's own process,
# other processes, idle. Requests/s ratios need many rounds on a noisy host;
# this shows what tracing costs on the CPU that limits the server in one run.
#
# cpu-clock is a timer: it cannot land where interrupts are off, so BPF run
# under the run-queue lock (sched_switch, sched_waking) or in the ring
# buffer's irqsave section is counted at the next point where they are back
# on (_raw_spin_unlock_irq*), that is in "nginx kernel". Use bench/run.sh's
# BPF columns (kernel.bpf_stats_enabled) for the programs' exact run time.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-1}
DURATION=${DURATION:-6}
CPU=${CPU:-1}
FREQ=${FREQ:-2999}
CONFIGS=${CONFIGS:-"untraced floor trace"}
require_root_and_tools nginx wrk perf python3 bpftrace bpftool
ND=$(netdrift_binary)
WORK=$(mktemp -d /tmp/netdrift-share.XXXXXX)
TRACER=""
cleanup() {
  [ -z "$TRACER" ] || kill -KILL "$TRACER" 2>/dev/null || true
  nginx_stop "$WORK" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

nginx_start "$WORK" "10 10"
URL="http://127.0.0.1:$NGINX_PORT/"
note "nginx master $NGINX_MASTER on $URL, workers on CPU 1, wrk on CPU 0; sampling CPU $CPU at $FREQ Hz for ${DURATION}s per run"
taskset -c 0 wrk -t1 -c50 -d2s "$URL" >/dev/null

for r in $(seq "$ROUNDS"); do
  for cfg in $CONFIGS; do
    rd="$WORK/$cfg.$r"
    mkdir -p "$rd"
    wait_quiet
    echo 0 >"$rd/tracer.pid"
    case $cfg in
      untraced) ;;
      trace)
        "$ND" trace -p "$NGINX_MASTER" --json --ready-file "$rd/ready" >/dev/null 2>"$rd/tracer.err" &
        TRACER=$!
        wait_file "$rd/ready" "$TRACER" || die "trace did not start: $(tail -2 "$rd/tracer.err")"
        ;;
      floor)
        bpftrace "$ND_ROOT/bench/floor.bt" >/dev/null 2>"$rd/tracer.err" &
        TRACER=$!
        wait_progs "$TRACER" || die "floor did not start: $(tail -2 "$rd/tracer.err")"
        ;;
      *) die "unknown configuration $cfg (untraced, floor, trace)" ;;
    esac
    echo "${TRACER:-0}" >"$rd/tracer.pid"
    taskset -c 0 wrk -t1 -c50 -d"$((DURATION + 2))s" "$URL" >"$rd/wrk.txt" &
    w=$!
    sleep 1
    perf record -q -C "$CPU" -F "$FREQ" -e cpu-clock -o "$rd/perf.data" -- sleep "$DURATION" >/dev/null 2>&1 </dev/null
    wait "$w"
    if [ -n "$TRACER" ]; then
      stop_pid "$TRACER"
      TRACER=""
    fi
    perf script -i "$rd/perf.data" -F pid,comm,ip,sym,dso 2>/dev/null >"$rd/samples.txt"
    note "round $r $cfg: $(grep -E 'Requests/sec' "$rd/wrk.txt" | tr -s ' ')"
  done
done

PYTHONDONTWRITEBYTECODE=1 python3 - "$WORK" "$NGINX_MASTER $NGINX_W1 $NGINX_W2" "$CONFIGS" <<'PY'
import os, re, sys, collections
work, nginx = sys.argv[1], {int(p) for p in sys.argv[2].split()}
SLOW = {"syscall_trace_enter", "syscall_exit_work", "trace_sys_enter", "trace_sys_exit"}
DISPATCH = re.compile(r"^(perf_syscall_(enter|exit)|perf_call_bpf_(enter|exit)|perf_trace_buf_alloc|perf_trace_run_bpf_submit|trace_call_bpf|bpf_trace_run\d|__bpf_trace_\w+|__traceiter_\w+)$")
HELPERS = re.compile(r"^(bpf_\w+|__bpf_\w+|htab_\w+|__htab_\w+|lookup_nulls_elem_raw|lookup_elem_raw|pcpu_freelist_\w+|\w*ringbuf\w*)$")
CATS = ["nginx user", "nginx kernel", "syscall slow path", "tracepoint -> BPF dispatch", "BPF programs", "BPF helpers, maps, ring buffer", "tracer process", "other processes", "idle"]
runs = collections.defaultdict(list)
for name in sorted(os.listdir(work)):
    d = os.path.join(work, name)
    if not os.path.exists(os.path.join(d, "samples.txt")):
        continue
    cfg = name.split(".")[0]
    tracer = int(open(os.path.join(d, "tracer.pid")).read())
    rps = re.search(r"Requests/sec:\s+([\d.]+)", open(os.path.join(d, "wrk.txt")).read())
    c = collections.Counter()
    for line in open(os.path.join(d, "samples.txt"), errors="replace"):
        # comm pid ip sym (dso); comm may hold spaces.
        m = re.match(r"\s*(.+?)\s+(\d+)\s+[0-9a-f]+\s+(\S+)\s+\((.*)\)\s*$", line)
        if not m:
            continue
        pid, sym, dso = int(m.group(2)), m.group(3), m.group(4)
        if pid == 0:
            cat = "idle"
        elif tracer and pid == tracer:
            cat = "tracer process"
        elif sym.startswith("bpf_prog_") or "bpf_prog_" in dso:
            cat = "BPF programs"
        elif sym in SLOW:
            cat = "syscall slow path"
        elif DISPATCH.match(sym):
            cat = "tracepoint -> BPF dispatch"
        elif HELPERS.match(sym):
            cat = "BPF helpers, maps, ring buffer"
        elif pid in nginx:
            cat = "nginx kernel" if "kernel" in dso else "nginx user"
        else:
            cat = "other processes"
        c[cat] += 1
    runs[cfg].append((c, float(rps.group(1)) if rps else None))

def share(cfg, cat):
    rs = runs[cfg]
    return 100.0 * sum(c[cat] for c, _ in rs) / max(1, sum(sum(c.values()) for c, _ in rs))

cfgs = [c for c in sys.argv[3].split() if c in runs]
print()
print(f"% of the samples of the server's CPU ({sum(sum(c.values()) for rs in runs.values() for c, _ in rs)} samples); +: more than untraced")
print(f"{'category':<32}" + "".join(f" {c:>9}" for c in cfgs))
for cat in CATS:
    print(f"{cat:<32}" + "".join(f" {share(c, cat):9.2f}" for c in cfgs))
# What tracing added: its own categories, against untraced.
print(f"{'tracing (slow path .. tracer)':<32}" + "".join(f" {sum(share(c, k) - share('untraced', k) for k in CATS[2:7]):+9.2f}" for c in cfgs))
for c in cfgs:
    print(f"{c}: req/s per round {[round(r) for _, r in runs[c] if r]}")
PY
