//! Large sample sets for evaluation (FID-50K): sampled in batches, decoded through the VAE,
//! written in the ADM evaluator's format, resumable.
//!
//! Output (DiT's `sample_ddp.py`, REFERENCE §7): an `.npz` holding only `arr_0`, uint8
//! `[N, H, W, 3]` RGB, bytes = `clamp(127.5·x + 128, 0, 255)` truncated, where `x` is the VAE's
//! decoding of `latent / scaling_factor` (latent models) or the sample itself (pixel models);
//! the labels go to a separate `<stem>_labels.npy` (`[N]` int64) so the `.npz` stays exactly what
//! the evaluator reads.
//!
//! Same seed, same images, whatever the batch size: sample `i` draws its starting state and every
//! step's noise from ChaCha stream `i` of the seed ([`SeededNormal::per_sample`]) and its label
//! from stream `i` of a label generator; on the CPU each sample's arithmetic does not depend on
//! the rest of its batch, so the bytes are identical (on a GPU, batched kernels may round
//! differently with the batch size).
//!
//! Resuming: every finished batch is written atomically to `<npz>.parts/part-<start>-<len>.npy`
//! next to a `settings.json` of everything that decides the images. A re-run with the same
//! settings continues after the last contiguous part (any batch size); other settings are an
//! error. The `.npz` is assembled at the end by streaming the parts (zip64, stored) into a
//! temporary file renamed into place, then the parts are removed. Memory holds one batch.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use nag_core::guidance::Guidance;
use nag_models::npy::{npy_header, write_npy, NpyArray, NpyData};
use nag_models::vae::{Vae, VaeError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::generate::{GenerateError, SampleConfig, Sampled};
use crate::sampling::SeededNormal;
use crate::vae_codec::{decode_latents, to_u8_nhwc};

/// How the labels of a sample set are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelMode {
    /// i.i.d. uniform over the classes, as DiT's `sample_ddp.py` (`randint(0, num_classes)`):
    /// the distribution behind the published numbers (torch's own generator is not
    /// reproduced: label `i` comes from ChaCha stream `i` of `seed ^ LABEL_SALT`).
    Uniform,
    /// `i mod num_classes`: the same count per class when N is a multiple of the classes.
    Balanced,
    /// Every sample this class.
    Fixed(i64),
}

/// Mixed into the seed of the label streams so labels and noise are independent.
pub const LABEL_SALT: u64 = 0x6c61_6265_6c73; // "labels"

impl LabelMode {
    /// Labels of samples `start..start + len` (0 for unconditional models).
    pub fn labels(self, seed: u64, start: usize, len: usize, num_classes: usize) -> Vec<i64> {
        (start..start + len)
            .map(|i| match self {
                _ if num_classes == 0 => 0,
                LabelMode::Fixed(y) => y,
                LabelMode::Balanced => (i % num_classes) as i64,
                LabelMode::Uniform => {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ LABEL_SALT);
                    rng.set_stream(i as u64);
                    rng.random_range(0..num_classes as i64)
                }
            })
            .collect()
    }

    /// A short name for settings and messages.
    pub fn name(self) -> String {
        match self {
            LabelMode::Uniform => "uniform".into(),
            LabelMode::Balanced => "balanced".into(),
            LabelMode::Fixed(y) => format!("class {y}"),
        }
    }
}

/// Errors of [`sample_set`].
#[derive(Debug, thiserror::Error)]
pub enum SampleSetError {
    /// Sampling failed.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// Decoding failed.
    #[error(transparent)]
    Vae(#[from] VaeError),
    /// An option that cannot work.
    #[error("{0}")]
    Config(String),
    /// The parts folder belongs to another run.
    #[error(
        "{dir} holds an unfinished sample set made with other settings ({what}); delete that \
         folder to start over, or write to another --npz"
    )]
    OtherSettings {
        /// The parts folder.
        dir: PathBuf,
        /// The first setting that differs.
        what: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SampleSetError + '_ {
    move |source| SampleSetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to sample and where.
#[derive(Debug, Clone)]
pub struct SampleSetSpec {
    /// Number of samples.
    pub n: usize,
    /// Samples per batch (does not change the images).
    pub batch: usize,
    /// Labels.
    pub labels: LabelMode,
    /// Guidance of every sample.
    pub guidance: Guidance,
    /// Everything else that decides the images (weights file, VAE, …), as JSON; compared on
    /// resume together with the sampler settings, n, labels and guidance.
    pub identity: serde_json::Value,
}

/// Progress of [`sample_set`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetProgress {
    /// Samples written (including those found from an earlier run).
    pub done: usize,
    /// All samples.
    pub total: usize,
    /// Samples found already written when the run started.
    pub resumed: usize,
}

/// What [`sample_set`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSetSummary {
    /// The `.npz`.
    pub npz: PathBuf,
    /// The labels `.npy`.
    pub labels: PathBuf,
    /// `[N, H, W, 3]`.
    pub shape: [usize; 4],
    /// Samples found from an interrupted run.
    pub resumed: usize,
}

/// The labels file written next to `npz`: `<stem>_labels.npy`.
pub fn labels_path(npz: &Path) -> PathBuf {
    let stem = npz.file_stem().unwrap_or_default().to_string_lossy();
    npz.with_file_name(format!("{stem}_labels.npy"))
}

/// The parts folder of an unfinished `npz`: `<npz>.parts`.
pub fn parts_dir(npz: &Path) -> PathBuf {
    let mut name = npz.file_name().unwrap_or_default().to_os_string();
    name.push(".parts");
    npz.with_file_name(name)
}

/// Samples `spec.n` images of `sampled` (decoded by `vae` with its scaling factor when given)
/// into the ADM `.npz` at `npz`; see the [module docs](self).
#[allow(clippy::too_many_arguments)]
pub fn sample_set<B: Backend>(
    sampled: &Sampled<'_, B>,
    num_classes: usize,
    vae: Option<(&Vae<B>, f64)>,
    cfg: &SampleConfig,
    spec: &SampleSetSpec,
    npz: &Path,
    device: &B::Device,
    progress: &mut dyn FnMut(SetProgress),
) -> Result<SampleSetSummary, SampleSetError> {
    if spec.n == 0 {
        return Err(SampleSetError::Config("--n must be at least 1".into()));
    }
    if let LabelMode::Fixed(y) = spec.labels {
        if num_classes > 0 && !(0..num_classes as i64).contains(&y) {
            return Err(SampleSetError::Config(format!(
                "--class {y} is outside 0..{num_classes}"
            )));
        }
    }
    let dir = parts_dir(npz);
    let settings = serde_json::json!({
        "format": "nag sample set v1",
        "n": spec.n,
        "labels": spec.labels.name(),
        "guidance": format!("{:?}", spec.guidance),
        "sampler": format!("{:?}", cfg.sampler),
        "steps": cfg.steps,
        "eta": cfg.eta,
        "seed": cfg.seed,
        "path": cfg.path,
        "clip_x0": cfg.clip_x0,
        "variance": format!("{:?}", cfg.variance),
        "model": spec.identity,
    });
    let mut done = prepare_parts(&dir, &settings)?;
    let resumed = done;
    progress(SetProgress {
        done,
        total: spec.n,
        resumed,
    });
    let mut image_shape: Option<[usize; 3]> = read_part_shape(&dir)?;
    while done < spec.n {
        let len = spec.batch.max(1).min(spec.n - done);
        let labels = spec.labels.labels(cfg.seed, done, len, num_classes);
        let noise = SeededNormal::per_sample(cfg.seed, done as u64);
        let x = sampled.generate_with_noise(&labels, spec.guidance, cfg, noise, None)?;
        let dims = x.dims();
        let values: Vec<f32> = x
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("a float tensor reads back as f32");
        if values.iter().any(|v| !v.is_finite()) {
            return Err(SampleSetError::Config(format!(
                "samples {done}..{} contain NaN/inf; nothing of this batch was written",
                done + len
            )));
        }
        let (images, ishape) = match vae {
            Some((vae, scale)) => {
                let z: Vec<f32> = values.iter().map(|v| v / scale as f32).collect();
                decode_latents(vae, &z, dims, len, device, &mut |_| {})?
            }
            None => (values, dims),
        };
        if ishape[1] != 3 {
            return Err(SampleSetError::Config(format!(
                "the samples have {} channels; the ADM .npz needs RGB images: give --vae for a \
                 latent model",
                ishape[1]
            )));
        }
        let bytes = to_u8_nhwc(&images, ishape);
        let shape = [ishape[2], ishape[3], 3];
        if image_shape.is_some_and(|s| s != shape) {
            return Err(SampleSetError::Config(format!(
                "batch {done}.. has images {shape:?} but earlier parts {image_shape:?}"
            )));
        }
        image_shape = Some(shape);
        write_part(&dir, done, len, shape, &bytes)?;
        done += len;
        progress(SetProgress {
            done,
            total: spec.n,
            resumed,
        });
    }
    let shape = image_shape.expect("at least one batch");
    assemble(&dir, npz, spec.n, shape)?;
    let labels = spec.labels.labels(cfg.seed, 0, spec.n, num_classes);
    let lpath = labels_path(npz);
    write_npy(
        &lpath,
        &NpyArray::new(vec![spec.n], NpyData::I64(labels)).expect("n labels"),
    )
    .map_err(|e| SampleSetError::Config(e.to_string()))?;
    std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    Ok(SampleSetSummary {
        npz: npz.to_path_buf(),
        labels: lpath,
        shape: [spec.n, shape[0], shape[1], shape[2]],
        resumed,
    })
}

const SETTINGS: &str = "settings.json";

/// Creates the parts folder (or checks an existing one's settings) and returns the number of
/// samples already written contiguously from 0.
fn prepare_parts(dir: &Path, settings: &serde_json::Value) -> Result<usize, SampleSetError> {
    let path = dir.join(SETTINGS);
    if dir.is_dir() && path.is_file() {
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let old: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            SampleSetError::Config(format!("{}: not valid JSON ({e})", path.display()))
        })?;
        if &old != settings {
            let what = first_difference(&old, settings);
            return Err(SampleSetError::OtherSettings {
                dir: dir.to_path_buf(),
                what,
            });
        }
        return Ok(contiguous_parts(dir)?.last().map_or(0, |&(s, l)| s + l));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let text = serde_json::to_string_pretty(settings).expect("JSON serialises");
    nag_models::checkpoint::write_atomic(&path, |w| w.write_all(text.as_bytes()))
        .map_err(io(&path))?;
    Ok(0)
}

fn first_difference(old: &serde_json::Value, new: &serde_json::Value) -> String {
    match (old.as_object(), new.as_object()) {
        (Some(a), Some(b)) => {
            for (k, v) in b {
                if a.get(k) != Some(v) {
                    return format!(
                        "{k}: was {}, now {v}",
                        a.get(k).map_or("absent".into(), |x| x.to_string())
                    );
                }
            }
            "a setting was removed".into()
        }
        _ => "settings.json".into(),
    }
}

fn part_name(start: usize, len: usize) -> String {
    format!("part-{start:09}-{len}.npy")
}

/// The parts `(start, len)` that follow each other from 0, in order.
fn contiguous_parts(dir: &Path) -> Result<Vec<(usize, usize)>, SampleSetError> {
    let mut parts: Vec<(usize, usize)> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix("part-")?.strip_suffix(".npy")?;
            let (s, l) = rest.split_once('-')?;
            Some((s.parse().ok()?, l.parse().ok()?))
        })
        .collect();
    parts.sort();
    let mut out = Vec::new();
    let mut next = 0;
    for (s, l) in parts {
        if s == next && l > 0 {
            out.push((s, l));
            next = s + l;
        }
    }
    Ok(out)
}

/// `[H, W, 3]` of the parts already written, from the first part's header.
fn read_part_shape(dir: &Path) -> Result<Option<[usize; 3]>, SampleSetError> {
    let Some(&(s, l)) = contiguous_parts(dir)?.first() else {
        return Ok(None);
    };
    let path = dir.join(part_name(s, l));
    let array = nag_models::npy::read_npy(&path)
        .map_err(|e| SampleSetError::Config(format!("{}: {e}", path.display())))?;
    match array.shape.as_slice() {
        [n, h, w, 3] if *n == l => Ok(Some([*h, *w, 3])),
        other => Err(SampleSetError::Config(format!(
            "{} has shape {other:?}; delete the parts folder to start over",
            path.display()
        ))),
    }
}

fn write_part(
    dir: &Path,
    start: usize,
    len: usize,
    shape: [usize; 3],
    bytes: &[u8],
) -> Result<(), SampleSetError> {
    let path = dir.join(part_name(start, len));
    let header = npy_header("|u1", &[len, shape[0], shape[1], shape[2]]);
    nag_models::checkpoint::write_atomic(&path, |w| {
        w.write_all(&header)?;
        w.write_all(bytes)
    })
    .map_err(io(&path))
}

/// Writes `npz` atomically in the ADM evaluator's batch format: one stored (zip64) entry
/// `arr_0.npy` of uint8 `[n, H, W, 3]`, whose values `fill` writes after the header.
fn write_arr_0(
    npz: &Path,
    n: usize,
    shape: [usize; 3],
    fill: impl FnOnce(&mut dyn Write) -> Result<(), SampleSetError>,
) -> Result<(), SampleSetError> {
    let mut tmp_name = npz.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = npz.with_file_name(tmp_name);
    let result = (|| -> Result<(), SampleSetError> {
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let mut zip = zip::ZipWriter::new(BufWriter::with_capacity(1 << 20, file));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(true);
        let zerr =
            |e: zip::result::ZipError| SampleSetError::Config(format!("{}: {e}", tmp.display()));
        zip.start_file("arr_0.npy", options).map_err(zerr)?;
        zip.write_all(&npy_header("|u1", &[n, shape[0], shape[1], shape[2]]))
            .map_err(io(&tmp))?;
        fill(&mut zip)?;
        let w = zip.finish().map_err(zerr)?;
        let file = w
            .into_inner()
            .map_err(|e| SampleSetError::Config(format!("{}: {e}", tmp.display())))?;
        file.sync_all().map_err(io(&tmp))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, npz).map_err(io(npz))
}

/// Writes images already in memory (uint8 `[N, H, W, 3]`, `shape`) as an ADM `.npz` (only
/// `arr_0`), atomically: e.g. a reference batch of real images.
pub fn write_images_npz(npz: &Path, shape: [usize; 4], bytes: &[u8]) -> Result<(), SampleSetError> {
    let [n, h, w, c] = shape;
    if c != 3 || bytes.len() != n * h * w * c {
        return Err(SampleSetError::Config(format!(
            "{} bytes for images {shape:?}: the ADM format is uint8 [N, H, W, 3]",
            bytes.len()
        )));
    }
    write_arr_0(npz, n, [h, w, 3], |zip| {
        zip.write_all(bytes).map_err(io(npz))
    })
}

/// Streams the parts into `npz`, atomically (see [`write_arr_0`]).
fn assemble(dir: &Path, npz: &Path, n: usize, shape: [usize; 3]) -> Result<(), SampleSetError> {
    let parts = contiguous_parts(dir)?;
    let covered = parts.last().map_or(0, |&(s, l)| s + l);
    if covered < n {
        return Err(SampleSetError::Config(format!(
            "{}: parts cover {covered} of {n} samples",
            dir.display()
        )));
    }
    let per = shape.iter().product::<usize>();
    write_arr_0(npz, n, shape, |zip| {
        let mut left = n;
        for (s, l) in parts {
            let path = dir.join(part_name(s, l));
            let header_len = npy_header("|u1", &[l, shape[0], shape[1], shape[2]]).len();
            let mut f = File::open(&path).map_err(io(&path))?;
            let mut header = vec![0u8; header_len];
            f.read_exact(&mut header).map_err(io(&path))?;
            let take = l.min(left);
            let copied = std::io::copy(&mut f.take((take * per) as u64), zip).map_err(io(&path))?;
            if copied != (take * per) as u64 {
                return Err(SampleSetError::Config(format!(
                    "{} is truncated; delete it and re-run to redo that batch",
                    path.display()
                )));
            }
            left -= take;
            if left == 0 {
                break;
            }
        }
        Ok(())
    })
}
