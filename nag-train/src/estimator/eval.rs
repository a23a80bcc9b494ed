//! Measuring with a trained estimator ([`estimate_tau`]) and validating it against the exact
//! posterior of Gaussian-mixture data ([`validate_on_gmm`]).

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use nag_core::gmm::GaussianMixture;
use nag_core::schedule::{NoiseSchedule, Schedule};
use nag_models::estimator::{bin_centres, NoiseEstimator};
use serde::{Deserialize, Serialize};

use crate::data::{stream_rng, Dataset, GmmDataset};

use super::noise::{draw_time, normals};
use super::{EstimatorError, DOMAIN_VALIDATE, EVAL_CHUNK};

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

/// The table `xtask estimator validate` prints, one measure a line.
impl std::fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows = [
            ("mean |τ̂ − τ|", self.mean_abs_error_vs_true_tau),
            (
                "mean |τ̂ − E_exact[τ|x]|",
                self.mean_abs_error_vs_exact_posterior_mean,
            ),
            ("mean total variation", self.mean_total_variation),
            (
                "exact posterior: mean |E[τ|x] − τ|",
                self.exact_mean_abs_error_vs_true_tau,
            ),
            (
                "constant 0.5: mean |0.5 − E_exact[τ|x]|",
                self.constant_mean_abs_error_vs_exact_posterior_mean,
            ),
        ];
        for (i, (name, value)) in rows.iter().enumerate() {
            let end = if i + 1 < rows.len() { "\n" } else { "" };
            write!(f, "  {name:<42} {value:.4}{end}")?;
        }
        Ok(())
    }
}

/// The options of `xtask estimator validate`: which estimator, how many states.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct ValidateOptions {
    /// The estimator: its folder or its .safetensors / .json file.
    #[arg(long, default_value = "runs/estimator")]
    pub estimator: std::path::PathBuf,
    /// Number of forward-noised states.
    #[arg(long, default_value_t = 256)]
    pub n: usize,
    /// Seed of the states.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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
