//! `cargo xtask shift`: the noise shift δ. Without `--run`: the analytic δ of a schedule, first
//! order vs exact. With `--run`: δ measured along a trained model's sampling trajectories,
//! without and with NAG.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use nag_core::schedule::{NoiseSchedule, Schedule};
use nag_core::shift;
use serde::Serialize;

/// Arguments of `cargo xtask shift`.
#[derive(Debug, Args)]
pub struct ShiftArgs {
    /// Measure along the sampling trajectories of this training run (else: analytic mode).
    #[arg(long, conflicts_with = "model")]
    pub run: Option<PathBuf>,
    /// The exact gmm model instead of a run (`--model oracle`).
    #[command(flatten)]
    pub oracle: crate::oracle_args::OracleOpts,
    /// DDPM sampler: fixed variance for models without variance channels, large (β_t, DiT's
    /// default) or small (β̃_t).
    #[arg(long, default_value = "large")]
    pub variance: String,
    /// Sampler for --run: ddpm, ddim, sde, ode (default: ddpm for DiT runs, sde for SiT runs).
    #[arg(long)]
    pub sampler: Option<String>,
    /// Sampling steps for --run.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// NAG weight of the guided trajectories (the unguided ones use 0).
    #[arg(long, default_value_t = 3.0)]
    pub nag: f64,
    /// CFG scale of both (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub cfg: f64,
    /// Measure with the exact posterior of the run's Gaussian-mixture data (gmm runs; default).
    #[arg(long, conflicts_with = "estimator")]
    pub exact: bool,
    /// Measure with a trained noise-level estimator (any data): its directory or file.
    #[arg(long)]
    pub estimator: Option<PathBuf>,
    /// Trajectories (samples) per setting.
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// Seed of the trajectories (the same for both settings).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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

#[derive(Debug, Serialize)]
struct Row {
    /// Paper-clock τ.
    tau: f64,
    /// DDPM table index (DDPM schedules only).
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    delta_first_order: Option<f64>,
    /// `null` where σ² + σ_e² is beyond the schedule's range.
    delta_exact: Option<f64>,
    /// Discrete shift in table steps (DDPM schedules only).
    #[serde(skip_serializing_if = "Option::is_none")]
    delta_steps: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    schedule: String,
    sigma_e: f64,
    rows: Vec<Row>,
}

fn rows(schedule: &Schedule, sigma_e: f64, points: usize) -> Vec<Row> {
    match schedule {
        Schedule::Ddpm(table) => {
            let n = table.len();
            (0..points)
                .map(|p| {
                    let index = if points == 1 {
                        0
                    } else {
                        p * (n - 1) / (points - 1)
                    };
                    let tau = table.tau(index);
                    Row {
                        tau,
                        index: Some(index),
                        delta_first_order: shift::first_order(schedule, tau, sigma_e).ok(),
                        delta_exact: shift::exact(schedule, tau, sigma_e).ok(),
                        delta_steps: shift::discrete(table, index, sigma_e).ok(),
                    }
                })
                .collect()
        }
        _ => (1..=points)
            .map(|p| {
                let tau = p as f64 / points as f64;
                Row {
                    tau,
                    index: None,
                    delta_first_order: shift::first_order(schedule, tau, sigma_e).ok(),
                    delta_exact: shift::exact(schedule, tau, sigma_e).ok(),
                    delta_steps: None,
                }
            })
            .collect(),
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.6}"))
}

/// Runs `cargo xtask shift`.
pub fn run(args: &ShiftArgs) -> Result<()> {
    if args.run.is_some() || args.oracle.model.is_some() {
        return crate::shift_run::run(args);
    }
    run_analytic(args)
}

/// The analytic shift table.
fn run_analytic(args: &ShiftArgs) -> Result<()> {
    if !(args.sigma_e.is_finite() && args.sigma_e >= 0.0) {
        bail!(
            "--sigma-e must be a finite number ≥ 0 (got {}): it is the standard deviation of the accumulated error",
            args.sigma_e
        );
    }
    if args.points == 0 || args.points > 100_000 {
        bail!(
            "--points must be between 1 and 100000 (got {})",
            args.points
        );
    }
    let schedule = Schedule::from_name(&args.schedule).context("--schedule")?;
    let report = Report {
        schedule: args.schedule.to_ascii_lowercase(),
        sigma_e: args.sigma_e,
        rows: rows(&schedule, args.sigma_e, args.points),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "noise shift δ on '{}' for σ_e = {} (σ(τ+δ)² = σ(τ)² + σ_e²; — = no solution in range)",
        report.schedule, report.sigma_e
    );
    let ddpm = matches!(schedule, Schedule::Ddpm(_));
    if ddpm {
        println!(
            "{:>6} {:>8} {:>8} {:>12} {:>12} {:>10}",
            "index", "τ", "σ(τ)", "δ 1st order", "δ exact", "δ steps"
        );
    } else {
        println!(
            "{:>8} {:>8} {:>12} {:>12}",
            "τ", "σ(τ)", "δ 1st order", "δ exact"
        );
    }
    for r in &report.rows {
        let sigma = schedule.sigma(r.tau);
        if ddpm {
            println!(
                "{:>6} {:>8.4} {:>8.4} {:>12} {:>12} {:>10}",
                r.index.unwrap_or(0),
                r.tau,
                sigma,
                fmt(r.delta_first_order),
                fmt(r.delta_exact),
                r.delta_steps.map_or("—".into(), |v| format!("{v:.2}"))
            );
        } else {
            println!(
                "{:>8.4} {:>8.4} {:>12} {:>12}",
                r.tau,
                sigma,
                fmt(r.delta_first_order),
                fmt(r.delta_exact)
            );
        }
    }
    Ok(())
}
