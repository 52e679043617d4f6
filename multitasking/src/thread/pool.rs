//! `ThreadPool`: the in-process executor for named tasks and closures.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, SubmitError, TaskError};
use crate::executor::{run_chunk_here, ChunkFuture, Executor, RawExecutor, Shutdown};
use crate::future::{Promise, TaskFuture};
use crate::map::Map;
use crate::task::{Task, TaskEntry};
use crate::trace::{Span, SpanWorker, Tracer};

/// What a worker does with a job.
enum Go {
    /// Run the task.
    Run,
    /// Cancel it (shutdown with `cancel_futures`).
    Cancel,
    /// Fail it: the pool is broken for this reason.
    Broken(String),
}

/// A job: runs, cancels or fails its task as told, and resolves its future.
struct Job {
    /// The task's name, for the trace.
    task: &'static str,
    /// When it was submitted, when tracing.
    submitted: Option<Instant>,
    /// Does it.
    run: Run,
}

/// A job's body: applies a [`Go`] to its promise, and calls the hook with
/// "the task did not fail" just before the promise resolves, so that
/// whoever sees the future finished also sees the trace event.
type Run = Box<dyn FnOnce(Go, &mut dyn FnMut(bool)) + Send>;

/// Applies `go` to a job's promise; `run` produces the outcome; `done`
/// hears whether it succeeded, before the promise resolves.
fn settle<T>(
    promise: Promise<T>,
    go: Go,
    done: &mut dyn FnMut(bool),
    run: impl FnOnce() -> Result<T, TaskError>,
) {
    match go {
        Go::Run => {
            if promise.set_running() {
                let outcome = run();
                done(outcome.is_ok());
                promise.complete(outcome);
            }
        }
        Go::Cancel => {
            promise.cancel();
        }
        Go::Broken(reason) => {
            done(false);
            let task = promise.task().to_string();
            promise.complete(Err(TaskError::Broken { task, reason }));
        }
    }
}

/// What travels on the pool's channel.
enum Msg {
    /// A task to run.
    Run(Job),
    /// One worker is to exit.
    Stop,
}

/// Runs in each worker thread before its first task.
type Initializer = Arc<dyn Fn() + Send + Sync>;

/// Builds a [`ThreadPool`].
pub struct ThreadPoolBuilder {
    /// Worker threads.
    max_workers: Option<usize>,
    /// Prefix of worker thread names.
    prefix: String,
    /// Runs in each worker before its first task.
    initializer: Option<Initializer>,
    /// Records each task.
    tracer: Tracer,
}

impl fmt::Debug for ThreadPoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPoolBuilder")
            .field("max_workers", &self.max_workers)
            .field("prefix", &self.prefix)
            .field("initializer", &self.initializer.is_some())
            .finish()
    }
}

impl ThreadPoolBuilder {
    /// Worker threads. Default: min(32, usable CPUs + 4), as Python 3.13.
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = Some(n);
        self
    }

    /// Worker thread names are `{prefix}-{index}`. Default: `multitask`.
    pub fn thread_name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Runs `f` in each worker thread before its first task. If it panics,
    /// the pool is broken: every task fails with [`TaskError::Broken`], as
    /// Python's `BrokenThreadPool`. Default: none.
    pub fn initializer(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.initializer = Some(Arc::new(f));
        self
    }

    /// Records every task in `tracer` (see [`crate::trace`]). Default: a
    /// disabled tracer, which costs one branch per task.
    pub fn tracer(mut self, tracer: Tracer) -> Self {
        self.tracer = tracer;
        self
    }

    /// Starts the worker threads.
    pub fn build(self) -> Result<ThreadPool, Error> {
        let workers = match self.max_workers {
            Some(0) => return Err(Error::Config("max_workers must be at least 1".to_string())),
            Some(n) => n,
            None => default_threads(),
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(PoolShared {
            closed: RwLock::new(false),
            broken: Mutex::new(None),
            tx,
            rx,
            busy: AtomicUsize::new(0),
            tracer: self.tracer,
        });
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let shared = shared.clone();
            let init = self.initializer.clone();
            let h = std::thread::Builder::new()
                .name(format!("{}-{i}", self.prefix))
                .spawn(move || worker_loop(&shared, init))
                .map_err(|e| Error::io("starting a worker thread", e))?;
            handles.push(h);
        }
        Ok(ThreadPool {
            shared,
            handles: Mutex::new(handles),
            workers,
            prefix: self.prefix,
        })
    }
}

/// The default thread count: min(32, usable CPUs + 4).
pub(crate) fn default_threads() -> usize {
    (crate::info::usable_cpus() + 4).min(32)
}

/// What the pool handle and its workers share.
struct PoolShared {
    /// True once shut down. Submits send under the read lock, so every job
    /// sent before `shutdown` takes the write lock precedes its `Stop`s.
    closed: RwLock<bool>,
    /// Why the pool is broken (an initializer panicked), if it is.
    broken: Mutex<Option<String>>,
    /// Jobs in.
    tx: Sender<Msg>,
    /// Jobs out; also drained by `shutdown` to cancel queued work.
    rx: Receiver<Msg>,
    /// Tasks running now.
    busy: AtomicUsize,
    /// Records each task.
    tracer: Tracer,
}

fn worker_loop(shared: &PoolShared, init: Option<Initializer>) {
    if let Some(init) = init {
        if let Err(e) = crate::panic::catch("initializer", || init()) {
            let mut broken = shared.broken.lock().unwrap_or_else(|p| p.into_inner());
            broken.get_or_insert_with(|| e.to_string());
        }
    }
    // This thread's name, for traces: read once.
    let mut name: Option<Arc<str>> = None;
    while let Ok(msg) = shared.rx.recv() {
        match msg {
            Msg::Run(job) => {
                let broken = shared
                    .broken
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                // Relaxed: `busy` is a gauge for observers; it orders nothing.
                shared.busy.fetch_add(1, Ordering::Relaxed);
                let go = broken.map_or(Go::Run, Go::Broken);
                match job.submitted {
                    None => (job.run)(go, &mut |_| {}),
                    Some(submitted) => {
                        let started = Instant::now();
                        (job.run)(go, &mut |ok| {
                            let me = name.get_or_insert_with(|| {
                                std::thread::current().name().unwrap_or("worker").into()
                            });
                            shared.tracer.record_span(Span {
                                task: job.task,
                                worker: SpanWorker::Named(me.clone()),
                                pid: std::process::id(),
                                times: (submitted, started, Instant::now()),
                                ok,
                                peak_rss: None,
                            });
                        });
                    }
                }
                shared.busy.fetch_sub(1, Ordering::Relaxed);
            }
            Msg::Stop => break,
        }
    }
}

/// A pool of worker threads: runs named tasks (the [`Executor`] API) and any
/// closure ([`ThreadPool::spawn`], [`ThreadPool::map_fn`]).
///
/// Dropping the pool shuts it down and waits for queued and running tasks.
///
/// ```
/// use multitasking::{Executor, ThreadPool};
/// #[multitasking::task]
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = ThreadPool::builder().max_workers(4).build().unwrap();
/// let fut = pool.submit(square, 12).unwrap();
/// assert_eq!(fut.result().unwrap(), 144);
/// let squares: Vec<u64> = pool.map(square, 1..=4).map(Result::unwrap).collect();
/// assert_eq!(squares, vec![1, 4, 9, 16]);
/// ```
pub struct ThreadPool {
    /// Shared with the workers.
    shared: Arc<PoolShared>,
    /// Worker threads not yet joined; emptied by a waiting shutdown.
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// How many workers were started.
    workers: usize,
    /// Thread name prefix.
    prefix: String,
}

impl fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPool")
            .field("workers", &self.workers)
            .field("prefix", &self.prefix)
            .field("busy", &self.shared.busy.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ThreadPool {
    /// A builder with the defaults.
    pub fn builder() -> ThreadPoolBuilder {
        ThreadPoolBuilder {
            max_workers: None,
            prefix: "multitask".to_string(),
            initializer: None,
            tracer: Tracer::disabled(),
        }
    }

    /// A pool with `n` workers.
    pub fn new(n: usize) -> Result<ThreadPool, Error> {
        ThreadPool::builder().max_workers(n).build()
    }

    /// Sends a job whose promise is named `task`; hands `input` back if the
    /// pool is closed or broken.
    fn send<I>(
        &self,
        task: &'static str,
        input: I,
        job: impl FnOnce(I) -> Run,
    ) -> Result<(), SubmitError<I>> {
        let closed = self.shared.closed.read().unwrap_or_else(|p| p.into_inner());
        if *closed {
            return Err(SubmitError {
                input,
                error: TaskError::Shutdown {
                    task: task.to_string(),
                },
            });
        }
        if let Some(reason) = self
            .shared
            .broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(SubmitError {
                input,
                error: TaskError::Broken {
                    task: task.to_string(),
                    reason,
                },
            });
        }
        // The receiver lives in `shared`, so the send can't fail.
        let submitted = self.shared.tracer.is_enabled().then(Instant::now);
        let _ = self.shared.tx.send(Msg::Run(Job {
            task,
            submitted,
            run: job(input),
        }));
        Ok(())
    }

    /// Runs the closure `f` on a worker thread.
    pub fn spawn<R, F>(&self, f: F) -> Result<TaskFuture<R>, SubmitError<F>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let name = std::any::type_name::<F>();
        let (fut, promise) = TaskFuture::pending(name);
        self.send(name, f, move |f| {
            Box::new(move |go, done| settle(promise, go, done, || crate::panic::catch(name, f)))
        })?;
        Ok(fut)
    }

    /// Maps the closure `f` over `inputs` lazily, in input order, with the
    /// same engine as [`Executor::map`].
    pub fn map_fn<F, I, O>(&self, f: F, inputs: I) -> Map<'_, I::IntoIter, O>
    where
        F: Fn(I::Item) -> O + Send + Sync + 'static,
        I: IntoIterator,
        I::Item: Send + 'static,
        O: Send + 'static,
    {
        self.closure_map(f, inputs, true)
    }

    /// As [`ThreadPool::map_fn`], yielding outcomes as they complete.
    pub fn map_fn_unordered<F, I, O>(&self, f: F, inputs: I) -> Map<'_, I::IntoIter, O>
    where
        F: Fn(I::Item) -> O + Send + Sync + 'static,
        I: IntoIterator,
        I::Item: Send + 'static,
        O: Send + 'static,
    {
        self.closure_map(f, inputs, false)
    }

    fn closure_map<F, I, O>(&self, f: F, inputs: I, ordered: bool) -> Map<'_, I::IntoIter, O>
    where
        F: Fn(I::Item) -> O + Send + Sync + 'static,
        I: IntoIterator,
        I::Item: Send + 'static,
        O: Send + 'static,
    {
        let name = std::any::type_name::<F>();
        let f = Arc::new(f);
        Map::new(
            name,
            inputs.into_iter(),
            self.workers,
            ordered,
            Box::new(move |chunk: Vec<I::Item>| {
                let f = f.clone();
                self.chunk_job(name, chunk, move |items| {
                    crate::panic::catch_each(name, items, |x| f(x))
                })
            }),
        )
    }

    /// Submits a chunk that `run` turns into per-item outcomes.
    fn chunk_job<X, O>(
        &self,
        name: &'static str,
        chunk: Vec<X>,
        run: impl FnOnce(Vec<X>) -> crate::chunk::Chunk<O> + Send + 'static,
    ) -> Result<ChunkFuture<O>, SubmitError<Vec<X>>>
    where
        X: Send + 'static,
        O: Send + 'static,
    {
        let (fut, promise) = TaskFuture::pending(name);
        self.send(name, chunk, move |chunk| {
            Box::new(move |go, done| settle(promise, go, done, || Ok(run(chunk))))
        })?;
        Ok(fut)
    }

    /// Tasks running now.
    pub fn busy(&self) -> usize {
        self.shared.busy.load(Ordering::Relaxed)
    }

    /// Tasks queued and not yet started.
    pub fn queued(&self) -> usize {
        self.shared.rx.len()
    }
}

impl Executor for ThreadPool {
    fn submit<T: Task>(
        &self,
        task: T,
        input: T::Input,
    ) -> Result<TaskFuture<T::Output>, SubmitError<T::Input>> {
        let (fut, promise) = TaskFuture::pending(T::NAME);
        self.send(T::NAME, input, move |input| {
            Box::new(move |go, done| {
                settle(promise, go, done, || {
                    crate::panic::catch(T::NAME, || task.run(input))
                })
            })
        })?;
        Ok(fut)
    }

    fn submit_chunk<T: Task>(
        &self,
        task: T,
        inputs: Vec<T::Input>,
    ) -> Result<ChunkFuture<T::Output>, SubmitError<Vec<T::Input>>> {
        self.chunk_job(T::NAME, inputs, move |items| run_chunk_here(task, items))
    }

    fn shutdown(&self, how: Shutdown) {
        let mut cancelled = Vec::new();
        {
            let mut closed = self
                .shared
                .closed
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if !*closed {
                *closed = true;
                if how.cancel_futures {
                    cancelled.extend(self.shared.rx.try_iter());
                }
                for _ in 0..self.workers {
                    let _ = self.shared.tx.send(Msg::Stop);
                }
            }
        }
        // Cancel what was queued, outside the lock: a done callback may
        // call back into the pool. Every future still resolves.
        for msg in cancelled {
            if let Msg::Run(job) = msg {
                (job.run)(Go::Cancel, &mut |_| {});
            }
        }
        if how.wait {
            let me = std::thread::current().id();
            let handles =
                std::mem::take(&mut *self.handles.lock().unwrap_or_else(|p| p.into_inner()));
            for h in handles {
                // A task that shuts down its own pool must not join itself.
                if h.thread().id() != me {
                    let _ = h.join();
                }
            }
        }
    }

    fn max_workers(&self) -> usize {
        self.workers
    }

    fn spec(&self) -> String {
        format!("threads:{}", self.workers)
    }
}

impl RawExecutor for ThreadPool {
    fn submit_raw(
        &self,
        entry: TaskEntry,
        payload: Vec<u8>,
    ) -> Result<TaskFuture<Vec<u8>>, SubmitError<Vec<u8>>> {
        let name = entry.name;
        let (fut, promise) = TaskFuture::pending(name);
        // The batch function catches each item's panic itself.
        self.send(name, payload, move |payload| {
            Box::new(move |go, done| settle(promise, go, done, || (entry.run)(&payload)))
        })?;
        Ok(fut)
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shutdown(Shutdown::default());
    }
}
