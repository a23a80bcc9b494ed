//! [`Schedule`]: a noise schedule chosen by name at run time, continuous or DDPM, read through
//! one [`NoiseSchedule`].

use super::ddpm::{BetaSchedule, DdpmSchedule};
use super::{Gvp, Linear, NoiseSchedule, Vp};
use crate::error::{Error, Result};

/// A schedule chosen by name at run time.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// [`Linear`].
    Linear(Linear),
    /// [`Gvp`].
    Gvp(Gvp),
    /// [`Vp`].
    Vp(Vp),
    /// A discrete DDPM table read as a continuous schedule ([`DdpmSchedule`]).
    Ddpm(DdpmSchedule),
}

impl Schedule {
    /// The accepted names.
    pub const NAMES: &'static str = "ddpm-linear, ddpm-cosine, linear, gvp, vp";

    /// Builds a schedule from its name (`ddpm-linear` and `ddpm-cosine` with DiT's 1000 steps).
    pub fn from_name(name: &str) -> Result<Self> {
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
