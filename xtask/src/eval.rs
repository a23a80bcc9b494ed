//! `cargo xtask eval`: sample quality of a trained run.
//!
//! Samples `--n` images from the run's EMA model (labels cycling through the classes) with the
//! chosen guidance, draws `--n` real images from the run's dataset, and compares them in the
//! feature space of the dataset's classifier ([`nag_train::metrics::features`]): Fréchet
//! distance, k-NN precision / recall, density / coverage, and the classifier's accuracy on the
//! samples' conditioning labels. On `gmm` data it adds the exact mean log-density of the samples
//! under the data mixture and the per-mode coverage ([`nag_train::metrics::gmm_metrics`]).
//!
//! With `--inception PATH` (pytorch-fid's FID weights, `pt_inception-2015-12-05-6726825d.pth`
//! or a safetensors conversion) it also reports FID: the Fréchet distance between the 2048-d
//! InceptionV3 pool features of the same real and generated images
//! ([`nag_train::metrics::inception`]). Without it, `inception_fid` is null.
//!
//! With `--samples S.npz --ref REF.npz --inception W` instead of a run it is OpenAI's ADM
//! evaluator, the numbers papers report ([`crate::eval_adm`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use clap::Args;
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_core::guidance::Guidance;
use nag_models::dit::TimeInput;
use nag_train::data::{open_dataset, stream_rng, DataOptions, Dataset};
use nag_train::generate::{load_model, SampleConfig, Sampled, SamplerKind};
use nag_train::metrics::fd::{frechet_distance, FeatureStats};
use nag_train::metrics::features::{feature_model_exists, FeatureExtractor, FeatureTrainConfig};
use nag_train::metrics::gmm_metrics::{gmm_dataset_for, gmm_metrics, GmmReport};
use nag_train::metrics::inception::{InceptionV3, INCEPTION_DIM};
use nag_train::metrics::prdc::{prdc, Prdc};
use serde_json::{json, Value};

/// Images sampled per batch without --batch.
const DEFAULT_SAMPLE_BATCH: usize = 250;

/// Arguments of `cargo xtask eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Run directory of `cargo xtask train` (reads config.json and ema.safetensors).
    #[arg(long, required_unless_present_any = ["model", "samples"], conflicts_with = "model")]
    pub run: Option<PathBuf>,
    /// ADM evaluator: the sample batch (`np.savez(path, arr_0=uint8 [N,H,W,3])`; with `mu`,
    /// `sigma`, `mu_s`, `sigma_s` its FID statistics are read from it). Needs --ref and
    /// --inception; prints Inception Score, FID, sFID, Precision, Recall.
    #[arg(long, requires = "reference", conflicts_with_all = ["run", "model"])]
    pub samples: Option<PathBuf>,
    /// ADM evaluator: the reference batch (e.g. VIRTUAL_imagenet256_labeled.npz: arr_0 for
    /// precision / recall, mu/sigma/mu_s/sigma_s for FID / sFID).
    #[arg(long = "ref", id = "reference", requires = "samples")]
    pub reference: Option<PathBuf>,
    /// ADM evaluator: feed pixels as the TF graph does, (v − 128)/128, instead of pytorch-fid's
    /// v/255·2 − 1.
    #[arg(long, requires = "samples")]
    pub tf_input_scale: bool,
    /// The exact gmm model instead of a run (`--model oracle`; its feature classifier goes to
    /// `runs/features-<data>` unless `--features` is given).
    #[command(flatten)]
    pub oracle: crate::oracle_args::OracleOpts,
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
    #[arg(long)]
    pub sampler: Option<String>,
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
    /// Seed of the sampling noise and of the choice of real images.
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
    /// Images sampled per batch (the noise seed of batch b is derived from --seed and b;
    /// default 250); with --samples, images per InceptionV3 forward (default 16).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// What eval needs from the run's `config.json`.
#[derive(Debug, Clone)]
struct RunData {
    data: String,
    image_size: Option<usize>,
    seed: u64,
}

fn read_run(run: &Path) -> Result<RunData> {
    if !run.is_dir() {
        bail!("--run {}: no such run directory", run.display());
    }
    let path = run.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is {} a `cargo xtask train` run?)",
            path.display(),
            run.display()
        )
    })?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let data = v
        .get("data")
        .and_then(Value::as_str)
        .with_context(|| format!("{}: no \"data\" entry", path.display()))?
        .to_string();
    let image_size = v
        .get("image_size")
        .and_then(Value::as_u64)
        .map(|s| s as usize);
    let seed = v.get("seed").and_then(Value::as_u64).unwrap_or(0);
    if !run.join("ema.safetensors").is_file() {
        bail!(
            "{} has no ema.safetensors: is it a finished `cargo xtask train` run (it is written at each checkpoint)?",
            run.display()
        );
    }
    Ok(RunData {
        data,
        image_size,
        seed,
    })
}

/// Runs `cargo xtask eval`.
pub fn run(args: &EvalArgs) -> Result<()> {
    if args.samples.is_some() {
        return crate::eval_adm::run(args);
    }
    if args.k == 0 {
        bail!("--k must be at least 1");
    }
    if args.n <= args.k.max(1) {
        bail!(
            "--n must be greater than --k = {} (FD needs at least 2 samples; use a few hundred or more for stable numbers)",
            args.k
        );
    }
    if args.batch == Some(0) {
        bail!("--batch must be at least 1");
    }
    let run = match &args.run {
        Some(dir) => read_run(dir)?,
        None => RunData {
            data: args.oracle.data.clone(),
            image_size: None,
            seed: 0,
        },
    };
    let spec = DeviceSpec::parse(&args.device)?;
    let report = dispatch(spec, Task { args, run: &run })??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

struct Task<'a> {
    args: &'a EvalArgs,
    run: &'a RunData,
}

const DOMAIN_REAL: u64 = 0x4556_414C; // "EVAL"

/// SplitMix64: a small deterministic generator for choosing real items.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let z = (self.0 ^ (self.0 >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..hi` (`hi > lo`; the modulo bias is below 2⁻⁴⁰ for any dataset size).
    fn below(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

/// `count` distinct indices of `0..len` (a partial Fisher–Yates shuffle, or rejection of
/// repeats for a small share of a large dataset), or `None` if `len < count`.
pub(crate) fn pick_indices(len: usize, count: usize, seed: u64) -> Option<Vec<usize>> {
    if len < count {
        return None;
    }
    let mut rng = SplitMix(seed ^ DOMAIN_REAL);
    if count.saturating_mul(4) >= len {
        let mut all: Vec<usize> = (0..len).collect();
        for i in 0..count {
            let j = rng.below(i, len);
            all.swap(i, j);
        }
        all.truncate(count);
        return Some(all);
    }
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let i = rng.below(0, len);
        if seen.insert(i) {
            out.push(i);
        }
    }
    Some(out)
}

/// Real items `indices` as one flat array and their labels.
pub(crate) fn load_items(
    dataset: &dyn Dataset,
    indices: &[usize],
    seed: u64,
) -> Result<(Vec<f32>, Vec<i64>)> {
    let mut x = Vec::new();
    let mut y = Vec::with_capacity(indices.len());
    for &i in indices {
        let item = dataset.item(i, &mut stream_rng(seed, DOMAIN_REAL, 1 + i as u64))?;
        x.extend(item.x);
        y.push(item.y);
    }
    Ok((x, y))
}

impl BackendTask for Task<'_> {
    type Output = Result<Value>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Value> {
        let (args, run) = (self.args, self.run);
        let start = Instant::now();
        let oracle = args.oracle.build(args.seed, "--run")?;
        let net = match (&args.run, &oracle) {
            (Some(dir), _) => {
                let model_path = dir.join("ema.safetensors");
                Some(
                    load_model::<B::InnerBackend>(&model_path, &device)
                        .with_context(|| format!("loading {}", model_path.display()))?,
                )
            }
            (None, _) => None,
        };
        // What is sampled, its item shape, classes, and whether it is a DDPM model.
        let (sampled, [mc_c, mc_h, mc_w], num_classes, ddpm) = match (&net, &oracle) {
            (Some(m), _) => {
                let mc = m.config();
                (
                    Sampled::Network(m),
                    [mc.in_channels, mc.input_size, mc.input_size],
                    mc.num_classes,
                    mc.time_input == TimeInput::DdpmIndex,
                )
            }
            (None, Some((o, gmm))) => (
                Sampled::Oracle {
                    oracle: o,
                    shape: gmm.shape(),
                    device: device.clone(),
                },
                gmm.shape(),
                o.num_classes(),
                matches!(o.schedule(), nag_core::schedule::Schedule::Ddpm(_)),
            ),
            (None, None) => bail!("give --run RUN_DIR or --model oracle"),
        };
        let inception = match &args.inception {
            Some(path) => Some(
                InceptionV3::<B::InnerBackend>::load(path, &device).with_context(|| {
                    format!("loading the InceptionV3 weights {}", path.display())
                })?,
            ),
            None => None,
        };

        let options = DataOptions {
            seed: run.seed,
            image_size: run.image_size,
            ..DataOptions::default()
        };
        let dataset = open_dataset(&run.data, &options)
            .with_context(|| format!("opening the run's dataset '{}'", run.data))?;
        let [c, h, w] = dataset.shape();
        if [c, h, w] != [mc_c, mc_h, mc_w] {
            bail!(
                "the run's dataset '{}' has items [{c}, {h}, {w}] but the model makes [{mc_c}, {mc_h}, {mc_w}]",
                run.data
            );
        }
        if inception.is_some() {
            InceptionV3::<B::InnerBackend>::check_input([1, c, h, w]).with_context(|| {
                format!(
                    "--inception: the run's dataset '{}' has items [{c}, {h}, {w}]",
                    run.data
                )
            })?;
        }

        // The feature classifier: given, found in the run, or trained there now.
        let features_dir = args.features.clone().unwrap_or_else(|| match &args.run {
            Some(dir) => dir.join("features"),
            None => PathBuf::from(format!("runs/features-{}", run.data)),
        });
        if !feature_model_exists(&features_dir) {
            if args.features.is_some() {
                bail!(
                    "--features {}: no feature classifier there (train one: cargo xtask features train --data {} --out {})",
                    features_dir.display(),
                    run.data,
                    features_dir.display()
                );
            }
            eprintln!(
                "no feature classifier in {}: training one on the run's dataset now (saved there for later evals)",
                features_dir.display()
            );
            let cfg = FeatureTrainConfig {
                data: run.data.clone(),
                image_size: run.image_size,
                seed: run.seed,
                ..FeatureTrainConfig::default()
            };
            crate::features::train_and_report::<B>(&cfg, &features_dir, &device)?;
        }
        let extractor = FeatureExtractor::<B::InnerBackend>::load(&features_dir, &device)
            .with_context(|| {
                format!("loading the feature classifier {}", features_dir.display())
            })?;
        let info = extractor.info().clone();
        if info.data != run.data || info.data_seed != run.seed {
            eprintln!(
                "warning: the feature classifier was trained on '{}' (seed {}), the run uses '{}' (seed {})",
                info.data, info.data_seed, run.data, run.seed
            );
        }

        // Generated samples, labels cycling through the classes.
        let sampler = match &args.sampler {
            Some(s) => SamplerKind::parse(s)?,
            None if ddpm => SamplerKind::Ddpm,
            None => SamplerKind::Sde,
        };
        let classes = num_classes as i64;
        let labels: Vec<i64> = (0..args.n as i64)
            .map(|i| if classes > 0 { i % classes } else { 0 })
            .collect();
        let guidance = Guidance::cfg_nag(args.cfg, args.nag);
        let t_sample = Instant::now();
        let mut fake = Vec::with_capacity(args.n * c * h * w);
        let mut fake_feats = Vec::with_capacity(args.n * extractor.dim());
        let mut predicted = Vec::with_capacity(args.n);
        let mut fake_inception = Vec::new();
        for (b, chunk) in labels
            .chunks(args.batch.unwrap_or(DEFAULT_SAMPLE_BATCH))
            .enumerate()
        {
            let cfg = SampleConfig {
                sampler,
                steps: args.steps,
                eta: args.eta,
                seed: args
                    .seed
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(b as u64),
                path: match &oracle {
                    Some(_) if !ddpm => args.oracle.objective.clone(),
                    _ => args.path.clone(),
                },
                clip_x0: !args.no_clip && SampleConfig::clip_for_channels(mc_c),
                threads: DeviceSpec::parse(&args.device)?.concurrent_batches(),
                variance: nag_train::sampling::FixedVariance::default(),
            };
            let x: Tensor<B::InnerBackend, 4> = sampled.generate(chunk, guidance, &cfg, None)?;
            let values: Vec<f32> = x.to_data().iter::<f32>().collect();
            if values.iter().any(|v| !v.is_finite()) {
                bail!("the samples contain NaN/inf (batch {b}); no metrics computed");
            }
            if let Some(net) = &inception {
                fake_inception.extend(net.features(x.clone())?);
            }
            let (f, p) = extractor.features_and_classes(x)?;
            fake.extend(values);
            fake_feats.extend(f);
            predicted.extend(p);
            eprint!(
                "\rsampled {}/{} ({:.0}s)   ",
                fake_feats.len() / extractor.dim(),
                args.n,
                t_sample.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
        eprintln!();
        let sample_seconds = t_sample.elapsed().as_secs_f64();

        // Real images: n of them, plus n more (when the dataset has them) for the real-vs-real
        // FD, the floor that finite-sample noise puts under FD at this n.
        let n = args.n;
        let (indices, baseline) = match pick_indices(dataset.len(), 2 * n, args.seed) {
            Some(ix) => (ix, true),
            None => match pick_indices(dataset.len(), n, args.seed) {
                Some(ix) => (ix, false),
                None => bail!(
                    "the run's dataset has only {} items; use --n {} or fewer",
                    dataset.len(),
                    dataset.len()
                ),
            },
        };
        let (real, real_labels) = load_items(dataset.as_ref(), &indices[..n], args.seed)?;
        let real_feats = extractor.features_from_slice(&real, [n, c, h, w])?;
        let dim = extractor.dim();
        let real_stats = FeatureStats::from_features(&real_feats, dim)?;
        let fake_stats = FeatureStats::from_features(&fake_feats, dim)?;
        let fd = frechet_distance(&real_stats, &fake_stats)?;
        let fd_baseline = if baseline {
            let (real2, _) = load_items(dataset.as_ref(), &indices[n..], args.seed)?;
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
                eprintln!("InceptionV3 features of the real images, then the 2048-d FID");
                let real_inception = net.features_from_slice(&real, [n, c, h, w])?;
                Some(frechet_distance(
                    &FeatureStats::from_features(&real_inception, INCEPTION_DIM)?,
                    &FeatureStats::from_features(&fake_inception, INCEPTION_DIM)?,
                )?)
            }
            None => None,
        };
        let inception_seconds = t_inception.elapsed().as_secs_f64();
        let pr: Prdc = prdc(&real_feats, &fake_feats, dim, args.k)?;
        let class_accuracy =
            (classes > 0 && info.config.num_classes as i64 == classes).then(|| {
                predicted
                    .iter()
                    .zip(&labels)
                    .filter(|(p, l)| p == l)
                    .count() as f64
                    / n as f64
            });

        // Exact metrics on gmm data.
        let gmm: Option<(GmmReport, GmmReport)> = match gmm_dataset_for(&run.data, &options) {
            Some(ds) => {
                let ds = ds?;
                let m = ds.mixture();
                let sample_labels = (classes > 0).then_some(labels.as_slice());
                let fake_report = gmm_metrics(m, &fake, sample_labels, None)?;
                let real_report = gmm_metrics(m, &real, Some(&real_labels), None)?;
                Some((fake_report, real_report))
            }
            None => None,
        };

        let mut report = json!({
            "run": args.run.as_ref().map_or_else(
                || format!("oracle ({}, error {}, NAG form {})", args.oracle.data, args.oracle.oracle_error, args.oracle.nag_form),
                |r| r.display().to_string()
            ),
            "data": run.data,
            "n": n,
            "sampler": format!("{sampler:?}").to_lowercase(),
            "steps": args.steps,
            "cfg": args.cfg,
            "nag": args.nag,
            "seed": args.seed,
            "features": {
                "path": features_dir.display().to_string(),
                "dim": dim,
                "held_out_accuracy": info.held_out_accuracy,
            },
            "fd": fd,
            "fd_real_baseline": fd_baseline,
            "precision": pr.precision,
            "recall": pr.recall,
            "density": pr.density,
            "coverage": pr.coverage,
            "k": pr.k,
            "class_accuracy": class_accuracy,
            "gmm": Value::Null,
            "inception_fid": inception_fid,
            "seconds": { "sampling": sample_seconds, "total": start.elapsed().as_secs_f64() },
        });
        if let Some(path) = &args.inception {
            report["inception"] = json!(path.display().to_string());
            report["seconds"]["inception_fid"] = json!(inception_seconds);
        }
        if let Some((f, r)) = gmm {
            report["gmm"] = json!({
                "mean_log_density": f.mean_log_density,
                "real_mean_log_density": r.mean_log_density,
                "log_density_per_dim": f.log_density_per_dim,
                "modes_covered": f.modes_covered,
                "num_modes": f.mode_counts.len(),
                "coverage": f.coverage,
                "min_fraction": f.min_fraction,
                "mode_counts": f.mode_counts,
                "label_agreement": f.label_agreement,
            });
        }
        Ok(report)
    }
}

fn print_table(r: &Value) {
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "eval {}: {} samples vs {} real of '{}', {} {} steps, CFG {}, NAG {}, seed {}",
        r["run"].as_str().unwrap_or(""),
        r["n"],
        r["n"],
        r["data"].as_str().unwrap_or(""),
        r["sampler"].as_str().unwrap_or(""),
        r["steps"],
        r["cfg"],
        r["nag"],
        r["seed"]
    );
    println!(
        "features: {} ({}-d classifier, held-out accuracy {:.1}%)",
        r["features"]["path"].as_str().unwrap_or(""),
        r["features"]["dim"],
        100.0
            * r["features"]["held_out_accuracy"]
                .as_f64()
                .unwrap_or(f64::NAN)
    );
    println!("{:<28} {:>12}", "metric", "value");
    let baseline = r["fd_real_baseline"]
        .as_f64()
        .map(|b| format!("   (real vs real: {b:.4})"))
        .unwrap_or_default();
    println!(
        "{:<28} {:>12.4}{baseline}",
        "FD (classifier features)",
        f("fd")
    );
    if let Some(fid) = r["inception_fid"].as_f64() {
        println!("{:<28} {:>12.4}", "FID (InceptionV3)", fid);
    }
    let k = r["k"].as_u64().unwrap_or(3);
    println!(
        "{:<28} {:>12.4}",
        format!("precision (k={k})"),
        f("precision")
    );
    println!("{:<28} {:>12.4}", format!("recall (k={k})"), f("recall"));
    println!("{:<28} {:>12.4}", "density", f("density"));
    println!("{:<28} {:>12.4}", "coverage", f("coverage"));
    if let Some(a) = r["class_accuracy"].as_f64() {
        println!("{:<28} {:>12.4}", "class accuracy of samples", a);
    }
    let g = &r["gmm"];
    if !g.is_null() {
        println!(
            "{:<28} {:>12.2}   (real: {:.2}; nats, d = {})",
            "gmm mean log-density",
            g["mean_log_density"].as_f64().unwrap_or(f64::NAN),
            g["real_mean_log_density"].as_f64().unwrap_or(f64::NAN),
            (g["mean_log_density"].as_f64().unwrap_or(0.0)
                / g["log_density_per_dim"].as_f64().unwrap_or(1.0))
            .round()
        );
        println!(
            "{:<28} {:>12}   (modes with ≥ {:.1}% of samples)",
            "gmm mode coverage",
            format!("{}/{}", g["modes_covered"], g["num_modes"]),
            100.0 * g["min_fraction"].as_f64().unwrap_or(0.0)
        );
        if let Some(a) = g["label_agreement"].as_f64() {
            println!("{:<28} {:>12.4}", "gmm mode = label", a);
        }
        println!("{:<28} {}", "gmm mode histogram", g["mode_counts"]);
    }
    println!(
        "sampling {:.0}s, total {:.0}s",
        r["seconds"]["sampling"].as_f64().unwrap_or(0.0),
        r["seconds"]["total"].as_f64().unwrap_or(0.0)
    );
}
