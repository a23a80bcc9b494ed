//! The commands' pipelines as library functions, on the exact gmm model (no training needed):
//! `sample_images` (a labelled compare grid, same seed same bytes, refusals before any work)
//! and `measure_trajectory_shift` (both settings measured, `shift.json` = the returned report,
//! progress events per sampler step).

use std::path::PathBuf;

use burn_ndarray::NdArray;
use nag_train::data::{open_gmm, DataOptions, Dataset};
use nag_train::oracle::OracleSpec;
use nag_train::sample_images::{
    sample_images, ModelSource, SampleEvent, SampleImagesConfig, SampleOptions, SampleOutcome,
    SampleOutput,
};
use nag_train::sampling::FixedVariance;
use nag_train::shift::{
    measure_trajectory_shift, ShiftModel, TrajectoryOptions, TrajectoryShiftConfig,
    TrajectoryShiftEvent,
};

type B = NdArray<f32>;

fn oracle() -> OracleSpec {
    OracleSpec {
        data: "gmm".into(),
        objective: "ddpm".into(),
        oracle_error: "none".into(),
        nag_form: "eps".into(),
    }
}

/// A fresh, empty folder for one test.
fn folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nag-pipelines-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// [`compare_config`] with one sampling option changed.
fn with_options(out: PathBuf, change: impl FnOnce(&mut SampleOptions)) -> SampleImagesConfig {
    let mut cfg = compare_config(out);
    change(&mut cfg.options);
    cfg
}

fn compare_config(out: PathBuf) -> SampleImagesConfig {
    SampleImagesConfig {
        model: ModelSource::Oracle(oracle()),
        threads: 1,
        output: SampleOutput::Grid {
            path: out,
            compare: true,
        },
        options: SampleOptions {
            dog: None,
            sampler: None,
            steps: 4,
            eta: 0.0,
            cfg: 4.0,
            nag: 3.0,
            n: None,
            class: None,
            seed: 3,
            path: "linear".into(),
            no_clip: false,
            variance: FixedVariance::default(),
            vae: None,
            batch: 32,
        },
    }
}

#[test]
fn sample_images_writes_a_labelled_compare_grid_and_refuses_bad_options_first() {
    let dir = folder("sample");
    let gmm = open_gmm("gmm", &DataOptions::default()).unwrap().unwrap();
    let [_, h, w] = gmm.shape();
    let classes = gmm.num_classes();
    let n = classes.max(8);

    let cfg = compare_config(dir.join("a.png"));
    let mut rows = Vec::new();
    let mut steps = 0;
    let outcome = sample_images::<B>(&cfg, &Default::default(), |e| match e {
        SampleEvent::Rows(r) => rows = r,
        SampleEvent::Step { .. } => steps += 1,
        _ => {}
    })
    .unwrap();
    assert_eq!(rows, ["none", "CFG 4", "NAG 3", "CFG 4 + NAG 3"]);
    assert_eq!(
        steps,
        rows.len() * cfg.options.steps,
        "one event per sampler step"
    );
    let SampleOutcome::Grid(path) = outcome else {
        panic!("a grid was asked for")
    };
    let a = std::fs::read(&path).unwrap();
    assert_eq!(&a[1..4], b"PNG");
    // The labels add a margin: wider and taller than the grid alone (4× upscaled cells).
    let reader = png::Decoder::new(std::io::Cursor::new(&a))
        .read_info()
        .unwrap();
    let (width, height) = (reader.info().width as usize, reader.info().height as usize);
    let grid_w = (n * (w + 2) + 2) * 4;
    let grid_h = (rows.len() * (h + 2) + 2) * 4;
    assert!(
        width > grid_w && height > grid_h,
        "{width}×{height} vs grid {grid_w}×{grid_h}"
    );
    // Same seed, same bytes.
    let again = compare_config(dir.join("b.png"));
    sample_images::<B>(&again, &Default::default(), |_| {}).unwrap();
    assert!(std::fs::read(dir.join("b.png")).unwrap() == a);

    // Refused before anything is sampled or written, naming the flag.
    for (label, bad, flag) in [
        (
            "cfg",
            with_options(dir.join("c.png"), |o| o.cfg = f64::NAN),
            "--cfg",
        ),
        (
            "class",
            with_options(dir.join("c.png"), |o| o.class = Some(classes as i64)),
            "--class",
        ),
        (
            "n",
            with_options(dir.join("c.png"), |o| o.n = Some(0)),
            "--n",
        ),
    ] {
        let mut sampled = false;
        let err = sample_images::<B>(&bad, &Default::default(), |e| {
            sampled |= matches!(e, SampleEvent::Step { .. })
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains(flag), "{label}: {err}");
        assert!(!sampled, "{label}: sampled before refusing");
    }
    assert!(!dir.join("c.png").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn trajectory_shift_measures_both_settings_and_writes_its_report() {
    let dir = folder("shift");
    let cfg = TrajectoryShiftConfig {
        model: ShiftModel::Oracle(oracle()),
        out: dir.clone(),
        threads: 1,
        options: TrajectoryOptions {
            sampler: None,
            variance: FixedVariance::default(),
            steps: 6,
            nag: 3.0,
            cfg: 1.0,
            estimator: None,
            n: 4,
            seed: 0,
        },
    };
    let (mut steps, mut measured) = (0, Vec::new());
    let report = measure_trajectory_shift::<B>(&cfg, &Default::default(), |e| match e {
        TrajectoryShiftEvent::Step { settings, .. } => {
            assert_eq!(settings, 2);
            steps += 1
        }
        TrajectoryShiftEvent::Measured { name, .. } => measured.push(name),
    })
    .unwrap();
    assert_eq!(steps, 2 * cfg.options.steps);
    assert_eq!(measured, ["no NAG", "NAG w=3"]);
    assert_eq!(report.measure, "exact");
    assert_eq!(report.settings.len(), 2);
    for s in &report.settings {
        assert_eq!(s.steps.len(), cfg.options.steps, "{}", s.name);
        assert!(s.late_delta.is_finite());
    }
    // (Compared as text: serde_json's default float parsing does not round-trip every bit.)
    assert!(
        std::fs::read(dir.join("shift.json")).unwrap()
            == serde_json::to_vec_pretty(&report).unwrap(),
        "shift.json is not the returned report"
    );
    assert!(dir.join("shift.png").is_file());

    let err = measure_trajectory_shift::<B>(
        &TrajectoryShiftConfig {
            options: TrajectoryOptions {
                n: 1,
                ..cfg.options.clone()
            },
            ..cfg.clone()
        },
        &Default::default(),
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--n"), "{err}");
    let err = measure_trajectory_shift::<B>(
        &TrajectoryShiftConfig {
            model: ShiftModel::Run(dir.join("no-such-run")),
            ..cfg
        },
        &Default::default(),
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("config.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
