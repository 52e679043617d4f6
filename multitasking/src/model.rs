//! Loom model checks of the future state machine and `wait`: every
//! interleaving of completion, cancellation, callbacks and waiters.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p multitasking --lib --release model`
//! (the test command does).

use std::sync::atomic::{AtomicUsize, Ordering};

use loom::thread;

use crate::error::TaskError;
use crate::future::TaskFuture;
use crate::sync::Arc;
use crate::wait::{wait, ReturnWhen};

#[test]
fn complete_races_cancel() {
    loom::model(|| {
        let (fut, promise) = TaskFuture::<u32>::pending("t");
        let t = thread::spawn(move || {
            if promise.set_running() {
                promise.complete(Ok(7));
            }
        });
        let cancelled = fut.cancel();
        t.join().unwrap();
        let outcome = fut.result();
        if cancelled {
            assert!(matches!(outcome, Err(TaskError::Cancelled { .. })));
        } else {
            assert_eq!(outcome, Ok(7));
        }
    });
}

/// The promise of `cancel`: true means the task body never runs. A worker's
/// start (`set_running`, then the body) races the caller's cancel; in every
/// interleaving exactly one wins.
#[test]
fn cancel_true_means_the_body_never_ran() {
    loom::model(|| {
        let (fut, promise) = TaskFuture::<u32>::pending("t");
        let ran = Arc::new(loom::sync::atomic::AtomicBool::new(false));
        let r = ran.clone();
        let t = thread::spawn(move || {
            if promise.set_running() {
                r.store(true, Ordering::SeqCst);
                promise.complete(Ok(7));
            }
        });
        let cancelled = fut.cancel();
        t.join().unwrap();
        assert_eq!(cancelled, !ran.load(Ordering::SeqCst));
        assert_eq!(cancelled, fut.cancelled());
    });
}

/// A cancel races a start whose worker then unwinds (its promise dropped
/// unfulfilled): the future is cancelled or fails with `Shutdown`, never
/// both, and a true cancel means the body never ran.
#[test]
fn cancel_races_a_start_that_unwinds() {
    loom::model(|| {
        let (fut, promise) = TaskFuture::<u32>::pending("t");
        let promise = Arc::new(promise);
        let p = promise.clone();
        let ran = Arc::new(loom::sync::atomic::AtomicBool::new(false));
        let r = ran.clone();
        let t = thread::spawn(move || {
            if p.set_running() {
                r.store(true, Ordering::SeqCst);
            }
        });
        let cancelled = fut.cancel();
        t.join().unwrap();
        assert_eq!(cancelled, !ran.load(Ordering::SeqCst));
        drop(promise);
        let outcome = fut.result();
        if cancelled {
            assert!(matches!(outcome, Err(TaskError::Cancelled { .. })));
        } else {
            // Started, then its promise went away unfulfilled.
            assert!(matches!(outcome, Err(TaskError::Shutdown { .. })));
        }
    });
}

#[test]
fn result_never_misses_completion() {
    loom::model(|| {
        let (fut, promise) = TaskFuture::<u32>::pending("t");
        let t = thread::spawn(move || {
            assert!(promise.set_running());
            promise.complete(Ok(1));
        });
        assert_eq!(fut.result(), Ok(1));
        t.join().unwrap();
    });
}

#[test]
fn callback_runs_exactly_once() {
    loom::model(|| {
        let (fut, promise) = TaskFuture::<u32>::pending("t");
        let runs = Arc::new(AtomicUsize::new(0));
        let t = thread::spawn(move || {
            promise.complete(Ok(3));
        });
        let r = runs.clone();
        fut.add_done_callback(move |out| {
            assert_eq!(*out, Ok(3));
            r.fetch_add(1, Ordering::SeqCst);
        });
        t.join().unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn wait_sees_completion_from_another_thread() {
    loom::model(|| {
        let (a, pa) = TaskFuture::<u32>::pending("a");
        let (b, _pb) = TaskFuture::<u32>::pending("b");
        let t = thread::spawn(move || {
            pa.complete(Ok(1));
        });
        let futs = [a, b];
        let (done, not_done) = wait(&futs, ReturnWhen::FirstCompleted, None);
        assert_eq!(done, vec![0]);
        assert_eq!(not_done, vec![1]);
        t.join().unwrap();
    });
}

#[test]
fn dropped_promise_resolves() {
    loom::model(|| {
        let (fut, promise) = TaskFuture::<u32>::pending("t");
        let t = thread::spawn(move || drop(promise));
        assert!(matches!(fut.result(), Err(TaskError::Shutdown { .. })));
        t.join().unwrap();
    });
}
