//! Measuring the noise shift along sampling trajectories.
//!
//! At every sampler step the state `x̂` the model is evaluated at has a *nominal* noise level τ.
//! A [`NoiseMeter`] estimates its *actual* level: the mean of a posterior p(τ | x̂), exactly for
//! Gaussian-mixture data ([`ExactMeter`], nag-core's closed form) or through a trained
//! noise-level estimator g_φ. The shift is `δ = E[τ | x̂] − τ` per sample; [`ShiftRecorder`]
//! collects its mean and quantiles per step (the paper measures δ > 0, largest near τ → 0).

use burn::tensor::{backend::Backend, Tensor};
use nag_core::gmm::GaussianMixture;
use nag_core::schedule::NoiseSchedule;
use serde::{Deserialize, Serialize};

use crate::sampling::StepInfo;

/// Estimates the noise level of states.
pub trait NoiseMeter<B: Backend> {
    /// Posterior-mean τ of each of the `N` states in `x` (`[N, C, H, W]`); `labels` are the
    /// samples' classes (for class-conditional meters).
    fn posterior_mean_tau(
        &mut self,
        x: Tensor<B, 4>,
        labels: &[i64],
    ) -> Result<Vec<f64>, ShiftError>;
}

/// Errors of the shift measurement.
#[derive(Debug, thiserror::Error)]
pub enum ShiftError {
    /// nag-core rejected the input (e.g. dimension mismatch with the mixture).
    #[error("exact posterior: {0}")]
    Core(#[from] nag_core::Error),
    /// Anything else, described.
    #[error("{0}")]
    Other(String),
}

/// The exact posterior p(τ | x) for data from a known Gaussian mixture, on a uniform τ-grid
/// `τ_j = (j + ½)/J` with the schedule's `(α(τ_j), σ(τ_j))` and a uniform prior.
pub struct ExactMeter<'a> {
    mixture: &'a GaussianMixture,
    taus: Vec<f64>,
    grid: Vec<(f64, f64)>,
}

impl<'a> ExactMeter<'a> {
    /// A meter over `points` grid points for data drawn from `mixture` and noised by `schedule`.
    pub fn new<S: NoiseSchedule + ?Sized>(
        mixture: &'a GaussianMixture,
        schedule: &S,
        points: usize,
    ) -> Self {
        let taus: Vec<f64> = (0..points.max(2))
            .map(|j| (j as f64 + 0.5) / points.max(2) as f64)
            .collect();
        let grid = taus
            .iter()
            .map(|&t| (schedule.alpha(t), schedule.sigma(t)))
            .collect();
        Self {
            mixture,
            taus,
            grid,
        }
    }
}

impl<B: Backend> NoiseMeter<B> for ExactMeter<'_> {
    fn posterior_mean_tau(
        &mut self,
        x: Tensor<B, 4>,
        _labels: &[i64],
    ) -> Result<Vec<f64>, ShiftError> {
        let n = x.dims()[0];
        let values: Vec<f32> = x
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| ShiftError::Other(format!("reading states: {e:?}")))?;
        let probs = self
            .mixture
            .posterior_over_grid(&values, &self.grid, None)?;
        let k = self.taus.len();
        (0..n)
            .map(|i| {
                Ok(nag_core::gmm::posterior_mean(
                    &probs[i * k..(i + 1) * k],
                    &self.taus,
                )?)
            })
            .collect()
    }
}

/// A trained noise-level estimator g_φ(τ | x) as a meter (any data): its posterior mean over
/// its τ-bins.
pub struct EstimatorMeter<B: Backend> {
    estimator: nag_models::estimator::NoiseEstimator<B>,
    class_conditional: bool,
}

impl<B: Backend> EstimatorMeter<B> {
    /// Loads an estimator saved by `cargo xtask estimator train` (folder or file).
    pub fn load(path: &std::path::Path, device: &B::Device) -> Result<Self, ShiftError> {
        let (estimator, meta) = crate::estimator::load_estimator::<B>(path, device)
            .map_err(|e| ShiftError::Other(crate::error_chain(&e)))?;
        let class_conditional = meta.model.num_classes > 0;
        Ok(Self {
            estimator,
            class_conditional,
        })
    }
}

impl<B: Backend> NoiseMeter<B> for EstimatorMeter<B> {
    fn posterior_mean_tau(
        &mut self,
        x: Tensor<B, 4>,
        labels: &[i64],
    ) -> Result<Vec<f64>, ShiftError> {
        let y = self.class_conditional.then(|| {
            Tensor::<B, 1, burn::tensor::Int>::from_data(
                burn::tensor::TensorData::new(labels.to_vec(), [labels.len()]),
                &x.device(),
            )
        });
        crate::estimator::estimate_tau(&self.estimator, x, y)
            .map(|(mean, _)| mean)
            .map_err(|e| ShiftError::Other(e.to_string()))
    }
}

/// δ statistics of one sampler step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShiftStep {
    /// Step index in sampling order.
    pub step: usize,
    /// Nominal τ of the state the model saw.
    pub tau: f64,
    /// Mean measured τ over samples.
    pub measured_tau: f64,
    /// Mean δ = measured − nominal.
    pub delta_mean: f64,
    /// δ quantiles at 5, 25, 50, 75, 95 %.
    pub delta_quantiles: [f64; 5],
}

/// Collects per-step shift statistics from a sampler's step callback.
pub struct ShiftRecorder<'m, B: Backend> {
    meter: &'m mut dyn NoiseMeter<B>,
    labels: Vec<i64>,
    /// Measure every `every`-th step only (1 = all).
    pub every: usize,
    steps: Vec<ShiftStep>,
    error: Option<ShiftError>,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

impl<'m, B: Backend> ShiftRecorder<'m, B> {
    /// A recorder measuring with `meter`; `labels` are the samples' classes.
    pub fn new(meter: &'m mut dyn NoiseMeter<B>, labels: &[i64]) -> Self {
        Self {
            meter,
            labels: labels.to_vec(),
            every: 1,
            steps: Vec::new(),
            error: None,
        }
    }

    /// Handles one sampler step (pass `|info| recorder.observe(info)` as the callback).
    pub fn observe(&mut self, info: StepInfo<B>) {
        if self.error.is_some() || !info.step.is_multiple_of(self.every.max(1)) {
            return;
        }
        let tau = info.at.tau;
        match self.meter.posterior_mean_tau(info.x, &self.labels) {
            Ok(measured) => {
                let mut deltas: Vec<f64> = measured.iter().map(|m| m - tau).collect();
                deltas.sort_by(f64::total_cmp);
                let n = deltas.len().max(1) as f64;
                self.steps.push(ShiftStep {
                    step: info.step,
                    tau,
                    measured_tau: measured.iter().sum::<f64>() / n,
                    delta_mean: deltas.iter().sum::<f64>() / n,
                    delta_quantiles: [0.05, 0.25, 0.5, 0.75, 0.95].map(|q| quantile(&deltas, q)),
                });
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// The per-step statistics, or the first measurement error.
    pub fn finish(self) -> Result<Vec<ShiftStep>, ShiftError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.steps),
        }
    }
}

/// Mean δ over the steps whose nominal τ is in the last `fraction` of sampling (τ ≤ fraction).
pub fn late_delta(steps: &[ShiftStep], fraction: f64) -> f64 {
    let late: Vec<f64> = steps
        .iter()
        .filter(|s| s.tau <= fraction)
        .map(|s| s.delta_mean)
        .collect();
    if late.is_empty() {
        f64::NAN
    } else {
        late.iter().sum::<f64>() / late.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{
        self, DdpmOptions, DiffusionModel, ModelOutput, NoiseSource, SeededNormal, TimePoint,
    };
    use burn_ndarray::NdArray;
    use nag_core::ddpm::DdpmSchedule;
    use nag_core::prediction::Prediction;

    type B = NdArray<f32>;

    /// Exact ε-predictor for x0 ~ N(μ, s²I): E[x0|x] = μ + αs²/(α²s²+σ²)(x − αμ).
    struct Gaussian {
        mu: f64,
        s: f64,
        schedule: DdpmSchedule,
    }

    impl DiffusionModel<B> for Gaussian {
        fn prediction(&self) -> Prediction {
            Prediction::Eps
        }
        fn predict(&mut self, x: Tensor<B, 4>, at: TimePoint) -> ModelOutput<B> {
            let (a, s) = (self.schedule.alpha(at.tau), self.schedule.sigma(at.tau));
            let gain = a * self.s * self.s / (a * a * self.s * self.s + s * s);
            let x0 = x
                .clone()
                .sub_scalar(a * self.mu)
                .mul_scalar(gain)
                .add_scalar(self.mu);
            ModelOutput::new((x - x0.mul_scalar(a)).div_scalar(s))
        }
    }

    fn measure(steps: usize) -> Vec<ShiftStep> {
        let (mu, s, dim, n) = (0.3, 0.1, 768usize, 32usize);
        let base = DdpmSchedule::dit();
        let mixture = GaussianMixture::isotropic(dim, vec![1.0], vec![vec![mu; dim]], s).unwrap();
        let mut model = Gaussian {
            mu,
            s,
            schedule: base.clone(),
        };
        let mut meter = ExactMeter::new(&mixture, &base, 400);
        let labels = vec![0i64; n];
        let mut rec = ShiftRecorder::<B>::new(&mut meter, &labels);
        let mut noise = SeededNormal::new(3);
        let x_t = noise.normal([n, 3, 16, 16], &Default::default());
        let schedule = base.with_steps(steps).unwrap();
        let mut cb = |info: StepInfo<B>| rec.observe(info);
        sampling::sample_ddpm(
            &mut model,
            &schedule,
            x_t,
            &mut noise,
            &DdpmOptions::default(),
            Some(&mut cb),
        )
        .unwrap();
        rec.finish().unwrap()
    }

    #[test]
    fn exact_denoiser_has_no_shift_with_many_steps_and_some_with_few() {
        let many = measure(250);
        let few = measure(5);
        let late_many = late_delta(&many, 0.2).abs();
        let late_few = late_delta(&few, 0.2).abs();
        assert!(late_many < 0.01, "δ with 250 steps: {late_many}");
        // Few steps: positive shift (more noise than nominal), as the paper reports.
        assert!(late_delta(&few, 0.2) > 0.05, "δ with 5 steps: {late_few}");
        assert!(
            late_few > 5.0 * late_many.max(1e-3),
            "δ few {late_few} vs many {late_many}"
        );
        assert!(many
            .iter()
            .all(|s| s.delta_quantiles[0] <= s.delta_quantiles[4]));
    }

    #[test]
    fn quantiles_interpolate() {
        let v = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(quantile(&v, 0.5), 1.5);
        assert_eq!(quantile(&v, 1.0), 3.0);
    }
}
