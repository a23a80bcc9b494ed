//! On-disk latent stores: VAE posterior moments of every image and of its horizontal flip, in
//! memory-mapped shards (what `cargo xtask latents` writes and `train --data DIR` reads).
//!
//! A store is a folder:
//! - `manifest.json` ([`Manifest`]): format and version, the [`StoreParams`] that determine
//!   the content (latent shape, `scaling_factor`, crop size, VAE and image folders, shard size),
//!   the completed shards in order, the item count and whether extraction finished;
//! - `classes.json`: the class names, label `i` = entry `i` (torchvision's `ImageFolder` order);
//! - `shard-NNNNN.safetensors`: tensors `latents` (F16, `[n, 2, 2, C, H, W]`: axis 1 is the flip,
//!   0 = the ADM centre crop, 1 = its horizontal mirror, encoded separately; axis 2 is the
//!   moment, 0 = posterior mean, 1 = posterior std = `exp(logvar/2)`), `labels` (I64, `[n]`) and
//!   `file_index` (I64, `[n]`, the source image's index in the sorted file list).
//!
//! Values are stored as IEEE f16: half the disk of f32 (256-px ImageNet: 1.28 M × 2 flips ×
//! 2 moments × 4·32·32 values = 42 GB instead of 84 GB) and half the bytes to page in per item.
//! The rounding error (relative ≤ 2⁻¹¹ ≈ 4.9·10⁻⁴, ≤ 2·10⁻³ absolute for an unscaled mean below
//! 8) is far below the smallest noise DiT adds (√β₁ = 0.01 in scaled units ≈ 0.055 unscaled).
//!
//! Shards are written atomically and the manifest is rewritten (atomically) after each one, so
//! an interrupted extraction leaves whole shards only and resumes after the last recorded one.
//!
//! Reading ([`LatentStore`]): item `i` is `x = (mean + std·ε)·scaling_factor` with a fresh
//! `ε ~ N(0, I)` drawn from the item's rng and, with flips on (the default), the stored flip
//! chosen with p = 0.5 (rng draw order: one `bool` for the flip, then ε in `[C, H, W]` order).
//! Shards are memory-mapped. The kernel maps more than the pages an item touches (fault-around,
//! and whole large folios of the page cache: up to 2 MiB per touch, measured 1 GiB resident
//! after 512 random reads of a 6.5 GB store), so each read releases the 2 MiB-aligned region
//! around its item afterwards, and every [`TRIM_EVERY`] reads all mappings are released:
//! resident memory stays bounded whatever the store's size (the pages stay in the page cache).
//! Do not modify a store while a process reads it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use half::f16;
use memmap2::{Mmap, UncheckedAdvice};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use super::{DataError, DataOptions, Dataset, Item};

/// The manifest's file name; a folder holding it is a latent store.
pub const MANIFEST: &str = "manifest.json";
/// The class table's file name (a JSON array of class names, label = position).
pub const CLASSES: &str = "classes.json";
/// `Manifest::format`.
pub const FORMAT: &str = "nag-latents";
/// `Manifest::version` written and read by this code.
pub const VERSION: u32 = 1;
/// Reads between two releases of every mapped page (a backstop to the per-read release).
pub const TRIM_EVERY: usize = 4096;
/// The region released around each item read: the largest page-cache folio the kernel maps.
const RELEASE_ALIGN: usize = 2 << 20;

const LAYOUT: &str = "latents f16 [n, flip (0 plain, 1 mirrored), moment (0 mean, 1 std), C, H, W]; labels i64 [n]; file_index i64 [n]";

/// What determines a store's content; a resumed extraction must match it exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreParams {
    /// `[C, H, W]` of one latent.
    pub latent_shape: [usize; 3],
    /// The VAE's `scaling_factor` (0.18215 for the SD VAE); training multiplies by it.
    pub scaling_factor: f64,
    /// Side of the ADM centre crop the images were encoded at (0 for synthetic stores).
    pub size: usize,
    /// The VAE folder (canonical path), or a description for synthetic stores.
    pub vae: String,
    /// The image folder (canonical path), or a description for synthetic stores.
    pub source: String,
    /// Number of image files found in the source (bad ones included).
    pub source_files: usize,
    /// Number of classes (`classes.json` has this many names).
    pub num_classes: usize,
    /// Source files per shard (the last shard may have fewer; skipped files leave gaps).
    pub shard_size: usize,
}

/// One completed shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name inside the store.
    pub file: String,
    /// Items it holds.
    pub count: usize,
    /// Index of its first source file (shard `k` covers files `k·shard_size ..`).
    pub first_file: usize,
    /// File size in bytes (a resumed extraction redoes a shard whose size differs).
    pub bytes: u64,
    /// Source files of its range that could not be read (skipped).
    pub skipped: Vec<String>,
}

/// `manifest.json`; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// Value type of `latents`: `"f16"`.
    pub dtype: String,
    /// The shard layout, in words.
    pub layout: String,
    /// What determines the content.
    #[serde(flatten)]
    pub params: StoreParams,
    /// Items in the completed shards.
    pub count: usize,
    /// Files skipped in the completed shards.
    pub skipped: usize,
    /// Shards the whole extraction writes.
    pub shards_total: usize,
    /// Whether every shard is written.
    pub complete: bool,
    /// The completed shards, in order.
    pub shards: Vec<ShardEntry>,
}

impl Manifest {
    /// An empty manifest for `params` over `shards_total` shards.
    pub fn new(params: StoreParams, shards_total: usize) -> Self {
        Self {
            format: FORMAT.into(),
            version: VERSION,
            dtype: "f16".into(),
            layout: LAYOUT.into(),
            params,
            count: 0,
            skipped: 0,
            shards_total,
            complete: false,
            shards: Vec::new(),
        }
    }

    /// Reads `dir/manifest.json`, checking format and version.
    pub fn read(dir: &Path) -> Result<Self, DataError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| {
            DataError::bad(
                &path,
                format!("not a latent-store manifest ({e}); write one with `cargo xtask latents`"),
            )
        })?;
        if m.format != FORMAT || m.version != VERSION || m.dtype != "f16" {
            return Err(DataError::bad(
                &path,
                format!(
                    "format '{}' version {} dtype {}; this build reads '{FORMAT}' version \
                     {VERSION} f16: re-extract with this build's `cargo xtask latents`",
                    m.format, m.version, m.dtype
                ),
            ));
        }
        Ok(m)
    }

    /// Writes `dir/manifest.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<(), DataError> {
        let path = dir.join(MANIFEST);
        let json =
            serde_json::to_string_pretty(self).map_err(|e| DataError::bad(&path, e.to_string()))?;
        write_bytes_atomic(&path, json.as_bytes())
    }

    /// Records a completed shard.
    pub fn push_shard(&mut self, entry: ShardEntry) {
        self.count += entry.count;
        self.skipped += entry.skipped.len();
        self.shards.push(entry);
    }
}

fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    nag_models::checkpoint::write_atomic(path, |w| std::io::Write::write_all(w, bytes))
        .map_err(|e| DataError::io(path, e))
}

/// Writes `dir/classes.json` atomically.
pub fn write_classes(dir: &Path, classes: &[String]) -> Result<(), DataError> {
    let path = dir.join(CLASSES);
    let json =
        serde_json::to_string_pretty(classes).map_err(|e| DataError::bad(&path, e.to_string()))?;
    write_bytes_atomic(&path, json.as_bytes())
}

/// Reads `dir/classes.json`.
pub fn read_classes(dir: &Path) -> Result<Vec<String>, DataError> {
    let path = dir.join(CLASSES);
    let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| DataError::bad(&path, format!("expected a JSON array of class names: {e}")))
}

/// The file name of shard `k`.
pub fn shard_file_name(k: usize) -> String {
    format!("shard-{k:05}.safetensors")
}

/// One shard's items, accumulated in memory before [`ShardBuilder::write`].
#[derive(Debug, Clone)]
pub struct ShardBuilder {
    latent_shape: [usize; 3],
    bytes: Vec<u8>,
    labels: Vec<i64>,
    file_index: Vec<i64>,
}

impl ShardBuilder {
    /// An empty shard of latents shaped `latent_shape`.
    pub fn new(latent_shape: [usize; 3]) -> Self {
        Self {
            latent_shape,
            bytes: Vec::new(),
            labels: Vec::new(),
            file_index: Vec::new(),
        }
    }

    /// Items so far.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Appends one item: `[plain mean, plain std, mirrored mean, mirrored std]`, each `C·H·W`
    /// values. The error is a reason (wrong length, or a value that is not finite in f16).
    pub fn push(
        &mut self,
        moments: [&[f32]; 4],
        label: i64,
        file_index: usize,
    ) -> Result<(), String> {
        let d: usize = self.latent_shape.iter().product();
        if let Some(m) = moments.iter().find(|m| m.len() != d) {
            return Err(format!(
                "{} values for a latent of shape {:?}",
                m.len(),
                self.latent_shape
            ));
        }
        let start = self.bytes.len();
        for m in moments {
            for &v in m {
                let h = f16::from_f32(v);
                if !h.is_finite() {
                    self.bytes.truncate(start);
                    return Err(format!("latent value {v} is not finite in f16"));
                }
                self.bytes.extend_from_slice(&h.to_le_bytes());
            }
        }
        self.labels.push(label);
        self.file_index.push(file_index as i64);
        Ok(())
    }

    /// Writes the shard as `dir/shard_file_name(k)` (atomically) and returns its entry.
    pub fn write(
        &self,
        dir: &Path,
        k: usize,
        first_file: usize,
        skipped: Vec<String>,
    ) -> Result<ShardEntry, DataError> {
        let file = shard_file_name(k);
        let path = dir.join(&file);
        let bad = |e: safetensors::SafeTensorError| DataError::bad(&path, e.to_string());
        let [c, h, w] = self.latent_shape;
        let n = self.len();
        let labels: Vec<u8> = self.labels.iter().flat_map(|v| v.to_le_bytes()).collect();
        let files: Vec<u8> = self
            .file_index
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let views = vec![
            (
                "latents",
                TensorView::new(Dtype::F16, vec![n, 2, 2, c, h, w], &self.bytes).map_err(bad)?,
            ),
            (
                "labels",
                TensorView::new(Dtype::I64, vec![n], &labels).map_err(bad)?,
            ),
            (
                "file_index",
                TensorView::new(Dtype::I64, vec![n], &files).map_err(bad)?,
            ),
        ];
        let bytes = safetensors::serialize(views, &None).map_err(bad)?;
        write_bytes_atomic(&path, &bytes)?;
        Ok(ShardEntry {
            file,
            count: n,
            first_file,
            bytes: bytes.len() as u64,
            skipped,
        })
    }
}

/// One memory-mapped shard.
#[derive(Debug)]
struct MappedShard {
    map: Mmap,
    /// Byte offset of `latents` in the file.
    data: usize,
    count: usize,
}

/// A latent store opened for reading: a [`Dataset`] of `(mean + std·ε)·scaling_factor`; see
/// the [module docs](self).
#[derive(Debug)]
pub struct LatentStore {
    dir: PathBuf,
    manifest: Manifest,
    classes: Vec<String>,
    shards: Vec<MappedShard>,
    /// Global index of each shard's first item.
    starts: Vec<usize>,
    labels: Vec<i64>,
    hflip: bool,
    reads: AtomicUsize,
}

impl LatentStore {
    /// Opens the store in `dir`. Options used: `hflip` (default on: pick one of the two stored
    /// flips at random).
    pub fn open(dir: &Path, options: &DataOptions) -> Result<Self, DataError> {
        let manifest = Manifest::read(dir)?;
        let mpath = dir.join(MANIFEST);
        if !manifest.complete {
            return Err(DataError::bad(
                dir,
                format!(
                    "latent extraction unfinished ({} of {} shards); rerun the same \
                     `cargo xtask latents` command to finish it",
                    manifest.shards.len(),
                    manifest.shards_total
                ),
            ));
        }
        let classes = read_classes(dir)?;
        let p = &manifest.params;
        if classes.len() != p.num_classes || p.num_classes == 0 {
            return Err(DataError::bad(
                &dir.join(CLASSES),
                format!(
                    "{} class names; the manifest says {}",
                    classes.len(),
                    p.num_classes
                ),
            ));
        }
        if manifest.count == 0 || p.latent_shape.contains(&0) {
            return Err(DataError::bad(&mpath, "the store holds no latents"));
        }
        if !(p.scaling_factor.is_finite() && p.scaling_factor > 0.0) {
            return Err(DataError::bad(
                &mpath,
                format!("scaling_factor {}", p.scaling_factor),
            ));
        }
        let [c, h, w] = p.latent_shape;
        let mut shards = Vec::with_capacity(manifest.shards.len());
        let mut starts = Vec::with_capacity(manifest.shards.len());
        let mut labels = Vec::new(); // grows with the shards read, not the declared count
        for entry in &manifest.shards {
            let path = dir.join(&entry.file);
            let file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
            // SAFETY: the map is read-only and shared; the module docs ask that the store is
            // not modified while it is read.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(&path, e))?;
            let _ = map.advise(memmap2::Advice::Random);
            let (header, meta) =
                SafeTensors::read_metadata(&map).map_err(|e| DataError::decode(&path, e))?;
            let n = entry.count;
            let tensor = |name: &str, dtype: Dtype, shape: Vec<usize>| {
                let info = meta
                    .info(name)
                    .filter(|i| i.dtype == dtype && i.shape == shape);
                let info = info.ok_or_else(|| {
                    DataError::bad(
                        &path,
                        format!("no tensor '{name}' of {dtype:?} {shape:?}; the shard does not match the manifest (re-extract)"),
                    )
                })?;
                let (a, b) = info.data_offsets;
                let (a, b) = (8 + header + a, 8 + header + b);
                if b > map.len() || b - a != shape.iter().product::<usize>() * dtype.size() {
                    return Err(DataError::bad(
                        &path,
                        format!("tensor '{name}' is truncated"),
                    ));
                }
                Ok(a)
            };
            let data = tensor("latents", Dtype::F16, vec![n, 2, 2, c, h, w])?;
            let lab = tensor("labels", Dtype::I64, vec![n])?;
            for b in map[lab..lab + 8 * n].chunks_exact(8) {
                let l = i64::from_le_bytes(b.try_into().expect("8 bytes"));
                if l < 0 || l as usize >= p.num_classes {
                    return Err(DataError::bad(
                        &path,
                        format!("label {l} outside 0..{}; re-extract", p.num_classes),
                    ));
                }
                labels.push(l);
            }
            // SAFETY: as in `trim`: drops the page-table entries that reading the labels made.
            let _ = unsafe { map.unchecked_advise(UncheckedAdvice::DontNeed) };
            starts.push(labels.len() - n);
            shards.push(MappedShard {
                map,
                data,
                count: n,
            });
        }
        if labels.len() != manifest.count {
            return Err(DataError::bad(
                &mpath,
                format!(
                    "count {} but the shards hold {}",
                    manifest.count,
                    labels.len()
                ),
            ));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            classes,
            shards,
            starts,
            labels,
            hflip: options.hflip.unwrap_or(true),
            reads: AtomicUsize::new(0),
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Class names, label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Labels, index order.
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    /// The stored moments of item `index`, flip `flip` (0 plain, 1 mirrored): `(mean, std)`,
    /// unscaled, as f32.
    pub fn moments(&self, index: usize, flip: usize) -> Result<(Vec<f32>, Vec<f32>), DataError> {
        let bytes = self.item_bytes(index, flip)?;
        let d = bytes.len() / 4;
        let read = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(2)
                .map(|p| f16::from_le_bytes([p[0], p[1]]).to_f32())
                .collect()
        };
        Ok((read(&bytes[..2 * d]), read(&bytes[2 * d..])))
    }

    /// The `2·2·d` bytes (mean then std, f16) of item `index`, flip `flip`.
    fn item_bytes(&self, index: usize, flip: usize) -> Result<&[u8], DataError> {
        let (shard, off, len) = self.locate(index, flip)?;
        Ok(&self.shards[shard].map[off..off + len])
    }

    /// Releases the mapped pages of the [`RELEASE_ALIGN`]-aligned region (of the address
    /// space) around bytes `off..off + len` of shard `shard`.
    fn release(&self, shard: usize, off: usize, len: usize) {
        let map = &self.shards[shard].map;
        let base = map.as_ptr() as usize;
        let start = ((base + off) & !(RELEASE_ALIGN - 1)).max(base) - base;
        let end = ((base + off + len).next_multiple_of(RELEASE_ALIGN) - base).min(map.len());
        // SAFETY: a read-only shared file mapping: MADV_DONTNEED drops page-table entries only,
        // and later reads (also concurrent ones) fault the same file contents back in.
        let _ =
            unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start) };
    }

    /// `(shard, byte offset, byte length)` of item `index`, flip `flip`.
    fn locate(&self, index: usize, flip: usize) -> Result<(usize, usize, usize), DataError> {
        let len = self.labels.len();
        if index >= len || flip > 1 {
            return Err(DataError::Index { index, len });
        }
        let s = self.starts.partition_point(|&st| st <= index) - 1;
        let shard = &self.shards[s];
        let local = index - self.starts[s];
        debug_assert!(local < shard.count);
        let d: usize = self.manifest.params.latent_shape.iter().product();
        let item = 2 * d * 2; // two moments of d f16 values
        Ok((s, shard.data + (2 * local + flip) * item, item))
    }

    /// Releases the mapped pages of every shard (they stay in the page cache; the next read
    /// maps them again).
    fn trim(&self) {
        for s in &self.shards {
            // SAFETY: a read-only shared file mapping: MADV_DONTNEED drops the page-table
            // entries only, and later reads fault the same file contents back in.
            let _ = unsafe { s.map.unchecked_advise(UncheckedAdvice::DontNeed) };
        }
    }
}

impl Dataset for LatentStore {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn item(&self, index: usize, rng: &mut ChaCha8Rng) -> Result<Item, DataError> {
        let flip = usize::from(self.hflip && rng.random::<bool>());
        let (shard, off, len) = self.locate(index, flip)?;
        let bytes = &self.shards[shard].map[off..off + len];
        let d = bytes.len() / 4;
        let (mean, std) = bytes.split_at(2 * d);
        let scale = self.manifest.params.scaling_factor as f32;
        let x = mean
            .chunks_exact(2)
            .zip(std.chunks_exact(2))
            .map(|(m, s)| {
                let m = f16::from_le_bytes([m[0], m[1]]).to_f32();
                let s = f16::from_le_bytes([s[0], s[1]]).to_f32();
                let eps: f32 = rng.sample(StandardNormal);
                (m + s * eps) * scale
            })
            .collect();
        self.release(shard, off, len);
        if (self.reads.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(TRIM_EVERY) {
            self.trim();
        }
        Ok(Item {
            x,
            y: self.labels[index],
        })
    }

    fn shape(&self) -> [usize; 3] {
        self.manifest.params.latent_shape
    }

    fn num_classes(&self) -> usize {
        self.manifest.params.num_classes
    }

    fn name(&self) -> String {
        format!("latent store {}", self.dir.display())
    }
}

/// Writes a synthetic store (for benchmarks and tests): `n` items of `latent_shape`, means
/// uniform in `[−4, 4)`, stds uniform in `[0.01, 0.1)`, labels uniform in `0..num_classes`,
/// all from `seed`; same arguments → same bytes. `progress` gets the items written after each
/// shard. `dir` must not exist or be empty.
pub fn write_synthetic(
    dir: &Path,
    n: usize,
    latent_shape: [usize; 3],
    num_classes: usize,
    shard_size: usize,
    seed: u64,
    progress: &mut dyn FnMut(usize),
) -> Result<Manifest, DataError> {
    if n == 0 || num_classes == 0 || shard_size == 0 || latent_shape.contains(&0) {
        return Err(DataError::Config(format!(
            "synthetic store: items ({n}), classes ({num_classes}), shard size ({shard_size}) \
             and latent shape {latent_shape:?} must be non-zero"
        )));
    }
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(DataError::bad(
            dir,
            "exists and is not empty; pick a new folder",
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let params = StoreParams {
        latent_shape,
        scaling_factor: 0.18215,
        size: 0,
        vae: "synthetic".into(),
        source: format!("synthetic (seed {seed})"),
        source_files: n,
        num_classes,
        shard_size,
    };
    let classes: Vec<String> = (0..num_classes).map(|c| format!("class{c:04}")).collect();
    write_classes(dir, &classes)?;
    let shards_total = n.div_ceil(shard_size);
    let mut manifest = Manifest::new(params, shards_total);
    let d: usize = latent_shape.iter().product();
    let mut values = vec![vec![0f32; d]; 4];
    for k in 0..shards_total {
        let mut rng = super::stream_rng(seed, 0x5EED_1A7E, k as u64);
        let mut shard = ShardBuilder::new(latent_shape);
        for f in k * shard_size..((k + 1) * shard_size).min(n) {
            for (m, v) in values.iter_mut().enumerate() {
                let (lo, width) = if m % 2 == 0 {
                    (-4.0, 8.0)
                } else {
                    (0.01, 0.09)
                };
                v.iter_mut()
                    .for_each(|x| *x = lo + width * rng.random::<f32>());
            }
            let label = rng.random_range(0..num_classes) as i64;
            let moments = [&values[0][..], &values[1], &values[2], &values[3]];
            shard.push(moments, label, f).map_err(DataError::Config)?;
        }
        manifest.push_shard(shard.write(dir, k, k * shard_size, Vec::new())?);
        manifest.complete = k + 1 == shards_total;
        manifest.write(dir)?;
        progress(manifest.count);
    }
    Ok(manifest)
}

/// Resident memory of this process from `/proc/self/status`: `(VmRSS, VmHWM)` in bytes
/// (current and peak); `None` where that file is unavailable (not Linux).
pub fn resident_memory() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::TempDir;
    use crate::data::{open_dataset, stream_rng};

    #[test]
    fn synthetic_store_reads_back_and_repeats() {
        let tmp = TempDir::new("synthetic");
        let (a, b) = (tmp.join("a"), tmp.join("b"));
        let m = write_synthetic(&a, 7, [2, 3, 3], 5, 3, 9, &mut |_| {}).unwrap();
        assert_eq!((m.count, m.shards.len(), m.complete), (7, 3, true));
        write_synthetic(&b, 7, [2, 3, 3], 5, 3, 9, &mut |_| {}).unwrap();
        for f in [
            "shard-00000.safetensors",
            "shard-00002.safetensors",
            MANIFEST,
        ] {
            assert_eq!(
                std::fs::read(a.join(f)).unwrap(),
                std::fs::read(b.join(f)).unwrap()
            );
        }
        assert!(write_synthetic(&a, 7, [2, 3, 3], 5, 3, 9, &mut |_| {}).is_err());
        let ds = open_dataset(a.to_str().unwrap(), &DataOptions::default()).unwrap();
        assert_eq!((ds.len(), ds.shape(), ds.num_classes()), (7, [2, 3, 3], 5));
        let store = LatentStore::open(&a, &DataOptions::default()).unwrap();
        for i in 0..7 {
            let (mean, std) = store.moments(i, 1).unwrap();
            assert!(mean.iter().all(|v| (-4.0..=4.0).contains(v)), "{mean:?}");
            assert!(std.iter().all(|v| (0.0099..=0.1).contains(v)), "{std:?}");
            let x = ds.item(i, &mut stream_rng(0, 0, i as u64)).unwrap().x;
            assert!(x.iter().all(|v| v.abs() < 0.18215 * 4.6), "{x:?}");
        }
        assert!(ds.item(7, &mut stream_rng(0, 0, 0)).is_err());
        // A truncated shard is an error naming it.
        std::fs::write(a.join("shard-00001.safetensors"), b"short").unwrap();
        let err = LatentStore::open(&a, &DataOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("shard-00001.safetensors"), "{err}");
        assert!(resident_memory().is_none_or(|(rss, hwm)| rss > 0 && hwm >= rss));
    }
}
