//! The job log, `--retries`, `--resume`, `--results`, tags, output modes,
//! `--pipe`, timeouts and `--delay` through both, and the differences on
//! purpose (multitask alone).

use std::time::{Duration, Instant};

use std::path::Path;

use crate::{gnu_parallel, run_in, same, same_lines, same_with, scratch, Ran};

/// The job log's rows without the time columns, sorted by job number.
fn joblog_rows(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).expect("job log written");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand")
    );
    let mut rows: Vec<Vec<String>> = lines
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert_eq!(cols.len(), 9, "{l}");
            assert!(cols[2].parse::<f64>().is_ok() && cols[3].trim().parse::<f64>().is_ok());
            [0, 1, 4, 5, 6, 7, 8]
                .iter()
                .map(|&i| cols[i].to_string())
                .collect()
        })
        .collect();
    rows.sort_by_key(|r| r[0].parse::<u64>().unwrap_or(0));
    rows
}

/// A run and its job log's rows.
type Logged = (Ran, Vec<Vec<String>>);

/// Runs `args` (with `--joblog log` first) through both, each in its own
/// directory holding `setup` files; the job logs' rows and each run.
fn with_joblog(args: &[&str], setup: &[(&str, &str)]) -> Option<(Logged, Logged)> {
    let parallel = gnu_parallel()?;
    let mut out = Vec::new();
    for program in [
        parallel.as_path(),
        Path::new(env!("CARGO_BIN_EXE_multitask")),
    ] {
        let dir = scratch("joblog");
        for (name, text) in setup {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let mut full: Vec<&str> = if program == parallel {
            vec!["--will-cite"]
        } else {
            vec!["run"]
        };
        full.extend_from_slice(&["--joblog", "log"]);
        full.extend_from_slice(args);
        let ran = run_in(program, &full, None, &dir);
        let rows = joblog_rows(&dir.join("log"));
        let _ = std::fs::remove_dir_all(&dir);
        out.push((ran, rows));
    }
    let ours = out.pop()?;
    let theirs = out.pop()?;
    Some((theirs, ours))
}

#[test]
fn joblog_columns_agree() {
    let Some(((tr, tl), (or, ol))) =
        with_joblog(&["-k", "echo {}; exit {}", ":::", "0", "3", "0"], &[])
    else {
        return;
    };
    assert_eq!((or.stdout, or.code, ol), (tr.stdout, tr.code, tl));
}

#[test]
fn retries_count_runs_in_all() {
    // --retries 3: three runs in all, one log line, the last run's output.
    let cmd = "echo x >> runs; echo out; false";
    let Some(((tr, tl), (or, ol))) = with_joblog(&["--retries", "3", cmd, ":::", "a"], &[]) else {
        return;
    };
    assert_eq!((or.stdout, or.code, ol), (tr.stdout, tr.code, tl));
    let dir = scratch("retries");
    let ran = run_in(
        Path::new(env!("CARGO_BIN_EXE_multitask")),
        &["run", "--retries", "3", "echo x >> runs; false", ":::", "a"],
        None,
        &dir,
    );
    let runs = std::fs::read_to_string(dir.join("runs")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        (ran.code, runs.lines().count()),
        (Some(1), 3),
        "{}",
        ran.stderr
    );
}

#[test]
fn resume_and_resume_failed_agree() {
    let parallel = match gnu_parallel() {
        Some(p) => p,
        None => return,
    };
    let mut logs = Vec::new();
    for program in [
        parallel.as_path(),
        Path::new(env!("CARGO_BIN_EXE_multitask")),
    ] {
        let dir = scratch("resume");
        let first: &[&str] = if program == parallel {
            &["--will-cite"]
        } else {
            &["run"]
        };
        let go = |extra: &[&str]| {
            let mut a = first.to_vec();
            a.extend_from_slice(extra);
            run_in(program, &a, None, &dir)
        };
        let one = go(&["-k", "--joblog", "log", "exit {}", ":::", "0", "1", "0"]);
        let two = go(&[
            "-k",
            "--resume",
            "--joblog",
            "log",
            "echo {}; exit {}",
            ":::",
            "0",
            "1",
            "0",
            "5",
        ]);
        let three = go(&[
            "-k",
            "--resume-failed",
            "--joblog",
            "log",
            "echo {}; exit 0",
            ":::",
            "0",
            "1",
            "0",
            "5",
            "6",
        ]);
        let rows = joblog_rows(&dir.join("log"));
        let _ = std::fs::remove_dir_all(&dir);
        logs.push((
            one.code,
            two.stdout,
            two.code,
            three.stdout,
            three.code,
            rows,
        ));
    }
    assert_eq!(
        logs[1], logs[0],
        "multitask (left) and GNU parallel (right)"
    );
}

#[test]
fn results_layout_agrees() {
    let parallel = match gnu_parallel() {
        Some(p) => p,
        None => return,
    };
    let mut trees = Vec::new();
    for program in [
        parallel.as_path(),
        Path::new(env!("CARGO_BIN_EXE_multitask")),
    ] {
        let dir = scratch("results");
        let first: &str = if program == parallel {
            "--will-cite"
        } else {
            "run"
        };
        let ran = run_in(
            program,
            &[
                first,
                "-k",
                "--results",
                "out",
                "echo {1}-{2}; echo e >&2",
                ":::",
                "a/b",
                "c",
                ":::",
                "1",
            ],
            None,
            &dir,
        );
        let mut files = Vec::new();
        let mut stack = vec![dir.join("out")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("results dir").flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned();
                    files.push((rel, std::fs::read_to_string(&p).unwrap_or_default()));
                }
            }
        }
        files.sort();
        let _ = std::fs::remove_dir_all(&dir);
        trees.push((ran.stdout, ran.code, files));
    }
    assert_eq!(
        trees[1], trees[0],
        "multitask (left) and GNU parallel (right)"
    );
}

#[test]
fn tags_agree() {
    same(&["-k", "--tag", "echo", ":::", "a", "b", ":::", "1"]);
    same(&["-k", "--tagstring", "<{}>", "echo", "hi", ":::", "a"]);
    same(&[
        "-k",
        "--tagstring",
        "{2}:{#}",
        "printf",
        "'x\\ny\\n'",
        ":::",
        "a",
        ":::",
        "b",
    ]);
}

#[test]
fn output_modes_agree() {
    // --line-buffer and --ungroup print as the jobs write (when is the
    // CLI tests' business); the lines are the same set, and --tag
    // prefixes each line of a line-buffered job, not only its first.
    same_lines(&["--line-buffer", "echo", ":::", "a", "b", "c"]);
    same_lines(&["--ungroup", "echo", ":::", "a", "b", "c"]);
    same_lines(&[
        "--line-buffer",
        "--tag",
        "echo {}; sleep 0.1; echo {}{}; printf 'x\\ny\\n' >&2",
        ":::",
        "a",
        "b",
        "c",
    ]);
    same_lines(&[
        "--line-buffer",
        "--tagstring",
        "{#}",
        "printf '1\\n2\\n3\\n'",
        ":::",
        "a",
        "b",
    ]);
    same(&["-k", "--line-buffer", "echo", ":::", "a", "b", "c"]);
    // -k with --line-buffer: each job's lines whole and in input order,
    // however the jobs' writes interleave, tagged or not.
    same(&[
        "-k",
        "--line-buffer",
        "-j",
        "3",
        "echo {}1; sleep 0.{}; echo {}2",
        ":::",
        "3",
        "1",
        "2",
    ]);
    same(&[
        "-k",
        "--line-buffer",
        "--tag",
        "printf '%s\\n' {}x {}y; sleep 0.{}",
        ":::",
        "2",
        "1",
    ]);
}

#[test]
fn pipe_agrees() {
    let ten: String = (1..=10).map(|i| format!("{i}\n")).collect();
    same_with(&["-k", "--pipe", "-N", "3", "wc", "-l"], Some(&ten));
    same_with(&["-k", "--pipe", "-N", "4", "cat"], Some(&ten));
    same_with(&["-k", "--pipe", "-N", "4", "echo {#}; cat"], Some(&ten));
    let many: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    same_with(
        &["-k", "--pipe", "--block", "100k", "wc", "-c"],
        Some(&many),
    );
    same_with(&["-k", "--pipe", "--block", "64K", "md5sum"], Some(&many));
    same_with(&["-k", "--pipe", "wc", "-l"], Some(&many));
    // Every record reaches exactly one job, in order with -k.
    same_with(
        &["-k", "-j", "4", "--pipe", "--block", "10k", "cat"],
        Some(&many),
    );
}

#[test]
fn pipe_joblog_agrees() {
    let parallel = match gnu_parallel() {
        Some(p) => p,
        None => return,
    };
    let ten: String = (1..=10).map(|i| format!("{i}\n")).collect();
    let mut logs = Vec::new();
    for program in [
        parallel.as_path(),
        Path::new(env!("CARGO_BIN_EXE_multitask")),
    ] {
        let dir = scratch("pipelog");
        let first: &str = if program == parallel {
            "--will-cite"
        } else {
            "run"
        };
        let ran = run_in(
            program,
            &[first, "-k", "--joblog", "log", "--pipe", "-N", "4", "cat"],
            Some(&ten),
            &dir,
        );
        logs.push((ran.stdout, ran.code, joblog_rows(&dir.join("log"))));
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert_eq!(
        logs[1], logs[0],
        "multitask (left) and GNU parallel (right)"
    );
}

#[test]
fn timeouts_agree() {
    same(&[
        "-k",
        "--timeout",
        "1",
        "sleep {}; echo {}",
        ":::",
        "0.1",
        "5",
        "0.2",
    ]);
    // P% of the median: the quick jobs set the median, the slow one is
    // killed. -j 1 so the median is known before the slow job starts.
    same(&[
        "-k",
        "-j",
        "1",
        "--timeout",
        "1000%",
        "sleep {}; echo {}",
        ":::",
        "0.1",
        "0.1",
        "0.1",
        "5",
    ]);
}

#[test]
fn delay_agrees() {
    let start = Instant::now();
    same(&["-k", "--delay", "0.3", "echo", ":::", "a", "b", "c"]);
    // Both runs waited 2 x 0.3 s at least.
    assert!(start.elapsed() >= Duration::from_millis(1200) || gnu_parallel().is_none());
}

/// Where multitask differs from GNU parallel on purpose; only multitask's
/// side is run.
#[test]
fn documented_differences() {
    let ours = |args: &[&str]| {
        let mut a = vec!["run"];
        a.extend_from_slice(args);
        let dir = scratch("diff");
        let ran = run_in(Path::new(env!("CARGO_BIN_EXE_multitask")), &a, None, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        ran
    };
    // GNU parallel retries forever with --retries 0; multitask runs once.
    let ran = ours(&["--retries", "0", "false", ":::", "a"]);
    assert_eq!(ran.code, Some(1));
    // GNU parallel exits 255 on a missing input file; multitask calls it a
    // usage error: 2, one line.
    let ran = ours(&["echo", "::::", "no-such-file"]);
    assert_eq!(ran.code, Some(2));
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
    // A --colsep regular expression and {= perl =} are refused, not
    // matched differently.
    for args in [
        &["--colsep", "[,;]", "echo", ":::", "a"][..],
        &["echo", "{=s/a/b/=}", ":::", "a"],
        &["--pipe", "cat", ":::", "a"],
    ] {
        let ran = ours(args);
        assert_eq!(ran.code, Some(2), "{args:?}: {}", ran.stderr);
        assert!(
            ran.stderr.starts_with("multitask: error: "),
            "{}",
            ran.stderr
        );
        assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
    }
}
