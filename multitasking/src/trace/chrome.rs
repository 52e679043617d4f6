//! Chrome trace export: JSON that opens in Perfetto (ui.perfetto.dev) or
//! `chrome://tracing`.
//!
//! Each host is a process track and each worker a thread track in it
//! (named by metadata events); each task is one complete ("X") slice with
//! its id, queue wait, outcome and peak RSS as arguments.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::trace::Trace;

/// The trace as Chrome trace-event JSON.
pub fn to_chrome_json(trace: &Trace) -> String {
    let mut hosts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut workers: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for e in &trace.events {
        let n = hosts.len() as u64 + 1;
        hosts.entry(e.host.as_str()).or_insert(n);
        let n = workers.len() as u64 + 1;
        workers
            .entry((e.host.as_str(), e.worker.as_str()))
            .or_insert(n);
    }
    let mut events: Vec<Value> =
        Vec::with_capacity(trace.events.len() + hosts.len() + workers.len());
    for (host, pid) in &hosts {
        events.push(
            json!({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
            "args": {"name": host}}),
        );
    }
    for ((host, worker), tid) in &workers {
        events.push(
            json!({"ph": "M", "name": "thread_name", "pid": hosts[host], "tid": tid,
            "args": {"name": worker}}),
        );
    }
    for e in &trace.events {
        let pid = hosts[e.host.as_str()];
        let tid = workers[&(e.host.as_str(), e.worker.as_str())];
        events.push(json!({
            "ph": "X",
            "name": e.task,
            "cat": if e.ok { "task" } else { "failed" },
            "pid": pid,
            "tid": tid,
            "ts": e.started.as_secs_f64() * 1e6,
            "dur": e.run_time().as_secs_f64() * 1e6,
            "args": {
                "id": e.id,
                "queue_wait_us": e.queue_wait().as_secs_f64() * 1e6,
                "ok": e.ok,
                "worker_pid": e.pid,
                "peak_rss": e.peak_rss,
                "cpu_us": e.cpu.map(|c| c.as_secs_f64() * 1e6),
                "input": e.input,
                "allocated": e.allocated,
            },
        }));
    }
    json!({"traceEvents": events, "displayTimeUnit": "ms"}).to_string()
}
