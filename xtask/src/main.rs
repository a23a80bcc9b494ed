//! `cargo xtask`: the nag command line.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod allocator;
mod bench;
mod config_file;
mod data;
mod estimator;
mod eval;
mod eval_adm;
mod experiment;
mod experiment_oracle;
mod experiment_transfer;
mod features;
mod forward;
mod gpu_check;
mod latents;
mod progress;
mod sample;
mod shift;
mod shift_run;
mod signals;
mod train;
mod vae;

/// Noise Awareness Guidance for DiT/SiT diffusion models.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    version,
    about,
    args_override_self = true
)]
struct Cli {
    /// TOML file of options for the subcommand (keys are the option names, e.g. `steps = 500`,
    /// `noise-dropout = 0.2` or `noise_dropout = 0.2`); options written after it win.
    #[arg(long, global = true, value_name = "FILE.toml")]
    config: Option<std::path::PathBuf>,
    /// No progress bars (they are also off when stderr is not a terminal).
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The noise shift δ of a schedule: Statement 1 (first order) against the exact solution.
    Shift(shift::ShiftArgs),
    /// Train a DiT/SiT with noise-condition dropout (defaults: tiny DiT on built-in shapes).
    Train(train::TrainArgs),
    /// Sample a trained model, with CFG / NAG / both; --compare shows all four side by side.
    Sample(sample::SampleArgs),
    /// Write a grid of a dataset's items (what the trainer sees).
    Data(nag_train::data_preview::PreviewOptions),
    /// One forward pass of a checkpoint on .npy inputs (parity checks against PyTorch).
    Forward(forward::ForwardArgs),
    /// Train the noise-level estimator g_φ(τ|x) or validate it against the exact gmm posterior.
    #[command(subcommand)]
    Estimator(estimator::EstimatorCmd),
    /// Sample quality of a run: FD, precision / recall in classifier features (+ exact gmm metrics).
    Eval(eval::EvalArgs),
    /// Train the feature classifier used by `eval` (FD, precision / recall).
    #[command(subcommand)]
    Features(features::FeaturesCmd),
    /// The README's experiments: `experiment nag` (a trained model on gmm data, with and
    /// without NAG) and `experiment oracle` (the exact model with controlled errors).
    #[command(subcommand)]
    Experiment(experiment::ExperimentCmd),
    /// Time a DiT training step and forward here and, with --torch PYTHON, in the PyTorch
    /// reference on the same machine; prints the ratios.
    Bench(bench::BenchArgs),
    /// The GPU check (issue 23), one stage per call: CUDA vs CPU parity, speed against
    /// PyTorch, sampling rate, report. `scripts/gpu-check.sh` runs every stage.
    GpuCheck(nag_train::device_check::GpuCheckOptions),
    /// Images ↔ SD-VAE latents through a diffusers VAE folder (encode / decode).
    #[command(subcommand)]
    Vae(vae::VaeCmd),
    /// Encode an image folder (each image and its mirror) through the SD VAE into a
    /// memory-mapped latent store for `train --data`; `latents bench` times reading one.
    Latents(latents::LatentsArgs),
    /// burn-collective's coordinator for `train --nodes` (started by node 0 itself).
    #[command(hide = true)]
    Coordinator {
        /// Port to listen on.
        #[arg(long)]
        port: u16,
    },
}

/// Fails early (before any work) when `path`'s folder does not exist.
pub(crate) fn check_output_dir(path: &std::path::Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            anyhow::bail!(
                "cannot write {}: the folder {} does not exist (create it, or pick another path)",
                path.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// The whole command line: negative numbers are values everywhere (`--steps -5` is a bad
/// value of `--steps`, not an unknown flag `-5`).
pub(crate) fn cli_command() -> clap::Command {
    fn allow_negative(cmd: clap::Command) -> clap::Command {
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        let mut cmd = cmd.allow_negative_numbers(true);
        for name in names {
            cmd = cmd.mut_subcommand(name, allow_negative);
        }
        cmd
    }
    allow_negative(Cli::command())
}

/// Parses the process's arguments, a `--config` file's options in its place.
fn parse_cli() -> Result<Cli, ExitCode> {
    let cmd = cli_command();
    let fail = |msg: String| {
        eprintln!("error: {msg}");
        ExitCode::from(2)
    };
    let expanded = config_file::expand(std::env::args().collect(), &cmd)
        .map_err(|e| fail(format!("{e:#}")))?;
    let matches = match expanded.parse(cmd) {
        Ok(m) => m,
        Err(config_file::ParseError::Clap(e)) => e.exit(),
        Err(config_file::ParseError::Config(msg)) => return Err(fail(msg)),
    };
    Cli::from_arg_matches(&matches).map_err(|e| e.exit())
}

/// Fails early (before any work) when `path` cannot take the output of `flag`: a folder, a
/// file name without the extension `ext` (the format written), or a missing parent folder.
pub(crate) fn check_output_file(
    path: &std::path::Path,
    flag: &str,
    ext: &str,
) -> anyhow::Result<()> {
    if path.is_dir() {
        anyhow::bail!(
            "{flag} {}: is a folder; give a file name ending in .{ext}",
            path.display()
        );
    }
    let given = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !given.eq_ignore_ascii_case(ext) {
        anyhow::bail!(
            "{flag} {}: writes {} only; give a file name ending in .{ext}",
            path.display(),
            ext.to_ascii_uppercase()
        );
    }
    check_output_dir(path)
}

fn main() -> ExitCode {
    allocator::tune_for_tensors();
    signals::ignore_file_size_signal();
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    progress::set_quiet(cli.quiet);
    progress::show_warnings();
    let result = match &cli.command {
        Command::Shift(args) if args.run.is_some() || args.oracle.model.is_some() => {
            shift_run::run(args)
        }
        Command::Shift(args) => shift::run(args),
        Command::Train(args) => train::run(args),
        Command::Coordinator { port } => {
            nag_train::parallel::serve_coordinator(*port).map_err(anyhow::Error::from)
        }
        Command::Sample(args) => sample::run(args),
        Command::Forward(args) => forward::run(args),
        Command::Data(args) => data::run(args),
        Command::Estimator(cmd) => estimator::run(cmd),
        Command::Eval(args) => eval::run(args),
        Command::Features(cmd) => features::run(cmd),
        Command::Experiment(cmd) => experiment::run_cmd(cmd),
        Command::Bench(args) => bench::run(args),
        Command::GpuCheck(args) => gpu_check::run(args),
        Command::Vae(cmd) => vae::run(cmd),
        Command::Latents(args) => latents::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Command {
        let matches = cli_command().try_get_matches_from(args).unwrap();
        Cli::from_arg_matches(&matches).unwrap().command
    }

    /// The commands whose options are the library's config: with no flags they parse to the
    /// library's own defaults, field for field.
    #[test]
    fn flagless_commands_parse_to_the_library_defaults() {
        let Command::Train(t) = parse(&["xtask", "train"]) else {
            unreachable!()
        };
        assert_eq!(t.config, nag_train::train::TrainConfig::main_job());
        assert_eq!(t.threads, None);
        let Command::Estimator(estimator::EstimatorCmd::Train(e)) =
            parse(&["xtask", "estimator", "train"])
        else {
            unreachable!()
        };
        assert_eq!(e.config, Default::default());
        let Command::Features(features::FeaturesCmd::Train(f)) =
            parse(&["xtask", "features", "train"])
        else {
            unreachable!()
        };
        assert_eq!(f.config, Default::default());
    }

    /// Flags land in the fields they name; a switch that turns a default off does so.
    #[test]
    fn flags_set_the_config_fields() {
        let Command::Train(t) = parse(&[
            "xtask",
            "train",
            "--objective",
            "LINEAR",
            "--prediction",
            "score",
            "--grad-clip",
            "0.5",
            "--no-learn-sigma",
            "--on-bad-file",
            "fail",
        ]) else {
            unreachable!()
        };
        let c = t.config;
        assert_eq!(c.objective, nag_train::train::ObjectiveKind::Linear);
        assert_eq!(c.prediction, nag_train::objective::InterpolantTarget::Score);
        assert_eq!(c.grad_clip, Some(0.5));
        assert!(!c.learn_sigma);
        assert_eq!(c.on_bad_file, nag_train::data::OnError::Fail);
    }
}
