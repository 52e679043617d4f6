//! The dashboard's threads: a sampler that builds the state every half
//! second, and an axum server on a current-thread tokio runtime that
//! serves the page, the state and its server-sent event stream.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, Request, State as Shared};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::StreamExt;

use super::state::{self, State};
use super::Dashboard;
use crate::error::Error;

/// The page: HTML, CSS and script in one file, compiled in.
const PAGE: &str = include_str!("page.html");

/// How often the state is rebuilt and pushed.
const SAMPLE: Duration = Duration::from_millis(500);

/// A running dashboard. Dropping it stops the server and the sampler.
#[derive(Debug)]
pub struct Served {
    /// The address it listens on.
    addr: SocketAddr,
    /// The token requests carry, if one is needed.
    token: Option<String>,
    /// Set to stop both threads.
    stop: Arc<AtomicBool>,
    /// Tells the server to shut down.
    shutdown: Option<watch::Sender<bool>>,
    /// The sampler and server threads.
    threads: Vec<JoinHandle<()>>,
}

impl Served {
    /// The address it listens on (the port chosen, for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's URL, with the token when one is needed.
    pub fn url(&self) -> String {
        match &self.token {
            Some(t) => format!("http://{}/?token={t}", self.addr),
            None => format!("http://{}/", self.addr),
        }
    }

    /// Stops the server and the sampler and waits for them. Idempotent.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the handlers share.
#[derive(Clone)]
struct App {
    /// The latest state, as JSON.
    state: watch::Receiver<Arc<str>>,
    /// The token requests must carry, if any.
    token: Option<Arc<str>>,
    /// The cluster, for requeues and discards; `None` also when actions
    /// are off.
    act_on: Option<Arc<str>>,
    /// The queue's keys, for requeues.
    keys: Arc<Vec<Vec<u8>>>,
}

pub(super) fn start(cfg: Dashboard) -> Result<Served, Error> {
    let listener = std::net::TcpListener::bind(cfg.listen)
        .map_err(|e| Error::io(format!("binding the dashboard to {}", cfg.listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the dashboard's address", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("setting up the dashboard's socket", e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let first = sample(&cfg, Instant::now(), &mut History::default());
    let (tx, rx) = watch::channel::<Arc<str>>(to_json(&first).into());
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);

    let sampler = {
        let (cfg, stop) = (cfg.clone(), stop.clone());
        std::thread::Builder::new()
            .name("multitasking-dashboard-sampler".into())
            .spawn(move || {
                let started = Instant::now();
                let mut history = History::default();
                while !stop.load(Ordering::SeqCst) {
                    let s = sample(&cfg, started, &mut history);
                    if tx.send(to_json(&s).into()).is_err() {
                        break;
                    }
                    sleep_unless(&stop, SAMPLE);
                }
            })
            .map_err(|e| Error::io("starting the dashboard's sampler", e))?
    };
    let app = App {
        state: rx,
        token: cfg.token.as_deref().map(Arc::from),
        act_on: cfg
            .cluster
            .as_deref()
            .filter(|_| cfg.actions)
            .map(Arc::from),
        keys: cfg.keys.clone(),
    };
    let server = std::thread::Builder::new()
        .name("multitasking-dashboard".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("multitasking: the dashboard could not start: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("multitasking: the dashboard could not listen: {e}");
                        return;
                    }
                };
                let routes = Router::new()
                    .route("/", get(page))
                    .route("/api/state", get(latest))
                    .route("/api/events", get(events))
                    .route("/api/dead/{entry}/{action}", post(act))
                    .layer(axum::middleware::from_fn_with_state(app.clone(), authorize))
                    .with_state(app);
                let _ = axum::serve(listener, routes)
                    .with_graceful_shutdown(async move {
                        let _ = shutdown_rx.wait_for(|stop| *stop).await;
                    })
                    .await;
            });
        })
        .map_err(|e| Error::io("starting the dashboard's server", e))?;
    Ok(Served {
        addr,
        token: cfg.token,
        stop,
        shutdown: Some(shutdown_tx),
        threads: vec![sampler, server],
    })
}

fn to_json(s: &State) -> String {
    serde_json::to_string(s).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Sleeps `d`, in short steps that notice `stop`.
fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

/// What the sampler remembers between samples of a cluster: completions
/// are worked out from the change in tasks read and in flight.
#[derive(Default)]
struct History {
    /// The previous reading: tasks read by the group, tasks in flight.
    last: Option<(u64, u64)>,
    /// Tasks completed since the dashboard started.
    done: u64,
    /// (when, completions) of each sample, for the throughput buckets.
    samples: std::collections::VecDeque<(Instant, u64)>,
}

/// Builds one state from the trace and the cluster.
fn sample(cfg: &Dashboard, started: Instant, history: &mut History) -> State {
    let mut s = State {
        source: match (&cfg.trace, &cfg.cluster) {
            (_, Some(url)) => crate::executor::redact(url),
            (Some(_), None) => "local run".to_string(),
            (None, None) => "nothing".to_string(),
        },
        uptime_s: started.elapsed().as_secs_f64(),
        actions: cfg.actions && cfg.cluster.is_some(),
        ..State::default()
    };
    if let Some(trace) = &cfg.trace {
        state::from_trace(&mut s, &trace());
    }
    #[cfg(feature = "cluster")]
    if let Some(url) = &cfg.cluster {
        cluster_part(&mut s, url, history, cfg.trace.is_none());
    }
    #[cfg(not(feature = "cluster"))]
    let _ = history;
    s
}

/// Adds a cluster's workers, queue, in flight and dead letters to `s`;
/// with no trace, its throughput too (from the broker's counts).
#[cfg(feature = "cluster")]
fn cluster_part(s: &mut State, url: &str, history: &mut History, untraced: bool) {
    use super::state::{DeadView, WorkerView, BUCKET, BUCKETS};
    let status = match crate::cluster::status(url) {
        Ok(st) => st,
        Err(e) => {
            s.notes.push(format!("broker: {e}"));
            return;
        }
    };
    s.queue_depth = Some(status.queue_depth);
    s.dead_letters = Some(status.dead_letters);
    s.in_flight = status.in_flight;
    for w in &status.workers {
        s.workers.push(WorkerView {
            name: w.consumer.clone(),
            at: w.worker.clone().unwrap_or_default(),
            alive: w.alive,
            heartbeat_s: w.last_heartbeat_s,
            slots: w.concurrency,
            busy: w.running,
            ..WorkerView::default()
        });
    }
    match crate::cluster::dead_letters(url, 20) {
        Ok(dead) => {
            s.dead = dead
                .into_iter()
                .map(|d| DeadView {
                    entry: d.entry,
                    task: d.task,
                    reason: d.reason,
                    deliveries: d.deliveries,
                    worker: d.worker,
                    requeueable: d.payload_bytes.is_some(),
                })
                .collect()
        }
        Err(e) => s.notes.push(format!("dead letters: {e}")),
    }
    if !untraced {
        return;
    }
    // The timeline, latency and slowest tasks from what the workers
    // published; the workers stay those the heartbeats name, and the
    // counts those of the broker (the span stream is capped).
    match crate::cluster::recent_tasks(url, SPAN_ENTRIES) {
        Ok(trace) if !trace.events.is_empty() => {
            let mut from_spans = State::default();
            state::from_trace(&mut from_spans, &trace);
            s.latency_p50_ms = from_spans.latency_p50_ms;
            s.latency_p95_ms = from_spans.latency_p95_ms;
            s.timeline = from_spans.timeline;
            s.slowest = from_spans.slowest;
            s.failed = from_spans.failed;
            for w in &mut s.workers {
                if let Some(seen) = from_spans.workers.iter().find(|v| v.name == w.name) {
                    w.tasks = seen.tasks;
                    w.peak_rss = seen.peak_rss;
                    w.utilisation = seen.utilisation;
                }
            }
        }
        Ok(_) => s.notes.push(
            "no worker published spans yet (workers started with --no-spans publish none): \
             no timeline or slowest tasks"
                .to_string(),
        ),
        Err(e) => s.notes.push(format!("spans: {e}")),
    }
    let Ok(Some(read)) = crate::cluster::tasks_read(url) else {
        s.notes
            .push("this Redis does not count the tasks read (Redis 7 does)".to_string());
        return;
    };
    let now = Instant::now();
    let completed = match history.last {
        Some((r0, f0)) => (read.saturating_sub(r0) + f0).saturating_sub(status.in_flight),
        None => 0,
    };
    history.last = Some((read, status.in_flight));
    history.done += completed;
    history.samples.push_back((now, completed));
    let span = BUCKET.as_secs_f64();
    while history
        .samples
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t).as_secs_f64() >= span * BUCKETS as f64)
    {
        history.samples.pop_front();
    }
    let mut buckets = vec![0u64; BUCKETS];
    for (t, n) in &history.samples {
        let back = (now.duration_since(*t).as_secs_f64() / span) as usize;
        if back < BUCKETS {
            buckets[BUCKETS - 1 - back] += n;
        }
    }
    s.done = history.done;
    s.throughput = buckets.iter().map(|&n| n as f64 / span).collect();
    s.rate = s.throughput.last().copied().unwrap_or(0.0);
}

/// Refuses a request without the token, when one is needed.
async fn authorize(Shared(app): Shared<App>, req: Request, next: Next) -> Response {
    let Some(token) = &app.token else {
        return next.run(req).await;
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let in_query = Query::<std::collections::HashMap<String, String>>::try_from_uri(req.uri())
        .ok()
        .and_then(|q| q.0.get("token").cloned());
    let given = bearer.or(in_query);
    if given
        .as_deref()
        .is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()))
    {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            "a token is needed: ?token=... or Authorization: Bearer ...",
        )
            .into_response()
    }
}

/// Compares without leaking, through timing, how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn latest(Shared(app): Shared<App>) -> Response {
    let json = app.state.borrow().clone();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("static"),
    );
    (headers, json.to_string()).into_response()
}

async fn events(
    Shared(app): Shared<App>,
) -> Sse<impl tokio_stream::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let stream = WatchStream::new(app.state.clone())
        .map(|json| Ok(Event::default().event("state").data(&*json)));
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Requeues or discards a dead letter: `POST /api/dead/{entry}/requeue`
/// or `.../discard`.
async fn act(Shared(app): Shared<App>, Path((entry, action)): Path<(String, String)>) -> Response {
    let Some(url) = app.act_on.clone() else {
        return (
            StatusCode::FORBIDDEN,
            "requeueing and discarding dead letters is off: start the dashboard with actions \
             allowed",
        )
            .into_response();
    };
    #[cfg(feature = "cluster")]
    {
        let keys = app.keys.clone();
        let done = tokio::task::spawn_blocking(move || match action.as_str() {
            "discard" => crate::cluster::discard_dead_letter(&url, &entry)
                .map(|found| Some(serde_json::json!({ "discarded": found }))),
            "requeue" => crate::cluster::requeue_dead_letter(&url, &entry, &keys, REQUEUE_EXPIRY)
                .map(|task| Some(serde_json::json!({ "requeued": task.is_some(), "task": task }))),
            _ => Ok(None),
        })
        .await;
        match done {
            Ok(Ok(Some(body))) => axum::Json(body).into_response(),
            Ok(Ok(None)) => {
                (StatusCode::NOT_FOUND, "the actions are requeue and discard").into_response()
            }
            Ok(Err(e)) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }
    #[cfg(not(feature = "cluster"))]
    {
        let _ = (url, entry, action, app.keys);
        StatusCode::NOT_FOUND.into_response()
    }
}

/// Entries of the span stream read per sample (each up to 256 tasks).
#[cfg(feature = "cluster")]
const SPAN_ENTRIES: usize = 200;

/// How long a requeued task's signature stays valid.
#[cfg(feature = "cluster")]
const REQUEUE_EXPIRY: Duration = Duration::from_secs(600);
