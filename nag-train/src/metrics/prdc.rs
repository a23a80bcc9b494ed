//! k-NN precision / recall (Kynkäänniemi et al. 2019) and density / coverage (Naeem et al.
//! 2020) between real features `X = {xᵢ}` (`N` vectors) and generated features `Y = {yⱼ}`
//! (`M` vectors).
//!
//! Each set's manifold is the union of balls `B(xᵢ, rₖ(xᵢ))`, with `rₖ(xᵢ)` the Euclidean
//! distance from `xᵢ` to its `k`-th nearest neighbour within the same set (itself excluded;
//! `k = 3` by default, as in the paper). Then
//!
//! ```text
//! precision = (1/M) Σⱼ 1[∃ i: |yⱼ − xᵢ| ≤ rₖ(xᵢ)]     (generated inside the real manifold)
//! recall    = (1/N) Σᵢ 1[∃ j: |xᵢ − yⱼ| ≤ rₖ(yⱼ)]     (real inside the generated manifold)
//! density   = (1/(k·M)) Σⱼ Σᵢ 1[|yⱼ − xᵢ| ≤ rₖ(xᵢ)]
//! coverage  = (1/N) Σᵢ 1[∃ j: |yⱼ − xᵢ| ≤ rₖ(xᵢ)]
//! ```
//!
//! Distances are computed exactly by brute force in `f64` (`O((N + M)²·d)`, on all cores; fine
//! for a few thousand vectors per set).

use serde::Serialize;

use super::{check_features, par_map, MetricsError};

/// Default neighbourhood size `k`.
pub const DEFAULT_K: usize = 3;

/// The four k-NN metrics; see the [module docs](self) for the formulas.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prdc {
    /// Fraction of generated samples inside the real manifold.
    pub precision: f64,
    /// Fraction of real samples inside the generated manifold.
    pub recall: f64,
    /// Mean number of real balls holding a generated sample, divided by `k` (can exceed 1).
    pub density: f64,
    /// Fraction of real balls holding at least one generated sample.
    pub coverage: f64,
    /// The `k` used.
    pub k: usize,
    /// Number of real vectors `N`.
    pub n_real: usize,
    /// Number of generated vectors `M`.
    pub n_fake: usize,
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

fn to_f64<T: Copy + Into<f64>>(x: &[T]) -> Vec<f64> {
    x.iter().map(|&v| v.into()).collect()
}

/// Squared distance from each vector of `x` (`n × dim`) to its `k`-th nearest neighbour in `x`,
/// itself excluded (duplicates count as neighbours at distance 0). Needs `n > k ≥ 1`.
pub fn kth_nn_sq_radii(x: &[f64], dim: usize, k: usize) -> Result<Vec<f64>, MetricsError> {
    let n = check_features("k-NN radii", x, dim)?;
    if k == 0 || n <= k {
        return Err(MetricsError::Input(format!(
            "k-NN radii need k ≥ 1 and more than k = {k} vectors per set (got {n})"
        )));
    }
    Ok(par_map(n, |i| {
        let xi = &x[i * dim..(i + 1) * dim];
        let mut d: Vec<f64> = x
            .chunks_exact(dim)
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, xj)| sq_dist(xi, xj))
            .collect();
        let (_, kth, _) = d.select_nth_unstable_by(k - 1, f64::total_cmp);
        *kth
    }))
}

/// Precision, recall, density and coverage of generated features `fake` against real
/// features `real` (both row-major `· × dim`, `f32` or `f64`) with neighbourhood size `k`.
/// Each set needs more than `k` vectors.
pub fn prdc<T: Copy + Into<f64> + Sync>(
    real: &[T],
    fake: &[T],
    dim: usize,
    k: usize,
) -> Result<Prdc, MetricsError> {
    let n = check_features("real features", real, dim)?;
    let m = check_features("generated features", fake, dim)?;
    if k == 0 {
        return Err(MetricsError::Config("k must be at least 1".into()));
    }
    if n <= k || m <= k {
        return Err(MetricsError::Input(format!(
            "precision/recall with k = {k} need more than {k} real and generated samples (got {n} and {m})"
        )));
    }
    let (real, fake) = (to_f64(real), to_f64(fake));
    let r_real = kth_nn_sq_radii(&real, dim, k)?;
    let r_fake = kth_nn_sq_radii(&fake, dim, k)?;
    // Per generated sample: the number of real balls holding it.
    let counts = par_map(m, |j| {
        let yj = &fake[j * dim..(j + 1) * dim];
        real.chunks_exact(dim)
            .zip(&r_real)
            .filter(|(xi, r)| sq_dist(yj, xi) <= **r)
            .count()
    });
    // Per real sample: (inside some generated ball, its own ball holds some generated sample).
    let flags = par_map(n, |i| {
        let xi = &real[i * dim..(i + 1) * dim];
        let (mut recalled, mut covered) = (false, false);
        for (yj, r) in fake.chunks_exact(dim).zip(&r_fake) {
            let d = sq_dist(xi, yj);
            recalled |= d <= *r;
            covered |= d <= r_real[i];
            if recalled && covered {
                break;
            }
        }
        (recalled, covered)
    });
    let precise = counts.iter().filter(|&&c| c > 0).count();
    let total: usize = counts.iter().sum();
    let frac =
        |f: fn(&(bool, bool)) -> bool| flags.iter().filter(|v| f(v)).count() as f64 / n as f64;
    Ok(Prdc {
        precision: precise as f64 / m as f64,
        recall: frac(|v| v.0),
        density: total as f64 / (k * m) as f64,
        coverage: frac(|v| v.1),
        k,
        n_real: n,
        n_fake: m,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::stream_rng;

    fn normals(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = stream_rng(seed, 2, 0);
        (0..n)
            .map(|_| crate::data::normal(&mut rng) as f32)
            .collect()
    }

    #[test]
    fn identical_sets_score_one_and_shifted_sets_fall() {
        let (n, d) = (300, 4);
        let x = normals(n * d, 1);
        let p = prdc(&x, &x, d, 3).unwrap();
        assert_eq!((p.precision, p.recall, p.coverage), (1.0, 1.0, 1.0));
        assert!(p.density >= 1.0 / 3.0);
        assert_eq!((p.n_real, p.n_fake, p.k), (n, n, 3));
        // A fresh draw of the same distribution scores high; shifted sets score lower and lower.
        let y = normals(n * d, 2);
        let same = prdc(&x, &y, d, 3).unwrap();
        assert!(same.precision > 0.8 && same.recall > 0.8, "{same:?}");
        let mut last = same;
        for shift in [1.0f32, 2.5, 20.0] {
            let z: Vec<f32> = y.iter().map(|v| v + shift).collect();
            let p = prdc(&x, &z, d, 3).unwrap();
            assert!(
                p.precision < last.precision && p.recall < last.recall,
                "shift {shift}: {p:?} vs {last:?}"
            );
            last = p;
        }
        assert_eq!(
            (last.precision, last.recall, last.coverage),
            (0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn radii_and_bad_input() {
        // Points on a line at 0, 1, 3, 6: 1st-NN squared radii 1, 1, 4, 9; 2nd-NN 9, 4, 9, 25.
        let x = [0.0, 1.0, 3.0, 6.0];
        assert_eq!(kth_nn_sq_radii(&x, 1, 1).unwrap(), vec![1.0, 1.0, 4.0, 9.0]);
        assert_eq!(
            kth_nn_sq_radii(&x, 1, 2).unwrap(),
            vec![9.0, 4.0, 9.0, 25.0]
        );
        assert!(kth_nn_sq_radii(&x, 1, 4).is_err());
        assert!(prdc::<f32>(&[], &[], 2, 3).is_err());
        assert!(prdc(&[0.0f32; 6], &[0.0f32; 8], 2, 3).is_err()); // 3 vectors, k = 3
        assert!(prdc(&[0.0f32; 10], &[0.0f32; 10], 2, 0).is_err());
        assert!(prdc(&[0.0f32; 10], &[0.0f32; 9], 2, 3).is_err());
        assert!(prdc(&[f32::NAN; 10], &[0.0f32; 10], 2, 3).is_err());
    }
}
