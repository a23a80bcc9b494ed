//! A minimal line-plot renderer ([`LinePlot`]): axes, ticks, labels, legend, linear or log y,
//! rendered to an [`RgbImage`] and saved as PNG.

use std::path::Path;

use super::text::{draw_text, text_width};
use super::{ImageError, RgbImage};

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
pub(super) fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
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
