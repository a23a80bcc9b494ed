//! `cargo xtask data`: look at a dataset as the trainer sees it.

use anyhow::Result;
use nag_train::data_preview::{write_preview, PreviewOptions};

/// Writes a grid of the first `n` items and prints the dataset's shape and classes.
pub fn run(options: &PreviewOptions) -> Result<()> {
    crate::check_output_file(&options.out, "--out", "png")?;
    let preview = write_preview(options)?;
    println!("{preview}; wrote {}", options.out.display());
    Ok(())
}
