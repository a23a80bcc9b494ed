//! PNG output: image grids of samples and a minimal line-plot renderer (loss curves, noise
//! shift plots). Files are written atomically (temporary file + rename).
//!
//! Grids take `N×C×H×W` `f32` in `[−1, 1]` (mapped to `round((x+1)·127.5)`, clamped), with
//! `C = 1` (gray) or `C = 3` (RGB). Other channel counts (e.g. 4-channel latents) are an error
//! unless [`GridOptions::first3`] asks for a preview of the first three channels, each image
//! min-max normalised. Text in plots uses a built-in 5×7 bitmap font (ASCII upper case,
//! digits, punctuation; lower case is drawn upper case, unknown characters as `?`).

use std::path::{Path, PathBuf};

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

// ---------------------------------------------------------------------------------------------
// Text

/// 5×7 glyphs, one byte per row, bit 4 = leftmost column.
fn glyph(ch: char) -> [u8; 7] {
    let ch = match ch {
        'τ' => 'T',
        'σ' => 'S',
        'δ' => 'D',
        'ε' => 'E',
        'α' => 'A',
        'μ' => 'U',
        '·' => '.',
        '×' => 'X',
        '−' | '–' => '-',
        '≈' => '=',
        c => c.to_ascii_uppercase(),
    };
    match ch {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        ' ' => [0; 7],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '[' => [0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E],
        ']' => [0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '<' => [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        '\'' => [0x0C, 0x04, 0x08, 0, 0, 0, 0],
        '*' => [0, 0x04, 0x15, 0x0E, 0x15, 0x04, 0],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04],
    }
}

/// Width in pixels of `text` drawn at `scale` (6 px advance per character).
pub fn text_width(text: &str, scale: usize) -> usize {
    (text.chars().count() * 6).saturating_sub(1) * scale
}

/// Draws `text` with its top-left corner at `(x, y)` in the 5×7 font, magnified by `scale`.
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: usize, color: [u8; 3]) {
    let s = scale.max(1) as i64;
    for (i, ch) in text.chars().enumerate() {
        let g = glyph(ch);
        let cx = x + i as i64 * 6 * s;
        for (row, bits) in g.iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) != 0 {
                    let (px, py) = (cx + col * s, y + row as i64 * s);
                    img.fill_rect(px, py, px + s, py + s, color);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Line plots

/// Default series colours (matplotlib's tab10).
pub const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// One line of a [`LinePlot`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// `(x, y)` points, drawn in order; a non-finite point (or `y ≤ 0` on a log axis) breaks
    /// the line.
    pub points: Vec<(f64, f64)>,
    /// Colour; `None` takes the next [`PALETTE`] entry.
    pub color: Option<[u8; 3]>,
}

/// A minimal line plot: axes with tick labels, light grid, several labelled series, title and
/// axis labels, optional log-scale y.
#[derive(Debug, Clone, PartialEq)]
pub struct LinePlot {
    /// Title (drawn at twice the text size).
    pub title: String,
    /// Label under the x axis.
    pub x_label: String,
    /// Label above the y axis.
    pub y_label: String,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Logarithmic y axis (non-positive values are skipped).
    pub log_y: bool,
    /// Fixed y range `(min, max)`; `None` fits the data.
    pub y_range: Option<(f64, f64)>,
    /// The series.
    pub series: Vec<Series>,
}

/// Compact number formatting for tick labels (up to 4 significant digits).
pub fn format_number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 { "0".into() } else { format!("{v}") };
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.2e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let m = m.trim_end_matches('0').trim_end_matches('.');
        return format!("{m}e{e}");
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// "Nice" tick values covering `[lo, hi]` (about five, at 1/2/5 × 10^k steps).
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

impl LinePlot {
    /// An empty 640×400 plot (set the public fields for labels, log scale, size).
    pub fn new(title: &str) -> Self {
        Self {
            title: title.to_string(),
            x_label: String::new(),
            y_label: String::new(),
            width: 640,
            height: 400,
            log_y: false,
            y_range: None,
            series: Vec::new(),
        }
    }

    /// Adds a series with the next palette colour.
    pub fn add_series(&mut self, name: &str, points: Vec<(f64, f64)>) -> &mut Self {
        self.series.push(Series {
            name: name.to_string(),
            points,
            color: None,
        });
        self
    }

    /// Adds a series with a given colour.
    pub fn add_series_colored(
        &mut self,
        name: &str,
        points: Vec<(f64, f64)>,
        color: [u8; 3],
    ) -> &mut Self {
        self.series.push(Series {
            name: name.to_string(),
            points,
            color: Some(color),
        });
        self
    }

    fn ty(&self, y: f64) -> Option<f64> {
        match (self.log_y, y.is_finite()) {
            (true, true) if y > 0.0 => Some(y.log10()),
            (false, true) => Some(y),
            _ => None,
        }
    }

    /// Renders the plot.
    pub fn render(&self) -> RgbImage {
        let (white, black, grid_c) = ([255u8; 3], [0u8; 3], [225u8; 3]);
        let mut img = RgbImage::new(self.width.max(64), self.height.max(48), white);
        let pts: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, _)| x.is_finite())
            .filter_map(|&(x, y)| self.ty(y).map(|y| (x, y)))
            .collect();
        let fold = |f: fn(&(f64, f64)) -> f64| {
            pts.iter()
                .map(f)
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                    (a.min(v), b.max(v))
                })
        };
        let widen = |(lo, hi): (f64, f64), pad: f64| {
            if !lo.is_finite() {
                (0.0, 1.0)
            } else if hi - lo <= 1e-12 * lo.abs().max(1.0) {
                let d = 0.5 * lo.abs().max(1e-3);
                (lo - d, hi + d)
            } else {
                (lo - pad * (hi - lo), hi + pad * (hi - lo))
            }
        };
        let (x_lo, x_hi) = widen(fold(|p| p.0), 0.0);
        let (y_lo, y_hi) = match self
            .y_range
            .and_then(|(a, b)| Some((self.ty(a)?, self.ty(b)?)))
        {
            Some((a, b)) if b > a => (a, b),
            _ => widen(fold(|p| p.1), 0.05),
        };
        let label = |v: f64| format_number(if self.log_y { 10f64.powf(v) } else { v });
        let y_ticks = if self.log_y && y_hi - y_lo >= 1.0 {
            (y_lo.ceil() as i64..=y_hi.floor() as i64)
                .map(|k| k as f64)
                .collect()
        } else if self.log_y {
            let lin = nice_ticks(10f64.powf(y_lo), 10f64.powf(y_hi));
            lin.into_iter()
                .filter(|&v| v > 0.0)
                .map(f64::log10)
                .collect()
        } else {
            nice_ticks(y_lo, y_hi)
        };
        let x_ticks = nice_ticks(x_lo, x_hi);
        let tick_w = y_ticks
            .iter()
            .map(|&v| text_width(&label(v), 1))
            .max()
            .unwrap_or(0);
        let (left, right) = (tick_w as i64 + 12, img.width as i64 - 14);
        let (top, bottom) = (34i64, img.height as i64 - 34);
        let px = |x: f64| left as f64 + (x - x_lo) / (x_hi - x_lo) * (right - left) as f64;
        let py = |y: f64| bottom as f64 - (y - y_lo) / (y_hi - y_lo) * (bottom - top) as f64;
        // Grid, ticks and tick labels.
        for &t in &y_ticks {
            let y = py(t).round() as i64;
            img.fill_rect(left + 1, y, right, y + 1, grid_c);
            img.fill_rect(left - 4, y, left, y + 1, black);
            let s = label(t);
            draw_text(
                &mut img,
                left - 6 - text_width(&s, 1) as i64,
                y - 3,
                &s,
                1,
                black,
            );
        }
        for &t in &x_ticks {
            let x = px(t).round() as i64;
            img.fill_rect(x, top, x + 1, bottom, grid_c);
            img.fill_rect(x, bottom, x + 1, bottom + 4, black);
            let s = format_number(t);
            draw_text(
                &mut img,
                x - text_width(&s, 1) as i64 / 2,
                bottom + 7,
                &s,
                1,
                black,
            );
        }
        img.fill_rect(left, top, left + 1, bottom + 1, black);
        img.fill_rect(left, bottom, right + 1, bottom + 1, black);
        // Series.
        for (i, s) in self.series.iter().enumerate() {
            let color = s.color.unwrap_or(PALETTE[i % PALETTE.len()]);
            let mut prev: Option<(f64, f64)> = None;
            for &(x, y) in &s.points {
                let cur = match (x.is_finite(), self.ty(y)) {
                    (true, Some(y)) => Some((px(x), py(y))),
                    _ => None,
                };
                match (prev, cur) {
                    (Some(a), Some(b)) => {
                        draw_line(&mut img, a, b, color, (left, top, right, bottom))
                    }
                    (None, Some(b)) => draw_line(&mut img, b, b, color, (left, top, right, bottom)),
                    _ => {}
                }
                prev = cur;
            }
        }
        // Title, axis labels, legend.
        let (tw, iw) = (text_width(&self.title, 2) as i64, img.width as i64);
        draw_text(&mut img, (iw - tw) / 2, 6, &self.title, 2, black);
        draw_text(&mut img, 4, top - 11, &self.y_label, 1, black);
        let xw = text_width(&self.x_label, 1) as i64;
        draw_text(
            &mut img,
            (left + right - xw) / 2,
            bottom + 20,
            &self.x_label,
            1,
            black,
        );
        let named: Vec<(usize, &Series)> = self
            .series
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.name.is_empty())
            .collect();
        if !named.is_empty() {
            let lw = named
                .iter()
                .map(|(_, s)| text_width(&s.name, 1))
                .max()
                .unwrap_or(0) as i64;
            let (bw, bh) = (lw + 26, 6 + 11 * named.len() as i64);
            // The corner whose box covers the fewest drawn series pixels.
            let corners = [
                (right - 6 - bw, top + 6),
                (left + 8, top + 6),
                (right - 6 - bw, bottom - 6 - bh),
                (left + 8, bottom - 6 - bh),
            ];
            let ink = |&(x0, y0): &(i64, i64)| {
                let mut n = 0;
                for y in y0.max(0)..(y0 + bh).min(img.height as i64) {
                    for x in x0.max(0)..(x0 + bw).min(img.width as i64) {
                        let p = (y as usize * img.width + x as usize) * 3;
                        let c = &img.data[p..p + 3];
                        n += (c != white && c != grid_c && c != black) as usize;
                    }
                }
                n
            };
            let (bx0, by0) = corners
                .iter()
                .copied()
                .min_by_key(ink)
                .unwrap_or(corners[0]);
            let (bx1, by1) = (bx0 + bw, by0 + bh);
            img.fill_rect(bx0, by0, bx1, by1, white);
            for (x0, y0, x1, y1) in [
                (bx0, by0, bx1, by0 + 1),
                (bx0, by1 - 1, bx1, by1),
                (bx0, by0, bx0 + 1, by1),
                (bx1 - 1, by0, bx1, by1),
            ] {
                img.fill_rect(x0, y0, x1, y1, [160; 3]);
            }
            for (row, (i, s)) in named.iter().enumerate() {
                let y = by0 + 4 + 11 * row as i64;
                let color = s.color.unwrap_or(PALETTE[i % PALETTE.len()]);
                img.fill_rect(bx0 + 4, y + 2, bx0 + 18, y + 5, color);
                draw_text(&mut img, bx0 + 22, y, &s.name, 1, black);
            }
        }
        img
    }

    /// Renders and writes the plot as PNG (atomic write).
    pub fn save(&self, path: &Path) -> Result<(), ImageError> {
        self.render().save_png(path)
    }
}

/// Draws a 2-pixel-wide segment from `a` to `b`, clipped to the rectangle `(x0, y0, x1, y1)`.
fn draw_line(
    img: &mut RgbImage,
    a: (f64, f64),
    b: (f64, f64),
    color: [u8; 3],
    (x0, y0, x1, y1): (i64, i64, i64, i64),
) {
    let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()) * 2.0)
        .ceil()
        .max(1.0) as usize;
    for k in 0..=steps {
        let t = k as f64 / steps as f64;
        let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
        let (xi, yi) = (x.floor() as i64, y.floor() as i64);
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            let (px, py) = (xi + dx, yi + dy);
            if px > x0 && px <= x1 && py >= y0 && py < y1 {
                img.put(px, py, color);
            }
        }
    }
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
        // Empty and degenerate plots still render.
        LinePlot::new("empty").save(&path).unwrap();
        let mut one = LinePlot::new("one point");
        one.add_series("p", vec![(1.0, 1.0)]);
        assert_eq!(one.render().width, 640);
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
    fn number_formatting_and_ticks() {
        assert_eq!(format_number(0.0), "0");
        assert_eq!(format_number(0.25), "0.25");
        assert_eq!(format_number(1234.4), "1234");
        assert_eq!(format_number(-2.0), "-2");
        assert_eq!(format_number(1.5e-5), "1.5e-5");
        let t = nice_ticks(0.0, 1.0);
        assert_eq!(t.len(), 6);
        assert!(t
            .iter()
            .enumerate()
            .all(|(k, v)| (v - 0.2 * k as f64).abs() < 1e-12));
        assert_eq!(text_width("AB", 1), 11);
    }
}
