//! The model file pair `<name>.safetensors` + `<name>.json` (weights and config) that runs write
//! and read back.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{corrupt, io_err, load_state_dict, save_safetensors, write_atomic, LoadOptions};
use crate::state_dict::{CheckpointError, StateDict};

/// Metadata key under which [`save_model_files`] also stores the config JSON inside the
/// safetensors file.
pub const CONFIG_METADATA_KEY: &str = "nag_config";

/// The `(weights, config)` paths of a model file pair:
/// a directory (existing, or written with a trailing `/`) → `dir/model.safetensors` +
/// `dir/model.json`; `x.safetensors` or `x.json` → `x.safetensors` + `x.json`; any other `x` →
/// `x.safetensors` + `x.json` appended to the full name.
pub fn model_file_paths(path: &Path) -> (PathBuf, PathBuf) {
    let s = path.as_os_str().to_string_lossy();
    if path.is_dir() || s.ends_with('/') || s.ends_with(std::path::MAIN_SEPARATOR) {
        return (path.join("model.safetensors"), path.join("model.json"));
    }
    let stem: PathBuf = match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") | Some("json") => path.with_extension(""),
        _ => path.to_path_buf(),
    };
    let mut w = stem.clone().into_os_string();
    w.push(".safetensors");
    let mut c = stem.into_os_string();
    c.push(".json");
    (PathBuf::from(w), PathBuf::from(c))
}

/// Writes a model as `<name>.safetensors` (the state dict; the config is also stored in its
/// metadata under [`CONFIG_METADATA_KEY`]) and `<name>.json` (the config, as given), each
/// atomically. See [`model_file_paths`] for how `path` is resolved; a directory path ending in
/// `/` is created. Returns the two paths written.
pub fn save_model_files(
    sd: &StateDict,
    config_json: &str,
    path: &Path,
) -> Result<(PathBuf, PathBuf), CheckpointError> {
    serde_json::from_str::<serde_json::Value>(config_json).map_err(|e| {
        CheckpointError::ConfigMismatch(format!("the model config is not valid JSON: {e}"))
    })?;
    let (weights, config) = model_file_paths(path);
    if let Some(dir) = weights.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }
    }
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(CONFIG_METADATA_KEY.to_string(), config_json.to_string());
    save_safetensors(sd, &weights, &meta)?;
    let mut text = config_json.to_string();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    write_atomic(&config, |w| w.write_all(text.as_bytes())).map_err(|e| io_err(&config, e))?;
    Ok((weights, config))
}

/// Reads a model file pair written by [`save_model_files`]: the state dict and the config
/// JSON text. If the `.json` file is missing, the copy inside the safetensors metadata is used.
pub fn load_model_files(path: &Path) -> Result<(StateDict, String), CheckpointError> {
    let (weights, config) = model_file_paths(path);
    let (sd, info) = load_state_dict(&weights, &LoadOptions::default())?;
    let json = match std::fs::read_to_string(&config) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match info.metadata.get(CONFIG_METADATA_KEY) {
                Some(s) => s.clone(),
                None => return Err(io_err(&config, e)),
            }
        }
        Err(e) => return Err(io_err(&config, e)),
    };
    serde_json::from_str::<serde_json::Value>(&json)
        .map_err(|e| corrupt(&config, format!("the model config is not valid JSON: {e}")))?;
    Ok((sd, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_paths() {
        let (w, c) = model_file_paths(Path::new("runs/a/ckpt-10"));
        assert_eq!(w, PathBuf::from("runs/a/ckpt-10.safetensors"));
        assert_eq!(c, PathBuf::from("runs/a/ckpt-10.json"));
        let (w, c) = model_file_paths(Path::new("x/m.json"));
        assert_eq!(
            (w, c),
            (PathBuf::from("x/m.safetensors"), PathBuf::from("x/m.json"))
        );
        let (w, _) = model_file_paths(Path::new("out/"));
        assert_eq!(w, PathBuf::from("out/model.safetensors"));
    }
}
