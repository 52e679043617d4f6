//! Signed entries: an HMAC-SHA256, under a key the clients and workers of
//! a queue share, over every field of a task or result entry that decides
//! what runs and where its answer goes.
//!
//! A seal holds one key or several (rotation): it signs with the first and
//! accepts a tag made with any. The message is a domain word naming the
//! kind of entry, then each field, length-prefixed (so no two field lists
//! make the same bytes), in a fixed order:
//!
//! ```text
//!   task     "mt-task-1"    task stream key, id, task, sig, reply, payload,
//!                           timeout_ms, exp (Unix ms after which it is void)
//!   tasks    "mt-tasks-1"   task stream key, calls, reply, data, timeout_ms,
//!                           exp (a packed entry: several calls of a client)
//!   results  "mt-result-1"  reply stream key, batch, data, worker, host, pid
//!   started  "mt-started-1" reply stream key, id, worker, host, pid, held_us
//!   error    "mt-error-1"   reply stream key, id, task, error
//! ```
//!
//! The stream key is signed though it is not a field: an entry copied to
//! another queue, or a result copied to another client's stream, fails
//! its check there. The tag travels in the entry's `mac` field.

use ring::hmac;

use crate::error::Error;

/// The shortest key accepted, in bytes.
pub(crate) const MIN_KEY: usize = 16;

/// The keys of a queue's clients and workers.
#[derive(Clone)]
pub(crate) struct Seal {
    /// The keys; the first signs, any verifies. Never empty.
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.debug_struct("Seal")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Seal {
    /// A seal of `keys` (the first signs); `None` for no keys. Fails for a
    /// key shorter than [`MIN_KEY`] bytes.
    pub(crate) fn new<K: AsRef<[u8]>>(keys: &[K]) -> Result<Option<Seal>, Error> {
        if keys.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            let k = k.as_ref();
            if k.len() < MIN_KEY {
                return Err(Error::Config(format!(
                    "cluster key {} is {} bytes long; a key needs at least {MIN_KEY} \
                     (make one with `openssl rand -hex 32`)",
                    i + 1,
                    k.len()
                )));
            }
            out.push(hmac::Key::new(hmac::HMAC_SHA256, k));
        }
        Ok(Some(Seal { keys: out }))
    }

    /// The tag of `parts` under the signing key.
    pub(crate) fn sign(&self, parts: &[&[u8]]) -> Vec<u8> {
        hmac::sign(&self.keys[0], &message(parts)).as_ref().to_vec()
    }

    /// True if `tag` is the tag of `parts` under any of the keys (compared
    /// in constant time).
    pub(crate) fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let msg = message(parts);
        self.keys.iter().any(|k| hmac::verify(k, &msg, tag).is_ok())
    }
}

/// The bytes signed: each part after its length (u32, big-endian).
fn message(parts: &[&[u8]]) -> Vec<u8> {
    let mut m = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for p in parts {
        m.extend_from_slice(&(p.len() as u32).to_be_bytes());
        m.extend_from_slice(p);
    }
    m
}

/// Keys from text: one per non-empty line (surrounding spaces dropped),
/// as in a key file, or separated by commas, as in
/// `MULTITASK_CLUSTER_KEY`. The first signs.
pub fn parse_keys(text: &str) -> Vec<Vec<u8>> {
    text.split(['\n', ','])
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| k.as_bytes().to_vec())
        .collect()
}

/// The keys in `MULTITASK_CLUSTER_KEY`, if it is set (see [`parse_keys`]).
pub fn keys_from_env() -> Vec<Vec<u8>> {
    std::env::var("MULTITASK_CLUSTER_KEY")
        .map(|t| parse_keys(&t))
        .unwrap_or_default()
}

/// The task entry fields signed, in order (after the domain word and the
/// task stream key). An absent field signs as empty.
pub(crate) const TASK_FIELDS: [&str; 7] =
    ["id", "task", "sig", "reply", "payload", "timeout_ms", "exp"];

/// The domain word of task entries.
pub(crate) const TASK: &[u8] = b"mt-task-1";
/// The domain word of packed task entries (several calls in one).
pub(crate) const TASKS: &[u8] = b"mt-tasks-1";
/// The domain word of packed result entries.
pub(crate) const RESULTS: &[u8] = b"mt-result-1";
/// The domain word of started notices.
pub(crate) const STARTED: &[u8] = b"mt-started-1";
/// The domain word of an error sent with a dead letter.
pub(crate) const ERROR: &[u8] = b"mt-error-1";

/// The parts signed for a task entry on `stream` whose fields
/// [`TASK_FIELDS`] are `values`.
pub(crate) fn task_parts<'a>(stream: &'a str, values: [&'a [u8]; 7]) -> [&'a [u8]; 9] {
    let [a, b, c, d, e, f, g] = values;
    [TASK, stream.as_bytes(), a, b, c, d, e, f, g]
}

/// The parts signed for a packed task entry on `stream`: its fields
/// calls, reply, data, timeout_ms and exp.
pub(crate) fn packed_parts<'a>(stream: &'a str, values: [&'a [u8]; 5]) -> [&'a [u8]; 7] {
    let [calls, reply, data, timeout, exp] = values;
    [TASKS, stream.as_bytes(), calls, reply, data, timeout, exp]
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_checks_under_any_key_and_only_for_its_parts() {
        let old = Seal::new(&["an old key of 16+ bytes"]).unwrap().unwrap();
        let both = Seal::new(&["a new key of 16+ bytes", "an old key of 16+ bytes"])
            .unwrap()
            .unwrap();
        let parts: [&[u8]; 3] = [b"mt-task-1", b"id", b"payload"];
        let tag = old.sign(&parts);
        assert!(
            both.verify(&parts, &tag),
            "rotation: the old key still checks"
        );
        assert!(
            !old.verify(&parts, &both.sign(&parts)),
            "the first key signs"
        );
        assert!(!old.verify(&[b"mt-task-1", b"id", b"payloaD"], &tag));
        // Moving bytes between fields changes the message.
        assert!(!old.verify(&[b"mt-task-1", b"idp", b"ayload"], &tag));
        assert!(!old.verify(&parts, &tag[..31]));
    }

    #[test]
    fn short_keys_are_refused_and_none_is_no_seal() {
        let e = Seal::new(&["short"]).unwrap_err().to_string();
        assert!(e.contains("at least 16") && !e.contains("short"), "{e}");
        assert!(Seal::new::<&str>(&[]).unwrap().is_none());
        assert_eq!(
            parse_keys(" k1 \n\nk2\r\n"),
            vec![b"k1".to_vec(), b"k2".to_vec()]
        );
        assert_eq!(parse_keys("a,b"), vec![b"a".to_vec(), b"b".to_vec()]);
    }
}
