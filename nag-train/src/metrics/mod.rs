//! Sample-quality metrics.
//!
//! - [`adm`]: OpenAI's ADM evaluator (Inception Score, FID, sFID, precision, recall from `.npz`
//!   sample and reference batches), as papers report it.
//! - [`fd`]: the Fréchet distance between two sets of feature vectors,
//!   `FD = |μ₁ − μ₂|² + tr Σ₁ + tr Σ₂ − 2·tr (Σ₁Σ₂)^½` (FID when the features are InceptionV3's),
//!   with a self-contained symmetric eigen-solver, and a low-rank path when there are fewer
//!   samples than dimensions.
//! - [`prdc`](mod@prdc): k-NN precision / recall (Kynkäänniemi et al. 2019) and density /
//!   coverage (Naeem et al. 2020).
//! - [`features`]: a small convolutional classifier trained on the dataset whose pooled
//!   activations are the feature space of the built-in FD and precision / recall.
//! - [`gmm_metrics`](mod@gmm_metrics): exact metrics on `gmm` data: mean log-density of
//!   samples under the data mixture and per-mode coverage.
//! - [`inception`]: pytorch-fid's InceptionV3 (2048-d pool features for FID), loaded from the
//!   user's `pt_inception-2015-12-05-6726825d.pth`.
//!
//! All functions check their input (empty sets, mismatched dimensions, non-finite values) and
//! return [`MetricsError`] instead of panicking.

pub mod adm;
pub mod fd;
pub mod features;
pub mod gmm_metrics;
pub mod inception;
pub mod prdc;

use std::path::PathBuf;

pub use fd::{frechet_distance, symmetric_eigen, FeatureStats, SymmetricEigen};
pub use features::{FeatureExtractor, FeatureNet, FeatureNetConfig, FeatureTrainConfig};
pub use gmm_metrics::{gmm_metrics, GmmReport};
pub use prdc::{prdc, Prdc};

/// Errors of the metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Unusable input: an empty or too small set, mismatched dimensions, non-finite values.
    #[error("{0}")]
    Input(String),
    /// An invalid option.
    #[error("invalid metrics option: {0}")]
    Config(String),
    /// The symmetric eigen-solver did not converge (not expected for finite symmetric input).
    #[error("symmetric eigen-decomposition of a {n}×{n} matrix: eigenvalue {index} did not converge in {iterations} QL iterations")]
    NoConvergence {
        /// Matrix size.
        n: usize,
        /// Index of the eigenvalue being found.
        index: usize,
        /// Iterations spent on it.
        iterations: usize,
    },
    /// The feature network or another model failed.
    #[error("{0}")]
    Model(String),
    /// A feature-network training loss became NaN or infinite.
    #[error("feature classifier loss is {loss} at step {step}; lower the learning rate")]
    NonFinite {
        /// Step.
        step: u64,
        /// Loss.
        loss: f32,
    },
    /// The requested computation is not available in this build (said honestly, never faked).
    #[error("{0}")]
    NotImplemented(String),
    /// Dataset problem.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// Reading an `.npz` sample or reference batch.
    #[error(transparent)]
    Npz(#[from] nag_models::npz::NpzError),
    /// Reading or writing model files.
    #[error(transparent)]
    Checkpoint(#[from] nag_models::state_dict::CheckpointError),
    /// nag-core rejected an argument (Gaussian mixture).
    #[error(transparent)]
    Core(#[from] nag_core::Error),
    /// I/O on a named path.
    #[error("{path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl From<crate::train::fit::NonFiniteLoss> for MetricsError {
    fn from(e: crate::train::fit::NonFiniteLoss) -> Self {
        Self::NonFinite {
            step: e.step,
            loss: e.loss,
        }
    }
}

/// Checks a flat `n × dim` feature array and returns `n`.
pub(crate) fn check_features<T: Copy + Into<f64>>(
    what: &str,
    x: &[T],
    dim: usize,
) -> Result<usize, MetricsError> {
    if dim == 0 {
        return Err(MetricsError::Input(format!(
            "{what}: feature dimension must be at least 1"
        )));
    }
    if !x.len().is_multiple_of(dim) {
        return Err(MetricsError::Input(format!(
            "{what}: {} values are not a whole number of {dim}-dimensional vectors",
            x.len()
        )));
    }
    if let Some(i) = x.iter().position(|v| !(*v).into().is_finite()) {
        return Err(MetricsError::Input(format!(
            "{what}: value {i} (vector {}) is not finite",
            i / dim
        )));
    }
    Ok(x.len() / dim)
}

/// Checks that row-major images `x` hold exactly `shape = [N, C, H, W]` values.
pub(crate) fn check_image_slice(x: &[f32], shape: [usize; 4]) -> Result<(), MetricsError> {
    if x.len() != shape.iter().product::<usize>() {
        return Err(MetricsError::Input(format!(
            "{} values do not match shape {shape:?}",
            x.len()
        )));
    }
    Ok(())
}

/// Maps `f(i)` over `0..n` on rayon's pool, in order (each `f(i)` alone decides its value, so
/// the result does not depend on the threads).
pub(crate) fn par_map<T: Send, F: Fn(usize) -> T + Sync + Send>(n: usize, f: F) -> Vec<T> {
    use rayon::prelude::*;
    (0..n).into_par_iter().map(f).collect()
}

/// Runs `f(r, row)` on every `len`-long row of `data` (row `r` of the slice), on rayon's pool.
pub(crate) fn par_rows_mut(
    data: &mut [f64],
    len: usize,
    f: impl Fn(usize, &mut [f64]) + Sync + Send,
) {
    use rayon::prelude::*;
    data.par_chunks_exact_mut(len)
        .enumerate()
        .for_each(|(r, row)| f(r, row));
}
