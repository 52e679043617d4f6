//! `multitask info`: who and where this process is and what it may use,
//! from `multitasking::info()` (the seed's `getpid`/`getuid`/`getgid`/`getcwd`
//! plus host, CPUs and memory).
//!
//! Text for people (memory in GiB), or `--json` with every field in bytes.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Result;

use crate::args::InfoArgs;

/// Prints the info.
pub(crate) fn main(args: InfoArgs) -> Result<ExitCode> {
    let info = multitasking::info();
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &info)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let limit = info
        .memory_limit
        .map_or_else(|| "no limit".to_string(), |l| format!("limit {}", gib(l)));
    writeln!(out, "pid     {}", info.pid)?;
    writeln!(out, "uid     {}", info.uid)?;
    writeln!(out, "gid     {}", info.gid)?;
    writeln!(out, "cwd     {}", info.cwd)?;
    writeln!(out, "host    {}", info.host)?;
    writeln!(
        out,
        "cpus    {} online, {} usable",
        info.cpus_online, info.cpus_usable
    )?;
    writeln!(
        out,
        "memory  {} total, {} available, {limit}",
        gib(info.memory_total),
        gib(info.memory_available)
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `bytes` in GiB with one decimal.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn gib_rounds_to_one_decimal() {
        assert_eq!(super::gib(3 << 29), "1.5 GiB");
    }
}
