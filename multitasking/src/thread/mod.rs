//! Threads: the `ThreadPool` executor and the seed's `Thread` with a
//! cooperative `StopToken`.
//!
//! The pool is a fixed set of worker threads fed by one crossbeam channel
//! (the seed's queue-fed pool). A job is a boxed closure that either runs
//! its task or, when the pool is shut down with `cancel_futures`, cancels
//! it; either way its future resolves. Threads can't be killed: a task that
//! never returns keeps its worker, and `result_timeout` only stops waiting.

mod pool;
mod spawn;
#[cfg(test)]
mod test;

pub use pool::{ThreadPool, ThreadPoolBuilder};
pub use spawn::{StopToken, Thread};
