//! [`fit`]: the plain supervised loop of the auxiliary networks (the noise-level estimator
//! g_φ(τ | x) and the feature classifier): one device, one optimiser step per batch of a
//! shuffled train split, a learning rate per step, the mean loss reported every `log_every`
//! steps. What a network learns is the `loss` it is given; the diffusion model's own loop
//! (replicas, micro-batches, EMA, checkpoints) is [`super::train_replicas`].

use std::ops::Range;
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};

use crate::data::{Batch, DataError, Dataset, Loader, LoaderConfig, Subset};

/// What [`fit`] trains on and for how long.
pub struct FitPlan {
    /// The whole dataset; only `train` is read.
    pub dataset: Arc<dyn Dataset>,
    /// The items trained on (the rest is held out by the caller).
    pub train: Range<usize>,
    /// Items per batch.
    pub batch: usize,
    /// Seed of the shuffling.
    pub seed: u64,
    /// Loader worker threads.
    pub workers: usize,
    /// Optimiser steps.
    pub steps: u64,
    /// Report every this many steps (and after the last).
    pub log_every: u64,
}

/// The loss became NaN or infinite at `step` (each caller's error says what to change).
#[derive(Debug, Clone, Copy)]
pub struct NonFiniteLoss {
    /// Step (0-based).
    pub step: u64,
    /// The loss value.
    pub loss: f32,
}

/// One report of [`fit`]: means over the steps since the previous one.
#[derive(Debug, Clone, Copy)]
pub struct FitLog {
    /// Completed steps.
    pub step: u64,
    /// Total steps.
    pub total: u64,
    /// Mean loss.
    pub loss: f64,
    /// The loss function's per-batch count (e.g. correct predictions) per item seen.
    pub count_per_item: f64,
}

/// What [`fit`] returns besides the trained network.
#[derive(Debug, Clone, Copy)]
pub struct FitLosses {
    /// The first reported mean loss.
    pub first: f64,
    /// The last reported mean loss.
    pub last: f64,
}

/// Trains `model` with AdamW (`optim`) for `plan.steps` steps: at step k the batch k of the
/// train split, `loss(model, batch, k) = (ℓ, count)`, `θ ← AdamW(θ, ∇ℓ, lr(k))`. `on_log` gets
/// the mean ℓ and `Σ count / items` every `log_every` steps and after the last. A non-finite ℓ
/// stops the loop before the step is taken.
pub fn fit<B, M, E>(
    mut model: M,
    optim: AdamWConfig,
    plan: FitPlan,
    lr: impl Fn(u64) -> f64,
    mut loss: impl FnMut(&M, Batch, u64) -> Result<(Tensor<B, 1>, usize), E>,
    mut on_log: impl FnMut(FitLog),
) -> Result<(M, FitLosses), E>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    E: From<DataError> + From<NonFiniteLoss>,
{
    let mut optim = optim.init::<B, M>();
    let train_set: Arc<dyn Dataset> = Arc::new(Subset {
        inner: plan.dataset,
        range: plan.train,
    });
    let mut loader = Loader::new(
        train_set,
        LoaderConfig {
            batch_size: plan.batch,
            seed: plan.seed,
            workers: plan.workers,
            ..LoaderConfig::default()
        },
    )?;
    let (mut sum, mut count, mut items, mut n) = (0.0f64, 0usize, 0usize, 0u64);
    let mut losses = FitLosses {
        first: f64::NAN,
        last: f64::NAN,
    };
    for step in 0..plan.steps {
        let rate = lr(step);
        let batch = loader.next_batch()?;
        items += batch.shape[0];
        let (value, c) = loss(&model, batch, step)?;
        let scalar: f32 = value.clone().into_scalar().elem();
        if !scalar.is_finite() {
            return Err(NonFiniteLoss { step, loss: scalar }.into());
        }
        let grads = GradientsParams::from_grads(value.backward(), &model);
        model = optim.step(rate, model, grads);
        sum += scalar as f64;
        count += c;
        n += 1;
        let done = step + 1;
        if done % plan.log_every == 0 || done == plan.steps {
            let mean = sum / n as f64;
            if losses.first.is_nan() {
                losses.first = mean;
            }
            losses.last = mean;
            on_log(FitLog {
                step: done,
                total: plan.steps,
                loss: mean,
                count_per_item: count as f64 / items.max(1) as f64,
            });
            (sum, count, items, n) = (0.0, 0, 0, 0);
        }
    }
    Ok((model, losses))
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::module::Module;
    use burn::nn::{Initializer, Linear, LinearConfig};
    use burn::tensor::TensorData;
    use burn_ndarray::NdArray;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::data::Item;

    type B = Autodiff<NdArray>;

    /// Items `x = (i/len, 1)` with target `y = 3 + 2·x₀` stored as the label ×100.
    struct Line(usize);

    impl Dataset for Line {
        fn len(&self) -> usize {
            self.0
        }
        fn item(
            &self,
            index: usize,
            _rng: &mut ChaCha8Rng,
        ) -> Result<crate::data::Item, DataError> {
            let x = index as f32 / self.0 as f32;
            Ok(Item {
                x: vec![x, 1.0],
                y: (100.0 * (3.0 + 2.0 * x)).round() as i64,
            })
        }
        fn shape(&self) -> [usize; 3] {
            [2, 1, 1]
        }
        fn num_classes(&self) -> usize {
            0
        }
        fn name(&self) -> String {
            "line".into()
        }
    }

    #[derive(Debug)]
    enum Error {
        Data,
        NonFinite(NonFiniteLoss),
    }
    impl From<DataError> for Error {
        fn from(_: DataError) -> Self {
            Self::Data
        }
    }
    impl From<NonFiniteLoss> for Error {
        fn from(e: NonFiniteLoss) -> Self {
            Self::NonFinite(e)
        }
    }

    fn plan(steps: u64) -> FitPlan {
        FitPlan {
            dataset: Arc::new(Line(64)),
            train: 0..48,
            batch: 8,
            seed: 1,
            workers: 0,
            steps,
            log_every: 40,
        }
    }

    /// Mean squared error of a linear map, and the number of items within 0.1 of the target.
    fn mse(model: &Linear<B>, batch: Batch, scale: f32) -> Result<(Tensor<B, 1>, usize), Error> {
        let device = Default::default();
        let n = batch.shape[0];
        let x = Tensor::<B, 2>::from_data(TensorData::new(batch.x, [n, 2]), &device);
        let y: Vec<f32> = batch.y.iter().map(|&v| v as f32 / 100.0).collect();
        let y = Tensor::<B, 2>::from_data(TensorData::new(y, [n, 1]), &device);
        let err = model.forward(x) - y;
        let close = err
            .clone()
            .abs()
            .lower_elem(0.1)
            .int()
            .sum()
            .into_scalar()
            .elem::<i64>();
        Ok(((err.powi_scalar(2).mean() * scale), close as usize))
    }

    #[test]
    fn learns_a_line_and_reports_every_log_every_steps() {
        let device = Default::default();
        // Zero initial weights: the run is the same every time.
        let model = LinearConfig::new(2, 1)
            .with_bias(false)
            .with_initializer(Initializer::Zeros)
            .init::<B>(&device);
        let mut logs = Vec::new();
        let (model, losses) = fit(
            model,
            AdamWConfig::new().with_weight_decay(0.0),
            plan(300),
            |_| 0.05,
            |m, b, _| mse(m, b, 1.0),
            |log| logs.push(log),
        )
        .unwrap();
        let steps: Vec<u64> = logs.iter().map(|l| l.step).collect();
        assert_eq!(steps, [40, 80, 120, 160, 200, 240, 280, 300]);
        assert!(losses.last < 0.01 * losses.first, "{losses:?}");
        assert!(logs[7].count_per_item > 0.8, "{logs:?}");
        let w: Vec<f32> = model.weight.val().into_data().to_vec().unwrap();
        assert!(
            (w[0] - 2.0).abs() < 0.5 && (w[1] - 3.0).abs() < 0.5,
            "{w:?}"
        );
        // Nothing but the valid parameters was touched: one 2×1 weight.
        assert_eq!(model.num_params(), 2);
    }

    #[test]
    fn a_non_finite_loss_stops_at_its_step() {
        let device = Default::default();
        let model = LinearConfig::new(2, 1).init::<B>(&device);
        let result = fit(
            model,
            AdamWConfig::new(),
            plan(10),
            |_| 0.01,
            |m, b, step| mse(m, b, if step == 6 { f32::NAN } else { 1.0 }),
            |_| {},
        );
        match result {
            Err(Error::NonFinite(e)) => assert_eq!(e.step, 6),
            other => panic!("expected a non-finite loss at step 6, got {other:?}"),
        }
    }
}
