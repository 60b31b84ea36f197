#!/usr/bin/env bash
# Fuzz netdrift's parsers of untrusted bytes, each target for a bounded time.
#
#   scripts/fuzz.sh                       # every target, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh decode
#
# Targets (fuzz/fuzz_targets/): decode (ring-buffer records -> events, and a
# stream of them through the correlator and the live JSON writer), proc_parsers (/proc text: epoll
# fdinfo, stat, socket links, status fields, offwake's /proc/PID/maps,
# stat start times, CapEff), recording (a --record file replayed as `analyze`
# and `report --from` read it: the correlator, chains and summary). A run
# longer than 10 s counts as a hang. Crashes land in
# fuzz/artifacts/TARGET/; reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz TARGET fuzz/artifacts/TARGET/crash-...
#
# cargo-fuzz needs a nightly compiler for -Zsanitizer=address. A nightly
# toolchain is used when rustup has one; otherwise the stable compiler runs
# with RUSTC_BOOTSTRAP=1, which unlocks the same unstable flags. Not run in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

SECS=${FUZZ_SECONDS:-60}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decode proc_parsers recording)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
  how="nightly toolchain"
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
  how="stable toolchain with RUSTC_BOOTSTRAP=1"
fi
echo "fuzz: ${targets[*]}, ${SECS} s each, $how" >&2

# Seeds: one valid record of each type, a whole chain as a stream and as a recording.
cargo run --quiet --manifest-path fuzz/Cargo.toml --bin make_seeds -- fuzz/corpus >&2

failed=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  echo "fuzz: $t for $SECS s" >&2
  if "${fuzz[@]}" run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$SECS" -max_len=8192 -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
      -artifact_prefix="fuzz/artifacts/$t/" 2>"fuzz/artifacts/$t.log"; then
    echo "fuzz: $t: no crash ($(grep -E '^stat::number_of_executed_units' "fuzz/artifacts/$t.log" | awk '{print $2}') runs, corpus $(ls "fuzz/corpus/$t" | wc -l) inputs)" >&2
  else
    failed+=("$t")
    echo "fuzz: $t FAILED: $(grep -m1 -E 'panicked|ERROR: AddressSanitizer|ERROR: libFuzzer' "fuzz/artifacts/$t.log" || tail -1 "fuzz/artifacts/$t.log")" >&2
    ls "fuzz/artifacts/$t/" >&2
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]} (inputs in fuzz/artifacts/, logs in fuzz/artifacts/*.log)" >&2
  exit 1
fi
echo "fuzz: no crash" >&2
