//! A queue on a Redis Cluster: `redis+cluster://host:port/?queue=q`
//! (`rediss+cluster://` for TLS; `&shards=N`, default one per master).
//!
//! A Redis Cluster spreads keys over its masters by hash slot, and a
//! script or a transaction may only touch keys of one slot. Every key of a
//! queue shares one hash tag, so a queue lives on one master. A sharded
//! queue is N queues, `q~0` .. `q~N-1`, each named so that its hash tag
//! falls in a slot of a different master (shard `i` on master `i mod M`,
//! masters in address order; a name `q~i~k` with the first `k` that lands
//! there, when `q~i` does not). Each shard is a queue as on a single Redis,
//! reached on its master's address: clients spread their calls over the
//! shards in turn, and a worker serves every shard, with one local pool.
//! Results, leases, dead letters, at-least-once delivery and the dedupe by
//! call id are those of each shard, unchanged.
//!
//! Clients and workers compute the same shard names from the same
//! topology. The slots must stay where they are while the queue is in
//! use: a resharding moves a shard's keys and its clients and workers
//! then fail with the broker's `MOVED` error, and reconnect to the seed
//! to find the new layout only when restarted.

use std::time::Duration;

use crate::cluster::broker::Broker;
use crate::cluster::keys::parse_url;
use crate::error::Error;

/// The plain broker URLs of the shards of the queue at `url`, if `url` is
/// a `redis+cluster://` (or `rediss+cluster://`) URL; `None` for a single
/// Redis. Asks the seed node for the cluster's masters.
pub(crate) fn shard_urls(url: &str) -> Result<Option<Vec<String>>, Error> {
    let Some(plain) = plain_url(url) else {
        return Ok(None);
    };
    let bad = |reason: String| Error::Spec {
        spec: crate::executor::redact(url),
        reason,
    };
    let mut parsed = url::Url::parse(&plain).map_err(|e| bad(format!("not a URL: {e}")))?;
    let mut shards: Option<usize> = None;
    let mut queue = "default".to_string();
    // The other parameters go on to each shard's URL as written.
    let mut rest: Vec<String> = Vec::new();
    for pair in parsed
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "shards" => {
                shards = Some(
                    v.parse::<usize>()
                        .ok()
                        .filter(|&n| (1..=1024).contains(&n))
                        .ok_or_else(|| bad(format!("shards must be 1 to 1024, got {v:?}")))?,
                );
            }
            "queue" => queue = v.to_string(),
            _ => rest.push(pair.to_string()),
        }
    }
    if !matches!(parsed.path(), "" | "/" | "/0") {
        return Err(bad(
            "a Redis Cluster has database 0 only: leave the path empty or /0".to_string(),
        ));
    }
    // Checked as any queue name is (no braces: they would break the tag).
    parse_url(&format!("redis://h/0?queue={queue}"))?;
    let broker = Broker::open(&plain)?;
    let mut con = broker.connect(Duration::from_secs(5))?;
    let slots: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(&mut con)
        .map_err(|e| {
            if e.to_string().contains("cluster support disabled") {
                Error::Broker(format!(
                    "{} is a single Redis, not a Redis Cluster: use redis:// for it",
                    crate::executor::redact(url)
                ))
            } else {
                broker.error(&e)
            }
        })?;
    let masters = masters(&slots);
    if masters.is_empty() {
        return Err(Error::Broker(format!(
            "{}: the cluster has no master serving slots yet (is it created? \
             redis-cli --cluster create ...)",
            crate::executor::redact(url)
        )));
    }
    let n = shards.unwrap_or(masters.len());
    let mut urls = Vec::with_capacity(n);
    for i in 0..n {
        let master = &masters[i % masters.len()];
        let name = shard_name(&queue, i, |slot| master.owns(slot));
        parsed
            .set_host(Some(&master.host))
            .map_err(|e| bad(format!("the master's address {}: {e}", master.host)))?;
        parsed
            .set_port(Some(master.port))
            .map_err(|()| bad(format!("the master's port {}", master.port)))?;
        parsed.set_path("/0");
        // Written by hand: a form encoder would escape the `~` of the name.
        let mut query = rest.clone();
        query.push(format!("queue={name}"));
        parsed.set_query(Some(&query.join("&")));
        urls.push(parsed.to_string());
    }
    Ok(Some(urls))
}

/// `url` with `redis+cluster://` made `redis://` (and `rediss+cluster://`
/// `rediss://`), or `None` if it names no cluster.
pub(crate) fn plain_url(url: &str) -> Option<String> {
    if let Some(rest) = url.strip_prefix("redis+cluster://") {
        Some(format!("redis://{rest}"))
    } else {
        url.strip_prefix("rediss+cluster://")
            .map(|rest| format!("rediss://{rest}"))
    }
}

/// The queue `queue`'s name from a sharded queue's shard name (`q~1`,
/// `q~1~3`), or the name itself.
pub(crate) fn base_queue(name: &str) -> &str {
    name.split_once('~').map_or(name, |(q, _)| q)
}

/// A master of the cluster and the slots it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Master {
    /// Its address.
    host: String,
    /// Its port.
    port: u16,
    /// Its slot ranges, inclusive.
    ranges: Vec<(u16, u16)>,
}

impl Master {
    fn owns(&self, slot: u16) -> bool {
        self.ranges.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

/// The masters in a `CLUSTER SLOTS` reply, in address order.
fn masters(reply: &redis::Value) -> Vec<Master> {
    let mut out: Vec<Master> = Vec::new();
    let redis::Value::Array(ranges) = reply else {
        return out;
    };
    for r in ranges {
        let redis::Value::Array(parts) = r else {
            continue;
        };
        let int = |v: Option<&redis::Value>| match v {
            Some(redis::Value::Int(n)) => u16::try_from(*n).ok(),
            _ => None,
        };
        let (Some(start), Some(end), Some(redis::Value::Array(node))) =
            (int(parts.first()), int(parts.get(1)), parts.get(2))
        else {
            continue;
        };
        let host = match node.first() {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(redis::Value::SimpleString(s)) => s.clone(),
            _ => continue,
        };
        let Some(port) = int(node.get(1)) else {
            continue;
        };
        match out.iter_mut().find(|m| m.host == host && m.port == port) {
            Some(m) => m.ranges.push((start, end)),
            None => out.push(Master {
                host,
                port,
                ranges: vec![(start, end)],
            }),
        }
    }
    out.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
    out
}

/// The name of shard `i` of `queue`: `queue~i`, or `queue~i~k` for the
/// first `k` whose hash slot `wanted` accepts.
fn shard_name(queue: &str, i: usize, wanted: impl Fn(u16) -> bool) -> String {
    let first = format!("{queue}~{i}");
    if wanted(slot(&first)) {
        return first;
    }
    (1u64..)
        .map(|k| format!("{queue}~{i}~{k}"))
        .find(|name| wanted(slot(name)))
        .expect("some name lands on every master")
}

/// The hash slot of a key whose hash tag is `tag`: CRC16 (XMODEM) mod
/// 16384, as Redis Cluster computes it.
fn slot(tag: &str) -> u16 {
    let mut crc: u16 = 0;
    for &b in tag.as_bytes() {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_those_of_redis_cluster() {
        // From the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("user1000"), 3443);
    }

    #[test]
    fn shard_names_land_where_they_are_wanted() {
        for i in 0..6 {
            let low = shard_name("jobs", i, |s| s < 5461);
            assert!(slot(&low) < 5461, "{low}");
            assert_eq!(base_queue(&low), "jobs");
        }
        assert_eq!(shard_name("jobs", 2, |_| true), "jobs~2");
    }

    #[test]
    fn only_cluster_urls_are_rewritten() {
        assert_eq!(
            plain_url("redis+cluster://h:7000/?queue=q").as_deref(),
            Some("redis://h:7000/?queue=q")
        );
        assert_eq!(
            plain_url("rediss+cluster://h:7000").as_deref(),
            Some("rediss://h:7000")
        );
        assert_eq!(plain_url("redis://h:7000"), None);
    }

    #[test]
    fn masters_come_from_cluster_slots_in_address_order() {
        use redis::Value::{Array, BulkString, Int};
        let node = |port: i64| Array(vec![BulkString(b"127.0.0.1".to_vec()), Int(port)]);
        let reply = Array(vec![
            Array(vec![Int(10923), Int(16383), node(7002)]),
            Array(vec![Int(0), Int(5460), node(7000)]),
            Array(vec![Int(5461), Int(10922), node(7001)]),
        ]);
        let m = masters(&reply);
        assert_eq!(
            m.iter().map(|m| m.port).collect::<Vec<_>>(),
            [7000, 7001, 7002]
        );
        assert!(m[1].owns(5461) && !m[1].owns(5460));
    }
}
