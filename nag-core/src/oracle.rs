//! Exact denoisers for Gaussian-mixture data: what a perfectly trained network predicts.
//!
//! For `p(x0) = Σ_k π_k N(μ_k, s²I + U_kU_kᵀ)` ([`GaussianMixture`]) and `x = α·x0 + σ·ε`:
//! - **score** `s(x|τ) = ∇ₓ log p_τ(x) = Σ_k p(k|x,τ)·(−A_k⁻¹ y_k)`, `y_k = x − α μ_k`,
//!   `A_k = cI + α² U_kU_kᵀ`, `c = α²s² + σ²`, with `A_k⁻¹y = (y − α U_k m_k)/c` and
//!   `(cI_r + α² U_kᵀU_k)·m_k = α U_kᵀ y` (Woodbury). Tweedie's exact ε-prediction is
//!   `ε*(x,τ) = E[ε | x] = −σ·s(x|τ)`. With a class `y` only component `y` enters (class `k` is
//!   component `k`), giving `s(x|τ,y)`.
//! - **noise-dropped prediction**: a network trained with its noise condition dropped learns the
//!   regression `E[pred | x] = Σ_j p(τ_j | x)·pred*(x, τ_j)` over the noise levels `τ_j` it was
//!   trained on, with `p(τ_j | x) ∝ prior_j·p(x | τ_j)` ([`ScoreOracle::dropped`]). Any
//!   prediction kind is affine in the score at fixed `(x, τ_j)`, so `pred*(x, τ_j) = a_j·x +
//!   b_j·s(x|τ_j)` and the average is one affine combination.
//! - **classifier signal** `∇ₓ log p(τ|x) = s(x|τ) − Σ_j p(τ_j|x)·s(x|τ_j)` (the prior of τ
//!   does not depend on x), [`ScoreOracle::log_posterior_grad`].
//!
//! Every score is an affine combination of `x`, the means `μ_k` and the columns of `U_k`, so
//! averages over thousands of levels cost `O(K r²)` per level and one `O(d (1 + K + Σ r_k))`
//! pass at the end. The Cholesky factors of `cI + α²U_kᵀU_k` are computed once per level.

use alloc::{format, vec, vec::Vec};

use crate::error::{Error, Result};
use crate::gmm::{dot, log_sum_exp, noise_var, oor, to_state, GaussianMixture};

const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// One noise level with its per-component factorisations.
#[derive(Debug, Clone)]
struct Level {
    alpha: f64,
    c: f64,
    log_prior: f64,
    /// Per component: lower Cholesky factor of `cI + α²U_kᵀU_k`, row-major `r_k × r_k`.
    chol: Vec<Vec<f64>>,
    /// Per component: `log π_k − ½(d log 2π + (d − r) log c + log det M_k)`.
    norm: Vec<f64>,
}

impl Level {
    fn new(mixture: &GaussianMixture, alpha: f64, sigma: f64, log_prior: f64) -> Result<Self> {
        let c = noise_var(alpha, sigma, mixture.s())?;
        let d = mixture.dim() as f64;
        let mut chol = Vec::with_capacity(mixture.comps.len());
        let mut norm = Vec::with_capacity(mixture.comps.len());
        for comp in &mixture.comps {
            let r = comp.rank;
            let mut l = vec![0.0; r * r];
            let logdet = comp.factor(alpha, c, &mut l);
            // Zero the strict upper part (scratch values).
            for i in 0..r {
                for j in i + 1..r {
                    l[i * r + j] = 0.0;
                }
            }
            chol.push(l);
            norm.push(comp.log_w - 0.5 * (d * LN_2PI + (d - r as f64) * libm::log(c) + logdet));
        }
        Ok(Self {
            alpha,
            c,
            log_prior,
            chol,
            norm,
        })
    }
}

/// State statistics that do not depend on the noise level.
struct Stats {
    x_sq: f64,
    /// `xᵀμ_k`.
    x_mu: Vec<f64>,
    /// `U_kᵀx`.
    ut_x: Vec<Vec<f64>>,
}

/// An affine combination `cx·x + Σ_k cmu_k μ_k + Σ_k Σ_i cu_k[i] u_{k,i}`.
#[derive(Debug, Clone)]
struct Combo {
    cx: f64,
    cmu: Vec<f64>,
    cu: Vec<Vec<f64>>,
}

impl Combo {
    fn zero(mixture: &GaussianMixture) -> Self {
        Self {
            cx: 0.0,
            cmu: vec![0.0; mixture.comps.len()],
            cu: mixture.comps.iter().map(|c| vec![0.0; c.rank]).collect(),
        }
    }

    fn scale(&mut self, f: f64) {
        self.cx *= f;
        self.cmu.iter_mut().for_each(|v| *v *= f);
        self.cu.iter_mut().flatten().for_each(|v| *v *= f);
    }
}

/// Exact scores, noise-dropped predictions and classifier signals of a Gaussian mixture, with
/// the training noise levels `τ_j` (as `(α_j, σ_j)`) and their prior; see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct ScoreOracle {
    mixture: GaussianMixture,
    levels: Vec<Level>,
}

impl ScoreOracle {
    /// An oracle for `mixture` whose noise-dropped branch averages over the training levels
    /// `levels` (`(α_j, σ_j)`, each with `α_j²s² + σ_j² > 0`) with prior `log_prior` (default
    /// uniform; entries `< +∞`, `−∞` allowed).
    pub fn new(
        mixture: GaussianMixture,
        levels: &[(f64, f64)],
        log_prior: Option<&[f64]>,
    ) -> Result<Self> {
        if levels.is_empty() || log_prior.is_some_and(|p| p.len() != levels.len()) {
            return Err(Error::Shape(format!(
                "{} training levels, {} prior entries: need a non-empty grid and one prior entry per level",
                levels.len(),
                log_prior.map_or(levels.len(), <[f64]>::len)
            )));
        }
        if let Some(&v) = log_prior
            .unwrap_or(&[])
            .iter()
            .find(|v| v.is_nan() || **v == f64::INFINITY)
        {
            return Err(oor("log_prior", v, "< +inf and not NaN"));
        }
        let levels = levels
            .iter()
            .enumerate()
            .map(|(j, &(a, s))| Level::new(&mixture, a, s, log_prior.map_or(0.0, |p| p[j])))
            .collect::<Result<_>>()?;
        Ok(Self { mixture, levels })
    }

    /// The data mixture.
    pub fn mixture(&self) -> &GaussianMixture {
        &self.mixture
    }

    /// Number of training levels.
    pub fn num_levels(&self) -> usize {
        self.levels.len()
    }

    fn check_class(&self, class: Option<usize>) -> Result<()> {
        match class {
            Some(k) if k >= self.mixture.comps.len() => Err(Error::Shape(format!(
                "class {k} but the mixture has {} components",
                self.mixture.comps.len()
            ))),
            _ => Ok(()),
        }
    }

    /// Checks the class and the state, and returns the state in `f64` with its statistics.
    fn prepare<T: Copy + Into<f64>>(
        &self,
        x: &[T],
        class: Option<usize>,
    ) -> Result<(Vec<f64>, Stats)> {
        self.check_class(class)?;
        let x = to_state(x, self.mixture.dim())?;
        let st = self.stats(&x);
        Ok((x, st))
    }

    fn stats(&self, x: &[f64]) -> Stats {
        Stats {
            x_sq: dot(x, x),
            x_mu: self.mixture.comps.iter().map(|k| dot(x, &k.mean)).collect(),
            ut_x: self.mixture.comps.iter().map(|k| k.project(x)).collect(),
        }
    }

    /// At `level`: returns `log p(x | level[, class])` (for a class, its own weight `π_y` is
    /// kept: it cancels in every posterior) and leaves in `scratch`, per component, its log
    /// term and `m_k` (empty and `−∞` for components outside the class).
    fn level_score(
        &self,
        st: &Stats,
        level: &Level,
        class: Option<usize>,
        scratch: &mut Vec<(f64, Vec<f64>)>,
    ) -> f64 {
        let (alpha, c) = (level.alpha, level.c);
        scratch.clear();
        for (k, comp) in self.mixture.comps.iter().enumerate() {
            if class.is_some_and(|y| y != k) {
                scratch.push((f64::NEG_INFINITY, Vec::new()));
                continue;
            }
            let r = comp.rank;
            let l = &level.chol[k];
            let y_sq = (st.x_sq - 2.0 * alpha * st.x_mu[k] + alpha * alpha * comp.mu_sq).max(0.0);
            // z = L⁻¹ b, b = α Uᵀ y = α (Uᵀx − α Uᵀμ).
            let mut z: Vec<f64> = st.ut_x[k]
                .iter()
                .zip(&comp.ut_mu)
                .map(|(ux, um)| alpha * (ux - alpha * um))
                .collect();
            for i in 0..r {
                z[i] = (z[i] - (0..i).map(|p| l[i * r + p] * z[p]).sum::<f64>()) / l[i * r + i];
            }
            let quad = (y_sq - dot(&z, &z)).max(0.0) / c;
            // m = L⁻ᵀ z solves M m = b.
            for i in (0..r).rev() {
                z[i] = (z[i] - (i + 1..r).map(|p| l[p * r + i] * z[p]).sum::<f64>()) / l[i * r + i];
            }
            scratch.push((level.norm[k] - 0.5 * quad, z));
        }
        let terms: Vec<f64> = scratch.iter().map(|(t, _)| *t).collect();
        log_sum_exp(&terms)
    }

    /// Adds `weight · s(x | level)` to `acc`, from the terms [`Self::level_score`] left in
    /// `scratch` and their log-sum `lse`.
    fn add_score(
        level: &Level,
        scratch: &[(f64, Vec<f64>)],
        lse: f64,
        weight: f64,
        acc: &mut Combo,
    ) {
        let (alpha, c) = (level.alpha, level.c);
        // s = (−x + α Σ_k w_k (μ_k + U_k m_k)) / c.
        acc.cx -= weight / c;
        for (k, (t, m)) in scratch.iter().enumerate() {
            if *t == f64::NEG_INFINITY {
                continue;
            }
            let w = weight * libm::exp(t - lse) * alpha / c;
            acc.cmu[k] += w;
            acc.cu[k]
                .iter_mut()
                .zip(m)
                .for_each(|(cu, mi)| *cu += w * mi);
        }
    }

    fn materialise(&self, x: &[f64], combo: &Combo) -> Vec<f64> {
        let d = x.len();
        let mut out: Vec<f64> = x.iter().map(|v| combo.cx * v).collect();
        for ((comp, cm), cu) in self.mixture.comps.iter().zip(&combo.cmu).zip(&combo.cu) {
            if *cm != 0.0 {
                out.iter_mut()
                    .zip(&comp.mean)
                    .for_each(|(o, m)| *o += cm * m);
            }
            for (u, cui) in comp.ut.chunks_exact(d).zip(cu) {
                if *cui != 0.0 {
                    out.iter_mut().zip(u).for_each(|(o, ui)| *o += cui * ui);
                }
            }
        }
        out
    }

    /// The score `s(x | α, σ[, class]) = ∇ₓ log p(x | α, σ[, y])` at any noise level.
    pub fn score<T: Copy + Into<f64>>(
        &self,
        x: &[T],
        alpha: f64,
        sigma: f64,
        class: Option<usize>,
    ) -> Result<Vec<f64>> {
        let (x, st) = self.prepare(x, class)?;
        let level = Level::new(&self.mixture, alpha, sigma, 0.0)?;
        let mut scratch = Vec::new();
        let lse = self.level_score(&st, &level, class, &mut scratch);
        let mut acc = Combo::zero(&self.mixture);
        Self::add_score(&level, &scratch, lse, 1.0, &mut acc);
        Ok(self.materialise(&x, &acc))
    }

    /// `E[x0] = Σ_k π_k μ_k`, or `μ_y` for a class: the posterior mean of x0 where `α = 0`.
    pub fn prior_mean(&self, class: Option<usize>) -> Result<Vec<f64>> {
        self.check_class(class)?;
        let mut out = vec![0.0; self.mixture.dim()];
        for (k, (comp, &w)) in self
            .mixture
            .comps
            .iter()
            .zip(self.mixture.weights())
            .enumerate()
        {
            let w = match class {
                Some(y) if y == k => 1.0,
                Some(_) => 0.0,
                None => w,
            };
            out.iter_mut()
                .zip(&comp.mean)
                .for_each(|(o, m)| *o += w * m);
        }
        Ok(out)
    }

    /// `p(τ_j | x[, class]) ∝ prior_j·p(x | τ_j[, y])` over the training levels.
    pub fn level_posterior<T: Copy + Into<f64>>(
        &self,
        x: &[T],
        class: Option<usize>,
    ) -> Result<Vec<f64>> {
        let (_, st) = self.prepare(x, class)?;
        let mut scratch = Vec::new();
        let logs: Vec<f64> = self
            .levels
            .iter()
            .map(|l| l.log_prior + self.level_score(&st, l, class, &mut scratch))
            .collect();
        let z = log_sum_exp(&logs);
        if !z.is_finite() {
            return Err(Error::NoSolution(format!(
                "level posterior normaliser is {z}"
            )));
        }
        Ok(logs.iter().map(|l| libm::exp(l - z)).collect())
    }

    /// The noise-dropped prediction `Σ_j p(τ_j | x[, y])·(a_j·x + b_j·s(x | τ_j[, y]))` with
    /// `(a_j, b_j) = affine(j)`, the prediction at level `j` as an affine function of the score
    /// (e.g. `(0, −σ_j)` for ε). One pass over the levels with a running log-sum-exp.
    pub fn dropped<T: Copy + Into<f64>>(
        &self,
        x: &[T],
        class: Option<usize>,
        affine: impl Fn(usize) -> (f64, f64),
    ) -> Result<Vec<f64>> {
        let (x, st) = self.prepare(x, class)?;
        let mut scratch = Vec::new();
        let mut acc = Combo::zero(&self.mixture);
        let mut ax = 0.0;
        let mut running = f64::NEG_INFINITY;
        let mut total = 0.0;
        for (j, level) in self.levels.iter().enumerate() {
            let lse = self.level_score(&st, level, class, &mut scratch);
            let log_w = level.log_prior + lse;
            if log_w == f64::NEG_INFINITY {
                continue;
            }
            if log_w > running {
                let f = libm::exp(running - log_w);
                acc.scale(f);
                ax *= f;
                total *= f;
                running = log_w;
            }
            let w = libm::exp(log_w - running);
            let (a, b) = affine(j);
            if !(a.is_finite() && b.is_finite()) {
                return Err(oor("affine coefficient", a + b, "finite"));
            }
            total += w;
            ax += w * a;
            if b != 0.0 {
                Self::add_score(level, &scratch, lse, w * b, &mut acc);
            }
        }
        if !(total > 0.0 && total.is_finite()) {
            return Err(Error::NoSolution(format!(
                "level posterior normaliser is {total}"
            )));
        }
        acc.cx += ax;
        acc.scale(1.0 / total);
        Ok(self.materialise(&x, &acc))
    }

    /// The classifier signal `∇ₓ log p(τ | x[, y]) = s(x|τ[, y]) − Σ_j p(τ_j|x[, y]) s(x|τ_j[, y])`
    /// at `(α, σ)` of τ, with the training levels as the support of τ's prior.
    pub fn log_posterior_grad<T: Copy + Into<f64>>(
        &self,
        x: &[T],
        alpha: f64,
        sigma: f64,
        class: Option<usize>,
    ) -> Result<Vec<f64>> {
        let s = self.score(x, alpha, sigma, class)?;
        let mean = self.dropped(x, class, |_| (0.0, 1.0))?;
        Ok(s.iter().zip(&mean).map(|(a, b)| a - b).collect())
    }
}

impl GaussianMixture {
    /// The mixture convolved with `N(0, extra²·I)`: every component's isotropic scale becomes
    /// `√(s² + extra²)` (the data of an exact model that leaves `extra` of noise).
    pub fn convolved(&self, extra: f64) -> Result<Self> {
        if !(extra.is_finite() && extra >= 0.0) {
            return Err(oor("extra", extra, "finite and >= 0"));
        }
        let means = self.comps.iter().map(|c| c.mean.clone()).collect();
        let factors = self.comps.iter().map(|c| c.ut.clone()).collect();
        let s = libm::sqrt(self.s() * self.s() + extra * extra);
        GaussianMixture::new(self.dim(), self.weights().to_vec(), means, s, factors)
    }
}

#[cfg(test)]
mod tests;
