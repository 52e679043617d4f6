//! The few system calls the process pool needs that have no safe wrapper:
//! the child's set-up between `fork` and `exec`, adopting the inherited
//! socket in a worker, and the worker's fault-signal dispositions. Every
//! `unsafe` block of the process pool is here.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The descriptor a worker finds its control socket on.
pub(crate) const WORKER_FD: RawFd = 3;

/// Sets up the child of `cmd`: the socket `sock` on [`WORKER_FD`],
/// SIGKILL when the parent dies, and an exit if the parent is already gone.
pub(crate) fn configure_child(cmd: &mut Command, sock: &OwnedFd) {
    let fd = sock.as_raw_fd();
    let parent = std::process::id() as i32;
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed; it makes only raw syscalls
    // (dup2, fcntl, prctl, getppid, _exit) through libc, allocates nothing
    // and takes no lock.
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
            if fd == WORKER_FD {
                // dup2 onto itself keeps FD_CLOEXEC: clear it by hand.
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, WORKER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
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
