//! Forward-noising for the estimator: τ drawn from the model's schedule, the noise, `x_τ`, and
//! τ's bin.

use nag_core::schedule::{NoiseSchedule, Schedule};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// One draw of the noise level: τ and `(α(τ), σ(τ))`. DDPM tables: τ uniform on the grid
/// `τ_i = (i+1)/T` with the table's exact `ᾱ_i`; continuous schedules: τ uniform on `(0, 1]`.
pub(super) fn draw_time(schedule: &Schedule, rng: &mut ChaCha8Rng) -> (f64, f64, f64) {
    match schedule {
        Schedule::Ddpm(d) => {
            let k = rng.random_range(0..d.len());
            let ab = d.alphas_cumprod[k];
            (d.tau(k), ab.sqrt(), (1.0 - ab).max(0.0).sqrt())
        }
        s => {
            let tau = 1.0 - rng.random::<f64>();
            (tau, s.alpha(tau), s.sigma(tau))
        }
    }
}

/// `len` standard normals (Box–Muller, both outputs).
pub(super) fn normals(rng: &mut ChaCha8Rng, len: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let th = std::f64::consts::TAU * u2;
        out.push(r * th.cos());
        if out.len() < len {
            out.push(r * th.sin());
        }
    }
    out
}

/// Forward-noises a row-major batch of `x0` (`per` values per item): returns `x_τ` and τ.
pub(super) fn forward_noise(
    x0: &[f32],
    per: usize,
    schedule: &Schedule,
    rng: &mut ChaCha8Rng,
) -> (Vec<f32>, Vec<f64>) {
    let n = x0.len() / per.max(1);
    let times: Vec<(f64, f64, f64)> = (0..n).map(|_| draw_time(schedule, rng)).collect();
    let eps = normals(rng, x0.len());
    let mut x = Vec::with_capacity(x0.len());
    for (i, (row, e)) in x0.chunks_exact(per).zip(eps.chunks_exact(per)).enumerate() {
        let (_, a, s) = times[i];
        x.extend(
            row.iter()
                .zip(e)
                .map(|(&v, &z)| (a * v as f64 + s * z) as f32),
        );
    }
    (x, times.into_iter().map(|t| t.0).collect())
}

/// The bin of τ: `min(⌊τK⌋, K − 1)`, clamped at 0 (as [`NoiseEstimator::tau_to_bin`]).
pub fn tau_bin(tau: f64, num_bins: usize) -> usize {
    ((tau * num_bins as f64).floor().max(0.0) as usize).min(num_bins.saturating_sub(1))
}
