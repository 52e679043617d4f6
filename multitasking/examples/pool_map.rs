//! The seed's `multiprocessing.Pool.map(double, [1, 2, 3, 4, 5])`, printing
//! which worker ran each item, so you can see workers reused.
//!
//! Run `cargo run --example pool_map -- threads:2` to see thread names; the
//! executor is any spec string (`serial`, `threads:N`, `processes:N`).

use multitasking::{AnyExecutor, Executor};

/// Doubles `i` and says who did it.
#[multitasking::task]
fn double(i: u64) -> (u64, String) {
    let me = std::thread::current();
    let who = format!(
        "pid {} thread {}",
        std::process::id(),
        me.name().unwrap_or("main")
    );
    (i * 2, who)
}

#[multitasking::main]
fn main() {
    let spec = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "threads:2".into());
    let pool = match AnyExecutor::from_spec(&spec) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pool_map: {e}");
            std::process::exit(2);
        }
    };
    let mut result = Vec::new();
    for outcome in pool.map(double, [1, 2, 3, 4, 5]).chunksize(1) {
        let (doubled, who) = outcome.expect("double never fails");
        println!("I'm processing on {who}");
        result.push(doubled);
    }
    println!("{result:?}");
}
