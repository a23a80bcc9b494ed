//! Writing `.npy`: the header of a C-order array (for streaming writers too), whole arrays
//! encoded, and atomic file writes.

use std::path::Path;

use super::{NpyArray, NpyData, NpyError};
use crate::checkpoint::write_atomic;

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
    use crate::npy::parse_npy;

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
}
