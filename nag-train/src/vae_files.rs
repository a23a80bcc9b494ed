//! `.npy` and image files ↔ `.npy` latents through a diffusers VAE folder (`cargo xtask vae
//! encode|decode`), on top of [`crate::vae_codec`]: the inputs are read and checked before the
//! VAE is loaded, the outputs written atomically.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use nag_models::npy::{read_npy, write_npy_f32};
use nag_models::vae::{Vae, VaeSource};

use crate::data::folder::{center_crop_arr, decode_image, images_recursive};
use crate::image::{save_png_grid_with, GridOptions};
use crate::vae_codec::{decode_latents, encode_images, LatentDraw};
use crate::PipelineError;

/// What the file pipelines report as they go.
#[derive(Debug)]
pub enum CodecEvent<'a> {
    /// The VAE folder was read.
    Loaded(&'a VaeSource),
    /// Items done so far, of the total.
    Progress {
        /// Images or latents done.
        done: usize,
        /// All of them.
        total: usize,
    },
}

/// The VAE folder and the batch the pipelines run in (options of both directions).
#[derive(Debug, Clone, clap::Args)]
pub struct VaeJob {
    /// A diffusers VAE folder (config.json + diffusion_pytorch_model.safetensors or .bin),
    /// e.g. a download of stabilityai/sd-vae-ft-ema.
    #[arg(long, value_name = "DIR")]
    pub vae: PathBuf,
    /// Images or latents per VAE call.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
}

/// Images → unscaled latents (the options of `xtask vae encode`).
#[derive(Debug, Clone, clap::Args)]
pub struct EncodeJob {
    /// The VAE and its batch.
    #[command(flatten)]
    pub vae: VaeJob,
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

impl EncodeJob {
    /// The posterior mean, or a draw with `--sample`.
    pub fn draw(&self) -> LatentDraw {
        if self.sample {
            LatentDraw::Sample { seed: self.seed }
        } else {
            LatentDraw::Mean
        }
    }
}

/// Unscaled latents → images (the options of `xtask vae decode`).
#[derive(Debug, Clone, clap::Args)]
pub struct DecodeJob {
    /// The VAE and its batch.
    #[command(flatten)]
    pub vae: VaeJob,
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

/// The description `CodecEvent::Loaded` carries, as one line.
pub fn describe(source: &VaeSource) -> String {
    format!(
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
    )
}

fn config(message: String) -> PipelineError {
    PipelineError::Config(message)
}

/// Reads a float `[N, C, H, W]` `.npy`.
pub fn read_nchw(path: &Path, what: &str) -> Result<(Vec<f32>, [usize; 4]), PipelineError> {
    let a =
        read_npy(path).map_err(|e| config(format!("reading {what} {}: {e}", path.display())))?;
    let shape: [usize; 4] = a.shape.clone().try_into().map_err(|_| {
        config(format!(
            "{what} {} has shape {:?}, expected [N, C, H, W]",
            path.display(),
            a.shape
        ))
    })?;
    let v = a
        .into_f32()
        .map_err(|e| config(format!("reading {what} {}: {e}", path.display())))?;
    Ok((v, shape))
}

/// Reads one PNG/JPEG file, or every one under a folder (recursively, sorted), as `[N, 3, H, W]`
/// in `[−1, 1]`: centre-cropped to `size`² (ADM's `center_crop_arr`) when given, else as they
/// are, which must then be one size.
pub fn read_images(
    input: &Path,
    size: Option<usize>,
) -> Result<(Vec<f32>, [usize; 4]), PipelineError> {
    let mut files = Vec::new();
    if input.is_dir() {
        images_recursive(input, &mut files)?;
        if files.is_empty() {
            return Err(config(format!(
                "{} holds no PNG/JPEG images (searched recursively)",
                input.display()
            )));
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
            Some(d) if d != (h, w) => {
                return Err(config(format!(
                    "{} is {w}×{h} but the first image is {}×{}: images of one batch need one \
                     size; pass --size S to centre-crop them all to S×S",
                    f.display(),
                    d.1,
                    d.0
                )))
            }
            Some(_) => {}
        }
        values.extend(x);
    }
    let (h, w) = dims.expect("at least one image");
    Ok((values, [files.len(), 3, h, w]))
}

/// Encodes `job.input` (a float `[N, 3, H, W]` `.npy`, an image or a folder of them, see
/// [`read_images`]) into unscaled latents written to `job.output`; returns their shape.
pub fn encode_file<B: Backend>(
    job: &EncodeJob,
    device: &B::Device,
    events: &mut dyn FnMut(CodecEvent),
) -> Result<[usize; 4], PipelineError> {
    let (input, output, size) = (&job.input, &job.output, job.size);
    let is_npy = input
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    let (images, shape) = if is_npy {
        if size.is_some() {
            return Err(config(
                "--size applies to PNG/JPEG inputs; a .npy input is encoded as it is".into(),
            ));
        }
        read_nchw(input, "the images")?
    } else {
        read_images(input, size)?
    };
    let (vae, source) = Vae::<B>::load(&job.vae.vae, device)?;
    events(CodecEvent::Loaded(&source));
    let total = shape[0];
    let batch = job.vae.batch;
    let enc = encode_images(
        &vae,
        &images,
        shape,
        batch,
        job.draw(),
        device,
        &mut |done| events(CodecEvent::Progress { done, total }),
    )
    .map_err(|e| config(format!("encoding {}: {e}", input.display())))?;
    write_npy_f32(output, &enc.shape, &enc.latents)
        .map_err(|e| config(format!("writing {}: {e}", output.display())))?;
    Ok(enc.shape)
}

/// Decodes the unscaled latents in `job.input` (`[N, C, h, w]` `.npy`) into images in
/// `[−1, 1]` written to `job.output`, and to the PNG grid `job.png` if given; returns the
/// images' shape.
pub fn decode_file<B: Backend>(
    job: &DecodeJob,
    device: &B::Device,
    events: &mut dyn FnMut(CodecEvent),
) -> Result<[usize; 4], PipelineError> {
    let (input, output) = (&job.input, &job.output);
    let (z, shape) = read_nchw(input, "the latents")?;
    let (vae, source) = Vae::<B>::load(&job.vae.vae, device)?;
    events(CodecEvent::Loaded(&source));
    let total = shape[0];
    let (x, xshape) = decode_latents(&vae, &z, shape, job.vae.batch, device, &mut |done| {
        events(CodecEvent::Progress { done, total })
    })
    .map_err(|e| config(format!("decoding {}: {e}", input.display())))?;
    write_npy_f32(output, &xshape, &x)
        .map_err(|e| config(format!("writing {}: {e}", output.display())))?;
    if let Some(png) = &job.png {
        let opts = GridOptions {
            nrow: (xshape[0] as f64).sqrt().ceil() as usize,
            padding: 2,
            ..GridOptions::default()
        };
        save_png_grid_with(png, &x, xshape, &opts)?;
    }
    Ok(xshape)
}
