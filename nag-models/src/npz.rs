//! Reading NumPy `.npz` archives: a zip (stored or deflated, zip64 included, as `np.savez` /
//! `np.savez_compressed` write them) whose entries `NAME.npy` are `.npy` files ([`crate::npy`]).
//!
//! - [`Npz::names`] lists the arrays, [`Npz::header`] reads one array's dtype and shape without
//!   its data;
//! - [`Npz::read`] / [`Npz::read_f64`] read a small array whole (at most [`MAX_WHOLE_BYTES`]
//!   of data; `read_f64` keeps `float64` values exact, e.g. the reference statistics `mu`,
//!   `sigma` of the ADM evaluator);
//! - [`Npz::images`] streams `arr_0`, a uint8 `[N, H, W, 3]` image batch as the ADM evaluator
//!   (guided-diffusion `evaluations/evaluator.py`) reads it, in batches of rows: the `.npy` header
//!   is read from the (decompressed) entry stream and then `rows·H·W·3` bytes at a time, so
//!   memory stays bounded by the batch whatever `N` is (50 000 × 256 × 256 × 3 ≈ 9.8 GB for an
//!   FID-50K sample file).
//!
//! Errors ([`NpzError`]) name the file, the array and what would fix it.
//!
//! Archives come from strangers: an entry's declared size is checked against its compressed
//! size (no zip bombs), the `.npy` header against the entry, and buffers grow with the data
//! actually read, so no size the archive merely declares is allocated up front.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::checkpoint::check_zip_entry;
use crate::npy::{npy_data_start, parse_npy, parse_npy_header, NpyArray, NpyError, NpyHeader};

/// The most data bytes [`Npz::read`] / [`Npz::read_f64`] read into memory (1 GiB); bigger
/// arrays must be streamed ([`Npz::images`]).
pub const MAX_WHOLE_BYTES: usize = 1 << 30;

/// The longest `.npy` header accepted in an archive (numpy writes under 100 bytes).
const MAX_HEADER_BYTES: usize = 1 << 20;

/// The array the ADM evaluator reads images from.
pub const IMAGES: &str = "arr_0";

/// Errors reading an `.npz` archive. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum NpzError {
    /// The file could not be opened or read.
    #[error("{path}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a zip archive (or a corrupt one).
    #[error("{path}: not an .npz archive (a zip of .npy files, as np.savez writes): {reason}")]
    NotZip {
        /// The file.
        path: String,
        /// What the zip reader said.
        reason: String,
    },
    /// The archive has no array `name`.
    #[error("{path}: no array '{name}' (the archive holds {available:?})")]
    Missing {
        /// The file.
        path: String,
        /// The array asked for.
        name: String,
        /// The arrays it has.
        available: Vec<String>,
    },
    /// The archive has no `arr_0` image batch.
    #[error(
        "{path} has no arr_0; a sample batch for the ADM evaluator is np.savez(path, arr_0=uint8 \
         [N,H,W,3]) (the archive holds {available:?})"
    )]
    NoImages {
        /// The file.
        path: String,
        /// The arrays it has.
        available: Vec<String>,
    },
    /// An array has the wrong dtype or shape for its use.
    #[error("{path}: array '{name}': {reason}")]
    Format {
        /// The file.
        path: String,
        /// The array.
        name: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// An array is too big to read whole.
    #[error(
        "{path}: array '{name}' has {bytes} data bytes, more than the {limit} read whole; \
         stream it (Npz::images) instead"
    )]
    TooLarge {
        /// The file.
        path: String,
        /// The array.
        name: String,
        /// Its data bytes.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// An entry is not a valid or supported `.npy` file.
    #[error(transparent)]
    Npy(#[from] NpyError),
}

/// One entry of the archive, positioned after what was read of it.
type Entry<'a> = zip::read::ZipFile<'a, BufReader<File>>;

/// An open `.npz` archive.
pub struct Npz {
    path: String,
    /// The archive's length in bytes.
    file_len: u64,
    archive: zip::ZipArchive<BufReader<File>>,
}

impl std::fmt::Debug for Npz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Npz").field("path", &self.path).finish()
    }
}

/// Reads exactly `buf.len()` bytes of entry `what` of `path`; a short entry is
/// [`NpyError::Invalid`] (truncated).
fn read_exact(r: &mut impl Read, buf: &mut [u8], path: &str, what: &str) -> Result<(), NpzError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            NpzError::Npy(NpyError::Invalid {
                path: path.to_string(),
                reason: format!("{what}: the entry ends early (truncated or corrupt)"),
            })
        } else {
            NpzError::Io {
                path: path.to_string(),
                source: e,
            }
        }
    })
}

/// Appends exactly `len` bytes of entry `what` of `path` to `buf`. The buffer grows with the
/// data actually read (from at most `file_len`, the archive's length, reserved), so a size the
/// archive declares but does not hold costs nothing; a short entry is [`NpyError::Invalid`]
/// (truncated).
fn read_into(
    r: &mut impl Read,
    buf: &mut Vec<u8>,
    len: usize,
    file_len: u64,
    path: &str,
    what: &str,
) -> Result<(), NpzError> {
    let start = buf.len();
    buf.reserve(len.min(usize::try_from(file_len).unwrap_or(usize::MAX)));
    r.by_ref()
        .take(len as u64)
        .read_to_end(buf)
        .map_err(|source| NpzError::Io {
            path: path.to_string(),
            source,
        })?;
    if buf.len() - start < len {
        return Err(NpzError::Npy(NpyError::Invalid {
            path: path.to_string(),
            reason: format!("{what}: the entry ends early (truncated or corrupt)"),
        }));
    }
    Ok(())
}

/// Reads the magic and header of a `.npy` stream, leaving `r` at the first data byte; returns
/// the header and its raw bytes.
fn read_header(
    r: &mut impl Read,
    path: &str,
    name: &str,
) -> Result<(NpyHeader, Vec<u8>), NpzError> {
    let label = format!("{path} ({name}.npy)");
    let mut head = vec![0u8; 10];
    read_exact(r, &mut head, &label, "header")?;
    if head.starts_with(b"\x93NUMPY") && head[6] >= 2 {
        head.resize(12, 0);
        read_exact(r, &mut head[10..], &label, "header")?;
    }
    let start = npy_data_start(&head, &label)?;
    if start > MAX_HEADER_BYTES {
        return Err(NpyError::Invalid {
            path: label,
            reason: format!("header of {start} bytes (more than {MAX_HEADER_BYTES})"),
        }
        .into());
    }
    let have = head.len();
    head.resize(start.max(have), 0);
    read_exact(r, &mut head[have..], &label, "header")?;
    Ok((parse_npy_header(&head, &label)?, head))
}

impl Npz {
    /// Opens `path` and reads its zip directory.
    pub fn open(path: &Path) -> Result<Self, NpzError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|source| NpzError::Io {
            path: name.clone(),
            source,
        })?;
        let file_len = file
            .metadata()
            .map_err(|source| NpzError::Io {
                path: name.clone(),
                source,
            })?
            .len();
        let archive = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| match e {
            zip::result::ZipError::Io(source) => NpzError::Io {
                path: name.clone(),
                source,
            },
            other => NpzError::NotZip {
                path: name.clone(),
                reason: other.to_string(),
            },
        })?;
        Ok(Self {
            path: name,
            file_len,
            archive,
        })
    }

    /// The file, as named in errors.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The arrays (entries `NAME.npy`, listed as `NAME`), in archive order.
    pub fn names(&self) -> Vec<String> {
        self.archive
            .file_names()
            .filter_map(|n| n.strip_suffix(".npy"))
            .map(str::to_string)
            .collect()
    }

    /// Whether the archive has array `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.archive
            .index_for_name(&format!("{name}.npy"))
            .is_some()
    }

    /// The entry of array `name`, with its header read.
    fn open_entry(&mut self, name: &str) -> Result<(Entry<'_>, NpyHeader, Vec<u8>), NpzError> {
        let available = self.names();
        let path = self.path.clone();
        let missing = || {
            if name == IMAGES {
                NpzError::NoImages {
                    path: path.clone(),
                    available: available.clone(),
                }
            } else {
                NpzError::Missing {
                    path: path.clone(),
                    name: name.to_string(),
                    available: available.clone(),
                }
            }
        };
        let Some(index) = self.archive.index_for_name(&format!("{name}.npy")) else {
            return Err(missing());
        };
        let mut entry = self.archive.by_index(index).map_err(|e| match e {
            zip::result::ZipError::Io(source) => NpzError::Io {
                path: path.clone(),
                source,
            },
            other => NpzError::NotZip {
                path: path.clone(),
                reason: format!("entry {name}.npy: {other}"),
            },
        })?;
        check_zip_entry(&entry).map_err(|reason| NpzError::NotZip {
            path: path.clone(),
            reason,
        })?;
        let size = entry.size();
        let (header, raw) = read_header(&mut entry, &path, name)?;
        let expected = header
            .data_len()
            .and_then(|n| n.checked_add(header.data_start))
            .ok_or_else(|| NpzError::Format {
                path: path.clone(),
                name: name.to_string(),
                reason: format!("shape {:?} overflows", header.shape),
            })?;
        if size != expected as u64 {
            return Err(NpyError::Invalid {
                path: format!("{path} ({name}.npy)"),
                reason: format!(
                    "shape {:?} of {} needs {expected} bytes with its header but the entry has \
                     {size} (truncated or corrupt)",
                    header.shape, header.dtype,
                ),
            }
            .into());
        }
        Ok((entry, header, raw))
    }

    /// The dtype and shape of array `name` (only its header is read).
    pub fn header(&mut self, name: &str) -> Result<NpyHeader, NpzError> {
        Ok(self.open_entry(name)?.1)
    }

    /// Reads array `name` whole (dtypes as [`parse_npy`]: floats as `f32`, integers as `i64`),
    /// if its data is at most [`MAX_WHOLE_BYTES`].
    pub fn read(&mut self, name: &str) -> Result<NpyArray, NpzError> {
        let (path, file_len) = (self.path.clone(), self.file_len);
        let (mut entry, header, mut bytes) = self.open_entry(name)?;
        let len = whole_len(&header, &path, name)?;
        read_into(&mut entry, &mut bytes, len, file_len, &path, name)?;
        Ok(parse_npy(&bytes, &format!("{path} ({name}.npy)"))?)
    }

    /// Reads floating-point array `name` whole as `f64` (`float16/32/64`, either byte order;
    /// `float64` values are kept exactly), with its shape, if its data is at most
    /// [`MAX_WHOLE_BYTES`].
    pub fn read_f64(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f64>), NpzError> {
        let (path, file_len) = (self.path.clone(), self.file_len);
        let (mut entry, header, _) = self.open_entry(name)?;
        let len = whole_len(&header, &path, name)?;
        let mut data = Vec::new();
        read_into(&mut entry, &mut data, len, file_len, &path, name)?;
        let be = header.big_endian;
        let values: Vec<f64> = match header.dtype.as_str() {
            "f8" => data
                .chunks_exact(8)
                .map(|c| {
                    let a: [u8; 8] = c.try_into().expect("chunk of 8");
                    if be {
                        f64::from_be_bytes(a)
                    } else {
                        f64::from_le_bytes(a)
                    }
                })
                .collect(),
            "f4" => data
                .chunks_exact(4)
                .map(|c| {
                    let a: [u8; 4] = c.try_into().expect("chunk of 4");
                    f64::from(if be {
                        f32::from_be_bytes(a)
                    } else {
                        f32::from_le_bytes(a)
                    })
                })
                .collect(),
            "f2" => data
                .chunks_exact(2)
                .map(|c| {
                    let a: [u8; 2] = c.try_into().expect("chunk of 2");
                    let bits = if be {
                        u16::from_be_bytes(a)
                    } else {
                        u16::from_le_bytes(a)
                    };
                    f64::from(half::f16::from_bits(bits).to_f32())
                })
                .collect(),
            other => {
                return Err(NpzError::Format {
                    path,
                    name: name.to_string(),
                    reason: format!("dtype {other} is not a float (expected float32 or float64)"),
                })
            }
        };
        Ok((header.shape, values))
    }

    /// Streams `arr_0`, which must be uint8 `[N, H, W, 3]` (the ADM evaluator's image batch).
    pub fn images(&mut self) -> Result<ImageRows<'_>, NpzError> {
        let (path, file_len) = (self.path.clone(), self.file_len);
        let (entry, header, _) = self.open_entry(IMAGES)?;
        let format = |reason: String| NpzError::Format {
            path: path.clone(),
            name: IMAGES.into(),
            reason: format!(
                "{reason}; a sample batch for the ADM evaluator is np.savez(path, arr_0=uint8 \
                 [N,H,W,3])"
            ),
        };
        if header.dtype != "u1" {
            return Err(format(format!("dtype is {}, not uint8", header.dtype)));
        }
        let shape: [usize; 4] = match header.shape.as_slice() {
            // H·W·3 must not overflow even when N = 0 (then the data length does not bound it).
            &[n, h, w, 3]
                if h > 0 && w > 0 && h.checked_mul(w).and_then(|p| p.checked_mul(3)).is_some() =>
            {
                [n, h, w, 3]
            }
            other => {
                return Err(format(format!(
                    "shape is {other:?}, not [N, H, W, 3] with H, W ≥ 1"
                )))
            }
        };
        Ok(ImageRows {
            entry,
            path,
            file_len,
            shape,
            next: 0,
        })
    }
}

/// The data bytes of an array to be read whole, checked against [`MAX_WHOLE_BYTES`].
fn whole_len(header: &NpyHeader, path: &str, name: &str) -> Result<usize, NpzError> {
    let bytes = header.data_len().unwrap_or(usize::MAX);
    if bytes > MAX_WHOLE_BYTES {
        return Err(NpzError::TooLarge {
            path: path.to_string(),
            name: name.to_string(),
            bytes,
            limit: MAX_WHOLE_BYTES,
        });
    }
    Ok(bytes)
}

/// `arr_0` of an [`Npz`], read in batches of rows (images) from its entry stream.
pub struct ImageRows<'a> {
    entry: Entry<'a>,
    path: String,
    file_len: u64,
    shape: [usize; 4],
    next: usize,
}

impl std::fmt::Debug for ImageRows<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageRows")
            .field("path", &self.path)
            .field("shape", &self.shape)
            .field("next", &self.next)
            .finish()
    }
}

impl ImageRows<'_> {
    /// `[N, H, W, 3]`.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// Number of images `N`.
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }

    /// Images not yet read.
    pub fn remaining(&self) -> usize {
        self.shape[0] - self.next
    }

    /// Bytes per image (`H·W·3`).
    pub fn image_bytes(&self) -> usize {
        self.shape[1] * self.shape[2] * 3
    }

    /// The next `min(rows, remaining)` images, row-major uint8 NHWC (`None` when all were
    /// read); `rows` is at least 1.
    pub fn read_batch(&mut self, rows: usize) -> Result<Option<Vec<u8>>, NpzError> {
        let take = rows.max(1).min(self.remaining());
        if take == 0 {
            return Ok(None);
        }
        // take·H·W·3 ≤ N·H·W·3, the entry's data length (checked when it was opened).
        let len = take * self.image_bytes();
        let mut buf = Vec::new();
        read_into(
            &mut self.entry,
            &mut buf,
            len,
            self.file_len,
            &self.path,
            IMAGES,
        )?;
        self.next += take;
        Ok(Some(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npy::{encode_npy, NpyData};
    use std::io::Write;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("nag-npz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// A `.npy` of uint8 `shape` holding `data` (written by hand: the encoder writes integers
    /// as `<i8`).
    fn npy_u8(shape: &[usize], data: &[u8]) -> Vec<u8> {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let shape = if dims.len() == 1 {
            format!("({},)", dims[0])
        } else {
            format!("({})", dims.join(", "))
        };
        let mut header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn write_zip(path: &Path, entries: &[(&str, Vec<u8>)], deflate: bool) {
        let file = File::create(path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let method = if deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(method)
            .large_file(true);
        for (name, bytes) in entries {
            zip.start_file(format!("{name}.npy"), opts).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }

    fn images(n: usize) -> Vec<u8> {
        (0..n * 5 * 4 * 3).map(|i| (i * 37 % 256) as u8).collect()
    }

    #[test]
    fn stored_and_deflated_archives_stream_like_whole_reads() {
        for deflate in [false, true] {
            let path = tmp(&format!("a{deflate}.npz"));
            let imgs = images(7);
            let mu = NpyArray::new(vec![3], NpyData::F32(vec![0.5, -1.0, 2.0])).unwrap();
            write_zip(
                &path,
                &[
                    ("arr_0", npy_u8(&[7, 5, 4, 3], &imgs)),
                    ("mu", encode_npy(&mu).unwrap()),
                ],
                deflate,
            );
            let mut npz = Npz::open(&path).unwrap();
            assert_eq!(npz.names(), vec!["arr_0".to_string(), "mu".to_string()]);
            assert!(npz.contains("mu") && !npz.contains("sigma"));
            assert_eq!(npz.header("arr_0").unwrap().shape, vec![7, 5, 4, 3]);
            let (shape, mu64) = npz.read_f64("mu").unwrap();
            assert_eq!((shape, mu64), (vec![3], vec![0.5, -1.0, 2.0]));
            let whole = npz.read("arr_0").unwrap().into_i64().unwrap();
            assert_eq!(
                whole,
                imgs.iter().map(|&b| i64::from(b)).collect::<Vec<_>>()
            );
            for batch in [1, 3, 7, 100] {
                let mut rows = npz.images().unwrap();
                assert_eq!(rows.shape(), [7, 5, 4, 3]);
                let mut streamed = Vec::new();
                let mut sizes = Vec::new();
                while let Some(b) = rows.read_batch(batch).unwrap() {
                    sizes.push(b.len() / rows.image_bytes());
                    streamed.extend(b);
                }
                assert_eq!(streamed, imgs, "deflate {deflate}, batch {batch}");
                assert_eq!(sizes.iter().sum::<usize>(), 7);
                assert!(sizes.iter().all(|&s| s <= batch));
            }
            std::fs::remove_file(&path).ok();
        }
    }

    #[test]
    fn bad_archives_are_clear_errors() {
        // Not a zip.
        let path = tmp("text.npz");
        std::fs::write(&path, b"hello, not a zip").unwrap();
        let msg = Npz::open(&path).unwrap_err().to_string();
        assert!(msg.contains("not an .npz archive"), "{msg}");
        // Missing file.
        let msg = Npz::open(&tmp("absent.npz")).unwrap_err().to_string();
        assert!(msg.contains("absent.npz"), "{msg}");

        // No arr_0.
        let mu = NpyArray::new(vec![2], NpyData::F32(vec![1.0, 2.0])).unwrap();
        write_zip(&path, &[("mu", encode_npy(&mu).unwrap())], false);
        let mut npz = Npz::open(&path).unwrap();
        let msg = npz.images().unwrap_err().to_string();
        assert!(
            msg.contains("has no arr_0") && msg.contains("np.savez(path, arr_0=uint8 [N,H,W,3])"),
            "{msg}"
        );
        let msg = npz.read("sigma").unwrap_err().to_string();
        assert!(
            msg.contains("no array 'sigma'") && msg.contains("mu"),
            "{msg}"
        );

        // Wrong dtype, wrong shape.
        let f = NpyArray::new(vec![1, 2, 2, 3], NpyData::F32(vec![0.0; 12])).unwrap();
        write_zip(&path, &[("arr_0", encode_npy(&f).unwrap())], true);
        let msg = Npz::open(&path).unwrap().images().unwrap_err().to_string();
        assert!(msg.contains("dtype is f4, not uint8"), "{msg}");
        write_zip(&path, &[("arr_0", npy_u8(&[2, 4, 4], &[0; 32]))], false);
        let msg = Npz::open(&path).unwrap().images().unwrap_err().to_string();
        assert!(msg.contains("not [N, H, W, 3]"), "{msg}");
        let msg = Npz::open(&path)
            .unwrap()
            .read_f64("arr_0")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not a float"), "{msg}");

        // Truncated entry: the header promises more data than the entry has.
        let mut short = npy_u8(&[2, 2, 2, 3], &[1; 24]);
        short.truncate(short.len() - 5);
        write_zip(&path, &[("arr_0", short)], true);
        let msg = Npz::open(&path).unwrap().images().unwrap_err().to_string();
        assert!(msg.contains("truncated"), "{msg}");
        std::fs::remove_file(&path).ok();
    }
}
