//! `multitask status`: a cluster queue as the broker sees it: workers and
//! their heartbeats, queue depth, tasks in flight, dead letters.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::args::StatusArgs;

/// Prints the status.
pub(crate) fn main(args: StatusArgs) -> Result<ExitCode> {
    let mut url = args.broker.clone();
    if let Some(q) = &args.queue {
        let base = url
            .split_once('?')
            .map_or(url.as_str(), |(b, _)| b)
            .to_string();
        url = format!("{base}?queue={q}");
    }
    let st = multitasking::cluster::status(&url).with_context(|| {
        format!(
            "reading the status of {}",
            multitasking::cluster::redact(&url)
        )
    })?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &st)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "queue         {}", st.queue)?;
    writeln!(out, "queue depth   {}", st.queue_depth)?;
    writeln!(out, "in flight     {}", st.in_flight)?;
    writeln!(out, "dead letters  {}", st.dead_letters)?;
    let alive = st.workers.iter().filter(|w| w.alive).count();
    writeln!(
        out,
        "workers       {alive} alive, {} gone",
        st.workers.len() - alive
    )?;
    for w in &st.workers {
        match (w.alive, w.last_heartbeat_s) {
            (true, Some(s)) => writeln!(
                out,
                "  {:<40} alive, heartbeat {s:.1} s ago, {} of {} slots busy",
                w.consumer,
                w.running.unwrap_or(0),
                w.concurrency.unwrap_or(0)
            )?,
            _ => writeln!(out, "  {:<40} gone (no heartbeat)", w.consumer)?,
        }
    }
    Ok(ExitCode::SUCCESS)
}
