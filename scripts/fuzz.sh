#!/usr/bin/env bash
# `make fuzz`: coverage-guided fuzzing (libFuzzer through cargo-fuzz) of the parsers that see
# untrusted input, FUZZ_SECONDS per target (default 60). Crashes land in fuzz/artifacts/; the
# corpus in fuzz/corpus/ grows and is kept (minimize it with `cargo fuzz cmin TARGET`).
# CI (.ci/run) runs `FUZZ_SECONDS=5 FUZZ_GROW_CORPUS=0 scripts/fuzz.sh`: the targets must build
# (fuzz/ is its own workspace: nothing else compiles it), every input of the corpus is run again,
# then a few seconds of fuzzing; new inputs go to a scratch folder, fuzz/corpus/ is left as it is.
# Exits non-zero on a build failure, a crash, an out-of-memory or a leak.
# cargo-fuzz needs unstable compiler flags: RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
GROW_CORPUS=${FUZZ_GROW_CORPUS:-1}
TARGETS=(signature_header envelope)
CARGO_FUZZ_VERSION=0.13.2

if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io (once per machine, into ~/.cargo/bin)"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
# The fuzz crate is outside the main workspace: its Cargo.lock is checked here, as CI's --locked
# builds check the main one.
if ! cargo fetch --locked --quiet --target "$(rustc -vV | sed -n 's/^host: //p')"; then
  echo "fuzz: fuzz/Cargo.lock is out of date (a dependency of webhook-core changed?): run \`cargo fuzz build\` in fuzz/ and commit fuzz/Cargo.lock" >&2
  exit 1
fi
echo "fuzz: building ${TARGETS[*]}"
cargo fuzz build

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${TARGETS[@]}"; do
  corpus=(corpus/"$target")
  if [ "$GROW_CORPUS" != 1 ]; then
    # libFuzzer writes new inputs into its first corpus folder.
    mkdir -p "$scratch/$target"
    corpus=("$scratch/$target" corpus/"$target")
  fi
  echo "fuzz: $target for ${SECONDS_PER_TARGET}s ($(ls corpus/"$target" | wc -l) inputs in its corpus)"
  log="$scratch/$target.log"
  # Bounded memory: a single allocation over 64 MiB or 512 MiB in total is reported as a bug.
  status=0
  cargo fuzz run "$target" "${corpus[@]}" -- -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=512 \
    -malloc_limit_mb=64 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done|==|SUMMARY)|INITED|panicked' "$log" || true
  if [ "$status" != 0 ]; then
    tail -n 60 "$log" >&2
    echo "fuzz: $target failed (exit $status); the failing input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  if ls artifacts/"$target"/crash-* artifacts/"$target"/oom-* artifacts/"$target"/leak-* >/dev/null 2>&1; then
    echo "fuzz: $target found a failing input in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
echo "fuzz: no crash, no out-of-memory"
