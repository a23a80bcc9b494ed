//! PNG output: image grids of samples and a minimal line-plot renderer (loss curves, noise
//! shift plots). Files are written atomically (temporary file + rename).
//!
//! Grids take `N×C×H×W` `f32` in `[−1, 1]` (mapped to `round((x+1)·127.5)`, clamped), with
//! `C = 1` (gray) or `C = 3` (RGB). Other channel counts (e.g. 4-channel latents) are an error
//! unless [`GridOptions::first3`] asks for a preview of the first three channels, each image
//! min-max normalised. Plots and labels are drawn by `plotters` in DejaVu Sans.
//!
//! Layout: images, PNG files and grids here; text in `text.rs`; line plots in `plot.rs`; row
//! and column labels around a grid in `grid_labels.rs`.

use std::path::{Path, PathBuf};

mod grid_labels;
mod plot;
mod text;

pub use grid_labels::make_labelled_grid;
pub use plot::{format_number, LinePlot, Series, PALETTE};
pub use text::{draw_text, text_size};

/// Errors from image and plot output.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Writing the file failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O (or PNG encoding) error.
        #[source]
        source: std::io::Error,
    },
    /// Inconsistent sizes or unsupported channel counts.
    #[error("image shape: {0}")]
    Shape(String),
    /// Drawing a plot or text failed.
    #[error("drawing: {0}")]
    Draw(String),
}

/// An 8-bit RGB image, row-major interleaved `[H, W, 3]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height · width · 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// A `width × height` image filled with `color`.
    pub fn new(width: usize, height: usize, color: [u8; 3]) -> Self {
        Self {
            width,
            height,
            data: color.repeat(width * height),
        }
    }

    /// Sets pixel `(x, y)`; coordinates outside the image are ignored.
    pub fn put(&mut self, x: i64, y: i64, color: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let p = (y as usize * self.width + x as usize) * 3;
            self.data[p..p + 3].copy_from_slice(&color);
        }
    }

    /// Fills the rectangle `[x0, x1) × [y0, y1)` (clipped).
    pub fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, color: [u8; 3]) {
        for y in y0.max(0)..y1.min(self.height as i64) {
            for x in x0.max(0)..x1.min(self.width as i64) {
                self.put(x, y, color);
            }
        }
    }

    /// Nearest-neighbour upscaling by an integer `factor` (≥ 1).
    pub fn upscale(&self, factor: usize) -> Self {
        let f = factor.max(1);
        let (w, h) = (self.width * f, self.height * f);
        let mut data = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let p = ((y / f) * self.width + x / f) * 3;
                data.extend_from_slice(&self.data[p..p + 3]);
            }
        }
        Self {
            width: w,
            height: h,
            data,
        }
    }

    /// PNG-encodes the image.
    pub fn encode_png(&self) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::new();
        self.write_png(&mut out)
            .map_err(|e| ImageError::Shape(format!("PNG encoding: {e}")))?;
        Ok(out)
    }

    fn write_png<W: std::io::Write>(&self, w: W) -> std::io::Result<()> {
        if self.width == 0 || self.height == 0 || self.width > u32::MAX as usize {
            let (w, h) = (self.width, self.height);
            return Err(std::io::Error::other(format!(
                "cannot encode a {w}×{h} image"
            )));
        }
        let mut enc = png::Encoder::new(w, self.width as u32, self.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(std::io::Error::other)?;
        writer
            .write_image_data(&self.data)
            .map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)
    }

    /// Writes the image as PNG to `path` atomically.
    pub fn save_png(&self, path: &Path) -> Result<(), ImageError> {
        nag_models::checkpoint::write_atomic(path, |w| self.write_png(w)).map_err(|source| {
            ImageError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    }
}

/// Layout of [`make_grid`].
#[derive(Debug, Clone, PartialEq)]
pub struct GridOptions {
    /// Images per row (≥ 1).
    pub nrow: usize,
    /// Pixels between and around images (before upscaling).
    pub padding: usize,
    /// Gray level of the padding.
    pub pad_value: u8,
    /// Nearest-neighbour upscaling factor of the whole grid (e.g. 4 for 16 px samples).
    pub upscale: usize,
    /// Allow `C > 3` (e.g. latents): show the first three channels, each image min-max
    /// normalised.
    pub first3: bool,
}

impl Default for GridOptions {
    fn default() -> Self {
        Self {
            nrow: 8,
            padding: 2,
            pad_value: 0,
            upscale: 1,
            first3: false,
        }
    }
}

/// Lays out `N×C×H×W` images (`shape = [N, C, H, W]`) as torchvision's `make_grid`: `nrow`
/// per row, `padding` pixels around each; see the [module docs](self) for value mapping.
pub fn make_grid(
    images: &[f32],
    shape: [usize; 4],
    opts: &GridOptions,
) -> Result<RgbImage, ImageError> {
    let [n, c, h, w] = shape;
    if images.len() != n * c * h * w || n == 0 || h == 0 || w == 0 {
        return Err(ImageError::Shape(format!(
            "{} values for shape {shape:?} (need N, H, W > 0)",
            images.len()
        )));
    }
    if !(c == 1 || c == 3 || (c > 3 && opts.first3)) {
        return Err(ImageError::Shape(format!(
            "{c} channels: grids need 1 or 3 (decode latents first, or set first3 for a preview)"
        )));
    }
    let (p, cols) = (opts.padding, opts.nrow.clamp(1, n));
    let rows = n.div_ceil(cols);
    let mut grid = RgbImage::new(cols * (w + p) + p, rows * (h + p) + p, [opts.pad_value; 3]);
    let to_u8 = |v: f32| ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
    for (i, img) in images.chunks_exact(c * h * w).enumerate() {
        let (x0, y0) = (p + (i % cols) * (w + p), p + (i / cols) * (h + p));
        let plane = h * w;
        let (lo, hi) = if c > 3 {
            let v = &img[..3 * plane];
            let lo = v
                .iter()
                .copied()
                .filter(|x| x.is_finite())
                .fold(f32::INFINITY, f32::min);
            let hi = v
                .iter()
                .copied()
                .filter(|x| x.is_finite())
                .fold(f32::NEG_INFINITY, f32::max);
            (lo, hi)
        } else {
            (-1.0, 1.0)
        };
        let scale = if hi > lo { 2.0 / (hi - lo) } else { 0.0 };
        for y in 0..h {
            for x in 0..w {
                let px = |ch: usize| {
                    let v = img[ch * plane + y * w + x];
                    to_u8(if c > 3 { (v - lo) * scale - 1.0 } else { v })
                };
                let color = if c == 1 {
                    [px(0); 3]
                } else {
                    [px(0), px(1), px(2)]
                };
                grid.put((x0 + x) as i64, (y0 + y) as i64, color);
            }
        }
    }
    Ok(if opts.upscale > 1 {
        grid.upscale(opts.upscale)
    } else {
        grid
    })
}

/// Saves a grid of `N×C×H×W` images in `[−1, 1]` as PNG (atomic write); see [`make_grid`].
pub fn save_png_grid(
    path: &Path,
    images: &[f32],
    shape: [usize; 4],
    nrow: usize,
    padding: usize,
) -> Result<(), ImageError> {
    let opts = GridOptions {
        nrow,
        padding,
        ..GridOptions::default()
    };
    save_png_grid_with(path, images, shape, &opts)
}

/// [`save_png_grid`] with full [`GridOptions`] (upscaling, padding colour, latent preview).
pub fn save_png_grid_with(
    path: &Path,
    images: &[f32],
    shape: [usize; 4],
    opts: &GridOptions,
) -> Result<(), ImageError> {
    make_grid(images, shape, opts)?.save_png(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::TempDir;

    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let mut reader = png::Decoder::new(std::fs::File::open(path).unwrap())
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    #[test]
    fn grid_png_is_written_atomically_and_decodes() {
        let dir = TempDir::new("grid");
        let path = dir.join("samples.png");
        // 5 RGB 4×3 images: image i is uniformly (i/2 − 1) in channel i mod 3, −1 elsewhere.
        let shape = [5, 3, 3, 4];
        let mut images = vec![-1.0f32; 5 * 36];
        for i in 0..5 {
            let c = i % 3;
            images[i * 36 + c * 12..i * 36 + (c + 1) * 12].fill(i as f32 / 2.0 - 1.0);
        }
        save_png_grid(&path, &images, shape, 3, 2).unwrap();
        let (w, h, data) = decode(&path);
        assert_eq!((w, h), (3 * 6 + 2, 2 * 5 + 2));
        let px = |x: u32, y: u32| &data[((y * w + x) * 3) as usize..((y * w + x) * 3 + 3) as usize];
        assert_eq!(px(0, 0), [0, 0, 0]);
        assert_eq!(px(2, 2), [0, 0, 0]); // image 0: all −1
        assert_eq!(px(2 + 6, 2), [0, 64, 0]); // image 1: green −0.5 → 63.75 → 64
        assert_eq!(px(2 + 6, 2 + 5), [0, 255, 0]); // image 4 (row 1, column 1): green 1.0
        let leftovers: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        let opts = GridOptions {
            nrow: 5,
            padding: 0,
            upscale: 4,
            ..GridOptions::default()
        };
        save_png_grid_with(&path, &images, shape, &opts).unwrap();
        let (w, h, _) = decode(&path);
        assert_eq!((w, h), (5 * 16, 12));
        let bad = save_png_grid(&path, &images, [5, 4, 3, 3], 3, 2).unwrap_err();
        assert!(bad.to_string().contains("4 channels"), "{bad}");
        let missing = save_png_grid(&dir.join("no/such/dir.png"), &images, shape, 3, 2);
        assert!(missing.unwrap_err().to_string().contains("dir.png"));
    }

    #[test]
    fn plot_is_written() {
        let dir = TempDir::new("plot");
        let path = dir.join("loss.png");
        let mut plot = LinePlot::new("Loss");
        plot.x_label = "step".into();
        plot.log_y = true;
        plot.add_series(
            "train",
            (0..50)
                .map(|i| (i as f64, 1.0 / (1.0 + i as f64)))
                .collect(),
        );
        plot.add_series("bad", vec![(0.0, f64::NAN), (1.0, -1.0)]);
        plot.add_series_colored("flat", vec![(0.0, 0.5), (49.0, 0.5)], [1, 2, 3]);
        plot.save(&path).unwrap();
        let (w, h, data) = decode(&path);
        assert_eq!((w, h), (640, 400));
        let count = |c: [u8; 3]| data.chunks(3).filter(|p| *p == c).count();
        assert!(count(PALETTE[0]) > 100, "series drawn");
        assert!(count([1, 2, 3]) > 100, "coloured series drawn");
        assert!(count([0, 0, 0]) > 500, "axes and text drawn");
        let ticks = super::plot::log_ticks(0.02, 1.0);
        assert_eq!(ticks.len(), 6, "1-2-5 ticks over 0.02..1: {ticks:?}");
        assert!((ticks[0] - 0.02).abs() < 1e-12 && (ticks[5] - 1.0).abs() < 1e-12);
        assert_eq!(super::plot::log_ticks(1e-6, 1.0).len(), 7, "decades only");
        assert_eq!(super::plot::log_ticks(2.0, 4.0).len(), 3, "every multiple");
        // Empty and degenerate plots still render.
        LinePlot::new("empty").save(&path).unwrap();
        let mut one = LinePlot::new("one point");
        one.add_series("p", vec![(1.0, 1.0)]);
        assert_eq!(one.render().unwrap().width, 640);
    }

    #[test]
    fn grid_layout_and_values() {
        let shape = [3, 1, 2, 2];
        let images: Vec<f32> = (0..12).map(|i| if i < 4 { -1.0 } else { 1.0 }).collect();
        let opts = GridOptions {
            nrow: 2,
            padding: 1,
            pad_value: 128,
            ..GridOptions::default()
        };
        let g = make_grid(&images, shape, &opts).unwrap();
        assert_eq!((g.width, g.height), (2 * 3 + 1, 2 * 3 + 1));
        assert_eq!(&g.data[..3], &[128; 3]);
        let at = |x: usize, y: usize| g.data[(y * g.width + x) * 3];
        assert_eq!((at(1, 1), at(4, 1), at(1, 4), at(4, 4)), (0, 255, 255, 128));
        let up = make_grid(
            &images,
            shape,
            &GridOptions {
                upscale: 3,
                ..opts.clone()
            },
        )
        .unwrap();
        assert_eq!((up.width, up.height), (21, 21));
        assert!(make_grid(&images, [3, 4, 1, 1], &opts).is_err());
        assert!(make_grid(
            &images,
            [3, 4, 1, 1],
            &GridOptions {
                first3: true,
                ..opts
            }
        )
        .is_ok());
        assert!(make_grid(&images[..5], shape, &GridOptions::default()).is_err());
    }

    #[test]
    fn number_formatting_and_text_size() {
        assert_eq!(format_number(0.0), "0");
        assert_eq!(format_number(0.25), "0.25");
        assert_eq!(format_number(1234.4), "1234");
        assert_eq!(format_number(-2.0), "-2");
        assert_eq!(format_number(1.5e-5), "1.5e-5");
        let (w1, h1) = text_size("AB", 12).unwrap();
        let (w2, h2) = text_size("AB", 24).unwrap();
        assert!(
            w1 > 0 && h1 > 0 && w2 > w1 && h2 > h1,
            "{w1}×{h1}, {w2}×{h2}"
        );
    }
}
