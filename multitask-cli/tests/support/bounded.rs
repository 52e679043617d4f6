//! Runs a program with its output read on threads and a deadline, for the
//! CLI test binaries: a hang kills the child and fails the test with a
//! message, never a CI timeout.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// What a bounded run did.
#[derive(Debug)]
pub(crate) struct Finished {
    /// The exit code (`None` if killed by a signal).
    pub(crate) code: Option<i32>,
    /// Its stdout.
    pub(crate) stdout: String,
    /// Its stderr.
    pub(crate) stderr: String,
    /// How long it ran.
    // Not every test binary that includes this file reads it.
    #[allow(dead_code)]
    pub(crate) elapsed: Duration,
}

/// Runs `command` (its program, arguments, environment and directory set
/// by the caller) with `stdin` fed from a thread, killing it and failing
/// the test after `limit`; `what` names it in that failure.
pub(crate) fn run_bounded(
    mut command: Command,
    stdin: Option<&str>,
    limit: Duration,
    what: &str,
) -> Finished {
    let start = Instant::now();
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin piped");
        let text = text.to_string();
        thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        });
    }
    let read = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout piped")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr piped")));
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {limit:?}; killed it");
        }
        thread::sleep(Duration::from_millis(5));
    };
    Finished {
        code: status.code(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
        elapsed: start.elapsed(),
    }
}
