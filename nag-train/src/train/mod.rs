//! The noise-dropout trainer.
//!
//! Each step draws, per sample and independently: a time (DDPM index uniform over the 1000
//! steps, or τ uniform for interpolants), the noise, a noise-condition dropout flag (p_t,
//! default 0.1: the learned null-t embedding replaces the timestep embedding) and a label
//! dropout flag (p_c, default 0.1). All randomness of step k comes from `stream(seed, k)`, so a
//! run resumed at step k draws exactly what an uninterrupted run draws: same seed, same weights,
//! bit for bit.
//!
//! Run directory layout:
//! - `config.json`: the resolved [`TrainConfig`];
//! - `checkpoints/step-XXXXXXX/{model,ema,optim}.mpk, state.json, manifest.json` (burn
//!   records, full precision; the manifest of sizes and SHA-256 written last, see [`run_dir`])
//!   and `latest` (the newest complete checkpoint, written after it); the `keep_checkpoints`
//!   newest are kept, and a checkpoint is written only when every weight is finite;
//! - `.lock`: held while a process trains into the folder;
//! - `ema.safetensors` + `ema.json`: the EMA weights with the reference key names (what
//!   `sample` reads);
//! - `loss.csv` and `loss.png`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use nag_core::ddpm::DdpmSchedule;
use nag_core::schedule::Schedule;
use nag_models::dit::{Dit, DitConfig, DitHints, TimeInput};
use nag_models::StateDict;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::data::{open_dataset, stream_rng, Batch, DataOptions, Dataset, OnError};
use crate::ema;
use crate::objective::{self, InterpolantTarget, LossWeight};
use crate::parallel::{self, Cluster, Link, ParallelError, Replicas};
use crate::run_dir::{self, RunLock, Skipped};

mod replica;

/// What the network is trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
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
    /// Parses `ddpm`, `linear`, `gvp` or `vp`.
    pub fn parse(s: &str) -> Result<Self, TrainError> {
        match s.to_ascii_lowercase().as_str() {
            "ddpm" => Ok(Self::Ddpm),
            "linear" => Ok(Self::Linear),
            "gvp" => Ok(Self::Gvp),
            "vp" => Ok(Self::Vp),
            _ => Err(TrainError::Config(format!(
                "unknown objective '{s}': expected ddpm, linear, gvp or vp"
            ))),
        }
    }

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

/// Everything a training run needs; stored in the run directory as `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Dataset spec (`shapes`, `gmm`, or a path; see [`open_dataset`]).
    pub data: String,
    /// Model preset (`tiny`, `small`, `DiT-S/2`, …).
    pub model: String,
    /// Objective.
    pub objective: ObjectiveKind,
    /// Interpolant target (interpolant objectives only).
    pub prediction: InterpolantTarget,
    /// Interpolant loss weighting.
    pub loss_weight: LossWeight,
    /// Learned variance (DDPM only; interpolants never learn σ).
    pub learn_sigma: bool,
    /// Optimiser steps.
    pub steps: u64,
    /// Global batch size.
    pub batch: usize,
    /// Gradient accumulation: each optimiser step averages this many micro-batches of
    /// `batch / grad_accum` samples.
    pub grad_accum: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Linear warm-up of the learning rate over this many steps (0 = none).
    pub warmup: u64,
    /// Clip the gradient norm to this value.
    pub grad_clip: Option<f32>,
    /// EMA decay.
    pub ema_decay: f64,
    /// EMA warm-up `min(d, (1+k)/(10+k))` (for short runs).
    pub ema_warmup: bool,
    /// Noise-condition dropout probability p_t.
    pub noise_dropout: f64,
    /// Label dropout probability p_c.
    pub class_dropout: f64,
    /// Train only on noise-dropped samples (NAG fine-tuning variant).
    pub finetune_uncond_only: bool,
    /// Seed of everything random in the run.
    pub seed: u64,
    /// Checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// Log the loss every this many steps.
    pub log_every: u64,
    /// Image size for generated datasets.
    pub image_size: Option<usize>,
    /// Unreadable files in a user dataset: skip and count them (a warning on the first), or
    /// stop with an error naming the file.
    pub on_bad_file: OnError,
    /// Loader worker threads.
    pub workers: usize,
    /// Micro-batches (see `grad_accum`) computed at once, each on its own thread with its own
    /// autodiff graph. Execution only: the gradients are summed in micro-batch order, so the
    /// weights are bit-identical for any value. On the CPU backends one training step uses
    /// about one core, so `grad_accum = threads = cores` is the fast setting there.
    pub threads: usize,
    /// Initial weights (`.pt`, `.safetensors`, or a run directory's EMA), e.g. an official
    /// checkpoint to fine-tune for NAG.
    pub init: Option<PathBuf>,
    /// Attention heads of the `init` network when its hidden size is not a standard one
    /// (DiT's sizes 384/768/1024/1152 imply 6/12/16/16).
    pub init_heads: Option<usize>,
    /// Fine-tune `init` onto the data's own label set: the label table is rebuilt with
    /// `K + 1` rows (`K` = the data's classes, last = null), drawn `N(0, 0.02)` from the run's
    /// seed as at initialisation; everything else is loaded. Without it the data's class count
    /// must equal the file's.
    pub new_classes: bool,
    /// How many of the newest checkpoints to keep (at least 1; 2 leaves one to fall back on
    /// if the newest is damaged).
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

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// An impossible option.
    #[error("invalid training option: {0}")]
    Config(String),
    /// Dataset problem.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// Model problem.
    #[error(transparent)]
    Model(#[from] nag_models::dit::ModelError),
    /// Checkpoint problem.
    #[error(transparent)]
    Checkpoint(#[from] nag_models::state_dict::CheckpointError),
    /// The loss became NaN or infinite.
    #[error("loss is {loss} at step {step}: training stopped; the last good checkpoint ({last}) is kept. Lower --lr, set --grad-clip, or check the data")]
    NonFinite {
        /// Step.
        step: u64,
        /// The loss value.
        loss: f32,
        /// The last good checkpoint.
        last: String,
    },
    /// The weights became NaN or infinite (found before writing a checkpoint).
    #[error("the {which} weights are not finite at step {step}: training stopped without writing that checkpoint; the last good checkpoint ({last}) is kept. Lower --lr, set --grad-clip, or check --weight-decay and the data")]
    NonFiniteWeights {
        /// Step.
        step: u64,
        /// "model" or "EMA".
        which: &'static str,
        /// The last good checkpoint.
        last: String,
    },
    /// Stopped on request (Ctrl-C / SIGTERM) at a step boundary, after writing a checkpoint.
    #[error("stopped on request after step {step}; checkpoint {checkpoint} written. Continue with the same command and --resume")]
    Interrupted {
        /// The last completed step.
        step: u64,
        /// The checkpoint written.
        checkpoint: String,
    },
    /// No checkpoint of the run can be resumed from.
    #[error("--resume: {dir} has no usable checkpoint{detail}")]
    NoCheckpoint {
        /// The run folder.
        dir: PathBuf,
        /// Each checkpoint tried and why it failed.
        detail: String,
    },
    /// The run folder (lock, manifests).
    #[error(transparent)]
    RunDir(#[from] run_dir::RunDirError),
    /// I/O on a named path.
    #[error("{path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Data-parallel replicas (layout, ports, a peer that stopped or never answered).
    #[error(transparent)]
    Parallel(#[from] ParallelError),
    /// A burn record could not be read or written.
    #[error("checkpoint record {path}: {reason}")]
    Record {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

fn io<T>(path: &Path, r: std::io::Result<T>) -> Result<T, TrainError> {
    r.map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` atomically (temp file in the same folder, fsync, rename; nothing
/// left behind on failure), errors naming `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    io(
        path,
        nag_models::checkpoint::write_atomic(path, |w| w.write_all(bytes)),
    )
}

/// Set by [`request_stop`]: the trainer stops at the next step boundary, writes a checkpoint
/// and returns [`TrainError::Interrupted`].
static STOP: AtomicBool = AtomicBool::new(false);

/// Asks every running [`train`] of this process to stop at its next step boundary (e.g. from a
/// Ctrl-C / SIGTERM handler). Safe to call from any thread.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// What a run reports as it goes.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// Steps done and the mean loss (every `log_every` steps).
    Progress(Progress),
    /// Resuming from `from` (at `step`); newer checkpoints that were damaged or incomplete are
    /// listed with the reason they were passed over.
    Resumed {
        /// The checkpoint used.
        from: PathBuf,
        /// Its step.
        step: u64,
        /// Newer checkpoints passed over.
        skipped: Vec<Skipped>,
    },
    /// `--init` had no null-timestep vector: it starts freshly initialised.
    NullTimestepInitialised(PathBuf),
    /// Data-parallel runs, just before every `Progress`: the all-reduce of the last steps.
    Communication(Communication),
}

/// What the replicas exchanged (see [`TrainEvent::Communication`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Communication {
    /// Replicas in the run.
    pub replicas: usize,
    /// Bytes each replica all-reduces per step (one bucket: gradients and control slots).
    pub bytes_per_step: u64,
    /// Mean seconds per step spent in the all-reduce (waiting for the slowest replica
    /// included) since the last report.
    pub seconds_per_step: f64,
}

impl TrainConfig {
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
fn rebuild_label_table(sd: &mut StateDict, config: &DitConfig, seed: u64) {
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

/// Whether `dir` holds a finished run of `cfg` (its `config.json` equal up to threads and
/// workers, which do not change the weights; the latest checkpoint at `cfg.steps`; the EMA
/// weights written): experiments reuse such a run instead of training again.
pub fn finished_run(dir: &Path, cfg: &TrainConfig) -> bool {
    let Ok(text) = fs::read_to_string(dir.join("config.json")) else {
        return false;
    };
    let Ok(mut stored) = serde_json::from_str::<TrainConfig>(&text) else {
        return false;
    };
    stored.threads = cfg.threads;
    stored.workers = cfg.workers;
    stored.keep_checkpoints = cfg.keep_checkpoints;
    let done = fs::read_to_string(dir.join("checkpoints").join("latest"))
        .map(|l| l.trim() == format!("step-{:07}", cfg.steps))
        .unwrap_or(false);
    stored == *cfg && done && dir.join("ema.safetensors").is_file()
}

/// Progress reported to the caller every `log_every` steps.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Completed steps.
    pub step: u64,
    /// Total steps.
    pub total: u64,
    /// Mean loss since the last report.
    pub loss: f64,
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Steps completed.
    pub steps: u64,
    /// Final logged loss.
    pub final_loss: f64,
    /// First logged loss.
    pub first_loss: f64,
    /// Unreadable dataset files skipped ([`OnError::Skip`]).
    pub skipped_files: usize,
}

/// Training state stored next to the records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    step: u64,
    ema_updates: u64,
    seed: u64,
}

use run_dir::checkpoint_dir;

/// Whether every value of every float parameter of `model` is finite.
fn all_finite<B: Backend>(model: &Dit<B>) -> bool {
    struct Finite(bool);
    impl<B: Backend> ModuleVisitor<B> for Finite {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.0 {
                let v = param.val();
                let any = |t: Tensor<B, 1, Bool>| t.into_data().iter::<bool>().any(|b| b);
                self.0 = !(any(v.clone().is_nan().any()) || any(v.is_inf().any()));
            }
        }
    }
    let mut f = Finite(true);
    model.visit(&mut f);
    f.0
}

const DOMAIN_STEP: u64 = 0x5354_4550; // "STEP"

/// Per-step random draws: times, dropout masks and noise, from `stream(seed, step)`.
struct Draws {
    ddpm_k: Vec<usize>,
    tau: Vec<f64>,
    null_t: Vec<bool>,
    null_class: Vec<bool>,
    noise: Vec<f32>,
}

fn draw(cfg: &TrainConfig, step: u64, micro: usize, shape: [usize; 4], ddpm_len: usize) -> Draws {
    let mut rng = stream_rng(cfg.seed, DOMAIN_STEP, step * 1024 + micro as u64);
    let n = shape[0];
    let ddpm_k = (0..n).map(|_| rng.random_range(0..ddpm_len)).collect();
    let tau = (0..n).map(|_| 1.0 - rng.random::<f64>()).collect(); // τ ∈ (0, 1]
    let null_t = (0..n)
        .map(|_| cfg.finetune_uncond_only || rng.random::<f64>() < cfg.noise_dropout)
        .collect();
    let null_class = (0..n)
        .map(|_| rng.random::<f64>() < cfg.class_dropout)
        .collect();
    let len: usize = shape.iter().product();
    let mut noise = Vec::with_capacity(len);
    while noise.len() < len {
        // Box–Muller, both outputs.
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        noise.push((r * th.cos()) as f32);
        if noise.len() < len {
            noise.push((r * th.sin()) as f32);
        }
    }
    Draws {
        ddpm_k,
        tau,
        null_t,
        null_class,
        noise,
    }
}

/// The loss of one micro-batch (on the autodiff backend).
fn micro_loss<B: AutodiffBackend>(
    cfg: &TrainConfig,
    model: &Dit<B>,
    ddpm: &DdpmSchedule,
    interp: Option<&Schedule>,
    x0: Tensor<B, 4>,
    y: Tensor<B, 1, Int>,
    d: &Draws,
) -> Tensor<B, 1> {
    let device = x0.device();
    let shape = x0.dims();
    let n = shape[0];
    let noise = Tensor::<B, 4>::from_data(TensorData::new(d.noise.clone(), shape), &device);
    let null_t = Tensor::<B, 1, Bool>::from_data(TensorData::new(d.null_t.clone(), [n]), &device);
    let null_class =
        Tensor::<B, 1, Bool>::from_data(TensorData::new(d.null_class.clone(), [n]), &device);
    let null_class = (model.config().num_classes > 0).then_some(null_class);
    match interp {
        None => {
            let x_t = objective::ddpm_q_sample(ddpm, x0.clone(), &d.ddpm_k, noise.clone());
            let t: Vec<f32> = d
                .ddpm_k
                .iter()
                .map(|&k| ddpm.model_time(k) as f32)
                .collect();
            let t = Tensor::<B, 1>::from_data(TensorData::new(t, [n]), &device);
            let out = model.forward(x_t.clone(), t, y, Some(null_t), null_class);
            objective::ddpm_loss(ddpm, x0, x_t, &d.ddpm_k, noise, out).mean()
        }
        Some(schedule) => {
            use nag_core::schedule::NoiseSchedule;
            let a: Vec<f64> = d.tau.iter().map(|&t| schedule.alpha(t)).collect();
            let s: Vec<f64> = d.tau.iter().map(|&t| schedule.sigma(t)).collect();
            let x_t = x0.clone() * objective::per_sample::<B>(&a, &device)
                + noise.clone() * objective::per_sample::<B>(&s, &device);
            // SiT is fed its own clock t = 1 − τ.
            let t: Vec<f32> = d
                .tau
                .iter()
                .map(|&tau| nag_core::clock::sit_from_tau(tau) as f32)
                .collect();
            let t = Tensor::<B, 1>::from_data(TensorData::new(t, [n]), &device);
            let out = model.forward(x_t, t, y, Some(null_t), null_class);
            objective::interpolant_loss(
                schedule,
                x0,
                noise,
                &d.tau,
                out,
                cfg.prediction,
                cfg.loss_weight,
            )
            .mean()
        }
    }
}

type Rec = NamedMpkFileRecorder<FullPrecisionSettings>;

/// Writes checkpoint `state.step` as `step-N.partial/`, seals it with its manifest, renames it
/// into place and points `checkpoints/latest` at it. A failure leaves no `step-N/` behind (the
/// partial folder is removed) and the previous checkpoints untouched.
fn write_checkpoint<B: AutodiffBackend, O: Optimizer<Dit<B>, B>>(
    run_dir: &Path,
    model: &Dit<B>,
    ema_model: &Dit<B::InnerBackend>,
    optim: &O,
    state: &State,
) -> Result<PathBuf, TrainError> {
    let dir = checkpoint_dir(run_dir, state.step);
    let tmp = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&tmp);
    let written = (|| {
        io(&tmp, fs::create_dir_all(&tmp))?;
        save_record(model.clone(), &tmp.join("model"))?;
        save_record(ema_model.clone(), &tmp.join("ema"))?;
        Rec::new()
            .record(optim.to_record(), tmp.join("optim"))
            .map_err(|e| record_write_error(&tmp.join("optim"), e.to_string()))?;
        write_atomic(
            &tmp.join("state.json"),
            &serde_json::to_vec_pretty(state).expect("state serialises"),
        )?;
        run_dir::seal(&tmp)?;
        Ok::<(), TrainError>(())
    })();
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let _ = fs::remove_dir_all(&dir);
    io(&dir, fs::rename(&tmp, &dir))?;
    write_atomic(
        &run_dir.join("checkpoints").join("latest"),
        dir.file_name()
            .expect("a step folder")
            .to_string_lossy()
            .as_bytes(),
    )?;
    Ok(dir)
}

/// The trainer's AdamW state, as stored in a checkpoint's `optim` record.
type OptimRecord<B> =
    <burn::optim::adaptor::OptimizerAdaptor<burn::optim::AdamW, Dit<B>, B> as Optimizer<
        Dit<B>,
        B,
    >>::Record;

/// What a checkpoint holds, loaded.
struct Checkpoint<B: AutodiffBackend> {
    model: Dit<B>,
    ema: Dit<B::InnerBackend>,
    optim: OptimRecord<B>,
    state: State,
}

/// A checkpoint's model, EMA and optimiser records and state, read without touching the
/// live ones (so a damaged checkpoint can be passed over).
fn load_checkpoint<B: AutodiffBackend>(
    model: &Dit<B>,
    ema_model: &Dit<B::InnerBackend>,
    dir: &Path,
    device: &B::Device,
) -> Result<Checkpoint<B>, TrainError> {
    let state_path = dir.join("state.json");
    let state: State = serde_json::from_slice(&io(&state_path, fs::read(&state_path))?)
        .map_err(|e| TrainError::Config(format!("{}: {e}", state_path.display())))?;
    let m = load_record(model.clone(), &dir.join("model"), device)?;
    let e = load_record(ema_model.clone(), &dir.join("ema"), device)?;
    let o = Rec::new()
        .load(dir.join("optim"), device)
        .map_err(|e| TrainError::Record {
            path: dir.join("optim"),
            reason: e.to_string(),
        })?;
    Ok(Checkpoint {
        model: m,
        ema: e,
        optim: o,
        state,
    })
}

fn save_record<B: Backend, M: Module<B>>(module: M, path: &Path) -> Result<(), TrainError> {
    Rec::new()
        .record(module.into_record(), path.to_path_buf())
        .map_err(|e| record_write_error(path, e.to_string()))
}

/// burn's recorder reports a failed write as an opaque encoder message; the operating
/// system's reason (disk full, file-size limit, read-only folder) comes from one more byte
/// appended to the file it was writing.
fn record_write_error(path: &Path, reason: String) -> TrainError {
    let file = path.with_extension("mpk");
    let probe = fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .and_then(|mut f| f.write_all(&[0]).and_then(|()| f.sync_all()));
    match probe {
        Err(source) => TrainError::Io { path: file, source },
        Ok(()) => TrainError::Record {
            path: path.to_path_buf(),
            reason,
        },
    }
}

fn load_record<B: Backend, M: Module<B>>(
    module: M,
    path: &Path,
    device: &B::Device,
) -> Result<M, TrainError> {
    let record = Rec::new()
        .load(path.to_path_buf(), device)
        .map_err(|e| TrainError::Record {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(module.load_record(record))
}

/// Exports EMA weights as `ema.safetensors` + `ema.json` (reference key names + `t_embedder.null`).
pub fn export_ema<B: Backend>(ema: &Dit<B>, run_dir: &Path) -> Result<(), TrainError> {
    let sd = ema.to_state_dict();
    let config = serde_json::to_string_pretty(ema.config())
        .map_err(|e| TrainError::Config(e.to_string()))?;
    nag_models::checkpoint::save_model_files(&sd, &config, &run_dir.join("ema.safetensors"))?;
    Ok(())
}

/// Trains per `cfg` into `run_dir`; with `resume`, continues from its latest checkpoint
/// (the stored config must equal `cfg` except for `steps`).
pub fn train<B: AutodiffBackend>(
    cfg: &TrainConfig,
    run_dir: &Path,
    resume: bool,
    device: &B::Device,
    on_event: impl FnMut(TrainEvent),
) -> Result<TrainSummary, TrainError> {
    train_replicas::<B>(
        cfg,
        run_dir,
        resume,
        &Replicas::single(device.clone()),
        on_event,
    )
}

/// [`train`] on data-parallel replicas ([`crate::parallel`]): one per device of `replicas`,
/// and as many in each other process of its cluster. Each optimiser step's `grad_accum`
/// micro-batches are shared out in contiguous blocks, replica `r` of `R` taking micro-batches
/// `r·A/R .. (r+1)·A/R`, each with the same data and draws as on one replica, so the weights
/// equal a one-replica run's up to the order of the gradient sums (bit-equal when every replica
/// has one micro-batch). Node 0's first replica keeps the EMA and writes the run folder; the
/// other nodes read it only to resume.
pub fn train_replicas<B: AutodiffBackend>(
    cfg: &TrainConfig,
    run_dir: &Path,
    resume: bool,
    replicas: &Replicas<B::Device>,
    mut on_event: impl FnMut(TrainEvent),
) -> Result<TrainSummary, TrainError> {
    cfg.validate()?;
    replicas.validate()?;
    let world = replicas.world();
    if !cfg.grad_accum.is_multiple_of(world) {
        return Err(TrainError::Config(format!(
            "--grad-accum {} must be a multiple of the replica count {world} (devices × nodes): each replica computes --grad-accum / {world} micro-batches per step",
            cfg.grad_accum
        )));
    }
    let writer = replicas.is_first_node();
    // Ports before any work: a taken one is an error naming it, not a hang.
    if let Some(c) = &replicas.cluster {
        let data_port = Cluster::port_of(&c.node_address, "--node-address")?;
        parallel::check_port(data_port, "--node-address", "this node's data")?;
        if c.node_rank == 0 && c.host_coordinator {
            parallel::start_coordinator(Cluster::port_of(&c.coordinator, "--coordinator")?)?;
        }
    }
    let device = &replicas.devices[0];
    if resume && !run_dir.join("checkpoints").is_dir() {
        return Err(TrainError::NoCheckpoint {
            dir: run_dir.to_path_buf(),
            detail: if run_dir.is_dir() {
                " (it has no checkpoints/ folder)".into()
            } else {
                " (no such folder)".into()
            },
        });
    }
    let data_opts = DataOptions {
        seed: cfg.seed,
        image_size: cfg.image_size,
        on_error: cfg.on_bad_file,
        ..DataOptions::default()
    };
    let dataset: Arc<dyn Dataset> = Arc::from(open_dataset(&cfg.data, &data_opts)?);
    let mut init = match &cfg.init {
        Some(path) => Some(nag_models::checkpoint::load_state_dict(path, &Default::default())?.0),
        None => None,
    };
    let model_cfg = cfg.model_config(dataset.as_ref(), init.as_ref())?;
    if let (Some(sd), true) = (init.as_mut(), cfg.new_classes) {
        rebuild_label_table(sd, &model_cfg, cfg.seed);
    }
    // Only once the data and the model are known to be usable: a bad option leaves no run.
    // Other nodes never write the run folder (it may be node 0's, on a shared file system).
    let _lock = if writer {
        io(run_dir, fs::create_dir_all(run_dir.join("checkpoints")))?;
        Some(RunLock::acquire(run_dir)?)
    } else {
        None
    };
    // burn's initialisers draw from the backend's process-wide RNG: seed and initialise under
    // one lock so concurrent runs in one process cannot interleave their draws.
    let mut model: Dit<B> = {
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(device, cfg.seed);
        let model: Dit<B> = model_cfg.init(device)?;
        // burn 0.21 draws a parameter's initial values on first use: read each one here,
        // under the lock.
        crate::ema::materialise(&model);
        model
    };
    if let (Some(sd), Some(path)) = (init, &cfg.init) {
        let (loaded, report) = model.load_state_dict(&sd)?;
        drop(sd);
        model = loaded;
        if report.null_timestep_initialised {
            on_event(TrainEvent::NullTimestepInitialised(path.clone()));
        }
    }
    let mut ema_model: Dit<B::InnerBackend> = model.valid();
    let mut adamw = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(cfg.weight_decay as f32);
    if let Some(c) = cfg.grad_clip {
        adamw = adamw.with_grad_clipping(Some(
            burn::optim::grad_clipping::GradientClippingConfig::Norm(c),
        ));
    }
    let mut optim = adamw.init::<B, Dit<B>>();
    let mut start = 0u64;
    let mut ema_updates = 0u64;
    let config_path = run_dir.join("config.json");
    if resume {
        let stored: TrainConfig =
            serde_json::from_slice(&io(&config_path, fs::read(&config_path))?)
                .map_err(|e| TrainError::Config(format!("{}: {e}", config_path.display())))?;
        // What may change on resume: the length, how the work is spread over threads, and how
        // many checkpoints are kept.
        let mut a = stored.clone();
        a.steps = cfg.steps;
        a.threads = cfg.threads;
        a.workers = cfg.workers;
        a.keep_checkpoints = cfg.keep_checkpoints;
        if &a != cfg {
            return Err(TrainError::Config(format!(
                "--resume: the options differ from the run's {} (only --steps, --threads, --workers and --keep-checkpoints may change)",
                config_path.display()
            )));
        }
        // The newest checkpoint that verifies and loads; damaged or incomplete newer ones are
        // passed over and reported.
        let mut skipped: Vec<Skipped> = Vec::new();
        let mut chosen = None;
        for (step, dir) in run_dir::checkpoints(run_dir) {
            let loaded = run_dir::usable(run_dir, &dir).and_then(|()| {
                load_checkpoint::<B>(&model, &ema_model, &dir, device).map_err(|e| e.to_string())
            });
            match loaded {
                Ok(parts) => {
                    chosen = Some((step, dir, parts));
                    break;
                }
                Err(reason) => skipped.push(Skipped { dir, reason }),
            }
        }
        let Some((step, dir, loaded)) = chosen else {
            let detail = skipped
                .iter()
                .map(|s| format!("\n  {}: {}", s.dir.display(), s.reason))
                .collect::<String>();
            return Err(TrainError::NoCheckpoint {
                dir: run_dir.to_path_buf(),
                detail: if detail.is_empty() {
                    " (none was written)".into()
                } else {
                    format!(":{detail}")
                },
            });
        };
        if loaded.state.step != step {
            return Err(TrainError::Config(format!(
                "{}: state.json says step {}, the folder's name step {step}",
                dir.display(),
                loaded.state.step
            )));
        }
        model = loaded.model;
        ema_model = loaded.ema;
        optim = optim.load_record(loaded.optim);
        start = loaded.state.step;
        ema_updates = loaded.state.ema_updates;
        on_event(TrainEvent::Resumed {
            from: dir,
            step,
            skipped,
        });
    }
    let json = serde_json::to_vec_pretty(cfg).map_err(|e| TrainError::Config(e.to_string()))?;
    if writer {
        write_atomic(&config_path, &json)?;
    }

    let loss_path = run_dir.join("loss.csv");
    let log = if resume && loss_path.is_file() {
        read_loss_log(&loss_path, start)
    } else {
        Vec::new()
    };
    let last_ckpt = if resume {
        checkpoint_dir(run_dir, start).display().to_string()
    } else {
        "none yet".into()
    };
    let run = replica::Run {
        cfg,
        run_dir,
        dataset: dataset.clone(),
        ddpm: DdpmSchedule::dit(),
        interp: cfg.objective.schedule(),
        start,
        world,
    };
    let lead = replica::Replica {
        rank: replicas.global_rank(0),
        device: device.clone(),
        model: model.clone(),
        optim: optim.clone(),
        ema: writer.then_some(replica::Ema {
            model: ema_model,
            updates: ema_updates,
        }),
        log,
        last_ckpt,
        link: None,
    };
    let log = if world == 1 {
        replica::run(&run, lead, &mut on_event)?
    } else {
        // One collective group per process: runs with replicas take turns.
        let _group = parallel::lock_group();
        parallel::reset::<B::InnerBackend>();
        let mut lead = lead;
        lead.link = Some(Link::new(replicas, 0, device.clone()));
        let others: Vec<_> = (1..replicas.devices.len())
            .map(|local| {
                let device = replicas.devices[local].clone();
                replica::Replica {
                    rank: replicas.global_rank(local),
                    model: model.clone().fork(&device),
                    optim: optim.clone(),
                    ema: None,
                    log: Vec::new(),
                    last_ckpt: String::new(),
                    link: Some(Link::new(replicas, local, device.clone())),
                    device,
                }
            })
            .collect();
        let run = &run;
        let (lead_result, other_results) = std::thread::scope(|scope| {
            let handles: Vec<_> = others
                .into_iter()
                .map(|r| {
                    std::thread::Builder::new()
                        .name(format!("nag-replica-{}", r.rank))
                        .spawn_scoped(scope, move || replica::run(run, r, &mut |_| {}))
                        .expect("a replica thread")
                })
                .collect();
            let lead_result = replica::run(run, lead, &mut on_event);
            let others: Vec<_> = handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(TrainError::Config("a replica thread panicked".into()))
                    })
                })
                .collect();
            (lead_result, others)
        });
        // The first error that is a replica's own (not "another replica stopped").
        let peer_stopped =
            |e: &TrainError| matches!(e, TrainError::Parallel(ParallelError::PeerStopped { .. }));
        let lead_result = match lead_result {
            Err(e) if !peer_stopped(&e) => return Err(e),
            r => r,
        };
        for r in other_results {
            if let Err(e) = r {
                if !peer_stopped(&e) {
                    return Err(e);
                }
            }
        }
        lead_result?
    };
    Ok(TrainSummary {
        run_dir: run_dir.to_path_buf(),
        steps: cfg.steps,
        final_loss: log.last().map_or(f64::NAN, |l| l.1),
        first_loss: log.first().map_or(f64::NAN, |l| l.1),
        skipped_files: dataset.skipped(),
    })
}

/// One micro-batch `m` of optimiser step `step`: its loss (already divided by `grad_accum`)
/// and its gradients.
#[allow(clippy::too_many_arguments)]
fn micro_step<B: AutodiffBackend>(
    cfg: &TrainConfig,
    step: u64,
    m: usize,
    model: &Dit<B>,
    ddpm: &DdpmSchedule,
    interp: Option<&Schedule>,
    batch: Batch,
    trainable: &[ParamId],
    device: &B::Device,
) -> (f32, GradientsParams) {
    let x0 = Tensor::<B, 4>::from_data(TensorData::new(batch.x, batch.shape), device);
    let y = Tensor::<B, 1, Int>::from_data(TensorData::new(batch.y, [batch.shape[0]]), device);
    let d = draw(cfg, step, m, batch.shape, ddpm.len());
    let loss = micro_loss(cfg, model, ddpm, interp, x0, y, &d).div_scalar(cfg.grad_accum as f64);
    let value: f32 = burn::tensor::ElementConversion::elem(loss.clone().into_scalar());
    let mut grads = loss.backward();
    let grads = GradientsParams::from_params(&mut grads, model, trainable);
    (value, grads)
}

/// The ids of the parameters that require gradients.
fn trainable_params<B: AutodiffBackend>(model: &Dit<B>) -> Vec<ParamId> {
    struct Ids(Vec<ParamId>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if param.val().is_require_grad() {
                self.0.push(param.id);
            }
        }
    }
    let mut ids = Ids(Vec::new());
    model.visit(&mut ids);
    ids.0
}

/// `f(model, item)` for every item, concurrently, one thread per item, each on its own
/// autodiff graph: the parameters become fresh leaves over the same data and `ParamId`s, so
/// every thread's `backward` gives gradients of its own loss only, which [`sum_gradients`]
/// adds up. This is how a CPU step uses every core (burn-ndarray is built without threads of
/// its own, see the workspace manifest); one item runs on the calling thread. Results come
/// back in item order and do not depend on how many ran at once.
pub fn on_own_graphs<B, T, R, F>(model: &Dit<B>, items: Vec<T>, f: F) -> Vec<R>
where
    B: AutodiffBackend,
    T: Send,
    R: Send,
    F: Fn(&Dit<B>, T) -> R + Sync,
{
    if items.len() == 1 {
        return items.into_iter().map(|item| f(model, item)).collect();
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .into_iter()
            .map(|item| {
                let local = model.clone().map(&mut FreshLeaves);
                let f = &f;
                scope.spawn(move || f(&local, item))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a training thread panicked"))
            .collect()
    })
}

/// Replaces every parameter by a fresh autodiff leaf over the same data and `ParamId`.
struct FreshLeaves;

impl<B: AutodiffBackend> ModuleMapper<B> for FreshLeaves {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        // Frozen parameters (the fixed sin-cos `pos_embed`) stay frozen.
        param.map(|t| {
            let trainable = t.is_require_grad();
            let leaf = t.detach();
            if trainable {
                leaf.require_grad()
            } else {
                leaf
            }
        })
    }
}

/// Sums two gradient sets parameter by parameter (gradient accumulation).
pub fn sum_gradients<B: AutodiffBackend>(
    a: GradientsParams,
    b: GradientsParams,
    model: &Dit<B>,
) -> GradientsParams {
    let mut acc = burn::optim::GradientsAccumulator::<Dit<B>>::new();
    acc.accumulate(model, a);
    acc.accumulate(model, b);
    acc.grads()
}

fn read_loss_log(path: &Path, upto: u64) -> Vec<(u64, f64)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut it = l.split(',');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .filter(|(s, _)| *s <= upto)
        .collect()
}

fn write_loss_log(path: &Path, log: &[(u64, f64)]) -> Result<(), TrainError> {
    let mut s = String::from("step,loss\n");
    for (step, loss) in log {
        s.push_str(&format!("{step},{loss}\n"));
    }
    write_atomic(path, s.as_bytes())
}

fn write_loss_plot(path: &Path, log: &[(u64, f64)]) -> Result<(), TrainError> {
    if log.len() < 2 {
        return Ok(());
    }
    let points: Vec<(f64, f64)> = log.iter().map(|&(s, l)| (s as f64, l)).collect();
    let mut plot = crate::image::LinePlot::new("training loss");
    plot.x_label = "step".into();
    plot.y_label = "loss".into();
    plot.log_y = true;
    plot.add_series("loss", points);
    plot.save(path).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(crate::error_chain(&e)),
    })
}
