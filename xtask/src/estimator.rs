//! `cargo xtask estimator`: train the noise-level estimator `g_φ(τ | x)` and validate it against
//! the exact posterior of the built-in Gaussian-mixture data.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand};
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_train::estimator::{
    load_estimator, train_estimator, validate_on_gmm, EstimatorProgress, EstimatorSummary,
    EstimatorTrainConfig, ValidateOptions, ValidationReport,
};

use crate::progress::Progress;

/// The `estimator` subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum EstimatorCmd {
    /// Train g_φ(τ|x) on forward-noised data (defaults: 16-px gmm, ddpm-linear, 50 bins).
    Train(EstimatorTrainArgs),
    /// Compare a gmm-trained estimator with the exact noise-level posterior.
    Validate(EstimatorValidateArgs),
}

/// Arguments of `cargo xtask estimator train`: the [`EstimatorTrainConfig`], where to write
/// and which device.
#[derive(Debug, Args)]
pub struct EstimatorTrainArgs {
    #[command(flatten)]
    pub config: EstimatorTrainConfig,
    /// Output folder (estimator.safetensors + estimator.json).
    #[arg(long, default_value = "runs/estimator")]
    pub out: PathBuf,
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Arguments of `cargo xtask estimator validate`.
#[derive(Debug, Args)]
pub struct EstimatorValidateArgs {
    #[command(flatten)]
    pub options: ValidateOptions,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Runs `cargo xtask estimator …`.
pub fn run(cmd: &EstimatorCmd) -> Result<()> {
    match cmd {
        EstimatorCmd::Train(args) => run_train(args),
        EstimatorCmd::Validate(args) => run_validate(args),
    }
}

struct TrainTask<'a> {
    cfg: EstimatorTrainConfig,
    out: &'a Path,
}

impl BackendTask for TrainTask<'_> {
    type Output = Result<EstimatorSummary>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let mut bar: Option<Progress> = None;
        let summary =
            train_estimator::<B>(&self.cfg, self.out, &device, |p: EstimatorProgress| {
                let b = bar.get_or_insert_with(|| Progress::new(p.total, "steps"));
                b.set(p.step);
                b.message(format!("cross-entropy {:.4}", p.loss));
            })?;
        if let Some(b) = &bar {
            b.finish();
        }
        Ok(summary)
    }
}

fn run_train(args: &EstimatorTrainArgs) -> Result<()> {
    let cfg = args.config.clone();
    cfg.validate()?;
    let spec = DeviceSpec::parse(&args.device)?;
    eprintln!(
        "training the noise-level estimator on '{}' ({} schedule, {} bins, depth {}, hidden {}) \
         for {} steps, batch {}, on {spec}",
        cfg.data, cfg.schedule, cfg.bins, cfg.depth, cfg.hidden, cfg.steps, cfg.batch
    );
    let s = dispatch(
        spec,
        TrainTask {
            cfg: cfg.clone(),
            out: &args.out,
        },
    )??;
    println!(
        "trained {} steps in {:.0}s; cross-entropy {:.4} → {:.4}",
        s.steps, s.train_seconds, s.first_loss, s.final_loss
    );
    println!(
        "held-out mean |τ̂ − τ| = {:.4} over {} items (constant τ̂ = 0.5: {:.4})",
        s.held_out_mean_abs_error, s.held_out_samples, s.constant_mean_abs_error
    );
    println!("estimator: {}", s.weights.display());
    if cfg.data.starts_with("gmm") {
        println!(
            "next: cargo xtask estimator validate --estimator {}",
            args.out.display()
        );
    }
    Ok(())
}

struct ValidateTask<'a>(&'a ValidateOptions);

impl BackendTask for ValidateTask<'_> {
    type Output = Result<ValidationReport>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let o = self.0;
        let (est, meta) = load_estimator::<B::InnerBackend>(&o.estimator, &device)
            .with_context(|| format!("loading the estimator {}", o.estimator.display()))?;
        let (gmm, schedule) = (meta.gmm_dataset()?, meta.schedule()?);
        Ok(validate_on_gmm(&est, &gmm, &schedule, o.n, o.seed)?)
    }
}

fn run_validate(args: &EstimatorValidateArgs) -> Result<()> {
    if args.options.n == 0 {
        bail!("--n must be at least 1");
    }
    let spec = DeviceSpec::parse(&args.device)?;
    let report = dispatch(spec, ValidateTask(&args.options))??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "noise-level estimator {} vs the exact gmm posterior, {} states:\n{report}",
            args.options.estimator.display(),
            report.n
        );
    }
    Ok(())
}
