//! The `multitask` command line (being built).

fn main() {}
