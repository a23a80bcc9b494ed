//! `cargo xtask`: the nag command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod forward;
mod sample;
mod shift;
mod train;

/// Noise Awareness Guidance for DiT/SiT diffusion models.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
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
    /// One forward pass of a checkpoint on .npy inputs (parity checks against PyTorch).
    Forward(forward::ForwardArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Shift(args) => shift::run(args),
        Command::Train(args) => train::run(args),
        Command::Sample(args) => sample::run(args),
        Command::Forward(args) => forward::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
