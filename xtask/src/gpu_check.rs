//! `xtask gpu-check`: the GPU check of issue 23, one stage per call so that
//! `scripts/gpu-check.sh` can bound each with a timeout and keep what finished.
//!
//! Stages (each writes `OUT/<stage>.json`; `report` joins them):
//! - `parity`: the DiT forward (null label and null-t included), one training step's loss and
//!   gradients, and a short CFG+NAG sampling run on `--device` against the CPU backend, same
//!   random weights ([`nag_train::device_check::parity`]);
//! - `speed`: training step and forward of the bench's DiT at each `--precision`;
//! - `torch`: the same in PyTorch (`scripts/gpu/torch_dit.py`) on the same machine;
//! - `sample`: images/s of a `--sample-steps` DDPM run with NAG and with CFG+NAG;
//! - `report`: `OUT/report.json` and the table `OUT/README.md`.
//!
//! `--preset xl` is the paper's DiT-XL/2 on 4×32×32 latents (batch 32 for speed); `--preset
//! tiny` is the CPU dry pass's.

use std::path::Path;

use anyhow::Result;
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_train::bench::run_torch;
use nag_train::device_check::{
    parity, sampling_rate, stage_file, write_stage, GpuCheckOptions, Parity, ParityOptions, Report,
    ReportInputs, SampleStage, SamplingRate, SamplingRateOptions, SpeedRow, SpeedStage, Stage,
    TorchRow,
};

use crate::bench::time_burn;

struct ParityTask<'a>(&'a ParityOptions);

impl BackendTask for ParityTask<'_> {
    type Output = Result<Parity>;
    fn run<B: burn::tensor::backend::AutodiffBackend>(self, device: B::Device) -> Result<Parity> {
        let reference = Default::default();
        Ok(parity::<nag_backends::Autodiff<nag_backends::NdArray>, B>(
            &reference,
            &device,
            self.0,
            |stage| eprintln!("parity: {stage}"),
        )?)
    }
}

struct SampleTask<'a>(&'a SamplingRateOptions, &'a Path);

impl BackendTask for SampleTask<'_> {
    type Output = Result<Vec<SamplingRate>>;
    fn run<B: burn::tensor::backend::AutodiffBackend>(
        self,
        device: B::Device,
    ) -> Result<Vec<SamplingRate>> {
        let (options, out) = (self.0, self.1);
        let mut written = Ok(());
        let runs = sampling_rate::<B::InnerBackend>(
            &device,
            options,
            |stage| eprintln!("sample: {stage}"),
            |runs| {
                // Kept after each run: a timeout in the CFG+NAG run keeps the NAG one.
                let stage = SampleStage {
                    steps: options.steps,
                    batch: options.batch,
                    runs: runs.to_vec(),
                };
                written = written.clone().and(
                    write_stage(&stage_file(out, "sample"), &stage).map_err(|e| e.to_string()),
                );
            },
        )?;
        written.map_err(anyhow::Error::msg)?;
        Ok(runs)
    }
}

/// Runs `xtask gpu-check`.
pub fn run(a: &GpuCheckOptions) -> Result<()> {
    let spec = DeviceSpec::parse(&a.device)?;
    a.check()?;
    if a.stage != Stage::Report {
        std::fs::create_dir_all(&a.out)
            .map_err(|e| anyhow::anyhow!("creating --out {}: {e}", a.out.display()))?;
    }
    let (shape, precisions) = (a.preset.speed_shape(a.batch, a.iters), &a.precision);
    match a.stage {
        Stage::Parity => {
            let options = a.parity()?;
            let p = dispatch(spec, ParityTask(&options))??;
            println!(
                "parity ({} vs cpu): forward max rel {:.2e}, loss {:.2e}, gradient norm {:.2e}, \
                 all gradients rel L2 {:.2e}, 10-step CFG+NAG samples max rel {:.2e}",
                a.device,
                p.forward.max_rel,
                p.loss.max_rel,
                p.grad_norm.max_rel,
                p.gradients.rel_l2,
                p.sample.max_rel
            );
            Ok(write_stage(&stage_file(&a.out, "parity"), &p)?)
        }
        Stage::Speed => {
            let mut stage = SpeedStage {
                model: shape,
                rows: Vec::new(),
            };
            for &precision in precisions {
                let timing = time_burn(&shape, spec, precision)?;
                println!(
                    "burn {precision}: train step {:.1} ms, forward {:.1} ms (batch {})",
                    timing.train_step_ms, timing.forward_ms, shape.batch
                );
                stage.rows.push(SpeedRow { precision, timing });
                // Written after each precision: a timeout in the next keeps this one.
                write_stage(&stage_file(&a.out, "speed"), &stage)?;
            }
            Ok(())
        }
        Stage::Torch => {
            let mut stage = SpeedStage {
                model: shape,
                rows: Vec::new(),
            };
            let device = if a.device.starts_with("cuda") {
                "cuda"
            } else {
                "cpu"
            };
            for &precision in precisions {
                let extra =
                    ["--device", device, "--dtype", &precision.to_string()].map(String::from);
                let row: TorchRow = run_torch(&a.torch, &a.torch_script, &shape, &extra)?;
                println!(
                    "torch {precision}: train step {:.1} ms, forward {:.1} ms",
                    row.train_step_ms, row.forward_ms
                );
                stage.rows.push(row);
                write_stage(&stage_file(&a.out, "torch"), &stage)?;
            }
            Ok(())
        }
        Stage::Sample => {
            let options = a.sampling()?;
            let rates = dispatch(spec, SampleTask(&options, &a.out))??;
            for r in &rates {
                println!(
                    "sample {}: {} images × {} steps in {:.1} s = {:.3} images/s",
                    r.guidance, options.batch, options.steps, r.seconds, r.images_per_s
                );
            }
            Ok(())
        }
        Stage::Report => {
            let report = Report::assemble(
                &a.out,
                ReportInputs {
                    device: a.device.clone(),
                    device_name: a.device_name.clone(),
                    commit: a.commit.clone(),
                    preset: a.preset,
                    peak_memory_bytes: a.peak_memory_bytes,
                },
            )?;
            report.write(&a.out)?;
            print!("{}", report.markdown());
            Ok(())
        }
    }
}
