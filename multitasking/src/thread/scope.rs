//! `ThreadPool::scope`: closures that borrow the caller's locals, run on the
//! pool's worker threads, all finished before the scope returns, as
//! `std::thread::scope` and `rayon::scope` allow.
//!
//! A scoped job is an ordinary pool job whose closure may borrow for
//! `'scope`. Each carries a ticket; the scope counts the tickets out and
//! waits, before it returns or unwinds, until every one is back: a ticket
//! comes back when its job's closure has been dropped, run or not (cancelled
//! futures and a pool shut down with `cancel_futures` drop it unrun). No
//! closure, and nothing it borrowed, is touched after that. A task that
//! panicked fails its own future with [`TaskError::Panicked`], and once all
//! are done the scope panics with the first such error, so a panic is never
//! lost (rayon's rule).

use std::marker::PhantomData;
use std::sync::{Arc, Condvar, Mutex};

use super::job::JobFn;
use super::pool::{settle, BoxedRun, Go, PoolShared, ThreadPool};
use crate::error::TaskError;
use crate::future::TaskFuture;

/// A job that may borrow for `'a`: [`Run`] before its bound is erased.
type ScopedRun<'a> = Box<dyn FnOnce(Go, &mut dyn FnMut(bool)) + Send + 'a>;

/// What a scope and its jobs share.
#[derive(Default)]
struct ScopeState {
    /// Jobs whose closure has not been dropped yet.
    left: Mutex<usize>,
    /// Signalled when `left` reaches zero.
    cond: Condvar,
    /// The first panic of a task in the scope.
    panic: Mutex<Option<TaskError>>,
}

impl ScopeState {
    fn lock_left(&self) -> std::sync::MutexGuard<'_, usize> {
        self.left.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until every job's closure is gone.
    fn wait_all(&self) {
        let mut left = self.lock_left();
        while *left > 0 {
            left = self.cond.wait(left).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Counts one job out of its scope; dropping it counts the job back in.
struct Ticket(Arc<ScopeState>);

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut left = self.0.lock_left();
        *left -= 1;
        if *left == 0 {
            self.0.cond.notify_all();
        }
    }
}

/// A job and its ticket. Fields drop in declaration order: the closure (and
/// everything it borrowed) before the ticket that lets the scope return.
struct Guarded {
    /// The job; `None` once it ran.
    job: Option<BoxedRun>,
    /// Given back last.
    _ticket: Ticket,
}

/// Spawns closures that borrow from outside the scope; see
/// [`ThreadPool::scope`].
pub struct Scope<'scope> {
    /// The pool the jobs run on.
    pool: Arc<PoolShared>,
    /// Shared with each job's ticket.
    state: Arc<ScopeState>,
    /// Invariant in `'scope`, as `std::thread::Scope` is: the borrows a
    /// job may hold can neither shrink nor grow.
    _borrows: PhantomData<&'scope mut &'scope ()>,
}

impl std::fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("left", &*self.state.lock_left())
            .finish_non_exhaustive()
    }
}

impl<'scope> Scope<'scope> {
    /// Runs `f` on one of the pool's workers; it may borrow anything that
    /// outlives the scope. The future resolves with `f`'s value, or with
    /// [`TaskError::Panicked`]; after a shutdown, at once with
    /// [`TaskError::Shutdown`].
    pub fn spawn<F, T>(&self, f: F) -> TaskFuture<T>
    where
        F: FnOnce() -> T + Send + 'scope,
        T: Send + 'scope,
    {
        let name = std::any::type_name::<F>();
        let (fut, promise) = TaskFuture::pending(name);
        let state = self.state.clone();
        let sent = self.pool.send(
            name,
            f,
            |_| None,
            |f| {
                *state.lock_left() += 1;
                let panics = state.clone();
                let job: ScopedRun<'scope> = Box::new(move |go, done| {
                    settle(promise, go, done, || {
                        let outcome = crate::panic::catch(name, f);
                        if let Err(e) = &outcome {
                            let mut first = panics.panic.lock().unwrap_or_else(|p| p.into_inner());
                            first.get_or_insert_with(|| e.clone());
                        }
                        outcome
                    })
                });
                // SAFETY: this only erases the `'scope` bound of the closure
                // (same type, same layout). The closure never outlives
                // `'scope`: its ticket is counted out above, given back only
                // after the closure is dropped (`Guarded`'s field order), and
                // `ThreadPool::scope` does not return or unwind before every
                // ticket is back; `'scope` outlives that call, being a lifetime
                // parameter of it.
                let job: BoxedRun = unsafe { erase(job) };
                let guarded = Guarded {
                    job: Some(job),
                    _ticket: Ticket(state),
                };
                JobFn::new(move |go, done| {
                    let mut guarded = guarded;
                    if let Some(job) = guarded.job.take() {
                        job(go, done);
                    }
                })
            },
        );
        match sent {
            Ok(()) => fut,
            Err(refused) => TaskFuture::ready(name, Err(refused.error)),
        }
    }
}

/// Erases the lifetime bound of a job.
///
/// # Safety
///
/// The caller must not let the job, nor anything it borrows, be used after
/// `'a` ends.
unsafe fn erase(job: ScopedRun<'_>) -> BoxedRun {
    // SAFETY: the two types differ only in the trait object's lifetime
    // bound; the caller upholds it.
    unsafe { std::mem::transmute(job) }
}

impl ThreadPool {
    /// Runs `f` with a [`Scope`] whose jobs may borrow the caller's locals,
    /// and returns once every job it spawned is done, as
    /// `std::thread::scope` does, but on this pool's workers: what Python's
    /// `with ThreadPoolExecutor() as ex:` block is to a Rust user.
    ///
    /// # Panics
    ///
    /// If a job panicked, after all are done, with that job's
    /// [`TaskError::Panicked`] (the first one, if several did); if `f`
    /// itself panics, after all jobs are done, with `f`'s panic.
    ///
    /// A scope opened inside a task of the same pool holds that worker
    /// while it waits: with every worker waiting so, no job could run.
    ///
    /// ```
    /// use multitasking::ThreadPool;
    /// let pool = ThreadPool::new(2).unwrap();
    /// let words = vec!["alpha".to_string(), "beta".to_string()];
    /// let mut lengths = vec![0; words.len()];
    /// pool.scope(|s| {
    ///     for (word, len) in words.iter().zip(lengths.iter_mut()) {
    ///         s.spawn(move || *len = word.len()); // borrows both
    ///     }
    /// });
    /// assert_eq!(lengths, vec![5, 4]);
    /// ```
    pub fn scope<'scope, R>(&self, f: impl FnOnce(&Scope<'scope>) -> R) -> R {
        let scope = Scope {
            pool: self.shared().clone(),
            state: Arc::new(ScopeState::default()),
            _borrows: PhantomData,
        };
        let body = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&scope)));
        // Subtle: even when `f` panicked, no job may outlive this call.
        scope.state.wait_all();
        let r = match body {
            Ok(r) => r,
            Err(payload) => std::panic::resume_unwind(payload),
        };
        let first = scope
            .state
            .panic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(e) = first {
            panic!("{e}");
        }
        r
    }
}
