//! Unit tests of the thread pool and `Thread`: what the conformance suite
//! (tests/integration) does not cover.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::{Executor, Shutdown, TaskError};

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn workers_carry_the_name_prefix() {
    let pool = ThreadPool::builder()
        .max_workers(2)
        .thread_name_prefix("delivery")
        .build()
        .unwrap();
    let name = pool
        .spawn(|| std::thread::current().name().map(str::to_string))
        .unwrap()
        .result_timeout(LIMIT)
        .expect("in time")
        .unwrap()
        .unwrap();
    assert!(name.starts_with("delivery-"), "{name}");
    assert_eq!(pool.spec(), "threads:2");
}

#[test]
fn initializer_runs_once_per_worker() {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let pool = ThreadPool::builder()
        .max_workers(3)
        .initializer(move || {
            c.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    pool.shutdown(Shutdown::default());
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[test]
fn a_panicking_initializer_breaks_the_pool() {
    let pool = ThreadPool::builder()
        .max_workers(1)
        .initializer(|| panic!("no database"))
        .build()
        .unwrap();
    // Submitted before the initializer failed: queued, then not run.
    if let Ok(fut) = pool.spawn(|| 1) {
        let r = fut.result_timeout(LIMIT).expect("in time");
        assert!(
            matches!(&r, Err(TaskError::Broken { .. })),
            "a task queued on a broken pool is not run: {r:?}"
        );
    }
    let refused = pool.spawn(|| 2).expect_err("a broken pool refuses work");
    match refused.error {
        TaskError::Broken { reason, .. } => assert!(reason.contains("no database"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn map_fn_runs_closures_lazily_in_order() {
    let pool = ThreadPool::new(4).unwrap();
    let out: Vec<u64> = pool
        .map_fn(|x: u64| x * x, 0..1000u64)
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    let mut un: Vec<u64> = pool
        .map_fn_unordered(|x: u64| x + 1, vec![1, 2, 3])
        .map(Result::unwrap)
        .collect();
    un.sort_unstable();
    assert_eq!(un, vec![2, 3, 4]);
}

#[test]
fn shutdown_from_inside_a_task_does_not_deadlock() {
    let pool = Arc::new(ThreadPool::new(2).unwrap());
    let p = pool.clone();
    let fut = pool.spawn(move || p.shutdown(Shutdown::default())).unwrap();
    assert_eq!(fut.result_timeout(LIMIT), Some(Ok(())));
}

#[test]
fn zero_workers_is_a_clear_error() {
    let e = ThreadPool::builder().max_workers(0).build().unwrap_err();
    assert!(e.to_string().contains("at least 1"), "{e}");
}

#[test]
fn stop_token_cuts_a_sleep_short() {
    let mut t = Thread::new("overwork", |stop: StopToken| {
        let mut rounds = 0u32;
        while !stop.is_stopped() {
            rounds += 1;
            stop.sleep(Duration::from_secs(3));
        }
        rounds
    });
    assert!(!t.is_alive());
    t.start().unwrap();
    assert!(t.start().is_err(), "a thread starts once");
    assert!(t.is_alive());
    assert_eq!(t.name(), "overwork");
    assert!(t.join_timeout(Duration::from_millis(20)).is_none());
    let began = Instant::now();
    t.stop();
    let rounds = t.join_timeout(LIMIT).expect("joined").unwrap();
    assert!(rounds >= 1);
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "the stop waited out a sleep"
    );
}

#[test]
fn a_thread_panic_is_a_value() {
    let mut t = Thread::new("doomed", |_| -> u32 { panic!("deliberate") });
    t.start().unwrap();
    match t.join_timeout(LIMIT).expect("joined") {
        Err(TaskError::Panicked { task, message, .. }) => {
            assert_eq!(task, "doomed");
            assert_eq!(message, "deliberate");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn fold_and_next_agree_with_errors_and_progress() {
    let pool = ThreadPool::new(2).unwrap();
    let f = |x: u64| {
        assert!(x % 5 != 3, "bad {x}");
        x * 2
    };
    let by_next: Vec<_> = {
        let mut m = pool.map_fn(f, 0..200u64).chunksize(7);
        std::iter::from_fn(|| m.next()).collect()
    };
    let mut ticks = 0;
    let by_fold: Vec<_> = pool
        .map_fn(f, 0..200u64)
        .chunksize(7)
        .progress(|done, total| {
            ticks += 1;
            assert_eq!(total, Some(200));
            assert_eq!(done, ticks);
        })
        .collect();
    assert_eq!(ticks, 200);
    assert_eq!(by_next.len(), 200);
    for (i, (a, b)) in by_next.iter().zip(&by_fold).enumerate() {
        assert_eq!(a.is_ok(), b.is_ok(), "item {i}");
        assert_eq!(a.as_ref().ok(), b.as_ref().ok(), "item {i}");
    }
    assert_eq!(by_fold.iter().filter(|r| r.is_err()).count(), 40);
    let sum: u64 = pool
        .map_fn(|x: u64| x, 0..10_000u64)
        .map(Result::unwrap)
        .sum();
    assert_eq!(sum, 10_000 * 9_999 / 2);
}
