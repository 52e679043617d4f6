//! Running one command line with `sh -c` in its own process group, with a
//! timeout that kills the whole group, and the registry of live groups that
//! Ctrl-C and `--halt now` kill.
//!
//! Each job is the leader of a new process group, so a timeout can kill the
//! shell *and* everything it started (`sh -c 'sleep 10; echo'` leaves a
//! `sleep` a plain kill of the shell would orphan). The calling thread
//! waits in `poll` on the shell's stdout and stderr (read as they fill, so
//! a full pipe never stalls it), a pidfd that turns readable when the shell
//! exits, and the deadline: no thread per job.
//!
//! Because a job's group is not the terminal's foreground group, Ctrl-C
//! does not reach it: the binary's SIGINT handler kills every group in
//! [`kill_all`]'s registry. A job run by a worker process is in that
//! worker's registry instead; there the shell is started with
//! `PR_SET_PDEATHSIG`, so when the worker dies (it dies with the binary)
//! the shell is killed too.
//!
//! That kills the shell, not what the shell started: a `sleep 300` in the
//! job's group outlived a killed worker, reparented to init. So `multitask
//! run` makes itself a child subreaper ([`adopt_orphans`]): whatever a dead
//! worker or shell leaves behind is reparented to this process instead,
//! and on Ctrl-C, SIGTERM or `--halt now` [`kill_descendants`] kills every
//! process below this one, with its process group, until none is left.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{kill_process_group, Pid, PidfdFlags, Signal};

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

/// Closes the executor of a run, so that no worker replaces one killed.
static CLOSE: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>> = std::sync::OnceLock::new();

/// Sets what [`stop_everything`] calls first: the run's executor closing,
/// with its queued jobs cancelled.
pub(crate) fn close_on_stop(close: impl Fn() + Send + Sync + 'static) {
    let _ = CLOSE.set(Box::new(close));
}

/// Ctrl-C, SIGTERM and `--halt now`: closes the run's executor (no job
/// starts, no worker is replaced), kills the jobs of this process, then
/// every process below it, within [`STOP_LIMIT`].
pub(crate) fn stop_everything() {
    STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(close) = CLOSE.get() {
        close();
    }
    kill_all();
    kill_descendants(STOP_LIMIT);
    let dirs = std::mem::take(&mut *SCRATCH.lock().unwrap_or_else(|p| p.into_inner()));
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Scratch directories of this process, removed by [`stop_everything`]
/// (an exit that skips destructors) if nothing removed them before.
static SCRATCH: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Has `dir` removed should the process stop from a signal or a halt.
pub(crate) fn remove_at_stop(dir: std::path::PathBuf) {
    SCRATCH.lock().unwrap_or_else(|p| p.into_inner()).push(dir);
}

/// Set by [`stop_everything`]: the process is about to exit.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True once [`stop_everything`] began: the run's outcomes from then on
/// are its own doing (closed pool, killed jobs) and are not reported.
pub(crate) fn stopping() -> bool {
    STOPPING.load(std::sync::atomic::Ordering::SeqCst)
}

/// For the main thread when another thread (the Ctrl-C handler) stops the
/// run: waits for that thread to exit the process, so that the run does
/// not end first with an exit status of its own. Exits with `status`
/// itself should that thread not get there.
pub(crate) fn await_stop(status: i32) -> ! {
    std::thread::sleep(STOP_LIMIT * 5);
    std::process::exit(status)
}

/// How long [`stop_everything`] goes on killing what jobs left behind.
const STOP_LIMIT: Duration = Duration::from_secs(2);

/// Makes this process the one that orphans below it are reparented to, so
/// that [`kill_descendants`] can find them. Call it before any job starts.
///
/// NOTE: an adopted orphan that exits stays a zombie until this process
/// exits; reaping with `waitpid(-1)` would take the process pool's own
/// workers' exits from it.
pub(crate) fn adopt_orphans() {
    // Without it (a kernel before 3.4) orphans go to init, as before.
    let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
}

/// Kills (SIGKILL) every process below this one and its process group, and
/// goes on until none is left (orphans of the killed reach this process,
/// see [`adopt_orphans`]) or `limit` passes; reaps the ones it killed.
fn kill_descendants(limit: Duration) {
    let me = std::process::id();
    let my_group = rustix::process::getpgrp().as_raw_nonzero().get() as u32;
    let deadline = Instant::now() + limit;
    loop {
        let below = descendants_of(me);
        if below.is_empty() {
            return;
        }
        for &(pid, pgid) in &below {
            if pgid != my_group {
                kill_group(pgid);
            }
            if let Some(pid) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
        for &(pid, _) in &below {
            if let Some(pid) = Pid::from_raw(pid as i32) {
                // Only this process's own children can be reaped; the rest
                // are reparented here as their parents die.
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
            }
        }
        if Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The live processes below `root` (zombies left out), with their process
/// groups, from `/proc`.
fn descendants_of(root: u32) -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    // (pid, parent, group) of every live process.
    let mut all = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (Some(state), Some(ppid), Some(pgrp)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if state == "Z" || state == "X" {
            continue;
        }
        if let (Ok(ppid), Ok(pgrp)) = (ppid.parse::<u32>(), pgrp.parse::<u32>()) {
            all.push((pid, ppid, pgrp));
        }
    }
    let mut below = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid, pgrp) in &all {
            if ppid == parent && pid != root {
                below.push((pid, pgrp));
                frontier.push(pid);
            }
        }
    }
    below
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
#[cfg(test)]
pub(crate) fn run(cmd: &str, timeout: Option<Duration>) -> io::Result<Finished> {
    run_with_input(cmd, None, timeout)
}

/// [`run`] with `input` on the shell's stdin (`--pipe`), written by a
/// thread of its own so that a job which writes before it reads cannot
/// deadlock against this one; without input stdin is `/dev/null`.
pub(crate) fn run_with_input(
    cmd: &str,
    input: Option<&[u8]>,
    timeout: Option<Duration>,
) -> io::Result<Finished> {
    run_streaming(cmd, input, timeout, None)
}

/// Which stream of a job a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// Its stdout.
    Stdout,
    /// Its stderr.
    Stderr,
}

/// Where [`run_streaming`] hands each chunk of output.
pub(crate) type Sink<'a> = &'a mut dyn FnMut(Stream, &[u8]);

/// [`run_with_input`], handing each chunk of output to `sink` as it is
/// read (`--line-buffer`, `--ungroup`) instead of keeping it: the
/// returned [`Finished`] then holds no output.
pub(crate) fn run_streaming(
    cmd: &str,
    input: Option<&[u8]>,
    timeout: Option<Duration>,
    mut sink: Option<Sink<'_>>,
) -> io::Result<Finished> {
    let mut command = shell_command(cmd);
    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
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
    if let (Some(input), Some(mut pipe)) = (input, child.stdin.take()) {
        let input = input.to_vec();
        // Not joined: a process the job left behind may hold the pipe
        // open unread; the thread ends when the last reader is gone. A
        // job that exits without reading it all gets EPIPE here, which is
        // its business, not an error of the run.
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = pipe.write_all(&input);
        });
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    // Without pidfds (Linux before 5.3) the exit is polled every 10 ms.
    let pidfd = rustix::process::pidfd_open(Pid::from_child(&child), PidfdFlags::empty()).ok();
    let mut pipes = [
        child.stdout.take().map(OwnedFd::from),
        child.stderr.take().map(OwnedFd::from),
    ];
    let mut output = [Vec::new(), Vec::new()];
    let mut exited = false;
    let mut timed_out = false;
    // NOTE: a background process the job left running keeps its pipes open
    // and this loop waits for it, as GNU parallel does; a timed-out job's
    // whole group is dead, so the pipes close.
    while !exited || pipes.iter().any(Option::is_some) {
        let mut fds: Vec<PollFd<'_>> = pipes
            .iter()
            .flatten()
            .map(|fd| PollFd::new(fd, PollFlags::IN))
            .collect();
        let watch_exit = !exited && pidfd.is_some();
        if let (true, Some(pidfd)) = (watch_exit, &pidfd) {
            fds.push(PollFd::new(pidfd, PollFlags::IN));
        }
        let mut wait = deadline
            .filter(|_| !timed_out)
            .map(|d| d.saturating_duration_since(Instant::now()));
        if !exited && pidfd.is_none() {
            wait = Some(wait.map_or(EXIT_POLL, |w| w.min(EXIT_POLL)));
        }
        let timespec = wait.map(|w| Timespec {
            tv_sec: w.as_secs() as i64,
            tv_nsec: i64::from(w.subsec_nanos()),
        });
        match rustix::event::poll(&mut fds, timespec.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        let mut i = 0;
        for (k, (pipe, buf)) in pipes.iter_mut().zip(&mut output).enumerate() {
            if pipe.is_none() {
                continue;
            }
            if ready[i] {
                let before = buf.len();
                let open = read_some(pipe.as_ref().expect("checked"), buf);
                if let Some(sink) = sink.as_mut() {
                    let stream = if k == 0 {
                        Stream::Stdout
                    } else {
                        Stream::Stderr
                    };
                    if buf.len() > before {
                        sink(stream, &buf[before..]);
                    }
                    buf.clear();
                }
                if !open {
                    *pipe = None;
                }
            }
            i += 1;
        }
        if !exited {
            exited = if watch_exit {
                ready[i]
            } else {
                child.try_wait()?.is_some()
            };
        }
        if !timed_out && deadline.is_some_and(|d| Instant::now() >= d) {
            kill_group(pgid);
            timed_out = true;
        }
    }
    let status = child.wait()?;
    drop(registered);
    let [stdout, stderr] = output;
    Ok(Finished {
        code: status.code(),
        signal: status.signal(),
        timed_out,
        stdout,
        stderr,
    })
}

/// The command that runs `cmd` as `sh -c cmd` would: the program itself
/// when `cmd` is plain words that the shell would pass on unchanged (see
/// [`plain_words`]) naming a program found on `PATH`, which saves starting
/// a shell per job (about 0.8 ms here, a tenth of a 20 ms job's run on two
/// CPUs); `sh -c` for everything else, including a program that is not
/// found, so the shell's message and exit code 127 stay its own.
fn shell_command(cmd: &str) -> Command {
    if let Some(words) = plain_words(cmd) {
        if let Some(path) = find_program(words[0]) {
            let mut command = Command::new(path);
            command.arg0(words[0]).args(&words[1..]);
            // dash exports PWD when it starts; do the same.
            if let Some(pwd) = shell_pwd() {
                command.env("PWD", pwd);
            }
            return command;
        }
    }
    let mut command = Command::new("sh");
    command.arg("-c").arg(cmd);
    command
}

/// The words of `cmd` if the shell would run it as one simple command
/// whose words reach the program unchanged: nothing but letters, digits
/// and `_ . / : , + = @ % -` separated by spaces or tabs (no quote, no
/// expansion, no redirection, no glob, no comment, no newline), a first
/// word that is no variable assignment, and a program that is no builtin
/// or keyword of a shell (`echo`, `true`, `cd`, `if` ... differ from or
/// have no program of their own).
fn plain_words(cmd: &str) -> Option<Vec<&str>> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_./:,+=@%-".contains(c);
    if !cmd.chars().all(|c| plain(c) || c == ' ' || c == '\t') {
        return None;
    }
    let words: Vec<&str> = cmd.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
    let program = *words.first()?;
    if program.contains('=') || (!program.contains('/') && SHELL_WORDS.contains(&program)) {
        return None;
    }
    Some(words)
}

/// Builtins and reserved words of dash and bash (as `sh` may be either)
/// that [`plain_words`] can let through.
const SHELL_WORDS: &[&str] = &[
    ".",
    ":",
    "alias",
    "bg",
    "bind",
    "break",
    "builtin",
    "caller",
    "case",
    "cd",
    "chdir",
    "command",
    "compgen",
    "complete",
    "compopt",
    "continue",
    "declare",
    "dirs",
    "disown",
    "do",
    "done",
    "echo",
    "elif",
    "else",
    "enable",
    "esac",
    "eval",
    "exec",
    "exit",
    "export",
    "false",
    "fc",
    "fg",
    "fi",
    "for",
    "function",
    "getopts",
    "hash",
    "help",
    "history",
    "if",
    "in",
    "jobs",
    "kill",
    "let",
    "local",
    "logout",
    "mapfile",
    "popd",
    "printf",
    "pushd",
    "pwd",
    "read",
    "readarray",
    "readonly",
    "return",
    "select",
    "set",
    "shift",
    "shopt",
    "source",
    "suspend",
    "test",
    "then",
    "time",
    "times",
    "trap",
    "true",
    "type",
    "typeset",
    "ulimit",
    "umask",
    "unalias",
    "unset",
    "until",
    "wait",
    "while",
];

/// Where the shell would find `program`: itself if it names a path, else
/// the first executable regular file of that name in `PATH` (an empty
/// entry is the current directory). `None` leaves the job to the shell.
fn find_program(program: &str) -> Option<std::path::PathBuf> {
    use std::path::Path;
    let runnable =
        |p: &Path| p.is_file() && rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok();
    if program.contains('/') {
        return runnable(Path::new(program)).then(|| program.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                Path::new(".").join(program)
            } else {
                dir.join(program)
            }
        })
        .find(|p| runnable(p))
}

/// The PWD a shell started here would export: the inherited one if it
/// names the current directory, else the current directory. This process
/// never changes its directory, so it is found once.
fn shell_pwd() -> Option<&'static std::path::Path> {
    use std::os::unix::fs::MetadataExt;
    static PWD: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    PWD.get_or_init(|| {
        let here = std::fs::metadata(".").ok()?;
        let same = |p: &std::path::Path| {
            std::fs::metadata(p).is_ok_and(|m| (m.dev(), m.ino()) == (here.dev(), here.ino()))
        };
        match std::env::var_os("PWD").map(std::path::PathBuf::from) {
            Some(pwd) if pwd.is_absolute() && same(&pwd) => Some(pwd),
            _ => std::env::current_dir().ok(),
        }
    })
    .as_deref()
}

/// How often the exit of a job is checked where pidfds are missing.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// Reads what `pipe` holds into `buf`; false at end-of-file (or an error).
fn read_some(pipe: &OwnedFd, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 64 * 1024];
    match rustix::io::read(pipe, &mut chunk) {
        Ok(0) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => true,
        Err(_) => false,
    }
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
    use std::path::Path;
    use std::time::Instant;

    #[test]
    fn only_plain_words_naming_a_program_skip_the_shell() {
        assert_eq!(plain_words("sleep 0.02"), Some(vec!["sleep", "0.02"]));
        assert_eq!(
            plain_words(" dd\tif=/dev/zero  bs=1M "),
            Some(vec!["dd", "if=/dev/zero", "bs=1M"])
        );
        for shell in [
            "echo a",
            "true",
            "cd /",
            "if",
            "x=1 env",
            "ls *",
            "ls ~",
            "echo $HOME",
            "a;b",
            "a|b",
            "a >f",
            "'a'",
            "a\\ b",
            "a #c",
            "a\nb",
            "{ a; }",
            "a&",
            "",
            "  ",
            "ls é",
        ] {
            assert_eq!(plain_words(shell), None, "{shell:?}");
        }
        // A program the shell would not find stays with the shell, so its
        // message and exit code are the shell's.
        assert_eq!(shell_command("no-such-program-here x").get_program(), "sh");
        let direct = shell_command("env -u X");
        assert!(
            Path::new(direct.get_program()).ends_with("env"),
            "{direct:?}"
        );
        assert_eq!(direct.get_args().collect::<Vec<_>>(), ["-u", "X"]);
        assert_eq!(shell_command("echo a").get_program(), "sh");
    }

    #[test]
    fn a_plain_command_runs_without_a_shell_as_the_shell_would_run_it() {
        // Its parent is this process, not a shell in between.
        let done = run("cat /proc/self/stat", None).unwrap();
        let stat = String::from_utf8(done.stdout).unwrap();
        let ppid: u32 = stat
            .rsplit(") ")
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(ppid, std::process::id(), "{stat}");
        // And it does what `sh -c` does: the same output, errors, exit
        // codes and environment (a trailing `;` sends a line to the shell).
        for cmd in [
            "env",
            "ls /no-such-dir-here",
            "head -c 5 /dev/zero",
            "no-such-program-here x",
            "/no/such/path x",
            "/etc/passwd",
            "expr 0",
        ] {
            let direct = run(cmd, None).unwrap();
            let shell = run(&format!("{cmd} ;"), None).unwrap();
            // (dash passes the environment on in an order of its own.)
            let lines = |b: &[u8]| {
                let mut l: Vec<String> = String::from_utf8_lossy(b)
                    .lines()
                    .map(String::from)
                    .collect();
                l.sort();
                l
            };
            let outcome = |f: &Finished| (f.code, f.signal, lines(&f.stdout), lines(&f.stderr));
            assert_eq!(outcome(&direct), outcome(&shell), "{cmd}");
        }
    }

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
    fn full_pipes_on_both_streams_do_not_stall_a_job() {
        // More than a pipe holds, on stdout and stderr at once.
        let cmd = "head -c 300000 /dev/zero; head -c 200000 /dev/zero >&2; \
                   head -c 100000 /dev/zero; exit 3";
        let done = run(cmd, Some(Duration::from_secs(20))).unwrap();
        assert_eq!((done.code, done.timed_out), (Some(3), false));
        assert_eq!((done.stdout.len(), done.stderr.len()), (400_000, 200_000));
    }

    #[test]
    fn a_job_that_closes_its_output_still_times_out() {
        // Its pipes end at once; its exit never comes. The deadline holds.
        let t = Instant::now();
        let done = run("exec >&- 2>&-; sleep 10", Some(Duration::from_millis(200))).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(done.timed_out);
        assert_eq!(done.signal, Some(9));
    }

    #[test]
    fn output_and_code_come_back() {
        let done = run("printf a; printf b >&2; exit 4", None).unwrap();
        assert_eq!((done.code, done.timed_out), (Some(4), false));
        assert_eq!((&done.stdout[..], &done.stderr[..]), (&b"a"[..], &b"b"[..]));
    }
}
