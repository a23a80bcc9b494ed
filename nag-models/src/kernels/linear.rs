//! `y = x·W + b` on f32 slices (burn's `Linear` convention: `W: [D_in, D_out]`), with the bias
//! written first and the product accumulated onto it (no separate zero fill and add pass), and
//! its backward:
//!
//! ```text
//! dx = dy·Wᵀ      dW = xᵀ·dy      db = Σ_rows dy
//! ```
//!
//! Products through the `gemm` crate, reading the transposes in place by strides.

use super::matmul::matmul;

/// `x: [m, k]`, `w: [k, n]`, `b: [n]` → `y: [m, n]`.
///
/// # Panics
/// If the lengths do not match `(m, k, n)` (a caller bug).
pub fn forward(
    (m, k, n): (usize, usize, usize),
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "input length");
    assert_eq!(w.len(), k * n, "weight length");
    let mut y = match b {
        Some(b) => {
            assert_eq!(b.len(), n, "bias length");
            b.repeat(m)
        }
        None => vec![0.0; m * n],
    };
    matmul(
        (m, n, k),
        &mut y,
        (0, n, 1),
        b.is_some(),
        x,
        (0, k, 1),
        w,
        (0, n, 1),
        1.0,
    );
    y
}

/// `out: [rows, cols] = lhs·rhs` summed over `inner`, each operand read through its
/// `(offset, row stride, column stride)` (a transpose swaps the two strides).
fn product(
    (rows, cols, inner): (usize, usize, usize),
    (lhs, lhs_strides): (&[f32], (usize, usize, usize)),
    (rhs, rhs_strides): (&[f32], (usize, usize, usize)),
) -> Vec<f32> {
    let mut out = vec![0.0; rows * cols];
    let dst = (0, cols, 1);
    let dims = (rows, cols, inner);
    matmul(
        dims,
        &mut out,
        dst,
        false,
        lhs,
        lhs_strides,
        rhs,
        rhs_strides,
        1.0,
    );
    out
}

/// `dx = dy·Wᵀ: [m, k]` from `dy: [m, n]`, `w: [k, n]`.
pub fn backward_x((m, k, n): (usize, usize, usize), w: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(w.len(), k * n, "weight length");
    assert_eq!(dy.len(), m * n, "gradient length");
    // Wᵀ[j, c] = W[c, j].
    product((m, k, n), (dy, (0, n, 1)), (w, (0, 1, n)))
}

/// `dW = xᵀ·dy: [k, n]` from `x: [m, k]`, `dy: [m, n]`.
pub fn backward_w((m, k, n): (usize, usize, usize), x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "input length");
    assert_eq!(dy.len(), m * n, "gradient length");
    // xᵀ[c, i] = x[i, c].
    product((k, n, m), (x, (0, 1, k)), (dy, (0, n, 1)))
}

/// `db = Σ_rows dy: [n]` from `dy: [m, n]`.
pub fn backward_b(n: usize, dy: &[f32]) -> Vec<f32> {
    let mut db = vec![0.0; n];
    for row in dy.chunks_exact(n.max(1)) {
        for (s, g) in db.iter_mut().zip(row) {
            *s += g;
        }
    }
    db
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        crate::kernels::test_values(len, seed, 1.0)
    }

    fn close(a: &[f32], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(b) {
            assert!((*a as f64 - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn forward_and_backward_match_the_definition() {
        let (m, k, n) = (5, 7, 3);
        let (x, w, b, dy) = (
            values(m * k, 1),
            values(k * n, 2),
            values(n, 3),
            values(m * n, 4),
        );
        let y = forward((m, k, n), &x, &w, Some(&b));
        let y0 = forward((m, k, n), &x, &w, None);
        let want = |with_bias: bool| -> Vec<f64> {
            (0..m * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    let bias = if with_bias { b[j] as f64 } else { 0.0 };
                    bias + (0..k)
                        .map(|c| x[i * k + c] as f64 * w[c * n + j] as f64)
                        .sum::<f64>()
                })
                .collect()
        };
        close(&y, &want(true));
        close(&y0, &want(false));
        let dx: Vec<f64> = (0..m * k)
            .map(|ic| {
                let (i, c) = (ic / k, ic % k);
                (0..n)
                    .map(|j| dy[i * n + j] as f64 * w[c * n + j] as f64)
                    .sum()
            })
            .collect();
        close(&backward_x((m, k, n), &w, &dy), &dx);
        let dw: Vec<f64> = (0..k * n)
            .map(|cj| {
                let (c, j) = (cj / n, cj % n);
                (0..m)
                    .map(|i| x[i * k + c] as f64 * dy[i * n + j] as f64)
                    .sum()
            })
            .collect();
        close(&backward_w((m, k, n), &x, &dy), &dw);
        let db: Vec<f64> = (0..n)
            .map(|j| (0..m).map(|i| dy[i * n + j] as f64).sum())
            .collect();
        close(&backward_b(n, &dy), &db);
    }
}
