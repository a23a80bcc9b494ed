//! The entry points [`train`] and [`train_replicas`]: checking the options, opening the data,
//! building or loading the model, locking the run folder, resuming, and launching the replicas.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamWConfig, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use nag_core::ddpm::DdpmSchedule;
use nag_models::dit::Dit;

use crate::data::{open_dataset, DataOptions, Dataset};
use crate::parallel::{self, Cluster, Link, ParallelError, Replicas};
use crate::run_dir::{self, checkpoint_dir, RunLock, Skipped};

use super::checkpoint::load_checkpoint;
use super::config::rebuild_label_table;
use super::loss_log::read_loss_log;
use super::{io, replica, write_atomic, TrainConfig, TrainError, TrainEvent, TrainSummary};

/// Trains per `cfg` into `run_dir`; with `resume`, continues from its latest checkpoint
/// (the stored config must equal `cfg` except for `steps`).
pub fn train<B: AutodiffBackend>(
    cfg: &TrainConfig,
    run_dir: &Path,
    resume: bool,
    device: &B::Device,
    on_event: impl FnMut(TrainEvent),
) -> Result<TrainSummary, TrainError> {
    train_replicas::<B>(
        cfg,
        run_dir,
        resume,
        &Replicas::single(device.clone()),
        on_event,
    )
}

/// [`train`] on data-parallel replicas ([`crate::parallel`]): one per device of `replicas`,
/// and as many in each other process of its cluster. Each optimiser step's `grad_accum`
/// micro-batches are shared out in contiguous blocks, replica `r` of `R` taking micro-batches
/// `r·A/R .. (r+1)·A/R`, each with the same data and draws as on one replica, so the weights
/// equal a one-replica run's up to the order of the gradient sums (bit-equal when every replica
/// has one micro-batch). Node 0's first replica keeps the EMA and writes the run folder; the
/// other nodes read it only to resume.
pub fn train_replicas<B: AutodiffBackend>(
    cfg: &TrainConfig,
    run_dir: &Path,
    resume: bool,
    replicas: &Replicas<B::Device>,
    mut on_event: impl FnMut(TrainEvent),
) -> Result<TrainSummary, TrainError> {
    cfg.validate()?;
    replicas.validate()?;
    let world = replicas.world();
    if !cfg.grad_accum.is_multiple_of(world) {
        return Err(TrainError::Config(format!(
            "--grad-accum {} must be a multiple of the replica count {world} (devices × nodes): each replica computes --grad-accum / {world} micro-batches per step",
            cfg.grad_accum
        )));
    }
    let writer = replicas.is_first_node();
    // Ports before any work: a taken one is an error naming it, not a hang.
    if let Some(c) = &replicas.cluster {
        let data_port = Cluster::port_of(&c.node_address, "--node-address")?;
        parallel::check_port(data_port, "--node-address", "this node's data")?;
        if c.node_rank == 0 && c.host_coordinator {
            parallel::start_coordinator(Cluster::port_of(&c.coordinator, "--coordinator")?)?;
        }
    }
    let device = &replicas.devices[0];
    if resume && !run_dir.join("checkpoints").is_dir() {
        return Err(TrainError::NoCheckpoint {
            dir: run_dir.to_path_buf(),
            detail: if run_dir.is_dir() {
                " (it has no checkpoints/ folder)".into()
            } else {
                " (no such folder)".into()
            },
        });
    }
    let data_opts = DataOptions {
        seed: cfg.seed,
        image_size: cfg.image_size,
        on_error: cfg.on_bad_file,
        ..DataOptions::default()
    };
    let dataset: Arc<dyn Dataset> = Arc::from(open_dataset(&cfg.data, &data_opts)?);
    let mut init = match &cfg.init {
        Some(path) => Some(nag_models::checkpoint::load_state_dict(path, &Default::default())?.0),
        None => None,
    };
    let model_cfg = cfg.model_config(dataset.as_ref(), init.as_ref())?;
    if let (Some(sd), true) = (init.as_mut(), cfg.new_classes) {
        rebuild_label_table(sd, &model_cfg, cfg.seed);
    }
    // Only once the data and the model are known to be usable: a bad option leaves no run.
    // Other nodes never write the run folder (it may be node 0's, on a shared file system).
    let _lock = if writer {
        io(run_dir, fs::create_dir_all(run_dir.join("checkpoints")))?;
        Some(RunLock::acquire(run_dir)?)
    } else {
        None
    };
    // burn's initialisers draw from the backend's process-wide RNG: seed and initialise under
    // one lock so concurrent runs in one process cannot interleave their draws.
    let mut model: Dit<B> = {
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(device, cfg.seed);
        let model: Dit<B> = model_cfg.init(device)?;
        // burn 0.21 draws a parameter's initial values on first use: read each one here,
        // under the lock.
        crate::ema::materialise(&model);
        model
    };
    if let (Some(sd), Some(path)) = (init, &cfg.init) {
        let (loaded, report) = model.load_state_dict(&sd)?;
        drop(sd);
        model = loaded;
        if report.null_timestep_initialised {
            on_event(TrainEvent::NullTimestepInitialised(path.clone()));
        }
    }
    let mut ema_model: Dit<B::InnerBackend> = model.valid();
    let mut adamw = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(cfg.weight_decay as f32);
    if let Some(c) = cfg.grad_clip {
        adamw = adamw.with_grad_clipping(Some(
            burn::optim::grad_clipping::GradientClippingConfig::Norm(c),
        ));
    }
    let mut optim = adamw.init::<B, Dit<B>>();
    let mut start = 0u64;
    let mut ema_updates = 0u64;
    let config_path = run_dir.join("config.json");
    if resume {
        let stored: TrainConfig =
            serde_json::from_slice(&io(&config_path, fs::read(&config_path))?)
                .map_err(|e| TrainError::Config(format!("{}: {e}", config_path.display())))?;
        let conflicts = stored.resume_conflicts(cfg);
        if !conflicts.is_empty() {
            return Err(TrainError::Config(format!(
                "--resume: the options differ from the run's {}: {} (only --steps, --threads, --workers and --keep-checkpoints may change; give the run's values, or train into a new --out)",
                config_path.display(),
                conflicts.join(", ")
            )));
        }
        // The newest checkpoint that verifies and loads; damaged or incomplete newer ones are
        // passed over and reported.
        let mut skipped: Vec<Skipped> = Vec::new();
        let mut chosen = None;
        for (step, dir) in run_dir::checkpoints(run_dir) {
            let loaded = run_dir::usable(run_dir, &dir).and_then(|()| {
                load_checkpoint::<B>(&model, &ema_model, &dir, device).map_err(|e| e.to_string())
            });
            match loaded {
                Ok(parts) => {
                    chosen = Some((step, dir, parts));
                    break;
                }
                Err(reason) => skipped.push(Skipped { dir, reason }),
            }
        }
        let Some((step, dir, loaded)) = chosen else {
            let detail = skipped
                .iter()
                .map(|s| format!("\n  {}: {}", s.dir.display(), s.reason))
                .collect::<String>();
            return Err(TrainError::NoCheckpoint {
                dir: run_dir.to_path_buf(),
                detail: if detail.is_empty() {
                    " (none was written)".into()
                } else {
                    format!(":{detail}")
                },
            });
        };
        if loaded.state.step != step {
            return Err(TrainError::Config(format!(
                "{}: state.json says step {}, the folder's name step {step}",
                dir.display(),
                loaded.state.step
            )));
        }
        model = loaded.model;
        ema_model = loaded.ema;
        optim = optim.load_record(loaded.optim);
        start = loaded.state.step;
        ema_updates = loaded.state.ema_updates;
        on_event(TrainEvent::Resumed {
            from: dir,
            step,
            skipped,
        });
    }
    let json = serde_json::to_vec_pretty(cfg).map_err(|e| TrainError::Config(e.to_string()))?;
    if writer {
        write_atomic(&config_path, &json)?;
    }

    let loss_path = run_dir.join("loss.csv");
    let log = if resume && loss_path.is_file() {
        read_loss_log(&loss_path, start)
    } else {
        Vec::new()
    };
    let last_ckpt = if resume {
        checkpoint_dir(run_dir, start).display().to_string()
    } else {
        "none yet".into()
    };
    let run = replica::Run {
        cfg,
        run_dir,
        dataset: dataset.clone(),
        ddpm: DdpmSchedule::dit(),
        interp: cfg.objective.schedule(),
        start,
        world,
    };
    let lead = replica::Replica {
        rank: replicas.global_rank(0),
        device: device.clone(),
        model: model.clone(),
        optim: optim.clone(),
        ema: writer.then_some(replica::Ema {
            model: ema_model,
            updates: ema_updates,
        }),
        log,
        last_ckpt,
        link: None,
    };
    let log = if world == 1 {
        replica::run(&run, lead, &mut on_event)?
    } else {
        // One collective group per process: runs with replicas take turns.
        let _group = parallel::lock_group();
        parallel::reset::<B::InnerBackend>();
        let mut lead = lead;
        lead.link = Some(Link::new(replicas, 0, device.clone()));
        let others: Vec<_> = (1..replicas.devices.len())
            .map(|local| {
                let device = replicas.devices[local].clone();
                replica::Replica {
                    rank: replicas.global_rank(local),
                    model: model.clone().fork(&device),
                    optim: optim.clone(),
                    ema: None,
                    log: Vec::new(),
                    last_ckpt: String::new(),
                    link: Some(Link::new(replicas, local, device.clone())),
                    device,
                }
            })
            .collect();
        let run = &run;
        let (lead_result, other_results) = std::thread::scope(|scope| {
            let handles: Vec<_> = others
                .into_iter()
                .map(|r| {
                    std::thread::Builder::new()
                        .name(format!("nag-replica-{}", r.rank))
                        .spawn_scoped(scope, move || replica::run(run, r, &mut |_| {}))
                        .expect("a replica thread")
                })
                .collect();
            let lead_result = replica::run(run, lead, &mut on_event);
            let others: Vec<_> = handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(TrainError::Config("a replica thread panicked".into()))
                    })
                })
                .collect();
            (lead_result, others)
        });
        // The first error that is a replica's own (not "another replica stopped").
        let peer_stopped =
            |e: &TrainError| matches!(e, TrainError::Parallel(ParallelError::PeerStopped { .. }));
        let lead_result = match lead_result {
            Err(e) if !peer_stopped(&e) => return Err(e),
            r => r,
        };
        for r in other_results {
            if let Err(e) = r {
                if !peer_stopped(&e) {
                    return Err(e);
                }
            }
        }
        lead_result?
    };
    Ok(TrainSummary {
        run_dir: run_dir.to_path_buf(),
        steps: cfg.steps,
        final_loss: log.last().map_or(f64::NAN, |l| l.1),
        first_loss: log.first().map_or(f64::NAN, |l| l.1),
        skipped_files: dataset.skipped(),
    })
}
