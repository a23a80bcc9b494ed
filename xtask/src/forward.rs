//! `cargo xtask forward`: one network evaluation on inputs read from `.npy` files, written to
//! an `.npy` file: the hook for parity checks against reference implementations (PyTorch DiT /
//! SiT code run on the same weights and inputs).
//!
//! ```text
//! cargo xtask forward --weights DiT-XL-2-256x256.pt --input x.npy --t t.npy --y y.npy \
//!     --output out.npy [--null-t mask.npy] [--kind sit] [--heads 16] [--key ema]
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use clap::{Args, ValueEnum};
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_models::checkpoint::{load_state_dict, LoadOptions};
use nag_models::dit::{DitConfig, DitHints};
use nag_models::npy::{read_npy, write_npy_f32, NpyArray};

/// Which network family the weights are (decides the clock `t` is read in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelKind {
    /// DiT: `t` is the DDPM step index (0..=999) as a float.
    Dit,
    /// SiT: `t` is SiT's clock in [0, 1] (0 = noise, 1 = data), fed as is.
    Sit,
}

/// Arguments of `cargo xtask forward`.
#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// Weights: torch.save file (.pt/.pth/.bin; plain state dict or training checkpoint),
    /// .safetensors, or a model directory. The format is detected from the content.
    #[arg(long, value_name = "W")]
    pub weights: PathBuf,
    /// Input x: float .npy of shape [N, C, H, W].
    #[arg(long, value_name = "X.npy")]
    pub input: PathBuf,
    /// Times t: .npy of shape [N] (or a single value for every sample); integers accepted.
    #[arg(long, value_name = "T.npy")]
    pub t: PathBuf,
    /// Class labels y: integer .npy of shape [N]; required for class-conditional models,
    /// ignored by unconditional ones.
    #[arg(long, value_name = "Y.npy")]
    pub y: Option<PathBuf>,
    /// Per-sample null-t mask: bool (or 0/1) .npy of shape [N]; set entries use the learned
    /// null-timestep vector instead of the timestep embedding.
    #[arg(long = "null-t", value_name = "MASK.npy")]
    pub null_t: Option<PathBuf>,
    /// Network family: dit (DDPM-index clock) or sit (SiT clock).
    #[arg(long, value_enum, default_value = "dit")]
    pub kind: ModelKind,
    /// Attention heads (default: the standard count for the hidden size).
    #[arg(long, value_name = "N")]
    pub heads: Option<usize>,
    /// Entry of a training checkpoint to use: ema or model (default: ema when present).
    #[arg(long, value_name = "ema|model")]
    pub key: Option<String>,
    /// Output: float .npy of shape [N, C_out, H, W], written atomically.
    #[arg(long, value_name = "OUT.npy")]
    pub output: PathBuf,
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn read(path: &Path, what: &str) -> Result<NpyArray> {
    read_npy(path).with_context(|| format!("reading {what} from {}", path.display()))
}

/// A per-sample vector: shape [N], or a single value repeated N times.
fn per_sample<T: Clone>(
    values: Vec<T>,
    shape: &[usize],
    n: usize,
    path: &Path,
    what: &str,
) -> Result<Vec<T>> {
    match values.len() {
        len if len == n && shape.len() == 1 => Ok(values),
        1 => Ok(vec![values[0].clone(); n]),
        _ => bail!(
            "{what} in {} has shape {shape:?}, expected [{n}] (one per sample of the input)",
            path.display()
        ),
    }
}

/// Loads the weights, infers the config, runs one forward on backend `B` and writes the output.
pub fn run_forward<B: Backend>(args: &ForwardArgs, device: &B::Device) -> Result<()> {
    let opts = LoadOptions {
        key: args.key.clone(),
    };
    let (sd, info) = load_state_dict(&args.weights, &opts)
        .with_context(|| format!("loading weights {}", args.weights.display()))?;
    eprintln!("weights: {info}");
    let hints = DitHints {
        num_heads: args.heads,
        ..match args.kind {
            ModelKind::Dit => DitHints::default(),
            ModelKind::Sit => DitHints::sit(),
        }
    };
    let config = DitConfig::infer_from_state_dict(&sd, &hints)
        .with_context(|| format!("inferring the model config from {}", args.weights.display()))?;
    eprintln!(
        "model: input {}x{}x{}, patch {}, hidden {}, depth {}, heads {}, {} classes, {} output \
         channels",
        config.in_channels,
        config.input_size,
        config.input_size,
        config.patch_size,
        config.hidden_size,
        config.depth,
        config.num_heads,
        config.num_classes,
        config.out_channels()
    );
    let (model, report) = config
        .init::<B>(device)
        .context("building the model")?
        .load_state_dict(&sd)
        .with_context(|| format!("loading {} into the model", args.weights.display()))?;
    if report.null_timestep_initialised {
        eprintln!(
            "null-t vector: not in the file, freshly initialised (random): null-t outputs are \
             meaningless until the model is fine-tuned with noise-condition dropout"
        );
    } else {
        eprintln!("null-t vector: loaded from the file");
    }

    let x = read(&args.input, "the input x")?;
    let [n, c, h, w]: [usize; 4] = x.shape.clone().try_into().map_err(|_| {
        anyhow::anyhow!(
            "the input x in {} has shape {:?}, expected [N, C, H, W]",
            args.input.display(),
            x.shape
        )
    })?;
    let x_values = x
        .into_f32()
        .with_context(|| format!("reading the input x from {}", args.input.display()))?;
    let t = read(&args.t, "the times t")?;
    let t_shape = t.shape.clone();
    let t_values = t
        .into_f32()
        .with_context(|| format!("reading the times t from {}", args.t.display()))?;
    let t_values = per_sample(t_values, &t_shape, n, &args.t, "t")?;
    let y_values = match (&args.y, config.num_classes) {
        (Some(path), _) => {
            let y = read(path, "the labels y")?;
            let shape = y.shape.clone();
            let v = y
                .into_i64()
                .with_context(|| format!("reading the labels y from {}", path.display()))?;
            let v = per_sample(v, &shape, n, path, "y")?;
            if config.num_classes == 0 {
                eprintln!("note: the model is unconditional; --y is ignored");
            }
            v
        }
        (None, 0) => vec![0; n],
        (None, k) => {
            bail!("the model is class-conditional ({k} classes): give the labels with --y")
        }
    };
    let null_t = match &args.null_t {
        Some(path) => {
            let m = read(path, "the null-t mask")?;
            let shape = m.shape.clone();
            let v = m
                .into_bool()
                .with_context(|| format!("reading the null-t mask from {}", path.display()))?;
            let v = per_sample(v, &shape, n, path, "the null-t mask")?;
            eprintln!(
                "null-t mask: {} of {n} samples use the null vector",
                v.iter().filter(|&&b| b).count()
            );
            Some(Tensor::<B, 1, Bool>::from_data(
                TensorData::new(v, [n]),
                device,
            ))
        }
        None => None,
    };

    let x = Tensor::<B, 4>::from_data(TensorData::new(x_values, [n, c, h, w]), device);
    let t = Tensor::<B, 1>::from_data(TensorData::new(t_values, [n]), device);
    let y = Tensor::<B, 1, Int>::from_data(TensorData::new(y_values, [n]), device);
    let t0 = std::time::Instant::now();
    let out = model
        .try_forward(x, t, y, null_t, None)
        .context("running the model")?;
    let dims = out.dims();
    let values: Vec<f32> = out
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| anyhow::anyhow!("reading the output back: {e:?}"))?;
    eprintln!("forward: {:.2}s", t0.elapsed().as_secs_f64());
    if values.iter().any(|v| !v.is_finite()) {
        eprintln!("warning: the output contains NaN or inf");
    }
    write_npy_f32(&args.output, &dims, &values)
        .with_context(|| format!("writing the output {}", args.output.display()))?;
    println!("wrote {} {dims:?}", args.output.display());
    Ok(())
}

struct Task<'a> {
    args: &'a ForwardArgs,
}

impl BackendTask for Task<'_> {
    type Output = Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        run_forward::<B::InnerBackend>(self.args, &device)
    }
}

/// Runs `cargo xtask forward` on the device named by `--device`.
pub fn run(args: &ForwardArgs) -> Result<()> {
    let spec = DeviceSpec::parse(&args.device)?;
    crate::check_output_file(&args.output, "--output", "npy")?;
    dispatch(spec, Task { args })?
}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../nag-models/tests/fixtures")
            .join(name)
    }

    fn args(out: &Path) -> ForwardArgs {
        ForwardArgs {
            weights: fixture("tiny_dit.safetensors"),
            input: fixture("dit_x.npy"),
            t: fixture("dit_t.npy"),
            y: Some(fixture("dit_y.npy")),
            null_t: None,
            kind: ModelKind::Dit,
            heads: Some(2),
            key: None,
            output: out.to_path_buf(),
            device: "cpu".into(),
        }
    }

    fn max_rel_err(out: &Path, expected: &str) -> f32 {
        let got = read_npy(out).unwrap();
        let want = read_npy(&fixture(expected)).unwrap();
        assert_eq!(got.shape, want.shape);
        let (g, w) = (got.into_f32().unwrap(), want.into_f32().unwrap());
        let diff = g
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        diff / w.iter().map(|v| v.abs()).fold(0.0, f32::max)
    }

    #[test]
    fn forward_matches_numpy_reference() {
        let dir = std::env::temp_dir().join(format!("nag-forward-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out.npy");
        let mut a = args(&out);
        run(&a).unwrap();
        assert!(max_rel_err(&out, "dit_expected.npy") < 1e-4);
        a.null_t = Some(fixture("dit_null_t.npy"));
        run(&a).unwrap();
        assert!(max_rel_err(&out, "dit_expected_null_t.npy") < 1e-4);
        // Errors name the file at fault.
        a.y = None;
        let e = format!("{:#}", run(&a).unwrap_err());
        assert!(e.contains("--y"), "{e}");
        a.y = Some(fixture("dit_y.npy"));
        a.input = fixture("dit_t.npy");
        let e = format!("{:#}", run(&a).unwrap_err());
        assert!(e.contains("dit_t.npy") && e.contains("[N, C, H, W]"), "{e}");
        a.input = fixture("dit_x.npy");
        a.key = Some("ema".into());
        let e = format!("{:#}", run(&a).unwrap_err());
        assert!(e.contains("tiny_dit.safetensors"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
