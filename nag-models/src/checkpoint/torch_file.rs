//! `torch.save` files, zip (PyTorch ≥ 1.6) and legacy: their pickle is read, the tensors of the
//! chosen entry are selected, and their data is read through [`storage`](super::storage).

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use super::pickle::{self, Value};
use super::storage::{materialize, read_zip_entry, StorageSource};
use super::{corrupt, io_err, CheckpointFormat, LoadOptions, SourceInfo};
use crate::state_dict::{CheckpointError, StateDict};

/// The most values [`collect_tensors`] visits in one walk.
const MAX_WALK_VISITS: usize = 2_000_000;

/// The most bytes of tensor names [`collect_tensors`] builds in one walk (64 MiB).
const MAX_WALK_NAME_BYTES: usize = 1 << 26;

/// How deep nested dicts are followed (deeper ones are not state dicts and are skipped).
const MAX_WALK_DEPTH: usize = 64;

/// What one [`collect_tensors`] walk may still spend.
struct WalkBudget {
    visits: usize,
    name_bytes: usize,
}

/// Collects the tensors under `v` with dotted names (nested dicts are flattened). Reference
/// cycles are cut and the walk is bounded: a crafted file whose dicts share children (2^60 paths
/// through 60 levels) or whose keys are huge is an error, never an endless walk or a huge list
/// of names.
fn collect_tensors(v: &Value, out: &mut Vec<(String, Value)>) -> Result<(), String> {
    let mut budget = WalkBudget {
        visits: MAX_WALK_VISITS,
        name_bytes: MAX_WALK_NAME_BYTES,
    };
    collect_inner(v, "", out, &mut Vec::new(), &mut budget)
}

fn collect_inner(
    v: &Value,
    prefix: &str,
    out: &mut Vec<(String, Value)>,
    path: &mut Vec<*const std::cell::RefCell<pickle::Dict>>,
    budget: &mut WalkBudget,
) -> Result<(), String> {
    if path.len() > MAX_WALK_DEPTH {
        return Ok(());
    }
    let exhausted = || {
        format!(
            "the file's dicts reference each other more than {MAX_WALK_VISITS} times or build \
             more than {} MiB of tensor names: not a plain weights file (crafted or corrupt)",
            MAX_WALK_NAME_BYTES >> 20
        )
    };
    budget.visits = budget.visits.checked_sub(1).ok_or_else(exhausted)?;
    match v {
        Value::Dict(d) => {
            let ptr = Rc::as_ptr(d);
            if path.contains(&ptr) {
                return Ok(());
            }
            path.push(ptr);
            for (k, child) in d.borrow().entries.iter() {
                let key = k.text();
                let len = prefix.len() + 1 + key.len();
                budget.name_bytes = budget.name_bytes.checked_sub(len).ok_or_else(exhausted)?;
                let name = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                collect_inner(child, &name, out, path, budget)?;
            }
            path.pop();
        }
        Value::Tensor(_) | Value::Bad(_) => out.push((prefix.to_string(), v.clone())),
        _ => {}
    }
    Ok(())
}

/// Training-checkpoint entries tried, in order, when no key is given.
const DEFAULT_KEYS: [&str; 6] = [
    "ema",
    "model",
    "state_dict",
    "model_state_dict",
    "net",
    "module",
];

/// Chooses the tensors to read from a torch pickle's root object.
fn select_torch(
    root: &Value,
    opts: &LoadOptions,
    path: &Path,
    info: &mut SourceInfo,
) -> Result<Vec<(String, Value)>, CheckpointError> {
    let Value::Dict(d) = root else {
        return Err(corrupt(
            path,
            format!(
                "the top-level object is a {}, not a dict of tensors (a whole pickled model? \
                 save model.state_dict() instead)",
                root.type_name()
            ),
        ));
    };
    let d = d.borrow();
    let mut keys: Vec<String> = d.entries.iter().map(|(k, _)| k.text()).collect();
    keys.sort();
    let direct_tensors = d
        .entries
        .iter()
        .filter(|(_, v)| matches!(v, Value::Tensor(_) | Value::Bad(_)))
        .count();
    let mut out = Vec::new();
    if let Some(key) = &opts.key {
        let Some(v) = d.get(key) else {
            let what = if direct_tensors > 0 {
                format!(
                    "the file is a plain state dict ({} entries, e.g. {}), with no entry '{key}'; \
                     load it without a key",
                    keys.len(),
                    keys.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                )
            } else {
                format!("no top-level entry '{key}'; available: {}", keys.join(", "))
            };
            return Err(corrupt(path, what));
        };
        if matches!(v, Value::Tensor(_) | Value::Bad(_)) {
            return Err(corrupt(
                path,
                format!(
                    "'{key}' is a single tensor of a plain state dict, not an entry holding a \
                     state dict; load the file without a key"
                ),
            ));
        }
        collect_tensors(v, &mut out).map_err(|e| corrupt(path, e))?;
        if out.is_empty() {
            return Err(corrupt(
                path,
                format!(
                    "top-level entry '{key}' is a {} holding no tensors; available: {}",
                    v.type_name(),
                    keys.join(", ")
                ),
            ));
        }
        info.key = Some(key.clone());
        info.top_level_keys = keys;
        return Ok(out);
    }
    if direct_tensors > 0 {
        collect_tensors(root, &mut out).map_err(|e| corrupt(path, e))?;
        return Ok(out);
    }
    for key in DEFAULT_KEYS {
        if let Some(v) = d.get(key) {
            collect_tensors(v, &mut out).map_err(|e| corrupt(path, e))?;
            if !out.is_empty() {
                info.key = Some(key.to_string());
                info.top_level_keys = keys;
                return Ok(out);
            }
        }
    }
    // A single entry holding tensors is unambiguous.
    let mut holders: Vec<&str> = Vec::new();
    for (k, v) in &d.entries {
        let mut t = Vec::new();
        collect_tensors(v, &mut t).map_err(|e| corrupt(path, e))?;
        if !t.is_empty() {
            holders.push(match k {
                pickle::Key::Str(s) => s.as_str(),
                _ => "",
            });
        }
    }
    if holders.len() == 1 && !holders[0].is_empty() {
        let key = holders[0].to_string();
        collect_tensors(d.get(&key).expect("present"), &mut out).map_err(|e| corrupt(path, e))?;
        info.key = Some(key);
        info.top_level_keys = keys;
        return Ok(out);
    }
    Err(corrupt(
        path,
        if holders.is_empty() {
            format!(
                "the file holds no tensors (top-level keys: {})",
                keys.join(", ")
            )
        } else {
            format!(
                "cannot tell which entry holds the weights (entries with tensors: {}); choose \
                 one with a key",
                holders.join(", ")
            )
        },
    ))
}

pub(super) const LEGACY_MAGIC: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];

/// The largest `data.pkl` read (a weights file's holds ~100 bytes per tensor).
const MAX_PICKLE_BYTES: u64 = 1 << 28;

pub(super) fn load_torch_zip(
    path: &Path,
    opts: &LoadOptions,
) -> Result<(StateDict, SourceInfo), CheckpointError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let file_len = file.metadata().map_err(|e| io_err(path, e))?.len();
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| corrupt(path, format!("not a readable zip archive: {e}")))?;
    let pkl_name = archive
        .file_names()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.len())
        .map(str::to_string)
        .ok_or_else(|| {
            corrupt(
                path,
                "zip archive without a data.pkl entry: not a torch.save file (a .npz?)",
            )
        })?;
    let prefix = pkl_name[..pkl_name.len() - "data.pkl".len()].to_string();
    if let Ok(mut e) = archive.by_name(&format!("{prefix}byteorder")) {
        let mut s = String::new();
        // A few bytes ("little" / "big"): never decompress more.
        if Read::by_ref(&mut e).take(16).read_to_string(&mut s).is_ok() && s.trim() == "big" {
            return Err(corrupt(
                path,
                "saved on a big-endian machine; big-endian torch files are not supported",
            ));
        }
    }
    let pkl = {
        let mut e = archive
            .by_name(&pkl_name)
            .map_err(|e| corrupt(path, format!("reading {pkl_name}: {e}")))?;
        if e.size() > MAX_PICKLE_BYTES {
            return Err(corrupt(
                path,
                format!(
                    "{pkl_name} declares {} bytes (more than {} MiB): not a weights file's pickle",
                    e.size(),
                    MAX_PICKLE_BYTES >> 20
                ),
            ));
        }
        read_zip_entry(&mut e, file_len).map_err(|e| corrupt(path, e))?
    };
    let loaded = pickle::load(&pkl).map_err(|e| corrupt(path, format!("{pkl_name}: {e}")))?;
    let mut info = SourceInfo::new(path, CheckpointFormat::TorchZip);
    let tensors = select_torch(&loaded.value, opts, path, &mut info)?;
    let mut source = StorageSource::Zip {
        archive,
        prefix,
        file_len,
    };
    let sd = materialize(tensors, &mut source, path, &mut info)?;
    Ok((sd, info))
}

pub(super) fn load_torch_legacy(
    path: &Path,
    buf: &[u8],
    opts: &LoadOptions,
) -> Result<(StateDict, SourceInfo), CheckpointError> {
    let mut pos = 0usize;
    let mut next = |what: &str| -> Result<pickle::Loaded, CheckpointError> {
        let l = pickle::load(&buf[pos..])
            .map_err(|e| corrupt(path, format!("legacy torch file, {what}: {e}")))?;
        pos += l.consumed;
        Ok(l)
    };
    next("magic number")?;
    next("protocol version")?;
    let sys = next("system info")?;
    if let Value::Dict(d) = &sys.value {
        if let Some(Value::Bool(false)) = d.borrow().get("little_endian") {
            return Err(corrupt(
                path,
                "saved on a big-endian machine; not supported",
            ));
        }
    }
    let main = next("main object")?;
    let keys = next("storage key list")?;
    let key_list: Vec<String> = match &keys.value {
        Value::List(l) => l
            .borrow()
            .iter()
            .map(|v| match v {
                Value::Str(s) => Ok(s.to_string()),
                other => Err(corrupt(
                    path,
                    format!("legacy storage key is a {}", other.type_name()),
                )),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(corrupt(
                path,
                format!("legacy storage key list is a {}", other.type_name()),
            ))
        }
    };
    // Raw section: per storage, an i64 element count then the elements.
    let mut table = HashMap::new();
    for key in &key_list {
        let st = main.storages.get(key).ok_or_else(|| {
            corrupt(
                path,
                format!("legacy storage '{key}' is listed but never used"),
            )
        })?;
        let esize = st.elem_size.ok_or_else(|| {
            corrupt(
                path,
                format!("legacy storage '{key}' has unknown type {}", st.class),
            )
        })?;
        let head = buf
            .get(pos..pos + 8)
            .ok_or_else(|| corrupt(path, format!("file ends before storage '{key}'")))?;
        let n = i64::from_le_bytes(head.try_into().expect("8 bytes"));
        let len = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(esize))
            .ok_or_else(|| corrupt(path, format!("storage '{key}' has a bad size {n}")))?;
        pos += 8;
        if buf.len() - pos < len {
            return Err(corrupt(
                path,
                format!(
                    "storage '{key}' needs {len} bytes but only {} remain (file truncated)",
                    buf.len() - pos
                ),
            ));
        }
        table.insert(key.clone(), (pos, len));
        pos += len;
    }
    let mut info = SourceInfo::new(path, CheckpointFormat::TorchLegacy);
    let tensors = select_torch(&main.value, opts, path, &mut info)?;
    let mut source = StorageSource::Legacy { buf, table };
    let sd = materialize(tensors, &mut source, path, &mut info)?;
    Ok((sd, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cyclic_and_exponential_references_terminate() {
        // d = {}; d['a'] = d
        let p: &[u8] = b"\x80\x02}q\x00X\x01\x00\x00\x00ah\x00s.";
        let l = pickle::load(p).unwrap();
        let mut out = Vec::new();
        collect_tensors(&l.value, &mut out).unwrap();
        assert!(out.is_empty());
        // d0 = {}; d_{i+1} = {'a': d_i, 'b': d_i} for 60 levels: 2^60 paths.
        let mut p = b"\x80\x02}q\x00".to_vec();
        for i in 0..60u8 {
            p.extend_from_slice(b"}q");
            p.push(i + 1);
            p.extend_from_slice(b"(X\x01\x00\x00\x00ah");
            p.push(i);
            p.extend_from_slice(b"X\x01\x00\x00\x00bh");
            p.push(i);
            p.push(b'u');
        }
        p.push(b'.');
        let l = pickle::load(&p).unwrap();
        // The walk stops at its budget with an error instead of a silently partial result.
        let err = collect_tensors(&l.value, &mut out).unwrap_err();
        assert!(err.contains("reference each other"), "{err}");
    }

    #[test]
    fn deep_nesting_is_read_and_dropped_without_recursion() {
        // On a 256 KiB stack: any recursion per nesting level would overflow it.
        let run = || {
            let n = 100_000usize;
            let mut cases = Vec::new();
            // MARK ×n then LIST ×n: n nested lists.
            let mut p = b"\x80\x02".to_vec();
            p.extend(std::iter::repeat_n(b'(', n));
            p.extend(std::iter::repeat_n(b'l', n));
            p.push(b'.');
            cases.push(p);
            // n nested 1-tuples.
            let mut p = b"\x80\x02N".to_vec();
            p.extend(std::iter::repeat_n(0x85u8, n));
            p.push(b'.');
            cases.push(p);
            // n nested dicts {'a': {'a': ...}}.
            let mut p = b"\x80\x02".to_vec();
            for _ in 0..n {
                p.extend_from_slice(b"(X\x01\x00\x00\x00a");
            }
            p.push(b'}');
            p.extend(std::iter::repeat_n(b'd', n));
            p.push(b'.');
            cases.push(p);
            // A chain built through the memo, top-down: list i is appended into list i-1 after
            // both exist, so no depth is known when each container is made.
            let mut p = b"\x80\x02]r\x00\x00\x00\x00".to_vec();
            for i in 1..n as u32 {
                p.push(b']');
                p.push(b'r');
                p.extend_from_slice(&i.to_le_bytes());
                p.push(b'j');
                p.extend_from_slice(&(i - 1).to_le_bytes());
                p.push(b'j');
                p.extend_from_slice(&i.to_le_bytes());
                p.extend_from_slice(b"a00");
            }
            p.push(b'.');
            cases.push(p);
            // n nested _rebuild_from_type_v2 applications.
            let mut p = b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\nq\x00h\x00".to_vec();
            for _ in 0..n {
                p.extend_from_slice(b"(h\x00N");
            }
            p.push(b')');
            p.extend(std::iter::repeat_n(&b"Nt"[..], n).flatten());
            p.extend_from_slice(b"R.");
            cases.push(p);
            for (i, p) in cases.iter().enumerate() {
                let l = pickle::load(p).unwrap_or_else(|e| panic!("case {i}: {e}"));
                let mut out = Vec::new();
                collect_tensors(&l.value, &mut out).unwrap();
                drop(l);
            }
        };
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(run)
            .unwrap()
            .join()
            .unwrap();
    }
}
