//! The device check's result files (`OUT/{parity,speed,torch,sample}.json`, one per stage,
//! written as each finishes) and the report joined from them (`report.json` and a short
//! `README.md`), with the ratios burn / PyTorch.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use nag_backends::Precision;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{DeviceCheckError, Parity, Preset, SamplingRate};
use crate::bench::{BenchShape, Timing};

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
    pub model: BenchShape,
    /// One row per precision.
    pub rows: Vec<R>,
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
    pub model: Option<BenchShape>,
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
    /// Images/s of the sample stage, by guidance (`nag`, `cfg+nag`).
    pub sample_images_per_s: Option<std::collections::BTreeMap<String, f64>>,
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

/// What the report says about the run that the stage files do not.
#[derive(Debug, Clone)]
pub struct ReportInputs {
    /// The device string checked.
    pub device: String,
    /// The GPU's name (else PyTorch's name for it, else `device`).
    pub device_name: Option<String>,
    /// The commit the binaries were built from.
    pub commit: Option<String>,
    /// xl or tiny.
    pub preset: Preset,
    /// Peak GPU memory of the burn speed stage, above idle.
    pub peak_memory_bytes: Option<u64>,
}

/// `OUT/NAME.json`.
pub fn stage_file(out: &Path, name: &str) -> PathBuf {
    out.join(format!("{name}.json"))
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> DeviceCheckError {
    DeviceCheckError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_stage(path: &Path, value: &impl Serialize) -> Result<(), DeviceCheckError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| file_error(path, e))?;
    nag_models::checkpoint::write_atomic(path, |w| std::io::Write::write_all(w, &bytes))
        .map_err(|e| file_error(path, e))
}

/// Reads `OUT/NAME.json` if the stage wrote it.
pub fn read_stage<T: DeserializeOwned>(
    out: &Path,
    name: &str,
) -> Result<Option<T>, DeviceCheckError> {
    let path = stage_file(out, name);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| file_error(&path, format!("not a {name} result: {e}")))
}

impl Report {
    /// Joins the stage files in `out` into the report (a missing stage is listed, not an
    /// error; speed and torch stages of different networks are).
    pub fn assemble(out: &Path, inputs: ReportInputs) -> Result<Self, DeviceCheckError> {
        if !out.is_dir() {
            return Err(DeviceCheckError::Config(format!(
                "--out {} does not exist: run the other stages first",
                out.display()
            )));
        }
        let missing = ["parity", "speed", "torch", "sample"]
            .into_iter()
            .filter(|name| !stage_file(out, name).is_file())
            .map(str::to_string)
            .collect();
        let parity: Option<Parity> = read_stage(out, "parity")?;
        let speed: Option<SpeedStage<SpeedRow>> = read_stage(out, "speed")?;
        let torch: Option<SpeedStage<TorchRow>> = read_stage(out, "torch")?;
        let sampling: Option<SampleStage> = read_stage(out, "sample")?;
        if let (Some(b), Some(t)) = (&speed, &torch) {
            if b.model != t.model {
                return Err(DeviceCheckError::Config(format!(
                    "{} and {} measured different networks or batches ({:?} vs {:?}): run \
                     both stages with the same options",
                    stage_file(out, "speed").display(),
                    stage_file(out, "torch").display(),
                    b.model,
                    t.model
                )));
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
        let device = inputs
            .device_name
            .clone()
            .or_else(|| torch.iter().find_map(|t| t.gpu_name.clone()))
            .unwrap_or_else(|| inputs.device.clone());
        let rates = sampling.as_ref().map(|s| {
            s.runs
                .iter()
                .map(|r| (r.guidance.clone(), r.images_per_s))
                .collect()
        });
        Ok(Report {
            device,
            backend_device: inputs.device,
            commit: inputs.commit.unwrap_or_else(|| "unknown".into()),
            preset: inputs.preset,
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
                .and_then(|r| r.timing.cfg_nag_vs_cfg()),
            peak_memory_bytes: inputs.peak_memory_bytes,
            torch_peak_memory_bytes: torch
                .iter()
                .find(|t| t.dtype == "f32")
                .and_then(|t| t.peak_memory_bytes),
            sample_images_per_s: rates,
            burn,
            torch,
            sampling,
            missing,
            precision_note: "burn 0.21 has no autocast: bf16 rows run the whole network \
                             (weights, activations, AdamW state) in bf16, in burn and in \
                             PyTorch alike"
                .into(),
        })
    }

    /// Writes `OUT/report.json` and `OUT/README.md` (the [`Report::markdown`] page).
    pub fn write(&self, out: &Path) -> Result<(), DeviceCheckError> {
        write_stage(&out.join("report.json"), self)?;
        let path = out.join("README.md");
        let md = self.markdown();
        nag_models::checkpoint::write_atomic(&path, |w| std::io::Write::write_all(w, md.as_bytes()))
            .map_err(|e| file_error(&path, e))
    }

    /// The report as a short Markdown page.
    pub fn markdown(&self) -> String {
        let r = self;
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
            "Written by `scripts/gpu-check.sh` (`xtask gpu-check --stage report`) from commit \
             `{}`; the raw numbers are in `report.json`.",
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
            "| peak GPU memory, GiB: burn speed stage (nvidia-smi) / torch f32 step (allocator) \
             | {} / {} |",
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
}
