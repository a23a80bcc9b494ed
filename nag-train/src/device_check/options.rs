//! The options of `xtask gpu-check` (one stage per call), and the stage runs they describe.

use std::path::PathBuf;

use nag_backends::Precision;

use super::{DeviceCheckError, ParityOptions, Preset, SamplingRateOptions};

/// One stage of the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// `--device` against the CPU backend: forward, training step, short sampling run.
    Parity,
    /// Training step and forward time at each `--precision`.
    Speed,
    /// The same network timed in PyTorch (`--torch`).
    Torch,
    /// Images/s of guided DDPM sampling.
    Sample,
    /// Join the stage results into report.json and README.md.
    Report,
}

/// Arguments of `xtask gpu-check`.
#[derive(Debug, Clone, clap::Args)]
pub struct GpuCheckOptions {
    /// Which stage to run.
    #[arg(long, value_enum)]
    pub stage: Stage,
    /// Device to check: cuda:N (or cpu for the dry pass).
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
    /// Model sizes: xl (DiT-XL/2, the paper's) or tiny (the dry pass).
    #[arg(long, default_value_t = Preset::Xl)]
    pub preset: Preset,
    /// Folder of the stage results and the report.
    #[arg(long, default_value = "docs/gpu")]
    pub out: PathBuf,
    /// Batch of the speed stages (default: 32 for xl, 2 for tiny).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Timed repetitions of the speed stages (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Precisions of the speed stages, comma-separated: f32, bf16 (bf16: CUDA only).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    pub precision: Vec<Precision>,
    /// DDPM steps of the sample stage (default: 250 for xl, 5 for tiny).
    #[arg(long)]
    pub sample_steps: Option<usize>,
    /// Images per sampling run.
    #[arg(long, default_value_t = 8)]
    pub sample_batch: usize,
    /// Python with torch, for the torch stage.
    #[arg(long, default_value = "python3")]
    pub torch: PathBuf,
    /// The PyTorch reference script.
    #[arg(long, default_value = "scripts/gpu/torch_dit.py")]
    pub torch_script: PathBuf,
    /// Report: the GPU's name (the script reads it from nvidia-smi).
    #[arg(long)]
    pub device_name: Option<String>,
    /// Report: the commit the binaries were built from.
    #[arg(long)]
    pub commit: Option<String>,
    /// Report: peak GPU memory in use during the burn speed stage, in bytes, above the idle
    /// reading (the script samples nvidia-smi).
    #[arg(long)]
    pub peak_memory_bytes: Option<u64>,
}

impl GpuCheckOptions {
    /// Refuses zero counts, naming the flags.
    pub fn check(&self) -> Result<(), DeviceCheckError> {
        if self.iters == 0
            || self.sample_batch == 0
            || self.sample_steps() == 0
            || self.batch == Some(0)
        {
            return Err(DeviceCheckError::Config(
                "--iters, --batch, --sample-steps and --sample-batch must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// `--sample-steps`, or the preset's.
    pub fn sample_steps(&self) -> usize {
        self.sample_steps.unwrap_or(self.preset.sample_steps())
    }

    /// The parity stage: the preset's networks, 4 samples forward, 2 trained, a 10-step
    /// guided run of 2, seed 0.
    pub fn parity(&self) -> Result<ParityOptions, DeviceCheckError> {
        let (config, sample_config) = self.preset.parity_networks()?;
        Ok(ParityOptions {
            config,
            forward_batch: 4,
            train_batch: 2,
            sample_config,
            sample_steps: 10,
            sample_batch: 2,
            seed: 0,
        })
    }

    /// The sample stage: NAG w = 1, CFG s = 1.5, seed 0.
    pub fn sampling(&self) -> Result<SamplingRateOptions, DeviceCheckError> {
        Ok(SamplingRateOptions {
            config: self.preset.sample_network()?,
            steps: self.sample_steps(),
            batch: self.sample_batch,
            nag: 1.0,
            cfg: 1.5,
            seed: 0,
        })
    }
}
