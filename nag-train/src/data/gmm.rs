//! `gmm`: images drawn from a known Gaussian mixture, so that the exact noise-level posterior
//! of any state can be evaluated with [`GaussianMixture`].
//!
//! `K` components (one per class, uniform weights) in `d = 3·size²` dimensions:
//! - mean `μ_k`: the [`shapes`](super::shapes) silhouette of class `k`, centred, at a fixed
//!   radius, in a fixed per-class colour on a dark grey background, mapped to `[−0.8, 0.8]`;
//! - covariance `s² I + U_k U_kᵀ` with `U_k` of rank `r`: smooth random fields (sums of a few
//!   low-frequency cosines with random colour mixes), each column scaled so the fields add a
//!   per-pixel standard deviation of about `field_std`. `U_k` depends on `(seed, k)`.
//!
//! Item `i` has label `k = i mod K` and is `mixture.sample(u, z)` with `u` inside component
//! `k`'s weight interval and `z` standard normals from a generator seeded by `(seed, i)`, so it
//! depends only on `(seed, i)`. Items are never flipped (that would change the density).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use nag_core::gmm::GaussianMixture;

use super::shapes::{render_shape, NUM_SHAPES};
use super::{normal, stream_rng, DataError, Dataset, Item};

const DOMAIN_PARAMS: u64 = 0x474D_4D50; // "GMMP"
const DOMAIN_ITEMS: u64 = 0x474D_4D49; // "GMMI"

/// Per-class colours of the mixture means (in `[0, 1]`).
const PALETTE: [[f64; 3]; NUM_SHAPES] = [
    [0.95, 0.30, 0.25],
    [0.25, 0.75, 0.30],
    [0.30, 0.45, 0.95],
    [0.95, 0.85, 0.25],
    [0.85, 0.35, 0.85],
    [0.25, 0.85, 0.85],
    [0.98, 0.60, 0.20],
    [0.95, 0.95, 0.95],
    [0.60, 0.95, 0.40],
    [0.65, 0.45, 0.95],
];

/// Configuration of [`GmmDataset`].
#[derive(Debug, Clone, PartialEq)]
pub struct GmmConfig {
    /// Image side (`d = 3·size²`), ≥ 8.
    pub size: usize,
    /// Number of components / classes, `1..=10`.
    pub classes: usize,
    /// Rank `r` of every `U_k`.
    pub rank: usize,
    /// Isotropic standard deviation `s`.
    pub s: f64,
    /// Approximate per-pixel standard deviation added by the low-rank fields.
    pub field_std: f64,
    /// Virtual number of items.
    pub len: usize,
    /// Seed of the factors `U_k` and of the items.
    pub seed: u64,
    /// The components are those of classes `first_class..first_class + classes` of the
    /// 10-class mixture (same means and factors), relabelled `0..classes`: a target domain
    /// with other shapes and colours for transfer experiments (spec `gmm16:5-9`).
    pub first_class: usize,
}

impl Default for GmmConfig {
    fn default() -> Self {
        Self {
            size: 16,
            classes: NUM_SHAPES,
            rank: 4,
            s: 0.1,
            field_std: 0.25,
            len: super::DEFAULT_VIRTUAL_LEN,
            seed: 0,
            first_class: 0,
        }
    }
}

/// The built-in `gmm` dataset; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct GmmDataset {
    config: GmmConfig,
    mixture: GaussianMixture,
}

/// The mean image of class `k` (`[3, size, size]`, values in `[−0.8, 0.8]`).
pub fn template(k: usize, size: usize) -> Vec<f64> {
    let c = size as f64 / 2.0;
    let img = render_shape(
        k,
        size,
        (c, c, 0.36 * size as f64),
        PALETTE[k % NUM_SHAPES],
        |_, _| [0.15; 3],
    );
    img.iter().map(|&v| 0.8 * (2.0 * v as f64 - 1.0)).collect()
}

/// One smooth random field over `[3, size, size]` with RMS 1: a sum of six cosines of
/// frequency at most 1.5 cycles per image, each with a random phase and colour mix.
fn smooth_field(size: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let plane = size * size;
    let mut f = vec![0.0; 3 * plane];
    for _ in 0..6 {
        let (fx, fy) = (rng.random_range(-1.5..1.5), rng.random_range(-1.5..1.5));
        let phase = rng.random_range(0.0..std::f64::consts::TAU);
        let mix = [normal(rng), normal(rng), normal(rng)];
        for y in 0..size {
            for x in 0..size {
                let arg = std::f64::consts::TAU * (fx * x as f64 + fy * y as f64) / size as f64;
                let w = (arg + phase).cos();
                for c in 0..3 {
                    f[c * plane + y * size + x] += mix[c] * w;
                }
            }
        }
    }
    let rms = (f.iter().map(|v| v * v).sum::<f64>() / f.len() as f64).sqrt();
    f.iter().map(|v| v / rms.max(1e-12)).collect()
}

impl GmmDataset {
    /// Builds the mixture for `config`.
    pub fn new(config: GmmConfig) -> Result<Self, DataError> {
        let GmmConfig {
            size,
            classes,
            rank,
            s,
            field_std,
            len,
            seed,
            first_class,
        } = config;
        if !(8..=256).contains(&size)
            || !(1..=NUM_SHAPES).contains(&classes)
            || first_class + classes > NUM_SHAPES
            || len == 0
        {
            return Err(DataError::Config(format!(
                "gmm: need size in 8..=256 (got {size}), classes {first_class}..{} inside \
                 0..10, len > 0 (got {len})",
                first_class + classes
            )));
        }
        if !(field_std.is_finite() && field_std >= 0.0) || rank > 64 {
            return Err(DataError::Config(format!(
                "gmm: need field_std >= 0 (got {field_std}) and rank <= 64 (got {rank})"
            )));
        }
        let d = 3 * size * size;
        let components = first_class..first_class + classes;
        let means = components.clone().map(|k| template(k, size)).collect();
        let col_rms = if rank == 0 {
            0.0
        } else {
            field_std / (rank as f64).sqrt()
        };
        let factors = components
            .map(|k| {
                let mut rng = stream_rng(seed, DOMAIN_PARAMS, k as u64);
                (0..rank)
                    .flat_map(|_| smooth_field(size, &mut rng))
                    .map(|v| v * col_rms)
                    .collect::<Vec<f64>>()
            })
            .collect();
        let weights = vec![1.0 / classes as f64; classes];
        let mixture = GaussianMixture::new(d, weights, means, s, factors)?;
        Ok(Self { config, mixture })
    }

    /// The configuration.
    pub fn config(&self) -> &GmmConfig {
        &self.config
    }

    /// The exact data distribution.
    pub fn mixture(&self) -> &GaussianMixture {
        &self.mixture
    }

    /// Item `index` as `f64` (label `index mod K`).
    pub fn sample_f64(&self, index: usize) -> Result<(Vec<f64>, usize), DataError> {
        let k_count = self.config.classes;
        let k = index % k_count;
        let mut rng = stream_rng(self.config.seed, DOMAIN_ITEMS, index as u64);
        let z: Vec<f64> = (0..self.mixture.dim() + self.mixture.max_rank())
            .map(|_| normal(&mut rng))
            .collect();
        // The middle of component k's interval of the cumulative (uniform) weights.
        let u = (k as f64 + 0.5) / k_count as f64;
        let mut out = vec![0.0; self.mixture.dim()];
        self.mixture.sample(u, &z, &mut out)?;
        Ok((out, k))
    }
}

impl Dataset for GmmDataset {
    fn len(&self) -> usize {
        self.config.len
    }

    fn item(&self, index: usize, _rng: &mut ChaCha8Rng) -> Result<Item, DataError> {
        if index >= self.config.len {
            return Err(DataError::Index {
                index,
                len: self.config.len,
            });
        }
        let (x, k) = self.sample_f64(index)?;
        Ok(Item {
            x: x.iter().map(|&v| v as f32).collect(),
            y: k as i64,
        })
    }

    fn shape(&self) -> [usize; 3] {
        [3, self.config.size, self.config.size]
    }

    fn num_classes(&self) -> usize {
        self.config.classes
    }

    fn name(&self) -> String {
        let c = &self.config;
        format!(
            "gmm{} (K {}, rank {}, s {}, seed {})",
            c.size, c.classes, c.rank, c.s, c.seed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixture_matches_config_and_items_are_deterministic() {
        let ds = GmmDataset::new(GmmConfig {
            len: 100,
            ..GmmConfig::default()
        })
        .unwrap();
        let m = ds.mixture();
        assert_eq!((m.dim(), m.num_components(), m.max_rank()), (768, 10, 4));
        assert_eq!(m.mean(3).unwrap(), template(3, 16).as_slice());
        let mut rng = stream_rng(0, 0, 0);
        let a = ds.item(17, &mut rng).unwrap();
        assert_eq!(a, ds.item(17, &mut stream_rng(9, 9, 9)).unwrap());
        assert_eq!(a.y, 7);
        // The sample is more likely under its own component's mean than under the others.
        let d2 = |k: usize| -> f64 {
            let mu = m.mean(k).unwrap();
            a.x.iter()
                .zip(mu)
                .map(|(x, m)| (*x as f64 - m).powi(2))
                .sum()
        };
        assert!((0..10).filter(|&k| k != 7).all(|k| d2(7) < d2(k)));
        assert!(m.log_density(&a.x, 1.0, 0.0).unwrap().is_finite());
        let other = GmmDataset::new(GmmConfig {
            seed: 1,
            len: 100,
            ..GmmConfig::default()
        })
        .unwrap();
        assert_ne!(other.mixture().factor(0), m.factor(0));
        assert!(GmmDataset::new(GmmConfig {
            classes: 11,
            ..GmmConfig::default()
        })
        .is_err());
    }

    /// Empirical per-component mean and variance along a factor direction approach the
    /// mixture's (loose tolerances: 400 samples per component).
    #[test]
    fn empirical_moments_approach_the_mixture() {
        let config = GmmConfig {
            size: 8,
            classes: 2,
            len: 800,
            ..GmmConfig::default()
        };
        let ds = GmmDataset::new(config).unwrap();
        let m = ds.mixture();
        let d = m.dim();
        for k in 0..2 {
            let samples: Vec<Vec<f64>> = (0..400)
                .map(|j| ds.sample_f64(2 * j + k).unwrap())
                .inspect(|(_, kk)| assert_eq!(*kk, k))
                .map(|(x, _)| x)
                .collect();
            let mu = m.mean(k).unwrap();
            let emp: Vec<f64> = (0..d)
                .map(|p| samples.iter().map(|x| x[p]).sum::<f64>() / 400.0)
                .collect();
            let err = emp
                .iter()
                .zip(mu)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
                / d as f64;
            // Per-coordinate variance ≈ s² + field_std² ≈ 0.0725; mean error variance ≈ /400.
            assert!(
                err < 0.0725 / 400.0 * 3.0,
                "component {k}: mean sq error {err}"
            );
            // Variance along v = U_k's first column: s²|v|² + |U_kᵀ v|².
            let ut = m.factor(k).unwrap();
            let v = &ut[..d];
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
            let expected =
                m.s().powi(2) * dot(v, v) + ut.chunks(d).map(|u| dot(u, v).powi(2)).sum::<f64>();
            let proj: Vec<f64> = samples.iter().map(|x| dot(x, v) - dot(mu, v)).collect();
            let var = proj.iter().map(|p| p * p).sum::<f64>() / 400.0;
            assert!(
                (var / expected - 1.0).abs() < 0.25,
                "component {k}: variance {var} vs {expected}"
            );
            // Total variance E|x − μ_k|² = tr(s² I + U_k U_kᵀ).
            let total: f64 = samples
                .iter()
                .map(|x| x.iter().zip(mu).map(|(a, b)| (a - b).powi(2)).sum::<f64>())
                .sum::<f64>()
                / 400.0;
            let trace = d as f64 * m.s().powi(2) + ut.iter().map(|u| u * u).sum::<f64>();
            assert!(
                (total / trace - 1.0).abs() < 0.1,
                "trace {total} vs {trace}"
            );
        }
    }
}
