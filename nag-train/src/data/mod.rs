//! Datasets and the batch loader.
//!
//! A [`Dataset`] yields [`Item`]s: one image (or latent) `[C, H, W]` as `f32` (images in
//! `[−1, 1]`) with an `i64` class label. The [`loader`] turns a dataset into a deterministic
//! stream of [`Batch`]es on background threads.
//!
//! Datasets:
//! - [`shapes`]: built-in class-conditional RGB shapes generated from a seed (no files).
//! - [`gmm`]: built-in images drawn from a known Gaussian mixture whose density
//!   [`nag_core::gmm::GaussianMixture`] evaluates exactly.
//! - [`folder`]: an image folder, one subfolder per class (PNG, JPEG), ADM centre crop.
//! - [`latents`]: pre-extracted latents and labels (`.npy` pair or one `.safetensors`).
//! - [`latent_store`]: memory-mapped VAE posterior moments from `cargo xtask latents`.
//! - [`idx`]: MNIST-style IDX files.
//!
//! [`open_dataset`] picks one from a spec string.

pub mod folder;
pub mod gmm;
pub mod idx;
pub mod latent_store;
pub mod latents;
pub mod loader;
pub mod read_rate;
pub mod real_items;
pub mod shapes;
mod subset;

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use folder::FolderDataset;
pub use gmm::{GmmConfig, GmmDataset};
pub use idx::IdxDataset;
pub use latent_store::LatentStore;
pub use latents::LatentDataset;
pub use loader::{Loader, LoaderConfig};
pub use shapes::{ShapesConfig, ShapesDataset, ShapesLayout, SHAPE_NAMES};
pub use subset::Subset;

/// One example: `x` is `[C, H, W]` row-major (images in `[−1, 1]`), `y` the class label.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Values, `C·H·W` of them.
    pub x: Vec<f32>,
    /// Class label in `0..num_classes`.
    pub y: i64,
}

/// A batch on the CPU; the trainer uploads it to its device.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Values, `N·C·H·W` of them, row-major.
    pub x: Vec<f32>,
    /// Labels, `N` of them.
    pub y: Vec<i64>,
    /// `[N, C, H, W]`.
    pub shape: [usize; 4],
}

/// What to do with a file that cannot be read or decoded (`--on-bad-file skip|fail`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Skip the file (the next readable item takes its place), count it
    /// ([`Dataset::skipped`]) and warn once on stderr.
    #[default]
    Skip,
    /// Return an error naming the file.
    Fail,
}

/// Errors from datasets and the loader. File errors name the file and, where there is one,
/// the fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An I/O error on a file or folder.
    #[error("{path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file that exists but cannot be decoded (corrupt, truncated, wrong format).
    #[error("{path}: cannot decode: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A dataset location that holds nothing usable (missing, empty, wrong kind of file).
    #[error("{path}: {reason}")]
    BadDataset {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// An invalid option or spec.
    #[error("invalid data option: {0}")]
    Config(String),
    /// An index outside `0..len`.
    #[error("index {index} out of range for a dataset of {len} items")]
    Index {
        /// The index asked for.
        index: usize,
        /// The dataset length.
        len: usize,
    },
    /// An item whose size differs from the dataset's shape.
    #[error("{dataset}: item {index} has {found} values, expected {expected}")]
    ItemShape {
        /// Dataset name.
        dataset: String,
        /// Index of the item.
        index: usize,
        /// Expected `C·H·W`.
        expected: usize,
        /// Found.
        found: usize,
    },
    /// Every item of the dataset was skipped as unreadable.
    #[error("{dataset}: every item failed to load (last: {last})")]
    AllFailed {
        /// Dataset name.
        dataset: String,
        /// The last error.
        last: Box<DataError>,
    },
    /// A loader worker panicked or stopped.
    #[error("loader worker failed: {0}")]
    Worker(String),
    /// An error from nag-core (Gaussian mixture construction or sampling).
    #[error(transparent)]
    Core(#[from] nag_core::Error),
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn decode(path: &Path, reason: impl ToString) -> Self {
        DataError::Decode {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
    pub(crate) fn bad(path: &Path, reason: impl Into<String>) -> Self {
        DataError::BadDataset {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// A source of labelled examples. Items are addressed by index; `rng` drives augmentation
/// (random flips) so that a loader seeding it from `(seed, position)` is reproducible.
pub trait Dataset: Send + Sync {
    /// Number of items.
    fn len(&self) -> usize;
    /// Whether the dataset has no items.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Item `index` (`< len()`); `rng` is used for augmentation only.
    fn item(&self, index: usize, rng: &mut ChaCha8Rng) -> Result<Item, DataError>;
    /// Item shape `[C, H, W]`.
    fn shape(&self) -> [usize; 3];
    /// Number of classes; labels are in `0..num_classes()`.
    fn num_classes(&self) -> usize;
    /// Human-readable name (kind and source).
    fn name(&self) -> String;
    /// Number of distinct unreadable files skipped so far ([`OnError::Skip`]); 0 for datasets
    /// without files.
    fn skipped(&self) -> usize {
        0
    }
}

impl std::fmt::Debug for dyn Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("name", &self.name())
            .field("len", &self.len())
            .field("shape", &self.shape())
            .finish()
    }
}

/// Options for [`open_dataset`]. Fields that do not apply to the chosen dataset are ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct DataOptions {
    /// Seed of generated content (`shapes`, `gmm`); independent of the loader's seed.
    pub seed: u64,
    /// Image size: side of `shapes`/`gmm` images when the spec does not give it (default 16),
    /// and the crop size of image folders (default 32).
    pub image_size: Option<usize>,
    /// Virtual length of generated datasets (`shapes`, `gmm`); default 50 000.
    pub len: Option<usize>,
    /// Random horizontal flip (p = 0.5). `None`: the dataset's default (on for image folders,
    /// off elsewhere). Never applied to `gmm`, whose density would change.
    pub hflip: Option<bool>,
    /// Unreadable-file policy (image folders).
    pub on_error: OnError,
    /// IDX: pad images with the background value (−1) to this side, e.g. 28 → 32.
    pub pad_to: Option<usize>,
    /// Labels file: for a `.npy` latents file (default: `<stem>_labels.npy`, then
    /// `labels.npy` next to it) or an IDX images file (default: the name with `images` →
    /// `labels`, `idx3` → `idx1`).
    pub labels: Option<PathBuf>,
}

impl Default for DataOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            image_size: None,
            len: None,
            hflip: None,
            on_error: OnError::Skip,
            pad_to: None,
            labels: None,
        }
    }
}

/// Default virtual length of generated datasets.
pub const DEFAULT_VIRTUAL_LEN: usize = 50_000;

/// Opens a dataset from a spec:
/// - `"shapes"`, `"shapes16"`, `"shapes32"`: [`ShapesDataset`], centred layout (size from the
///   name, else `options.image_size`, else 16); `"shapes-scattered"` (`…16`, `…32`): the
///   scattered layout ([`ShapesLayout`]);
/// - `"gmm"`, `"gmm16"`, `"gmm32"`: [`GmmDataset`] with [`GmmConfig`] defaults; a class range
///   `"gmm16:5-9"` keeps components 5 to 9 relabelled 0..5 (a transfer target);
/// - a path: a folder holding `manifest.json` → [`LatentStore`]; a folder holding `latents.npy` / `latents.safetensors` → latents; a folder holding
///   `train-images-idx3-ubyte[.gz]` → IDX; any other folder → image folder; `*.npy` /
///   `*.safetensors` → latents; a file whose name contains `idx` or ends in `-ubyte[.gz]` → IDX.
pub fn open_dataset(spec: &str, options: &DataOptions) -> Result<Box<dyn Dataset>, DataError> {
    let size_of = |rest: &str, default: usize| -> Result<usize, DataError> {
        match rest {
            "" => Ok(options.image_size.unwrap_or(default)),
            s => s
                .parse()
                .map_err(|_| DataError::Config(format!("bad size in dataset spec '{spec}'"))),
        }
    };
    let len = options.len.unwrap_or(DEFAULT_VIRTUAL_LEN);
    // Longest name first: "shapes-scattered32" also starts with "shapes".
    let shapes = ShapesLayout::ALL
        .into_iter()
        .find_map(|layout| Some((spec.strip_prefix(layout.spec_name())?, layout)))
        .filter(|(rest, _)| is_digits(rest));
    if let Some((rest, layout)) = shapes {
        let config = ShapesConfig {
            size: size_of(rest, 16)?,
            len,
            seed: options.seed,
            layout,
            hflip: options.hflip.unwrap_or(false),
        };
        return Ok(Box::new(ShapesDataset::new(config)?));
    }
    if let Some(gmm) = open_gmm(spec, options)? {
        return Ok(Box::new(gmm));
    }
    let path = Path::new(spec);
    if !path.exists() {
        return Err(DataError::bad(
            path,
            "no such file or folder; expected 'shapes', 'shapes32', 'shapes-scattered', 'gmm', an \
             image folder (one subfolder per class), latents (.npy / .safetensors) or \
             MNIST-style IDX files",
        ));
    }
    let lower = file_name_lower(path);
    if path.is_dir() {
        if path.join(latent_store::MANIFEST).is_file() {
            return Ok(Box::new(LatentStore::open(path, options)?));
        }
        for name in ["latents.npy", "latents.safetensors"] {
            if path.join(name).is_file() {
                let opts = DataOptions {
                    labels: options
                        .labels
                        .clone()
                        .or_else(|| Some(path.join("labels.npy"))),
                    ..options.clone()
                };
                return Ok(Box::new(LatentDataset::open(&path.join(name), &opts)?));
            }
        }
        for name in ["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"] {
            if path.join(name).is_file() {
                return Ok(Box::new(IdxDataset::open(&path.join(name), options)?));
            }
        }
        return Ok(Box::new(FolderDataset::open(path, options)?));
    }
    if lower.ends_with(".npy") || lower.ends_with(".safetensors") {
        return Ok(Box::new(LatentDataset::open(path, options)?));
    }
    if lower.contains("idx") || lower.ends_with("-ubyte") || lower.ends_with("-ubyte.gz") {
        return Ok(Box::new(IdxDataset::open(path, options)?));
    }
    Err(DataError::bad(
        path,
        "not a dataset: give a folder of class subfolders with PNG/JPEG images, a .npy or \
         .safetensors latents file, or an IDX images file (e.g. train-images-idx3-ubyte)",
    ))
}

/// The [`GmmDataset`] a `gmm` spec (`"gmm"`, `"gmm16"`, `"gmm32"`) names, `None` for any other
/// spec: the one place a spec becomes a mixture, so analyses that need the exact density get
/// the same mixture the trainer drew from.
pub fn open_gmm(spec: &str, options: &DataOptions) -> Result<Option<GmmDataset>, DataError> {
    let (spec, range) = match spec.split_once(':') {
        Some((s, r)) if s.starts_with("gmm") => (s, Some(r)),
        _ => (spec, None),
    };
    let Some(rest) = spec.strip_prefix("gmm").filter(|r| is_digits(r)) else {
        return Ok(None);
    };
    let (first_class, classes) = match range {
        None => (0, GmmConfig::default().classes),
        Some(r) => {
            let bad = || {
                DataError::Config(format!(
                    "bad class range '{r}' in dataset spec '{spec}:{r}': write FIRST-LAST, \
                     e.g. gmm16:5-9 (classes 5 to 9 of the 10, relabelled 0..5)"
                ))
            };
            let (a, b) = r.split_once('-').ok_or_else(bad)?;
            let (a, b): (usize, usize) =
                (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
            if a > b {
                return Err(bad());
            }
            (a, b - a + 1)
        }
    };
    let size = match rest {
        "" => options.image_size.unwrap_or(16),
        s => s
            .parse()
            .map_err(|_| DataError::Config(format!("bad size in dataset spec '{spec}'")))?,
    };
    let config = GmmConfig {
        size,
        len: options.len.unwrap_or(DEFAULT_VIRTUAL_LEN),
        seed: options.seed,
        first_class,
        classes,
        ..GmmConfig::default()
    };
    Ok(Some(GmmDataset::new(config)?))
}

fn is_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

pub(crate) fn file_name_lower(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default()
}

/// A ChaCha8 generator for `(seed, stream)`: independent streams of one seed, e.g. one per item
/// or per epoch. `domain` separates unrelated uses of the same seed.
pub fn stream_rng(seed: u64, domain: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(splitmix64(seed ^ splitmix64(domain)));
    rng.set_stream(stream);
    rng
}

/// SplitMix64 finaliser (a bijective 64-bit mix).
pub(crate) fn splitmix64(x: u64) -> u64 {
    let z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A standard normal draw (Box–Muller, one value per call; deterministic given the rng).
pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    use rand::Rng;
    let u1: f64 = rng.random();
    let u2: f64 = rng.random();
    (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Flips a `[C, H, W]` image horizontally in place.
pub(crate) fn hflip_in_place(x: &mut [f32], [_, _, w]: [usize; 3]) {
    for row in x.chunks_exact_mut(w) {
        row.reverse();
    }
}

/// Flips with probability 0.5 when `enabled` (consuming one draw only when enabled).
pub(crate) fn maybe_flip(x: &mut [f32], shape: [usize; 3], enabled: bool, rng: &mut ChaCha8Rng) {
    use rand::Rng;
    if enabled && rng.random::<bool>() {
        hflip_in_place(x, shape);
    }
}

/// Skip-and-count bookkeeping for datasets backed by files.
#[derive(Debug, Default)]
pub(crate) struct SkipLog {
    bad: std::sync::Mutex<std::collections::BTreeSet<usize>>,
    warned: std::sync::atomic::AtomicBool,
}

impl SkipLog {
    /// Records that item `index` is unreadable; warns once per dataset (`log::warn!`).
    pub(crate) fn record(&self, dataset: &str, index: usize, err: &DataError) {
        let mut bad = self.bad.lock().unwrap_or_else(|e| e.into_inner());
        bad.insert(index);
        if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
            let why = crate::error_chain(err);
            // Through the `log` facade: the library never prints, the CLI shows warnings.
            log::warn!(
                "{dataset}: skipping unreadable file ({why}); further skips are counted silently"
            );
        }
    }
    /// Number of distinct skipped items.
    pub(crate) fn count(&self) -> usize {
        self.bad.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Loads item `index` with `load`, applying `policy`: with [`OnError::Skip`], an unreadable
/// item is recorded and the next index (cyclically) is tried instead.
pub(crate) fn load_with_policy<F>(
    name: &str,
    len: usize,
    index: usize,
    policy: OnError,
    log: &SkipLog,
    rng: &mut ChaCha8Rng,
    mut load: F,
) -> Result<Item, DataError>
where
    F: FnMut(usize, &mut ChaCha8Rng) -> Result<Item, DataError>,
{
    if index >= len {
        return Err(DataError::Index { index, len });
    }
    let mut last = None;
    for k in 0..len {
        let i = (index + k) % len;
        match load(i, rng) {
            Ok(item) => return Ok(item),
            Err(e) if policy == OnError::Fail => return Err(e),
            Err(e) => {
                log.record(name, i, &e);
                last = Some(e);
            }
        }
    }
    Err(DataError::AllFailed {
        dataset: name.to_string(),
        last: Box::new(last.unwrap_or(DataError::Index { index, len })),
    })
}

/// Helpers shared by the data and image tests: temporary folders and tiny PNG/JPEG encoders.
#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_dataset_specs() {
        let opts = DataOptions {
            len: Some(10),
            ..DataOptions::default()
        };
        let d = open_dataset("shapes", &opts).unwrap();
        assert_eq!((d.shape(), d.len(), d.num_classes()), ([3, 16, 16], 10, 10));
        let d = open_dataset("shapes32", &opts).unwrap();
        assert_eq!(d.shape(), [3, 32, 32]);
        let d = open_dataset("shapes-scattered32", &opts).unwrap();
        assert_eq!(d.shape(), [3, 32, 32]);
        assert!(d.name().starts_with("shapes-scattered32"), "{}", d.name());
        assert!(open_dataset("shapes-scatteredX", &opts).is_err());
        let d = open_dataset("gmm", &opts).unwrap();
        assert_eq!((d.shape(), d.num_classes()), ([3, 16, 16], 10));
        // A class range: components 5..=9 of the full mixture, relabelled 0..5.
        let full = open_gmm("gmm16", &opts).unwrap().unwrap();
        let part = open_gmm("gmm16:5-9", &opts).unwrap().unwrap();
        assert_eq!(part.mixture().num_components(), 5);
        assert_eq!(part.mixture().mean(0), full.mixture().mean(5));
        assert_eq!(open_dataset("gmm16:5-9", &opts).unwrap().num_classes(), 5);
        for bad in ["gmm16:5", "gmm16:7-3", "gmm16:5-10", "gmm16:a-b"] {
            assert!(open_dataset(bad, &opts).is_err(), "{bad}");
        }
        let err = open_dataset("/definitely/not/here", &opts).unwrap_err();
        assert!(err.to_string().contains("/definitely/not/here"), "{err}");
        assert!(open_dataset("shapesX", &opts).is_err());
    }

    #[test]
    fn stream_rngs_differ_and_repeat() {
        use rand::Rng;
        let a: u64 = stream_rng(1, 2, 3).random();
        assert_eq!(a, stream_rng(1, 2, 3).random::<u64>());
        assert_ne!(a, stream_rng(1, 2, 4).random::<u64>());
        assert_ne!(a, stream_rng(1, 3, 3).random::<u64>());
        assert_ne!(a, stream_rng(2, 2, 3).random::<u64>());
    }
}
