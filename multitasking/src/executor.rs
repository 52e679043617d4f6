//! The [`Executor`] trait every pool implements, the shutdown options, and
//! executor spec strings (`serial`, `threads:8`, `processes:8`,
//! `redis://host:6379/0?queue=q`); and, for whoever writes an executor of
//! their own, the plumbing the built-in ones are made of.
//!
//! A user needs only [`Executor`], [`Shutdown`] and [`ExecutorSpec`], which
//! the crate root re-exports. The rest of this module is for executor
//! writers:
//!
//! - [`pending`] makes a [`TaskFuture`] and the [`Promise`] that resolves
//!   it; [`ready`] a future that is already done. The promise moves the
//!   task to running ([`Promise::set_running`], which fails once the future
//!   was cancelled) and delivers the outcome; a promise dropped unfulfilled
//!   resolves its future with [`TaskError::Shutdown`](crate::TaskError).
//! - [`Terminate`] is the handle a future's `terminate()` calls to kill the
//!   worker that runs it.
//! - [`Executor::submit_chunk`] is the one primitive the map engine needs:
//!   `map` and `map_unordered` are written once, in the crate, on top of
//!   it, for every executor. A chunk's outcomes travel as a [`Chunk`].
//! - [`RawExecutor`] runs already-encoded batches of a registered task,
//!   found with [`lookup`] or [`resolve`] and encoded with [`encode`] and
//!   [`decode`]: how a cluster worker hands tasks to a local pool.
//!
//! An executor runs *named tasks* ([`Task`]): that is what crosses process
//! and machine boundaries.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, SubmitError};
use crate::future::TaskFuture;
use crate::map::Map;
use crate::task::Task;

pub use crate::chunk::{Chunk, ChunkIter};
pub use crate::future::{Promise, Terminate};
pub use crate::task::{decode, encode, lookup, resolve, run_items, BatchFn, TaskEntry};
pub use crate::wait::Signal;

/// A pending future for `task` and the promise that resolves it.
///
/// ```
/// use multitasking::executor;
/// let (fut, promise) = executor::pending::<u32>("answer");
/// assert!(promise.set_running());
/// assert!(promise.complete(Ok(42)));
/// assert_eq!(fut.result().unwrap(), 42);
/// ```
pub fn pending<T>(task: &'static str) -> (TaskFuture<T>, Promise<T>) {
    TaskFuture::pending(task)
}

/// A future that is already done with `outcome`.
pub fn ready<T>(task: &'static str, outcome: Result<T, crate::TaskError>) -> TaskFuture<T> {
    TaskFuture::ready(task, outcome)
}

/// The future of a chunk's outcomes, one per input, in input order.
pub type ChunkFuture<O> = TaskFuture<Chunk<O>>;

/// How [`Executor::shutdown`] stops a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown {
    /// Wait for running (and, unless cancelled, queued) tasks and for every
    /// worker to exit. Default: true.
    pub wait: bool,
    /// Cancel the tasks that have not started. Default: false.
    pub cancel_futures: bool,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            wait: true,
            cancel_futures: false,
        }
    }
}

/// A pool that runs named tasks: the one API from a thread to a fleet.
///
/// Dropping a pool shuts it down and waits (`with Executor() as ex:`).
pub trait Executor: Send + Sync {
    /// Schedules `task(input)`; the future resolves with its outcome. After
    /// shutdown the input is handed back with [`crate::TaskError::Shutdown`].
    fn submit<T: Task>(
        &self,
        task: T,
        input: T::Input,
    ) -> Result<TaskFuture<T::Output>, SubmitError<T::Input>>;

    /// Schedules `task` over every input of `inputs` as one unit of work (one
    /// message to a worker process); the future resolves with one outcome
    /// per input, in order. A panic in one item fails only that item; a
    /// worker that dies fails the whole chunk.
    fn submit_chunk<T: Task>(
        &self,
        task: T,
        inputs: Vec<T::Input>,
    ) -> Result<ChunkFuture<T::Output>, SubmitError<Vec<T::Input>>>;

    /// Stops the pool. Idempotent: a second call only waits, if asked to.
    fn shutdown(&self, how: Shutdown);

    /// How many tasks run at once.
    fn max_workers(&self) -> usize;

    /// The spec string that would build this executor (`threads:6`).
    fn spec(&self) -> String;

    /// Maps `task` over `inputs` lazily, yielding each item's outcome in
    /// input order; see [`Map`] for chunking, the window and timeouts.
    fn map<T, I>(&self, task: T, inputs: I) -> Map<'_, I::IntoIter, T::Output>
    where
        Self: Sized,
        T: Task,
        I: IntoIterator<Item = T::Input>,
    {
        Map::new(
            T::NAME,
            inputs.into_iter(),
            self.max_workers(),
            true,
            Box::new(move |chunk| self.submit_chunk(task, chunk)),
        )
    }

    /// As [`Executor::map`], yielding outcomes as they complete.
    fn map_unordered<T, I>(&self, task: T, inputs: I) -> Map<'_, I::IntoIter, T::Output>
    where
        Self: Sized,
        T: Task,
        I: IntoIterator<Item = T::Input>,
    {
        Map::new(
            T::NAME,
            inputs.into_iter(),
            self.max_workers(),
            false,
            Box::new(move |chunk| self.submit_chunk(task, chunk)),
        )
    }
}

/// A parsed executor spec string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutorSpec {
    /// `serial`: run each task inline, on the caller's thread.
    Serial,
    /// `threads[:N]`: a [`crate::ThreadPool`]; default min(32, CPUs + 4).
    Threads(Option<usize>),
    /// `processes[:N]`: a pool of worker processes; default usable CPUs.
    Processes(Option<usize>),
    /// `redis://...` or `rediss://...`: a cluster queue on Redis;
    /// `redis+cluster://...` (`rediss+cluster://`): one sharded over the
    /// masters of a Redis Cluster.
    Redis(String),
}

const SPEC_FORMS: &str =
    "expected serial, threads[:N], processes[:N], redis://[user:password@]host:port/db?queue=name \
     or redis+cluster://host:port/?queue=name";

impl FromStr for ExecutorSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::Spec {
            spec: redact(s),
            reason: scrub(&reason, s),
        };
        let t = s.trim();
        if [
            "redis://",
            "rediss://",
            "redis+cluster://",
            "rediss+cluster://",
        ]
        .iter()
        .any(|p| t.starts_with(p))
        {
            let rest = t.split_once("://").map_or("", |(_, r)| r);
            if rest.is_empty() || rest.starts_with('/') {
                return Err(bad("the redis URL has no host".to_string()));
            }
            return Ok(ExecutorSpec::Redis(t.to_string()));
        }
        let (kind, count) = match t.split_once(':') {
            Some((k, n)) => (k, Some(n)),
            None => (t, None),
        };
        let count = match count {
            None => None,
            Some(n) => match n.parse::<usize>() {
                Ok(0) => return Err(bad("the worker count must be at least 1".to_string())),
                Ok(n) => Some(n),
                Err(_) => return Err(bad(format!("expected a worker count after ':', got {n:?}"))),
            },
        };
        match kind {
            "serial" if count.is_none() => Ok(ExecutorSpec::Serial),
            "serial" => Err(bad("serial takes no worker count".to_string())),
            "threads" | "thread" => Ok(ExecutorSpec::Threads(count)),
            "processes" | "process" => Ok(ExecutorSpec::Processes(count)),
            "" => Err(bad(format!("empty spec; {SPEC_FORMS}"))),
            other => Err(bad(format!("unknown executor {other:?}; {SPEC_FORMS}"))),
        }
    }
}

impl fmt::Display for ExecutorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecutorSpec::Serial => f.write_str("serial"),
            ExecutorSpec::Threads(None) => f.write_str("threads"),
            ExecutorSpec::Threads(Some(n)) => write!(f, "threads:{n}"),
            ExecutorSpec::Processes(None) => f.write_str("processes"),
            ExecutorSpec::Processes(Some(n)) => write!(f, "processes:{n}"),
            ExecutorSpec::Redis(url) => f.write_str(&redact(url)),
        }
    }
}

/// `url` with any password replaced by `***`, for logs and errors.
///
/// A URL with one `@` goes through a real URL parser (the `url` crate, as
/// the redis crate reads it), and the password it finds is replaced. Any
/// other string holding an `@` (a password typed raw, with `@`, `/`, `?`
/// or `#` in it, which the parser reads as something else; a bad spec
/// string) is cut by hand: the credentials end at the *last* `@`, and
/// everything between the first `:` after the scheme and that `@` goes.
/// A URL whose query holds an `@` may so come out over-redacted; never
/// leaked.
pub(crate) fn redact(url: &str) -> String {
    if url.matches('@').count() == 1 {
        if let Ok(mut u) = url::Url::parse(url) {
            if u.password().is_some() && u.set_password(Some("***")).is_ok() {
                return u.to_string();
            }
        }
    }
    redact_by_hand(url)
}

/// [`redact`] without a parser: see there.
fn redact_by_hand(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_string();
    };
    let Some(start) = credentials_start(url).filter(|&s| s <= at) else {
        return url.to_string();
    };
    let auth = &url[start..at];
    match auth.find(':') {
        Some(c) => format!("{}{}:***@{}", &url[..start], &auth[..c], &url[at + 1..]),
        None => url.to_string(),
    }
}

/// Where the credentials of `url` would start: after `scheme://`, or
/// after `scheme:` and any slashes; `None` without a scheme.
fn credentials_start(url: &str) -> Option<usize> {
    if let Some(i) = url.find("://") {
        return Some(i + 3);
    }
    let i = url.find(':')?;
    let after = &url[i + 1..];
    Some(i + 1 + (after.len() - after.trim_start_matches('/').len()))
}

/// `text` (an error that may echo the URL) with the password of broker
/// URL `url` replaced by `***` wherever it appears, as typed or
/// percent-decoded; the URL itself redacted too.
pub(crate) fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &redact(url));
    let mut secrets: Vec<String> = Vec::new();
    if let Ok(u) = url::Url::parse(url) {
        if let Some(p) = u.password() {
            secrets.push(p.to_string());
            if let Ok(decoded) = percent_decode(p) {
                secrets.push(decoded);
            }
        }
    }
    // As cut by hand, for what the parser misreads: the password runs from
    // the first `:` after the scheme to one of the `@`s after it.
    if let Some(start) = credentials_start(url) {
        if let Some(colon) = url[start..].find(':').map(|c| start + c + 1) {
            for (at, _) in url.match_indices('@').filter(|(at, _)| *at >= colon) {
                let raw = &url[colon..at];
                secrets.push(raw.to_string());
                if let Ok(decoded) = percent_decode(raw) {
                    secrets.push(decoded);
                }
            }
        }
    }
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        out = out.replace(s.as_str(), "***");
    }
    out
}

/// `s` with `%XX` escapes decoded; an error if that is not UTF-8.
fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|&c| hex(c)),
            b.get(i + 2).and_then(|&c| hex(c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
}

/// Runs a chunk here, for executors that run tasks in this process.
pub(crate) fn run_chunk_here<T: Task>(task: T, inputs: Vec<T::Input>) -> Chunk<T::Output> {
    crate::task::run_items(task, inputs)
}

/// Runs already-encoded batches of a registered task: how a cluster worker
/// hands tasks it read from the broker to a local pool without knowing
/// their types. The payload is an encoded `Vec<Input>`; the output an
/// encoded [`Chunk<Output>`](Chunk) (see [`TaskEntry`]).
pub trait RawExecutor: Send + Sync {
    /// Schedules `entry` over the encoded batch `payload`.
    fn submit_raw(
        &self,
        entry: TaskEntry,
        payload: Vec<u8>,
    ) -> Result<TaskFuture<Vec<u8>>, SubmitError<Vec<u8>>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(
            "serial".parse::<ExecutorSpec>().unwrap(),
            ExecutorSpec::Serial
        );
        assert_eq!(
            "threads".parse::<ExecutorSpec>().unwrap(),
            ExecutorSpec::Threads(None)
        );
        assert_eq!(
            "threads:8".parse::<ExecutorSpec>().unwrap(),
            ExecutorSpec::Threads(Some(8))
        );
        assert_eq!(
            " processes:2 ".parse::<ExecutorSpec>().unwrap(),
            ExecutorSpec::Processes(Some(2))
        );
        let url = "redis://u:secret@host:6379/0?queue=q";
        let spec: ExecutorSpec = url.parse().unwrap();
        assert_eq!(spec, ExecutorSpec::Redis(url.to_string()));
        assert_eq!(spec.to_string(), "redis://u:***@host:6379/0?queue=q");
    }

    #[test]
    fn redact_hides_passwords_with_at_colon_and_slash() {
        for (url, shown) in [
            ("redis://u:p@ss@h:6379/0", "redis://u:***@h:6379/0"),
            ("redis://u:a:b/c@d@h/0?queue=q", "redis://u:***@h/0?queue=q"),
            ("rediss://:s3cret@h", "rediss://:***@h"),
            ("redis://u:p%40ss@h", "redis://u:***@h"),
            ("redis://h:6379/0", "redis://h:6379/0"),
            ("redis://u:12?x@h:6379/0", "redis://u:***@h:6379/0"),
            ("redis://u:1/b@h", "redis://u:***@h"),
            ("redis://u:p#w@h/0", "redis://u:***@h/0"),
            ("redis://h/0?queue=a@b", "redis://h/0?queue=a@b"),
            ("redis:/u:pw@h", "redis:/u:***@h"),
            ("redis:u:pw@h", "redis:u:***@h"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[test]
    fn a_bad_spec_never_shows_a_password() {
        let e = "redis:/u:hunter2@h".parse::<ExecutorSpec>().unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn scrub_hides_the_password_in_an_echoing_error() {
        let url = "redis://u:p%40ss%2Fw0rd@h:6379/0";
        let said = format!("cannot connect to {url}: AUTH p@ss/w0rd refused (p%40ss%2Fw0rd)");
        let out = scrub(&said, url);
        assert!(
            !out.contains("p@ss/w0rd") && !out.contains("p%40ss"),
            "{out}"
        );
        assert!(out.contains("redis://u:***@h:6379/0"), "{out}");
    }

    proptest::proptest! {
        /// Any printable password, any user, with or without a query (one
        /// holding an `@` too), typed raw or percent-encoded: redact never
        /// shows it, and keeps the host.
        #[test]
        fn redact_hides_any_password(
            user in "[a-z]{0,8}",
            password in "[ -~]{4,24}",
            encode in proptest::bool::ANY,
            scheme in proptest::sample::select(vec!["redis", "rediss"]),
            query in proptest::option::of("[a-z@]{1,8}"),
        ) {
            let password = if encode {
                password
                    .bytes()
                    .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
                    .collect()
            } else {
                password
            };
            let tail = query.map(|q| format!("?queue={q}")).unwrap_or_default();
            let url = format!("{scheme}://{user}:{password}@hostname:6379/0{tail}");
            let shown = redact(&url);
            proptest::prop_assert!(!shown.contains(&password), "{url} -> {shown}");
            proptest::prop_assert!(shown.contains("***"), "{url} -> {shown}");
            let said = scrub(&format!("error at {url}: {password}"), &url);
            proptest::prop_assert!(!said.contains(&password), "{url} -> {said}");
        }

        #[test]
        fn redact_never_shows_a_password(
            user in "[a-z]{0,8}",
            password in "[ -~]{1,24}",
            query in proptest::option::of("[a-z]{1,8}"),
        ) {
            let tail = query.map(|q| format!("?queue={q}")).unwrap_or_default();
            let url = format!("redis://{user}:{password}@host:6379/0{tail}");
            proptest::prop_assert_eq!(
                redact(&url),
                format!("redis://{user}:***@host:6379/0{tail}")
            );
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, says) in [
            ("threads:0", "at least 1"),
            ("threads:x", "worker count"),
            ("gpus", "unknown executor"),
            ("", "empty spec"),
            ("serial:3", "no worker count"),
            ("redis://", "no host"),
        ] {
            let e = spec.parse::<ExecutorSpec>().unwrap_err().to_string();
            assert!(e.contains(says), "{spec:?}: {e}");
            assert!(e.starts_with("bad executor spec"), "{e}");
        }
    }
}
