//! The seed's queue-fed pool, the Rust way: worker `Thread`s take jobs from
//! one crossbeam channel (Python's `Queue`), each job is counted out and
//! back in (`task_done`), the producer waits for every job (`q.join()`),
//! and each worker's `StopToken` ends it when the work is done.
//!
//! In Python the workers are daemon threads looping on `q.get()` forever,
//! so the program can only exit by abandoning them; here every worker is
//! stopped and joined, and the count it returns says what it did.
//!
//! Run: `cargo run --example queue_pool`.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;
use multitasking::Thread;

/// Jobs put and not yet done: `Queue.task_done()` and `Queue.join()`.
#[derive(Default)]
struct Unfinished {
    /// Jobs put and not yet marked done.
    count: Mutex<usize>,
    /// Signalled when `count` reaches zero.
    zero: Condvar,
}

impl Unfinished {
    /// One more job is on its way (`q.put`).
    fn add(&self) {
        *self.count.lock().unwrap() += 1;
    }

    /// A job is done (`q.task_done()`).
    fn task_done(&self) {
        let mut n = self.count.lock().unwrap();
        *n -= 1;
        if *n == 0 {
            self.zero.notify_all();
        }
    }

    /// Waits until every job put so far is done (`q.join()`), at most
    /// `limit`; true if they all are.
    fn join(&self, limit: Duration) -> bool {
        let n = self.count.lock().unwrap();
        let (n, _) = self.zero.wait_timeout_while(n, limit, |n| *n > 0).unwrap();
        *n == 0
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

fn main() {
    let (tx, rx) = crossbeam_channel::unbounded::<u64>();
    let (results_tx, results) = crossbeam_channel::unbounded::<(u64, bool, String)>();
    let unfinished = Arc::new(Unfinished::default());

    let mut workers: Vec<Thread<usize>> = (1..=3)
        .map(|i| {
            let (rx, out, unfinished) = (rx.clone(), results_tx.clone(), unfinished.clone());
            Thread::new(format!("worker-{i}"), move |stop| {
                let mut done = 0;
                while !stop.is_stopped() {
                    // A short timeout, so that a stop is seen while idle.
                    match rx.recv_timeout(Duration::from_millis(20)) {
                        Ok(n) => {
                            let me = std::thread::current().name().unwrap_or("?").to_string();
                            out.send((n, is_prime(n), me)).expect("results are read");
                            done += 1;
                            unfinished.task_done();
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                done
            })
        })
        .collect();
    for w in &mut workers {
        w.start().expect("start a worker");
    }

    let numbers: Vec<u64> = (0..12).map(|i| 1_000_003 + 2 * i).collect();
    for &n in &numbers {
        unfinished.add();
        tx.send(n).expect("workers are listening");
    }
    assert!(
        unfinished.join(Duration::from_secs(30)),
        "the queue did not drain"
    );
    println!("queue joined: {} jobs done", numbers.len());

    let mut verdicts: Vec<(u64, bool, String)> = results.try_iter().collect();
    verdicts.sort();
    for (n, prime, who) in &verdicts {
        println!("{n} is prime: {prime} ({who})");
    }

    // The work is done: stop every worker and count what each did.
    for w in &workers {
        w.stop();
    }
    let per_worker: Vec<usize> = workers
        .into_iter()
        .map(|w| w.join().expect("a worker finished"))
        .collect();
    println!(
        "workers stopped: {} joined, {} jobs between them",
        per_worker.len(),
        per_worker.iter().sum::<usize>()
    );
}
