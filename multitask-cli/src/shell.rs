//! Running one command line with `sh -c` in its own process group, with a
//! timeout that kills the whole group, and the registry of live groups that
//! Ctrl-C and `--halt now` kill.
//!
//! Each job is the leader of a new process group, so a timeout can kill the
//! shell *and* everything it started (`sh -c 'sleep 10; echo'` leaves a
//! `sleep` a plain kill of the shell would orphan). Its stdout and stderr
//! are read to the end on two threads (a full pipe would otherwise stall
//! it); a third thread waits for the shell while this one waits on a
//! channel with the deadline.
//!
//! Because a job's group is not the terminal's foreground group, Ctrl-C
//! does not reach it: the binary's SIGINT handler kills every group in
//! [`kill_all`]'s registry. A job run by a worker process is in that
//! worker's registry instead; there the shell is started with
//! `PR_SET_PDEATHSIG`, so when the worker dies (it dies with the binary)
//! the shell is killed too.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::Duration;

use rustix::process::{kill_process_group, Pid, Signal};

/// How a shell ended.
#[derive(Debug)]
pub(crate) struct Finished {
    /// Its exit code, if it exited.
    pub(crate) code: Option<i32>,
    /// The signal that killed it, if one did.
    pub(crate) signal: Option<i32>,
    /// True if it was killed for running past the timeout.
    pub(crate) timed_out: bool,
    /// Its stdout.
    pub(crate) stdout: Vec<u8>,
    /// Its stderr.
    pub(crate) stderr: Vec<u8>,
}

/// Process groups of the jobs running in this process, by leader pid.
static LIVE: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Kills (SIGKILL) the process group of every job running in this process.
pub(crate) fn kill_all() {
    let live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    for &pgid in live.iter() {
        kill_group(pgid);
    }
}

fn kill_group(pgid: u32) {
    if let Some(pid) = Pid::from_raw(pgid as i32) {
        // ESRCH (the group is gone already) is the only likely error and
        // means there is nothing left to kill.
        let _ = kill_process_group(pid, Signal::KILL);
    }
}

/// A job's group in [`LIVE`], removed when dropped.
struct Registered(u32);

impl Drop for Registered {
    fn drop(&mut self) {
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
    }
}

/// Runs `cmd` with `sh -c`, killing its process group if it runs past
/// `timeout`. An error means the shell could not be started.
pub(crate) fn run(cmd: &str, timeout: Option<Duration>) -> io::Result<Finished> {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    die_with_spawning_thread(&mut command);

    // Hold the registry lock across spawn so Ctrl-C never misses a group
    // that exists but is not yet registered.
    let (mut child, registered) = {
        let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        let child = command.spawn()?;
        live.insert(child.id());
        let id = child.id();
        (child, Registered(id))
    };
    let pgid = registered.0;
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);

    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let mut timed_out = false;
    let status = match timeout {
        Some(t) => match rx.recv_timeout(t) {
            Ok(status) => status,
            Err(_) => {
                kill_group(pgid);
                timed_out = true;
                rx.recv()
                    .unwrap_or_else(|_| Err(io::Error::other("waiter lost")))
            }
        },
        None => rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("waiter lost"))),
    }?;
    drop(registered);

    // NOTE: a background process the job left running keeps its pipes open
    // and these joins wait for it, as GNU parallel does; a timed-out job's
    // whole group is dead, so they end.
    let join = |h: Option<thread::JoinHandle<Vec<u8>>>| {
        h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    };
    Ok(Finished {
        code: status.code(),
        signal: status.signal(),
        timed_out,
        stdout: join(stdout),
        stderr: join(stderr),
    })
}

/// Reads `pipe` to the end on its own thread.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Makes the kernel SIGKILL the shell when the thread that spawned it dies,
/// e.g. when the worker process running the job is killed.
fn die_with_spawning_thread(command: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe work is allowed. It makes one prctl system
    // call through rustix, which neither allocates nor takes a lock, and
    // converts its error code, which does not allocate either.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                .map_err(io::Error::from)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_timeout_kills_the_whole_group() {
        let t = Instant::now();
        // The `sleep` is the shell's child: killing only the shell would
        // leave it holding the pipes and this call waiting 10 s.
        let done = run("sleep 10; echo late", Some(Duration::from_millis(200))).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(done.timed_out);
        assert_eq!((done.code, done.signal), (None, Some(9)));
        assert!(done.stdout.is_empty());
    }

    #[test]
    fn output_and_code_come_back() {
        let done = run("printf a; printf b >&2; exit 4", None).unwrap();
        assert_eq!((done.code, done.timed_out), (Some(4), false));
        assert_eq!((&done.stdout[..], &done.stderr[..]), (&b"a"[..], &b"b"[..]));
    }
}
