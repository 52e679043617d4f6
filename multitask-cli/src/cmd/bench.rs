//! `multitask bench`: the benchmark lab. The same workloads run serially
//! and on each executor at each worker count, traced; the lab prints a
//! table (or JSON) and can write a speedup chart, a timeline, a Chrome
//! trace and a report that puts the seed's lessons in measured numbers:
//! I/O-bound work keeps scaling past the core count on threads, CPU-bound
//! work stops at it.
//!
//! Workloads: `cpu` (the seed's prime test on its numbers), `io` (blocking
//! waits of 20 ms) and `mixed` (alternating). Each run maps the workload's
//! tasks with chunk size 1 and a tracer on; speedup is the serial time of
//! the same tasks on this thread divided by the run's wall time.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use multitasking::trace::report::{fit_amdahl, Report};
use multitasking::trace::svg::{speedup_chart_svg, timeline_svg, Series};
use multitasking::trace::{chrome, Trace, Tracer};
use multitasking::{Executor, ExecutorSpec, ProcessPool, SerialExecutor, ThreadPool};
use serde::Serialize;
use serde_json::json;

use crate::args::BenchArgs;
use crate::cmd::primes::SEED;
use crate::tasks::{bench_work, Work};
use crate::term::Progress;
use crate::verdict::{Comparison, Runs, Verdict, Watch};

/// Milliseconds of each I/O task.
const IO_MS: u64 = 20;

/// One measured run.
#[derive(Debug, Clone, Serialize)]
struct Row {
    /// `cpu`, `io` or `mixed`.
    workload: String,
    /// The executor's spec (`threads:4`).
    executor: String,
    /// The kind (`threads`), for grouping.
    kind: String,
    /// Workers.
    workers: usize,
    /// Tasks run.
    tasks: usize,
    /// Wall time of the run: the median of the rounds.
    wall_s: f64,
    /// The fastest and slowest round.
    wall_range_s: (f64, f64),
    /// The same tasks serially on this thread: the median of the rounds.
    serial_s: f64,
    /// median serial / median wall.
    speedup: f64,
    /// The speedups the rounds allow: slowest serial / fastest run, and
    /// the reverse.
    speedup_range: (f64, f64),
    /// What the rounds support: faster, slower, can't tell, too short.
    verdict: Verdict,
    /// speedup / workers.
    efficiency: f64,
    /// busy / (workers x wall).
    utilisation: f64,
    /// Median queue wait.
    queue_wait_p50_ms: f64,
    /// 99th-percentile queue wait.
    queue_wait_p99_ms: f64,
}

/// The tasks of a workload.
fn workload(name: &str, tasks: usize) -> Result<Vec<Work>> {
    let cpu = |i: usize| Work::Cpu(SEED[i % 5]);
    Ok(match name {
        "cpu" => (0..tasks).map(cpu).collect(),
        "io" => vec![Work::Io(IO_MS); tasks],
        "mixed" => (0..tasks)
            .map(|i| {
                if i % 2 == 0 {
                    cpu(i / 2)
                } else {
                    Work::Io(IO_MS)
                }
            })
            .collect(),
        other => bail!("unknown workload {other:?}: expected cpu, io or mixed"),
    })
}

/// Runs `work` on `ex` with a tracer; the wall time and the trace.
fn measure<E: Executor>(ex: &E, tracer: &Tracer, work: &[Work]) -> Result<(Duration, Trace)> {
    tracer.clear();
    let t = Instant::now();
    for r in ex.map(bench_work, work.to_vec()).chunksize(1) {
        r.context("a bench task failed")?;
    }
    Ok((t.elapsed(), tracer.snapshot()))
}

/// Builds the executor of `kind` with `workers` and the tracer, runs, and
/// drops it (pool start-up is not timed).
fn run_one(
    kind: &str,
    workers: usize,
    tracer: &Tracer,
    work: &[Work],
) -> Result<(Duration, Trace, String)> {
    match kind {
        "serial" => {
            let ex = SerialExecutor::new();
            // The serial executor has no workers to trace: time it whole.
            let t = Instant::now();
            for r in ex.map(bench_work, work.to_vec()) {
                r.context("a bench task failed")?;
            }
            Ok((t.elapsed(), Trace::default(), ex.spec()))
        }
        "threads" => {
            let ex = ThreadPool::builder()
                .max_workers(workers)
                .tracer(tracer.clone())
                .build()?;
            let (d, t) = measure(&ex, tracer, work)?;
            Ok((d, t, ex.spec()))
        }
        "processes" => {
            let ex = ProcessPool::builder()
                .max_workers(workers)
                .tracer(tracer.clone())
                .build()?;
            let (d, t) = measure(&ex, tracer, work)?;
            Ok((d, t, ex.spec()))
        }
        url if is_cluster(url) => {
            // Signed as a pool built from the spec string would be.
            let ex = multitasking::ClusterPool::connect_with(url, workers)?
                .with_keys(multitasking::cluster::keys_from_env())?;
            let t = Instant::now();
            for r in ex.map(bench_work, work.to_vec()).chunksize(1) {
                r.context("a bench task failed")?;
            }
            Ok((t.elapsed(), Trace::default(), ex.spec()))
        }
        other => bail!(
            "executor {other:?} can't be benchmarked: expected serial, threads, processes or redis://"
        ),
    }
}

fn is_cluster(kind: &str) -> bool {
    [
        "redis://",
        "rediss://",
        "redis+cluster://",
        "rediss+cluster://",
    ]
    .iter()
    .any(|p| kind.starts_with(p))
}

/// The slots of the live workers on the queue at `url`.
fn cluster_slots(url: &str) -> Result<usize> {
    let st = multitasking::cluster::status(url)?;
    let slots: u64 = st
        .workers
        .iter()
        .filter(|w| w.alive)
        .map(|w| w.concurrency.unwrap_or(1))
        .sum();
    if slots == 0 {
        bail!(
            "no worker is alive on queue {}: start one with multitask worker --broker URL",
            st.queue
        );
    }
    Ok(slots as usize)
}

/// Runs the lab.
pub(crate) fn main(args: BenchArgs, quiet: bool) -> Result<ExitCode> {
    let kinds: Vec<String> = args
        .executors
        .iter()
        .map(|spec| match spec {
            ExecutorSpec::Serial => "serial".to_string(),
            ExecutorSpec::Threads(_) => "threads".to_string(),
            ExecutorSpec::Processes(_) => "processes".to_string(),
            ExecutorSpec::Redis(url) => url.clone(),
        })
        .collect();
    let profiler = crate::profiling::start(args.profile.as_deref())?;

    // The dashboard follows whichever run is going on.
    let current = std::sync::Arc::new(std::sync::Mutex::new(Tracer::new()));
    #[cfg(feature = "dashboard")]
    let _served = match args.dashboard {
        Some(addr) => {
            let served = super::dashboard::serve_lab(addr, current.clone())?;
            crate::term::note(format!("dashboard at {}", served.url()));
            Some(served)
        }
        None => None,
    };

    let workers_list: Vec<usize> = args.workers.iter().map(|&w| usize::from(w)).collect();
    let mut rows: Vec<Row> = Vec::new();
    let mut showcase: Option<(String, Trace)> = None;
    let total = args.workloads.len()
        * kinds
            .iter()
            .map(|k| {
                if k == "serial" || is_cluster(k) {
                    1
                } else {
                    workers_list.len()
                }
            })
            .sum::<usize>();
    let mut progress = Progress::new("bench", quiet || args.json);
    let mut done = 0;
    let rounds = args.repeat as usize;
    let watch = Watch::start();
    for name in &args.workloads {
        let work = workload(name, args.tasks as usize)?;
        let configs: Vec<(String, usize)> = kinds
            .iter()
            .map(|kind| {
                Ok(if kind == "serial" {
                    vec![(kind.clone(), 1)]
                } else if is_cluster(kind) {
                    vec![(kind.clone(), cluster_slots(kind)?)]
                } else {
                    workers_list.iter().map(|&w| (kind.clone(), w)).collect()
                })
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        // Each round times the serial baseline, then every configuration,
        // so that a change in the machine's load falls on all of them.
        let mut serial = Runs::default();
        let mut walls: Vec<Runs> = vec![Runs::default(); configs.len()];
        let mut last: Vec<Option<(Trace, String)>> = vec![None; configs.len()];
        for _ in 0..rounds {
            let t = Instant::now();
            for w in &work {
                std::hint::black_box(bench_work.call(*w));
            }
            serial.push(t.elapsed());
            for (i, (kind, workers)) in configs.iter().enumerate() {
                let tracer = Tracer::new();
                *current.lock().unwrap_or_else(|p| p.into_inner()) = tracer.clone();
                let (wall, trace, spec) = run_one(kind, *workers, &tracer, &work)?;
                walls[i].push(wall);
                last[i] = Some((trace, spec));
                done += 1;
                progress.tick(done, Some(total * rounds));
            }
        }
        for (i, (kind, workers)) in configs.iter().enumerate() {
            let workers = *workers;
            let (trace, spec) = last[i].take().expect("every configuration ran");
            let kind = if is_cluster(kind) {
                "cluster"
            } else {
                kind.as_str()
            };
            let cmp = Comparison::new(serial.clone(), walls[i].clone(), false);
            let report = Report::from_trace(
                &trace,
                Some(Duration::from_secs_f64(cmp.serial.median())),
                workers,
            );
            let speedup = cmp.serial.median() / cmp.parallel.median().max(1e-12);
            rows.push(Row {
                workload: name.clone(),
                executor: spec.clone(),
                kind: kind.to_string(),
                workers,
                tasks: work.len(),
                wall_s: cmp.parallel.median(),
                wall_range_s: (cmp.parallel.min(), cmp.parallel.max()),
                serial_s: cmp.serial.median(),
                speedup,
                speedup_range: cmp.range.unwrap_or((speedup, speedup)),
                verdict: cmp.verdict,
                efficiency: speedup / workers as f64,
                // Serial runs are busy throughout; cluster runs are not
                // traced (their workers are elsewhere): unknown.
                utilisation: match kind {
                    "serial" => 1.0,
                    "cluster" => f64::NAN,
                    _ => report.utilisation,
                },
                queue_wait_p50_ms: report.queue_wait_p50_ms,
                queue_wait_p99_ms: report.queue_wait_p99_ms,
            });
            if !trace.events.is_empty() {
                showcase = Some((format!("{name} on {spec}"), trace));
            }
        }
    }
    progress.finish();
    let load = watch.stop();
    let warnings = load.warnings();
    for w in &warnings {
        crate::term::note(w);
    }

    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(
            out,
            "{}",
            json!({ "rows": rows, "amdahl": amdahl(&rows), "rounds": rounds, "load": load, "warnings": warnings })
        )?;
    } else {
        write!(out, "{}", table(&rows))?;
    }
    if let Some(dir) = &args.out {
        write_files(dir, &rows, showcase.as_ref(), &warnings)?;
        if !args.json {
            writeln!(
                out,
                "wrote chart.svg, timeline.svg, trace.json and report.md to {}",
                dir.display()
            )?;
        }
    }
    if let (Some(profiler), Some(path)) = (profiler, &args.profile) {
        let table = crate::profiling::finish(profiler, path)?;
        if !args.json {
            writeln!(
                out,
                "wrote a flamegraph of this process and its workers, by task, to {} and a table to {}",
                path.display(),
                table.display()
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Serial fractions fitted per workload and executor kind.
fn amdahl(rows: &[Row]) -> serde_json::Value {
    let mut fits = serde_json::Map::new();
    for (workload, kind) in groups(rows) {
        let pts: Vec<(usize, f64)> = rows
            .iter()
            .filter(|r| r.workload == workload && r.kind == kind)
            .map(|r| (r.workers, r.speedup))
            .collect();
        if let Some(s) = fit_amdahl(&pts) {
            fits.insert(format!("{workload}/{kind}"), json!(s));
        }
    }
    serde_json::Value::Object(fits)
}

/// The (workload, kind) pairs in first-seen order, serial excluded.
fn groups(rows: &[Row]) -> Vec<(String, String)> {
    let mut g: Vec<(String, String)> = Vec::new();
    for r in rows.iter().filter(|r| r.kind != "serial") {
        let key = (r.workload.clone(), r.kind.clone());
        if !g.contains(&key) {
            g.push(key);
        }
    }
    g
}

/// The rows as an aligned text table.
fn table(rows: &[Row]) -> String {
    let mut s = format!(
        "{:<8} {:<14} {:>7} {:>9} {:>8} {:>10} {:>11} {:>13}\n",
        "workload",
        "executor",
        "workers",
        "wall s",
        "speedup",
        "efficiency",
        "utilisation",
        "queue p50 ms"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<8} {:<14} {:>7} {:>9.3} {:>7.2}x {:>9.0}% {:>11} {:>13.3}",
            r.workload,
            r.executor,
            r.workers,
            r.wall_s,
            r.speedup,
            r.efficiency * 100.0,
            percent(r.utilisation),
            r.queue_wait_p50_ms
        );
    }
    s
}

/// A fraction as a percentage, `-` when unknown.
fn percent(v: f64) -> String {
    if v.is_nan() {
        "-".to_string()
    } else {
        format!("{:.0}%", v * 100.0)
    }
}

/// Writes chart.svg, timeline.svg, trace.json and report.md into `dir`.
fn write_files(
    dir: &Path,
    rows: &[Row],
    showcase: Option<&(String, Trace)>,
    warnings: &[String],
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let series: Vec<Series> = groups(rows)
        .into_iter()
        .map(|(workload, kind)| Series {
            name: format!("{workload} on {kind}"),
            points: rows
                .iter()
                .filter(|r| r.workload == workload && r.kind == kind)
                .map(|r| (r.workers, r.speedup))
                .collect(),
        })
        .collect();
    let cpus = multitasking::usable_cpus();
    let title = format!("speedup against workers ({cpus} usable CPUs)");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write("chart.svg", &speedup_chart_svg(&title, &series))?;
    let empty = (String::from("no traced run"), Trace::default());
    let (label, trace) = showcase.unwrap_or(&empty);
    write("timeline.svg", &timeline_svg(trace))?;
    write("trace.json", &chrome::to_chrome_json(trace))?;
    write("report.md", &report_md(rows, label, cpus, warnings))?;
    Ok(())
}

/// Whether `b` (more workers than cores) scales past `a` (at the core
/// count), in words the rounds support: past only if every speedup `b`'s
/// rounds allow beats every one of `a`'s; stopped only if `b` can't be a
/// quarter better; else the runs overlap too much to tell.
fn scaling(a: &Row, b: &Row) -> &'static str {
    if matches!(a.verdict, Verdict::TooShort) || matches!(b.verdict, Verdict::TooShort) {
        "can't tell: the runs are too short to time"
    } else if b.speedup_range.0 > a.speedup_range.1 {
        "keeps scaling past the core count"
    } else if b.speedup_range.1 < a.speedup_range.0 * 1.25 {
        "stops scaling at the core count"
    } else {
        "can't tell whether it scales past the core count: the runs overlap"
    }
}

/// The lab's report: the table, the Amdahl fits, and the lessons the
/// numbers show.
fn report_md(rows: &[Row], timeline: &str, cpus: usize, warnings: &[String]) -> String {
    let mut s = String::from("# multitask bench report\n\n");
    let _ = writeln!(
        s,
        "{cpus} usable CPUs. Speedup = the median serial time of the same tasks on one thread / the median wall time of the run; the range is every speedup the rounds allow (slowest serial / fastest run, and the reverse).\n"
    );
    for w in warnings {
        let _ = writeln!(s, "**Warning:** {w}.\n");
    }
    s.push_str("| workload | executor | workers | wall s | speedup | range | efficiency | utilisation | queue p50 ms | queue p99 ms |\n");
    s.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} | {:.2}x | {:.2}-{:.2} | {:.0}% | {} | {:.3} | {:.3} |",
            r.workload,
            r.executor,
            r.workers,
            r.wall_s,
            r.speedup,
            r.speedup_range.0,
            r.speedup_range.1,
            r.efficiency * 100.0,
            percent(r.utilisation),
            r.queue_wait_p50_ms,
            r.queue_wait_p99_ms
        );
    }
    s.push_str("\n## Amdahl's law\n\nThe serial fraction s of speedup(n) = 1 / (s + (1 - s) / n), fitted by least squares:\n\n");
    for (k, v) in amdahl(rows).as_object().into_iter().flatten() {
        let _ = writeln!(s, "- {k}: s = {:.3}", v.as_f64().unwrap_or(f64::NAN));
    }
    s.push_str("\n## What the numbers show\n\n");
    for (workload, kind) in groups(rows) {
        let pts: Vec<&Row> = rows
            .iter()
            .filter(|r| r.workload == workload && r.kind == kind)
            .collect();
        let at_cores = pts
            .iter()
            .filter(|r| r.workers <= cpus)
            .max_by_key(|r| r.workers);
        let most = pts.iter().max_by_key(|r| r.workers);
        if let (Some(a), Some(b)) = (at_cores, most) {
            if b.workers > a.workers {
                let _ = writeln!(
                    s,
                    "- {workload} on {kind}: {}; {:.2}x ({:.2}-{:.2}) with {} workers, {:.2}x ({:.2}-{:.2}) with {}.",
                    scaling(a, b),
                    a.speedup,
                    a.speedup_range.0,
                    a.speedup_range.1,
                    a.workers,
                    b.speedup,
                    b.speedup_range.0,
                    b.speedup_range.1,
                    b.workers
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\nThe timeline (timeline.svg, trace.json) is of the last traced run: {timeline}."
    );
    s
}
