//! The Stable Diffusion VAE (diffusers `AutoencoderKL`), as DiT and SiT use it to go between
//! images and latents (REFERENCE §6).
//!
//! Built from a diffusers folder ([`Vae::load`]): `config.json` gives the shape
//! ([`VaeConfig::from_diffusers_json`]: any `block_out_channels`, `layers_per_block`,
//! `latent_channels`, `norm_num_groups`; `scaling_factor`, default 0.18215), the weights come from
//! `diffusion_pytorch_model.safetensors` or, failing that, `diffusion_pytorch_model.bin` (torch
//! zip). The mid-block attention may use the current names (`to_q`/`to_k`/`to_v`/`to_out.0`) or
//! the older ones (`query`/`key`/`value`/`proj_attn`, diffusers ≤ 0.13); both are read. A
//! missing, extra or mis-shaped key is an error naming the key and the file.
//!
//! The network (diffusers `autoencoders/vae.py`, `unet_2d_blocks.py`, `resnet.py`):
//!
//! ```text
//! encode: x [N,3,H,W] → conv_in → down_blocks[i] (layers_per_block resnets, then a stride-2
//!         downsampler except in the last block) → mid (resnet, attention, resnet)
//!         → GroupNorm → SiLU → conv_out (→ 2·latent) → quant_conv (1×1)
//!         = [mean | logvar], logvar clamped to [−30, 20]
//! decode: z [N,4,h,w] → post_quant_conv (1×1) → conv_in → mid → up_blocks[i]
//!         (layers_per_block + 1 resnets, then nearest ×2 + 3×3 conv except in the last block)
//!         → GroupNorm → SiLU → conv_out (→ 3)
//! ```
//!
//! Every GroupNorm has ε = 1e-6 and an affine; every 3×3 conv pads 1 except the downsampler's,
//! which pads the right and bottom by one and convolves with stride 2 and no padding. A resnet is
//! `skip(x) + conv2(SiLU(norm2(conv1(SiLU(norm1(x))))))` with a 1×1 `conv_shortcut` when the
//! channel count changes. The mid attention has one head of width C:
//! `x + to_out(softmax(q·kᵀ/√C)·v)` over the `h·w` positions of `group_norm(x)`.
//!
//! Latents here are *unscaled* (as `latent_dist.mean`); DiT's latents are these times
//! [`VaeConfig::scaling_factor`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::config::Config;
use burn::module::{Module, Param, ParamId};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::{AttentionModuleOptions, PadMode};
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use crate::checkpoint::{load_state_dict, save_safetensors, write_atomic, LoadOptions};
use crate::dit::check_entries;
use crate::state_dict::{CheckpointError, StateDict};

/// GroupNorm epsilon of every norm in the VAE (burn's default is 1e-5).
pub const GROUP_NORM_EPS: f64 = 1e-6;

/// diffusers' default `scaling_factor` (the SD VAE folders DiT uses do not set it).
pub const DEFAULT_SCALING_FACTOR: f64 = 0.18215;

/// The weight files a diffusers folder may hold, in the order they are tried.
pub const WEIGHT_FILES: [&str; 2] = [
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
];

/// logvar is clamped to this range before use, as diffusers' `DiagonalGaussianDistribution`.
pub const LOGVAR_RANGE: (f32, f32) = (-30.0, 20.0);

const KIND: &str = "AutoencoderKL";

/// Most resolution levels accepted in `block_out_channels` (SD's VAE has 4; the image side is
/// divided by 2^(levels − 1)).
pub const MAX_LEVELS: usize = 16;

/// Most resnets per block accepted in `layers_per_block` (SD's VAE has 2).
pub const MAX_LAYERS_PER_BLOCK: usize = 64;

/// Largest channel count accepted anywhere in the config (SD's VAE peaks at 512).
pub const MAX_CHANNELS: usize = 1 << 16;

/// Largest `config.json` read (diffusers writes under 1 KB).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Errors from reading a VAE folder or running the VAE.
#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    /// `config.json` is missing, unreadable or describes something this VAE is not.
    #[error("VAE config '{path}': {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The weights do not fit the config (missing, extra or mis-shaped key) or cannot be read.
    #[error("VAE weights '{path}': {source}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// The key-level error.
        #[source]
        source: CheckpointError,
    },
    /// An input whose shape does not fit the VAE.
    #[error("VAE input: {0}")]
    Input(String),
}

/// The shape of an `AutoencoderKL` (the fields of diffusers' `config.json` that matter).
#[derive(Config, Debug, PartialEq)]
pub struct VaeConfig {
    /// Image channels (3).
    #[config(default = 3)]
    pub in_channels: usize,
    /// Decoded image channels (3).
    #[config(default = 3)]
    pub out_channels: usize,
    /// Latent channels (4).
    #[config(default = 4)]
    pub latent_channels: usize,
    /// Channels of each resolution level, highest resolution first (`[128, 256, 512, 512]`).
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (the decoder has one more per block).
    #[config(default = 2)]
    pub layers_per_block: usize,
    /// GroupNorm groups.
    #[config(default = 32)]
    pub norm_num_groups: usize,
    /// DiT's latent = unscaled latent × this.
    #[config(default = 0.18215)]
    pub scaling_factor: f64,
    /// Whether the mid blocks have their attention layer.
    #[config(default = true)]
    pub mid_block_add_attention: bool,
    /// Whether `quant_conv` exists.
    #[config(default = true)]
    pub use_quant_conv: bool,
    /// Whether `post_quant_conv` exists.
    #[config(default = true)]
    pub use_post_quant_conv: bool,
}

/// `config.json` as diffusers writes it; keys we do not need are ignored.
#[derive(Deserialize)]
struct DiffusersConfig {
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
    #[serde(default = "three")]
    in_channels: usize,
    #[serde(default = "three")]
    out_channels: usize,
    #[serde(default = "four")]
    latent_channels: usize,
    #[serde(default = "default_channels")]
    block_out_channels: Vec<usize>,
    #[serde(default)]
    down_block_types: Option<Vec<String>>,
    #[serde(default)]
    up_block_types: Option<Vec<String>>,
    #[serde(default = "one")]
    layers_per_block: usize,
    #[serde(default = "thirty_two")]
    norm_num_groups: usize,
    #[serde(default)]
    act_fn: Option<String>,
    #[serde(default)]
    scaling_factor: Option<f64>,
    #[serde(default)]
    shift_factor: Option<f64>,
    #[serde(default)]
    mid_block_add_attention: Option<bool>,
    #[serde(default)]
    use_quant_conv: Option<bool>,
    #[serde(default)]
    use_post_quant_conv: Option<bool>,
}

fn one() -> usize {
    1
}
fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn thirty_two() -> usize {
    32
}
fn default_channels() -> Vec<usize> {
    vec![64]
}

impl VaeConfig {
    /// Parses a diffusers `config.json` (the defaults of `AutoencoderKL.__init__` apply to
    /// absent keys) and checks it describes a VAE this module can build.
    pub fn from_diffusers_json(text: &str, path: &Path) -> Result<Self, VaeError> {
        let bad = |reason: String| VaeError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let raw: DiffusersConfig = serde_json::from_str(text)
            .map_err(|e| bad(format!("not a diffusers config.json: {e}")))?;
        if let Some(class) = &raw.class_name {
            if class != KIND {
                return Err(bad(format!(
                    "_class_name is '{class}', expected '{KIND}' (point --vae at the VAE folder, \
                     e.g. stabilityai/sd-vae-ft-ema or a pipeline's vae/ subfolder)"
                )));
            }
        }
        let levels = raw.block_out_channels.len();
        for (name, types, want) in [
            (
                "down_block_types",
                &raw.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", &raw.up_block_types, "UpDecoderBlock2D"),
        ] {
            if let Some(types) = types {
                if types.len() != levels {
                    return Err(bad(format!(
                        "{name} has {} entries but block_out_channels has {levels}",
                        types.len()
                    )));
                }
                if let Some(other) = types.iter().find(|t| *t != want) {
                    return Err(bad(format!(
                        "{name} holds '{other}'; only {want} is supported"
                    )));
                }
            }
        }
        if let Some(act) = &raw.act_fn {
            if act != "silu" {
                return Err(bad(format!("act_fn '{act}' is not supported (only silu)")));
            }
        }
        if raw.shift_factor.is_some_and(|s| s != 0.0) {
            return Err(bad(
                "shift_factor is set; this VAE (DiT's SD VAE) has none and it is not supported"
                    .into(),
            ));
        }
        let config = VaeConfig {
            in_channels: raw.in_channels,
            out_channels: raw.out_channels,
            latent_channels: raw.latent_channels,
            block_out_channels: raw.block_out_channels,
            layers_per_block: raw.layers_per_block,
            norm_num_groups: raw.norm_num_groups,
            scaling_factor: raw.scaling_factor.unwrap_or(DEFAULT_SCALING_FACTOR),
            mid_block_add_attention: raw.mid_block_add_attention.unwrap_or(true),
            use_quant_conv: raw.use_quant_conv.unwrap_or(true),
            use_post_quant_conv: raw.use_post_quant_conv.unwrap_or(true),
        };
        config.validate().map_err(bad)?;
        Ok(config)
    }

    /// The config as diffusers' `config.json` (enough keys for diffusers to load it).
    pub fn to_diffusers_json(&self) -> String {
        let n = self.block_out_channels.len();
        let value = serde_json::json!({
            "_class_name": KIND,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "latent_channels": self.latent_channels,
            "block_out_channels": self.block_out_channels,
            "down_block_types": vec!["DownEncoderBlock2D"; n],
            "up_block_types": vec!["UpDecoderBlock2D"; n],
            "layers_per_block": self.layers_per_block,
            "norm_num_groups": self.norm_num_groups,
            "act_fn": "silu",
            "scaling_factor": self.scaling_factor,
            "mid_block_add_attention": self.mid_block_add_attention,
            "use_quant_conv": self.use_quant_conv,
            "use_post_quant_conv": self.use_post_quant_conv,
        });
        serde_json::to_string_pretty(&value).expect("a JSON value serialises")
    }

    /// Checks the config can build a network, with sizes bounded ([`MAX_LEVELS`],
    /// [`MAX_LAYERS_PER_BLOCK`], [`MAX_CHANNELS`]) so that a hostile config cannot make the key
    /// list or the network huge before any weight is read.
    pub fn validate(&self) -> Result<(), String> {
        if self.block_out_channels.is_empty() {
            return Err("block_out_channels is empty".into());
        }
        if self.block_out_channels.len() > MAX_LEVELS {
            return Err(format!(
                "block_out_channels has {} levels (at most {MAX_LEVELS} are supported; SD's VAE \
                 has 4)",
                self.block_out_channels.len()
            ));
        }
        if self.layers_per_block == 0 {
            return Err("layers_per_block must be at least 1".into());
        }
        if self.layers_per_block > MAX_LAYERS_PER_BLOCK {
            return Err(format!(
                "layers_per_block {} is more than the {MAX_LAYERS_PER_BLOCK} supported (SD's VAE \
                 has 2)",
                self.layers_per_block
            ));
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.latent_channels == 0 {
            return Err("in_channels, out_channels and latent_channels must be positive".into());
        }
        if let Some(c) = [self.in_channels, self.out_channels, self.latent_channels]
            .iter()
            .chain(&self.block_out_channels)
            .find(|&&c| c > MAX_CHANNELS)
        {
            return Err(format!(
                "a channel count of {c} is more than the {MAX_CHANNELS} supported"
            ));
        }
        let g = self.norm_num_groups;
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|&&c| g == 0 || c == 0 || c % g != 0)
        {
            return Err(format!(
                "norm_num_groups {g} does not divide block_out_channels entry {c}"
            ));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(format!(
                "scaling_factor {} must be positive",
                self.scaling_factor
            ));
        }
        Ok(())
    }

    /// The image side is divided by this to give the latent side: `2^(levels − 1)` (for a
    /// config [`VaeConfig::validate`] accepts; saturating at the top bit otherwise).
    pub fn downscale(&self) -> usize {
        let shift = self.block_out_channels.len().saturating_sub(1);
        1 << shift.min(usize::BITS as usize - 1)
    }

    /// Every state-dict key with its PyTorch shape, in the current diffusers naming.
    pub fn state_dict_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v = Vec::new();
        let ch = &self.block_out_channels;
        let last = *ch.last().expect("validated: non-empty");
        let lat = self.latent_channels;
        // Encoder.
        conv_shapes(&mut v, "encoder.conv_in", self.in_channels, ch[0], 3);
        let mut c_in = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            for j in 0..self.layers_per_block {
                let p = format!("encoder.down_blocks.{i}.resnets.{j}");
                resnet_shapes(&mut v, &p, if j == 0 { c_in } else { c }, c);
            }
            if i + 1 < ch.len() {
                conv_shapes(
                    &mut v,
                    &format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
                    c,
                    c,
                    3,
                );
            }
            c_in = c;
        }
        self.mid_shapes(&mut v, "encoder.mid_block", last);
        norm_shapes(&mut v, "encoder.conv_norm_out", last);
        conv_shapes(&mut v, "encoder.conv_out", last, 2 * lat, 3);
        if self.use_quant_conv {
            conv_shapes(&mut v, "quant_conv", 2 * lat, 2 * lat, 1);
        }
        // Decoder.
        if self.use_post_quant_conv {
            conv_shapes(&mut v, "post_quant_conv", lat, lat, 1);
        }
        conv_shapes(&mut v, "decoder.conv_in", lat, last, 3);
        self.mid_shapes(&mut v, "decoder.mid_block", last);
        let mut c_in = last;
        for (i, &c) in ch.iter().rev().enumerate() {
            for j in 0..=self.layers_per_block {
                let p = format!("decoder.up_blocks.{i}.resnets.{j}");
                resnet_shapes(&mut v, &p, if j == 0 { c_in } else { c }, c);
            }
            if i + 1 < ch.len() {
                conv_shapes(
                    &mut v,
                    &format!("decoder.up_blocks.{i}.upsamplers.0.conv"),
                    c,
                    c,
                    3,
                );
            }
            c_in = c;
        }
        norm_shapes(&mut v, "decoder.conv_norm_out", ch[0]);
        conv_shapes(&mut v, "decoder.conv_out", ch[0], self.out_channels, 3);
        v
    }

    fn mid_shapes(&self, v: &mut Vec<(String, Vec<usize>)>, prefix: &str, c: usize) {
        resnet_shapes(v, &format!("{prefix}.resnets.0"), c, c);
        if self.mid_block_add_attention {
            let a = format!("{prefix}.attentions.0");
            norm_shapes(v, &format!("{a}.group_norm"), c);
            for name in ["to_q", "to_k", "to_v", "to_out.0"] {
                v.push((format!("{a}.{name}.weight"), vec![c, c]));
                v.push((format!("{a}.{name}.bias"), vec![c]));
            }
        }
        resnet_shapes(v, &format!("{prefix}.resnets.1"), c, c);
    }

    /// A state dict of freshly initialised weights, deterministic in `seed`: convolutions and
    /// linears uniform in `±1/√fan_in` (PyTorch's default bound for the bias, and of the same
    /// order for the weight), GroupNorm γ = 1, β = 0. For tests and for tiny stand-in VAEs.
    pub fn random_state_dict(&self, seed: u64) -> StateDict {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut sd = StateDict::new();
        let shapes = self.state_dict_shapes();
        let fan_in: BTreeMap<String, usize> = shapes
            .iter()
            .filter(|(k, s)| k.ends_with(".weight") && s.len() >= 2)
            .map(|(k, s)| {
                (
                    k[..k.len() - ".weight".len()].to_string(),
                    s[1..].iter().product(),
                )
            })
            .collect();
        for (key, shape) in shapes {
            let n: usize = shape.iter().product();
            let (stem, leaf) = key.rsplit_once('.').expect("keys have a leaf");
            let data = match fan_in.get(stem) {
                Some(&fan) => {
                    let bound = 1.0 / (fan as f32).sqrt();
                    (0..n).map(|_| rng.random_range(-bound..bound)).collect()
                }
                None if leaf == "weight" => vec![1.0; n],
                None => vec![0.0; n],
            };
            sd.insert(key, shape, data);
        }
        sd
    }
}

fn conv_shapes(v: &mut Vec<(String, Vec<usize>)>, p: &str, c_in: usize, c_out: usize, k: usize) {
    v.push((format!("{p}.weight"), vec![c_out, c_in, k, k]));
    v.push((format!("{p}.bias"), vec![c_out]));
}

fn norm_shapes(v: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize) {
    v.push((format!("{p}.weight"), vec![c]));
    v.push((format!("{p}.bias"), vec![c]));
}

fn resnet_shapes(v: &mut Vec<(String, Vec<usize>)>, p: &str, c_in: usize, c_out: usize) {
    norm_shapes(v, &format!("{p}.norm1"), c_in);
    conv_shapes(v, &format!("{p}.conv1"), c_in, c_out, 3);
    norm_shapes(v, &format!("{p}.norm2"), c_out);
    conv_shapes(v, &format!("{p}.conv2"), c_out, c_out, 3);
    if c_in != c_out {
        conv_shapes(v, &format!("{p}.conv_shortcut"), c_in, c_out, 1);
    }
}

/// Renames the older diffusers attention keys (`query`, `key`, `value`, `proj_attn`) to the
/// current ones (`to_q`, `to_k`, `to_v`, `to_out.0`) and flattens 1×1-conv-shaped attention
/// weights `[C, C, 1, 1]` to `[C, C]`. A file holding both namings for one layer is an error.
pub fn normalize_attention_keys(sd: StateDict) -> Result<StateDict, CheckpointError> {
    const RENAMES: [(&str, &str); 4] = [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ];
    let mut out = StateDict::new();
    let mut renamed_from: BTreeMap<String, String> = BTreeMap::new();
    for (key, t) in sd.tensors {
        let mut new_key = key.clone();
        if key.contains(".attentions.") {
            for (old, new) in RENAMES {
                if key.contains(old) {
                    new_key = key.replacen(old, new, 1);
                }
            }
        }
        let mut shape = t.shape;
        if new_key.contains(".attentions.")
            && new_key.ends_with(".weight")
            && shape.len() == 4
            && shape[2] == 1
            && shape[3] == 1
        {
            shape.truncate(2);
        }
        if new_key != key {
            renamed_from.insert(new_key.clone(), key.clone());
        }
        if out.contains(&new_key) {
            let other = renamed_from
                .get(&new_key)
                .cloned()
                .unwrap_or(new_key.clone());
            return Err(CheckpointError::ConfigMismatch(format!(
                "the file holds both '{key}' and '{other}' (old and new attention names for one \
                 layer)"
            )));
        }
        out.insert(new_key, shape, t.data);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Modules
// ---------------------------------------------------------------------------------------------

/// Builds modules from a checked state dict.
struct Weights<'a, B: Backend> {
    sd: &'a StateDict,
    device: &'a B::Device,
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
    fn conv(&self, p: &str, k: usize, pad: usize) -> Conv2d<B> {
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
    fn new(w: &Weights<B>, config: &VaeConfig) -> Self {
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

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
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
    fn new(w: &Weights<B>, config: &VaeConfig) -> Self {
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

    fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
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

/// The encoder's posterior `N(mean, exp(logvar))` per latent value (diffusers'
/// `DiagonalGaussianDistribution`), logvar already clamped to [`LOGVAR_RANGE`].
#[derive(Debug, Clone)]
pub struct DiagonalGaussian<B: Backend> {
    /// `[N, latent, h, w]`, unscaled.
    pub mean: Tensor<B, 4>,
    /// `[N, latent, h, w]`, clamped.
    pub logvar: Tensor<B, 4>,
}

impl<B: Backend> DiagonalGaussian<B> {
    /// `exp(logvar / 2)`.
    pub fn std(&self) -> Tensor<B, 4> {
        (self.logvar.clone() * 0.5).exp()
    }

    /// `mean + std·ε` for a standard normal `eps` of the same shape.
    pub fn sample(&self, eps: Tensor<B, 4>) -> Tensor<B, 4> {
        self.mean.clone() + self.std() * eps
    }
}

/// diffusers `AutoencoderKL`; see the [module docs](self).
#[derive(Module, Debug)]
pub struct Vae<B: Backend> {
    encoder: Encoder<B>,
    decoder: Decoder<B>,
    quant_conv: Option<Conv2d<B>>,
    post_quant_conv: Option<Conv2d<B>>,
    in_channels: usize,
    latent_channels: usize,
    downscale: usize,
}

/// What [`Vae::load`] read.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeSource {
    /// The config it was built from.
    pub config: VaeConfig,
    /// The weight file read.
    pub weights: PathBuf,
    /// Whether the file used the older attention names.
    pub old_attention_names: bool,
}

impl<B: Backend> Vae<B> {
    /// Reads a diffusers VAE folder: `config.json` and `diffusion_pytorch_model.safetensors`
    /// (preferred) or `diffusion_pytorch_model.bin`.
    pub fn load(dir: &Path, device: &B::Device) -> Result<(Self, VaeSource), VaeError> {
        let config_path = dir.join("config.json");
        if !dir.is_dir() {
            return Err(VaeError::Config {
                path: dir.to_path_buf(),
                reason: "not a folder; --vae takes a diffusers VAE folder with config.json and \
                         diffusion_pytorch_model.safetensors (or .bin), e.g. a download of \
                         stabilityai/sd-vae-ft-ema"
                    .into(),
            });
        }
        let unreadable = |e: std::io::Error| VaeError::Config {
            path: config_path.clone(),
            reason: format!("cannot read it ({e}); a diffusers VAE folder has a config.json"),
        };
        let file = std::fs::File::open(&config_path).map_err(unreadable)?;
        let len = file.metadata().map_err(unreadable)?.len();
        if len > MAX_CONFIG_BYTES {
            return Err(VaeError::Config {
                path: config_path.clone(),
                reason: format!(
                    "{len} bytes, more than the {MAX_CONFIG_BYTES} read (a diffusers config.json \
                     is under 1 KB): not a VAE config"
                ),
            });
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_CONFIG_BYTES), &mut text)
            .map_err(unreadable)?;
        let config = VaeConfig::from_diffusers_json(&text, &config_path)?;
        let weights = WEIGHT_FILES
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| VaeError::Config {
                path: dir.to_path_buf(),
                reason: format!("holds neither {} nor {}", WEIGHT_FILES[0], WEIGHT_FILES[1]),
            })?;
        let wrap = |source| VaeError::Weights {
            path: weights.clone(),
            source,
        };
        let (sd, _) = load_state_dict(&weights, &LoadOptions::default()).map_err(wrap)?;
        let old_attention_names = sd.keys().any(|k| {
            k.contains(".attentions.")
                && [".query.", ".key.", ".value.", ".proj_attn."]
                    .iter()
                    .any(|o| k.contains(o))
        });
        let vae = Self::from_state_dict(&config, sd, device).map_err(wrap)?;
        Ok((
            vae,
            VaeSource {
                config,
                weights,
                old_attention_names,
            },
        ))
    }

    /// Builds from a state dict in either attention naming, checking every key and shape.
    pub fn from_state_dict(
        config: &VaeConfig,
        sd: StateDict,
        device: &B::Device,
    ) -> Result<Self, CheckpointError> {
        config.validate().map_err(CheckpointError::ConfigMismatch)?;
        let sd = normalize_attention_keys(sd)?;
        check_entries(&sd, &config.state_dict_shapes(), &[], KIND)?;
        let w = Weights { sd: &sd, device };
        Ok(Self {
            encoder: Encoder::new(&w, config),
            decoder: Decoder::new(&w, config),
            quant_conv: config.use_quant_conv.then(|| w.conv("quant_conv", 1, 0)),
            post_quant_conv: config
                .use_post_quant_conv
                .then(|| w.conv("post_quant_conv", 1, 0)),
            in_channels: config.in_channels,
            latent_channels: config.latent_channels,
            downscale: config.downscale(),
        })
    }

    /// Image side ÷ latent side.
    pub fn downscale(&self) -> usize {
        self.downscale
    }

    /// Latent channels.
    pub fn latent_channels(&self) -> usize {
        self.latent_channels
    }

    /// Images `[N, C, H, W]` in `[−1, 1]` → the posterior over unscaled latents
    /// `[N, latent, H/f, W/f]` (`f` = [`Self::downscale`]). H and W must be multiples of `f`.
    pub fn encode(&self, x: Tensor<B, 4>) -> Result<DiagonalGaussian<B>, VaeError> {
        let [n, c, h, w] = x.dims();
        let f = self.downscale;
        if c != self.in_channels {
            return Err(VaeError::Input(format!(
                "images have {c} channels but the VAE takes {} ([N, C, H, W] in [-1, 1])",
                self.in_channels
            )));
        }
        if n == 0 || h == 0 || w == 0 || h % f != 0 || w % f != 0 {
            return Err(VaeError::Input(format!(
                "image size {h}×{w} (batch {n}) must be non-empty multiples of {f}, the VAE's \
                 downscale factor"
            )));
        }
        let mut moments = self.encoder.forward(x);
        if let Some(q) = &self.quant_conv {
            moments = q.forward(moments);
        }
        let l = self.latent_channels;
        let mean = moments.clone().narrow(1, 0, l);
        let logvar = moments
            .narrow(1, l, l)
            .clamp(LOGVAR_RANGE.0, LOGVAR_RANGE.1);
        Ok(DiagonalGaussian { mean, logvar })
    }

    /// Unscaled latents `[N, latent, h, w]` → images `[N, C_out, h·f, w·f]` (not clamped).
    pub fn decode(&self, z: Tensor<B, 4>) -> Result<Tensor<B, 4>, VaeError> {
        let [n, c, h, w] = z.dims();
        if c != self.latent_channels {
            return Err(VaeError::Input(format!(
                "latents have {c} channels but the VAE's latent_channels is {}",
                self.latent_channels
            )));
        }
        if n == 0 || h == 0 || w == 0 {
            return Err(VaeError::Input(format!(
                "empty latent batch {:?}",
                [n, c, h, w]
            )));
        }
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z),
            None => z,
        };
        Ok(self.decoder.forward(z))
    }
}

/// Writes a diffusers VAE folder (`config.json` + `diffusion_pytorch_model.safetensors`, both
/// atomically), e.g. a tiny random VAE for tests made with [`VaeConfig::random_state_dict`].
pub fn save_diffusers_folder(
    dir: &Path,
    config: &VaeConfig,
    sd: &StateDict,
) -> Result<(), VaeError> {
    let io = |e: std::io::Error| VaeError::Config {
        path: dir.to_path_buf(),
        reason: format!("cannot write: {e}"),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let weights = dir.join(WEIGHT_FILES[0]);
    save_safetensors(sd, &weights, &BTreeMap::new()).map_err(|source| VaeError::Weights {
        path: weights.clone(),
        source,
    })?;
    let json = config.to_diffusers_json();
    write_atomic(&dir.join("config.json"), |w| {
        use std::io::Write;
        w.write_all(json.as_bytes())
    })
    .map_err(io)
}
