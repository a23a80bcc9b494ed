//! Multi-head self-attention on f32 slices, straight from the fused `qkv` projection:
//! one `softmax(q·kᵀ·s)·v` per (sample, head), the scores of one head at a time, no layout
//! copies in or out.
//!
//! Layouts (row-major): `qkv: [N, L, 3, H, hd]` (= the `Linear(D, 3D)` output `[N, L, 3D]`,
//! features `[q | k | v]`, heads contiguous inside each, as in DiT's `Attention`), output
//! `[N, L, H, hd]` (= `[N, L, D]`, ready for `proj`), probabilities `[N, H, L, L]`.
//!
//! The products go through [`matmul`] (strided, so q, k, v and the output are read and
//! written in place).
//! Backward, with `P = softmax(S)`, `S = s·Q·Kᵀ`, `O = P·V` and the output gradient `dO`:
//!
//! ```text
//! dV = Pᵀ·dO      dP = dO·Vᵀ      dS = P ⊙ (dP − rowsum(dP ⊙ P))      dQ = s·dS·K      dK = s·dSᵀ·Q
//! ```

use super::exp::exp;
use super::matmul::matmul;

/// Shape of one attention call: `n` samples of `len` tokens, `heads` heads of width `head_dim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Samples `N`.
    pub n: usize,
    /// Tokens `L`.
    pub len: usize,
    /// Heads `H`.
    pub heads: usize,
    /// Head width `hd`.
    pub head_dim: usize,
}

impl AttentionShape {
    /// Token width `D = H·hd`.
    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Elements of `qkv`: `N·L·3D`.
    pub fn qkv_len(&self) -> usize {
        self.n * self.len * 3 * self.width()
    }

    /// Elements of the output: `N·L·D`.
    pub fn out_len(&self) -> usize {
        self.n * self.len * self.width()
    }

    /// Elements of the probabilities: `N·H·L·L`.
    pub fn probs_len(&self) -> usize {
        self.n * self.heads * self.len * self.len
    }
}

/// In-place softmax of each row of `scores: [rows, cols]`: `exp(s − max)/Σ exp(s − max)`
/// ([`exp`], in separate loops so that the exponentials vectorise; a row of `−∞` only gives
/// NaN as it would anywhere; DiT has no masks).
fn softmax_rows(scores: &mut [f32], cols: usize) {
    for row in scores.chunks_exact_mut(cols) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for s in row.iter_mut() {
            *s = exp(*s - max);
        }
        let inv_sum = 1.0 / row.iter().sum::<f32>();
        for s in row.iter_mut() {
            *s *= inv_sum;
        }
    }
}

/// Forward: writes `out: [N, L, D]` and, if given, the probabilities `probs: [N, H, L, L]`
/// (kept for [`backward`]). `scale` multiplies `q·kᵀ` (DiT: `hd^−½`).
///
/// # Panics
/// If a slice's length does not match `shape` (a caller bug, not an input error).
pub fn forward(
    shape: AttentionShape,
    scale: f32,
    qkv: &[f32],
    out: &mut [f32],
    mut probs: Option<&mut [f32]>,
) {
    let AttentionShape {
        n,
        len: l,
        heads,
        head_dim: hd,
    } = shape;
    let d = shape.width();
    assert_eq!(qkv.len(), shape.qkv_len(), "qkv length");
    assert_eq!(out.len(), shape.out_len(), "output length");
    if let Some(p) = probs.as_deref() {
        assert_eq!(p.len(), shape.probs_len(), "probabilities length");
    }
    let mut scratch = vec![0.0f32; if probs.is_some() { 0 } else { l * l }];
    for b in 0..n {
        let base = b * l * 3 * d;
        for h in 0..heads {
            let scores: &mut [f32] = match probs.as_deref_mut() {
                Some(p) => &mut p[(b * heads + h) * l * l..][..l * l],
                None => &mut scratch,
            };
            // S = s·Q·Kᵀ: Q rows at stride 3D; Kᵀ[c, j] = K[j, c].
            matmul(
                (l, l, hd),
                scores,
                (0, l, 1),
                false,
                qkv,
                (base + h * hd, 3 * d, 1),
                qkv,
                (base + d + h * hd, 1, 3 * d),
                scale,
            );
            softmax_rows(scores, l);
            // O = P·V, written to out[b, :, h, :].
            matmul(
                (l, hd, l),
                out,
                (b * l * d + h * hd, d, 1),
                false,
                scores,
                (0, l, 1),
                qkv,
                (base + 2 * d + h * hd, 3 * d, 1),
                1.0,
            );
        }
    }
}

/// Backward: the gradient of `qkv` (same layout) from the output gradient `grad_out: [N, L, D]`,
/// the forward's `qkv` and its probabilities `probs`.
///
/// # Panics
/// If a slice's length does not match `shape` (a caller bug).
pub fn backward(
    shape: AttentionShape,
    scale: f32,
    qkv: &[f32],
    probs: &[f32],
    grad_out: &[f32],
) -> Vec<f32> {
    let AttentionShape {
        n,
        len: l,
        heads,
        head_dim: hd,
    } = shape;
    let d = shape.width();
    assert_eq!(qkv.len(), shape.qkv_len(), "qkv length");
    assert_eq!(probs.len(), shape.probs_len(), "probabilities length");
    assert_eq!(grad_out.len(), shape.out_len(), "output gradient length");
    let mut grad_qkv = vec![0.0f32; shape.qkv_len()];
    let mut ds = vec![0.0f32; l * l];
    for b in 0..n {
        let base = b * l * 3 * d;
        let out_base = b * l * d;
        for h in 0..heads {
            let p = &probs[(b * heads + h) * l * l..][..l * l];
            // dV = Pᵀ·dO: Pᵀ[j, i] = P[i, j].
            matmul(
                (l, hd, l),
                &mut grad_qkv,
                (base + 2 * d + h * hd, 3 * d, 1),
                false,
                p,
                (0, 1, l),
                grad_out,
                (out_base + h * hd, d, 1),
                1.0,
            );
            // dP = dO·Vᵀ: Vᵀ[c, j] = V[j, c].
            matmul(
                (l, l, hd),
                &mut ds,
                (0, l, 1),
                false,
                grad_out,
                (out_base + h * hd, d, 1),
                qkv,
                (base + 2 * d + h * hd, 1, 3 * d),
                1.0,
            );
            // dS = P ⊙ (dP − rowsum(dP ⊙ P)).
            for (ds_row, p_row) in ds.chunks_exact_mut(l).zip(p.chunks_exact(l)) {
                let dot: f32 = ds_row.iter().zip(p_row).map(|(g, p)| g * p).sum();
                for (g, p) in ds_row.iter_mut().zip(p_row) {
                    *g = p * (*g - dot);
                }
            }
            // dQ = s·dS·K.
            matmul(
                (l, hd, l),
                &mut grad_qkv,
                (base + h * hd, 3 * d, 1),
                false,
                &ds,
                (0, l, 1),
                qkv,
                (base + d + h * hd, 3 * d, 1),
                scale,
            );
            // dK = s·dSᵀ·Q: dSᵀ[j, i] = dS[i, j].
            matmul(
                (l, hd, l),
                &mut grad_qkv,
                (base + d + h * hd, 3 * d, 1),
                false,
                &ds,
                (0, 1, l),
                qkv,
                (base + h * hd, 3 * d, 1),
                scale,
            );
        }
    }
    grad_qkv
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain f64 attention on the same layout: (out, probs).
    fn reference(shape: AttentionShape, scale: f64, qkv: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let AttentionShape {
            n,
            len: l,
            heads,
            head_dim: hd,
        } = shape;
        let d = shape.width();
        let at = |b: usize, t: usize, part: usize, h: usize, c: usize| {
            qkv[((b * l + t) * 3 + part) * d + h * hd + c] as f64
        };
        let mut out = vec![0.0; shape.out_len()];
        let mut probs = vec![0.0; shape.probs_len()];
        for b in 0..n {
            for h in 0..heads {
                for i in 0..l {
                    let s: Vec<f64> = (0..l)
                        .map(|j| {
                            scale
                                * (0..hd)
                                    .map(|c| at(b, i, 0, h, c) * at(b, j, 1, h, c))
                                    .sum::<f64>()
                        })
                        .collect();
                    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for j in 0..l {
                        probs[((b * heads + h) * l + i) * l + j] = e[j] / z;
                    }
                    for c in 0..hd {
                        out[(b * l + i) * d + h * hd + c] =
                            (0..l).map(|j| e[j] / z * at(b, j, 2, h, c)).sum();
                    }
                }
            }
        }
        (out, probs)
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        crate::kernels::test_values(len, seed, 3.0)
    }

    fn max_rel(a: &[f32], r: &[f64]) -> f64 {
        let scale = r.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = a
            .iter()
            .zip(r)
            .fold(0.0f64, |m, (a, r)| m.max((*a as f64 - r).abs()));
        err / scale
    }

    const SHAPE: AttentionShape = AttentionShape {
        n: 2,
        len: 7,
        heads: 3,
        head_dim: 5,
    };

    #[test]
    fn forward_matches_plain_attention() {
        let qkv = values(SHAPE.qkv_len(), 1);
        let scale = 5f32.powf(-0.5);
        let (want, want_p) = reference(SHAPE, scale as f64, &qkv);
        let mut out = vec![f32::NAN; SHAPE.out_len()];
        let mut probs = vec![f32::NAN; SHAPE.probs_len()];
        forward(SHAPE, scale, &qkv, &mut out, Some(&mut probs));
        assert!(max_rel(&out, &want) < 1e-5, "{}", max_rel(&out, &want));
        assert!(max_rel(&probs, &want_p) < 1e-5);
        // Without kept probabilities: the same output.
        let mut again = vec![f32::NAN; SHAPE.out_len()];
        forward(SHAPE, scale, &qkv, &mut again, None);
        assert_eq!(out, again);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let qkv = values(SHAPE.qkv_len(), 2);
        let weights = values(SHAPE.out_len(), 3);
        let scale = 0.4f32;
        // Loss L = Σ w ⊙ out, so dL/dout = w.
        let loss = |qkv: &[f32]| -> f64 {
            let (out, _) = reference(SHAPE, scale as f64, qkv);
            out.iter().zip(&weights).map(|(o, w)| o * *w as f64).sum()
        };
        let mut out = vec![0.0; SHAPE.out_len()];
        let mut probs = vec![0.0; SHAPE.probs_len()];
        forward(SHAPE, scale, &qkv, &mut out, Some(&mut probs));
        let grad = backward(SHAPE, scale, &qkv, &probs, &weights);
        let eps = 1e-3f32;
        let numeric: Vec<f64> = (0..qkv.len())
            .map(|i| {
                let (mut up, mut down) = (qkv.clone(), qkv.clone());
                up[i] += eps;
                down[i] -= eps;
                (loss(&up) - loss(&down)) / (up[i] as f64 - down[i] as f64)
            })
            .collect();
        let rel = max_rel(&grad, &numeric);
        assert!(rel < 1e-3, "max relative deviation {rel}");
        // Every part (q, k, v) gets a gradient.
        assert!(grad.iter().all(|g| g.is_finite()));
        let d = SHAPE.width();
        for part in 0..3 {
            assert!((0..d).any(|c| grad[part * d + c] != 0.0), "part {part}");
        }
    }
}
