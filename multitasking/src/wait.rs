//! `wait` and `as_completed`: watching many futures at once.
//!
//! Both register one [`Signal`] with every future they watch; a future that
//! becomes done pushes its index into the signal and wakes the waiter. There
//! is no polling and no per-future thread. A cancelled future is done at
//! once, so both see a cancel without waiting for any worker (CPython's
//! waiters only wake when the executor acknowledges the cancel).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::error::WaitTimeout;
use crate::future::{TaskFuture, Waitable};
use crate::sync::{lock, Arc, Condvar, Mutex};

/// Where done futures report to one `wait` or `as_completed` call.
#[derive(Debug, Default)]
pub struct Signal {
    /// Indices of futures that became done, in completion order.
    ready: Mutex<VecDeque<usize>>,
    /// Signalled on every push.
    cond: Condvar,
    /// An async consumer (the `Stream` of `as_completed`), if any.
    waker: Mutex<Option<std::task::Waker>>,
}

impl Signal {
    /// Records that the future at `index` is done.
    pub(crate) fn notify(&self, index: usize) {
        lock(&self.ready).push_back(index);
        self.cond.notify_all();
        if let Some(w) = lock(&self.waker).take() {
            w.wake();
        }
    }

    /// The next done index, waiting until `deadline` (forever if `None`).
    pub(crate) fn next(&self, deadline: Option<Instant>) -> Option<usize> {
        let mut ready = lock(&self.ready);
        loop {
            if let Some(i) = ready.pop_front() {
                return Some(i);
            }
            match deadline {
                None => {
                    ready = match self.cond.wait(ready) {
                        Ok(g) => g,
                        Err(p) => p.into_inner(),
                    }
                }
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    ready = match self.cond.wait_timeout(ready, d - now) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    };
                }
            }
        }
    }
}

/// When [`wait`] returns, as in Python's `concurrent.futures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnWhen {
    /// As soon as any future is done.
    FirstCompleted,
    /// As soon as any future finishes with an error, or when all are done.
    /// A cancelled future is done but did not fail, as in Python.
    FirstException,
    /// When all futures are done.
    AllCompleted,
}

/// Waits for `futs` as `when` says, at most `timeout` (forever if `None`).
///
/// Returns the indices of the futures that are done and of those that are
/// not, each in input order, as Python's `(done, not_done)` pair.
///
/// ```
/// use multitasking::{wait, ReturnWhen, ThreadPool};
/// let pool = ThreadPool::builder().max_workers(2).build().unwrap();
/// let futs: Vec<_> = (0..4).map(|i| pool.spawn(move || i * 2).unwrap()).collect();
/// let (done, not_done) = wait(&futs, ReturnWhen::AllCompleted, None);
/// assert_eq!(done, vec![0, 1, 2, 3]);
/// assert!(not_done.is_empty());
/// ```
pub fn wait<F: Waitable>(
    futs: &[F],
    when: ReturnWhen,
    timeout: Option<Duration>,
) -> (Vec<usize>, Vec<usize>) {
    let deadline = timeout.map(|t| Instant::now() + t);
    let signal = Arc::new(Signal::default());
    let mut done = vec![false; futs.len()];
    let mut remaining = futs.len();
    let mut failed = false;
    for (i, f) in futs.iter().enumerate() {
        if f.listen(&signal, i) {
            done[i] = true;
            remaining -= 1;
            failed |= f.failed();
        }
    }
    let satisfied = |remaining: usize, failed: bool, n: usize| match when {
        ReturnWhen::AllCompleted => remaining == 0,
        ReturnWhen::FirstCompleted => remaining < n || n == 0,
        ReturnWhen::FirstException => failed || remaining == 0,
    };
    while !satisfied(remaining, failed, futs.len()) {
        match signal.next(deadline) {
            Some(i) => {
                if !done[i] {
                    done[i] = true;
                    remaining -= 1;
                    failed |= futs[i].failed();
                }
            }
            None => break,
        }
    }
    for f in futs {
        f.unlisten(&signal);
    }
    // A future may have finished after its registration was read; report
    // what is true now.
    let (mut d, mut nd) = (Vec::new(), Vec::new());
    for (i, f) in futs.iter().enumerate() {
        if done[i] || f.is_done() {
            d.push(i);
        } else {
            nd.push(i);
        }
    }
    (d, nd)
}

/// Yields futures as they complete; see [`as_completed`].
pub struct AsCompleted<T> {
    /// The futures not yet yielded; `None` once yielded.
    futs: Vec<Option<TaskFuture<T>>>,
    /// Where they report.
    signal: Arc<Signal>,
    /// Futures not yet yielded.
    left: usize,
    /// When to give up.
    deadline: Option<Instant>,
}

/// Yields each future of `futs` once it is done, in completion order; at
/// most `timeout` in all. On timeout it yields one `Err` holding the
/// futures still pending, then ends.
///
/// ```
/// use multitasking::{as_completed, ThreadPool};
/// let pool = ThreadPool::builder().max_workers(2).build().unwrap();
/// let futs: Vec<_> = (1..=3u64).map(|i| pool.spawn(move || i * i).unwrap()).collect();
/// let mut total = 0;
/// for fut in as_completed(futs, None) {
///     total += fut.unwrap().result().unwrap();
/// }
/// assert_eq!(total, 14);
/// ```
pub fn as_completed<T>(futs: Vec<TaskFuture<T>>, timeout: Option<Duration>) -> AsCompleted<T> {
    let signal = Arc::new(Signal::default());
    for (i, f) in futs.iter().enumerate() {
        if f.listen(&signal, i) {
            signal.notify(i);
        }
    }
    AsCompleted {
        left: futs.len(),
        futs: futs.into_iter().map(Some).collect(),
        signal,
        deadline: timeout.map(|t| Instant::now() + t),
    }
}

impl<T> AsCompleted<T> {
    fn pending(&mut self) -> Vec<TaskFuture<T>> {
        self.left = 0;
        let signal = self.signal.clone();
        self.futs
            .iter_mut()
            .filter_map(Option::take)
            .inspect(|f| f.unlisten(&signal))
            .collect()
    }

    fn take_ready(&mut self, i: usize) -> Option<TaskFuture<T>> {
        let f = self.futs.get_mut(i)?.take()?;
        self.left -= 1;
        Some(f)
    }
}

impl<T> Iterator for AsCompleted<T> {
    type Item = Result<TaskFuture<T>, WaitTimeout<TaskFuture<T>>>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.left > 0 {
            match self.signal.next(self.deadline) {
                Some(i) => {
                    if let Some(f) = self.take_ready(i) {
                        return Some(Ok(f));
                    }
                }
                None => {
                    let pending = self.pending();
                    return Some(Err(WaitTimeout { pending }));
                }
            }
        }
        None
    }
}

impl<T> AsCompleted<T> {
    /// The same futures as a [`futures_core::Stream`], for async code:
    /// `while let Some(f) = stream.next().await`. A type of its own, so that
    /// `StreamExt::next` and `Iterator::next` never clash.
    ///
    /// The timeout holds here too: a timer thread wakes the stream at the
    /// deadline, which then yields one `Err` with the futures still pending.
    ///
    /// ```
    /// use futures::StreamExt;
    /// use multitasking::{as_completed, ThreadPool};
    /// let pool = ThreadPool::new(2).unwrap();
    /// let futs: Vec<_> = (1..=3u64).map(|i| pool.spawn(move || i * 10).unwrap()).collect();
    /// let total = futures::executor::block_on(async {
    ///     let mut done = as_completed(futs, None).stream();
    ///     let mut total = 0;
    ///     while let Some(f) = done.next().await {
    ///         total += f.unwrap().await.unwrap();
    ///     }
    ///     total
    /// });
    /// assert_eq!(total, 60);
    /// ```
    #[cfg(feature = "stream")]
    pub fn stream(self) -> AsCompletedStream<T> {
        AsCompletedStream {
            inner: self,
            timer: false,
        }
    }
}

/// The async form of [`AsCompleted`]: a [`futures_core::Stream`] of futures
/// in completion order; see [`AsCompleted::stream`].
#[cfg(feature = "stream")]
pub struct AsCompletedStream<T> {
    /// The futures and their signal.
    inner: AsCompleted<T>,
    /// True once a timer thread waits for the deadline.
    timer: bool,
}

#[cfg(feature = "stream")]
impl<T> AsCompletedStream<T> {
    /// Under loom there is no timer (the stream is not in the model).
    #[cfg(loom)]
    fn arm_timer(&mut self, _deadline: Instant) {}

    /// Starts, once, a thread that wakes the stream at `deadline`: nothing
    /// else would, if no future completes by then.
    #[cfg(not(loom))]
    fn arm_timer(&mut self, deadline: Instant) {
        if self.timer {
            return;
        }
        self.timer = true;
        // A weak handle: a stream dropped early does not wait for its timer.
        let signal = std::sync::Arc::downgrade(&self.inner.signal);
        let started = std::thread::Builder::new()
            .name("multitasking-as-completed-timer".into())
            .spawn(move || {
                let now = Instant::now();
                if deadline > now {
                    std::thread::sleep(deadline - now);
                }
                if let Some(signal) = signal.upgrade() {
                    if let Some(w) = lock(&signal.waker).take() {
                        w.wake();
                    }
                }
            });
        // Without a thread the deadline is checked on each completion only.
        self.timer = started.is_ok();
    }
}

#[cfg(feature = "stream")]
impl<T> futures_core::Stream for AsCompletedStream<T> {
    type Item = Result<TaskFuture<T>, WaitTimeout<TaskFuture<T>>>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        loop {
            if self.inner.left == 0 {
                return Poll::Ready(None);
            }
            // Register before looking, so a notify between the two wakes us.
            *lock(&self.inner.signal.waker) = Some(cx.waker().clone());
            let next = lock(&self.inner.signal.ready).pop_front();
            match next {
                Some(i) => {
                    if let Some(f) = self.inner.take_ready(i) {
                        return Poll::Ready(Some(Ok(f)));
                    }
                }
                None => {
                    if let Some(d) = self.inner.deadline {
                        if Instant::now() >= d {
                            let pending = self.inner.pending();
                            return Poll::Ready(Some(Err(WaitTimeout { pending })));
                        }
                        self.arm_timer(d);
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(feature = "stream")]
impl<T> std::fmt::Debug for AsCompletedStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompletedStream")
            .field("left", &self.inner.left)
            .finish_non_exhaustive()
    }
}

impl<T> Drop for AsCompleted<T> {
    fn drop(&mut self) {
        let signal = self.signal.clone();
        for f in self.futs.iter().flatten() {
            f.unlisten(&signal);
        }
    }
}

impl<T> std::fmt::Debug for AsCompleted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompleted")
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::TaskError;
    use crate::ThreadPool;

    #[cfg(feature = "stream")]
    #[test]
    fn as_completed_is_a_stream() {
        use futures::StreamExt;
        let pool = ThreadPool::new(2).unwrap();
        let futs: Vec<_> = (0..10u64)
            .map(|i| pool.spawn(move || i * 3).unwrap())
            .collect();
        let stream = as_completed(futs, Some(Duration::from_secs(20))).stream();
        let mut got: Vec<u64> = futures::executor::block_on(
            stream
                .map(|f| f.expect("in time").result().expect("ran"))
                .collect::<Vec<_>>(),
        );
        got.sort_unstable();
        assert_eq!(got, (0..10u64).map(|i| i * 3).collect::<Vec<_>>());
    }

    /// The deadline ends the stream even when no future completes: a timer
    /// wakes it (before, it waited for a completion that never came).
    #[cfg(feature = "stream")]
    #[test]
    fn a_stream_times_out_with_nothing_completing() {
        use futures::StreamExt;
        let (never, _promise) = TaskFuture::<u32>::pending("never");
        let mut stream = as_completed(vec![never], Some(Duration::from_millis(50))).stream();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let first = futures::executor::block_on(stream.next());
            let _ = tx.send(first.map(|r| r.map(|_| ()).map_err(|t| t.pending.len())));
        });
        let first = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the stream's timeout never fired");
        assert_eq!(first, Some(Err(1)));
    }

    /// CPython's FIRST_EXCEPTION counts only futures that finished with an
    /// exception: a cancelled one does not end the wait.
    #[test]
    fn first_exception_ignores_a_cancelled_future() {
        let (cancelled, _p1) = TaskFuture::<u32>::pending("cancelled");
        let (failing, p2) = TaskFuture::<u32>::pending("failing");
        assert!(cancelled.cancel());
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            assert!(p2.set_running());
            p2.complete(Err(TaskError::Panicked {
                task: "failing".into(),
                message: "boom".into(),
                location: None,
                backtrace: None,
            }));
        });
        let futs = [cancelled, failing];
        let (done, not_done) = wait(
            &futs,
            ReturnWhen::FirstException,
            Some(Duration::from_secs(20)),
        );
        // It returned for the failure, not for the cancel (which was done
        // before the wait began).
        assert_eq!(done, vec![0, 1], "not done: {not_done:?}");
        assert!(futs[1].failed());
        assert!(!futs[0].failed());
        t.join().unwrap();
    }
}
