//! `cargo xtask shift --run R`: the noise shift measured along a trained model's sampling
//! trajectories, without and with NAG, from the same seeds.

use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_core::guidance::Guidance;
use nag_core::schedule::Schedule;
use nag_models::dit::TimeInput;
use nag_train::data::{open_gmm, DataOptions};
use nag_train::generate::{generate, load_model, SampleConfig, SamplerKind};
use nag_train::image::LinePlot;
use nag_train::sampling::StepInfo;
use nag_train::shift::{late_delta, ExactMeter, NoiseMeter, ShiftRecorder, ShiftStep};
use nag_train::train::{write_atomic, ObjectiveKind, TrainConfig};
use serde::Serialize;

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
    /// Mean δ over the last 20 % of sampling (nominal τ ≤ 0.2).
    pub late_delta: f64,
    /// Per-step statistics.
    pub steps: Vec<ShiftStep>,
}

/// What shift.json holds.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The run measured.
    pub run: String,
    /// Measurement: "exact" or "estimator".
    pub measure: String,
    /// Sampler and steps.
    pub sampler: String,
    /// Steps.
    pub sampler_steps: usize,
    /// Trajectories per setting.
    pub n: usize,
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

/// The schedule the run's model was trained with, in the paper's clock.
pub fn run_schedule(cfg: &TrainConfig) -> Schedule {
    match cfg.objective {
        ObjectiveKind::Ddpm => Schedule::from_name("ddpm-linear").expect("built-in"),
        other => other.schedule().expect("interpolant objective"),
    }
}

/// Measures δ along trajectories of `settings` with `meter`.
#[allow(clippy::too_many_arguments)]
pub fn measure<B: Backend>(
    model: &nag_models::dit::Dit<B>,
    meter: &mut dyn NoiseMeter<B>,
    labels: &[i64],
    sample: &SampleConfig,
    settings: &[(String, Guidance)],
) -> Result<Vec<Setting>> {
    let mut out = Vec::new();
    for (name, g) in settings {
        let t0 = std::time::Instant::now();
        let mut rec = ShiftRecorder::new(meter, labels);
        {
            let mut cb = |info: StepInfo<B>| rec.observe(info);
            generate(model, labels, *g, sample, Some(&mut cb))?;
        }
        let steps = rec.finish()?;
        eprintln!("measured '{name}' in {:.1}s", t0.elapsed().as_secs_f64());
        out.push(Setting {
            name: name.clone(),
            nag: g.nag_scale,
            cfg: g.cfg_scale,
            late_delta: late_delta(&steps, 0.2),
            steps,
        });
    }
    Ok(out)
}

struct Task<'a> {
    args: &'a ShiftArgs,
}

impl BackendTask for Task<'_> {
    type Output = Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let args = self.args;
        let run = args.run.as_ref().expect("--run given");
        let cfg = run_config(run)?;
        let model = load_model::<B::InnerBackend>(&run.join("ema.safetensors"), &device)
            .with_context(|| format!("loading the EMA weights of {}", run.display()))?;
        let mc = model.config().clone();
        let sampler = match &args.sampler {
            Some(s) => SamplerKind::parse(s)?,
            None if mc.time_input == TimeInput::DdpmIndex => SamplerKind::Ddpm,
            None => SamplerKind::Sde,
        };
        let path = match cfg.objective {
            ObjectiveKind::Gvp => "gvp",
            ObjectiveKind::Vp => "vp",
            _ => "linear",
        };
        let sample = SampleConfig {
            sampler,
            steps: args.steps,
            eta: 0.0,
            seed: args.seed,
            path: path.into(),
            clip_x0: SampleConfig::clip_for_channels(mc.in_channels),
            threads: DeviceSpec::parse(&args.device)?.concurrent_batches(),
        };
        if args.n == 0 {
            bail!("--n must be at least 1");
        }
        let classes = mc.num_classes as i64;
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
        let schedule = run_schedule(&cfg);
        let (measure_name, results) = if let Some(est) = &args.estimator {
            let mut meter = nag_train::shift::EstimatorMeter::<B::InnerBackend>::load(est, &device)
                .with_context(|| format!("loading the estimator {}", est.display()))?;
            (
                "estimator",
                measure(&model, &mut meter, &labels, &sample, &settings)?,
            )
        } else {
            let options = DataOptions {
                seed: cfg.seed,
                image_size: cfg.image_size,
                ..DataOptions::default()
            };
            let Some(gmm) = open_gmm(&cfg.data, &options)? else {
                bail!(
                    "the exact measurement needs a run trained on the built-in 'gmm' data (this run used '{}'); pass --estimator DIR (train one with `cargo xtask estimator train`)",
                    cfg.data
                );
            };
            let mut meter = ExactMeter::new(gmm.mixture(), &schedule, 400);
            (
                "exact",
                measure(&model, &mut meter, &labels, &sample, &settings)?,
            )
        };
        let report = Report {
            run: run.display().to_string(),
            measure: measure_name.into(),
            sampler: format!("{sampler:?}").to_lowercase(),
            sampler_steps: args.steps,
            n: args.n,
            settings: results,
        };
        let out_dir = args.out.clone().unwrap_or_else(|| run.clone());
        std::fs::create_dir_all(&out_dir)
            .with_context(|| format!("creating {}", out_dir.display()))?;
        let json = serde_json::to_vec_pretty(&report)?;
        write_atomic(&out_dir.join("shift.json"), &json)?;
        let mut plot = LinePlot::new(&format!("noise level along sampling ({measure_name})"));
        plot.x_label = "nominal noise level".into();
        plot.y_label = "measured noise level".into();
        plot.add_series("nominal", vec![(0.0, 0.0), (1.0, 1.0)]);
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
            println!(
                "noise shift on {} ({measure_name} posterior, {} {} steps, {} trajectories)",
                report.run, report.sampler, report.sampler_steps, report.n
            );
            println!(
                "{:>8} {}",
                "τ",
                report
                    .settings
                    .iter()
                    .map(|s| format!("{:>22}", format!("δ {}", s.name)))
                    .collect::<String>()
            );
            let rows = report.settings[0].steps.len();
            for i in (0..rows)
                .step_by((rows / 10).max(1))
                .chain(std::iter::once(rows - 1))
            {
                print!("{:>8.4}", report.settings[0].steps[i].tau);
                for s in &report.settings {
                    print!("{:>22.5}", s.steps[i].delta_mean);
                }
                println!();
            }
            for s in &report.settings {
                println!(
                    "mean δ over the last 20% (τ ≤ 0.2), {}: {:.5}",
                    s.name, s.late_delta
                );
            }
            println!(
                "wrote {} and {}",
                out_dir.join("shift.json").display(),
                out_dir.join("shift.png").display()
            );
        }
        Ok(())
    }
}

/// Runs the trajectory mode.
pub fn run(args: &ShiftArgs) -> Result<()> {
    let spec = DeviceSpec::parse(&args.device)?;
    dispatch(spec, Task { args })?
}
