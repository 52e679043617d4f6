//! Where a finished job's output goes: stdout and stderr as one block each
//! (so outputs never interleave), in completion order or, with `-k`, in
//! input order ([`Reorder`]); with `--tag`/`--tagstring` each line
//! prefixed; with `--results DIR`, into files instead, in GNU parallel's
//! layout.
//!
//! `--results DIR` writes `DIR/1/V1/2/V2/.../{seq,stdout,stderr}` for a
//! job whose values are V1, V2, ... (a `/` in a value becomes `\_`, a `\`
//! becomes `\\`), and prints nothing, as GNU parallel 2022 does.

use std::collections::BTreeMap;
use std::io::{self, Write};
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
