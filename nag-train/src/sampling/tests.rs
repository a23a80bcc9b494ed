//! Sampler tests against an exact denoiser for Gaussian data.
//!
//! Data: four independent dimensions `x0_d ~ N(μ_d, s_d²)` (state shape `[N, 1, 1, 4]`). At any τ
//! the exact posterior mean is `E[x0|x] = μ + α s²/(α²s² + σ²)·(x − αμ)`, and
//! `ε̂ = (x − α·x̂0)/σ = σ/(α²s² + σ²)·(x − αμ)` (written without dividing by σ, so it is defined
//! at τ = 0); the model returns whichever kind it is asked for (`kind.basis`).
//!
//! Because that model is affine in x, every sampler here maps (x_T, z_1, …, z_K) to the output
//! affinely, with coefficients shared by the batch. Feeding it the columns 1, 2, … of a
//! 1024×1024 Sylvester–Hadamard matrix instead of Gaussian draws (±1 entries, zero-mean and
//! mutually orthogonal columns) makes the batch's sample mean and (1/N) variance *equal* the
//! exact mean and variance of the sampler's output distribution under Gaussian noise: no
//! Monte-Carlo error, so the tolerances below bound only the discretisation error of each
//! sampler (plus f32 rounding). Initial states are drawn from the exact marginal at the start τ
//! (`α μ + √(α²s² + σ²)·z`), so the N(0, I) approximation of the τ = 1 marginal that DiT and SiT
//! make (it matters only where α(1) ≠ 0: DDPM's ᾱ = 4e-5, VP's α = 0.0066) is not counted as
//! sampler error. Separate Monte-Carlo tests run the real [`SeededNormal`] with tolerances from
//! the sample count. `report` (ignored) prints every measured error.

use super::*;
use burn::tensor::TensorData;
use nag_backends::NdArray as B;
use nag_core::ddpm::DdpmSchedule;
use nag_core::schedule::{Gvp, Linear, NoiseSchedule, Schedule, Vp};

const MU: [f64; 4] = [0.5, -1.0, 0.0, 2.0];
const S: [f64; 4] = [0.5, 1.0, 0.8, 1.5];
const DIMS: usize = 4;

fn device() -> burn::tensor::Device<B> {
    Default::default()
}

/// The exact denoiser of N(MU, S²) data, as a model predicting `kind`.
struct Gaussian {
    schedule: Schedule,
    kind: Prediction,
    nfe: usize,
}

impl Gaussian {
    fn new(schedule: Schedule, kind: Prediction) -> Self {
        Self {
            schedule,
            kind,
            nfe: 0,
        }
    }
}

fn row(v: [f64; DIMS]) -> Tensor<B, 4> {
    let v: Vec<f32> = v.iter().map(|x| *x as f32).collect();
    Tensor::from_data(TensorData::new(v, [1, 1, 1, DIMS]), &device())
}

impl DiffusionModel<B> for Gaussian {
    fn prediction(&self) -> Prediction {
        self.kind
    }
    fn predict(&mut self, x: Tensor<B, 4>, at: TimePoint) -> ModelOutput<B> {
        self.nfe += 1;
        let c = match (&self.schedule, at.ddpm_index) {
            // Discrete samplers: the original table at the index the network is fed.
            (Schedule::Ddpm(d), Some(i)) => {
                let ab = d.alphas_cumprod[i];
                let mut c = d.coefficients(at.tau);
                c.alpha = ab.sqrt();
                c.sigma = (1.0 - ab).sqrt();
                c
            }
            (s, _) => s.coefficients(at.tau),
        };
        let (px, pe) = self.kind.basis(&c);
        let (mut slope, mut icpt) = ([0.0; DIMS], [0.0; DIMS]);
        for d in 0..DIMS {
            let (mu, s2) = (MU[d], S[d] * S[d]);
            let den = c.alpha * c.alpha * s2 + c.sigma * c.sigma;
            let k = c.alpha * s2 / den;
            let e = c.sigma / den;
            // x̂0 = k·x + μ(1 − αk); ε̂ = e·x − eαμ.
            slope[d] = px * k + pe * e;
            icpt[d] = px * mu * (1.0 - c.alpha * k) - pe * e * c.alpha * mu;
        }
        ModelOutput::new(x * row(slope) + row(icpt))
    }
}

/// Columns 1, 2, … of the N×N Sylvester–Hadamard matrix, one per call, the same for every
/// element of a row.
struct Hadamard {
    col: usize,
}

impl Hadamard {
    fn new() -> Self {
        Self { col: 0 }
    }
}

const N_HAD: usize = 1024;

impl NoiseSource<B> for Hadamard {
    fn normal(&mut self, shape: [usize; 4], device: &burn::tensor::Device<B>) -> Tensor<B, 4> {
        assert_eq!(shape[0], N_HAD);
        self.col += 1;
        assert!(self.col < N_HAD, "more noise draws than Hadamard columns");
        let per = shape[1] * shape[2] * shape[3];
        let mut v = Vec::with_capacity(N_HAD * per);
        for i in 0..N_HAD {
            let s = if (i & self.col).count_ones().is_multiple_of(2) {
                1.0f32
            } else {
                -1.0
            };
            v.extend(std::iter::repeat_n(s, per));
        }
        Tensor::from_data(TensorData::new(v, shape), device)
    }
}

/// Per-dimension sample mean and (1/N) variance.
fn moments(x: Tensor<B, 4>) -> ([f64; DIMS], [f64; DIMS]) {
    let n = x.dims()[0];
    let v: Vec<f32> = x.into_data().to_vec().unwrap();
    let (mut m, mut var) = ([0.0; DIMS], [0.0; DIMS]);
    for d in 0..DIMS {
        let col = v.iter().skip(d).step_by(DIMS).map(|x| *x as f64);
        m[d] = col.clone().sum::<f64>() / n as f64;
        var[d] = col.map(|x| (x - m[d]) * (x - m[d])).sum::<f64>() / n as f64;
    }
    (m, var)
}

/// Per-dimension (standardised mean error, relative variance error) of `x` against targets.
fn errors_vs(x: Tensor<B, 4>, mean: [f64; DIMS], var: [f64; DIMS]) -> (f64, f64) {
    let (m, v) = moments(x);
    let mut e = (0.0f64, 0.0f64);
    for d in 0..DIMS {
        e.0 = e.0.max((m[d] - mean[d]).abs() / var[d].sqrt());
        e.1 = e.1.max((v[d] / var[d] - 1.0).abs());
    }
    e
}

/// `D(τ) = α²s² + σ²`, the marginal variance of dimension d.
fn marginal_var(c: &nag_core::schedule::Coefficients, d: usize) -> f64 {
    c.alpha * c.alpha * S[d] * S[d] + c.sigma * c.sigma
}

/// Exact output of SiT's "Mean" last step of size h from the exact marginal at τ_e = h with
/// diffusion w: `x + h(−v + w·score) = P·x̂0 + Q·ε̂` with `P = α − hα'`, `Q = σ − hσ' − hw/σ`,
/// so mean `Pμ`, variance `(Pαs² + Qσ)²/D`.
fn mean_step_limit<S: NoiseSchedule>(s: &S, h: f64, w: f64) -> ([f64; DIMS], [f64; DIMS]) {
    let c = s.coefficients(h);
    let p = c.alpha - h * c.d_alpha;
    let q = c.sigma - h * c.d_sigma - h * w / c.sigma;
    let (mut m, mut v) = ([0.0; DIMS], [0.0; DIMS]);
    for d in 0..DIMS {
        let dd = marginal_var(&c, d);
        m[d] = p * MU[d];
        let a = p * c.alpha * S[d] * S[d] + q * c.sigma;
        v[d] = a * a / dd;
    }
    (m, v)
}

const X1: [f64; DIMS] = [1.0, -0.5, 2.0, 0.3];
const RATE: [f64; DIMS] = [-2.0, -1.0, 1.0, 3.0];

/// `dx/dτ = c·cos(τ)·x`: `x(0) = x(1)·exp(−c·sin 1)`.
struct LinearOde {
    nfe: usize,
}

impl DiffusionModel<B> for LinearOde {
    fn prediction(&self) -> Prediction {
        Prediction::Velocity
    }
    fn predict(&mut self, x: Tensor<B, 4>, at: TimePoint) -> ModelOutput<B> {
        self.nfe += 1;
        let c = at.tau.cos();
        ModelOutput::new(x * row(RATE.map(|r| r * c)))
    }
}

/// An initial state distributed as the exact marginal at τ: `α μ + √D·z`, `z` from `noise`.
fn start<N: NoiseSource<B>, S: NoiseSchedule + ?Sized>(
    s: &S,
    tau: f64,
    n: usize,
    noise: &mut N,
) -> Tensor<B, 4> {
    let c = s.coefficients(tau);
    let z = noise.normal([n, 1, 1, DIMS], &device());
    z * row(std::array::from_fn(|d| marginal_var(&c, d).sqrt())) + row(MU.map(|m| c.alpha * m))
}

/// The data moments (μ, s²).
fn data() -> ([f64; DIMS], [f64; DIMS]) {
    (MU, S.map(|s| s * s))
}

/// The exact marginal moments at τ.
fn marginal<S: NoiseSchedule + ?Sized>(s: &S, tau: f64) -> ([f64; DIMS], [f64; DIMS]) {
    let c = s.coefficients(tau);
    (
        MU.map(|m| c.alpha * m),
        std::array::from_fn(|d| marginal_var(&c, d)),
    )
}

/// max(standardised mean error, relative variance error) against `target`.
fn err(x: Tensor<B, 4>, target: ([f64; DIMS], [f64; DIMS])) -> f64 {
    let (m, v) = errors_vs(x, target.0, target.1);
    m.max(v)
}

fn ddpm_run<N: NoiseSource<B>>(
    steps: usize,
    opts: &DdpmOptions,
    n: usize,
    noise: &mut N,
) -> Tensor<B, 4> {
    let base = DdpmSchedule::dit();
    let sched = base.with_steps(steps).unwrap();
    let mut model = Gaussian::new(Schedule::Ddpm(base), Prediction::Eps);
    let x = start(&sched, sched.tau(steps - 1), n, noise);
    let out = sample_ddpm(&mut model, &sched, x, noise, opts, None).unwrap();
    assert_eq!(model.nfe, steps);
    out
}

fn ddim_run<N: NoiseSource<B>>(steps: usize, eta: f64, n: usize, noise: &mut N) -> Tensor<B, 4> {
    let base = DdpmSchedule::dit();
    let sched = base.with_steps(steps).unwrap();
    let mut model = Gaussian::new(Schedule::Ddpm(base), Prediction::Eps);
    let x = start(&sched, sched.tau(steps - 1), n, noise);
    let o = DdimOptions {
        eta,
        clip_x0: false,
    };
    let out = sample_ddim(&mut model, &sched, x, &o, noise, None).unwrap();
    assert_eq!(model.nfe, steps);
    out
}

fn sde_run<N: NoiseSource<B>>(
    s: &Schedule,
    steps: usize,
    o: &SdeOptions,
    n: usize,
    noise: &mut N,
) -> Tensor<B, 4> {
    let mut model = Gaussian::new(s.clone(), Prediction::Velocity);
    let x = start(s, 1.0 - o.t_offsets.start, n, noise);
    let out = sample_sde(&mut model, s, x, steps, o, noise, None).unwrap();
    let per_step = if o.method == SdeMethod::Heun { 2 } else { 1 };
    let last = usize::from(o.last_step != LastStep::None);
    assert_eq!(model.nfe, per_step * (steps - 1) + last);
    out
}

fn ode_run(s: &Schedule, kind: Prediction, o: &OdeOptions) -> (Tensor<B, 4>, usize) {
    let mut model = Gaussian::new(s.clone(), kind);
    let x = start(s, 1.0 - o.t_offsets.start, N_HAD, &mut Hadamard::new());
    let out = sample_ode(&mut model, s, x, o, None).unwrap();
    assert_eq!(out.nfe, model.nfe);
    (out.x, out.nfe)
}

fn schedules() -> [(&'static str, Schedule); 3] {
    [
        ("linear", Schedule::Linear(Linear)),
        ("gvp", Schedule::Gvp(Gvp)),
        ("vp", Schedule::Vp(Vp::default())),
    ]
}

// ---------------------------------------------------------------------------------------------
// Convergence (exact moments through Hadamard noise).

#[test]
fn ddpm_ancestral_converges_to_the_data() {
    // Measured (max over dims, var rel. error): Large .43/.072/.013/.0030, Small .58/.21/.056/.016
    // for 10/50/250/1000 steps; mean errors ≤ 1e-6.
    for (fv, tol_1000) in [(FixedVariance::Large, 0.006), (FixedVariance::Small, 0.03)] {
        let o = DdpmOptions {
            fixed_variance: fv,
            ..Default::default()
        };
        let e: Vec<f64> = [10, 50, 250, 1000]
            .iter()
            .map(|&n| err(ddpm_run(n, &o, N_HAD, &mut Hadamard::new()), data()))
            .collect();
        assert!(e.windows(2).all(|w| w[1] < 0.6 * w[0]), "{fv:?}: {e:?}");
        assert!(
            e[0] > 0.3,
            "{fv:?}: 10 steps should be visibly biased: {e:?}"
        );
        assert!(e[3] < tol_1000, "{fv:?}: {e:?}");
    }
    // DiT's default sampler: 250 respaced steps, fixed-large without variance channels.
    let e250 = err(
        ddpm_run(250, &DdpmOptions::default(), N_HAD, &mut Hadamard::new()),
        data(),
    );
    assert!(e250 < 0.025, "{e250}");
}

#[test]
fn ddim_converges_and_eta_one_is_the_ancestral_small_variance_sampler() {
    // η = 0, measured: .48/.11/.023/.0060 for 10/50/250/1000 steps.
    let e: Vec<f64> = [10, 50, 250, 1000]
        .iter()
        .map(|&n| err(ddim_run(n, 0.0, N_HAD, &mut Hadamard::new()), data()))
        .collect();
    assert!(e.windows(2).all(|w| w[1] < 0.6 * w[0]), "{e:?}");
    assert!(e[3] < 0.012, "{e:?}");
    // η = 1 has σ_k² = β̃_k: the same chain as ancestral sampling with the posterior variance.
    for steps in [10, 250] {
        let a = ddim_run(steps, 1.0, N_HAD, &mut Hadamard::new());
        let small = DdpmOptions {
            fixed_variance: FixedVariance::Small,
            ..Default::default()
        };
        let b = ddpm_run(steps, &small, N_HAD, &mut Hadamard::new());
        let diff: f32 = (a - b).abs().max().into_scalar();
        assert!(diff < 1e-4, "{steps}: {diff}");
    }
}

#[test]
fn sde_converges_to_the_marginal_on_linear_gvp_vp() {
    // No last step, grid τ: 1 → 1e-3, compared with the exact marginal there. Measured at
    // 10 → 250 steps: Euler linear .15 → .0064, gvp .12 → .0043, vp .059 → .0019;
    // Heun linear .023 → .0012, gvp .035 → .0015, vp .068 → .00094.
    for (name, s) in schedules() {
        for method in [SdeMethod::Euler, SdeMethod::Heun] {
            let o = SdeOptions {
                method,
                last_step: LastStep::None,
                t_offsets: TimeOffsets {
                    start: 0.0,
                    end: 1e-3,
                },
                ..Default::default()
            };
            let target = marginal(&s, 1e-3);
            let few = err(sde_run(&s, 10, &o, N_HAD, &mut Hadamard::new()), target);
            let many = err(sde_run(&s, 250, &o, N_HAD, &mut Hadamard::new()), target);
            assert!(many < 0.01, "{name} {method:?}: {few} → {many}");
            assert!(many < 0.5 * few, "{name} {method:?}: {few} → {many}");
        }
    }
}

#[test]
fn sde_default_is_sits_sampler_with_its_mean_last_step() {
    // SiT's default (Euler–Maruyama, w = σ, 249 steps to τ = 0.04, noise-free "Mean" step of
    // 0.04): its limit is the exact Mean step applied to the marginal at 0.04, which is not the
    // data (Linear: variance 2% low for s = 0.5). Measured distance to that limit at 250 steps:
    // linear .0061, gvp .0039, vp .0034; Heun .0011/.0014/.0014.
    for (name, s) in schedules() {
        let limit = mean_step_limit(&s, 0.04, s.sigma(0.04));
        for (method, tol) in [(SdeMethod::Euler, 0.012), (SdeMethod::Heun, 0.004)] {
            let o = SdeOptions {
                method,
                ..Default::default()
            };
            let e = err(sde_run(&s, 250, &o, N_HAD, &mut Hadamard::new()), limit);
            assert!(e < tol, "{name} {method:?}: {e}");
        }
    }
    // The other last steps from τ = 0.04: "Euler" is the Mean step with w = 0; "Tweedie" returns
    // x̂0 = E[x0 | x], of mean μ and variance α²s⁴/D.
    for (name, s) in schedules() {
        let c = s.coefficients(0.04);
        let tweedie = (
            MU,
            std::array::from_fn(|d| (c.alpha * S[d] * S[d]).powi(2) / marginal_var(&c, d)),
        );
        for (last, limit) in [
            (LastStep::Euler, mean_step_limit(&s, 0.04, 0.0)),
            (LastStep::Tweedie, tweedie),
        ] {
            let o = SdeOptions {
                method: SdeMethod::Heun,
                last_step: last,
                ..Default::default()
            };
            let e = err(sde_run(&s, 250, &o, N_HAD, &mut Hadamard::new()), limit);
            assert!(e < 0.004, "{name} {last:?}: {e}");
        }
    }
    // The limit itself is within a few % of the data: SiT's last step is a small, known bias.
    let (m, v) = mean_step_limit(&Linear, 0.04, 0.04);
    for d in 0..DIMS {
        assert!((m[d] - MU[d]).abs() < 1e-12);
        assert!((v[d] / (S[d] * S[d]) - 1.0).abs() < 0.025);
    }
}

#[test]
fn every_diffusion_form_converges() {
    // GVP, no last step, 250 Euler steps; the forms differ only in how much Langevin noise they
    // add, not in the marginals they target. Measured errors ≤ .0066.
    let s = Schedule::Gvp(Gvp);
    let target = marginal(&s, 1e-3);
    for form in [
        DiffusionForm::Constant,
        DiffusionForm::Sbdm,
        DiffusionForm::Sigma,
        DiffusionForm::Linear,
        DiffusionForm::Decreasing,
        DiffusionForm::IncreasingDecreasing,
    ] {
        let start = TimeOffsets::sit_sde(&s, Prediction::Velocity, form).start;
        let o = SdeOptions {
            diffusion: form,
            last_step: LastStep::None,
            t_offsets: TimeOffsets { start, end: 1e-3 },
            ..Default::default()
        };
        let e = err(sde_run(&s, 250, &o, N_HAD, &mut Hadamard::new()), target);
        assert!(e < 0.012, "{form:?}: {e}");
    }
    // SBDM's w = σσ' − (α'/α)σ² = τ/(1−τ) on the Linear path: infinite at τ = 1.
    assert!((DiffusionForm::Sbdm.w(&Linear, 0.25, 1.0) - 0.25 / 0.75).abs() < 1e-12);
    let mut model = Gaussian::new(Schedule::Linear(Linear), Prediction::Velocity);
    let o = SdeOptions {
        diffusion: DiffusionForm::Sbdm,
        ..Default::default()
    };
    let x = Tensor::<B, 4>::zeros([2, 1, 1, DIMS], &device());
    let r = sample_sde(&mut model, &Linear, x, 10, &o, &mut ZeroNoise, None);
    assert!(matches!(r, Err(SamplingError::Singular { .. })), "{r:?}");
    assert_eq!(model.nfe, 0);
}

#[test]
fn ode_solvers_converge_with_their_order() {
    // Linear and GVP from τ = 1 to 0 (velocity model, no offsets): the limit is the data.
    // Measured: Euler 10/100 .26/.029 (lin) .11/.012 (gvp); Heun .0069/9.1e-5, .016/1.7e-4;
    // dopri5 rtol 1e-2/1e-3/1e-5: .057/.0052/7.3e-6 with 14/26/50 evaluations (lin),
    // .035/.0056/2.6e-6 with 14/20/38 (gvp).
    for (name, s) in schedules().into_iter().take(2) {
        let fixed = |method, steps| {
            let o = OdeOptions {
                method,
                steps,
                ..Default::default()
            };
            err(ode_run(&s, Prediction::Velocity, &o).0, data())
        };
        let (e10, e100) = (fixed(OdeMethod::Euler, 10), fixed(OdeMethod::Euler, 100));
        assert!(e100 < 0.04 && e10 > 5.0 * e100, "{name} euler {e10} {e100}");
        let (h10, h100) = (fixed(OdeMethod::Heun, 10), fixed(OdeMethod::Heun, 100));
        assert!(h100 < 5e-4 && h10 > 30.0 * h100, "{name} heun {h10} {h100}");
        let mut prev = (f64::INFINITY, 0usize);
        for rtol in [1e-2, 1e-3, 1e-5] {
            let o = OdeOptions {
                method: OdeMethod::Dopri5 { atol: 1e-6, rtol },
                ..Default::default()
            };
            let (x, nfe) = ode_run(&s, Prediction::Velocity, &o);
            let e = err(x, data());
            assert!(
                e < prev.0 && nfe > prev.1,
                "{name} rtol {rtol}: {e} {nfe} after {prev:?}"
            );
            assert!(e < 10.0 * rtol, "{name} rtol {rtol}: {e}");
            prev = (e, nfe);
        }
        assert!(prev.0 < 1e-4, "{name}: {prev:?}");
    }
    // VP with SiT's ODE interval τ: 1 → 1e-3 (σ' = ∞ at 0): the marginal at 1e-3 (measured
    // 4.8e-6 with 74 evaluations).
    let s = Schedule::Vp(Vp::default());
    let off = TimeOffsets::sit_ode(&s, Prediction::Velocity);
    let o = OdeOptions {
        method: OdeMethod::Dopri5 {
            atol: 1e-6,
            rtol: 1e-5,
        },
        t_offsets: off,
        ..Default::default()
    };
    let e = err(ode_run(&s, Prediction::Velocity, &o).0, marginal(&s, 1e-3));
    assert!(e < 1e-4, "vp {e}");
}

#[test]
fn ode_with_non_velocity_models_uses_offsets() {
    // ε, x̂0 and score models say nothing about x0 at τ = 1 on Linear/GVP: without offsets
    // that is an error, not a panic; with SiT's offsets [1e-3, 1 − 1e-3] the flow is exact to
    // Heun's error (measured 9e-5 lin, 1.7e-4 gvp over 100 steps).
    for (name, s) in schedules().into_iter().take(2) {
        for kind in [Prediction::Eps, Prediction::X0, Prediction::Score] {
            let mut model = Gaussian::new(s.clone(), kind);
            let x = Tensor::<B, 4>::zeros([2, 1, 1, DIMS], &device());
            let r = sample_ode(&mut model, &s, x, &OdeOptions::default(), None);
            assert!(
                matches!(r, Err(SamplingError::Conversion { .. })),
                "{name} {kind:?}"
            );
            let off = TimeOffsets::sit_ode(&s, kind);
            assert_eq!(
                off,
                TimeOffsets {
                    start: 1e-3,
                    end: 1e-3
                }
            );
            let o = OdeOptions {
                method: OdeMethod::Heun,
                steps: 100,
                t_offsets: off,
                ..Default::default()
            };
            let e = err(ode_run(&s, kind, &o).0, marginal(&s, 1e-3));
            assert!(e < 5e-4, "{name} {kind:?}: {e}");
        }
    }
}

#[test]
fn dopri5_solves_a_linear_ode() {
    // dx/dτ = c·cos(τ)·x from τ = 1 to 0. Measured relative errors 3.2e-3 (rtol 1e-3, 26
    // evaluations) and 2.4e-6 (rtol 1e-6, 80 evaluations).
    let mut nfes = Vec::new();
    for rtol in [1e-3, 1e-6] {
        let mut m = LinearOde { nfe: 0 };
        let o = OdeOptions {
            method: OdeMethod::Dopri5 { atol: 1e-9, rtol },
            ..Default::default()
        };
        let out = sample_ode(&mut m, &Linear, row(X1), &o, None).unwrap();
        assert_eq!(out.nfe, m.nfe);
        assert_eq!(out.nfe, 2 + 6 * (out.accepted + out.rejected));
        let v: Vec<f32> = out.x.into_data().to_vec().unwrap();
        for d in 0..DIMS {
            let exact = X1[d] * (-RATE[d] * 1f64.sin()).exp();
            let rel = (v[d] as f64 - exact).abs() / exact.abs();
            assert!(rel < 10.0 * rtol + 1e-6, "rtol {rtol} dim {d}: {rel}");
        }
        nfes.push(out.nfe);
    }
    assert!(nfes[0] < nfes[1], "{nfes:?}");
}

// ---------------------------------------------------------------------------------------------
// Monte Carlo with the real noise.

#[test]
fn seeded_noise_matches_the_exact_moments_within_monte_carlo_error() {
    // With N samples from SeededNormal the sample mean is within 4.5·sd/√N and the sample
    // variance within 4.5·√(2/N) (relative) of the exact moments of the same sampler (from the
    // Hadamard run): this checks the Gaussian noise path end to end.
    const N: usize = 8192;
    let mean_tol = 4.5 / (N as f64).sqrt();
    let var_tol = 4.5 * (2.0 / N as f64).sqrt();
    let check = |name: &str, mc: Tensor<B, 4>, exact: Tensor<B, 4>| {
        let (m, v) = moments(exact);
        let (em, ev) = errors_vs(mc, m, v);
        assert!(em < mean_tol && ev < var_tol, "{name}: {em} {ev}");
    };
    let o = DdpmOptions::default();
    check(
        "ddpm 100",
        ddpm_run(100, &o, N, &mut SeededNormal::new(1)),
        ddpm_run(100, &o, N_HAD, &mut Hadamard::new()),
    );
    check(
        "ddim η=1 50",
        ddim_run(50, 1.0, N, &mut SeededNormal::new(2)),
        ddim_run(50, 1.0, N_HAD, &mut Hadamard::new()),
    );
    let lin = Schedule::Linear(Linear);
    let o = SdeOptions::default();
    check(
        "sde euler linear 100",
        sde_run(&lin, 100, &o, N, &mut SeededNormal::per_sample(3, 0)),
        sde_run(&lin, 100, &o, N_HAD, &mut Hadamard::new()),
    );
    let vp = Schedule::Vp(Vp::default());
    let o = SdeOptions {
        method: SdeMethod::Heun,
        ..Default::default()
    };
    check(
        "sde heun vp 50",
        sde_run(&vp, 50, &o, N, &mut SeededNormal::new(4)),
        sde_run(&vp, 50, &o, N_HAD, &mut Hadamard::new()),
    );
}

#[test]
fn seeded_normal_is_standard_normal() {
    let n = 1 << 17;
    let v = SeededNormal::new(42).normal_vec(n);
    let mean = v.iter().map(|x| *x as f64).sum::<f64>() / n as f64;
    let var = v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
    let within1 = v.iter().filter(|x| x.abs() < 1.0).count() as f64 / n as f64;
    let p = 0.682_689_492_137_085_9;
    assert!(mean.abs() < 4.5 / (n as f64).sqrt(), "{mean}");
    assert!((var - 1.0).abs() < 4.5 * (2.0 / n as f64).sqrt(), "{var}");
    assert!(
        (within1 - p).abs() < 4.5 * (p * (1.0 - p) / n as f64).sqrt(),
        "{within1}"
    );
}

fn values(t: Tensor<B, 4>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

#[test]
fn same_seed_is_bit_identical_and_different_seeds_differ() {
    let lin = Schedule::Linear(Linear);
    let run = |seed| {
        let mut noise = SeededNormal::new(seed);
        values(sde_run(&lin, 20, &SdeOptions::default(), 16, &mut noise))
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
    let ddpm = |seed| {
        values(ddpm_run(
            25,
            &DdpmOptions::default(),
            16,
            &mut SeededNormal::new(seed),
        ))
    };
    assert_eq!(ddpm(5), ddpm(5));
    assert_ne!(ddpm(5), ddpm(6));
    // Per-sample streams: the noise of sample i does not depend on the batching.
    let whole = values(SeededNormal::per_sample(9, 0).normal([4, 1, 3, 3], &device()));
    let mut a = SeededNormal::per_sample(9, 0);
    let mut b = SeededNormal::per_sample(9, 2);
    let mut split = values(NoiseSource::<B>::normal(&mut a, [2, 1, 3, 3], &device()));
    split.extend(values(NoiseSource::<B>::normal(
        &mut b,
        [2, 1, 3, 3],
        &device(),
    )));
    assert_eq!(whole, split);
}

// ---------------------------------------------------------------------------------------------
// DDPM variance channels.

/// Predicts ε = 0 everywhere, with constant variance channels `v` per dimension (or none).
struct ConstVar {
    v: Option<[f64; DIMS]>,
}

impl DiffusionModel<B> for ConstVar {
    fn prediction(&self) -> Prediction {
        Prediction::Eps
    }
    fn predict(&mut self, x: Tensor<B, 4>, _at: TimePoint) -> ModelOutput<B> {
        let var_interp = self.v.map(|v| x.zeros_like() + row(v));
        ModelOutput {
            pred: x.zeros_like(),
            var_interp,
        }
    }
}

/// Ones instead of noise.
struct Ones;

impl NoiseSource<B> for Ones {
    fn normal(&mut self, shape: [usize; 4], device: &burn::tensor::Device<B>) -> Tensor<B, 4> {
        Tensor::ones(shape, device)
    }
}

/// The first step's `x_next` from `x = 1` with the given noise source.
fn first_step<N: NoiseSource<B>>(
    model: &mut ConstVar,
    sched: &DdpmSchedule,
    o: &DdpmOptions,
    noise: &mut N,
) -> Vec<f32> {
    let mut first = None;
    let mut cb = |info: StepInfo<B>| {
        if info.step == 0 {
            first = Some(values(info.x_next));
        }
    };
    let x = Tensor::<B, 4>::ones([1, 1, 1, DIMS], &device());
    sample_ddpm(model, sched, x, noise, o, Some(&mut cb)).unwrap();
    first.unwrap()
}

#[test]
fn learned_range_variance_is_used_per_element() {
    let sched = DdpmSchedule::dit().with_steps(10).unwrap();
    let k = sched.len() - 1;
    let v = [-1.0, -0.3, 0.5, 1.0];
    let mut model = ConstVar { v: Some(v) };
    let o = DdpmOptions::default();
    let mean = first_step(&mut model, &sched, &o, &mut ZeroNoise);
    let plus = first_step(&mut model, &sched, &o, &mut Ones);
    for d in 0..DIMS {
        let std = (0.5 * sched.learned_range_log_variance(k, v[d])).exp();
        let got = (plus[d] - mean[d]) as f64;
        assert!((got / std - 1.0).abs() < 1e-5, "dim {d}: {got} vs {std}");
    }
    // v = 1 is fixed-large (β_k), v = −1 fixed-small (β̃_k).
    let beta = sched.betas[k];
    assert!(((plus[3] - mean[3]) as f64 / beta.sqrt() - 1.0).abs() < 1e-5);
    let small = sched.posterior_variance(k).sqrt();
    assert!(((plus[0] - mean[0]) as f64 / small - 1.0).abs() < 1e-5);
    // learned_variance = false ignores the channels.
    let o = DdpmOptions {
        learned_variance: false,
        fixed_variance: FixedVariance::Small,
        ..Default::default()
    };
    let mean = first_step(&mut model, &sched, &o, &mut ZeroNoise);
    let plus = first_step(&mut model, &sched, &o, &mut Ones);
    for d in 0..DIMS {
        assert!(((plus[d] - mean[d]) as f64 / small - 1.0).abs() < 1e-5);
    }
}

#[test]
fn variance_channel_one_is_fixed_large() {
    let sched = DdpmSchedule::dit().with_steps(50).unwrap();
    let run = |v: Option<[f64; DIMS]>, o: DdpmOptions| {
        let mut model = ConstVar { v };
        let x = Tensor::<B, 4>::ones([8, 1, 1, DIMS], &device());
        values(sample_ddpm(&mut model, &sched, x, &mut SeededNormal::new(3), &o, None).unwrap())
    };
    let learned = run(Some([1.0; DIMS]), DdpmOptions::default());
    let large = run(None, DdpmOptions::default());
    let small = run(
        None,
        DdpmOptions {
            fixed_variance: FixedVariance::Small,
            ..Default::default()
        },
    );
    // Relative: with ε = 0 the chain grows like 1/√ᾱ.
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
            .fold(0.0, f32::max)
    };
    assert!(max_diff(&learned, &large) < 1e-5);
    assert!(max_diff(&learned, &small) > 1e-2);
}

// ---------------------------------------------------------------------------------------------
// Callbacks.

#[test]
fn callbacks_see_every_step() {
    // SDE: 19 Euler–Maruyama steps + the last step, τ from 1 down to 0, states chained.
    let lin = Schedule::Linear(Linear);
    let mut infos = Vec::new();
    let mut cb = |i: StepInfo<B>| infos.push(i);
    let mut model = Gaussian::new(lin.clone(), Prediction::Velocity);
    let x = start(&lin, 1.0, 8, &mut SeededNormal::new(0));
    let out = sample_sde(
        &mut model,
        &lin,
        x,
        20,
        &SdeOptions::default(),
        &mut SeededNormal::new(1),
        Some(&mut cb),
    )
    .unwrap();
    assert_eq!(infos.len(), 20);
    assert_eq!(infos[0].at.tau, 1.0);
    assert_eq!(infos[19].at.tau, 0.04);
    assert!(infos[19].tau_next.abs() < 1e-15);
    for (i, w) in infos.windows(2).enumerate() {
        assert_eq!(w[0].step, i);
        assert!(w[1].at.tau < w[0].at.tau);
        assert_eq!(w[0].tau_next, w[1].at.tau);
        assert_eq!(values(w[0].x_next.clone()), values(w[1].x.clone()));
    }
    assert_eq!(values(infos[19].x_next.clone()), values(out));
    // x̂0 of the exact model at the first step is the data mean (α = 0 at τ = 1).
    let (m, _) = moments(infos[0].x0_hat.clone());
    for d in 0..DIMS {
        assert!((m[d] - MU[d]).abs() < 1e-5);
    }

    // DDPM: the last step (k = 0) returns x̂0 itself; DiT indices are fed.
    let sched = DdpmSchedule::dit().with_steps(25).unwrap();
    let mut infos = Vec::new();
    let mut cb = |i: StepInfo<B>| infos.push(i);
    let mut model = Gaussian::new(Schedule::Ddpm(DdpmSchedule::dit()), Prediction::Eps);
    let x = start(&sched, 1.0, 8, &mut SeededNormal::new(0));
    let out = sample_ddpm(
        &mut model,
        &sched,
        x,
        &mut SeededNormal::new(1),
        &DdpmOptions::default(),
        Some(&mut cb),
    )
    .unwrap();
    assert_eq!(infos.len(), 25);
    assert_eq!(infos[0].at.ddpm_index, Some(999));
    assert_eq!(infos[1].at.ddpm_index, Some(957));
    assert_eq!(infos[24].at.ddpm_index, Some(0));
    let d: f32 = (infos[24].x0_hat.clone() - out).abs().max().into_scalar();
    assert!(d < 1e-5);

    // Dopri5: one call per accepted step, chained.
    let mut infos = Vec::new();
    let mut cb = |i: StepInfo<B>| infos.push(i);
    let mut model = Gaussian::new(lin.clone(), Prediction::Velocity);
    let x = start(&lin, 1.0, 8, &mut SeededNormal::new(0));
    let out = sample_ode(&mut model, &lin, x, &OdeOptions::default(), Some(&mut cb)).unwrap();
    assert_eq!(infos.len(), out.accepted);
    assert_eq!(infos.last().unwrap().tau_next, 0.0);
    for w in infos.windows(2) {
        assert_eq!(w[0].tau_next, w[1].at.tau);
    }
}

// ---------------------------------------------------------------------------------------------
// Errors instead of panics.

/// The exact model until τ drops below `below`, NaN from there on.
struct NanBelow {
    inner: Gaussian,
    below: f64,
}

impl DiffusionModel<B> for NanBelow {
    fn prediction(&self) -> Prediction {
        self.inner.kind
    }
    fn predict(&mut self, x: Tensor<B, 4>, at: TimePoint) -> ModelOutput<B> {
        let out = self.inner.predict(x, at);
        if at.tau < self.below {
            ModelOutput::new(out.pred.mul_scalar(f32::NAN))
        } else {
            out
        }
    }
}

#[test]
fn non_finite_states_are_errors() {
    let lin = Schedule::Linear(Linear);
    let x = || Tensor::<B, 4>::zeros([4, 1, 1, DIMS], &device());
    let nan = |s: &Schedule, kind| NanBelow {
        inner: Gaussian::new(s.clone(), kind),
        below: 0.5,
    };
    // SDE grid linspace(1, 0.04, 11): τ_6 = 0.424 is the first below 0.5.
    let r = sample_sde(
        &mut nan(&lin, Prediction::Velocity),
        &lin,
        x(),
        11,
        &SdeOptions::default(),
        &mut ZeroNoise,
        None,
    );
    match r {
        Err(SamplingError::NonFinite { step, tau }) => {
            assert_eq!(step, 6);
            assert!((tau - (1.0 - 0.096 * 7.0)).abs() < 1e-9);
        }
        other => panic!("{other:?}"),
    }
    let o = OdeOptions {
        method: OdeMethod::Euler,
        steps: 10,
        ..Default::default()
    };
    let r = sample_ode(&mut nan(&lin, Prediction::Velocity), &lin, x(), &o, None);
    assert!(
        matches!(r, Err(SamplingError::NonFinite { step: 6, .. })),
        "{r:?}"
    );
    let r = sample_ode(
        &mut nan(&lin, Prediction::Velocity),
        &lin,
        x(),
        &OdeOptions::default(),
        None,
    );
    assert!(matches!(r, Err(SamplingError::NonFinite { .. })), "{r:?}");
    let ddpm = Schedule::Ddpm(DdpmSchedule::dit());
    let sched = DdpmSchedule::dit().with_steps(10).unwrap();
    let r = sample_ddpm(
        &mut nan(&ddpm, Prediction::Eps),
        &sched,
        x(),
        &mut ZeroNoise,
        &DdpmOptions::default(),
        None,
    );
    assert!(matches!(r, Err(SamplingError::NonFinite { .. })), "{r:?}");
    let r = sample_ddim(
        &mut nan(&ddpm, Prediction::Eps),
        &sched,
        x(),
        &DdimOptions::default(),
        &mut ZeroNoise,
        None,
    );
    assert!(matches!(r, Err(SamplingError::NonFinite { .. })), "{r:?}");
}

/// Returns a prediction of the wrong shape.
struct WrongShape;

impl DiffusionModel<B> for WrongShape {
    fn prediction(&self) -> Prediction {
        Prediction::Velocity
    }
    fn predict(&mut self, _x: Tensor<B, 4>, _at: TimePoint) -> ModelOutput<B> {
        ModelOutput::new(Tensor::zeros([1, 1, 1, 1], &device()))
    }
}

#[test]
fn bad_options_are_errors_before_any_evaluation() {
    let lin = Schedule::Linear(Linear);
    let x = || Tensor::<B, 4>::zeros([2, 1, 1, DIMS], &device());
    let invalid = |r: Result<Tensor<B, 4>>| matches!(r, Err(SamplingError::InvalidOption { .. }));
    let mut m = Gaussian::new(lin.clone(), Prediction::Velocity);
    let sde = |m: &mut Gaussian, steps, o: SdeOptions| {
        sample_sde(m, &lin, x(), steps, &o, &mut ZeroNoise, None)
    };
    assert!(invalid(sde(&mut m, 0, SdeOptions::default())));
    assert!(invalid(sde(&mut m, 1, SdeOptions::default())));
    for size in [0.0, 1.0, -0.1, 1.5, f64::NAN] {
        let o = SdeOptions {
            last_step_size: size,
            ..Default::default()
        };
        assert!(invalid(sde(&mut m, 10, o)), "{size}");
    }
    let o = SdeOptions {
        diffusion_norm: -1.0,
        ..Default::default()
    };
    assert!(invalid(sde(&mut m, 10, o)));
    for off in [
        TimeOffsets {
            start: 1.0,
            end: 0.0,
        },
        TimeOffsets {
            start: f64::NAN,
            end: 0.0,
        },
        TimeOffsets {
            start: 0.5,
            end: 0.6,
        },
    ] {
        let o = SdeOptions {
            last_step: LastStep::None,
            t_offsets: off,
            ..Default::default()
        };
        assert!(invalid(sde(&mut m, 10, o)), "{off:?}");
    }
    let ode = |m: &mut Gaussian, o: OdeOptions| sample_ode(m, &lin, x(), &o, None).map(|o| o.x);
    let euler0 = OdeOptions {
        method: OdeMethod::Euler,
        steps: 0,
        ..Default::default()
    };
    assert!(invalid(ode(&mut m, euler0)));
    for (atol, rtol) in [
        (0.0, 1e-3),
        (1e-6, -1.0),
        (1e-6, f64::NAN),
        (f64::INFINITY, 1e-3),
    ] {
        let o = OdeOptions {
            method: OdeMethod::Dopri5 { atol, rtol },
            ..Default::default()
        };
        assert!(invalid(ode(&mut m, o)), "{atol} {rtol}");
    }
    assert_eq!(m.nfe, 0);
    // A budget too small for dopri5 is an error, too.
    let o = OdeOptions {
        max_evals: 10,
        ..Default::default()
    };
    assert!(matches!(
        ode(&mut m, o),
        Err(SamplingError::TooManyEvaluations { .. })
    ));

    let ddpm = Schedule::Ddpm(DdpmSchedule::dit());
    let sched = DdpmSchedule::dit().with_steps(10).unwrap();
    let mut m = Gaussian::new(ddpm, Prediction::Eps);
    for eta in [-1.0, f64::NAN, 5.0] {
        let o = DdimOptions {
            eta,
            clip_x0: false,
        };
        assert!(
            invalid(sample_ddim(&mut m, &sched, x(), &o, &mut ZeroNoise, None)),
            "{eta}"
        );
    }
    let mut broken = sched.clone();
    broken.timestep_map.pop();
    let r = sample_ddpm(
        &mut m,
        &broken,
        x(),
        &mut ZeroNoise,
        &DdpmOptions::default(),
        None,
    );
    assert!(matches!(r, Err(SamplingError::Shape(_))));
    assert_eq!(m.nfe, 0);

    let r = sample_sde(
        &mut WrongShape,
        &lin,
        x(),
        10,
        &SdeOptions::default(),
        &mut ZeroNoise,
        None,
    );
    assert!(matches!(r, Err(SamplingError::Shape(_))), "{r:?}");
}

/// Prints the errors the tolerances above were chosen from:
/// `cargo test -p nag-train --lib sampling::tests::report -- --ignored --nocapture`.
#[test]
#[ignore]
fn report() {
    for fv in [FixedVariance::Large, FixedVariance::Small] {
        let o = DdpmOptions {
            fixed_variance: fv,
            ..Default::default()
        };
        for n in [10, 50, 250, 1000] {
            let x = ddpm_run(n, &o, N_HAD, &mut Hadamard::new());
            println!("ddpm {fv:?} {n}: {:?}", errors_vs(x, data().0, data().1));
        }
    }
    for eta in [0.0, 1.0] {
        for n in [10, 50, 250, 1000] {
            let x = ddim_run(n, eta, N_HAD, &mut Hadamard::new());
            println!("ddim η={eta} {n}: {:?}", errors_vs(x, data().0, data().1));
        }
    }
    for (name, s) in schedules() {
        for method in [SdeMethod::Euler, SdeMethod::Heun] {
            for n in [10, 50, 250] {
                let o = SdeOptions {
                    method,
                    last_step: LastStep::None,
                    t_offsets: TimeOffsets {
                        start: 0.0,
                        end: 1e-3,
                    },
                    ..Default::default()
                };
                let (m, v) = marginal(&s, 1e-3);
                let x = sde_run(&s, n, &o, N_HAD, &mut Hadamard::new());
                println!(
                    "sde {name} {method:?} {n} no last step vs marginal(1e-3): {:?}",
                    errors_vs(x, m, v)
                );
                let o = SdeOptions {
                    method,
                    ..Default::default()
                };
                let x = sde_run(&s, n, &o, N_HAD, &mut Hadamard::new());
                let (m, v) = mean_step_limit(&s, 0.04, s.sigma(0.04));
                let x2 = x.clone();
                println!(
                    "sde {name} {method:?} {n} SiT default vs Mean-step limit: {:?}, vs data: {:?}",
                    errors_vs(x, m, v),
                    errors_vs(x2, data().0, data().1)
                );
            }
        }
        let off = TimeOffsets::sit_ode(&s, Prediction::Velocity);
        let (m, v) = marginal(&s, off.end);
        for (method, steps) in [
            (OdeMethod::Euler, 10),
            (OdeMethod::Euler, 100),
            (OdeMethod::Heun, 10),
            (OdeMethod::Heun, 100),
            (
                OdeMethod::Dopri5 {
                    atol: 1e-6,
                    rtol: 1e-2,
                },
                0,
            ),
            (
                OdeMethod::Dopri5 {
                    atol: 1e-6,
                    rtol: 1e-3,
                },
                0,
            ),
            (
                OdeMethod::Dopri5 {
                    atol: 1e-6,
                    rtol: 1e-5,
                },
                0,
            ),
        ] {
            let o = OdeOptions {
                method,
                steps,
                t_offsets: off,
                ..Default::default()
            };
            let (x, nfe) = ode_run(&s, Prediction::Velocity, &o);
            println!(
                "ode {name} {method:?} {steps}: {:?} nfe {nfe}",
                errors_vs(x, m, v)
            );
        }
    }
}
