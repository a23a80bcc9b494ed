//! `cargo xtask vae encode|decode`: images ↔ unscaled SD-VAE latents through a diffusers VAE
//! folder.
//!
//! ```text
//! cargo xtask vae encode --vae sd-vae-ft-ema --input x.npy --output z.npy [--sample --seed S]
//! cargo xtask vae encode --vae sd-vae-ft-ema --input photos/ --size 256 --output z.npy
//! cargo xtask vae decode --vae sd-vae-ft-ema --input z.npy --output x.npy [--png grid.png]
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::{Args, Subcommand};
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_models::npy::{read_npy, write_npy_f32};
use nag_models::vae::Vae;
use nag_train::data::folder::{center_crop_arr, decode_image, is_image_file};
use nag_train::image::{save_png_grid_with, GridOptions};
use nag_train::vae_codec::{decode_latents, encode_images, LatentDraw};

use crate::progress::Progress;

/// `cargo xtask vae …`.
#[derive(Debug, Subcommand)]
pub enum VaeCmd {
    /// Images → unscaled latents (the posterior mean, as `latent_dist.mean`, or a draw).
    Encode(EncodeArgs),
    /// Unscaled latents → images in [−1, 1] (and a PNG grid).
    Decode(DecodeArgs),
}

/// Options shared by both directions.
#[derive(Debug, Args)]
pub struct VaeOpts {
    /// A diffusers VAE folder (config.json + diffusion_pytorch_model.safetensors or .bin),
    /// e.g. a download of stabilityai/sd-vae-ft-ema.
    #[arg(long, value_name = "DIR")]
    pub vae: PathBuf,
    /// Images or latents per VAE call.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Arguments of `vae encode`.
#[derive(Debug, Args)]
pub struct EncodeArgs {
    #[command(flatten)]
    pub vae: VaeOpts,
    /// Images: a float .npy [N, 3, H, W] in [−1, 1], a PNG/JPEG file, or a folder of them
    /// (sorted by name, searched recursively).
    #[arg(long, value_name = "X.npy|IMAGE|DIR")]
    pub input: PathBuf,
    /// Output .npy of unscaled latents [N, 4, H/8, W/8] (written atomically).
    #[arg(long, value_name = "Z.npy")]
    pub output: PathBuf,
    /// Write a draw mean + std·ε instead of the mean.
    #[arg(long)]
    pub sample: bool,
    /// Seed of the draw (image i uses noise stream i, whatever the batch size).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// PNG/JPEG inputs: ADM centre crop to SIZE × SIZE first (default: use the images as they
    /// are, which must then all have one size).
    #[arg(long, value_name = "SIZE")]
    pub size: Option<usize>,
}

/// Arguments of `vae decode`.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub vae: VaeOpts,
    /// Unscaled latents: a float .npy [N, 4, h, w] (divide DiT latents by the scaling factor
    /// first).
    #[arg(long, value_name = "Z.npy")]
    pub input: PathBuf,
    /// Output .npy of decoded images [N, 3, 8h, 8w], not clamped (written atomically).
    #[arg(long, value_name = "X.npy")]
    pub output: PathBuf,
    /// Also a PNG grid of the images.
    #[arg(long, value_name = "P.png")]
    pub png: Option<PathBuf>,
}

/// Reads `[N, C, H, W]` floats from a .npy.
fn read_nchw(path: &Path, what: &str) -> Result<(Vec<f32>, [usize; 4])> {
    let a = read_npy(path).with_context(|| format!("reading {what} {}", path.display()))?;
    let shape: [usize; 4] = a.shape.clone().try_into().map_err(|_| {
        anyhow::anyhow!(
            "{what} {} has shape {:?}, expected [N, C, H, W]",
            path.display(),
            a.shape
        )
    })?;
    let v = a
        .into_f32()
        .with_context(|| format!("reading {what} {}", path.display()))?;
    Ok((v, shape))
}

/// Images from a PNG/JPEG file or folder, as `[N, 3, H, W]` in [−1, 1].
fn read_images(input: &Path, size: Option<usize>) -> Result<(Vec<f32>, [usize; 4])> {
    let mut files = Vec::new();
    if input.is_dir() {
        collect_images(input, &mut files)?;
        if files.is_empty() {
            bail!(
                "{} holds no PNG/JPEG images (searched recursively)",
                input.display()
            );
        }
    } else {
        files.push(input.to_path_buf());
    }
    let mut values = Vec::new();
    let mut dims: Option<(usize, usize)> = None;
    for f in &files {
        let img = decode_image(f)?;
        let (h, w, x) = match size {
            Some(s) => (s, s, center_crop_arr(&img, s)),
            None => {
                let plane = img.width * img.height;
                let mut x = vec![0f32; 3 * plane];
                for (p, px) in img.data.chunks_exact(3).enumerate() {
                    for c in 0..3 {
                        x[c * plane + p] = px[c] as f32 / 127.5 - 1.0;
                    }
                }
                (img.height, img.width, x)
            }
        };
        match dims {
            None => dims = Some((h, w)),
            Some(d) if d != (h, w) => bail!(
                "{} is {w}×{h} but the first image is {}×{}: images of one batch need one \
                 size; pass --size S to centre-crop them all to S×S",
                f.display(),
                d.1,
                d.0
            ),
            Some(_) => {}
        }
        values.extend(x);
    }
    let (h, w) = dims.expect("at least one image");
    Ok((values, [files.len(), 3, h, w]))
}

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_images(&p, out)?;
        } else if is_image_file(&p) {
            out.push(p);
        }
    }
    Ok(())
}

fn load_vae<B: Backend>(opts: &VaeOpts, device: &B::Device) -> Result<Vae<B>> {
    let (vae, source) = Vae::<B>::load(&opts.vae, device)?;
    eprintln!(
        "VAE: {} (block_out_channels {:?}, latent {}, scaling_factor {}{})",
        source.weights.display(),
        source.config.block_out_channels,
        source.config.latent_channels,
        source.config.scaling_factor,
        if source.old_attention_names {
            ", old attention names"
        } else {
            ""
        }
    );
    Ok(vae)
}

fn encode<B: Backend>(args: &EncodeArgs, device: &B::Device) -> Result<()> {
    let is_npy = args
        .input
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    let (images, shape) = if is_npy {
        if args.size.is_some() {
            bail!("--size applies to PNG/JPEG inputs; a .npy input is encoded as it is");
        }
        read_nchw(&args.input, "the images")?
    } else {
        read_images(&args.input, args.size)?
    };
    let vae = load_vae::<B>(&args.vae, device)?;
    let draw = if args.sample {
        LatentDraw::Sample { seed: args.seed }
    } else {
        LatentDraw::Mean
    };
    let bar = Progress::new(shape[0] as u64, "images");
    let enc = encode_images(
        &vae,
        &images,
        shape,
        args.vae.batch,
        draw,
        device,
        &mut |done| bar.set(done as u64),
    )
    .with_context(|| format!("encoding {}", args.input.display()))?;
    bar.finish();
    write_npy_f32(&args.output, &enc.shape, &enc.latents)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "wrote {} {:?} ({}, unscaled)",
        args.output.display(),
        enc.shape,
        if args.sample {
            "a draw"
        } else {
            "posterior mean"
        }
    );
    Ok(())
}

fn decode<B: Backend>(args: &DecodeArgs, device: &B::Device) -> Result<()> {
    let (z, shape) = read_nchw(&args.input, "the latents")?;
    let vae = load_vae::<B>(&args.vae, device)?;
    let bar = Progress::new(shape[0] as u64, "latents");
    let (x, xshape) = decode_latents(&vae, &z, shape, args.vae.batch, device, &mut |done| {
        bar.set(done as u64)
    })
    .with_context(|| format!("decoding {}", args.input.display()))?;
    bar.finish();
    write_npy_f32(&args.output, &xshape, &x)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!("wrote {} {xshape:?}", args.output.display());
    if let Some(png) = &args.png {
        let opts = GridOptions {
            nrow: (xshape[0] as f64).sqrt().ceil() as usize,
            padding: 2,
            ..GridOptions::default()
        };
        save_png_grid_with(png, &x, xshape, &opts)
            .with_context(|| format!("writing {}", png.display()))?;
        println!("wrote {}", png.display());
    }
    Ok(())
}

struct Task<'a> {
    cmd: &'a VaeCmd,
}

impl BackendTask for Task<'_> {
    type Output = Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        match self.cmd {
            VaeCmd::Encode(a) => encode::<B::InnerBackend>(a, &device),
            VaeCmd::Decode(a) => decode::<B::InnerBackend>(a, &device),
        }
    }
}

/// Runs `cargo xtask vae …`.
pub fn run(cmd: &VaeCmd) -> Result<()> {
    let (device, outputs) = match cmd {
        VaeCmd::Encode(a) => (&a.vae.device, vec![&a.output]),
        VaeCmd::Decode(a) => (&a.vae.device, a.png.iter().chain([&a.output]).collect()),
    };
    for path in outputs {
        crate::check_output_dir(path)?;
    }
    dispatch(DeviceSpec::parse(device)?, Task { cmd })?
}
