//! `cargo xtask forward`: one network evaluation on inputs read from `.npy` files, written to
//! an `.npy` file: the hook for parity checks against reference implementations (PyTorch DiT /
//! SiT code run on the same weights and inputs).
//!
//! ```text
//! cargo xtask forward --weights DiT-XL-2-256x256.pt --input x.npy --t t.npy --y y.npy \
//!     --output out.npy [--null-t mask.npy] [--kind sit] [--heads 16] [--key ema]
//! ```

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_train::forward::{forward_npy, ForwardInputs, ForwardReport, ModelKind};

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
    #[arg(long, default_value = "dit")]
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

impl ForwardArgs {
    fn inputs(&self) -> ForwardInputs {
        ForwardInputs {
            weights: self.weights.clone(),
            input: self.input.clone(),
            t: self.t.clone(),
            y: self.y.clone(),
            null_t: self.null_t.clone(),
            kind: self.kind,
            heads: self.heads,
            key: self.key.clone(),
            output: self.output.clone(),
        }
    }
}

struct Task(ForwardInputs);

impl BackendTask for Task {
    type Output = Result<ForwardReport>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        Ok(forward_npy::<B::InnerBackend>(&self.0, &device)?)
    }
}

/// Runs `cargo xtask forward` on the device named by `--device`.
pub fn run(args: &ForwardArgs) -> Result<()> {
    let spec = DeviceSpec::parse(&args.device)?;
    crate::check_output_file(&args.output, "--output", "npy")?;
    let r = dispatch(spec, Task(args.inputs()))??;
    let c = &r.config;
    eprintln!("weights: {}", r.weights);
    eprintln!(
        "model: input {}x{}x{}, patch {}, hidden {}, depth {}, heads {}, {} classes, {} output \
         channels",
        c.in_channels,
        c.input_size,
        c.input_size,
        c.patch_size,
        c.hidden_size,
        c.depth,
        c.num_heads,
        c.num_classes,
        c.out_channels()
    );
    if r.null_t_initialised {
        eprintln!(
            "null-t vector: not in the file, freshly initialised (random): null-t outputs are \
             meaningless until the model is fine-tuned with noise-condition dropout"
        );
    } else {
        eprintln!("null-t vector: loaded from the file");
    }
    if r.y_ignored {
        eprintln!("note: the model is unconditional; --y is ignored");
    }
    if let Some(k) = r.null_t_count {
        eprintln!(
            "null-t mask: {k} of {} samples use the null vector",
            r.shape[0]
        );
    }
    eprintln!("forward: {:.2}s", r.seconds);
    if r.non_finite {
        eprintln!("warning: the output contains NaN or inf");
    }
    println!("wrote {} {:?}", args.output.display(), r.shape);
    Ok(())
}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use std::path::Path;

    use nag_models::npy::read_npy;

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
