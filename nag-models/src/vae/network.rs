//! The VAE's encoder and decoder and their blocks (resnets, mid attention, down/up levels), built
//! from a state dict already checked against the config.

use burn::module::{Module, Param, ParamId};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::{AttentionModuleOptions, PadMode};
use burn::tensor::{Tensor, TensorData};

use super::{VaeConfig, GROUP_NORM_EPS};
use crate::state_dict::StateDict;

/// Builds modules from a checked state dict.
pub(super) struct Weights<'a, B: Backend> {
    pub(super) sd: &'a StateDict,
    pub(super) device: &'a B::Device,
}

impl<B: Backend> Weights<'_, B> {
    fn tensor<const D: usize>(&self, key: &str) -> Param<Tensor<B, D>> {
        let t = self
            .sd
            .get(key)
            .unwrap_or_else(|| panic!("state dict checked against the config lacks {key}"));
        let shape: [usize; D] = t.shape.clone().try_into().expect("checked rank");
        Param::initialized(
            ParamId::new(),
            Tensor::from_data(TensorData::new(t.data.clone(), shape), self.device),
        )
    }

    /// A `k×k` convolution with bias, stride 1, padding `pad` on all sides.
    pub(super) fn conv(&self, p: &str, k: usize, pad: usize) -> Conv2d<B> {
        self.conv_strided(p, k, 1, pad)
    }

    fn conv_strided(&self, p: &str, k: usize, stride: usize, pad: usize) -> Conv2d<B> {
        let weight: Param<Tensor<B, 4>> = self.tensor(&format!("{p}.weight"));
        let [c_out, c_in, _, _] = weight.dims();
        let mut conv = Conv2dConfig::new([c_in, c_out], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .init(self.device);
        conv.weight = weight;
        conv.bias = Some(self.tensor(&format!("{p}.bias")));
        conv
    }

    fn norm(&self, p: &str, groups: usize) -> GroupNorm<B> {
        let gamma: Param<Tensor<B, 1>> = self.tensor(&format!("{p}.weight"));
        let [c] = gamma.dims();
        let mut norm = GroupNormConfig::new(groups, c)
            .with_epsilon(GROUP_NORM_EPS)
            .init(self.device);
        norm.gamma = Some(gamma);
        norm.beta = Some(self.tensor(&format!("{p}.bias")));
        norm
    }

    /// PyTorch `Linear` (`weight [out, in]`) as burn's (`[in, out]`).
    fn linear(&self, p: &str) -> Linear<B> {
        let w: Param<Tensor<B, 2>> = self.tensor(&format!("{p}.weight"));
        Linear {
            weight: Param::initialized(ParamId::new(), w.val().transpose()),
            bias: Some(self.tensor(&format!("{p}.bias"))),
        }
    }

    fn has(&self, key: &str) -> bool {
        self.sd.contains(key)
    }
}

/// `ResnetBlock2D` without a time embedding: `skip(x) + conv2(SiLU(norm2(conv1(SiLU(norm1 x)))))`.
#[derive(Module, Debug)]
pub struct ResnetBlock<B: Backend> {
    norm1: GroupNorm<B>,
    conv1: Conv2d<B>,
    norm2: GroupNorm<B>,
    conv2: Conv2d<B>,
    /// 1×1 convolution on the skip path when the channel count changes.
    conv_shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResnetBlock<B> {
    fn new(w: &Weights<B>, p: &str, groups: usize) -> Self {
        let shortcut = format!("{p}.conv_shortcut");
        Self {
            norm1: w.norm(&format!("{p}.norm1"), groups),
            conv1: w.conv(&format!("{p}.conv1"), 3, 1),
            norm2: w.norm(&format!("{p}.norm2"), groups),
            conv2: w.conv(&format!("{p}.conv2"), 3, 1),
            conv_shortcut: w
                .has(&format!("{shortcut}.weight"))
                .then(|| w.conv(&shortcut, 1, 0)),
        }
    }

    /// `[N, C_in, H, W] → [N, C_out, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let skip = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        skip + h
    }
}

/// The mid block's single-head self-attention over positions, with a residual.
#[derive(Module, Debug)]
pub struct MidAttention<B: Backend> {
    group_norm: GroupNorm<B>,
    to_q: Linear<B>,
    to_k: Linear<B>,
    to_v: Linear<B>,
    to_out: Linear<B>,
}

impl<B: Backend> MidAttention<B> {
    fn new(w: &Weights<B>, p: &str, groups: usize) -> Self {
        Self {
            group_norm: w.norm(&format!("{p}.group_norm"), groups),
            to_q: w.linear(&format!("{p}.to_q")),
            to_k: w.linear(&format!("{p}.to_k")),
            to_v: w.linear(&format!("{p}.to_v")),
            to_out: w.linear(&format!("{p}.to_out.0")),
        }
    }

    /// `x + to_out(softmax(q·kᵀ/√C)·v)`, tokens = the `H·W` positions of `group_norm(x)`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let tokens = self
            .group_norm
            .forward(x.clone())
            .reshape([n, c, h * w])
            .swap_dims(1, 2); // [N, HW, C]
        let head = |l: &Linear<B>| l.forward(tokens.clone()).reshape([n, 1, h * w, c]);
        let options = AttentionModuleOptions {
            scale: Some((c as f64).powf(-0.5)),
            softcap: None,
            is_causal: false,
        };
        let out = attention(
            head(&self.to_q),
            head(&self.to_k),
            head(&self.to_v),
            None,
            None,
            options,
        )
        .reshape([n, h * w, c]);
        let out = self
            .to_out
            .forward(out)
            .swap_dims(1, 2)
            .reshape([n, c, h, w]);
        x + out
    }
}

/// `UNetMidBlock2D`: resnet → attention → resnet.
#[derive(Module, Debug)]
pub struct MidBlock<B: Backend> {
    resnet_0: ResnetBlock<B>,
    attention: Option<MidAttention<B>>,
    resnet_1: ResnetBlock<B>,
}

impl<B: Backend> MidBlock<B> {
    fn new(w: &Weights<B>, p: &str, groups: usize, with_attention: bool) -> Self {
        Self {
            resnet_0: ResnetBlock::new(w, &format!("{p}.resnets.0"), groups),
            attention: with_attention
                .then(|| MidAttention::new(w, &format!("{p}.attentions.0"), groups)),
            resnet_1: ResnetBlock::new(w, &format!("{p}.resnets.1"), groups),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.resnet_0.forward(x);
        let x = match &self.attention {
            Some(a) => a.forward(x),
            None => x,
        };
        self.resnet_1.forward(x)
    }
}

/// One encoder level (`DownEncoderBlock2D`): resnets, then (except last) pad right/bottom by
/// one and a stride-2 3×3 convolution without padding.
#[derive(Module, Debug)]
pub struct DownBlock<B: Backend> {
    resnets: Vec<ResnetBlock<B>>,
    downsampler: Option<Conv2d<B>>,
}

/// One decoder level (`UpDecoderBlock2D`): resnets, then (except last) nearest ×2 and a 3×3
/// convolution.
#[derive(Module, Debug)]
pub struct UpBlock<B: Backend> {
    resnets: Vec<ResnetBlock<B>>,
    upsampler: Option<Conv2d<B>>,
}

/// Nearest-neighbour ×2 upsampling (`F.interpolate(scale_factor=2, mode="nearest")`: output
/// pixel `(i, j)` copies input `(⌊i/2⌋, ⌊j/2⌋)`), by broadcasting, exactly.
fn upsample_nearest_2x<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h, 1, w, 1])
        .expand([n, c, h, 2, w, 2])
        .reshape([n, c, 2 * h, 2 * w])
}

/// The encoder: image → `[mean | logvar]` before `quant_conv`.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    conv_in: Conv2d<B>,
    down_blocks: Vec<DownBlock<B>>,
    mid_block: MidBlock<B>,
    conv_norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
}

impl<B: Backend> Encoder<B> {
    pub(super) fn new(w: &Weights<B>, config: &VaeConfig) -> Self {
        let g = config.norm_num_groups;
        let levels = config.block_out_channels.len();
        let down_blocks = (0..levels)
            .map(|i| DownBlock {
                resnets: (0..config.layers_per_block)
                    .map(|j| {
                        ResnetBlock::new(w, &format!("encoder.down_blocks.{i}.resnets.{j}"), g)
                    })
                    .collect(),
                downsampler: (i + 1 < levels).then(|| {
                    w.conv_strided(
                        &format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
                        3,
                        2,
                        0,
                    )
                }),
            })
            .collect();
        Self {
            conv_in: w.conv("encoder.conv_in", 3, 1),
            down_blocks,
            mid_block: MidBlock::new(w, "encoder.mid_block", g, config.mid_block_add_attention),
            conv_norm_out: w.norm("encoder.conv_norm_out", g),
            conv_out: w.conv("encoder.conv_out", 3, 1),
        }
    }

    pub(super) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = self.conv_in.forward(x);
        for block in &self.down_blocks {
            for r in &block.resnets {
                h = r.forward(h);
            }
            if let Some(down) = &block.downsampler {
                h = down.forward(h.pad((0, 1, 0, 1), PadMode::Constant(0.0)));
            }
        }
        let h = self.mid_block.forward(h);
        self.conv_out.forward(silu(self.conv_norm_out.forward(h)))
    }
}

/// The decoder: (post-quant) latent → image.
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    conv_in: Conv2d<B>,
    mid_block: MidBlock<B>,
    up_blocks: Vec<UpBlock<B>>,
    conv_norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
}

impl<B: Backend> Decoder<B> {
    pub(super) fn new(w: &Weights<B>, config: &VaeConfig) -> Self {
        let g = config.norm_num_groups;
        let levels = config.block_out_channels.len();
        let up_blocks = (0..levels)
            .map(|i| UpBlock {
                resnets: (0..=config.layers_per_block)
                    .map(|j| ResnetBlock::new(w, &format!("decoder.up_blocks.{i}.resnets.{j}"), g))
                    .collect(),
                upsampler: (i + 1 < levels)
                    .then(|| w.conv(&format!("decoder.up_blocks.{i}.upsamplers.0.conv"), 3, 1)),
            })
            .collect();
        Self {
            conv_in: w.conv("decoder.conv_in", 3, 1),
            mid_block: MidBlock::new(w, "decoder.mid_block", g, config.mid_block_add_attention),
            up_blocks,
            conv_norm_out: w.norm("decoder.conv_norm_out", g),
            conv_out: w.conv("decoder.conv_out", 3, 1),
        }
    }

    pub(super) fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = self.mid_block.forward(self.conv_in.forward(z));
        for block in &self.up_blocks {
            for r in &block.resnets {
                h = r.forward(h);
            }
            if let Some(up) = &block.upsampler {
                h = up.forward(upsample_nearest_2x(h));
            }
        }
        self.conv_out.forward(silu(self.conv_norm_out.forward(h)))
    }
}
