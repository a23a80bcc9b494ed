//! `experiment nag`: the README's experiment, end to end and reproducible.
//!
//! 1. Trains the model (the default run on the built-in `gmm` data, whose density is known
//!    exactly; reused if `<out>/model` holds a finished run of the same configuration).
//! 2. Trains the feature classifier for FD / precision / recall on the same data (reused too).
//! 3. Samples `n` images per guidance setting from the same seeds and labels: no guidance,
//!    NAG, CFG, CFG+NAG, and a sweep of the NAG weight without CFG, measuring the noise shift δ
//!    along every trajectory with the exact posterior p(τ | x̂) of the mixture.
//! 4. Writes `results.json`, `table.md`, `shift.png` (nominal vs measured noise level) and
//!    `sweep.png`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use serde::Serialize;

use super::ExperimentError;
use crate::data::real_items::{load_items, pick_indices};
use crate::data::{open_gmm, DataOptions, Dataset};
use crate::generate::{generate, load_model, SampleConfig, SamplerKind};
use crate::image::LinePlot;
use crate::metrics::features::{
    feature_model_exists, train_feature_net, FeatureExtractor, FeatureProgress, FeatureTrainConfig,
};
use crate::metrics::gmm_metrics::gmm_metrics;
use crate::metrics::{frechet_distance, prdc, FeatureStats};
use crate::parallel::Replicas;
use crate::report::side_by_side;
use crate::sampling::StepInfo;
use crate::shift::{run_schedule, Calibration, ExactMeter, LateShift, ShiftRecorder, ShiftStep};
use crate::train::{finished_run, train_replicas, write_atomic, TrainConfig, TrainEvent};
use nag_core::guidance::Guidance;

/// The learning rate of the recorded table (`docs/experiment-nag/`), kept so that the command
/// reproduces it; the default run's has since become 2e-3.
pub const EXPERIMENT_LR: f64 = 5e-4;

/// The model of the experiment: `base` (the default run) on `gmm` data at [`EXPERIMENT_LR`].
pub fn experiment_model(base: TrainConfig) -> TrainConfig {
    TrainConfig {
        data: "gmm".into(),
        lr: EXPERIMENT_LR,
        ..base
    }
}

/// The experiment: where it writes, the model's training configuration, and its
/// [`NagExperimentOptions`].
#[derive(Debug, Clone)]
pub struct NagExperimentConfig {
    /// Output folder (the model goes to `<out>/model`, the classifier to `<out>/features`).
    pub out: PathBuf,
    /// The model's training configuration ([`experiment_model`]).
    pub train: TrainConfig,
    /// Sampling threads.
    pub threads: usize,
    /// The command line, recorded in the results.
    pub command: String,
    /// What is sampled and measured.
    pub options: NagExperimentOptions,
}

/// What `experiment nag` samples and measures: the command's flags (clap, and `--config
/// FILE.toml` by the same names).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct NagExperimentOptions {
    /// Samples per guidance setting (and real images to compare with).
    #[arg(long, default_value_t = 250)]
    pub n: usize,
    /// Sampler: ddpm or ddim.
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        hide_possible_values = true,
        default_value = "ddpm"
    )]
    pub sampler: SamplerKind,
    /// Sampling steps (respaced from the 1000 of training).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// NAG weight of the table without CFG (the paper's default without CFG).
    #[arg(long, default_value_t = 3.0)]
    pub nag: f64,
    /// NAG weight of the table's CFG+NAG row (the paper's default with CFG).
    #[arg(long, default_value_t = 2.0)]
    pub nag_with_cfg: f64,
    /// CFG scale of the table's CFG rows.
    #[arg(long, default_value_t = 1.5)]
    pub cfg: f64,
    /// NAG weights of the sweep (no CFG).
    #[arg(long, value_delimiter = ',', default_value = "0,0.5,1,2,3,4,5")]
    pub sweep: Vec<f64>,
    /// Seed of the sampling noise and of the real images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train the model and the classifier again even if `<out>` holds them.
    #[arg(long)]
    pub retrain: bool,
}

/// What the experiment reports as it goes.
#[derive(Debug, Clone)]
pub enum NagExperimentEvent {
    /// The model in `dir` is reused.
    ReusingModel(PathBuf),
    /// The model is trained now.
    TrainingModel(TrainConfig),
    /// A training event.
    Train(TrainEvent),
    /// The feature classifier is trained now.
    TrainingFeatures(FeatureTrainConfig),
    /// A feature-classifier training step.
    FeatureProgress(FeatureProgress),
    /// The classifier is trained, with this held-out accuracy.
    FeaturesTrained(f64),
    /// One setting is measured.
    Measured(Row),
}

/// One guidance setting's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Label in the table.
    pub name: String,
    /// CFG scale (1 = off).
    pub cfg: f64,
    /// NAG weight (0 = off).
    pub nag: f64,
    /// Mean δ over the steps with nominal τ ≤ 0.2.
    pub late_delta: f64,
    /// Late averages with standard errors, raw and calibrated (excess δ).
    pub late: LateShift,
    /// Fréchet distance in classifier features.
    pub fd: f64,
    /// k-NN precision.
    pub precision: f64,
    /// k-NN recall.
    pub recall: f64,
    /// Exact mean log-density of the samples under the data mixture (nats).
    pub log_density: f64,
    /// Modes holding at least the minimum share of samples.
    pub modes_covered: usize,
    /// Per-step noise shift.
    pub shift: Vec<ShiftStep>,
    /// Seconds spent sampling and measuring this setting.
    pub seconds: f64,
}

/// What `results.json` holds.
#[derive(Debug, Serialize)]
pub struct NagResults {
    /// The command line that made it.
    pub command: String,
    /// The model's training configuration.
    pub train: TrainConfig,
    /// Seconds spent training (0 when reused).
    pub train_seconds: f64,
    /// Sampler.
    pub sampler: String,
    /// Sampling steps.
    pub steps: usize,
    /// Samples per setting.
    pub n: usize,
    /// Real-vs-real FD at this n (the floor finite samples put under FD).
    pub fd_real_baseline: f64,
    /// Mean log-density of real images.
    pub real_log_density: f64,
    /// Number of mixture modes.
    pub num_modes: usize,
    /// The table rows: no guidance, NAG, CFG, CFG+NAG.
    pub table: Vec<Row>,
    /// The NAG sweep (no CFG).
    pub sweep: Vec<Row>,
    /// Total wall time.
    pub total_seconds: f64,
}

/// Checks the options before any work.
fn validate(cfg: &NagExperimentConfig) -> Result<(), ExperimentError> {
    let bad = |m: String| Err(ExperimentError::Config(m));
    if cfg.options.n < 10 {
        return bad(
            "--n must be at least 10 (FD and k-NN recall need a few samples; 250 is the default)"
                .into(),
        );
    }
    if cfg.options.steps == 0 {
        return bad("--steps must be at least 1".into());
    }
    if !matches!(cfg.options.sampler, SamplerKind::Ddpm | SamplerKind::Ddim) {
        return bad(format!(
            "--sampler {:?}: the experiment's model is a DDPM model; use ddpm or ddim",
            cfg.options.sampler
        ));
    }
    for (name, w) in [
        ("--nag", cfg.options.nag),
        ("--nag-with-cfg", cfg.options.nag_with_cfg),
    ]
    .into_iter()
    .chain(cfg.options.sweep.iter().map(|&w| ("--sweep", w)))
    {
        if !(w.is_finite() && w >= 0.0) {
            return bad(format!(
                "{name}: NAG weights must be finite and ≥ 0 (got {w})"
            ));
        }
    }
    if !(cfg.options.cfg.is_finite() && cfg.options.cfg >= 1.0) {
        return bad(format!(
            "--cfg must be ≥ 1 (1 = off; got {})",
            cfg.options.cfg
        ));
    }
    Ok(())
}

/// Runs the experiment on `device` and writes its outputs into `cfg.out`.
pub fn run_nag_experiment<B: AutodiffBackend>(
    cfg: &NagExperimentConfig,
    device: &B::Device,
    mut on_event: impl FnMut(NagExperimentEvent),
) -> Result<NagResults, ExperimentError> {
    validate(cfg)?;
    let start = Instant::now();
    let out = &cfg.out;
    std::fs::create_dir_all(out)
        .map_err(|e| ExperimentError::Config(format!("creating {}: {e}", out.display())))?;

    // 1. The model.
    let tcfg = &cfg.train;
    let run_dir = out.join("model");
    let train_start = Instant::now();
    let train_seconds = if !cfg.options.retrain && finished_run(&run_dir, tcfg) {
        on_event(NagExperimentEvent::ReusingModel(run_dir.clone()));
        0.0
    } else {
        let _ = std::fs::remove_dir_all(&run_dir);
        on_event(NagExperimentEvent::TrainingModel(tcfg.clone()));
        train_replicas::<B>(
            tcfg,
            &run_dir,
            false,
            &Replicas::single(device.clone()),
            |e| on_event(NagExperimentEvent::Train(e)),
        )?;
        train_start.elapsed().as_secs_f64()
    };

    // 2. The feature classifier.
    let features_dir = out.join("features");
    if cfg.options.retrain || !feature_model_exists(&features_dir) {
        let fcfg = FeatureTrainConfig {
            data: tcfg.data.clone(),
            image_size: tcfg.image_size,
            seed: tcfg.seed,
            ..FeatureTrainConfig::default()
        };
        on_event(NagExperimentEvent::TrainingFeatures(fcfg.clone()));
        let summary = train_feature_net::<B>(&fcfg, Some(&features_dir), device, |p| {
            on_event(NagExperimentEvent::FeatureProgress(p))
        })?;
        on_event(NagExperimentEvent::FeaturesTrained(
            summary.info.held_out_accuracy,
        ));
    }
    let extractor = FeatureExtractor::<B::InnerBackend>::load(&features_dir, device)?;
    let dim = extractor.dim();

    // 3. Data, real statistics.
    let model = load_model::<B::InnerBackend>(&run_dir.join("ema.safetensors"), device)?;
    let mc = model.config().clone();
    let options = DataOptions {
        seed: tcfg.seed,
        image_size: tcfg.image_size,
        ..DataOptions::default()
    };
    let gmm = open_gmm(&tcfg.data, &options)?.ok_or_else(|| {
        ExperimentError::Config(format!("the experiment's data is gmm, not '{}'", tcfg.data))
    })?;
    let mixture = gmm.mixture();
    let [c, h, w] = gmm.shape();
    let n = cfg.options.n;
    let indices = pick_indices(gmm.len(), 2 * n, cfg.options.seed).ok_or_else(|| {
        ExperimentError::Config(format!(
            "the gmm dataset has {} items, fewer than 2·--n = {}",
            gmm.len(),
            2 * n
        ))
    })?;
    let (real, real_labels) = load_items(&gmm, &indices[..n], cfg.options.seed)?;
    let (real2, _) = load_items(&gmm, &indices[n..], cfg.options.seed)?;
    let real_feats = extractor.features_from_slice(&real, [n, c, h, w])?;
    let real_stats = FeatureStats::from_features(&real_feats, dim)?;
    let fd_real_baseline = frechet_distance(
        &real_stats,
        &FeatureStats::from_features(&extractor.features_from_slice(&real2, [n, c, h, w])?, dim)?,
    )?;
    let real_report = gmm_metrics(mixture, &real, Some(&real_labels), None)?;

    // 4. The settings, each sampled once from the same seed and labels.
    let classes = mc.num_classes as i64;
    let labels: Vec<i64> = (0..n as i64)
        .map(|i| if classes > 0 { i % classes } else { 0 })
        .collect();
    let sample = SampleConfig {
        sampler: cfg.options.sampler,
        steps: cfg.options.steps,
        eta: 0.0,
        seed: cfg.options.seed,
        path: "linear".into(),
        clip_x0: SampleConfig::clip_for_channels(mc.in_channels),
        threads: cfg.threads,
        variance: crate::sampling::FixedVariance::default(),
    };
    let schedule = run_schedule(tcfg);
    let mut meter = ExactMeter::new(mixture, &schedule, 400);
    let real_x0 = Tensor::<B::InnerBackend, 4>::from_data(
        TensorData::new(real.clone(), [n, c, h, w]),
        device,
    );
    let mut calibration =
        Calibration::new(real_x0, &real_labels, schedule.clone(), cfg.options.seed)?;
    let mut done: Vec<Row> = Vec::new();
    let mut measure = |name: String, cfg_scale: f64, nag: f64| -> Result<Row, ExperimentError> {
        if let Some(r) = done.iter().find(|r| r.cfg == cfg_scale && r.nag == nag) {
            return Ok(Row { name, ..r.clone() });
        }
        let t0 = Instant::now();
        let guidance = Guidance::cfg_nag(cfg_scale, nag);
        let mut rec = ShiftRecorder::new(&mut meter, &labels).with_calibration(&mut calibration);
        let x: Tensor<B::InnerBackend, 4> = {
            let mut cb = |info: StepInfo<B::InnerBackend>| rec.observe(info);
            generate(&model, &labels, guidance, &sample, Some(&mut cb))?
        };
        let trace = rec.finish()?;
        let values: Vec<f32> = x.to_data().iter::<f32>().collect();
        if values.iter().any(|v| !v.is_finite()) {
            return Err(ExperimentError::Config(format!(
                "'{name}': the samples contain NaN/inf; no metrics computed"
            )));
        }
        let (feats, _) = extractor.features_and_classes(x)?;
        let fd = frechet_distance(&real_stats, &FeatureStats::from_features(&feats, dim)?)?;
        let pr = prdc(&real_feats, &feats, dim, 3)?;
        let g = gmm_metrics(mixture, &values, Some(&labels), None)?;
        let row = Row {
            name,
            cfg: cfg_scale,
            nag,
            late_delta: trace.late.delta,
            late: trace.late,
            fd,
            precision: pr.precision,
            recall: pr.recall,
            log_density: g.mean_log_density,
            modes_covered: g.modes_covered,
            shift: trace.steps,
            seconds: t0.elapsed().as_secs_f64(),
        };
        on_event(NagExperimentEvent::Measured(row.clone()));
        done.push(row.clone());
        Ok(row)
    };
    let table = vec![
        measure("no guidance".into(), 1.0, 0.0)?,
        measure(format!("NAG w={}", cfg.options.nag), 1.0, cfg.options.nag)?,
        measure(format!("CFG s={}", cfg.options.cfg), cfg.options.cfg, 0.0)?,
        measure(
            format!(
                "CFG s={} + NAG w={}",
                cfg.options.cfg, cfg.options.nag_with_cfg
            ),
            cfg.options.cfg,
            cfg.options.nag_with_cfg,
        )?,
    ];
    let mut sweep = Vec::new();
    for &wn in &cfg.options.sweep {
        sweep.push(measure(format!("NAG w={wn}"), 1.0, wn)?);
    }

    let results = NagResults {
        command: cfg.command.clone(),
        train: tcfg.clone(),
        train_seconds,
        sampler: format!("{:?}", cfg.options.sampler).to_lowercase(),
        steps: cfg.options.steps,
        n,
        fd_real_baseline,
        real_log_density: real_report.mean_log_density,
        num_modes: real_report.mode_counts.len(),
        table,
        sweep,
        total_seconds: start.elapsed().as_secs_f64(),
    };
    write_outputs(out, &results)?;
    Ok(results)
}

/// `+0.0123 ± 0.0004`, or `—` without calibration.
pub fn excess(late: &LateShift) -> String {
    match (late.excess_delta, late.excess_delta_se) {
        (Some(e), Some(se)) => format!("{e:+.4} ± {se:.4}"),
        _ => "—".into(),
    }
}

/// The table as markdown (`table.md`).
pub fn markdown(r: &NagResults) -> String {
    let mut s = String::new();
    s.push_str(
        "| setting | δ, last 20 % | excess δ (calibrated) | FD ↓ | precision ↑ | recall ↑ | log-density ↑ | modes |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for row in &r.table {
        s.push_str(&format!(
            "| {} | {:+.4} | {} | {:.3} | {:.3} | {:.3} | {:.1} | {}/{} |\n",
            row.name,
            row.late_delta,
            excess(&row.late),
            row.fd,
            row.precision,
            row.recall,
            row.log_density,
            row.modes_covered,
            r.num_modes
        ));
    }
    s.push_str(&format!(
        "| real images | — | — | {:.3} (real vs real) | — | — | {:.1} | — |\n",
        r.fd_real_baseline, r.real_log_density
    ));
    s.push_str("\nNAG weight sweep (no CFG):\n\n| w | δ, last 20 % | excess δ | FD | precision | recall | log-density |\n|---|---|---|---|---|---|---|\n");
    for row in &r.sweep {
        s.push_str(&format!(
            "| {} | {:+.4} | {} | {:.3} | {:.3} | {:.3} | {:.1} |\n",
            row.nag,
            row.late_delta,
            excess(&row.late),
            row.fd,
            row.precision,
            row.recall,
            row.log_density
        ));
    }
    s.push_str(&format!(
        "\n{} samples per setting, {} {} steps, exact δ from the mixture posterior; made by `{}` in {:.0} min ({:.0} min of it training).\n",
        r.n,
        r.sampler,
        r.steps,
        r.command,
        r.total_seconds / 60.0,
        r.train_seconds / 60.0
    ));
    s
}

/// Writes `results.json`, `table.md`, `shift.png` and `sweep.png` into `out` (each atomic).
fn write_outputs(out: &Path, r: &NagResults) -> Result<(), ExperimentError> {
    let json = serde_json::to_vec_pretty(r)
        .map_err(|e| ExperimentError::Config(format!("serialising the results: {e}")))?;
    write_atomic(&out.join("results.json"), &json)?;
    write_atomic(&out.join("table.md"), markdown(r).as_bytes())?;

    let mut plot = LinePlot::new("noise level along sampling (exact posterior)");
    plot.x_label = "nominal noise level".into();
    plot.y_label = "measured noise level".into();
    plot.add_series("nominal", vec![(0.0, 0.0), (1.0, 1.0)]);
    if let Some(first) = r.table.first() {
        plot.add_series(
            "forward-noised data (calibration)",
            first
                .shift
                .iter()
                .filter_map(|s| Some((s.tau, s.calibrated_tau?)))
                .collect(),
        );
    }
    for row in &r.table {
        plot.add_series(
            &row.name,
            row.shift.iter().map(|s| (s.tau, s.measured_tau)).collect(),
        );
    }
    plot.save(&out.join("shift.png"))?;

    let panel = |title: &str, y: &str, f: &dyn Fn(&Row) -> f64| {
        let mut p = LinePlot::new(title);
        p.width = 360;
        p.height = 280;
        p.x_label = "NAG weight w".into();
        p.y_label = y.into();
        p.add_series(y, r.sweep.iter().map(|row| (row.nag, f(row))).collect());
        p.render()
    };
    let grid = side_by_side(&[
        panel("late noise shift", "delta (tau < 0.2)", &|row| {
            row.late_delta
        })?,
        panel("Frechet distance", "FD", &|row| row.fd)?,
        panel("log-density", "nats", &|row| row.log_density)?,
        panel("precision", "precision", &|row| row.precision)?,
        panel("recall", "recall", &|row| row.recall)?,
    ]);
    write_atomic(&out.join("sweep.png"), &grid.encode_png()?)?;
    Ok(())
}
