//! The worker side: what a start of the program as a worker process runs.
//!
//! [`crate::init`] checks the environment the pool set; in a normal start
//! it returns at once. In a worker it adopts the control socket, runs the
//! pool's initializer, says hello, then serves calls until the socket
//! closes: read a call, find the task by name and signature, run the batch
//! under `catch_unwind`, write the reply. A panic costs the item, not the
//! worker; a crash costs the worker, and the pool sees it on the socket.

use crate::error::TaskError;
use crate::process::board::Board;
use crate::process::sys;
use crate::process::wire::{
    Conn, FromWorker, ToWorker, Usage, WireError, MEASURE_ALL, MEASURE_NONE,
};
use crate::task;

/// Set (to the protocol version) in a worker's environment by its pool.
pub(crate) const ENV_WORKER: &str = "MULTITASK_WORKER";
/// The worker's name, for errors.
pub(crate) const ENV_NAME: &str = "MULTITASK_WORKER_NAME";
/// The frame-size cap in bytes.
pub(crate) const ENV_CAP: &str = "MULTITASK_WORKER_CAP";
/// The initializer task: `name` TAB `signature`.
pub(crate) const ENV_INIT: &str = "MULTITASK_WORKER_INIT";
/// Set when the pool gave the worker a call board (on `sys::BOARD_FD`).
pub(crate) const ENV_BOARD: &str = "MULTITASK_WORKER_BOARD";

/// The exit code of a worker start that reached a pool's build (or a
/// `Process::spawn`) before `init()`: the pool that started it reports
/// "call multitasking::init() first thing in main".
pub(crate) const EXIT_NO_INIT: i32 = 73;

/// Exits at once, with [`EXIT_NO_INIT`] and a line on stderr, if this
/// process was started as a worker and `init()` has not run: it is about to
/// start workers of its own.
///
/// A worker re-runs `main`; without `init()` first, that `main` builds a
/// pool again, whose workers re-run `main` in turn: thousands of processes
/// in seconds before any start times out. Refusing here bounds the damage
/// to one process per slot, and the distinctive code lets the pool tell
/// this mistake from a crash.
pub(crate) fn refuse_nested_start() {
    // `serve` takes the variable out of the environment, so a task that
    // builds a pool of its own is not refused.
    if std::env::var_os(ENV_WORKER).is_some() {
        eprintln!(
            "multitasking: this process was started as a pool's worker, but its main started \
             workers of its own before calling multitasking::init(); exiting. \
             Call multitasking::init() first thing in main."
        );
        std::process::exit(EXIT_NO_INIT);
    }
}

/// Runs a worker if this process was started as one, and exits; returns at
/// once otherwise.
pub(crate) fn maybe_run() {
    let Some(version) = std::env::var_os(ENV_WORKER) else {
        return;
    };
    if version.to_str() != Some(&crate::process::wire::VERSION.to_string()) {
        eprintln!(
            "multitask: worker protocol version {version:?} does not match this build's {}",
            crate::process::wire::VERSION
        );
        std::process::exit(70);
    }
    // Sampled when a profiler asked; its last stacks are written on drop.
    #[cfg(feature = "profile")]
    let profile = crate::profile::in_worker();
    let code = serve();
    #[cfg(feature = "profile")]
    drop(profile);
    std::process::exit(code);
}

fn take_env(key: &str) -> Option<String> {
    let v = std::env::var(key).ok();
    // The task's own child processes must not think they are workers.
    std::env::remove_var(key);
    v
}

/// Serves calls until the pool closes the socket; the exit code.
fn serve() -> i32 {
    take_env(ENV_WORKER);
    // A worker sent SIGSEGV or SIGBUS must die of it, not swallow it.
    sys::default_fault_signals();
    let name = take_env(ENV_NAME).unwrap_or_else(|| "worker".to_string());
    let cap = take_env(ENV_CAP)
        .and_then(|c| c.parse().ok())
        .unwrap_or(crate::process::DEFAULT_MAX_PAYLOAD);
    let init = take_env(ENV_INIT);
    let pid = std::process::id();
    let me = format!("{name} (pid {pid})");
    let mut conn = match Conn::new(sys::inherited_socket(), cap) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("multitask: worker {me}: {e}");
            return 71;
        }
    };
    // A pool that gave a board withdraws calls on it: a worker that can't
    // read it must not run calls at all.
    let board = match take_env(ENV_BOARD).map(|_| Board::inherited()) {
        None => None,
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => {
            eprintln!("multitask: worker {me}: mapping the call board: {e}");
            return 71;
        }
    };

    if let Some(spec) = init {
        if conn.send(&FromWorker::Initializing).is_err() {
            return 0;
        }
        if let Err(error) = run_initializer(&spec, &me) {
            let _ = conn.send(&FromWorker::InitFailed { error });
            return 1;
        }
    }
    if conn.send(&FromWorker::Hello { pid }).is_err() {
        return 0;
    }
    loop {
        let msg: ToWorker = match conn.recv(None) {
            Ok(m) => m,
            Err(WireError::Eof) => return 0,
            Err(e) => {
                eprintln!("multitask: worker {me}: {e}");
                return 72;
            }
        };
        let ToWorker::Call {
            id,
            seq,
            task: name,
            signature,
            payload,
            measure,
        } = msg;
        if seq != 0 {
            let Some(board) = &board else {
                eprintln!(
                    "multitask: worker {me}: call {id} is on a call board, and none was given"
                );
                return 72;
            };
            if !board.claim(seq) {
                if conn.send(&FromWorker::Skipped { id }).is_err() {
                    return 0;
                }
                continue;
            }
        }
        let meter = (measure != MEASURE_NONE).then(|| Meter::start(measure == MEASURE_ALL));
        let outcome = run_call(&name, signature, &payload, &me);
        let usage = meter.map(Meter::stop);
        let reply = FromWorker::Reply { id, outcome, usage };
        match conn.send(&reply) {
            Ok(()) => {}
            Err(WireError::TooLarge { size, cap }) => {
                let too_large = FromWorker::Reply {
                    id,
                    usage,
                    outcome: Err(TaskError::TooLarge {
                        task: name.into_owned(),
                        size,
                        limit: cap,
                    }),
                };
                if conn.send(&too_large).is_err() {
                    return 0;
                }
            }
            Err(_) => return 0,
        }
    }
}

/// A traced call shorter than this reports no peak RSS of its own (the
/// trace then has the worker's, sampled): reading `/proc/self/status`
/// costs more than such a call.
const RSS_FROM: std::time::Duration = std::time::Duration::from_millis(1);

/// Measures one call: its thread's CPU time, and its own peak RSS (the
/// kernel's high-water mark is reset first, so that a 1 MiB task after a
/// 200 MiB one reports 1 MiB, not the worker's lifetime peak).
struct Meter {
    /// True to read the peak RSS whatever the call's length.
    always_rss: bool,
    /// When the call began.
    began: std::time::Instant,
    /// The thread's CPU clock when the call began.
    cpu: std::time::Duration,
    /// The thread's allocation count when the call began, when counted.
    allocated: Option<u64>,
}

impl Meter {
    fn start(always_rss: bool) -> Meter {
        // "5" resets VmHWM to the current RSS (Linux 4.0+); without it the
        // peak is the worker's since the last reset, an upper bound. The
        // file stays open: one write per call.
        static CLEAR_REFS: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
        if let Some(f) = CLEAR_REFS.get_or_init(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/proc/self/clear_refs")
                .ok()
        }) {
            let _ = std::io::Write::write(&mut &*f, b"5");
        }
        Meter {
            always_rss,
            began: std::time::Instant::now(),
            cpu: crate::trace::thread_cpu(),
            allocated: crate::alloc::thread_allocated(),
        }
    }

    fn stop(self) -> Usage {
        let cpu = crate::trace::thread_cpu().saturating_sub(self.cpu);
        Usage {
            cpu_ns: u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX),
            peak_rss: (self.always_rss || self.began.elapsed() >= RSS_FROM)
                .then(|| crate::info::rss_of(std::process::id()).map(|(_, peak)| peak))
                .flatten(),
            allocated: self
                .allocated
                .zip(crate::alloc::thread_allocated())
                .map(|(a, b)| b.saturating_sub(a)),
        }
    }
}

/// Runs one batch call: find the task, run it, catch what escapes.
fn run_call(name: &str, signature: u64, payload: &[u8], me: &str) -> Result<Vec<u8>, TaskError> {
    let entry = task::resolve(name, signature, me)?;
    // The batch function catches each item's panic; this catches panics of
    // the codec itself (a Deserialize impl that panics).
    crate::panic::catch(name, || (entry.run)(payload)).and_then(|r| r)
}

/// Runs the initializer task named by `spec` (`name` TAB `signature`).
fn run_initializer(spec: &str, me: &str) -> Result<(), TaskError> {
    let (name, sig) = spec.split_once('\t').unwrap_or((spec, "0"));
    let signature = sig.parse().unwrap_or(0);
    let entry = task::resolve(name, signature, me)?;
    let unit = task::encode(name, entry.codec, &vec![()])?;
    let out = run_call(name, signature, &unit, me)?;
    let chunk: crate::chunk::Chunk<()> = task::decode(name, entry.codec, &out)?;
    match chunk.into_iter().next() {
        Some(Err(e)) => Err(e),
        _ => Ok(()),
    }
}
