//! The run folder under damage: a damaged or incomplete newest checkpoint is passed over on
//! resume (and the run still ends bit-exact), a second process on the same folder is refused,
//! non-finite weights are never checkpointed, and `--keep-checkpoints` bounds the folder.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{small_run, B};
use nag_train::run_dir::{checkpoints, RunLock};
use nag_train::train::{train, TrainConfig, TrainError, TrainEvent};

fn base(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nag-reliability-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn steps_kept(run: &Path) -> Vec<u64> {
    checkpoints(run).into_iter().map(|c| c.0).collect()
}

/// Resumes `run` to the end, returning the checkpoints passed over.
fn resume(run: &Path) -> Vec<String> {
    let mut skipped = Vec::new();
    train::<B>(&small_run(), run, true, &Default::default(), |e| {
        if let TrainEvent::Resumed { skipped: s, .. } = e {
            skipped.extend(s.into_iter().map(|s| s.reason));
        }
    })
    .unwrap();
    skipped
}

#[test]
fn damaged_newest_checkpoint_falls_back_and_ends_bit_exact() {
    let root = base("fallback");
    let device = Default::default();
    let full = root.join("full");
    train::<B>(&small_run(), &full, false, &device, |_| {}).unwrap();
    let reference = fs::read(full.join("ema.safetensors")).unwrap();
    // Default keep = 2: steps 2 and 4 remain.
    assert_eq!(steps_kept(&full), vec![4, 2]);

    type Damage = fn(&Path);
    let damages: [(&str, Damage, &str); 4] = [
        (
            "truncated",
            |d| {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("model.mpk"))
                    .unwrap();
                let len = f.metadata().unwrap().len();
                f.set_len(len / 2).unwrap();
            },
            "truncated",
        ),
        (
            "zero-length",
            |d| fs::write(d.join("optim.mpk"), b"").unwrap(),
            "truncated",
        ),
        (
            "missing",
            |d| fs::remove_file(d.join("ema.mpk")).unwrap(),
            "missing",
        ),
        (
            "unsealed",
            |d| fs::remove_file(d.join("manifest.json")).unwrap(),
            "no manifest",
        ),
    ];
    for (name, damage, why) in damages {
        let run = root.join(name);
        // A run stopped after step 3, then the newest checkpoint (step 3) damaged.
        let cfg = TrainConfig {
            steps: 3,
            checkpoint_every: 1,
            ..small_run()
        };
        train::<B>(&cfg, &run, false, &device, |_| {}).unwrap();
        assert_eq!(steps_kept(&run), vec![3, 2]);
        damage(&run.join("checkpoints/step-0000003"));
        // The continuation checkpoints every 2 steps, as the reference did: its config must be
        // the reference's for --resume, so the first run used the same one but for the length
        // and checkpoint spacing; write the reference's config back.
        let json = serde_json::to_vec_pretty(&small_run()).unwrap();
        fs::write(run.join("config.json"), json).unwrap();
        let skipped = resume(&run);
        assert_eq!(skipped.len(), 1, "{name}: {skipped:?}");
        assert!(skipped[0].contains(why), "{name}: {skipped:?}");
        assert!(
            fs::read(run.join("ema.safetensors")).unwrap() == reference,
            "{name}: resuming from step 2 after passing over step 3 must end bit-exact"
        );
    }
    // Every checkpoint damaged: a clear error listing each.
    let run = root.join("all-damaged");
    train::<B>(&small_run(), &run, false, &device, |_| {}).unwrap();
    for s in [2, 4] {
        fs::write(
            run.join(format!("checkpoints/step-{s:07}/state.json")),
            b"{",
        )
        .unwrap();
    }
    let err = train::<B>(&small_run(), &run, true, &device, |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TrainError::NoCheckpoint { .. }), "{msg}");
    assert!(
        msg.contains("step-0000004") && msg.contains("step-0000002"),
        "{msg}"
    );
    // Resuming a folder that does not exist creates nothing.
    let nothing = root.join("nothing");
    let msg = train::<B>(&small_run(), &nothing, true, &device, |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no such folder"), "{msg}");
    assert!(!nothing.exists());
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn a_locked_run_folder_is_refused_naming_the_holder() {
    let run = base("locked");
    fs::create_dir_all(&run).unwrap();
    let held = RunLock::acquire(&run).unwrap();
    let msg = train::<B>(&small_run(), &run, false, &Default::default(), |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("in use by another nag process"), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    assert!(!run.join("checkpoints/latest").exists());
    drop(held);
    train::<B>(&small_run(), &run, false, &Default::default(), |_| {}).unwrap();
    let _ = fs::remove_dir_all(&run);
}

#[test]
fn non_finite_weights_are_never_checkpointed_and_keep_bounds_the_folder() {
    let run = base("nonfinite");
    // A learning rate this large turns the weights into inf/NaN within a few steps.
    let cfg = TrainConfig {
        steps: 6,
        checkpoint_every: 1,
        lr: 1e30,
        warmup: 0,
        grad_clip: None,
        ..small_run()
    };
    let err = train::<B>(&cfg, &run, false, &Default::default(), |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            TrainError::NonFiniteWeights { .. } | TrainError::NonFinite { .. }
        ),
        "{msg}"
    );
    // What the message calls the last good checkpoint is one that exists and verifies (or
    // none was written), and no later checkpoint exists.
    let kept = steps_kept(&run);
    match kept.first() {
        Some(&newest) => {
            let dir = format!("step-{newest:07}");
            assert!(msg.contains(&dir), "{msg} / kept {kept:?}");
            nag_train::run_dir::verify(&run.join("checkpoints").join(&dir)).unwrap();
        }
        None => assert!(msg.contains("none yet"), "{msg}"),
    }
    // NaN options are refused up front, naming the flag.
    for bad in [
        TrainConfig {
            weight_decay: f64::NAN,
            ..small_run()
        },
        TrainConfig {
            grad_clip: Some(f32::INFINITY),
            ..small_run()
        },
        TrainConfig {
            keep_checkpoints: 0,
            ..small_run()
        },
    ] {
        let msg = bad.validate().unwrap_err().to_string();
        assert!(msg.contains("--"), "{msg}");
    }
    // --keep-checkpoints 1 keeps only the newest.
    let one = base("keep1");
    let cfg = TrainConfig {
        checkpoint_every: 1,
        keep_checkpoints: 1,
        ..small_run()
    };
    train::<B>(&cfg, &one, false, &Default::default(), |_| {}).unwrap();
    assert_eq!(steps_kept(&one), vec![4]);
    let _ = fs::remove_dir_all(&run);
    let _ = fs::remove_dir_all(&one);
}
