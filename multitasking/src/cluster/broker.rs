//! Talking to Redis: connections with timeouts, reconnecting, and reading
//! stream replies.
//!
//! The redis crate's defaults do not suit blocking stream reads (its async
//! connections time out after 500 ms, apalis-redis#76), so every blocking
//! reader here has its own synchronous connection whose read timeout is
//! longer than its `BLOCK`. A connection that fails is dropped and opened
//! again with a bounded backoff; the streams keep what was not yet read.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;

use crate::cluster::keys::{parse_url, BrokerUrl};
use crate::error::Error;
use crate::executor::{redact, scrub};

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One Redis server, for opening connections to it.
#[derive(Clone)]
pub(crate) struct Broker {
    /// The redis crate's client (opens connections; holds no socket).
    client: redis::Client,
    /// The URL with the password hidden, for messages.
    shown: String,
    /// The URL as given, only to scrub its password from what the redis
    /// crate says (never shown).
    given: String,
    /// The parsed URL.
    pub(crate) url: BrokerUrl,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The redis client and the URL as given hold the password.
        f.debug_struct("Broker")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Parses `url` (no connection yet).
    pub(crate) fn open(url: &str) -> Result<Broker, Error> {
        let parsed = parse_url(url)?;
        if parsed.redis.starts_with("rediss://") {
            // rustls needs a process-wide crypto provider; another part of
            // the program may have installed one already, which is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let shown =
            |e: &dyn std::fmt::Display| Error::Broker(scrub(&format!("{}: {e}", redact(url)), url));
        let client = if parsed.tls.any() {
            let read = |path: &str| {
                std::fs::read(path).map_err(|e| shown(&format!("reading {path}: {e}")))
            };
            let client_tls = match (&parsed.tls.cert, &parsed.tls.key) {
                (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                    client_cert: read(cert)?,
                    client_key: read(key)?,
                }),
                _ => None,
            };
            let root_cert = parsed.tls.ca.as_deref().map(read).transpose()?;
            redis::Client::build_with_tls(
                parsed.redis.as_str(),
                redis::TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )
        } else {
            redis::Client::open(parsed.redis.as_str())
        }
        .map_err(|e| shown(&e))?;
        Ok(Broker {
            client,
            shown: redact(url),
            given: url.to_string(),
            url: parsed,
        })
    }

    /// A new connection whose reads time out after `read_timeout`.
    pub(crate) fn connect(&self, read_timeout: Duration) -> Result<redis::Connection, Error> {
        self.open_connection(read_timeout)
            .map_err(|e| self.error(&e))
    }

    /// As [`Broker::connect`], keeping the redis crate's error.
    fn open_connection(&self, read_timeout: Duration) -> redis::RedisResult<redis::Connection> {
        let con = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        con.set_read_timeout(Some(read_timeout))?;
        con.set_write_timeout(Some(read_timeout))?;
        Ok(con)
    }

    /// `e` as a library error naming this broker (never its password).
    pub(crate) fn error(&self, e: &redis::RedisError) -> Error {
        let what = if e.to_string().contains("WRONGPASS") || e.to_string().contains("NOAUTH") {
            format!("authentication failed: {e}; check the user and password in the URL")
        } else {
            e.to_string()
        };
        Error::Broker(scrub(&format!("{}: {what}", self.shown), &self.given))
    }
}

/// A failed broker call: the error, and whether trying again can help.
#[derive(Debug)]
pub(crate) struct Fault {
    /// What failed, naming the broker (never its password).
    pub(crate) error: Error,
    /// True for a refusal no retry cures: a missing permission (`NOPERM`),
    /// a key of the wrong type (`WRONGTYPE`), a refused password. False
    /// for a broker that is away, restarting or busy.
    pub(crate) permanent: bool,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl From<Fault> for Error {
    fn from(f: Fault) -> Error {
        f.error
    }
}

/// Error codes that mean the same call will fail again, however often it
/// is retried.
const PERMANENT: [&str; 4] = ["NOPERM", "WRONGTYPE", "WRONGPASS", "NOAUTH"];

/// True if `e` is a refusal that no retry cures (see [`Fault::permanent`]).
pub(crate) fn is_permanent(e: &redis::RedisError) -> bool {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return true;
    }
    if let Some(code) = e.code() {
        return PERMANENT.contains(&code);
    }
    // Errors nested in a pipeline or a script reply carry the code in text.
    let text = e.to_string();
    PERMANENT.iter().any(|c| text.contains(c))
}

/// A connection that is opened again after a failure.
pub(crate) struct Link {
    /// Where to connect.
    broker: Broker,
    /// The read timeout of the connection.
    read_timeout: Duration,
    /// The open connection, if any.
    con: Option<redis::Connection>,
    /// The next reconnect delay.
    backoff: Duration,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("broker", &self.broker.shown)
            .field("connected", &self.con.is_some())
            .finish()
    }
}

impl Link {
    /// A link to `broker`; connects on first use.
    pub(crate) fn new(broker: &Broker, read_timeout: Duration) -> Link {
        Link {
            broker: broker.clone(),
            read_timeout,
            con: None,
            backoff: Duration::from_millis(50),
        }
    }

    /// Runs `f` on the connection, opening it if needed. A failure drops
    /// the connection (the next call opens a new one after a backoff).
    pub(crate) fn run<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Fault> {
        if self.con.is_none() {
            match self.broker.open_connection(self.read_timeout) {
                Ok(c) => {
                    self.con = Some(c);
                    self.backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    std::thread::sleep(self.backoff);
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
                    return Err(Fault {
                        permanent: is_permanent(&e),
                        error: self.broker.error(&e),
                    });
                }
            }
        }
        let con = self.con.as_mut().expect("connected above");
        match f(con) {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.con = None;
                }
                Err(Fault {
                    permanent: is_permanent(&e),
                    error: self.broker.error(&e),
                })
            }
        }
    }
}

/// One stream entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The entry id (`1700000000000-0`).
    pub(crate) id: String,
    /// Its fields.
    pub(crate) fields: Fields,
}

/// An entry's fields by name. Names are a few short words the code looks
/// up by hand, so they are hashed with FNV-1a rather than SipHash (whose
/// keying buys nothing here and cost a worker 3% of its time).
pub(crate) type Fields = HashMap<String, Vec<u8>, std::hash::BuildHasherDefault<Fnv>>;

/// FNV-1a, for [`Fields`], with murmur3's finalizer: FNV alone leaves the
/// top bits, which hashbrown compares first, nearly the same for keys
/// that differ in their last bytes (call ids), and a map of those spent
/// its time comparing strings.
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        // FNV-1a's offset basis.
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

impl Entry {
    /// A field as UTF-8 text.
    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.fields
            .get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// The bytes of a string reply, moved out of it.
fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// The most fields of an entry that are kept: ours have at most a dozen.
/// Anyone who can write to a stream chooses field names, and FNV makes
/// colliding ones easy to find; a forged entry with thousands of them is
/// cut here (and then fails as the garbage it is) instead of costing a
/// worker quadratic time.
const MAX_FIELDS: usize = 64;

/// Parses one `[id, [field, value, ...]]` entry; `None` for a deleted one.
fn entry(v: Value) -> Option<Entry> {
    let Value::Array(parts) = v else { return None };
    let mut parts = parts.into_iter();
    let id = String::from_utf8(bytes(parts.next()?)?).ok()?;
    let mut fields = Fields::default();
    match parts.next()? {
        Value::Array(kv) => {
            fields.reserve((kv.len() / 2).min(MAX_FIELDS));
            let mut kv = kv.into_iter();
            for _ in 0..MAX_FIELDS {
                let (Some(k), Some(v)) = (kv.next(), kv.next()) else {
                    break;
                };
                fields.insert(String::from_utf8(bytes(k)?).ok()?, bytes(v)?);
            }
        }
        Value::Map(kv) => {
            fields.reserve(kv.len().min(MAX_FIELDS));
            for (k, v) in kv.into_iter().take(MAX_FIELDS) {
                fields.insert(String::from_utf8(bytes(k)?).ok()?, bytes(v)?);
            }
        }
        _ => return None,
    }
    Some(Entry { id, fields })
}

/// The entries of an array of entries (XRANGE, XCLAIM), skipping deleted
/// ones.
pub(crate) fn entries(v: Value) -> Vec<Entry> {
    match v {
        Value::Array(items) => items.into_iter().filter_map(entry).collect(),
        _ => Vec::new(),
    }
}

/// The entries of an XREAD / XREADGROUP reply, over all its streams.
pub(crate) fn stream_reply(v: Value) -> Vec<Entry> {
    let mut out = Vec::new();
    match v {
        Value::Array(streams) => {
            for s in streams {
                if let Value::Array(kv) = s {
                    if let Ok([_, items]) = <[Value; 2]>::try_from(kv) {
                        out.extend(entries(items));
                    }
                }
            }
        }
        Value::Map(streams) => {
            for (_, items) in streams {
                out.extend(entries(items));
            }
        }
        _ => {}
    }
    out
}

/// One call in a packed task entry (see [`pack_calls`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct CallHead<'a> {
    /// The client's call id.
    pub(crate) id: std::borrow::Cow<'a, str>,
    /// The task's name.
    pub(crate) task: std::borrow::Cow<'a, str>,
    /// Its signature hash.
    pub(crate) sig: u64,
    /// Its payload's length in `data`, after the previous calls' payloads.
    pub(crate) len: u64,
}

/// The most calls one packed task entry may hold: a client packs no more
/// (see [`ClusterPool::with_calls_per_entry`](crate::ClusterPool::with_calls_per_entry)),
/// and an entry claiming more is refused as malformed rather than
/// expanded.
pub(crate) const MAX_PACKED_CALLS: usize = 1024;

/// Packs calls of one client into the fields of one task entry: `calls`
/// (postcard: each call without its payload) and `data` (the payloads,
/// end to end). One entry for a batch of calls makes Redis append, hand
/// out, track and delete one entry instead of one per call.
pub(crate) fn pack_calls<'a>(
    calls: impl Iterator<Item = (CallHead<'a>, &'a [u8])>,
) -> (Vec<u8>, Vec<u8>) {
    let mut heads = Vec::new();
    let mut data = Vec::new();
    for (head, payload) in calls {
        data.extend_from_slice(payload);
        heads.push(head);
    }
    (postcard::to_stdvec(&heads).unwrap_or_default(), data)
}

/// Unpacks the calls of a packed task entry, each with its payload; an
/// error (the entry is malformed) if `calls` does not decode, holds none
/// or more than [`MAX_PACKED_CALLS`], or the payloads do not add up to
/// `data`.
pub(crate) fn unpack_calls(e: &Entry) -> Result<Vec<(CallHead<'static>, Vec<u8>)>, String> {
    let calls = e.fields.get("calls").ok_or("no calls field")?;
    let data = e.fields.get("data").ok_or("no data field")?;
    let heads: Vec<CallHead<'static>> =
        postcard::from_bytes(calls).map_err(|err| format!("undecodable calls: {err}"))?;
    if heads.is_empty() || heads.len() > MAX_PACKED_CALLS {
        return Err(format!(
            "{} calls in one entry (1 to {MAX_PACKED_CALLS} are taken)",
            heads.len()
        ));
    }
    let mut at = 0usize;
    let mut out = Vec::with_capacity(heads.len());
    for head in heads {
        let end = usize::try_from(head.len)
            .ok()
            .and_then(|len| at.checked_add(len))
            .filter(|end| *end <= data.len())
            .ok_or_else(|| format!("call {}'s payload runs past the data field", head.id))?;
        let payload = data[at..end].to_vec();
        at = end;
        out.push((head, payload));
    }
    if at != data.len() {
        return Err(format!(
            "{} bytes of data belong to no call",
            data.len() - at
        ));
    }
    Ok(out)
}

/// One result in a packed batch (see [`pack_results`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Packed {
    /// The client's call id.
    pub(crate) id: String,
    /// The task's name.
    pub(crate) task: String,
    /// The error, or `None` for a payload of `len` bytes in the `data`
    /// field, after the previous results' payloads.
    pub(crate) error: Option<crate::error::TaskError>,
    /// Its payload's length in `data`.
    pub(crate) len: u64,
    /// How long the worker held the task, in µs.
    pub(crate) ran_us: u64,
    /// What it used, when its worker measured.
    pub(crate) usage: Option<crate::TaskUsage>,
}

/// A result to pack: its head, and its payload if it succeeded.
pub(crate) type ToPack<'a> = (Packed, Option<&'a [u8]>);

/// An unpacked result: its head and its outcome.
pub(crate) type Unpacked = (Packed, Result<Vec<u8>, crate::error::TaskError>);

/// Packs results for one client into the fields of one stream entry:
/// `batch` (postcard: the results without their payloads) and `data` (the
/// payloads, end to end). One entry per batch instead of one per result
/// makes Redis store, send and delete, and the client parse, one entry
/// with five fields rather than dozens.
pub(crate) fn pack_results(results: &[ToPack<'_>]) -> (Vec<u8>, Vec<u8>) {
    let heads: Vec<&Packed> = results.iter().map(|(p, _)| p).collect();
    let batch = postcard::to_stdvec(&heads).unwrap_or_default();
    let mut data = Vec::with_capacity(results.iter().map(|(_, d)| d.map_or(0, <[u8]>::len)).sum());
    for (_, payload) in results {
        data.extend_from_slice(payload.unwrap_or_default());
    }
    (batch, data)
}

/// Unpacks the results of a packed entry: each with its outcome (a
/// broker error for one whose payload is missing); an error if the batch
/// itself does not decode.
pub(crate) fn unpack_results(e: &Entry) -> Result<Vec<Unpacked>, String> {
    let batch = e.fields.get("batch").ok_or("no batch field")?;
    let data = e.fields.get("data").map_or(&[][..], Vec::as_slice);
    let heads: Vec<Packed> =
        postcard::from_bytes(batch).map_err(|err| format!("undecodable batch: {err}"))?;
    let mut at = 0usize;
    let mut out = Vec::with_capacity(heads.len());
    for mut head in heads {
        let outcome = match head.error.take() {
            Some(err) => Err(err),
            None => match usize::try_from(head.len)
                .ok()
                .and_then(|len| at.checked_add(len))
                .filter(|end| *end <= data.len())
            {
                Some(end) => {
                    let bytes = data[at..end].to_vec();
                    at = end;
                    Ok(bytes)
                }
                None => {
                    // The rest of the data can't be trusted either.
                    at = data.len();
                    Err(crate::error::TaskError::Broker {
                        task: head.task.clone(),
                        message: format!(
                            "result entry {}: the payload runs past its data field",
                            e.id
                        ),
                    })
                }
            },
        };
        out.push((head, outcome));
    }
    Ok(out)
}

#[cfg(test)]
mod fault_tests {
    use super::*;
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    #[test]
    fn refusals_no_retry_cures_are_permanent() {
        let e = |kind| RedisError::from((kind, "x"));
        assert!(is_permanent(&e(ErrorKind::AuthenticationFailed)));
        assert!(is_permanent(&e(ErrorKind::Server(ServerErrorKind::NoPerm))));
        assert!(!is_permanent(&e(ErrorKind::Io)));
        assert!(!is_permanent(&e(ErrorKind::Server(
            ServerErrorKind::BusyLoading
        ))));
    }
}

#[cfg(test)]
mod packing_tests {
    use super::*;
    use crate::error::TaskError;

    #[test]
    fn keys_that_differ_at_the_end_spread_over_the_top_bits() {
        use std::hash::BuildHasher;
        // hashbrown compares a hash's top 7 bits before the keys.
        let b = std::hash::BuildHasherDefault::<Fnv>::default();
        let tops: std::collections::BTreeSet<u64> = (0..1000)
            .map(|i| b.hash_one(format!("c0ffee-{i}")) >> 57)
            .collect();
        assert!(tops.len() > 120, "{} of 128", tops.len());
    }

    #[test]
    fn a_reply_parses_into_entries_and_a_forged_one_keeps_only_so_many_fields() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let item = |id: &str, kv: Vec<Value>| Value::Array(vec![bulk(id), Value::Array(kv)]);
        let many: Vec<Value> = (0..10_000)
            .flat_map(|i| [bulk(&format!("f{i}")), bulk("v")])
            .collect();
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("mt:{q}:tasks"),
            Value::Array(vec![
                item(
                    "1-0",
                    vec![bulk("id"), bulk("a"), bulk("payload"), bulk("xyz")],
                ),
                Value::Nil,
                item("2-0", many),
            ]),
        ])]);
        let got = stream_reply(reply);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].id.as_str(), got[0].text("id")), ("1-0", Some("a")));
        assert_eq!(got[0].fields["payload"], b"xyz");
        assert_eq!(
            (got[1].id.as_str(), got[1].fields.len()),
            ("2-0", MAX_FIELDS)
        );
    }

    fn entry(batch: Vec<u8>, data: Vec<u8>) -> Entry {
        let mut fields = Fields::default();
        fields.insert("batch".to_string(), batch);
        fields.insert("data".to_string(), data);
        Entry {
            id: "1-0".to_string(),
            fields,
        }
    }

    fn head(id: &str, len: u64, error: Option<TaskError>) -> Packed {
        Packed {
            id: id.to_string(),
            task: "t".to_string(),
            error,
            len,
            ran_us: 7,
            usage: None,
        }
    }

    #[test]
    fn results_pack_and_unpack() {
        let failed = TaskError::Panicked {
            task: "t".to_string(),
            message: "boom".to_string(),
            location: Some("src/lib.rs:1:1".to_string()),
            backtrace: None,
        };
        let (batch, data) = pack_results(&[
            (head("a", 3, None), Some(&b"abc"[..])),
            (head("b", 0, Some(failed.clone())), None),
            (head("c", 0, None), Some(&b""[..])),
            (head("d", 2, None), Some(&b"de"[..])),
        ]);
        let got = unpack_results(&entry(batch, data)).unwrap();
        let outcomes: Vec<_> = got
            .iter()
            .map(|(h, o)| (h.id.as_str(), o.clone()))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                ("a", Ok(b"abc".to_vec())),
                ("b", Err(failed)),
                ("c", Ok(Vec::new())),
                ("d", Ok(b"de".to_vec())),
            ]
        );
    }

    #[test]
    fn a_malformed_batch_is_an_error_not_a_panic() {
        let broker_error = |r: &Result<Vec<u8>, TaskError>| matches!(r, Err(TaskError::Broker { message, .. }) if message.contains("runs past"));
        // Data shorter than the lengths say: that call fails, clearly.
        let (batch, _) = pack_results(&[
            (head("a", 1, None), Some(&b"0"[..])),
            (head("b", 10, None), Some(&b"0123456789"[..])),
        ]);
        let got = unpack_results(&entry(batch, b"0123".to_vec())).unwrap();
        assert_eq!(got[0].1, Ok(b"0".to_vec()));
        assert!(broker_error(&got[1].1), "{:?}", got[1]);
        // A length that overflows.
        let huge = postcard::to_stdvec(&vec![head("a", u64::MAX, None)]).unwrap();
        let got = unpack_results(&entry(huge, b"x".to_vec())).unwrap();
        assert!(broker_error(&got[0].1), "{:?}", got[0]);
        // A batch that does not decode.
        assert!(unpack_results(&entry(vec![0xff; 9], Vec::new())).is_err());
    }

    fn call(id: &str, len: u64) -> CallHead<'static> {
        CallHead {
            id: id.to_string().into(),
            task: "t".into(),
            sig: 7,
            len,
        }
    }

    fn packed(calls: Vec<u8>, data: Vec<u8>) -> Entry {
        let mut e = Entry {
            id: "1-0".to_string(),
            ..Entry::default()
        };
        e.fields.insert("calls".to_string(), calls);
        e.fields.insert("data".to_string(), data);
        e
    }

    #[test]
    fn calls_pack_and_unpack_and_a_forged_pack_is_refused_whole() {
        let (calls, data) = pack_calls(
            [
                (call("a", 3), &b"abc"[..]),
                (call("b", 0), &b""[..]),
                (call("c", 2), &b"de"[..]),
            ]
            .into_iter(),
        );
        let got = unpack_calls(&packed(calls.clone(), data.clone())).unwrap();
        assert_eq!(
            got,
            vec![
                (call("a", 3), b"abc".to_vec()),
                (call("b", 0), Vec::new()),
                (call("c", 2), b"de".to_vec()),
            ]
        );
        let refused = |e: Entry, why: &str| {
            let err = unpack_calls(&e).unwrap_err();
            assert!(err.contains(why), "{err}");
        };
        // Data short of what the lengths say, or longer: nothing runs.
        refused(packed(calls.clone(), b"abcd".to_vec()), "runs past");
        refused(packed(calls, b"abcdefg".to_vec()), "belong to no call");
        let huge = postcard::to_stdvec(&vec![call("a", u64::MAX)]).unwrap();
        refused(packed(huge, b"x".to_vec()), "runs past");
        refused(packed(vec![0xff; 9], Vec::new()), "undecodable");
        let none = postcard::to_stdvec(&Vec::<CallHead>::new()).unwrap();
        refused(packed(none, Vec::new()), "0 calls");
        let many: Vec<CallHead> = (0..=MAX_PACKED_CALLS).map(|_| call("x", 0)).collect();
        refused(
            packed(postcard::to_stdvec(&many).unwrap(), Vec::new()),
            "1025 calls",
        );
        refused(Entry::default(), "no calls field");
    }
}
