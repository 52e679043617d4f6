#!/usr/bin/env bash
# Runs every test of the workspace on a fresh Debian machine:
#   bash scripts/test.sh [extra nextest args]
#
# It installs what the tests need (redis-server, GNU parallel, chromium and
# chromedriver, via apt-get, when missing),
# starts a throwaway redis-server on a free loopback port for the cluster
# tests, runs the whole suite with cargo-nextest (cargo test when nextest is
# missing), the doctests, and the loom model checks of the future's state
# machine. Tests that need Redis fail, not skip, when CI=true and Redis
# can't be had, and so do the GNU parallel compatibility tests of
# `multitask run`. Set MULTITASK_SKIP_LOOM=1 to skip the model checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/redis.sh
source scripts/redis.sh
# shellcheck source=scripts/browser.sh
source scripts/browser.sh

# GNU parallel, for multitask-cli/tests/parallel_compat: the same command
# lines through both.
ensure_parallel() {
  if command -v parallel >/dev/null 2>&1; then
    return 0
  fi
  say "installing GNU parallel"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q parallel >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q parallel >/dev/null 2>&1; } \
    || return 1
  command -v parallel >/dev/null 2>&1
}

if ! ensure_parallel; then
  if [ "${CI:-}" = "true" ]; then
    echo "error: GNU parallel could not be installed; the compatibility tests need it" >&2
    exit 1
  fi
  echo "warning: no GNU parallel; the compatibility tests will skip (they fail under CI=true)" >&2
fi

# The integration suite runs the example programs: build them first.
say "cargo build --workspace --examples"
cargo build --workspace --examples

# Every test target; not the benches, which are harness-less programs that
# measure (cargo bench).
TARGETS=(--workspace --lib --bins --tests)
if cargo nextest --version >/dev/null 2>&1; then
  say "cargo nextest run ${TARGETS[*]}"
  cargo nextest run "${TARGETS[@]}" --no-fail-fast "$@"
else
  say "cargo test ${TARGETS[*]} (cargo-nextest not found)"
  cargo test "${TARGETS[@]}" --no-fail-fast "$@"
fi

say "doctests (the README's Rust blocks among them)"
cargo test --workspace --doc

say "the README's examples as a user's crate outside the workspace"
bash scripts/user-crate.sh

if [ "${MULTITASK_SKIP_LOOM:-}" != "1" ]; then
  say "loom model checks of the future state machine"
  RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p multitasking --lib --release model
fi

say "all tests passed"
