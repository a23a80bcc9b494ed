//! `cargo xtask experiment oracle`: parses the lists, runs [`oracle_study`], prints one row per
//! setting (or `--json`); `nag_train::experiments::oracle` writes `results.json`, `table.md`
//! and the plots.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_train::experiments::oracle::{markdown, read_results, table_row, write_outputs};
use nag_train::study::{oracle_study, OracleStudy, OracleStudyConfig, StudyRow};

/// Arguments of `cargo xtask experiment oracle`: the [`OracleStudyConfig`], where its outputs go,
/// and which device.
#[derive(Debug, Args)]
pub struct OracleArgs {
    #[command(flatten)]
    pub study: OracleStudyConfig,
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
    let cfg = OracleStudyConfig {
        threads: spec.concurrent_batches(),
        ..args.study.clone()
    };
    let study = dispatch(
        spec,
        Task {
            cfg: &cfg,
            quiet: args.json,
        },
    )??;
    let command = crate::experiment::command_line();
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
