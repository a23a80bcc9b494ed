//! Exact sample-quality metrics on `gmm` data, whose distribution
//! `p(x) = Σₖ πₖ N(x; μₖ, Σₖ)`, `Σₖ = s²I + UₖUₖᵀ`, is known ([`GaussianMixture`]).
//!
//! - **Mean log-density**: `(1/n) Σᵢ log p(xᵢ)` with `log p` evaluated exactly by
//!   [`GaussianMixture::log_density`] at `α = 1, σ = 0` (clean data). Compare it with the same
//!   number for real samples (≈ `−H(p)`, the negative entropy): lower means samples off the
//!   data manifold, higher typically means samples collapsed towards the modes.
//! - **Mode assignment**: each sample goes to the component of highest posterior
//!   `p(k | x) ∝ πₖ N(x; μₖ, Σₖ)` ([`component_log_densities`]).
//! - **Coverage**: the fraction of the `K` modes that receive at least a fraction `f` of the
//!   samples (default `f = 1/(4K)`, a quarter of the uniform share), with the histogram.
//! - **Label agreement**: the fraction of samples whose assigned mode equals their conditioning
//!   label (class `k` is component `k` in the `gmm` dataset).
//! - **Exact Fréchet distance** ([`fd_to_mixture`]): between the samples' mean and covariance
//!   and the mixture's *exact* moments, in pixel space; no feature network and no finite
//!   reference set.

use nag_core::gmm::GaussianMixture;
use serde::Serialize;

use super::{check_features, par_map, MetricsError};
use crate::data::{DataError, DataOptions, GmmConfig, GmmDataset, DEFAULT_VIRTUAL_LEN};

const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// Precomputed per-component quantities for `log N(x; μₖ, s²I + UₖUₖᵀ)`.
struct ComponentCache {
    log_w: f64,
    mean: Vec<f64>,
    /// `Uₖᵀ`, `r × d`.
    ut: Vec<f64>,
    rank: usize,
    /// Cholesky factor `L` of `Mₖ = s²I_r + UₖᵀUₖ`, row-major `r × r`.
    chol: Vec<f64>,
    /// `d·log 2π + (d − r)·log s² + log det Mₖ`.
    norm: f64,
}

/// Per-component log-densities of a mixture at clean data (`α = 1, σ = 0`).
pub struct ComponentDensities {
    dim: usize,
    s2: f64,
    comps: Vec<ComponentCache>,
}

impl ComponentDensities {
    /// Precomputes `Mₖ = s²I + UₖᵀUₖ = LₖLₖᵀ` and the normalisers from the mixture's accessors.
    pub fn new(mixture: &GaussianMixture) -> Result<Self, MetricsError> {
        let d = mixture.dim();
        let s2 = mixture.s() * mixture.s();
        let mut comps = Vec::with_capacity(mixture.num_components());
        for k in 0..mixture.num_components() {
            let missing = || MetricsError::Input(format!("mixture has no component {k}"));
            let mean = mixture.mean(k).ok_or_else(missing)?.to_vec();
            let ut = mixture.factor(k).ok_or_else(missing)?.to_vec();
            let r = ut.len() / d;
            let rows: Vec<&[f64]> = ut.chunks_exact(d).collect();
            let mut l = vec![0.0; r * r];
            let mut logdet = 0.0;
            for j in 0..r {
                for i in j..r {
                    let g: f64 = rows[i].iter().zip(rows[j]).map(|(a, b)| a * b).sum::<f64>()
                        + if i == j { s2 } else { 0.0 };
                    let v = g - (0..j).map(|p| l[i * r + p] * l[j * r + p]).sum::<f64>();
                    l[i * r + j] = if i == j {
                        v.max(s2).sqrt()
                    } else {
                        v / l[j * r + j]
                    };
                }
                logdet += 2.0 * l[j * r + j].ln();
            }
            let w = mixture.weights()[k];
            comps.push(ComponentCache {
                log_w: if w > 0.0 { w.ln() } else { f64::NEG_INFINITY },
                mean,
                ut,
                rank: r,
                chol: l,
                // det(s²I_d + UUᵀ) = s^{2(d−r)}·det(s²I_r + UᵀU) (also for r > d).
                norm: d as f64 * LN_2PI + (d as f64 - r as f64) * s2.ln() + logdet,
            });
        }
        Ok(Self { dim: d, s2, comps })
    }

    /// Number of components `K`.
    pub fn num_components(&self) -> usize {
        self.comps.len()
    }

    /// `log πₖ + log N(x; μₖ, s²I + UₖUₖᵀ)` for every `k`, with `y = x − μₖ`, `b = Uₖᵀy`:
    /// `log N = −½(d log 2π + (d − r) log s² + log det Mₖ + (|y|² − bᵀMₖ⁻¹b)/s²)`
    /// (Woodbury and the matrix determinant lemma). `x` has length `d`.
    pub fn log_joint<T: Copy + Into<f64>>(&self, x: &[T]) -> Result<Vec<f64>, MetricsError> {
        if x.len() != self.dim {
            return Err(MetricsError::Input(format!(
                "sample has {} values, the mixture has dimension {}",
                x.len(),
                self.dim
            )));
        }
        let x: Vec<f64> = x.iter().map(|&v| v.into()).collect();
        if x.iter().any(|v| !v.is_finite()) {
            return Err(MetricsError::Input("sample has non-finite values".into()));
        }
        Ok(self
            .comps
            .iter()
            .map(|c| {
                let y: Vec<f64> = x.iter().zip(&c.mean).map(|(a, m)| a - m).collect();
                let y2: f64 = y.iter().map(|v| v * v).sum();
                let r = c.rank;
                let mut z: Vec<f64> =
                    c.ut.chunks_exact(self.dim)
                        .map(|u| u.iter().zip(&y).map(|(a, b)| a * b).sum())
                        .collect();
                for i in 0..r {
                    let s: f64 = (0..i).map(|p| c.chol[i * r + p] * z[p]).sum();
                    z[i] = (z[i] - s) / c.chol[i * r + i];
                }
                let quad = (y2 - z.iter().map(|v| v * v).sum::<f64>()).max(0.0) / self.s2;
                c.log_w - 0.5 * (c.norm + quad)
            })
            .collect())
    }
}

/// `log πₖ + log N(x; μₖ, Σₖ)` for each component `k` of `mixture` at clean data; see
/// [`ComponentDensities::log_joint`]. `log p(x)` is their log-sum-exp.
pub fn component_log_densities<T: Copy + Into<f64>>(
    mixture: &GaussianMixture,
    x: &[T],
) -> Result<Vec<f64>, MetricsError> {
    ComponentDensities::new(mixture)?.log_joint(x)
}

/// Metrics of samples under the known data mixture; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GmmReport {
    /// Number of samples `n`.
    pub n: usize,
    /// Dimension `d`.
    pub dim: usize,
    /// `(1/n) Σᵢ log p(xᵢ)` (nats).
    pub mean_log_density: f64,
    /// `mean_log_density / d` (nats per dimension).
    pub log_density_per_dim: f64,
    /// Samples assigned to each mode (argmax of the component posterior).
    pub mode_counts: Vec<usize>,
    /// The fraction `f` a mode needs to count as covered.
    pub min_fraction: f64,
    /// Modes with at least `f·n` samples.
    pub modes_covered: usize,
    /// `modes_covered / K`.
    pub coverage: f64,
    /// Fraction of samples whose assigned mode equals their label (when labels were given).
    pub label_agreement: Option<f64>,
}

/// Computes the [`GmmReport`] of `samples` (row-major `n × d`, `f32`) under `mixture`.
/// `labels` (length `n`), if given, are the conditioning labels; `min_fraction` defaults to
/// `1/(4K)`.
pub fn gmm_metrics(
    mixture: &GaussianMixture,
    samples: &[f32],
    labels: Option<&[i64]>,
    min_fraction: Option<f64>,
) -> Result<GmmReport, MetricsError> {
    let d = mixture.dim();
    let n = check_features("gmm samples", samples, d)?;
    if n == 0 {
        return Err(MetricsError::Input(
            "gmm metrics need at least one sample".into(),
        ));
    }
    if let Some(l) = labels {
        if l.len() != n {
            return Err(MetricsError::Input(format!(
                "{} labels for {n} samples",
                l.len()
            )));
        }
    }
    let k = mixture.num_components();
    let f = min_fraction.unwrap_or(1.0 / (4 * k) as f64);
    if !(0.0..=1.0).contains(&f) {
        return Err(MetricsError::Config(format!(
            "min_fraction must be in [0, 1] (got {f})"
        )));
    }
    let cache = ComponentDensities::new(mixture)?;
    let rows = par_map(n, |i| -> Result<(f64, usize), MetricsError> {
        let x = &samples[i * d..(i + 1) * d];
        let joint = cache.log_joint(x)?;
        let best = (0..k).fold(0, |b, j| if joint[j] > joint[b] { j } else { b });
        Ok((mixture.log_density(x, 1.0, 0.0)?, best))
    });
    let mut total = 0.0;
    let mut counts = vec![0usize; k];
    let mut agree = 0usize;
    for (i, row) in rows.into_iter().enumerate() {
        let (lp, best) = row?;
        total += lp;
        counts[best] += 1;
        if labels.is_some_and(|l| l[i] == best as i64) {
            agree += 1;
        }
    }
    let covered = counts
        .iter()
        .filter(|&&c| c > 0 && c as f64 >= f * n as f64)
        .count();
    let mean = total / n as f64;
    Ok(GmmReport {
        n,
        dim: d,
        mean_log_density: mean,
        log_density_per_dim: mean / d as f64,
        mode_counts: counts,
        min_fraction: f,
        modes_covered: covered,
        coverage: covered as f64 / k as f64,
        label_agreement: labels.map(|_| agree as f64 / n as f64),
    })
}

/// Fréchet distance in pixel space between `samples` (row-major `n × d`, `n ≥ 2`) and the exact
/// moments of `mixture`: `μ = Σ_k π_k μ_k`, `Σ = s²I + Σ_k π_k (U_kU_kᵀ + μ_kμ_kᵀ) − μμᵀ`.
/// With the samples' `Σ̂ = FᵀF` (`F` centred rows over `√(n−1)`), `tr (ΣΣ̂)^½ = Σ_i √λ_i(FΣFᵀ)`
/// and `FΣFᵀ = s²FFᵀ + Σ_k π_k ((FU_k)(FU_k)ᵀ + (Fμ_k)(Fμ_k)ᵀ) − (Fμ)(Fμ)ᵀ`, an `n × n` matrix:
/// `O(n²d + n³)`, never a `d × d` one.
pub fn fd_to_mixture(mixture: &GaussianMixture, samples: &[f32]) -> Result<f64, MetricsError> {
    let d = mixture.dim();
    let n = check_features("gmm samples", samples, d)?;
    if n < 2 {
        return Err(MetricsError::Input(format!(
            "the Fréchet distance needs at least 2 samples (got {n})"
        )));
    }
    let k_count = mixture.num_components();
    let weights = mixture.weights();
    let comp = |k: usize| {
        let missing = || MetricsError::Input(format!("mixture has no component {k}"));
        Ok::<_, MetricsError>((
            mixture.mean(k).ok_or_else(missing)?,
            mixture.factor(k).ok_or_else(missing)?,
        ))
    };
    let mut mu = vec![0.0; d];
    let mut tr = d as f64 * mixture.s().powi(2);
    for (k, &wk) in weights.iter().enumerate().take(k_count) {
        let (m, ut) = comp(k)?;
        mu.iter_mut().zip(m).for_each(|(a, b)| *a += wk * b);
        let (uu, mm): (f64, f64) = (
            ut.iter().map(|v| v * v).sum(),
            m.iter().map(|v| v * v).sum(),
        );
        tr += wk * (uu + mm);
    }
    tr -= mu.iter().map(|v| v * v).sum::<f64>();
    let mut mean = vec![0.0; d];
    for row in samples.chunks_exact(d) {
        mean.iter_mut()
            .zip(row)
            .for_each(|(m, &x)| *m += x as f64 / n as f64);
    }
    let scale = 1.0 / ((n - 1) as f64).sqrt();
    let f: Vec<Vec<f64>> = samples
        .chunks_exact(d)
        .map(|row| {
            row.iter()
                .zip(&mean)
                .map(|(&x, m)| (x as f64 - m) * scale)
                .collect()
        })
        .collect();
    let tr_hat: f64 = f.iter().flatten().map(|v| v * v).sum();
    let dotf = |v: &[f64]| -> Vec<f64> {
        f.iter()
            .map(|r| r.iter().zip(v).map(|(a, b)| a * b).sum())
            .collect()
    };
    // Columns (FU_k)_i and Fμ_k with their weights, then Fμ with weight −1.
    let mut cols: Vec<(f64, Vec<f64>)> = Vec::new();
    for (k, &wk) in weights.iter().enumerate().take(k_count) {
        let (m, ut) = comp(k)?;
        for u in ut.chunks_exact(d) {
            cols.push((wk, dotf(u)));
        }
        cols.push((wk, dotf(m)));
    }
    cols.push((-1.0, dotf(&mu)));
    let s2 = mixture.s().powi(2);
    let g = par_map(n, |i| {
        (0..n)
            .map(|j| {
                let ff: f64 = f[i].iter().zip(&f[j]).map(|(a, b)| a * b).sum();
                s2 * ff + cols.iter().map(|(w, c)| w * c[i] * c[j]).sum::<f64>()
            })
            .collect::<Vec<f64>>()
    })
    .concat();
    let values = super::fd::symmetric_eigenvalues(&g, n)?;
    let tr_sqrt: f64 = values.iter().map(|l| l.max(0.0).sqrt()).sum();
    let mean_term: f64 = mean.iter().zip(&mu).map(|(a, b)| (a - b).powi(2)).sum();
    Ok((mean_term + tr + tr_hat - 2.0 * tr_sqrt).max(0.0))
}

/// The [`GmmDataset`] that [`crate::data::open_dataset`] builds for a `gmm` spec (`gmm`,
/// `gmm16`, `gmm32`, …) with `options`, so its exact mixture is available; `None` when `spec`
/// is not a `gmm` spec.
pub fn gmm_dataset_for(spec: &str, options: &DataOptions) -> Option<Result<GmmDataset, DataError>> {
    let rest = spec.strip_prefix("gmm")?;
    if !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let size = if rest.is_empty() {
        Ok(options.image_size.unwrap_or(16))
    } else {
        rest.parse::<usize>()
            .map_err(|_| DataError::Config(format!("bad size in dataset spec '{spec}'")))
    };
    Some(size.and_then(|size| {
        GmmDataset::new(GmmConfig {
            size,
            len: options.len.unwrap_or(DEFAULT_VIRTUAL_LEN),
            seed: options.seed,
            ..GmmConfig::default()
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;

    fn dataset(classes: usize) -> GmmDataset {
        GmmDataset::new(GmmConfig {
            size: 8,
            classes,
            len: 1000,
            ..GmmConfig::default()
        })
        .unwrap()
    }

    fn log_sum_exp(v: &[f64]) -> f64 {
        let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
    }

    /// The low-rank path equals the dense FD against the mixture's d × d moments; real samples
    /// are close to the exact moments, shifted ones are not.
    #[test]
    fn exact_fd_matches_the_dense_formula() {
        let ds = dataset(3);
        let m = ds.mixture();
        let d = m.dim();
        let real: Vec<f32> = (0..60)
            .flat_map(|i| ds.sample_f64(i).unwrap().0)
            .map(|v| v as f32)
            .collect();
        let mut mu = vec![0.0; d];
        let mut second = vec![0.0; d * d];
        for k in 0..3 {
            let (w, mk, ut) = (m.weights()[k], m.mean(k).unwrap(), m.factor(k).unwrap());
            for i in 0..d {
                mu[i] += w * mk[i];
                for j in 0..d {
                    let uu: f64 = ut.chunks(d).map(|u| u[i] * u[j]).sum();
                    let iso = if i == j { m.s() * m.s() } else { 0.0 };
                    second[i * d + j] += w * (iso + uu + mk[i] * mk[j]);
                }
            }
        }
        let cov: Vec<f64> = (0..d * d)
            .map(|ij| second[ij] - mu[ij / d] * mu[ij % d])
            .collect();
        let exact = crate::metrics::FeatureStats::from_moments(mu, cov).unwrap();
        for shift in [0.0f32, 0.3] {
            let x: Vec<f32> = real.iter().map(|v| v + shift).collect();
            let dense = crate::metrics::frechet_distance(
                &crate::metrics::FeatureStats::from_features(&x, d).unwrap(),
                &exact,
            )
            .unwrap();
            let fast = fd_to_mixture(m, &x).unwrap();
            // The dense path takes square roots of ~130 rounding-level eigenvalues (rank 59 of
            // 192): ~1e-6 of noise.
            assert!(
                (fast - dense).abs() < 1e-5 * dense.max(1.0),
                "{fast} vs {dense}"
            );
            if shift > 0.0 {
                assert!(
                    fast > 0.09 * d as f64,
                    "a shift of 0.3 per pixel: FD {fast}"
                );
            }
        }
        assert!(fd_to_mixture(m, &real[..d]).is_err());
    }

    #[test]
    fn component_densities_match_the_mixture() {
        let ds = dataset(4);
        let m = ds.mixture();
        for i in [0, 5, 42] {
            let (x, k) = ds.sample_f64(i).unwrap();
            let joint = component_log_densities(m, &x).unwrap();
            let lp = m.log_density(&x, 1.0, 0.0).unwrap();
            assert!((log_sum_exp(&joint) - lp).abs() < 1e-8 * lp.abs().max(1.0));
            let best = (0..4).fold(0, |b, j| if joint[j] > joint[b] { j } else { b });
            assert_eq!(best, k);
        }
        assert!(component_log_densities(m, &[0.0f32; 3]).is_err());
    }

    #[test]
    fn mixture_samples_cover_all_modes_and_one_mode_covers_one() {
        let ds = dataset(4);
        let m = ds.mixture();
        let d = m.dim();
        let mut rng = crate::data::stream_rng(0, 0, 0);
        let items: Vec<_> = (0..200).map(|i| ds.item(i, &mut rng).unwrap()).collect();
        let x: Vec<f32> = items.iter().flat_map(|it| it.x.clone()).collect();
        let y: Vec<i64> = items.iter().map(|it| it.y).collect();
        let r = gmm_metrics(m, &x, Some(&y), None).unwrap();
        assert_eq!((r.n, r.dim, r.modes_covered), (200, d, 4));
        assert_eq!(r.coverage, 1.0);
        assert_eq!(r.mode_counts, vec![50; 4]);
        assert_eq!(r.label_agreement, Some(1.0));
        // The mean log-density of mixture samples is the negative entropy: compare two
        // independent halves (they agree within sampling error, a few nats of ~d).
        let other: Vec<f32> = (1000 - 200..1000)
            .flat_map(|i| ds.item(i, &mut rng).unwrap().x)
            .collect();
        let r2 = gmm_metrics(m, &other, None, None).unwrap();
        let sd = (d as f64 / 2.0).sqrt(); // std of log N for a Gaussian: √(d/2)
        assert!(
            (r.mean_log_density - r2.mean_log_density).abs() < 5.0 * sd / (200f64).sqrt() * 2.0,
            "{} vs {}",
            r.mean_log_density,
            r2.mean_log_density
        );
        assert!(r2.label_agreement.is_none());
        // Samples of mode 2 only: coverage 1/K, all counts on mode 2.
        let one: Vec<f32> = (0..40)
            .flat_map(|j| ds.item(4 * j + 2, &mut rng).unwrap().x)
            .collect();
        let r = gmm_metrics(m, &one, Some(&vec![2; 40]), None).unwrap();
        assert_eq!(r.mode_counts, vec![0, 0, 40, 0]);
        assert_eq!(r.coverage, 0.25);
        // Samples far from the data (the mean image shifted by +3) are much less likely.
        let far: Vec<f32> = x.iter().map(|v| v + 3.0).collect();
        let r_far = gmm_metrics(m, &far, None, None).unwrap();
        assert!(r_far.mean_log_density < r2.mean_log_density - 100.0);
    }

    #[test]
    fn bad_input_and_dataset_specs() {
        let ds = dataset(2);
        let m = ds.mixture();
        let d = m.dim();
        assert!(gmm_metrics(m, &[], None, None).is_err());
        assert!(gmm_metrics(m, &vec![0.0; d + 1], None, None).is_err());
        assert!(gmm_metrics(m, &vec![0.0; d], Some(&[0, 1]), None).is_err());
        assert!(gmm_metrics(m, &vec![0.0; d], None, Some(2.0)).is_err());
        assert!(gmm_metrics(m, &vec![f32::NAN; d], None, None).is_err());
        let opts = DataOptions {
            seed: 3,
            len: Some(10),
            ..DataOptions::default()
        };
        assert!(gmm_dataset_for("shapes", &opts).is_none());
        assert!(gmm_dataset_for("gmmx", &opts).is_none());
        let g = gmm_dataset_for("gmm8", &opts).unwrap().unwrap();
        assert_eq!((g.config().size, g.config().seed), (8, 3));
        let from_spec = crate::data::open_dataset("gmm8", &opts).unwrap();
        let mut rng = crate::data::stream_rng(0, 0, 0);
        assert_eq!(
            from_spec.item(3, &mut rng).unwrap(),
            g.item(3, &mut rng).unwrap()
        );
    }
}
