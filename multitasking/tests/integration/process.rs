//! The process pool's life cycle: worker reuse and replacement,
//! initializers, whole-pool stops, reaping, `Process`, and workers dying
//! with their parent.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use multitasking::{Executor, Process, ProcessPool, Shutdown, TaskError};

use crate::conformance::{get, LIMIT};
use crate::tasks::{sleep_ms, spin_forever, whoami};

/// Set by the `init_marker` initializer in each worker.
static INITIALIZED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[multitasking::task]
fn init_marker(_x: ()) {
    INITIALIZED.store(true, std::sync::atomic::Ordering::SeqCst);
}

#[multitasking::task]
fn was_initialized(_x: ()) -> bool {
    INITIALIZED.load(std::sync::atomic::Ordering::SeqCst)
}

#[multitasking::task]
fn failing_init(_x: ()) {
    // Each run notes itself where the test asks, so the test can count
    // worker starts.
    if let Some(log) = std::env::var_os("MULTITASK_TEST_INIT_LOG") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the init log");
        let _ = writeln!(f, "{}", std::process::id());
    }
    panic!("no database here");
}

#[multitasking::task]
fn slow_init(_x: ()) {
    std::thread::sleep(Duration::from_secs(3));
}

/// True if `pid` is gone or a zombie (dead, waiting for a reaper that is
/// not us).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Err(_) => true,
        Ok(s) => s
            .lines()
            .find(|l| l.starts_with("State:"))
            .is_some_and(|l| l.contains('Z') || l.contains('X')),
    }
}

/// Waits up to `limit` for `pid` to be gone; true if it went.
pub(crate) fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !gone(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

#[test]
fn workers_are_reused_and_run_in_other_processes() {
    let p = ProcessPool::builder().max_workers(2).build().unwrap();
    let pids = p.worker_pids();
    assert_eq!(pids.len(), 2);
    assert!(!pids.contains(&std::process::id()));
    let seen: std::collections::BTreeSet<u32> = p
        .map(whoami, vec![(); 50])
        .chunksize(1)
        .map(Result::unwrap)
        .collect();
    assert!(
        seen.iter().all(|pid| pids.contains(pid)),
        "{seen:?} vs {pids:?}"
    );
    assert_eq!(p.spec(), "processes:2");
}

#[test]
fn max_tasks_per_child_replaces_workers() {
    let p = ProcessPool::builder()
        .max_workers(1)
        .max_tasks_per_child(3)
        .build()
        .unwrap();
    let pids: Vec<u32> = (0..7)
        .map(|_| get(&p.submit(whoami, ()).unwrap()).unwrap())
        .collect();
    assert_eq!(pids[0], pids[2]);
    assert_ne!(pids[2], pids[3]);
    assert_eq!(pids[3], pids[5]);
    assert_ne!(pids[5], pids[6]);
}

#[test]
fn the_initializer_runs_in_every_worker() {
    let p = ProcessPool::builder()
        .max_workers(2)
        .initializer(init_marker)
        .build()
        .unwrap();
    assert!(
        !INITIALIZED.load(std::sync::atomic::Ordering::SeqCst),
        "not in the parent"
    );
    for r in p.map(was_initialized, vec![(); 8]).chunksize(1) {
        assert_eq!(r, Ok(true));
    }
}

#[test]
fn a_failing_initializer_fails_the_build_clearly() {
    let log = pid_file("init-log");
    let _ = std::fs::remove_file(&log);
    // Workers inherit the environment; each test runs in its own process.
    std::env::set_var("MULTITASK_TEST_INIT_LOG", &log);
    let e = ProcessPool::builder()
        .max_workers(2)
        .initializer(failing_init)
        .build()
        .expect_err("the initializer fails");
    // The failed pool closes at once: its supervisors do not start the
    // workers again first (counted, not timed: a loaded machine starts
    // processes slowly).
    let starts = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count();
    let _ = std::fs::remove_file(&log);
    assert!(starts <= 2, "{starts} worker starts for 2 slots");
    let text = e.to_string();
    assert!(
        text.contains("initializer") && text.contains("no database here"),
        "{text}"
    );
}

#[test]
fn shutdown_and_drop_reap_every_worker() {
    let p = ProcessPool::builder().max_workers(2).build().unwrap();
    let pids = p.worker_pids();
    let f = p.submit(sleep_ms, 100).unwrap();
    drop(p);
    assert_eq!(get(&f), Ok(100), "drop waited for running work");
    for pid in pids {
        // Reaped by the pool: no zombie, no process.
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} was not reaped"
        );
    }
}

#[test]
fn kill_workers_stops_everything_at_once() {
    let p = ProcessPool::builder().max_workers(1).build().unwrap();
    let running = p.submit(spin_forever, ()).unwrap();
    let queued = p.submit(sleep_ms, 10).unwrap();
    let deadline = Instant::now() + LIMIT;
    while !running.running() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = Instant::now();
    p.kill_workers();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(matches!(get(&running), Err(TaskError::Terminated { .. })));
    assert!(matches!(get(&queued), Err(TaskError::Cancelled { .. })));
    let e = p.submit(sleep_ms, 1).expect_err("closed");
    assert!(matches!(e.error, TaskError::Shutdown { .. }));
    p.shutdown(Shutdown::default());
}

#[test]
fn a_process_runs_one_task_and_exits() {
    let p = Process::spawn(whoami, ()).unwrap();
    let pid = p.pid();
    assert_ne!(pid, std::process::id());
    assert_eq!(p.join(), Ok(pid));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "reaped"
    );
}

#[test]
fn a_terminated_process_ends_as_terminated() {
    let mut p = Process::spawn(spin_forever, ()).unwrap();
    assert!(p.join_timeout(Duration::from_millis(50)).is_none());
    assert!(p.is_alive());
    assert!(p.terminate());
    let pid = p.pid();
    match p.join_timeout(LIMIT).expect("it ends") {
        Err(e @ TaskError::Terminated { .. }) => {
            assert!(matches!(e, TaskError::Terminated { pid: got, .. } if got == pid));
            assert!(e.to_string().contains("killed on request"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let status = p.exit_status().expect("reaped");
    assert!(!status.success());
}

/// Not a test on its own: the child of `workers_die_with_their_parent`.
#[test]
#[ignore = "run by workers_die_with_their_parent"]
fn orphan_parent() {
    if std::env::var_os("MULTITASK_TEST_ORPHAN").is_none() {
        return;
    }
    let p = ProcessPool::builder().max_workers(2).build().unwrap();
    let pids: Vec<String> = p.worker_pids().iter().map(u32::to_string).collect();
    println!("pids {}", pids.join(" "));
    let _busy = p.submit(spin_forever, ()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn workers_die_with_their_parent() {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "process::orphan_parent",
            "--ignored",
            "--nocapture",
        ])
        .env("MULTITASK_TEST_ORPHAN", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("pids ") {
                let _ = tx.send(rest.to_string());
            }
        }
    });
    let Ok(line) = rx.recv_timeout(LIMIT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the parent never reported its workers");
    };
    let pids: Vec<u32> = line.split(' ').map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2);
    child.kill().unwrap(); // SIGKILL: no destructor, no shutdown.
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !pids.iter().all(|&p| gone(p)) {
        assert!(
            Instant::now() < deadline,
            "workers {pids:?} outlived their SIGKILLed parent by 2 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn replies_come_back_when_callers_stop_reading_them_themselves() {
    // While callers spin for their results they read the worker's replies
    // themselves, and the slot's supervisor stops watching the socket.
    // Right after such a run, a reply nobody spins for, a task that
    // outlasts its caller's spin, and a worker that dies must still reach
    // their futures: the supervisor looks again or is rung.
    let p = ProcessPool::builder().max_workers(1).build().unwrap();
    for round in 0..20u64 {
        for i in 0..50u64 {
            assert_eq!(get(&p.submit(crate::tasks::double, i).unwrap()), Ok(2 * i));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let t = Instant::now();
        let f = p.submit(crate::tasks::double, round).unwrap();
        f.add_done_callback(move |r| {
            let _ = tx.send(r.clone());
        });
        let got = rx
            .recv_timeout(LIMIT)
            .expect("the reply nobody read came back");
        assert_eq!(got, Ok(2 * round));
        // Bounded by the supervisor's second look (1 ms) and a busy
        // machine's scheduling, not by a wait for a socket nobody watches.
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // Outlasts the caller's spin: the caller parks, the supervisor reads.
        let f = p.submit(sleep_ms, 5).unwrap();
        assert_eq!(get(&f), Ok(5));
    }
    for i in 0..50u64 {
        assert_eq!(get(&p.submit(crate::tasks::double, i).unwrap()), Ok(2 * i));
    }
    let f = p.submit(spin_forever, ()).unwrap();
    let t = Instant::now();
    while !f.running() {
        assert!(t.elapsed() < LIMIT, "the task never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(f.terminate());
    assert!(
        matches!(get(&f), Err(TaskError::Terminated { .. })),
        "{:?}",
        get(&f)
    );
    assert_eq!(get(&p.submit(crate::tasks::double, 4).unwrap()), Ok(8));
}

#[test]
fn a_done_callback_may_submit_to_the_same_pool() {
    // Futures are resolved outside the worker slot's lock: a callback
    // that submits again must not deadlock, whoever resolves the future
    // (the supervisor, or a caller spinning for its own result).
    let p = std::sync::Arc::new(ProcessPool::builder().max_workers(2).build().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..20u64 {
        let f = p.submit(crate::tasks::double, i).unwrap();
        let (p2, tx) = (p.clone(), tx.clone());
        f.add_done_callback(move |r| {
            let again = p2
                .submit(crate::tasks::double, *r.as_ref().unwrap())
                .unwrap();
            let _ = tx.send(again);
        });
        if i % 2 == 0 {
            // Half are waited for at once: their caller reads the reply.
            assert_eq!(get(&f), Ok(2 * i));
        }
    }
    let mut got: Vec<u64> = (0..20)
        .map(|_| get(&rx.recv_timeout(LIMIT).expect("every callback ran")).unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..20u64).map(|i| 4 * i).collect::<Vec<_>>());
}

#[test]
fn an_idle_worker_that_dies_is_replaced_at_once() {
    let p = ProcessPool::builder().max_workers(1).build().unwrap();
    let old = p.worker_pids()[0];
    assert!(rustix::process::kill_process(
        rustix::process::Pid::from_raw(old as i32).unwrap(),
        rustix::process::Signal::KILL
    )
    .is_ok());
    let deadline = Instant::now() + LIMIT;
    loop {
        let pids = p.worker_pids();
        if pids.len() == 1 && pids[0] != old {
            break;
        }
        assert!(Instant::now() < deadline, "worker {old} was not replaced");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(gone(old), "the dead worker was reaped");
    let f = p.submit(whoami, ()).unwrap();
    assert_eq!(get(&f), Ok(p.worker_pids()[0]));
}

#[test]
fn many_threads_submitting_at_once_lose_no_call() {
    // Submitters, waiters that read replies themselves, and supervisors
    // all drive the same slots; every call must come back exactly once.
    let p = ProcessPool::builder().max_workers(2).build().unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let p = &p;
            s.spawn(move || {
                let mut pending = Vec::new();
                for i in 0..500u64 {
                    let x = t * 1000 + i;
                    let f = p.submit(crate::tasks::double, x).unwrap();
                    if i % 3 == 0 {
                        assert_eq!(get(&f), Ok(2 * x));
                    } else {
                        pending.push((x, f));
                    }
                }
                for (x, f) in pending {
                    assert_eq!(get(&f), Ok(2 * x));
                }
            });
        }
    });
}

/// Shutdown with `cancel_futures` runs the cancelled futures' callbacks
/// outside the pool's locks: a callback that submits again gets a clear
/// refusal, not a deadlock.
fn cancel_callbacks_may_call_back<E: Executor + Send + Sync + 'static>(ex: E) {
    let ex = std::sync::Arc::new(ex);
    let busy: Vec<_> = (0..ex.max_workers())
        .map(|_| ex.submit(sleep_ms, 300).unwrap())
        .collect();
    crate::conformance::until_running(&busy);
    let queued = ex.submit(sleep_ms, 1).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let again = ex.clone();
    queued.add_done_callback(move |r| {
        let refused = again.submit(sleep_ms, 1).err().map(|e| e.error);
        let _ = tx.send((r.clone(), refused));
    });
    ex.shutdown(Shutdown {
        wait: false,
        cancel_futures: true,
    });
    let (outcome, refused) = rx.recv_timeout(LIMIT).expect("the callback ran");
    assert!(
        matches!(outcome, Err(TaskError::Cancelled { .. })),
        "{outcome:?}"
    );
    assert!(
        matches!(refused, Some(TaskError::Shutdown { .. })),
        "{refused:?}"
    );
    for f in &busy {
        assert_eq!(get(f), Ok(300));
    }
}

#[test]
fn cancel_callbacks_may_call_back_into_a_process_pool() {
    cancel_callbacks_may_call_back(ProcessPool::builder().max_workers(2).build().unwrap());
}

#[test]
fn cancel_callbacks_may_call_back_into_a_thread_pool() {
    cancel_callbacks_may_call_back(multitasking::ThreadPool::new(2).unwrap());
}

/// Runs `f` on a helper thread and fails the test if it does not return
/// within `limit`: a hang becomes a failure with a message.
pub(crate) fn bounded<R: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not return within {limit:?}"))
}

#[test]
fn drop_returns_after_the_caller_drove_the_last_calls() {
    // Shutdown rings every supervisor; a supervisor that then saw a call in
    // flight parks on the worker's socket. If the caller, spinning for its
    // results, reads the last reply itself, nothing is left on the socket:
    // the supervisor must still be told that the slot is idle and the pool
    // closed, or the drop joins it forever.
    for round in 0..60 {
        let p = ProcessPool::builder().max_workers(1).build().unwrap();
        let futs: Vec<_> = (0..10u64)
            .map(|i| p.submit(crate::tasks::double, i).unwrap())
            .collect();
        p.shutdown(Shutdown {
            wait: false,
            cancel_futures: false,
        });
        for (i, f) in futs.iter().enumerate() {
            assert_eq!(get(f), Ok(2 * i as u64));
        }
        bounded(
            &format!("round {round}: the pool's drop"),
            LIMIT,
            move || drop(p),
        );
    }
}

/// A fresh path for a `spawn_sleeper` pid file.
fn pid_file(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("multitask-{name}-{}", std::process::id()))
}

/// Waits (bounded) for the pid `spawn_sleeper` wrote to `path`.
fn sleeper_pid(path: &std::path::Path) -> u32 {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            let _ = std::fs::remove_file(path);
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "the task never started its sleep"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Asserts the task's `sleep 300` died with its worker.
fn assert_sleeper_gone(pid: u32, when: &str) {
    let alive = !wait_gone(pid, Duration::from_secs(5));
    if alive {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    assert!(
        !alive,
        "{when}: the task's child {pid} outlived its worker by 5 s"
    );
}

fn sleeper_pool(b: multitasking::ProcessPoolBuilder) -> ProcessPool {
    b.max_workers(1).build().unwrap()
}

#[test]
fn a_timed_out_task_takes_the_processes_it_started_with_it() {
    use crate::tasks::{spawn_sleeper, Then};
    let p = sleeper_pool(ProcessPool::builder().task_timeout(Duration::from_millis(500)));
    let path = pid_file("timeout");
    let f = p
        .submit(spawn_sleeper, (path.display().to_string(), Then::Hang))
        .unwrap();
    let pid = sleeper_pid(&path);
    assert!(matches!(get(&f), Err(TaskError::TimedOut { .. })));
    assert_sleeper_gone(pid, "timeout");
}

#[test]
fn a_terminated_task_takes_the_processes_it_started_with_it() {
    use crate::tasks::{spawn_sleeper, Then};
    let p = sleeper_pool(ProcessPool::builder());
    let path = pid_file("terminate");
    let f = p
        .submit(spawn_sleeper, (path.display().to_string(), Then::Hang))
        .unwrap();
    let pid = sleeper_pid(&path);
    assert!(f.terminate());
    assert!(matches!(get(&f), Err(TaskError::Terminated { .. })));
    assert_sleeper_gone(pid, "terminate");
}

#[test]
fn a_memory_kill_takes_the_processes_it_started_with_it() {
    use crate::tasks::{spawn_sleeper, Then};
    let p = sleeper_pool(ProcessPool::builder().memory_limit(64 << 20));
    let path = pid_file("memory");
    let f = p
        .submit(spawn_sleeper, (path.display().to_string(), Then::Hog))
        .unwrap();
    let pid = sleeper_pid(&path);
    let r = get(&f);
    assert!(matches!(r, Err(TaskError::MemoryExceeded { .. })), "{r:?}");
    assert_sleeper_gone(pid, "memory kill");
}

#[test]
fn shutdown_takes_what_the_workers_started_with_them() {
    use crate::tasks::{spawn_sleeper, Then};
    let p = sleeper_pool(ProcessPool::builder());
    let path = pid_file("shutdown");
    let f = p
        .submit(spawn_sleeper, (path.display().to_string(), Then::Return))
        .unwrap();
    let pid = get(&f).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(!gone(pid), "the sleep runs on after its task returned");
    bounded("the pool's drop", LIMIT, move || drop(p));
    assert_sleeper_gone(pid, "shutdown");
}

#[test]
fn killing_a_process_takes_what_its_task_started_with_it() {
    use crate::tasks::{spawn_sleeper, Then};
    let path = pid_file("single");
    let mut p = Process::spawn(spawn_sleeper, (path.display().to_string(), Then::Hang)).unwrap();
    let pid = sleeper_pid(&path);
    assert!(p.kill());
    assert!(p.join_timeout(LIMIT).expect("it ends").is_err());
    assert_sleeper_gone(pid, "Process::kill");
}

#[test]
fn a_process_that_crashes_says_how_without_claiming_a_replacement() {
    let p = Process::spawn(crate::tasks::crash, crate::tasks::Crash::SigKill).unwrap();
    match p.join() {
        Err(e @ TaskError::WorkerDied { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("which was killed by signal 9 (SIGKILL)"),
                "{text}"
            );
            assert!(
                !text.contains("took its place"),
                "a lone process is not replaced: {text}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_process_outlives_the_thread_that_spawned_it() {
    // PR_SET_PDEATHSIG fires when the spawning *thread* exits: a Process
    // spawned from a thread that ends at once must still run to the end.
    let p = std::thread::spawn(|| Process::spawn(sleep_ms, 300).unwrap())
        .join()
        .unwrap();
    let mut p = p;
    assert_eq!(p.join_timeout(LIMIT), Some(Ok(300)));
}

#[test]
fn a_slow_initializer_is_reported_as_slow_not_as_a_missing_init() {
    let t = Instant::now();
    let e = ProcessPool::builder()
        .max_workers(1)
        .initializer(slow_init)
        .start_timeout(Duration::from_millis(500))
        .build()
        .expect_err("the initializer is too slow");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let text = e.to_string();
    assert!(
        text.contains("initializer did not finish") && text.contains("raise start_timeout"),
        "{text}"
    );
    assert!(!text.contains("init() first"), "{text}");
}

/// A pool dropped while its owner panics cancels the queue instead of
/// running it first (it waited for every queued task, 30 s in one run).
#[test]
fn a_pool_dropped_in_a_panic_cancels_what_has_not_started() {
    let path = std::env::temp_dir().join(format!(
        "multitasking-panicdrop-{}.marks",
        std::process::id()
    ));
    let path = path.to_string_lossy().into_owned();
    let _ = std::fs::remove_file(&path);
    let p = path.clone();
    let owner = std::thread::spawn(move || {
        let pool = ProcessPool::builder().max_workers(1).build().unwrap();
        // The one worker is busy for a while: the marks wait in the queue.
        let busy = pool.submit(crate::tasks::sleep_ms, 500).unwrap();
        let futs: Vec<_> = (0..20u64)
            .map(|i| pool.submit(crate::tasks::mark, (p.clone(), i)).unwrap())
            .collect();
        let _keep = (pool, busy, futs);
        // Unwinds without the panic hook: under load, printing a panic's
        // backtrace can take longer than the busy task, which would then
        // finish and let the queue run before the pool is dropped.
        std::panic::resume_unwind(Box::new("the owner gives up"));
    });
    assert!(owner.join().is_err());
    let ran = crate::tasks::marks(&path);
    let _ = std::fs::remove_file(&path);
    assert!(
        ran.is_empty(),
        "queued tasks ran during the unwind: {ran:?}"
    );
}
