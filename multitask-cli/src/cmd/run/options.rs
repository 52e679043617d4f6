//! The values of `multitask run`'s options that GNU parallel spells its own
//! way: `-j` (`N`, `0`, `N%`, `+N`, `-N`), `--halt` (`now|soon`,
//! `fail|success|done=N|P%`), `--timeout` (seconds or `P%` of the median
//! run time), `--block` sizes (`k` is 1000, `K` 1024) and durations
//! (`1.5`, `30s`, `2m`, `1h`).
//!
//! Each parses in `FromStr`, so clap turns a bad value into a usage error
//! that names the option; what a value means for a run (how many slots,
//! whether a halt fires) is a method here too, so the rules live in one
//! place.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// `-j`: how many jobs run at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Jobs {
    /// `-j N`; `-j 0` is `Count(0)`: as many as the executor can.
    Count(usize),
    /// `-j P%`: P percent of the usable CPUs.
    Percent(f64),
    /// `-j +N`: the usable CPUs plus N.
    Plus(usize),
    /// `-j -N`: the usable CPUs minus N.
    Minus(usize),
}

/// What `-j 0` means on a local executor when the number of jobs is not
/// known: GNU parallel starts as many as file handles allow (about 250 on
/// a default `ulimit -n` of 1024); each of our slots holds a few pipes.
pub(crate) const MANY_JOBS: usize = 250;

impl Jobs {
    /// The number of slots on `cpus` usable CPUs when `total` jobs are
    /// known; at least 1.
    pub(crate) fn slots(self, cpus: usize, total: Option<usize>) -> usize {
        let n = match self {
            Jobs::Count(0) => total.map_or(MANY_JOBS, |t| t.min(MANY_JOBS)),
            Jobs::Count(n) => n,
            Jobs::Percent(p) => (cpus as f64 * p / 100.0).floor() as usize,
            Jobs::Plus(n) => cpus + n,
            Jobs::Minus(n) => cpus.saturating_sub(n),
        };
        n.max(1)
    }
}

impl FromStr for Jobs {
    type Err = String;

    fn from_str(s: &str) -> Result<Jobs, String> {
        let bad = || format!("expected N, 0, N%, +N or -N, got {s:?}");
        let count = |t: &str| t.parse::<usize>().map_err(|_| bad());
        if let Some(p) = s.strip_suffix('%') {
            return match p.parse::<f64>() {
                Ok(p) if p > 0.0 && p.is_finite() => Ok(Jobs::Percent(p)),
                _ => Err(bad()),
            };
        }
        if let Some(n) = s.strip_prefix('+') {
            return count(n).map(Jobs::Plus);
        }
        if let Some(n) = s.strip_prefix('-') {
            return count(n).map(Jobs::Minus);
        }
        count(s).map(Jobs::Count)
    }
}

/// `--halt`: when the run stops early.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Halt {
    /// Run every job whatever happens.
    Never,
    /// Stop when `count` of the finished jobs meet `on`.
    When {
        /// `now` (kill the running jobs and exit) or `soon` (start no new
        /// job, let the running ones end).
        now: bool,
        /// Which finished jobs count.
        on: HaltOn,
        /// How many of them it takes.
        limit: Limit,
    },
}

/// Which finished jobs count toward a `--halt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HaltOn {
    /// `fail=`: failed jobs.
    Fail,
    /// `success=`: jobs that exited 0.
    Success,
    /// `done=`: any job.
    Done,
}

/// A count or a share of all the jobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Limit {
    /// This many jobs (at least 1).
    Count(usize),
    /// This percentage of the jobs of the run (which needs their number).
    Percent(f64),
}

impl Halt {
    /// True if the halt needs the number of jobs up front (a percentage).
    pub(crate) fn needs_total(self) -> bool {
        matches!(
            self,
            Halt::When {
                limit: Limit::Percent(_),
                ..
            }
        )
    }

    /// True if `failed` failures and `succeeded` successes out of `total`
    /// jobs stop the run.
    pub(crate) fn fires(self, failed: usize, succeeded: usize, total: Option<usize>) -> bool {
        let Halt::When { on, limit, .. } = self else {
            return false;
        };
        let n = match on {
            HaltOn::Fail => failed,
            HaltOn::Success => succeeded,
            HaltOn::Done => failed + succeeded,
        };
        match limit {
            Limit::Count(c) => n >= c,
            Limit::Percent(p) => total.is_some_and(|t| t > 0 && n as f64 * 100.0 >= p * t as f64),
        }
    }
}

impl FromStr for Halt {
    type Err = String;

    fn from_str(s: &str) -> Result<Halt, String> {
        let bad = || {
            format!(
                "expected never, or now|soon with fail|success|done=N or =P% \
                 (now,fail=1), got {s:?}"
            )
        };
        // GNU parallel's old numeric forms.
        let (now, on, limit) = match s {
            "never" | "0" => return Ok(Halt::Never),
            "1" => (false, HaltOn::Fail, Limit::Count(1)),
            "2" => (true, HaltOn::Fail, Limit::Count(1)),
            "-1" => (false, HaltOn::Success, Limit::Count(1)),
            "-2" => (true, HaltOn::Success, Limit::Count(1)),
            _ => {
                let (when, cond) = s.split_once(',').ok_or_else(bad)?;
                let now = match when {
                    "now" => true,
                    "soon" => false,
                    _ => return Err(bad()),
                };
                let (what, n) = cond.split_once('=').ok_or_else(bad)?;
                let on = match what {
                    "fail" => HaltOn::Fail,
                    "success" => HaltOn::Success,
                    "done" => HaltOn::Done,
                    _ => return Err(bad()),
                };
                let limit = match n.strip_suffix('%') {
                    Some(p) => match p.parse::<f64>() {
                        Ok(p) if p > 0.0 && p <= 100.0 => Limit::Percent(p),
                        _ => return Err(bad()),
                    },
                    None => match n.parse::<usize>() {
                        Ok(c) if c >= 1 => Limit::Count(c),
                        _ => return Err(bad()),
                    },
                };
                (now, on, limit)
            }
        };
        Ok(Halt::When { now, on, limit })
    }
}

impl fmt::Display for Halt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Halt::When { now, on, limit } = self else {
            return f.write_str("never");
        };
        let when = if *now { "now" } else { "soon" };
        let on = match on {
            HaltOn::Fail => "fail",
            HaltOn::Success => "success",
            HaltOn::Done => "done",
        };
        match limit {
            Limit::Count(c) => write!(f, "{when},{on}={c}"),
            Limit::Percent(p) => write!(f, "{when},{on}={p}%"),
        }
    }
}

/// `--timeout`: a fixed limit, or a share of the median run time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Timeout {
    /// Kill a job after this long.
    Fixed(Duration),
    /// Kill a job after this percentage of the median run time of the jobs
    /// finished so far (no limit until one has finished).
    Median(f64),
}

impl Timeout {
    /// The limit for a job starting now, given the finished jobs' run
    /// times (seconds, any order).
    pub(crate) fn limit(self, runtimes: &mut [f64]) -> Option<Duration> {
        match self {
            Timeout::Fixed(d) => Some(d),
            Timeout::Median(_) if runtimes.is_empty() => None,
            Timeout::Median(p) => {
                runtimes.sort_by(f64::total_cmp);
                let median = runtimes[runtimes.len() / 2];
                Some(Duration::from_secs_f64((median * p / 100.0).max(0.001)))
            }
        }
    }
}

impl FromStr for Timeout {
    type Err = String;

    fn from_str(s: &str) -> Result<Timeout, String> {
        match s.strip_suffix('%') {
            Some(p) => match p.parse::<f64>() {
                Ok(p) if p > 0.0 && p.is_finite() => Ok(Timeout::Median(p)),
                _ => Err(format!(
                    "expected SECS or P% (of the median run time), got {s:?}"
                )),
            },
            None => parse_duration(s).map(Timeout::Fixed),
        }
    }
}

/// Parses a positive duration: seconds with fractions (`0.5`), or with a
/// unit suffix `s`, `m`, `h` or `d` as GNU parallel takes them (`2m`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (number, unit) = match t.char_indices().last() {
        Some((i, c)) if "smhd".contains(c) => (&t[..i], c),
        _ => (t, 's'),
    };
    let scale = match unit {
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86400.0,
        _ => 1.0,
    };
    match number.parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() => Ok(Duration::from_secs_f64(n * scale)),
        _ => Err(format!(
            "expected a positive duration (1.5, 30s, 2m), got {s:?}"
        )),
    }
}

/// Parses a size in bytes as GNU parallel's `--block` does: `k`, `m`, `g`
/// are powers of 1000, `K`, `M`, `G` powers of 1024.
pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    let bad = || format!("expected a size in bytes (1M, 100k, 4096), got {s:?}");
    let t = s.trim();
    let (number, scale) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1e3),
        Some('m') => (&t[..t.len() - 1], 1e6),
        Some('g') => (&t[..t.len() - 1], 1e9),
        Some('K') => (&t[..t.len() - 1], 1024.0),
        Some('M') => (&t[..t.len() - 1], 1024.0 * 1024.0),
        Some('G') => (&t[..t.len() - 1], 1024.0 * 1024.0 * 1024.0),
        _ => (t, 1.0),
    };
    match number.parse::<f64>() {
        Ok(n) if n >= 1.0 && (n * scale) < 1e12 => Ok((n * scale) as usize),
        _ => Err(bad()),
    }
}
