//! Images ↔ latents through the SD VAE ([`nag_models::vae`]), in batches, and DiT's conversion
//! of decoded images to bytes.
//!
//! Conventions (REFERENCE §6): images are `[N, 3, H, W]` RGB in `[−1, 1]`; latents here are
//! *unscaled* (`latent_dist.mean`, or a draw `mean + std·ε`); a DiT latent is the unscaled one
//! times `scaling_factor`, and sampling decodes `z / scaling_factor`. Bytes follow DiT's
//! `sample_ddp.py`: `clamp(127.5·x + 128, 0, 255)` truncated to `u8`, laid out `[N, H, W, 3]`.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use nag_models::vae::{Vae, VaeError};

use crate::sampling::SeededNormal;

/// What `encode` returns per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentDraw {
    /// The posterior mean (`latent_dist.mean`).
    Mean,
    /// `mean + std·ε` with ε from ChaCha stream `seed`, row = the image's index in the whole
    /// input (so the draw does not depend on the batch size).
    Sample {
        /// Seed of the per-image noise streams.
        seed: u64,
    },
}

/// Posterior moments of a set of images, row-major `[N, latent, h, w]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// `[N, latent, h, w]`.
    pub shape: [usize; 4],
    /// The mean (or the draw, for [`LatentDraw::Sample`]).
    pub latents: Vec<f32>,
    /// `exp(logvar / 2)`.
    pub std: Vec<f32>,
}

fn read_back<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec()
        .expect("a float tensor reads back as f32")
}

/// Runs `f(start, batch)` on `values` (`[N, C, H, W]` row-major, `shape`) in batches of `batch`
/// items uploaded to `device`, reporting the number of items done after each; `what` names the
/// values in the length error.
fn in_batches<B: Backend>(
    values: &[f32],
    shape: [usize; 4],
    batch: usize,
    what: &str,
    device: &B::Device,
    progress: &mut dyn FnMut(usize),
    mut f: impl FnMut(usize, Tensor<B, 4>) -> Result<(), VaeError>,
) -> Result<(), VaeError> {
    let [n, c, h, w] = shape;
    let per = c * h * w;
    if values.len() != n * per {
        return Err(VaeError::Input(format!(
            "{} values for {what} shape {shape:?}",
            values.len()
        )));
    }
    let batch = batch.max(1);
    for start in (0..n).step_by(batch) {
        let len = batch.min(n - start);
        let data = TensorData::new(
            values[start * per..(start + len) * per].to_vec(),
            [len, c, h, w],
        );
        f(start, Tensor::from_data(data, device))?;
        progress(start + len);
    }
    Ok(())
}

/// Encodes `images` (`[N, C, H, W]` row-major, `shape`) in batches of `batch`, reporting the
/// number of images done after each batch.
pub fn encode_images<B: Backend>(
    vae: &Vae<B>,
    images: &[f32],
    shape: [usize; 4],
    batch: usize,
    draw: LatentDraw,
    device: &B::Device,
    progress: &mut dyn FnMut(usize),
) -> Result<Encoded, VaeError> {
    let n = shape[0];
    let mut latents = Vec::new();
    let mut std = Vec::new();
    let mut out_shape = [n, 0, 0, 0];
    in_batches(
        images,
        shape,
        batch,
        "image",
        device,
        progress,
        |start, x| {
            let posterior = vae.encode(x)?;
            let [len, lc, lh, lw] = posterior.mean.dims();
            out_shape = [n, lc, lh, lw];
            let s = read_back(posterior.std());
            let m = match draw {
                LatentDraw::Mean => read_back(posterior.mean),
                LatentDraw::Sample { seed } => {
                    let eps =
                        SeededNormal::per_sample(seed, start as u64).normal_rows(len, lc * lh * lw);
                    let mean = read_back(posterior.mean);
                    mean.iter()
                        .zip(&s)
                        .zip(&eps)
                        .map(|((m, s), e)| m + s * e)
                        .collect()
                }
            };
            latents.extend(m);
            std.extend(s);
            Ok(())
        },
    )?;
    Ok(Encoded {
        shape: out_shape,
        latents,
        std,
    })
}

/// Decodes unscaled latents (`[N, latent, h, w]` row-major) in batches of `batch`; returns the
/// images `[N, C, H, W]` (not clamped) and their shape.
pub fn decode_latents<B: Backend>(
    vae: &Vae<B>,
    latents: &[f32],
    shape: [usize; 4],
    batch: usize,
    device: &B::Device,
    progress: &mut dyn FnMut(usize),
) -> Result<(Vec<f32>, [usize; 4]), VaeError> {
    let n = shape[0];
    let mut images = Vec::new();
    let mut out_shape = [n, 0, 0, 0];
    in_batches(latents, shape, batch, "latent", device, progress, |_, z| {
        let x = vae.decode(z)?;
        let [_, oc, oh, ow] = x.dims();
        out_shape = [n, oc, oh, ow];
        images.extend(read_back(x));
        Ok(())
    })?;
    Ok((images, out_shape))
}

/// DiT's conversion of images in `[−1, 1]` (`[N, C, H, W]`) to bytes `[N, H, W, C]`:
/// `clamp(127.5·x + 128, 0, 255)` truncated (NaN becomes 0).
pub fn to_u8_nhwc(images: &[f32], shape: [usize; 4]) -> Vec<u8> {
    let [n, c, h, w] = shape;
    let plane = h * w;
    let mut out = vec![0u8; n * plane * c];
    for i in 0..n {
        for ch in 0..c {
            for p in 0..plane {
                let x = images[(i * c + ch) * plane + p];
                // `as u8` saturates and maps NaN to 0; the clamp makes the truncation explicit.
                out[(i * plane + p) * c + ch] = (127.5 * x + 128.0).clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_follow_dits_conversion() {
        // [1, 3, 1, 2]: channel-major in, pixel-major out.
        let x = [-1.0, 1.0, 0.0, 0.5, -2.0, f32::NAN];
        let b = to_u8_nhwc(&x, [1, 3, 1, 2]);
        // -1 → 0.5 → 0; 1 → 255.5 → 255; 0 → 128; 0.5 → 191.75 → 191; -2 → 0; NaN → 0.
        assert_eq!(b, vec![0, 128, 0, 255, 191, 0]);
    }
}
