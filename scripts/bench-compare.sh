#!/usr/bin/env bash
# Issue 10's table, measured with `rideshare bench` for one or more builds of `rideshare`,
# alternating the builds round by round so that they share the machine's state:
#
#   scripts/bench-compare.sh BIN [BIN...]        e.g. /tmp/rideshare-before target/release/rideshare
#
# For every round, each system in turn, and every BIN on it:
#   - first `GET /health` at 16 clients (no database: how fast the machine's HTTP path is at that
#     moment, a reference to read the other rows against);
#   - `rideshare up` embedded, on a fresh data directory: list (10 listed) and create ride at
#     1, 16 and 64 clients, then a list of 10,000 rides at 16 clients;
#   - `rideshare up --amqp-url … --zk … --runtime process` on a fresh RabbitMQ vhost and
#     ZooKeeper chroot (the engines of scripts/engines.sh must be running): one ride's details
#     at 1 client, list and create ride at 1, 16 and 64 clients.
# Every row's JSON goes to $OUT/<round>-<n>-<row>.json and one summary line per row to
# $OUT/summary.txt (req/s, non-2xx, p50/p99 ms of the row's "all" line).
#
# Environment: ROUNDS (2), DURATION (8s), WARMUP (1s), OUT (/tmp/bench-compare),
# BENCH (the load generator: the last BIN), SKIP (a regex of row names to leave out, e.g.
# 'real' or 'list10000'), PORT_BASE (18080).
set -euo pipefail

[ $# -ge 1 ] || { sed -n 2,20p "$0" >&2; exit 2; }
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-1s}
OUT=${OUT:-/tmp/bench-compare}
BENCH=${BENCH:-${!#}}
SKIP=${SKIP:-^$}
PORT=${PORT_BASE:-18080}
mkdir -p "$OUT"
for bin in "$@"; do [ -x "$bin" ] || { echo "bench-compare: $bin is not executable" >&2; exit 2; }; done

PID=
stop_up() {
  if [ -n "$PID" ]; then
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=
  fi
}
trap stop_up EXIT

wait_ready() {
  for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "bench-compare: the gateway did not answer within 30 s" >&2
  return 1
}

# row NAME TAG ARGS...: one bench run, its JSON kept, its "all" lines summarised.
row() {
  local name=$1 tag=$2; shift 2
  if [[ $name =~ $SKIP ]]; then return 0; fi
  local json="$OUT/$tag-$name.json"
  "$BENCH" bench --gateway "http://127.0.0.1:$PORT" --duration "$DURATION" --warmup "$WARMUP" \
    --json "$json" --watch-pid "$PID" "$@" >"$OUT/$tag-$name.txt" 2>&1 \
    || { echo "bench-compare: row $name failed, see $OUT/$tag-$name.txt" >&2; return 1; }
  python3 - "$json" "$tag" "$name" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys
report = json.load(open(sys.argv[1]))
for level in report["levels"]:
    op = level["total"]
    print(f'{sys.argv[2]:<28} {sys.argv[3]:<12} c={level["concurrency"]:<3} '
          f'{op["req_per_s"]:>9.1f} req/s  non-2xx {op["non_2xx"]:<5} '
          f'p50 {op["latency_ms"]["p50"]:.2f}  p99 {op["latency_ms"]["p99"]:.2f} ms')
EOF
}

up_args=(--gateway "127.0.0.1:$PORT" --users "127.0.0.1:$((PORT + 1))"
  --rides "127.0.0.1:$((PORT + 2))" --orchestrator "127.0.0.1:$((PORT + 3))")

run_embedded() {
  local bin=$1 tag=$2 dir=$3
  "$bin" up --data-dir "$dir/up" "${up_args[@]}" >"$dir/up.log" 2>&1 &
  PID=$!
  wait_ready
  row up-health "$tag" --concurrency 16 --mix health
  row up-list "$tag" --concurrency 1,16,64 --mix list
  row up-create "$tag" --concurrency 1,16,64 --mix create-ride
  row up-list10000 "$tag" --concurrency 16 --mix list --list-size 10000
  stop_up
}

run_real() {
  local bin=$1 tag=$2 dir=$3 vhost
  vhost="bench-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  rabbitmqctl -q add_vhost "$vhost"
  rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*'
  "$bin" up --data-dir "$dir/real" "${up_args[@]}" \
    --amqp-url "amqp://guest:guest@127.0.0.1:5672/$vhost" --zk "127.0.0.1:2181/$vhost" \
    --runtime process --worker-data-dir "$dir/workers" --cluster "$vhost" \
    >"$dir/real.log" 2>&1 &
  PID=$!
  wait_ready
  row real-health "$tag" --concurrency 16 --mix health
  row real-details "$tag" --concurrency 1 --mix details
  row real-list "$tag" --concurrency 1,16,64 --mix list
  row real-create "$tag" --concurrency 1,16,64 --mix create-ride
  stop_up
  rabbitmqctl -q delete_vhost "$vhost" || true
}

# Within a round the builds take turns on each system, in the given order in odd rounds and
# the reverse in even ones, so that a drift of the machine's speed does not favour one build.
for round in $(seq 1 "$ROUNDS"); do
  bins=("$@")
  if [ $((round % 2)) -eq 0 ]; then
    bins=(); for ((i = $#; i >= 1; i--)); do bins+=("${!i}"); done
  fi
  for system in embedded real; do
    [[ $system =~ $SKIP ]] && continue
    for bin in "${bins[@]}"; do
      tag="r$round-$(basename "$(dirname "$bin")")-$(basename "$bin")"
      dir=$(mktemp -d /tmp/bench-compare-data.XXXXXX)
      "run_$system" "$bin" "$tag" "$dir"
      rm -rf "$dir"
    done
  done
done
echo "bench-compare: summary in $OUT/summary.txt"
