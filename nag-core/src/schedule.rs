//! Continuous noise schedules in the paper's clock: `x_τ = α(τ)·x0 + σ(τ)·ε`, τ ∈ [0, 1],
//! τ = 0 data, τ = 1 noise.
//!
//! [`NoiseSchedule`] gives α, σ, their τ-derivatives and the inverses τ(σ), τ(λ) with
//! λ = log(α²/σ²) the log-SNR. Inverses have closed forms where one exists; the trait's default
//! is bisection (σ increases and λ decreases in τ for every schedule here).
//!
//! SiT's paths (REFERENCE §4) are written in its reversed clock `t = 1 − τ`; the formulas below
//! are those paths rewritten in τ once, here (see also [`crate::clock`]).

use core::f64::consts::PI;

use crate::error::{check_range, Error, Result};

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

/// Linear interpolant (SiT "Linear", rectified flow): α = 1 − τ, σ = τ.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Linear;

impl NoiseSchedule for Linear {
    fn alpha(&self, tau: f64) -> f64 {
        1.0 - tau
    }
    fn sigma(&self, tau: f64) -> f64 {
        tau
    }
    fn d_alpha(&self, _tau: f64) -> f64 {
        -1.0
    }
    fn d_sigma(&self, _tau: f64) -> f64 {
        1.0
    }
    /// τ = σ.
    fn tau_from_sigma(&self, sigma: f64) -> Result<f64> {
        check_range("sigma", sigma, 0.0, 1.0, "in [0, 1] for the Linear path")
    }
    /// λ = 2 log((1−τ)/τ) ⇒ τ = 1 / (1 + e^{λ/2}).
    fn tau_from_log_snr(&self, log_snr: f64) -> Result<f64> {
        if log_snr.is_nan() {
            return Err(Error::OutOfRange {
                name: "log_snr",
                value: log_snr,
                expected: "a number",
            });
        }
        Ok(1.0 / (1.0 + libm::exp(0.5 * log_snr)))
    }
}

/// Generalised variance-preserving path (SiT "GVP"): SiT's α = sin(πt/2), σ = cos(πt/2) in its
/// clock, i.e. α = cos(πτ/2), σ = sin(πτ/2) in ours.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Gvp;

impl NoiseSchedule for Gvp {
    fn alpha(&self, tau: f64) -> f64 {
        libm::cos(0.5 * PI * tau)
    }
    fn sigma(&self, tau: f64) -> f64 {
        libm::sin(0.5 * PI * tau)
    }
    fn d_alpha(&self, tau: f64) -> f64 {
        -0.5 * PI * libm::sin(0.5 * PI * tau)
    }
    fn d_sigma(&self, tau: f64) -> f64 {
        0.5 * PI * libm::cos(0.5 * PI * tau)
    }
    /// τ = (2/π)·asin σ.
    fn tau_from_sigma(&self, sigma: f64) -> Result<f64> {
        let s = check_range("sigma", sigma, 0.0, 1.0, "in [0, 1] for the GVP path")?;
        Ok(2.0 / PI * libm::asin(s))
    }
    /// λ = 2 log cot(πτ/2) ⇒ τ = (2/π)·atan(e^{−λ/2}).
    fn tau_from_log_snr(&self, log_snr: f64) -> Result<f64> {
        if log_snr.is_nan() {
            return Err(Error::OutOfRange {
                name: "log_snr",
                value: log_snr,
                expected: "a number",
            });
        }
        Ok(2.0 / PI * libm::atan(libm::exp(-0.5 * log_snr)))
    }
}

/// SiT's variance-preserving path. In SiT's clock
/// `log α_t = −¼(1−t)²(σmax−σmin) − ½(1−t)σmin`, `σ = √(1−α²)`; with τ = 1 − t:
/// `log α(τ) = −¼τ²(σmax−σmin) − ½τ·σmin`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Vp {
    /// σmin (0.1 in SiT).
    pub sigma_min: f64,
    /// σmax (20 in SiT).
    pub sigma_max: f64,
}

impl Default for Vp {
    fn default() -> Self {
        Self {
            sigma_min: 0.1,
            sigma_max: 20.0,
        }
    }
}

impl Vp {
    /// log α(τ).
    pub fn log_alpha(&self, tau: f64) -> f64 {
        -0.25 * tau * tau * (self.sigma_max - self.sigma_min) - 0.5 * tau * self.sigma_min
    }

    /// d log α / dτ = −½τ(σmax−σmin) − ½σmin.
    pub fn d_log_alpha(&self, tau: f64) -> f64 {
        -0.5 * tau * (self.sigma_max - self.sigma_min) - 0.5 * self.sigma_min
    }

    /// τ ≥ 0 with log α(τ) = `log_alpha` (≤ 0): the positive root of
    /// ¼(σmax−σmin)τ² + ½σmin·τ + log α = 0.
    fn tau_from_log_alpha(&self, log_alpha: f64) -> Result<f64> {
        let a = 0.25 * (self.sigma_max - self.sigma_min);
        let b = 0.5 * self.sigma_min;
        let tau = (-b + libm::sqrt(b * b - 4.0 * a * log_alpha)) / (2.0 * a);
        if (0.0..=1.0 + 1e-12).contains(&tau) {
            Ok(tau.min(1.0))
        } else {
            Err(Error::NoSolution(alloc::format!(
                "VP path reaches log α = {log_alpha} only at τ = {tau}, outside [0, 1]"
            )))
        }
    }
}

impl NoiseSchedule for Vp {
    fn alpha(&self, tau: f64) -> f64 {
        libm::exp(self.log_alpha(tau))
    }
    fn sigma(&self, tau: f64) -> f64 {
        let a = self.alpha(tau);
        libm::sqrt((1.0 - a * a).max(0.0))
    }
    fn d_alpha(&self, tau: f64) -> f64 {
        self.alpha(tau) * self.d_log_alpha(tau)
    }
    /// dσ/dτ = −α·α'/σ (infinite at τ = 0, where σ = 0).
    fn d_sigma(&self, tau: f64) -> f64 {
        let s = self.sigma(tau);
        if s == 0.0 {
            return f64::INFINITY;
        }
        -self.alpha(tau) * self.d_alpha(tau) / s
    }
    /// Closed form through log α = ½·log(1 − σ²).
    fn tau_from_sigma(&self, sigma: f64) -> Result<f64> {
        let s = check_range("sigma", sigma, 0.0, 1.0, "in [0, 1) for the VP path")?;
        if s >= 1.0 {
            return Err(Error::NoSolution(
                "σ = 1 is never reached by the VP path (α > 0 at τ = 1)".into(),
            ));
        }
        self.tau_from_log_alpha(0.5 * libm::log1p(-s * s))
    }
    /// α² = sigmoid(λ) ⇒ log α = −½·log(1 + e^{−λ}).
    fn tau_from_log_snr(&self, log_snr: f64) -> Result<f64> {
        if log_snr.is_nan() {
            return Err(Error::OutOfRange {
                name: "log_snr",
                value: log_snr,
                expected: "a number",
            });
        }
        let log_alpha = if log_snr > -30.0 {
            -0.5 * libm::log1p(libm::exp(-log_snr))
        } else {
            0.5 * log_snr
        };
        self.tau_from_log_alpha(log_alpha)
    }
}

/// A schedule chosen by name at run time.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// [`Linear`].
    Linear(Linear),
    /// [`Gvp`].
    Gvp(Gvp),
    /// [`Vp`].
    Vp(Vp),
    /// A discrete DDPM table read as a continuous schedule ([`crate::ddpm::DdpmSchedule`]).
    Ddpm(crate::ddpm::DdpmSchedule),
}

impl Schedule {
    /// The accepted names.
    pub const NAMES: &'static str = "ddpm-linear, ddpm-cosine, linear, gvp, vp";

    /// Builds a schedule from its name (`ddpm-linear` and `ddpm-cosine` with DiT's 1000 steps).
    pub fn from_name(name: &str) -> Result<Self> {
        use crate::ddpm::{BetaSchedule, DdpmSchedule};
        match name.to_ascii_lowercase().as_str() {
            "linear" => Ok(Self::Linear(Linear)),
            "gvp" => Ok(Self::Gvp(Gvp)),
            "vp" => Ok(Self::Vp(Vp::default())),
            "ddpm-linear" | "ddpm" => {
                Ok(Self::Ddpm(DdpmSchedule::new(BetaSchedule::Linear, 1000)?))
            }
            "ddpm-cosine" => Ok(Self::Ddpm(DdpmSchedule::new(BetaSchedule::Cosine, 1000)?)),
            _ => Err(Error::Unknown {
                kind: "schedule",
                name: name.into(),
                expected: Self::NAMES,
            }),
        }
    }

    fn inner(&self) -> &dyn NoiseSchedule {
        match self {
            Self::Linear(s) => s,
            Self::Gvp(s) => s,
            Self::Vp(s) => s,
            Self::Ddpm(s) => s,
        }
    }
}

impl NoiseSchedule for Schedule {
    fn alpha(&self, tau: f64) -> f64 {
        self.inner().alpha(tau)
    }
    fn sigma(&self, tau: f64) -> f64 {
        self.inner().sigma(tau)
    }
    fn d_alpha(&self, tau: f64) -> f64 {
        self.inner().d_alpha(tau)
    }
    fn d_sigma(&self, tau: f64) -> f64 {
        self.inner().d_sigma(tau)
    }
    fn log_snr(&self, tau: f64) -> f64 {
        self.inner().log_snr(tau)
    }
    fn tau_from_sigma(&self, sigma: f64) -> Result<f64> {
        self.inner().tau_from_sigma(sigma)
    }
    fn tau_from_log_snr(&self, log_snr: f64) -> Result<f64> {
        self.inner().tau_from_log_snr(log_snr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
