#!/usr/bin/env bash
# What tracing adds to one epoll_wait call, in nanoseconds per call.
#
#   sudo bench/epoll_call_cost.sh
#   sudo NETDRIFT=/path/to/netdrift CALLS=2000000 bench/epoll_call_cost.sh
#
# A small C program (built here with cc) calls epoll_wait(timeout 0) on an
# empty epoll set in a loop, pinned to CPU 1, and prints the time per call
# for each of 4 batches of CALLS calls (the median is reported). Each
# configuration runs it once:
#   untraced        nothing attached
#   other-syscall   an empty bpftrace probe on sys_exit_read filtered to pid 1:
#                   the cost of any syscall tracepoint being on
#   bpftrace-empty  empty bpftrace probes on epoll_wait's enter and exit,
#                   filtered to the loop's pid: the tracepoints' own cost
#   trace-empty     the same programs attached, each returning at once
#                   (hidden --bench-empty): trace's own floor
#   trace           netdrift trace -p <loop> --json > /dev/null
#   trace-stats     the same with kernel.bpf_stats_enabled=1 (what the
#                   statistics of bench/run.sh cost by themselves)
# Each such call returns 0 events, so every one is a record for trace.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

require_root_and_tools bpftrace taskset cc
ND=$(netdrift_binary)
CALLS=${CALLS:-1000000}
WORK=$(mktemp -d /tmp/netdrift-epcost.XXXXXX)
OLD_STATS=$(cat /proc/sys/kernel/bpf_stats_enabled)
# The loop and the tracer of the run in progress die with the script, however it ends.
LPID="" TPID=""
trap '[ -z "$LPID" ] || kill -KILL "$LPID" 2>/dev/null; [ -z "$TPID" ] || kill -KILL "$TPID" 2>/dev/null; echo "$OLD_STATS" >/proc/sys/kernel/bpf_stats_enabled; rm -rf "$WORK"' EXIT

cat >"$WORK/loop.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

/* Waits for a file to appear (the tracer is attached), then times batches of calls. */
int main(int argc, char **argv)
{
	long calls = atol(argv[1]);
	struct epoll_event ev[4];
	int ep = epoll_create1(0);

	while (argc > 2 && access(argv[2], F_OK) != 0)
		usleep(10000);
	for (int r = 0; r < 4; r++) {
		struct timespec a, b;

		clock_gettime(CLOCK_MONOTONIC, &a);
		for (long i = 0; i < calls; i++)
			epoll_wait(ep, ev, 4, 0);
		clock_gettime(CLOCK_MONOTONIC, &b);
		printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / calls);
		fflush(stdout);
	}
	return 0;
}
EOF
cc -O2 -o "$WORK/loop" "$WORK/loop.c" || die "cc failed"

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

run() {
  local cfg=$1 go="$WORK/go.$1" out="$WORK/out.$1" tpid=""
  echo 0 >/proc/sys/kernel/bpf_stats_enabled
  taskset -c 1 "$WORK/loop" "$CALLS" "$go" >"$out" &
  local lpid=$!
  LPID=$lpid
  case $cfg in
    untraced) touch "$go" ;;
    other-syscall | bpftrace-empty)
      local prog='tracepoint:syscalls:sys_exit_read /pid == 1/ { }'
      [ "$cfg" = bpftrace-empty ] &&
        prog="tracepoint:syscalls:sys_enter_epoll_wait /pid == $lpid/ { } tracepoint:syscalls:sys_exit_epoll_wait /pid == $lpid/ { }"
      bpftrace -e "$prog" >/dev/null 2>"$WORK/err.$cfg" &
      tpid=$! TPID=$!
      wait_progs "$tpid" || die "bpftrace did not start: $(tail -2 "$WORK/err.$cfg")"
      touch "$go"
      ;;
    trace | trace-stats | trace-empty)
      [ "$cfg" = trace-stats ] && echo 1 >/proc/sys/kernel/bpf_stats_enabled
      local extra=()
      [ "$cfg" = trace-empty ] && extra=(--bench-empty)
      "$ND" trace -p "$lpid" --json "${extra[@]}" --ready-file "$go" >/dev/null 2>"$WORK/err.$cfg" &
      tpid=$! TPID=$!
      # The loop waits for the ready file: a tracer that fails must not leave it waiting.
      wait_file "$go" "$tpid" || die "netdrift did not start: $(tail -2 "$WORK/err.$cfg")"
      ;;
  esac
  wait "$lpid"
  LPID=""
  [ -z "$tpid" ] || stop_pid "$tpid"
  TPID=""
  printf '%-15s %7.1f ns per epoll_wait call (batches: %s)\n' "$cfg" "$(median <"$out")" "$(tr '\n' ' ' <"$out")"
}

echo "epoll_wait(timeout 0) on CPU 1, $CALLS calls per batch; netdrift $ND"
for cfg in untraced other-syscall bpftrace-empty trace-empty trace trace-stats; do
  run "$cfg"
done
