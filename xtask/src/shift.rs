//! `cargo xtask shift`: the noise shift δ. Without `--run`: the analytic δ of a schedule, first
//! order vs exact (here). With `--run`: δ measured along a trained model's sampling
//! trajectories, without and with NAG (`shift_run.rs`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use nag_train::shift::analytic_shift;

/// Arguments of `cargo xtask shift`.
#[derive(Debug, Args)]
pub struct ShiftArgs {
    /// Measure along the sampling trajectories of this training run (else: analytic mode).
    #[arg(long, conflicts_with = "model")]
    pub run: Option<PathBuf>,
    /// The exact gmm model instead of a run (`--model oracle`).
    #[command(flatten)]
    pub oracle: nag_train::oracle::OracleChoice,
    #[command(flatten)]
    pub trajectories: nag_train::shift::TrajectoryOptions,
    /// Measure with the exact posterior of the run's Gaussian-mixture data (gmm runs; default).
    #[arg(long, conflicts_with = "estimator")]
    pub exact: bool,
    /// Output folder for shift.json and shift.png (default: the run folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Noise schedule: ddpm-linear, ddpm-cosine, linear, gvp or vp.
    #[arg(long, default_value = "linear")]
    pub schedule: String,
    /// Standard deviation σ_e of the accumulated sampling error (≥ 0).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub sigma_e: f64,
    /// Number of grid points over τ ∈ (0, 1] (DDPM: evenly spaced table indices).
    #[arg(long, default_value_t = 20)]
    pub points: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `cargo xtask shift` without `--run`: the analytic shift table (`--run` and
/// `--model oracle` are `shift_run`'s).
pub fn run(args: &ShiftArgs) -> Result<()> {
    let report = analytic_shift(&args.schedule, args.sigma_e, args.points)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    print!("{report}");
    Ok(())
}
