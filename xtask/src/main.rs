//! `cargo xtask`: the nag command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod allocator;
mod bench;
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
mod oracle_args;
mod progress;
mod sample;
mod shift;
mod shift_run;
mod signals;
mod train;
mod vae;

/// Noise Awareness Guidance for DiT/SiT diffusion models.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", version, about, args_override_self = true)]
struct Cli {
    /// TOML file of options for the subcommand (keys are the option names, e.g. `steps = 500`,
    /// `noise-dropout = 0.2` or `noise_dropout = 0.2`); options written after it win.
    #[arg(long, global = true, value_name = "FILE.toml")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Expands `--config FILE` into the flags it holds, in its place on the command line.
fn expand_config(args: Vec<String>) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let Some(i) = args
        .iter()
        .position(|a| a == "--config" || a.starts_with("--config="))
    else {
        return Ok(args);
    };
    let (path, skip) = match args[i].strip_prefix("--config=") {
        Some(p) => (p.to_string(), 1),
        None => (
            args.get(i + 1)
                .cloned()
                .context("--config needs a file path")?,
            2,
        ),
    };
    // A config is a handful of flags: refuse anything over 1 MiB before reading it. (Deep nesting
    // is refused by the TOML parser's own recursion limit, as a parse error naming the file.)
    const MAX_CONFIG_BYTES: u64 = 1 << 20;
    let size = std::fs::metadata(&path)
        .with_context(|| format!("reading --config {path}"))?
        .len();
    if size > MAX_CONFIG_BYTES {
        anyhow::bail!(
            "--config {path}: {size} bytes is over the limit of {MAX_CONFIG_BYTES} bytes"
        );
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading --config {path}"))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {path} as TOML"))?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let flag = format!("--{}", key.replace('_', "-"));
        match value {
            toml::Value::Boolean(true) => flags.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::String(v) => flags.extend([flag, v]),
            toml::Value::Integer(v) => flags.extend([flag, v.to_string()]),
            toml::Value::Float(v) => flags.extend([flag, v.to_string()]),
            other => anyhow::bail!("{path}: option '{key}' has an unsupported value {other}"),
        }
    }
    // The file's flags take the place of `--config FILE`: flags written after it win, and it
    // works at any depth of subcommands (`estimator train --config f.toml`).
    let mut out: Vec<String> = args[..i].to_vec();
    out.extend(flags);
    out.extend(args[i + skip..].iter().cloned());
    Ok(out)
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
    Data(data::DataArgs),
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
    GpuCheck(gpu_check::GpuCheckArgs),
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

fn main() -> ExitCode {
    allocator::tune_for_tensors();
    signals::ignore_file_size_signal();
    let args = match expand_config(std::env::args().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(args);
    let result = match &cli.command {
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
    use super::expand_config;

    /// Hostile `--config` files are errors naming the file: too large, or nested 100k deep
    /// (no stack overflow).
    #[test]
    fn hostile_config_files_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("nag-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            (
                "deep.toml",
                format!("a = {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
            ),
            ("big.toml", "# padding\n".repeat(200_000)),
            ("good.toml", "steps = 5\n".to_string()),
        ];
        for (name, text) in cases {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            let args = vec![
                "xtask".into(),
                "train".into(),
                "--config".into(),
                path.display().to_string(),
            ];
            match expand_config(args) {
                Ok(a) => {
                    assert_eq!(name, "good.toml");
                    assert!(
                        a.iter().any(|x| x == "--steps") && a.iter().any(|x| x == "5"),
                        "{a:?}"
                    );
                }
                Err(e) => {
                    assert_ne!(name, "good.toml", "{e:#}");
                    assert!(format!("{e:#}").contains(name), "{e:#}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
