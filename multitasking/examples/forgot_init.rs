//! The one rule of process pools: call `multitasking::init()` first thing
//! in `main`. This program breaks it, to show what happens.
//!
//! A worker process is this program started again. `init()` is what turns
//! such a start into a worker; without it the worker runs `main` from the
//! top, reaches the pool's build, and would start workers of its own. The
//! library refuses that at once: each worker start exits with a line on
//! stderr, and the pool's build fails with an error that says what to do.
//!
//! If `FORGOT_INIT_PIDS` names a file, every start of this program (the
//! worker starts too) appends its pid there, so a test can count them.

use std::io::Write;

use multitasking::ProcessPool;

fn main() {
    // NOTE: no `multitasking::init();` here: that is the mistake.
    if let Some(path) = std::env::var_os("FORGOT_INIT_PIDS") {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open the pid log");
        writeln!(log, "{}", std::process::id()).expect("write the pid log");
    }
    match ProcessPool::builder().max_workers(2).build() {
        Ok(_) => println!("the pool started, which it should not have"),
        Err(e) => println!("the pool did not start: {e}"),
    }
}
