#!/usr/bin/env bash
# A sign-up burst against one `rideshare up`: PUT /api/v1/users from 64 clients for 30 s through
# `rideshare bench`, with the server's resident memory watched and every 201 checked in the
# listing afterwards. Measures the bounded hashing pool (docs/benchmarks.md, "Sign-up burst").
#
#   scripts/bench-signups.sh [SERVER_BINARY] [JSON_OUT]
#
# SERVER_BINARY defaults to target/release/rideshare (pass an older build to compare); the load
# generator is always this tree's release build. A watchdog kills the server past 16 GB of RSS,
# so a build without the bound cannot take the machine down.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p rideshare-svc --bin rideshare
server=${1:-target/release/rideshare}
json=${2:-target/bench-signups.json}
data=$(mktemp -d)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gw=$(port)
"$server" up --data-dir "$data" --gateway "127.0.0.1:$gw" --users "127.0.0.1:$(port)" \
  --rides "127.0.0.1:$(port)" --orchestrator "127.0.0.1:$(port)" >target/bench-signups-up.log 2>&1 &
pid=$!
watchdog() {
  while kill -0 "$pid" 2>/dev/null; do
    rss=$(awk '/VmRSS/{print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    if [ "${rss:-0}" -gt 16000000 ]; then
      echo "bench-signups: watchdog: server at ${rss} kB, killed" >&2
      kill -9 "$pid"
    fi
    sleep 0.2
  done
}
watchdog &
dog=$!
cleanup() { kill "$pid" "$dog" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$gw/api/v1/users" -o /dev/null -w '' 2>/dev/null && break; sleep 0.1; done
echo "bench-signups: server RSS before the load: $(awk '/VmRSS/{print $2}' "/proc/$pid/status") kB"
target/release/rideshare bench --gateway "http://127.0.0.1:$gw" --mix add-user --concurrency 64 \
  --duration 30s --verify-users --watch-pid "$pid" --json "$json"
