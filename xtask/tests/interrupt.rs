//! Training interrupted as it happens on shared machines, through the CLI a user runs:
//! `kill -9` at random moments (checkpoint writes included), SIGTERM, and a file-size limit
//! (as a full disk). Each time `--resume` must end bit-exact with an uninterrupted run.
//! Also: a second process on a folder in use, and a sample count that cannot fit.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");
const STEPS: u64 = 12;

fn base(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nag-interrupt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `xtask train` of a tiny run checkpointing every step.
fn train(out: &Path, resume: bool) -> Command {
    let mut c = Command::new(XTASK);
    c.args([
        "train", "--data", "shapes", "--model", "tiny", "--batch", "4",
    ])
    .args(["--grad-accum", "1", "--threads", "1", "--workers", "1"])
    .args(["--checkpoint-every", "1", "--log-every", "1", "--seed", "3"])
    .args(["--steps", &STEPS.to_string()])
    .arg("--out")
    .arg(out)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if resume {
        c.arg("--resume");
    }
    c
}

fn has_checkpoint(out: &Path) -> bool {
    out.join("checkpoints").join("latest").exists()
}

/// Runs to completion (resuming when a checkpoint exists); the stderr of a failure.
fn finish(out: &Path) -> std::process::Output {
    train(out, has_checkpoint(out)).output().unwrap()
}

fn uninterrupted(root: &Path) -> (Vec<u8>, Duration) {
    let out = root.join("reference");
    let t = Instant::now();
    let r = finish(&out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    (
        std::fs::read(out.join("ema.safetensors")).unwrap(),
        t.elapsed(),
    )
}

#[test]
fn kill_9_at_random_moments_then_resume_is_bit_exact() {
    let root = base("kill9");
    let (reference, full) = uninterrupted(&root);
    let out = root.join("killed");
    let mut times = StdRng::seed_from_u64(9);
    let mut kills = 0;
    // Eight kills at seeded moments over a run's length (start-up, steps, checkpoint writes).
    while kills < 8 {
        let mut child = train(&out, has_checkpoint(&out)).spawn().unwrap();
        let at = full.mul_f64(0.1 + 0.8 * times.random::<f64>());
        let start = Instant::now();
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if start.elapsed() >= at {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        match finished {
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
            }
            Some(status) => {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
                assert!(status.success(), "a run between kills failed: {err}");
                // It finished before the kill: start over so that every kill lands mid-run.
                std::fs::remove_dir_all(&out).unwrap();
            }
        }
    }
    let r = finish(&out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        std::fs::read(out.join("ema.safetensors")).unwrap() == reference,
        "after 8 kills and resumes the EMA weights differ from the uninterrupted run"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn sigterm_stops_at_a_step_with_a_checkpoint_and_file_size_limit_is_a_clear_error() {
    let root = base("term");
    let (reference, _) = uninterrupted(&root);
    let out = root.join("stopped");
    let child = train(&out, false).spawn().unwrap();
    let t = Instant::now();
    while !has_checkpoint(&out) && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let r = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success(),
        "a stopped run must exit non-zero: {err}"
    );
    assert!(err.contains("--resume"), "{err}");
    let latest = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
    assert_ne!(
        latest.trim(),
        format!("step-{STEPS:07}"),
        "stopped before the end"
    );

    // A file-size limit of 1 MiB (as a full disk): the next checkpoint cannot be written.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let before = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
        let mut c = train(&out, true);
        // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
        unsafe {
            c.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 1 << 20,
                    rlim_max: 1 << 20,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let r = c.output().unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{err}");
        assert!(
            err.contains("checkpoints"),
            "the error names the path: {err}"
        );
        assert!(
            err.to_lowercase().contains("too large"),
            "the error says why: {err}"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("checkpoints/latest")).unwrap(),
            before,
            "the previous checkpoint stays the newest"
        );
        let leftovers: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial") || n.contains(".tmp-"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "half-written files left: {leftovers:?}"
        );
    }

    let r = finish(&out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(std::fs::read(out.join("ema.safetensors")).unwrap() == reference);
    // A sample count that cannot fit is refused before any work, not by a failed allocation.
    let r = Command::new(XTASK)
        .args(["sample", "--n", "100000000000", "--run"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("--npz"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("memory allocation"),
        "{err}"
    );
    // A second process on a folder in use is refused at once, naming the holder.
    let busy = root.join("busy");
    let mut first = train(&busy, false).spawn().unwrap();
    let t = Instant::now();
    while !busy.join(".lock").exists() && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    let second = train(&busy, true).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    let _ = first.kill();
    let _ = first.wait();
    assert!(!second.status.success());
    assert!(
        err.contains("in use by another nag process")
            && err.contains(&format!("pid {}", first.id())),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
