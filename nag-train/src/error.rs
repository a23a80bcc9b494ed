//! [`PipelineError`]: the one error type of the end-to-end pipelines (`evaluate`, `sample_images`,
//! the `shift --run` measurement, the experiments, the oracle study, the transfer table), which
//! all fail in the same few ways.

/// Errors of the pipelines: a bad option, or a stage's own error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A bad option, run folder or combination; or an output that cannot be written.
    #[error("{0}")]
    Config(String),
    /// The oracle's options.
    #[error(transparent)]
    Oracle(#[from] crate::oracle::OracleConfigError),
    /// Loading or sampling a model.
    #[error(transparent)]
    Generate(#[from] crate::generate::GenerateError),
    /// The data.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// Training a model, or writing a file.
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    /// A feature network, InceptionV3 or a metric.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The noise-shift measurement.
    #[error(transparent)]
    Shift(#[from] crate::shift::ShiftError),
    /// The VAE.
    #[error(transparent)]
    Vae(#[from] nag_models::vae::VaeError),
    /// An `.npz` sample set.
    #[error(transparent)]
    SampleSet(#[from] crate::sample_set::SampleSetError),
    /// A PNG or plot.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
}
