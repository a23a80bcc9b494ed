//! Text in images: DejaVu Sans (from the `dejavu` crate) drawn by plotters' ab_glyph backend,
//! which has no system fonts, so the face is registered once as [`FONT`].

use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::{ImageError, RgbImage};

/// The family name plots and labels ask plotters for.
pub(super) const FONT: &str = "sans-serif";

/// Registers DejaVu Sans as [`FONT`] (once per process).
pub(super) fn ensure_font() -> Result<(), ImageError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok());
    ok.then_some(())
        .ok_or_else(|| ImageError::Draw("the built-in DejaVu Sans font did not load".into()))
}

/// A plotters error as an [`ImageError`].
pub(super) fn draw_error(e: impl std::fmt::Display) -> ImageError {
    ImageError::Draw(e.to_string())
}

/// Width and height in pixels of `text` set at `size` px.
pub fn text_size(text: &str, size: u32) -> Result<(usize, usize), ImageError> {
    ensure_font()?;
    let (w, h) = (FONT, size)
        .into_font()
        .box_size(text)
        .map_err(draw_error)?;
    Ok((w as usize, h as usize))
}

/// Draws `text` at `size` px in `color`, its box's top-left corner at `(x, y)` (clipped to the
/// image).
pub fn draw_text(
    img: &mut RgbImage,
    (x, y): (i32, i32),
    text: &str,
    size: u32,
    color: [u8; 3],
) -> Result<(), ImageError> {
    ensure_font()?;
    let (w, h) = (img.width as u32, img.height as u32);
    let root = BitMapBackend::with_buffer(&mut img.data, (w, h)).into_drawing_area();
    let style = (FONT, size)
        .into_font()
        .color(&RGBColor(color[0], color[1], color[2]));
    root.draw_text(text, &style, (x, y)).map_err(draw_error)?;
    root.present().map_err(draw_error)
}
