//! The `.npy` magic, version and header: the header's Python dict literal parsed, its dtype
//! (`descr`), order and shape checked.

use super::NpyError;

// The header is a Python dict literal, e.g.
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
pub(super) enum Elem {
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
    pub(super) fn from_code(code: &str) -> Option<Self> {
        parse_descr(code).ok().map(|(e, _)| e)
    }

    pub(super) fn size(self) -> usize {
        match self {
            Elem::I1 | Elem::U1 | Elem::B1 => 1,
            Elem::F2 | Elem::I2 | Elem::U2 => 2,
            Elem::F4 | Elem::I4 | Elem::U4 => 4,
            Elem::F8 | Elem::I8 | Elem::U8 => 8,
        }
    }
}

pub(super) struct Header {
    pub(super) elem: Elem,
    pub(super) big_endian: bool,
    pub(super) shape: Vec<usize>,
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
/// dtypes and orders as [`parse_npy`](super::parse_npy).
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
