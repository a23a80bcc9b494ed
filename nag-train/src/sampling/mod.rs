//! Samplers for DiT (discrete DDPM) and SiT (continuous transport) models.
//!
//! Written k-diffusion style: each sampler is a small pure function over a model, an initial state
//! `x_T` and a schedule, returning the final state. Guidance (CFG, NAG) is *not* inside the
//! samplers: it lives in a wrapper that implements [`DiffusionModel`] and returns the already
//! guided output, so every sampler works with every guidance rule.
//!
//! Time is the paper's everywhere: `τ ∈ [0, 1]`, `τ = 0` data, `τ = 1` noise,
//! `x_τ = α(τ)·x0 + σ(τ)·ε`, velocity `v = dx/dτ`. Samplers integrate from `τ ≈ 1` down to
//! `τ ≈ 0`. SiT's code clock `t = 1 − τ` appears only in comments that relate a formula to SiT's.
//!
//! | sampler | file | reference |
//! |---|---|---|
//! | [`sample_ddpm`] | `ddpm.rs` | DiT's ancestral `p_sample_loop` (REFERENCE §3) |
//! | [`sample_ddim`] | `ddpm.rs` | DDIM with η (guided-diffusion's `ddim_sample_loop`) |
//! | [`sample_sde`]  | `sde.rs`  | SiT's reverse SDE (Euler–Maruyama / Heun + last step, REFERENCE §4) |
//! | [`sample_ode`]  | `ode.rs`  | probability-flow ODE (Euler, Heun, adaptive Dormand–Prince 5(4)) |
//!
//! Every sampler accepts an optional per-step callback receiving a [`StepInfo`] (the state the
//! model saw, its nominal τ, the model's x̂0 and the state after the step); the noise-shift analysis
//! records every intermediate state through it. After every step the state is checked for
//! non-finite values (one reduction per step) and a [`SamplingError::NonFinite`] is returned.
//! Scalars (schedule coefficients) are f64 from `nag-core`; tensors are the backend's float type
//! (f32).

use burn::tensor::{backend::Backend, ElementConversion, Tensor};
use nag_core::prediction::{conversion, Prediction};
use nag_core::schedule::{Coefficients, Schedule};

mod ddpm;
mod noise;
mod ode;
mod sde;
#[cfg(test)]
mod tests;

pub use ddpm::{sample_ddim, sample_ddpm, DdimOptions, DdpmOptions, FixedVariance};
pub use noise::{NoiseSource, SeededNormal, ZeroNoise};
pub use ode::{sample_ode, OdeMethod, OdeOptions, OdeOutput};
pub use sde::{sample_sde, DiffusionForm, LastStep, SdeMethod, SdeOptions};

/// The time at which a model is evaluated, shared by the whole batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimePoint {
    /// Nominal noise level in the paper's clock (0 = data, 1 = noise).
    pub tau: f64,
    /// For discrete (DDPM/DDIM) samplers, the index of the *original* (un-respaced) process that
    /// DiT feeds its timestep embedder (`DdpmSchedule::timestep_map[k]`); `None` for continuous
    /// samplers, where the model derives its input from `tau` (SiT: `t = 1 − τ`).
    pub ddpm_index: Option<usize>,
}

impl TimePoint {
    /// A continuous time point (`ddpm_index = None`).
    pub fn continuous(tau: f64) -> Self {
        Self {
            tau,
            ddpm_index: None,
        }
    }
}

/// One model evaluation.
#[derive(Debug, Clone)]
pub struct ModelOutput<B: Backend> {
    /// The prediction, of the kind given by [`DiffusionModel::prediction`], same shape as `x`.
    pub pred: Tensor<B, 4>,
    /// DiT `learn_sigma` variance channels: the interpolation value `v ∈ [−1, 1]` of the
    /// learned-range log-variance `f·log β + (1−f)·log β̃`, `f = (v+1)/2`; same shape as `x`.
    /// Used by [`sample_ddpm`] only.
    pub var_interp: Option<Tensor<B, 4>>,
}

impl<B: Backend> ModelOutput<B> {
    /// An output without variance channels.
    pub fn new(pred: Tensor<B, 4>) -> Self {
        Self {
            pred,
            var_interp: None,
        }
    }
}

/// A (possibly guided) denoising network as the samplers see it.
pub trait DiffusionModel<B: Backend> {
    /// What `pred` is: [`Prediction::Eps`] for DiT, [`Prediction::Velocity`] (paper clock,
    /// `dx/dτ`, i.e. minus SiT's `dx/dt`) for SiT.
    fn prediction(&self) -> Prediction;
    /// One (already guided) evaluation at a time point shared by the batch; `x` is `[N, C, H, W]`.
    fn predict(&mut self, x: Tensor<B, 4>, at: TimePoint) -> ModelOutput<B>;
}

impl<B: Backend, M: DiffusionModel<B> + ?Sized> DiffusionModel<B> for &mut M {
    fn prediction(&self) -> Prediction {
        (**self).prediction()
    }
    fn predict(&mut self, x: Tensor<B, 4>, at: TimePoint) -> ModelOutput<B> {
        (**self).predict(x, at)
    }
}

impl<B: Backend, M: DiffusionModel<B> + ?Sized> DiffusionModel<B> for Box<M> {
    fn prediction(&self) -> Prediction {
        (**self).prediction()
    }
    fn predict(&mut self, x: Tensor<B, 4>, at: TimePoint) -> ModelOutput<B> {
        (**self).predict(x, at)
    }
}

/// What a sampler reports after each step.
#[derive(Debug, Clone)]
pub struct StepInfo<B: Backend> {
    /// Step index in sampling order, from 0.
    pub step: usize,
    /// Where the model was evaluated: the nominal τ of `x` (and the DDPM index for discrete
    /// samplers).
    pub at: TimePoint,
    /// The state the model was evaluated at (for SiT's Heun SDE step: after the step's noise
    /// injection, which is the state the network sees at nominal τ).
    pub x: Tensor<B, 4>,
    /// The model's estimate of x0 at (`x`, `at`) (after clipping, if the sampler clips).
    pub x0_hat: Tensor<B, 4>,
    /// Nominal τ of `x_next`.
    pub tau_next: f64,
    /// The state after the step.
    pub x_next: Tensor<B, 4>,
}

/// The optional per-step callback every sampler takes.
pub type StepCallback<'a, B> = Option<&'a mut dyn FnMut(StepInfo<B>)>;

/// Errors from the samplers. Bad options are reported before any model evaluation.
#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    /// An option is outside its valid range.
    #[error("invalid sampler option {name} = {value}: {expected}")]
    InvalidOption {
        /// Option name.
        name: &'static str,
        /// The value given.
        value: f64,
        /// What was expected.
        expected: &'static str,
    },
    /// The state contains NaN or ±∞ after a step.
    #[error("non-finite values in the sampler state after step {step} (τ = {tau})")]
    NonFinite {
        /// Step index (sampling order, from 0).
        step: usize,
        /// Nominal τ of the state that went non-finite.
        tau: f64,
    },
    /// A prediction conversion (ε/x̂0/v/score) is undefined at this τ, e.g. ε → v at pure noise
    /// on the Linear path, or a score where σ = 0. Use [`TimeOffsets`] to stay away from the end.
    #[error("prediction conversion undefined at τ = {tau}")]
    Conversion {
        /// The τ.
        tau: f64,
        /// The error from `nag-core`.
        #[source]
        source: nag_core::Error,
    },
    /// A schedule coefficient or the SDE diffusion coefficient is not finite at this τ.
    #[error("{what} is not finite at τ = {tau}; move the integration interval away from it (TimeOffsets)")]
    Singular {
        /// The quantity.
        what: &'static str,
        /// The τ.
        tau: f64,
    },
    /// Tensors of inconsistent shapes (model output vs state, noise, schedule tables).
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The adaptive ODE solver's step size fell below what f64 time can resolve.
    #[error("adaptive step size underflow at τ = {tau} (step {step_size})")]
    StepSizeUnderflow {
        /// Where.
        tau: f64,
        /// The step size.
        step_size: f64,
    },
    /// The adaptive ODE solver hit its evaluation budget before reaching the end.
    #[error("adaptive ODE solver used its {max_evals} model evaluations and stopped at τ = {tau}")]
    TooManyEvaluations {
        /// The budget ([`OdeOptions::max_evals`]).
        max_evals: usize,
        /// Where it stopped.
        tau: f64,
    },
}

/// Result with [`SamplingError`].
pub type Result<T> = core::result::Result<T, SamplingError>;

/// Offsets keeping a continuous sampler's interval away from the ends of `[0, 1]`, where some
/// conversions are singular (SiT's `sample_eps`, applied as in its `check_interval`).
///
/// The integration starts at `τ = 1 − start` (the initial `x_T` is taken to be a state at that
/// level) and, for the ODE and for the SDE without a last step, ends at `τ = end`. With a last
/// SDE step the SDE grid ends at `τ = last_step_size` instead and the last step goes to 0.
///
/// Where they are needed: ε/x̂0/score models cannot give a velocity at `τ = 1` on the Linear and
/// GVP paths (α = 0 makes x independent of x0), no model gives a score at `τ = 0` (σ = 0), the VP
/// path has `σ' = ∞` at `τ = 0`, and SiT's SBDM diffusion `w` is infinite where α = 0.
/// Velocity models on Linear/GVP need none for the ODE (SiT integrates the full `[0, 1]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeOffsets {
    /// Start at `τ = 1 − start`; in `[0, 1)`.
    pub start: f64,
    /// End at `τ = end` (ODE; SDE without last step); in `[0, 1)`.
    pub end: f64,
}

impl Default for TimeOffsets {
    fn default() -> Self {
        Self::NONE
    }
}

impl TimeOffsets {
    /// The full interval `τ: 1 → 0`.
    pub const NONE: Self = Self {
        start: 0.0,
        end: 0.0,
    };

    /// SiT's default `sample_eps` (`create_transport`): `1e-3` for the VP path (and, here, a DDPM
    /// table read as a continuous schedule) and for non-velocity models on Linear/GVP; `0` for
    /// velocity models on Linear/GVP.
    pub fn sit_sample_eps(schedule: &Schedule, prediction: Prediction) -> f64 {
        match schedule {
            Schedule::Vp(_) | Schedule::Ddpm(_) => 1e-3,
            _ if prediction != Prediction::Velocity => 1e-3,
            _ => 0.0,
        }
    }

    /// SiT's `check_interval(sde=False)` for the probability-flow ODE: VP ends at
    /// `τ = eps`; Linear/GVP with a non-velocity model use `[eps, 1 − eps]`; otherwise no offset.
    pub fn sit_ode(schedule: &Schedule, prediction: Prediction) -> Self {
        let eps = Self::sit_sample_eps(schedule, prediction);
        match schedule {
            Schedule::Vp(_) | Schedule::Ddpm(_) => Self {
                start: 0.0,
                end: eps,
            },
            _ => Self {
                start: eps,
                end: eps,
            },
        }
    }

    /// SiT's `check_interval(sde=True)`: VP starts at `τ = 1`; Linear/GVP start at `τ = 1 − eps`
    /// when the diffusion is SBDM or the model is not a velocity model, else at 1; `end = eps`
    /// (used only without a last step). Deviation: SiT's velocity models have `eps = 0`, so SiT
    /// would evaluate SBDM's `w` at α = 0 where it is infinite; this uses `1e-3` there.
    pub fn sit_sde(schedule: &Schedule, prediction: Prediction, diffusion: DiffusionForm) -> Self {
        let eps = Self::sit_sample_eps(schedule, prediction);
        match schedule {
            Schedule::Vp(_) | Schedule::Ddpm(_) => Self {
                start: 0.0,
                end: eps,
            },
            _ if diffusion == DiffusionForm::Sbdm => Self {
                start: eps.max(1e-3),
                end: eps,
            },
            _ if prediction != Prediction::Velocity => Self {
                start: eps,
                end: eps,
            },
            _ => Self {
                start: 0.0,
                end: eps,
            },
        }
    }

    /// Checks both offsets are in `[0, 1)`.
    pub(crate) fn validate(&self) -> Result<()> {
        for (name, v) in [("t_offsets.start", self.start), ("t_offsets.end", self.end)] {
            if !(v.is_finite() && (0.0..1.0).contains(&v)) {
                return Err(SamplingError::InvalidOption {
                    name,
                    value: v,
                    expected: "in [0, 1)",
                });
            }
        }
        Ok(())
    }
}

/// Evaluates the model and checks the output shapes against `x`.
pub(crate) fn evaluate<B: Backend, M: DiffusionModel<B> + ?Sized>(
    model: &mut M,
    x: Tensor<B, 4>,
    at: TimePoint,
) -> Result<ModelOutput<B>> {
    let dims = x.dims();
    let out = model.predict(x, at);
    if out.pred.dims() != dims {
        return Err(SamplingError::Shape(format!(
            "model prediction {:?} for a state {:?}",
            out.pred.dims(),
            dims
        )));
    }
    if let Some(v) = &out.var_interp {
        if v.dims() != dims {
            return Err(SamplingError::Shape(format!(
                "model variance channels {:?} for a state {:?}",
                v.dims(),
                dims
            )));
        }
    }
    Ok(out)
}

/// `Err(NonFinite)` unless every value of `x` is finite (one sum, read back as a scalar).
pub(crate) fn check_finite<B: Backend>(x: &Tensor<B, 4>, step: usize, tau: f64) -> Result<()> {
    let s: f64 = x.clone().sum().into_scalar().elem();
    if s.is_finite() {
        Ok(())
    } else {
        Err(SamplingError::NonFinite { step, tau })
    }
}

/// Checks a noise tensor has the state's shape.
pub(crate) fn check_noise<B: Backend>(z: &Tensor<B, 4>, shape: [usize; 4]) -> Result<()> {
    if z.dims() == shape {
        Ok(())
    } else {
        Err(SamplingError::Shape(format!(
            "noise source returned {:?} for {:?}",
            z.dims(),
            shape
        )))
    }
}

/// `(a, b)` with `to = a·x + b·pred` at `c` ([`conversion`]), as a sampler error.
pub(crate) fn coefs(
    from: Prediction,
    to: Prediction,
    c: &Coefficients,
    tau: f64,
) -> Result<(f64, f64)> {
    let (a, b) =
        conversion(from, to, c).map_err(|source| SamplingError::Conversion { tau, source })?;
    if a.is_finite() && b.is_finite() {
        Ok((a, b))
    } else {
        Err(SamplingError::Singular {
            what: "prediction conversion",
            tau,
        })
    }
}

/// `a·x + b·p` (skipping the `x` term when `a = 0`).
pub(crate) fn lin<B: Backend>(x: Tensor<B, 4>, a: f64, p: Tensor<B, 4>, b: f64) -> Tensor<B, 4> {
    if a == 0.0 {
        p.mul_scalar(b)
    } else {
        x.mul_scalar(a) + p.mul_scalar(b)
    }
}

/// NumPy-style `linspace(a, b, n)` in f64 with the last point exactly `b`.
pub(crate) fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    let step = (b - a) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| a + i as f64 * step).collect();
    v[n - 1] = b;
    v
}
