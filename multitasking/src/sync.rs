//! The std <-> loom shim: the future's state machine is written against
//! these names so that `RUSTFLAGS="--cfg loom"` model-checks it.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::AtomicBool;
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::AtomicBool;
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Spins up to `limit` for `ready` to return true, before a caller parks.
///
/// On a machine whose idle CPUs halt, waking a parked thread costs 20-25 µs
/// each way; a result that arrives within a few microseconds is cheaper to
/// spin for. Under loom the spin is skipped (it would only add states).
#[inline]
pub(crate) fn spin_for(limit: std::time::Duration, mut ready: impl FnMut() -> bool) -> bool {
    if cfg!(loom) {
        return ready();
    }
    // Read the clock only once there is something to wait for (and call
    // `ready` once per try: it may take what it waits for).
    if ready() {
        return true;
    }
    let start = std::time::Instant::now();
    loop {
        for _ in 0..64 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= limit {
            return ready();
        }
        // Stay runnable, but let a thread that has work (the one that will
        // make `ready` true, on a busy machine) have this CPU.
        std::thread::yield_now();
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves
/// the state consistent before it can panic, and user code that runs under
/// a future's lock (done callbacks) runs under `catch_unwind`.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Locks a std mutex (one outside the loom model), ignoring poisoning as
/// [`lock`] does.
pub(crate) fn lock_std<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
