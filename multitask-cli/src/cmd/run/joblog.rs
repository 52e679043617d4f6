//! The `--joblog` file in GNU parallel's tab-separated format, and what
//! `--resume` and `--resume-failed` read back from it.
//!
//! The header is `Seq Host Starttime JobRuntime Send Receive Exitval
//! Signal Command`; a line is written and flushed as each job ends (its
//! last try, with `--retries`), so a killed run leaves a log to resume
//! from. A resumed run appends to the log; a fresh one replaces it.
//! Resuming goes by job number, as GNU parallel's does: the same inputs
//! must come in the same order.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};

use crate::tasks::ShellOutcome;

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
    /// parallel; `send` is the bytes fed to its stdin (`--pipe`), and a
    /// job killed by a signal (a timeout among them) has exit value -1.
    pub(crate) fn record(
        &mut self,
        o: &ShellOutcome,
        local_host: &str,
        send: usize,
    ) -> io::Result<()> {
        let host = if o.host == local_host { ":" } else { &o.host };
        writeln!(
            self.file,
            "{}\t{host}\t{:.3}\t{:>10.3}\t{send}\t{}\t{}\t{}\t{}",
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
