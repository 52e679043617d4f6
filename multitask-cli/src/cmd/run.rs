//! `multitask run`: a shell command per argument, in parallel, in the
//! spirit of `xargs -P`, GNU parallel and rush.
//!
//! The words before `:::` are the command template; `{}` and its relatives
//! are replaced by each argument (see [`Template`]). The arguments come after
//! `:::`, or else from stdin one per line, read lazily: the jobs go through
//! the executor's lazy map (`map` with `-k`, `map_unordered` without) with
//! one job per chunk and a window of one job per worker, so no more jobs
//! are started than run. Each job is the named task
//! [`run_shell`]; its stdout and stderr are
//! printed as one block each when it ends, so outputs never interleave.
//!
//! `--halt soon,fail=N` stops feeding jobs after N failures and lets the
//! running ones finish; `--halt now,fail=N` kills the running jobs and
//! exits at once. A job log line in GNU parallel's format is written as
//! each job ends.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use multitasking::{Executor, ExecutorSpec};

use crate::args::RunArgs;
use crate::tasks::{run_shell, ShellJob, ShellOutcome};
use crate::term::{self, Progress};

/// GNU parallel's cap on the failure count as an exit status; above it the
/// status would collide with signals (128 + n).
const MAX_FAILURE_STATUS: usize = 101;

/// Runs the jobs and returns the exit status.
pub(crate) fn main(args: RunArgs, quiet: bool) -> Result<ExitCode> {
    crate::shell::adopt_orphans();
    let (template, listed) = split_command(&args.command)?;
    let template = Template::parse(&template);
    let arguments: Box<dyn Iterator<Item = String>> = match listed {
        Some(listed) => Box::new(listed.into_iter()),
        None => Box::new(stdin_lines()),
    };

    if args.dry_run {
        let mut out = io::stdout().lock();
        for (i, arg) in arguments.enumerate() {
            writeln!(out, "{}", template.expand(&arg, i as u64 + 1))?;
        }
        return Ok(ExitCode::SUCCESS);
    }

    let spec = with_jobs(&args.executor, args.jobs);
    let ex = std::sync::Arc::new(super::executor(&spec)?);
    let closing = std::sync::Arc::downgrade(&ex);
    crate::shell::close_on_stop(move || {
        if let Some(ex) = closing.upgrade() {
            ex.shutdown(multitasking::Shutdown {
                wait: false,
                cancel_futures: true,
            });
        }
    });
    let mut joblog = args.joblog.as_deref().map(JobLog::create).transpose()?;
    let timeout_ms = args.timeout.map(|t| t.as_millis() as u64);

    // Set by `--halt soon`: the input ends, so no further job starts.
    let stop = Cell::new(false);
    let jobs = arguments
        .take_while(|_| !stop.get())
        .enumerate()
        .map(|(i, arg)| {
            let seq = i as u64 + 1;
            ShellJob {
                seq,
                cmd: template.expand(&arg, seq),
                timeout_ms,
                retries: args.retries,
            }
        });
    let progress = RefCell::new(Progress::new("jobs", quiet));
    let tick = |done, total| progress.borrow_mut().tick(done, total);
    let map = if args.keep_order {
        ex.map(run_shell, jobs)
    } else {
        ex.map_unordered(run_shell, jobs)
    };
    let outcomes = map.chunksize(1).window(ex.max_workers()).progress(tick);

    let local_host = multitasking::host_name();
    let mut failed = 0;
    let mut halting = None;
    for outcome in outcomes {
        if crate::shell::stopping() {
            crate::shell::await_stop(crate::INTERRUPTED);
        }
        progress.borrow_mut().suspend();
        let failure = match outcome {
            Ok(o) => {
                print_block(&o)?;
                if let Some(log) = joblog.as_mut() {
                    log.record(&o, &local_host)?;
                }
                // A job that exited non-zero has said why on its stderr;
                // a timeout or a signal deserves a line from us.
                let notable = o.timed_out || o.code.is_none();
                (!o.succeeded()).then(|| (exit_status_of(&o), describe_failure(&o, &args), notable))
            }
            Err(multitasking::TaskError::NotAllowed { worker, .. }) => Some((
                1,
                format!(
                    "a job was refused: worker {worker} does not run shell commands; start the \
                     cluster's workers with `multitask worker --allow-shell` (they then run any \
                     command a client of the queue sends)"
                ),
                true,
            )),
            Err(e) => Some((1, format!("a job failed: {e}"), true)),
        };
        let Some((status, why, notable)) = failure else {
            continue;
        };
        failed += 1;
        let halts = halting.is_none() && args.halt.fails_at(failed);
        if notable && !halts {
            term::note(&why);
        }
        if halts {
            halting = Some(status);
            match args.halt {
                Halt::Now { .. } => halt_now(status, &why, joblog.as_mut()),
                _ => {
                    term::note(format!(
                        "halting: {why}; starting no more jobs, waiting for the running ones"
                    ));
                    stop.set(true);
                }
            }
        }
    }
    if crate::shell::stopping() {
        crate::shell::await_stop(crate::INTERRUPTED);
    }
    progress.borrow_mut().finish();
    if let Some(log) = joblog.as_mut() {
        log.flush()?;
    }
    Ok(match halting {
        Some(status) => ExitCode::from(status),
        None => ExitCode::from(failed.min(MAX_FAILURE_STATUS) as u8),
    })
}

/// `--halt now`: kill every running job and exit with `status`.
fn halt_now(status: u8, why: &str, joblog: Option<&mut JobLog>) -> ! {
    term::note(format!("halting: {why}; killing the running jobs"));
    if let Some(log) = joblog {
        let _ = log.flush();
    }
    let _ = io::stdout().flush();
    crate::shell::stop_everything();
    // NOTE: exiting is how the whole pool stops at once: thread workers end
    // with the process, and the worker processes, their shells and what
    // those started are dead already (see `shell`). Dropping the pool
    // instead would wait for every running job.
    std::process::exit(status.into())
}

/// The spec with `-j` applied: it sets the worker count of a `processes`
/// or `threads` spec; without `-j`, a spec with no count gets one worker
/// per usable CPU (GNU parallel's default, not the thread pool's).
fn with_jobs(spec: &ExecutorSpec, jobs: Option<u32>) -> ExecutorSpec {
    let count = |given: Option<usize>| match jobs {
        Some(j) => Some(j as usize),
        None => given.or_else(|| Some(multitasking::usable_cpus())),
    };
    match spec {
        ExecutorSpec::Threads(n) => ExecutorSpec::Threads(count(*n)),
        ExecutorSpec::Processes(n) => ExecutorSpec::Processes(count(*n)),
        other => other.clone(),
    }
}

/// Splits `CMD... [::: ARGS...]` into the template and the listed
/// arguments (`None`: read them from stdin).
fn split_command(words: &[String]) -> Result<(String, Option<Vec<String>>)> {
    let (cmd, rest) = match words.iter().position(|w| w == ":::") {
        Some(i) => (&words[..i], Some(&words[i + 1..])),
        None => (words, None),
    };
    if cmd.is_empty() {
        bail!("no command before ':::'");
    }
    if let Some(rest) = rest {
        if rest.iter().any(|w| w == ":::") {
            bail!("only one ':::' group of arguments is supported");
        }
    }
    Ok((cmd.join(" "), rest.map(<[String]>::to_vec)))
}

/// Stdin's lines, read as they are needed; invalid UTF-8 is replaced.
fn stdin_lines() -> impl Iterator<Item = String> {
    io::stdin().lock().split(b'\n').map_while(|line| {
        let mut line = line.ok()?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Some(String::from_utf8_lossy(&line).into_owned())
    })
}

/// Writes a job's stdout and stderr, each as one block.
fn print_block(o: &ShellOutcome) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(&o.stdout)?;
    out.flush()?;
    let mut err = io::stderr().lock();
    err.write_all(&o.stderr)?;
    err.flush()
}

/// Why a job failed, in a line.
fn describe_failure(o: &ShellOutcome, args: &RunArgs) -> String {
    let what = match (o.timed_out, o.code, o.signal) {
        (true, _, _) => format!(
            "timed out after {}s and was killed",
            args.timeout.map_or(0.0, |t| t.as_secs_f64())
        ),
        (_, Some(code), _) => format!("exited with {code}"),
        (_, None, Some(sig)) => format!("was killed by signal {sig}"),
        (_, None, None) => "ended for an unknown reason".to_string(),
    };
    format!("job {} {what}: {}", o.seq, o.cmd)
}

/// A failed job's status as a process exit status: its code, or 128 + the
/// signal that killed it, as a shell reports it.
fn exit_status_of(o: &ShellOutcome) -> u8 {
    match (o.code, o.signal) {
        (Some(code), _) if code != 0 => code.clamp(1, 255) as u8,
        (_, Some(sig)) => (128 + sig).clamp(1, 255) as u8,
        _ => 1,
    }
}

/// `--halt`: when failures stop the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Halt {
    /// Run every job whatever fails.
    Never,
    /// After `fail` failures, kill the running jobs and exit.
    Now {
        /// Failures that trigger the halt.
        fail: usize,
    },
    /// After `fail` failures, start no new jobs; let the running ones end.
    Soon {
        /// Failures that trigger the halt.
        fail: usize,
    },
}

impl Halt {
    /// True if `failed` failures trigger the halt.
    fn fails_at(self, failed: usize) -> bool {
        match self {
            Halt::Never => false,
            Halt::Now { fail } | Halt::Soon { fail } => failed >= fail,
        }
    }
}

impl FromStr for Halt {
    type Err = String;

    fn from_str(s: &str) -> Result<Halt, String> {
        let bad = || format!("expected never, now,fail=N or soon,fail=N, got {s:?}");
        if s == "never" {
            return Ok(Halt::Never);
        }
        let (when, cond) = s.split_once(',').ok_or_else(bad)?;
        let fail = cond
            .strip_prefix("fail=")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n >= 1)
            .ok_or_else(bad)?;
        match when {
            "now" => Ok(Halt::Now { fail }),
            "soon" => Ok(Halt::Soon { fail }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Halt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Halt::Never => f.write_str("never"),
            Halt::Now { fail } => write!(f, "now,fail={fail}"),
            Halt::Soon { fail } => write!(f, "soon,fail={fail}"),
        }
    }
}

/// One piece of a command template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Text copied as it is.
    Text(String),
    /// `{}`: the argument.
    Arg,
    /// `{.}`: the argument without its extension.
    NoExt,
    /// `{/}`: the argument's basename.
    Base,
    /// `{//}`: the argument's directory.
    Dir,
    /// `{/.}`: the basename without its extension.
    BaseNoExt,
    /// `{#}`: the job number, from 1.
    Seq,
}

/// A command template with GNU parallel's replacement strings. Arguments
/// are shell-quoted when they hold anything but safe characters, so an
/// argument is always one word (GNU parallel does the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    /// The template, cut at its replacement strings.
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `cmd`; with no replacement string, `{}` is appended.
    pub(crate) fn parse(cmd: &str) -> Template {
        const TOKENS: [(&str, Piece); 6] = [
            ("{}", Piece::Arg),
            ("{.}", Piece::NoExt),
            ("{/}", Piece::Base),
            ("{//}", Piece::Dir),
            ("{/.}", Piece::BaseNoExt),
            ("{#}", Piece::Seq),
        ];
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = cmd;
        'scan: while !rest.is_empty() {
            for (token, piece) in &TOKENS {
                if let Some(after) = rest.strip_prefix(token) {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(piece.clone());
                    rest = after;
                    continue 'scan;
                }
            }
            let c = rest.chars().next().expect("rest is not empty");
            text.push(c);
            rest = &rest[c.len_utf8()..];
        }
        let has_token = pieces.iter().any(|p| !matches!(p, Piece::Text(_)));
        if !has_token {
            text.push(' ');
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        if !has_token {
            pieces.push(Piece::Arg);
        }
        Template { pieces }
    }

    /// The command line for argument `arg`, job number `seq`.
    pub(crate) fn expand(&self, arg: &str, seq: u64) -> String {
        let path = Path::new(arg);
        let base = path
            .file_name()
            .map_or_else(|| arg.to_string(), |b| b.to_string_lossy().into_owned());
        let mut cmd = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => cmd.push_str(t),
                Piece::Arg => cmd.push_str(&quote(arg)),
                Piece::NoExt => cmd.push_str(&quote(without_ext(arg))),
                Piece::Base => cmd.push_str(&quote(&base)),
                Piece::BaseNoExt => cmd.push_str(&quote(without_ext(&base))),
                Piece::Dir => {
                    let dir = match path.parent().map(|d| d.to_string_lossy()) {
                        Some(d) if !d.is_empty() => d.into_owned(),
                        _ => ".".to_string(),
                    };
                    cmd.push_str(&quote(&dir));
                }
                Piece::Seq => cmd.push_str(&seq.to_string()),
            }
        }
        cmd
    }
}

/// `s` without the extension of its last path component (`a/b.tar.gz` ->
/// `a/b.tar`; `a.d/b` and `.bashrc` unchanged).
fn without_ext(s: &str) -> &str {
    let name_start = s.rfind('/').map_or(0, |i| i + 1);
    match s[name_start..].rfind('.') {
        Some(dot) if dot > 0 => &s[..name_start + dot],
        _ => s,
    }
}

/// `s` as one shell word: unchanged if it holds only safe characters, else
/// in single quotes.
fn quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./,:+=@%^".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The `--joblog` file: GNU parallel's tab-separated format, a header line
/// then one line per job as it ends.
struct JobLog {
    /// The open log.
    file: BufWriter<File>,
}

impl JobLog {
    /// Creates (or truncates) `path` and writes the header.
    fn create(path: &Path) -> Result<JobLog> {
        let file = File::create(path)
            .with_context(|| format!("creating the job log {}", path.display()))?;
        let mut log = JobLog {
            file: BufWriter::new(file),
        };
        writeln!(
            log.file,
            "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"
        )?;
        Ok(log)
    }

    /// Writes `o`'s line; the host is `:` for this machine, as in GNU
    /// parallel.
    fn record(&mut self, o: &ShellOutcome, local_host: &str) -> io::Result<()> {
        let host = if o.host == local_host { ":" } else { &o.host };
        writeln!(
            self.file,
            "{}\t{host}\t{:.3}\t{:>10.3}\t0\t{}\t{}\t{}\t{}",
            o.seq,
            o.start,
            o.seconds,
            o.stdout.len(),
            o.code.unwrap_or(-1),
            o.signal.unwrap_or(0),
            o.cmd
        )?;
        self.file.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_expand() {
        let t = Template::parse("cp {} {//}/{/.}.bak # {.} {/} {#}");
        assert_eq!(
            t.expand("src/a.b/file.tar.gz", 3),
            "cp src/a.b/file.tar.gz src/a.b/file.tar.bak # src/a.b/file.tar file.tar.gz 3"
        );
        assert_eq!(Template::parse("echo {//}").expand("plain", 1), "echo .");
        assert_eq!(without_ext("a.d/b"), "a.d/b");
        assert_eq!(without_ext(".bashrc"), ".bashrc");
    }

    #[test]
    fn no_placeholder_appends_the_argument() {
        assert_eq!(Template::parse("echo hi").expand("x", 1), "echo hi x");
        assert_eq!(Template::parse("echo {#}").expand("x", 2), "echo 2");
    }

    #[test]
    fn arguments_are_one_shell_word() {
        let t = Template::parse("echo {}");
        assert_eq!(t.expand("a b", 1), "echo 'a b'");
        assert_eq!(t.expand("it's", 1), r"echo 'it'\''s'");
        assert_eq!(t.expand("", 1), "echo ''");
        assert_eq!(t.expand("$(rm -rf x)", 1), "echo '$(rm -rf x)'");
    }

    #[test]
    fn halt_parses() {
        assert_eq!("never".parse(), Ok(Halt::Never));
        assert_eq!("now,fail=1".parse(), Ok(Halt::Now { fail: 1 }));
        assert_eq!("soon,fail=3".parse(), Ok(Halt::Soon { fail: 3 }));
        for bad in ["now", "now,fail=0", "later,fail=1", "soon,success=1"] {
            assert!(bad.parse::<Halt>().is_err(), "{bad}");
        }
        assert_eq!(Halt::Soon { fail: 2 }.to_string(), "soon,fail=2");
    }

    #[test]
    fn the_command_splits_at_the_separator() {
        let words = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let (t, a) = split_command(&words("echo {} ::: a b")).unwrap();
        assert_eq!(
            (t.as_str(), a),
            ("echo {}", Some(vec!["a".into(), "b".into()]))
        );
        assert_eq!(split_command(&words("wc -l")).unwrap().1, None);
        assert!(split_command(&words("::: a")).is_err());
        assert!(split_command(&words("echo ::: a ::: b")).is_err());
    }

    #[test]
    fn jobs_set_the_worker_count() {
        let j = with_jobs(&ExecutorSpec::Threads(Some(8)), Some(2));
        assert_eq!(j, ExecutorSpec::Threads(Some(2)));
        let d = with_jobs(&ExecutorSpec::Processes(None), None);
        assert_eq!(
            d,
            ExecutorSpec::Processes(Some(multitasking::usable_cpus()))
        );
        assert_eq!(
            with_jobs(&ExecutorSpec::Serial, Some(4)),
            ExecutorSpec::Serial
        );
    }
}
