//! Progress bars for `map`: an indicatif bar on stderr when stderr is a
//! terminal, nothing otherwise.
//!
//! [`bar`] builds the progress hook that [`crate::Map::progress`] takes;
//! [`crate::Map::progress_bar`] attaches one in a call. When the input's
//! length is known the bar shows a percentage and an ETA, else a spinner
//! with a count and a rate. The bar is hidden when stderr is not a terminal
//! (pipes, CI logs) or when `NO_COLOR`/`MULTITASK_NO_PROGRESS` is set, so
//! scripts never see control codes.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// True when a progress bar would be drawn: stderr is a terminal and
/// neither `MULTITASK_NO_PROGRESS` nor `NO_COLOR` is set.
pub fn enabled() -> bool {
    std::io::stderr().is_terminal()
        && std::env::var_os("MULTITASK_NO_PROGRESS").is_none()
        && std::env::var_os("NO_COLOR").is_none()
}

/// A progress hook that draws a bar labelled `label` on stderr, or does
/// nothing when [`enabled`] is false. The bar finishes when the last item
/// of a known total is yielded.
pub fn bar(label: &str) -> impl FnMut(usize, Option<usize>) + Send {
    let label = label.to_string();
    let mut pb: Option<ProgressBar> = None;
    let on = enabled();
    move |done, total| {
        if !on {
            return;
        }
        let pb = pb.get_or_insert_with(|| new_bar(&label, total));
        pb.set_position(done as u64);
        if total == Some(done) {
            pb.finish();
        }
    }
}

fn new_bar(label: &str, total: Option<usize>) -> ProgressBar {
    let pb = match total {
        Some(n) => ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr())
            .with_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {pos}/{len} ({percent}%, {per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{msg} {spinner} {pos} done ({per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    pb.set_message(label.to_string());
    pb
}
