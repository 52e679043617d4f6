//! `JobQueue`: the pool's unbounded FIFO, without frees on the workers'
//! side while it is short.
//!
//! The queue was an unbounded crossbeam channel: a linked list of blocks of
//! 31 slots, each allocated by the submitting thread and freed by the
//! worker that read its last slot. glibc's `free` of another thread's block
//! takes that thread's arena lock, and a profile of 100k submits then
//! results had each worker spend 7% of its time waiting there and the
//! submitter 5% waking them (the same program with a bounded channel ran
//! 0.17 µs per task against 0.22). So jobs travel through a fixed ring (a
//! bounded crossbeam channel, [`LANE`] slots, allocated once) while it has
//! room; past that they wait in a spill queue under a lock, which a worker
//! that finds the ring empty moves into it, many at a time.
//!
//! FIFO holds for each submitting thread: once anything is spilled every
//! push spills, until the whole spill has been moved into the ring. A
//! worker blocks on the ring only after finding the ring and the spill
//! empty under the spill's lock; the push that puts the first item into an
//! empty spill moves what it can into the ring under the same lock, so a
//! ring that drained between that push finding it full and spilling gets
//! the job, and a worker asleep on it wakes (later pushes find a worker
//! that saw the spill, see [`JobQueue::push`]). No job waits beside a
//! sleeping worker.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// Slots in the ring: a burst longer than this spills.
pub(super) const LANE: usize = 512;

/// A spill queue that grew past this many slots is freed when a worker finds
/// nothing to do and goes to sleep, so an idle pool gives a burst's memory
/// back. Not before: a pool fed burst after burst would fault the pages of
/// a fresh buffer in for every one (a tenth of the submitter's time in a
/// profile of 100k-task bursts went to clearing such pages).
const KEEP_SPILL: usize = 4 * LANE;

/// An unbounded multi-producer, multi-consumer FIFO (see the module doc).
pub(super) struct JobQueue<T> {
    /// The ring's sending side.
    tx: Sender<T>,
    /// The ring's receiving side.
    rx: Receiver<T>,
    /// Items that found the ring full, oldest first.
    spill: Mutex<VecDeque<T>>,
    /// `spill`'s length, written under its lock: read without it by every
    /// push (0: the ring may be used) and by workers that find the ring
    /// empty.
    spilled: AtomicUsize,
}

impl<T> JobQueue<T> {
    pub(super) fn new() -> JobQueue<T> {
        let (tx, rx) = crossbeam_channel::bounded(LANE);
        JobQueue {
            tx,
            rx,
            spill: Mutex::new(VecDeque::new()),
            spilled: AtomicUsize::new(0),
        }
    }

    fn spill(&self) -> std::sync::MutexGuard<'_, VecDeque<T>> {
        crate::sync::lock_std(&self.spill)
    }

    /// Adds `item` at the back.
    pub(super) fn push(&self, item: T) {
        // Acquire: pairs with the Release of a worker that emptied the
        // spill, so what it moved into the ring is ahead of this item.
        let item = if self.spilled.load(Ordering::Acquire) == 0 {
            match self.tx.try_send(item) {
                Ok(()) => return,
                Err(TrySendError::Full(item) | TrySendError::Disconnected(item)) => item,
            }
        } else {
            item
        };
        let mut spill = self.spill();
        spill.push_back(item);
        if spill.len() == 1 {
            // The first spilled item: the ring may have drained since it
            // was found full, and its workers gone to sleep on it (they
            // look at the spill under this lock first); moving the item
            // in wakes them. Later items find a worker awake: it saw the
            // spill non-empty, or was woken by this refill or by the
            // sends that filled the ring again.
            self.refill(&mut spill);
        } else {
            self.spilled.store(spill.len(), Ordering::Release);
        }
    }

    /// Moves the spill's oldest items into the ring while it has room, and
    /// publishes the spill's length. Called with the spill locked.
    fn refill(&self, spill: &mut VecDeque<T>) {
        while let Some(item) = spill.pop_front() {
            if let Err(TrySendError::Full(item) | TrySendError::Disconnected(item)) =
                self.tx.try_send(item)
            {
                spill.push_front(item);
                break;
            }
        }
        self.spilled.store(spill.len(), Ordering::Release);
    }

    /// The front item, if there is one; never blocks but for the spill's
    /// lock.
    pub(super) fn try_pop(&self) -> Option<T> {
        if let Ok(item) = self.rx.try_recv() {
            return Some(item);
        }
        if self.spilled.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.pop_spilled(&mut self.spill())
    }

    /// The front item, looking at the spill (locked) too.
    fn pop_spilled(&self, spill: &mut VecDeque<T>) -> Option<T> {
        // The ring may have been refilled by another worker meanwhile: its
        // items are older than the spill's.
        if let Ok(item) = self.rx.try_recv() {
            return Some(item);
        }
        let first = spill.pop_front();
        self.refill(spill);
        first
    }

    /// The front item, waiting for one.
    pub(super) fn pop(&self) -> T {
        loop {
            if let Some(item) = self.try_pop() {
                return item;
            }
            // Decided under the spill's lock: a push that found the ring
            // full before it drained spills after this, and its refill
            // wakes the wait below; one that spilled before is seen here.
            {
                let mut spill = self.spill();
                if let Some(item) = self.pop_spilled(&mut spill) {
                    return item;
                }
                if spill.capacity() > KEEP_SPILL {
                    *spill = VecDeque::new();
                }
            }
            // The sender lives in `self`: no disconnect.
            if let Ok(item) = self.rx.recv() {
                return item;
            }
        }
    }

    /// Takes every item, oldest first.
    pub(super) fn drain(&self) -> Vec<T> {
        let mut spill = self.spill();
        let mut all: Vec<T> = self.rx.try_iter().collect();
        all.extend(spill.drain(..));
        self.spilled.store(0, Ordering::Release);
        all
    }

    /// Items queued now.
    pub(super) fn len(&self) -> usize {
        self.rx.len() + self.spilled.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_long_burst_comes_out_in_order_and_is_counted() {
        let q = JobQueue::new();
        let n = 5 * LANE + 7;
        for i in 0..n {
            q.push(i);
        }
        assert_eq!(q.len(), n);
        let out: Vec<usize> = (0..n).map(|_| q.try_pop().unwrap()).collect();
        assert_eq!(out, (0..n).collect::<Vec<_>>());
        assert_eq!((q.try_pop(), q.len()), (None, 0));
        // What is pushed once the spill drained goes to the ring again.
        q.push(1);
        assert_eq!(q.rx.len(), 1);
    }

    #[test]
    fn a_burst_keeps_its_memory_until_a_worker_sleeps() {
        let q = Arc::new(JobQueue::new());
        let n = 4 * KEEP_SPILL;
        for i in 0..n {
            q.push(i);
        }
        for _ in 0..n {
            q.try_pop().unwrap();
        }
        assert!(q.spill().capacity() > KEEP_SPILL, "freed while busy");
        let waiter = {
            let q = q.clone();
            std::thread::spawn(move || q.pop())
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while q.spill().capacity() > KEEP_SPILL {
            assert!(
                std::time::Instant::now() < deadline,
                "a sleeping worker kept the burst's spill for 10 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        q.push(7);
        assert_eq!(waiter.join().unwrap(), 7);
    }

    #[test]
    fn pushes_after_a_spill_keep_their_order_while_it_is_refilled() {
        let q = JobQueue::new();
        let mut next = 0;
        let mut seen = Vec::new();
        // Interleave pops and pushes around the ring's size.
        for round in 0..20 {
            for _ in 0..(LANE + round * 37) {
                q.push(next);
                next += 1;
            }
            for _ in 0..(LANE / 2 + round * 11) {
                seen.extend(q.try_pop());
            }
        }
        seen.extend(q.drain());
        assert_eq!(seen, (0..next).collect::<Vec<_>>());
    }

    #[test]
    fn every_item_reaches_one_of_several_sleeping_workers() {
        // Bursts past the ring's size, each after the workers went to
        // sleep: a push that finds the ring full while they drain it must
        // still wake one (a version without the refill on push left items
        // spilled beside sleeping workers within a few bursts).
        let q = Arc::new(JobQueue::new());
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (q, done_tx) = (q.clone(), done_tx.clone());
                std::thread::spawn(move || {
                    while let Some(i) = q.pop() {
                        done_tx.send(i).unwrap();
                    }
                })
            })
            .collect();
        let producers: Vec<_> = (0..2)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for burst in 0..40 {
                        for i in 0..2 * LANE {
                            q.push(Some((p, burst, i)));
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        let mut got = Vec::new();
        for _ in 0..2 * 40 * 2 * LANE {
            match done_rx.recv_timeout(Duration::from_secs(20)) {
                Ok(x) => got.push(x),
                Err(_) => panic!(
                    "an item waited 20 s beside sleeping workers: {} of {} came, {} queued",
                    got.len(),
                    2 * 40 * 2 * LANE,
                    q.len()
                ),
            }
        }
        for p in producers {
            p.join().unwrap();
        }
        for _ in 0..2 {
            q.push(None);
        }
        for w in workers {
            w.join().unwrap();
        }
        // Every item came out once.
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), 2 * 40 * 2 * LANE);
    }
}
