//! `cargo xtask vae encode|decode`: images ↔ unscaled SD-VAE latents through a diffusers VAE
//! folder.
//!
//! ```text
//! cargo xtask vae encode --vae sd-vae-ft-ema --input x.npy --output z.npy [--sample --seed S]
//! cargo xtask vae encode --vae sd-vae-ft-ema --input photos/ --size 256 --output z.npy
//! cargo xtask vae decode --vae sd-vae-ft-ema --input z.npy --output x.npy [--png grid.png]
//! ```

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand};
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_train::vae_codec::LatentDraw;
use nag_train::vae_files::{decode_file, encode_file, CodecEvent, VaeJob};

use crate::progress::Progress;

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

impl VaeOpts {
    /// The VAE folder and batch, as the library takes them.
    fn job(&self) -> VaeJob {
        VaeJob {
            vae: self.vae.clone(),
            batch: self.batch,
        }
    }
}

/// Prints the VAE's description and drives a bar of `what`.
fn reporter(what: &'static str) -> impl FnMut(CodecEvent) {
    let mut bar: Option<Progress> = None;
    move |event| match event {
        CodecEvent::Loaded(source) => eprintln!(
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
        ),
        CodecEvent::Progress { done, total } => {
            let bar = bar.get_or_insert_with(|| Progress::new(total as u64, what));
            bar.set(done as u64);
            if done == total {
                bar.finish();
            }
        }
    }
}

fn encode<B: burn::tensor::backend::Backend>(args: &EncodeArgs, device: &B::Device) -> Result<()> {
    let draw = if args.sample {
        LatentDraw::Sample { seed: args.seed }
    } else {
        LatentDraw::Mean
    };
    let shape = encode_file::<B>(
        &args.vae.job(),
        &args.input,
        args.size,
        draw,
        &args.output,
        device,
        &mut reporter("images"),
    )?;
    println!(
        "wrote {} {shape:?} ({}, unscaled)",
        args.output.display(),
        if args.sample {
            "a draw"
        } else {
            "posterior mean"
        }
    );
    Ok(())
}

fn decode<B: burn::tensor::backend::Backend>(args: &DecodeArgs, device: &B::Device) -> Result<()> {
    let xshape = decode_file::<B>(
        &args.vae.job(),
        &args.input,
        &args.output,
        args.png.as_deref(),
        device,
        &mut reporter("latents"),
    )?;
    println!("wrote {} {xshape:?}", args.output.display());
    if let Some(png) = &args.png {
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
