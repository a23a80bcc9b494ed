//! FID with InceptionV3 features — **not implemented in this build**.
//!
//! FID as published (and in the paper's tables) is the Fréchet distance ([`super::fd`]) between
//! the 2048-d pool3 features of the TensorFlow InceptionV3 graph of 2015-12-05, usually through
//! pytorch-fid's port (`FIDInceptionA/C/E` blocks, 299×299 bilinear resize, inputs scaled to
//! `[−1, 1]`). That network is not implemented here, and no number is ever made up for it.
//!
//! What the `--inception PATH` option expects, so that the message is precise and a later
//! implementation has a fixed input:
//! - preferred: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (the FID weights), as is
//!   (`.pth`, read by the built-in PyTorch reader) or converted to safetensors with the same
//!   keys (`Conv2d_1a_3x3.conv.weight [32, 3, 3, 3]`, …, `Mixed_7c.branch_pool.conv.weight
//!   [192, 2048, 1, 1]`, `fc.weight [1008, 2048]`);
//! - accepted for identification: torchvision's `inception_v3_google` state dict
//!   (`fc.weight [1000, 2048]`, `AuxLogits.*`), whose features differ slightly from the FID
//!   weights (numbers would not be comparable with published FIDs).
//!
//! [`check_inception`] identifies such a file and then returns
//! [`MetricsError::NotImplemented`]; without a file it returns a [`MetricsError::Config`] that
//! names the option. Either way the caller reports the built-in FD in the feature space of the
//! dataset's own classifier ([`super::features`]) instead.

use std::path::Path;

use nag_models::checkpoint::{load_state_dict, LoadOptions};

use super::MetricsError;

/// The file name of pytorch-fid's FID weights.
pub const PT_FID_WEIGHTS: &str = "pt_inception-2015-12-05-6726825d.pth";

/// Whether this build can compute InceptionV3 features (it cannot).
pub const INCEPTION_AVAILABLE: bool = false;

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
    if !path.is_file() {
        return Err(MetricsError::Input(format!(
            "--inception {}: no such file (expected {PT_FID_WEIGHTS} or a safetensors conversion of it)",
            path.display()
        )));
    }
    let (sd, _) = load_state_dict(path, &LoadOptions::default())?;
    let shape = |k: &str| sd.get(k).map(|t| t.shape.clone());
    if shape("Conv2d_1a_3x3.conv.weight") != Some(vec![32, 3, 3, 3])
        || shape("Mixed_7c.branch_pool.conv.weight") != Some(vec![192, 2048, 1, 1])
    {
        return Err(MetricsError::Input(format!(
            "--inception {}: not InceptionV3 weights (no Conv2d_1a_3x3.conv.weight [32, 3, 3, 3] / Mixed_7c.branch_pool.conv.weight [192, 2048, 1, 1]); expected {PT_FID_WEIGHTS} or torchvision's inception_v3_google state dict",
            path.display()
        )));
    }
    match shape("fc.weight").as_deref() {
        Some([1008, 2048]) => Ok(InceptionWeights::PytorchFid),
        Some([1000, 2048]) => Ok(InceptionWeights::Torchvision),
        other => Err(MetricsError::Input(format!(
            "--inception {}: InceptionV3-like, but fc.weight is {other:?} (expected [1008, 2048] for the FID weights or [1000, 2048] for torchvision's)",
            path.display()
        ))),
    }
}

/// The InceptionV3 FID entry point: without `weights` a [`MetricsError::Config`] naming
/// `--inception PATH`; with a file, identifies it ([`identify_inception_weights`]) and returns
/// [`MetricsError::NotImplemented`] (this build has no InceptionV3 network). Never `Ok`.
pub fn check_inception(weights: Option<&Path>) -> Result<(), MetricsError> {
    const FALLBACK: &str = "the built-in FD in the feature space of the dataset's classifier \
                            (cargo xtask features train) is reported instead";
    let Some(path) = weights else {
        return Err(MetricsError::Config(format!(
            "InceptionV3 FID needs the weights file: pass --inception PATH with {PT_FID_WEIGHTS} \
             (pytorch-fid's FID weights, .pth or converted to .safetensors); {FALLBACK}"
        )));
    };
    let kind = identify_inception_weights(path)?;
    let what = match kind {
        InceptionWeights::PytorchFid => "pytorch-fid's FID InceptionV3 weights",
        InceptionWeights::Torchvision => "torchvision's inception_v3_google weights",
    };
    Err(MetricsError::NotImplemented(format!(
        "{} holds {what}, but InceptionV3 FID is not implemented in this build (the network is \
         not part of nag); no FID is computed. Run without --inception: {FALLBACK}",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_pretends() {
        let msg = check_inception(None).unwrap_err().to_string();
        assert!(
            msg.contains("--inception PATH") && msg.contains(PT_FID_WEIGHTS),
            "{msg}"
        );
        let missing = Path::new("/nonexistent/pt_inception.pth");
        assert!(check_inception(Some(missing)).is_err());
    }
}
