//! The one matrix product the kernels use: the `gemm` crate's f32 kernels (runtime-dispatched
//! AVX2/AVX-512/NEON, arbitrary strides), single-threaded (the callers already run one batch
//! chunk per core), behind a bounds-checked safe signature.

use gemm::{gemm, Parallelism};

/// `dst (m×n, strides rs/cs) = [dst +] lhs (m×k) · rhs (k×n)`, each operand given by a pointer
/// offset into its slice and (row, column) strides. The offsets and strides are checked to stay
/// inside the slices before the unchecked kernel runs. An empty product (`m`, `n` or `k` = 0)
/// leaves `dst` as it is (callers start from zeros or the bias).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (dst_off, dst_rs, dst_cs): (usize, usize, usize),
    accumulate: bool,
    lhs: &[f32],
    (lhs_off, lhs_rs, lhs_cs): (usize, usize, usize),
    rhs: &[f32],
    (rhs_off, rhs_rs, rhs_cs): (usize, usize, usize),
    scale: f32,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let last = |off: usize, rs: usize, cs: usize, rows: usize, cols: usize| {
        off + (rows - 1) * rs + (cols - 1) * cs
    };
    assert!(last(dst_off, dst_rs, dst_cs, m, n) < dst.len());
    assert!(last(lhs_off, lhs_rs, lhs_cs, m, k) < lhs.len());
    assert!(last(rhs_off, rhs_rs, rhs_cs, k, n) < rhs.len());
    // SAFETY: every element the kernel touches, `off + i·rs + j·cs` for i, j inside the
    // operand's shape, is at most the last index asserted above; `dst` is borrowed mutably and
    // cannot alias `lhs` or `rhs`.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dst_off),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr().add(lhs_off),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr().add(rhs_off),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}
