//! `cargo xtask bench`: time a DiT training step and an inference forward on this build's
//! backend and, with `--torch PYTHON`, the same network in PyTorch on the same machine in the
//! same run (`../shared/bench/torch_dit_ref.py`), reported as ratios.
//!
//! The configuration mirrors the PyTorch reference: a DiT of the given depth / width / heads /
//! patch on `[batch, 4, size, size]` latents, 1000 classes, learned sigma (8 output channels),
//! loss `mean((out[:, :4] − x)²)`, AdamW (lr 1e-4, no weight decay); median of `--iters`
//! timed repetitions after one warm-up each. On a CPU the batch is split into one contiguous
//! chunk per core, run concurrently, as training and sampling run it here (burn-ndarray is
//! built without threads of its own). Timings are wall-clock and machine-dependent: only
//! the ratio between the two implementations measured together means anything.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use clap::Args;
use nag_backends::{dispatch_precision, BackendTask, DeviceSpec, Precision};
use nag_core::guidance::Guidance;
use nag_models::dit::DitConfig;
use nag_train::guided::GuidedDit;
use nag_train::sampling::{DiffusionModel, TimePoint};
use nag_train::train::{on_own_graphs, sum_gradients};
use serde::{Deserialize, Serialize};

/// Arguments of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Transformer blocks.
    #[arg(long, default_value_t = 12)]
    pub depth: usize,
    /// Token width.
    #[arg(long, default_value_t = 384)]
    pub hidden: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 6)]
    pub heads: usize,
    /// Patch size.
    #[arg(long, default_value_t = 2)]
    pub patch: usize,
    /// Latent side (4 channels).
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Batch size.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
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

/// What one implementation measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timing {
    /// Median milliseconds of one training step (forward, loss, backward, AdamW update).
    pub train_step_ms: f64,
    /// Median milliseconds of one inference forward.
    pub forward_ms: f64,
    /// Parameter count.
    pub params: usize,
    /// Median milliseconds of one guided sampling step (the network evaluations and their
    /// combination, no sampler arithmetic) with CFG (2 branches, s = 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cfg_step_ms: Option<f64>,
    /// The same with CFG+NAG (3 branches, s = 4, w = 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cfg_nag_step_ms: Option<f64>,
}

/// Median of `iters` timed calls of `f`, after one untimed warm-up call.
fn median_ms(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

struct Task<'a> {
    args: &'a BenchArgs,
    config: DitConfig,
    spec: DeviceSpec,
}

/// A contiguous part of the benchmark batch and its share of it.
#[derive(Clone)]
struct Chunk {
    x: TensorData,
    t: TensorData,
    y: TensorData,
    weight: f64,
}

impl BackendTask for Task<'_> {
    type Output = Result<Timing>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Timing> {
        let (a, config) = (self.args, self.config);
        B::seed(&device, 0);
        let mut model = config.init::<B>(&device).context("building the model")?;
        let params = burn::module::Module::num_params(&model);
        let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
        let n = a.batch;
        let numel = n * 4 * a.size * a.size;
        let values: Vec<f32> = (0..numel)
            .map(|i| ((i as f32) * 0.618_034).fract() * 2.0 - 1.0)
            .collect();
        let t_values: Vec<f32> = (0..n).map(|i| (i * 997 % 1000) as f32).collect();
        let y_values: Vec<i64> = (0..n).map(|i| (i * 37 % 1000) as i64).collect();
        // The batch in contiguous chunks, one per concurrent worker, as the trainer and the
        // sampler split it on this device (`DeviceSpec::concurrent_batches`).
        let per = n.div_ceil(self.spec.concurrent_batches().min(n));
        let per_sample = numel / n;
        let chunks: Vec<Chunk> = (0..n)
            .step_by(per)
            .map(|start| {
                let len = per.min(n - start);
                Chunk {
                    x: TensorData::new(
                        values[start * per_sample..(start + len) * per_sample].to_vec(),
                        [len, 4, a.size, a.size],
                    ),
                    t: TensorData::new(t_values[start..start + len].to_vec(), [len]),
                    y: TensorData::new(y_values[start..start + len].to_vec(), [len]),
                    weight: len as f64 / n as f64,
                }
            })
            .collect();

        // Every timed call ends in a host read, so asynchronous backends are measured whole.
        // The loss is the batch mean: each chunk's mean weighted by its share of the batch.
        let mut train_step = || {
            let grads = on_own_graphs(&model, chunks.clone(), |local, c| {
                let x = Tensor::<B, 4>::from_data(c.x, &device);
                let t = Tensor::<B, 1>::from_data(c.t, &device);
                let y = Tensor::<B, 1, Int>::from_data(c.y, &device);
                let out = local.forward(x.clone(), t, y, None, None);
                let loss = (out.narrow(1, 0, 4) - x)
                    .square()
                    .mean()
                    .mul_scalar(c.weight);
                GradientsParams::from_grads(loss.backward(), local)
            })
            .into_iter()
            .reduce(|a, b| sum_gradients(a, b, &model))
            .expect("at least one chunk");
            model = optim.step(1e-4, model.clone(), grads);
            let _ = model
                .t_embedder
                .mlp_0
                .weight
                .val()
                .slice([0..1, 0..1])
                .into_data();
        };
        let train_step_ms = median_ms(a.iters, &mut train_step);

        let inference = model.valid();
        let inner = device.clone();
        let forward = || {
            std::thread::scope(|scope| {
                let handles: Vec<_> = chunks
                    .iter()
                    .map(|c| {
                        let (model, inner) = (inference.clone(), &inner);
                        scope.spawn(move || {
                            let x = Tensor::<B::InnerBackend, 4>::from_data(c.x.clone(), inner);
                            let t = Tensor::<B::InnerBackend, 1>::from_data(c.t.clone(), inner);
                            let y =
                                Tensor::<B::InnerBackend, 1, Int>::from_data(c.y.clone(), inner);
                            let out = model.forward(x, t, y, None, None);
                            let _ = out.slice([0..1, 0..1, 0..1, 0..1]).into_data();
                        })
                    })
                    .collect();
                for h in handles {
                    h.join().expect("a benchmark thread panicked");
                }
            })
        };
        let forward_ms = median_ms(a.iters, forward);

        // One guided step at τ ≈ 0.5 as the sampler runs it (`GuidedDit`, the batch split
        // over the same concurrent chunks).
        let x = Tensor::<B::InnerBackend, 4>::from_data(
            TensorData::new(values.clone(), [n, 4, a.size, a.size]),
            &inner,
        );
        let at = TimePoint {
            tau: 0.5,
            ddpm_index: Some(499),
        };
        let step_ms = |guidance: Guidance| -> Result<f64> {
            let mut guided = GuidedDit::new(&inference, &y_values, guidance)?
                .with_threads(self.spec.concurrent_batches());
            Ok(median_ms(a.iters, || {
                let out = guided.predict(x.clone(), at);
                let _ = out.pred.slice([0..1, 0..1, 0..1, 0..1]).into_data();
            }))
        };
        let cfg_step_ms = step_ms(Guidance::cfg(4.0))?;
        let cfg_nag_step_ms = step_ms(Guidance::cfg_nag(4.0, 1.0))?;
        let _ = <B::InnerBackend as Backend>::sync(&inner);
        Ok(Timing {
            train_step_ms,
            forward_ms,
            params,
            cfg_step_ms: Some(cfg_step_ms),
            cfg_nag_step_ms: Some(cfg_nag_step_ms),
        })
    }
}

/// Times `a`'s training step and forward on `spec` at `precision`.
pub(crate) fn time_burn(a: &BenchArgs, spec: DeviceSpec, precision: Precision) -> Result<Timing> {
    // The PyTorch reference's network: 1000 classes (+ null row), learned sigma, null-t.
    let config = DitConfig::new(a.size, a.patch, 4, a.hidden, a.depth, a.heads, 1000)
        .with_null_timestep(true);
    config
        .validate()
        .context("the benchmark's model (--depth/--hidden/--heads/--patch/--size)")?;
    dispatch_precision(
        spec,
        precision,
        Task {
            args: a,
            config,
            spec,
        },
    )?
}

/// Runs the PyTorch reference with the same configuration and parses its JSON line.
fn torch_timing(a: &BenchArgs, python: &PathBuf) -> Result<(Timing, usize)> {
    if !a.torch_script.is_file() {
        bail!(
            "the PyTorch reference {} does not exist; pass its path with --torch-script",
            a.torch_script.display()
        );
    }
    let mut command = Command::new(python);
    command
        .arg(&a.torch_script)
        .args(["--depth", &a.depth.to_string()])
        .args(["--hidden", &a.hidden.to_string()])
        .args(["--heads", &a.heads.to_string()])
        .args(["--patch", &a.patch.to_string()])
        .args(["--size", &a.size.to_string()])
        .args(["--batch", &a.batch.to_string()])
        .args(["--iters", &a.iters.to_string()])
        .args(["--threads", &a.torch_threads.to_string()]);
    let line = json_line(&mut command, python)?;
    let v: serde_json::Value =
        serde_json::from_str(&line).context("the PyTorch reference's JSON line")?;
    let num = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("the PyTorch reference's JSON has no number '{k}'"))
    };
    Ok((
        Timing {
            train_step_ms: num("train_step_ms")?,
            forward_ms: num("forward_ms")?,
            params: num("params")? as usize,
            cfg_step_ms: None,
            cfg_nag_step_ms: None,
        },
        num("torch_threads")? as usize,
    ))
}

/// Runs a PyTorch reference script (`command`, with `python` as its program) and returns the
/// last line of its output that is a JSON object; a failure quotes the script's stderr.
pub(crate) fn json_line(command: &mut Command, python: &Path) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {} (--torch)", python.display()))?;
    if !out.status.success() {
        bail!(
            "the PyTorch reference failed ({}); is torch installed for {}? Its output:\n{}",
            out.status,
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .map(str::to_string)
        .context("the PyTorch reference printed no JSON line")
}

/// Runs `cargo xtask bench`.
pub fn run(a: &BenchArgs) -> Result<()> {
    if a.iters == 0 || a.batch == 0 {
        bail!("--iters and --batch must be at least 1");
    }
    let spec = DeviceSpec::parse(&a.device)?;
    let burn = time_burn(a, spec, Precision::F32)?;
    let torch = match &a.torch {
        Some(python) => Some(torch_timing(a, python)?),
        None => None,
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if a.json {
        let mut v = serde_json::json!({
            "config": {"depth": a.depth, "hidden": a.hidden, "heads": a.heads, "patch": a.patch,
                       "size": a.size, "batch": a.batch, "iters": a.iters},
            "device": a.device,
            "burn": burn,
            "ratio_cfg_nag_vs_cfg": burn.cfg_nag_step_ms.zip(burn.cfg_step_ms).map(|(a, b)| a / b),
        });
        if let Some((t, torch_threads)) = &torch {
            v["torch"] = serde_json::to_value(t)?;
            v["torch_threads"] = (*torch_threads).into();
            v["ratio_train_step"] = (burn.train_step_ms / t.train_step_ms).into();
            v["ratio_forward"] = (burn.forward_ms / t.forward_ms).into();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "DiT depth {} hidden {} heads {} patch {} on [{}, 4, {}, {}], median of {} ({} on {}, {} cores)",
        a.depth, a.hidden, a.heads, a.patch, a.batch, a.size, a.size, a.iters, a.device,
        std::env::consts::ARCH, threads
    );
    println!(
        "{:<14} {:>14} {:>12} {:>12}",
        "", "train step ms", "forward ms", "params"
    );
    println!(
        "{:<14} {:>14.1} {:>12.1} {:>12}",
        "burn", burn.train_step_ms, burn.forward_ms, burn.params
    );
    if let Some((t, torch_threads)) = &torch {
        println!(
            "{:<14} {:>14.1} {:>12.1} {:>12}",
            format!("torch ({torch_threads} thr)"),
            t.train_step_ms,
            t.forward_ms,
            t.params
        );
        println!(
            "{:<14} {:>14.2} {:>12.2}   (burn / torch; < 1 is faster than PyTorch)",
            "ratio",
            burn.train_step_ms / t.train_step_ms,
            burn.forward_ms / t.forward_ms
        );
    } else {
        println!("(pass --torch PYTHON, a Python with torch, to time the PyTorch reference too)");
    }
    if let (Some(cfg), Some(cfg_nag)) = (burn.cfg_step_ms, burn.cfg_nag_step_ms) {
        println!(
            "guided step: CFG {cfg:.1} ms, CFG+NAG {cfg_nag:.1} ms, ratio {:.2} (3 branches / 2)",
            cfg_nag / cfg
        );
    }
    Ok(())
}
