//! The cluster worker: fetches tasks from a queue's stream, runs them in a
//! local pool (worker processes by default, so a crash costs one task),
//! and writes each result back.
//!
//! Three threads, each with its own connection:
//! - **fetch** (the caller of [`Worker::run`]): `XREADGROUP ... COUNT free
//!   BLOCK`, only as many tasks as there are free slots (after a failed
//!   read, first the entries already delivered to it, whose reply may have
//!   been lost), and in the same round trip the size of the withdrawn
//!   hash (a packed entry's calls withdrawn before the claim, skipped);
//!   each call is checked (known name, same signature) and handed to the
//!   pool, if the worker's allow-list admits it (see
//!   [`WorkerBuilder::allow`]; a refused call is dead-lettered);
//! - **complete**: for a batch of finished tasks, one script per client
//!   that XADDs their results packed in one entry, then XACKs and XDELs
//!   the tasks (a packed entry with its last call), so a result is never
//!   acknowledged without being stored (a
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
    entries, is_permanent, pack_results, stream_reply, unpack_calls, Broker, CallHead, Entry, Link,
    Packed, ToPack,
};
use crate::cluster::client::random;
use crate::cluster::keys::{Keys, GROUP, RESULTS_TTL};
use crate::cluster::rate::Rate;
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
                    parts: Mutex::new(HashMap::new()),
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

/// A packed entry a worker holds.
#[derive(Debug)]
struct Parts {
    /// Its calls still to finish (or be dead-lettered).
    left: usize,
    /// True if the withdrawn hash holds a field for it, to be deleted with
    /// the entry.
    withdrawn: bool,
}

/// What finishing a held call does to its task entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Ack {
    /// The entry is acknowledged and deleted with this call's result: it
    /// was the entry's last call.
    entry: bool,
    /// Its field in the withdrawn hash goes too.
    withdrawn: bool,
}

impl Ack {
    /// An entry given up whole.
    fn whole() -> Ack {
        Ack {
            entry: true,
            withdrawn: true,
        }
    }
}

/// The task stream entry of held key `key` (see [`Core::inflight`]).
fn entry_of(key: &str) -> &str {
    key.split_once('#').map_or(key, |(entry, _)| entry)
}

impl Core {
    /// Counts held call `key` finished: an entry of its own is
    /// acknowledged with it, a packed entry with its last call. Decided
    /// once per call, when its outcome is first to be written, so that
    /// exactly one call acknowledges its entry; the entry stays held (see
    /// [`Core::holds`]) until that call is written.
    fn finish(&self, key: &str) -> Ack {
        let Some((entry, _)) = key.split_once('#') else {
            return Ack {
                entry: true,
                withdrawn: false,
            };
        };
        let mut parts = lock(&self.parts);
        let Some(p) = parts.get_mut(entry) else {
            // Not counted (it can't be): leave the entry pending rather
            // than delete calls still running; it is taken over later.
            return Ack::default();
        };
        if p.left == 0 {
            // Counted out already: a second outcome of one call can't be.
            return Ack::default();
        }
        p.left -= 1;
        Ack {
            entry: p.left == 0,
            withdrawn: p.left == 0 && p.withdrawn,
        }
    }

    /// True if the worker holds entry `entry` or any call of it.
    fn holds(&self, entry: &str) -> bool {
        lock(&self.inflight).contains_key(entry) || lock(&self.parts).contains_key(entry)
    }
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
/// the rate they finish ([`Rate`]), up to a cap.
struct Ahead {
    /// The cap.
    max: usize,
    /// The rate tasks finish at.
    rate: Rate,
}

/// The time the tasks held beyond those running should cover.
const AHEAD_FOR: Duration = Duration::from_millis(5);

impl Ahead {
    fn new(max: usize) -> Ahead {
        Ahead {
            max,
            rate: Rate::new(0),
        }
    }

    /// Tasks to hold beyond those running, given the finished count now
    /// (down by halves after a burst: the held ones drain as a long task
    /// runs).
    fn tasks(&mut self, finished: u64) -> usize {
        self.rate.within(AHEAD_FOR, finished).min(self.max)
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
    /// Its held key (see [`Core::inflight`]).
    entry: String,
    /// What writing its outcome does to its entry; decided when the
    /// completer first takes it.
    ack: Ack,
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
    /// Tasks held, by [`Held`] key: the stream entry id, or
    /// `<entry>#<position>` for a call of a packed entry.
    inflight: Mutex<HashMap<String, Held>>,
    /// The packed entries held, by entry id: how many of their calls are
    /// still to finish. Taken after `inflight` when both are.
    parts: Mutex<HashMap<String, Parts>>,
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
    /// thread the first; returns when all have drained. A broker that
    /// refuses the worker's fetch for good (a missing ACL permission, the
    /// task stream's key holding another type) stops it: it drains and
    /// fails with a broker error naming the refusal. A broker that is away
    /// is waited for.
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
    // Calls per entry fetched lately (packed entries hold several): the
    // count asked for is in entries, the free slots in calls.
    let mut per_entry = 1.0f64;
    let mut refused = None;
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
        let want = ((free as f64 / per_entry).ceil() as usize).clamp(1, free);
        // The withdrawn hash's size comes after the claim, in the same
        // round trip: a cancel that the broker ran before the claim shows
        // there (see `withdrawn_of`).
        let reply = link.run(|con| {
            let mut c = redis::cmd("XREADGROUP");
            c.arg("GROUP").arg(GROUP).arg(&core.consumer).arg("COUNT");
            if recover {
                // Held tasks are in the pending list too.
                c.arg(slots + want);
            } else {
                c.arg(want).arg("BLOCK").arg(block.as_millis() as u64);
            }
            c.arg("STREAMS")
                .arg(core.keys.tasks())
                .arg(if recover { "0" } else { ">" });
            redis::pipe()
                .add_command(c)
                .cmd("HLEN")
                .arg(core.keys.withdrawn())
                .query::<(redis::Value, u64)>(con)
        });
        match reply {
            Ok((v, withdrawing)) => {
                let mut fetched = stream_reply(v);
                if recover {
                    fetched.retain(|e| !core.holds(&e.id));
                    recover = fetched.len() > want;
                    fetched.truncate(want);
                }
                if !fetched.is_empty() {
                    let Some(withdrawn) = withdrawn_of(&core, &mut link, &fetched, withdrawing > 0)
                    else {
                        // Which calls were taken back is unknown: none of
                        // these runs until it is (they are read again
                        // from the pending list).
                        recover = true;
                        continue;
                    };
                    let entries = fetched.len();
                    let mut calls = 0;
                    for (e, w) in fetched.into_iter().zip(withdrawn) {
                        calls += start(&core, &mut link, e, w.as_deref(), &tx);
                    }
                    per_entry = (per_entry + calls as f64 / entries as f64) / 2.0;
                    let _ = tx.send(Note::Held);
                }
            }
            // After a Redis restart the group may be gone (apalis #492).
            Err(e) if e.to_string().contains("NOGROUP") => {
                let keys = core.keys.clone();
                let _ = link.run(|con| ensure_group(con, &keys));
            }
            // A refusal no retry cures (a missing permission, the task
            // stream's key of another type): the worker stops and says
            // why, rather than fetch in vain while its clients wait.
            Err(f) if f.permanent => {
                refused = Some(f);
                core.stop.stop();
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
    match refused.map(|f| f.error) {
        Some(Error::Broker(why)) => Err(Error::Broker(format!(
            "worker {} stopped: the broker refused its fetch, and no retry cures that: {why}",
            core.me
        ))),
        Some(other) => Err(other),
        None => Ok(()),
    }
}

/// The fields of `entries` in the withdrawn hash: for each, the
/// positions of the calls of a packed entry that its client took back
/// before the claim. Asked only if the hash is not empty (`any`, read
/// after the claim) and only about packed entries; `None` if the broker
/// could not be asked.
fn withdrawn_of(
    core: &Core,
    link: &mut Link,
    entries: &[Entry],
    any: bool,
) -> Option<Vec<Option<String>>> {
    let packed: Vec<&str> = entries
        .iter()
        .filter(|e| e.fields.contains_key("calls"))
        .map(|e| e.id.as_str())
        .collect();
    if !any || packed.is_empty() {
        return Some(vec![None; entries.len()]);
    }
    let found: Vec<Option<String>> = link
        .run(|con| {
            redis::cmd("HMGET")
                .arg(core.keys.withdrawn())
                .arg(&packed)
                .query(con)
        })
        .ok()?;
    let mut found = found.into_iter();
    Some(
        entries
            .iter()
            .map(|e| {
                if e.fields.contains_key("calls") {
                    found.next().flatten()
                } else {
                    None
                }
            })
            .collect(),
    )
}

/// A call a worker took, ready to run.
struct Call {
    /// The key it is held by (see [`Core::inflight`]).
    key: String,
    /// Its lease.
    lease: Lease,
    /// Its encoded input.
    payload: Vec<u8>,
    /// Its time limit, from its entry.
    timeout: Option<Duration>,
}

/// The time limit a task entry carries.
fn timeout_of(e: &Entry) -> Option<Duration> {
    e.text("timeout_ms")
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
}

/// Checks a fetched task entry and hands its calls to the pool, or
/// dead-letters them; `withdrawn` is the entry's field in the withdrawn
/// hash, read after the claim (a packed entry's calls whose clients took
/// them back). Returns the calls the entry held.
fn start(
    core: &Arc<Core>,
    link: &mut Link,
    e: Entry,
    withdrawn: Option<&str>,
    tx: &Sender<Note>,
) -> usize {
    if e.fields.contains_key("calls") {
        return start_packed(core, link, e, withdrawn, tx);
    }
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
        return 1;
    };
    let lease = Lease {
        id: id.to_string(),
        reply: reply.to_string(),
        task: name.to_string(),
    };
    if let Some(seal) = &core.seal {
        let checked = check_task(core, seal, &e).and_then(|exp| not_a_replay(core, id, &e.id, exp));
        if let Err((why, trusted)) = checked {
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
            return 1;
        }
    }
    let found = match admit(core, name, sig) {
        Ok(found) => found,
        Err(error) => {
            dead_letter(core, link, &e.id, &lease, &error, 1);
            return 1;
        }
    };
    let call = Call {
        key: e.id.clone(),
        lease,
        payload: payload.clone(),
        timeout: timeout_of(&e),
    };
    run_call(core, call, found, tx);
    1
}

/// The task `name` with signature `sig`, if this worker serves it.
fn admit(core: &Core, name: &str, sig: u64) -> Result<task::TaskEntry, TaskError> {
    match task::resolve(name, sig, &core.me) {
        Ok(found) if !core.allowed.admits(&found) => Err(TaskError::NotAllowed {
            task: name.to_string(),
            worker: core.me.clone(),
        }),
        other => other,
    }
}

/// Checks a packed task entry (several calls of one client) and hands its
/// calls to the pool. An entry that is malformed or fails its signature
/// check is dead-lettered whole; its calls' client, if its reply key can be
/// trusted, gets the error for each. A call that can't run here (unknown,
/// not allowed, a replay) is dead-lettered with the reason, its position
/// named; the others run. The entry is acknowledged once its last call is
/// written (see [`Core::finish`]).
fn start_packed(
    core: &Arc<Core>,
    link: &mut Link,
    e: Entry,
    withdrawn: Option<&str>,
    tx: &Sender<Note>,
) -> usize {
    let calls = match unpack_calls(&e) {
        Ok(calls) => calls,
        Err(why) => {
            let error = |_: usize, task: &str| TaskError::Codec {
                task: task.to_string(),
                message: format!("malformed packed task entry: {why}"),
            };
            // Whose calls these were is unknown: their client finds them
            // lost.
            dead_packed(core, link, &e.id, "", &[], &error, 1, Ack::whole());
            return 1;
        }
    };
    let reply = e.text("reply").unwrap_or("").to_string();
    let mut exp = 0;
    if let Some(seal) = &core.seal {
        match check_packed(core, seal, &e) {
            Ok(at) => exp = at,
            Err((why, trusted)) => {
                let error = |_: usize, task: &str| TaskError::Rejected {
                    task: task.to_string(),
                    reason: format!("worker {}: task entry {}: {why}", core.me, e.id),
                };
                let all: Vec<(usize, &CallHead<'_>)> =
                    calls.iter().map(|(h, _)| h).enumerate().collect();
                // Only a signed entry says truly where its answers go.
                let reply = if trusted { reply.as_str() } else { "" };
                dead_packed(core, link, &e.id, reply, &all, &error, 1, Ack::whole());
                return calls.len();
            }
        }
    }
    let n = calls.len();
    let skip: Vec<usize> = withdrawn
        .unwrap_or("")
        .split(',')
        .filter_map(|i| i.parse::<usize>().ok())
        .collect();
    let timeout = timeout_of(&e);
    // Refused calls, and whether their client may be told (not for a
    // replay, as for an entry of its own).
    let mut refused: Vec<(usize, TaskError, bool)> = Vec::new();
    let mut ready = Vec::new();
    for (i, (head, _)) in calls.iter().enumerate() {
        if skip.contains(&i) {
            continue;
        }
        if core.seal.is_some() {
            if let Err((why, trusted)) = not_a_replay(core, &head.id, &e.id, exp) {
                let reason = format!("worker {}: task entry {}: {why}", core.me, e.id);
                let task = head.task.to_string();
                refused.push((i, TaskError::Rejected { task, reason }, trusted));
                continue;
            }
        }
        match admit(core, &head.task, head.sig) {
            Ok(found) => ready.push((i, found)),
            Err(error) => refused.push((i, error, true)),
        }
    }
    // Counted before any call can finish.
    if !ready.is_empty() {
        lock(&core.parts).insert(
            e.id.clone(),
            Parts {
                left: ready.len(),
                withdrawn: withdrawn.is_some(),
            },
        );
    }
    if !refused.is_empty() || ready.is_empty() {
        // Refused calls first, while the entry is still there to be kept
        // with them (for a requeue); the entry goes with them if no call
        // is left to run.
        let ack = Ack {
            entry: ready.is_empty(),
            withdrawn: ready.is_empty() && withdrawn.is_some(),
        };
        // One dead letter per task and kind of refusal (the calls of a
        // replay each name their own id).
        let kind = |i: usize, e: &TaskError, told: bool| {
            (calls[i].0.task.clone(), std::mem::discriminant(e), told)
        };
        let mut by_error: Vec<(_, Vec<(usize, &CallHead<'_>)>)> = Vec::new();
        for (i, error, told) in &refused {
            let k = kind(*i, error, *told);
            match by_error.iter_mut().find(|(e, _)| *e == k) {
                Some((_, v)) => v.push((*i, &calls[*i].0)),
                None => by_error.push((k, vec![(*i, &calls[*i].0)])),
            }
        }
        if by_error.is_empty() {
            // Every call was withdrawn: the entry only goes.
            let none = |_: usize, task: &str| TaskError::Cancelled {
                task: task.to_string(),
            };
            dead_packed(core, link, &e.id, &reply, &[], &none, 0, ack);
        }
        let last = by_error.len().saturating_sub(1);
        let error = |i: usize, task: &str| {
            refused.iter().find(|(j, _, _)| *j == i).map_or_else(
                || TaskError::Lost {
                    task: task.to_string(),
                    reason: String::new(),
                },
                |(_, e, _)| e.clone(),
            )
        };
        for (k, ((_, _, told), which)) in by_error.iter().enumerate() {
            let ack = if k == last { ack } else { Ack::default() };
            let reply = if *told { reply.as_str() } else { "" };
            dead_packed(core, link, &e.id, reply, which, &error, 1, ack);
        }
    }
    let mut calls = calls;
    for (i, found) in ready {
        let (head, payload) = std::mem::take(&mut calls[i]);
        let call = Call {
            key: format!("{}#{i}", e.id),
            lease: Lease {
                id: head.id.into_owned(),
                reply: reply.clone(),
                task: head.task.into_owned(),
            },
            payload,
            timeout,
        };
        run_call(core, call, found, tx);
    }
    n
}

/// Holds `call` and submits it to the local pool, whose outcome goes to
/// the completer.
fn run_call(core: &Arc<Core>, call: Call, found: task::TaskEntry, tx: &Sender<Note>) {
    let Call {
        key,
        lease,
        payload,
        timeout,
    } = call;
    let held = Held {
        lease: lease.clone(),
        since: Instant::now(),
        announced: false,
        run: None,
        timeout,
        stopping: None,
        input: (core.spans && payload.len() <= PREVIEW_KEEP)
            .then(|| (payload.clone(), found.preview)),
        running_since: None,
    };
    lock(&core.inflight).insert(key.clone(), held);
    let entry_id = key.clone();
    match core.pool.submit_raw(found, payload) {
        Ok(fut) => {
            let tx = tx.clone();
            let fut = Arc::new(fut);
            // The callback holds the future until it runs, which it does
            // once: every future resolves, so the cycle ends.
            let run = fut.clone();
            fut.add_done_callback(move |r| {
                let _ = tx.send(Note::Done(Box::new(Done {
                    entry: entry_id,
                    ack: Ack::default(),
                    lease,
                    outcome: r.clone(),
                    run: Some(run),
                    usage: None,
                })));
            });
            // Gone already if the task finished and was written meanwhile.
            if let Some(h) = lock(&core.inflight).get_mut(&key) {
                h.run = Some(fut);
            }
        }
        Err(refused) => {
            let _ = tx.send(Note::Done(Box::new(Done {
                entry: entry_id,
                ack: Ack::default(),
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
/// not expired; its expiry (Unix ms). On failure, why, and whether its
/// reply key can be trusted (only if its signature holds).
fn check_task(core: &Core, seal: &Seal, e: &Entry) -> Result<u64, (String, bool)> {
    let stream = core.keys.tasks();
    check_sealed(seal, e, &seal::task_parts(&stream, signed_fields(e)))
}

/// As [`check_task`], for a packed entry.
fn check_packed(core: &Core, seal: &Seal, e: &Entry) -> Result<u64, (String, bool)> {
    let stream = core.keys.tasks();
    let field = |f: &str| e.fields.get(f).map_or(&[][..], Vec::as_slice);
    let parts = seal::packed_parts(
        &stream,
        ["calls", "reply", "data", "timeout_ms", "exp"].map(field),
    );
    check_sealed(seal, e, &parts)
}

/// Checks that `e`'s `mac` signs `parts` and that it has not expired.
fn check_sealed(seal: &Seal, e: &Entry, parts: &[&[u8]]) -> Result<u64, (String, bool)> {
    let Some(mac) = e.fields.get("mac") else {
        return Err((
            "unsigned, and this worker takes only tasks signed with the queue's key".to_string(),
            false,
        ));
    };
    if !seal.verify(parts, mac) {
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
    Ok(exp)
}

/// Remembers signed call `id`, taken from entry `entry` and valid until
/// `exp`; refuses it if it came before from another entry (a replay; the
/// same entry again is a redelivery). The reply key of a replay is not
/// trusted: the copy may point it anywhere.
fn not_a_replay(core: &Core, id: &str, entry: &str, exp: u64) -> Result<(), (String, bool)> {
    let now = seal::now_ms();
    let mut seen = lock(&core.seen);
    if seen.pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
        seen.calls.retain(|_, (_, exp)| *exp >= now);
        seen.pruned = Some(Instant::now());
    }
    match seen.calls.get(id) {
        Some((first, _)) if first != entry => Err((
            format!("a replay: call {id} came already, as entry {first}"),
            false,
        )),
        _ => {
            seen.calls.insert(id.to_string(), (entry.to_string(), exp));
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
/// stream, KEYS[3] the withdrawn hash, KEYS[4] (if given) the client's
/// result stream; ARGV[1] the entry, ARGV[2] the group, ARGV[3] the result
/// stream's time to live, ARGV[4] '1' to acknowledge and delete the entry
/// (and its withdrawn field), '0' to leave it (a packed entry whose other
/// calls still run), ARGV[5] how many (name, value) pairs of the dead
/// letter's own fields follow (none: no dead letter, only the
/// acknowledgement), then those, then the reply entry's (name, value)
/// pairs. A reply stream that refuses the write (another type) does not
/// stop the rest.
const DEAD_LUA: &str = r"
local n = tonumber(ARGV[5])
if n > 0 then
  local dead = {}
  for i = 6, 5 + 2 * n do dead[#dead + 1] = ARGV[i] end
  local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
  if #found > 0 then
    local f = found[1][2]
    for i = 1, #f, 2 do
      dead[#dead + 1] = 't:' .. f[i]
      dead[#dead + 1] = f[i + 1]
    end
  end
  redis.call('XADD', KEYS[2], '*', unpack(dead))
end
if #KEYS == 4 then
  local r = {}
  for i = 6 + 2 * n, #ARGV do r[#r + 1] = ARGV[i] end
  local ok = redis.pcall('XADD', KEYS[4], '*', unpack(r))
  if type(ok) ~= 'table' or not ok.err then
    redis.pcall('EXPIRE', KEYS[4], ARGV[3])
  end
end
if ARGV[4] == '1' then
  redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
  redis.call('XDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
end
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
        call.key(core.keys.tasks())
            .key(core.keys.dead())
            .key(core.keys.withdrawn());
        if !lease.reply.is_empty() {
            call.key(&lease.reply);
        }
        call.arg(entry)
            .arg(GROUP)
            .arg(RESULTS_TTL.as_secs())
            .arg(1)
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

/// Dead-letters calls `which` (positions and heads) of packed entry
/// `entry` with `error(position, task)` as the reason: one dead letter
/// keeping the whole entry and naming the positions (field `parts`; none
/// means every call), and for their client at `reply` (if trusted: not
/// empty) one packed result entry failing each. `ack` says whether the entry goes too (no
/// call of it is left to run). With `which` empty and `deliveries` 0,
/// only acknowledges.
#[allow(clippy::too_many_arguments)]
fn dead_packed(
    core: &Core,
    link: &mut Link,
    entry: &str,
    reply: &str,
    which: &[(usize, &CallHead<'_>)],
    error: &dyn Fn(usize, &str) -> TaskError,
    deliveries: u64,
    ack: Ack,
) {
    let first = which.first().map(|(_, h)| h);
    let reason = which
        .first()
        .map_or_else(|| error(0, "?"), |(i, h)| error(*i, &h.task))
        .to_string();
    let parts = which
        .iter()
        .map(|(i, _)| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let host = crate::info::host_name();
    let pid = std::process::id().to_string();
    let reply_entry = (!reply.is_empty() && !which.is_empty()).then(|| {
        let heads: Vec<ToPack<'_>> = which
            .iter()
            .map(|(i, h)| {
                let head = Packed {
                    id: h.id.to_string(),
                    task: h.task.to_string(),
                    error: Some(error(*i, &h.task)),
                    len: 0,
                    ran_us: 0,
                    usage: None,
                };
                (head, None)
            })
            .collect();
        let (batch, data) = pack_results(&heads);
        let mac = core.seal.as_ref().map_or_else(Vec::new, |s| {
            s.sign(&[
                seal::RESULTS,
                reply.as_bytes(),
                &batch,
                &data,
                core.me.as_bytes(),
                host.as_bytes(),
                pid.as_bytes(),
            ])
        });
        (batch, data, mac)
    });
    let script = redis::Script::new(DEAD_LUA);
    let _ = link.run(|con| {
        let mut call = script.prepare_invoke();
        call.key(core.keys.tasks())
            .key(core.keys.dead())
            .key(core.keys.withdrawn());
        if reply_entry.is_some() {
            call.key(reply);
        }
        call.arg(entry)
            .arg(GROUP)
            .arg(RESULTS_TTL.as_secs())
            .arg(if ack.entry { 1 } else { 0 });
        if deliveries == 0 {
            call.arg(0);
        } else {
            call.arg(7)
                .arg("entry")
                .arg(entry)
                .arg("id")
                .arg(first.map_or("", |h| &h.id))
                .arg("task")
                .arg(first.map_or("?", |h| &h.task))
                .arg("reason")
                .arg(&reason)
                .arg("deliveries")
                .arg(deliveries)
                .arg("worker")
                .arg(&core.me)
                .arg("parts")
                .arg(&parts);
        }
        if let Some((batch, data, mac)) = &reply_entry {
            call.arg("batch")
                .arg(batch)
                .arg("data")
                .arg(data)
                .arg("mac")
                .arg(mac)
                .arg("worker")
                .arg(&core.me)
                .arg("host")
                .arg(&host)
                .arg("pid")
                .arg(&pid);
        }
        call.invoke::<()>(con)
    });
}

/// Most finished tasks written in one round trip.
const COMPLETE_BATCH: usize = 256;

/// Writes one client's results and then acknowledges and deletes their
/// tasks, so that no task is acknowledged without its result: KEYS[1] the
/// task stream, KEYS[2] the client's result stream, KEYS[3] the withdrawn
/// hash; ARGV[1] the group, ARGV[2] the result stream's time to live (s),
/// ARGV[3..5] worker, host and pid, ARGV[6] how many packed entries, then
/// their (batch, data, mac) triples (mac empty on an unsigned queue), then
/// how many task entries to acknowledge and delete, those, and then the
/// entries whose withdrawn fields go (a packed entry is acknowledged with
/// its last call's result, not before). A result that can't be written
/// (the reply key holds another type) is returned as the error, the tasks
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
local at = 7 + 3 * n
local m = tonumber(ARGV[at])
local ids = {}
for i = at + 1, at + m do ids[#ids + 1] = ARGV[i] end
if m > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
  redis.call('XDEL', KEYS[1], unpack(ids))
end
local gone = {}
for i = at + m + 1, #ARGV do gone[#gone + 1] = ARGV[i] end
if #gone > 0 then redis.call('HDEL', KEYS[3], unpack(gone)) end
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
                done.ack = core.finish(&done.entry);
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
        // The call that takes its packed entry away goes last, so that
        // the others' dead letters still find the entry to keep.
        refused.sort_by_key(|(i, _)| unwritten[*i].0.ack.entry);
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
            match done.entry.split_once('#') {
                Some((entry, part)) => {
                    let head = CallHead {
                        id: lease.id.as_str().into(),
                        task: lease.task.as_str().into(),
                        ..CallHead::default()
                    };
                    let at = part.parse().unwrap_or(0);
                    let error = |_: usize, _: &str| error.clone();
                    dead_packed(
                        core,
                        &mut link,
                        entry,
                        "",
                        &[(at, &head)],
                        &error,
                        1,
                        done.ack,
                    );
                }
                None => dead_letter(core, &mut link, &done.entry, &lease, &error, 1),
            }
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
        let mut parts = lock(&core.parts);
        for &i in finished.iter().rev() {
            let (done, _) = unwritten.swap_remove(i);
            held.remove(&done.entry);
            // A packed entry is held until its last call is written.
            if done.ack.entry {
                if let Some((entry, _)) = done.entry.split_once('#') {
                    parts.remove(entry);
                }
            }
        }
        drop(parts);
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
        .arg(3)
        .arg(core.keys.tasks())
        .arg(&reply)
        .arg(core.keys.withdrawn())
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
    let acked = || {
        members
            .iter()
            .map(|&i| &unwritten[i].0)
            .filter(|d| d.ack.entry)
    };
    cmd.arg(acked().count());
    for done in acked() {
        cmd.arg(entry_of(&done.entry));
    }
    for done in acked().filter(|d| d.ack.withdrawn) {
        cmd.arg(entry_of(&done.entry));
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
            let mut ids: Vec<String> = lock(&core.inflight)
                .keys()
                .map(|key| entry_of(key).to_string())
                .collect();
            ids.sort_unstable();
            ids.dedup();
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

/// Dead-letters packed entry `e` (id `entry`), delivered `deliveries`
/// times and never completed (last held by `consumer`): one dead letter,
/// and each call that was not withdrawn fails for its client.
fn give_up_packed(
    core: &Core,
    link: &mut Link,
    entry: &str,
    e: &Entry,
    consumer: &str,
    deliveries: u64,
) {
    let trusted = match &core.seal {
        None => true,
        Some(seal) => match check_packed(core, seal, e) {
            Ok(_) => true,
            Err((_, trusted)) => trusted,
        },
    };
    let reply = if trusted {
        e.text("reply").unwrap_or("")
    } else {
        ""
    };
    let calls = unpack_calls(e).unwrap_or_default();
    let withdrawn = withdrawn_of(core, link, std::slice::from_ref(e), true)
        .and_then(|w| w.into_iter().next().flatten())
        .unwrap_or_default();
    let skip: Vec<usize> = withdrawn
        .split(',')
        .filter_map(|i| i.parse().ok())
        .collect();
    let which: Vec<(usize, &CallHead<'_>)> = calls
        .iter()
        .map(|(h, _)| h)
        .enumerate()
        .filter(|(i, _)| !skip.contains(i))
        .collect();
    let error = |_: usize, task: &str| TaskError::Broker {
        task: task.to_string(),
        message: format!(
            "delivered {deliveries} times and never completed (last held by {consumer}): {}",
            TaskError::WorkerDied {
                task: task.to_string(),
                pid: 0,
                cause: ExitCause::Unknown,
            }
        ),
    };
    dead_packed(
        core,
        link,
        entry,
        reply,
        &which,
        &error,
        deliveries,
        Ack::whole(),
    );
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
        if consumer == core.consumer && core.holds(&entry) {
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
            if e.fields.contains_key("calls") {
                give_up_packed(core, link, &entry, &e, &consumer, deliveries);
                continue;
            }
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
        let claimed = entries(claimed);
        // Cancels before the first claim count: the withdrawn hash holds
        // them until the entry goes.
        let Some(withdrawn) = withdrawn_of(core, link, &claimed, true) else {
            continue;
        };
        for (e, w) in claimed.into_iter().zip(withdrawn) {
            start(core, link, e, w.as_deref(), tx);
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
