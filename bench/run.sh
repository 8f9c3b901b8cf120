#!/usr/bin/env bash
# keyward's load benchmark in one command. On a release build it seeds a database
# (ACCOUNTS enterprise accounts with 10 keys each, request history to match), starts
# keyward on it (metering on), and drives it with wrk over five scenarios. Each scenario
# also runs, in the same run and with the same wrk settings, against bare-server: a bare
# axum server answering the same paths with the same bytes (captured from keyward), the
# ceiling; so the ratio survives a noisy machine. Loopback only; every step is bounded.
#
# Usage: bench/run.sh [DURATION_SECONDS=10] [CONNECTIONS=64] [sqlite|postgres] [unlimited|limited|policies] [ACCOUNTS=100000]
#
# Dataset: ACCOUNTS x 10 keys (default 1,000,000), created through the store by seed-keys;
#   then ACCOUNTS x 10 request-history rows (KEYWARD_BENCH_HISTORY_ROWS overrides) written
#   through the store's metering batch writer by seed-history, spread over the sampled
#   accounts, the ones that get traffic.
# Callers: the first keys of KEYWARD_BENCH_SAMPLE (default 1,000) accounts spread over the
#   dataset, each with 10 keys; wrk cycles through them. Creates use as many other accounts
#   (or, with fewer than twice that many accounts, half of them each), so the listed
#   accounts keep exactly 10 keys and answer the bytes the bare server answers.
# Rounds: KEYWARD_BENCH_ROUNDS (default 1) pairs of runs per scenario, interleaved: odd
#   rounds run bare-server then keyward, even rounds keyward then bare-server, so a host
#   that speeds up or slows down over a scenario favours neither. Every run starts after
#   a pause of KEYWARD_BENCH_PAUSE seconds (default 1), so that keyward's last metering
#   flush (every 250 ms) and its database's work land before the next run, not in it.
#   The ratio is the rounds' keyward requests over their bare-server requests (the runs
#   are equally long); the latencies are each percentile's median over the rounds; every
#   round's ratio is listed beside them, to show the spread. One 10-second pair's ratio
#   moves by 10-20 points with the host (two-second pairs by 50), so a single pair
#   decides nothing.
# Scenarios, each `wrk -t2 -cCONNECTIONS -dDURATION_SECONDS s` against both servers (order above):
#   list      GET /v1/api-keys (an account with 10 keys)
#   validate  POST /v1/api-keys/validate
#   get       GET /v1/api-keys/{key_id}, the caller's own key
#   create    POST /v1/api-keys with a JSON body; every 201 is a durable commit
#   mix       per request, by fixed weights: 70 % validate, 15 % list, 10 % get, 5 % create
#             (the order is in bench/wrk/keyward.lua)
#   KEYWARD_BENCH_SCENARIOS (default "list validate get create mix") runs a subset.
# postgres: a fresh schema in KEYWARD_BENCH_PG_URL (default
#   postgres://postgres@127.0.0.1:5432/test), dropped on exit.
# limited: every account gets limits too high to reach (10^9 per minute and per day), so
#   every request also goes through the rate limiter and carries x-ratelimit-* headers.
# policies: limited, and every key also has key policies none of which refuses: its own
#   rate limit (10^9 per minute and per day), credits (10^9, refilled daily) and an
#   allowlist of four ranges that holds loopback; so every request also finds the client
#   address, matches it, and is counted and charged in the key's windows and balance.
#   Compare its validate row with the unlimited run's (the aim: at least 70 % of the
#   bare server).
# KEYWARD_BENCH_WEBHOOKS=1: every sampled account (callers and creators) also has one
#   webhook subscription to every key event, whose receiver is a local nginx answering 200
#   (keyward runs with --webhooks-allow-private), so every create also writes its event to
#   the outbox and the dispatcher delivers it during the runs. Compare the create and mix
#   rows with a run without it; the footer counts the deliveries the receiver got.
# KEYWARD_BENCH_BIN runs another keyward binary than target/release/keyward (which is then
#   not built); KEYWARD_BENCH_TOOLS names the directory of bare-server, seed-keys and
#   seed-history (default target/release, built unless set).
# Output: a Markdown table on stdout and in bench/out/<timestamp>/results.md (the directory
#   is KEYWARD_BENCH_OUT if set), beside the raw wrk output and the captured bodies;
#   progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: bench/run.sh [DURATION_SECONDS=10] [CONNECTIONS=64] [sqlite|postgres] [unlimited|limited|policies] [ACCOUNTS=100000]"
duration="${1:-10}"
connections="${2:-64}"
backend="${3:-sqlite}"
limits="${4:-unlimited}"
accounts="${5:-100000}"
sample="${KEYWARD_BENCH_SAMPLE:-1000}"
rounds="${KEYWARD_BENCH_ROUNDS:-1}"
pause="${KEYWARD_BENCH_PAUSE:-1}"
history_rows="${KEYWARD_BENCH_HISTORY_ROWS:-$((accounts * 10))}"
die() { echo "$*" >&2; exit 2; }
[ $# -le 5 ] || die "$usage"
for n in "$duration" "$connections" "$accounts" "$sample" "$history_rows" "$rounds" "$pause"; do
    [[ "$n" =~ ^[0-9]+$ ]] || die "$usage (not a whole number: $n)"
done
[ "$duration" -ge 1 ] || die "DURATION_SECONDS must be at least 1"
# wrk needs at least one connection per thread.
[ "$connections" -ge 2 ] || die "CONNECTIONS must be at least 2"
[ "$accounts" -ge 2 ] || die "ACCOUNTS must be at least 2 (listed accounts and accounts that get the creates)"
[ "$sample" -ge 1 ] || die "KEYWARD_BENCH_SAMPLE must be at least 1"
[ "$rounds" -ge 1 ] || die "KEYWARD_BENCH_ROUNDS must be at least 1"
case "$backend" in sqlite | postgres) ;; *) die "$usage" ;; esac
case "$limits" in unlimited | limited | policies) ;; *) die "$usage" ;; esac
read -r -a scenarios <<< "${KEYWARD_BENCH_SCENARIOS:-list validate get create mix}"
[ "${#scenarios[@]}" -ge 1 ] || die "KEYWARD_BENCH_SCENARIOS names no scenario"
for s in "${scenarios[@]}"; do
    case "$s" in list | validate | get | create | mix) ;; *) die "unknown scenario: $s" ;; esac
done
callers=$((accounts / 2 < sample ? accounts / 2 : sample))
keys_stored=$((accounts * 10))

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
webhooks="${KEYWARD_BENCH_WEBHOOKS:-0}"
case "$webhooks" in 0 | 1) ;; *) die "KEYWARD_BENCH_WEBHOOKS must be 0 or 1" ;; esac
if [ "$webhooks" = 1 ]; then
    nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
    [ -x "$nginx_bin" ] || { apt-get update -qq && apt-get install -y -qq nginx-core; nginx_bin=/usr/sbin/nginx; }
fi
keyward_bin="${KEYWARD_BENCH_BIN:-target/release/keyward}"
tools="${KEYWARD_BENCH_TOOLS:-target/release}"
build=()
[ -n "${KEYWARD_BENCH_BIN:-}" ] || build+=(--bin keyward)
[ -n "${KEYWARD_BENCH_TOOLS:-}" ] || build+=(--bin bare-server --bin seed-keys --bin seed-history)
[ "${#build[@]}" -eq 0 ] || cargo build --release --locked "${build[@]}"

out="${KEYWARD_BENCH_OUT:-bench/out/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
work="$(mktemp -d)"
pids=()
pg_url="${KEYWARD_BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
schema="kw_bench_$$"
schema_made=""
export PGCONNECT_TIMEOUT=10
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$schema_made" ]; then
        psql -q "$pg_url" -c "drop schema if exists $schema cascade" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # LOGFILE PATTERN -> prints the base URL
    for _ in $(seq 1 300); do
        if grep -q "$2" "$1"; then grep -o "$2 http://[0-9.:]*" "$1" | awk '{print $NF}'; return; fi
        sleep 0.1
    done
    echo "server did not start within 30 s: $(cat "$1")" >&2
    exit 1
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

if [ "$backend" = postgres ]; then
    psql -q -v ON_ERROR_STOP=1 "$pg_url" -c "create schema $schema"
    schema_made=1
    case "$pg_url" in *\?*) sep='&' ;; *) sep='?' ;; esac
    db="$pg_url${sep}options=-c%20search_path%3D$schema"
else
    db="sqlite:$work/keyward.db"
fi

echo "seeding $accounts accounts x 10 keys and $history_rows history rows ($backend)" >&2
limit_args=()
if [ "$limits" = limited ]; then limit_args=(--limits 1000000000); fi
if [ "$limits" = policies ]; then limit_args=(--limits 1000000000 --policies); fi
seed_started="$(now_ms)"
"$tools/seed-keys" "$db" "$accounts" 10 "$work/sample.txt" $((2 * callers)) "${limit_args[@]}"
"$tools/seed-history" "$db" "$work/sample.txt" "$history_rows"
seed_ms=$(($(now_ms) - seed_started))
# Alternate lines, so both sets are spread over the whole dataset.
awk 'NR % 2 == 1' "$work/sample.txt" > "$work/callers.txt"
awk 'NR % 2 == 0' "$work/sample.txt" > "$work/creators.txt"

webhook_args=()
if [ "$webhooks" = 1 ]; then
    webhook_args=(--webhooks-allow-private)
    receiver_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    receiver="$work/receiver"
    mkdir -p "$receiver"
    cat > "$receiver/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $receiver/nginx.pid;
error_log $receiver/error.log warn;
events { worker_connections 1024; }
http {
    access_log $receiver/access.log;
    client_body_temp_path $receiver/body;
    proxy_temp_path $receiver/proxy;
    fastcgi_temp_path $receiver/fastcgi;
    uwsgi_temp_path $receiver/uwsgi;
    scgi_temp_path $receiver/scgi;
    server {
        listen 127.0.0.1:$receiver_port;
        location / { return 200; }
    }
}
EOF
    "$nginx_bin" -p "$receiver" -e "$receiver/error.log" -c "$receiver/nginx.conf" &
    pids+=("$!")
fi
"$keyward_bin" serve --listen 127.0.0.1:0 --database-url "$db" --no-bootstrap "${webhook_args[@]}" 2> "$work/keyward.log" > /dev/null &
keyward_pid=$!
pids+=("$keyward_pid")
keyward="$(wait_for "$work/keyward.log" "keyward listening on")"

if [ "$webhooks" = 1 ]; then
    # One subscription per sampled account, made with its first key (scope admin).
    subscription="{\"url\":\"http://127.0.0.1:$receiver_port/hook\",\"events\":[\"key.created\",\"key.updated\",\"key.rotated\",\"key.revoked\",\"key.expiring\",\"key.expired\",\"credits.exhausted\"]}"
    while read -r secret _; do
        curl -sf --max-time 10 -o /dev/null -X POST "$keyward/v1/webhooks" -H "x-api-key: $secret" \
            -H 'content-type: application/json' -d "$subscription" ||
            { echo "subscribing a sampled account failed" >&2; exit 1; }
    done < "$work/sample.txt"
fi

# The bare server's bodies are keyward's own answers to the first caller, taken once its
# key's last_used has been flushed (at most a second), as it is during the runs.
read -r key key_id _ < "$work/callers.txt"
read -r creator _ < "$work/creators.txt"
create_body='{"name":"bench","scopes":["read"],"metadata":{"env":"bench"}}'
fetch() { curl -sf --max-time 10 "$@"; }
fetch -X POST "$keyward/v1/api-keys/validate" -H "x-api-key: $key" -D "$out/validate.headers" > "$out/validate.json"
if [ "$limits" = policies ] && ! grep -q '"credits_remaining"' "$out/validate.json"; then
    echo "policies, but validate shows no credits_remaining: the key policies did not apply" >&2
    exit 1
fi
if [ "$limits" != unlimited ] && ! grep -qi '^x-ratelimit-limit' "$out/validate.headers"; then
    echo "limited, but keyward sent no x-ratelimit-* headers: the limits did not apply" >&2
    exit 1
fi
sleep 1.5
fetch "$keyward/v1/api-keys" -H "x-api-key: $key" > "$out/list.json"
fetch "$keyward/v1/api-keys/$key_id" -H "x-api-key: $key" > "$out/get.json"
fetch -X POST "$keyward/v1/api-keys" -H "x-api-key: $creator" -H 'content-type: application/json' \
    -d "$create_body" > "$out/create.json"
listed="$(grep -o '"key_id"' "$out/list.json" | wc -l)"
[ "$listed" -eq 10 ] || { echo "expected 10 keys in the list body, got $listed" >&2; exit 1; }

"$tools/bare-server" 127.0.0.1:0 "$out/list.json" "$out/validate.json" "$out/create.json" "$out/get.json" \
    2> "$work/bare.log" &
pids+=("$!")
bare="$(wait_for "$work/bare.log" "bare-server listening on")"

run() { # TARGET SCENARIO BASE_URL ROUND -> one line: TARGET-SCENARIO-rROUND rps=... (wrk's RESULT line)
    local name="$1-$2-r$4"
    echo "wrk: $name" >&2
    if ! WRK_SCENARIO="$2" WRK_KEYS_FILE="$work/callers.txt" WRK_CREATE_KEYS_FILE="$work/creators.txt" \
        WRK_BODY="$create_body" timeout $((duration + 60)) \
        wrk -t2 -c"$connections" -d"${duration}s" -s bench/wrk/keyward.lua "$3/" > "$out/$name.txt" 2>&1 ||
        ! grep -q '^RESULT' "$out/$name.txt"; then
        echo "wrk failed ($name): $(cat "$out/$name.txt")" >&2
        exit 1
    fi
    grep '^RESULT' "$out/$name.txt" | sed "s/^RESULT/$name/"
}

# PART WHOLE [FORMAT=%.0f] -> 100 * PART / WHOLE, or 0 if WHOLE is 0
percent() { awk -v a="$1" -v b="$2" -v f="${3:-%.0f}" 'BEGIN { if (b > 0) printf f, 100 * a / b; else print 0 }'; }
declare -A url_of=([bare]="$bare" [keyward]="$keyward")
# The host's steal time over the runs, from /proc/stat's cpu line: (steal, total) ticks.
cpu_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print $9, t }' /proc/stat; }
read -r steal_before ticks_before <<< "$(cpu_ticks)"
for s in "${scenarios[@]}"; do
    for r in $(seq 1 "$rounds"); do
        if [ $((r % 2)) -eq 1 ]; then order=(bare keyward); else order=(keyward bare); fi
        for target in "${order[@]}"; do
            sleep "$pause"
            run "$target" "$s" "${url_of[$target]}" "$r"
        done
    done
done > "$out/results.txt"
read -r steal_after ticks_after <<< "$(cpu_ticks)"
steal="$(percent $((steal_after - steal_before)) $((ticks_after - ticks_before)) %.1f)"

sleep 1.5 # let the last metering batch land
fetch "$keyward/metrics" > "$out/metrics.txt"
rss_kib="$(awk '/VmHWM/ {print $2}' "/proc/$keyward_pid/status")"
dropped="$(awk '/^keyward_meter_dropped_rows_total/ {print $2}' "$out/metrics.txt")"
flushed="$(awk '/^keyward_meter_flushed_rows_total/ {print $2}' "$out/metrics.txt")"

field() { sed -E "s/.*$2=([0-9.]+).*/\1/" <<< "$(grep "^$1 " "$out/results.txt")"; }
ratio_of() { percent "$(field "keyward-$1-r$2" rps)" "$(field "bare-$1-r$2" rps)"; }
# TARGET SCENARIO FIELD -> the field summed over the rounds
sum_of() { for r in $(seq 1 "$rounds"); do field "$1-$2-r$r" "$3"; done | awk '{ t += $1 } END { printf "%.0f", t }'; }
# TARGET SCENARIO FIELD -> the field's median over the rounds (the lower middle for an even count)
median_of() {
    for r in $(seq 1 "$rounds"); do field "$1-$2-r$r" "$3"; done | sort -g |
        sed -n "$(((rounds + 1) / 2))p"
}
{
    echo "| scenario | bare rps | keyward rps | ratio | bare p99 ms | keyward p50 / p99 / p99.9 ms | keyward errors | every round's ratio |"
    echo "|---|---|---|---|---|---|---|---|"
    for s in "${scenarios[@]}"; do
        bare_sum="$(sum_of bare "$s" rps)"
        keyward_sum="$(sum_of keyward "$s" rps)"
        ratio="$(percent "$keyward_sum" "$bare_sum")"
        every="$(for r in $(seq 1 "$rounds"); do echo -n "$(ratio_of "$s" "$r") "; done | sed 's/ $//; s/ /, /g') %"
        bare_errors="$(sum_of bare "$s" errors)"
        [ "$bare_errors" = 0 ] || echo "bare-server had $bare_errors errors in $s" >&2
        echo "| $s | $((bare_sum / rounds)) | $((keyward_sum / rounds)) | $ratio % | $(median_of bare "$s" p99_ms) | $(median_of keyward "$s" p50_ms) / $(median_of keyward "$s" p99_ms) / $(median_of keyward "$s" p999_ms) | $(sum_of keyward "$s" errors) | $every |"
    done
    echo
    with_webhooks=""
    [ "$webhooks" = 0 ] || with_webhooks=", a webhook subscription on each of the $((2 * callers)) sampled accounts ($(wc -l < "$receiver/access.log") deliveries received)"
    echo "$backend, $limits$with_webhooks; keys stored: $keys_stored ($accounts accounts x 10); history rows seeded: $history_rows; seeding: $(awk -v ms="$seed_ms" 'BEGIN { printf "%.1f", ms / 1000 }') s; keyward peak RSS: $((rss_kib / 1024)) MiB; history rows flushed: ${flushed:-0}, dropped: ${dropped:-0}; wrk -t2 -c$connections -d${duration}s over $callers callers ($callers other accounts for creates); $rounds round(s) per scenario, rps the mean of the rounds, latencies the median; host steal during the runs: $steal %"
} | tee "$out/results.md"
