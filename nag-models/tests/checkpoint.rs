//! Checkpoint and .npy files: formats written by torch / numpy / safetensors (fixtures made by
//! `tests/fixtures/make_fixtures.py`), error handling on damaged files, and the parity of the
//! DiT forward with an independent numpy implementation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Bool, Int, Tensor, TensorData};
use burn_ndarray::NdArray;
use nag_models::checkpoint::{
    load_model_files, load_state_dict, model_file_paths, save_model_files, save_safetensors,
    CheckpointFormat, LoadOptions, SourceInfo,
};
use nag_models::npy::{self, NpyArray, NpyData, NpyError};
use nag_models::{CheckpointError, Dit, DitHints, StateDict};

mod common;

type B = NdArray<f32>;

use common::fixture;

fn scratch(test: &str) -> PathBuf {
    common::scratch("ckpt", test)
}

fn load(path: &Path) -> (StateDict, SourceInfo) {
    load_state_dict(path, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn values(sd: &StateDict, key: &str) -> (Vec<usize>, Vec<f32>) {
    let t = sd
        .get(key)
        .unwrap_or_else(|| panic!("no key {key} in {:?}", sd.keys().collect::<Vec<_>>()));
    (t.shape.clone(), t.data.clone())
}

// ---------------------------------------------------------------------------------------------
// safetensors

#[test]
fn safetensors_tiny_dit_loads() {
    let (sd, info) = load(&fixture("tiny_dit.safetensors"));
    assert_eq!(info.format, CheckpointFormat::Safetensors);
    assert_eq!(info.key, None);
    assert!(info.converted.is_empty());
    assert_eq!(info.metadata.get("format").map(String::as_str), Some("pt"));
    assert_eq!(sd.get("pos_embed").unwrap().shape, vec![1, 16, 16]);
    assert_eq!(
        sd.get("x_embedder.proj.weight").unwrap().shape,
        vec![16, 4, 2, 2]
    );
    assert_eq!(sd.get("t_embedder.null").unwrap().shape, vec![16]);
    assert_eq!(
        sd.get("final_layer.linear.weight").unwrap().shape,
        vec![32, 16]
    );
    assert_eq!(
        sd.get("y_embedder.embedding_table.weight").unwrap().shape,
        vec![4, 16]
    );
    // pos, x_embedder (2), t_embedder (4 + null), label table, 10 per block, final layer (4).
    assert_eq!(sd.len(), 1 + 2 + 5 + 1 + 2 * 10 + 4);
    // The position table is the fixed sin-cos table the model builds itself.
    let pos = nag_models::dit::sincos_pos_embed_2d(16, 4);
    let (_, got) = values(&sd, "pos_embed");
    assert!(pos.iter().zip(&got).all(|(a, b)| (a - b).abs() < 1e-6));
}

#[test]
fn safetensors_mixed_dtypes_and_prefix_selection() {
    let path = fixture("mixed.safetensors");
    let (sd, info) = load_state_dict(&path, &LoadOptions::with_key("ema")).unwrap();
    assert_eq!(info.key.as_deref(), Some("ema"));
    assert_eq!(sd.len(), 4);
    assert_eq!(values(&sd, "h"), (vec![4], vec![0.5, -1.25, 2.0, 3.0]));
    assert_eq!(values(&sd, "b"), (vec![3], vec![1.5, -2.0, 0.15625]));
    assert_eq!(values(&sd, "d"), (vec![2, 2], vec![1e-3, 2.0, 3.0, 4.0]));
    assert_eq!(values(&sd, "i"), (vec![], vec![7.0]));
    let conv: Vec<(&str, usize)> = info
        .converted
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(conv, vec![("bf16", 1), ("f16", 1), ("f64", 1), ("i64", 1)]);
    assert!(info.to_string().contains("converted to f32"), "{info}");

    let (sd, _) = load_state_dict(&path, &LoadOptions::with_key("model")).unwrap();
    assert_eq!(values(&sd, "h").1, vec![9.0; 4]);
    // No key: everything, flat.
    let (sd, _) = load(&path);
    assert_eq!(sd.len(), 5);
    let err = load_state_dict(&path, &LoadOptions::with_key("nope")).unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("mixed.safetensors") && msg.contains("ema") && msg.contains("model"),
        "{msg}"
    );
}

#[test]
fn save_safetensors_round_trip_and_atomic() {
    let dir = scratch("save");
    let (sd, _) = load(&fixture("tiny_dit.safetensors"));
    let path = dir.join("copy.safetensors");
    let mut meta = BTreeMap::new();
    meta.insert("epoch".to_string(), "3".to_string());
    save_safetensors(&sd, &path, &meta).unwrap();
    let (back, info) = load(&path);
    assert_eq!(back, sd);
    assert_eq!(info.metadata.get("epoch").map(String::as_str), Some("3"));
    // Readable by the reference implementation, with 8-byte aligned data.
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(n % 8, 0);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), sd.len());
    assert_eq!(
        st.tensor("t_embedder.null").unwrap().dtype(),
        safetensors::Dtype::F32
    );
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["copy.safetensors".to_string()]);
    // A directory that does not exist: an Io error naming the file.
    let bad = dir.join("missing-dir/x.safetensors");
    let err = save_safetensors(&sd, &bad, &meta).unwrap_err();
    assert!(
        matches!(err, CheckpointError::Io { .. }) && err.to_string().contains("x.safetensors"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn model_files_round_trip() {
    let dir = scratch("model-files");
    let (sd, _) = load(&fixture("tiny_dit.safetensors"));
    let config = r#"{"kind":"dit","hidden_size":16,"num_heads":2}"#;
    let (w, c) = save_model_files(&sd, config, &dir.join("ckpt-0001")).unwrap();
    assert_eq!(w, dir.join("ckpt-0001.safetensors"));
    assert_eq!(c, dir.join("ckpt-0001.json"));
    for p in [dir.join("ckpt-0001"), w.clone(), c.clone()] {
        let (back, json) = load_model_files(&p).unwrap();
        assert_eq!(back, sd);
        assert_eq!(json.trim(), config);
    }
    // The weights alone read as an ordinary checkpoint, reference names plus t_embedder.null.
    let (plain, info) = load(&w);
    assert_eq!(plain, sd);
    assert!(info.metadata.contains_key("nag_config"));
    // Without the .json, the copy in the safetensors metadata is used.
    std::fs::remove_file(&c).unwrap();
    assert_eq!(load_model_files(&w).unwrap().1, config);
    // A directory.
    let sub = dir.join("export/");
    save_model_files(&sd, config, &sub).unwrap();
    assert_eq!(
        model_file_paths(&sub).0,
        dir.join("export/model.safetensors")
    );
    assert_eq!(load(&dir.join("export")).0, sd);
    // Invalid JSON is refused.
    assert!(save_model_files(&sd, "{not json", &dir.join("bad")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// torch files

/// The values make_fixtures.py stores in train_ckpt.pt, shifted by `offset` (ema: 100).
fn check_format_tensors(sd: &StateDict, offset: f32) {
    let o = offset;
    assert_eq!(
        values(sd, "w"),
        (vec![2, 3], (0..6).map(|i| i as f32 + o).collect())
    );
    assert_eq!(
        values(sd, "h"),
        (vec![4], vec![0.5 + o, -1.25 + o, 2.0 + o, 3.0 + o])
    );
    let b: Vec<f32> = vec![1.5 + o, -2.0 + o, 0.15625 + o];
    let (shape, got) = values(sd, "b");
    assert_eq!(shape, vec![3]);
    // bf16 keeps 8 significant bits: compare after the same rounding.
    for (g, e) in got.iter().zip(&b) {
        assert!((g - e).abs() <= e.abs() / 128.0, "bf16 {g} vs {e}");
    }
    let (shape, d) = values(sd, "d");
    assert_eq!(shape, vec![2, 2]);
    assert!(d
        .iter()
        .zip([1e-3 + o, 2.0 + o, 3.0 + o, 4.0 + o])
        .all(|(a, b)| (a - b).abs() < 1e-6));
    // Transposed view of a (2,3) tensor: [[10,13],[11,14],[12,15]] + offset.
    let t: Vec<f32> = [10., 13., 11., 14., 12., 15.]
        .iter()
        .map(|v| v + o)
        .collect();
    assert_eq!(values(sd, "t"), (vec![3, 2], t));
    // Slice [3:7] of arange(10) + 20.
    assert_eq!(
        values(sd, "o"),
        (
            vec![4],
            [23., 24., 25., 26.].iter().map(|v| v + o).collect()
        )
    );
    assert_eq!(values(sd, "n"), (vec![], vec![7.0]));
    assert_eq!(sd.len(), 7);
}

#[test]
fn torch_training_checkpoint_picks_ema() {
    let path = fixture("train_ckpt.pt");
    let (sd, info) = load(&path);
    assert_eq!(info.format, CheckpointFormat::TorchZip);
    assert_eq!(info.key.as_deref(), Some("ema"));
    assert_eq!(info.top_level_keys, vec!["args", "ema", "model", "opt"]);
    check_format_tensors(&sd, 100.0);
    let conv: Vec<&str> = info.converted.keys().map(String::as_str).collect();
    assert_eq!(conv, vec!["bf16", "f16", "f64", "i64"]);
    let text = info.to_string();
    assert!(
        text.contains("'ema'") && text.contains("train_ckpt.pt"),
        "{text}"
    );
}

#[test]
fn torch_training_checkpoint_key_model() {
    let path = fixture("train_ckpt.pt");
    let (sd, info) = load_state_dict(&path, &LoadOptions::with_key("model")).unwrap();
    assert_eq!(info.key.as_deref(), Some("model"));
    check_format_tensors(&sd, 0.0);
    // The optimizer state is readable too (its tensors, flattened), though never a default.
    let (opt, _) = load_state_dict(&path, &LoadOptions::with_key("opt")).unwrap();
    assert!(
        opt.keys().any(|k| k.starts_with("state.0.exp_avg")),
        "{:?}",
        opt.keys().collect::<Vec<_>>()
    );
}

#[test]
fn torch_unknown_key_lists_available() {
    let path = fixture("train_ckpt.pt");
    let err = load_state_dict(&path, &LoadOptions::with_key("emma")).unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    for k in ["emma", "args, ema, model, opt", "train_ckpt.pt"] {
        assert!(msg.contains(k), "{msg}");
    }
    // A key naming a non-tensor entry.
    let msg = load_state_dict(&path, &LoadOptions::with_key("args"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("args") && msg.contains("no tensors"), "{msg}");
}

#[test]
fn torch_legacy_plain_ddp() {
    let path = fixture("plain_legacy.pt");
    let (sd, info) = load(&path);
    assert_eq!(info.format, CheckpointFormat::TorchLegacy);
    assert_eq!(info.key, None);
    assert_eq!(info.stripped_prefix.as_deref(), Some("module."));
    assert_eq!(
        values(&sd, "w"),
        (vec![2, 3], (0..6).map(|i| i as f32).collect())
    );
    assert_eq!(
        values(&sd, "t"),
        (vec![3, 2], vec![10., 13., 11., 14., 12., 15.])
    );
    assert_eq!(info.converted.get("f64"), Some(&1));
    // A plain state dict has no entry "ema".
    let msg = load_state_dict(&path, &LoadOptions::with_key("ema"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("plain state dict"), "{msg}");
    let msg = load_state_dict(&path, &LoadOptions::with_key("module.w"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("single tensor"), "{msg}");
}

#[test]
fn format_is_detected_from_content_not_name() {
    let dir = scratch("detect");
    for (src, name, format) in [
        (
            "train_ckpt.pt",
            "weights.safetensors",
            CheckpointFormat::TorchZip,
        ),
        (
            "tiny_dit.safetensors",
            "weights.pt",
            CheckpointFormat::Safetensors,
        ),
        (
            "plain_legacy.pt",
            "weights.bin",
            CheckpointFormat::TorchLegacy,
        ),
    ] {
        let p = dir.join(name);
        std::fs::copy(fixture(src), &p).unwrap();
        assert_eq!(load(&p).1.format, format, "{src} as {name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Damaged files

fn expect_corrupt(path: &Path, what: &str) {
    match load_state_dict(path, &LoadOptions::default()) {
        Err(e @ CheckpointError::Corrupt { .. }) => {
            let name = path.file_name().unwrap().to_string_lossy();
            assert!(
                e.to_string().contains(&*name),
                "{what}: message lacks the path: {e}"
            );
        }
        Err(e) => panic!("{what}: expected Corrupt, got {e:?}"),
        Ok((sd, _)) => panic!("{what}: loaded {} tensors from a damaged file", sd.len()),
    }
}

#[test]
fn missing_file_is_io_error_naming_path() {
    let p = Path::new("/nonexistent/dir/model.pt");
    let err = load_state_dict(p, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, CheckpointError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/dir/model.pt"),
        "{err}"
    );
    let err = npy::read_npy(Path::new("/nonexistent/x.npy")).unwrap_err();
    assert!(matches!(err, NpyError::Io { .. }) && err.to_string().contains("/nonexistent/x.npy"));
}

#[test]
fn truncated_and_garbage_files_are_corrupt() {
    let dir = scratch("damaged");
    for src in [
        "train_ckpt.pt",
        "plain_legacy.pt",
        "tiny_dit.safetensors",
        "mixed.safetensors",
    ] {
        let bytes = std::fs::read(fixture(src)).unwrap();
        let ext = Path::new(src)
            .extension()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // Every prefix of the small files, a spread of prefixes of the large one.
        let step = (bytes.len() / 400).max(1);
        let mut cuts: Vec<usize> = (0..bytes.len()).step_by(step).collect();
        cuts.extend([1, 7, 8, 9, 15, 16, bytes.len() - 1]);
        for cut in cuts {
            let p = dir.join(format!("cut.{ext}"));
            std::fs::write(&p, &bytes[..cut]).unwrap();
            expect_corrupt(&p, &format!("{src} cut at {cut}"));
        }
        // Flipped bytes inside the data (checksummed zip entries, sized storages).
        if src.ends_with(".pt") {
            let mut b = bytes.clone();
            let mid = b.len() / 2;
            for x in &mut b[mid..mid + 16] {
                *x ^= 0x5a;
            }
            let p = dir.join(format!("flip.{ext}"));
            std::fs::write(&p, &b).unwrap();
            // A flip may land in unused bytes; it must never panic.
            let _ = load_state_dict(&p, &LoadOptions::default());
        }
    }
    // Random bytes, under every name.
    let mut s = 0x9e3779b97f4a7c15u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect();
    for name in ["noise.pt", "noise.safetensors", "noise.bin"] {
        let p = dir.join(name);
        std::fs::write(&p, &noise).unwrap();
        expect_corrupt(&p, name);
    }
    for (name, bytes) in [
        ("empty.pt", Vec::new()),
        ("pickle.pt", b"\x80\x02}q\x00.".to_vec()),
        (
            "text.safetensors",
            b"hello, world, this is not a tensor file".to_vec(),
        ),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, &bytes).unwrap();
        expect_corrupt(&p, name);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// .npy

#[test]
fn npy_fixtures_written_by_numpy() {
    let r = |n: &str| npy::read_npy(&fixture(n)).unwrap_or_else(|e| panic!("{e}"));
    let a = r("npy_f8_v2.npy");
    assert_eq!(
        (a.shape.clone(), a.data.clone()),
        (vec![1, 3], NpyData::F32(vec![1.5, -2.25, 3.0]))
    );
    let a = r("npy_f4_v3.npy");
    assert_eq!(a.shape, vec![3, 2]);
    assert_eq!(a.into_f32().unwrap(), vec![0.0, 0.25, 0.5, 0.75, 1.0, 1.25]);
    let a = r("npy_i4.npy");
    assert_eq!(a.data, NpyData::I64(vec![1, -2, 300]));
    assert_eq!(a.into_f32().unwrap(), vec![1.0, -2.0, 300.0]);
    let a = r("npy_u1.npy");
    assert_eq!(a.into_bool().unwrap(), vec![false, true, true, false]);
    let a = r("npy_b1.npy");
    assert_eq!(
        (a.shape.clone(), a.into_bool().unwrap()),
        (vec![2, 2], vec![true, false, false, true])
    );
    assert_eq!(r("npy_f4_big.npy").into_f32().unwrap(), vec![1.0, -0.5]);
    let a = r("npy_scalar.npy");
    assert_eq!((a.shape.clone(), a.data), (vec![], NpyData::F32(vec![2.5])));
    let y = r("dit_y.npy");
    assert_eq!(y.clone().into_i64().unwrap(), vec![2, 0]);
    assert!(y.into_bool().is_err(), "2 is not a bool");
    let err = npy::read_npy(&fixture("npy_fortran.npy")).unwrap_err();
    assert!(matches!(err, NpyError::Unsupported { .. }), "{err}");
    assert!(
        err.to_string().contains("npy_fortran.npy") && err.to_string().contains("Fortran"),
        "{err}"
    );
}

#[test]
fn npy_write_read_round_trip() {
    let dir = scratch("npy");
    let p = dir.join("out.npy");
    let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 3.0).collect();
    npy::write_npy_f32(&p, &[2, 3, 4], &data).unwrap();
    let a = npy::read_npy(&p).unwrap();
    assert_eq!(a.shape, vec![2, 3, 4]);
    assert_eq!(a.into_f32().unwrap(), data);
    // Header padded so the data is 64-byte aligned, as numpy does.
    let bytes = std::fs::read(&p).unwrap();
    assert_eq!((bytes.len() - 24 * 4) % 64, 0);
    for arr in [
        NpyArray::new(vec![3], NpyData::I64(vec![-1, 0, 1 << 40])).unwrap(),
        NpyArray::new(vec![2], NpyData::Bool(vec![true, false])).unwrap(),
    ] {
        npy::write_npy(&p, &arr).unwrap();
        assert_eq!(npy::read_npy(&p).unwrap(), arr);
    }
    assert!(npy::write_npy_f32(&p, &[2, 2], &[1.0]).is_err());
    // Truncations of a written file are errors naming it.
    let bytes = std::fs::read(&p).unwrap();
    for cut in 0..bytes.len() {
        let q = dir.join("cut.npy");
        std::fs::write(&q, &bytes[..cut]).unwrap();
        let e = npy::read_npy(&q).unwrap_err();
        assert!(e.to_string().contains("cut.npy"), "{e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// DiT parity with the numpy reference

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let max_diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let max_abs = want.iter().map(|v| v.abs()).fold(0.0, f32::max);
    max_diff / max_abs
}

/// Builds the DiT from `sd` and checks its forward (without and with the null-t mask) against
/// the numpy reference outputs.
fn check_parity(sd: &StateDict) {
    let device = Default::default();
    let hints = DitHints {
        num_heads: Some(2),
        ..DitHints::default()
    };
    let (model, report) = Dit::<B>::from_state_dict(sd, &hints, &device).unwrap();
    assert!(!report.null_timestep_initialised);
    let cfg = model.config();
    assert_eq!(
        (
            cfg.input_size,
            cfg.patch_size,
            cfg.in_channels,
            cfg.hidden_size,
            cfg.depth,
            cfg.num_heads,
            cfg.num_classes
        ),
        (8, 2, 4, 16, 2, 2, 3)
    );
    assert!(cfg.learn_sigma);

    let read = |n: &str| npy::read_npy(&fixture(n)).unwrap();
    let x = read("dit_x.npy");
    let shape: [usize; 4] = x.shape.clone().try_into().unwrap();
    let x = Tensor::<B, 4>::from_data(TensorData::new(x.into_f32().unwrap(), shape), &device);
    let t = Tensor::<B, 1>::from_data(
        TensorData::new(read("dit_t.npy").into_f32().unwrap(), [2]),
        &device,
    );
    let y = Tensor::<B, 1, Int>::from_data(
        TensorData::new(read("dit_y.npy").into_i64().unwrap(), [2]),
        &device,
    );
    let mask = Tensor::<B, 1, Bool>::from_data(
        TensorData::new(read("dit_null_t.npy").into_bool().unwrap(), [2]),
        &device,
    );
    for (null_t, expected) in [
        (None, "dit_expected.npy"),
        (Some(mask), "dit_expected_null_t.npy"),
    ] {
        let want = read(expected);
        let out = model
            .try_forward(x.clone(), t.clone(), y.clone(), null_t, None)
            .unwrap();
        assert_eq!(out.dims().to_vec(), want.shape);
        let got = out.into_data().to_vec::<f32>().unwrap();
        let err = rel_err(&got, &want.into_f32().unwrap());
        assert!(err < 1e-4, "{expected}: relative error {err}");
    }
}

#[test]
fn dit_forward_matches_numpy_reference() {
    let (sd, _) = load(&fixture("tiny_dit.safetensors"));
    check_parity(&sd);
}

/// The tiny DiT written by torch in several layouts (`make_fixtures.py --torch-extra DIR`,
/// not checked in: ~0.5 MB). Run with `NAG_TORCH_EXTRA=DIR cargo test -p nag-models --test
/// checkpoint -- --ignored`.
#[test]
#[ignore = "needs NAG_TORCH_EXTRA=<dir from make_fixtures.py --torch-extra>"]
fn torch_dit_variants() {
    let dir = PathBuf::from(std::env::var("NAG_TORCH_EXTRA").expect("set NAG_TORCH_EXTRA"));
    let (reference, _) = load(&fixture("tiny_dit.safetensors"));
    for (file, format, key, prefix) in [
        (
            "dit_train.pt",
            CheckpointFormat::TorchZip,
            Some("ema"),
            None,
        ),
        ("dit_legacy.pt", CheckpointFormat::TorchLegacy, None, None),
        (
            "dit_ddp.pt",
            CheckpointFormat::TorchZip,
            None,
            Some("module."),
        ),
        ("dit_views.pt", CheckpointFormat::TorchZip, None, None),
    ] {
        let (sd, info) = load(&dir.join(file));
        assert_eq!(info.format, format, "{file}");
        assert_eq!(info.key.as_deref(), key, "{file}");
        assert_eq!(info.stripped_prefix.as_deref(), prefix, "{file}");
        assert!(info.converted.is_empty(), "{file}: {info}");
        assert!(
            sd == reference,
            "{file}: state dict differs from tiny_dit.safetensors"
        );
    }
    check_parity(&load(&dir.join("dit_train.pt")).0);
    let (model, _) =
        load_state_dict(&dir.join("dit_train.pt"), &LoadOptions::with_key("model")).unwrap();
    let (k, t) = model.tensors.iter().next().unwrap();
    assert_eq!(t.data[0], reference.get(k).unwrap().data[0] + 0.5);
    // bf16: same keys, values within bf16 rounding.
    let (bf, info) = load(&dir.join("dit_bf16.pt"));
    assert_eq!(info.converted.values().sum::<usize>(), reference.len());
    for (k, t) in &reference.tensors {
        let b = bf.get(k).unwrap();
        assert_eq!(b.shape, t.shape);
        assert!(
            b.data
                .iter()
                .zip(&t.data)
                .all(|(a, r)| (a - r).abs() <= r.abs() / 128.0 + 1e-30),
            "{k}"
        );
    }
}
