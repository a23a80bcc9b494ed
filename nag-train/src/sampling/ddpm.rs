//! Discrete samplers over a (respaced) [`DdpmSchedule`]: DiT's ancestral sampler and DDIM.
//!
//! Both walk the table from its last entry `k = len−1` down to `k = 0`, evaluate the model at
//! `TimePoint { tau: schedule.tau(k), ddpm_index: Some(schedule.timestep_map[k]) }` (the network
//! is fed the *original* index, REFERENCE §3) and form
//! `x̂0 = √(1/ᾱ_k)·x − √(1/ᾱ_k − 1)·ε` (for non-ε models through `nag_core::prediction`).

use burn::tensor::{backend::Backend, Tensor};
use nag_core::ddpm::DdpmSchedule;
use nag_core::prediction::Prediction;
use nag_core::schedule::NoiseSchedule;

use super::{
    check_finite, check_noise, coefs, evaluate, lin, DiffusionModel, NoiseSource, Result,
    SamplingError, StepCallback, StepInfo, TimePoint,
};

/// The fixed variance of an ancestral step when the model gives no variance channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FixedVariance {
    /// `FIXED_SMALL`: the posterior variance `β̃_k`, log clipped at k = 0
    /// (`posterior_log_variance_clipped`).
    Small,
    /// `FIXED_LARGE` (DiT's choice when `learn_sigma = False`): `β_k`, with `β̃_1` at k = 0
    /// (`log(append(posterior_variance[1], betas[1:]))`).
    #[default]
    Large,
}

/// Options of [`sample_ddpm`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DdpmOptions {
    /// Variance used when the model returns no `var_interp` or `learned_variance` is off.
    pub fixed_variance: FixedVariance,
    /// Use the model's learned-range variance channels when present (DiT default: true).
    pub learned_variance: bool,
    /// Clamp x̂0 to `[−1, 1]` (pixel-space models; DiT's latents are not clipped).
    pub clip_x0: bool,
}

impl Default for DdpmOptions {
    /// DiT's sampling: learned range if available, else fixed-large, no clipping.
    fn default() -> Self {
        Self {
            fixed_variance: FixedVariance::Large,
            learned_variance: true,
            clip_x0: false,
        }
    }
}

/// Options of [`sample_ddim`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DdimOptions {
    /// η ≥ 0: 0 is deterministic DDIM, 1 matches the ancestral sampler's posterior variance β̃.
    pub eta: f64,
    /// Clamp x̂0 to `[−1, 1]`.
    pub clip_x0: bool,
}

impl Default for DdimOptions {
    fn default() -> Self {
        Self {
            eta: 0.0,
            clip_x0: false,
        }
    }
}

fn validate(schedule: &DdpmSchedule) -> Result<()> {
    let n = schedule.len();
    if n == 0
        || schedule.timestep_map.len() != n
        || schedule.alphas_cumprod.len() != n
        || schedule.alphas_cumprod_prev.len() != n
    {
        return Err(SamplingError::Shape(format!(
            "inconsistent DDPM tables: {} betas, {} ᾱ, {} ᾱ_prev, {} timesteps",
            n,
            schedule.alphas_cumprod.len(),
            schedule.alphas_cumprod_prev.len(),
            schedule.timestep_map.len()
        )));
    }
    if let Some(&a) = schedule
        .alphas_cumprod
        .iter()
        .find(|a| !(**a > 0.0 && **a < 1.0))
    {
        return Err(SamplingError::InvalidOption {
            name: "alphas_cumprod",
            value: a,
            expected: "every ᾱ_k in (0, 1)",
        });
    }
    Ok(())
}

fn time_point(schedule: &DdpmSchedule, k: usize) -> TimePoint {
    TimePoint {
        tau: schedule.tau(k),
        ddpm_index: Some(schedule.timestep_map[k]),
    }
}

/// x̂0 at table entry k: the reference's `√(1/ᾱ)·x − √(1/ᾱ−1)·ε` for ε models, otherwise the
/// `nag-core` conversion at the table's exact α = √ᾱ_k, σ = √(1−ᾱ_k) (α', σ' from the table's
/// continuous view, needed only for velocity models); optionally clamped to `[−1, 1]`.
fn x0_hat<B: Backend>(
    schedule: &DdpmSchedule,
    k: usize,
    kind: Prediction,
    x: &Tensor<B, 4>,
    pred: Tensor<B, 4>,
    clip: bool,
) -> Result<Tensor<B, 4>> {
    let x0 = match kind {
        Prediction::Eps => {
            let (c1, c2) = schedule.x0_from_eps_coefs(k);
            lin(x.clone(), c1, pred, -c2)
        }
        _ => {
            let tau = schedule.tau(k);
            let mut c = schedule.coefficients(tau);
            c.alpha = schedule.alphas_cumprod[k].sqrt();
            c.sigma = (1.0 - schedule.alphas_cumprod[k]).sqrt();
            let (a, b) = coefs(kind, Prediction::X0, &c, tau)?;
            lin(x.clone(), a, pred, b)
        }
    };
    Ok(if clip { x0.clamp(-1.0, 1.0) } else { x0 })
}

/// `log` of the fixed variance at entry k.
fn fixed_log_variance(schedule: &DdpmSchedule, k: usize, kind: FixedVariance) -> f64 {
    match kind {
        FixedVariance::Small => schedule.posterior_log_variance_clipped(k),
        FixedVariance::Large if k == 0 => schedule.posterior_log_variance_clipped(0),
        FixedVariance::Large => schedule.betas[k].ln(),
    }
}

/// DiT's ancestral sampler (`p_sample_loop`, REFERENCE §3) over an already respaced table.
///
/// For `k = len−1 … 0`: evaluate the model at `(timestep_map[k], τ_k)`, form x̂0 (no clipping
/// unless [`DdpmOptions::clip_x0`]), the posterior mean
/// `μ = β_k√ᾱ_{k−1}/(1−ᾱ_k)·x̂0 + (1−ᾱ_{k−1})√α_k/(1−ᾱ_k)·x`, and
/// `x ← μ + exp(½·log var)·z` with `z ~ N(0, I)` only when `k > 0`. The log-variance is the
/// learned range `f·log β_k + (1−f)·log β̃_k(clipped)`, `f = (v+1)/2`, when the model returns
/// `var_interp = v` (and [`DdpmOptions::learned_variance`]), otherwise [`FixedVariance`].
/// `x_t` is the initial state at `τ = schedule.tau(len−1)` (1 for DiT's tables). One model
/// evaluation and (for k > 0) one noise draw per entry.
pub fn sample_ddpm<B, M, N>(
    model: &mut M,
    schedule: &DdpmSchedule,
    x_t: Tensor<B, 4>,
    noise: &mut N,
    options: &DdpmOptions,
    mut callback: StepCallback<'_, B>,
) -> Result<Tensor<B, 4>>
where
    B: Backend,
    M: DiffusionModel<B> + ?Sized,
    N: NoiseSource<B> + ?Sized,
{
    validate(schedule)?;
    let kind = model.prediction();
    let device = x_t.device();
    let shape = x_t.dims();
    let mut x = x_t;
    for (step, k) in (0..schedule.len()).rev().enumerate() {
        let at = time_point(schedule, k);
        let out = evaluate(model, x.clone(), at)?;
        let x0 = x0_hat(schedule, k, kind, &x, out.pred, options.clip_x0)?;
        let mean = lin(
            x.clone(),
            schedule.posterior_mean_coef2(k),
            x0.clone(),
            schedule.posterior_mean_coef1(k),
        );
        let x_next = if k > 0 {
            let z = noise.normal(shape, &device);
            check_noise(&z, shape)?;
            match (options.learned_variance, out.var_interp) {
                (true, Some(v)) => {
                    let min_log = schedule.posterior_log_variance_clipped(k);
                    let max_log = schedule.betas[k].ln();
                    // log var = min + f·(max − min), f = (v+1)/2.
                    let log_var = v
                        .add_scalar(1.0)
                        .mul_scalar(0.5 * (max_log - min_log))
                        .add_scalar(min_log);
                    mean + log_var.mul_scalar(0.5).exp() * z
                }
                _ => {
                    let std = (0.5 * fixed_log_variance(schedule, k, options.fixed_variance)).exp();
                    mean + z.mul_scalar(std)
                }
            }
        } else {
            mean
        };
        let info = StepInfo {
            step,
            at,
            x,
            x0_hat: x0,
            tau_next: if k > 0 { schedule.tau(k - 1) } else { 0.0 },
            x_next,
        };
        x = end_step(info, &mut callback)?;
    }
    Ok(x)
}

/// DDIM (guided-diffusion's `ddim_sample_loop`) over an already respaced table.
///
/// For `k = len−1 … 0`: x̂0 as in [`sample_ddpm`], `ε̂ = (√(1/ᾱ_k)·x − x̂0)/√(1/ᾱ_k − 1)`
/// (recomputed from x̂0, as the reference, so clipping is consistent),
/// `σ_k = η·√((1−ᾱ_{k−1})/(1−ᾱ_k))·√(1 − ᾱ_k/ᾱ_{k−1})`,
/// `x ← √ᾱ_{k−1}·x̂0 + √(1 − ᾱ_{k−1} − σ_k²)·ε̂ + σ_k·z`, noise only when `k > 0` and `σ_k > 0`
/// (η = 0 draws none). η = 1 gives the ancestral sampler's posterior variance β̃. η must be ≥ 0
/// and small enough that `1 − ᾱ_{k−1} − σ_k² ≥ 0` (always true for η ≤ 1).
pub fn sample_ddim<B, M, N>(
    model: &mut M,
    schedule: &DdpmSchedule,
    x_t: Tensor<B, 4>,
    options: &DdimOptions,
    noise: &mut N,
    mut callback: StepCallback<'_, B>,
) -> Result<Tensor<B, 4>>
where
    B: Backend,
    M: DiffusionModel<B> + ?Sized,
    N: NoiseSource<B> + ?Sized,
{
    validate(schedule)?;
    let eta = options.eta;
    if !(eta.is_finite() && eta >= 0.0) {
        return Err(SamplingError::InvalidOption {
            name: "eta",
            value: eta,
            expected: "finite and ≥ 0",
        });
    }
    // Check η against every step before evaluating anything.
    let mut sigmas = Vec::with_capacity(schedule.len());
    for k in 0..schedule.len() {
        let (ab, abp) = (schedule.alphas_cumprod[k], schedule.alphas_cumprod_prev[k]);
        let sigma = eta * ((1.0 - abp) / (1.0 - ab)).sqrt() * (1.0 - ab / abp).max(0.0).sqrt();
        let rest = 1.0 - abp - sigma * sigma;
        if rest < -1e-12 {
            return Err(SamplingError::InvalidOption {
                name: "eta",
                value: eta,
                expected: "small enough that 1 − ᾱ_prev − σ² ≥ 0 at every step (η ≤ 1 always is)",
            });
        }
        sigmas.push((sigma, rest.max(0.0).sqrt()));
    }
    let kind = model.prediction();
    let device = x_t.device();
    let shape = x_t.dims();
    let mut x = x_t;
    for (step, k) in (0..schedule.len()).rev().enumerate() {
        let at = time_point(schedule, k);
        let out = evaluate(model, x.clone(), at)?;
        let x0 = x0_hat(schedule, k, kind, &x, out.pred, options.clip_x0)?;
        let (c1, c2) = schedule.x0_from_eps_coefs(k);
        let (sigma, dir) = sigmas[k];
        // √ᾱ_prev·x̂0 + dir·(c1·x − x̂0)/c2
        let abp_sqrt = schedule.alphas_cumprod_prev[k].sqrt();
        let mut x_next = lin(x.clone(), dir * c1 / c2, x0.clone(), abp_sqrt - dir / c2);
        if k > 0 && sigma > 0.0 {
            let z = noise.normal(shape, &device);
            check_noise(&z, shape)?;
            x_next = x_next + z.mul_scalar(sigma);
        }
        let info = StepInfo {
            step,
            at,
            x,
            x0_hat: x0,
            tau_next: if k > 0 { schedule.tau(k - 1) } else { 0.0 },
            x_next,
        };
        x = end_step(info, &mut callback)?;
    }
    Ok(x)
}

/// The end of a step: the new state checked finite and shown to the callback.
fn end_step<B: Backend>(
    info: StepInfo<B>,
    callback: &mut StepCallback<'_, B>,
) -> Result<Tensor<B, 4>> {
    check_finite(&info.x_next, info.step, info.tau_next)?;
    let x_next = info.x_next.clone();
    if let Some(cb) = callback.as_mut() {
        cb(info);
    }
    Ok(x_next)
}
