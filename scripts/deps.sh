#!/usr/bin/env bash
# Install the Debian packages netdrift needs, only those missing.
#   scripts/deps.sh build   # to build: clang, libelf, zlib, pkg-config
#   scripts/deps.sh test    # to build and run every test (real servers, a browser)
# (bench/ needs more: nginx wrk bpftrace bpftool; bench/lib.sh names them.)
set -euo pipefail

# gcc and libc6-dev: the linker rustc calls (cc) and the vendored libbpf's build
# (with make); ca-certificates: cargo fetches crates over TLS (a bare image has none).
build_pkgs=(clang libelf-dev zlib1g-dev pkg-config make gcc libc6-dev ca-certificates)
test_pkgs=(nginx redis-server memcached libevent-dev liburing-dev g++ bpftool chromium strace)

case "${1:-build}" in
  build) want=("${build_pkgs[@]}") ;;
  test) want=("${build_pkgs[@]}" "${test_pkgs[@]}") ;;
  *) echo "usage: $0 build|test" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "netdrift: missing packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "netdrift: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # A fresh VM's boot-time apt run may hold the lock for a while: wait for it.
  apt=(apt-get -o DPkg::Lock::Timeout=600)
  # The lock option does not cover update's lists lock: retry it, 10 min at most.
  for try in $(seq 120); do
    "${apt[@]}" update -qq && break
    [ "$try" -lt 120 ] || exit 1
    sleep 5
  done
  # Servers are started by the tests themselves, on their own ports: no
  # service starts while installing. A block already there (Docker's Debian
  # images ship one) is left as it was; ours goes away however apt ends.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if trap -p EXIT | grep -q policy-rc.d; then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
fi

if ! command -v cargo >/dev/null; then
  # Under sudo, rustup's cargo is in the invoking user's home.
  sudo_home=$(getent passwd "${SUDO_USER:-}" 2>/dev/null | cut -d: -f6 || true)
  for d in "${HOME:-/root}/.cargo/bin" ${sudo_home:+"$sudo_home/.cargo/bin"} /usr/local/cargo/bin; do
    [ -x "$d/cargo" ] && { echo "netdrift: cargo is in $d: add it to PATH (sudo env PATH=\"$d:\$PATH\" ...)" >&2; exit 1; }
  done
  echo "netdrift: Rust is missing: install a stable toolchain (>= 1.88) with rustup (https://rustup.rs), then retry" >&2
  exit 1
fi
# Debian 12's own cargo is 1.63: say so rather than fail on the first new syntax.
minor=$(cargo --version | awk '{split($2, v, "."); print v[1] * 1000 + v[2]}')
if [ "${minor:-0}" -lt 1088 ]; then
  echo "netdrift: $(cargo --version) is too old: install a stable toolchain (>= 1.88) with rustup (https://rustup.rs), first in PATH" >&2
  exit 1
fi
