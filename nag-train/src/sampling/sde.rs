//! SiT's reverse-time SDE sampler (REFERENCE §4), in the paper's clock.
//!
//! SiT integrates its clock `t` (0 noise → 1 data) forward with drift `v_t + w(t)·score` and
//! diffusion `√(2w(t))`. With `τ = 1 − t` and `v_τ = dx/dτ = −v_t`, a step from `τ` down to
//! `τ − h` (`h > 0`, i.e. `dt = h`) is
//!
//! `x ← x + h·(−v(x, τ) + w(τ)·score(x, τ)) + √(2·w(τ)·h)·z`,
//!
//! i.e. `dx = [v − w·score]dτ + √(2w)·dW̄` run backwards in τ. For every `w ≥ 0` this has the
//! marginals of the forward process (it is the probability-flow ODE plus Langevin dynamics of
//! strength `w`); `w = g²/2` of the forward SDE is the classic reverse SDE (SiT's "SBDM").
//! `v` and the score come from the model's prediction through `nag_core::prediction`, so one
//! step is a single affine combination `x·(1 + h·a) + pred·(h·b) + √(2wh)·z`.

use burn::tensor::{backend::Backend, Tensor};
use nag_core::prediction::Prediction;
use nag_core::schedule::NoiseSchedule;

use super::{
    check_finite, check_noise, coefs, evaluate, lin, linspace, DiffusionModel, NoiseSource, Result,
    SamplingError, StepCallback, StepInfo, TimeOffsets, TimePoint,
};

/// The SDE integrator (SiT's `--sampling-method` for SDEs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SdeMethod {
    /// Euler–Maruyama: one evaluation per step.
    #[default]
    Euler,
    /// SiT's stochastic Heun: inject the step's noise, `x̂ = x + √(2w(τ)h)·z`, then a Heun
    /// (trapezoidal) step of the drift from `x̂` between `τ` and `τ − h`: two evaluations per step.
    Heun,
}

/// The diffusion coefficient `w` (SiT's `compute_diffusion` forms, times `diffusion_norm`),
/// written in τ (`t = 1 − τ`, SiT derivatives `α̇_t = −α'(τ)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiffusionForm {
    /// `w = norm`.
    Constant,
    /// Score-based diffusion model: `w = g²/2 = σ·σ' − (α'/α)·σ²` (SiT:
    /// `α̇/α·σ² − σσ̇`), which makes the SDE the exact time reversal of the forward SDE. Infinite
    /// where α = 0 (τ = 1 on Linear/GVP): start with an offset ([`TimeOffsets::sit_sde`]).
    Sbdm,
    /// `w = norm·σ(τ)` (SiT's default "sigma" form; `σ = τ` on the Linear path).
    #[default]
    Sigma,
    /// `w = norm·(1 − t) = norm·τ`.
    Linear,
    /// `w = ¼(norm·cos(πt) + 1)² = ¼(1 − norm·cos(πτ))²` (SiT's "decreasing"; `norm` inside).
    Decreasing,
    /// `w = norm·sin²(πt) = norm·sin²(πτ)` (SiT's "increasing-decreasing").
    IncreasingDecreasing,
}

impl DiffusionForm {
    /// `w(τ)` for this form and `norm` on `schedule`.
    pub fn w<S: NoiseSchedule + ?Sized>(&self, schedule: &S, tau: f64, norm: f64) -> f64 {
        use core::f64::consts::PI;
        match self {
            Self::Constant => norm,
            Self::Sbdm => {
                let c = schedule.coefficients(tau);
                norm * (c.sigma * c.d_sigma - c.d_alpha / c.alpha * c.sigma * c.sigma)
            }
            Self::Sigma => norm * schedule.sigma(tau),
            Self::Linear => norm * tau,
            Self::Decreasing => {
                let a = 1.0 - norm * (PI * tau).cos();
                0.25 * a * a
            }
            Self::IncreasingDecreasing => {
                let s = (PI * tau).sin();
                norm * s * s
            }
        }
    }
}

/// The final step from the end of the SDE grid to τ = 0 (SiT's `--last-step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LastStep {
    /// No last step: the sample is the state at the grid's end `τ = t_offsets.end`
    /// (SiT's `last_step=None`, no evaluation).
    None,
    /// A noise-free SDE step: `x + h·(−v + w·score)`, `h = last_step_size` (SiT's default).
    #[default]
    Mean,
    /// Tweedie's formula at the grid's end: `x̂0 = (x + σ²·score)/α`.
    Tweedie,
    /// A probability-flow step: `x − h·v`.
    Euler,
}

/// Options of [`sample_sde`]. The default is SiT's: Euler–Maruyama, `w = σ`, norm 1, last
/// step "Mean" of size 0.04, no offsets (right for velocity models on the Linear path).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SdeOptions {
    /// Integrator.
    pub method: SdeMethod,
    /// Diffusion coefficient form.
    pub diffusion: DiffusionForm,
    /// Scale of the diffusion coefficient (SiT's `--diffusion-norm`, default 1), ≥ 0.
    pub diffusion_norm: f64,
    /// The last step.
    pub last_step: LastStep,
    /// Size of the last step in τ, in (0, 1); the SDE grid ends at this τ (ignored with
    /// [`LastStep::None`]).
    pub last_step_size: f64,
    /// Where the grid starts (`τ = 1 − start`) and, without a last step, ends (`τ = end`).
    pub t_offsets: TimeOffsets,
}

impl Default for SdeOptions {
    fn default() -> Self {
        Self {
            method: SdeMethod::Euler,
            diffusion: DiffusionForm::Sigma,
            diffusion_norm: 1.0,
            last_step: LastStep::Mean,
            last_step_size: 0.04,
            t_offsets: TimeOffsets::NONE,
        }
    }
}

/// The SDE drift in SiT's forward direction, `−v + w·score = a·x + b·pred`, at τ.
fn drift_coefs<S: NoiseSchedule + ?Sized>(
    schedule: &S,
    kind: Prediction,
    tau: f64,
    w: f64,
) -> Result<(f64, f64)> {
    let c = schedule.coefficients(tau);
    let (av, bv) = coefs(kind, Prediction::Velocity, &c, tau)?;
    if w == 0.0 {
        return Ok((-av, -bv));
    }
    let (a_s, b_s) = coefs(kind, Prediction::Score, &c, tau)?;
    Ok((-av + w * a_s, -bv + w * b_s))
}

fn diffusion_at<S: NoiseSchedule + ?Sized>(schedule: &S, o: &SdeOptions, tau: f64) -> Result<f64> {
    let w = o.diffusion.w(schedule, tau, o.diffusion_norm);
    if w.is_finite() && w >= 0.0 {
        Ok(w)
    } else {
        Err(SamplingError::Singular {
            what: "the SDE diffusion coefficient w",
            tau,
        })
    }
}

fn x0_of<S: NoiseSchedule + ?Sized, B: Backend>(
    schedule: &S,
    kind: Prediction,
    tau: f64,
    x: &Tensor<B, 4>,
    pred: Tensor<B, 4>,
) -> Result<Tensor<B, 4>> {
    let (a, b) = coefs(kind, Prediction::X0, &schedule.coefficients(tau), tau)?;
    Ok(lin(x.clone(), a, pred, b))
}

/// SiT's SDE sampler in the paper's clock (module docs for the step).
///
/// `steps` is SiT's `num_sampling_steps` (≥ 2): the grid is `linspace(τ_start, τ_end, steps)`
/// with `τ_start = 1 − t_offsets.start` and `τ_end = last_step_size` (or `t_offsets.end` with
/// [`LastStep::None`]), giving `steps − 1` SDE steps of size `h = (τ_start − τ_end)/(steps − 1)`,
/// then the last step. SiT's default, `steps = 250`, is 249 Euler–Maruyama steps from τ = 1 to
/// 0.04 plus one "Mean" step of 0.04 to τ = 0: 250 evaluations (Heun: 2 per SDE step). `x_t` is
/// the initial state at `τ_start`. One noise draw per SDE step (none when `w = 0`), none in the
/// last step.
pub fn sample_sde<B, M, S, N>(
    model: &mut M,
    schedule: &S,
    x_t: Tensor<B, 4>,
    steps: usize,
    options: &SdeOptions,
    noise: &mut N,
    mut callback: StepCallback<'_, B>,
) -> Result<Tensor<B, 4>>
where
    B: Backend,
    M: DiffusionModel<B> + ?Sized,
    S: NoiseSchedule + ?Sized,
    N: NoiseSource<B> + ?Sized,
{
    if steps < 2 {
        return Err(SamplingError::InvalidOption {
            name: "steps",
            value: steps as f64,
            expected: "at least 2 (SiT's num_sampling_steps: grid points of the SDE)",
        });
    }
    if !(options.diffusion_norm.is_finite() && options.diffusion_norm >= 0.0) {
        return Err(SamplingError::InvalidOption {
            name: "diffusion_norm",
            value: options.diffusion_norm,
            expected: "finite and ≥ 0",
        });
    }
    options.t_offsets.validate()?;
    let has_last = options.last_step != LastStep::None;
    let h_last = options.last_step_size;
    if has_last && !(h_last > 0.0 && h_last < 1.0) {
        return Err(SamplingError::InvalidOption {
            name: "last_step_size",
            value: h_last,
            expected: "in (0, 1)",
        });
    }
    let tau_start = 1.0 - options.t_offsets.start;
    let tau_end = if has_last {
        h_last
    } else {
        options.t_offsets.end
    };
    if tau_start <= tau_end {
        return Err(SamplingError::InvalidOption {
            name: "t_offsets.start",
            value: options.t_offsets.start,
            expected:
                "leaving τ_start = 1 − start above the grid's end (last_step_size or t_offsets.end)",
        });
    }
    let grid = linspace(tau_start, tau_end, steps);
    let h = (tau_start - tau_end) / (steps - 1) as f64;
    // Coefficients for every grid point before any evaluation: singular ones are reported early.
    let kind = model.prediction();
    let mut table = Vec::with_capacity(steps);
    for &tau in &grid {
        let w = diffusion_at(schedule, options, tau)?;
        table.push((w, drift_coefs(schedule, kind, tau, w)?));
    }

    let device = x_t.device();
    let shape = x_t.dims();
    let mut x = x_t;
    for i in 0..steps - 1 {
        let (tau, tau_next) = (grid[i], grid[i + 1]);
        let (w, (a, b)) = table[i];
        let at = TimePoint::continuous(tau);
        let noise_scale = (2.0 * w * h).sqrt();
        let mut draw = || -> Result<Tensor<B, 4>> {
            let z = noise.normal(shape, &device);
            check_noise(&z, shape)?;
            Ok(z)
        };
        let (x_in, pred, x_next) = match options.method {
            SdeMethod::Euler => {
                let out = evaluate(model, x.clone(), at)?;
                let mut x_next = lin(x.clone(), 1.0 + h * a, out.pred.clone(), h * b);
                if w > 0.0 {
                    x_next = x_next + draw()?.mul_scalar(noise_scale);
                }
                (x, out.pred, x_next)
            }
            SdeMethod::Heun => {
                let x_hat = if w > 0.0 {
                    x + draw()?.mul_scalar(noise_scale)
                } else {
                    x
                };
                let out1 = evaluate(model, x_hat.clone(), at)?;
                let k1 = lin(x_hat.clone(), a, out1.pred.clone(), b);
                let x_p = x_hat.clone() + k1.clone().mul_scalar(h);
                let (_, (a2, b2)) = table[i + 1];
                let out2 = evaluate(model, x_p.clone(), TimePoint::continuous(tau_next))?;
                let k2 = lin(x_p, a2, out2.pred, b2);
                let x_next = x_hat.clone() + (k1 + k2).mul_scalar(0.5 * h);
                (x_hat, out1.pred, x_next)
            }
        };
        check_finite(&x_next, i, tau_next)?;
        if let Some(cb) = callback.as_mut() {
            let x0_hat = x0_of(schedule, kind, tau, &x_in, pred)?;
            cb(StepInfo {
                step: i,
                at,
                x: x_in,
                x0_hat,
                tau_next,
                x_next: x_next.clone(),
            });
        }
        x = x_next;
    }

    let at = TimePoint::continuous(tau_end);
    let c = schedule.coefficients(tau_end);
    let (a, b, tau_next) = match options.last_step {
        LastStep::None => return Ok(x),
        LastStep::Mean => {
            let (_, (a, b)) = table[steps - 1];
            (1.0 + h_last * a, h_last * b, tau_end - h_last)
        }
        LastStep::Euler => {
            let (av, bv) = coefs(kind, Prediction::Velocity, &c, tau_end)?;
            (1.0 - h_last * av, -h_last * bv, tau_end - h_last)
        }
        LastStep::Tweedie => {
            let (a_s, b_s) = coefs(kind, Prediction::Score, &c, tau_end)?;
            let s2 = c.sigma * c.sigma;
            ((1.0 + s2 * a_s) / c.alpha, s2 * b_s / c.alpha, 0.0)
        }
    };
    if !(a.is_finite() && b.is_finite()) {
        return Err(SamplingError::Singular {
            what: "the last step's coefficients",
            tau: tau_end,
        });
    }
    let out = evaluate(model, x.clone(), at)?;
    let x_next = lin(x.clone(), a, out.pred.clone(), b);
    let step = steps - 1;
    check_finite(&x_next, step, tau_next.max(0.0))?;
    if let Some(cb) = callback.as_mut() {
        let x0_hat = x0_of(schedule, kind, tau_end, &x, out.pred)?;
        cb(StepInfo {
            step,
            at,
            x,
            x0_hat,
            tau_next: tau_next.max(0.0),
            x_next: x_next.clone(),
        });
    }
    Ok(x_next)
}
