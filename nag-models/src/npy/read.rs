//! Reading `.npy` bytes and files: after the header, the data decoded per stored dtype (either
//! byte order) into the in-memory kinds f32, i64 and bool.

use std::path::Path;

use super::header::{Elem, Header};
use super::{parse_npy_header, NpyArray, NpyData, NpyError};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npy::encode_npy;

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
}
