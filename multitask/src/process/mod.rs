//! Processes: `ProcessPool`, whose workers are this program started again,
//! and `Process`, one named task in a fresh process.
//!
//! ```text
//!   caller threads                 pool (this process)                     worker processes
//!  ----------------    submit    ---------------------                    ------------------
//!  pool.submit(t, x) ---------> | job channel (FIFO) |                    | /proc/self/exe   |
//!  pool.map(t, xs)   encode     ----------+-----------                    | MULTITASK_WORKER |
//!        ^           Vec<Input>           | one job at a time             | fd 3 = socket    |
//!        |                                v                               |                  |
//!   TaskFuture  <---- decode ---- supervisor thread k  ==== Call =======> | resolve(name,    |
//!   (result,          Chunk<O>    (one per worker:     <=== Reply ======= |   signature)     |
//!    cancel,                       spawns, feeds,          socketpair,    | run the batch    |
//!    terminate)                    times out, watches      framed,        | under catch_     |
//!                                  RSS, reaps, replaces)   versioned      |   unwind         |
//! ```
//!
//! **Caller threads** encode a batch of inputs (one item for `submit`, a
//! chunk for `map`) with the task's codec and put a job on the pool's
//! channel. Nothing else is shared with them: they never touch a socket.
//!
//! **Supervisor threads**, one per worker slot, live as long as the pool.
//! Each starts its worker (so that PR_SET_PDEATHSIG, which fires when the
//! *spawning thread* exits, means "when the pool is gone"), waits for its
//! hello, then loops: take a job, move its future to running (a cancelled
//! one is skipped), write the call, and wait for the reply. While waiting it
//! enforces the task timeout and polls the worker's RSS against the memory
//! limit; past either, it kills the worker. When the socket reaches EOF it
//! reaps the worker, turns the exit status (or the reason it killed it)
//! into the task's error, and starts a new worker for the next job. Only
//! the task the dead worker was running fails.
//!
//! **Workers** are the program itself, re-executed from `/proc/self/exe`
//! with the socket on fd 3 and `MULTITASK_WORKER` set; `multitask::init()`
//! at the top of `main` (or the test-support constructor in test binaries)
//! turns such a start into a worker that never returns to `main`. A worker
//! dies with its parent: PR_SET_PDEATHSIG is set between fork and exec
//! (with a `getppid` re-check for the race where the parent died first), and
//! EOF on the socket ends its loop. No `fork()` of a threaded parent runs
//! any Rust code: the child goes straight to `exec`.
//!
//! Files: `pool.rs` (the handle, builder and executor), `supervisor.rs`
//! (the supervisor thread and a worker's life), `worker.rs` (the child's
//! loop), `wire.rs` (the protocol: a length prefix, a version byte and a
//! postcard message, with a size cap checked before any body is read),
//! `single.rs` (`Process`), `sys.rs` (the few unsafe system calls).

mod pool;
mod single;
mod supervisor;
pub(crate) mod sys;
pub(crate) mod wire;
pub(crate) mod worker;

pub use pool::{ProcessPool, ProcessPoolBuilder};
pub use single::Process;

/// The default cap on an encoded call or result: 64 MiB.
pub(crate) const DEFAULT_MAX_PAYLOAD: usize = 64 << 20;
