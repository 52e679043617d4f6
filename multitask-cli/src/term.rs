//! What the terminal gets besides results: the one-line error, colour (off
//! unless stderr is a terminal and `NO_COLOR` is unset), and the progress
//! hook.
//!
//! Progress goes to stderr as an indicatif bar when stderr is a terminal
//! (or `multitask run --bar` asks) and `--quiet` is not given; `NO_COLOR`
//! takes the colour off it, not the bar.

use std::fmt::Display;
use std::io::{self, IsTerminal, Write};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

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
/// The bar is drawn once and kept: output goes above it through
/// [`Progress::print`], which takes the bar off the screen for the write
/// and puts it back, so the bar does not flicker away between
/// completions. Its rate is items per second to a sensible precision
/// ([`format_rate`]); it is coloured only when stderr may be.
#[derive(Debug)]
pub(crate) struct Progress {
    /// What is being counted; `None` when progress is off.
    label: Option<String>,
    /// Draw even when stderr is not a terminal (`--bar`, `--eta`).
    forced: bool,
    /// The bar on screen, once the first tick drew it.
    bar: Option<ProgressBar>,
    /// When counting began.
    start: Instant,
}

impl Progress {
    /// Progress for `label`, on only if stderr is a terminal and not
    /// `quiet`.
    pub(crate) fn new(label: &str, quiet: bool) -> Progress {
        Progress::forced(label, quiet, false)
    }

    /// [`Progress::new`]; with `forced` it draws on a stderr that is not a
    /// terminal too (GNU parallel's `--bar` does).
    pub(crate) fn forced(label: &str, quiet: bool, forced: bool) -> Progress {
        let on = !quiet && (forced || io::stderr().is_terminal());
        Progress {
            label: on.then(|| label.to_string()),
            forced,
            bar: None,
            start: Instant::now(),
        }
    }

    /// Shows `done` of `total` (when the total is known).
    pub(crate) fn tick(&mut self, done: usize, total: Option<usize>) {
        let Some(label) = &self.label else { return };
        let start = self.start;
        let forced = self.forced;
        let bar = self.bar.get_or_insert_with(|| {
            let target = if forced {
                ProgressDrawTarget::term_like_with_hz(Box::new(console::Term::stderr()), 10)
            } else {
                ProgressDrawTarget::stderr()
            };
            ProgressBar::with_draw_target(total.map(|t| t as u64), target)
                .with_style(style(total.is_some()))
                .with_message(label.clone())
                .with_elapsed(start.elapsed())
        });
        if let (Some(t), None) = (total, bar.length()) {
            bar.set_length(t as u64);
            bar.set_style(style(true));
        }
        bar.set_position(done as u64);
    }

    /// Runs `write` (which prints to stdout or stderr) with the bar off
    /// the screen, and draws the bar again after.
    pub(crate) fn print<R>(&self, write: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
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

/// The bar's look: with a total, a bar, the count, the rate, the time so
/// far and the time left; without, the count, the rate and the time.
fn style(total: bool) -> ProgressStyle {
    let bar = if color_stderr() {
        "{bar:30.cyan/blue}"
    } else {
        "{bar:30}"
    };
    let template = if total {
        format!("{{msg}} [{bar}] {{pos}}/{{len}} ({{rate}}, {{elapsed}}, eta {{eta}})")
    } else {
        "{msg} {pos} done ({rate}, {elapsed})".to_string()
    };
    ProgressStyle::with_template(&template)
        .map(|s| {
            s.progress_chars("=> ").with_key(
                "rate",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let secs = state.elapsed().as_secs_f64();
                    let rate = if secs > 0.0 {
                        state.pos() as f64 / secs
                    } else {
                        0.0
                    };
                    let _ = w.write_str(&format_rate(rate));
                },
            )
        })
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// A rate per second to at most three significant figures and two
/// decimals, no thousands separators (`252461/s`, `56.7/s`, `0.42/s`).
pub(crate) fn format_rate(rate: f64) -> String {
    match rate {
        r if r >= 100.0 => format!("{r:.0}/s"),
        r if r >= 10.0 => format!("{r:.1}/s"),
        r => format!("{r:.2}/s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_well() {
        assert_eq!(format_rate(252_461.238_8), "252461/s");
        assert_eq!(format_rate(56.73), "56.7/s");
        assert_eq!(format_rate(0.4166), "0.42/s");
        assert_eq!(format_rate(0.0), "0.00/s");
    }
}
