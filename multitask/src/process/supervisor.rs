//! The supervisor thread of a process pool's worker slot, and the life of
//! a worker process: start and hello, one call at a time, timeout and
//! memory watch, kill, reap, replace. See `process/mod.rs` for the picture.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::error::{Error, ExitCause, TaskError};
use crate::future::Terminate;
use crate::process::pool::{Config, Job, Msg, PoolShared};
use crate::process::sys;
use crate::process::wire::{self, Conn, FromWorker, ToWorker, WireError};
use crate::process::worker::{ENV_CAP, ENV_INIT, ENV_NAME, ENV_WORKER};
use crate::process::DEFAULT_MAX_PAYLOAD;
use crate::trace::Tracer;

/// How often a busy worker's memory is checked against its limit.
const MEMORY_POLL: Duration = Duration::from_millis(20);
/// How long a retiring worker gets to exit after its socket closes.
const RETIRE_GRACE: Duration = Duration::from_secs(2);

/// Why a worker was killed on purpose.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KillReason {
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
pub(crate) struct KillSwitch {
    /// The worker's pid.
    pub(crate) pid: u32,
    /// Why it was killed, if it was.
    reason: Mutex<Option<KillReason>>,
}

impl KillSwitch {
    pub(crate) fn kill(&self, reason: KillReason, signal: rustix::process::Signal) -> bool {
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
pub(crate) fn supervise(index: usize, shared: &PoolShared, ready: Sender<Result<(), Error>>) {
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
