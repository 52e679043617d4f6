//! `TaskFuture<T>`: the handle to one task's outcome, and `Promise<T>`, the
//! executor's side of it.
//!
//! A future moves through the states of [`State`]: pending -> running ->
//! finished, or pending -> cancelled. Every transition is a method here that
//! takes the one lock, checks the current state, and wakes everyone who
//! waits: threads blocked in `result` (a condvar), an async task (a waker),
//! and `wait` / `as_completed` calls (listeners, each a [`Signal`] plus the
//! future's index in that call). Done callbacks run under the lock, in the
//! order they were added; a callback has no handle to its own future, so it
//! can't deadlock on it, and a panicking callback is caught and reported, so
//! it never poisons the future.
//!
//! The state machine is model-checked with loom (see `test.rs`, `--cfg loom`).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::TaskError;
use crate::sync::{lock, spin_for, Arc, AtomicBool, Condvar, Mutex, MutexGuard};

/// How long a waiter spins for the outcome before it parks.
const SPIN: Duration = Duration::from_micros(50);
use crate::wait::Signal;

/// A done callback: runs once with the outcome.
type Callback<T> = Box<dyn FnOnce(&Result<T, TaskError>) + Send>;

/// An executor's handle on a running task: stops its worker (a process
/// executor's `terminate`), and lets a thread that waits for the outcome
/// help it along.
pub trait Terminate: Send + Sync {
    /// Kills the worker that runs the task; true if one was killed.
    fn terminate(&self) -> bool;

    /// Does a little of the executor's work toward the outcome, without
    /// blocking, from a thread that spins waiting for it: a process pool
    /// reads the worker's reply itself rather than wait for its supervisor
    /// thread to hand it over, which on a busy machine costs a context
    /// switch each way. Default: nothing.
    fn progress(&self) {}

    /// A thread starts (`true`) or stops (`false`) spinning on
    /// [`Terminate::progress`] for this task: a process pool's supervisor
    /// then leaves the worker's replies to it. Default: nothing.
    fn helping(&self, _start: bool) {}

    /// Takes back a task that has not started, before its future is
    /// cancelled: false if a worker may already have it, and then the
    /// cancel fails. A cluster asks its broker here, where the worker's
    /// claim and the cancel race and exactly one wins. Default: true (a
    /// local pool checks for the cancel when it starts the task).
    fn withdraw(&self) -> bool {
        true
    }
}

/// Where a task is in its life. Errors are boxed: a `TaskError` is 96
/// bytes, and every future's allocation would carry that room (a batch of
/// 100k futures paid for it in page faults).
enum State<T> {
    /// Queued; `cancel` still succeeds.
    Pending,
    /// A worker has it; `cancel` fails, `terminate` may kill it.
    Running,
    /// It succeeded, and the value has not been taken.
    Finished(T),
    /// It failed, and the error has not been taken.
    Failed(Box<TaskError>),
    /// Cancelled before it ran; done at once (no worker acknowledgement).
    Cancelled,
    /// The outcome was taken by `try_result`, `result_timeout` or an
    /// `.await`; a failure's error is kept for `error`.
    Taken(Option<Box<TaskError>>),
}

impl<T> State<T> {
    fn is_done(&self) -> bool {
        matches!(
            self,
            State::Finished(_) | State::Failed(_) | State::Cancelled | State::Taken(_)
        )
    }

    /// The state that holds `outcome`.
    fn from_outcome(outcome: Result<T, TaskError>) -> State<T> {
        match outcome {
            Ok(v) => State::Finished(v),
            Err(e) => State::Failed(Box::new(e)),
        }
    }
}

/// What ends a future.
enum Outcome<T> {
    /// The task's outcome (or a shutdown's error).
    Done(Result<T, TaskError>),
    /// A cancel before it ran.
    Cancelled,
}

/// Which states a transition to done may leave.
#[derive(Clone, Copy)]
enum FromState {
    /// Any state that is not done: an outcome (or a shutdown) may end a
    /// pending or a running task.
    NotDone,
    /// Only `Pending`: a cancel, which must never end a task that started.
    Pending,
}

/// Everything behind the lock.
struct Inner<T> {
    /// The current state; transitions only through the methods below.
    state: State<T>,
    /// What most futures never need, made on first use: kept out of line
    /// so that a plain future's allocation stays small.
    extras: Option<Box<Extras<T>>>,
    /// The executor's handle to kill the worker running this task (a
    /// std `Arc` even under loom: it is not part of the model).
    control: Option<std::sync::Arc<dyn Terminate>>,
    /// Threads parked on the condvar: a finish with none skips the notify,
    /// which is a system call even when nobody waits.
    sleepers: usize,
}

/// The parts of [`Inner`] that only some futures use.
struct Extras<T> {
    /// Callbacks waiting for the outcome, in the order added; empty once done.
    callbacks: Vec<Callback<T>>,
    /// The async task awaiting this future, if any.
    waker: Option<Waker>,
    /// `wait` / `as_completed` calls to tell, with this future's index there.
    listeners: Vec<(Arc<Signal>, usize)>,
    /// What the task used, when its executor measured it.
    usage: Option<TaskUsage>,
}

impl<T> Inner<T> {
    /// The extras, made if they were not.
    fn extras(&mut self) -> &mut Extras<T> {
        self.extras.get_or_insert_with(|| {
            Box::new(Extras {
                callbacks: Vec::new(),
                waker: None,
                listeners: Vec::new(),
                usage: None,
            })
        })
    }
}

/// What one task used where it ran, as its worker measured it
/// ([`TaskFuture::usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct TaskUsage {
    /// The CPU time of the thread that ran it.
    pub cpu: Duration,
    /// Its own peak resident set in bytes: the worker's high-water mark,
    /// reset before the task began. `None` where it can't be read.
    pub peak_rss: Option<u64>,
    /// The bytes its thread allocated, when the program's global allocator
    /// is [`CountingAlloc`](crate::alloc::CountingAlloc).
    #[serde(default)]
    pub allocated: Option<u64>,
}

/// The allocation a future and its promise share.
struct Shared<T> {
    /// State, callbacks and wakers.
    inner: Mutex<Inner<T>>,
    /// Signalled on every transition to done.
    cond: Condvar,
    /// Set (under the lock) when the future becomes done; read without the
    /// lock by spinning waiters.
    done: AtomicBool,
    /// The task's name, for errors.
    task: &'static str,
    /// Set by [`TaskFuture::cancel_on_drop`]: dropping the future before it
    /// is done cancels or terminates its task.
    cancel_on_drop: AtomicBool,
}

impl<T> Shared<T> {
    /// The one transition to done: if the current state is one `from`
    /// accepts, stores the outcome, runs callbacks in order, and wakes every
    /// waiter, all under the one lock. False (and nothing changes) if the
    /// state was not one `from` accepts.
    fn finish(&self, from: FromState, outcome: Outcome<T>) -> bool {
        let mut inner = lock(&self.inner);
        let allowed = match from {
            FromState::NotDone => !inner.state.is_done(),
            FromState::Pending => matches!(inner.state, State::Pending),
        };
        if !allowed {
            return false;
        }
        // Nothing is left to stop or help.
        inner.control = None;
        let mut extras = inner.extras.take();
        // Callbacks see the outcome by reference before it is stored (no
        // one else can look: the lock is held).
        if let Some(x) = extras.as_mut().filter(|x| !x.callbacks.is_empty()) {
            let cancelled;
            let view = match &outcome {
                Outcome::Done(r) => r,
                Outcome::Cancelled => {
                    cancelled = Err(self.cancelled());
                    &cancelled
                }
            };
            for cb in x.callbacks.drain(..) {
                run_callback(self.task, cb, view);
            }
        }
        inner.state = match outcome {
            Outcome::Done(r) => State::from_outcome(r),
            Outcome::Cancelled => State::Cancelled,
        };
        // Release: pairs with the Acquire in `spin`; the state written above
        // is published by the unlock anyway, this only ends the spin early.
        self.done.store(true, std::sync::atomic::Ordering::Release);
        if let Some(x) = extras.as_mut() {
            for (signal, index) in x.listeners.drain(..) {
                signal.notify(index);
            }
            if let Some(w) = x.waker.take() {
                w.wake();
            }
        }
        // The usage stays for `usage`.
        inner.extras = extras;
        let sleepers = inner.sleepers > 0;
        drop(inner);
        if sleepers {
            self.cond.notify_all();
        }
        true
    }

    /// Takes the outcome out of a done state, leaving `Taken`.
    fn take(&self, inner: &mut Inner<T>) -> Result<T, TaskError> {
        match std::mem::replace(&mut inner.state, State::Taken(None)) {
            State::Finished(v) => Ok(v),
            State::Failed(e) => {
                let error = (*e).clone();
                inner.state = State::Taken(Some(e));
                Err(error)
            }
            State::Cancelled => {
                let e = self.cancelled();
                inner.state = State::Taken(Some(Box::new(e.clone())));
                Err(e)
            }
            State::Taken(e) => {
                inner.state = State::Taken(e);
                Err(TaskError::ResultTaken {
                    task: self.task.to_string(),
                })
            }
            s @ (State::Pending | State::Running) => {
                inner.state = s;
                unreachable!("take on a future that is not done")
            }
        }
    }

    fn cancelled(&self) -> TaskError {
        TaskError::Cancelled {
            task: self.task.to_string(),
        }
    }
}

/// Runs a done callback on the outcome `r`, catching its panic.
fn run_callback<T>(task: &str, cb: Callback<T>, r: &Result<T, TaskError>) {
    if let Err(e) = crate::panic::catch(task, || cb(r)) {
        eprintln!("multitask: a done callback of task {task} panicked: {e}");
    }
}

/// The handle to one task's outcome, as Python's `concurrent.futures.Future`.
///
/// Named `TaskFuture` so that it does not shadow std's `Future` trait, which
/// it implements: `.await` it from any async runtime.
///
/// ```
/// use multitasking::{Executor, ThreadPool};
/// let pool = ThreadPool::builder().max_workers(2).build().unwrap();
/// let fut = pool.spawn(|| 6 * 7).unwrap();
/// assert_eq!(fut.result().unwrap(), 42);
/// ```
pub struct TaskFuture<T> {
    /// Shared with the executor's [`Promise`].
    shared: Arc<Shared<T>>,
}

/// The executor's side of a [`TaskFuture`]: moves it to running and
/// delivers the outcome. Dropping an unfulfilled promise resolves the future
/// with [`TaskError::Shutdown`], so that every future resolves.
pub struct Promise<T> {
    /// Shared with the [`TaskFuture`].
    shared: Arc<Shared<T>>,
}

impl<T> TaskFuture<T> {
    /// A pending future for `task` and the promise that resolves it.
    pub(crate) fn pending(task: &'static str) -> (TaskFuture<T>, Promise<T>) {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                state: State::Pending,
                extras: None,
                control: None,
                sleepers: 0,
            }),
            cond: Condvar::new(),
            done: AtomicBool::new(false),
            task,
            cancel_on_drop: AtomicBool::new(false),
        });
        (
            TaskFuture {
                shared: shared.clone(),
            },
            Promise { shared },
        )
    }

    /// A future that is already done with `outcome`.
    pub(crate) fn ready(task: &'static str, outcome: Result<T, TaskError>) -> TaskFuture<T> {
        let (fut, promise) = TaskFuture::pending(task);
        promise.complete(outcome);
        fut
    }

    /// The task's name.
    pub fn task(&self) -> &'static str {
        self.shared.task
    }

    /// True once the outcome is known: finished, failed or cancelled.
    pub fn done(&self) -> bool {
        lock(&self.shared.inner).state.is_done()
    }

    /// True while a worker runs the task.
    pub fn running(&self) -> bool {
        matches!(lock(&self.shared.inner).state, State::Running)
    }

    /// True if the task was cancelled before it ran.
    pub fn cancelled(&self) -> bool {
        let inner = lock(&self.shared.inner);
        match &inner.state {
            State::Cancelled => true,
            State::Taken(Some(e)) => e.is_cancelled(),
            _ => false,
        }
    }

    /// Cancels the task if it has not started: true if it is (now)
    /// cancelled, false if it runs or ran. As in Python, a running task is
    /// not stopped; see [`TaskFuture::terminate`]. A cancelled future is
    /// done at once: `wait` and `as_completed` see it immediately.
    pub fn cancel(&self) -> bool {
        let control = {
            let inner = lock(&self.shared.inner);
            match inner.state {
                State::Pending => inner.control.clone(),
                State::Cancelled => return true,
                _ => return false,
            }
        };
        // Asked outside the lock: a remote executor's answer takes a round
        // trip, and it may resolve this future itself. A local pool's
        // answer is always yes: its start checks for the cancel.
        if control.is_some_and(|c| !c.withdraw()) {
            return self.cancelled();
        }
        // One step under the lock: either the task is still pending and is
        // now cancelled (a later `set_running` fails, so the body never
        // runs), or it started meanwhile and the cancel fails.
        self.shared.finish(FromState::Pending, Outcome::Cancelled) || self.cancelled()
    }

    /// Makes dropping this future, before it is done, stop its task: a
    /// pending task is cancelled (it never runs) and a running one is
    /// terminated where the executor can kill its worker (processes and the
    /// cluster; a thread runs on). Off by default: as in Python, a future
    /// dropped unread leaves its task to run.
    ///
    /// This is for async callers that give up on a future, with
    /// `tokio::time::timeout` or `select!`: the work they abandoned stops and
    /// frees its worker.
    ///
    /// ```
    /// use multitasking::ThreadPool;
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// let pool = ThreadPool::new(1).unwrap();
    /// let (tx, rx) = std::sync::mpsc::channel::<()>();
    /// let busy = pool.spawn(move || rx.recv()).unwrap(); // holds the one worker
    /// let ran = Arc::new(AtomicBool::new(false));
    /// let r = ran.clone();
    /// let queued = pool.spawn(move || r.store(true, Ordering::SeqCst)).unwrap();
    /// drop(queued.cancel_on_drop()); // still queued: cancelled, never runs
    /// tx.send(()).unwrap();
    /// busy.result().unwrap().unwrap();
    /// drop(pool); // waits for the queue
    /// assert!(!ran.load(Ordering::SeqCst));
    /// ```
    pub fn cancel_on_drop(self) -> Self {
        // Relaxed: read by this future's own drop, on the thread that owns it.
        self.shared
            .cancel_on_drop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Stops a running task by killing the worker process that runs it; the
    /// future fails with [`TaskError::Terminated`]. True if a worker was
    /// killed. Threads can't be killed: on a thread pool this returns false.
    pub fn terminate(&self) -> bool {
        let control = {
            let inner = lock(&self.shared.inner);
            match (&inner.state, &inner.control) {
                (State::Running, Some(c)) => c.clone(),
                _ => return false,
            }
        };
        control.terminate()
    }

    /// Spins briefly for the outcome, helping the executor along (see
    /// [`Terminate::progress`]); true if it is known.
    fn spin(&self) -> bool {
        let done = || self.shared.done.load(std::sync::atomic::Ordering::Acquire);
        if done() {
            return true;
        }
        let helper = lock(&self.shared.inner).control.clone();
        match helper {
            None => spin_for(SPIN, done),
            Some(h) => {
                h.helping(true);
                let finished = spin_for(SPIN, || {
                    done() || {
                        h.progress();
                        done()
                    }
                });
                h.helping(false);
                finished
            }
        }
    }

    /// Blocks until the outcome is known and returns it.
    pub fn result(self) -> Result<T, TaskError> {
        let mut inner = self.block(None);
        self.shared.take(&mut inner)
    }

    /// Waits at most `timeout` for the outcome: `None` if it is not known by
    /// then (the task goes on: on a thread pool nothing can stop it), else
    /// the outcome, taken out of the future.
    pub fn result_timeout(&self, timeout: Duration) -> Option<Result<T, TaskError>> {
        let mut inner = self.block(Some(Instant::now() + timeout));
        if inner.state.is_done() {
            Some(self.shared.take(&mut inner))
        } else {
            None
        }
    }

    /// The outcome if it is known (taken out of the future), else `None`.
    pub fn try_result(&self) -> Option<Result<T, TaskError>> {
        let mut inner = lock(&self.shared.inner);
        if inner.state.is_done() {
            Some(self.shared.take(&mut inner))
        } else {
            None
        }
    }

    /// Blocks until done.
    pub fn wait(&self) {
        drop(self.block(None));
    }

    /// Blocks until done, at most `timeout`; true if done.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.block(Some(Instant::now() + timeout)).state.is_done()
    }

    /// Spins briefly, then waits on the condvar until the future is done or
    /// `deadline` passes; the guard, done or not.
    fn block(&self, deadline: Option<Instant>) -> MutexGuard<'_, Inner<T>> {
        self.spin();
        let mut inner = lock(&self.shared.inner);
        while !inner.state.is_done() {
            let left = match deadline {
                None => None,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    Some(d - now)
                }
            };
            inner.sleepers += 1;
            inner = match left {
                None => match self.shared.cond.wait(inner) {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                },
                Some(left) => match self.shared.cond.wait_timeout(inner, left) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                },
            };
            inner.sleepers -= 1;
        }
        inner
    }

    /// What the task used (CPU time, peak RSS) where it ran, once done, if
    /// its executor measured it: a process pool built with
    /// [`measure_usage`](crate::ProcessPoolBuilder::measure_usage) or
    /// traced, and a cluster whose workers measure
    /// ([`WorkerBuilder::measure_usage`](crate::cluster::WorkerBuilder::measure_usage)).
    /// `None` otherwise, and on thread pools (their traces carry CPU time).
    ///
    /// ```
    /// # #[multitasking::task]
    /// # fn burn(n: u64) -> u64 { (0..n).fold(0, |a, x| a ^ x.wrapping_mul(31)) }
    /// # #[multitasking::main]
    /// # fn main() {
    /// use multitasking::{Executor, ProcessPool};
    /// let pool = ProcessPool::builder().max_workers(1).measure_usage(true).build().unwrap();
    /// let fut = pool.submit(burn, 1_000_000).unwrap();
    /// fut.wait();
    /// let used = fut.usage().expect("measured");
    /// assert!(used.cpu > std::time::Duration::ZERO);
    /// # }
    /// ```
    pub fn usage(&self) -> Option<TaskUsage> {
        lock(&self.shared.inner)
            .extras
            .as_ref()
            .and_then(|x| x.usage)
    }

    /// The error, if the task is done and failed (or was cancelled); `None`
    /// while it runs or if it succeeded. Python's `exception()`, without the
    /// wait: call [`TaskFuture::wait_timeout`] first to wait.
    pub fn error(&self) -> Option<TaskError> {
        let inner = lock(&self.shared.inner);
        match &inner.state {
            State::Failed(e) => Some((**e).clone()),
            State::Cancelled => Some(self.shared.cancelled()),
            State::Taken(e) => e.as_deref().cloned(),
            _ => None,
        }
    }

    /// Runs `f` with the outcome once it is known, in the order callbacks
    /// were added; at once (on this thread) if it is already known. A
    /// panicking callback is caught and reported on stderr; the future is
    /// not affected.
    ///
    /// `f` gets the outcome by reference, without a copy, while this
    /// future's own lock is held: it may use the pool and other futures
    /// freely (executors resolve futures outside their own locks), but it
    /// must not call methods of this same future, which would wait for
    /// itself.
    pub fn add_done_callback(&self, f: impl FnOnce(&Result<T, TaskError>) + Send + 'static) {
        let mut inner = lock(&self.shared.inner);
        let task = self.shared.task;
        match std::mem::replace(&mut inner.state, State::Taken(None)) {
            // Lent to `f` and put back, under the lock: no one sees it go.
            State::Finished(v) => {
                let r = Ok(v);
                run_callback(task, Box::new(f), &r);
                inner.state = State::from_outcome(r);
            }
            State::Failed(e) => {
                let r = Err(*e);
                run_callback(task, Box::new(f), &r);
                inner.state = State::from_outcome(r);
            }
            State::Cancelled => {
                inner.state = State::Cancelled;
                run_callback(task, Box::new(f), &Err(self.shared.cancelled()));
            }
            State::Taken(e) => {
                let r = Err(e
                    .as_deref()
                    .cloned()
                    .unwrap_or_else(|| TaskError::ResultTaken {
                        task: task.to_string(),
                    }));
                inner.state = State::Taken(e);
                run_callback(task, Box::new(f), &r);
            }
            s @ (State::Pending | State::Running) => {
                inner.state = s;
                inner.extras().callbacks.push(Box::new(f));
            }
        }
    }
}

/// A future that `wait` and `as_completed` can watch, whatever its output.
pub trait Waitable {
    /// True once the outcome is known.
    fn is_done(&self) -> bool;
    /// Registers `signal` to hear, with `index`, when this is done; true if
    /// it is already done (then nothing is registered).
    #[doc(hidden)]
    fn listen(&self, signal: &Arc<Signal>, index: usize) -> bool;
    /// Removes a registration made by `listen`.
    #[doc(hidden)]
    fn unlisten(&self, signal: &Arc<Signal>);
    /// True if the task finished with an error. A cancelled task did not
    /// fail: as in Python, `wait(FirstException)` does not return for it.
    fn failed(&self) -> bool;
}

impl<T> Waitable for TaskFuture<T> {
    fn is_done(&self) -> bool {
        self.done()
    }

    fn listen(&self, signal: &Arc<Signal>, index: usize) -> bool {
        let mut inner = lock(&self.shared.inner);
        if inner.state.is_done() {
            return true;
        }
        inner.extras().listeners.push((signal.clone(), index));
        false
    }

    fn unlisten(&self, signal: &Arc<Signal>) {
        let mut inner = lock(&self.shared.inner);
        if let Some(x) = inner.extras.as_mut() {
            x.listeners.retain(|(s, _)| !Arc::ptr_eq(s, signal));
        }
    }

    fn failed(&self) -> bool {
        let inner = lock(&self.shared.inner);
        match &inner.state {
            State::Failed(_) => true,
            State::Taken(Some(e)) => !e.is_cancelled(),
            _ => false,
        }
    }
}

impl<T> std::future::Future for TaskFuture<T> {
    type Output = Result<T, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = lock(&self.shared.inner);
        if inner.state.is_done() {
            return Poll::Ready(self.shared.take(&mut inner));
        }
        let waker = &mut inner.extras().waker;
        match waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> Drop for TaskFuture<T> {
    fn drop(&mut self) {
        // Relaxed: written by `cancel_on_drop` through this same handle.
        let stop = self
            .shared
            .cancel_on_drop
            .load(std::sync::atomic::Ordering::Relaxed);
        if stop && !self.shared.done.load(std::sync::atomic::Ordering::Acquire) && !self.cancel() {
            self.terminate();
        }
    }
}

impl<T> fmt::Debug for TaskFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = lock(&self.shared.inner);
        let state = match &inner.state {
            State::Pending => "pending",
            State::Running => "running",
            State::Finished(_) => "finished",
            State::Failed(_) => "failed",
            State::Cancelled => "cancelled",
            State::Taken(_) => "taken",
        };
        f.debug_struct("TaskFuture")
            .field("task", &self.shared.task)
            .field("state", &state)
            .finish()
    }
}

impl<T> Promise<T> {
    /// The task's name.
    pub fn task(&self) -> &'static str {
        self.shared.task
    }

    /// Moves the future to running: false if it was cancelled (then the
    /// executor must not run the task). The cancel and this start take the
    /// same lock, so exactly one of them wins.
    #[must_use = "a false start means the task was cancelled and must not run"]
    pub fn set_running(&self) -> bool {
        let mut inner = lock(&self.shared.inner);
        match inner.state {
            State::Pending => {
                inner.state = State::Running;
                true
            }
            _ => false,
        }
    }

    /// True if the future was cancelled. Cheap for a future that is not
    /// done (no lock), so that an executor may poll many.
    pub fn is_cancelled(&self) -> bool {
        // Acquire: pairs with the Release in `finish`; a cancelled future
        // is done first.
        self.shared.done.load(std::sync::atomic::Ordering::Acquire)
            && matches!(lock(&self.shared.inner).state, State::Cancelled)
    }

    /// Gives the future a way to kill the worker that runs it.
    pub fn set_terminate(&self, control: std::sync::Arc<dyn Terminate>) {
        lock(&self.shared.inner).control = Some(control);
    }

    /// Records what the task used, for [`TaskFuture::usage`]; call it
    /// before [`Promise::complete`], so that whoever sees the outcome sees
    /// the usage.
    pub fn set_usage(&self, usage: TaskUsage) {
        lock(&self.shared.inner).extras().usage = Some(usage);
    }

    /// Delivers the outcome; false if the future was already done
    /// (cancelled), in which case the outcome is dropped.
    pub fn complete(self, outcome: Result<T, TaskError>) -> bool {
        self.shared
            .finish(FromState::NotDone, Outcome::Done(outcome))
    }

    /// Cancels the future from the executor's side (shutdown with
    /// `cancel_futures`); false if it was already running or done.
    pub fn cancel(self) -> bool {
        self.shared.finish(FromState::Pending, Outcome::Cancelled)
    }
}

impl<T> Drop for Promise<T> {
    fn drop(&mut self) {
        // A promise dropped unfulfilled (its executor shut down, or a worker
        // thread unwound) must still resolve its future.
        let task = self.shared.task;
        self.shared.finish(
            FromState::NotDone,
            Outcome::Done(Err(TaskError::Shutdown {
                task: task.to_string(),
            })),
        );
    }
}

impl<T> fmt::Debug for Promise<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Promise")
            .field("task", &self.shared.task)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    /// What a callback added now sees, as text.
    fn late_view<T: fmt::Debug + Send + 'static>(fut: &TaskFuture<T>) -> String {
        let seen = std::sync::Arc::new(StdMutex::new(String::new()));
        let out = seen.clone();
        fut.add_done_callback(move |r| *out.lock().unwrap() = format!("{r:?}"));
        let s = seen.lock().unwrap().clone();
        s
    }

    #[test]
    fn every_done_state_keeps_its_outcome_for_late_callbacks_and_the_result() {
        // A value: lent to a late callback and still there for `result`.
        let (fut, promise) = TaskFuture::<String>::pending("t");
        promise.complete(Ok("v".into()));
        assert_eq!(late_view(&fut), r#"Ok("v")"#);
        assert_eq!((fut.error(), fut.failed()), (None, false));
        assert_eq!(fut.try_result().unwrap(), Ok("v".to_string()));
        assert!(late_view(&fut).contains("ResultTaken"));

        // An error: the same error for callbacks, `error` and `result`,
        // and kept for `error` once taken.
        let (fut, promise) = TaskFuture::<String>::pending("t");
        let err = TaskError::Shutdown { task: "t".into() };
        promise.complete(Err(err.clone()));
        assert_eq!(late_view(&fut), format!("Err({err:?})"));
        assert_eq!((fut.error(), fut.failed()), (Some(err.clone()), true));
        assert_eq!(fut.try_result().unwrap(), Err(err.clone()));
        assert_eq!((fut.error(), fut.failed()), (Some(err.clone()), true));
        assert_eq!(late_view(&fut), format!("Err({err:?})"));

        // Cancelled: not a failure, as in Python.
        let (fut, promise) = TaskFuture::<String>::pending("t");
        assert!(promise.cancel());
        assert!(late_view(&fut).contains("Cancelled"));
        assert!(fut.cancelled() && !fut.failed());
        assert!(fut.try_result().unwrap().is_err_and(|e| e.is_cancelled()));
        assert!(fut.cancelled() && !fut.failed());
    }

    #[test]
    fn callbacks_added_before_see_the_outcome_once_and_usage_stays() {
        let (fut, promise) = TaskFuture::<u64>::pending("t");
        let seen = std::sync::Arc::new(StdMutex::new(Vec::new()));
        for i in 0..3 {
            let seen = seen.clone();
            fut.add_done_callback(move |r| seen.lock().unwrap().push((i, r.clone())));
        }
        let usage = TaskUsage {
            cpu: Duration::from_millis(3),
            peak_rss: Some(1),
            allocated: None,
        };
        promise.set_usage(usage);
        promise.complete(Ok(7));
        assert_eq!(*seen.lock().unwrap(), [(0, Ok(7)), (1, Ok(7)), (2, Ok(7))]);
        assert_eq!(fut.usage(), Some(usage));
        assert_eq!(fut.result(), Ok(7));
    }

    #[test]
    fn a_plain_future_stays_small() {
        // Errors and the rarely used parts live out of line; a batch of
        // 100k futures allocates what this says, per future.
        assert!(
            std::mem::size_of::<Shared<u64>>() <= 96,
            "{}",
            std::mem::size_of::<Shared<u64>>()
        );
    }
}
