//! Identifying and checking InceptionV3 weights files: pytorch-fid's FID weights are accepted,
//! torchvision's `inception_v3_google` is recognised and refused.

use std::path::Path;

use nag_models::checkpoint::{load_state_dict, LoadOptions};
use nag_models::state_dict::StateDict;

use super::PT_FID_WEIGHTS;
use crate::metrics::MetricsError;

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
pub(super) fn read_inception_file(
    path: &Path,
) -> Result<(StateDict, InceptionWeights), MetricsError> {
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
pub(super) fn identify_state_dict(
    sd: &StateDict,
    source: &str,
) -> Result<InceptionWeights, MetricsError> {
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
pub(super) fn require_fid_weights(
    kind: InceptionWeights,
    source: &str,
) -> Result<(), MetricsError> {
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
