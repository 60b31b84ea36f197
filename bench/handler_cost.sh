#!/usr/bin/env bash
# Cost of one handler probe (a uprobe) per call: a loop calling a noinline
# function, timed untraced and with `netdrift trace --handler` on it.
#   sudo bench/handler_cost.sh [CALLS]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "handler_cost: needs root (netdrift attaches a uprobe): run with sudo" >&2; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"
calls=${1:-1000000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cc -O2 -o "$tmp/callloop" tests/progs/callloop.c
cargo build --release -q
nd=./target/release/netdrift

run() { # $1: traced or not
  coproc P { exec "$tmp/callloop" "$calls"; }
  local pid=$P_PID
  read -r _ <&"${P[0]}"
  local nd_pid=
  if [ "$1" = bpftrace ]; then
    bpftrace -e "uprobe:$tmp/callloop:netdrift_bench_call /pid == $pid/ { @calls = count(); }" >"$tmp/bt" 2>&1 &
    nd_pid=$!
    until grep -q "Attaching" "$tmp/bt" 2>/dev/null; do
      kill -0 "$nd_pid" 2>/dev/null || { cat "$tmp/bt" >&2; exit 1; }
      sleep 0.05
    done
    sleep 0.5
  fi
  if [ "$1" = traced ]; then
    "$nd" trace -p "$pid" --handler "exe:netdrift_bench_call:fd=arg0:events=arg1/raw" --json --ready-file "$tmp/ready" -o "$tmp/out.jsonl" 60 2>"$tmp/err" &
    nd_pid=$!
    while [ ! -f "$tmp/ready" ]; do
      kill -0 "$nd_pid" 2>/dev/null || { cat "$tmp/err" >&2; exit 1; }
      sleep 0.05
    done
  fi
  echo go >&"${P[1]}"
  local ns
  read -r ns <&"${P[0]}"
  wait "$pid" 2>/dev/null || true
  if [ "$1" = bpftrace ]; then
    kill -INT "$nd_pid"; wait "$nd_pid" || true
    echo "bpftrace: $ns ns/call  (uprobe with a count map)"
  elif [ -n "$nd_pid" ]; then
    kill -INT "$nd_pid"; wait "$nd_pid" || true
    rm -f "$tmp/ready"
    events=$(grep -c '"type":"handler"' "$tmp/out.jsonl" || true)
    lost=$(tail -1 "$tmp/out.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["lost"]["ringbuf"])')
    echo "traced:   $ns ns/call  ($events handler events recorded, $lost lost)"
  else
    echo "untraced: $ns ns/call"
  fi
}
for round in 1 2; do
  run plain
  run traced
  command -v bpftrace >/dev/null && run bpftrace
done
