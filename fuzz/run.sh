#!/usr/bin/env bash
# Bounded coverage-guided runs of every fuzz target, on the stable toolchain.
#
#   fuzz/run.sh                 # each target for KASKADE_FUZZ_SECONDS (default 30) seconds
#   fuzz/run.sh rtcp 3600       # one target, one hour (the longer run of fuzz/README.md)
#
# The committed corpus (fuzz/corpus/<target>) is read-only input: what a run discovers goes to a
# scratch directory, so a test run never dirties the tree. A crash fails the run and leaves the
# input under $KASKADE_FUZZ_OUT/artifacts/<target>/ (keep it as a regression, see README.md).
# Prints one line per target with its executions per second.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CARGO_FUZZ_VERSION=0.13.1
SECONDS_EACH="${KASKADE_FUZZ_SECONDS:-30}"
OUT="${KASKADE_FUZZ_OUT:-$(mktemp -d -t kaskade-fuzz.XXXXXX)}"

if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
    cargo install --locked "cargo-fuzz@$CARGO_FUZZ_VERSION"
fi
# -s none: no sanitizer, so no -Zsanitizer and no nightly (Rust code is memory-safe; what we hunt
# is panics, overflows and broken invariants). -a: debug assertions, so overflows abort.
FLAGS=(-s none -O -a)

targets=("$@")
if [ "${#targets[@]}" -eq 2 ] && [[ "${targets[1]}" =~ ^[0-9]+$ ]]; then
    SECONDS_EACH="${targets[1]}"
    targets=("${targets[0]}")
fi
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build "${FLAGS[@]}"
for t in "${targets[@]}"; do
    mkdir -p "$OUT/corpus/$t" "$OUT/artifacts/$t"
    log="$OUT/$t.log"
    status=0
    nice -n 10 cargo fuzz run "${FLAGS[@]}" "$t" "$OUT/corpus/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -artifact_prefix="$OUT/artifacts/$t/" \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    secs=${secs:-1}
    if [ "$secs" -lt 1 ]; then secs=1; fi
    if [ "$status" -ne 0 ]; then
        tail -40 "$log" >&2
        echo "fuzz target $t FAILED; input in $OUT/artifacts/$t/" >&2
        exit "$status"
    fi
    echo "fuzz $t: ${runs:-?} runs in ${secs:-?} s ($(( ${runs:-0} / secs )) exec/s), coverage ${cov:-?}"
done
