//! Exact noise-level posterior `p(τ | x_τ)` for Gaussian-mixture data.
//!
//! Data `x0 ∈ R^d` follows `Σ_k π_k N(μ_k, s²I + U_k U_kᵀ)` with low-rank `U_k` (`d × r_k`; the
//! rank may differ per component and may be 0). Under `x_τ = α·x0 + σ·ε` the state follows
//! `Σ_k π_k N(α μ_k, c I + α² U_k U_kᵀ)`, `c = α² s² + σ²`, whose log-density is evaluated
//! exactly with the Woodbury identity and the matrix determinant lemma on `r_k × r_k` matrices.
//! The module takes `(α, σ)` pairs and knows nothing about schedules.

use alloc::{format, string::String, vec, vec::Vec};

use crate::error::{check_range, Error, Result};

const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// One component with the statistics that do not depend on the state.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Component {
    pub(crate) log_w: f64,
    pub(crate) mean: Vec<f64>,
    /// `U_kᵀ`, row-major `r × d`.
    pub(crate) ut: Vec<f64>,
    pub(crate) rank: usize,
    /// `|μ_k|²`.
    pub(crate) mu_sq: f64,
    /// `U_kᵀ μ_k`.
    pub(crate) ut_mu: Vec<f64>,
    /// `U_kᵀ U_k`, row-major `r × r`.
    pub(crate) gram: Vec<f64>,
}

impl Component {
    /// `U_kᵀ v`.
    pub(crate) fn project(&self, v: &[f64]) -> Vec<f64> {
        self.ut.chunks_exact(v.len()).map(|u| dot(u, v)).collect()
    }

    /// The lower Cholesky factor `L` of `M = cI_r + α² UᵀU` into `m` (`r × r`, row-major; the
    /// strict upper part keeps scratch values) and `log det M`.
    pub(crate) fn factor(&self, alpha: f64, c: f64, m: &mut [f64]) -> f64 {
        let r = self.rank;
        let m = &mut m[..r * r];
        for (mij, gij) in m.iter_mut().zip(&self.gram) {
            *mij = alpha * alpha * gij;
        }
        let mut logdet_m = 0.0;
        for j in 0..r {
            m[j * r + j] += c;
            for i in j..r {
                let v = m[i * r + j] - (0..j).map(|p| m[i * r + p] * m[j * r + p]).sum::<f64>();
                // Exact pivots of cI + PSD are ≥ c; the clamp only absorbs rounding.
                m[i * r + j] = if i == j {
                    libm::sqrt(v.max(c))
                } else {
                    v / m[j * r + j]
                };
            }
            logdet_m += 2.0 * libm::log(m[j * r + j]);
        }
        logdet_m
    }

    /// `log π_k + log N(y; 0, cI + α² U Uᵀ)` from `|y|²` and `b = α Uᵀ y` (overwritten by
    /// `L⁻¹ b`), with `M = cI_r + α² UᵀU = L Lᵀ` ([`Self::factor`], `m` is `r × r` scratch):
    /// `log det = (d − r) log c + log det M`, `quad = (|y|² − |L⁻¹ b|²) / c`.
    fn log_n(&self, d: usize, y_sq: f64, alpha: f64, c: f64, b: &mut [f64], m: &mut [f64]) -> f64 {
        let r = self.rank;
        let logdet_m = self.factor(alpha, c, m);
        for j in 0..r {
            b[j] = (b[j] - (0..j).map(|p| m[j * r + p] * b[p]).sum::<f64>()) / m[j * r + j];
        }
        let quad = (y_sq - dot(&b[..r], &b[..r])).max(0.0) / c;
        let logdet = (d as f64 - r as f64) * libm::log(c) + logdet_m;
        self.log_w - 0.5 * (d as f64 * LN_2PI + logdet + quad)
    }
}

/// Mixture `p(x0) = Σ_k π_k N(x0; μ_k, s² I + U_k U_kᵀ)` in `R^d`, stored in `f64`.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianMixture {
    dim: usize,
    s: f64,
    weights: Vec<f64>,
    pub(crate) comps: Vec<Component>,
    max_rank: usize,
}

pub(crate) fn oor(name: &'static str, value: f64, expected: &'static str) -> Error {
    Error::OutOfRange {
        name,
        value,
        expected,
    }
}

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `log Σ_i exp(v_i)`; `-∞` when every `v_i = -∞` (or `v` is empty).
pub(crate) fn log_sum_exp(v: &[f64]) -> f64 {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + libm::log(v.iter().map(|x| libm::exp(x - m)).sum::<f64>())
}

/// Checks `(α, σ)` and returns `c = α² s² + σ²`, which must be positive and finite.
pub(crate) fn noise_var(alpha: f64, sigma: f64, s: f64) -> Result<f64> {
    check_range("alpha", alpha, f64::MIN, f64::MAX, "finite")?;
    check_range("sigma", sigma, 0.0, f64::MAX, "finite and >= 0")?;
    let c = alpha * alpha * s * s + sigma * sigma;
    if c > 0.0 && c.is_finite() {
        Ok(c)
    } else {
        Err(oor("sigma", sigma, "alpha^2 s^2 + sigma^2 finite and > 0"))
    }
}

/// Converts one state to `f64`, checking its length and that it is finite.
pub(crate) fn to_state<T: Copy + Into<f64>>(x: &[T], d: usize) -> Result<Vec<f64>> {
    if x.len() != d {
        return Err(Error::Shape(format!("state length {} != dim {d}", x.len())));
    }
    let x: Vec<f64> = x.iter().map(|&v| v.into()).collect();
    match x.iter().find(|v| !v.is_finite()) {
        Some(&value) => Err(oor("state entry", value, "finite")),
        None => Ok(x),
    }
}

impl GaussianMixture {
    /// Builds `Σ_k π_k N(μ_k, s² I + U_k U_kᵀ)`.
    ///
    /// `weights`: `π_k ≥ 0` with `|Σ_k π_k − 1| ≤ 1e-9` (used as given, not renormalised);
    /// `means[k]`: `μ_k` of length `dim`; `s > 0`; `factors[k]`: `U_kᵀ` row-major, i.e. the `r_k`
    /// columns of `U_k` one after another (`factors[k].len() = r_k · dim`, empty for rank 0).
    pub fn new(
        dim: usize,
        weights: Vec<f64>,
        means: Vec<Vec<f64>>,
        s: f64,
        factors: Vec<Vec<f64>>,
    ) -> Result<Self> {
        let (k, nm, nf) = (weights.len(), means.len(), factors.len());
        if dim == 0 || k == 0 || nm != k || nf != k {
            let msg = format!("dim {dim}, {k} weights, {nm} means, {nf} factors");
            return Err(Error::Shape(
                msg + ": need dim > 0 and equal, non-zero counts",
            ));
        }
        if !(s > 0.0 && s.is_finite()) {
            return Err(oor("s", s, "finite and > 0"));
        }
        for &w in &weights {
            check_range("weight", w, 0.0, 1.0 + 1e-9, "in [0, 1]")?;
        }
        let total: f64 = weights.iter().sum();
        check_range(
            "sum of weights",
            total,
            1.0 - 1e-9,
            1.0 + 1e-9,
            "1 within 1e-9",
        )?;
        let mut comps = Vec::with_capacity(k);
        for ((&w, mean), ut) in weights.iter().zip(means).zip(factors) {
            if mean.len() != dim || !ut.len().is_multiple_of(dim) {
                let (m, f) = (mean.len(), ut.len());
                let msg = format!("mean length {m}, factor length {f}, dim {dim}");
                return Err(Error::Shape(msg));
            }
            if let Some(&v) = mean.iter().chain(&ut).find(|v| !v.is_finite()) {
                return Err(oor("mean/factor entry", v, "finite"));
            }
            let rank = ut.len() / dim;
            let rows: Vec<&[f64]> = ut.chunks_exact(dim).collect();
            let gram = (0..rank * rank)
                .map(|ij| dot(rows[ij / rank], rows[ij % rank]))
                .collect();
            let ut_mu = rows.iter().map(|u| dot(u, &mean)).collect();
            let (log_w, mu_sq) = (libm::log(w), dot(&mean, &mean));
            comps.push(Component {
                log_w,
                mu_sq,
                ut_mu,
                gram,
                rank,
                mean,
                ut,
            });
        }
        let max_rank = comps.iter().map(|c| c.rank).max().unwrap_or(0);
        Ok(Self {
            dim,
            s,
            weights,
            comps,
            max_rank,
        })
    }

    /// Isotropic mixture `Σ_k π_k N(μ_k, s² I)` (every `U_k` of rank 0); see [`Self::new`].
    pub fn isotropic(dim: usize, weights: Vec<f64>, means: Vec<Vec<f64>>, s: f64) -> Result<Self> {
        let factors = vec![Vec::new(); weights.len()];
        Self::new(dim, weights, means, s, factors)
    }

    /// Dimension `d`.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Number of components `K`.
    pub fn num_components(&self) -> usize {
        self.comps.len()
    }
    /// Isotropic data scale `s` (covariance `s² I + U_k U_kᵀ`).
    pub fn s(&self) -> f64 {
        self.s
    }
    /// Mixture weights `π_k`.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }
    /// Mean `μ_k`, or `None` if `k ≥ K`.
    pub fn mean(&self, k: usize) -> Option<&[f64]> {
        self.comps.get(k).map(|c| c.mean.as_slice())
    }
    /// `U_kᵀ` row-major (`r_k × d`), or `None` if `k ≥ K`.
    pub fn factor(&self, k: usize) -> Option<&[f64]> {
        self.comps.get(k).map(|c| c.ut.as_slice())
    }
    /// Rank `r_k` of `U_k`, or `None` if `k ≥ K`.
    pub fn rank(&self, k: usize) -> Option<usize> {
        self.comps.get(k).map(|c| c.rank)
    }
    /// `r_max = max_k r_k`; [`Self::sample`] takes `d + r_max` normals.
    pub fn max_rank(&self) -> usize {
        self.max_rank
    }

    /// `log p(x | α, σ) = log Σ_k π_k N(x; α μ_k, A_k)`, `A_k = c I + α² U_k U_kᵀ`,
    /// `c = α² s² + σ²`. With `y = x − α μ_k`, `V = α U_k`: `log det A_k = d log c +
    /// log det(I + VᵀV / c)` and `yᵀA_k⁻¹y = (|y|² − yᵀV (cI + VᵀV)⁻¹ Vᵀy) / c`; components are
    /// combined by log-sum-exp. Needs `c > 0` (`σ = 0` with `α ≠ 0`, or `α = 0`, are fine).
    pub fn log_density<T: Copy + Into<f64>>(&self, x: &[T], alpha: f64, sigma: f64) -> Result<f64> {
        let c = noise_var(alpha, sigma, self.s)?;
        let x = to_state(x, self.dim)?;
        let mut m = vec![0.0; self.max_rank * self.max_rank];
        let mut terms = Vec::with_capacity(self.comps.len());
        for comp in &self.comps {
            let y: Vec<f64> = x
                .iter()
                .zip(&comp.mean)
                .map(|(xj, mj)| xj - alpha * mj)
                .collect();
            let mut b: Vec<f64> = comp.project(&y).iter().map(|p| alpha * p).collect();
            terms.push(comp.log_n(self.dim, dot(&y, &y), alpha, c, &mut b, &mut m));
        }
        Ok(log_sum_exp(&terms))
    }

    /// Unnormalised `L[i, j] = log p(x_i | α_j, σ_j)`, row-major `n × grid.len()`, for `n` states
    /// stored row-major in `states` (`n · d` values). `|x|²`, `xᵀμ_k`, `U_kᵀx` are computed once
    /// per state, then each grid point costs `O(r³)` per component, not `O(d)`:
    /// `|y|² = |x|² − 2α xᵀμ_k + α²|μ_k|²`, `Vᵀy = α (U_kᵀx − α U_kᵀμ_k)`.
    pub fn log_likelihood_grid<T: Copy + Into<f64>>(
        &self,
        states: &[T],
        grid: &[(f64, f64)],
    ) -> Result<Vec<f64>> {
        let (d, g, n) = (self.dim, grid.len(), states.len());
        if !n.is_multiple_of(d) {
            return Err(Error::Shape(format!(
                "states length {n} not a multiple of dim {d}"
            )));
        }
        let cs: Vec<f64> = grid
            .iter()
            .map(|&(a, s)| noise_var(a, s, self.s))
            .collect::<Result<_>>()?;
        let (mut b, mut m) = (vec![0.0; self.max_rank], vec![0.0; self.max_rank.pow(2)]);
        let mut terms = vec![0.0; self.comps.len()];
        let mut out = vec![0.0; n / d * g];
        for (x, row) in states.chunks_exact(d).zip(out.chunks_exact_mut(g.max(1))) {
            let x = to_state(x, d)?;
            let x_sq = dot(&x, &x);
            let stats: Vec<(f64, Vec<f64>)> = self
                .comps
                .iter()
                .map(|k| (dot(&x, &k.mean), k.project(&x)))
                .collect();
            for ((&(alpha, _), &c), lij) in grid.iter().zip(&cs).zip(row) {
                for ((k, (x_mu, ut_x)), t) in self.comps.iter().zip(&stats).zip(&mut terms) {
                    let y_sq = x_sq - 2.0 * alpha * x_mu + alpha * alpha * k.mu_sq;
                    for ((bi, uxi), umi) in b.iter_mut().zip(ut_x).zip(&k.ut_mu) {
                        *bi = alpha * (uxi - alpha * umi);
                    }
                    *t = k.log_n(d, y_sq.max(0.0), alpha, c, &mut b, &mut m);
                }
                *lij = log_sum_exp(&terms);
            }
        }
        Ok(out)
    }

    /// Posterior `p(τ_j | x_i) = prior_j p(x_i | τ_j) / Σ_l prior_l p(x_i | τ_l)` on a grid of
    /// `(α_j, σ_j)`, row-major `n × grid.len()`, each row summing to 1 (log-sum-exp normalised).
    /// `log_prior` (length `grid.len()`, entries `< +∞`, `-∞` allowed) defaults to uniform.
    pub fn posterior_over_grid<T: Copy + Into<f64>>(
        &self,
        states: &[T],
        grid: &[(f64, f64)],
        log_prior: Option<&[f64]>,
    ) -> Result<Vec<f64>> {
        let g = grid.len();
        let (prior, np) = (log_prior.unwrap_or(&[]), log_prior.map_or(g, <[f64]>::len));
        if g == 0 || np != g {
            return Err(Error::Shape(format!(
                "grid length {g}, log_prior length {np}"
            )));
        }
        if let Some(&v) = prior.iter().find(|v| v.is_nan() || **v == f64::INFINITY) {
            return Err(oor("log_prior", v, "< +inf and not NaN"));
        }
        let mut out = self.log_likelihood_grid(states, grid)?;
        for row in out.chunks_exact_mut(g) {
            row.iter_mut().zip(prior).for_each(|(l, lp)| *l += lp);
            let z = log_sum_exp(row);
            if !z.is_finite() {
                return Err(Error::NoSolution(format!("posterior normaliser is {z}")));
            }
            row.iter_mut().for_each(|l| *l = libm::exp(*l - z));
        }
        Ok(out)
    }

    /// Draws `x0 = μ_k + s·z[..d] + U_k z[d..d + r_k]`, with `k` the first index such that
    /// `u < Σ_{l≤k} π_l` (`u ∈ [0, 1)`). `z` must hold exactly `d + r_max` standard normals
    /// ([`Self::max_rank`]; a component of lower rank ignores the tail); `out` has length `d`.
    pub fn sample(&self, u: f64, z: &[f64], out: &mut [f64]) -> Result<()> {
        let (d, r_max) = (self.dim, self.max_rank);
        if !(0.0..1.0).contains(&u) {
            return Err(oor("u", u, "in [0, 1)"));
        }
        if z.len() != d + r_max || out.len() != d {
            let (nz, no) = (z.len(), out.len());
            return Err(Error::Shape(format!(
                "z length {nz} != {d} + {r_max} or out length {no}"
            )));
        }
        let cum: Vec<f64> = (1..=self.weights.len())
            .map(|k| self.weights[..k].iter().sum())
            .collect();
        let last = self.weights.iter().rposition(|&w| w > 0.0).unwrap_or(0);
        let comp = &self.comps[cum.partition_point(|&c| c <= u).min(last)];
        for ((o, m), zj) in out.iter_mut().zip(&comp.mean).zip(z) {
            *o = m + self.s * zj;
        }
        for (u_i, zi) in comp.ut.chunks_exact(d).zip(&z[d..]) {
            out.iter_mut().zip(u_i).for_each(|(o, uij)| *o += uij * zi);
        }
        Ok(())
    }
}

/// Posterior mean `E[τ | x] = Σ_j p_j τ_j / Σ_j p_j` of one probability row over `taus`.
pub fn posterior_mean(probs: &[f64], taus: &[f64]) -> Result<f64> {
    check_row(probs, taus)?;
    Ok(dot(probs, taus) / probs.iter().sum::<f64>())
}

/// Posterior mode `τ_{argmax_j p_j}` of one probability row over `taus` (first maximum wins).
pub fn posterior_mode(probs: &[f64], taus: &[f64]) -> Result<f64> {
    check_row(probs, taus)?;
    let j = (0..probs.len()).fold(0, |best, j| if probs[j] > probs[best] { j } else { best });
    Ok(taus[j])
}

fn check_row(probs: &[f64], taus: &[f64]) -> Result<()> {
    if probs.is_empty() || probs.len() != taus.len() {
        let msg = format!("probs length {} vs taus length {}", probs.len(), taus.len());
        return Err(Error::Shape(msg));
    }
    if let Some(&v) = probs.iter().find(|p| !(p.is_finite() && **p >= 0.0)) {
        return Err(oor("probability", v, "finite and >= 0"));
    }
    if probs.iter().sum::<f64>() > 0.0 {
        Ok(())
    } else {
        Err(Error::NoSolution(String::from("probabilities sum to 0")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_rng::Rng;
    use proptest::prelude::*;

    /// A random mixture with the given ranks (test helper, also used by the oracle's tests).
    pub(crate) fn mixture(
        rng: &mut Rng,
        d: usize,
        ranks: &[usize],
        spread: f64,
    ) -> GaussianMixture {
        let raw: Vec<f64> = ranks.iter().map(|_| 0.1 + rng.uniform()).collect();
        let weights = raw.iter().map(|w| w / raw.iter().sum::<f64>()).collect();
        let means = ranks.iter().map(|_| rng.normals(d, spread)).collect();
        let factors = ranks.iter().map(|r| rng.normals(r * d, 0.7)).collect();
        let s = 0.2 + 0.5 * rng.uniform();
        GaussianMixture::new(d, weights, means, s, factors).unwrap()
    }

    /// Dense `log π_k + log N(x; α μ_k, α²(s²I + UUᵀ) + σ²I)` through a full `d × d` Cholesky.
    fn dense_log_n(gm: &GaussianMixture, k: usize, x: &[f64], a: f64, sig: f64) -> f64 {
        let (d, ut, mu) = (gm.dim(), gm.factor(k).unwrap(), gm.mean(k).unwrap());
        let cols: Vec<&[f64]> = ut.chunks(d).collect();
        let mut l = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..=i {
                let uu: f64 = cols.iter().map(|u| u[i] * u[j]).sum();
                let diag = if i == j {
                    a * a * gm.s() * gm.s() + sig * sig
                } else {
                    0.0
                };
                let v =
                    a * a * uu + diag - (0..j).map(|p| l[i * d + p] * l[j * d + p]).sum::<f64>();
                l[i * d + j] = if i == j { v.sqrt() } else { v / l[j * d + j] };
            }
        }
        let mut z: Vec<f64> = (0..d).map(|i| x[i] - a * mu[i]).collect();
        for i in 0..d {
            z[i] = (z[i] - (0..i).map(|p| l[i * d + p] * z[p]).sum::<f64>()) / l[i * d + i];
        }
        let logdet: f64 = (0..d).map(|i| 2.0 * l[i * d + i].ln()).sum();
        gm.weights()[k].ln() - 0.5 * (d as f64 * LN_2PI + logdet + dot(&z, &z))
    }

    const NOISE: [(f64, f64); 6] = [
        (1.0, 0.0),
        (0.9, 0.1),
        (0.6, 0.45),
        (0.3, 0.8),
        (0.05, 1.0),
        (0.0, 1.0),
    ];

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn log_density_matches_dense() {
        let mut rng = Rng(1);
        // d = 6 with ranks 2, 0, 1; and d = 2 with a rank (3) above the dimension.
        for (d, ranks) in [(6, &[2, 0, 1][..]), (2, &[3, 1][..])] {
            let gm = mixture(&mut rng, d, ranks, 1.5);
            for _ in 0..5 {
                let x = rng.normals(d, 1.5);
                for &(a, s) in &NOISE {
                    let terms: Vec<f64> = (0..ranks.len())
                        .map(|k| dense_log_n(&gm, k, &x, a, s))
                        .collect();
                    let (fast, dense) = (gm.log_density(&x, a, s).unwrap(), log_sum_exp(&terms));
                    assert!(close(fast, dense), "d {d}, ({a}, {s}): {fast} vs {dense}");
                }
            }
        }
    }

    #[test]
    fn grid_path_matches_log_density_and_rows_sum_to_one() {
        let mut rng = Rng(2);
        let gm = mixture(&mut rng, 8, &[2, 3, 0], 1.0);
        let states: Vec<f32> = rng.normals(4 * 8, 1.0).iter().map(|&v| v as f32).collect();
        let ll = gm.log_likelihood_grid(&states, &NOISE).unwrap();
        for (i, x) in states.chunks(8).enumerate() {
            for (j, &(a, s)) in NOISE.iter().enumerate() {
                assert!(close(
                    ll[i * NOISE.len() + j],
                    gm.log_density(x, a, s).unwrap()
                ));
            }
        }
        let prior = [0.0, -1.0, 0.5, 0.0, f64::NEG_INFINITY, 2.0];
        let post = gm
            .posterior_over_grid(&states, &NOISE, Some(&prior))
            .unwrap();
        for row in post.chunks(NOISE.len()) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-9 && row[4] == 0.0);
        }
    }

    #[test]
    fn posterior_peaks_at_true_tau() {
        let (d, n, mut rng) = (64, 32, Rng(3));
        let gm = mixture(&mut rng, d, &[2, 2, 2], 1.0);
        let taus: Vec<f64> = (1..=100).map(|j| j as f64 / 100.0).collect();
        let grid: Vec<(f64, f64)> = taus.iter().map(|&t| (1.0 - t, t)).collect();
        for tau in [0.2, 0.5, 0.8] {
            let (mut states, mut x0) = (Vec::new(), vec![0.0; d]);
            for _ in 0..n {
                gm.sample(rng.uniform(), &rng.normals(d + 2, 1.0), &mut x0)
                    .unwrap();
                states.extend(
                    x0.iter()
                        .map(|&v| ((1.0 - tau) * v + tau * rng.normal()) as f32),
                );
            }
            let post = gm.posterior_over_grid(&states, &grid, None).unwrap();
            let means = post
                .chunks(100)
                .map(|row| posterior_mean(row, &taus).unwrap());
            let mean = means.sum::<f64>() / n as f64;
            assert!(
                (mean - tau).abs() < 0.04,
                "tau {tau}: average posterior mean {mean}"
            );
            // Joint posterior of the batch (all states share τ): column sums of log-likelihoods.
            let ll = gm.log_likelihood_grid(&states, &grid).unwrap();
            let joint: Vec<f64> = (0..100)
                .map(|j| (0..n).map(|i| ll[i * 100 + j]).sum())
                .collect();
            let probs: Vec<f64> = joint
                .iter()
                .map(|l| (l - log_sum_exp(&joint)).exp())
                .collect();
            let mode = posterior_mode(&probs, &taus).unwrap();
            assert!(
                (mode - tau).abs() < 0.03 + 1e-9,
                "tau {tau}: joint posterior mode {mode}"
            );
        }
    }

    #[test]
    fn sample_uses_the_chosen_component() {
        let means = vec![vec![1.0, 2.0], vec![0.0; 2], vec![-1.0, 0.0]];
        let factors = vec![vec![], vec![1.0, 1.0], vec![]];
        let gm = GaussianMixture::new(2, vec![0.25, 0.0, 0.75], means, 0.5, factors).unwrap();
        let mut out = [0.0; 2];
        gm.sample(0.1, &[2.0, 0.0, 9.0], &mut out).unwrap();
        assert_eq!(out, [2.0, 2.0]);
        gm.sample(0.999_999, &[0.0, 0.0, 9.0], &mut out).unwrap();
        assert_eq!(out, [-1.0, 0.0]);
        assert!(gm.sample(1.0, &[0.0; 3], &mut out).is_err());
        assert!(gm.sample(0.5, &[0.0; 2], &mut out).is_err());
    }

    #[test]
    fn bad_input_is_an_error() {
        let iso = |w: Vec<f64>, m1: Vec<f64>, s| {
            GaussianMixture::isotropic(3, w, vec![vec![0.0; 3], m1], s)
        };
        assert!(iso(vec![0.5, 0.4], vec![1.0; 3], 1.0).is_err());
        assert!(iso(vec![1.5, -0.5], vec![1.0; 3], 1.0).is_err());
        assert!(iso(vec![0.5, 0.5], vec![1.0; 3], -1.0).is_err());
        assert!(iso(vec![0.5, 0.5], vec![1.0; 3], f64::NAN).is_err());
        assert!(iso(vec![0.5, 0.5], vec![1.0; 2], 1.0).is_err());
        assert!(iso(vec![0.5, 0.5], vec![f64::NAN; 3], 1.0).is_err());
        let bad_factor = vec![vec![0.0; 4], vec![]];
        assert!(
            GaussianMixture::new(3, vec![0.5, 0.5], vec![vec![0.0; 3]; 2], 1.0, bad_factor)
                .is_err()
        );
        let gm = iso(vec![0.5, 0.5], vec![1.0; 3], 1.0).unwrap();
        assert!(gm.log_density(&[0.0f32; 2], 0.5, 0.5).is_err());
        assert!(gm.log_density(&[0.0, f64::NAN, 0.0], 0.5, 0.5).is_err());
        assert!(gm.log_density(&[0.0; 3], 0.0, 0.0).is_err());
        assert!(gm.log_density(&[0.0; 3], 0.5, -0.1).is_err());
        assert!(gm.log_density(&[0.0; 3], f64::INFINITY, 0.1).is_err());
        assert!(gm.posterior_over_grid(&[0.0f32; 5], &NOISE, None).is_err());
        assert!(gm.posterior_over_grid(&[0.0f32; 3], &[], None).is_err());
        assert!(gm
            .posterior_over_grid(&[0.0f32; 3], &NOISE, Some(&[0.0; 2]))
            .is_err());
        let never = [f64::NEG_INFINITY];
        assert!(gm
            .posterior_over_grid(&[0.0f32; 3], &NOISE[..1], Some(&never))
            .is_err());
        assert!(posterior_mean(&[0.5, 0.5], &[0.1]).is_err());
        assert!(posterior_mode(&[], &[]).is_err());
        assert!(posterior_mean(&[f64::NAN, 1.0], &[0.1, 0.2]).is_err());
    }

    proptest! {
        #[test]
        fn random_mixtures_give_finite_densities_and_probability_rows(
            seed in any::<u64>(), d in 1usize..6, r in 0usize..3, a in 0.0f64..1.5, s in 0.0f64..2.0,
        ) {
            let mut rng = Rng(seed);
            let gm = mixture(&mut rng, d, &[r, (r + 1) % 3, (r + 2) % 3][..1 + r], 2.0);
            let sigma = if a == 0.0 { s.max(0.1) } else { s };
            prop_assert!(gm.log_density(&rng.normals(d, 3.0), a, sigma).unwrap().is_finite());
            let states: Vec<f32> = rng.normals(3 * d, 2.0).iter().map(|&v| v as f32).collect();
            let grid = [(a, sigma), (1.0, 0.0), (0.5, 0.5), (0.0, 1.0)];
            for row in gm.posterior_over_grid(&states, &grid, None).unwrap().chunks(4) {
                prop_assert!(row.iter().all(|p| (0.0..=1.0).contains(p)));
                prop_assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            }
        }
    }
}
