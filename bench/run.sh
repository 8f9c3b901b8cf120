#!/usr/bin/env bash
# keyward's load benchmark: the real server (release build, SQLite, metering on) against a
# bare axum server returning the same bytes, measured in the same run with the same wrk
# settings, so the ratio survives a noisy machine. Loopback only; every run is bounded.
#
# Usage: bench/run.sh [DURATION_SECONDS] [CONNECTIONS] [sqlite|postgres] [unlimited|limited]
#        (default 10 s, 64 connections, sqlite, unlimited; postgres uses a fresh schema in
#        KEYWARD_BENCH_PG_URL, default postgres://postgres@127.0.0.1:5432/test, dropped after;
#        limited gives the account limits too high to reach, so every request also goes
#        through the rate limiter and carries x-ratelimit-* headers)
# Output: a Markdown table on stdout and everything under bench/out/<timestamp>/.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"
connections="${2:-64}"
backend="${3:-sqlite}"
limits="${4:-unlimited}"

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --locked --bin keyward --bin bare-server

out="bench/out/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
work="$(mktemp -d)"
pids=()
pg_url="${KEYWARD_BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
schema="kw_bench_$$"
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ "$backend" = postgres ] && psql -q "$pg_url" -c "drop schema if exists $schema cascade" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # LOGFILE PATTERN -> prints the base URL
    for _ in $(seq 1 100); do
        if grep -q "$2" "$1"; then grep -o "$2 http://[0-9.:]*" "$1" | awk '{print $NF}'; return; fi
        sleep 0.1
    done
    echo "server did not start: $(cat "$1")" >&2; exit 1
}

if [ "$backend" = postgres ]; then
    psql -q "$pg_url" -c "create schema $schema"
    db="$pg_url?options=-c%20search_path%3D$schema"
else
    db="sqlite:$work/keyward.db"
fi
target/release/keyward serve --listen 127.0.0.1:0 --database-url "$db" --no-bootstrap 2> "$work/keyward.log" > /dev/null &
keyward_pid=$!; pids+=("$keyward_pid")
keyward="$(wait_for "$work/keyward.log" "keyward listening on")"

# An enterprise account (no rate limit) with 10 keys, as in the issue.
created="$(target/release/keyward accounts create --name bench --plan enterprise --json --database-url "$db")"
key="$(sed -E 's/.*"api_key":"([^"]+)".*/\1/' <<< "$created")"
if [ "$limits" = limited ]; then
    target/release/keyward accounts set-limits "$(sed -E 's/.*"account_id":"([^"]+)".*/\1/' <<< "$created")" \
        --per-minute 1000000000 --per-day 1000000000 --database-url "$db" > /dev/null
fi
for i in $(seq 2 10); do
    curl -sf -X POST "$keyward/v1/api-keys" -H "x-api-key: $key" -H 'content-type: application/json' \
         -d "{\"name\":\"bench key $i\",\"scopes\":[\"read\"],\"metadata\":{\"n\":$i}}" > /dev/null
done
curl -sf "$keyward/v1/api-keys" -H "x-api-key: $key" > "$out/list.json"
curl -sf -X POST "$keyward/v1/api-keys/validate" -H "x-api-key: $key" > "$out/validate.json"
create_body='{"name":"bench","scopes":["read"],"metadata":{"env":"bench"}}'
curl -sf -X POST "$keyward/v1/api-keys" -H "x-api-key: $key" -H 'content-type: application/json' \
     -d "$create_body" > "$out/create.json"

target/release/bare-server 127.0.0.1:0 "$out/list.json" "$out/validate.json" "$out/create.json" 2> "$work/bare.log" &
pids+=("$!")
bare="$(wait_for "$work/bare.log" "bare-server listening on")"

run() { # NAME URL METHOD [BODY]
    local name="$1" url="$2" method="$3"
    WRK_KEY="$key" WRK_METHOD="$method" WRK_BODY="${4:-}" wrk -t2 -c"$connections" -d"${duration}s" \
        -s bench/wrk/keyward.lua "$url" > "$out/$name.txt" 2>&1
    grep '^RESULT' "$out/$name.txt" | sed "s/^RESULT/$name/"
}

{
    run bare-list "$bare/v1/api-keys" GET
    run keyward-list "$keyward/v1/api-keys" GET
    run bare-validate "$bare/v1/api-keys/validate" POST
    run keyward-validate "$keyward/v1/api-keys/validate" POST
    # Creation: every 201 is durable (one fsynced commit each).
    run bare-create "$bare/v1/api-keys" POST "$create_body"
    run keyward-create "$keyward/v1/api-keys" POST "$create_body"
} | tee "$out/results.txt"

sleep 1.5   # let the last metering batch land
curl -sf "$keyward/metrics" > "$out/metrics.txt"
rss_kib="$(awk '/VmHWM/ {print $2}' "/proc/$keyward_pid/status")"
dropped="$(awk '/^keyward_meter_dropped_rows_total/ {print $2}' "$out/metrics.txt")"
flushed="$(awk '/^keyward_meter_flushed_rows_total/ {print $2}' "$out/metrics.txt")"

field() { sed -E "s/.*$2=([0-9.]+).*/\1/" <<< "$(grep "^$1 " "$out/results.txt")"; }
{
    echo "| endpoint | bare rps | keyward rps | ratio | bare p99 ms | keyward p50 / p99 / p99.9 ms | keyward errors |"
    echo "|---|---|---|---|---|---|---|"
    for ep in list validate create; do
        b="$(field bare-$ep rps)"; k="$(field keyward-$ep rps)"
        ratio="$(awk -v k="$k" -v b="$b" 'BEGIN { printf "%.0f %%", 100 * k / b }')"
        echo "| $ep | $b | $k | $ratio | $(field bare-$ep p99_ms) | $(field keyward-$ep p50_ms) / $(field keyward-$ep p99_ms) / $(field keyward-$ep p999_ms) | $(field keyward-$ep errors) |"
    done
    echo
    echo "backend: $backend, $limits; keyward peak RSS: $((rss_kib / 1024)) MiB; history rows flushed: ${flushed:-0}, dropped: ${dropped:-0}"
} | tee "$out/results.md"
