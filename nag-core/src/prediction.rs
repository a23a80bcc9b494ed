//! Conversions among the network's possible outputs: ε, x̂0, velocity `v = dx/dτ` and score
//! `∇ log p_τ(x)`, for any schedule.
//!
//! With `x = α·x0 + σ·ε` every quantity is a linear combination of (x0, ε) for fixed τ:
//!
//! | quantity | x0 coef | ε coef |
//! |---|---|---|
//! | x        | α  | σ  |
//! | x̂0      | 1  | 0  |
//! | ε        | 0  | 1  |
//! | v = dx/dτ | α' | σ' |
//! | score    | 0  | −1/σ |
//!
//! so converting prediction `p` of kind P into kind Q is `q = a·x + b·p` with `(a, b)` from a
//! 2×2 solve ([`conversion`]). Velocity here is in the paper's clock; SiT's `dx/dt` is its
//! negative ([`crate::clock::velocity_sign_from_sit`]). SiT's own score-from-velocity formula
//! `score = (α/α̇·v − x)/(σ² − α/α̇·σ̇·σ)` is the special case Velocity → Score.

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schedule::Coefficients;

/// What a network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Prediction {
    /// The noise ε.
    Eps,
    /// The clean sample x̂0.
    X0,
    /// The velocity dx/dτ = α'·x0 + σ'·ε (paper clock).
    Velocity,
    /// The score ∇_x log p_τ(x) = −ε/σ.
    Score,
}

impl Prediction {
    /// (x0, ε) coefficients of this quantity at the given schedule coefficients.
    pub fn basis(self, c: &Coefficients) -> (f64, f64) {
        match self {
            Prediction::Eps => (0.0, 1.0),
            Prediction::X0 => (1.0, 0.0),
            Prediction::Velocity => (c.d_alpha, c.d_sigma),
            Prediction::Score => (0.0, -1.0 / c.sigma),
        }
    }
}

/// `(a, b)` with `to = a·x + b·from_pred` at coefficients `c`.
///
/// Solves `x = α·x0 + σ·ε`, `p = a_p·x0 + b_p·ε` for (x0, ε) (determinant
/// `D = α·b_p − σ·a_p`) and recombines. Errors where the conversion is undefined (D = 0, e.g.
/// ε → x̂0 at pure noise, or score at σ = 0).
pub fn conversion(from: Prediction, to: Prediction, c: &Coefficients) -> Result<(f64, f64)> {
    if from == to {
        return Ok((0.0, 1.0));
    }
    let (ax, bx) = (c.alpha, c.sigma);
    let (ap, bp) = from.basis(c);
    let (aq, bq) = to.basis(c);
    let det = ax * bp - bx * ap;
    let all_finite = [ax, bx, ap, bp, aq, bq].iter().all(|v| v.is_finite());
    if !all_finite || det.abs() < 1e-12 {
        return Err(Error::NoSolution(alloc::format!(
            "cannot convert {from:?} to {to:?} at α = {}, σ = {} (the two are not independent there)",
            c.alpha,
            c.sigma
        )));
    }
    let a = (aq * bp - bq * ap) / det;
    let b = (bq * ax - aq * bx) / det;
    Ok((a, b))
}

/// Converts a prediction tensor: `a·x + b·pred` ([`conversion`]).
pub fn convert<B: Backend, const D: usize>(
    from: Prediction,
    to: Prediction,
    c: &Coefficients,
    x: Tensor<B, D>,
    pred: Tensor<B, D>,
) -> Result<Tensor<B, D>> {
    let (a, b) = conversion(from, to, c)?;
    Ok(if a == 0.0 {
        pred.mul_scalar(b)
    } else {
        x.mul_scalar(a) + pred.mul_scalar(b)
    })
}

/// Converts a prediction over slices: `out[i] = a·x[i] + b·pred[i]`.
pub fn convert_slice(
    from: Prediction,
    to: Prediction,
    c: &Coefficients,
    x: &[f32],
    pred: &[f32],
    out: &mut [f32],
) -> Result<()> {
    if x.len() != pred.len() || x.len() != out.len() {
        return Err(Error::Shape(alloc::format!(
            "x, pred and out have {}, {} and {} values",
            x.len(),
            pred.len(),
            out.len()
        )));
    }
    let (a, b) = conversion(from, to, c)?;
    for ((o, &xi), &pi) in out.iter_mut().zip(x).zip(pred) {
        *o = (a * xi as f64 + b * pi as f64) as f32;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{Gvp, Linear, NoiseSchedule, Schedule, Vp};
    use proptest::prelude::*;

    const ALL: [Prediction; 4] = [
        Prediction::Eps,
        Prediction::X0,
        Prediction::Velocity,
        Prediction::Score,
    ];

    fn schedules() -> [Schedule; 4] {
        [
            Schedule::Linear(Linear),
            Schedule::Gvp(Gvp),
            Schedule::Vp(Vp::default()),
            Schedule::from_name("ddpm-linear").unwrap(),
        ]
    }

    fn value(p: Prediction, c: &Coefficients, x0: f64, eps: f64) -> f64 {
        let (a, b) = p.basis(c);
        a * x0 + b * eps
    }

    #[test]
    fn sit_score_formula_is_recovered() {
        // SiT: score = (α/α̇·v − x)/(σ² − α/α̇·σ̇·σ); the ratio is clock-independent.
        let s = Vp::default();
        let c = s.coefficients(0.4);
        let (x0, eps) = (0.7, -1.3);
        let x = c.alpha * x0 + c.sigma * eps;
        let v = value(Prediction::Velocity, &c, x0, eps);
        let r = c.alpha / c.d_alpha;
        let sit = (r * v - x) / (c.sigma * c.sigma - r * c.d_sigma * c.sigma);
        let (a, b) = conversion(Prediction::Velocity, Prediction::Score, &c).unwrap();
        assert!((a * x + b * v - sit).abs() < 1e-10);
        assert!((sit + eps / c.sigma).abs() < 1e-10);
    }

    #[test]
    fn undefined_conversions_are_errors() {
        // At τ = 1 on the Linear path x = ε: ε says nothing about x0.
        let c = Linear.coefficients(1.0);
        assert!(conversion(Prediction::Eps, Prediction::X0, &c).is_err());
        let c0 = Linear.coefficients(0.0);
        assert!(conversion(Prediction::X0, Prediction::Score, &c0).is_err());
    }

    #[test]
    fn tensors_and_slices_agree() {
        use burn_ndarray::NdArray;
        let device = Default::default();
        let c = Gvp.coefficients(0.3);
        let x = [0.5f32, -1.0, 2.0];
        let p = [0.1f32, 0.2, -0.3];
        let mut out = [0.0f32; 3];
        convert_slice(Prediction::Velocity, Prediction::Eps, &c, &x, &p, &mut out).unwrap();
        let t = convert(
            Prediction::Velocity,
            Prediction::Eps,
            &c,
            Tensor::<NdArray<f32>, 1>::from_floats(x, &device),
            Tensor::<NdArray<f32>, 1>::from_floats(p, &device),
        )
        .unwrap();
        let tv: alloc::vec::Vec<f32> = t.into_data().to_vec().unwrap();
        for (a, b) in tv.iter().zip(out) {
            assert!((a - b).abs() < 1e-6);
        }
        assert!(convert_slice(Prediction::Eps, Prediction::X0, &c, &x, &p[..2], &mut out).is_err());
    }

    proptest! {
        #[test]
        fn conversions_are_exact_and_round_trip(
            tau in 0.02f64..0.98, x0 in -3.0f64..3.0, eps in -3.0f64..3.0,
            i in 0usize..4, j in 0usize..4,
        ) {
            for s in schedules() {
                let c = s.coefficients(tau);
                let x = c.alpha * x0 + c.sigma * eps;
                let (from, to) = (ALL[i], ALL[j]);
                let p = value(from, &c, x0, eps);
                let (a, b) = conversion(from, to, &c).unwrap();
                let q = a * x + b * p;
                let want = value(to, &c, x0, eps);
                prop_assert!((q - want).abs() < 1e-7 * (1.0 + want.abs()), "{:?}→{:?} {} vs {}", from, to, q, want);
                let (a2, b2) = conversion(to, from, &c).unwrap();
                let back = a2 * x + b2 * q;
                prop_assert!((back - p).abs() < 1e-6 * (1.0 + p.abs()));
            }
        }
    }
}
