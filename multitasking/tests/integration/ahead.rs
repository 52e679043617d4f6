//! Calls written to a busy worker ahead of the one it runs
//! (`ProcessPoolBuilder::calls_ahead`): each runs once, a terminate takes
//! back only the call asked for, and a worker's death, timeout or a
//! whole-pool stop fails only what it should.
//!
//! Each test holds its one worker with a gate call first; the calls
//! submitted behind the gate wait in the pool's queue and are all written
//! to the worker when the gate's reply comes, so that they sit in its
//! socket behind a long call. `running()` on them shows they were written.

use std::time::Duration;

use multitasking::{Executor, ProcessPool, TaskError, TaskFuture};

use crate::conformance::get;
use crate::tasks::{mark, marks, sleep_ms, spin_forever, whoami, Crash};

/// Sleeps `ms` milliseconds, then fails as `how` says; returns its pid.
#[multitasking::task]
fn sleep_then(ms: u64, how: Crash) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    crate::tasks::crash_now(how);
    std::process::id()
}

/// A fresh mark file for one test.
fn mark_file(name: &str) -> String {
    let path = std::env::temp_dir().join(format!("multitask-ahead-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path.display().to_string()
}

/// A pool of one worker that gives it up to 7 calls ahead.
fn pool() -> multitasking::ProcessPoolBuilder {
    ProcessPool::builder().max_workers(1).calls_ahead(7)
}

/// Submits the gate (100 ms), then `head` and `n` marks behind it, and
/// waits for the gate: `head` and the marks are then in the worker's
/// socket. The marks' futures, numbered 1 to n.
fn behind_a_gate<H>(
    p: &ProcessPool,
    head: impl FnOnce(&ProcessPool) -> TaskFuture<H>,
    file: &str,
    n: u64,
) -> (TaskFuture<H>, Vec<TaskFuture<u64>>) {
    let gate = p.submit(sleep_ms, 100).unwrap();
    let head = head(p);
    let marks: Vec<_> = (1..=n)
        .map(|i| p.submit(mark, (file.to_string(), i)).unwrap())
        .collect();
    assert_eq!(get(&gate).unwrap(), 100);
    assert!(head.running(), "the head was written to the worker");
    for (i, m) in marks.iter().enumerate() {
        assert!(m.running(), "mark {} was written ahead", i + 1);
    }
    (head, marks)
}

#[test]
fn a_call_given_ahead_runs_once_and_a_terminated_one_never_runs() {
    let file = mark_file("terminate");
    let p = pool().build().unwrap();
    let worker = p.worker_pids()[0];
    let (head, written) = behind_a_gate(&p, |p| p.submit(sleep_ms, 600).unwrap(), &file, 5);
    // Written ahead counts as started: cancel fails, as documented.
    assert!(!written[1].cancel());
    assert!(
        written[2].terminate(),
        "terminate takes back a call given ahead"
    );
    assert!(
        matches!(get(&written[2]), Err(TaskError::Terminated { .. })),
        "{:?}",
        get(&written[2])
    );
    // The call before it was not stopped, nor its worker.
    assert_eq!(get(&head).unwrap(), 600);
    for (i, m) in written.iter().enumerate() {
        if i != 2 {
            assert_eq!(get(m).unwrap(), i as u64 + 1);
        }
    }
    assert_eq!(p.worker_pids(), vec![worker], "no worker was killed");
    drop(p);
    assert_eq!(
        marks(&file),
        vec![1, 2, 4, 5],
        "each ran once, the terminated one never"
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn calls_behind_one_whose_worker_died_run_once_on_the_next_worker() {
    let file = mark_file("crash");
    let p = pool().build().unwrap();
    let first = p.worker_pids()[0];
    let (head, written) = behind_a_gate(
        &p,
        |p| p.submit(sleep_then, (500, Crash::Abort)).unwrap(),
        &file,
        5,
    );
    let r = get(&head);
    assert!(matches!(r, Err(TaskError::WorkerDied { .. })), "{r:?}");
    // They never started in the dead worker, so no retry is spent on them
    // (the pool has none) and none is lost.
    for (i, m) in written.iter().enumerate() {
        assert_eq!(get(m).unwrap(), i as u64 + 1);
    }
    assert_ne!(p.worker_pids(), vec![first]);
    drop(p);
    assert_eq!(marks(&file), vec![1, 2, 3, 4, 5]);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_timeout_fails_only_the_call_that_ran_past_it() {
    let file = mark_file("timeout");
    let p = pool()
        .task_timeout(Duration::from_millis(1000))
        .build()
        .unwrap();
    let (head, written) = behind_a_gate(&p, |p| p.submit(spin_forever, ()).unwrap(), &file, 3);
    let r = get(&head);
    assert!(matches!(r, Err(TaskError::TimedOut { .. })), "{r:?}");
    for (i, m) in written.iter().enumerate() {
        assert_eq!(get(m).unwrap(), i as u64 + 1);
    }
    drop(p);
    assert_eq!(marks(&file), vec![1, 2, 3]);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_whole_pool_stop_fails_the_calls_given_ahead_and_none_runs_later() {
    let file = mark_file("stop");
    let p = pool().build().unwrap();
    let (head, written) = behind_a_gate(&p, |p| p.submit(sleep_ms, 5_000).unwrap(), &file, 3);
    p.terminate_workers();
    let r = get(&head);
    assert!(matches!(r, Err(TaskError::Terminated { .. })), "{r:?}");
    for m in &written {
        let r = get(m);
        assert!(matches!(r, Err(TaskError::Terminated { .. })), "{r:?}");
    }
    drop(p);
    assert_eq!(marks(&file), Vec::<u64>::new());
}

#[test]
fn max_tasks_per_child_holds_with_calls_given_ahead() {
    let p = pool().max_tasks_per_child(5).build().unwrap();
    let futures: Vec<_> = (0..200).map(|_| p.submit(whoami, ()).unwrap()).collect();
    let mut per_pid = std::collections::HashMap::new();
    for f in &futures {
        *per_pid.entry(get(f).unwrap()).or_insert(0) += 1;
    }
    assert_eq!(per_pid.values().sum::<u32>(), 200);
    assert!(per_pid.values().all(|n| *n <= 5), "{per_pid:?}");
}

#[test]
fn by_default_long_calls_are_not_given_ahead() {
    // Calls of 20 ms are far over the 200 µs under which a worker is given
    // calls ahead: once the first is answered, the worker holds one call
    // at a time, and the calls behind it stay cancellable.
    let p = ProcessPool::builder().max_workers(1).build().unwrap();
    let futures: Vec<_> = (0..5).map(|_| p.submit(sleep_ms, 20).unwrap()).collect();
    for (i, f) in futures.iter().enumerate() {
        assert_eq!(get(f).unwrap(), 20);
        let running = futures[i + 1..].iter().filter(|f| f.running()).count();
        assert!(
            running <= 1,
            "after call {i}: {running} calls written at once"
        );
    }
    // The third waits behind two calls of 20 ms, given one at a time.
    let more: Vec<_> = (0..3).map(|_| p.submit(sleep_ms, 20).unwrap()).collect();
    assert!(
        more[2].cancel(),
        "a call waiting behind a long one can be cancelled"
    );
    assert!(get(&more[0]).is_ok() && get(&more[1]).is_ok());
}

#[test]
fn many_short_calls_each_resolve_once_with_their_own_result() {
    // Auto mode with two workers: the short calls go several to a worker;
    // every future gets its own input back.
    let p = ProcessPool::new(2).unwrap();
    let futures: Vec<_> = (0..20_000u64)
        .map(|i| p.submit(crate::tasks::double, i).unwrap())
        .collect();
    for (i, f) in futures.iter().enumerate() {
        assert_eq!(get(f).unwrap(), 2 * i as u64);
    }
}

#[test]
fn a_pool_dropped_right_after_a_terminate_reaps_its_worker() {
    // The terminated call's `Skipped` may still be on its way when the
    // pool closes: the worker is still retired and reaped, not left.
    for _ in 0..5 {
        let file = mark_file("drop");
        let p = pool().build().unwrap();
        let worker = p.worker_pids()[0];
        let (head, written) = behind_a_gate(&p, |p| p.submit(sleep_ms, 300).unwrap(), &file, 2);
        assert!(written[1].terminate());
        assert_eq!(get(&head).unwrap(), 300);
        assert_eq!(get(&written[0]).unwrap(), 1);
        drop(p);
        assert!(
            crate::process::wait_gone(worker, Duration::from_secs(5)),
            "worker {worker} outlived its pool"
        );
        assert_eq!(marks(&file), vec![1]);
        let _ = std::fs::remove_file(&file);
    }
}

/// Writes a `Skipped` for call `id` straight onto the worker's control
/// socket (protocol version 3, `FromWorker::Skipped` is variant 3), as if
/// the call had been withdrawn, then sleeps: a worker that claims to have
/// skipped a call nobody withdrew.
#[multitasking::task]
fn forge_skip(id: u8) -> u64 {
    // SAFETY: fd 3 is the worker's control socket, open for the worker's
    // life; it is only borrowed for this one write.
    let sock = unsafe { rustix::fd::BorrowedFd::borrow_raw(3) };
    // After the test has seen the calls written.
    std::thread::sleep(Duration::from_millis(500));
    let _ = rustix::io::write(sock, &[3, 0, 0, 0, 3, 3, id]);
    std::thread::sleep(Duration::from_secs(2));
    0
}

#[test]
fn a_skip_nobody_asked_for_fails_its_call_and_the_calls_behind_run_once() {
    let file = mark_file("forged");
    let p = pool().build().unwrap();
    let first = p.worker_pids()[0];
    // In a fresh pool calls are numbered from 1 as written: the gate is
    // call 1, the forger call 2.
    let (forger, written) = behind_a_gate(&p, |p| p.submit(forge_skip, 2).unwrap(), &file, 2);
    match get(&forger) {
        Err(TaskError::Codec { message, .. }) => {
            assert!(message.contains("broke the protocol"), "{message}");
        }
        other => panic!("a forged skip must fail its call: {other:?}"),
    }
    for (i, m) in written.iter().enumerate() {
        assert_eq!(get(m).unwrap(), i as u64 + 1);
    }
    assert_ne!(
        p.worker_pids(),
        vec![first],
        "the forger's worker was replaced"
    );
    drop(p);
    assert_eq!(marks(&file), vec![1, 2]);
    let _ = std::fs::remove_file(&file);
}

/// Marks `id` in `path`; `pad` only makes the call large.
#[multitasking::task]
fn mark_padded(path: String, id: u64, pad: String) -> u64 {
    std::hint::black_box(pad);
    crate::tasks::append_mark(&path, id);
    id
}

#[test]
fn a_large_call_is_not_given_ahead_and_a_cancelling_shutdown_cancels_it() {
    let file = mark_file("large");
    let p = pool().build().unwrap();
    let gate = p.submit(sleep_ms, 100).unwrap();
    let head = p.submit(sleep_ms, 600).unwrap();
    let large = p
        .submit(mark_padded, (file.clone(), 9, "x".repeat(20_000)))
        .unwrap();
    assert_eq!(get(&gate).unwrap(), 100);
    assert!(head.running(), "the head was written to the worker");
    assert!(
        !large.running(),
        "a call over 16 KiB waits for an idle worker"
    );
    p.shutdown(multitasking::Shutdown {
        wait: false,
        cancel_futures: true,
    });
    assert!(large.cancelled(), "{:?}", get(&large));
    assert_eq!(get(&head).unwrap(), 600, "the running call runs on");
    drop(p);
    assert_eq!(
        marks(&file),
        Vec::<u64>::new(),
        "the cancelled call never ran"
    );
}
