//! Progress bars for long work (indicatif), fed by the libraries' progress callbacks.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `total` items with their rate; hidden when stderr is not a terminal.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for `total` `unit`s (e.g. "images").
    pub fn new(total: u64, unit: &str) -> Self {
        let bar = ProgressBar::new(total);
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
