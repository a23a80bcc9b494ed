//! Data-parallel replicas on burn-collective 0.21 (burn's own all-reduce).
//!
//! A run of `R = nodes × devices` replicas: every replica holds the model and the optimiser,
//! computes the gradients of its share of each step's micro-batches (see [`crate::train`]), and
//! the replicas sum one *bucket* per step (every gradient, flattened, plus a few control slots)
//! with one all-reduce, as PyTorch DDP buckets gradients; then each applies the same AdamW
//! update. In one process the replicas are threads (burn-collective's local server, tree
//! strategy); across processes burn-collective's global orchestrator (websocket, ring) links one
//! process per node.
//!
//! Two workarounds for burn-collective 0.21 (tests: `tests/collective.rs`):
//! - Its global sync never clears the list of nodes that reached it (`SyncService::sync`
//!   clears a copy), so the *second* all-reduce across processes waits forever (and the tree and
//!   centralized strategies reuse fixed transfer ids, burn issue #4549). A process-spanning
//!   replica therefore opens a fresh session for every all-reduce: register, all-reduce, finish.
//!   That costs a round trip to the orchestrator per step (~50 ms on localhost).
//! - Registering is no barrier against a node still in the previous session: a node that
//!   registers again before a slower node's `finish` reached the orchestrator gets a partial
//!   sum (its own tensor back; reproduced with a 500 ms delay before one `finish`). Every
//!   all-reduce therefore carries two control slots, 1 and the call index, and a sum whose
//!   slots are not `(R, R·call)` is [`ParallelError::PartialSum`]: the run stops before using
//!   it (the other replicas stop at their timeout), never trains on a wrong sum.
//! - Parameter ids are random per process, so the bucket is laid out by the model's parameter
//!   order, never by id.
//!
//! Every wait on another replica is bounded by [`Replicas::timeout`]: a replica that died or
//! never joined gives [`ParallelError::Timeout`], not a hang.

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};

/// Errors of the replica machinery.
#[derive(Debug, thiserror::Error)]
pub enum ParallelError {
    /// An impossible replica layout.
    #[error("{0}")]
    Config(String),
    /// A port to listen on is taken.
    #[error("{what} port {port} is in use ({source}); choose another with {flag}")]
    PortInUse {
        /// Which port.
        what: &'static str,
        /// The port.
        port: u16,
        /// The flag that sets it.
        flag: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another replica did not answer in time.
    #[error("{what}: no answer from the other replicas within {secs} s (a process died, never joined, or is stuck); stopped without writing a checkpoint. Raise --peer-timeout if steps are slower than that")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The timeout in seconds.
        secs: u64,
    },
    /// burn-collective reported an error.
    #[error("{what}: burn-collective: {detail}")]
    Collective {
        /// The operation.
        what: &'static str,
        /// Its error.
        detail: String,
    },
    /// Another replica stopped with an error of its own (reported by that replica).
    #[error("another replica stopped with an error (see its message{where_})")]
    PeerStopped {
        /// Where to look.
        where_: String,
    },
    /// The replicas do not train the same run.
    #[error("the replicas disagree on the run (options, start step or weights differ between processes): start every node with the same options and seed; with --resume every node must see the same run folder")]
    Mismatch,
    /// An all-reduce that did not sum every replica's tensor of the same call (burn-collective
    /// 0.21 across processes: a node that joins the next session before another's leaving of
    /// the previous one reaches the coordinator gets a partial sum).
    #[error("{what}: the all-reduce summed {count} of {world} replicas' tensors (or tensors of different calls); burn-collective 0.21 lets a node that is quick to start the next all-reduce miss a slower one. Stopped before using it: the last checkpoint is intact, continue with --resume")]
    PartialSum {
        /// The all-reduce.
        what: String,
        /// Replicas that contributed.
        count: f32,
        /// Replicas there are.
        world: usize,
    },
}

/// Where one training process's replicas run: `cargo xtask train`'s device and cluster flags
/// (clap, and `--config FILE.toml` by the same names), torchrun's layout.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ReplicaOptions {
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Data-parallel: one replica per device, e.g. cpu,cpu or cuda:0,cuda:1 (instead of
    /// --device). --grad-accum must be a multiple of the replica count (devices × --nodes).
    #[arg(long, value_delimiter = ',', value_name = "D1,D2,…")]
    pub devices: Option<Vec<String>>,
    /// Processes in a multi-process run (torchrun's --nnodes), each started with the same
    /// options and as many --devices.
    #[arg(long, default_value_t = 1)]
    pub nodes: u32,
    /// This process's rank in 0..--nodes (torchrun's --node-rank); node 0 hosts the
    /// coordinator and writes the run folder.
    #[arg(long, default_value_t = 0)]
    pub node_rank: u32,
    /// HOST:PORT of node 0's coordinator (torchrun's --master-addr:--master-port); needed
    /// with --nodes > 1.
    #[arg(long, value_name = "HOST:PORT")]
    pub coordinator: Option<String>,
    /// HOST:PORT at which the other nodes reach this one (default: 127.0.0.1 and the
    /// coordinator's port + 1 + --node-rank, i.e. all nodes on one machine).
    #[arg(long, value_name = "HOST:PORT")]
    pub node_address: Option<String>,
    /// Seconds to wait for the other replicas at any one point (joining, each step's
    /// all-reduce) before stopping with an error.
    #[arg(long, default_value_t = 300)]
    pub peer_timeout: u64,
}

impl ReplicaOptions {
    /// This process's device names (`--devices`, else `--device`) and its cluster (`None` for
    /// one process), checked against each other. Node 0's coordinator is left to the caller
    /// (`host_coordinator: false`), which can keep it up past a Ctrl-C in a process of its own.
    pub fn layout(&self) -> Result<(Vec<String>, Option<Cluster>), ParallelError> {
        let devices = self
            .devices
            .clone()
            .unwrap_or_else(|| vec![self.device.clone()]);
        if self.nodes == 0 {
            return Err(ParallelError::Config("--nodes must be at least 1".into()));
        }
        if self.nodes == 1 {
            if self.node_rank != 0 || self.coordinator.is_some() || self.node_address.is_some() {
                return Err(ParallelError::Config(
                    "--node-rank, --coordinator and --node-address need --nodes > 1".into(),
                ));
            }
            return Ok((devices, None));
        }
        let Some(coordinator) = self.coordinator.clone() else {
            return Err(ParallelError::Config(format!(
                "--nodes {} needs --coordinator HOST:PORT (node 0's address and a free port)",
                self.nodes
            )));
        };
        let port = Cluster::port_of(&coordinator, "--coordinator")?;
        let node_address = match &self.node_address {
            Some(a) => a.clone(),
            None => {
                let p = u32::from(port) + 1 + self.node_rank;
                let p = u16::try_from(p).map_err(|_| {
                    ParallelError::Config(format!(
                        "--coordinator port {port} + 1 + --node-rank is over 65535: give --node-address"
                    ))
                })?;
                format!("127.0.0.1:{p}")
            }
        };
        Ok((
            devices,
            Some(Cluster {
                nodes: self.nodes,
                node_rank: self.node_rank,
                coordinator,
                node_address,
                host_coordinator: false,
            }),
        ))
    }

    /// `--peer-timeout`.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.peer_timeout)
    }
}

/// Several processes (nodes) linked by burn-collective's global orchestrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Number of processes.
    pub nodes: u32,
    /// This process's rank in `0..nodes`; rank 0 hosts the orchestrator.
    pub node_rank: u32,
    /// `HOST:PORT` of the orchestrator (node 0 listens on `PORT`).
    pub coordinator: String,
    /// `HOST:PORT` at which the other nodes reach this one's tensor data service.
    pub node_address: String,
    /// Node 0 starts the coordinator on a thread of its own. burn-collective's coordinator
    /// ends on the process's first Ctrl-C/SIGTERM, before the run's last checkpoint is
    /// written; a caller that wants a clean stop runs [`serve_coordinator`] in a process of its
    /// own (as `xtask` does) and sets this to false.
    pub host_coordinator: bool,
}

impl Cluster {
    /// The port of `HOST:PORT`.
    pub fn port_of(addr: &str, flag: &str) -> Result<u16, ParallelError> {
        addr.rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .ok_or_else(|| {
                ParallelError::Config(format!(
                    "{flag} '{addr}': expected HOST:PORT, e.g. 10.0.0.1:29500"
                ))
            })
    }
}

/// Where the replicas of a run live.
#[derive(Debug, Clone)]
pub struct Replicas<D> {
    /// This process's devices, one replica each (same backend).
    pub devices: Vec<D>,
    /// Other processes, if any (each with as many devices as this one).
    pub cluster: Option<Cluster>,
    /// The longest wait for the other replicas at any one point.
    pub timeout: Duration,
}

impl<D: Clone> Replicas<D> {
    /// One replica on `device`.
    pub fn single(device: D) -> Self {
        Self {
            devices: vec![device],
            cluster: None,
            timeout: Duration::from_secs(300),
        }
    }

    /// Replicas in the whole run.
    pub fn world(&self) -> usize {
        self.devices.len() * self.cluster.as_ref().map_or(1, |c| c.nodes as usize)
    }

    /// The run-wide rank of this process's `local`-th replica.
    pub fn global_rank(&self, local: usize) -> usize {
        self.cluster.as_ref().map_or(0, |c| c.node_rank as usize) * self.devices.len() + local
    }

    /// Whether this process is node 0 (the one that writes the run folder).
    pub fn is_first_node(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.node_rank == 0)
    }

    /// Checks the layout.
    pub fn validate(&self) -> Result<(), ParallelError> {
        if self.devices.is_empty() {
            return Err(ParallelError::Config("--devices: no device given".into()));
        }
        if self.timeout.is_zero() {
            return Err(ParallelError::Config(
                "--peer-timeout must be at least 1 s".into(),
            ));
        }
        if let Some(c) = &self.cluster {
            if c.nodes == 0 || c.node_rank >= c.nodes {
                return Err(ParallelError::Config(format!(
                    "--node-rank {} must be below --nodes {}",
                    c.node_rank, c.nodes
                )));
            }
            Cluster::port_of(&c.coordinator, "--coordinator")?;
            Cluster::port_of(&c.node_address, "--node-address")?;
        }
        Ok(())
    }
}

/// One burn-collective group per process and backend at a time (burn issue #3449): runs that
/// use replicas take this for their whole length.
static GROUP: Mutex<()> = Mutex::new(());

/// Holds the process's collective group for one run.
pub(crate) fn lock_group() -> std::sync::MutexGuard<'static, ()> {
    GROUP.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts burn-collective's global orchestrator on `port` (node 0), on a thread of its own
/// that lives as long as the process. The port is checked first, so a taken port is a clear
/// error rather than a panic inside the orchestrator.
pub fn start_coordinator(port: u16) -> Result<(), ParallelError> {
    check_port(port, "--coordinator", "coordinator")?;
    std::thread::Builder::new()
        .name("nag-coordinator".into())
        .spawn(move || {
            // A coordinator that cannot start shows as the other replicas' timeout.
            let _ = serve_coordinator(port);
        })
        .map_err(|e| ParallelError::Config(format!("cannot start the coordinator thread: {e}")))?;
    Ok(())
}

/// Runs burn-collective's global orchestrator on `port` until Ctrl-C/SIGTERM.
pub fn serve_coordinator(port: u16) -> Result<(), ParallelError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| ParallelError::Config(format!("cannot start the coordinator: {e}")))?;
    runtime.block_on(burn_collective::start_global_orchestrator(port));
    Ok(())
}

/// Fails with [`ParallelError::PortInUse`] if `port` cannot be listened on.
pub fn check_port(port: u16, flag: &'static str, what: &'static str) -> Result<(), ParallelError> {
    std::net::TcpListener::bind(("0.0.0.0", port))
        .map(drop)
        .map_err(|source| ParallelError::PortInUse {
            what,
            port,
            flag,
            source,
        })
}

/// Runs `f` on a thread of its own and waits at most `timeout` for it. On a timeout the thread
/// is left blocked (burn-collective's calls cannot be cancelled); the run stops with the error.
fn within<T: Send + 'static>(
    timeout: Duration,
    what: impl Into<String>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ParallelError> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("nag-collective".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| ParallelError::Config(format!("cannot start a thread: {e}")))?;
    rx.recv_timeout(timeout).map_err(|e| match e {
        mpsc::RecvTimeoutError::Timeout => ParallelError::Timeout {
            what: what.into(),
            secs: timeout.as_secs(),
        },
        // The call panicked inside burn-collective (a peer's connection closed under it).
        mpsc::RecvTimeoutError::Disconnected => ParallelError::Collective {
            what: "the connection to the other replicas",
            detail: format!(
                "{}: it failed (another process stopped or its connection closed)",
                what.into()
            ),
        },
    })
}

/// The call index of the control slots cycles with this period (exact in f32 even summed
/// over 256 replicas).
const CALL_INDEX_PERIOD: u32 = 1 << 15;

/// Whether the control slots of a summed bucket (`count`, `calls`) say that all `world`
/// replicas contributed the tensor of call `call`: `count = world`, `calls = world·call`.
fn complete_sum(count: f32, calls: f32, call: f32, world: usize) -> bool {
    count == world as f32 && calls == world as f32 * call
}

/// One replica's link to the others: sums a rank-1 tensor over all replicas.
pub(crate) struct Link<B: Backend> {
    peer: PeerId,
    device: B::Device,
    config: CollectiveConfig,
    /// Across processes: a fresh session per all-reduce (see the module docs).
    session_per_call: bool,
    registered: bool,
    timeout: Duration,
    /// Seconds spent in all-reduces since the last [`Self::take_seconds`].
    seconds: f64,
    /// Replicas in the run.
    world: usize,
    /// All-reduces so far (the call index of the control slots).
    calls: u32,
}

impl<B: Backend> Link<B> {
    pub(crate) fn new<D: Clone>(replicas: &Replicas<D>, local: usize, device: B::Device) -> Self {
        let mut config = CollectiveConfig::default().with_num_devices(replicas.devices.len());
        if let Some(c) = &replicas.cluster {
            let data_port = Cluster::port_of(&c.node_address, "--node-address").unwrap_or(0);
            config = config
                .with_num_nodes(c.nodes)
                .with_global_address(
                    format!("ws://{}", c.coordinator)
                        .parse()
                        .expect("any string is an address"),
                )
                .with_node_address(
                    format!("ws://{}", c.node_address)
                        .parse()
                        .expect("any string is an address"),
                )
                .with_data_service_port(data_port);
        }
        Self {
            peer: PeerId(replicas.global_rank(local) as u32),
            device,
            config,
            session_per_call: replicas.cluster.is_some(),
            registered: false,
            timeout: replicas.timeout,
            seconds: 0.0,
            world: replicas.world(),
            calls: 0,
        }
    }

    fn register(&mut self) -> Result<(), ParallelError> {
        let (peer, device, config) = (self.peer, self.device.clone(), self.config.clone());
        within(self.timeout, "joining the other replicas", move || {
            burn_collective::register::<B>(peer, device, config)
        })?
        .map_err(|e| ParallelError::Collective {
            what: "register",
            detail: format!("{e:?}"),
        })?;
        self.registered = true;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ParallelError> {
        if !self.registered {
            return Ok(());
        }
        self.registered = false;
        let peer = self.peer;
        within(self.timeout, "leaving the replica group", move || {
            burn_collective::finish_collective::<B>(peer)
        })?
        .map_err(|e| ParallelError::Collective {
            what: "finish",
            detail: format!("{e:?}"),
        })
    }

    /// The element-wise sum of `t` over all replicas (every replica gets the same values).
    pub(crate) fn sum(
        &mut self,
        t: Tensor<B, 1>,
        what: &str,
    ) -> Result<Tensor<B, 1>, ParallelError> {
        let started = Instant::now();
        if !self.registered {
            self.register()?;
        }
        let peer = self.peer;
        // Two control slots: every replica adds 1 and this call's index, so a sum that missed
        // a replica, or mixed two calls, is seen before it is used.
        let n = t.dims()[0];
        let call = (self.calls % CALL_INDEX_PERIOD) as f32 + 1.0;
        self.calls = self.calls.wrapping_add(1);
        let control = Tensor::from_data(TensorData::new(vec![1.0f32, call], [2]), &self.device);
        let primitive = Tensor::cat(vec![t, control], 0).into_primitive().tensor();
        let what = what.to_string();
        let out = within(self.timeout, what.clone(), move || {
            burn_collective::all_reduce::<B>(peer, primitive, ReduceOperation::Sum)
        })?
        .map_err(|e| ParallelError::Collective {
            what: "all-reduce",
            detail: format!("{what}: {e:?} (another process stopped or its connection closed)"),
        })?;
        if self.session_per_call {
            self.finish()?;
        }
        self.seconds += started.elapsed().as_secs_f64();
        let out: Tensor<B, 1> = Tensor::from_primitive(TensorPrimitive::Float(out));
        let got = (out.clone().narrow(0, n, 2).into_data().to_vec::<f32>()).unwrap_or_default();
        let (count, calls) = match got[..] {
            [count, calls] => (count, calls),
            _ => (0.0, 0.0),
        };
        if !complete_sum(count, calls, call, self.world) {
            return Err(ParallelError::PartialSum {
                what,
                count,
                world: self.world,
            });
        }
        Ok(out.narrow(0, 0, n))
    }

    /// Seconds spent in [`Self::sum`] since the last call.
    pub(crate) fn take_seconds(&mut self) -> f64 {
        std::mem::take(&mut self.seconds)
    }

    /// Leaves the group (at the end of a run).
    pub(crate) fn close(mut self) -> Result<(), ParallelError> {
        self.finish()
    }
}

/// Drops whatever an earlier, failed run of this process left in burn-collective's local
/// server for backend `B`.
pub(crate) fn reset<B: Backend>() {
    burn_collective::reset_collective::<B>();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The control slots accept the full sum of one call only: a missing replica (burn-collective's
    /// race gives a node its own tensor back) or a tensor of another call is refused.
    #[test]
    fn only_a_complete_sum_of_one_call_passes() {
        assert!(complete_sum(2.0, 2.0 * 7.0, 7.0, 2));
        assert!(!complete_sum(1.0, 7.0, 7.0, 2), "a replica missing");
        assert!(!complete_sum(2.0, 7.0 + 8.0, 7.0, 2), "two calls mixed");
        assert!(!complete_sum(3.0, 21.0, 7.0, 2), "a replica counted twice");
        let big = CALL_INDEX_PERIOD as f32;
        assert!(
            complete_sum(256.0, 256.0 * big, big, 256),
            "exact at the period's end"
        );
        assert!(!complete_sum(256.0, 256.0 * big - 1.0, big, 256));
    }

    #[test]
    fn layout_is_checked() {
        let mut r = Replicas::single(0u8);
        assert_eq!(r.world(), 1);
        r.devices = vec![0, 1];
        r.cluster = Some(Cluster {
            nodes: 3,
            node_rank: 2,
            coordinator: "h:1".into(),
            node_address: "me:2".into(),
            host_coordinator: true,
        });
        assert_eq!(r.world(), 6);
        assert_eq!(r.global_rank(1), 5);
        assert!(!r.is_first_node());
        r.validate().unwrap();
        r.cluster.as_mut().unwrap().node_rank = 3;
        assert!(r
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--node-rank 3"));
        r.cluster.as_mut().unwrap().node_rank = 0;
        r.cluster.as_mut().unwrap().coordinator = "nohost".into();
        assert!(r.validate().unwrap_err().to_string().contains("HOST:PORT"));
    }

    #[test]
    fn a_taken_port_is_named() {
        let held = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
        let port = held.local_addr().unwrap().port();
        let e = check_port(port, "--coordinator", "coordinator").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("coordinator port {port} is in use")),
            "{msg}"
        );
        assert!(msg.contains("--coordinator"), "{msg}");
    }

    #[test]
    fn a_wait_is_bounded() {
        let e = within(Duration::from_millis(50), "waiting", || {
            std::thread::sleep(Duration::from_secs(5))
        })
        .unwrap_err();
        assert!(matches!(e, ParallelError::Timeout { .. }), "{e}");
        let e = within(Duration::from_secs(5), "step 3", || -> () {
            panic!("a closed socket")
        })
        .unwrap_err();
        assert!(e.to_string().contains("step 3: it failed"), "{e}");
    }
}
