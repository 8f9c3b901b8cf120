#!/usr/bin/env bash
# Fuzzes the live release server with Schemathesis, driven by the /openapi.json it serves.
# Checks: every check schemathesis has except positive_data_acceptance (see below).
#
# Usage: scripts/schemathesis.sh [MAX_EXAMPLES]
#
# Why positive_data_acceptance is off: some rules of API.md are not expressible in JSON
# Schema (expires_at in the future, expires_at and expires_in not both, metadata at
# most 4 KiB serialised, since <= until), so a schema-valid body can still rightly get
# 400. Every other check runs: no 5xx, status codes (`status_code_conformance`: each
# answer's status is one its operation documents, as `FAILURES` in
# crates/keyward-http/src/openapi.rs decides), content types, headers and bodies conform
# to the document, negative data is rejected, and so on.
#
# Why three passes on fresh servers: the fuzzer authenticates with one key, and PATCH
# (a near expires_at) or rotate (grace 0) on that very key legitimately ends it; running
# those two operations in passes of their own keeps the others from seeing only 401s.
# The operator API (tag `operator`) has a pass of its own with an operator key, made
# with `keyward operators create` on the migrated database before the server starts.
set -euo pipefail
cd "$(dirname "$0")/.."

max_examples="${1:-50}"
venv="${KEYWARD_SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/keyward/schemathesis-4.32.5}"
if [ ! -x "$venv/bin/schemathesis" ]; then
    echo "== installing schemathesis 4.32.5 into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==4.32.5"
fi

echo "== building the release server"
cargo build --release --locked --bin keyward

work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

start_server() {
    if [ "${1:-}" != "--keep-database" ]; then rm -f "$work"/keyward.db*; fi
    : > "$work/server.log"
    target/release/keyward serve --listen 127.0.0.1:0 --database-url "sqlite:$work/keyward.db" \
        2> "$work/server.log" > /dev/null &
    server_pid=$!
    for _ in $(seq 1 100); do
        if grep -q "keyward listening on" "$work/server.log"; then break; fi
        sleep 0.1
    done
    base="$(grep -o 'keyward listening on http://[0-9.:]*' "$work/server.log" | awk '{print $NF}')"
    key="$(grep -oE 'kw_[A-Za-z0-9]{38}' "$work/server.log" | head -n 1)"
    if [ -z "$base" ] || [ -z "$key" ]; then
        echo "the server did not start:"; cat "$work/server.log"; exit 1
    fi
}

stop_server() {
    kill -TERM "$server_pid"
    wait "$server_pid"
    server_pid=""
    if grep -q "panicked" "$work/server.log"; then
        echo "the server panicked:"; cat "$work/server.log"; exit 1
    fi
}

status=0
for pass in "all but update and rotate" "update" "rotate" "operator"; do
    case "$pass" in
        "update") filter=(--include-operation-id update_api_key) ;;
        "rotate") filter=(--include-operation-id rotate_api_key) ;;
        "operator") filter=(--include-tag operator) ;;
        # `/authorize` answers 404 before any key check without `--routes`, which this
        # server has none of; tests/gateway.rs covers it. GitHub secret scanning's
        # endpoint is a 404 without `--github-scanning-keys`, and takes only requests
        # signed by GitHub's keys; tests/leaked.rs covers it.
        *) filter=(--exclude-operation-id update_api_key --exclude-operation-id rotate_api_key
                   --exclude-tag operator --exclude-operation-id authorize
                   --exclude-tag secret-scanning) ;;
    esac
    if [ "$pass" = "operator" ]; then
        rm -f "$work"/keyward.db*
        target/release/keyward migrate --database-url "sqlite:$work/keyward.db" > /dev/null
        operator_key="$(target/release/keyward operators create --name schemathesis --json \
            --database-url "sqlite:$work/keyward.db" | grep -oE 'kwop_[A-Za-z0-9]{38}')"
        start_server --keep-database
        key="$operator_key"
    else
        start_server
    fi
    echo "== schemathesis pass: $pass ($base)"
    # One worker: with two, Hypothesis once failed inside itself ("AST constructor
    # recursion depth mismatch" while describing a strategy), which is not the server's.
    "$venv/bin/schemathesis" run "$base/openapi.json" \
        --header "x-api-key: $key" \
        --checks all --exclude-checks positive_data_acceptance \
        --max-examples "$max_examples" --workers 1 --no-color \
        "${filter[@]}" || status=1
    stop_server
done
exit "$status"
