#!/usr/bin/env bash
# Times GET /v1/usage and history pages for an account with ROWS request-history rows
# (default 1,000,000), on a release build over SQLite or PostgreSQL. Each figure is the
# median of 11 requests made after one warm-up request. Loopback only. The last filter (an
# endpoint with no rows) is the worst case: it reads every row of the account.
#
# Usage: bench/history.sh [ROWS] [sqlite|postgres]
# postgres: a fresh schema in KEYWARD_BENCH_PG_URL (default
#   postgres://postgres@127.0.0.1:5432/test), dropped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
rows="${1:-1000000}"
backend="${2:-sqlite}"
case "$backend" in sqlite | postgres) ;; *) echo "usage: bench/history.sh [ROWS] [sqlite|postgres]" >&2; exit 2 ;; esac
cargo build --release --locked --bin keyward --bin seed-history

work="$(mktemp -d)"
pid=""
pg_url="${KEYWARD_BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
schema="kw_history_$$"
schema_made=""
cleanup() {
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
    wait 2>/dev/null || true
    if [ -n "$schema_made" ]; then
        psql -q "$pg_url" -c "drop schema if exists $schema cascade" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
if [ "$backend" = postgres ]; then
    PGCONNECT_TIMEOUT=10 psql -q -v ON_ERROR_STOP=1 "$pg_url" -c "create schema $schema"
    schema_made=1
    case "$pg_url" in *\?*) sep='&' ;; *) sep='?' ;; esac
    db="$pg_url${sep}options=-c%20search_path%3D$schema"
else
    db="sqlite:$work/keyward.db"
fi
created="$(target/release/keyward accounts create --name history-bench --plan enterprise --json --database-url "$db")"
account="$(sed -E 's/.*"account_id":"([^"]+)".*/\1/' <<< "$created")"
key_id="$(sed -E 's/.*"key_id":"([^"]+)".*/\1/' <<< "$created")"
key="$(sed -E 's/.*"api_key":"([^"]+)".*/\1/' <<< "$created")"
target/release/seed-history "$db" "$account" "$key_id" "$rows"
# Tables loaded seconds ago have no statistics until autovacuum's next round (up to a
# minute away), and PostgreSQL then plans a page of history as a sort of all the
# account's runs (13 ms instead of 0.1 at 1,000,000 rows). Measure the steady state.
if [ "$backend" = postgres ]; then psql -q "$pg_url" -c "analyze $schema.request_log_run, $schema.request_log_span, $schema.request_log_key_span, $schema.request_log_endpoint_span"; fi

target/release/keyward serve --listen 127.0.0.1:0 --database-url "$db" --no-bootstrap 2> "$work/log" > /dev/null &
pid=$!
for _ in $(seq 1 100); do grep -q "listening on" "$work/log" && break; sleep 0.1; done
base="$(grep -o 'listening on http://[0-9.:]*' "$work/log" | awk '{print $3}')"

median_ms() { # PATH
    curl -sf -o /dev/null "$base$1" -H "x-api-key: $key"
    for _ in $(seq 1 11); do
        curl -sf -o /dev/null -w '%{time_total}\n' "$base$1" -H "x-api-key: $key"
    done | sort -n | awk '{ t[NR] = $1 } END { printf "%.1f", t[6] * 1000 }'
}

echo "| request (account with $rows history rows) | median ms |"
echo "|---|---|"
for path in "/v1/usage" "/v1/request-history" "/v1/request-history?limit=1000" \
            "/v1/request-history?endpoint=POST%20/v1/api-keys/validate" "/v1/request-history?status=404" \
            "/v1/request-history?key_id=$key_id&limit=100" \
            "/v1/request-history?endpoint=DELETE%20/v1/api-keys/%7Bkey_id%7D"; do
    echo "| GET ${path//$key_id/KEY_ID} | $(median_ms "$path") |"
done
first="$(curl -sf "$base/v1/request-history?limit=1" -H "x-api-key: $key")"
cursor="$(sed -E 's/.*"next_before":"([^"]+)".*/\1/' <<< "$first")"
echo "| GET /v1/request-history?before=(cursor of page 1) | $(median_ms "/v1/request-history?before=$cursor") |"
echo "| GET /v1/usage total | $(curl -sf "$base/v1/usage" -H "x-api-key: $key" | sed -E 's/.*"requests_this_month":([0-9]+).*/\1/') requests this month |"
