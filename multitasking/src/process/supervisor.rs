//! The supervisor thread of a process pool's worker slot, and the life of
//! a worker process: start and hello, its calls (one at a time, or several
//! short ones written ahead, see [`AHEAD`]), timeout and memory watch,
//! kill, reap, replace. See `process/mod.rs` for the picture.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::error::{Error, ExitCause, TaskError};
use crate::future::Terminate;
use crate::process::board::{self, Board};
use crate::process::pool::{Config, Job, PoolShared};
use crate::process::sys;
use crate::process::wire::{self, Conn, FromWorker, ToWorker, WireError};
use crate::process::worker::{ENV_BOARD, ENV_CAP, ENV_INIT, ENV_NAME, ENV_WORKER, EXIT_NO_INIT};
use crate::process::DEFAULT_MAX_PAYLOAD;
use crate::remote::Deliver;
use crate::trace::{Span, SpanWorker, Tracer};

/// How often a busy worker's memory is checked against its limit.
const MEMORY_POLL: Duration = Duration::from_millis(20);
/// How long a slot whose worker failed to start waits before it tries
/// again, if no call is waiting.
const SPAWN_BACKOFF: Duration = Duration::from_secs(1);
/// How long a retiring worker gets to exit after its socket closes.
const RETIRE_GRACE: Duration = Duration::from_secs(2);

/// Most calls written to a busy worker ahead of the one it runs, by
/// default. While its calls are short (see [`AHEAD_BELOW`]) and no other
/// worker is idle, the next ones are written to its socket while it runs
/// the one before: it reads them without waiting, answers several per
/// wake-up of the pool's side, and neither side parks or spins between
/// calls. Such a call counts as started (its `cancel` fails, as for calls
/// Python's executor has put in its call queue); `terminate` takes it
/// back without killing anything if the worker has not reached it (the
/// call board, `board.rs`). `ProcessPoolBuilder::calls_ahead` sets it.
pub(crate) const AHEAD: usize = 7;

/// The most calls ahead a builder may ask for: a board has a word for
/// every call a worker holds.
pub(crate) const MAX_AHEAD: usize = board::CALLS - 1;

/// By default calls are written ahead only while the slot's calls took
/// less than this on average: a call waits behind at most [`AHEAD`] calls
/// that short, not behind a long one.
const AHEAD_BELOW: Duration = Duration::from_micros(200);

/// A call larger than this is never written ahead: the socket's buffer
/// must hold every call written ahead, or the writer would wait for a
/// worker that is busy running.
const AHEAD_BYTES: usize = 16 * 1024;

/// Why a worker was killed on purpose.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KillReason {
    /// `TaskFuture::terminate`, or a worker that broke the protocol.
    Terminated,
    /// A whole-pool stop (`terminate_workers`, `kill_workers`): every call
    /// the worker held fails, started or not.
    Stopped,
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
    /// Why it was killed, if it was, and for which call (its board
    /// number; `None`: for everything it held).
    reason: Mutex<Option<(KillReason, Option<u64>)>>,
}

impl KillSwitch {
    /// Kills the worker for everything it holds.
    pub(crate) fn kill(&self, reason: KillReason, signal: rustix::process::Signal) -> bool {
        self.kill_for(reason, None, signal)
    }

    /// Kills the worker for call `seq` (the one it runs), or for all it
    /// holds.
    fn kill_for(
        &self,
        reason: KillReason,
        seq: Option<u64>,
        signal: rustix::process::Signal,
    ) -> bool {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert((reason, seq));
        signal_group(self.pid, signal)
    }

    fn reason(&self) -> Option<(KillReason, Option<u64>)> {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sends `signal` to worker `pid`'s process group: the worker and every
/// process it started that did not leave the group. A worker leads a group
/// of its own (see `spawn_worker`), so a task's `sleep 300` dies with it.
pub(crate) fn signal_group(pid: u32, signal: rustix::process::Signal) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|pid| rustix::process::kill_process_group(pid, signal).is_ok())
}

/// Waits until `deadline` for `child` (a group leader) to exit, then kills
/// what is left of its group and reaps it; past the deadline it kills the
/// whole group first. Its exit status, if it could be had.
///
/// Subtle: the group is killed while the leader is a zombie, not after it
/// is reaped: until then its pid, which is the group's id, can't be reused,
/// so the signal can't reach a stranger's group.
pub(crate) fn reap_group(
    child: &mut Child,
    deadline: Instant,
    poll: Duration,
) -> Option<std::process::ExitStatus> {
    let pid = rustix::process::Pid::from_raw(child.id() as i32)?;
    let options = rustix::process::WaitIdOptions::EXITED
        | rustix::process::WaitIdOptions::NOHANG
        | rustix::process::WaitIdOptions::NOWAIT;
    loop {
        match rustix::process::waitid(rustix::process::WaitId::Pid(pid), options) {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(poll),
            // Past the deadline, or it can't be waited for: no more waiting.
            Ok(None) | Err(_) => break,
        }
    }
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    child.wait().ok()
}

/// A live worker process, owned by its supervisor.
pub(crate) struct Worker {
    /// The process.
    child: Child,
    /// The control socket.
    conn: Conn,
    /// Its call board; without one (it could not be made), the worker
    /// holds one call at a time.
    board: Option<Board>,
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
            measure: false,
            calls_ahead: Some(0),
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
    let started = start_worker(index, config)?;
    await_hello(started, index, config)
}

/// A worker process started and not yet heard from.
#[derive(Debug)]
pub(crate) struct Started {
    /// The process.
    child: Child,
    /// Its control socket.
    conn: Conn,
    /// Its call board.
    board: Option<Board>,
    /// When its start began: `start_timeout` counts from here.
    at: Instant,
}

/// Starts worker `index`: forks and execs it, with its socket. The calling
/// thread is the one whose exit PR_SET_PDEATHSIG watches.
pub(crate) fn start_worker(index: usize, config: &Config) -> Result<Started, Error> {
    let at = Instant::now();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| Error::io("creating a worker socket", e))?;
    let theirs = std::os::fd::OwnedFd::from(theirs);
    let exe = std::env::current_exe().map_err(|e| Error::io("finding this program", e))?;
    // Without a board (no memfd here) the worker gets one call at a time.
    let (board, board_fd) = Board::new().map_or((None, None), |(b, fd)| (Some(b), Some(fd)));
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(exe.as_os_str())
        .env(ENV_WORKER, wire::VERSION.to_string())
        .env(ENV_NAME, format!("{}-{index}", config.name))
        .env(ENV_CAP, config.max_payload.to_string())
        .stdin(Stdio::null())
        // A group of its own: killing the worker's group kills what its
        // tasks started too. Terminal signals (Ctrl-C) no longer reach it;
        // it dies with the pool instead (PR_SET_PDEATHSIG, socket EOF).
        .process_group(0);
    if let Some((name, sig)) = config.initializer {
        cmd.env(ENV_INIT, format!("{name}\t{sig}"));
    }
    if board.is_some() {
        cmd.env(ENV_BOARD, "1");
    }
    sys::configure_child(&mut cmd, &theirs, board_fd.as_ref());
    let child = cmd
        .spawn()
        .map_err(|e| Error::io("starting a worker process", e))?;
    drop(theirs);
    drop(board_fd);
    let conn = Conn::new(ours, config.max_payload)
        .map_err(|e| Error::io("setting up a worker socket", e))?;
    Ok(Started {
        child,
        conn,
        board,
        at,
    })
}

/// Waits for the hello of the worker `index` started as `started`.
pub(crate) fn await_hello(
    started: Started,
    index: usize,
    config: &Config,
) -> Result<Worker, Error> {
    let Started {
        mut child,
        mut conn,
        board,
        at,
    } = started;
    let deadline = at + config.start_timeout;
    let failed = |child: &mut Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        Err(Error::Protocol(why))
    };
    // Set once the worker said it runs its initializer: a timeout after
    // that is a slow initializer, not a missing `init()`.
    let mut initializing = false;
    let first = loop {
        match conn.recv::<FromWorker>(Some(deadline)) {
            Ok(FromWorker::Initializing) if !initializing => initializing = true,
            other => break other,
        }
    };
    match first {
        Ok(FromWorker::Hello { pid }) => Ok(Worker {
            child,
            conn,
            board,
            switch: Arc::new(KillSwitch {
                pid,
                reason: Mutex::new(None),
            }),
            tasks: 0,
            rss: None,
        }),
        Ok(FromWorker::InitFailed { error }) => failed(
            &mut child,
            format!("the worker initializer failed: {error}"),
        ),
        Ok(other) => failed(
            &mut child,
            format!("a new worker sent {other:?} before hello"),
        ),
        Err(WireError::Timeout) if initializing => failed(
            &mut child,
            format!(
                "worker {}-{index} started, but its initializer did not finish within the {:?} \
                 start timeout: make the initializer faster or raise start_timeout",
                config.name, config.start_timeout
            ),
        ),
        Err(WireError::Timeout) => failed(
            &mut child,
            format!(
                "worker {}-{index} did not start within the {:?} start timeout: either the program \
                 does not call multitasking::init() first thing in main (or \
                 multitasking::enable_test_support!() in tests and benches), or its start was too \
                 slow: raise start_timeout",
                config.name, config.start_timeout
            ),
        ),
        Err(WireError::Eof) => {
            let status = child.wait().ok();
            if status.and_then(|s| s.code()) == Some(EXIT_NO_INIT) {
                return Err(Error::Protocol(format!(
                    "worker {}-{index} is this program started again, and its main started workers \
                     of its own before calling multitasking::init(): call multitasking::init() \
                     first thing in main (or use #[multitasking::main]; in tests and benches, \
                     multitasking::enable_test_support!())",
                    config.name
                )));
            }
            Err(Error::Protocol(format!(
                "worker {}-{index} exited before it started ({}); does main call multitasking::init() first?",
                config.name,
                status.map_or("unknown status".to_string(), |s| s.to_string())
            )))
        }
        Err(e) => failed(&mut child, format!("worker {}-{index}: {e}", config.name)),
    }
}

/// Closes a worker's socket, lets it exit, and reaps it; kills it if it
/// does not exit within the grace period. Whatever it left running in its
/// process group is killed too.
fn retire(mut w: Worker) {
    drop(w.conn);
    reap_group(
        &mut w.child,
        Instant::now() + RETIRE_GRACE,
        Duration::from_millis(1),
    );
}

/// Reaps a worker that died or was killed; how it ended.
fn reap(mut w: Worker) -> (u32, ExitCause, Option<(KillReason, Option<u64>)>) {
    let pid = w.switch.pid;
    let reason = w.switch.reason();
    drop(w.conn);
    let status = reap_group(
        &mut w.child,
        Instant::now() + RETIRE_GRACE,
        Duration::from_micros(200),
    );
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
        Some(KillReason::Terminated | KillReason::Stopped) => TaskError::Terminated { task, pid },
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

/// A worker slot: its worker, the calls the worker holds, and the bell that
/// wakes the slot's supervisor.
///
/// Whoever holds `io` drives the worker: a submitter that finds the slot
/// idle writes the call itself, and a caller spinning for its result reads
/// the reply itself (through [`Terminate::progress`]), so that a round trip
/// crosses two parties, as a raw socket ping-pong does, not three. The
/// supervisor thread is the only one that starts, reaps and replaces
/// workers; between those it parks in `poll` on the worker's socket and
/// its bell, and handles what nobody else did: a reply nobody waits for,
/// a timeout, the memory limit, a worker's death.
pub(crate) struct Slot {
    /// The slot's index, in worker names.
    index: usize,
    /// The worker and its call.
    io: Mutex<SlotIo>,
    /// True while the slot is [`SlotState::Idle`]: lets a submitter skip
    /// busy slots without taking their lock. Written only by [`Slot::set`],
    /// with the state.
    idle: AtomicBool,
    /// Wakes the supervisor.
    bell: Bell,
}

/// What a slot's lock guards.
#[derive(Default)]
struct SlotIo {
    /// The worker and what it does; written only through [`Slot::set`].
    state: SlotState,
    /// Futures to resolve once the lock is released (a done callback may
    /// submit again, which takes this lock).
    outbox: Vec<Outcome>,
    /// When the supervisor, parked in `poll`, decided to look again (see
    /// [`Parked`]); `None` while it is awake or has been rung.
    parked: Option<Parked>,
    /// Callers spinning for a call of this slot, reading its replies
    /// themselves ([`Terminate::helping`]): while there are some and no
    /// call is queued, the supervisor does not watch the socket, so that a
    /// reply wakes no one else (on two CPUs the wake-up of a third party
    /// cost a round trip a fifth of its time).
    helpers: usize,
    /// When the last helper stopped: a caller that submits and waits again
    /// and again is between two spins now and then, and a supervisor that
    /// went back to watching in such a gap was woken by the next reply.
    helped: Option<Instant>,
    /// The last call's number on a worker's call board: counts across the
    /// slot's workers, so a stale handle never names a later call.
    next_seq: u64,
    /// How long the slot's calls take, smoothed: calls are written ahead
    /// only while it is under [`AHEAD_BELOW`] (unless the pool fixes how
    /// many, `calls_ahead`). `None` until a call was answered.
    mean: Option<Duration>,
    /// A call too large to write ahead, taken from the queue while the
    /// worker was busy: it goes first once the worker is idle.
    held: Option<Job>,
}

/// What a parked supervisor waits for, decided from the slot's state under
/// its lock just before it parked.
///
/// Subtle: the supervisor parks on the worker's socket and its bell, but
/// a caller spinning for its result reads replies from that same socket.
/// If the caller reads the reply the supervisor was waiting for, the
/// socket is quiet again, and a supervisor that decided "a call is in
/// flight, wait for its reply" sleeps on a state that no longer holds: the
/// pool closed meanwhile, the slot went idle, nobody rings, and the pool's
/// drop joins that supervisor forever. So the rule is: whoever changes the
/// slot under its lock checks, as it releases the lock, whether the parked
/// supervisor's decision still stands ([`Slot::release`]), and rings the
/// bell if it must act now or look earlier. One ring per park: the rung
/// supervisor decides again.
#[derive(Debug, Clone, Copy)]
struct Parked {
    /// When it wakes by itself; `None`: only the socket or the bell wake it.
    wake: Option<Instant>,
    /// The id of the call in flight it planned for: its deadlines are in
    /// `wake` already.
    call: Option<u64>,
    /// The stall deadline of the frame in progress it planned for.
    stall: Option<Instant>,
    /// False if it parked without watching the worker's socket, because
    /// callers were reading it ([`SlotIo::helpers`]).
    watching: bool,
}

impl Parked {
    /// True if a supervisor parked on this plan must look at `io` now.
    fn is_stale(&self, io: &SlotIo, shared: &PoolShared) -> bool {
        match supervisor_due(io, shared) {
            Due::Now => true,
            Due::Never => false,
            _ if io.state.call().map(|c| c.id) == self.call && stall_of(io) == self.stall => false,
            Due::At(at) => self.wake.is_none_or(|w| at < w),
        }
    }
}

/// A worker slot's state, and who moves it where.
///
/// ```text
///            install (supervisor)       start (whoever dispatches)
///   Empty --------------------> Idle --------------------------> Busy --+
///     ^                          ^  <-- last reply (tasks < max) -- |   | start (ahead)
///     |                          |                                  | <-+
///     |                          |                                  | last reply (tasks = max)
///     |                          |  EOF, protocol error, stall      v
///     |  end (supervisor)        +----------------------------> Broken <-- Retiring
///     +---- Idle, Retiring, Broken (and Idle of a closed pool)
/// ```
///
/// Any state with a worker goes to `Broken` when its socket fails or the
/// worker breaks the protocol (a `Busy` one keeps its calls, to fail,
/// retry or run again those it never started). Only the supervisor leaves
/// `Empty` and enters it; everybody holding the lock may make the other
/// moves.
#[derive(Default)]
enum SlotState {
    /// No worker: the supervisor is starting one, ending one, or waiting to
    /// try again after a failed start.
    #[default]
    Empty,
    /// A worker waits for a call.
    Idle(Worker),
    /// A worker runs a call, and holds the calls after it (never empty; in
    /// the order written, which is the order the worker answers them).
    Busy(Worker, VecDeque<Call>),
    /// The worker answered its `max_tasks_per_child`-th call: the
    /// supervisor retires it.
    Retiring(Worker),
    /// The worker can't go on: the supervisor reaps it and fails (or
    /// queues again) the calls it held.
    Broken(Worker, VecDeque<Call>, Broken),
}

impl SlotState {
    /// The worker, if there is one.
    fn worker(&self) -> Option<&Worker> {
        match self {
            SlotState::Empty => None,
            SlotState::Idle(w)
            | SlotState::Busy(w, _)
            | SlotState::Retiring(w)
            | SlotState::Broken(w, ..) => Some(w),
        }
    }

    /// The call a working worker runs (or reaches next): its first call
    /// not withdrawn.
    fn call(&self) -> Option<&Call> {
        match self {
            SlotState::Busy(_, calls) => calls.iter().find(|c| c.job.is_some()),
            _ => None,
        }
    }
}

/// A future to resolve, and its encoded outcome.
type Outcome = (Box<dyn Deliver>, Result<Vec<u8>, TaskError>);

/// A call written to a worker and not yet answered.
struct Call {
    /// The id the reply must carry.
    id: u64,
    /// Its number on the worker's call board.
    seq: u64,
    /// The job; `None` once withdrawn on the board (its future was
    /// resolved then; the worker's `Skipped` is still to come).
    job: Option<Job>,
    /// When it was written.
    started: Instant,
}

impl Call {
    /// When the call began in its worker, and whether that is known: a
    /// call on a board that the worker has not reached yet counts from
    /// `now` (so no timeout can fire early); one not on a board, from its
    /// write.
    fn began(&self, w: &Worker, now: Instant) -> (Instant, bool) {
        match &w.board {
            Some(b) => b.started(self.seq).map_or((now, false), |at| (at, true)),
            None => (self.started, true),
        }
    }
}

/// Why a worker can't go on.
enum Broken {
    /// Its socket reached end-of-file or failed: it died or was killed.
    Gone,
    /// It broke the protocol (it was killed for it): the message.
    Protocol(String),
}

/// A self-pipe that wakes a supervisor parked in `poll`.
struct Bell {
    /// The end rung.
    tx: UnixStream,
    /// The end polled.
    rx: UnixStream,
}

impl Bell {
    fn new() -> std::io::Result<Bell> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Bell { tx, rx })
    }

    fn ring(&self) {
        // A full pipe has rung already.
        let _ = (&self.tx).write(&[1]);
    }

    fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.rx).read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// The handle a running task's future holds: stops the call (takes it back
/// if its worker has not reached it, else kills the worker), and lets a
/// caller that spins for the outcome read the reply itself.
struct Control {
    /// The call's number on the board.
    seq: u64,
    /// The worker's kill switch.
    switch: Arc<KillSwitch>,
    /// The slot the call runs in (weak: the slot holds its worker, which
    /// holds this).
    slot: Weak<Slot>,
    /// The pool, if it is still there.
    pool: Weak<PoolShared>,
}

impl Terminate for Control {
    fn terminate(&self) -> bool {
        let kill = || {
            self.switch.kill_for(
                KillReason::Terminated,
                Some(self.seq),
                rustix::process::Signal::KILL,
            )
        };
        let (Some(pool), Some(slot)) = (self.pool.upgrade(), self.slot.upgrade()) else {
            return kill();
        };
        let mut io = slot.lock();
        let SlotIo { state, outbox, .. } = &mut *io;
        let stopped = match state {
            SlotState::Busy(w, calls) if Arc::ptr_eq(&w.switch, &self.switch) => {
                match calls.iter_mut().find(|c| c.seq == self.seq) {
                    // Answered meanwhile: nothing runs to be stopped.
                    None => false,
                    Some(call) => match (&w.board, call.job.is_some()) {
                        (_, false) => true,
                        (Some(b), true) if b.withdraw(self.seq) => {
                            // It never runs: the worker skips it.
                            let job = call.job.take().expect("checked");
                            let error = TaskError::Terminated {
                                task: job.task.to_string(),
                                pid: w.switch.pid,
                            };
                            outbox.push((job.deliver, Err(error)));
                            true
                        }
                        _ => kill(),
                    },
                }
            }
            // The worker that had it is gone: the call was failed, or is
            // queued again to run elsewhere.
            _ => false,
        };
        slot.release(io, &pool);
        stopped
    }

    fn helping(&self, start: bool) {
        let (Some(pool), Some(slot)) = (self.pool.upgrade(), self.slot.upgrade()) else {
            return;
        };
        let mut io = slot.lock();
        if start {
            io.helpers += 1;
        } else {
            io.helpers = io.helpers.saturating_sub(1);
            io.helped = Some(Instant::now());
            // The last helper leaves a call unanswered: the supervisor,
            // which parked without watching the socket, must watch it now.
            let unwatched = io.parked.is_some_and(|p| !p.watching);
            if io.helpers == 0 && unwatched && io.state.call().is_some() {
                io.parked = None;
                slot.ring();
            }
        }
        slot.release(io, &pool);
    }

    fn progress(&self) {
        let (Some(pool), Some(slot)) = (self.pool.upgrade(), self.slot.upgrade()) else {
            return;
        };
        // Someone else drives the slot: they will deliver.
        let Ok(mut io) = slot.io.try_lock() else {
            return;
        };
        slot.pump(&mut io, &pool);
        slot.release(io, &pool);
    }
}

impl Slot {
    /// Slot `index`, with no worker yet.
    pub(crate) fn new(index: usize) -> Result<Slot, Error> {
        Ok(Slot {
            index,
            io: Mutex::new(SlotIo::default()),
            idle: AtomicBool::new(false),
            bell: Bell::new().map_err(|e| Error::io("creating a supervisor's bell", e))?,
        })
    }

    fn lock(&self) -> MutexGuard<'_, SlotIo> {
        self.io.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the slot to `state`: the one writer of the state and of the
    /// `idle` hint.
    fn set(&self, io: &mut SlotIo, state: SlotState) {
        // SeqCst: `dispatch` fences after a store of true (see there).
        self.idle
            .store(matches!(state, SlotState::Idle(_)), Ordering::SeqCst);
        io.state = state;
    }

    /// Takes the state out to move it; the caller `set`s the next one
    /// before it lets go of the lock.
    fn take(io: &mut SlotIo) -> SlotState {
        std::mem::take(&mut io.state)
    }

    /// Takes the call held for this slot's worker, if any (it was never
    /// written): a shutdown that cancels pending work cancels it too.
    pub(crate) fn take_held(&self) -> Option<Job> {
        self.lock().held.take()
    }

    /// Wakes the slot's supervisor.
    pub(crate) fn ring(&self) {
        self.bell.ring();
    }

    /// Releases the slot's lock, then resolves the futures it collected.
    /// If the supervisor is parked on a decision the lock holder made stale
    /// (see [`Parked`]), rings it first.
    fn release(&self, mut io: MutexGuard<'_, SlotIo>, shared: &PoolShared) {
        if let Some(parked) = io.parked {
            if parked.is_stale(&io, shared) {
                io.parked = None;
                self.bell.ring();
            }
        }
        if io.outbox.is_empty() {
            return;
        }
        let out = std::mem::take(&mut io.outbox);
        drop(io);
        for (deliver, outcome) in out {
            deliver.finish(outcome);
        }
    }

    /// Starts queued calls on this slot if it is idle; called by whoever
    /// enqueued one, and by whoever made the slot idle.
    pub(crate) fn offer(self: &Arc<Self>, shared: &Arc<PoolShared>) {
        // Relaxed: a hint; `dispatch` re-checks under the lock, and the
        // fences in `dispatch` and `ProcessPool::send` close the race.
        if self.idle.load(Ordering::Relaxed) {
            let mut io = self.lock();
            self.dispatch(&mut io, shared);
            self.release(io, shared);
        }
    }

    /// Writes queued calls to the worker while it is idle, and ahead of
    /// the call it runs while it has room (see [`AHEAD`]).
    fn dispatch(self: &Arc<Self>, io: &mut SlotIo, shared: &Arc<PoolShared>) {
        loop {
            if matches!(io.state, SlotState::Idle(_)) {
                if let Some(job) = io.held.take() {
                    self.start(io, job, shared);
                }
            }
            while self.has_room(io, shared) {
                let Ok(job) = shared.rx.try_recv() else {
                    break;
                };
                self.start(io, job, shared);
            }
            // SeqCst, with the fence: a submitter enqueues, fences, then
            // reads `idle`; here `idle` was stored (by `set`, on the move
            // to Idle), fenced, then the queue read. One of the two sees
            // the other, so no call waits in the queue beside an idle
            // worker.
            if !matches!(io.state, SlotState::Idle(_)) {
                break;
            }
            std::sync::atomic::fence(Ordering::SeqCst);
            if shared.rx.is_empty() {
                break;
            }
        }
    }

    /// True if the slot's worker takes another call now: it is idle, or it
    /// is busy with short calls, has room for one more, no other worker
    /// is idle (the call would wait here while one could run it), and it
    /// does not reach its `max_tasks_per_child` with the calls it holds.
    fn has_room(&self, io: &SlotIo, shared: &PoolShared) -> bool {
        match &io.state {
            SlotState::Idle(_) => true,
            SlotState::Busy(w, calls) => {
                let ahead = match shared.config.calls_ahead {
                    Some(n) => n.min(MAX_AHEAD),
                    None if io.mean.is_some_and(|m| m < AHEAD_BELOW) => AHEAD,
                    None => 0,
                };
                io.held.is_none()
                    && w.board.is_some()
                    && calls.len() <= ahead
                    && shared
                        .config
                        .max_tasks_per_child
                        .is_none_or(|max| w.tasks + (calls.len() as u64) < max)
                    // Relaxed: a hint; a worker that goes idle takes
                    // calls from the queue itself.
                    && !shared.slots.iter().any(|s| s.idle.load(Ordering::Relaxed))
            }
            _ => false,
        }
    }

    /// Writes `job` to the worker, idle or (with room) busy.
    fn start(self: &Arc<Self>, io: &mut SlotIo, mut job: Job, shared: &Arc<PoolShared>) {
        let ahead = matches!(io.state, SlotState::Busy(..));
        if ahead && job.payload.len() > AHEAD_BYTES {
            io.held = Some(job);
            return;
        }
        // From 1: a call numbered 0 is not on a board.
        io.next_seq += 1;
        let seq = io.next_seq;
        let (SlotState::Idle(w) | SlotState::Busy(w, _)) = &mut io.state else {
            unreachable!("start on a slot that takes no call");
        };
        let control = Arc::new(Control {
            seq,
            switch: w.switch.clone(),
            slot: Arc::downgrade(self),
            pool: Arc::downgrade(shared),
        });
        if !job.deliver.start(Some(control)) {
            // Cancelled while queued.
            return;
        }
        if let Some(b) = &w.board {
            b.post(seq);
        }
        // Relaxed: ids need only be unique.
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let call = ToWorker::Call {
            id,
            seq: if w.board.is_some() { seq } else { 0 },
            task: std::borrow::Cow::Borrowed(job.task),
            signature: job.signature,
            payload: std::mem::take(&mut job.payload),
            measure: if shared.config.measure {
                wire::MEASURE_ALL
            } else if job.submitted.is_some() {
                wire::MEASURE_TRACE
            } else {
                wire::MEASURE_NONE
            },
        };
        let (mut w, mut calls) = match Slot::take(io) {
            SlotState::Idle(w) => (w, VecDeque::new()),
            SlotState::Busy(w, calls) => (w, calls),
            _ => unreachable!("checked above"),
        };
        let sent = w.conn.send(&call);
        let ToWorker::Call { payload, .. } = call;
        job.payload = payload;
        let call = Call {
            id,
            seq,
            job: Some(job),
            started: Instant::now(),
        };
        let next = match sent {
            Ok(()) => {
                calls.push_back(call);
                SlotState::Busy(w, calls)
            }
            Err(WireError::TooLarge { size, cap }) => {
                let job = call.job.expect("just made");
                let error = TaskError::TooLarge {
                    task: job.task.to_string(),
                    size,
                    limit: cap,
                };
                io.outbox.push((job.deliver, Err(error)));
                if calls.is_empty() {
                    SlotState::Idle(w)
                } else {
                    SlotState::Busy(w, calls)
                }
            }
            Err(e @ WireError::Stalled { .. }) => {
                // It stopped reading part-way through its call: it can't be
                // trusted to go on. The call whose write broke fails; the
                // ones written before it go back to the queue if the
                // worker never reached them.
                w.switch
                    .kill(KillReason::Terminated, rustix::process::Signal::KILL);
                let why = format!("worker pid {}: sending the call: {e}", w.switch.pid);
                let mut call = call;
                trace(shared, &mut call, false, None, &mut w);
                let job = call.job.expect("just made");
                let error = TaskError::Codec {
                    task: job.task.to_string(),
                    message: why.clone(),
                };
                io.outbox.push((job.deliver, Err(error)));
                SlotState::Broken(w, calls, Broken::Protocol(why))
            }
            Err(_) => {
                calls.push_back(call);
                SlotState::Broken(w, calls, Broken::Gone)
            }
        };
        self.set(io, next);
    }

    /// Reads what the worker sent: finishes its calls and starts the next.
    fn pump(self: &Arc<Self>, io: &mut SlotIo, shared: &Arc<PoolShared>) {
        // One read from the socket, then the replies it brought along:
        // another read would be a system call that finds nothing, on the
        // round trip's path.
        let mut more = self.pump_one(io, shared);
        while more && io.state.worker().is_some_and(|w| w.conn.has_frame()) {
            more = self.pump_one(io, shared);
        }
        self.dispatch(io, shared);
    }

    /// Reads one message of the worker, if one is there: true if one was
    /// handled and the worker goes on; false if none had come, or the
    /// worker is broken (or there is none).
    fn pump_one(self: &Arc<Self>, io: &mut SlotIo, shared: &Arc<PoolShared>) -> bool {
        let front = match &io.state {
            SlotState::Busy(_, calls) => calls.front().map(|c| (c.id, c.job.is_some())),
            _ => None,
        };
        let w = match &mut io.state {
            SlotState::Idle(w) | SlotState::Busy(w, _) | SlotState::Retiring(w) => w,
            SlotState::Empty | SlotState::Broken(..) => return false,
        };
        let pid = w.switch.pid;
        let broken = match w.conn.try_recv::<FromWorker>() {
            Ok(None) => return false,
            Ok(Some(FromWorker::Reply { id, outcome, usage })) if front == Some((id, true)) => {
                let (mut w, mut call, calls) = Slot::pop(io);
                let now = Instant::now();
                let (began, _) = call.began(&w, now);
                let took = now.saturating_duration_since(began);
                io.mean = Some(io.mean.map_or(took, |m| (m * 7 + took) / 8));
                trace(shared, &mut call, outcome.is_ok(), usage, &mut w);
                let job = call.job.expect("checked: not withdrawn");
                if let Some(u) = usage {
                    job.deliver.set_usage(crate::TaskUsage {
                        cpu: std::time::Duration::from_nanos(u.cpu_ns),
                        peak_rss: u.peak_rss,
                        allocated: u.allocated,
                    });
                }
                io.outbox.push((job.deliver, outcome));
                w.tasks += 1;
                let spent = shared
                    .config
                    .max_tasks_per_child
                    .is_some_and(|max| w.tasks >= max);
                let next = match (calls.is_empty(), spent) {
                    (false, _) => SlotState::Busy(w, calls),
                    (true, true) => SlotState::Retiring(w),
                    (true, false) => SlotState::Idle(w),
                };
                self.set(io, next);
                return true;
            }
            Ok(Some(FromWorker::Skipped { id })) if front == Some((id, false)) => {
                let (w, _, calls) = Slot::pop(io);
                let next = if calls.is_empty() {
                    SlotState::Idle(w)
                } else {
                    SlotState::Busy(w, calls)
                };
                self.set(io, next);
                return true;
            }
            Ok(Some(other)) => Broken::Protocol(format!(
                "worker pid {pid} broke the protocol: sent {other:?}"
            )),
            Err(WireError::Eof) | Err(WireError::Io(_)) => Broken::Gone,
            Err(e) => Broken::Protocol(format!("worker pid {pid}: {e}")),
        };
        let (w, calls) = match Slot::take(io) {
            SlotState::Idle(w) | SlotState::Retiring(w) => (w, VecDeque::new()),
            SlotState::Busy(w, calls) => (w, calls),
            SlotState::Empty | SlotState::Broken(..) => unreachable!("checked above"),
        };
        if matches!(broken, Broken::Protocol(_)) {
            w.switch
                .kill(KillReason::Terminated, rustix::process::Signal::KILL);
        }
        self.set(io, SlotState::Broken(w, calls, broken));
        false
    }

    /// Takes a busy slot's state apart: its worker, its first call, and
    /// the calls after it. The caller `set`s the next state.
    fn pop(io: &mut SlotIo) -> (Worker, Call, VecDeque<Call>) {
        let SlotState::Busy(w, mut calls) = Slot::take(io) else {
            unreachable!("a call is pending only on a busy slot");
        };
        let call = calls.pop_front().expect("a busy slot holds a call");
        (w, call, calls)
    }
}

/// Records a finished call, when tracing: with what the worker measured
/// of it (its own CPU time and peak RSS), else the worker's peak.
fn trace(
    shared: &PoolShared,
    call: &mut Call,
    ok: bool,
    usage: Option<wire::Usage>,
    w: &mut Worker,
) {
    let now = Instant::now();
    let (began, known) = call.began(w, now);
    let Some(job) = &mut call.job else {
        return;
    };
    if let Some(submitted) = job.submitted {
        shared.config.tracer.record_span(Span {
            task: job.task,
            worker: SpanWorker::Pid,
            pid: w.switch.pid,
            times: (submitted, if known { began } else { call.started }, now),
            ok,
            peak_rss: usage.and_then(|u| u.peak_rss).or_else(|| w.peak_rss()),
            cpu: usage.map(|u| std::time::Duration::from_nanos(u.cpu_ns)),
            input: job.input.take(),
            allocated: usage.and_then(|u| u.allocated),
        });
    }
}

/// A supervisor: owns worker slot `slot` for the pool's life. It starts
/// the worker, replaces it when it dies or retires, enforces the task
/// timeout and the memory limit, and handles replies nobody else read.
/// Workers are spawned from this long-lived thread because
/// PR_SET_PDEATHSIG fires when the spawning thread exits.
pub(crate) fn supervise(
    slot: Arc<Slot>,
    shared: Arc<PoolShared>,
    ready: Sender<Result<(), Error>>,
) {
    let config = &shared.config;
    let set_live = |switch: Option<Arc<KillSwitch>>| {
        shared.live.lock().unwrap_or_else(|p| p.into_inner())[slot.index] = switch;
    };
    // A second handle on the live worker's socket, polled without the lock.
    let mut watch: Option<UnixStream> = None;
    let install = |w: Worker, watch: &mut Option<UnixStream>| {
        *watch = w.conn.socket().try_clone().ok();
        set_live(Some(w.switch.clone()));
        let mut io = slot.lock();
        slot.set(&mut io, SlotState::Idle(w));
        slot.dispatch(&mut io, &shared);
        slot.release(io, &shared);
    };
    // After a failed start, when to try again if no call is waiting.
    let mut retry_at = None;
    match spawn_worker(slot.index, config) {
        Ok(w) => {
            install(w, &mut watch);
            let _ = ready.send(Ok(()));
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            retry_at = Some(Instant::now() + SPAWN_BACKOFF);
        }
    }
    drop(ready);
    let closed = || *shared.closed.read().unwrap_or_else(|p| p.into_inner());
    loop {
        // Before the state is read: a ring after this is seen by the next
        // `park`, one before it is about a change this look sees.
        slot.bell.drain();
        let mut io = slot.lock();
        io.parked = None;
        slot.pump(&mut io, &shared);
        slot.dispatch(&mut io, &shared);
        let due = supervisor_due(&io, &shared);
        if io.state.worker().is_some() && matches!(due, Due::Now) {
            // The worker goes: handle it outside the lock.
            let (w, calls, broken) = match Slot::take(&mut io) {
                SlotState::Idle(w) | SlotState::Retiring(w) => (w, VecDeque::new(), None),
                SlotState::Busy(w, calls) => (w, calls, None),
                SlotState::Broken(w, calls, broken) => (w, calls, Some(broken)),
                SlotState::Empty => unreachable!("checked above"),
            };
            slot.set(&mut io, SlotState::Empty);
            // A call held for this worker goes back to the queue: it was
            // never written, and another worker may take it.
            if let Some(job) = io.held.take() {
                // The receiver lives in `shared`, so the send can't fail.
                let _ = shared.tx.send(job);
            }
            slot.release(io, &shared);
            watch = None;
            set_live(None);
            end_worker(w, calls, broken, &shared);
            continue;
        }
        if io.state.worker().is_none() {
            slot.release(io, &shared);
            if closed() && shared.rx.is_empty() {
                break;
            }
            // Don't spin on a machine that can't start processes: after a
            // failure, wait (a close rings the bell) unless calls wait.
            if let Some(at) = retry_at.filter(|at| *at > Instant::now()) {
                if shared.rx.is_empty() {
                    park(&slot.bell, None, Some(at));
                    continue;
                }
            }
            match spawn_worker(slot.index, config) {
                Ok(w) => {
                    retry_at = None;
                    install(w, &mut watch);
                }
                Err(e) => {
                    if let Ok(job) = shared.rx.try_recv() {
                        job.deliver.finish(Err(TaskError::Broken {
                            task: job.task.to_string(),
                            reason: e.to_string(),
                        }));
                    }
                    retry_at = Some(Instant::now() + SPAWN_BACKOFF);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            continue;
        }
        let wake = deadlines(&io, config);
        let stall = stall_of(&io);
        let wake = match (wake, stall) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // The socket is left to callers that spin for its replies only
        // while no call is queued (one call at a time, waited for as it
        // runs); then the supervisor looks again within HELPED_LOOK, and
        // the last helper rings it if it leaves a call unanswered. An idle
        // worker shortly after a helper left is left too: its next call
        // will most likely be waited for by whoever submits it. With calls
        // queued it watches: the caller waits for one future while the
        // slot runs the next, and leaving those replies to it cost a ring
        // per call.
        let recently_helped = io.helped.is_some_and(|t| t.elapsed() < HELPED_LOOK);
        let helped = io.helpers > 0 || (io.state.call().is_none() && recently_helped);
        let ahead = matches!(&io.state, SlotState::Busy(_, calls) if calls.len() > 1);
        let watching = !(helped && shared.rx.is_empty() && !ahead);
        let wake = if watching {
            wake
        } else {
            let soon = Instant::now() + HELPED_LOOK;
            Some(wake.map_or(soon, |w| w.min(soon)))
        };
        io.parked = Some(Parked {
            wake,
            call: io.state.call().map(|c| c.id),
            stall,
            watching,
        });
        slot.release(io, &shared);
        park(&slot.bell, watch.as_ref().filter(|_| watching), wake);
    }
}

/// How often a supervisor that does not watch its worker's socket, because
/// callers read it, looks at the slot anyway: a reply nobody read waits
/// at most this long (see [`SlotIo::helpers`]).
const HELPED_LOOK: Duration = Duration::from_millis(1);

/// When a slot's supervisor must next look at it, judged from its state.
enum Due {
    /// Now: the worker is broken, retiring, or the pool closed and the
    /// slot has nothing left to run.
    Now,
    /// At this instant: a running call's timeout or memory check.
    At(Instant),
    /// Only when the worker's socket or the bell wakes it.
    Never,
}

/// When the supervisor of the slot in `io` must next look at it.
fn supervisor_due(io: &SlotIo, shared: &PoolShared) -> Due {
    if matches!(io.state, SlotState::Broken(..) | SlotState::Retiring(_)) {
        return Due::Now;
    }
    // A frame in progress is watched even with no call in flight: a worker
    // that sends half a frame unasked holds the slot as surely.
    let stall = stall_of(io);
    let Some(call) = io.state.call() else {
        if matches!(io.state, SlotState::Busy(..)) {
            // Only withdrawn calls are left: their `Skipped` is on its way.
            return stall.map_or(Due::Never, Due::At);
        }
        let closed = *shared.closed.read().unwrap_or_else(|p| p.into_inner());
        return if closed && shared.rx.is_empty() {
            Due::Now
        } else {
            stall.map_or(Due::Never, Due::At)
        };
    };
    let config = &shared.config;
    let SlotState::Busy(w, _) = &io.state else {
        unreachable!("a call runs only on a busy slot");
    };
    let (began, _) = call.began(w, Instant::now());
    let timeout = config.task_timeout.map(|after| began + after);
    let memory = config.memory_limit.map(|_| began + MEMORY_POLL);
    [timeout, memory, stall]
        .into_iter()
        .flatten()
        .min()
        .map_or(Due::Never, Due::At)
}

/// The stall deadline of the frame the slot's worker is part-way through.
fn stall_of(io: &SlotIo) -> Option<Instant> {
    io.state.worker().and_then(|w| w.conn.stall_deadline())
}

/// Kills the running call's worker past the timeout or the memory limit;
/// when the supervisor must look again.
fn deadlines(io: &SlotIo, config: &Config) -> Option<Instant> {
    let SlotState::Busy(w, calls) = &io.state else {
        return None;
    };
    let call = calls.iter().find(|c| c.job.is_some())?;
    let now = Instant::now();
    let (began, known) = call.began(w, now);
    let mut wake = None;
    if let Some(after) = config.task_timeout {
        let at = began + after;
        if now >= at && known {
            w.switch.kill_for(
                KillReason::Timeout(after),
                Some(call.seq),
                rustix::process::Signal::KILL,
            );
        } else {
            wake = Some(at.max(now + Duration::from_millis(1)));
        }
    }
    if let Some(limit) = config.memory_limit {
        if let Some((rss, _)) = crate::info::rss_of(w.switch.pid) {
            if rss > limit {
                w.switch.kill_for(
                    KillReason::Memory { limit, peak: rss },
                    known.then_some(call.seq),
                    rustix::process::Signal::KILL,
                );
            }
        }
        let poll = now + MEMORY_POLL;
        wake = Some(wake.map_or(poll, |t: Instant| t.min(poll)));
    }
    wake
}

/// Parks until the worker's socket is readable (a reply, or end-of-file),
/// the bell rings, or `wake`.
fn park(bell: &Bell, watch: Option<&UnixStream>, wake: Option<Instant>) {
    use rustix::event::{PollFd, PollFlags};
    let timeout = wake.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        rustix::event::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        }
    });
    let mut fds = [
        PollFd::new(&bell.rx, PollFlags::IN),
        PollFd::new(watch.unwrap_or(&bell.rx), PollFlags::IN),
    ];
    let n = if watch.is_some() { 2 } else { 1 };
    let _ = rustix::event::poll(&mut fds[..n], timeout.as_ref());
}

/// A worker leaves its slot: retired (its socket closed, reaped), or dead
/// (reaped; the call it ran failed with the reason, or queued again for a
/// retry). Calls it held and never started are queued again as they were
/// (they did not run, so no retry is spent), except when the whole pool is
/// being stopped: then they fail as the running one does.
fn end_worker(mut w: Worker, calls: VecDeque<Call>, broken: Option<Broken>, shared: &PoolShared) {
    let Some(broken) = broken else {
        // Retiring or closing: every call was answered.
        debug_assert!(calls.is_empty());
        retire(w);
        return;
    };
    let board = w.board.take();
    // Without a board a worker holds one call, and it ran.
    let ran = |call: &Call| board.as_ref().is_none_or(|b| !b.is_queued(call.seq));
    let mut calls = calls;
    for call in calls.iter_mut().filter(|c| c.job.is_some()) {
        if ran(call) {
            trace(shared, call, false, None, &mut w);
        }
    }
    let (pid, cause, reason) = reap(w);
    // The worker is gone: no call changes on its board any more.
    for call in calls {
        let ran = ran(&call);
        let Some(mut job) = call.job else {
            // Withdrawn: its future was resolved then.
            continue;
        };
        let stop_all = matches!(reason, Some((KillReason::Stopped, _)));
        if !ran && !stop_all {
            // The receiver lives in `shared`, so the send can't fail.
            let _ = shared.tx.send(job);
            continue;
        }
        if let Broken::Protocol(message) = &broken {
            job.deliver.finish(Err(TaskError::Codec {
                task: job.task.to_string(),
                message: message.clone(),
            }));
            continue;
        }
        // The reason is this call's if the worker was killed for it, or
        // for everything it held; a worker killed for a call that had just
        // finished took this one with it, which is a death like any other.
        let reason = reason
            .filter(|(_, target)| target.is_none_or(|seq| seq == call.seq))
            .map(|(why, _)| why);
        if reason.is_none() && job.attempts < shared.config.max_retries {
            job.attempts += 1;
            let _ = shared.tx.send(job);
            continue;
        }
        job.deliver
            .finish(Err(death_error(job.task, pid, cause, reason)));
    }
}
