//! Threads: the `ThreadPool` executor and the seed's `Thread` with a
//! cooperative `StopToken`.
//!
//! The pool is a set of worker threads, started as needed up to
//! `max_workers`, fed by one queue (the seed's queue-fed pool; a fixed
//! ring with a spill queue behind it, `queue.rs`). A job is a closure
//! (kept inline in the queue's slot when small, `job.rs`) that either runs
//! its task or, when the pool is shut down with `cancel_futures`, cancels
//! it; either way its future resolves. Threads can't be killed: a task that
//! never returns keeps its worker, and `result_timeout` only stops waiting.
//! `ThreadPool::scope` (scope.rs) runs closures that borrow the caller's
//! locals on the same workers.

mod job;
mod pool;
mod queue;
mod scope;
mod spawn;
#[cfg(test)]
mod test;

pub use pool::{ThreadPool, ThreadPoolBuilder};
pub use scope::Scope;
pub use spawn::{StopToken, Thread};
