//! `ProcessPool`: the executor whose workers are processes.
//!
//! See the module docs (`process/mod.rs`) for the actors and the data flow.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, SubmitError, TaskError};
use crate::executor::{ChunkFuture, Executor, RawExecutor, Shutdown};
use crate::future::TaskFuture;
use crate::process::supervisor::{supervise, KillReason, KillSwitch, Slot};
use crate::process::DEFAULT_MAX_PAYLOAD;
use crate::remote::{deliver, deliver_chunk, deliver_one, Deliver};
use crate::task::{self, Task, TaskEntry};
use crate::trace::Tracer;

/// The pool's settings; fixed at build.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Worker processes.
    pub(crate) workers: usize,
    /// Worker name prefix.
    pub(crate) name: String,
    /// Initializer task: name and signature.
    pub(crate) initializer: Option<(&'static str, u64)>,
    /// Replace a worker after this many tasks.
    pub(crate) max_tasks_per_child: Option<u64>,
    /// Kill a worker whose task runs longer.
    pub(crate) task_timeout: Option<Duration>,
    /// Kill a worker whose RSS goes above this many bytes.
    pub(crate) memory_limit: Option<u64>,
    /// Frame-size cap in bytes.
    pub(crate) max_payload: usize,
    /// Runs of a task whose worker died before it gives up.
    pub(crate) max_retries: u32,
    /// How long a new worker has to say hello.
    pub(crate) start_timeout: Duration,
    /// Records each task.
    pub(crate) tracer: Tracer,
    /// Measure each task's CPU time and peak RSS for its future.
    pub(crate) measure: bool,
    /// Calls written to a busy worker ahead of the one it runs; `None`:
    /// up to `AHEAD` while its calls are short.
    pub(crate) calls_ahead: Option<usize>,
}

/// Builds a [`ProcessPool`].
#[derive(Debug, Clone)]
pub struct ProcessPoolBuilder {
    /// The settings being built.
    config: Config,
}

impl ProcessPoolBuilder {
    /// Worker processes. Default: the usable CPUs (affinity and cgroup
    /// quota respected).
    pub fn max_workers(mut self, n: usize) -> Self {
        self.config.workers = n;
        self
    }

    /// Worker names are `{prefix}-{index}` (in errors and traces).
    /// Default: `multitask-worker`.
    pub fn worker_name(mut self, prefix: impl Into<String>) -> Self {
        self.config.name = prefix.into();
        self
    }

    /// A named task run in each worker process before its first task. If
    /// it fails, the pool is broken: `build` fails. Default: none.
    pub fn initializer<T: Task<Input = ()>>(mut self, _task: T) -> Self {
        self.config.initializer = Some((T::NAME, T::SIGNATURE));
        self
    }

    /// Replaces a worker after it ran this many tasks (a chunk counts
    /// once). Default: never.
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.config.max_tasks_per_child = Some(n);
        self
    }

    /// Kills a worker whose task (or chunk) runs longer than `d`; the task
    /// fails with [`TaskError::TimedOut`]. Default: no timeout.
    pub fn task_timeout(mut self, d: Duration) -> Self {
        self.config.task_timeout = Some(d);
        self
    }

    /// Kills a worker whose resident set goes above `bytes`; its task fails
    /// with [`TaskError::MemoryExceeded`]. Checked every 20 ms while a task
    /// runs. Default: no limit.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.config.memory_limit = Some(bytes);
        self
    }

    /// Refuses calls and results larger than `bytes` encoded, with
    /// [`TaskError::TooLarge`]. Default: 64 MiB.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.config.max_payload = bytes;
        self
    }

    /// Runs a task again, up to `n` times, when its worker dies under it. A
    /// retried task may repeat side effects. Default: 0.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.config.max_retries = n;
        self
    }

    /// Records every task in `tracer`, with the worker's pid and peak RSS
    /// (see [`crate::trace`]). Default: a disabled tracer.
    pub fn tracer(mut self, tracer: Tracer) -> Self {
        self.config.tracer = tracer;
        self
    }

    /// Measures each task's CPU time and peak RSS in its worker, for
    /// [`TaskFuture::usage`] (a traced pool measures anyway). It costs a
    /// write to `/proc/self/clear_refs` and a read of `/proc/self/status`
    /// per task in the worker: some tens of microseconds, noticeable only
    /// on tasks that short. Default: off.
    pub fn measure_usage(mut self, yes: bool) -> Self {
        self.config.measure = yes;
        self
    }

    /// How many calls a busy worker may be given ahead of the one it runs,
    /// so that it goes from one to the next without waiting for this
    /// process (many short tasks run about 1.5 times faster). A call
    /// given ahead counts as running: `cancel` fails for it, and
    /// `terminate` takes it back (it never runs) without stopping the
    /// call before it. Calls over 16 KiB encoded are never given ahead.
    /// `0` gives each worker one call at a time; at most 15. Default: up
    /// to 7, while the worker's calls take less than 200 µs on average
    /// and no other worker is idle, so that no call waits behind a long
    /// one.
    pub fn calls_ahead(mut self, n: usize) -> Self {
        self.config.calls_ahead = Some(n.min(crate::process::supervisor::MAX_AHEAD));
        self
    }

    /// How long a new worker has to start and say hello. Default: 10 s.
    pub fn start_timeout(mut self, d: Duration) -> Self {
        self.config.start_timeout = d;
        self
    }

    /// Starts the workers and waits until each has said hello.
    ///
    /// In a process that was started as a worker and has not run
    /// `multitasking::init()` (its `main` forgot it), prints why on stderr
    /// and exits at once, so that the forgotten call costs one process per
    /// worker, not a process storm; the pool that started it fails.
    ///
    /// Fails if a worker can't be started, does not say hello in time (the
    /// program does not call `multitasking::init()` first thing in `main`), or
    /// its initializer fails.
    pub fn build(self) -> Result<ProcessPool, Error> {
        crate::process::worker::refuse_nested_start();
        let config = self.config;
        if config.workers == 0 {
            return Err(Error::Config("max_workers must be at least 1".to_string()));
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let slots = (0..config.workers)
            .map(|i| Slot::new(i).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let shared = Arc::new(PoolShared {
            closed: RwLock::new(false),
            tx,
            rx,
            slots,
            live: Mutex::new(vec![None; config.workers]),
            next_id: AtomicU64::new(1),
            config: config.clone(),
        });
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(config.workers);
        let mut handles = Vec::with_capacity(config.workers);
        for (index, slot) in shared.slots.iter().enumerate() {
            let slot = slot.clone();
            let shared = shared.clone();
            let ready = ready_tx.clone();
            let h = std::thread::Builder::new()
                .name(format!("{}-{index}-supervisor", config.name))
                .spawn(move || supervise(slot, shared, ready))
                .map_err(|e| Error::io("starting a supervisor thread", e))?;
            handles.push(h);
        }
        let pool = ProcessPool {
            shared,
            handles: Mutex::new(handles),
        };
        let deadline = Instant::now() + config.start_timeout + Duration::from_secs(1);
        for _ in 0..config.workers {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready_rx.recv_timeout(left) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(Error::Protocol("workers did not start in time".to_string())),
            }
        }
        Ok(pool)
    }
}

/// What the pool handle and its supervisors share.
pub(crate) struct PoolShared {
    /// True once shut down; submits send under the read lock.
    pub(crate) closed: RwLock<bool>,
    /// Jobs in.
    pub(crate) tx: Sender<Job>,
    /// Jobs out, taken by whoever finds a slot idle.
    pub(crate) rx: Receiver<Job>,
    /// The worker slots.
    pub(crate) slots: Vec<Arc<Slot>>,
    /// The kill switch of each slot's live worker.
    pub(crate) live: Mutex<Vec<Option<Arc<KillSwitch>>>>,
    /// Next call id.
    pub(crate) next_id: AtomicU64,
    /// The settings.
    pub(crate) config: Config,
}

/// One call waiting for a worker.
pub(crate) struct Job {
    /// The task's name.
    pub(crate) task: &'static str,
    /// Its signature hash.
    pub(crate) signature: u64,
    /// The encoded batch.
    pub(crate) payload: Vec<u8>,
    /// Resolves the caller's future.
    pub(crate) deliver: Box<dyn Deliver>,
    /// Runs so far (retries after a worker died).
    pub(crate) attempts: u32,
    /// When it was submitted, when tracing.
    pub(crate) submitted: Option<Instant>,
    /// A preview of its input, when tracing.
    pub(crate) input: Option<String>,
}

/// A pool of worker processes: crash isolation, kill-able timeouts and
/// memory limits, behind the same [`Executor`] API as the thread pool.
///
/// Workers are this program started again; `main` must call
/// [`crate::init`] first (or use `#[multitasking::main]`). Dropping the pool
/// shuts it down, waits for its work, and reaps every worker.
pub struct ProcessPool {
    /// Shared with the supervisors.
    shared: Arc<PoolShared>,
    /// Supervisor threads not yet joined.
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl fmt::Debug for ProcessPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessPool")
            .field("workers", &self.shared.config.workers)
            .field("pids", &self.worker_pids())
            .finish_non_exhaustive()
    }
}

impl ProcessPool {
    /// A builder with the defaults.
    pub fn builder() -> ProcessPoolBuilder {
        ProcessPoolBuilder {
            config: Config {
                workers: crate::info::usable_cpus(),
                name: "multitask-worker".to_string(),
                initializer: None,
                max_tasks_per_child: None,
                task_timeout: None,
                memory_limit: None,
                max_payload: DEFAULT_MAX_PAYLOAD,
                max_retries: 0,
                start_timeout: Duration::from_secs(10),
                tracer: Tracer::disabled(),
                measure: false,
                calls_ahead: None,
            },
        }
    }

    /// A pool of `n` workers.
    pub fn new(n: usize) -> Result<ProcessPool, Error> {
        ProcessPool::builder().max_workers(n).build()
    }

    /// The pids of the live workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.shared
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flatten()
            .map(|s| s.pid)
            .collect()
    }

    /// Sends a job built from `input`; hands `input` back if the pool is
    /// closed or the job can't be built (encoding failed, too large).
    fn send<I>(
        &self,
        task: &'static str,
        input: I,
        build: impl FnOnce(&I) -> Result<Job, TaskError>,
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
        // A panicking Serialize impl is the caller's bug, but it must not
        // take the pool down with it.
        let job = match crate::panic::catch(task, || build(&input)) {
            Ok(Ok(job)) => job,
            Ok(Err(error)) | Err(error) => return Err(SubmitError { input, error }),
        };
        // The receiver lives in `shared`, so the send can't fail.
        let _ = self.shared.tx.send(job);
        drop(closed);
        // SeqCst: pairs with the fence in `Slot::dispatch` (see there).
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        for slot in &self.shared.slots {
            if self.shared.rx.is_empty() {
                break;
            }
            slot.offer(&self.shared);
        }
        Ok(())
    }

    /// Encodes a batch of `T` inputs, refusing one over the payload cap.
    fn encode<T: Task>(&self, inputs: &[T::Input]) -> Result<Vec<u8>, TaskError> {
        let payload = task::encode(T::NAME, T::CODEC, inputs)?;
        let limit = self.shared.config.max_payload;
        if payload.len() > limit {
            return Err(TaskError::TooLarge {
                task: T::NAME.to_string(),
                size: payload.len(),
                limit,
            });
        }
        Ok(payload)
    }

    /// Stops every worker at once: pending tasks are cancelled, running
    /// ones fail with [`TaskError::Terminated`], and the pool is closed
    /// (Python 3.14's `terminate_workers`). Sends SIGTERM.
    pub fn terminate_workers(&self) {
        self.stop_all(rustix::process::Signal::TERM);
    }

    /// As [`ProcessPool::terminate_workers`], with SIGKILL.
    pub fn kill_workers(&self) {
        self.stop_all(rustix::process::Signal::KILL);
    }

    fn stop_all(&self, signal: rustix::process::Signal) {
        self.shutdown(Shutdown {
            wait: false,
            cancel_futures: true,
        });
        let live: Vec<_> = self
            .shared
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flatten()
            .cloned()
            .collect();
        for switch in live {
            switch.kill(KillReason::Stopped, signal);
        }
        self.shutdown(Shutdown::default());
    }
}

impl Executor for ProcessPool {
    fn submit<T: Task>(
        &self,
        _task: T,
        input: T::Input,
    ) -> Result<TaskFuture<T::Output>, SubmitError<T::Input>> {
        let (fut, promise) = TaskFuture::pending(T::NAME);
        self.send(T::NAME, input, |input| {
            let payload = self.encode::<T>(std::slice::from_ref(input))?;
            let traced = self.shared.config.tracer.is_enabled();
            Ok(Job {
                task: T::NAME,
                signature: T::SIGNATURE,
                payload,
                deliver: deliver_one::<T>(promise),
                attempts: 0,
                submitted: traced.then(Instant::now),
                input: traced.then(|| crate::trace::preview(input)),
            })
        })?;
        Ok(fut)
    }

    fn submit_chunk<T: Task>(
        &self,
        _task: T,
        inputs: Vec<T::Input>,
    ) -> Result<ChunkFuture<T::Output>, SubmitError<Vec<T::Input>>> {
        let (fut, promise) = TaskFuture::pending(T::NAME);
        let n = inputs.len();
        self.send(T::NAME, inputs, |inputs| {
            let payload = self.encode::<T>(inputs)?;
            let traced = self.shared.config.tracer.is_enabled();
            let preview = || crate::trace::preview_batch(inputs);
            Ok(Job {
                task: T::NAME,
                signature: T::SIGNATURE,
                payload,
                deliver: deliver_chunk::<T>(promise, n),
                attempts: 0,
                submitted: traced.then(Instant::now),
                input: traced.then(preview),
            })
        })?;
        Ok(fut)
    }

    fn shutdown(&self, how: Shutdown) {
        let mut cancelled = Vec::new();
        let mut take_held = false;
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
                    take_held = true;
                }
                for slot in &self.shared.slots {
                    slot.ring();
                }
            }
        }
        // Outside the lock: a slot's lock is taken after it elsewhere (a
        // supervisor reads `closed` under its slot's lock).
        if take_held {
            cancelled.extend(self.shared.slots.iter().filter_map(|s| s.take_held()));
        }
        // Outside the lock: a done callback may call back into the pool.
        for job in cancelled {
            job.deliver.cancel();
        }
        if how.wait {
            let handles =
                std::mem::take(&mut *self.handles.lock().unwrap_or_else(|p| p.into_inner()));
            for h in handles {
                let _ = h.join();
            }
        }
    }

    fn max_workers(&self) -> usize {
        self.shared.config.workers
    }

    fn spec(&self) -> String {
        format!("processes:{}", self.shared.config.workers)
    }
}

impl RawExecutor for ProcessPool {
    fn submit_raw(
        &self,
        entry: TaskEntry,
        payload: Vec<u8>,
    ) -> Result<TaskFuture<Vec<u8>>, SubmitError<Vec<u8>>> {
        let (fut, promise) = TaskFuture::pending(entry.name);
        let limit = self.shared.config.max_payload;
        self.send(entry.name, payload, |payload| {
            if payload.len() > limit {
                return Err(TaskError::TooLarge {
                    task: entry.name.to_string(),
                    size: payload.len(),
                    limit,
                });
            }
            Ok(Job {
                task: entry.name,
                signature: entry.signature,
                payload: payload.clone(),
                deliver: deliver(promise, Ok),
                attempts: 0,
                submitted: self.shared.config.tracer.is_enabled().then(Instant::now),
                input: None,
            })
        })?;
        Ok(fut)
    }
}

impl Drop for ProcessPool {
    fn drop(&mut self) {
        // Dropped while its owner unwinds: cancel what has not started
        // rather than make the panic wait for the queue.
        self.shutdown(Shutdown {
            wait: true,
            cancel_futures: std::thread::panicking(),
        });
    }
}
