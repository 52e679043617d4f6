//! `multitask run`: a shell command per argument, in parallel, as GNU
//! parallel runs it (and `xargs -P`, rush).
//!
//! ```text
//!  CMD ::: a b :::: f -a g      inputs.rs   sources -> records -> jobs' records
//!        |                                  (or stdin blocks with --pipe)
//!        v
//!  template.rs  {} {.} {1/.} {#} {%} -> one `sh -c` line per job, quoted
//!        |
//!        v                       executor (processes by default): one job per
//!  this file: the job iterator --> chunk, a window of one job per slot;
//!  (slots, --delay, --timeout P%,   each job is the task `run_shell`
//!   --resume, --halt soon stop)          |
//!        ^                               v
//!        +---- outcome loop <---- outcomes as they complete
//!              output.rs (-k reorder, --tag, --results, --joblog),
//!              --halt, progress, exit status
//! ```
//!
//! The job iterator is pulled by the executor's lazy map only when a slot
//! is free, so no more jobs exist than run; it hands each job the lowest
//! free slot (`{%}`), which the outcome loop frees. `-k` does not use the
//! ordered map (which would hold a slot behind a slow first job): outcomes
//! come as they complete and [`output::Reorder`] prints them in input
//! order. Each job's stdout and stderr are printed as one block each when
//! it ends, so outputs never interleave; with `--line-buffer` or
//! `--ungroup` on this machine's executors, [`stream`] prints them as the
//! job writes them instead, and the outcome loop waits for a job's output
//! to be out before it logs the job.
//!
//! `--halt soon,...` stops feeding jobs and lets the running ones finish;
//! `--halt now,...` kills the running jobs and exits at once. A job log
//! line in GNU parallel's format is written as each job ends.

mod inputs;
pub(crate) mod options;
mod output;
mod stream;
mod template;
#[cfg(test)]
mod test;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use multitasking::{Executor, ExecutorSpec};

use self::inputs::{Blocks, Colsep, Packer, Reading, Record};
use self::options::{Halt, HaltOn, Limit};
use self::output::{Finished, JobLog, Printer, Reorder};
use self::stream::{Mode, Streamer};
use self::template::{Fill, Template};
use crate::args::RunArgs;
use crate::tasks::{run_shell, ShellJob, ShellOutcome};
use crate::term::{self, Progress};

/// GNU parallel's cap on the failure count as an exit status; above it the
/// status would collide with signals (128 + n).
const MAX_FAILURE_STATUS: usize = 101;

/// GNU parallel's default `--block`: 1 MB.
const DEFAULT_BLOCK: usize = 1_000_000;

/// A usage error found after parsing (a missing file, a bad combination):
/// one `multitask: error:` line and exit status 2, as clap's own.
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// What one job is fed.
enum Input {
    /// Its records (one, or several with `-n`, `-X`, `-m`).
    Records(Vec<Record>),
    /// A block of stdin (`--pipe`).
    Block(Vec<u8>),
}

/// A started job, until its outcome comes back.
struct Started {
    /// Its place among the started jobs, from 0 (`-k` prints by it).
    order: u64,
    /// Its slot (`{%}`).
    slot: usize,
    /// Its `--tag` text.
    tag: Option<String>,
    /// Its values, for `--results`.
    values: Record,
    /// The bytes fed to its stdin, for the job log.
    send: usize,
}

/// What the job iterator and the outcome loop share.
#[derive(Default)]
struct Shared {
    /// Set by `--halt soon`: the job iterator ends.
    stop: bool,
    /// Slots given back by finished jobs.
    free: BTreeSet<usize>,
    /// The slots handed out so far (the next new one is this plus one).
    slots: usize,
    /// Run times of the finished jobs, for `--timeout P%`.
    runtimes: Vec<f64>,
    /// When the last job started, for `--delay`.
    last_start: Option<Instant>,
    /// Started jobs by job number.
    started: HashMap<u64, Started>,
}

impl Shared {
    /// The lowest free slot.
    fn take_slot(&mut self) -> usize {
        self.free.pop_first().unwrap_or_else(|| {
            self.slots += 1;
            self.slots
        })
    }

    /// Job `o.seq` is done: its slot is free, its run time counts.
    fn finish(&mut self, o: &ShellOutcome) -> Option<Started> {
        let started = self.started.remove(&o.seq)?;
        self.free.insert(started.slot);
        self.runtimes.push(o.seconds);
        Some(started)
    }
}

/// Runs the jobs and returns the exit status.
pub(crate) fn main(args: RunArgs, quiet: bool) -> Result<ExitCode> {
    crate::shell::adopt_orphans();
    let (words, groups) = inputs::split_command(&args.command, &args.arg_file)?;
    if args.pipe && groups.iter().any(|g| g.source != inputs::Source::Stdin) {
        return Err(
            Usage("--pipe cuts stdin into blocks; it takes no ::: or :::: sources".into()).into(),
        );
    }
    let replace = args.replace.as_deref().unwrap_or("{}");
    let template = Template::parse(&words, replace, args.quote, args.xargs, !args.pipe)?;
    let tag_words = match (&args.tagstring, args.tag) {
        (Some(s), _) => Some(vec![s.clone()]),
        (None, true) => Some(vec![replace.to_string()]),
        (None, false) => None,
    };
    let tagger = tag_words
        .map(|w| Template::parse(&w, replace, false, false, false).map(Template::unquoted))
        .transpose()?;
    let reading = Reading {
        terminator: if args.null { 0 } else { b'\n' },
        colsep: args.colsep.as_deref().map(Colsep::parse).transpose()?,
    };
    let skip: HashSet<u64> = match &args.joblog {
        Some(path) if args.resume || args.resume_failed => output::finished(path, args.resume)?,
        _ => HashSet::new(),
    };

    let cpus = multitasking::usable_cpus();
    let (inputs, total, slots): (
        Box<dyn Iterator<Item = Input> + '_>,
        Option<usize>,
        Option<usize>,
    ) = if args.pipe {
        let block = args.block.unwrap_or(DEFAULT_BLOCK);
        let blocks = Blocks::new(
            io::stdin().lock(),
            block,
            args.max_replace_args,
            reading.terminator,
        );
        let slots = args.jobs.map(|j| j.slots(cpus, None));
        (Box::new(blocks.map(Input::Block)), None, slots)
    } else {
        let records = inputs::records(&groups, &reading, args.halt.needs_total())?;
        let slots = args.jobs.map(|j| j.slots(cpus, records.total));
        let packing = (args.xargs || args.m).then_some(&template);
        let per_job = match (packing, records.total) {
            // GNU parallel spreads known arguments over the slots.
            (Some(_), Some(t)) => t.div_ceil(slots.unwrap_or(cpus).max(1)).max(1),
            (Some(_), None) => usize::MAX,
            (None, _) => args.max_args.or(args.max_replace_args).unwrap_or(1),
        };
        let jobs = Packer::new(records.iter, per_job, packing).map(Input::Records);
        match records.total {
            Some(_) => {
                let all: Vec<Input> = jobs.collect();
                let n = all.len();
                (Box::new(all.into_iter()), Some(n), slots)
            }
            None => (Box::new(jobs), None, slots),
        }
    };
    let total = total.map(|t| t - skip.len().min(t));

    if args.dry_run {
        let mut out = io::stdout().lock();
        for (i, input) in inputs.enumerate() {
            let seq = i as u64 + 1;
            if skip.contains(&seq) {
                continue;
            }
            let records = match &input {
                Input::Records(r) => &r[..],
                Input::Block(_) => &[],
            };
            // Nothing runs, so every job finds slot 1 free, as in GNU
            // parallel's dry run.
            writeln!(
                out,
                "{}",
                template.expand(Fill {
                    records,
                    seq,
                    slot: 1
                })
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }

    let spec = with_jobs(&args.executor, slots);
    let ex = Arc::new(super::executor(&spec)?);
    let closing = Arc::downgrade(&ex);
    crate::shell::close_on_stop(move || {
        if let Some(ex) = closing.upgrade() {
            ex.shutdown(multitasking::Shutdown {
                wait: false,
                cancel_futures: true,
            });
        }
    });
    let resuming = args.resume || args.resume_failed;
    let mut joblog = args
        .joblog
        .as_deref()
        .map(|p| JobLog::open(p, resuming))
        .transpose()?;
    if let Some(dir) = &args.results {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("creating the --results directory {}: {e}", dir.display())
        })?;
    }

    let streamer = streaming(&args, &spec)?;
    let shared = RefCell::new(Shared::default());
    let mut order = 0;
    let jobs = inputs
        .enumerate()
        .map(|(i, input)| (i as u64 + 1, input))
        .filter(|(seq, _)| !skip.contains(seq))
        .map_while(|(seq, input)| {
            if let Some(delay) = args.delay {
                let last = shared.borrow().last_start;
                if let Some(last) = last {
                    std::thread::sleep(delay.saturating_sub(last.elapsed()));
                }
            }
            let mut sh = shared.borrow_mut();
            if sh.stop {
                return None;
            }
            sh.last_start = Some(Instant::now());
            let slot = sh.take_slot();
            let timeout = args.timeout.and_then(|t| t.limit(&mut sh.runtimes));
            let (records, stdin) = match input {
                Input::Records(r) => (r, None),
                Input::Block(b) => (Vec::new(), Some(b)),
            };
            let fill = Fill {
                records: &records,
                seq,
                slot,
            };
            let cmd = template.expand(fill);
            let tag = tagger.as_ref().map(|t| t.expand(fill));
            let send = stdin.as_ref().map_or(0, Vec::len);
            let values = records.concat();
            if let Some(st) = &streamer {
                st.expect(seq, tag.clone());
            }
            sh.started.insert(
                seq,
                Started {
                    order,
                    slot,
                    tag,
                    values,
                    send,
                },
            );
            order += 1;
            Some(ShellJob {
                seq,
                cmd,
                stdin,
                timeout_ms: timeout.map(|t| t.as_millis().max(1) as u64),
                tries: args.retries,
                stream: streamer.as_ref().map(|s| s.path().to_string()),
            })
        });
    let mut progress = Progress::forced("jobs", quiet, args.bar || args.eta);
    progress.tick(0, total);
    let window = ex.max_workers();
    let outcomes = ex
        .map_unordered(run_shell, jobs)
        .chunksize(1)
        .window(window);

    let printer = Printer {
        results: args.results.clone(),
    };
    let mut reorder = Reorder::new();
    let local_host = multitasking::host_name();
    let (mut done, mut failed, mut succeeded) = (0, 0, 0);
    let mut halting: Option<u8> = None;
    for outcome in outcomes {
        if crate::shell::stopping() {
            crate::shell::await_stop(crate::INTERRUPTED);
        }
        done += 1;
        let o = match outcome {
            Ok(o) => o,
            Err(e) => {
                failed += 1;
                let why = match &e {
                    multitasking::TaskError::NotAllowed { worker, .. } => format!(
                        "a job was refused: worker {worker} does not run shell commands; start the \
                         cluster's workers with `multitask worker --allow-shell` (they then run any \
                         command a client of the queue sends)"
                    ),
                    e => format!("a job failed: {e}"),
                };
                progress.print(|| term::note(why));
                progress.tick(done, total);
                continue;
            }
        };
        let started = shared.borrow_mut().finish(&o);
        let received = match &streamer {
            Some(st) if o.streamed => st.finish(o.seq),
            Some(st) => {
                st.forget(o.seq);
                o.stdout.len()
            }
            None => o.stdout.len(),
        };
        if let Some(log) = joblog.as_mut() {
            let send = started.as_ref().map_or(0, |s| s.send);
            log.record(&o, &local_host, send, received)?;
        }
        let ok = o.succeeded();
        let status = exit_status_of(&o);
        let why = if ok {
            format!("job {} succeeded: {}", o.seq, o.cmd)
        } else {
            describe_failure(&o)
        };
        // A job that exited non-zero has said why on its stderr; a
        // timeout or a signal deserves a line from us.
        let notable = !ok && (o.timed_out || o.code.is_none());
        if ok {
            succeeded += 1;
        } else {
            failed += 1;
        }
        let (place, tag, values) = match started {
            Some(s) => (Some(s.order), s.tag, s.values),
            None => (None, None, Vec::new()),
        };
        let finished = Finished {
            outcome: o,
            tag,
            values,
        };
        let due = match (args.keep_order, place) {
            (true, Some(place)) => reorder.push(place, finished),
            _ => vec![finished],
        };
        for job in &due {
            progress.print(|| printer.print(job))?;
            if let Some(st) = &streamer {
                st.release(job.outcome.seq);
            }
        }
        let halts = halting.is_none() && args.halt.fires(failed, succeeded, total);
        if notable && !halts {
            progress.print(|| term::note(&why));
        }
        progress.tick(done, total);
        if halts {
            let code = halt_status(args.halt, status, failed, total);
            if let Halt::When { now: true, .. } = args.halt {
                progress.finish();
                halt_now(code, &why, joblog.as_mut());
            }
            progress.print(|| {
                term::note(format!(
                    "halting: {why}; starting no more jobs, waiting for the running ones"
                ))
            });
            halting = Some(code);
            shared.borrow_mut().stop = true;
        }
    }
    if crate::shell::stopping() {
        crate::shell::await_stop(crate::INTERRUPTED);
    }
    for job in reorder.drain() {
        progress.print(|| printer.print(&job))?;
        if let Some(st) = &streamer {
            st.release(job.outcome.seq);
        }
    }
    if let Some(st) = &streamer {
        progress.print(|| st.release_all());
    }
    progress.finish();
    if let Some(log) = joblog.as_mut() {
        log.flush()?;
    }
    Ok(ExitCode::from(match halting {
        Some(code) => code,
        None => final_status(args.halt, failed, total),
    }))
}

/// The stream of the jobs' output for `--line-buffer` or `--ungroup`, on
/// the executors of this machine; `None` when output is printed whole at
/// each job's end: without those options, with `-k` (output in input
/// order), with `--results`, or on a cluster, whose workers' output comes
/// back with their outcomes (said in a warning).
fn streaming(args: &RunArgs, spec: &ExecutorSpec) -> Result<Option<Streamer>> {
    let mode = match (args.ungroup, args.line_buffer) {
        (true, _) => Mode::Raw,
        (false, true) => Mode::Lines,
        (false, false) => return Ok(None),
    };
    // `-k` streams the oldest job's lines; `-k --ungroup` and `--results`
    // print whole at each job's end.
    if (args.keep_order && mode == Mode::Raw) || args.results.is_some() {
        return Ok(None);
    }
    if let ExecutorSpec::Redis(_) = spec {
        let option = if args.ungroup {
            "--ungroup"
        } else {
            "--line-buffer"
        };
        term::note(format!(
            "warning: {option} streams output only on this machine's executors; on a cluster each \
             job's output is printed whole when it ends"
        ));
        return Ok(None);
    }
    Streamer::start(mode, args.keep_order).map(Some)
}

/// The exit status when `halt` fired on a job that ended with `status`,
/// after `failed` failures of `total` jobs: GNU parallel's rules.
fn halt_status(halt: Halt, status: u8, failed: usize, total: Option<usize>) -> u8 {
    match halt {
        Halt::When {
            on: HaltOn::Fail,
            limit: Limit::Count(1),
            ..
        } => status,
        Halt::When {
            on: HaltOn::Success,
            ..
        } => 0,
        _ => final_status(halt, failed, total),
    }
}

/// The exit status of a run that was not halted: the number of failures
/// (at most 101), or with a `fail=P%` halt their percentage, rounded up.
fn final_status(halt: Halt, failed: usize, total: Option<usize>) -> u8 {
    match (halt, total) {
        (
            Halt::When {
                on: HaltOn::Fail,
                limit: Limit::Percent(_),
                ..
            },
            Some(t),
        ) if t > 0 => (failed * 100).div_ceil(t) as u8,
        _ => failed.min(MAX_FAILURE_STATUS) as u8,
    }
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

/// The spec with the slot count applied: it sets the worker count of a
/// `processes` or `threads` spec; without `-j`, a spec with no count gets
/// one worker per usable CPU (GNU parallel's default, not the thread
/// pool's).
fn with_jobs(spec: &ExecutorSpec, jobs: Option<usize>) -> ExecutorSpec {
    let count = |given: Option<usize>| match jobs {
        Some(j) => Some(j),
        None => given.or_else(|| Some(multitasking::usable_cpus())),
    };
    match spec {
        ExecutorSpec::Threads(n) => ExecutorSpec::Threads(count(*n)),
        ExecutorSpec::Processes(n) => ExecutorSpec::Processes(count(*n)),
        other => other.clone(),
    }
}

/// Why a job failed, in a line.
fn describe_failure(o: &ShellOutcome) -> String {
    let what = match (o.timed_out, o.code, o.signal) {
        (true, _, _) => format!("timed out after {:.3}s and was killed", o.seconds),
        (_, Some(code), _) => format!("exited with {code}"),
        (_, None, Some(sig)) => format!("was killed by signal {sig}"),
        (_, None, None) => "ended for an unknown reason".to_string(),
    };
    let tries = if o.attempts > 1 {
        format!(" (tried {} times)", o.attempts)
    } else {
        String::new()
    };
    format!("job {} {what}{tries}: {}", o.seq, o.cmd)
}

/// A failed job's status as a process exit status: its code, or 128 + the
/// signal that killed it, as a shell reports it.
fn exit_status_of(o: &ShellOutcome) -> u8 {
    match (o.code, o.signal) {
        (Some(code), _) if code != 0 => code.clamp(1, 255) as u8,
        (_, Some(sig)) => (128 + sig).clamp(1, 255) as u8,
        (Some(0), None) if !o.timed_out => 0,
        _ => 1,
    }
}
