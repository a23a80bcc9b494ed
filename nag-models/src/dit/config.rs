//! A DiT's configuration: the reference presets and CPU presets, validation, derived sizes,
//! and building the network with the reference initialisation.

use burn::config::Config;
use burn::tensor::backend::Backend;

use super::functional::fixed_param;
use super::{
    sincos_pos_embed_2d, Dit, DitBlock, FinalLayer, LabelEmbedder, ModelError, PatchEmbed,
    TimestepEmbedder,
};

/// What number the network is fed as `t`. The network is the same function either way; this
/// tells samplers and trainers which clock to use.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum TimeInput {
    /// DiT: the DDPM step index as a float, `0 ..= 999` (0 = data), the ORIGINAL index even
    /// for respaced samplers (REFERENCE §3).
    DdpmIndex,
    /// SiT: its clock `t ∈ [0, 1]` with `t = 0` noise and `t = 1` data, i.e. `t = 1 − τ`
    /// (REFERENCE §4); fed as is, not ×1000.
    SitClock,
}

/// Configuration of a [`Dit`] (REFERENCE §2).
///
/// Shapes: latent input `[N, in_channels, input_size, input_size]`, `T = (input_size /
/// patch_size)²` tokens of width `D = hidden_size`, output `[N, out_channels, input_size,
/// input_size]` with `out_channels = 2·in_channels` when `learn_sigma`.
#[derive(Config, Debug, PartialEq)]
pub struct DitConfig {
    /// Spatial size of the (latent) input, `H = W`; 32 for 256-px images with an /8 VAE.
    pub input_size: usize,
    /// Patch size `p` (2, 4 or 8 in the reference variants).
    pub patch_size: usize,
    /// Input channels `C` (4 for SD-VAE latents).
    pub in_channels: usize,
    /// Token width `D`.
    pub hidden_size: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads; `D` must be divisible by it.
    pub num_heads: usize,
    /// Number of classes; 0 = unconditional, in which case there is no label embedder at all.
    pub num_classes: usize,
    /// MLP hidden width is `int(D · mlp_ratio)`.
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    /// Output `2·C` channels: ε then the variance interpolation value `v` (REFERENCE §3).
    #[config(default = true)]
    pub learn_sigma: bool,
    /// Label-dropout probability used in training. The label table has the extra null row
    /// (index `num_classes`) only when this is `> 0`, as in the reference.
    #[config(default = 0.1)]
    pub class_dropout_prob: f64,
    /// The clock `t` is given in.
    #[config(default = "TimeInput::DdpmIndex")]
    pub time_input: TimeInput,
    /// Whether the model has the learned null-timestep vector `t_embedder.null` (needed for
    /// NAG and for training with noise-condition dropout).
    #[config(default = true)]
    pub null_timestep: bool,
}

/// The reference variants: (name, depth, hidden, heads).
const VARIANTS: [(&str, usize, usize, usize); 4] = [
    ("S", 12, 384, 6),
    ("B", 12, 768, 12),
    ("L", 24, 1024, 16),
    ("XL", 28, 1152, 16),
];

/// The small CPU presets: (name, depth, hidden, heads, patch).
const SMALL_PRESETS: [(&str, usize, usize, usize, usize); 2] =
    [("tiny", 4, 128, 4, 2), ("small", 6, 256, 4, 2)];

/// Every accepted preset name, for error messages.
fn preset_names() -> String {
    let mut names = Vec::new();
    for family in ["DiT", "SiT"] {
        for (v, ..) in VARIANTS {
            for p in [2, 4, 8] {
                names.push(format!("{family}-{v}/{p}"));
            }
        }
    }
    for (n, ..) in SMALL_PRESETS {
        names.push(format!("{n}[/1|2|4|8]"));
        names.push(format!("SiT-{n}[/p]"));
    }
    names.join(", ")
}

/// Attention heads of the standard variants, by hidden size (plus the CPU presets).
pub fn standard_num_heads(hidden_size: usize) -> Option<usize> {
    match hidden_size {
        384 => Some(6),
        768 => Some(12),
        1024 | 1152 => Some(16),
        128 | 256 => Some(4),
        _ => None,
    }
}

impl DitConfig {
    /// A named preset (case-insensitive):
    ///
    /// - `DiT-{S,B,L,XL}/{2,4,8}`: the reference variants (S 12/384/6, B 12/768/12,
    ///   L 24/1024/16, XL 28/1152/16, depth/hidden/heads), `learn_sigma = true`, DDPM index.
    /// - `SiT-{S,B,L,XL}/{2,4,8}`: the same networks with the SiT clock and
    ///   `learn_sigma = false`.
    /// - `tiny` (depth 4, hidden 128, 4 heads, patch 2) and `small` (depth 6, hidden 256,
    ///   4 heads, patch 2) for CPU runs, DiT-style; `SiT-tiny`, `SiT-small` likewise; a suffix
    ///   `/p` (`tiny/4`) sets another patch size (1, 2, 4 or 8).
    ///
    /// `input_size`, `in_channels` and `num_classes` (0 = unconditional) are the data's.
    pub fn preset(
        name: &str,
        input_size: usize,
        in_channels: usize,
        num_classes: usize,
    ) -> Result<DitConfig, ModelError> {
        let unknown = || ModelError::UnknownPreset {
            name: name.to_string(),
            known: preset_names(),
        };
        let lower = name.trim().to_ascii_lowercase();
        let (sit, rest) = if let Some(r) = lower.strip_prefix("sit-") {
            (true, r)
        } else if let Some(r) = lower.strip_prefix("dit-") {
            (false, r)
        } else {
            (false, lower.as_str())
        };
        // A CPU preset with an optional patch size: "tiny", "tiny/4".
        let (small_name, small_patch) = match rest.split_once('/') {
            Some((n, p)) => (n, p.parse::<usize>().ok()),
            None => (rest, None),
        };
        let small = SMALL_PRESETS.iter().find(|s| s.0 == small_name);
        let (depth, hidden, heads, patch) = if let Some(&(_, d, h, nh, p)) = small {
            match (rest.contains('/'), small_patch) {
                (false, _) => (d, h, nh, p),
                (true, Some(p @ (1 | 2 | 4 | 8))) => (d, h, nh, p),
                (true, _) => return Err(unknown()),
            }
        } else {
            // "xl/2" etc.: only with an explicit family prefix
            if rest.len() == lower.len() {
                return Err(unknown());
            }
            let (variant, patch) = rest.split_once('/').ok_or_else(unknown)?;
            let patch: usize = match patch {
                "2" => 2,
                "4" => 4,
                "8" => 8,
                _ => return Err(unknown()),
            };
            let &(_, d, h, nh) = VARIANTS
                .iter()
                .find(|v| v.0.eq_ignore_ascii_case(variant))
                .ok_or_else(unknown)?;
            (d, h, nh, patch)
        };
        let config = DitConfig::new(
            input_size,
            patch,
            in_channels,
            hidden,
            depth,
            heads,
            num_classes,
        );
        let config = if sit {
            config
                .with_time_input(TimeInput::SitClock)
                .with_learn_sigma(false)
        } else {
            config
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the config can build a network: positive sizes, `p | input_size`, `heads | D`,
    /// `4 | D` (2-D sin-cos table), `mlp_ratio > 0`, `class_dropout_prob ∈ [0, 1)`.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        for (name, v) in [
            ("input_size", self.input_size),
            ("patch_size", self.patch_size),
            ("in_channels", self.in_channels),
            ("hidden_size", self.hidden_size),
            ("depth", self.depth),
            ("num_heads", self.num_heads),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if !self.input_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "input_size {} is not a multiple of patch_size {}",
                self.input_size, self.patch_size
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return bad(format!(
                "hidden_size {} is not divisible by num_heads {}",
                self.hidden_size, self.num_heads
            ));
        }
        if !self.hidden_size.is_multiple_of(4) {
            return bad(format!(
                "hidden_size {} must be a multiple of 4 (2-D sin-cos position table)",
                self.hidden_size
            ));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) || self.mlp_hidden() == 0 {
            return bad(format!("mlp_ratio {} must be positive", self.mlp_ratio));
        }
        if !(0.0..1.0).contains(&self.class_dropout_prob) {
            return bad(format!(
                "class_dropout_prob {} must be in [0, 1)",
                self.class_dropout_prob
            ));
        }
        Ok(())
    }

    /// Output channels: `2·C` with `learn_sigma`, else `C`.
    pub fn out_channels(&self) -> usize {
        if self.learn_sigma {
            2 * self.in_channels
        } else {
            self.in_channels
        }
    }

    /// Tokens per side, `input_size / p`.
    pub fn grid_size(&self) -> usize {
        self.input_size / self.patch_size
    }

    /// Number of tokens `T = (input_size / p)²`.
    pub fn num_patches(&self) -> usize {
        self.grid_size() * self.grid_size()
    }

    /// MLP hidden width `int(D · mlp_ratio)`.
    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }

    /// Rows of the label table: `num_classes + 1` (null row last) when
    /// `class_dropout_prob > 0`, `num_classes` otherwise, 0 when unconditional.
    pub fn label_table_rows(&self) -> usize {
        if self.num_classes == 0 {
            0
        } else {
            self.num_classes + usize::from(self.class_dropout_prob > 0.0)
        }
    }

    /// Whether the label table has the null class (index `num_classes`).
    pub fn has_null_class(&self) -> bool {
        self.num_classes > 0 && self.class_dropout_prob > 0.0
    }

    /// Checks a label: `0..num_classes`, or `num_classes` itself (the null class, which DiT
    /// feeds to the unconditional half of CFG) when the table has the null row. Labels of
    /// unconditional models are ignored.
    pub fn check_label(&self, y: i64) -> Result<(), ModelError> {
        let classes = self.num_classes as i64;
        let top = classes + i64::from(self.has_null_class());
        if classes == 0 || (0..top).contains(&y) {
            return Ok(());
        }
        let null = if self.has_null_class() {
            format!(", or {classes} for the null class")
        } else {
            " (this model has no null class: it was trained without label dropout)".into()
        };
        Err(ModelError::InvalidInput(format!(
            "label {y} is outside 0..{classes}{null}"
        )))
    }

    /// Number of scalars in the network, computed from shapes without building it. Includes
    /// the fixed position table and, with `null_timestep`, the `D` null-t values; e.g.
    /// DiT-XL/2 at 256 px with 1000 classes: 675,129,632 (+1,152), DiT-S/2: 32,963,360 (+384).
    pub fn param_count(&self) -> usize {
        self.state_dict_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// Builds the network with the reference initialisation (REFERENCE §2): xavier-uniform
    /// linears with zero bias, the patch conv xavier-uniform on its flattened `[D, C·p·p]`
    /// weight with zero bias, label table `N(0, 0.02)`, timestep-MLP weights `N(0, 0.02)`,
    /// every adaLN output layer and the final linear zero (so the fresh model outputs zeros),
    /// the fixed sin-cos position table, and the null-t vector `N(0, 0.02)` (this project's
    /// choice, the same scale as the label table). Parameters are materialised lazily on
    /// first use, as in burn-nn.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Dit<B>, ModelError> {
        self.validate()?;
        let d = self.hidden_size;
        let p = self.patch_size;
        let y_embedder = (self.num_classes > 0)
            .then(|| LabelEmbedder::new(self.num_classes, d, self.has_null_class(), device));
        Ok(Dit {
            x_embedder: PatchEmbed::new(self.in_channels, d, p, device),
            pos_embed: fixed_param(
                sincos_pos_embed_2d(d, self.grid_size()),
                [1, self.num_patches(), d],
                device,
            ),
            t_embedder: TimestepEmbedder::new(d, self.null_timestep, device),
            y_embedder,
            blocks: (0..self.depth)
                .map(|_| DitBlock::new(d, self.num_heads, self.mlp_hidden(), device))
                .collect(),
            final_layer: FinalLayer::new(d, p * p * self.out_channels(), device),
            config: self.clone(),
        })
    }
}
