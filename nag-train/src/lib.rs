//! # nag-train
//!
//! Datasets, the noise-dropout trainer, samplers, metrics and the noise-shift analysis for
//! Noise Awareness Guidance (NAG, arXiv 2510.12497).
//!
//! - [`data`]: datasets (built-in `shapes` / `gmm`, image folders, latents, IDX) and the
//!   deterministic background batch loader; [`data_preview`]: a dataset's first items as a
//!   PNG grid (`xtask data`).
//! - [`image`]: PNG image grids and a minimal line-plot renderer.
//! - [`objective`]: DDPM (hybrid loss) and interpolant training losses.
//! - [`train`]: the noise-dropout trainer (AdamW, EMA, atomic checkpoints, exact resume);
//!   [`run_dir`]: its folder's lock, checkpoint manifests and resume fallback.
//! - [`sampling`]: DDPM, DDIM, SDE and ODE samplers over a [`sampling::DiffusionModel`].
//! - [`guided`]: guidance as a model wrapper ([`guided::GuidedDit`]); [`classifier_nag`]:
//!   classifier NAG with a trained noise-level estimator, also a wrapper.
//! - [`generate`]: sampling a trained model end to end; [`sample_images`]: the `sample`
//!   pipeline (model, DoG reference, VAE → a labelled PNG grid or an `.npz` set).
//! - [`metrics`]: sample quality: Fréchet distance, k-NN precision / recall, the feature
//!   classifier, exact `gmm` metrics.
//! - [`evaluate`]: the `eval` pipeline (samples vs. real images: FD, precision / recall,
//!   class accuracy, FID, exact gmm metrics), typed options in, a typed report out.
//! - [`experiments`]: the README's experiments (`experiment nag`), typed options in, typed
//!   results and their files out; [`report`]: figure helpers.
//! - [`estimator`]: training, loading and validating the noise-level estimator `g_φ(τ | x)`.
//! - [`shift`]: noise-shift measurement along sampling trajectories, calibrated against
//!   forward-noised data (the `shift` pipelines, analytic and `--run`).
//! - [`study`]: the oracle study (`experiment oracle`): NAG's effect on the shift and the
//!   samples, measured exactly.
//! - [`oracle`]: the exact model of `gmm` data (`--model oracle`) with controlled errors.
//! - [`sample_set`]: FID-50K sample sets: batched, decoded, resumable, in the ADM `.npz` format.
//! - [`transfer`]: the transfer table in miniature (fine-tuning onto a new domain; FT / CFG /
//!   DoG, each ± NAG) on `gmm` data, measured exactly.
//! - [`vae_codec`]: images ↔ latents through the SD VAE in batches; DiT's bytes conversion;
//!   [`vae_files`]: the same on `.npy` and image files (`xtask vae`).
//! - [`forward`]: one network evaluation on `.npy` inputs (`xtask forward`); [`bench`]: the
//!   DiT timing (`xtask bench`); [`device_check`]: one backend against another (`xtask
//!   gpu-check`); [`latent_extract`]: an image folder → a latent store (`xtask latents`).
#![warn(missing_docs)]

pub mod bench;
pub mod classifier_nag;
pub mod data;
pub mod data_preview;
pub mod device_check;
pub mod ema;
mod error;
pub mod estimator;
pub mod evaluate;
pub mod experiments;
pub mod forward;
pub mod generate;
pub mod guided;
pub mod image;
pub mod latent_extract;
pub mod metrics;
pub mod objective;
pub mod oracle;
pub mod parallel;
pub mod report;
pub mod run_dir;
pub mod sample_images;
pub mod sample_set;
pub mod sampling;
pub mod shift;
pub mod study;
pub mod train;
pub mod transfer;
pub mod vae_codec;
pub mod vae_files;

pub use error::PipelineError;

/// An error and its chain of causes in one line, `outer: cause: root` (as `anyhow`'s `{:#}`
/// prints them), for errors that must travel as text.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}
