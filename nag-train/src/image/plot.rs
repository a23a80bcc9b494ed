//! Line plots ([`LinePlot`]): a description of the axes and series, drawn by `plotters` (axes
//! with ticks and labels, light grid, legend, linear or log y) into an [`RgbImage`] and saved
//! as PNG.

use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::text::{draw_error, ensure_font, FONT};
use super::{ImageError, RgbImage};

/// Default series colours: matplotlib's tab10, as it writes them (`#1f77b4`, …).
pub const PALETTE: [[u8; 3]; 10] = [
    rgb(0x1f77b4),
    rgb(0xff7f0e),
    rgb(0x2ca02c),
    rgb(0xd62728),
    rgb(0x9467bd),
    rgb(0x8c564b),
    rgb(0xe377c2),
    rgb(0x7f7f7f),
    rgb(0xbcbd22),
    rgb(0x17becf),
];

/// `0xRRGGBB` → `[R, G, B]`.
const fn rgb(hex: u32) -> [u8; 3] {
    [(hex >> 16) as u8, (hex >> 8) as u8, hex as u8]
}

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

/// A line plot: axes with tick labels, light grid, several labelled series, title and
/// axis labels, optional log-scale y.
#[derive(Debug, Clone, PartialEq)]
pub struct LinePlot {
    /// Title.
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

/// Ticks of a log axis over `[lo, hi]` (`0 < lo < hi`): 1, 2 and 5 per decade, only the
/// decades where that gives more than 8, every integer multiple where it gives fewer than 3.
pub(super) fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (first, last) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let pick = |multiples: &[f64]| -> Vec<f64> {
        (first..=last)
            .flat_map(|k| multiples.iter().map(move |m| m * 10f64.powi(k)))
            .filter(|&t| t >= lo * (1.0 - 1e-9) && t <= hi * (1.0 + 1e-9))
            .collect()
    };
    match pick(&[1.0, 2.0, 5.0]) {
        fine if fine.len() > 8 => pick(&[1.0]),
        fine if fine.len() < 3 => pick(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]),
        fine => fine,
    }
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

    /// The points of `s` that can be drawn, split where a point cannot be (non-finite, or
    /// `y ≤ 0` on a log axis).
    fn segments(&self, s: &Series) -> Vec<Vec<(f64, f64)>> {
        let mut out = vec![Vec::new()];
        for &(x, y) in &s.points {
            if x.is_finite() && y.is_finite() && (!self.log_y || y > 0.0) {
                out.last_mut().expect("never empty").push((x, y));
            } else if !out.last().expect("never empty").is_empty() {
                out.push(Vec::new());
            }
        }
        out.retain(|seg| !seg.is_empty());
        out
    }

    /// The axes' ranges: x fits the data, y is [`LinePlot::y_range`] or fits the data with 5 %
    /// headroom (in log space on a log axis); a degenerate range is widened.
    fn ranges(&self) -> ((f64, f64), (f64, f64)) {
        let pts: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| self.segments(s))
            .flatten()
            .collect();
        let to = |y: f64| if self.log_y { y.log10() } else { y };
        let from = |y: f64| if self.log_y { 10f64.powf(y) } else { y };
        let span = |vals: &mut dyn Iterator<Item = f64>| {
            vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
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
        let x = widen(span(&mut pts.iter().map(|p| p.0)), 0.0);
        let fixed = self
            .y_range
            .filter(|&(a, b)| a.is_finite() && b > a && (!self.log_y || a > 0.0));
        let y = match fixed {
            Some(r) => r,
            None => {
                let (lo, hi) = widen(span(&mut pts.iter().map(|p| to(p.1))), 0.05);
                (from(lo), from(hi))
            }
        };
        (x, y)
    }

    /// The legend corner with the fewest data points under it.
    fn legend_corner(&self, (x, y): ((f64, f64), (f64, f64))) -> SeriesLabelPosition {
        let to = |v: f64| if self.log_y { v.log10() } else { v };
        let (ylo, yhi) = (to(y.0), to(y.1));
        let mut ink = [0usize; 4];
        for (px, py) in self.series.iter().flat_map(|s| self.segments(s)).flatten() {
            let u = (px - x.0) / (x.1 - x.0);
            let v = (to(py) - ylo) / (yhi - ylo);
            let (right, upper) = (u > 0.55, v > 0.55);
            let (left, lower) = (u < 0.45, v < 0.45);
            for (k, hit) in [upper && right, upper && left, lower && right, lower && left]
                .into_iter()
                .enumerate()
            {
                ink[k] += hit as usize;
            }
        }
        let corners = [
            SeriesLabelPosition::UpperRight,
            SeriesLabelPosition::UpperLeft,
            SeriesLabelPosition::LowerRight,
            SeriesLabelPosition::LowerLeft,
        ];
        let best = (0..4).min_by_key(|&k| ink[k]).unwrap_or(0);
        corners[best].clone()
    }

    /// Renders the plot.
    pub fn render(&self) -> Result<RgbImage, ImageError> {
        ensure_font()?;
        let (w, h) = (self.width.max(64), self.height.max(48));
        let mut img = RgbImage::new(w, h, [255; 3]);
        {
            let root =
                BitMapBackend::with_buffer(&mut img.data, (w as u32, h as u32)).into_drawing_area();
            let ranges = self.ranges();
            let ((x_lo, x_hi), (y_lo, y_hi)) = ranges;
            if self.log_y {
                let y = (y_lo..y_hi)
                    .log_scale()
                    .with_key_points(log_ticks(y_lo, y_hi));
                self.draw(&root, x_lo..x_hi, y, ranges)?;
            } else {
                self.draw(&root, x_lo..x_hi, y_lo..y_hi, ranges)?;
            }
            root.present().map_err(draw_error)?;
        }
        Ok(img)
    }

    fn draw<Y>(
        &self,
        root: &DrawingArea<BitMapBackend<'_>, Shift>,
        x: Range<f64>,
        y: Y,
        ranges: ((f64, f64), (f64, f64)),
    ) -> Result<(), ImageError>
    where
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FONT, 18))
            .margin(10)
            .x_label_area_size(if self.x_label.is_empty() { 22 } else { 38 })
            .y_label_area_size(if self.y_label.is_empty() { 48 } else { 64 })
            .build_cartesian_2d(x, y)
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .x_label_formatter(&|v| format_number(*v))
            .y_label_formatter(&|v| format_number(*v))
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 13))
            .bold_line_style(RGBColor(225, 225, 225))
            .light_line_style(RGBColor(245, 245, 245))
            .draw()
            .map_err(draw_error)?;
        let mut named = false;
        for (i, s) in self.series.iter().enumerate() {
            let [r, g, b] = s.color.unwrap_or(PALETTE[i % PALETTE.len()]);
            let style = RGBColor(r, g, b).stroke_width(2);
            for (k, seg) in self.segments(s).into_iter().enumerate() {
                let drawn = if seg.len() == 1 {
                    chart.draw_series(std::iter::once(Circle::new(seg[0], 2, style.filled())))
                } else {
                    chart.draw_series(LineSeries::new(seg, style))
                }
                .map_err(draw_error)?;
                if k == 0 && !s.name.is_empty() {
                    named = true;
                    drawn
                        .label(s.name.as_str())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
                }
            }
        }
        if named {
            chart
                .configure_series_labels()
                .position(self.legend_corner(ranges))
                .label_font((FONT, 12))
                .background_style(WHITE.mix(0.9))
                .border_style(RGBColor(160, 160, 160))
                .draw()
                .map_err(draw_error)?;
        }
        Ok(())
    }

    /// Renders and writes the plot as PNG (atomic write).
    pub fn save(&self, path: &Path) -> Result<(), ImageError> {
        self.render()?.save_png(path)
    }
}
