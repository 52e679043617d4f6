//! Failure as a value: the task error, the library error and the rejected submit.
//!
//! A task's failure is a [`TaskError`] the caller can match on, in the shape of
//! tokio's `JoinError`: every variant names the task, and where a worker was
//! involved, the worker. It is `Serialize` because it crosses process and
//! machine boundaries: a panic in a worker process comes back as data.
//!
//! Errors that are not about one task (a bad spec string, a broker that can't
//! be reached, a worker that can't be started) are an [`Error`].

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitCause {
    /// Killed by this signal number.
    Signal(i32),
    /// Exited with this status code.
    Code(i32),
    /// The process could not be waited for (already reaped elsewhere).
    Unknown,
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitCause::Signal(sig) => match signal_name(sig) {
                Some(name) => write!(f, "killed by signal {sig} ({name})"),
                None => write!(f, "killed by signal {sig}"),
            },
            ExitCause::Code(code) => write!(f, "exited with code {code}"),
            ExitCause::Unknown => f.write_str("ended for an unknown reason"),
        }
    }
}

fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => return None,
    })
}

/// Why one task did not produce its value.
///
/// Every variant carries `task`, the task's name (a named task's registered
/// name, or the closure's type name on a thread pool).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task panicked; the pool went on.
    #[error("task {task} panicked: {message}{}", at(location))]
    Panicked {
        /// The task's name.
        task: String,
        /// The panic payload, when it was a string.
        message: String,
        /// `file:line:column` of the panic, when a hook captured it.
        location: Option<String>,
        /// A captured backtrace, when `RUST_BACKTRACE` asked for one.
        backtrace: Option<String>,
    },
    /// The task was cancelled before it started.
    #[error("task {task} was cancelled before it started")]
    Cancelled {
        /// The task's name.
        task: String,
    },
    /// The task ran past its timeout; its worker was killed (processes,
    /// cluster), or the whole `map` was given up (every executor).
    #[error("task {task} timed out after {after:?}{}", killed(pid))]
    TimedOut {
        /// The task's name.
        task: String,
        /// The timeout that expired.
        after: Duration,
        /// The worker process that was killed, if one was.
        pid: Option<u32>,
    },
    /// The task was stopped on demand by `TaskFuture::terminate`.
    #[error("task {task} was terminated: its worker (pid {pid}) was killed on request")]
    Terminated {
        /// The task's name.
        task: String,
        /// The worker process that was killed.
        pid: u32,
    },
    /// The worker process running the task died.
    #[error("task {task} lost its worker (pid {pid}), which {}", ended(cause))]
    WorkerDied {
        /// The task's name.
        task: String,
        /// The worker's process id.
        pid: u32,
        /// How the worker ended.
        cause: ExitCause,
    },
    /// The worker running the task went above its memory limit and was killed.
    #[error(
        "task {task} exceeded the memory limit: worker pid {pid} reached {peak} bytes of RSS, limit {limit}"
    )]
    MemoryExceeded {
        /// The task's name.
        task: String,
        /// The worker's process id.
        pid: u32,
        /// The configured limit in bytes.
        limit: u64,
        /// The resident set size seen when the worker was killed, in bytes.
        peak: u64,
    },
    /// The executor shut down before the task could finish.
    #[error("task {task} was not run: the executor is shut down")]
    Shutdown {
        /// The task's name.
        task: String,
    },
    /// The executor is broken (its initializer failed) and runs nothing.
    #[error("task {task} was not run: the executor is broken: {reason}")]
    Broken {
        /// The task's name.
        task: String,
        /// What broke the executor.
        reason: String,
    },
    /// No task of this name is compiled into the worker.
    #[error("task {task} is not registered in worker {worker}: workers run only tasks compiled into them")]
    UnknownTask {
        /// The task's name.
        task: String,
        /// The worker that refused it.
        worker: String,
    },
    /// The worker has a task of this name with a different signature: the two
    /// sides were built from different code.
    #[error(
        "task {task} has signature {found:#018x} in the worker but {expected:#018x} here: rebuild both sides from the same code"
    )]
    SignatureMismatch {
        /// The task's name.
        task: String,
        /// The caller's signature hash.
        expected: u64,
        /// The worker's signature hash.
        found: u64,
    },
    /// The input or output could not be encoded or decoded.
    #[error("task {task}: codec error: {message}")]
    Codec {
        /// The task's name.
        task: String,
        /// What the codec said.
        message: String,
    },
    /// A payload is bigger than the configured cap.
    #[error("task {task}: payload of {size} bytes is over the {limit}-byte cap")]
    TooLarge {
        /// The task's name.
        task: String,
        /// The payload size in bytes.
        size: usize,
        /// The cap in bytes.
        limit: usize,
    },
    /// The broker (Redis) failed while the task was in its hands.
    #[error("task {task}: broker error: {message}")]
    Broker {
        /// The task's name.
        task: String,
        /// What went wrong.
        message: String,
    },
    /// The outcome was already taken out of the future by an earlier call.
    #[error("task {task}: the result was already taken from this future")]
    ResultTaken {
        /// The task's name.
        task: String,
    },
    /// The broker no longer has the task: it is in no stream, no worker
    /// holds it and no result came (a Redis restarted without persistence
    /// lost it, or it was dead-lettered without a reply). It may have run.
    #[error("task {task} was lost by the broker: {reason}")]
    Lost {
        /// The task's name.
        task: String,
        /// What the client found.
        reason: String,
    },
    /// The cluster worker that took the task does not serve it: its
    /// allow-list does not name it, or it is marked dangerous and the
    /// worker was not told to run dangerous tasks. The task did not run.
    #[error(
        "task {task} is not allowed on worker {worker}: start a worker that serves it \
         (multitask worker --tasks NAME,..., or Worker::builder().allow([...])); a task marked \
         dangerous, such as run_shell, also needs --allow-shell (WorkerBuilder::allow_dangerous)"
    )]
    NotAllowed {
        /// The task's name.
        task: String,
        /// The worker that refused it.
        worker: String,
    },
    /// A signed queue refused the task or its result: an entry without a
    /// valid signature under the queue's key (unsigned, forged, altered or
    /// replayed), or past its expiry. What it carried was not trusted.
    #[error("task {task} was rejected: {reason}")]
    Rejected {
        /// The task's name.
        task: String,
        /// What failed its check, and where.
        reason: String,
    },
}

fn at(location: &Option<String>) -> String {
    location
        .as_ref()
        .map(|l| format!(" (at {l})"))
        .unwrap_or_default()
}

/// How a worker ended, as the end of "its worker, which ...".
fn ended(cause: &ExitCause) -> String {
    match cause {
        ExitCause::Signal(_) => format!("was {cause}"),
        ExitCause::Code(_) | ExitCause::Unknown => cause.to_string(),
    }
}

fn killed(pid: &Option<u32>) -> String {
    pid.map(|p| format!("; its worker (pid {p}) was killed"))
        .unwrap_or_default()
}

impl TaskError {
    /// The name of the task this error is about.
    pub fn task(&self) -> &str {
        match self {
            TaskError::Panicked { task, .. }
            | TaskError::Cancelled { task }
            | TaskError::TimedOut { task, .. }
            | TaskError::Terminated { task, .. }
            | TaskError::WorkerDied { task, .. }
            | TaskError::MemoryExceeded { task, .. }
            | TaskError::Shutdown { task }
            | TaskError::Broken { task, .. }
            | TaskError::UnknownTask { task, .. }
            | TaskError::SignatureMismatch { task, .. }
            | TaskError::Codec { task, .. }
            | TaskError::TooLarge { task, .. }
            | TaskError::Broker { task, .. }
            | TaskError::ResultTaken { task }
            | TaskError::Lost { task, .. }
            | TaskError::NotAllowed { task, .. }
            | TaskError::Rejected { task, .. } => task,
        }
    }

    /// True for [`TaskError::Cancelled`].
    pub fn is_cancelled(&self) -> bool {
        matches!(self, TaskError::Cancelled { .. })
    }

    /// True for [`TaskError::Panicked`].
    pub fn is_panic(&self) -> bool {
        matches!(self, TaskError::Panicked { .. })
    }

    /// A short stable name of the variant, for logs and JSON (`"panicked"`).
    pub fn kind(&self) -> &'static str {
        match self {
            TaskError::Panicked { .. } => "panicked",
            TaskError::Cancelled { .. } => "cancelled",
            TaskError::TimedOut { .. } => "timed_out",
            TaskError::Terminated { .. } => "terminated",
            TaskError::WorkerDied { .. } => "worker_died",
            TaskError::MemoryExceeded { .. } => "memory_exceeded",
            TaskError::Shutdown { .. } => "shutdown",
            TaskError::Broken { .. } => "broken",
            TaskError::UnknownTask { .. } => "unknown_task",
            TaskError::SignatureMismatch { .. } => "signature_mismatch",
            TaskError::Codec { .. } => "codec",
            TaskError::TooLarge { .. } => "too_large",
            TaskError::Broker { .. } => "broker",
            TaskError::ResultTaken { .. } => "result_taken",
            TaskError::Lost { .. } => "lost",
            TaskError::NotAllowed { .. } => "not_allowed",
            TaskError::Rejected { .. } => "rejected",
        }
    }

    /// Builds a [`TaskError::Panicked`] from a `catch_unwind` payload.
    pub fn from_panic(task: &str, payload: &(dyn std::any::Any + Send)) -> TaskError {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "non-string panic payload".to_string()
        };
        let (location, backtrace) = crate::panic::take_last();
        TaskError::Panicked {
            task: task.to_string(),
            message,
            location,
            backtrace,
        }
    }
}

/// An error that is not about one task: configuration, spec strings, brokers,
/// starting workers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An executor spec string could not be parsed.
    #[error("bad executor spec {spec:?}: {reason}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it and what is expected.
        reason: String,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The executor kind is not available in this build.
    #[error("{0} is not available in this build")]
    Unavailable(String),
    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The broker refused or failed.
    #[error("broker error: {0}")]
    Broker(String),
    /// A worker or peer spoke the protocol wrongly.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// A submit the executor refused; it hands the input back, as crossbeam's
/// `SendError<T>` does.
pub struct SubmitError<I> {
    /// The input that was not submitted.
    pub input: I,
    /// Why it was refused.
    pub error: TaskError,
}

impl<I> SubmitError<I> {
    /// The input, given back.
    pub fn into_input(self) -> I {
        self.input
    }
}

impl<I> fmt::Debug for SubmitError<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubmitError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<I> fmt::Display for SubmitError<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "submit refused: {}", self.error)
    }
}

impl<I> std::error::Error for SubmitError<I> {}

/// A wait that ran out of time; it hands back what was not yet done.
pub struct WaitTimeout<F> {
    /// The futures that were still not done.
    pub pending: Vec<F>,
}

impl<F> fmt::Debug for WaitTimeout<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitTimeout")
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl<F> fmt::Display for WaitTimeout<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out waiting: {} futures not done",
            self.pending.len()
        )
    }
}

impl<F> std::error::Error for WaitTimeout<F> {}
