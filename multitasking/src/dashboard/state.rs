//! What the dashboard shows, computed here from a trace and a cluster's
//! status, so that the page only draws: workers and slots, counts, the
//! throughput and latency of the last minutes, a timeline of the last
//! seconds with a lane per worker, the slowest tasks and the dead letters.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::trace::Trace;

/// Width of one throughput / latency bucket.
pub(crate) const BUCKET: Duration = Duration::from_secs(5);
/// Buckets shown: five minutes.
pub(crate) const BUCKETS: usize = 60;
/// Seconds of the timeline.
pub(crate) const TIMELINE: Duration = Duration::from_secs(30);
/// Rows of the slowest-tasks table.
const SLOWEST: usize = 10;

/// One frame of the dashboard.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct State {
    /// What is watched: `local run` or a broker URL without its password.
    pub(crate) source: String,
    /// Seconds since the dashboard started.
    pub(crate) uptime_s: f64,
    /// Tasks waiting for a worker, when known (a cluster).
    pub(crate) queue_depth: Option<u64>,
    /// Tasks running now.
    pub(crate) in_flight: u64,
    /// Tasks finished, and how many of them failed.
    pub(crate) done: u64,
    /// Failed tasks among `done`.
    pub(crate) failed: u64,
    /// Tasks finished per second over the last bucket.
    pub(crate) rate: f64,
    /// Workers (threads, processes or cluster workers), by name.
    pub(crate) workers: Vec<WorkerView>,
    /// Tasks finished per second, one value per bucket, oldest first.
    pub(crate) throughput: Vec<f64>,
    /// Median run time per bucket, in ms (`null` for an empty bucket).
    pub(crate) latency_p50_ms: Vec<Option<f64>>,
    /// 95th percentile run time per bucket, in ms.
    pub(crate) latency_p95_ms: Vec<Option<f64>>,
    /// The last seconds, a lane per worker.
    pub(crate) timeline: Timeline,
    /// The slowest tasks seen.
    pub(crate) slowest: Vec<SlowTask>,
    /// Dead letters in the stream, when a cluster is watched.
    pub(crate) dead_letters: Option<u64>,
    /// The most recent dead letters, newest first.
    pub(crate) dead: Vec<DeadView>,
    /// True if the page may discard dead letters.
    pub(crate) actions: bool,
    /// Why some of the figures are missing, if they are.
    pub(crate) notes: Vec<String>,
}

/// A worker as the dashboard shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct WorkerView {
    /// Its name: a thread name, `pid N`, or a cluster consumer.
    pub(crate) name: String,
    /// Its host and pid, when known.
    pub(crate) at: String,
    /// Alive (a cluster worker's heartbeat lives; a local worker ran a
    /// task in the timeline window).
    pub(crate) alive: bool,
    /// Seconds since its heartbeat, for a cluster worker.
    pub(crate) heartbeat_s: Option<f64>,
    /// Its slots and how many are busy, for a cluster worker.
    pub(crate) slots: Option<u64>,
    /// Tasks it is running (cluster: at its last heartbeat).
    pub(crate) busy: Option<u64>,
    /// Tasks it finished, as traced.
    pub(crate) tasks: u64,
    /// Its peak resident set, when known, in bytes.
    pub(crate) peak_rss: Option<u64>,
    /// The time it spent running tasks over the timeline window, 0..1,
    /// for a worker whose tasks are traced.
    pub(crate) utilisation: Option<f64>,
}

/// The timeline of the last seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Timeline {
    /// Its width in seconds.
    pub(crate) window_s: f64,
    /// One lane per worker, in the order of `State::workers`.
    pub(crate) lanes: Vec<Lane>,
}

/// One worker's tasks in the timeline.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Lane {
    /// The worker.
    pub(crate) worker: String,
    /// `[start, end, ok]`, seconds before now (start >= end >= 0).
    pub(crate) bars: Vec<(f64, f64, bool)>,
}

/// A row of the slowest-tasks table.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct SlowTask {
    /// The task's name.
    pub(crate) task: String,
    /// Where it ran.
    pub(crate) worker: String,
    /// Its run time, ms.
    pub(crate) run_ms: f64,
    /// How long it waited for a worker, ms.
    pub(crate) queue_ms: f64,
    /// The CPU time it used, ms, when measured.
    pub(crate) cpu_ms: Option<f64>,
    /// Its peak resident set, bytes, when known.
    pub(crate) peak_rss: Option<u64>,
    /// The bytes it allocated, when counted.
    pub(crate) allocated: Option<u64>,
    /// A preview of its input, when known.
    pub(crate) input: Option<String>,
    /// False if it failed.
    pub(crate) ok: bool,
}

/// A dead letter as the dashboard shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct DeadView {
    /// Its entry id in the dead-letter stream (what a discard names).
    pub(crate) entry: String,
    /// The task's name, as the entry gave it.
    pub(crate) task: String,
    /// Why it is dead.
    pub(crate) reason: String,
    /// Deliveries before it was given up.
    pub(crate) deliveries: String,
    /// The worker that gave it up.
    pub(crate) worker: String,
    /// True if it holds its task entry, so that it can be requeued.
    pub(crate) requeueable: bool,
}

/// Fills the parts of `state` a trace gives: counts, workers, buckets, the
/// timeline and the slowest tasks. `now` is the trace's wall time.
pub(crate) fn from_trace(state: &mut State, trace: &Trace) {
    let now = trace.wall;
    let window = TIMELINE.min(now.max(Duration::from_millis(1)));
    state.done = trace.events.len() as u64;
    state.failed = trace.events.iter().filter(|e| !e.ok).count() as u64;

    // Buckets back from now: bucket BUCKETS - 1 ends at now.
    let mut counts = vec![0u64; BUCKETS];
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); BUCKETS];
    let span = BUCKET.as_secs_f64();
    for e in &trace.events {
        let ago = now.saturating_sub(e.finished).as_secs_f64();
        let back = (ago / span) as usize;
        if back < BUCKETS {
            let i = BUCKETS - 1 - back;
            counts[i] += 1;
            runs[i].push(e.run_time().as_secs_f64() * 1e3);
        }
    }
    // The newest bucket is partly over: its rate counts the time it had.
    let newest = (now.as_secs_f64() % span).max(1e-3).min(span);
    state.throughput = counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let width = if i == BUCKETS - 1 { newest } else { span };
            c as f64 / width
        })
        .collect();
    state.rate = state.throughput.last().copied().unwrap_or(0.0);
    state.latency_p50_ms = runs.iter_mut().map(|r| percentile(r, 0.50)).collect();
    state.latency_p95_ms = runs.iter_mut().map(|r| percentile(r, 0.95)).collect();

    // Workers and their lanes, by name.
    let mut by_worker: BTreeMap<&str, (WorkerView, Lane)> = BTreeMap::new();
    for e in &trace.events {
        let (view, lane) = by_worker.entry(&e.worker).or_insert_with(|| {
            (
                WorkerView {
                    name: e.worker.clone(),
                    at: format!("{} pid {}", e.host, e.pid),
                    ..WorkerView::default()
                },
                Lane {
                    worker: e.worker.clone(),
                    bars: Vec::new(),
                },
            )
        });
        view.tasks += 1;
        if let Some(rss) = e.peak_rss {
            view.peak_rss = Some(view.peak_rss.map_or(rss, |p| p.max(rss)));
        }
        let end = now.saturating_sub(e.finished);
        if end < window {
            let start = now.saturating_sub(e.started).min(window);
            view.alive = true;
            let busy = (start - end).as_secs_f64() / window.as_secs_f64();
            view.utilisation = Some(view.utilisation.unwrap_or(0.0) + busy);
            lane.bars
                .push((start.as_secs_f64(), end.as_secs_f64(), e.ok));
        }
    }
    for (view, _) in by_worker.values_mut() {
        view.utilisation = view.utilisation.map(|u| u.min(1.0));
    }
    let (workers, lanes): (Vec<_>, Vec<_>) = by_worker.into_values().unzip();
    state.workers = workers;
    state.timeline = Timeline {
        window_s: window.as_secs_f64(),
        lanes,
    };

    let mut slow: Vec<_> = trace.events.iter().collect();
    slow.sort_by_key(|e| std::cmp::Reverse(e.run_time()));
    state.slowest = slow
        .into_iter()
        .take(SLOWEST)
        .map(|e| SlowTask {
            task: e.task.clone(),
            worker: e.worker.clone(),
            run_ms: e.run_time().as_secs_f64() * 1e3,
            queue_ms: e.queue_wait().as_secs_f64() * 1e3,
            cpu_ms: e.cpu.map(|c| c.as_secs_f64() * 1e3),
            peak_rss: e.peak_rss,
            allocated: e.allocated,
            input: e.input.clone(),
            ok: e.ok,
        })
        .collect();
}

/// The `q` quantile of `values` (sorted here), or `None` if empty.
fn percentile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let at = ((values.len() - 1) as f64 * q).round() as usize;
    Some(values[at])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TaskEvent;

    fn event(worker: &str, started_ms: u64, finished_ms: u64, ok: bool) -> TaskEvent {
        TaskEvent {
            task: "t".into(),
            id: 0,
            worker: worker.into(),
            pid: 7,
            host: "h".into(),
            submitted: Duration::from_millis(started_ms.saturating_sub(5)),
            started: Duration::from_millis(started_ms),
            finished: Duration::from_millis(finished_ms),
            ok,
            peak_rss: Some(1 << 20),
            cpu: Some(Duration::from_millis(finished_ms - started_ms)),
            input: Some(format!("{started_ms}")),
            allocated: Some(4096),
        }
    }

    #[test]
    fn a_trace_becomes_lanes_buckets_and_a_slowest_table() {
        let trace = Trace {
            events: vec![
                event("a", 1_000, 1_100, true),
                event("b", 1_000, 1_500, true),
                event("a", 1_200, 1_250, false),
            ],
            wall: Duration::from_secs(2),
        };
        let mut s = State::default();
        from_trace(&mut s, &trace);
        assert_eq!((s.done, s.failed), (3, 1));
        assert_eq!(s.workers.len(), 2);
        assert_eq!(s.workers[0].name, "a");
        assert_eq!(s.workers[0].tasks, 2);
        assert_eq!(s.timeline.lanes[0].bars.len(), 2);
        // All three finished in the newest bucket, two seconds into it.
        assert_eq!(s.throughput.len(), BUCKETS);
        assert!((s.rate - 1.5).abs() < 1e-9, "{}", s.rate);
        assert_eq!(s.slowest[0].worker, "b");
        assert!((s.slowest[0].run_ms - 500.0).abs() < 1e-9);
        assert_eq!(s.latency_p50_ms[BUCKETS - 1], Some(100.0));
        // The bar of b's task: it started 1 s ago and ended 0.5 s ago.
        assert_eq!(s.timeline.lanes[1].bars[0], (1.0, 0.5, true));
    }
}
