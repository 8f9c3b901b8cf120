#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time and fails if any crashes.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET=60]
#
# Each target starts from its committed seeds (fuzz/corpus/<target>/, read only here)
# and writes what it finds to a throwaway corpus, so a run never changes the checkout.
# A crash leaves its input in fuzz/artifacts/<target>/ and the script fails after every
# target has run; `cargo fuzz run --sanitizer none <target> <that file>` replays it.
#
# Why no AddressSanitizer by default: this machine has only a stable compiler, and ASan
# needs `-Zsanitizer` (RUSTC_BOOTSTRAP=1 unlocks it on stable, an unsupported escape
# hatch). keyward forbids unsafe code, so what fuzzing can find in it is panics, overflow
# (the fuzz build keeps overflow checks and debug assertions on), broken properties,
# hangs and memory blow-ups, none of which needs ASan; and ASan runs these targets
# about eight times slower (ECOSYSTEM.md §N: about 150 k against 1.2 M executions a
# second), so a CI minute of plain coverage-guided fuzzing reaches far deeper.
#
# Cost (measured on the 2-core machine): a clean build of the targets is about 5
# CPU-minutes (4 min 37 s user, 28 s system), the fuzzing 4 min 15 s for 60 s a target,
# so a CI run adds roughly 7 to 8 minutes on two idle cores.
#
# KEYWARD_FUZZ_ASAN=1 builds and runs with ASan through RUSTC_BOOTSTRAP=1, for a
# longer run on a machine with time to spare; the escape hatch stays in this script.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
cargo_fuzz_version="0.13.2"

if [ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $cargo_fuzz_version" ]; then
    echo "== installing cargo-fuzz $cargo_fuzz_version"
    cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
fi

if [ "${KEYWARD_FUZZ_ASAN:-0}" = 1 ]; then
    export RUSTC_BOOTSTRAP=1
    sanitizer=(--sanitizer address)
else
    sanitizer=(--sanitizer none)
fi

# fuzz/ has its own Cargo.lock; like the main build, it must be up to date.
cargo tree --locked --quiet --manifest-path fuzz/Cargo.toml >/dev/null

echo "== building the fuzz targets (${sanitizer[*]})"
cargo fuzz build "${sanitizer[@]}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
targets=$(cd fuzz/fuzz_targets && ls -- *.rs | sed 's/\.rs$//')
failed=()
summary=()
for target in $targets; do
    echo "== fuzzing $target for ${seconds}s"
    mkdir -p "$work/$target"
    log="$work/$target.log"
    # -timeout: one input taking over 10 s is a hang, and a failure.
    if cargo fuzz run "${sanitizer[@]}" "$target" "$work/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        verdict="ok"
    else
        verdict="FAILED"
        failed+=("$target")
        tail -n 60 "$log"
    fi
    # libFuzzer's last status line (`#N DONE cov: C ft: F corp: K/S ...`) and its stats.
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    status=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")
    features=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status")
    corpus=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$status")
    summary+=("$(printf '%-12s %-6s %12s execs  cov %6s  ft %6s  corpus %5s' \
        "$target" "$verdict" "${execs:-?}" "${cov:-?}" "${features:-?}" "${corpus:-?}")")
done

echo "== fuzzing summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
