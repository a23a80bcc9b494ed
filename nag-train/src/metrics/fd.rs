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
//! `M = Σ₁^½ Σ₂ Σ₁^½` (`Σ₁Σ₂ = Σ₁^½ M Σ₁^−½`), so `tr (Σ₁Σ₂)^½ = Σᵢ √λᵢ(M)`. Both
//! `Σ₁^½ = V diag(√max(λ, 0)) Vᵀ` and the eigenvalues of `M` come from [`jacobi_eigen`], a
//! cyclic Jacobi solver (exact to rounding; `O(d³)` per sweep, fine for `d` up to a few
//! hundred). With Inception pool features this is FID; here the features are usually those of
//! the dataset's own classifier ([`super::features`]).

use super::{check_features, par_map, MetricsError};

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
    /// Jacobi sweeps used.
    pub sweeps: usize,
}

impl SymmetricEigen {
    /// `V diag(f(λ)) Vᵀ`, row-major `n × n` (a matrix function of the decomposed matrix).
    pub fn apply(&self, f: impl Fn(f64) -> f64) -> Vec<f64> {
        let n = self.n;
        let fl: Vec<f64> = self.values.iter().map(|&l| f(l)).collect();
        let v = &self.vectors;
        let mut out = vec![0.0; n * n];
        for i in 0..n {
            for j in i..n {
                let s: f64 = (0..n).map(|k| v[i * n + k] * fl[k] * v[j * n + k]).sum();
                out[i * n + j] = s;
                out[j * n + i] = s;
            }
        }
        out
    }
}

/// Maximum number of Jacobi sweeps before [`MetricsError::NoConvergence`].
const MAX_SWEEPS: usize = 100;

/// Eigen-decomposition of the symmetric `n × n` matrix `a` (row-major; only symmetric input is
/// meaningful, the solver reads both triangles) by cyclic Jacobi rotations.
///
/// Each rotation `J(p, q, θ)` zeroes `a_pq`: with `θ = (a_qq − a_pp) / (2 a_pq)`,
/// `t = sgn(θ) / (|θ| + √(θ² + 1))`, `c = 1/√(t² + 1)`, `s = t·c`, it updates `A ← JᵀAJ` and
/// `V ← VJ`. Sweeps repeat until the off-diagonal Frobenius norm is at most
/// `n·ε·‖A‖_F` (ε the f64 machine epsilon); `A ≈ V diag(λ) Vᵀ` to that accuracy.
///
/// Errors: `n = 0`, `a.len() ≠ n²`, non-finite entries, or no convergence in 100 sweeps.
pub fn jacobi_eigen(a: &[f64], n: usize) -> Result<SymmetricEigen, MetricsError> {
    if n == 0 || a.len() != n * n {
        return Err(MetricsError::Input(format!(
            "jacobi_eigen: need an n×n matrix with n ≥ 1 (n = {n}, {} values)",
            a.len()
        )));
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Err(MetricsError::Input(
            "jacobi_eigen: the matrix has non-finite entries".into(),
        ));
    }
    // Symmetrise (rounding in callers may leave tiny asymmetries).
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            m[i * n + j] = 0.5 * (a[i * n + j] + a[j * n + i]);
        }
    }
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let fro = m.iter().map(|x| x * x).sum::<f64>().sqrt();
    let tol = (n as f64) * f64::EPSILON * fro;
    let off_norm = |m: &[f64]| -> f64 {
        let mut s = 0.0;
        for p in 0..n {
            for q in p + 1..n {
                s += 2.0 * m[p * n + q] * m[p * n + q];
            }
        }
        s.sqrt()
    };
    let mut sweeps = 0;
    loop {
        let off = off_norm(&m);
        if off <= tol || fro == 0.0 {
            break;
        }
        if sweeps == MAX_SWEEPS {
            return Err(MetricsError::NoConvergence { n, sweeps, off });
        }
        sweeps += 1;
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let (app, aqq) = (m[p * n + p], m[q * n + q]);
                // Negligible next to both diagonal entries: set to zero (Numerical Recipes).
                if sweeps > 4
                    && app.abs() + 100.0 * apq.abs() == app.abs()
                    && aqq.abs() + 100.0 * apq.abs() == aqq.abs()
                {
                    m[p * n + q] = 0.0;
                    m[q * n + p] = 0.0;
                    continue;
                }
                let theta = (aqq - app) / (2.0 * apq);
                let t = if theta.is_finite() {
                    theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt())
                } else {
                    0.0
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // Columns p, q: A ← A J.
                for k in 0..n {
                    let (akp, akq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * akp - s * akq;
                    m[k * n + q] = s * akp + c * akq;
                }
                // Rows p, q: A ← Jᵀ A.
                for k in 0..n {
                    let (apk, aqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * apk - s * aqk;
                    m[q * n + k] = s * apk + c * aqk;
                }
                m[p * n + q] = 0.0;
                m[q * n + p] = 0.0;
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| m[j * n + j].total_cmp(&m[i * n + i]));
    let values = order.iter().map(|&i| m[i * n + i]).collect();
    let mut vectors = vec![0.0; n * n];
    for (new, &old) in order.iter().enumerate() {
        for k in 0..n {
            vectors[k * n + new] = v[k * n + old];
        }
    }
    Ok(SymmetricEigen {
        n,
        values,
        vectors,
        sweeps,
    })
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
        Ok(Self { dim, n, mean, cov })
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
    let root = jacobi_eigen(s1, n)?.apply(|l| l.max(0.0).sqrt());
    // M = R Σ₂ R.
    let tmp = matmul(&root, s2, n);
    let m = matmul(&tmp, &root, n);
    let eig = jacobi_eigen(&m, n)?;
    Ok(eig.values.iter().map(|l| l.max(0.0).sqrt()).sum())
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
/// against rounding (identical statistics give 0 up to ~1e-12 relative).
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64, MetricsError> {
    if a.dim != b.dim {
        return Err(MetricsError::Input(format!(
            "FD: feature dimensions differ ({} vs {})",
            a.dim, b.dim
        )));
    }
    let mean_term: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y).powi(2))
        .sum();
    let tr = trace_sqrt_product(&a.cov, &b.cov, a.dim)?;
    Ok((mean_term + a.trace() + b.trace() - 2.0 * tr).max(0.0))
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

    #[test]
    fn jacobi_reconstructs_a_random_symmetric_matrix() {
        for n in [1, 2, 7, 24] {
            let r = normals(n * n, n as u64);
            let a: Vec<f64> = (0..n * n)
                .map(|ij| r[ij] + r[(ij % n) * n + ij / n])
                .collect();
            let eig = jacobi_eigen(&a, n).unwrap();
            let back = eig.apply(|l| l);
            let err = a
                .iter()
                .zip(&back)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-11, "n {n}: reconstruction error {err}");
            // V orthogonal, values descending.
            let v = &eig.vectors;
            for i in 0..n {
                for j in 0..n {
                    let d: f64 = (0..n).map(|k| v[k * n + i] * v[k * n + j]).sum();
                    assert!((d - f64::from(u8::from(i == j))).abs() < 1e-12);
                }
            }
            assert!(eig.values.windows(2).all(|w| w[0] >= w[1]));
        }
        assert!(jacobi_eigen(&[], 0).is_err());
        assert!(jacobi_eigen(&[1.0, 2.0], 2).is_err());
        assert!(jacobi_eigen(&[f64::NAN], 1).is_err());
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
