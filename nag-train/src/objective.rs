//! Training objectives: DiT's DDPM ε-prediction (with the learn_sigma hybrid loss) and SiT's
//! interpolant objectives. Each takes clean data, the drawn times and noise, and the network
//! output, and returns the per-sample loss `[N]`; the trainer averages.
//!
//! Per-sample schedule coefficients are gathered from nag-core's f64 tables on the CPU and
//! uploaded as `[N, 1, 1, 1]` tensors; no coefficient is computed a second time here.

use burn::tensor::{backend::Backend, Tensor, TensorData};
use nag_core::ddpm::DdpmSchedule;
use nag_core::schedule::NoiseSchedule;
use serde::{Deserialize, Serialize};

/// What an interpolant model is trained to predict (SiT's `--prediction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum InterpolantTarget {
    /// Velocity in SiT's clock, `dx/dt = −dx/dτ = −(α'·x0 + σ'·ε)`.
    #[default]
    Velocity,
    /// The noise ε.
    Noise,
    /// The score `−ε/σ` (trained as `σ·score = −ε` for stability, SiT's convention).
    Score,
}

/// Loss weighting for interpolant objectives (SiT's `--loss-weight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LossWeight {
    /// Plain MSE.
    #[default]
    None,
    /// Weight by `(α'σ − σ'α)/α`-style velocity weighting: here `1/σ²`, clipped at 1e4
    /// (documented deviation: SiT's exact forms depend on the path).
    Velocity,
    /// Likelihood weighting `w(τ) = σ'/σ`-proportional, clipped at 1e4.
    Likelihood,
}

/// `[N, 1, 1, 1]` tensor from per-sample f64 values.
pub fn per_sample<B: Backend>(values: &[f64], device: &B::Device) -> Tensor<B, 4> {
    let data: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(data, [values.len(), 1, 1, 1]), device)
}

/// Mean over all but the batch dimension: `[N, …] → [N]`.
pub fn mean_flat<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 1> {
    let n = x.dims()[0];
    x.reshape([n as i32, -1]).mean_dim(1).reshape([n])
}

/// `x_k = √ᾱ_k·x0 + √(1−ᾱ_k)·ε` for per-sample table indices `k`.
pub fn ddpm_q_sample<B: Backend>(
    schedule: &DdpmSchedule,
    x0: Tensor<B, 4>,
    k: &[usize],
    noise: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let device = x0.device();
    let a: Vec<f64> = k
        .iter()
        .map(|&i| schedule.alphas_cumprod[i].sqrt())
        .collect();
    let s: Vec<f64> = k
        .iter()
        .map(|&i| (1.0 - schedule.alphas_cumprod[i]).sqrt())
        .collect();
    x0 * per_sample::<B>(&a, &device) + noise * per_sample::<B>(&s, &device)
}

/// KL divergence between diagonal Gaussians, elementwise:
/// `½(−1 + logv₂ − logv₁ + e^{logv₁−logv₂} + (μ₁−μ₂)²·e^{−logv₂})`.
pub fn normal_kl<B: Backend>(
    mean1: Tensor<B, 4>,
    logvar1: Tensor<B, 4>,
    mean2: Tensor<B, 4>,
    logvar2: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let diff = mean1 - mean2;
    ((logvar2.clone() - logvar1.clone()).add_scalar(-1.0)
        + (logvar1 - logvar2.clone()).exp()
        + diff.clone() * diff * logvar2.neg().exp())
    .mul_scalar(0.5)
}

/// `Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715x³)))`, the reference's fast normal CDF.
fn approx_standard_normal_cdf<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let c = (2.0 / core::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar(c);
    inner.tanh().add_scalar(1.0).mul_scalar(0.5)
}

/// Log-likelihood of data in [−1, 1] discretised to 8 bits under a Gaussian (the reference's
/// `discretized_gaussian_log_likelihood`): bins of width 2/255, open-ended at ±1.
pub fn discretized_gaussian_log_likelihood<B: Backend>(
    x: Tensor<B, 4>,
    means: Tensor<B, 4>,
    log_scales: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let centered = x.clone() - means;
    let inv_stdv = log_scales.neg().exp();
    let cdf_plus =
        approx_standard_normal_cdf(inv_stdv.clone() * centered.clone().add_scalar(1.0 / 255.0));
    let cdf_min = approx_standard_normal_cdf(inv_stdv * centered.add_scalar(-1.0 / 255.0));
    let log_cdf_plus = cdf_plus.clone().clamp_min(1e-12).log();
    let log_one_minus_cdf_min = cdf_min.clone().neg().add_scalar(1.0).clamp_min(1e-12).log();
    let log_delta = (cdf_plus - cdf_min).clamp_min(1e-12).log();
    let low = x.clone().lower_elem(-0.999);
    let high = x.greater_elem(0.999);
    log_delta
        .mask_where(high, log_one_minus_cdf_min)
        .mask_where(low, log_cdf_plus)
}

/// DiT's training loss per sample: `mse(ε̂, ε)` plus, with learned variance, the variational
/// bound term in bits with the mean detached (`vb`): `KL(q(x_{k−1}|x_k,x0) ‖ p(x_{k−1}|x_k))/ln 2`
/// for k > 0 and `−log p(x0|x_1)/ln 2` (discretised decoder) at k = 0.
///
/// `model_out` has `C` channels (ε) or `2C` (ε, then v ∈ [−1, 1] for the learned range).
pub fn ddpm_loss<B: Backend>(
    schedule: &DdpmSchedule,
    x0: Tensor<B, 4>,
    x_t: Tensor<B, 4>,
    k: &[usize],
    noise: Tensor<B, 4>,
    model_out: Tensor<B, 4>,
) -> Tensor<B, 1> {
    let [n, c, _, _] = x0.dims();
    let out_c = model_out.dims()[1];
    let eps = model_out.clone().narrow(1, 0, c);
    let mse = mean_flat((eps.clone() - noise).powi_scalar(2));
    if out_c == c {
        return mse;
    }
    let v = model_out.narrow(1, c, c);
    let device = x0.device();
    let table = |f: &dyn Fn(usize) -> f64| -> Tensor<B, 4> {
        let vals: Vec<f64> = k.iter().map(|&i| f(i)).collect();
        per_sample::<B>(&vals, &device)
    };
    // Posterior q(x_{k−1} | x_k, x0).
    let coef1 = table(&|i| schedule.posterior_mean_coef1(i));
    let coef2 = table(&|i| schedule.posterior_mean_coef2(i));
    let true_mean = x0.clone() * coef1.clone() + x_t.clone() * coef2.clone();
    let true_logvar = table(&|i| schedule.posterior_log_variance_clipped(i));
    // Model p(x_{k−1} | x_k) with ε detached: only the variance learns from this term.
    let (c1, c2) = (
        table(&|i| schedule.x0_from_eps_coefs(i).0),
        table(&|i| schedule.x0_from_eps_coefs(i).1),
    );
    let x0_hat = x_t.clone() * c1 - eps.detach() * c2;
    let model_mean = x0_hat * coef1 + x_t * coef2;
    let min_log = true_logvar.clone();
    let max_log = table(&|i| schedule.betas[i].ln());
    let frac = v.add_scalar(1.0).mul_scalar(0.5);
    let model_logvar = frac.clone() * max_log + frac.neg().add_scalar(1.0) * min_log;
    let kl = mean_flat(normal_kl(
        true_mean,
        true_logvar,
        model_mean.clone(),
        model_logvar.clone(),
    ))
    .div_scalar(core::f64::consts::LN_2);
    let nll = mean_flat(discretized_gaussian_log_likelihood(
        x0,
        model_mean,
        model_logvar.mul_scalar(0.5),
    ))
    .neg()
    .div_scalar(core::f64::consts::LN_2);
    let at_zero: Vec<bool> = k.iter().map(|&i| i == 0).collect();
    let mask =
        Tensor::<B, 1, burn::tensor::Bool>::from_data(TensorData::new(at_zero, [n]), &device);
    mse + kl.mask_where(mask, nll)
}

/// SiT interpolant loss per sample at paper-clock times `tau` (the network was fed SiT's
/// clock `1 − τ`): the state is `x_τ = α·x0 + σ·ε` and the target is given by `target`.
pub fn interpolant_loss<B: Backend, S: NoiseSchedule + ?Sized>(
    schedule: &S,
    x0: Tensor<B, 4>,
    noise: Tensor<B, 4>,
    tau: &[f64],
    model_out: Tensor<B, 4>,
    target: InterpolantTarget,
    weight: LossWeight,
) -> Tensor<B, 1> {
    let device = x0.device();
    let c = x0.dims()[1];
    let pred = model_out.narrow(1, 0, c);
    let coefs: Vec<_> = tau.iter().map(|&t| schedule.coefficients(t)).collect();
    let col = |f: &dyn Fn(&nag_core::schedule::Coefficients) -> f64| -> Tensor<B, 4> {
        let vals: Vec<f64> = coefs.iter().map(f).collect();
        per_sample::<B>(&vals, &device)
    };
    let goal = match target {
        // SiT clock: dx/dt = −(α'·x0 + σ'·ε).
        InterpolantTarget::Velocity => {
            (x0 * col(&|c| c.d_alpha) + noise * col(&|c| c.d_sigma)).neg()
        }
        InterpolantTarget::Noise => noise,
        InterpolantTarget::Score => noise.neg(),
    };
    let per = mean_flat((pred - goal).powi_scalar(2));
    let w: Vec<f64> = coefs
        .iter()
        .map(|c| match weight {
            LossWeight::None => 1.0,
            LossWeight::Velocity => (1.0 / (c.sigma * c.sigma)).min(1e4),
            LossWeight::Likelihood => (c.d_sigma / c.sigma).abs().min(1e4),
        })
        .collect();
    if weight == LossWeight::None {
        per
    } else {
        let wt = Tensor::<B, 1>::from_data(
            TensorData::new(w.iter().map(|&v| v as f32).collect::<Vec<_>>(), [w.len()]),
            &device,
        );
        per * wt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_ndarray::NdArray;

    type B = NdArray<f32>;

    fn randn(shape: [usize; 4], seed: u64) -> Tensor<B, 4> {
        let n: usize = shape.iter().product();
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64).max(1e-12)
        };
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let (u1, u2) = (next(), next());
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
            })
            .collect();
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    #[test]
    fn discretised_likelihood_sums_to_one_over_the_bins() {
        // 256 bin centres of 8-bit data in [−1, 1] under one Gaussian.
        let xs: Vec<f32> = (0..256).map(|i| i as f32 / 127.5 - 1.0).collect();
        let x = Tensor::<B, 4>::from_data(TensorData::new(xs, [1, 1, 1, 256]), &Default::default());
        let means = x.zeros_like().add_scalar(0.1);
        let log_scales = x.zeros_like().add_scalar((0.3f64).ln());
        let p = discretized_gaussian_log_likelihood(x, means, log_scales)
            .exp()
            .sum();
        let total: f32 = p.into_scalar();
        assert!((total - 1.0).abs() < 1e-3, "{total}");
    }

    #[test]
    fn perfect_prediction_has_zero_hybrid_loss() {
        let s = DdpmSchedule::dit().with_steps(50).unwrap();
        let shape = [3, 2, 4, 4];
        let x0 = randn(shape, 1).clamp(-1.0, 1.0);
        let noise = randn(shape, 2);
        let k = [5usize, 20, 49];
        let x_t = ddpm_q_sample(&s, x0.clone(), &k, noise.clone());
        // ε exact and v = −1 (model variance = posterior variance) ⇒ MSE = 0 and KL = 0.
        let out = Tensor::cat(vec![noise.clone(), noise.zeros_like().add_scalar(-1.0)], 1);
        let loss = ddpm_loss(&s, x0.clone(), x_t.clone(), &k, noise.clone(), out);
        let v: Vec<f32> = loss.into_data().to_vec().unwrap();
        for l in v {
            assert!(l.abs() < 1e-4, "{l}");
        }
        // A wrong variance costs something.
        let out = Tensor::cat(vec![noise.clone(), noise.zeros_like().add_scalar(1.0)], 1);
        let loss: f32 = ddpm_loss(&s, x0, x_t, &k, noise, out).mean().into_scalar();
        assert!(loss > 1e-3);
    }

    #[test]
    fn velocity_target_is_sits_clock() {
        use nag_core::schedule::Linear;
        let shape = [2, 1, 2, 2];
        let x0 = randn(shape, 3);
        let noise = randn(shape, 4);
        // Linear path: dx/dt (SiT) = x_data − ε.
        let v = x0.clone() - noise.clone();
        let loss = interpolant_loss(
            &Linear,
            x0,
            noise,
            &[0.3, 0.8],
            v,
            InterpolantTarget::Velocity,
            LossWeight::None,
        );
        let total: f32 = loss.sum().into_scalar();
        assert!(total.abs() < 1e-10);
    }
}
