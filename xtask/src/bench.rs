//! `cargo xtask bench`: time a DiT training step, an inference forward and guided steps on
//! this build's backend and, with `--torch PYTHON`, the same network in PyTorch on the same
//! machine in the same run (`../shared/bench/torch_dit_ref.py`), reported as ratios. The
//! measurement is `nag_train::bench`; on a CPU the batch is split into one contiguous chunk
//! per core, run concurrently, as training and sampling run it.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use nag_backends::{dispatch_precision, BackendTask, DeviceSpec, Precision};
use nag_train::bench::{
    run_torch, time_dit, BenchError, BenchReport, BenchShape, Timing, TorchTiming,
};

/// Arguments of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub shape: BenchShape,
    /// Python interpreter with torch installed: also time the PyTorch reference and print
    /// the ratios.
    #[arg(long)]
    pub torch: Option<PathBuf>,
    /// The PyTorch reference script.
    #[arg(long, default_value = "../shared/bench/torch_dit_ref.py")]
    pub torch_script: PathBuf,
    /// PyTorch threads (0 = its default).
    #[arg(long, default_value_t = 0)]
    pub torch_threads: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

struct Task<'a>(&'a BenchShape, DeviceSpec);

impl BackendTask for Task<'_> {
    type Output = Result<Timing, BenchError>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        time_dit::<B>(self.0, self.1.concurrent_batches(), &device)
    }
}

/// Times `shape`'s training step, forward and guided steps on `spec` at `precision`.
pub(crate) fn time_burn(
    shape: &BenchShape,
    spec: DeviceSpec,
    precision: Precision,
) -> Result<Timing> {
    shape.dit_config()?;
    Ok(dispatch_precision(spec, precision, Task(shape, spec))??)
}

/// Runs `cargo xtask bench`.
pub fn run(a: &BenchArgs) -> Result<()> {
    let shape = a.shape;
    let spec = DeviceSpec::parse(&a.device)?;
    let burn = time_burn(&shape, spec, Precision::F32)?;
    let torch: Option<TorchTiming> = match &a.torch {
        Some(python) => {
            let threads = ["--threads".to_string(), a.torch_threads.to_string()];
            Some(run_torch(python, &a.torch_script, &shape, &threads)?)
        }
        None => None,
    };
    let report = BenchReport::new(shape, &a.device, burn, torch);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "DiT depth {} hidden {} heads {} patch {} on [{}, 4, {}, {}], median of {} ({} on {}, {} cores)",
        shape.depth, shape.hidden, shape.heads, shape.patch, shape.batch, shape.size, shape.size,
        shape.iters, a.device,
        std::env::consts::ARCH, threads
    );
    println!("{report}");
    Ok(())
}
