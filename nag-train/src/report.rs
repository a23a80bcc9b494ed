//! Report figures: panels placed side by side on one canvas.

use crate::image::RgbImage;

/// Places images side by side on a white canvas (top-aligned).
pub fn side_by_side(images: &[RgbImage]) -> RgbImage {
    let width = images.iter().map(|i| i.width).sum();
    let height = images.iter().map(|i| i.height).max().unwrap_or(1);
    let mut out = RgbImage::new(width, height, [255, 255, 255]);
    let mut x0 = 0usize;
    for img in images {
        for y in 0..img.height {
            for x in 0..img.width {
                let p = 3 * (y * img.width + x);
                let d = 3 * (y * width + x0 + x);
                out.data[d..d + 3].copy_from_slice(&img.data[p..p + 3]);
            }
        }
        x0 += img.width;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_keep_their_pixels_and_pad_white() {
        let a = RgbImage::new(2, 1, [1, 2, 3]);
        let b = RgbImage::new(1, 2, [9, 9, 9]);
        let s = side_by_side(&[a, b]);
        assert_eq!((s.width, s.height), (3, 2));
        assert_eq!(&s.data[0..9], &[1, 2, 3, 1, 2, 3, 9, 9, 9]);
        assert_eq!(&s.data[9..18], &[255, 255, 255, 255, 255, 255, 9, 9, 9]);
    }
}
