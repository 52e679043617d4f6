#!/usr/bin/env bash
# Regenerates every figure of BENCHMARKS.md: each bench in turn, each of
# which interleaves multitask with its anchors round by round (rayon and a
# plain channel pool, raw socketpairs, Python's executors, Celery and
# redis-benchmark on the same Redis, xargs and GNU parallel) and prints
# medians, ranges and ratios. The output goes to stdout and to
# target/bench/report.md, which BENCHMARKS.md is written from.
#
#   bash scripts/bench.sh            # every bench, 5 rounds where they take it
#   MT_BENCH_ROUNDS=3 bash scripts/bench.sh threads cluster
#
# Needs redis-server and redis-benchmark (installed with apt-get when
# missing), GNU parallel for the run bench, Python 3 for the Python
# baselines, and `pip install celery redis packaging` for the Celery one (skipped,
# and said so, without it). Run it on a quiet machine: the report starts
# with the load average before and after.
set -euo pipefail
cd "$(dirname "$0")/.."

export MT_BENCH_ROUNDS="${MT_BENCH_ROUNDS:-5}"
benches=("$@")
if [ ${#benches[@]} -eq 0 ]; then
  benches=(threads process trace cluster run)
fi

need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if command -v apt-get >/dev/null 2>&1; then
    apt-get install -y "$2" >/dev/null 2>&1 || (apt-get update >/dev/null 2>&1 && apt-get install -y "$2" >/dev/null 2>&1) || true
  fi
  command -v "$1" >/dev/null 2>&1 || echo "note: $1 is missing; the figures that need it are skipped" >&2
}
need redis-server redis-server
need redis-benchmark redis-tools
need parallel parallel
python3 -c 'import celery, redis' 2>/dev/null \
  || echo "note: celery is not installed (pip install celery redis packaging): its anchor is skipped" >&2

mkdir -p target/bench
report=target/bench/report.md
{
  echo "# bench report"
  echo
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- CPUs: $(nproc); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- rounds: $MT_BENCH_ROUNDS"
  echo
} >"$report"

for b in "${benches[@]}"; do
  case "$b" in
    run) cmd=(cargo bench -q -p multitasking-cli --bench run) ;;
    *) cmd=(cargo bench -q -p multitasking --bench "$b") ;;
  esac
  echo "== ${cmd[*]}" >&2
  {
    echo
    echo "## \`${cmd[*]}\`"
    echo
    "${cmd[@]}" 2>/dev/null
  } | tee -a "$report"
done

python3 benches/python/executors.py >target/bench/python.jsonl 2>/dev/null || true
{
  echo
  echo "## \`python3 benches/python/executors.py\`"
  echo
  echo '```'
  cat target/bench/python.jsonl
  echo '```'
  echo
  echo "- load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee -a "$report"
echo "wrote $report" >&2
