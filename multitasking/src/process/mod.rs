//! Processes: `ProcessPool`, whose workers are this program started again,
//! and `Process`, one named task in a fresh process.
//!
//! ```text
//!   caller threads               pool (this process)                      worker processes
//!  ----------------   submit   -----------------------                   ------------------
//!  pool.submit(t, x) --------> | job queue (FIFO)     |                   | /proc/self/exe   |
//!  pool.map(t, xs)   encode    -----------+-----------                    | MULTITASK_WORKER |
//!        |           Vec<Input>           | whoever finds slot k idle     | fd 3 = socket    |
//!        |                                |                               | fd 4 = call board|
//!        |                                v                               |                  |
//!        |  (a) submitter writes ---> slot k: Mutex<SlotState> ======= Call =======> resolve |
//!        |  (b) waiter reads    <---  (socketpair, framed, versioned)  <=== Reply == (name,  |
//!        v                                ^                               |   signature),    |
//!   TaskFuture  <---- decode -------------+                               | run the batch    |
//!   (result, cancel, terminate)           |                               | under catch_     |
//!                                 supervisor thread k: parks in poll on   |   unwind         |
//!                                 the socket and a bell; starts, reaps,   ------------------
//!                                 replaces; timeout, RSS, unread replies
//! ```
//!
//! **Caller threads** encode a batch of inputs (one item for `submit`, a
//! chunk for `map`) with the task's codec and put a job on the pool's
//! queue. If a worker slot is idle, the submitter takes the slot's lock and
//! writes the call itself (a). A caller that then waits for the result
//! spins briefly, and while it spins it reads the worker's reply itself
//! (b, through `Terminate::progress`) and starts the next queued call on
//! that worker. A round trip thus crosses two parties, the caller and the
//! worker, as a raw socket ping-pong does: on a 2-CPU machine a third
//! party (a supervisor thread that relays every call and reply) costs a
//! context switch each way and made a round trip two to three times
//! slower. Futures are resolved after the slot's lock is released, so a
//! done callback may submit again.
//!
//! **Supervisor threads**, one per worker slot, live as long as the pool.
//! Each starts its worker (so that PR_SET_PDEATHSIG, which fires when the
//! *spawning thread* exits, means "when the pool is gone") and waits for
//! its hello. Then it parks in `poll` on the worker's socket and on its
//! bell (a self-pipe rung by the closing pool, and by whoever changes the
//! slot so that the reason the supervisor parked for no longer holds: a
//! call with a deadline started, the worker must retire, the caller read
//! the last reply of a closed pool; see `Parked`). While callers spin for
//! a slot's replies and no call is queued (and, while the worker is idle,
//! for a millisecond after the last of them), its supervisor leaves the
//! socket to them and looks every millisecond instead (the last spinner
//! rings it if a call is left unanswered), so that a reply wakes nobody
//! but the caller. It does what nobody else did: reads a
//! reply nobody was waiting for and starts the next call, kills the worker
//! past the task timeout or above the memory limit (RSS polled every
//! 20 ms), and, when the socket reaches end-of-file, reaps the worker,
//! turns its exit status (or the reason it was killed) into the task's
//! error, and starts a new worker. Only the task the dead worker was
//! running fails; an idle worker that dies is replaced at once.
//!
//! **Calls ahead.** While a worker's calls are short and no other worker
//! is idle, whoever reads a reply writes the next calls from the queue to
//! that worker ahead of the one it runs (up to 7, `supervisor::AHEAD`), so
//! the worker reads its next call without waiting and the pool's side
//! reads several replies per wake-up. The worker and the pool share a call
//! board (`board.rs`, a memfd page on fd 4): the worker claims each call
//! on it before running it, and the pool takes back one not yet claimed
//! (a `terminate`) with a compare-and-swap on the same word, so exactly one
//! of the two wins. When a worker dies, the calls it never claimed go back
//! to the queue, unspent.
//!
//! **Workers** are the program itself, re-executed from `/proc/self/exe`
//! with the socket on fd 3 and `MULTITASK_WORKER` set; `multitasking::init()`
//! at the top of `main` (or the test-support constructor in test binaries)
//! turns such a start into a worker that never returns to `main`. A worker
//! dies with its parent: PR_SET_PDEATHSIG is set between fork and exec
//! (with a `getppid` re-check for the race where the parent died first), and
//! EOF on the socket ends its loop. No `fork()` of a threaded parent runs
//! any Rust code: the child goes straight to `exec`.
//!
//! Files: `pool.rs` (the handle, builder and executor), `supervisor.rs`
//! (worker slots, the supervisor thread and a worker's life), `board.rs`
//! (the call board), `worker.rs`
//! (the child's loop), `wire.rs` (the protocol: a length prefix, a version byte and a
//! postcard message, with a size cap checked before any body is read),
//! `single.rs` (`Process`), `sys.rs` (the few unsafe system calls).

mod board;
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
