//! `cargo xtask latents`: extract a latent store from an image folder through the SD VAE, and
//! `cargo xtask latents bench`: the store's read speed and resident memory.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand};
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_train::data::latent_store::{resident_memory, write_synthetic, MANIFEST};
use nag_train::data::read_rate::read_rate;
use nag_train::data::{open_dataset, DataOptions};
use nag_train::latent_extract::{extract_latents, ExtractConfig, ExtractProgress, ExtractSummary};

use crate::progress::Progress;

/// Arguments of `cargo xtask latents`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LatentsArgs {
    #[command(subcommand)]
    pub cmd: Option<LatentsCmd>,
    #[command(flatten)]
    pub extract: Option<ExtractConfig>,
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `cargo xtask latents` subcommands.
#[derive(Debug, Subcommand)]
pub enum LatentsCmd {
    /// Write a synthetic store (if --out holds none) and read random items from it through the
    /// training Dataset: items/s and resident memory.
    Bench(BenchArgs),
}

/// Arguments of `cargo xtask latents bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Items of the synthetic store (4×32×32 latents, 1000 classes).
    #[arg(long, default_value_t = 200_000)]
    pub synthetic: usize,
    /// Store folder: written when it holds no manifest.json, else read as it is.
    #[arg(long)]
    pub out: PathBuf,
    /// Seconds of reading.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Reader threads (the trainer's loader workers).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Seed of the synthetic values and of the item order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs `cargo xtask latents [bench]`.
pub fn run(args: &LatentsArgs) -> Result<()> {
    if let Some(LatentsCmd::Bench(b)) = &args.cmd {
        return bench(b);
    }
    let Some(cfg) = &args.extract else {
        anyhow::bail!("latents needs --data, --vae and --out (or the subcommand bench)");
    };
    let spec = DeviceSpec::parse(&args.device)?;
    eprintln!(
        "extracting latents of {} at {} px through {} on {spec} into {}",
        cfg.data.display(),
        cfg.size,
        cfg.vae.display(),
        cfg.out.display()
    );
    let start = Instant::now();
    let summary = dispatch(spec, Task { cfg })??;
    let m = &summary.manifest;
    eprintln!(
        "{} latents {:?} of {} classes in {} shards ({} resumed) in {:.0}s",
        m.count,
        m.params.latent_shape,
        m.params.num_classes,
        m.shards.len(),
        summary.resumed_shards,
        start.elapsed().as_secs_f64()
    );
    if m.skipped > 0 {
        eprintln!(
            "skipped {} unreadable file(s) (listed per shard in {}; --on-bad-file fail stops at the first)",
            m.skipped,
            cfg.out.join(MANIFEST).display()
        );
    }
    println!("store: {}", cfg.out.display());
    println!(
        "next: cargo xtask train --data {} --init DiT-XL-2-256x256.pt --noise-dropout 0.1 \
         (NAG fine-tuning; --new-classes for another label set), or --model DiT-XL/2 from scratch",
        cfg.out.display()
    );
    Ok(())
}

struct Task<'a> {
    cfg: &'a ExtractConfig,
}

impl BackendTask for Task<'_> {
    type Output = Result<ExtractSummary>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let mut bar: Option<Progress> = None;
        let summary =
            extract_latents::<B::InnerBackend>(self.cfg, &device, &mut |p: ExtractProgress| {
                // The bar counts this run's images only, so images/s is this run's speed.
                let bar = bar
                    .get_or_insert_with(|| Progress::new((p.total - p.resumed) as u64, "images"));
                bar.set((p.done - p.resumed) as u64);
                let resumed = if p.resumed > 0 {
                    format!("(+{} from an earlier run)", p.resumed)
                } else {
                    String::new()
                };
                bar.message(format!("skipped {} {resumed}", p.skipped));
            });
        if let Some(bar) = &bar {
            bar.finish();
        }
        Ok(summary?)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
}

fn memory_line(label: &str) -> String {
    match resident_memory() {
        Some((rss, hwm)) => format!("{label}: VmRSS {} (peak VmHWM {})", mib(rss), mib(hwm)),
        None => format!("{label}: resident memory unavailable (no /proc/self/status)"),
    }
}

/// `cargo xtask latents bench`.
fn bench(args: &BenchArgs) -> Result<()> {
    anyhow::ensure!(args.threads >= 1, "--threads must be at least 1");
    anyhow::ensure!(
        args.seconds.is_finite() && args.seconds > 0.0,
        "--seconds must be > 0"
    );
    if !args.out.join(MANIFEST).is_file() {
        let bar = Progress::new(args.synthetic as u64, "latents written");
        let start = Instant::now();
        write_synthetic(
            &args.out,
            args.synthetic,
            [4, 32, 32],
            1000,
            2048,
            args.seed,
            &mut |n| bar.set(n as u64),
        )?;
        bar.finish();
        eprintln!(
            "wrote {} synthetic latents in {:.1}s; {}",
            args.synthetic,
            start.elapsed().as_secs_f64(),
            memory_line("after writing")
        );
    }
    let opened = Instant::now();
    let ds = open_dataset(
        args.out.to_str().context("--out is not UTF-8")?,
        &DataOptions::default(),
    )?;
    let n = ds.len();
    eprintln!(
        "{}: {n} items of {:?}, opened in {:.2}s; {}",
        ds.name(),
        ds.shape(),
        opened.elapsed().as_secs_f64(),
        memory_line("before reading")
    );
    let r = read_rate(ds.as_ref(), args.threads, args.seconds, args.seed)?;
    println!(
        "read {} random items on {} thread(s) in {:.1}s: {:.0} items/s",
        r.items,
        args.threads,
        r.seconds,
        r.items_per_second()
    );
    println!(
        "peak VmRSS while reading: {}; {}",
        mib(r.peak_rss),
        memory_line("after reading")
    );
    Ok(())
}
