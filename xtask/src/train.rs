//! `cargo xtask train`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use nag_backends::{dispatch_devices, DeviceSpec, DevicesTask};
use nag_train::parallel::{Cluster, ReplicaOptions, Replicas};
use nag_train::run_dir::RunLock;
use nag_train::train::{train_replicas, TrainConfig};

use crate::progress::TrainProgress;

/// Arguments of `cargo xtask train`: the run's [`TrainConfig`] and where and how it runs.
/// Every option may also come from `--config FILE.toml`; flags given on the command line win.
#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub config: TrainConfig,
    /// Micro-batches computed at once, one thread each (does not change the result; with
    /// --grad-accum = --threads = cores a CPU step uses every core) [default: the device's
    /// cores, at most --grad-accum]
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run directory.
    #[arg(long, default_value = "runs/default")]
    pub out: PathBuf,
    #[command(flatten)]
    pub replicas: ReplicaOptions,
    /// Continue the run in --out from its newest good checkpoint (a damaged or incomplete
    /// newer one is passed over, with the reason).
    #[arg(long)]
    pub resume: bool,
}

struct Task<'a> {
    cfg: TrainConfig,
    out: &'a Path,
    resume: bool,
    cluster: Option<Cluster>,
    timeout: Duration,
}

impl DevicesTask for Task<'_> {
    type Output = Result<nag_train::train::TrainSummary>;
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Self::Output {
        let replicas = Replicas {
            devices,
            cluster: self.cluster,
            timeout: self.timeout,
        };
        train_on::<B>(&self.cfg, self.out, self.resume, &replicas)
    }
}

/// The process's replicas from `--devices`/`--device` and the cluster flags.
fn replica_layout(args: &TrainArgs) -> Result<(Vec<DeviceSpec>, Option<Cluster>)> {
    let (names, cluster) = args.replicas.layout()?;
    let specs = names
        .iter()
        .map(|d| DeviceSpec::parse(d))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((specs, cluster))
}

/// Threads for micro-batches when `--threads` is not given: on a CPU one micro-batch keeps
/// about one core busy, so as many at once as there are cores (never changes the result).
pub fn default_threads(spec: DeviceSpec, grad_accum: usize) -> usize {
    spec.concurrent_batches().min(grad_accum)
}

/// Trains per `cfg` into `out` on data-parallel replicas, with a progress bar on stderr.
fn train_on<B: AutodiffBackend>(
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    replicas: &Replicas<B::Device>,
) -> Result<nag_train::train::TrainSummary> {
    {
        let start = Instant::now();
        let mut bar = TrainProgress::new(cfg.steps);
        let summary = train_replicas::<B>(cfg, out, resume, replicas, |e| bar.event(e));
        bar.finish();
        let summary = summary?;
        eprintln!(
            "trained {} steps in {:.0}s; loss {:.4} → {:.4}",
            summary.steps,
            start.elapsed().as_secs_f64(),
            summary.first_loss,
            summary.final_loss
        );
        if summary.skipped_files > 0 {
            eprintln!(
                "skipped {} unreadable file(s) of '{}' (--on-bad-file fail stops at the first)",
                summary.skipped_files, cfg.data
            );
        }
        Ok(summary)
    }
}

/// Runs `cargo xtask train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    let mut cfg = args.config.clone();
    let (specs, cluster) = replica_layout(args)?;
    let spec = specs[0];
    let world = specs.len() * args.replicas.nodes as usize;
    // (`train_replicas` refuses a replica count that does not divide --grad-accum.)
    cfg.threads = match args.threads {
        Some(t) => t,
        // The cores are shared by this process's replicas.
        None => {
            let per_replica = (spec.concurrent_batches() / specs.len()).max(1);
            per_replica.min(cfg.grad_accum / world).max(1)
        }
    };
    cfg.validate()?;
    let first_node = cluster.as_ref().is_none_or(|c| c.node_rank == 0);
    if first_node && args.out.is_dir() {
        // A run in progress there is named before anything else is said about the folder.
        drop(RunLock::acquire(&args.out)?);
    }
    if first_node
        && args.out.exists()
        && !args.resume
        && args.out.join("checkpoints").join("latest").exists()
    {
        bail!(
            "{} already holds a run; pass --resume to continue it or --out to start a new one",
            args.out.display()
        );
    }
    let model = match &cfg.init {
        Some(init) => format!("the network of {}", init.display()),
        None => format!("'{}'", cfg.model),
    };
    let on = match &cluster {
        None if specs.len() == 1 => spec.to_string(),
        None => format!("{} replicas ({})", specs.len(), join(&specs)),
        Some(c) => format!(
            "{world} replicas: node {} of {} ({}), coordinator {}",
            c.node_rank,
            c.nodes,
            join(&specs),
            c.coordinator
        ),
    };
    eprintln!(
        "training {model} on '{}' ({:?}) for {} steps, batch {}, noise dropout {}, on {on}",
        cfg.data, cfg.objective, cfg.steps, cfg.batch, cfg.noise_dropout
    );
    if cluster.is_some() {
        // burn-communication installs an INFO-level logger on stdout the first time it
        // listens; a silent one installed first keeps the run's output readable.
        let _ =
            tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default());
        quiet_collective_panics();
    }
    let _coordinator = match &cluster {
        Some(c) if c.node_rank == 0 => Some(Coordinator::start(Cluster::port_of(
            &c.coordinator,
            "--coordinator",
        )?)?),
        _ => None,
    };
    crate::signals::stop_training_on_signal();
    // burn-collective 0.21 prints "Connecting to ws://… ..." on stdout at every cross-process
    // all-reduce; nothing of the run's own goes to stdout until it ends.
    let quiet = cluster.is_some().then(StdoutSilenced::new);
    let summary = dispatch_devices(
        &specs,
        Task {
            cfg,
            out: &args.out,
            resume: args.resume,
            cluster,
            timeout: args.replicas.timeout(),
        },
    );
    drop(quiet);
    let summary = summary??;
    println!("run: {}", summary.run_dir.display());
    println!(
        "next: cargo xtask sample --run {} --compare",
        summary.run_dir.display()
    );
    Ok(())
}

fn join(specs: &[DeviceSpec]) -> String {
    specs
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// burn-collective 0.21 panics inside its own threads when a peer's connection closes (the run
/// then stops with an error of its own): one line each instead of a backtrace.
fn quiet_collective_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let upstream = info.location().is_some_and(|l| {
            l.file().contains("burn-collective") || l.file().contains("burn-communication")
        });
        if upstream {
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            eprintln!("\nnote: burn-collective: {msg}");
        } else {
            default(info);
        }
    }));
}

/// burn-collective's coordinator as a child process (`xtask coordinator`) in a process group
/// of its own: a Ctrl-C in the terminal reaches the trainers, which stop together after a
/// checkpoint, but not the coordinator they need to agree on it. Killed when dropped, and by
/// the kernel if this process dies.
struct Coordinator(std::process::Child);

impl Coordinator {
    fn start(port: u16) -> Result<Self> {
        nag_train::parallel::check_port(port, "--coordinator", "coordinator")?;
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.args(["coordinator", "--port", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        Ok(Self(
            cmd.spawn().context("starting the coordinator process")?,
        ))
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Points the process's stdout at /dev/null until dropped (Linux; elsewhere a no-op).
struct StdoutSilenced(
    #[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))] Option<i32>,
);

impl StdoutSilenced {
    fn new() -> Self {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let _ = std::io::Write::flush(&mut std::io::stdout());
            // SAFETY: plain fd calls; the saved descriptor is restored and closed in `drop`.
            unsafe {
                let saved = libc::dup(1);
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                if saved >= 0 && null >= 0 && libc::dup2(null, 1) >= 0 {
                    libc::close(null);
                    return Self(Some(saved));
                }
                if null >= 0 {
                    libc::close(null);
                }
                if saved >= 0 {
                    libc::close(saved);
                }
            }
        }
        Self(None)
    }
}

impl Drop for StdoutSilenced {
    fn drop(&mut self) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        if let Some(saved) = self.0 {
            let _ = std::io::Write::flush(&mut std::io::stdout());
            // SAFETY: restores the descriptor saved in `new`.
            unsafe {
                libc::dup2(saved, 1);
                libc::close(saved);
            }
        }
    }
}
