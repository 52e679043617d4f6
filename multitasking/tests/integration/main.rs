//! The integration test binary: one `mod` per area (ripgrep-style), so the
//! whole suite links once.

// Worker processes of the pools under test are this binary started again.
multitasking::enable_test_support!();

// Counts each task's allocations (trace::each_task_counts_what_it_allocated_on_its_thread).
#[global_allocator]
static ALLOC: multitasking::alloc::CountingAlloc = multitasking::alloc::CountingAlloc::system();

mod ahead;
mod async_use;
mod cluster;
mod conformance;
#[cfg(feature = "dashboard")]
mod dashboard;
mod examples;
mod failure;
mod process;
mod tasks;
mod trace;
