//! The seed's `with ThreadPoolExecutor() as executor: executor.submit(w.run)`:
//! submit work, and let the end of the block shut the pool down.
//!
//! Dropping a pool is Python's `with` exit: it waits for the work it was
//! given, and never leaks a thread.

use multitasking::ThreadPool;

struct Delivery;

impl Delivery {
    fn run(&self) -> &'static str {
        println!("delivering");
        "delivered"
    }
}

fn main() {
    let w = Delivery;
    let future = {
        let executor = ThreadPool::builder().build().expect("start the pool");
        let future = executor.spawn(move || w.run()).expect("submit");
        future.add_done_callback(|outcome| println!("callback saw {outcome:?}"));
        future
        // `executor` is dropped here: it waits for the delivery, then stops.
    };
    assert!(future.done(), "the pool's drop waited for the work");
    println!("result: {}", future.result().expect("the delivery ran"));
}
