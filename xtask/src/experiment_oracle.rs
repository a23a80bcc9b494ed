//! `cargo xtask experiment oracle`: parses the lists, runs [`oracle_study`], prints one row per
//! setting (or `--json`); `nag_train::experiments::oracle` writes `results.json`, `table.md`
//! and the plots.

use std::path::PathBuf;

use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_core::guidance::Interval;
use nag_train::experiments::oracle::{markdown, read_results, table_row, write_outputs};
use nag_train::generate::{parse_variance, SamplerKind};
use nag_train::oracle::{NagForm, OracleError};
use nag_train::study::{oracle_study, OracleStudy, OracleStudyConfig, StudyRow};

/// Arguments of `cargo xtask experiment oracle`. Every list is comma-separated; the study
/// measures their product.
#[derive(Debug, Args)]
pub struct OracleArgs {
    /// Sampling steps (a list: `10,50,250`).
    #[arg(long, value_delimiter = ',', default_value = "50")]
    pub steps: Vec<usize>,
    /// Trajectories per setting.
    #[arg(long, default_value_t = 256)]
    pub n: usize,
    /// NAG weights.
    #[arg(long, value_delimiter = ',', default_value = "0,0.5,1,2,3,4")]
    pub nag: Vec<f64>,
    /// The oracle's noise-dropped branch: eps (a noise-dropout network's ε average), score
    /// (classifier NAG with the exact ∇log p(τ|x)), estimator (classifier NAG with a trained
    /// g_φ, needs --estimator), or several: `eps,score`.
    #[arg(long, value_delimiter = ',', default_value = "eps")]
    pub nag_form: Vec<String>,
    /// Errors of the oracle: none, eps-scale:K, eps-scale-cond:K, bias:B, smooth:S (a list).
    #[arg(long, value_delimiter = ',', default_value = "none")]
    pub oracle_error: Vec<String>,
    /// DDPM fixed variance: small (β̃_t), large (β_t, DiT's default without variance
    /// channels), or both: `small,large`.
    #[arg(long, value_delimiter = ',', default_value = "large")]
    pub variance: Vec<String>,
    /// NAG τ intervals `lo:hi` (paper clock), or `all`: e.g. `all,0:0.3,0.3:1`.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub nag_interval: Vec<String>,
    /// Trained runs on the same data (`cargo xtask train --data gmm`), measured next to the
    /// oracle, with their branches' error against the oracle's.
    #[arg(long, value_delimiter = ',')]
    pub runs: Vec<PathBuf>,
    /// A noise-level estimator trained on the same data (`cargo xtask estimator train --data
    /// gmm`), for `--nag-form estimator` (classifier NAG with its ∇log g_φ(τ|x)).
    #[arg(long)]
    pub estimator: Option<PathBuf>,
    /// The data: gmm, gmm8, gmm32, … (seed 0).
    #[arg(long, default_value = "gmm")]
    pub data: String,
    /// The oracle's objective: ddpm (ε, DiT's schedule) or linear / gvp / vp (velocity).
    #[arg(long, default_value = "ddpm")]
    pub objective: String,
    /// Sampler (default: ddpm for ddpm, sde otherwise).
    #[arg(long, value_enum, ignore_case = true, hide_possible_values = true)]
    pub sampler: Option<SamplerKind>,
    /// Seed of the trajectories, the real items and the calibration noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder.
    #[arg(long, default_value = "runs/experiment-oracle")]
    pub out: PathBuf,
    /// Re-render `table.md` and the plots (and rewrite `results.json`) from a saved
    /// `results.json` into `--out`, without measuring anything.
    #[arg(long)]
    pub from_results: Option<PathBuf>,
    /// Print one JSON object (`{"settings": [...]}`) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn parse_interval(s: &str) -> Result<Option<Interval>> {
    if s == "all" {
        return Ok(None);
    }
    let parsed = s
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<f64>().ok()?, b.parse::<f64>().ok()?)));
    match parsed {
        Some((lo, hi)) if (0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi) && lo <= hi => {
            Ok(Some(Interval { lo, hi }))
        }
        _ => {
            bail!("--nag-interval '{s}': expected all or lo:hi with 0 ≤ lo ≤ hi ≤ 1 (paper clock)")
        }
    }
}

fn config(args: &OracleArgs, spec: DeviceSpec) -> Result<OracleStudyConfig> {
    Ok(OracleStudyConfig {
        data: args.data.clone(),
        objective: args.objective.clone(),
        sampler: args.sampler,
        steps: args.steps.clone(),
        n: args.n,
        nag: args.nag.clone(),
        forms: args
            .nag_form
            .iter()
            .map(|f| NagForm::parse(f))
            .collect::<Result<_, _>>()?,
        errors: args
            .oracle_error
            .iter()
            .map(|e| OracleError::parse(e))
            .collect::<Result<_, _>>()?,
        variances: args
            .variance
            .iter()
            .map(|v| parse_variance(v))
            .collect::<Result<_, _>>()?,
        intervals: args
            .nag_interval
            .iter()
            .map(|i| parse_interval(i))
            .collect::<Result<_>>()?,
        runs: args.runs.clone(),
        estimator: args.estimator.clone(),
        seed: args.seed,
        threads: spec.concurrent_batches(),
    })
}

struct Task<'a> {
    cfg: &'a OracleStudyConfig,
    quiet: bool,
}

impl BackendTask for Task<'_> {
    type Output = Result<OracleStudy>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<OracleStudy> {
        let quiet = self.quiet;
        let mut progress = |row: &StudyRow| {
            if !quiet {
                eprintln!("{}  ({:.0}s)", table_row(row), row.seconds);
            }
        };
        Ok(oracle_study::<B>(self.cfg, &device, &mut progress)?)
    }
}

/// Runs `cargo xtask experiment oracle`.
pub fn run(args: &OracleArgs) -> Result<()> {
    if let Some(path) = &args.from_results {
        let saved = read_results(path)?;
        write_outputs(&args.out, &saved.study, &saved.command)?;
        println!("{}", markdown(&saved.study, &saved.command));
        println!("re-rendered {} from {}", args.out.display(), path.display());
        return Ok(());
    }
    let spec = DeviceSpec::parse(&args.device)?;
    let cfg = config(args, spec)?;
    let study = dispatch(
        spec,
        Task {
            cfg: &cfg,
            quiet: args.json,
        },
    )??;
    let command = std::iter::once("cargo xtask experiment".to_string())
        .chain(std::env::args().skip(2))
        .collect::<Vec<_>>()
        .join(" ");
    write_outputs(&args.out, &study, &command)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&study)?);
    } else {
        println!("{}", markdown(&study, &command));
        println!(
            "wrote {0}/results.json, {0}/table.md, {0}/sweep.png, {0}/shift.png",
            args.out.display()
        );
    }
    Ok(())
}
