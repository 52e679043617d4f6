//! A sampling profiler that covers the worker processes too: which part is
//! slow, across every process that ran the work, merged by task.
//!
//! [`Profiler::start`] samples this process's threads (pprof, `SIGPROF` at
//! [`Profiler::DEFAULT_HZ`]) and sets an environment variable that makes
//! every worker process started from then on sample itself the same way
//! and write its stacks, collapsed (`frame;frame;... count`), to a file of
//! its own in a directory the profiler owns: every 200 ms while it lives
//! (so that a worker killed mid-task loses at most that much) and once
//! more when it exits. [`Profiler::finish`] stops this process's sampling
//! and merges its stacks with every worker's into one [`Profile`]: each
//! stack is rooted at the task it ran in (the frame `<T as Task>::run`),
//! so the flamegraph and the table read by task, whatever process or
//! thread ran it.
//!
//! ```no_run
//! use multitasking::profile::Profiler;
//! use multitasking::{Executor, ProcessPool};
//! # #[multitasking::task] fn is_prime(n: u64) -> bool { n > 1 }
//! let profiler = Profiler::start().unwrap();
//! let pool = ProcessPool::builder().build().unwrap(); // after start
//! let _: Vec<_> = pool.map(is_prime, 1..100_000).collect();
//! drop(pool); // workers write their last stacks as they exit
//! let profile = profiler.finish().unwrap();
//! profile.flamegraph(std::fs::File::create("flame.svg").unwrap()).unwrap();
//! print!("{}", profile.table(10));
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;

/// Where a worker process writes its stacks; set by [`Profiler::start`].
const ENV_DIR: &str = "MULTITASK_PROFILE_DIR";
/// The sampling rate workers use; set by [`Profiler::start`].
const ENV_HZ: &str = "MULTITASK_PROFILE_HZ";
/// The root of stacks that ran in no task.
const OUTSIDE: &str = "(outside tasks)";
/// How often a worker rewrites its stacks file.
const FLUSH: Duration = Duration::from_millis(200);
/// Frames of the sampler itself and of the C runtime, left out.
const BLOCKLIST: [&str; 4] = ["libc", "libgcc", "pthread", "vdso"];

/// A running profile of this process and the workers it starts.
pub struct Profiler {
    /// This process's sampler.
    guard: pprof::ProfilerGuard<'static>,
    /// The workers' stacks files.
    dir: PathBuf,
}

impl std::fmt::Debug for Profiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profiler")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Profiler {
    /// Samples per second, per thread, unless told otherwise.
    pub const DEFAULT_HZ: i32 = 499;

    /// Starts sampling here, and in every worker process started from now
    /// on, at [`Profiler::DEFAULT_HZ`].
    pub fn start() -> Result<Profiler, Error> {
        Profiler::start_at(Profiler::DEFAULT_HZ)
    }

    /// As [`Profiler::start`], at `hz` samples per second.
    ///
    /// NOTE: it sets two environment variables of this process, which
    /// worker processes inherit; call it before starting threads that read
    /// or write the environment.
    pub fn start_at(hz: i32) -> Result<Profiler, Error> {
        let dir = std::env::temp_dir().join(format!(
            "multitasking-profile-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io("creating the profile directory", e))?;
        let guard = sampler(hz)?;
        // SAFETY-free but global: inherited by the workers started later.
        std::env::set_var(ENV_DIR, &dir);
        std::env::set_var(ENV_HZ, hz.to_string());
        Ok(Profiler { guard, dir })
    }

    /// Stops sampling and merges this process's stacks with those every
    /// worker wrote. Workers still running go on sampling into their files
    /// until they exit; drop their pools first to have all of it.
    pub fn finish(self) -> Result<Profile, Error> {
        std::env::remove_var(ENV_DIR);
        std::env::remove_var(ENV_HZ);
        let report = self
            .guard
            .report()
            .build()
            .map_err(|e| Error::Config(format!("building the profile: {e}")))?;
        let mut profile = Profile::default();
        profile.add_lines(&collapse(&report, std::process::id()));
        profile.processes = 1;
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io("reading the profile directory", e))?;
        for entry in entries.flatten() {
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                profile.add_lines(&text);
                profile.processes += 1;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(profile)
    }
}

fn sampler(hz: i32) -> Result<pprof::ProfilerGuard<'static>, Error> {
    pprof::ProfilerGuardBuilder::default()
        .frequency(hz)
        .blocklist(&BLOCKLIST)
        .build()
        .map_err(|e| Error::Config(format!("starting the profiler: {e}")))
}

/// The task a stack ran in: the `T` of its innermost `<T as Task>::run`
/// frame, short of the crate path's first segment.
fn task_of(frames: &[String]) -> Option<String> {
    frames.iter().rev().find_map(|f| {
        let rest = f.strip_prefix('<')?;
        let (task, _) = rest.split_once(" as multitasking::task::Task>::run")?;
        Some(task.to_string())
    })
}

/// A report's stacks as collapsed lines rooted at their task, then the
/// process: `task;pid N;root frame;...;leaf frame count`.
fn collapse(report: &pprof::Report, pid: u32) -> String {
    let mut out = String::new();
    for (key, count) in &report.data {
        if *count <= 0 {
            continue;
        }
        // pprof keeps a stack leaf first, each frame's inlined calls last.
        let frames: Vec<String> = key
            .frames
            .iter()
            .rev()
            .flat_map(|f| f.iter().rev().map(|s| s.name().replace(';', ":")))
            .collect();
        let task = task_of(&frames).unwrap_or_else(|| OUTSIDE.to_string());
        let _ = writeln!(
            out,
            "{};pid {pid};{} {count}",
            task.replace(';', ":"),
            frames.join(";")
        );
    }
    out
}

/// Started in a worker process when a profiler asked for it: samples it,
/// and writes its stacks every [`FLUSH`] and when dropped.
pub(crate) struct WorkerProfile {
    /// The sampler.
    guard: Option<pprof::ProfilerGuard<'static>>,
    /// This worker's stacks file.
    path: PathBuf,
    /// Stops the flusher.
    stop: Arc<AtomicBool>,
    /// The flusher thread.
    flusher: Option<std::thread::JoinHandle<pprof::ProfilerGuard<'static>>>,
}

/// Starts sampling this worker if a profiler asked for it.
pub(crate) fn in_worker() -> Option<WorkerProfile> {
    let dir = PathBuf::from(std::env::var_os(ENV_DIR)?);
    let hz = std::env::var(ENV_HZ)
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(Profiler::DEFAULT_HZ);
    // A task's own child processes are not profiled.
    std::env::remove_var(ENV_DIR);
    std::env::remove_var(ENV_HZ);
    let guard = sampler(hz).ok()?;
    let path = dir.join(format!("{}.folded", std::process::id()));
    let stop = Arc::new(AtomicBool::new(false));
    let flusher = {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::Builder::new()
            .name("multitasking-profile".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(FLUSH);
                    write_stacks(&guard, &path);
                }
                guard
            })
            .ok()
    };
    Some(WorkerProfile {
        guard: None,
        path,
        stop,
        flusher,
    })
}

/// Writes `guard`'s stacks so far to `path`, replacing what was there (a
/// rename, so that a reader never sees half a file).
fn write_stacks(guard: &pprof::ProfilerGuard<'static>, path: &Path) {
    if let Ok(report) = guard.report().build() {
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, collapse(&report, std::process::id())).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

impl Drop for WorkerProfile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(f) = self.flusher.take() {
            self.guard = f.join().ok();
        }
        if let Some(guard) = &self.guard {
            write_stacks(guard, &self.path);
        }
    }
}

/// Stacks from every process of a run, merged by task.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// `task;frame;...;frame` to samples.
    stacks: BTreeMap<String, u64>,
    /// Processes whose stacks are in.
    processes: usize,
}

/// One function's samples within a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRow {
    /// The task it ran in (or `(outside tasks)`).
    pub task: String,
    /// The function.
    pub function: String,
    /// Samples with it on top of the stack (its own time).
    pub self_samples: u64,
    /// Samples with it anywhere in the stack (its own and its callees').
    pub cumulative_samples: u64,
}

impl Profile {
    fn add_lines(&mut self, text: &str) {
        for line in text.lines() {
            if let Some((stack, n)) = line.rsplit_once(' ') {
                if let Ok(n) = n.parse::<u64>() {
                    *self.stacks.entry(stack.to_string()).or_insert(0) += n;
                }
            }
        }
    }

    /// Processes whose stacks are in: this one and each worker that wrote.
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// Samples in all.
    pub fn samples(&self) -> u64 {
        self.stacks.values().sum()
    }

    /// Samples per task, most first.
    pub fn tasks(&self) -> Vec<(String, u64)> {
        let mut by: BTreeMap<&str, u64> = BTreeMap::new();
        for (stack, n) in &self.stacks {
            let task = stack.split(';').next().unwrap_or("");
            *by.entry(task).or_insert(0) += n;
        }
        let mut v: Vec<_> = by.into_iter().map(|(t, n)| (t.to_string(), n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// The merged flamegraph (SVG): rooted at the tasks, then a frame per
    /// process that ran them.
    pub fn flamegraph(&self, w: impl std::io::Write) -> Result<(), Error> {
        let lines: Vec<String> = self
            .stacks
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        let mut opts = inferno::flamegraph::Options::default();
        opts.title = format!(
            "multitask: {} samples from {} processes, by task",
            self.samples(),
            self.processes
        );
        if lines.is_empty() {
            return Err(Error::Config("the profile has no samples".to_string()));
        }
        inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), w)
            .map_err(|e| Error::Config(format!("drawing the flamegraph: {e}")))
    }

    /// Each task's functions by own samples, most first: `top` per task.
    pub fn functions(&self, top: usize) -> Vec<FunctionRow> {
        // (task, function) -> (self, cumulative)
        let mut by: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for (stack, n) in &self.stacks {
            let mut parts = stack.split(';');
            let task = parts.next().unwrap_or("").to_string();
            // The process level is for the flamegraph; a function's time
            // is summed over the processes that ran it.
            let frames: Vec<&str> = parts.skip(1).collect();
            let mut seen = std::collections::HashSet::new();
            for (i, f) in frames.iter().enumerate() {
                let e = by.entry((task.clone(), f.to_string())).or_insert((0, 0));
                if seen.insert(*f) {
                    e.1 += n;
                }
                if i + 1 == frames.len() {
                    e.0 += n;
                }
            }
        }
        let mut rows: Vec<FunctionRow> = by
            .into_iter()
            .map(|((task, function), (s, c))| FunctionRow {
                task,
                function,
                self_samples: s,
                cumulative_samples: c,
            })
            .collect();
        rows.sort_by(|a, b| {
            a.task
                .cmp(&b.task)
                .then(b.self_samples.cmp(&a.self_samples))
                .then(b.cumulative_samples.cmp(&a.cumulative_samples))
        });
        let mut out = Vec::new();
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for r in rows {
            let c = count.entry(r.task.clone()).or_insert(0);
            if *c < top && (r.self_samples > 0 || *c < top / 2) {
                *c += 1;
                out.push(r);
            }
        }
        out
    }

    /// A cProfile-like table: per task (most samples first), its `top`
    /// functions by own time, with their own and cumulative share.
    pub fn table(&self, top: usize) -> String {
        let total = self.samples().max(1) as f64;
        let rows = self.functions(top);
        let mut s = format!(
            "{} samples from {} processes\n",
            self.samples(),
            self.processes
        );
        for (task, n) in self.tasks() {
            let _ = writeln!(
                s,
                "\n{task}: {n} samples ({:.1}%)",
                n as f64 * 100.0 / total
            );
            let _ = writeln!(s, "  {:>7} {:>7}  function", "self%", "cum%");
            for r in rows.iter().filter(|r| r.task == task) {
                let _ = writeln!(
                    s,
                    "  {:>6.1}% {:>6.1}%  {}",
                    r.self_samples as f64 * 100.0 / total,
                    r.cumulative_samples as f64 * 100.0 / total,
                    r.function
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_merge_by_task_and_tabulate() {
        let mut p = Profile::default();
        p.add_lines("t::a;pid 1;main;run;work 6\nt::a;pid 1;main;run 2\n(outside tasks);pid 1;main;idle 2\n");
        p.add_lines("t::a;pid 2;main;run;work 4\n");
        p.processes = 2;
        assert_eq!(p.samples(), 14);
        assert_eq!(p.tasks()[0], ("t::a".to_string(), 12));
        let rows = p.functions(5);
        let work = rows.iter().find(|r| r.function == "work").unwrap();
        assert_eq!((work.self_samples, work.cumulative_samples), (10, 10));
        let run = rows.iter().find(|r| r.function == "run").unwrap();
        assert_eq!((run.self_samples, run.cumulative_samples), (2, 12));
        assert!(p.table(5).contains("t::a: 12 samples"));
        let mut svg = Vec::new();
        p.flamegraph(&mut svg).unwrap();
        assert!(String::from_utf8(svg).unwrap().contains("<svg"));
    }

    #[test]
    fn a_stack_belongs_to_its_innermost_task() {
        let frames = vec![
            "main".to_string(),
            "<app::outer as multitasking::task::Task>::run".to_string(),
            "<app::is_prime as multitasking::task::Task>::run".to_string(),
            "app::is_prime::body".to_string(),
        ];
        assert_eq!(task_of(&frames).as_deref(), Some("app::is_prime"));
        assert_eq!(task_of(&frames[..1]), None);
    }
}
