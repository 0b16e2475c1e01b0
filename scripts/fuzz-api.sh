#!/usr/bin/env bash
# Fuzzes every served API against its own OpenAPI document: schemathesis (from PyPI, in a
# virtual environment under target/) generates requests for each operation of the gateway, the
# users and rides services and the orchestrator of a fresh `rideshare up` (release build, an
# admin token set), and fails on any 5xx or any answer the document does not allow (status,
# content type, headers, body schema). At least RIDESHARE_FUZZ_MIN_CASES cases (default 2000)
# must run across the four documents.
#
#   scripts/fuzz-api.sh                 build, start, fuzz, stop
#   RIDESHARE_FUZZ_EXAMPLES=300 scripts/fuzz-api.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
EXAMPLES=${RIDESHARE_FUZZ_EXAMPLES:-150}
MIN_CASES=${RIDESHARE_FUZZ_MIN_CASES:-2000}
VENV=target/fuzz-venv
TOKEN="fuzz-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"

die() { echo "fuzz-api: $*" >&2; exit 1; }

if [ ! -x "$VENV/bin/schemathesis" ] || ! "$VENV/bin/schemathesis" --version | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "fuzz-api: installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  command -v python3 >/dev/null 2>&1 || die "python3 not found"
  python3 -m venv "$VENV" || die "cannot create a virtual environment (python3-venv missing?)"
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" || die "pip install schemathesis failed"
fi

cargo build --release -p rideshare-svc --bin rideshare
binary=target/release/rideshare

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gw=$(free_port); us=$(free_port); rd=$(free_port); orch=$(free_port)
data=$(mktemp -d)
log=target/fuzz-up.log
RIDESHARE_ADMIN_TOKEN=$TOKEN "$binary" up --data-dir "$data" \
  --gateway 127.0.0.1:$gw --users 127.0.0.1:$us --rides 127.0.0.1:$rd --orchestrator 127.0.0.1:$orch \
  >"$log" 2>&1 &
up_pid=$!
cleanup() { kill "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$orch/health" >/dev/null 2>&1 && break
  kill -0 "$up_pid" 2>/dev/null || die "rideshare up exited (see $log)"
  sleep 0.1
done

total=0
for target in "gateway $gw" "users $us" "rides $rd" "orchestrator $orch"; do
  set -- $target
  echo "fuzz-api: $1 on 127.0.0.1:$2"
  out=$(mktemp)
  if ! "$VENV/bin/schemathesis" run "http://127.0.0.1:$2/api/v1/openapi.json" \
      -H "Authorization: Bearer $TOKEN" \
      --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
      --max-examples "$EXAMPLES" --workers 1 --suppress-health-check all \
      --request-timeout 10 --no-color >"$out" 2>&1; then
    cat "$out"
    die "$1: schemathesis found a failure (above)"
  fi
  cases=$(sed -n 's/^ *\([0-9][0-9]*\) generated.*/\1/p' "$out" | tail -n 1)
  [ -n "$cases" ] || { cat "$out"; die "$1: cannot read the number of generated cases"; }
  echo "fuzz-api: $1: $cases cases, no failure"
  total=$((total + cases))
  rm -f "$out"
done
[ "$total" -ge "$MIN_CASES" ] || die "only $total cases ran (at least $MIN_CASES wanted)"
echo "fuzz-api: $total cases across 4 documents, no 5xx, every answer as documented"
