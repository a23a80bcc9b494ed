//! Labels around an image grid: one per row in a left margin, one per column in a top margin,
//! (e.g. the guidance of each row and the class of each column of
//! `sample --compare`).

use super::{draw_text, make_grid, text_size, GridOptions, ImageError, RgbImage};

/// Label colour: light gray, readable on the grid's dark padding.
const INK: [u8; 3] = [230, 230, 230];

/// [`make_grid`] with `rows[r]` written left of grid row `r` and `cols[c]` above grid column `c`
/// (`cols` may be empty: no top margin; `corner` goes above the row labels). The grid itself is
/// unchanged, only moved right and down by the margins.
pub fn make_labelled_grid(
    images: &[f32],
    shape: [usize; 4],
    opts: &GridOptions,
    rows: &[String],
    cols: &[String],
    corner: &str,
) -> Result<RgbImage, ImageError> {
    let grid = make_grid(images, shape, opts)?;
    let [n, _, h, w] = shape;
    let ncol = opts.nrow.clamp(1, n);
    let nrow = n.div_ceil(ncol);
    if rows.len() != nrow || !(cols.is_empty() || cols.len() == ncol) {
        return Err(ImageError::Shape(format!(
            "{} row and {} column labels for a grid of {nrow} rows and {ncol} columns",
            rows.len(),
            cols.len()
        )));
    }
    let u = opts.upscale.max(1);
    let (cell_w, cell_h, pad) = (w * u, h * u, opts.padding * u);
    // The largest text size whose column labels fit their cells: up to 20 px where the cells
    // are tall enough to carry it, else 11 px; 9 px at least.
    let sizes: &[u32] = if cell_h >= 28 {
        &[20, 16, 13, 11, 9]
    } else {
        &[11, 9]
    };
    let mut size = 9;
    for &s in sizes {
        if cols.iter().try_fold(true, |fit, c| {
            Ok::<_, ImageError>(fit && text_size(c, s)?.0 <= cell_w)
        })? {
            size = s;
            break;
        }
    }
    let gap = size as usize / 4 + 2;
    let mut widest = 0;
    let mut line_h = text_size("Ag", size)?.1;
    for t in rows.iter().map(String::as_str).chain([corner]) {
        let (tw, th) = text_size(t, size)?;
        (widest, line_h) = (widest.max(tw), line_h.max(th));
    }
    let left = widest + 2 * gap;
    let top = if cols.is_empty() && corner.is_empty() {
        0
    } else {
        line_h + 2 * gap
    };
    let background = [opts.pad_value; 3];
    let mut out = RgbImage::new(grid.width + left, grid.height + top, background);
    for y in 0..grid.height {
        let from = y * grid.width * 3;
        let to = ((y + top) * out.width + left) * 3;
        out.data[to..to + grid.width * 3].copy_from_slice(&grid.data[from..from + grid.width * 3]);
    }
    let step = |cell: usize| cell + pad;
    let at = |x: usize, y: usize| (x as i32, y as i32);
    for (r, label) in rows.iter().enumerate() {
        let y = top + pad + r * step(cell_h) + cell_h.saturating_sub(line_h) / 2;
        draw_text(&mut out, at(gap, y), label, size, INK)?;
    }
    for (c, label) in cols.iter().enumerate() {
        let tw = text_size(label, size)?.0;
        let x = left + pad + c * step(cell_w) + cell_w.saturating_sub(tw) / 2;
        draw_text(&mut out, at(x, gap), label, size, INK)?;
    }
    draw_text(&mut out, at(gap, gap), corner, size, INK)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn labels_sit_in_margins_and_the_grid_is_moved_unchanged() {
        // 6 gray images of 8×8 in 2 rows of 3, upscaled 4×: cells 32 px, text at scale 2.
        let shape = [6, 3, 8, 8];
        let images: Vec<f32> = (0..6 * 3 * 64).map(|i| (i % 7) as f32 / 7.0).collect();
        let opts = GridOptions {
            nrow: 3,
            padding: 2,
            upscale: 4,
            ..GridOptions::default()
        };
        let plain = make_grid(&images, shape, &opts).unwrap();
        let rows = strings(&["none", "CFG 4 + NAG 3"]);
        let cols = strings(&["0", "1", "2"]);
        let img = make_labelled_grid(&images, shape, &opts, &rows, &cols, "class").unwrap();
        // The margins are the widest row label and one line of text, each with a gap around.
        let (size, gap) = (20, 7);
        let left = text_size("CFG 4 + NAG 3", size).unwrap().0 + 2 * gap;
        let top = img.height - plain.height;
        assert!(
            top >= text_size("class", size).unwrap().1 + 2 * gap,
            "top {top}"
        );
        assert_eq!(
            (img.width, img.height),
            (plain.width + left, plain.height + top)
        );
        let px = |im: &RgbImage, x: usize, y: usize| {
            let i = (y * im.width + x) * 3;
            [im.data[i], im.data[i + 1], im.data[i + 2]]
        };
        for y in 0..plain.height {
            for x in 0..plain.width {
                assert_eq!(px(&img, x + left, y + top), px(&plain, x, y), "({x}, {y})");
            }
        }
        // Ink in each row's band of the left margin and above each column.
        let background = [GridOptions::default().pad_value; 3];
        let inked = |x0: usize, x1: usize, y0: usize, y1: usize| {
            (y0..y1).any(|y| (x0..x1).any(|x| px(&img, x, y) != background))
        };
        let row_h = (8 + 2) * 4;
        for r in 0..2 {
            let y0 = top + 8 + r * row_h;
            assert!(inked(0, left, y0, y0 + 32), "row {r} label");
        }
        for c in 0..3 {
            let x0 = left + 8 + c * row_h;
            assert!(inked(x0, x0 + 32, 0, top), "column {c} label");
        }
        let wrong = make_labelled_grid(&images, shape, &opts, &rows[..1], &cols, "");
        assert!(wrong.unwrap_err().to_string().contains("1 row"));
    }
}
