#!/usr/bin/env bash
# Does keyward stay as fast as the key count grows? Runs bench/run.sh (SQLite, no rate
# limit) on 1,000 keys (100 accounts x 10) and on 1,000,000 keys (100,000 accounts x 10),
# and prints both tables. wrk cycles through the same number of callers in both datasets
# (50 accounts, creates going to 50 others), so only the size of the database differs.
# Loopback only; every run is bounded.
#
# Usage: bench/scale.sh [DURATION_SECONDS=10] [CONNECTIONS=64] [SMALL_ACCOUNTS=100] [LARGE_ACCOUNTS=100000]
# Output: bench/out/scale-<timestamp>/results.md (and each run's files beside it).
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"
connections="${2:-64}"
small="${3:-100}"
large="${4:-100000}"
out="bench/out/scale-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
for accounts in "$small" "$large"; do
    echo "scale: $accounts accounts" >&2
    KEYWARD_BENCH_SAMPLE=$((small / 2)) KEYWARD_BENCH_OUT="$out/$accounts-accounts" \
        bench/run.sh "$duration" "$connections" sqlite unlimited "$accounts" > /dev/null
done
for accounts in "$small" "$large"; do
    echo "### $((accounts * 10)) keys stored ($accounts accounts)"
    echo
    cat "$out/$accounts-accounts/results.md"
    echo
done | tee "$out/results.md"
