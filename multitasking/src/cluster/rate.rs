//! A rate of finished tasks, measured over short windows: what a worker
//! fetches ahead by and what a client packs calls by.

use std::time::{Duration, Instant};

/// The window over which a rate is measured.
pub(crate) const WINDOW: Duration = Duration::from_millis(50);

/// Tasks finished per second, measured over windows of [`WINDOW`] and
/// smoothed: up at once (a burst of short tasks), down by halves (a long
/// task after short ones).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rate {
    /// Per second, smoothed.
    per_s: f64,
    /// The window's start and the count then.
    since: Instant,
    at: u64,
}

impl Rate {
    /// A rate of nothing yet, counting from `finished`.
    pub(crate) fn new(finished: u64) -> Rate {
        Rate {
            per_s: 0.0,
            since: Instant::now(),
            at: finished,
        }
    }

    /// How many finish in `span` at the rate, given the count now.
    pub(crate) fn within(&mut self, span: Duration, finished: u64) -> usize {
        let elapsed = self.since.elapsed();
        if elapsed >= WINDOW {
            let fresh = finished.saturating_sub(self.at) as f64 / elapsed.as_secs_f64();
            self.per_s = if fresh > self.per_s {
                fresh
            } else {
                (self.per_s + fresh) / 2.0
            };
            (self.since, self.at) = (Instant::now(), finished);
        }
        (self.per_s * span.as_secs_f64()) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_rises_at_once_and_falls_by_halves() {
        let mut r = Rate::new(100);
        assert_eq!(r.within(Duration::from_secs(1), 100), 0);
        std::thread::sleep(WINDOW + Duration::from_millis(10));
        // 6,000 in 60 ms or more (a loaded machine sleeps longer): at most
        // 100 a millisecond.
        let fast = r.within(Duration::from_millis(1), 6_100);
        assert!((5..=100).contains(&fast), "{fast}");
        std::thread::sleep(WINDOW + Duration::from_millis(10));
        // None in the next window: half of it.
        let half = r.within(Duration::from_millis(1), 6_100);
        assert!(half <= fast / 2 + 1 && half > 0, "{fast} then {half}");
    }
}
