//! Drives the real `multitask` binary: primes, info and run, their output,
//! JSON shapes, exit statuses and error lines.
//!
//! Every run goes through [`multitask`], which spawns the binary, feeds its
//! stdin, reads its output on threads and polls it against a deadline: a
//! hang kills the child and fails the test with a message, never a CI
//! timeout.

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/bounded.rs"]
mod bounded;

use bounded::run_bounded;

/// What a run of the binary did.
#[derive(Debug)]
struct Ran {
    /// The exit code (`None` if killed by a signal).
    code: Option<i32>,
    /// Its stdout.
    stdout: String,
    /// Its stderr.
    stderr: String,
    /// How long it ran.
    elapsed: Duration,
}

impl Ran {
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

/// Runs `multitask ARGS` with no stdin, allowing 60 s.
fn multitask(args: &[&str]) -> Ran {
    multitask_with(args, None, Duration::from_secs(60))
}

/// Runs `multitask ARGS` with `stdin`, failing the test after `limit`.
fn multitask_with(args: &[&str], stdin: Option<&str>, limit: Duration) -> Ran {
    multitask_env(args, stdin, &[], limit)
}

/// As [`multitask_with`], with environment variables `env` set.
fn multitask_env(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)], limit: Duration) -> Ran {
    let mut command = Command::new(env!("CARGO_BIN_EXE_multitask"));
    command
        .args(args)
        .envs(env.iter().copied())
        .env_remove("NO_COLOR");
    let done = run_bounded(command, stdin, limit, &format!("multitask {args:?}"));
    Ran {
        code: done.code,
        stdout: done.stdout,
        stderr: done.stderr,
        elapsed: done.elapsed,
    }
}

const SEED_VERDICTS: [&str; 6] = [
    "112272535095293 is prime: true",
    "112582705942171 is prime: true",
    "112272535095293 is prime: true",
    "115280095190773 is prime: true",
    "115797848077099 is prime: true",
    "1099726899285419 is prime: false",
];

fn assert_primes_report(ran: &Ran) {
    assert_eq!(ran.code, Some(0), "stderr: {}", ran.stderr);
    let lines = ran.lines();
    assert_eq!(lines.len(), 9, "{}", ran.stdout);
    assert_eq!(lines[..6], SEED_VERDICTS);
    assert!(lines[6].starts_with("serial "), "{}", lines[6]);
    assert!(lines[7].starts_with("parallel "), "{}", lines[7]);
    // `serial    0.054 s  (median of 3: 0.054-0.060)  this thread`
    assert!(lines[6].contains("(median of 3: "), "{}", lines[6]);
    // `speedup   1.85x  (1.70-2.12: faster)`, or a reason why not.
    let speedup = lines[8]
        .strip_prefix("speedup")
        .expect("speedup line")
        .trim();
    let (number, rest) = speedup
        .split_once("x  (")
        .expect("a speedup and its interval");
    assert!(
        number.parse::<f64>().is_ok() && number.split('.').nth(1).map(str::len) == Some(2),
        "speedup not formatted as {{:.2}}x: {speedup}"
    );
    assert!(
        ["faster)", "slower)", "can't tell: the runs overlap)"]
            .iter()
            .any(|v| rest.ends_with(v)),
        "{speedup}"
    );
}

#[test]
fn primes_on_threads_prints_the_seed_verdicts_in_order() {
    assert_primes_report(&multitask(&["primes", "--executor", "threads"]));
}

// NOTE: the default executor is `processes`. This test fails until the
// process pool merges (the binary then reports "not available" and exits
// 1); it checks the real exit status on purpose and is made to pass at
// that merge, not skipped.
#[test]
fn primes_on_the_default_executor_prints_the_seed_verdicts() {
    assert_primes_report(&multitask(&["primes"]));
}

#[test]
fn primes_takes_numbers_and_keeps_their_order() {
    let ran = multitask(&["primes", "-e", "threads:2", "9", "2", "97", "1", "0"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(
        ran.lines()[..5],
        [
            "9 is prime: false",
            "2 is prime: true",
            "97 is prime: true",
            "1 is prime: false",
            "0 is prime: false",
        ]
    );
}

#[test]
fn primes_json_has_the_documented_shape() {
    let ran = multitask(&["primes", "-e", "threads:2", "--json", "7", "8"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let v: Value = serde_json::from_str(&ran.stdout).expect("one JSON object");
    assert_eq!(v["executor"], "threads:2");
    assert_eq!(v["workers"], 2);
    assert_eq!(
        v["results"],
        serde_json::json!([{"n": 7, "prime": true}, {"n": 8, "prime": false}])
    );
    for key in ["serial_s", "parallel_s"] {
        assert!(v[key].as_f64().is_some(), "{key} in {v}");
    }
    // Two tiny numbers are too short to time: no speedup is claimed.
    assert_eq!(v["verdict"], "too_short", "{v}");
    assert!(v["speedup"].is_null(), "{v}");
    assert_eq!(v["serial_runs"].as_array().map(Vec::len), Some(3), "{v}");
    assert!(v["load"]["cpus"].as_u64().is_some(), "{v}");
    assert!(v["warnings"].is_array(), "{v}");
}

#[test]
fn serial_claims_no_speedup_against_itself() {
    let ran = multitask(&["primes", "-e", "serial", "--repeat", "1"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        ran.stdout
            .contains("speedup   none: serial is the baseline"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("serial, 1 worker\n"), "{}", ran.stdout);
}

#[test]
fn primes_show_worker_gives_each_verdict_a_pid() {
    let ran = multitask(&["primes", "-e", "threads", "--show-worker", "5", "6"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    for (line, verdict) in ran
        .lines()
        .iter()
        .zip(["5 is prime: true", "6 is prime: false"])
    {
        let pid = line
            .strip_prefix(verdict)
            .and_then(|rest| rest.trim().strip_prefix("(pid "))
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("no pid in {line:?}"));
        assert!(pid.parse::<u32>().is_ok(), "{line}");
    }
    let ran = multitask(&["primes", "-e", "serial", "--show-worker", "--json", "5"]);
    let v: Value = serde_json::from_str(&ran.stdout).expect("JSON");
    assert!(v["results"][0]["pid"].as_u64().is_some(), "{v}");
}

#[test]
fn a_bad_spec_is_one_line_and_a_usage_error() {
    let ran = multitask(&["primes", "--executor", "gpus:4"]);
    assert_eq!(ran.code, Some(2));
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
    assert!(
        ran.stderr.starts_with("multitask: error: "),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("gpus"), "{}", ran.stderr);
    assert!(ran.stdout.is_empty());
}

#[test]
fn a_bad_number_is_a_clear_error() {
    let ran = multitask(&["primes", "-e", "threads", "12", "twelve"]);
    assert_eq!(ran.code, Some(2));
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
    assert!(
        ran.stderr.starts_with("multitask: error: "),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("'twelve'"), "{}", ran.stderr);
}

#[test]
fn info_json_has_every_field() {
    let ran = multitask(&["info", "--json"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let v: Value = serde_json::from_str(&ran.stdout).expect("JSON");
    for key in [
        "pid",
        "uid",
        "gid",
        "cwd",
        "host",
        "cpus_online",
        "cpus_usable",
        "memory_total",
        "memory_available",
        "memory_limit",
    ] {
        assert!(v.get(key).is_some(), "{key} missing from {v}");
    }
    assert!(v["cpus_usable"].as_u64().unwrap() >= 1);
    let text = multitask(&["info"]);
    assert!(text.stdout.contains("GiB"), "{}", text.stdout);
}

fn sorted(ran: &Ran) -> Vec<&str> {
    let mut lines = ran.lines();
    lines.sort_unstable();
    lines
}

#[test]
fn run_takes_arguments_after_the_separator() {
    let ran = multitask(&[
        "run", "-e", "threads", "-j", "3", "echo", "got", ":::", "a", "b", "c",
    ]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(sorted(&ran), ["got a", "got b", "got c"]);
}

#[test]
fn run_reads_arguments_from_stdin() {
    let ran = multitask_with(
        &["run", "-e", "threads", "-k", "echo {#}={}"],
        Some("x\ny y\nz\n"),
        Duration::from_secs(60),
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(ran.lines(), ["1=x", "2=y y", "3=z"]);
}

#[test]
fn run_replaces_the_placeholders() {
    let ran = multitask(&[
        "run",
        "-e",
        "threads",
        "echo {} {.} {/} {//} {/.}",
        ":::",
        "dir/file.txt",
    ]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(ran.lines(), ["dir/file.txt dir/file file.txt dir file"]);
}

#[test]
fn run_keeps_order_with_k() {
    // The first job is the slowest, so only -k keeps it first.
    let cmd = "sleep 0.$(( (3 - {#}) * 3 )); echo {}";
    let ran = multitask(&[
        "run", "-e", "threads", "-j", "3", "-k", cmd, ":::", "a", "b", "c",
    ]);
    assert_eq!(ran.lines(), ["a", "b", "c"], "{}", ran.stderr);
    let ran = multitask(&["run", "-e", "threads", "-j", "3", cmd, ":::", "a", "b", "c"]);
    assert_eq!(ran.lines(), ["c", "b", "a"], "{}", ran.stderr);
}

#[test]
fn run_exits_with_the_number_of_failed_jobs() {
    let ran = multitask(&[
        "run", "-e", "threads", "exit {}", ":::", "0", "1", "0", "7", "2",
    ]);
    assert_eq!(ran.code, Some(3), "{}", ran.stderr);
    let ran = multitask(&["run", "-e", "threads", "true", ":::", "a", "b"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
}

#[test]
fn run_timeout_kills_a_long_job() {
    let ran = multitask_with(
        &[
            "run",
            "-e",
            "threads",
            "--timeout",
            "0.5",
            "sleep 10; echo {}",
            ":::",
            "late",
        ],
        None,
        Duration::from_secs(30),
    );
    assert!(
        ran.elapsed < Duration::from_secs(5),
        "took {:?}",
        ran.elapsed
    );
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(!ran.stdout.contains("late"), "{}", ran.stdout);
    assert!(ran.stderr.contains("timed out"), "{}", ran.stderr);
}

#[test]
fn run_writes_a_gnu_parallel_joblog() {
    let path = std::env::temp_dir().join(format!("multitask-joblog-{}.tsv", std::process::id()));
    let log = path.to_str().expect("utf-8 temp path");
    let ran = multitask(&[
        "run",
        "-e",
        "threads",
        "-k",
        "--joblog",
        log,
        "echo {}; exit {}",
        ":::",
        "0",
        "3",
    ]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let text = std::fs::read_to_string(&path).expect("joblog written");
    let _ = std::fs::remove_file(&path);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand")
    );
    let mut rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    rows.sort_by_key(|r| r[0].to_string());
    assert_eq!(rows.len(), 2, "{text}");
    for (row, (seq, code)) in rows.iter().zip([("1", "0"), ("2", "3")]) {
        assert_eq!(row.len(), 9, "{row:?}");
        assert_eq!((row[0], row[1], row[6], row[7]), (seq, ":", code, "0"));
        assert!(row[2].parse::<f64>().unwrap() > 1e9, "{row:?}");
        assert!(row[3].trim().parse::<f64>().is_ok(), "{row:?}");
        assert_eq!((row[4], row[5]), ("0", "2"));
        assert_eq!(row[8], format!("echo {code}; exit {code}"));
    }
}

#[test]
fn run_halt_now_stops_at_the_first_failure() {
    let cmd = "if [ {} = 2 ]; then exit 3; fi; echo {}";
    let ran = multitask(&[
        "run",
        "-e",
        "threads",
        "-j",
        "1",
        "-k",
        "--halt",
        "now,fail=1",
        cmd,
        ":::",
        "1",
        "2",
        "3",
        "4",
    ]);
    assert_eq!(ran.lines(), ["1"], "{}", ran.stderr);
    assert_eq!(
        ran.code,
        Some(3),
        "GNU parallel's rule: the failing job's status"
    );
    assert!(ran.stderr.contains("halting"), "{}", ran.stderr);

    // A running job is killed, not waited for.
    let cmd = "case {} in f) exit 1;; *) sleep 10;; esac";
    let ran = multitask_with(
        &[
            "run",
            "-e",
            "threads",
            "-j",
            "2",
            "--halt",
            "now,fail=1",
            cmd,
            ":::",
            "s",
            "f",
        ],
        None,
        Duration::from_secs(30),
    );
    assert!(
        ran.elapsed < Duration::from_secs(5),
        "took {:?}",
        ran.elapsed
    );
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
}

#[test]
fn run_dry_run_prints_quoted_commands() {
    let ran = multitask(&["run", "--dry-run", "gzip", ":::", "a b.txt", "c"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(ran.lines(), ["gzip 'a b.txt'", "gzip c"]);
}

#[test]
fn run_rejects_a_bad_halt() {
    let ran = multitask(&["run", "--halt", "sometimes", "true", ":::", "a"]);
    assert_eq!(ran.code, Some(2));
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
}

/// A run's stdout so far and whether it ended, with a condvar rung on
/// each change.
type Output = std::sync::Arc<(std::sync::Mutex<(Vec<u8>, bool)>, std::sync::Condvar)>;

/// A run of the binary read while it runs: its stdout as it arrives.
struct Live {
    child: std::process::Child,
    /// Its stdout so far, and whether it ended.
    out: Output,
    reader: Option<thread::JoinHandle<()>>,
}

impl Live {
    fn start(args: &[&str]) -> Live {
        let mut child = Command::new(env!("CARGO_BIN_EXE_multitask"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn multitask");
        let mut pipe = child.stdout.take().expect("stdout piped");
        let out: Output = Default::default();
        let shared = std::sync::Arc::clone(&out);
        let reader = thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                let n = pipe.read(&mut chunk).unwrap_or(0);
                let mut st = shared.0.lock().unwrap();
                if n == 0 {
                    st.1 = true;
                } else {
                    st.0.extend_from_slice(&chunk[..n]);
                }
                shared.1.notify_all();
                if n == 0 {
                    return;
                }
            }
        });
        Live {
            child,
            out,
            reader: Some(reader),
        }
    }

    /// Waits, at most `limit`, until stdout holds every one of `needles`;
    /// the stdout so far, panicking if they did not all come.
    fn wait_for(&self, needles: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let mut st = self.out.0.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&st.0).into_owned();
            if needles.iter().all(|n| text.contains(n)) {
                return text;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero() && !st.1,
                "waited {limit:?} for {needles:?} on stdout; got {text:?}"
            );
            st = self.out.1.wait_timeout(st, left).unwrap().0;
        }
    }

    /// Waits, at most `limit`, for the run to end: its exit code and
    /// whole stdout.
    fn finish(mut self, limit: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the run did not end in {limit:?}"
            );
            thread::sleep(Duration::from_millis(10));
        };
        self.reader.take().unwrap().join().unwrap();
        let text = String::from_utf8_lossy(&self.out.0.lock().unwrap().0).into_owned();
        (status.code(), text)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh scratch directory for one test.
fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("multitask-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A shell snippet that waits (at most 20 s) until `gate` exists.
fn wait_for_gate(gate: &std::path::Path) -> String {
    format!(
        "i=0; while [ ! -e '{}' ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done",
        gate.display()
    )
}

#[test]
fn run_line_buffer_prints_each_line_as_it_comes() {
    for executor in ["processes", "threads"] {
        let dir = scratch_dir(&format!("line-buffer-{executor}"));
        let gate = dir.join("gate");
        // Job 1 prints a line, then waits for the test to open the gate
        // before its second line; job 2 prints at once. Both first lines
        // must arrive while job 1 still runs (it cannot end before the
        // gate opens, so whole-at-the-end output would time out here).
        let slow = format!("echo first; {}; echo second", wait_for_gate(&gate));
        let live = Live::start(&[
            "run",
            "--quiet",
            "-e",
            executor,
            "-j",
            "2",
            "--line-buffer",
            "--tagstring",
            "{#}",
            "sh -c {}",
            ":::",
            &slow,
            "echo quick",
        ]);
        let early = live.wait_for(&["1\tfirst\n", "2\tquick\n"], Duration::from_secs(20));
        assert!(!early.contains("second"), "{executor}: {early:?}");
        std::fs::write(&gate, "").unwrap();
        let (code, out) = live.finish(Duration::from_secs(30));
        assert_eq!(code, Some(0), "{executor}");
        let mut lines: Vec<&str> = out.lines().collect();
        lines.sort();
        assert_eq!(lines, ["1\tfirst", "1\tsecond", "2\tquick"], "{executor}");
        assert!(out.ends_with("1\tsecond\n"), "{executor}: {out:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// With `-k`, `--line-buffer` prints the oldest running job's lines as
/// they come and holds the others' until its turn, as GNU parallel does.
#[test]
fn run_keep_order_line_buffer_streams_the_oldest_job() {
    for executor in ["processes", "threads"] {
        let dir = scratch_dir(&format!("keep-order-{executor}"));
        let gate = dir.join("gate");
        let done = dir.join("quick-done");
        // Job 1 prints a line and waits for the gate; job 2 prints and
        // ends at once (it leaves a file to say so): its line must wait
        // for job 1's, which must come while job 1 still runs.
        let slow = format!("echo first; {}; echo second", wait_for_gate(&gate));
        let quick = format!("echo quick; touch {}", done.display());
        let live = Live::start(&[
            "run",
            "--quiet",
            "-e",
            executor,
            "-j",
            "2",
            "-k",
            "--line-buffer",
            "sh -c {}",
            ":::",
            &slow,
            &quick,
        ]);
        let early = live.wait_for(&["first\n"], Duration::from_secs(20));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done.exists() {
            assert!(Instant::now() < deadline, "{executor}: job 2 never ran");
            thread::sleep(Duration::from_millis(10));
        }
        // Job 2 is over, yet its line waits for job 1's turn.
        thread::sleep(Duration::from_millis(200));
        let held = live.wait_for(&["first\n"], Duration::from_secs(1));
        assert_eq!(held, "first\n", "{executor}: {early:?} then {held:?}");
        std::fs::write(&gate, "").unwrap();
        let (code, out) = live.finish(Duration::from_secs(30));
        assert_eq!(code, Some(0), "{executor}");
        assert_eq!(out, "first\nsecond\nquick\n", "{executor}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn run_ungroup_prints_bytes_as_they_come() {
    for executor in ["processes", "threads"] {
        let dir = scratch_dir(&format!("ungroup-{executor}"));
        let gate = dir.join("gate");
        // Not even a whole line: --ungroup passes bytes on as they come.
        let slow = format!("printf part; {}; echo rest", wait_for_gate(&gate));
        let live = Live::start(&[
            "run", "--quiet", "-e", executor, "-u", "sh -c {}", ":::", &slow,
        ]);
        let early = live.wait_for(&["part"], Duration::from_secs(20));
        assert_eq!(early, "part", "{executor}");
        std::fs::write(&gate, "").unwrap();
        let (code, out) = live.finish(Duration::from_secs(30));
        assert_eq!((code, out.as_str()), (Some(0), "partrest\n"), "{executor}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn run_line_buffer_never_splits_or_mixes_a_line() {
    let dir = scratch_dir("line-buffer-mix");
    let log = dir.join("jobs.tsv");
    // Each line is written in three pieces, by two jobs at once.
    let ran = multitask_with(
        &[
            "run",
            "--quiet",
            "-j",
            "2",
            "--line-buffer",
            "--tag",
            "--joblog",
            log.to_str().unwrap(),
            "for i in $(seq 300); do printf %s {}-; printf %s $i; printf -- '-end\\n'; done",
            ":::",
            "a",
            "b",
        ],
        None,
        Duration::from_secs(60),
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let mut next = std::collections::HashMap::from([("a", 1), ("b", 1)]);
    for line in ran.lines() {
        let (tag, rest) = line.split_once('\t').unwrap_or_else(|| panic!("{line:?}"));
        let n = next.get_mut(tag).unwrap_or_else(|| panic!("{line:?}"));
        assert_eq!(rest, format!("{tag}-{n}-end"), "a split or mixed line");
        *n += 1;
    }
    assert_eq!(
        next,
        std::collections::HashMap::from([("a", 301), ("b", 301)])
    );
    // The job log counts the bytes each job wrote (without the tags).
    let text = std::fs::read_to_string(&log).unwrap();
    let bytes: usize = (1..=300).map(|i| format!("a-{i}-end\n").len()).sum();
    for line in text.lines().skip(1) {
        assert_eq!(
            line.split('\t').nth(5),
            Some(bytes.to_string().as_str()),
            "{line}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small lab run: every executor, two worker counts, both workloads.
const SMALL_BENCH: [&str; 9] = [
    "bench",
    "--tasks",
    "4",
    "--workers",
    "1,2",
    "--executors",
    "serial,threads,processes",
    "--workloads",
    "cpu,io",
];

#[test]
fn bench_json_has_a_row_per_run() {
    let mut args = SMALL_BENCH.to_vec();
    args.push("--json");
    let ran = multitask(&args);
    assert_eq!(ran.code, Some(0), "stderr: {}", ran.stderr);
    let v: serde_json::Value = serde_json::from_str(ran.stdout.trim()).expect("one JSON object");
    let rows = v["rows"].as_array().expect("rows");
    // Per workload: serial once, threads and processes at 1 and 2 workers.
    assert_eq!(rows.len(), 2 * (1 + 2 + 2));
    for r in rows {
        for key in [
            "workload",
            "executor",
            "workers",
            "wall_s",
            "speedup",
            "efficiency",
            "utilisation",
        ] {
            assert!(!r[key].is_null(), "row lacks {key}: {r}");
        }
        let (serial, wall, speedup) = (
            r["serial_s"].as_f64().unwrap(),
            r["wall_s"].as_f64().unwrap(),
            r["speedup"].as_f64().unwrap(),
        );
        assert!(
            (speedup - serial / wall).abs() < 1e-9,
            "speedup = serial / parallel: {r}"
        );
        assert!(r["utilisation"].as_f64().unwrap() <= 1.0 + 1e-9, "{r}");
        // The rounds' spread holds the median, and a verdict comes from it.
        let (lo, hi) = (
            r["speedup_range"][0].as_f64().unwrap(),
            r["speedup_range"][1].as_f64().unwrap(),
        );
        assert!(lo <= speedup + 1e-9 && speedup <= hi + 1e-9, "{r}");
        let (fast, slow) = (
            r["wall_range_s"][0].as_f64().unwrap(),
            r["wall_range_s"][1].as_f64().unwrap(),
        );
        assert!(fast <= wall && wall <= slow, "{r}");
        assert!(r["verdict"].is_string(), "{r}");
    }
    assert!(v["amdahl"].is_object());
    assert_eq!(v["rounds"], 3);
    assert!(v["load"]["cpus"].as_u64().is_some(), "{v}");
    assert!(v["warnings"].is_array());
}

#[test]
fn bench_out_writes_four_well_formed_files_and_a_profile() {
    let dir = std::env::temp_dir().join(format!("multitask-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let profile = dir.join("flame.svg");
    let mut args = SMALL_BENCH.to_vec();
    let out = dir.display().to_string();
    let prof = profile.display().to_string();
    // One round is enough to write every file: three took over the
    // minute's bound with three test suites and two CPU hogs beside it.
    args.extend(["--repeat", "1", "--out", &out, "--profile", &prof]);
    let ran = multitask(&args);
    assert_eq!(ran.code, Some(0), "stderr: {}", ran.stderr);
    assert!(ran.stdout.contains("speedup"), "{}", ran.stdout);
    for svg in ["chart.svg", "timeline.svg"] {
        let text = std::fs::read_to_string(dir.join(svg)).expect(svg);
        roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{svg}: {e}"));
    }
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("trace.json")).unwrap()).unwrap();
    assert!(!trace["traceEvents"]
        .as_array()
        .expect("traceEvents")
        .is_empty());
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        report.contains("## Amdahl's law") && report.contains("| io |"),
        "{report}"
    );
    let flame = std::fs::read_to_string(&profile).expect("flamegraph written");
    assert!(flame.contains("<svg"), "the profile is an SVG");
    let table = std::fs::read_to_string(profile.with_extension("txt")).expect("a table");
    assert!(
        table.contains("self%") && table.contains("samples from"),
        "{table}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `primes --profile` samples the workers too: the merged flamegraph has
/// the task, rooted by name, from each worker process that ran it.
#[test]
fn primes_profile_covers_every_worker() {
    let dir = std::env::temp_dir().join(format!("multitask-prof-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let svg = dir.join("primes.svg");
    let svg_arg = svg.display().to_string();
    let ran = multitask(&[
        "primes",
        "-e",
        "processes:2",
        "--show-worker",
        "--repeat",
        "2",
        "--profile",
        &svg_arg,
    ]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let worker_pids: std::collections::BTreeSet<String> = ran
        .lines()
        .iter()
        .filter_map(|l| l.split("(pid ").nth(1))
        .map(|p| p.trim_end_matches(')').to_string())
        .collect();
    assert_eq!(worker_pids.len(), 2, "{}", ran.stdout);
    let flame = std::fs::read_to_string(&svg).expect("the flamegraph");
    assert!(
        flame.contains("is_prime_with_pid"),
        "the task is a root of the graph"
    );
    for pid in &worker_pids {
        assert!(
            flame.contains(&format!("pid {pid}")),
            "worker {pid} has no frames in the flamegraph"
        );
    }
    let table = std::fs::read_to_string(svg.with_extension("txt")).expect("the table");
    assert!(table.contains("from 3 processes"), "{table}");
    assert!(
        table.contains("multitask::tasks::is_prime_with_pid:"),
        "{table}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_refuses_an_unknown_workload() {
    let ran = multitask(&["bench", "--workloads", "gpu"]);
    assert_eq!(ran.code, Some(1));
    assert!(
        ran.stderr.contains("unknown workload \"gpu\""),
        "{}",
        ran.stderr
    );
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
}

/// The test Redis, or `None` outside CI (a note is printed).
fn test_redis() -> Option<String> {
    match std::env::var("MULTITASK_TEST_REDIS") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("MULTITASK_TEST_REDIS is not set: run bash scripts/test.sh")
        }
        _ => {
            eprintln!("note: MULTITASK_TEST_REDIS is not set; cluster CLI test skipped");
            None
        }
    }
}

/// A queue of its own on the test Redis, named `prefix` and this
/// process's id, or `None` outside CI.
fn test_queue(prefix: &str) -> Option<String> {
    let base = test_redis()?;
    let base = base.split_once('?').map_or(base.as_str(), |(b, _)| b);
    // With the time: pids repeat over a stress run (they wrap at 32768).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Some(format!(
        "{base}?queue={prefix}{}-{nanos}",
        std::process::id()
    ))
}

#[test]
fn two_workers_and_a_client_behave_as_a_cluster() {
    let Some(url) = test_queue("cli-") else {
        return;
    };
    let start_worker = || {
        Command::new(env!("CARGO_BIN_EXE_multitask"))
            .args(["worker", "--broker", &url, "--concurrency", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a worker")
    };
    let mut workers = [start_worker(), start_worker()];
    // Both workers report alive.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ran = multitask(&["status", "--broker", &url, "--json"]);
        assert_eq!(ran.code, Some(0), "{}", ran.stderr);
        let v: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
        let alive = v["workers"]
            .as_array()
            .expect("a workers array")
            .iter()
            .filter(|w| w["alive"] == true)
            .count();
        if alive == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "workers never came up: {}",
            ran.stdout
        );
        thread::sleep(Duration::from_millis(100));
    }
    let ran = multitask(&["primes", "--executor", &url, "--json", "--show-worker"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let v: serde_json::Value = serde_json::from_str(ran.stdout.trim()).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    assert_eq!(results[5]["prime"], false);
    assert!(results.iter().all(|r| r["pid"].as_u64().is_some()));
    // SIGTERM drains and exits 0.
    for w in &mut workers {
        let pid = rustix::process::Pid::from_raw(w.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    }
    for w in &mut workers {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = w.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = w.kill();
                panic!("a worker did not drain within 20 s of SIGTERM");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(w.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(status.success(), "{status}: {err}");
        assert!(err.contains("drained"), "{err}");
    }
}

/// The pids listed one per line in `path`, once `n` are there.
fn wait_for_pids(path: &std::path::Path, n: usize, child: &mut std::process::Child) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pids: Vec<i32> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.len() >= n {
            return pids;
        }
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("multitask run exited ({status}) before its jobs started: {err}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the jobs never wrote their pids to {}", path.display());
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// True while `pid` is a live process (not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
        })
        .is_some_and(|dead| !dead)
}

/// Waits (bounded) until none of `pids` is alive; the ones still alive.
fn survivors(pids: &[i32]) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() || Instant::now() > deadline {
            for &p in &left {
                if let Some(pid) = rustix::process::Pid::from_raw(p) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            return left;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `multitask run` on the default executor (worker processes) with
/// jobs that each start a `sleep 300` and write its pid to a file; returns
/// the child, the file and the sleeps' pids once all `n` run.
fn run_sleepers(extra: &[&str], n: usize) -> (std::process::Child, std::path::PathBuf, Vec<i32>) {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "multitask-sleepers-{}-{}.pids",
        std::process::id(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    let _ = std::fs::remove_file(&path);
    // The job's own program: a grandchild of the worker, beside the shell.
    let cmd = format!(": {{}}; sleep 300 & echo $! >> {}; wait", path.display());
    let mut args = vec!["run", "-j", "2"];
    args.extend_from_slice(extra);
    args.push(&cmd);
    args.push(":::");
    let names: Vec<String> = (0..n).map(|i| format!("job{i}")).collect();
    args.extend(names.iter().map(String::as_str));
    let mut child = Command::new(env!("CARGO_BIN_EXE_multitask"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn multitask");
    let pids = wait_for_pids(&path, n, &mut child);
    (child, path, pids)
}

/// Waits for `child` at most 30 s; its exit code.
fn exit_of(child: &mut std::process::Child) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("multitask run did not exit after the signal");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ctrl_c_and_sigterm_leave_no_job_program_alive() {
    for signal in [rustix::process::Signal::INT, rustix::process::Signal::TERM] {
        let (mut child, path, pids) = run_sleepers(&[], 2);
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, signal).unwrap();
        assert_eq!(exit_of(&mut child), Some(130), "{signal:?}");
        let left = survivors(&pids);
        let _ = std::fs::remove_file(&path);
        assert!(
            left.is_empty(),
            "after {signal:?} these job programs live on: {left:?}"
        );
    }
}

/// The scratch directories (`--line-buffer`'s socket) run `pid` left.
fn scratch_of(pid: u32) -> Vec<String> {
    let prefix = format!("multitask-run-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Streaming output leaves nothing behind: not when the run ends, not
/// when Ctrl-C or SIGTERM stops it.
#[test]
fn a_streaming_run_leaves_no_scratch_directory() {
    let ran = multitask(&["run", "--line-buffer", "echo", ":::", "a", "b"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    for signal in [rustix::process::Signal::INT, rustix::process::Signal::TERM] {
        for mode in ["--line-buffer", "--ungroup"] {
            let (mut child, path, _pids) = run_sleepers(&[mode], 2);
            let me = child.id();
            assert_eq!(scratch_of(me).len(), 1, "{mode} listens in one directory");
            let pid = rustix::process::Pid::from_child(&child);
            rustix::process::kill_process(pid, signal).unwrap();
            assert_eq!(exit_of(&mut child), Some(130), "{signal:?}");
            let _ = std::fs::remove_file(&path);
            assert_eq!(scratch_of(me), Vec::<String>::new(), "{mode}, {signal:?}");
        }
    }
}

#[test]
fn halt_now_leaves_no_job_program_alive() {
    let path = std::env::temp_dir().join(format!("multitask-halt-{}.pids", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let cmd = format!(
        "case {{}} in f) sleep 1; exit 1;; *) sleep 300 & echo $! >> {}; wait;; esac",
        path.display()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_multitask"))
        .args([
            "run",
            "-j",
            "3",
            "--halt",
            "now,fail=1",
            &cmd,
            ":::",
            "a",
            "b",
            "f",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn multitask");
    let pids = wait_for_pids(&path, 2, &mut child);
    assert_eq!(exit_of(&mut child), Some(1));
    let left = survivors(&pids);
    let _ = std::fs::remove_file(&path);
    assert!(left.is_empty(), "after --halt now these live on: {left:?}");
}

#[test]
fn a_timed_out_job_leaves_no_program_alive() {
    let (mut child, path, pids) = run_sleepers(&["--timeout", "1"], 2);
    // Both jobs time out; the run ends with two failures.
    assert_eq!(exit_of(&mut child), Some(2));
    let left = survivors(&pids);
    let _ = std::fs::remove_file(&path);
    assert!(left.is_empty(), "after --timeout these live on: {left:?}");
}

/// `multitask worker` on `url` with `extra` flags; killed on drop.
struct CliWorker(std::process::Child);

impl CliWorker {
    fn start(url: &str, extra: &[&str]) -> CliWorker {
        let child = Command::new(env!("CARGO_BIN_EXE_multitask"))
            .args(["worker", "--broker", url, "--concurrency", "1"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a worker");
        CliWorker(child)
    }
}

impl Drop for CliWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn run_on_a_cluster_needs_workers_that_allow_a_shell() {
    let Some(url) = test_queue("cli-shell-") else {
        return;
    };
    let run = ["run", "-e", &url, "echo", ":::", "from-the-cluster"];
    {
        let _worker = CliWorker::start(&url, &[]);
        let ran = multitask_with(&run, None, Duration::from_secs(30));
        assert_eq!(ran.code, Some(1), "{ran:?}");
        assert!(!ran.stdout.contains("from-the-cluster"), "{ran:?}");
        assert!(ran.stderr.contains("--allow-shell"), "{}", ran.stderr);
    }
    let _worker = CliWorker::start(&url, &["--allow-shell"]);
    let ran = multitask_with(&run, None, Duration::from_secs(30));
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(ran.stdout.trim(), "from-the-cluster");
}

/// A job sent to workers that refuse it is dead-lettered with its task;
/// `multitask status` lists it, and requeues it once a worker serves it.
#[test]
fn a_dead_letter_is_listed_requeued_and_discarded_from_the_command_line() {
    let Some(url) = test_queue("cli-dead-") else {
        return;
    };
    let mark = std::env::temp_dir().join(format!("multitask-requeued-{}", std::process::id()));
    let _ = std::fs::remove_file(&mark);
    let mark_arg = mark.display().to_string();
    {
        let _worker = CliWorker::start(&url, &[]);
        let ran = multitask_with(
            &["run", "-e", &url, "touch", ":::", &mark_arg],
            None,
            Duration::from_secs(30),
        );
        assert_eq!(ran.code, Some(1), "{ran:?}");
    }
    let ran = multitask(&["status", "--broker", &url, "--dead", "5"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(ran.stdout.contains("dead letters  1"), "{}", ran.stdout);
    let listed: Vec<&str> = ran
        .lines()
        .into_iter()
        .skip_while(|l| !l.starts_with("newest dead letters"))
        .skip(1)
        .collect();
    assert!(
        listed[0].contains("run_shell") && listed[0].contains("bytes in"),
        "{}",
        ran.stdout
    );
    assert!(listed[1].contains("not allowed"), "{}", ran.stdout);
    let entry = listed[0].split_whitespace().next().unwrap().to_string();
    assert!(!mark.exists(), "a refused job never ran");
    let _worker = CliWorker::start(&url, &["--allow-shell"]);
    let ran = multitask(&["status", "--broker", &url, "--requeue", &entry]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(
        ran.stdout
            .contains(&format!("requeued dead letter {entry}")),
        "{}",
        ran.stdout
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !mark.exists() {
        assert!(Instant::now() < deadline, "the requeued job never ran");
        thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(&mark);
    for action in ["--requeue", "--discard"] {
        let ran = multitask(&["status", "--broker", &url, action, &entry]);
        assert_eq!(ran.code, Some(1), "{ran:?}");
        assert!(ran.stderr.contains("has no dead letter"), "{}", ran.stderr);
    }
    let ran = multitask(&["status", "--broker", &url, "--json", "--dead", "5"]);
    let v: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(v["dead_letters"], 0, "{v}");
    assert_eq!(v["dead"].as_array().map(Vec::len), Some(0), "{v}");
}

/// `multitask run` fans out on the cluster as `--sshlogin` does in GNU
/// parallel: output in order with -k, the exit status counting failures,
/// and the job log's host and exit columns, as from a local run.
#[test]
fn run_fans_out_on_the_cluster_as_it_runs_here() {
    let Some(url) = test_queue("cli-fanout-") else {
        return;
    };
    let _a = CliWorker::start(&url, &["--allow-shell"]);
    let _b = CliWorker::start(&url, &["--allow-shell"]);
    let log = std::env::temp_dir().join(format!("mt-fanout-{}.log", std::process::id()));
    let log_arg = log.display().to_string();
    let cmd = "echo out-{}; [ {} != 2 ] || exit 3";
    let args = [
        "run", "-e", &url, "-k", "--joblog", &log_arg, cmd, ":::", "1", "2", "3", "4",
    ];
    let ran = multitask_with(&args, None, Duration::from_secs(60));
    assert_eq!(ran.code, Some(1), "one job failed: {ran:?}");
    assert_eq!(
        ran.lines(),
        vec!["out-1", "out-2", "out-3", "out-4"],
        "{ran:?}"
    );
    let text = std::fs::read_to_string(&log).expect("the job log");
    let _ = std::fs::remove_file(&log);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(rows.len(), 4, "{text}");
    for r in &rows {
        // Seq Host Starttime JobRuntime Send Receive Exitval Signal Command
        assert!(!r[1].is_empty(), "a host: {text}");
        let exit = if r[0] == "2" { "3" } else { "0" };
        assert_eq!(r[6], exit, "{text}");
    }
}

#[test]
fn a_signed_cluster_runs_what_its_key_signs() {
    let Some(url) = test_queue("cli-signed-") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("mt-cli-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = "a key of the cli test: 32 bytes!";
    let (good, short) = (dir.join("key"), dir.join("short"));
    std::fs::write(&good, format!("{key}\n")).unwrap();
    std::fs::write(&short, "short\n").unwrap();
    // Without a key the worker says, once, that it takes anything; a
    // short key is refused. Both before joining (no broker here).
    let nowhere = ["worker", "--broker", "redis://127.0.0.1:1/0"];
    let ran = multitask_with(&nowhere, None, Duration::from_secs(30));
    assert_eq!(
        ran.stderr.matches("accepts unsigned tasks").count(),
        1,
        "{ran:?}"
    );
    let mut with_short = nowhere.to_vec();
    with_short.extend(["--key-file", short.to_str().unwrap()]);
    let ran = multitask_with(&with_short, None, Duration::from_secs(30));
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(ran.stderr.contains("at least 16"), "{}", ran.stderr);
    assert!(!ran.stderr.contains("unsigned"), "{}", ran.stderr);
    let _worker = CliWorker::start(&url, &["--key-file", good.to_str().unwrap()]);
    let primes = ["primes", "-e", &url, "--json", "--repeat", "1", "7", "8"];
    let ran = multitask_env(
        &primes,
        None,
        &[("MULTITASK_CLUSTER_KEY", key)],
        Duration::from_secs(30),
    );
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let v: Value = serde_json::from_str(ran.stdout.trim()).unwrap();
    assert_eq!(v["results"][0]["prime"], true, "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}
