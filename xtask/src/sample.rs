//! `cargo xtask sample`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use clap::Args;
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_core::guidance::Guidance;
use nag_models::dit::{Dit, DitHints, TimeInput};
use nag_train::data::Dataset;
use nag_train::generate::{load_model, parse_variance, SampleConfig, Sampled, SamplerKind};
use nag_train::image::{save_png_grid_with, GridOptions};

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
    /// Sampler: ddpm, ddim, sde or ode (default: ddpm for DiT, sde for SiT).
    #[arg(long)]
    pub sampler: Option<String>,
    /// Sampling steps (default 250; ode: 0 = adaptive dopri5).
    #[arg(long, default_value_t = 250)]
    pub steps: usize,
    /// DDIM η.
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// CFG scale (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub cfg: f64,
    /// NAG weight (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub nag: f64,
    /// Number of samples (per row with --compare; default 64, or one per class with --compare).
    #[arg(long)]
    pub n: Option<usize>,
    /// Class of every sample (default: cycle through the classes).
    #[arg(long)]
    pub class: Option<i64>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output PNG grid (default: <run>/samples.png or <run>/compare.png).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write the raw samples as .npz (array `samples`, N×C×H×W, and `labels`).
    #[arg(long)]
    pub npz: Option<PathBuf>,
    /// One image with rows: no guidance, CFG, NAG, CFG+NAG (same seeds); uses --cfg (default
    /// 4 when left at 1) and --nag (default 3 when left at 0).
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
    if let Some(run) = &args.run {
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
    let Some(weights) = &args.weights else {
        bail!("give --run RUN_DIR or --weights FILE");
    };
    let (sd, info) = nag_models::checkpoint::load_state_dict(weights, &Default::default())
        .with_context(|| format!("loading {}", weights.display()))?;
    let hints = match args.kind.to_ascii_lowercase().as_str() {
        "dit" => DitHints::default(),
        "sit" => DitHints::sit(),
        k => bail!("--kind must be dit or sit (got '{k}')"),
    };
    let cfg = nag_models::dit::DitConfig::infer_from_state_dict(&sd, &hints)?;
    let (model, report) = cfg.init::<B>(device)?.load_state_dict(&sd)?;
    eprintln!("loaded {} ({info:?})", weights.display());
    if report.null_timestep_initialised {
        eprintln!("note: no null-timestep vector in the file: NAG needs fine-tuning first");
    }
    Ok(model)
}

fn write_npz(path: &Path, samples: &[f32], shape: [usize; 4], labels: &[i64]) -> Result<()> {
    use nag_models::npy::{write_npy, NpyArray, NpyData};
    let dir = tempdir_near(path)?;
    let s = dir.join("samples.npy");
    write_npy(
        &s,
        &NpyArray {
            shape: shape.to_vec(),
            data: NpyData::F32(samples.to_vec()),
        },
    )?;
    let l = dir.join("labels.npy");
    write_npy(
        &l,
        &NpyArray {
            shape: vec![labels.len()],
            data: NpyData::I64(labels.to_vec()),
        },
    )?;
    let tmp = path.with_extension("npz.tmp");
    {
        let file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut zip = zip::ZipWriter::new(file);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, p) in [("samples.npy", &s), ("labels.npy", &l)] {
            zip.start_file(name, opts)?;
            zip.write_all(&std::fs::read(p)?)?;
        }
        zip.finish()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempdir_near(path: &Path) -> Result<PathBuf> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = parent.join(format!(".nag-tmp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
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
        let (sampled, num_classes, ddpm) = match (&net, &oracle) {
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
        let labels: Vec<i64> = (0..n as i64)
            .map(|i| {
                args.class
                    .unwrap_or(if classes > 0 { i % classes } else { 0 })
            })
            .collect();
        let rows: Vec<(&str, Guidance)> = if args.compare {
            let s = if args.cfg == 1.0 { 4.0 } else { args.cfg };
            let w = if args.nag == 0.0 { 3.0 } else { args.nag };
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
            vec![("", Guidance::cfg_nag(args.cfg, args.nag))]
        };
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
            upscale: if shape[1] <= 32 { 4 } else { 1 },
            first3: shape[1] > 3,
            ..GridOptions::default()
        };
        save_png_grid_with(&out, &values, shape, &opts)
            .with_context(|| format!("writing {}", out.display()))?;
        println!("wrote {}", out.display());
        if let Some(npz) = &args.npz {
            let all_labels: Vec<i64> = rows.iter().flat_map(|_| labels.iter().copied()).collect();
            write_npz(npz, &values, shape, &all_labels)?;
            println!("wrote {}", npz.display());
        }
        Ok(())
    }
}

/// Runs `cargo xtask sample`.
pub fn run(args: &SampleArgs) -> Result<()> {
    let spec = DeviceSpec::parse(&args.device)?;
    // Before any sampling: an output that cannot be written is known now.
    for path in args.out.iter().chain(&args.npz) {
        crate::check_output_dir(path)?;
    }
    dispatch(spec, Task { args })?
}
