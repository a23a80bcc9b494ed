//! `sample`, end to end: load a model (a run's EMA weights, a weights file, or the exact gmm
//! model), optionally its Domain Guidance reference and a VAE, sample, and write either a PNG
//! grid (one row per guidance setting with `compare`, labelled) or an `.npz` sample set for the
//! ADM evaluator ([`crate::sample_set`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use clap::builder::ArgPredicate;
use nag_core::guidance::Guidance;
use nag_models::dit::{Dit, DitConfig, DitHints, TimeInput};
use nag_models::vae::Vae;

use crate::data::Dataset;
use crate::generate::{load_model, GenerateError, SampleConfig, Sampled, SamplerKind};
use crate::image::{make_labelled_grid, save_png_grid_with, GridOptions};
use crate::oracle::{OracleChoice, OracleSpec};
use crate::sample_set::{sample_set, LabelMode, SampleSetSpec, SampleSetSummary};
use crate::sampling::FixedVariance;
use crate::vae_codec::decode_latents;

/// The most images a PNG grid holds (every sample is in memory).
pub const MAX_GRID: usize = 4096;
/// The most samples of one `.npz`.
pub const MAX_NPZ: usize = 10_000_000;

/// What is sampled.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A `train` run folder (its `ema.safetensors`).
    Run(PathBuf),
    /// A weights file (`.pt` or `.safetensors`; official DiT/SiT files load as they are).
    Weights {
        /// The file.
        path: PathBuf,
        /// `dit` (DDPM index clock) or `sit` (SiT clock).
        kind: String,
        /// Attention heads (default: the standard count for the hidden size).
        heads: Option<usize>,
    },
    /// The exact model of the built-in mixture data.
    Oracle(OracleSpec),
}

/// Where the samples go.
#[derive(Debug, Clone)]
pub enum SampleOutput {
    /// A PNG grid; with `compare`, rows none / CFG / NAG / CFG+NAG from the same seeds, labelled.
    Grid {
        /// The `.png` file.
        path: PathBuf,
        /// One row per guidance setting.
        compare: bool,
    },
    /// An `.npz` for the ADM evaluator (`arr_0` uint8 `[N, H, W, 3]`) and its labels, written
    /// in batches, resumable.
    Npz {
        /// The `.npz` file.
        path: PathBuf,
        /// The same count per class instead of i.i.d. uniform labels.
        balanced_labels: bool,
    },
}

/// Options of [`sample_images`]: the model, where the samples go, and how they are drawn.
#[derive(Debug, Clone)]
pub struct SampleImagesConfig {
    /// The model.
    pub model: ModelSource,
    /// Grid or `.npz`.
    pub output: SampleOutput,
    /// Batch chunks evaluated concurrently (does not change the samples).
    pub threads: usize,
    /// Sampler, guidance, count, seed.
    pub options: SampleOptions,
}

/// Which model `xtask sample` draws from (its flags besides [`SampleOptions`]).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct SampleModelArgs {
    /// Run directory of `cargo xtask train` (reads its EMA weights).
    #[arg(long, conflicts_with_all = ["weights", "model"])]
    pub run: Option<PathBuf>,
    /// The exact gmm model instead of a network.
    #[command(flatten)]
    pub oracle: OracleChoice,
    /// Weights file instead of a run: .pt / .safetensors (official DiT/SiT files load as they are).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// With --weights: dit (DDPM index clock) or sit (SiT clock).
    #[arg(long, default_value = "dit")]
    pub kind: String,
    /// With --weights: attention heads (default: the standard count for the hidden size).
    #[arg(long, value_name = "N")]
    pub heads: Option<usize>,
}

impl SampleModelArgs {
    /// `--model oracle`, else `--run`, else `--weights`.
    pub fn source(&self) -> Result<ModelSource, SampleImagesError> {
        if let Some(spec) = self.oracle.chosen("--run/--weights")? {
            return Ok(ModelSource::Oracle(spec.clone()));
        }
        match (&self.run, &self.weights) {
            (Some(run), _) => Ok(ModelSource::Run(run.clone())),
            (None, Some(path)) => Ok(ModelSource::Weights {
                path: path.clone(),
                kind: self.kind.clone(),
                heads: self.heads,
            }),
            (None, None) => bad("give --run RUN_DIR or --weights FILE".into()),
        }
    }
}

/// Where `xtask sample` writes (its flags besides [`SampleOptions`]).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct SampleOutputArgs {
    /// Output PNG grid, a .png file (default: <run>/samples.png or <run>/compare.png).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the samples for the ADM evaluator instead of a grid: an .npz with only `arr_0`,
    /// uint8 [N, H, W, 3] (DiT's sample_ddp.py format), plus `<stem>_labels.npy`. Runs in
    /// batches of --batch with a progress bar and resumes an interrupted run (same options).
    #[arg(long, conflicts_with = "compare")]
    pub npz: Option<PathBuf>,
    /// With --npz: the same number of samples per class (label i = i mod classes) instead of
    /// i.i.d. uniform labels as DiT's sample_ddp.py draws them.
    #[arg(long, conflicts_with = "class")]
    pub balanced_labels: bool,
    /// One image with rows: no guidance, CFG, NAG, CFG+NAG (same seeds), with the --cfg and
    /// --nag given (defaults 4 and 3 here); each row's guidance and each column's class are
    /// written in the image.
    #[arg(long)]
    pub compare: bool,
}

impl SampleOutputArgs {
    /// `--npz`, else the grid at `--out` (default: `samples.png` or `compare.png` in `run`,
    /// or in the working folder).
    pub fn output(&self, run: Option<&Path>) -> SampleOutput {
        match &self.npz {
            Some(path) => SampleOutput::Npz {
                path: path.clone(),
                balanced_labels: self.balanced_labels,
            },
            None => {
                let name = if self.compare {
                    "compare.png"
                } else {
                    "samples.png"
                };
                SampleOutput::Grid {
                    path: (self.out.clone())
                        .unwrap_or_else(|| run.unwrap_or(Path::new(".")).join(name)),
                    compare: self.compare,
                }
            }
        }
    }
}

/// How samples are drawn: `cargo xtask sample`'s sampling flags (clap, and `--config
/// FILE.toml` by the same names). With `--compare` (a flag of the CLI's own) the defaults of
/// `--cfg`, `--nag` and `--n` change, as their help says.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct SampleOptions {
    /// DDPM: fixed variance of models without variance channels, large (β_t) or small (β̃_t).
    #[arg(long, default_value = "large", value_parser = crate::generate::parse_variance)]
    pub variance: FixedVariance,
    /// Sampler: ddpm, ddim, sde or ode (default: ddpm for DiT, sde for SiT).
    #[arg(long, value_enum, ignore_case = true, hide_possible_values = true)]
    pub sampler: Option<SamplerKind>,
    /// Sampling steps (ode: 0 = adaptive dopri5).
    #[arg(long, default_value_t = 250)]
    pub steps: usize,
    /// DDIM η.
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// CFG scale (1 = off; with --compare the default is 4).
    #[arg(
        long,
        default_value_t = 1.0,
        default_value_if("compare", ArgPredicate::IsPresent, Some("4"))
    )]
    pub cfg: f64,
    /// NAG weight (0 = off; with --compare the default is 3).
    #[arg(
        long,
        default_value_t = 0.0,
        default_value_if("compare", ArgPredicate::IsPresent, Some("3"))
    )]
    pub nag: f64,
    /// Number of samples (per row with --compare, where the default is one per class, at
    /// least 8).
    #[arg(
        long,
        default_value = "64",
        default_value_if("compare", ArgPredicate::IsPresent, None)
    )]
    pub n: Option<usize>,
    /// Class of every sample (default: cycle through the classes).
    #[arg(long)]
    pub class: Option<i64>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A diffusers VAE folder (e.g. sd-vae-ft-ema): decode latent samples to images,
    /// `decode(latent / scaling_factor)`, for the grid and the .npz.
    #[arg(long, value_name = "DIR")]
    pub vae: Option<PathBuf>,
    /// With --npz: samples per batch (does not change the images); also the VAE's decode batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Domain Guidance: the pre-trained model (a run folder or weights file) this one was
    /// fine-tuned from; CFG's unconditional branch comes from it:
    /// `pre(t,∅) + s·(ft(t,c) − pre(t,∅)) [+ w·(ft(t,c) − ft(∅t,c))]` with --cfg S [--nag W].
    #[arg(long, value_name = "PRETRAINED", conflicts_with = "compare")]
    pub dog: Option<PathBuf>,
    /// Path of an interpolant (SiT) model: linear, gvp or vp.
    #[arg(long, default_value = "linear")]
    pub path: String,
    /// DDPM/DDIM: do not clamp x̂0 to [−1, 1] (clamping is on for pixel models, off for
    /// 4-channel latent models).
    #[arg(long)]
    pub no_clip: bool,
}

/// Progress of [`sample_images`].
#[derive(Debug, Clone)]
pub enum SampleEvent {
    /// A weights file was loaded (format and entry in `info`).
    Loaded {
        /// The file.
        path: PathBuf,
        /// What was read.
        info: String,
        /// The file has no null-timestep vector (NAG needs fine-tuning first).
        null_timestep_missing: bool,
    },
    /// The VAE is loaded.
    Vae {
        /// Its weights file.
        weights: PathBuf,
        /// Its latent scaling factor.
        scaling_factor: f64,
    },
    /// The grid's rows (with `compare`), in order.
    Rows(Vec<String>),
    /// A sampler step of the current row.
    Step {
        /// Row index.
        row: usize,
        /// Step index within the row.
        step: usize,
        /// Steps per row.
        steps: usize,
    },
    /// One row of the grid is sampled.
    RowDone {
        /// Its name ("images" without `compare`).
        name: String,
        /// Samples.
        n: usize,
        /// Wall time.
        seconds: f64,
    },
    /// An `.npz` set starts.
    SetStart {
        /// Samples.
        n: usize,
        /// Per batch.
        batch: usize,
        /// Label mode, as a name.
        labels: String,
    },
    /// Samples written to the `.npz` so far (`resumed` of them from an earlier run).
    SetProgress {
        /// Written.
        done: usize,
        /// Found from an earlier run.
        resumed: usize,
    },
}

/// What [`sample_images`] wrote.
#[derive(Debug, Clone)]
pub enum SampleOutcome {
    /// The grid file.
    Grid(PathBuf),
    /// The sample set.
    Npz(SampleSetSummary),
}

/// Errors of the `sample` pipeline.
pub type SampleImagesError = crate::PipelineError;

fn bad<T>(msg: String) -> Result<T, SampleImagesError> {
    Err(SampleImagesError::Config(msg))
}

/// A network from a `train` run folder (its EMA weights) or a weights file (`kind`, `heads`
/// apply).
fn load_network<B: Backend>(
    path: &Path,
    kind: &str,
    heads: Option<usize>,
    device: &B::Device,
    on_event: &mut dyn FnMut(SampleEvent),
) -> Result<Dit<B>, SampleImagesError> {
    if !path.exists() {
        return bad(format!(
            "{}: no such file or folder (give a `cargo xtask train` run folder or a weights file)",
            path.display()
        ));
    }
    if path.is_dir() {
        let run = path;
        let path = run.join("ema.safetensors");
        if !path.is_file() {
            return bad(format!(
                "{} has no ema.safetensors: is it a finished `cargo xtask train` run (it is written at each checkpoint)?",
                run.display()
            ));
        }
        return load_model::<B>(&path, device).map_err(|e| {
            SampleImagesError::Config(format!(
                "loading {}: {}",
                path.display(),
                crate::error_chain(&e)
            ))
        });
    }
    let weights = path;
    let loading = |e: &dyn std::error::Error| {
        SampleImagesError::Config(format!(
            "loading {}: {}",
            weights.display(),
            crate::error_chain(e)
        ))
    };
    let (sd, info) = nag_models::checkpoint::load_state_dict(weights, &Default::default())
        .map_err(|e| loading(&e))?;
    let hints = match kind.to_ascii_lowercase().as_str() {
        "dit" => DitHints::default(),
        "sit" => DitHints::sit(),
        k => return bad(format!("--kind must be dit or sit (got '{k}')")),
    };
    let hints = DitHints {
        num_heads: heads.or(hints.num_heads),
        ..hints
    };
    let cfg = DitConfig::infer_from_state_dict(&sd, &hints).map_err(GenerateError::from)?;
    let (model, report) = cfg
        .init::<B>(device)
        .map_err(GenerateError::from)?
        .load_state_dict(&sd)
        .map_err(GenerateError::from)?;
    on_event(SampleEvent::Loaded {
        path: weights.to_path_buf(),
        info: describe(&info),
        null_timestep_missing: report.null_timestep_initialised,
    });
    Ok(model)
}

/// A weights file's source in a few words: format, the entry the weights came from, a
/// stripped prefix and dtype conversions.
fn describe(info: &nag_models::checkpoint::SourceInfo) -> String {
    let mut parts = vec![format!("{:?}", info.format)];
    if let Some(key) = &info.key {
        parts.push(format!("entry '{key}'"));
    }
    if let Some(prefix) = &info.stripped_prefix {
        parts.push(format!("prefix '{prefix}' removed"));
    }
    for (dtype, count) in &info.converted {
        parts.push(format!("{count} {dtype} tensors as f32"));
    }
    parts.join(", ")
}

/// What decides the images besides the sampler settings: the weights (path and size) and the
/// VAE, for the resume check of an `.npz`.
fn identity(cfg: &SampleImagesConfig) -> Result<serde_json::Value, SampleImagesError> {
    let file = |p: &Path| -> Result<serde_json::Value, SampleImagesError> {
        let len = std::fs::metadata(p)
            .map_err(|e| SampleImagesError::Config(format!("reading {}: {e}", p.display())))?
            .len();
        Ok(serde_json::json!({ "path": p.display().to_string(), "bytes": len }))
    };
    let (weights, kind) = match &cfg.model {
        ModelSource::Run(run) => (file(&run.join("ema.safetensors"))?, "dit"),
        ModelSource::Weights { path, kind, .. } => (file(path)?, kind.as_str()),
        ModelSource::Oracle(spec) => (
            serde_json::to_value(spec).map_err(|e| SampleImagesError::Config(e.to_string()))?,
            "dit",
        ),
    };
    Ok(serde_json::json!({
        "weights": weights,
        "kind": kind,
        "vae": cfg.options.vae.as_ref().map(|v| v.display().to_string()),
        "dog": cfg.options.dog.as_ref().map(|v| v.display().to_string()),
    }))
}

/// The guidance rows: with `compare` none / CFG / NAG / CFG+NAG (the CFG rows only for a
/// class-conditional model), named as the grid labels them; else one unnamed row.
fn rows(cfg: &SampleImagesConfig, classes: usize) -> Vec<(String, Guidance)> {
    let (s, w) = (cfg.options.cfg, cfg.options.nag);
    match cfg.output {
        SampleOutput::Grid { compare: true, .. } => {
            let mut r = vec![("none".to_string(), Guidance::none())];
            if classes > 0 {
                r.push((format!("CFG {s}"), Guidance::cfg(s)));
            }
            r.push((format!("NAG {w}"), Guidance::nag(w)));
            if classes > 0 {
                r.push((format!("CFG {s} + NAG {w}"), Guidance::cfg_nag(s, w)));
            }
            r
        }
        _ => {
            let mut g = Guidance::cfg_nag(s, w);
            g.dog = cfg.options.dog.is_some();
            vec![(String::new(), g)]
        }
    }
}

/// Samples per `cfg` and writes the grid or the `.npz`; reports progress through `on_event`.
/// Bad options are refused before any model is loaded; nothing is written when a sample is
/// not finite.
pub fn sample_images<B: Backend>(
    cfg: &SampleImagesConfig,
    device: &B::Device,
    mut on_event: impl FnMut(SampleEvent),
) -> Result<SampleOutcome, SampleImagesError> {
    for (flag, v) in [
        ("--cfg", cfg.options.cfg),
        ("--nag", cfg.options.nag),
        ("--eta", cfg.options.eta),
    ] {
        if !v.is_finite() {
            return bad(format!("{flag} {v}: must be a finite number"));
        }
    }
    let compare = matches!(cfg.output, SampleOutput::Grid { compare: true, .. });
    if cfg.options.batch == 0 {
        return bad("--batch must be at least 1".into());
    }
    // The model: a network, or the oracle.
    let oracle;
    let (net, shape) = match &cfg.model {
        ModelSource::Oracle(spec) => {
            let (built, gmm) = spec.build(cfg.options.seed)?;
            oracle = Some(built);
            (None, gmm.shape())
        }
        ModelSource::Run(path) => {
            oracle = None;
            let net = load_network::<B>(path, "dit", None, device, &mut on_event)?;
            let mc = net.config();
            let shape = [mc.in_channels, mc.input_size, mc.input_size];
            (Some(net), shape)
        }
        ModelSource::Weights { path, kind, heads } => {
            oracle = None;
            let net = load_network::<B>(path, kind, *heads, device, &mut on_event)?;
            let mc = net.config();
            let shape = [mc.in_channels, mc.input_size, mc.input_size];
            (Some(net), shape)
        }
    };
    let (kind, heads) = match &cfg.model {
        ModelSource::Weights { kind, heads, .. } => (kind.as_str(), *heads),
        _ => ("dit", None),
    };
    let reference = match (&cfg.options.dog, &net) {
        (Some(path), Some(_)) => Some(
            load_network::<B>(path, kind, heads, device, &mut on_event).map_err(|e| {
                SampleImagesError::Config(format!(
                    "loading the --dog reference {}: {}",
                    path.display(),
                    crate::error_chain(&e)
                ))
            })?,
        ),
        (Some(_), None) => {
            return bad("--dog needs a network (--run/--weights), not the oracle".into())
        }
        (None, _) => None,
    };
    let (sampled, num_classes, ddpm) = match (&net, &oracle) {
        (Some(net), _) => {
            let sampled = match &reference {
                Some(reference) => Sampled::WithReference {
                    model: net,
                    reference,
                },
                None => Sampled::Network(net),
            };
            let mc = net.config();
            (
                sampled,
                mc.num_classes,
                mc.time_input == TimeInput::DdpmIndex,
            )
        }
        (None, Some(o)) => (
            Sampled::Oracle {
                oracle: o,
                shape,
                device: device.clone(),
            },
            o.num_classes(),
            matches!(o.schedule(), nag_core::schedule::Schedule::Ddpm(_)),
        ),
        (None, None) => unreachable!("one of the two was built above"),
    };
    let sampler = match cfg.options.sampler {
        Some(s) => s,
        None if ddpm => SamplerKind::Ddpm,
        None => SamplerKind::Sde,
    };
    let path = match (&cfg.model, ddpm) {
        (ModelSource::Oracle(spec), false) => spec.objective.clone(),
        _ => cfg.options.path.clone(),
    };
    let sample = SampleConfig {
        sampler,
        steps: cfg.options.steps,
        eta: cfg.options.eta,
        seed: cfg.options.seed,
        path,
        clip_x0: !cfg.options.no_clip && SampleConfig::clip_for_channels(shape[0]),
        threads: cfg.threads,
        variance: cfg.options.variance,
    };
    let classes = num_classes as i64;
    let n = cfg
        .options
        .n
        .unwrap_or(if compare { classes.max(8) as usize } else { 64 });
    if n == 0 {
        return bad("--n must be at least 1".into());
    }
    // A grid holds every sample in memory; an .npz is written in batches but still ends as
    // one file. Refused before any work rather than failing an allocation later.
    let npz = matches!(cfg.output, SampleOutput::Npz { .. });
    if !npz && n > MAX_GRID {
        return bad(format!("--n {n}: a PNG grid holds at most {MAX_GRID} images; write large sample sets with --npz FILE (in batches)"));
    }
    if n > MAX_NPZ {
        return bad(format!(
            "--n {n}: at most {MAX_NPZ} samples per .npz (FID-50K needs 50000)"
        ));
    }
    if let Some(y) = cfg.options.class {
        if !(0..classes).contains(&y) {
            return bad(format!(
                "--class {y} is outside 0..{classes} (the model's classes)"
            ));
        }
    }
    let labels: Vec<i64> = (0..n as i64)
        .map(|i| {
            cfg.options
                .class
                .unwrap_or(if classes > 0 { i % classes } else { 0 })
        })
        .collect();
    let rows = rows(cfg, num_classes);
    if compare {
        on_event(SampleEvent::Rows(
            rows.iter().map(|r| r.0.clone()).collect(),
        ));
    }
    let vae = match &cfg.options.vae {
        Some(dir) => {
            let (vae, source) = Vae::<B>::load(dir, device)?;
            if vae.latent_channels() != shape[0] {
                return bad(format!(
                    "the VAE in {} has {} latent channels but the model makes {}-channel \
                     samples: a latent model needs the VAE it was trained with (DiT/SiT: \
                     sd-vae-ft-ema or -mse, 4 channels)",
                    dir.display(),
                    vae.latent_channels(),
                    shape[0]
                ));
            }
            on_event(SampleEvent::Vae {
                weights: source.weights.clone(),
                scaling_factor: source.config.scaling_factor,
            });
            Some((vae, source.config.scaling_factor))
        }
        None => None,
    };
    let grid_path = match &cfg.output {
        SampleOutput::Npz {
            path,
            balanced_labels,
        } => {
            let labels = if *balanced_labels {
                LabelMode::Balanced
            } else if let Some(y) = cfg.options.class {
                LabelMode::Fixed(y)
            } else {
                LabelMode::Uniform
            };
            let spec = SampleSetSpec {
                n,
                batch: cfg.options.batch,
                labels,
                guidance: rows[0].1,
                identity: identity(cfg)?,
            };
            on_event(SampleEvent::SetStart {
                n,
                batch: cfg.options.batch,
                labels: labels.name(),
            });
            let summary = sample_set(
                &sampled,
                num_classes,
                vae.as_ref().map(|(v, s)| (v, *s)),
                &sample,
                &spec,
                path,
                device,
                &mut |p| {
                    on_event(SampleEvent::SetProgress {
                        done: p.done,
                        resumed: p.resumed,
                    })
                },
            )?;
            return Ok(SampleOutcome::Npz(summary));
        }
        SampleOutput::Grid { path, .. } => path,
    };
    let mut all: Vec<Tensor<B, 4>> = Vec::new();
    for (row, (name, g)) in rows.iter().enumerate() {
        let t0 = Instant::now();
        let x = {
            let mut cb = |info: crate::sampling::StepInfo<B>| {
                on_event(SampleEvent::Step {
                    row,
                    step: info.step + 1,
                    steps: cfg.options.steps,
                })
            };
            sampled.generate(&labels, *g, &sample, Some(&mut cb))?
        };
        on_event(SampleEvent::RowDone {
            name: if name.is_empty() {
                "images".into()
            } else {
                name.clone()
            },
            n,
            seconds: t0.elapsed().as_secs_f64(),
        });
        all.push(x);
    }
    let x = Tensor::cat(all, 0);
    let shape: [usize; 4] = x.dims();
    let values: Vec<f32> = x
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| SampleImagesError::Config(format!("reading the samples: {e:?}")))?;
    if values.iter().any(|v| !v.is_finite()) {
        return bad("the samples contain NaN/inf; nothing was written".into());
    }
    let (values, shape) = match &vae {
        Some((vae, scale)) => {
            let z: Vec<f32> = values.iter().map(|v| v / *scale as f32).collect();
            decode_latents(vae, &z, shape, cfg.options.batch, device, &mut |_| {})?
        }
        None => (values, shape),
    };
    let opts = GridOptions {
        nrow: if compare {
            n
        } else {
            (n as f64).sqrt().ceil() as usize
        },
        padding: 2,
        upscale: if shape[2] <= 32 { 4 } else { 1 },
        first3: shape[1] > 3,
        ..GridOptions::default()
    };
    if compare {
        let row_labels: Vec<String> = rows.into_iter().map(|r| r.0).collect();
        let (col_labels, corner): (Vec<String>, &str) = if classes > 0 {
            (labels.iter().map(i64::to_string).collect(), "class")
        } else {
            (Vec::new(), "")
        };
        make_labelled_grid(&values, shape, &opts, &row_labels, &col_labels, corner)?
            .save_png(grid_path)?;
    } else {
        save_png_grid_with(grid_path, &values, shape, &opts)?;
    }
    Ok(SampleOutcome::Grid(grid_path.clone()))
}
