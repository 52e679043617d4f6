//! The named tasks and numbers the benches share: a no-op, the seed's
//! trial-division prime test, and eight primes near 4e16 (about 1e8 trial
//! divisions each, so that a serial run takes over a second and the work
//! divides evenly over two workers).

/// A no-op named task.
#[multitasking::task]
pub(crate) fn noop(x: u64) -> u64 {
    x
}

/// The seed's trial division.
#[multitasking::task]
pub(crate) fn is_prime(n: u64) -> bool {
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

/// Eight primes near 4e16.
pub(crate) const BIG_PRIMES: [u64; 8] = [
    40_000_006_840_287_493,
    40_000_015_593_449_207,
    40_000_022_857_345_687,
    40_000_038_468_001_141,
    40_000_065_959_863_991,
    40_000_078_677_563_317,
    40_000_091_663_036_077,
    40_000_093_047_662_549,
];
