//! `cargo xtask eval`: sample quality of a trained run.
//!
//! Samples `--n` images from the run's EMA model (labels cycling through the classes) with the
//! chosen guidance, draws `--n` real images from the run's dataset, and compares them in the
//! feature space of the dataset's classifier ([`nag_train::metrics::features`]): Fréchet
//! distance, k-NN precision / recall, density / coverage, and the classifier's accuracy on the
//! samples' conditioning labels. On `gmm` data it adds the exact mean log-density of the samples
//! under the data mixture and the per-mode coverage ([`nag_train::metrics::gmm_metrics`]).
//!
//! With `--inception PATH` (pytorch-fid's FID weights, `pt_inception-2015-12-05-6726825d.pth`
//! or a safetensors conversion) it also reports FID: the Fréchet distance between the 2048-d
//! InceptionV3 pool features of the same real and generated images
//! ([`nag_train::metrics::inception`]). Without it, `inception_fid` is null.
//!
//! With `--samples S.npz --ref REF.npz --inception W` instead of a run it is OpenAI's ADM
//! evaluator, the numbers papers report ([`crate::eval_adm`]).

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_train::evaluate::{evaluate, EvalConfig, EvalEvent, EvalModel, EvalReport};

use crate::progress::{FeatureBar, Progress};

/// Images sampled per batch without --batch.
const DEFAULT_SAMPLE_BATCH: usize = 250;

/// Arguments of `cargo xtask eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Run directory of `cargo xtask train` (reads config.json and ema.safetensors).
    #[arg(long, required_unless_present_any = ["model", "samples"], conflicts_with = "model")]
    pub run: Option<PathBuf>,
    /// ADM evaluator: the sample batch (`np.savez(path, arr_0=uint8 [N,H,W,3])`; with `mu`,
    /// `sigma`, `mu_s`, `sigma_s` its FID statistics are read from it). Needs --ref and
    /// --inception; prints Inception Score, FID, sFID, Precision, Recall.
    #[arg(long, requires = "reference", conflicts_with_all = ["run", "model"])]
    pub samples: Option<PathBuf>,
    /// ADM evaluator: the reference batch (e.g. VIRTUAL_imagenet256_labeled.npz: arr_0 for
    /// precision / recall, mu/sigma/mu_s/sigma_s for FID / sFID).
    #[arg(long = "ref", id = "reference", requires = "samples")]
    pub reference: Option<PathBuf>,
    /// ADM evaluator: feed pixels as the TF graph does, (v − 128)/128, instead of pytorch-fid's
    /// v/255·2 − 1.
    #[arg(long, requires = "samples")]
    pub tf_input_scale: bool,
    /// The exact gmm model instead of a run (`--model oracle`; its feature classifier goes to
    /// `runs/features-<data>` unless `--features` is given).
    #[command(flatten)]
    pub oracle: nag_train::oracle::OracleChoice,
    /// What to sample and measure.
    #[command(flatten)]
    pub config: EvalConfig,
    /// Images sampled per batch (the noise seed of batch b is derived from --seed and b;
    /// default 250); with --samples, images per InceptionV3 forward (default 16).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Runs `cargo xtask eval`.
pub fn run(args: &EvalArgs) -> Result<()> {
    if args.samples.is_some() {
        return crate::eval_adm::run(args);
    }
    let spec = DeviceSpec::parse(&args.device)?;
    let cfg = EvalConfig {
        batch: args.batch.unwrap_or(DEFAULT_SAMPLE_BATCH),
        threads: spec.concurrent_batches(),
        ..args.config.clone()
    };
    let report = dispatch(spec, Task { args, cfg: &cfg })??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

struct Task<'a> {
    args: &'a EvalArgs,
    cfg: &'a EvalConfig,
}

impl BackendTask for Task<'_> {
    type Output = Result<EvalReport>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<EvalReport> {
        let args = self.args;
        let oracle = (args.oracle.chosen("--run")?)
            .map(|spec| spec.build(args.config.seed))
            .transpose()?;
        let model = match (&args.run, &oracle) {
            (Some(dir), _) => EvalModel::Run(dir),
            (None, Some((oracle, gmm))) => EvalModel::Oracle {
                oracle,
                gmm,
                data: args.oracle.spec.data.clone(),
                objective: args.oracle.spec.objective.clone(),
                description: args.oracle.spec.describe(),
            },
            (None, None) => anyhow::bail!("give --run RUN_DIR or --model oracle"),
        };
        let mut features_bar: Option<FeatureBar> = None;
        let mut bar: Option<Progress> = None;
        let report = evaluate::<B>(&model, self.cfg, &device, |event| {
            match event {
            EvalEvent::TrainingFeatures { dir, cfg } => {
                eprintln!(
                    "no feature classifier in {}: training one on the run's dataset now (saved there for later evals)",
                    dir.display()
                );
                features_bar = Some(FeatureBar::new(cfg.steps));
            }
            EvalEvent::FeatureProgress(p) => {
                if let Some(b) = &features_bar {
                    b.show(&p);
                }
            }
            EvalEvent::FeaturesTrained {
                held_out_accuracy,
                held_out_n,
            } => {
                if let Some(b) = features_bar.take() {
                    b.finish();
                }
                eprintln!(
                    "feature classifier: held-out accuracy {:.2}% ({held_out_n} items never trained on)",
                    100.0 * held_out_accuracy
                );
                if held_out_accuracy < 0.5 {
                    eprintln!("warning: the classifier is weak; its features make a coarse metric (train it longer: cargo xtask features train)");
                }
            }
            EvalEvent::FeatureDataMismatch { trained_on, run } => eprintln!(
                "warning: the feature classifier was trained on '{}' (seed {}), the run uses '{}' (seed {})",
                trained_on.0, trained_on.1, run.0, run.1
            ),
            EvalEvent::Sampled { done, total } => {
                let b = bar.get_or_insert_with(|| Progress::new(total as u64, "samples"));
                b.set(done as u64);
                if done == total {
                    b.finish();
                }
            }
            EvalEvent::InceptionReal => {
                eprintln!("InceptionV3 features of the real images, then the 2048-d FID")
            }
        }
        })?;
        Ok(report)
    }
}
