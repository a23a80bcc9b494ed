//! Conversions between the paper's clock `τ` (0 = data, 1 = noise) and SiT's code clock
//! `t = 1 − τ` (0 = noise, 1 = data). The one place where the reversed clock exists: models and
//! samplers convert at the checkpoint boundary through these functions.

/// SiT code time `t` (0 = noise) → paper time `τ = 1 − t`.
#[inline]
pub fn tau_from_sit(t: f64) -> f64 {
    1.0 - t
}

/// Paper time `τ` → SiT code time `t = 1 − τ`.
#[inline]
pub fn sit_from_tau(tau: f64) -> f64 {
    1.0 - tau
}

/// A velocity in SiT's clock, `dx/dt`, as a velocity in ours: `dx/dτ = −dx/dt`.
#[inline]
pub fn velocity_sign_from_sit() -> f64 {
    -1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn round_trip() {
        for &t in &[0.0, 0.25, 0.96, 1.0] {
            assert_eq!(sit_from_tau(tau_from_sit(t)), t);
        }
        assert_eq!(tau_from_sit(0.0), 1.0);
    }
}
