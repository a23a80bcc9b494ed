//! `cargo xtask experiment transfer`: the paper's transfer table in miniature
//! ([`nag_train::transfer`]): a source model on one part of the `gmm` mixture, fine-tuned onto
//! another with a new label set, sampled as FT / + CFG / + DoG, each without and with NAG, and
//! measured exactly against the target mixture.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_train::generate::{SampleConfig, SamplerKind};
use nag_train::transfer::{
    transfer_experiment_seeds, TransferConfig, TransferSeeds, TransferStage,
};

use crate::progress::Progress;

/// Arguments of `cargo xtask experiment transfer`.
#[derive(Debug, Args)]
pub struct TransferArgs {
    /// Source domain (a gmm spec with a class range).
    #[arg(long, default_value = "gmm16:0-4")]
    pub source: String,
    /// Target domain (other classes: other shapes and colours).
    #[arg(long, default_value = "gmm16:5-9")]
    pub target: String,
    /// Training steps of the source model.
    #[arg(long, default_value_t = 1000)]
    pub source_steps: u64,
    /// Fine-tuning steps on the target.
    #[arg(long, default_value_t = 400)]
    pub finetune_steps: u64,
    /// Samples per setting.
    #[arg(long, default_value_t = 200)]
    pub n: usize,
    /// DDPM sampling steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// CFG scale, also DoG's (DiT convention, 1 = off).
    #[arg(long, default_value_t = 1.5)]
    pub cfg: f64,
    /// NAG weight alone (the paper's 3).
    #[arg(long, default_value_t = 3.0)]
    pub nag: f64,
    /// NAG weight with CFG or DoG (the paper's 2).
    #[arg(long, default_value_t = 2.0)]
    pub nag_with_cfg: f64,
    /// Seed of training and sampling (the first one with --seeds).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Repeat the whole experiment (training, fine-tuning, sampling) with this many seeds
    /// (seed, seed + 1, …), each in OUT/seed-S, and report mean ± std and NAG's paired effect.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub seeds: u64,
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
    args: &'a TransferArgs,
}

impl BackendTask for Task<'_> {
    type Output = Result<TransferSeeds>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<TransferSeeds> {
        let seeds: Vec<u64> = (0..self.args.seeds).map(|i| self.args.seed + i).collect();
        let mut bars: Option<(usize, Progress, Progress)> = None;
        let result = transfer_experiment_seeds::<B>(
            &self.cfg,
            &seeds,
            &self.args.out,
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
    if args.source_steps == 0 || args.finetune_steps == 0 || args.steps == 0 {
        bail!("--source-steps, --finetune-steps and --steps must be at least 1");
    }
    if args.seed.checked_add(args.seeds - 1).is_none() {
        bail!(
            "--seed {} + --seeds {} runs past the largest seed; pick a smaller --seed",
            args.seed,
            args.seeds
        );
    }
    let spec = DeviceSpec::parse(&args.device)?;
    let mut source = crate::train::default_config();
    source.data = args.source.clone();
    source.steps = args.source_steps;
    source.seed = args.seed;
    source.noise_dropout = 0.1;
    source.checkpoint_every = args.source_steps;
    source.threads = crate::train::default_threads(spec, source.grad_accum);
    let cfg = TransferConfig {
        source,
        target: args.target.clone(),
        finetune_steps: args.finetune_steps,
        n: args.n,
        sample: SampleConfig {
            sampler: SamplerKind::Ddpm,
            steps: args.steps,
            eta: 0.0,
            seed: args.seed,
            path: "linear".into(),
            clip_x0: true,
            threads: spec.concurrent_batches(),
            variance: nag_train::sampling::FixedVariance::default(),
        },
        cfg: args.cfg,
        nag: args.nag,
        nag_with_cfg: args.nag_with_cfg,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let result = dispatch(spec, Task { cfg, args })??;
    // One seed keeps the single-run files (as before); several write the summary with each run.
    let (json, md) = if result.runs.len() == 1 {
        (
            serde_json::to_string_pretty(&result.runs[0])?,
            result.runs[0].markdown(),
        )
    } else {
        (serde_json::to_string_pretty(&result)?, result.markdown())
    };
    nag_models::checkpoint::write_atomic(&args.out.join("results.json"), |w| {
        std::io::Write::write_all(w, json.as_bytes())
    })?;
    nag_models::checkpoint::write_atomic(&args.out.join("table.md"), |w| {
        std::io::Write::write_all(w, md.as_bytes())
    })?;
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
