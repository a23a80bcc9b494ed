//! Writing and reading a trained estimator: `estimator.safetensors` + `estimator.json`.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use nag_models::estimator::NoiseEstimator;

use super::config::EstimatorMeta;
use super::{init_estimator, parse_schedule, EstimatorError, FILE_STEM};

/// Writes `estimator.safetensors` + `estimator.json` into `out_dir` atomically; returns the
/// weights path.
pub fn save_estimator<B: Backend>(
    est: &NoiseEstimator<B>,
    meta: &EstimatorMeta,
    out_dir: &Path,
) -> Result<PathBuf, EstimatorError> {
    if est.config() != &meta.model {
        return Err(EstimatorError::Config(
            "the description's model config differs from the estimator's".into(),
        ));
    }
    let json = serde_json::to_string_pretty(meta)
        .map_err(|e| EstimatorError::Config(format!("cannot serialise the description: {e}")))?;
    let path = out_dir.join(format!("{FILE_STEM}.safetensors"));
    let (weights, _) =
        nag_models::checkpoint::save_model_files(&est.to_state_dict(), &json, &path)?;
    Ok(weights)
}

/// Reads an estimator written by [`train_estimator`]: `path` is its folder (holding
/// `estimator.safetensors` + `estimator.json`) or either file.
pub fn load_estimator<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(NoiseEstimator<B>, EstimatorMeta), EstimatorError> {
    let file = if path.is_dir() {
        path.join(format!("{FILE_STEM}.safetensors"))
    } else {
        path.to_path_buf()
    };
    let (sd, json) = nag_models::checkpoint::load_model_files(&file)?;
    let (_, json_path) = nag_models::checkpoint::model_file_paths(&file);
    let meta: EstimatorMeta = serde_json::from_str(&json).map_err(|e| EstimatorError::Meta {
        path: json_path.clone(),
        reason: e.to_string(),
    })?;
    if meta.num_bins != meta.model.num_bins {
        return Err(EstimatorError::Meta {
            path: json_path,
            reason: format!(
                "num_bins {} differs from the model's {}",
                meta.num_bins, meta.model.num_bins
            ),
        });
    }
    meta.model.validate()?;
    parse_schedule(&meta.schedule)?;
    let est = init_estimator::<B>(&meta.model, 0, device)?.load_state_dict(&sd)?;
    Ok((est, meta))
}
