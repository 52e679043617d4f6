//! The Redis key layout of a queue, and the parsing of broker URLs.
//!
//! Every key of queue `q` carries the hash tag `{q}`, so that Redis Cluster
//! keeps a queue's keys on one shard while different queues spread out.

use crate::error::Error;

/// The consumer group every worker of a queue joins.
pub(crate) const GROUP: &str = "workers";

/// How long a client's result stream lives after its last write or
/// renewal: a live client renews it, so only a dead client's expires.
pub(crate) const RESULTS_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// The keys of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Keys {
    /// The queue's name.
    pub(crate) queue: String,
}

impl Keys {
    /// The keys of queue `queue`.
    pub(crate) fn new(queue: &str) -> Keys {
        Keys {
            queue: queue.to_string(),
        }
    }

    /// The task stream (consumer group [`GROUP`]).
    pub(crate) fn tasks(&self) -> String {
        format!("mt:{{{}}}:tasks", self.queue)
    }

    /// The result stream of client `client`.
    pub(crate) fn results(&self, client: &str) -> String {
        format!("mt:{{{}}}:results:{client}", self.queue)
    }

    /// The dead-letter stream.
    pub(crate) fn dead(&self) -> String {
        format!("mt:{{{}}}:dead", self.queue)
    }

    /// The heartbeat key of worker `consumer` (expires when it stops).
    pub(crate) fn heartbeat(&self, consumer: &str) -> String {
        format!("mt:{{{}}}:worker:{consumer}", self.queue)
    }

    /// Tasks their clients asked to stop (sorted set: task stream entry
    /// ids, scored by when it was asked, in Unix ms).
    pub(crate) fn terminate(&self) -> String {
        format!("mt:{{{}}}:terminate", self.queue)
    }

    /// Calls withdrawn from packed task entries no worker had claimed
    /// (hash: entry id to the withdrawn calls' positions, `3,0,`); the
    /// worker that claims such an entry skips them.
    pub(crate) fn withdrawn(&self) -> String {
        format!("mt:{{{}}}:withdrawn", self.queue)
    }

    /// Finished tasks, as workers publish them for dashboards (capped).
    pub(crate) fn spans(&self) -> String {
        format!("mt:{{{}}}:spans", self.queue)
    }

    /// The set of workers that have joined the queue.
    pub(crate) fn workers(&self) -> String {
        format!("mt:{{{}}}:workers", self.queue)
    }
}

/// A broker URL split into what the redis crate takes and our options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BrokerUrl {
    /// The URL without our query parameters.
    pub(crate) redis: String,
    /// The queue (`?queue=`; default `default`).
    pub(crate) queue: String,
    /// Files for TLS (`?tls_ca=`, `?tls_cert=`, `?tls_key=`).
    pub(crate) tls: TlsFiles,
}

/// PEM files a `rediss://` URL names: a CA to check the server's
/// certificate with, instead of the system's roots, and a client
/// certificate and key, for a server that asks for one
/// (`tls-auth-clients yes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// The CA certificates (`tls_ca`).
    pub(crate) ca: Option<String>,
    /// The client certificate (`tls_cert`); set with `key`.
    pub(crate) cert: Option<String>,
    /// The client's private key (`tls_key`); set with `cert`.
    pub(crate) key: Option<String>,
}

impl TlsFiles {
    /// True if any file is named.
    pub(crate) fn any(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// Parses `redis://[user:password@]host:port/db?queue=name` (or
/// `rediss://` for TLS, which also takes `tls_ca=PATH`, and
/// `tls_cert=PATH&tls_key=PATH` for a client certificate).
pub(crate) fn parse_url(url: &str) -> Result<BrokerUrl, Error> {
    let bad = |reason: &str| Error::Spec {
        spec: crate::executor::redact(url),
        reason: reason.to_string(),
    };
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(bad("a broker URL starts with redis:// or rediss://"));
    }
    // `#insecure` (accept any TLS certificate) goes back on the redis URL.
    let (url_only, fragment) = match url.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (url, None),
    };
    let (base, query) = match url_only.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut queue = "default".to_string();
    let mut tls = TlsFiles::default();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("queue", q)) => {
                if q.is_empty() || q.contains(['{', '}', ' ']) {
                    return Err(bad(
                        "the queue name must be non-empty, without braces or spaces",
                    ));
                }
                queue = q.to_string();
            }
            Some(("tls_ca", p)) => tls.ca = Some(p.to_string()),
            Some(("tls_cert", p)) => tls.cert = Some(p.to_string()),
            Some(("tls_key", p)) => tls.key = Some(p.to_string()),
            _ => rest.push(pair),
        }
    }
    if tls.any() && !url.starts_with("rediss://") {
        return Err(bad("tls_ca, tls_cert and tls_key need a rediss:// URL"));
    }
    if tls.cert.is_some() != tls.key.is_some() {
        return Err(bad("a client certificate needs both tls_cert and tls_key"));
    }
    let mut redis = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    if let Some(f) = fragment {
        redis = format!("{redis}#{f}");
    }
    Ok(BrokerUrl { redis, queue, tls })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_queue_hash_tag() {
        let k = Keys::new("q1");
        for key in [
            k.tasks(),
            k.results("c"),
            k.dead(),
            k.heartbeat("w"),
            k.workers(),
            k.terminate(),
        ] {
            assert!(key.contains("{q1}"), "{key}");
        }
    }

    #[test]
    fn urls_split_into_redis_and_queue() {
        let u = parse_url("redis://u:p@h:6379/2?queue=jobs").unwrap();
        assert_eq!(u.redis, "redis://u:p@h:6379/2");
        assert_eq!(u.queue, "jobs");
        let u = parse_url("rediss://h/0?protocol=resp2&queue=x").unwrap();
        assert_eq!(u.redis, "rediss://h/0?protocol=resp2");
        assert_eq!(parse_url("redis://h").unwrap().queue, "default");
        let u = parse_url("rediss://h:6380/0?queue=q#insecure").unwrap();
        assert_eq!(
            (u.redis.as_str(), u.queue.as_str()),
            ("rediss://h:6380/0#insecure", "q")
        );
        let e = parse_url("redis://u:secret@h/0?queue=")
            .unwrap_err()
            .to_string();
        assert!(e.contains("queue name") && !e.contains("secret"), "{e}");
        assert!(parse_url("http://h").is_err());
        let u = parse_url("rediss://h/0?tls_ca=/c/ca.pem&queue=q&tls_cert=c.pem&tls_key=k.pem")
            .unwrap();
        assert_eq!(u.redis, "rediss://h/0");
        assert_eq!(
            (
                u.tls.ca.as_deref(),
                u.tls.cert.as_deref(),
                u.tls.key.as_deref()
            ),
            (Some("/c/ca.pem"), Some("c.pem"), Some("k.pem"))
        );
        assert!(parse_url("redis://h/0?tls_ca=ca.pem").is_err());
        assert!(parse_url("rediss://h/0?tls_cert=c.pem").is_err());
    }
}
