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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use nag_core::gmm::GaussianMixture;
use nag_core::schedule::{NoiseSchedule, Schedule};
use nag_models::estimator::{bin_centres, EstimatorConfig, NoiseEstimator};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::{
    open_dataset, stream_rng, DataError, DataOptions, Dataset, GmmConfig, GmmDataset, Item, Loader,
    LoaderConfig,
};

/// File stem of the exported estimator (`estimator.safetensors` + `estimator.json`).
pub const FILE_STEM: &str = "estimator";

const DOMAIN_STEP: u64 = 0x4553_5450; // "ESTP": per-step times and noise
const DOMAIN_EVAL: u64 = 0x4545_5641; // "EEVA": held-out times and noise
const DOMAIN_EVAL_ITEM: u64 = 0x4545_4954; // "EEIT": held-out item augmentation
const DOMAIN_VALIDATE: u64 = 0x4556_414C; // "EVAL": validate_on_gmm draws

/// Rows per forward pass in evaluation.
const EVAL_CHUNK: usize = 128;

/// Options of [`train_estimator`]; stored in `estimator.json` (inside [`EstimatorMeta`]).
///
/// The defaults train on the built-in 16-px `gmm` data in about two minutes on two CPU cores
/// (release build).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EstimatorTrainConfig {
    /// Dataset spec (`gmm`, `shapes`, or a path; see [`open_dataset`]).
    pub data: String,
    /// Image size of generated datasets (default 16).
    pub image_size: Option<usize>,
    /// Seed of generated dataset content; `None` = `seed` (the diffusion trainer's convention,
    /// so an estimator and a model trained with the same `--seed` see the same `gmm` mixture).
    pub data_seed: Option<u64>,
    /// Noise schedule of the diffusion model whose states will be measured
    /// ([`Schedule::from_name`]: `ddpm-linear`, `ddpm-cosine`, `linear`, `gvp`, `vp`).
    pub schedule: String,
    /// Number of τ bins `K`.
    pub bins: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Token width `D`.
    pub hidden: usize,
    /// Attention heads (must divide `hidden`).
    pub heads: usize,
    /// Patch size (must divide the image size).
    pub patch: usize,
    /// Condition the estimator on the class label (`g_φ(τ | x, y)`).
    pub class_conditional: bool,
    /// Optimiser steps.
    pub steps: u64,
    /// Batch size.
    pub batch: usize,
    /// Peak AdamW learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup: u64,
    /// Clip the gradient norm to this value.
    pub grad_clip: Option<f32>,
    /// Uniform label smoothing `ε ∈ [0, 1)` (0 = one-hot targets, a calibrated posterior).
    pub label_smoothing: f64,
    /// Seed of the initialisation, the batch order, the times and the noise.
    pub seed: u64,
    /// Report progress every this many steps.
    pub log_every: u64,
    /// Items held out (the dataset's last ones, at most a tenth of it) for the final
    /// evaluation of `mean |τ̂ − τ|`.
    pub eval_samples: usize,
    /// Loader worker threads (0 = load on the training thread).
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

fn parse_schedule(name: &str) -> Result<Schedule, EstimatorError> {
    Schedule::from_name(name).map_err(|e| EstimatorError::Config(format!("--schedule: {e}")))
}

/// Progress reported every `log_every` steps.
#[derive(Debug, Clone, Copy)]
pub struct EstimatorProgress {
    /// Completed steps.
    pub step: u64,
    /// Total steps.
    pub total: u64,
    /// Mean cross-entropy since the last report.
    pub loss: f64,
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct EstimatorSummary {
    /// The output folder.
    pub out_dir: PathBuf,
    /// `estimator.safetensors`.
    pub weights: PathBuf,
    /// Steps trained.
    pub steps: u64,
    /// First reported loss.
    pub first_loss: f64,
    /// Last reported loss.
    pub final_loss: f64,
    /// Held-out items evaluated.
    pub held_out_samples: usize,
    /// `mean |τ̂ − τ|` on held-out forward-noised items (τ̂ the posterior mean).
    pub held_out_mean_abs_error: f64,
    /// The same error for the constant guess τ̂ = 0.5 (≈ 0.25 for uniform τ), for scale.
    pub constant_mean_abs_error: f64,
    /// Wall-clock seconds of the training loop.
    pub train_seconds: f64,
}

/// The first `len` items of a dataset (the rest are held out).
struct Prefix {
    inner: Arc<dyn Dataset>,
    len: usize,
}

impl Dataset for Prefix {
    fn len(&self) -> usize {
        self.len
    }
    fn item(&self, index: usize, rng: &mut ChaCha8Rng) -> Result<Item, DataError> {
        if index >= self.len {
            return Err(DataError::Index {
                index,
                len: self.len,
            });
        }
        self.inner.item(index, rng)
    }
    fn shape(&self) -> [usize; 3] {
        self.inner.shape()
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn name(&self) -> String {
        format!("{} (first {} items)", self.inner.name(), self.len)
    }
    fn skipped(&self) -> usize {
        self.inner.skipped()
    }
}

/// One draw of the noise level: τ and `(α(τ), σ(τ))`. DDPM tables: τ uniform on the grid
/// `τ_i = (i+1)/T` with the table's exact `ᾱ_i`; continuous schedules: τ uniform on `(0, 1]`.
fn draw_time(schedule: &Schedule, rng: &mut ChaCha8Rng) -> (f64, f64, f64) {
    match schedule {
        Schedule::Ddpm(d) => {
            let k = rng.random_range(0..d.len());
            let ab = d.alphas_cumprod[k];
            (d.tau(k), ab.sqrt(), (1.0 - ab).max(0.0).sqrt())
        }
        s => {
            let tau = 1.0 - rng.random::<f64>();
            (tau, s.alpha(tau), s.sigma(tau))
        }
    }
}

/// `len` standard normals (Box–Muller, both outputs).
fn normals(rng: &mut ChaCha8Rng, len: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let th = std::f64::consts::TAU * u2;
        out.push(r * th.cos());
        if out.len() < len {
            out.push(r * th.sin());
        }
    }
    out
}

/// Forward-noises a row-major batch of `x0` (`per` values per item): returns `x_τ` and τ.
fn forward_noise(
    x0: &[f32],
    per: usize,
    schedule: &Schedule,
    rng: &mut ChaCha8Rng,
) -> (Vec<f32>, Vec<f64>) {
    let n = x0.len() / per.max(1);
    let times: Vec<(f64, f64, f64)> = (0..n).map(|_| draw_time(schedule, rng)).collect();
    let eps = normals(rng, x0.len());
    let mut x = Vec::with_capacity(x0.len());
    for (i, (row, e)) in x0.chunks_exact(per).zip(eps.chunks_exact(per)).enumerate() {
        let (_, a, s) = times[i];
        x.extend(
            row.iter()
                .zip(e)
                .map(|(&v, &z)| (a * v as f64 + s * z) as f32),
        );
    }
    (x, times.into_iter().map(|t| t.0).collect())
}

/// The bin of τ: `min(⌊τK⌋, K − 1)`, clamped at 0 (as [`NoiseEstimator::tau_to_bin`]).
pub fn tau_bin(tau: f64, num_bins: usize) -> usize {
    ((tau * num_bins as f64).floor().max(0.0) as usize).min(num_bins.saturating_sub(1))
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

/// Trains an estimator per `cfg` and writes `estimator.safetensors` + `estimator.json` into
/// `out_dir` (created if needed; existing files are replaced atomically). `progress` is called
/// every `log_every` steps and at the end. See the [module docs](self) for the recipe.
pub fn train_estimator<B: AutodiffBackend>(
    cfg: &EstimatorTrainConfig,
    out_dir: &Path,
    device: &B::Device,
    mut progress: impl FnMut(EstimatorProgress),
) -> Result<EstimatorSummary, EstimatorError> {
    cfg.validate()?;
    let schedule = parse_schedule(&cfg.schedule)?;
    let data_seed = cfg.resolved_data_seed();
    let data_opts = DataOptions {
        seed: data_seed,
        image_size: cfg.image_size,
        ..DataOptions::default()
    };
    let dataset: Arc<dyn Dataset> = Arc::from(open_dataset(&cfg.data, &data_opts)?);
    let shape = dataset.shape();
    let model_cfg = cfg.model_config(shape, dataset.num_classes())?;
    let len = dataset.len();
    let held_out = cfg.eval_samples.min(len / 10);
    if held_out == 0 {
        return Err(EstimatorError::Config(format!(
            "{} has {len} items: at least 10 are needed to hold some out for evaluation",
            dataset.name()
        )));
    }
    let conditional = model_cfg.num_classes > 0;
    io(out_dir, std::fs::create_dir_all(out_dir))?;

    let mut model: NoiseEstimator<B> = init_estimator(&model_cfg, cfg.seed, device)?;
    let mut adamw = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(0.0);
    if let Some(c) = cfg.grad_clip {
        adamw = adamw.with_grad_clipping(Some(
            burn::optim::grad_clipping::GradientClippingConfig::Norm(c),
        ));
    }
    let mut optim = adamw.init::<B, NoiseEstimator<B>>();
    let train_set: Arc<dyn Dataset> = Arc::new(Prefix {
        inner: dataset.clone(),
        len: len - held_out,
    });
    let mut loader = Loader::new(
        train_set,
        LoaderConfig {
            batch_size: cfg.batch,
            seed: cfg.seed,
            workers: cfg.workers,
            ..LoaderConfig::default()
        },
    )?;
    let k = cfg.bins;
    let per: usize = shape.iter().product();
    let start = Instant::now();
    let (mut acc, mut acc_n) = (0.0f64, 0u64);
    let (mut first_loss, mut final_loss) = (f64::NAN, f64::NAN);
    for step in 0..cfg.steps {
        let lr = learning_rate(cfg, step);
        let batch = loader.next_batch()?;
        let n = batch.shape[0];
        let mut rng = stream_rng(cfg.seed, DOMAIN_STEP, step);
        let (x, tau) = forward_noise(&batch.x, per, &schedule, &mut rng);
        let mut target = vec![cfg.label_smoothing as f32 / k as f32; n * k];
        for (i, &t) in tau.iter().enumerate() {
            target[i * k + tau_bin(t, k)] += 1.0 - cfg.label_smoothing as f32;
        }
        let x = Tensor::<B, 4>::from_data(TensorData::new(x, batch.shape), device);
        let y = conditional
            .then(|| Tensor::<B, 1, Int>::from_data(TensorData::new(batch.y, [n]), device));
        let target = Tensor::<B, 2>::from_data(TensorData::new(target, [n, k]), device);
        let logp = log_softmax(model.forward(x, y), 1);
        let loss = (logp * target).sum_dim(1).mean().neg();
        let value: f32 = loss.clone().into_scalar().elem();
        if !value.is_finite() {
            return Err(EstimatorError::NonFinite { step, loss: value });
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr, model, grads);
        acc += value as f64;
        acc_n += 1;
        let done = step + 1;
        if done % cfg.log_every == 0 || done == cfg.steps {
            let mean = acc / acc_n as f64;
            if first_loss.is_nan() {
                first_loss = mean;
            }
            final_loss = mean;
            progress(EstimatorProgress {
                step: done,
                total: cfg.steps,
                loss: mean,
            });
            (acc, acc_n) = (0.0, 0);
        }
    }
    let train_seconds = start.elapsed().as_secs_f64();
    let model = model.valid();
    let (mae, constant) = held_out_error(
        &model,
        dataset.as_ref(),
        len - held_out..len,
        &schedule,
        cfg.seed,
        conditional,
        device,
    )?;
    let meta = EstimatorMeta {
        model: model_cfg,
        schedule: cfg.schedule.to_ascii_lowercase(),
        num_bins: k,
        data: cfg.data.clone(),
        data_seed,
        data_shape: shape,
        held_out_samples: held_out,
        held_out_mean_abs_error: mae,
        train: cfg.clone(),
    };
    let weights = save_estimator(&model, &meta, out_dir)?;
    Ok(EstimatorSummary {
        out_dir: out_dir.to_path_buf(),
        weights,
        steps: cfg.steps,
        first_loss,
        final_loss,
        held_out_samples: held_out,
        held_out_mean_abs_error: mae,
        constant_mean_abs_error: constant,
        train_seconds,
    })
}

/// Warm-up then cosine decay from `lr` to `lr/10` over the run.
fn learning_rate(cfg: &EstimatorTrainConfig, step: u64) -> f64 {
    let warm = if cfg.warmup > 0 {
        ((step + 1) as f64 / cfg.warmup as f64).min(1.0)
    } else {
        1.0
    };
    let progress = step as f64 / cfg.steps.max(1) as f64;
    let cosine = 0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    cfg.lr * warm * cosine
}

/// `mean |τ̂ − τ|` of the estimator and of the constant 0.5 on forward-noised `items`.
fn held_out_error<B: Backend>(
    est: &NoiseEstimator<B>,
    dataset: &dyn Dataset,
    items: std::ops::Range<usize>,
    schedule: &Schedule,
    seed: u64,
    conditional: bool,
    device: &B::Device,
) -> Result<(f64, f64), EstimatorError> {
    let shape = dataset.shape();
    let per: usize = shape.iter().product();
    let indices: Vec<usize> = items.collect();
    let (mut err, mut err_const) = (0.0, 0.0);
    for (c, chunk) in indices.chunks(EVAL_CHUNK).enumerate() {
        let mut x0 = Vec::with_capacity(chunk.len() * per);
        let mut labels = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let item = dataset.item(i, &mut stream_rng(seed, DOMAIN_EVAL_ITEM, i as u64))?;
            x0.extend_from_slice(&item.x);
            labels.push(item.y);
        }
        let mut rng = stream_rng(seed, DOMAIN_EVAL, c as u64);
        let (x, tau) = forward_noise(&x0, per, schedule, &mut rng);
        let n = chunk.len();
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(x, [n, shape[0], shape[1], shape[2]]),
            device,
        );
        let y = conditional
            .then(|| Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [n]), device));
        let (mean, _) = estimate_tau(est, x, y)?;
        for (m, t) in mean.iter().zip(&tau) {
            err += (m - t).abs();
            err_const += (0.5 - t).abs();
        }
    }
    let n = indices.len().max(1) as f64;
    Ok((err / n, err_const / n))
}

/// Writes `estimator.safetensors` + `estimator.json` into `out_dir` atomically; returns the
/// weights path.
pub fn save_estimator<B: Backend>(
    est: &NoiseEstimator<B>,
    meta: &EstimatorMeta,
    out_dir: &Path,
) -> Result<PathBuf, EstimatorError> {
    if est.config() != &meta.model {
        return Err(EstimatorError::Config(
            "the description's model config differs from the estimator's".into(),
        ));
    }
    let json = serde_json::to_string_pretty(meta)
        .map_err(|e| EstimatorError::Config(format!("cannot serialise the description: {e}")))?;
    let path = out_dir.join(format!("{FILE_STEM}.safetensors"));
    let (weights, _) =
        nag_models::checkpoint::save_model_files(&est.to_state_dict(), &json, &path)?;
    Ok(weights)
}

/// Reads an estimator written by [`train_estimator`]: `path` is its folder (holding
/// `estimator.safetensors` + `estimator.json`) or either file.
pub fn load_estimator<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(NoiseEstimator<B>, EstimatorMeta), EstimatorError> {
    let file = if path.is_dir() {
        path.join(format!("{FILE_STEM}.safetensors"))
    } else {
        path.to_path_buf()
    };
    let (sd, json) = nag_models::checkpoint::load_model_files(&file)?;
    let (_, json_path) = nag_models::checkpoint::model_file_paths(&file);
    let meta: EstimatorMeta = serde_json::from_str(&json).map_err(|e| EstimatorError::Meta {
        path: json_path.clone(),
        reason: e.to_string(),
    })?;
    if meta.num_bins != meta.model.num_bins {
        return Err(EstimatorError::Meta {
            path: json_path,
            reason: format!(
                "num_bins {} differs from the model's {}",
                meta.num_bins, meta.model.num_bins
            ),
        });
    }
    meta.model.validate()?;
    parse_schedule(&meta.schedule)?;
    let est = init_estimator::<B>(&meta.model, 0, device)?.load_state_dict(&sd)?;
    Ok((est, meta))
}

/// Measures the noise level of states: `x: [N, C, H, W]` (optional labels `y: [N]` for a
/// class-conditional estimator) → (posterior mean of τ per state, length `N`; the posterior
/// over the `K` bins, row-major `N × K`, rows summing to 1). τ̂ uses the bin centres
/// `(k + 0.5)/K`. Shapes, labels and the finiteness of the result are checked.
pub fn estimate_tau<B: Backend>(
    est: &NoiseEstimator<B>,
    x: Tensor<B, 4>,
    y: Option<Tensor<B, 1, Int>>,
) -> Result<(Vec<f64>, Vec<f64>), EstimatorError> {
    let n = x.dims()[0];
    if n == 0 {
        return Err(EstimatorError::Input("no states (N = 0)".into()));
    }
    let k = est.config().num_bins;
    let centres = bin_centres(k);
    let mut mean = Vec::with_capacity(n);
    let mut post = Vec::with_capacity(n * k);
    let mut start = 0;
    while start < n {
        let len = EVAL_CHUNK.min(n - start);
        let xc = x.clone().narrow(0, start, len);
        let yc = match &y {
            Some(y) if y.dims()[0] == n => Some(y.clone().narrow(0, start, len)),
            other => other.clone(), // a mismatch is reported by try_forward
        };
        let p = softmax(est.try_forward(xc, yc)?, 1);
        let p: Vec<f32> = p
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| EstimatorError::Input(format!("cannot read the posterior: {e:?}")))?;
        for row in p.chunks_exact(k) {
            if row.iter().any(|v| !v.is_finite()) {
                return Err(EstimatorError::Input(
                    "the posterior is not finite (are the states finite?)".into(),
                ));
            }
            mean.push(row.iter().zip(&centres).map(|(&p, c)| p as f64 * c).sum());
            post.extend(row.iter().map(|&v| v as f64));
        }
        start += len;
    }
    Ok((mean, post))
}

/// The estimator against the exact posterior on `gmm` data ([`validate_on_gmm`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    /// States evaluated.
    pub n: usize,
    /// `mean |τ̂ − τ|`, τ̂ the estimator's posterior mean, τ the true noise level.
    pub mean_abs_error_vs_true_tau: f64,
    /// `mean |τ̂ − E_exact[τ | x]|` (the exact posterior mean over the bin centres).
    pub mean_abs_error_vs_exact_posterior_mean: f64,
    /// `mean ½ Σ_k |p̂_k − p_k|` between the estimator's and the exact posterior over bins.
    pub mean_total_variation: f64,
    /// Reference: `mean |E_exact[τ | x] − τ|`, the error of the exact (Bayes) posterior mean.
    pub exact_mean_abs_error_vs_true_tau: f64,
    /// Reference: `mean |0.5 − E_exact[τ | x]|`, the constant predictor τ̂ = 0.5 (the prior
    /// mean).
    pub constant_mean_abs_error_vs_exact_posterior_mean: f64,
}

/// Compares `est` with the exact noise-level posterior of `gmm`'s mixture on `n` forward-noised
/// states.
///
/// State `j`: `x0` = item `len − 1 − (j mod len)` of `gmm` (the end of the dataset, which
/// [`train_estimator`] holds out), τ drawn from `schedule` as in training (DDPM grid or uniform),
/// `x_τ = α x0 + σ ε` in f64, all from `stream_rng(seed, …, j)`. The exact posterior is
/// [`GaussianMixture::posterior_over_grid`] on the grid `(α(τ_k), σ(τ_k))` at the bin centres
/// `τ_k = (k + 0.5)/K` with a uniform prior; for a class-conditional estimator it is the
/// posterior under the item's own component (the estimator is then given the label). Items are
/// the mixture's `[C, H, W]` vectors, the layout the estimator reads.
pub fn validate_on_gmm<B: Backend>(
    est: &NoiseEstimator<B>,
    gmm: &GmmDataset,
    schedule: &Schedule,
    n: usize,
    seed: u64,
) -> Result<ValidationReport, EstimatorError> {
    if n == 0 {
        return Err(EstimatorError::Input("n must be at least 1".into()));
    }
    let cfg = est.config();
    let shape = gmm.shape();
    let mixture = gmm.mixture();
    let d = mixture.dim();
    if shape != [cfg.in_channels, cfg.input_size, cfg.input_size]
        || d != shape.iter().product::<usize>()
    {
        return Err(EstimatorError::Config(format!(
            "the estimator reads [{}, {}, {}] states but the gmm items are {shape:?}",
            cfg.in_channels, cfg.input_size, cfg.input_size
        )));
    }
    let conditional = cfg.num_classes > 0;
    if conditional && cfg.num_classes != mixture.num_components() {
        return Err(EstimatorError::Config(format!(
            "the estimator has {} classes but the mixture {} components",
            cfg.num_classes,
            mixture.num_components()
        )));
    }
    let k = cfg.num_bins;
    let centres = bin_centres(k);
    let grid: Vec<(f64, f64)> = centres
        .iter()
        .map(|&t| (schedule.alpha(t), schedule.sigma(t)))
        .collect();
    // Per-class single-component mixtures for the class-conditional posterior.
    let components: Vec<GaussianMixture> = if conditional {
        (0..mixture.num_components())
            .map(|c| {
                let missing = || EstimatorError::Config(format!("mixture has no component {c}"));
                GaussianMixture::new(
                    d,
                    vec![1.0],
                    vec![mixture.mean(c).ok_or_else(missing)?.to_vec()],
                    mixture.s(),
                    vec![mixture.factor(c).ok_or_else(missing)?.to_vec()],
                )
                .map_err(EstimatorError::from)
            })
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let device = est.cond_embed.val().device();
    let len = gmm.len();
    let mut sums = [0.0f64; 5];
    let mut start = 0;
    while start < n {
        let m = EVAL_CHUNK.min(n - start);
        let mut states = Vec::with_capacity(m * d);
        let mut labels = Vec::with_capacity(m);
        let mut taus = Vec::with_capacity(m);
        for j in start..start + m {
            let (x0, label) = gmm.sample_f64(len - 1 - (j % len))?;
            let mut rng = stream_rng(seed, DOMAIN_VALIDATE, j as u64);
            let (tau, a, s) = draw_time(schedule, &mut rng);
            let eps = normals(&mut rng, d);
            states.extend(x0.iter().zip(&eps).map(|(v, e)| a * v + s * e));
            labels.push(label as i64);
            taus.push(tau);
        }
        let exact = if conditional {
            let mut rows = Vec::with_capacity(m * k);
            for (state, &c) in states.chunks_exact(d).zip(&labels) {
                rows.extend(components[c as usize].posterior_over_grid(state, &grid, None)?);
            }
            rows
        } else {
            mixture.posterior_over_grid(&states, &grid, None)?
        };
        let x: Vec<f32> = states.iter().map(|&v| v as f32).collect();
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(x, [m, shape[0], shape[1], shape[2]]),
            &device,
        );
        let y = conditional
            .then(|| Tensor::<B, 1, Int>::from_data(TensorData::new(labels.clone(), [m]), &device));
        let (mean, post) = estimate_tau(est, x, y)?;
        for i in 0..m {
            let (p_hat, p) = (&post[i * k..(i + 1) * k], &exact[i * k..(i + 1) * k]);
            let exact_mean: f64 = p.iter().zip(&centres).map(|(p, c)| p * c).sum();
            sums[0] += (mean[i] - taus[i]).abs();
            sums[1] += (mean[i] - exact_mean).abs();
            sums[2] += 0.5 * p_hat.iter().zip(p).map(|(a, b)| (a - b).abs()).sum::<f64>();
            sums[3] += (exact_mean - taus[i]).abs();
            sums[4] += (0.5 - exact_mean).abs();
        }
        start += m;
    }
    let nf = n as f64;
    Ok(ValidationReport {
        n,
        mean_abs_error_vs_true_tau: sums[0] / nf,
        mean_abs_error_vs_exact_posterior_mean: sums[1] / nf,
        mean_total_variation: sums[2] / nf,
        exact_mean_abs_error_vs_true_tau: sums[3] / nf,
        constant_mean_abs_error_vs_exact_posterior_mean: sums[4] / nf,
    })
}
