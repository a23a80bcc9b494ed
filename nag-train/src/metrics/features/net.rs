//! The feature classifier's network: [`FeatureNetConfig`], [`FeatureNet`] (im2col convolutions,
//! pooled features, class head) and its state dict.

use burn::module::{Module, Param};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::{Slice, Tensor, TensorData};
use nag_models::state_dict::{CheckpointError, StateDict};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::data::stream_rng;
use crate::metrics::MetricsError;

const DOMAIN_INIT: u64 = 0x4645_4154; // "FEAT"
const KIND: &str = "feature classifier";

/// Architecture of a [`FeatureNet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureNetConfig {
    /// Input channels `C`.
    pub in_channels: usize,
    /// Input side `H = W` the network was trained on (inputs must match).
    pub image_size: usize,
    /// Number of classes `K` of the head.
    pub num_classes: usize,
    /// Output channels of each 3×3 convolution; the last is the feature dimension.
    pub widths: Vec<usize>,
    /// Stride of each convolution (1 or 2).
    pub strides: Vec<usize>,
    /// Also feed the per-image centred input `x − mean_{h,w}(x)` (the first convolution then
    /// sees `2C` channels: `[x | x − x̄]`).
    #[serde(default)]
    pub centre_input: bool,
}

impl FeatureNetConfig {
    /// The default network: centred input, widths `[32, 64, 64, 128]`, strides `[1, 2, 1, 2]`
    /// (128 features).
    pub fn small(in_channels: usize, image_size: usize, num_classes: usize) -> Self {
        Self {
            in_channels,
            image_size,
            num_classes,
            widths: vec![32, 64, 64, 128],
            strides: vec![1, 2, 1, 2],
            centre_input: true,
        }
    }

    /// Input channels of the first convolution: `2C` with [`Self::centre_input`], else `C`.
    pub fn first_in_channels(&self) -> usize {
        self.in_channels * (1 + usize::from(self.centre_input))
    }

    /// The feature dimension `w_L`.
    pub fn feature_dim(&self) -> usize {
        self.widths.last().copied().unwrap_or(0)
    }

    /// Checks sizes: `C ≥ 1`, side ≥ 1, `K ≥ 2`, at least one layer, widths ≥ 1, strides 1 or 2.
    pub fn validate(&self) -> Result<(), MetricsError> {
        let bad = |m: String| Err(MetricsError::Config(m));
        if self.in_channels == 0 || self.image_size == 0 {
            return bad("feature classifier: channels and image size must be at least 1".into());
        }
        if self.num_classes < 2 {
            return bad(format!(
                "the feature classifier needs a labelled dataset with at least 2 classes (this one has {})",
                self.num_classes
            ));
        }
        if self.widths.is_empty() || self.widths.len() != self.strides.len() {
            return bad("feature classifier: need as many strides as widths, at least one".into());
        }
        if self.widths.contains(&0) || self.strides.iter().any(|s| !(1..=2).contains(s)) {
            return bad("feature classifier: widths must be ≥ 1 and strides 1 or 2".into());
        }
        Ok(())
    }

    /// Every state-dict entry with its PyTorch shape (see the [module docs](super)).
    pub fn state_dict_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v = Vec::new();
        let mut c_in = self.first_in_channels();
        for (l, &w) in self.widths.iter().enumerate() {
            v.push((format!("convs.{l}.weight"), vec![w, c_in, 3, 3]));
            v.push((format!("convs.{l}.bias"), vec![w]));
            c_in = w;
        }
        v.push(("head.weight".into(), vec![self.num_classes, c_in]));
        v.push(("head.bias".into(), vec![self.num_classes]));
        v
    }

    /// A network with deterministic initial weights from `seed`: He-uniform convolutions
    /// (`U(±√(6/fan_in))`), PyTorch-default head (`U(±1/√fan_in)`), zero biases.
    pub fn init<B: Backend>(
        &self,
        seed: u64,
        device: &B::Device,
    ) -> Result<FeatureNet<B>, MetricsError> {
        self.validate()?;
        let mut rng = stream_rng(seed, DOMAIN_INIT, 0);
        let mut sd = StateDict::new();
        let mut c_in = self.first_in_channels();
        for (l, &w) in self.widths.iter().enumerate() {
            let bound = (6.0 / (9 * c_in) as f64).sqrt();
            let weight = (0..w * c_in * 9)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            sd.insert(format!("convs.{l}.weight"), vec![w, c_in, 3, 3], weight);
            sd.insert(format!("convs.{l}.bias"), vec![w], vec![0.0; w]);
            c_in = w;
        }
        let bound = 1.0 / (c_in as f64).sqrt();
        let k = self.num_classes;
        let head = (0..k * c_in)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        sd.insert("head.weight", vec![k, c_in], head);
        sd.insert("head.bias", vec![k], vec![0.0; k]);
        Ok(FeatureNet::from_state_dict(self.clone(), &sd, device)?)
    }
}

/// One `conv3×3 → GELU` layer, computed as an im2col matrix product on channels-last
/// activations (burn's direct convolution is far slower to train on the CPU backend).
#[derive(Module, Debug)]
pub struct FeatureConv<B: Backend> {
    /// `[9·C_in, C_out]`, row `(ky·3 + kx)·C_in + c_in` (PyTorch `[C_out, C_in, 3, 3]` in files).
    pub weight: Param<Tensor<B, 2>>,
    /// `[C_out]`.
    pub bias: Param<Tensor<B, 1>>,
    /// Stride (1 or 2); padding is 1.
    pub stride: usize,
}

/// The feature classifier; see the [module docs](super). Build with [`FeatureNetConfig::init`]
/// or load with [`FeatureExtractor::load`].
#[derive(Module, Debug)]
pub struct FeatureNet<B: Backend> {
    /// The convolutions.
    pub convs: Vec<FeatureConv<B>>,
    /// Head weight in burn layout `[w_L, K]`.
    pub head_weight: Param<Tensor<B, 2>>,
    /// Head bias `[K]`.
    pub head_bias: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub(super) config: FeatureNetConfig,
}

fn param<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    Param::from_data(TensorData::new(values, shape), device)
}

fn tensor_values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

impl<B: Backend> FeatureNet<B> {
    /// The config.
    pub fn config(&self) -> &FeatureNetConfig {
        &self.config
    }

    /// Builds the network from a state dict (keys and shapes checked; unknown keys rejected).
    pub fn from_state_dict(
        config: FeatureNetConfig,
        sd: &StateDict,
        device: &B::Device,
    ) -> Result<Self, CheckpointError> {
        let shapes = config.state_dict_shapes();
        for (key, shape) in &shapes {
            sd.expect(key, shape, KIND)?;
        }
        let unknown: Vec<String> = sd
            .keys()
            .filter(|k| !shapes.iter().any(|(s, _)| s == k))
            .map(str::to_string)
            .collect();
        if !unknown.is_empty() {
            return Err(CheckpointError::UnexpectedKeys { keys: unknown });
        }
        let get = |k: &str| sd.get(k).map(|t| t.data.clone()).unwrap_or_default();
        let mut convs = Vec::new();
        let mut c_in = config.first_in_channels();
        for (l, (&w, &s)) in config.widths.iter().zip(&config.strides).enumerate() {
            let pt = get(&format!("convs.{l}.weight"));
            let mut im2col = vec![0.0f32; pt.len()];
            for co in 0..w {
                for ci in 0..c_in {
                    for k in 0..9 {
                        im2col[(k * c_in + ci) * w + co] = pt[(co * c_in + ci) * 9 + k];
                    }
                }
            }
            convs.push(FeatureConv {
                weight: param(im2col, [9 * c_in, w], device),
                bias: param(get(&format!("convs.{l}.bias")), [w], device),
                stride: s,
            });
            c_in = w;
        }
        let k = config.num_classes;
        // PyTorch [K, D] → burn [D, K].
        let hw = get("head.weight");
        let mut t = vec![0.0f32; hw.len()];
        for o in 0..k {
            for i in 0..c_in {
                t[i * k + o] = hw[o * c_in + i];
            }
        }
        Ok(Self {
            convs,
            head_weight: param(t, [c_in, k], device),
            head_bias: param(get("head.bias"), [k], device),
            config,
        })
    }

    /// The state dict (PyTorch layouts; see the [module docs](super)).
    pub fn to_state_dict(&self) -> StateDict {
        let mut sd = StateDict::new();
        for (l, c) in self.convs.iter().enumerate() {
            let [rows, co] = c.weight.val().dims();
            let ci = rows / 9;
            let im2col = tensor_values(c.weight.val());
            let mut pt = vec![0.0f32; im2col.len()];
            for o in 0..co {
                for i in 0..ci {
                    for k in 0..9 {
                        pt[(o * ci + i) * 9 + k] = im2col[(k * ci + i) * co + o];
                    }
                }
            }
            sd.insert(format!("convs.{l}.weight"), vec![co, ci, 3, 3], pt);
            let b = c.bias.val();
            sd.insert(
                format!("convs.{l}.bias"),
                b.dims().to_vec(),
                tensor_values(b),
            );
        }
        let [d, k] = self.head_weight.val().dims();
        sd.insert(
            "head.weight",
            vec![k, d],
            tensor_values(self.head_weight.val().transpose()),
        );
        sd.insert("head.bias", vec![k], tensor_values(self.head_bias.val()));
        sd
    }

    /// Pooled features `f(x) = mean_{h,w} GELU(conv_L(… GELU(conv_1([x | x − x̄]))))`, with
    /// `x̄` the per-image, per-channel mean (plain `x` without [`FeatureNetConfig::centre_input`]):
    /// `[N, C, H, W] →
    /// [N, w_L]`. Unchecked (see [`Self::check_input`]).
    pub fn features(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = x.permute([0, 2, 3, 1]);
        let x = if self.config.centre_input {
            let [n, h, w, c] = x.dims();
            let mean = x
                .clone()
                .reshape([n, h * w, c])
                .mean_dim(1)
                .reshape([n, 1, 1, c]);
            Tensor::cat(vec![x.clone(), x - mean], 3)
        } else {
            x
        };
        let h = self.convs.iter().fold(x, |h, c| {
            gelu(conv3x3_nhwc(h, c.weight.val(), c.bias.val(), c.stride))
        });
        let [n, hh, ww, d] = h.dims();
        h.reshape([n, hh * ww, d]).mean_dim(1).reshape([n, d])
    }

    /// Class logits from features: `f·W + b`, `[N, w_L] → [N, K]`.
    pub fn head(&self, features: Tensor<B, 2>) -> Tensor<B, 2> {
        features.matmul(self.head_weight.val()) + self.head_bias.val().unsqueeze_dim(0)
    }

    /// `head(features(x))`, `[N, C, H, W] → [N, K]`.
    pub fn logits(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.head(self.features(x))
    }

    /// Checks `x: [N ≥ 1, C, H, W]` against the config (channels and side).
    pub fn check_input(&self, dims: [usize; 4]) -> Result<(), MetricsError> {
        let c = &self.config;
        let [n, ch, h, w] = dims;
        if n == 0 || ch != c.in_channels || h != c.image_size || w != c.image_size {
            return Err(MetricsError::Input(format!(
                "images of shape {dims:?} do not fit the feature classifier, trained on [N, {}, {}, {}]; train one for this dataset (cargo xtask features train --data …)",
                c.in_channels, c.image_size, c.image_size
            )));
        }
        Ok(())
    }
}

/// A 3×3 convolution with zero padding 1 and `stride` on channels-last `x: [N, H, W, C]`:
/// the nine shifted (strided) views are concatenated on channels (`(ky·3 + kx)·C + c`) and
/// multiplied by `w: [9C, C_out]`, plus `b`. Output `[N, ⌊(H−1)/s⌋+1, ⌊(W−1)/s⌋+1, C_out]`.
fn conv3x3_nhwc<B: Backend>(
    x: Tensor<B, 4>,
    w: Tensor<B, 2>,
    b: Tensor<B, 1>,
    stride: usize,
) -> Tensor<B, 4> {
    let [n, h, wd, c] = x.dims();
    let device = x.device();
    let co = w.dims()[1];
    let zr = Tensor::<B, 4>::zeros([n, 1, wd, c], &device);
    let x = Tensor::cat(vec![zr.clone(), x, zr], 1);
    let zc = Tensor::<B, 4>::zeros([n, h + 2, 1, c], &device);
    let x = Tensor::cat(vec![zc.clone(), x, zc], 2);
    let (ho, wo) = ((h - 1) / stride + 1, (wd - 1) / stride + 1);
    let view = |start: usize, len: usize| {
        Slice::new(
            start as isize,
            Some((start + stride * (len - 1) + 1) as isize),
            stride as isize,
        )
    };
    let mut cols = Vec::with_capacity(9);
    for dy in 0..3 {
        for dx in 0..3 {
            cols.push(
                x.clone()
                    .slice_dim(1, view(dy, ho))
                    .slice_dim(2, view(dx, wo)),
            );
        }
    }
    let cols = Tensor::cat(cols, 3).reshape([n * ho * wo, 9 * c]);
    (cols.matmul(w) + b.unsqueeze_dim(0)).reshape([n, ho, wo, co])
}
