//! Trainer tests: splitting micro-batches over threads changes nothing; bad options are errors.
//! (The resume test has its own binary, `resume.rs`: it initialises models outside `train`, and
//! initialisation draws from burn's process-wide RNG.)

mod common;

use common::{small_run, B};
use nag_train::train::{train, TrainConfig};

#[test]
fn threads_do_not_change_the_result() {
    let device = Default::default();
    let base = std::env::temp_dir().join(format!("nag-threads-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let accumulated = TrainConfig {
        steps: 2,
        grad_accum: 2,
        ..small_run()
    };
    let weights = |threads: usize, name: &str| {
        let cfg = TrainConfig {
            threads,
            ..accumulated.clone()
        };
        train::<B>(&cfg, &base.join(name), false, &device, |_| {}).unwrap();
        std::fs::read(base.join(name).join("ema.safetensors")).unwrap()
    };
    let sequential = weights(1, "one");
    let concurrent = weights(2, "two");
    assert!(
        sequential == concurrent,
        "micro-batches on two threads changed the weights"
    );
    // The comparison can fail: a different split of the batch gives different weights.
    let unsplit = TrainConfig {
        steps: 2,
        ..small_run()
    };
    train::<B>(&unsplit, &base.join("unsplit"), false, &device, |_| {}).unwrap();
    assert!(std::fs::read(base.join("unsplit").join("ema.safetensors")).unwrap() != sequential);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn impossible_options_are_errors() {
    for cfg in [
        TrainConfig {
            steps: 0,
            ..small_run()
        },
        TrainConfig {
            batch: 3,
            grad_accum: 2,
            ..small_run()
        },
        TrainConfig {
            threads: 0,
            ..small_run()
        },
        TrainConfig {
            noise_dropout: 1.5,
            ..small_run()
        },
        TrainConfig {
            model: "huge".into(),
            ..small_run()
        },
        TrainConfig {
            model: "tiny/3".into(),
            ..small_run()
        },
        TrainConfig {
            data: "/nonexistent/folder".into(),
            ..small_run()
        },
    ] {
        let dir = std::env::temp_dir().join(format!("nag-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(train::<B>(&cfg, &dir, false, &Default::default(), |_| {}).is_err());
        // A rejected option leaves no run directory behind.
        assert!(!dir.exists(), "{cfg:?} left {}", dir.display());
    }
}
