//! MNIST-style IDX files: images `[N, H, W]` of unsigned bytes and labels `[N]`, optionally
//! gzip-compressed (`.gz`, or recognised from the bytes).
//!
//! The labels file is `DataOptions::labels`, else the images file's name with `images` →
//! `labels` and `idx3` → `idx1` (`train-images-idx3-ubyte` → `train-labels-idx1-ubyte`).
//! Images become 1 channel in `[−1, 1]` (`v / 127.5 − 1`), optionally padded with −1 to
//! `DataOptions::pad_to` (e.g. 28 → 32). Flipping is off unless `DataOptions::hflip` asks.

use std::io::Read;
use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;

use super::{maybe_flip, DataError, DataOptions, Dataset, Item};

/// A parsed IDX array (integer element types widened to `i64`, bytes kept as `u8`).
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    /// Dimensions.
    pub dims: Vec<usize>,
    /// Values, row-major.
    pub data: IdxData,
}

/// Values of an [`IdxArray`].
#[derive(Debug, Clone, PartialEq)]
pub enum IdxData {
    /// Unsigned bytes (type 0x08).
    U8(Vec<u8>),
    /// Signed integers (types 0x09, 0x0B, 0x0C).
    I64(Vec<i64>),
    /// Floats (types 0x0D, 0x0E).
    F64(Vec<f64>),
}

/// Reads a file, gunzipping it when it is gzip-compressed.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if bytes.starts_with(&[0x1F, 0x8B]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| DataError::decode(path, format!("gzip: {e}")))?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

/// Parses IDX bytes; `path` names the file in errors.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray, DataError> {
    let bad = |reason: String| DataError::decode(path, format!("not a valid IDX file: {reason}"));
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("bad magic number".into()));
    }
    let (ty, ndim) = (bytes[2], bytes[3] as usize);
    let header = 4 + 4 * ndim;
    if ndim == 0 || bytes.len() < header {
        return Err(bad(format!("{ndim} dimensions, {} bytes", bytes.len())));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes(b.try_into().unwrap()) as usize)
        .collect();
    let n = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("dims {dims:?} overflow")))?;
    let size = match ty {
        0x08 | 0x09 => 1,
        0x0B => 2,
        0x0C | 0x0D => 4,
        0x0E => 8,
        t => return Err(bad(format!("unknown element type 0x{t:02X}"))),
    };
    let body = &bytes[header..];
    if n.checked_mul(size) != Some(body.len()) {
        return Err(bad(format!(
            "dims {dims:?} need {n} × {size} data bytes, found {}",
            body.len()
        )));
    }
    let data = match ty {
        0x08 => IdxData::U8(body.to_vec()),
        0x09 => IdxData::I64(body.iter().map(|&v| v as i8 as i64).collect()),
        0x0B => IdxData::I64(
            body.chunks_exact(2)
                .map(|b| i16::from_be_bytes([b[0], b[1]]) as i64)
                .collect(),
        ),
        0x0C => IdxData::I64(
            body.chunks_exact(4)
                .map(|b| i32::from_be_bytes(b.try_into().unwrap()) as i64)
                .collect(),
        ),
        0x0D => IdxData::F64(
            body.chunks_exact(4)
                .map(|b| f32::from_be_bytes(b.try_into().unwrap()) as f64)
                .collect(),
        ),
        _ => IdxData::F64(
            body.chunks_exact(8)
                .map(|b| f64::from_be_bytes(b.try_into().unwrap()))
                .collect(),
        ),
    };
    Ok(IdxArray { dims, data })
}

/// Encodes unsigned bytes as an IDX file body (type 0x08).
pub fn encode_idx_u8(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// The labels file belonging to an IDX images file.
fn labels_path_for(images: &Path, given: Option<&Path>) -> Result<PathBuf, DataError> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let name = images.file_name().unwrap_or_default().to_string_lossy();
    let guess = name.replace("images", "labels").replace("idx3", "idx1");
    if guess == name {
        return Err(DataError::bad(
            images,
            "cannot derive the labels file name (expected 'images' in the name, as in \
             train-images-idx3-ubyte); pass the labels path explicitly",
        ));
    }
    Ok(images.with_file_name(guess))
}

/// An IDX dataset; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct IdxDataset {
    images: Vec<u8>,
    labels: Vec<i64>,
    hw: (usize, usize),
    side: (usize, usize),
    num_classes: usize,
    source: String,
    hflip: bool,
}

impl IdxDataset {
    /// Reads an images file and its labels file. Options used: `labels`, `pad_to`, `hflip`.
    pub fn open(images: &Path, options: &DataOptions) -> Result<Self, DataError> {
        if !images.is_file() {
            return Err(DataError::bad(images, "IDX images file not found"));
        }
        let labels_path = labels_path_for(images, options.labels.as_deref())?;
        if !labels_path.is_file() {
            return Err(DataError::bad(
                &labels_path,
                format!("labels file for {} not found", images.display()),
            ));
        }
        let img = parse_idx(&read_maybe_gz(images)?, images)?;
        let lab = parse_idx(&read_maybe_gz(&labels_path)?, &labels_path)?;
        let (IdxData::U8(pixels), [n, h, w]) = (img.data, img.dims.as_slice()) else {
            return Err(DataError::bad(
                images,
                "IDX images must be unsigned bytes [N, H, W]",
            ));
        };
        let labels: Vec<i64> = match lab.data {
            IdxData::U8(v) => v.into_iter().map(i64::from).collect(),
            IdxData::I64(v) => v,
            IdxData::F64(_) => {
                return Err(DataError::bad(&labels_path, "IDX labels must be integers"))
            }
        };
        if lab.dims.len() != 1 || labels.len() != *n || *n == 0 {
            return Err(DataError::bad(
                &labels_path,
                format!(
                    "{} labels (dims {:?}) for {n} images",
                    labels.len(),
                    lab.dims
                ),
            ));
        }
        if labels.iter().any(|&l| l < 0) {
            return Err(DataError::bad(&labels_path, "negative label"));
        }
        let pad = options.pad_to.unwrap_or(0);
        let side = (pad.max(*h), pad.max(*w));
        Ok(Self {
            num_classes: labels.iter().copied().max().unwrap_or(0) as usize + 1,
            images: pixels,
            labels,
            hw: (*h, *w),
            side,
            source: images.display().to_string(),
            hflip: options.hflip.unwrap_or(false),
        })
    }

    /// The labels, in index order.
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }
}

impl Dataset for IdxDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn item(&self, index: usize, rng: &mut ChaCha8Rng) -> Result<Item, DataError> {
        let n = self.labels.len();
        if index >= n {
            return Err(DataError::Index { index, len: n });
        }
        let ((h, w), (sh, sw)) = (self.hw, self.side);
        let (oy, ox) = ((sh - h) / 2, (sw - w) / 2);
        let mut x = vec![-1.0f32; sh * sw];
        let src = &self.images[index * h * w..(index + 1) * h * w];
        for y in 0..h {
            for (j, &v) in src[y * w..(y + 1) * w].iter().enumerate() {
                x[(oy + y) * sw + ox + j] = v as f32 / 127.5 - 1.0;
            }
        }
        maybe_flip(&mut x, self.shape(), self.hflip, rng);
        Ok(Item {
            x,
            y: self.labels[index],
        })
    }

    fn shape(&self) -> [usize; 3] {
        [1, self.side.0, self.side.1]
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn name(&self) -> String {
        format!("idx {}", self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::TempDir;
    use crate::data::{open_dataset, stream_rng};
    use std::io::Write;

    #[test]
    fn idx_round_trip_padding_and_gzip() {
        let dir = TempDir::new("idx");
        let pixels: Vec<u8> = (0..3 * 4 * 5).map(|i| (i * 4) as u8).collect();
        std::fs::write(
            dir.join("train-images-idx3-ubyte"),
            encode_idx_u8(&[3, 4, 5], &pixels),
        )
        .unwrap();
        std::fs::write(
            dir.join("train-labels-idx1-ubyte"),
            encode_idx_u8(&[3], &[7, 1, 9]),
        )
        .unwrap();
        let opts = DataOptions::default();
        let images = dir.join("train-images-idx3-ubyte");
        let ds = open_dataset(images.to_str().unwrap(), &opts).unwrap();
        assert_eq!((ds.len(), ds.shape(), ds.num_classes()), (3, [1, 4, 5], 10));
        let item = ds.item(1, &mut stream_rng(0, 0, 0)).unwrap();
        assert_eq!(item.y, 1);
        let expect: Vec<f32> = pixels[20..40]
            .iter()
            .map(|&v| v as f32 / 127.5 - 1.0)
            .collect();
        assert_eq!(item.x, expect);
        // Padding 4×5 → 8×8 with −1 around the image (offset 2 rows, 1 column).
        let padded = IdxDataset::open(
            &images,
            &DataOptions {
                pad_to: Some(8),
                ..opts.clone()
            },
        )
        .unwrap();
        assert_eq!(padded.shape(), [1, 8, 8]);
        let x = padded.item(1, &mut stream_rng(0, 0, 0)).unwrap().x;
        assert_eq!(x[2 * 8 + 1], expect[0]);
        assert_eq!(x.iter().filter(|&&v| v == -1.0).count(), 64 - 20);
        // Gzip-compressed files, and a folder holding them.
        let gz_dir = TempDir::new("idxgz");
        for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"] {
            let raw = std::fs::read(dir.join(name)).unwrap();
            let file = std::fs::File::create(gz_dir.join(&format!("{name}.gz"))).unwrap();
            let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
            enc.write_all(&raw).unwrap();
            enc.finish().unwrap();
        }
        let gz = open_dataset(gz_dir.0.to_str().unwrap(), &opts).unwrap();
        assert_eq!(gz.item(1, &mut stream_rng(0, 0, 0)).unwrap().x, expect);
        // Truncated or mismatched files are errors naming the file.
        std::fs::write(
            dir.join("train-labels-idx1-ubyte"),
            encode_idx_u8(&[2], &[7, 1]),
        )
        .unwrap();
        let err = IdxDataset::open(&images, &opts).unwrap_err().to_string();
        assert!(err.contains("train-labels-idx1-ubyte"), "{err}");
        std::fs::write(&images, &encode_idx_u8(&[3, 4, 5], &pixels)[..30]).unwrap();
        let err = IdxDataset::open(&images, &opts).unwrap_err().to_string();
        assert!(
            err.contains("train-images-idx3-ubyte") && err.contains("IDX"),
            "{err}"
        );
    }
}
