//! The subcommands, one module each, and what they share: building the
//! executor a spec names.
//!
//! `dispatch` hands each parsed subcommand to its module's `main`, which
//! returns the process exit status or an error that `main.rs` prints as one
//! line. `worker`, `status` and `bench` join as modules here.

pub(crate) mod bench;
#[cfg(feature = "dashboard")]
pub(crate) mod dashboard;
pub(crate) mod info;
pub(crate) mod primes;
pub(crate) mod run;
pub(crate) mod status;
pub(crate) mod worker;

use std::process::ExitCode;

use anyhow::Result;
use multitasking::{AnyExecutor, ExecutorSpec};

use crate::args::{Cli, Command};

/// Runs the subcommand `cli` names.
pub(crate) fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Primes(args) => primes::main(args, cli.quiet),
        Command::Info(args) => info::main(args),
        Command::Run(args) => run::main(*args, cli.quiet),
        Command::Bench(args) => bench::main(args, cli.quiet),
        Command::Worker(args) => worker::main(args),
        Command::Status(args) => status::main(args),
        #[cfg(feature = "dashboard")]
        Command::Dashboard(args) => dashboard::main(args),
    }
}

/// Builds the executor `spec` names, with a hint when this build lacks it.
pub(crate) fn executor(spec: &ExecutorSpec) -> Result<AnyExecutor> {
    AnyExecutor::build(spec).map_err(|e| match e {
        multitasking::Error::Unavailable(_) => {
            anyhow::anyhow!("{e}; use --executor threads (or serial) for now")
        }
        e => anyhow::Error::new(e).context(format!("starting executor {spec}")),
    })
}
