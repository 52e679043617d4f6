//! Named tasks the integration tests run on every executor.

use std::time::Duration;

/// Doubles `x`.
#[multitasking::task]
pub(crate) fn double(x: u64) -> u64 {
    x * 2
}

/// Returns `x`; does nothing else (per-task overhead).
#[multitasking::task]
pub(crate) fn noop(x: u64) -> u64 {
    x
}

/// Stands for a task that does whatever its input says (as `run_shell`
/// does): marked dangerous, so cluster workers serve it only when told to.
#[multitasking::task(dangerous)]
pub(crate) fn obey(x: u64) -> u64 {
    x + 1
}

/// Sleeps `ms` milliseconds, then returns it.
#[multitasking::task]
pub(crate) fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Panics with `message`.
#[multitasking::task]
pub(crate) fn boom(message: String) -> u64 {
    panic!("{message}")
}

/// Panics for inputs that are 3 mod 7, else returns `x + 1`.
#[multitasking::task]
pub(crate) fn flaky(x: u64) -> u64 {
    if x % 7 == 3 {
        panic!("flaky input {x}");
    }
    x + 1
}

/// Appends `id` as a line to the file at `path` (one O_APPEND write, so
/// lines from many processes never tear): a side effect that shows whether
/// the task body ran, wherever it ran.
#[multitasking::task]
pub(crate) fn mark(path: String, id: u64) -> u64 {
    append_mark(&path, id);
    id
}

/// Appends `id` as a line to the file at `path`, in one O_APPEND write:
/// what [`mark`] and the tasks like it leave behind.
pub(crate) fn append_mark(path: &str, id: u64) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the mark file");
    f.write_all(format!("{id}\n").as_bytes())
        .expect("write the mark");
}

/// The ids that [`mark`] wrote to `path`, sorted.
pub(crate) fn marks(path: &str) -> Vec<u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut ids: Vec<u64> = text
        .lines()
        .map(|l| l.parse().expect("a mark line"))
        .collect();
    ids.sort_unstable();
    ids
}

/// Adds two numbers: a task with a tuple input.
#[multitasking::task]
pub(crate) fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// How a failure-injection task fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Crash {
    /// Returns normally.
    None,
    /// Panics.
    Panic,
    /// `std::process::abort()`.
    Abort,
    /// Raises SIGSEGV.
    Segfault,
    /// `std::process::exit(3)`.
    Exit3,
    /// Sends itself SIGKILL (what the OOM killer does).
    SigKill,
}

/// Fails as `how` says, in the worker, then returns its pid.
#[multitasking::task]
pub(crate) fn crash(how: Crash) -> u32 {
    crash_now(how);
    std::process::id()
}

/// Carries out a `Crash`.
pub(crate) fn crash_now(how: Crash) {
    match how {
        Crash::None => {}
        Crash::Panic => panic!("injected panic"),
        Crash::Abort => std::process::abort(),
        Crash::Segfault => {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::SEGV,
            );
            std::thread::sleep(Duration::from_secs(5));
        }
        Crash::Exit3 => std::process::exit(3),
        Crash::SigKill => {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
            std::thread::sleep(Duration::from_secs(5));
        }
    }
}

/// Never returns (on its own).
#[multitasking::task]
pub(crate) fn spin_forever(_x: ()) -> u64 {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Allocates and touches `mb` MiB, holds it `hold_ms`, returns its pid.
#[multitasking::task]
pub(crate) fn hog(mb: usize, hold_ms: u64) -> u32 {
    let v = vec![1u8; mb << 20];
    std::thread::sleep(Duration::from_millis(hold_ms));
    std::hint::black_box(&v);
    std::process::id()
}

/// This process's pid.
#[multitasking::task]
pub(crate) fn whoami(_x: ()) -> u32 {
    std::process::id()
}

/// Where a `Poison` value fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Nowhere.
    Clean,
    /// Encoding the call (in the caller): an error.
    EncodeCall,
    /// Decoding the call in the worker: an error.
    DecodeCall,
    /// Decoding the call in the worker: a panic.
    DecodeCallPanic,
    /// Decoding the call in the worker: an abort.
    DecodeCallAbort,
    /// Encoding the result in the worker: an error.
    EncodeResult,
    /// Encoding the result in the worker: a panic.
    EncodeResultPanic,
    /// Encoding the result in the worker: an abort.
    EncodeResultAbort,
    /// Decoding the result in the caller: an error.
    DecodeResult,
}

impl Stage {
    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> Stage {
        [
            Stage::Clean,
            Stage::EncodeCall,
            Stage::DecodeCall,
            Stage::DecodeCallPanic,
            Stage::DecodeCallAbort,
            Stage::EncodeResult,
            Stage::EncodeResultPanic,
            Stage::EncodeResultAbort,
            Stage::DecodeResult,
        ][c as usize]
    }
}

/// A task input whose serde impls fail at the call stages it names:
/// encoding (in the caller) or decoding (in the worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoisonIn(pub(crate) Stage);

/// A task output whose serde impls fail at the result stages it names:
/// encoding (in the worker) or decoding (in the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoisonOut(pub(crate) Stage);

impl serde::Serialize for PoisonIn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Stage::EncodeCall => Err(serde::ser::Error::custom("injected encode failure")),
            other => s.serialize_u8(other.code()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for PoisonIn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Stage::from_code(u8::deserialize(d)?) {
            Stage::DecodeCall => Err(serde::de::Error::custom("injected decode failure")),
            Stage::DecodeCallPanic => panic!("injected decode panic"),
            Stage::DecodeCallAbort => std::process::abort(),
            other => Ok(PoisonIn(other)),
        }
    }
}

impl serde::Serialize for PoisonOut {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Stage::EncodeResult => Err(serde::ser::Error::custom("injected encode failure")),
            Stage::EncodeResultPanic => panic!("injected encode panic"),
            Stage::EncodeResultAbort => std::process::abort(),
            other => s.serialize_u8(other.code()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for PoisonOut {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Stage::from_code(u8::deserialize(d)?) {
            Stage::DecodeResult => Err(serde::de::Error::custom("injected decode failure")),
            other => Ok(PoisonOut(other)),
        }
    }
}

/// Passes its stage from input to output: the failure happens in the codec,
/// at that stage.
#[multitasking::task]
pub(crate) fn poisoned(p: PoisonIn) -> PoisonOut {
    PoisonOut(p.0)
}

/// Aborts the first time it runs for `marker` (a file path it creates);
/// returns its pid on later runs.
#[multitasking::task]
pub(crate) fn crash_once(marker: String) -> u32 {
    if std::fs::metadata(&marker).is_err() {
        std::fs::write(&marker, b"crashed").expect("write the marker");
        std::process::abort();
    }
    std::process::id()
}

/// Writes the start of a reply frame (a header announcing 1000 bytes and
/// three of them) straight onto the worker's control socket, then hangs:
/// a worker that stalls part-way through a frame.
#[multitasking::task]
pub(crate) fn truncated_reply(_x: ()) -> u64 {
    // SAFETY: fd 3 is the worker's control socket, open for the worker's
    // life; it is only borrowed for this one write.
    let sock = unsafe { rustix::fd::BorrowedFd::borrow_raw(3) };
    let mut frame = 1000u32.to_le_bytes().to_vec();
    frame.extend([1, 2, 0]);
    let _ = rustix::io::write(sock, &frame);
    std::thread::sleep(Duration::from_secs(300));
    0
}

/// What `spawn_sleeper` does once its `sleep 300` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Then {
    /// Returns (the sleep runs on).
    Return,
    /// Never returns.
    Hang,
    /// Allocates and holds 256 MiB.
    Hog,
}

/// Starts `sleep 300` as a child of the worker, writes its pid to `path`,
/// then does as `then` says; returns the sleep's pid.
#[multitasking::task]
pub(crate) fn spawn_sleeper(path: String, then: Then) -> u32 {
    // Never waited for on purpose: it must die with the worker's group.
    #[allow(clippy::zombie_processes)]
    let sleep = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .expect("start sleep");
    let pid = sleep.id();
    std::fs::write(&path, pid.to_string()).expect("write the pid");
    match then {
        Then::Return => {}
        Then::Hang => std::thread::sleep(Duration::from_secs(300)),
        Then::Hog => {
            let v = vec![1u8; 256 << 20];
            std::thread::sleep(Duration::from_secs(300));
            std::hint::black_box(&v);
        }
    }
    pid
}
