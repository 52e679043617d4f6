//! Tracing overhead: the same run of 10 µs tasks with the tracer off and
//! on, on a thread pool and on a process pool, alternating runs and
//! keeping the best of each. The design goal: at most 5% with tracing on,
//! near zero with it off.
//!
//! Run: `cargo bench -p multitasking --bench trace`.

use std::time::{Duration, Instant};

use multitasking::trace::Tracer;
use multitasking::{Executor, ProcessPool, ThreadPool};

/// Spins for `us` microseconds: a CPU-bound task of known length.
#[multitasking::task]
fn busy_us(us: u64) -> u64 {
    let end = Instant::now() + Duration::from_micros(us);
    let mut n = 0u64;
    while Instant::now() < end {
        n = std::hint::black_box(n + 1);
    }
    n
}

fn run<E: Executor>(pool: &E, tasks: usize) -> Duration {
    let t = Instant::now();
    let futs: Vec<_> = (0..tasks)
        .map(|_| pool.submit(busy_us, 10).unwrap())
        .collect();
    for f in futs {
        f.result().unwrap();
    }
    t.elapsed()
}

fn compare<E: Executor>(label: &str, off: &E, on: &E, tracer: &Tracer, tasks: usize) {
    let (mut best_off, mut best_on) = (Duration::MAX, Duration::MAX);
    for _ in 0..7 {
        best_off = best_off.min(run(off, tasks));
        tracer.clear();
        best_on = best_on.min(run(on, tasks));
    }
    assert_eq!(tracer.snapshot().events.len(), tasks, "every task traced");
    let per_off = best_off.as_secs_f64() * 1e6 / tasks as f64;
    let per_on = best_on.as_secs_f64() * 1e6 / tasks as f64;
    println!(
        "| {label} | {per_off:.2} | {per_on:.2} | {:+.1}% |",
        (per_on / per_off - 1.0) * 100.0
    );
}

fn main() {
    multitasking::init();
    let tasks = 20_000;
    println!("# tracing overhead on {tasks} tasks of 10 µs, 2 workers\n");
    println!("| pool | µs per task, off | µs per task, on | overhead |");
    println!("| --- | ---: | ---: | ---: |");
    let tracer = Tracer::new();
    let off = ThreadPool::new(2).unwrap();
    let on = ThreadPool::builder()
        .max_workers(2)
        .tracer(tracer.clone())
        .build()
        .unwrap();
    compare("ThreadPool", &off, &on, &tracer, tasks);
    drop((off, on));
    let tracer = Tracer::new();
    let off = ProcessPool::new(2).unwrap();
    let on = ProcessPool::builder()
        .max_workers(2)
        .tracer(tracer.clone())
        .build()
        .unwrap();
    compare("ProcessPool", &off, &on, &tracer, tasks / 4);
}
