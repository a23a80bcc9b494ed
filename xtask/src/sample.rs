//! `cargo xtask sample`: parses the options, checks the output path before any work, runs
//! [`sample_images`] with a progress bar and prints what was written.

use std::path::PathBuf;

use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_train::sample_images::{
    sample_images, ModelSource, SampleEvent, SampleImagesConfig, SampleOptions, SampleOutcome,
    SampleOutput,
};

use crate::progress::Progress;

/// Arguments of `cargo xtask sample`: which model, where the samples go, and the
/// [`SampleOptions`] that say how they are drawn.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Run directory of `cargo xtask train` (reads its EMA weights).
    #[arg(long, conflicts_with_all = ["weights", "model"])]
    pub run: Option<PathBuf>,
    /// The exact gmm model instead of a network.
    #[command(flatten)]
    pub oracle: crate::oracle_args::OracleOpts,
    /// Weights file instead of a run: .pt / .safetensors (official DiT/SiT files load as they are).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// With --weights: dit (DDPM index clock) or sit (SiT clock).
    #[arg(long, default_value = "dit")]
    pub kind: String,
    /// With --weights: attention heads (default: the standard count for the hidden size).
    #[arg(long, value_name = "N")]
    pub heads: Option<usize>,
    #[command(flatten)]
    pub options: SampleOptions,
    /// Output PNG grid, a .png file (default: <run>/samples.png or <run>/compare.png).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the samples for the ADM evaluator instead of a grid: an .npz with only `arr_0`,
    /// uint8 [N, H, W, 3] (DiT's sample_ddp.py format), plus `<stem>_labels.npy`. Runs in
    /// batches of --batch with a progress bar and resumes an interrupted run (same options).
    #[arg(long, conflicts_with = "compare")]
    pub npz: Option<PathBuf>,
    /// With --npz: the same number of samples per class (label i = i mod classes) instead of
    /// i.i.d. uniform labels as DiT's sample_ddp.py draws them.
    #[arg(long, conflicts_with = "class")]
    pub balanced_labels: bool,
    /// One image with rows: no guidance, CFG, NAG, CFG+NAG (same seeds), with the --cfg and
    /// --nag given (defaults 4 and 3 here); each row's guidance and each column's class are
    /// written in the image.
    #[arg(long)]
    pub compare: bool,
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Runs `cargo xtask sample`.
pub fn run(args: &SampleArgs) -> Result<()> {
    let spec = DeviceSpec::parse(&args.device)?;
    // Before any sampling: an output that cannot be written is known now.
    if let Some(out) = &args.out {
        crate::check_output_file(out, "--out", "png")?;
    }
    if let Some(npz) = &args.npz {
        crate::check_output_file(npz, "--npz", "npz")?;
    }
    let model = match (&args.run, &args.weights, args.oracle.model.as_deref()) {
        (_, _, Some("oracle")) => ModelSource::Oracle(args.oracle.spec.clone()),
        (_, _, Some(other)) => {
            bail!("--model '{other}': the only model besides --run/--weights is `oracle`")
        }
        (Some(run), _, None) => ModelSource::Run(run.clone()),
        (None, Some(path), None) => ModelSource::Weights {
            path: path.clone(),
            kind: args.kind.clone(),
            heads: args.heads,
        },
        (None, None, None) => bail!("give --run RUN_DIR or --weights FILE"),
    };
    let output = match &args.npz {
        Some(path) => SampleOutput::Npz {
            path: path.clone(),
            balanced_labels: args.balanced_labels,
        },
        None => SampleOutput::Grid {
            path: args.out.clone().unwrap_or_else(|| {
                args.run
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("."))
                    .join(if args.compare {
                        "compare.png"
                    } else {
                        "samples.png"
                    })
            }),
            compare: args.compare,
        },
    };
    let cfg = SampleImagesConfig {
        model,
        output,
        threads: spec.concurrent_batches(),
        options: args.options.clone(),
    };
    match dispatch(spec, Task { cfg: &cfg })?? {
        SampleOutcome::Grid(path) => println!("wrote {}", path.display()),
        SampleOutcome::Npz(summary) => println!(
            "wrote {} (arr_0 uint8 {:?}) and {}{}",
            summary.npz.display(),
            summary.shape,
            summary.labels.display(),
            if summary.resumed > 0 {
                format!(" ({} samples resumed)", summary.resumed)
            } else {
                String::new()
            }
        ),
    }
    Ok(())
}

struct Task<'a> {
    cfg: &'a SampleImagesConfig,
}

impl BackendTask for Task<'_> {
    type Output = Result<SampleOutcome>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<SampleOutcome> {
        let cfg = self.cfg;
        let mut bar: Option<Progress> = None;
        let mut rows = 1;
        let outcome = sample_images::<B::InnerBackend>(cfg, &device, |event| match event {
            SampleEvent::Loaded {
                path,
                info,
                null_timestep_missing,
            } => {
                eprintln!("loaded {} ({info})", path.display());
                if null_timestep_missing {
                    eprintln!(
                        "note: no null-timestep vector in the file: NAG needs fine-tuning first"
                    );
                }
            }
            SampleEvent::Vae {
                weights,
                scaling_factor,
            } => eprintln!(
                "VAE: {} (scaling_factor {scaling_factor})",
                weights.display()
            ),
            SampleEvent::Rows(names) => {
                rows = names.len();
                eprintln!(
                    "rows: {} (CFG scale {}, NAG weight {})",
                    names.join(", "),
                    cfg.options.cfg,
                    cfg.options.nag
                );
            }
            SampleEvent::Step { row, step, steps } => {
                // (Adaptive ODE runs have no step count: no bar, the row lines remain.)
                if steps > 0 {
                    let b = bar.get_or_insert_with(|| {
                        Progress::new((rows * steps) as u64, "sampler steps")
                    });
                    b.set((row * steps + step) as u64);
                }
            }
            SampleEvent::RowDone { name, n, seconds } => {
                let line = format!("sampled {n} {name} in {seconds:.1}s");
                match &bar {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
            }
            SampleEvent::SetStart { n, batch, labels } => {
                let out = match &cfg.output {
                    SampleOutput::Npz { path, .. } => path.display().to_string(),
                    SampleOutput::Grid { path, .. } => path.display().to_string(),
                };
                eprintln!("sampling {n} images in batches of {batch} ({labels} labels) into {out}");
                bar = Some(Progress::new(n as u64, "images"));
            }
            SampleEvent::SetProgress { done, resumed } => {
                if let Some(b) = &bar {
                    if resumed > 0 {
                        b.message(format!("{resumed} from an earlier run"));
                    }
                    b.set(done as u64);
                }
            }
        });
        if let Some(b) = &bar {
            b.finish();
        }
        Ok(outcome?)
    }
}
