//! `cargo xtask shift --run R`: the noise shift measured along a trained model's sampling
//! trajectories, without and with NAG, from the same seeds.

use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_core::guidance::Guidance;
use nag_core::schedule::Schedule;
use nag_models::dit::TimeInput;
use nag_train::data::real_items::{load_items, pick_indices};
use nag_train::data::{open_dataset, open_gmm, DataOptions, Dataset};
use nag_train::generate::{load_model, parse_variance, SampleConfig, Sampled, SamplerKind};
use nag_train::image::LinePlot;
use nag_train::sampling::StepInfo;
use nag_train::shift::{Calibration, ExactMeter, LateShift, NoiseMeter, ShiftRecorder, ShiftStep};
use nag_train::train::{write_atomic, ObjectiveKind, TrainConfig};
use serde::Serialize;
use std::path::PathBuf;

use crate::shift::ShiftArgs;

/// One guidance setting's measurement.
#[derive(Debug, Serialize)]
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

/// What shift.json holds.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The model measured: a run folder, or `oracle (…)`.
    pub run: String,
    /// Measurement: "exact" or "estimator".
    pub measure: String,
    /// Sampler and steps.
    pub sampler: String,
    /// Steps.
    pub sampler_steps: usize,
    /// Trajectories per setting.
    pub n: usize,
    /// Forward-noised reference items measured at each level (the calibration).
    pub calibration_n: usize,
    /// The settings.
    pub settings: Vec<Setting>,
}

/// Reads a run's stored training config.
pub fn run_config(run: &Path) -> Result<TrainConfig> {
    let path = run.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is {} a `cargo xtask train` run folder?)",
            path.display(),
            run.display()
        )
    })?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a training config", path.display()))
}

/// Measures δ along trajectories of `settings` with `meter`, calibrated by `calibration`.
pub fn measure<B: Backend>(
    model: &Sampled<'_, B>,
    meter: &mut dyn NoiseMeter<B>,
    calibration: &mut Calibration<B>,
    labels: &[i64],
    sample: &SampleConfig,
    settings: &[(String, Guidance)],
) -> Result<Vec<Setting>> {
    let mut out = Vec::new();
    for (name, g) in settings {
        let t0 = std::time::Instant::now();
        let mut rec = ShiftRecorder::new(meter, labels).with_calibration(calibration);
        {
            let mut cb = |info: StepInfo<B>| rec.observe(info);
            model.generate(labels, *g, sample, Some(&mut cb))?;
        }
        let trace = rec.finish()?;
        eprintln!("measured '{name}' in {:.1}s", t0.elapsed().as_secs_f64());
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
) -> Result<Calibration<B>> {
    let indices = pick_indices(dataset.len(), n, seed).with_context(|| {
        format!(
            "the calibration needs {n} real items but the data has {}",
            dataset.len()
        )
    })?;
    let (x, labels) = load_items(dataset, &indices, seed)?;
    let [c, h, w] = dataset.shape();
    let x0 = Tensor::<B, 4>::from_data(TensorData::new(x, [n, c, h, w]), device);
    Ok(Calibration::new(x0, &labels, schedule, seed)?)
}

struct Task<'a> {
    args: &'a ShiftArgs,
}

impl BackendTask for Task<'_> {
    type Output = Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let args = self.args;
        if args.n < 2 {
            bail!("--n must be at least 2 (the standard errors need two trajectories)");
        }
        let variance = parse_variance(&args.variance)?;
        let threads = DeviceSpec::parse(&args.device)?.concurrent_batches();
        // The model, its schedule, its data and the default sampler.
        let oracle;
        let net;
        let (sampled, schedule, dataset, exact, label, classes, clip, path, ddpm) = match &args.run
        {
            Some(run) => {
                let cfg = run_config(run)?;
                net = load_model::<B::InnerBackend>(&run.join("ema.safetensors"), &device)
                    .with_context(|| format!("loading the EMA weights of {}", run.display()))?;
                let mc = net.config().clone();
                let path = match cfg.objective {
                    ObjectiveKind::Gvp => "gvp",
                    ObjectiveKind::Vp => "vp",
                    _ => "linear",
                };
                let options = DataOptions {
                    seed: cfg.seed,
                    image_size: cfg.image_size,
                    ..DataOptions::default()
                };
                let dataset = open_dataset(&cfg.data, &options)
                    .with_context(|| format!("opening the run's data '{}'", cfg.data))?;
                let exact = open_gmm(&cfg.data, &options)?.map(|g| g.mixture().clone());
                (
                    Sampled::Network(&net),
                    nag_train::shift::run_schedule(&cfg),
                    dataset,
                    exact,
                    run.display().to_string(),
                    mc.num_classes,
                    SampleConfig::clip_for_channels(mc.in_channels),
                    path,
                    mc.time_input == TimeInput::DdpmIndex,
                )
            }
            None => {
                let Some((built, gmm)) = args.oracle.build(args.seed, "--run")? else {
                    bail!("give --run RUN_DIR or --model oracle");
                };
                oracle = built;
                let ddpm = matches!(oracle.schedule(), Schedule::Ddpm(_));
                let o = &args.oracle;
                let label = format!(
                    "oracle ({}, {}, error {}, NAG form {})",
                    o.data, o.objective, o.oracle_error, o.nag_form
                );
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
                    label,
                    classes,
                    true,
                    if ddpm { "linear" } else { o.objective.as_str() },
                    ddpm,
                )
            }
        };
        let sampler = match &args.sampler {
            Some(s) => SamplerKind::parse(s)?,
            None if ddpm => SamplerKind::Ddpm,
            None => SamplerKind::Sde,
        };
        let sample = SampleConfig {
            sampler,
            steps: args.steps,
            eta: 0.0,
            seed: args.seed,
            path: path.into(),
            clip_x0: clip,
            threads,
            variance,
        };
        let classes = classes as i64;
        let labels: Vec<i64> = (0..args.n as i64)
            .map(|i| if classes > 0 { i % classes } else { 0 })
            .collect();
        let settings = vec![
            ("no NAG".to_string(), Guidance::cfg(args.cfg)),
            (
                format!("NAG w={}", args.nag),
                Guidance::cfg_nag(args.cfg, args.nag),
            ),
        ];
        let mut calibration = reference_calibration::<B::InnerBackend>(
            dataset.as_ref(),
            args.n,
            args.seed,
            schedule.clone(),
            &device,
        )?;
        let mut est_meter;
        let mut exact_meter;
        let (measure_name, meter): (&str, &mut dyn NoiseMeter<B::InnerBackend>) = if let Some(est) =
            &args.estimator
        {
            est_meter = nag_train::shift::EstimatorMeter::<B::InnerBackend>::load(est, &device)
                .with_context(|| format!("loading the estimator {}", est.display()))?;
            ("estimator", &mut est_meter)
        } else {
            let Some(mixture) = &exact else {
                bail!(
                        "the exact measurement needs built-in 'gmm' data (this run used '{}'); pass --estimator DIR (train one with `cargo xtask estimator train`)",
                        dataset.name()
                    );
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
        )?;
        let run = label;
        let report = Report {
            run,
            measure: measure_name.into(),
            sampler: format!("{sampler:?}").to_lowercase(),
            sampler_steps: args.steps,
            n: args.n,
            calibration_n: args.n,
            settings: results,
        };
        let out_dir = match (&args.out, &args.run) {
            (Some(out), _) => out.clone(),
            (None, Some(run)) => run.clone(),
            (None, None) => PathBuf::from("runs/shift-oracle"),
        };
        std::fs::create_dir_all(&out_dir)
            .with_context(|| format!("creating {}", out_dir.display()))?;
        let json = serde_json::to_vec_pretty(&report)?;
        write_atomic(&out_dir.join("shift.json"), &json)?;
        let mut plot = LinePlot::new(&format!("noise level along sampling ({measure_name})"));
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
        plot.save(&out_dir.join("shift.png"))?;
        if args.json {
            println!("{}", String::from_utf8(json)?);
        } else {
            print_report(&report);
            println!(
                "wrote {} and {}",
                out_dir.join("shift.json").display(),
                out_dir.join("shift.png").display()
            );
        }
        Ok(())
    }
}

fn print_report(report: &Report) {
    println!(
        "noise shift on {} ({} posterior, {} {} steps, {} trajectories; excess δ = δ minus the same meter's δ on forward-noised data)",
        report.run, report.measure, report.sampler, report.sampler_steps, report.n
    );
    print!("{:>8}", "τ");
    for s in &report.settings {
        print!("{:>18}{:>18}", format!("δ {}", s.name), "excess δ");
    }
    println!();
    let rows = report.settings[0].steps.len();
    for i in (0..rows)
        .step_by((rows / 10).max(1))
        .chain(std::iter::once(rows - 1))
    {
        print!("{:>8.4}", report.settings[0].steps[i].tau);
        for s in &report.settings {
            let st = &s.steps[i];
            print!(
                "{:>18.5}{:>18}",
                st.delta_mean,
                st.excess_delta.map_or("—".into(), |e| format!("{e:+.5}"))
            );
        }
        println!();
    }
    for s in &report.settings {
        let l = &s.late;
        println!(
            "last 20% (τ ≤ {}), {}: δ {:+.5} ± {:.5}, excess δ {} ",
            l.fraction,
            s.name,
            l.delta,
            l.delta_se,
            match (l.excess_delta, l.excess_delta_se) {
                (Some(e), Some(se)) => format!("{e:+.5} ± {se:.5}"),
                _ => "—".into(),
            }
        );
    }
}

/// Runs the trajectory mode.
pub fn run(args: &ShiftArgs) -> Result<()> {
    let spec = DeviceSpec::parse(&args.device)?;
    dispatch(spec, Task { args })?
}
