//! Fréchet distance between two sets of feature vectors.
//!
//! Each set is summarised by its mean `μ` and covariance `Σ` (in `f64`, unbiased, `1/(n − 1)`,
//! as `numpy.cov` in pytorch-fid). The Fréchet (2-Wasserstein) distance between the Gaussians
//! `N(μ₁, Σ₁)` and `N(μ₂, Σ₂)` is
//!
//! ```text
//! FD = |μ₁ − μ₂|² + tr Σ₁ + tr Σ₂ − 2·tr (Σ₁Σ₂)^½
//! ```
//!
//! `Σ₁Σ₂` is not symmetric, but it is similar to the symmetric PSD matrix
//! `M = Σ₁^½ Σ₂ Σ₁^½` (`Σ₁Σ₂ = Σ₁^½ M Σ₁^−½`), so `tr (Σ₁Σ₂)^½ = Σᵢ √λᵢ(M)`
//! ([`trace_sqrt_product`], `O(d³)`). When both sets have fewer vectors than dimensions (FID:
//! `d = 2048`, a few hundred samples) the same trace comes from the data: with `Σ = FᵀF`, `F`
//! the centred `n × d` features over `√(n − 1)`, the non-zero eigenvalues of `Σ₁Σ₂` are those of
//! `CCᵀ`, `C = F₁F₂ᵀ` (`n₁ × n₂`), so `tr (Σ₁Σ₂)^½ = ‖C‖_*`, the sum of its singular values
//! ([`frechet_distance`] picks this path when it is cheaper). Eigenvalues come from
//! [`symmetric_eigen`]: Householder reduction to tridiagonal form, then implicit QL (exact to
//! rounding, `O(d³)`: seconds at `d = 2048`). With Inception pool features this is FID; here the
//! features are usually those of the dataset's own classifier ([`super::features`]).

use super::{check_features, par_map, par_rows_mut, MetricsError};

/// Eigen-decomposition `A = V diag(λ) Vᵀ` of a symmetric matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct SymmetricEigen {
    /// Size `n`.
    pub n: usize,
    /// Eigenvalues `λ`, descending.
    pub values: Vec<f64>,
    /// Eigenvectors as the columns of `V`, row-major `n × n` (`V[i·n + j]` is entry `i` of the
    /// eigenvector of `λ_j`); `V` is orthogonal.
    pub vectors: Vec<f64>,
}

impl SymmetricEigen {
    /// `V diag(f(λ)) Vᵀ`, row-major `n × n` (a matrix function of the decomposed matrix).
    pub fn apply(&self, f: impl Fn(f64) -> f64) -> Vec<f64> {
        let n = self.n;
        let fl: Vec<f64> = self.values.iter().map(|&l| f(l)).collect();
        // Rows of V diag(f(λ)) and of V, dotted pairwise.
        let v = &self.vectors;
        let rows = par_map(n, |i| {
            let vi = &v[i * n..(i + 1) * n];
            let scaled: Vec<f64> = vi.iter().zip(&fl).map(|(a, b)| a * b).collect();
            (0..n)
                .map(|j| {
                    let vj = &v[j * n..(j + 1) * n];
                    scaled.iter().zip(vj).map(|(a, b)| a * b).sum::<f64>()
                })
                .collect::<Vec<f64>>()
        });
        rows.concat()
    }
}

/// Most implicit-QL iterations spent on one eigenvalue before [`MetricsError::NoConvergence`]
/// (two or three are typical).
const MAX_QL_ITERATIONS: usize = 64;

fn check_symmetric_input(what: &str, a: &[f64], n: usize) -> Result<(), MetricsError> {
    if n == 0 || a.len() != n * n {
        return Err(MetricsError::Input(format!(
            "{what}: need an n×n matrix with n ≥ 1 (n = {n}, {} values)",
            a.len()
        )));
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Err(MetricsError::Input(format!(
            "{what}: the matrix has non-finite entries"
        )));
    }
    Ok(())
}

/// Eigen-decomposition of the symmetric `n × n` matrix `a` (row-major; it is symmetrised as
/// `(A + Aᵀ)/2` first).
///
/// `A = Q T Qᵀ` by `n − 2` Householder reflections (`T` tridiagonal), then `T = W Λ Wᵀ` by
/// implicit QL iterations with Wilkinson shifts, so `V = QW`. Accurate to a small multiple of
/// `ε‖A‖`; `O(n³)`.
///
/// Errors: `n = 0`, `a.len() ≠ n²`, non-finite entries, or an eigenvalue that takes more than
/// 64 QL iterations (not expected for finite input).
pub fn symmetric_eigen(a: &[f64], n: usize) -> Result<SymmetricEigen, MetricsError> {
    check_symmetric_input("symmetric_eigen", a, n)?;
    let (mut d, mut e, q_t) = tridiagonal(a, n, true);
    // Rows of `z_t` are the columns of V (contiguous for the QL rotations).
    let mut z_t = q_t.unwrap_or_default();
    tridiagonal_ql(&mut d, &mut e, Some(&mut z_t), n)?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[j].total_cmp(&d[i]));
    let values = order.iter().map(|&i| d[i]).collect();
    let mut vectors = vec![0.0; n * n];
    for (new, &old) in order.iter().enumerate() {
        for k in 0..n {
            vectors[k * n + new] = z_t[old * n + k];
        }
    }
    Ok(SymmetricEigen { n, values, vectors })
}

/// Eigenvalues only, descending (as [`symmetric_eigen`], without accumulating `V`: about a
/// third of the work).
pub fn symmetric_eigenvalues(a: &[f64], n: usize) -> Result<Vec<f64>, MetricsError> {
    check_symmetric_input("symmetric_eigenvalues", a, n)?;
    let (mut d, mut e, _) = tridiagonal(a, n, false);
    tridiagonal_ql(&mut d, &mut e, None, n)?;
    d.sort_by(|x, y| y.total_cmp(x));
    Ok(d)
}

/// Householder reduction `A = Q T Qᵀ` of the symmetrised `a`: the diagonal `d` and the
/// off-diagonal `e` of `T` (`e[i] = T[i, i+1]`, `e[n−1] = 0`) and, if asked, `Qᵀ` row-major.
///
/// Step `k` reflects the column below `T[k, k]`: `x = A[k+1.., k]`, `v = x − α e₁` with
/// `α = −sgn(x₀)‖x‖`, `H = I − β v vᵀ`, `β = 2 / vᵀv`; the trailing block `S` becomes
/// `HSH = S − v qᵀ − q vᵀ` with `p = βSv`, `q = p − (β vᵀp / 2) v`.
fn tridiagonal(a: &[f64], n: usize, want_q: bool) -> (Vec<f64>, Vec<f64>, Option<Vec<f64>>) {
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            m[i * n + j] = 0.5 * (a[i * n + j] + a[j * n + i]);
        }
    }
    let mut q_t = want_q.then(|| {
        let mut q = vec![0.0; n * n];
        (0..n).for_each(|i| q[i * n + i] = 1.0);
        q
    });
    let mut e = vec![0.0; n];
    for k in 0..n.saturating_sub(2) {
        let lo = k + 1;
        // Column k below the diagonal = row k right of it (symmetric).
        let mut v: Vec<f64> = m[k * n + lo..(k + 1) * n].to_vec();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            continue;
        }
        let alpha = if v[0] > 0.0 { -norm } else { norm };
        v[0] -= alpha;
        let vtv: f64 = v.iter().map(|x| x * x).sum();
        let beta = 2.0 / vtv;
        // p = β S v over the trailing block rows lo..n.
        let p: Vec<f64> = par_map(n - lo, |r| {
            let row = &m[(lo + r) * n + lo..(lo + r + 1) * n];
            beta * row.iter().zip(&v).map(|(s, x)| s * x).sum::<f64>()
        });
        let kappa = 0.5 * beta * v.iter().zip(&p).map(|(a, b)| a * b).sum::<f64>();
        let q: Vec<f64> = p.iter().zip(&v).map(|(p, v)| p - kappa * v).collect();
        par_rows_mut(&mut m[lo * n..], n, |r, row| {
            let (vr, qr) = (v[r], q[r]);
            for ((s, &vc), &qc) in row[lo..].iter_mut().zip(&v).zip(&q) {
                *s -= vr * qc + qr * vc;
            }
        });
        e[k] = alpha;
        // Qᵀ ← H Qᵀ (rows lo..n): w = vᵀ Qᵀ[lo.., :], then Qᵀ[lo + r, :] −= β v_r w.
        if let Some(q_t) = q_t.as_mut() {
            let mut w = vec![0.0; n];
            for (r, &vr) in v.iter().enumerate() {
                let row = &q_t[(lo + r) * n..(lo + r + 1) * n];
                w.iter_mut().zip(row).for_each(|(w, x)| *w += vr * x);
            }
            par_rows_mut(&mut q_t[lo * n..], n, |r, row| {
                let c = beta * v[r];
                row.iter_mut().zip(&w).for_each(|(x, w)| *x -= c * w);
            });
        }
    }
    if n >= 2 {
        e[n - 2] = m[(n - 2) * n + n - 1];
    }
    let d = (0..n).map(|i| m[i * n + i]).collect();
    (d, e, q_t)
}

/// Implicit QL with Wilkinson shifts on the tridiagonal `(d, e)` (`e[i]` couples `i` and
/// `i + 1`): `d` becomes the eigenvalues; the rotations are applied to the rows of `z_t`
/// (`Zᵀ ← GᵀZᵀ`), so a `z_t` holding `Qᵀ` ends holding `(QW)ᵀ`.
fn tridiagonal_ql(
    d: &mut [f64],
    e: &mut [f64],
    mut z_t: Option<&mut [f64]>,
    n: usize,
) -> Result<(), MetricsError> {
    // EISPACK's tql2 scale: an off-diagonal below ε·max_i(|d_i| + |e_i|) is negligible too.
    // Without it a block of (numerically) zero eigenvalues, as a rank-deficient covariance has,
    // never splits: its entries are all ~ε, so no relative test passes.
    let norm = d
        .iter()
        .zip(e.iter())
        .map(|(a, b)| a.abs() + b.abs())
        .fold(0.0, f64::max);
    for l in 0..n {
        let mut iterations = 0;
        loop {
            // The first negligible off-diagonal at or after l splits the matrix.
            let mut m = l;
            while m + 1 < n && e[m].abs() > f64::EPSILON * (d[m].abs() + d[m + 1].abs()).max(norm) {
                m += 1;
            }
            if m == l {
                break;
            }
            iterations += 1;
            if iterations > MAX_QL_ITERATIONS {
                return Err(MetricsError::NoConvergence {
                    n,
                    index: l,
                    iterations: MAX_QL_ITERATIONS,
                });
            }
            // Shift from the leading 2×2 block's eigenvalue nearer d[l].
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = g.hypot(1.0);
            g = d[m] - d[l] + e[l] / (g + r.copysign(g));
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut deflated = false;
            for i in (l..m).rev() {
                let f = s * e[i];
                let b = c * e[i];
                r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    // Underflow: the matrix split at i; start again from the new split.
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    deflated = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
                if let Some(z) = z_t.as_deref_mut() {
                    let (head, tail) = z.split_at_mut((i + 1) * n);
                    let zi = &mut head[i * n..];
                    let zi1 = &mut tail[..n];
                    for (a, b) in zi.iter_mut().zip(zi1.iter_mut()) {
                        let (x, y) = (*a, *b);
                        *b = s * x + c * y;
                        *a = c * x - s * y;
                    }
                }
            }
            if deflated {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    Ok(())
}

/// Mean and covariance of a set of feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    /// Dimension `d`.
    pub dim: usize,
    /// Number of vectors the statistics came from (0 when built from given moments).
    pub n: usize,
    /// `μ = (1/n) Σᵢ xᵢ`.
    pub mean: Vec<f64>,
    /// `Σ = (1/(n − 1)) Σᵢ (xᵢ − μ)(xᵢ − μ)ᵀ`, row-major `d × d`.
    pub cov: Vec<f64>,
    /// `F = (xᵢ − μ)ᵢ / √(n − 1)`, row-major `n × d` (`Σ = FᵀF`), kept when `n ≤ d` for the
    /// low-rank path of [`frechet_distance`].
    pub factor: Option<Vec<f64>>,
}

impl FeatureStats {
    /// Statistics of `n × dim` row-major features (`f32` or `f64`); needs `n ≥ 2` and finite
    /// values.
    pub fn from_features<T: Copy + Into<f64> + Sync>(
        features: &[T],
        dim: usize,
    ) -> Result<Self, MetricsError> {
        let n = check_features("FD features", features, dim)?;
        if n < 2 {
            return Err(MetricsError::Input(format!(
                "FD needs at least 2 feature vectors per set (got {n})"
            )));
        }
        let mut mean = vec![0.0; dim];
        for row in features.chunks_exact(dim) {
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += x.into();
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let centred: Vec<f64> = features
            .chunks_exact(dim)
            .flat_map(|row| row.iter().zip(&mean).map(|(&x, m)| x.into() - m))
            .collect();
        // Row i of Σ (upper part), one row per task.
        let rows = par_map(dim, |i| {
            let mut r = vec![0.0; dim - i];
            for x in centred.chunks_exact(dim) {
                let xi = x[i];
                for (rj, xj) in r.iter_mut().zip(&x[i..]) {
                    *rj += xi * xj;
                }
            }
            r
        });
        let mut cov = vec![0.0; dim * dim];
        for (i, r) in rows.into_iter().enumerate() {
            for (k, v) in r.into_iter().enumerate() {
                let j = i + k;
                let v = v / (n - 1) as f64;
                cov[i * dim + j] = v;
                cov[j * dim + i] = v;
            }
        }
        let factor = (n <= dim).then(|| {
            let scale = 1.0 / ((n - 1) as f64).sqrt();
            centred.iter().map(|x| x * scale).collect()
        });
        Ok(Self {
            dim,
            n,
            mean,
            cov,
            factor,
        })
    }

    /// Statistics from given moments (`mean` of length `d`, `cov` row-major `d × d`, symmetric
    /// PSD); `n` is set to 0.
    pub fn from_moments(mean: Vec<f64>, cov: Vec<f64>) -> Result<Self, MetricsError> {
        let dim = mean.len();
        if dim == 0 || cov.len() != dim * dim {
            return Err(MetricsError::Input(format!(
                "moments: mean of length {dim} needs a {dim}×{dim} covariance (got {} values)",
                cov.len()
            )));
        }
        if mean.iter().chain(&cov).any(|v| !v.is_finite()) {
            return Err(MetricsError::Input("moments are not finite".into()));
        }
        Ok(Self {
            dim,
            n: 0,
            mean,
            cov,
            factor: None,
        })
    }

    /// `tr Σ`.
    pub fn trace(&self) -> f64 {
        (0..self.dim).map(|i| self.cov[i * self.dim + i]).sum()
    }
}

/// `tr (Σ₁Σ₂)^½ = Σᵢ √max(λᵢ, 0)` with `λ` the eigenvalues of `Σ₁^½ Σ₂ Σ₁^½` (symmetric PSD),
/// `Σ₁^½ = V diag(√max(λ(Σ₁), 0)) Vᵀ`.
pub fn trace_sqrt_product(s1: &[f64], s2: &[f64], n: usize) -> Result<f64, MetricsError> {
    if s1.len() != n * n || s2.len() != n * n {
        return Err(MetricsError::Input(format!(
            "trace_sqrt_product: need two {n}×{n} matrices"
        )));
    }
    let root = symmetric_eigen(s1, n)?.apply(|l| l.max(0.0).sqrt());
    // M = R Σ₂ R.
    let tmp = matmul(&root, s2, n);
    let m = matmul(&tmp, &root, n);
    let values = symmetric_eigenvalues(&m, n)?;
    Ok(values.iter().map(|l| l.max(0.0).sqrt()).sum())
}

/// `tr (Σ₁Σ₂)^½` from the factors `Σ₁ = F₁ᵀF₁`, `Σ₂ = F₂ᵀF₂` (`F₁` `n₁ × d`, `F₂` `n₂ × d`,
/// row-major): the nuclear norm of `C = F₁F₂ᵀ`, `Σᵢ √λᵢ(G)` with `G = CCᵀ` or `CᵀC`, whichever
/// is smaller ([module docs](self)).
pub fn trace_sqrt_product_low_rank(
    f1: &[f64],
    f2: &[f64],
    dim: usize,
) -> Result<f64, MetricsError> {
    if dim == 0
        || !f1.len().is_multiple_of(dim)
        || !f2.len().is_multiple_of(dim)
        || f1.is_empty()
        || f2.is_empty()
    {
        return Err(MetricsError::Input(format!(
            "trace_sqrt_product_low_rank: need two non-empty row-major factors with {dim} columns"
        )));
    }
    // The smaller set indexes G's rows.
    let (small, large) = if f1.len() <= f2.len() {
        (f1, f2)
    } else {
        (f2, f1)
    };
    let (ns, nl) = (small.len() / dim, large.len() / dim);
    // C = S Lᵀ (ns × nl), then G = C Cᵀ (ns × ns).
    let c = par_map(ns, |i| {
        let si = &small[i * dim..(i + 1) * dim];
        (0..nl)
            .map(|j| {
                let lj = &large[j * dim..(j + 1) * dim];
                si.iter().zip(lj).map(|(a, b)| a * b).sum::<f64>()
            })
            .collect::<Vec<f64>>()
    });
    let g = par_map(ns, |i| {
        (0..ns)
            .map(|j| c[i].iter().zip(&c[j]).map(|(a, b)| a * b).sum::<f64>())
            .collect::<Vec<f64>>()
    })
    .concat();
    let values = symmetric_eigenvalues(&g, ns)?;
    Ok(values.iter().map(|l| l.max(0.0).sqrt()).sum())
}

/// Row-major `n × n` product.
fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let rows = par_map(n, |i| {
        let mut r = vec![0.0; n];
        for k in 0..n {
            let aik = a[i * n + k];
            if aik != 0.0 {
                for (rj, bkj) in r.iter_mut().zip(&b[k * n..(k + 1) * n]) {
                    *rj += aik * bkj;
                }
            }
        }
        r
    });
    rows.concat()
}

/// `FD = |μ₁ − μ₂|² + tr Σ₁ + tr Σ₂ − 2·tr (Σ₁Σ₂)^½` ([module docs](self)), clamped at 0
/// against rounding (identical statistics give 0 up to ~1e-12 relative). The trace comes from
/// the features' factors when both sets have them and `n₁n₂ < d²`
/// ([`trace_sqrt_product_low_rank`]), else from the covariances ([`trace_sqrt_product`]).
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64, MetricsError> {
    if a.dim != b.dim {
        return Err(MetricsError::Input(format!(
            "FD: feature dimensions differ ({} vs {})",
            a.dim, b.dim
        )));
    }
    let tr = trace_sqrt_of(a, b)?;
    Ok((mean_sq_distance(a, b) + a.trace() + b.trace() - 2.0 * tr).max(0.0))
}

/// `|μ₁ − μ₂|²`.
pub(crate) fn mean_sq_distance(a: &FeatureStats, b: &FeatureStats) -> f64 {
    a.mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y).powi(2))
        .sum()
}

/// `tr (Σ₁Σ₂)^½` by the cheaper path: from the features' factors when both sets have them and
/// `n₁n₂ < d²` (~n₁n₂d), else from the covariances (~d³).
pub(crate) fn trace_sqrt_of(a: &FeatureStats, b: &FeatureStats) -> Result<f64, MetricsError> {
    match (&a.factor, &b.factor) {
        (Some(fa), Some(fb)) if a.n * b.n < a.dim * a.dim => {
            trace_sqrt_product_low_rank(fa, fb, a.dim)
        }
        _ => trace_sqrt_product(&a.cov, &b.cov, a.dim),
    }
}

/// [`frechet_distance`] of two `n × dim` row-major feature arrays (each `n ≥ 2`).
pub fn frechet_distance_features<T: Copy + Into<f64> + Sync>(
    a: &[T],
    b: &[T],
    dim: usize,
) -> Result<f64, MetricsError> {
    frechet_distance(
        &FeatureStats::from_features(a, dim)?,
        &FeatureStats::from_features(b, dim)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::stream_rng;

    fn normals(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = stream_rng(seed, 1, 0);
        (0..n).map(|_| crate::data::normal(&mut rng)).collect()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1.0)
    }

    fn random_symmetric(n: usize, seed: u64) -> Vec<f64> {
        let r = normals(n * n, seed);
        (0..n * n)
            .map(|ij| r[ij] + r[(ij % n) * n + ij / n])
            .collect()
    }

    #[test]
    fn eigen_reconstructs_a_random_symmetric_matrix() {
        for n in [1, 2, 3, 7, 24, 130] {
            let a = random_symmetric(n, n as u64);
            let eig = symmetric_eigen(&a, n).unwrap();
            let back = eig.apply(|l| l);
            let err = a
                .iter()
                .zip(&back)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-10, "n {n}: reconstruction error {err}");
            // V orthogonal, values descending, and the values-only path agrees.
            let v = &eig.vectors;
            for i in 0..n {
                for j in 0..n {
                    let d: f64 = (0..n).map(|k| v[k * n + i] * v[k * n + j]).sum();
                    assert!((d - f64::from(u8::from(i == j))).abs() < 1e-11);
                }
            }
            assert!(eig.values.windows(2).all(|w| w[0] >= w[1]));
            let values = symmetric_eigenvalues(&a, n).unwrap();
            for (x, y) in values.iter().zip(&eig.values) {
                assert!((x - y).abs() < 1e-10, "n {n}: {x} vs {y}");
            }
        }
        assert!(symmetric_eigen(&[], 0).is_err());
        assert!(symmetric_eigen(&[1.0, 2.0], 2).is_err());
        assert!(symmetric_eigen(&[f64::NAN], 1).is_err());
    }

    #[test]
    fn eigen_handles_repeated_and_zero_eigenvalues() {
        // diag(2, 2, 0, 0, −1) in a rotated basis: Q D Qᵀ with Q from a random matrix's vectors.
        let n = 5;
        let q = symmetric_eigen(&random_symmetric(n, 9), n).unwrap().vectors;
        let dvals = [2.0, 2.0, 0.0, 0.0, -1.0];
        let a: Vec<f64> = (0..n * n)
            .map(|ij| {
                let (i, j) = (ij / n, ij % n);
                (0..n).map(|k| q[i * n + k] * dvals[k] * q[j * n + k]).sum()
            })
            .collect();
        let values = symmetric_eigenvalues(&a, n).unwrap();
        for (x, y) in values.iter().zip(dvals) {
            assert!((x - y).abs() < 1e-12, "{values:?}");
        }
        // Already diagonal and already tridiagonal input.
        let diag = symmetric_eigenvalues(&[3.0, 0.0, 0.0, 0.0, -2.0, 0.0, 0.0, 0.0, 1.0], 3);
        assert_eq!(diag.unwrap(), vec![3.0, 1.0, -2.0]);
    }

    #[test]
    fn low_rank_trace_matches_the_covariance_path() {
        // n < d: Σ is singular, the case of FID's 2048-d features with a few hundred samples.
        let (d, n1, n2) = (40, 13, 21);
        let mix = normals(d * d, 11);
        let make = |n: usize, seed: u64, shift: f64| -> Vec<f64> {
            let z = normals(n * d, seed);
            (0..n * d)
                .map(|ij| {
                    let (i, j) = (ij / d, ij % d);
                    shift + (0..d).map(|k| z[i * d + k] * mix[k * d + j]).sum::<f64>() / 4.0
                })
                .collect()
        };
        let (x1, x2) = (make(n1, 1, 0.0), make(n2, 2, 0.3));
        let (s1, s2) = (
            FeatureStats::from_features(&x1, d).unwrap(),
            FeatureStats::from_features(&x2, d).unwrap(),
        );
        let (f1, f2) = (s1.factor.clone().unwrap(), s2.factor.clone().unwrap());
        let low = trace_sqrt_product_low_rank(&f1, &f2, d).unwrap();
        let full = trace_sqrt_product(&s1.cov, &s2.cov, d).unwrap();
        // The covariance path takes square roots of Σ₁'s rounding-level zero eigenvalues
        // (√(ε‖Σ‖) each), so it is the less accurate one here: agree to 1e-6.
        assert!(
            close(low, full, 1e-6),
            "low rank {low} vs covariance {full}"
        );
        // Symmetric in its arguments, and FD uses it (same value as through the covariances).
        assert!(close(
            trace_sqrt_product_low_rank(&f2, &f1, d).unwrap(),
            low,
            1e-12
        ));
        let fd = frechet_distance(&s1, &s2).unwrap();
        let no_factor = |s: &FeatureStats| FeatureStats {
            factor: None,
            ..s.clone()
        };
        let fd_full = frechet_distance(&no_factor(&s1), &no_factor(&s2)).unwrap();
        assert!(
            close(fd, fd_full, 1e-6 * s1.trace()),
            "FD {fd} vs {fd_full}"
        );
        assert!(fd > 0.0);
        // Identical sets: 0 on the low-rank path too.
        assert!(frechet_distance(&s1, &s1).unwrap() < 1e-9 * s1.trace());
        assert!(trace_sqrt_product_low_rank(&f1, &f2, 7).is_err());
    }

    #[test]
    fn closed_forms_on_known_gaussians() {
        // Diagonal: FD = |Δμ|² + Σ (√a − √b)².
        let (a, b) = ([1.0, 4.0, 0.25], [9.0, 1.0, 0.25]);
        let diag = |v: &[f64]| {
            let mut m = vec![0.0; 9];
            (0..3).for_each(|i| m[i * 4] = v[i]);
            m
        };
        let s1 = FeatureStats::from_moments(vec![0.0, 1.0, 2.0], diag(&a)).unwrap();
        let s2 = FeatureStats::from_moments(vec![1.0, 1.0, 0.0], diag(&b)).unwrap();
        let expected = 1.0 + 4.0 + (1.0f64 - 3.0).powi(2) + (2.0f64 - 1.0).powi(2);
        assert!(close(frechet_distance(&s1, &s2).unwrap(), expected, 1e-12));
        // Non-commuting 2×2: tr √(Σ₁Σ₂) = √(tr(Σ₁Σ₂) + 2√(det Σ₁ det Σ₂)).
        let c1 = vec![2.0, 0.7, 0.7, 1.0];
        let c2 = vec![0.5, -0.3, -0.3, 3.0];
        let t12 = c1[0] * c2[0] + c1[1] * c2[2] + c1[2] * c2[1] + c1[3] * c2[3];
        let det = |c: &[f64]| c[0] * c[3] - c[1] * c[2];
        let tr_sqrt = (t12 + 2.0 * (det(&c1) * det(&c2)).sqrt()).sqrt();
        assert!(close(
            trace_sqrt_product(&c1, &c2, 2).unwrap(),
            tr_sqrt,
            1e-12
        ));
        let s1 = FeatureStats::from_moments(vec![0.0; 2], c1).unwrap();
        let s2 = FeatureStats::from_moments(vec![0.0, 2.0], c2).unwrap();
        let expected = 4.0 + 3.0 + 3.5 - 2.0 * tr_sqrt;
        assert!(close(frechet_distance(&s1, &s2).unwrap(), expected, 1e-12));
    }

    #[test]
    fn fd_is_zero_for_identical_sets_and_grows_with_a_shift() {
        let (n, d) = (400, 16);
        // Correlated features: x = z·L with a random mixing.
        let z = normals(n * d, 3);
        let l = normals(d * d, 4);
        let x: Vec<f32> = (0..n * d)
            .map(|ij| {
                let (i, j) = (ij / d, ij % d);
                (0..d).map(|k| z[i * d + k] * l[k * d + j]).sum::<f64>() as f32
            })
            .collect();
        let fd0 = frechet_distance_features(&x, &x, d).unwrap();
        let scale = FeatureStats::from_features(&x, d).unwrap().trace();
        assert!(fd0 < 1e-9 * scale, "identical sets: {fd0}");
        let mut last = fd0;
        for c in [0.1f32, 0.5, 2.0] {
            let y: Vec<f32> = x.iter().map(|v| v + c).collect();
            let fd = frechet_distance_features(&x, &y, d).unwrap();
            let expected = (c as f64).powi(2) * d as f64;
            assert!(close(fd, expected, 1e-4), "shift {c}: {fd} vs {expected}");
            assert!(fd > last);
            last = fd;
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let x = [0.0f32, 1.0, 2.0, 3.0];
        assert!(FeatureStats::from_features::<f32>(&[], 2).is_err());
        assert!(FeatureStats::from_features(&x[..2], 2).is_err()); // n = 1
        assert!(FeatureStats::from_features(&x[..3], 2).is_err());
        assert!(FeatureStats::from_features(&x, 0).is_err());
        assert!(FeatureStats::from_features(&[0.0, f32::NAN, 1.0, 2.0], 2).is_err());
        assert!(frechet_distance_features(&x, &[0.0f32; 6], 3).is_err());
        assert!(FeatureStats::from_moments(vec![0.0], vec![1.0, 0.0]).is_err());
    }
}
