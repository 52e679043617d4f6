//! `timeit`: Python's `timeit` for a closure, with statistics.
//!
//! A [`Timer`] runs a closure `number` times per measurement and repeats
//! the measurement `repeat` times; [`Timer::autorange`] picks `number` as
//! CPython does (1, 2, 5, 10, 20, 50, ... until a measurement takes at least
//! 0.2 s). [`Stats`] gives the per-loop min, median, mean and standard
//! deviation; the minimum is the number to quote (the others show noise).

use std::fmt;
use std::hint::black_box;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Times a closure.
pub struct Timer<F> {
    /// The code under test.
    f: F,
    /// Calls per measurement; `None` for automatic.
    number: Option<u64>,
    /// Measurements.
    repeat: usize,
}

impl<F> fmt::Debug for Timer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("number", &self.number)
            .field("repeat", &self.repeat)
            .finish_non_exhaustive()
    }
}

/// Calls `f` `number` times; the total time.
pub fn timeit<R>(mut f: impl FnMut() -> R, number: u64) -> Duration {
    let t = Instant::now();
    for _ in 0..number {
        black_box(f());
    }
    t.elapsed()
}

impl<R, F: FnMut() -> R> Timer<F> {
    /// A timer of `f`: automatic `number`, 5 repeats.
    pub fn new(f: F) -> Self {
        Timer {
            f,
            number: None,
            repeat: 5,
        }
    }

    /// Calls per measurement (default: automatic, see [`Timer::autorange`]).
    pub fn number(mut self, n: u64) -> Self {
        self.number = Some(n.max(1));
        self
    }

    /// Measurements (default: 5).
    pub fn repeat(mut self, r: usize) -> Self {
        self.repeat = r.max(1);
        self
    }

    /// Calls `f` `number` times; the total time.
    pub fn timeit(&mut self, number: u64) -> Duration {
        timeit(&mut self.f, number)
    }

    /// CPython's autorange: the first `number` in 1, 2, 5, 10, 20, 50, ...
    /// whose measurement takes at least 0.2 s, and that measurement.
    pub fn autorange(&mut self) -> (u64, Duration) {
        let mut base = 1u64;
        loop {
            for k in [1, 2, 5] {
                let number = base * k;
                let d = self.timeit(number);
                if d >= Duration::from_millis(200) {
                    return (number, d);
                }
            }
            base *= 10;
        }
    }

    /// Measures and summarises.
    pub fn run(&mut self) -> Stats {
        let number = match self.number {
            Some(n) => n,
            None => self.autorange().0,
        };
        let per_loop: Vec<Duration> = (0..self.repeat)
            .map(|_| self.timeit(number) / number as u32)
            .collect();
        Stats::new(number, per_loop)
    }
}

/// Per-loop times of a [`Timer`] run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// Calls per measurement.
    pub number: u64,
    /// Measurements.
    pub repeat: usize,
    /// Per-loop time of each measurement.
    pub per_loop: Vec<Duration>,
    /// The fastest per-loop time: the one to quote.
    pub min: Duration,
    /// The median per-loop time.
    pub median: Duration,
    /// The mean per-loop time.
    pub mean: Duration,
    /// The standard deviation of the per-loop times.
    pub stdev: Duration,
}

impl Stats {
    fn new(number: u64, per_loop: Vec<Duration>) -> Stats {
        let mut sorted = per_loop.clone();
        sorted.sort();
        let n = sorted.len().max(1);
        let secs: Vec<f64> = per_loop.iter().map(Duration::as_secs_f64).collect();
        let mean = secs.iter().sum::<f64>() / n as f64;
        let var = secs.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n as f64;
        Stats {
            number,
            repeat: per_loop.len(),
            min: sorted.first().copied().unwrap_or_default(),
            median: sorted.get(sorted.len() / 2).copied().unwrap_or_default(),
            mean: Duration::from_secs_f64(mean),
            stdev: Duration::from_secs_f64(var.sqrt()),
            per_loop,
        }
    }
}

/// A duration in the unit that suits it.
fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else if s >= 1e-6 {
        format!("{:.3} µs", s * 1e6)
    } else {
        format!("{:.1} ns", s * 1e9)
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ± {} per loop (min {}, median {}; {} runs, {} loops each)",
            human(self.mean),
            human(self.stdev),
            human(self.min),
            human(self.median),
            self.repeat,
            self.number
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_ordered() {
        let s = Timer::new(|| (0..100u32).sum::<u32>())
            .number(1000)
            .repeat(7)
            .run();
        assert_eq!((s.number, s.repeat, s.per_loop.len()), (1000, 7, 7));
        let max = *s.per_loop.iter().max().unwrap();
        assert!(s.min <= s.median && s.median <= max);
        assert!(s.min <= s.mean && s.mean <= max);
        assert!(s.to_string().contains("7 runs, 1000 loops each"));
    }

    #[test]
    fn autorange_reaches_a_fifth_of_a_second() {
        let mut t = Timer::new(|| std::thread::sleep(Duration::from_millis(30)));
        let (number, d) = t.autorange();
        assert!(d >= Duration::from_millis(200));
        assert_eq!(number, 10);
    }
}
