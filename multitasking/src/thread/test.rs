//! Unit tests of the thread pool and `Thread`: what the conformance suite
//! (tests/integration) does not cover.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::{Executor, Shutdown, TaskError};

const LIMIT: Duration = Duration::from_secs(20);

/// Runs `n` tasks on `pool` that each wait for all the others: they finish
/// only if `n` workers run at once.
fn meet(pool: &ThreadPool, n: usize) {
    let gate = Arc::new(std::sync::Barrier::new(n));
    let futs: Vec<_> = (0..n)
        .map(|_| {
            let g = gate.clone();
            pool.spawn(move || g.wait()).unwrap()
        })
        .collect();
    for f in futs {
        f.result_timeout(LIMIT)
            .unwrap_or_else(|| panic!("{n} tasks that wait for each other never all ran"))
            .unwrap();
    }
}

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
    // Three tasks that wait for each other need three workers at once.
    meet(&pool, 3);
    pool.shutdown(Shutdown::default());
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

/// Threads start as needed, as CPython's do: sequential submit-and-wait
/// calls use one thread, not `max_workers` of them.
#[test]
fn sequential_calls_use_one_thread() {
    let pool = ThreadPool::new(8).unwrap();
    assert_eq!(pool.started(), 0, "no thread before the first submit");
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let name = pool
            .spawn(|| std::thread::current().name().map(str::to_string))
            .unwrap()
            .result_timeout(LIMIT)
            .expect("in time")
            .unwrap();
        names.insert(name);
    }
    assert_eq!(names.len(), 1, "{names:?}");
    assert_eq!(pool.started(), 1);
}

/// ... and grow to `max_workers` when work waits, never past it.
#[test]
fn threads_grow_to_max_workers_under_load() {
    let pool = ThreadPool::new(4).unwrap();
    meet(&pool, 4);
    let more: Vec<_> = (0..100).map(|i| pool.spawn(move || i).unwrap()).collect();
    for f in more {
        f.result_timeout(LIMIT).expect("in time").unwrap();
    }
    assert_eq!(pool.started(), 4);
}

/// A job submitted while the only worker blocks in another gets a thread
/// of its own. The pool counted idle workers against the queue's length,
/// and a worker that had just taken the first job still counted as idle:
/// the second job waited beside it (caught by a CLI test under load, where
/// `multitask run -e threads -j 2` left job 2 unrun while job 1 waited).
#[test]
fn a_job_beside_a_blocked_one_always_gets_a_thread() {
    for round in 0..1000 {
        let pool = ThreadPool::new(2).unwrap();
        // One worker, idle and spinning for its next job: the one that
        // takes the first job below.
        assert_eq!(
            pool.spawn(|| ()).unwrap().result_timeout(LIMIT),
            Some(Ok(()))
        );
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let first = pool
            .spawn(move || blocked.recv_timeout(LIMIT).is_ok())
            .unwrap();
        let second = pool.spawn(move || round).unwrap();
        assert_eq!(
            second
                .result_timeout(LIMIT)
                .expect("the second job ran while the first blocked"),
            Ok(round)
        );
        release.send(()).unwrap();
        assert_eq!(first.result_timeout(LIMIT).expect("in time"), Ok(true));
        assert!(pool.started() <= 2);
    }
}

#[test]
fn an_absurd_thread_count_is_a_clear_error() {
    for n in [100_000, 99_999_999_999] {
        let e = ThreadPool::new(n).unwrap_err().to_string();
        assert!(e.contains("more threads than a process can start"), "{e}");
    }
}

#[test]
fn a_scope_borrows_locals_and_joins_every_job() {
    let pool = ThreadPool::new(3).unwrap();
    let input: Vec<u64> = (1..=100).collect();
    let mut sums = [0u64; 4];
    let total = AtomicUsize::new(0);
    let got = pool.scope(|s| {
        for (part, sum) in input.chunks(25).zip(sums.iter_mut()) {
            let total = &total;
            s.spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                *sum = part.iter().sum();
                total.fetch_add(1, Ordering::SeqCst);
            });
        }
        let f = s.spawn(|| input.len());
        f.result_timeout(LIMIT).expect("in time").unwrap()
    });
    assert_eq!(got, 100);
    // Every job finished before scope returned, though none was joined.
    assert_eq!(total.load(Ordering::SeqCst), 4);
    assert_eq!(sums.iter().sum::<u64>(), 5050);
}

#[test]
fn a_panic_in_a_scope_is_carried_back_after_every_job() {
    let pool = ThreadPool::new(2).unwrap();
    let finished = AtomicUsize::new(0);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.scope(|s| {
            s.spawn(|| panic!("bad input 7"));
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                finished.fetch_add(1, Ordering::SeqCst);
            });
        })
    }));
    let payload = caught.expect_err("the scope panics");
    let text = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(text.contains("bad input 7"), "{text}");
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "the slow job was joined first"
    );
    // The pool goes on.
    assert_eq!(pool.spawn(|| 5).unwrap().result().unwrap(), 5);
}

#[test]
fn a_scope_whose_body_panics_still_waits_for_its_jobs() {
    let pool = ThreadPool::new(2).unwrap();
    let finished = AtomicUsize::new(0);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                finished.fetch_add(1, Ordering::SeqCst);
            });
            panic!("the body gave up");
        })
    }));
    assert!(caught.is_err());
    assert_eq!(finished.load(Ordering::SeqCst), 1);
}

#[test]
fn a_scope_on_a_closed_pool_resolves_at_once() {
    let pool = ThreadPool::new(1).unwrap();
    pool.shutdown(Shutdown::default());
    let local = 3;
    let r = pool.scope(|s| s.spawn(|| local * 2).result_timeout(LIMIT));
    assert!(matches!(r, Some(Err(TaskError::Shutdown { .. }))), "{r:?}");
}

#[test]
fn cancelled_scoped_jobs_never_run_and_the_scope_returns() {
    let pool = ThreadPool::new(1).unwrap();
    let ran = AtomicUsize::new(0);
    pool.scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let hold = s.spawn(move || rx.recv_timeout(LIMIT));
        let queued: Vec<_> = (0..5)
            .map(|_| {
                s.spawn(|| {
                    ran.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        for q in &queued {
            assert!(q.cancel());
        }
        tx.send(()).unwrap();
        hold.result_timeout(LIMIT)
            .expect("in time")
            .unwrap()
            .unwrap();
    });
    assert_eq!(ran.load(Ordering::SeqCst), 0);
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

#[test]
fn a_pool_dropped_in_a_panic_cancels_what_has_not_started() {
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let queued = std::thread::spawn(move || {
        let pool = ThreadPool::new(1).unwrap();
        let mut futs = Vec::new();
        for _ in 0..50 {
            let r = r.clone();
            futs.push(
                pool.spawn(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    r.fetch_add(1, Ordering::SeqCst);
                })
                .unwrap(),
            );
        }
        let _keep = (pool, futs.split_off(1));
        // Unwinds without the panic hook, whose backtrace can take longer
        // than a task under load.
        std::panic::resume_unwind(Box::new("the owner gives up"));
    })
    .join();
    assert!(queued.is_err());
    // One task may have started; the other 49 (a second of work) did not.
    assert!(
        ran.load(Ordering::SeqCst) <= 1,
        "{}",
        ran.load(Ordering::SeqCst)
    );
}

#[test]
fn bursts_past_the_queue_ring_all_run_beside_sleeping_workers() {
    // Each burst overflows the queue's ring into its spill while the
    // workers wake from sleep: every task must run, within the bound.
    let pool = Arc::new(ThreadPool::new(2).unwrap());
    let ran = Arc::new(AtomicUsize::new(0));
    let burst = 2 * super::queue::LANE + 1;
    let submitters: Vec<_> = (0..2)
        .map(|_| {
            let (pool, ran) = (pool.clone(), ran.clone());
            std::thread::spawn(move || {
                for _ in 0..20 {
                    let futs: Vec<_> = (0..burst)
                        .map(|_| {
                            let ran = ran.clone();
                            pool.spawn(move || ran.fetch_add(1, Ordering::Relaxed))
                                .unwrap()
                        })
                        .collect();
                    for f in futs {
                        f.result_timeout(LIMIT)
                            .expect("a task of a burst waited 20 s beside idle workers")
                            .unwrap();
                    }
                    // Long enough for both workers to stop spinning.
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().unwrap();
    }
    assert_eq!(ran.load(Ordering::Relaxed), 2 * 20 * burst);
    assert_eq!(pool.queued(), 0);
}
