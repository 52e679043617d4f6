//! What the profiler costs: the seed's prime check on eight primes near
//! 4e16 mapped over a two-worker process pool, with and without
//! `Profiler::start()` (this process and both workers sampling at the
//! default rate), in interleaved rounds; the median of each and the
//! overhead between them.
//!
//! Run: `cargo bench -p multitasking --features profile --bench profile`.

use std::time::{Duration, Instant};

use multitasking::profile::Profiler;
use multitasking::{Executor, ProcessPool};

#[path = "support/tasks.rs"]
mod tasks;

use tasks::{is_prime, BIG_PRIMES};

/// One run: a fresh pool (so that its workers see the profiler), the map.
fn run(profiled: bool) -> (Duration, Option<usize>) {
    let profiler = profiled.then(|| Profiler::start().expect("start the profiler"));
    let pool = ProcessPool::builder().max_workers(2).build().unwrap();
    let t = Instant::now();
    let primes = pool
        .map(is_prime, BIG_PRIMES)
        .chunksize(1)
        .filter(|r| *r.as_ref().unwrap())
        .count();
    let d = t.elapsed();
    assert_eq!(primes, BIG_PRIMES.len());
    drop(pool);
    let processes = profiler.map(|p| p.finish().expect("a profile").processes());
    (d, processes)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    multitasking::init();
    let rounds = 5;
    let (mut plain, mut profiled) = (Vec::new(), Vec::new());
    let mut processes = 0;
    let _ = run(false);
    for _ in 0..rounds {
        plain.push(run(false).0.as_secs_f64());
        let (d, p) = run(true);
        profiled.push(d.as_secs_f64());
        processes = p.unwrap_or(0);
    }
    let (lo_p, hi_p) = (
        plain.iter().copied().fold(f64::MAX, f64::min),
        plain.iter().copied().fold(0.0, f64::max),
    );
    let (lo_q, hi_q) = (
        profiled.iter().copied().fold(f64::MAX, f64::min),
        profiled.iter().copied().fold(0.0, f64::max),
    );
    let (mp, mq) = (median(&mut plain), median(&mut profiled));
    println!("# profiler overhead ({rounds} interleaved rounds, 2 worker processes)\n");
    println!("| run | median s | min-max s |");
    println!("| --- | ---: | ---: |");
    println!("| without the profiler | {mp:.3} | {lo_p:.3}-{hi_p:.3} |");
    println!(
        "| with it, at {} Hz ({processes} processes sampled) | {mq:.3} | {lo_q:.3}-{hi_q:.3} |",
        Profiler::DEFAULT_HZ
    );
    println!(
        "\noverhead {:.1}% (median against median)",
        (mq / mp - 1.0) * 100.0
    );
}
