//! Tracing every executor: when, where and for how long each task ran.
//!
//! A [`Tracer`] is handed to a pool's builder (`.tracer(t)`); the pool then
//! records one [`TaskEvent`] per task: when it was submitted, started and
//! finished (as offsets from the tracer's epoch), on which worker (a thread
//! name or a pid) on which host, and the worker's peak RSS for process
//! workers. A disabled tracer (the default) costs one branch per task and
//! reads no clock.
//!
//! [`Tracer::snapshot`] gives a [`Trace`], which the exporters turn into a
//! Chrome trace for Perfetto ([`chrome`]), an SVG timeline and a speedup
//! chart ([`svg`]), and a speedup / efficiency / Amdahl report ([`report`]).

pub mod chrome;
pub mod report;
pub mod svg;
#[cfg(test)]
mod test;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One task's life, as a tracer saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// The task's name.
    pub task: String,
    /// A number unique within the tracer.
    pub id: u64,
    /// The worker that ran it: a thread name, or `pid N`.
    pub worker: String,
    /// The process that ran it.
    pub pid: u32,
    /// The host that ran it.
    pub host: String,
    /// When it was submitted, since the epoch.
    pub submitted: Duration,
    /// When a worker started it, since the epoch.
    pub started: Duration,
    /// When it finished, since the epoch.
    pub finished: Duration,
    /// False if it failed.
    pub ok: bool,
    /// The worker's peak resident set at the end, in bytes, when known.
    pub peak_rss: Option<u64>,
    /// The CPU time the task used (its thread's CPU clock), when measured.
    #[serde(default)]
    pub cpu: Option<Duration>,
    /// A short preview of the task's input (as JSON), when known.
    #[serde(default)]
    pub input: Option<String>,
    /// The bytes its thread allocated while it ran, when the program's
    /// global allocator is [`CountingAlloc`](crate::alloc::CountingAlloc).
    #[serde(default)]
    pub allocated: Option<u64>,
}

impl TaskEvent {
    /// Time between submit and start.
    pub fn queue_wait(&self) -> Duration {
        self.started.saturating_sub(self.submitted)
    }

    /// Time between start and finish.
    pub fn run_time(&self) -> Duration {
        self.finished.saturating_sub(self.started)
    }
}

/// The worker of a span recorded by a local pool.
#[derive(Debug, Clone)]
pub(crate) enum SpanWorker {
    /// A thread, by name (cached by its pool: no allocation per task).
    Named(Arc<str>),
    /// A fixed name.
    Static(&'static str),
    /// A worker process: `pid N`.
    Pid,
}

/// A task recorded by a local pool, kept raw until a snapshot: recording
/// must be cheap, since it runs before the task's future resolves.
#[derive(Debug)]
pub(crate) struct Span {
    /// The task's name.
    pub(crate) task: &'static str,
    /// The worker that ran it.
    pub(crate) worker: SpanWorker,
    /// The process that ran it.
    pub(crate) pid: u32,
    /// Submitted, started, finished.
    pub(crate) times: (Instant, Instant, Instant),
    /// False if it failed.
    pub(crate) ok: bool,
    /// The worker's peak RSS, when known.
    pub(crate) peak_rss: Option<u64>,
    /// The CPU time the task used, when measured.
    pub(crate) cpu: Option<Duration>,
    /// A preview of its input, when one was made.
    pub(crate) input: Option<String>,
    /// The bytes it allocated, when counted.
    pub(crate) allocated: Option<u64>,
}

/// The longest input preview, in characters.
const PREVIEW: usize = 60;

/// A short preview of `value` as JSON, for traces: cut at [`PREVIEW`]
/// characters with an ellipsis. Made only when a tracer records.
pub(crate) fn preview<V: Serialize + ?Sized>(value: &V) -> String {
    let mut s = serde_json::to_string(value).unwrap_or_else(|e| format!("<{e}>"));
    if let Some((at, _)) = s.char_indices().nth(PREVIEW) {
        s.truncate(at);
        s.push('…');
    }
    s
}

/// A preview of a batch's inputs: its one item as [`preview`] gives it
/// (what a `map` of chunk size 1 sends), else the whole list.
pub(crate) fn preview_batch<V: Serialize>(items: &[V]) -> String {
    match items {
        [one] => preview(one),
        many => preview(many),
    }
}

/// The CPU time this thread has used so far.
pub(crate) fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A recorded event, whole or raw.
#[derive(Debug)]
enum Entry {
    /// From [`Tracer::record`].
    Event(Box<TaskEvent>),
    /// From a local pool, with its id.
    Span(u64, Span),
}

/// What a tracer shares between its clones.
#[derive(Debug)]
struct Collector {
    /// Offsets are measured from here.
    epoch: Instant,
    /// The recorded events.
    events: Mutex<Vec<Entry>>,
    /// Next event id.
    next_id: AtomicU64,
    /// This host's name, read once.
    host: String,
}

impl Collector {
    /// The [`TaskEvent`] of an entry.
    fn event(&self, e: &Entry) -> TaskEvent {
        match e {
            Entry::Event(e) => (**e).clone(),
            Entry::Span(id, s) => {
                let (submitted, started, finished) = s.times;
                TaskEvent {
                    task: s.task.to_string(),
                    id: *id,
                    worker: match &s.worker {
                        SpanWorker::Named(n) => n.to_string(),
                        SpanWorker::Static(n) => n.to_string(),
                        SpanWorker::Pid => format!("pid {}", s.pid),
                    },
                    pid: s.pid,
                    host: self.host.clone(),
                    submitted: submitted.saturating_duration_since(self.epoch),
                    started: started.saturating_duration_since(self.epoch),
                    finished: finished.saturating_duration_since(self.epoch),
                    ok: s.ok,
                    peak_rss: s.peak_rss,
                    cpu: s.cpu,
                    input: s.input.clone(),
                    allocated: s.allocated,
                }
            }
        }
    }
}

/// Collects [`TaskEvent`]s from one or more pools. Cheap to clone; a
/// disabled tracer (the [`Default`]) records nothing.
#[derive(Debug, Clone, Default)]
pub struct Tracer {
    /// `None` when disabled.
    inner: Option<Arc<Collector>>,
}

impl Tracer {
    /// An enabled tracer whose epoch is now.
    pub fn new() -> Tracer {
        Tracer {
            inner: Some(Arc::new(Collector {
                epoch: Instant::now(),
                events: Mutex::new(Vec::new()),
                next_id: AtomicU64::new(0),
                host: crate::info::host_name(),
            })),
        }
    }

    /// A tracer that records nothing (the default).
    pub fn disabled() -> Tracer {
        Tracer { inner: None }
    }

    /// True if it records.
    #[inline]
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The instant offsets are measured from (now, for a disabled tracer).
    pub fn epoch(&self) -> Instant {
        self.inner.as_ref().map_or_else(Instant::now, |c| c.epoch)
    }

    /// `t` as an offset from the epoch.
    pub fn since_epoch(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.epoch())
    }

    /// This host's name as the tracer records it.
    pub fn host(&self) -> String {
        self.inner
            .as_ref()
            .map_or_else(crate::info::host_name, |c| c.host.clone())
    }

    /// Records `event`, giving it the next id; a no-op when disabled.
    pub fn record(&self, mut event: TaskEvent) {
        if let Some(c) = &self.inner {
            // Relaxed: ids only need to be unique, not ordered with anything.
            event.id = c.next_id.fetch_add(1, Ordering::Relaxed);
            c.events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Entry::Event(Box::new(event)));
        }
    }

    /// Records a task run by a local pool: a lock and a push; names are
    /// filled in by [`Tracer::snapshot`].
    pub(crate) fn record_span(&self, span: Span) {
        if let Some(c) = &self.inner {
            // Relaxed: ids only need to be unique, not ordered with anything.
            let id = c.next_id.fetch_add(1, Ordering::Relaxed);
            c.events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Entry::Span(id, span));
        }
    }

    /// The events so far, with the wall time from the epoch to now.
    pub fn snapshot(&self) -> Trace {
        match &self.inner {
            None => Trace::default(),
            Some(c) => Trace {
                events: c
                    .events
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|e| c.event(e))
                    .collect(),
                wall: c.epoch.elapsed(),
            },
        }
    }

    /// Forgets the events recorded so far.
    pub fn clear(&self) {
        if let Some(c) = &self.inner {
            c.events.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}

/// The events of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// One per task, in the order they were recorded.
    pub events: Vec<TaskEvent>,
    /// Wall time the trace covers.
    pub wall: Duration,
}

impl Trace {
    /// The trace of exactly the span its events cover: from the first
    /// submit to the last finish, with offsets shifted to start at zero.
    pub fn trimmed(&self) -> Trace {
        let Some(start) = self.events.iter().map(|e| e.submitted).min() else {
            return Trace::default();
        };
        let end = self
            .events
            .iter()
            .map(|e| e.finished)
            .max()
            .unwrap_or(start);
        Trace {
            events: self
                .events
                .iter()
                .map(|e| TaskEvent {
                    submitted: e.submitted - start,
                    started: e.started.saturating_sub(start),
                    finished: e.finished.saturating_sub(start),
                    ..e.clone()
                })
                .collect(),
            wall: end - start,
        }
    }

    /// The workers, sorted by name.
    pub fn workers(&self) -> Vec<String> {
        self.busy_by_worker().into_keys().collect()
    }

    /// Busy time per worker.
    pub fn busy_by_worker(&self) -> BTreeMap<String, Duration> {
        let mut m = BTreeMap::new();
        for e in &self.events {
            *m.entry(e.worker.clone()).or_insert(Duration::ZERO) += e.run_time();
        }
        m
    }

    /// Total busy time over all workers: the CPU time of the tasks.
    pub fn busy(&self) -> Duration {
        self.events.iter().map(TaskEvent::run_time).sum()
    }

    /// Peak RSS per worker, where known.
    pub fn peak_rss_by_worker(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for e in &self.events {
            if let Some(rss) = e.peak_rss {
                let v = m.entry(e.worker.clone()).or_insert(0);
                *v = rss.max(*v);
            }
        }
        m
    }
}
