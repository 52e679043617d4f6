#!/usr/bin/env python3
"""Celery on Redis: the baseline for multitask's cluster bench.

    pip install celery redis
    python3 benches/python/celery_bench.py --broker redis://127.0.0.1:6379/1

Starts a Celery worker (2 prefork processes) on the given Redis (broker
and result backend), waits for it, then measures end-to-end no-op tasks per
second (N .delay() calls, then .get() on each) and the round trip of single
tasks (delay + get). Prints one JSON line per measurement on stdout, a
readable line on stderr, and stops the worker.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

try:
    from celery import Celery
except ImportError:
    print("celery is not installed: pip install celery redis", file=sys.stderr)
    sys.exit(3)

BROKER = os.environ.get("CELERY_BENCH_BROKER", "redis://127.0.0.1:6379/1")
app = Celery("celery_bench", broker=BROKER, backend=BROKER)
app.conf.task_default_queue = "bench"
app.conf.worker_prefetch_multiplier = 4
app.conf.result_expires = 600


@app.task
def noop(x):
    return x


def emit(name, **figures):
    print(json.dumps({"name": name, **figures}), flush=True)
    print(f"{name}: {figures}", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", default=BROKER)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--trips", type=int, default=200)
    args = ap.parse_args()
    if args.broker != BROKER:
        env = dict(os.environ, CELERY_BENCH_BROKER=args.broker)
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)

    here = os.path.dirname(os.path.abspath(__file__))
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_bench", "worker", "--concurrency", "2",
         "--pool", "prefork", "-Q", "bench", "--without-heartbeat", "--without-gossip",
         "--without-mingle", "-l", "warning"],
        cwd=here, env=dict(os.environ, CELERY_BENCH_BROKER=BROKER),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                noop.delay(0).get(timeout=2)
                break
            except Exception:  # noqa: BLE001 - the worker is still starting
                if time.time() > deadline or worker.poll() is not None:
                    print("the celery worker did not start", file=sys.stderr)
                    sys.exit(1)
        t = time.perf_counter()
        results = [noop.delay(i) for i in range(args.n)]
        for r in results:
            r.get(timeout=120)
        dt = time.perf_counter() - t
        emit("celery_throughput", tasks_per_s=args.n / dt, tasks=args.n, seconds=dt)
        trips = []
        for i in range(args.trips):
            t = time.perf_counter()
            noop.delay(i).get(timeout=30)
            trips.append(time.perf_counter() - t)
        emit("celery_roundtrip", p50_ms=statistics.median(trips) * 1e3, trips=args.trips)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()


if __name__ == "__main__":
    main()
