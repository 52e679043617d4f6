//! The command line, declared with clap's derive API: one struct per
//! subcommand, parsed values typed (spec strings, durations, `--halt`).
//!
//! Parsing only: each `cmd/` module takes its struct and does the work.
//! Usage errors become one `multitask: error: ...` line and exit 2 in
//! `main.rs`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use multitasking::ExecutorSpec;

use crate::cmd::run::Halt;

/// multitask: run work in parallel on threads, worker processes or a cluster.
#[derive(Debug, Parser)]
#[command(name = "multitask", version, propagate_version = true)]
pub(crate) struct Cli {
    /// No progress output on stderr.
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Test numbers for primality in parallel and time it against a serial
    /// run (the seed's example).
    Primes(PrimesArgs),
    /// Show this process and machine: ids, directory, host, CPUs, memory.
    Info(InfoArgs),
    /// Run a shell command for each argument, in parallel (like xargs -P or
    /// GNU parallel).
    Run(RunArgs),
    /// Join a cluster queue on Redis and run its tasks until SIGINT/SIGTERM.
    Worker(WorkerArgs),
    /// Show a cluster queue: workers, depth, in flight, dead letters.
    Status(StatusArgs),
    /// Run CPU-bound and I/O-bound workloads on each executor at each worker
    /// count, and report speedups (the benchmark lab).
    Bench(BenchArgs),
    /// Serve a live dashboard of a cluster queue in the browser.
    #[cfg(feature = "dashboard")]
    Dashboard(DashboardArgs),
}

/// `multitask bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Workloads, comma-separated: cpu (primes), io (blocking waits), mixed.
    #[arg(
        long = "workloads",
        alias = "workload",
        value_delimiter = ',',
        default_value = "cpu,io"
    )]
    pub(crate) workloads: Vec<String>,
    /// Executors, comma-separated: serial, threads, processes, redis://HOST/DB?queue=Q
    /// (a cluster runs once, on the slots of its live workers).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "serial,threads,processes"
    )]
    pub(crate) executors: Vec<ExecutorSpec>,
    /// Worker counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) workers: Vec<u16>,
    /// Tasks per workload.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) tasks: u32,
    /// Rounds, each timing the serial baseline and every configuration; the
    /// table gives medians and the report the spread.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) repeat: u32,
    /// Print one JSON object (`{"rows": [...]}`) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Write chart.svg, timeline.svg, trace.json and report.md here.
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// Write a flamegraph (SVG) of this process, sampled while the lab ran.
    #[arg(long, value_name = "FILE")]
    pub(crate) profile: Option<PathBuf>,
    /// Serve a live dashboard of the lab while it runs, on ADDR (default
    /// 127.0.0.1:8265).
    #[cfg(feature = "dashboard")]
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:8265")]
    pub(crate) dashboard: Option<std::net::SocketAddr>,
}

/// `multitask primes`.
#[derive(Debug, Args)]
pub(crate) struct PrimesArgs {
    /// Executor: serial, threads, threads:N, processes, processes:N or redis://HOST/DB?queue=Q.
    #[arg(short, long, value_name = "SPEC", default_value = "processes")]
    pub(crate) executor: ExecutorSpec,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Show the pid of the worker process that tested each number.
    #[arg(long)]
    pub(crate) show_worker: bool,
    /// Write a flamegraph of this process and its workers, merged by task,
    /// to FILE, and a table of functions by time to FILE with .txt.
    #[arg(long, value_name = "FILE")]
    pub(crate) profile: Option<PathBuf>,
    /// Rounds of a parallel and a serial run, for the medians and spread.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) repeat: u32,
    /// The numbers to test (default: the seed's six).
    #[arg(value_name = "NUMBERS")]
    pub(crate) numbers: Vec<u64>,
}

/// `multitask info`.
#[derive(Debug, Args)]
pub(crate) struct InfoArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `multitask run`.
#[derive(Debug, Args)]
#[command(after_help = "\
Replacement strings in CMD: {} the argument, {.} without its extension, \
{/} its basename, {//} its directory, {/.} basename without extension, \
{#} the job number. With none of them the argument is appended. \
Arguments are shell-quoted. Without ::: the arguments are read from \
stdin, one per line.

Exit status: the number of failed jobs (at most 101), 0 if all succeeded; \
with --halt, the exit status of the job that stopped the run; 130 on Ctrl-C.")]
pub(crate) struct RunArgs {
    /// Jobs at once (default: usable CPUs); sets the worker count of a
    /// processes or threads spec.
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) jobs: Option<u32>,
    /// Executor: serial, threads, threads:N, processes, processes:N or redis://HOST/DB?queue=Q.
    #[arg(short, long, value_name = "SPEC", default_value = "processes")]
    pub(crate) executor: ExecutorSpec,
    /// Kill a job (its whole process group) after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub(crate) timeout: Option<Duration>,
    /// Run a failing job again up to N times.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) retries: u32,
    /// Print outputs in input order (default: as jobs complete).
    #[arg(short, long)]
    pub(crate) keep_order: bool,
    /// Write a line per job to FILE (replacing it), in GNU parallel's --joblog format.
    #[arg(long, value_name = "FILE")]
    pub(crate) joblog: Option<PathBuf>,
    /// Stop on failures: never, now,fail=N (kill running jobs) or soon,fail=N
    /// (start no new jobs).
    #[arg(long, value_name = "WHEN", default_value = "never")]
    pub(crate) halt: Halt,
    /// Print the commands that would run, and run nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// The command, then optionally ::: and the arguments.
    #[arg(value_name = "CMD", required = true, trailing_var_arg = true)]
    pub(crate) command: Vec<String>,
}

/// `multitask dashboard`.
#[cfg(feature = "dashboard")]
#[derive(Debug, Args)]
pub(crate) struct DashboardArgs {
    /// The broker: redis://[user:password@]host:port/db[?queue=name].
    #[arg(long, value_name = "URL")]
    pub(crate) broker: String,
    /// The queue (default: the URL's ?queue=, else "default").
    #[arg(long)]
    pub(crate) queue: Option<String>,
    /// Where to listen. An address that is not loopback needs a token.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8265")]
    pub(crate) listen: std::net::SocketAddr,
    /// A file whose first line is the token every request must carry
    /// (also MULTITASK_DASHBOARD_TOKEN; never on the command line).
    #[arg(long, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// Let the page discard dead letters.
    #[arg(long)]
    pub(crate) allow_actions: bool,
}

/// Parses a positive number of seconds, fractions allowed (`0.5`).
fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("expected a positive number of seconds, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn seconds_parse() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("soon").is_err());
    }
}

/// `multitask worker`.
#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// The broker: redis://[user:password@]host:port/db[?queue=name] (rediss:// for TLS).
    #[arg(long, value_name = "URL")]
    pub(crate) broker: String,
    /// The queue to serve (default: the URL's ?queue=, else "default").
    #[arg(long)]
    pub(crate) queue: Option<String>,
    /// Tasks at once, each in a worker process (default: usable CPUs).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) concurrency: Option<u16>,
    /// Seconds a task may sit idle with a dead worker before another takes it over.
    #[arg(long, value_name = "SECS")]
    pub(crate) visibility: Option<f64>,
    /// Serve only these tasks, comma-separated: registered names or unique
    /// suffixes (is_prime,bench_work). Default: every task but run_shell.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub(crate) tasks: Option<Vec<String>>,
    /// Also run `run_shell`, the task `multitask run -e redis://...` sends:
    /// any shell command a client of the queue asks for, as this user.
    #[arg(long)]
    pub(crate) allow_shell: bool,
    /// Take only tasks signed with a key in FILE (one per line; the first
    /// signs results) and sign results; also MULTITASK_CLUSTER_KEY
    /// (comma-separated). Never on the command line.
    #[arg(long, value_name = "FILE")]
    pub(crate) key_file: Option<PathBuf>,
}

/// `multitask status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The broker: redis://[user:password@]host:port/db[?queue=name].
    #[arg(long, value_name = "URL")]
    pub(crate) broker: String,
    /// The queue (default: the URL's ?queue=, else "default").
    #[arg(long)]
    pub(crate) queue: Option<String>,
    /// Print one JSON object (with a `workers` array) instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}
