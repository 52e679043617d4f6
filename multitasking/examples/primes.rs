//! The seed's prime example: the same six numbers checked serially and on
//! a pool, with both times and the speedup.
//!
//! `cargo run --release --example primes -- threads:2` (any spec string).

use std::time::Instant;

use multitasking::{AnyExecutor, Executor};

const PRIMES: [u64; 6] = [
    112_272_535_095_293,
    112_582_705_942_171,
    112_272_535_095_293,
    115_280_095_190_773,
    115_797_848_077_099,
    1_099_726_899_285_419,
];

/// Trial division by odd numbers up to the square root, as in the seed.
#[multitasking::task]
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let mut i = 3;
    while i <= n / i {
        if n % i == 0 {
            return false;
        }
        i += 2;
    }
    true
}

#[multitasking::main]
fn main() {
    let spec = std::env::args().nth(1).unwrap_or_else(|| "threads".into());
    let pool = AnyExecutor::from_spec(&spec).unwrap_or_else(|e| {
        eprintln!("primes: {e}");
        std::process::exit(2);
    });

    println!("parallel on {}", pool.spec());
    let start = Instant::now();
    for (n, prime) in PRIMES.iter().zip(pool.map(is_prime, PRIMES)) {
        println!("{n} is prime: {}", prime.expect("is_prime never fails"));
    }
    let parallel = start.elapsed();

    println!("serial");
    let start = Instant::now();
    for n in PRIMES {
        println!("{n} is prime: {}", is_prime.call(n));
    }
    let serial = start.elapsed();

    println!(
        "parallel {:.3} s, serial {:.3} s, speedup {:.2}x",
        parallel.as_secs_f64(),
        serial.as_secs_f64(),
        serial.as_secs_f64() / parallel.as_secs_f64()
    );
}
