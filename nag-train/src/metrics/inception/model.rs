//! [`InceptionV3`]: the loaded FID network, its forward pass (pool, sFID spatial features,
//! logits) and batched feature extraction.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Tensor, TensorData};
use nag_models::state_dict::StateDict;

use super::layers::{max_pool_3x3, BasicConv};
use super::net::{ConvSpec, InceptionNet};
use super::weights::{read_inception_file, require_fid_weights};
use super::{
    DEFAULT_BATCH, INCEPTION_DIM, INCEPTION_SIZE, LOGITS_DIM, PT_FID_WEIGHTS, SPATIAL_CHANNELS,
};
use crate::metrics::MetricsError;

/// pytorch-fid's `FIDInceptionV3` up to the 2048-d pool features; see the [module docs](super).
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
    /// [module docs](super)). Errors when the weights file had no `fc.weight`.
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
    /// order; see the [module docs](super)) of images `[N, C ∈ {1, 3}, H, W]` in `[−1, 1]`, in
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
        crate::metrics::check_image_slice(x, shape)?;
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
