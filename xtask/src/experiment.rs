//! `cargo xtask experiment`: the README's experiments. Each runs a library pipeline
//! ([`nag_train::experiments`], [`nag_train::study`], [`nag_train::transfer`]); this file maps
//! the flags to its options and shows its progress.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand};
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_train::experiments::nag::{
    experiment_model, markdown, NagExperimentConfig, NagExperimentOptions, NagResults,
};
use nag_train::experiments::{run_nag_experiment, NagExperimentEvent};
use nag_train::train::TrainConfig;

use crate::progress::{FeatureBar, TrainProgress};

/// `cargo xtask experiment`: the README's experiments.
#[derive(Debug, Subcommand)]
pub enum ExperimentCmd {
    /// Trains the default model on gmm data and tabulates noise shift, FD, precision / recall
    /// and exact log-density with and without NAG.
    Nag(ExperimentArgs),
    /// When does NAG reduce the noise shift and improve samples: the exact oracle of the gmm
    /// data with controlled errors (and trained runs), measured exactly.
    Oracle(crate::experiment_oracle::OracleArgs),
    /// The paper's transfer table in miniature: a source model fine-tuned onto other gmm
    /// classes, sampled as FT / + CFG / + DoG, each without and with NAG, measured exactly.
    Transfer(crate::experiment_transfer::TransferArgs),
}

/// Runs `cargo xtask experiment …`.
pub fn run_cmd(cmd: &ExperimentCmd) -> Result<()> {
    match cmd {
        ExperimentCmd::Nag(args) => run(args),
        ExperimentCmd::Oracle(args) => crate::experiment_oracle::run(args),
        ExperimentCmd::Transfer(args) => crate::experiment_transfer::run(args),
    }
}

/// This process's command as the results files record it: `cargo xtask experiment …` (the
/// arguments after `experiment`).
pub fn command_line() -> String {
    std::iter::once("cargo xtask experiment".to_string())
        .chain(std::env::args().skip(2))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Arguments of `cargo xtask experiment nag`.
#[derive(Debug, Args)]
pub struct ExperimentArgs {
    /// Output folder (the trained model goes to `<out>/model`).
    #[arg(long, default_value = "runs/experiment-nag")]
    pub out: PathBuf,
    /// Training steps of the model (default: the default preset's).
    #[arg(long)]
    pub train_steps: Option<u64>,
    #[command(flatten)]
    pub options: NagExperimentOptions,
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Runs `cargo xtask experiment nag`.
pub fn run(args: &ExperimentArgs) -> Result<()> {
    let spec = DeviceSpec::parse(&args.device)?;
    let mut train = experiment_model(TrainConfig::main_job());
    if let Some(steps) = args.train_steps {
        train.steps = steps;
    }
    train.threads = crate::train::default_threads(spec, train.grad_accum);
    let cfg = NagExperimentConfig {
        out: args.out.clone(),
        train,
        threads: spec.concurrent_batches(),
        command: command_line(),
        options: args.options.clone(),
    };
    let results = dispatch(spec, Task { cfg: &cfg })??;
    print_table(&results, &args.out);
    Ok(())
}

struct Task<'a> {
    cfg: &'a NagExperimentConfig,
}

impl BackendTask for Task<'_> {
    type Output = Result<NagResults>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<NagResults> {
        let mut train_bar: Option<TrainProgress> = None;
        let mut features_bar: Option<FeatureBar> = None;
        let out = &self.cfg.out;
        let results = run_nag_experiment::<B>(self.cfg, &device, |event| match event {
            NagExperimentEvent::ReusingModel(dir) => eprintln!(
                "reusing the trained model in {} (--retrain to train it again)",
                dir.display()
            ),
            NagExperimentEvent::TrainingModel(cfg) => {
                eprintln!(
                    "training '{}' on '{}' for {} steps, batch {}, noise dropout {}",
                    cfg.model, cfg.data, cfg.steps, cfg.batch, cfg.noise_dropout
                );
                train_bar = Some(TrainProgress::new(cfg.steps));
            }
            NagExperimentEvent::Train(e) => {
                if let Some(b) = &mut train_bar {
                    b.event(e);
                }
            }
            NagExperimentEvent::TrainingFeatures(cfg) => {
                if let Some(b) = train_bar.take() {
                    b.finish();
                }
                eprintln!(
                    "training the feature classifier on '{}' (seed {}) for {} steps, batch {}, into {}",
                    cfg.data,
                    cfg.seed,
                    cfg.steps,
                    cfg.batch,
                    out.join("features").display()
                );
                features_bar = Some(FeatureBar::new(cfg.steps));
            }
            NagExperimentEvent::FeatureProgress(p) => {
                if let Some(b) = &features_bar {
                    b.show(&p);
                }
            }
            NagExperimentEvent::FeaturesTrained(accuracy) => {
                if let Some(b) = features_bar.take() {
                    b.finish();
                }
                eprintln!(
                    "feature classifier: held-out accuracy {:.2}%",
                    100.0 * accuracy
                );
            }
            NagExperimentEvent::Measured(row) => {
                if let Some(b) = train_bar.take() {
                    b.finish();
                }
                eprintln!(
                    "{:<22} δ(τ≤0.2) {:+.4} excess {:+.4}  FD {:.3}  P {:.3}  R {:.3}  log p {:.1}  ({:.0}s)",
                    row.name,
                    row.late_delta,
                    row.late.excess_delta.unwrap_or(f64::NAN),
                    row.fd,
                    row.precision,
                    row.recall,
                    row.log_density,
                    row.seconds
                );
            }
        })?;
        Ok(results)
    }
}

fn print_table(r: &NagResults, out: &std::path::Path) {
    println!("{}", markdown(r));
    println!(
        "wrote {0}/results.json, {0}/table.md, {0}/shift.png, {0}/sweep.png",
        out.display()
    );
}
