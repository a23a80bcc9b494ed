//! A saved feature classifier: its files (`model.safetensors` + `model.json`) and
//! [`FeatureExtractor`], which loads them and computes features in batches.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::net::{FeatureNet, FeatureNetConfig};
use super::{CHUNK, FEATURE_MODEL_KIND};
use crate::metrics::MetricsError;

/// What `model.json` of a saved feature classifier holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureModelInfo {
    /// Always [`FEATURE_MODEL_KIND`].
    pub kind: String,
    /// The architecture.
    pub config: FeatureNetConfig,
    /// Dataset spec it was trained on.
    pub data: String,
    /// Dataset content seed.
    pub data_seed: u64,
    /// Dataset image-size option.
    pub image_size: Option<usize>,
    /// Training steps.
    pub steps: u64,
    /// Accuracy on the held-out items.
    pub held_out_accuracy: f64,
    /// Number of held-out items.
    pub held_out_n: usize,
}

/// The weights path of a feature classifier directory (`<dir>/model.safetensors`).
pub fn feature_model_path(dir: &Path) -> PathBuf {
    dir.join("model.safetensors")
}

/// Whether `dir` holds a saved feature classifier.
pub fn feature_model_exists(dir: &Path) -> bool {
    feature_model_path(dir).is_file() && dir.join("model.json").is_file()
}

/// Writes `net` and `info` to `<dir>/model.safetensors` + `<dir>/model.json` (each atomic).
pub fn save_feature_net<B: Backend>(
    net: &FeatureNet<B>,
    info: &FeatureModelInfo,
    dir: &Path,
) -> Result<(), MetricsError> {
    let json = serde_json::to_string_pretty(info)
        .map_err(|e| MetricsError::Model(format!("feature model info: {e}")))?;
    nag_models::checkpoint::save_model_files(
        &net.to_state_dict(),
        &json,
        &feature_model_path(dir),
    )?;
    Ok(())
}

/// A loaded feature classifier for computing features of image batches.
#[derive(Debug)]
pub struct FeatureExtractor<B: Backend> {
    net: FeatureNet<B>,
    info: FeatureModelInfo,
    device: B::Device,
}

impl<B: Backend> FeatureExtractor<B> {
    /// Wraps a network.
    pub fn new(net: FeatureNet<B>, info: FeatureModelInfo, device: &B::Device) -> Self {
        Self {
            net,
            info,
            device: device.clone(),
        }
    }

    /// Loads a classifier saved by [`save_feature_net`] from its directory (or its
    /// `model.safetensors`).
    pub fn load(path: &Path, device: &B::Device) -> Result<Self, MetricsError> {
        let file = if path.is_dir() {
            feature_model_path(path)
        } else {
            path.to_path_buf()
        };
        if !file.is_file() {
            return Err(MetricsError::Input(format!(
                "{}: no feature classifier here (expected model.safetensors + model.json from `cargo xtask features train`)",
                path.display()
            )));
        }
        let (sd, json) = nag_models::checkpoint::load_model_files(&file)?;
        let info: FeatureModelInfo = serde_json::from_str(&json).map_err(|e| {
            MetricsError::Model(format!(
                "{}: not a feature classifier description: {e}",
                file.with_extension("json").display()
            ))
        })?;
        if info.kind != FEATURE_MODEL_KIND {
            return Err(MetricsError::Model(format!(
                "{}: kind '{}' is not a {FEATURE_MODEL_KIND}",
                file.display(),
                info.kind
            )));
        }
        info.config.validate()?;
        let net = FeatureNet::from_state_dict(info.config.clone(), &sd, device)?;
        Ok(Self::new(net, info, device))
    }

    /// The network.
    pub fn net(&self) -> &FeatureNet<B> {
        &self.net
    }

    /// The description (dataset, held-out accuracy).
    pub fn info(&self) -> &FeatureModelInfo {
        &self.info
    }

    /// Feature dimension `D`.
    pub fn dim(&self) -> usize {
        self.net.config.feature_dim()
    }

    /// Features and predicted classes of `images: [N, C, H, W]` (computed in chunks of 256):
    /// row-major `N × D` features and `N` argmax-logit classes.
    pub fn features_and_classes(
        &self,
        images: Tensor<B, 4>,
    ) -> Result<(Vec<f32>, Vec<i64>), MetricsError> {
        let dims = images.dims();
        self.net.check_input(dims)?;
        let n = dims[0];
        let (mut feats, mut classes) = (Vec::with_capacity(n * self.dim()), Vec::with_capacity(n));
        for start in (0..n).step_by(CHUNK) {
            let x = images.clone().narrow(0, start, CHUNK.min(n - start));
            let f = self.net.features(x);
            let c = self.net.head(f.clone()).argmax(1);
            feats.extend(f.into_data().iter::<f32>());
            classes.extend(c.into_data().iter::<i64>());
        }
        if feats.iter().any(|v| !v.is_finite()) {
            return Err(MetricsError::Input(
                "features are not finite (are the images finite?)".into(),
            ));
        }
        Ok((feats, classes))
    }

    /// Features `N × D` (row-major) of `images: [N, C, H, W]`.
    pub fn features(&self, images: Tensor<B, 4>) -> Result<Vec<f32>, MetricsError> {
        Ok(self.features_and_classes(images)?.0)
    }

    /// Features of row-major images `x` of `shape`.
    pub fn features_from_slice(
        &self,
        x: &[f32],
        shape: [usize; 4],
    ) -> Result<Vec<f32>, MetricsError> {
        crate::metrics::check_image_slice(x, shape)?;
        let t = Tensor::<B, 4>::from_data(TensorData::new(x.to_vec(), shape), &self.device);
        self.features(t)
    }
}
