//! The VAE's shape: diffusers' `config.json` read (with `AutoencoderKL`'s defaults) and written,
//! and checked to describe a network this module can build.

use std::path::Path;

use burn::config::Config;
use serde::Deserialize;

use super::{
    VaeError, DEFAULT_SCALING_FACTOR, KIND, MAX_CHANNELS, MAX_LAYERS_PER_BLOCK, MAX_LEVELS,
};

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
}
