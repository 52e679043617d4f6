#!/usr/bin/env bash
# The promises under load: runs the future, thread, process, calls-ahead, failure, trace,
# dashboard, conformance, async and cluster tests over and over, several at once,
# beside CPU hogs, until a time budget is spent.
#   bash scripts/stress.sh [SECONDS] [RUNS_AT_ONCE] [HOGS]
# Defaults: 150 s, 3 runs at once, 2 hogs. A test that hangs is killed by
# nextest's `stress` profile and fails with its name (never a stuck run).
# Prints the rounds, runs and failures, and the names of the tests that
# failed; exits 1 if any did.
set -euo pipefail
cd "$(dirname "$0")/.."

BUDGET=${1:-150}
AT_ONCE=${2:-3}
HOGS=${3:-2}

# shellcheck source=scripts/redis.sh
source scripts/redis.sh

FILTER='test(/^(future|wait|thread|process|ahead|failure|conformance|async_use|cluster|trace|dashboard|examples)::/)'
NEXTEST=(cargo nextest run --profile stress -p multitasking --features dashboard --lib --test integration
  -E "$FILTER")

say "building the tests once"
cargo build -p multitasking --examples
"${NEXTEST[@]}" --no-run
NEXTEST+=(--no-fail-fast)

LOGS=$(mktemp -d)
HOG_PIDS=()
stop_hogs() {
  local p
  for p in "${HOG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  HOG_PIDS=()
}
trap 'stop_hogs; cleanup; rm -rf "$LOGS"' EXIT
for _ in $(seq 1 "$HOGS"); do
  (while :; do :; done) &
  HOG_PIDS+=($!)
done

say "stress: $AT_ONCE runs at once beside $HOGS CPU hogs for ${BUDGET}s"
start=$(date +%s)
rounds=0 runs=0 failed=0
while [ $(( $(date +%s) - start )) -lt "$BUDGET" ]; do
  rounds=$((rounds + 1))
  pids=()
  for i in $(seq 1 "$AT_ONCE"); do
    "${NEXTEST[@]}" >"$LOGS/run-$rounds-$i.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    runs=$((runs + 1))
    if ! wait "${pids[$i]}"; then
      failed=$((failed + 1))
      log="$LOGS/run-$rounds-$((i + 1)).log"
      echo "run $runs failed:" >&2
      grep -E '^\s*(FAIL|TIMEOUT|SIGSEGV|SIGABRT|LEAK)' "$log" | sort -u >&2 || tail -20 "$log" >&2
      # What each failing test said, and the whole log to read later.
      grep -E -A2 "panicked at" "$log" | head -30 >&2 || true
      mkdir -p target/stress-logs
      cp "$log" "target/stress-logs/run-$runs.log"
    fi
  done
done
stop_hogs

say "stress: $rounds rounds, $runs runs, $failed failed ($AT_ONCE at once, $HOGS hogs, $(( $(date +%s) - start ))s)"
[ "$failed" -eq 0 ]
