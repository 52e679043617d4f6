//! `multitask run` against `xargs -P` and GNU parallel, side by side in one
//! run, on the same jobs:
//!
//! 1. 1000 jobs of `true {}` (the cost of starting a job: `true` is a
//!    builtin, so every runner starts a `sh -c` for each);
//! 2. 100 jobs of `sleep 0.02` on 4 slots (does the runner keep its slots
//!    busy: the ideal is 25 rounds of 20 ms, 0.5 s), typed as a user
//!    would: `multitask run -j 4 sleep` and `parallel -j 4 sleep` with
//!    `0.02` on every input line, and xargs both ways, `xargs -P 4 -n 1
//!    sleep` (no shell) and through `sh -c` as parallel always runs one;
//!    multitask starts `sleep` itself when a command line is plain words
//!    (see `shell.rs`), so this is the case that shows it;
//! 3. `--pipe`: 200 MB of lines cut into 1 MB blocks, each fed to a
//!    `wc -l` on 2 slots, against `parallel --pipe` (the rate at which
//!    stdin is cut and handed out; xargs has no such mode).
//!
//! Every runner reads its arguments from stdin. Rounds (`MT_BENCH_ROUNDS`,
//! default 5) run every contender once each, in turn; the tables give the
//! median and the range. GNU parallel is skipped if it is not installed.
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

fn have_parallel() -> bool {
    Command::new("parallel")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The contenders for `jobs` slots running `job` with each input line
/// appended; `plain` adds xargs running `job` without a shell.
fn contenders(jobs: usize, job: &str, plain: bool) -> Vec<(String, Command)> {
    let j = jobs.to_string();
    let exe = env!("CARGO_BIN_EXE_multitask");
    let mut out = Vec::new();
    for executor in ["processes", "threads"] {
        let mut c = Command::new(exe);
        c.args(["run", "--quiet", "-e", executor, "-j", &j])
            .arg(format!("{job} {{}}"));
        out.push((format!("multitask run -e {executor}"), c));
    }
    let mut x = Command::new("xargs");
    x.args(["-P", &j, "-I", "{}", "sh", "-c", &format!("{job} {{}}")]);
    out.push(("xargs -P, sh -c".to_string(), x));
    if plain {
        let mut x = Command::new("xargs");
        x.args(["-P", &j, "-n", "1"]).args(job.split(' '));
        out.push(("xargs -P, no shell".to_string(), x));
    }
    if have_parallel() {
        let mut p = Command::new("parallel");
        p.args(["--will-cite", "-j", &j, &format!("{job} {{}}")]);
        out.push(("GNU parallel".to_string(), p));
    }
    out
}

fn rounds() -> usize {
    std::env::var("MT_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(5)
}

/// Runs every contender once per round, in turn, on `input`; each one's
/// times (empty if it failed every time).
fn rounds_of(runs: &mut [(String, Command)], input: &str) -> Vec<Vec<f64>> {
    let mut times = vec![Vec::new(); runs.len()];
    for _ in 0..rounds() {
        for (i, (_, cmd)) in runs.iter_mut().enumerate() {
            if let Some(d) = timed(cmd, input) {
                times[i].push(d.as_secs_f64());
            }
        }
    }
    for t in &mut times {
        t.sort_by(f64::total_cmp);
    }
    times
}

/// Median, least and most of sorted `t`.
fn spread(t: &[f64]) -> Option<(f64, f64, f64)> {
    Some((t[t.len() / 2], *t.first()?, *t.last()?))
}

/// Prints one table: per contender the median wall time and its range,
/// `per(median)` as the table's own column, and the ratio of the medians
/// to the first contender's.
fn table(
    title: &str,
    column: &str,
    runs: &[(String, Command)],
    times: &[Vec<f64>],
    per: impl Fn(f64) -> f64,
) {
    println!(
        "## {title}
"
    );
    println!("{} rounds; median wall time and its range.\n", rounds());
    println!("| runner | wall s | range | {column} | vs {} |", runs[0].0);
    println!("| --- | ---: | ---: | ---: | ---: |");
    let base = spread(&times[0]);
    for ((name, _), t) in runs.iter().zip(times) {
        match (spread(t), base) {
            (Some((m, lo, hi)), Some((b, _, _))) => println!(
                "| {name} | {m:.3} | {lo:.3}-{hi:.3} | {:.0} | {:.2}x |",
                per(m),
                m / b
            ),
            _ => println!("| {name} | failed | | | |"),
        }
    }
    println!();
}

fn compare(title: &str, n: usize, jobs: usize, job: &str, arg: Option<&str>) {
    let input: String = (0..n)
        .map(|i| format!("{}\n", arg.map_or(i.to_string(), str::to_string)))
        .collect();
    let mut runs = contenders(jobs, job, arg.is_some());
    let times = rounds_of(&mut runs, &input);
    table(title, "µs per job", &runs, &times, |m| m * 1e6 / n as f64);
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
    if have_parallel() {
        let mut p = Command::new("parallel");
        p.args(["--will-cite", "-j", &j, "--pipe", "wc", "-l"]);
        runs.push(("GNU parallel --pipe".to_string(), p));
    }
    let times = rounds_of(&mut runs, &input);
    let title = format!("--pipe: {mb} MB in 1 MB blocks to `wc -l`, {jobs} at once");
    table(&title, "MB/s", &runs, &times, |m| mb as f64 / m);
}

fn main() {
    println!("# parallel command runners, same jobs, one run\n");
    compare("1000 jobs of `true`, 2 at once", 1000, 2, "true", None);
    compare(
        "100 jobs of `sleep 0.02`, 4 at once (ideal 0.5 s)",
        100,
        4,
        "sleep",
        Some("0.02"),
    );
    compare_pipe(200, 2);
}
