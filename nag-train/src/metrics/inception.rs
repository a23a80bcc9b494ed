//! FID's InceptionV3 feature network: pytorch-fid's `FIDInceptionV3`, the port of the
//! TensorFlow InceptionV3 graph of 2015-12-05.
//!
//! FID as published is the Fréchet distance ([`super::fd`]) between the 2048-d pool3 features
//! of that network for real and generated images. [`InceptionV3`] computes those features from
//! pytorch-fid's weights file:
//! - `pt_inception-2015-12-05-6726825d.pth` ([`PT_FID_WEIGHTS`]) as is (`.pth`, read by the
//!   built-in PyTorch reader) or converted to safetensors with the same keys
//!   (`Conv2d_1a_3x3.conv.weight [32, 3, 3, 3]`, …, `Mixed_7c.branch_pool.conv.weight
//!   [192, 2048, 1, 1]`, `fc.weight [1008, 2048]`; `fc.*` and `num_batches_tracked` are not
//!   used). Every key the network needs is checked (name and shape) and a missing or misshapen
//!   one is an error naming the key, the file and the expected shape.
//! - torchvision's `inception_v3_google` state dict (`fc.weight [1000, 2048]`, `AuxLogits.*`) is
//!   identified ([`identify_inception_weights`]) but refused: its blocks and weights differ from
//!   the FID graph, so its numbers would not be comparable with published FIDs.
//!
//! Pipeline ([`InceptionV3::forward`], as pytorch-fid's `InceptionV3(resize_input=True,
//! normalize_input=False)` on images already in `[−1, 1]`; pytorch-fid maps `[0, 1]` inputs to
//! `[−1, 1]` first, our images are already there):
//! 1. one channel (grayscale) is repeated to three;
//! 2. bilinear resize to 299×299 with `align_corners = False` (`F.interpolate(x, size=(299,
//!    299), mode='bilinear', align_corners=False)`, no antialiasing). burn 0.21's
//!    `interpolate` with `InterpolateMode::Bilinear` and `align_corners: false` uses the same
//!    half-pixel mapping `src = (dst + ½)·in/out − ½`, clamped to `[0, in − 1]`
//!    (burn-ndarray `ops/interpolate.rs`); PyTorch clamps below at 0 and repeats the last row /
//!    column at the top end, which is the same. (`InterpolateOptions::new` defaults to
//!    `align_corners = true`, so it is set explicitly.) Inputs that are already 299×299 are
//!    passed through, as the resize is then the identity;
//! 3. the stem `Conv2d_1a_3x3` (3→32, 3×3, stride 2), `Conv2d_2a_3x3` (32→32, 3×3),
//!    `Conv2d_2b_3x3` (32→64, 3×3, pad 1), max-pool 3×3 stride 2, `Conv2d_3b_1x1` (64→80),
//!    `Conv2d_4a_3x3` (80→192, 3×3), max-pool 3×3 stride 2;
//! 4. `Mixed_5b/5c/5d` = `FIDInceptionA` ([`InceptionA`]), `Mixed_6a` = `InceptionB`
//!    ([`InceptionB`]), `Mixed_6b/6c/6d/6e` = `FIDInceptionC` ([`InceptionC`]), `Mixed_7a` =
//!    `InceptionD` ([`InceptionD`]), `Mixed_7b` = `FIDInceptionE_1` and `Mixed_7c` =
//!    `FIDInceptionE_2` ([`InceptionE`]);
//! 5. the global average over the 8×8 positions: `[N, 2048]`.
//!
//! The FID variants differ from torchvision's blocks in their pool branches: average pools
//! use `count_include_pad=False` (the padded zeros are not counted), and `Mixed_7c`'s pool
//! branch is a 3×3 max-pool (stride 1, pad 1).
//!
//! Every `BasicConv2d` (`Conv2d(bias=False)` → `BatchNorm2d(eps=0.001)` in inference mode →
//! ReLU) is folded at load time into one convolution with bias ([`BasicConv`]): with
//! `s = γ / √(running_var + 0.001)`, the weight is `W·s` and the bias `β − running_mean·s`.
//! Convolutions run channels-last as im2col matrix products (as the feature classifier of
//! [`super::features`]; burn's direct convolution is slow on the CPU backend), pools through
//! burn's `max_pool2d` / `avg_pool2d`. Images are processed in batches of
//! [`InceptionV3::batch`] (default [`DEFAULT_BATCH`]) to bound memory.
//!
//! ## The ADM evaluator's extra outputs ([`InceptionV3::forward_adm`], [`InceptionV3::logits`])
//!
//! OpenAI's evaluator (guided-diffusion `evaluations/evaluator.py`) reads three things from the
//! TF graph `classify_image_graph_def.pb` (the same 2015-12-05 network):
//! - `pool_3:0`, the 2048-d pool features ([`InceptionV3::forward`]);
//! - `mixed_6/conv:0`, keeping channels `[..., :7]` of the 17×17 map and flattening each image
//!   in (H, W, C) order (NHWC) → 17·17·7 = [`SPATIAL_DIM`] = 2023 values, the sFID features.
//!   **Mapping to this port: `Mixed_6d.branch1x1` after its batch norm and ReLU.** Evidence:
//!   the graph names its eleven Inception blocks `mixed, mixed_1, …, mixed_10` in order, so
//!   `mixed_3` is the 35→17 reduction `Mixed_6a`, `mixed_4…mixed_7` are `Mixed_6b…Mixed_6e`
//!   and `mixed_6` is `Mixed_6d` (`FIDInceptionC(768, channels_7x7=160)`); inside a block the
//!   untowered `conv` is the 1×1 branch (768→192), the towers being `tower/conv…`,
//!   `tower_1/conv…` and the pool branch `tower_2/…`. torch-fidelity's converter of the same
//!   graph (`convert_inception_weights.py`, whose output `weights-inception-2015-12-05-
//!   6726825d.pth` is this file's weights, hash included) maps `mixed_6/conv/conv2d_params` →
//!   `Mixed_6d.branch1x1.conv` and `mixed_6/conv/batchnorm` → `Mixed_6d.branch1x1.bn`. Each
//!   `X/conv` scope of the graph holds the ops `X/conv/Conv2D`, `X/conv/batchnorm` and ends in
//!   an op named `X/conv` itself, the ReLU, so the tensor `mixed_6/conv:0` is the unit's
//!   post-ReLU output, which is what `BasicConv2d` returns. (The post-ReLU reading rests on the
//!   graph's naming pattern, not on a run of the TF graph here.) The first 7 channels of
//!   `Mixed_6d`'s concatenated output are the same values, since `branch1x1` comes first.
//! - `softmax/logits/MatMul`'s weight (2048×1008), applied **without the bias**:
//!   logits = pool_3 · `fc.weight`ᵀ with pytorch-fid's `fc.weight [1008, 2048]` (the graph's
//!   `softmax/weights` transposed), for the Inception Score.
//!
//! [`check_inception`] is the entry point for an `--inception PATH` option: without a file a
//! [`MetricsError::Config`] naming the option, with one the identified [`InceptionWeights`]
//! (only the FID weights are accepted).

use std::path::Path;

use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::{avg_pool2d, interpolate, max_pool2d};
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Slice, Tensor, TensorData};
use nag_models::checkpoint::{load_state_dict, LoadOptions};
use nag_models::state_dict::StateDict;

use super::MetricsError;

/// The file name of pytorch-fid's FID weights.
pub const PT_FID_WEIGHTS: &str = "pt_inception-2015-12-05-6726825d.pth";

/// Whether this build can compute InceptionV3 features ([`InceptionV3`]).
pub const INCEPTION_AVAILABLE: bool = true;

/// The side the images are resized to.
pub const INCEPTION_SIZE: usize = 299;

/// The feature dimension (pool3).
pub const INCEPTION_DIM: usize = 2048;

/// Images per forward pass by default.
pub const DEFAULT_BATCH: usize = 16;

/// Channels of `mixed_6/conv` (`Mixed_6d.branch1x1`) the ADM evaluator keeps for sFID.
pub const SPATIAL_CHANNELS: usize = 7;

/// Side of the `mixed_6/conv` map at 299×299 input.
pub const SPATIAL_SIDE: usize = 17;

/// The sFID feature dimension: 17·17·7 = 2023.
pub const SPATIAL_DIM: usize = SPATIAL_SIDE * SPATIAL_SIDE * SPATIAL_CHANNELS;

/// Classes of the FID graph's softmax (`fc.weight [1008, 2048]`).
pub const LOGITS_DIM: usize = 1008;

/// `BatchNorm2d` epsilon of the TF graph's `BasicConv2d`.
const BN_EPS: f64 = 0.001;

/// Which InceptionV3 weights a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InceptionWeights {
    /// pytorch-fid's FID weights (`fc.weight [1008, 2048]`).
    PytorchFid,
    /// torchvision's `inception_v3_google` (`fc.weight [1000, 2048]`).
    Torchvision,
}

/// Identifies an InceptionV3 weights file by its keys and shapes.
pub fn identify_inception_weights(path: &Path) -> Result<InceptionWeights, MetricsError> {
    Ok(read_inception_file(path)?.1)
}

/// Reads `path` and identifies its weights (one read of the file).
fn read_inception_file(path: &Path) -> Result<(StateDict, InceptionWeights), MetricsError> {
    if !path.is_file() {
        return Err(MetricsError::Input(format!(
            "--inception {}: no such file (expected {PT_FID_WEIGHTS} or a safetensors conversion of it)",
            path.display()
        )));
    }
    let (sd, _) = load_state_dict(path, &LoadOptions::default())?;
    let kind = identify_state_dict(&sd, &path.display().to_string())?;
    Ok((sd, kind))
}

/// Identifies the InceptionV3 weights of `sd`, read from `source` (named in errors).
fn identify_state_dict(sd: &StateDict, source: &str) -> Result<InceptionWeights, MetricsError> {
    let shape = |k: &str| sd.get(k).map(|t| t.shape.clone());
    if shape("Conv2d_1a_3x3.conv.weight") != Some(vec![32, 3, 3, 3])
        || shape("Mixed_7c.branch_pool.conv.weight") != Some(vec![192, 2048, 1, 1])
    {
        return Err(MetricsError::Input(format!(
            "--inception {source}: not InceptionV3 weights (no Conv2d_1a_3x3.conv.weight [32, 3, 3, 3] / Mixed_7c.branch_pool.conv.weight [192, 2048, 1, 1]); expected {PT_FID_WEIGHTS} or torchvision's inception_v3_google state dict"
        )));
    }
    match shape("fc.weight").as_deref() {
        Some([1008, 2048]) => Ok(InceptionWeights::PytorchFid),
        Some([1000, 2048]) => Ok(InceptionWeights::Torchvision),
        other => Err(MetricsError::Input(format!(
            "--inception {source}: InceptionV3-like, but fc.weight is {other:?} (expected [1008, 2048] for the FID weights or [1000, 2048] for torchvision's)"
        ))),
    }
}

/// Refuses torchvision's weights (not the FID graph).
fn require_fid_weights(kind: InceptionWeights, source: &str) -> Result<(), MetricsError> {
    match kind {
        InceptionWeights::PytorchFid => Ok(()),
        InceptionWeights::Torchvision => Err(MetricsError::Input(format!(
            "--inception {source} holds torchvision's inception_v3_google weights; FID needs \
             pytorch-fid's FID weights {PT_FID_WEIGHTS} (torchvision's network and weights \
             differ from the TF graph, so its numbers would not be comparable with published FIDs)"
        ))),
    }
}

/// The InceptionV3 FID entry point: without `weights` a [`MetricsError::Config`] naming
/// `--inception PATH`; with a file, identifies it ([`identify_inception_weights`]) and accepts
/// only pytorch-fid's FID weights. Load the network with [`InceptionV3::load`].
pub fn check_inception(weights: Option<&Path>) -> Result<InceptionWeights, MetricsError> {
    let Some(path) = weights else {
        return Err(MetricsError::Config(format!(
            "InceptionV3 FID needs the weights file: pass --inception PATH with {PT_FID_WEIGHTS} \
             (pytorch-fid's FID weights, .pth or converted to .safetensors); without it the \
             built-in FD in the feature space of the dataset's classifier is reported"
        )));
    };
    let kind = identify_inception_weights(path)?;
    require_fid_weights(kind, &path.display().to_string())?;
    Ok(kind)
}

// ---------------------------------------------------------------------------------------------
// Architecture

/// One `BasicConv2d` as the architecture names it: `<name>.conv.weight [out, in, kh, kw]` and
/// `<name>.bn.{weight, bias, running_mean, running_var} [out]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvSpec {
    /// Key prefix, e.g. `Mixed_5b.branch5x5_1`.
    pub name: String,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride (both directions).
    pub stride: usize,
    /// Zero padding `[ph, pw]`.
    pub padding: [usize; 2],
}

impl ConvSpec {
    /// The state-dict entries of this convolution and their shapes.
    pub fn keys(&self) -> Vec<(String, Vec<usize>)> {
        let [kh, kw] = self.kernel;
        let mut keys = vec![(
            format!("{}.conv.weight", self.name),
            vec![self.c_out, self.c_in, kh, kw],
        )];
        for p in ["weight", "bias", "running_mean", "running_var"] {
            keys.push((format!("{}.bn.{p}", self.name), vec![self.c_out]));
        }
        keys
    }
}

/// Makes one convolution (a loaded [`BasicConv`], or anything else built from the spec).
type Make<'a, C, E> = dyn FnMut(ConvSpec) -> Result<C, E> + 'a;

/// A `1×1` / `k×k` / `(kh, kw)` convolution spec of block `p`, branch `b`.
fn spec(p: &str, b: &str, c_in: usize, c_out: usize, kernel: [usize; 2]) -> ConvSpec {
    let padding = [kernel[0] / 2, kernel[1] / 2];
    ConvSpec {
        name: if p.is_empty() {
            b.to_string()
        } else {
            format!("{p}.{b}")
        },
        c_in,
        c_out,
        kernel,
        stride: 1,
        padding,
    }
}

/// A `k×k`, stride 2, unpadded spec (the reductions).
fn spec_s2(p: &str, b: &str, c_in: usize, c_out: usize, k: usize) -> ConvSpec {
    ConvSpec {
        stride: 2,
        padding: [0, 0],
        ..spec(p, b, c_in, c_out, [k, k])
    }
}

/// A `k×k`, stride 1, unpadded spec (the stem's valid convolutions).
fn spec_valid(p: &str, b: &str, c_in: usize, c_out: usize, k: usize) -> ConvSpec {
    ConvSpec {
        padding: [0, 0],
        ..spec(p, b, c_in, c_out, [k, k])
    }
}

/// pytorch-fid's `FIDInceptionA` (`Mixed_5b/5c/5d`): `in → 64 + 64 + 96 + pool_features`.
#[derive(Debug, Clone)]
pub struct InceptionA<C> {
    /// `branch1x1` (in→64, 1×1).
    pub branch1x1: C,
    /// `branch5x5_1` (in→48, 1×1).
    pub branch5x5_1: C,
    /// `branch5x5_2` (48→64, 5×5, pad 2).
    pub branch5x5_2: C,
    /// `branch3x3dbl_1` (in→64, 1×1).
    pub branch3x3dbl_1: C,
    /// `branch3x3dbl_2` (64→96, 3×3, pad 1).
    pub branch3x3dbl_2: C,
    /// `branch3x3dbl_3` (96→96, 3×3, pad 1).
    pub branch3x3dbl_3: C,
    /// `branch_pool` (in→pool_features, 1×1) after avg-pool 3×3 (count_include_pad=False).
    pub branch_pool: C,
}

impl<C> InceptionA<C> {
    fn new<E>(mk: &mut Make<C, E>, p: &str, c_in: usize, pool: usize) -> Result<Self, E> {
        Ok(Self {
            branch1x1: mk(spec(p, "branch1x1", c_in, 64, [1, 1]))?,
            branch5x5_1: mk(spec(p, "branch5x5_1", c_in, 48, [1, 1]))?,
            branch5x5_2: mk(spec(p, "branch5x5_2", 48, 64, [5, 5]))?,
            branch3x3dbl_1: mk(spec(p, "branch3x3dbl_1", c_in, 64, [1, 1]))?,
            branch3x3dbl_2: mk(spec(p, "branch3x3dbl_2", 64, 96, [3, 3]))?,
            branch3x3dbl_3: mk(spec(p, "branch3x3dbl_3", 96, 96, [3, 3]))?,
            branch_pool: mk(spec(p, "branch_pool", c_in, pool, [1, 1]))?,
        })
    }
}

impl<B: Backend> InceptionA<BasicConv<B>> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b5 = self.branch5x5_1.forward(x.clone());
        let b5 = self.branch5x5_2.forward(b5);
        let b3 = self.branch3x3dbl_1.forward(x.clone());
        let b3 = self.branch3x3dbl_2.forward(b3);
        let b3 = self.branch3x3dbl_3.forward(b3);
        let bp = self.branch_pool.forward(avg_pool_3x3(x));
        Tensor::cat(vec![b1, b5, b3, bp], 3)
    }
}

/// torchvision's `InceptionB` (`Mixed_6a`, a reduction 35→17): `in → 384 + 96 + in`.
#[derive(Debug, Clone)]
pub struct InceptionB<C> {
    /// `branch3x3` (in→384, 3×3, stride 2).
    pub branch3x3: C,
    /// `branch3x3dbl_1` (in→64, 1×1).
    pub branch3x3dbl_1: C,
    /// `branch3x3dbl_2` (64→96, 3×3, pad 1).
    pub branch3x3dbl_2: C,
    /// `branch3x3dbl_3` (96→96, 3×3, stride 2).
    pub branch3x3dbl_3: C,
}

impl<C> InceptionB<C> {
    fn new<E>(mk: &mut Make<C, E>, p: &str, c_in: usize) -> Result<Self, E> {
        Ok(Self {
            branch3x3: mk(spec_s2(p, "branch3x3", c_in, 384, 3))?,
            branch3x3dbl_1: mk(spec(p, "branch3x3dbl_1", c_in, 64, [1, 1]))?,
            branch3x3dbl_2: mk(spec(p, "branch3x3dbl_2", 64, 96, [3, 3]))?,
            branch3x3dbl_3: mk(spec_s2(p, "branch3x3dbl_3", 96, 96, 3))?,
        })
    }
}

impl<B: Backend> InceptionB<BasicConv<B>> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b3 = self.branch3x3.forward(x.clone());
        let bd = self.branch3x3dbl_1.forward(x.clone());
        let bd = self.branch3x3dbl_2.forward(bd);
        let bd = self.branch3x3dbl_3.forward(bd);
        let bp = max_pool_3x3(x, 2, 0);
        Tensor::cat(vec![b3, bd, bp], 3)
    }
}

/// pytorch-fid's `FIDInceptionC` (`Mixed_6b…6e`, `c7 = channels_7x7`): `in → 4·192`.
#[derive(Debug, Clone)]
pub struct InceptionC<C> {
    /// `branch1x1` (in→192, 1×1).
    pub branch1x1: C,
    /// `branch7x7_1` (in→c7, 1×1).
    pub branch7x7_1: C,
    /// `branch7x7_2` (c7→c7, 1×7, pad (0, 3)).
    pub branch7x7_2: C,
    /// `branch7x7_3` (c7→192, 7×1, pad (3, 0)).
    pub branch7x7_3: C,
    /// `branch7x7dbl_1` (in→c7, 1×1).
    pub branch7x7dbl_1: C,
    /// `branch7x7dbl_2` (c7→c7, 7×1).
    pub branch7x7dbl_2: C,
    /// `branch7x7dbl_3` (c7→c7, 1×7).
    pub branch7x7dbl_3: C,
    /// `branch7x7dbl_4` (c7→c7, 7×1).
    pub branch7x7dbl_4: C,
    /// `branch7x7dbl_5` (c7→192, 1×7).
    pub branch7x7dbl_5: C,
    /// `branch_pool` (in→192, 1×1) after avg-pool 3×3 (count_include_pad=False).
    pub branch_pool: C,
}

impl<C> InceptionC<C> {
    fn new<E>(mk: &mut Make<C, E>, p: &str, c_in: usize, c7: usize) -> Result<Self, E> {
        Ok(Self {
            branch1x1: mk(spec(p, "branch1x1", c_in, 192, [1, 1]))?,
            branch7x7_1: mk(spec(p, "branch7x7_1", c_in, c7, [1, 1]))?,
            branch7x7_2: mk(spec(p, "branch7x7_2", c7, c7, [1, 7]))?,
            branch7x7_3: mk(spec(p, "branch7x7_3", c7, 192, [7, 1]))?,
            branch7x7dbl_1: mk(spec(p, "branch7x7dbl_1", c_in, c7, [1, 1]))?,
            branch7x7dbl_2: mk(spec(p, "branch7x7dbl_2", c7, c7, [7, 1]))?,
            branch7x7dbl_3: mk(spec(p, "branch7x7dbl_3", c7, c7, [1, 7]))?,
            branch7x7dbl_4: mk(spec(p, "branch7x7dbl_4", c7, c7, [7, 1]))?,
            branch7x7dbl_5: mk(spec(p, "branch7x7dbl_5", c7, 192, [1, 7]))?,
            branch_pool: mk(spec(p, "branch_pool", c_in, 192, [1, 1]))?,
        })
    }
}

impl<B: Backend> InceptionC<BasicConv<B>> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b7 = self.branch7x7_1.forward(x.clone());
        let b7 = self.branch7x7_2.forward(b7);
        let b7 = self.branch7x7_3.forward(b7);
        let bd = self.branch7x7dbl_1.forward(x.clone());
        let bd = self.branch7x7dbl_2.forward(bd);
        let bd = self.branch7x7dbl_3.forward(bd);
        let bd = self.branch7x7dbl_4.forward(bd);
        let bd = self.branch7x7dbl_5.forward(bd);
        let bp = self.branch_pool.forward(avg_pool_3x3(x));
        Tensor::cat(vec![b1, b7, bd, bp], 3)
    }
}

/// torchvision's `InceptionD` (`Mixed_7a`, a reduction 17→8): `in → 320 + 192 + in`.
#[derive(Debug, Clone)]
pub struct InceptionD<C> {
    /// `branch3x3_1` (in→192, 1×1).
    pub branch3x3_1: C,
    /// `branch3x3_2` (192→320, 3×3, stride 2).
    pub branch3x3_2: C,
    /// `branch7x7x3_1` (in→192, 1×1).
    pub branch7x7x3_1: C,
    /// `branch7x7x3_2` (192→192, 1×7, pad (0, 3)).
    pub branch7x7x3_2: C,
    /// `branch7x7x3_3` (192→192, 7×1, pad (3, 0)).
    pub branch7x7x3_3: C,
    /// `branch7x7x3_4` (192→192, 3×3, stride 2).
    pub branch7x7x3_4: C,
}

impl<C> InceptionD<C> {
    fn new<E>(mk: &mut Make<C, E>, p: &str, c_in: usize) -> Result<Self, E> {
        Ok(Self {
            branch3x3_1: mk(spec(p, "branch3x3_1", c_in, 192, [1, 1]))?,
            branch3x3_2: mk(spec_s2(p, "branch3x3_2", 192, 320, 3))?,
            branch7x7x3_1: mk(spec(p, "branch7x7x3_1", c_in, 192, [1, 1]))?,
            branch7x7x3_2: mk(spec(p, "branch7x7x3_2", 192, 192, [1, 7]))?,
            branch7x7x3_3: mk(spec(p, "branch7x7x3_3", 192, 192, [7, 1]))?,
            branch7x7x3_4: mk(spec_s2(p, "branch7x7x3_4", 192, 192, 3))?,
        })
    }
}

impl<B: Backend> InceptionD<BasicConv<B>> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b3 = self.branch3x3_1.forward(x.clone());
        let b3 = self.branch3x3_2.forward(b3);
        let b7 = self.branch7x7x3_1.forward(x.clone());
        let b7 = self.branch7x7x3_2.forward(b7);
        let b7 = self.branch7x7x3_3.forward(b7);
        let b7 = self.branch7x7x3_4.forward(b7);
        let bp = max_pool_3x3(x, 2, 0);
        Tensor::cat(vec![b3, b7, bp], 3)
    }
}

/// The pool of an [`InceptionE`] block's `branch_pool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EPool {
    /// `FIDInceptionE_1` (`Mixed_7b`): avg-pool 3×3, stride 1, pad 1, count_include_pad=False.
    Avg,
    /// `FIDInceptionE_2` (`Mixed_7c`): max-pool 3×3, stride 1, pad 1.
    Max,
}

/// pytorch-fid's `FIDInceptionE_1` / `FIDInceptionE_2` (`Mixed_7b` / `Mixed_7c`):
/// `in → 320 + 768 + 768 + 192 = 2048`.
#[derive(Debug, Clone)]
pub struct InceptionE<C> {
    /// `branch1x1` (in→320, 1×1).
    pub branch1x1: C,
    /// `branch3x3_1` (in→384, 1×1).
    pub branch3x3_1: C,
    /// `branch3x3_2a` (384→384, 1×3, pad (0, 1)).
    pub branch3x3_2a: C,
    /// `branch3x3_2b` (384→384, 3×1, pad (1, 0)).
    pub branch3x3_2b: C,
    /// `branch3x3dbl_1` (in→448, 1×1).
    pub branch3x3dbl_1: C,
    /// `branch3x3dbl_2` (448→384, 3×3, pad 1).
    pub branch3x3dbl_2: C,
    /// `branch3x3dbl_3a` (384→384, 1×3).
    pub branch3x3dbl_3a: C,
    /// `branch3x3dbl_3b` (384→384, 3×1).
    pub branch3x3dbl_3b: C,
    /// `branch_pool` (in→192, 1×1) after the pool.
    pub branch_pool: C,
    /// Which pool precedes `branch_pool`.
    pub pool: EPool,
}

impl<C> InceptionE<C> {
    fn new<E>(mk: &mut Make<C, E>, p: &str, c_in: usize, pool: EPool) -> Result<Self, E> {
        Ok(Self {
            branch1x1: mk(spec(p, "branch1x1", c_in, 320, [1, 1]))?,
            branch3x3_1: mk(spec(p, "branch3x3_1", c_in, 384, [1, 1]))?,
            branch3x3_2a: mk(spec(p, "branch3x3_2a", 384, 384, [1, 3]))?,
            branch3x3_2b: mk(spec(p, "branch3x3_2b", 384, 384, [3, 1]))?,
            branch3x3dbl_1: mk(spec(p, "branch3x3dbl_1", c_in, 448, [1, 1]))?,
            branch3x3dbl_2: mk(spec(p, "branch3x3dbl_2", 448, 384, [3, 3]))?,
            branch3x3dbl_3a: mk(spec(p, "branch3x3dbl_3a", 384, 384, [1, 3]))?,
            branch3x3dbl_3b: mk(spec(p, "branch3x3dbl_3b", 384, 384, [3, 1]))?,
            branch_pool: mk(spec(p, "branch_pool", c_in, 192, [1, 1]))?,
            pool,
        })
    }
}

impl<B: Backend> InceptionE<BasicConv<B>> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b3 = self.branch3x3_1.forward(x.clone());
        let b3 = Tensor::cat(
            vec![
                self.branch3x3_2a.forward(b3.clone()),
                self.branch3x3_2b.forward(b3),
            ],
            3,
        );
        let bd = self.branch3x3dbl_1.forward(x.clone());
        let bd = self.branch3x3dbl_2.forward(bd);
        let bd = Tensor::cat(
            vec![
                self.branch3x3dbl_3a.forward(bd.clone()),
                self.branch3x3dbl_3b.forward(bd),
            ],
            3,
        );
        let pooled = match self.pool {
            EPool::Avg => avg_pool_3x3(x),
            EPool::Max => max_pool_3x3(x, 1, 1),
        };
        let bp = self.branch_pool.forward(pooled);
        Tensor::cat(vec![b1, b3, bd, bp], 3)
    }
}

/// The whole network over convolutions of type `C` (a [`BasicConv`] when loaded).
#[derive(Debug, Clone)]
pub struct InceptionNet<C> {
    /// `Conv2d_1a_3x3` (3→32, 3×3, stride 2).
    pub conv2d_1a_3x3: C,
    /// `Conv2d_2a_3x3` (32→32, 3×3).
    pub conv2d_2a_3x3: C,
    /// `Conv2d_2b_3x3` (32→64, 3×3, pad 1).
    pub conv2d_2b_3x3: C,
    /// `Conv2d_3b_1x1` (64→80, 1×1).
    pub conv2d_3b_1x1: C,
    /// `Conv2d_4a_3x3` (80→192, 3×3).
    pub conv2d_4a_3x3: C,
    /// `Mixed_5b` = `FIDInceptionA(192, pool_features=32)`.
    pub mixed_5b: InceptionA<C>,
    /// `Mixed_5c` = `FIDInceptionA(256, pool_features=64)`.
    pub mixed_5c: InceptionA<C>,
    /// `Mixed_5d` = `FIDInceptionA(288, pool_features=64)`.
    pub mixed_5d: InceptionA<C>,
    /// `Mixed_6a` = `InceptionB(288)`.
    pub mixed_6a: InceptionB<C>,
    /// `Mixed_6b` = `FIDInceptionC(768, channels_7x7=128)`.
    pub mixed_6b: InceptionC<C>,
    /// `Mixed_6c` = `FIDInceptionC(768, channels_7x7=160)`.
    pub mixed_6c: InceptionC<C>,
    /// `Mixed_6d` = `FIDInceptionC(768, channels_7x7=160)`.
    pub mixed_6d: InceptionC<C>,
    /// `Mixed_6e` = `FIDInceptionC(768, channels_7x7=192)`.
    pub mixed_6e: InceptionC<C>,
    /// `Mixed_7a` = `InceptionD(768)`.
    pub mixed_7a: InceptionD<C>,
    /// `Mixed_7b` = `FIDInceptionE_1(1280)`.
    pub mixed_7b: InceptionE<C>,
    /// `Mixed_7c` = `FIDInceptionE_2(2048)`.
    pub mixed_7c: InceptionE<C>,
}

impl<C> InceptionNet<C> {
    /// Builds the network, making each convolution (in the order of pytorch-fid's modules).
    pub fn build<E>(mk: &mut Make<C, E>) -> Result<Self, E> {
        Ok(Self {
            conv2d_1a_3x3: mk(spec_s2("", "Conv2d_1a_3x3", 3, 32, 3))?,
            conv2d_2a_3x3: mk(spec_valid("", "Conv2d_2a_3x3", 32, 32, 3))?,
            conv2d_2b_3x3: mk(spec("", "Conv2d_2b_3x3", 32, 64, [3, 3]))?,
            conv2d_3b_1x1: mk(spec("", "Conv2d_3b_1x1", 64, 80, [1, 1]))?,
            conv2d_4a_3x3: mk(spec_valid("", "Conv2d_4a_3x3", 80, 192, 3))?,
            mixed_5b: InceptionA::new(mk, "Mixed_5b", 192, 32)?,
            mixed_5c: InceptionA::new(mk, "Mixed_5c", 256, 64)?,
            mixed_5d: InceptionA::new(mk, "Mixed_5d", 288, 64)?,
            mixed_6a: InceptionB::new(mk, "Mixed_6a", 288)?,
            mixed_6b: InceptionC::new(mk, "Mixed_6b", 768, 128)?,
            mixed_6c: InceptionC::new(mk, "Mixed_6c", 768, 160)?,
            mixed_6d: InceptionC::new(mk, "Mixed_6d", 768, 160)?,
            mixed_6e: InceptionC::new(mk, "Mixed_6e", 768, 192)?,
            mixed_7a: InceptionD::new(mk, "Mixed_7a", 768)?,
            mixed_7b: InceptionE::new(mk, "Mixed_7b", 1280, EPool::Avg)?,
            mixed_7c: InceptionE::new(mk, "Mixed_7c", 2048, EPool::Max)?,
        })
    }
}

/// Every convolution of the network, in module order.
pub fn conv_specs() -> Vec<ConvSpec> {
    let mut specs = Vec::new();
    let mut record = |s: ConvSpec| -> Result<(), std::convert::Infallible> {
        specs.push(s);
        Ok(())
    };
    let Ok(_) = InceptionNet::<()>::build(&mut record);
    specs
}

/// Every state-dict entry the feature network reads, with its shape (`fc.*` and
/// `num_batches_tracked` are not read).
pub fn state_dict_shapes() -> Vec<(String, Vec<usize>)> {
    conv_specs().iter().flat_map(ConvSpec::keys).collect()
}

/// A random state dict with every key the network reads and `fc.weight` (logits), deterministic
/// in `seed`: convolutions uniform in `±√(6/fan_in)`, batch norms near identity. Its features are
/// meaningless; for tests of the plumbing (the real weights are not downloadable here).
pub fn random_state_dict(seed: u64) -> StateDict {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut sd = StateDict::new();
    for s in conv_specs() {
        let [kh, kw] = s.kernel;
        let a = (6.0 / (s.c_in * kh * kw) as f32).sqrt();
        let n = s.c_out * s.c_in * kh * kw;
        let w = (0..n).map(|_| rng.random_range(-a..a)).collect();
        sd.insert(
            format!("{}.conv.weight", s.name),
            vec![s.c_out, s.c_in, kh, kw],
            w,
        );
        for (p, lo, hi) in [
            ("weight", 0.8, 1.2),
            ("bias", -0.1, 0.1),
            ("running_mean", -0.1, 0.1),
            ("running_var", 0.5, 1.5),
        ] {
            let v = (0..s.c_out).map(|_| rng.random_range(lo..hi)).collect();
            sd.insert(format!("{}.bn.{p}", s.name), vec![s.c_out], v);
        }
    }
    let fc = (0..1008 * INCEPTION_DIM)
        .map(|_| rng.random_range(-0.05..0.05))
        .collect();
    sd.insert("fc.weight", vec![1008, INCEPTION_DIM], fc);
    sd
}

// ---------------------------------------------------------------------------------------------
// Layers

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
    fn load(
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
fn avg_pool_3x3<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
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
fn max_pool_3x3<B: Backend>(x: Tensor<B, 4>, stride: usize, padding: usize) -> Tensor<B, 4> {
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

// ---------------------------------------------------------------------------------------------
// The feature network

/// pytorch-fid's `FIDInceptionV3` up to the 2048-d pool features; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct InceptionV3<B: Backend> {
    net: InceptionNet<BasicConv<B>>,
    /// `fc.weight` transposed, `[2048, 1008]`, when the file has it (for [`Self::logits`]).
    fc_t: Option<Tensor<B, 2>>,
    device: B::Device,
    batch: usize,
}

impl<B: Backend> InceptionV3<B> {
    /// Loads pytorch-fid's FID weights from `path` (`.pth` or safetensors), checking every key
    /// and shape; torchvision's weights are refused.
    pub fn load(path: &Path, device: &B::Device) -> Result<Self, MetricsError> {
        let (sd, kind) = read_inception_file(path)?;
        let source = path.display().to_string();
        require_fid_weights(kind, &source)?;
        Self::from_state_dict(&sd, &source, device)
    }

    /// Builds the network from a state dict read from `source` (named in errors).
    pub fn from_state_dict(
        sd: &StateDict,
        source: &str,
        device: &B::Device,
    ) -> Result<Self, MetricsError> {
        let mut load = |s: ConvSpec| BasicConv::load(&s, sd, source, device);
        let net = InceptionNet::build(&mut load)?;
        let fc_t = match sd.get("fc.weight") {
            None => None,
            Some(t) if t.shape == [LOGITS_DIM, INCEPTION_DIM] => {
                if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
                    return Err(MetricsError::Input(format!(
                        "--inception {source}: entry 'fc.weight' has a non-finite value at index {i}"
                    )));
                }
                let w = Tensor::<B, 2>::from_data(
                    TensorData::new(t.data.clone(), [LOGITS_DIM, INCEPTION_DIM]),
                    device,
                );
                Some(w.transpose())
            }
            Some(t) => {
                return Err(MetricsError::Input(format!(
                    "--inception {source}: entry 'fc.weight' has shape {:?}, the FID network's \
                     classifier is [{LOGITS_DIM}, {INCEPTION_DIM}]",
                    t.shape
                )))
            }
        };
        Ok(Self {
            net,
            fc_t,
            device: device.clone(),
            batch: DEFAULT_BATCH,
        })
    }

    /// The device the network lives on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Whether the weights had `fc.weight` (needed by [`Self::logits`]).
    pub fn has_logits(&self) -> bool {
        self.fc_t.is_some()
    }

    /// Unbiased logits `pool · fc.weightᵀ`, `[N, 2048] → [N, 1008]`, as the ADM evaluator's
    /// Inception Score (the graph's `softmax/logits/MatMul` weight, no bias; see the
    /// [module docs](self)). Errors when the weights file had no `fc.weight`.
    pub fn logits(&self, pool: Tensor<B, 2>) -> Result<Tensor<B, 2>, MetricsError> {
        let fc_t = self.fc_t.as_ref().ok_or_else(|| {
            MetricsError::Input(format!(
                "the InceptionV3 weights have no fc.weight [{LOGITS_DIM}, {INCEPTION_DIM}]; the \
                 Inception Score needs it (it is in {PT_FID_WEIGHTS})"
            ))
        })?;
        Ok(pool.matmul(fc_t.clone()))
    }

    /// Images per forward pass.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Sets the images per forward pass (at least 1).
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// The network.
    pub fn net(&self) -> &InceptionNet<BasicConv<B>> {
        &self.net
    }

    /// Checks `[N ≥ 1, C ∈ {1, 3}, H ≥ 1, W ≥ 1]`.
    pub fn check_input(dims: [usize; 4]) -> Result<(), MetricsError> {
        let [n, c, h, w] = dims;
        if n == 0 || !(c == 1 || c == 3) || h == 0 || w == 0 {
            return Err(MetricsError::Input(format!(
                "InceptionV3 FID needs images [N ≥ 1, 1 or 3 channels, H, W] (got {dims:?})"
            )));
        }
        Ok(())
    }

    /// Pool features `[N, 2048]` of images `[N, C ∈ {1, 3}, H, W]` in `[−1, 1]`, in one pass
    /// (unchecked; see [`Self::features`] for batching and checks).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward_parts(x, false).0
    }

    /// Pool features `[N, 2048]` and the ADM evaluator's spatial sFID features `[N, 2023]`
    /// (`mixed_6/conv[..., :7]` = `Mixed_6d.branch1x1` channels 0..7, flattened in (H, W, C)
    /// order; see the [module docs](self)) of images `[N, C ∈ {1, 3}, H, W]` in `[−1, 1]`, in
    /// one pass (unchecked).
    pub fn forward_adm(&self, x: Tensor<B, 4>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let (pool, spatial) = self.forward_parts(x, true);
        (pool, spatial.expect("asked for the spatial features"))
    }

    /// The forward pass, with the `Mixed_6d` spatial features when `spatial`.
    fn forward_parts(
        &self,
        x: Tensor<B, 4>,
        spatial: bool,
    ) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
        let net = &self.net;
        let [_, c, h, w] = x.dims();
        let x = if c == 1 { x.repeat_dim(1, 3) } else { x };
        let x = if [h, w] == [INCEPTION_SIZE, INCEPTION_SIZE] {
            x
        } else {
            let opts = InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(false);
            interpolate(x, [INCEPTION_SIZE, INCEPTION_SIZE], opts)
        };
        let x = x.permute([0, 2, 3, 1]);
        // Block 0: 299 → 147.
        let x = net.conv2d_1a_3x3.forward(x);
        let x = net.conv2d_2a_3x3.forward(x);
        let x = net.conv2d_2b_3x3.forward(x);
        let x = max_pool_3x3(x, 2, 0);
        // Block 1: 147 → 71 → 35.
        let x = net.conv2d_3b_1x1.forward(x);
        let x = net.conv2d_4a_3x3.forward(x);
        let x = max_pool_3x3(x, 2, 0);
        // Block 2: 35 → 17.
        let x = net.mixed_5b.forward(x);
        let x = net.mixed_5c.forward(x);
        let x = net.mixed_5d.forward(x);
        let x = net.mixed_6a.forward(x);
        let x = net.mixed_6b.forward(x);
        let x = net.mixed_6c.forward(x);
        let x = net.mixed_6d.forward(x);
        // `Mixed_6d` concatenates `branch1x1` first: its channels 0..7 are `mixed_6/conv`'s.
        let sp = spatial.then(|| {
            let [n, hh, ww, _] = x.dims();
            x.clone()
                .narrow(3, 0, SPATIAL_CHANNELS)
                .reshape([n, hh * ww * SPATIAL_CHANNELS])
        });
        let x = net.mixed_6e.forward(x);
        // Block 3: 17 → 8, then the adaptive average pool to 1×1.
        let x = net.mixed_7a.forward(x);
        let x = net.mixed_7b.forward(x);
        let x = net.mixed_7c.forward(x);
        let [n, hh, ww, d] = x.dims();
        (x.reshape([n, hh * ww, d]).mean_dim(1).reshape([n, d]), sp)
    }

    /// Pool features `N × 2048` (row-major) of `images: [N, C ∈ {1, 3}, H, W]` in `[−1, 1]`,
    /// [`Self::batch`] images at a time.
    pub fn features(&self, images: Tensor<B, 4>) -> Result<Vec<f32>, MetricsError> {
        let dims = images.dims();
        Self::check_input(dims)?;
        let n = dims[0];
        let mut feats = Vec::with_capacity(n * INCEPTION_DIM);
        for start in (0..n).step_by(self.batch) {
            let x = images.clone().narrow(0, start, self.batch.min(n - start));
            feats.extend(self.forward(x).into_data().iter::<f32>());
        }
        if feats.iter().any(|v| !v.is_finite()) {
            return Err(MetricsError::Input(
                "InceptionV3 features are not finite (are the images finite?)".into(),
            ));
        }
        Ok(feats)
    }

    /// [`Self::features`] of row-major images `x` of `shape`.
    pub fn features_from_slice(
        &self,
        x: &[f32],
        shape: [usize; 4],
    ) -> Result<Vec<f32>, MetricsError> {
        super::check_image_slice(x, shape)?;
        Self::check_input(shape)?;
        let n = shape[0];
        let per = x.len() / n;
        let mut feats = Vec::with_capacity(n * INCEPTION_DIM);
        for start in (0..n).step_by(self.batch) {
            let m = self.batch.min(n - start);
            let part = x[start * per..(start + m) * per].to_vec();
            let t = Tensor::<B, 4>::from_data(
                TensorData::new(part, [m, shape[1], shape[2], shape[3]]),
                &self.device,
            );
            feats.extend(self.features(t)?);
        }
        Ok(feats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::fd::{frechet_distance, FeatureStats};
    use burn_ndarray::NdArray;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    type B = NdArray<f32>;

    /// A random state dict with every key (He-uniform convolutions, BN near identity,
    /// positive running variances) plus the unused `fc.*` / `num_batches_tracked`.
    fn random_state_dict(seed: u64) -> StateDict {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut sd = StateDict::new();
        for s in conv_specs() {
            let [kh, kw] = s.kernel;
            let fan_in = (s.c_in * kh * kw) as f32;
            let a = (6.0 / fan_in).sqrt();
            let n = s.c_out * s.c_in * kh * kw;
            let w = (0..n).map(|_| rng.random_range(-a..a)).collect();
            sd.insert(
                format!("{}.conv.weight", s.name),
                vec![s.c_out, s.c_in, kh, kw],
                w,
            );
            let mut bn = |p: &str, lo: f32, hi: f32| {
                let v = (0..s.c_out).map(|_| rng.random_range(lo..hi)).collect();
                sd.insert(format!("{}.bn.{p}", s.name), vec![s.c_out], v);
            };
            bn("weight", 0.8, 1.2);
            bn("bias", -0.1, 0.1);
            bn("running_mean", -0.1, 0.1);
            bn("running_var", 0.5, 1.5);
            sd.insert(
                format!("{}.bn.num_batches_tracked", s.name),
                vec![],
                vec![0.0],
            );
        }
        sd.insert("fc.weight", vec![1008, 2048], vec![0.0; 1008 * 2048]);
        sd.insert("fc.bias", vec![1008], vec![0.0; 1008]);
        sd
    }

    /// Two distinct 1-channel 16×16 images in [−1, 1].
    fn images() -> Vec<f32> {
        (0..2 * 16 * 16)
            .map(|i| {
                let (b, p) = (i / 256, i % 256);
                let (y, x) = ((p / 16) as f32, (p % 16) as f32);
                if b == 0 {
                    (x / 7.5 - 1.0).clamp(-1.0, 1.0)
                } else {
                    ((x * 0.7 + y * 0.3).sin()).clamp(-1.0, 1.0)
                }
            })
            .collect()
    }

    #[test]
    fn architecture_keys() {
        let shapes = state_dict_shapes();
        assert_eq!(conv_specs().len(), 94);
        assert_eq!(shapes.len(), 94 * 5);
        let has = |k: &str, s: &[usize]| shapes.iter().any(|(a, b)| a == k && b == s);
        assert!(has("Conv2d_1a_3x3.conv.weight", &[32, 3, 3, 3]));
        assert!(has("Mixed_5b.branch5x5_1.conv.weight", &[48, 192, 1, 1]));
        assert!(has("Mixed_6b.branch7x7_2.conv.weight", &[128, 128, 1, 7]));
        assert!(has("Mixed_7c.branch_pool.conv.weight", &[192, 2048, 1, 1]));
        assert!(has("Mixed_7b.branch3x3dbl_3b.bn.running_var", &[384]));
        // About 21.8 M parameters without fc (23.9 M with it, as torchvision's count).
        let params: usize = shapes
            .iter()
            .filter(|(k, _)| k.ends_with("conv.weight") || k.ends_with("bn.weight"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert!((21_700_000..21_900_000).contains(&params), "{params}");
    }

    #[test]
    fn features_from_a_safetensors_file() {
        let sd = random_state_dict(7);
        let dir = std::env::temp_dir().join(format!("nag-inception-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("inception.safetensors");
        nag_models::checkpoint::save_safetensors(&sd, &path, &Default::default()).unwrap();
        assert_eq!(
            check_inception(Some(&path)).unwrap(),
            InceptionWeights::PytorchFid
        );
        let device = Default::default();
        let net = InceptionV3::<B>::load(&path, &device).unwrap();
        std::fs::remove_dir_all(&dir).ok();

        let x = images();
        let f1 = net.features_from_slice(&x, [2, 1, 16, 16]).unwrap();
        assert_eq!(f1.len(), 2 * INCEPTION_DIM);
        assert!(f1.iter().all(|v| v.is_finite() && *v >= 0.0));
        assert!(f1.iter().any(|v| *v > 0.0));
        // Deterministic, and batching does not change the result.
        let f2 = net
            .clone()
            .with_batch(1)
            .features_from_slice(&x, [2, 1, 16, 16])
            .unwrap();
        let diff = f1
            .iter()
            .zip(&f2)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            diff <= 1e-5 * f1.iter().fold(1.0f32, |m, v| m.max(*v)),
            "{diff}"
        );
        // Different images, different features.
        let (a, b) = f1.split_at(INCEPTION_DIM);
        let d: f32 = a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum();
        assert!(d > 1e-3, "{d}");
        // FD of the set against itself, in all 2048 dimensions (the low-rank path: n ≪ d).
        let stats = FeatureStats::from_features(&f1, INCEPTION_DIM).unwrap();
        assert!(stats.factor.is_some());
        let fd = frechet_distance(&stats, &stats).unwrap();
        assert!(fd.abs() < 1e-6 * (1.0 + stats.trace()), "{fd}");
    }

    #[test]
    fn missing_or_misshapen_keys_are_named() {
        let device = Default::default();
        let mut sd = random_state_dict(3);
        let key = "Mixed_6c.branch7x7dbl_3.bn.running_var";
        sd.tensors.remove(key);
        let msg = InceptionV3::<B>::from_state_dict(&sd, "w.safetensors", &device)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(key) && msg.contains("w.safetensors") && msg.contains("[160]"),
            "{msg}"
        );

        let mut sd = random_state_dict(3);
        let key = "Mixed_5b.branch5x5_2.conv.weight";
        sd.insert(key, vec![64, 48, 3, 3], vec![0.0; 64 * 48 * 9]);
        let msg = InceptionV3::<B>::from_state_dict(&sd, "w.safetensors", &device)
            .unwrap_err()
            .to_string();
        assert!(msg.contains(key) && msg.contains("[64, 48, 5, 5]"), "{msg}");
    }

    #[test]
    fn never_pretends() {
        let msg = check_inception(None).unwrap_err().to_string();
        assert!(
            msg.contains("--inception PATH") && msg.contains(PT_FID_WEIGHTS),
            "{msg}"
        );
        let missing = Path::new("/nonexistent/pt_inception.pth");
        assert!(check_inception(Some(missing)).is_err());
        let mut sd = StateDict::new();
        sd.insert(
            "Conv2d_1a_3x3.conv.weight",
            vec![32, 3, 3, 3],
            vec![0.0; 864],
        );
        sd.insert(
            "Mixed_7c.branch_pool.conv.weight",
            vec![192, 2048, 1, 1],
            vec![0.0; 192 * 2048],
        );
        sd.insert("fc.weight", vec![1000, 2048], vec![0.0; 1000 * 2048]);
        let kind = identify_state_dict(&sd, "tv.pth").unwrap();
        assert_eq!(kind, InceptionWeights::Torchvision);
        let msg = require_fid_weights(kind, "tv.pth").unwrap_err().to_string();
        assert!(
            msg.contains("torchvision") && msg.contains(PT_FID_WEIGHTS),
            "{msg}"
        );
        const { assert!(INCEPTION_AVAILABLE) };
    }

    /// Parity with pytorch-fid (local only, needs files): `NAG_INCEPTION_PARITY=DIR` with
    /// `DIR/weights.safetensors` (a randomly initialised `fid_inception_v3()` state dict) and
    /// `DIR/io.safetensors` (inputs `x1, x2, x3` in [−1, 1] and pytorch-fid's
    /// `InceptionV3([3], normalize_input=False)` features `f1, f2, f3`; 1-channel inputs
    /// repeated to 3 there). Prints the largest absolute difference. When the files also hold
    /// `s1..s3` (`Mixed_6d.branch1x1[:, :7]` in NHWC order, `[N, 2023]`) and `l1..l3`
    /// (`pool · fc.weightᵀ`, `[N, 1008]`), as `nag-train/tests/fixtures/make_inception_parity.py
    /// DIR` writes them, the ADM outputs ([`InceptionV3::forward_adm`], [`InceptionV3::logits`])
    /// are checked too.
    #[test]
    #[ignore = "needs NAG_INCEPTION_PARITY=DIR with files made by PyTorch"]
    fn parity_with_pytorch_fid() {
        let Some(dir) = std::env::var_os("NAG_INCEPTION_PARITY") else {
            eprintln!("NAG_INCEPTION_PARITY not set; skipped");
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        let device = Default::default();
        let net = InceptionV3::<B>::load(&dir.join("weights.safetensors"), &device).unwrap();
        let (io, _) =
            load_state_dict(&dir.join("io.safetensors"), &LoadOptions::default()).unwrap();
        for i in 1..=3 {
            let x = io.get(&format!("x{i}")).unwrap();
            let f = io.get(&format!("f{i}")).unwrap();
            let shape: [usize; 4] = x.shape.clone().try_into().unwrap();
            let ours = net.features_from_slice(&x.data, shape).unwrap();
            let max_abs = ours
                .iter()
                .zip(&f.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            let scale = f.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            eprintln!("x{i} {shape:?}: max |rust − pytorch| = {max_abs:e} (max |feature| {scale})");
            assert!(max_abs <= 1e-4 * scale.max(1.0), "x{i}: {max_abs}");
            let (Some(sp), Some(lg)) = (io.get(&format!("s{i}")), io.get(&format!("l{i}"))) else {
                continue;
            };
            let t = Tensor::<B, 4>::from_data(TensorData::new(x.data.clone(), shape), &device);
            let (pool, spatial) = net.forward_adm(t);
            let logits = net.logits(pool).unwrap();
            for (name, ours, theirs) in [
                ("mixed_6/conv[..., :7]", spatial, sp),
                ("logits", logits, lg),
            ] {
                let ours: Vec<f32> = ours.into_data().iter::<f32>().collect();
                assert_eq!(ours.len(), theirs.data.len(), "x{i} {name}");
                let max_abs = ours
                    .iter()
                    .zip(&theirs.data)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                let scale = theirs.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                eprintln!("x{i} {name}: max |rust − pytorch| = {max_abs:e} (max |value| {scale})");
                assert!(max_abs <= 1e-4 * scale.max(1.0), "x{i} {name}: {max_abs}");
            }
        }
    }
}
