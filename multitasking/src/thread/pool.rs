//! `ThreadPool`: the in-process executor for named tasks and closures.
//!
//! Worker threads start as needed, as CPython's ThreadPoolExecutor does: a
//! submit starts a new one only when no idle worker can take its job, up to
//! `max_workers`. A worker counts itself idle from the moment its task's
//! body returns, before the task's future resolves, so a caller that
//! submits again as soon as it sees a result finds it idle: sequential
//! submit-and-wait calls use one thread. Once every worker has started the
//! count is no longer kept, and a submit costs what it did with a fixed
//! set of threads.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::error::{Error, SubmitError, TaskError};
use crate::executor::{run_chunk_here, ChunkFuture, Executor, RawExecutor, Shutdown};
use crate::future::{Promise, TaskFuture};
use crate::map::Map;
use crate::task::{Task, TaskEntry};
use crate::trace::{Span, SpanWorker, Tracer};

use super::job::JobFn;
use super::queue::JobQueue;

/// What a worker does with a job.
pub(super) enum Go {
    /// Run the task.
    Run,
    /// Cancel it (shutdown with `cancel_futures`).
    Cancel,
    /// Fail it: the pool is broken for this reason.
    Broken(String),
}

/// A job: runs, cancels or fails its task as told, and resolves its future.
/// 64 bytes: what only a trace needs is boxed, and only when tracing.
struct Job {
    /// What the trace records of it, when tracing.
    traced: Option<Box<Traced>>,
    /// Does it: applies a [`Go`] to its promise, and calls the hook with
    /// "the task did not fail" just before the promise resolves, so that
    /// whoever sees the future finished also sees the trace event.
    run: JobFn,
}

/// What a traced job carries for its span.
struct Traced {
    /// The task's name.
    task: &'static str,
    /// When it was submitted.
    submitted: Instant,
    /// A preview of its input, for a named task.
    input: Option<String>,
}

/// A job's body boxed, as a scope makes it before erasing its lifetime.
pub(super) type BoxedRun = Box<dyn FnOnce(Go, &mut dyn FnMut(bool)) + Send>;

/// Applies `go` to a job's promise; `run` produces the outcome; `done`
/// hears whether it succeeded, before the promise resolves.
pub(super) fn settle<T>(
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

// A queue slot is a message and the ring's stamp: keep the message to a
// cache line.
const _: () = assert!(std::mem::size_of::<Msg>() <= 64);

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
    /// The most worker threads; they start as needed. Default: min(32,
    /// usable CPUs + 4), as Python 3.13. At most 4096.
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = Some(n);
        self
    }

    /// Worker thread names are `{prefix}-{index}`. Default: `multitasking`.
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

    /// Makes the pool. No thread starts until the first submit; then one
    /// starts each time no idle worker can take a job, up to `max_workers`.
    pub fn build(self) -> Result<ThreadPool, Error> {
        let workers = match self.max_workers {
            Some(0) => return Err(Error::Config("max_workers must be at least 1".to_string())),
            Some(n) if n > MAX_THREADS => {
                return Err(Error::Config(format!(
                "max_workers {n} is more threads than a process can start (at most {MAX_THREADS})"
            )))
            }
            Some(n) => n,
            None => default_threads(),
        };
        let shared = Arc::new(PoolShared {
            closed: RwLock::new(false),
            broken: Mutex::new(None),
            is_broken: AtomicBool::new(false),
            queue: JobQueue::new(),
            busy: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            max_workers: workers,
            threads: Mutex::new(Threads {
                handles: Vec::new(),
                prefix: self.prefix,
                initializer: self.initializer,
            }),
            tracer: self.tracer,
        });
        Ok(ThreadPool { shared })
    }
}

/// The most worker threads a pool may have: past this, thread stacks alone
/// would take terabytes of address space, and the OS refuses long before.
pub(crate) const MAX_THREADS: usize = 4096;

/// The default thread count: min(32, usable CPUs + 4).
pub(crate) fn default_threads() -> usize {
    (crate::info::usable_cpus() + 4).min(32)
}

/// What the pool handle, its scopes and its workers share.
pub(super) struct PoolShared {
    /// True once shut down. Submits send (and start workers) under the read
    /// lock, so every job sent and every worker started before `shutdown`
    /// takes the write lock precedes its `Stop`s.
    closed: RwLock<bool>,
    /// Why the pool is broken (an initializer panicked), if it is.
    broken: Mutex<Option<String>>,
    /// True once `broken` is set: read on every submit and task, without
    /// the lock.
    is_broken: AtomicBool,
    /// Jobs, in and out; also drained by `shutdown` to cancel queued work.
    queue: JobQueue<Msg>,
    /// Tasks running now.
    busy: AtomicUsize,
    /// Tokens of workers free to take a job: a worker adds one when it is
    /// done with a task's body (before the future resolves), and a submit
    /// takes one instead of starting a worker. Kept only while
    /// `started < max_workers`.
    idle: AtomicUsize,
    /// Worker threads started; never decreases. Written under `threads`.
    started: AtomicUsize,
    /// The most worker threads.
    max_workers: usize,
    /// The started threads, and how to start another.
    threads: Mutex<Threads>,
    /// Records each task.
    tracer: Tracer,
}

/// The pool's threads: those started, and what the next one needs.
struct Threads {
    /// Started threads not yet joined; emptied by a waiting shutdown.
    handles: Vec<JoinHandle<()>>,
    /// Worker thread names are `{prefix}-{index}`.
    prefix: String,
    /// Runs in each worker before its first task.
    initializer: Option<Initializer>,
}

impl PoolShared {
    /// True once every worker has started: then nobody reads `idle`.
    fn full(&self) -> bool {
        // SeqCst: a worker's choice to keep `idle` and a submitter's choice
        // to read it must see the same `started`, or a count is skipped.
        self.started.load(Ordering::SeqCst) >= self.max_workers
    }

    /// Starts a worker if no idle one can take one more job, and the pool
    /// may grow. Called with `closed` read-locked. An error only when the
    /// pool has no worker at all (then nothing would run the job).
    fn grow(self: &Arc<Self>) -> Result<(), String> {
        if self.full() {
            return Ok(());
        }
        // An idle worker's token: that worker takes this job. Each token is
        // taken by one submit, so a worker that has just taken a job but
        // not yet said so can't be counted twice (counting idle workers
        // against the queue's length did that: a job could wait beside a
        // worker blocked in another, with no thread started for it).
        // SeqCst: pairs with the worker's increments of `idle`.
        if self
            .idle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Ok(());
        }
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        let index = self.started.load(Ordering::SeqCst);
        if index >= self.max_workers {
            return Ok(());
        }
        let shared = self.clone();
        let init = threads.initializer.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{}-{index}", threads.prefix))
            .spawn(move || worker_loop(&shared, init));
        match spawned {
            Ok(h) => {
                threads.handles.push(h);
                self.started.store(index + 1, Ordering::SeqCst);
                Ok(())
            }
            Err(e) if index == 0 => Err(format!("could not start a worker thread: {e}")),
            // The workers there will take the job.
            Err(_) => Ok(()),
        }
    }

    /// Sends a job whose promise is named `task`, starting a worker if
    /// needed; hands `input` back if the pool is closed or broken.
    pub(super) fn send<I>(
        self: &Arc<Self>,
        task: &'static str,
        input: I,
        preview: impl FnOnce(&I) -> Option<String>,
        job: impl FnOnce(I) -> JobFn,
    ) -> Result<(), SubmitError<I>> {
        let closed = self.closed.read().unwrap_or_else(|p| p.into_inner());
        if *closed {
            return Err(SubmitError {
                input,
                error: TaskError::Shutdown {
                    task: task.to_string(),
                },
            });
        }
        if let Some(reason) = self.why_broken().map_or_else(|| self.grow().err(), Some) {
            return Err(SubmitError {
                input,
                error: TaskError::Broken {
                    task: task.to_string(),
                    reason,
                },
            });
        }
        let traced = self.tracer.is_enabled().then(|| {
            Box::new(Traced {
                task,
                submitted: Instant::now(),
                input: preview(&input),
            })
        });
        self.queue.push(Msg::Run(Job {
            traced,
            run: job(input),
        }));
        drop(closed);
        Ok(())
    }
}

/// How long an idle worker spins for the next job before it sleeps: a
/// burst of submits then finds it awake, and pays no wake-up (a system
/// call on each side) per task. An idle pool spins this once, then sleeps.
const WORKER_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// The next message for a worker: spinning a little first, then blocking.
fn next_job(shared: &PoolShared) -> Msg {
    let mut got = None;
    crate::sync::spin_for(WORKER_SPIN, || {
        got = shared.queue.try_pop();
        got.is_some()
    });
    got.unwrap_or_else(|| shared.queue.pop())
}

impl PoolShared {
    /// Why the pool is broken, if it is (no lock when it is not).
    fn why_broken(&self) -> Option<String> {
        if !self.is_broken.load(Ordering::Acquire) {
            return None;
        }
        self.broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn worker_loop(shared: &PoolShared, init: Option<Initializer>) {
    if let Some(init) = init {
        if let Err(e) = crate::panic::catch("initializer", || init()) {
            let mut broken = shared.broken.lock().unwrap_or_else(|p| p.into_inner());
            broken.get_or_insert_with(|| e.to_string());
            // Release: pairs with the Acquire in `why_broken`.
            shared.is_broken.store(true, Ordering::Release);
        }
    }
    // This thread's name, for traces: read once.
    let mut name: Option<Arc<str>> = None;
    loop {
        // A worker gives a token to `idle` when it is done with a job (see
        // `grow`); one started for a job gives none before it.
        let mut counted = false;
        let msg = next_job(shared);
        let Msg::Run(mut job) = msg else { break };
        let broken = shared.why_broken();
        // Relaxed: `busy` is a gauge for observers; it orders nothing.
        shared.busy.fetch_add(1, Ordering::Relaxed);
        let go = broken.map_or(Go::Run, Go::Broken);
        let started = job.traced.as_ref().map(|_| {
            (
                Instant::now(),
                crate::trace::thread_cpu(),
                crate::alloc::thread_allocated(),
            )
        });
        // Runs when the body returned, before the promise resolves.
        let mut done = |ok: bool| {
            if let (Some(traced), Some((started, cpu, allocated))) = (job.traced.take(), started) {
                let me = name.get_or_insert_with(|| {
                    std::thread::current().name().unwrap_or("worker").into()
                });
                shared.tracer.record_span(Span {
                    task: traced.task,
                    worker: SpanWorker::Named(me.clone()),
                    pid: std::process::id(),
                    times: (traced.submitted, started, Instant::now()),
                    ok,
                    peak_rss: None,
                    cpu: Some(crate::trace::thread_cpu().saturating_sub(cpu)),
                    input: traced.input,
                    allocated: allocated
                        .zip(crate::alloc::thread_allocated())
                        .map(|(a, b)| b.saturating_sub(a)),
                });
            }
            if !shared.full() {
                shared.idle.fetch_add(1, Ordering::SeqCst);
                counted = true;
            }
        };
        job.run.call(go, &mut done);
        // A job that was cancelled or failed before its body ran.
        if !counted && !shared.full() {
            shared.idle.fetch_add(1, Ordering::SeqCst);
        }
        shared.busy.fetch_sub(1, Ordering::Relaxed);
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
    /// Shared with the workers and with scopes.
    shared: Arc<PoolShared>,
}

impl fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPool")
            .field("max_workers", &self.shared.max_workers)
            .field("started", &self.started())
            .field("busy", &self.busy())
            .finish_non_exhaustive()
    }
}

impl ThreadPool {
    /// A builder with the defaults.
    pub fn builder() -> ThreadPoolBuilder {
        ThreadPoolBuilder {
            max_workers: None,
            prefix: "multitasking".to_string(),
            initializer: None,
            tracer: Tracer::disabled(),
        }
    }

    /// A pool of at most `n` workers.
    pub fn new(n: usize) -> Result<ThreadPool, Error> {
        ThreadPool::builder().max_workers(n).build()
    }

    /// What this pool shares with its scopes.
    pub(super) fn shared(&self) -> &Arc<PoolShared> {
        &self.shared
    }

    /// Sends a job whose promise is named `task`.
    fn send<I>(
        &self,
        task: &'static str,
        input: I,
        job: impl FnOnce(I) -> JobFn,
    ) -> Result<(), SubmitError<I>> {
        self.shared.send(task, input, |_| None, job)
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
            JobFn::new(move |go, done| settle(promise, go, done, || crate::panic::catch(name, f)))
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
            self.shared.max_workers,
            ordered,
            Box::new(move |chunk: Vec<I::Item>| {
                let f = f.clone();
                self.chunk_job(
                    name,
                    chunk,
                    |_| None,
                    move |items| crate::panic::catch_each(name, items, |x| f(x)),
                )
            }),
        )
    }

    /// Submits a chunk that `run` turns into per-item outcomes.
    fn chunk_job<X, O>(
        &self,
        name: &'static str,
        chunk: Vec<X>,
        preview: impl FnOnce(&Vec<X>) -> Option<String>,
        run: impl FnOnce(Vec<X>) -> crate::chunk::Chunk<O> + Send + 'static,
    ) -> Result<ChunkFuture<O>, SubmitError<Vec<X>>>
    where
        X: Send + 'static,
        O: Send + 'static,
    {
        let (fut, promise) = TaskFuture::pending(name);
        self.shared.send(name, chunk, preview, move |chunk| {
            JobFn::new(move |go, done| settle(promise, go, done, || Ok(run(chunk))))
        })?;
        Ok(fut)
    }

    /// Tasks running now.
    pub fn busy(&self) -> usize {
        self.shared.busy.load(Ordering::Relaxed)
    }

    /// Worker threads started so far: they start as needed, up to
    /// [`Executor::max_workers`], and stay until shutdown.
    pub fn started(&self) -> usize {
        self.shared.started.load(Ordering::SeqCst)
    }

    /// Tasks queued and not yet started.
    pub fn queued(&self) -> usize {
        self.shared.queue.len()
    }
}

impl Executor for ThreadPool {
    fn submit<T: Task>(
        &self,
        task: T,
        input: T::Input,
    ) -> Result<TaskFuture<T::Output>, SubmitError<T::Input>> {
        let (fut, promise) = TaskFuture::pending(T::NAME);
        let preview = |input: &T::Input| Some(crate::trace::preview(input));
        self.shared.send(T::NAME, input, preview, move |input| {
            JobFn::new(move |go, done| {
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
        let preview = |items: &Vec<T::Input>| Some(crate::trace::preview_batch(items));
        self.chunk_job(T::NAME, inputs, preview, move |items| {
            run_chunk_here(task, items)
        })
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
                    cancelled = self.shared.queue.drain();
                }
                // Workers start under the read lock: none starts now.
                for _ in 0..self.started() {
                    self.shared.queue.push(Msg::Stop);
                }
            }
        }
        // Cancel what was queued, outside the lock: a done callback may
        // call back into the pool. Every future still resolves.
        for msg in cancelled {
            if let Msg::Run(job) = msg {
                job.run.call(Go::Cancel, &mut |_| {});
            }
        }
        if how.wait {
            let me = std::thread::current().id();
            let handles = std::mem::take(
                &mut self
                    .shared
                    .threads
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .handles,
            );
            for h in handles {
                // A task that shuts down its own pool must not join itself.
                if h.thread().id() != me {
                    let _ = h.join();
                }
            }
        }
    }

    fn max_workers(&self) -> usize {
        self.shared.max_workers
    }

    fn spec(&self) -> String {
        format!("threads:{}", self.shared.max_workers)
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
            JobFn::new(move |go, done| settle(promise, go, done, || (entry.run)(&payload)))
        })?;
        Ok(fut)
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        // A pool dropped while its owner unwinds cancels what has not
        // started: the program is giving up, so queued work would only
        // delay the panic (it waited for every queued task before).
        self.shutdown(Shutdown {
            wait: true,
            cancel_futures: std::thread::panicking(),
        });
    }
}
