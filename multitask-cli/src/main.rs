//! `multitask`: the command line of the multitask toolkit (primes, bench,
//! run, worker, status, info).
//!
//! `main` first calls `multitasking::init()`, because the binary is also its
//! own worker process: the process pool starts this executable again, and
//! `init` turns such a start into a worker that never returns here. Then it
//! installs the Ctrl-C handler, parses the command line (a usage error is
//! one line and exit 2) and runs the subcommand (an error is one line and
//! exit 1, or 2 for a usage error it finds itself, such as a missing
//! input file of `multitask run`).

mod args;
mod cmd;
mod profiling;
mod shell;
mod tasks;
mod term;
mod verdict;

use std::io;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

use crate::args::Cli;

/// Exit status after Ctrl-C: 128 + SIGINT, as a shell reports it.
pub(crate) const INTERRUPTED: i32 = 130;
/// Exit status when stdout is closed early (`multitask primes | head -1`):
/// 128 + SIGPIPE, what a tool killed by the signal would report.
const BROKEN_PIPE: u8 = 141;

fn main() -> ExitCode {
    multitasking::init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    if let Err(e) = ctrlc::set_handler(interrupted) {
        term::error(format!("cannot install the Ctrl-C handler: {e}"));
        return ExitCode::FAILURE;
    }
    match cmd::dispatch(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::from(BROKEN_PIPE),
        Err(e) if e.downcast_ref::<cmd::run::Usage>().is_some() => {
            term::error(format!("{e:#}"));
            ExitCode::from(2)
        }
        Err(e) => {
            term::error(format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// The first Ctrl-C (or SIGTERM): a cluster worker drains (a second one
/// exits at once); any other command kills the jobs this process started
/// and exits. Pending work dies with the process; worker processes die
/// with their parent.
fn interrupted() {
    if let Some(drain) = cmd::worker::DRAIN.get() {
        if !drain.is_stopped() {
            drain.stop();
            term::note("draining: running tasks finish, no new ones are fetched");
            return;
        }
    }
    shell::stop_everything();
    term::note("interrupted");
    std::process::exit(INTERRUPTED);
}

/// Prints help or version as clap does, and any other parse error as one
/// line, with exit status 2.
fn usage_error(e: clap::Error) -> ExitCode {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    // clap's text is "error: what\n  detail\n\nUsage: ...\n\nFor more...";
    // keep the paragraph before the first blank line, on one line.
    let text = e.render().to_string();
    let message: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    term::error(format_args!("{message} (see multitask --help)"));
    ExitCode::from(2)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
