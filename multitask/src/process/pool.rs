//! `ProcessPool`: the executor whose workers are processes.
//!
//! See the module docs (`process/mod.rs`) for the actors and the data flow.

use std::fmt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::error::{Error, ExitCause, SubmitError, TaskError};
use crate::executor::{ChunkFuture, Executor, RawExecutor, Shutdown};
use crate::future::{TaskFuture, Terminate};
use crate::process::sys;
use crate::process::wire::{self, Conn, FromWorker, ToWorker, WireError};
use crate::process::worker::{ENV_CAP, ENV_INIT, ENV_NAME, ENV_WORKER};
use crate::process::DEFAULT_MAX_PAYLOAD;
use crate::remote::{deliver, deliver_chunk, deliver_one, Deliver};
use crate::task::{self, Task, TaskEntry};
use crate::trace::Tracer;

/// How often a busy worker's memory is checked against its limit.
const MEMORY_POLL: Duration = Duration::from_millis(20);
/// How long a retiring worker gets to exit after its socket closes.
const RETIRE_GRACE: Duration = Duration::from_secs(2);

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

    /// How long a new worker has to start and say hello. Default: 10 s.
    pub fn start_timeout(mut self, d: Duration) -> Self {
        self.config.start_timeout = d;
        self
    }

    /// Starts the workers and waits until each has said hello.
    ///
    /// Fails if a worker can't be started, does not say hello in time (the
    /// program does not call `multitask::init()` first thing in `main`), or
    /// its initializer fails.
    pub fn build(self) -> Result<ProcessPool, Error> {
        let config = self.config;
        if config.workers == 0 {
            return Err(Error::Config("max_workers must be at least 1".to_string()));
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(PoolShared {
            closed: RwLock::new(false),
            tx,
            rx,
            live: Mutex::new(vec![None; config.workers]),
            next_id: AtomicU64::new(1),
            config: config.clone(),
        });
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(config.workers);
        let mut handles = Vec::with_capacity(config.workers);
        for index in 0..config.workers {
            let shared = shared.clone();
            let ready = ready_tx.clone();
            let h = std::thread::Builder::new()
                .name(format!("{}-{index}-supervisor", config.name))
                .spawn(move || supervise(index, &shared, ready))
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
struct PoolShared {
    /// True once shut down; submits send under the read lock.
    closed: RwLock<bool>,
    /// Jobs in.
    tx: Sender<Msg>,
    /// Jobs out.
    rx: Receiver<Msg>,
    /// The kill switch of each slot's live worker.
    live: Mutex<Vec<Option<Arc<KillSwitch>>>>,
    /// Next call id.
    next_id: AtomicU64,
    /// The settings.
    config: Config,
}

/// What travels on the pool's channel.
enum Msg {
    /// A call to run.
    Run(Job),
    /// One supervisor is to retire its worker and exit.
    Stop,
}

/// One call waiting for a worker.
struct Job {
    /// The task's name.
    task: &'static str,
    /// Its signature hash.
    signature: u64,
    /// The encoded batch.
    payload: Vec<u8>,
    /// Resolves the caller's future.
    deliver: Box<dyn Deliver>,
    /// Runs so far (retries after a worker died).
    attempts: u32,
    /// When it was submitted, when tracing.
    submitted: Option<Instant>,
}

/// Why a worker was killed on purpose.
#[derive(Debug, Clone, Copy)]
enum KillReason {
    /// `TaskFuture::terminate`, or a whole-pool stop.
    Terminated,
    /// The task ran past the timeout.
    Timeout(Duration),
    /// The worker went above its memory limit.
    Memory {
        /// The limit in bytes.
        limit: u64,
        /// The RSS seen, in bytes.
        peak: u64,
    },
}

/// Kills one worker process and remembers why.
#[derive(Debug)]
struct KillSwitch {
    /// The worker's pid.
    pid: u32,
    /// Why it was killed, if it was.
    reason: Mutex<Option<KillReason>>,
}

impl KillSwitch {
    fn kill(&self, reason: KillReason, signal: rustix::process::Signal) -> bool {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(reason);
        match rustix::process::Pid::from_raw(self.pid as i32) {
            Some(pid) => rustix::process::kill_process(pid, signal).is_ok(),
            None => false,
        }
    }

    fn reason(&self) -> Option<KillReason> {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Terminate for KillSwitch {
    fn terminate(&self) -> bool {
        self.kill(KillReason::Terminated, rustix::process::Signal::KILL)
    }
}

/// A live worker process, owned by its supervisor.
pub(crate) struct Worker {
    /// The process.
    child: Child,
    /// The control socket.
    conn: Conn,
    /// Kills it on demand.
    switch: Arc<KillSwitch>,
    /// Tasks it ran.
    tasks: u64,
    /// Its peak RSS as last read, and when: `/proc` is read at most every
    /// `RSS_EVERY` for traces.
    rss: Option<(Instant, u64)>,
}

/// How often a traced worker's peak RSS is read.
const RSS_EVERY: Duration = Duration::from_millis(10);

impl Worker {
    /// The worker's peak RSS, read again if the last reading is stale.
    fn peak_rss(&mut self) -> Option<u64> {
        let stale = self.rss.is_none_or(|(at, _)| at.elapsed() >= RSS_EVERY);
        if stale {
            if let Some((_, peak)) = crate::info::rss_of(self.switch.pid) {
                self.rss = Some((Instant::now(), peak));
            }
        }
        self.rss.map(|(_, peak)| peak)
    }
}

impl Config {
    /// The settings of a lone [`crate::Process`].
    pub(crate) fn single() -> Config {
        Config {
            workers: 1,
            name: "multitask-process".to_string(),
            initializer: None,
            max_tasks_per_child: None,
            task_timeout: None,
            memory_limit: None,
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_retries: 0,
            start_timeout: Duration::from_secs(10),
            tracer: Tracer::disabled(),
        }
    }
}

impl Worker {
    /// The process, its socket and its pid.
    pub(crate) fn into_parts(self) -> (Child, Conn, u32) {
        (self.child, self.conn, self.switch.pid)
    }
}

/// Starts worker `index` and waits for its hello.
pub(crate) fn spawn_worker(index: usize, config: &Config) -> Result<Worker, Error> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| Error::io("creating a worker socket", e))?;
    let theirs = std::os::fd::OwnedFd::from(theirs);
    let exe = std::env::current_exe().map_err(|e| Error::io("finding this program", e))?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(exe.as_os_str())
        .env(ENV_WORKER, wire::VERSION.to_string())
        .env(ENV_NAME, format!("{}-{index}", config.name))
        .env(ENV_CAP, config.max_payload.to_string())
        .stdin(Stdio::null());
    if let Some((name, sig)) = config.initializer {
        cmd.env(ENV_INIT, format!("{name}\t{sig}"));
    }
    sys::configure_child(&mut cmd, &theirs);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io("starting a worker process", e))?;
    drop(theirs);
    let mut conn = Conn::new(ours, config.max_payload)
        .map_err(|e| Error::io("setting up a worker socket", e))?;
    let deadline = Instant::now() + config.start_timeout;
    let failed = |child: &mut Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        Err(Error::Protocol(why))
    };
    match conn.recv::<FromWorker>(Some(deadline)) {
        Ok(FromWorker::Hello { pid }) => Ok(Worker {
            child,
            conn,
            switch: Arc::new(KillSwitch {
                pid,
                reason: Mutex::new(None),
            }),
            tasks: 0,
            rss: None,
        }),
        Ok(FromWorker::InitFailed { error }) => {
            failed(&mut child, format!("the worker initializer failed: {error}"))
        }
        Ok(other) => failed(&mut child, format!("a new worker sent {other:?} before hello")),
        Err(WireError::Timeout) => failed(
            &mut child,
            format!(
                "worker {}-{index} did not start within {:?}: call multitask::init() first thing in main \
                 (or multitask::enable_test_support!() in tests and benches)",
                config.name, config.start_timeout
            ),
        ),
        Err(WireError::Eof) => {
            let status = child.wait().ok();
            Err(Error::Protocol(format!(
                "worker {}-{index} exited before it started ({}); does main call multitask::init() first?",
                config.name,
                status.map_or("unknown status".to_string(), |s| s.to_string())
            )))
        }
        Err(e) => failed(&mut child, format!("worker {}-{index}: {e}", config.name)),
    }
}

/// Closes a worker's socket, lets it exit, and reaps it; kills it if it
/// does not exit within the grace period.
fn retire(mut w: Worker) {
    drop(w.conn);
    let deadline = Instant::now() + RETIRE_GRACE;
    loop {
        match w.child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() >= deadline => {
                let _ = w.child.kill();
                let _ = w.child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Reaps a worker that died or was killed; how it ended.
fn reap(mut w: Worker) -> (u32, ExitCause, Option<KillReason>) {
    let pid = w.switch.pid;
    let reason = w.switch.reason();
    drop(w.conn);
    let deadline = Instant::now() + RETIRE_GRACE;
    let status = loop {
        match w.child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Err(_) => break None,
            Ok(None) if Instant::now() >= deadline => {
                let _ = w.child.kill();
                break w.child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_micros(200)),
        }
    };
    let cause = match status {
        Some(s) => match (s.signal(), s.code()) {
            (Some(sig), _) => ExitCause::Signal(sig),
            (None, Some(code)) => ExitCause::Code(code),
            _ => ExitCause::Unknown,
        },
        None => ExitCause::Unknown,
    };
    (pid, cause, reason)
}

/// The error for a task whose worker ended.
fn death_error(task: &str, pid: u32, cause: ExitCause, reason: Option<KillReason>) -> TaskError {
    let task = task.to_string();
    match reason {
        Some(KillReason::Terminated) => TaskError::Terminated { task, pid },
        Some(KillReason::Timeout(after)) => TaskError::TimedOut {
            task,
            after,
            pid: Some(pid),
        },
        Some(KillReason::Memory { limit, peak }) => TaskError::MemoryExceeded {
            task,
            pid,
            limit,
            peak,
        },
        None => TaskError::WorkerDied { task, pid, cause },
    }
}

/// Takes the next message, spinning briefly before it parks.
fn next_msg(rx: &Receiver<Msg>) -> Option<Msg> {
    let spin_until = Instant::now() + wire::SPIN;
    loop {
        match rx.try_recv() {
            Ok(m) => return Some(m),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if Instant::now() < spin_until => std::thread::yield_now(),
            Err(TryRecvError::Empty) => return rx.recv().ok(),
        }
    }
}

/// A supervisor: owns worker slot `index` for the pool's life. It starts
/// the worker, feeds it one job at a time, watches its timeout and memory,
/// and replaces it when it dies. Workers are spawned from this long-lived
/// thread because PR_SET_PDEATHSIG fires when the spawning thread exits.
fn supervise(index: usize, shared: &PoolShared, ready: Sender<Result<(), Error>>) {
    let config = &shared.config;
    let set_live = |w: Option<&Worker>| {
        shared.live.lock().unwrap_or_else(|p| p.into_inner())[index] = w.map(|w| w.switch.clone());
    };
    let mut worker = match spawn_worker(index, config) {
        Ok(w) => {
            set_live(Some(&w));
            let _ = ready.send(Ok(()));
            Some(w)
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            None
        }
    };
    drop(ready);
    while let Some(msg) = next_msg(&shared.rx) {
        let job = match msg {
            Msg::Run(job) => job,
            Msg::Stop => break,
        };
        if worker.is_none() {
            match spawn_worker(index, config) {
                Ok(w) => worker = Some(w),
                Err(e) => {
                    let reason = e.to_string();
                    job.deliver.finish(Err(TaskError::Broken {
                        task: job.task.to_string(),
                        reason,
                    }));
                    // Don't spin on a machine that can't start processes.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
        }
        let w = worker.take().expect("a worker was just started");
        set_live(Some(&w));
        worker = run_job(w, job, shared);
        // A worker that died or retired is replaced at once, so the next
        // task does not wait for a start (unless the pool is closing).
        if worker.is_none() && !*shared.closed.read().unwrap_or_else(|p| p.into_inner()) {
            worker = spawn_worker(index, config).ok();
        }
        set_live(worker.as_ref());
    }
    set_live(None);
    if let Some(w) = worker {
        retire(w);
    }
}

/// Runs one job on worker `w`; the worker, if it is still alive.
fn run_job(mut w: Worker, mut job: Job, shared: &PoolShared) -> Option<Worker> {
    let config = &shared.config;
    if !job.deliver.start(Some(w.switch.clone())) {
        return Some(w);
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let call = ToWorker::Call {
        id,
        task: job.task.to_string(),
        signature: job.signature,
        payload: std::mem::take(&mut job.payload),
    };
    let sent = w.conn.send(&call);
    let ToWorker::Call { payload, .. } = call;
    job.payload = payload;
    match sent {
        Ok(()) => {}
        Err(WireError::TooLarge { size, cap }) => {
            job.deliver.finish(Err(TaskError::TooLarge {
                task: job.task.to_string(),
                size,
                limit: cap,
            }));
            return Some(w);
        }
        Err(_) => return died(w, job, shared),
    }
    let started = Instant::now();
    let timeout_at = config.task_timeout.map(|t| started + t);
    let pid = w.switch.pid;
    let trace = |job: &Job, ok: bool, w: &mut Worker| {
        if let Some(submitted) = job.submitted {
            let finished = Instant::now();
            config.tracer.record_span(
                job.task,
                format!("pid {pid}"),
                pid,
                (submitted, started, finished),
                ok,
                w.peak_rss(),
            );
        }
    };
    loop {
        let wake = match (timeout_at, config.memory_limit) {
            (t, Some(_)) => {
                let poll = Instant::now() + MEMORY_POLL;
                Some(t.map_or(poll, |t| t.min(poll)))
            }
            (t, None) => t,
        };
        match w.conn.recv::<FromWorker>(wake) {
            Ok(FromWorker::Reply { id: got, outcome }) if got == id => {
                trace(&job, outcome.is_ok(), &mut w);
                job.deliver.finish(outcome);
                w.tasks += 1;
                if config.max_tasks_per_child.is_some_and(|max| w.tasks >= max) {
                    retire(w);
                    return None;
                }
                return Some(w);
            }
            Ok(other) => {
                let message = format!(
                    "worker pid {} broke the protocol: sent {other:?}",
                    w.switch.pid
                );
                w.switch
                    .kill(KillReason::Terminated, rustix::process::Signal::KILL);
                let _ = reap(w);
                job.deliver.finish(Err(TaskError::Codec {
                    task: job.task.to_string(),
                    message,
                }));
                return None;
            }
            Err(WireError::Timeout) => {
                if timeout_at.is_some_and(|t| Instant::now() >= t) {
                    let after = config.task_timeout.unwrap_or_default();
                    w.switch
                        .kill(KillReason::Timeout(after), rustix::process::Signal::KILL);
                    trace(&job, false, &mut w);
                    return died(w, job, shared);
                }
                if let Some(limit) = config.memory_limit {
                    if let Some((rss, _)) = crate::info::rss_of(w.switch.pid) {
                        if rss > limit {
                            w.switch.kill(
                                KillReason::Memory { limit, peak: rss },
                                rustix::process::Signal::KILL,
                            );
                            trace(&job, false, &mut w);
                            return died(w, job, shared);
                        }
                    }
                }
            }
            Err(WireError::Eof) | Err(WireError::Io(_)) => {
                trace(&job, false, &mut w);
                return died(w, job, shared);
            }
            Err(e) => {
                let message = format!("worker pid {}: {e}", w.switch.pid);
                w.switch
                    .kill(KillReason::Terminated, rustix::process::Signal::KILL);
                let _ = reap(w);
                job.deliver.finish(Err(TaskError::Codec {
                    task: job.task.to_string(),
                    message,
                }));
                return None;
            }
        }
    }
}

/// The worker under `job` is gone: reap it, then fail or retry the job.
fn died(w: Worker, mut job: Job, shared: &PoolShared) -> Option<Worker> {
    let (pid, cause, reason) = reap(w);
    if reason.is_none() && job.attempts < shared.config.max_retries {
        job.attempts += 1;
        // The receiver lives in `shared`, so the send can't fail.
        let _ = shared.tx.send(Msg::Run(job));
        return None;
    }
    job.deliver
        .finish(Err(death_error(job.task, pid, cause, reason)));
    None
}

/// A pool of worker processes: crash isolation, kill-able timeouts and
/// memory limits, behind the same [`Executor`] API as the thread pool.
///
/// Workers are this program started again; `main` must call
/// [`crate::init`] first (or use `#[multitask::main]`). Dropping the pool
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
        let _ = self.shared.tx.send(Msg::Run(job));
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
            switch.kill(KillReason::Terminated, signal);
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
            Ok(Job {
                task: T::NAME,
                signature: T::SIGNATURE,
                payload,
                deliver: deliver_one::<T>(promise),
                attempts: 0,
                submitted: self.shared.config.tracer.is_enabled().then(Instant::now),
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
            Ok(Job {
                task: T::NAME,
                signature: T::SIGNATURE,
                payload,
                deliver: deliver_chunk::<T>(promise, n),
                attempts: 0,
                submitted: self.shared.config.tracer.is_enabled().then(Instant::now),
            })
        })?;
        Ok(fut)
    }

    fn shutdown(&self, how: Shutdown) {
        {
            let mut closed = self
                .shared
                .closed
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if !*closed {
                *closed = true;
                if how.cancel_futures {
                    while let Ok(msg) = self.shared.rx.try_recv() {
                        if let Msg::Run(job) = msg {
                            job.deliver.cancel();
                        }
                    }
                }
                for _ in 0..self.shared.config.workers {
                    let _ = self.shared.tx.send(Msg::Stop);
                }
            }
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
            })
        })?;
        Ok(fut)
    }
}

impl Drop for ProcessPool {
    fn drop(&mut self) {
        self.shutdown(Shutdown::default());
    }
}
