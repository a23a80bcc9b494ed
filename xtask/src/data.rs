//! `cargo xtask data`: look at a dataset as the trainer sees it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use nag_train::data::{open_dataset, stream_rng, DataOptions};
use nag_train::image::{save_png_grid_with, GridOptions};

/// Arguments of `cargo xtask data`.
#[derive(Debug, Args)]
pub struct DataArgs {
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

/// Writes a grid of the first `n` items and prints the dataset's shape and classes.
pub fn run(args: &DataArgs) -> Result<()> {
    crate::check_output_file(&args.out, "--out", "png")?;
    let options = DataOptions {
        seed: args.seed,
        ..DataOptions::default()
    };
    let ds = open_dataset(&args.data, &options)?;
    let [c, h, w] = ds.shape();
    let n = args.n.min(ds.len()).max(1);
    let mut values = Vec::with_capacity(n * c * h * w);
    let mut rng = stream_rng(args.seed, 0, 0);
    for i in 0..n {
        values.extend(ds.item(i, &mut rng)?.x);
    }
    let opts = GridOptions {
        nrow: (n as f64).sqrt().ceil() as usize,
        upscale: if h <= 32 { 4 } else { 1 },
        first3: c > 3,
        ..GridOptions::default()
    };
    save_png_grid_with(&args.out, &values, [n, c, h, w], &opts)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{}: {} items of {c}×{h}×{w}, {} classes; wrote {}",
        ds.name(),
        ds.len(),
        ds.num_classes(),
        args.out.display()
    );
    Ok(())
}
