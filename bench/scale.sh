#!/usr/bin/env bash
# Does keyward stay as fast as the key count grows? Seeds a database with 1,000 keys
# (100 accounts x 10) and another with 1,000,000 keys (100,000 accounts x 10), then
# drives each, and a bare axum server returning the same bytes, with wrk cycling through
# 100 distinct keys of 100 different accounts. Also reports keyward's peak RSS.
# Loopback only; each wrk run is bounded. SQLite.
#
# Usage: bench/scale.sh [DURATION_SECONDS] [CONNECTIONS]   (default 10 s, 64 connections)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"
connections="${2:-64}"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --locked --bin keyward --bin bare-server --bin seed-keys

out="bench/out/scale-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_for() { # LOGFILE PATTERN -> prints the base URL
    for _ in $(seq 1 300); do
        if grep -q "$2" "$1"; then grep -o "$2 http://[0-9.:]*" "$1" | awk '{print $NF}'; return; fi
        sleep 0.1
    done
    echo "server did not start: $(cat "$1")" >&2; exit 1
}

echo "| keys stored | endpoint | bare rps | keyward rps | ratio | keyward p99 ms | keyward peak RSS |" | tee "$out/results.md"
echo "|---|---|---|---|---|---|---|" | tee -a "$out/results.md"
for accounts in 100 100000; do
    keys=$((accounts * 10))
    db="sqlite:$work/keyward-$keys.db"
    target/release/seed-keys "$db" "$accounts" 10 "$work/secrets-$keys.txt" 100
    target/release/keyward serve --listen 127.0.0.1:0 --database-url "$db" --no-bootstrap 2> "$work/keyward-$keys.log" > /dev/null &
    pid=$!; pids+=("$pid")
    base="$(wait_for "$work/keyward-$keys.log" "keyward listening on")"
    key="$(head -n 1 "$work/secrets-$keys.txt")"
    curl -sf "$base/v1/api-keys" -H "x-api-key: $key" > "$work/list.json"
    curl -sf -X POST "$base/v1/api-keys/validate" -H "x-api-key: $key" > "$work/validate.json"
    target/release/bare-server 127.0.0.1:0 "$work/list.json" "$work/validate.json" "$work/validate.json" 2> "$work/bare-$keys.log" &
    bare_pid=$!; pids+=("$bare_pid")
    bare="$(wait_for "$work/bare-$keys.log" "bare-server listening on")"
    for ep in list validate; do
        if [ "$ep" = list ]; then path=/v1/api-keys; method=GET; else path=/v1/api-keys/validate; method=POST; fi
        for target in bare keyward; do
            url="$base$path"; [ "$target" = bare ] && url="$bare$path"
            WRK_KEYS_FILE="$work/secrets-$keys.txt" WRK_METHOD="$method" wrk -t2 -c"$connections" -d"${duration}s" \
                -s bench/wrk/keyward.lua "$url" > "$out/$keys-$target-$ep.txt" 2>&1
        done
        b="$(grep '^RESULT' "$out/$keys-bare-$ep.txt" | sed -E 's/.*rps=([0-9]+).*/\1/')"
        k="$(grep '^RESULT' "$out/$keys-keyward-$ep.txt" | sed -E 's/.*rps=([0-9]+).*/\1/')"
        p99="$(grep '^RESULT' "$out/$keys-keyward-$ep.txt" | sed -E 's/.*p99_ms=([0-9.]+).*/\1/')"
        errors="$(grep '^RESULT' "$out/$keys-keyward-$ep.txt" | sed -E 's/.*errors=([0-9]+).*/\1/')"
        [ "$errors" = 0 ] || echo "keyward errors: $errors ($ep, $keys keys)" >&2
        rss="$(awk '/VmHWM/ {printf "%d MiB", $2 / 1024}' "/proc/$pid/status")"
        ratio="$(awk -v k="$k" -v b="$b" 'BEGIN { printf "%.0f %%", 100 * k / b }')"
        echo "| $keys | $ep | $b | $k | $ratio | $p99 | $rss |" | tee -a "$out/results.md"
    done
    kill -TERM "$pid" "$bare_pid"; wait "$pid" "$bare_pid" 2>/dev/null || true
done
