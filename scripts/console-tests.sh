#!/usr/bin/env bash
# The console's browser tests: builds keyward, starts it on a throwaway SQLite database
# with one account (its admin key from `keyward accounts create --json`), runs
# console-tests/ (playwright-core driving Debian's headless Chromium, axe-core) against
# it, and stops it.
#
# Usage: scripts/console-tests.sh [--screenshots]
#   --screenshots  also writes a PNG of each page to docs/console/
#
# Needs Node.js, npm and /usr/bin/chromium (`apt-get install chromium`; .ci/run installs
# it where missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--screenshots" ]; then
    export CONSOLE_SCREENSHOTS="$PWD/docs/console"
fi

cargo build -p keyward --locked
bin="$PWD/target/debug/keyward"
(cd console-tests && { [ -d node_modules ] || npm ci --no-audit --no-fund; })

dir=$(mktemp -d)
server=""
cleanup() {
    if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT

db="$dir/keyward.db"
account=$("$bin" accounts create --name console-tests --plan enterprise --json --database-url "$db")
KEYWARD_KEY=$(node -e 'console.log(JSON.parse(process.argv[1]).api_key)' "$account")
export KEYWARD_KEY

"$bin" serve --listen 127.0.0.1:0 --database-url "$db" --no-bootstrap 2>"$dir/serve.log" &
server=$!
for _ in $(seq 1 300); do
    address=$(sed -n 's/^keyward listening on \(http:[^ ]*\)$/\1/p' "$dir/serve.log")
    [ -n "$address" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$dir/serve.log"; exit 1; }
    sleep 0.1
done
[ -n "$address" ] || { echo "keyward did not start"; cat "$dir/serve.log"; exit 1; }
export KEYWARD_URL="$address"

(cd console-tests && npm test)
