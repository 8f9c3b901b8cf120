#!/usr/bin/env bash
# Instructions per request under valgrind's callgrind: a count that does not move with
# the host's load, for steps smaller than bench/run.sh's run-to-run noise. Seeds 100
# accounts x 10 keys (50 callers), starts BINARY under callgrind, warms up for 3 s,
# zeroes the counters, drives 8 s of one scenario with wrk (one thread, two connections)
# and divides the instructions of the whole process (the metering writer included) by
# the requests answered. Loopback only; needs valgrind and wrk.
#
# Usage: bench/instructions.sh [BINARY=target/release/keyward] [SCENARIO ...]
#   SCENARIO: healthz, or one of bench/wrk/keyward.lua's (list validate get create mix);
#   default: healthz list validate get create.
#   BINARY `bare` counts the bare server instead (the ceiling of bench/run.sh), serving
#   the bytes keyward answers the first caller, captured from target/release/keyward
#   first; `healthz` does not apply to it.
set -euo pipefail
cd "$(dirname "$0")/.."
binary="${1:-target/release/keyward}"
shift || true
scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ]; then
    scenarios=(healthz list validate get create)
    [ "$binary" != bare ] || scenarios=(list validate get create)
fi
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 2; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --locked --bin seed-keys
[ "$binary" != bare ] || cargo build --release --locked --bin keyward --bin bare-server

work="$(mktemp -d)"
vg=""
cleanup() { [ -n "$vg" ] && kill -INT "$vg" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
target/release/seed-keys "sqlite:$work/base.db" 100 10 "$work/sample.txt" 100 >&2
awk 'NR % 2 == 1' "$work/sample.txt" > "$work/callers.txt"
awk 'NR % 2 == 0' "$work/sample.txt" > "$work/creators.txt"

if [ "$binary" = bare ]; then
    # The same capture as bench/run.sh: keyward's answers to the first caller.
    cp "$work/base.db" "$work/capture.db"
    for f in "$work"/base.db-wal "$work"/base.db-shm; do [ -f "$f" ] && cp "$f" "${f/base/capture}"; done
    target/release/keyward serve --listen 127.0.0.1:7077 --database-url "sqlite:$work/capture.db" \
        --no-bootstrap > /dev/null 2>&1 &
    vg=$!
    for _ in $(seq 1 100); do curl -sf -o /dev/null http://127.0.0.1:7077/healthz && break; sleep 0.1; done
    read -r key key_id _ < "$work/callers.txt"
    read -r creator _ < "$work/creators.txt"
    curl -sf -X POST http://127.0.0.1:7077/v1/api-keys/validate -H "x-api-key: $key" > "$work/validate.json"
    curl -sf http://127.0.0.1:7077/v1/api-keys -H "x-api-key: $key" > "$work/list.json"
    curl -sf "http://127.0.0.1:7077/v1/api-keys/$key_id" -H "x-api-key: $key" > "$work/get.json"
    curl -sf -X POST http://127.0.0.1:7077/v1/api-keys -H "x-api-key: $creator" \
        -H 'content-type: application/json' -d '{"name":"bench","scopes":["read"],"metadata":{"env":"bench"}}' \
        > "$work/create.json"
    kill -INT "$vg"; wait "$vg" 2>/dev/null || true; vg=""
fi

echo "| scenario | instructions per request |"
echo "|---|---|"
for scenario in "${scenarios[@]}"; do
    rm -f "$work"/run.db* "$work"/callgrind.out*
    cp "$work/base.db" "$work/run.db"
    for f in "$work"/base.db-wal "$work"/base.db-shm; do [ -f "$f" ] && cp "$f" "${f/base/run}"; done
    if [ "$binary" = bare ]; then
        server=(target/release/bare-server 127.0.0.1:7077 "$work/list.json" "$work/validate.json"
            "$work/create.json" "$work/get.json")
    else
        server=("$binary" serve --listen 127.0.0.1:7077 --database-url "sqlite:$work/run.db" --no-bootstrap)
    fi
    valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" "${server[@]}" \
        > /dev/null 2> "$work/valgrind.log" &
    vg=$!
    # Any answer will do: the bare server has no /healthz.
    for _ in $(seq 1 120); do curl -s -o /dev/null http://127.0.0.1:7077/healthz && break; sleep 0.5; done
    drive() { # SECONDS
        if [ "$scenario" = healthz ]; then
            wrk -t1 -c2 -d"$1s" http://127.0.0.1:7077/healthz
        else
            WRK_SCENARIO="$scenario" WRK_KEYS_FILE="$work/callers.txt" WRK_CREATE_KEYS_FILE="$work/creators.txt" \
                WRK_BODY='{"name":"bench","scopes":["read"],"metadata":{"env":"bench"}}' \
                wrk -t1 -c2 -d"$1s" -s bench/wrk/keyward.lua http://127.0.0.1:7077/
        fi
    }
    drive 3 > /dev/null
    callgrind_control -z "$vg" > /dev/null 2>&1
    requests="$(drive 8 | grep -o '[0-9]* requests in' | awk '{print $1}')"
    callgrind_control -d "$vg" > /dev/null 2>&1
    # keyward shuts down on SIGINT; the bare server installs no handler, and under
    # valgrind SIGINT does not end it. The counts are already dumped.
    if [ "$binary" = bare ]; then kill -KILL "$vg"; else kill -INT "$vg"; fi
    wait "$vg" 2>/dev/null || true; vg=""
    dump="$(ls -t "$work"/callgrind.out.* | head -n 1)"
    total="$(callgrind_annotate "$dump" | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')"
    echo "| $scenario | $((total / requests)) |"
done
