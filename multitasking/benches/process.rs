//! Process pool costs, side by side in one run:
//!
//! 1. round trip of one small task (submit, result, repeat) on a
//!    `ProcessPool`, against a raw socketpair ping-pong between two
//!    processes (the physical limit; measured both parking in `read` and
//!    spinning), and against Python's `ProcessPoolExecutor` and
//!    `multiprocessing.Pool.apply_async` (benches/python/executors.py).
//! 2. many small tasks in flight at once: 100k submits, then every
//!    result, per task (what a cluster worker's local pool sees).
//! 3. a no-op `map` over 1M items with automatic chunking, in items/s,
//!    against `multiprocessing.Pool.map`.
//! 4. pool start to first result with 2 workers, against Python's pool
//!    start with fork and spawn.
//! 5. the seed's prime check on eight primes near 4e16, serial against 2
//!    worker processes.
//! 6. what an idle pool costs: the CPU its processes use in 2 s of idling.
//!
//! The round trips alternate, round by round (`MT_BENCH_ROUNDS`, default
//! 5): a figure is the median, with the range.
//!
//! Run: `cargo bench -p multitasking --bench process`. Ratios are printed as
//! `{:.2}x`.

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use multitasking::{Executor, ProcessPool};

#[path = "support/tasks.rs"]
mod tasks;

use tasks::{is_prime, noop, BIG_PRIMES};

const ECHO_ENV: &str = "MULTITASK_BENCH_ECHO";

/// The echo side of the raw ping-pong: reads 8 bytes, writes them back.
fn echo_child(spin: bool) -> ! {
    use std::os::fd::FromRawFd;
    // SAFETY: the parent passed the socket as fd 3 for this process alone.
    let mut s = unsafe { UnixStream::from_raw_fd(3) };
    s.set_nonblocking(spin).unwrap();
    let mut buf = [0u8; 8];
    loop {
        if read_exact(&mut s, &mut buf, spin).is_err() {
            std::process::exit(0);
        }
        if s.write_all(&buf).is_err() {
            std::process::exit(0);
        }
    }
}

fn read_exact(s: &mut UnixStream, buf: &mut [u8], spin: bool) -> std::io::Result<()> {
    if !spin {
        return s.read_exact(buf);
    }
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Raw round trips over a socketpair with a child process; µs per trip.
fn raw_ping_pong(n: usize, spin: bool) -> f64 {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(ECHO_ENV, if spin { "spin" } else { "block" });
    // SAFETY: dup2 is async-signal-safe; nothing else runs before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(theirs);
    ours.set_nonblocking(spin).unwrap();
    let mut buf = [0u8; 8];
    let mut trip = || {
        ours.write_all(&7u64.to_le_bytes()).unwrap();
        read_exact(&mut ours, &mut buf, spin).unwrap();
    };
    for _ in 0..1000 {
        trip();
    }
    let t = Instant::now();
    for _ in 0..n {
        trip();
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    drop(ours);
    let _ = child.wait();
    us
}

fn python(only: &str) -> Vec<serde_json::Value> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../benches/python/executors.py"
    );
    let Ok(out) = Command::new("python3")
        .args([script, "--only", only])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn py_figure(rows: &[serde_json::Value], name: &str, key: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.get("name").and_then(|n| n.as_str()) == Some(name))
        .and_then(|r| r.get(key))
        .and_then(|v| v.as_f64())
}

fn show(v: Option<f64>, unit: &str) -> String {
    v.map_or("not run".to_string(), |v| format!("{v:.2} {unit}"))
}

/// Rounds of the interleaved measurements (`MT_BENCH_ROUNDS`, default 5).
fn rounds() -> usize {
    std::env::var("MT_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5)
        .max(1)
}

/// The median of `v` and the text `median (min-max)`.
fn spread(mut v: Vec<f64>, digits: usize) -> (f64, String) {
    v.sort_by(f64::total_cmp);
    let median = v[v.len() / 2];
    let text = format!(
        "{median:.digits$} ({:.digits$}-{:.digits$})",
        v[0],
        v[v.len() - 1]
    );
    (median, text)
}

/// CPU time (user + system) of this process and its children so far.
fn tree_cpu() -> Duration {
    let ticks = |pid: &str| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // After the command's closing parenthesis: fields 3.. (utime is 14).
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        get(11) + get(12)
    };
    let mut pids = vec![std::process::id().to_string()];
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            pids.extend(children.split_whitespace().map(str::to_string));
        }
    }
    // Clock ticks are 100 a second on Linux.
    Duration::from_millis(pids.iter().map(|p| ticks(p)).sum::<u64>() * 10)
}

fn main() {
    if let Ok(mode) = std::env::var(ECHO_ENV) {
        echo_child(mode == "spin");
    }
    multitasking::init();
    println!(
        "# process pool costs ({} usable CPUs)\n",
        multitasking::usable_cpus()
    );

    // 1 and 2: the pool's round trips, the raw ping-pongs and the
    // tasks in flight in turn, each round.
    let rounds = rounds();
    let n = 20_000;
    let pool = ProcessPool::new(2).unwrap();
    for i in 0..1000 {
        black_box(pool.submit(noop, i).unwrap().result().unwrap());
    }
    let (mut ours, mut raw_block, mut raw_spin) = (Vec::new(), Vec::new(), Vec::new());
    let mut batched = Vec::new();
    let in_flight = 100_000u64;
    for _ in 0..rounds {
        let t = Instant::now();
        let futures: Vec<_> = (0..in_flight)
            .map(|i| pool.submit(noop, i).unwrap())
            .collect();
        let sum: u64 = futures.into_iter().map(|f| f.result().unwrap()).sum();
        assert_eq!(sum, in_flight * (in_flight - 1) / 2);
        batched.push(t.elapsed().as_secs_f64() * 1e6 / in_flight as f64);
        let t = Instant::now();
        for i in 0..n as u64 {
            black_box(pool.submit(noop, i).unwrap().result().unwrap());
        }
        ours.push(t.elapsed().as_secs_f64() * 1e6 / n as f64);
        raw_block.push(raw_ping_pong(n, false));
        raw_spin.push(raw_ping_pong(n, true));
    }
    let (ours_m, ours_t) = spread(ours, 2);
    let (block_m, block_t) = spread(raw_block, 2);
    let (spin_m, spin_t) = spread(raw_spin, 2);
    let (_, batched_t) = spread(batched, 2);
    let py = python("process_roundtrip,apply_async_roundtrip,pool_map,pool_start,executor_map");
    println!("## round trip of one small task (submit, result, repeat), median (min-max) of {rounds} rounds\n");
    println!("| contender | µs per round trip | vs multitask |");
    println!("| --- | ---: | ---: |");
    println!("| multitask ProcessPool submit + result | {ours_t} | 1.00x |");
    println!(
        "| raw socketpair ping-pong, parking in read | {block_t} | {:.2}x |",
        block_m / ours_m
    );
    println!(
        "| raw socketpair ping-pong, spinning | {spin_t} | {:.2}x |",
        spin_m / ours_m
    );
    for (label, name) in [
        (
            "Python ProcessPoolExecutor submit + result",
            "process_roundtrip",
        ),
        (
            "Python multiprocessing.Pool.apply_async + get",
            "apply_async_roundtrip",
        ),
    ] {
        match py_figure(&py, name, "per_task_us") {
            Some(us) => println!("| {label} | {us:.2} (one run) | {:.2}x |", us / ours_m),
            None => println!("| {label} | not run | |"),
        }
    }

    println!(
        "\n## {in_flight} small tasks in flight: submit all, then every result, median (min-max) of {rounds} rounds\n"
    );
    println!("| contender | µs per task |");
    println!("| --- | ---: |");
    println!("| multitask ProcessPool submit, then result | {batched_t} |");

    // 3. map over 1M no-op items.
    let items = 1_000_000u64;
    let rates: Vec<f64> = (0..rounds.max(5))
        .map(|_| {
            let t = Instant::now();
            let s: u64 = pool.map(noop, 0..items).map(Result::unwrap).sum();
            assert_eq!(s, items * (items - 1) / 2);
            items as f64 / t.elapsed().as_secs_f64() / 1e6
        })
        .collect();
    let (_, rate_t) = spread(rates, 2);
    println!("\n## no-op map over {items} items, automatic chunking, 2 workers\n");
    println!("| contender | M items/s |");
    println!("| --- | ---: |");
    println!("| multitask ProcessPool::map, median (min-max) | {rate_t} |");
    println!(
        "| Python multiprocessing.Pool.map | {} |",
        show(
            py_figure(&py, "pool_map", "items_per_s").map(|r| r / 1e6),
            ""
        )
    );
    println!(
        "| Python ProcessPoolExecutor.map (chunksize 1000) | {} |",
        show(
            py_figure(&py, "executor_map", "items_per_s").map(|r| r / 1e6),
            ""
        )
    );

    // An idle pool: the CPU its processes use while nobody submits.
    std::thread::sleep(Duration::from_millis(200));
    let before = tree_cpu();
    std::thread::sleep(Duration::from_secs(2));
    let idle = tree_cpu().saturating_sub(before);
    println!(
        "\nAn idle pool of 2 workers used {:.2} ms of CPU in 2 s (this process and its workers, \
         from /proc).",
        idle.as_secs_f64() * 1e3
    );
    drop(pool);

    // 4. start to first result.
    let starts: Vec<Duration> = (0..10)
        .map(|_| {
            let t = Instant::now();
            let p = ProcessPool::new(2).unwrap();
            black_box(p.submit(noop, 1).unwrap().result().unwrap());
            let d = t.elapsed();
            drop(p);
            d
        })
        .collect();
    let mut sorted = starts.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    println!("\n## pool start to first result, 2 workers (median of 10)\n");
    println!("| contender | ms |");
    println!("| --- | ---: |");
    println!(
        "| multitask ProcessPool | {:.2} |",
        median.as_secs_f64() * 1e3
    );
    println!(
        "| Python Pool, fork | {} |",
        show(py_figure(&py, "pool_start_fork", "ms"), "")
    );
    println!(
        "| Python Pool, spawn | {} |",
        show(py_figure(&py, "pool_start_spawn", "ms"), "")
    );

    // 5. primes: serial and parallel runs alternate, best of three each,
    // so that a burst of load elsewhere skews neither side.
    let pool = ProcessPool::new(2).unwrap();
    let mut serial = Duration::MAX;
    let mut parallel = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        // Serially through the same code path a worker takes (Task::run
        // in a chunk), so that inlining differences can't skew the ratio.
        let serial_ex = multitasking::SerialExecutor::new();
        let c = serial_ex
            .map(is_prime, BIG_PRIMES)
            .filter(|r| *r.as_ref().unwrap())
            .count();
        assert_eq!(c, 8);
        serial = serial.min(t.elapsed());
        let t = Instant::now();
        let c = pool
            .map(is_prime, BIG_PRIMES)
            .filter(|r| *r.as_ref().unwrap())
            .count();
        assert_eq!(c, 8);
        parallel = parallel.min(t.elapsed());
    }
    println!("\n## primes, eight primes near 4e16, serial vs 2 worker processes\n");
    println!(
        "serial {:.3} s, 2 processes {:.3} s, speedup {:.2}x",
        serial.as_secs_f64(),
        parallel.as_secs_f64(),
        serial.as_secs_f64() / parallel.as_secs_f64()
    );
}
