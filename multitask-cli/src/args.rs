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

use crate::cmd::run::options::{parse_duration, parse_size, Halt, Jobs, Timeout};

/// multitask: run work in parallel on threads, worker processes or a cluster.
#[derive(Debug, Parser)]
#[command(name = "multitask", version, propagate_version = true)]
pub(crate) struct Cli {
    /// No progress output on stderr. (No `-q`: in `multitask run` that
    /// is GNU parallel's quoting.)
    #[arg(long, global = true)]
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
    Run(Box<RunArgs>),
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
Input sources: ::: ARGS, :::: FILES (- is stdin), -a FILE; several give \
every combination, :::+ and ::::+ pair with the source before. With none, \
stdin, one argument per line (NUL-separated with -0).

Replacement strings in CMD: {} the arguments, {.} without extension, {/} \
basename, {//} directory, {/.} basename without extension, {1}..{n} one \
argument (also {2.}, {2/}, {2//}, {2/.}), {#} the job number, {%} the job \
slot. With none of them the arguments are appended. Arguments are \
shell-quoted as GNU parallel quotes them.

Exit status: the number of failed jobs (at most 101), 0 if all succeeded; \
with --halt ...,fail=1 the status of the failed job; with a percentage, the \
percentage failed; 2 on a usage error; 130 on Ctrl-C.")]
pub(crate) struct RunArgs {
    /// Jobs at once: N, 0 (as many as can run), N% of the CPUs, +N or -N
    /// CPUs (default: usable CPUs); sets the worker count of a processes or
    /// threads spec.
    #[arg(
        short = 'j',
        long = "jobs",
        value_name = "N",
        allow_hyphen_values = true
    )]
    pub(crate) jobs: Option<Jobs>,
    /// Executor: serial, threads, threads:N, processes, processes:N or redis://HOST/DB?queue=Q.
    #[arg(short, long, value_name = "SPEC", default_value = "processes")]
    pub(crate) executor: ExecutorSpec,
    /// Kill a job (its whole process group) after SECS (30s, 2m), or after
    /// P% of the median run time of the jobs finished so far.
    #[arg(long, value_name = "SECS|P%")]
    pub(crate) timeout: Option<Timeout>,
    /// Run a failing job up to N times in all (GNU parallel's meaning).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) retries: u32,
    /// Print outputs in input order (default: as jobs complete).
    #[arg(short, long)]
    pub(crate) keep_order: bool,
    /// Write a line per job to FILE, in GNU parallel's --joblog format.
    #[arg(long, value_name = "FILE")]
    pub(crate) joblog: Option<PathBuf>,
    /// Skip the jobs the --joblog file lists, and append to it.
    #[arg(long, requires = "joblog")]
    pub(crate) resume: bool,
    /// Like --resume, but run the jobs it lists as failed again.
    #[arg(long, requires = "joblog", conflicts_with = "resume")]
    pub(crate) resume_failed: bool,
    /// Stop early: never, or now|soon with fail=N, fail=P%, success=N,
    /// success=P%, done=N, done=P% (now kills the running jobs, soon
    /// waits for them).
    #[arg(
        long,
        value_name = "WHEN",
        default_value = "never",
        allow_hyphen_values = true
    )]
    pub(crate) halt: Halt,
    /// Wait this long between job starts.
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub(crate) delay: Option<Duration>,
    /// Print the commands that would run, and run nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Read arguments from FILE (like :::: FILE); may be repeated.
    #[arg(short = 'a', long = "arg-file", value_name = "FILE")]
    pub(crate) arg_file: Vec<PathBuf>,
    /// Cut each argument into columns at SEP, for {1}..{n}.
    #[arg(short = 'C', long, value_name = "SEP")]
    pub(crate) colsep: Option<String>,
    /// Arguments are NUL-separated, not lines.
    #[arg(short = '0', long = "null")]
    pub(crate) null: bool,
    /// Up to N arguments per job.
    #[arg(
        short = 'n',
        long = "max-args",
        value_name = "N",
        conflicts_with = "max_replace_args"
    )]
    pub(crate) max_args: Option<usize>,
    /// N arguments per job, {1}..{N} each (missing ones empty); -N 0 runs
    /// the command once per argument without it. With --pipe: N records
    /// per job.
    #[arg(short = 'N', long = "max-replace-args", value_name = "N")]
    pub(crate) max_replace_args: Option<usize>,
    /// As many arguments per job as the command line holds, a word with {}
    /// repeated for each (context replace).
    #[arg(short = 'X', conflicts_with_all = ["m", "max_args", "max_replace_args"])]
    pub(crate) xargs: bool,
    /// As many arguments per job as the command line holds, {} all of them.
    #[arg(short = 'm', conflicts_with_all = ["max_args", "max_replace_args"])]
    pub(crate) m: bool,
    /// Use STR instead of {} for the arguments.
    #[arg(short = 'I', long = "replace", value_name = "STR")]
    pub(crate) replace: Option<String>,
    /// Quote the command's words, so the shell takes them as given.
    #[arg(short = 'q', long = "quote")]
    pub(crate) quote: bool,
    /// Cut stdin into blocks (--block) or -N records, one per job's stdin.
    #[arg(long, conflicts_with_all = ["arg_file", "xargs", "m", "max_args", "colsep", "results"])]
    pub(crate) pipe: bool,
    /// The --pipe block size in bytes (k=1000, K=1024, M, G; default 1M).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "pipe")]
    pub(crate) block: Option<usize>,
    /// Prefix each output line with the job's arguments and a tab.
    #[arg(long)]
    pub(crate) tag: bool,
    /// Prefix each output line with STR (replacement strings allowed) and a tab.
    #[arg(long, value_name = "STR")]
    pub(crate) tagstring: Option<String>,
    /// Write each job's output to DIR/1/ARG/.../{seq,stdout,stderr}
    /// instead of printing it.
    #[arg(long, value_name = "DIR")]
    pub(crate) results: Option<PathBuf>,
    /// Print each job's output a whole line at a time as it comes (lines
    /// of different jobs never mix within a line; with --tag, each line
    /// tagged); with -k, the oldest running job's lines as they come, the
    /// others' in their turn. On a cluster and with --results, output still
    /// comes whole at each job's end.
    #[arg(long)]
    pub(crate) line_buffer: bool,
    /// Print each job's output as it comes, bytes of different jobs
    /// possibly mixed within a line (--tag does not apply). On a cluster,
    /// and with -k or --results, output still comes whole at each job's end.
    #[arg(short = 'u', long)]
    pub(crate) ungroup: bool,
    /// Show a progress bar on stderr (it shows on a terminal anyway).
    #[arg(long)]
    pub(crate) bar: bool,
    /// Show the progress with the time left on stderr.
    #[arg(long)]
    pub(crate) eta: bool,
    /// The command, then optionally the input sources.
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
    /// Let the page requeue and discard dead letters.
    #[arg(long)]
    pub(crate) allow_actions: bool,
    /// The queue's keys, one per line, for requeues on a signed queue (also
    /// MULTITASK_CLUSTER_KEY).
    #[arg(long, value_name = "FILE")]
    pub(crate) key_file: Option<PathBuf>,
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
    fn durations_parse() {
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("soon").is_err());
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
    /// Tasks at once, each in a worker process (default: usable CPUs; on a
    /// Redis Cluster, per shard).
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
    /// Most tasks to fetch ahead of those running, queued locally so that
    /// short tasks travel in batches (how far adapts: about 5 ms of work at
    /// the rate they finish; a worker busy with long tasks holds none).
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub(crate) prefetch: usize,
    /// Measure each task's CPU time and peak RSS (some tens of µs per
    /// task): the client's futures, traces and the dashboard show them.
    #[arg(long)]
    pub(crate) measure_usage: bool,
    /// Don't publish finished tasks to the queue's span stream (what the
    /// dashboard's timeline and slowest tasks read).
    #[arg(long)]
    pub(crate) no_spans: bool,
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
    /// Also list the N newest dead letters: entry, task, deliveries, reason.
    #[arg(long, value_name = "N")]
    pub(crate) dead: Option<usize>,
    /// Put dead letter ENTRY back on the queue as a new task (its caller was
    /// failed already: nobody waits for it; it runs for what it does). On a
    /// signed queue it needs the key (--key-file or MULTITASK_CLUSTER_KEY)
    /// and the task's original signature must check.
    #[arg(long, value_name = "ENTRY", conflicts_with = "discard")]
    pub(crate) requeue: Option<String>,
    /// Delete dead letter ENTRY.
    #[arg(long, value_name = "ENTRY")]
    pub(crate) discard: Option<String>,
    /// The queue's keys for --requeue, one per line (the first signs).
    #[arg(long, value_name = "FILE", requires = "requeue")]
    pub(crate) key_file: Option<PathBuf>,
}
