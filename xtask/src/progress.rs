//! Progress bars for long work (indicatif), fed by the libraries' progress callbacks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nag_train::metrics::features::FeatureProgress;
use nag_train::train::TrainEvent;

/// Shows the `nag` libraries' warnings (`log::warn!` and errors) on stderr as
/// `warning: …`; everything else logged (burn's own records included) stays silent.
struct Warnings;

impl log::Log for Warnings {
    fn enabled(&self, meta: &log::Metadata) -> bool {
        meta.level() <= log::Level::Warn && meta.target().starts_with("nag_")
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!("warning: {}", record.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the warning logger (once; a logger set before is left in place).
pub fn show_warnings() {
    static WARNINGS: Warnings = Warnings;
    if log::set_logger(&WARNINGS).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

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

/// A training run's events on screen: a bar with the loss (speed and ETA from the first report
/// on), resume and note lines above it.
pub struct TrainProgress {
    bar: Progress,
    started: bool,
    comm: String,
}

impl TrainProgress {
    /// A bar for a run of `steps` optimiser steps.
    pub fn new(steps: u64) -> Self {
        Self {
            bar: Progress::new(steps, "steps"),
            started: false,
            comm: String::new(),
        }
    }

    /// Shows one event of [`nag_train::train::train_replicas`].
    pub fn event(&mut self, event: TrainEvent) {
        let p = match event {
            TrainEvent::Communication(c) => {
                self.comm = format!(
                    " all-reduce {:.1} MB/step {:.3} s/step ({} replicas)",
                    c.bytes_per_step as f64 / 1e6,
                    c.seconds_per_step,
                    c.replicas
                );
                return;
            }
            TrainEvent::Progress(p) => p,
            TrainEvent::Resumed {
                from,
                step,
                skipped,
            } => {
                for s in &skipped {
                    self.bar
                        .println(format!("passed over {}: {}", s.dir.display(), s.reason));
                }
                self.bar
                    .println(format!("resuming from {} (step {step})", from.display()));
                return;
            }
            TrainEvent::NullTimestepInitialised(path) => {
                self.bar.println(format!(
                    "note: {} has no null-timestep vector; it starts freshly initialised (fine-tune with --noise-dropout > 0 before using NAG)",
                    path.display()
                ));
                return;
            }
        };
        if self.started {
            self.bar.set(p.step);
        } else {
            // Speed and ETA from the first report on (model set-up and, on resume, the steps
            // done before are not in them).
            self.bar.start_at(p.step);
            self.started = true;
        }
        self.bar.message(format!("loss {:.4}{}", p.loss, self.comm));
    }

    /// Leaves the bar's final state on screen, and the all-reduce cost of a data-parallel
    /// run as a line of its own (the bar is hidden when stderr is not a terminal).
    pub fn finish(&self) {
        self.bar.finish();
        if !self.comm.is_empty() {
            self.bar.println(self.comm.trim_start().to_string());
        }
    }
}

/// A feature classifier's training on screen.
pub struct FeatureBar(Progress);

impl FeatureBar {
    /// A bar for `steps` steps.
    pub fn new(steps: u64) -> Self {
        Self(Progress::new(steps, "steps"))
    }

    /// Shows one step's report.
    pub fn show(&self, p: &FeatureProgress) {
        self.0.set(p.step);
        self.0.message(format!(
            "loss {:.4} batch accuracy {:.1}%",
            p.loss,
            100.0 * p.accuracy
        ));
    }

    /// Leaves the bar's final state on screen.
    pub fn finish(&self) {
        self.0.finish();
    }
}
