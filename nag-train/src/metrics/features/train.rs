//! Training the feature classifier ([`train_feature_net`]) on the dataset, and its held-out
//! [`accuracy`].

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::optim::AdamWConfig;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::extractor::{save_feature_net, FeatureModelInfo};
use super::net::{FeatureNet, FeatureNetConfig};
use super::{CHUNK, FEATURE_MODEL_KIND};
use crate::data::{open_dataset, stream_rng, Batch, DataOptions, Dataset};
use crate::metrics::MetricsError;
use crate::train::fit::{fit, FitPlan};

/// How to train a feature classifier; also `cargo xtask features train`'s flags (clap, and
/// `--config FILE.toml` by the same names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct FeatureTrainConfig {
    /// Dataset: shapes, shapes32, shapes-scattered, gmm, or a path (image folder, latents,
    /// IDX); use the run's.
    #[arg(long, default_value_t = FeatureTrainConfig::default().data)]
    pub data: String,
    /// Image size of generated datasets (as the run's `image_size`).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Dataset content seed, also the seed of the weights and the shuffling (as the run's).
    #[arg(long, default_value_t = FeatureTrainConfig::default().seed)]
    pub seed: u64,
    /// Optimiser steps (the default takes under two minutes on two CPU cores at 16 px).
    #[arg(long, default_value_t = FeatureTrainConfig::default().steps)]
    pub steps: u64,
    /// Batch size.
    #[arg(long, default_value_t = FeatureTrainConfig::default().batch)]
    pub batch: usize,
    /// Peak AdamW learning rate (warm-up over the first 5% of steps, cosine decay to 5%).
    #[arg(long, default_value_t = FeatureTrainConfig::default().lr)]
    pub lr: f64,
    /// AdamW weight decay.
    #[arg(skip = FeatureTrainConfig::default().weight_decay)]
    pub weight_decay: f64,
    /// Items held out at the end of the dataset for the accuracy (at most a fifth of it).
    #[arg(long, default_value_t = FeatureTrainConfig::default().holdout)]
    pub holdout: usize,
    /// Convolution widths, comma-separated; strides alternate 1, 2; the last is the feature
    /// dimension [default: 32,64,64,128].
    #[arg(long, value_delimiter = ',')]
    pub widths: Option<Vec<usize>>,
    /// Loader worker threads.
    #[arg(skip = FeatureTrainConfig::default().workers)]
    pub workers: usize,
}

impl Default for FeatureTrainConfig {
    fn default() -> Self {
        Self {
            data: "shapes".into(),
            image_size: None,
            seed: 0,
            steps: 400,
            batch: 64,
            lr: 3e-3,
            weight_decay: 1e-4,
            holdout: 1000,
            widths: None,
            workers: 1,
        }
    }
}

/// Progress of [`train_feature_net`].
#[derive(Debug, Clone, Copy)]
pub struct FeatureProgress {
    /// Completed steps.
    pub step: u64,
    /// Total steps.
    pub total: u64,
    /// Mean training loss since the last report.
    pub loss: f64,
    /// Mean training-batch accuracy since the last report.
    pub accuracy: f64,
}

/// A trained classifier and how it did.
#[derive(Debug)]
pub struct FeatureTrainSummary<B: Backend> {
    /// The trained network (inference backend).
    pub net: FeatureNet<B>,
    /// What was saved to `model.json`.
    pub info: FeatureModelInfo,
    /// Last reported training loss.
    pub final_loss: f64,
}

/// Cross-entropy `−(1/N) Σᵢ log softmax(logitsᵢ)[yᵢ]` and the number of correct argmaxes.
fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, y: Tensor<B, 1, Int>) -> (Tensor<B, 1>, usize) {
    let [n, _] = logits.dims();
    let correct: i64 = logits
        .clone()
        .argmax(1)
        .reshape([n])
        .equal(y.clone())
        .int()
        .sum()
        .into_scalar()
        .elem();
    let lp = log_softmax(logits, 1).gather(1, y.reshape([n, 1]));
    (lp.mean().neg(), correct as usize)
}

/// Accuracy of `net` on items `range` of `dataset` (no augmentation rng effects: item rng
/// seeded per index), in batches of 256.
pub fn accuracy<B: Backend>(
    net: &FeatureNet<B>,
    dataset: &dyn Dataset,
    range: Range<usize>,
    device: &B::Device,
) -> Result<f64, MetricsError> {
    if range.is_empty() {
        return Err(MetricsError::Input(
            "accuracy needs at least one item".into(),
        ));
    }
    let [c, h, w] = dataset.shape();
    let mut correct = 0usize;
    let n = range.len();
    let indices: Vec<usize> = range.collect();
    for chunk in indices.chunks(CHUNK) {
        let mut x = Vec::with_capacity(chunk.len() * c * h * w);
        let mut y = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let item = dataset.item(i, &mut stream_rng(0, 0, i as u64))?;
            x.extend(item.x);
            y.push(item.y);
        }
        net.check_input([chunk.len(), c, h, w])?;
        let x = Tensor::<B, 4>::from_data(TensorData::new(x, [chunk.len(), c, h, w]), device);
        let pred = net.logits(x).argmax(1);
        correct += pred
            .into_data()
            .iter::<i64>()
            .zip(&y)
            .filter(|(p, y)| p == *y)
            .count();
    }
    Ok(correct as f64 / n as f64)
}

/// Trains a [`FeatureNet`] per `cfg` on backend `B` (autodiff) and, when `out_dir` is given,
/// saves it there ([`save_feature_net`]). Items `len − holdout .. len` are never trained on
/// and give [`FeatureModelInfo::held_out_accuracy`]. `on_progress` is called every 25 steps and
/// at the end.
pub fn train_feature_net<B: AutodiffBackend>(
    cfg: &FeatureTrainConfig,
    out_dir: Option<&Path>,
    device: &B::Device,
    mut on_progress: impl FnMut(FeatureProgress),
) -> Result<FeatureTrainSummary<B::InnerBackend>, MetricsError> {
    if cfg.steps == 0 || cfg.batch == 0 {
        return Err(MetricsError::Config(
            "--steps and --batch must be at least 1".into(),
        ));
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(MetricsError::Config(format!(
            "--lr must be > 0 (got {})",
            cfg.lr
        )));
    }
    let options = DataOptions {
        seed: cfg.seed,
        image_size: cfg.image_size,
        ..DataOptions::default()
    };
    let dataset: Arc<dyn Dataset> = Arc::from(open_dataset(&cfg.data, &options)?);
    let [c, h, w] = dataset.shape();
    if h != w {
        return Err(MetricsError::Config(format!(
            "the feature classifier needs square images (dataset is {h}×{w})"
        )));
    }
    let len = dataset.len();
    let holdout = cfg.holdout.min(len / 5);
    if holdout == 0 {
        return Err(MetricsError::Config(format!(
            "{} has {len} items: too few to hold out a test split (need at least 5)",
            dataset.name()
        )));
    }
    let mut net_cfg = FeatureNetConfig::small(c, h, dataset.num_classes());
    if let Some(widths) = &cfg.widths {
        net_cfg.strides = (0..widths.len()).map(|l| 1 + l % 2).collect();
        net_cfg.widths = widths.clone();
    }
    let model: FeatureNet<B> = net_cfg.init(cfg.seed, device)?;
    let plan = FitPlan {
        dataset: dataset.clone(),
        train: 0..len - holdout,
        batch: cfg.batch,
        seed: cfg.seed,
        workers: cfg.workers,
        steps: cfg.steps,
        log_every: 25,
    };
    let optim = AdamWConfig::new().with_weight_decay(cfg.weight_decay as f32);
    // Warm-up over the first 5% of the steps, then cosine decay to 5% of the peak.
    let warmup = (cfg.steps / 20).max(1);
    let lr = |step: u64| {
        if step < warmup {
            cfg.lr * (step + 1) as f64 / warmup as f64
        } else {
            let p = (step - warmup) as f64 / (cfg.steps - warmup).max(1) as f64;
            cfg.lr * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
        }
    };
    let loss = |model: &FeatureNet<B>, batch: Batch, _step: u64| {
        let n = batch.shape[0];
        let x = Tensor::<B, 4>::from_data(TensorData::new(batch.x, batch.shape), device);
        let y = Tensor::<B, 1, Int>::from_data(TensorData::new(batch.y, [n]), device);
        Ok::<_, MetricsError>(cross_entropy(model.logits(x), y))
    };
    let (model, losses) = fit(model, optim, plan, lr, loss, |log| {
        on_progress(FeatureProgress {
            step: log.step,
            total: log.total,
            loss: log.loss,
            accuracy: log.count_per_item,
        })
    })?;
    let net = model.valid();
    let held_out_accuracy = accuracy(&net, dataset.as_ref(), len - holdout..len, device)?;
    let info = FeatureModelInfo {
        kind: FEATURE_MODEL_KIND.into(),
        config: net_cfg,
        data: cfg.data.clone(),
        data_seed: cfg.seed,
        image_size: cfg.image_size,
        steps: cfg.steps,
        held_out_accuracy,
        held_out_n: holdout,
    };
    if let Some(dir) = out_dir {
        save_feature_net(&net, &info, dir)?;
    }
    Ok(FeatureTrainSummary {
        net,
        info,
        final_loss: losses.last,
    })
}
