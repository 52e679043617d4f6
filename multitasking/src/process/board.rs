//! The call board: a page of memory a pool shares with one worker process,
//! on which each call written to the worker has a word saying whether the
//! worker started it.
//!
//! A worker may hold several short calls at once (written to its socket
//! while it runs the one before them, see `supervisor.rs`). The board is
//! what keeps "terminate stops only the call asked for" and "a call that
//! never started is not failed with its worker" exact with more than one
//! call in the socket:
//!
//! - the pool posts call `seq` as queued before it writes it;
//! - the worker, before it runs the call, moves it from queued to started
//!   (and writes when, on the monotonic clock);
//! - the pool takes a queued call back by moving it from queued to
//!   withdrawn; the worker then answers it with `Skipped` instead of
//!   running it.
//!
//! Both moves are compare-and-swaps on the same word, so exactly one wins:
//! a call is either withdrawn (it never runs) or started (it runs, and a
//! terminate kills its worker as before). Each word holds the call's
//! sequence number beside its state, so a word reused by a later call
//! can't be mistaken for an earlier one's.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::process::sys::Shared;

/// Calls a board has words for; a worker holds at most this many at once.
pub(crate) const CALLS: usize = 16;

/// Words per call: the state, then when it started.
const WORDS: usize = 2;

/// Posted and not yet started.
const QUEUED: u64 = 0;
/// Started by the worker.
const STARTED: u64 = 1;
/// Taken back by the pool: the worker must not run it.
const WITHDRAWN: u64 = 2;

/// The state word of call `seq` in `state`.
fn word(seq: u64, state: u64) -> u64 {
    (seq << 2) | state
}

/// A call board (either side's mapping of it).
pub(crate) struct Board {
    /// The shared words.
    mem: Shared,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board").finish_non_exhaustive()
    }
}

impl Board {
    /// A new board, and the descriptor its worker maps it from.
    pub(crate) fn new() -> std::io::Result<(Board, OwnedFd)> {
        let (mem, fd) = Shared::create(CALLS * WORDS)?;
        Ok((Board { mem }, fd))
    }

    /// The board a worker process was started with.
    pub(crate) fn inherited() -> std::io::Result<Board> {
        Ok(Board {
            mem: Shared::inherited(CALLS * WORDS)?,
        })
    }

    fn state(&self, seq: u64) -> &std::sync::atomic::AtomicU64 {
        self.mem.word((seq as usize % CALLS) * WORDS)
    }

    fn began(&self, seq: u64) -> &std::sync::atomic::AtomicU64 {
        self.mem.word((seq as usize % CALLS) * WORDS + 1)
    }

    /// Pool side: call `seq` is about to be written to the worker. Its
    /// word's previous call has been answered (a worker holds fewer than
    /// [`CALLS`] calls), so nobody else writes the word now.
    pub(crate) fn post(&self, seq: u64) {
        // Release: the write of the call follows; the worker reads the
        // word after it read the call.
        self.state(seq).store(word(seq, QUEUED), Ordering::Release);
    }

    /// Pool side: takes back call `seq` if the worker has not started it.
    /// True if it never will.
    pub(crate) fn withdraw(&self, seq: u64) -> bool {
        self.state(seq)
            .compare_exchange(
                word(seq, QUEUED),
                word(seq, WITHDRAWN),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Pool side: when call `seq` started in the worker, if it has.
    pub(crate) fn started(&self, seq: u64) -> Option<Instant> {
        // Acquire: pairs with the worker's Release in `claim`, which wrote
        // the start time first.
        (self.state(seq).load(Ordering::Acquire) == word(seq, STARTED))
            .then(|| instant_of(self.began(seq).load(Ordering::Relaxed)))
    }

    /// Pool side: true if call `seq` is still queued (after its worker
    /// died: it never ran).
    pub(crate) fn is_queued(&self, seq: u64) -> bool {
        self.state(seq).load(Ordering::Acquire) == word(seq, QUEUED)
    }

    /// Worker side: claims call `seq` before running it; false if the
    /// pool withdrew it (it must not run).
    pub(crate) fn claim(&self, seq: u64) -> bool {
        self.began(seq).store(monotonic_ns(), Ordering::Relaxed);
        match self.state(seq).compare_exchange(
            word(seq, QUEUED),
            word(seq, STARTED),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(now) => now != word(seq, WITHDRAWN),
        }
    }
}

/// The monotonic clock in nanoseconds: the clock `Instant` reads, and the
/// same in every process of the machine.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

/// The `Instant` of a monotonic-clock reading taken in any process.
fn instant_of(ns: u64) -> Instant {
    let now = Instant::now();
    let ago = monotonic_ns().saturating_sub(ns);
    now.checked_sub(Duration::from_nanos(ago)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_withdrawn_or_started_never_both() {
        let (pool, _fd) = Board::new().unwrap();
        pool.post(1);
        assert!(pool.withdraw(1));
        assert!(!pool.claim(1), "a withdrawn call must not start");
        assert!(pool.started(1).is_none());
        pool.post(2);
        assert!(pool.is_queued(2));
        assert!(pool.claim(2));
        assert!(!pool.withdraw(2), "a started call can't be withdrawn");
        let began = pool.started(2).expect("started");
        assert!(began <= Instant::now() && began.elapsed() < Duration::from_secs(5));
        // Word reuse: call 2 + CALLS shares call 2's word, and a stale
        // withdraw of call 2 does not touch it.
        let next = 2 + CALLS as u64;
        pool.post(next);
        assert!(!pool.withdraw(2));
        assert!(pool.is_queued(next));
    }

    #[test]
    fn the_worker_sees_the_pools_writes_through_the_descriptor() {
        let (pool, fd) = Board::new().unwrap();
        let worker = Board {
            mem: Shared::map(&fd, CALLS * WORDS).unwrap(),
        };
        pool.post(7);
        assert!(worker.claim(7));
        assert!(pool.started(7).is_some());
        pool.post(8);
        assert!(pool.withdraw(8));
        assert!(!worker.claim(8));
    }
}
