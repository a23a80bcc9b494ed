//! Progress bars for long work (indicatif), fed by the libraries' progress callbacks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// `--quiet`: no bars at all.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Turns every bar off (`--quiet`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// A bar over `total` items with their rate; hidden when stderr is not a terminal or with
/// `--quiet`.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for `total` `unit`s (e.g. "images").
    pub fn new(total: u64, unit: &str) -> Self {
        let target = if QUIET.load(Ordering::Relaxed) {
            ProgressDrawTarget::hidden()
        } else {
            // (indicatif draws nothing when stderr is not a terminal.)
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        let template =
            format!("{{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}}) {{msg}}");
        bar.set_style(
            ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(500));
        Self { bar }
    }

    /// Sets the number done.
    pub fn set(&self, done: u64) {
        self.bar.set_position(done);
    }

    /// Sets the number done as the starting point: rate and ETA count from here (a resumed
    /// run, or work before the first report).
    pub fn start_at(&self, done: u64) {
        self.bar.set_position(done);
        self.bar.reset_eta();
    }

    /// A line above the bar (a plain line when the bar is hidden).
    pub fn println(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// A short message after the counts.
    pub fn message(&self, msg: String) {
        self.bar.set_message(msg);
    }

    /// Starts a new stage of `total` items named `name` (shown after the counts).
    pub fn stage(&self, name: &str, total: u64) {
        self.bar.reset();
        self.bar.set_length(total);
        self.bar.set_message(name.to_string());
    }

    /// Leaves the final state on screen.
    pub fn finish(&self) {
        self.bar.finish();
    }

    /// Removes the bar from the screen.
    pub fn clear(&self) {
        self.bar.finish_and_clear();
    }
}
