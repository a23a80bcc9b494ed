//! Bounded, seeded mutation fuzzing of the dataset readers that images do not cover: IDX
//! (MNIST-style), latents `.safetensors`, and latent stores (`manifest.json`, `classes.json`,
//! shards). Every mutated input must give an `Err` or a dataset whose every item reads as
//! `Ok`/`Err`, never a panic.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};

use nag_train::data::idx::{encode_idx_u8, parse_idx};
use nag_train::data::latent_store::write_synthetic;
use nag_train::data::latents::write_latents_safetensors;
use nag_train::data::{stream_rng, DataOptions, Dataset, LatentDataset, LatentStore};

/// The mutations' randomness: rand's seeded `StdRng`.
struct Rng(StdRng);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n.max(1))
    }
}

/// One to four edits: bit flips, interesting bytes, truncation, duplicated or deleted ranges.
fn mutate(bytes: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            b.push(0);
        }
        let i = rng.below(b.len());
        match rng.below(6) {
            0 => b[i] ^= 1 << rng.below(8),
            1 => b[i] = [0x00, 0xFF, 0x7F, 0x80, b'9', b'-'][rng.below(6)],
            2 => b.truncate(i),
            3 => {
                let j = (i + rng.below(16)).min(b.len());
                let slice = b[i..j].to_vec();
                b.splice(i..i, slice);
            }
            4 => {
                let j = (i + rng.below(8)).min(b.len());
                b.drain(i..j);
            }
            _ => {
                let v = [u32::MAX, 1 << 31, 1 << 20, 0][rng.below(4)];
                let end = (i + 4).min(b.len());
                b[i..end].copy_from_slice(&v.to_be_bytes()[..end - i]);
            }
        }
    }
    b
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nag-fuzz-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Reads every item of `d` (each may fail, none may panic).
fn read_all(d: &dyn Dataset) {
    for i in 0..d.len().min(64) {
        let _ = d.item(i, &mut stream_rng(0, 1, i as u64));
    }
}

fn run(name: &str, cases: usize, mut one: impl FnMut(usize, &mut Rng)) {
    for case in 0..cases {
        let mut rng = Rng(StdRng::seed_from_u64(case as u64));
        let result = catch_unwind(AssertUnwindSafe(|| one(case, &mut rng)));
        assert!(result.is_ok(), "{name}: case {case} panicked");
    }
}

#[test]
fn idx_mutations_are_errors_or_consistent_arrays() {
    let pixels: Vec<u8> = (0..3 * 4 * 5).map(|i| i as u8).collect();
    let valid = encode_idx_u8(&[3, 4, 5], &pixels);
    run("idx", 4000, |_, rng| {
        let bytes = mutate(&valid, rng);
        if let Ok(a) = parse_idx(&bytes, Path::new("fuzz.idx")) {
            let n: usize = a.dims.iter().product();
            let len = match &a.data {
                nag_train::data::idx::IdxData::U8(v) => v.len(),
                nag_train::data::idx::IdxData::I64(v) => v.len(),
                nag_train::data::idx::IdxData::F64(v) => v.len(),
            };
            assert_eq!(n, len, "dims {:?}", a.dims);
        }
    });
    // Dimensions whose product overflows are an error, not a panic.
    let mut huge = vec![0, 0, 0x08, 3];
    for _ in 0..3 {
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
    }
    assert!(parse_idx(&huge, Path::new("huge.idx")).is_err());
}

#[test]
fn latents_safetensors_mutations_are_errors_or_readable() {
    let dir = temp("latents");
    let valid_path = dir.join("valid.safetensors");
    let latents: Vec<f32> = (0..2 * 4 * 2 * 2).map(|i| i as f32 * 0.1).collect();
    write_latents_safetensors(&valid_path, &latents, [2, 4, 2, 2], &[0, 1]).unwrap();
    let valid = std::fs::read(&valid_path).unwrap();
    let path = dir.join("fuzz.safetensors");
    run("latents", 1500, |_, rng| {
        std::fs::write(&path, mutate(&valid, rng)).unwrap();
        if let Ok(d) = LatentDataset::open(&path, &DataOptions::default()) {
            read_all(&d);
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn latent_store_mutations_are_errors_or_readable() {
    let dir = temp("store");
    let valid = dir.join("valid");
    write_synthetic(&valid, 6, [4, 2, 2], 3, 4, 5, &mut |_| {}).unwrap();
    let files: Vec<String> = std::fs::read_dir(&valid)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let store = dir.join("fuzz");
    run("store", 1200, |_, rng| {
        let _ = std::fs::remove_dir_all(&store);
        std::fs::create_dir_all(&store).unwrap();
        let victim = rng.below(files.len());
        for (k, f) in files.iter().enumerate() {
            let bytes = std::fs::read(valid.join(f)).unwrap();
            let bytes = if k == victim {
                mutate(&bytes, rng)
            } else {
                bytes
            };
            std::fs::write(store.join(f), bytes).unwrap();
        }
        if let Ok(d) = LatentStore::open(&store, &DataOptions::default()) {
            read_all(&d);
        }
    });
    // A manifest declaring 2^60 items (and shards) is an error, not a 2^63-byte allocation.
    let text = std::fs::read_to_string(valid.join("manifest.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut hostile = json.clone();
    hostile["count"] = serde_json::json!(1u64 << 60);
    for shard in hostile["shards"].as_array_mut().unwrap() {
        shard["count"] = serde_json::json!(1u64 << 60);
    }
    std::fs::write(store.join("manifest.json"), hostile.to_string()).unwrap();
    for f in files.iter().filter(|f| *f != "manifest.json") {
        std::fs::copy(valid.join(f), store.join(f)).unwrap();
    }
    let r = catch_unwind(AssertUnwindSafe(|| {
        LatentStore::open(&store, &DataOptions::default()).map(|_| ())
    }));
    assert!(
        matches!(r, Ok(Err(_))),
        "a 2^60-item manifest must be refused"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
