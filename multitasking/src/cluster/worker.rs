//! The cluster worker: fetches tasks from a queue's stream, runs them in a
//! local pool (worker processes by default, so a crash costs one task),
//! and writes each result back.
//!
//! Three threads, each with its own connection:
//! - **fetch** (the caller of [`Worker::run`]): `XREADGROUP ... COUNT free
//!   BLOCK`, only as many tasks as there are free slots (after a failed
//!   read, first the entries already delivered to it, whose reply may have
//!   been lost); each task is checked (known name, same signature) and
//!   handed to the pool, if the worker's allow-list admits it (see
//!   [`WorkerBuilder::allow`]; a refused task is dead-lettered);
//! - **complete**: for a batch of finished tasks, one script per client
//!   that XADDs their results packed in one entry, then XACKs and XDELs
//!   the tasks, so a result is never acknowledged without being stored (a
//!   client stream that refuses the write gets its tasks dead-lettered);
//!   and, for a task that has run `NOTICE_DELAY` (2 ms), a "started"
//!   notice to its client (a task that finishes sooner sends only its
//!   result);
//! - **maintain**: the heartbeat key (with a TTL), lease renewal of running
//!   tasks (`XCLAIM ... JUSTID`), stopping tasks past their timeouts or
//!   whose clients asked (the queue's terminate set), and the reclaim of
//!   tasks idle past the visibility timeout in other consumers' hands
//!   (their worker died): claimed and run again, or, past
//!   `max_deliveries`, dead-lettered with the reason and failed for their
//!   client.
//!
//! Stopping (the [`StopHandle`], or SIGINT/SIGTERM in `multitask worker`)
//! drains: no new task is fetched, running ones finish and are written.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::cluster::allow::Allowed;
use crate::cluster::broker::{
    entries, is_permanent, pack_results, stream_reply, Broker, Entry, Link, Packed, ToPack,
};
use crate::cluster::client::random;
use crate::cluster::keys::{Keys, GROUP, RESULTS_TTL};
use crate::cluster::seal::{self, Seal};
use crate::cluster::status::SpanRecord;
use crate::error::{Error, ExitCause, TaskError};
use crate::executor::RawExecutor;
use crate::future::TaskFuture;
use crate::process::ProcessPool;
use crate::sync::lock_std as lock;
use crate::task;

/// Stops a running [`Worker`]: it drains and returns from `run`.
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// Asks the worker to stop after its running tasks.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// True once a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Builds a [`Worker`].
pub struct WorkerBuilder {
    /// The broker URL (its `?queue=` names the queue).
    url: String,
    /// Overrides the URL's queue.
    queue: Option<String>,
    /// Tasks at once.
    concurrency: usize,
    /// Where tasks run; default a process pool of `concurrency` workers.
    pool: Option<Arc<dyn RawExecutor>>,
    /// Idle time after which another worker may take a task over.
    visibility: Duration,
    /// Deliveries after which a task is dead-lettered.
    max_deliveries: u32,
    /// How long the broker may be unreachable before a result is given up.
    broker_timeout: Duration,
    /// The tasks to serve, as given; `None` for every one not dangerous.
    allow: Option<Vec<String>>,
    /// True if dangerous tasks may run.
    dangerous: bool,
    /// The queue's shared keys (the first signs); none for unsigned.
    keys: Vec<Vec<u8>>,
    /// Measure each task's CPU time and peak RSS (default pool only).
    measure: bool,
    /// Most tasks held beyond those running.
    prefetch: usize,
    /// Publish each finished task to the queue's span stream.
    spans: bool,
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("url", &crate::executor::redact(&self.url))
            .field("queue", &self.queue)
            .field("concurrency", &self.concurrency)
            .field("visibility", &self.visibility)
            .field("max_deliveries", &self.max_deliveries)
            .field("allow", &self.allow)
            .field("dangerous", &self.dangerous)
            .field("keys", &self.keys.len())
            .field("measure", &self.measure)
            .field("prefetch", &self.prefetch)
            .field("spans", &self.spans)
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// Serves only these tasks: each a registered name (the function's
    /// module path, `my_app::jobs::resize`) or a suffix of one at a `::`
    /// that no other task has (`resize`). Any other task is dead-lettered
    /// with the reason, and its future fails with
    /// [`TaskError::NotAllowed`]. [`WorkerBuilder::build`] fails for a
    /// name that matches no task or several, and for a task marked
    /// dangerous unless [`WorkerBuilder::allow_dangerous`] is set.
    /// Default: every registered task not marked dangerous.
    pub fn allow<I, S>(mut self, tasks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allow = Some(tasks.into_iter().map(Into::into).collect());
        self
    }

    /// Also serves tasks marked dangerous (`#[multitasking::task(dangerous)]`,
    /// such as `multitask run`'s `run_shell`, which runs any shell command
    /// its client sends): those the allow-list names, or all of them
    /// without one. `multitask worker --allow-shell` sets it. Default:
    /// false, and anyone who can write to the queue can't make this worker
    /// run a shell.
    pub fn allow_dangerous(mut self, yes: bool) -> Self {
        self.dangerous = yes;
        self
    }

    /// Takes only tasks signed with one of these keys (HMAC-SHA256, shared
    /// with the queue's clients: [`ClusterPool::with_keys`](crate::ClusterPool::with_keys)),
    /// and signs its results with the first. An unsigned, forged, altered,
    /// replayed or expired task is dead-lettered with the reason, and does
    /// not run. Several keys rotate one out: give the new one first and the
    /// old one after until every client signs with the new.
    /// [`WorkerBuilder::build`] fails for a key shorter than 16 bytes.
    /// Default: none, and the worker takes unsigned tasks from anyone who
    /// can write to the queue.
    pub fn keys<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        self.keys = keys.into_iter().map(|k| k.as_ref().to_vec()).collect();
        self
    }

    /// Most tasks the worker holds beyond the `concurrency` it runs, queued
    /// in its local pool: it fetches ahead so that the pool never waits for
    /// a round trip to the broker, and fetches and results travel in
    /// batches. How far ahead adapts to the tasks: enough to cover about
    /// 5 ms at the rate tasks finish, up to this cap, so that short tasks
    /// run in batches of hundreds while long ones are not hoarded (a worker
    /// busy for seconds holds nothing beyond what it runs, and an idle
    /// worker takes the rest). A held task counts as taken: its client's
    /// `cancel` returns false (`terminate` stops it, queued or running).
    /// Default: 256; 0 fetches only what can start at once.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }

    /// Measures each task's CPU time and peak RSS in its worker process
    /// ([`ProcessPoolBuilder::measure_usage`](crate::ProcessPoolBuilder::measure_usage)),
    /// for the client's future ([`TaskFuture::usage`]), its trace, and the
    /// span stream. Applies to the default process pool; a pool given by
    /// [`WorkerBuilder::pool`] measures as it was built. Default: off (it
    /// costs some tens of microseconds per task).
    pub fn measure_usage(mut self, yes: bool) -> Self {
        self.measure = yes;
        self
    }

    /// Publishes every finished task (name, times, outcome, CPU time and
    /// peak RSS when measured, an input preview for tasks that ran 1 ms or
    /// more or failed) to the queue's span stream, `mt:{q}:spans`, capped
    /// at about 1000 entries of up to 256 tasks: what
    /// [`recent_tasks`](crate::cluster::recent_tasks) and the dashboard's
    /// timeline read. One more command per round trip of results. The
    /// stream is advice, not evidence: anyone who can write to the queue
    /// can write there too. Default: on.
    pub fn publish_spans(mut self, yes: bool) -> Self {
        self.spans = yes;
        self
    }

    /// The queue to serve (default: the URL's `?queue=`, else `default`).
    pub fn queue(mut self, q: impl Into<String>) -> Self {
        self.queue = Some(q.into());
        self
    }

    /// Tasks at once (default: usable CPUs); on a Redis Cluster, per shard
    /// (each shard is served as a queue of its own, and the default pool
    /// has a process for every slot of every shard). Zero is refused by
    /// [`WorkerBuilder::build`].
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Runs tasks on `pool` instead of a process pool of `concurrency`
    /// workers (a `ThreadPool` trades crash isolation for speed).
    pub fn pool(mut self, pool: impl RawExecutor + 'static) -> Self {
        self.pool = Some(Arc::new(pool));
        self
    }

    /// A task idle this long in a consumer's hands is taken over by
    /// another worker (its worker is presumed dead). Running tasks renew
    /// their lease well within it. Default: 30 s.
    pub fn visibility_timeout(mut self, d: Duration) -> Self {
        self.visibility = d.max(Duration::from_millis(300));
        self
    }

    /// A task delivered this many times without completing goes to the
    /// dead-letter stream. Default: 3.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// How long the broker may be unreachable before a finished task's
    /// result is given up (the task stays pending in the group, and a
    /// worker takes it over once the broker is back). Default: 30 s.
    pub fn broker_timeout(mut self, d: Duration) -> Self {
        self.broker_timeout = d;
        self
    }

    /// Connects and prepares the queue (its consumer group). Fails for a
    /// concurrency of zero: such a worker would never fetch a task.
    pub fn build(self) -> Result<Worker, Error> {
        if self.concurrency == 0 {
            return Err(Error::Config(
                "a cluster worker's concurrency must be at least 1, got 0".to_string(),
            ));
        }
        let url = match &self.queue {
            Some(q) => with_queue(&self.url, q),
            None => self.url.clone(),
        };
        let allowed = Allowed::resolve(self.allow.as_deref(), self.dangerous)?;
        let seal = Seal::new(&self.keys)?;
        // On a Redis Cluster, a core per shard, over one local pool.
        let urls = crate::cluster::shards::shard_urls(&url)?.unwrap_or_else(|| vec![url.clone()]);
        let mut opened = Vec::with_capacity(urls.len());
        for u in &urls {
            let broker = Broker::open(u)?;
            let keys = Keys::new(&broker.url.queue);
            let mut probe = broker.connect(Duration::from_secs(5))?;
            ensure_group(&mut probe, &keys).map_err(|e| broker.error(&e))?;
            opened.push((broker, keys));
        }
        // Each shard is served as a queue of its own, with `concurrency`
        // slots: the default pool runs them all at once.
        let pool: Arc<dyn RawExecutor> = match self.pool {
            Some(p) => p,
            None => Arc::new(
                ProcessPool::builder()
                    .max_workers(self.concurrency * urls.len())
                    .measure_usage(self.measure)
                    .build()?,
            ),
        };
        let host = crate::info::host_name();
        let pid = std::process::id();
        let stop = StopHandle::default();
        let mut cores: Vec<Arc<Core>> = opened
            .into_iter()
            .map(|(broker, keys)| {
                Arc::new(Core {
                    consumer: format!("{host}-{pid}-{:x}", random()),
                    me: format!("{host} pid {pid}"),
                    broker,
                    keys,
                    pool: pool.clone(),
                    concurrency: self.concurrency,
                    inflight: Mutex::new(HashMap::new()),
                    freed: Condvar::new(),
                    stop: stop.clone(),
                    visibility: self.visibility,
                    max_deliveries: self.max_deliveries,
                    broker_timeout: self.broker_timeout,
                    allowed: allowed.clone(),
                    seal: seal.clone(),
                    seen: Mutex::new(Seen::default()),
                    spans: self.spans,
                    prefetch: self.prefetch,
                    finished: AtomicU64::new(0),
                })
            })
            .collect();
        let core = cores.remove(0);
        Ok(Worker {
            core,
            others: cores,
        })
    }
}

/// A task a worker holds.
#[derive(Debug, Clone)]
struct Lease {
    /// The client's call id.
    id: String,
    /// The client's result stream.
    reply: String,
    /// The task's name.
    task: String,
}

/// A task's encoded input and how to preview it.
type KeptInput = (Vec<u8>, fn(&[u8]) -> String);

/// A task in a worker's hands.
#[derive(Debug)]
struct Held {
    /// Its lease.
    lease: Lease,
    /// When the worker took it.
    since: Instant,
    /// True once its client was told it started.
    announced: bool,
    /// The local pool's future, to stop the task by; set once submitted.
    run: Option<Arc<TaskFuture<Vec<u8>>>>,
    /// The task's time limit, carried in its entry, counted from `since`.
    timeout: Option<Duration>,
    /// Why the worker is stopping it, once it is: its outcome says so.
    stopping: Option<Stop>,
    /// Its input, for a preview in the span stream, and how to make one
    /// (kept when spans are published and the input is small).
    input: Option<KeptInput>,
    /// When the worker first saw it running in the local pool (a held
    /// task may wait there behind others).
    running_since: Option<Instant>,
}

/// Why a worker stops a task it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Its client asked (`TaskFuture::terminate`, `terminate_workers`).
    Terminated,
    /// It ran past its `task_timeout`.
    TimedOut,
}

/// How often a worker holding tasks looks for stop requests.
const STOP_POLL: Duration = Duration::from_millis(100);

/// How long a task runs before its client is told it started. A task that
/// finishes sooner (most small ones) sends its result alone: a third fewer
/// stream entries per task. The notice only informs (`running()`, traces):
/// a cancel asks the broker, where the worker's claim already shows.
const NOTICE_DELAY: Duration = Duration::from_millis(2);

/// How often a held task still queued in the local pool is looked at for
/// its started notice.
const QUEUED_RECHECK: Duration = Duration::from_millis(10);

/// How far ahead a worker fetches: enough tasks to cover [`AHEAD_FOR`] at
/// the rate they finish, measured over windows of [`AHEAD_WINDOW`] and
/// smoothed, up to a cap.
struct Ahead {
    /// The cap.
    max: usize,
    /// Tasks per second, smoothed.
    rate: f64,
    /// The window's start and the finished count then.
    window: (Instant, u64),
}

/// The time the tasks held beyond those running should cover.
const AHEAD_FOR: Duration = Duration::from_millis(5);

/// The window over which the finish rate is measured.
const AHEAD_WINDOW: Duration = Duration::from_millis(50);

impl Ahead {
    fn new(max: usize) -> Ahead {
        Ahead {
            max,
            rate: 0.0,
            window: (Instant::now(), 0),
        }
    }

    /// Tasks to hold beyond those running, given the finished count now.
    fn tasks(&mut self, finished: u64) -> usize {
        let (since, at) = self.window;
        let elapsed = since.elapsed();
        if elapsed >= AHEAD_WINDOW {
            let rate = finished.saturating_sub(at) as f64 / elapsed.as_secs_f64();
            // Up at once (a burst of short tasks), down by halves (a long
            // task after short ones: the held ones drain as it runs).
            self.rate = if rate > self.rate {
                rate
            } else {
                (self.rate + rate) / 2.0
            };
            self.window = (Instant::now(), finished);
        }
        ((self.rate * AHEAD_FOR.as_secs_f64()) as usize).min(self.max)
    }
}

/// What the completer hears.
#[derive(Debug)]
enum Note {
    /// A task finished.
    Done(Box<Done>),
    /// New tasks are held: a started notice may fall due.
    Held,
}

/// A finished task, on its way to the completer.
#[derive(Debug)]
struct Done {
    /// The task stream entry.
    entry: String,
    /// Its lease.
    lease: Lease,
    /// The encoded chunk, or why it failed.
    outcome: Result<Vec<u8>, TaskError>,
    /// The local pool's future, for what the task used (read outside its
    /// lock, after its done callback).
    run: Option<Arc<TaskFuture<Vec<u8>>>>,
    /// What the task used, once read from `run`.
    usage: Option<crate::TaskUsage>,
}

/// What the worker's threads share.
struct Core {
    /// The broker.
    broker: Broker,
    /// The queue's keys.
    keys: Keys,
    /// This worker's consumer name (fresh per process, apalis#504).
    consumer: String,
    /// This worker, as errors name it.
    me: String,
    /// Where tasks run.
    pool: Arc<dyn RawExecutor>,
    /// Tasks at once.
    concurrency: usize,
    /// Tasks held, by stream entry id.
    inflight: Mutex<HashMap<String, Held>>,
    /// Signalled when a task leaves `inflight`.
    freed: Condvar,
    /// Set to drain.
    stop: StopHandle,
    /// The visibility timeout.
    visibility: Duration,
    /// Deliveries before the dead-letter stream.
    max_deliveries: u32,
    /// How long the broker may be unreachable before a result is given up.
    broker_timeout: Duration,
    /// The tasks it serves.
    allowed: Allowed,
    /// The queue's keys, if its entries are signed.
    seal: Option<Seal>,
    /// Signed calls taken, against replays.
    seen: Mutex<Seen>,
    /// Publish finished tasks to the span stream.
    spans: bool,
    /// Most tasks held beyond those running.
    prefetch: usize,
    /// Tasks finished so far, for the prefetch's rate.
    finished: AtomicU64,
}

/// The signed calls a worker took lately: call id to the task stream
/// entry that carried it and its expiry. Another entry with a seen call id
/// is a replay; the same entry again is a redelivery. Entries past their
/// expiry are dropped, for their tasks would be refused anyway.
#[derive(Debug, Default)]
struct Seen {
    /// Call id -> (entry id, expiry in Unix ms).
    calls: HashMap<String, (String, u64)>,
    /// When expired calls were last dropped.
    pruned: Option<Instant>,
}

/// How often [`Seen`] drops expired calls.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// A worker serving one queue. See the module docs.
pub struct Worker {
    /// Shared with its threads.
    core: Arc<Core>,
    /// On a Redis Cluster, the cores of the other shards: each has its own
    /// threads and shares the local pool and the stop handle.
    others: Vec<Arc<Core>>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("queue", &self.core.keys.queue)
            .field("consumer", &self.core.consumer)
            .field("concurrency", &self.core.concurrency)
            .finish_non_exhaustive()
    }
}

/// `url` with its `queue` parameter set to `queue`, the others kept.
fn with_queue(url: &str, queue: &str) -> String {
    let (rest, fragment) = match url.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (url, None),
    };
    let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut pairs: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("queue="))
        .collect();
    let q = format!("queue={queue}");
    pairs.push(&q);
    let mut out = format!("{base}?{}", pairs.join("&"));
    if let Some(f) = fragment {
        out = format!("{out}#{f}");
    }
    out
}

fn ensure_group(con: &mut redis::Connection, keys: &Keys) -> redis::RedisResult<()> {
    let r: redis::RedisResult<String> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys.tasks())
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query(con);
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Joins the queue at `url` with `concurrency` slots and serves it until
/// stopped: the one call a program's `main` makes to become a worker.
pub fn serve(url: &str, concurrency: usize) -> Result<(), Error> {
    Worker::builder(url).concurrency(concurrency).build()?.run()
}

impl Worker {
    /// A builder for a worker of the queue at `url`.
    pub fn builder(url: &str) -> WorkerBuilder {
        WorkerBuilder {
            url: url.to_string(),
            queue: None,
            concurrency: crate::info::usable_cpus(),
            pool: None,
            visibility: Duration::from_secs(30),
            max_deliveries: 3,
            broker_timeout: Duration::from_secs(30),
            allow: None,
            dangerous: false,
            keys: Vec::new(),
            measure: false,
            spans: true,
            prefetch: 256,
        }
    }

    /// Stops this worker when called from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.core.stop.clone()
    }

    /// This worker's consumer name.
    pub fn consumer(&self) -> &str {
        &self.core.consumer
    }

    /// Serves the queue until stopped, then drains and returns. On a Redis
    /// Cluster, serves every shard: each on threads of its own, this
    /// thread the first; returns when all have drained.
    pub fn run(self) -> Result<(), Error> {
        let mut shards = Vec::new();
        for (i, core) in self.others.into_iter().enumerate() {
            let stop = core.stop.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("multitask-cluster-shard-{}", i + 1))
                .spawn(move || serve_core(core));
            match spawned {
                Ok(h) => shards.push(h),
                Err(e) => {
                    stop.stop();
                    for h in shards {
                        let _ = h.join();
                    }
                    return Err(Error::io("starting a shard's worker", e));
                }
            }
        }
        let stop = self.core.stop.clone();
        let first = serve_core(self.core);
        if first.is_err() {
            // The others must not serve on alone.
            stop.stop();
        }
        let mut outcome = first;
        for h in shards {
            let r = h.join().unwrap_or_else(|_| {
                Err(Error::Protocol(
                    "a shard's worker thread panicked".to_string(),
                ))
            });
            outcome = outcome.and(r);
        }
        outcome
    }
}

/// Serves one queue (a shard's, on a Redis Cluster) until stopped.
fn serve_core(core: Arc<Core>) -> Result<(), Error> {
    let (tx, rx) = crossbeam_channel::unbounded::<Note>();
    let completer = {
        let core = core.clone();
        std::thread::Builder::new()
            .name("multitask-cluster-complete".to_string())
            .spawn(move || complete_loop(&core, &rx))
            .map_err(|e| Error::io("starting the completer", e))?
    };
    let maintainer = {
        let core = core.clone();
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("multitask-cluster-maintain".to_string())
            .spawn(move || maintain_loop(&core, &tx))
            .map_err(|e| Error::io("starting the maintainer", e))?
    };
    let block = Duration::from_millis(500);
    let mut link = Link::new(&core.broker, block + Duration::from_secs(2));
    // Set after a failed read: entries Redis delivered to this consumer
    // whose reply was lost with the connection sit in its pending list,
    // and are read again from there (id 0) before new ones.
    let mut recover = false;
    let mut ahead = Ahead::new(core.prefetch);
    while !core.stop.is_stopped() {
        let slots = core.concurrency + ahead.tasks(core.finished.load(Ordering::Relaxed));
        let free = {
            let held = lock(&core.inflight);
            if held.len() >= slots {
                let _ = core.freed.wait_timeout(held, Duration::from_millis(200));
                continue;
            }
            slots - held.len()
        };
        let reply = link.run(|con| {
            let mut c = redis::cmd("XREADGROUP");
            c.arg("GROUP").arg(GROUP).arg(&core.consumer).arg("COUNT");
            if recover {
                // Held tasks are in the pending list too.
                c.arg(slots + free);
            } else {
                c.arg(free).arg("BLOCK").arg(block.as_millis() as u64);
            }
            c.arg("STREAMS")
                .arg(core.keys.tasks())
                .arg(if recover { "0" } else { ">" })
                .query::<redis::Value>(con)
        });
        match reply {
            Ok(v) => {
                let mut fetched = stream_reply(v);
                if recover {
                    let held = lock(&core.inflight);
                    fetched.retain(|e| !held.contains_key(&e.id));
                    drop(held);
                    recover = fetched.len() > free;
                    fetched.truncate(free);
                }
                if !fetched.is_empty() {
                    for e in fetched {
                        start(&core, &mut link, e, &tx);
                    }
                    let _ = tx.send(Note::Held);
                }
            }
            // After a Redis restart the group may be gone (apalis #492).
            Err(e) if e.to_string().contains("NOGROUP") => {
                let keys = core.keys.clone();
                let _ = link.run(|con| ensure_group(con, &keys));
            }
            Err(_) => recover = true,
        }
    }
    // Drain: running tasks finish and are written.
    {
        let mut held = lock(&core.inflight);
        while !held.is_empty() {
            held = core
                .freed
                .wait_timeout(held, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
    drop(tx);
    let _ = completer.join();
    let _ = maintainer.join();
    let _ = link.run(|con| {
        redis::pipe()
            .cmd("DEL")
            .arg(core.keys.heartbeat(&core.consumer))
            .cmd("SREM")
            .arg(core.keys.workers())
            .arg(&core.consumer)
            .query::<()>(con)
    });
    Ok(())
}

/// Checks a fetched task and hands it to the pool, or dead-letters it.
fn start(core: &Arc<Core>, link: &mut Link, e: Entry, tx: &Sender<Note>) {
    let fields = (
        e.text("id"),
        e.text("task"),
        e.text("sig").and_then(|s| s.parse::<u64>().ok()),
        e.text("reply"),
        e.fields.get("payload"),
    );
    let (Some(id), Some(name), Some(sig), Some(reply), Some(payload)) = fields else {
        let reply = e.text("reply").map(str::to_string);
        let lease = Lease {
            id: e.text("id").unwrap_or("").to_string(),
            reply: reply.unwrap_or_default(),
            task: e.text("task").unwrap_or("?").to_string(),
        };
        let error = TaskError::Codec {
            task: lease.task.clone(),
            message: "malformed task entry: it needs id, task, sig, reply and payload".to_string(),
        };
        dead_letter(core, link, &e.id, &lease, &error, 1);
        return;
    };
    let lease = Lease {
        id: id.to_string(),
        reply: reply.to_string(),
        task: name.to_string(),
    };
    if let Some(seal) = &core.seal {
        if let Err((why, trusted)) = check_task(core, seal, &e) {
            let error = TaskError::Rejected {
                task: name.to_string(),
                reason: format!("worker {}: task entry {}: {why}", core.me, e.id),
            };
            let lease = Lease {
                // Only a signed entry says truly where its answer goes.
                reply: if trusted { lease.reply } else { String::new() },
                ..lease
            };
            dead_letter(core, link, &e.id, &lease, &error, 1);
            return;
        }
    }
    let entry = match task::resolve(name, sig, &core.me) {
        Ok(entry) if !core.allowed.admits(&entry) => {
            let error = TaskError::NotAllowed {
                task: name.to_string(),
                worker: core.me.clone(),
            };
            dead_letter(core, link, &e.id, &lease, &error, 1);
            return;
        }
        Ok(entry) => entry,
        Err(error) => {
            dead_letter(core, link, &e.id, &lease, &error, 1);
            return;
        }
    };
    let held = Held {
        lease: lease.clone(),
        since: Instant::now(),
        announced: false,
        run: None,
        timeout: e
            .text("timeout_ms")
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis),
        stopping: None,
        input: (core.spans && payload.len() <= PREVIEW_KEEP)
            .then(|| (payload.clone(), entry.preview)),
        running_since: None,
    };
    lock(&core.inflight).insert(e.id.clone(), held);
    let entry_id = e.id.clone();
    match core.pool.submit_raw(entry, payload.clone()) {
        Ok(fut) => {
            let tx = tx.clone();
            let fut = Arc::new(fut);
            // The callback holds the future until it runs, which it does
            // once: every future resolves, so the cycle ends.
            let run = fut.clone();
            fut.add_done_callback(move |r| {
                let _ = tx.send(Note::Done(Box::new(Done {
                    entry: entry_id,
                    lease,
                    outcome: r.clone(),
                    run: Some(run),
                    usage: None,
                })));
            });
            // Gone already if the task finished and was written meanwhile.
            if let Some(h) = lock(&core.inflight).get_mut(&e.id) {
                h.run = Some(fut);
            }
        }
        Err(refused) => {
            let _ = tx.send(Note::Done(Box::new(Done {
                entry: entry_id,
                lease,
                outcome: Err(refused.error),
                run: None,
                usage: None,
            })));
        }
    }
}

/// The fields of task entry `e` that its signature covers.
fn signed_fields(e: &Entry) -> [&[u8]; 7] {
    seal::TASK_FIELDS.map(|f| e.fields.get(f).map_or(&[][..], Vec::as_slice))
}

/// True if task entry `e` carries a valid signature (always, on an
/// unsigned queue): its reply key is its client's.
fn signed_by_a_client(core: &Core, e: &Entry) -> bool {
    let Some(seal) = &core.seal else { return true };
    let stream = core.keys.tasks();
    e.fields
        .get("mac")
        .is_some_and(|mac| seal.verify(&seal::task_parts(&stream, signed_fields(e)), mac))
}

/// Checks task entry `e` on a signed queue: signed with a key of `seal`,
/// not expired, not a replay of a call taken from another entry. On
/// failure, why, and whether its reply key can be trusted (only if its
/// signature holds).
fn check_task(core: &Core, seal: &Seal, e: &Entry) -> Result<(), (String, bool)> {
    let Some(mac) = e.fields.get("mac") else {
        return Err((
            "unsigned, and this worker takes only tasks signed with the queue's key".to_string(),
            false,
        ));
    };
    let stream = core.keys.tasks();
    if !seal.verify(&seal::task_parts(&stream, signed_fields(e)), mac) {
        return Err((
            "its signature does not check: forged, altered, or signed with another key".to_string(),
            false,
        ));
    }
    let now = seal::now_ms();
    let exp = e
        .text("exp")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(0);
    if exp < now {
        return Err((
            format!(
                "it expired {} ms ago, before a worker took it",
                now.saturating_sub(exp)
            ),
            true,
        ));
    }
    let id = e.text("id").unwrap_or_default();
    let mut seen = lock(&core.seen);
    if seen.pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
        seen.calls.retain(|_, (_, exp)| *exp >= now);
        seen.pruned = Some(Instant::now());
    }
    match seen.calls.get(id) {
        Some((entry, _)) if *entry != e.id => Err((
            format!("a replay: call {id} came already, as entry {entry}"),
            false,
        )),
        _ => {
            seen.calls.insert(id.to_string(), (e.id.clone(), exp));
            Ok(())
        }
    }
}

/// Marks the held tasks that have run `NOTICE_DELAY` without a notice as
/// announced; their leases and since when they are held, and when the next
/// one falls due.
fn due_notices(core: &Core) -> (Vec<(Lease, Instant)>, Option<Instant>) {
    let now = Instant::now();
    let mut due = Vec::new();
    let mut next: Option<Instant> = None;
    for held in lock(&core.inflight).values_mut() {
        if held.announced {
            continue;
        }
        // A task queued in the local pool behind others has not started:
        // it is looked at again later.
        if held.running_since.is_none() && held.run.as_ref().is_some_and(|f| f.running()) {
            held.running_since = Some(now);
        }
        let at = match held.running_since {
            Some(since) => since + NOTICE_DELAY,
            None => now + QUEUED_RECHECK,
        };
        if at <= now {
            held.announced = true;
            due.push((held.lease.clone(), held.running_since.unwrap_or(held.since)));
        } else {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    }
    (due, next)
}

/// Adds to `p` a notice to the client of each of `leases` that its task
/// started, and how long ago (`held_us`: the client dates the start from
/// its own clock, whatever the notice's delay).
fn add_notices(p: &mut redis::Pipeline, core: &Core, host: &str, leases: &[(Lease, Instant)]) {
    let pid = std::process::id().to_string();
    // A task nobody waits for gets no notice.
    for (l, since) in leases.iter().filter(|(l, _)| !l.reply.is_empty()) {
        let held_us = (since.elapsed().as_micros() as u64).to_string();
        let mac = core.seal.as_ref().map_or_else(Vec::new, |s| {
            s.sign(&[
                seal::STARTED,
                l.reply.as_bytes(),
                l.id.as_bytes(),
                core.me.as_bytes(),
                host.as_bytes(),
                pid.as_bytes(),
                held_us.as_bytes(),
            ])
        });
        p.cmd("XADD")
            .arg(&l.reply)
            .arg("*")
            .arg("id")
            .arg(&l.id)
            .arg("started")
            .arg(&core.me)
            .arg("host")
            .arg(host)
            .arg("pid")
            .arg(&pid)
            .arg("held_us")
            .arg(&held_us)
            .arg("mac")
            .arg(mac)
            .ignore();
    }
}

/// Moves a task to the dead-letter stream, with its entry's fields (each
/// name prefixed `t:`, so that [`requeue_dead_letter`](crate::cluster::requeue_dead_letter)
/// can put it back), fails it for its client, and removes it from the task
/// stream, in one script: KEYS[1] the task stream, KEYS[2] the dead-letter
/// stream, KEYS[3] (if given) the client's result stream; ARGV[1] the
/// entry, ARGV[2] the group, ARGV[3] the result stream's time to live,
/// ARGV[4] how many (name, value) pairs of the dead letter's own fields
/// follow, then those, then the reply entry's (name, value) pairs. A reply
/// stream that refuses the write (another type) does not stop the rest.
const DEAD_LUA: &str = r"
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
local n = tonumber(ARGV[4])
local dead = {}
for i = 5, 4 + 2 * n do dead[#dead + 1] = ARGV[i] end
if #found > 0 then
  local f = found[1][2]
  for i = 1, #f, 2 do
    dead[#dead + 1] = 't:' .. f[i]
    dead[#dead + 1] = f[i + 1]
  end
end
redis.call('XADD', KEYS[2], '*', unpack(dead))
if #KEYS == 3 then
  local r = {}
  for i = 5 + 2 * n, #ARGV do r[#r + 1] = ARGV[i] end
  local ok = redis.pcall('XADD', KEYS[3], '*', unpack(r))
  if type(ok) ~= 'table' or not ok.err then
    redis.pcall('EXPIRE', KEYS[3], ARGV[3])
  end
end
redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
";

/// Moves a task to the dead-letter stream with `error` as the reason (and
/// the task entry itself, for a requeue), fails it for its client, and
/// removes it from the task stream, in one script ([`DEAD_LUA`]).
fn dead_letter(
    core: &Core,
    link: &mut Link,
    entry: &str,
    lease: &Lease,
    error: &TaskError,
    deliveries: u64,
) {
    let json = serde_json::to_vec(error).unwrap_or_default();
    let reason = error.to_string();
    let script = redis::Script::new(DEAD_LUA);
    let _ = link.run(|con| {
        let mut call = script.prepare_invoke();
        call.key(core.keys.tasks()).key(core.keys.dead());
        if !lease.reply.is_empty() {
            call.key(&lease.reply);
        }
        call.arg(entry)
            .arg(GROUP)
            .arg(RESULTS_TTL.as_secs())
            .arg(6)
            .arg("entry")
            .arg(entry)
            .arg("id")
            .arg(&lease.id)
            .arg("task")
            .arg(&lease.task)
            .arg("reason")
            .arg(&reason)
            .arg("deliveries")
            .arg(deliveries)
            .arg("worker")
            .arg(&core.me);
        if !lease.reply.is_empty() {
            let mac = core.seal.as_ref().map_or_else(Vec::new, |s| {
                s.sign(&[
                    seal::ERROR,
                    lease.reply.as_bytes(),
                    lease.id.as_bytes(),
                    lease.task.as_bytes(),
                    &json,
                ])
            });
            call.arg("id")
                .arg(&lease.id)
                .arg("task")
                .arg(&lease.task)
                .arg("error")
                .arg(&json)
                .arg("mac")
                .arg(mac);
        }
        call.invoke::<()>(con)
    });
}

/// Most finished tasks written in one round trip.
const COMPLETE_BATCH: usize = 256;

/// Writes one client's results and then acknowledges and deletes their
/// tasks, so that no task is acknowledged without its result: KEYS[1] the
/// task stream, KEYS[2] the client's result stream; ARGV[1] the group,
/// ARGV[2] the result stream's time to live (s), ARGV[3..5] worker, host
/// and pid, ARGV[6] how many packed entries, then their (batch, data,
/// mac) triples (mac empty on an unsigned queue), then the task entry ids. A result that can't be written (the
/// reply key holds another type) is returned as the error, the tasks
/// untouched: the worker then dead-letters them.
const COMPLETE_LUA: &str = r"
local n = tonumber(ARGV[6])
for i = 0, n - 1 do
  local r = redis.pcall('XADD', KEYS[2], '*', 'batch', ARGV[7 + 3 * i],
    'data', ARGV[8 + 3 * i], 'mac', ARGV[9 + 3 * i], 'worker', ARGV[3],
    'host', ARGV[4], 'pid', ARGV[5])
  if type(r) == 'table' and r.err then return r end
end
if n > 0 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
local ids = {}
for i = 7 + 3 * n, #ARGV do ids[#ids + 1] = ARGV[i] end
redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
redis.call('XDEL', KEYS[1], unpack(ids))
return 1
";

/// A finished task waiting to be written, with how long it was held.
type Finished = (Done, Duration);

/// Writes finished tasks (per client, one [`COMPLETE_LUA`]: results
/// packed, then one XACK and one XDEL) and the started notices that fell
/// due, in one round trip. Each client's write stands alone: a result
/// stream that refuses its write (`WRONGTYPE`, `NOPERM`) dead-letters that
/// client's tasks with the reason, and the others complete. A write the
/// broker could not take (it is away) is retried with a growing backoff
/// for up to the broker timeout, then given up: the task stays pending in
/// the group, to be taken over. Either way no slot stays held.
fn complete_loop(core: &Core, rx: &Receiver<Note>) {
    let mut link = Link::new(&core.broker, Duration::from_secs(5));
    let host = crate::info::host_name();
    // When the next started notice falls due, if one is waited for.
    let mut next_notice: Option<Instant> = None;
    // Results not yet written, and since when writes fail.
    let mut unwritten: Vec<Finished> = Vec::new();
    let mut failing: Option<Instant> = None;
    let mut backoff = Duration::from_millis(50);
    let mut disconnected = false;
    // Finished tasks for the span stream, written with the results at most
    // every SPANS_EVERY (one entry then holds many round trips' worth).
    let mut spans: Vec<SpanRecord> = Vec::new();
    let mut spans_at = Instant::now();
    // The complete script runs by its hash (EVALSHA): loaded once per
    // connection rather than sent with every batch.
    let script = redis::Script::new(COMPLETE_LUA);
    let sha = script.get_hash().to_string();
    let mut loaded = false;
    // Kept from turn to turn: a batch's vector grown afresh each time cost
    // reallocations, and glibc's malloc consolidated its free lists for
    // each one large enough.
    let mut batch = Vec::with_capacity(COMPLETE_BATCH);
    let mut inputs = Vec::with_capacity(COMPLETE_BATCH);
    loop {
        let retry_at = (!unwritten.is_empty()).then(|| Instant::now() + backoff);
        let spans_due = (!spans.is_empty()).then(|| spans_at + SPANS_EVERY);
        let wake = [next_notice, retry_at, spans_due]
            .into_iter()
            .flatten()
            .min();
        let first = if disconnected {
            Err(RecvTimeoutError::Timeout)
        } else {
            match wake {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => rx.recv_deadline(at),
            }
        };
        match first {
            Ok(Note::Done(d)) => batch.push(*d),
            Ok(Note::Held) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => disconnected = true,
        }
        while batch.len() < COMPLETE_BATCH {
            match rx.try_recv() {
                Ok(Note::Done(d)) => batch.push(*d),
                Ok(Note::Held) => {}
                Err(_) => break,
            }
        }
        if disconnected && unwritten.is_empty() && batch.is_empty() {
            // The last spans, once: they are advice.
            if !spans.is_empty() {
                let _ = link.run(|con| {
                    let mut p = redis::pipe();
                    add_spans(&mut p, core, &host, &spans);
                    p.query::<()>(con)
                });
            }
            break;
        }
        // Tasks finishing in this batch need no notice: mark them first,
        // and note how long each was held.
        if !batch.is_empty() {
            let mut held = lock(&core.inflight);
            for mut done in batch.drain(..) {
                let (ran, input) = held
                    .get_mut(&done.entry)
                    .map_or((Duration::ZERO, None), |h| {
                        h.announced = true;
                        if let Some(why) = h.stopping {
                            done.outcome =
                                stopped(why, &done.lease.task, h.timeout, done.outcome.clone());
                        }
                        (h.since.elapsed(), h.input.take())
                    });
                inputs.push(input);
                unwritten.push((done, ran));
            }
        }
        // Outside the inflight lock: a future's usage takes its own lock,
        // and a preview decodes the input.
        let fresh = unwritten.len() - inputs.len();
        for ((done, ran), input) in unwritten[fresh..].iter_mut().zip(inputs.drain(..)) {
            done.usage = done.run.take().and_then(|f| f.usage());
            if core.spans {
                spans.push(span_of(done, *ran, input));
            }
        }
        // Spans are advice: a backlog (the broker is away) is not kept.
        if spans.len() > SPANS_BACKLOG {
            spans.drain(..spans.len() - SPANS_BACKLOG);
        }
        let (notices, next) = due_notices(core);
        next_notice = next;
        let spans_now =
            !spans.is_empty() && (spans_at.elapsed() >= SPANS_EVERY || spans.len() >= SPANS_BATCH);
        if unwritten.is_empty() && notices.is_empty() && !spans_now {
            continue;
        }
        let groups = by_client(&unwritten);
        if !loaded && !groups.is_empty() {
            loaded = link.run(|con| script.load(con)).is_ok();
        }
        let mut spans_written = 0;
        let r = link.run(|con| {
            let mut p = redis::pipe();
            // A notice is advice: one that fails (a bad reply key) is
            // dropped, and the rest of the round trip stands.
            p.ignore_errors();
            add_notices(&mut p, core, &host, &notices);
            if spans_now {
                add_spans(&mut p, core, &host, &spans);
                spans_written = spans.len();
            }
            for (reply, members) in &groups {
                add_results(&mut p, core, &host, &sha, (reply, members), &unwritten);
            }
            p.query::<Vec<redis::RedisResult<redis::Value>>>(con)
        });
        let mut finished: Vec<usize> = Vec::new();
        let mut refused: Vec<(usize, String)> = Vec::new();
        let mut retry = r.is_err();
        if !retry && spans_written > 0 {
            spans.drain(..spans_written);
            spans_at = Instant::now();
        }
        // A new connection may be to a restarted Redis, without scripts.
        loaded &= !retry;
        if let Ok(replies) = r {
            for ((reply, members), r) in groups.iter().zip(replies) {
                match r {
                    Ok(_) => finished.extend(members),
                    // Written, but the broker restarted and lost the
                    // group and the tasks with it: nothing to ack.
                    Err(e) if e.to_string().contains("NOGROUP") => finished.extend(members),
                    Err(e) if e.to_string().contains("NOSCRIPT") => {
                        loaded = false;
                        retry = true;
                    }
                    Err(e) if is_permanent(&e) => refused.extend(members.iter().map(|&i| {
                        (
                            i,
                            format!("its result could not be written to {reply}: {e}"),
                        )
                    })),
                    Err(_) => retry = true,
                }
            }
        }
        if retry {
            failing.get_or_insert_with(Instant::now);
            backoff = (backoff * 2).min(Duration::from_secs(1));
        } else {
            failing = None;
            backoff = Duration::from_millis(50);
        }
        for (i, why) in &refused {
            let (done, _) = &unwritten[*i];
            let lease = Lease {
                // The reply stream is what refused: don't write there.
                reply: String::new(),
                ..done.lease.clone()
            };
            let error = TaskError::Broker {
                task: lease.task.clone(),
                message: why.clone(),
            };
            eprintln!(
                "multitask: worker {}: task {} dead-lettered: {why}",
                core.me, lease.id
            );
            dead_letter(core, &mut link, &done.entry, &lease, &error, 1);
            finished.push(*i);
        }
        if failing.is_some_and(|since| since.elapsed() >= core.broker_timeout) {
            eprintln!(
                "multitask: worker {}: the broker was unreachable for {:?}; {} results given up \
                 (their tasks stay pending, to be taken over)",
                core.me,
                core.broker_timeout,
                unwritten.len()
            );
            finished = (0..unwritten.len()).collect();
            failing = None;
        }
        if finished.is_empty() {
            continue;
        }
        finished.sort_unstable();
        finished.dedup();
        let mut held = lock(&core.inflight);
        for &i in finished.iter().rev() {
            let (done, _) = unwritten.swap_remove(i);
            held.remove(&done.entry);
        }
        drop(held);
        core.finished
            .fetch_add(finished.len() as u64, Ordering::Relaxed);
        core.freed.notify_all();
    }
}

/// The outcome of a task the worker stopped for `why`: a kill or a cancel
/// in the local pool becomes what the client asked for or the timeout; an
/// outcome that came first (the task finished anyway) stands.
fn stopped(
    why: Stop,
    task: &str,
    timeout: Option<Duration>,
    outcome: Result<Vec<u8>, TaskError>,
) -> Result<Vec<u8>, TaskError> {
    let pid = match &outcome {
        Err(TaskError::Terminated { pid, .. }) => Some(*pid),
        // Still queued in the local pool: it never started.
        Err(TaskError::Cancelled { .. }) => None,
        _ => return outcome,
    };
    let task = task.to_string();
    Err(match why {
        Stop::Terminated => TaskError::Terminated {
            task,
            pid: pid.unwrap_or(0),
        },
        Stop::TimedOut => TaskError::TimedOut {
            task,
            after: timeout.unwrap_or_default(),
            pid,
        },
    })
}

/// Stops the held tasks `pick` chooses, marking why first (their
/// outcomes may come back at once): killed in the local pool if running
/// there, cancelled if still queued. A task that can't be stopped (a
/// thread pool's) is unmarked and runs on.
fn stop_where(core: &Core, why: Stop, pick: impl Fn(&str, &Held) -> bool) -> Vec<String> {
    let chosen: Vec<(String, Arc<TaskFuture<Vec<u8>>>)> = {
        let mut held = lock(&core.inflight);
        held.iter_mut()
            .filter(|(entry, h)| h.stopping.is_none() && pick(entry, h))
            .filter_map(|(entry, h)| {
                let run = h.run.clone()?;
                h.stopping = Some(why);
                Some((entry.clone(), run))
            })
            .collect()
    };
    let mut stopped = Vec::new();
    for (entry, run) in chosen {
        if run.terminate() || run.cancel() {
            stopped.push(entry);
        } else if let Some(h) = lock(&core.inflight).get_mut(&entry) {
            h.stopping = None;
        }
    }
    stopped
}

/// Stops the held tasks past their timeouts, and those whose clients
/// asked (the queue's terminate set, read when `ask` is due).
fn stop_tasks(core: &Core, link: &mut Link, ask: bool) {
    stop_where(core, Stop::TimedOut, |_, h| {
        h.timeout.is_some_and(|t| h.since.elapsed() >= t)
    });
    if !ask {
        return;
    }
    let ids: Vec<String> = lock(&core.inflight).keys().cloned().collect();
    if ids.is_empty() {
        return;
    }
    let Ok(scores) = link.run(|con| {
        redis::cmd("ZMSCORE")
            .arg(core.keys.terminate())
            .arg(&ids)
            .query::<Vec<Option<f64>>>(con)
    }) else {
        return;
    };
    let asked: Vec<String> = ids
        .into_iter()
        .zip(scores)
        .filter_map(|(id, s)| s.map(|_| id))
        .collect();
    if asked.is_empty() {
        return;
    }
    stop_where(core, Stop::Terminated, |entry, _| {
        asked.iter().any(|a| a == entry)
    });
    let _ = link.run(|con| {
        redis::cmd("ZREM")
            .arg(core.keys.terminate())
            .arg(&asked)
            .query::<i64>(con)
    });
}

/// The positions in `unwritten` of each client's results, by reply stream,
/// in order.
fn by_client(unwritten: &[Finished]) -> Vec<(String, Vec<usize>)> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, (done, _)) in unwritten.iter().enumerate() {
        let reply = done.lease.reply.as_str();
        match groups.iter_mut().find(|(r, _)| r == reply) {
            Some((_, v)) => v.push(i),
            None => groups.push((reply.to_string(), vec![i])),
        }
    }
    groups
}

/// Inputs up to this size are kept while their tasks run, for a preview
/// in the span stream.
const PREVIEW_KEEP: usize = 64 << 10;

/// Tasks that run at least this long (or fail) get an input preview in
/// the span stream: the ones a slowest-tasks table shows.
const PREVIEW_FROM: Duration = Duration::from_millis(1);

/// How often a worker writes its finished tasks to the span stream.
const SPANS_EVERY: Duration = Duration::from_millis(100);

/// Spans that are written at once, whenever they come.
const SPANS_BATCH: usize = 1024;

/// Most spans kept while the broker can't take them.
const SPANS_BACKLOG: usize = 4096;

/// Entries the span stream keeps, about (`MAXLEN ~`).
const SPANS_KEPT: usize = 1000;

/// The span-stream record of a finished task held for `ran`.
fn span_of(done: &Done, ran: Duration, input: Option<KeptInput>) -> SpanRecord {
    let finished = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ok = done.outcome.is_ok();
    SpanRecord {
        entry: done.entry.clone(),
        task: done.lease.task.clone(),
        started_us: finished.saturating_sub(ran).as_micros() as u64,
        finished_us: finished.as_micros() as u64,
        ok,
        cpu_us: done.usage.map(|u| u.cpu.as_micros() as u64),
        peak_rss: done.usage.and_then(|u| u.peak_rss),
        allocated: done.usage.and_then(|u| u.allocated),
        input: input
            .filter(|_| !ok || ran >= PREVIEW_FROM)
            .map(|(bytes, preview)| preview(&bytes)),
    }
}

/// Adds to `p` one entry of the span stream holding `spans`, if any.
fn add_spans(p: &mut redis::Pipeline, core: &Core, host: &str, spans: &[SpanRecord]) {
    if spans.is_empty() {
        return;
    }
    let Ok(packed) = postcard::to_stdvec(spans) else {
        return;
    };
    p.cmd("XADD")
        .arg(core.keys.spans())
        .arg("MAXLEN")
        .arg("~")
        .arg(SPANS_KEPT)
        .arg("*")
        .arg("worker")
        .arg(&core.consumer)
        .arg("host")
        .arg(host)
        .arg("pid")
        .arg(std::process::id())
        .arg("spans")
        .arg(packed)
        .ignore();
}

/// Most payload bytes packed in one result entry.
const PACK_BYTES: usize = 8 << 20;

/// Adds to `p` the [`COMPLETE_LUA`] call (by its hash, `sha`) that writes
/// the results of `members` (positions in `unwritten`) to the client
/// stream `reply`,
/// packed (one entry per PACK_BYTES of payload, with where the tasks ran
/// and for how long, for traces), then acknowledges and deletes their
/// tasks.
fn add_results(
    p: &mut redis::Pipeline,
    core: &Core,
    host: &str,
    sha: &str,
    (reply, members): (&str, &[usize]),
    unwritten: &[Finished],
) {
    let results: Vec<ToPack<'_>> = members
        .iter()
        .map(|&i| {
            let (done, ran) = &unwritten[i];
            let (error, payload) = match &done.outcome {
                Ok(bytes) => (None, Some(&bytes[..])),
                Err(e) => (Some(e.clone()), None),
            };
            let head = Packed {
                id: done.lease.id.clone(),
                task: done.lease.task.clone(),
                error,
                len: payload.map_or(0, |b| b.len() as u64),
                ran_us: ran.as_micros() as u64,
                usage: done.usage,
            };
            (head, payload)
        })
        .collect();
    let mut packs = Vec::new();
    let mut from = 0;
    // A task nobody waits for (a requeued dead letter) has no result
    // stream: it is only acknowledged and deleted, the task stream standing
    // in for the result stream's key (the same hash slot).
    let reply = if reply.is_empty() {
        from = results.len();
        core.keys.tasks()
    } else {
        reply.to_string()
    };
    while from < results.len() {
        // Split the results where their payloads pass PACK_BYTES.
        let mut to = from;
        let mut bytes = 0usize;
        while to < results.len() && (to == from || bytes + results[to].0.len as usize <= PACK_BYTES)
        {
            bytes += results[to].0.len as usize;
            to += 1;
        }
        packs.push(pack_results(&results[from..to]));
        from = to;
    }
    let cmd = p
        .cmd("EVALSHA")
        .arg(sha)
        .arg(2)
        .arg(core.keys.tasks())
        .arg(&reply)
        .arg(GROUP)
        .arg(RESULTS_TTL.as_secs())
        .arg(&core.me)
        .arg(host)
        .arg(std::process::id())
        .arg(packs.len());
    let pid = std::process::id().to_string();
    for (packed, data) in &packs {
        let mac = core.seal.as_ref().map_or_else(Vec::new, |s| {
            s.sign(&[
                seal::RESULTS,
                reply.as_bytes(),
                packed,
                data,
                core.me.as_bytes(),
                host.as_bytes(),
                pid.as_bytes(),
            ])
        });
        cmd.arg(packed).arg(data).arg(mac);
    }
    for &i in members {
        cmd.arg(&unwritten[i].0.entry);
    }
}

/// Heartbeats, lease renewal and reclaim, until the worker stops.
fn maintain_loop(core: &Arc<Core>, tx: &Sender<Note>) {
    let mut link = Link::new(&core.broker, Duration::from_secs(5));
    let beat_every = Duration::from_secs(2);
    let renew_every = core.visibility / 3;
    let reclaim_every = (core.visibility / 2).max(Duration::from_millis(200));
    let (mut beat, mut renew, mut reclaim) =
        (Instant::now() - beat_every, Instant::now(), Instant::now());
    let mut asked = Instant::now();
    // What the last heartbeat said was running: a change is told at once
    // (within a tick), so that `status` agrees with what runs.
    let mut told = usize::MAX;
    while !core.stop.is_stopped() || !lock(&core.inflight).is_empty() {
        if !lock(&core.inflight).is_empty() {
            let ask = asked.elapsed() >= STOP_POLL;
            stop_tasks(core, &mut link, ask);
            if ask {
                asked = Instant::now();
            }
        }
        let (running, _) = counts(core);
        if beat.elapsed() >= beat_every || running != told {
            told = heartbeat(core, &mut link);
            beat = Instant::now();
        }
        if renew.elapsed() >= renew_every {
            let ids: Vec<String> = lock(&core.inflight).keys().cloned().collect();
            if !ids.is_empty() {
                let _ = link.run(|con| {
                    redis::cmd("XCLAIM")
                        .arg(core.keys.tasks())
                        .arg(GROUP)
                        .arg(&core.consumer)
                        .arg(0)
                        .arg(&ids)
                        .arg("JUSTID")
                        .query::<redis::Value>(con)
                });
            }
            renew = Instant::now();
        }
        if reclaim.elapsed() >= reclaim_every && !core.stop.is_stopped() {
            reclaim_idle(core, &mut link, tx);
            reclaim = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The held tasks running in the local pool, and all held.
fn counts(core: &Core) -> (usize, usize) {
    let held = lock(&core.inflight);
    let running = held
        .values()
        .filter(|h| h.run.as_ref().is_some_and(|f| f.running()))
        .count();
    (running, held.len())
}

/// Writes the heartbeat; the running count it told.
fn heartbeat(core: &Core, link: &mut Link) -> usize {
    let (running, held) = counts(core);
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let info = serde_json::json!({
        "consumer": core.consumer,
        "worker": core.me,
        "host": crate::info::host_name(),
        "pid": std::process::id(),
        "concurrency": core.concurrency,
        "running": running,
        "held": held,
        "at": at,
    })
    .to_string();
    let _ = link.run(|con| {
        redis::pipe()
            .cmd("SET")
            .arg(core.keys.heartbeat(&core.consumer))
            .arg(info)
            .arg("EX")
            .arg(10)
            .ignore()
            .cmd("SADD")
            .arg(core.keys.workers())
            .arg(&core.consumer)
            .ignore()
            .query::<()>(con)
    });
    running
}

/// Takes over tasks idle past the visibility timeout in other consumers'
/// hands; dead-letters those delivered too often.
fn reclaim_idle(core: &Arc<Core>, link: &mut Link, tx: &Sender<Note>) {
    let idle_ms = core.visibility.as_millis() as u64;
    let Ok(v) = link.run(|con| {
        redis::cmd("XPENDING")
            .arg(core.keys.tasks())
            .arg(GROUP)
            .arg("IDLE")
            .arg(idle_ms)
            .arg("-")
            .arg("+")
            .arg(64)
            .query::<Vec<(String, String, u64, u64)>>(con)
    }) else {
        return;
    };
    for (entry, consumer, _idle, deliveries) in v {
        // Our own entries idle that long are ones whose results were given
        // up (the broker was away); those we still hold are renewed.
        if consumer == core.consumer && lock(&core.inflight).contains_key(&entry) {
            continue;
        }
        if deliveries >= u64::from(core.max_deliveries) {
            let Ok(found) = link.run(|con| {
                redis::cmd("XRANGE")
                    .arg(core.keys.tasks())
                    .arg(&entry)
                    .arg(&entry)
                    .query::<redis::Value>(con)
            }) else {
                continue;
            };
            let e = entries(found).into_iter().next().unwrap_or_default();
            let reply = if signed_by_a_client(core, &e) {
                e.text("reply").unwrap_or("")
            } else {
                ""
            };
            let lease = Lease {
                id: e.text("id").unwrap_or("").to_string(),
                reply: reply.to_string(),
                task: e.text("task").unwrap_or("?").to_string(),
            };
            let error = TaskError::WorkerDied {
                task: lease.task.clone(),
                pid: 0,
                cause: ExitCause::Unknown,
            };
            let reason = TaskError::Broker {
                task: lease.task.clone(),
                message: format!(
                    "delivered {deliveries} times and never completed (last held by {consumer}): {error}"
                ),
            };
            dead_letter(core, link, &entry, &lease, &reason, deliveries);
            continue;
        }
        if lock(&core.inflight).len() >= core.concurrency {
            break;
        }
        let Ok(claimed) = link.run(|con| {
            redis::cmd("XCLAIM")
                .arg(core.keys.tasks())
                .arg(GROUP)
                .arg(&core.consumer)
                .arg(idle_ms)
                .arg(&entry)
                .query::<redis::Value>(con)
        }) else {
            continue;
        };
        for e in entries(claimed) {
            start(core, link, e, tx);
        }
        let _ = tx.send(Note::Held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_task_says_why() {
        let after = Duration::from_millis(300);
        let killed = Err(TaskError::Terminated {
            task: "t".to_string(),
            pid: 7,
        });
        assert_eq!(
            stopped(Stop::TimedOut, "t", Some(after), killed.clone()),
            Err(TaskError::TimedOut {
                task: "t".to_string(),
                after,
                pid: Some(7),
            })
        );
        assert_eq!(stopped(Stop::Terminated, "t", None, killed.clone()), killed);
        // Still queued in the local pool when stopped: it never ran.
        let cancelled = Err(TaskError::Cancelled {
            task: "t".to_string(),
        });
        assert_eq!(
            stopped(Stop::Terminated, "t", None, cancelled),
            Err(TaskError::Terminated {
                task: "t".to_string(),
                pid: 0,
            })
        );
        // It finished first: its outcome stands.
        assert_eq!(
            stopped(Stop::TimedOut, "t", Some(after), Ok(vec![1])),
            Ok(vec![1])
        );
    }
}
