//! `xtask gpu-check`: the GPU check of issue 23, one stage per call so that
//! `scripts/gpu-check.sh` can bound each with a timeout and keep what finished.
//!
//! Stages (each writes `OUT/<stage>.json`; `report` joins them):
//! - `parity`: the DiT forward (null label and null-t included), one training step's loss and
//!   gradients, and a short CFG+NAG sampling run on `--device` against the CPU backend, same
//!   random weights ([`nag_train::device_check::parity`]);
//! - `speed`: training step and forward of the bench's DiT at each `--precision`;
//! - `torch`: the same in PyTorch (`scripts/gpu/torch_dit.py`) on the same machine;
//! - `sample`: images/s of a `--sample-steps` DDPM run with NAG and with CFG+NAG;
//! - `report`: `OUT/report.json` and the table `OUT/README.md`.
//!
//! `--preset xl` is the paper's DiT-XL/2 on 4×32×32 latents (batch 32 for speed); `--preset
//! tiny` is the CPU dry pass's.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use nag_backends::{dispatch, BackendTask, DeviceSpec, Precision};
use nag_models::dit::DitConfig;
use nag_train::device_check::{
    parity, sampling_rate, Parity, ParityOptions, SamplingRate, SamplingRateOptions,
};
use nag_train::train::write_atomic;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::bench::{json_line, time_burn, BenchArgs, Timing};

/// One stage of the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
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

/// Model sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// DiT-XL/2 on 4×32×32 latents, 1000 classes (the paper's network).
    Xl,
    /// The CPU dry pass: the `tiny` DiT on 4×8×8, 10 classes.
    Tiny,
}

/// Arguments of `xtask gpu-check`.
#[derive(Debug, Args)]
pub struct GpuCheckArgs {
    /// Which stage to run.
    #[arg(long, value_enum)]
    pub stage: Stage,
    /// Device to check: cuda:N (or cpu for the dry pass).
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
    /// Model sizes: xl (DiT-XL/2, the paper's) or tiny (the dry pass).
    #[arg(long, value_enum, default_value_t = Preset::Xl)]
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
    pub precision: Vec<String>,
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

impl GpuCheckArgs {
    fn speed_config(&self) -> (usize, usize, usize, usize, usize) {
        // (depth, hidden, heads, patch, size)
        match self.preset {
            Preset::Xl => (28, 1152, 16, 2, 32),
            Preset::Tiny => (4, 128, 4, 2, 8),
        }
    }

    fn classes(&self) -> usize {
        match self.preset {
            Preset::Xl => 1000,
            Preset::Tiny => 10,
        }
    }

    /// A named preset on this preset's data, with a null class row and a null-t vector.
    fn network(&self, name: &str) -> Result<DitConfig> {
        let size = self.speed_config().4;
        Ok(DitConfig::preset(name, size, 4, self.classes())?
            .with_class_dropout_prob(0.1)
            .with_null_timestep(true))
    }

    fn bench_args(&self) -> BenchArgs {
        let (depth, hidden, heads, patch, size) = self.speed_config();
        BenchArgs {
            depth,
            hidden,
            heads,
            patch,
            size,
            batch: self.batch.unwrap_or(match self.preset {
                Preset::Xl => 32,
                Preset::Tiny => 2,
            }),
            iters: self.iters,
            torch: None,
            torch_script: self.torch_script.clone(),
            torch_threads: 0,
            json: false,
            device: self.device.clone(),
        }
    }

    fn sample_steps(&self) -> usize {
        self.sample_steps.unwrap_or(match self.preset {
            Preset::Xl => 250,
            Preset::Tiny => 5,
        })
    }
}

/// The speed stage's result for one precision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpeedRow {
    /// f32 or bf16.
    pub precision: Precision,
    /// Median training step and forward, parameter count.
    #[serde(flatten)]
    pub timing: Timing,
}

/// `OUT/speed.json` and `OUT/torch.json`: the network, batch and repetitions, and one row
/// per precision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpeedStage<R> {
    /// depth, hidden, heads, patch, size, batch, iters.
    pub model: ModelShape,
    /// One row per precision.
    pub rows: Vec<R>,
}

/// The speed stages' network and batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelShape {
    /// Transformer blocks.
    pub depth: usize,
    /// Token width.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Patch size.
    pub patch: usize,
    /// Latent side (4 channels).
    pub size: usize,
    /// Batch.
    pub batch: usize,
    /// Timed repetitions (median reported).
    pub iters: usize,
}

impl ModelShape {
    fn of(b: &BenchArgs) -> Self {
        Self {
            depth: b.depth,
            hidden: b.hidden,
            heads: b.heads,
            patch: b.patch,
            size: b.size,
            batch: b.batch,
            iters: b.iters,
        }
    }
}

/// `OUT/sample.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleStage {
    /// DDPM steps.
    pub steps: usize,
    /// Images per run.
    pub batch: usize,
    /// The NAG run and the CFG+NAG run.
    pub runs: Vec<SamplingRate>,
}

/// What `scripts/gpu/torch_dit.py` prints (the fields used here).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TorchRow {
    /// f32, bf16.
    pub dtype: String,
    /// Median training step (ms).
    pub train_step_ms: f64,
    /// Median forward (ms).
    pub forward_ms: f64,
    /// Parameter count (must equal burn's).
    pub params: usize,
    /// `torch.cuda.max_memory_allocated` over the training steps (null on a CPU).
    pub peak_memory_bytes: Option<u64>,
    /// The GPU's name as PyTorch reports it.
    pub gpu_name: Option<String>,
    /// torch's version.
    pub torch_version: String,
    /// Whether matmuls could use TF32.
    pub tf32: bool,
}

/// `OUT/report.json`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The GPU's name (or "cpu" for the dry pass).
    pub device: String,
    /// The device string checked.
    pub backend_device: String,
    /// The commit the binaries were built from.
    pub commit: String,
    /// xl or tiny.
    pub preset: Preset,
    /// The speed stages' network and batch (null when neither speed stage ran).
    pub model: Option<ModelShape>,
    /// `parity.max_rel`: forward, loss and gradient norm against the CPU backend, f32.
    pub parity_max_rel: Option<f64>,
    /// The parity stage in full.
    pub parity: Option<Parity>,
    /// burn / torch, training step, f32.
    pub ratio_train_step: Option<f64>,
    /// burn / torch, forward, f32.
    pub ratio_forward: Option<f64>,
    /// burn / torch, training step, bf16 (whole network in bf16 on both sides).
    pub ratio_train_step_bf16: Option<f64>,
    /// burn / torch, forward, bf16.
    pub ratio_forward_bf16: Option<f64>,
    /// burn, f32: one guided step with CFG+NAG (3 branches) / one with CFG (2 branches).
    pub ratio_cfg_nag_vs_cfg: Option<f64>,
    /// Peak GPU memory of the burn speed stage (nvidia-smi, above idle).
    pub peak_memory_bytes: Option<u64>,
    /// `torch.cuda.max_memory_allocated` of PyTorch's f32 training step.
    pub torch_peak_memory_bytes: Option<u64>,
    /// Images/s of the sample stage: `{"nag": …, "cfg+nag": …}`.
    pub sample_images_per_s: Option<serde_json::Map<String, serde_json::Value>>,
    /// burn's speed rows.
    pub burn: Vec<SpeedRow>,
    /// PyTorch's speed rows.
    pub torch: Vec<TorchRow>,
    /// The sample stage: steps, images and the two runs.
    pub sampling: Option<SampleStage>,
    /// Stages without a result file (timed out, failed or not run).
    pub missing: Vec<String>,
    /// What bf16 means here.
    pub precision_note: String,
}

fn stage_file(out: &Path, name: &str) -> PathBuf {
    out.join(format!("{name}.json"))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)?;
    write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}

fn read_stage<T: DeserializeOwned>(out: &Path, name: &str) -> Result<Option<T>> {
    let path = stage_file(out, name);
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| {
        format!("{} is not a {name} result", path.display())
    })?))
}

struct ParityTask<'a>(&'a ParityOptions);

impl BackendTask for ParityTask<'_> {
    type Output = Result<Parity>;
    fn run<B: burn::tensor::backend::AutodiffBackend>(self, device: B::Device) -> Result<Parity> {
        let reference = Default::default();
        Ok(parity::<nag_backends::Autodiff<nag_backends::NdArray>, B>(
            &reference,
            &device,
            self.0,
            |stage| eprintln!("parity: {stage}"),
        )?)
    }
}

struct SampleTask<'a>(&'a SamplingRateOptions, &'a Path);

impl BackendTask for SampleTask<'_> {
    type Output = Result<Vec<SamplingRate>>;
    fn run<B: burn::tensor::backend::AutodiffBackend>(
        self,
        device: B::Device,
    ) -> Result<Vec<SamplingRate>> {
        let (options, out) = (self.0, self.1);
        let mut written = Ok(());
        let runs = sampling_rate::<B::InnerBackend>(
            &device,
            options,
            |stage| eprintln!("sample: {stage}"),
            |runs| {
                // Kept after each run: a timeout in the CFG+NAG run keeps the NAG one.
                let stage = SampleStage {
                    steps: options.steps,
                    batch: options.batch,
                    runs: runs.to_vec(),
                };
                written = written.clone().and(
                    write_json(&stage_file(out, "sample"), &stage).map_err(|e| format!("{e:#}")),
                );
            },
        )?;
        written.map_err(anyhow::Error::msg)?;
        Ok(runs)
    }
}

fn torch_row(a: &GpuCheckArgs, bench: &BenchArgs, dtype: Precision) -> Result<TorchRow> {
    if !a.torch_script.is_file() {
        bail!(
            "the PyTorch reference {} does not exist; pass its path with --torch-script",
            a.torch_script.display()
        );
    }
    let device = if a.device.starts_with("cuda") {
        "cuda"
    } else {
        "cpu"
    };
    let mut command = Command::new(&a.torch);
    command
        .arg(&a.torch_script)
        .args(["--depth", &bench.depth.to_string()])
        .args(["--hidden", &bench.hidden.to_string()])
        .args(["--heads", &bench.heads.to_string()])
        .args(["--patch", &bench.patch.to_string()])
        .args(["--size", &bench.size.to_string()])
        .args(["--batch", &bench.batch.to_string()])
        .args(["--iters", &bench.iters.to_string()])
        .args(["--device", device, "--dtype", &dtype.to_string()]);
    let line = json_line(&mut command, &a.torch)?;
    serde_json::from_str(&line).context("the PyTorch reference's JSON line")
}

/// Runs `xtask gpu-check`.
pub fn run(a: &GpuCheckArgs) -> Result<()> {
    let spec = DeviceSpec::parse(&a.device)?;
    let precisions = a
        .precision
        .iter()
        .map(|p| p.parse::<Precision>())
        .collect::<Result<Vec<_>, _>>()?;
    if a.iters == 0 || a.sample_batch == 0 || a.sample_steps() == 0 || a.batch == Some(0) {
        bail!("--iters, --batch, --sample-steps and --sample-batch must be at least 1");
    }
    if a.stage != Stage::Report {
        std::fs::create_dir_all(&a.out)
            .with_context(|| format!("creating --out {}", a.out.display()))?;
    }
    match a.stage {
        Stage::Parity => {
            let (config, sample_config, forward_batch) = match a.preset {
                Preset::Xl => (a.network("DiT-XL/2")?, a.network("DiT-S/2")?, 4),
                Preset::Tiny => (a.network("tiny")?, a.network("tiny")?, 4),
            };
            let options = ParityOptions {
                config,
                forward_batch,
                train_batch: 2,
                sample_config,
                sample_steps: 10,
                sample_batch: 2,
                seed: 0,
            };
            let p = dispatch(spec, ParityTask(&options))??;
            println!(
                "parity ({} vs cpu): forward max rel {:.2e}, loss {:.2e}, gradient norm {:.2e}, \
                 all gradients rel L2 {:.2e}, 10-step CFG+NAG samples max rel {:.2e}",
                a.device,
                p.forward.max_rel,
                p.loss.max_rel,
                p.grad_norm.max_rel,
                p.gradients.rel_l2,
                p.sample.max_rel
            );
            write_json(&stage_file(&a.out, "parity"), &p)
        }
        Stage::Speed => {
            let bench = a.bench_args();
            let mut stage = SpeedStage {
                model: ModelShape::of(&bench),
                rows: Vec::new(),
            };
            for &precision in &precisions {
                let timing = time_burn(&bench, spec, precision)?;
                println!(
                    "burn {precision}: train step {:.1} ms, forward {:.1} ms (batch {})",
                    timing.train_step_ms, timing.forward_ms, bench.batch
                );
                stage.rows.push(SpeedRow { precision, timing });
                // Written after each precision: a timeout in the next keeps this one.
                write_json(&stage_file(&a.out, "speed"), &stage)?;
            }
            Ok(())
        }
        Stage::Torch => {
            let bench = a.bench_args();
            let mut stage = SpeedStage {
                model: ModelShape::of(&bench),
                rows: Vec::new(),
            };
            for &precision in &precisions {
                let row = torch_row(a, &bench, precision)?;
                println!(
                    "torch {precision}: train step {:.1} ms, forward {:.1} ms",
                    row.train_step_ms, row.forward_ms
                );
                stage.rows.push(row);
                write_json(&stage_file(&a.out, "torch"), &stage)?;
            }
            Ok(())
        }
        Stage::Sample => {
            let options = SamplingRateOptions {
                config: match a.preset {
                    Preset::Xl => a.network("DiT-XL/2")?,
                    Preset::Tiny => a.network("tiny")?,
                },
                steps: a.sample_steps(),
                batch: a.sample_batch,
                nag: 1.0,
                cfg: 1.5,
                seed: 0,
            };
            let rates = dispatch(spec, SampleTask(&options, &a.out))??;
            for r in &rates {
                println!(
                    "sample {}: {} images × {} steps in {:.1} s = {:.3} images/s",
                    r.guidance, options.batch, options.steps, r.seconds, r.images_per_s
                );
            }
            Ok(())
        }
        Stage::Report => report(a),
    }
}

fn report(a: &GpuCheckArgs) -> Result<()> {
    if !a.out.is_dir() {
        bail!(
            "--out {} does not exist: run the other stages first",
            a.out.display()
        );
    }
    let mut missing = Vec::new();
    let mut stage = |name: &str| {
        if !stage_file(&a.out, name).is_file() {
            missing.push(name.to_string());
        }
    };
    for name in ["parity", "speed", "torch", "sample"] {
        stage(name);
    }
    let parity: Option<Parity> = read_stage(&a.out, "parity")?;
    let speed: Option<SpeedStage<SpeedRow>> = read_stage(&a.out, "speed")?;
    let torch: Option<SpeedStage<TorchRow>> = read_stage(&a.out, "torch")?;
    let sampling: Option<SampleStage> = read_stage(&a.out, "sample")?;
    if let (Some(b), Some(t)) = (&speed, &torch) {
        if b.model != t.model {
            bail!(
                "{} and {} measured different networks or batches ({:?} vs {:?}): run both \
                 stages with the same options",
                stage_file(&a.out, "speed").display(),
                stage_file(&a.out, "torch").display(),
                b.model,
                t.model
            );
        }
    }
    let model = speed
        .as_ref()
        .map(|s| s.model)
        .or(torch.as_ref().map(|t| t.model));
    let burn = speed.map(|s| s.rows).unwrap_or_default();
    let torch = torch.map(|s| s.rows).unwrap_or_default();
    // burn / torch at one precision: (training step, forward).
    let ratios = |p: Precision| -> Option<(f64, f64)> {
        let b = burn.iter().find(|r| r.precision == p)?;
        let t = torch.iter().find(|r| r.dtype == p.to_string())?;
        Some((
            b.timing.train_step_ms / t.train_step_ms,
            b.timing.forward_ms / t.forward_ms,
        ))
    };
    let (f32_ratios, bf16_ratios) = (ratios(Precision::F32), ratios(Precision::Bf16));
    let device = a
        .device_name
        .clone()
        .or_else(|| torch.iter().find_map(|t| t.gpu_name.clone()))
        .unwrap_or_else(|| a.device.clone());
    let rates = sampling.as_ref().map(|s| {
        s.runs
            .iter()
            .map(|r| (r.guidance.clone(), r.images_per_s.into()))
            .collect()
    });
    let report = Report {
        device,
        backend_device: a.device.clone(),
        commit: a.commit.clone().unwrap_or_else(|| "unknown".into()),
        preset: a.preset,
        model,
        parity_max_rel: parity.as_ref().map(|p| p.max_rel),
        parity,
        ratio_train_step: f32_ratios.map(|r| r.0),
        ratio_forward: f32_ratios.map(|r| r.1),
        ratio_train_step_bf16: bf16_ratios.map(|r| r.0),
        ratio_forward_bf16: bf16_ratios.map(|r| r.1),
        ratio_cfg_nag_vs_cfg: burn
            .iter()
            .find(|r| r.precision == Precision::F32)
            .and_then(|r| Some(r.timing.cfg_nag_step_ms? / r.timing.cfg_step_ms?)),
        peak_memory_bytes: a.peak_memory_bytes,
        torch_peak_memory_bytes: torch
            .iter()
            .find(|t| t.dtype == "f32")
            .and_then(|t| t.peak_memory_bytes),
        sample_images_per_s: rates,
        burn,
        torch,
        sampling,
        missing,
        precision_note: "burn 0.21 has no autocast: bf16 rows run the whole network (weights, \
                         activations, AdamW state) in bf16, in burn and in PyTorch alike"
            .into(),
    };
    write_json(&a.out.join("report.json"), &report)?;
    let md = markdown(&report);
    write_atomic(&a.out.join("README.md"), md.as_bytes())
        .with_context(|| format!("writing {}", a.out.join("README.md").display()))?;
    print!("{md}");
    Ok(())
}

/// The report as a short Markdown page.
fn markdown(r: &Report) -> String {
    let num = |v: Option<f64>, digits: usize| match v {
        Some(x) => format!("{x:.digits$}"),
        None => "—".into(),
    };
    let sci = |v: Option<f64>| match v {
        Some(x) => format!("{x:.1e}"),
        None => "—".into(),
    };
    let mut s = String::new();
    let _ = writeln!(s, "# GPU check: {} ({})\n", r.device, r.backend_device);
    let _ = write!(
        s,
        "Written by `scripts/gpu-check.sh` (`xtask gpu-check --stage report`) from commit `{}`; \
         the raw numbers are in `report.json`.",
        r.commit
    );
    if let Some(m) = &r.model {
        let _ = write!(
            s,
            " Speed: DiT depth {} hidden {} heads {} patch {} on 4×{}×{} latents, batch {}, \
             median of {}.",
            m.depth, m.hidden, m.heads, m.patch, m.size, m.size, m.batch, m.iters
        );
    }
    let _ = writeln!(s, "\n");
    let _ = writeln!(s, "| measure | value |\n|---|---|");
    let p = r.parity.as_ref();
    let _ = writeln!(
        s,
        "| parity vs CPU, f32: forward / loss / gradient norm (max rel) | {} / {} / {} |",
        sci(p.map(|p| p.forward.max_rel)),
        sci(p.map(|p| p.loss.max_rel)),
        sci(p.map(|p| p.grad_norm.max_rel))
    );
    let _ = writeln!(
        s,
        "| parity: all gradients (rel L2) / 10-step CFG+NAG samples (max rel) | {} / {} |",
        sci(p.map(|p| p.gradients.rel_l2)),
        sci(p.map(|p| p.sample.max_rel))
    );
    for row in &r.burn {
        let t = r
            .torch
            .iter()
            .find(|t| t.dtype == row.precision.to_string());
        let _ = writeln!(
            s,
            "| {} training step: burn / torch ms (ratio) | {:.1} / {} ({}) |",
            row.precision,
            row.timing.train_step_ms,
            num(t.map(|t| t.train_step_ms), 1),
            num(t.map(|t| row.timing.train_step_ms / t.train_step_ms), 2)
        );
        let _ = writeln!(
            s,
            "| {} forward: burn / torch ms (ratio) | {:.1} / {} ({}) |",
            row.precision,
            row.timing.forward_ms,
            num(t.map(|t| t.forward_ms), 1),
            num(t.map(|t| row.timing.forward_ms / t.forward_ms), 2)
        );
    }
    let _ = writeln!(
        s,
        "| guided step, f32: CFG+NAG (3 branches) / CFG (2 branches) | {} |",
        num(r.ratio_cfg_nag_vs_cfg, 2)
    );
    let gib = |b: Option<u64>| num(b.map(|b| b as f64 / (1u64 << 30) as f64), 2);
    let _ = writeln!(
        s,
        "| peak GPU memory, GiB: burn speed stage (nvidia-smi) / torch f32 step (allocator) | {} / {} |",
        gib(r.peak_memory_bytes),
        gib(r.torch_peak_memory_bytes)
    );
    if let Some(st) = &r.sampling {
        for x in &st.runs {
            let _ = writeln!(
                s,
                "| {}-step DDPM, {} ({} branches), {} images: images/s | {:.3} |",
                st.steps, x.guidance, x.branches, st.batch, x.images_per_s
            );
        }
    }
    if !r.missing.is_empty() {
        let _ = writeln!(
            s,
            "\nStages without a result (timed out, failed or not run; see their logs): {}.",
            r.missing.join(", ")
        );
    }
    let _ = writeln!(s, "\n{}.", r.precision_note);
    s
}
