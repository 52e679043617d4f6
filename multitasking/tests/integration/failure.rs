//! The process pool's failure-injection matrix, as CPython's
//! `test_deadlock.py`: crash, exit, panic and codec errors at each stage of
//! a call (encode the call, decode it in the worker, run, encode the
//! result, decode it), plus timeouts, memory limits, oversized payloads and
//! unknown tasks. Each case checks the typed error and that the pool goes
//! on with a working worker.

use std::time::Duration;

use multitasking::executor::RawExecutor;
use multitasking::{Executor, ExitCause, ProcessPool, TaskError};

use crate::conformance::{get, LIMIT};
use crate::tasks::{
    crash, crash_once, double, hog, poisoned, spin_forever, truncated_reply, Crash, PoisonIn,
    PoisonOut, Stage,
};

fn pool() -> ProcessPool {
    ProcessPool::builder()
        .max_workers(2)
        .build()
        .expect("start the pool")
}

/// The pool still runs tasks after a failure.
fn still_works(p: &ProcessPool) {
    let f = p.submit(double, 21).expect("submit after a failure");
    assert_eq!(get(&f), Ok(42), "the pool goes on");
}

fn run_crash(how: Crash) -> Result<u32, TaskError> {
    let p = pool();
    let before = p.worker_pids();
    let r = get(&p.submit(crash, how).expect("submit"));
    still_works(&p);
    // The replacement starts right after the failure is reported.
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let now = p.worker_pids();
        if now.len() == 2 && now != before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dead worker was not replaced: {before:?} -> {now:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    r
}

#[test]
fn panic_fails_the_task_and_the_worker_lives() {
    let p = pool();
    let pids = p.worker_pids();
    match get(&p.submit(crash, Crash::Panic).unwrap()) {
        Err(TaskError::Panicked {
            message, location, ..
        }) => {
            assert_eq!(message, "injected panic");
            assert!(location.is_some_and(|l| l.contains("tasks.rs")));
        }
        other => panic!("{other:?}"),
    }
    still_works(&p);
    assert_eq!(p.worker_pids(), pids, "no worker was replaced for a panic");
}

#[test]
fn abort_is_worker_died_with_sigabrt() {
    match run_crash(Crash::Abort) {
        Err(TaskError::WorkerDied { cause, pid, .. }) => {
            assert_eq!(cause, ExitCause::Signal(6));
            assert!(pid > 0);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn segfault_is_worker_died_with_sigsegv() {
    match run_crash(Crash::Segfault) {
        Err(TaskError::WorkerDied { cause, .. }) => assert_eq!(cause, ExitCause::Signal(11)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn exit_3_is_worker_died_with_code_3() {
    match run_crash(Crash::Exit3) {
        Err(e @ TaskError::WorkerDied { .. }) => {
            assert!(matches!(
                e,
                TaskError::WorkerDied {
                    cause: ExitCause::Code(3),
                    ..
                }
            ));
            let text = e.to_string();
            assert!(text.contains("which exited with code 3"), "{text}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn sigkill_is_worker_died_with_sigkill() {
    match run_crash(Crash::SigKill) {
        Err(e @ TaskError::WorkerDied { .. }) => {
            assert!(matches!(
                e,
                TaskError::WorkerDied {
                    cause: ExitCause::Signal(9),
                    ..
                }
            ));
            assert!(e.to_string().contains("SIGKILL"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_endless_task_times_out_and_its_worker_is_replaced() {
    let p = ProcessPool::builder()
        .max_workers(1)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let victim = p.worker_pids()[0];
    match get(&p.submit(spin_forever, ()).unwrap()) {
        Err(TaskError::TimedOut { pid, after, .. }) => {
            assert_eq!(pid, Some(victim));
            assert_eq!(after, Duration::from_millis(300));
        }
        other => panic!("{other:?}"),
    }
    still_works(&p);
    assert_ne!(p.worker_pids(), vec![victim]);
}

#[test]
fn terminate_kills_a_running_task_on_demand() {
    let p = ProcessPool::builder().max_workers(1).build().unwrap();
    let f = p.submit(spin_forever, ()).unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    while !f.running() {
        assert!(std::time::Instant::now() < deadline, "never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!f.cancel(), "a running task can't be cancelled");
    assert!(f.terminate(), "but it can be terminated");
    assert!(matches!(get(&f), Err(TaskError::Terminated { .. })));
    still_works(&p);
}

#[test]
fn a_worker_over_its_memory_limit_is_killed() {
    let p = ProcessPool::builder()
        .max_workers(1)
        .memory_limit(64 << 20)
        .build()
        .unwrap();
    match get(&p.submit(hog, (256, 2_000)).unwrap()) {
        Err(TaskError::MemoryExceeded { limit, peak, .. }) => {
            assert_eq!(limit, 64 << 20);
            assert!(peak > limit);
        }
        other => panic!("{other:?}"),
    }
    // Under the limit, the same task is fine.
    assert!(get(&p.submit(hog, (8, 10)).unwrap()).is_ok());
}

#[test]
fn an_oversized_payload_is_refused_with_the_input_back() {
    let p = ProcessPool::builder()
        .max_workers(1)
        .max_payload(1024)
        .build()
        .unwrap();
    let big = vec![7u64; 10_000];
    let e = p.submit_chunk(double, big.clone()).expect_err("too large");
    assert!(
        matches!(e.error, TaskError::TooLarge { limit: 1024, .. }),
        "{:?}",
        e.error
    );
    assert_eq!(e.input, big);
    // A result over the cap is refused by the worker, which lives on.
    let f = p.submit(hog, (0, 0)).unwrap();
    assert!(get(&f).is_ok());
    still_works(&p);
}

#[test]
fn unknown_tasks_and_signature_mismatches_are_typed() {
    let p = pool();
    let real =
        multitasking::executor::lookup(<double as multitasking::Task>::NAME).expect("registered");
    let unknown = multitasking::executor::TaskEntry {
        name: "nowhere::missing",
        ..real
    };
    let f = p.submit_raw(unknown, vec![0]).unwrap();
    match get(&f) {
        Err(TaskError::UnknownTask { task, worker }) => {
            assert_eq!(task, "nowhere::missing");
            assert!(worker.contains("pid"), "{worker}");
        }
        other => panic!("{other:?}"),
    }
    let skewed = multitasking::executor::TaskEntry {
        signature: real.signature ^ 1,
        ..real
    };
    match get(&p.submit_raw(skewed, vec![0]).unwrap()) {
        Err(e @ TaskError::SignatureMismatch { .. }) => {
            assert!(e.to_string().contains("rebuild both sides"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // Garbage instead of an encoded batch: a codec error, not a crash.
    match get(&p.submit_raw(real, vec![0xff; 9]).unwrap()) {
        Err(TaskError::Codec { .. }) => {}
        other => panic!("{other:?}"),
    }
    still_works(&p);
}

/// Runs `poisoned` at `stage` and returns the outcome (or the submit error).
fn at_stage(p: &ProcessPool, stage: Stage) -> Result<PoisonOut, TaskError> {
    match p.submit(poisoned, PoisonIn(stage)) {
        Ok(f) => get(&f),
        Err(e) => {
            assert_eq!(e.input, PoisonIn(stage), "the input is handed back");
            Err(e.error)
        }
    }
}

#[test]
fn codec_failures_at_every_stage_are_typed_and_the_pool_goes_on() {
    let p = pool();
    assert_eq!(at_stage(&p, Stage::Clean), Ok(PoisonOut(Stage::Clean)));
    let cases = [
        (Stage::EncodeCall, "codec"),
        (Stage::DecodeCall, "codec"),
        (Stage::DecodeCallPanic, "panicked"),
        (Stage::DecodeCallAbort, "worker_died"),
        (Stage::EncodeResult, "codec"),
        (Stage::EncodeResultPanic, "panicked"),
        (Stage::EncodeResultAbort, "worker_died"),
        (Stage::DecodeResult, "codec"),
    ];
    for (stage, kind) in cases {
        let r = at_stage(&p, stage);
        match &r {
            Err(e) => assert_eq!(e.kind(), kind, "{stage:?}: {e}"),
            Ok(v) => panic!("{stage:?} did not fail: {v:?}"),
        }
        still_works(&p);
    }
}

#[test]
fn a_thousand_tasks_with_five_percent_crashes_lose_nothing() {
    let p = pool();
    let plan: Vec<Crash> = (0..1000)
        .map(|i| {
            if i % 20 == 7 {
                Crash::Abort
            } else {
                Crash::None
            }
        })
        .collect();
    let t = std::time::Instant::now();
    let outcomes: Vec<_> = p
        .map(crash, plan.clone())
        .chunksize(1)
        .timeout(Duration::from_secs(120))
        .collect();
    assert_eq!(outcomes.len(), 1000, "every task has an outcome");
    let ok = outcomes.iter().filter(|r| r.is_ok()).count();
    let died = outcomes
        .iter()
        .filter(|r| {
            matches!(
                r,
                Err(TaskError::WorkerDied {
                    cause: ExitCause::Signal(6),
                    ..
                })
            )
        })
        .count();
    assert_eq!((ok, died), (950, 50), "in {:?}", t.elapsed());
    for (how, r) in plan.iter().zip(&outcomes) {
        assert_eq!(*how == Crash::Abort, r.is_err());
    }
}

#[test]
fn max_retries_reruns_a_task_whose_worker_died() {
    let dir = std::env::temp_dir().join(format!("multitask-retry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let marker = |n: &str| dir.join(n).display().to_string();

    // Without retries the crash is the task's outcome.
    let p = ProcessPool::builder().max_workers(1).build().unwrap();
    let r = get(&p.submit(crash_once, marker("a")).unwrap());
    assert!(matches!(r, Err(TaskError::WorkerDied { .. })), "{r:?}");

    // With one retry a fresh worker runs it again, and it succeeds.
    let p = ProcessPool::builder()
        .max_workers(1)
        .max_retries(1)
        .build()
        .unwrap();
    let first = p.worker_pids()[0];
    let pid = get(&p.submit(crash_once, marker("b")).unwrap()).expect("the retry succeeds");
    assert_ne!(pid, first, "the retry ran on the replacement worker");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_worker_that_stalls_part_way_through_a_frame_is_killed_and_replaced() {
    // No task timeout: only the frame's own deadline can end this.
    let p = ProcessPool::builder().max_workers(1).build().unwrap();
    let victim = p.worker_pids()[0];
    let f = p.submit(truncated_reply, ()).unwrap();
    // Queued behind it: it must run on the replacement.
    let next = p.submit(double, 4).unwrap();
    match get(&f) {
        Err(TaskError::Codec { message, .. }) => {
            assert!(message.contains("stopped after 7 bytes"), "{message}");
            assert!(message.contains(&victim.to_string()), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(get(&next), Ok(8));
    assert_ne!(
        p.worker_pids(),
        vec![victim],
        "a fresh worker took its place"
    );
    assert!(
        crate::process::wait_gone(victim, LIMIT),
        "the stalled worker {victim} was killed and reaped"
    );
    crate::process::bounded("the pool's drop", LIMIT, move || drop(p));
}

#[test]
fn a_worker_that_stops_reading_part_way_through_its_call_is_killed_and_replaced() {
    // A call far larger than the socket's buffers, to a worker that is
    // stopped (SIGSTOP): the submitter's write must not hold the slot (and
    // the submit) forever.
    let p = std::sync::Arc::new(ProcessPool::builder().max_workers(1).build().unwrap());
    let victim = p.worker_pids()[0];
    let pid = rustix::process::Pid::from_raw(victim as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let big = vec![u64::MAX; 1_000_000];
    let q = p.clone();
    let f = crate::process::bounded("a submit to a stopped worker", LIMIT, move || {
        q.submit_chunk(double, big).expect("submit")
    });
    match get(&f) {
        Err(TaskError::Codec { message, .. }) => {
            assert!(message.contains("sending the call"), "{message}");
            assert!(message.contains("did not move"), "{message}");
        }
        other => panic!("{:?}", other.map(|c| c.len())),
    }
    assert!(
        crate::process::wait_gone(victim, LIMIT),
        "the stopped worker {victim} was killed and reaped"
    );
    still_works(&p);
}
