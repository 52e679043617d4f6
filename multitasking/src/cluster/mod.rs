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
//!   mt:{q}:results:<client> stream   one per client; a batch of results:
//!                                    batch (postcard: id task error len
//!                                    ran_us per result) data (payloads)
//!                                    worker host pid; or a started
//!                                    notice: id started host pid held_us;
//!                                    or one result: id task payload |
//!                                    error
//!   mt:{q}:dead             stream   dead letters: entry id task reason
//!                                    deliveries worker
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
//!         reply payload                                             │ unknown/mismatch:
//!                                                                   │  MULTI XADD dead, XADD
//!                                                                   │  reply error, XACK, XDEL
//!  reader: XREAD BLOCK results <── results <── XADD started ────────┤ (if it runs 2 ms)
//!    started -> running                                             │ run in local pool
//!    result  -> pending.remove(id)                                  │ (XCLAIM JUSTID renews
//!      gone? a duplicate: drop      <── MULTI XADD results batch,   │  the lease meanwhile)
//!      else decode, complete             XACK tasks, XDEL tasks EXEC┘
//! ```
//!
//! A worker that dies leaves its tasks pending in the group. Other workers
//! look for entries idle past the visibility timeout (`XPENDING ... IDLE`),
//! take them over with `XCLAIM` and run them again; past `max_deliveries`
//! the task goes to the dead-letter stream with the reason and its client
//! gets an error. A task may so run twice, but its client resolves it once:
//! results are deduplicated by call id. A cancelled future's task is
//! deleted by a Lua script if no worker has claimed it yet.

mod broker;
mod client;
mod keys;
mod status;
mod worker;

pub use client::ClusterPool;
pub use status::{
    dead_letters, discard_dead_letter, status, tasks_read, ClusterStatus, DeadLetter, WorkerStatus,
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
