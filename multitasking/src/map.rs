//! The one map engine: lazy, windowed, chunked, for every executor.
//!
//! [`Map`] reads its input only as results are consumed. It cuts the input
//! into chunks, keeps at most `window` chunks in flight (default: twice the
//! workers), and hands each chunk to the executor's `submit_chunk`. Items
//! come back as `Result<T, TaskError>`, in input order (`map`) or as their
//! chunks complete (`map_unordered`); a failing item never stops the rest.
//! Mapping over ten million items holds the window in memory, not ten
//! million futures.
//!
//! Chunk size: explicit, or automatic. When the input knows its length
//! (an exact `size_hint`), automatic is Python's `Pool.map` rule, length /
//! (4 x workers), at most 8192. Otherwise it starts at 1 and doubles while a chunk takes
//! under a millisecond, so cheap items are amortised and expensive ones
//! still spread over every worker.
//!
//! A timeout on the whole map ends the iteration with one
//! [`TaskError::TimedOut`] and cancels every chunk still pending.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::iter::Fuse;
use std::time::{Duration, Instant};

use crate::chunk::{Chunk, ChunkIter};
use crate::error::{SubmitError, TaskError};
use crate::executor::ChunkFuture;
use crate::future::Waitable;
use crate::sync::Arc;
use crate::wait::Signal;

/// Submits one chunk; what an executor lends the engine.
pub(crate) type SubmitChunk<'a, I, O> =
    Box<dyn FnMut(Vec<I>) -> Result<ChunkFuture<O>, SubmitError<Vec<I>>> + 'a>;

/// The progress hook: items yielded so far, and the total when known.
pub type ProgressFn<'a> = Box<dyn FnMut(usize, Option<usize>) + 'a>;

/// Automatic chunks grow until one takes this long.
const TARGET_CHUNK_TIME: Duration = Duration::from_millis(1);
/// Automatic chunks grow no larger than this: a chunk's buffers then stay
/// under the allocator's mmap threshold (no page faults per chunk), and the
/// consumer starts on the first chunk sooner.
const MAX_AUTO_CHUNK: usize = 8192;

/// How chunks are sized.
#[derive(Debug, Clone, Copy)]
enum Chunking {
    /// Set by the caller.
    Fixed(usize),
    /// Chosen by the engine; the current size.
    Auto(usize),
}

/// One chunk in flight.
struct InFlight<O> {
    /// Its outcomes.
    fut: ChunkFuture<O>,
    /// How many items it holds.
    len: usize,
    /// When it was submitted, to size the next automatic chunk.
    submitted: Instant,
}

/// A lazy map over an executor; see the module docs. Builder methods
/// (`chunksize`, `window`, `timeout`, `progress`) apply before the first
/// `next`.
pub struct Map<'a, I: Iterator, O> {
    /// The task's name, for errors.
    task: &'static str,
    /// The input, read lazily.
    input: Fuse<I>,
    /// Hands a chunk to the executor.
    submit: SubmitChunk<'a, I::Item, O>,
    /// In input order (`map`) or completion order (`map_unordered`).
    ordered: bool,
    /// How chunks are sized.
    chunking: Chunking,
    /// At most this many chunks in flight.
    window: usize,
    /// Ordered mode: chunks in flight, oldest first.
    queue: VecDeque<InFlight<O>>,
    /// Unordered mode: chunks in flight by sequence number.
    slots: HashMap<usize, InFlight<O>>,
    /// Unordered mode: where chunks report completion.
    signal: Arc<Signal>,
    /// Next chunk sequence number.
    seq: usize,
    /// The chunk being yielded now.
    current: Option<ChunkIter<O>>,
    /// Outcomes of further completed chunks, ready to yield, chunk by chunk
    /// (no copy per item).
    ready: VecDeque<ChunkIter<O>>,
    /// The whole map's timeout and its deadline (set at the first `next`).
    timeout: Option<(Duration, Option<Instant>)>,
    /// Progress hook.
    progress: Option<ProgressFn<'a>>,
    /// Items yielded so far.
    yielded: usize,
    /// The input's length, when it knows it.
    total: Option<usize>,
    /// True once the map has ended (input exhausted and drained, or timed out).
    finished: bool,
}

impl<'a, I: Iterator, O> Map<'a, I, O> {
    pub(crate) fn new(
        task: &'static str,
        input: I,
        workers: usize,
        ordered: bool,
        submit: SubmitChunk<'a, I::Item, O>,
    ) -> Self {
        let workers = workers.max(1);
        let total = match input.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(lo),
            _ => None,
        };
        let chunking = match total {
            Some(n) => Chunking::Fixed(n.div_ceil(4 * workers).clamp(1, MAX_AUTO_CHUNK)),
            None => Chunking::Auto(1),
        };
        Map {
            task,
            input: input.fuse(),
            submit,
            ordered,
            chunking,
            window: 2 * workers,
            queue: VecDeque::new(),
            slots: HashMap::new(),
            signal: Arc::new(Signal::default()),
            seq: 0,
            current: None,
            ready: VecDeque::new(),
            timeout: None,
            progress: None,
            yielded: 0,
            total,
            finished: false,
        }
    }

    /// Items per chunk (default: automatic; see the module docs).
    ///
    /// # Panics
    /// If `n` is 0.
    pub fn chunksize(mut self, n: usize) -> Self {
        assert!(n > 0, "chunksize must be at least 1");
        self.chunking = Chunking::Fixed(n);
        self
    }

    /// Chunks in flight at most (default: twice the workers).
    ///
    /// # Panics
    /// If `n` is 0.
    pub fn window(mut self, n: usize) -> Self {
        assert!(n > 0, "window must be at least 1");
        self.window = n;
        self
    }

    /// A timeout on the whole map, counted from the first `next` (default:
    /// none). When it expires the map yields one [`TaskError::TimedOut`],
    /// cancels what is pending and ends.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some((timeout, None));
        self
    }

    /// Calls `f(done, total)` after each item is yielded (`total` when the
    /// input knows its length).
    pub fn progress(mut self, f: impl FnMut(usize, Option<usize>) + 'a) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Draws a progress bar labelled `label` on stderr while the map runs,
    /// when stderr is a terminal (see [`crate::progress`]).
    #[cfg(feature = "progress")]
    pub fn progress_bar(self, label: &str) -> Self {
        self.progress(crate::progress::bar(label))
    }

    /// The input's length, when it knows it.
    pub fn total(&self) -> Option<usize> {
        self.total
    }

    fn in_flight(&self) -> usize {
        self.queue.len() + self.slots.len()
    }

    fn chunk_len(&self) -> usize {
        match self.chunking {
            Chunking::Fixed(n) | Chunking::Auto(n) => n,
        }
    }

    /// Submits chunks until the window is full or the input runs out.
    fn fill(&mut self) {
        while self.in_flight() < self.window {
            let n = self.chunk_len();
            let chunk: Vec<I::Item> = self.input.by_ref().take(n).collect();
            if chunk.is_empty() {
                return;
            }
            let len = chunk.len();
            match (self.submit)(chunk) {
                Ok(fut) => {
                    let inflight = InFlight {
                        fut,
                        len,
                        submitted: Instant::now(),
                    };
                    if self.ordered {
                        self.queue.push_back(inflight);
                    } else {
                        let id = self.seq;
                        if inflight.fut.listen(&self.signal, id) {
                            self.signal.notify(id);
                        }
                        self.slots.insert(id, inflight);
                    }
                    self.seq += 1;
                }
                Err(rejected) => {
                    // Each item of a refused chunk is its own error; the
                    // rest of the input is still tried.
                    self.ready
                        .push_back(Chunk::all_failed(len, &rejected.error).into_iter());
                    return;
                }
            }
        }
    }

    /// Takes a completed chunk's outcomes into `ready`, and grows an
    /// automatic chunk size while chunks are quick.
    fn absorb(&mut self, done: InFlight<O>, outcome: Result<Chunk<O>, TaskError>) {
        let items = match outcome {
            Ok(items) => items,
            Err(e) => Chunk::all_failed(done.len, &e),
        };
        self.ready.push_back(items.into_iter());
        if let Chunking::Auto(n) = self.chunking {
            if done.len == n && done.submitted.elapsed() < TARGET_CHUNK_TIME {
                self.chunking = Chunking::Auto((n * 2).min(MAX_AUTO_CHUNK));
            }
        }
    }

    /// The next ready outcome, moving on to the next chunk when one is spent.
    #[inline]
    fn pop_ready(&mut self) -> Option<Result<O, TaskError>> {
        loop {
            if let Some(item) = self.current.as_mut().and_then(Iterator::next) {
                return Some(item);
            }
            self.current = Some(self.ready.pop_front()?);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.timeout.and_then(|(_, d)| d)
    }

    /// Waits for the next chunk; false if the deadline passed.
    fn collect_one(&mut self) -> bool {
        let deadline = self.deadline();
        if self.ordered {
            let Some(front) = self.queue.front() else {
                return true;
            };
            match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if !front.fut.wait_timeout(left) {
                        return false;
                    }
                }
                None => front.fut.wait(),
            }
            let done = self.queue.pop_front().expect("front exists");
            let outcome = done.fut.try_result().expect("waited for the chunk");
            self.absorb(done, outcome);
            true
        } else {
            loop {
                let Some(id) = self.signal.next(deadline) else {
                    return false;
                };
                if let Some(done) = self.slots.remove(&id) {
                    let outcome = done
                        .fut
                        .try_result()
                        .expect("a chunk that signalled is done");
                    self.absorb(done, outcome);
                    return true;
                }
            }
        }
    }

    fn expire(&mut self) -> Result<O, TaskError> {
        self.finished = true;
        for f in self.queue.drain(..) {
            f.fut.cancel();
        }
        for (_, f) in self.slots.drain() {
            f.fut.cancel();
        }
        self.ready.clear();
        self.current = None;
        Err(TaskError::TimedOut {
            task: self.task.to_string(),
            after: self.timeout.map(|(t, _)| t).unwrap_or_default(),
            pid: None,
        })
    }
}

impl<I: Iterator, O> Iterator for Map<'_, I, O> {
    type Item = Result<O, TaskError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(item) = self.pop_ready() {
            return Some(self.yield_item(item));
        }
        self.next_slow()
    }

    /// `sum`, `collect`, `for_each` and friends drain each ready chunk in
    /// one tight loop instead of an item at a time through `next`.
    fn fold<B, F>(mut self, init: B, mut f: F) -> B
    where
        F: FnMut(B, Self::Item) -> B,
    {
        let mut acc = init;
        loop {
            if let Some(chunk) = self.current.take() {
                if self.progress.is_none() {
                    let mut n = 0;
                    acc = chunk.fold(acc, |a, item| {
                        n += 1;
                        f(a, item)
                    });
                    self.yielded += n;
                } else {
                    for item in chunk {
                        let item = self.yield_item(item);
                        acc = f(acc, item);
                    }
                }
            }
            match self.next_slow() {
                Some(item) => acc = f(acc, item),
                None => return acc,
            }
        }
    }
}

impl<I: Iterator, O> Map<'_, I, O> {
    #[inline]
    fn yield_item(&mut self, item: Result<O, TaskError>) -> Result<O, TaskError> {
        self.yielded += 1;
        if let Some(p) = self.progress.as_mut() {
            p(self.yielded, self.total);
        }
        item
    }

    /// `next` when no outcome is ready: submit, wait, time out or end.
    fn next_slow(&mut self) -> Option<Result<O, TaskError>> {
        if let Some((t, None)) = self.timeout {
            self.timeout = Some((t, Some(Instant::now() + t)));
        }
        loop {
            if let Some(item) = self.pop_ready() {
                return Some(self.yield_item(item));
            }
            if self.finished {
                return None;
            }
            if self.deadline().is_some_and(|d| Instant::now() >= d) {
                return Some(self.expire());
            }
            self.fill();
            if !self.ready.is_empty() {
                continue;
            }
            if self.in_flight() == 0 {
                self.finished = true;
                return None;
            }
            if !self.collect_one() {
                return Some(self.expire());
            }
        }
    }
}

impl<I: Iterator, O> Drop for Map<'_, I, O> {
    fn drop(&mut self) {
        // A map dropped early cancels the chunks that have not started.
        for f in self.queue.drain(..) {
            f.fut.cancel();
        }
        for (_, f) in self.slots.drain() {
            f.fut.unlisten(&self.signal);
            f.fut.cancel();
        }
    }
}

impl<I: Iterator, O> fmt::Debug for Map<'_, I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Map")
            .field("task", &self.task)
            .field("ordered", &self.ordered)
            .field("chunking", &self.chunking)
            .field("window", &self.window)
            .field("in_flight", &self.in_flight())
            .field("yielded", &self.yielded)
            .finish_non_exhaustive()
    }
}
