//! `multitask dashboard`: a live page of a cluster queue in the browser
//! (see the library's `dashboard` module), served until Ctrl-C.
//!
//! The token, needed on any address that is not loopback, comes from a
//! file or the environment, never from the command line, where `ps` would
//! show it to every user of the machine.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use multitasking::dashboard::Dashboard;

use crate::args::DashboardArgs;

/// The environment variable that may hold the token.
const TOKEN_VAR: &str = "MULTITASK_DASHBOARD_TOKEN";

/// Serves the dashboard until the process is interrupted.
pub(crate) fn main(args: DashboardArgs) -> Result<ExitCode> {
    let url = match &args.queue {
        Some(q) => {
            let base = args
                .broker
                .split_once('?')
                .map_or(args.broker.as_str(), |(b, _)| b);
            format!("{base}?queue={q}")
        }
        None => args.broker.clone(),
    };
    // Fail now, with the broker's own words, rather than on the page.
    multitasking::cluster::status(&url).with_context(|| {
        format!(
            "reading the status of {}",
            multitasking::cluster::redact(&url)
        )
    })?;
    let mut dashboard = Dashboard::new()
        .listen(args.listen)
        .cluster(url)
        .allow_actions(args.allow_actions)
        .keys(crate::cmd::worker::queue_keys(args.key_file.as_deref())?);
    if let Some(token) = token(&args)? {
        dashboard = dashboard.token(token);
    }
    let served = dashboard.serve().context("starting the dashboard")?;
    println!("dashboard at {}", served.url());
    use std::io::Write as _;
    std::io::stdout().flush()?;
    // Ctrl-C exits the process (see main.rs); until then, serve.
    loop {
        std::thread::park();
    }
}

/// The token from `--token-file` or the environment, if any.
fn token(args: &DashboardArgs) -> Result<Option<String>> {
    let token = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?;
            Some(text.lines().next().unwrap_or("").trim().to_string())
        }
        None => std::env::var(TOKEN_VAR).ok().map(|t| t.trim().to_string()),
    };
    match token {
        Some(t) if t.is_empty() => bail!("the dashboard token is empty"),
        t => Ok(t),
    }
}

/// Serves a dashboard of the lab's current trace at `addr`, for `bench
/// --dashboard`; `current` is swapped to each run's tracer.
pub(crate) fn serve_lab(
    addr: std::net::SocketAddr,
    current: std::sync::Arc<std::sync::Mutex<multitasking::trace::Tracer>>,
) -> Result<multitasking::dashboard::Served> {
    let mut dashboard = Dashboard::new()
        .listen(addr)
        .trace_with(move || current.lock().unwrap_or_else(|p| p.into_inner()).snapshot());
    if let Ok(t) = std::env::var(TOKEN_VAR) {
        dashboard = dashboard.token(t.trim().to_string());
    }
    dashboard.serve().context("starting the dashboard")
}
