//! Measurements whose verdicts hold on a noisy machine: repeated runs with
//! their median and spread, a speedup with the interval its runs allow,
//! words derived from that interval ("can't tell" when it straddles 1),
//! and a reading of the machine's load before and during the runs, so that
//! a busy machine is named rather than silently blamed on the executor.

use std::time::Duration;

use serde::Serialize;

/// Runs shorter than this are too short to time: the clock's and the
/// scheduler's noise are of their size.
const TOO_SHORT: Duration = Duration::from_millis(2);

/// The times of repeated runs of one measurement, in seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Runs(pub(crate) Vec<f64>);

impl Runs {
    pub(crate) fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64());
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    pub(crate) fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub(crate) fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(0.0)
    }

    pub(crate) fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(0.0)
    }

    /// `median s (median of N: min-max)`, or just the time for one run.
    pub(crate) fn describe(&self) -> String {
        if self.0.len() < 2 {
            format!("{:.3} s", self.median())
        } else {
            format!(
                "{:.3} s  (median of {}: {:.3}-{:.3})",
                self.median(),
                self.0.len(),
                self.min(),
                self.max()
            )
        }
    }
}

/// What a comparison of a parallel run against a serial one says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Verdict {
    /// Every pairing of runs was faster in parallel.
    Faster,
    /// Every pairing was slower in parallel.
    Slower,
    /// The runs overlap: the speedup's interval straddles 1.
    CantTell,
    /// The runs are too short to time.
    TooShort,
    /// The executor is the serial baseline itself.
    Baseline,
}

impl Verdict {
    pub(crate) fn words(self) -> &'static str {
        match self {
            Verdict::Faster => "faster",
            Verdict::Slower => "slower",
            Verdict::CantTell => "can't tell: the runs overlap",
            Verdict::TooShort => "can't tell: the runs are too short to time",
            Verdict::Baseline => "none: serial is the baseline",
        }
    }
}

/// Serial runs against parallel runs of the same work.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Comparison {
    /// The serial runs.
    pub(crate) serial: Runs,
    /// The parallel runs.
    pub(crate) parallel: Runs,
    /// The median serial time over the median parallel time; `None` when
    /// there is nothing to compare.
    pub(crate) speedup: Option<f64>,
    /// The slowest serial over the fastest parallel run, and the reverse:
    /// every speedup the runs allow lies between.
    pub(crate) range: Option<(f64, f64)>,
    /// What the numbers support.
    pub(crate) verdict: Verdict,
}

impl Comparison {
    /// Compares; `baseline` is true when the parallel executor is serial.
    pub(crate) fn new(serial: Runs, parallel: Runs, baseline: bool) -> Comparison {
        let short = TOO_SHORT.as_secs_f64();
        let (verdict, speedup, range) = if baseline {
            (Verdict::Baseline, None, None)
        } else if serial.median() < short || parallel.median() < short {
            (Verdict::TooShort, None, None)
        } else {
            let speedup = serial.median() / parallel.median();
            let lo = serial.min() / parallel.max();
            let hi = serial.max() / parallel.min();
            let v = if lo > 1.0 {
                Verdict::Faster
            } else if hi < 1.0 {
                Verdict::Slower
            } else {
                Verdict::CantTell
            };
            (v, Some(speedup), Some((lo, hi)))
        };
        Comparison {
            serial,
            parallel,
            speedup,
            range,
            verdict,
        }
    }

    /// The speedup line's text after `speedup   `.
    pub(crate) fn describe(&self) -> String {
        match (self.speedup, self.range) {
            (Some(s), Some((lo, hi))) if self.parallel.0.len() > 1 => {
                format!("{s:.2}x  ({lo:.2}-{hi:.2}: {})", self.verdict.words())
            }
            (Some(s), _) => format!("{s:.2}x  ({})", self.verdict.words()),
            _ => self.verdict.words().to_string(),
        }
    }
}

/// The machine's load around a measurement.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Load {
    /// The 1-minute load average before the runs.
    pub(crate) load_before: f64,
    /// Usable CPUs.
    pub(crate) cpus: usize,
    /// Share of all CPUs' time other processes used during the runs.
    pub(crate) others: f64,
    /// Share of all CPUs' time the hypervisor stole during the runs.
    pub(crate) steal: f64,
}

/// A reading of the machine's CPU counters and of this process tree's CPU
/// time, taken before a measurement and compared after it.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    load_before: f64,
    cpu: Option<CpuTimes>,
    ours: u64,
}

/// Jiffies of all CPUs from /proc/stat.
#[derive(Debug, Clone, Copy)]
struct CpuTimes {
    busy: u64,
    total: u64,
    steal: u64,
}

fn cpu_times() -> Option<CpuTimes> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let idle = get(3) + get(4);
    let total: u64 = (0..8).map(get).sum();
    Some(CpuTimes {
        busy: total - idle - get(7),
        total,
        steal: get(7),
    })
}

/// CPU jiffies (user + system) of this process and every process below it.
fn our_jiffies() -> u64 {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut all = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After the name: state ppid ... utime (12th) stime (13th).
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        all.push((pid, num(1) as u32, num(11) + num(12)));
    }
    let mut sum = 0;
    let mut frontier = vec![me];
    let mut seen = std::collections::HashSet::new();
    while let Some(p) = frontier.pop() {
        if !seen.insert(p) {
            continue;
        }
        for &(pid, ppid, j) in &all {
            if pid == p {
                sum += j;
            }
            if ppid == p {
                frontier.push(pid);
            }
        }
    }
    sum
}

impl Watch {
    pub(crate) fn start() -> Watch {
        let load_before = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
            .unwrap_or(0.0);
        Watch {
            load_before,
            cpu: cpu_times(),
            ours: our_jiffies(),
        }
    }

    pub(crate) fn stop(&self) -> Load {
        let cpus = multitasking::usable_cpus();
        let (others, steal) = match (self.cpu, cpu_times()) {
            // Counters tick at 100 Hz: a shorter interval can't be read.
            (Some(a), Some(b)) if b.total >= a.total + 25 * cpus as u64 => {
                let total = (b.total - a.total) as f64;
                let ours = our_jiffies().saturating_sub(self.ours) as f64;
                let busy = b.busy.saturating_sub(a.busy) as f64;
                (
                    ((busy - ours) / total).clamp(0.0, 1.0),
                    (b.steal - a.steal) as f64 / total,
                )
            }
            _ => (0.0, 0.0),
        };
        Load {
            load_before: self.load_before,
            cpus,
            others,
            steal,
        }
    }
}

impl Load {
    /// Why the numbers may not be trusted, if they may not.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        // Our own runs add to the 1-minute average too: this only flags a
        // machine that was already busy when they began.
        if self.load_before > self.cpus as f64 * 0.75 {
            w.push(format!(
                "the machine was busy before the runs (load {:.2} on {} CPUs): the times are doubtful",
                self.load_before, self.cpus
            ));
        }
        if self.others > 0.15 {
            w.push(format!(
                "other processes used {:.0}% of the CPUs during the runs: the times are doubtful",
                self.others * 100.0
            ));
        }
        if self.steal > 0.05 {
            w.push(format!(
                "the hypervisor stole {:.0}% of the CPU time during the runs",
                self.steal * 100.0
            ));
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(v: &[f64]) -> Runs {
        Runs(v.to_vec())
    }

    #[test]
    fn verdicts_follow_the_interval() {
        let c = Comparison::new(runs(&[0.20, 0.21, 0.22]), runs(&[0.10, 0.11, 0.12]), false);
        assert_eq!(c.verdict, Verdict::Faster);
        assert!((c.speedup.unwrap() - 0.21 / 0.11).abs() < 1e-9);
        assert!(c.describe().ends_with(": faster)"), "{}", c.describe());
        let c = Comparison::new(runs(&[0.20, 0.21, 0.30]), runs(&[0.19, 0.22, 0.25]), false);
        assert_eq!(c.verdict, Verdict::CantTell);
        let c = Comparison::new(runs(&[0.10, 0.11]), runs(&[0.20, 0.30]), false);
        assert_eq!(c.verdict, Verdict::Slower);
    }

    #[test]
    fn serial_against_itself_and_tiny_runs_claim_nothing() {
        let c = Comparison::new(runs(&[0.2]), runs(&[0.1]), true);
        assert_eq!((c.verdict, c.speedup), (Verdict::Baseline, None));
        assert_eq!(c.describe(), "none: serial is the baseline");
        let c = Comparison::new(runs(&[0.0001; 3]), runs(&[0.00005; 3]), false);
        assert_eq!((c.verdict, c.speedup), (Verdict::TooShort, None));
        assert!(!c.describe().contains("0.00x"));
    }

    #[test]
    fn medians_and_spreads() {
        let r = runs(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((r.median(), r.min(), r.max()), (2.5, 1.0, 10.0));
        assert_eq!(runs(&[1.0, 5.0, 2.0]).median(), 2.0);
    }

    #[test]
    fn a_load_reading_is_sane() {
        let w = Watch::start();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        let load = w.stop();
        assert!((0.0..=1.0).contains(&load.others));
        assert!(load.cpus >= 1);
    }
}
