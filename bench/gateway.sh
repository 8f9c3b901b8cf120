#!/usr/bin/env bash
# The gateway benchmark (docs/GATEWAY.md, docs/BENCHMARKS.md "Gateway"): keyward in front
# of a platform's API against nginx in the same place, in the same run, on the same bare
# upstream (an nginx server block answering fixed JSON), over loopback.
#
# Usage: bench/gateway.sh [DURATION_SECONDS=10] [CONNECTIONS=64]
#
# Scenarios, each `wrk -t2 -cCONNECTIONS -dDURATION_SECONDS s --latency` on
# GET /v1/videos/v1 (route `GET /v1/videos/{video_id}`, scope `read`):
#   upstream    wrk → the bare upstream (the ceiling of everything else)
#   proxy       wrk → nginx proxy_pass → upstream
#   gateway     wrk → keyward --routes --upstream → upstream (key checked, metered)
#   authreq     wrk → nginx auth_request → keyward /authorize, then → upstream
#               (deploy/nginx-auth-request.conf, the file the tests run)
# Targets (issue 24): gateway ≥ 70 % of proxy's requests/s and p99 ≤ 2 × proxy's; authreq
# ≥ 50 % of proxy's requests/s (nginx alone).
# nginx runs as this script's children with their own prefix directories and ports (never
# the system service); the proxy gets 2 workers, as keyward gets 2 runtime threads on
# the 2-core machines of docs/BENCHMARKS.md. keyward runs on SQLite with an enterprise
# account (no rate limit), metering on.
# KEYWARD_BENCH_BIN runs another keyward binary than the release build (a debug build for
#   a smoke run of this script; its numbers mean nothing).
# Output: a Markdown table on stdout and in bench/out/gateway-<timestamp>/results.md (or
# KEYWARD_BENCH_OUT), beside the raw wrk output; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: bench/gateway.sh [DURATION_SECONDS=10] [CONNECTIONS=64]"
duration="${1:-10}"
connections="${2:-64}"
die() { echo "$*" >&2; exit 2; }
[ $# -le 2 ] || die "$usage"
for n in "$duration" "$connections"; do
    [[ "$n" =~ ^[0-9]+$ ]] || die "$usage (not a whole number: $n)"
done
[ "$connections" -ge 2 ] || die "CONNECTIONS must be at least 2"

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
[ -x "$nginx_bin" ] || { apt-get update -qq && apt-get install -y -qq nginx-core; nginx_bin=/usr/sbin/nginx; }
"$nginx_bin" -V 2>&1 | grep -q -- --with-http_auth_request_module \
    || die "this nginx has no auth_request module"
keyward="${KEYWARD_BENCH_BIN:-target/release/keyward}"
[ -n "${KEYWARD_BENCH_BIN:-}" ] || cargo build --release --locked --bin keyward

out="${KEYWARD_BENCH_OUT:-bench/out/gateway-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on port $1"
}

upstream_port="$(free_port)"
proxy_port="$(free_port)"
authreq_port="$(free_port)"
keyward_port="$(free_port)"

# nginx with its own prefix: `start_nginx NAME WORKERS SERVER_BLOCKS`.
start_nginx() {
    local name="$1" workers="$2" servers="$3" prefix="$work/$1"
    mkdir -p "$prefix"
    cat > "$prefix/nginx.conf" <<EOF
daemon off;
worker_processes $workers;
pid $prefix/nginx.pid;
error_log $prefix/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $prefix/body;
    proxy_temp_path $prefix/proxy;
    fastcgi_temp_path $prefix/fastcgi;
    uwsgi_temp_path $prefix/uwsgi;
    scgi_temp_path $prefix/scgi;
$servers
}
EOF
    "$nginx_bin" -p "$prefix" -e "$prefix/error.log" -c "$prefix/nginx.conf" &
    pids+=($!)
}

echo "== bare upstream on :$upstream_port" >&2
start_nginx upstream 1 "
    server {
        listen 127.0.0.1:$upstream_port;
        location / {
            default_type application/json;
            return 200 '{\"video_id\":\"v1\",\"status\":\"ready\"}';
        }
    }"
wait_port "$upstream_port"

echo "== keyward (gateway and /authorize) on :$keyward_port" >&2
cat > "$work/routes.toml" <<'EOF'
[[route]]
method = "GET"
path = "/v1/videos/{video_id}"
scopes = ["read"]
EOF
db="sqlite:$work/keyward.db"
"$keyward" migrate --database-url "$db" >/dev/null
key="$("$keyward" accounts create --database-url "$db" --name bench --plan enterprise --json \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')"
"$keyward" serve --listen "127.0.0.1:$keyward_port" --database-url "$db" --no-bootstrap \
    --routes "$work/routes.toml" --upstream "http://127.0.0.1:$upstream_port" 2>"$out/keyward.log" &
pids+=($!)
wait_port "$keyward_port"

echo "== nginx proxy on :$proxy_port, nginx auth_request on :$authreq_port" >&2
authreq="$(sed -e "s/127.0.0.1:8080/127.0.0.1:$keyward_port/" \
    -e "s/10.0.0.21:9000/127.0.0.1:$upstream_port/" \
    -e "s/listen 80;/listen 127.0.0.1:$authreq_port;/" deploy/nginx-auth-request.conf)"
start_nginx proxy 2 "
    upstream bare { server 127.0.0.1:$upstream_port; keepalive 64; }
    server {
        listen 127.0.0.1:$proxy_port;
        location / {
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_pass http://bare;
        }
    }
$authreq"
wait_port "$proxy_port"
wait_port "$authreq_port"

path="/v1/videos/v1"
check() {
    local status
    status="$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $key" "http://127.0.0.1:$1$path")"
    [ "$status" = 200 ] || die "$2 answered $status, not 200"
}
check "$upstream_port" upstream
check "$proxy_port" proxy
check "$keyward_port" gateway
check "$authreq_port" authreq

run() {
    local name="$1" port="$2"
    echo "== $name" >&2
    sleep 1
    wrk -t2 -c"$connections" -d"${duration}s" --latency -H "x-api-key: $key" \
        "http://127.0.0.1:$port$path" > "$out/$name.txt"
}
run upstream "$upstream_port"
run proxy "$proxy_port"
run gateway "$keyward_port"
run authreq "$authreq_port"

# wrk's numbers: requests/s, and a latency percentile in ms.
rps() { awk '/^Requests\/sec:/ { print $2 }' "$out/$1.txt"; }
pct() {
    awk -v p="$2" '$1 == p { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        if (u == "us") v /= 1000; else if (u == "s") v *= 1000; printf "%.2f", v }' "$out/$1.txt"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f %%", 100 * a / b }'; }
non2xx() { awk '/Non-2xx/ { print $NF }' "$out/$1.txt"; }

proxy_rps="$(rps proxy)"
{
    echo "| scenario | requests/s | of nginx proxy | p50 ms | p99 ms | non-2xx |"
    echo "|---|---|---|---|---|---|"
    for name in upstream proxy gateway authreq; do
        echo "| $name | $(rps "$name") | $(ratio "$(rps "$name")" "$proxy_rps") | $(pct "$name" 50%) | $(pct "$name" 99%) | $(non2xx "$name") |"
    done
    echo
    echo "wrk -t2 -c$connections -d${duration}s --latency, GET $path; targets: gateway ≥ 70 % of proxy and p99 ≤ 2 × proxy's ($(pct proxy 99%) ms); authreq ≥ 50 % of proxy."
} | tee "$out/results.md"
