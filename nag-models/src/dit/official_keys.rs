//! The reference (official PyTorch) checkpoint key names ↔ the network's fields: the expected
//! entries and shapes, config inference from a state dict, export, checked loading and its report.

use std::collections::BTreeSet;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::functional::lazy_param;
use super::{
    standard_num_heads, Attention, Dit, DitBlock, DitConfig, FinalLayer, LabelEmbedder, Mlp,
    PatchEmbed, TimeInput, TimestepEmbedder, FREQUENCY_EMBEDDING_SIZE,
};
use crate::state_dict::{CheckpointError, StateDict};

/// Kind name used in checkpoint errors.
const KIND: &str = "DiT";

/// The state-dict key of the learned null-timestep vector (this project's addition).
pub const NULL_T_KEY: &str = "t_embedder.null";

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

impl DitConfig {
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

impl<B: Backend> Dit<B> {
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
            y.export(&mut sd, "y_embedder");
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
        let y_embedder = self
            .y_embedder
            .map(|y| y.import(&ld, "y_embedder"))
            .transpose()?;
        let blocks = DitBlock::import_all(self.blocks, &ld)?;
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
}

impl<B: Backend> PatchEmbed<B> {
    pub(crate) fn export(&self, sd: &mut StateDict, prefix: &str) {
        export_tensor(sd, join(prefix, "proj.weight"), self.proj.weight.val());
        if let Some(b) = &self.proj.bias {
            export_tensor(sd, join(prefix, "proj.bias"), b.val());
        }
    }

    pub(crate) fn import(mut self, ld: &Loader, prefix: &str) -> Result<Self, CheckpointError> {
        self.proj.weight = ld.param(&join(prefix, "proj.weight"), self.proj.weight, true)?;
        self.proj.bias = match self.proj.bias {
            Some(b) => Some(ld.param(&join(prefix, "proj.bias"), b, true)?),
            None => None,
        };
        Ok(self)
    }
}

impl<B: Backend> LabelEmbedder<B> {
    pub(crate) fn export(&self, sd: &mut StateDict, prefix: &str) {
        let key = join(prefix, "embedding_table.weight");
        export_tensor(sd, key, self.embedding_table.val());
    }

    pub(crate) fn import(self, ld: &Loader, prefix: &str) -> Result<Self, CheckpointError> {
        Ok(Self {
            embedding_table: ld.param(
                &join(prefix, "embedding_table.weight"),
                self.embedding_table,
                true,
            )?,
            num_classes: self.num_classes,
        })
    }
}

impl<B: Backend> DitBlock<B> {
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

    /// Every block `blocks.{i}` of a checkpoint, in order.
    pub(crate) fn import_all(blocks: Vec<Self>, ld: &Loader) -> Result<Vec<Self>, CheckpointError> {
        blocks
            .into_iter()
            .enumerate()
            .map(|(i, b)| b.import(ld, &format!("blocks.{i}")))
            .collect()
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
