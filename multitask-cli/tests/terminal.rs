//! `multitask run` as a terminal user sees it: the progress bar (its
//! total, its rate, under `NO_COLOR`), `--bar` where stderr is not a
//! terminal, the warning when arguments would be read from the terminal,
//! and usage errors as one line with exit status 2.
//!
//! A terminal is had from `script(1)` (util-linux), which runs the
//! command on a pseudo-terminal and copies what it shows to its stdout.
//! Every run is bounded: a hang kills the child and fails the test.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Runs `program ARGS` with `env` and `stdin`; (exit code, stdout,
/// stderr), failing the test after 60 s.
fn run(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
) -> (Option<i32>, String, String) {
    let limit = Duration::from_secs(60);
    let start = Instant::now();
    let mut command = Command::new(program);
    // The caller's NO_COLOR, never the one the tests run under.
    command
        .env_remove("NO_COLOR")
        .args(args)
        .envs(env.iter().copied());
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let mut pipe = child.stdin.take().expect("stdin piped");
    let input = stdin.to_vec();
    thread::spawn(move || {
        let _ = pipe.write_all(&input);
        // Keep the pipe open a moment: script(1) ends the session at EOF.
        thread::sleep(Duration::from_secs(3));
    });
    let read = |mut p: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = Vec::new();
            let _ = p.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = read(Box::new(child.stdout.take().expect("stdout")));
    let err = read(Box::new(child.stderr.take().expect("stderr")));
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} still running after {limit:?}; killed it");
        }
        thread::sleep(Duration::from_millis(10));
    };
    (
        status.code(),
        out.join().expect("stdout"),
        err.join().expect("stderr"),
    )
}

/// What a terminal shows while `multitask ARGS` runs on it, or `None`
/// without script(1) (a failure under `CI=true`).
fn on_terminal(args: &str, env: &[(&str, &str)], stdin: &[u8]) -> Option<String> {
    let have = Command::new("script")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "script(1) is missing"
        );
        eprintln!("script(1) is missing: skipping");
        return None;
    }
    let line = format!("'{}' {args}", env!("CARGO_BIN_EXE_multitask"));
    let mut env = env.to_vec();
    env.push(("TERM", "xterm-256color"));
    let (code, out, err) = run("script", &["-qec", &line, "/dev/null"], &env, stdin);
    assert_eq!(code, Some(0), "{out}{err}");
    Some(out)
}

/// The rates a bar showed (`12.3/s`).
fn rates(screen: &str) -> Vec<&str> {
    screen
        .split(['(', ',', ' '])
        .filter(|w| w.ends_with("/s"))
        .collect()
}

const FOUR_JOBS: &str = "run -e threads -j 2 'sleep 0.2; echo {}' ::: 1 2 3 4";

#[test]
fn the_bar_shows_the_total_and_a_readable_rate() {
    let Some(screen) = on_terminal(FOUR_JOBS, &[], b"") else {
        return;
    };
    assert!(
        screen.contains("0/4") && screen.contains("4/4"),
        "{screen:?}"
    );
    let rates = rates(&screen);
    assert!(!rates.is_empty(), "{screen:?}");
    for r in rates {
        let number = r.trim_end_matches("/s");
        let decimals = number.split('.').nth(1).map_or(0, str::len);
        assert!(
            number.parse::<f64>().is_ok() && decimals <= 2,
            "rate {r:?} in {screen:?}"
        );
    }
    // Coloured on a terminal...
    assert!(screen.contains("\x1b[36m"), "{screen:?}");
    // ...and every job's output is there once, on a line of its own.
    let lines: Vec<String> = screen
        .replace("\x1b[2K", "")
        .split(['\r', '\n'])
        .map(String::from)
        .collect();
    for n in ["1", "2", "3", "4"] {
        assert_eq!(lines.iter().filter(|l| *l == n).count(), 1, "{screen:?}");
    }
}

#[test]
fn no_color_keeps_the_bar_and_drops_the_colour() {
    let Some(screen) = on_terminal(FOUR_JOBS, &[("NO_COLOR", "1")], b"") else {
        return;
    };
    assert!(screen.contains("4/4"), "{screen:?}");
    assert!(
        !screen.contains("\x1b[36m") && !screen.contains("\x1b[34m"),
        "{screen:?}"
    );
}

#[test]
fn quiet_turns_the_bar_off() {
    let args = format!("--quiet {FOUR_JOBS}");
    let Some(screen) = on_terminal(&args, &[], b"") else {
        return;
    };
    assert!(!screen.contains("/4"), "{screen:?}");
}

#[test]
fn bar_draws_where_stderr_is_not_a_terminal() {
    let exe = env!("CARGO_BIN_EXE_multitask");
    let (code, out, err) = run(
        exe,
        &[
            "run", "-e", "threads", "--bar", "echo", ":::", "a", "b", "c",
        ],
        &[],
        b"",
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(err.contains("3/3"), "{err:?}");
    let (_, _, err) = run(exe, &["run", "-e", "threads", "echo", ":::", "a"], &[], b"");
    assert!(
        !err.contains("1/1"),
        "no bar unless asked off a terminal: {err:?}"
    );
}

#[test]
fn reading_arguments_from_the_terminal_warns() {
    let Some(screen) = on_terminal("run -k -e threads echo", &[], b"a\nb\n\x04") else {
        return;
    };
    assert!(
        screen.contains("reading arguments from the terminal"),
        "{screen:?}"
    );
    assert!(
        screen.contains("a\r\n") && screen.contains("b\r\n"),
        "{screen:?}"
    );
}

#[test]
fn usage_errors_are_one_line_and_exit_2() {
    let exe = env!("CARGO_BIN_EXE_multitask");
    for args in [
        &["run", "-j", "many", "true", ":::", "a"][..],
        &["run", "--halt", "sometimes", "true", ":::", "a"],
        &["run", "--halt", "now,fail=0", "true", ":::", "a"],
        &["run", "--timeout", "x%", "true", ":::", "a"],
        &["run", "echo", "::::", "/no/such/file"],
        &["run", "-a", "/no/such/file", "echo"],
        &["run", "-X", "-n", "2", "echo", ":::", "a"],
        &["run", "--resume", "echo", ":::", "a"],
        &["run", "--block", "1M", "cat"],
        &["run", "echo", ":::+", "a"],
        &["run", ":::", "a"],
        &["run", "echo", "{=uc=}", ":::", "a"],
        &["run", "--colsep", "a|b", "echo", ":::", "a"],
        &["run", "--pipe", "cat", ":::", "a"],
    ] {
        let (code, out, err) = run(exe, args, &[], b"");
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("multitask: error: "), "{args:?}: {err}");
    }
}
