//! Catching a task's panic and turning it into data.
//!
//! Every task boundary runs the task under [`catch`]. A process-wide panic
//! hook (installed once, chained to the previous one) records the location
//! and, when `RUST_BACKTRACE` asks for it, a backtrace into a thread-local
//! slot; `catch` picks them up and builds [`TaskError::Panicked`]. While a
//! task runs, the hook stays quiet: the panic is reported once, as the
//! task's error, not also as noise on stderr (gh-101267 is what happens
//! when panic text from many tasks is glued together).

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use crate::error::TaskError;

thread_local! {
    /// True while this thread runs a task under `catch`.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    /// Location and backtrace of the last panic on this thread.
    static LAST: RefCell<(Option<String>, Option<String>)> = const { RefCell::new((None, None)) };
}

static HOOK: Once = Once::new();

fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_TASK.with(Cell::get) {
                let location = info.location().map(|l| l.to_string());
                let backtrace = match std::env::var_os("RUST_BACKTRACE") {
                    Some(v) if v != "0" => {
                        Some(std::backtrace::Backtrace::force_capture().to_string())
                    }
                    _ => None,
                };
                LAST.with(|last| *last.borrow_mut() = (location, backtrace));
            } else {
                previous(info);
            }
        }));
    });
}

/// Takes the location and backtrace the hook recorded for this thread.
pub(crate) fn take_last() -> (Option<String>, Option<String>) {
    LAST.with(|last| std::mem::take(&mut *last.borrow_mut()))
}

/// Runs `f`, turning a panic into [`TaskError::Panicked`] named for `task`.
pub(crate) fn catch<R>(task: &str, f: impl FnOnce() -> R) -> Result<R, TaskError> {
    install_hook();
    let was = IN_TASK.with(|t| t.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    IN_TASK.with(|t| t.set(was));
    result.map_err(|payload| TaskError::from_panic(task, &*payload))
}

/// Runs `f` on each item into a chunk, each item's panic becoming that
/// item's error.
///
/// One `catch_unwind` covers the whole batch; after a panic the item that
/// panicked gets its error and the rest go on under a new one, so a cheap
/// item costs no more than its call.
pub(crate) fn catch_each<X, R>(
    task: &str,
    items: Vec<X>,
    f: impl Fn(X) -> R,
) -> crate::chunk::Chunk<R> {
    let mut out = crate::chunk::Chunk::with_capacity(items.len());
    let mut rest = items.into_iter();
    loop {
        let ran = catch(task, || {
            for x in rest.by_ref() {
                out.push_ok(f(x));
            }
        });
        match ran {
            Ok(()) => return out,
            Err(e) => out.push_err(e),
        }
    }
}
