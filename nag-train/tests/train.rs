//! Trainer tests: splitting micro-batches over threads changes nothing; bad options and bad
//! files are errors (or, for files, skipped and counted if so chosen).
//! (The resume test has its own binary, `resume.rs`: it initialises models outside `train`, and
//! initialisation draws from burn's process-wide RNG.)

mod common;

use common::{small_run, B};
use nag_train::data::OnError;
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

/// An 8×8 RGB PNG of one colour.
fn write_png(path: &std::path::Path, rgb: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut encoder = png::Encoder::new(std::fs::File::create(path).unwrap(), 8, 8);
    encoder.set_color(png::ColorType::Rgb);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&rgb.repeat(64)).unwrap();
}

#[test]
fn unreadable_files_are_skipped_and_counted_or_stop_the_run() {
    let base = std::env::temp_dir().join(format!("nag-badfile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let data = base.join("data");
    write_png(&data.join("a/1.png"), [255, 0, 0]);
    write_png(&data.join("a/2.png"), [200, 0, 0]);
    write_png(&data.join("b/1.png"), [0, 0, 255]);
    write_png(&data.join("b/2.png"), [0, 0, 200]);
    std::fs::write(data.join("a/zz-bad.png"), b"not a png").unwrap();
    // 2 steps of 4 draw 8 items: the whole first epoch of 5 files, the bad one included.
    let cfg = |on_bad_file| TrainConfig {
        data: data.to_str().unwrap().into(),
        image_size: Some(8),
        steps: 2,
        on_bad_file,
        ..small_run()
    };
    let device = Default::default();
    let skipped = train::<B>(
        &cfg(OnError::Skip),
        &base.join("skip"),
        false,
        &device,
        |_| {},
    );
    assert_eq!(skipped.unwrap().skipped_files, 1);
    let err = train::<B>(
        &cfg(OnError::Fail),
        &base.join("fail"),
        false,
        &device,
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("zz-bad.png"), "{err}");
    let _ = std::fs::remove_dir_all(&base);
}

/// Fine-tuning an official-architecture checkpoint (the torch f32 fixture: 4×8×8 latents, 10
/// classes, no null-t vector) on latents with 4 classes: refused unless `--new-classes`, which
/// rebuilds the label table and loads the rest (null-t vector added); data of another shape is
/// refused.
#[test]
fn init_takes_the_architecture_from_the_file() {
    let base = std::env::temp_dir().join(format!("nag-init-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let init = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../nag-models/tests/fixtures/dit_f32/dit_tiny.pt");
    let write_latents = |name: &str, shape: [usize; 4]| {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let path = base.join(format!("{name}.npy"));
        nag_models::npy::write_npy_f32(&path, &shape, &values).unwrap();
        let labels: Vec<i64> = (0..shape[0] as i64).map(|i| i % 4).collect();
        nag_models::npy::write_npy(
            &base.join(format!("{name}_labels.npy")),
            &nag_models::npy::NpyArray::new(vec![shape[0]], nag_models::npy::NpyData::I64(labels))
                .unwrap(),
        )
        .unwrap();
        path
    };
    let good = write_latents("good", [8, 4, 8, 8]);
    let cfg = TrainConfig {
        data: good.display().to_string(),
        init: Some(init.clone()),
        init_heads: Some(4),
        steps: 1,
        batch: 2,
        checkpoint_every: 1,
        noise_dropout: 0.1,
        ..small_run()
    };
    let device = Default::default();
    // The data's 4 classes against the file's 10: refused, naming both and the flag ...
    let msg = train::<B>(&cfg, &base.join("refused"), false, &device, |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("4 classes") && msg.contains("10") && msg.contains("--new-classes"),
        "{msg}"
    );
    assert!(
        !base.join("refused").exists(),
        "a refused run leaves no folder"
    );
    // ... and with --new-classes the label table is rebuilt (4 + null rows), the rest loaded.
    let cfg = TrainConfig {
        new_classes: true,
        lr: 1e-12,
        ..cfg
    };
    train::<B>(&cfg, &base.join("run"), false, &device, |_| {}).unwrap();
    let (sd, config) =
        nag_models::checkpoint::load_model_files(&base.join("run").join("ema.safetensors"))
            .unwrap();
    let config: nag_models::DitConfig = serde_json::from_str(&config).unwrap();
    assert_eq!(
        (config.num_classes, config.hidden_size, config.depth),
        (4, 32, 2)
    );
    assert!(config.null_timestep);
    assert_eq!(
        sd.get("y_embedder.embedding_table.weight").unwrap().shape,
        vec![5, 32]
    );
    // lr 1e-12: the loaded weights are the file's (up to an Adam step and the EMA's rounding).
    let (file, _) = nag_models::checkpoint::load_state_dict(&init, &Default::default()).unwrap();
    let key = "blocks.1.attn.qkv.weight";
    let (ours, theirs) = (&sd.get(key).unwrap().data, &file.get(key).unwrap().data);
    assert!(ours
        .iter()
        .zip(theirs)
        .all(|(a, b)| (a - b).abs() <= 1e-6 * (1.0 + b.abs())));

    let wrong = write_latents("wrong", [8, 4, 16, 16]);
    let cfg = TrainConfig {
        data: wrong.display().to_string(),
        ..cfg
    };
    let msg = train::<B>(&cfg, &base.join("wrong-run"), false, &device, |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("--init") && msg.contains("4×16×16"), "{msg}");
    let _ = std::fs::remove_dir_all(&base);
}
