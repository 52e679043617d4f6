//! The cluster worker: fetches tasks from a queue's stream, runs them in a
//! local pool (worker processes by default, so a crash costs one task),
//! and writes each result back.
//!
//! Three threads, each with its own connection:
//! - **fetch** (the caller of [`Worker::run`]): `XREADGROUP ... COUNT free
//!   BLOCK`, only as many tasks as there are free slots; each task is
//!   checked (known name, same signature) and handed to the pool;
//! - **complete**: for a batch of finished tasks, in one `MULTI/EXEC`,
//!   XADD their results packed in one entry per client, then XACK and XDEL
//!   the tasks, so a result is never acknowledged without being stored; and,
//!   for a task that has run `NOTICE_DELAY` (2 ms), a "started" notice to
//!   its client (a task that finishes sooner sends only its result);
//! - **maintain**: the heartbeat key (with a TTL), lease renewal of running
//!   tasks (`XCLAIM ... JUSTID`), and the reclaim of tasks idle past the
//!   visibility timeout in other consumers' hands (their worker died):
//!   claimed and run again, or, past `max_deliveries`, dead-lettered with
//!   the reason and failed for their client.
//!
//! Stopping (the [`StopHandle`], or SIGINT/SIGTERM in `multitask worker`)
//! drains: no new task is fetched, running ones finish and are written.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::cluster::broker::{
    entries, pack_results, stream_reply, Broker, Entry, Link, Packed, ToPack,
};
use crate::cluster::client::random;
use crate::cluster::keys::{Keys, GROUP};
use crate::error::{Error, ExitCause, TaskError};
use crate::executor::RawExecutor;
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
    pool: Option<Box<dyn RawExecutor>>,
    /// Idle time after which another worker may take a task over.
    visibility: Duration,
    /// Deliveries after which a task is dead-lettered.
    max_deliveries: u32,
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("url", &crate::executor::redact(&self.url))
            .field("queue", &self.queue)
            .field("concurrency", &self.concurrency)
            .field("visibility", &self.visibility)
            .field("max_deliveries", &self.max_deliveries)
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// The queue to serve (default: the URL's `?queue=`, else `default`).
    pub fn queue(mut self, q: impl Into<String>) -> Self {
        self.queue = Some(q.into());
        self
    }

    /// Tasks at once (default: usable CPUs).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Runs tasks on `pool` instead of a process pool of `concurrency`
    /// workers (a `ThreadPool` trades crash isolation for speed).
    pub fn pool(mut self, pool: impl RawExecutor + 'static) -> Self {
        self.pool = Some(Box::new(pool));
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

    /// Connects and prepares the queue (its consumer group).
    pub fn build(self) -> Result<Worker, Error> {
        let mut url = self.url.clone();
        if let Some(q) = &self.queue {
            let base = url
                .split_once('?')
                .map_or(url.as_str(), |(b, _)| b)
                .to_string();
            url = format!("{base}?queue={q}");
        }
        let broker = Broker::open(&url)?;
        let keys = Keys::new(&broker.url.queue);
        let mut probe = broker.connect(Duration::from_secs(5))?;
        ensure_group(&mut probe, &keys).map_err(|e| broker.error(&e))?;
        let pool = match self.pool {
            Some(p) => p,
            None => Box::new(ProcessPool::new(self.concurrency)?),
        };
        let host = crate::info::host_name();
        let pid = std::process::id();
        Ok(Worker {
            core: Arc::new(Core {
                consumer: format!("{host}-{pid}-{:x}", random()),
                me: format!("{host} pid {pid}"),
                broker,
                keys,
                pool,
                concurrency: self.concurrency,
                inflight: Mutex::new(HashMap::new()),
                freed: Condvar::new(),
                stop: StopHandle::default(),
                visibility: self.visibility,
                max_deliveries: self.max_deliveries,
            }),
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

/// A task in a worker's hands.
#[derive(Debug)]
struct Held {
    /// Its lease.
    lease: Lease,
    /// When the worker took it.
    since: Instant,
    /// True once its client was told it started.
    announced: bool,
}

/// How long a task runs before its client is told it started. A task that
/// finishes sooner (most small ones) sends its result alone: a third fewer
/// stream entries per task. Until the notice, the client sees the task
/// pending, and a `cancel` there succeeds while the task may still run (its
/// result is then dropped); with a notice sent at once, the same holds
/// for the time the notice takes to arrive.
const NOTICE_DELAY: Duration = Duration::from_millis(2);

/// What the completer hears.
#[derive(Debug)]
enum Note {
    /// A task finished.
    Done(Done),
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
    pool: Box<dyn RawExecutor>,
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
}

/// A worker serving one queue. See the module docs.
pub struct Worker {
    /// Shared with its threads.
    core: Arc<Core>,
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

    /// Serves the queue until stopped, then drains and returns.
    pub fn run(self) -> Result<(), Error> {
        let core = self.core;
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
        while !core.stop.is_stopped() {
            let free = {
                let held = lock(&core.inflight);
                if held.len() >= core.concurrency {
                    let _ = core.freed.wait_timeout(held, Duration::from_millis(200));
                    continue;
                }
                core.concurrency - held.len()
            };
            let reply = link.run(|con| {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(&core.consumer)
                    .arg("COUNT")
                    .arg(free)
                    .arg("BLOCK")
                    .arg(block.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(core.keys.tasks())
                    .arg(">")
                    .query::<redis::Value>(con)
            });
            match reply {
                Ok(v) => {
                    let fetched = stream_reply(&v);
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
                Err(_) => {}
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
    let entry = match task::resolve(name, sig, &core.me) {
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
    };
    lock(&core.inflight).insert(e.id.clone(), held);
    let entry_id = e.id.clone();
    match core.pool.submit_raw(entry, payload.clone()) {
        Ok(fut) => {
            let tx = tx.clone();
            fut.add_done_callback(move |r| {
                let _ = tx.send(Note::Done(Done {
                    entry: entry_id,
                    lease,
                    outcome: r.clone(),
                }));
            });
        }
        Err(refused) => {
            let _ = tx.send(Note::Done(Done {
                entry: entry_id,
                lease,
                outcome: Err(refused.error),
            }));
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
        let at = held.since + NOTICE_DELAY;
        if at <= now {
            held.announced = true;
            due.push((held.lease.clone(), held.since));
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
    for (l, since) in leases {
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
            .arg(std::process::id())
            .arg("held_us")
            .arg(since.elapsed().as_micros() as u64)
            .ignore();
    }
}

/// Moves a task to the dead-letter stream with `error` as the reason, fails
/// it for its client, and removes it from the task stream, in one
/// transaction.
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
    let _ = link.run(|con| {
        let mut p = redis::pipe();
        p.atomic();
        p.cmd("XADD")
            .arg(core.keys.dead())
            .arg("*")
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
            .arg(&core.me)
            .ignore();
        if !lease.reply.is_empty() {
            p.cmd("XADD")
                .arg(&lease.reply)
                .arg("*")
                .arg("id")
                .arg(&lease.id)
                .arg("task")
                .arg(&lease.task)
                .arg("error")
                .arg(&json)
                .ignore();
        }
        p.cmd("XACK")
            .arg(core.keys.tasks())
            .arg(GROUP)
            .arg(entry)
            .ignore();
        p.cmd("XDEL").arg(core.keys.tasks()).arg(entry).ignore();
        p.query::<()>(con)
    });
}

/// Most finished tasks written in one transaction.
const COMPLETE_BATCH: usize = 256;

/// Writes finished tasks (their results packed per client, then one XACK
/// and one XDEL of them all, in one transaction) and the started notices
/// that fell due, in one round trip.
fn complete_loop(core: &Core, rx: &Receiver<Note>) {
    let mut link = Link::new(&core.broker, Duration::from_secs(5));
    let host = crate::info::host_name();
    // When the next started notice falls due, if one is waited for.
    let mut next_notice: Option<Instant> = None;
    loop {
        let first = match next_notice {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_deadline(at),
        };
        let mut batch = Vec::new();
        match first {
            Ok(Note::Done(d)) => batch.push(d),
            Ok(Note::Held) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while batch.len() < COMPLETE_BATCH {
            match rx.try_recv() {
                Ok(Note::Done(d)) => batch.push(d),
                Ok(Note::Held) => {}
                Err(_) => break,
            }
        }
        // Tasks finishing in this batch need no notice: mark them first,
        // and note how long each was held.
        let mut ran = Vec::with_capacity(batch.len());
        if !batch.is_empty() {
            let mut held = lock(&core.inflight);
            for done in &batch {
                ran.push(held.get_mut(&done.entry).map_or(Duration::ZERO, |h| {
                    h.announced = true;
                    h.since.elapsed()
                }));
            }
        }
        let (notices, next) = due_notices(core);
        next_notice = next;
        if batch.is_empty() && notices.is_empty() {
            continue;
        }
        let mut tries = 0u32;
        loop {
            let r = link.run(|con| {
                let mut p = redis::pipe();
                add_notices(&mut p, core, &host, &notices);
                if !batch.is_empty() {
                    add_results(&mut p, core, &host, &batch, &ran);
                }
                p.query::<()>(con)
            });
            tries += 1;
            // A broker that is away is waited for (the Link backs off); a
            // result is given up only when the worker is stopping and the
            // broker stayed away for a minute: then the task stays pending
            // and another worker reclaims and reruns it.
            if r.is_ok() || (core.stop.is_stopped() && tries > 600) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if batch.is_empty() {
            continue;
        }
        let mut held = lock(&core.inflight);
        for done in &batch {
            held.remove(&done.entry);
        }
        drop(held);
        core.freed.notify_all();
    }
}

/// Most payload bytes packed in one result entry.
const PACK_BYTES: usize = 8 << 20;

/// Adds to `p` one transaction that writes the finished tasks' results to
/// their clients' streams, packed (one entry per client and batch, with
/// where the tasks ran and for how long, `ran`, for traces), then
/// acknowledges and deletes the tasks with one XACK and one XDEL, so that
/// no task is acknowledged without its result.
fn add_results(p: &mut redis::Pipeline, core: &Core, host: &str, batch: &[Done], ran: &[Duration]) {
    p.cmd("MULTI").ignore();
    // Group by client, keeping each client's order.
    let mut by_client: Vec<(&str, Vec<ToPack<'_>>)> = Vec::new();
    for (done, ran) in batch.iter().zip(ran) {
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
        };
        let reply = done.lease.reply.as_str();
        match by_client.iter_mut().find(|(r, _)| *r == reply) {
            Some((_, v)) => v.push((head, payload)),
            None => by_client.push((reply, vec![(head, payload)])),
        }
    }
    for (reply, results) in &by_client {
        let mut from = 0;
        while from < results.len() {
            // Split a client's results where their payloads pass PACK_BYTES.
            let mut to = from;
            let mut bytes = 0usize;
            while to < results.len()
                && (to == from || bytes + results[to].0.len as usize <= PACK_BYTES)
            {
                bytes += results[to].0.len as usize;
                to += 1;
            }
            let (packed, data) = pack_results(&results[from..to]);
            p.cmd("XADD")
                .arg(*reply)
                .arg("*")
                .arg("batch")
                .arg(packed)
                .arg("data")
                .arg(data)
                .arg("worker")
                .arg(&core.me)
                .arg("host")
                .arg(host)
                .arg("pid")
                .arg(std::process::id())
                .ignore();
            from = to;
        }
    }
    let entries: Vec<&String> = batch.iter().map(|d| &d.entry).collect();
    p.cmd("XACK")
        .arg(core.keys.tasks())
        .arg(GROUP)
        .arg(&entries)
        .ignore();
    p.cmd("XDEL").arg(core.keys.tasks()).arg(&entries).ignore();
    p.cmd("EXEC").ignore();
}

/// Heartbeats, lease renewal and reclaim, until the worker stops.
fn maintain_loop(core: &Arc<Core>, tx: &Sender<Note>) {
    let mut link = Link::new(&core.broker, Duration::from_secs(5));
    let beat_every = Duration::from_secs(2);
    let renew_every = core.visibility / 3;
    let reclaim_every = (core.visibility / 2).max(Duration::from_millis(200));
    let (mut beat, mut renew, mut reclaim) =
        (Instant::now() - beat_every, Instant::now(), Instant::now());
    while !core.stop.is_stopped() || !lock(&core.inflight).is_empty() {
        if beat.elapsed() >= beat_every {
            heartbeat(core, &mut link);
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

fn heartbeat(core: &Core, link: &mut Link) {
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let info = serde_json::json!({
        "consumer": core.consumer,
        "worker": core.me,
        "host": crate::info::host_name(),
        "pid": std::process::id(),
        "concurrency": core.concurrency,
        "running": lock(&core.inflight).len(),
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
        if consumer == core.consumer {
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
            let e = entries(&found).into_iter().next().unwrap_or_default();
            let lease = Lease {
                id: e.text("id").unwrap_or("").to_string(),
                reply: e.text("reply").unwrap_or("").to_string(),
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
        for e in entries(&claimed) {
            start(core, link, e, tx);
        }
        let _ = tx.send(Note::Held);
    }
}
