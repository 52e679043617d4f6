//! Named tasks the integration tests run on every executor.

use std::time::Duration;

/// Doubles `x`.
#[multitask::task]
pub(crate) fn double(x: u64) -> u64 {
    x * 2
}

/// Returns `x`; does nothing else (per-task overhead).
#[multitask::task]
pub(crate) fn noop(x: u64) -> u64 {
    x
}

/// Sleeps `ms` milliseconds, then returns it.
#[multitask::task]
pub(crate) fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Panics with `message`.
#[multitask::task]
pub(crate) fn boom(message: String) -> u64 {
    panic!("{message}")
}

/// Panics for inputs that are 3 mod 7, else returns `x + 1`.
#[multitask::task]
pub(crate) fn flaky(x: u64) -> u64 {
    if x % 7 == 3 {
        panic!("flaky input {x}");
    }
    x + 1
}

/// Adds two numbers: a task with a tuple input.
#[multitask::task]
pub(crate) fn add(a: u64, b: u64) -> u64 {
    a + b
}
