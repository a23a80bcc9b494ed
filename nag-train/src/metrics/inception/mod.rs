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
//!
//! Layout: [`InceptionV3`] (loading, forward pass, batched features) in `model.rs`, the
//! architecture ([`InceptionNet`] and its blocks) in `net.rs`, the folded convolution and pools
//! in `layers.rs`, identifying and checking weights files in `weights.rs`.

mod layers;
mod model;
mod net;
mod weights;

pub use layers::BasicConv;
pub use model::InceptionV3;
pub use net::{
    conv_specs, random_state_dict, state_dict_shapes, ConvSpec, EPool, InceptionA, InceptionB,
    InceptionC, InceptionD, InceptionE, InceptionNet,
};
pub use weights::{check_inception, identify_inception_weights, InceptionWeights};

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

#[cfg(test)]
mod tests;
