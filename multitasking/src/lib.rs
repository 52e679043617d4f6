//! multitask: one executor API from a thread pool to crash-isolated worker
//! processes to a Redis cluster, with futures, a lazy map, and measurement
//! built in.
//!
//! It is the toolkit of Python's `concurrent.futures` and `multiprocessing`
//! done as a product: [`TaskFuture`] with `result`, `cancel` and done
//! callbacks; [`wait`] and [`as_completed`]; an [`Executor`] trait with
//! `submit`, a lazy windowed `map`, and `shutdown`; and executors chosen by a
//! spec string ([`AnyExecutor::from_spec`]).
//!
//! Closures run on threads. Work that crosses a process or machine boundary
//! is a *named task*, a function registered at compile time:
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

// Lets the macros' `::multitasking::` paths resolve inside this crate too.
extern crate self as multitasking;

mod any;
mod chunk;
#[cfg(feature = "cluster")]
pub mod cluster;
mod error;
mod executor;
mod future;
mod info;
mod map;
mod panic;
mod process;
#[cfg(feature = "progress")]
pub mod progress;
mod remote;
mod serial;
mod sync;
pub mod task;
mod thread;
pub mod timeit;
pub mod trace;
mod wait;

pub use any::AnyExecutor;
pub use chunk::{Chunk, ChunkIter};
#[cfg(feature = "cluster")]
pub use cluster::ClusterPool;
pub use error::{Error, ExitCause, SubmitError, TaskError, WaitTimeout};
pub use executor::{redact, ChunkFuture, Executor, ExecutorSpec, RawExecutor, Shutdown};
pub use future::{Promise, TaskFuture, Terminate, Waitable};
pub use info::{host_name, info, rss_of, usable_cpus, Info};
pub use map::{Map, ProgressFn};
pub use multitasking_macros::{main, task};
pub use process::{Process, ProcessPool, ProcessPoolBuilder};
pub use serial::SerialExecutor;
pub use task::{register, Codec, Task};
pub use thread::{StopToken, Thread, ThreadPool, ThreadPoolBuilder};
pub use wait::{as_completed, wait, AsCompleted, ReturnWhen, Signal};

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
