//! `cargo xtask shift --run R` (or `--model oracle`): the noise shift measured along a model's
//! sampling trajectories, without and with NAG, from the same seeds
//! ([`measure_trajectory_shift`]); this file parses, shows progress and prints the table.

use std::path::PathBuf;

use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_train::shift::{
    measure_trajectory_shift, ShiftModel, TrajectoryShiftConfig, TrajectoryShiftEvent,
    TrajectoryShiftReport,
};

use crate::progress::Progress;
use crate::shift::ShiftArgs;

/// Runs the trajectory mode.
pub fn run(args: &ShiftArgs) -> Result<()> {
    let spec = DeviceSpec::parse(&args.device)?;
    let model = match (&args.run, args.oracle.chosen("--run")?) {
        (Some(run), _) => ShiftModel::Run(run.clone()),
        (None, Some(spec)) => ShiftModel::Oracle(spec.clone()),
        (None, None) => bail!("give --run RUN_DIR or --model oracle"),
    };
    let cfg = TrajectoryShiftConfig {
        model,
        out: match (&args.out, &args.run) {
            (Some(out), _) => out.clone(),
            (None, Some(run)) => run.clone(),
            (None, None) => PathBuf::from("runs/shift-oracle"),
        },
        threads: spec.concurrent_batches(),
        options: args.trajectories.clone(),
    };
    let report = dispatch(spec, Task { cfg: &cfg })??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
        println!(
            "wrote {} and {}",
            cfg.out.join("shift.json").display(),
            cfg.out.join("shift.png").display()
        );
    }
    Ok(())
}

struct Task<'a> {
    cfg: &'a TrajectoryShiftConfig,
}

impl BackendTask for Task<'_> {
    type Output = Result<TrajectoryShiftReport>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<TrajectoryShiftReport> {
        let mut bar: Option<Progress> = None;
        let report =
            measure_trajectory_shift::<B::InnerBackend>(self.cfg, &device, |event| match event {
                TrajectoryShiftEvent::Step {
                    setting,
                    settings,
                    step,
                    steps,
                } => {
                    // (Adaptive ODE runs have no step count: no bar, the setting lines remain.)
                    if steps > 0 {
                        let b = bar.get_or_insert_with(|| {
                            Progress::new((settings * steps) as u64, "sampler steps")
                        });
                        b.set((setting * steps + step) as u64);
                    }
                }
                TrajectoryShiftEvent::Measured { name, seconds } => {
                    let line = format!("measured '{name}' in {seconds:.1}s");
                    match &bar {
                        Some(b) => b.println(line),
                        None => eprintln!("{line}"),
                    }
                }
            })?;
        if let Some(b) = &bar {
            b.finish();
        }
        Ok(report)
    }
}
