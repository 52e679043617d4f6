//! The seed's `Stopped` flag, done right: a worker thread that works until
//! asked to stop.
//!
//! In the seed, `while not Stopped: ...; sleep(3)` reads a global flag, so
//! a stop waits out the current three-second sleep. A `StopToken` belongs to
//! one thread and `StopToken::sleep` returns the moment a stop is asked for.

use std::time::{Duration, Instant};

use multitasking::Thread;

fn main() {
    let mut t = Thread::new("overwork", |stop| {
        let mut rounds = 0;
        while !stop.is_stopped() {
            println!("do Overwork");
            rounds += 1;
            stop.sleep(Duration::from_secs(3));
        }
        println!("retired..");
        rounds
    });
    t.start().expect("start the worker");
    std::thread::sleep(Duration::from_millis(100));

    let asked = Instant::now();
    t.stop();
    let rounds = t.join().expect("the worker finished");
    println!(
        "worker is gone after {rounds} round(s); the stop took {:.1} ms, not up to 3 s",
        asked.elapsed().as_secs_f64() * 1e3
    );
}
