//! Continuous noise schedules in the paper's clock: `x_τ = α(τ)·x0 + σ(τ)·ε`, τ ∈ [0, 1],
//! τ = 0 data, τ = 1 noise.
//!
//! [`NoiseSchedule`] gives α, σ, their τ-derivatives and the inverses τ(σ), τ(λ) with
//! λ = log(α²/σ²) the log-SNR. Inverses have closed forms where one exists; the trait's default
//! is bisection (σ increases and λ decreases in τ for every schedule here).
//!
//! SiT's paths (REFERENCE §4) are written in its reversed clock `t = 1 − τ`; the formulas in
//! `continuous.rs` are those paths rewritten in τ once, there (see also [`crate::clock`]).
//!
//! This file holds the trait and what every schedule shares; the schedules themselves are
//! [`Linear`], [`Gvp`], [`Vp`] (`continuous.rs`), [`ddpm`] (DiT's discrete tables) and
//! [`Schedule`], the one chosen by name at run time (`named.rs`).

use crate::error::{Error, Result};

mod continuous;
pub mod ddpm;
mod named;

pub use continuous::{Gvp, Linear, Vp};
pub use named::Schedule;

/// α, σ and their τ-derivatives at one τ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coefficients {
    /// Signal scale α(τ).
    pub alpha: f64,
    /// Noise scale σ(τ).
    pub sigma: f64,
    /// dα/dτ.
    pub d_alpha: f64,
    /// dσ/dτ.
    pub d_sigma: f64,
}

/// A noise schedule in the paper's clock.
pub trait NoiseSchedule {
    /// α(τ).
    fn alpha(&self, tau: f64) -> f64;
    /// σ(τ).
    fn sigma(&self, tau: f64) -> f64;
    /// dα/dτ.
    fn d_alpha(&self, tau: f64) -> f64;
    /// dσ/dτ.
    fn d_sigma(&self, tau: f64) -> f64;

    /// All four coefficients at τ.
    fn coefficients(&self, tau: f64) -> Coefficients {
        Coefficients {
            alpha: self.alpha(tau),
            sigma: self.sigma(tau),
            d_alpha: self.d_alpha(tau),
            d_sigma: self.d_sigma(tau),
        }
    }

    /// Log-SNR λ(τ) = log(α²/σ²).
    fn log_snr(&self, tau: f64) -> f64 {
        2.0 * (libm::log(self.alpha(tau)) - libm::log(self.sigma(tau)))
    }

    /// τ with σ(τ) = `sigma`, for σ in [σ(0), σ(1)]. Default: bisection.
    fn tau_from_sigma(&self, sigma: f64) -> Result<f64> {
        let (lo, hi) = (self.sigma(0.0), self.sigma(1.0));
        if !(sigma.is_finite() && sigma >= lo && sigma <= hi) {
            return Err(Error::OutOfRange {
                name: "sigma",
                value: sigma,
                expected: "within [σ(0), σ(1)] of the schedule",
            });
        }
        Ok(bisect(|t| self.sigma(t) - sigma))
    }

    /// τ with λ(τ) = `log_snr`. Default: bisection on the decreasing λ(τ).
    fn tau_from_log_snr(&self, log_snr: f64) -> Result<f64> {
        if log_snr.is_nan() {
            return Err(Error::OutOfRange {
                name: "log_snr",
                value: log_snr,
                expected: "a number",
            });
        }
        Ok(bisect(|t| log_snr - self.log_snr(t)))
    }
}

/// Root of an increasing `f` on [0, 1] by bisection to machine precision; clamps to an end when
/// `f` does not change sign there.
pub(crate) fn bisect(f: impl Fn(f64) -> f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    if f(lo) >= 0.0 {
        return lo;
    }
    if f(hi) <= 0.0 {
        return hi;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if f(mid) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::f64::consts::PI;
    use proptest::prelude::*;

    fn continuous() -> [Schedule; 3] {
        [
            Schedule::Linear(Linear),
            Schedule::Gvp(Gvp),
            Schedule::Vp(Vp::default()),
        ]
    }

    #[test]
    fn endpoints() {
        for s in continuous() {
            assert!((s.alpha(0.0) - 1.0).abs() < 1e-12);
            assert!(s.sigma(0.0).abs() < 1e-12);
        }
        assert_eq!(Linear.alpha(1.0), 0.0);
        assert!(Gvp.alpha(1.0).abs() < 1e-15);
        // SiT VP at its t = 0 (τ = 1): log α = −¼·19.9 − ½·0.1.
        assert!((Vp::default().log_alpha(1.0) - (-0.25 * 19.9 - 0.05)).abs() < 1e-12);
    }

    #[test]
    fn sit_paths_in_its_own_clock() {
        // SiT writes α_t = sin(πt/2) for GVP with t = 1 − τ.
        let t: f64 = 0.3;
        assert!((Gvp.alpha(1.0 - t) - libm::sin(PI * t / 2.0)).abs() < 1e-14);
        let vp = Vp::default();
        let sit_log_alpha = -0.25 * (1.0 - t) * (1.0 - t) * (20.0 - 0.1) - 0.5 * (1.0 - t) * 0.1;
        assert!((libm::log(vp.alpha(1.0 - t)) - sit_log_alpha).abs() < 1e-12);
    }

    #[test]
    fn derivatives_match_finite_differences() {
        let h = 1e-6;
        for s in continuous() {
            for &tau in &[0.05, 0.3, 0.5, 0.9] {
                let fd_a = (s.alpha(tau + h) - s.alpha(tau - h)) / (2.0 * h);
                let fd_s = (s.sigma(tau + h) - s.sigma(tau - h)) / (2.0 * h);
                assert!((fd_a - s.d_alpha(tau)).abs() < 1e-6 * (1.0 + fd_a.abs()));
                assert!((fd_s - s.d_sigma(tau)).abs() < 1e-6 * (1.0 + fd_s.abs()));
            }
        }
    }

    #[test]
    fn unknown_schedule_is_an_error() {
        let e = Schedule::from_name("karras").unwrap_err();
        assert!(matches!(e, Error::Unknown { .. }));
    }

    #[test]
    fn out_of_range_sigma_is_an_error() {
        assert!(Linear.tau_from_sigma(1.5).is_err());
        assert!(Gvp.tau_from_sigma(-0.1).is_err());
        assert!(Vp::default().tau_from_sigma(f64::NAN).is_err());
        assert!(Vp::default().tau_from_sigma(1.0).is_err());
    }

    proptest! {
        #[test]
        fn inverses_round_trip(tau in 0.001f64..0.999) {
            for s in continuous() {
                let t1 = s.tau_from_sigma(s.sigma(tau)).unwrap();
                prop_assert!((t1 - tau).abs() < 1e-9, "{:?} σ-inverse {} vs {}", s, t1, tau);
                let t2 = s.tau_from_log_snr(s.log_snr(tau)).unwrap();
                prop_assert!((t2 - tau).abs() < 1e-9, "{:?} λ-inverse {} vs {}", s, t2, tau);
                // The closed forms agree with the generic bisection.
                let b = bisect(|t| s.sigma(t) - s.sigma(tau));
                prop_assert!((b - tau).abs() < 1e-9);
            }
        }
    }
}
