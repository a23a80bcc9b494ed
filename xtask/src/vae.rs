//! `cargo xtask vae encode|decode`: images ↔ unscaled SD-VAE latents through a diffusers VAE
//! folder.
//!
//! ```text
//! cargo xtask vae encode --vae sd-vae-ft-ema --input x.npy --output z.npy [--sample --seed S]
//! cargo xtask vae encode --vae sd-vae-ft-ema --input photos/ --size 256 --output z.npy
//! cargo xtask vae decode --vae sd-vae-ft-ema --input z.npy --output x.npy [--png grid.png]
//! ```

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand};
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_train::vae_files::{decode_file, describe, encode_file, CodecEvent, DecodeJob, EncodeJob};

use crate::progress::Progress;

#[derive(Debug, Subcommand)]
pub enum VaeCmd {
    /// Images → unscaled latents (the posterior mean, as `latent_dist.mean`, or a draw).
    Encode(WithDevice<EncodeJob>),
    /// Unscaled latents → images in [−1, 1] (and a PNG grid).
    Decode(WithDevice<DecodeJob>),
}

/// A job's options and the device it runs on.
#[derive(Debug, Args)]
pub struct WithDevice<J: Args> {
    #[command(flatten)]
    pub job: J,
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Prints the VAE's description and drives a bar of `what`.
fn reporter(what: &'static str) -> impl FnMut(CodecEvent) {
    let mut bar: Option<Progress> = None;
    move |event| match event {
        CodecEvent::Loaded(source) => eprintln!("{}", describe(source)),
        CodecEvent::Progress { done, total } => {
            let bar = bar.get_or_insert_with(|| Progress::new(total as u64, what));
            bar.set(done as u64);
            if done == total {
                bar.finish();
            }
        }
    }
}

struct Task<'a>(&'a VaeCmd);

impl BackendTask for Task<'_> {
    type Output = Result<[usize; 4]>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        Ok(match self.0 {
            VaeCmd::Encode(a) => {
                encode_file::<B::InnerBackend>(&a.job, &device, &mut reporter("images"))?
            }
            VaeCmd::Decode(a) => {
                decode_file::<B::InnerBackend>(&a.job, &device, &mut reporter("latents"))?
            }
        })
    }
}

/// Runs `cargo xtask vae …`.
pub fn run(cmd: &VaeCmd) -> Result<()> {
    let (device, output, png) = match cmd {
        VaeCmd::Encode(a) => (&a.device, &a.job.output, None),
        VaeCmd::Decode(a) => (&a.device, &a.job.output, a.job.png.as_ref()),
    };
    for path in png.into_iter().chain([output]) {
        crate::check_output_dir(path)?;
    }
    let shape = dispatch(DeviceSpec::parse(device)?, Task(cmd))??;
    match cmd {
        VaeCmd::Encode(a) => {
            let what = if a.job.sample {
                "a draw"
            } else {
                "posterior mean"
            };
            println!("wrote {} {shape:?} ({what}, unscaled)", output.display());
        }
        VaeCmd::Decode(_) => println!("wrote {} {shape:?}", output.display()),
    }
    if let Some(png) = png {
        println!("wrote {}", png.display());
    }
    Ok(())
}
