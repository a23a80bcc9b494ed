//! Element types of stored tensor data (torch storages and dtypes, safetensors dtypes) and their
//! decoding to f32.

/// Element type of stored data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Elem {
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
    pub(super) fn size(self) -> usize {
        match self {
            Elem::F64 | Elem::I64 | Elem::U64 => 8,
            Elem::F32 | Elem::I32 | Elem::U32 => 4,
            Elem::F16 | Elem::BF16 | Elem::I16 | Elem::U16 => 2,
            Elem::I8 | Elem::U8 | Elem::Bool => 1,
        }
    }

    pub(super) fn name(self) -> &'static str {
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
    pub(super) fn from_torch_storage(name: &str) -> Option<Elem> {
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
    pub(super) fn from_torch_dtype(name: &str) -> Option<Elem> {
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
pub(super) fn torch_storage_elem_size(name: &str) -> Option<usize> {
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

pub(super) fn decode_one(bytes: &[u8], elem: Elem, i: usize) -> f32 {
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
pub(super) fn decode_range(bytes: &[u8], elem: Elem, start: usize, count: usize) -> Vec<f32> {
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
