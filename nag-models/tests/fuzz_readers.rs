//! Bounded, deterministic mutation fuzzing of every file reader in nag-models: the torch pickle
//! reader (zip `data.pkl` and legacy files), `.npy`, `.npz`, safetensors and the diffusers VAE
//! `config.json`.
//!
//! Each reader starts from small valid files (committed fixtures or files built here) and parses
//! a few thousand seeded mutations of them (bit flips, interesting bytes and integers, truncation,
//! duplicated, inserted and deleted slices, plus format-aware edits of headers and pickles). Every
//! parse must return `Err` or a consistent `Ok`: a panic is caught and reported with the reader,
//! the case number and the mutations, and a counting global allocator checks that no parse needs
//! more than a small multiple of its input (a request over `HARD_LIMIT` aborts the process
//! after printing the case). A stack overflow aborts the process too; rerun with
//! `NAG_FUZZ_VERBOSE=1` to print each case before it runs. `NAG_FUZZ_SCALE=k` multiplies the
//! number of cases (default 1; the suite takes a few seconds in a debug build);
//! `NAG_FUZZ_CASE=n` runs case `n` only (of the readers selected by the test filter).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use nag_models::checkpoint::{load_state_dict, LoadOptions};
use nag_models::npy::{self, NpyArray, NpyData};
use nag_models::npz::Npz;
use nag_models::{StateDict, VaeConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------------
// Counting allocator

/// Largest single allocation allowed; a bigger request prints the case and aborts (1 GiB, or
/// `NAG_FUZZ_HARD_LIMIT` bytes to find where a smaller allocation comes from).
static HARD_LIMIT: AtomicUsize = AtomicUsize::new(1 << 30);

/// Per-thread allocation accounting (tests run on several threads).
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    /// The current case: reader index << 32 | case number (u64::MAX when outside a case).
    static CASE: Cell<u64> = const { Cell::new(u64::MAX) };
}

fn account(delta: isize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get() + delta;
        l.set(v);
        let _ = PEAK.try_with(|p| {
            if v > p.get() {
                p.set(v)
            }
        });
    });
}

/// Writes "huge allocation of N bytes in case R#I" without allocating.
fn report_huge(size: usize) {
    let case = CASE.try_with(Cell::get).unwrap_or(u64::MAX);
    let mut buf = [0u8; 160];
    let mut n = 0;
    let mut put = |s: &[u8], n: &mut usize| {
        for &b in s {
            if *n < buf.len() {
                buf[*n] = b;
                *n += 1;
            }
        }
    };
    fn digits(mut v: u64, out: &mut [u8; 20]) -> usize {
        let mut i = out.len();
        loop {
            i -= 1;
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                return i;
            }
        }
    }
    let mut d = [0u8; 20];
    put(b"\nfuzz_readers: allocation of ", &mut n);
    let i = digits(size as u64, &mut d);
    put(&d[i..], &mut n);
    put(b" bytes in reader ", &mut n);
    let i = digits(case >> 32, &mut d);
    put(&d[i..], &mut n);
    put(b" case ", &mut n);
    let i = digits(case & 0xffff_ffff, &mut d);
    put(&d[i..], &mut n);
    put(b"\n", &mut n);
    let _ = std::io::stderr().write_all(&buf[..n]);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > HARD_LIMIT.load(Ordering::Relaxed) {
            report_huge(layout.size());
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > HARD_LIMIT.load(Ordering::Relaxed) {
            report_huge(layout.size());
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        account(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > HARD_LIMIT.load(Ordering::Relaxed) {
            report_huge(new_size);
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            account(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

// ---------------------------------------------------------------------------------------------
// Mutations

/// Byte values that tend to hit boundaries.
const BYTES: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff, b'\n', b'('];

/// Integers that tend to hit boundaries, written little-endian over 2, 4 or 8 bytes.
const INTS: [u64; 10] = [
    0,
    1,
    0x7f,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 31,
    1 << 40,
    1 << 62,
    u64::MAX,
];

/// Pickle integer opcodes with boundary values (BININT, LONG1, BININT2).
const BIG_INTS: [&[u8]; 7] = [
    b"J\xff\xff\xff\x7f",
    b"J\xff\xff\xff\xff",
    b"J\x00\x00\x00\x00",
    b"\x8a\x08\x00\x00\x00\x00\x00\x01\x00\x00",
    b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"\x8a\x01\xff",
    b"M\xff\xff",
];

/// Numbers written over decimal runs in text (headers, JSON).
const NUMBERS: [&str; 8] = [
    "0",
    "-1",
    "65",
    "4294967296",
    "1099511627776",
    "4611686018427387904",
    "18446744073709551615",
    "1e308",
];

/// Applies 1..=4 random mutations to `data`, returning a description of each. `tokens` are
/// format-specific snippets (opcodes, header fragments) inserted or written over the data.
fn mutate(rng: &mut StdRng, data: &mut Vec<u8>, tokens: &[&[u8]]) -> Vec<String> {
    let mut log = Vec::new();
    for _ in 0..rng.random_range(1..=4) {
        let len = data.len();
        let at = if len == 0 {
            0
        } else {
            rng.random_range(0..len)
        };
        match rng.random_range(0..14) {
            0 if len > 0 => {
                let bit = rng.random_range(0..8);
                data[at] ^= 1 << bit;
                log.push(format!("flip bit {bit} at {at}"));
            }
            1 if len > 0 => {
                let b = BYTES[rng.random_range(0..BYTES.len())];
                data[at] = b;
                log.push(format!("byte {b:#04x} at {at}"));
            }
            2 if len > 0 => {
                let v = INTS[rng.random_range(0..INTS.len())];
                let w = [2usize, 4, 8][rng.random_range(0..3)];
                let bytes = v.to_le_bytes();
                for (k, b) in bytes[..w].iter().enumerate() {
                    if at + k < len {
                        data[at + k] = *b;
                    }
                }
                log.push(format!("u{} {v:#x} at {at}", w * 8));
            }
            3 if len > 0 => {
                data.truncate(at);
                log.push(format!("truncate to {at}"));
            }
            4 if len > 0 => {
                let n = rng.random_range(1..=(len - at).min(64));
                let slice = data[at..at + n].to_vec();
                let to = rng.random_range(0..=len);
                data.splice(to..to, slice);
                log.push(format!("duplicate {n} bytes from {at} at {to}"));
            }
            5 => {
                let n = rng.random_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                data.splice(at..at, bytes);
                log.push(format!("insert {n} random bytes at {at}"));
            }
            6 if len > 0 => {
                let n = rng.random_range(1..=(len - at).min(32));
                data.drain(at..at + n);
                log.push(format!("delete {n} bytes at {at}"));
            }
            7 if len > 0 => {
                let n = rng.random_range(1..=(len - at).min(16));
                let b = BYTES[rng.random_range(0..BYTES.len())];
                data[at..at + n].fill(b);
                log.push(format!("fill {n} bytes with {b:#04x} at {at}"));
            }
            8 | 9 => {
                // A decimal run (text headers, JSON) replaced by a boundary number.
                let runs: Vec<usize> = (0..len)
                    .filter(|&k| {
                        data[k].is_ascii_digit() && (k == 0 || !data[k - 1].is_ascii_digit())
                    })
                    .collect();
                if !runs.is_empty() {
                    let s = runs[rng.random_range(0..runs.len())];
                    let e = (s..len).find(|&k| !data[k].is_ascii_digit()).unwrap_or(len);
                    let big = NUMBERS[rng.random_range(0..NUMBERS.len())];
                    data.splice(s..e, big.bytes());
                    log.push(format!("number at {s} := {big}"));
                }
            }
            10 | 11 => {
                // A pickle BININT1 (`K n`: shapes, strides, offsets, sizes) made big or negative.
                let ks: Vec<usize> = (0..len.saturating_sub(1))
                    .filter(|&k| data[k] == b'K')
                    .collect();
                if !ks.is_empty() {
                    let k = ks[rng.random_range(0..ks.len())];
                    let with = BIG_INTS[rng.random_range(0..BIG_INTS.len())];
                    data.splice(k..k + 2, with.iter().copied());
                    log.push(format!("int at {k} := {with:02x?}"));
                }
            }
            _ if !tokens.is_empty() => {
                let t = tokens[rng.random_range(0..tokens.len())];
                let over = rng.random_bool(0.5) && at + t.len() <= len;
                if over {
                    data[at..at + t.len()].copy_from_slice(t);
                } else {
                    data.splice(at..at, t.iter().copied());
                }
                log.push(format!(
                    "{} token {:?} at {at}",
                    if over { "write" } else { "insert" },
                    String::from_utf8_lossy(t)
                ));
            }
            _ => {}
        }
    }
    log
}

// ---------------------------------------------------------------------------------------------
// The driver

use common::fixture;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nag-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn scale() -> usize {
    std::env::var("NAG_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// Runs `cases` mutations of `seeds` through `parse` (given the mutated bytes), checking for
/// panics and the memory used. `reader` names the reader in reports; `id` keys the seeds.
fn run(
    reader: &str,
    id: u64,
    seeds: &[Vec<u8>],
    tokens: &[&[u8]],
    cases: usize,
    mut parse: impl FnMut(&[u8]) -> Result<(), String>,
) {
    let verbose = std::env::var_os("NAG_FUZZ_VERBOSE").is_some();
    if let Some(limit) = std::env::var("NAG_FUZZ_HARD_LIMIT")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        HARD_LIMIT.store(limit, Ordering::Relaxed);
    }
    let mut failures = Vec::new();
    let (mut ok, mut err) = (0usize, 0usize);
    let t0 = std::time::Instant::now();
    let only: Option<usize> = std::env::var("NAG_FUZZ_CASE")
        .ok()
        .and_then(|s| s.parse().ok());
    for case in 0..cases * scale() {
        if only.is_some_and(|o| o != case) {
            continue;
        }
        let mut rng = StdRng::seed_from_u64(id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ case as u64);
        let base = rng.random_range(0..seeds.len());
        let mut data = seeds[base].clone();
        let log = mutate(&mut rng, &mut data, tokens);
        if verbose {
            eprintln!("{reader} case {case}: seed file {base}, {log:?}");
        }
        CASE.with(|c| c.set(id << 32 | case as u64));
        let start = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(start));
        let result = catch_unwind(AssertUnwindSafe(|| parse(&data)));
        let peak = PEAK.with(Cell::get) - start;
        CASE.with(|c| c.set(u64::MAX));
        let describe = || format!("{reader} case {case} (seed file {base}, mutations {log:?})");
        match result {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) if e.starts_with("INVALID") => failures.push(format!("{}: {e}", describe())),
            Ok(Err(_)) => err += 1,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: panicked: {msg}", describe()));
            }
        }
        let limit = 16 * data.len() as isize + (8 << 20);
        if peak > limit {
            failures.push(format!(
                "{}: used {peak} bytes for a {}-byte input (limit {limit})",
                describe(),
                data.len()
            ));
        }
    }
    eprintln!(
        "{reader}: {} cases ({ok} Ok, {err} Err) in {:.2?}",
        cases * scale(),
        t0.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failing cases, first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Checks a loaded state dict is consistent.
fn check_sd(sd: &StateDict) -> Result<(), String> {
    for (k, t) in &sd.tensors {
        let n = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("INVALID: {k}: shape {:?} overflows", t.shape))?;
        if n != t.data.len() {
            return Err(format!(
                "INVALID: {k}: {} values for {:?}",
                t.data.len(),
                t.shape
            ));
        }
    }
    Ok(())
}

/// Loads `bytes` written to `path` with each of `keys`.
fn load_file(path: &Path, bytes: &[u8], keys: &[Option<&str>]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("INVALID: write: {e}"))?;
    let mut last = Err("no key".to_string());
    for key in keys {
        let opts = LoadOptions {
            key: key.map(str::to_string),
        };
        last = match load_state_dict(path, &opts) {
            Ok((sd, _)) => check_sd(&sd),
            Err(e) => Err(e.to_string()),
        };
        if matches!(&last, Err(e) if e.starts_with("INVALID")) {
            return last;
        }
    }
    last
}

// ---------------------------------------------------------------------------------------------
// Zip helpers

/// The entries of a zip file, in order.
fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut a = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    (0..a.len())
        .map(|i| {
            let mut e = a.by_index(i).unwrap();
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            (e.name().to_string(), v)
        })
        .collect()
}

/// A zip of `entries` (stored or deflated), with correct checksums.
fn zip_bytes(entries: &[(String, Vec<u8>)], deflate: bool) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, data) in entries {
        w.start_file(name.as_str(), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

// ---------------------------------------------------------------------------------------------
// Format-specific tokens

/// Pickle opcodes and fragments: hostile lengths, indices, globals, nesting.
const PICKLE_TOKENS: &[&[u8]] = &[
    b"((((((((",
    b"\x85\x85\x85\x85",
    b"J\xff\xff\xff\x7f",
    b"J\xff\xff\xff\xff",
    b"\x8a\x08\x00\x00\x00\x00\x00\x01\x00\x00",
    b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"\x8a\x01\xff",
    b"K\x00",
    b"M\xff\xff",
    b"cos\nsystem\n",
    b"\x8c\x02os\x8c\x06system\x93",
    b"\x8c\x0ctorch._utils\x8c\x12_rebuild_tensor_v2\x93",
    b"ctorch._utils\n_rebuild_tensor_v3\n",
    b"ctorch\nfloat32\n",
    b"h\x00",
    b"h\x01",
    b"j\xff\xff\xff\xff",
    b"r\xff\xff\xff\xff",
    b"p99999999999999999999\n",
    b"\x94",
    b"2",
    b"0",
    b"1",
    b"X\xff\xff\xff\xff",
    b"\x8d\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"B\xff\xff\xff\x7f",
    b"]",
    b"}",
    b")",
    b"e",
    b"a",
    b"s",
    b"u",
    b"t",
    b"R",
    b"\x81",
    b"b",
    b"Q",
    b".",
    b"N",
];

/// `.npy` header fragments.
const NPY_TOKENS: &[&[u8]] = &[
    b"(1099511627776,",
    b"(4611686018427387904, 4)",
    b"-1",
    b"True",
    b"'<f8'",
    b"'|u1'",
    b"'>i2'",
    b"((((((((((((((((((((((((((((((((((",
    b"[[[[",
    b"'shape': ()",
    b"\\",
    b"L",
    b"{",
    b"}",
    b"\x93NUMPY\x02\x00\xff\xff\xff\xff",
    b"\x93NUMPY\x01\x00\xff\xff",
];

/// JSON fragments (safetensors headers, diffusers configs).
const JSON_TOKENS: &[&[u8]] = &[
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"{\"a\":",
    b"1e999",
    b"-1",
    b"null",
    b"\"shape\":[1099511627776,1099511627776]",
    b"\"shape\":[4611686018427387904]",
    b"\"data_offsets\":[0,18446744073709551615]",
    b"\"dtype\":\"F8_E4M3\"",
    b"\"dtype\":\"C64\"",
    b"\"dtype\":\"BOOL\"",
    b"\"__metadata__\":{\"a\":[1]},",
    b"\"block_out_channels\": [128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128],",
    b"\"layers_per_block\": 1000000000000,",
    b"\"latent_channels\": 9223372036854775807,",
    b"\"norm_num_groups\": 0,",
];

/// Zip record signatures.
const ZIP_TOKENS: &[&[u8]] = &[
    b"PK\x03\x04",
    b"PK\x01\x02",
    b"PK\x05\x06",
    b"PK\x06\x06",
    b"PK\x06\x07",
    b"\xff\xff\xff\xff",
];

// ---------------------------------------------------------------------------------------------
// Readers

const TORCH_KEYS: [Option<&str>; 3] = [None, Some("model"), Some("opt")];

/// The pickle interpreter through torch zip files: `data.pkl` is mutated and the archive rebuilt
/// (so the zip checksums hold and the pickle itself is exercised).
#[test]
fn fuzz_torch_zip_pickle() {
    let entries = unzip(&std::fs::read(fixture("train_ckpt.pt")).unwrap());
    let pkl = entries
        .iter()
        .position(|(n, _)| n.ends_with("data.pkl"))
        .unwrap();
    let path = scratch("pickle.pt");
    let seeds = vec![entries[pkl].1.clone()];
    run(
        "torch zip data.pkl",
        1,
        &seeds,
        PICKLE_TOKENS,
        2500,
        |data| {
            let mut e = entries.clone();
            e[pkl].1 = data.to_vec();
            load_file(&path, &zip_bytes(&e, false), &TORCH_KEYS)
        },
    );
}

/// Torch zip files mutated as raw bytes (zip structure, storages), stored and deflated.
#[test]
fn fuzz_torch_zip_raw() {
    let raw = std::fs::read(fixture("train_ckpt.pt")).unwrap();
    let deflated = zip_bytes(&unzip(&raw), true);
    let path = scratch("raw.pt");
    run(
        "torch zip raw",
        2,
        &[raw, deflated],
        ZIP_TOKENS,
        800,
        |data| load_file(&path, data, &[None]),
    );
}

/// Legacy (PyTorch < 1.6) torch files: a sequence of pickles and raw storages.
#[test]
fn fuzz_torch_legacy() {
    let seeds = vec![std::fs::read(fixture("plain_legacy.pt")).unwrap()];
    let path = scratch("legacy.pt");
    run("torch legacy", 3, &seeds, PICKLE_TOKENS, 2500, |data| {
        load_file(&path, data, &[None])
    });
}

#[test]
fn fuzz_safetensors() {
    let seeds = vec![std::fs::read(fixture("mixed.safetensors")).unwrap()];
    let path = scratch("st.safetensors");
    run("safetensors", 4, &seeds, JSON_TOKENS, 2500, |data| {
        load_file(&path, data, &[None, Some("ema")])
    });
}

#[test]
fn fuzz_npy() {
    let seeds: Vec<Vec<u8>> = [
        "npy_f8_v2.npy",
        "npy_f4_v3.npy",
        "npy_i4.npy",
        "npy_u1.npy",
        "npy_b1.npy",
        "npy_f4_big.npy",
        "npy_scalar.npy",
        "npy_fortran.npy",
    ]
    .iter()
    .map(|n| std::fs::read(fixture(n)).unwrap())
    .collect();
    run(".npy", 5, &seeds, NPY_TOKENS, 20000, |data| {
        match npy::parse_npy(data, "fuzz.npy") {
            Ok(a) => {
                let n: Option<usize> = a.shape.iter().try_fold(1usize, |x, &d| x.checked_mul(d));
                if n != Some(a.data.len()) {
                    return Err(format!(
                        "INVALID: {} values for {:?}",
                        a.data.len(),
                        a.shape
                    ));
                }
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }?;
        npy::parse_npy_header(data, "fuzz.npy")
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

/// A `.npy` of uint8 `shape` (written by hand: the encoder writes integers as `<i8`).
fn npy_u8(shape: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = npy::npy_header("|u1", shape);
    out.extend_from_slice(data);
    out
}

fn npz_entries() -> Vec<(String, Vec<u8>)> {
    let imgs: Vec<u8> = (0..2 * 3 * 2 * 3).map(|i| (i * 37 % 256) as u8).collect();
    let mu = NpyArray::new(vec![3], NpyData::F32(vec![0.5, -1.0, 2.0])).unwrap();
    let sigma = NpyArray::new(vec![2, 2], NpyData::F32(vec![1.0, 0.0, 0.0, 1.0])).unwrap();
    vec![
        ("arr_0.npy".to_string(), npy_u8(&[2, 3, 2, 3], &imgs)),
        ("mu.npy".to_string(), npy::encode_npy(&mu).unwrap()),
        ("sigma.npy".to_string(), npy::encode_npy(&sigma).unwrap()),
    ]
}

/// Exercises every `Npz` entry point on the archive at `path`.
fn read_npz(path: &Path) -> Result<(), String> {
    let mut npz = Npz::open(path).map_err(|e| e.to_string())?;
    // Ok when some entry point read something; INVALID results are returned at once.
    let mut any = false;
    let mut last = Ok(());
    for name in npz.names() {
        match npz.header(&name) {
            Ok(_) => any = true,
            Err(e) => last = Err(e.to_string()),
        }
        match npz.read(&name) {
            Ok(a) => {
                any = true;
                let n: Option<usize> = a.shape.iter().try_fold(1usize, |x, &d| x.checked_mul(d));
                if n != Some(a.data.len()) {
                    return Err(format!(
                        "INVALID: {} values for {:?}",
                        a.data.len(),
                        a.shape
                    ));
                }
            }
            Err(e) => last = Err(e.to_string()),
        }
        match npz.read_f64(&name) {
            Ok((shape, v)) => {
                any = true;
                if shape.iter().product::<usize>() != v.len() {
                    return Err(format!("INVALID: {} f64 values for {shape:?}", v.len()));
                }
            }
            Err(e) => last = Err(e.to_string()),
        }
    }
    match npz.images() {
        Ok(mut rows) => {
            let (n, per) = (rows.len(), rows.image_bytes());
            let mut got = 0;
            loop {
                match rows.read_batch(1) {
                    Ok(Some(b)) => {
                        if b.len() != per {
                            return Err(format!("INVALID: batch of {} bytes", b.len()));
                        }
                        got += 1;
                    }
                    Ok(None) => break,
                    Err(e) => return Err(e.to_string()),
                }
            }
            if got != n {
                return Err(format!("INVALID: {got} images of {n}"));
            }
            any = true;
        }
        Err(e) => last = Err(e.to_string()),
    }
    if any {
        Ok(())
    } else {
        last
    }
}

/// `.npz` archives: the zip mutated as raw bytes, and the `.npy` entries mutated inside a
/// rebuilt (stored or deflated) archive.
#[test]
fn fuzz_npz() {
    let entries = npz_entries();
    let stored = zip_bytes(&entries, false);
    let deflated = zip_bytes(&entries, true);
    let path = scratch("fuzz.npz");
    run(
        "npz raw",
        6,
        &[stored, deflated],
        ZIP_TOKENS,
        1000,
        |data| {
            std::fs::write(&path, data).map_err(|e| format!("INVALID: {e}"))?;
            read_npz(&path)
        },
    );
    let seeds: Vec<Vec<u8>> = entries.iter().map(|(_, d)| d.clone()).collect();
    let path = scratch("fuzz-inner.npz");
    let mut k = 0usize;
    run("npz entries", 7, &seeds, NPY_TOKENS, 1500, |data| {
        // The mutated entry replaces each entry in turn, in a stored or deflated archive.
        k += 1;
        let mut e = entries.clone();
        let i = k % e.len();
        e[i].1 = data.to_vec();
        std::fs::write(&path, zip_bytes(&e, k.is_multiple_of(2)))
            .map_err(|e| format!("INVALID: {e}"))?;
        read_npz(&path)
    });
}

#[test]
fn fuzz_vae_config() {
    let seeds: Vec<Vec<u8>> = ["vae/new/config.json", "vae/old/config.json"]
        .iter()
        .map(|n| std::fs::read(fixture(n)).unwrap())
        .collect();
    run("vae config.json", 8, &seeds, JSON_TOKENS, 3000, |data| {
        let text = String::from_utf8_lossy(data);
        let c = VaeConfig::from_diffusers_json(&text, Path::new("config.json"))
            .map_err(|e| e.to_string())?;
        c.validate().map_err(|e| format!("INVALID: {e}"))?;
        let _ = c.downscale();
        let shapes = c.state_dict_shapes();
        if shapes.is_empty() {
            return Err("INVALID: no shapes".into());
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Specific hostile files

/// Runs `f`, returning its result and the most memory it held at once.
fn measured<T>(f: impl FnOnce() -> T) -> (T, isize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let r = f();
    (r, PEAK.with(Cell::get) - start)
}

/// `load_state_dict` on `bytes` written as `name`: the error text, checked to name the file and
/// to have cost under 4 MiB plus 64 bytes per input byte (what a pickle's values may take:
/// about 40 bytes per opcode byte for nested containers).
fn load_err(name: &str, bytes: &[u8], key: Option<&str>) -> String {
    let path = scratch(name);
    std::fs::write(&path, bytes).unwrap();
    let opts = LoadOptions {
        key: key.map(str::to_string),
    };
    let (r, peak) = measured(|| load_state_dict(&path, &opts));
    let err = match r {
        Ok((sd, _)) => panic!("{name}: loaded {} tensors", sd.len()),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(name), "{err}");
    let limit = (4 << 20) + 64 * bytes.len() as isize;
    assert!(peak < limit, "{name}: held {peak} bytes (limit {limit})");
    err
}

/// A pickle BINUNICODE string.
fn pstr(s: &str) -> Vec<u8> {
    let mut b = vec![b'X'];
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
    b
}

/// A pickle LONG1 integer (8 bytes, so any value below 2^63).
fn pint(v: u64) -> Vec<u8> {
    let mut b = vec![0x8a, 8];
    b.extend_from_slice(&v.to_le_bytes());
    b
}

/// A pickle tuple of integers.
fn ptuple(v: &[u64]) -> Vec<u8> {
    let mut b = vec![b'('];
    for &x in v {
        b.extend(pint(x));
    }
    b.push(b't');
    b
}

/// A torch zip file: an OrderedDict of float tensors `(name, offset, shape, stride)` over one
/// FloatStorage '0' of `numel` elements (0, 1, 2, ...), as torch.save writes it. The same tensor
/// object may be listed under several names through the memo (`repeat`).
fn torch_file(tensors: &[(&str, u64, &[u64], &[u64])], numel: u64, repeat: &[&str]) -> Vec<u8> {
    let mut p = b"\x80\x02ccollections\nOrderedDict\n)R".to_vec();
    for (i, (name, offset, shape, stride)) in tensors.iter().enumerate() {
        p.extend(pstr(name));
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.push(b'(');
        p.extend(pstr("storage"));
        p.extend_from_slice(b"ctorch\nFloatStorage\n");
        p.extend(pstr("0"));
        p.extend(pstr("cpu"));
        p.extend(pint(numel));
        p.extend_from_slice(b"tQ");
        p.extend(pint(*offset));
        p.extend(ptuple(shape));
        p.extend(ptuple(stride));
        p.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtR");
        if i == 0 {
            p.extend_from_slice(b"q\x00");
        }
        p.push(b's');
    }
    for name in repeat {
        p.extend(pstr(name));
        p.extend_from_slice(b"h\x00s");
    }
    p.push(b'.');
    let data: Vec<u8> = (0..numel).flat_map(|i| (i as f32).to_le_bytes()).collect();
    torch_zip(p, data)
}

fn torch_zip(pickle: Vec<u8>, storage: Vec<u8>) -> Vec<u8> {
    zip_bytes(
        &[
            ("archive/data.pkl".to_string(), pickle),
            ("archive/byteorder".to_string(), b"little".to_vec()),
            ("archive/data/0".to_string(), storage),
            ("archive/version".to_string(), b"3\n".to_vec()),
        ],
        false,
    )
}

#[test]
fn hostile_torch_files() {
    // The builder makes files that load.
    let ok = torch_file(&[("w", 1, &[2, 2], &[1, 2])], 6, &["w2"]);
    let path = scratch("ok.pt");
    std::fs::write(&path, &ok).unwrap();
    let (sd, _) = load_state_dict(&path, &LoadOptions::default()).unwrap();
    assert_eq!(sd.get("w").unwrap().data, vec![1.0, 3.0, 2.0, 4.0]);
    assert_eq!(sd.get("w2"), sd.get("w"));

    // os.system in data.pkl.
    let err = load_err(
        "os_system.pt",
        &torch_zip(
            b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R.".to_vec(),
            vec![],
        ),
        None,
    );
    assert!(
        err.contains("`os.system`") && err.contains("not a plain weights file"),
        "{err}"
    );
    // 2^40 elements over a 4-element storage: contiguous (past its end), stride 0 (a
    // broadcast), and a shape whose product overflows.
    let t40 = 1u64 << 40;
    let err = load_err(
        "t40.pt",
        &torch_file(&[("w", 0, &[t40], &[1])], 4, &[]),
        None,
    );
    assert!(
        err.contains("reads element") && err.contains("'w'"),
        "{err}"
    );
    let err = load_err(
        "b40.pt",
        &torch_file(&[("w", 0, &[t40], &[0])], 4, &[]),
        None,
    );
    assert!(err.contains("stride-0"), "{err}");
    let err = load_err(
        "o40.pt",
        &torch_file(&[("w", 0, &[t40, t40, t40], &[0, 0, 0])], 4, &[]),
        None,
    );
    assert!(err.contains("overflows"), "{err}");
    // Offset past the end, and a storage declaring more elements than its entry holds.
    let err = load_err("off.pt", &torch_file(&[("w", 9, &[2], &[1])], 4, &[]), None);
    assert!(err.contains("reads element 10"), "{err}");
    let mut short = torch_file(&[("w", 0, &[2], &[1])], 4, &[]);
    let entries = unzip(&short);
    let mut e = entries.clone();
    e[2].1.truncate(8);
    short = zip_bytes(&e, false);
    let err = load_err("short.pt", &short, None);
    assert!(err.contains("should hold 16 bytes"), "{err}");
    // One 64K-element tensor under 100 names: 25 MiB from a 256 KiB storage.
    let names: Vec<String> = (0..100).map(|i| format!("copy{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let err = load_err(
        "many.pt",
        &torch_file(&[("w", 0, &[1 << 16], &[1])], 1 << 16, &names),
        None,
    );
    assert!(err.contains("repeat the same data"), "{err}");
    // 100 000 nested lists as data.pkl: an error, not a stack overflow.
    let mut p = b"\x80\x02".to_vec();
    p.extend(std::iter::repeat_n(b'(', 100_000));
    p.extend(std::iter::repeat_n(b'l', 100_000));
    p.push(b'.');
    let err = load_err("deep.pt", &torch_zip(p, vec![]), None);
    assert!(err.contains("top-level object is a list"), "{err}");
    // A pickle of 20 million opcodes.
    let mut p = b"\x80\x02".to_vec();
    p.extend(std::iter::repeat_n(b"N0", 10_000_000).flatten());
    p.push(b'.');
    let path = scratch("ops.pt");
    std::fs::write(&path, torch_zip(p, vec![])).unwrap();
    let err = load_state_dict(&path, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("opcodes"), "{err}");
}

#[test]
fn hostile_safetensors_files() {
    let st = |header: &str, data: usize| {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data));
        b
    };
    // Header length 2^62.
    let mut b = (1u64 << 62).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    let err = load_err("h62.safetensors", &b, None);
    assert!(err.contains("header length"), "{err}");
    // Offsets past the data, shape × dtype ≠ byte range, overflowing shapes.
    for (name, header, data, want) in [
        (
            "past.safetensors",
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            4,
            "the file has 4",
        ),
        (
            "range.safetensors",
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            8,
            "do not hold 12 bytes",
        ),
        (
            "huge.safetensors",
            r#"{"a":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4398046511104]}}"#,
            8,
            "the file has 8",
        ),
        (
            "overflow.safetensors",
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#,
            8,
            "overflows",
        ),
        (
            "backwards.safetensors",
            r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#,
            8,
            "do not hold",
        ),
    ] {
        let err = load_err(name, &st(header, data), None);
        assert!(err.contains(want), "{name}: {err}");
    }
    // JSON nested 100 000 deep.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let err = load_err("deep.safetensors", &st(&deep, 0), None);
    assert!(err.contains("not a JSON object"), "{err}");
}

#[test]
fn hostile_npy_and_npz_files() {
    let npy = |dict: &str, data: usize| {
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data));
        b
    };
    for (dict, want) in [
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }\n",
            "needs 4398046511104 data bytes",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }\n",
            "overflows",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }\n",
            "bad dimension",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': ((((((((((((((((((((((((((((((((((((1,),),),),),),),),),),),),),),),),),),),),),),),),),),),),),),),),),),),), }\n",
            "nests too deeply",
        ),
    ] {
        let b = npy(dict, 8);
        let (r, peak) = measured(|| npy::parse_npy(&b, "huge.npy"));
        let err = r.unwrap_err().to_string();
        assert!(err.contains(want) && err.contains("huge.npy"), "{err}");
        assert!(peak < 1 << 20, "{peak}");
    }
    // A version-2 header claiming 4 GiB.
    let mut b = b"\x93NUMPY\x02\x00\xff\xff\xff\xff{".to_vec();
    b.extend_from_slice(&[b' '; 64]);
    let err = npy::parse_npy(&b, "h.npy").unwrap_err().to_string();
    assert!(err.contains("header claims"), "{err}");

    // .npz: an entry whose header claims 2^40 elements.
    let path = scratch("huge.npz");
    let big = npy(
        "{'descr': '|u1', 'fortran_order': False, 'shape': (1099511627776, 2, 2, 3), }\n",
        12,
    );
    std::fs::write(&path, zip_bytes(&[("arr_0.npy".into(), big)], true)).unwrap();
    let (r, peak) = measured(|| Npz::open(&path).unwrap().images().map(|_| ()));
    let err = r.unwrap_err().to_string();
    assert!(err.contains("truncated or corrupt"), "{err}");
    assert!(peak < 4 << 20, "{peak}");
    // H·W·3 overflowing with N = 0.
    let zero = npy(
        "{'descr': '|u1', 'fortran_order': False, 'shape': (0, 4294967296, 4294967296, 3), }\n",
        0,
    );
    std::fs::write(&path, zip_bytes(&[("arr_0.npy".into(), zero)], false)).unwrap();
    let err = Npz::open(&path).unwrap().images().unwrap_err().to_string();
    assert!(err.contains("not [N, H, W, 3]"), "{err}");
    // A deflated entry declaring 2 GiB: refused from the zip directory, before reading.
    let mut zipped = zip_bytes(&npz_entries()[..1], true);
    let cd = zipped.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    zipped[cd + 24..cd + 28].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    let lh = zipped.windows(4).position(|w| w == b"PK\x03\x04").unwrap();
    zipped[lh + 22..lh + 26].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    std::fs::write(&path, &zipped).unwrap();
    let (r, peak) = measured(|| Npz::open(&path).unwrap().read("arr_0").map(|_| ()));
    let err = r.unwrap_err().to_string();
    assert!(err.contains("zip bomb"), "{err}");
    assert!(peak < 4 << 20, "{peak}");
    // A stored entry whose directory claims the 200 MB its header promises but holds 12 bytes:
    // nothing that size is allocated before the data runs out.
    let head = npy(
        "{'descr': '|u1', 'fortran_order': False, 'shape': (1, 8192, 8192, 3), }\n",
        12,
    );
    let claimed = (head.len() - 12 + 8192 * 8192 * 3) as u32;
    let mut zipped = zip_bytes(&[("arr_0.npy".into(), head)], false);
    let cd = zipped.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    let lh = zipped.windows(4).position(|w| w == b"PK\x03\x04").unwrap();
    for at in [cd + 20, cd + 24, lh + 18, lh + 22] {
        zipped[at..at + 4].copy_from_slice(&claimed.to_le_bytes());
    }
    std::fs::write(&path, &zipped).unwrap();
    let (r, peak) = measured(|| {
        let mut npz = Npz::open(&path).map_err(|e| e.to_string())?;
        let mut rows = npz.images().map_err(|e| e.to_string())?;
        rows.read_batch(1)
            .map(|_| ())
            .map_err(|e| format!("batch: {e}"))
    });
    assert!(
        r.unwrap_err().starts_with("batch: "),
        "read 200 MB from a tiny file"
    );
    assert!(peak < 4 << 20, "{peak}");
}

#[test]
fn hostile_vae_configs() {
    let base = std::fs::read_to_string(fixture("vae/new/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&base).unwrap();
    for (key, value, want) in [
        (
            "layers_per_block",
            serde_json::json!(1_000_000_000_000u64),
            "layers_per_block",
        ),
        (
            "block_out_channels",
            serde_json::json!(vec![32; 65]),
            "levels",
        ),
        (
            "latent_channels",
            serde_json::json!(u64::MAX / 2),
            "channel count",
        ),
        ("norm_num_groups", serde_json::json!(0), "norm_num_groups"),
    ] {
        let mut c = v.clone();
        c[key] = value;
        if key == "block_out_channels" {
            c.as_object_mut().unwrap().remove("down_block_types");
            c.as_object_mut().unwrap().remove("up_block_types");
        }
        let (r, peak) =
            measured(|| VaeConfig::from_diffusers_json(&c.to_string(), Path::new("config.json")));
        let err = r.unwrap_err().to_string();
        assert!(err.contains(want), "{key}: {err}");
        assert!(peak < 1 << 20, "{key}: {peak}");
    }
    v["block_out_channels"] = serde_json::json!([32]);
    v.as_object_mut().unwrap().remove("down_block_types");
    v.as_object_mut().unwrap().remove("up_block_types");
    let c = VaeConfig::from_diffusers_json(&v.to_string(), Path::new("config.json")).unwrap();
    assert_eq!(c.downscale(), 1);
}
