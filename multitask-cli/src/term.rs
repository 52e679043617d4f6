//! What the terminal gets besides results: the one-line error, colour (off
//! unless stderr is a terminal and `NO_COLOR` is unset), and the progress
//! hook.
//!
//! Progress goes to stderr, only when stderr is a terminal and `--quiet` is
//! not given, as one line rewritten in place. It is a hook: a later change
//! puts indicatif bars behind the same three calls (`tick`, `suspend`,
//! `finish`).

use std::fmt::Display;
use std::io::{self, IsTerminal, Write};

/// True if stderr may be coloured: it is a terminal and `NO_COLOR` is unset
/// or empty (<https://no-color.org>).
pub(crate) fn color_stderr() -> bool {
    std::env::var_os("NO_COLOR").map_or(true, |v| v.is_empty()) && io::stderr().is_terminal()
}

/// Prints `multitask: error: {message}` as one line on stderr.
pub(crate) fn error(message: impl Display) {
    let one_line = message.to_string().replace('\n', " ");
    let prefix = if color_stderr() {
        "multitask: \x1b[1;31merror:\x1b[0m"
    } else {
        "multitask: error:"
    };
    let _ = writeln!(io::stderr().lock(), "{prefix} {one_line}");
}

/// Prints `multitask: {message}` on stderr: a note about one job or event.
pub(crate) fn note(message: impl Display) {
    let _ = writeln!(io::stderr().lock(), "multitask: {message}");
}

/// A progress line on stderr, or nothing.
#[derive(Debug)]
pub(crate) struct Progress {
    /// What is being counted; `None` when progress is off.
    label: Option<String>,
    /// True while a line is on the screen and must be cleared before
    /// anything else is written to stderr.
    shown: bool,
}

impl Progress {
    /// Progress for `label`, on only if stderr is a terminal and not `quiet`.
    pub(crate) fn new(label: &str, quiet: bool) -> Progress {
        let on = !quiet && io::stderr().is_terminal();
        Progress {
            label: on.then(|| label.to_string()),
            shown: false,
        }
    }

    /// Shows `done` of `total` (when the total is known).
    pub(crate) fn tick(&mut self, done: usize, total: Option<usize>) {
        let Some(label) = &self.label else { return };
        let count = match total {
            Some(t) => format!("{done}/{t}"),
            None => done.to_string(),
        };
        let _ = write!(io::stderr().lock(), "\r\x1b[K{label}: {count}");
        self.shown = true;
    }

    /// Clears the line so other output can be written; the next `tick`
    /// draws it again.
    pub(crate) fn suspend(&mut self) {
        if self.shown {
            let _ = write!(io::stderr().lock(), "\r\x1b[K");
            self.shown = false;
        }
    }

    /// Clears the line for good.
    pub(crate) fn finish(&mut self) {
        self.suspend();
        self.label = None;
    }
}
