#!/usr/bin/env bash
# How long a webhook takes from the change that makes it to its receiver (docs/BENCHMARKS.md,
# "Webhooks"). Starts keyward (--webhooks-allow-private) on a fresh database, subscribes
# one account to key.created and key.revoked at a receiver of this script's own (python3,
# on loopback, answering 200 and noting each arrival's time), then makes EVENTS events
# through the API at RATE per second: keys created, each revoked right after. An event's
# latency is its arrival at the receiver minus the moment keyward's answer to the change
# arrived (the change was committed before that answer, so this understates the true
# latency by the answer's trip over loopback, well under a millisecond). The event's own
# `timestamp` has whole seconds only; each arrival is checked to be within a second of it.
#
# Usage: bench/webhook-latency.sh [EVENTS=1000] [RATE=50] [sqlite|postgres]
#
# KEYWARD_BENCH_BIN runs another keyward binary than target/release/keyward (which is then
#   not built). postgres: a fresh schema in KEYWARD_BENCH_PG_URL (default
#   postgres://postgres@127.0.0.1:5432/test), dropped on exit.
# Output: median, p90, p99 and max in ms on stdout and in
#   bench/out/webhook-latency-<timestamp>/results.md (or KEYWARD_BENCH_OUT), beside every
#   event's latency (latencies.txt); progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: bench/webhook-latency.sh [EVENTS=1000] [RATE=50] [sqlite|postgres]"
events="${1:-1000}"
rate="${2:-50}"
backend="${3:-sqlite}"
die() { echo "$*" >&2; exit 2; }
[ $# -le 3 ] || die "$usage"
for n in "$events" "$rate"; do
    [[ "$n" =~ ^[0-9]+$ ]] || die "$usage (not a whole number: $n)"
done
[ "$events" -ge 2 ] || die "EVENTS must be at least 2"
[ "$rate" -ge 1 ] || die "RATE must be at least 1"
case "$backend" in sqlite | postgres) ;; *) die "$usage" ;; esac
keyward="${KEYWARD_BENCH_BIN:-target/release/keyward}"
[ -n "${KEYWARD_BENCH_BIN:-}" ] || cargo build --release --locked --bin keyward

out="${KEYWARD_BENCH_OUT:-bench/out/webhook-latency-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
work="$(mktemp -d)"
pids=()
pg_url="${KEYWARD_BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
schema="kw_latency_$$"
schema_made=""
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$schema_made" ]; then
        psql -q "$pg_url" -c "drop schema if exists $schema cascade" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

if [ "$backend" = postgres ]; then
    psql -q -v ON_ERROR_STOP=1 "$pg_url" -c "create schema $schema"
    schema_made=1
    case "$pg_url" in *\?*) sep='&' ;; *) sep='?' ;; esac
    db="$pg_url${sep}options=-c%20search_path%3D$schema"
else
    db="sqlite:$work/keyward.db"
fi

"$keyward" migrate --database-url "$db" >/dev/null
key="$("$keyward" accounts create --database-url "$db" --name latency --plan enterprise --json \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')"
"$keyward" serve --listen 127.0.0.1:0 --database-url "$db" --no-bootstrap \
    --webhooks-allow-private 2> "$out/keyward.log" > /dev/null &
pids+=($!)
base=""
for _ in $(seq 1 300); do
    base="$(grep -o 'keyward listening on http://[0-9.:]*' "$out/keyward.log" | awk '{print $NF}' || true)"
    [ -z "$base" ] || break
    sleep 0.1
done
[ -n "$base" ] || die "keyward did not start: $(cat "$out/keyward.log")"
echo "== keyward on $base ($backend); $events events at $rate/s" >&2

KEYWARD_URL="$base" KEYWARD_KEY="$key" EVENTS="$events" RATE="$rate" OUT="$out" python3 - <<'EOF'
import http.client, json, os, statistics, sys, threading, time, urllib.parse
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

base = urllib.parse.urlparse(os.environ["KEYWARD_URL"])
key, events, rate, out = os.environ["KEYWARD_KEY"], int(os.environ["EVENTS"]), int(os.environ["RATE"]), os.environ["OUT"]
arrived = {}  # (type, key_id) -> (arrival time, the event's timestamp)
lock = threading.Lock()

class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        at = time.time()
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        stamp = datetime.strptime(body["timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
        with lock:
            arrived.setdefault((body["type"], body["data"]["key_id"]), (at, stamp))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=server.serve_forever, daemon=True).start()
api = http.client.HTTPConnection(base.hostname, base.port, timeout=10)

def call(method, path, body=None):
    headers = {"x-api-key": key}
    if body is not None:
        headers["content-type"] = "application/json"
    api.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = api.getresponse()
    data = response.read()
    return response.status, time.time(), json.loads(data) if data else None

status, _, _ = call("POST", "/v1/webhooks", {
    "url": f"http://127.0.0.1:{server.server_address[1]}/hook",
    "events": ["key.created", "key.revoked"],
})
assert status == 201, status
committed = {}  # (type, key_id) -> when keyward's answer arrived
start = time.time()
key_id = None
for i in range(events):
    due = start + i / rate
    time.sleep(max(0.0, due - time.time()))
    if key_id is None:
        status, at, body = call("POST", "/v1/api-keys", {"name": f"latency-{i}", "scopes": ["read"]})
        assert status == 201, (status, body)
        key_id = body["key_id"]
        committed[("key.created", key_id)] = at
    else:
        status, at, _ = call("DELETE", f"/v1/api-keys/{key_id}")
        assert status == 204, status
        committed[("key.revoked", key_id)] = at
        key_id = None

deadline = time.time() + 60
while time.time() < deadline:
    with lock:
        if len(arrived) >= len(committed):
            break
    time.sleep(0.1)
with lock:
    missing = [k for k in committed if k not in arrived]
    latencies = sorted((arrived[k][0] - at) * 1000 for k, at in committed.items() if k in arrived)
    off = sum(1 for k in committed if k in arrived and not -1 <= arrived[k][0] - arrived[k][1] <= 2)

def pct(p):
    return latencies[min(len(latencies) - 1, int(round(p / 100 * len(latencies) + 0.5)) - 1)]

with open(f"{out}/latencies.txt", "w") as f:
    f.writelines(f"{v:.2f}\n" for v in latencies)
lines = [
    "| events | arrived | median ms | p90 ms | p99 ms | max ms |",
    "|---|---|---|---|---|---|",
    f"| {len(committed)} | {len(latencies)} | {statistics.median(latencies):.1f} | {pct(90):.1f} | {pct(99):.1f} | {latencies[-1]:.1f} |",
    "",
    f"{len(committed)} events (key.created and key.revoked in turn) at {rate}/s over {time.time() - start:.0f} s; "
    f"missing after 60 s: {len(missing)}; arrivals more than a second from their event's timestamp: {off}",
]
with open(f"{out}/results.md", "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(1 if missing else 0)
EOF
