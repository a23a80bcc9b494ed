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
//! global outside a short allowlist (`pickle::ALLOWED_GLOBALS`: torch's tensor rebuild functions,
//! storage classes and dtypes, `collections.OrderedDict`, a few builtins, and the
//! `argparse.Namespace` / `pathlib` paths of training scripts' `args`): a file naming
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

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::state_dict::{CheckpointError, StateDict};

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

// ---------------------------------------------------------------------------------------------
// Atomic writes

/// Writes `path` atomically: `write` fills `<path>.tmp-<pid>` in the same directory, which is
/// then flushed, fsynced and renamed over `path`. On failure the temporary file is removed and
/// `path` is untouched.
pub fn write_atomic<F>(path: &Path, write: F) -> io::Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> io::Result<()>,
{
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        // Persist the rename itself (best effort: not every platform can open a directory).
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

// ---------------------------------------------------------------------------------------------
// Element types and decoding

/// Element type of stored data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Elem {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::F64 | Elem::I64 | Elem::U64 => 8,
            Elem::F32 | Elem::I32 | Elem::U32 => 4,
            Elem::F16 | Elem::BF16 | Elem::I16 | Elem::U16 => 2,
            Elem::I8 | Elem::U8 | Elem::Bool => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Elem::F64 => "f64",
            Elem::F32 => "f32",
            Elem::F16 => "f16",
            Elem::BF16 => "bf16",
            Elem::I64 => "i64",
            Elem::I32 => "i32",
            Elem::I16 => "i16",
            Elem::I8 => "i8",
            Elem::U8 => "u8",
            Elem::U16 => "u16",
            Elem::U32 => "u32",
            Elem::U64 => "u64",
            Elem::Bool => "bool",
        }
    }

    /// From a torch storage class name (`FloatStorage`, ...).
    fn from_torch_storage(name: &str) -> Option<Elem> {
        Some(match name {
            "FloatStorage" => Elem::F32,
            "DoubleStorage" => Elem::F64,
            "HalfStorage" => Elem::F16,
            "BFloat16Storage" => Elem::BF16,
            "LongStorage" => Elem::I64,
            "IntStorage" => Elem::I32,
            "ShortStorage" => Elem::I16,
            "CharStorage" => Elem::I8,
            "ByteStorage" | "UntypedStorage" => Elem::U8,
            "BoolStorage" => Elem::Bool,
            _ => return None,
        })
    }

    /// From a torch dtype name (`float32`, `uint16`, ...), as in `_rebuild_tensor_v3`.
    fn from_torch_dtype(name: &str) -> Option<Elem> {
        Some(match name {
            "float32" | "float" => Elem::F32,
            "float64" | "double" => Elem::F64,
            "float16" | "half" => Elem::F16,
            "bfloat16" => Elem::BF16,
            "int64" | "long" => Elem::I64,
            "int32" | "int" => Elem::I32,
            "int16" | "short" => Elem::I16,
            "int8" => Elem::I8,
            "uint8" => Elem::U8,
            "uint16" => Elem::U16,
            "uint32" => Elem::U32,
            "uint64" => Elem::U64,
            "bool" => Elem::Bool,
            _ => return None,
        })
    }
}

/// Element size of a torch storage class, including the ones we cannot convert (needed to
/// walk the raw section of a legacy file).
fn torch_storage_elem_size(name: &str) -> Option<usize> {
    if let Some(e) = Elem::from_torch_storage(name) {
        return Some(e.size());
    }
    Some(match name {
        "ComplexDoubleStorage" => 16,
        "ComplexFloatStorage" => 8,
        "ComplexHalfStorage" => 4,
        "QInt32Storage" => 4,
        "QInt8Storage" | "QUInt8Storage" | "QUInt4x2Storage" | "QUInt2x4Storage" => 1,
        _ => return None,
    })
}

fn decode_one(bytes: &[u8], elem: Elem, i: usize) -> f32 {
    let s = elem.size();
    let b = &bytes[i * s..(i + 1) * s];
    match elem {
        Elem::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        Elem::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
        Elem::F16 => half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        Elem::BF16 => f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16),
        Elem::I64 => i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
        Elem::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
        Elem::I16 => i16::from_le_bytes([b[0], b[1]]) as f32,
        Elem::I8 => b[0] as i8 as f32,
        Elem::U8 => b[0] as f32,
        Elem::U16 => u16::from_le_bytes([b[0], b[1]]) as f32,
        Elem::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
        Elem::U64 => u64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
        Elem::Bool => {
            if b[0] != 0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

/// Decodes `count` elements starting at element `start`; the caller checked the bounds.
fn decode_range(bytes: &[u8], elem: Elem, start: usize, count: usize) -> Vec<f32> {
    let s = elem.size();
    let b = &bytes[start * s..(start + count) * s];
    match elem {
        Elem::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Elem::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        Elem::BF16 => b
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect(),
        _ => (0..count).map(|i| decode_one(b, elem, i)).collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// The pickle interpreter

/// A safe subset of Python's unpickler, enough for `torch.save` files.
///
/// Nothing is ever imported or called: `GLOBAL`s are names, checked against
/// [`ALLOWED_GLOBALS`] (any other is an error, as in `torch.load(weights_only=True)`), and
/// `REDUCE`/`NEWOBJ`/`BUILD` produce values only for the handful of callables torch uses for
/// tensors and ordered dicts; every other allowed class becomes an opaque [`Value::Object`].
/// Containers are shared (`Rc`), so memo references see later mutations, as in Python.
///
/// Hostile input: lengths are checked against the remaining input before anything is copied,
/// the memo is a map (a huge index costs nothing), the number of opcodes is bounded
/// ([`MAX_OPS`]), and values are dropped iteratively, so arbitrarily deep nesting cannot overflow
/// the stack.
mod pickle {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    use super::{torch_storage_elem_size, Elem};

    /// The globals a plain weights file may name, as (module, names, why they are needed): any
    /// other GLOBAL / STACK_GLOBAL / INST is refused, as `torch.load(weights_only=True)` does.
    pub const ALLOWED_GLOBALS: &[(&str, &[&str], &str)] = &[
        (
            "collections",
            &["OrderedDict"],
            "the dict type of every state dict",
        ),
        (
            "torch._utils",
            &[
                "_rebuild_tensor",
                "_rebuild_tensor_v2",
                "_rebuild_tensor_v3",
                "_rebuild_parameter",
                "_rebuild_parameter_with_state",
                "_rebuild_buffer",
            ],
            "rebuild tensors and parameters from their storages",
        ),
        (
            "torch._utils",
            &[
                "_rebuild_sparse_tensor",
                "_rebuild_sparse_csr_tensor",
                "_rebuild_qtensor",
                "_rebuild_meta_tensor_no_storage",
                "_rebuild_nested_tensor",
                "_rebuild_wrapper_subclass",
                "_rebuild_device_tensor_from_numpy",
                "_rebuild_device_tensor_from_cpu_tensor",
            ],
            "other tensor kinds torch writes (refused later, when used, with a clear message)",
        ),
        (
            "torch._tensor",
            &["_rebuild_from_type_v2", "_rebuild_from_type"],
            "tensor subclasses (a Parameter saved whole)",
        ),
        (
            "torch.nn.parameter",
            &["Parameter"],
            "the class named by _rebuild_from_type_v2",
        ),
        (
            "torch",
            &[
                "FloatStorage",
                "DoubleStorage",
                "HalfStorage",
                "BFloat16Storage",
                "LongStorage",
                "IntStorage",
                "ShortStorage",
                "CharStorage",
                "ByteStorage",
                "BoolStorage",
                "ComplexFloatStorage",
                "ComplexDoubleStorage",
                "ComplexHalfStorage",
                "QInt32Storage",
                "QInt8Storage",
                "QUInt8Storage",
                "QUInt4x2Storage",
                "QUInt2x4Storage",
                "UntypedStorage",
                "TypedStorage",
            ],
            "storage classes named in torch's persistent ids",
        ),
        (
            "torch.storage",
            &["UntypedStorage", "TypedStorage"],
            "the same storage classes under their defining module",
        ),
        (
            "torch",
            &[
                "float32",
                "float",
                "float64",
                "double",
                "float16",
                "half",
                "bfloat16",
                "int64",
                "long",
                "int32",
                "int",
                "int16",
                "short",
                "int8",
                "uint8",
                "uint16",
                "uint32",
                "uint64",
                "bool",
                "complex32",
                "complex64",
                "complex128",
                "cfloat",
                "cdouble",
                "chalf",
                "float8_e4m3fn",
                "float8_e5m2",
                "float8_e4m3fnuz",
                "float8_e5m2fnuz",
                "qint8",
                "quint8",
                "qint32",
                "quint4x2",
                "quint2x4",
            ],
            "dtypes, as given to _rebuild_tensor_v3",
        ),
        (
            "torch",
            &["Tensor", "Size", "device"],
            "values torch pickles around tensors",
        ),
        (
            "torch.serialization",
            &["_get_layout"],
            "tensor layouts of sparse tensors",
        ),
        (
            "builtins",
            &["set", "frozenset", "dict", "bytearray", "complex"],
            "plain values pickled by reduction (protocol 2 spells the module __builtin__)",
        ),
        ("_codecs", &["encode"], "bytes objects at protocol 2"),
        (
            "argparse",
            &["Namespace"],
            "the 'args' entry of DiT/SiT training checkpoints (kept opaque, never built)",
        ),
        (
            "pathlib",
            &[
                "Path",
                "PurePath",
                "PosixPath",
                "PurePosixPath",
                "WindowsPath",
                "PureWindowsPath",
            ],
            "paths inside training 'args' (kept opaque, never built)",
        ),
    ];

    /// The most opcodes one pickle may run (a weights file's pickle runs a few dozen per
    /// tensor); bounds the memory a crafted pickle can make the interpreter hold.
    pub const MAX_OPS: usize = 1 << 24;

    /// How deep `_rebuild_from_type_v2` may nest (torch writes one level).
    const MAX_CALL_DEPTH: usize = 8;

    /// `(module, name)` if the global is allowed (Python 2's `__builtin__` read as `builtins`),
    /// else the error naming it.
    pub fn allowed_global(module: &str, name: &str, at: usize) -> Result<(String, String), String> {
        let module = if module == "__builtin__" {
            "builtins"
        } else {
            module
        };
        if ALLOWED_GLOBALS
            .iter()
            .any(|(m, names, _)| *m == module && names.contains(&name))
        {
            return Ok((module.to_string(), name.to_string()));
        }
        let mut full = format!("{module}.{name}").escape_debug().to_string();
        if full.len() > 200 {
            let cut = (0..=200)
                .rev()
                .find(|&i| full.is_char_boundary(i))
                .unwrap_or(0);
            full.truncate(cut);
            full.push_str("...");
        }
        Err(format!(
            "the pickle names the global `{full}` (offset {at}), which is refused: this is not a \
             plain weights file. A weights file needs only tensors, containers and torch's \
             tensor classes; a pickle naming other code (such as os.system) runs it when loaded \
             with torch.load(weights_only=False). If you trust the file's source, load it in \
             Python and re-save just the weights (torch.save(state_dict, path) or \
             safetensors.torch.save_file)"
        ))
    }

    /// A storage named by a persistent id.
    #[derive(Debug)]
    pub struct Storage {
        /// Storage key: the entry `data/<key>` of a zip file, or the legacy root key.
        pub key: String,
        /// The storage class name (`FloatStorage`, ...).
        pub class: String,
        /// Its element type, if convertible.
        pub elem: Option<Elem>,
        /// Element size in bytes, if known.
        pub elem_size: Option<usize>,
        /// Number of elements the persistent id declares.
        pub numel: Option<usize>,
        /// Offset (elements) of a legacy storage view into its root storage.
        pub view_offset: usize,
    }

    /// A tensor: a strided view of a storage.
    #[derive(Debug)]
    pub struct TensorRef {
        pub storage: Rc<Storage>,
        /// Element type of the tensor (the storage's, or the dtype given to `_rebuild_tensor_v3`).
        pub elem: Option<Elem>,
        pub dtype_name: String,
        pub offset: usize,
        pub shape: Vec<usize>,
        pub stride: Vec<usize>,
    }

    /// A dictionary key.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    pub enum Key {
        Str(String),
        Int(i64),
        Other(String),
    }

    impl Key {
        pub fn text(&self) -> String {
            match self {
                Key::Str(s) => s.clone(),
                Key::Int(i) => i.to_string(),
                Key::Other(s) => s.clone(),
            }
        }
    }

    /// An insertion-ordered dict.
    #[derive(Debug, Default)]
    pub struct Dict {
        pub entries: Vec<(Key, Value)>,
        index: HashMap<Key, usize>,
    }

    impl Dict {
        pub fn insert(&mut self, k: Key, v: Value) {
            if let Some(&i) = self.index.get(&k) {
                self.entries[i].1 = v;
            } else {
                self.index.insert(k.clone(), self.entries.len());
                self.entries.push((k, v));
            }
        }

        pub fn get(&self, k: &str) -> Option<&Value> {
            self.index
                .get(&Key::Str(k.to_string()))
                .map(|&i| &self.entries[i].1)
        }
    }

    /// An opaque instance of a class we do not interpret.
    #[derive(Debug)]
    pub struct Object {
        pub class: String,
    }

    #[derive(Debug, Clone)]
    pub enum Value {
        None,
        Bool(bool),
        Int(i64),
        BigInt,
        Float(f64),
        Str(Rc<str>),
        Bytes,
        Tuple(Rc<Vec<Value>>),
        List(Rc<RefCell<Vec<Value>>>),
        Dict(Rc<RefCell<Dict>>),
        Global(Rc<(String, String)>),
        Object(Rc<Object>),
        Storage(Rc<Storage>),
        Tensor(Rc<TensorRef>),
        /// Something tensor-like that could not be understood; the reason is reported if it is
        /// ever needed.
        Bad(Rc<str>),
    }

    impl Drop for Value {
        /// Dismantles uniquely owned containers with an explicit work list: the default drop
        /// recurses once per nesting level, so a pickle of 100 000 nested lists (200 kB) would
        /// overflow the stack.
        fn drop(&mut self) {
            let mut pending = Vec::new();
            self.take_children(&mut pending);
            while let Some(mut v) = pending.pop() {
                v.take_children(&mut pending);
            }
        }
    }

    impl Value {
        /// Moves the children of a container this value alone owns into `out`.
        fn take_children(&mut self, out: &mut Vec<Value>) {
            match self {
                Value::Tuple(t) => {
                    if let Some(items) = Rc::get_mut(t) {
                        out.append(items);
                    }
                }
                Value::List(l) => {
                    if let Some(items) = Rc::get_mut(l) {
                        out.append(items.get_mut());
                    }
                }
                Value::Dict(d) => {
                    if let Some(d) = Rc::get_mut(d) {
                        let d = d.get_mut();
                        d.index.clear();
                        out.extend(d.entries.drain(..).map(|(_, v)| v));
                    }
                }
                _ => {}
            }
        }

        pub fn type_name(&self) -> String {
            match self {
                Value::None => "None".into(),
                Value::Bool(_) => "bool".into(),
                Value::Int(_) | Value::BigInt => "int".into(),
                Value::Float(_) => "float".into(),
                Value::Str(_) => "str".into(),
                Value::Bytes => "bytes".into(),
                Value::Tuple(_) => "tuple".into(),
                Value::List(_) => "list".into(),
                Value::Dict(_) => "dict".into(),
                Value::Global(g) => format!("class {}.{}", g.0, g.1),
                Value::Object(o) => format!("instance of {}", o.class),
                Value::Storage(_) => "storage".into(),
                Value::Tensor(_) => "tensor".into(),
                Value::Bad(_) => "tensor (unreadable)".into(),
            }
        }

        fn as_usize(&self) -> Option<usize> {
            match self {
                Value::Int(i) if *i >= 0 => Some(*i as usize),
                _ => None,
            }
        }

        fn as_usize_tuple(&self) -> Option<Vec<usize>> {
            match self {
                Value::Tuple(t) => t.iter().map(Value::as_usize).collect(),
                Value::List(l) => l.borrow().iter().map(Value::as_usize).collect(),
                _ => None,
            }
        }

        fn key(&self) -> Key {
            match self {
                Value::Str(s) => Key::Str(s.to_string()),
                Value::Int(i) => Key::Int(*i),
                Value::Bool(b) => Key::Int(*b as i64),
                Value::Float(f) => Key::Other(f.to_string()),
                other => Key::Other(format!("<{}>", other.type_name())),
            }
        }
    }

    /// The result of reading one pickle.
    pub struct Loaded {
        pub value: Value,
        /// Bytes consumed, up to and including STOP.
        pub consumed: usize,
        /// Every storage met in a persistent id, by key.
        pub storages: HashMap<String, Rc<Storage>>,
    }

    struct Machine<'a> {
        data: &'a [u8],
        pos: usize,
        stack: Vec<Value>,
        marks: Vec<usize>,
        memo: HashMap<u64, Value>,
        storages: HashMap<String, Rc<Storage>>,
    }

    type R<T> = Result<T, String>;

    /// Reads one pickle from the start of `data`.
    pub fn load(data: &[u8]) -> Result<Loaded, String> {
        let mut m = Machine {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            storages: HashMap::new(),
        };
        let value = m.run()?;
        Ok(Loaded {
            value,
            consumed: m.pos,
            storages: m.storages,
        })
    }

    fn tensor_bad(reason: impl Into<String>) -> Value {
        Value::Bad(Rc::from(reason.into().as_str()))
    }

    impl<'a> Machine<'a> {
        fn take(&mut self, n: usize) -> R<&'a [u8]> {
            let end = self
                .pos
                .checked_add(n)
                .filter(|&e| e <= self.data.len())
                .ok_or_else(|| {
                    format!(
                        "pickle ends early (needs {n} bytes at offset {}, has {})",
                        self.pos,
                        self.data.len() - self.pos
                    )
                })?;
            let s = &self.data[self.pos..end];
            self.pos = end;
            Ok(s)
        }

        fn u8(&mut self) -> R<u8> {
            Ok(self.take(1)?[0])
        }

        fn u16(&mut self) -> R<u16> {
            let b = self.take(2)?;
            Ok(u16::from_le_bytes([b[0], b[1]]))
        }

        fn u32(&mut self) -> R<u32> {
            let b = self.take(4)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }

        fn u64(&mut self) -> R<u64> {
            let b = self.take(8)?;
            Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
        }

        fn line(&mut self) -> R<&'a [u8]> {
            let rest = &self.data[self.pos..];
            let n = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or_else(|| format!("pickle ends inside a text line at offset {}", self.pos))?;
            let l = &rest[..n];
            self.pos += n + 1;
            Ok(l.strip_suffix(b"\r").unwrap_or(l))
        }

        fn line_str(&mut self) -> R<String> {
            let l = self.line()?;
            String::from_utf8(l.to_vec())
                .map_err(|_| format!("non-UTF-8 text before offset {}", self.pos))
        }

        fn pop(&mut self) -> R<Value> {
            let floor = self.marks.last().copied().unwrap_or(0);
            if self.stack.len() <= floor {
                return Err(format!("pickle stack underflow at offset {}", self.pos));
            }
            Ok(self.stack.pop().expect("checked"))
        }

        fn top(&self) -> R<&Value> {
            self.stack
                .last()
                .ok_or_else(|| format!("pickle stack empty at offset {}", self.pos))
        }

        fn pop_mark(&mut self) -> R<Vec<Value>> {
            let m = self
                .marks
                .pop()
                .ok_or_else(|| format!("pickle MARK missing at offset {}", self.pos))?;
            if m > self.stack.len() {
                return Err(format!(
                    "pickle MARK beyond the stack at offset {}",
                    self.pos
                ));
            }
            Ok(self.stack.split_off(m))
        }

        fn memo_get(&self, i: u64) -> R<Value> {
            self.memo
                .get(&i)
                .cloned()
                .ok_or_else(|| format!("pickle memo entry {i} missing at offset {}", self.pos))
        }

        fn memo_put(&mut self, i: u64) -> R<()> {
            let v = self.top()?.clone();
            self.memo.insert(i, v);
            Ok(())
        }

        fn push_str(&mut self, b: &[u8]) -> R<()> {
            let s = std::str::from_utf8(b)
                .map_err(|_| format!("invalid UTF-8 string before offset {}", self.pos))?;
            self.stack.push(Value::Str(Rc::from(s)));
            Ok(())
        }

        fn long_le(b: &[u8]) -> Value {
            if b.is_empty() {
                return Value::Int(0);
            }
            if b.len() > 8 {
                return Value::BigInt;
            }
            let neg = b[b.len() - 1] & 0x80 != 0;
            let mut a = if neg { [0xffu8; 8] } else { [0u8; 8] };
            a[..b.len()].copy_from_slice(b);
            Value::Int(i64::from_le_bytes(a))
        }

        fn set_items(&mut self, target: &Value, items: Vec<Value>) -> R<()> {
            if !items.len().is_multiple_of(2) {
                return Err(format!("odd number of dict items at offset {}", self.pos));
            }
            if let Value::Dict(d) = target {
                let mut d = d.borrow_mut();
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.insert(k.key(), v);
                }
            }
            // Items set on an opaque object (a dict subclass we do not know) are dropped.
            Ok(())
        }

        fn run(&mut self) -> R<Value> {
            for _ in 0..MAX_OPS {
                let at = self.pos;
                let op = self.u8()?;
                match op {
                    0x80 => {
                        // PROTO
                        let v = self.u8()?;
                        if v > 5 {
                            return Err(format!("unsupported pickle protocol {v}"));
                        }
                    }
                    0x95 => {
                        // FRAME: framing is only a hint for buffered readers.
                        self.take(8)?;
                    }
                    b'.' => {
                        // STOP
                        let v = self.pop()?;
                        return Ok(v);
                    }
                    b'(' => self.marks.push(self.stack.len()),
                    b'0' => {
                        self.pop()?;
                    }
                    b'1' => {
                        self.pop_mark()?;
                    }
                    b'2' => {
                        let v = self.top()?.clone();
                        self.stack.push(v);
                    }
                    b'N' => self.stack.push(Value::None),
                    0x88 => self.stack.push(Value::Bool(true)),
                    0x89 => self.stack.push(Value::Bool(false)),
                    b'I' => {
                        let l = self.line_str()?;
                        let v = match l.as_str() {
                            "01" => Value::Bool(true),
                            "00" => Value::Bool(false),
                            s => Value::Int(
                                s.parse()
                                    .map_err(|_| format!("bad INT '{s}' at offset {at}"))?,
                            ),
                        };
                        self.stack.push(v);
                    }
                    b'J' => {
                        let v = self.u32()? as i32;
                        self.stack.push(Value::Int(v as i64));
                    }
                    b'K' => {
                        let v = self.u8()?;
                        self.stack.push(Value::Int(v as i64));
                    }
                    b'M' => {
                        let v = self.u16()?;
                        self.stack.push(Value::Int(v as i64));
                    }
                    b'L' => {
                        let l = self.line_str()?;
                        let s = l.trim_end_matches('L');
                        self.stack
                            .push(s.parse().map(Value::Int).unwrap_or(Value::BigInt));
                    }
                    0x8a => {
                        let n = self.u8()? as usize;
                        let b = self.take(n)?;
                        self.stack.push(Self::long_le(b));
                    }
                    0x8b => {
                        let n = self.u32()? as usize;
                        let b = self.take(n)?;
                        self.stack.push(Self::long_le(b));
                    }
                    b'F' => {
                        let l = self.line_str()?;
                        let f = l
                            .trim()
                            .parse()
                            .map_err(|_| format!("bad FLOAT '{l}' at offset {at}"))?;
                        self.stack.push(Value::Float(f));
                    }
                    b'G' => {
                        let b = self.take(8)?;
                        let f = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                        self.stack.push(Value::Float(f));
                    }
                    b'X' => {
                        let n = self.u32()? as usize;
                        let b = self.take(n)?;
                        self.push_str(b)?;
                    }
                    0x8c => {
                        let n = self.u8()? as usize;
                        let b = self.take(n)?;
                        self.push_str(b)?;
                    }
                    0x8d => {
                        let n = usize::try_from(self.u64()?).unwrap_or(usize::MAX);
                        let b = self.take(n)?;
                        self.push_str(b)?;
                    }
                    b'T' | b'U' => {
                        // BINSTRING / SHORT_BINSTRING: Python 2 str, read as Latin-1.
                        let n = if op == b'T' {
                            self.u32()? as usize
                        } else {
                            self.u8()? as usize
                        };
                        let b = self.take(n)?;
                        let s: String = b.iter().map(|&c| c as char).collect();
                        self.stack.push(Value::Str(Rc::from(s.as_str())));
                    }
                    b'S' => {
                        // STRING: a quoted repr; escapes are kept verbatim.
                        let l = self.line_str()?;
                        let s = l.trim();
                        let s = if s.len() >= 2
                            && (s.starts_with('\'') || s.starts_with('"'))
                            && s.ends_with(&s[..1])
                        {
                            &s[1..s.len() - 1]
                        } else {
                            s
                        };
                        self.stack.push(Value::Str(Rc::from(s)));
                    }
                    b'V' => {
                        let l = self.line()?;
                        let s = String::from_utf8_lossy(l).into_owned();
                        self.stack.push(Value::Str(Rc::from(s.as_str())));
                    }
                    b'B' | b'C' | 0x8e | 0x96 => {
                        let n = match op {
                            b'B' => self.u32()? as usize,
                            b'C' => self.u8()? as usize,
                            _ => usize::try_from(self.u64()?).unwrap_or(usize::MAX),
                        };
                        self.take(n)?;
                        self.stack.push(Value::Bytes);
                    }
                    b']' => self.stack.push(Value::List(Rc::default())),
                    b'l' => {
                        let items = self.pop_mark()?;
                        self.stack.push(Value::List(Rc::new(items.into())));
                    }
                    b'a' => {
                        let v = self.pop()?;
                        if let Value::List(l) = self.top()? {
                            l.borrow_mut().push(v);
                        }
                    }
                    b'e' => {
                        let items = self.pop_mark()?;
                        if let Value::List(l) = self.top()? {
                            l.borrow_mut().extend(items);
                        }
                    }
                    b')' => self.stack.push(Value::Tuple(Rc::new(Vec::new()))),
                    b't' => {
                        let items = self.pop_mark()?;
                        self.stack.push(Value::Tuple(Rc::new(items)));
                    }
                    0x85..=0x87 => {
                        let n = (op - 0x84) as usize;
                        let floor = self.marks.last().copied().unwrap_or(0);
                        if self.stack.len() < floor + n {
                            return Err(format!("pickle stack underflow at offset {at}"));
                        }
                        let items = self.stack.split_off(self.stack.len() - n);
                        self.stack.push(Value::Tuple(Rc::new(items)));
                    }
                    b'}' => self.stack.push(Value::Dict(Rc::default())),
                    b'd' => {
                        let items = self.pop_mark()?;
                        let d = Value::Dict(Rc::default());
                        self.set_items(&d, items)?;
                        self.stack.push(d);
                    }
                    b's' => {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        let target = self.top()?.clone();
                        self.set_items(&target, vec![k, v])?;
                    }
                    b'u' => {
                        let items = self.pop_mark()?;
                        let target = self.top()?.clone();
                        self.set_items(&target, items)?;
                    }
                    0x8f => self.stack.push(Value::List(Rc::default())), // EMPTY_SET
                    0x90 => {
                        // ADDITEMS
                        let items = self.pop_mark()?;
                        if let Value::List(l) = self.top()? {
                            l.borrow_mut().extend(items);
                        }
                    }
                    0x91 => {
                        // FROZENSET
                        let items = self.pop_mark()?;
                        self.stack.push(Value::List(Rc::new(items.into())));
                    }
                    b'c' => {
                        let module = self.line_str()?;
                        let name = self.line_str()?;
                        let g = allowed_global(&module, &name, at)?;
                        self.stack.push(Value::Global(Rc::new(g)));
                    }
                    0x93 => {
                        // STACK_GLOBAL
                        let name = self.pop()?;
                        let module = self.pop()?;
                        match (&module, &name) {
                            (Value::Str(m), Value::Str(n)) => {
                                let g = allowed_global(m, n, at)?;
                                self.stack.push(Value::Global(Rc::new(g)));
                            }
                            _ => return Err(format!("STACK_GLOBAL without names at offset {at}")),
                        }
                    }
                    b'i' => {
                        // INST module\nname\n with args on the stack after MARK.
                        let module = self.line_str()?;
                        let name = self.line_str()?;
                        let g = allowed_global(&module, &name, at)?;
                        let args = self.pop_mark()?;
                        let cls = Value::Global(Rc::new(g));
                        let v = self.call(cls, Value::Tuple(Rc::new(args)), 0);
                        self.stack.push(v);
                    }
                    b'o' => {
                        // OBJ: MARK cls args... OBJ
                        let mut items = self.pop_mark()?;
                        if items.is_empty() {
                            return Err(format!("OBJ without a class at offset {at}"));
                        }
                        let cls = items.remove(0);
                        let v = self.call(cls, Value::Tuple(Rc::new(items)), 0);
                        self.stack.push(v);
                    }
                    b'R' | 0x81 => {
                        // REDUCE / NEWOBJ
                        let args = self.pop()?;
                        let f = self.pop()?;
                        let v = self.call(f, args, 0);
                        self.stack.push(v);
                    }
                    0x92 => {
                        // NEWOBJ_EX
                        let _kwargs = self.pop()?;
                        let args = self.pop()?;
                        let f = self.pop()?;
                        let v = self.call(f, args, 0);
                        self.stack.push(v);
                    }
                    b'b' => {
                        // BUILD: set state on an instance. Instances are opaque and an
                        // OrderedDict's state is its attributes, not items: nothing to do.
                        self.pop()?;
                        self.top()?;
                    }
                    b'Q' => {
                        let pid = self.pop()?;
                        let v = self.persistent_load(pid);
                        self.stack.push(v);
                    }
                    b'P' => {
                        let pid = self.line_str()?;
                        self.stack.push(Value::Object(Rc::new(Object {
                            class: format!("persistent id {pid}"),
                        })));
                    }
                    b'p' => {
                        let l = self.line_str()?;
                        let i = l
                            .parse()
                            .map_err(|_| format!("bad PUT index at offset {at}"))?;
                        self.memo_put(i)?;
                    }
                    b'q' => {
                        let i = self.u8()? as u64;
                        self.memo_put(i)?;
                    }
                    b'r' => {
                        let i = self.u32()? as u64;
                        self.memo_put(i)?;
                    }
                    0x94 => {
                        let i = self.memo.len() as u64;
                        self.memo_put(i)?;
                    }
                    b'g' => {
                        let l = self.line_str()?;
                        let i = l
                            .parse()
                            .map_err(|_| format!("bad GET index at offset {at}"))?;
                        let v = self.memo_get(i)?;
                        self.stack.push(v);
                    }
                    b'h' => {
                        let i = self.u8()? as u64;
                        let v = self.memo_get(i)?;
                        self.stack.push(v);
                    }
                    b'j' => {
                        let i = self.u32()? as u64;
                        let v = self.memo_get(i)?;
                        self.stack.push(v);
                    }
                    0x82..=0x84 => {
                        return Err(format!(
                            "pickle uses the copyreg extension registry (opcode 0x{op:02x} at \
                             offset {at}), which torch never writes"
                        ))
                    }
                    0x97 | 0x98 => {
                        return Err(format!(
                            "pickle uses out-of-band buffers (opcode 0x{op:02x} at offset {at})"
                        ))
                    }
                    _ => {
                        return Err(format!(
                            "invalid pickle opcode 0x{op:02x} at offset {at} (not a torch file, \
                             or corrupt)"
                        ))
                    }
                }
            }
            Err(format!(
                "the pickle runs more than {MAX_OPS} opcodes (a weights file's runs a few dozen \
                 per tensor): not a weights file"
            ))
        }

        /// `pid` from a BINPERSID: torch's `('storage', cls, key, location, numel[, view])`.
        fn persistent_load(&mut self, pid: Value) -> Value {
            let Value::Tuple(t) = &pid else {
                return Value::Object(Rc::new(Object {
                    class: format!("persistent id ({})", pid.type_name()),
                }));
            };
            let is_storage = matches!(t.first(), Some(Value::Str(s)) if &**s == "storage");
            if !is_storage || t.len() < 3 {
                return Value::Object(Rc::new(Object {
                    class: "persistent object".into(),
                }));
            }
            let class = match &t[1] {
                Value::Global(g) => g.1.clone(),
                Value::Str(s) => s.to_string(),
                other => format!("<{}>", other.type_name()),
            };
            let key = match &t[2] {
                Value::Str(s) => s.to_string(),
                Value::Int(i) => i.to_string(),
                other => return tensor_bad(format!("storage key is a {}", other.type_name())),
            };
            let numel = t.get(4).and_then(Value::as_usize);
            let view_offset = match t.get(5) {
                Some(Value::Tuple(v)) if v.len() >= 2 => v[1].as_usize().unwrap_or(0),
                _ => 0,
            };
            let root = self
                .storages
                .entry(key.clone())
                .or_insert_with(|| {
                    Rc::new(Storage {
                        key: key.clone(),
                        class: class.clone(),
                        elem: Elem::from_torch_storage(&class),
                        elem_size: torch_storage_elem_size(&class),
                        numel,
                        view_offset: 0,
                    })
                })
                .clone();
            if view_offset == 0 {
                Value::Storage(root)
            } else {
                Value::Storage(Rc::new(Storage {
                    key: root.key.clone(),
                    class: root.class.clone(),
                    elem: root.elem,
                    elem_size: root.elem_size,
                    numel: root.numel,
                    view_offset,
                }))
            }
        }

        /// Applies a callable from REDUCE / NEWOBJ / INST / OBJ; `depth` counts nested
        /// `_rebuild_from_type_v2` applications.
        fn call(&mut self, f: Value, args: Value, depth: usize) -> Value {
            let Value::Global(g) = &f else {
                return Value::Object(Rc::new(Object {
                    class: format!("result of calling a {}", f.type_name()),
                }));
            };
            let (module, name) = (g.0.as_str(), g.1.as_str());
            let argv: Vec<Value> = match &args {
                Value::Tuple(t) => t.to_vec(),
                Value::List(l) => l.borrow().clone(),
                _ => Vec::new(),
            };
            match (module, name) {
                ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                    rebuild_tensor(&argv, None)
                }
                ("torch._utils", "_rebuild_tensor_v3") => {
                    let dtype = match argv.get(6) {
                        Some(Value::Global(g)) => g.1.clone(),
                        Some(Value::Str(s)) => s.to_string(),
                        _ => return tensor_bad("_rebuild_tensor_v3 without a dtype"),
                    };
                    rebuild_tensor(&argv, Some(dtype))
                }
                ("torch._utils", "_rebuild_parameter")
                | ("torch._utils", "_rebuild_parameter_with_state")
                | ("torch.nn.parameter", "Parameter")
                | ("torch._utils", "_rebuild_buffer") => argv
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| tensor_bad("parameter without data")),
                ("torch._tensor", "_rebuild_from_type_v2")
                | ("torch._tensor", "_rebuild_from_type") => {
                    // (func, new_type, args, state): apply func to args.
                    match (argv.first(), argv.get(2)) {
                        _ if depth >= MAX_CALL_DEPTH => {
                            tensor_bad("_rebuild_from_type_v2 nests too deeply")
                        }
                        (Some(func), Some(inner)) => {
                            self.call(func.clone(), inner.clone(), depth + 1)
                        }
                        _ => tensor_bad("_rebuild_from_type_v2 with too few arguments"),
                    }
                }
                ("collections", "OrderedDict") | ("builtins", "dict") => {
                    let d = Value::Dict(Rc::default());
                    if let Some(Value::List(items)) = argv.first() {
                        if let Value::Dict(dd) = &d {
                            let mut dd = dd.borrow_mut();
                            for item in items.borrow().iter() {
                                if let Value::Tuple(kv) = item {
                                    if kv.len() == 2 {
                                        dd.insert(kv[0].key(), kv[1].clone());
                                    }
                                }
                            }
                        }
                    }
                    d
                }
                ("torch._utils", n) if n.starts_with("_rebuild") => tensor_bad(format!(
                    "tensor kind torch._utils.{n} (sparse, quantized, nested or meta tensor) is \
                     not supported"
                )),
                _ => Value::Object(Rc::new(Object {
                    class: format!("{module}.{name}"),
                })),
            }
        }
    }

    /// `_rebuild_tensor[_v2|_v3](storage, offset, size, stride, ...)`.
    fn rebuild_tensor(argv: &[Value], dtype: Option<String>) -> Value {
        let storage = match argv.first() {
            Some(Value::Storage(s)) => s.clone(),
            Some(Value::Bad(b)) => return Value::Bad(b.clone()),
            Some(other) => {
                return tensor_bad(format!(
                    "tensor storage is a {} (not a torch.save storage)",
                    other.type_name()
                ))
            }
            None => return tensor_bad("tensor without a storage"),
        };
        let Some(offset) = argv.get(1).and_then(Value::as_usize) else {
            return tensor_bad("tensor storage offset is not a non-negative int");
        };
        let Some(shape) = argv.get(2).and_then(Value::as_usize_tuple) else {
            return tensor_bad("tensor size is not a tuple of non-negative ints");
        };
        let stride = match argv.get(3) {
            None | Some(Value::None) => contiguous_strides(&shape),
            Some(v) => match v.as_usize_tuple() {
                Some(s) => s,
                None => return tensor_bad("tensor stride is not a tuple of non-negative ints"),
            },
        };
        if stride.len() != shape.len() {
            return tensor_bad(format!(
                "tensor size {shape:?} and stride {stride:?} differ in rank"
            ));
        }
        let (elem, dtype_name) = match dtype {
            None => (storage.elem, storage.class.clone()),
            Some(d) => {
                // v3: an untyped (byte) storage reinterpreted as `d`; offsets count elements of d.
                if storage.elem_size != Some(1) {
                    return tensor_bad(format!(
                        "_rebuild_tensor_v3 on a {} (expected UntypedStorage)",
                        storage.class
                    ));
                }
                (Elem::from_torch_dtype(&d), d)
            }
        };
        Value::Tensor(Rc::new(TensorRef {
            storage,
            elem,
            dtype_name,
            offset,
            shape,
            stride,
        }))
    }

    pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
        let mut s = vec![1usize; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1].saturating_mul(shape[i + 1]);
        }
        s
    }
}

use pickle::{TensorRef, Value};

/// The most values [`collect_tensors`] visits in one walk.
const MAX_WALK_VISITS: usize = 2_000_000;

/// The most bytes of tensor names [`collect_tensors`] builds in one walk (64 MiB).
const MAX_WALK_NAME_BYTES: usize = 1 << 26;

/// How deep nested dicts are followed (deeper ones are not state dicts and are skipped).
const MAX_WALK_DEPTH: usize = 64;

/// What one [`collect_tensors`] walk may still spend.
struct WalkBudget {
    visits: usize,
    name_bytes: usize,
}

/// Collects the tensors under `v` with dotted names (nested dicts are flattened). Reference
/// cycles are cut and the walk is bounded: a crafted file whose dicts share children (2^60 paths
/// through 60 levels) or whose keys are huge is an error, never an endless walk or a huge list
/// of names.
fn collect_tensors(v: &Value, out: &mut Vec<(String, Value)>) -> Result<(), String> {
    let mut budget = WalkBudget {
        visits: MAX_WALK_VISITS,
        name_bytes: MAX_WALK_NAME_BYTES,
    };
    collect_inner(v, "", out, &mut Vec::new(), &mut budget)
}

fn collect_inner(
    v: &Value,
    prefix: &str,
    out: &mut Vec<(String, Value)>,
    path: &mut Vec<*const std::cell::RefCell<pickle::Dict>>,
    budget: &mut WalkBudget,
) -> Result<(), String> {
    if path.len() > MAX_WALK_DEPTH {
        return Ok(());
    }
    let exhausted = || {
        format!(
            "the file's dicts reference each other more than {MAX_WALK_VISITS} times or build \
             more than {} MiB of tensor names: not a plain weights file (crafted or corrupt)",
            MAX_WALK_NAME_BYTES >> 20
        )
    };
    budget.visits = budget.visits.checked_sub(1).ok_or_else(exhausted)?;
    match v {
        Value::Dict(d) => {
            let ptr = Rc::as_ptr(d);
            if path.contains(&ptr) {
                return Ok(());
            }
            path.push(ptr);
            for (k, child) in d.borrow().entries.iter() {
                let key = k.text();
                let len = prefix.len() + 1 + key.len();
                budget.name_bytes = budget.name_bytes.checked_sub(len).ok_or_else(exhausted)?;
                let name = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                collect_inner(child, &name, out, path, budget)?;
            }
            path.pop();
        }
        Value::Tensor(_) | Value::Bad(_) => out.push((prefix.to_string(), v.clone())),
        _ => {}
    }
    Ok(())
}

/// Training-checkpoint entries tried, in order, when no key is given.
const DEFAULT_KEYS: [&str; 6] = [
    "ema",
    "model",
    "state_dict",
    "model_state_dict",
    "net",
    "module",
];

/// Chooses the tensors to read from a torch pickle's root object.
fn select_torch(
    root: &Value,
    opts: &LoadOptions,
    path: &Path,
    info: &mut SourceInfo,
) -> Result<Vec<(String, Value)>, CheckpointError> {
    let Value::Dict(d) = root else {
        return Err(corrupt(
            path,
            format!(
                "the top-level object is a {}, not a dict of tensors (a whole pickled model? \
                 save model.state_dict() instead)",
                root.type_name()
            ),
        ));
    };
    let d = d.borrow();
    let mut keys: Vec<String> = d.entries.iter().map(|(k, _)| k.text()).collect();
    keys.sort();
    let direct_tensors = d
        .entries
        .iter()
        .filter(|(_, v)| matches!(v, Value::Tensor(_) | Value::Bad(_)))
        .count();
    let mut out = Vec::new();
    if let Some(key) = &opts.key {
        let Some(v) = d.get(key) else {
            let what = if direct_tensors > 0 {
                format!(
                    "the file is a plain state dict ({} entries, e.g. {}), with no entry '{key}'; \
                     load it without a key",
                    keys.len(),
                    keys.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                )
            } else {
                format!("no top-level entry '{key}'; available: {}", keys.join(", "))
            };
            return Err(corrupt(path, what));
        };
        if matches!(v, Value::Tensor(_) | Value::Bad(_)) {
            return Err(corrupt(
                path,
                format!(
                    "'{key}' is a single tensor of a plain state dict, not an entry holding a \
                     state dict; load the file without a key"
                ),
            ));
        }
        collect_tensors(v, &mut out).map_err(|e| corrupt(path, e))?;
        if out.is_empty() {
            return Err(corrupt(
                path,
                format!(
                    "top-level entry '{key}' is a {} holding no tensors; available: {}",
                    v.type_name(),
                    keys.join(", ")
                ),
            ));
        }
        info.key = Some(key.clone());
        info.top_level_keys = keys;
        return Ok(out);
    }
    if direct_tensors > 0 {
        collect_tensors(root, &mut out).map_err(|e| corrupt(path, e))?;
        return Ok(out);
    }
    for key in DEFAULT_KEYS {
        if let Some(v) = d.get(key) {
            collect_tensors(v, &mut out).map_err(|e| corrupt(path, e))?;
            if !out.is_empty() {
                info.key = Some(key.to_string());
                info.top_level_keys = keys;
                return Ok(out);
            }
        }
    }
    // A single entry holding tensors is unambiguous.
    let mut holders: Vec<&str> = Vec::new();
    for (k, v) in &d.entries {
        let mut t = Vec::new();
        collect_tensors(v, &mut t).map_err(|e| corrupt(path, e))?;
        if !t.is_empty() {
            holders.push(match k {
                pickle::Key::Str(s) => s.as_str(),
                _ => "",
            });
        }
    }
    if holders.len() == 1 && !holders[0].is_empty() {
        let key = holders[0].to_string();
        collect_tensors(d.get(&key).expect("present"), &mut out).map_err(|e| corrupt(path, e))?;
        info.key = Some(key);
        info.top_level_keys = keys;
        return Ok(out);
    }
    Err(corrupt(
        path,
        if holders.is_empty() {
            format!(
                "the file holds no tensors (top-level keys: {})",
                keys.join(", ")
            )
        } else {
            format!(
                "cannot tell which entry holds the weights (entries with tensors: {}); choose \
                 one with a key",
                holders.join(", ")
            )
        },
    ))
}

/// Deflate expands data at most 1032-fold; a zip entry declaring more uncompressed bytes per
/// compressed byte (with slack) is corrupt or a zip bomb.
const MAX_DEFLATE_RATIO: u64 = 1100;

/// Checks a zip entry's declared size against its compressed size before anything is allocated
/// from it: a stored entry cannot be bigger than its data, a deflated one more than
/// [`MAX_DEFLATE_RATIO`] times bigger.
pub(crate) fn check_zip_entry(entry: &zip::read::ZipFile<'_, impl Read>) -> Result<(), String> {
    let (size, packed) = (entry.size(), entry.compressed_size());
    let limit = if entry.compression() == zip::CompressionMethod::Stored {
        packed
    } else {
        packed
            .saturating_mul(MAX_DEFLATE_RATIO)
            .saturating_add(1024)
    };
    if size > limit {
        return Err(format!(
            "entry '{}' declares {size} bytes from {packed} compressed bytes, more than its \
             compression can produce (corrupt, or a zip bomb)",
            entry.name()
        ));
    }
    Ok(())
}

/// Reads a zip entry whole, after [`check_zip_entry`]: the buffer grows with the data actually
/// decompressed (its initial capacity is capped by `file_len`), one byte past the declared size
/// is asked for so that a well-formed entry is read to its end (and its checksum verified), and
/// an entry whose data is not exactly its declared size is an error.
fn read_zip_entry(
    entry: &mut zip::read::ZipFile<'_, impl Read>,
    file_len: u64,
) -> Result<Vec<u8>, String> {
    check_zip_entry(entry)?;
    let size = entry.size();
    let mut out = Vec::with_capacity(size.min(file_len).min(usize::MAX as u64) as usize);
    Read::by_ref(entry)
        .take(size.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| format!("reading entry '{}': {e}", entry.name()))?;
    if out.len() as u64 != size {
        return Err(format!(
            "entry '{}' holds {}{} bytes but declares {size} (truncated or corrupt)",
            entry.name(),
            if out.len() as u64 > size {
                "more than "
            } else {
                ""
            },
            out.len().min(size as usize)
        ));
    }
    Ok(out)
}

/// Storage bytes by key.
enum StorageSource<'a> {
    Zip {
        archive: zip::ZipArchive<File>,
        prefix: String,
        /// The archive's length, bounding what is allocated before data arrives.
        file_len: u64,
    },
    Legacy {
        buf: &'a [u8],
        table: HashMap<String, (usize, usize)>,
    },
}

impl StorageSource<'_> {
    /// The size in bytes the file declares for storage `key` (checked against the file; the
    /// data is verified to match when read).
    fn len(&mut self, key: &str) -> Result<u64, String> {
        match self {
            StorageSource::Zip {
                archive, prefix, ..
            } => {
                let name = format!("{prefix}data/{key}");
                let entry = archive
                    .by_name(&name)
                    .map_err(|e| format!("storage entry '{name}': {e}"))?;
                check_zip_entry(&entry)?;
                Ok(entry.size())
            }
            StorageSource::Legacy { table, .. } => table
                .get(key)
                .map(|&(_, len)| len as u64)
                .ok_or_else(|| format!("storage '{key}' is not in the file's storage list")),
        }
    }

    /// Storage `key`, whole.
    fn read(&mut self, key: &str) -> Result<Cow<'_, [u8]>, String> {
        match self {
            StorageSource::Zip {
                archive,
                prefix,
                file_len,
            } => {
                let name = format!("{prefix}data/{key}");
                let mut entry = archive
                    .by_name(&name)
                    .map_err(|e| format!("storage entry '{name}': {e}"))?;
                Ok(Cow::Owned(read_zip_entry(&mut entry, *file_len)?))
            }
            StorageSource::Legacy { buf, table } => {
                let &(start, len) = table
                    .get(key)
                    .ok_or_else(|| format!("storage '{key}' is not in the file's storage list"))?;
                Ok(Cow::Borrowed(&buf[start..start + len]))
            }
        }
    }
}

/// The most dimensions a tensor may have.
const MAX_RANK: usize = 64;

/// The selected tensors may hold at most this many times the bytes of the storages they read
/// (tied weights read one storage twice); more means overlapping (stride-0) or repeated views,
/// refused so that memory stays a small multiple of the file.
const MAX_REUSE: u64 = 2;

/// Bytes allowed beyond [`MAX_REUSE`] (small broadcast tensors).
const REUSE_SLACK: u64 = 4 << 20;

/// A tensor view's geometry, checked for overflow: its element type, number of elements, the
/// storage element (of its type) it starts at, and how many storage elements it needs.
struct ViewGeometry {
    elem: Elem,
    numel: usize,
    base: usize,
    needed: usize,
}

fn view_geometry(t: &TensorRef) -> Result<ViewGeometry, String> {
    let elem = t.elem.ok_or_else(|| {
        format!(
            "dtype {} cannot be converted to f32 (supported: float, double, half, bfloat16, \
             integer and bool tensors)",
            t.dtype_name
        )
    })?;
    if t.shape.len() > MAX_RANK {
        return Err(format!(
            "the tensor has {} dimensions (at most {MAX_RANK} are read)",
            t.shape.len()
        ));
    }
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {:?} overflows", t.shape))?;
    let base = t
        .storage
        .view_offset
        .checked_add(t.offset)
        .ok_or("storage offset overflows")?;
    if numel == 0 {
        return Ok(ViewGeometry {
            elem,
            numel,
            base,
            needed: 0,
        });
    }
    let mut last = base;
    for (&d, &s) in t.shape.iter().zip(&t.stride) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(last))
            .ok_or("strides overflow")?;
    }
    let needed = last.checked_add(1).ok_or("strides overflow")?;
    Ok(ViewGeometry {
        elem,
        numel,
        base,
        needed,
    })
}

/// The error for a view reading past the end of its storage of `have` elements.
fn past_storage(t: &TensorRef, g: &ViewGeometry, have: u64) -> String {
    format!(
        "shape {:?} with stride {:?} at offset {} reads element {}, but its storage '{}' has \
         only {have} {} elements (file truncated or corrupt)",
        t.shape,
        t.stride,
        g.base,
        g.needed - 1,
        t.storage.key,
        g.elem.name()
    )
}

/// Bytes storage `t.storage` declares in its persistent id, if it does.
fn declared_storage_bytes(t: &TensorRef, esize: usize) -> Option<u64> {
    let n = t.storage.numel? as u64;
    // For byte storages read as another dtype (v3) `numel` counts bytes.
    Some(n.saturating_mul(t.storage.elem_size.unwrap_or(esize) as u64))
}

/// Reads the selected tensors' data, converting to f32. Every view is checked against the size
/// its storage has in the file, and the total against [`MAX_REUSE`], before anything is read.
fn materialize(
    tensors: Vec<(String, Value)>,
    source: &mut StorageSource<'_>,
    path: &Path,
    info: &mut SourceInfo,
) -> Result<StateDict, CheckpointError> {
    // Group by storage so that each storage is read once.
    let mut by_storage: BTreeMap<String, Vec<(String, Rc<TensorRef>, ViewGeometry)>> =
        BTreeMap::new();
    for (name, v) in tensors {
        let t = match &v {
            Value::Tensor(t) => t.clone(),
            Value::Bad(reason) => {
                return Err(corrupt(path, format!("entry '{name}': {reason}")));
            }
            _ => unreachable!("collect_tensors yields tensors only"),
        };
        let g = view_geometry(&t).map_err(|e| corrupt(path, format!("tensor '{name}': {e}")))?;
        by_storage
            .entry(t.storage.key.clone())
            .or_default()
            .push((name, t, g));
    }
    let (mut storage_bytes, mut view_bytes) = (0u64, 0u64);
    for (key, list) in &by_storage {
        let have = source
            .len(key)
            .map_err(|e| corrupt(path, format!("tensor '{}': {e}", list[0].0)))?;
        for (name, t, g) in list {
            let bad = |e: String| corrupt(path, format!("tensor '{name}': {e}"));
            let esize = g.elem.size() as u64;
            if let Some(declared) = declared_storage_bytes(t, g.elem.size()) {
                if have < declared {
                    return Err(bad(format!(
                        "storage '{key}' should hold {declared} bytes but has {have} (file \
                         truncated?)"
                    )));
                }
            }
            let needed = (g.needed as u64).saturating_mul(esize);
            if needed > have {
                return Err(bad(past_storage(t, g, have / esize)));
            }
            let bytes = (g.numel as u64).saturating_mul(esize);
            if bytes > needed.saturating_mul(MAX_REUSE).saturating_add(REUSE_SLACK) {
                return Err(bad(format!(
                    "shape {:?} with stride {:?} claims {} elements over only {} elements of \
                     its storage '{key}' (a stride-0 view this large is a crafted file; a real \
                     one can be saved with .contiguous())",
                    t.shape, t.stride, g.numel, g.needed
                )));
            }
            view_bytes = view_bytes.saturating_add(bytes);
        }
        storage_bytes = storage_bytes.saturating_add(have);
    }
    if view_bytes
        > storage_bytes
            .saturating_mul(MAX_REUSE)
            .saturating_add(REUSE_SLACK)
    {
        return Err(corrupt(
            path,
            format!(
                "the tensors read hold {view_bytes} bytes of data but their storages only \
                 {storage_bytes}: they repeat the same data more than {MAX_REUSE} times over \
                 (many names for one tensor), refused to bound memory"
            ),
        ));
    }
    let mut sd = StateDict::new();
    for (key, list) in by_storage {
        let bytes = source
            .read(&key)
            .map_err(|e| corrupt(path, format!("tensor '{}': {e}", list[0].0)))?;
        for (name, t, g) in list {
            let data =
                gather(&bytes, &t).map_err(|e| corrupt(path, format!("tensor '{name}': {e}")))?;
            if g.elem != Elem::F32 {
                *info.converted.entry(g.elem.name().to_string()).or_default() += 1;
            }
            sd.insert(name, t.shape.clone(), data);
        }
    }
    Ok(sd)
}

/// Reads a strided tensor out of its storage bytes, checking the view against them.
fn gather(bytes: &[u8], t: &TensorRef) -> Result<Vec<f32>, String> {
    let g = view_geometry(t)?;
    let (elem, numel, base) = (g.elem, g.numel, g.base);
    let esize = elem.size();
    let storage_numel = bytes.len() / esize;
    if let Some(declared) = declared_storage_bytes(t, esize) {
        if (bytes.len() as u64) < declared {
            return Err(format!(
                "storage '{}' should hold {declared} bytes but has {} (file truncated?)",
                t.storage.key,
                bytes.len()
            ));
        }
    }
    if g.needed > storage_numel {
        return Err(past_storage(t, &g, storage_numel as u64));
    }
    if numel == 0 {
        return Ok(Vec::new());
    }
    let contiguous = pickle::contiguous_strides(&t.shape);
    let is_contiguous = t
        .shape
        .iter()
        .zip(t.stride.iter().zip(&contiguous))
        .all(|(&d, (&s, &c))| d == 1 || s == c);
    if is_contiguous {
        return Ok(decode_range(bytes, elem, base, numel));
    }
    // Odometer over the dimensions longer than 1 (last fastest). Every position visited is at
    // most the last element checked above, and stepping back never goes below `base`.
    let dims: Vec<(usize, usize)> = t
        .shape
        .iter()
        .copied()
        .zip(t.stride.iter().copied())
        .filter(|&(d, _)| d > 1)
        .collect();
    let mut idx = vec![0usize; dims.len()];
    let mut out = Vec::with_capacity(numel);
    let mut pos = base;
    for _ in 0..numel {
        out.push(decode_one(bytes, elem, pos));
        for (ax, &(d, s)) in dims.iter().enumerate().rev() {
            if idx[ax] + 1 < d {
                idx[ax] += 1;
                pos += s;
                break;
            }
            pos -= s * (d - 1);
            idx[ax] = 0;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Format readers

const LEGACY_MAGIC: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];

/// The largest `data.pkl` read (a weights file's holds ~100 bytes per tensor).
const MAX_PICKLE_BYTES: u64 = 1 << 28;

fn load_torch_zip(
    path: &Path,
    opts: &LoadOptions,
) -> Result<(StateDict, SourceInfo), CheckpointError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let file_len = file.metadata().map_err(|e| io_err(path, e))?.len();
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| corrupt(path, format!("not a readable zip archive: {e}")))?;
    let pkl_name = archive
        .file_names()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.len())
        .map(str::to_string)
        .ok_or_else(|| {
            corrupt(
                path,
                "zip archive without a data.pkl entry: not a torch.save file (a .npz?)",
            )
        })?;
    let prefix = pkl_name[..pkl_name.len() - "data.pkl".len()].to_string();
    if let Ok(mut e) = archive.by_name(&format!("{prefix}byteorder")) {
        let mut s = String::new();
        // A few bytes ("little" / "big"): never decompress more.
        if Read::by_ref(&mut e).take(16).read_to_string(&mut s).is_ok() && s.trim() == "big" {
            return Err(corrupt(
                path,
                "saved on a big-endian machine; big-endian torch files are not supported",
            ));
        }
    }
    let pkl = {
        let mut e = archive
            .by_name(&pkl_name)
            .map_err(|e| corrupt(path, format!("reading {pkl_name}: {e}")))?;
        if e.size() > MAX_PICKLE_BYTES {
            return Err(corrupt(
                path,
                format!(
                    "{pkl_name} declares {} bytes (more than {} MiB): not a weights file's pickle",
                    e.size(),
                    MAX_PICKLE_BYTES >> 20
                ),
            ));
        }
        read_zip_entry(&mut e, file_len).map_err(|e| corrupt(path, e))?
    };
    let loaded = pickle::load(&pkl).map_err(|e| corrupt(path, format!("{pkl_name}: {e}")))?;
    let mut info = SourceInfo::new(path, CheckpointFormat::TorchZip);
    let tensors = select_torch(&loaded.value, opts, path, &mut info)?;
    let mut source = StorageSource::Zip {
        archive,
        prefix,
        file_len,
    };
    let sd = materialize(tensors, &mut source, path, &mut info)?;
    Ok((sd, info))
}

fn load_torch_legacy(
    path: &Path,
    buf: &[u8],
    opts: &LoadOptions,
) -> Result<(StateDict, SourceInfo), CheckpointError> {
    let mut pos = 0usize;
    let mut next = |what: &str| -> Result<pickle::Loaded, CheckpointError> {
        let l = pickle::load(&buf[pos..])
            .map_err(|e| corrupt(path, format!("legacy torch file, {what}: {e}")))?;
        pos += l.consumed;
        Ok(l)
    };
    next("magic number")?;
    next("protocol version")?;
    let sys = next("system info")?;
    if let Value::Dict(d) = &sys.value {
        if let Some(Value::Bool(false)) = d.borrow().get("little_endian") {
            return Err(corrupt(
                path,
                "saved on a big-endian machine; not supported",
            ));
        }
    }
    let main = next("main object")?;
    let keys = next("storage key list")?;
    let key_list: Vec<String> = match &keys.value {
        Value::List(l) => l
            .borrow()
            .iter()
            .map(|v| match v {
                Value::Str(s) => Ok(s.to_string()),
                other => Err(corrupt(
                    path,
                    format!("legacy storage key is a {}", other.type_name()),
                )),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(corrupt(
                path,
                format!("legacy storage key list is a {}", other.type_name()),
            ))
        }
    };
    // Raw section: per storage, an i64 element count then the elements.
    let mut table = HashMap::new();
    for key in &key_list {
        let st = main.storages.get(key).ok_or_else(|| {
            corrupt(
                path,
                format!("legacy storage '{key}' is listed but never used"),
            )
        })?;
        let esize = st.elem_size.ok_or_else(|| {
            corrupt(
                path,
                format!("legacy storage '{key}' has unknown type {}", st.class),
            )
        })?;
        let head = buf
            .get(pos..pos + 8)
            .ok_or_else(|| corrupt(path, format!("file ends before storage '{key}'")))?;
        let n = i64::from_le_bytes(head.try_into().expect("8 bytes"));
        let len = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(esize))
            .ok_or_else(|| corrupt(path, format!("storage '{key}' has a bad size {n}")))?;
        pos += 8;
        if buf.len() - pos < len {
            return Err(corrupt(
                path,
                format!(
                    "storage '{key}' needs {len} bytes but only {} remain (file truncated)",
                    buf.len() - pos
                ),
            ));
        }
        table.insert(key.clone(), (pos, len));
        pos += len;
    }
    let mut info = SourceInfo::new(path, CheckpointFormat::TorchLegacy);
    let tensors = select_torch(&main.value, opts, path, &mut info)?;
    let mut source = StorageSource::Legacy { buf, table };
    let sd = materialize(tensors, &mut source, path, &mut info)?;
    Ok((sd, info))
}

fn safetensors_elem(dtype: &str) -> Option<Elem> {
    Some(match dtype {
        "F32" => Elem::F32,
        "F64" => Elem::F64,
        "F16" => Elem::F16,
        "BF16" => Elem::BF16,
        "I64" => Elem::I64,
        "I32" => Elem::I32,
        "I16" => Elem::I16,
        "I8" => Elem::I8,
        "U8" => Elem::U8,
        "U16" => Elem::U16,
        "U32" => Elem::U32,
        "U64" => Elem::U64,
        "BOOL" => Elem::Bool,
        _ => return None,
    })
}

/// Element sizes of safetensors dtypes we cannot convert (to validate their offsets).
fn safetensors_other_size(dtype: &str) -> Option<usize> {
    match dtype {
        "F8_E5M2" | "F8_E4M3" | "F8_E8M0" | "F8_E4M3FNUZ" | "F8_E5M2FNUZ" => Some(1),
        "C64" => Some(8),
        _ => None,
    }
}

/// Largest safetensors header accepted (as the reference implementation).
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

struct StEntry {
    name: String,
    dtype: String,
    elem: Option<Elem>,
    shape: Vec<usize>,
    start: u64,
    end: u64,
}

/// Parses and validates a safetensors header: every entry's byte range matches its shape and
/// dtype, the ranges tile the data section exactly. Entries come back in file order.
fn parse_safetensors_header(
    header: &[u8],
    data_len: u64,
) -> Result<(Vec<StEntry>, BTreeMap<String, String>), String> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| format!("the header is not a JSON object: {e}"))?;
    let mut metadata = BTreeMap::new();
    let mut entries = Vec::new();
    for (name, v) in map {
        if name == "__metadata__" {
            let m = v.as_object().ok_or("__metadata__ is not a JSON object")?;
            for (k, v) in m {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                metadata.insert(k.clone(), text);
            }
            continue;
        }
        let bad = |what: &str| format!("entry '{name}': {what}");
        let dtype = v
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("no dtype"))?
            .to_string();
        let shape = v
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad("shape is not a list of non-negative integers"))?;
        let offsets = v
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
            .ok_or_else(|| bad("data_offsets is not a pair of integers"))?;
        let elem = safetensors_elem(&dtype);
        let size = elem
            .map(Elem::size)
            .or_else(|| safetensors_other_size(&dtype))
            .ok_or_else(|| bad(&format!("unknown dtype {dtype}")))?;
        let nbytes = shape
            .iter()
            .try_fold(size as u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| bad("shape overflows"))?;
        if offsets.1 < offsets.0 || offsets.1 - offsets.0 != nbytes {
            return Err(bad(&format!(
                "data_offsets {offsets:?} do not hold {nbytes} bytes of {dtype} {shape:?}"
            )));
        }
        entries.push(StEntry {
            name,
            dtype,
            elem,
            shape,
            start: offsets.0,
            end: offsets.1,
        });
    }
    entries.sort_by_key(|e| (e.start, e.end));
    let mut at = 0u64;
    for e in &entries {
        if e.start != at {
            return Err(format!(
                "entry '{}' starts at byte {} of the data, expected {at} (gap or overlap)",
                e.name, e.start
            ));
        }
        at = e.end;
    }
    if at != data_len {
        return Err(format!(
            "the tensors need {at} data bytes but the file has {data_len} (truncated or padded)"
        ));
    }
    Ok((entries, metadata))
}

/// Reads a safetensors file, streaming the tensors (one tensor's bytes in memory at a time).
fn load_safetensors(
    path: &Path,
    file_len: u64,
    opts: &LoadOptions,
) -> Result<(StateDict, SourceInfo), CheckpointError> {
    use std::io::BufReader;
    let mut f = BufReader::with_capacity(1 << 20, File::open(path).map_err(|e| io_err(path, e))?);
    let mut n8 = [0u8; 8];
    f.read_exact(&mut n8)
        .map_err(|_| corrupt(path, "not a safetensors file: too short for a header"))?;
    let n = u64::from_le_bytes(n8);
    if n > MAX_SAFETENSORS_HEADER || n > file_len.saturating_sub(8) {
        return Err(corrupt(
            path,
            format!(
                "not a safetensors file: header length {n} exceeds the file ({file_len} bytes)"
            ),
        ));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| io_err(path, e))?;
    let (entries, metadata) = parse_safetensors_header(&header, file_len.saturating_sub(8 + n))
        .map_err(|e| corrupt(path, format!("invalid safetensors file: {e}")))?;
    let mut info = SourceInfo::new(path, CheckpointFormat::Safetensors);
    info.metadata = metadata;
    let prefix = opts.key.as_ref().map(|k| format!("{k}."));
    if let Some(p) = &prefix {
        if !entries.iter().any(|e| e.name.starts_with(p.as_str())) {
            let mut groups: Vec<&str> = entries
                .iter()
                .map(|e| e.name.split('.').next().unwrap_or(""))
                .collect();
            groups.sort();
            groups.dedup();
            return Err(corrupt(
                path,
                format!(
                    "no entries named '{p}*' in this safetensors file (first name components: \
                     {})",
                    groups.join(", ")
                ),
            ));
        }
        info.key = opts.key.clone();
    }
    let mut sd = StateDict::new();
    let mut buf = Vec::new();
    for e in entries {
        let len = e.end - e.start;
        let name = match &prefix {
            Some(p) => e.name.strip_prefix(p.as_str()).map(str::to_string),
            None => Some(e.name.clone()),
        };
        let Some(name) = name else {
            f.seek_relative(len as i64)
                .map_err(|err| io_err(path, err))?;
            continue;
        };
        let elem = e.elem.ok_or_else(|| {
            corrupt(
                path,
                format!(
                    "tensor '{name}' has dtype {}, which cannot be converted to f32",
                    e.dtype
                ),
            )
        })?;
        buf.resize(len as usize, 0);
        f.read_exact(&mut buf)
            .map_err(|err| corrupt(path, format!("reading tensor '{}': {err}", e.name)))?;
        let numel: usize = e.shape.iter().product();
        let data = decode_range(&buf, elem, 0, numel);
        if elem != Elem::F32 {
            *info.converted.entry(elem.name().to_string()).or_default() += 1;
        }
        sd.insert(name, e.shape, data);
    }
    Ok((sd, info))
}

/// Whether the file starts like a safetensors file: a little-endian u64 header length that fits
/// in the file, then a JSON object.
fn looks_like_safetensors(head: &[u8], file_len: u64) -> bool {
    if head.len() < 10 {
        return false;
    }
    let n = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
    n >= 2 && n <= file_len.saturating_sub(8) && head[8] == b'{'
}

/// The model file inside a directory: `model.safetensors`, else the only `*.safetensors`.
fn safetensors_in_dir(dir: &Path) -> Result<PathBuf, CheckpointError> {
    let preferred = dir.join("model.safetensors");
    if preferred.is_file() {
        return Ok(preferred);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    let found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    match found.len() {
        1 => Ok(found.into_iter().next().expect("one")),
        0 => Err(io_err(
            dir,
            io::Error::new(
                io::ErrorKind::NotFound,
                "directory holds no model.safetensors (nor any *.safetensors)",
            ),
        )),
        n => Err(corrupt(
            dir,
            format!("directory holds {n} *.safetensors files and no model.safetensors; name one"),
        )),
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

// ---------------------------------------------------------------------------------------------
// Writing

/// Writes `sd` as a safetensors file (f32, little-endian, keys = state-dict keys) atomically.
/// `metadata` becomes the `__metadata__` header entry (omitted when empty).
pub fn save_safetensors(
    sd: &StateDict,
    path: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<(), CheckpointError> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".to_string(),
            serde_json::Value::Object(
                metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect(),
            ),
        );
    }
    let mut offset = 0usize;
    for (name, t) in &sd.tensors {
        if name == "__metadata__" {
            return Err(corrupt(path, "a tensor may not be named '__metadata__'"));
        }
        let end = offset + t.data.len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": "F32", "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut json = serde_json::to_string(&serde_json::Value::Object(header))
        .map_err(|e| corrupt(path, format!("encoding the header: {e}")))?;
    // Pad so the data starts 8-byte aligned, as the reference writer does.
    while (json.len() + 8) % 8 != 0 {
        json.push(' ');
    }
    write_atomic(path, |w| {
        w.write_all(&(json.len() as u64).to_le_bytes())?;
        w.write_all(json.as_bytes())?;
        let mut buf = Vec::with_capacity(1 << 16);
        for t in sd.tensors.values() {
            for chunk in t.data.chunks(1 << 14) {
                buf.clear();
                for x in chunk {
                    buf.extend_from_slice(&x.to_le_bytes());
                }
                w.write_all(&buf)?;
            }
        }
        Ok(())
    })
    .map_err(|e| io_err(path, e))
}

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
    fn pickle_basics() {
        // {'a': [1, 2.5, 'x'], 3: (True, None)} at protocol 2, written by CPython.
        let p: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01\
            G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03eK\x03\x88N\x86q\x04u.";
        let l = pickle::load(p).unwrap();
        assert_eq!(l.consumed, p.len());
        let Value::Dict(d) = &l.value else { panic!() };
        let d = d.borrow();
        assert_eq!(d.entries.len(), 2);
        let Some(Value::List(a)) = d.get("a") else {
            panic!()
        };
        assert_eq!(a.borrow().len(), 3);
        assert_eq!(d.entries[1].0, pickle::Key::Int(3));
        for n in 0..p.len() {
            assert!(pickle::load(&p[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn cyclic_and_exponential_references_terminate() {
        // d = {}; d['a'] = d
        let p: &[u8] = b"\x80\x02}q\x00X\x01\x00\x00\x00ah\x00s.";
        let l = pickle::load(p).unwrap();
        let mut out = Vec::new();
        collect_tensors(&l.value, &mut out).unwrap();
        assert!(out.is_empty());
        // d0 = {}; d_{i+1} = {'a': d_i, 'b': d_i} for 60 levels: 2^60 paths.
        let mut p = b"\x80\x02}q\x00".to_vec();
        for i in 0..60u8 {
            p.extend_from_slice(b"}q");
            p.push(i + 1);
            p.extend_from_slice(b"(X\x01\x00\x00\x00ah");
            p.push(i);
            p.extend_from_slice(b"X\x01\x00\x00\x00bh");
            p.push(i);
            p.push(b'u');
        }
        p.push(b'.');
        let l = pickle::load(&p).unwrap();
        // The walk stops at its budget with an error instead of a silently partial result.
        let err = collect_tensors(&l.value, &mut out).unwrap_err();
        assert!(err.contains("reference each other"), "{err}");
    }

    /// The values 0..10 as f32 bytes, and a strided view of them (`offset`, `shape`, `stride`
    /// in elements).
    fn ten_f32s(offset: usize, shape: Vec<usize>, stride: Vec<usize>) -> (Vec<u8>, TensorRef) {
        let storage = Rc::new(pickle::Storage {
            key: "0".into(),
            class: "FloatStorage".into(),
            elem: Some(Elem::F32),
            elem_size: Some(4),
            numel: Some(10),
            view_offset: 0,
        });
        let bytes = (0..10).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let view = TensorRef {
            storage,
            elem: Some(Elem::F32),
            dtype_name: "FloatStorage".into(),
            offset,
            shape,
            stride,
        };
        (bytes, view)
    }

    #[test]
    fn strided_gather() {
        // A (2,3) tensor transposed: shape (3,2), stride (1,3), offset 1.
        let (bytes, t) = ten_f32s(1, vec![3, 2], vec![1, 3]);
        assert_eq!(gather(&bytes, &t).unwrap(), vec![1., 4., 2., 5., 3., 6.]);
        let t = TensorRef {
            offset: 5,
            shape: vec![3, 2],
            stride: vec![1, 3],
            ..t
        };
        assert!(gather(&bytes, &t).is_err());
    }

    #[test]
    fn globals_outside_the_allowlist_are_refused() {
        for (p, name) in [
            // GLOBAL + REDUCE: os.system('id').
            (
                &b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R."[..],
                "os.system",
            ),
            // STACK_GLOBAL (protocol 4).
            (b"\x80\x04\x8c\x02os\x8c\x06system\x93.", "os.system"),
            // INST.
            (b"\x80\x02(X\x02\x00\x00\x00idios\nsystem\n.", "os.system"),
            (b"\x80\x02c__builtin__\neval\n.", "builtins.eval"),
            (b"\x80\x02ctorch\nload\n.", "torch.load"),
            (b"\x80\x02csubprocess\nPopen\n.", "subprocess.Popen"),
        ] {
            let err = pickle::load(p).err().expect("refused");
            assert!(
                err.contains(&format!("`{name}`")) && err.contains("not a plain weights file"),
                "{err}"
            );
        }
        // What torch and the training scripts write is allowed.
        for p in [
            &b"\x80\x02ccollections\nOrderedDict\n)R."[..],
            b"\x80\x02c__builtin__\nset\n]\x85R.",
            b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n.",
            b"\x80\x02ctorch\nbfloat16\n.",
            b"\x80\x02cargparse\nNamespace\n)\x81}b.",
            b"\x80\x02cpathlib\nPurePosixPath\nX\x01\x00\x00\x00r\x85R.",
        ] {
            assert!(pickle::load(p).is_ok(), "{p:?}");
        }
    }

    #[test]
    fn declared_lengths_and_memo_indices_are_checked() {
        for p in [
            &b"\x80\x02X\xff\xff\xff\xffabc."[..],
            b"\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7fabc.",
            b"\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\xffabc.",
            b"\x80\x02B\xff\xff\xff\x7fabc.",
            b"\x80\x02\x8b\xff\xff\xff\x7f\x01.",
            b"\x80\x02h\x07.",
            b"\x80\x02j\xff\xff\xff\xff.",
            b"\x80\x02g18446744073709551615\n.",
        ] {
            let err = pickle::load(p).err().expect("an error");
            assert!(
                err.contains("ends early") || err.contains("memo entry"),
                "{err}"
            );
        }
        // A huge memo index costs nothing: the memo is a map.
        let l = pickle::load(b"\x80\x02Nr\xff\xff\xff\xff0j\xff\xff\xff\xff.").unwrap();
        assert!(matches!(l.value, Value::None));
    }

    #[test]
    fn deep_nesting_is_read_and_dropped_without_recursion() {
        // On a 256 KiB stack: any recursion per nesting level would overflow it.
        let run = || {
            let n = 100_000usize;
            let mut cases = Vec::new();
            // MARK ×n then LIST ×n: n nested lists.
            let mut p = b"\x80\x02".to_vec();
            p.extend(std::iter::repeat_n(b'(', n));
            p.extend(std::iter::repeat_n(b'l', n));
            p.push(b'.');
            cases.push(p);
            // n nested 1-tuples.
            let mut p = b"\x80\x02N".to_vec();
            p.extend(std::iter::repeat_n(0x85u8, n));
            p.push(b'.');
            cases.push(p);
            // n nested dicts {'a': {'a': ...}}.
            let mut p = b"\x80\x02".to_vec();
            for _ in 0..n {
                p.extend_from_slice(b"(X\x01\x00\x00\x00a");
            }
            p.push(b'}');
            p.extend(std::iter::repeat_n(b'd', n));
            p.push(b'.');
            cases.push(p);
            // A chain built through the memo, top-down: list i is appended into list i-1 after
            // both exist, so no depth is known when each container is made.
            let mut p = b"\x80\x02]r\x00\x00\x00\x00".to_vec();
            for i in 1..n as u32 {
                p.push(b']');
                p.push(b'r');
                p.extend_from_slice(&i.to_le_bytes());
                p.push(b'j');
                p.extend_from_slice(&(i - 1).to_le_bytes());
                p.push(b'j');
                p.extend_from_slice(&i.to_le_bytes());
                p.extend_from_slice(b"a00");
            }
            p.push(b'.');
            cases.push(p);
            // n nested _rebuild_from_type_v2 applications.
            let mut p = b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\nq\x00h\x00".to_vec();
            for _ in 0..n {
                p.extend_from_slice(b"(h\x00N");
            }
            p.push(b')');
            p.extend(std::iter::repeat_n(&b"Nt"[..], n).flatten());
            p.extend_from_slice(b"R.");
            cases.push(p);
            for (i, p) in cases.iter().enumerate() {
                let l = pickle::load(p).unwrap_or_else(|e| panic!("case {i}: {e}"));
                let mut out = Vec::new();
                collect_tensors(&l.value, &mut out).unwrap();
                drop(l);
            }
        };
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(run)
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn gather_handles_huge_strides_on_unit_dims_and_broadcasts() {
        // A size-1 dimension may carry any stride: it is never stepped.
        let (bytes, t) = ten_f32s(0, vec![2, 1, 3], vec![1, usize::MAX, 2]);
        assert_eq!(gather(&bytes, &t).unwrap(), vec![0., 2., 4., 1., 3., 5.]);
        // A stride-0 broadcast.
        let t = TensorRef {
            offset: 7,
            shape: vec![3],
            stride: vec![0],
            ..t
        };
        assert_eq!(gather(&bytes, &t).unwrap(), vec![7., 7., 7.]);
        // Too many dimensions.
        let t = TensorRef {
            shape: vec![1; 65],
            stride: vec![1; 65],
            ..t
        };
        assert!(gather(&bytes, &t).unwrap_err().contains("dimensions"));
    }

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
