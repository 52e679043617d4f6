//! Cluster costs on loopback, side by side in one run, on a redis-server
//! this bench starts on a free port:
//!
//! 1. end-to-end no-op tasks per second with 2 workers (16 slots, 2 worker
//!    processes each): a `map` of 200k
//!    items (automatic chunking: batched submit and fetch), and 20k single
//!    submits (all submitted, then all waited for);
//! 2. single-task round trip (submit, result, repeat): p50 and p99;
//!    both unsigned and signed (a shared key: every task and result entry
//!    carries an HMAC-SHA256), for the cost of signing;
//! 3. the ceiling: `redis-benchmark` XADD on the same server (pipelined
//!    16 deep, and one at a time);
//! 4. Celery on the same Redis (benches/python/celery_bench.py), when
//!    celery is installed.
//!
//! Run: `cargo bench -p multitasking --bench cluster`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use multitasking::cluster::{StopHandle, Worker};
use multitasking::{ClusterPool, Executor};

#[path = "support/tasks.rs"]
// This bench uses only `noop` of the shared tasks.
#[allow(dead_code)]
mod tasks;

use tasks::noop;

fn start_redis() -> Option<(Child, u16)> {
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((child, port))
}

fn redis_benchmark(port: u16, pipeline: u32) -> Option<f64> {
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-q",
            "-n",
            "100000",
            "-P",
            &pipeline.to_string(),
        ])
        .args(["XADD", "bench:ceiling", "*", "f", "v"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "XADD bench:ceiling * f v: 123456.78 requests per second, p50=..."
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("requests per second"))?;
    let tail = line.rsplit_once(": ")?.1;
    tail.split_whitespace().next()?.parse().ok()
}

fn celery(port: u16) -> Vec<serde_json::Value> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../benches/python/celery_bench.py"
    );
    let Ok(out) = Command::new("python3")
        .args([script, "--broker", &format!("redis://127.0.0.1:{port}/1")])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The key of the signed configurations.
const KEY: &str = "the bench's shared key, 32 bytes";

/// One configuration: 2 workers of 16 slots on process or thread pools,
/// `signed` or not; (map items/s, single-submit tasks/s, round trip p50,
/// p99).
fn run_config(port: u16, processes: bool, signed: bool) -> (f64, f64, Duration, Duration) {
    let keys: Vec<&str> = if signed { vec![KEY] } else { Vec::new() };
    let url = format!("redis://127.0.0.1:{port}/0?queue=bench-{processes}-{signed}");
    let mut stops: Vec<StopHandle> = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..2 {
        // 16 fetch slots feeding 2 workers: a worker holds more tasks than
        // it runs at once so that fetches, started notices and results
        // travel in batches.
        let b = Worker::builder(&url).concurrency(16).keys(&keys);
        let w = if processes {
            b.pool(multitasking::ProcessPool::new(2).unwrap())
        } else {
            b.pool(multitasking::ThreadPool::new(2).unwrap())
        }
        .build()
        .unwrap();
        stops.push(w.stop_handle());
        threads.push(std::thread::spawn(move || w.run()));
    }
    let pool = ClusterPool::connect_with(&url, 32)
        .unwrap()
        .with_keys(&keys)
        .unwrap();
    for r in pool.map(noop, 0..1000u64) {
        r.unwrap();
    }
    let items = 200_000u64;
    let t = Instant::now();
    let sum: u64 = pool.map(noop, 0..items).map(Result::unwrap).sum();
    assert_eq!(sum, items * (items - 1) / 2);
    let map_rate = items as f64 / t.elapsed().as_secs_f64();
    let n = 20_000u64;
    let t = Instant::now();
    let futs: Vec<_> = (0..n).map(|i| pool.submit(noop, i).unwrap()).collect();
    for f in futs {
        f.result().unwrap();
    }
    let single_rate = n as f64 / t.elapsed().as_secs_f64();
    let mut trips: Vec<Duration> = (0..500u64)
        .map(|i| {
            let t = Instant::now();
            pool.submit(noop, i).unwrap().result().unwrap();
            t.elapsed()
        })
        .collect();
    trips.sort();
    drop(pool);
    for s in &stops {
        s.stop();
    }
    for t in threads {
        let _ = t.join();
    }
    (
        map_rate,
        single_rate,
        trips[trips.len() / 2],
        trips[trips.len() * 99 / 100],
    )
}

fn main() {
    multitasking::init();
    let Some((mut redis, port)) = start_redis() else {
        println!("cluster bench skipped: no redis-server could be started");
        return;
    };
    println!("# cluster on loopback Redis: 2 workers of 16 slots each\n");
    println!("| workers run tasks on | no-op map, 200k items | single submits, 20000 in flight | round trip p50 / p99 |");
    println!("| --- | ---: | ---: | ---: |");
    let mut single_rate = 0.0;
    let mut p50 = Duration::ZERO;
    let mut map_rate = 0.0;
    for (processes, signed) in [(true, false), (false, false), (true, true), (false, true)] {
        let r = run_config(port, processes, signed);
        println!(
            "| {}{} | {:.0} items/s | {:.0} tasks/s | {:.3} / {:.3} ms |",
            if processes {
                "process pools (2 processes each)"
            } else {
                "thread pools (2 threads each)"
            },
            if signed { ", signed" } else { "" },
            r.0,
            r.1,
            r.2.as_secs_f64() * 1e3,
            r.3.as_secs_f64() * 1e3
        );
        if processes && !signed {
            (map_rate, single_rate, p50) = (r.0, r.1, r.2);
        }
    }
    println!("\n| ceiling and baseline | value |");
    println!("| --- | ---: |");
    match (redis_benchmark(port, 16), redis_benchmark(port, 1)) {
        (Some(piped), Some(single)) => {
            println!("| redis-benchmark XADD, pipelined 16 (ceiling) | {piped:.0} ops/s |");
            println!("| redis-benchmark XADD, one at a time | {single:.0} ops/s |");
        }
        _ => println!("| redis-benchmark | not run (not installed) |"),
    }
    let rows = celery(port);
    let fig = |name: &str, key: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r[key].as_f64())
    };
    match (
        fig("celery_throughput", "tasks_per_s"),
        fig("celery_roundtrip", "p50_ms"),
    ) {
        (Some(tps), Some(p50_ms)) => {
            println!(
                "| Celery no-op tasks/s (delay + get, 2 prefork workers) | {tps:.0} tasks/s |"
            );
            println!("| Celery round trip p50 | {p50_ms:.3} ms |");
            println!(
                "\nmultitask / Celery: {:.1}x the throughput (single submits), {:.1}x (map); round trip {:.1}x faster",
                single_rate / tps,
                map_rate / tps,
                p50_ms / (p50.as_secs_f64() * 1e3)
            );
        }
        _ => println!("| Celery | not run (pip install celery redis) |"),
    }
    let _ = redis.kill();
    let _ = redis.wait();
}
