//! `cargo xtask experiment nag`: the README's experiment, end to end and reproducible.
//!
//! 1. Trains the default model (the `cargo xtask train` preset, noise dropout 0.1) on the
//!    built-in `gmm` data, whose density is known exactly (reused if `<out>/model` already holds
//!    a finished run of the same configuration).
//! 2. Trains the feature classifier for FD / precision / recall on the same data (reused too).
//! 3. Samples `--n` images for each guidance setting from the same seeds and labels: no
//!    guidance, NAG, CFG, CFG+NAG, and a sweep of the NAG weight without CFG. Along every
//!    trajectory it measures the noise shift δ with the exact posterior p(τ | x̂) of the mixture.
//! 4. Reports, per setting: mean δ over the last 20 % of sampling (nominal τ ≤ 0.2), FD,
//!    precision, recall (classifier features, k = 3), the exact mean log-density of the samples
//!    under the data mixture and the number of modes covered; writes `results.json`,
//!    `table.md`, `shift.png` (nominal vs measured noise level) and `sweep.png`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use clap::{Args, Subcommand};
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_core::guidance::Guidance;
use nag_train::data::{open_gmm, DataOptions, Dataset};
use nag_train::generate::{generate, load_model, SampleConfig, SamplerKind};
use nag_train::image::{LinePlot, RgbImage};
use nag_train::metrics::fd::{frechet_distance, FeatureStats};
use nag_train::metrics::features::{feature_model_exists, FeatureExtractor, FeatureTrainConfig};
use nag_train::metrics::gmm_metrics::gmm_metrics;
use nag_train::metrics::prdc::prdc;
use nag_train::sampling::StepInfo;
use nag_train::shift::{Calibration, ExactMeter, LateShift, ShiftRecorder, ShiftStep};
use nag_train::train::{finished_run, write_atomic, TrainConfig};
use serde::Serialize;

use nag_train::data::real_items::{load_items, pick_indices};

/// `cargo xtask experiment`: the README's experiments.
#[derive(Debug, Subcommand)]
pub enum ExperimentCmd {
    /// Trains the default model on gmm data and tabulates noise shift, FD, precision / recall
    /// and exact log-density with and without NAG.
    Nag(ExperimentArgs),
    /// When does NAG reduce the noise shift and improve samples: the exact oracle of the gmm
    /// data with controlled errors (and trained runs), measured exactly.
    Oracle(crate::experiment_oracle::OracleArgs),
    /// The paper's transfer table in miniature: a source model fine-tuned onto other gmm
    /// classes, sampled as FT / + CFG / + DoG, each without and with NAG, measured exactly.
    Transfer(crate::experiment_transfer::TransferArgs),
}

/// Runs `cargo xtask experiment …`.
pub fn run_cmd(cmd: &ExperimentCmd) -> Result<()> {
    match cmd {
        ExperimentCmd::Nag(args) => run(args),
        ExperimentCmd::Oracle(args) => crate::experiment_oracle::run(args),
        ExperimentCmd::Transfer(args) => crate::experiment_transfer::run(args),
    }
}

/// Arguments of `cargo xtask experiment nag`.
#[derive(Debug, Args)]
pub struct ExperimentArgs {
    /// Output folder (the trained model goes to `<out>/model`).
    #[arg(long, default_value = "runs/experiment-nag")]
    pub out: PathBuf,
    /// Training steps of the model (default: the default preset's).
    #[arg(long)]
    pub train_steps: Option<u64>,
    /// Samples per guidance setting (and real images to compare with).
    #[arg(long, default_value_t = 250)]
    pub n: usize,
    /// Sampler: ddpm or ddim.
    #[arg(long, default_value = "ddpm")]
    pub sampler: String,
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
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
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
pub struct Results {
    /// The command line that made it.
    pub command: String,
    /// The model's training configuration.
    pub train: TrainConfig,
    /// Seconds spent training (0 when reused).
    pub train_seconds: f64,
    /// Sampler and steps.
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

/// The learning rate of the recorded table (`docs/experiment-nag/`), kept so that the command
/// reproduces it; `cargo xtask train`'s default has since become 2e-3.
const EXPERIMENT_LR: f64 = 5e-4;

/// The model this experiment trains: the `cargo xtask train` default on `gmm` data, at
/// [`EXPERIMENT_LR`].
fn model_config(args: &ExperimentArgs, spec: DeviceSpec) -> TrainConfig {
    let mut cfg = crate::train::default_config();
    cfg.data = "gmm".into();
    cfg.lr = EXPERIMENT_LR;
    if let Some(steps) = args.train_steps {
        cfg.steps = steps;
    }
    cfg.threads = crate::train::default_threads(spec, cfg.grad_accum);
    cfg
}

/// Runs `cargo xtask experiment`.
pub fn run(args: &ExperimentArgs) -> Result<()> {
    if args.n < 10 {
        bail!(
            "--n must be at least 10 (FD and k-NN recall need a few samples; 250 is the default)"
        );
    }
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let sampler = SamplerKind::parse(&args.sampler)?;
    if !matches!(sampler, SamplerKind::Ddpm | SamplerKind::Ddim) {
        bail!(
            "--sampler {}: the default model is a DDPM model; use ddpm or ddim",
            args.sampler
        );
    }
    for (name, w) in [("--nag", args.nag), ("--nag-with-cfg", args.nag_with_cfg)]
        .into_iter()
        .chain(args.sweep.iter().map(|&w| ("--sweep", w)))
    {
        if !(w.is_finite() && w >= 0.0) {
            bail!("{name}: NAG weights must be finite and ≥ 0 (got {w})");
        }
    }
    if !(args.cfg.is_finite() && args.cfg >= 1.0) {
        bail!("--cfg must be ≥ 1 (1 = off; got {})", args.cfg);
    }
    let spec = DeviceSpec::parse(&args.device)?;
    let results = dispatch(
        spec,
        Task {
            args,
            spec,
            sampler,
        },
    )??;
    print_table(&results, &args.out);
    Ok(())
}

struct Task<'a> {
    args: &'a ExperimentArgs,
    spec: DeviceSpec,
    sampler: SamplerKind,
}

impl BackendTask for Task<'_> {
    type Output = Result<Results>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Results> {
        let (args, sampler) = (self.args, self.sampler);
        let start = Instant::now();
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?;

        // 1. The model.
        let cfg = model_config(args, self.spec);
        let run_dir = args.out.join("model");
        let train_start = Instant::now();
        let train_seconds = if !args.retrain && finished_run(&run_dir, &cfg) {
            eprintln!(
                "reusing the trained model in {} (--retrain to train it again)",
                run_dir.display()
            );
            0.0
        } else {
            let _ = std::fs::remove_dir_all(&run_dir);
            eprintln!(
                "training '{}' on '{}' for {} steps, batch {}, noise dropout {}",
                cfg.model, cfg.data, cfg.steps, cfg.batch, cfg.noise_dropout
            );
            crate::train::train_with_progress::<B>(&cfg, &run_dir, false, &device)?;
            train_start.elapsed().as_secs_f64()
        };

        // 2. The feature classifier.
        let features_dir = args.out.join("features");
        if args.retrain || !feature_model_exists(&features_dir) {
            let fcfg = FeatureTrainConfig {
                data: cfg.data.clone(),
                image_size: cfg.image_size,
                seed: cfg.seed,
                ..FeatureTrainConfig::default()
            };
            crate::features::train_and_report::<B>(&fcfg, &features_dir, &device)?;
        }
        let extractor = FeatureExtractor::<B::InnerBackend>::load(&features_dir, &device)
            .with_context(|| {
                format!("loading the feature classifier {}", features_dir.display())
            })?;
        let dim = extractor.dim();

        // 3. Data, real statistics.
        let model = load_model::<B::InnerBackend>(&run_dir.join("ema.safetensors"), &device)
            .with_context(|| format!("loading the EMA weights of {}", run_dir.display()))?;
        let mc = model.config().clone();
        let options = DataOptions {
            seed: cfg.seed,
            image_size: cfg.image_size,
            ..DataOptions::default()
        };
        let gmm = open_gmm(&cfg.data, &options)?.context("the experiment's data is gmm")?;
        let mixture = gmm.mixture();
        let [c, h, w] = gmm.shape();
        let n = args.n;
        let indices = pick_indices(gmm.len(), 2 * n, args.seed)
            .context("the gmm dataset is smaller than 2·--n")?;
        let (real, real_labels) = load_items(&gmm, &indices[..n], args.seed)?;
        let (real2, _) = load_items(&gmm, &indices[n..], args.seed)?;
        let real_feats = extractor.features_from_slice(&real, [n, c, h, w])?;
        let real_stats = FeatureStats::from_features(&real_feats, dim)?;
        let fd_real_baseline = frechet_distance(
            &real_stats,
            &FeatureStats::from_features(
                &extractor.features_from_slice(&real2, [n, c, h, w])?,
                dim,
            )?,
        )?;
        let real_report = gmm_metrics(mixture, &real, Some(&real_labels), None)?;

        // 4. The settings, each sampled once from the same seed and labels.
        let classes = mc.num_classes as i64;
        let labels: Vec<i64> = (0..n as i64)
            .map(|i| if classes > 0 { i % classes } else { 0 })
            .collect();
        let sample = SampleConfig {
            sampler,
            steps: args.steps,
            eta: 0.0,
            seed: args.seed,
            path: "linear".into(),
            clip_x0: SampleConfig::clip_for_channels(mc.in_channels),
            threads: self.spec.concurrent_batches(),
            variance: nag_train::sampling::FixedVariance::default(),
        };
        let schedule = crate::shift_run::run_schedule(&cfg);
        let mut meter = ExactMeter::new(mixture, &schedule, 400);
        let real_x0 = Tensor::<B::InnerBackend, 4>::from_data(
            TensorData::new(real.clone(), [n, c, h, w]),
            &device,
        );
        let mut calibration = Calibration::new(real_x0, &real_labels, schedule.clone(), args.seed)?;
        let mut done: Vec<Row> = Vec::new();
        let mut measure = |name: String, cfg_scale: f64, nag: f64| -> Result<Row> {
            if let Some(r) = done.iter().find(|r| r.cfg == cfg_scale && r.nag == nag) {
                return Ok(Row { name, ..r.clone() });
            }
            let t0 = Instant::now();
            let guidance = Guidance::cfg_nag(cfg_scale, nag);
            let mut rec =
                ShiftRecorder::new(&mut meter, &labels).with_calibration(&mut calibration);
            let x: Tensor<B::InnerBackend, 4> = {
                let mut cb = |info: StepInfo<B::InnerBackend>| rec.observe(info);
                generate(&model, &labels, guidance, &sample, Some(&mut cb))?
            };
            let trace = rec.finish()?;
            let values: Vec<f32> = x.to_data().iter::<f32>().collect();
            if values.iter().any(|v| !v.is_finite()) {
                bail!("'{name}': the samples contain NaN/inf; no metrics computed");
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
            eprintln!(
                "{:<22} δ(τ≤0.2) {:+.4} excess {:+.4}  FD {:.3}  P {:.3}  R {:.3}  log p {:.1}  ({:.0}s)",
                row.name,
                row.late_delta,
                row.late.excess_delta.unwrap_or(f64::NAN),
                row.fd,
                row.precision,
                row.recall,
                row.log_density,
                row.seconds
            );
            done.push(row.clone());
            Ok(row)
        };
        let table = vec![
            measure("no guidance".into(), 1.0, 0.0)?,
            measure(format!("NAG w={}", args.nag), 1.0, args.nag)?,
            measure(format!("CFG s={}", args.cfg), args.cfg, 0.0)?,
            measure(
                format!("CFG s={} + NAG w={}", args.cfg, args.nag_with_cfg),
                args.cfg,
                args.nag_with_cfg,
            )?,
        ];
        let mut sweep = Vec::new();
        for &wn in &args.sweep {
            sweep.push(measure(format!("NAG w={wn}"), 1.0, wn)?);
        }

        let results = Results {
            command: std::iter::once("cargo xtask experiment".to_string())
                .chain(std::env::args().skip(2))
                .collect::<Vec<_>>()
                .join(" "),
            train: cfg,
            train_seconds,
            sampler: format!("{sampler:?}").to_lowercase(),
            steps: args.steps,
            n,
            fd_real_baseline,
            real_log_density: real_report.mean_log_density,
            num_modes: real_report.mode_counts.len(),
            table,
            sweep,
            total_seconds: start.elapsed().as_secs_f64(),
        };
        write_outputs(&args.out, &results)?;
        Ok(results)
    }
}

/// `+0.0123 ± 0.0004`, or `—` without calibration.
pub fn excess(late: &LateShift) -> String {
    match (late.excess_delta, late.excess_delta_se) {
        (Some(e), Some(se)) => format!("{e:+.4} ± {se:.4}"),
        _ => "—".into(),
    }
}

/// The table as markdown.
fn markdown(r: &Results) -> String {
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

/// Places images side by side on a white canvas.
pub(crate) fn side_by_side(images: &[RgbImage]) -> RgbImage {
    let width = images.iter().map(|i| i.width).sum();
    let height = images.iter().map(|i| i.height).max().unwrap_or(1);
    let mut out = RgbImage::new(width, height, [255, 255, 255]);
    let mut x0 = 0usize;
    for img in images {
        for y in 0..img.height {
            for x in 0..img.width {
                let p = 3 * (y * img.width + x);
                let d = 3 * (y * width + x0 + x);
                out.data[d..d + 3].copy_from_slice(&img.data[p..p + 3]);
            }
        }
        x0 += img.width;
    }
    out
}

fn write_outputs(out: &Path, r: &Results) -> Result<()> {
    write_atomic(&out.join("results.json"), &serde_json::to_vec_pretty(r)?)?;
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
        }),
        panel("Frechet distance", "FD", &|row| row.fd),
        panel("log-density", "nats", &|row| row.log_density),
        panel("precision", "precision", &|row| row.precision),
        panel("recall", "recall", &|row| row.recall),
    ]);
    let png = grid.encode_png()?;
    write_atomic(&out.join("sweep.png"), &png)?;
    Ok(())
}

fn print_table(r: &Results, out: &Path) {
    println!("{}", markdown(r));
    println!(
        "wrote {0}/results.json, {0}/table.md, {0}/shift.png, {0}/sweep.png",
        out.display()
    );
}
