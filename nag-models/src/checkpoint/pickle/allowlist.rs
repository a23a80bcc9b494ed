//! The globals a weights pickle may name (as `torch.load(weights_only=True)` allows), and the
//! check that refuses every other one.

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
