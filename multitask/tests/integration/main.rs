//! The integration test binary: one `mod` per area (ripgrep-style), so the
//! whole suite links once.

mod conformance;
mod examples;
mod tasks;
