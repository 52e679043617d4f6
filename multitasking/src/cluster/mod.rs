//! The cluster: the same executor API over a queue on Redis Streams, with
//! workers on any number of machines.
//!
//! Redis carries the work; we write the client ([`ClusterPool`]) and the
//! worker ([`Worker`]), not a cluster protocol.
//!
//! ## Key layout (queue `q`; every key has the hash tag `{q}`)
//!
//! ```text
//!   mt:{q}:tasks            stream   tasks; consumer group "workers"
//!                                    fields: id task sig reply payload
//!                                    [timeout_ms]; or, several calls of
//!                                    one client and task packed: calls
//!                                    (postcard: id task sig len per
//!                                    call) data (payloads) reply
//!                                    [timeout_ms]
//!   mt:{q}:withdrawn        hash     packed entries no worker claimed
//!                                    -> positions of the calls their
//!                                    client withdrew ("3,0,")
//!   mt:{q}:results:<client> stream   one per client, expires 10 min after
//!                                    its last write or renewal; a batch
//!                                    of results: batch (postcard: id task
//!                                    error len ran_us per result) data
//!                                    (payloads) worker host pid; or a
//!                                    started notice: id started host pid
//!                                    held_us; or one result: id task
//!                                    payload | error
//!   mt:{q}:dead             stream   dead letters: entry id task reason
//!                                    deliveries worker [parts: the
//!                                    positions given up, in a packed
//!                                    entry], and the task entry's fields
//!                                    prefixed t: (for a requeue)
//!   mt:{q}:spans            stream   finished tasks for dashboards,
//!                                    capped: worker host pid spans
//!                                    (postcard: entry task started_us
//!                                    finished_us ok cpu_us peak_rss input)
//!   mt:{q}:terminate        zset     task entries (<entry>#<position> for
//!                                    a packed call) their clients asked
//!                                    to stop, scored by when (Unix ms)
//!   mt:{q}:worker:<consumer> string  heartbeat (JSON), expires after 10 s
//!   mt:{q}:workers          set      consumers that joined
//! ```
//!
//! ## A task's life
//!
//! ```text
//!  client                        Redis                          worker
//!  submit: encode, pending[id]
//!    XADD tasks * id task sig ──> tasks ──XREADGROUP COUNT free──> resolve(name, sig)
//!         reply payload            │ (the claim: the entry joins    │ unknown/mismatch:
//!                                  │  the worker's pending list)    │  dead script: XADD dead
//!  cancel: withdraw script ───────>┤ XDEL only if no worker         │  (with the entry), XADD
//!                                  │ claimed it                     │  reply error, XACK, XDEL
//!    true: cancelled, never runs   │                                │ run in local pool
//!    false: a worker has it        │                                │ (XCLAIM JUSTID renews
//!  terminate: ZADD terminate ─────>│ terminate <──ZMSCORE, 100 ms───┤  the lease; a stop request
//!                                                                   │  or timeout_ms kills it)
//!  reader: XREAD BLOCK results <── results <── XADD started ────────┤ (if it runs 2 ms)
//!    started -> running                                             │
//!    result  -> pending.remove(id)   <── complete script per client:┘
//!      gone? a duplicate: drop            XADD results batch, EXPIRE,
//!      else decode, complete              then XACK, XDEL tasks
//!  audit (1 s): entry gone, no result unread -> Lost
//! ```
//!
//! A cancel and a worker's claim race in Redis, and exactly one wins:
//! `XREADGROUP` moves an entry into the worker's pending list in one step,
//! and the client's withdraw script deletes the entry only if it is in no
//! pending list. A result is written and its task acknowledged by one
//! script, which acknowledges nothing if the write fails: a client whose
//! result stream refuses writes has its tasks dead-lettered, and the
//! worker's slots are freed.
//!
//! ## Packed entries
//!
//! Each entry costs the broker an append, a claim (a pending-list
//! insertion) and a deletion, whatever it holds; so a client writes the
//! calls of one task that wait together in one entry, as many as come back
//! in about a millisecond at the rate that task's results arrive, up to 64
//! ([`ClusterPool::with_calls_per_entry`] fixes the number or turns it
//! off). A call of a long task, at a few hundred a second, goes alone, so
//! that workers share such calls out one by one: a worker claims an entry
//! whole. The worker runs, stops, times and answers each call of a packed
//! entry on its own, and acknowledges the entry with its last call's
//! result. Withdrawing one call of an entry no worker has claimed cannot
//! delete the entry: the withdraw script records the call's position in
//! the withdrawn hash instead (and deletes the entry once every call of
//! it is withdrawn), and the worker reads the hash after its claim, in the
//! same round trip, and skips what it finds there: a cancel the broker ran
//! before the claim shows, one after it finds the entry claimed. A call a
//! worker refuses (unknown, not allowed, a replay) is dead-lettered with
//! the entry and its position, and [`requeue_dead_letter`] puts back the
//! positions a dead letter names.
//!
//! A worker that dies leaves its tasks pending in the group. Other workers
//! look for entries idle past the visibility timeout (`XPENDING ... IDLE`),
//! take them over with `XCLAIM` and run them again; past `max_deliveries`
//! the task goes to the dead-letter stream with the reason and its client
//! gets an error. A task may so run twice, but its client resolves it once:
//! results are deduplicated by call id.
//!
//! No wait is unbounded: a call whose entry the broker lost (a restart
//! without persistence) fails with `TaskError::Lost` within about two
//! seconds of the broker's return; a broker unreachable for the broker
//! timeout (30 s by default) fails every pending call; `NOPERM`,
//! `WRONGTYPE` and a refused password fail the calls they concern at once.
//!
//! ## What a worker runs
//!
//! Anyone who can write to the task stream can ask a worker for any task,
//! so a worker serves an allow-list ([`WorkerBuilder::allow`], `multitask
//! worker --tasks`): by default every task compiled into it except those
//! marked dangerous (`#[multitasking::task(dangerous)]`, such as
//! `multitask run`'s `run_shell`), which run only on a worker told so
//! ([`WorkerBuilder::allow_dangerous`], `--allow-shell`). A task it does
//! not serve is dead-lettered with the reason and fails for its client
//! with [`TaskError::NotAllowed`](crate::TaskError::NotAllowed); it never
//! runs.
//!
//! ## Signed entries
//!
//! With a key shared by a queue's clients and workers
//! ([`ClusterPool::with_key`], [`WorkerBuilder::keys`]; `multitask worker
//! --key-file`, or `MULTITASK_CLUSTER_KEY`, which pools built from a spec
//! string read too), every task entry carries an HMAC-SHA256 (field `mac`)
//! over the task stream's key and its fields id, task, sig, reply,
//! payload, timeout_ms and exp (the Unix ms after which it is void,
//! 10 minutes after it is written by default,
//! [`ClusterPool::with_task_expiry`]); every result entry, started notice
//! and dead letter's error carries one over the client's stream key and
//! its fields. A worker with keys dead-letters, with the reason, any task
//! that is unsigned, forged or altered (its reply key is then not trusted:
//! no error is sent there, and its client, if any, finds it lost), expired
//! (its client gets [`TaskError::Rejected`](crate::TaskError::Rejected)),
//! or replayed: a call id it took before from another entry (a redelivery
//! of the same entry after a worker died is not a replay). A client with a
//! key fails the calls a result entry names with `Rejected` when that entry
//! does not check, and ignores such a started notice. Keys rotate: a
//! worker and a client accept a list, sign with the first and accept any.
//! Without keys nothing is signed or checked, and `multitask worker` says
//! so on stderr.
//!
//! What it does not do: hide anything (entries are signed, not encrypted;
//! use `rediss://` on the wire), or stop a replay of a task to *another*
//! worker within its expiry (each worker remembers the calls it took; a
//! record in Redis would be no defence against someone who can write to
//! Redis). Such a replay runs the task again, and its client drops the
//! second result as a duplicate. Deleting entries, or flooding the queue,
//! stays possible for whoever can write to Redis: the ACL rules below limit
//! who can.
//!
//! ## TLS
//!
//! `rediss://` connects with TLS and checks the broker's certificate
//! against the system's roots, or the CA in `?tls_ca=PATH`; `#insecure`
//! accepts any (tests only). `&tls_cert=PATH&tls_key=PATH` present a
//! client certificate, for a broker that asks for one
//! (`tls-auth-clients yes`).
//!
//! ## Permissions
//!
//! What a client and a worker need, as Redis ACL rules (Redis 7; the
//! scripts' own commands are checked too). A refusal (`NOPERM`) fails the
//! calls it concerns at once, naming the command.
//!
//! ```text
//!   client: ~mt:* resetchannels -@all +ping +xadd +xread +xdel +expire +del
//!           +evalsha +script|load +xpending +xrange +xrevrange +zadd
//!           +zremrangebyscore +hget +hset +hdel
//!   worker: ~mt:* resetchannels -@all +ping +xgroup|create +xreadgroup +xack
//!           +xdel +xadd +xclaim +xpending +xrange +expire +evalsha
//!           +script|load +zmscore +zrem +set +del +sadd +srem +hlen +hmget
//!           +hdel
//! ```
//!
//! `multitask status` reads with `+smembers +get +xlen +xpending`, its
//! `--dead` and the dashboard with `+xrevrange` too; a requeue
//! (`multitask status --requeue`, [`requeue_dead_letter`]) needs `+xrange
//! +xadd +xdel +multi +exec`, a discard `+xdel`.
//!
//! ## Dead letters and spans
//!
//! A dead letter keeps the task entry it was made from (fields prefixed
//! `t:`), so that [`requeue_dead_letter`] can put it back once the cause
//! is fixed (a worker that serves the task, a bug fixed): as a new task
//! with a fresh call id and no reply stream, since its caller was failed
//! when it died. On a signed queue the original signature must check under
//! the keys given, and the new entry is signed afresh: a requeue never
//! launders a forged task.
//!
//! Workers publish what they finish to a capped span stream
//! ([`WorkerBuilder::publish_spans`], on by default), one entry per round
//! trip of results: [`recent_tasks`] reads it back as a trace, and the
//! dashboard draws its timeline, latency and slowest tasks from it when no
//! traced client is at hand. With [`WorkerBuilder::measure_usage`] each
//! task carries its CPU time and peak RSS there, in its client's trace,
//! and on its future ([`TaskFuture::usage`](crate::TaskFuture::usage)).

mod allow;
mod broker;
mod client;
mod keys;
mod rate;
mod seal;
mod shards;
mod status;
mod worker;

pub use client::ClusterPool;
pub use seal::{keys_from_env, parse_keys};
pub use status::{
    dead_letters, discard_dead_letter, recent_tasks, requeue_dead_letter, status, tasks_read,
    ClusterStatus, DeadLetter, WorkerStatus,
};
pub use worker::{serve, StopHandle, Worker, WorkerBuilder};

/// A broker URL with any password replaced by `***`: the form to print in
/// logs, errors and status output.
///
/// ```
/// assert_eq!(
///     multitasking::cluster::redact("redis://app:secret@host:6379/0"),
///     "redis://app:***@host:6379/0"
/// );
/// ```
pub fn redact(url: &str) -> String {
    crate::executor::redact(url)
}
