//! Checkpoint files ↔ [`StateDict`].
//!
//! Reading ([`load_state_dict`]) recognises the format from the file's content, not its name:
//!
//! - **torch zip** (`torch.save`, PyTorch ≥ 1.6): a zip archive with `<name>/data.pkl` and one
//!   entry per storage under `<name>/data/`;
//! - **torch legacy** (`_use_new_zipfile_serialization=False`, PyTorch < 1.6): a sequence of
//!   pickles followed by the raw storages;
//! - **safetensors**.
//!
//! Torch files are read with a small, safe pickle interpreter (the private `pickle` module) that
//! never executes anything and, like `torch.load(weights_only=True)`, refuses any pickle naming a
//! global outside a short allowlist (`pickle::allowlist::ALLOWED_GLOBALS`: torch's tensor
//! rebuild functions, storage classes and dtypes, `collections.OrderedDict`, a few builtins, and
//! the `argparse.Namespace` / `pathlib` paths of training scripts' `args`): a file naming
//! `os.system` or any other code is not a plain weights file and is an error naming that
//! global. Allowed classes that are not containers or tensors become opaque values, so a training
//! checkpoint `{"model", "ema", "opt", "args"}` reads fine as long as the entry actually used
//! holds plain tensors. Tensor views are honoured (storage offset and arbitrary strides), every
//! float or integer dtype is converted to f32 (and reported in [`SourceInfo::converted`]).
//!
//! Files come from strangers, so every size in them is checked against the file before it is
//! used: string and bytes lengths against the remaining pickle, tensor shapes, strides and
//! offsets against their storage, storages and zip entries against the file, the safetensors
//! header against the data. Nothing is allocated from a declared count; nesting is bounded (no
//! stack overflow, even for 100 000 nested lists) and the tensors read may repeat their storage
//! data at most twice over (a stride-0 view claiming 2^40 elements is refused), so memory stays
//! within a small multiple of the file. A damaged or hostile file is an error naming the file,
//! never a panic, a huge allocation or a silently zero-filled tensor.
//!
//! Writing: [`save_safetensors`] (f32, atomic) and the model file pair
//! [`save_model_files`] / [`load_model_files`] (`<name>.safetensors` + `<name>.json`).
//!
//! One file per job: `elem` (dtypes → f32), `pickle` (the interpreter), `torch_file` (torch.save
//! files), `storage` (their tensor data), `safetensors`, `model_files` (weights + config pair)
//! and `atomic` (writes); this file holds the shared types and [`load_state_dict`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::state_dict::{CheckpointError, StateDict};

mod atomic;
mod elem;
mod model_files;
mod pickle;
mod safetensors;
mod storage;
mod torch_file;

pub use atomic::write_atomic;
pub use model_files::{load_model_files, model_file_paths, save_model_files, CONFIG_METADATA_KEY};
pub use safetensors::save_safetensors;
pub(crate) use storage::check_zip_entry;

use safetensors::{load_safetensors, looks_like_safetensors, safetensors_in_dir};
use torch_file::{load_torch_legacy, load_torch_zip, LEGACY_MAGIC};

/// Options for [`load_state_dict`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Which top-level entry of a training checkpoint to read ("ema", "model", ...). `None`:
    /// a plain state dict is read as is; a training checkpoint gives "ema" if present, else
    /// "model" (then "state_dict", "model_state_dict", "net", "module").
    ///
    /// For safetensors files (which are flat) a key selects the entries named `<key>.*` and
    /// strips that prefix.
    pub key: Option<String>,
}

impl LoadOptions {
    /// Options selecting the top-level entry `key`.
    pub fn with_key(key: impl Into<String>) -> Self {
        Self {
            key: Some(key.into()),
        }
    }
}

/// The container format of a checkpoint file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// `torch.save` zip archive (PyTorch ≥ 1.6).
    TorchZip,
    /// `torch.save` legacy pickle stream (PyTorch < 1.6 or `_use_new_zipfile_serialization=False`).
    TorchLegacy,
    /// safetensors.
    Safetensors,
}

impl std::fmt::Display for CheckpointFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckpointFormat::TorchZip => "torch zip (torch.save)",
            CheckpointFormat::TorchLegacy => "torch legacy pickle (torch.save, PyTorch < 1.6)",
            CheckpointFormat::Safetensors => "safetensors",
        })
    }
}

/// Where a state dict came from and what was done to it on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// The file read.
    pub path: PathBuf,
    /// Its format.
    pub format: CheckpointFormat,
    /// The top-level entry the tensors were taken from ("ema", "model", ...); `None` for a plain
    /// state dict.
    pub key: Option<String>,
    /// The file's top-level keys when it was a container (a training checkpoint), sorted.
    pub top_level_keys: Vec<String>,
    /// A prefix removed from every key (`"module."`, left by DistributedDataParallel).
    pub stripped_prefix: Option<String>,
    /// Source dtype name ("f16", "bf16", "f64", "i64", ...) → number of tensors converted to f32.
    /// Empty when every tensor was already f32.
    pub converted: BTreeMap<String, usize>,
    /// The safetensors `__metadata__` entries (empty for torch files).
    pub metadata: BTreeMap<String, String>,
}

impl SourceInfo {
    fn new(path: &Path, format: CheckpointFormat) -> Self {
        Self {
            path: path.to_path_buf(),
            format,
            key: None,
            top_level_keys: Vec::new(),
            stripped_prefix: None,
            converted: BTreeMap::new(),
            metadata: BTreeMap::new(),
        }
    }

    /// Whether any tensor was converted from another dtype.
    pub fn was_converted(&self) -> bool {
        !self.converted.is_empty()
    }
}

impl std::fmt::Display for SourceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.format)?;
        match &self.key {
            Some(k) if !self.top_level_keys.is_empty() => write!(
                f,
                ", entry '{k}' (top-level keys: {})",
                self.top_level_keys.join(", ")
            )?,
            Some(k) => write!(f, ", entries under '{k}.'")?,
            None => write!(f, ", plain state dict")?,
        }
        if let Some(p) = &self.stripped_prefix {
            write!(f, ", prefix '{p}' stripped")?;
        }
        if self.converted.is_empty() {
            write!(f, ", all tensors f32")?;
        } else {
            let parts: Vec<String> = self
                .converted
                .iter()
                .map(|(d, n)| format!("{n} {d}"))
                .collect();
            write!(f, ", converted to f32: {} tensors", parts.join(" + "))?;
        }
        Ok(())
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn io_err(path: &Path, source: io::Error) -> CheckpointError {
    CheckpointError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads a checkpoint of any supported format into a state dict.
///
/// The format is recognised from the content. `.pt`/`.pth`/`.bin` torch files may be plain
/// state dicts or training checkpoints (see [`LoadOptions::key`]). A directory reads its
/// `model.safetensors`. Non-f32 tensors are converted to f32, a `module.` prefix present on
/// every key is removed, and [`SourceInfo`] says what was done.
///
/// Errors: a missing or unreadable file is [`CheckpointError::Io`]; anything wrong with the
/// content (unknown format, truncation, bad sizes, an unknown key) is
/// [`CheckpointError::Corrupt`]; both name the file.
pub fn load_state_dict(
    path: &Path,
    opts: &LoadOptions,
) -> Result<(StateDict, SourceInfo), CheckpointError> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if meta.is_dir() {
        let file = safetensors_in_dir(path)?;
        return load_state_dict(&file, opts);
    }
    let file_len = meta.len();
    let mut head = [0u8; 512];
    let n = {
        let mut f = File::open(path).map_err(|e| io_err(path, e))?;
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(path, e)),
            }
        }
        n
    };
    let head = &head[..n];
    let is_st_name = path.extension().is_some_and(|e| e == "safetensors");
    let (mut sd, mut info) = if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        load_torch_zip(path, opts)?
    } else if head.starts_with(&LEGACY_MAGIC) {
        let buf = std::fs::read(path).map_err(|e| io_err(path, e))?;
        load_torch_legacy(path, &buf, opts)?
    } else if looks_like_safetensors(head, file_len) || (is_st_name && head.len() >= 8) {
        load_safetensors(path, file_len, opts)?
    } else if head.is_empty() {
        return Err(corrupt(path, "the file is empty"));
    } else if head.len() > 262 && &head[257..262] == b"ustar" {
        return Err(corrupt(
            path,
            "a tar-format torch checkpoint (PyTorch ≤ 0.1.10); re-save it with a current torch",
        ));
    } else if head[0] == 0x80 {
        return Err(corrupt(
            path,
            "a bare pickle, not written by torch.save (no tensor storage); unsupported",
        ));
    } else {
        return Err(corrupt(
            path,
            format!(
                "unrecognised format (starts with {:02x?}); expected a torch.save file \
                 (.pt/.pth/.bin) or safetensors",
                &head[..head.len().min(8)]
            ),
        ));
    };
    if sd.is_empty() {
        return Err(corrupt(path, "the checkpoint holds no tensors"));
    }
    const DDP: &str = "module.";
    if sd.keys().all(|k| k.starts_with(DDP) && k.len() > DDP.len()) {
        sd.tensors = std::mem::take(&mut sd.tensors)
            .into_iter()
            .map(|(k, v)| (k[DDP.len()..].to_string(), v))
            .collect();
        info.stripped_prefix = Some(DDP.to_string());
    }
    Ok((sd, info))
}
