//! One replica's training loop. Every run has at least one replica; with several
//! ([`super::train_replicas`]) each step's gradients, losses and control flags travel in one
//! bucket through one all-reduce ([`crate::parallel::Link::sum`]):
//!
//! `[stop, abort, loss of micro-batch 0 … A−1, has-gradient of parameter 0 … P−1, gradients]`
//!
//! Each replica writes only its own micro-batches' losses (zeros elsewhere, so the sum carries
//! every value exactly) and its gradient sum; `has-gradient` keeps a parameter that no
//! micro-batch touched out of the update, as on one replica. Every decision after the
//! all-reduce (a non-finite loss, Ctrl-C, a replica's own error) is made on the same summed
//! values, so the replicas never part ways between two all-reduces.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use nag_core::ddpm::DdpmSchedule;
use nag_core::schedule::Schedule;
use nag_models::dit::Dit;
use sha2::{Digest, Sha256};

use super::checkpoint::{all_finite, export_ema, write_checkpoint, State};
use super::loss_log::{write_loss_log, write_loss_plot};
use super::step::{micro_step, on_own_graphs, sum_gradients, trainable_params};
use super::{Communication, Progress, TrainConfig, TrainError, TrainEvent, STOP};
use crate::data::{Batch, Dataset, Loader, LoaderConfig};
use crate::ema;
use crate::parallel::{Link, ParallelError};
use crate::run_dir::{self, checkpoint_dir};

/// What every replica of a run shares.
pub(super) struct Run<'a> {
    pub cfg: &'a TrainConfig,
    pub run_dir: &'a Path,
    pub dataset: Arc<dyn Dataset>,
    pub ddpm: DdpmSchedule,
    pub interp: Option<Schedule>,
    /// The first step to run.
    pub start: u64,
    /// Replicas in the run.
    pub world: usize,
}

/// The EMA weights, kept by the replica that writes the run folder.
pub(super) struct Ema<B: Backend> {
    pub model: Dit<B>,
    pub updates: u64,
}

/// One replica: its weights, optimiser and link to the others.
pub(super) struct Replica<B: AutodiffBackend, O> {
    /// Run-wide rank.
    pub rank: usize,
    pub device: B::Device,
    pub model: Dit<B>,
    pub optim: O,
    /// `Some` on the replica that writes checkpoints (rank 0).
    pub ema: Option<Ema<B::InnerBackend>>,
    /// `(step, mean loss)` so far.
    pub log: Vec<(u64, f64)>,
    /// The newest checkpoint, for error messages.
    pub last_ckpt: String,
    /// `None` when the run has one replica.
    pub link: Option<Link<B::InnerBackend>>,
}

/// Runs the steps of `r`; returns the loss log.
pub(super) fn run<B, O>(
    run: &Run,
    r: Replica<B, O>,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<Vec<(u64, f64)>, TrainError>
where
    B: AutodiffBackend,
    O: Optimizer<Dit<B>, B>,
{
    let Replica {
        rank,
        device,
        model,
        optim,
        ema,
        mut log,
        mut last_ckpt,
        mut link,
    } = r;
    let result = steps(
        run,
        rank,
        &device,
        model,
        optim,
        ema,
        &mut log,
        &mut last_ckpt,
        &mut link,
        on_event,
    );
    if let Some(link) = link {
        let closed = link.close();
        if result.is_ok() {
            closed?;
        }
    }
    result.map(|()| log)
}

#[allow(clippy::too_many_arguments)]
fn steps<B, O>(
    run: &Run,
    rank: usize,
    device: &B::Device,
    mut model: Dit<B>,
    mut optim: O,
    mut ema: Option<Ema<B::InnerBackend>>,
    log: &mut Vec<(u64, f64)>,
    last_ckpt: &mut String,
    link: &mut Option<Link<B::InnerBackend>>,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<(), TrainError>
where
    B: AutodiffBackend,
    O: Optimizer<Dit<B>, B>,
{
    let cfg = run.cfg;
    let per = cfg.grad_accum / run.world;
    let micro = cfg.batch / cfg.grad_accum;
    let first_micro = rank * per;
    // This replica's contiguous share of every step: batch `step·R + rank` of a stream of
    // `per`-micro-batch batches, i.e. micro-batches `first_micro .. first_micro + per`.
    let mut loader = Loader::new(
        run.dataset.clone(),
        LoaderConfig {
            batch_size: micro * per,
            seed: cfg.seed,
            workers: cfg.workers.max(1),
            start_step: run.start,
            shard: rank as u64,
            shards: run.world as u64,
            ..LoaderConfig::default()
        },
    )?;
    // Only these receive gradients (not the fixed sin-cos `pos_embed`, whatever graph the
    // micro-batch ran in).
    let trainable = trainable_params(&model);
    let inner_device = device.clone();
    let mut bucket_bytes = 0u64;
    if let Some(link) = link.as_mut() {
        // Agree on the run before the first step: same options, start and weights everywhere.
        let fp = fingerprint(cfg, run.start, &model) as f32;
        let t = Tensor::from_data(TensorData::new(vec![1.0f32, fp], [2]), &inner_device);
        let s = link
            .sum(t, "starting the run")?
            .into_data()
            .to_vec::<f32>()
            .unwrap_or_default();
        if s.len() != 2 || s[0] != run.world as f32 || s[1] != run.world as f32 * fp {
            return Err(ParallelError::Mismatch.into());
        }
    }
    let (mut acc, mut acc_n) = (0.0f64, 0u64);
    // A failure of the writing replica that the others learn of at the next all-reduce.
    let mut pending: Option<TrainError> = None;
    for step in run.start..cfg.steps {
        let lr = if cfg.warmup > 0 {
            cfg.lr * ((step + 1) as f64 / cfg.warmup as f64).min(1.0)
        } else {
            cfg.lr
        };
        let computed = match pending.take() {
            Some(e) => Err(e),
            None => local_gradients(
                run,
                &model,
                &mut loader,
                step,
                first_micro,
                per,
                &trainable,
                device,
            ),
        };
        let stop_requested = STOP.load(Ordering::SeqCst);
        let (grads, losses, stop) = match link.as_mut() {
            None => {
                let (grads, losses) = computed?;
                (grads, losses, stop_requested)
            }
            Some(link) => {
                let (grads, own, err) = match computed {
                    Ok((g, l)) => (Some(g), l, None),
                    Err(e) => (None, Vec::new(), Some(e)),
                };
                let bucket = pack(
                    &model,
                    grads,
                    &own,
                    first_micro,
                    cfg.grad_accum,
                    [stop_requested, err.is_some()],
                    &inner_device,
                );
                bucket_bytes = bucket.dims()[0] as u64 * 4;
                let summed = link.sum(bucket, &format!("step {}", step + 1))?;
                let (grads, losses, [stop, aborted]) = unpack(&model, summed, cfg.grad_accum);
                if let Some(e) = err {
                    return Err(e);
                }
                if aborted {
                    return Err(ParallelError::PeerStopped {
                        where_: if ema.is_some() {
                            String::new()
                        } else {
                            ", on node 0 if not here".into()
                        },
                    }
                    .into());
                }
                (grads, losses, stop)
            }
        };
        let mut step_loss = 0.0f64;
        for &value in &losses {
            if !value.is_finite() {
                return Err(TrainError::NonFinite {
                    step,
                    loss: value,
                    last: last_ckpt.clone(),
                });
            }
            step_loss += value as f64;
        }
        model = optim.step(lr, model, grads);
        if let Some(e) = ema.take() {
            let decay = ema::decay_at(cfg.ema_decay, e.updates, cfg.ema_warmup);
            ema = Some(Ema {
                model: ema::update(e.model, &model.valid(), decay),
                updates: e.updates + 1,
            });
        }
        acc += step_loss;
        acc_n += 1;
        let done = step + 1;
        if done % cfg.log_every == 0 || done == cfg.steps {
            let mean = acc / acc_n as f64;
            log.push((done, mean));
            if let Some(link) = link.as_mut() {
                on_event(TrainEvent::Communication(Communication {
                    replicas: run.world,
                    bytes_per_step: bucket_bytes,
                    seconds_per_step: link.take_seconds() / acc_n as f64,
                }));
            }
            on_event(TrainEvent::Progress(Progress {
                step: done,
                total: cfg.steps,
                loss: mean,
            }));
            acc = 0.0;
            acc_n = 0;
        }
        if done % cfg.checkpoint_every == 0 || done == cfg.steps || stop {
            if let Some(e) = &ema {
                let state = State {
                    step: done,
                    ema_updates: e.updates,
                    seed: cfg.seed,
                };
                match write_all(run, &model, &e.model, &optim, &state, log, last_ckpt) {
                    Ok(dir) => *last_ckpt = dir,
                    // The other replicas are told at the next step's all-reduce.
                    Err(err) if link.is_some() && !stop && done < cfg.steps => {
                        pending = Some(err);
                        continue;
                    }
                    Err(err) => return Err(err),
                }
            }
            if stop && done < cfg.steps {
                return Err(TrainError::Interrupted {
                    step: done,
                    checkpoint: if ema.is_some() {
                        last_ckpt.clone()
                    } else {
                        format!(
                            "{} (written by node 0)",
                            checkpoint_dir(run.run_dir, done).display()
                        )
                    },
                });
            }
        }
    }
    Ok(())
}

/// Writes checkpoint `state.step` and the run's EMA export and loss files; returns the
/// checkpoint's folder.
fn write_all<B: AutodiffBackend, O: Optimizer<Dit<B>, B>>(
    run: &Run,
    model: &Dit<B>,
    ema_model: &Dit<B::InnerBackend>,
    optim: &O,
    state: &State,
    log: &[(u64, f64)],
    last_ckpt: &str,
) -> Result<String, TrainError> {
    // Never seal a checkpoint of NaN/inf weights: the last good one stays the newest.
    for (which, finite) in [("model", all_finite(model)), ("EMA", all_finite(ema_model))] {
        if !finite {
            return Err(TrainError::NonFiniteWeights {
                step: state.step,
                which,
                last: last_ckpt.to_string(),
            });
        }
    }
    let dir = write_checkpoint(run.run_dir, model, ema_model, optim, state)?;
    run_dir::prune(run.run_dir, run.cfg.keep_checkpoints)?;
    export_ema(ema_model, run.run_dir)?;
    write_loss_log(&run.run_dir.join("loss.csv"), log)?;
    write_loss_plot(&run.run_dir.join("loss.png"), log)?;
    Ok(dir.display().to_string())
}

/// This replica's `per` micro-batches of `step` (global indices `first ..`): the sum of their
/// gradients (in micro-batch order) and each one's loss (already divided by `grad_accum`).
#[allow(clippy::too_many_arguments)]
fn local_gradients<B: AutodiffBackend>(
    run: &Run,
    model: &Dit<B>,
    loader: &mut Loader,
    step: u64,
    first: usize,
    per: usize,
    trainable: &[burn::module::ParamId],
    device: &B::Device,
) -> Result<(GradientsParams, Vec<f32>), TrainError> {
    let cfg = run.cfg;
    let batch = loader.next_batch()?;
    let [n, c, h, w] = batch.shape;
    let (micro, d) = (n / per, c * h * w);
    let mut rest: Vec<(usize, Batch)> = (0..per)
        .map(|i| {
            let batch = Batch {
                x: batch.x[i * micro * d..(i + 1) * micro * d].to_vec(),
                y: batch.y[i * micro..(i + 1) * micro].to_vec(),
                shape: [micro, c, h, w],
            };
            (first + i, batch)
        })
        .collect();
    let mut grads_acc: Option<GradientsParams> = None;
    let mut losses = Vec::with_capacity(per);
    while !rest.is_empty() {
        // A wave of up to `threads` micro-batches, computed concurrently.
        let tail = rest.split_off(cfg.threads.min(rest.len()));
        let wave = std::mem::replace(&mut rest, tail);
        let (ddpm, interp) = (&run.ddpm, run.interp.as_ref());
        let results = on_own_graphs(model, wave, |local, (m, batch)| {
            micro_step(cfg, step, m, local, ddpm, interp, batch, trainable, device)
        });
        for (value, grads) in results {
            losses.push(value);
            grads_acc = Some(match grads_acc {
                None => grads,
                Some(prev) => sum_gradients::<B>(prev, grads, model),
            });
        }
    }
    Ok((grads_acc.expect("per ≥ 1"), losses))
}

/// The bucket of one step (see the module docs).
fn pack<B: AutodiffBackend>(
    model: &Dit<B>,
    grads: Option<GradientsParams>,
    own_losses: &[f32],
    first: usize,
    slots: usize,
    flags: [bool; 2],
    device: &B::Device,
) -> Tensor<B::InnerBackend, 1> {
    struct Pack<'a, B: AutodiffBackend> {
        grads: Option<GradientsParams>,
        has: Vec<f32>,
        pieces: Vec<Tensor<B::InnerBackend, 1>>,
        device: &'a B::Device,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Pack<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let t = param.val();
            if !t.is_require_grad() {
                return;
            }
            let n = t.shape().num_elements();
            let g = self
                .grads
                .as_mut()
                .and_then(|g| g.remove::<B::InnerBackend, D>(param.id));
            self.has.push(if g.is_some() { 1.0 } else { 0.0 });
            self.pieces.push(match g {
                Some(g) => g.reshape([n]),
                None => Tensor::zeros([n], self.device),
            });
        }
    }
    let mut p = Pack::<B> {
        grads,
        has: Vec::new(),
        pieces: Vec::new(),
        device,
    };
    model.visit(&mut p);
    let mut head = vec![0.0f32; 2 + slots];
    head[0] = f32::from(u8::from(flags[0]));
    head[1] = f32::from(u8::from(flags[1]));
    head[2 + first..2 + first + own_losses.len()].copy_from_slice(own_losses);
    head.extend_from_slice(&p.has);
    let len = head.len();
    let mut pieces = vec![Tensor::from_data(TensorData::new(head, [len]), device)];
    pieces.extend(p.pieces);
    Tensor::cat(pieces, 0)
}

/// The summed bucket's gradients, losses and `[stop, abort]`.
fn unpack<B: AutodiffBackend>(
    model: &Dit<B>,
    bucket: Tensor<B::InnerBackend, 1>,
    slots: usize,
) -> (GradientsParams, Vec<f32>, [bool; 2]) {
    struct Count(usize);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if param.val().is_require_grad() {
                self.0 += 1;
            }
        }
    }
    let mut count = Count(0);
    model.visit(&mut count);
    let params = count.0;
    let head_len = 2 + slots + params;
    let head: Vec<f32> = bucket
        .clone()
        .narrow(0, 0, head_len)
        .into_data()
        .to_vec()
        .expect("an f32 bucket");
    struct Unpack<'a, B: AutodiffBackend> {
        bucket: Tensor<B::InnerBackend, 1>,
        has: &'a [f32],
        index: usize,
        offset: usize,
        grads: GradientsParams,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Unpack<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let t = param.val();
            if !t.is_require_grad() {
                return;
            }
            let dims = t.dims();
            let n: usize = dims.iter().product();
            if self.has[self.index] > 0.5 {
                let g = self.bucket.clone().narrow(0, self.offset, n).reshape(dims);
                self.grads.register::<B::InnerBackend, D>(param.id, g);
            }
            self.index += 1;
            self.offset += n;
        }
    }
    let mut u = Unpack::<B> {
        bucket,
        has: &head[2 + slots..],
        index: 0,
        offset: head_len,
        grads: GradientsParams::new(),
    };
    model.visit(&mut u);
    let losses = head[2..2 + slots].to_vec();
    (u.grads, losses, [head[0] > 0.5, head[1] > 0.5])
}

/// A 12-bit digest of the run's options (those that must agree between processes), its start
/// step and the first values of its first weight, so the summed fingerprints of `R` replicas
/// equal `R ×` one only if they agree (12 bits keep the f32 sums exact up to 4096 replicas).
fn fingerprint<B: AutodiffBackend>(cfg: &TrainConfig, start: u64, model: &Dit<B>) -> u32 {
    let mut c = cfg.clone();
    // Per-process execution settings may differ between nodes.
    c.threads = 0;
    c.workers = 0;
    c.keep_checkpoints = 0;
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&c).unwrap_or_default());
    h.update(start.to_le_bytes());
    struct First(Option<Vec<f32>>);
    impl<B: Backend> ModuleVisitor<B> for First {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.0.is_none() {
                let flat = param.val().flatten::<1>(0, D - 1);
                let n = flat.dims()[0].min(16);
                self.0 = flat.narrow(0, 0, n).into_data().to_vec().ok();
            }
        }
    }
    let mut first = First(None);
    model.valid().visit(&mut first);
    for v in first.0.unwrap_or_default() {
        h.update(v.to_bits().to_le_bytes());
    }
    let d = h.finalize();
    u32::from_le_bytes([d[0], d[1], d[2], d[3]]) & 0xFFF
}
