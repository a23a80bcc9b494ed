//! A framework-neutral state dict: parameter name → (shape, f32 values), with PyTorch's key names
//! and layouts (Linear weights `[out, in]`, conv weights `[out, in, kh, kw]`).
//!
//! Models convert to and from it (`to_state_dict` / `load_state_dict`); the file formats
//! (`.pt` from `torch.save`, `.safetensors`) read and write it. Keeping the two apart means a
//! new format never touches model code and a new model never touches format code.

use std::collections::BTreeMap;

/// Errors from reading, writing or applying checkpoints. Each names the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A key the model needs is absent.
    #[error("checkpoint has no entry '{key}' (the model needs it); is this a {expected_kind} checkpoint?")]
    MissingKey {
        /// The missing key.
        key: String,
        /// What kind of model was being loaded.
        expected_kind: String,
    },
    /// A tensor has the wrong shape.
    #[error("checkpoint entry '{key}' has shape {found:?} but the model expects {expected:?}")]
    ShapeMismatch {
        /// The key.
        key: String,
        /// Shape the model expects.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// Keys the model does not know (reported all at once).
    #[error("checkpoint has {} entries the model does not use, e.g. {:?}", .keys.len(), .keys.iter().take(5).collect::<Vec<_>>())]
    UnexpectedKeys {
        /// The unknown keys.
        keys: Vec<String>,
    },
    /// The config cannot be inferred or does not match.
    #[error("checkpoint does not match the model config: {0}")]
    ConfigMismatch(String),
    /// The file is not a readable checkpoint.
    #[error("cannot read checkpoint '{path}': {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// I/O error on a named file.
    #[error("{path}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// One parameter: row-major f32 values and their shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamTensor {
    /// Shape, PyTorch layout.
    pub shape: Vec<usize>,
    /// Row-major values; `data.len() == shape.iter().product()`.
    pub data: Vec<f32>,
}

/// Parameter name → tensor, ordered by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict {
    /// The entries.
    pub tensors: BTreeMap<String, ParamTensor>,
}

impl StateDict {
    /// An empty state dict.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts (or replaces) an entry. Panics if `data.len()` is not the product of `shape`
    /// (a programming error, never a user input error).
    pub fn insert(&mut self, key: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "StateDict::insert: shape/data length disagree"
        );
        self.tensors.insert(key.into(), ParamTensor { shape, data });
    }

    /// The entry for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&ParamTensor> {
        self.tensors.get(key)
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// The keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total number of scalars.
    pub fn num_params(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).sum()
    }

    /// The entry for `key`, checked against `expected` shape.
    pub fn expect(
        &self,
        key: &str,
        expected: &[usize],
        expected_kind: &str,
    ) -> Result<&ParamTensor, CheckpointError> {
        let t = self.get(key).ok_or_else(|| CheckpointError::MissingKey {
            key: key.to_string(),
            expected_kind: expected_kind.to_string(),
        })?;
        if t.shape != expected {
            return Err(CheckpointError::ShapeMismatch {
                key: key.to_string(),
                expected: expected.to_vec(),
                found: t.shape.clone(),
            });
        }
        Ok(t)
    }
}
