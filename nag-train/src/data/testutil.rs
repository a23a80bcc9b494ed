//! Helpers shared by the data and image tests: temporary folders and tiny PNG/JPEG encoders.
//! Also included by `tests/fuzz_images.rs` (`#[path]`), so it uses only `std` and `png`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A temporary folder removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("nag-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    pub(crate) fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes an 8-bit PNG (`channels`: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA).
pub(crate) fn write_png(path: &Path, w: u32, h: u32, channels: usize, data: &[u8]) {
    let color = match channels {
        1 => png::ColorType::Grayscale,
        2 => png::ColorType::GrayscaleAlpha,
        3 => png::ColorType::Rgb,
        _ => png::ColorType::Rgba,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(data).unwrap();
    writer.finish().unwrap();
}

/// A baseline JPEG of one flat 8×8 block per component (`values`: 1 gray value, or Y, Cb,
/// Cr), built by hand: unit quantisation, so the DC coefficient is `8·(v − 128)`.
pub(crate) fn tiny_jpeg(values: &[u8]) -> Vec<u8> {
    let nf = values.len() as u8;
    let mut out = vec![0xFF, 0xD8];
    // DQT: table 0, all ones.
    out.extend([0xFF, 0xDB, 0, 67, 0]);
    out.extend([1u8; 64]);
    // SOF0: 8 bit, 8×8, nf components with 1×1 sampling and table 0.
    out.extend([0xFF, 0xC0, 0, 8 + 3 * nf, 8, 0, 8, 0, 8, nf]);
    for id in 1..=nf {
        out.extend([id, 0x11, 0]);
    }
    // DHT DC 0: categories 0..=11 with 4-bit codes; AC 0: EOB only, code "0".
    let mut bits = [0u8; 16];
    bits[3] = 12;
    out.extend([0xFF, 0xC4, 0, 2 + 1 + 16 + 12, 0x00]);
    out.extend(bits);
    out.extend(0u8..12);
    let mut bits = [0u8; 16];
    bits[0] = 1;
    out.extend([0xFF, 0xC4, 0, 2 + 1 + 16 + 1, 0x10]);
    out.extend(bits);
    out.push(0);
    // SOS.
    out.extend([0xFF, 0xDA, 0, 6 + 2 * nf, nf]);
    for id in 1..=nf {
        out.extend([id, 0x00]);
    }
    out.extend([0, 63, 0]);
    // Entropy-coded data: per component, DC code + value bits, then EOB.
    let mut bitbuf: Vec<bool> = Vec::new();
    let mut push = |v: u32, n: u32| (0..n).rev().for_each(|i| bitbuf.push(v >> i & 1 == 1));
    for &v in values {
        let dc = 8 * (v as i32 - 128);
        let cat = 32 - dc.unsigned_abs().leading_zeros();
        push(cat, 4);
        let bits = if dc >= 0 {
            dc as u32
        } else {
            (dc - 1) as u32 & ((1 << cat) - 1)
        };
        push(bits, cat);
        push(0, 1);
    }
    while !bitbuf.len().is_multiple_of(8) {
        bitbuf.push(true);
    }
    for byte in bitbuf.chunks(8) {
        let b = byte.iter().fold(0u8, |a, &bit| a << 1 | bit as u8);
        out.push(b);
        if b == 0xFF {
            out.push(0);
        }
    }
    out.extend([0xFF, 0xD9]);
    out
}
