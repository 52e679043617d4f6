//! The speedup report: what a run's trace says about its parallelism.
//!
//! From a [`Trace`] and the serial time of the same work: wall time, total
//! busy (run) time and the CPU time within it, speedup (serial / parallel), parallel efficiency
//! (speedup / workers), utilisation (busy / (workers x wall)), queue-wait
//! percentiles and peak RSS per worker. [`fit_amdahl`] fits the serial
//! fraction of Amdahl's law to speedups measured at several worker counts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::trace::Trace;

/// A run's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Tasks in the trace.
    pub tasks: usize,
    /// Tasks that failed.
    pub failed: usize,
    /// Workers the run had.
    pub workers: usize,
    /// Wall time of the run, in seconds.
    pub wall_s: f64,
    /// Sum of the tasks' run times, in seconds.
    pub busy_s: f64,
    /// Sum of the CPU time the tasks used, in seconds, over the tasks whose
    /// CPU time was measured; `None` if none was. Below `busy_s`, tasks
    /// waited (on I/O, locks or a busy machine) while they ran.
    #[serde(default)]
    pub cpu_s: Option<f64>,
    /// Bytes the tasks allocated, when counted ([`CountingAlloc`](crate::alloc::CountingAlloc)).
    #[serde(default)]
    pub allocated: Option<u64>,
    /// The same work run serially, in seconds, when measured.
    pub serial_s: Option<f64>,
    /// serial / wall.
    pub speedup: Option<f64>,
    /// speedup / workers.
    pub efficiency: Option<f64>,
    /// busy / (workers x wall): how much of the pool's time went to tasks.
    pub utilisation: f64,
    /// Median queue wait, in milliseconds.
    pub queue_wait_p50_ms: f64,
    /// 99th-percentile queue wait, in milliseconds.
    pub queue_wait_p99_ms: f64,
    /// Peak RSS per worker in bytes, where known.
    pub peak_rss: BTreeMap<String, u64>,
}

/// The `p`-th percentile (0-100) of `sorted`, nearest rank; zero if empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Report {
    /// The report of `trace`, a run on `workers` workers, against `serial`.
    pub fn from_trace(trace: &Trace, serial: Option<Duration>, workers: usize) -> Report {
        let trace = trace.trimmed();
        let wall = trace.wall.as_secs_f64();
        let busy = trace.busy().as_secs_f64();
        let mut waits: Vec<Duration> = trace.events.iter().map(|e| e.queue_wait()).collect();
        waits.sort();
        let workers = workers.max(1);
        let speedup = serial
            .filter(|_| wall > 0.0)
            .map(|s| s.as_secs_f64() / wall);
        Report {
            tasks: trace.events.len(),
            failed: trace.events.iter().filter(|e| !e.ok).count(),
            workers,
            wall_s: wall,
            busy_s: busy,
            cpu_s: {
                let measured: Vec<Duration> = trace.events.iter().filter_map(|e| e.cpu).collect();
                (!measured.is_empty()).then(|| measured.iter().sum::<Duration>().as_secs_f64())
            },
            allocated: {
                let counted: Vec<u64> = trace.events.iter().filter_map(|e| e.allocated).collect();
                (!counted.is_empty()).then(|| counted.iter().sum())
            },
            serial_s: serial.map(|s| s.as_secs_f64()),
            speedup,
            efficiency: speedup.map(|s| s / workers as f64),
            utilisation: if wall > 0.0 {
                busy / (workers as f64 * wall)
            } else {
                0.0
            },
            queue_wait_p50_ms: percentile(&waits, 50.0).as_secs_f64() * 1e3,
            queue_wait_p99_ms: percentile(&waits, 99.0).as_secs_f64() * 1e3,
            peak_rss: trace.peak_rss_by_worker(),
        }
    }

    /// The report as a Markdown table.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from("| measure | value |\n| --- | ---: |\n");
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "| {k} | {v} |");
        };
        row(
            "tasks (failed)",
            format!("{} ({})", self.tasks, self.failed),
        );
        row("workers", self.workers.to_string());
        row("wall time", format!("{:.3} s", self.wall_s));
        row("busy (run) time", format!("{:.3} s", self.busy_s));
        if let Some(cpu) = self.cpu_s {
            row("CPU time of the tasks", format!("{cpu:.3} s"));
        }
        if let Some(bytes) = self.allocated {
            row(
                "bytes the tasks allocated",
                format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20)),
            );
        }
        if let Some(serial) = self.serial_s {
            row("serial time", format!("{serial:.3} s"));
        }
        if let Some(sp) = self.speedup {
            row("speedup", format!("{sp:.2}x"));
        }
        if let Some(e) = self.efficiency {
            row("parallel efficiency", format!("{:.0}%", e * 100.0));
        }
        row("utilisation", format!("{:.0}%", self.utilisation * 100.0));
        row(
            "queue wait p50 / p99",
            format!(
                "{:.3} / {:.3} ms",
                self.queue_wait_p50_ms, self.queue_wait_p99_ms
            ),
        );
        for (w, rss) in &self.peak_rss {
            row(
                &format!("peak RSS of {w}"),
                format!("{:.1} MiB", *rss as f64 / (1 << 20) as f64),
            );
        }
        s
    }
}

/// Fits Amdahl's law, speedup(n) = 1 / (s + (1 - s) / n), to measured
/// `(workers, speedup)` points; the serial fraction `s` in [0, 1].
///
/// Linearised, 1/S - 1/n = s (1 - 1/n): least squares through the origin.
/// `None` without a point at more than one worker.
pub fn fit_amdahl(points: &[(usize, f64)]) -> Option<f64> {
    let (mut num, mut den) = (0.0, 0.0);
    for &(n, sp) in points {
        if n < 2 || sp <= 0.0 {
            continue;
        }
        let x = 1.0 - 1.0 / n as f64;
        let y = 1.0 / sp - 1.0 / n as f64;
        num += x * y;
        den += x * x;
    }
    (den > 0.0).then(|| (num / den).clamp(0.0, 1.0))
}
