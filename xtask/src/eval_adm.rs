//! `cargo xtask eval --samples S.npz --ref REF.npz --inception W`: OpenAI's ADM evaluator
//! (guided-diffusion `evaluations/evaluator.py`), the Inception Score, FID, sFID, precision and
//! recall papers report, on pytorch-fid's port of its InceptionV3
//! ([`nag_train::metrics::adm`]).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_train::metrics::adm::{
    evaluate, AdmEvaluation, AdmOptions, AdmReport, InputScale, Progress, NETWORK_NOTE,
};
use nag_train::metrics::inception::{check_inception, InceptionV3, DEFAULT_BATCH};

use crate::eval::EvalArgs;

/// Runs the ADM evaluation of `args` (`--samples` given).
pub fn run(args: &EvalArgs) -> Result<()> {
    let samples = args.samples.as_deref().context("--samples is required")?;
    let Some(reference) = args.reference.as_deref() else {
        bail!("--samples needs --ref REF.npz (the reference batch, e.g. VIRTUAL_imagenet256_labeled.npz)");
    };
    for (flag, path) in [("--samples", samples), ("--ref", reference)] {
        if !path.is_file() {
            bail!(
                "{flag} {}: no such file (an .npz batch: np.savez(path, arr_0=uint8 [N,H,W,3]))",
                path.display()
            );
        }
    }
    if args.config.inception.is_none() {
        bail!(
            "--samples needs --inception PATH: pytorch-fid's FID weights {} (.pth, or converted \
             to .safetensors)",
            nag_train::metrics::inception::PT_FID_WEIGHTS
        );
    }
    check_inception(args.config.inception.as_deref())?;
    let batch = args.batch.unwrap_or(DEFAULT_BATCH);
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    if args.config.k == 0 {
        bail!("--k must be at least 1");
    }
    let opts = AdmOptions {
        scale: if args.tf_input_scale {
            InputScale::TfGraph
        } else {
            InputScale::PytorchFid
        },
        k: args.config.k,
        ..AdmOptions::default()
    };
    let spec = DeviceSpec::parse(&args.device)?;
    let start = Instant::now();
    let weights = args
        .config
        .inception
        .as_deref()
        .context("--inception is required")?;
    let task = Task {
        weights,
        samples,
        reference,
        batch,
        opts,
    };
    let report = dispatch(spec, task)??;
    let evaluation = AdmEvaluation {
        report,
        samples: samples.display().to_string(),
        reference: reference.display().to_string(),
        inception: weights.display().to_string(),
        input_scale: opts.scale,
        k: opts.k,
        network: NETWORK_NOTE,
        device: args.device.clone(),
        seconds: start.elapsed().as_secs_f64(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&evaluation)?);
    } else {
        println!("{evaluation}");
    }
    Ok(())
}

struct Task<'a> {
    weights: &'a Path,
    samples: &'a Path,
    reference: &'a Path,
    batch: usize,
    opts: AdmOptions,
}

impl BackendTask for Task<'_> {
    type Output = Result<AdmReport>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<AdmReport> {
        let net = InceptionV3::<B::InnerBackend>::load(self.weights, &device)
            .with_context(|| format!("loading the InceptionV3 weights {}", self.weights.display()))?
            .with_batch(self.batch);
        let bar = crate::progress::Progress::new(0, "images");
        let mut stage = String::new();
        let mut progress = |p: Progress<'_>| {
            if p.stage != stage {
                stage = p.stage.to_string();
                bar.stage(&stage, p.total as u64);
            }
            bar.set(p.done as u64);
        };
        let report = evaluate(
            &net,
            self.samples,
            self.reference,
            &self.opts,
            &mut progress,
        );
        bar.clear();
        Ok(report?)
    }
}
