//! Image folders: one subfolder per class (sorted names → labels 0, 1, …), PNG and JPEG files
//! found recursively inside each. A folder with images but no class subfolders is one class.
//!
//! Preprocessing follows ADM/DiT's `center_crop_arr`: while the short side is ≥ 2·size, halve
//! both sides (integer division) with a box filter; then resize bicubically so the short side
//! is `size` (PIL's resampling: antialiased, `a = −0.5`, 8-bit rounding after each pass; results
//! may differ from PIL's fixed-point arithmetic by one level); centre-crop to `size × size`.
//! Grayscale becomes 3 channels, alpha is dropped (as PIL's `convert("RGB")`), values are mapped
//! to `[−1, 1]`, and a random horizontal flip (p = 0.5) is applied by default.
//!
//! Files are decoded on every access (no cache). The format is recognised from the file's
//! bytes, not its extension.

use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;

use super::{
    load_with_policy, maybe_flip, DataError, DataOptions, Dataset, Item, OnError, SkipLog,
};

/// An 8-bit RGB image, interleaved `[H, W, 3]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbU8 {
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// `height · width · 3` bytes.
    pub data: Vec<u8>,
}

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Whether `path` has an image extension this module reads (PNG, JPEG; case-insensitive).
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .is_some_and(|e| EXTENSIONS.contains(&e.as_str()))
}

/// Decodes a PNG or JPEG file (recognised from its first bytes) to 8-bit RGB.
pub fn decode_image(path: &Path) -> Result<RgbU8, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_image_bytes(&bytes).map_err(|reason| DataError::decode(path, reason))
}

/// The most pixels a decoded image may have (8192 × 8192). Memory is bounded by this fixed cap:
/// at most 192 MiB of RGB output (256 MiB as RGBA), the decoders' working buffers a small multiple.
pub const MAX_IMAGE_PIXELS: u64 = 1 << 26;

/// Decodes PNG or JPEG bytes to 8-bit RGB; the error is a reason. Images declaring more than
/// [`MAX_IMAGE_PIXELS`] are refused from their header, before any pixel buffer is allocated.
pub fn decode_image_bytes(bytes: &[u8]) -> Result<RgbU8, String> {
    decode_image_bytes_limited(bytes, MAX_IMAGE_PIXELS)
}

/// [`decode_image_bytes`] with a cap of `max_pixels` (width · height) instead of
/// [`MAX_IMAGE_PIXELS`].
pub fn decode_image_bytes_limited(bytes: &[u8], max_pixels: u64) -> Result<RgbU8, String> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes, max_pixels)
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        decode_jpeg(bytes, max_pixels)
    } else {
        Err("not a PNG or JPEG file".into())
    }
}

/// Refuses a declared size over the cap (or empty), naming it.
fn check_size(format: &str, width: u64, height: u64, max_pixels: u64) -> Result<(), String> {
    if width == 0 || height == 0 {
        return Err(format!("{format}: empty image ({width}×{height})"));
    }
    if width.saturating_mul(height) > max_pixels {
        return Err(format!(
            "{format}: declared size {width}×{height} is over the limit of {max_pixels} pixels"
        ));
    }
    Ok(())
}

/// Bytes the PNG decoder may hold for metadata chunks (text, ICC profiles, …).
const PNG_METADATA_LIMIT: usize = 16 << 20;

/// Why the PNG decoder hit its memory limit while reading the header, naming the size that IHDR
/// (always the first chunk, at a fixed offset) declares.
fn png_limits_reason(bytes: &[u8], max_pixels: u64) -> String {
    match bytes.get(12..24) {
        Some(ihdr) if &ihdr[..4] == b"IHDR" => {
            let width = u32::from_be_bytes([ihdr[4], ihdr[5], ihdr[6], ihdr[7]]);
            let height = u32::from_be_bytes([ihdr[8], ihdr[9], ihdr[10], ihdr[11]]);
            check_size("PNG", width.into(), height.into(), max_pixels)
                .err()
                .unwrap_or_else(|| {
                    format!(
                        "PNG: declared size {width}×{height} needs more than the decoder's limit \
                         of {PNG_METADATA_LIMIT} bytes"
                    )
                })
        }
        _ => "PNG: the decoder's memory limit is exceeded".into(),
    }
}

fn decode_png(bytes: &[u8], max_pixels: u64) -> Result<RgbU8, String> {
    let limits = png::Limits {
        bytes: PNG_METADATA_LIMIT,
    };
    let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), limits);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    // `read_info` parses the header chunks only; the size is checked before the frame buffer.
    let mut reader = decoder.read_info().map_err(|e| match e {
        png::DecodingError::LimitsExceeded => png_limits_reason(bytes, max_pixels),
        e => format!("PNG: {e}"),
    })?;
    {
        let header = reader.info();
        check_size("PNG", header.width.into(), header.height.into(), max_pixels)?;
    }
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("PNG: {e}"))?;
    let (width, height) = (info.width as usize, info.height as usize);
    if info.bit_depth != png::BitDepth::Eight {
        return Err(format!("PNG: unexpected bit depth {:?}", info.bit_depth));
    }
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err("PNG: palette was not expanded".into()),
    };
    if info.line_size < width * channels || buf.len() < info.line_size * height {
        return Err(format!(
            "PNG: frame of {width}×{height} does not fit its buffer"
        ));
    }
    let mut data = Vec::with_capacity(width * height * 3);
    for row in buf.chunks(info.line_size).take(height) {
        for px in row[..width * channels].chunks_exact(channels) {
            match channels {
                1 | 2 => data.extend_from_slice(&[px[0]; 3]),
                _ => data.extend_from_slice(&px[..3]),
            }
        }
    }
    Ok(RgbU8 {
        width,
        height,
        data,
    })
}

fn decode_jpeg(bytes: &[u8], max_pixels: u64) -> Result<RgbU8, String> {
    let mut decoder = jpeg_decoder::Decoder::new(std::io::Cursor::new(bytes));
    // The header (up to the frame) first: the size is checked before any plane is allocated.
    decoder.read_info().map_err(|e| format!("JPEG: {e}"))?;
    let header = decoder.info().ok_or("JPEG: no image information")?;
    check_size(
        "JPEG",
        header.width.into(),
        header.height.into(),
        max_pixels,
    )?;
    // Belt and braces: the decoder's own cap on its output (4 bytes a pixel at most, CMYK).
    decoder.set_max_decoding_buffer_size(
        usize::try_from(max_pixels.saturating_mul(4)).unwrap_or(usize::MAX),
    );
    let pixels = decoder.decode().map_err(|e| format!("JPEG: {e}"))?;
    let info = decoder.info().ok_or("JPEG: no image information")?;
    let (width, height) = (info.width as usize, info.height as usize);
    let n = width * height;
    let data: Vec<u8> = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|&v| [v; 3]).collect(),
        // Big-endian 16 bit: keep the high byte.
        jpeg_decoder::PixelFormat::L16 => pixels.chunks_exact(2).flat_map(|v| [v[0]; 3]).collect(),
        jpeg_decoder::PixelFormat::RGB24 => pixels,
        jpeg_decoder::PixelFormat::CMYK32 => pixels
            .chunks_exact(4)
            .flat_map(|p| {
                let k = 255 - p[3] as u32;
                [0, 1, 2].map(|c| ((255 - p[c] as u32) * k / 255) as u8)
            })
            .collect(),
    };
    if data.len() != n * 3 {
        return Err(format!("JPEG: {} bytes for {width}×{height}", data.len()));
    }
    Ok(RgbU8 {
        width,
        height,
        data,
    })
}

/// PIL-style separable resampling filter.
#[derive(Debug, Clone, Copy)]
enum Filter {
    Box,
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bicubic => 2.0,
        }
    }
    fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Box => {
                if (-0.5..0.5).contains(&x) {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// PIL's `precompute_coeffs`: for each output index, the first input index and the weights.
fn coefficients(input: usize, output: usize, filter: Filter) -> Vec<(usize, Vec<f64>)> {
    let scale = input as f64 / output as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..output)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5).trunc().max(0.0)) as usize;
            let xmax = ((center + support + 0.5).trunc() as usize).min(input);
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|x| filter.eval((x as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (xmin, w)
        })
        .collect()
}

/// Resizes to `width × height` (horizontal pass, then vertical; 8-bit rounding after each).
fn resize(img: &RgbU8, width: usize, height: usize, filter: Filter) -> RgbU8 {
    let round = |v: f64| v.round().clamp(0.0, 255.0) as u8;
    let mut cur = img.clone();
    if width != cur.width {
        let coeffs = coefficients(cur.width, width, filter);
        let mut data = Vec::with_capacity(width * cur.height * 3);
        for row in cur.data.chunks_exact(cur.width * 3) {
            for (xmin, w) in &coeffs {
                for c in 0..3 {
                    let v: f64 = w
                        .iter()
                        .enumerate()
                        .map(|(i, wi)| wi * row[(xmin + i) * 3 + c] as f64)
                        .sum();
                    data.push(round(v));
                }
            }
        }
        cur = RgbU8 {
            width,
            height: cur.height,
            data,
        };
    }
    if height != cur.height {
        let coeffs = coefficients(cur.height, height, filter);
        let stride = cur.width * 3;
        let mut data = Vec::with_capacity(stride * height);
        for (ymin, w) in &coeffs {
            for x in 0..stride {
                let v: f64 = w
                    .iter()
                    .enumerate()
                    .map(|(i, wi)| wi * cur.data[(ymin + i) * stride + x] as f64)
                    .sum();
                data.push(round(v));
            }
        }
        cur = RgbU8 {
            width: cur.width,
            height,
            data,
        };
    }
    cur
}

/// ADM centre crop ([module docs](self)) to `size × size`, returned as `[3, size, size]` in
/// `[−1, 1]`.
pub fn center_crop_arr(img: &RgbU8, size: usize) -> Vec<f32> {
    let mut img = img.clone();
    while img.width.min(img.height) >= 2 * size {
        img = resize(&img, img.width / 2, img.height / 2, Filter::Box);
    }
    let scale = size as f64 / img.width.min(img.height) as f64;
    // Python's round() is half-to-even.
    let target = |x: usize| ((x as f64 * scale).round_ties_even() as usize).max(size);
    img = resize(&img, target(img.width), target(img.height), Filter::Bicubic);
    let (cy, cx) = ((img.height - size) / 2, (img.width - size) / 2);
    let plane = size * size;
    let mut out = vec![0.0f32; 3 * plane];
    for y in 0..size {
        for x in 0..size {
            let p = ((cy + y) * img.width + cx + x) * 3;
            for c in 0..3 {
                out[c * plane + y * size + x] = img.data[p + c] as f32 / 127.5 - 1.0;
            }
        }
    }
    out
}

/// An image-folder dataset; see the [module docs](self).
#[derive(Debug)]
pub struct FolderDataset {
    root: PathBuf,
    files: Vec<(PathBuf, i64)>,
    classes: Vec<String>,
    size: usize,
    hflip: bool,
    on_error: OnError,
    skips: SkipLog,
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The PNG/JPEG files under `dir`, recursively, in sorted order (hidden entries skipped).
pub(crate) fn images_recursive(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    for path in read_dir_sorted(dir)? {
        if path.is_dir() {
            images_recursive(&path, out)?;
        } else if is_image_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

impl FolderDataset {
    /// Scans `root`. Options used: `image_size` (default 32), `hflip` (default on), `on_error`.
    pub fn open(root: &Path, options: &DataOptions) -> Result<Self, DataError> {
        let size = options.image_size.unwrap_or(32);
        if size == 0 {
            return Err(DataError::Config(
                "image folder: image_size must be > 0".into(),
            ));
        }
        if !root.is_dir() {
            return Err(DataError::bad(
                root,
                "not a folder; give a folder with one subfolder of PNG/JPEG images per class",
            ));
        }
        let entries = read_dir_sorted(root)?;
        let mut classes = Vec::new();
        let mut files = Vec::new();
        let subdirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
        if subdirs.is_empty() {
            files.extend(
                entries
                    .iter()
                    .filter(|p| is_image_file(p))
                    .map(|p| (p.clone(), 0)),
            );
            classes.push(String::new());
        } else {
            for dir in subdirs {
                let mut images = Vec::new();
                images_recursive(dir, &mut images)?;
                if images.is_empty() {
                    return Err(DataError::bad(
                        dir,
                        "class folder without PNG/JPEG images; add images or remove the folder",
                    ));
                }
                let label = classes.len() as i64;
                classes.push(dir.file_name().unwrap_or_default().to_string_lossy().into());
                files.extend(images.into_iter().map(|p| (p, label)));
            }
        }
        if files.is_empty() {
            return Err(DataError::bad(
                root,
                "no PNG/JPEG images found; expected one subfolder of images per class \
                 (e.g. root/cat/001.png, root/dog/002.jpg)",
            ));
        }
        Ok(Self {
            root: root.to_path_buf(),
            files,
            classes,
            size,
            hflip: options.hflip.unwrap_or(true),
            on_error: options.on_error,
            skips: SkipLog::default(),
        })
    }

    /// Class names in label order (one empty name for a folder without class subfolders).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The files and their labels, in index order.
    pub fn files(&self) -> &[(PathBuf, i64)] {
        &self.files
    }

    fn load(&self, index: usize, rng: &mut ChaCha8Rng) -> Result<Item, DataError> {
        let (path, label) = &self.files[index];
        let img = decode_image(path)?;
        if img.width == 0 || img.height == 0 {
            return Err(DataError::decode(path, "empty image"));
        }
        let mut x = center_crop_arr(&img, self.size);
        maybe_flip(&mut x, self.shape(), self.hflip, rng);
        Ok(Item { x, y: *label })
    }
}

impl Dataset for FolderDataset {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn item(&self, index: usize, rng: &mut ChaCha8Rng) -> Result<Item, DataError> {
        let name = self.name();
        load_with_policy(
            &name,
            self.files.len(),
            index,
            self.on_error,
            &self.skips,
            rng,
            |i, rng| self.load(i, rng),
        )
    }

    fn shape(&self) -> [usize; 3] {
        [3, self.size, self.size]
    }

    fn num_classes(&self) -> usize {
        self.classes.len()
    }

    fn name(&self) -> String {
        format!("folder {} ({}px)", self.root.display(), self.size)
    }

    fn skipped(&self) -> usize {
        self.skips.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{tiny_jpeg, write_png, TempDir};
    use crate::data::{open_dataset, stream_rng};

    fn gradient(w: usize, h: usize) -> RgbU8 {
        let data = (0..h)
            .flat_map(|y| (0..w).flat_map(move |x| [(x * 255 / w) as u8, (y * 255 / h) as u8, 77]))
            .collect();
        RgbU8 {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn resize_keeps_constants_and_crops_to_size() {
        let flat = RgbU8 {
            width: 50,
            height: 37,
            data: vec![200; 50 * 37 * 3],
        };
        let out = center_crop_arr(&flat, 16);
        assert_eq!(out.len(), 3 * 256);
        assert!(out
            .iter()
            .all(|&v| (v - (200.0 / 127.5 - 1.0)).abs() < 1e-6));
        // A horizontal ramp stays monotone through box halving + bicubic resize + crop.
        let out = center_crop_arr(&gradient(130, 70), 16);
        let row: Vec<f32> = out[..16].to_vec();
        assert!(row.windows(2).all(|w| w[1] >= w[0]), "{row:?}");
        assert!(out[2 * 256..]
            .iter()
            .all(|&v| (v - (77.0 / 127.5 - 1.0)).abs() < 0.02));
        // Box halving of 4 → 2 averages pairs.
        let img = RgbU8 {
            width: 4,
            height: 1,
            data: [0u8, 10, 20, 30].iter().flat_map(|&v| [v; 3]).collect(),
        };
        let half = resize(&img, 2, 1, Filter::Box);
        assert_eq!(half.data, vec![5, 5, 5, 25, 25, 25]);
    }

    #[test]
    fn jpeg_decoding_gray_and_colour() {
        let g = decode_image_bytes(&tiny_jpeg(&[144])).unwrap();
        assert_eq!((g.width, g.height), (8, 8));
        assert!(
            g.data.iter().all(|&v| v.abs_diff(144) <= 1),
            "{:?}",
            &g.data[..6]
        );
        // Y 144, Cb 128, Cr 144 → R ≈ 166, G ≈ 133, B ≈ 144.
        let c = decode_image_bytes(&tiny_jpeg(&[144, 128, 144])).unwrap();
        let px = &c.data[..3];
        assert!(
            px[0].abs_diff(166) <= 2 && px[1].abs_diff(133) <= 2 && px[2].abs_diff(144) <= 2,
            "{px:?}"
        );
        assert!(decode_image_bytes(b"GIF89a").is_err());
    }

    fn fixture() -> TempDir {
        let dir = TempDir::new("folder");
        // Class "a": an RGB 20×12 red PNG and a gray+alpha 8×8 PNG (gray 64, alpha 0).
        write_png(&dir.join("a/red.png"), 20, 12, 3, &[255, 0, 0].repeat(240));
        write_png(&dir.join("a/sub/gray.png"), 8, 8, 2, &[64, 0].repeat(64));
        // Class "b": a gray JPEG, a corrupt PNG and a non-image file.
        std::fs::create_dir_all(dir.join("b")).unwrap();
        std::fs::write(dir.join("b/flat.jpg"), tiny_jpeg(&[144])).unwrap();
        std::fs::write(dir.join("b/zz-corrupt.png"), b"\x89PNG\r\n\x1a\ngarbage").unwrap();
        std::fs::write(dir.join("b/notes.txt"), b"not an image").unwrap();
        dir
    }

    #[test]
    fn folder_dataset_classes_decoding_and_skip_policy() {
        let dir = fixture();
        let opts = DataOptions {
            image_size: Some(8),
            hflip: Some(false),
            ..DataOptions::default()
        };
        let ds = FolderDataset::open(&dir.0, &opts).unwrap();
        assert_eq!(ds.classes(), ["a", "b"]);
        assert_eq!((ds.len(), ds.num_classes(), ds.shape()), (4, 2, [3, 8, 8]));
        let mut rng = stream_rng(0, 0, 0);
        let red = ds.item(0, &mut rng).unwrap();
        assert_eq!(red.y, 0);
        assert!(red.x[..64].iter().all(|&v| v == 1.0) && red.x[64..].iter().all(|&v| v == -1.0));
        let gray = ds.item(1, &mut rng).unwrap();
        assert!(gray
            .x
            .iter()
            .all(|&v| (v - (64.0 / 127.5 - 1.0)).abs() < 1e-6));
        let jpg = ds.item(2, &mut rng).unwrap();
        assert_eq!(jpg.y, 1);
        assert!(jpg
            .x
            .iter()
            .all(|&v| (v - (144.0 / 127.5 - 1.0)).abs() < 0.02));
        // The corrupt file (index 3) is skipped: the next item (cyclically, index 0) replaces
        // it, and it is counted once however often it is hit.
        assert_eq!(ds.skipped(), 0);
        assert_eq!(ds.item(3, &mut rng).unwrap(), red);
        ds.item(3, &mut rng).unwrap();
        assert_eq!(ds.skipped(), 1);
        // Fail policy: the error names the file.
        let fail = FolderDataset::open(
            &dir.0,
            &DataOptions {
                on_error: OnError::Fail,
                ..opts.clone()
            },
        )
        .unwrap();
        let err = fail.item(3, &mut rng).unwrap_err().to_string();
        assert!(err.contains("zz-corrupt.png"), "{err}");
        // Through open_dataset (a folder path).
        let boxed = open_dataset(dir.0.to_str().unwrap(), &opts).unwrap();
        assert_eq!(boxed.len(), 4);
    }

    #[test]
    fn random_flip_mirrors_rows() {
        let dir = TempDir::new("flip");
        let ramp: Vec<u8> = (0..64).flat_map(|i| [(i % 8 * 30) as u8; 3]).collect();
        write_png(&dir.join("c/ramp.png"), 8, 8, 3, &ramp);
        let ds = FolderDataset::open(
            &dir.0,
            &DataOptions {
                image_size: Some(8),
                ..DataOptions::default()
            },
        )
        .unwrap();
        let (mut plain, mut flipped) = (0, 0);
        for s in 0..32 {
            let x = ds.item(0, &mut stream_rng(1, 2, s)).unwrap().x;
            if x[0] < x[7] {
                plain += 1;
            } else {
                assert!(x[..8].windows(2).all(|w| w[0] > w[1]));
                flipped += 1;
            }
        }
        assert!(plain > 4 && flipped > 4, "{plain} / {flipped}");
    }

    #[test]
    fn bad_folders_are_clear_errors() {
        let dir = TempDir::new("badfolder");
        let opts = DataOptions::default();
        let msg = |p: &Path| FolderDataset::open(p, &opts).unwrap_err().to_string();
        let empty = msg(&dir.0);
        assert!(
            empty.contains(dir.0.to_str().unwrap()) && empty.contains("no PNG/JPEG"),
            "{empty}"
        );
        std::fs::create_dir_all(dir.join("cls")).unwrap();
        assert!(msg(&dir.0).contains("cls"));
        assert!(msg(&dir.join("missing")).contains("missing"));
        std::fs::write(dir.join("x.txt"), b"hi").unwrap();
        let err = open_dataset(dir.join("x.txt").to_str().unwrap(), &opts).unwrap_err();
        assert!(err.to_string().contains("x.txt"), "{err}");
    }
}
