//! `ClusterPool`: the client side of a queue on Redis.
//!
//! `submit` encodes the batch, registers the call as pending, and queues
//! it for a writer thread, which XADDs every queued call to the task
//! stream in one pipelined round trip (and waits out a broker restart). A reader thread with its own connection
//! blocks on the client's result stream and resolves futures as results
//! arrive, dropping any result whose call is no longer pending (a task that
//! ran twice after its worker died: at-least-once delivery, exactly-once
//! completion as the client sees it). Futures the caller cancels are swept:
//! a Lua script deletes the task from the stream if no worker has it yet.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::cluster::broker::{stream_reply, unpack_results, Broker, Entry, Link};
use crate::cluster::keys::{Keys, GROUP};
use crate::error::{Error, SubmitError, TaskError};
use crate::executor::{redact, ChunkFuture, Executor, Shutdown};
use crate::future::TaskFuture;
use crate::remote::{deliver_chunk, deliver_one, Deliver};
use crate::sync::lock_std as lock;
use crate::task::{self, Task};
use crate::trace::{TaskEvent, Tracer};

/// The default cap on an encoded call: 64 MiB.
const DEFAULT_MAX_PAYLOAD: usize = 64 << 20;
/// How long the reader blocks in one XREAD.
const READ_BLOCK: Duration = Duration::from_millis(500);
/// How often cancelled calls are swept from the task stream.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Deletes a task entry if no worker has claimed it: KEYS[1] the task
/// stream, ARGV[1] the group, ARGV[2] the entry id. Returns 1 if deleted.
const CANCEL_LUA: &str = r"
local claimed = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #claimed > 0 then return 0 end
return redis.call('XDEL', KEYS[1], ARGV[2])
";

/// A call waiting for its result.
struct Pending {
    /// Resolves the caller's future.
    deliver: Box<dyn Deliver>,
    /// The task stream entry, for cancelling it.
    entry: String,
    /// The task's name, for the trace.
    task: &'static str,
    /// When it was submitted, when tracing.
    submitted: Option<Instant>,
    /// When a worker said it started, and which.
    started: Option<(Instant, RanBy)>,
}

/// What the pool handle and its reader share.
struct ClientShared {
    /// The broker.
    broker: Broker,
    /// The queue's keys.
    keys: Keys,
    /// This client's result stream.
    results: String,
    /// This client's id, the prefix of its call ids.
    client: String,
    /// Calls waiting for the writer thread, which XADDs them in batches.
    outbox: Sender<Outgoing>,
    /// Calls in flight by call id.
    pending: Mutex<HashMap<String, Pending>>,
    /// Signalled when `pending` empties.
    drained: Condvar,
    /// Set by `shutdown`; submits fail after it.
    closed: AtomicBool,
    /// Set when the reader is to exit once nothing is pending.
    stop: AtomicBool,
    /// Next call number.
    seq: AtomicU64,
    /// Cap on an encoded call.
    max_payload: usize,
    /// Workers the pool reports (for the map engine's window).
    workers: usize,
    /// Results dropped because their call was already resolved.
    duplicates: AtomicU64,
    /// Records each task, once set.
    tracer: std::sync::OnceLock<Tracer>,
}

/// An executor whose workers are other processes, on this machine or
/// others, reached through a queue on Redis.
///
/// ```no_run
/// use multitasking::{ClusterPool, Executor};
/// #[multitasking::task]
/// fn double(x: u64) -> u64 { x * 2 }
///
/// let pool = ClusterPool::connect("redis://127.0.0.1:6379/0?queue=demo").unwrap();
/// // Workers: `multitask worker --broker redis://127.0.0.1:6379/0 --queue demo`,
/// // or `multitasking::cluster::Worker::builder(url).build()?.run()` in your program.
/// assert_eq!(pool.submit(double, 21).unwrap().result().unwrap(), 42);
/// ```
pub struct ClusterPool {
    /// Shared with the reader.
    shared: Arc<ClientShared>,
    /// The reader thread, until joined.
    reader: Mutex<Option<JoinHandle<()>>>,
    /// The writer thread, until joined.
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for ClusterPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterPool")
            .field("queue", &self.shared.keys.queue)
            .field("client", &self.shared.client)
            .finish_non_exhaustive()
    }
}

impl ClusterPool {
    /// Connects to the queue `url` names: `redis://[user:password@]host:port/db?queue=name`
    /// (`rediss://` for TLS; default queue `default`). Fails at once with a
    /// clear error if the broker can't be reached or refuses the password.
    pub fn connect(url: &str) -> Result<ClusterPool, Error> {
        ClusterPool::connect_with(url, 0)
    }

    /// As [`ClusterPool::connect`], telling the map engine to keep windows
    /// for `workers` remote workers (default: the usable CPUs here).
    pub fn connect_with(url: &str, workers: usize) -> Result<ClusterPool, Error> {
        let broker = Broker::open(url)?;
        // Fail now, not at the first submit: ping on a fresh connection.
        let mut first = broker.connect(Duration::from_secs(5))?;
        redis::cmd("PING")
            .query::<String>(&mut first)
            .map_err(|e| broker.error(&e))?;
        let keys = Keys::new(&broker.url.queue);
        let (out_tx, out_rx) = crossbeam_channel::unbounded();
        let client = format!(
            "{}-{}-{:x}",
            crate::info::host_name(),
            std::process::id(),
            random()
        );
        let shared = Arc::new(ClientShared {
            results: keys.results(&client),
            outbox: out_tx,
            broker,
            keys,
            client,
            pending: Mutex::new(HashMap::new()),
            drained: Condvar::new(),
            closed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            max_payload: DEFAULT_MAX_PAYLOAD,
            workers: if workers == 0 {
                crate::info::usable_cpus()
            } else {
                workers
            },
            duplicates: AtomicU64::new(0),
            tracer: std::sync::OnceLock::new(),
        });
        let s = shared.clone();
        let reader = std::thread::Builder::new()
            .name("multitask-cluster-reader".to_string())
            .spawn(move || read_results(&s))
            .map_err(|e| Error::io("starting the result reader", e))?;
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name("multitask-cluster-writer".to_string())
            .spawn(move || write_calls(&s, &out_rx))
            .map_err(|e| Error::io("starting the writer", e))?;
        Ok(ClusterPool {
            shared,
            reader: Mutex::new(Some(reader)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Records every task in `tracer`: submitted and finished as this
    /// client saw them, started when the worker said so, on which worker,
    /// host and pid. Set once; later calls are ignored.
    pub fn with_tracer(self, tracer: Tracer) -> Self {
        let _ = self.shared.tracer.set(tracer);
        self
    }

    /// The queue this pool submits to.
    pub fn queue(&self) -> &str {
        &self.shared.keys.queue
    }

    /// Results dropped because their call had already been resolved: tasks
    /// that ran more than once after a worker died.
    pub fn duplicates_dropped(&self) -> u64 {
        self.shared.duplicates.load(Ordering::Relaxed)
    }

    /// Calls in flight.
    pub fn pending(&self) -> usize {
        lock(&self.shared.pending).len()
    }

    fn send<I>(
        &self,
        name: &'static str,
        signature: u64,
        input: I,
        build: impl FnOnce(&I) -> Result<(Vec<u8>, Box<dyn Deliver>), TaskError>,
    ) -> Result<(), SubmitError<I>> {
        let refuse = |input: I, error: TaskError| Err(SubmitError { input, error });
        if self.shared.closed.load(Ordering::SeqCst) {
            return refuse(
                input,
                TaskError::Shutdown {
                    task: name.to_string(),
                },
            );
        }
        let (payload, deliver) = match crate::panic::catch(name, || build(&input)) {
            Ok(Ok(b)) => b,
            Ok(Err(e)) | Err(e) => return refuse(input, e),
        };
        if payload.len() > self.shared.max_payload {
            return refuse(
                input,
                TaskError::TooLarge {
                    task: name.to_string(),
                    size: payload.len(),
                    limit: self.shared.max_payload,
                },
            );
        }
        let id = format!(
            "{}:{}",
            self.shared.client,
            self.shared.seq.fetch_add(1, Ordering::Relaxed)
        );
        // Registered before the XADD: the result may arrive before XADD
        // returns.
        lock(&self.shared.pending).insert(
            id.clone(),
            Pending {
                deliver,
                entry: String::new(),
                task: name,
                submitted: self
                    .shared
                    .tracer
                    .get()
                    .filter(|t| t.is_enabled())
                    .map(|_| Instant::now()),
                started: None,
            },
        );
        let _ = self.shared.outbox.send(Outgoing {
            id,
            task: name,
            signature,
            payload,
        });
        Ok(())
    }
}

/// A call on its way to the task stream.
struct Outgoing {
    /// The call id.
    id: String,
    /// The task's name.
    task: &'static str,
    /// Its signature hash.
    signature: u64,
    /// The encoded batch.
    payload: Vec<u8>,
}

/// How long the writer keeps trying to reach an absent broker before it
/// fails the calls it holds.
const WRITE_PATIENCE: Duration = Duration::from_secs(30);
/// Most calls written in one pipeline.
const WRITE_BATCH: usize = 512;

/// The writer: XADDs queued calls, as many as are waiting, in one
/// pipelined round trip; waits out a broker restart (up to
/// `WRITE_PATIENCE`) and then fails the calls it holds with a broker error.
fn write_calls(shared: &ClientShared, rx: &Receiver<Outgoing>) {
    let mut link = Link::new(&shared.broker, Duration::from_secs(5));
    let tasks = shared.keys.tasks();
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => {
                if shared.stop.load(Ordering::SeqCst) && rx.is_empty() {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let began = Instant::now();
        let written = loop {
            let r = link.run(|con| {
                let mut p = redis::pipe();
                for c in &batch {
                    p.cmd("XADD")
                        .arg(&tasks)
                        .arg("*")
                        .arg("id")
                        .arg(&c.id)
                        .arg("task")
                        .arg(c.task)
                        .arg("sig")
                        .arg(c.signature.to_string())
                        .arg("reply")
                        .arg(&shared.results)
                        .arg("payload")
                        .arg(&c.payload[..]);
                }
                p.query::<Vec<String>>(con)
            });
            match r {
                Ok(entries) => break Ok(entries),
                Err(e) if began.elapsed() >= WRITE_PATIENCE => break Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        match written {
            Ok(entries) => {
                let mut pending = lock(&shared.pending);
                for (c, entry) in batch.iter().zip(entries) {
                    if let Some(p) = pending.get_mut(&c.id) {
                        p.entry = entry;
                    }
                }
            }
            Err(e) => {
                for c in batch {
                    if let Some(p) = lock(&shared.pending).remove(&c.id) {
                        p.deliver.finish(Err(TaskError::Broker {
                            task: c.task.to_string(),
                            message: format!("the task could not be queued: {e}"),
                        }));
                    }
                }
            }
        }
    }
}

/// A random 64-bit number, from the std hasher's per-process keys.
pub(crate) fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// The reader: resolves futures from the result stream until stopped and
/// nothing is pending.
fn read_results(shared: &ClientShared) {
    let mut link = Link::new(&shared.broker, READ_BLOCK + Duration::from_secs(2));
    let mut last = "0-0".to_string();
    let mut swept = Instant::now();
    loop {
        if shared.stop.load(Ordering::SeqCst) && lock(&shared.pending).is_empty() {
            break;
        }
        let reply = link.run(|con| {
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(512)
                .arg("BLOCK")
                .arg(READ_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&shared.results)
                .arg(&last)
                .query::<redis::Value>(con)
        });
        let Ok(reply) = reply else { continue };
        let entries = stream_reply(&reply);
        let mut seen = Vec::with_capacity(entries.len());
        for e in entries {
            last = e.id.clone();
            seen.push(e.id.clone());
            if e.fields.contains_key("batch") {
                let ran_by = RanBy::of(&e, "worker");
                match unpack_results(&e) {
                    Ok(results) => {
                        for (head, outcome) in results {
                            let ran = Duration::from_micros(head.ran_us);
                            resolve(shared, &head.id, outcome, Some((&ran_by, ran)));
                        }
                    }
                    // Whose results these were is lost with the entry:
                    // those calls wait, as for a result that never came.
                    Err(why) => eprintln!(
                        "multitask: dropped a malformed result entry {} on {}: {why}",
                        e.id, shared.results
                    ),
                }
                continue;
            }
            let Some(id) = e.text("id").map(str::to_string) else {
                continue;
            };
            if e.fields.contains_key("started") {
                if let Some(p) = lock(&shared.pending).get_mut(&id) {
                    p.deliver.start(None);
                    if let Some(submitted) = p.submitted {
                        // Started `held_us` before the notice was written.
                        let held = e
                            .text("held_us")
                            .and_then(|us| us.parse().ok())
                            .map_or(Duration::ZERO, Duration::from_micros);
                        let at = started_ago(held, submitted);
                        p.started = Some((at, RanBy::of(&e, "started")));
                    }
                }
                continue;
            }
            let outcome = match (e.fields.get("payload"), e.fields.get("error")) {
                (Some(bytes), _) => Ok(bytes.clone()),
                (None, Some(err)) => Err(serde_json::from_slice::<TaskError>(err).unwrap_or_else(
                    |_| TaskError::Broker {
                        task: e.text("task").unwrap_or("?").to_string(),
                        message: String::from_utf8_lossy(err).into_owned(),
                    },
                )),
                (None, None) => Err(TaskError::Broker {
                    task: e.text("task").unwrap_or("?").to_string(),
                    message: "a result entry with neither payload nor error".to_string(),
                }),
            };
            resolve(shared, &id, outcome, None);
        }
        if !seen.is_empty() {
            let _ = link.run(|con| {
                redis::cmd("XDEL")
                    .arg(&shared.results)
                    .arg(&seen)
                    .query::<i64>(con)
            });
        }
        if swept.elapsed() >= SWEEP_EVERY {
            sweep(shared, &mut link);
            swept = Instant::now();
        }
        if lock(&shared.pending).is_empty() {
            shared.drained.notify_all();
        }
    }
    let _ = link.run(|con| redis::cmd("DEL").arg(&shared.results).query::<i64>(con));
    shared.drained.notify_all();
}

/// The worker that ran a task, as a result or started notice names it.
#[derive(Debug, Clone)]
struct RanBy {
    worker: String,
    host: String,
    pid: u32,
}

impl RanBy {
    /// From entry `e`, whose field `worker_field` names the worker.
    fn of(e: &Entry, worker_field: &str) -> RanBy {
        RanBy {
            worker: e.text(worker_field).unwrap_or("?").to_string(),
            host: e.text("host").unwrap_or("?").to_string(),
            pid: e.text("pid").and_then(|p| p.parse().ok()).unwrap_or(0),
        }
    }
}

/// Resolves call `id` with `outcome`, once: a second result for it (a task
/// run twice after its worker was presumed dead) is counted and dropped.
/// `ran` is who ran it and for how long, when the result says.
fn resolve(
    shared: &ClientShared,
    id: &str,
    outcome: Result<Vec<u8>, TaskError>,
    ran: Option<(&RanBy, Duration)>,
) {
    let Some(p) = lock(&shared.pending).remove(id) else {
        shared.duplicates.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if let (Some(submitted), Some(tracer)) = (p.submitted, shared.tracer.get()) {
        trace(tracer, &p, ran, submitted, outcome.is_ok());
    }
    p.deliver.finish(outcome);
}

/// When a task started that a worker says it has held for `ago`, on this
/// client's clock: never before it was submitted.
fn started_ago(ago: Duration, submitted: Instant) -> Instant {
    Instant::now()
        .checked_sub(ago)
        .unwrap_or(submitted)
        .max(submitted)
}

/// Records a finished call.
fn trace(
    tracer: &Tracer,
    p: &Pending,
    ran: Option<(&RanBy, Duration)>,
    submitted: Instant,
    ok: bool,
) {
    let now = Instant::now();
    let (started, by) = match (&p.started, ran) {
        (Some((at, by)), _) => (*at, by.clone()),
        // No started notice (the task was quick): the result says where it
        // ran and for how long.
        (None, Some((by, ran))) => (started_ago(ran, submitted), by.clone()),
        (None, None) => (
            submitted,
            RanBy {
                worker: "?".to_string(),
                host: "?".to_string(),
                pid: 0,
            },
        ),
    };
    let RanBy { worker, host, pid } = by;
    tracer.record(TaskEvent {
        task: p.task.to_string(),
        id: 0,
        worker,
        pid,
        host,
        submitted: tracer.since_epoch(submitted),
        started: tracer.since_epoch(started),
        finished: tracer.since_epoch(now),
        ok,
        peak_rss: None,
        cpu: None,
        input: None,
    });
}

/// Forgets cancelled calls, deleting their tasks if no worker has them.
fn sweep(shared: &ClientShared, link: &mut Link) {
    let cancelled: Vec<(String, String)> = lock(&shared.pending)
        .iter()
        .filter(|(_, p)| p.deliver.is_cancelled())
        .map(|(id, p)| (id.clone(), p.entry.clone()))
        .collect();
    for (id, entry) in cancelled {
        if !entry.is_empty() {
            let _ = link.run(|con| {
                redis::Script::new(CANCEL_LUA)
                    .key(shared.keys.tasks())
                    .arg(GROUP)
                    .arg(&entry)
                    .invoke::<i64>(con)
            });
        }
        lock(&shared.pending).remove(&id);
    }
}

impl Executor for ClusterPool {
    fn submit<T: Task>(
        &self,
        _task: T,
        input: T::Input,
    ) -> Result<TaskFuture<T::Output>, SubmitError<T::Input>> {
        let (fut, promise) = TaskFuture::pending(T::NAME);
        self.send(T::NAME, T::SIGNATURE, input, |input| {
            let payload = task::encode(T::NAME, T::CODEC, std::slice::from_ref(input))?;
            Ok((payload, deliver_one::<T>(promise)))
        })?;
        Ok(fut)
    }

    fn submit_chunk<T: Task>(
        &self,
        _task: T,
        inputs: Vec<T::Input>,
    ) -> Result<ChunkFuture<T::Output>, SubmitError<Vec<T::Input>>> {
        let (fut, promise) = TaskFuture::pending(T::NAME);
        let n = inputs.len();
        self.send(T::NAME, T::SIGNATURE, inputs, |inputs| {
            let payload = task::encode(T::NAME, T::CODEC, inputs)?;
            Ok((payload, deliver_chunk::<T>(promise, n)))
        })?;
        Ok(fut)
    }

    fn shutdown(&self, how: Shutdown) {
        self.shared.closed.store(true, Ordering::SeqCst);
        if how.cancel_futures {
            // Cancel what no worker has started; started calls resolve as
            // usual.
            let queued: Vec<Pending> = {
                let mut pending = lock(&self.shared.pending);
                let ids: Vec<String> = pending
                    .iter()
                    .filter(|(_, p)| !p.deliver.is_started())
                    .map(|(id, _)| id.clone())
                    .collect();
                ids.iter().filter_map(|id| pending.remove(id)).collect()
            };
            let mut link = Link::new(&self.shared.broker, Duration::from_secs(5));
            for p in queued {
                if !p.entry.is_empty() {
                    let _ = link.run(|con| {
                        redis::Script::new(CANCEL_LUA)
                            .key(self.shared.keys.tasks())
                            .arg(GROUP)
                            .arg(&p.entry)
                            .invoke::<i64>(con)
                    });
                }
                p.deliver.cancel();
            }
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        if how.wait {
            let mut pending = lock(&self.shared.pending);
            while !pending.is_empty() {
                pending = self
                    .shared
                    .drained
                    .wait_timeout(pending, Duration::from_millis(100))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            drop(pending);
            for h in [lock(&self.writer).take(), lock(&self.reader).take()]
                .into_iter()
                .flatten()
            {
                let _ = h.join();
            }
        }
    }

    fn max_workers(&self) -> usize {
        self.shared.workers
    }

    fn spec(&self) -> String {
        format!(
            "{}?queue={}",
            redact(&self.shared.broker.url.redis),
            self.shared.keys.queue
        )
    }
}

impl Drop for ClusterPool {
    fn drop(&mut self) {
        self.shutdown(Shutdown::default());
    }
}
