//! Fused CPU kernels behind backend-generic functions: the models call these with any
//! `B: Backend`; on burn-ndarray with f32 tensors (plain, or inside burn's default `Autodiff`,
//! as training and sampling run on the CPU) they take a fused kernel ([`ndarray`]), on every other
//! backend the plain burn ops given next to each, which define the result.
//!
//! Why a type check and not an extension trait: stable Rust has no specialisation, so a
//! `B: Backend + FusedOps` bound would have to be added to every generic signature that reaches
//! a model (about 300 in this workspace) and implemented for each backend; instead each entry
//! point compares `B` (or its tensor primitive) with the ndarray types by `TypeId` and moves the
//! primitive across with a safe `Any` downcast ([`ndarray`]).
//!
//! - [`attention_qkv`]: multi-head self-attention from the fused `qkv` projection
//!   ([`attention`]: the kernel and its backward).
//! - [`gelu_tanh`]: GELU, tanh approximation ([`gelu`]).
//! - [`layer_norm_modulate`]: LayerNorm (no affine) then adaLN modulation ([`layer_norm`]).
//! - [`linear_tokens`]: a `Linear` on `[N, T, D]` tokens as one matrix product (plain ops).

pub mod attention;
pub mod exp;
pub mod gelu;
pub mod layer_norm;
pub mod linear;
pub mod matmul;
pub mod ndarray;

use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::Tensor;

use attention::AttentionShape;

/// Multi-head self-attention `softmax(q·kᵀ·hd^−½)·v` per head, from `qkv: [N, L, 3D]` (features
/// `[q | k | v]`, `heads` heads contiguous inside each, as DiT's `Linear(D, 3D)` gives them) to
/// `[N, L, D]` (heads concatenated, as `proj` takes them).
///
/// # Panics
/// If `3·heads` does not divide the last dim (the model's configuration is validated first).
pub fn attention_qkv<B: Backend>(qkv: Tensor<B, 3>, heads: usize) -> Tensor<B, 3> {
    let [n, len, three_d] = qkv.dims();
    assert!(
        heads > 0 && three_d % (3 * heads) == 0,
        "qkv width {three_d} is not 3 × heads ({heads}) × head width"
    );
    let shape = AttentionShape {
        n,
        len,
        heads,
        head_dim: three_d / 3 / heads,
    };
    match ndarray::attention(qkv, shape) {
        Ok(out) => out,
        Err(qkv) => attention_qkv_plain(qkv, heads),
    }
}

/// [`attention_qkv`] in plain burn ops (every backend; the definition the kernels are tested
/// against): split into `[N, H, L, hd]` q, k, v, burn's `attention`, heads back together.
pub fn attention_qkv_plain<B: Backend>(qkv: Tensor<B, 3>, heads: usize) -> Tensor<B, 3> {
    let [n, l, three_d] = qkv.dims();
    let d = three_d / 3;
    let hd = d / heads;
    // [N, L, 3, H, hd] → [3, N, H, L, hd]
    let qkv = qkv.reshape([n, l, 3, heads, hd]).permute([2, 0, 3, 1, 4]);
    let [q, k, v] =
        core::array::from_fn(|i| qkv.clone().narrow(0, i, 1).reshape([n, heads, l, hd]));
    let options = AttentionModuleOptions {
        scale: Some(attention_scale(hd) as f64),
        softcap: None,
        is_causal: false,
    };
    let out = burn_attention(q, k, v, None, None, options); // [N, H, L, hd]
    out.swap_dims(1, 2).reshape([n, l, d])
}

/// The attention scale `hd^−½`.
pub fn attention_scale(head_dim: usize) -> f32 {
    (head_dim as f32).powf(-0.5)
}

/// GELU, tanh approximation, element-wise (see [`crate::dit::gelu_tanh`] for the form).
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match ndarray::gelu_tanh(x) {
        Ok(y) => y,
        Err(x) => gelu_tanh_plain(x),
    }
}

/// [`gelu_tanh`] in plain burn ops: `x / (1 + e^{min(−2z, 80)})`,
/// `−2z = x·(−0.044715·2√(2/π)·x² − 2√(2/π))`.
pub fn gelu_tanh_plain<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    const TWO_SQRT_2_OVER_PI: f64 = 2.0 * 0.797_884_560_802_865_4;
    let minus_two_z =
        x.clone() * (x.clone().square() * (-0.044715 * TWO_SQRT_2_OVER_PI) - TWO_SQRT_2_OVER_PI);
    x * (minus_two_z.clamp_max(80.0).exp() + 1.0).recip()
}
/// LayerNorm over the last dim without affine parameters: `(x − μ) / √(σ² + ε)` with the
/// biased variance (plain ops, every backend).
pub fn layer_norm<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    (x - mean) / (var + eps).sqrt()
}

/// adaLN modulation `x·(1 + scale) + shift`, with `x: [N, T, D]` and per-sample
/// `shift, scale: [N, D]` (plain ops, every backend).
pub fn modulate<B: Backend>(
    x: Tensor<B, 3>,
    shift: Tensor<B, 2>,
    scale: Tensor<B, 2>,
) -> Tensor<B, 3> {
    x * (scale.unsqueeze_dim::<3>(1) + 1.0) + shift.unsqueeze_dim(1)
}

/// `modulate(layer_norm(x, eps), shift, scale)`: on burn-ndarray f32 one pass per row each way
/// ([`layer_norm`](mod@layer_norm)), elsewhere the plain ops above.
pub fn layer_norm_modulate<B: Backend>(
    x: Tensor<B, 3>,
    shift: Tensor<B, 2>,
    scale: Tensor<B, 2>,
    eps: f64,
) -> Tensor<B, 3> {
    match ndarray::layer_norm_modulate(x, shift, scale, eps) {
        Ok(y) => y,
        Err((x, shift, scale)) => modulate(layer_norm(x, eps), shift, scale),
    }
}

/// `linear(x)` for tokens `x: [N, T, D_in] → [N, T, D_out]`, computed on `[N·T, D_in]`: burn
/// 0.21's linear on a 3-D input runs one matrix product per sample (m = T) and its weight
/// gradient materialises the N per-sample products `x_nᵀ·g_n` before summing them; flattened,
/// the forward is one product with m = N·T and the weight gradient one product `xᵀ·g`. Same
/// result up to summation order, on every backend.
///
/// On burn-ndarray f32 the product is [`linear::forward`] on the tokens in place (bias written
/// first, the product accumulated onto it) with its own backward; elsewhere burn's
/// `Linear::forward` on the flattened tokens.
pub fn linear_tokens<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let weight = linear.weight.val();
    let bias = linear.bias.as_ref().map(|b| b.val());
    match ndarray::linear(x, weight, bias) {
        Ok(y) => y,
        Err((x, _, _)) => {
            let [n, t, d] = x.dims();
            let y = linear.forward(x.reshape([n * t, d]));
            let out = y.dims()[1];
            y.reshape([n, t, out])
        }
    }
}

/// Deterministic test inputs shared by the kernels' tests.
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u64, spread: f32) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * spread
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::ndarray::{Cpu, CpuAutodiff};
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    const HEADS: usize = 2;
    const SHAPE: AttentionShape = AttentionShape {
        n: 2,
        len: 9,
        heads: HEADS,
        head_dim: 4,
    };

    fn qkv<B: Backend>(device: &B::Device) -> Tensor<B, 3> {
        Tensor::random(
            [2, 9, 3 * HEADS * 4],
            Distribution::Normal(0.0, 1.5),
            device,
        )
    }

    fn max_rel(a: TensorData, r: TensorData) -> f64 {
        let (a, r) = (a.to_vec::<f32>().unwrap(), r.to_vec::<f32>().unwrap());
        assert_eq!(a.len(), r.len());
        let scale = r.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(scale > 1e-3, "vacuous comparison");
        let err = a
            .iter()
            .zip(&r)
            .fold(0.0f32, |m, (a, r)| m.max((a - r).abs()));
        (err / scale) as f64
    }

    /// `(output, gradient of Σ w ⊙ output)` of `op` at `x` on the autodiff CPU backend.
    fn value_and_grad<const D: usize>(
        x: &Tensor<CpuAutodiff, D>,
        op: impl Fn(Tensor<CpuAutodiff, D>) -> Tensor<CpuAutodiff, D>,
    ) -> (TensorData, TensorData) {
        let x = x.clone().detach().require_grad();
        let out = op(x.clone());
        // Fixed weights (not the shared random generator: tests run concurrently).
        let shape = out.shape();
        let w: Vec<f32> = (0..shape.num_elements())
            .map(|i| (i as f32 * 0.7).sin())
            .collect();
        let weights = Tensor::<CpuAutodiff, D>::from_data(TensorData::new(w, shape), &out.device());
        let value = out.clone().into_data();
        let grads = (out * weights).sum().backward();
        (value, x.grad(&grads).expect("x has a gradient").into_data())
    }

    #[test]
    fn attention_kernel_matches_plain_ops() {
        let x = qkv::<Cpu>(&Default::default());
        let fused = ndarray::attention(x.clone(), SHAPE).expect("ndarray f32 takes the kernel");
        let plain = attention_qkv_plain(x, HEADS);
        assert!(max_rel(fused.into_data(), plain.into_data()) < 1e-6);
    }

    #[test]
    fn attention_kernel_gradients_match_plain_ops() {
        let x = qkv::<CpuAutodiff>(&Default::default());
        assert!(
            ndarray::attention(x.clone(), SHAPE).is_ok(),
            "autodiff ndarray takes the kernel"
        );
        let (out, grad) = value_and_grad(&x, |x| attention_qkv(x, HEADS));
        let (want_out, want_grad) = value_and_grad(&x, |x| attention_qkv_plain(x, HEADS));
        assert!(max_rel(out, want_out) < 1e-6);
        assert!(max_rel(grad, want_grad) < 1e-5);
    }

    #[test]
    fn gelu_kernel_matches_plain_ops() {
        let x = Tensor::<Cpu, 3>::random(
            [2, 5, 7],
            Distribution::Normal(0.0, 3.0),
            &Default::default(),
        );
        let fused = ndarray::gelu_tanh(x.clone()).expect("ndarray f32 takes the kernel");
        assert!(max_rel(fused.into_data(), gelu_tanh_plain(x).into_data()) < 1e-6);

        let x = Tensor::<CpuAutodiff, 3>::random(
            [2, 5, 7],
            Distribution::Normal(0.0, 3.0),
            &Default::default(),
        );
        assert!(
            ndarray::gelu_tanh(x.clone()).is_ok(),
            "autodiff ndarray takes the kernel"
        );
        let (out, grad) = value_and_grad(&x, gelu_tanh);
        let (want_out, want_grad) = value_and_grad(&x, gelu_tanh_plain);
        assert!(max_rel(out, want_out) < 1e-6);
        assert!(max_rel(grad, want_grad) < 1e-5);
    }

    #[test]
    fn linear_kernel_matches_plain_ops() {
        use burn::nn::LinearConfig;
        let x = Tensor::<Cpu, 3>::random([2, 5, 6], Distribution::Default, &Default::default());
        for bias in [true, false] {
            let layer = LinearConfig::new(6, 4)
                .with_bias(bias)
                .init::<Cpu>(&Default::default());
            let fused = linear_tokens(&layer, x.clone());
            assert!(max_rel(fused.into_data(), layer.forward(x.clone()).into_data()) < 1e-6);

            // Under autodiff: the input's and every parameter's gradient.
            let layer = LinearConfig::new(6, 4)
                .with_bias(bias)
                .init::<CpuAutodiff>(&Default::default());
            let xa = Tensor::<CpuAutodiff, 3>::from_data(x.to_data(), &Default::default())
                .require_grad();
            let grads_of = |fused: bool| {
                let out = if fused {
                    linear_tokens(&layer, xa.clone())
                } else {
                    layer.forward(xa.clone())
                };
                let w: Vec<f32> = (0..40).map(|i| (i as f32 * 0.7).sin()).collect();
                let w = Tensor::<CpuAutodiff, 3>::from_data(
                    TensorData::new(w, [2, 5, 4]),
                    &Default::default(),
                );
                let grads = (out * w).sum().backward();
                let mut all = vec![
                    xa.grad(&grads).unwrap().into_data(),
                    layer.weight.val().grad(&grads).unwrap().into_data(),
                ];
                all.extend(
                    layer
                        .bias
                        .as_ref()
                        .map(|b| b.val().grad(&grads).unwrap().into_data()),
                );
                all
            };
            for (got, want) in grads_of(true).into_iter().zip(grads_of(false)) {
                assert!(max_rel(got, want) < 1e-6);
            }
        }
    }

    #[test]
    fn layer_norm_modulate_kernel_matches_plain_ops() {
        let device = Default::default();
        let x = Tensor::<Cpu, 3>::random([2, 5, 6], Distribution::Normal(0.5, 2.0), &device);
        let shift = Tensor::<Cpu, 2>::random([2, 6], Distribution::Default, &device);
        let scale = Tensor::<Cpu, 2>::random([2, 6], Distribution::Default, &device);
        let fused = layer_norm_modulate(x.clone(), shift.clone(), scale.clone(), 1e-6);
        let plain = modulate(layer_norm(x.clone(), 1e-6), shift.clone(), scale.clone());
        assert!(max_rel(fused.into_data(), plain.into_data()) < 1e-6);

        type Ad = CpuAutodiff;
        let lift2 =
            |t: &Tensor<Cpu, 2>| Tensor::<Ad, 2>::from_data(t.to_data(), &device).require_grad();
        let (xa, sh, sc) = (
            Tensor::<Ad, 3>::from_data(x.to_data(), &device).require_grad(),
            lift2(&shift),
            lift2(&scale),
        );
        assert!(ndarray::layer_norm_modulate(xa.clone(), sh.clone(), sc.clone(), 1e-6).is_ok());
        let grads_of = |fused: bool| {
            let out = if fused {
                layer_norm_modulate(xa.clone(), sh.clone(), sc.clone(), 1e-6)
            } else {
                modulate(layer_norm(xa.clone(), 1e-6), sh.clone(), sc.clone())
            };
            let w: Vec<f32> = (0..60).map(|i| (i as f32 * 0.7).sin()).collect();
            let w = Tensor::<Ad, 3>::from_data(TensorData::new(w, [2, 5, 6]), &device);
            let grads = (out * w).sum().backward();
            [
                xa.grad(&grads).unwrap().into_data(),
                sh.grad(&grads).unwrap().into_data(),
                sc.grad(&grads).unwrap().into_data(),
            ]
        };
        for (got, want) in grads_of(true).into_iter().zip(grads_of(false)) {
            assert!(max_rel(got, want) < 1e-5);
        }
    }
}
