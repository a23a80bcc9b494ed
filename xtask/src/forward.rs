//! `cargo xtask forward`: one network evaluation on inputs read from `.npy` files, written to
//! an `.npy` file: the hook for parity checks against reference implementations (PyTorch DiT /
//! SiT code run on the same weights and inputs).
//!
//! ```text
//! cargo xtask forward --weights DiT-XL-2-256x256.pt --input x.npy --t t.npy --y y.npy \
//!     --output out.npy [--null-t mask.npy] [--kind sit] [--heads 16] [--key ema]
//! ```

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_train::forward::{forward_npy, ForwardInputs, ForwardReport};

/// Arguments of `cargo xtask forward`.
#[derive(Debug, Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub inputs: ForwardInputs,
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
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
    crate::check_output_file(&args.inputs.output, "--output", "npy")?;
    let r = dispatch(spec, Task(args.inputs.clone()))??;
    eprintln!("{r}");
    println!("wrote {} {:?}", args.inputs.output.display(), r.shape);
    Ok(())
}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use std::path::Path;

    use std::path::PathBuf;

    use nag_models::npy::read_npy;
    use nag_train::forward::ModelKind;

    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../nag-models/tests/fixtures")
            .join(name)
    }

    fn args(out: &Path) -> ForwardArgs {
        let inputs = ForwardInputs {
            weights: fixture("tiny_dit.safetensors"),
            input: fixture("dit_x.npy"),
            t: fixture("dit_t.npy"),
            y: Some(fixture("dit_y.npy")),
            null_t: None,
            kind: ModelKind::Dit,
            heads: Some(2),
            key: None,
            output: out.to_path_buf(),
        };
        ForwardArgs {
            inputs,
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
        a.inputs.null_t = Some(fixture("dit_null_t.npy"));
        run(&a).unwrap();
        assert!(max_rel_err(&out, "dit_expected_null_t.npy") < 1e-4);
        // Errors name the file at fault.
        a.inputs.y = None;
        let e = format!("{:#}", run(&a).unwrap_err());
        assert!(e.contains("--y"), "{e}");
        a.inputs.y = Some(fixture("dit_y.npy"));
        a.inputs.input = fixture("dit_t.npy");
        let e = format!("{:#}", run(&a).unwrap_err());
        assert!(e.contains("dit_t.npy") && e.contains("[N, C, H, W]"), "{e}");
        a.inputs.input = fixture("dit_x.npy");
        a.inputs.key = Some("ema".into());
        let e = format!("{:#}", run(&a).unwrap_err());
        assert!(e.contains("tiny_dit.safetensors"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
