//! DiT's discrete DDPM diffusion (REFERENCE §3): β tables, respacing, posterior and
//! learned-range variance coefficients. Everything is computed once, in f64, in
//! [`DdpmSchedule::from_betas`]; every other coefficient is read from those tables.
//!
//! Index convention: table entry `k` is a diffusion step whose state has
//! `x_k = √ᾱ_k·x0 + √(1−ᾱ_k)·ε`; the network is fed `timestep_map[k]`, the index in the
//! original 1000-step process (respacing keeps the original index, as the reference does). In the
//! paper's clock, original index `i` sits at `τ = (i + 1)/T` (τ = 0 is clean data, ᾱ = 1).

use alloc::format;
use alloc::vec::Vec;

use super::NoiseSchedule;
use crate::error::{Error, Result};

/// The β schedule of the original process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    /// DiT/DDPM: `β = linspace(1e-4·s, 0.02·s, T)`, `s = 1000/T`.
    Linear,
    /// Improved DDPM: `ᾱ(t) = cos²((t/T + 0.008)/1.008 · π/2)`,
    /// `β_i = min(1 − ᾱ((i+1)/T)/ᾱ(i/T), 0.999)`.
    Cosine,
}

/// A (possibly respaced) DDPM process with all its tables in f64.
#[derive(Clone, PartialEq)]
pub struct DdpmSchedule {
    /// β_k.
    pub betas: Vec<f64>,
    /// ᾱ_k = Π_{j ≤ k} (1 − β_j).
    pub alphas_cumprod: Vec<f64>,
    /// ᾱ_{k−1}, with ᾱ_{−1} = 1.
    pub alphas_cumprod_prev: Vec<f64>,
    /// Original index fed to the network for table entry k.
    pub timestep_map: Vec<usize>,
    /// Steps of the original process (T = 1000 for DiT).
    pub num_train_timesteps: usize,
}

/// NumPy's `linspace(start, stop, num)` in f64: `start + i·step`, last entry exactly `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return alloc::vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// Python's `round()`: to nearest, ties to even.
fn round_half_even(x: f64) -> f64 {
    let r = libm::round(x);
    if (r - x).abs() == 0.5 && libm::fmod(r, 2.0) != 0.0 {
        r - (r - x).signum()
    } else {
        r
    }
}

impl DdpmSchedule {
    /// The original `T`-step process with the given β schedule.
    pub fn new(kind: BetaSchedule, num_timesteps: usize) -> Result<Self> {
        if num_timesteps == 0 {
            return Err(Error::OutOfRange {
                name: "steps",
                value: 0.0,
                expected: "at least 1 diffusion step",
            });
        }
        let t = num_timesteps;
        let betas = match kind {
            BetaSchedule::Linear => {
                let scale = 1000.0 / t as f64;
                linspace(scale * 0.0001, scale * 0.02, t)
            }
            BetaSchedule::Cosine => {
                let abar = |x: f64| {
                    let c = libm::cos((x + 0.008) / 1.008 * core::f64::consts::PI / 2.0);
                    c * c
                };
                (0..t)
                    .map(|i| {
                        let t1 = i as f64 / t as f64;
                        let t2 = (i + 1) as f64 / t as f64;
                        (1.0 - abar(t2) / abar(t1)).min(0.999)
                    })
                    .collect()
            }
        };
        Self::from_betas(betas, (0..t).collect(), t)
    }

    /// DiT's 1000-step linear schedule.
    pub fn dit() -> Self {
        Self::new(BetaSchedule::Linear, 1000).expect("1000 steps is valid")
    }

    /// Builds all tables from β (the one place coefficients are computed).
    pub fn from_betas(
        betas: Vec<f64>,
        timestep_map: Vec<usize>,
        num_train_timesteps: usize,
    ) -> Result<Self> {
        if betas.is_empty() || betas.len() != timestep_map.len() {
            return Err(Error::Shape(format!(
                "{} betas for {} timesteps",
                betas.len(),
                timestep_map.len()
            )));
        }
        if let Some(&b) = betas.iter().find(|b| !(**b > 0.0 && **b <= 1.0)) {
            return Err(Error::OutOfRange {
                name: "beta",
                value: b,
                expected: "in (0, 1]",
            });
        }
        let mut alphas_cumprod = Vec::with_capacity(betas.len());
        let mut acc = 1.0f64;
        for b in &betas {
            acc *= 1.0 - b;
            alphas_cumprod.push(acc);
        }
        let mut alphas_cumprod_prev = Vec::with_capacity(betas.len());
        alphas_cumprod_prev.push(1.0);
        alphas_cumprod_prev.extend_from_slice(&alphas_cumprod[..betas.len() - 1]);
        Ok(Self {
            betas,
            alphas_cumprod,
            alphas_cumprod_prev,
            timestep_map,
            num_train_timesteps,
        })
    }

    /// Number of steps in this (respaced) table.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// Always false (a schedule has at least one step).
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// The reference's `space_timesteps`: which original indices a respacing keeps.
    ///
    /// `spec` is `"N"` (N evenly strided steps), `"a,b,c"` (sections of the process with a, b, c
    /// steps each) or `"ddimN"` (the integer stride giving exactly N steps). Within a section of
    /// `size` steps taking `n`, the stride is `(size−1)/(n−1)` accumulated as a float and each
    /// index rounded half-to-even (Python's `round`), exactly as the reference.
    pub fn spaced_timesteps(num_timesteps: usize, spec: &str) -> Result<Vec<usize>> {
        let spec = spec.trim();
        if let Some(n) = spec.strip_prefix("ddim") {
            let desired: usize = n.parse().map_err(|_| Error::Unknown {
                kind: "respacing",
                name: spec.into(),
                expected: "N, a,b,c or ddimN",
            })?;
            for stride in 1..num_timesteps {
                let steps: Vec<usize> = (0..num_timesteps).step_by(stride).collect();
                if steps.len() == desired {
                    return Ok(steps);
                }
            }
            return Err(Error::NoSolution(format!(
                "cannot create exactly {desired} steps with an integer stride over {num_timesteps}"
            )));
        }
        let counts: Vec<usize> = spec
            .split(',')
            .map(|s| s.trim().parse::<usize>())
            .collect::<core::result::Result<_, _>>()
            .map_err(|_| Error::Unknown {
                kind: "respacing",
                name: spec.into(),
                expected: "N, a,b,c or ddimN",
            })?;
        let size_per = num_timesteps / counts.len();
        let extra = num_timesteps % counts.len();
        let mut start = 0usize;
        let mut all = Vec::new();
        for (i, &count) in counts.iter().enumerate() {
            let size = size_per + usize::from(i < extra);
            if count == 0 || count > size {
                return Err(Error::OutOfRange {
                    name: "steps",
                    value: count as f64,
                    expected: "between 1 and the number of diffusion steps of its section",
                });
            }
            let stride = if count <= 1 {
                1.0
            } else {
                (size - 1) as f64 / (count - 1) as f64
            };
            let mut cur = 0.0f64;
            for _ in 0..count {
                all.push(start + round_half_even(cur) as usize);
                cur += stride;
            }
            start += size;
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    /// This schedule respaced to `spec` ([`Self::spaced_timesteps`]): new
    /// `β_k = 1 − ᾱ_{i_k}/ᾱ_{i_{k−1}}` over the kept indices, `timestep_map` the original ones.
    pub fn respaced(&self, spec: &str) -> Result<Self> {
        let keep = Self::spaced_timesteps(self.len(), spec)?;
        let mut betas = Vec::with_capacity(keep.len());
        let mut map = Vec::with_capacity(keep.len());
        let mut last = 1.0f64;
        for &i in &keep {
            let ac = self.alphas_cumprod[i];
            betas.push(1.0 - ac / last);
            last = ac;
            map.push(self.timestep_map[i]);
        }
        Self::from_betas(betas, map, self.num_train_timesteps)
    }

    /// `steps` evenly spaced steps (the CLI's `--steps N`): [`Self::respaced`] with `"N"`.
    pub fn with_steps(&self, steps: usize) -> Result<Self> {
        self.respaced(&alloc::format!("{steps}"))
    }

    /// Posterior variance of q(x_{k−1} | x_k, x0): `β̃_k = β_k(1−ᾱ_{k−1})/(1−ᾱ_k)`.
    pub fn posterior_variance(&self, k: usize) -> f64 {
        self.betas[k] * (1.0 - self.alphas_cumprod_prev[k]) / (1.0 - self.alphas_cumprod[k])
    }

    /// `log β̃_k` with β̃_0 (which is 0) replaced by β̃_1, as the reference clips it.
    pub fn posterior_log_variance_clipped(&self, k: usize) -> f64 {
        if k == 0 {
            if self.len() > 1 {
                libm::log(self.posterior_variance(1))
            } else {
                libm::log(self.betas[0])
            }
        } else {
            libm::log(self.posterior_variance(k))
        }
    }

    /// Coefficient of x̂0 in the posterior mean: `β_k·√ᾱ_{k−1}/(1−ᾱ_k)`.
    pub fn posterior_mean_coef1(&self, k: usize) -> f64 {
        self.betas[k] * libm::sqrt(self.alphas_cumprod_prev[k]) / (1.0 - self.alphas_cumprod[k])
    }

    /// Coefficient of x_k in the posterior mean: `(1−ᾱ_{k−1})·√α_k/(1−ᾱ_k)`, α_k = 1 − β_k.
    pub fn posterior_mean_coef2(&self, k: usize) -> f64 {
        (1.0 - self.alphas_cumprod_prev[k]) * libm::sqrt(1.0 - self.betas[k])
            / (1.0 - self.alphas_cumprod[k])
    }

    /// Learned-range log-variance: `f·log β_k + (1−f)·log β̃_k(clipped)`, `f = (v+1)/2`, where
    /// `v ∈ [−1, 1]` is the network's variance output.
    pub fn learned_range_log_variance(&self, k: usize, v: f64) -> f64 {
        let f = (v + 1.0) / 2.0;
        f * libm::log(self.betas[k]) + (1.0 - f) * self.posterior_log_variance_clipped(k)
    }

    /// `(√(1/ᾱ_k), √(1/ᾱ_k − 1))`: `x̂0 = c1·x_k − c2·ε`.
    pub fn x0_from_eps_coefs(&self, k: usize) -> (f64, f64) {
        let ac = self.alphas_cumprod[k];
        (libm::sqrt(1.0 / ac), libm::sqrt(1.0 / ac - 1.0))
    }

    /// Paper-clock τ of table entry k: `(timestep_map[k] + 1)/T`.
    pub fn tau(&self, k: usize) -> f64 {
        (self.timestep_map[k] + 1) as f64 / self.num_train_timesteps as f64
    }

    /// The value fed to the network at entry k (its original index, as a float).
    pub fn model_time(&self, k: usize) -> f64 {
        self.timestep_map[k] as f64
    }

    /// The segment of the piecewise-linear `log ᾱ(τ)` containing τ: `(τ_a, log ᾱ_a, τ_b,
    /// log ᾱ_b)` with the knot (0, 0) before the first entry.
    fn segment(&self, tau: f64) -> (f64, f64, f64, f64) {
        let n = self.len();
        // First knot at or after τ.
        let mut lo = 0usize;
        let mut hi = n;
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.tau(mid) < tau {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let b = lo.min(n - 1);
        let (ta, la) = if b == 0 {
            (0.0, 0.0)
        } else {
            (self.tau(b - 1), libm::log(self.alphas_cumprod[b - 1]))
        };
        (ta, la, self.tau(b), libm::log(self.alphas_cumprod[b]))
    }

    fn log_alpha_bar(&self, tau: f64) -> (f64, f64) {
        let (ta, la, tb, lb) = self.segment(tau);
        let slope = (lb - la) / (tb - ta);
        (la + slope * (tau - ta), slope)
    }
}

/// The table read as a continuous schedule: `log ᾱ(τ)` linear between the knots
/// `(τ_k, log ᾱ_k)`, `τ_k = (timestep_map[k]+1)/T`, and (0, 0); `α = √ᾱ`, `σ = √(1−ᾱ)`.
/// Exact at the knots; derivatives are the segment's (right-continuous).
impl NoiseSchedule for DdpmSchedule {
    fn alpha(&self, tau: f64) -> f64 {
        libm::exp(0.5 * self.log_alpha_bar(tau).0)
    }
    fn sigma(&self, tau: f64) -> f64 {
        let ab = libm::exp(self.log_alpha_bar(tau).0);
        libm::sqrt((1.0 - ab).max(0.0))
    }
    fn d_alpha(&self, tau: f64) -> f64 {
        let (l, slope) = self.log_alpha_bar(tau);
        0.5 * slope * libm::exp(0.5 * l)
    }
    fn d_sigma(&self, tau: f64) -> f64 {
        let (l, slope) = self.log_alpha_bar(tau);
        let ab = libm::exp(l);
        let s = libm::sqrt((1.0 - ab).max(0.0));
        if s == 0.0 {
            return f64::INFINITY;
        }
        -ab * slope / (2.0 * s)
    }
}

/// A one-line summary instead of the thousand-entry tables.
impl core::fmt::Debug for DdpmSchedule {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "DdpmSchedule({} of {} steps, ᾱ from {:.6} to {:.3e})",
            self.len(),
            self.num_train_timesteps,
            self.alphas_cumprod[0],
            self.alphas_cumprod[self.len() - 1]
        )
    }
}

#[cfg(test)]
mod tests {
    //! Expected values come from `nag-core/tests/ddpm_reference.py`, an independent numpy
    //! re-derivation of the reference tables.
    use super::*;
    use alloc::vec;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn linear_table_matches_numpy() {
        let s = DdpmSchedule::dit();
        assert_eq!(s.len(), 1000);
        assert!(close(s.betas[1], 0.000_119_919_919_919_919_93, 1e-14));
        assert!(close(s.betas[500], 0.010_059_959_959_959_959, 1e-14));
        assert_eq!(s.betas[999], 0.02);
        for (i, want) in [
            (0, 0.9999),
            (1, 0.999_780_092_072_072_1),
            (499, 0.078_587_242_881_778_24),
            (999, 4.035_829_765_375_676e-5),
        ] {
            assert!(close(s.alphas_cumprod[i], want, 1e-12), "ᾱ[{i}]");
        }
        assert!(close(
            s.posterior_log_variance_clipped(0),
            -9.816_725_135_295_67,
            1e-12
        ));
        assert!(close(
            s.posterior_log_variance_clipped(1),
            -9.816_725_135_295_67,
            1e-12
        ));
        assert!(close(
            s.posterior_log_variance_clipped(500),
            -4.600_049_739_984_908,
            1e-12
        ));
        assert!(close(
            s.posterior_mean_coef1(10),
            0.136_277_859_770_044_5,
            1e-12
        ));
        assert!(close(
            s.posterior_mean_coef2(10),
            0.863_722_069_286_995_9,
            1e-12
        ));
    }

    #[test]
    fn cosine_table_matches_numpy() {
        let s = DdpmSchedule::new(BetaSchedule::Cosine, 1000).unwrap();
        for (i, want) in [
            (0, 0.999_958_715_775_178),
            (500, 0.492_285_172_448_803_04),
            (999, 2.428_766_907_034_856_7e-9),
        ] {
            assert!(close(s.alphas_cumprod[i], want, 1e-9), "ᾱ[{i}]");
        }
    }

    #[test]
    fn respacing_250_and_25_match_the_reference() {
        let base = DdpmSchedule::dit();
        let r = base.respaced("250").unwrap();
        assert_eq!(r.len(), 250);
        assert_eq!(
            &r.timestep_map[..10],
            &[0, 4, 8, 12, 16, 20, 24, 28, 32, 36]
        );
        assert_eq!(&r.timestep_map[247..], &[991, 995, 999]);
        assert!(close(r.betas[0], 9.999_999_999_998_899e-5, 1e-9));
        assert!(close(r.betas[1], 5.990_655_644_756_426e-4, 1e-11));
        assert!(close(r.betas[249], 0.077_519_344_992_350_03, 1e-11));
        assert!(close(
            r.posterior_log_variance_clipped(0),
            -9.364_628_159_803_084,
            1e-11
        ));
        assert!(close(
            r.posterior_log_variance_clipped(5),
            -6.633_636_381_177_993,
            1e-11
        ));
        // The model is fed the original index.
        assert_eq!(r.model_time(1), 4.0);

        let r = base.with_steps(25).unwrap();
        assert_eq!(
            &r.timestep_map[..10],
            &[0, 42, 83, 125, 166, 208, 250, 291, 333, 375]
        );
        assert_eq!(&r.timestep_map[22..], &[916, 957, 999]);
        assert!(close(r.betas[1], 0.021_950_284_036_596_157, 1e-11));
        assert!(close(r.betas[24], 0.564_394_191_598_255_8, 1e-11));
        assert!(close(
            r.posterior_log_variance_clipped(5),
            -2.266_509_223_023_995,
            1e-11
        ));
        // Respacing keeps ᾱ at the kept indices.
        for (k, &i) in r.timestep_map.iter().enumerate() {
            assert!(close(r.alphas_cumprod[k], base.alphas_cumprod[i], 1e-12));
        }
    }

    #[test]
    fn rounding_is_half_to_even() {
        // stride 4.5: round(4.5) = 4 in Python; stride 166.5 likewise for 7 of 1000.
        assert_eq!(
            DdpmSchedule::spaced_timesteps(10, "3").unwrap(),
            vec![0, 4, 9]
        );
        assert_eq!(
            DdpmSchedule::spaced_timesteps(1000, "7").unwrap(),
            vec![0, 166, 333, 500, 666, 832, 999]
        );
        assert_eq!(
            &DdpmSchedule::spaced_timesteps(1000, "10,15,20").unwrap()[..12],
            &[0, 37, 74, 111, 148, 185, 222, 259, 296, 333, 334, 358]
        );
        assert_eq!(
            DdpmSchedule::spaced_timesteps(1000, "ddim25")
                .unwrap()
                .len(),
            25
        );
    }

    #[test]
    fn bad_respacing_is_an_error() {
        let base = DdpmSchedule::dit();
        assert!(base.respaced("0").is_err());
        assert!(base.respaced("1001").is_err());
        assert!(base.respaced("abc").is_err());
        assert!(base.respaced("ddim999").is_err());
        assert!(DdpmSchedule::new(BetaSchedule::Linear, 0).is_err());
    }

    #[test]
    fn learned_range_interpolates_between_the_bounds() {
        let s = DdpmSchedule::dit();
        let k = 300;
        assert!(close(
            s.learned_range_log_variance(k, 1.0),
            libm::log(s.betas[k]),
            1e-14
        ));
        assert!(close(
            s.learned_range_log_variance(k, -1.0),
            s.posterior_log_variance_clipped(k),
            1e-14
        ));
        let mid = 0.5 * (libm::log(s.betas[k]) + s.posterior_log_variance_clipped(k));
        assert!(close(s.learned_range_log_variance(k, 0.0), mid, 1e-14));
    }

    #[test]
    fn continuous_view_is_exact_at_the_knots() {
        let s = DdpmSchedule::dit().with_steps(25).unwrap();
        for k in [0, 7, 24] {
            let tau = s.tau(k);
            assert!(close(
                s.alpha(tau) * s.alpha(tau),
                s.alphas_cumprod[k],
                1e-12
            ));
            assert!(close(
                s.sigma(tau) * s.sigma(tau),
                1.0 - s.alphas_cumprod[k],
                1e-12
            ));
        }
        assert_eq!(s.alpha(0.0), 1.0);
        // σ is increasing, so the generic inverse works.
        let tau = 0.437;
        assert!((s.tau_from_sigma(s.sigma(tau)).unwrap() - tau).abs() < 1e-9);
    }
}
