//! Timing a DiT against the PyTorch reference: the training step, the inference forward and
//! one guided sampling step of the same network on the same machine (`cargo xtask bench`,
//! and the speed stages of `xtask gpu-check`).
//!
//! The configuration mirrors the PyTorch references (`../shared/bench/torch_dit_ref.py`,
//! `scripts/gpu/torch_dit.py`): a DiT of the given depth / width / heads / patch on
//! `[batch, 4, size, size]` latents, 1000 classes, learned sigma (8 output channels), loss
//! `mean((out[:, :4] − x)²)`, AdamW (lr 1e-4, no weight decay); median of `iters` timed
//! repetitions after one warm-up each. The batch is split into `concurrent` contiguous chunks
//! run at once, as training and sampling run it here. Timings are wall-clock and
//! machine-dependent: only the ratio between implementations measured together means anything.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use nag_core::guidance::Guidance;
use nag_models::dit::{DitConfig, ModelError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::guided::GuidedDit;
use crate::sampling::{DiffusionModel, TimePoint};
use crate::train::{on_own_graphs, sum_gradients};

/// Errors of the benchmarks.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A bad option.
    #[error("{0}")]
    Config(String),
    /// Building the benchmark's network.
    #[error("the benchmark's model (--depth/--hidden/--heads/--patch/--size): {0}")]
    Model(#[from] ModelError),
    /// The PyTorch reference could not run or printed no usable result.
    #[error("{0}")]
    Torch(String),
}

/// The benchmark's network, batch and repetitions (field names as the PyTorch references'
/// flags); also `cargo xtask bench`'s flags, with the DiT-S/2 of issue 22 as the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
pub struct BenchShape {
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
}

impl BenchShape {
    /// The network: 1000 classes (+ the null row), learned sigma, null-t, as the references.
    pub fn dit_config(&self) -> Result<DitConfig, BenchError> {
        if self.iters == 0 || self.batch == 0 {
            return Err(BenchError::Config(
                "--iters and --batch must be at least 1".into(),
            ));
        }
        let config = DitConfig::new(
            self.size,
            self.patch,
            4,
            self.hidden,
            self.depth,
            self.heads,
            1000,
        )
        .with_null_timestep(true);
        config.validate()?;
        Ok(config)
    }

    /// The shape as the references' command-line flags.
    pub fn torch_args(&self) -> Vec<String> {
        [
            ("--depth", self.depth),
            ("--hidden", self.hidden),
            ("--heads", self.heads),
            ("--patch", self.patch),
            ("--size", self.size),
            ("--batch", self.batch),
            ("--iters", self.iters),
        ]
        .into_iter()
        .flat_map(|(flag, v)| [flag.to_string(), v.to_string()])
        .collect()
    }
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

impl Timing {
    /// One CFG+NAG step over one CFG step (issue 22's `ratio_cfg_nag_vs_cfg`).
    pub fn cfg_nag_vs_cfg(&self) -> Option<f64> {
        Some(self.cfg_nag_step_ms? / self.cfg_step_ms?)
    }
}

/// Median of `iters` timed calls of `f`, after one untimed warm-up call.
fn median_ms(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// A contiguous part of the benchmark batch and its share of it.
#[derive(Clone)]
struct Chunk {
    x: TensorData,
    t: TensorData,
    y: TensorData,
    weight: f64,
}

/// Times the training step, the forward and a CFG and a CFG+NAG step of `shape`'s network on
/// `device`, the batch split into `concurrent` chunks run at once. Every timed call ends in a
/// host read, so asynchronous backends are measured whole.
pub fn time_dit<B: AutodiffBackend>(
    shape: &BenchShape,
    concurrent: usize,
    device: &B::Device,
) -> Result<Timing, BenchError> {
    let config = shape.dit_config()?;
    B::seed(device, 0);
    let mut model = config.init::<B>(device)?;
    let params = burn::module::Module::num_params(&model);
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let (n, size) = (shape.batch, shape.size);
    let numel = n * 4 * size * size;
    let values: Vec<f32> = (0..numel)
        .map(|i| ((i as f32) * 0.618_034).fract() * 2.0 - 1.0)
        .collect();
    let t_values: Vec<f32> = (0..n).map(|i| (i * 997 % 1000) as f32).collect();
    let y_values: Vec<i64> = (0..n).map(|i| (i * 37 % 1000) as i64).collect();
    let per = n.div_ceil(concurrent.clamp(1, n));
    let per_sample = numel / n;
    let chunks: Vec<Chunk> = (0..n)
        .step_by(per)
        .map(|start| {
            let len = per.min(n - start);
            Chunk {
                x: TensorData::new(
                    values[start * per_sample..(start + len) * per_sample].to_vec(),
                    [len, 4, size, size],
                ),
                t: TensorData::new(t_values[start..start + len].to_vec(), [len]),
                y: TensorData::new(y_values[start..start + len].to_vec(), [len]),
                weight: len as f64 / n as f64,
            }
        })
        .collect();

    // The loss is the batch mean: each chunk's mean weighted by its share of the batch.
    let mut train_step = || {
        let grads = on_own_graphs(&model, chunks.clone(), |local, c| {
            let x = Tensor::<B, 4>::from_data(c.x, device);
            let t = Tensor::<B, 1>::from_data(c.t, device);
            let y = Tensor::<B, 1, Int>::from_data(c.y, device);
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
    let train_step_ms = median_ms(shape.iters, &mut train_step);

    let inference = model.valid();
    let forward = || {
        std::thread::scope(|scope| {
            let handles: Vec<_> = chunks
                .iter()
                .map(|c| {
                    let model = inference.clone();
                    scope.spawn(move || {
                        let x = Tensor::<B::InnerBackend, 4>::from_data(c.x.clone(), device);
                        let t = Tensor::<B::InnerBackend, 1>::from_data(c.t.clone(), device);
                        let y = Tensor::<B::InnerBackend, 1, Int>::from_data(c.y.clone(), device);
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
    let forward_ms = median_ms(shape.iters, forward);

    // One guided step at τ ≈ 0.5 as the sampler runs it (`GuidedDit`, the batch split over
    // the same concurrent chunks).
    let x = Tensor::<B::InnerBackend, 4>::from_data(
        TensorData::new(values, [n, 4, size, size]),
        device,
    );
    let at = TimePoint {
        tau: 0.5,
        ddpm_index: Some(499),
    };
    let step_ms = |guidance: Guidance| -> Result<f64, BenchError> {
        let mut guided = GuidedDit::new(&inference, &y_values, guidance)?.with_threads(concurrent);
        Ok(median_ms(shape.iters, || {
            let out = guided.predict(x.clone(), at);
            let _ = out.pred.slice([0..1, 0..1, 0..1, 0..1]).into_data();
        }))
    };
    let cfg_step_ms = step_ms(Guidance::cfg(4.0))?;
    let cfg_nag_step_ms = step_ms(Guidance::cfg_nag(4.0, 1.0))?;
    let _ = <B::InnerBackend as Backend>::sync(device);
    Ok(Timing {
        train_step_ms,
        forward_ms,
        params,
        cfg_step_ms: Some(cfg_step_ms),
        cfg_nag_step_ms: Some(cfg_nag_step_ms),
    })
}

/// What `../shared/bench/torch_dit_ref.py` prints (the fields used).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TorchTiming {
    /// Median training step (ms).
    pub train_step_ms: f64,
    /// Median forward (ms).
    pub forward_ms: f64,
    /// Parameter count (must equal burn's).
    pub params: usize,
    /// The threads PyTorch ran with.
    pub torch_threads: usize,
}

/// Runs the PyTorch reference `script` with `python` on `shape` (and `extra` flags) and
/// parses the last line of its output that is a JSON object; a failure quotes the script's
/// stderr.
pub fn run_torch<T: DeserializeOwned>(
    python: &Path,
    script: &Path,
    shape: &BenchShape,
    extra: &[String],
) -> Result<T, BenchError> {
    if !script.is_file() {
        return Err(BenchError::Torch(format!(
            "the PyTorch reference {} does not exist; pass its path with --torch-script",
            script.display()
        )));
    }
    let out = Command::new(python)
        .arg(script)
        .args(shape.torch_args())
        .args(extra)
        .output()
        .map_err(|e| BenchError::Torch(format!("running {} (--torch): {e}", python.display())))?;
    if !out.status.success() {
        return Err(BenchError::Torch(format!(
            "the PyTorch reference failed ({}); is torch installed for {}? Its output:\n{}",
            out.status,
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| BenchError::Torch("the PyTorch reference printed no JSON line".into()))?;
    serde_json::from_str(line)
        .map_err(|e| BenchError::Torch(format!("the PyTorch reference's JSON line: {e}")))
}

/// `cargo xtask bench --json`: burn's timing, PyTorch's when measured, and the ratios.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The network, batch and repetitions.
    pub config: BenchShape,
    /// The device timed.
    pub device: String,
    /// burn's timing.
    pub burn: Timing,
    /// One CFG+NAG step / one CFG step, burn.
    pub ratio_cfg_nag_vs_cfg: Option<f64>,
    /// PyTorch's timing, with `--torch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torch: Option<Timing>,
    /// The threads PyTorch ran with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torch_threads: Option<usize>,
    /// burn / torch, training step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_train_step: Option<f64>,
    /// burn / torch, forward.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_forward: Option<f64>,
}

/// The table `xtask bench` prints: burn's times, PyTorch's and the ratios when measured,
/// and the guided-step ratio.
impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let row = |f: &mut std::fmt::Formatter<'_>, name: &str, t: &Timing| {
            writeln!(
                f,
                "{name:<14} {:>14.1} {:>12.1} {:>12}",
                t.train_step_ms, t.forward_ms, t.params
            )
        };
        let header = ("", "train step ms", "forward ms", "params");
        writeln!(
            f,
            "{:<14} {:>14} {:>12} {:>12}",
            header.0, header.1, header.2, header.3
        )?;
        row(f, "burn", &self.burn)?;
        match (
            &self.torch,
            self.torch_threads,
            self.ratio_train_step,
            self.ratio_forward,
        ) {
            (Some(t), Some(threads), Some(train), Some(forward)) => {
                row(f, &format!("torch ({threads} thr)"), t)?;
                write!(
                    f,
                    "{:<14} {train:>14.2} {forward:>12.2}   (burn / torch; < 1 is faster than \
                     PyTorch)",
                    "ratio"
                )?;
            }
            _ => write!(
                f,
                "(pass --torch PYTHON, a Python with torch, to time the PyTorch reference too)"
            )?,
        }
        if let (Some(cfg), Some(cfg_nag)) = (self.burn.cfg_step_ms, self.burn.cfg_nag_step_ms) {
            write!(
                f,
                "\nguided step: CFG {cfg:.1} ms, CFG+NAG {cfg_nag:.1} ms, ratio {:.2} (3 branches \
                 / 2)",
                cfg_nag / cfg
            )?;
        }
        Ok(())
    }
}

impl BenchReport {
    /// Joins burn's timing on `device` and PyTorch's (if measured).
    pub fn new(config: BenchShape, device: &str, burn: Timing, torch: Option<TorchTiming>) -> Self {
        let ratio = |b: f64, t: f64| b / t;
        Self {
            config,
            device: device.to_string(),
            ratio_cfg_nag_vs_cfg: burn.cfg_nag_vs_cfg(),
            ratio_train_step: torch
                .as_ref()
                .map(|t| ratio(burn.train_step_ms, t.train_step_ms)),
            ratio_forward: torch.as_ref().map(|t| ratio(burn.forward_ms, t.forward_ms)),
            torch_threads: torch.as_ref().map(|t| t.torch_threads),
            torch: torch.map(|t| Timing {
                train_step_ms: t.train_step_ms,
                forward_ms: t.forward_ms,
                params: t.params,
                cfg_step_ms: None,
                cfg_nag_step_ms: None,
            }),
            burn,
        }
    }
}
