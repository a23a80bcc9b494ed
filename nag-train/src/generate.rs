//! Sampling a trained model end to end: pick the sampler, wrap the model with its guidance,
//! draw the starting noise from a seed, run. Used by `cargo xtask sample` and the analyses.

use std::path::Path;

use burn::tensor::{backend::Backend, Tensor};
use nag_core::ddpm::DdpmSchedule;
use nag_core::guidance::Guidance;
use nag_core::schedule::Schedule;
use nag_models::dit::{Dit, DitConfig, TimeInput};
use serde::{Deserialize, Serialize};

use crate::guided::GuidedDit;
use crate::oracle::{Oracle, OracleModel};
use crate::sampling::{
    self, DdimOptions, DdpmOptions, DiffusionModel, FixedVariance, NoiseSource, OdeMethod,
    OdeOptions, SdeOptions, SeededNormal, StepCallback, TimeOffsets,
};

/// Sampler family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SamplerKind {
    /// DDPM ancestral (DiT's sampler; DDPM models only).
    Ddpm,
    /// DDIM with η (DDPM models only).
    Ddim,
    /// SiT's reverse SDE, Euler–Maruyama with the Mean last step.
    Sde,
    /// Probability-flow ODE (Heun with `steps`, or dopri5 with `--steps 0`).
    Ode,
}

/// Parses `--variance` (clap's value parser, which names the flag and the value):
/// `large` (`β_t`, DiT's fixed choice) or `small` (`β̃_t`).
pub fn parse_variance(s: &str) -> Result<FixedVariance, GenerateError> {
    match s {
        "large" => Ok(FixedVariance::Large),
        "small" => Ok(FixedVariance::Small),
        _ => Err(GenerateError::Config(
            "expected small (the posterior β̃_t) or large (β_t)".into(),
        )),
    }
}

/// How to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleConfig {
    /// Sampler.
    pub sampler: SamplerKind,
    /// Steps (DDPM/DDIM: respacing of the 1000-step process; SDE/ODE: integration steps).
    pub steps: usize,
    /// DDIM η.
    pub eta: f64,
    /// Seed of the starting noise and the sampler's noise.
    pub seed: u64,
    /// The continuous path of an interpolant (SiT) model: linear, gvp or vp.
    pub path: String,
    /// DDPM/DDIM: clamp x̂0 to [−1, 1] at every step (the reference's `clip_denoised`: on for
    /// pixel data, off for latents as DiT samples them).
    pub clip_x0: bool,
    /// Batch chunks evaluated concurrently ([`GuidedDit::with_threads`]): the CPU's core
    /// count on a CPU, 1 on a GPU. Does not change the samples.
    pub threads: usize,
    /// DDPM: the fixed variance of ancestral steps for models without variance channels
    /// (DiT's choice is fixed-large, `β_t`; fixed-small is the posterior `β̃_t`).
    pub variance: FixedVariance,
}

impl SampleConfig {
    /// Whether x̂0 clipping suits a model with `in_channels` input channels: pixel data (1 or
    /// 3 channels, scaled to [−1, 1]) yes, SD-VAE latents (4 channels) no.
    pub fn clip_for_channels(in_channels: usize) -> bool {
        in_channels != 4
    }
}

/// Errors from [`generate`].
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// Impossible option.
    #[error("{0}")]
    Config(String),
    /// Model cannot do what was asked.
    #[error(transparent)]
    Model(#[from] nag_models::dit::ModelError),
    /// Sampler failure (bad option, non-finite state).
    #[error(transparent)]
    Sampling(#[from] sampling::SamplingError),
    /// nag-core rejected an argument.
    #[error(transparent)]
    Core(#[from] nag_core::Error),
    /// Loading weights failed.
    #[error(transparent)]
    Checkpoint(#[from] nag_models::state_dict::CheckpointError),
}

/// Loads a model saved by the trainer (`<run>/ema.safetensors` + `ema.json`) or by
/// `save_model_files`.
pub fn load_model<B: Backend>(path: &Path, device: &B::Device) -> Result<Dit<B>, GenerateError> {
    let (sd, config) = nag_models::checkpoint::load_model_files(path)?;
    let cfg: DitConfig = serde_json::from_str(&config).map_err(|e| {
        GenerateError::Config(format!(
            "{}: model config is not valid: {e}",
            path.display()
        ))
    })?;
    let model = cfg.init::<B>(device)?;
    let (model, _) = model.load_state_dict(&sd)?;
    Ok(model)
}

/// Something to sample: a trained DiT/SiT or the exact model of `gmm` data.
pub enum Sampled<'a, B: Backend> {
    /// A trained network.
    Network(&'a Dit<B>),
    /// A fine-tuned network guided against its pre-trained reference (Domain Guidance).
    WithReference {
        /// The fine-tuned network.
        model: &'a Dit<B>,
        /// The model it was fine-tuned from.
        reference: &'a Dit<B>,
    },
    /// The oracle, producing states of `shape` (`[C, H, W]`, the gmm data's) on `device`.
    Oracle {
        /// The exact model.
        oracle: &'a Oracle,
        /// `[C, H, W]` of one sample.
        shape: [usize; 3],
        /// Where the states live.
        device: B::Device,
    },
}

impl<B: Backend> Sampled<'_, B> {
    /// Samples `labels.len()` images with `guidance` (the one entry point of the analyses),
    /// all noise from one stream seeded with `cfg.seed`.
    pub fn generate(
        &self,
        labels: &[i64],
        guidance: Guidance,
        cfg: &SampleConfig,
        callback: StepCallback<'_, B>,
    ) -> Result<Tensor<B, 4>, GenerateError> {
        self.generate_with_noise(labels, guidance, cfg, SeededNormal::new(cfg.seed), callback)
    }

    /// [`Self::generate`] with the given noise source, e.g. [`SeededNormal::per_sample`] so
    /// that a sample's noise depends on its global index only, not on the batch it is in.
    pub fn generate_with_noise(
        &self,
        labels: &[i64],
        guidance: Guidance,
        cfg: &SampleConfig,
        noise: SeededNormal,
        callback: StepCallback<'_, B>,
    ) -> Result<Tensor<B, 4>, GenerateError> {
        match self {
            Self::Network(model) => {
                generate_with_noise(model, None, labels, guidance, cfg, noise, callback)
            }
            Self::WithReference { model, reference } => generate_with_noise(
                model,
                Some(reference),
                labels,
                guidance,
                cfg,
                noise,
                callback,
            ),
            Self::Oracle {
                oracle,
                shape,
                device,
            } => {
                if labels.is_empty() {
                    return Err(GenerateError::Config("--n must be at least 1".into()));
                }
                let mut model = OracleModel::new(oracle, labels, guidance)
                    .map_err(|e| GenerateError::Config(e.to_string()))?;
                let [c, h, w] = *shape;
                let ddpm = matches!(oracle.schedule(), Schedule::Ddpm(_));
                let full = [labels.len(), c, h, w];
                sample_with_noise(&mut model, full, device, ddpm, cfg, noise, callback)
            }
        }
    }
}

/// Samples `labels.len()` images from `model` with `guidance`.
pub fn generate<B: Backend>(
    model: &Dit<B>,
    labels: &[i64],
    guidance: Guidance,
    cfg: &SampleConfig,
    callback: StepCallback<'_, B>,
) -> Result<Tensor<B, 4>, GenerateError> {
    generate_with_noise(
        model,
        None,
        labels,
        guidance,
        cfg,
        SeededNormal::new(cfg.seed),
        callback,
    )
}

/// [`generate`] with the given noise source and, for Domain Guidance, the pre-trained
/// reference model ([`GuidedDit::with_reference`]).
pub fn generate_with_noise<B: Backend>(
    model: &Dit<B>,
    reference: Option<&Dit<B>>,
    labels: &[i64],
    guidance: Guidance,
    cfg: &SampleConfig,
    noise: SeededNormal,
    callback: StepCallback<'_, B>,
) -> Result<Tensor<B, 4>, GenerateError> {
    if labels.is_empty() {
        return Err(GenerateError::Config("--n must be at least 1".into()));
    }
    let mc = model.config();
    let guided = match reference {
        Some(reference) => GuidedDit::with_reference(model, reference, labels, guidance)?,
        None => GuidedDit::new(model, labels, guidance)?,
    };
    let mut guided = guided.with_threads(cfg.threads);
    let shape = [labels.len(), mc.in_channels, mc.input_size, mc.input_size];
    let ddpm_model = mc.time_input == TimeInput::DdpmIndex;
    sample_with_noise(
        &mut guided,
        shape,
        &model.device(),
        ddpm_model,
        cfg,
        noise,
        callback,
    )
}

/// Runs `cfg`'s sampler on any (already guided) `model` from the seed's starting noise of
/// `shape`: the one sampling entry point of trained models and the oracle. `ddpm_model`: the
/// model is a DDPM (DiT) model, sampled on DiT's table; otherwise a SiT model on `cfg.path`.
pub fn sample_with<B: Backend, M: DiffusionModel<B>>(
    model: &mut M,
    shape: [usize; 4],
    device: &B::Device,
    ddpm_model: bool,
    cfg: &SampleConfig,
    callback: StepCallback<'_, B>,
) -> Result<Tensor<B, 4>, GenerateError> {
    let noise = SeededNormal::new(cfg.seed);
    sample_with_noise(model, shape, device, ddpm_model, cfg, noise, callback)
}

/// [`sample_with`] drawing the starting state and every step's noise from `noise`.
pub fn sample_with_noise<B: Backend, M: DiffusionModel<B>>(
    model: &mut M,
    shape: [usize; 4],
    device: &B::Device,
    ddpm_model: bool,
    cfg: &SampleConfig,
    mut noise: SeededNormal,
    callback: StepCallback<'_, B>,
) -> Result<Tensor<B, 4>, GenerateError> {
    if cfg.steps == 0 && cfg.sampler != SamplerKind::Ode {
        return Err(GenerateError::Config(
            "--steps must be at least 1 (0 means adaptive, for --sampler ode only)".into(),
        ));
    }
    let guided = model;
    let x_t: Tensor<B, 4> = noise.normal(shape, device);
    let path = if ddpm_model {
        Schedule::from_name("ddpm-linear")?
    } else {
        Schedule::from_name(&cfg.path)?
    };
    let out = match cfg.sampler {
        SamplerKind::Ddpm | SamplerKind::Ddim if !ddpm_model => return Err(GenerateError::Config(
            "DDPM/DDIM samplers need a DDPM (DiT) model; use --sampler sde or ode for SiT models"
                .into(),
        )),
        SamplerKind::Ddpm => {
            let schedule = DdpmSchedule::dit().with_steps(cfg.steps)?;
            sampling::sample_ddpm(
                guided,
                &schedule,
                x_t,
                &mut noise,
                &DdpmOptions {
                    clip_x0: cfg.clip_x0,
                    fixed_variance: cfg.variance,
                    ..DdpmOptions::default()
                },
                callback,
            )?
        }
        SamplerKind::Ddim => {
            let schedule = DdpmSchedule::dit().with_steps(cfg.steps)?;
            let options = DdimOptions {
                eta: cfg.eta,
                clip_x0: cfg.clip_x0,
            };
            sampling::sample_ddim(guided, &schedule, x_t, &options, &mut noise, callback)?
        }
        SamplerKind::Sde => {
            let options = SdeOptions::default();
            sampling::sample_sde(
                guided, &path, x_t, cfg.steps, &options, &mut noise, callback,
            )?
        }
        SamplerKind::Ode => {
            let method = if cfg.steps == 0 {
                OdeMethod::Dopri5 {
                    atol: 1e-6,
                    rtol: 1e-3,
                }
            } else {
                OdeMethod::Heun
            };
            let options = OdeOptions {
                method,
                steps: cfg.steps.max(1),
                // ε-prediction (DiT) says nothing about the velocity at τ = 0: stop at SiT's
                // offset, as SiT does for non-velocity models.
                t_offsets: TimeOffsets::sit_ode(&path, guided.prediction()),
                ..OdeOptions::default()
            };
            sampling::sample_ode(guided, &path, x_t, &options, callback)?.x
        }
    };
    Ok(out)
}
