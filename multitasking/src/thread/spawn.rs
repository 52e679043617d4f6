//! `Thread` and `StopToken`: the seed's `Thread(target, args)` with
//! `start`, `join`, and its global `Stopped` flag done right.
//!
//! The seed stops a worker by setting a global `Stopped = True` that the
//! worker reads between three-second sleeps: the stop waits out a sleep, and
//! the flag is shared by every thread. A [`StopToken`] belongs to one
//! thread, and [`StopToken::sleep`] returns the moment a stop is asked for.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, TaskError};

/// A cooperative stop request, shared by a [`Thread`] and whoever stops it.
#[derive(Clone, Default)]
pub struct StopToken {
    /// The flag, and a condvar to cut sleeps short.
    inner: Arc<(Mutex<bool>, Condvar)>,
}

impl fmt::Debug for StopToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopToken")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl StopToken {
    /// A token that is not stopped.
    pub fn new() -> StopToken {
        StopToken::default()
    }

    /// Asks the thread to stop; wakes it if it sleeps in [`StopToken::sleep`].
    pub fn stop(&self) {
        let (flag, cond) = &*self.inner;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cond.notify_all();
    }

    /// True once a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        *self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleeps for `d`, or less if a stop is asked for meanwhile; true if it
    /// was cut short by a stop.
    pub fn sleep(&self, d: Duration) -> bool {
        let (flag, cond) = &*self.inner;
        let deadline = Instant::now() + d;
        let mut stopped = flag.lock().unwrap_or_else(|p| p.into_inner());
        while !*stopped {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            stopped = cond
                .wait_timeout(stopped, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// The body a thread runs, until started.
type Body<T> = Box<dyn FnOnce(StopToken) -> T + Send>;

/// An OS thread with a name, `start`, `join`, `join_timeout`, `is_alive`
/// and a [`StopToken`], as Python's `threading.Thread`.
///
/// ```
/// use multitasking::Thread;
/// use std::time::Duration;
///
/// let mut t = Thread::new("overwork", |stop| {
///     let mut rounds = 0;
///     while !stop.is_stopped() {
///         rounds += 1;
///         stop.sleep(Duration::from_secs(3)); // cut short by stop()
///     }
///     rounds
/// });
/// t.start().unwrap();
/// t.stop(); // at once, even mid-sleep
/// let rounds = t.join().unwrap();
/// assert!(rounds <= 1);
/// ```
pub struct Thread<T> {
    /// The thread's name.
    name: String,
    /// The body, until `start` takes it.
    body: Option<Body<T>>,
    /// The running thread, from `start` until `join`.
    handle: Option<JoinHandle<T>>,
    /// Set by the thread when its body returns or panics.
    finished: Arc<(Mutex<bool>, Condvar)>,
    /// This thread's stop request.
    stop: StopToken,
}

impl<T: Send + 'static> fmt::Debug for Thread<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Thread")
            .field("name", &self.name)
            .field("started", &self.body.is_none())
            .field("alive", &self.is_alive())
            .finish()
    }
}

impl<T: Send + 'static> Thread<T> {
    /// A thread named `name` that will run `body` when started; `body`
    /// receives the thread's [`StopToken`].
    pub fn new(
        name: impl Into<String>,
        body: impl FnOnce(StopToken) -> T + Send + 'static,
    ) -> Self {
        Thread {
            name: name.into(),
            body: Some(Box::new(body)),
            handle: None,
            finished: Arc::new((Mutex::new(false), Condvar::new())),
            stop: StopToken::new(),
        }
    }

    /// Starts the thread.
    ///
    /// Errors if it was already started, or the OS refuses a thread.
    pub fn start(&mut self) -> Result<(), Error> {
        let body = self
            .body
            .take()
            .ok_or_else(|| Error::Config(format!("thread {} was already started", self.name)))?;
        let stop = self.stop.clone();
        let finished = self.finished.clone();
        let handle = std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || {
                /// Marks the thread finished even if the body panics.
                struct Finish(Arc<(Mutex<bool>, Condvar)>);
                impl Drop for Finish {
                    fn drop(&mut self) {
                        *self.0 .0.lock().unwrap_or_else(|p| p.into_inner()) = true;
                        self.0 .1.notify_all();
                    }
                }
                let _finish = Finish(finished);
                body(stop)
            })
            .map_err(|e| Error::io(format!("starting thread {}", self.name), e))?;
        self.handle = Some(handle);
        Ok(())
    }

    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True between `start` and the end of the body.
    pub fn is_alive(&self) -> bool {
        self.handle.is_some() && !*self.finished.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the thread to stop (see [`StopToken`]).
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// The thread's stop token.
    pub fn stop_token(&self) -> StopToken {
        self.stop.clone()
    }

    /// Waits for the body to return; its panic comes back as
    /// [`TaskError::Panicked`]. A thread never started fails with
    /// [`TaskError::Cancelled`].
    pub fn join(mut self) -> Result<T, TaskError> {
        self.take_join()
    }

    fn take_join(&mut self) -> Result<T, TaskError> {
        match self.handle.take() {
            Some(h) => h.join().map_err(|p| TaskError::from_panic(&self.name, &*p)),
            None => Err(TaskError::Cancelled {
                task: self.name.clone(),
            }),
        }
    }

    /// Waits at most `timeout`: `None` if the body still runs (the thread
    /// keeps its handle and can be joined later).
    pub fn join_timeout(&mut self, timeout: Duration) -> Option<Result<T, TaskError>> {
        if self.handle.is_none() {
            return Some(self.take_join());
        }
        let (flag, cond) = &*self.finished;
        let deadline = Instant::now() + timeout;
        let mut done = flag.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            done = cond
                .wait_timeout(done, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(done);
        Some(self.take_join())
    }
}
