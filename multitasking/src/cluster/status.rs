//! `status`: what a queue looks like from the broker: its workers and
//! their heartbeats, its depth, what is in flight, what was dead-lettered.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::cluster::broker::Broker;
use crate::cluster::keys::{Keys, GROUP};
use crate::error::Error;

/// One worker that joined the queue.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    /// Its consumer name.
    pub consumer: String,
    /// True while its heartbeat key lives.
    pub alive: bool,
    /// Seconds since its last heartbeat, when alive.
    pub last_heartbeat_s: Option<f64>,
    /// Its host and pid, when alive.
    pub worker: Option<String>,
    /// Its slots, when alive.
    pub concurrency: Option<u64>,
    /// Tasks it was running at its last heartbeat.
    pub running: Option<u64>,
}

/// A queue's state.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// The queue.
    pub queue: String,
    /// Workers that joined, alive or not.
    pub workers: Vec<WorkerStatus>,
    /// Tasks waiting for a worker.
    pub queue_depth: u64,
    /// Tasks a worker holds and has not completed.
    pub in_flight: u64,
    /// Tasks in the dead-letter stream.
    pub dead_letters: u64,
}

/// One entry of the dead-letter stream: a task given up, and why.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeadLetter {
    /// Its id in the dead-letter stream ([`discard_dead_letter`] takes it).
    pub entry: String,
    /// The task's name, as its entry gave it (may be garbage: that can be
    /// why it is dead).
    pub task: String,
    /// Why it was given up.
    pub reason: String,
    /// How many times it was delivered.
    pub deliveries: String,
    /// The worker that gave it up.
    pub worker: String,
}

/// The newest `count` dead letters of the queue at `url`, newest first.
pub fn dead_letters(url: &str, count: usize) -> Result<Vec<DeadLetter>, Error> {
    let broker = Broker::open(url)?;
    let keys = Keys::new(&broker.url.queue);
    let mut con = broker.connect(Duration::from_secs(5))?;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(keys.dead())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(count)
        .query(&mut con)
        .map_err(|e| broker.error(&e))?;
    let field = |id: &redis::streams::StreamId, name: &str| -> String {
        id.get::<String>(name).unwrap_or_default()
    };
    Ok(reply
        .ids
        .iter()
        .map(|id| DeadLetter {
            entry: id.id.clone(),
            task: field(id, "task"),
            reason: field(id, "reason"),
            deliveries: field(id, "deliveries"),
            worker: field(id, "worker"),
        })
        .collect())
}

/// Deletes the dead letter `entry` of the queue at `url`; false if there
/// was none by that id.
pub fn discard_dead_letter(url: &str, entry: &str) -> Result<bool, Error> {
    let broker = Broker::open(url)?;
    let keys = Keys::new(&broker.url.queue);
    let mut con = broker.connect(Duration::from_secs(5))?;
    let n: u64 = redis::cmd("XDEL")
        .arg(keys.dead())
        .arg(entry)
        .query(&mut con)
        .map_err(|e| broker.error(&e))?;
    Ok(n > 0)
}

/// How many task entries the workers' group has read so far (Redis 7's
/// `entries-read`): the difference between two readings is the tasks
/// started in between. `None` where the server does not say.
pub fn tasks_read(url: &str) -> Result<Option<u64>, Error> {
    let broker = Broker::open(url)?;
    let keys = Keys::new(&broker.url.queue);
    let mut con = broker.connect(Duration::from_secs(5))?;
    let groups: redis::Value = match redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(keys.tasks())
        .query(&mut con)
    {
        Ok(v) => v,
        // No stream yet: nothing was read.
        Err(e) if e.code() == Some("ERR") => return Ok(Some(0)),
        Err(e) => return Err(broker.error(&e)),
    };
    let redis::Value::Array(groups) = groups else {
        return Ok(None);
    };
    for g in groups {
        let fields: Vec<redis::Value> = match g {
            redis::Value::Array(f) => f,
            redis::Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => continue,
        };
        let mut name = None;
        // Absent before Redis 7; nil until the group's first read.
        let mut read = None;
        for pair in fields.chunks(2) {
            let key = match &pair[0] {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Value::SimpleString(s) => s.clone(),
                _ => continue,
            };
            match (key.as_str(), pair.get(1)) {
                ("name", Some(redis::Value::BulkString(b))) => {
                    name = Some(String::from_utf8_lossy(b).into_owned())
                }
                ("entries-read", Some(redis::Value::Int(n))) => read = Some(*n as u64),
                ("entries-read", Some(redis::Value::Nil)) => read = Some(0),
                _ => {}
            }
        }
        if name.as_deref() == Some(GROUP) {
            return Ok(read);
        }
    }
    Ok(Some(0))
}

/// Reads the status of the queue at `url`.
pub fn status(url: &str) -> Result<ClusterStatus, Error> {
    let broker = Broker::open(url)?;
    let keys = Keys::new(&broker.url.queue);
    let mut con = broker.connect(Duration::from_secs(5))?;
    let err = |e: redis::RedisError| broker.error(&e);
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.workers())
        .query(&mut con)
        .map_err(err)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut workers = Vec::new();
    for consumer in members {
        let beat: Option<String> = redis::cmd("GET")
            .arg(keys.heartbeat(&consumer))
            .query(&mut con)
            .map_err(err)?;
        let info: Option<serde_json::Value> = beat.and_then(|b| serde_json::from_str(&b).ok());
        workers.push(WorkerStatus {
            alive: info.is_some(),
            last_heartbeat_s: info
                .as_ref()
                .and_then(|i| i["at"].as_f64())
                .map(|at| (now - at).max(0.0)),
            worker: info
                .as_ref()
                .and_then(|i| i["worker"].as_str().map(str::to_string)),
            concurrency: info.as_ref().and_then(|i| i["concurrency"].as_u64()),
            running: info.as_ref().and_then(|i| i["running"].as_u64()),
            consumer,
        });
    }
    workers.sort_by(|a, b| b.alive.cmp(&a.alive).then(a.consumer.cmp(&b.consumer)));
    let len: u64 = redis::cmd("XLEN")
        .arg(keys.tasks())
        .query(&mut con)
        .map_err(err)?;
    let in_flight: u64 = redis::cmd("XPENDING")
        .arg(keys.tasks())
        .arg(GROUP)
        .query::<redis::Value>(&mut con)
        .ok()
        .and_then(|v| match v {
            redis::Value::Array(items) => items.first().and_then(|c| match c {
                redis::Value::Int(n) => Some(*n as u64),
                _ => None,
            }),
            _ => None,
        })
        .unwrap_or(0);
    let dead: u64 = redis::cmd("XLEN")
        .arg(keys.dead())
        .query(&mut con)
        .map_err(err)?;
    Ok(ClusterStatus {
        queue: keys.queue,
        workers,
        queue_depth: len.saturating_sub(in_flight),
        in_flight,
        dead_letters: dead,
    })
}
