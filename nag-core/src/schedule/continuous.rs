//! The continuous schedules (SiT's Linear, GVP and VP paths), each a closed-form
//! [`NoiseSchedule`] with closed-form inverses.

use core::f64::consts::PI;

use super::NoiseSchedule;
use crate::error::{check_range, Error, Result};

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
