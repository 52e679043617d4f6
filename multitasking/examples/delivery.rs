//! The seed's first thread: a `Delivery` job run on its own named thread.
//!
//! Python subclasses `Thread` and overrides `run`; here a `Thread` takes the
//! body as a closure, and `join` hands back what it returned (or its panic,
//! as a value).

use multitasking::Thread;

struct Delivery {
    parcel: &'static str,
}

impl Delivery {
    fn run(&self) -> String {
        let me = std::thread::current();
        format!("delivering {} on {}", self.parcel, me.name().unwrap_or("?"))
    }
}

fn main() {
    let work = Delivery { parcel: "books" };
    // Called directly, `run` is an ordinary method on the main thread.
    println!("{}", work.run());

    // On a Thread, the same work runs on a new, named OS thread.
    let mut t = Thread::new("delivery-1", move |_stop| work.run());
    println!("before start: alive={}", t.is_alive());
    t.start().expect("start the thread");
    let said = t.join().expect("the delivery thread finished");
    println!("{said}");
}
