//! Trainer tests: a resumed run equals an uninterrupted one bit for bit; bad options are errors.
//! (Model initialisation draws from burn's process-wide RNG, so tests that initialise models
//! outside `train` live in another test binary.)

use std::path::Path;

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn_ndarray::NdArray;
use nag_models::checkpoint::load_model_files;
use nag_models::{Dit, DitConfig};
use nag_train::train::{train, TrainConfig};

type B = burn_autodiff::Autodiff<NdArray<f32>>;

fn small_run() -> TrainConfig {
    TrainConfig {
        data: "shapes".into(),
        model: "tiny".into(),
        steps: 4,
        batch: 4,
        checkpoint_every: 2,
        log_every: 1,
        workers: 1,
        ema_decay: 0.9,
        seed: 7,
        ..TrainConfig::default()
    }
}

/// Every tensor of the DiT record at `path` (`.mpk` implied), by name, as raw values.
fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let run = path.ancestors().nth(3).unwrap();
    let (_, config) = load_model_files(&run.join("ema.safetensors")).unwrap();
    let config: DitConfig = serde_json::from_str(&config).unwrap();
    let device = Default::default();
    let record = NamedMpkFileRecorder::<FullPrecisionSettings>::new()
        .load(path.to_path_buf(), &device)
        .unwrap();
    let model: Dit<B> = config.init(&device).unwrap().load_record(record);
    model
        .to_state_dict()
        .tensors
        .into_iter()
        .map(|(key, t)| (key, t.data))
        .collect()
}

#[test]
fn resume_is_bit_exact() {
    let device = Default::default();
    let base = std::env::temp_dir().join(format!("nag-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (full, split) = (base.join("full"), base.join("split"));
    train::<B>(&small_run(), &full, false, &device, |_| {}).unwrap();
    let half = TrainConfig {
        steps: 2,
        ..small_run()
    };
    train::<B>(&half, &split, false, &device, |_| {}).unwrap();
    train::<B>(&small_run(), &split, true, &device, |_| {}).unwrap();
    let a = std::fs::read(full.join("ema.safetensors")).unwrap();
    let b = std::fs::read(split.join("ema.safetensors")).unwrap();
    assert!(
        a == b,
        "resumed EMA weights differ from the uninterrupted run"
    );
    // The final checkpoint: weights and EMA weights equal value for value (the record files
    // themselves differ: burn gives every parameter a random id), step and RNG state byte for
    // byte, and the loss log. The optimiser's restored moments are what steps 3–4 of the
    // resumed run used, so a bad restore shows in the weights.
    let last = Path::new("checkpoints").join("step-0000004");
    for record in ["model", "ema"] {
        let f = last.join(record);
        assert_eq!(
            weights(&full.join(&f)),
            weights(&split.join(&f)),
            "resumed {} differs from the uninterrupted run's",
            f.display()
        );
    }
    // (The comparison can fail: two steps of training change the weights.)
    assert_ne!(
        weights(&full.join("checkpoints/step-0000002/model")),
        weights(&full.join(last.join("model")))
    );
    let state = last.join("state.json");
    assert_eq!(
        std::fs::read(full.join(&state)).unwrap(),
        std::fs::read(split.join(&state)).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(full.join("loss.csv")).unwrap(),
        std::fs::read_to_string(split.join("loss.csv")).unwrap()
    );
    // A different seed gives different weights (the comparison can fail).
    let other = TrainConfig {
        seed: 8,
        ..small_run()
    };
    train::<B>(&other, &base.join("other"), false, &device, |_| {}).unwrap();
    let c = std::fs::read(base.join("other").join("ema.safetensors")).unwrap();
    assert!(a != c);
    // Resuming with changed options is refused.
    let changed = TrainConfig {
        lr: 1e-3,
        ..small_run()
    };
    assert!(train::<B>(&changed, &split, true, &device, |_| {}).is_err());
    let _ = std::fs::remove_dir_all(&base);
}

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
