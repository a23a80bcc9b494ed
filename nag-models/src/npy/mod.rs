//! Reading and writing NumPy `.npy` files (format versions 1.0, 2.0 and 3.0).
//!
//! Hand-written because the crates do not bound files from strangers: npyz 0.9 panics when a
//! shape's product overflows and ndarray-npy 0.10 allocates the declared array before reading.
//!
//! Supported element types: `f4`/`f8`/`f2` (read as f32), `i1`/`i2`/`i4`/`i8`/`u1`/`u2`/`u4`
//! (read as i64; `u8` too when every value fits) and `b1` (bool), in either byte order, C order
//! only. The conversions between the three in-memory kinds ([`NpyArray::into_f32`],
//! [`NpyArray::into_i64`], [`NpyArray::into_bool`]) succeed only when no value changes.
//!
//! Writing ([`write_npy`], [`write_npy_f32`]) is atomic: a temporary file next to the target is
//! written, synced and renamed over it.
//!
//! Files: this one holds the in-memory array and its conversions; `header` parses the magic and
//! the header dict, `read` decodes the data, `write` encodes and writes.

mod header;
mod read;
mod write;

pub use header::{npy_data_start, parse_npy_header, NpyHeader, NPY_PREAMBLE_LEN};
pub use read::{parse_npy, read_npy};
pub use write::{encode_npy, npy_header, write_npy, write_npy_f32};

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

#[cfg(test)]
mod tests {
    use super::*;

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
