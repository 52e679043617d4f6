#!/usr/bin/env python3
"""Python baselines for multitask's benchmarks: concurrent.futures and
multiprocessing on the same machine, measured the way the Rust benches
measure multitask.

Each measurement prints one JSON line on stdout ({"name": ..., figures})
and a readable line on stderr. The Rust benches (multitasking/benches/*.rs)
run this script and print its figures beside their own.

    python3 benches/python/executors.py                  # everything
    python3 benches/python/executors.py --only thread_submit,pool_map

Stdlib only.
"""

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time

SEED = [
    112272535095293,
    112582705942171,
    112272535095293,
    115280095190773,
    115797848077099,
    1099726899285419,
]


def noop(x=None):
    return x


def is_prime(n):
    """The seed's trial division."""
    if n < 2:
        return False
    if n == 2:
        return True
    if n % 2 == 0:
        return False
    for i in range(3, math.isqrt(n) + 1, 2):
        if n % i == 0:
            return False
    return True


def exit_if_seven(i):
    if i == 7:
        os._exit(3)
    return i


def emit(name, **figures):
    print(json.dumps({"name": name, **figures}), flush=True)
    shown = ", ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
    )
    print(f"{name}: {shown}", file=sys.stderr, flush=True)


def thread_submit(n):
    with cf.ThreadPoolExecutor() as ex:
        for _ in range(2):  # warm-up, then the measured run
            t = time.perf_counter()
            futs = [ex.submit(noop, i) for i in range(n)]
            for f in futs:
                f.result()
            dt = time.perf_counter() - t
    emit("thread_submit", per_task_us=dt * 1e6 / n, tasks=n, workers=ex._max_workers)


def round_trips(submit_get, n):
    for i in range(50):
        submit_get(i)
    samples = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        submit_get(i)
        samples.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    return total * 1e6 / n, statistics.median(samples) * 1e6


def process_roundtrip(n):
    with cf.ProcessPoolExecutor(2) as ex:
        mean, p50 = round_trips(lambda i: ex.submit(noop, i).result(), n)
    emit("process_roundtrip", per_task_us=mean, p50_us=p50, trips=n)


def apply_async_roundtrip(n):
    with mp.Pool(2) as pool:
        mean, p50 = round_trips(lambda i: pool.apply_async(noop, (i,)).get(), n)
    emit("apply_async_roundtrip", per_task_us=mean, p50_us=p50, trips=n)


def pool_map(n):
    with mp.Pool(2) as pool:
        pool.map(noop, range(1000))
        t = time.perf_counter()
        out = pool.map(noop, range(n))
        dt = time.perf_counter() - t
    assert len(out) == n
    emit("pool_map", items_per_s=n / dt, seconds=dt, items=n)


def executor_map(n):
    with cf.ProcessPoolExecutor(2) as ex:
        t = time.perf_counter()
        out = list(ex.map(noop, range(n), chunksize=1000))
        dt = time.perf_counter() - t
    assert len(out) == n
    emit("executor_map", items_per_s=n / dt, seconds=dt, items=n)


def pool_start():
    for method in ("fork", "spawn"):
        ctx = mp.get_context(method)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            with ctx.Pool(2) as pool:
                pool.apply_async(noop, (1,)).get()
                times.append(time.perf_counter() - t)
        emit(f"pool_start_{method}", ms=statistics.median(times) * 1e3)


def primes():
    t = time.perf_counter()
    serial = [is_prime(n) for n in SEED]
    serial_s = time.perf_counter() - t
    with cf.ProcessPoolExecutor(2) as ex:
        t = time.perf_counter()
        parallel = list(ex.map(is_prime, SEED))
        parallel_s = time.perf_counter() - t
    assert serial == parallel
    emit("primes", serial_s=serial_s, parallel_s=parallel_s, speedup=serial_s / parallel_s)


def crash():
    ok = broken = other = 0
    with cf.ProcessPoolExecutor(2) as ex:
        futs = [ex.submit(exit_if_seven, i) for i in range(20)]
        for f in futs:
            try:
                f.result(timeout=30)
                ok += 1
            except cf.process.BrokenProcessPool:
                broken += 1
            except Exception:  # noqa: BLE001 - counted, not hidden
                other += 1
    emit("crash", tasks=20, crashing=1, ok=ok, broken=broken, other=other)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], help="comma-separated names")
    ap.add_argument("--n", type=float, default=1.0, help="scale the task counts")
    args = ap.parse_args()
    only = {x for arg in args.only for x in arg.split(",") if x}
    scale = args.n
    runs = {
        "thread_submit": lambda: thread_submit(int(100_000 * scale)),
        "process_roundtrip": lambda: process_roundtrip(int(2000 * scale)),
        "apply_async_roundtrip": lambda: apply_async_roundtrip(int(2000 * scale)),
        "pool_map": lambda: pool_map(int(1_000_000 * scale)),
        "executor_map": lambda: executor_map(int(100_000 * scale)),
        "pool_start": pool_start,
        "primes": primes,
        "crash": crash,
    }
    unknown = only - runs.keys()
    if unknown:
        ap.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")
    for name, run in runs.items():
        if not only or name in only:
            run()


if __name__ == "__main__":
    main()
