//! LayerNorm without affine parameters followed by adaLN modulation, on f32 slices, one pass
//! over each token row each way:
//!
//! ```text
//! y = x̂ ⊙ (1 + scale_n) + shift_n,   x̂ = (x − μ)/√(σ² + ε)   (μ, σ² of the row, biased σ²)
//! dshift_n = Σ_t dy      dscale_n = Σ_t dy ⊙ x̂      dx̂ = dy ⊙ (1 + scale_n)
//! dx = (dx̂ − mean(dx̂) − x̂·mean(dx̂ ⊙ x̂)) / √(σ² + ε)
//! ```
//!
//! Layouts: `x, y: [N, T, D]`, `shift, scale: [N, D]` (one vector per sample).

/// Shape of one call: `n` samples of `tokens` rows of width `width`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowsShape {
    /// Samples `N`.
    pub n: usize,
    /// Rows per sample `T`.
    pub tokens: usize,
    /// Row width `D`.
    pub width: usize,
}

/// What the backward needs from the forward: `x̂` and `1/√(σ² + ε)` per row.
#[derive(Debug, Clone)]
pub struct Normalized {
    /// `x̂: [N, T, D]`.
    pub xhat: Vec<f32>,
    /// `1/√(σ² + ε): [N, T]`.
    pub inv_std: Vec<f32>,
}

/// Forward: `y`, and `x̂` with the inverse deviations when `keep` is set.
///
/// # Panics
/// If a slice's length does not match `shape` (a caller bug).
pub fn forward(
    shape: RowsShape,
    eps: f32,
    x: &[f32],
    shift: &[f32],
    scale: &[f32],
    keep: bool,
) -> (Vec<f32>, Option<Normalized>) {
    let RowsShape {
        n,
        tokens,
        width: d,
    } = shape;
    assert_eq!(x.len(), n * tokens * d, "input length");
    assert_eq!(shift.len(), n * d, "shift length");
    assert_eq!(scale.len(), n * d, "scale length");
    let mut y = vec![0.0f32; x.len()];
    let mut kept = keep.then(|| Normalized {
        xhat: vec![0.0; x.len()],
        inv_std: vec![0.0; n * tokens],
    });
    for (r, (row, out)) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).enumerate() {
        let sample = r / tokens;
        let shift = &shift[sample * d..][..d];
        let scale = &scale[sample * d..][..d];
        let mean = row.iter().sum::<f32>() / d as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let std = (var + eps).sqrt();
        for (((o, v), sh), sc) in out.iter_mut().zip(row).zip(shift).zip(scale) {
            *o = (v - mean) / std * (1.0 + sc) + sh;
        }
        if let Some(k) = kept.as_mut() {
            for (xh, v) in k.xhat[r * d..][..d].iter_mut().zip(row) {
                *xh = (v - mean) / std;
            }
            k.inv_std[r] = 1.0 / std;
        }
    }
    (y, kept)
}

/// Backward: `(dx, dshift, dscale)` from `dy: [N, T, D]`, the forward's [`Normalized`] and
/// `scale`.
///
/// # Panics
/// If a slice's length does not match `shape` (a caller bug).
pub fn backward(
    shape: RowsShape,
    kept: &Normalized,
    scale: &[f32],
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let RowsShape {
        n,
        tokens,
        width: d,
    } = shape;
    assert_eq!(dy.len(), n * tokens * d, "gradient length");
    assert_eq!(kept.xhat.len(), dy.len(), "x̂ length");
    assert_eq!(scale.len(), n * d, "scale length");
    let mut dx = vec![0.0f32; dy.len()];
    let mut dshift = vec![0.0f32; n * d];
    let mut dscale = vec![0.0f32; n * d];
    let mut dxhat = vec![0.0f32; d];
    for r in 0..n * tokens {
        let sample = r / tokens;
        let g = &dy[r * d..][..d];
        let xhat = &kept.xhat[r * d..][..d];
        let scale = &scale[sample * d..][..d];
        for (((s, c), gv), xh) in dshift[sample * d..][..d]
            .iter_mut()
            .zip(&mut dscale[sample * d..][..d])
            .zip(g)
            .zip(xhat)
        {
            *s += gv;
            *c += gv * xh;
        }
        for ((dxh, gv), sc) in dxhat.iter_mut().zip(g).zip(scale) {
            *dxh = gv * (1.0 + sc);
        }
        let mean_g = dxhat.iter().sum::<f32>() / d as f32;
        let mean_gx = dxhat.iter().zip(xhat).map(|(a, b)| a * b).sum::<f32>() / d as f32;
        let inv_std = kept.inv_std[r];
        for ((o, dxh), xh) in dx[r * d..][..d].iter_mut().zip(&dxhat).zip(xhat) {
            *o = (dxh - mean_g - xh * mean_gx) * inv_std;
        }
    }
    (dx, dshift, dscale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        crate::kernels::test_values(len, seed, 2.0)
    }

    const SHAPE: RowsShape = RowsShape {
        n: 2,
        tokens: 3,
        width: 5,
    };

    /// The definition in f64: `Σ w ⊙ y`.
    fn loss(x: &[f32], shift: &[f32], scale: &[f32], w: &[f32]) -> f64 {
        let d = SHAPE.width;
        let mut total = 0.0;
        for (r, row) in x.chunks_exact(d).enumerate() {
            let s = r / SHAPE.tokens;
            let mean = row.iter().map(|v| *v as f64).sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            for c in 0..d {
                let xhat = (row[c] as f64 - mean) / (var + 1e-6).sqrt();
                let y = xhat * (1.0 + scale[s * d + c] as f64) + shift[s * d + c] as f64;
                total += y * w[r * d + c] as f64;
            }
        }
        total
    }

    #[test]
    fn forward_and_backward_match_the_definition() {
        let len = SHAPE.n * SHAPE.tokens * SHAPE.width;
        let (x, shift, scale, w) = (
            values(len, 1),
            values(SHAPE.n * SHAPE.width, 2),
            values(SHAPE.n * SHAPE.width, 3),
            values(len, 4),
        );
        let (y, kept) = forward(SHAPE, 1e-6, &x, &shift, &scale, true);
        let got: f64 = y.iter().zip(&w).map(|(y, w)| *y as f64 * *w as f64).sum();
        assert!((got - loss(&x, &shift, &scale, &w)).abs() < 1e-5);
        let (dx, dshift, dscale) = backward(SHAPE, &kept.unwrap(), &scale, &w);
        let numeric = |which: usize, i: usize| {
            let mut args = [x.clone(), shift.clone(), scale.clone()];
            args[which][i] += 1e-3;
            let up = loss(&args[0], &args[1], &args[2], &w);
            let h = args[which][i] as f64;
            args[which][i] -= 2e-3;
            let down = loss(&args[0], &args[1], &args[2], &w);
            (up - down) / (h - args[which][i] as f64)
        };
        for (which, grad) in [(0, &dx), (1, &dshift), (2, &dscale)] {
            for (i, g) in grad.iter().enumerate() {
                let want = numeric(which, i);
                assert!(
                    (*g as f64 - want).abs() < 2e-3 * (1.0 + want.abs()),
                    "{which}[{i}]: {g} vs {want}"
                );
            }
        }
    }
}
