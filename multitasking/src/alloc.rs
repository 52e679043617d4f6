//! How many bytes each task allocates: a counting wrapper around the
//! system allocator that a program installs as its global allocator.
//!
//! Memory per task on a thread pool can't come from the process's RSS,
//! which every thread shares; it can come from the allocator, which knows
//! which thread asks. Install [`CountingAlloc`] and every traced task (on
//! threads, and in worker processes, which are the same program) records
//! the bytes its thread allocated while it ran ([`TaskEvent::allocated`](crate::trace::TaskEvent::allocated),
//! [`TaskUsage::allocated`](crate::TaskUsage::allocated)):
//!
//! ```
//! #[global_allocator]
//! static ALLOC: multitasking::alloc::CountingAlloc = multitasking::alloc::CountingAlloc::system();
//!
//! let before = multitasking::alloc::thread_allocated().expect("installed");
//! let v = vec![0u8; 1 << 20];
//! let after = multitasking::alloc::thread_allocated().unwrap();
//! assert!(after - before >= 1 << 20);
//! # drop(v);
//! ```
//!
//! The cost is two thread-local additions per allocation. The count is of
//! bytes asked for (a `realloc` counts its growth), not of bytes live: what
//! a task allocates and frees again still counts, as it does in a
//! profiler's allocation view. Without the allocator installed, the
//! figures are `None`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    /// Bytes this thread allocated through [`CountingAlloc`] so far
    /// (const-initialised and without a destructor: touching it never
    /// allocates, as an allocator requires).
    static ALLOCATED: Cell<u64> = const { Cell::new(0) };
}

/// True once an allocation went through a [`CountingAlloc`].
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The system allocator, counting the bytes each thread allocates. Install
/// it with `#[global_allocator]`; see the [module docs](self).
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAlloc {
    /// The allocator that does the work.
    inner: System,
}

impl CountingAlloc {
    /// The system allocator, counted.
    pub const fn system() -> CountingAlloc {
        CountingAlloc { inner: System }
    }
}

/// Adds `bytes` to this thread's count.
fn count(bytes: usize) {
    // `try_with`: a thread being torn down has no count left to keep.
    let _ = ALLOCATED.try_with(|c| c.set(c.get().wrapping_add(bytes as u64)));
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the same arguments and
// returns what it returns; the counting touches only a const thread-local.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size.saturating_sub(layout.size()));
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.realloc(ptr, layout, new_size) }
    }
}

/// Bytes this thread has allocated so far, if [`CountingAlloc`] is the
/// global allocator (`None` otherwise): the difference of two readings is
/// what the thread allocated in between.
pub fn thread_allocated() -> Option<u64> {
    INSTALLED
        .load(Ordering::Relaxed)
        .then(|| ALLOCATED.try_with(Cell::get).unwrap_or(0))
}
