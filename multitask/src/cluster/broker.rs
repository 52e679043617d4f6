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
use crate::executor::redact;

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One Redis server, for opening connections to it.
#[derive(Debug, Clone)]
pub(crate) struct Broker {
    /// The redis crate's client (opens connections; holds no socket).
    client: redis::Client,
    /// The URL with the password hidden, for messages.
    shown: String,
    /// The parsed URL.
    pub(crate) url: BrokerUrl,
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
        let client = redis::Client::open(parsed.redis.as_str())
            .map_err(|e| Error::Broker(format!("{}: {e}", redact(url))))?;
        Ok(Broker {
            client,
            shown: redact(url),
            url: parsed,
        })
    }

    /// A new connection whose reads time out after `read_timeout`.
    pub(crate) fn connect(&self, read_timeout: Duration) -> Result<redis::Connection, Error> {
        let con = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(|e| self.error(&e))?;
        con.set_read_timeout(Some(read_timeout))
            .map_err(|e| self.error(&e))?;
        con.set_write_timeout(Some(read_timeout))
            .map_err(|e| self.error(&e))?;
        Ok(con)
    }

    /// `e` as a library error naming this broker (never its password).
    pub(crate) fn error(&self, e: &redis::RedisError) -> Error {
        let what = if e.to_string().contains("WRONGPASS") || e.to_string().contains("NOAUTH") {
            format!("authentication failed: {e}; check the user and password in the URL")
        } else {
            e.to_string()
        };
        Error::Broker(format!("{}: {what}", self.shown))
    }
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
    ) -> Result<T, Error> {
        if self.con.is_none() {
            match self.broker.connect(self.read_timeout) {
                Ok(c) => {
                    self.con = Some(c);
                    self.backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    std::thread::sleep(self.backoff);
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
                    return Err(e);
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
                Err(self.broker.error(&e))
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
    pub(crate) fields: HashMap<String, Vec<u8>>,
}

impl Entry {
    /// A field as UTF-8 text.
    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.fields
            .get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.as_bytes().to_vec()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes().to_vec()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// Parses one `[id, [field, value, ...]]` entry; `None` for a deleted one.
fn entry(v: &Value) -> Option<Entry> {
    let Value::Array(parts) = v else { return None };
    let id = String::from_utf8(bytes(parts.first()?)?).ok()?;
    let mut fields = HashMap::new();
    match parts.get(1)? {
        Value::Array(kv) => {
            for pair in kv.chunks(2) {
                if let [k, v] = pair {
                    let k = String::from_utf8(bytes(k)?).ok()?;
                    fields.insert(k, bytes(v)?);
                }
            }
        }
        Value::Map(kv) => {
            for (k, v) in kv {
                fields.insert(String::from_utf8(bytes(k)?).ok()?, bytes(v)?);
            }
        }
        _ => return None,
    }
    Some(Entry { id, fields })
}

/// The entries of an array of entries (XRANGE, XCLAIM), skipping deleted
/// ones.
pub(crate) fn entries(v: &Value) -> Vec<Entry> {
    match v {
        Value::Array(items) => items.iter().filter_map(entry).collect(),
        _ => Vec::new(),
    }
}

/// The entries of an XREAD / XREADGROUP reply, over all its streams.
pub(crate) fn stream_reply(v: &Value) -> Vec<Entry> {
    match v {
        Value::Array(streams) => streams
            .iter()
            .flat_map(|s| match s {
                Value::Array(kv) if kv.len() == 2 => entries(&kv[1]),
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(streams) => streams.iter().flat_map(|(_, v)| entries(v)).collect(),
        _ => Vec::new(),
    }
}
