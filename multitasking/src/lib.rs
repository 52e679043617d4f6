//! multitasking: Python's `concurrent.futures` and `multiprocessing` done in
//! Rust. One executor API runs work on a thread pool, in crash-isolated
//! worker processes, or across machines through Redis, chosen by one spec
//! string; futures, `wait`, `as_completed`, a lazy `map` and measurement
//! come with it.
//!
//! # The names a Python user knows
//!
//! | Python | multitasking |
//! | --- | --- |
//! | `ThreadPoolExecutor(max_workers=4)` | [`ThreadPool::builder`]`().max_workers(4).build()` |
//! | `ProcessPoolExecutor()` | [`ProcessPool::builder`]`().build()` |
//! | `ex.submit(fn, arg)` | [`Executor::submit`] for a named task, [`ThreadPool::spawn`] for a closure |
//! | `ex.map(fn, items)` | [`Executor::map`]: lazy, windowed, each item its own `Result` |
//! | `ex.shutdown(wait, cancel_futures)` | [`Executor::shutdown`]`(`[`Shutdown`]`)`; dropping a pool shuts it down |
//! | `Future.result()`, `.cancel()`, `.done()` | [`TaskFuture`]; also `.await` from async code |
//! | `wait(fs, return_when=...)` | [`wait`] with [`ReturnWhen`] |
//! | `as_completed(fs, timeout)` | [`as_completed`] (an iterator; [`AsCompleted::stream`] for async) |
//! | `Thread`, `Process` | [`Thread`] with a [`StopToken`], [`Process`] |
//! | `timeit` | [`timeit`] |
//!
//! Beyond Python: [`TaskFuture::terminate`] kills the worker running a
//! task, `task_timeout` and `memory_limit` on a [`ProcessPool`] cost one
//! task its worker and nothing else, [`ThreadPool::scope`] runs closures
//! that borrow the caller's locals, [`trace`] records where each task ran
//! and for how long, and [`AnyExecutor::from_spec`] picks the executor at
//! run time (`serial`, `threads:8`, `processes:8`, `redis://...`).
//!
//! # Named tasks
//!
//! Closures run on threads. Work that crosses a process or machine boundary
//! is a *named task*, a function registered at compile time; no code is
//! ever sent over the wire:
//!
//! ```
//! use multitasking::{Executor, ThreadPool};
//!
//! #[multitasking::task]
//! fn is_prime(n: u64) -> bool {
//!     n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
//! }
//!
//! let pool = ThreadPool::builder().max_workers(2).build().unwrap();
//! let verdicts: Vec<bool> = pool
//!     .map(is_prime, [2, 9, 13])
//!     .map(Result::unwrap)
//!     .collect();
//! assert_eq!(verdicts, vec![true, false, true]);
//! assert!(is_prime.call(7));
//! ```
//!
//! A program that starts worker processes calls [`init`] first thing in
//! `main` (or marks `main` with [`#[multitasking::main]`](main)): a worker
//! is the program started again.
//!
//! # Where the rest lives
//!
//! [`cluster`] has the Redis worker and status; [`trace`] the timeline and
//! speedup report; [`timeit`] the timers; [`executor`] the plumbing for
//! writing an executor of your own.
//!
//! # Feature flags
//!
//! - `cluster` (default): [`ClusterPool`] and the [`cluster`] module, on
//!   the `redis` crate with rustls.
//! - `progress` (default): [`progress`], indicatif progress bars for `map`.
//! - `stream` (default): [`AsCompleted::stream`], a `futures_core::Stream`.
//! - `dashboard`: `multitasking::dashboard`, a live page in the browser for
//!   a pool's tracer or a cluster queue (axum on tokio).
//! - `profile`: `multitasking::profile`, a sampling profiler over this
//!   process and its worker processes, merged by task (pprof).

// Lets the macros' `::multitasking::` paths resolve inside this crate too.
extern crate self as multitasking;

pub mod alloc;
mod any;
mod chunk;
#[cfg(feature = "cluster")]
pub mod cluster;
#[cfg(feature = "dashboard")]
pub mod dashboard;
mod error;
pub mod executor;
mod future;
mod info;
mod map;
mod panic;
mod process;
#[cfg(feature = "profile")]
pub mod profile;
#[cfg(feature = "progress")]
pub mod progress;
mod remote;
mod serial;
mod sync;
mod task;
mod thread;
pub mod timeit;
pub mod trace;
mod wait;

pub use any::AnyExecutor;
#[cfg(feature = "cluster")]
#[doc(inline)]
pub use cluster::ClusterPool;
pub use error::{Error, ExitCause, SubmitError, TaskError, WaitTimeout};
#[doc(inline)]
pub use executor::{Executor, ExecutorSpec, Shutdown};
pub use future::{TaskFuture, TaskUsage, Waitable};
pub use info::{host_name, info, usable_cpus, Info};
pub use map::{Map, ProgressFn};
pub use multitasking_macros::{main, task};
pub use process::{Process, ProcessPool, ProcessPoolBuilder};
pub use serial::SerialExecutor;
pub use task::{register, Codec, Task};
pub use thread::{Scope, StopToken, Thread, ThreadPool, ThreadPoolBuilder};
#[cfg(feature = "stream")]
pub use wait::AsCompletedStream;
pub use wait::{as_completed, wait, AsCompleted, ReturnWhen};

/// Turns a start of this program as a worker process into a worker (which
/// never returns); returns at once in a normal start. Call it first thing
/// in `main`, or use `#[multitasking::main]`.
pub fn init() {
    process::worker::maybe_run();
}

/// Lets a test, bench or example binary whose `main` it does not write (the
/// test harness) start worker processes of its own: it runs
/// [`init`] from a constructor, before the harness's `main`. Invoke it once
/// at the top level of the binary's crate root.
#[macro_export]
macro_rules! enable_test_support {
    () => {
        #[used]
        #[link_section = ".init_array"]
        static __MULTITASK_TEST_SUPPORT: extern "C" fn() = {
            extern "C" fn __multitask_test_support() {
                $crate::init();
            }
            __multitask_test_support
        };
    };
}

#[doc(hidden)]
pub mod __private {
    pub use crate::task::{entry, signature_hash, TaskEntry, TASKS};
    pub use linkme;
}

#[cfg(all(test, loom))]
mod model;

// Every Rust block of the README runs as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
mod readme {}
