# Shared helpers of bench/run.sh and bench/soak.sh (sourced, not run).
# Everything here works on a private nginx in a temporary directory, on a
# free loopback port: it never touches a system nginx.

ND_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { echo "bench: $*" >&2; exit 1; }
note() { echo "bench: $*" >&2; }

require_root_and_tools() {
  [ "$(id -u)" -eq 0 ] || die "needs root (netdrift and bpftrace load BPF programs): run with sudo"
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || die "missing $t (apt-get install nginx wrk bpftrace bpftool python3 util-linux linux-perf)"
  done
  # bpftrace needs tracefs for the tracepoints (netdrift mounts it itself).
  if [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
  fi
}

# netdrift binary: $NETDRIFT if set, else a fresh release build.
netdrift_binary() {
  if [ -n "${NETDRIFT:-}" ]; then
    [ -x "$NETDRIFT" ] || die "NETDRIFT=$NETDRIFT is not executable"
    echo "$NETDRIFT"
    return
  fi
  (cd "$ND_ROOT" && PATH="$HOME/.cargo/bin:$PATH" cargo build --release --quiet --bin netdrift) >&2 || die "cargo build --release failed"
  echo "$ND_ROOT/target/release/netdrift"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# nginx_start DIR AFFINITY: 2 workers, access_log off, `return 200 "ok"`
# (or, with BODY_KB=N, a static file of N KiB sent with sendfile).
# Sets NGINX_MASTER, NGINX_W1, NGINX_W2, NGINX_PORT.
nginx_start() {
  local dir=$1 affinity=$2 try location='return 200 "ok";'
  if [ "${BODY_KB:-0}" -gt 0 ]; then
    mkdir -p "$dir/www"
    head -c "$((BODY_KB * 1024))" /dev/zero | tr '\0' x >"$dir/www/index.html"
    # The workers run as nobody: they must reach the file.
    chmod 755 "$dir" "$dir/www"
    chmod 644 "$dir/www/index.html"
    location="root $dir/www; sendfile on; tcp_nopush on;"
  fi
  for try in 1 2 3; do
    NGINX_PORT=$(free_port)
    cat >"$dir/nginx.conf" <<EOF
worker_processes 2;
worker_cpu_affinity $affinity;
worker_rlimit_nofile 65536;
daemon on;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location / { $location }
    }
}
EOF
    if nginx -c "$dir/nginx.conf" -p "$dir" 2>>"$dir/nginx.start.log"; then
      break
    fi
    grep -q "Address already in use" "$dir/error.log" "$dir/nginx.start.log" 2>/dev/null || die "nginx did not start: $(tail -3 "$dir/error.log")"
    [ "$try" -lt 3 ] || die "nginx found no free port"
  done
  local i
  for i in $(seq 100); do
    NGINX_MASTER=$(cat "$dir/nginx.pid" 2>/dev/null || true)
    if [ -n "$NGINX_MASTER" ]; then
      local kids
      kids=$(pgrep -P "$NGINX_MASTER" | sort -n | tr '\n' ' ')
      set -- $kids
      if [ $# -eq 2 ]; then
        NGINX_W1=$1 NGINX_W2=$2
        return 0
      fi
    fi
    sleep 0.05
  done
  die "nginx did not come up with 2 workers"
}

nginx_stop() {
  local dir=$1 m
  m=$(cat "$dir/nginx.pid" 2>/dev/null || true)
  [ -n "$m" ] || return 0
  kill -TERM "$m" 2>/dev/null || return 0
  local i
  for i in $(seq 100); do
    alive "$m" || return 0
    sleep 0.05
  done
  kill -KILL "$m" 2>/dev/null || true
}

# utime+stime of a process, in clock ticks (comm may hold spaces).
cpu_ticks() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  s=${s##*) }
  set -- $s
  # After "comm)": state=$1 ... utime=$12 stime=$13.
  echo $(( ${12} + ${13} ))
}

# System-wide CPU from /proc/stat, in ticks: "busy steal" (busy: user, nice,
# system, irq, softirq; steal: time the hypervisor gave to other guests).
cpu_stat() {
  awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $9}' /proc/stat
}

# CHILDREN_TICKS := utime+stime of this shell's reaped children (the
# `times` builtin, second line), in ticks of 1/100 s. Not a function
# returning on stdout: `times` in a $(...) subshell would see no children.
children_ticks() {
  local f
  f=$(mktemp)
  times >"$f"
  CHILDREN_TICKS=$(awk 'NR == 2 {
    split($1, u, /[ms]/); split($2, s, /[ms]/)
    printf "%d\n", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) * 100 + 0.5 }' "$f")
  rm -f "$f"
}

# Wait until the machine is quiet (CPU busy below QUIET_PCT percent over 1 s)
# or QUIET_WAIT_S seconds have passed: other work on a 2-CPU machine moves
# the figures more than the tracers do.
wait_quiet() {
  local max=${QUIET_WAIT_S:-120} pct=${QUIET_PCT:-15} waited=0 a b busy total
  while :; do
    a=$(awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print $2 + $3 + $4 + $7 + $8 + $9, t}' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print $2 + $3 + $4 + $7 + $8 + $9, t}' /proc/stat)
    set -- $a $b
    busy=$(( $3 - $1 )) total=$(( $4 - $2 ))
    QUIET_BUSY_PCT=$(( total > 0 ? busy * 100 / total : 0 ))
    [ "$QUIET_BUSY_PCT" -lt "$pct" ] && return 0
    waited=$((waited + 1))
    if [ "$waited" -ge "$max" ]; then
      note "the machine is still busy ($(( busy * 100 / total ))% CPU by others) after ${max} s: measuring anyway"
      return 0
    fi
  done
}

# BPF program ids a process holds (program fds and link fds), one per line.
bpf_prog_ids() {
  local pid=$1 f
  for f in /proc/"$pid"/fdinfo/*; do
    awk '/^prog_id:/ {print $2}' "$f" 2>/dev/null
  done | sort -un
}

# Is PID alive (not gone, not a zombie waiting for us)?
alive() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  [ "${s:0:1}" != Z ]
}

# Wait until FILE exists or PID dies; 30 s at most.
wait_file() {
  local file=$1 pid=$2 i
  for i in $(seq 600); do
    [ -e "$file" ] && return 0
    alive "$pid" || return 1
    sleep 0.05
  done
  return 1
}

# Wait until PID holds BPF programs and their number has not changed for
# 1 s (bpftrace attaches its probes one by one); 30 s at most.
wait_progs() {
  local pid=$1 i n last=0 stable=0
  for i in $(seq 600); do
    alive "$pid" || return 1
    n=$(bpf_prog_ids "$pid" | wc -l)
    if [ "$n" -gt 0 ] && [ "$n" -eq "$last" ]; then
      stable=$((stable + 1))
      [ "$stable" -ge 20 ] && return 0
    else
      stable=0
    fi
    last=$n
    sleep 0.05
  done
  return 1
}

# Send SIGINT and wait up to 20 s, then SIGKILL.
stop_pid() {
  local pid=$1 i
  kill -INT "$pid" 2>/dev/null || return 0
  for i in $(seq 400); do
    alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.05
  done
  note "pid $pid ignored SIGINT for 20 s: killing it"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
