//! The oracle study (`cargo xtask experiment oracle`): when does NAG reduce the noise shift and
//! improve samples, measured with exact quantities on the built-in `gmm` data.
//!
//! Every setting samples `n` trajectories from the same seed and labels, measures along them
//! the exact posterior mean `E[τ | x̂]` ([`ExactMeter`]) against the same meter on forward-noised
//! real data ([`Calibration`]), and scores the samples exactly ([`gmm_metrics`]: log-density,
//! modes; [`fd_to_mixture`]: Fréchet distance to the mixture's exact moments). Settings are the
//! product of the lists in [`OracleStudyConfig`]; the models are the oracle with each error and,
//! optionally, trained networks on the same data, for which the error of their conditional and
//! noise-dropped branches against the oracle's is measured along their unguided trajectories.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use nag_core::guidance::{Branch, Guidance, Interval};
use nag_core::schedule::Schedule;
use nag_models::dit::Dit;
use serde::{Deserialize, Serialize};

use crate::classifier_nag::ClassifierNag;
use crate::data::{open_gmm, DataOptions, Dataset, GmmDataset};
use crate::estimator::load_estimator;
use crate::generate::{load_model, sample_with, SampleConfig, Sampled, SamplerKind};
use crate::metrics::gmm_metrics::{fd_to_mixture, gmm_metrics};
use crate::metrics::par_map;
use crate::oracle::{NagForm, Oracle, OracleError, OracleModel};
use crate::sampling::{FixedVariance, StepInfo};
use crate::shift::{Calibration, ExactMeter, ShiftRecorder, ShiftStep};
use crate::train::{ObjectiveKind, TrainConfig};

/// Errors of the oracle study.
pub type StudyError = crate::PipelineError;

/// What to measure: `cargo xtask experiment oracle`'s flags (clap, and `--config FILE.toml` by
/// the same names). Every list is comma-separated; the study measures their product.
#[derive(Debug, Clone, clap::Args)]
pub struct OracleStudyConfig {
    /// Sampling steps (a list: `10,50,250`).
    #[arg(long, value_delimiter = ',', default_value = "50")]
    pub steps: Vec<usize>,
    /// Trajectories per setting (and real items for the calibration and the real reference).
    #[arg(long, default_value_t = 256)]
    pub n: usize,
    /// NAG weights.
    #[arg(long, value_delimiter = ',', default_value = "0,0.5,1,2,3,4")]
    pub nag: Vec<f64>,
    /// The oracle's noise-dropped branch: eps (a noise-dropout network's ε average), score
    /// (classifier NAG with the exact ∇log p(τ|x)), estimator (classifier NAG with a trained
    /// g_φ, needs --estimator), or several: `eps,score`.
    #[arg(long = "nag-form", value_name = "NAG_FORM", value_delimiter = ',', default_value = "eps", value_parser = NagForm::parse)]
    pub forms: Vec<NagForm>,
    /// Errors of the oracle: none, eps-scale:K, eps-scale-cond:K, bias:B, smooth:S (a list).
    #[arg(long = "oracle-error", value_name = "ORACLE_ERROR", value_delimiter = ',', default_value = "none", value_parser = OracleError::parse)]
    pub errors: Vec<OracleError>,
    /// DDPM fixed variance: small (β̃_t), large (β_t, DiT's default without variance
    /// channels), or both: `small,large`.
    #[arg(long = "variance", value_name = "VARIANCE", value_delimiter = ',', default_value = "large", value_parser = crate::generate::parse_variance)]
    pub variances: Vec<FixedVariance>,
    /// NAG τ intervals `lo:hi` (paper clock), or `all`: e.g. `all,0:0.3,0.3:1`.
    #[arg(long = "nag-interval", value_name = "NAG_INTERVAL", value_delimiter = ',', default_value = "all", value_parser = parse_interval)]
    pub intervals: Vec<Option<Interval>>,
    /// Trained runs on the same data (`cargo xtask train --data gmm`), measured next to the
    /// oracle, with their branches' error against the oracle's.
    #[arg(long, value_delimiter = ',')]
    pub runs: Vec<PathBuf>,
    /// A noise-level estimator trained on the same data (`cargo xtask estimator train --data
    /// gmm`), for `--nag-form estimator` (classifier NAG with its ∇log g_φ(τ|x)).
    #[arg(long)]
    pub estimator: Option<PathBuf>,
    /// The data: gmm, gmm8, gmm32, … (seed 0; trained runs must use the same).
    #[arg(long, default_value = "gmm")]
    pub data: String,
    /// The oracle's objective: ddpm (ε, DiT's schedule) or linear / gvp / vp (velocity).
    #[arg(long, default_value = "ddpm")]
    pub objective: String,
    /// Sampler (default: ddpm for ddpm, sde otherwise).
    #[arg(long, value_enum, ignore_case = true, hide_possible_values = true)]
    pub sampler: Option<SamplerKind>,
    /// Seed of the trajectories, the real items and the calibration noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Concurrent batch chunks of a network evaluation.
    #[arg(skip = 1usize)]
    pub threads: usize,
}

impl Default for OracleStudyConfig {
    /// `experiment oracle`'s defaults, the clap defaults above: the exact DDPM oracle, 50 steps,
    /// 256 trajectories, a NAG sweep in the ε form, DiT's fixed-large variance.
    fn default() -> Self {
        use clap::{Args, FromArgMatches};
        let cmd = Self::augment_args(clap::Command::new("defaults"));
        Self::from_arg_matches(&cmd.get_matches_from(["defaults"]))
            .expect("the clap defaults parse")
    }
}

/// Parses a NAG interval: `all` (everywhere) or `lo:hi` with `0 ≤ lo ≤ hi ≤ 1` (paper clock).
pub fn parse_interval(s: &str) -> Result<Option<Interval>, String> {
    if s == "all" {
        return Ok(None);
    }
    let parsed = s
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<f64>().ok()?, b.parse::<f64>().ok()?)));
    match parsed {
        Some((lo, hi)) if (0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi) && lo <= hi => {
            Ok(Some(Interval { lo, hi }))
        }
        _ => Err(format!(
            "'{s}': expected all or lo:hi with 0 ≤ lo ≤ hi ≤ 1 (paper clock)"
        )),
    }
}

/// One setting's measurements.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudyRow {
    /// `oracle` or the run folder.
    pub model: String,
    /// Sampling steps.
    pub steps: usize,
    /// The oracle's error (`none` for trained runs: their own).
    pub error: String,
    /// The NAG form.
    pub form: NagForm,
    /// `small`, `large` or `learned`.
    pub variance: String,
    /// NAG's τ interval, `[lo, hi]`, or everywhere.
    pub interval: Option<[f64; 2]>,
    /// NAG weight.
    pub nag: f64,
    /// Mean excess δ over the last 20 % of sampling (calibrated).
    pub excess_delta_late: f64,
    /// Its standard error.
    pub excess_delta_late_se: f64,
    /// Mean raw δ over the last 20 %.
    pub delta_late: f64,
    /// Its standard error.
    pub delta_late_se: f64,
    /// Exact mean log-density of the samples (nats).
    pub log_density: f64,
    /// Fréchet distance in pixels to the mixture's exact moments.
    pub fd: f64,
    /// Modes holding at least a quarter of their share.
    pub modes: usize,
    /// Fraction of samples in their label's mode.
    pub label_agreement: f64,
    /// Per-step shift (not saved: `shift --model oracle` writes it for one setting).
    #[serde(skip_serializing, default)]
    pub shift: Vec<ShiftStep>,
    /// Seconds for this setting.
    pub seconds: f64,
}

/// The same numbers for `n` real items.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RealReference {
    /// Exact mean log-density.
    pub log_density: f64,
    /// Fréchet distance to the exact moments (the finite-n floor of FD).
    pub fd: f64,
    /// Modes covered.
    pub modes: usize,
}

/// A trained network's branches against the oracle's along its unguided trajectories.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BranchError {
    /// The run folder.
    pub model: String,
    /// Sampling steps.
    pub steps: usize,
    /// `mean |ε_net(x,t,c) − ε*(x,t,c)|² / mean |ε*|²` over the last 20 % of sampling.
    pub cond_late: f64,
    /// The same for the noise-dropped branch against the oracle's `ε_∅(x, c)`.
    pub dropped_late: f64,
    /// The same over all steps.
    pub cond_all: f64,
    /// The same over all steps.
    pub dropped_all: f64,
    /// Per step: `[τ, cond, dropped]`.
    pub per_step: Vec<[f64; 3]>,
}

/// The study's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OracleStudy {
    /// The data.
    pub data: String,
    /// The objective.
    pub objective: String,
    /// The sampler.
    pub sampler: SamplerKind,
    /// Trajectories per setting.
    pub n: usize,
    /// Number of modes.
    pub num_modes: usize,
    /// The real reference.
    pub real: RealReference,
    /// One row per setting.
    pub settings: Vec<StudyRow>,
    /// Trained networks' branch errors.
    pub branch_errors: Vec<BranchError>,
    /// Wall time (s).
    pub seconds: f64,
}

fn variance_name(v: FixedVariance) -> &'static str {
    match v {
        FixedVariance::Small => "small",
        FixedVariance::Large => "large",
    }
}

/// A trained run checked against the study's data and objective.
fn load_run<B: Backend>(
    run: &std::path::Path,
    data: &GmmDataset,
    objective: &str,
    device: &B::Device,
) -> Result<Dit<B>, StudyError> {
    let text = std::fs::read_to_string(run.join("config.json")).map_err(|e| {
        StudyError::Config(format!(
            "{}: cannot read config.json ({e}); is it a `cargo xtask train` run folder?",
            run.display()
        ))
    })?;
    let cfg: TrainConfig = serde_json::from_str(&text).map_err(|e| {
        StudyError::Config(format!(
            "{}/config.json: not a training config: {e}",
            run.display()
        ))
    })?;
    let options = DataOptions {
        seed: cfg.seed,
        image_size: cfg.image_size,
        ..DataOptions::default()
    };
    let theirs = open_gmm(&cfg.data, &options)?;
    if theirs.as_ref().map(|g| g.mixture()) != Some(data.mixture()) {
        return Err(StudyError::Config(format!(
            "{} was trained on '{}' (seed {}); the study's data is '{}' with seed 0: train with --data {} --seed 0",
            run.display(),
            cfg.data,
            cfg.seed,
            data.name(),
            data.name().split(' ').next().unwrap_or("gmm")
        )));
    }
    let run_objective = match cfg.objective {
        ObjectiveKind::Ddpm => "ddpm",
        ObjectiveKind::Linear => "linear",
        ObjectiveKind::Gvp => "gvp",
        ObjectiveKind::Vp => "vp",
    };
    if run_objective != objective {
        return Err(StudyError::Config(format!(
            "{} was trained with the {run_objective} objective; the study's --objective is {objective}",
            run.display()
        )));
    }
    Ok(load_model::<B>(&run.join("ema.safetensors"), device)?)
}

/// `Σ |a_i − b_i|²` and `Σ |b_i|²`.
fn sq_err(a: &[f32], b: &[f64]) -> (f64, f64) {
    a.iter().zip(b).fold((0.0, 0.0), |(e, n), (&x, &y)| {
        (e + (x as f64 - y).powi(2), n + y * y)
    })
}

/// The trained network's conditional and noise-dropped ε against the exact oracle's, at the
/// states of one unguided trajectory batch.
fn branch_errors<B: Backend>(
    net: &Dit<B>,
    oracle: &Oracle,
    labels: &[i64],
    sample: &SampleConfig,
    model: String,
) -> Result<BranchError, StudyError> {
    let mut per_step: Vec<[f64; 5]> = Vec::new();
    let c = net.config().in_channels;
    let label_idx: Vec<usize> = labels.iter().map(|&y| y as usize).collect();
    {
        let mut cb = |info: StepInfo<B>| {
            let x = info.x;
            let [n, _, _, _] = x.dims();
            let device = x.device();
            let t = crate::guided::network_time(net.config().time_input, info.at);
            let t = Tensor::<B, 1>::full([n], t, &device);
            let y = Tensor::<B, 1, Int>::from_data(TensorData::new(labels.to_vec(), [n]), &device);
            let all = Tensor::<B, 1, Bool>::from_data(TensorData::new(vec![true; n], [n]), &device);
            let cond = net.forward(x.clone(), t.clone(), y.clone(), None, None);
            let dropped = net.forward(x.clone(), t, y, Some(all), None);
            let read = |o: Tensor<B, 4>| -> Vec<f32> {
                o.narrow(1, 0, c)
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .unwrap_or_default()
            };
            let (cond, dropped) = (read(cond), read(dropped));
            let xs: Vec<f32> = x.into_data().convert::<f32>().to_vec().unwrap_or_default();
            let d = xs.len() / n;
            let tau = info.at.tau;
            let sums = par_map(n, |i| {
                let xi: Vec<f64> = xs[i * d..(i + 1) * d].iter().map(|&v| v as f64).collect();
                let e_c = oracle.branch(&xi, tau, Branch::COND, label_idx[i]);
                let e_d = oracle.branch(&xi, tau, Branch::NULL_T, label_idx[i]);
                let (a, b) = sq_err(&cond[i * d..(i + 1) * d], &e_c);
                let (p, q) = sq_err(&dropped[i * d..(i + 1) * d], &e_d);
                [a, b, p, q]
            });
            let s = sums.iter().fold([0.0; 4], |acc, v| {
                [acc[0] + v[0], acc[1] + v[1], acc[2] + v[2], acc[3] + v[3]]
            });
            per_step.push([tau, s[0], s[1], s[2], s[3]]);
        };
        Sampled::Network(net).generate(labels, Guidance::none(), sample, Some(&mut cb))?;
    }
    let ratio = |rows: &[&[f64; 5]], i: usize| {
        let (e, n) = rows
            .iter()
            .fold((0.0, 0.0), |(e, n), r| (e + r[i], n + r[i + 1]));
        e / n
    };
    let all: Vec<&[f64; 5]> = per_step.iter().collect();
    let late: Vec<&[f64; 5]> = per_step.iter().filter(|r| r[0] <= 0.2).collect();
    Ok(BranchError {
        model,
        steps: sample.steps,
        cond_late: ratio(&late, 1),
        dropped_late: ratio(&late, 3),
        cond_all: ratio(&all, 1),
        dropped_all: ratio(&all, 3),
        per_step: per_step
            .iter()
            .map(|r| [r[0], r[1] / r[2], r[3] / r[4]])
            .collect(),
    })
}

/// A model of the study: its name, the oracle's error, and the network (none for the oracle).
type ModelEntry<'a, B> = (String, OracleError, Option<&'a Dit<B>>);

/// Runs the study; `progress` sees each row as it is measured. Computes, never prints.
pub fn oracle_study<A: AutodiffBackend>(
    cfg: &OracleStudyConfig,
    device: &A::Device,
    progress: &mut dyn FnMut(&StudyRow),
) -> Result<OracleStudy, StudyError> {
    let start = Instant::now();
    let bad = |m: String| Err(StudyError::Config(m));
    if cfg.n < 10 {
        return bad(format!(
            "--n {}: at least 10 trajectories per setting",
            cfg.n
        ));
    }
    if cfg.steps.is_empty() || cfg.steps.contains(&0) {
        return bad("--steps: one or more step counts, each ≥ 1".into());
    }
    if let Some(&w) = cfg.nag.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        return bad(format!("--nag: weights must be finite and ≥ 0 (got {w})"));
    }
    if cfg.nag.is_empty() || cfg.forms.is_empty() || cfg.errors.is_empty() {
        return bad("--nag, --nag-form and --oracle-error need at least one value each".into());
    }
    let Some(data) = open_gmm(&cfg.data, &DataOptions::default())? else {
        return bad(format!(
            "--data '{}': the oracle study needs built-in gmm data (gmm, gmm8, gmm32, …)",
            cfg.data
        ));
    };
    let mixture = data.mixture();
    let probe = Oracle::from_specs(&data, &cfg.objective, "none", "eps", cfg.seed)?;
    let schedule: Schedule = probe.schedule().clone();
    let ddpm = matches!(schedule, Schedule::Ddpm(_));
    let sampler = cfg.sampler.unwrap_or(if ddpm {
        SamplerKind::Ddpm
    } else {
        SamplerKind::Sde
    });
    if ddpm != matches!(sampler, SamplerKind::Ddpm | SamplerKind::Ddim) {
        return bad(format!(
            "--sampler {} does not suit the {} objective (ddpm/ddim for ddpm, sde/ode otherwise)",
            format!("{sampler:?}").to_lowercase(),
            cfg.objective
        ));
    }
    let estimator = match &cfg.estimator {
        Some(path) => {
            let (est, meta) = load_estimator::<A>(path, device)
                .map_err(|e| StudyError::Config(format!("--estimator {}: {e}", path.display())))?;
            if meta.data_shape != data.shape() {
                return bad(format!(
                    "--estimator {} was trained on {:?} items ('{}'); the study's data has {:?}",
                    path.display(),
                    meta.data_shape,
                    meta.data,
                    data.shape()
                ));
            }
            let labels_needed = est.config().num_classes > 0;
            Some((est, labels_needed))
        }
        None if cfg.forms.contains(&NagForm::Estimator) => {
            return bad("--nag-form estimator needs --estimator DIR (a g_φ trained on the same data: `cargo xtask estimator train --data gmm`)".into());
        }
        None => None,
    };
    let nets = cfg
        .runs
        .iter()
        .map(|r| {
            Ok((
                r.display().to_string(),
                load_run::<A::InnerBackend>(r, &data, &cfg.objective, device)?,
            ))
        })
        .collect::<Result<Vec<_>, StudyError>>()?;

    // Real items: the reference numbers and the calibration's x0.
    let n = cfg.n;
    let [c, h, w] = data.shape();
    let mut real = Vec::with_capacity(n * c * h * w);
    let mut real_labels = Vec::with_capacity(n);
    // Items far from those of training (index ≥ len/2), in label order.
    for i in 0..n {
        let (x, k) = data.sample_f64(data.len() / 2 + i)?;
        real.extend(x.iter().map(|&v| v as f32));
        real_labels.push(k as i64);
    }
    let real_report = gmm_metrics(mixture, &real, Some(&real_labels), None)?;
    let real_ref = RealReference {
        log_density: real_report.mean_log_density,
        fd: fd_to_mixture(mixture, &real)?,
        modes: real_report.modes_covered,
    };
    let x0 = Tensor::<A::InnerBackend, 4>::from_data(TensorData::new(real, [n, c, h, w]), device);
    let mut calibration = Calibration::new(x0, &real_labels, schedule.clone(), cfg.seed)?;
    let mut meter = ExactMeter::new(mixture, &schedule, 400);
    let classes = probe.num_classes() as i64;
    let labels: Vec<i64> = (0..n as i64).map(|i| i % classes).collect();
    let path = if ddpm {
        "linear"
    } else {
        cfg.objective.as_str()
    };

    let mut rows: Vec<StudyRow> = Vec::new();
    let mut branch = Vec::new();
    // (model, steps, error, variance) → the unguided row, shared by every form and interval.
    let mut unguided: Vec<((String, usize, String, String), StudyRow)> = Vec::new();
    let mut models: Vec<ModelEntry<'_, A::InnerBackend>> = cfg
        .errors
        .iter()
        .map(|&e| ("oracle".to_string(), e, None))
        .collect();
    models.extend(
        nets.iter()
            .map(|(name, net)| (name.clone(), OracleError::None, Some(net))),
    );
    for (name, error, net) in &models {
        for &steps in &cfg.steps {
            // The fixed variance matters to the DDPM sampler only, and not to a model that
            // learned its variance.
            let variances: Vec<Option<FixedVariance>> = match net {
                _ if sampler != SamplerKind::Ddpm => vec![None],
                Some(n) if n.config().learn_sigma => vec![None],
                _ => cfg.variances.iter().map(|&v| Some(v)).collect(),
            };
            for variance in variances {
                let sample = SampleConfig {
                    sampler,
                    steps,
                    eta: 0.0,
                    seed: cfg.seed,
                    path: path.into(),
                    clip_x0: true,
                    threads: cfg.threads,
                    variance: variance.unwrap_or_default(),
                };
                let variance_label = match variance {
                    Some(v) => variance_name(v),
                    None if sampler == SamplerKind::Ddpm => "learned",
                    None => "—",
                }
                .to_string();
                if let Some(net) = net {
                    branch.push(branch_errors(*net, &probe, &labels, &sample, name.clone())?);
                }
                let forms = if net.is_some() {
                    vec![NagForm::Eps]
                } else {
                    cfg.forms.clone()
                };
                for form in forms {
                    // The estimator form guides the unguided oracle through `ClassifierNag`.
                    let oracle_form = if form == NagForm::Estimator {
                        NagForm::Eps
                    } else {
                        form
                    };
                    let oracle =
                        Oracle::new(mixture, schedule.clone(), *error, oracle_form, cfg.seed)?;
                    let sampled = match net {
                        Some(net) => Sampled::Network(*net),
                        None => Sampled::Oracle {
                            oracle: &oracle,
                            shape: [c, h, w],
                            device: device.clone(),
                        },
                    };
                    for interval in &cfg.intervals {
                        for &nag in &cfg.nag {
                            let key = (name.clone(), steps, error.label(), variance_label.clone());
                            if nag == 0.0 {
                                if let Some((_, row)) = unguided.iter().find(|(k, _)| *k == key) {
                                    let mut row = row.clone();
                                    row.form = form;
                                    row.interval = interval.map(|i| [i.lo, i.hi]);
                                    progress(&row);
                                    rows.push(row);
                                    continue;
                                }
                            }
                            let t0 = Instant::now();
                            let mut guidance = Guidance::nag(nag);
                            guidance.nag_interval = *interval;
                            let mut rec = ShiftRecorder::new(&mut meter, &labels)
                                .with_calibration(&mut calibration);
                            // At most ~100 measured steps per trajectory.
                            rec.every = steps.div_ceil(100);
                            let x = {
                                let mut cb = |info: StepInfo<A::InnerBackend>| rec.observe(info);
                                match (&estimator, form) {
                                    (Some((est, with_labels)), NagForm::Estimator) => {
                                        let inner =
                                            OracleModel::new(&oracle, &labels, Guidance::none())?;
                                        let mut model = ClassifierNag::new(
                                            inner,
                                            est,
                                            with_labels.then(|| labels.clone()),
                                            schedule.clone(),
                                            nag,
                                            *interval,
                                        );
                                        sample_with(
                                            &mut model,
                                            [n, c, h, w],
                                            device,
                                            ddpm,
                                            &sample,
                                            Some(&mut cb),
                                        )?
                                    }
                                    _ => sampled.generate(
                                        &labels,
                                        guidance,
                                        &sample,
                                        Some(&mut cb),
                                    )?,
                                }
                            };
                            let trace = rec.finish()?;
                            let values: Vec<f32> =
                                x.into_data().convert::<f32>().to_vec().map_err(|e| {
                                    StudyError::Config(format!("reading samples: {e:?}"))
                                })?;
                            let g = gmm_metrics(mixture, &values, Some(&labels), None)?;
                            let row = StudyRow {
                                model: name.clone(),
                                steps,
                                error: error.label(),
                                form,
                                variance: variance_label.clone(),
                                interval: interval.map(|i| [i.lo, i.hi]),
                                nag,
                                excess_delta_late: trace.late.excess_delta.unwrap_or(f64::NAN),
                                excess_delta_late_se: trace
                                    .late
                                    .excess_delta_se
                                    .unwrap_or(f64::NAN),
                                delta_late: trace.late.delta,
                                delta_late_se: trace.late.delta_se,
                                log_density: g.mean_log_density,
                                fd: fd_to_mixture(mixture, &values)?,
                                modes: g.modes_covered,
                                label_agreement: g.label_agreement.unwrap_or(f64::NAN),
                                shift: trace.steps,
                                seconds: t0.elapsed().as_secs_f64(),
                            };
                            progress(&row);
                            if nag == 0.0 {
                                unguided.push((key, row.clone()));
                            }
                            rows.push(row);
                        }
                    }
                }
            }
        }
    }
    Ok(OracleStudy {
        data: cfg.data.clone(),
        objective: cfg.objective.clone(),
        sampler,
        n,
        num_modes: mixture.num_components(),
        real: real_ref,
        settings: rows,
        branch_errors: branch,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Default` is the clap defaults, parsed from an empty command line.
    #[test]
    fn defaults_are_the_documented_study() {
        let d = OracleStudyConfig::default();
        assert_eq!(d.steps, [50]);
        assert_eq!(d.n, 256);
        assert_eq!(d.nag, [0.0, 0.5, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(d.forms, [NagForm::Eps]);
        assert_eq!(d.errors, [OracleError::None]);
        assert_eq!(d.variances, [FixedVariance::Large]);
        assert_eq!(d.intervals, [None]);
        assert!(d.runs.is_empty() && d.estimator.is_none() && d.sampler.is_none());
        assert_eq!((d.data.as_str(), d.objective.as_str()), ("gmm", "ddpm"));
        assert_eq!((d.seed, d.threads), (0, 1));
    }

    #[test]
    fn intervals_parse_or_name_the_fix() {
        assert_eq!(parse_interval("all"), Ok(None));
        assert_eq!(
            parse_interval("0:0.3"),
            Ok(Some(Interval { lo: 0.0, hi: 0.3 }))
        );
        for bad in ["0.5:0.2", "1.5:2", "x", "0.1"] {
            assert!(parse_interval(bad).unwrap_err().contains("lo:hi"), "{bad}");
        }
    }
}
