//! `Process`: one named task in a fresh process, as the seed's
//! `multiprocessing.Process(target=f, args=(...))` with `start`, `join` and
//! `terminate`.
//!
//! It reuses the pool's worker start-up and wire protocol: the child is
//! this program started again, it receives one call, replies, and exits
//! when the socket closes.

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, ExitCause, TaskError};
use crate::process::pool::Config;
use crate::process::supervisor::{await_hello, reap_group, signal_group, start_worker, Started};
use crate::process::wire::{Conn, FromWorker, ToWorker, WireError};
use crate::task::{self, Task};

/// A request to the spawner thread: the settings, and where to send the
/// started child.
type SpawnRequest = (Config, crossbeam_channel::Sender<Result<Started, Error>>);

/// Starts a `Process`'s child from one long-lived thread, not the caller's.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits,
/// not the process (see DESIGN's pitfalls): a `Process` spawned from a
/// short-lived thread would be SIGKILLed as that thread ended. The spawner
/// thread lives as long as the program, so "the parent died" means what it
/// says. Only the fork and exec happen there; the caller waits for the
/// child's hello itself, so slow starts don't queue behind each other.
fn start_on_spawner(config: &Config) -> Result<Started, Error> {
    static SPAWNER: std::sync::OnceLock<crossbeam_channel::Sender<SpawnRequest>> =
        std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<SpawnRequest>();
        let started = std::thread::Builder::new()
            .name("multitask-process-spawner".to_string())
            .spawn(move || {
                for (config, reply) in rx {
                    let _ = reply.send(start_worker(0, &config));
                }
            });
        // Without the thread every request below fails with a clear error.
        drop(started);
        tx
    });
    let (reply, started) = crossbeam_channel::bounded(1);
    spawner
        .send((config.clone(), reply))
        .map_err(|_| Error::Protocol("the process spawner thread is gone".to_string()))?;
    started
        .recv()
        .map_err(|_| Error::Protocol("the process spawner thread is gone".to_string()))?
}

/// One named task running in its own process.
///
/// ```no_run
/// use multitasking::Process;
///
/// #[multitasking::task]
/// fn delivery(parcel: String) -> String { format!("delivered {parcel}") }
///
/// multitasking::init();
/// let p = Process::spawn(delivery, "books".to_string()).unwrap();
/// println!("running in pid {}", p.pid());
/// assert_eq!(p.join().unwrap(), "delivered books");
/// ```
#[derive(Debug)]
pub struct Process<T: Task> {
    /// The child process; `None` once reaped.
    child: Option<Child>,
    /// The control socket; `None` once the reply was read.
    conn: Option<Conn>,
    /// The child's pid.
    pid: u32,
    /// Its exit status, once reaped.
    status: Option<ExitStatus>,
    /// The reply, once read.
    outcome: Option<Result<T::Output, TaskError>>,
    /// Set once `terminate` or `kill` signalled it: its death is then
    /// [`TaskError::Terminated`], not a crash.
    stopped: AtomicBool,
}

impl<T: Task> Process<T> {
    /// Starts `task(input)` in a new process.
    ///
    /// In a worker start that has not run `multitasking::init()`, exits at
    /// once, as [`crate::ProcessPoolBuilder::build`] does.
    pub fn spawn(_task: T, input: T::Input) -> Result<Process<T>, Error> {
        crate::process::worker::refuse_nested_start();
        let config = Config::single();
        let worker = await_hello(start_on_spawner(&config)?, 0, &config)?;
        let (child, mut conn, pid) = worker.into_parts();
        let payload = task::encode(T::NAME, T::CODEC, &vec![input])
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let call = ToWorker::Call {
            seq: 0,
            id: 1,
            task: T::NAME.into(),
            signature: T::SIGNATURE,
            payload,
            measure: crate::process::wire::MEASURE_NONE,
        };
        conn.send(&call)
            .map_err(|e| Error::Protocol(format!("sending the call to pid {pid}: {e}")))?;
        Ok(Process {
            child: Some(child),
            conn: Some(conn),
            pid,
            status: None,
            outcome: None,
            stopped: AtomicBool::new(false),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// True until the process has exited (and been reaped).
    pub fn is_alive(&mut self) -> bool {
        self.poll_exit();
        self.status.is_none()
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.poll_exit();
        self.status
    }

    fn poll_exit(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(s)) = child.try_wait() {
                self.status = Some(s);
                self.child = None;
            }
        }
    }

    /// Asks the process, and the processes its task started, to stop
    /// (SIGTERM to its process group).
    pub fn terminate(&self) -> bool {
        self.signal(rustix::process::Signal::TERM)
    }

    /// Kills the process and the processes its task started (SIGKILL to
    /// its process group).
    pub fn kill(&self) -> bool {
        self.signal(rustix::process::Signal::KILL)
    }

    fn signal(&self, sig: rustix::process::Signal) -> bool {
        // The whole group: what the task started goes with it.
        let sent = self.child.is_some() && signal_group(self.pid, sig);
        if sent {
            // Relaxed: read after the reply channel's EOF, which the kernel
            // orders after the signal; nothing else hangs on it.
            self.stopped.store(true, Ordering::Relaxed);
        }
        sent
    }

    /// Waits for the task's outcome and the process's exit.
    pub fn join(mut self) -> Result<T::Output, TaskError> {
        self.wait_until(None).unwrap_or_else(|| {
            Err(TaskError::WorkerDied {
                task: T::NAME.to_string(),
                pid: self.pid,
                cause: ExitCause::Unknown,
            })
        })
    }

    /// Waits at most `timeout`: `None` if the task has not finished.
    pub fn join_timeout(&mut self, timeout: Duration) -> Option<Result<T::Output, TaskError>> {
        self.wait_until(Some(Instant::now() + timeout))
    }

    fn wait_until(&mut self, deadline: Option<Instant>) -> Option<Result<T::Output, TaskError>> {
        if self.outcome.is_none() {
            let conn = self.conn.as_mut()?;
            match conn.recv::<FromWorker>(deadline) {
                Ok(FromWorker::Reply { outcome, .. }) => {
                    let value = outcome.and_then(|bytes| {
                        let chunk: crate::chunk::Chunk<T::Output> =
                            task::decode(T::NAME, T::CODEC, &bytes)?;
                        chunk.into_iter().next().unwrap_or_else(|| {
                            Err(TaskError::Codec {
                                task: T::NAME.to_string(),
                                message: "empty reply".to_string(),
                            })
                        })
                    });
                    self.outcome = Some(value);
                }
                Err(WireError::Timeout) => return None,
                Ok(_) | Err(WireError::Eof) | Err(WireError::Io(_)) => {
                    // The process died (or broke the protocol) before it
                    // replied: its exit status says how.
                    self.conn = None;
                    let status = self.reap(deadline)?;
                    let cause = match (status.signal(), status.code()) {
                        (Some(s), _) => ExitCause::Signal(s),
                        (None, Some(c)) => ExitCause::Code(c),
                        _ => ExitCause::Unknown,
                    };
                    if self.stopped.load(Ordering::Relaxed) && cause != ExitCause::Code(0) {
                        return Some(Err(TaskError::Terminated {
                            task: T::NAME.to_string(),
                            pid: self.pid,
                        }));
                    }
                    return Some(Err(TaskError::WorkerDied {
                        task: T::NAME.to_string(),
                        pid: self.pid,
                        cause,
                    }));
                }
                Err(e) => {
                    // It broke the protocol (a malformed or stalled frame):
                    // it can't be trusted to exit on its own.
                    self.conn = None;
                    let _ = self.signal(rustix::process::Signal::KILL);
                    self.reap(deadline)?;
                    return Some(Err(TaskError::Codec {
                        task: T::NAME.to_string(),
                        message: format!("process pid {}: {e}", self.pid),
                    }));
                }
            }
        }
        // Closing the socket ends the worker's loop.
        self.conn = None;
        self.reap(deadline)?;
        self.outcome.take()
    }

    fn reap(&mut self, deadline: Option<Instant>) -> Option<ExitStatus> {
        loop {
            self.poll_exit();
            if let Some(s) = self.status {
                return Some(s);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl<T: Task> Drop for Process<T> {
    fn drop(&mut self) {
        // Never leave a zombie or an orphan behind.
        self.conn = None;
        if let Some(mut child) = self.child.take() {
            reap_group(
                &mut child,
                Instant::now() + Duration::from_millis(500),
                Duration::from_millis(1),
            );
        }
    }
}
