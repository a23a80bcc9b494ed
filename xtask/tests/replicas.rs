//! Data-parallel training through the CLI a user runs: two processes over localhost
//! (`--nodes 2`, burn-collective's orchestrator) and two replicas in one process
//! (`--devices cpu,cpu`) end with the weights of one process, bit for bit (one micro-batch per
//! replica), also when resumed with another process count; Ctrl-C stops both at one
//! checkpoint; a node that never joins or dies makes the other stop with an error naming the
//! timeout, without a checkpoint; a taken port is named.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn base(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nag-replicas-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A port that was free a moment ago, with the next two free as well.
fn free_ports() -> u16 {
    loop {
        let l = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
        let p = l.local_addr().unwrap().port();
        drop(l);
        if p < 65000 && (1..3).all(|k| std::net::TcpListener::bind(("0.0.0.0", p + k)).is_ok()) {
            return p;
        }
    }
}

/// `xtask train` of a tiny 4-step run, one micro-batch per replica.
fn train(out: &Path, steps: u64, extra: &[&str]) -> Command {
    let mut c = Command::new(XTASK);
    c.args([
        "train", "--data", "shapes", "--model", "tiny", "--batch", "4",
    ])
    .args(["--grad-accum", "2", "--threads", "1", "--workers", "1"])
    .args(["--log-every", "1", "--seed", "5"])
    .args(["--steps", &steps.to_string()])
    .arg("--out")
    .arg(out)
    .args(extra)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

fn node(out: &Path, steps: u64, rank: u32, port: u16, extra: &[&str]) -> Child {
    let coordinator = format!("127.0.0.1:{port}");
    let rank = rank.to_string();
    let mut args = vec![
        "--nodes",
        "2",
        "--node-rank",
        &rank,
        "--coordinator",
        &coordinator,
    ];
    args.extend_from_slice(extra);
    train(out, steps, &args).spawn().unwrap()
}

/// Waits at most `limit` for `child`.
fn wait(mut child: Child, limit: Duration) -> Output {
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    err
}

fn ema(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("ema.safetensors")).unwrap()
}

#[test]
fn two_processes_and_two_devices_match_one_replica() {
    let root = base("match");
    let one = root.join("one");
    ok(&wait(
        train(&one, 4, &[]).spawn().unwrap(),
        Duration::from_secs(120),
    ));

    let devices = root.join("devices");
    let err = ok(&wait(
        train(&devices, 4, &["--devices", "cpu,cpu"])
            .spawn()
            .unwrap(),
        Duration::from_secs(120),
    ));
    assert!(err.contains("2 replicas (cpu,cpu)"), "{err}");
    assert!(
        ema(&one) == ema(&devices),
        "--devices cpu,cpu differs from one replica"
    );

    // Both nodes on one machine share the run folder; only node 0 writes it.
    let two = root.join("two");
    let port = free_ports();
    let n0 = node(&two, 4, 0, port, &[]);
    let n1 = node(&two, 4, 1, port, &[]);
    let (o1, o0) = (
        wait(n1, Duration::from_secs(180)),
        wait(n0, Duration::from_secs(180)),
    );
    let (e1, e0) = (ok(&o1), ok(&o0));
    // Only the run's own lines on stdout (burn-collective's "Connecting to …" are silenced).
    let out0 = String::from_utf8_lossy(&o0.stdout);
    assert!(
        out0.starts_with("run: ") && out0.lines().count() == 2,
        "{out0}"
    );
    assert!(e0.contains("node 0 of 2"), "{e0}");
    assert!(e1.contains("node 1 of 2"), "{e1}");
    assert!(
        e0.contains("MB/step") && e0.contains("s/step (2 replicas)"),
        "{e0}"
    );
    assert!(
        ema(&one) == ema(&two),
        "two processes differ from one replica"
    );

    // Resume: 2 steps on two processes, then two processes again, then one process.
    let resumed = root.join("resumed");
    let port = free_ports();
    let (n0, n1) = (
        node(&resumed, 2, 0, port, &[]),
        node(&resumed, 2, 1, port, &[]),
    );
    ok(&wait(n1, Duration::from_secs(180)));
    ok(&wait(n0, Duration::from_secs(180)));
    let port = free_ports();
    let n0 = node(&resumed, 3, 0, port, &["--resume"]);
    let n1 = node(&resumed, 3, 1, port, &["--resume"]);
    ok(&wait(n1, Duration::from_secs(180)));
    ok(&wait(n0, Duration::from_secs(180)));
    ok(&wait(
        train(&resumed, 4, &["--resume"]).spawn().unwrap(),
        Duration::from_secs(120),
    ));
    assert!(
        ema(&one) == ema(&resumed),
        "resumed over 2, 2 and 1 processes differs"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn ctrl_c_stops_both_processes_at_one_checkpoint() {
    let root = base("ctrl-c");
    let run = root.join("run");
    let port = free_ports();
    let n0 = node(&run, 100_000, 0, port, &[]);
    let n1 = node(&run, 100_000, 1, port, &[]);
    // As a terminal's Ctrl-C: both trainers get SIGINT once they are under way.
    let t = Instant::now();
    while !run.join("config.json").exists() && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(3));
    for child in [&n0, &n1] {
        // SAFETY: kill(2) of our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    }
    let (o0, o1) = (
        wait(n0, Duration::from_secs(60)),
        wait(n1, Duration::from_secs(60)),
    );
    for o in [&o0, &o1] {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains("stopped on request after step"), "{err}");
    }
    // One checkpoint, at the step both agreed on, equal to one replica trained that long.
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    let step: u64 = latest.trim().trim_start_matches("step-").parse().unwrap();
    assert!(step >= 1);
    let one = root.join("one");
    ok(&wait(
        train(&one, step, &[]).spawn().unwrap(),
        Duration::from_secs(300),
    ));
    assert!(
        ema(&one) == ema(&run),
        "the interrupted run's export differs from one replica's at step {step}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_missing_or_dead_node_stops_the_other_without_a_checkpoint() {
    let root = base("faults");
    // Node 1 never starts.
    let alone = root.join("alone");
    let t = Instant::now();
    let o = wait(
        node(&alone, 4, 0, free_ports(), &["--peer-timeout", "3"]),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("no answer from the other replicas within 3 s"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(!alone.join("checkpoints/latest").exists());

    // Node 1 is killed mid-run: node 0 stops within the timeout, with no checkpoint.
    let dies = root.join("dies");
    let port = free_ports();
    let extra = ["--peer-timeout", "5", "--checkpoint-every", "100000"];
    let n0 = node(&dies, 100_000, 0, port, &extra);
    let mut n1 = node(&dies, 100_000, 1, port, &extra);
    std::thread::sleep(Duration::from_secs(4));
    n1.kill().unwrap();
    let _ = n1.wait();
    let o = wait(n0, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("no answer from the other replicas within 5 s")
            || err.contains("burn-collective"),
        "{err}"
    );
    // Nodes started with different options refuse to train together.
    let mixed = root.join("mixed");
    let port = free_ports();
    let n0 = node(&mixed, 4, 0, port, &[]);
    let n1 = node(&mixed, 4, 1, port, &["--seed", "6"]);
    for o in [
        wait(n0, Duration::from_secs(60)),
        wait(n1, Duration::from_secs(60)),
    ] {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains("the replicas disagree on the run"), "{err}");
    }
    assert!(!mixed.join("checkpoints/latest").exists());

    let entries: Vec<_> = std::fs::read_dir(dies.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(entries.is_empty(), "{entries:?}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_taken_port_is_named() {
    let root = base("port");
    let held = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let port = held.local_addr().unwrap().port();
    let o = wait(
        node(&root.join("run"), 4, 0, port, &[]),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains(&format!("coordinator port {port} is in use")),
        "{err}"
    );
    assert!(
        !root.join("run").exists(),
        "nothing written before the port check"
    );
    let o = train(&root.join("zero"), 4, &["--nodes", "0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("--nodes must be at least 1"));
    // A replica count that does not divide --grad-accum is refused before any work.
    let o = train(&root.join("odd"), 4, &["--devices", "cpu,cpu,cpu"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("must be a multiple of the replica count 3"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
