//! Checkpoints of a run: writing them atomically and sealed, reading them back for a resume,
//! the finite-weights check before each, the EMA export and the finished-run test.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Tensor};
use nag_models::dit::Dit;
use serde::{Deserialize, Serialize};

use super::{io, write_atomic, TrainConfig, TrainError};
use crate::run_dir::{self, checkpoint_dir};

/// Whether `dir` holds a finished run of `cfg` (its `config.json` equal up to threads and
/// workers, which do not change the weights; the latest checkpoint at `cfg.steps`; the EMA
/// weights written): experiments reuse such a run instead of training again.
pub fn finished_run(dir: &Path, cfg: &TrainConfig) -> bool {
    let Ok(text) = fs::read_to_string(dir.join("config.json")) else {
        return false;
    };
    let Ok(mut stored) = serde_json::from_str::<TrainConfig>(&text) else {
        return false;
    };
    stored.threads = cfg.threads;
    stored.workers = cfg.workers;
    stored.keep_checkpoints = cfg.keep_checkpoints;
    let done = fs::read_to_string(dir.join("checkpoints").join("latest"))
        .map(|l| l.trim() == format!("step-{:07}", cfg.steps))
        .unwrap_or(false);
    stored == *cfg && done && dir.join("ema.safetensors").is_file()
}

/// Training state stored next to the records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) step: u64,
    pub(super) ema_updates: u64,
    pub(super) seed: u64,
}

/// Whether every value of every float parameter of `model` is finite.
pub(super) fn all_finite<B: Backend>(model: &Dit<B>) -> bool {
    struct Finite(bool);
    impl<B: Backend> ModuleVisitor<B> for Finite {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.0 {
                let v = param.val();
                let any = |t: Tensor<B, 1, Bool>| t.into_data().iter::<bool>().any(|b| b);
                self.0 = !(any(v.clone().is_nan().any()) || any(v.is_inf().any()));
            }
        }
    }
    let mut f = Finite(true);
    model.visit(&mut f);
    f.0
}

type Rec = NamedMpkFileRecorder<FullPrecisionSettings>;

/// Writes checkpoint `state.step` as `step-N.partial/`, seals it with its manifest, renames it
/// into place and points `checkpoints/latest` at it. A failure leaves no `step-N/` behind (the
/// partial folder is removed) and the previous checkpoints untouched.
pub(super) fn write_checkpoint<B: AutodiffBackend, O: Optimizer<Dit<B>, B>>(
    run_dir: &Path,
    model: &Dit<B>,
    ema_model: &Dit<B::InnerBackend>,
    optim: &O,
    state: &State,
) -> Result<PathBuf, TrainError> {
    let dir = checkpoint_dir(run_dir, state.step);
    let tmp = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&tmp);
    let written = (|| {
        io(&tmp, fs::create_dir_all(&tmp))?;
        save_record(model.clone(), &tmp.join("model"))?;
        save_record(ema_model.clone(), &tmp.join("ema"))?;
        Rec::new()
            .record(optim.to_record(), tmp.join("optim"))
            .map_err(|e| record_write_error(&tmp.join("optim"), e.to_string()))?;
        write_atomic(
            &tmp.join("state.json"),
            &serde_json::to_vec_pretty(state).expect("state serialises"),
        )?;
        run_dir::seal(&tmp)?;
        Ok::<(), TrainError>(())
    })();
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let _ = fs::remove_dir_all(&dir);
    io(&dir, fs::rename(&tmp, &dir))?;
    write_atomic(
        &run_dir.join("checkpoints").join("latest"),
        dir.file_name()
            .expect("a step folder")
            .to_string_lossy()
            .as_bytes(),
    )?;
    Ok(dir)
}

/// The trainer's AdamW state, as stored in a checkpoint's `optim` record.
pub(super) type OptimRecord<B> = <burn::optim::adaptor::OptimizerAdaptor<
    burn::optim::AdamW,
    Dit<B>,
    B,
> as Optimizer<Dit<B>, B>>::Record;

/// What a checkpoint holds, loaded.
pub(super) struct Checkpoint<B: AutodiffBackend> {
    pub(super) model: Dit<B>,
    pub(super) ema: Dit<B::InnerBackend>,
    pub(super) optim: OptimRecord<B>,
    pub(super) state: State,
}

/// A checkpoint's model, EMA and optimiser records and state, read without touching the
/// live ones (so a damaged checkpoint can be passed over).
pub(super) fn load_checkpoint<B: AutodiffBackend>(
    model: &Dit<B>,
    ema_model: &Dit<B::InnerBackend>,
    dir: &Path,
    device: &B::Device,
) -> Result<Checkpoint<B>, TrainError> {
    let state_path = dir.join("state.json");
    let state: State = serde_json::from_slice(&io(&state_path, fs::read(&state_path))?)
        .map_err(|e| TrainError::Config(format!("{}: {e}", state_path.display())))?;
    let m = load_record(model.clone(), &dir.join("model"), device)?;
    let e = load_record(ema_model.clone(), &dir.join("ema"), device)?;
    let o = Rec::new()
        .load(dir.join("optim"), device)
        .map_err(|e| TrainError::Record {
            path: dir.join("optim"),
            reason: e.to_string(),
        })?;
    Ok(Checkpoint {
        model: m,
        ema: e,
        optim: o,
        state,
    })
}

fn save_record<B: Backend, M: Module<B>>(module: M, path: &Path) -> Result<(), TrainError> {
    Rec::new()
        .record(module.into_record(), path.to_path_buf())
        .map_err(|e| record_write_error(path, e.to_string()))
}

/// burn's recorder reports a failed write as an opaque encoder message; the operating
/// system's reason (disk full, file-size limit, read-only folder) comes from one more byte
/// appended to the file it was writing.
fn record_write_error(path: &Path, reason: String) -> TrainError {
    let file = path.with_extension("mpk");
    let probe = fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .and_then(|mut f| f.write_all(&[0]).and_then(|()| f.sync_all()));
    match probe {
        Err(source) => TrainError::Io { path: file, source },
        Ok(()) => TrainError::Record {
            path: path.to_path_buf(),
            reason,
        },
    }
}

fn load_record<B: Backend, M: Module<B>>(
    module: M,
    path: &Path,
    device: &B::Device,
) -> Result<M, TrainError> {
    let record = Rec::new()
        .load(path.to_path_buf(), device)
        .map_err(|e| TrainError::Record {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(module.load_record(record))
}

/// Exports EMA weights as `ema.safetensors` + `ema.json` (reference key names + `t_embedder.null`).
pub fn export_ema<B: Backend>(ema: &Dit<B>, run_dir: &Path) -> Result<(), TrainError> {
    let sd = ema.to_state_dict();
    let config = serde_json::to_string_pretty(ema.config())
        .map_err(|e| TrainError::Config(e.to_string()))?;
    nag_models::checkpoint::save_model_files(&sd, &config, &run_dir.join("ema.safetensors"))?;
    Ok(())
}
