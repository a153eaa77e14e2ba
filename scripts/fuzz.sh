#!/usr/bin/env bash
# `make fuzz`: coverage-guided fuzzing (libFuzzer through cargo-fuzz) of the parsers that see
# untrusted input, FUZZ_SECONDS per target (default 60). Crashes land in fuzz/artifacts/; the
# corpus in fuzz/corpus/ grows and is kept (minimize it with `cargo fuzz cmin TARGET`).
# cargo-fuzz needs unstable compiler flags: RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for target in signature_header envelope; do
  echo "fuzz: $target for ${SECONDS_PER_TARGET}s"
  # Bounded memory: a single allocation over 64 MiB or 512 MiB in total is reported as a bug.
  cargo fuzz run "$target" -- -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=512 -malloc_limit_mb=64 \
    -print_final_stats=1 2>&1 | grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done|==|SUMMARY)' || true
  if ls artifacts/"$target"/crash-* artifacts/"$target"/oom-* artifacts/"$target"/leak-* >/dev/null 2>&1; then
    echo "fuzz: $target found a failing input in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
echo "fuzz: no crash, no out-of-memory"
