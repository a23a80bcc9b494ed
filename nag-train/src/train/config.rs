//! [`TrainConfig`], everything a run needs (stored as its `config.json`): defaults, checks
//! against each other, and the model configuration it implies.

use std::path::PathBuf;

use nag_core::schedule::Schedule;
use nag_models::dit::{DitConfig, DitHints, TimeInput};
use nag_models::StateDict;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::data::{Dataset, OnError};
use crate::objective::{InterpolantTarget, LossWeight};

/// What the network is trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectiveKind {
    /// DiT: DDPM ε-prediction on the 1000-step linear schedule (hybrid loss with learn_sigma).
    #[default]
    Ddpm,
    /// SiT: Linear interpolant.
    Linear,
    /// SiT: GVP interpolant.
    Gvp,
    /// SiT: VP interpolant.
    Vp,
}

impl ObjectiveKind {
    /// The continuous schedule of an interpolant objective.
    pub fn schedule(self) -> Option<Schedule> {
        match self {
            Self::Ddpm => None,
            Self::Linear => Schedule::from_name("linear").ok(),
            Self::Gvp => Schedule::from_name("gvp").ok(),
            Self::Vp => Schedule::from_name("vp").ok(),
        }
    }
}

/// Everything a training run needs; stored in the run directory as `config.json`. It is also
/// `cargo xtask train`'s options (clap, and `--config FILE.toml` by the same names), with
/// [`TrainConfig::main_job`] as the defaults `--help` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Dataset: shapes, shapes32, shapes-scattered, gmm, or a path (image folder, latents,
    /// IDX).
    #[arg(long, default_value_t = TrainConfig::main_job().data)]
    pub data: String,
    /// Model preset: tiny or small (CPU sizes, patch 2; tiny/4 for patch 4), SiT-tiny,
    /// SiT-small, or {DiT,SiT}-{S,B,L,XL}/{2,4,8} (e.g. DiT-XL/2).
    #[arg(long, default_value_t = TrainConfig::main_job().model)]
    pub model: String,
    /// Objective: ddpm (DiT), or linear, gvp or vp (SiT's interpolants).
    #[arg(long, value_enum, ignore_case = true, hide_possible_values = true, default_value_t = TrainConfig::main_job().objective)]
    pub objective: ObjectiveKind,
    /// What the network predicts, for the interpolant objectives (linear, gvp, vp) only:
    /// velocity, noise or score (ddpm predicts ε, plus Σ unless --no-learn-sigma).
    #[arg(long, value_enum, ignore_case = true, hide_possible_values = true, default_value_t = TrainConfig::main_job().prediction)]
    pub prediction: InterpolantTarget,
    /// Loss weighting, for the interpolant objectives (linear, gvp, vp) only: none, velocity
    /// or likelihood.
    #[arg(long, value_enum, ignore_case = true, hide_possible_values = true, default_value_t = TrainConfig::main_job().loss_weight)]
    pub loss_weight: LossWeight,
    /// Learned variance (DDPM only; interpolants never learn σ).
    #[arg(
        long = "no-learn-sigma",
        action = clap::ArgAction::SetFalse,
        help = "Fixed (not learned) variance, for the ddpm objective only"
    )]
    pub learn_sigma: bool,
    /// Optimiser steps.
    #[arg(long, default_value_t = TrainConfig::main_job().steps)]
    pub steps: u64,
    /// Batch size (global: all micro-batches and replicas together).
    #[arg(long, default_value_t = TrainConfig::main_job().batch)]
    pub batch: usize,
    /// Gradient accumulation: each optimiser step averages this many micro-batches of
    /// --batch / --grad-accum samples (must divide --batch).
    #[arg(long, default_value_t = TrainConfig::main_job().grad_accum)]
    pub grad_accum: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = TrainConfig::main_job().lr)]
    pub lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = TrainConfig::main_job().weight_decay)]
    pub weight_decay: f64,
    /// Learning-rate warm-up steps (linear; 0 = none).
    #[arg(long, default_value_t = TrainConfig::main_job().warmup)]
    pub warmup: u64,
    /// Clip the gradient norm to this value.
    // The default is `main_job`'s, as text for clap; xtask's tests hold the two equal.
    #[arg(long, default_value = "1")]
    pub grad_clip: Option<f32>,
    /// EMA decay.
    #[arg(long, default_value_t = TrainConfig::main_job().ema_decay)]
    pub ema_decay: f64,
    /// EMA warm-up `min(d, (1+k)/(10+k))` (for short runs).
    #[arg(skip = TrainConfig::main_job().ema_warmup)]
    pub ema_warmup: bool,
    /// Noise-condition dropout probability p_t.
    #[arg(long, default_value_t = TrainConfig::main_job().noise_dropout)]
    pub noise_dropout: f64,
    /// Label dropout probability p_c.
    #[arg(long, default_value_t = TrainConfig::main_job().class_dropout)]
    pub class_dropout: f64,
    /// Train only noise-dropped samples (NAG fine-tuning).
    #[arg(long)]
    pub finetune_uncond_only: bool,
    /// Seed of everything random in the run.
    #[arg(long, default_value_t = TrainConfig::main_job().seed)]
    pub seed: u64,
    /// Checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = TrainConfig::main_job().checkpoint_every)]
    pub checkpoint_every: u64,
    /// Log the loss every N steps.
    #[arg(long, default_value_t = TrainConfig::main_job().log_every)]
    pub log_every: u64,
    /// Image size of generated datasets.
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Unreadable files in a dataset folder: skip (count them, warn once) or fail (stop with
    /// an error naming the file).
    #[arg(long, value_enum, ignore_case = true, hide_possible_values = true, value_name = "skip|fail", default_value_t = TrainConfig::main_job().on_bad_file)]
    pub on_bad_file: OnError,
    /// Data loader worker threads.
    #[arg(long, default_value_t = TrainConfig::main_job().workers)]
    pub workers: usize,
    /// Micro-batches (see `grad_accum`) computed at once, each on its own thread with its own
    /// autodiff graph. Execution only: the gradients are summed in micro-batch order, so the
    /// weights are bit-identical for any value. On the CPU backends one training step uses
    /// about one core, so `grad_accum = threads = cores` is the fast setting there. (The CLI's
    /// `--threads` defaults to the device's cores.)
    #[arg(skip = TrainConfig::main_job().threads)]
    pub threads: usize,
    /// Initial weights to fine-tune (.pt / .safetensors, or a run folder's EMA), e.g.
    /// DiT-XL-2-256x256.pt: the network's shape and classes come from the file (--model is
    /// then ignored).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// With --init: attention heads, when the file's hidden size is not a standard one (DiT's
    /// sizes 384/768/1024/1152 imply 6/12/16/16).
    #[arg(long, requires = "init")]
    pub init_heads: Option<usize>,
    /// With --init: fine-tune onto the data's own classes (a fresh label table of K + 1 rows,
    /// drawn N(0, 0.02) from the run's seed as at initialisation, the rest of the network
    /// loaded). Without it the class counts must match.
    #[arg(long, requires = "init")]
    pub new_classes: bool,
    /// Keep this many of the newest checkpoints (at least 1; 2 leaves a fallback if the newest
    /// is damaged).
    #[arg(long, default_value_t = TrainConfig::main_job().keep_checkpoints)]
    pub keep_checkpoints: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: "shapes".into(),
            model: "tiny".into(),
            objective: ObjectiveKind::Ddpm,
            prediction: InterpolantTarget::Velocity,
            loss_weight: LossWeight::None,
            learn_sigma: true,
            steps: 2000,
            batch: 32,
            grad_accum: 1,
            lr: 1e-4,
            weight_decay: 0.0,
            warmup: 0,
            grad_clip: None,
            ema_decay: 0.9999,
            ema_warmup: true,
            noise_dropout: 0.1,
            class_dropout: 0.1,
            finetune_uncond_only: false,
            seed: 0,
            checkpoint_every: 500,
            log_every: 10,
            image_size: None,
            on_bad_file: OnError::Skip,
            workers: 2,
            threads: 1,
            init: None,
            init_heads: None,
            new_classes: false,
            keep_checkpoints: 2,
        }
    }
}

impl TrainConfig {
    /// `cargo xtask train`'s defaults, the README's main job: a `tiny` DiT on 16-px `shapes`,
    /// sized to finish in a few minutes on two CPU cores. ([`Default`] is the reference's
    /// recipe instead: AdamW 1e-4, EMA 0.9999, no warm-up or clipping.)
    pub fn main_job() -> Self {
        Self {
            data: "shapes".into(),
            model: "tiny".into(),
            steps: 1500,
            batch: 32,
            // Two micro-batches of 16, computed on two threads (`--threads`) on a CPU.
            grad_accum: 2,
            // At 5e-4 the `tiny` model has barely begun to use the label after 1500 steps (its
            // ε-error with the true label is within 7 % of the null label's at k = 300); at 2e-3
            // it is under half (PyTorch cross-check, docs/torch_shapes_check.py).
            lr: 2e-3,
            warmup: 100,
            grad_clip: Some(1.0),
            ema_decay: 0.999,
            checkpoint_every: 500,
            log_every: 10,
            ..Self::default()
        }
    }

    /// Checks the options against each other.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.steps == 0 {
            return bad("--steps must be at least 1".into());
        }
        if self.batch == 0 {
            return bad("--batch must be at least 1".into());
        }
        if self.grad_accum == 0 || !self.batch.is_multiple_of(self.grad_accum) {
            return bad(format!(
                "--grad-accum {} must divide --batch {}",
                self.grad_accum, self.batch
            ));
        }
        if self.threads == 0 {
            return bad("--threads must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be > 0 (got {})", self.lr));
        }
        for (name, p) in [
            ("--noise-dropout", self.noise_dropout),
            ("--class-dropout", self.class_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("{name} must be in [0, 1) (got {p})"));
            }
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad(format!(
                "--ema-decay must be in [0, 1) (got {})",
                self.ema_decay
            ));
        }
        if self.finetune_uncond_only && self.noise_dropout == 0.0 {
            return bad("--finetune-uncond-only trains the null-t branch; it needs the model's null-timestep vector (do not combine with --noise-dropout 0)".into());
        }
        if self.checkpoint_every == 0 || self.log_every == 0 {
            return bad("--checkpoint-every and --log-every must be at least 1".into());
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "--weight-decay must be a finite number ≥ 0 (got {})",
                self.weight_decay
            ));
        }
        if let Some(c) = self.grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return bad(format!("--grad-clip must be a finite number > 0 (got {c})"));
            }
        }
        if self.keep_checkpoints == 0 {
            return bad("--keep-checkpoints must be at least 1".into());
        }
        Ok(())
    }

    /// The options a `--resume` run `new` gives differently from this stored run, as
    /// `--flag (run: stored, now: new)`, in the config's field order. What may change on resume
    /// (the length, how the work is spread over threads and workers, how many checkpoints are
    /// kept) is not compared.
    pub fn resume_conflicts(&self, new: &TrainConfig) -> Vec<String> {
        let mut new = new.clone();
        new.steps = self.steps;
        new.threads = self.threads;
        new.workers = self.workers;
        new.keep_checkpoints = self.keep_checkpoints;
        let (Ok(serde_json::Value::Object(old)), Ok(serde_json::Value::Object(new))) =
            (serde_json::to_value(self), serde_json::to_value(&new))
        else {
            return vec!["(the options could not be compared)".into()];
        };
        let show = |v: Option<&serde_json::Value>| match v {
            None | Some(serde_json::Value::Null) => "none".to_string(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        };
        old.iter()
            .filter(|(key, value)| new.get(*key) != Some(*value))
            .map(|(key, value)| {
                let flag = match key.as_str() {
                    "learn_sigma" => "--no-learn-sigma".to_string(),
                    k => format!("--{}", k.replace('_', "-")),
                };
                format!(
                    "{flag} (run: {}, now: {})",
                    show(Some(value)),
                    show(new.get(key))
                )
            })
            .collect()
    }

    /// The network config for this run and dataset. Fine-tuning (`init` = the state dict of
    /// `--init`) takes the architecture from the file (hidden size, depth, classes: an
    /// official DiT-XL/2 keeps its 1000 classes whatever labels the data uses) and checks the
    /// data fits it; otherwise the `--model` preset is sized to the data.
    pub fn model_config(
        &self,
        dataset: &dyn Dataset,
        init: Option<&StateDict>,
    ) -> Result<DitConfig, TrainError> {
        let [c, h, w] = dataset.shape();
        if h != w {
            return Err(TrainError::Config(format!(
                "dataset images are {h}×{w}; the DiT needs square inputs"
            )));
        }
        let mut cfg = match init {
            None => DitConfig::preset(&self.model, h, c, dataset.num_classes())?,
            Some(sd) => {
                let hints = DitHints {
                    class_dropout_prob: Some(self.class_dropout.max(f64::MIN_POSITIVE)),
                    num_heads: self.init_heads,
                    ..DitHints::default()
                };
                let cfg = DitConfig::infer_from_state_dict(sd, &hints)?;
                if (cfg.in_channels, cfg.input_size) != (c, h) {
                    return Err(TrainError::Config(format!(
                        "--init is a model of {}×{}×{} inputs but the data is {c}×{h}×{w} (a \
                         256-px DiT takes 4×32×32 latents of 256-px images)",
                        cfg.in_channels, cfg.input_size, cfg.input_size
                    )));
                }
                let mut cfg = cfg;
                let k = dataset.num_classes();
                if self.new_classes {
                    cfg.num_classes = k;
                } else if k != cfg.num_classes {
                    return Err(TrainError::Config(format!(
                        "the data has {k} classes but --init has {}: pass --new-classes to \
                         fine-tune onto the data's {k} classes (a fresh label table, the rest of \
                         the network loaded)",
                        cfg.num_classes
                    )));
                }
                cfg
            }
        };
        let num_classes = cfg.num_classes;
        let ddpm = self.objective == ObjectiveKind::Ddpm;
        cfg.learn_sigma = ddpm && self.learn_sigma;
        cfg.time_input = if ddpm {
            TimeInput::DdpmIndex
        } else {
            TimeInput::SitClock
        };
        cfg.class_dropout_prob = if num_classes > 0 {
            self.class_dropout.max(f64::MIN_POSITIVE)
        } else {
            0.0
        };
        cfg.null_timestep = true;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Replaces the label table of `sd` by a fresh one for `config`'s classes (`N(0, 0.02)`, the
/// reference's init, from `seed`), or removes it for an unconditional config.
pub(super) fn rebuild_label_table(sd: &mut StateDict, config: &DitConfig, seed: u64) {
    use rand::SeedableRng;
    const KEY: &str = "y_embedder.embedding_table.weight";
    sd.tensors.remove(KEY);
    let rows = config.label_table_rows();
    if rows == 0 {
        return;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x6e65_775f_6c61_6265);
    let values: Vec<f32> = (0..rows * config.hidden_size)
        .map(|_| 0.02 * rng.sample::<f32, _>(rand_distr::StandardNormal))
        .collect();
    sd.insert(KEY, vec![rows, config.hidden_size], values);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_conflicts_name_each_changed_option_with_both_values() {
        let run = TrainConfig::default();
        let mut now = run.clone();
        // What may change on resume is not a conflict.
        now.steps += 10;
        now.threads += 1;
        now.workers += 1;
        now.keep_checkpoints += 1;
        assert!(run.resume_conflicts(&now).is_empty());
        now.lr = 0.5;
        now.data = "gmm".into();
        now.learn_sigma = !run.learn_sigma;
        now.grad_clip = Some(2.0);
        let c = run.resume_conflicts(&now);
        assert_eq!(c.len(), 4, "{c:?}");
        assert!(
            c.contains(&format!("--data (run: {}, now: gmm)", run.data)),
            "{c:?}"
        );
        assert!(
            c.contains(&format!("--lr (run: {}, now: 0.5)", run.lr)),
            "{c:?}"
        );
        assert!(
            c.iter().any(|l| l.starts_with("--no-learn-sigma (run: ")),
            "{c:?}"
        );
        assert!(
            c.iter()
                .any(|l| l.starts_with("--grad-clip (run: ") && l.ends_with("now: 2.0)")),
            "{c:?}"
        );
    }
}
