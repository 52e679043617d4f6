//! What the terminal gets besides results: the one-line error, colour (off
//! unless stderr is a terminal and `NO_COLOR` is unset), and the progress
//! hook.
//!
//! Progress goes to stderr as an indicatif bar, only when stderr is a
//! terminal, `NO_COLOR` is unset and `--quiet` is not given.

use std::fmt::Display;
use std::io::{self, IsTerminal, Write};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// True if stderr may be coloured: it is a terminal and `NO_COLOR` is unset
/// or empty (<https://no-color.org>).
pub(crate) fn color_stderr() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && io::stderr().is_terminal()
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

/// An indicatif progress bar on stderr, or nothing.
///
/// `suspend` clears the bar so that results can be printed; the next `tick`
/// draws a new one that keeps the elapsed time, so the rate and ETA stay
/// right.
#[derive(Debug)]
pub(crate) struct Progress {
    /// What is being counted; `None` when progress is off.
    label: Option<String>,
    /// The bar on screen, if one is.
    bar: Option<ProgressBar>,
    /// When counting began.
    start: Instant,
}

impl Progress {
    /// Progress for `label`, on only if stderr is a terminal, `NO_COLOR`
    /// is unset and not `quiet`.
    pub(crate) fn new(label: &str, quiet: bool) -> Progress {
        let on = !quiet && io::stderr().is_terminal() && color_stderr();
        Progress {
            label: on.then(|| label.to_string()),
            bar: None,
            start: Instant::now(),
        }
    }

    /// Shows `done` of `total` (when the total is known).
    pub(crate) fn tick(&mut self, done: usize, total: Option<usize>) {
        let Some(label) = &self.label else { return };
        let start = self.start;
        let bar = self.bar.get_or_insert_with(|| {
            let style = match total {
                Some(_) => ProgressStyle::with_template(
                    "{msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})",
                )
                .map(|s| s.progress_chars("=> ")),
                None => ProgressStyle::with_template("{msg} {spinner} {pos} done ({per_sec})"),
            }
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            ProgressBar::with_draw_target(total.map(|t| t as u64), ProgressDrawTarget::stderr())
                .with_style(style)
                .with_message(label.clone())
                .with_elapsed(start.elapsed())
        });
        bar.set_position(done as u64);
    }

    /// Clears the bar so other output can be written; the next `tick` draws
    /// it again.
    pub(crate) fn suspend(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// Clears the bar for good.
    pub(crate) fn finish(&mut self) {
        self.suspend();
        self.label = None;
    }
}
