//! The few system calls the process pool needs that have no safe wrapper:
//! the child's set-up between `fork` and `exec`, adopting the inherited
//! socket and call board in a worker, the board's shared memory, and the
//! worker's fault-signal dispositions. Every `unsafe` block of the process
//! pool is here.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// The descriptor a worker finds its control socket on.
pub(crate) const WORKER_FD: RawFd = 3;

/// The descriptor a worker finds its call board on, if it has one.
pub(crate) const BOARD_FD: RawFd = 4;

/// Sets up the child of `cmd`: the socket `sock` on [`WORKER_FD`], the
/// call board's memory `board` (if any) on [`BOARD_FD`], SIGKILL when the
/// parent dies, and an exit if the parent is already gone.
pub(crate) fn configure_child(cmd: &mut Command, sock: &OwnedFd, board: Option<&OwnedFd>) {
    let fd = sock.as_raw_fd();
    let board = board.map(AsRawFd::as_raw_fd);
    let parent = std::process::id() as i32;
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed; it makes only raw syscalls
    // (dup, dup2, fcntl, prctl, getppid, _exit) through libc, allocates
    // nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            // The worker must die with the pool (PR_SET_PDEATHSIG fires when
            // the *thread* that forked exits, so pools spawn from threads
            // that live as long as the worker).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then no signal will
            // ever come.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            // The board's descriptor may be the one the socket goes to:
            // move it out of the way first.
            let board = match board {
                Some(b) if b == WORKER_FD => {
                    let moved = libc::fcntl(b, libc::F_DUPFD_CLOEXEC, BOARD_FD + 1);
                    if moved < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Some(moved)
                }
                other => other,
            };
            place(fd, WORKER_FD)?;
            match board {
                Some(b) => place(b, BOARD_FD),
                None => Ok(()),
            }
        });
    }
}

/// Puts descriptor `fd` on `at`, open across `exec`. Runs between fork and
/// exec: raw syscalls only.
///
/// # Safety
/// Only async-signal-safe calls are made (fcntl, dup2).
unsafe fn place(fd: RawFd, at: RawFd) -> std::io::Result<()> {
    // SAFETY: plain syscalls on descriptors, as the caller's contract says.
    unsafe {
        if fd == at {
            // dup2 onto itself keeps FD_CLOEXEC: clear it by hand.
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        } else if libc::dup2(fd, at) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Words of shared memory between a pool and one worker process: the
/// call board of `process/board.rs`. Each side maps the same memfd.
pub(crate) struct Shared {
    /// The mapping.
    ptr: NonNull<AtomicU64>,
    /// Its length in words.
    words: usize,
}

// SAFETY: the mapping is only ever accessed through atomics, which may be
// shared between threads; it lives until `Drop`.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// A new zeroed mapping of `words` words and the descriptor a worker
    /// maps it from.
    pub(crate) fn create(words: usize) -> std::io::Result<(Shared, OwnedFd)> {
        let fd = rustix::fs::memfd_create("multitask-board", rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, (words * 8) as u64)?;
        Ok((Shared::map(&fd, words)?, fd))
    }

    /// The board a worker inherited on [`BOARD_FD`], of `words` words; the
    /// descriptor is closed once mapped.
    pub(crate) fn inherited(words: usize) -> std::io::Result<Shared> {
        // SAFETY: the pool put the board on BOARD_FD for this process alone
        // (the caller checked the environment says so); nothing else in the
        // worker owns it, so taking ownership once is sound.
        let fd = unsafe { OwnedFd::from_raw_fd(BOARD_FD) };
        let size = rustix::fs::fstat(&fd)?.st_size;
        if size < (words * 8) as i64 {
            return Err(std::io::Error::other(format!(
                "the call board is {size} bytes, {} expected",
                words * 8
            )));
        }
        Shared::map(&fd, words)
    }

    /// Maps `words` words of `fd`, shared.
    pub(crate) fn map(fd: &OwnedFd, words: usize) -> std::io::Result<Shared> {
        // SAFETY: a fresh shared mapping of a memfd at least `words * 8`
        // bytes long, at an address the kernel picks; nothing else aliases
        // it in this process, and it is unmapped only in `Drop`.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                words * 8,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let ptr = NonNull::new(ptr.cast::<AtomicU64>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Shared { ptr, words })
    }

    /// Word `i`, shared with the other process.
    ///
    /// # Panics
    /// If `i` is out of range.
    pub(crate) fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.words, "board word {i} of {}", self.words);
        // SAFETY: in range (checked), page-aligned base so 8-byte aligned,
        // mapped for the life of `self`, and only ever used as an atomic,
        // whichever process writes it.
        unsafe { &*self.ptr.as_ptr().add(i) }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of this length; no reference
        // into it outlives `self` (`word` borrows from `self`).
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.as_ptr().cast(), self.words * 8);
        }
    }
}

/// The control socket a worker inherited on [`WORKER_FD`].
///
/// # Panics
/// If the descriptor is not an open socket: the process was started as a
/// worker by something other than a pool.
pub(crate) fn inherited_socket() -> UnixStream {
    let flags = rustix::io::fcntl_getfd(
        // SAFETY: WORKER_FD is only borrowed for this one call.
        unsafe { rustix::fd::BorrowedFd::borrow_raw(WORKER_FD) },
    );
    assert!(
        flags.is_ok(),
        "multitask: started as a worker without a control socket on fd {WORKER_FD}"
    );
    // SAFETY: the pool put the socket on WORKER_FD for this process alone
    // (checked open just above); nothing else in the worker owns it, so
    // taking ownership once is sound.
    let fd = unsafe { OwnedFd::from_raw_fd(WORKER_FD) };
    // Keep it out of the task's own child processes.
    let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
    UnixStream::from(fd)
}

/// Puts SIGSEGV and SIGBUS back to their default action in a worker, so a
/// worker sent one dies of it.
///
/// std's runtime installs a handler for both before `main` (it reports a
/// stack overflow). For a signal that is not a fault of the running code,
/// one sent by `kill` or `raise`, that handler resets the disposition and
/// returns, and since nothing faults again the signal is lost: the worker
/// lives on and its task ends some other way (or never). A worker started
/// from `init()` in `main` has that handler; one started from the test
/// support constructor runs before std installs it. With the default
/// action both die alike, and the task fails with `WorkerDied` (signal 11
/// or 7). The cost: a stack overflow in a task kills its worker with
/// SIGSEGV, without std's message.
pub(crate) fn default_fault_signals() {
    for signal in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: `sigaction` is given a fully initialised struct (zeroed,
        // which is a valid `sigaction` with an empty flag set, then an
        // emptied mask and SIG_DFL as the action) and a null pointer for
        // the old action, which it accepts. Setting SIG_DFL runs no code of
        // ours in signal context, so no async-signal-safety claim is made.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}
