//! `status`: what a queue looks like from the broker: its workers and
//! their heartbeats, its depth, what is in flight, what was dead-lettered.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cluster::broker::Broker;
use crate::cluster::keys::{Keys, GROUP};
use crate::cluster::seal::{self, Seal};
use crate::error::Error;
use crate::trace::{TaskEvent, Trace};

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
    /// Tasks it held then: those running and those fetched ahead, queued
    /// in its local pool.
    pub held: Option<u64>,
}

/// A queue's state.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// The queue.
    pub queue: String,
    /// Workers that joined, alive or not.
    pub workers: Vec<WorkerStatus>,
    /// Task entries waiting for a worker (a packed entry of several calls
    /// counts once).
    pub queue_depth: u64,
    /// Task entries a worker holds and has not completed (as above).
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
    /// The size of the task's input, if the dead letter holds its task
    /// entry ([`requeue_dead_letter`] can then put it back).
    pub payload_bytes: Option<usize>,
}

/// The newest `count` dead letters of the queue at `url`, newest first.
fn dead_letters_one(url: &str, count: usize) -> Result<Vec<DeadLetter>, Error> {
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
            payload_bytes: raw_field(id, "t:payload")
                .or_else(|| raw_field(id, "t:data"))
                .map(|p| p.len()),
        })
        .collect())
}

/// A field of a stream entry as bytes.
fn raw_field(id: &redis::streams::StreamId, name: &str) -> Option<Vec<u8>> {
    match id.map.get(name)? {
        redis::Value::BulkString(b) => Some(b.clone()),
        redis::Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

/// Puts dead letter `entry` of the queue at `url` back on the task stream
/// as a new task, and deletes the dead letter, in one transaction; the
/// new task entry's id, or `None` if there was no such dead letter.
///
/// The task runs again for what it does: its caller was failed when it
/// was dead-lettered, so nobody waits for it, and its worker writes no
/// result (the new entry has a fresh call id and no reply stream). Give
/// the queue's keys on a signed queue: the task's original signature is
/// checked first (a requeue never signs what no key holder signed: an
/// unsigned, forged or altered entry is refused), then the new entry is
/// signed with the first key and a fresh expiry of `expiry`.
///
/// Fails, naming why, for a dead letter without its task entry (written
/// by an older worker, or an entry that was never a task), and for a
/// signed task when no keys are given.
fn requeue_one<K: AsRef<[u8]>>(
    url: &str,
    entry: &str,
    keys: &[K],
    expiry: Duration,
) -> Result<Option<String>, Error> {
    let broker = Broker::open(url)?;
    let queue = Keys::new(&broker.url.queue);
    let seal = Seal::new(keys)?;
    let mut con = broker.connect(Duration::from_secs(5))?;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(queue.dead())
        .arg(entry)
        .arg(entry)
        .query(&mut con)
        .map_err(|e| broker.error(&e))?;
    let Some(dead) = reply.ids.first() else {
        return Ok(None);
    };
    let field = |name: &str| raw_field(dead, &format!("t:{name}"));
    let refuse = |why: String| Err(Error::Broker(format!("dead letter {entry}: {why}")));
    if field("calls").is_some() {
        return requeue_packed(
            &mut con,
            &broker,
            &queue,
            entry,
            dead,
            seal.as_ref(),
            expiry,
        );
    }
    let (Some(task), Some(sig), Some(payload)) = (field("task"), field("sig"), field("payload"))
    else {
        return refuse(
            "it holds no task entry to put back (its entry was malformed, or an older worker \
             dead-lettered it)"
                .to_string(),
        );
    };
    let tasks = queue.tasks();
    let timeout = field("timeout_ms").unwrap_or_default();
    let original: [Vec<u8>; 7] = seal::TASK_FIELDS.map(|f| field(f).unwrap_or_default());
    let signed = field("mac");
    let fresh_id = format!("requeued:{entry}:{:x}", crate::cluster::client::random());
    let mut p = redis::pipe();
    p.atomic();
    let add = p.cmd("XADD");
    add.arg(&tasks).arg("*");
    if !timeout.is_empty() {
        add.arg("timeout_ms").arg(&timeout);
    }
    let values = original.each_ref().map(Vec::as_slice);
    if let Err(why) = signed_as_it_was(
        seal.as_ref(),
        signed.as_deref(),
        &seal::task_parts(&tasks, values),
    ) {
        return refuse(why);
    }
    if let Some(seal) = &seal {
        let exp = (seal::now_ms() + expiry.as_millis() as u64).to_string();
        let mac = seal.sign(&seal::task_parts(
            &tasks,
            [
                fresh_id.as_bytes(),
                &task,
                &sig,
                b"",
                &payload,
                &timeout,
                exp.as_bytes(),
            ],
        ));
        add.arg("exp").arg(exp).arg("mac").arg(mac);
    }
    add.arg("id")
        .arg(&fresh_id)
        .arg("task")
        .arg(&task)
        .arg("sig")
        .arg(&sig)
        .arg("reply")
        .arg("")
        .arg("payload")
        .arg(&payload);
    p.cmd("XDEL").arg(queue.dead()).arg(entry);
    let (id, _): (String, u64) = p.query(&mut con).map_err(|e| broker.error(&e))?;
    Ok(Some(id))
}

/// Whether a dead letter's task may go back as its signature stands:
/// unsigned on an unsigned queue, or signed (tag `mac` over `parts`) under
/// one of the keys of `seal`; why not, otherwise. A requeue never signs
/// what no key holder signed.
fn signed_as_it_was(
    seal: Option<&Seal>,
    mac: Option<&[u8]>,
    parts: &[&[u8]],
) -> Result<(), String> {
    match (seal, mac) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(
            "its task was signed: give the queue's keys to requeue it (MULTITASK_CLUSTER_KEY)"
                .to_string(),
        ),
        (Some(_), None) => Err(
            "its task was not signed; a requeue does not sign what no key holder signed"
                .to_string(),
        ),
        (Some(seal), Some(mac)) if seal.verify(parts, mac) => Ok(()),
        (Some(_), Some(_)) => Err(
            "its task's signature does not check under these keys (forged, altered, or \
             signed with another key); it is not requeued"
                .to_string(),
        ),
    }
}

/// [`requeue_one`] for a dead letter of calls of a packed task entry: the
/// calls it names (field `parts`; all if absent) go back as one packed
/// entry with fresh call ids and no reply stream.
fn requeue_packed(
    con: &mut redis::Connection,
    broker: &Broker,
    queue: &Keys,
    entry: &str,
    dead: &redis::streams::StreamId,
    seal: Option<&Seal>,
    expiry: Duration,
) -> Result<Option<String>, Error> {
    let refuse = |why: String| Err(Error::Broker(format!("dead letter {entry}: {why}")));
    let field = |name: &str| raw_field(dead, &format!("t:{name}")).unwrap_or_default();
    let tasks = queue.tasks();
    let original = ["calls", "reply", "data", "timeout_ms", "exp"].map(field);
    let values = original.each_ref().map(Vec::as_slice);
    let mac = raw_field(dead, "t:mac");
    if let Err(why) = signed_as_it_was(seal, mac.as_deref(), &seal::packed_parts(&tasks, values)) {
        return refuse(why);
    }
    let mut packed = crate::cluster::broker::Entry::default();
    packed
        .fields
        .insert("calls".to_string(), original[0].clone());
    packed
        .fields
        .insert("data".to_string(), original[2].clone());
    let calls = match crate::cluster::broker::unpack_calls(&packed) {
        Ok(calls) => calls,
        Err(why) => return refuse(format!("its task entry is malformed: {why}")),
    };
    let parts = raw_field(dead, "parts").unwrap_or_default();
    let parts = String::from_utf8_lossy(&parts);
    let chosen: Vec<usize> = parts.split(',').filter_map(|i| i.parse().ok()).collect();
    let fresh = format!("requeued:{entry}:{:x}", crate::cluster::client::random());
    let (heads, data) = crate::cluster::broker::pack_calls(
        calls
            .iter()
            .enumerate()
            .filter(|(i, _)| chosen.is_empty() || chosen.contains(i))
            .map(|(i, (head, payload))| {
                let head = crate::cluster::broker::CallHead {
                    id: format!("{fresh}:{i}").into(),
                    ..head.clone()
                };
                (head, &payload[..])
            }),
    );
    let timeout = &original[3];
    let mut p = redis::pipe();
    p.atomic();
    let add = p.cmd("XADD");
    add.arg(&tasks).arg("*");
    if !timeout.is_empty() {
        add.arg("timeout_ms").arg(timeout);
    }
    if let Some(seal) = seal {
        let exp = (seal::now_ms() + expiry.as_millis() as u64).to_string();
        let mac = seal.sign(&seal::packed_parts(
            &tasks,
            [&heads, b"", &data, timeout, exp.as_bytes()],
        ));
        add.arg("exp").arg(exp).arg("mac").arg(mac);
    }
    add.arg("calls")
        .arg(heads)
        .arg("reply")
        .arg("")
        .arg("data")
        .arg(data);
    p.cmd("XDEL").arg(queue.dead()).arg(entry);
    let (id, _): (String, u64) = p.query(con).map_err(|e| broker.error(&e))?;
    Ok(Some(id))
}

/// One finished task as a worker publishes it to the span stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SpanRecord {
    /// Its task stream entry (the id's milliseconds: when it was queued).
    pub(crate) entry: String,
    /// The task's name.
    pub(crate) task: String,
    /// When the worker took it, Unix µs.
    pub(crate) started_us: u64,
    /// When it finished, Unix µs.
    pub(crate) finished_us: u64,
    /// False if it failed.
    pub(crate) ok: bool,
    /// Its CPU time, when measured.
    pub(crate) cpu_us: Option<u64>,
    /// Its peak RSS, when measured.
    pub(crate) peak_rss: Option<u64>,
    /// A preview of its input, for a task that ran 1 ms or more or failed.
    pub(crate) input: Option<String>,
    /// The bytes it allocated, when counted.
    pub(crate) allocated: Option<u64>,
}

/// The tasks the workers of the queue at `url` finished lately, as they
/// published them to its span stream (about the last `entries` round
/// trips of results, each up to 256 tasks), as a [`Trace`] whose times
/// are since the Unix epoch and whose `wall` is now: the same shape as a
/// tracer's, with each task's worker its consumer name. Workers that do
/// not publish ([`WorkerBuilder::publish_spans`](crate::cluster::WorkerBuilder::publish_spans))
/// are absent. Anyone who can write to the queue can write there: a
/// record that does not decode is skipped.
fn recent_tasks_one(url: &str, entries: usize) -> Result<Trace, Error> {
    let broker = Broker::open(url)?;
    let keys = Keys::new(&broker.url.queue);
    let mut con = broker.connect(Duration::from_secs(5))?;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(keys.spans())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(entries)
        .query(&mut con)
        .map_err(|e| broker.error(&e))?;
    let mut events = Vec::new();
    for id in reply.ids.iter().rev() {
        let text = |name: &str| id.get::<String>(name).unwrap_or_default();
        let Some(records) =
            raw_field(id, "spans").and_then(|b| postcard::from_bytes::<Vec<SpanRecord>>(&b).ok())
        else {
            continue;
        };
        let (worker, host) = (text("worker"), text("host"));
        let pid = text("pid").parse().unwrap_or(0);
        for r in records {
            let queued_ms = r
                .entry
                .split_once('-')
                .and_then(|(ms, _)| ms.parse::<u64>().ok());
            let started = Duration::from_micros(r.started_us);
            events.push(TaskEvent {
                task: r.task,
                id: events.len() as u64,
                worker: worker.clone(),
                pid,
                host: host.clone(),
                submitted: queued_ms
                    .map_or(started, Duration::from_millis)
                    .min(started),
                started,
                finished: Duration::from_micros(r.finished_us.max(r.started_us)),
                ok: r.ok,
                peak_rss: r.peak_rss,
                cpu: r.cpu_us.map(Duration::from_micros),
                input: r.input,
                allocated: r.allocated,
            });
        }
    }
    Ok(Trace {
        events,
        wall: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    })
}

/// Deletes the dead letter `entry` of the queue at `url`; false if there
/// was none by that id.
fn discard_one(url: &str, entry: &str) -> Result<bool, Error> {
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
fn tasks_read_one(url: &str) -> Result<Option<u64>, Error> {
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
fn status_one(url: &str) -> Result<ClusterStatus, Error> {
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
            held: info.as_ref().and_then(|i| i["held"].as_u64()),
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

/// The queues of `url`: each shard's on a Redis Cluster
/// (`redis+cluster://`), else the one.
fn queues(url: &str) -> Result<Vec<String>, Error> {
    Ok(crate::cluster::shards::shard_urls(url)?.unwrap_or_else(|| vec![url.to_string()]))
}

/// The shard URL and entry id a dead letter's `entry` names: `i/id` on a
/// Redis Cluster (as [`dead_letters`] gives them), else the id.
fn dead_letter_at(url: &str, entry: &str) -> Result<(String, String), Error> {
    let Some(shards) = crate::cluster::shards::shard_urls(url)? else {
        return Ok((url.to_string(), entry.to_string()));
    };
    let parsed = entry
        .split_once('/')
        .and_then(|(i, id)| Some((i.parse::<usize>().ok()?, id)))
        .filter(|(i, _)| *i < shards.len());
    match parsed {
        Some((i, id)) => Ok((shards[i].clone(), id.to_string())),
        None => Err(Error::Config(format!(
            "dead letter {entry:?}: on a Redis Cluster a dead letter is named SHARD/ID, \
             SHARD from 0 to {}, as `multitask status --dead` lists them",
            shards.len() - 1
        ))),
    }
}

/// Reads the status of the queue at `url`: on a Redis Cluster, of all its
/// shards together (the workers of every shard, depths and counts added).
pub fn status(url: &str) -> Result<ClusterStatus, Error> {
    let shards = queues(url)?;
    let mut total: Option<ClusterStatus> = None;
    for u in &shards {
        let st = status_one(u)?;
        total = Some(match total {
            None => ClusterStatus {
                queue: crate::cluster::shards::base_queue(&st.queue).to_string(),
                ..st
            },
            Some(mut t) => {
                t.workers.extend(st.workers);
                t.queue_depth += st.queue_depth;
                t.in_flight += st.in_flight;
                t.dead_letters += st.dead_letters;
                t
            }
        });
    }
    total.ok_or_else(|| Error::Broker("a queue with no shard".to_string()))
}

/// The newest `count` dead letters of the queue at `url`, newest first; on
/// a Redis Cluster, of every shard, each entry named `SHARD/ID`.
pub fn dead_letters(url: &str, count: usize) -> Result<Vec<DeadLetter>, Error> {
    let Some(shards) = crate::cluster::shards::shard_urls(url)? else {
        return dead_letters_one(url, count);
    };
    let mut all = Vec::new();
    for (i, u) in shards.iter().enumerate() {
        for mut d in dead_letters_one(u, count)? {
            d.entry = format!("{i}/{}", d.entry);
            all.push(d);
        }
    }
    let time = |d: &DeadLetter| {
        let id = d
            .entry
            .split_once('/')
            .map_or(d.entry.as_str(), |(_, id)| id);
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    };
    all.sort_by_key(|d| std::cmp::Reverse(time(d)));
    all.truncate(count);
    Ok(all)
}

/// Puts dead letter `entry` of the queue at `url` back on the task stream
/// as a new task, and deletes the dead letter, in one transaction; the
/// new task entry's id, or `None` if there was no such dead letter.
///
/// The task runs again for what it does: its caller was failed when it
/// was dead-lettered, so nobody waits for it, and its worker writes no
/// result (the new entry has a fresh call id and no reply stream). Give
/// the queue's keys on a signed queue: the task's original signature is
/// checked first (a requeue never signs what no key holder signed: an
/// unsigned, forged or altered entry is refused), then the new entry is
/// signed with the first key and a fresh expiry of `expiry`. A dead letter
/// of calls of a packed entry puts back the calls it names, as one packed
/// entry with fresh call ids.
///
/// Fails, naming why, for a dead letter without its task entry (written
/// by an older worker, or an entry that was never a task), and for a
/// signed task when no keys are given. On a Redis Cluster, `entry` is
/// `SHARD/ID` as [`dead_letters`] names it, and the task goes back on its
/// shard.
pub fn requeue_dead_letter<K: AsRef<[u8]>>(
    url: &str,
    entry: &str,
    keys: &[K],
    expiry: Duration,
) -> Result<Option<String>, Error> {
    let (at, id) = dead_letter_at(url, entry)?;
    requeue_one(&at, &id, keys, expiry)
}

/// Deletes the dead letter `entry` of the queue at `url` (`SHARD/ID` on a
/// Redis Cluster); false if there was none by that id.
pub fn discard_dead_letter(url: &str, entry: &str) -> Result<bool, Error> {
    let (at, id) = dead_letter_at(url, entry)?;
    discard_one(&at, &id)
}

/// The tasks the workers of the queue at `url` finished lately, as they
/// published them to its span stream (about the last `entries` round
/// trips of results per shard, each up to 1024 tasks), as a [`Trace`]
/// whose times are since the Unix epoch and whose `wall` is now: the same
/// shape as a tracer's, with each task's worker its consumer name. Workers
/// that do not publish ([`WorkerBuilder::publish_spans`](crate::cluster::WorkerBuilder::publish_spans))
/// are absent. Anyone who can write to the queue can write there: a
/// record that does not decode is skipped.
pub fn recent_tasks(url: &str, entries: usize) -> Result<Trace, Error> {
    let mut all = Trace::default();
    for u in queues(url)? {
        let t = recent_tasks_one(&u, entries)?;
        all.wall = t.wall;
        all.events.extend(t.events);
    }
    all.events.sort_by_key(|e| e.finished);
    for (i, e) in all.events.iter_mut().enumerate() {
        e.id = i as u64;
    }
    Ok(all)
}

/// How many task entries the workers' group has read so far (Redis 7's
/// `entries-read`; on a Redis Cluster, over every shard): the difference
/// between two readings is the tasks started in between. `None` where the
/// server does not say.
pub fn tasks_read(url: &str) -> Result<Option<u64>, Error> {
    let mut total = Some(0u64);
    for u in queues(url)? {
        total = match (total, tasks_read_one(&u)?) {
            (Some(t), Some(n)) => Some(t + n),
            _ => None,
        };
    }
    Ok(total)
}
