//! Probability-flow ODE sampler: `dx/dτ = v(x, τ)` integrated from `τ_start ≈ 1` down to
//! `τ_end ≈ 0`.
//!
//! `v` is the model's prediction converted to a velocity (paper clock, `dx/dτ`) with
//! `nag_core::prediction`; for SiT velocity models it is the output itself (SiT's `dx/dt` has
//! the opposite sign; the model wrapper converts). Fixed-step Euler and Heun (trapezoidal), and
//! adaptive Dormand–Prince 5(4) with the standard error control used by torchdiffeq (which SiT
//! calls): `err = RMS over the whole batch of (y5 − y4)/(atol + rtol·max(|x|, |y5|))`, accept when
//! `err ≤ 1`, next step `h·clamp(0.9·err^(−1/5), 0.2, 10)`, the first step chosen by Hairer's
//! rule; the batch shares one step size, as in SiT.

use burn::tensor::{backend::Backend, ElementConversion, Tensor};
use nag_core::prediction::Prediction;
use nag_core::schedule::NoiseSchedule;

use super::{
    check_finite, coefs, evaluate, lin, linspace, DiffusionModel, Result, SamplingError,
    StepCallback, StepInfo, TimeOffsets, TimePoint,
};

/// The ODE integrator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OdeMethod {
    /// Explicit Euler, `steps` evaluations.
    Euler,
    /// Heun's second-order (trapezoidal) method, `2·steps` evaluations.
    Heun,
    /// Adaptive Dormand–Prince 5(4) (torchdiffeq's `dopri5`), FSAL: 6 new evaluations per
    /// attempted step, plus 2 to start.
    Dopri5 {
        /// Absolute tolerance (SiT: 1e-6), > 0.
        atol: f64,
        /// Relative tolerance (SiT: 1e-3), > 0.
        rtol: f64,
    },
}

impl OdeMethod {
    /// `Dopri5 { atol: 1e-6, rtol: 1e-3 }`, SiT's ODE default.
    pub const SIT_DOPRI5: Self = Self::Dopri5 {
        atol: 1e-6,
        rtol: 1e-3,
    };
}

/// Options of [`sample_ode`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OdeOptions {
    /// Integrator.
    pub method: OdeMethod,
    /// Number of equal steps for Euler/Heun (≥ 1); unused by Dopri5.
    pub steps: usize,
    /// Integrate from `τ = 1 − start` to `τ = end`.
    pub t_offsets: TimeOffsets,
    /// Model evaluation budget of Dopri5 (≥ 1); exceeding it is an error.
    pub max_evals: usize,
}

impl Default for OdeOptions {
    /// SiT's: dopri5 with atol 1e-6, rtol 1e-3, no offsets (right for velocity models on
    /// Linear/GVP; see [`TimeOffsets::sit_ode`]).
    fn default() -> Self {
        Self {
            method: OdeMethod::SIT_DOPRI5,
            steps: 250,
            t_offsets: TimeOffsets::NONE,
            max_evals: 100_000,
        }
    }
}

/// What [`sample_ode`] returns.
#[derive(Debug, Clone)]
pub struct OdeOutput<B: Backend> {
    /// The final state at `τ = t_offsets.end`.
    pub x: Tensor<B, 4>,
    /// Model evaluations used.
    pub nfe: usize,
    /// Accepted steps.
    pub accepted: usize,
    /// Rejected steps (Dopri5 only).
    pub rejected: usize,
}

/// The velocity field with its evaluation counter.
struct Field<'a, M: ?Sized, S: ?Sized> {
    model: &'a mut M,
    schedule: &'a S,
    kind: Prediction,
    nfe: usize,
}

impl<M: ?Sized, S: NoiseSchedule + ?Sized> Field<'_, M, S> {
    /// `(v, pred)` at (x, τ).
    fn eval<B: Backend>(
        &mut self,
        x: &Tensor<B, 4>,
        tau: f64,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>)>
    where
        M: DiffusionModel<B>,
    {
        let c = self.schedule.coefficients(tau);
        let (a, b) = coefs(self.kind, Prediction::Velocity, &c, tau)?;
        self.nfe += 1;
        let out = evaluate(self.model, x.clone(), TimePoint::continuous(tau))?;
        Ok((lin(x.clone(), a, out.pred.clone(), b), out.pred))
    }

    fn x0<B: Backend>(
        &self,
        x: &Tensor<B, 4>,
        pred: Tensor<B, 4>,
        tau: f64,
    ) -> Result<Tensor<B, 4>> {
        let (a, b) = coefs(
            self.kind,
            Prediction::X0,
            &self.schedule.coefficients(tau),
            tau,
        )?;
        Ok(lin(x.clone(), a, pred, b))
    }
}

/// RMS of a tensor (one scalar read back).
fn rms<B: Backend>(t: Tensor<B, 4>) -> f64 {
    let m: f64 = t.square().mean().into_scalar().elem();
    m.sqrt()
}

/// Probability-flow ODE sampler (module docs). `x_t` is the state at `τ = 1 − t_offsets.start`;
/// the result is the state at `τ = t_offsets.end`. The callback fires once per (accepted) step
/// with the state at the step's start, the model's x̂0 there and the state at its end.
pub fn sample_ode<B, M, S>(
    model: &mut M,
    schedule: &S,
    x_t: Tensor<B, 4>,
    options: &OdeOptions,
    mut callback: StepCallback<'_, B>,
) -> Result<OdeOutput<B>>
where
    B: Backend,
    M: DiffusionModel<B> + ?Sized,
    S: NoiseSchedule + ?Sized,
{
    options.t_offsets.validate()?;
    let tau_start = 1.0 - options.t_offsets.start;
    let tau_end = options.t_offsets.end;
    if tau_start <= tau_end {
        return Err(SamplingError::InvalidOption {
            name: "t_offsets.start",
            value: options.t_offsets.start,
            expected: "leaving τ_start = 1 − start above τ_end = end",
        });
    }
    let kind = model.prediction();
    let mut field = Field {
        model,
        schedule,
        kind,
        nfe: 0,
    };
    match options.method {
        OdeMethod::Euler | OdeMethod::Heun => {
            let steps = options.steps;
            if steps == 0 {
                return Err(SamplingError::InvalidOption {
                    name: "steps",
                    value: 0.0,
                    expected: "at least 1",
                });
            }
            let grid = linspace(tau_start, tau_end, steps + 1);
            let heun = options.method == OdeMethod::Heun;
            let mut x = x_t;
            for i in 0..steps {
                let (tau, tau_next) = (grid[i], grid[i + 1]);
                let h = tau_next - tau; // negative
                let (k1, pred) = field.eval(&x, tau)?;
                let x_next = if heun {
                    let x_p = x.clone() + k1.clone().mul_scalar(h);
                    let (k2, _) = field.eval(&x_p, tau_next)?;
                    x.clone() + (k1 + k2).mul_scalar(0.5 * h)
                } else {
                    x.clone() + k1.mul_scalar(h)
                };
                check_finite(&x_next, i, tau_next)?;
                if let Some(cb) = callback.as_mut() {
                    let x0_hat = field.x0(&x, pred, tau)?;
                    cb(StepInfo {
                        step: i,
                        at: TimePoint::continuous(tau),
                        x,
                        x0_hat,
                        tau_next,
                        x_next: x_next.clone(),
                    });
                }
                x = x_next;
            }
            Ok(OdeOutput {
                x,
                nfe: field.nfe,
                accepted: steps,
                rejected: 0,
            })
        }
        OdeMethod::Dopri5 { atol, rtol } => {
            for (name, v) in [("atol", atol), ("rtol", rtol)] {
                if !(v.is_finite() && v > 0.0) {
                    return Err(SamplingError::InvalidOption {
                        name,
                        value: v,
                        expected: "finite and > 0",
                    });
                }
            }
            if options.max_evals == 0 {
                return Err(SamplingError::InvalidOption {
                    name: "max_evals",
                    value: 0.0,
                    expected: "at least 1",
                });
            }
            dopri5(
                &mut field,
                x_t,
                tau_start,
                tau_end,
                atol,
                rtol,
                options.max_evals,
                &mut callback,
            )
        }
    }
}

// Dormand–Prince 5(4) tableau.
const C: [f64; 6] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0];
const A2: [f64; 1] = [1.0 / 5.0];
const A3: [f64; 2] = [3.0 / 40.0, 9.0 / 40.0];
const A4: [f64; 3] = [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0];
const A5: [f64; 4] = [
    19372.0 / 6561.0,
    -25360.0 / 2187.0,
    64448.0 / 6561.0,
    -212.0 / 729.0,
];
const A6: [f64; 5] = [
    9017.0 / 3168.0,
    -355.0 / 33.0,
    46732.0 / 5247.0,
    49.0 / 176.0,
    -5103.0 / 18656.0,
];
/// 5th-order weights (= the 7th stage's row, FSAL).
const B5: [f64; 6] = [
    35.0 / 384.0,
    0.0,
    500.0 / 1113.0,
    125.0 / 192.0,
    -2187.0 / 6784.0,
    11.0 / 84.0,
];
/// 5th-order minus embedded 4th-order weights, stages 1..7.
const E: [f64; 7] = [
    71.0 / 57600.0,
    0.0,
    -71.0 / 16695.0,
    71.0 / 1920.0,
    -17253.0 / 339200.0,
    22.0 / 525.0,
    -1.0 / 40.0,
];

/// `x + h·Σ w_j·k_j` over the non-zero weights.
fn combine<B: Backend>(x: &Tensor<B, 4>, h: f64, w: &[f64], k: &[Tensor<B, 4>]) -> Tensor<B, 4> {
    let mut acc = x.clone();
    for (wj, kj) in w.iter().zip(k) {
        if *wj != 0.0 {
            acc = acc + kj.clone().mul_scalar(h * wj);
        }
    }
    acc
}

#[allow(clippy::too_many_arguments)]
fn dopri5<B, M, S>(
    field: &mut Field<'_, M, S>,
    x_t: Tensor<B, 4>,
    tau_start: f64,
    tau_end: f64,
    atol: f64,
    rtol: f64,
    max_evals: usize,
    callback: &mut StepCallback<'_, B>,
) -> Result<OdeOutput<B>>
where
    B: Backend,
    M: DiffusionModel<B> + ?Sized,
    S: NoiseSchedule + ?Sized,
{
    let span = tau_start - tau_end;
    let mut tau = tau_start;
    let mut x = x_t;
    let (mut k1, mut pred1) = field.eval(&x, tau)?;

    // Hairer's initial step (torchdiffeq `_select_initial_step`, order 4 ⇒ exponent 1/5).
    let scale0 = x.clone().abs().mul_scalar(rtol).add_scalar(atol);
    let d0 = rms(x.clone() / scale0.clone());
    let d1 = rms(k1.clone() / scale0.clone());
    let h0 = if d0 < 1e-5 || d1 < 1e-5 {
        1e-6
    } else {
        0.01 * d0 / d1
    }
    .min(span);
    let (f1, _) = field.eval(&(x.clone() + k1.clone().mul_scalar(-h0)), tau - h0)?;
    let d2 = rms((f1 - k1.clone()) / scale0) / h0;
    let h1 = if d1 <= 1e-15 && d2 <= 1e-15 {
        (h0 * 1e-3).max(1e-6)
    } else {
        (0.01 / d1.max(d2)).powf(1.0 / 5.0)
    };
    let mut h_abs = (100.0 * h0).min(h1);
    if !h_abs.is_finite() || h_abs <= 0.0 {
        return Err(SamplingError::NonFinite { step: 0, tau });
    }

    let (mut accepted, mut rejected) = (0usize, 0usize);
    while tau > tau_end {
        if field.nfe + 6 > max_evals {
            return Err(SamplingError::TooManyEvaluations { max_evals, tau });
        }
        let last = h_abs >= tau - tau_end;
        let h_used = if last { tau - tau_end } else { h_abs };
        if h_used <= f64::EPSILON * tau.abs().max(1.0) * 4.0 {
            return Err(SamplingError::StepSizeUnderflow {
                tau,
                step_size: h_used,
            });
        }
        let h = -h_used;
        let mut k = vec![k1.clone()];
        for (i, row) in [&A2[..], &A3[..], &A4[..], &A5[..], &A6[..]]
            .iter()
            .enumerate()
        {
            let xi = combine(&x, h, row, &k);
            let (ki, _) = field.eval(&xi, tau + C[i + 1] * h)?;
            k.push(ki);
        }
        let tau_new = if last { tau_end } else { tau + h };
        let y5 = combine(&x, h, &B5, &k);
        let (k7, pred7) = field.eval(&y5, tau_new)?;
        k.push(k7.clone());
        let err = combine(&Tensor::zeros(x.dims(), &x.device()), h, &E, &k);
        let scale = x
            .clone()
            .abs()
            .max_pair(y5.clone().abs())
            .mul_scalar(rtol)
            .add_scalar(atol);
        let ratio = rms(err / scale);
        if !ratio.is_finite() {
            return Err(SamplingError::NonFinite {
                step: accepted,
                tau: tau_new,
            });
        }
        if ratio <= 1.0 {
            check_finite(&y5, accepted, tau_new)?;
            if let Some(cb) = callback.as_mut() {
                let x0_hat = field.x0(&x, pred1.clone(), tau)?;
                cb(StepInfo {
                    step: accepted,
                    at: TimePoint::continuous(tau),
                    x: x.clone(),
                    x0_hat,
                    tau_next: tau_new,
                    x_next: y5.clone(),
                });
            }
            accepted += 1;
            x = y5;
            tau = tau_new;
            k1 = k7;
            pred1 = pred7;
        } else {
            rejected += 1;
        }
        // torchdiffeq `_optimal_step_size`: safety 0.9, ifactor 10, dfactor 0.2 (1 on accept).
        let factor = if ratio == 0.0 {
            10.0
        } else {
            let dfactor = if ratio < 1.0 { 1.0 } else { 0.2 };
            (0.9 * ratio.powf(-1.0 / 5.0)).clamp(dfactor, 10.0)
        };
        h_abs = h_used * factor;
    }
    let _ = pred1;
    Ok(OdeOutput {
        x,
        nfe: field.nfe,
        accepted,
        rejected,
    })
}
