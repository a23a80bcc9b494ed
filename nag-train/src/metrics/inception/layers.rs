//! The network's layers on channels-last tensors: `BasicConv2d` with its batch norm folded in
//! (im2col convolution + ReLU) and the 3×3 pools.

use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::{avg_pool2d, max_pool2d};
use burn::tensor::{Slice, Tensor, TensorData};
use nag_models::state_dict::StateDict;

use super::net::ConvSpec;
use super::PT_FID_WEIGHTS;
use crate::metrics::MetricsError;

/// `BatchNorm2d` epsilon of the TF graph's `BasicConv2d`.
const BN_EPS: f64 = 0.001;

/// A `BasicConv2d` with its batch norm folded in, followed by ReLU, on channels-last input:
/// `relu(im2col(x) · W + b)`.
#[derive(Debug, Clone)]
pub struct BasicConv<B: Backend> {
    /// `[kh·kw·C_in, C_out]`, row `(ky·kw + kx)·C_in + c_in`, scaled by the BN factor.
    pub weight: Tensor<B, 2>,
    /// `[C_out]`: `β − running_mean·s`.
    pub bias: Tensor<B, 1>,
    /// Kernel `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride.
    pub stride: usize,
    /// Zero padding `[ph, pw]`.
    pub padding: [usize; 2],
}

impl<B: Backend> BasicConv<B> {
    /// Folds `<name>.conv.weight` and `<name>.bn.*` of `sd` (read from `source`).
    pub(super) fn load(
        spec: &ConvSpec,
        sd: &StateDict,
        source: &str,
        device: &B::Device,
    ) -> Result<Self, MetricsError> {
        let get = |key: &str, shape: &[usize]| -> Result<&[f32], MetricsError> {
            let t = sd.get(key).ok_or_else(|| {
                MetricsError::Input(format!(
                    "--inception {source}: no entry '{key}' (the InceptionV3 FID network needs it, shape {shape:?}); is this {PT_FID_WEIGHTS}?"
                ))
            })?;
            if t.shape != shape {
                return Err(MetricsError::Input(format!(
                    "--inception {source}: entry '{key}' has shape {:?}, the InceptionV3 FID network expects {shape:?}",
                    t.shape
                )));
            }
            if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
                return Err(MetricsError::Input(format!(
                    "--inception {source}: entry '{key}' has a non-finite value at index {i}"
                )));
            }
            Ok(&t.data)
        };
        let (ci, co, [kh, kw]) = (spec.c_in, spec.c_out, spec.kernel);
        let name = &spec.name;
        let w = get(&format!("{name}.conv.weight"), &[co, ci, kh, kw])?;
        let gamma = get(&format!("{name}.bn.weight"), &[co])?;
        let beta = get(&format!("{name}.bn.bias"), &[co])?;
        let mean = get(&format!("{name}.bn.running_mean"), &[co])?;
        let var_key = format!("{name}.bn.running_var");
        let var = get(&var_key, &[co])?;
        if let Some(i) = var.iter().position(|&v| f64::from(v) + BN_EPS <= 0.0) {
            return Err(MetricsError::Input(format!(
                "--inception {source}: entry '{var_key}' has a negative variance {} at index {i}",
                var[i]
            )));
        }
        let mut weight = vec![0.0f32; kh * kw * ci * co];
        let mut bias = vec![0.0f32; co];
        for o in 0..co {
            let s = f64::from(gamma[o]) / (f64::from(var[o]) + BN_EPS).sqrt();
            bias[o] = (f64::from(beta[o]) - f64::from(mean[o]) * s) as f32;
            for c in 0..ci {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let v = f64::from(w[((o * ci + c) * kh + ky) * kw + kx]) * s;
                        weight[((ky * kw + kx) * ci + c) * co + o] = v as f32;
                    }
                }
            }
        }
        Ok(Self {
            weight: Tensor::from_data(TensorData::new(weight, [kh * kw * ci, co]), device),
            bias: Tensor::from_data(TensorData::new(bias, [co]), device),
            kernel: spec.kernel,
            stride: spec.stride,
            padding: spec.padding,
        })
    }

    /// `[N, H, W, C_in] → [N, H', W', C_out]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, h, w, c] = x.dims();
        let ([kh, kw], [ph, pw], s) = (self.kernel, self.padding, self.stride);
        let co = self.bias.dims()[0];
        let ho = (h + 2 * ph - kh) / s + 1;
        let wo = (w + 2 * pw - kw) / s + 1;
        let cols = if kh == 1 && kw == 1 && s == 1 && ph == 0 && pw == 0 {
            x.reshape([n * h * w, c])
        } else {
            let x = pad_nhwc(x, ph, pw);
            let view = |start: usize, len: usize| {
                Slice::new(
                    start as isize,
                    Some((start + s * (len - 1) + 1) as isize),
                    s as isize,
                )
            };
            let mut cols = Vec::with_capacity(kh * kw);
            for dy in 0..kh {
                for dx in 0..kw {
                    cols.push(
                        x.clone()
                            .slice_dim(1, view(dy, ho))
                            .slice_dim(2, view(dx, wo)),
                    );
                }
            }
            Tensor::cat(cols, 3).reshape([n * ho * wo, kh * kw * c])
        };
        let y = cols.matmul(self.weight.clone()) + self.bias.clone().unsqueeze_dim(0);
        relu(y).reshape([n, ho, wo, co])
    }
}

/// Zero padding of `ph` rows and `pw` columns on each side of `[N, H, W, C]`.
fn pad_nhwc<B: Backend>(x: Tensor<B, 4>, ph: usize, pw: usize) -> Tensor<B, 4> {
    let [n, h, w, c] = x.dims();
    let device = x.device();
    let x = if ph > 0 {
        let z = Tensor::<B, 4>::zeros([n, ph, w, c], &device);
        Tensor::cat(vec![z.clone(), x, z], 1)
    } else {
        x
    };
    if pw > 0 {
        let z = Tensor::<B, 4>::zeros([n, h + 2 * ph, pw, c], &device);
        Tensor::cat(vec![z.clone(), x, z], 2)
    } else {
        x
    }
}

/// `F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)` on `[N, H, W, C]`.
pub(super) fn avg_pool_3x3<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let y = avg_pool2d(
        x.permute([0, 3, 1, 2]),
        [3, 3],
        [1, 1],
        [1, 1],
        false,
        false,
    );
    y.permute([0, 2, 3, 1])
}

/// `F.max_pool2d(x, 3, stride, padding)` on `[N, H, W, C]` (padding counts as −∞).
pub(super) fn max_pool_3x3<B: Backend>(
    x: Tensor<B, 4>,
    stride: usize,
    padding: usize,
) -> Tensor<B, 4> {
    let y = max_pool2d(
        x.permute([0, 3, 1, 2]),
        [3, 3],
        [stride, stride],
        [padding, padding],
        [1, 1],
        false,
    );
    y.permute([0, 2, 3, 1])
}
