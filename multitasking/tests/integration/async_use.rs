//! The library from async code, under tokio: `.await` on a `TaskFuture`,
//! `as_completed(...).stream()` with `StreamExt::next`, and
//! `cancel_on_drop` freeing the worker of a future that `timeout` gave up.

use std::time::Duration;

use futures::StreamExt;
use multitasking::{as_completed, Executor, ProcessPool, ThreadPool};

use crate::conformance::{get, LIMIT};
use crate::tasks::{double, mark, marks, sleep_ms, whoami};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime")
}

#[test]
fn await_and_stream_under_tokio() {
    let pool = ProcessPool::builder().max_workers(2).build().unwrap();
    let total = runtime().block_on(async {
        assert_eq!(pool.submit(double, 21).unwrap().await, Ok(42));
        let futs: Vec<_> = (1..=5).map(|i| pool.submit(double, i).unwrap()).collect();
        let mut done = as_completed(futs, Some(LIMIT)).stream();
        let mut total = 0;
        while let Some(fut) = done.next().await {
            total += fut.expect("in time").await.expect("ran");
        }
        total
    });
    assert_eq!(total, 30);
}

/// A running process task whose future `timeout` dropped is terminated: its
/// worker is killed and replaced, so the pool's one slot is free at once
/// instead of after the task's ten seconds.
#[test]
fn a_dropped_running_future_frees_its_worker() {
    let pool = ProcessPool::builder().max_workers(1).build().unwrap();
    let before = get(&pool.submit(whoami, ()).unwrap()).unwrap();
    let slow = pool.submit(sleep_ms, 10_000).unwrap().cancel_on_drop();
    // Running, not queued: its drop must terminate, not cancel.
    let deadline = std::time::Instant::now() + LIMIT;
    while !slow.running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the task never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let gave_up =
        runtime().block_on(async { tokio::time::timeout(Duration::from_millis(300), slow).await });
    assert!(gave_up.is_err(), "the ten-second task finished in 300 ms?");
    // Had the worker lived, it would run this after its ten seconds.
    let after = get(&pool.submit(whoami, ()).unwrap()).unwrap();
    assert_ne!(
        before, after,
        "the worker that ran the dropped task lives on"
    );
}

/// A pending future that `select!` dropped is cancelled: its task never
/// runs. Without `cancel_on_drop` it runs anyway, as in Python.
#[test]
fn a_dropped_pending_future_never_runs() {
    let pool = ThreadPool::new(1).unwrap();
    let path =
        std::env::temp_dir().join(format!("multitasking-async-{}.marks", std::process::id()));
    let path = path.to_string_lossy().into_owned();
    let _ = std::fs::remove_file(&path);
    // The one worker waits on this gate, which opens only after the drop:
    // the dropped task is still queued when `select!` lets it go.
    let (open, gate) = std::sync::mpsc::channel::<()>();
    let busy = pool
        .spawn(move || gate.recv_timeout(LIMIT).is_ok())
        .unwrap();
    let rt = runtime();
    rt.block_on(async {
        let dropped = pool
            .submit(mark, (path.clone(), 1))
            .unwrap()
            .cancel_on_drop();
        let kept = pool.submit(mark, (path.clone(), 2)).unwrap();
        tokio::select! {
            r = dropped => panic!("the queued task finished first: {r:?}"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        open.send(()).unwrap();
        assert_eq!(busy.await, Ok(true));
        assert_eq!(kept.await, Ok(2));
    });
    drop(pool);
    assert_eq!(marks(&path), vec![2]);
    let _ = std::fs::remove_file(&path);
}
