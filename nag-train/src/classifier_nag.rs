//! Classifier NAG with a trained noise-level estimator (the paper's classifier form):
//! `s̃(x|τ) = s(x|τ) + w·∇ₓ log g_φ(τ | x)`, as a model wrapper.
//!
//! `g_φ` gives a posterior over `K` equal τ-bins, read as a piecewise-constant density, so
//! `∇ₓ log g_φ(τ|x) = ∇ₓ log p̂(bin(τ) | x)` (autodiff through the estimator). In the wrapped
//! model's prediction units the term is `w·b_τ·∇ₓ log g_φ`, with `b_τ` the score's coefficient
//! in the prediction at τ (`−σ` for ε; [`conversion`] from the score). Where `b_τ` is undefined
//! (a velocity at α = 0) the term is left out.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use nag_core::guidance::Interval;
use nag_core::prediction::conversion;
use nag_core::schedule::{NoiseSchedule, Schedule};
use nag_models::estimator::NoiseEstimator;

use crate::estimator::{tau_bin, EstimatorError};
use crate::sampling::{DiffusionModel, ModelOutput, TimePoint};

/// `∇ₓ log p̂(bin(τ) | x[, y])` of the estimator for every state of `x` (`[N, C, H, W]`).
pub fn log_posterior_grad<A: AutodiffBackend>(
    est: &NoiseEstimator<A>,
    x: Tensor<A::InnerBackend, 4>,
    tau: f64,
    labels: Option<&[i64]>,
) -> Result<Tensor<A::InnerBackend, 4>, EstimatorError> {
    let n = x.dims()[0];
    let device = x.device();
    let x = Tensor::<A, 4>::from_inner(x).require_grad();
    let y = labels.map(|l| {
        let inner = Tensor::<A::InnerBackend, 1, Int>::from_data(
            TensorData::new(l.to_vec(), [l.len()]),
            &device,
        );
        Tensor::<A, 1, Int>::from_inner(inner)
    });
    let bin = tau_bin(tau, est.config().num_bins);
    let logp = log_softmax(est.try_forward(x.clone(), y)?, 1);
    // Each state's log-probability depends on that state only, so the gradient of the sum is
    // the per-state gradient.
    let grads = logp.narrow(1, bin, 1).sum().backward();
    x.grad(&grads).ok_or_else(|| {
        EstimatorError::Input(format!(
            "no gradient reached the {n} states through the estimator"
        ))
    })
}

/// A model guided by a trained estimator: `pred + w·b_τ·∇ₓ log g_φ(τ|x)` (see the module docs).
pub struct ClassifierNag<'a, A: AutodiffBackend, M> {
    inner: M,
    estimator: &'a NoiseEstimator<A>,
    /// Labels for a class-conditional estimator.
    labels: Option<Vec<i64>>,
    schedule: Schedule,
    weight: f64,
    interval: Option<Interval>,
}

impl<'a, A: AutodiffBackend, M: DiffusionModel<A::InnerBackend>> ClassifierNag<'a, A, M> {
    /// Guides `inner` (a model on `schedule`, itself unguided or CFG-guided) with weight `w`,
    /// on `interval` of τ if given; `labels` feed a class-conditional estimator.
    pub fn new(
        inner: M,
        estimator: &'a NoiseEstimator<A>,
        labels: Option<Vec<i64>>,
        schedule: Schedule,
        weight: f64,
        interval: Option<Interval>,
    ) -> Self {
        Self {
            inner,
            estimator,
            labels,
            schedule,
            weight,
            interval,
        }
    }
}

impl<A: AutodiffBackend, M: DiffusionModel<A::InnerBackend>> DiffusionModel<A::InnerBackend>
    for ClassifierNag<'_, A, M>
{
    fn prediction(&self) -> nag_core::prediction::Prediction {
        self.inner.prediction()
    }

    fn predict(
        &mut self,
        x: Tensor<A::InnerBackend, 4>,
        at: TimePoint,
    ) -> ModelOutput<A::InnerBackend> {
        let out = self.inner.predict(x.clone(), at);
        let active = self.weight != 0.0 && self.interval.is_none_or(|i| i.contains(at.tau));
        let c = self.schedule.coefficients(at.tau);
        let Ok((_, b)) = conversion(
            nag_core::prediction::Prediction::Score,
            self.prediction(),
            &c,
        ) else {
            return out;
        };
        if !active || !b.is_finite() {
            return out;
        }
        let g = log_posterior_grad(self.estimator, x, at.tau, self.labels.as_deref())
            .expect("the estimator was checked against the data's shape");
        ModelOutput {
            pred: out.pred + g.mul_scalar(self.weight * b),
            var_interp: out.var_interp,
        }
    }
}
