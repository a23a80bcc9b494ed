//! safetensors files: the header parsed and checked against the data, tensors streamed in and
//! converted to f32; writing f32 files atomically.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::elem::{decode_range, Elem};
use super::{corrupt, io_err, write_atomic, CheckpointFormat, LoadOptions, SourceInfo};
use crate::state_dict::{CheckpointError, StateDict};

fn safetensors_elem(dtype: &str) -> Option<Elem> {
    Some(match dtype {
        "F32" => Elem::F32,
        "F64" => Elem::F64,
        "F16" => Elem::F16,
        "BF16" => Elem::BF16,
        "I64" => Elem::I64,
        "I32" => Elem::I32,
        "I16" => Elem::I16,
        "I8" => Elem::I8,
        "U8" => Elem::U8,
        "U16" => Elem::U16,
        "U32" => Elem::U32,
        "U64" => Elem::U64,
        "BOOL" => Elem::Bool,
        _ => return None,
    })
}

/// Element sizes of safetensors dtypes we cannot convert (to validate their offsets).
fn safetensors_other_size(dtype: &str) -> Option<usize> {
    match dtype {
        "F8_E5M2" | "F8_E4M3" | "F8_E8M0" | "F8_E4M3FNUZ" | "F8_E5M2FNUZ" => Some(1),
        "C64" => Some(8),
        _ => None,
    }
}

/// Largest safetensors header accepted (as the reference implementation).
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

struct StEntry {
    name: String,
    dtype: String,
    elem: Option<Elem>,
    shape: Vec<usize>,
    start: u64,
    end: u64,
}

/// Parses and validates a safetensors header: every entry's byte range matches its shape and
/// dtype, the ranges tile the data section exactly. Entries come back in file order.
fn parse_safetensors_header(
    header: &[u8],
    data_len: u64,
) -> Result<(Vec<StEntry>, BTreeMap<String, String>), String> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| format!("the header is not a JSON object: {e}"))?;
    let mut metadata = BTreeMap::new();
    let mut entries = Vec::new();
    for (name, v) in map {
        if name == "__metadata__" {
            let m = v.as_object().ok_or("__metadata__ is not a JSON object")?;
            for (k, v) in m {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                metadata.insert(k.clone(), text);
            }
            continue;
        }
        let bad = |what: &str| format!("entry '{name}': {what}");
        let dtype = v
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("no dtype"))?
            .to_string();
        let shape = v
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad("shape is not a list of non-negative integers"))?;
        let offsets = v
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
            .ok_or_else(|| bad("data_offsets is not a pair of integers"))?;
        let elem = safetensors_elem(&dtype);
        let size = elem
            .map(Elem::size)
            .or_else(|| safetensors_other_size(&dtype))
            .ok_or_else(|| bad(&format!("unknown dtype {dtype}")))?;
        let nbytes = shape
            .iter()
            .try_fold(size as u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| bad("shape overflows"))?;
        if offsets.1 < offsets.0 || offsets.1 - offsets.0 != nbytes {
            return Err(bad(&format!(
                "data_offsets {offsets:?} do not hold {nbytes} bytes of {dtype} {shape:?}"
            )));
        }
        entries.push(StEntry {
            name,
            dtype,
            elem,
            shape,
            start: offsets.0,
            end: offsets.1,
        });
    }
    entries.sort_by_key(|e| (e.start, e.end));
    let mut at = 0u64;
    for e in &entries {
        if e.start != at {
            return Err(format!(
                "entry '{}' starts at byte {} of the data, expected {at} (gap or overlap)",
                e.name, e.start
            ));
        }
        at = e.end;
    }
    if at != data_len {
        return Err(format!(
            "the tensors need {at} data bytes but the file has {data_len} (truncated or padded)"
        ));
    }
    Ok((entries, metadata))
}

/// Reads a safetensors file, streaming the tensors (one tensor's bytes in memory at a time).
pub(super) fn load_safetensors(
    path: &Path,
    file_len: u64,
    opts: &LoadOptions,
) -> Result<(StateDict, SourceInfo), CheckpointError> {
    use std::io::BufReader;
    let mut f = BufReader::with_capacity(1 << 20, File::open(path).map_err(|e| io_err(path, e))?);
    let mut n8 = [0u8; 8];
    f.read_exact(&mut n8)
        .map_err(|_| corrupt(path, "not a safetensors file: too short for a header"))?;
    let n = u64::from_le_bytes(n8);
    if n > MAX_SAFETENSORS_HEADER || n > file_len.saturating_sub(8) {
        return Err(corrupt(
            path,
            format!(
                "not a safetensors file: header length {n} exceeds the file ({file_len} bytes)"
            ),
        ));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| io_err(path, e))?;
    let (entries, metadata) = parse_safetensors_header(&header, file_len.saturating_sub(8 + n))
        .map_err(|e| corrupt(path, format!("invalid safetensors file: {e}")))?;
    let mut info = SourceInfo::new(path, CheckpointFormat::Safetensors);
    info.metadata = metadata;
    let prefix = opts.key.as_ref().map(|k| format!("{k}."));
    if let Some(p) = &prefix {
        if !entries.iter().any(|e| e.name.starts_with(p.as_str())) {
            let mut groups: Vec<&str> = entries
                .iter()
                .map(|e| e.name.split('.').next().unwrap_or(""))
                .collect();
            groups.sort();
            groups.dedup();
            return Err(corrupt(
                path,
                format!(
                    "no entries named '{p}*' in this safetensors file (first name components: \
                     {})",
                    groups.join(", ")
                ),
            ));
        }
        info.key = opts.key.clone();
    }
    let mut sd = StateDict::new();
    let mut buf = Vec::new();
    for e in entries {
        let len = e.end - e.start;
        let name = match &prefix {
            Some(p) => e.name.strip_prefix(p.as_str()).map(str::to_string),
            None => Some(e.name.clone()),
        };
        let Some(name) = name else {
            f.seek_relative(len as i64)
                .map_err(|err| io_err(path, err))?;
            continue;
        };
        let elem = e.elem.ok_or_else(|| {
            corrupt(
                path,
                format!(
                    "tensor '{name}' has dtype {}, which cannot be converted to f32",
                    e.dtype
                ),
            )
        })?;
        buf.resize(len as usize, 0);
        f.read_exact(&mut buf)
            .map_err(|err| corrupt(path, format!("reading tensor '{}': {err}", e.name)))?;
        let numel: usize = e.shape.iter().product();
        let data = decode_range(&buf, elem, 0, numel);
        if elem != Elem::F32 {
            *info.converted.entry(elem.name().to_string()).or_default() += 1;
        }
        sd.insert(name, e.shape, data);
    }
    Ok((sd, info))
}

/// Whether the file starts like a safetensors file: a little-endian u64 header length that fits
/// in the file, then a JSON object.
pub(super) fn looks_like_safetensors(head: &[u8], file_len: u64) -> bool {
    if head.len() < 10 {
        return false;
    }
    let n = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
    n >= 2 && n <= file_len.saturating_sub(8) && head[8] == b'{'
}

/// The model file inside a directory: `model.safetensors`, else the only `*.safetensors`.
pub(super) fn safetensors_in_dir(dir: &Path) -> Result<PathBuf, CheckpointError> {
    let preferred = dir.join("model.safetensors");
    if preferred.is_file() {
        return Ok(preferred);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    let found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    match found.len() {
        1 => Ok(found.into_iter().next().expect("one")),
        0 => Err(io_err(
            dir,
            io::Error::new(
                io::ErrorKind::NotFound,
                "directory holds no model.safetensors (nor any *.safetensors)",
            ),
        )),
        n => Err(corrupt(
            dir,
            format!("directory holds {n} *.safetensors files and no model.safetensors; name one"),
        )),
    }
}

/// Writes `sd` as a safetensors file (f32, little-endian, keys = state-dict keys) atomically.
/// `metadata` becomes the `__metadata__` header entry (omitted when empty).
// Hand-written, not `safetensors::serialize`: the crate orders each header entry dtype, shape,
// offsets, this writer (since the first runs) offsets, dtype, shape; runs' files stay byte-equal.
pub fn save_safetensors(
    sd: &StateDict,
    path: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<(), CheckpointError> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".to_string(),
            serde_json::Value::Object(
                metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect(),
            ),
        );
    }
    let mut offset = 0usize;
    for (name, t) in &sd.tensors {
        if name == "__metadata__" {
            return Err(corrupt(path, "a tensor may not be named '__metadata__'"));
        }
        let end = offset + t.data.len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": "F32", "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut json = serde_json::to_string(&serde_json::Value::Object(header))
        .map_err(|e| corrupt(path, format!("encoding the header: {e}")))?;
    // Pad so the data starts 8-byte aligned, as the reference writer does.
    while (json.len() + 8) % 8 != 0 {
        json.push(' ');
    }
    write_atomic(path, |w| {
        w.write_all(&(json.len() as u64).to_le_bytes())?;
        w.write_all(json.as_bytes())?;
        let mut buf = Vec::with_capacity(1 << 16);
        for t in sd.tensors.values() {
            for chunk in t.data.chunks(1 << 14) {
                buf.clear();
                for x in chunk {
                    buf.extend_from_slice(&x.to_le_bytes());
                }
                w.write_all(&buf)?;
            }
        }
        Ok(())
    })
    .map_err(|e| io_err(path, e))
}
