//! Thread pool costs, side by side in one run:
//!
//! 1. submit + result of a no-op task, amortised over 100k tasks (submit
//!    all, then take every result): `ThreadPool` against rayon (spawn plus a
//!    channel), a plain crossbeam-channel pool of boxed jobs, in
//!    interleaved rounds (`MT_BENCH_ROUNDS`, default 5), then
//!    `std::thread::spawn` + join per task, and Python's
//!    `ThreadPoolExecutor` (benches/python/executors.py, when python3 is
//!    there); then one at a time (submit, wait, repeat), against rayon's
//!    spawn and a channel receive.
//! 2. `map` of a no-op over 1M items with automatic chunking against rayon's
//!    `par_iter().map().collect()`.
//! 3. the seed's prime check on eight primes near 4e16 (so that a serial run
//!    takes over a second and the work divides evenly), serial against 2
//!    threads.
//!
//! Run: `cargo bench -p multitasking --bench threads`. Speedups and ratios are
//! printed as `{:.2}x`; absolute times drift on shared machines, ratios
//! measured in one run do not.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use multitasking::{Executor, ThreadPool};
use rayon::prelude::*;

#[path = "support/tasks.rs"]
mod tasks;

use tasks::{is_prime, noop, BIG_PRIMES};

/// The median of `reps` runs of `f` (which returns its own elapsed time),
/// after one warm-up run; the spread is printed beside the figures.
fn median_of(reps: usize, mut f: impl FnMut() -> Duration) -> Duration {
    let _ = f();
    let mut v: Vec<Duration> = (0..reps).map(|_| f()).collect();
    v.sort();
    v[v.len() / 2]
}

/// Median and (min, max) of `reps` runs after a warm-up, per task in µs.
fn spread(reps: usize, n: usize, mut f: impl FnMut() -> Duration) -> (f64, f64, f64) {
    let _ = f();
    let mut v: Vec<f64> = (0..reps).map(|_| per_task_us(f(), n)).collect();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn one_at_a_time_threadpool(pool: &ThreadPool, n: usize) -> Duration {
    let t = Instant::now();
    for i in 0..n as u64 {
        black_box(pool.submit(noop, i).unwrap().result().unwrap());
    }
    t.elapsed()
}

fn one_at_a_time_rayon(pool: &rayon::ThreadPool, n: usize) -> Duration {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let t = Instant::now();
    for i in 0..n as u64 {
        let tx = tx.clone();
        pool.spawn(move || {
            let _ = tx.send(black_box(i));
        });
        black_box(rx.recv().unwrap());
    }
    t.elapsed()
}

fn per_task_us(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn submit_threadpool(pool: &ThreadPool, n: usize) -> Duration {
    let t = Instant::now();
    let futs: Vec<_> = (0..n as u64)
        .map(|i| pool.submit(noop, i).unwrap())
        .collect();
    for f in futs {
        black_box(f.result().unwrap());
    }
    t.elapsed()
}

fn spawn_threadpool(pool: &ThreadPool, n: usize) -> Duration {
    let t = Instant::now();
    let futs: Vec<_> = (0..n as u64)
        .map(|i| pool.spawn(move || black_box(i)).unwrap())
        .collect();
    for f in futs {
        black_box(f.result().unwrap());
    }
    t.elapsed()
}

fn submit_rayon(pool: &rayon::ThreadPool, n: usize) -> Duration {
    let t = Instant::now();
    let (tx, rx) = crossbeam_channel::unbounded();
    for i in 0..n as u64 {
        let tx = tx.clone();
        pool.spawn(move || {
            let _ = tx.send(black_box(i));
        });
    }
    drop(tx);
    let mut got = 0;
    while rx.recv().is_ok() {
        got += 1;
    }
    assert_eq!(got, n);
    t.elapsed()
}

/// The simplest pool there is: threads taking boxed jobs from one
/// crossbeam channel, the anchor for what a pool with futures costs.
struct PlainPool {
    /// Jobs in.
    tx: Option<crossbeam_channel::Sender<Box<dyn FnOnce() + Send>>>,
    /// Its threads.
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl PlainPool {
    fn new(n: usize) -> PlainPool {
        let (tx, rx) = crossbeam_channel::unbounded::<Box<dyn FnOnce() + Send>>();
        let threads = (0..n)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })
            })
            .collect();
        PlainPool {
            tx: Some(tx),
            threads,
        }
    }

    /// `n` no-op jobs, each sending its result on a channel, then every
    /// result taken.
    fn submit_all(&self, n: usize) -> Duration {
        let t = Instant::now();
        let (rtx, rrx) = crossbeam_channel::unbounded();
        let tx = self.tx.as_ref().unwrap();
        for i in 0..n as u64 {
            let rtx = rtx.clone();
            let _ = tx.send(Box::new(move || {
                let _ = rtx.send(black_box(i));
            }));
        }
        drop(rtx);
        let mut got = 0;
        while rrx.recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, n);
        t.elapsed()
    }
}

impl Drop for PlainPool {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn std_spawn(n: usize) -> Duration {
    let t = Instant::now();
    for i in 0..n as u64 {
        black_box(std::thread::spawn(move || black_box(i)).join().unwrap());
    }
    t.elapsed()
}

fn python_thread_pool() -> Option<f64> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../benches/python/executors.py"
    );
    let out = Command::new("python3")
        .args([script, "--only", "thread_submit"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("per_task_us").and_then(|x| x.as_f64()))
}

fn main() {
    let workers = multitasking::usable_cpus();
    println!("# thread pool costs ({workers} usable CPUs)\n");

    // 1. submit + result.
    let n = 100_000;
    let pool = ThreadPool::builder().max_workers(workers).build().unwrap();
    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .build()
        .unwrap();
    let plain = PlainPool::new(workers);
    // Each round runs every contender once, in turn, so that a burst of
    // load elsewhere falls on all of them; a figure is the median of the
    // rounds, with the range.
    let rounds = std::env::var("MT_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse::<usize>().ok())
        .unwrap_or(5)
        .max(1);
    let mut runs: [Vec<f64>; 4] = Default::default();
    let _ = (submit_threadpool(&pool, n), submit_rayon(&rayon_pool, n));
    for _ in 0..rounds {
        runs[0].push(per_task_us(submit_threadpool(&pool, n), n));
        runs[1].push(per_task_us(spawn_threadpool(&pool, n), n));
        runs[2].push(per_task_us(submit_rayon(&rayon_pool, n), n));
        runs[3].push(per_task_us(plain.submit_all(n), n));
    }
    let spawn_n = 2_000;
    let std_t = median_of(3, || std_spawn(spawn_n));
    let py = python_thread_pool();
    let median_range = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let figures: Vec<(f64, f64, f64)> = runs.iter_mut().map(median_range).collect();
    let ours_us = figures[0].0;
    println!(
        "## submit + result, no-op, {n} tasks, {workers} workers, median (min-max) of {rounds} \
         interleaved rounds\n"
    );
    println!("| contender | µs per task | vs ThreadPool |");
    println!("| --- | ---: | ---: |");
    for (name, (med, lo, hi)) in [
        "multitask ThreadPool::submit (named task)",
        "multitask ThreadPool::spawn (closure)",
        "rayon spawn + channel",
        "a plain crossbeam-channel pool (boxed jobs, a result channel)",
    ]
    .into_iter()
    .zip(figures.iter().copied())
    {
        println!(
            "| {name} | {med:.3} ({lo:.3}-{hi:.3}) | {:.2}x |",
            med / ours_us
        );
    }
    let row = |name: &str, us: f64| {
        println!("| {name} | {us:.3} | {:.2}x |", us / ours_us);
    };
    row("std::thread::spawn + join", per_task_us(std_t, spawn_n));
    match py {
        Some(us) => row("Python ThreadPoolExecutor", us),
        None => {
            println!("| Python ThreadPoolExecutor | not run (python3 or the script missing) | |")
        }
    }

    // 1b. one at a time.
    let m = 20_000;
    let ours_one = spread(7, m, || one_at_a_time_threadpool(&pool, m));
    let rayon_one = spread(7, m, || one_at_a_time_rayon(&rayon_pool, m));
    println!("\n## one at a time: submit, wait for the result, {m} times\n");
    println!("| contender | µs per task, median (min-max of 7) | vs ThreadPool |");
    println!("| --- | ---: | ---: |");
    for (name, (med, lo, hi)) in [
        ("multitask ThreadPool::submit + result", ours_one),
        ("rayon spawn + channel recv", rayon_one),
    ] {
        println!(
            "| {name} | {med:.3} ({lo:.3}-{hi:.3}) | {:.2}x |",
            med / ours_one.0
        );
    }

    // 2. map over 1M no-op items.
    let items = 1_000_000u64;
    let ours_map = median_of(5, || {
        let t = Instant::now();
        let s: u64 = pool.map(noop, 0..items).map(Result::unwrap).sum();
        assert_eq!(s, items * (items - 1) / 2);
        t.elapsed()
    });
    let ours_map_fn = median_of(5, || {
        let t = Instant::now();
        let s: u64 = pool
            .map_fn(|x: u64| black_box(x), 0..items)
            .map(Result::unwrap)
            .sum();
        assert_eq!(s, items * (items - 1) / 2);
        t.elapsed()
    });
    let rayon_map = median_of(5, || {
        let t = Instant::now();
        let v: Vec<u64> =
            rayon_pool.install(|| (0..items).into_par_iter().map(black_box).collect());
        let s: u64 = v.into_iter().sum();
        assert_eq!(s, items * (items - 1) / 2);
        t.elapsed()
    });
    println!("\n## map of a no-op over {items} items, automatic chunking\n");
    println!("| contender | ms | M items/s | vs rayon |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, d) in [
        ("multitask ThreadPool::map (named task)", ours_map),
        ("multitask ThreadPool::map_fn (closure)", ours_map_fn),
        ("rayon par_iter().map().collect()", rayon_map),
    ] {
        println!(
            "| {name} | {:.2} | {:.1} | {:.2}x |",
            d.as_secs_f64() * 1e3,
            items as f64 / d.as_secs_f64() / 1e6,
            d.as_secs_f64() / rayon_map.as_secs_f64()
        );
    }

    // 3. primes: serial against 2 threads.
    let numbers = BIG_PRIMES.to_vec();
    let serial = median_of(2, || {
        let t = Instant::now();
        // Serially through the same code path a worker takes (Task::run
        // in a chunk), so that inlining differences can't skew the ratio.
        let c = multitasking::SerialExecutor::new()
            .map(is_prime, numbers.iter().copied())
            .filter(|r| *r.as_ref().unwrap())
            .count();
        assert_eq!(c, 8);
        t.elapsed()
    });
    let two = ThreadPool::new(2).unwrap();
    let parallel = median_of(2, || {
        let t = Instant::now();
        let c = two
            .map(is_prime, numbers.iter().copied())
            .filter(|r| *r.as_ref().unwrap())
            .count();
        assert_eq!(c, 8);
        t.elapsed()
    });
    println!("\n## primes, eight primes near 4e16, serial vs 2 threads\n");
    println!(
        "serial {:.3} s, 2 threads {:.3} s, speedup {:.2}x",
        serial.as_secs_f64(),
        parallel.as_secs_f64(),
        serial.as_secs_f64() / parallel.as_secs_f64()
    );
}
