//! `JobFn`: a job's body that travels on the pool's channel without a heap
//! allocation of its own when it is small.
//!
//! A job was a `Box<dyn FnOnce>`: one allocation per task, made by the
//! submitting thread and freed by a worker. With glibc's malloc that free
//! takes the lock of the submitter's arena once the worker's cache of freed
//! chunks is full, so a burst of submits had the submitter and the workers
//! waking one another on that lock (a profile of 100k submits put an eighth
//! of the time in futex wake-ups and waits under `malloc` and `free`). A
//! `JobFn` keeps a closure of up to [`INLINE`] bytes inside itself, hence
//! inside the channel's slot; a larger one is boxed as before.

use std::mem::{align_of, size_of, ManuallyDrop, MaybeUninit};

use super::pool::Go;

/// The bytes a closure may take to be kept inline: a promise, an input of
/// a few words and a name fit.
const INLINE: usize = 6 * size_of::<usize>();

/// Storage for the closure (or its box), aligned as a `usize`.
type Slot = MaybeUninit<[usize; INLINE / size_of::<usize>()]>;

/// A job's body: called at most once with what to do and the hook that
/// hears whether the task succeeded; dropped uncalled, it drops its
/// closure.
pub(crate) struct JobFn {
    /// The closure, or a `Box` of it.
    slot: Slot,
    /// How to call or drop what `slot` holds: one pointer, so that a job
    /// with its trace box fits a cache line.
    table: &'static Table,
}

/// The functions of one closure type.
struct Table {
    /// Takes the closure out of the slot and calls it.
    call: unsafe fn(&mut Slot, Go, &mut dyn FnMut(bool)),
    /// Drops the closure in the slot without calling it.
    drop: unsafe fn(&mut Slot),
}

/// The [`Table`] of closures of type `F`.
struct TableOf<F>(std::marker::PhantomData<F>);

impl<F> TableOf<F>
where
    F: FnOnce(Go, &mut dyn FnMut(bool)),
{
    const TABLE: &'static Table = &Table {
        call: call_slot::<F>,
        drop: drop_slot::<F>,
    };
}

// SAFETY: a `JobFn` is only made from a closure that is `Send` (see
// `JobFn::new`), and owns it.
unsafe impl Send for JobFn {}

impl JobFn {
    /// Keeps `f` inline if it fits, else in a box.
    pub(crate) fn new<F>(f: F) -> JobFn
    where
        F: FnOnce(Go, &mut dyn FnMut(bool)) + Send,
    {
        if size_of::<F>() <= INLINE && align_of::<F>() <= align_of::<Slot>() {
            Self::store(f)
        } else {
            Self::store(Box::new(f))
        }
    }

    /// Moves `f`, which fits, into a slot.
    fn store<F>(f: F) -> JobFn
    where
        F: FnOnce(Go, &mut dyn FnMut(bool)) + Send,
    {
        // Known when compiled: costs nothing where it holds.
        assert!(size_of::<F>() <= INLINE && align_of::<F>() <= align_of::<Slot>());
        let mut slot = Slot::uninit();
        // SAFETY: the slot is large and aligned enough for `F` (checked
        // above); it is written once, here.
        unsafe { slot.as_mut_ptr().cast::<F>().write(f) };
        JobFn {
            slot,
            table: TableOf::<F>::TABLE,
        }
    }

    /// Runs the closure.
    pub(crate) fn call(self, go: Go, done: &mut dyn FnMut(bool)) {
        let mut me = ManuallyDrop::new(self);
        // SAFETY: the slot holds the closure `call` was made for, not yet
        // taken: `self` is consumed here and its drop does not run.
        unsafe { (me.table.call)(&mut me.slot, go, done) }
    }
}

impl Drop for JobFn {
    fn drop(&mut self) {
        // SAFETY: a `JobFn` that is dropped was never called (`call`
        // consumes it without its drop), so the slot still holds its
        // closure.
        unsafe { (self.table.drop)(&mut self.slot) }
    }
}

/// Takes the `F` out of `slot` and calls it.
///
/// # Safety
///
/// `slot` holds an `F`, which must not be used again.
unsafe fn call_slot<F>(slot: &mut Slot, go: Go, done: &mut dyn FnMut(bool))
where
    F: FnOnce(Go, &mut dyn FnMut(bool)),
{
    // SAFETY: the caller says the slot holds an `F` it gives up.
    let f = unsafe { slot.as_mut_ptr().cast::<F>().read() };
    f(go, done);
}

/// Drops the `F` in `slot`.
///
/// # Safety
///
/// `slot` holds an `F`, which must not be used again.
unsafe fn drop_slot<F>(slot: &mut Slot) {
    // SAFETY: the caller says the slot holds an `F` it gives up.
    unsafe { slot.as_mut_ptr().cast::<F>().drop_in_place() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_job_takes_seven_words() {
        assert_eq!(size_of::<JobFn>(), 7 * size_of::<usize>());
    }

    #[test]
    fn small_and_large_closures_run_once_and_drop_once() {
        let small = Arc::new(());
        let large = Arc::new(());
        let (s, l) = (small.clone(), large.clone());
        let big = [7u64; 32];
        let mut seen = Vec::new();
        JobFn::new(move |_, done| {
            let _keep = &s;
            done(true)
        })
        .call(Go::Run, &mut |ok| seen.push(ok));
        JobFn::new(move |_, done| done(l.as_ref() == &() && big[31] == 7))
            .call(Go::Run, &mut |ok| seen.push(ok));
        assert_eq!(seen, [true, true]);
        assert_eq!(
            (Arc::strong_count(&small), Arc::strong_count(&large)),
            (1, 1)
        );
        // Dropped uncalled: what they hold is dropped too.
        let (s, l) = (small.clone(), large.clone());
        drop(JobFn::new(move |_, _| drop(s)));
        drop(JobFn::new(move |_, _| drop((l, big))));
        assert_eq!(
            (Arc::strong_count(&small), Arc::strong_count(&large)),
            (1, 1)
        );
    }
}
