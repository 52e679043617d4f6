//! Runs each example binary (built by `cargo test` beside this test) and
//! checks what it prints: the seed notes retold must keep working.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The bound on each example's run.
const LIMIT: Duration = Duration::from_secs(60);

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/integration-<hash> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "example {name} is not built at {}: build them first: `cargo build --examples` (bash scripts/test.sh does)",
        path.display()
    );
    path
}

/// Runs an example with `args`, bounded by `LIMIT`; returns its stdout.
fn run(name: &str, args: &[&str]) -> String {
    let mut child = Command::new(example(name))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn example");
    let deadline = Instant::now() + LIMIT;
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("example {name} ran past {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "example {name} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn delivery_runs_on_a_named_thread() {
    let out = run("delivery", &[]);
    assert!(out.contains("delivering books on main"), "{out}");
    assert!(out.contains("delivering books on delivery-1"), "{out}");
}

#[test]
fn stop_flag_stops_without_waiting_out_the_sleep() {
    let out = run("stop_flag", &[]);
    assert!(
        out.contains("do Overwork") && out.contains("retired.."),
        "{out}"
    );
    assert!(out.contains("not up to 3 s"), "{out}");
}

#[test]
fn pool_map_shows_workers_and_doubles() {
    let out = run("pool_map", &["threads:2"]);
    assert!(out.contains("[2, 4, 6, 8, 10]"), "{out}");
    assert_eq!(out.matches("I'm processing on").count(), 5, "{out}");
}

#[test]
fn executor_submit_waits_at_the_end_of_the_block() {
    let out = run("executor_submit", &[]);
    assert!(out.contains("delivering"), "{out}");
    assert!(out.contains("result: delivered"), "{out}");
}

#[test]
fn primes_agrees_with_the_seed() {
    let out = run("primes", &["threads:2"]);
    for (n, p) in [
        ("112582705942171", "true"),
        ("115797848077099", "true"),
        ("1099726899285419", "false"),
    ] {
        assert_eq!(
            out.matches(&format!("{n} is prime: {p}")).count(),
            2,
            "{out}"
        );
    }
    assert!(out.contains("speedup"), "{out}");
}

#[test]
fn queue_pool_joins_the_queue_and_stops_every_worker() {
    let out = run("queue_pool", &[]);
    assert!(out.contains("queue joined: 12 jobs done"), "{out}");
    assert_eq!(out.matches(" is prime: ").count(), 12, "{out}");
    // 1000003 is the one prime among 1000003, 1000005, ..., 1000025.
    assert_eq!(out.matches("is prime: true").count(), 1, "{out}");
    assert!(out.contains("1000003 is prime: true"), "{out}");
    assert!(out.contains("1000025 is prime: false"), "{out}");
    assert!(
        out.contains("workers stopped: 3 joined, 12 jobs between them"),
        "{out}"
    );
}

#[test]
fn forgetting_init_fails_fast_with_one_process_per_slot() {
    let pids = std::env::temp_dir().join(format!("multitask-forgot-init-{}", std::process::id()));
    let _ = std::fs::remove_file(&pids);
    let count = || {
        std::fs::read_to_string(&pids)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let t = Instant::now();
    let mut child = Command::new(example("forgot_init"))
        .env("FORGOT_INIT_PIDS", &pids)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn example");
    // The program and its two worker starts; more is a process storm.
    let most = 3;
    let deadline = Instant::now() + LIMIT;
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        // SIGKILL ends the storm too: every worker dies with its parent.
        let n = count();
        if n > most || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&pids);
            panic!(
                "forgot_init started {n} processes (at most {most} expected) in {:?}",
                t.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = t.elapsed();
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let started = count();
    let _ = std::fs::remove_file(&pids);
    assert!(started <= most, "{started} processes started");
    assert!(
        stdout.contains("the pool did not start")
            && stdout.contains("call multitasking::init() first thing in main"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("before calling multitasking::init(); exiting"),
        "each worker start says why it exits: {stderr}"
    );
    // Well before the 10 s start timeout: the first attempt reports it.
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}

#[test]
fn a_worker_started_from_main_dies_of_a_sigsegv_sent_to_it() {
    // The example's workers start from `init()` in `main`, after std has
    // installed its SIGSEGV handler: the signal must still kill them.
    let out = run("crash_isolation", &[]);
    let line = |how: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{how}:")))
            .unwrap_or_else(|| panic!("no {how} line: {out}"))
            .to_string()
    };
    assert!(line("panic").contains("panicked"), "{out}");
    assert!(line("abort").contains("signal 6"), "{out}");
    let segv = line("segfault");
    assert!(
        segv.starts_with("segfault: worker_died") && segv.contains("signal 11 (SIGSEGV)"),
        "{out}"
    );
    assert!(line("nothing").contains("ran in pid"), "{out}");
}
