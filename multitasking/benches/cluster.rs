//! Cluster costs on loopback, as users deploy it, side by side in one run,
//! on a redis-server this bench starts on a free port. The workers are
//! separate processes (this bench binary started again, calling
//! `cluster::Worker`, as a program calling `cluster::serve` or `multitask
//! worker` would); the bench process is only the client.
//!
//! 1. end-to-end no-op tasks per second with 2 worker processes (each
//!    running 2 tasks at once on 2 worker processes of a process pool, or
//!    2 threads, and fetching ahead as its default prefetch says): a
//!    `map` of 200k items (automatic chunking: batched submit and fetch),
//!    and 20k single submits (all submitted, then all waited for);
//! 2. single-task round trip (submit, result, repeat): p50 and p99;
//! 3. what the broker did per task during the single submits: commands
//!    (`INFO commandstats`, by command) and bytes in and out;
//!    all unsigned and signed (a shared key: every task and result entry
//!    carries an HMAC-SHA256);
//! 4. the ceiling: `redis-benchmark` XADD on the same server (pipelined
//!    16 deep, and one at a time);
//! 5. Celery on the same Redis (benches/python/celery_bench.py), when
//!    celery is installed;
//! 6. the map, single submits and round trip on a local Redis Cluster of
//!    three masters (`redis+cluster://`), the queue in 1 shard or 3.
//!
//! Each round runs every configuration once, in turn, and the anchors; a
//! figure is the median of the rounds, with the range (min-max).
//!
//! Run: `cargo bench -p multitasking --bench cluster` (`MT_BENCH_ROUNDS`,
//! default 3; `MT_BENCH_ONLY=processes` or `threads` for one configuration;
//! `MT_BENCH_PROFILE=1` adds 30 s of single submits to attach a profiler to
//! (`MT_BENCH_PROFILE=map`: 30 s of maps);
//! `MT_BENCH_PREFETCH=N` sets the workers' prefetch cap).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use multitasking::cluster::Worker;
use multitasking::{ClusterPool, Executor};

#[path = "support/tasks.rs"]
// This bench uses only `noop` of the shared tasks.
#[allow(dead_code)]
mod tasks;

use tasks::noop;

/// Set in a worker process of this bench: `url|processes|key`.
const WORKER_ENV: &str = "MT_BENCH_CLUSTER_WORKER";

/// Tasks each worker runs at once, as `multitask worker --concurrency 2`
/// does: its local pool has 2 processes (or threads), and it fetches ahead
/// as far as its default prefetch says.
const CONCURRENCY: usize = 2;

fn start_redis() -> Option<(Child, u16)> {
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    Some((spawn_redis(port, &[])?, port))
}

/// A redis-server on `port` with `extra` arguments, once it accepts
/// connections (at most 10 s).
fn spawn_redis(port: u16, extra: &[std::ffi::OsString]) -> Option<Child> {
    let mut child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(child)
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

/// Runs this process as a cluster worker of the bench, until killed.
fn serve_as_worker(spec: &str) {
    let mut parts = spec.splitn(3, '|');
    let (url, processes, key) = (
        parts.next().unwrap_or_default(),
        parts.next() == Some("processes"),
        parts.next().unwrap_or_default(),
    );
    let keys: Vec<&str> = if key.is_empty() {
        Vec::new()
    } else {
        vec![key]
    };
    let mut b = Worker::builder(url).concurrency(CONCURRENCY).keys(&keys);
    if let Some(n) = std::env::var("MT_BENCH_PREFETCH")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        b = b.prefetch(n);
    }
    let w = if processes {
        b.pool(multitasking::ProcessPool::new(CONCURRENCY).unwrap())
    } else {
        b.pool(multitasking::ThreadPool::new(CONCURRENCY).unwrap())
    }
    .build()
    .unwrap();
    let _ = w.run();
}

/// Two worker processes of the queue at `url`, alive (heartbeating) when
/// this returns; killed when dropped.
struct Workers(Vec<Child>);

impl Workers {
    fn start(url: &str, processes: bool, key: &str) -> Workers {
        Workers::start_for(url, processes, key, 2)
    }

    /// As `start`, waiting until `alive` consumers heartbeat (a worker has
    /// one per shard of a sharded queue).
    fn start_for(url: &str, processes: bool, key: &str, alive: usize) -> Workers {
        let me = std::env::current_exe().unwrap();
        let kind = if processes { "processes" } else { "threads" };
        let children = (0..2)
            .map(|_| {
                Command::new(&me)
                    .env(WORKER_ENV, format!("{url}|{kind}|{key}"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let workers = Workers(children);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let alive_now = multitasking::cluster::status(url)
                .map(|s| s.workers.iter().filter(|w| w.alive).count())
                .unwrap_or(0);
            if alive_now >= alive {
                return workers;
            }
            assert!(
                Instant::now() < deadline,
                "the worker processes never came up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What one configuration measured in one round.
#[derive(Debug, Clone, Default)]
struct Figures {
    /// No-op `map` items per second.
    map_rate: f64,
    /// Single submits per second, 20k in flight.
    single_rate: f64,
    /// Round trip p50 and p99, ms.
    p50_ms: f64,
    /// Round trip p99, ms.
    p99_ms: f64,
    /// Broker commands per task in the single submits, by command.
    commands: BTreeMap<String, f64>,
    /// Bytes into and out of the broker per task in the single submits.
    bytes_in: f64,
    /// Bytes out of the broker per task.
    bytes_out: f64,
}

/// `INFO` `section` of the broker as (key, value) pairs.
fn info(con: &mut redis::Connection, section: &str) -> Vec<(String, String)> {
    let text: String = redis::cmd("INFO").arg(section).query(con).unwrap();
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Commands by name (calls) and bytes in and out since the last reset.
fn broker_counts(con: &mut redis::Connection) -> (BTreeMap<String, f64>, f64, f64) {
    let mut commands = BTreeMap::new();
    for (k, v) in info(con, "commandstats") {
        let Some(name) = k.strip_prefix("cmdstat_") else {
            continue;
        };
        let calls = v
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|c| c.parse::<f64>().ok())
            .unwrap_or(0.0);
        commands.insert(name.to_string(), calls);
    }
    let stats = info(con, "stats");
    let get = |key: &str| {
        stats
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        commands,
        get("total_net_input_bytes"),
        get("total_net_output_bytes"),
    )
}

/// One configuration, one round: 2 worker processes on process or thread
/// pools, `signed` or not.
fn run_config(port: u16, round: usize, processes: bool, signed: bool) -> Figures {
    let key = if signed { KEY } else { "" };
    let keys: Vec<&str> = if signed { vec![KEY] } else { Vec::new() };
    let url = format!("redis://127.0.0.1:{port}/0?queue=bench-{round}-{processes}-{signed}");
    let _workers = Workers::start(&url, processes, key);
    let mut admin = redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
        .unwrap()
        .get_connection()
        .unwrap();
    let pool = ClusterPool::connect_with(&url, 32)
        .unwrap()
        .with_keys(&keys)
        .unwrap();
    for r in pool.map(noop, 0..1000u64) {
        r.unwrap();
    }
    let profile = std::env::var("MT_BENCH_PROFILE").ok();
    if profile.as_deref() == Some("map") {
        // Maps only, for a profiler: 30 s of them.
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            let sum: u64 = pool.map(noop, 0..200_000u64).map(Result::unwrap).sum();
            assert_eq!(sum, 200_000 * 199_999 / 2);
        }
    } else if profile.is_some() {
        // Single submits only, for a profiler to attach to: 30 s of them.
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            let futs: Vec<_> = (0..20_000u64)
                .map(|i| pool.submit(noop, i).unwrap())
                .collect();
            for f in futs {
                f.result().unwrap();
            }
        }
    }
    let items = 200_000u64;
    let t = Instant::now();
    let sum: u64 = pool.map(noop, 0..items).map(Result::unwrap).sum();
    assert_eq!(sum, items * (items - 1) / 2);
    let map_rate = items as f64 / t.elapsed().as_secs_f64();
    let n = 20_000u64;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut admin)
        .unwrap();
    let t = Instant::now();
    let futs: Vec<_> = (0..n).map(|i| pool.submit(noop, i).unwrap()).collect();
    for f in futs {
        f.result().unwrap();
    }
    let single_rate = n as f64 / t.elapsed().as_secs_f64();
    let (commands, bytes_in, bytes_out) = broker_counts(&mut admin);
    let mut trips: Vec<Duration> = (0..500u64)
        .map(|i| {
            let t = Instant::now();
            pool.submit(noop, i).unwrap().result().unwrap();
            t.elapsed()
        })
        .collect();
    trips.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Figures {
        map_rate,
        single_rate,
        p50_ms: ms(trips[trips.len() / 2]),
        p99_ms: ms(trips[trips.len() * 99 / 100]),
        // The heartbeats and the status polls of the start are in the
        // counts too: a few dozen commands over 20k tasks.
        commands: commands
            .into_iter()
            .map(|(k, v)| (k, v / n as f64))
            .collect(),
        bytes_in: bytes_in / n as f64,
        bytes_out: bytes_out / n as f64,
    }
}

/// Where the bench's Redis Cluster nodes keep their files.
fn cluster_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("mt-bench-cluster-{}", std::process::id()))
}

/// A Redis Cluster of three masters on free ports, created and serving
/// every slot; its processes and the seed's port.
fn start_redis_cluster() -> Option<(Vec<Child>, u16)> {
    let mut nodes = Vec::new();
    let mut ports = Vec::new();
    let dir = cluster_dir();
    for i in 0..3 {
        // Cluster bus ports are the port plus 10000: stay below 55536.
        let port = (0..100).find_map(|_| {
            let p = TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            (p < 55000 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok()).then_some(p)
        })?;
        let d = dir.join(i.to_string());
        std::fs::create_dir_all(&d).ok()?;
        let extra: Vec<std::ffi::OsString> = vec![
            "--cluster-enabled".into(),
            "yes".into(),
            "--cluster-config-file".into(),
            d.join("nodes.conf").into(),
            "--dir".into(),
            d.clone().into(),
        ];
        nodes.push(spawn_redis(port, &extra)?);
        ports.push(port);
    }
    let created = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    if !created.success() {
        return None;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = Command::new("redis-cli")
            .args(["-p", &ports[0].to_string(), "cluster", "info"])
            .output()
            .ok()?;
        if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
            return Some((nodes, ports[0]));
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One round on a queue of `shards` shards on the Redis Cluster at
/// `seed`: (map items/s, single submits/s, round trip p50 in ms).
fn run_sharded(seed: u16, round: usize, processes: bool, shards: usize) -> (f64, f64, f64) {
    let url = format!(
        "redis+cluster://127.0.0.1:{seed}/?queue=bench-rc-{round}-{processes}&shards={shards}"
    );
    let _workers = Workers::start_for(&url, processes, "", 2 * shards);
    let pool = ClusterPool::connect_with(&url, 32).unwrap();
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
    (
        map_rate,
        single_rate,
        trips[trips.len() / 2].as_secs_f64() * 1e3,
    )
}

/// The median of `v` and its range, as `median (min-max)`.
fn spread(mut v: Vec<f64>, digits: usize) -> (f64, String) {
    v.sort_by(f64::total_cmp);
    let median = v[v.len() / 2];
    let text = if v.len() > 1 {
        format!(
            "{median:.digits$} ({:.digits$}-{:.digits$})",
            v[0],
            v[v.len() - 1]
        )
    } else {
        format!("{median:.digits$}")
    };
    (median, text)
}

fn main() {
    multitasking::init();
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        serve_as_worker(&spec);
        return;
    }
    let rounds: usize = std::env::var("MT_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    let Some((mut redis, port)) = start_redis() else {
        println!("cluster bench skipped: no redis-server could be started");
        return;
    };
    // MT_BENCH_ONLY=processes|threads runs the unsigned configuration of
    // that pool alone (to profile it).
    let only = std::env::var("MT_BENCH_ONLY").ok();
    let configs: Vec<(bool, bool)> = [(true, false), (false, false), (true, true), (false, true)]
        .into_iter()
        .filter(|&(processes, signed)| match only.as_deref() {
            Some("processes") => processes && !signed,
            Some("threads") => !processes && !signed,
            _ => true,
        })
        .collect();
    let mut figures: Vec<Vec<Figures>> = vec![Vec::new(); configs.len()];
    let mut ceiling: Vec<(f64, f64)> = Vec::new();
    let mut celery_rows: Vec<(f64, f64)> = Vec::new();
    for round in 0..rounds {
        for (i, &(processes, signed)) in configs.iter().enumerate() {
            figures[i].push(run_config(port, round, processes, signed));
        }
        if let (Some(piped), Some(single)) = (redis_benchmark(port, 16), redis_benchmark(port, 1)) {
            ceiling.push((piped, single));
        }
        let rows = celery(port);
        let fig = |name: &str, key: &str| {
            rows.iter()
                .find(|r| r["name"] == name)
                .and_then(|r| r[key].as_f64())
        };
        if let (Some(tps), Some(p50)) = (
            fig("celery_throughput", "tasks_per_s"),
            fig("celery_roundtrip", "p50_ms"),
        ) {
            celery_rows.push((tps, p50));
        }
    }
    println!(
        "# cluster on loopback Redis: 2 worker processes, each running {CONCURRENCY} tasks at \
         once and fetching ahead (default prefetch), the client in this process; median \
         (min-max) of {rounds} rounds\n"
    );
    println!("| workers run tasks on | no-op map, 200k items (M items/s) | single submits, 20000 in flight (tasks/s) | round trip p50 (ms) | p99 (ms) |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut medians = Vec::new();
    for (i, &(processes, signed)) in configs.iter().enumerate() {
        let f = &figures[i];
        let (map, map_t) = spread(f.iter().map(|x| x.map_rate / 1e6).collect(), 2);
        let (single, single_t) = spread(f.iter().map(|x| x.single_rate).collect(), 0);
        let (p50, p50_t) = spread(f.iter().map(|x| x.p50_ms).collect(), 3);
        let (_, p99_t) = spread(f.iter().map(|x| x.p99_ms).collect(), 3);
        medians.push((map, single, p50));
        println!(
            "| {}{} | {map_t} | {single_t} | {p50_t} | {p99_t} |",
            if processes {
                "process pools (2 processes each)"
            } else {
                "thread pools (2 threads each)"
            },
            if signed { ", signed" } else { "" },
        );
    }
    println!(
        "
What the broker did per task during the single submits (median of the rounds):
"
    );
    println!("| workers run tasks on | commands per task | by command | bytes in / out per task |");
    println!("| --- | ---: | --- | ---: |");
    for (i, &(processes, signed)) in configs.iter().enumerate() {
        let f = &figures[i];
        let mut names: Vec<&String> = f.iter().flat_map(|x| x.commands.keys()).collect();
        names.sort();
        names.dedup();
        let mut by = Vec::new();
        let mut total = 0.0;
        for name in names {
            let (m, _) = spread(
                f.iter()
                    .map(|x| x.commands.get(name).copied().unwrap_or(0.0))
                    .collect(),
                3,
            );
            total += m;
            if m >= 0.001 {
                by.push(format!("{name} {m:.3}"));
            }
        }
        let (bin, _) = spread(f.iter().map(|x| x.bytes_in).collect(), 0);
        let (bout, _) = spread(f.iter().map(|x| x.bytes_out).collect(), 0);
        println!(
            "| {}{} | {total:.2} | {} | {bin:.0} / {bout:.0} |",
            if processes {
                "process pools"
            } else {
                "thread pools"
            },
            if signed { ", signed" } else { "" },
            by.join(", ")
        );
    }
    println!(
        "
| ceiling and baseline, same rounds | median (min-max) |"
    );
    println!("| --- | ---: |");
    if ceiling.is_empty() {
        println!("| redis-benchmark | not run (not installed) |");
    } else {
        let (_, piped) = spread(ceiling.iter().map(|c| c.0).collect(), 0);
        let (_, single) = spread(ceiling.iter().map(|c| c.1).collect(), 0);
        println!("| redis-benchmark XADD, pipelined 16 (ceiling), ops/s | {piped} |");
        println!("| redis-benchmark XADD, one at a time, ops/s | {single} |");
    }
    if celery_rows.is_empty() {
        println!("| Celery | not run (pip install celery redis) |");
    } else {
        let (tps, tps_t) = spread(celery_rows.iter().map(|c| c.0).collect(), 0);
        let (p50, p50_t) = spread(celery_rows.iter().map(|c| c.1).collect(), 3);
        println!("| Celery no-op tasks/s (delay + get, 2 prefork workers) | {tps_t} |");
        println!("| Celery round trip p50, ms | {p50_t} |");
        let (map, single, our_p50) = medians[0];
        println!(
            "\nmultitask (process pools, unsigned) / Celery, medians: {:.0}x the throughput \
             (single submits), {:.0}x (map); round trip {:.1}x faster",
            single / tps,
            map * 1e6 / tps,
            p50 / our_p50
        );
    }
    let _ = redis.kill();
    let _ = redis.wait();
    if only.is_some() {
        return;
    }
    let Some((mut nodes, seed)) = start_redis_cluster() else {
        println!("\nRedis Cluster: not run (redis-server in cluster mode or redis-cli missing)");
        return;
    };
    let layouts = [(true, 1), (true, 3), (false, 1), (false, 3)];
    let mut sharded: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); layouts.len()];
    for round in 0..rounds {
        for (i, &(processes, shards)) in layouts.iter().enumerate() {
            sharded[i].push(run_sharded(seed, round, processes, shards));
        }
    }
    println!(
        "\n# the same on a local Redis Cluster of 3 masters (redis+cluster://), one queue shard \
         per master or one in all; median (min-max) of {rounds} rounds\n"
    );
    println!("| workers run tasks on | shards | no-op map (M items/s) | single submits (tasks/s) | round trip p50 (ms) |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (i, &(processes, shards)) in layouts.iter().enumerate() {
        let f = &sharded[i];
        let (_, map_t) = spread(f.iter().map(|x| x.0 / 1e6).collect(), 2);
        let (_, single_t) = spread(f.iter().map(|x| x.1).collect(), 0);
        let (_, p50_t) = spread(f.iter().map(|x| x.2).collect(), 3);
        println!(
            "| {} | {shards} | {map_t} | {single_t} | {p50_t} |",
            if processes {
                "process pools"
            } else {
                "thread pools"
            }
        );
    }
    for n in &mut nodes {
        let _ = n.kill();
        let _ = n.wait();
    }
    let _ = std::fs::remove_dir_all(cluster_dir());
}
