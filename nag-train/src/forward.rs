//! One network evaluation on inputs read from `.npy` files, written to an `.npy` file
//! (`cargo xtask forward`): the hook for parity checks against reference implementations
//! (PyTorch DiT / SiT code run on the same weights and inputs).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use nag_models::checkpoint::{load_state_dict, LoadOptions};
use nag_models::dit::{DitConfig, DitHints, ModelError};
use nag_models::npy::{read_npy, write_npy_f32, NpyArray};
use nag_models::state_dict::CheckpointError;

/// Which network family the weights are (decides the clock `t` is read in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelKind {
    /// DiT: `t` is the DDPM step index (0..=999) as a float.
    Dit,
    /// SiT: `t` is SiT's clock in [0, 1] (0 = noise, 1 = data), fed as is.
    Sit,
}

/// What to evaluate, and where to write it (the options of `xtask forward`).
#[derive(Debug, Clone, clap::Args)]
pub struct ForwardInputs {
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
    #[arg(long, value_enum, hide_possible_values = true, default_value = "dit")]
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
}

/// Errors of [`forward_npy`]; each names the file and the flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The weights could not be read or do not fit a DiT/SiT.
    #[error("{what} {path}")]
    Weights {
        /// What was being done.
        what: &'static str,
        /// The weights file.
        path: String,
        /// The reader's error.
        #[source]
        source: CheckpointError,
    },
    /// An input file is unreadable or has the wrong shape or values.
    #[error("{0}")]
    Input(String),
    /// The network could not be built or run.
    #[error("{0}")]
    Model(#[from] ModelError),
}

/// What [`forward_npy`] did.
#[derive(Debug, Clone)]
pub struct ForwardReport {
    /// The weights' format and entry, as the reader describes them.
    pub weights: String,
    /// The network inferred from the weights.
    pub config: DitConfig,
    /// The null-t vector was not in the file and is freshly initialised (random).
    pub null_t_initialised: bool,
    /// With a mask: how many samples use the null-t vector.
    pub null_t_count: Option<usize>,
    /// `--y` was given to an unconditional model (and ignored).
    pub y_ignored: bool,
    /// Seconds of the forward itself.
    pub seconds: f64,
    /// The output's shape.
    pub shape: Vec<usize>,
    /// The output holds NaN or ±∞.
    pub non_finite: bool,
}

/// The report as `xtask forward` prints it: what was loaded, the mask, the time.
impl std::fmt::Display for ForwardReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        writeln!(f, "weights: {}", self.weights)?;
        writeln!(
            f,
            "model: input {}x{}x{}, patch {}, hidden {}, depth {}, heads {}, {} classes, {} \
             output channels",
            c.in_channels,
            c.input_size,
            c.input_size,
            c.patch_size,
            c.hidden_size,
            c.depth,
            c.num_heads,
            c.num_classes,
            c.out_channels()
        )?;
        if self.null_t_initialised {
            writeln!(
                f,
                "null-t vector: not in the file, freshly initialised (random): null-t outputs \
                 are meaningless until the model is fine-tuned with noise-condition dropout"
            )?;
        } else {
            writeln!(f, "null-t vector: loaded from the file")?;
        }
        if self.y_ignored {
            writeln!(f, "note: the model is unconditional; --y is ignored")?;
        }
        if let Some(k) = self.null_t_count {
            let n = self.shape[0];
            writeln!(f, "null-t mask: {k} of {n} samples use the null vector")?;
        }
        write!(f, "forward: {:.2}s", self.seconds)?;
        if self.non_finite {
            write!(f, "\nwarning: the output contains NaN or inf")?;
        }
        Ok(())
    }
}

fn read(path: &Path, what: &str) -> Result<NpyArray, ForwardError> {
    read_npy(path)
        .map_err(|e| ForwardError::Input(format!("reading {what} from {}: {e}", path.display())))
}

/// A per-sample vector: shape [N], or a single value repeated N times.
fn per_sample<T: Clone>(
    values: Vec<T>,
    shape: &[usize],
    n: usize,
    path: &Path,
    what: &str,
) -> Result<Vec<T>, ForwardError> {
    match values.len() {
        len if len == n && shape.len() == 1 => Ok(values),
        1 => Ok(vec![values[0].clone(); n]),
        _ => Err(ForwardError::Input(format!(
            "{what} in {} has shape {shape:?}, expected [{n}] (one per sample of the input)",
            path.display()
        ))),
    }
}

/// Reads `path` as a per-sample vector of `n` with `convert`.
fn per_sample_file<T: Clone, E: std::fmt::Display>(
    path: &Path,
    what: &str,
    n: usize,
    convert: impl FnOnce(NpyArray) -> Result<Vec<T>, E>,
) -> Result<Vec<T>, ForwardError> {
    let array = read(path, what)?;
    let shape = array.shape.clone();
    let values = convert(array)
        .map_err(|e| ForwardError::Input(format!("reading {what} from {}: {e}", path.display())))?;
    per_sample(values, &shape, n, path, what)
}

/// Loads the weights, infers the network, runs one forward on `device` and writes the output.
pub fn forward_npy<B: Backend>(
    inputs: &ForwardInputs,
    device: &B::Device,
) -> Result<ForwardReport, ForwardError> {
    let weights_error = |what| {
        let path = inputs.weights.display().to_string();
        move |source| ForwardError::Weights { what, path, source }
    };
    let opts = LoadOptions {
        key: inputs.key.clone(),
    };
    let (sd, info) =
        load_state_dict(&inputs.weights, &opts).map_err(weights_error("loading weights"))?;
    let hints = DitHints {
        num_heads: inputs.heads,
        ..match inputs.kind {
            ModelKind::Dit => DitHints::default(),
            ModelKind::Sit => DitHints::sit(),
        }
    };
    let config = DitConfig::infer_from_state_dict(&sd, &hints)
        .map_err(weights_error("inferring the model config from"))?;
    let (model, loaded) = config
        .init::<B>(device)?
        .load_state_dict(&sd)
        .map_err(weights_error("loading into the model"))?;

    let x = read(&inputs.input, "the input x")?;
    let [n, c, h, w]: [usize; 4] = x.shape.clone().try_into().map_err(|_| {
        ForwardError::Input(format!(
            "the input x in {} has shape {:?}, expected [N, C, H, W]",
            inputs.input.display(),
            x.shape
        ))
    })?;
    let x_values = x.into_f32().map_err(|e| {
        ForwardError::Input(format!(
            "reading the input x from {}: {e}",
            inputs.input.display()
        ))
    })?;
    let t_values = per_sample_file(&inputs.t, "the times t", n, NpyArray::into_f32)?;
    let (y_values, y_ignored) = match (&inputs.y, config.num_classes) {
        (Some(path), k) => (
            per_sample_file(path, "the labels y", n, NpyArray::into_i64)?,
            k == 0,
        ),
        (None, 0) => (vec![0; n], false),
        (None, k) => {
            return Err(ForwardError::Input(format!(
                "the model is class-conditional ({k} classes): give the labels with --y"
            )))
        }
    };
    let mask = match &inputs.null_t {
        Some(path) => Some(per_sample_file(
            path,
            "the null-t mask",
            n,
            NpyArray::into_bool,
        )?),
        None => None,
    };
    let null_t_count = mask.as_ref().map(|m| m.iter().filter(|&&b| b).count());
    let null_t = mask.map(|m| Tensor::<B, 1, Bool>::from_data(TensorData::new(m, [n]), device));

    let x = Tensor::<B, 4>::from_data(TensorData::new(x_values, [n, c, h, w]), device);
    let t = Tensor::<B, 1>::from_data(TensorData::new(t_values, [n]), device);
    let y = Tensor::<B, 1, Int>::from_data(TensorData::new(y_values, [n]), device);
    let t0 = Instant::now();
    let out = model.try_forward(x, t, y, null_t, None)?;
    let shape = out.dims().to_vec();
    let values: Vec<f32> = out
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| ForwardError::Input(format!("reading the output back: {e:?}")))?;
    let seconds = t0.elapsed().as_secs_f64();
    write_npy_f32(&inputs.output, &shape, &values).map_err(|e| {
        ForwardError::Input(format!(
            "writing the output {}: {e}",
            inputs.output.display()
        ))
    })?;
    Ok(ForwardReport {
        weights: info.to_string(),
        config,
        null_t_initialised: loaded.null_timestep_initialised,
        null_t_count,
        y_ignored,
        seconds,
        shape,
        non_finite: values.iter().any(|v| !v.is_finite()),
    })
}
