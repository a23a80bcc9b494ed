//! Measuring the noise shift along sampling trajectories.
//!
//! At every sampler step the state `x̂` the model is evaluated at has a *nominal* noise level τ.
//! A [`NoiseMeter`] estimates its *actual* level: the mean of a posterior p(τ | x̂), exactly for
//! Gaussian-mixture data ([`ExactMeter`], nag-core's closed form) or through a trained
//! noise-level estimator g_φ. The shift is `δ = E[τ | x̂] − τ` per sample; [`ShiftRecorder`]
//! collects its mean and quantiles per step (the paper measures δ > 0, largest near τ → 0).
//! A posterior mean is a biased estimate of τ even for perfectly noised states, so with a
//! [`Calibration`] the recorder also reports the *excess* δ: the same meter's reading on
//! forward-noised data at the same nominal τ, subtracted.
//!
//! The analytic shift of a schedule (no sampling) is in `analytic.rs`.

use burn::tensor::{backend::Backend, Tensor};
use nag_core::gmm::GaussianMixture;
use nag_core::schedule::{NoiseSchedule, Schedule};
use serde::{Deserialize, Serialize};

use crate::sampling::{NoiseSource, SeededNormal, StepInfo};
use crate::train::{ObjectiveKind, TrainConfig};

mod analytic;
mod trajectories;
pub use analytic::{analytic_shift, AnalyticRow, AnalyticShift};
pub use trajectories::{
    measure, measure_trajectory_shift, reference_calibration, Setting, ShiftModel, TrajectoryError,
    TrajectoryOptions, TrajectoryShiftConfig, TrajectoryShiftEvent, TrajectoryShiftReport,
};

/// The schedule on which a trained run's noise levels are measured: DDPM's linear β schedule
/// for the `ddpm` objective, the interpolant's own otherwise.
pub fn run_schedule(cfg: &TrainConfig) -> Schedule {
    match cfg.objective {
        ObjectiveKind::Ddpm => Schedule::from_name("ddpm-linear").expect("built-in"),
        other => other.schedule().expect("interpolant objective"),
    }
}

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
    /// Standard error of `delta_mean` (sample standard deviation / √n).
    #[serde(default)]
    pub delta_se: f64,
    /// δ quantiles at 5, 25, 50, 75, 95 %.
    pub delta_quantiles: [f64; 5],
    /// The same meter's mean reading on forward-noised data at this nominal level
    /// ([`Calibration`]); `None` without calibration.
    #[serde(default)]
    pub calibrated_tau: Option<f64>,
    /// Excess δ = `measured_tau − calibrated_tau`: the shift beyond the meter's own bias.
    #[serde(default)]
    pub excess_delta: Option<f64>,
    /// Standard error of `excess_delta` (the two sets are independent).
    #[serde(default)]
    pub excess_delta_se: Option<f64>,
    /// The effective noise level: the nominal τ' at which forward-noised data reads
    /// `measured_tau` on the calibration curve (linear between the recorded levels, the
    /// bracketing segment nearest to τ); `None` outside the curve's range or without
    /// calibration.
    #[serde(default)]
    pub effective_tau: Option<f64>,
}

/// The meter's own reading on forward-noised data: at a nominal level τ the reference states
/// `x_τ = α(τ)·x0 + σ(τ)·ε` of real `x0` (fresh ε from the seed and τ, the same in every
/// setting) are measured with the same meter, so `excess δ = mean E[τ|x̂] − mean E[τ|x_τ]`
/// removes the estimator's bias (the posterior mean regresses towards the middle of its τ range
/// even for perfectly noised states). Readings are cached per τ and reused by every setting
/// measured in the same run.
pub struct Calibration<B: Backend> {
    x0: Tensor<B, 4>,
    labels: Vec<i64>,
    schedule: Schedule,
    seed: u64,
    cache: Vec<(u64, Vec<f64>)>,
}

impl<B: Backend> Calibration<B> {
    /// Calibration with reference data `x0` (`[M, C, H, W]`, real items with classes `labels`)
    /// noised by `schedule` (the model's, in the paper's clock) with noise from `seed`.
    pub fn new(
        x0: Tensor<B, 4>,
        labels: &[i64],
        schedule: Schedule,
        seed: u64,
    ) -> Result<Self, ShiftError> {
        let m = x0.dims()[0];
        if m < 2 || labels.len() != m {
            return Err(ShiftError::Other(format!(
                "calibration needs at least 2 reference items and one label each (got {m} items, {} labels)",
                labels.len()
            )));
        }
        Ok(Self {
            x0,
            labels: labels.to_vec(),
            schedule,
            seed,
            cache: Vec::new(),
        })
    }

    /// Per-reference-item readings `E[τ | x_τ]` at nominal `tau`.
    pub fn readings(
        &mut self,
        meter: &mut dyn NoiseMeter<B>,
        tau: f64,
    ) -> Result<Vec<f64>, ShiftError> {
        let key = tau.to_bits();
        if let Some((_, r)) = self.cache.iter().find(|(k, _)| *k == key) {
            return Ok(r.clone());
        }
        let (alpha, sigma) = (self.schedule.alpha(tau), self.schedule.sigma(tau));
        let mut noise = SeededNormal::new(self.seed ^ key.rotate_left(17));
        let eps = noise.normal(self.x0.dims(), &self.x0.device());
        let x = self.x0.clone().mul_scalar(alpha) + eps.mul_scalar(sigma);
        let r = meter.posterior_mean_tau(x, &self.labels)?;
        self.cache.push((key, r.clone()));
        Ok(r)
    }
}

/// Collects per-step shift statistics from a sampler's step callback.
pub struct ShiftRecorder<'m, B: Backend> {
    meter: &'m mut dyn NoiseMeter<B>,
    calibration: Option<&'m mut Calibration<B>>,
    labels: Vec<i64>,
    /// Measure every `every`-th step only (1 = all).
    pub every: usize,
    /// The late part of sampling for [`LateShift`]: nominal τ ≤ `late_fraction`.
    pub late_fraction: f64,
    steps: Vec<ShiftStep>,
    /// Per measured step: the per-sample readings and the calibration's.
    readings: Vec<(Vec<f64>, Option<Vec<f64>>)>,
    error: Option<ShiftError>,
}

/// What a [`ShiftRecorder`] measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ShiftTrace {
    /// Per-step statistics.
    pub steps: Vec<ShiftStep>,
    /// Averages over the late part of sampling.
    pub late: LateShift,
}

/// δ averaged over the late steps (nominal τ ≤ `fraction`). Standard errors treat each
/// trajectory's late average as one draw (steps of one trajectory are correlated).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LateShift {
    /// Late part: nominal τ ≤ fraction.
    pub fraction: f64,
    /// Steps measured in it.
    pub steps: usize,
    /// Mean raw δ = E[τ|x̂] − τ.
    pub delta: f64,
    /// Its standard error.
    pub delta_se: f64,
    /// Mean excess δ (calibrated); `None` without calibration.
    pub excess_delta: Option<f64>,
    /// Its standard error.
    pub excess_delta_se: Option<f64>,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// `(mean, standard error of the mean)`; the error is NaN for fewer than 2 values.
fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

impl<'m, B: Backend> ShiftRecorder<'m, B> {
    /// A recorder measuring with `meter`; `labels` are the samples' classes.
    pub fn new(meter: &'m mut dyn NoiseMeter<B>, labels: &[i64]) -> Self {
        Self {
            meter,
            calibration: None,
            labels: labels.to_vec(),
            every: 1,
            late_fraction: 0.2,
            steps: Vec::new(),
            readings: Vec::new(),
            error: None,
        }
    }

    /// Also measures forward-noised reference data at every recorded level (excess δ).
    pub fn with_calibration(mut self, calibration: &'m mut Calibration<B>) -> Self {
        self.calibration = Some(calibration);
        self
    }

    /// Handles one sampler step (pass `|info| recorder.observe(info)` as the callback).
    pub fn observe(&mut self, info: StepInfo<B>) {
        if self.error.is_some() || !info.step.is_multiple_of(self.every.max(1)) {
            return;
        }
        if let Err(e) = self.record(info.step, info.at.tau, info.x) {
            self.error = Some(e);
        }
    }

    fn record(&mut self, step: usize, tau: f64, x: Tensor<B, 4>) -> Result<(), ShiftError> {
        let measured = self.meter.posterior_mean_tau(x, &self.labels)?;
        let calibrated = match self.calibration.as_deref_mut() {
            Some(cal) => Some(cal.readings(self.meter, tau)?),
            None => None,
        };
        let mut deltas: Vec<f64> = measured.iter().map(|m| m - tau).collect();
        let (delta_mean, delta_se) = mean_se(&deltas);
        deltas.sort_by(f64::total_cmp);
        let measured_tau = delta_mean + tau;
        let (calibrated_tau, excess_delta, excess_delta_se) = match &calibrated {
            Some(c) => {
                let (cm, cse) = mean_se(c);
                (
                    Some(cm),
                    Some(measured_tau - cm),
                    Some((delta_se * delta_se + cse * cse).sqrt()),
                )
            }
            None => (None, None, None),
        };
        self.steps.push(ShiftStep {
            step,
            tau,
            measured_tau,
            delta_mean,
            delta_se,
            delta_quantiles: [0.05, 0.25, 0.5, 0.75, 0.95].map(|q| quantile(&deltas, q)),
            calibrated_tau,
            excess_delta,
            excess_delta_se,
            effective_tau: None,
        });
        self.readings.push((measured, calibrated));
        Ok(())
    }

    /// The per-step statistics and their late averages, or the first measurement error.
    pub fn finish(mut self) -> Result<ShiftTrace, ShiftError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let mut curve: Vec<(f64, f64)> = self
            .steps
            .iter()
            .filter_map(|s| Some((s.tau, s.calibrated_tau?)))
            .collect();
        curve.sort_by(|a, b| a.0.total_cmp(&b.0));
        for s in &mut self.steps {
            s.effective_tau = invert_curve(&curve, s.measured_tau, s.tau);
        }
        let late: Vec<usize> = (0..self.steps.len())
            .filter(|&i| self.steps[i].tau <= self.late_fraction)
            .collect();
        // Per-trajectory late averages of δ, and per-reference-item averages of the calibration.
        let samples = late_average(
            late.iter()
                .map(|&i| (self.steps[i].tau, Some(self.readings[i].0.as_slice()))),
        );
        let reference = late_average(
            late.iter()
                .map(|&i| (self.steps[i].tau, self.readings[i].1.as_deref())),
        );
        let (delta, delta_se) = samples.as_deref().map_or((f64::NAN, f64::NAN), mean_se);
        let (excess_delta, excess_delta_se) = match &reference {
            Some(r) => {
                let (cm, cse) = mean_se(r);
                (
                    Some(delta - cm),
                    Some((delta_se * delta_se + cse * cse).sqrt()),
                )
            }
            None => (None, None),
        };
        Ok(ShiftTrace {
            late: LateShift {
                fraction: self.late_fraction,
                steps: late.len(),
                delta,
                delta_se,
                excess_delta,
                excess_delta_se,
            },
            steps: self.steps,
        })
    }
}

/// `τ'` with `c(τ') = m` on the piecewise-linear curve `(τ_i, c_i)` (sorted by τ), from the
/// bracketing segment nearest to `near`; `None` when no segment brackets `m`.
fn invert_curve(curve: &[(f64, f64)], m: f64, near: f64) -> Option<f64> {
    curve
        .windows(2)
        .filter_map(|w| {
            let ((t0, c0), (t1, c1)) = (w[0], w[1]);
            let inside = (c0.min(c1)..=c0.max(c1)).contains(&m) && c1 != c0;
            inside.then(|| t0 + (m - c0) * (t1 - t0) / (c1 - c0))
        })
        .min_by(|a, b| (a - near).abs().total_cmp(&(b - near).abs()))
}

/// Per item, the mean over the given steps of `reading − τ`; `None` when there are no steps or
/// a step has no readings.
fn late_average<'a>(steps: impl Iterator<Item = (f64, Option<&'a [f64]>)>) -> Option<Vec<f64>> {
    let mut acc: Option<Vec<f64>> = None;
    let mut count = 0usize;
    for (tau, readings) in steps {
        let readings = readings?;
        let acc = acc.get_or_insert_with(|| vec![0.0; readings.len()]);
        acc.iter_mut()
            .zip(readings)
            .for_each(|(a, r)| *a += r - tau);
        count += 1;
    }
    acc.map(|a| a.into_iter().map(|v| v / count as f64).collect())
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
        rec.finish().unwrap().steps
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
    fn calibration_curve_inverts_linearly() {
        let curve = [(0.1, 0.15), (0.2, 0.22), (0.3, 0.31)];
        assert!((invert_curve(&curve, 0.22, 0.0).unwrap() - 0.2).abs() < 1e-12);
        assert!((invert_curve(&curve, 0.265, 0.3).unwrap() - 0.25).abs() < 1e-12);
        assert_eq!(invert_curve(&curve, 0.5, 0.3), None);
    }

    #[test]
    fn quantiles_interpolate() {
        let v = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(quantile(&v, 0.5), 1.5);
        assert_eq!(quantile(&v, 1.0), 3.0);
    }
}
