//! `cargo xtask sample`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use clap::builder::ArgPredicate;
use clap::Args;
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_core::guidance::Guidance;
use nag_models::dit::{Dit, DitHints, TimeInput};
use nag_models::vae::Vae;
use nag_train::data::Dataset;
use nag_train::generate::{load_model, parse_variance, SampleConfig, Sampled, SamplerKind};
use nag_train::image::{make_labelled_grid, save_png_grid_with, GridOptions};
use nag_train::sample_set::{sample_set, LabelMode, SampleSetSpec};
use nag_train::vae_codec::decode_latents;

use crate::progress::Progress;

/// Arguments of `cargo xtask sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Run directory of `cargo xtask train` (reads its EMA weights).
    #[arg(long, conflicts_with_all = ["weights", "model"])]
    pub run: Option<PathBuf>,
    /// The exact gmm model instead of a network.
    #[command(flatten)]
    pub oracle: crate::oracle_args::OracleOpts,
    /// DDPM: fixed variance of models without variance channels, large (β_t) or small (β̃_t).
    #[arg(long, default_value = "large")]
    pub variance: String,
    /// Weights file instead of a run: .pt / .safetensors (official DiT/SiT files load as they are).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// With --weights: dit (DDPM index clock) or sit (SiT clock).
    #[arg(long, default_value = "dit")]
    pub kind: String,
    /// With --weights: attention heads (default: the standard count for the hidden size).
    #[arg(long, value_name = "N")]
    pub heads: Option<usize>,
    /// Sampler: ddpm, ddim, sde or ode (default: ddpm for DiT, sde for SiT).
    #[arg(long)]
    pub sampler: Option<String>,
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
    /// Output PNG grid, a .png file (default: <run>/samples.png or <run>/compare.png).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the samples for the ADM evaluator instead of a grid: an .npz with only `arr_0`,
    /// uint8 [N, H, W, 3] (DiT's sample_ddp.py format), plus `<stem>_labels.npy`. Runs in
    /// batches of --batch with a progress bar and resumes an interrupted run (same options).
    #[arg(long, conflicts_with = "compare")]
    pub npz: Option<PathBuf>,
    /// A diffusers VAE folder (e.g. sd-vae-ft-ema): decode latent samples to images,
    /// `decode(latent / scaling_factor)`, for the grid and the .npz.
    #[arg(long, value_name = "DIR")]
    pub vae: Option<PathBuf>,
    /// With --npz: samples per batch (does not change the images).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Domain Guidance: the pre-trained model (a run folder or weights file) this one was
    /// fine-tuned from; CFG's unconditional branch comes from it:
    /// `pre(t,∅) + s·(ft(t,c) − pre(t,∅)) [+ w·(ft(t,c) − ft(∅t,c))]` with --cfg S [--nag W].
    #[arg(long, value_name = "PRETRAINED", conflicts_with = "compare")]
    pub dog: Option<PathBuf>,
    /// With --npz: the same number of samples per class (label i = i mod classes) instead of
    /// i.i.d. uniform labels as DiT's sample_ddp.py draws them.
    #[arg(long, conflicts_with = "class")]
    pub balanced_labels: bool,
    /// One image with rows: no guidance, CFG, NAG, CFG+NAG (same seeds), with the --cfg and
    /// --nag given (defaults 4 and 3 here); each row's guidance and each column's class are
    /// written in the image.
    #[arg(long)]
    pub compare: bool,
    /// Path of an interpolant (SiT) model: linear, gvp or vp.
    #[arg(long, default_value = "linear")]
    pub path: String,
    /// DDPM/DDIM: do not clamp x̂0 to [−1, 1] (clamping is on for pixel models, off for
    /// 4-channel latent models).
    #[arg(long)]
    pub no_clip: bool,
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

struct Task<'a> {
    args: &'a SampleArgs,
}

fn load<B: Backend>(args: &SampleArgs, device: &B::Device) -> Result<Dit<B>> {
    let Some(path) = args.run.as_ref().or(args.weights.as_ref()) else {
        bail!("give --run RUN_DIR or --weights FILE");
    };
    load_path(path, args, device)
}

/// A network from a `train` run folder (its EMA weights) or a weights file (`--kind`,
/// `--heads` apply).
fn load_path<B: Backend>(path: &Path, args: &SampleArgs, device: &B::Device) -> Result<Dit<B>> {
    if !path.exists() {
        bail!(
            "{}: no such file or folder (give a `cargo xtask train` run folder or a weights file)",
            path.display()
        );
    }
    if path.is_dir() {
        let run = path;
        let path = run.join("ema.safetensors");
        if !path.is_file() {
            bail!(
                "{} has no ema.safetensors: is it a finished `cargo xtask train` run (it is written at each checkpoint)?",
                run.display()
            );
        }
        return load_model::<B>(&path, device)
            .with_context(|| format!("loading {}", path.display()));
    }
    let weights = path;
    let (sd, info) = nag_models::checkpoint::load_state_dict(weights, &Default::default())
        .with_context(|| format!("loading {}", weights.display()))?;
    let hints = match args.kind.to_ascii_lowercase().as_str() {
        "dit" => DitHints::default(),
        "sit" => DitHints::sit(),
        k => bail!("--kind must be dit or sit (got '{k}')"),
    };
    let hints = DitHints {
        num_heads: args.heads.or(hints.num_heads),
        ..hints
    };
    let cfg = nag_models::dit::DitConfig::infer_from_state_dict(&sd, &hints)?;
    let (model, report) = cfg.init::<B>(device)?.load_state_dict(&sd)?;
    eprintln!("loaded {} ({info:?})", weights.display());
    if report.null_timestep_initialised {
        eprintln!("note: no null-timestep vector in the file: NAG needs fine-tuning first");
    }
    Ok(model)
}

impl BackendTask for Task<'_> {
    type Output = Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let args = self.args;
        let (net, oracle, shape) = match args.oracle.build(args.seed, "--run/--weights")? {
            Some((oracle, gmm)) => (None, Some(oracle), gmm.shape()),
            None => {
                let net = load::<B::InnerBackend>(args, &device)?;
                let mc = net.config();
                let shape = [mc.in_channels, mc.input_size, mc.input_size];
                (Some(net), None, shape)
            }
        };
        let reference = match (&args.dog, &net) {
            (Some(path), Some(_)) => Some(
                load_path::<B::InnerBackend>(path, args, &device)
                    .with_context(|| format!("loading the --dog reference {}", path.display()))?,
            ),
            (Some(_), None) => bail!("--dog needs a network (--run/--weights), not the oracle"),
            (None, _) => None,
        };
        let (sampled, num_classes, ddpm) = match (&net, &oracle) {
            (Some(net), _) if reference.is_some() => (
                Sampled::WithReference {
                    model: net,
                    reference: reference.as_ref().expect("checked"),
                },
                net.config().num_classes,
                net.config().time_input == TimeInput::DdpmIndex,
            ),
            (Some(net), _) => (
                Sampled::Network(net),
                net.config().num_classes,
                net.config().time_input == TimeInput::DdpmIndex,
            ),
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
        let sampler = match &args.sampler {
            Some(s) => SamplerKind::parse(s)?,
            None if ddpm => SamplerKind::Ddpm,
            None => SamplerKind::Sde,
        };
        let path = if oracle.is_some() && !ddpm {
            args.oracle.objective.clone()
        } else {
            args.path.clone()
        };
        let cfg = SampleConfig {
            sampler,
            steps: args.steps,
            eta: args.eta,
            seed: args.seed,
            path,
            clip_x0: !args.no_clip && SampleConfig::clip_for_channels(shape[0]),
            threads: DeviceSpec::parse(&args.device)?.concurrent_batches(),
            variance: parse_variance(&args.variance)?,
        };
        let classes = num_classes as i64;
        let n = args.n.unwrap_or(if args.compare {
            classes.max(8) as usize
        } else {
            64
        });
        if n == 0 {
            bail!("--n must be at least 1");
        }
        // A grid holds every sample in memory; an .npz is written in batches but still ends
        // as one file. Refused before any work rather than failing an allocation later.
        const MAX_GRID: usize = 4096;
        const MAX_NPZ: usize = 10_000_000;
        if args.npz.is_none() && n > MAX_GRID {
            bail!("--n {n}: a PNG grid holds at most {MAX_GRID} images; write large sample sets with --npz FILE (in batches)");
        }
        if n > MAX_NPZ {
            bail!("--n {n}: at most {MAX_NPZ} samples per .npz (FID-50K needs 50000)");
        }
        if let Some(y) = args.class {
            if !(0..classes).contains(&y) {
                bail!("--class {y} is outside 0..{classes} (the model's classes)");
            }
        }
        let labels: Vec<i64> = (0..n as i64)
            .map(|i| {
                args.class
                    .unwrap_or(if classes > 0 { i % classes } else { 0 })
            })
            .collect();
        let rows: Vec<(&str, Guidance)> = if args.compare {
            let (s, w) = (args.cfg, args.nag);
            let mut r = vec![("none", Guidance::none())];
            if classes > 0 {
                r.push(("CFG", Guidance::cfg(s)));
            }
            r.push(("NAG", Guidance::nag(w)));
            if classes > 0 {
                r.push(("CFG+NAG", Guidance::cfg_nag(s, w)));
            }
            eprintln!(
                "rows: {} (CFG scale {s}, NAG weight {w})",
                r.iter().map(|r| r.0).collect::<Vec<_>>().join(", ")
            );
            r
        } else {
            let mut g = Guidance::cfg_nag(args.cfg, args.nag);
            g.dog = args.dog.is_some();
            vec![("", g)]
        };
        let vae = match &args.vae {
            Some(dir) => {
                let (vae, source) = Vae::<B::InnerBackend>::load(dir, &device)?;
                if vae.latent_channels() != shape[0] {
                    bail!(
                        "the VAE in {} has {} latent channels but the model makes {}-channel \
                         samples: a latent model needs the VAE it was trained with (DiT/SiT: \
                         sd-vae-ft-ema or -mse, 4 channels)",
                        dir.display(),
                        vae.latent_channels(),
                        shape[0]
                    );
                }
                eprintln!(
                    "VAE: {} (scaling_factor {})",
                    source.weights.display(),
                    source.config.scaling_factor
                );
                Some((vae, source.config.scaling_factor))
            }
            None => None,
        };
        if let Some(npz) = &args.npz {
            let labels = if args.balanced_labels {
                LabelMode::Balanced
            } else if let Some(y) = args.class {
                LabelMode::Fixed(y)
            } else {
                LabelMode::Uniform
            };
            let spec = SampleSetSpec {
                n,
                batch: args.batch,
                labels,
                guidance: rows[0].1,
                identity: identity(args)?,
            };
            eprintln!(
                "sampling {n} images in batches of {} ({} labels) into {}",
                args.batch,
                labels.name(),
                npz.display()
            );
            let bar = Progress::new(n as u64, "images");
            let summary = sample_set(
                &sampled,
                num_classes,
                vae.as_ref().map(|(v, s)| (v, *s)),
                &cfg,
                &spec,
                npz,
                &device,
                &mut |p| {
                    if p.resumed > 0 {
                        bar.message(format!("{} from an earlier run", p.resumed));
                    }
                    bar.set(p.done as u64)
                },
            )?;
            bar.finish();
            println!(
                "wrote {} (arr_0 uint8 {:?}) and {}{}",
                summary.npz.display(),
                summary.shape,
                summary.labels.display(),
                if summary.resumed > 0 {
                    format!(" ({} samples resumed)", summary.resumed)
                } else {
                    String::new()
                }
            );
            return Ok(());
        }
        let mut all: Vec<Tensor<B::InnerBackend, 4>> = Vec::new();
        for (name, g) in &rows {
            let t0 = std::time::Instant::now();
            let x = sampled.generate(&labels, *g, &cfg, None)?;
            eprintln!(
                "sampled {n} {} in {:.1}s",
                if name.is_empty() { "images" } else { name },
                t0.elapsed().as_secs_f64()
            );
            all.push(x);
        }
        let x = Tensor::cat(all, 0);
        let shape: [usize; 4] = x.dims();
        let values: Vec<f32> = x
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if values.iter().any(|v| !v.is_finite()) {
            bail!("the samples contain NaN/inf; nothing was written");
        }
        let (values, shape) = match &vae {
            Some((vae, scale)) => {
                let z: Vec<f32> = values.iter().map(|v| v / *scale as f32).collect();
                decode_latents(vae, &z, shape, args.batch, &device, &mut |_| {})?
            }
            None => (values, shape),
        };
        let default_dir = args.run.clone().unwrap_or_else(|| PathBuf::from("."));
        let out = args.out.clone().unwrap_or_else(|| {
            default_dir.join(if args.compare {
                "compare.png"
            } else {
                "samples.png"
            })
        });
        let opts = GridOptions {
            nrow: if args.compare {
                n
            } else {
                (n as f64).sqrt().ceil() as usize
            },
            padding: 2,
            upscale: if shape[2] <= 32 { 4 } else { 1 },
            first3: shape[1] > 3,
            ..GridOptions::default()
        };
        if args.compare {
            let row_labels: Vec<String> = rows
                .iter()
                .map(|(name, _)| match *name {
                    "CFG" => format!("CFG {}", args.cfg),
                    "NAG" => format!("NAG {}", args.nag),
                    "CFG+NAG" => format!("CFG {} + NAG {}", args.cfg, args.nag),
                    other => other.to_string(),
                })
                .collect();
            let (col_labels, corner): (Vec<String>, &str) = if classes > 0 {
                (labels.iter().map(i64::to_string).collect(), "class")
            } else {
                (Vec::new(), "")
            };
            make_labelled_grid(&values, shape, &opts, &row_labels, &col_labels, corner)
                .and_then(|grid| grid.save_png(&out))
        } else {
            save_png_grid_with(&out, &values, shape, &opts)
        }
        .with_context(|| format!("writing {}", out.display()))?;
        println!("wrote {}", out.display());
        Ok(())
    }
}

/// What decides the images besides the sampler settings: the weights (path and size) and the
/// VAE, for the resume check of `--npz`.
fn identity(args: &SampleArgs) -> Result<serde_json::Value> {
    let file = |p: &Path| -> Result<serde_json::Value> {
        let len = std::fs::metadata(p)
            .with_context(|| format!("reading {}", p.display()))?
            .len();
        Ok(serde_json::json!({ "path": p.display().to_string(), "bytes": len }))
    };
    let weights = match (&args.run, &args.weights) {
        (Some(run), _) => file(&run.join("ema.safetensors"))?,
        (None, Some(w)) => file(w)?,
        (None, None) => serde_json::json!(format!("{:?}", args.oracle)),
    };
    Ok(serde_json::json!({
        "weights": weights,
        "kind": args.kind,
        "vae": args.vae.as_ref().map(|v| v.display().to_string()),
        "dog": args.dog.as_ref().map(|v| v.display().to_string()),
    }))
}

/// Runs `cargo xtask sample`.
pub fn run(args: &SampleArgs) -> Result<()> {
    let spec = DeviceSpec::parse(&args.device)?;
    for (flag, v) in [
        ("--cfg", args.cfg),
        ("--nag", args.nag),
        ("--eta", args.eta),
    ] {
        if !v.is_finite() {
            bail!("{flag} {v}: must be a finite number");
        }
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    // Before any sampling: an output that cannot be written is known now.
    if let Some(out) = &args.out {
        crate::check_output_file(out, "--out", "png")?;
    }
    if let Some(npz) = &args.npz {
        crate::check_output_file(npz, "--npz", "npz")?;
    }
    dispatch(spec, Task { args })?
}
