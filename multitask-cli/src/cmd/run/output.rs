//! What a finished job leaves: its output and its job log line.
//!
//! Output: stdout and stderr as one block each (so outputs never
//! interleave), in completion order or, with `-k`, in input order
//! ([`Reorder`]); with `--tag`/`--tagstring` each line prefixed; with
//! `--results DIR`, into files instead, in GNU parallel's layout.
//!
//! `--results DIR` writes `DIR/1/V1/2/V2/.../{seq,stdout,stderr}` for a
//! job whose values are V1, V2, ... (a `/` in a value becomes `\_`, a `\`
//! becomes `\\`), and prints nothing, as GNU parallel 2022 does.
//!
//! The `--joblog` file is GNU parallel's tab-separated format: the header
//! `Seq Host Starttime JobRuntime Send Receive Exitval Signal Command`,
//! then a line written and flushed as each job ends (its last try, with
//! `--retries`), so a killed run leaves a log to resume from. A resumed
//! run appends to the log; a fresh one replaces it. `--resume` and
//! `--resume-failed` go by job number, as GNU parallel's do: the same
//! inputs must come in the same order.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::inputs::Record;
use crate::tasks::ShellOutcome;

/// A finished job and what its output needs from its inputs.
pub(crate) struct Finished {
    /// How it ended.
    pub(crate) outcome: ShellOutcome,
    /// Its `--tag` text, if tagging.
    pub(crate) tag: Option<String>,
    /// Its values, for `--results`.
    pub(crate) values: Record,
}

/// Holds finished jobs until the ones before them are out (`-k`).
pub(crate) struct Reorder {
    /// Finished jobs by their place in the input, from 0.
    waiting: BTreeMap<u64, Finished>,
    /// The place of the next job to hand out.
    next: u64,
}

impl Reorder {
    /// An empty buffer.
    pub(crate) fn new() -> Reorder {
        Reorder {
            waiting: BTreeMap::new(),
            next: 0,
        }
    }

    /// Takes `job` (at input place `order`) and returns the jobs now due,
    /// in order.
    pub(crate) fn push(&mut self, order: u64, job: Finished) -> Vec<Finished> {
        self.waiting.insert(order, job);
        let mut due = Vec::new();
        while let Some(job) = self.waiting.remove(&self.next) {
            due.push(job);
            self.next += 1;
        }
        due
    }

    /// Whatever is left, in order (after a job whose place was lost).
    pub(crate) fn drain(&mut self) -> Vec<Finished> {
        std::mem::take(&mut self.waiting).into_values().collect()
    }
}

/// Writes finished jobs' output.
pub(crate) struct Printer {
    /// `--results DIR`.
    pub(crate) results: Option<PathBuf>,
}

impl Printer {
    /// Writes `job`'s stdout and stderr, each as one block.
    pub(crate) fn print(&self, job: &Finished) -> Result<()> {
        let o = &job.outcome;
        if let Some(dir) = &self.results {
            return write_results(dir, job)
                .with_context(|| format!("writing --results under {}", dir.display()));
        }
        let mut out = io::stdout().lock();
        write_tagged(&mut out, &o.stdout, job.tag.as_deref())?;
        out.flush()?;
        let mut err = io::stderr().lock();
        write_tagged(&mut err, &o.stderr, job.tag.as_deref())?;
        err.flush()?;
        Ok(())
    }
}

/// Writes `bytes`, each line prefixed by `tag` and a tab when tagging.
fn write_tagged(w: &mut impl Write, bytes: &[u8], tag: Option<&str>) -> io::Result<()> {
    let Some(tag) = tag else {
        return w.write_all(bytes);
    };
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        w.write_all(tag.as_bytes())?;
        w.write_all(b"\t")?;
        w.write_all(line)?;
    }
    Ok(())
}

/// The `--results` directory of a job with `values`.
pub(crate) fn results_dir(dir: &Path, values: &[String]) -> PathBuf {
    let mut path = dir.to_path_buf();
    for (i, v) in values.iter().enumerate() {
        path.push((i + 1).to_string());
        path.push(v.replace('\\', "\\\\").replace('/', "\\_"));
    }
    path
}

fn write_results(dir: &Path, job: &Finished) -> io::Result<()> {
    let path = results_dir(dir, &job.values);
    std::fs::create_dir_all(&path)?;
    let o = &job.outcome;
    std::fs::write(path.join("seq"), o.seq.to_string())?;
    std::fs::write(path.join("stdout"), &o.stdout)?;
    std::fs::write(path.join("stderr"), &o.stderr)
}

/// The header line.
const HEADER: &str = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand";

/// An open job log.
pub(crate) struct JobLog {
    /// The log, flushed after each line.
    file: BufWriter<File>,
}

impl JobLog {
    /// Creates (or truncates) `path` and writes the header; with `append`,
    /// adds to what is there (writing the header only if it is empty).
    pub(crate) fn open(path: &Path, append: bool) -> Result<JobLog> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .with_context(|| format!("opening the job log {}", path.display()))?;
        let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(true);
        let mut log = JobLog {
            file: BufWriter::new(file),
        };
        if empty {
            writeln!(log.file, "{HEADER}")?;
            log.file.flush()?;
        }
        Ok(log)
    }

    /// Writes `o`'s line: the host is `:` for this machine, as in GNU
    /// parallel; `send` is the bytes fed to its stdin (`--pipe`),
    /// `receive` those it wrote to stdout, and a job killed by a signal (a
    /// timeout among them) has exit value -1.
    pub(crate) fn record(
        &mut self,
        o: &ShellOutcome,
        local_host: &str,
        send: usize,
        receive: usize,
    ) -> io::Result<()> {
        let host = if o.host == local_host { ":" } else { &o.host };
        writeln!(
            self.file,
            "{}\t{host}\t{:.3}\t{:>10.3}\t{send}\t{}\t{}\t{}\t{}",
            o.seq,
            o.start,
            o.seconds,
            receive,
            o.code.unwrap_or(-1),
            o.signal.unwrap_or(0),
            o.cmd
        )?;
        self.file.flush()
    }

    /// Flushes what is buffered.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The job numbers a resumed run skips: every job in the log
/// (`--resume`), or only those that succeeded (`--resume-failed`, which
/// runs the failed ones again). A missing log skips nothing.
pub(crate) fn finished(path: &Path, failed_too: bool) -> Result<HashSet<u64>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e).with_context(|| format!("reading the job log {}", path.display())),
    };
    let mut done = HashSet::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (Some(seq), Some(exit), Some(signal)) = (cols.first(), cols.get(6), cols.get(7)) else {
            continue;
        };
        let Ok(seq) = seq.parse::<u64>() else {
            continue;
        };
        let ok = *exit == "0" && *signal == "0";
        if ok || failed_too {
            done.insert(seq);
        } else {
            // A later line for the same job (a rerun) decides.
            done.remove(&seq);
        }
    }
    Ok(done)
}
