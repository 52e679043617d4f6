//! The integration test binary: one `mod` per area (ripgrep-style), so the
//! whole suite links once.

// Worker processes of the pools under test are this binary started again.
multitasking::enable_test_support!();

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
