#!/usr/bin/env bash
# The one test gate, run the same way locally and in CI:
#   formatting, clippy with -D warnings, every test, and the benches compiled.
# It installs and starts whatever the tests need and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (workspace)"
cargo test --workspace

step "cargo bench --no-run"
cargo bench --workspace --no-run

echo
echo "all checks passed"
