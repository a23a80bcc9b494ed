//! The `eval` pipeline: sample quality of a trained run (or of the exact gmm model).
//!
//! Samples `n` images (labels cycling through the classes) with the chosen guidance, draws `n`
//! real images of the run's dataset, and compares them in the feature space of the dataset's
//! classifier ([`crate::metrics::features`]): Fréchet distance, k-NN precision / recall,
//! density / coverage, and the classifier's accuracy on the samples' labels. With InceptionV3
//! weights it adds FID on the same images; on `gmm` data the exact mean log-density and mode
//! coverage ([`crate::metrics::gmm_metrics`]). Progress is reported through [`EvalEvent`]s.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use serde::Serialize;

use crate::data::real_items::{load_items, pick_indices};
use crate::data::{open_dataset, DataOptions, Dataset, GmmDataset};
use crate::generate::{load_model, SampleConfig, Sampled, SamplerKind};
use crate::metrics::features::{
    feature_model_exists, train_feature_net, FeatureExtractor, FeatureProgress, FeatureTrainConfig,
};
use crate::metrics::gmm_metrics::{gmm_dataset_for, gmm_metrics};
use crate::metrics::inception::{InceptionV3, INCEPTION_DIM};
use crate::metrics::{frechet_distance, prdc, FeatureStats};
use crate::oracle::Oracle;
use nag_core::guidance::Guidance;
use nag_models::dit::TimeInput;

/// Errors of the `eval` pipeline.
pub type EvalError = crate::PipelineError;

/// What is evaluated.
pub enum EvalModel<'a> {
    /// A `train` run folder: its `config.json` (dataset) and `ema.safetensors`.
    Run(&'a Path),
    /// The exact model of built-in gmm data.
    Oracle {
        /// The model.
        oracle: &'a Oracle,
        /// Its data.
        gmm: &'a GmmDataset,
        /// The data's spec (`gmm`, `gmm8`, …).
        data: String,
        /// Its objective (the sampler's path when it is not DDPM).
        objective: String,
        /// How the report names it.
        description: String,
    },
}

/// The options of an evaluation: `cargo xtask eval`'s flags (clap, and `--config FILE.toml`
/// by the same names).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct EvalConfig {
    /// Number of generated samples, and of real images (500 keeps a CPU eval of the tiny model
    /// to a few minutes; FD is biased upwards at small n: compare runs at equal n, against the
    /// real-vs-real FD printed next to it).
    #[arg(long, default_value_t = 500)]
    pub n: usize,
    /// CFG scale (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub cfg: f64,
    /// NAG weight (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub nag: f64,
    /// Sampler: ddpm, ddim, sde or ode (default: ddpm for DiT, sde for SiT).
    #[arg(long, value_enum, ignore_case = true, hide_possible_values = true)]
    pub sampler: Option<SamplerKind>,
    /// Sampling steps (ode: 0 = adaptive dopri5).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// DDIM η.
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Path of an interpolant (SiT) model: linear, gvp or vp.
    #[arg(long, default_value = "linear")]
    pub path: String,
    /// DDPM/DDIM: do not clamp x̂0 to [−1, 1].
    #[arg(long)]
    pub no_clip: bool,
    /// Seed of the sampling noise (batch b: seed·φ + b) and of the choice of real images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Feature classifier folder (default <run>/features; trained there on the fly if absent).
    #[arg(long)]
    pub features: Option<PathBuf>,
    /// Neighbourhood size k of precision / recall.
    #[arg(long, default_value_t = 3)]
    pub k: usize,
    /// InceptionV3 FID weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or a
    /// safetensors conversion): also report FID (2048-d pool features of the real and generated
    /// images; slow on the CPU, about 6 GFLOPs per image plus a 2048-d Fréchet distance).
    #[arg(long)]
    pub inception: Option<PathBuf>,
    /// Images sampled per batch (the CLI's `--batch`, which also serves the ADM evaluator).
    #[arg(skip)]
    pub batch: usize,
    /// Sampling threads (one batch chunk each).
    #[arg(skip)]
    pub threads: usize,
}

/// What the pipeline reports as it goes.
#[derive(Debug, Clone)]
pub enum EvalEvent {
    /// No feature classifier in `dir`: one is trained there now with `cfg`.
    TrainingFeatures {
        /// Where it is saved.
        dir: PathBuf,
        /// Its training options.
        cfg: FeatureTrainConfig,
    },
    /// A feature-classifier training step.
    FeatureProgress(FeatureProgress),
    /// The classifier is trained.
    FeaturesTrained {
        /// Accuracy on items it never trained on.
        held_out_accuracy: f64,
        /// How many.
        held_out_n: usize,
    },
    /// The classifier was trained on other data than the run's.
    FeatureDataMismatch {
        /// Its data and seed.
        trained_on: (String, u64),
        /// The run's.
        run: (String, u64),
    },
    /// Samples generated so far.
    Sampled {
        /// Done.
        done: usize,
        /// Of.
        total: usize,
    },
    /// InceptionV3 features of the real images are being computed.
    InceptionReal,
}

/// The feature classifier used.
#[derive(Debug, Clone, Serialize)]
pub struct FeaturesUsed {
    /// Its folder.
    pub path: String,
    /// Feature dimension.
    pub dim: usize,
    /// Its held-out accuracy.
    pub held_out_accuracy: f64,
}

/// Exact metrics on gmm data.
#[derive(Debug, Clone, Serialize)]
pub struct GmmSummary {
    /// Mean log-density of the samples under the mixture (nats).
    pub mean_log_density: f64,
    /// The same for as many real items.
    pub real_mean_log_density: f64,
    /// Mean log-density per dimension.
    pub log_density_per_dim: f64,
    /// Modes holding at least `min_fraction` of the samples.
    pub modes_covered: usize,
    /// Modes of the mixture.
    pub num_modes: usize,
    /// `modes_covered / num_modes`.
    pub coverage: f64,
    /// The share a mode needs to count as covered.
    pub min_fraction: f64,
    /// Samples nearest each mode.
    pub mode_counts: Vec<usize>,
    /// Share of samples whose mode is their label's.
    pub label_agreement: Option<f64>,
}

/// Wall-clock seconds.
#[derive(Debug, Clone, Serialize)]
pub struct EvalSeconds {
    /// Sampling.
    pub sampling: f64,
    /// Everything.
    pub total: f64,
    /// FID's InceptionV3 pass (with InceptionV3 weights).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inception_fid: Option<f64>,
}

/// The result of [`evaluate`] (`cargo xtask eval --json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The run folder, or the oracle's description.
    pub run: String,
    /// The dataset.
    pub data: String,
    /// Samples (and real images).
    pub n: usize,
    /// Sampler.
    pub sampler: String,
    /// Sampling steps.
    pub steps: usize,
    /// CFG scale.
    pub cfg: f64,
    /// NAG weight.
    pub nag: f64,
    /// Seed.
    pub seed: u64,
    /// The feature classifier.
    pub features: FeaturesUsed,
    /// Fréchet distance in the classifier's features.
    pub fd: f64,
    /// FD between two disjoint real sets of the same size (the finite-sample floor), when the
    /// dataset has `2n` items.
    pub fd_real_baseline: Option<f64>,
    /// k-NN precision.
    pub precision: f64,
    /// k-NN recall.
    pub recall: f64,
    /// Density.
    pub density: f64,
    /// Coverage.
    pub coverage: f64,
    /// k of the k-NN metrics.
    pub k: usize,
    /// The classifier's accuracy on the samples' labels (class-conditional models).
    pub class_accuracy: Option<f64>,
    /// Exact metrics on gmm data.
    pub gmm: Option<GmmSummary>,
    /// FID in InceptionV3 pool features.
    pub inception_fid: Option<f64>,
    /// The InceptionV3 weights used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inception: Option<String>,
    /// Timings.
    pub seconds: EvalSeconds,
}

/// The table `xtask eval` prints: the run and options, the classifier, one metric a line.
impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self;
        writeln!(
            f,
            "eval {}: {} samples vs {} real of '{}', {} {} steps, CFG {}, NAG {}, seed {}",
            r.run, r.n, r.n, r.data, r.sampler, r.steps, r.cfg, r.nag, r.seed
        )?;
        writeln!(
            f,
            "features: {} ({}-d classifier, held-out accuracy {:.1}%)",
            r.features.path,
            r.features.dim,
            100.0 * r.features.held_out_accuracy
        )?;
        writeln!(f, "{:<28} {:>12}", "metric", "value")?;
        let baseline = r
            .fd_real_baseline
            .map(|b| format!("   (real vs real: {b:.4})"))
            .unwrap_or_default();
        writeln!(
            f,
            "{:<28} {:>12.4}{baseline}",
            "FD (classifier features)", r.fd
        )?;
        if let Some(fid) = r.inception_fid {
            writeln!(f, "{:<28} {:>12.4}", "FID (InceptionV3)", fid)?;
        }
        let k = r.k;
        writeln!(
            f,
            "{:<28} {:>12.4}",
            format!("precision (k={k})"),
            r.precision
        )?;
        writeln!(f, "{:<28} {:>12.4}", format!("recall (k={k})"), r.recall)?;
        writeln!(f, "{:<28} {:>12.4}", "density", r.density)?;
        writeln!(f, "{:<28} {:>12.4}", "coverage", r.coverage)?;
        if let Some(a) = r.class_accuracy {
            writeln!(f, "{:<28} {:>12.4}", "class accuracy of samples", a)?;
        }
        if let Some(g) = &r.gmm {
            writeln!(
                f,
                "{:<28} {:>12.2}   (real: {:.2}; nats, d = {})",
                "gmm mean log-density",
                g.mean_log_density,
                g.real_mean_log_density,
                (g.mean_log_density / g.log_density_per_dim).round()
            )?;
            writeln!(
                f,
                "{:<28} {:>12}   (modes with ≥ {:.1}% of samples)",
                "gmm mode coverage",
                format!("{}/{}", g.modes_covered, g.num_modes),
                100.0 * g.min_fraction
            )?;
            if let Some(a) = g.label_agreement {
                writeln!(f, "{:<28} {:>12.4}", "gmm mode = label", a)?;
            }
            writeln!(f, "{:<28} {:?}", "gmm mode histogram", g.mode_counts)?;
        }
        write!(
            f,
            "sampling {:.0}s, total {:.0}s",
            r.seconds.sampling, r.seconds.total
        )?;
        Ok(())
    }
}

/// What eval needs from a run's `config.json`.
#[derive(Debug, Clone, serde::Deserialize)]
struct RunData {
    data: String,
    #[serde(default)]
    image_size: Option<usize>,
    #[serde(default)]
    seed: u64,
}

impl RunData {
    fn read(run: &Path) -> Result<Self, EvalError> {
        if !run.is_dir() {
            return Err(EvalError::Config(format!(
                "--run {}: no such run directory",
                run.display()
            )));
        }
        let path = run.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            EvalError::Config(format!(
                "reading {} (is {} a `cargo xtask train` run?): {e}",
                path.display(),
                run.display()
            ))
        })?;
        let data: RunData = serde_json::from_str(&text)
            .map_err(|e| EvalError::Config(format!("parsing {}: {e}", path.display())))?;
        if !run.join("ema.safetensors").is_file() {
            return Err(EvalError::Config(format!(
                "{} has no ema.safetensors: is it a finished `cargo xtask train` run (it is written at each checkpoint)?",
                run.display()
            )));
        }
        Ok(data)
    }
}

/// Checks the options before any work.
fn validate(cfg: &EvalConfig) -> Result<(), EvalError> {
    let bad = |m: String| Err(EvalError::Config(m));
    if cfg.k == 0 {
        return bad("--k must be at least 1".into());
    }
    if cfg.n <= cfg.k {
        return bad(format!(
            "--n must be greater than --k = {} (FD needs at least 2 samples; use a few hundred or more for stable numbers)",
            cfg.k
        ));
    }
    if cfg.batch == 0 {
        return bad("--batch must be at least 1".into());
    }
    for (flag, v) in [("--cfg", cfg.cfg), ("--nag", cfg.nag), ("--eta", cfg.eta)] {
        if !v.is_finite() {
            return bad(format!("{flag} {v}: must be a finite number"));
        }
    }
    Ok(())
}

/// Evaluates `model` per `cfg` on `device`, reporting progress through `on_event`.
pub fn evaluate<B: AutodiffBackend>(
    model: &EvalModel<'_>,
    cfg: &EvalConfig,
    device: &B::Device,
    mut on_event: impl FnMut(EvalEvent),
) -> Result<EvalReport, EvalError> {
    validate(cfg)?;
    let start = Instant::now();
    let (run, run_dir, description) = match model {
        EvalModel::Run(dir) => (RunData::read(dir)?, Some(*dir), dir.display().to_string()),
        EvalModel::Oracle {
            data, description, ..
        } => (
            RunData {
                data: data.clone(),
                image_size: None,
                seed: 0,
            },
            None,
            description.clone(),
        ),
    };
    let net = match run_dir {
        Some(dir) => Some(load_model::<B::InnerBackend>(
            &dir.join("ema.safetensors"),
            device,
        )?),
        None => None,
    };
    // What is sampled, its item shape, classes, and whether it is a DDPM model.
    let (sampled, [mc_c, mc_h, mc_w], num_classes, ddpm) = match (&net, model) {
        (Some(m), _) => {
            let mc = m.config();
            (
                Sampled::Network(m),
                [mc.in_channels, mc.input_size, mc.input_size],
                mc.num_classes,
                mc.time_input == TimeInput::DdpmIndex,
            )
        }
        (None, EvalModel::Oracle { oracle, gmm, .. }) => (
            Sampled::Oracle {
                oracle,
                shape: gmm.shape(),
                device: device.clone(),
            },
            gmm.shape(),
            oracle.num_classes(),
            matches!(oracle.schedule(), nag_core::schedule::Schedule::Ddpm(_)),
        ),
        (None, EvalModel::Run(_)) => unreachable!("a run's model is loaded above"),
    };
    let inception = match &cfg.inception {
        Some(path) => Some(InceptionV3::<B::InnerBackend>::load(path, device)?),
        None => None,
    };

    let options = DataOptions {
        seed: run.seed,
        image_size: run.image_size,
        ..DataOptions::default()
    };
    let dataset = open_dataset(&run.data, &options)?;
    let [c, h, w] = dataset.shape();
    if [c, h, w] != [mc_c, mc_h, mc_w] {
        return Err(EvalError::Config(format!(
            "the run's dataset '{}' has items [{c}, {h}, {w}] but the model makes [{mc_c}, {mc_h}, {mc_w}]",
            run.data
        )));
    }
    if inception.is_some() {
        InceptionV3::<B::InnerBackend>::check_input([1, c, h, w]).map_err(|e| {
            EvalError::Config(format!(
                "--inception: the run's dataset '{}' has items [{c}, {h}, {w}]: {e}",
                run.data
            ))
        })?;
    }

    // The feature classifier: given, found in the run, or trained there now.
    let features_dir = cfg.features.clone().unwrap_or_else(|| match run_dir {
        Some(dir) => dir.join("features"),
        None => PathBuf::from(format!("runs/features-{}", run.data)),
    });
    if !feature_model_exists(&features_dir) {
        if cfg.features.is_some() {
            return Err(EvalError::Config(format!(
                "--features {}: no feature classifier there (train one: cargo xtask features train --data {} --out {})",
                features_dir.display(),
                run.data,
                features_dir.display()
            )));
        }
        let fcfg = FeatureTrainConfig {
            data: run.data.clone(),
            image_size: run.image_size,
            seed: run.seed,
            ..FeatureTrainConfig::default()
        };
        on_event(EvalEvent::TrainingFeatures {
            dir: features_dir.clone(),
            cfg: fcfg.clone(),
        });
        let summary = train_feature_net::<B>(&fcfg, Some(&features_dir), device, |p| {
            on_event(EvalEvent::FeatureProgress(p))
        })?;
        on_event(EvalEvent::FeaturesTrained {
            held_out_accuracy: summary.info.held_out_accuracy,
            held_out_n: summary.info.held_out_n,
        });
    }
    let extractor = FeatureExtractor::<B::InnerBackend>::load(&features_dir, device)?;
    let info = extractor.info().clone();
    if info.data != run.data || info.data_seed != run.seed {
        on_event(EvalEvent::FeatureDataMismatch {
            trained_on: (info.data.clone(), info.data_seed),
            run: (run.data.clone(), run.seed),
        });
    }

    // Generated samples, labels cycling through the classes.
    let sampler = match cfg.sampler {
        Some(s) => s,
        None if ddpm => SamplerKind::Ddpm,
        None => SamplerKind::Sde,
    };
    let classes = num_classes as i64;
    let labels: Vec<i64> = (0..cfg.n as i64)
        .map(|i| if classes > 0 { i % classes } else { 0 })
        .collect();
    let guidance = Guidance::cfg_nag(cfg.cfg, cfg.nag);
    let t_sample = Instant::now();
    let mut fake = Vec::with_capacity(cfg.n * c * h * w);
    let mut fake_feats = Vec::with_capacity(cfg.n * extractor.dim());
    let mut predicted = Vec::with_capacity(cfg.n);
    let mut fake_inception = Vec::new();
    for (b, chunk) in labels.chunks(cfg.batch).enumerate() {
        let scfg = SampleConfig {
            sampler,
            steps: cfg.steps,
            eta: cfg.eta,
            seed: cfg
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(b as u64),
            path: match model {
                EvalModel::Oracle { objective, .. } if !ddpm => objective.clone(),
                _ => cfg.path.clone(),
            },
            clip_x0: !cfg.no_clip && SampleConfig::clip_for_channels(mc_c),
            threads: cfg.threads,
            variance: crate::sampling::FixedVariance::default(),
        };
        let x: Tensor<B::InnerBackend, 4> = sampled.generate(chunk, guidance, &scfg, None)?;
        let values: Vec<f32> = x.to_data().iter::<f32>().collect();
        if values.iter().any(|v| !v.is_finite()) {
            return Err(EvalError::Config(format!(
                "the samples contain NaN/inf (batch {b}); no metrics computed"
            )));
        }
        if let Some(net) = &inception {
            fake_inception.extend(net.features(x.clone())?);
        }
        let (f, p) = extractor.features_and_classes(x)?;
        fake.extend(values);
        fake_feats.extend(f);
        predicted.extend(p);
        on_event(EvalEvent::Sampled {
            done: predicted.len(),
            total: cfg.n,
        });
    }
    let sample_seconds = t_sample.elapsed().as_secs_f64();

    // Real images: n of them, plus n more (when the dataset has them) for the real-vs-real
    // FD, the floor that finite-sample noise puts under FD at this n.
    let n = cfg.n;
    let (indices, baseline) = match pick_indices(dataset.len(), 2 * n, cfg.seed) {
        Some(ix) => (ix, true),
        None => match pick_indices(dataset.len(), n, cfg.seed) {
            Some(ix) => (ix, false),
            None => {
                return Err(EvalError::Config(format!(
                    "the run's dataset has only {} items; use --n {} or fewer",
                    dataset.len(),
                    dataset.len()
                )))
            }
        },
    };
    let (real, real_labels) = load_items(dataset.as_ref(), &indices[..n], cfg.seed)?;
    let real_feats = extractor.features_from_slice(&real, [n, c, h, w])?;
    let dim = extractor.dim();
    let real_stats = FeatureStats::from_features(&real_feats, dim)?;
    let fake_stats = FeatureStats::from_features(&fake_feats, dim)?;
    let fd = frechet_distance(&real_stats, &fake_stats)?;
    let fd_real_baseline = if baseline {
        let (real2, _) = load_items(dataset.as_ref(), &indices[n..], cfg.seed)?;
        let f2 = extractor.features_from_slice(&real2, [n, c, h, w])?;
        Some(frechet_distance(
            &real_stats,
            &FeatureStats::from_features(&f2, dim)?,
        )?)
    } else {
        None
    };
    // FID: the same real and generated images in InceptionV3's pool features.
    let t_inception = Instant::now();
    let inception_fid = match &inception {
        Some(net) => {
            on_event(EvalEvent::InceptionReal);
            let real_inception = net.features_from_slice(&real, [n, c, h, w])?;
            Some(frechet_distance(
                &FeatureStats::from_features(&real_inception, INCEPTION_DIM)?,
                &FeatureStats::from_features(&fake_inception, INCEPTION_DIM)?,
            )?)
        }
        None => None,
    };
    let inception_seconds = t_inception.elapsed().as_secs_f64();
    let pr = prdc(&real_feats, &fake_feats, dim, cfg.k)?;
    let class_accuracy = (classes > 0 && info.config.num_classes as i64 == classes).then(|| {
        predicted
            .iter()
            .zip(&labels)
            .filter(|(p, l)| p == l)
            .count() as f64
            / n as f64
    });

    // Exact metrics on gmm data.
    let gmm = match gmm_dataset_for(&run.data, &options) {
        Some(ds) => {
            let ds = ds?;
            let m = ds.mixture();
            let sample_labels = (classes > 0).then_some(labels.as_slice());
            let f = gmm_metrics(m, &fake, sample_labels, None)?;
            let r = gmm_metrics(m, &real, Some(&real_labels), None)?;
            Some(GmmSummary {
                mean_log_density: f.mean_log_density,
                real_mean_log_density: r.mean_log_density,
                log_density_per_dim: f.log_density_per_dim,
                modes_covered: f.modes_covered,
                num_modes: f.mode_counts.len(),
                coverage: f.coverage,
                min_fraction: f.min_fraction,
                mode_counts: f.mode_counts,
                label_agreement: f.label_agreement,
            })
        }
        None => None,
    };

    Ok(EvalReport {
        run: description,
        data: run.data,
        n,
        sampler: format!("{sampler:?}").to_lowercase(),
        steps: cfg.steps,
        cfg: cfg.cfg,
        nag: cfg.nag,
        seed: cfg.seed,
        features: FeaturesUsed {
            path: features_dir.display().to_string(),
            dim,
            held_out_accuracy: info.held_out_accuracy,
        },
        fd,
        fd_real_baseline,
        precision: pr.precision,
        recall: pr.recall,
        density: pr.density,
        coverage: pr.coverage,
        k: pr.k,
        class_accuracy,
        gmm,
        inception_fid,
        inception: cfg.inception.as_ref().map(|p| p.display().to_string()),
        seconds: EvalSeconds {
            sampling: sample_seconds,
            total: start.elapsed().as_secs_f64(),
            inception_fid: cfg.inception.as_ref().map(|_| inception_seconds),
        },
    })
}
