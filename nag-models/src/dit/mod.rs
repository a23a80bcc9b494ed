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
//! Checkpoints convert to and from [`StateDict`](crate::StateDict) with the reference key names
//! and PyTorch layouts ([`Dit::to_state_dict`], [`Dit::load_state_dict`],
//! [`DitConfig::infer_from_state_dict`]).
//!
//! Files: this one is the network (its layers and forward passes); `config` builds it
//! (presets, validation, init), `functional` holds its fixed embeddings and stateless pieces,
//! and `official_keys` maps it to and from the reference checkpoint key names.

use burn::module::{Initializer, Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use nag_core::guidance::GuidancePlan;

use crate::kernels;

mod config;
mod functional;
mod official_keys;

pub use config::{standard_num_heads, DitConfig, TimeInput};
pub use functional::{layer_norm, modulate, sincos_pos_embed_2d, timestep_embedding};
pub use official_keys::{DitHints, LoadReport, NULL_T_KEY};

pub(crate) use functional::{fixed_param, linear, NORMAL_002, XAVIER};
pub(crate) use official_keys::{
    block_shapes, check_entries, export_linear, export_tensor, infer_trunk, mismatch, Loader,
};

use functional::{chunks, norm_modulate, substitute_rows};

/// Epsilon of every LayerNorm in the network (no affine parameters), as in the reference.
pub const LAYER_NORM_EPS: f64 = 1e-6;

/// Number of sinusoidal frequencies fed to the timestep MLP (`256 = 2 × 128`).
pub const FREQUENCY_EMBEDDING_SIZE: usize = 256;

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
