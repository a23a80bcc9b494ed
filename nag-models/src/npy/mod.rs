//! Reading and writing NumPy `.npy` files (format versions 1.0, 2.0 and 3.0).
//!
//! Supported element types: `f4`/`f8`/`f2` (read as f32), `i1`/`i2`/`i4`/`i8`/`u1`/`u2`/`u4`
//! (read as i64; `u8` too when every value fits) and `b1` (bool), in either byte order, C order
//! only. The conversions between the three in-memory kinds ([`NpyArray::into_f32`],
//! [`NpyArray::into_i64`], [`NpyArray::into_bool`]) succeed only when no value changes.
//!
//! Writing ([`write_npy`], [`write_npy_f32`]) is atomic: a temporary file next to the target is
//! written, synced and renamed over it.

use std::path::Path;

use crate::checkpoint::write_atomic;

/// Errors from `.npy` reading, writing and conversion. File errors name the file.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// The file could not be opened, read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid `.npy` file (bad magic, header, or data length).
    #[error("{path}: not a valid .npy file: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A valid `.npy` file whose content this reader does not support (dtype, Fortran order).
    #[error("{path}: unsupported .npy content: {reason}")]
    Unsupported {
        /// The file.
        path: String,
        /// What is unsupported.
        reason: String,
    },
    /// A conversion between element kinds would change values.
    #[error("cannot convert {from} array to {to}: {reason}")]
    Convert {
        /// Source kind.
        from: &'static str,
        /// Target kind.
        to: &'static str,
        /// The offending value or reason.
        reason: String,
    },
    /// Shape and data length disagree (when writing or building an array).
    #[error("shape {shape:?} has {expected} elements but {found} values were given")]
    ShapeMismatch {
        /// The shape.
        shape: Vec<usize>,
        /// Product of the shape.
        expected: usize,
        /// Number of values.
        found: usize,
    },
}

/// The values of an array, in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// Floating point (`f2`, `f4`, `f8` in the file).
    F32(Vec<f32>),
    /// Integers (`i1`..`i8`, `u1`..`u8` in the file).
    I64(Vec<i64>),
    /// Booleans (`b1` in the file).
    Bool(Vec<bool>),
}

impl NpyData {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            NpyData::F32(v) => v.len(),
            NpyData::I64(v) => v.len(),
            NpyData::Bool(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// "f32", "i64" or "bool".
    pub fn kind(&self) -> &'static str {
        match self {
            NpyData::F32(_) => "f32",
            NpyData::I64(_) => "i64",
            NpyData::Bool(_) => "bool",
        }
    }
}

/// An n-dimensional array read from (or to be written to) a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Shape; empty for a 0-d array.
    pub shape: Vec<usize>,
    /// Values, row-major; `data.len() == shape.iter().product()`.
    pub data: NpyData,
}

/// Largest integer magnitude an f32 holds exactly.
const F32_EXACT_INT: i64 = 1 << 24;

impl NpyArray {
    /// Builds an array, checking that the shape and the number of values agree.
    pub fn new(shape: Vec<usize>, data: NpyData) -> Result<Self, NpyError> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(NpyError::ShapeMismatch {
                shape,
                expected,
                found: data.len(),
            });
        }
        Ok(Self { shape, data })
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The values as f32. Integers convert when |v| ≤ 2^24 (exact), booleans to 0/1.
    pub fn into_f32(self) -> Result<Vec<f32>, NpyError> {
        match self.data {
            NpyData::F32(v) => Ok(v),
            NpyData::I64(v) => v
                .into_iter()
                .map(|x| {
                    if x.abs() <= F32_EXACT_INT {
                        Ok(x as f32)
                    } else {
                        Err(NpyError::Convert {
                            from: "i64",
                            to: "f32",
                            reason: format!("{x} is not exactly representable as f32"),
                        })
                    }
                })
                .collect(),
            NpyData::Bool(v) => Ok(v.into_iter().map(|b| if b { 1.0 } else { 0.0 }).collect()),
        }
    }

    /// The values as i64. Floats convert when every value is a whole number in range,
    /// booleans to 0/1.
    pub fn into_i64(self) -> Result<Vec<i64>, NpyError> {
        match self.data {
            NpyData::I64(v) => Ok(v),
            NpyData::F32(v) => v
                .into_iter()
                .map(|x| {
                    if x.is_finite() && x.fract() == 0.0 && x.abs() <= 9.0e15 {
                        Ok(x as i64)
                    } else {
                        Err(NpyError::Convert {
                            from: "f32",
                            to: "i64",
                            reason: format!("{x} is not a whole number"),
                        })
                    }
                })
                .collect(),
            NpyData::Bool(v) => Ok(v.into_iter().map(i64::from).collect()),
        }
    }

    /// The values as booleans. Integers and floats convert when every value is 0 or 1.
    pub fn into_bool(self) -> Result<Vec<bool>, NpyError> {
        match self.data {
            NpyData::Bool(v) => Ok(v),
            NpyData::I64(v) => v
                .into_iter()
                .map(|x| match x {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err(NpyError::Convert {
                        from: "i64",
                        to: "bool",
                        reason: format!("value {x} is neither 0 nor 1"),
                    }),
                })
                .collect(),
            NpyData::F32(v) => v
                .into_iter()
                .map(|x| {
                    if x == 0.0 {
                        Ok(false)
                    } else if x == 1.0 {
                        Ok(true)
                    } else {
                        Err(NpyError::Convert {
                            from: "f32",
                            to: "bool",
                            reason: format!("value {x} is neither 0 nor 1"),
                        })
                    }
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Header parsing: the header is a Python dict literal, e.g.
// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.

#[derive(Debug, Clone, PartialEq)]
enum PyLit {
    Str(String),
    Int(i64),
    Bool(bool),
    None,
    Tuple(Vec<PyLit>),
    List(Vec<PyLit>),
    Dict(Vec<(PyLit, PyLit)>),
}

struct LitParser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> LitParser<'a> {
    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!(
                "expected '{}' at offset {} of the header",
                c as char, self.pos
            ))
        }
    }

    fn parse(&mut self) -> Result<PyLit, String> {
        self.depth += 1;
        if self.depth > 32 {
            return Err("header nests too deeply".into());
        }
        let v = self.parse_inner();
        self.depth -= 1;
        v
    }

    fn parse_seq(&mut self, close: u8) -> Result<(Vec<PyLit>, bool), String> {
        // Returns the items and whether a trailing comma was present.
        let mut items = Vec::new();
        let mut trailing_comma = false;
        loop {
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok((items, trailing_comma));
            }
            items.push(self.parse()?);
            trailing_comma = false;
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    trailing_comma = true;
                }
                Some(c) if c == close => {}
                _ => {
                    return Err(format!(
                        "expected ',' or '{}' at offset {} of the header",
                        close as char, self.pos
                    ))
                }
            }
        }
    }

    fn parse_inner(&mut self) -> Result<PyLit, String> {
        match self.peek() {
            None => Err("header ends unexpectedly".into()),
            Some(b'{') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                        return Ok(PyLit::Dict(items));
                    }
                    let k = self.parse()?;
                    self.expect(b':')?;
                    let v = self.parse()?;
                    items.push((k, v));
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {}
                        _ => return Err(format!("expected ',' or '}}' at offset {}", self.pos)),
                    }
                }
            }
            Some(b'(') => {
                self.pos += 1;
                let (items, trailing) = self.parse_seq(b')')?;
                if items.len() == 1 && !trailing {
                    // A parenthesised expression, not a tuple.
                    Ok(items.into_iter().next().unwrap_or(PyLit::None))
                } else {
                    Ok(PyLit::Tuple(items))
                }
            }
            Some(b'[') => {
                self.pos += 1;
                Ok(PyLit::List(self.parse_seq(b']')?.0))
            }
            Some(q @ (b'\'' | b'"')) => {
                self.pos += 1;
                let start = self.pos;
                while self.pos < self.s.len() && self.s[self.pos] != q {
                    if self.s[self.pos] == b'\\' {
                        return Err("escapes in header strings are not supported".into());
                    }
                    self.pos += 1;
                }
                if self.pos >= self.s.len() {
                    return Err("unterminated string in header".into());
                }
                let text = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
                self.pos += 1;
                Ok(PyLit::Str(text))
            }
            Some(c) if c.is_ascii_digit() || c == b'-' => {
                let start = self.pos;
                self.pos += 1;
                while self.pos < self.s.len() && self.s[self.pos].is_ascii_digit() {
                    self.pos += 1;
                }
                // Python 2 era headers may write longs as `3L`.
                let text = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("");
                if self.pos < self.s.len() && self.s[self.pos] == b'L' {
                    self.pos += 1;
                }
                text.parse::<i64>()
                    .map(PyLit::Int)
                    .map_err(|_| format!("bad integer '{text}' in header"))
            }
            Some(_) => {
                let start = self.pos;
                while self.pos < self.s.len() && self.s[self.pos].is_ascii_alphanumeric() {
                    self.pos += 1;
                }
                match &self.s[start..self.pos] {
                    b"True" => Ok(PyLit::Bool(true)),
                    b"False" => Ok(PyLit::Bool(false)),
                    b"None" => Ok(PyLit::None),
                    other => Err(format!(
                        "unexpected token '{}' in header",
                        String::from_utf8_lossy(other)
                    )),
                }
            }
        }
    }
}

/// Element type as stored in the file.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Elem {
    F2,
    F4,
    F8,
    I1,
    I2,
    I4,
    I8,
    U1,
    U2,
    U4,
    U8,
    B1,
}

impl Elem {
    /// The dtype code without byte order (`f4`, `u1`, …).
    fn code(self) -> &'static str {
        match self {
            Elem::F2 => "f2",
            Elem::F4 => "f4",
            Elem::F8 => "f8",
            Elem::I1 => "i1",
            Elem::I2 => "i2",
            Elem::I4 => "i4",
            Elem::I8 => "i8",
            Elem::U1 => "u1",
            Elem::U2 => "u2",
            Elem::U4 => "u4",
            Elem::U8 => "u8",
            Elem::B1 => "b1",
        }
    }

    /// The inverse of [`Elem::code`].
    fn from_code(code: &str) -> Option<Self> {
        parse_descr(code).ok().map(|(e, _)| e)
    }

    fn size(self) -> usize {
        match self {
            Elem::I1 | Elem::U1 | Elem::B1 => 1,
            Elem::F2 | Elem::I2 | Elem::U2 => 2,
            Elem::F4 | Elem::I4 | Elem::U4 => 4,
            Elem::F8 | Elem::I8 | Elem::U8 => 8,
        }
    }
}

struct Header {
    elem: Elem,
    big_endian: bool,
    shape: Vec<usize>,
}

fn parse_descr(descr: &str) -> Result<(Elem, bool), String> {
    let (order, code) = match descr.as_bytes().first() {
        Some(b'<' | b'>' | b'|' | b'=') => (descr.as_bytes()[0], &descr[1..]),
        _ => (b'=', descr),
    };
    let elem = match code {
        "f2" | "e" => Elem::F2,
        "f4" | "f" => Elem::F4,
        "f8" | "d" => Elem::F8,
        "i1" | "b" => Elem::I1,
        "i2" | "h" => Elem::I2,
        "i4" | "i" => Elem::I4,
        "i8" | "q" | "l" => Elem::I8,
        "u1" | "B" => Elem::U1,
        "u2" | "H" => Elem::U2,
        "u4" | "I" => Elem::U4,
        "u8" | "Q" | "L" => Elem::U8,
        "b1" | "?" => Elem::B1,
        _ => {
            return Err(format!(
                "dtype '{descr}' is not supported (supported: float16/32/64, int8..int64, \
                 uint8..uint64, bool)"
            ))
        }
    };
    // `=` means native order; .npy files written by numpy always give an explicit order for
    // multi-byte types, so treat `=` (and `|`) as little-endian, which is what every supported
    // writer produces.
    Ok((elem, order == b'>' && elem.size() > 1))
}

fn parse_header(text: &str) -> Result<Result<Header, String>, String> {
    // Outer Err: invalid file; inner Err: valid but unsupported.
    let mut p = LitParser {
        s: text.as_bytes(),
        pos: 0,
        depth: 0,
    };
    let lit = p.parse().map_err(|e| format!("bad header {text:?}: {e}"))?;
    let PyLit::Dict(items) = lit else {
        return Err(format!("header is not a dict: {text:?}"));
    };
    let get = |name: &str| {
        items
            .iter()
            .find(|(k, _)| matches!(k, PyLit::Str(s) if s == name))
            .map(|(_, v)| v.clone())
    };
    let descr = get("descr").ok_or_else(|| format!("header has no 'descr': {text:?}"))?;
    let fortran =
        get("fortran_order").ok_or_else(|| format!("header has no 'fortran_order': {text:?}"))?;
    let shape = get("shape").ok_or_else(|| format!("header has no 'shape': {text:?}"))?;
    let shape = match shape {
        PyLit::Tuple(dims) | PyLit::List(dims) => dims
            .into_iter()
            .map(|d| match d {
                PyLit::Int(n) if n >= 0 => Ok(n as usize),
                other => Err(format!("bad dimension {other:?} in shape")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        PyLit::Int(n) if n >= 0 => vec![n as usize],
        other => return Err(format!("'shape' is not a tuple: {other:?}")),
    };
    let fortran = match fortran {
        PyLit::Bool(b) => b,
        other => return Err(format!("'fortran_order' is not a bool: {other:?}")),
    };
    let descr = match descr {
        PyLit::Str(s) => s,
        other => {
            return Ok(Err(format!(
                "structured dtype {other:?} is not supported; save a plain numeric array"
            )))
        }
    };
    if fortran {
        return Ok(Err(
            "Fortran-order (column-major) arrays are not supported; save \
             np.ascontiguousarray(a) instead"
                .into(),
        ));
    }
    Ok(parse_descr(&descr).map(|(elem, big_endian)| Header {
        elem,
        big_endian,
        shape,
    }))
}

/// The header of a `.npy` file: what [`parse_npy_header`] reads before the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// The dtype code without its byte-order mark, e.g. `u1`, `f4`, `f8`.
    pub dtype: String,
    /// Bytes per element.
    pub elem_size: usize,
    /// Whether multi-byte elements are big-endian.
    pub big_endian: bool,
    /// Shape; empty for a 0-d array.
    pub shape: Vec<usize>,
    /// Offset of the data from the start of the file (magic and header included).
    pub data_start: usize,
}

impl NpyHeader {
    /// Number of elements (`None` if the shape's product overflows).
    pub fn numel(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
    }

    /// Number of data bytes (`None` on overflow).
    pub fn data_len(&self) -> Option<usize> {
        self.numel()?.checked_mul(self.elem_size)
    }
}

/// Bytes of a `.npy` file needed to know the header's length: the magic, the version and the
/// length field (10 bytes for version 1.0, 12 for 2.0 / 3.0). [`parse_npy_header`] says how
/// many bytes it needs in [`NpyError::Invalid`] when given fewer.
pub const NPY_PREAMBLE_LEN: usize = 12;

/// Length of the magic, version and header of a `.npy` file, i.e. where its data starts, from
/// its first [`NPY_PREAMBLE_LEN`] bytes (or 10 for version 1.0). For streaming readers that
/// must fetch exactly the header before parsing it with [`parse_npy_header`].
pub fn npy_data_start(preamble: &[u8], path: &str) -> Result<usize, NpyError> {
    let invalid = |reason: String| NpyError::Invalid {
        path: path.to_string(),
        reason,
    };
    if preamble.len() < 10 || &preamble[..6] != b"\x93NUMPY" {
        return Err(invalid(
            "missing the \\x93NUMPY magic (is this a .npz archive or a text file?)".into(),
        ));
    }
    let (major, minor) = (preamble[6], preamble[7]);
    match major {
        1 => Ok(10 + u16::from_le_bytes([preamble[8], preamble[9]]) as usize),
        2 | 3 => {
            if preamble.len() < 12 {
                return Err(invalid("file ends inside the header length".into()));
            }
            let len = u32::from_le_bytes([preamble[8], preamble[9], preamble[10], preamble[11]]);
            Ok(12 + len as usize)
        }
        _ => Err(NpyError::Unsupported {
            path: path.to_string(),
            reason: format!("format version {major}.{minor} (supported: 1.0, 2.0, 3.0)"),
        }),
    }
}

/// Parses the magic and header at the start of `bytes` (which must hold at least the whole
/// header; the data may follow or not); `path` is only used in error messages. Supported
/// dtypes and orders as [`parse_npy`].
pub fn parse_npy_header(bytes: &[u8], path: &str) -> Result<NpyHeader, NpyError> {
    let invalid = |reason: String| NpyError::Invalid {
        path: path.to_string(),
        reason,
    };
    let data_start = npy_data_start(bytes, path)?;
    let header_start = if bytes[6] == 1 { 10 } else { 12 };
    if data_start > bytes.len() {
        return Err(invalid(format!(
            "header claims {} bytes but the file has only {}",
            data_start - header_start,
            bytes.len() - header_start
        )));
    }
    let header_bytes = &bytes[header_start..data_start];
    let text = if bytes[6] == 3 {
        std::str::from_utf8(header_bytes)
            .map_err(|e| invalid(format!("header is not UTF-8: {e}")))?
            .to_string()
    } else {
        // Latin-1.
        header_bytes.iter().map(|&b| b as char).collect()
    };
    let header = parse_header(text.trim_end())
        .map_err(invalid)?
        .map_err(|reason| NpyError::Unsupported {
            path: path.to_string(),
            reason,
        })?;
    Ok(NpyHeader {
        dtype: header.elem.code().to_string(),
        elem_size: header.elem.size(),
        big_endian: header.big_endian,
        shape: header.shape,
        data_start,
    })
}

/// Parses `.npy` bytes; `path` is only used in error messages.
pub fn parse_npy(bytes: &[u8], path: &str) -> Result<NpyArray, NpyError> {
    let invalid = |reason: String| NpyError::Invalid {
        path: path.to_string(),
        reason,
    };
    let parsed = parse_npy_header(bytes, path)?;
    let data_start = parsed.data_start;
    let header = Header {
        elem: Elem::from_code(&parsed.dtype).expect("parse_npy_header gives a known code"),
        big_endian: parsed.big_endian,
        shape: parsed.shape,
    };
    let numel = header
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| invalid(format!("shape {:?} overflows", header.shape)))?;
    let esize = header.elem.size();
    let data = &bytes[data_start..];
    let expected = numel
        .checked_mul(esize)
        .ok_or_else(|| invalid(format!("shape {:?} overflows", header.shape)))?;
    if data.len() != expected {
        return Err(invalid(format!(
            "shape {:?} of {:?} needs {expected} data bytes but the file has {} (truncated or \
             corrupt)",
            header.shape,
            header.elem,
            data.len()
        )));
    }
    let be = header.big_endian;
    macro_rules! decode {
        ($t:ty, $n:expr) => {
            data.chunks_exact($n).map(|c| {
                let a: [u8; $n] = c.try_into().expect("chunk size");
                if be {
                    <$t>::from_be_bytes(a)
                } else {
                    <$t>::from_le_bytes(a)
                }
            })
        };
    }
    let values = match header.elem {
        Elem::F2 => NpyData::F32(
            decode!(u16, 2)
                .map(|b| half::f16::from_bits(b).to_f32())
                .collect(),
        ),
        Elem::F4 => NpyData::F32(decode!(f32, 4).collect()),
        Elem::F8 => NpyData::F32(decode!(f64, 8).map(|v| v as f32).collect()),
        Elem::I1 => NpyData::I64(data.iter().map(|&b| b as i8 as i64).collect()),
        Elem::U1 => NpyData::I64(data.iter().map(|&b| b as i64).collect()),
        Elem::I2 => NpyData::I64(decode!(i16, 2).map(i64::from).collect()),
        Elem::U2 => NpyData::I64(decode!(u16, 2).map(i64::from).collect()),
        Elem::I4 => NpyData::I64(decode!(i32, 4).map(i64::from).collect()),
        Elem::U4 => NpyData::I64(decode!(u32, 4).map(i64::from).collect()),
        Elem::I8 => NpyData::I64(decode!(i64, 8).collect()),
        Elem::U8 => NpyData::I64(
            decode!(u64, 8)
                .map(|v| {
                    i64::try_from(v).map_err(|_| NpyError::Unsupported {
                        path: path.to_string(),
                        reason: format!("uint64 value {v} does not fit in i64"),
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
        Elem::B1 => NpyData::Bool(
            data.iter()
                .map(|&b| match b {
                    0 => Ok(false),
                    1 => Ok(true),
                    other => Err(invalid(format!("bool array holds byte {other}"))),
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(NpyArray {
        shape: header.shape,
        data: values,
    })
}

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<NpyArray, NpyError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: name.clone(),
        source,
    })?;
    parse_npy(&bytes, &name)
}

fn shape_literal(shape: &[usize]) -> String {
    match shape {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The `.npy` header (version 1.0, or 2.0 if it needs it) of a C-order array of numpy dtype
/// `descr` (e.g. `"|u1"`, `"<f4"`) and `shape`, padded so the data starts at a multiple of 64:
/// the raw little-endian values follow it. For writers that stream the values.
pub fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': {}, }}",
        shape_literal(shape)
    );
    // Pad with spaces so the data starts at a multiple of 64, ending the header with '\n'.
    let (version, prefix) = if dict.len() + 11 <= 65535 {
        (1u8, 10usize)
    } else {
        (2u8, 12usize)
    };
    let total = (prefix + dict.len() + 1).div_ceil(64) * 64;
    let header_len = total - prefix;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(b"\x93NUMPY");
    out.push(version);
    out.push(0);
    if version == 1 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

/// Encodes an array as `.npy` bytes (version 1.0, or 2.0 if the header needs it):
/// `<f4`, `<i8` or `|b1`.
pub fn encode_npy(array: &NpyArray) -> Result<Vec<u8>, NpyError> {
    let expected: usize = array.shape.iter().product();
    if expected != array.data.len() {
        return Err(NpyError::ShapeMismatch {
            shape: array.shape.clone(),
            expected,
            found: array.data.len(),
        });
    }
    let descr = match array.data {
        NpyData::F32(_) => "<f4",
        NpyData::I64(_) => "<i8",
        NpyData::Bool(_) => "|b1",
    };
    let mut out = npy_header(descr, &array.shape);
    out.reserve(array.data.len() * 8);
    match &array.data {
        NpyData::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
    }
    Ok(out)
}

/// Writes an array atomically (see [`encode_npy`] for the element types written).
pub fn write_npy(path: &Path, array: &NpyArray) -> Result<(), NpyError> {
    let bytes = encode_npy(array)?;
    write_atomic(path, |w| std::io::Write::write_all(w, &bytes)).map_err(|source| NpyError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Writes an f32 array (`<f4`, C order) atomically.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    // Validate before copying the values.
    let expected: usize = shape.iter().product();
    if expected != data.len() {
        return Err(NpyError::ShapeMismatch {
            shape: shape.to_vec(),
            expected,
            found: data.len(),
        });
    }
    write_npy(
        path,
        &NpyArray {
            shape: shape.to_vec(),
            data: NpyData::F32(data.to_vec()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes(version: u8, dict: &str, data: &[u8]) -> Vec<u8> {
        let mut out = b"\x93NUMPY".to_vec();
        out.push(version);
        out.push(0);
        if version == 1 {
            out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(dict.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn hand_built_headers() {
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        for v in [1u8, 2, 3] {
            let b = header_bytes(
                v,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }   \n",
                &data,
            );
            let a = parse_npy(&b, "x.npy").unwrap();
            assert_eq!(a.shape, vec![2]);
            assert_eq!(a.data, NpyData::F32(vec![1.5, -2.0]));
        }
        // Double quotes, no trailing comma, list shape, big-endian.
        let data: Vec<u8> = [7i32, -1].iter().flat_map(|x| x.to_be_bytes()).collect();
        let b = header_bytes(
            1,
            "{\"descr\": \">i4\", \"shape\": [2, 1], \"fortran_order\": False}\n",
            &data,
        );
        let a = parse_npy(&b, "x.npy").unwrap();
        assert_eq!(a.shape, vec![2, 1]);
        assert_eq!(a.data, NpyData::I64(vec![7, -1]));
        // Scalar.
        let b = header_bytes(
            1,
            "{'descr': '<f8', 'fortran_order': False, 'shape': (), }\n",
            &2.5f64.to_le_bytes(),
        );
        let a = parse_npy(&b, "x.npy").unwrap();
        assert_eq!(a.shape, Vec::<usize>::new());
        assert_eq!(a.data, NpyData::F32(vec![2.5]));
    }

    #[test]
    fn errors() {
        let f = header_bytes(
            1,
            "{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }\n",
            &[0; 4],
        );
        let e = parse_npy(&f, "f.npy").unwrap_err().to_string();
        assert!(e.contains("f.npy") && e.contains("Fortran"), "{e}");
        let f = header_bytes(
            1,
            "{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }\n",
            &[0; 8],
        );
        let e = parse_npy(&f, "c.npy").unwrap_err();
        assert!(matches!(e, NpyError::Unsupported { .. }), "{e}");
        let f = header_bytes(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }\n",
            &[0; 8],
        );
        let e = parse_npy(&f, "t.npy").unwrap_err();
        assert!(
            matches!(e, NpyError::Invalid { .. }) && e.to_string().contains("t.npy"),
            "{e}"
        );
        let e = parse_npy(b"garbage!!!!!!", "g.npy").unwrap_err();
        assert!(matches!(e, NpyError::Invalid { .. }), "{e}");
        let f = header_bytes(
            1,
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }\n",
            &[0; 4],
        );
        assert!(matches!(
            parse_npy(&f, "s.npy").unwrap_err(),
            NpyError::Unsupported { .. }
        ));
        // Every truncation of a valid file is an error, never a panic.
        let full =
            encode_npy(&NpyArray::new(vec![2, 3], NpyData::F32(vec![1.0; 6])).unwrap()).unwrap();
        for n in 0..full.len() {
            assert!(parse_npy(&full[..n], "cut.npy").is_err(), "prefix {n}");
        }
    }

    #[test]
    fn encode_round_trip() {
        for arr in [
            NpyArray::new(
                vec![2, 3],
                NpyData::F32((0..6).map(|x| x as f32 * 0.5).collect()),
            )
            .unwrap(),
            NpyArray::new(vec![3], NpyData::I64(vec![-5, 0, i64::MAX])).unwrap(),
            NpyArray::new(vec![1, 2], NpyData::Bool(vec![true, false])).unwrap(),
            NpyArray::new(vec![], NpyData::F32(vec![3.0])).unwrap(),
            NpyArray::new(vec![0, 4], NpyData::F32(vec![])).unwrap(),
        ] {
            let b = encode_npy(&arr).unwrap();
            let item = match arr.data {
                NpyData::F32(_) => 4,
                NpyData::I64(_) => 8,
                NpyData::Bool(_) => 1,
            };
            assert_eq!(
                (b.len() - arr.numel() * item) % 64,
                0,
                "data 64-byte aligned"
            );
            assert_eq!(parse_npy(&b, "r.npy").unwrap(), arr);
        }
    }

    #[test]
    fn conversions() {
        let a = NpyArray::new(vec![2], NpyData::I64(vec![10, 500])).unwrap();
        assert_eq!(a.into_f32().unwrap(), vec![10.0, 500.0]);
        let a = NpyArray::new(vec![1], NpyData::I64(vec![(1 << 24) + 1])).unwrap();
        assert!(a.into_f32().is_err());
        let a = NpyArray::new(vec![2], NpyData::F32(vec![1.0, 3.0])).unwrap();
        assert_eq!(a.into_i64().unwrap(), vec![1, 3]);
        let a = NpyArray::new(vec![1], NpyData::F32(vec![1.5])).unwrap();
        assert!(a.into_i64().is_err());
        let a = NpyArray::new(vec![2], NpyData::I64(vec![0, 1])).unwrap();
        assert_eq!(a.into_bool().unwrap(), vec![false, true]);
        let a = NpyArray::new(vec![1], NpyData::I64(vec![2])).unwrap();
        assert!(a.into_bool().is_err());
    }
}
