//! The README's experiments as library functions: typed options in, typed results (and their
//! files: `results.json`, `table.md`, plots) out, progress as events.

pub mod nag;
pub mod oracle;

pub use nag::{run_nag_experiment, NagExperimentConfig, NagExperimentEvent, NagResults};

/// Errors of the experiments.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// A bad option or an unusable output folder.
    #[error("{0}")]
    Config(String),
    /// Training the model, or writing a file.
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    /// Loading or sampling a model.
    #[error(transparent)]
    Generate(#[from] crate::generate::GenerateError),
    /// The feature classifier or a metric.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The data.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// The noise-shift measurement.
    #[error(transparent)]
    Shift(#[from] crate::shift::ShiftError),
    /// A plot.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
}
