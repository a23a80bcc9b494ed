//! `cargo xtask features`: the feature classifier whose pooled activations are the feature
//! space of `cargo xtask eval`'s Fréchet distance and precision / recall.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::progress::FeatureBar;
use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand};
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_train::metrics::features::{
    feature_model_exists, train_feature_net, FeatureModelInfo, FeatureProgress, FeatureTrainConfig,
};

/// The `features` subcommands.
#[derive(Debug, Subcommand)]
pub enum FeaturesCmd {
    /// Train the feature classifier on a dataset (default: 16-px shapes into runs/features).
    Train(FeaturesTrainArgs),
}

/// Arguments of `cargo xtask features train`: the [`FeatureTrainConfig`], where to write and
/// which device.
#[derive(Debug, Args)]
pub struct FeaturesTrainArgs {
    #[command(flatten)]
    pub config: FeatureTrainConfig,
    /// Output folder (model.safetensors + model.json).
    #[arg(long, default_value = "runs/features")]
    pub out: PathBuf,
    /// Replace a classifier already in --out.
    #[arg(long)]
    pub force: bool,
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Runs `cargo xtask features …`.
pub fn run(cmd: &FeaturesCmd) -> Result<()> {
    match cmd {
        FeaturesCmd::Train(args) => run_train(args),
    }
}

fn run_train(args: &FeaturesTrainArgs) -> Result<()> {
    if feature_model_exists(&args.out) && !args.force {
        bail!(
            "{} already holds a feature classifier; pass --force to replace it or --out to write elsewhere",
            args.out.display()
        );
    }
    let cfg = args.config.clone();
    let spec = DeviceSpec::parse(&args.device)?;
    let info = dispatch(
        spec,
        TrainTask {
            cfg: &cfg,
            out: &args.out,
        },
    )??;
    println!(
        "held-out accuracy: {:.2}% on {} unseen items of '{}'",
        100.0 * info.held_out_accuracy,
        info.held_out_n,
        info.data
    );
    println!(
        "features: {} ({}-d)",
        args.out.display(),
        info.config.feature_dim()
    );
    Ok(())
}

struct TrainTask<'a> {
    cfg: &'a FeatureTrainConfig,
    out: &'a Path,
}

impl BackendTask for TrainTask<'_> {
    type Output = Result<FeatureModelInfo>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        train_and_report::<B>(self.cfg, self.out, &device)
    }
}

/// Trains a classifier per `cfg` into `out` with a progress line on stderr, and reports its
/// held-out accuracy (`eval` trains one on the fly through its own events).
fn train_and_report<B: AutodiffBackend>(
    cfg: &FeatureTrainConfig,
    out: &Path,
    device: &B::Device,
) -> Result<FeatureModelInfo> {
    eprintln!(
        "training the feature classifier on '{}' (seed {}) for {} steps, batch {}, into {}",
        cfg.data,
        cfg.seed,
        cfg.steps,
        cfg.batch,
        out.display()
    );
    let start = Instant::now();
    let bar = FeatureBar::new(cfg.steps);
    let summary =
        train_feature_net::<B>(cfg, Some(out), device, |p: FeatureProgress| bar.show(&p))?;
    bar.finish();
    eprintln!(
        "trained in {:.0}s; held-out accuracy {:.2}% ({} items never trained on)",
        start.elapsed().as_secs_f64(),
        100.0 * summary.info.held_out_accuracy,
        summary.info.held_out_n
    );
    if summary.info.held_out_accuracy < 0.5 {
        eprintln!(
            "warning: the classifier is weak; its features make a coarse metric (train longer with --steps)"
        );
    }
    Ok(summary.info)
}
