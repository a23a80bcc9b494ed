//! The network's fixed embeddings (sin-cos position table, timestep features) and stateless
//! pieces (LayerNorm, adaLN modulation, chunking), plus the parameter and linear initialisers.

use burn::module::{Initializer, Param, ParamId};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Shape, Tensor, TensorData};

use super::LAYER_NORM_EPS;
use crate::kernels;

/// The 2-D sin-cos position table, `[grid², D]` row-major, built in f64 (REFERENCE §2).
///
/// Token `row·grid + col` gets `[e(col) | e(row)]` where, for one axis with `D/2` dims,
/// `e(pos) = [sin(pos·ω_k) | cos(pos·ω_k)]`, `ω_k = 10000^(−k/(D/4))`, `k < D/4`.
/// `embed_dim` must be a multiple of 4.
pub fn sincos_pos_embed_2d(embed_dim: usize, grid_size: usize) -> Vec<f32> {
    let quarter = embed_dim / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64))
        .collect();
    let mut out = Vec::with_capacity(grid_size * grid_size * embed_dim);
    for row in 0..grid_size {
        for col in 0..grid_size {
            for pos in [col as f64, row as f64] {
                out.extend(omega.iter().map(|w| (pos * w).sin() as f32));
                out.extend(omega.iter().map(|w| (pos * w).cos() as f32));
            }
        }
    }
    out
}

/// Sinusoidal timestep features `[cos(t·f_i) | sin(t·f_i)]`, `f_i = exp(−ln(10000)·i/half)`,
/// `i < half = dim/2` (cos first, REFERENCE §2); `t` is used as a float as given. Shape
/// `[N] → [N, dim]` (`dim` even).
///
/// Every step is f32, in the reference's order (`torch.exp(-math.log(10000) *
/// torch.arange(half, dtype=float32) / half)`, then `t.float() * freqs`): at t = 999 the
/// argument reaches ~10³ rad, where one f32 ulp of a frequency moves the feature by ~1e-4, so
/// frequencies computed in f64 and rounded differ visibly from the official model's.
pub fn timestep_embedding<B: Backend>(t: Tensor<B, 1>, dim: usize) -> Tensor<B, 2> {
    let half = dim / 2;
    let minus_log_period = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (minus_log_period * i as f32 / half as f32).exp())
        .collect();
    let [n] = t.dims();
    let freqs = Tensor::<B, 1>::from_floats(freqs.as_slice(), &t.device()).reshape([1, half]);
    let args = t.reshape([n, 1]) * freqs;
    Tensor::cat(vec![args.clone().cos(), args.sin()], 1)
}

/// LayerNorm over the last dim without affine parameters: `(x − μ) / √(σ² + 1e-6)` with the
/// biased variance ([`kernels::layer_norm`] at [`LAYER_NORM_EPS`]).
pub fn layer_norm<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    kernels::layer_norm(x, LAYER_NORM_EPS)
}

/// adaLN modulation `x·(1 + scale) + shift`, with `x: [N, T, D]` and per-sample
/// `shift, scale: [N, D]`.
pub use crate::kernels::modulate;

/// `modulate(layer_norm(x), shift, scale)`, fused on the CPU backend
/// ([`kernels::layer_norm_modulate`]).
pub(super) fn norm_modulate<B: Backend>(
    x: Tensor<B, 3>,
    shift: Tensor<B, 2>,
    scale: Tensor<B, 2>,
) -> Tensor<B, 3> {
    kernels::layer_norm_modulate(x, shift, scale, LAYER_NORM_EPS)
}

/// Splits `[N, K·D]` into `K` chunks `[N, D]` along dim 1 (PyTorch's `chunk(K, dim=1)`).
pub(super) fn chunks<B: Backend, const K: usize>(x: Tensor<B, 2>) -> [Tensor<B, 2>; K] {
    let d = x.dims()[1] / K;
    core::array::from_fn(|i| x.clone().narrow(1, i * d, d))
}

/// Replaces row `i` of `rows: [N, D]` by `value: [D]` where `mask[i]` is set.
pub(super) fn substitute_rows<B: Backend>(
    rows: Tensor<B, 2>,
    mask: Tensor<B, 1, Bool>,
    value: Tensor<B, 1>,
) -> Tensor<B, 2> {
    let [n, d] = rows.dims();
    let mask = mask.reshape([n, 1]).expand([n, d]);
    let value = value.reshape([1, d]).expand([n, d]);
    rows.mask_where(mask, value)
}

/// A parameter from row-major values in burn layout, materialised lazily on `device`.
/// Built through `Param::uninitialized` so its trainability is recorded on the parameter itself
/// (and survives `train()`/`valid()` even when created on a non-autodiff backend).
pub(crate) fn lazy_param<B: Backend, const D: usize>(
    id: ParamId,
    values: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
    trainable: bool,
) -> Param<Tensor<B, D>> {
    Param::uninitialized(
        id,
        move |device: &B::Device, require_grad: bool| {
            let t = Tensor::<B, D>::from_data(TensorData::new(values.clone(), shape), device);
            if require_grad {
                t.require_grad()
            } else {
                t
            }
        },
        device.clone(),
        trainable,
        Shape::new(shape),
    )
}

/// A non-trainable parameter (like a PyTorch `nn.Parameter(requires_grad=False)`): it is
/// exported and loaded but gets no gradient.
pub(crate) fn fixed_param<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    lazy_param(ParamId::new(), values, shape, device, false)
}

/// A linear layer with the given weight initialiser (fans in/out) and zero bias.
pub(crate) fn linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    weight_init: Initializer,
    device: &B::Device,
) -> Linear<B> {
    Linear {
        weight: weight_init.init_with([d_in, d_out], Some(d_in), Some(d_out), device),
        bias: Some(Initializer::Zeros.init([d_out], device)),
    }
}

/// Xavier-uniform (gain 1) initialiser.
pub(crate) const XAVIER: Initializer = Initializer::XavierUniform { gain: 1.0 };

/// `N(0, 0.02)` initialiser.
pub(crate) const NORMAL_002: Initializer = Initializer::Normal {
    mean: 0.0,
    std: 0.02,
};
