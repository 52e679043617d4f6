//! `Chunk<O>`: the outcomes of a batch of items, compact.
//!
//! A chunk's items mostly succeed, so a chunk stores the values in input
//! order and the few errors apart, each with its position. That keeps a
//! million no-op results at eight bytes each instead of the size of a
//! `Result<O, TaskError>` (about a hundred bytes), which is what lets a
//! `map` of cheap items run at memory speed. It is also the wire form of a
//! batch's outcome: `serde` carries it between processes and machines.
//! Iterating a chunk yields each item's `Result<O, TaskError>` in order.

use serde::{Deserialize, Serialize};

use crate::error::TaskError;

/// The outcomes of a batch, in input order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk<O> {
    /// The values of the items that succeeded, in input order.
    values: Vec<O>,
    /// The items that failed: (position in the batch, error), ascending.
    errors: Vec<(u32, TaskError)>,
}

impl<O> Default for Chunk<O> {
    fn default() -> Self {
        Chunk {
            values: Vec::new(),
            errors: Vec::new(),
        }
    }
}

impl<O> Chunk<O> {
    /// An empty chunk with room for `n` values.
    pub fn with_capacity(n: usize) -> Self {
        Chunk {
            values: Vec::with_capacity(n),
            errors: Vec::new(),
        }
    }

    /// Appends a success.
    pub fn push_ok(&mut self, value: O) {
        self.values.push(value);
    }

    /// Appends a failure.
    pub fn push_err(&mut self, error: TaskError) {
        let at = u32::try_from(self.len()).unwrap_or(u32::MAX);
        self.errors.push((at, error));
    }

    /// Appends an outcome.
    pub fn push(&mut self, outcome: Result<O, TaskError>) {
        match outcome {
            Ok(v) => self.push_ok(v),
            Err(e) => self.push_err(e),
        }
    }

    /// A chunk of `n` items that all failed with `error`.
    pub fn all_failed(n: usize, error: &TaskError) -> Self {
        let mut c = Chunk::default();
        for _ in 0..n {
            c.push_err(error.clone());
        }
        c
    }

    /// How many items.
    pub fn len(&self) -> usize {
        self.values.len() + self.errors.len()
    }

    /// True if it has no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many items failed.
    pub fn failures(&self) -> usize {
        self.errors.len()
    }

    /// The outcomes as a vector.
    pub fn into_vec(self) -> Vec<Result<O, TaskError>> {
        self.into_iter().collect()
    }

    /// Checks the chunk is well-formed (error positions ascending and in
    /// range), as a decoder must before trusting a peer's chunk.
    pub fn validate(&self) -> bool {
        let n = self.len();
        self.errors.windows(2).all(|w| w[0].0 < w[1].0)
            && self.errors.iter().all(|(i, _)| (*i as usize) < n)
    }
}

impl<O> FromIterator<Result<O, TaskError>> for Chunk<O> {
    fn from_iter<I: IntoIterator<Item = Result<O, TaskError>>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut c = Chunk::with_capacity(iter.size_hint().0);
        for r in iter {
            c.push(r);
        }
        c
    }
}

impl<O> From<Vec<Result<O, TaskError>>> for Chunk<O> {
    fn from(v: Vec<Result<O, TaskError>>) -> Self {
        v.into_iter().collect()
    }
}

/// Yields a chunk's outcomes in order; see [`Chunk`].
#[derive(Debug)]
pub struct ChunkIter<O> {
    /// The values left.
    values: std::vec::IntoIter<O>,
    /// The errors left.
    errors: std::vec::IntoIter<(u32, TaskError)>,
    /// Position of the next error, or `u32::MAX` when none is left.
    next_err: u32,
    /// Position of the next item.
    at: u32,
}

impl<O> ChunkIter<O> {
    fn take_err(&mut self) -> Option<Result<O, TaskError>> {
        let (_, e) = self.errors.next()?;
        self.next_err = self.errors.as_slice().first().map_or(u32::MAX, |(i, _)| *i);
        Some(Err(e))
    }
}

impl<O> Iterator for ChunkIter<O> {
    type Item = Result<O, TaskError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let at = self.at;
        self.at = self.at.wrapping_add(1);
        if at == self.next_err {
            return self.take_err();
        }
        match self.values.next() {
            Some(v) => Some(Ok(v)),
            // A malformed chunk may leave errors past the values.
            None => self.take_err(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.values.len() + self.errors.len();
        (n, Some(n))
    }

    /// A chunk without errors folds over its values in a tight loop; the
    /// `Result` around each value is built and taken apart in registers.
    #[inline]
    fn fold<B, F>(self, init: B, mut f: F) -> B
    where
        F: FnMut(B, Self::Item) -> B,
    {
        if self.next_err == u32::MAX && self.errors.len() == 0 {
            return self.values.map(Ok).fold(init, f);
        }
        let mut acc = init;
        // `for` drives `next`, not this `fold`: no recursion.
        for item in self {
            acc = f(acc, item);
        }
        acc
    }
}

impl<O> IntoIterator for Chunk<O> {
    type Item = Result<O, TaskError>;
    type IntoIter = ChunkIter<O>;

    fn into_iter(self) -> ChunkIter<O> {
        let next_err = self.errors.first().map_or(u32::MAX, |(i, _)| *i);
        ChunkIter {
            values: self.values.into_iter(),
            errors: self.errors.into_iter(),
            next_err,
            at: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(i: u64) -> TaskError {
        TaskError::Cancelled {
            task: format!("t{i}"),
        }
    }

    #[test]
    fn round_trips_outcomes_in_order() {
        let outcomes: Vec<Result<u64, TaskError>> = (0..10u64)
            .map(|i| if i % 3 == 0 { Err(err(i)) } else { Ok(i) })
            .collect();
        let chunk: Chunk<u64> = outcomes.clone().into();
        assert_eq!(chunk.len(), 10);
        assert_eq!(chunk.failures(), 4);
        assert!(chunk.validate());
        let bytes = postcard::to_stdvec(&chunk).unwrap();
        let back: Chunk<u64> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.into_vec(), outcomes);
    }

    #[test]
    fn malformed_chunks_are_detected_and_lose_nothing() {
        let bad = Chunk::<u64> {
            values: vec![1],
            errors: vec![(5, err(0)), (2, err(1))],
        };
        assert!(!bad.validate());
        assert_eq!(bad.into_iter().count(), 3);
    }
}
