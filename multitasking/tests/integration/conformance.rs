//! The executor conformance suite: every semantic of the design that an
//! executor must honour, written once and run over each executor by the
//! `conformance!` macro.
//!
//! Every wait is bounded by `LIMIT`: a hang fails with a message.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use multitasking::{
    as_completed, wait, Executor, ProcessPool, ReturnWhen, SerialExecutor, Shutdown, TaskError,
    TaskFuture, ThreadPool,
};

use crate::tasks::{add, boom, double, flaky, mark, marks, noop, sleep_ms};

/// The bound on every wait in this suite.
pub(crate) const LIMIT: Duration = Duration::from_secs(30);

/// Waits for `fut` at most `LIMIT`.
pub(crate) fn get<T>(fut: &TaskFuture<T>) -> Result<T, TaskError> {
    fut.result_timeout(LIMIT)
        .unwrap_or_else(|| panic!("task {} hung for {LIMIT:?}", fut.task()))
}

/// What an executor can do, for the cases that need it.
#[derive(Clone, Copy)]
pub(crate) struct Caps {
    /// Tasks can wait in a queue (false for serial: it runs at submit).
    pub(crate) queues: bool,
}

pub(crate) fn submit_returns_value<E: Executor>(ex: &E) {
    let f = ex.submit(double, 21).expect("submit");
    assert_eq!(get(&f), Ok(42));
    assert!(f.done());
    let g = ex.submit(add, (40, 2)).expect("submit");
    assert_eq!(g.result(), Ok(42));
}

pub(crate) fn panic_is_a_value_and_pool_goes_on<E: Executor>(ex: &E) {
    let f = ex.submit(boom, "kaboom 17".to_string()).expect("submit");
    match get(&f) {
        Err(TaskError::Panicked { task, message, .. }) => {
            assert!(task.ends_with("boom"), "{task}");
            assert_eq!(message, "kaboom 17");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    assert!(f.error().is_some_and(|e| e.is_panic()));
    let g = ex.submit(double, 5).expect("the pool goes on");
    assert_eq!(get(&g), Ok(10));
}

pub(crate) fn submit_after_shutdown_hands_input_back<E: Executor>(ex: &E) {
    ex.shutdown(Shutdown::default());
    let e = ex.submit(double, 99).expect_err("submit after shutdown");
    assert!(
        matches!(e.error, TaskError::Shutdown { .. }),
        "{:?}",
        e.error
    );
    assert_eq!(e.into_input(), 99);
    let e = ex
        .submit_chunk(double, vec![1, 2])
        .expect_err("chunk after shutdown");
    assert_eq!(e.input, vec![1, 2]);
    // Idempotent.
    ex.shutdown(Shutdown::default());
}

/// Fills every worker with a sleeper so that the next task waits.
fn occupy<E: Executor>(ex: &E, ms: u64) -> Vec<TaskFuture<u64>> {
    (0..ex.max_workers())
        .map(|_| ex.submit(sleep_ms, ms).expect("submit"))
        .collect()
}

/// Waits until every future in `futs` runs (bounded).
pub(crate) fn until_running(futs: &[TaskFuture<u64>]) {
    let deadline = Instant::now() + LIMIT;
    while !futs.iter().all(|f| f.running() || f.done()) {
        assert!(
            Instant::now() < deadline,
            "workers never started the sleepers"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub(crate) fn cancel_pending_is_done_at_once<E: Executor>(ex: &E, caps: Caps) {
    if !caps.queues {
        let f = ex.submit(double, 1).expect("submit");
        assert!(!f.cancel(), "a finished task can't be cancelled");
        assert!(!f.cancelled());
        return;
    }
    let busy = occupy(ex, 400);
    until_running(&busy);
    let pending = ex.submit(double, 7).expect("submit");
    assert!(!pending.running());
    assert!(pending.cancel(), "a pending task cancels");
    assert!(pending.cancel(), "cancel is idempotent");
    assert!(pending.cancelled() && pending.done());
    // A cancelled future is done at once: wait sees it without a worker.
    let t = Instant::now();
    let (done, _) = wait(
        std::slice::from_ref(&pending),
        ReturnWhen::FirstCompleted,
        Some(LIMIT),
    );
    assert_eq!(done, vec![0]);
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert!(matches!(get(&pending), Err(TaskError::Cancelled { .. })));
    // A running task can't be cancelled.
    assert!(!busy[0].cancel());
    for f in &busy {
        assert_eq!(get(f), Ok(400));
    }
}

/// `cancel()` true means the body never runs: tasks race their cancels
/// (some still queued, some just taken by a worker), and the side effects
/// must match the cancels that failed, exactly.
pub(crate) fn cancel_true_means_it_never_ran<E: Executor>(ex: &E) {
    let path = std::env::temp_dir().join(format!(
        "multitasking-cancel-{}-{:?}.marks",
        std::process::id(),
        std::thread::current().id()
    ));
    let path = path.to_string_lossy().into_owned();
    let _ = std::fs::remove_file(&path);
    let mut expected = Vec::new();
    let mut futs = Vec::new();
    for id in 0..300u64 {
        let f = ex.submit(mark, (path.clone(), id)).expect("submit");
        futs.push((id, f));
        // Cancel a few submits back, so that some have just been taken.
        if futs.len() > 3 {
            let (id, f) = futs.remove(0);
            if !f.cancel() {
                expected.push(id);
            }
            assert!(f.wait_timeout(LIMIT), "task {id} hung");
        }
    }
    for (id, f) in futs {
        assert!(matches!(get(&f), Ok(i) if i == id));
        expected.push(id);
    }
    expected.sort_unstable();
    let ran = marks(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        ran.len(),
        expected.len(),
        "{} tasks ran but only {} cancels failed",
        ran.len(),
        expected.len()
    );
    assert_eq!(
        ran, expected,
        "the tasks that ran are not those whose cancel failed"
    );
}

pub(crate) fn map_in_order_and_keeps_going<E: Executor>(ex: &E) {
    let out: Vec<_> = ex.map(flaky, 0..50u64).collect();
    assert_eq!(out.len(), 50);
    for (x, r) in (0..50u64).zip(&out) {
        if x % 7 == 3 {
            assert!(
                matches!(r, Err(TaskError::Panicked { message, .. }) if *message == format!("flaky input {x}")),
                "{x}: {r:?}"
            );
        } else {
            assert_eq!(*r, Ok(x + 1));
        }
    }
    let sized: Vec<u64> = ex
        .map(double, vec![3u64; 1000])
        .chunksize(64)
        .map(Result::unwrap)
        .collect();
    assert_eq!(sized, vec![6; 1000]);
}

pub(crate) fn map_unordered_yields_everything<E: Executor>(ex: &E) {
    let mut out: Vec<u64> = ex
        .map_unordered(double, (0..200u64).filter(|_| true))
        .map(Result::unwrap)
        .collect();
    out.sort_unstable();
    assert_eq!(out, (0..200u64).map(|x| x * 2).collect::<Vec<_>>());
}

pub(crate) fn map_is_lazy<E: Executor>(ex: &E) {
    let pulled = Rc::new(Cell::new(0usize));
    let p = pulled.clone();
    let input = (0..10_000_000u64).inspect(move |_| p.set(p.get() + 1));
    let mut m = ex.map(noop, input).chunksize(4).window(3);
    assert_eq!(pulled.get(), 0, "nothing is read before the first next");
    for i in 0..5u64 {
        assert_eq!(m.next(), Some(Ok(i)));
    }
    assert!(
        pulled.get() <= 4 * 3 + 4,
        "read {} items to yield 5: the map is not lazy",
        pulled.get()
    );
}

pub(crate) fn map_timeout_ends_and_cancels<E: Executor>(ex: &E, caps: Caps) {
    if !caps.queues {
        return;
    }
    let t = Instant::now();
    let out: Vec<_> = ex
        .map(sleep_ms, vec![300u64; 4 * ex.max_workers() + 4])
        .chunksize(1)
        .timeout(Duration::from_millis(100))
        .collect();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        matches!(out.last(), Some(Err(TaskError::TimedOut { .. }))),
        "{out:?}"
    );
    assert_eq!(out.iter().filter(|r| r.is_err()).count(), 1);
}

pub(crate) fn wait_modes<E: Executor>(ex: &E, caps: Caps) {
    let futs: Vec<_> = (0..6u64).map(|i| ex.submit(double, i).unwrap()).collect();
    let (done, not_done) = wait(&futs, ReturnWhen::AllCompleted, Some(LIMIT));
    assert_eq!(done, (0..6).collect::<Vec<_>>());
    assert!(not_done.is_empty());

    let failing = vec![
        ex.submit(boom, "first".into()).unwrap(),
        ex.submit(double, 1).unwrap(),
    ];
    let (done, _) = wait(&failing, ReturnWhen::FirstException, Some(LIMIT));
    assert!(done.contains(&0));

    // FirstCompleted needs a second worker to finish the fast one first.
    if caps.queues && ex.max_workers() >= 2 {
        let slow = ex.submit(sleep_ms, 2_000).unwrap();
        let (done, not_done) = wait(
            std::slice::from_ref(&slow),
            ReturnWhen::AllCompleted,
            Some(Duration::from_millis(50)),
        );
        assert!(done.is_empty() && not_done == vec![0], "the wait timed out");
        let fast = ex.submit(double, 2).unwrap();
        let pair = [slow, fast];
        let (done, not_done) = wait(&pair, ReturnWhen::FirstCompleted, Some(LIMIT));
        assert_eq!((done, not_done), (vec![1], vec![0]));
        let [slow, _] = pair;
        slow.cancel();
        let _ = get(&slow);
    }
}

pub(crate) fn as_completed_yields_all<E: Executor>(ex: &E, caps: Caps) {
    let futs: Vec<_> = (0..20u64).map(|i| ex.submit(double, i).unwrap()).collect();
    let mut sum = 0;
    for f in as_completed(futs, Some(LIMIT)) {
        let f = f.expect("in time");
        assert!(f.done());
        sum += get(&f).unwrap();
    }
    assert_eq!(sum, (0..20u64).map(|x| x * 2).sum::<u64>());

    if caps.queues {
        let futs = vec![
            ex.submit(double, 1).unwrap(),
            ex.submit(sleep_ms, 3_000).unwrap(),
        ];
        let mut it = as_completed(futs, Some(Duration::from_millis(500)));
        let first = it.next().unwrap().expect("the fast one");
        assert_eq!(get(&first), Ok(2));
        let timeout = it.next().unwrap().expect_err("the slow one times out");
        assert_eq!(timeout.pending.len(), 1);
        assert!(it.next().is_none());
        timeout.pending[0].cancel();
    }
}

pub(crate) fn callbacks_run_in_order_and_panics_are_contained<E: Executor>(ex: &E) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let f = ex.submit(sleep_ms, 50).unwrap();
    for i in 0..3 {
        let seen = seen.clone();
        f.add_done_callback(move |r| seen.lock().unwrap().push((i, r.clone())));
        if i == 1 {
            f.add_done_callback(|_| panic!("a bad callback"));
        }
    }
    assert_eq!(get(&f), Ok(50));
    // Added after the outcome was known: runs at once.
    let seen2 = seen.clone();
    f.add_done_callback(move |r| seen2.lock().unwrap().push((9, r.clone())));
    let seen = seen.lock().unwrap();
    let order: Vec<_> = seen.iter().map(|(i, _)| *i).collect();
    assert_eq!(order, vec![0, 1, 2, 9]);
    assert_eq!(seen[0].1, Ok(50));
    assert!(matches!(seen[3].1, Err(TaskError::ResultTaken { .. })));
}

pub(crate) fn chunk_isolates_item_panics<E: Executor>(ex: &E) {
    let f = ex.submit_chunk(flaky, vec![1, 3, 5]).unwrap();
    let out = get(&f).expect("the chunk ran").into_vec();
    assert_eq!(out[0], Ok(2));
    assert!(out[1].as_ref().is_err_and(|e| e.is_panic()));
    assert_eq!(out[2], Ok(6));
}

pub(crate) fn awaitable<E: Executor>(ex: &E) {
    let f = ex.submit(double, 8).unwrap();
    let v = futures::executor::block_on(f);
    assert_eq!(v, Ok(16));
}

pub(crate) fn drop_resolves_every_future<E: Executor>(ex: E, caps: Caps) {
    let futs: Vec<_> = (0..3 * ex.max_workers() as u64)
        .map(|_| ex.submit(sleep_ms, 100).unwrap())
        .collect();
    ex.shutdown(Shutdown {
        wait: false,
        cancel_futures: true,
    });
    let t = Instant::now();
    drop(ex);
    assert!(t.elapsed() < LIMIT, "drop hung");
    let mut ok = 0;
    let mut cancelled = 0;
    for f in &futs {
        assert!(f.done(), "every future resolves once the pool is dropped");
        match get(f) {
            Ok(100) => ok += 1,
            Err(TaskError::Cancelled { .. }) => cancelled += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ok + cancelled, futs.len());
    if caps.queues {
        assert!(cancelled > 0, "queued work was cancelled");
    }
}

pub(crate) fn many_small_tasks<E: Executor>(ex: &E) {
    let counter = AtomicUsize::new(0);
    let futs: Vec<_> = (0..2000u64).map(|i| ex.submit(noop, i).unwrap()).collect();
    for (i, f) in futs.iter().enumerate() {
        assert_eq!(get(f), Ok(i as u64));
        counter.fetch_add(1, Ordering::Relaxed);
    }
    assert_eq!(counter.load(Ordering::Relaxed), 2000);
}

/// Runs the whole suite over the executor `$make` builds.
#[macro_export]
macro_rules! conformance {
    ($name:ident, $make:expr, $caps:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::conformance as c;

            fn caps() -> c::Caps {
                $caps
            }

            #[test]
            fn submit_returns_value() {
                c::submit_returns_value(&$make);
            }
            #[test]
            fn panic_is_a_value_and_pool_goes_on() {
                c::panic_is_a_value_and_pool_goes_on(&$make);
            }
            #[test]
            fn submit_after_shutdown_hands_input_back() {
                c::submit_after_shutdown_hands_input_back(&$make);
            }
            #[test]
            fn cancel_pending_is_done_at_once() {
                c::cancel_pending_is_done_at_once(&$make, caps());
            }
            #[test]
            fn cancel_true_means_it_never_ran() {
                c::cancel_true_means_it_never_ran(&$make);
            }
            #[test]
            fn map_in_order_and_keeps_going() {
                c::map_in_order_and_keeps_going(&$make);
            }
            #[test]
            fn map_unordered_yields_everything() {
                c::map_unordered_yields_everything(&$make);
            }
            #[test]
            fn map_is_lazy() {
                c::map_is_lazy(&$make);
            }
            #[test]
            fn map_timeout_ends_and_cancels() {
                c::map_timeout_ends_and_cancels(&$make, caps());
            }
            #[test]
            fn wait_modes() {
                c::wait_modes(&$make, caps());
            }
            #[test]
            fn as_completed_yields_all() {
                c::as_completed_yields_all(&$make, caps());
            }
            #[test]
            fn callbacks_run_in_order_and_panics_are_contained() {
                c::callbacks_run_in_order_and_panics_are_contained(&$make);
            }
            #[test]
            fn chunk_isolates_item_panics() {
                c::chunk_isolates_item_panics(&$make);
            }
            #[test]
            fn awaitable() {
                c::awaitable(&$make);
            }
            #[test]
            fn drop_resolves_every_future() {
                c::drop_resolves_every_future($make, caps());
            }
            #[test]
            fn many_small_tasks() {
                c::many_small_tasks(&$make);
            }
        }
    };
}

conformance!(serial, SerialExecutor::new(), Caps { queues: false });
conformance!(
    threads,
    ThreadPool::builder().max_workers(3).build().unwrap(),
    Caps { queues: true }
);
conformance!(
    threads_one,
    ThreadPool::builder().max_workers(1).build().unwrap(),
    Caps { queues: true }
);
conformance!(
    processes,
    ProcessPool::builder().max_workers(2).build().unwrap(),
    Caps { queues: true }
);
