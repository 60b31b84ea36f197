#!/usr/bin/env bash
# The tracer's own CPU per record, for two or more builds on one saturated nginx.
#
#   sudo bench/cpu_per_record.sh BUILD...          # e.g. an old and a new target/release/netdrift
#   sudo ROUNDS=3 DURATION=8 bench/cpu_per_record.sh old/netdrift new/netdrift
#
# Same nginx and pinning as bench/run.sh (workers on CPU 1, wrk on CPU 0).
# Builds run alternately, round after round; each runs `trace -p <master>
# --json > /dev/null` while wrk loads nginx for DURATION seconds. Prints, per
# run, requests/s, the tracer's CPU ticks over the wrk window, the records of
# the whole trace (its summary's `events`) and microseconds of tracer CPU per
# record. Less noisy than requests/s ratios for comparing user-space changes:
# the record count is measured, not assumed. With kernel.bpf_stats_enabled on
# for the run, it also prints each BPF program's run time per call and the
# tracer's BPF milliseconds per second of the window (the kernel side).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

[ $# -ge 1 ] || die "usage: bench/cpu_per_record.sh BUILD..."
require_root_and_tools nginx wrk python3 bpftool
for b in "$@"; do
  [ -x "$b" ] || die "$b is not executable"
done
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
WORK=$(mktemp -d /tmp/netdrift-cpr.XXXXXX)
OLD_STATS=$(cat /proc/sys/kernel/bpf_stats_enabled)
# The tracer of the round in progress goes too, however the script ends.
t=""
trap '[ -z "$t" ] || kill -KILL "$t" 2>/dev/null; echo "$OLD_STATS" >/proc/sys/kernel/bpf_stats_enabled; nginx_stop "$WORK" 2>/dev/null; rm -rf "$WORK"' EXIT
echo 1 >/proc/sys/kernel/bpf_stats_enabled
nginx_start "$WORK" "10 10"
URL="http://127.0.0.1:$NGINX_PORT/"
taskset -c 0 wrk -t1 -c50 -d2s "$URL" >/dev/null
hz=$(getconf CLK_TCK)
for r in $(seq "$ROUNDS"); do
  for b in "$@"; do
    ready="$WORK/ready.$r"
    "$b" trace -p "$NGINX_MASTER" --json --ready-file "$ready" >/dev/null 2>"$WORK/err" &
    t=$!
    wait_file "$ready" "$t" || die "$b did not start: $(tail -2 "$WORK/err")"
    sleep 0.3
    ids=$(bpf_prog_ids "$t" | tr '\n' ' ')
    bpftool prog show -j >"$WORK/bpf.before.json"
    c0=$(cpu_ticks "$t")
    rps=$(taskset -c 0 wrk -t1 -c50 -d"${DURATION}s" "$URL" | awk '/Requests\/sec/ {print int($2)}')
    c1=$(cpu_ticks "$t")
    bpftool prog show -j >"$WORK/bpf.after.json"
    kill -INT "$t"
    wait "$t" || true
    t=""
    ev=$(grep -oE '^ +[0-9]+ events' "$WORK/err" | head -1 | tr -dc 0-9)
    [ -n "$ev" ] && [ "$ev" -gt 0 ] || die "$b: no summary: $(tail -2 "$WORK/err")"
    python3 -c "import sys; b, rps, t, ev, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print(f'round $r  {b}  {rps} req/s  {t} ticks  {ev} records  {t / hz * 1e6 / ev:.3f} us/record')" "$b" "$rps" "$((c1 - c0))" "$ev" "$hz"
    PYTHONDONTWRITEBYTECODE=1 python3 - "$ND_ROOT/bench" "$WORK/bpf.before.json" "$WORK/bpf.after.json" "$DURATION" $ids <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from report import bpf_progs
window = float(sys.argv[4])
progs = bpf_progs(sys.argv[2], sys.argv[3], [int(i) for i in sys.argv[5:]])
parts = [f"{p['name']} {p['run_cnt'] / window / 1000:.1f}k/s {p['run_time_ns'] / p['run_cnt']:.0f} ns" for p in progs if p["run_cnt"]]
print(f"         BPF {sum(p['run_time_ns'] for p in progs) / window / 1e6:.1f} ms/s: " + ", ".join(parts))
PY
    rm -f "$ready"
  done
done
