//! Named tasks: the contract a function must meet to cross a process or
//! machine boundary, and the registry that finds it by name on the other
//! side.
//!
//! `#[multitasking::task] fn is_prime(n: u64) -> bool` turns the function into
//! a unit value `is_prime` that implements [`Task`] (call the function with
//! `is_prime.call(n)`), and adds an entry to a linker-section registry
//! (linkme). An entry is the task's name (its module path), a signature hash
//! (of its name and its input and output types as written), and a function
//! that runs a *batch* of encoded inputs and encodes the batch of outcomes:
//! a single call is a batch of one, a `map` chunk is a batch of many.
//! Because linker-section registries can lose entries in some linking
//! set-ups (linkme#31, #49, #61), [`register`] adds a task explicitly too.
//!
//! No code is ever sent: a worker runs only tasks compiled into it, and one
//! built from different code refuses a call with
//! [`TaskError::SignatureMismatch`].

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::TaskError;

/// How a task's inputs and outputs are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Codec {
    /// postcard: compact and fast; the default. It can't carry
    /// `#[serde(flatten)]` or `skip_serializing_if` types.
    #[default]
    Postcard,
    /// JSON: self-describing; the fallback for the types postcard can't carry.
    Json,
}

/// A function that can run in another process or on another machine.
///
/// Implemented by `#[multitasking::task]` on a unit struct; implement it by
/// hand only with care (the registry makes the value with `Default`): `NAME` must be unique in the program and `SIGNATURE` must change
/// whenever the input or output types change.
pub trait Task: Copy + Default + Send + Sync + 'static {
    /// The input: one argument's type, or a tuple of several.
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// The output.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The registered name: the function's module path.
    const NAME: &'static str;
    /// A hash of the name and the input and output types.
    const SIGNATURE: u64;
    /// The codec for inputs and outputs.
    const CODEC: Codec = Codec::Postcard;
    /// True for a task that can do whatever its input says (run a shell
    /// command, write any file): a cluster worker serves it only when told
    /// to ([`WorkerBuilder::allow_dangerous`](crate::cluster::WorkerBuilder::allow_dangerous)).
    /// `#[multitasking::task(dangerous)]` sets it. Default: false.
    const DANGEROUS: bool = false;
    /// Runs the task here, in this thread.
    fn run(&self, input: Self::Input) -> Self::Output;
}

/// Runs a batch: encoded `Vec<Input>` in, encoded
/// [`Chunk<Output>`](crate::chunk::Chunk) out; each item's panic is caught.
pub type BatchFn = fn(&[u8]) -> Result<Vec<u8>, TaskError>;

/// One registered task.
#[derive(Debug, Clone, Copy)]
pub struct TaskEntry {
    /// The task's name.
    pub name: &'static str,
    /// Its signature hash.
    pub signature: u64,
    /// Its codec.
    pub codec: Codec,
    /// True if it is marked dangerous ([`Task::DANGEROUS`]).
    pub dangerous: bool,
    /// Runs a batch of encoded inputs.
    pub run: BatchFn,
    /// A short preview of an encoded batch of inputs (as JSON, cut at 60
    /// characters), for traces and dashboards.
    pub preview: fn(&[u8]) -> String,
}

#[doc(hidden)]
#[linkme::distributed_slice]
pub static TASKS: [fn() -> TaskEntry];

/// The entry of task `T`; what `#[multitasking::task]` puts in the registry.
pub fn entry<T: Task>() -> TaskEntry {
    TaskEntry {
        name: T::NAME,
        signature: T::SIGNATURE,
        codec: T::CODEC,
        dangerous: T::DANGEROUS,
        run: run_batch::<T>,
        preview: preview_batch::<T>,
    }
}

/// Payloads past this are previewed by their size alone: decoding them
/// only to show 60 characters would cost more than the preview is worth.
const PREVIEW_DECODE_MAX: usize = 64 << 10;

/// The preview of an encoded batch of `T` inputs: its one item, or the
/// list; its size where it is too big to decode for a preview, or does not
/// decode.
fn preview_batch<T: Task>(payload: &[u8]) -> String {
    if payload.len() > PREVIEW_DECODE_MAX {
        return format!("<{} bytes>", payload.len());
    }
    match decode::<Vec<T::Input>>(T::NAME, T::CODEC, payload) {
        Ok(items) => crate::trace::preview_batch(&items),
        Err(_) => format!("<{} bytes that do not decode>", payload.len()),
    }
}

/// FNV-1a over `bytes`: the signature hash, usable in a `const`.
pub const fn signature_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

fn registry() -> &'static RwLock<HashMap<&'static str, TaskEntry>> {
    static REGISTRY: OnceLock<RwLock<HashMap<&'static str, TaskEntry>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut map = HashMap::new();
        for make in TASKS {
            let e = make();
            map.insert(e.name, e);
        }
        RwLock::new(map)
    })
}

/// Registers `task` explicitly, beside the linker-section registry. Harmless
/// if it is registered already.
pub fn register<T: Task>(_task: T) {
    let mut map = registry().write().unwrap_or_else(|p| p.into_inner());
    map.insert(T::NAME, entry::<T>());
}

/// The registered task called `name`.
pub fn lookup(name: &str) -> Option<TaskEntry> {
    let map = registry().read().unwrap_or_else(|p| p.into_inner());
    map.get(name).copied()
}

/// Every registered task.
pub(crate) fn registered() -> Vec<TaskEntry> {
    let map = registry().read().unwrap_or_else(|p| p.into_inner());
    map.values().copied().collect()
}

/// Finds `name` and checks its signature, as a worker does before a call.
pub fn resolve(name: &str, signature: u64, worker: &str) -> Result<TaskEntry, TaskError> {
    let entry = lookup(name).ok_or_else(|| TaskError::UnknownTask {
        task: name.to_string(),
        worker: worker.to_string(),
    })?;
    if entry.signature != signature {
        return Err(TaskError::SignatureMismatch {
            task: name.to_string(),
            expected: signature,
            found: entry.signature,
        });
    }
    Ok(entry)
}

/// postcard's output appended to a `Vec`, short writes (a varint, a length,
/// a tag) copied byte by byte. The stock `Vec` flavor hands every write,
/// however short, to `memmove`: in a profile of a cluster map of no-op
/// items that call was a fifth of the client's time, spent encoding the
/// chunks' integers one by one.
struct Appended(Vec<u8>);

impl postcard::ser_flavors::Flavor for Appended {
    type Output = Vec<u8>;

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() <= 16 {
            self.0.reserve(data.len());
            for &byte in data {
                self.0.push(byte);
            }
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// Encodes `value` with postcard after what `buf` holds.
pub(crate) fn postcard_into<V: Serialize + ?Sized>(
    value: &V,
    buf: Vec<u8>,
) -> postcard::Result<Vec<u8>> {
    postcard::serialize_with_flavor(value, Appended(buf))
}

/// Encodes `value` with `codec`; errors name `task`.
pub fn encode<V: Serialize + ?Sized>(
    task: &str,
    codec: Codec,
    value: &V,
) -> Result<Vec<u8>, TaskError> {
    let r = match codec {
        Codec::Postcard => postcard_into(value, Vec::new()).map_err(|e| e.to_string()),
        Codec::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
    };
    r.map_err(|message| TaskError::Codec {
        task: task.to_string(),
        message: format!("encode: {message}"),
    })
}

/// Decodes a `V` from `bytes` with `codec`; errors name `task`.
pub fn decode<V: DeserializeOwned>(task: &str, codec: Codec, bytes: &[u8]) -> Result<V, TaskError> {
    let r = match codec {
        Codec::Postcard => postcard::from_bytes(bytes).map_err(|e| e.to_string()),
        Codec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
    };
    r.map_err(|message| TaskError::Codec {
        task: task.to_string(),
        message: format!("decode: {message}"),
    })
}

/// Runs task `T` on each input of `inputs` here, catching each item's
/// panic: the engine of a chunk on every executor.
pub fn run_items<T: Task>(task: T, inputs: Vec<T::Input>) -> crate::chunk::Chunk<T::Output> {
    crate::panic::catch_each(T::NAME, inputs, |input| task.run(input))
}

/// The registry's batch function for `T`.
fn run_batch<T: Task>(payload: &[u8]) -> Result<Vec<u8>, TaskError> {
    let inputs: Vec<T::Input> = decode(T::NAME, T::CODEC, payload)?;
    let outcomes = run_items(T::default(), inputs);
    encode(T::NAME, T::CODEC, &outcomes)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_appending_encoder_writes_what_postcard_writes(
            ints in proptest::collection::vec(any::<u64>(), 0..300),
            text in ".{0,80}",
            bytes in proptest::collection::vec(any::<u8>(), 0..100),
            prefix in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let value = (ints, text, bytes, Some(-3i64), (1u8, 2u16, 3.5f64));
            let mut want = prefix.clone();
            want.extend(postcard::to_stdvec(&value).unwrap());
            prop_assert_eq!(super::postcard_into(&value, prefix).unwrap(), want);
        }
    }
}
