//! `cargo xtask sample`: parses the options, checks the output path before any work, runs
//! [`sample_images`] with a progress bar and prints what was written.

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_train::sample_images::{
    sample_images, SampleEvent, SampleImagesConfig, SampleModelArgs, SampleOptions, SampleOutcome,
    SampleOutput, SampleOutputArgs,
};

use crate::progress::Progress;

/// Arguments of `cargo xtask sample`: which model, how the samples are drawn
/// ([`SampleOptions`]), where they go, and the device.
#[derive(Debug, Args)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: SampleModelArgs,
    #[command(flatten)]
    pub options: SampleOptions,
    #[command(flatten)]
    pub output: SampleOutputArgs,
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Runs `cargo xtask sample`.
pub fn run(args: &SampleArgs) -> Result<()> {
    let spec = DeviceSpec::parse(&args.device)?;
    // Before any sampling: an output that cannot be written is known now.
    if let Some(out) = &args.output.out {
        crate::check_output_file(out, "--out", "png")?;
    }
    if let Some(npz) = &args.output.npz {
        crate::check_output_file(npz, "--npz", "npz")?;
    }
    let cfg = SampleImagesConfig {
        model: args.model.source()?,
        output: args.output.output(args.model.run.as_deref()),
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
