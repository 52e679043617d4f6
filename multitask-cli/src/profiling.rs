//! `--profile FILE` for `bench` and `primes`: the library's profiler over
//! this process and every worker process the run starts, merged by task;
//! the flamegraph goes to FILE and the cProfile-like table beside it
//! (FILE with `.txt`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use multitasking::profile::Profiler;

/// Functions listed per task in the table.
const TOP: usize = 15;

/// Starts the profiler when `path` asks for one: before any pool starts,
/// so that their workers sample themselves too.
pub(crate) fn start(path: Option<&Path>) -> Result<Option<Profiler>> {
    path.map(|_| Profiler::start().context("starting the profiler"))
        .transpose()
}

/// Merges and writes the profile; the table's path. Call it after the
/// pools are dropped, so that their workers wrote their last stacks.
pub(crate) fn finish(profiler: Profiler, path: &Path) -> Result<PathBuf> {
    let profile = profiler.finish().context("collecting the profile")?;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    profile.flamegraph(file).context("writing the flamegraph")?;
    let table = path.with_extension("txt");
    std::fs::write(&table, profile.table(TOP))
        .with_context(|| format!("writing {}", table.display()))?;
    Ok(table)
}
