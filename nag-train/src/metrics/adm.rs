//! Sample quality as papers report it: OpenAI's ADM evaluator (guided-diffusion
//! `evaluations/evaluator.py`, used by ADM, DiT, SiT, …), on pytorch-fid's port of its
//! InceptionV3 graph ([`super::inception`]).
//!
//! Inputs are two `.npz` files ([`nag_models::npz`]): a **sample batch** and a **reference
//! batch**, each with `arr_0` = uint8 `[N, H, W, 3]` RGB images. A file that also holds `mu`
//! carries precomputed statistics `mu`, `sigma` (pool, 2048) and `mu_s`, `sigma_s` (spatial,
//! 2023), used for FID / sFID instead of statistics of its images (the reference batch
//! `VIRTUAL_imagenet256_labeled.npz` has them, from the whole training set); its `arr_0` is
//! still read for the Inception Score (samples) and precision / recall.
//!
//! Per image ([`extract_features`]): `pool_3` (2048) and the sFID features `mixed_6/conv[...,
//! :7]` flattened in (H, W, C) order (2023) ([`InceptionV3::forward_adm`]). The uint8 pixels
//! `v` are fed as pytorch-fid feeds them ([`InputScale::PytorchFid`]: `v/255` as
//! `ToTensor` gives, then `2x − 1`, NHWC → NCHW); the TF graph instead resizes the float
//! `0..255` image and maps it by `(v − 128)/128` ([`InputScale::TfGraph`]), and its
//! `ResizeBilinear` (TF1, no half-pixel centres) differs from PyTorch's bilinear resize, so
//! numbers differ slightly from the evaluator's: say so when reporting.
//!
//! The statistics, as the evaluator computes them:
//! - **FID / sFID** ([`frechet_distance_adm`]): `μ` = mean, `Σ` = `np.cov(x, rowvar=False)`
//!   (`1/(N − 1)`, [`feature_stats`], both in `f64`; the evaluator's `np.mean` of its float32
//!   activations is float32, about 1e-7 relative from ours); `FD = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂)`. The
//!   evaluator takes scipy's `sqrtm(Σ₁Σ₂)` and drops its imaginary part (failing when the
//!   diagonal's exceeds 1e-3); here `tr √(Σ₁Σ₂) = Σᵢ √max(λᵢ, 0)`, `λ` the eigenvalues of the
//!   symmetric `Σ₁^½ Σ₂ Σ₁^½` ([`super::fd`]), the same trace for PSD `Σ`s (a negative rounding
//!   eigenvalue gives a purely imaginary root, whose real part is 0). Its fallback is kept: if
//!   the result is not finite, `1e-6·I` is added to both covariances and it is computed again
//!   (the traces `tr Σ` stay those of the originals, as there). With fewer images than
//!   dimensions, `Σ₁Σ₂` is singular and scipy's `sqrtm` result (and whether the fallback fires)
//!   is fragile; ours is the exact trace then, computed from the centred features.
//! - **Inception Score** ([`inception_score`]): `p(y|x) = softmax(pool_3 · W)` with the graph's
//!   `softmax/logits/MatMul` weight `W` (pytorch-fid's `fc.weight` transposed, **no bias**);
//!   over consecutive splits of [`IS_SPLIT`] = 5000 samples (the last one shorter, fewer
//!   samples = one split) `exp(mean_x KL(p(y|x) ‖ p̄(y)))`, `p̄` the split's mean; the mean over
//!   splits is reported.
//! - **Precision / recall** ([`precision_recall`]; Kynkäänniemi et al. 2019, the evaluator's
//!   `ManifoldEstimator`) on pool features, `k` = [`PR_K`] = 3: each point's radius is the
//!   **squared** L2 distance to its `k`-th nearest neighbour in its own set (itself excluded;
//!   the evaluator takes entry `k` of the sorted distances, self at 0 first, which is the same);
//!   precision = share of samples within (`≤`) some reference radius, recall = share of
//!   reference images within some sample radius. Distances are
//!   `max(‖u‖² − 2u·v + ‖v‖², 0)` as there, computed on the backend in `f32` in blocks; the
//!   evaluator computes them in `float16` (`float32` only if that overflows), so points lying
//!   on a ball's edge within float16 rounding can be counted differently.
//!
//! Output order, as the evaluator prints it: Inception Score, FID, sFID, Precision, Recall
//! ([`AdmReport`]).

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use nag_models::npz::{ImageRows, Npz};
use serde::Serialize;

use super::fd::{mean_sq_distance, trace_sqrt_of, trace_sqrt_product, FeatureStats};
use super::inception::{InceptionV3, INCEPTION_DIM, SPATIAL_DIM};
use super::{check_features, par_rows_mut, MetricsError};

/// Samples per Inception Score split (the evaluator's `split_size`).
pub const IS_SPLIT: usize = 5000;

/// Neighbourhood size of precision / recall (the evaluator's `nhood_sizes=(3,)`).
pub const PR_K: usize = 3;

/// What the Fréchet distance's fallback adds to both covariances' diagonals.
pub const FD_EPS: f64 = 1e-6;

/// Values per distance block on the backend (`rows × columns`, 64 MiB of `f32`).
const BLOCK_VALUES: usize = 1 << 24;

/// Rows per block of the covariance accumulation.
const COV_BLOCK_ROWS: usize = 256;

/// How uint8 pixels `v` become the network's input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputScale {
    /// pytorch-fid: `x = v/255` (`ToTensor`), then `2x − 1` (`normalize_input`), in `f32`.
    #[default]
    PytorchFid,
    /// The TF graph the ADM evaluator runs: `(v − 128)/128` (its `Sub`, `Mul` after the
    /// resize; an affine map commutes with the bilinear resize, so applying it first is the
    /// same up to rounding).
    TfGraph,
}

impl InputScale {
    /// The input value of pixel `v`.
    pub fn map(self, v: u8) -> f32 {
        match self {
            InputScale::PytorchFid => 2.0 * (f32::from(v) / 255.0) - 1.0,
            InputScale::TfGraph => (f32::from(v) - 128.0) / 128.0,
        }
    }
}

/// uint8 NHWC images (`n × h × w × 3`, row-major) as the network's `[n, 3, h, w]` input.
pub fn images_to_input<B: Backend>(
    nhwc: &[u8],
    [n, h, w]: [usize; 3],
    scale: InputScale,
    device: &B::Device,
) -> Result<Tensor<B, 4>, MetricsError> {
    if nhwc.len() != n * h * w * 3 || n == 0 {
        return Err(MetricsError::Input(format!(
            "{} bytes are not {n} ≥ 1 images of {h}×{w}×3",
            nhwc.len()
        )));
    }
    let lut: Vec<f32> = (0..=255u8).map(|v| scale.map(v)).collect();
    let mut out = vec![0.0f32; nhwc.len()];
    let plane = h * w;
    for (i, img) in nhwc.chunks_exact(plane * 3).enumerate() {
        let dst = &mut out[i * plane * 3..(i + 1) * plane * 3];
        for (p, px) in img.chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                dst[c * plane + p] = lut[usize::from(v)];
            }
        }
    }
    Ok(Tensor::from_data(
        TensorData::new(out, [n, 3, h, w]),
        device,
    ))
}

/// Pool and spatial features of a set of images.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmFeatures {
    /// Number of images.
    pub n: usize,
    /// `n × 2048` pool features, row-major.
    pub pool: Vec<f32>,
    /// `n × 2023` spatial (sFID) features, row-major.
    pub spatial: Vec<f32>,
}

/// Progress of a long step, for a caller's progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress<'a> {
    /// What is being done (e.g. "reference features").
    pub stage: &'a str,
    /// Units done.
    pub done: usize,
    /// Units in all.
    pub total: usize,
}

/// Pool and spatial features of every image of `rows`, [`InceptionV3::batch`] images at a time
/// (memory: one batch of images plus the features, `N·(2048 + 2023)` floats); `progress` is
/// called after each batch with `stage`.
pub fn extract_features<B: Backend>(
    net: &InceptionV3<B>,
    rows: &mut ImageRows<'_>,
    scale: InputScale,
    stage: &str,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<AdmFeatures, MetricsError> {
    let [n, h, w, _] = rows.shape();
    let mut pool = Vec::with_capacity(n * INCEPTION_DIM);
    let mut spatial = Vec::with_capacity(n * SPATIAL_DIM);
    let mut done = 0;
    progress(Progress {
        stage,
        done,
        total: n,
    });
    while let Some(batch) = rows.read_batch(net.batch())? {
        let m = batch.len() / rows.image_bytes();
        let x = images_to_input::<B>(&batch, [m, h, w], scale, net.device())?;
        let (p, s) = net.forward_adm(x);
        pool.extend(p.into_data().iter::<f32>());
        spatial.extend(s.into_data().iter::<f32>());
        done += m;
        progress(Progress {
            stage,
            done,
            total: n,
        });
    }
    if let Some(i) = pool.iter().chain(&spatial).position(|v| !v.is_finite()) {
        return Err(MetricsError::Input(format!(
            "{stage}: InceptionV3 feature {i} is not finite"
        )));
    }
    Ok(AdmFeatures { n, pool, spatial })
}

/// `μ = np.mean(x, 0)` and `Σ = np.cov(x, rowvar=False)` (`1/(N − 1)`) of `n × dim` row-major
/// features, in `f64`; memory `dim²` plus a block of rows (and the centred features when
/// `n ≤ dim`, kept as the low-rank factor of [`FeatureStats`]). Needs `n ≥ 2`.
pub fn feature_stats(features: &[f32], dim: usize) -> Result<FeatureStats, MetricsError> {
    let n = check_features("feature statistics", features, dim)?;
    if n < 2 {
        return Err(MetricsError::Input(format!(
            "feature statistics need at least 2 images (got {n})"
        )));
    }
    let mut mean = vec![0.0f64; dim];
    for row in features.chunks_exact(dim) {
        mean.iter_mut()
            .zip(row)
            .for_each(|(m, &x)| *m += f64::from(x));
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut cov = vec![0.0f64; dim * dim];
    let mut centred = vec![0.0f64; COV_BLOCK_ROWS * dim];
    for block in features.chunks(COV_BLOCK_ROWS * dim) {
        let rows = block.len() / dim;
        for (c, (&x, m)) in centred
            .iter_mut()
            .zip(block.iter().zip(mean.iter().cycle()))
        {
            *c = f64::from(x) - m;
        }
        let c = &centred[..rows * dim];
        // Row i of Σ, columns i.. (the upper triangle).
        par_rows_mut(&mut cov, dim, |i, out| {
            for r in c.chunks_exact(dim) {
                let ri = r[i];
                out[i..]
                    .iter_mut()
                    .zip(&r[i..])
                    .for_each(|(o, &rj)| *o += ri * rj);
            }
        });
    }
    let scale = 1.0 / (n - 1) as f64;
    for i in 0..dim {
        for j in i..dim {
            let v = cov[i * dim + j] * scale;
            cov[i * dim + j] = v;
            cov[j * dim + i] = v;
        }
    }
    let mut stats = FeatureStats::from_moments(mean, cov)?;
    stats.n = n;
    if n <= dim {
        let s = scale.sqrt();
        stats.factor = Some(
            features
                .chunks_exact(dim)
                .flat_map(|row| {
                    row.iter()
                        .zip(&stats.mean)
                        .map(move |(&x, m)| (f64::from(x) - m) * s)
                })
                .collect(),
        );
    }
    Ok(stats)
}

/// The evaluator's Fréchet distance `‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂)` (not clamped),
/// with its fallback: when the result is not finite, again with `Σ + 1e-6·I` inside the root.
/// See the [module docs](self).
pub fn frechet_distance_adm(a: &FeatureStats, b: &FeatureStats) -> Result<f64, MetricsError> {
    let d = a.dim;
    if d != b.dim {
        return Err(MetricsError::Input(format!(
            "Fréchet distance: the statistics have dimensions {} and {} (a sample and a \
             reference batch must come from the same network and layer)",
            a.dim, b.dim
        )));
    }
    let mean_term = mean_sq_distance(a, b);
    let fd = |tr: f64| mean_term + a.trace() + b.trace() - 2.0 * tr;
    match trace_sqrt_of(a, b) {
        Ok(tr) if fd(tr).is_finite() => return Ok(fd(tr)),
        _ => {}
    }
    let offset = |s: &FeatureStats| {
        let mut c = s.cov.clone();
        (0..d).for_each(|i| c[i * d + i] += FD_EPS);
        c
    };
    let tr = trace_sqrt_product(&offset(a), &offset(b), d)?;
    let value = fd(tr);
    if !value.is_finite() {
        return Err(MetricsError::Input(
            "the Fréchet distance is not finite even with 1e-6·I added to the covariances".into(),
        ));
    }
    Ok(value)
}

/// Inception Score of `n × classes` row-major logits: `p = softmax(logits)` per row, then over
/// consecutive splits of `split` rows (the last may be shorter)
/// `exp(mean_x Σ_y p(y|x)(log p(y|x) − log p̄(y)))`, and the mean over splits (`0·log 0 = 0`).
/// The evaluator uses `split` = [`IS_SPLIT`].
pub fn inception_score(logits: &[f32], classes: usize, split: usize) -> Result<f64, MetricsError> {
    let n = check_features("Inception Score logits", logits, classes)?;
    if n == 0 || split == 0 {
        return Err(MetricsError::Input(format!(
            "the Inception Score needs at least one sample and a split of at least 1 (got {n} samples, split {split})"
        )));
    }
    let probs: Vec<f64> = logits
        .chunks_exact(classes)
        .flat_map(|row| {
            let max = f64::from(row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)));
            let e: Vec<f64> = row.iter().map(|&v| (f64::from(v) - max).exp()).collect();
            let z: f64 = e.iter().sum();
            e.into_iter().map(move |v| v / z)
        })
        .collect();
    let mut scores = Vec::new();
    for part in probs.chunks(split * classes) {
        let m = part.len() / classes;
        let mut mean = vec![0.0f64; classes];
        for row in part.chunks_exact(classes) {
            mean.iter_mut().zip(row).for_each(|(a, &p)| *a += p);
        }
        mean.iter_mut().for_each(|a| *a /= m as f64);
        let kl: f64 = part
            .chunks_exact(classes)
            .map(|row| {
                row.iter()
                    .zip(&mean)
                    .filter(|(&p, _)| p > 0.0)
                    .map(|(&p, &q)| p * (p.ln() - q.ln()))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / m as f64;
        scores.push(kl.exp());
    }
    Ok(scores.iter().sum::<f64>() / scores.len() as f64)
}

/// Features uploaded once, with their squared norms, for blocked squared distances.
struct DeviceSet<B: Backend> {
    x: Tensor<B, 2>,
    norms: Tensor<B, 1>,
    n: usize,
}

impl<B: Backend> DeviceSet<B> {
    fn new(features: &[f32], dim: usize, device: &B::Device) -> Self {
        let n = features.len() / dim;
        let x = Tensor::<B, 2>::from_data(TensorData::new(features.to_vec(), [n, dim]), device);
        let norms = x.clone().powi_scalar(2).sum_dim(1).reshape([n]);
        Self { x, norms, n }
    }

    /// `max(‖u‖² − 2u·v + ‖v‖², 0)` for rows `start..start + len` of `self` against all of
    /// `other`, row-major `len × other.n`.
    fn sq_distances(&self, start: usize, len: usize, other: &Self) -> Vec<f32> {
        let u = self.x.clone().narrow(0, start, len);
        let nu = self.norms.clone().narrow(0, start, len).reshape([len, 1]);
        let nv = other.norms.clone().reshape([1, other.n]);
        let dot = u.matmul(other.x.clone().transpose());
        let d = (nu - dot * 2.0 + nv).clamp_min(0.0);
        d.into_data().iter::<f32>().collect()
    }
}

/// Rows per distance block against `cols` columns.
fn block_rows(cols: usize, rows: usize) -> usize {
    (BLOCK_VALUES / cols.max(1)).clamp(1, rows.max(1))
}

/// Each point's squared distance to its `k`-th nearest neighbour in `set` (itself excluded).
fn radii<B: Backend>(set: &DeviceSet<B>, k: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(set.n);
    let step = block_rows(set.n, set.n);
    for start in (0..set.n).step_by(step) {
        let len = step.min(set.n - start);
        let mut d = set.sq_distances(start, len, set);
        for (r, row) in d.chunks_exact_mut(set.n).enumerate() {
            row[start + r] = f32::INFINITY;
            let (_, kth, _) = row.select_nth_unstable_by(k - 1, f32::total_cmp);
            out.push(*kth);
        }
    }
    out
}

/// `(precision, recall)` of sample features against reference features (row-major
/// `· × dim`), the evaluator's `ManifoldEstimator` with neighbourhood size `k` (see the
/// [module docs](self)); distances on `device`. Each set needs more than `k` points.
pub fn precision_recall<B: Backend>(
    reference: &[f32],
    samples: &[f32],
    dim: usize,
    k: usize,
    device: &B::Device,
) -> Result<(f64, f64), MetricsError> {
    let n_ref = check_features("reference features", reference, dim)?;
    let n_sam = check_features("sample features", samples, dim)?;
    if k == 0 || n_ref <= k || n_sam <= k {
        return Err(MetricsError::Input(format!(
            "precision/recall with k = {k} need k ≥ 1 and more than k reference and sample \
             images (got {n_ref} and {n_sam})"
        )));
    }
    let r = DeviceSet::<B>::new(reference, dim, device);
    let s = DeviceSet::<B>::new(samples, dim, device);
    let r_radii = radii(&r, k);
    let s_radii = radii(&s, k);
    let mut sample_in = vec![false; n_sam];
    let mut ref_in = vec![false; n_ref];
    let step = block_rows(n_sam, n_ref);
    for start in (0..n_ref).step_by(step) {
        let len = step.min(n_ref - start);
        let d = r.sq_distances(start, len, &s);
        for (i, row) in d.chunks_exact(n_sam).enumerate() {
            let ri = r_radii[start + i];
            let mut inside = false;
            for ((&dij, &rj), s_in) in row.iter().zip(&s_radii).zip(sample_in.iter_mut()) {
                *s_in |= dij <= ri;
                inside |= dij <= rj;
            }
            ref_in[start + i] = inside;
        }
    }
    let share = |v: &[bool]| v.iter().filter(|&&b| b).count() as f64 / v.len() as f64;
    Ok((share(&sample_in), share(&ref_in)))
}

/// Precomputed statistics of an `.npz` (`mu`, `sigma`, `mu_s`, `sigma_s`) if it holds `mu`
/// (pool and spatial), checked against the network's dimensions.
pub fn read_precomputed_stats(
    npz: &mut Npz,
) -> Result<Option<(FeatureStats, FeatureStats)>, MetricsError> {
    if !npz.contains("mu") {
        return Ok(None);
    }
    let path = npz.path().to_string();
    let mut read = |mu: &str, sigma: &str, dim: usize| -> Result<FeatureStats, MetricsError> {
        let expected = "ADM statistics are mu [2048], sigma [2048, 2048], mu_s [2023], \
                        sigma_s [2023, 2023]";
        let (ms, m) = npz.read_f64(mu)?;
        let (ss, s) = npz.read_f64(sigma)?;
        if ms != [dim] || ss != [dim, dim] {
            return Err(MetricsError::Input(format!(
                "{path}: {mu} has shape {ms:?} and {sigma} {ss:?}; {expected}"
            )));
        }
        FeatureStats::from_moments(m, s)
            .map_err(|e| MetricsError::Input(format!("{path}: {mu}/{sigma}: {e}")))
    };
    let pool = read("mu", "sigma", INCEPTION_DIM)?;
    let spatial = read("mu_s", "sigma_s", SPATIAL_DIM)?;
    Ok(Some((pool, spatial)))
}

/// Options of [`evaluate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmOptions {
    /// Pixel mapping.
    pub scale: InputScale,
    /// Samples per Inception Score split.
    pub split: usize,
    /// Precision / recall neighbourhood size.
    pub k: usize,
}

impl Default for AdmOptions {
    fn default() -> Self {
        Self {
            scale: InputScale::default(),
            split: IS_SPLIT,
            k: PR_K,
        }
    }
}

/// The evaluator's numbers, in its print order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AdmReport {
    /// Inception Score of the samples.
    pub inception_score: f64,
    /// FID (pool features).
    pub fid: f64,
    /// sFID (spatial features).
    pub sfid: f64,
    /// Share of samples inside the reference manifold.
    pub precision: f64,
    /// Share of reference images inside the sample manifold.
    pub recall: f64,
    /// Sample images.
    pub n_samples: usize,
    /// Reference images.
    pub n_reference: usize,
    /// Whether the samples' FID statistics came from the file (`mu`, …).
    pub sample_stats_precomputed: bool,
    /// Whether the reference's FID statistics came from the file.
    pub reference_stats_precomputed: bool,
}

/// What [`InceptionV3`] is, as the evaluator's output states it.
pub const NETWORK_NOTE: &str = "InceptionV3 is pytorch-fid's port of the evaluator's TF graph \
     (pt_inception-2015-12-05); its bilinear resize to 299×299 differs slightly from TF's, so the \
     numbers differ slightly from the TF evaluator's";

/// One evaluation as `cargo xtask eval --samples … --json` prints it: the numbers and what
/// produced them.
#[derive(Debug, Clone, Serialize)]
pub struct AdmEvaluation {
    /// The numbers.
    #[serde(flatten)]
    pub report: AdmReport,
    /// The sample batch file.
    pub samples: String,
    /// The reference batch file.
    pub reference: String,
    /// The InceptionV3 weights file.
    pub inception: String,
    /// How pixels were scaled.
    pub input_scale: InputScale,
    /// Neighbourhood size of precision / recall.
    pub k: usize,
    /// [`NETWORK_NOTE`].
    pub network: &'static str,
    /// The device name.
    pub device: String,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The report `xtask eval --samples` prints: the files, then the five numbers.
impl std::fmt::Display for AdmEvaluation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.report;
        let source = |pre: bool| {
            if pre {
                "FID statistics from the file"
            } else {
                "FID statistics of its images"
            }
        };
        let stats = (
            source(r.sample_stats_precomputed),
            source(r.reference_stats_precomputed),
        );
        writeln!(
            f,
            "ADM evaluator (guided-diffusion evaluations/evaluator.py); {}.",
            self.network
        )?;
        writeln!(
            f,
            "samples:   {} ({} images; {})",
            self.samples, r.n_samples, stats.0
        )?;
        writeln!(
            f,
            "reference: {} ({} images; {})",
            self.reference, r.n_reference, stats.1
        )?;
        writeln!(f, "Inception Score: {}", r.inception_score)?;
        writeln!(f, "FID: {}", r.fid)?;
        writeln!(f, "sFID: {}", r.sfid)?;
        writeln!(f, "Precision: {}", r.precision)?;
        writeln!(f, "Recall: {}", r.recall)?;
        write!(f, "({:.1} s)", self.seconds)
    }
}

/// Features and FID statistics of one batch file.
fn read_batch<B: Backend>(
    net: &InceptionV3<B>,
    path: &Path,
    stage: &str,
    opts: &AdmOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<(AdmFeatures, FeatureStats, FeatureStats, bool), MetricsError> {
    let mut npz = Npz::open(path)?;
    let feats = {
        let mut rows = npz.images()?;
        if rows.is_empty() {
            return Err(MetricsError::Input(format!(
                "{}: arr_0 holds no images",
                path.display()
            )));
        }
        extract_features(net, &mut rows, opts.scale, stage, progress)?
    };
    let (pool, spatial, pre) = match read_precomputed_stats(&mut npz)? {
        Some((p, s)) => (p, s, true),
        None => {
            progress(Progress {
                stage: "statistics",
                done: 0,
                total: 2,
            });
            let p = feature_stats(&feats.pool, INCEPTION_DIM)?;
            progress(Progress {
                stage: "statistics",
                done: 1,
                total: 2,
            });
            let s = feature_stats(&feats.spatial, SPATIAL_DIM)?;
            progress(Progress {
                stage: "statistics",
                done: 2,
                total: 2,
            });
            (p, s, false)
        }
    };
    Ok((feats, pool, spatial, pre))
}

/// The ADM evaluator on `samples` against `reference` (`.npz` batches, see the
/// [module docs](self)): reference features, then sample features (progress through
/// `progress`), then Inception Score, FID, sFID, precision and recall.
pub fn evaluate<B: Backend>(
    net: &InceptionV3<B>,
    samples: &Path,
    reference: &Path,
    opts: &AdmOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<AdmReport, MetricsError> {
    if !net.has_logits() {
        // Fail before the long feature pass.
        net.logits(Tensor::zeros([1, INCEPTION_DIM], net.device()))?;
    }
    // Check both files (images' dtype and shape, statistics' shapes) before the long passes.
    for path in [reference, samples] {
        let mut npz = Npz::open(path)?;
        npz.images()?;
        read_precomputed_stats(&mut npz)?;
    }
    let (ref_feats, ref_pool, ref_spatial, ref_pre) =
        read_batch(net, reference, "reference features", opts, progress)?;
    let (sam_feats, sam_pool, sam_spatial, sam_pre) =
        read_batch(net, samples, "sample features", opts, progress)?;

    // Inception Score from the samples' pool features, a batch of logits at a time.
    let mut logits = Vec::with_capacity(sam_feats.n * super::inception::LOGITS_DIM);
    let step = 512;
    for start in (0..sam_feats.n).step_by(step) {
        let m = step.min(sam_feats.n - start);
        let pool = Tensor::<B, 2>::from_data(
            TensorData::new(
                sam_feats.pool[start * INCEPTION_DIM..(start + m) * INCEPTION_DIM].to_vec(),
                [m, INCEPTION_DIM],
            ),
            net.device(),
        );
        logits.extend(net.logits(pool)?.into_data().iter::<f32>());
    }
    let inception_score = inception_score(&logits, super::inception::LOGITS_DIM, opts.split)?;
    progress(Progress {
        stage: "FID / sFID",
        done: 0,
        total: 2,
    });
    let fid = frechet_distance_adm(&sam_pool, &ref_pool)?;
    progress(Progress {
        stage: "FID / sFID",
        done: 1,
        total: 2,
    });
    let sfid = frechet_distance_adm(&sam_spatial, &ref_spatial)?;
    progress(Progress {
        stage: "FID / sFID",
        done: 2,
        total: 2,
    });
    let (precision, recall) = precision_recall::<B>(
        &ref_feats.pool,
        &sam_feats.pool,
        INCEPTION_DIM,
        opts.k,
        net.device(),
    )?;
    Ok(AdmReport {
        inception_score,
        fid,
        sfid,
        precision,
        recall,
        n_samples: sam_feats.n,
        n_reference: ref_feats.n,
        sample_stats_precomputed: sam_pre,
        reference_stats_precomputed: ref_pre,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--json` prints the evaluator's numbers at the top level, next to what produced them.
    #[test]
    fn an_evaluation_serialises_flat() {
        let e = AdmEvaluation {
            report: AdmReport {
                inception_score: 1.5,
                fid: 2.5,
                sfid: 3.5,
                precision: 0.25,
                recall: 0.75,
                n_samples: 10,
                n_reference: 20,
                sample_stats_precomputed: false,
                reference_stats_precomputed: true,
            },
            samples: "s.npz".into(),
            reference: "r.npz".into(),
            inception: "w.pth".into(),
            input_scale: InputScale::PytorchFid,
            k: 3,
            network: NETWORK_NOTE,
            device: "cpu".into(),
            seconds: 0.5,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["fid"], 2.5);
        assert_eq!(v["n_reference"], 20);
        assert_eq!(v["reference_stats_precomputed"], true);
        assert_eq!(v["samples"], "s.npz");
        assert_eq!(v["k"], 3);
        assert!(v.get("report").is_none(), "{v}");
    }
}
