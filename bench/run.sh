#!/usr/bin/env bash
# Overhead of netdrift on nginx at saturation, against a bpftrace peer.
#
#   sudo bench/run.sh                    # 2 rounds x 10 s per configuration
#   sudo ROUNDS=3 DURATION=15 bench/run.sh
#
# A private nginx (2 workers, access_log off, `return 200 "ok"`) on a free
# loopback port, loaded by `wrk -t1 -c50 --latency` at saturation. The
# configurations run interleaved, round after round (A/B/A/B):
#   untraced   nothing attached
#   trace      netdrift trace -p <nginx master> --json > /dev/null
#   offwake    netdrift offwake -p <nginx master>   (only if that command exists)
#   peer       bpftrace bench/peer.bt (mostly trace's tracepoints, one line per event) | line counter
# Optional (e.g. CONFIGS="untraced trace trace-packets trace-batch trace-text"):
#   trace-packets  trace with --packets (a program on every received packet)
#   trace-batch  the same trace under SCHED_BATCH (chrt -b 0): no wake-up preemption
#   trace-text   netdrift trace -p <master> > /dev/null-like sink (chain blocks, not JSON)
#   floor        bpftrace bench/floor.bt: empty programs on the tracepoints of
#                trace's hot path, what attaching there costs any tracer
#   trace-b      NETDRIFT_B=/other/netdrift: the same trace with another build
#   offwake-b    NETDRIFT_B=/other/netdrift: offwake with another build
# Where the cost of trace goes (hidden benchmark-only flags of trace):
#   trace-nostacks          no waker stacks (wake-ups lose their cause and context)
#   trace-discard           records read and dropped undecoded: the kernel side alone
#   trace-discard-nostacks  both: the BPF programs without the stack
#   trace-empty             every program attached, each returning at once:
#                           what attaching netdrift's own set costs (its floor)
# BODY_KB=N: nginx sends a static N KiB file (sendfile) instead of `return
# 200 "ok"`: more work per request, and more records per request too
# (epoll_wait returns fewer fds at a time; docs/benchmark.md).
# Pinning (2 CPUs): both nginx workers on CPU 1 (worker_cpu_affinity 10 10),
# wrk on CPU 0, the tracer unpinned (it competes with both, as in production).
# Change with NGINX_AFFINITY / WRK_CPU.
#
# Prints a table and writes bench/results/latest.json (RESULTS=path to change).
# The BPF run time per event needs kernel.bpf_stats_enabled, which costs
# every program run two clock reads itself (~45 ns here, a third of what
# trace adds to an epoll_wait call): the measured rounds run with it off, and
# STATS_ROUNDS more rounds per tracing configuration (default 1) run with it
# on, for the BPF figures only. It is restored at exit. Docs: docs/benchmark.md.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-2}
STATS_ROUNDS=${STATS_ROUNDS:-1}
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
SETTLE=${SETTLE:-1}
NGINX_AFFINITY=${NGINX_AFFINITY:-"10 10"}
WRK_CPU=${WRK_CPU:-0}
RESULTS=${RESULTS:-$ND_ROOT/bench/results/latest.json}
CONFIGS=${CONFIGS:-"untraced trace offwake peer"}

tools="nginx wrk bpftool taskset python3 awk"
# bpftrace only where a configuration runs it (peer, floor).
case " $CONFIGS " in *" peer "*|*" floor "*) tools="$tools bpftrace" ;; esac
# shellcheck disable=SC2086 # a list of words
require_root_and_tools $tools
ND=$(netdrift_binary)

WORK=$(mktemp -d /tmp/netdrift-bench.XXXXXX)
OLD_STATS=$(cat /proc/sys/kernel/bpf_stats_enabled)
CURRENT_TRACER=""
cleanup() {
  if [ -n "$CURRENT_TRACER" ] && alive "$CURRENT_TRACER"; then
    kill -KILL "$CURRENT_TRACER" 2>/dev/null || true
  fi
  nginx_stop "$WORK"
  echo "$OLD_STATS" >/proc/sys/kernel/bpf_stats_enabled
  if [ -n "${KEEP_WORK:-}" ]; then note "raw files kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Which configurations can run now.
run_configs=()
for c in $CONFIGS; do
  if [ "$c" = offwake ]; then
    if ! "$ND" offwake --help >"$WORK/offwake.help" 2>&1; then
      note "skipping offwake: \`netdrift offwake --help\` fails on this build ($(head -1 "$WORK/offwake.help"))"
      continue
    fi
  fi
  run_configs+=("$c")
done

echo 0 >/proc/sys/kernel/bpf_stats_enabled
nginx_start "$WORK" "$NGINX_AFFINITY"
URL="http://127.0.0.1:$NGINX_PORT/"
note "nginx master $NGINX_MASTER, workers $NGINX_W1 $NGINX_W2 (affinity $NGINX_AFFINITY) on $URL; wrk -t1 -c$CONNS -d${DURATION}s on CPU $WRK_CPU"
note "configurations: ${run_configs[*]}; $ROUNDS rounds, then $STATS_ROUNDS with bpf_stats_enabled for the BPF run time; netdrift $ND"

# Warm up nginx and the page cache of the binaries.
taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d2s "$URL" >/dev/null

nginx_ticks() {
  echo $(( $(cpu_ticks "$NGINX_MASTER") + $(cpu_ticks "$NGINX_W1") + $(cpu_ticks "$NGINX_W2") ))
}

run_one() {
  local cfg=$1 round=$2 stats=$3 rd="$WORK/run.$cfg.$round" tpid="" apid=""
  mkdir -p "$rd"
  echo "$stats" >/proc/sys/kernel/bpf_stats_enabled
  wait_quiet
  case $cfg in
    untraced) ;;
    trace-packets)
      # trace plus the receive path (netif_receive_skb, napi_poll on every packet).
      "$ND" trace -p "$NGINX_MASTER" --packets --json --ready-file "$rd/ready" >/dev/null 2>"$rd/tracer.err" &
      tpid=$!
      ;;
    trace-batch)
      # Same, with the tracer under SCHED_BATCH: its wake-ups never preempt nginx.
      chrt -b 0 "$ND" trace -p "$NGINX_MASTER" --json --ready-file "$rd/ready" >/dev/null 2>"$rd/tracer.err" &
      tpid=$!
      ;;
    trace-text)
      # Chain blocks instead of JSON Lines (the summary is then on stdout too).
      # The summary is on stdout then: keep it, drop the chains.
      "$ND" trace -p "$NGINX_MASTER" --ready-file "$rd/ready" 2>"$rd/tracer.err" |
        awk '/^netdrift: .* after [0-9.]+s/ { keep = 1 } keep' >"$rd/tracer.out" &
      apid=$!
      sleep 0.2
      tpid=$(pgrep -n -f -- "--ready-file $rd/ready" || true)
      [ -n "$tpid" ] || die "trace-text did not start: $(tail -3 "$rd/tracer.err")"
      ;;
    trace | trace-nostacks | trace-discard | trace-discard-nostacks | trace-empty)
      # The split configurations add the hidden benchmark-only flags.
      local extra=()
      case $cfg in *nostacks) extra+=(--bench-no-stacks) ;; esac
      case $cfg in trace-discard*) extra+=(--bench-discard) ;; esac
      case $cfg in trace-empty) extra+=(--bench-empty) ;; esac
      "$ND" trace -p "$NGINX_MASTER" --json "${extra[@]}" --ready-file "$rd/ready" >/dev/null 2>"$rd/tracer.err" &
      tpid=$!
      ;;
    trace-b)
      # Another build, to compare two versions in one run: NETDRIFT_B=path.
      [ -n "${NETDRIFT_B:-}" ] || die "trace-b needs NETDRIFT_B=/path/to/netdrift"
      "$NETDRIFT_B" trace -p "$NGINX_MASTER" --json --ready-file "$rd/ready" >/dev/null 2>"$rd/tracer.err" &
      tpid=$!
      ;;
    offwake | offwake-b)
      local ready_args=() bin=$ND
      if [ "$cfg" = offwake-b ]; then
        [ -n "${NETDRIFT_B:-}" ] || die "offwake-b needs NETDRIFT_B=/path/to/netdrift"
        bin=$NETDRIFT_B
      fi
      case $("$bin" offwake --help 2>&1 || true) in *--ready-file*) ready_args=(--ready-file "$rd/ready") ;; esac
      "$bin" offwake -p "$NGINX_MASTER" "${ready_args[@]}" >/dev/null 2>"$rd/tracer.err" &
      tpid=$!
      [ ${#ready_args[@]} -gt 0 ] || { sleep 3; touch "$rd/ready"; }
      ;;
    floor)
      # Empty programs on the hot path's tracepoints: the cost of attaching at all.
      bpftrace "$ND_ROOT/bench/floor.bt" >/dev/null 2>"$rd/tracer.err" &
      tpid=$!
      ;;
    peer)
      mkfifo "$rd/bt.fifo"
      # bpftrace's stdout is fully buffered into the pipe: readiness is
      # seen from its BPF programs (wait_progs), not from its output.
      awk '
        /^Lost [0-9]+ events/ { lost += $2; next }
        /^(peer\.bt: pids|Attaching [0-9]+ probe)/ { next }
        { n++ }
        END { printf "{\"lines\": %d, \"lost\": %d}\n", n, lost }' <"$rd/bt.fifo" >"$rd/bt.count" &
      apid=$!
      bpftrace "$ND_ROOT/bench/peer.bt" "$NGINX_MASTER" "$NGINX_W1" "$NGINX_W2" "$NGINX_PORT" >"$rd/bt.fifo" 2>"$rd/tracer.err" &
      tpid=$!
      ;;
    *) die "unknown configuration $cfg" ;;
  esac
  if [ -n "$tpid" ]; then
    CURRENT_TRACER=$tpid
    if [ "$cfg" = peer ] || [ "$cfg" = floor ]; then
      wait_progs "$tpid" || die "$cfg did not start: $(tail -3 "$rd/tracer.err")"
    else
      wait_file "$rd/ready" "$tpid" || die "$cfg did not start: $(tail -3 "$rd/tracer.err")"
    fi
  fi
  sleep "$SETTLE"
  local ids="" c0=0 c1=0 hwm=0 a0=0 a1=0
  if [ -n "$tpid" ]; then
    ids=$(bpf_prog_ids "$tpid" | tr '\n' ' ')
    c0=$(cpu_ticks "$tpid")
  fi
  [ -z "$apid" ] || a0=$(cpu_ticks "$apid")
  bpftool prog show -j >"$rd/bpf.before.json"
  local t0 t1 s0 s1 n0 n1 w0 w1
  s0=$(cpu_stat) n0=$(nginx_ticks)
  children_ticks
  w0=$CHILDREN_TICKS
  t0=$(date +%s.%N)
  taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$URL" >"$rd/wrk.txt"
  t1=$(date +%s.%N)
  s1=$(cpu_stat) n1=$(nginx_ticks)
  children_ticks
  w1=$CHILDREN_TICKS
  bpftool prog show -j >"$rd/bpf.after.json"
  [ -z "$apid" ] || a1=$(cpu_ticks "$apid")
  if [ -n "$tpid" ]; then
    c1=$(cpu_ticks "$tpid")
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$tpid/status" 2>/dev/null || echo 0)
    # A tracer gone before the end of its round measured nothing: the round
    # would pass for a traced one.
    alive "$tpid" || die "$cfg exited during round $round: $(tail -3 "$rd/tracer.err")"
    stop_pid "$tpid"
    CURRENT_TRACER=""
  fi
  [ -z "$apid" ] || wait "$apid" || true
  cat >"$rd/meta.json" <<EOF
{"cfg": "$cfg", "round": $round, "tracer_pid": ${tpid:-0}, "cpu_ticks": [$c0, $c1], "clk_tck": $(getconf CLK_TCK),
 "t": [$t0, $t1], "prog_ids": [$(echo $ids | sed 's/ /, /g')], "vmhwm_kb": ${hwm:-0},
 "system_busy_steal": [[$(echo $s0 | tr ' ' ,)], [$(echo $s1 | tr ' ' ,)]], "nginx_ticks": [$n0, $n1], "wrk_ticks": [$w0, $w1],
 "counter_ticks": [$a0, $a1], "busy_before_pct": ${QUIET_BUSY_PCT:-0}, "bpf_stats": $([ "$stats" = 1 ] && echo true || echo false)}
EOF
  note "round $round $cfg$([ "$stats" = 1 ] && echo ' (bpf_stats on)'): $(grep -E 'Requests/sec' "$rd/wrk.txt" | tr -s ' ')"
}

for round in $(seq "$ROUNDS"); do
  for cfg in "${run_configs[@]}"; do
    run_one "$cfg" "$round" 0
  done
done
for round in $(seq $((ROUNDS + 1)) $((ROUNDS + STATS_ROUNDS))); do
  for cfg in "${run_configs[@]}"; do
    [ "$cfg" = untraced ] || run_one "$cfg" "$round" 1
  done
done

mkdir -p "$(dirname "$RESULTS")"
python3 "$ND_ROOT/bench/report.py" "$WORK" "$RESULTS" \
  --meta "body_kb=${BODY_KB:-0}" "rounds=$ROUNDS" "stats_rounds=$STATS_ROUNDS" "duration_s=$DURATION" "connections=$CONNS" "nginx_affinity=$NGINX_AFFINITY" \
  "wrk_cpu=$WRK_CPU" "netdrift=$(basename "$ND")" "settle_s=$SETTLE" "netdrift_b=$([ -z "${NETDRIFT_B:-}" ] || basename "$NETDRIFT_B")" \
  "netdrift_sha256=$(sha256sum "$ND" | cut -c1-16)" "netdrift_b_sha256=$([ -n "${NETDRIFT_B:-}" ] && sha256sum "$NETDRIFT_B" | cut -c1-16)" \
  "skipped=$(echo $CONFIGS | tr ' ' '\n' | grep -vxF -f <(printf '%s\n' "${run_configs[@]}") | tr '\n' ' ')"
