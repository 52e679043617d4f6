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
