//! Extraction of a latent store ([`crate::data::latent_store`]) from an image folder through
//! the SD VAE: `cargo xtask latents`.
//!
//! Files are listed as torchvision's `ImageFolder` does (sorted class subfolders → labels 0, 1,
//! …; files sorted, recursively, per class); each image gets the ADM centre crop to `size`, and
//! the crop **and its horizontal mirror** are encoded (one VAE batch holds both), storing the
//! posterior mean and std of each. Shard `k` covers source files `k·shard_size ..
//! (k+1)·shard_size`, so a shard's content does not depend on earlier runs: an interrupted run
//! continues at the first shard that is missing from the manifest (or whose file is missing or
//! of the wrong size) and reproduces the same bytes. Unreadable files follow [`OnError`].
//! Images are decoded on `threads` CPU threads, one batch ahead of the VAE.

use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use burn::tensor::backend::Backend;
use nag_models::vae::{Vae, VaeError};

use crate::data::folder::{center_crop_arr, decode_image};
use crate::data::latent_store::{write_classes, Manifest, ShardBuilder, StoreParams, MANIFEST};
use crate::data::{hflip_in_place, DataError, DataOptions, FolderDataset, OnError};
use crate::vae_codec::{encode_images, LatentDraw};

/// Options of [`extract_latents`] (and of `xtask latents`).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct ExtractConfig {
    /// Image folder, one subfolder per class (sorted as torchvision's ImageFolder).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// diffusers VAE folder (config.json + diffusion_pytorch_model.safetensors or .bin), e.g.
    /// stabilityai/sd-vae-ft-ema.
    #[arg(long, value_name = "DIR")]
    pub vae: PathBuf,
    /// Output store folder; re-running the same command continues an interrupted extraction.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// ADM centre-crop side (a multiple of the VAE's downscale, 8 for the SD VAE).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Images per VAE call (each is encoded plain and mirrored: 2·batch crops).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Source images per shard file (2048 × 32 KiB = 64 MiB at 256 px).
    #[arg(long, default_value_t = 2048)]
    pub shard_size: usize,
    /// Unreadable files: `skip` (count them) or `fail` (stop, naming the file).
    #[arg(
        long = "on-bad-file",
        value_enum,
        ignore_case = true,
        hide_possible_values = true,
        value_name = "skip|fail",
        default_value = "skip"
    )]
    pub on_error: OnError,
    /// Image-decoding threads (default: the number of cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Reported after each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractProgress {
    /// Source files handled (completed shards from an earlier run included).
    pub done: usize,
    /// Source files in all.
    pub total: usize,
    /// Files handled by earlier runs (resumed shards).
    pub resumed: usize,
    /// Unreadable files skipped so far.
    pub skipped: usize,
}

/// What [`extract_latents`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractSummary {
    /// The final manifest.
    pub manifest: Manifest,
    /// Shards that were already complete when this run started.
    pub resumed_shards: usize,
}

/// Errors of [`extract_latents`].
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// Data, options or output-folder error.
    #[error(transparent)]
    Data(#[from] DataError),
    /// VAE folder or run error.
    #[error(transparent)]
    Vae(#[from] VaeError),
}

/// One decoded source image: its crop, or why it could not be read.
type Decoded = Result<Vec<f32>, DataError>;

fn load_crop(path: &Path, size: usize) -> Decoded {
    let img = decode_image(path)?;
    if img.width == 0 || img.height == 0 {
        return Err(DataError::decode(path, "empty image"));
    }
    Ok(center_crop_arr(&img, size))
}

/// Decodes `paths` on up to `threads` threads, keeping their order.
fn decode_all(paths: &[&Path], size: usize, threads: usize) -> Vec<Decoded> {
    let per = paths.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || chunk.iter().map(|p| load_crop(p, size)).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

fn canonical(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// The differences between the options a store was made with and `now`, in words.
fn differences(was: &StoreParams, now: &StoreParams) -> Vec<String> {
    let mut out = Vec::new();
    let mut cmp = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name} {a} → {b}"));
        }
    };
    cmp("size", was.size.to_string(), now.size.to_string());
    cmp(
        "shard size",
        was.shard_size.to_string(),
        now.shard_size.to_string(),
    );
    cmp("VAE", was.vae.clone(), now.vae.clone());
    cmp("image folder", was.source.clone(), now.source.clone());
    cmp(
        "image files",
        was.source_files.to_string(),
        now.source_files.to_string(),
    );
    cmp(
        "classes",
        was.num_classes.to_string(),
        now.num_classes.to_string(),
    );
    cmp(
        "latent shape",
        format!("{:?}", was.latent_shape),
        format!("{:?}", now.latent_shape),
    );
    cmp(
        "scaling factor",
        was.scaling_factor.to_string(),
        now.scaling_factor.to_string(),
    );
    out
}

/// Extracts (or continues extracting) a latent store; see the [module docs](self).
pub fn extract_latents<B: Backend>(
    cfg: &ExtractConfig,
    device: &B::Device,
    progress: &mut dyn FnMut(ExtractProgress),
) -> Result<ExtractSummary, ExtractError> {
    if cfg.size == 0 || cfg.batch == 0 || cfg.shard_size == 0 {
        return Err(DataError::Config(format!(
            "--size ({}), --batch ({}) and --shard-size ({}) must be at least 1",
            cfg.size, cfg.batch, cfg.shard_size
        ))
        .into());
    }
    let folder = FolderDataset::open(
        &cfg.data,
        &DataOptions {
            image_size: Some(cfg.size),
            hflip: Some(false),
            on_error: cfg.on_error,
            ..DataOptions::default()
        },
    )?;
    let (vae, source) = Vae::<B>::load(&cfg.vae, device)?;
    let vc = &source.config;
    if vc.in_channels != 3 {
        return Err(VaeError::Config {
            path: cfg.vae.join("config.json"),
            reason: format!(
                "in_channels is {}; latents are extracted from RGB images, so the VAE must take \
                 3 channels (give an SD VAE folder such as stabilityai/sd-vae-ft-ema)",
                vc.in_channels
            ),
        }
        .into());
    }
    let ds = vae.downscale();
    if !cfg.size.is_multiple_of(ds) {
        return Err(DataError::Config(format!(
            "--size {} is not a multiple of the VAE's downscale factor {ds}; use e.g. --size {}",
            cfg.size,
            (cfg.size / ds).max(1) * ds
        ))
        .into());
    }
    let files = folder.files();
    let side = cfg.size / ds;
    let params = StoreParams {
        latent_shape: [vae.latent_channels(), side, side],
        scaling_factor: vc.scaling_factor,
        size: cfg.size,
        vae: canonical(&cfg.vae),
        source: canonical(&cfg.data),
        source_files: files.len(),
        num_classes: folder.classes().len(),
        shard_size: cfg.shard_size,
    };
    let shards_total = files.len().div_ceil(cfg.shard_size);
    let out = &cfg.out;
    let mut manifest = if out.join(MANIFEST).is_file() {
        let mut m = Manifest::read(out)?;
        let diff = differences(&m.params, &params);
        if !diff.is_empty() {
            return Err(DataError::bad(
                out,
                format!(
                    "holds latents made with other options or data ({}); pick a new --out, or \
                     rerun with the original options to continue it",
                    diff.join(", ")
                ),
            )
            .into());
        }
        // Keep the recorded shards up to the first one whose file is missing or altered.
        let intact = m
            .shards
            .iter()
            .take_while(|s| {
                std::fs::metadata(out.join(&s.file)).is_ok_and(|md| md.len() == s.bytes)
            })
            .count();
        let mut fresh = Manifest::new(params.clone(), shards_total);
        for s in m.shards.drain(..intact) {
            fresh.push_shard(s);
        }
        fresh
    } else {
        let non_empty = std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some());
        if non_empty {
            return Err(DataError::bad(
                out,
                "exists, is not empty and holds no manifest.json; pick a new --out",
            )
            .into());
        }
        std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
        Manifest::new(params.clone(), shards_total)
    };
    write_classes(out, folder.classes())?;
    let resumed_shards = manifest.shards.len();
    let resumed = (resumed_shards * cfg.shard_size).min(files.len());
    manifest.complete = resumed_shards == shards_total;
    manifest.write(out)?;
    progress(ExtractProgress {
        done: resumed,
        total: files.len(),
        resumed,
        skipped: manifest.skipped,
    });

    // Batches of file indices, shard by shard, for the shards still to do.
    let batches: Vec<(usize, std::ops::Range<usize>)> = (resumed_shards..shards_total)
        .flat_map(|k| {
            let (a, b) = (
                k * cfg.shard_size,
                ((k + 1) * cfg.shard_size).min(files.len()),
            );
            (a..b)
                .step_by(cfg.batch)
                .map(move |s| (k, s..(s + cfg.batch).min(b)))
        })
        .collect();
    let size = cfg.size;
    let threads = cfg
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let [lc, lh, lw] = params.latent_shape;
    let d = lc * lh * lw;
    let per_image = 3 * size * size;
    std::thread::scope(|s| -> Result<(), ExtractError> {
        // Decode one batch ahead of the VAE.
        let (tx, rx) = sync_channel::<Vec<Decoded>>(1);
        let order = batches.clone();
        s.spawn(move || {
            for (_, range) in order {
                let paths: Vec<&Path> = files[range].iter().map(|(p, _)| p.as_path()).collect();
                if tx.send(decode_all(&paths, size, threads)).is_err() {
                    break;
                }
            }
        });
        let mut shard = ShardBuilder::new(params.latent_shape);
        let mut skipped: Vec<String> = Vec::new();
        for (i, (k, range)) in batches.iter().enumerate() {
            let decoded = rx
                .recv()
                .map_err(|_| DataError::Worker("image decoding stopped".into()))?;
            // Plain and mirrored crops of the readable images, interleaved.
            let mut input = Vec::with_capacity(2 * range.len() * per_image);
            let mut kept = Vec::new();
            for (f, result) in range.clone().zip(decoded) {
                match result {
                    Ok(crop) => {
                        let mut mirrored = crop.clone();
                        hflip_in_place(&mut mirrored, [3, size, size]);
                        input.extend(crop);
                        input.extend(mirrored);
                        kept.push(f);
                    }
                    Err(e) if cfg.on_error == OnError::Fail => return Err(e.into()),
                    Err(_) => skipped.push(files[f].0.display().to_string()),
                }
            }
            if !kept.is_empty() {
                let n = 2 * kept.len();
                let enc = encode_images(
                    &vae,
                    &input,
                    [n, 3, size, size],
                    n,
                    LatentDraw::Mean,
                    device,
                    &mut |_| {},
                )?;
                for (j, &f) in kept.iter().enumerate() {
                    let at = |v: &[f32], r: usize| v[r * d..(r + 1) * d].to_vec();
                    let (m0, s0) = (at(&enc.latents, 2 * j), at(&enc.std, 2 * j));
                    let (m1, s1) = (at(&enc.latents, 2 * j + 1), at(&enc.std, 2 * j + 1));
                    let (path, label) = &files[f];
                    if let Err(reason) = shard.push([&m0, &s0, &m1, &s1], *label, f) {
                        let e = DataError::bad(path, format!("VAE output unusable: {reason}"));
                        if cfg.on_error == OnError::Fail {
                            return Err(e.into());
                        }
                        skipped.push(path.display().to_string());
                    }
                }
            }
            let last_of_shard = batches.get(i + 1).is_none_or(|(next, _)| next != k);
            if last_of_shard {
                let entry =
                    shard.write(out, *k, k * cfg.shard_size, std::mem::take(&mut skipped))?;
                manifest.push_shard(entry);
                manifest.complete = manifest.shards.len() == shards_total;
                manifest.write(out)?;
                shard = ShardBuilder::new(params.latent_shape);
            }
            progress(ExtractProgress {
                done: range.end,
                total: files.len(),
                resumed,
                skipped: manifest.skipped + skipped.len(),
            });
        }
        Ok(())
    })?;
    if manifest.count == 0 {
        return Err(DataError::bad(
            &cfg.data,
            format!(
                "none of the {} image files could be read; see --on-bad-file fail for the first error",
                files.len()
            ),
        )
        .into());
    }
    Ok(ExtractSummary {
        manifest,
        resumed_shards,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::latent_store::{read_classes, LatentStore};
    use crate::data::testutil::{write_png, TempDir};
    use crate::data::{open_dataset, stream_rng, Dataset};
    use nag_models::vae::{save_diffusers_folder, VaeConfig};
    use rand::Rng;
    use rand_distr::StandardNormal;

    type B = burn_ndarray::NdArray;

    fn tiny_vae(dir: &Path, in_channels: usize) {
        let config = VaeConfig::new(vec![8, 16])
            .with_norm_num_groups(4)
            .with_layers_per_block(1)
            .with_in_channels(in_channels);
        save_diffusers_folder(dir, &config, &config.random_state_dict(7)).unwrap();
    }

    /// Two classes of 20×24 PNGs (a: 2 images, b: 1 image and one corrupt file).
    fn image_folder(root: &Path) {
        for (k, name) in ["a/x0.png", "a/x1.png", "b/y0.png"].iter().enumerate() {
            let data: Vec<u8> = (0..20 * 24 * 3)
                .map(|i| ((i * (7 + 5 * k) + 31 * k) % 251) as u8)
                .collect();
            write_png(&root.join(name), 20, 24, 3, &data);
        }
        std::fs::write(root.join("b/zz-corrupt.png"), b"\x89PNG\r\n\x1a\ngarbage").unwrap();
    }

    fn config(tmp: &TempDir, out: &str) -> ExtractConfig {
        ExtractConfig {
            data: tmp.join("images"),
            vae: tmp.join("vae"),
            out: tmp.join(out),
            size: 16,
            batch: 2,
            shard_size: 2,
            on_error: OnError::Skip,
            threads: Some(2),
        }
    }

    fn run(cfg: &ExtractConfig) -> Result<ExtractSummary, ExtractError> {
        extract_latents::<B>(cfg, &Default::default(), &mut |_| {})
    }

    #[test]
    fn extraction_store_resume_and_reader() {
        let tmp = TempDir::new("extract");
        image_folder(&tmp.join("images"));
        tiny_vae(&tmp.join("vae"), 3);
        let cfg = config(&tmp, "store");
        let mut reports = Vec::new();
        let summary =
            extract_latents::<B>(&cfg, &Default::default(), &mut |p| reports.push(p)).unwrap();
        let m = &summary.manifest;
        assert_eq!(
            (m.count, m.skipped, m.shards.len(), m.complete),
            (3, 1, 2, true)
        );
        assert_eq!(m.params.latent_shape, [4, 8, 8]);
        assert_eq!(
            (m.params.num_classes, m.params.size, m.params.source_files),
            (2, 16, 4)
        );
        assert!(m.shards[1].skipped[0].ends_with("zz-corrupt.png"));
        assert_eq!(reports.last().unwrap().done, 4);
        assert_eq!(reports.last().unwrap().skipped, 1);
        assert_eq!(read_classes(&cfg.out).unwrap(), ["a", "b"]);
        let store = LatentStore::open(&cfg.out, &DataOptions::default()).unwrap();
        assert_eq!(store.labels(), [0, 0, 1]);

        // Each stored version equals encoding that crop on its own (to f16 precision).
        let (vae, _) = Vae::<B>::load(&cfg.vae, &Default::default()).unwrap();
        let crop = load_crop(&cfg.data.join("a/x1.png"), 16).unwrap();
        let mut mirrored = crop.clone();
        hflip_in_place(&mut mirrored, [3, 16, 16]);
        for (flip, img) in [crop, mirrored].into_iter().enumerate() {
            let enc = encode_images(
                &vae,
                &img,
                [1, 3, 16, 16],
                1,
                LatentDraw::Mean,
                &Default::default(),
                &mut |_| {},
            )
            .unwrap();
            let (mean, std) = store.moments(1, flip).unwrap();
            for (got, want) in mean
                .iter()
                .chain(&std)
                .zip(enc.latents.iter().chain(&enc.std))
            {
                assert!(
                    (got - want).abs() <= 1e-3 * want.abs() + 1e-6,
                    "{got} vs {want}"
                );
            }
        }
        let (m0, _) = store.moments(1, 0).unwrap();
        let (m1, _) = store.moments(1, 1).unwrap();
        assert_ne!(m0, m1, "the mirrored crop is encoded, not a copy");

        // Resume after losing the last shard: the same bytes again.
        let shard1 = cfg.out.join(&m.shards[1].file);
        let bytes = std::fs::read(&shard1).unwrap();
        let manifest = std::fs::read(cfg.out.join(MANIFEST)).unwrap();
        std::fs::remove_file(&shard1).unwrap();
        let again = run(&cfg).unwrap();
        assert_eq!(again.resumed_shards, 1);
        assert_eq!(std::fs::read(&shard1).unwrap(), bytes);
        assert_eq!(std::fs::read(cfg.out.join(MANIFEST)).unwrap(), manifest);
        // A complete store is left as it is.
        assert_eq!(run(&cfg).unwrap().resumed_shards, 2);

        // Other options on the same --out: an error naming the difference.
        let err = run(&ExtractConfig {
            size: 8,
            ..cfg.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("size 16 → 8") && err.contains("new --out"),
            "{err}"
        );

        // The reader: (mean + std·ε)·scale with ε and the flip from the item's rng.
        let ds = open_dataset(cfg.out.to_str().unwrap(), &DataOptions::default()).unwrap();
        assert_eq!((ds.len(), ds.shape(), ds.num_classes()), (3, [4, 8, 8], 2));
        let scale = m.params.scaling_factor as f32;
        let mut seen_flips = [false; 2];
        for s in 0..16 {
            let mut rng = stream_rng(3, 4, s);
            let mut replay = rng.clone();
            let item = ds.item(2, &mut rng).unwrap();
            assert_eq!(item.y, 1);
            let flip = usize::from(replay.random::<bool>());
            seen_flips[flip] = true;
            let (mean, std) = store.moments(2, flip).unwrap();
            for k in 0..mean.len() {
                let eps: f32 = replay.sample(StandardNormal);
                assert_eq!(item.x[k], (mean[k] + std[k] * eps) * scale);
            }
            assert_eq!(
                ds.item(2, &mut stream_rng(3, 4, s)).unwrap(),
                item,
                "same rng, same item"
            );
            assert_ne!(
                ds.item(2, &mut stream_rng(3, 4, s + 100)).unwrap().x,
                item.x
            );
        }
        assert_eq!(seen_flips, [true, true]);
        // Flips off: always the plain crop.
        let plain = LatentStore::open(
            &cfg.out,
            &DataOptions {
                hflip: Some(false),
                ..DataOptions::default()
            },
        )
        .unwrap();
        let mut rng = stream_rng(0, 0, 0);
        let mut replay = rng.clone();
        let x = plain.item(0, &mut rng).unwrap().x;
        let (mean, std) = store.moments(0, 0).unwrap();
        let eps: f32 = replay.sample(StandardNormal);
        assert_eq!(x[0], (mean[0] + std[0] * eps) * scale);
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let tmp = TempDir::new("extract-bad");
        image_folder(&tmp.join("images"));
        tiny_vae(&tmp.join("vae"), 3);
        // Fail policy: the error names the corrupt file; the shards before it are kept.
        let cfg = ExtractConfig {
            on_error: OnError::Fail,
            ..config(&tmp, "fail")
        };
        let err = run(&cfg).unwrap_err().to_string();
        assert!(err.contains("zz-corrupt.png"), "{err}");
        let m = Manifest::read(&cfg.out).unwrap();
        assert_eq!((m.shards.len(), m.complete), (1, false));
        let err = LatentStore::open(&cfg.out, &DataOptions::default()).unwrap_err();
        assert!(err.to_string().contains("unfinished"), "{err}");
        // A size the VAE cannot halve.
        let err = run(&ExtractConfig {
            size: 15,
            ..config(&tmp, "odd")
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("multiple of the VAE's downscale factor 2"),
            "{err}"
        );
        // A VAE for other than RGB.
        tiny_vae(&tmp.join("vae1"), 1);
        let err = run(&ExtractConfig {
            vae: tmp.join("vae1"),
            ..config(&tmp, "gray")
        })
        .unwrap_err();
        assert!(err.to_string().contains("in_channels is 1"), "{err}");
        // An empty image folder.
        std::fs::create_dir_all(tmp.join("empty")).unwrap();
        let err = run(&ExtractConfig {
            data: tmp.join("empty"),
            ..config(&tmp, "none")
        })
        .unwrap_err();
        assert!(err.to_string().contains("no PNG/JPEG images"), "{err}");
        // A non-empty --out that is not a store.
        std::fs::create_dir_all(tmp.join("busy")).unwrap();
        std::fs::write(tmp.join("busy/notes.txt"), b"x").unwrap();
        let err = run(&config(&tmp, "busy")).unwrap_err();
        assert!(err.to_string().contains("pick a new --out"), "{err}");
    }
}
