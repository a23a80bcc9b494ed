//! DiT (Peebles & Xie, 2023) with a learned null-timestep embedding, also used for SiT.
//!
//! The network is exactly the reference DiT (REFERENCE §2): patch embedding, fixed 2-D sin-cos
//! positional table, sinusoidal timestep MLP, label table with a null row, adaLN-Zero
//! transformer blocks, adaLN final layer and unpatchify. Two additions serve NAG:
//!
//! - a learned vector `t_embedder.null` of size `D` that replaces the timestep embedding of a
//!   sample when its entry of the `null_t` mask is set (classifier-free NAG's dropped noise
//!   condition, REFERENCE §1 **\[choice\]**);
//! - [`Dit::forward_guided`], which evaluates all branches of a
//!   [`GuidancePlan`] in one batch and combines them.
//!
//! DiT and SiT compute the same function of `(x, t, y)`; they differ only in the number fed as
//! `t` ([`TimeInput`]) and in `learn_sigma`, both of which live in [`DitConfig`].
//!
//! Checkpoints convert to and from [`StateDict`] with the reference key names and PyTorch
//! layouts ([`Dit::to_state_dict`], [`Dit::load_state_dict`], [`DitConfig::infer_from_state_dict`]).

use std::collections::BTreeSet;

use burn::config::Config;
use burn::module::{Initializer, Module, Param, ParamId};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Shape, Tensor, TensorData};
use nag_core::guidance::GuidancePlan;

use crate::kernels;
use crate::state_dict::{CheckpointError, StateDict};

/// Epsilon of every LayerNorm in the network (no affine parameters), as in the reference.
pub const LAYER_NORM_EPS: f64 = 1e-6;

/// Number of sinusoidal frequencies fed to the timestep MLP (`256 = 2 × 128`).
pub const FREQUENCY_EMBEDDING_SIZE: usize = 256;

/// Kind name used in checkpoint errors.
const KIND: &str = "DiT";

/// The state-dict key of the learned null-timestep vector (this project's addition).
pub const NULL_T_KEY: &str = "t_embedder.null";

/// Errors from building or running a model on invalid configs or inputs.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An unknown preset name.
    #[error("unknown model preset '{name}': expected one of {known}")]
    UnknownPreset {
        /// The name given.
        name: String,
        /// The accepted names.
        known: String,
    },
    /// A config that cannot build a network.
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    /// An input whose shape disagrees with the config.
    #[error("input shape mismatch: {0}")]
    Shape(String),
    /// An input whose values are invalid (e.g. a label outside `0..num_classes`).
    #[error("invalid model input: {0}")]
    InvalidInput(String),
    /// A request the model cannot serve (e.g. CFG on an unconditional model).
    #[error("not supported by this model: {0}")]
    Unsupported(String),
    /// A guidance plan failed to combine the branch outputs.
    #[error(transparent)]
    Guidance(#[from] nag_core::Error),
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

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

    /// Every state-dict entry of the network with its PyTorch shape, in module order
    /// (`t_embedder.null` only when `null_timestep`).
    pub fn state_dict_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let d = self.hidden_size;
        let (c, p) = (self.in_channels, self.patch_size);
        let mut v: Vec<(String, Vec<usize>)> = vec![
            ("pos_embed".into(), vec![1, self.num_patches(), d]),
            ("x_embedder.proj.weight".into(), vec![d, c, p, p]),
            ("x_embedder.proj.bias".into(), vec![d]),
            (
                "t_embedder.mlp.0.weight".into(),
                vec![d, FREQUENCY_EMBEDDING_SIZE],
            ),
            ("t_embedder.mlp.0.bias".into(), vec![d]),
            ("t_embedder.mlp.2.weight".into(), vec![d, d]),
            ("t_embedder.mlp.2.bias".into(), vec![d]),
        ];
        if self.null_timestep {
            v.push((NULL_T_KEY.into(), vec![d]));
        }
        if self.num_classes > 0 {
            v.push((
                "y_embedder.embedding_table.weight".into(),
                vec![self.label_table_rows(), d],
            ));
        }
        for i in 0..self.depth {
            block_shapes(&mut v, &format!("blocks.{i}"), d, self.mlp_hidden());
        }
        v.push((
            "final_layer.linear.weight".into(),
            vec![p * p * self.out_channels(), d],
        ));
        v.push((
            "final_layer.linear.bias".into(),
            vec![p * p * self.out_channels()],
        ));
        v.push((
            "final_layer.adaLN_modulation.1.weight".into(),
            vec![2 * d, d],
        ));
        v.push(("final_layer.adaLN_modulation.1.bias".into(), vec![2 * d]));
        v
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

    /// Recovers the config of a checkpoint from its shapes (REFERENCE §2 key names):
    /// depth from the largest block index, `D`, `C` and `p` from `x_embedder.proj.weight`,
    /// `num_classes` from the label table (rows − 1, or rows when `hints.class_dropout_prob`
    /// is 0; 0 when there is no table), `learn_sigma` from the final linear (`p²·2C` vs
    /// `p²·C` outputs), `input_size` from the `pos_embed` token count (`√T · p`), the MLP
    /// ratio from `fc1`. Heads cannot be inferred: they come from `hints.num_heads` or
    /// [`standard_num_heads`]. The clock and `null_timestep` come from the hints (defaults:
    /// DDPM index, true — a checkpoint without `t_embedder.null` then gets a fresh one).
    pub fn infer_from_state_dict(
        sd: &StateDict,
        hints: &DitHints,
    ) -> Result<DitConfig, CheckpointError> {
        let trunk = infer_trunk(sd, KIND, hints.num_heads)?;
        let dropout = hints.class_dropout_prob.unwrap_or(0.1);
        let num_classes = match sd.get("y_embedder.embedding_table.weight") {
            None => 0,
            Some(t) => {
                if t.shape.len() != 2 || t.shape[1] != trunk.hidden {
                    return Err(mismatch(format!(
                        "y_embedder.embedding_table.weight has shape {:?}, expected [rows, {}]",
                        t.shape, trunk.hidden
                    )));
                }
                let rows = t.shape[0];
                let n = if dropout > 0.0 {
                    rows.saturating_sub(1)
                } else {
                    rows
                };
                if n == 0 {
                    return Err(mismatch(format!(
                        "label table has {rows} rows: too few for a class-conditional model"
                    )));
                }
                n
            }
        };
        let out = sd
            .get("final_layer.linear.weight")
            .ok_or_else(|| missing("final_layer.linear.weight"))?;
        let (p, c) = (trunk.patch, trunk.in_channels);
        let learn_sigma = match out.shape.first() {
            Some(&o) if o == p * p * 2 * c => true,
            Some(&o) if o == p * p * c => false,
            _ => {
                return Err(mismatch(format!(
                    "final_layer.linear.weight has shape {:?}: expected p²·C = {} or p²·2C = {} \
                     outputs for patch {p} and {c} input channels",
                    out.shape,
                    p * p * c,
                    p * p * 2 * c
                )))
            }
        };
        let config = DitConfig::new(
            trunk.input_size,
            p,
            c,
            trunk.hidden,
            trunk.depth,
            trunk.num_heads,
            num_classes,
        )
        .with_mlp_ratio(trunk.mlp_ratio)
        .with_learn_sigma(learn_sigma)
        .with_class_dropout_prob(dropout)
        .with_time_input(hints.time_input.unwrap_or(TimeInput::DdpmIndex))
        .with_null_timestep(hints.null_timestep.unwrap_or(true));
        config
            .validate()
            .map_err(|e| mismatch(format!("inferred config is invalid: {e}")))?;
        Ok(config)
    }
}

/// What [`DitConfig::infer_from_state_dict`] cannot read from shapes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DitHints {
    /// Attention heads (default: [`standard_num_heads`] of the hidden size).
    pub num_heads: Option<usize>,
    /// The clock (default: [`TimeInput::DdpmIndex`]).
    pub time_input: Option<TimeInput>,
    /// Label-dropout probability (default 0.1: the label table's last row is the null class).
    pub class_dropout_prob: Option<f64>,
    /// Whether to have the null-t vector (default true).
    pub null_timestep: Option<bool>,
}

impl DitHints {
    /// Hints for a SiT checkpoint: the SiT clock, everything else default.
    pub fn sit() -> Self {
        Self {
            time_input: Some(TimeInput::SitClock),
            ..Self::default()
        }
    }
}

/// Shapes shared by DiT and the estimator, read from a state dict.
pub(crate) struct Trunk {
    pub hidden: usize,
    pub in_channels: usize,
    pub patch: usize,
    pub input_size: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
}

pub(crate) fn missing(key: &str) -> CheckpointError {
    CheckpointError::MissingKey {
        key: key.to_string(),
        expected_kind: KIND.to_string(),
    }
}

pub(crate) fn mismatch(msg: String) -> CheckpointError {
    CheckpointError::ConfigMismatch(msg)
}

/// Reads patch embedding, position table, block count and MLP width.
pub(crate) fn infer_trunk(
    sd: &StateDict,
    kind: &str,
    num_heads: Option<usize>,
) -> Result<Trunk, CheckpointError> {
    let miss = |key: &str| CheckpointError::MissingKey {
        key: key.to_string(),
        expected_kind: kind.to_string(),
    };
    let w = sd
        .get("x_embedder.proj.weight")
        .ok_or_else(|| miss("x_embedder.proj.weight"))?;
    let (hidden, in_channels, patch) = match w.shape[..] {
        [d, c, kh, kw] if kh == kw && d > 0 && c > 0 && kh > 0 => (d, c, kh),
        _ => {
            return Err(mismatch(format!(
                "x_embedder.proj.weight has shape {:?}, expected [D, C, p, p]",
                w.shape
            )))
        }
    };
    let pos = sd.get("pos_embed").ok_or_else(|| miss("pos_embed"))?;
    let tokens = match pos.shape[..] {
        [1, t, d] if d == hidden => t,
        _ => {
            return Err(mismatch(format!(
                "pos_embed has shape {:?}, expected [1, T, {hidden}]",
                pos.shape
            )))
        }
    };
    let grid = (tokens as f64).sqrt().round() as usize;
    if grid * grid != tokens || grid == 0 {
        return Err(mismatch(format!(
            "pos_embed has {tokens} tokens, not a square grid"
        )));
    }
    let depth = sd
        .keys()
        .filter_map(|k| k.strip_prefix("blocks."))
        .filter_map(|k| k.split('.').next()?.parse::<usize>().ok())
        .max()
        .map(|m| m + 1)
        .ok_or_else(|| mismatch("checkpoint has no 'blocks.{i}.*' entries".into()))?;
    let fc1 = sd
        .get("blocks.0.mlp.fc1.weight")
        .ok_or_else(|| miss("blocks.0.mlp.fc1.weight"))?;
    let mlp_hidden = match fc1.shape[..] {
        [h, d] if d == hidden && h > 0 => h,
        _ => {
            return Err(mismatch(format!(
                "blocks.0.mlp.fc1.weight has shape {:?}, expected [mlp_hidden, {hidden}]",
                fc1.shape
            )))
        }
    };
    let mlp_ratio = mlp_hidden as f64 / hidden as f64;
    let num_heads = match num_heads.or_else(|| standard_num_heads(hidden)) {
        Some(h) if h > 0 && hidden.is_multiple_of(h) => h,
        Some(h) => {
            return Err(mismatch(format!(
                "hidden size {hidden} is not divisible by {h} heads"
            )))
        }
        None => {
            return Err(mismatch(format!(
                "the number of attention heads cannot be inferred for hidden size {hidden} \
                 (standard sizes: 384, 768, 1024, 1152, 128, 256); pass it in the hints"
            )))
        }
    };
    Ok(Trunk {
        hidden,
        in_channels,
        patch,
        input_size: grid * patch,
        depth,
        num_heads,
        mlp_ratio,
    })
}

/// Appends the state-dict entries of one [`DitBlock`] under `prefix`.
pub(crate) fn block_shapes(v: &mut Vec<(String, Vec<usize>)>, prefix: &str, d: usize, mlp: usize) {
    for (name, out, inp) in [
        ("attn.qkv", 3 * d, d),
        ("attn.proj", d, d),
        ("mlp.fc1", mlp, d),
        ("mlp.fc2", d, mlp),
        ("adaLN_modulation.1", 6 * d, d),
    ] {
        v.push((format!("{prefix}.{name}.weight"), vec![out, inp]));
        v.push((format!("{prefix}.{name}.bias"), vec![out]));
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed embeddings and functional pieces
// ---------------------------------------------------------------------------------------------

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
fn norm_modulate<B: Backend>(
    x: Tensor<B, 3>,
    shift: Tensor<B, 2>,
    scale: Tensor<B, 2>,
) -> Tensor<B, 3> {
    kernels::layer_norm_modulate(x, shift, scale, LAYER_NORM_EPS)
}

/// Splits `[N, K·D]` into `K` chunks `[N, D]` along dim 1 (PyTorch's `chunk(K, dim=1)`).
fn chunks<B: Backend, const K: usize>(x: Tensor<B, 2>) -> [Tensor<B, 2>; K] {
    let d = x.dims()[1] / K;
    core::array::from_fn(|i| x.clone().narrow(1, i * d, d))
}

/// Replaces row `i` of `rows: [N, D]` by `value: [D]` where `mask[i]` is set.
fn substitute_rows<B: Backend>(
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

// ---------------------------------------------------------------------------------------------
// State-dict plumbing
// ---------------------------------------------------------------------------------------------

/// `prefix.name` (or `name` when the prefix is empty).
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Writes a tensor under `key` with its own shape.
pub(crate) fn export_tensor<B: Backend, const D: usize>(
    sd: &mut StateDict,
    key: String,
    t: Tensor<B, D>,
) {
    let shape = t.dims().to_vec();
    let data: Vec<f32> = t.into_data().iter::<f32>().collect();
    sd.insert(key, shape, data);
}

/// Writes a burn `Linear` as PyTorch's `prefix.weight [out, in]` and `prefix.bias [out]`.
pub(crate) fn export_linear<B: Backend>(sd: &mut StateDict, prefix: &str, l: &Linear<B>) {
    export_tensor(sd, join(prefix, "weight"), l.weight.val().transpose());
    if let Some(b) = &l.bias {
        export_tensor(sd, join(prefix, "bias"), b.val());
    }
}

/// Reads PyTorch-layout entries into parameters, checking names and shapes.
pub(crate) struct Loader<'a> {
    pub sd: &'a StateDict,
    pub kind: &'static str,
}

impl Loader<'_> {
    /// Entry `key` with the shape of `old` (same layout), as a parameter keeping `old`'s id
    /// and device.
    pub fn param<B: Backend, const D: usize>(
        &self,
        key: &str,
        old: Param<Tensor<B, D>>,
        trainable: bool,
    ) -> Result<Param<Tensor<B, D>>, CheckpointError> {
        let shape: [usize; D] = old.lazy_shape().dims();
        let entry = self.sd.expect(key, &shape, self.kind)?;
        Ok(lazy_param(
            old.id,
            entry.data.clone(),
            shape,
            &old.lazy_device(),
            trainable,
        ))
    }

    /// PyTorch `prefix.weight [out, in]`, `prefix.bias [out]` into a burn `Linear`
    /// (weight `[in, out]`), keeping the parameter ids.
    pub fn linear<B: Backend>(
        &self,
        prefix: &str,
        old: Linear<B>,
    ) -> Result<Linear<B>, CheckpointError> {
        let [d_in, d_out]: [usize; 2] = old.weight.lazy_shape().dims();
        let key = join(prefix, "weight");
        let entry = self.sd.expect(&key, &[d_out, d_in], self.kind)?;
        let mut w = vec![0f32; d_in * d_out];
        for (o, row) in entry.data.chunks_exact(d_in).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                w[i * d_out + o] = v;
            }
        }
        let weight = lazy_param(
            old.weight.id,
            w,
            [d_in, d_out],
            &old.weight.lazy_device(),
            true,
        );
        let bias = match old.bias {
            Some(b) => Some(self.param(&join(prefix, "bias"), b, true)?),
            None => None,
        };
        Ok(Linear { weight, bias })
    }
}

/// Checks `sd` has exactly the entries `expected` (optional keys may be absent): missing and
/// mis-shaped entries first (the first one found), then unknown keys (all at once).
pub(crate) fn check_entries(
    sd: &StateDict,
    expected: &[(String, Vec<usize>)],
    optional: &[&str],
    kind: &str,
) -> Result<(), CheckpointError> {
    for (key, shape) in expected {
        if optional.contains(&key.as_str()) && !sd.contains(key) {
            continue;
        }
        sd.expect(key, shape, kind)?;
    }
    let known: BTreeSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    let unexpected: Vec<String> = sd
        .keys()
        .filter(|k| !known.contains(k))
        .map(str::to_string)
        .collect();
    if unexpected.is_empty() {
        Ok(())
    } else {
        Err(CheckpointError::UnexpectedKeys { keys: unexpected })
    }
}

// ---------------------------------------------------------------------------------------------
// Modules
// ---------------------------------------------------------------------------------------------

/// Patch embedding: `Conv2d(C, D, kernel p, stride p, bias)`, then tokens in row-major order
/// (`row·w + col`): `[N, C, H, W] → [N, (H/p)·(W/p), D]`. Key: `x_embedder.proj.{weight,bias}`.
#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    /// The patch projection, weight `[D, C, p, p]`.
    pub proj: Conv2d<B>,
}

impl<B: Backend> PatchEmbed<B> {
    /// Xavier-uniform on the flattened weight `[D, C·p·p]` (fan in `C·p·p`, fan out `D`),
    /// zero bias.
    pub fn new(in_channels: usize, hidden: usize, patch: usize, device: &B::Device) -> Self {
        let mut proj = Conv2dConfig::new([in_channels, hidden], [patch, patch])
            .with_stride([patch, patch])
            .init(device);
        let fan_in = in_channels * patch * patch;
        proj.weight = XAVIER.init_with(
            [hidden, in_channels, patch, patch],
            Some(fan_in),
            Some(hidden),
            device,
        );
        proj.bias = Some(Initializer::Zeros.init([hidden], device));
        Self { proj }
    }

    /// `[N, C, H, W] → [N, T, D]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 3> {
        let y = self.proj.forward(x); // [N, D, H/p, W/p]
        let [n, d, gh, gw] = y.dims();
        y.reshape([n, d, gh * gw]).swap_dims(1, 2)
    }

    fn export(&self, sd: &mut StateDict, prefix: &str) {
        export_tensor(sd, join(prefix, "proj.weight"), self.proj.weight.val());
        if let Some(b) = &self.proj.bias {
            export_tensor(sd, join(prefix, "proj.bias"), b.val());
        }
    }

    fn import(mut self, ld: &Loader, prefix: &str) -> Result<Self, CheckpointError> {
        self.proj.weight = ld.param(&join(prefix, "proj.weight"), self.proj.weight, true)?;
        self.proj.bias = match self.proj.bias {
            Some(b) => Some(ld.param(&join(prefix, "proj.bias"), b, true)?),
            None => None,
        };
        Ok(self)
    }
}

/// Timestep embedder: `t ↦ Linear(D,D)(SiLU(Linear(256,D)([cos | sin](t·f))))`, plus the
/// learned null vector substituted per sample for the result (`t_embedder.null`, `[D]`).
/// Keys: `t_embedder.mlp.0.*` ([`Self::mlp_0`]), `t_embedder.mlp.2.*` ([`Self::mlp_2`]),
/// `t_embedder.null`.
#[derive(Module, Debug)]
pub struct TimestepEmbedder<B: Backend> {
    /// `mlp.0`: `Linear(256, D)`, weight `N(0, 0.02)`, zero bias.
    pub mlp_0: Linear<B>,
    /// `mlp.2`: `Linear(D, D)`, weight `N(0, 0.02)`, zero bias.
    pub mlp_2: Linear<B>,
    /// The null-timestep embedding `[D]`, `N(0, 0.02)` at init; `None` when the model has none.
    pub null: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> TimestepEmbedder<B> {
    /// The reference init, with a null vector when `null_timestep`.
    pub fn new(hidden: usize, null_timestep: bool, device: &B::Device) -> Self {
        Self {
            mlp_0: linear(FREQUENCY_EMBEDDING_SIZE, hidden, NORMAL_002, device),
            mlp_2: linear(hidden, hidden, NORMAL_002, device),
            null: null_timestep.then(|| NORMAL_002.init([hidden], device)),
        }
    }

    /// `[N] → [N, D]`; rows with `null_mask` set are the null vector.
    ///
    /// # Panics
    /// If a mask is given and the embedder has no null vector (checked by [`Dit::try_forward`]).
    pub fn forward(&self, t: Tensor<B, 1>, null_mask: Option<Tensor<B, 1, Bool>>) -> Tensor<B, 2> {
        let freq = timestep_embedding(t, FREQUENCY_EMBEDDING_SIZE);
        let emb = self.mlp_2.forward(silu(self.mlp_0.forward(freq)));
        match null_mask {
            None => emb,
            Some(mask) => {
                let null = self
                    .null
                    .as_ref()
                    .expect("null-t mask given to a model without a null-timestep embedding");
                substitute_rows(emb, mask, null.val())
            }
        }
    }
}

/// Label embedder: a table of `num_classes` rows plus, when trained with label dropout, the
/// null class at row `num_classes`. Key: `y_embedder.embedding_table.weight [rows, D]`.
#[derive(Module, Debug)]
pub struct LabelEmbedder<B: Backend> {
    /// The table `[rows, D]`, `N(0, 0.02)` at init.
    pub embedding_table: Param<Tensor<B, 2>>,
    /// Number of real classes; the null class (if any) is this index.
    pub num_classes: usize,
}

impl<B: Backend> LabelEmbedder<B> {
    /// A table of `num_classes` (+1 null row when `with_null`) rows, `N(0, 0.02)`.
    pub fn new(num_classes: usize, hidden: usize, with_null: bool, device: &B::Device) -> Self {
        Self {
            embedding_table: NORMAL_002
                .init([num_classes + usize::from(with_null), hidden], device),
            num_classes,
        }
    }

    /// Whether the table has the null row.
    pub fn has_null(&self) -> bool {
        self.embedding_table.lazy_shape().dims::<2>()[0] > self.num_classes
    }

    /// `[N] → [N, D]`; labels with `null_mask` set are replaced by the null class.
    /// Labels must lie in `0..num_classes` (checked by [`Dit::try_forward`]).
    pub fn forward(
        &self,
        y: Tensor<B, 1, Int>,
        null_mask: Option<Tensor<B, 1, Bool>>,
    ) -> Tensor<B, 2> {
        let y = match null_mask {
            Some(mask) => y.mask_fill(mask, self.num_classes as i64),
            None => y,
        };
        self.embedding_table.val().select(0, y)
    }
}

/// Multi-head self-attention: `qkv = Linear(D, 3D)` with features `[q | k | v]`, heads
/// contiguous inside each; `softmax(q·kᵀ·hd^−½)·v` per head ([`kernels::attention_qkv`]: a
/// fused kernel on the CPU backend, burn's `attention` op elsewhere); `proj = Linear(D, D)`.
/// Keys: `attn.qkv.*`, `attn.proj.*`.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `Linear(D, 3D)`.
    pub qkv: Linear<B>,
    /// `Linear(D, D)`.
    pub proj: Linear<B>,
    /// Number of heads.
    pub num_heads: usize,
}

impl<B: Backend> Attention<B> {
    /// `[N, L, D] → [N, L, D]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let qkv = kernels::linear_tokens(&self.qkv, x);
        kernels::linear_tokens(&self.proj, kernels::attention_qkv(qkv, self.num_heads))
    }
}

/// Transformer MLP: `Linear(D, 4D) → GELU(tanh approx.) → Linear(4D, D)`. Keys: `mlp.fc1.*`,
/// `mlp.fc2.*`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `Linear(D, mlp_hidden)`.
    pub fc1: Linear<B>,
    /// `Linear(mlp_hidden, D)`.
    pub fc2: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// `[N, L, D] → [N, L, D]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = gelu_tanh(kernels::linear_tokens(&self.fc1, x));
        kernels::linear_tokens(&self.fc2, h)
    }
}

/// GELU with the tanh approximation (PyTorch's `approximate="tanh"`, which DiT's MLP uses),
/// written as one exponential and one reciprocal:
///
/// ```text
/// ½x(1 + tanh z) = x·σ(2z) = x / (1 + e^{−2z}),   z = √(2/π)(x + 0.044715x³)
/// ```
/// Equal in exact arithmetic. The CPU backends have no fused tanh or sigmoid: burn's default
/// `sigmoid` is `exp(−log(1 + e^{−x}))`, three transcendentals and six passes over the
/// activation, and autodiff replays it in the backward pass; this form is one `exp`, one `recip`
/// and their cheap derivatives. On the tiny preset's MLP it cut the GELU forward + backward from
/// 16.5 ms to 9 ms per block call on 2 CPU cores, with gradients closer to an f64 reference
/// (1.7e-7 relative vs 1.5e-6). The exponent is clamped at 80 (e^80 ≈ 5.5e34, still finite in
/// f32) so that very negative x gives `x / huge = −0` and a finite gradient instead of
/// `∞·0 = NaN` in the backward pass; for such x the exact value is below 1e-30 anyway.
///
/// On burn-ndarray f32 this is one fused pass each way ([`kernels::gelu`]); elsewhere the plain
/// ops of [`kernels::gelu_tanh_plain`].
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    kernels::gelu_tanh(x)
}

/// DiT block with adaLN-Zero conditioning on `c: [N, D]`:
///
/// ```text
/// shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = Linear(D, 6D)(SiLU(c))
/// x += gate_msa · attn(modulate(LN(x), shift_msa, scale_msa))
/// x += gate_mlp · mlp(modulate(LN(x), shift_mlp, scale_mlp))
/// ```
/// Keys: `blocks.{i}.attn.*`, `blocks.{i}.mlp.*`, `blocks.{i}.adaLN_modulation.1.*`
/// ([`Self::ada_ln_modulation`]).
#[derive(Module, Debug)]
pub struct DitBlock<B: Backend> {
    /// Self-attention.
    pub attn: Attention<B>,
    /// MLP.
    pub mlp: Mlp<B>,
    /// `adaLN_modulation.1`: `Linear(D, 6D)`, zero at init.
    pub ada_ln_modulation: Linear<B>,
}

impl<B: Backend> DitBlock<B> {
    /// Xavier-uniform attention and MLP linears with zero bias; zero adaLN layer.
    pub fn new(hidden: usize, num_heads: usize, mlp_hidden: usize, device: &B::Device) -> Self {
        Self {
            attn: Attention {
                qkv: linear(hidden, 3 * hidden, XAVIER, device),
                proj: linear(hidden, hidden, XAVIER, device),
                num_heads,
            },
            mlp: Mlp {
                fc1: linear(hidden, mlp_hidden, XAVIER, device),
                fc2: linear(mlp_hidden, hidden, XAVIER, device),
            },
            ada_ln_modulation: linear(hidden, 6 * hidden, Initializer::Zeros, device),
        }
    }

    /// `x: [N, T, D]`, `c: [N, D]` → `[N, T, D]`.
    pub fn forward(&self, x: Tensor<B, 3>, c: Tensor<B, 2>) -> Tensor<B, 3> {
        let [shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp] =
            chunks::<B, 6>(self.ada_ln_modulation.forward(silu(c)));
        let h = self
            .attn
            .forward(norm_modulate(x.clone(), shift_msa, scale_msa));
        let x = x + gate_msa.unsqueeze_dim(1) * h;
        let h = self
            .mlp
            .forward(norm_modulate(x.clone(), shift_mlp, scale_mlp));
        x + gate_mlp.unsqueeze_dim(1) * h
    }

    pub(crate) fn export(&self, sd: &mut StateDict, prefix: &str) {
        export_linear(sd, &join(prefix, "attn.qkv"), &self.attn.qkv);
        export_linear(sd, &join(prefix, "attn.proj"), &self.attn.proj);
        export_linear(sd, &join(prefix, "mlp.fc1"), &self.mlp.fc1);
        export_linear(sd, &join(prefix, "mlp.fc2"), &self.mlp.fc2);
        export_linear(
            sd,
            &join(prefix, "adaLN_modulation.1"),
            &self.ada_ln_modulation,
        );
    }

    pub(crate) fn import(self, ld: &Loader, prefix: &str) -> Result<Self, CheckpointError> {
        Ok(Self {
            attn: Attention {
                qkv: ld.linear(&join(prefix, "attn.qkv"), self.attn.qkv)?,
                proj: ld.linear(&join(prefix, "attn.proj"), self.attn.proj)?,
                num_heads: self.attn.num_heads,
            },
            mlp: Mlp {
                fc1: ld.linear(&join(prefix, "mlp.fc1"), self.mlp.fc1)?,
                fc2: ld.linear(&join(prefix, "mlp.fc2"), self.mlp.fc2)?,
            },
            ada_ln_modulation: ld
                .linear(&join(prefix, "adaLN_modulation.1"), self.ada_ln_modulation)?,
        })
    }
}

/// Final layer: `shift, scale = Linear(D, 2D)(SiLU(c))`, then
/// `Linear(D, p²·C_out)(modulate(LN(x), shift, scale))`. Keys: `final_layer.linear.*`,
/// `final_layer.adaLN_modulation.1.*`.
#[derive(Module, Debug)]
pub struct FinalLayer<B: Backend> {
    /// `Linear(D, p²·C_out)`, zero at init.
    pub linear: Linear<B>,
    /// `adaLN_modulation.1`: `Linear(D, 2D)`, zero at init.
    pub ada_ln_modulation: Linear<B>,
}

impl<B: Backend> FinalLayer<B> {
    /// Both layers zero.
    pub fn new(hidden: usize, out_features: usize, device: &B::Device) -> Self {
        Self {
            linear: linear(hidden, out_features, Initializer::Zeros, device),
            ada_ln_modulation: linear(hidden, 2 * hidden, Initializer::Zeros, device),
        }
    }

    /// `x: [N, T, D]`, `c: [N, D]` → `[N, T, p²·C_out]`.
    pub fn forward(&self, x: Tensor<B, 3>, c: Tensor<B, 2>) -> Tensor<B, 3> {
        let [shift, scale] = chunks::<B, 2>(self.ada_ln_modulation.forward(silu(c)));
        kernels::linear_tokens(&self.linear, norm_modulate(x, shift, scale))
    }
}

/// The DiT / SiT network with a learned null-timestep embedding. Build with
/// [`DitConfig::init`]; field names mirror the checkpoint keys (REFERENCE §2).
#[derive(Module, Debug)]
pub struct Dit<B: Backend> {
    /// `x_embedder`.
    pub x_embedder: PatchEmbed<B>,
    /// `pos_embed [1, T, D]`: the fixed 2-D sin-cos table ([`sincos_pos_embed_2d`]); a
    /// parameter that is exported and loaded but never trained (no gradient).
    pub pos_embed: Param<Tensor<B, 3>>,
    /// `t_embedder`.
    pub t_embedder: TimestepEmbedder<B>,
    /// `y_embedder`; `None` for unconditional models.
    pub y_embedder: Option<LabelEmbedder<B>>,
    /// `blocks.{i}`.
    pub blocks: Vec<DitBlock<B>>,
    /// `final_layer`.
    pub final_layer: FinalLayer<B>,
    #[module(skip)]
    config: DitConfig,
}

/// What [`Dit::load_state_dict`] did beyond copying entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadReport {
    /// The checkpoint had no `t_embedder.null` (a plain DiT/SiT checkpoint): the model keeps
    /// its freshly initialised null vector, which needs fine-tuning with noise-condition
    /// dropout before NAG is meaningful (~10 epochs in the paper).
    pub null_timestep_initialised: bool,
    /// Number of entries copied from the checkpoint.
    pub loaded: usize,
}

impl<B: Backend> Dit<B> {
    /// The config the network was built with.
    pub fn config(&self) -> &DitConfig {
        &self.config
    }

    /// The device the parameters live on.
    pub fn device(&self) -> B::Device {
        self.x_embedder.proj.weight.lazy_device()
    }

    /// The network: `x: [N, C, H, W]` (H = W = `input_size`), `t: [N]` (a float in the
    /// config's [`TimeInput`] clock), `y: [N]` class labels in `0..num_classes` (ignored by
    /// unconditional models), and per-sample masks: `null_t[i]` replaces sample `i`'s timestep
    /// embedding by the null vector, `null_class[i]` its label by the null class (ignored by
    /// unconditional models). Returns `[N, C_out, H, W]`:
    ///
    /// ```text
    /// c = t_emb(t | null_t) + y_emb(y | null_class)
    /// x = patch(x) + pos;  x = block_i(x, c) for each block;  out = unpatchify(final(x, c))
    /// ```
    ///
    /// Unchecked, for use inside samplers and trainers that built their inputs; see
    /// [`Self::try_forward`] for untrusted input.
    ///
    /// # Panics
    /// On shapes that disagree with the config, or a mask the model cannot honour.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        t: Tensor<B, 1>,
        y: Tensor<B, 1, Int>,
        null_t: Option<Tensor<B, 1, Bool>>,
        null_class: Option<Tensor<B, 1, Bool>>,
    ) -> Tensor<B, 4> {
        let [_, _, h, w] = x.dims();
        let x = self.x_embedder.forward(x) + self.pos_embed.val();
        let t_emb = self.t_embedder.forward(t, null_t);
        let c = match &self.y_embedder {
            Some(y_embedder) => t_emb + y_embedder.forward(y, null_class),
            None => t_emb,
        };
        let x = self
            .blocks
            .iter()
            .fold(x, |x, block| block.forward(x, c.clone()));
        let x = self.final_layer.forward(x, c);
        self.unpatchify(x, h, w)
    }

    /// [`Self::forward`] with every input checked first: shapes against the config, masks
    /// against what the model has (null-t vector, null class row), labels in
    /// `0..num_classes`. Reading the labels copies `N` integers to the host (a device sync).
    pub fn try_forward(
        &self,
        x: Tensor<B, 4>,
        t: Tensor<B, 1>,
        y: Tensor<B, 1, Int>,
        null_t: Option<Tensor<B, 1, Bool>>,
        null_class: Option<Tensor<B, 1, Bool>>,
    ) -> Result<Tensor<B, 4>, ModelError> {
        self.check_inputs(&x, &t, &y)?;
        let n = x.dims()[0];
        for (name, mask) in [("null_t", &null_t), ("null_class", &null_class)] {
            if let Some(m) = mask {
                if m.dims() != [n] {
                    return Err(ModelError::Shape(format!(
                        "{name} mask has shape {:?}, expected [{n}]",
                        m.dims()
                    )));
                }
            }
        }
        if null_t.is_some() {
            self.check_null_t()?;
        }
        if null_class.is_some() && self.config.num_classes > 0 {
            self.check_null_class()?;
        }
        self.check_labels(&y)?;
        Ok(self.forward(x, t, y, null_t, null_class))
    }

    /// Guided output: evaluates the plan's branches (masks from
    /// [`Branch::null_t`](nag_core::guidance::Branch) / `null_class`) as ONE batch of
    /// `N · plan.len()` samples ([`Self::forward_branches`]), then `Σ_b k_b·out_b`
    /// ([`Self::combine_branches`]).
    ///
    /// Inputs are checked as in [`Self::try_forward`]; a plan needing a null class on an
    /// unconditional model (or one without a null row), a null-t branch on a model without
    /// `null_timestep`, or a reference-model branch (DoG: the sampler's two-model wrapper runs
    /// those) is an error naming the fix.
    pub fn forward_guided(
        &self,
        x: Tensor<B, 4>,
        t: Tensor<B, 1>,
        y: Tensor<B, 1, Int>,
        plan: &GuidancePlan,
    ) -> Result<Tensor<B, 4>, ModelError> {
        if plan.branches.iter().any(|b| b.reference) {
            return Err(ModelError::Unsupported(
                "the plan has a reference-model branch (Domain Guidance): evaluate it with \
                 the pre-trained model (the sampler's GuidedDit with a reference)"
                    .into(),
            ));
        }
        let outs = self.forward_branches(x, t, y, &plan.branches)?;
        self.combine_branches(plan, &outs)
    }

    /// The outputs of `branches` (their `reference` flags ignored: this model evaluates them
    /// all) for the same `(x, t, y)`, as ONE batch of `N · branches.len()` samples.
    pub fn forward_branches(
        &self,
        x: Tensor<B, 4>,
        t: Tensor<B, 1>,
        y: Tensor<B, 1, Int>,
        branches: &[nag_core::guidance::Branch],
    ) -> Result<Vec<Tensor<B, 4>>, ModelError> {
        self.check_inputs(&x, &t, &y)?;
        if branches.is_empty() {
            return Err(ModelError::InvalidInput("no branches to evaluate".into()));
        }
        if branches.iter().any(|b| b.null_class) {
            self.check_null_class()?;
        }
        if branches.iter().any(|b| b.null_t) {
            self.check_null_t()?;
        }
        self.check_labels(&y)?;
        let n = x.dims()[0];
        let k = branches.len();
        let device = x.device();
        let mask = |pick: fn(&nag_core::guidance::Branch) -> bool| {
            branches.iter().any(pick).then(|| {
                let values: Vec<bool> = branches
                    .iter()
                    .flat_map(|b| std::iter::repeat_n(pick(b), n))
                    .collect();
                Tensor::<B, 1, Bool>::from_data(TensorData::new(values, [n * k]), &device)
            })
        };
        let null_t = mask(|b| b.null_t);
        let null_class = mask(|b| b.null_class);
        let out = self.forward(
            x.repeat_dim(0, k),
            t.repeat_dim(0, k),
            y.repeat_dim(0, k),
            null_t,
            null_class,
        );
        Ok((0..k).map(|i| out.clone().narrow(0, i * n, n)).collect())
    }

    /// `Σ_b k_b·outs[b]` ([`GuidancePlan::combine`]) on the ε / velocity channels. With
    /// `learn_sigma` the combination covers the first `C` channels and the variance channels
    /// come from the (t, c) branch `outs[0]` (REFERENCE §1 **\[choice\]**); other branches may
    /// have `C` or `2C` channels (a reference model without learned σ);
    /// `plan.guided_channels` may restrict the guided channels further.
    pub fn combine_branches(
        &self,
        plan: &GuidancePlan,
        outs: &[Tensor<B, 4>],
    ) -> Result<Tensor<B, 4>, ModelError> {
        let c = self.config.in_channels;
        let eps: Vec<Tensor<B, 4>> = outs.iter().map(|o| o.clone().narrow(1, 0, c)).collect();
        let guided = plan.combine(&eps)?;
        if self.config.learn_sigma {
            let variance = outs[0].clone().narrow(1, c, c);
            Ok(Tensor::cat(vec![guided, variance], 1))
        } else {
            Ok(guided)
        }
    }

    /// `[N, T, p·p·C_out]` with features ordered `(p_row, p_col, channel)` →
    /// `[N, C_out, H, W]`.
    pub fn unpatchify(&self, x: Tensor<B, 3>, h: usize, w: usize) -> Tensor<B, 4> {
        let p = self.config.patch_size;
        let c = self.config.out_channels();
        let [n, ..] = x.dims();
        let (gh, gw) = (h / p, w / p);
        x.reshape([n, gh, gw, p, p, c])
            .permute([0, 5, 1, 3, 2, 4])
            .reshape([n, c, gh * p, gw * p])
    }

    /// The state dict with the reference key names and PyTorch layouts (Linear weights
    /// `[out, in]`), plus `t_embedder.null [D]` when the model has it.
    pub fn to_state_dict(&self) -> StateDict {
        let mut sd = StateDict::new();
        export_tensor(&mut sd, "pos_embed".into(), self.pos_embed.val());
        self.x_embedder.export(&mut sd, "x_embedder");
        export_linear(&mut sd, "t_embedder.mlp.0", &self.t_embedder.mlp_0);
        export_linear(&mut sd, "t_embedder.mlp.2", &self.t_embedder.mlp_2);
        if let Some(null) = &self.t_embedder.null {
            export_tensor(&mut sd, NULL_T_KEY.into(), null.val());
        }
        if let Some(y) = &self.y_embedder {
            export_tensor(
                &mut sd,
                "y_embedder.embedding_table.weight".into(),
                y.embedding_table.val(),
            );
        }
        for (i, block) in self.blocks.iter().enumerate() {
            block.export(&mut sd, &format!("blocks.{i}"));
        }
        export_linear(&mut sd, "final_layer.linear", &self.final_layer.linear);
        export_linear(
            &mut sd,
            "final_layer.adaLN_modulation.1",
            &self.final_layer.ada_ln_modulation,
        );
        sd
    }

    /// Replaces every parameter by the checkpoint's entry (same names and layouts as
    /// [`Self::to_state_dict`]). All entries are checked before anything is copied: a missing
    /// key is [`CheckpointError::MissingKey`], a wrong shape [`CheckpointError::ShapeMismatch`],
    /// keys the model does not have [`CheckpointError::UnexpectedKeys`]. A missing
    /// `t_embedder.null` is not an error: the fresh vector is kept and the report says so.
    /// Loaded parameters keep their ids and device and are trainable (`pos_embed` is not).
    pub fn load_state_dict(self, sd: &StateDict) -> Result<(Self, LoadReport), CheckpointError> {
        let expected = self.config.state_dict_shapes();
        check_entries(sd, &expected, &[NULL_T_KEY], KIND)?;
        let ld = Loader { sd, kind: KIND };
        let mut report = LoadReport::default();
        let null = match self.t_embedder.null {
            Some(old) if sd.contains(NULL_T_KEY) => Some(ld.param(NULL_T_KEY, old, true)?),
            Some(old) => {
                report.null_timestep_initialised = true;
                Some(old)
            }
            None => None,
        };
        let y_embedder = match self.y_embedder {
            Some(y) => Some(LabelEmbedder {
                embedding_table: ld.param(
                    "y_embedder.embedding_table.weight",
                    y.embedding_table,
                    true,
                )?,
                num_classes: y.num_classes,
            }),
            None => None,
        };
        let blocks = self
            .blocks
            .into_iter()
            .enumerate()
            .map(|(i, b)| b.import(&ld, &format!("blocks.{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let model = Self {
            x_embedder: self.x_embedder.import(&ld, "x_embedder")?,
            pos_embed: ld.param("pos_embed", self.pos_embed, false)?,
            t_embedder: TimestepEmbedder {
                mlp_0: ld.linear("t_embedder.mlp.0", self.t_embedder.mlp_0)?,
                mlp_2: ld.linear("t_embedder.mlp.2", self.t_embedder.mlp_2)?,
                null,
            },
            y_embedder,
            blocks,
            final_layer: FinalLayer {
                linear: ld.linear("final_layer.linear", self.final_layer.linear)?,
                ada_ln_modulation: ld.linear(
                    "final_layer.adaLN_modulation.1",
                    self.final_layer.ada_ln_modulation,
                )?,
            },
            config: self.config,
        };
        report.loaded = expected.iter().filter(|(k, _)| sd.contains(k)).count();
        Ok((model, report))
    }

    /// Infers the config from `sd` ([`DitConfig::infer_from_state_dict`]), builds the model
    /// on `device` and loads the entries.
    pub fn from_state_dict(
        sd: &StateDict,
        hints: &DitHints,
        device: &B::Device,
    ) -> Result<(Self, LoadReport), CheckpointError> {
        let config = DitConfig::infer_from_state_dict(sd, hints)?;
        let model = config
            .init::<B>(device)
            .map_err(|e| mismatch(e.to_string()))?;
        model.load_state_dict(sd)
    }

    fn check_inputs(
        &self,
        x: &Tensor<B, 4>,
        t: &Tensor<B, 1>,
        y: &Tensor<B, 1, Int>,
    ) -> Result<(), ModelError> {
        let cfg = &self.config;
        let [n, c, h, w] = x.dims();
        if n == 0 {
            return Err(ModelError::Shape("empty batch".into()));
        }
        if c != cfg.in_channels || h != cfg.input_size || w != cfg.input_size {
            return Err(ModelError::Shape(format!(
                "x has shape {:?}, expected [N, {}, {}, {}]",
                x.dims(),
                cfg.in_channels,
                cfg.input_size,
                cfg.input_size
            )));
        }
        if t.dims() != [n] {
            return Err(ModelError::Shape(format!(
                "t has shape {:?}, expected [{n}] (one time per sample)",
                t.dims()
            )));
        }
        if y.dims() != [n] {
            return Err(ModelError::Shape(format!(
                "y has shape {:?}, expected [{n}] (one label per sample)",
                y.dims()
            )));
        }
        Ok(())
    }

    fn check_null_t(&self) -> Result<(), ModelError> {
        if self.t_embedder.null.is_none() {
            return Err(ModelError::Unsupported(
                "the noise condition cannot be dropped: this model has no null-timestep \
                 embedding (null_timestep = false); set nag_scale = 0, or build it with \
                 null_timestep = true and fine-tune with noise-condition dropout"
                    .into(),
            ));
        }
        Ok(())
    }

    fn check_null_class(&self) -> Result<(), ModelError> {
        match &self.y_embedder {
            None => Err(ModelError::Unsupported(
                "the class cannot be dropped: the model is unconditional (num_classes = 0); \
                 set cfg_scale = 1 (no CFG)"
                    .into(),
            )),
            Some(y) if !y.has_null() => Err(ModelError::Unsupported(
                "the class cannot be dropped: the label table has no null row \
                 (class_dropout_prob = 0); set cfg_scale = 1, or train with label dropout"
                    .into(),
            )),
            Some(_) => Ok(()),
        }
    }

    fn check_labels(&self, y: &Tensor<B, 1, Int>) -> Result<(), ModelError> {
        if self.config.num_classes == 0 {
            return Ok(());
        }
        y.to_data()
            .iter::<i64>()
            .try_for_each(|v| self.config.check_label(v))
    }
}
