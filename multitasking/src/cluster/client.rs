//! `ClusterPool`: the client side of a queue on Redis.
//!
//! `submit` encodes the batch, registers the call as pending, and queues
//! it for a writer thread, which XADDs every queued call to the task
//! stream in one pipelined round trip, calls of one task that finish fast
//! several to an entry (see [`Packing`]). A reader thread with its own
//! connection blocks on the client's result stream and resolves futures as
//! results arrive, dropping any result whose call is no longer pending (a
//! task that ran twice after its worker died: at-least-once delivery,
//! exactly-once completion as the client sees it).
//!
//! A call's [`Place`] says where it is on its way to a worker; `cancel`
//! asks the broker to take it back (see [`ClientShared::withdraw`]): a Lua
//! script deletes the task entry (or, for a call in a packed entry, marks
//! it withdrawn) only if no worker has claimed it, so the cancel and the
//! worker's `XREADGROUP` race in Redis and exactly one wins.
//!
//! No wait is unbounded. The reader audits calls queued for a while: one
//! whose entry is gone with no result on its way was lost by the broker and
//! fails with [`TaskError::Lost`]. A broker unreachable for the broker
//! timeout (30 s by default) fails every pending call; a refusal no retry
//! cures (`NOPERM`, `WRONGTYPE`, a refused password) fails the calls it
//! concerns at once. The result stream expires unless refreshed, so a dead
//! client's results do not stay in Redis.
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::cluster::broker::{
    pack_calls, stream_reply, unpack_results, Broker, CallHead, Entry, Fault, Fnv, Link,
    MAX_PACKED_CALLS,
};
use crate::cluster::keys::{Keys, GROUP, RESULTS_TTL};
use crate::cluster::rate::Rate;
use crate::cluster::seal::{self, Seal};
use crate::error::{Error, SubmitError, TaskError};
use crate::executor::{redact, ChunkFuture, Executor, Shutdown, Terminate};
use crate::future::TaskFuture;
use crate::remote::{deliver_chunk, deliver_one, Deliver};
use crate::sync::lock_std as lock;
use crate::task::{self, Task};
use crate::trace::{TaskEvent, Tracer};
use crate::TaskUsage;

/// What a submit builds: the payload, how to deliver the result, and an
/// input preview when tracing.
type Built = (Vec<u8>, Box<dyn Deliver>, Option<String>);

/// The default cap on an encoded call: 64 MiB.
const DEFAULT_MAX_PAYLOAD: usize = 64 << 20;
/// How long the reader blocks in one XREAD.
const READ_BLOCK: Duration = Duration::from_millis(500);
/// How often the reader looks for calls the broker lost.
const AUDIT_EVERY: Duration = Duration::from_secs(1);
/// Most calls one audit asks about.
const AUDIT_MAX: usize = 1024;
/// How often the reader renews the result stream's expiry.
const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// The default broker timeout: how long the broker may be unreachable
/// before pending calls fail.
const DEFAULT_BROKER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a signed task stays valid after it is written, by default: a
/// worker refuses it later (see [`ClusterPool::with_task_expiry`]).
const DEFAULT_EXPIRY: Duration = Duration::from_secs(600);
/// How long a cancel waits for the writer to learn a call's entry id.
const WITHDRAW_PATIENCE: Duration = Duration::from_secs(5);

/// Takes calls back from task entries no worker has claimed: KEYS[1] the
/// task stream, KEYS[2] the withdrawn hash; ARGV[1] the group, then per
/// call its entry id, its position in a packed entry ('' for an entry of
/// its own) and the calls that entry holds. Returns, per call, 1 if taken
/// back, 0 if a worker holds its entry (or it is gone). An entry of its
/// own is deleted; a call of a packed entry is added to the entry's field
/// in the withdrawn hash, which the worker that claims the entry reads
/// after its claim, and the entry is deleted once all its calls are
/// withdrawn. Before any worker joined the queue there is no group, and
/// nothing is claimed. Atomic: a worker's XREADGROUP claims an entry
/// wholly before or after it.
const WITHDRAW_LUA: &str = r"
local out = {}
local exists = {}
local function claimed(id)
  local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if type(p) == 'table' and p.err then
    -- No group yet: no worker ever joined, so none has claimed it.
    if string.find(p.err, 'NOGROUP', 1, true) then return false end
    error(p.err)
  end
  return #p > 0
end
for i = 2, #ARGV, 3 do
  local id, part, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if claimed(id) then
    out[#out + 1] = 0
  elseif part == '' then
    out[#out + 1] = redis.call('XDEL', KEYS[1], id)
  else
    if exists[id] == nil then
      exists[id] = #redis.call('XRANGE', KEYS[1], id, id) > 0
    end
    if not exists[id] then
      out[#out + 1] = 0
    else
      local had = redis.call('HGET', KEYS[2], id) or ''
      if string.find(',' .. had, ',' .. part .. ',', 1, true) == nil then
        had = had .. part .. ','
      end
      local _, count = string.gsub(had, ',', '')
      if count >= n then
        redis.call('XDEL', KEYS[1], id)
        redis.call('HDEL', KEYS[2], id)
        exists[id] = false
      else
        redis.call('HSET', KEYS[2], id, had)
      end
      out[#out + 1] = 1
    end
  end
end
return out
";

/// Finds task entries that are gone: KEYS[1] the task stream, KEYS[2] the
/// client's result stream, ARGV entry ids. Returns the id of the last
/// entry in the result stream ('' if none), then the 1-based positions of
/// the entries gone. Atomic: a worker writes a result and deletes its task
/// in one step, so an entry gone without a result up to that last id was
/// lost.
const AUDIT_LUA: &str = r"
local gone = {}
for i = 1, #ARGV do
  if #redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i]) == 0 then
    gone[#gone + 1] = i
  end
end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local tail = ''
if #last > 0 then tail = last[1][1] end
return {tail, gone}
";

/// Where in the task stream a call is: an entry of its own, or one of the
/// calls of a packed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spot {
    /// The task stream entry.
    entry: String,
    /// In a packed entry: the call's position, and how many calls the
    /// entry holds.
    part: Option<(u32, u32)>,
}

impl Spot {
    /// How workers name the call: the entry id, or `<entry>#<position>`
    /// (the terminate set's members).
    fn member(&self) -> String {
        match self.part {
            None => self.entry.clone(),
            Some((i, _)) => format!("{}#{i}", self.entry),
        }
    }
}

/// Where a call is on its way to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    /// In the writer's queue: a cancel forgets it, and the writer skips it.
    Outbox,
    /// In a pipeline the writer is sending; its entry id is on its way.
    Writing,
    /// In the task stream at `spot` since `since`: a cancel asks the
    /// broker to take it back, which fails once a worker has claimed its
    /// entry.
    Queued {
        /// Its entry, and where in it.
        spot: Spot,
        /// When the writer learned the entry id.
        since: Instant,
    },
    /// A cancel is asking the broker about it; the audit leaves it alone.
    Withdrawing(Spot),
}

/// A call waiting for its result.
struct Pending {
    /// Resolves the caller's future.
    deliver: Box<dyn Deliver>,
    /// Where the call is.
    place: Place,
    /// The task's name, for the trace.
    task: &'static str,
    /// When it was submitted, when tracing.
    submitted: Option<Instant>,
    /// When a worker said it started, and which.
    started: Option<(Instant, RanBy)>,
    /// A preview of its input, when tracing.
    input: Option<String>,
}

/// The calls in flight by call id. The ids are this client's own; FNV is
/// enough where no one else chooses the keys.
type PendingCalls = HashMap<String, Pending, std::hash::BuildHasherDefault<Fnv>>;

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
    pending: Mutex<PendingCalls>,
    /// Signalled when `pending` empties.
    drained: Condvar,
    /// Signalled when the writer has placed a batch (with `pending`).
    written: Condvar,
    /// The connection cancels use (on the callers' threads).
    cancels: Mutex<Link>,
    /// How long the broker may be unreachable before pending calls fail,
    /// in ms.
    broker_timeout_ms: AtomicU64,
    /// The time limit each task carries to its worker, in ms; 0 for none.
    task_timeout_ms: AtomicU64,
    /// Set while the broker has been unreachable past the broker timeout:
    /// the error, so that new calls fail at once rather than wait again.
    gone: Mutex<Option<String>>,
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
    /// Results read so far by task, for the writer's [`Packing`].
    finished: Mutex<HashMap<&'static str, u64>>,
    /// Most calls per task entry, if fixed (see
    /// [`ClusterPool::with_calls_per_entry`]); 0 to follow the rate.
    per_entry: AtomicUsize,
    /// Records each task, once set.
    tracer: std::sync::OnceLock<Tracer>,
    /// The queue's keys, once set: tasks are signed, results checked.
    seal: std::sync::OnceLock<Seal>,
    /// How long a signed task stays valid after it is written, in ms.
    expiry_ms: AtomicU64,
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
    /// On a Redis Cluster, the clients of the other shards of the queue
    /// (this one is shard 0); submits go to each in turn.
    others: Vec<ClusterPool>,
    /// The next shard to submit to.
    turn: AtomicU64,
    /// The queue as named (a shard's name on a Redis Cluster is `q~i`).
    queue: String,
    /// The URL as given, for `spec`.
    url: String,
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
        let Some(shards) = crate::cluster::shards::shard_urls(url)? else {
            return ClusterPool::connect_shard(url, workers);
        };
        let mut pools = shards
            .iter()
            .map(|s| ClusterPool::connect_shard(s, workers))
            .collect::<Result<Vec<_>, Error>>()?;
        let mut first = pools.remove(0);
        first.others = pools;
        first.queue = crate::cluster::shards::base_queue(&first.queue).to_string();
        first.url = url.to_string();
        Ok(first)
    }

    /// Connects to one queue on one Redis.
    fn connect_shard(url: &str, workers: usize) -> Result<ClusterPool, Error> {
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
            keys,
            client,
            pending: Mutex::new(HashMap::default()),
            drained: Condvar::new(),
            written: Condvar::new(),
            cancels: Mutex::new(Link::new(&broker, Duration::from_secs(5))),
            broker_timeout_ms: AtomicU64::new(DEFAULT_BROKER_TIMEOUT.as_millis() as u64),
            task_timeout_ms: AtomicU64::new(0),
            gone: Mutex::new(None),
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
            finished: Mutex::new(HashMap::new()),
            per_entry: AtomicUsize::new(0),
            tracer: std::sync::OnceLock::new(),
            seal: std::sync::OnceLock::new(),
            expiry_ms: AtomicU64::new(DEFAULT_EXPIRY.as_millis() as u64),
            broker,
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
            queue: shared.keys.queue.clone(),
            url: url.to_string(),
            shared,
            reader: Mutex::new(Some(reader)),
            writer: Mutex::new(Some(writer)),
            others: Vec::new(),
            turn: AtomicU64::new(0),
        })
    }

    /// Every shard's client: this one, then the others.
    fn shards(&self) -> impl Iterator<Item = &ClusterPool> {
        std::iter::once(self).chain(self.others.iter())
    }

    /// The shard the next submit goes to.
    fn next_shard(&self) -> &ClusterPool {
        if self.others.is_empty() {
            return self;
        }
        // Relaxed: a turn only spreads the calls.
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) as usize % (self.others.len() + 1);
        if turn == 0 {
            self
        } else {
            &self.others[turn - 1]
        }
    }

    /// Applies `f` to every shard's client.
    fn each(
        mut self,
        f: impl Fn(ClusterPool) -> Result<ClusterPool, Error>,
    ) -> Result<Self, Error> {
        let others = std::mem::take(&mut self.others);
        let mut me = f(self)?;
        me.others = others.into_iter().map(&f).collect::<Result<_, _>>()?;
        Ok(me)
    }

    /// Records every task in `tracer`: submitted and finished as this
    /// client saw them, started when the worker said so, on which worker,
    /// host and pid. Set once; later calls are ignored.
    pub fn with_tracer(self, tracer: Tracer) -> Self {
        let r = self.each(|p| {
            let _ = p.shared.tracer.set(tracer.clone());
            Ok(p)
        });
        r.expect("setting a tracer does not fail")
    }

    /// Signs every task with `key` (HMAC-SHA256) and trusts only results
    /// signed with it: the key the queue's workers were given
    /// ([`WorkerBuilder::keys`](crate::cluster::WorkerBuilder::keys)). A
    /// result entry that fails its check (forged, altered, unsigned) fails
    /// the calls it names with [`TaskError::Rejected`] and is never taken
    /// for their outcome. Set once, before the first submit; fails for a
    /// key shorter than 16 bytes. Default: no key, nothing signed.
    pub fn with_key(self, key: impl AsRef<[u8]>) -> Result<Self, Error> {
        self.with_keys([key])
    }

    /// As [`ClusterPool::with_key`] with several keys, for rotation: the
    /// first signs, results signed with any are trusted.
    pub fn with_keys<I, K>(self, keys: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        let keys: Vec<K> = keys.into_iter().collect();
        let seal = Seal::new(&keys)?;
        self.each(|p| {
            if let Some(seal) = &seal {
                let _ = p.shared.seal.set(seal.clone());
            }
            Ok(p)
        })
    }

    /// How long a signed task stays valid once written: a worker that
    /// takes it later refuses it (dead-lettered; the call fails with
    /// [`TaskError::Rejected`]). The bound on replays: a worker remembers
    /// the calls it took until they expire. Default: 10 minutes.
    pub fn with_task_expiry(self, expiry: Duration) -> Self {
        for p in self.shards() {
            p.shared
                .expiry_ms
                .store(expiry.as_millis().max(1) as u64, Ordering::Relaxed);
        }
        self
    }

    /// How long the broker may be unreachable before the calls in flight
    /// fail with a broker error (and new ones fail at once, until it is
    /// back). Default: 30 s. A broker that comes back sooner loses nothing
    /// it kept; calls it lost fail with [`TaskError::Lost`].
    pub fn with_broker_timeout(self, timeout: Duration) -> Self {
        for p in self.shards() {
            p.shared
                .broker_timeout_ms
                .store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
        }
        self
    }

    /// How many calls the pool writes in one task stream entry, at most.
    /// By default (0) it packs as many as come back in about a
    /// millisecond at the rate results arrive, up to 64: calls of short
    /// tasks travel many to an entry, costing the broker one append, one
    /// claim and one deletion for all of them, and calls of long tasks one
    /// to an entry, so that workers share them out one by one (a worker
    /// claims an entry whole). 1 never packs; a larger number packs up to
    /// that many whenever calls wait together to be written (at most 1024).
    /// Every promise holds within an entry: a cancel that succeeds means
    /// the call never runs, each call has its own time limit, terminate
    /// and result.
    pub fn with_calls_per_entry(self, calls: usize) -> Self {
        for p in self.shards() {
            p.shared
                .per_entry
                .store(calls.min(MAX_PACKED_CALLS), Ordering::Relaxed);
        }
        self
    }

    /// Gives every task submitted from now on a time limit, carried with it
    /// to its worker: a task that runs longer (counted from when a worker
    /// takes it) is killed there, and its future fails with
    /// [`TaskError::TimedOut`]. A worker that runs tasks on threads can't
    /// kill them: there the task runs on. Default: no limit.
    pub fn with_task_timeout(self, timeout: Duration) -> Self {
        for p in self.shards() {
            p.shared
                .task_timeout_ms
                .store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
        }
        self
    }

    /// Stops this pool's work at once, as
    /// [`ProcessPool::terminate_workers`](crate::ProcessPool::terminate_workers)
    /// does: calls no worker has claimed are cancelled, running ones are
    /// killed on their workers and fail with [`TaskError::Terminated`], and
    /// the pool is closed. A cluster's workers serve every client of the
    /// queue: they kill this pool's tasks and go on serving the others.
    pub fn terminate_workers(&self) {
        self.shutdown(Shutdown {
            wait: false,
            cancel_futures: true,
        });
        for p in self.shards() {
            let ids: Vec<String> = lock(&p.shared.pending).keys().cloned().collect();
            for ids in ids.chunks(WRITE_BATCH) {
                p.shared.request_stop(ids);
            }
        }
    }

    /// As [`ClusterPool::terminate_workers`]: a worker kills a task's
    /// process with SIGKILL either way.
    pub fn kill_workers(&self) {
        self.terminate_workers();
    }

    /// The queue this pool submits to.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The queues this pool submits to: one on a single Redis, one per
    /// shard on a Redis Cluster (`q~0`, `q~1`, ...).
    pub fn shard_queues(&self) -> Vec<String> {
        self.shards().map(|p| p.shared.keys.queue.clone()).collect()
    }

    /// Results dropped because their call had already been resolved: tasks
    /// that ran more than once after a worker died.
    pub fn duplicates_dropped(&self) -> u64 {
        self.shards()
            .map(|p| p.shared.duplicates.load(Ordering::Relaxed))
            .sum()
    }

    /// Calls in flight.
    pub fn pending(&self) -> usize {
        self.shards().map(|p| lock(&p.shared.pending).len()).sum()
    }

    fn send<I>(
        &self,
        name: &'static str,
        signature: u64,
        input: I,
        build: impl FnOnce(&I, bool) -> Result<Built, TaskError>,
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
        let traced = self.shared.tracer.get().is_some_and(Tracer::is_enabled);
        let (payload, deliver, preview) = match crate::panic::catch(name, || build(&input, traced))
        {
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
        deliver.set_control(Arc::new(Control {
            shared: Arc::downgrade(&self.shared),
            id: id.clone(),
        }));
        // Registered before the XADD: the result may arrive before XADD
        // returns.
        lock(&self.shared.pending).insert(
            id.clone(),
            Pending {
                deliver,
                place: Place::Outbox,
                task: name,
                submitted: traced.then(Instant::now),
                started: None,
                input: preview,
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

/// Most calls written in one pipeline.
const WRITE_BATCH: usize = 512;

impl ClientShared {
    /// The broker timeout (see [`ClusterPool::with_broker_timeout`]).
    fn broker_timeout(&self) -> Duration {
        Duration::from_millis(self.broker_timeout_ms.load(Ordering::Relaxed))
    }

    /// Fails the pending calls `which` selects with a broker error saying
    /// `why`.
    fn fail_where(&self, why: &str, which: impl Fn(&Pending) -> bool) {
        let failed: Vec<Pending> = {
            let mut pending = lock(&self.pending);
            let ids: Vec<String> = pending
                .iter()
                .filter(|(_, p)| which(p))
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| pending.remove(id)).collect()
        };
        for p in failed {
            p.deliver.finish(Err(TaskError::Broker {
                task: p.task.to_string(),
                message: why.to_string(),
            }));
        }
    }

    /// Takes calls `ids` back from the broker if no worker has claimed
    /// them, and cancels the futures of those taken back: true for each of
    /// them, which never runs. A call still in the writer's queue is
    /// forgotten; one being written is waited for (a few seconds at most);
    /// one in the task stream is deleted by [`WITHDRAW_LUA`], which fails
    /// for an entry a worker's `XREADGROUP` has claimed: that call is
    /// marked running, as it is.
    fn withdraw(&self, ids: &[String]) -> Vec<bool> {
        let mut out = vec![false; ids.len()];
        let mut taken: Vec<Box<dyn Deliver>> = Vec::new();
        let mut asks: Vec<(usize, Spot)> = Vec::new();
        {
            let deadline = Instant::now() + WITHDRAW_PATIENCE;
            let mut pending = lock(&self.pending);
            let writing = |pending: &PendingCalls| {
                ids.iter()
                    .any(|id| pending.get(id).is_some_and(|p| p.place == Place::Writing))
            };
            while writing(&pending) && Instant::now() < deadline {
                pending = self
                    .written
                    .wait_timeout(pending, Duration::from_millis(50))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            for (i, id) in ids.iter().enumerate() {
                let Some(p) = pending.get_mut(id) else {
                    continue;
                };
                match p.place.clone() {
                    Place::Outbox => {
                        if let Some(p) = pending.remove(id) {
                            taken.push(p.deliver);
                            out[i] = true;
                        }
                    }
                    Place::Queued { spot, .. } => {
                        p.place = Place::Withdrawing(spot.clone());
                        asks.push((i, spot));
                    }
                    // Still being written after the wait, or another cancel
                    // is asking: this one can't say the task won't run.
                    Place::Writing | Place::Withdrawing(_) => {}
                }
            }
        }
        if !asks.is_empty() {
            let script = redis::Script::new(WITHDRAW_LUA);
            let verdicts = lock(&self.cancels)
                .run(|con| {
                    let mut call = script.prepare_invoke();
                    call.key(self.keys.tasks())
                        .key(self.keys.withdrawn())
                        .arg(GROUP);
                    for (_, spot) in &asks {
                        let (part, of) = spot
                            .part
                            .map_or((String::new(), 1), |(i, n)| (i.to_string(), n));
                        call.arg(&spot.entry).arg(part).arg(of);
                    }
                    call.invoke::<Vec<i64>>(con)
                })
                .ok();
            let mut pending = lock(&self.pending);
            for (n, (i, spot)) in asks.into_iter().enumerate() {
                let id = &ids[i];
                let verdict = verdicts.as_ref().and_then(|v| v.get(n).copied());
                if verdict == Some(1) {
                    if let Some(p) = pending.remove(id) {
                        taken.push(p.deliver);
                        out[i] = true;
                    }
                    continue;
                }
                if let Some(p) = pending.get_mut(id) {
                    if p.place == Place::Withdrawing(spot.clone()) {
                        p.place = Place::Queued {
                            spot,
                            since: Instant::now(),
                        };
                        // A worker has it: running, whatever its notice says.
                        if verdict == Some(0) {
                            p.deliver.start(None);
                        }
                    }
                }
            }
        }
        for d in taken {
            d.cancel();
        }
        out
    }
}

impl ClientShared {
    /// Asks the workers holding calls `ids` to stop them (the queue's
    /// terminate set of [`Spot::member`]s, which workers holding tasks
    /// read every 100 ms): true
    /// if the request for at least one is with the broker. A worker kills
    /// the task in its local pool, and the call fails with
    /// [`TaskError::Terminated`].
    fn request_stop(&self, ids: &[String]) -> bool {
        let entries: Vec<String> = {
            let pending = lock(&self.pending);
            ids.iter()
                .filter_map(|id| match pending.get(id).map(|p| &p.place) {
                    Some(Place::Queued { spot, .. }) => Some(spot.member()),
                    _ => None,
                })
                .collect()
        };
        if entries.is_empty() {
            return false;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let key = self.keys.terminate();
        lock(&self.cancels)
            .run(|con| {
                let mut p = redis::pipe();
                let zadd = p.cmd("ZADD").arg(&key);
                for e in &entries {
                    zadd.arg(now).arg(e);
                }
                zadd.ignore();
                // Requests for tasks that ended before a worker saw them
                // are dropped after an hour.
                p.cmd("ZREMRANGEBYSCORE")
                    .arg(&key)
                    .arg("-inf")
                    .arg(now.saturating_sub(STOP_REQUEST_TTL.as_millis() as u64))
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg(STOP_REQUEST_TTL.as_secs())
                    .ignore()
                    .query::<()>(con)
            })
            .is_ok()
    }
}

/// How long a stop request waits in the terminate set.
const STOP_REQUEST_TTL: Duration = Duration::from_secs(3600);

/// A cluster call's handle in its future: how `cancel` reaches the broker.
struct Control {
    /// The client; weak, for the future must not keep the pool alive.
    shared: Weak<ClientShared>,
    /// The call id.
    id: String,
}

impl Terminate for Control {
    fn terminate(&self) -> bool {
        self.shared
            .upgrade()
            .is_some_and(|s| s.request_stop(std::slice::from_ref(&self.id)))
    }

    fn withdraw(&self) -> bool {
        self.shared
            .upgrade()
            .is_some_and(|s| s.withdraw(std::slice::from_ref(&self.id))[0])
    }
}

/// The writer: XADDs queued calls, as many as are waiting, in one
/// pipelined round trip. A refusal no retry cures fails the batch at once;
/// a broker that is away is retried with a growing backoff (up to 1 s),
/// for as long as the broker timeout, and then the batch fails with a
/// broker error; so does every batch while the reader finds the broker
/// gone.
fn write_calls(shared: &ClientShared, rx: &Receiver<Outgoing>) {
    let mut link = Link::new(&shared.broker, Duration::from_secs(5));
    let tasks = shared.keys.tasks();
    let mut packing = Packing::new();
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
        // From here a cancel waits for the entry ids; calls cancelled
        // before are skipped.
        {
            let mut pending = lock(&shared.pending);
            batch.retain(|c| match pending.get_mut(&c.id) {
                Some(p) => {
                    p.place = Place::Writing;
                    true
                }
                None => false,
            });
        }
        if batch.is_empty() {
            continue;
        }
        // Calls in entries: several to an entry while tasks finish fast
        // (see `Packing`), each alone otherwise.
        let groups = packing.groups(
            &batch,
            shared.per_entry.load(Ordering::Relaxed),
            &lock(&shared.finished),
        );
        let began = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let written = loop {
            if let Some(why) = lock(&shared.gone).clone() {
                break Err(why);
            }
            let r = link.run(|con| {
                let mut p = redis::pipe();
                let adder = Adder {
                    shared,
                    tasks: &tasks,
                    timeout_ms: shared.task_timeout_ms.load(Ordering::Relaxed),
                    exp: (seal::now_ms() + shared.expiry_ms.load(Ordering::Relaxed)).to_string(),
                };
                for g in &groups {
                    adder.add(&mut p, &batch[g.clone()]);
                }
                p.query::<Vec<String>>(con)
            });
            match r {
                Ok(entries) => break Ok(entries),
                Err(Fault {
                    error,
                    permanent: true,
                }) => break Err(error.to_string()),
                Err(f) if began.elapsed() >= shared.broker_timeout() => {
                    break Err(format!(
                        "the broker was unreachable for {:?}: {f}",
                        began.elapsed()
                    ))
                }
                Err(_) => {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        };
        let mut failed = Vec::new();
        {
            let mut pending = lock(&shared.pending);
            match &written {
                Ok(entries) => {
                    let now = Instant::now();
                    for (g, entry) in groups.iter().zip(entries) {
                        let n = g.len() as u32;
                        for (i, c) in batch[g.clone()].iter().enumerate() {
                            if let Some(p) = pending.get_mut(&c.id) {
                                p.place = Place::Queued {
                                    spot: Spot {
                                        entry: entry.clone(),
                                        part: (n > 1).then_some((i as u32, n)),
                                    },
                                    since: now,
                                };
                            }
                        }
                    }
                }
                Err(_) => failed.extend(batch.iter().filter_map(|c| pending.remove(&c.id))),
            }
        }
        shared.written.notify_all();
        if let Err(why) = written {
            for p in failed {
                p.deliver.finish(Err(TaskError::Broker {
                    task: p.task.to_string(),
                    message: format!("the task could not be queued: {why}"),
                }));
            }
        }
    }
}

/// Most calls in one packed task entry.
const PACK_CALLS: usize = 64;
/// Most payload bytes in one packed task entry: a call that would take a
/// pack past it starts the next one (and a larger call goes alone).
const PACK_BYTES: usize = 256 << 10;
/// The share of the queue's throughput one packed entry may hold.
const PACK_FOR: Duration = Duration::from_millis(1);
/// How many calls the writer packs into one task entry: calls of one
/// task, as many as come back in [`PACK_FOR`] at the rate this client's
/// results of that task arrive ([`Rate`]), at most [`PACK_CALLS`]. A worker claims
/// an entry whole, so packing trades how evenly calls spread over
/// workers for what each costs the broker (one append, one claim and one
/// deletion per entry). Calls of a long task, a few hundred a second, go
/// one to an entry and spread one by one, even right after a burst of a
/// short one; no-op calls at tens of thousands a second go up to 64 to an
/// entry, a millisecond's worth. A task with no result back yet is not
/// packed.
struct Packing {
    /// The rate of each task's results.
    rates: HashMap<&'static str, Rate>,
}

impl Packing {
    fn new() -> Packing {
        Packing {
            rates: HashMap::new(),
        }
    }

    /// Calls per entry for `task`, given its results counted so far.
    fn calls(&mut self, task: &'static str, finished: u64) -> usize {
        let rate = self
            .rates
            .entry(task)
            .or_insert_with(|| Rate::new(finished));
        rate.within(PACK_FOR, finished).clamp(1, PACK_CALLS)
    }

    /// The calls of `batch` in entries, as ranges of it, in order: runs of
    /// one task, of at most as many calls as [`Packing::calls`] says (or
    /// as the pool is told, [`ClusterPool::with_calls_per_entry`]) and
    /// [`PACK_BYTES`].
    fn groups(
        &mut self,
        batch: &[Outgoing],
        fixed: usize,
        finished: &HashMap<&'static str, u64>,
    ) -> Vec<std::ops::Range<usize>> {
        let mut most: Vec<(&'static str, usize)> = Vec::new();
        for c in batch {
            if !most.iter().any(|(t, _)| *t == c.task) {
                let n = match fixed {
                    0 => self.calls(c.task, finished.get(c.task).copied().unwrap_or(0)),
                    n => n,
                };
                most.push((c.task, n));
            }
        }
        let most_of =
            |task: &'static str| most.iter().find(|(t, _)| *t == task).map_or(1, |(_, n)| *n);
        let mut out = Vec::new();
        let mut from = 0;
        while from < batch.len() {
            let task = batch[from].task;
            let most = most_of(task);
            let mut to = from + 1;
            let mut bytes = batch[from].payload.len();
            while to < batch.len()
                && to - from < most
                && batch[to].task == task
                && bytes + batch[to].payload.len() <= PACK_BYTES
            {
                bytes += batch[to].payload.len();
                to += 1;
            }
            out.push(from..to);
            from = to;
        }
        out
    }
}

/// Adds calls to a pipeline as task entries: one call with its own
/// fields, several packed (see the module docs of `cluster`), signed on a
/// signed queue.
struct Adder<'a> {
    /// The client.
    shared: &'a ClientShared,
    /// The task stream.
    tasks: &'a str,
    /// The time limit the calls carry, in ms; 0 for none.
    timeout_ms: u64,
    /// When a signed entry expires (Unix ms), as text.
    exp: String,
}

impl Adder<'_> {
    /// Adds one XADD of `calls` (at least one) to `p`.
    fn add(&self, p: &mut redis::Pipeline, calls: &[Outgoing]) {
        let shared = self.shared;
        let timeout = if self.timeout_ms > 0 {
            self.timeout_ms.to_string()
        } else {
            String::new()
        };
        let seal = shared.seal.get();
        let add = p.cmd("XADD");
        add.arg(self.tasks).arg("*");
        if self.timeout_ms > 0 {
            add.arg("timeout_ms").arg(&timeout);
        }
        if let [c] = calls {
            let sig = c.signature.to_string();
            if let Some(seal) = seal {
                let mac = seal.sign(&seal::task_parts(
                    self.tasks,
                    [
                        c.id.as_bytes(),
                        c.task.as_bytes(),
                        sig.as_bytes(),
                        shared.results.as_bytes(),
                        &c.payload,
                        timeout.as_bytes(),
                        self.exp.as_bytes(),
                    ],
                ));
                add.arg("exp").arg(&self.exp).arg("mac").arg(mac);
            }
            add.arg("id")
                .arg(&c.id)
                .arg("task")
                .arg(c.task)
                .arg("sig")
                .arg(&sig)
                .arg("reply")
                .arg(&shared.results)
                .arg("payload")
                .arg(&c.payload[..]);
            return;
        }
        let (heads, data) = pack_calls(calls.iter().map(|c| {
            let head = CallHead {
                id: c.id.as_str().into(),
                task: c.task.into(),
                sig: c.signature,
                len: c.payload.len() as u64,
            };
            (head, &c.payload[..])
        }));
        if let Some(seal) = seal {
            let mac = seal.sign(&seal::packed_parts(
                self.tasks,
                [
                    &heads,
                    shared.results.as_bytes(),
                    &data,
                    timeout.as_bytes(),
                    self.exp.as_bytes(),
                ],
            ));
            add.arg("exp").arg(&self.exp).arg("mac").arg(mac);
        }
        add.arg("calls")
            .arg(heads)
            .arg("reply")
            .arg(&shared.results)
            .arg("data")
            .arg(data);
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
/// nothing is pending; audits for lost calls, renews the stream's expiry,
/// and fails pending calls when the broker is gone (see the module docs).
fn read_results(shared: &ClientShared) {
    let mut link = Link::new(&shared.broker, READ_BLOCK + Duration::from_secs(2));
    let mut last = "0-0".to_string();
    let mut audited = Instant::now();
    let mut refreshed: Option<Instant> = None;
    // Calls whose entries were gone at an audit while results up to the
    // given id were still unread: lost unless those results resolve them.
    let mut suspects: Vec<(String, String)> = Vec::new();
    // Since when reads fail.
    let mut failing: Option<Instant> = None;
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
        let reply = match reply {
            Ok(r) => {
                failing = None;
                *lock(&shared.gone) = None;
                r
            }
            Err(f) if f.permanent => {
                // Every call waits on this stream: none can complete.
                shared.fail_where(
                    &format!("the result stream {} can't be read: {f}", shared.results),
                    |_| true,
                );
                std::thread::sleep(READ_BLOCK);
                continue;
            }
            Err(f) => {
                let since = *failing.get_or_insert_with(Instant::now);
                let timeout = shared.broker_timeout();
                if since.elapsed() >= timeout {
                    let why = format!("the broker was unreachable for {timeout:?}: {f}");
                    *lock(&shared.gone) = Some(why.clone());
                    shared.fail_where(&why, |_| true);
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let entries = stream_reply(reply);
        let mut seen = Vec::with_capacity(entries.len());
        for e in entries {
            last = e.id.clone();
            seen.push(e.id.clone());
            take_result(shared, &e);
        }
        if !seen.is_empty() {
            let _ = link.run(|con| {
                redis::cmd("XDEL")
                    .arg(&shared.results)
                    .arg(&seen)
                    .query::<i64>(con)
            });
        }
        if refreshed.is_none_or(|at| at.elapsed() >= REFRESH_EVERY) {
            let renewed = link.run(|con| {
                redis::cmd("EXPIRE")
                    .arg(&shared.results)
                    .arg(RESULTS_TTL.as_secs())
                    .query::<i64>(con)
            });
            // An absent stream (nothing written to it yet) has nothing to
            // renew: try again at the next read.
            if renewed.is_ok_and(|set| set == 1) {
                refreshed = Some(Instant::now());
            }
        }
        if !suspects.is_empty() {
            suspects.retain(|(id, until)| {
                if !id_at_most(until, &last) {
                    return true;
                }
                lose(shared, id);
                false
            });
        }
        if audited.elapsed() >= AUDIT_EVERY {
            audit(shared, &mut link, &last, &mut suspects);
            audited = Instant::now();
        }
        if lock(&shared.pending).is_empty() {
            shared.drained.notify_all();
        }
    }
    let _ = link.run(|con| redis::cmd("DEL").arg(&shared.results).query::<i64>(con));
    shared.drained.notify_all();
}

/// Resolves what result entry `e` says: a batch of results, a started
/// notice, or one result (a dead letter's error).
fn take_result(shared: &ClientShared, e: &Entry) {
    let field = |name: &str| e.fields.get(name).map_or(&[][..], Vec::as_slice);
    let signed = |parts: &[&[u8]]| {
        shared
            .seal
            .get()
            .is_none_or(|s| e.fields.get("mac").is_some_and(|mac| s.verify(parts, mac)))
    };
    let results = shared.results.as_bytes();
    if e.fields.contains_key("batch") {
        let ran_by = RanBy::of(e, "worker");
        let trusted = signed(&[
            seal::RESULTS,
            results,
            field("batch"),
            field("data"),
            field("worker"),
            field("host"),
            field("pid"),
        ]);
        match unpack_results(e) {
            Ok(results) if !trusted => {
                for (head, _) in results {
                    reject(shared, &head.id, &e.id);
                }
            }
            Ok(results) => {
                // One lock of the pending calls for the whole batch (the
                // submitting thread takes it for every call).
                let taken: Vec<_> = {
                    let mut pending = lock(&shared.pending);
                    results
                        .into_iter()
                        .map(|(head, outcome)| (pending.remove(&head.id), head, outcome))
                        .collect()
                };
                // Counted by task, for the writer's packing: a batch holds
                // the results of few tasks, most often one.
                let mut counts: Vec<(&'static str, u64)> = Vec::new();
                for p in taken.iter().filter_map(|(p, _, _)| p.as_ref()) {
                    match counts.iter_mut().find(|(t, _)| *t == p.task) {
                        Some((_, n)) => *n += 1,
                        None => counts.push((p.task, 1)),
                    }
                }
                let mut finished = lock(&shared.finished);
                for (task, n) in counts {
                    *finished.entry(task).or_insert(0) += n;
                }
                drop(finished);
                for (p, head, outcome) in taken {
                    let ran = Duration::from_micros(head.ran_us);
                    deliver(shared, p, outcome, Some((&ran_by, ran, head.usage)));
                }
            }
            // Whose results these were is lost with the entry: the audit
            // fails those calls as lost.
            Err(why) => eprintln!(
                "multitask: dropped a malformed result entry {} on {}: {why}",
                e.id, shared.results
            ),
        }
        return;
    }
    let Some(id) = e.text("id").map(str::to_string) else {
        return;
    };
    if e.fields.contains_key("started") {
        let trusted = signed(&[
            seal::STARTED,
            results,
            field("id"),
            field("started"),
            field("host"),
            field("pid"),
            field("held_us"),
        ]);
        // A notice only informs: an untrusted one is dropped.
        if !trusted {
            return;
        }
        if let Some(p) = lock(&shared.pending).get_mut(&id) {
            p.deliver.start(None);
            if let Some(submitted) = p.submitted {
                // Started `held_us` before the notice was written.
                let held = e
                    .text("held_us")
                    .and_then(|us| us.parse().ok())
                    .map_or(Duration::ZERO, Duration::from_micros);
                let at = started_ago(held, submitted);
                p.started = Some((at, RanBy::of(e, "started")));
            }
        }
        return;
    }
    // A worker sends one result alone only with a dead letter: an error.
    let trusted = e.fields.contains_key("error")
        && signed(&[
            seal::ERROR,
            results,
            field("id"),
            field("task"),
            field("error"),
        ]);
    if shared.seal.get().is_some() && !trusted {
        reject(shared, &id, &e.id);
        return;
    }
    let outcome = match (e.fields.get("payload"), e.fields.get("error")) {
        (Some(bytes), _) => Ok(bytes.clone()),
        (None, Some(err)) => Err(
            serde_json::from_slice::<TaskError>(err).unwrap_or_else(|_| TaskError::Broker {
                task: e.text("task").unwrap_or("?").to_string(),
                message: String::from_utf8_lossy(err).into_owned(),
            }),
        ),
        (None, None) => Err(TaskError::Broker {
            task: e.text("task").unwrap_or("?").to_string(),
            message: "a result entry with neither payload nor error".to_string(),
        }),
    };
    resolve(shared, &id, outcome, None);
}

/// Fails call `id`, if pending, for a result entry (`entry`) that failed
/// its signature check: its outcome is never taken from it.
fn reject(shared: &ClientShared, id: &str, entry: &str) {
    let Some(p) = lock(&shared.pending).remove(id) else {
        return;
    };
    p.deliver.finish(Err(TaskError::Rejected {
        task: p.task.to_string(),
        reason: format!(
            "its result entry {entry} on {} is not signed with the queue's key (forged, \
             altered, or from a worker without the key): not trusted",
            shared.results
        ),
    }));
}

/// Asks the broker about calls queued for at least [`AUDIT_EVERY`]: those
/// whose entries are gone are lost now if no result is unread (`last` is
/// the reader's position), or suspects until the reader passes the last
/// result there is.
fn audit(shared: &ClientShared, link: &mut Link, last: &str, suspects: &mut Vec<(String, String)>) {
    let asked: Vec<(String, String)> = lock(&shared.pending)
        .iter()
        .filter_map(|(id, p)| match &p.place {
            Place::Queued { spot, since } if since.elapsed() >= AUDIT_EVERY => {
                Some((id.clone(), spot.entry.clone()))
            }
            _ => None,
        })
        .filter(|(id, _)| !suspects.iter().any(|(s, _)| s == id))
        .take(AUDIT_MAX)
        .collect();
    if asked.is_empty() {
        return;
    }
    // The calls of a packed entry share it: each entry is asked about once.
    let mut entries: Vec<&str> = asked.iter().map(|(_, e)| e.as_str()).collect();
    entries.sort_unstable();
    entries.dedup();
    let Ok((tail, gone)) = link.run(|con| {
        redis::Script::new(AUDIT_LUA)
            .key(shared.keys.tasks())
            .key(&shared.results)
            .arg(&entries)
            .invoke::<(String, Vec<usize>)>(con)
    }) else {
        return;
    };
    let gone: std::collections::HashSet<&str> = gone
        .into_iter()
        .filter_map(|i| entries.get(i.wrapping_sub(1)).copied())
        .collect();
    for (id, entry) in &asked {
        if !gone.contains(entry.as_str()) {
            continue;
        }
        if tail.is_empty() || id_at_most(&tail, last) {
            lose(shared, id);
        } else {
            suspects.push((id.clone(), tail.clone()));
        }
    }
}

/// Fails call `id`, if it is still queued, as lost by the broker.
fn lose(shared: &ClientShared, id: &str) {
    let lost = {
        let mut pending = lock(&shared.pending);
        match pending.get(id).map(|p| &p.place) {
            Some(Place::Queued { .. }) => pending.remove(id),
            _ => None,
        }
    };
    if let Some(p) = lost {
        p.deliver.finish(Err(TaskError::Lost {
            task: p.task.to_string(),
            reason: "its entry is gone from the task stream, no worker holds it and no result \
                     came (a broker restarted without persistence, or a dead letter without a \
                     reply; see the dead-letter stream)"
                .to_string(),
        }));
    }
}

/// True if stream entry id `a` is at most `b` (`ms-seq`, compared as
/// numbers).
fn id_at_most(a: &str, b: &str) -> bool {
    let parse = |s: &str| {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    };
    parse(a) <= parse(b)
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
    ran: Option<(&RanBy, Duration, Option<TaskUsage>)>,
) {
    let p = lock(&shared.pending).remove(id);
    deliver(shared, p, outcome, ran);
}

/// Resolves the call `p`, taken out of the pending calls, with `outcome`;
/// `None` (no such call in flight: it was resolved already) counts a
/// duplicate.
fn deliver(
    shared: &ClientShared,
    p: Option<Pending>,
    outcome: Result<Vec<u8>, TaskError>,
    ran: Option<(&RanBy, Duration, Option<TaskUsage>)>,
) {
    let Some(p) = p else {
        shared.duplicates.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let usage = ran.and_then(|(_, _, u)| u);
    if let (Some(submitted), Some(tracer)) = (p.submitted, shared.tracer.get()) {
        let ran = ran.map(|(by, d, _)| (by, d));
        trace(tracer, &p, ran, submitted, outcome.is_ok(), usage);
    }
    if let Some(u) = usage {
        p.deliver.set_usage(u);
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
    usage: Option<TaskUsage>,
) {
    let now = Instant::now();
    let (started, by) = match (&p.started, ran) {
        // Each estimate is the true start plus a message's delay on a busy
        // machine: the earlier is the better one.
        (Some((at, by)), Some((_, ran))) => ((*at).min(started_ago(ran, submitted)), by.clone()),
        (Some((at, by)), None) => (*at, by.clone()),
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
        peak_rss: usage.and_then(|u| u.peak_rss),
        cpu: usage.map(|u| u.cpu),
        input: p.input.clone(),
        allocated: usage.and_then(|u| u.allocated),
    });
}

impl Executor for ClusterPool {
    fn submit<T: Task>(
        &self,
        _task: T,
        input: T::Input,
    ) -> Result<TaskFuture<T::Output>, SubmitError<T::Input>> {
        let (fut, promise) = TaskFuture::pending(T::NAME);
        self.next_shard()
            .send(T::NAME, T::SIGNATURE, input, |input, traced| {
                let payload = task::encode(T::NAME, T::CODEC, std::slice::from_ref(input))?;
                let preview = traced.then(|| crate::trace::preview(input));
                Ok((payload, deliver_one::<T>(promise), preview))
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
        self.next_shard()
            .send(T::NAME, T::SIGNATURE, inputs, |inputs, traced| {
                let payload = task::encode(T::NAME, T::CODEC, inputs)?;
                let preview = traced.then(|| crate::trace::preview_batch(inputs));
                Ok((payload, deliver_chunk::<T>(promise, n), preview))
            })?;
        Ok(fut)
    }

    fn shutdown(&self, how: Shutdown) {
        for other in &self.others {
            other.shutdown(how);
        }
        self.shared.closed.store(true, Ordering::SeqCst);
        if how.cancel_futures {
            // Cancel what no worker has claimed; claimed calls resolve as
            // usual, whatever their started notices say.
            let queued: Vec<String> = lock(&self.shared.pending)
                .iter()
                .filter(|(_, p)| !p.deliver.is_started())
                .map(|(id, _)| id.clone())
                .collect();
            for ids in queued.chunks(WRITE_BATCH) {
                self.shared.withdraw(ids);
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
        if !self.others.is_empty() {
            return redact(&self.url);
        }
        format!(
            "{}?queue={}",
            redact(&self.shared.broker.url.redis),
            self.shared.keys.queue
        )
    }
}

impl Drop for ClusterPool {
    fn drop(&mut self) {
        // Dropped while its owner unwinds: cancel what has not started
        // rather than make the panic wait for the queue.
        self.shutdown(Shutdown {
            wait: true,
            cancel_futures: std::thread::panicking(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(task: &'static str, bytes: usize) -> Outgoing {
        Outgoing {
            id: String::new(),
            task,
            signature: 0,
            payload: vec![0; bytes],
        }
    }

    #[test]
    fn calls_pack_by_their_tasks_rate_and_never_across_tasks() {
        let mut packing = Packing::new();
        let mut finished = HashMap::new();
        let burst: Vec<Outgoing> = (0..200).map(|_| call("short", 8)).collect();
        // No result back yet: one call to an entry.
        assert_eq!(packing.groups(&burst, 0, &finished).len(), 200);
        // 100,000 results in 60 ms (or in a second and a half, on a
        // loaded machine): 64 to an entry, the cap.
        std::thread::sleep(crate::cluster::rate::WINDOW + Duration::from_millis(10));
        finished.insert("short", 100_000);
        let groups = packing.groups(&burst, 0, &finished);
        assert_eq!(
            groups.iter().map(ExactSizeIterator::len).max(),
            Some(PACK_CALLS)
        );
        assert_eq!(groups.len(), 4);
        // Another task right after the burst has no rate of its own: its
        // calls go one to an entry, and no entry mixes the two.
        let mixed: Vec<Outgoing> = (0..10)
            .map(|i| call(if i % 5 == 4 { "long" } else { "short" }, 8))
            .collect();
        let groups = packing.groups(&mixed, 0, &finished);
        assert_eq!(groups, vec![0..4, 4..5, 5..9, 9..10]);
        // Fixed: as many as told, and never past PACK_BYTES.
        let big: Vec<Outgoing> = (0..6).map(|_| call("short", PACK_BYTES / 2)).collect();
        assert_eq!(packing.groups(&big, 16, &finished), vec![0..2, 2..4, 4..6]);
        assert_eq!(packing.groups(&burst, 1, &finished).len(), 200);
        let huge = vec![call("short", PACK_BYTES * 2), call("short", 1)];
        assert_eq!(packing.groups(&huge, 16, &finished), vec![0..1, 1..2]);
    }

    #[test]
    fn stream_ids_compare_as_numbers() {
        assert!(id_at_most("9-0", "10-0"));
        assert!(id_at_most("10-2", "10-10"));
        assert!(!id_at_most("10-10", "10-2"));
        assert!(id_at_most("5-5", "5-5"));
        assert!(!id_at_most("1700000000001-0", "1700000000000-99"));
    }
}
