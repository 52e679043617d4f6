//! Futures resolved from encoded replies: what the process pool and the
//! cluster pool share.
//!
//! A remote executor holds, per call in flight, a [`Deliver`]: the caller's
//! promise and how to decode the bytes that come back into the caller's
//! type. Decoding runs under `catch_unwind` (a `Deserialize` impl may
//! panic) and checks a chunk's shape, so a peer's bad reply is a typed
//! error, never a panic in the pool.

use std::sync::Arc;

use crate::chunk::Chunk;
use crate::error::TaskError;
use crate::future::{Promise, Terminate};
use crate::task::{self, Task};

/// Resolves a call's future from its encoded reply, whatever its type.
pub(crate) trait Deliver: Send {
    /// Moves the future to running (again, for a retry) and gives it a way
    /// to stop the worker; false if it was cancelled.
    fn start(&mut self, control: Option<Arc<dyn Terminate>>) -> bool;
    /// Gives the future, still pending, its executor's handle: a cluster's
    /// withdraws the task from the broker when the caller cancels.
    fn set_control(&self, control: Arc<dyn Terminate>);
    /// True once `start` succeeded.
    fn is_started(&self) -> bool;
    /// Records what the task used, before `finish`.
    fn set_usage(&self, usage: crate::TaskUsage);
    /// Decodes the reply and resolves the future.
    fn finish(self: Box<Self>, outcome: Result<Vec<u8>, TaskError>);
    /// Cancels the future (shutdown with `cancel_futures`).
    fn cancel(self: Box<Self>);
}

/// A [`Deliver`] for output `O`, decoded by `decode`.
struct Typed<O, F> {
    /// The caller's promise.
    promise: Promise<O>,
    /// Bytes to output.
    decode: F,
    /// Set once the promise moved to running.
    started: bool,
}

impl<O, F> Deliver for Typed<O, F>
where
    O: Send + 'static,
    F: FnOnce(Vec<u8>) -> Result<O, TaskError> + Send + 'static,
{
    fn start(&mut self, control: Option<Arc<dyn Terminate>>) -> bool {
        if !self.started {
            if !self.promise.set_running() {
                return false;
            }
            self.started = true;
        }
        if let Some(c) = control {
            self.promise.set_terminate(c);
        }
        true
    }

    fn set_control(&self, control: Arc<dyn Terminate>) {
        self.promise.set_terminate(control);
    }

    fn is_started(&self) -> bool {
        self.started
    }

    fn set_usage(&self, usage: crate::TaskUsage) {
        self.promise.set_usage(usage);
    }

    fn finish(self: Box<Self>, outcome: Result<Vec<u8>, TaskError>) {
        let task = self.promise.task();
        let decode = self.decode;
        let value = outcome.and_then(|bytes| crate::panic::catch(task, || decode(bytes))?);
        self.promise.complete(value);
    }

    fn cancel(self: Box<Self>) {
        self.promise.cancel();
    }
}

/// A [`Deliver`] of `promise` through `decode`.
pub(crate) fn deliver<O, F>(promise: Promise<O>, decode: F) -> Box<dyn Deliver>
where
    O: Send + 'static,
    F: FnOnce(Vec<u8>) -> Result<O, TaskError> + Send + 'static,
{
    Box::new(Typed {
        promise,
        decode,
        started: false,
    })
}

/// Decodes a reply as a chunk of `n` outcomes of `T`, checking its shape.
pub(crate) fn decode_chunk<T: Task>(bytes: &[u8], n: usize) -> Result<Chunk<T::Output>, TaskError> {
    let chunk: Chunk<T::Output> = task::decode(T::NAME, T::CODEC, bytes)?;
    if !chunk.validate() || chunk.len() != n {
        return Err(TaskError::Codec {
            task: T::NAME.to_string(),
            message: format!(
                "the worker returned a malformed chunk: {} outcomes for {n} inputs",
                chunk.len()
            ),
        });
    }
    Ok(chunk)
}

/// The deliver of a single `submit`: a chunk of one, its one outcome.
pub(crate) fn deliver_one<T: Task>(promise: Promise<T::Output>) -> Box<dyn Deliver> {
    deliver(promise, |bytes: Vec<u8>| {
        let chunk = decode_chunk::<T>(&bytes, 1)?;
        chunk.into_iter().next().expect("a chunk of one")
    })
}

/// The deliver of a `submit_chunk` of `n` inputs.
pub(crate) fn deliver_chunk<T: Task>(
    promise: Promise<Chunk<T::Output>>,
    n: usize,
) -> Box<dyn Deliver> {
    deliver(promise, move |bytes: Vec<u8>| decode_chunk::<T>(&bytes, n))
}
