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
//!
//! Files: this one is the VAE itself (loading a folder, encode, decode, writing a folder);
//! `config` reads and checks diffusers' `config.json`, `keys` holds the state-dict key names and
//! shapes, and `network` the encoder, decoder and their blocks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::checkpoint::{load_state_dict, save_safetensors, write_atomic, LoadOptions};
use crate::dit::check_entries;
use crate::state_dict::{CheckpointError, StateDict};

mod config;
mod keys;
mod network;

pub use config::VaeConfig;
pub use keys::normalize_attention_keys;
pub use network::{Decoder, DownBlock, Encoder, MidAttention, MidBlock, ResnetBlock, UpBlock};

use network::Weights;

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
