//! Crash isolation, which Python's `ProcessPoolExecutor` lacks (one dead
//! worker breaks the whole pool there): a task that panics costs its item,
//! a task whose process dies costs only that task, and the pool starts a
//! new worker and goes on.
//!
//! Workers start from `multitasking::init()` at the top of `main`, as in any
//! program (the test binaries start theirs from a constructor instead).

use std::time::Duration;

use multitasking::{Executor, ProcessPool};

/// Fails as `how` says, then returns its pid.
#[multitasking::task]
fn fail(how: String) -> u32 {
    match how.as_str() {
        "panic" => panic!("a bug in the task"),
        "abort" => std::process::abort(),
        "segfault" => {
            // As `kill -SEGV` from outside would: a signal, not a fault.
            let me = rustix::process::getpid();
            let _ = rustix::process::kill_process(me, rustix::process::Signal::SEGV);
            std::thread::sleep(Duration::from_secs(5));
            println!("the worker survived its SIGSEGV");
        }
        _ => {}
    }
    std::process::id()
}

fn main() {
    multitasking::init();
    let pool = ProcessPool::builder()
        .max_workers(1)
        .build()
        .expect("start the pool");
    for how in ["panic", "abort", "segfault", "nothing"] {
        let future = pool.submit(fail, how.to_string()).expect("submit");
        match future.result_timeout(Duration::from_secs(30)) {
            Some(Ok(pid)) => println!("{how}: ran in pid {pid}"),
            Some(Err(e)) => println!("{how}: {} ({e})", e.kind()),
            None => println!("{how}: no outcome within 30 s"),
        }
    }
}
