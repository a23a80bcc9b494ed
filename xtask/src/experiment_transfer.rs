//! `cargo xtask experiment transfer`: the paper's transfer table in miniature
//! ([`nag_train::transfer`]): a source model on one part of the `gmm` mixture, fine-tuned onto
//! another with a new label set, sampled as FT / + CFG / + DoG, each without and with NAG, and
//! measured exactly against the target mixture.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_train::train::TrainConfig;
use nag_train::transfer::{
    transfer_experiment_seeds, TransferConfig, TransferOptions, TransferSeeds, TransferStage,
};

use crate::progress::Progress;

/// Arguments of `cargo xtask experiment transfer`: the [`TransferOptions`], where the models
/// and results go, and which device.
#[derive(Debug, Args)]
pub struct TransferArgs {
    #[command(flatten)]
    pub options: TransferOptions,
    /// Output folder (models in `source/` and `finetuned/`, reused when finished).
    #[arg(long, default_value = "runs/experiment-transfer")]
    pub out: PathBuf,
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

struct Task<'a> {
    cfg: TransferConfig,
    seeds: Vec<u64>,
    out: &'a std::path::Path,
}

impl BackendTask for Task<'_> {
    type Output = Result<TransferSeeds>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<TransferSeeds> {
        let seeds = &self.seeds;
        let mut bars: Option<(usize, Progress, Progress)> = None;
        let result = transfer_experiment_seeds::<B>(
            &self.cfg,
            seeds,
            self.out,
            &device,
            &mut |i, stage| {
                if bars.as_ref().is_none_or(|b| b.0 != i) {
                    let label = |what: &str| {
                        if seeds.len() > 1 {
                            format!("{what} (seed {})", seeds[i])
                        } else {
                            what.to_string()
                        }
                    };
                    bars = Some((
                        i,
                        Progress::new(self.cfg.source.steps, &label("source steps")),
                        Progress::new(self.cfg.finetune_steps, &label("fine-tuning steps")),
                    ));
                }
                let (_, source, finetune) = bars.as_ref().expect("set above");
                match stage {
                    TransferStage::Source(p) => source.set(p.step),
                    TransferStage::Finetune(p) => {
                        source.finish();
                        finetune.set(p.step)
                    }
                    TransferStage::Sampled(k, n) => {
                        source.finish();
                        finetune.finish();
                        eprintln!("seed {}: sampled and measured setting {k}/{n}", seeds[i]);
                    }
                }
            },
        )?;
        Ok(result)
    }
}

/// Runs `cargo xtask experiment transfer`.
pub fn run(args: &TransferArgs) -> Result<()> {
    let seeds = args.options.seed_list()?;
    let spec = DeviceSpec::parse(&args.device)?;
    let train_threads = crate::train::default_threads(spec, TrainConfig::main_job().grad_accum);
    let cfg = args
        .options
        .config(train_threads, spec.concurrent_batches())?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let out = &args.out;
    let result = dispatch(spec, Task { cfg, seeds, out })??;
    let (json, md) = result.write(&args.out)?;
    if args.json {
        println!("{json}");
    } else {
        println!("{md}");
    }
    println!(
        "wrote {} and {}",
        args.out.join("results.json").display(),
        args.out.join("table.md").display()
    );
    Ok(())
}
