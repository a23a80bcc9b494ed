//! `shift --run R` (or `--model oracle`): the noise shift measured along a model's sampling
//! trajectories, without and with NAG, from the same seeds, calibrated on forward-noised real
//! items; written to `shift.json` and `shift.png`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use nag_core::guidance::Guidance;
use nag_core::schedule::Schedule;
use nag_models::dit::TimeInput;
use serde::Serialize;

use super::{
    run_schedule, Calibration, EstimatorMeter, ExactMeter, LateShift, NoiseMeter, ShiftRecorder,
    ShiftStep,
};
use crate::data::real_items::{load_items, pick_indices};
use crate::data::{open_dataset, open_gmm, DataOptions, Dataset};
use crate::generate::{load_model, SampleConfig, Sampled, SamplerKind};
use crate::image::LinePlot;
use crate::oracle::OracleSpec;
use crate::sampling::{FixedVariance, StepInfo};
use crate::train::{write_atomic, ObjectiveKind, TrainConfig};

/// The model whose trajectories are measured.
#[derive(Debug, Clone)]
pub enum ShiftModel {
    /// A `train` run folder (its `config.json` and EMA weights).
    Run(PathBuf),
    /// The exact model of the built-in mixture data.
    Oracle(OracleSpec),
}

/// Options of [`measure_trajectory_shift`]: the model, where the report goes, and how the
/// trajectories are drawn and measured.
#[derive(Debug, Clone)]
pub struct TrajectoryShiftConfig {
    /// The model.
    pub model: ShiftModel,
    /// Folder for `shift.json` and `shift.png`.
    pub out: PathBuf,
    /// Batch chunks evaluated concurrently (does not change the result).
    pub threads: usize,
    /// Sampler, guidance, count, seed, noise meter.
    pub options: TrajectoryOptions,
}

/// How the trajectories are drawn and measured: `cargo xtask shift --run`'s flags (clap, and
/// `--config FILE.toml` by the same names).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct TrajectoryOptions {
    /// DDPM sampler: fixed variance for models without variance channels, large (β_t, DiT's
    /// default) or small (β̃_t).
    #[arg(long, default_value = "large", value_parser = crate::generate::parse_variance)]
    pub variance: FixedVariance,
    /// Sampler for --run: ddpm, ddim, sde, ode (default: ddpm for DiT runs, sde for SiT runs).
    #[arg(long, value_enum, ignore_case = true, hide_possible_values = true)]
    pub sampler: Option<SamplerKind>,
    /// Sampling steps for --run.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// NAG weight of the guided trajectories (the unguided ones use 0).
    #[arg(long, default_value_t = 3.0)]
    pub nag: f64,
    /// CFG scale of both (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub cfg: f64,
    /// Measure with a trained noise-level estimator (any data): its directory or file (else
    /// the exact posterior of the run's Gaussian-mixture data).
    #[arg(long)]
    pub estimator: Option<PathBuf>,
    /// Trajectories (samples) per setting (≥ 2), also the number of calibration items.
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// Seed of the trajectories (the same for both settings) and of the calibration.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Progress of [`measure_trajectory_shift`].
#[derive(Debug, Clone)]
pub enum TrajectoryShiftEvent {
    /// A sampler step of one setting's trajectories.
    Step {
        /// Index of the setting.
        setting: usize,
        /// Number of settings.
        settings: usize,
        /// Steps done in this setting.
        step: usize,
        /// Steps per setting.
        steps: usize,
    },
    /// One setting's trajectories are measured.
    Measured {
        /// The setting.
        name: String,
        /// Its wall time.
        seconds: f64,
    },
}

/// One guidance setting's measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Setting {
    /// "no NAG" or "NAG w=…".
    pub name: String,
    /// NAG weight.
    pub nag: f64,
    /// CFG scale.
    pub cfg: f64,
    /// Mean raw δ over the last 20 % of sampling (nominal τ ≤ 0.2).
    pub late_delta: f64,
    /// Late averages with standard errors, raw and calibrated (excess δ).
    pub late: LateShift,
    /// Per-step statistics.
    pub steps: Vec<ShiftStep>,
}

/// What `shift.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct TrajectoryShiftReport {
    /// The model measured: a run folder, or `oracle (…)`.
    pub run: String,
    /// Measurement: "exact" or "estimator".
    pub measure: String,
    /// Sampler.
    pub sampler: String,
    /// Sampling steps.
    pub sampler_steps: usize,
    /// Trajectories per setting.
    pub n: usize,
    /// Forward-noised reference items measured at each level (the calibration).
    pub calibration_n: usize,
    /// The settings: no NAG, then NAG.
    pub settings: Vec<Setting>,
}

/// The table `xtask shift --run` prints: δ and excess δ per setting on every tenth τ, then
/// the late-trajectory means; each line ends with a newline.
impl std::fmt::Display for TrajectoryShiftReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let report = self;
        writeln!(
            f,
            "noise shift on {} ({} posterior, {} {} steps, {} trajectories; excess δ = δ minus \
             the same meter's δ on forward-noised data)",
            report.run, report.measure, report.sampler, report.sampler_steps, report.n
        )?;
        write!(f, "{:>8}", "τ")?;
        for s in &report.settings {
            write!(f, "{:>18}{:>18}", format!("δ {}", s.name), "excess δ")?;
        }
        writeln!(f)?;
        let rows = report.settings[0].steps.len();
        // Every tenth step and the last (once, when it is a tenth step too).
        let every = (rows / 10).max(1);
        for i in (0..rows).filter(|i| i % every == 0 || i + 1 == rows) {
            write!(f, "{:>8.4}", report.settings[0].steps[i].tau)?;
            for s in &report.settings {
                let st = &s.steps[i];
                write!(
                    f,
                    "{:>18.5}{:>18}",
                    st.delta_mean,
                    st.excess_delta.map_or("—".into(), |e| format!("{e:+.5}"))
                )?;
            }
            writeln!(f)?;
        }
        for s in &report.settings {
            let l = &s.late;
            writeln!(
                f,
                "last 20% (τ ≤ {}), {}: δ {:+.5} ± {:.5}, excess δ {} ",
                l.fraction,
                s.name,
                l.delta,
                l.delta_se,
                match (l.excess_delta, l.excess_delta_se) {
                    (Some(e), Some(se)) => format!("{e:+.5} ± {se:.5}"),
                    _ => "—".into(),
                }
            )?;
        }
        Ok(())
    }
}

/// Errors of the `shift --run` measurement.
pub type TrajectoryError = crate::PipelineError;

/// Reads a run's stored training config.
fn run_config(run: &Path) -> Result<TrainConfig, TrajectoryError> {
    let path = run.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        TrajectoryError::Config(format!(
            "reading {} (is {} a `cargo xtask train` run folder?): {e}",
            path.display(),
            run.display()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| {
        TrajectoryError::Config(format!("{}: not a training config: {e}", path.display()))
    })
}

/// Measures δ along trajectories of `settings` with `meter`, calibrated by `calibration`.
pub fn measure<B: Backend>(
    model: &Sampled<'_, B>,
    meter: &mut dyn NoiseMeter<B>,
    calibration: &mut Calibration<B>,
    labels: &[i64],
    sample: &SampleConfig,
    settings: &[(String, Guidance)],
    on_event: &mut dyn FnMut(TrajectoryShiftEvent),
) -> Result<Vec<Setting>, TrajectoryError> {
    let mut out = Vec::new();
    for (index, (name, g)) in settings.iter().enumerate() {
        let t0 = Instant::now();
        let mut rec = ShiftRecorder::new(meter, labels).with_calibration(calibration);
        {
            let mut cb = |info: StepInfo<B>| {
                on_event(TrajectoryShiftEvent::Step {
                    setting: index,
                    settings: settings.len(),
                    step: info.step + 1,
                    steps: sample.steps,
                });
                rec.observe(info)
            };
            model.generate(labels, *g, sample, Some(&mut cb))?;
        }
        let trace = rec.finish()?;
        on_event(TrajectoryShiftEvent::Measured {
            name: name.clone(),
            seconds: t0.elapsed().as_secs_f64(),
        });
        out.push(Setting {
            name: name.clone(),
            nag: g.nag_scale,
            cfg: g.cfg_scale,
            late_delta: trace.late.delta,
            late: trace.late,
            steps: trace.steps,
        });
    }
    Ok(out)
}

/// Forward-noising reference: `n` real items of `dataset` (the same pick as `eval`'s real
/// images) as a tensor, with their labels.
pub fn reference_calibration<B: Backend>(
    dataset: &dyn Dataset,
    n: usize,
    seed: u64,
    schedule: Schedule,
    device: &B::Device,
) -> Result<Calibration<B>, TrajectoryError> {
    let indices = pick_indices(dataset.len(), n, seed).ok_or_else(|| {
        TrajectoryError::Config(format!(
            "the calibration needs {n} real items but the data has {}",
            dataset.len()
        ))
    })?;
    let (x, labels) = load_items(dataset, &indices, seed)?;
    let [c, h, w] = dataset.shape();
    let x0 = Tensor::<B, 4>::from_data(TensorData::new(x, [n, c, h, w]), device);
    Ok(Calibration::new(x0, &labels, schedule, seed)?)
}

/// Samples `cfg.options.n` trajectories without and with NAG from the same seeds, measures the noise
/// level of every state (exact mixture posterior, or `cfg.options.estimator`), calibrates on
/// forward-noised real items, and writes `shift.json` and `shift.png` into `cfg.out`.
pub fn measure_trajectory_shift<B: Backend>(
    cfg: &TrajectoryShiftConfig,
    device: &B::Device,
    mut on_event: impl FnMut(TrajectoryShiftEvent),
) -> Result<TrajectoryShiftReport, TrajectoryError> {
    if cfg.options.n < 2 {
        return Err(TrajectoryError::Config(
            "--n must be at least 2 (the standard errors need two trajectories)".into(),
        ));
    }
    // The model, its schedule, its data and the default sampler.
    let oracle;
    let net;
    let (sampled, schedule, dataset, exact, label, classes, clip, path, ddpm) = match &cfg.model {
        ShiftModel::Run(run) => {
            let run_cfg = run_config(run)?;
            let weights = run.join("ema.safetensors");
            net = load_model::<B>(&weights, device).map_err(|e| {
                TrajectoryError::Config(format!(
                    "loading the EMA weights of {}: {}",
                    run.display(),
                    crate::error_chain(&e)
                ))
            })?;
            let mc = net.config().clone();
            let path = match run_cfg.objective {
                ObjectiveKind::Gvp => "gvp",
                ObjectiveKind::Vp => "vp",
                _ => "linear",
            };
            let options = DataOptions {
                seed: run_cfg.seed,
                image_size: run_cfg.image_size,
                ..DataOptions::default()
            };
            let dataset = open_dataset(&run_cfg.data, &options).map_err(|e| {
                TrajectoryError::Config(format!(
                    "opening the run's data '{}': {}",
                    run_cfg.data,
                    crate::error_chain(&e)
                ))
            })?;
            let exact = open_gmm(&run_cfg.data, &options)?.map(|g| g.mixture().clone());
            (
                Sampled::Network(&net),
                run_schedule(&run_cfg),
                dataset,
                exact,
                run.display().to_string(),
                mc.num_classes,
                SampleConfig::clip_for_channels(mc.in_channels),
                path,
                mc.time_input == TimeInput::DdpmIndex,
            )
        }
        ShiftModel::Oracle(spec) => {
            let (built, gmm) = spec.build(cfg.options.seed)?;
            oracle = built;
            let ddpm = matches!(oracle.schedule(), Schedule::Ddpm(_));
            let classes = oracle.num_classes();
            let shape = gmm.shape();
            let exact = Some(gmm.mixture().clone());
            (
                Sampled::Oracle {
                    oracle: &oracle,
                    shape,
                    device: device.clone(),
                },
                oracle.schedule().clone(),
                Box::new(gmm) as Box<dyn Dataset>,
                exact,
                spec.label(),
                classes,
                true,
                if ddpm {
                    "linear"
                } else {
                    spec.objective.as_str()
                },
                ddpm,
            )
        }
    };
    let sampler = match cfg.options.sampler {
        Some(s) => s,
        None if ddpm => SamplerKind::Ddpm,
        None => SamplerKind::Sde,
    };
    let sample = SampleConfig {
        sampler,
        steps: cfg.options.steps,
        eta: 0.0,
        seed: cfg.options.seed,
        path: path.into(),
        clip_x0: clip,
        threads: cfg.threads,
        variance: cfg.options.variance,
    };
    let classes = classes as i64;
    let labels: Vec<i64> = (0..cfg.options.n as i64)
        .map(|i| if classes > 0 { i % classes } else { 0 })
        .collect();
    let settings = vec![
        ("no NAG".to_string(), Guidance::cfg(cfg.options.cfg)),
        (
            format!("NAG w={}", cfg.options.nag),
            Guidance::cfg_nag(cfg.options.cfg, cfg.options.nag),
        ),
    ];
    let mut calibration = reference_calibration::<B>(
        dataset.as_ref(),
        cfg.options.n,
        cfg.options.seed,
        schedule.clone(),
        device,
    )?;
    let mut est_meter;
    let mut exact_meter;
    let (measure_name, meter): (&str, &mut dyn NoiseMeter<B>) = if let Some(est) =
        &cfg.options.estimator
    {
        est_meter = EstimatorMeter::<B>::load(est, device).map_err(|e| {
            TrajectoryError::Config(format!(
                "loading the estimator {}: {}",
                est.display(),
                crate::error_chain(&e)
            ))
        })?;
        ("estimator", &mut est_meter)
    } else {
        let Some(mixture) = &exact else {
            return Err(TrajectoryError::Config(format!(
                "the exact measurement needs built-in 'gmm' data (this run used '{}'); pass --estimator DIR (train one with `cargo xtask estimator train`)",
                dataset.name()
            )));
        };
        exact_meter = ExactMeter::new(mixture, &schedule, 400);
        ("exact", &mut exact_meter)
    };
    let results = measure(
        &sampled,
        meter,
        &mut calibration,
        &labels,
        &sample,
        &settings,
        &mut on_event,
    )?;
    let report = TrajectoryShiftReport {
        run: label,
        measure: measure_name.into(),
        sampler: format!("{sampler:?}").to_lowercase(),
        sampler_steps: cfg.options.steps,
        n: cfg.options.n,
        calibration_n: cfg.options.n,
        settings: results,
    };
    write_report(&report, &cfg.out)?;
    Ok(report)
}

/// `shift.json` and `shift.png` (measured against nominal level, with the calibration curve)
/// into `out`, each written atomically.
fn write_report(report: &TrajectoryShiftReport, out: &Path) -> Result<(), TrajectoryError> {
    std::fs::create_dir_all(out)
        .map_err(|e| TrajectoryError::Config(format!("creating {}: {e}", out.display())))?;
    let json = serde_json::to_vec_pretty(report)
        .map_err(|e| TrajectoryError::Config(format!("encoding shift.json: {e}")))?;
    write_atomic(&out.join("shift.json"), &json)?;
    let mut plot = LinePlot::new(&format!("noise level along sampling ({})", report.measure));
    plot.x_label = "nominal noise level".into();
    plot.y_label = "measured noise level".into();
    plot.add_series("nominal", vec![(0.0, 0.0), (1.0, 1.0)]);
    plot.add_series(
        "forward-noised data (calibration)",
        report.settings[0]
            .steps
            .iter()
            .filter_map(|st| Some((st.tau, st.calibrated_tau?)))
            .collect(),
    );
    for s in &report.settings {
        plot.add_series(
            &s.name,
            s.steps.iter().map(|st| (st.tau, st.measured_tau)).collect(),
        );
    }
    plot.save(&out.join("shift.png"))?;
    Ok(())
}
