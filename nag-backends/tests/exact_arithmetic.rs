//! The CPU backend divides exactly, forward and backward.
//!
//! burn-ndarray 0.21.0 with its `simd` feature computes `recip` with the hardware's ~12-bit
//! reciprocal estimate, and in place only on the aligned part of the buffer. That reciprocal is
//! the gradient of `log` and of a quotient's numerator, so with `simd` on, gradients were off by
//! up to ~4e-4 relative and changed with where the allocator put a tensor: two training runs of
//! the same seed parted after a few hundred steps (fixed upstream in macerator PR #47, not in the
//! 0.3 line burn-ndarray 0.21 depends on). The workspace Cargo.toml builds burn-ndarray without
//! `simd`; these tests fail if it comes back (directly or through feature unification). Matmuls
//! are vectorised either way (matrixmultiply), and training measured as fast without it.
#![cfg(feature = "ndarray")]

use nag_backends::burn::tensor::{Tensor, TensorData};
use nag_backends::{Autodiff, NdArray};

type B = NdArray;
type AD = Autodiff<NdArray>;

/// Values with varied mantissas over several binades, both signs.
fn values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let v = 0.37 + 0.731 * i as f32 + (i as f32 * 1.618).fract();
            if i % 3 == 0 {
                -v
            } else {
                v
            }
        })
        .collect()
}

fn assert_reciprocals(what: &str, got: Vec<f32>, x: &[f32]) {
    assert_eq!(got.len(), x.len());
    for (i, (g, v)) in got.iter().zip(x).enumerate() {
        let exact = 1.0 / v;
        assert!(
            g.to_bits() == exact.to_bits(),
            "{what}: element {i} of {}: {g:e}, exact 1/{v} = {exact:e} (relative error {:e})",
            x.len(),
            ((g - exact) / exact).abs()
        );
    }
}

// Lengths below, at and above the SIMD threshold (32) and not multiples of the vector width.
const LENGTHS: [usize; 6] = [7, 32, 33, 64, 100, 1027];

#[test]
fn recip_is_exact_in_place_and_out_of_place() {
    let device = Default::default();
    for n in LENGTHS {
        let x = values(n);
        let t = Tensor::<B, 1>::from_data(TensorData::new(x.clone(), [n]), &device);
        // A shared tensor is computed into a new buffer …
        let shared = t.clone().recip().into_data().to_vec::<f32>().unwrap();
        assert_reciprocals("recip (new buffer)", shared, &x);
        // … a unique one in place.
        let unique = t.recip().into_data().to_vec::<f32>().unwrap();
        assert_reciprocals("recip (in place)", unique, &x);
    }
}

#[test]
fn log_and_quotient_gradients_are_exact_reciprocals() {
    let device = Default::default();
    for n in LENGTHS {
        let x = values(n);
        let positive: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        // d/dx Σ log x = 1/x.
        let t = Tensor::<AD, 1>::from_data(TensorData::new(positive.clone(), [n]), &device)
            .require_grad();
        let grads = t.clone().log().sum().backward();
        let g = t.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        assert_reciprocals("gradient of log", g, &positive);
        // d/da Σ a / b = 1/b.
        let a = Tensor::<AD, 1>::from_data(TensorData::new(values(n), [n]), &device).require_grad();
        let b = Tensor::<AD, 1>::from_data(TensorData::new(x.clone(), [n]), &device);
        let grads = (a.clone() / b).sum().backward();
        let g = a.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        assert_reciprocals("gradient of a quotient's numerator", g, &x);
    }
}
