//! [`train_estimator`]: the training loop (AdamW, warm-up + cosine learning rate, clipping) on
//! forward-noised data, and its held-out error.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::AdamWConfig;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use nag_core::schedule::Schedule;
use nag_models::estimator::NoiseEstimator;

use crate::data::{open_dataset, stream_rng, Batch, DataOptions, Dataset};
use crate::train::fit::{fit, FitPlan};

use super::config::{EstimatorMeta, EstimatorTrainConfig};
use super::eval::estimate_tau;
use super::noise::{forward_noise, tau_bin};
use super::store::save_estimator;
use super::{
    init_estimator, io, parse_schedule, EstimatorError, DOMAIN_EVAL, DOMAIN_EVAL_ITEM, DOMAIN_STEP,
    EVAL_CHUNK,
};

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

/// Trains an estimator per `cfg` and writes `estimator.safetensors` + `estimator.json` into
/// `out_dir` (created if needed; existing files are replaced atomically). `progress` is called
/// every `log_every` steps and at the end. See the [module docs](super) for the recipe.
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

    let model: NoiseEstimator<B> = init_estimator(&model_cfg, cfg.seed, device)?;
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
    let plan = FitPlan {
        dataset: dataset.clone(),
        train: 0..len - held_out,
        batch: cfg.batch,
        seed: cfg.seed,
        workers: cfg.workers,
        steps: cfg.steps,
        log_every: cfg.log_every,
    };
    let k = cfg.bins;
    let per: usize = shape.iter().product();
    // Cross-entropy against the label-smoothed one-hot bin of each item's τ.
    let loss = |model: &NoiseEstimator<B>, batch: Batch, step: u64| {
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
        Ok::<_, EstimatorError>(((logp * target).sum_dim(1).mean().neg(), 0))
    };
    let start = Instant::now();
    let (model, losses) = fit(
        model,
        adamw,
        plan,
        |step| learning_rate(cfg, step),
        loss,
        |log| {
            progress(EstimatorProgress {
                step: log.step,
                total: log.total,
                loss: log.loss,
            })
        },
    )?;
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
        first_loss: losses.first,
        final_loss: losses.last,
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
