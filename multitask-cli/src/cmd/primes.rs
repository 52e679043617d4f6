//! `multitask primes`: the seed's example. Tests each number for primality
//! with `executor.map(is_prime, numbers)`, prints the verdicts in input
//! order, then times the same numbers serially on this thread and prints
//! the speedup (serial time / parallel time).
//!
//! Each of `--repeat` rounds (default 3) times a parallel run and then a
//! serial one; the report gives medians, the spread, the speedup's interval
//! and what it supports ("can't tell" when the runs overlap), and warns
//! when the machine was busy. The parallel time covers the map only, not
//! starting the pool. With
//! `--show-worker` the task is `is_prime_with_pid`, and each verdict shows
//! the pid of the process that computed it.

use std::cell::RefCell;
use std::hint::black_box;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use multitasking::{Executor, ExecutorSpec, TaskError};
use serde_json::json;

use crate::args::PrimesArgs;
use crate::tasks::{is_prime, is_prime_with_pid};
use crate::term::Progress;
use crate::verdict::{Comparison, Runs, Watch};

/// The seed's numbers (one repeated, as there).
pub(crate) const SEED: [u64; 6] = [
    112272535095293,
    112582705942171,
    112272535095293,
    115280095190773,
    115797848077099,
    1099726899285419,
];

/// Each number's verdict and, with `--show-worker`, the pid that computed it.
type Verdicts<'a> = Box<dyn Iterator<Item = Result<(bool, Option<u32>), TaskError>> + 'a>;

/// Tests the numbers and prints the verdicts and the timing.
pub(crate) fn main(args: PrimesArgs, quiet: bool) -> Result<ExitCode> {
    let numbers = if args.numbers.is_empty() {
        SEED.to_vec()
    } else {
        args.numbers
    };
    let profiler = crate::profiling::start(args.profile.as_deref())?;
    let ex = super::executor(&args.executor)?;
    let progress = RefCell::new(Progress::new("primes", quiet));
    let tick = |done, total| progress.borrow_mut().tick(done, total);
    let mut out = io::stdout().lock();

    let watch = Watch::start();
    let (mut serial, mut parallel) = (Runs::default(), Runs::default());
    let mut results = Vec::with_capacity(numbers.len());
    // Rounds interleave a parallel run and a serial one, so that a change
    // in the machine's load falls on both; the first round's verdicts are
    // the ones printed.
    for round in 0..args.repeat {
        let clock = Instant::now();
        let verdicts: Verdicts<'_> = if args.show_worker {
            let map = ex.map(is_prime_with_pid, numbers.clone());
            let map = if round == 0 { map.progress(tick) } else { map };
            Box::new(map.map(|r| r.map(|(prime, pid)| (prime, Some(pid)))))
        } else {
            let map = ex.map(is_prime, numbers.clone());
            let map = if round == 0 { map.progress(tick) } else { map };
            Box::new(map.map(|r| r.map(|prime| (prime, None))))
        };
        for (&n, verdict) in numbers.iter().zip(verdicts) {
            let (prime, pid) = verdict.with_context(|| format!("testing {n}"))?;
            if round == 0 {
                if !args.json {
                    progress.borrow_mut().suspend();
                    let by = pid.map(|p| format!("  (pid {p})")).unwrap_or_default();
                    writeln!(out, "{n} is prime: {prime}{by}")?;
                }
                results.push((n, prime, pid));
            }
        }
        parallel.push(clock.elapsed());
        if round == 0 {
            progress.borrow_mut().finish();
        }

        let clock = Instant::now();
        for &n in &numbers {
            black_box(is_prime.call(black_box(n)));
        }
        serial.push(clock.elapsed());
    }
    let load = watch.stop();
    let (spec, workers) = (ex.spec(), ex.max_workers());
    // The workers write their last stacks as the pool closes.
    drop(ex);
    let profiled = match (profiler, &args.profile) {
        (Some(p), Some(path)) => Some((path.clone(), crate::profiling::finish(p, path)?)),
        _ => None,
    };
    let baseline = matches!(args.executor, ExecutorSpec::Serial);
    let cmp = Comparison::new(serial, parallel, baseline);
    let warnings = load.warnings();
    for w in &warnings {
        crate::term::note(w);
    }

    if args.json {
        let results: Vec<_> = results
            .iter()
            .map(|&(n, prime, pid)| match pid {
                Some(pid) => json!({"n": n, "prime": prime, "pid": pid}),
                None => json!({"n": n, "prime": prime}),
            })
            .collect();
        let report = json!({
            "executor": spec,
            "workers": workers,
            "results": results,
            "serial_s": cmp.serial.median(),
            "parallel_s": cmp.parallel.median(),
            "speedup": cmp.speedup,
            "serial_runs": cmp.serial.0,
            "parallel_runs": cmp.parallel.0,
            "speedup_range": cmp.range.map(|(lo, hi)| [lo, hi]),
            "verdict": cmp.verdict,
            "load": load,
            "warnings": warnings,
        });
        writeln!(out, "{report}")?;
    } else {
        writeln!(out, "serial    {}  this thread", cmp.serial.describe())?;
        writeln!(
            out,
            "parallel  {}  {spec}, {workers} worker{}",
            cmp.parallel.describe(),
            if workers == 1 { "" } else { "s" }
        )?;
        writeln!(out, "speedup   {}", cmp.describe())?;
    }
    if let Some((svg, table)) = profiled {
        crate::term::note(format!(
            "wrote a flamegraph of this process and its workers, by task, to {} and a table to {}",
            svg.display(),
            table.display()
        ));
    }
    Ok(ExitCode::SUCCESS)
}
