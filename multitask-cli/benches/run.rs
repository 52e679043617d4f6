//! `multitask run` against `xargs -P` and GNU parallel, side by side in one
//! run, on the same jobs:
//!
//! 1. 1000 jobs of `true` (the cost of starting a job: a `sh -c` each);
//! 2. 100 jobs of `sleep 0.02` on 4 slots (does the runner keep its slots
//!    busy: the ideal is 25 rounds of 20 ms, 0.5 s);
//! 3. `--pipe`: 200 MB of lines cut into 1 MB blocks, each fed to a
//!    `wc -l` on 2 slots, against `parallel --pipe` (the rate at which
//!    stdin is cut and handed out; xargs has no such mode).
//!
//! Each contender runs each job through `sh -c`, reads the arguments from
//! stdin, and runs 2 (or 4) jobs at once. Best of 3 runs each, alternating.
//! GNU parallel is skipped if it is not installed.
//!
//! Run: `cargo bench -p multitasking-cli --bench run`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` with `input` on stdin, output discarded; its wall time, or
/// `None` if it could not start or failed.
fn timed(cmd: &mut Command, input: &str) -> Option<Duration> {
    let t = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(input.as_bytes()).ok()?;
    let ok = child.wait().ok()?.success();
    ok.then(|| t.elapsed())
}

/// The contenders for `jobs` slots running `job` on each input line.
fn contenders(jobs: usize, job: &str) -> Vec<(String, Command)> {
    let j = jobs.to_string();
    let exe = env!("CARGO_BIN_EXE_multitask");
    let mut out = Vec::new();
    for executor in ["processes", "threads"] {
        let mut c = Command::new(exe);
        c.args([
            "run",
            "--quiet",
            "-e",
            executor,
            "-j",
            &j,
            &format!("{job} {{}}"),
        ]);
        out.push((format!("multitask run -e {executor}"), c));
    }
    let mut x = Command::new("xargs");
    x.args(["-P", &j, "-I", "{}", "sh", "-c", &format!("{job} {{}}")]);
    out.push(("xargs -P".to_string(), x));
    let have_parallel = Command::new("parallel")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if have_parallel {
        let mut p = Command::new("parallel");
        p.args(["--will-cite", "-j", &j, &format!("{job} {{}}")]);
        out.push(("GNU parallel".to_string(), p));
    }
    out
}

fn compare(title: &str, n: usize, jobs: usize, job: &str) {
    let input: String = (0..n).map(|i| format!("{i}\n")).collect();
    let mut runs = contenders(jobs, job);
    let mut best: Vec<Option<Duration>> = vec![None; runs.len()];
    for _ in 0..3 {
        for (i, (_, cmd)) in runs.iter_mut().enumerate() {
            if let Some(d) = timed(cmd, &input) {
                best[i] = Some(best[i].map_or(d, |b| b.min(d)));
            }
        }
    }
    println!("## {title}\n");
    println!("| runner | wall s | µs per job | vs multitask run -e processes |");
    println!("| --- | ---: | ---: | ---: |");
    let base = best[0];
    for ((name, _), b) in runs.iter().zip(&best) {
        match (b, base) {
            (Some(d), Some(base)) => println!(
                "| {name} | {:.3} | {:.0} | {:.2}x |",
                d.as_secs_f64(),
                d.as_secs_f64() * 1e6 / n as f64,
                d.as_secs_f64() / base.as_secs_f64()
            ),
            _ => println!("| {name} | failed | | |"),
        }
    }
    println!();
}

/// `--pipe` on `mb` megabytes of 100-byte lines, `jobs` slots: multitask
/// on both executors and GNU parallel.
fn compare_pipe(mb: usize, jobs: usize) {
    let line = format!("{}\n", "x".repeat(99));
    let input = line.repeat(mb * 10_000);
    let j = jobs.to_string();
    let exe = env!("CARGO_BIN_EXE_multitask");
    let mut runs: Vec<(String, Command)> = Vec::new();
    for executor in ["processes", "threads"] {
        let mut c = Command::new(exe);
        c.args([
            "run", "--quiet", "-e", executor, "-j", &j, "--pipe", "wc", "-l",
        ]);
        runs.push((format!("multitask run --pipe -e {executor}"), c));
    }
    let mut p = Command::new("parallel");
    p.args(["--will-cite", "-j", &j, "--pipe", "wc", "-l"]);
    runs.push(("GNU parallel --pipe".to_string(), p));
    let mut best: Vec<Option<Duration>> = vec![None; runs.len()];
    for _ in 0..3 {
        for (i, (_, cmd)) in runs.iter_mut().enumerate() {
            if let Some(d) = timed(cmd, &input) {
                best[i] = Some(best[i].map_or(d, |b| b.min(d)));
            }
        }
    }
    println!("## --pipe: {mb} MB in 1 MB blocks to `wc -l`, {jobs} at once\n");
    println!("| runner | wall s | MB/s | vs multitask run --pipe -e processes |");
    println!("| --- | ---: | ---: | ---: |");
    for ((name, _), b) in runs.iter().zip(&best) {
        match (b, best[0]) {
            (Some(d), Some(base)) => println!(
                "| {name} | {:.3} | {:.0} | {:.2}x |",
                d.as_secs_f64(),
                mb as f64 / d.as_secs_f64(),
                d.as_secs_f64() / base.as_secs_f64()
            ),
            _ => println!("| {name} | failed | | |"),
        }
    }
    println!();
}

fn main() {
    println!("# parallel command runners, same jobs, one run\n");
    compare("1000 jobs of `true`, 2 at once", 1000, 2, "true");
    compare(
        "100 jobs of `sleep 0.02`, 4 at once (ideal 0.5 s)",
        100,
        4,
        "sleep 0.02; :",
    );
    compare_pipe(200, 2);
}
