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
    let shown = multitasking::cluster::redact(&url);
    if let Some(entry) = &args.requeue {
        let keys = crate::cmd::worker::queue_keys(args.key_file.as_deref())?;
        let expiry = std::time::Duration::from_secs(600);
        return match multitasking::cluster::requeue_dead_letter(&url, entry, &keys, expiry)
            .with_context(|| format!("requeueing dead letter {entry} on {shown}"))?
        {
            Some(task) => {
                println!("requeued dead letter {entry} as task entry {task}");
                Ok(ExitCode::SUCCESS)
            }
            None => anyhow::bail!("{shown} has no dead letter {entry}"),
        };
    }
    if let Some(entry) = &args.discard {
        let found = multitasking::cluster::discard_dead_letter(&url, entry)
            .with_context(|| format!("discarding dead letter {entry} on {shown}"))?;
        if !found {
            anyhow::bail!("{shown} has no dead letter {entry}");
        }
        println!("discarded dead letter {entry}");
        return Ok(ExitCode::SUCCESS);
    }
    let st = multitasking::cluster::status(&url)
        .with_context(|| format!("reading the status of {shown}"))?;
    let mut out = io::stdout().lock();
    if args.json {
        let mut value = serde_json::to_value(&st)?;
        if let Some(n) = args.dead {
            value["dead"] = serde_json::to_value(
                multitasking::cluster::dead_letters(&url, n)
                    .with_context(|| format!("reading the dead letters of {shown}"))?,
            )?;
        }
        serde_json::to_writer_pretty(&mut out, &value)?;
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
                "  {:<40} alive, heartbeat {s:.1} s ago, {} of {} slots busy, {} held",
                w.consumer,
                w.running.unwrap_or(0),
                w.concurrency.unwrap_or(0),
                w.held.unwrap_or(0)
            )?,
            _ => writeln!(out, "  {:<40} gone (no heartbeat)", w.consumer)?,
        }
    }
    if let Some(n) = args.dead {
        let dead = multitasking::cluster::dead_letters(&url, n)
            .with_context(|| format!("reading the dead letters of {shown}"))?;
        writeln!(out, "newest dead letters ({} shown)", dead.len())?;
        for d in &dead {
            let input = d
                .payload_bytes
                .map_or_else(|| "no task entry".to_string(), |b| format!("{b} bytes in"));
            writeln!(
                out,
                "  {}  {}  delivered {}  {input}  by {}\n    {}",
                d.entry, d.task, d.deliveries, d.worker, d.reason
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
