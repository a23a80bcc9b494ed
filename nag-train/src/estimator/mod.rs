//! Training and validating the noise-level estimator `g_φ(τ | x)` (REFERENCE §1).
//!
//! The paper measures the noise shift of sampled states with a network that reads a state and
//! returns a posterior over its noise level. [`train_estimator`] fits a
//! [`NoiseEstimator`] (a DiT trunk without timestep input, `K` τ-bins) on forward-noised data:
//!
//! - `x0` from the dataset (the last `eval_samples` items are held out for evaluation);
//! - τ from the diffusion model's own schedule (`schedule`, names as
//!   [`Schedule::from_name`], default `ddpm-linear`): for a DDPM table τ is uniform on its grid
//!   `τ_i = (i + 1)/T` with the exact `ᾱ_i` (what DiT trains on), for a continuous schedule τ is
//!   uniform on `(0, 1]`;
//! - `x_τ = α(τ)·x0 + σ(τ)·ε`, `ε ~ N(0, I)`;
//! - loss: cross-entropy of the logits against the bin of τ, `min(⌊τK⌋, K − 1)`. The target is
//!   one-hot by default, which makes the loss a proper scoring rule: the minimiser is the true
//!   bin posterior `p(bin | x)`, which is what the noise-shift analysis compares. An optional
//!   uniform label smoothing `ε` (target `(1 − ε)·onehot + ε/K`) regularises at the price of a
//!   flatter posterior; it is off by default.
//!
//! Optimiser: AdamW (β = (0.9, 0.999), no weight decay), linear warm-up then cosine decay to
//! 10 % of `lr`, gradient-norm clipping. All randomness of step `k` (times and noise) comes from
//! `stream_rng(seed, DOMAIN, k)` and batches from the deterministic [`Loader`], so the same
//! config gives the same weights bit for bit (model initialisation seeds burn's backend RNG
//! under a process-wide lock).
//!
//! Output, written atomically into the output folder: `estimator.safetensors` (the state dict,
//! keys as documented in [`nag_models::estimator`]) and `estimator.json` ([`EstimatorMeta`]:
//! the network config, schedule name, number of bins, data spec and the training config).
//! [`load_estimator`] reads them back.
//!
//! [`estimate_tau`] is the measuring API (posterior mean of τ and the full posterior per state);
//! [`validate_on_gmm`] compares a trained estimator with the exact posterior of the built-in
//! Gaussian-mixture data ([`GaussianMixture::posterior_over_grid`]).
//!
//! Layout: the options and `estimator.json`'s contents in `config.rs`, the training loop in
//! `train.rs`, forward-noising in `noise.rs`, writing and reading the files in `store.rs`,
//! measuring and validating in `eval.rs`; this file holds what they share (errors, the random
//! stream domains, initialisation).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::tensor::backend::Backend;
use nag_core::schedule::Schedule;
use nag_models::estimator::{EstimatorConfig, NoiseEstimator};

use crate::data::DataError;

mod config;
mod eval;
mod noise;
mod store;
mod train;

pub use config::{EstimatorMeta, EstimatorTrainConfig};
pub use eval::{estimate_tau, validate_on_gmm, ValidateOptions, ValidationReport};
pub use noise::tau_bin;
pub use store::{load_estimator, save_estimator};
pub use train::{train_estimator, EstimatorProgress, EstimatorSummary};

/// File stem of the exported estimator (`estimator.safetensors` + `estimator.json`).
pub const FILE_STEM: &str = "estimator";

const DOMAIN_STEP: u64 = 0x4553_5450; // "ESTP": per-step times and noise
const DOMAIN_EVAL: u64 = 0x4545_5641; // "EEVA": held-out times and noise
const DOMAIN_EVAL_ITEM: u64 = 0x4545_4954; // "EEIT": held-out item augmentation
const DOMAIN_VALIDATE: u64 = 0x4556_414C; // "EVAL": validate_on_gmm draws

/// Rows per forward pass in evaluation.
const EVAL_CHUNK: usize = 128;

/// Errors of estimator training, loading and validation.
#[derive(Debug, thiserror::Error)]
pub enum EstimatorError {
    /// An impossible option or a mismatch between estimator and data.
    #[error("estimator: {0}")]
    Config(String),
    /// Bad input to a measuring function.
    #[error("estimator input: {0}")]
    Input(String),
    /// Dataset problem.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Model problem.
    #[error(transparent)]
    Model(#[from] nag_models::dit::ModelError),
    /// Checkpoint problem.
    #[error(transparent)]
    Checkpoint(#[from] nag_models::state_dict::CheckpointError),
    /// A schedule or mixture computation failed.
    #[error(transparent)]
    Core(#[from] nag_core::Error),
    /// The loss became NaN or infinite.
    #[error("estimator loss is {loss} at step {step}; lower --lr or check the data")]
    NonFinite {
        /// Step.
        step: u64,
        /// The loss value.
        loss: f32,
    },
    /// I/O on a named path.
    #[error("{path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `estimator.json` is not a valid estimator description.
    #[error("{path}: not an estimator description: {reason}")]
    Meta {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl From<crate::train::fit::NonFiniteLoss> for EstimatorError {
    fn from(e: crate::train::fit::NonFiniteLoss) -> Self {
        Self::NonFinite {
            step: e.step,
            loss: e.loss,
        }
    }
}

fn parse_schedule(name: &str) -> Result<Schedule, EstimatorError> {
    Schedule::from_name(name).map_err(|e| EstimatorError::Config(format!("--schedule: {e}")))
}

/// Builds an estimator with burn's backend RNG seeded by `seed`, under a process-wide lock so
/// that concurrent initialisations through this function cannot interleave their draws (the
/// weights depend only on `cfg` and `seed`). Every parameter is materialised before the lock is
/// released (burn's initialisation is otherwise deferred to the first access).
pub fn init_estimator<B: Backend>(
    cfg: &EstimatorConfig,
    seed: u64,
    device: &B::Device,
) -> Result<NoiseEstimator<B>, EstimatorError> {
    static INIT: Mutex<()> = Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    B::seed(device, seed);
    let est = cfg.init(device)?;
    // burn initialises parameters lazily, on first access: touch every one now, in a fixed
    // order, while the seeded RNG is ours.
    let _ = est.to_state_dict();
    Ok(est)
}

fn io<T>(path: &Path, r: std::io::Result<T>) -> Result<T, EstimatorError> {
    r.map_err(|source| EstimatorError::Io {
        path: path.to_path_buf(),
        source,
    })
}
