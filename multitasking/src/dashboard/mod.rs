//! A live dashboard in the browser: the workers and their slots, the queue,
//! what is in flight, dead letters with their reasons, throughput and
//! latency over the last minutes, a timeline with a lane per worker and
//! the slowest tasks, for a local pool's [`Tracer`] or a cluster queue, or
//! both (Ray's, Dask's and Flower's dashboards are the model).
//!
//! How it works: a sampler thread builds the page's state every half
//! second (from the trace and, for a cluster, from the broker) and
//! publishes it as JSON; an axum server on a tokio runtime of its own
//! thread serves the page (`/`, a static file compiled into the binary, no
//! build step), the latest state (`/api/state`) and a server-sent event
//! stream of states (`/api/events`). A discard of a dead letter
//! (`POST /api/dead/<entry>/discard`) is refused unless the dashboard was
//! built with [`Dashboard::allow_actions`].
//!
//! It binds to loopback by default. Any other address needs a token; then
//! every request must carry it (`?token=` or `Authorization: Bearer`),
//! and the page passes it on from its own URL.
//!
//! ```no_run
//! use multitasking::dashboard::Dashboard;
//! use multitasking::trace::Tracer;
//! use multitasking::{Executor, ThreadPool};
//!
//! let tracer = Tracer::new();
//! let pool = ThreadPool::builder().tracer(tracer.clone()).build().unwrap();
//! let served = Dashboard::new().tracer(&tracer).serve().unwrap();
//! println!("dashboard at {}", served.url());
//! # drop(pool);
//! ```

mod server;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::error::Error;
use crate::trace::{Trace, Tracer};

pub use server::Served;

/// Gives the dashboard the trace to show, each time it samples.
type TraceFn = Arc<dyn Fn() -> Trace + Send + Sync>;

/// Builds and starts a dashboard; see the [module docs](self).
#[derive(Clone)]
pub struct Dashboard {
    /// Where to listen.
    listen: SocketAddr,
    /// The token every request must carry, when set.
    token: Option<String>,
    /// True if the page may discard dead letters.
    actions: bool,
    /// The local trace, if any.
    trace: Option<TraceFn>,
    /// The cluster queue's URL, if any.
    cluster: Option<String>,
    /// The queue's keys, for requeues on a signed queue.
    keys: Arc<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("actions", &self.actions)
            .field("trace", &self.trace.is_some())
            .field(
                "cluster",
                &self.cluster.as_deref().map(crate::executor::redact),
            )
            .finish()
    }
}

impl Default for Dashboard {
    fn default() -> Self {
        Dashboard::new()
    }
}

impl Dashboard {
    /// A dashboard of nothing yet, on `127.0.0.1` and a free port.
    pub fn new() -> Dashboard {
        Dashboard {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: None,
            actions: false,
            trace: None,
            cluster: None,
            keys: Arc::default(),
        }
    }

    /// Where to listen. Default: `127.0.0.1:0` (a free port; see
    /// [`Served::addr`]). An address that is not loopback needs a
    /// [`Dashboard::token`].
    pub fn listen(mut self, addr: SocketAddr) -> Dashboard {
        self.listen = addr;
        self
    }

    /// A token every request must carry. Default: none (loopback only).
    pub fn token(mut self, token: impl Into<String>) -> Dashboard {
        self.token = Some(token.into());
        self
    }

    /// Lets the page requeue and discard dead letters (see
    /// [`requeue_dead_letter`](crate::cluster::requeue_dead_letter)).
    /// Default: false (read only).
    pub fn allow_actions(mut self, yes: bool) -> Dashboard {
        self.actions = yes;
        self
    }

    /// Shows what `tracer` records (give the same tracer to the pools).
    pub fn tracer(self, tracer: &Tracer) -> Dashboard {
        let tracer = tracer.clone();
        self.trace_with(move || tracer.snapshot())
    }

    /// Shows the trace `f` returns each time the dashboard samples: for a
    /// program whose pools (and tracers) come and go.
    pub fn trace_with(mut self, f: impl Fn() -> Trace + Send + Sync + 'static) -> Dashboard {
        self.trace = Some(Arc::new(f));
        self
    }

    /// Shows the cluster queue at `url` (`redis://host/db?queue=q`): its
    /// workers by heartbeat, queue depth, in flight and dead letters.
    #[cfg(feature = "cluster")]
    pub fn cluster(mut self, url: impl Into<String>) -> Dashboard {
        self.cluster = Some(url.into());
        self
    }

    /// The queue's keys, for requeues on a signed queue: a requeued task's
    /// signature is checked with them, and its new entry signed with the
    /// first. Default: none.
    #[cfg(feature = "cluster")]
    pub fn keys<I, K>(mut self, keys: I) -> Dashboard
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        self.keys = Arc::new(keys.into_iter().map(|k| k.as_ref().to_vec()).collect());
        self
    }

    /// Binds, starts the sampler and the server, and returns at once.
    ///
    /// Errors if the address can't be bound, or is not loopback and no
    /// token was given.
    pub fn serve(self) -> Result<Served, Error> {
        if !self.listen.ip().is_loopback() && self.token.as_deref().is_none_or(str::is_empty) {
            return Err(Error::Config(format!(
                "a dashboard on {} (not loopback) needs a token",
                self.listen
            )));
        }
        server::start(self)
    }
}
