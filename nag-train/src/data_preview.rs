//! A dataset's first items as a PNG grid, as the trainer sees them (`xtask data`).

use std::path::PathBuf;

use crate::data::{open_dataset, stream_rng, DataOptions};
use crate::image::{save_png_grid_with, GridOptions};
use crate::PipelineError;

/// The options of `xtask data`: which dataset, how many items, where the grid goes.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct PreviewOptions {
    /// Dataset: shapes, shapes32, shapes-scattered, gmm, or a path.
    #[arg(long, default_value = "shapes")]
    pub data: String,
    /// Number of items to show.
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// Seed of generated datasets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output PNG grid.
    #[arg(long, default_value = "data.png")]
    pub out: PathBuf,
}

/// The dataset [`write_preview`] showed.
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    /// The dataset's name.
    pub name: String,
    /// Its items.
    pub len: usize,
    /// One item's `[C, H, W]`.
    pub shape: [usize; 3],
    /// Its classes.
    pub classes: usize,
}

impl std::fmt::Display for Preview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [c, h, w] = self.shape;
        let (name, len, classes) = (&self.name, self.len, self.classes);
        write!(f, "{name}: {len} items of {c}×{h}×{w}, {classes} classes")
    }
}

/// Writes the first `n` items (at least one, at most all) of `opts.data` to `opts.out`, in a
/// square grid, 4× upscaled up to 32 px, the first three channels of latents.
pub fn write_preview(opts: &PreviewOptions) -> Result<Preview, PipelineError> {
    let data = DataOptions {
        seed: opts.seed,
        ..DataOptions::default()
    };
    let ds = open_dataset(&opts.data, &data)?;
    let [c, h, w] = ds.shape();
    let n = opts.n.min(ds.len()).max(1);
    let mut values = Vec::with_capacity(n * c * h * w);
    let mut rng = stream_rng(opts.seed, 0, 0);
    for i in 0..n {
        values.extend(ds.item(i, &mut rng)?.x);
    }
    let grid = GridOptions {
        nrow: (n as f64).sqrt().ceil() as usize,
        upscale: if h <= 32 { 4 } else { 1 },
        first3: c > 3,
        ..GridOptions::default()
    };
    save_png_grid_with(&opts.out, &values, [n, c, h, w], &grid)
        .map_err(|e| PipelineError::Config(format!("writing {}: {e}", opts.out.display())))?;
    Ok(Preview {
        name: ds.name(),
        len: ds.len(),
        shape: [c, h, w],
        classes: ds.num_classes(),
    })
}
