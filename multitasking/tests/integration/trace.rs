//! Tracing on real pools: one event per task, on the worker that ran it,
//! with times that add up; and the exporters on a real trace.

use std::time::Duration;

use multitasking::trace::{chrome, report::Report, svg, Tracer};
use multitasking::{Executor, ProcessPool, ThreadPool};

use crate::tasks::{flaky, hog, sleep_ms};

fn check(trace: &multitasking::trace::Trace, tasks: usize, workers: usize) {
    assert_eq!(trace.events.len(), tasks);
    let t = trace.trimmed();
    for (w, busy) in t.busy_by_worker() {
        assert!(
            busy <= t.wall,
            "worker {w} busy {busy:?} over wall {:?}",
            t.wall
        );
    }
    assert!(t.workers().len() <= workers);
    for e in &t.events {
        assert!(e.submitted <= e.started && e.started <= e.finished, "{e:?}");
    }
    let json: serde_json::Value = serde_json::from_str(&chrome::to_chrome_json(trace)).unwrap();
    assert_eq!(
        json["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == "X")
            .count(),
        tasks
    );
    roxmltree::Document::parse(&svg::timeline_svg(trace)).expect("timeline SVG parses");
}

#[test]
fn a_thread_pool_traces_each_task_on_its_thread() {
    let tracer = Tracer::new();
    let pool = ThreadPool::builder()
        .max_workers(2)
        .thread_name_prefix("traced")
        .tracer(tracer.clone())
        .build()
        .unwrap();
    let out: Vec<_> = pool.map(sleep_ms, vec![20u64; 6]).chunksize(1).collect();
    assert!(out.iter().all(Result::is_ok));
    let trace = tracer.snapshot();
    check(&trace, 6, 2);
    assert!(trace.events.iter().all(|e| e.worker.starts_with("traced-")));
    // Each task's own CPU time (a sleep uses next to none) and its input.
    for e in &trace.events {
        let cpu = e.cpu.expect("a thread task's CPU time");
        assert!(cpu < e.run_time() / 2, "a 20 ms sleep used {cpu:?} of CPU");
        assert_eq!(e.input.as_deref(), Some("20"));
    }
    // The report agrees with the trace it came from. (That two workers
    // overlap is the pool's promise, tested with barriers in its unit
    // tests: a timing here failed on a loaded machine.)
    let busy = trace.trimmed().busy();
    let r = Report::from_trace(&trace, Some(busy), 2);
    assert_eq!((r.tasks, r.failed, r.workers), (6, 0, 2));
    assert!(r.utilisation > 0.0 && r.utilisation <= 1.0 + 1e-9, "{r:?}");
    let overlap = r.busy_s / r.wall_s;
    assert!((r.speedup.unwrap() - overlap).abs() < 1e-9, "{r:?}");
}

#[test]
fn a_process_pool_traces_pids_rss_and_failures() {
    let tracer = Tracer::new();
    let pool = ProcessPool::builder()
        .max_workers(2)
        .tracer(tracer.clone())
        .build()
        .unwrap();
    let pids = pool.worker_pids();
    let out: Vec<_> = pool.map(flaky, 0..10u64).chunksize(1).collect();
    assert_eq!(out.iter().filter(|r| r.is_err()).count(), 1);
    let trace = tracer.snapshot();
    check(&trace, 10, 2);
    for e in &trace.events {
        assert!(pids.contains(&e.pid), "{e:?}");
        assert_eq!(e.worker, format!("pid {}", e.pid));
        assert!(e.peak_rss.is_some_and(|r| r > 0));
    }
    // A chunk whose item panicked still ran: the chunk is ok; the item's
    // error is in the map's output.
    assert!(trace.events.iter().all(|e| e.ok));
}

/// Each task's own peak RSS, CPU time and input, not its worker's: tasks of
/// 200, 5 and 1 MiB on one worker were all reported at its 202 MiB peak.
#[test]
fn a_process_task_reports_its_own_memory_and_cpu() {
    let tracer = Tracer::new();
    let pool = ProcessPool::builder()
        .max_workers(1)
        .tracer(tracer.clone())
        .build()
        .unwrap();
    for mb in [200usize, 5, 1] {
        crate::conformance::get(&pool.submit(hog, (mb, 0)).unwrap()).unwrap();
    }
    crate::conformance::get(&pool.submit(sleep_ms, 50).unwrap()).unwrap();
    let trace = tracer.snapshot();
    assert_eq!(trace.events.len(), 4);
    let mib = |e: &multitasking::trace::TaskEvent| e.peak_rss.expect("a peak") >> 20;
    let (big, mid, small, sleep) = (
        &trace.events[0],
        &trace.events[1],
        &trace.events[2],
        &trace.events[3],
    );
    assert!(mib(big) >= 200, "the 200 MiB task: {} MiB", mib(big));
    assert!(mib(mid) < 100, "the 5 MiB task after it: {} MiB", mib(mid));
    assert!(mib(small) < 100, "the 1 MiB task: {} MiB", mib(small));
    assert_eq!(big.input.as_deref(), Some("[200,0]"));
    // Touching 200 MiB takes CPU; a 50 ms sleep takes next to none.
    assert!(big.cpu.expect("cpu") > Duration::ZERO);
    assert!(
        sleep.cpu.expect("cpu") < Duration::from_millis(25),
        "{sleep:?}"
    );
}

#[test]
fn a_serial_executor_traces_on_one_worker() {
    let tracer = Tracer::new();
    let ex = multitasking::SerialExecutor::new().with_tracer(tracer.clone());
    let out: Vec<_> = ex.map(flaky, 0..5u64).chunksize(1).collect();
    assert_eq!(out.iter().filter(|r| r.is_err()).count(), 1);
    let trace = tracer.snapshot();
    check(&trace, 5, 1);
    assert_eq!(trace.workers(), vec!["serial".to_string()]);
}

/// With the counting allocator installed (this test binary installs it),
/// each task's allocations are counted on the thread that ran it, in a
/// thread pool, a serial executor and a worker process alike.
#[test]
fn each_task_counts_what_it_allocated_on_its_thread() {
    let tracer = Tracer::new();
    let threads = ThreadPool::builder()
        .max_workers(2)
        .tracer(tracer.clone())
        .build()
        .unwrap();
    let procs = ProcessPool::builder()
        .max_workers(1)
        .tracer(tracer.clone())
        .build()
        .unwrap();
    let serial = multitasking::SerialExecutor::new().with_tracer(tracer.clone());
    for mb in [16usize, 1] {
        crate::conformance::get(&threads.submit(hog, (mb, 0)).unwrap()).unwrap();
        crate::conformance::get(&procs.submit(hog, (mb, 0)).unwrap()).unwrap();
        crate::conformance::get(&serial.submit(hog, (mb, 0)).unwrap()).unwrap();
    }
    crate::conformance::get(&threads.submit(sleep_ms, 1).unwrap()).unwrap();
    let trace = tracer.snapshot();
    assert_eq!(trace.events.len(), 7);
    // In submit order: 16 MiB on each executor, then 1 MiB on each.
    for (i, e) in trace.events[..6].iter().enumerate() {
        let bytes = e.allocated.expect("counted");
        let mb = if i < 3 { 16 } else { 1 };
        assert!(
            bytes >= mb << 20,
            "{} allocated {bytes} bytes: {e:?}",
            e.worker
        );
        assert!(
            bytes < (mb << 20) + (4 << 20),
            "{} allocated {bytes} bytes: {e:?}",
            e.worker
        );
    }
    let sleep = &trace.events[6];
    assert!(sleep.allocated.expect("counted") < 1 << 20, "{sleep:?}");
    let report = Report::from_trace(&trace, None, 3);
    assert!(report.allocated.unwrap() >= 51 << 20, "{report:?}");
    assert!(report.to_markdown().contains("bytes the tasks allocated"));
    assert!(chrome::to_chrome_json(&trace).contains("\"allocated\""));
}
