#!/usr/bin/env bash
# Soak: netdrift trace on a loaded nginx for a long time (default 10 min).
#
#   sudo bench/soak.sh                    # 600 s
#   sudo SOAK_SECONDS=120 bench/soak.sh   # 2 minutes
#
# Load: wrk with a Lua script that sends `Connection: close` (every request
# is a new connection, so each one is an accept in nginx) and waits DELAY_MS
# before each request on each of CONNS connections: about
# CONNS * 1000 / DELAY_MS requests/s, below saturation (Debian's wrk has no
# fixed-rate flag; delay() is its way to pace).
# Reports: netdrift's peak RSS (VmHWM) and its RSS over time, records lost,
# and netdrift's accept count against wrk's request count (each request is
# one connection, so they should match; a connection still open when wrk
# stops may be accepted without being counted as a request by wrk).
# Writes bench/results/soak-latest.json (RESULTS=path to change). Not run in CI.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SECS=${SOAK_SECONDS:-600}
CONNS=${CONNS:-10}
DELAY_MS=${DELAY_MS:-2}
NGINX_AFFINITY=${NGINX_AFFINITY:-"10 10"}
WRK_CPU=${WRK_CPU:-0}
SAMPLE_S=${SAMPLE_S:-10}
RESULTS=${RESULTS:-$ND_ROOT/bench/results/soak-latest.json}

require_root_and_tools nginx wrk taskset python3 awk
ND=$(netdrift_binary)
WORK=$(mktemp -d /tmp/netdrift-soak.XXXXXX)
ND_PID=""
cleanup() {
  if [ -n "$ND_PID" ] && alive "$ND_PID"; then kill -KILL "$ND_PID" 2>/dev/null || true; fi
  nginx_stop "$WORK"
  if [ -n "${KEEP_WORK:-}" ]; then note "raw files kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$WORK/close.lua" <<EOF
wrk.headers["Connection"] = "close"
function delay()
  return $DELAY_MS
end
EOF

nginx_start "$WORK" "$NGINX_AFFINITY"
URL="http://127.0.0.1:$NGINX_PORT/"
note "nginx master $NGINX_MASTER on $URL; wrk -t1 -c$CONNS, Connection: close, ${DELAY_MS} ms between requests per connection, ${SECS} s"

"$ND" trace -p "$NGINX_MASTER" --json --ready-file "$WORK/ready" >/dev/null 2>"$WORK/netdrift.err" &
ND_PID=$!
wait_file "$WORK/ready" "$ND_PID" || die "netdrift did not start: $(tail -3 "$WORK/netdrift.err")"

# RSS every SAMPLE_S seconds while wrk runs.
(
  start=$(date +%s)
  while alive "$ND_PID"; do
    echo "$(( $(date +%s) - start )) $(awk '/^VmRSS:/ {print $2}' "/proc/$ND_PID/status" 2>/dev/null)"
    sleep "$SAMPLE_S"
  done
) >"$WORK/rss.txt" &
SAMPLER=$!

c0=$(cpu_ticks "$ND_PID")
taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "$WORK/close.lua" "$URL" >"$WORK/wrk.txt"
c1=$(cpu_ticks "$ND_PID")
sleep 1
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$ND_PID/status")
rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$ND_PID/status")
stop_pid "$ND_PID"
ND_PID=""
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true

# Which build ran: its file name and sha256 (no path of this machine).
build="$(basename "$ND") $(sha256sum "$ND" | cut -c1-16)"
python3 - "$WORK" "$RESULTS" "$SECS" "$CONNS" "$DELAY_MS" "$hwm" "$rss" "$c0" "$c1" "$(getconf CLK_TCK)" "$build" "$(uname -r)" <<'EOF'
import datetime, json, os, re, sys
work, results, secs, conns, delay, hwm, rss, c0, c1, tck, build, kernel = sys.argv[1:]
wrk = open(os.path.join(work, "wrk.txt")).read()
err = open(os.path.join(work, "netdrift.err"), errors="replace").read()
def num(pat, text, conv=int, default=None):
    m = re.search(pat, text, re.M)
    return conv(m.group(1)) if m else default
requests = num(r"(\d+) requests in", wrk)
sock_err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", wrk)
accepts = num(r"(\d+) accepts", err)
# Every close(2) of the targets: "N closes" before socket closes were counted apart.
socket_closes = num(r"(\d+) socket closes", err)
# "(N of other fds)" before connection closes were counted apart.
other_closes = num(r"(\d+) closes of other fds", err)
if other_closes is None:
    other_closes = num(r"\((\d+) of other fds\)", err)
closes = socket_closes + other_closes if socket_closes is not None and other_closes is not None else num(r"(\d+) closes", err)
rss_series = [tuple(int(x) for x in l.split()) for l in open(os.path.join(work, "rss.txt")) if len(l.split()) == 2]
out = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "build": build, "kernel": kernel,
    "seconds": int(secs), "connections": int(conns), "delay_ms": int(delay),
    "wrk": {"requests": requests, "rps": num(r"Requests/sec:\s+([\d.]+)", wrk, float),
            "p99": num(r"^\s+99%\s+(\S+)", wrk, str),
            "socket_errors": dict(zip(["connect", "read", "write", "timeout"], map(int, sock_err.groups()))) if sock_err else {}},
    "netdrift": {
        "events": num(r"^\s+(\d+) events", err), "accepts": accepts,
        "accept_eagain": num(r"accepts \((?:and )?(\d+) EAGAIN", err), "socket_closes": socket_closes, "connection_closes": num(r"\((\d+) of TCP connections\)", err), "closes": closes,
        "lost_records": num(r"(?i)lost: (\d+) records", err), "lost_stacks": num(r"(\d+) stacks", err),
        "lost_skipped": num(r"LOST: (\d+) program runs skipped", err) or 0,
        "vmhwm_kb": int(hwm), "vmrss_end_kb": int(rss),
        "cpu_pct": 100.0 * (int(c1) - int(c0)) / int(tck) / int(secs),
        "rss_kb_over_time": rss_series,
        "summary": err.strip().splitlines()[-8:],
    },
}
if requests is not None and accepts is not None:
    out["accepts_minus_requests"] = accepts - requests
os.makedirs(os.path.dirname(results), exist_ok=True)
json.dump(out, open(results, "w"), indent=1)
n = out["netdrift"]
print(f"\nsoak: {secs} s, wrk -c{conns} Connection: close, {delay} ms pacing: {requests} requests ({out['wrk']['rps']} req/s, p99 {out['wrk']['p99']}), socket errors {out['wrk']['socket_errors']}")
print(f"netdrift: {n['events']} events, {accepts} accepts ({n['accept_eagain']} EAGAIN), {n['socket_closes']} socket closes ({n['closes']} closes in all); lost {n['lost_records']} records, {n['lost_stacks']} stacks")
print(f"netdrift: peak RSS (VmHWM) {int(hwm)/1024:.1f} MiB, RSS at the end {int(rss)/1024:.1f} MiB, CPU {n['cpu_pct']:.1f}%")
if rss_series:
    print("netdrift RSS over time (s: MiB): " + ", ".join(f"{t}: {k/1024:.1f}" for t, k in rss_series[:: max(1, len(rss_series) // 12)]))
if "accepts_minus_requests" in out:
    print(f"accepts - requests = {out['accepts_minus_requests']} (expected: about the {conns} connections still open when wrk stopped)")
print(f"results: {results}")
EOF
