//! `multitask worker`: join a cluster queue and run its tasks in worker
//! processes of this binary until SIGINT or SIGTERM, which drain: running
//! tasks finish and are written back, no new ones are fetched.
//!
//! It serves the tasks `--tasks` names, by default all but `run_shell`,
//! which runs only with `--allow-shell`: a worker runs what anyone who can
//! write to the queue asks of it. With a key (`--key-file`, or
//! `MULTITASK_CLUSTER_KEY`) it takes only tasks signed with it; without,
//! it says once that it takes unsigned ones.

use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use multitasking::cluster::{StopHandle, Worker};

use crate::args::WorkerArgs;
use crate::term;

/// The running worker's stop handle, for the signal handler.
pub(crate) static DRAIN: OnceLock<StopHandle> = OnceLock::new();

/// Serves the queue until a signal drains it.
pub(crate) fn main(args: WorkerArgs) -> Result<ExitCode> {
    let mut b = Worker::builder(&args.broker);
    if let Some(q) = &args.queue {
        b = b.queue(q.clone());
    }
    if let Some(n) = args.concurrency {
        b = b.concurrency(usize::from(n));
    }
    if let Some(s) = args.visibility {
        b = b.visibility_timeout(std::time::Duration::from_secs_f64(s));
    }
    if let Some(tasks) = &args.tasks {
        b = b.allow(tasks.iter().cloned());
    }
    b = b.allow_dangerous(args.allow_shell);
    b = b
        .measure_usage(args.measure_usage)
        .prefetch(args.prefetch)
        .publish_spans(!args.no_spans);
    let keys = queue_keys(args.key_file.as_deref())?;
    if keys.is_empty() {
        term::note(
            "this worker accepts unsigned tasks: anyone who can write to the queue can run them; \
             give it a key with --key-file or MULTITASK_CLUSTER_KEY",
        );
    }
    b = b.keys(keys);
    let worker = b
        .build()
        .with_context(|| format!("joining {}", multitasking::cluster::redact(&args.broker)))?;
    let _ = DRAIN.set(worker.stop_handle());
    term::note(format!(
        "worker {} serving {} (Ctrl-C or SIGTERM drains)",
        worker.consumer(),
        multitasking::cluster::redact(&args.broker)
    ));
    worker.run()?;
    term::note("drained: every running task finished");
    Ok(ExitCode::SUCCESS)
}

/// The queue's keys: from `key_file` (one per line), else from
/// MULTITASK_CLUSTER_KEY; none for an unsigned queue. A key file that holds
/// no key is an error.
pub(crate) fn queue_keys(key_file: Option<&std::path::Path>) -> Result<Vec<Vec<u8>>> {
    let Some(path) = key_file else {
        return Ok(multitasking::cluster::keys_from_env());
    };
    let keys = multitasking::cluster::parse_keys(
        &std::fs::read_to_string(path)
            .with_context(|| format!("reading the key file {}", path.display()))?,
    );
    if keys.is_empty() {
        anyhow::bail!("the key file holds no key: give it one per line (openssl rand -hex 32)");
    }
    Ok(keys)
}
