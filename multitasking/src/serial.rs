//! `SerialExecutor`: runs every task inline, on the caller's thread.
//!
//! The baseline a speedup is measured against, and the executor for code
//! that must run with no concurrency at all. `submit` runs the task before
//! it returns; `map` stays lazy: it runs each chunk when the consumer asks.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{SubmitError, TaskError};
use crate::executor::{run_chunk_here, ChunkFuture, Executor, Shutdown};
use crate::future::TaskFuture;
use crate::task::Task;
use crate::trace::{Span, SpanWorker, Tracer};
use std::time::Instant;

/// Runs each task inline when it is submitted.
///
/// ```
/// use multitasking::{Executor, SerialExecutor};
/// #[multitasking::task]
/// fn double(x: u64) -> u64 { x * 2 }
///
/// let ex = SerialExecutor::new();
/// let out: Vec<u64> = ex.map(double, 1..=3).map(Result::unwrap).collect();
/// assert_eq!(out, vec![2, 4, 6]);
/// ```
#[derive(Debug, Default)]
pub struct SerialExecutor {
    /// Set by `shutdown`; submits fail after it.
    closed: AtomicBool,
    /// Records each task.
    tracer: Tracer,
}

impl SerialExecutor {
    /// A new serial executor.
    pub fn new() -> Self {
        SerialExecutor::default()
    }

    /// Records every task (and chunk) in `tracer`, on the worker `serial`.
    pub fn with_tracer(mut self, tracer: Tracer) -> Self {
        self.tracer = tracer;
        self
    }

    /// Runs `f` for task `name`, traced when a tracer is on.
    fn traced<R>(&self, name: &'static str, ok: impl Fn(&R) -> bool, f: impl FnOnce() -> R) -> R {
        if !self.tracer.is_enabled() {
            return f();
        }
        let start = Instant::now();
        let cpu = crate::trace::thread_cpu();
        let allocated = crate::alloc::thread_allocated();
        let r = f();
        self.tracer.record_span(Span {
            task: name,
            worker: SpanWorker::Static("serial"),
            pid: std::process::id(),
            times: (start, start, Instant::now()),
            ok: ok(&r),
            peak_rss: None,
            cpu: Some(crate::trace::thread_cpu().saturating_sub(cpu)),
            input: None,
            allocated: allocated
                .zip(crate::alloc::thread_allocated())
                .map(|(a, b)| b.saturating_sub(a)),
        });
        r
    }

    /// Runs the closure `f` now and returns its finished future.
    pub fn spawn<R, F>(&self, f: F) -> Result<TaskFuture<R>, SubmitError<F>>
    where
        F: FnOnce() -> R,
    {
        let name = std::any::type_name::<F>();
        if self.is_closed() {
            return Err(SubmitError {
                input: f,
                error: TaskError::Shutdown {
                    task: name.to_string(),
                },
            });
        }
        Ok(TaskFuture::ready(name, crate::panic::catch(name, f)))
    }

    fn is_closed(&self) -> bool {
        // Relaxed: the flag guards no other data; a submit racing shutdown
        // may run or be refused, both of which are correct.
        self.closed.load(Ordering::Relaxed)
    }

    fn refuse<I>(&self, task: &str, input: I) -> SubmitError<I> {
        SubmitError {
            input,
            error: TaskError::Shutdown {
                task: task.to_string(),
            },
        }
    }
}

impl Executor for SerialExecutor {
    fn submit<T: Task>(
        &self,
        task: T,
        input: T::Input,
    ) -> Result<TaskFuture<T::Output>, SubmitError<T::Input>> {
        if self.is_closed() {
            return Err(self.refuse(T::NAME, input));
        }
        let outcome = self.traced(T::NAME, Result::is_ok, || {
            crate::panic::catch(T::NAME, || task.run(input))
        });
        Ok(TaskFuture::ready(T::NAME, outcome))
    }

    fn submit_chunk<T: Task>(
        &self,
        task: T,
        inputs: Vec<T::Input>,
    ) -> Result<ChunkFuture<T::Output>, SubmitError<Vec<T::Input>>> {
        if self.is_closed() {
            return Err(self.refuse(T::NAME, inputs));
        }
        let chunk = self.traced(T::NAME, |_| true, || run_chunk_here(task, inputs));
        Ok(TaskFuture::ready(T::NAME, Ok(chunk)))
    }

    fn shutdown(&self, _how: Shutdown) {
        self.closed.store(true, Ordering::Relaxed);
    }

    fn max_workers(&self) -> usize {
        1
    }

    fn spec(&self) -> String {
        "serial".to_string()
    }
}
