//! Tensor data out of torch storages (zip entries or a legacy file's raw section): every view is
//! checked against its storage before anything is read, then gathered and converted to f32.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use super::elem::{decode_one, decode_range, Elem};
use super::pickle::{self, TensorRef, Value};
use super::{corrupt, SourceInfo};
use crate::state_dict::{CheckpointError, StateDict};

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
pub(super) fn read_zip_entry(
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
pub(super) enum StorageSource<'a> {
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
pub(super) fn materialize(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
