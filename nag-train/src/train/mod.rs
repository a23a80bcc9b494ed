//! The noise-dropout trainer.
//!
//! Each step draws, per sample and independently: a time (DDPM index uniform over the 1000
//! steps, or τ uniform for interpolants), the noise, a noise-condition dropout flag (p_t,
//! default 0.1: the learned null-t embedding replaces the timestep embedding) and a label
//! dropout flag (p_c, default 0.1). All randomness of step k comes from `stream(seed, k)`, so a
//! run resumed at step k draws exactly what an uninterrupted run draws: same seed, same weights,
//! bit for bit.
//!
//! Run directory layout:
//! - `config.json`: the resolved [`TrainConfig`];
//! - `checkpoints/step-XXXXXXX/{model,ema,optim}.mpk, state.json, manifest.json` (burn
//!   records, full precision; the manifest of sizes and SHA-256 written last, see [`run_dir`])
//!   and `latest` (the newest complete checkpoint, written after it); the `keep_checkpoints`
//!   newest are kept, and a checkpoint is written only when every weight is finite;
//! - `.lock`: held while a process trains into the folder;
//! - `ema.safetensors` + `ema.json`: the EMA weights with the reference key names (what
//!   `sample` reads);
//! - `loss.csv` and `loss.png`.
//!
//! Layout: [`train`] / [`train_replicas`] (set-up, resume, launching the replicas) in
//! `launch.rs`, the step loop of one replica in `replica.rs`, the options in `config.rs`,
//! checkpoints and the EMA export in `checkpoint.rs`, one micro-batch's draws, loss and
//! gradients in `step.rs`, `loss.csv` / `loss.png` in `loss_log.rs`; the auxiliary networks'
//! plain supervised loop in `fit.rs`. This file holds what they
//! share: the error, the events and the stop flag.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::parallel::ParallelError;
use crate::run_dir::{self, Skipped};

mod checkpoint;
mod config;
pub mod fit;
mod launch;
mod loss_log;
mod replica;
mod step;

pub use checkpoint::{export_ema, finished_run};
pub use config::{ObjectiveKind, TrainConfig};
pub use launch::{train, train_replicas};
pub use step::{on_own_graphs, sum_gradients};

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// An impossible option.
    #[error("invalid training option: {0}")]
    Config(String),
    /// Dataset problem.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// Model problem.
    #[error(transparent)]
    Model(#[from] nag_models::dit::ModelError),
    /// Checkpoint problem.
    #[error(transparent)]
    Checkpoint(#[from] nag_models::state_dict::CheckpointError),
    /// The loss became NaN or infinite.
    #[error("loss is {loss} at step {step}: training stopped; the last good checkpoint ({last}) is kept. Lower --lr, set --grad-clip, or check the data")]
    NonFinite {
        /// Step.
        step: u64,
        /// The loss value.
        loss: f32,
        /// The last good checkpoint.
        last: String,
    },
    /// The weights became NaN or infinite (found before writing a checkpoint).
    #[error("the {which} weights are not finite at step {step}: training stopped without writing that checkpoint; the last good checkpoint ({last}) is kept. Lower --lr, set --grad-clip, or check --weight-decay and the data")]
    NonFiniteWeights {
        /// Step.
        step: u64,
        /// "model" or "EMA".
        which: &'static str,
        /// The last good checkpoint.
        last: String,
    },
    /// Stopped on request (Ctrl-C / SIGTERM) at a step boundary, after writing a checkpoint.
    #[error("stopped on request after step {step}; checkpoint {checkpoint} written. Continue with the same command and --resume")]
    Interrupted {
        /// The last completed step.
        step: u64,
        /// The checkpoint written.
        checkpoint: String,
    },
    /// No checkpoint of the run can be resumed from.
    #[error("--resume: {dir} has no usable checkpoint{detail}")]
    NoCheckpoint {
        /// The run folder.
        dir: PathBuf,
        /// Each checkpoint tried and why it failed.
        detail: String,
    },
    /// The run folder (lock, manifests).
    #[error(transparent)]
    RunDir(#[from] run_dir::RunDirError),
    /// I/O on a named path.
    #[error("{path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Data-parallel replicas (layout, ports, a peer that stopped or never answered).
    #[error(transparent)]
    Parallel(#[from] ParallelError),
    /// A burn record could not be read or written.
    #[error("checkpoint record {path}: {reason}")]
    Record {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

fn io<T>(path: &Path, r: std::io::Result<T>) -> Result<T, TrainError> {
    r.map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` atomically (temp file in the same folder, fsync, rename; nothing
/// left behind on failure), errors naming `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    io(
        path,
        nag_models::checkpoint::write_atomic(path, |w| w.write_all(bytes)),
    )
}

/// Set by [`request_stop`]: the trainer stops at the next step boundary, writes a checkpoint
/// and returns [`TrainError::Interrupted`].
static STOP: AtomicBool = AtomicBool::new(false);

/// Asks every running [`train`] of this process to stop at its next step boundary (e.g. from a
/// Ctrl-C / SIGTERM handler). Safe to call from any thread.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// What a run reports as it goes.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// Steps done and the mean loss (every `log_every` steps).
    Progress(Progress),
    /// Resuming from `from` (at `step`); newer checkpoints that were damaged or incomplete are
    /// listed with the reason they were passed over.
    Resumed {
        /// The checkpoint used.
        from: PathBuf,
        /// Its step.
        step: u64,
        /// Newer checkpoints passed over.
        skipped: Vec<Skipped>,
    },
    /// `--init` had no null-timestep vector: it starts freshly initialised.
    NullTimestepInitialised(PathBuf),
    /// Data-parallel runs, just before every `Progress`: the all-reduce of the last steps.
    Communication(Communication),
}

/// What the replicas exchanged (see [`TrainEvent::Communication`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Communication {
    /// Replicas in the run.
    pub replicas: usize,
    /// Bytes each replica all-reduces per step (one bucket: gradients and control slots).
    pub bytes_per_step: u64,
    /// Mean seconds per step spent in the all-reduce (waiting for the slowest replica
    /// included) since the last report.
    pub seconds_per_step: f64,
}

/// Progress reported to the caller every `log_every` steps.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Completed steps.
    pub step: u64,
    /// Total steps.
    pub total: u64,
    /// Mean loss since the last report.
    pub loss: f64,
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Steps completed.
    pub steps: u64,
    /// Final logged loss.
    pub final_loss: f64,
    /// First logged loss.
    pub first_loss: f64,
    /// Unreadable dataset files skipped ([`OnError::Skip`]).
    pub skipped_files: usize,
}
