//! The noise shift δ (paper §3): a sampled state `x̂_τ = x_τ + e`, `e ~ N(0, σ_e² I)`, has the
//! noise level of `τ + δ` with `σ²(τ + δ) = σ²(τ) + σ_e²`.
//!
//! - [`first_order`]: Statement 1, `δ ≈ (√(σ² + σ_e²) − σ)/σ'`.
//! - [`exact`]: the solution of `σ²(τ+δ) = σ²(τ) + σ_e²` through the schedule's inverse
//!   `τ(σ)` (closed form for Linear, GVP, VP; bisection otherwise).
//! - [`discrete`]: the same over a DDPM table, in (fractional) steps of the table.
//! - [`sigma_e_from_shift`]: the inverse, the error level a measured δ implies.
//!
//! The relation is the paper's, on σ alone (not on σ/α); for schedules that bound σ ≤ 1 it has
//! no solution once σ² + σ_e² exceeds σ(1)², which is reported as [`Error::NoSolution`].

use crate::ddpm::DdpmSchedule;
use crate::error::{check_range, Error, Result};
use crate::schedule::NoiseSchedule;

fn check_args(tau: f64, sigma_e: f64) -> Result<()> {
    check_range("tau", tau, 0.0, 1.0, "in [0, 1] (0 = data, 1 = noise)")?;
    check_range("sigma_e", sigma_e, 0.0, f64::MAX, "a finite σ_e ≥ 0")?;
    Ok(())
}

/// Statement 1: `δ ≈ (√(σ(τ)² + σ_e²) − σ(τ)) / σ'(τ)`.
pub fn first_order<S: NoiseSchedule + ?Sized>(s: &S, tau: f64, sigma_e: f64) -> Result<f64> {
    check_args(tau, sigma_e)?;
    let sigma = s.sigma(tau);
    let d_sigma = s.d_sigma(tau);
    if !(d_sigma.is_finite() && d_sigma > 1e-9) {
        return Err(Error::NoSolution(alloc::format!(
            "σ'(τ) = {d_sigma} at τ = {tau}: first-order shift undefined"
        )));
    }
    Ok((libm::sqrt(sigma * sigma + sigma_e * sigma_e) - sigma) / d_sigma)
}

/// Exact shift: `δ = τ(√(σ(τ)² + σ_e²)) − τ`.
pub fn exact<S: NoiseSchedule + ?Sized>(s: &S, tau: f64, sigma_e: f64) -> Result<f64> {
    check_args(tau, sigma_e)?;
    let sigma = s.sigma(tau);
    let target = libm::sqrt(sigma * sigma + sigma_e * sigma_e);
    let max = s.sigma(1.0);
    if target > max {
        return Err(Error::NoSolution(alloc::format!(
            "σ(τ)² + σ_e² = {:.4} exceeds the schedule's largest σ² = {:.4}",
            target * target,
            max * max
        )));
    }
    Ok((s.tau_from_sigma(target)? - tau).max(0.0))
}

/// Discrete shift over a DDPM table, in steps of the table: the fractional index `j ≥ k` with
/// `1 − ᾱ_j = 1 − ᾱ_k + σ_e²`, linear in `1 − ᾱ` between entries; returns `j − k`.
pub fn discrete(ddpm: &DdpmSchedule, k: usize, sigma_e: f64) -> Result<f64> {
    if k >= ddpm.len() {
        return Err(Error::OutOfRange {
            name: "index",
            value: k as f64,
            expected: "an index of the DDPM table",
        });
    }
    check_range("sigma_e", sigma_e, 0.0, f64::MAX, "a finite σ_e ≥ 0")?;
    let var = |i: usize| 1.0 - ddpm.alphas_cumprod[i];
    let target = var(k) + sigma_e * sigma_e;
    if target > var(ddpm.len() - 1) {
        return Err(Error::NoSolution(alloc::format!(
            "1 − ᾱ + σ_e² = {target:.4} exceeds the table's last 1 − ᾱ = {:.4}",
            var(ddpm.len() - 1)
        )));
    }
    // 1 − ᾱ increases along the table: the first entry at or past the target, then
    // interpolate within the step before it.
    let j = (k..ddpm.len())
        .find(|&j| var(j) >= target)
        .expect("the last entry is past the target (checked above)");
    if j == k {
        return Ok(0.0);
    }
    let frac = (target - var(j - 1)) / (var(j) - var(j - 1));
    Ok((j - 1 - k) as f64 + frac)
}

/// The inverse: `σ_e = √(σ(τ+δ)² − σ(τ)²)` for a measured δ ≥ 0.
pub fn sigma_e_from_shift<S: NoiseSchedule + ?Sized>(s: &S, tau: f64, delta: f64) -> Result<f64> {
    check_range("tau", tau, 0.0, 1.0, "in [0, 1] (0 = data, 1 = noise)")?;
    check_range("delta", delta, 0.0, 1.0 - tau, "0 ≤ δ ≤ 1 − τ")?;
    let (a, b) = (s.sigma(tau), s.sigma(tau + delta));
    Ok(libm::sqrt((b * b - a * a).max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{Gvp, Linear, Schedule, Vp};
    use proptest::prelude::*;

    fn schedules() -> [Schedule; 4] {
        [
            Schedule::Linear(Linear),
            Schedule::Gvp(Gvp),
            Schedule::Vp(Vp::default()),
            Schedule::from_name("ddpm-cosine").unwrap(),
        ]
    }

    #[test]
    fn linear_path_has_the_papers_closed_form() {
        // σ_t = t: δ = √(t² + σ_e²) − t, first order and exact alike.
        let (t, se) = (0.3, 0.05);
        let want = libm::sqrt(t * t + se * se) - t;
        assert!((exact(&Linear, t, se).unwrap() - want).abs() < 1e-14);
        assert!((first_order(&Linear, t, se).unwrap() - want).abs() < 1e-14);
    }

    #[test]
    fn shift_is_largest_near_the_data_end() {
        let se = 0.02;
        // On the Linear path (σ = τ) the paper's example: δ grows as τ → 0.
        let early = exact(&Linear, 0.9, se).unwrap();
        let late = exact(&Linear, 0.05, se).unwrap();
        assert!(late > 5.0 * early, "late {late} early {early}");
    }

    #[test]
    fn first_order_converges_to_exact() {
        // Continuous schedules (the DDPM view is piecewise linear in log ᾱ, so its first-order
        // shift only converges once δ is inside one table step).
        for s in schedules().into_iter().take(3) {
            for &tau in &[0.1, 0.5, 0.8] {
                let mut last = f64::INFINITY;
                for &se in &[1e-2, 1e-3, 1e-4] {
                    let (fo, ex) = (
                        first_order(&s, tau, se).unwrap(),
                        exact(&s, tau, se).unwrap(),
                    );
                    let rel = ((fo - ex) / ex).abs();
                    assert!(
                        rel <= last.max(1e-6),
                        "{s:?} τ={tau} σe={se}: {rel} after {last}"
                    );
                    last = rel;
                }
                assert!(last < 1e-3, "{s:?} τ={tau}: relative gap {last}");
            }
        }
    }

    #[test]
    fn discrete_matches_the_continuous_view_at_the_knots() {
        let d = crate::ddpm::DdpmSchedule::dit();
        let k = 200;
        let se = 0.05;
        let steps = discrete(&d, k, se).unwrap();
        assert!(steps > 0.0);
        // Moving by `steps` table entries raises 1 − ᾱ by σ_e² (to interpolation accuracy).
        let j = k + steps.floor() as usize;
        let f = steps.fract();
        let var = (1.0 - f) * (1.0 - d.alphas_cumprod[j]) + f * (1.0 - d.alphas_cumprod[j + 1]);
        assert!((var - (1.0 - d.alphas_cumprod[k] + se * se)).abs() < 1e-12);
        assert_eq!(discrete(&d, k, 0.0).unwrap(), 0.0);
        assert!(discrete(&d, 1000, se).is_err());
        assert!(discrete(&d, 999, 0.5).is_err());
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(exact(&Linear, 0.5, -0.1).is_err());
        assert!(first_order(&Linear, 1.5, 0.1).is_err());
        assert!(exact(&Linear, 0.5, f64::NAN).is_err());
        assert!(matches!(
            exact(&Linear, 0.9, 0.5),
            Err(Error::NoSolution(_))
        ));
        assert!(sigma_e_from_shift(&Linear, 0.5, 0.7).is_err());
    }

    proptest! {
        #[test]
        fn shift_is_positive_monotone_and_invertible(tau in 0.01f64..0.9, se in 1e-4f64..0.1) {
            for s in schedules() {
                if let Ok(d) = exact(&s, tau, se) {
                    prop_assert!(d > 0.0);
                    let d2 = exact(&s, tau, se * 0.5).unwrap();
                    prop_assert!(d2 < d);
                    let back = sigma_e_from_shift(&s, tau, d).unwrap();
                    prop_assert!((back - se).abs() < 1e-6 * (1.0 + se), "{:?} {} vs {}", s, back, se);
                }
            }
        }
    }
}
