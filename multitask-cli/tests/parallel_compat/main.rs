//! The same command lines through GNU parallel and through `multitask
//! run`: the jobs run, their order with `-k`, their output, the exit
//! status and the job log's columns (times aside) must agree, option by
//! option.
//!
//! GNU parallel runs with `--will-cite` and a fresh temporary `HOME`, so it
//! asks nothing and reads no user configuration. Without it the tests
//! skip with a note, except under `CI=true`, where a missing GNU parallel
//! is a failure (`scripts/test.sh` installs it). Where multitask differs
//! on purpose, the test says so and checks multitask's side alone; the
//! README lists the same differences.
//!
//! Every run is bounded: a hang kills the child and fails the test.
//!
//! `inputs` covers sources, replacement strings, quoting and argument
//! groups; `jobs` slots, order, exit status and `--halt`; `records` the
//! job log, `--retries`, `--resume`, `--results`, tags, `--pipe`,
//! timeouts, `--delay` and the differences on purpose.

#[path = "../support/bounded.rs"]
mod bounded;
mod inputs;
mod jobs;
mod records;

use bounded::run_bounded;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ran {
    /// The exit code (`None` if killed by a signal).
    pub(crate) code: Option<i32>,
    /// Its stdout.
    pub(crate) stdout: String,
    /// Its stderr.
    pub(crate) stderr: String,
}

/// GNU parallel, if it is installed; under `CI=true` its absence panics.
pub(crate) fn gnu_parallel() -> Option<PathBuf> {
    for p in ["/usr/bin/parallel", "/usr/local/bin/parallel"] {
        if Path::new(p).exists() {
            return Some(PathBuf::from(p));
        }
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("parallel"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "GNU parallel is not installed and CI=true: the compatibility tests need it \
             (scripts/test.sh installs it with apt-get)"
        );
        eprintln!("GNU parallel is not installed: skipping the comparison");
    }
    found
}

/// A fresh directory under the temp dir, for a HOME or job files.
pub(crate) fn scratch(what: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "multitask-compat-{}-{what}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch dir");
    dir
}

/// Runs `program ARGS` in `dir` with `stdin`, failing after 60 s.
pub(crate) fn run_in(program: &Path, args: &[&str], stdin: Option<&str>, dir: &Path) -> Ran {
    let home = scratch("home");
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(dir)
        .env("HOME", &home)
        .env_remove("PARALLEL")
        .env_remove("NO_COLOR");
    let what = format!("{} {args:?}", program.display());
    let done = run_bounded(command, stdin, Duration::from_secs(60), &what);
    let _ = std::fs::remove_dir_all(&home);
    Ran {
        code: done.code,
        stdout: done.stdout,
        stderr: done.stderr,
    }
}

/// `ARGS` through GNU parallel and through `multitask run`, in `dir`.
pub(crate) fn both_in(args: &[&str], stdin: Option<&str>, dir: &Path) -> Option<(Ran, Ran)> {
    let parallel = gnu_parallel()?;
    let mut p_args = vec!["--will-cite"];
    p_args.extend_from_slice(args);
    let theirs = run_in(&parallel, &p_args, stdin, dir);
    let mut m_args = vec!["run"];
    m_args.extend_from_slice(args);
    let ours = run_in(
        Path::new(env!("CARGO_BIN_EXE_multitask")),
        &m_args,
        stdin,
        dir,
    );
    Some((theirs, ours))
}

pub(crate) fn both(args: &[&str], stdin: Option<&str>) -> Option<(Ran, Ran)> {
    let dir = scratch("cwd");
    let out = both_in(args, stdin, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// Asserts the same stdout, byte for byte, and the same exit status.
pub(crate) fn same(args: &[&str]) {
    same_with(args, None);
}

pub(crate) fn same_with(args: &[&str], stdin: Option<&str>) {
    let Some((theirs, ours)) = both(args, stdin) else {
        return;
    };
    assert_eq!(
        (&ours.stdout, ours.code),
        (&theirs.stdout, theirs.code),
        "{args:?}: multitask (left) and GNU parallel (right) differ\n\
         multitask stderr: {}\nparallel stderr: {}",
        ours.stderr,
        theirs.stderr
    );
}

/// Asserts the same lines in any order (runs without `-k`) and the same
/// exit status.
pub(crate) fn same_lines(args: &[&str]) {
    let Some((theirs, ours)) = both(args, None) else {
        return;
    };
    let sorted = |s: &str| {
        let mut l: Vec<String> = s.lines().map(String::from).collect();
        l.sort();
        l
    };
    assert_eq!(
        (sorted(&ours.stdout), ours.code),
        (sorted(&theirs.stdout), theirs.code),
        "{args:?}: multitask (left) and GNU parallel (right) differ\n{}",
        ours.stderr
    );
}
