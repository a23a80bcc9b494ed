//! The estimator's training options ([`EstimatorTrainConfig`]) and what `estimator.json` holds
//! ([`EstimatorMeta`]).

use nag_core::schedule::Schedule;
use nag_models::estimator::EstimatorConfig;
use serde::{Deserialize, Serialize};

use crate::data::{GmmConfig, GmmDataset};

use super::{parse_schedule, EstimatorError};

/// Options of [`train_estimator`]; stored in `estimator.json` (inside [`EstimatorMeta`]), and
/// `cargo xtask estimator train`'s flags (clap, and `--config FILE.toml` by the same names).
///
/// The defaults train on the built-in 16-px `gmm` data in about two minutes on two CPU cores
/// (release build).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct EstimatorTrainConfig {
    /// Dataset: gmm, gmm32, shapes, shapes32, shapes-scattered, or a path (image folder,
    /// latents, IDX).
    #[arg(long, default_value_t = EstimatorTrainConfig::default().data)]
    pub data: String,
    /// Image size of generated datasets (gmm and shapes: 16 unless given).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Seed of the generated dataset content [default: --seed, as `cargo xtask train` does, so
    /// an estimator and a model trained with the same --seed see the same gmm mixture].
    #[arg(long)]
    pub data_seed: Option<u64>,
    /// Schedule of the diffusion model whose states will be measured: ddpm-linear,
    /// ddpm-cosine, linear, gvp, vp.
    #[arg(long, default_value_t = EstimatorTrainConfig::default().schedule)]
    pub schedule: String,
    /// Number of τ bins K.
    #[arg(long, default_value_t = EstimatorTrainConfig::default().bins)]
    pub bins: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = EstimatorTrainConfig::default().depth)]
    pub depth: usize,
    /// Token width D.
    #[arg(long, default_value_t = EstimatorTrainConfig::default().hidden)]
    pub hidden: usize,
    /// Attention heads (must divide --hidden).
    #[arg(long, default_value_t = EstimatorTrainConfig::default().heads)]
    pub heads: usize,
    /// Patch size (must divide the image size).
    #[arg(long, default_value_t = EstimatorTrainConfig::default().patch)]
    pub patch: usize,
    /// Condition on the class label: g_φ(τ | x, y).
    #[arg(long)]
    pub class_conditional: bool,
    /// Optimiser steps.
    #[arg(long, default_value_t = EstimatorTrainConfig::default().steps)]
    pub steps: u64,
    /// Batch size.
    #[arg(long, default_value_t = EstimatorTrainConfig::default().batch)]
    pub batch: usize,
    /// Peak AdamW learning rate (linear warm-up, then cosine decay to a tenth).
    #[arg(long, default_value_t = EstimatorTrainConfig::default().lr)]
    pub lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = EstimatorTrainConfig::default().warmup)]
    pub warmup: u64,
    /// Clip the gradient norm to this value.
    #[arg(skip = EstimatorTrainConfig::default().grad_clip)]
    pub grad_clip: Option<f32>,
    /// Uniform label smoothing ε in [0, 1) (0 keeps the posterior calibrated).
    #[arg(long, default_value_t = EstimatorTrainConfig::default().label_smoothing)]
    pub label_smoothing: f64,
    /// Seed of the initialisation, the batch order, the times and the noise.
    #[arg(long, default_value_t = EstimatorTrainConfig::default().seed)]
    pub seed: u64,
    /// Report progress every this many steps.
    #[arg(long, default_value_t = EstimatorTrainConfig::default().log_every)]
    pub log_every: u64,
    /// Items held out (the dataset's last ones, at most a tenth of it) for the final
    /// evaluation of mean |τ̂ − τ|.
    #[arg(long, default_value_t = EstimatorTrainConfig::default().eval_samples)]
    pub eval_samples: usize,
    /// Loader worker threads (0 = load on the training thread).
    #[arg(long, default_value_t = EstimatorTrainConfig::default().workers)]
    pub workers: usize,
}

impl Default for EstimatorTrainConfig {
    fn default() -> Self {
        Self {
            data: "gmm".into(),
            image_size: None,
            data_seed: None,
            schedule: "ddpm-linear".into(),
            bins: 50,
            depth: 2,
            hidden: 64,
            heads: 4,
            patch: 4,
            class_conditional: false,
            steps: 1500,
            batch: 64,
            lr: 2e-3,
            warmup: 50,
            grad_clip: Some(1.0),
            label_smoothing: 0.0,
            seed: 0,
            log_every: 10,
            eval_samples: 512,
            workers: 1,
        }
    }
}

impl EstimatorTrainConfig {
    /// Checks the options (the network shape is checked against the data in
    /// [`Self::model_config`]).
    pub fn validate(&self) -> Result<(), EstimatorError> {
        let bad = |m: String| Err(EstimatorError::Config(m));
        if self.steps == 0 {
            return bad("--steps must be at least 1".into());
        }
        if self.batch == 0 {
            return bad("--batch must be at least 1".into());
        }
        if self.bins < 2 {
            return bad(format!("--bins must be at least 2 (got {})", self.bins));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be > 0 (got {})", self.lr));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!(
                "--label-smoothing must be in [0, 1) (got {})",
                self.label_smoothing
            ));
        }
        if let Some(c) = self.grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return bad(format!("--grad-clip must be > 0 (got {c})"));
            }
        }
        if self.log_every == 0 {
            return bad("--log-every must be at least 1".into());
        }
        if self.eval_samples == 0 {
            return bad("--eval-samples must be at least 1".into());
        }
        parse_schedule(&self.schedule)?;
        Ok(())
    }

    /// The network config for a dataset of item shape `[C, H, W]` with `num_classes` classes.
    pub fn model_config(
        &self,
        [c, h, w]: [usize; 3],
        num_classes: usize,
    ) -> Result<EstimatorConfig, EstimatorError> {
        if h != w {
            return Err(EstimatorError::Config(format!(
                "dataset images are {h}×{w}; the estimator needs square inputs"
            )));
        }
        let classes = if self.class_conditional {
            if num_classes == 0 {
                return Err(EstimatorError::Config(
                    "--class-conditional needs a labelled dataset (it has no classes)".into(),
                ));
            }
            num_classes
        } else {
            0
        };
        let cfg = EstimatorConfig::new(
            h,
            self.patch,
            c,
            self.hidden,
            self.depth,
            self.heads,
            self.bins,
        )
        .with_num_classes(classes);
        cfg.validate()?;
        Ok(cfg)
    }

    /// The seed of generated dataset content.
    pub fn resolved_data_seed(&self) -> u64 {
        self.data_seed.unwrap_or(self.seed)
    }
}

/// What `estimator.json` holds: enough to rebuild the network, to know which schedule its τ
/// refers to and (for `gmm`) which mixture it was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimatorMeta {
    /// The network config.
    pub model: EstimatorConfig,
    /// The schedule name (as [`Schedule::from_name`]); τ is this schedule's clock.
    pub schedule: String,
    /// Number of τ bins `K` (equals `model.num_bins`).
    pub num_bins: usize,
    /// The dataset spec trained on.
    pub data: String,
    /// The seed of the generated dataset content.
    pub data_seed: u64,
    /// Item shape `[C, H, W]` of the data.
    pub data_shape: [usize; 3],
    /// Held-out items evaluated after training.
    pub held_out_samples: usize,
    /// `mean |τ̂ − τ|` on them (τ̂ the posterior mean).
    pub held_out_mean_abs_error: f64,
    /// The training options.
    pub train: EstimatorTrainConfig,
}

impl EstimatorMeta {
    /// The schedule τ refers to.
    pub fn schedule(&self) -> Result<Schedule, EstimatorError> {
        parse_schedule(&self.schedule)
    }

    /// Whether the estimator was trained on the built-in `gmm` data.
    pub fn is_gmm(&self) -> bool {
        self.data
            .strip_prefix("gmm")
            .is_some_and(|r| r.bytes().all(|b| b.is_ascii_digit()))
    }

    /// The built-in `gmm` dataset the estimator was trained on (same size and seed, hence the
    /// same mixture); an error for any other data.
    pub fn gmm_dataset(&self) -> Result<GmmDataset, EstimatorError> {
        if !self.is_gmm() {
            return Err(EstimatorError::Config(format!(
                "the estimator was trained on '{}', not on the built-in gmm data: the exact \
                 posterior is only known for gmm (train one with --data gmm)",
                self.data
            )));
        }
        Ok(GmmDataset::new(GmmConfig {
            size: self.data_shape[1],
            seed: self.data_seed,
            ..GmmConfig::default()
        })?)
    }
}
