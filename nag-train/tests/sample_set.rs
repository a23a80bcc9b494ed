//! FID sample sets (`sample --npz`): the official-architecture tiny DiT (torch fixture) decoded
//! by the tiny diffusers VAE fixture into the ADM `.npz`; batch-size independence, resuming after
//! an interruption, and errors.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use burn_ndarray::NdArray;
use nag_core::guidance::Guidance;
use nag_models::checkpoint::{load_state_dict, LoadOptions};
use nag_models::npy::read_npy;
use nag_models::{Dit, DitHints, Vae};
use nag_train::generate::{SampleConfig, Sampled, SamplerKind};
use nag_train::sample_set::{
    labels_path, parts_dir, sample_set, LabelMode, SampleSetError, SampleSetSpec, SetProgress,
};
use nag_train::sampling::FixedVariance;

type B = NdArray<f32>;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../nag-models/tests/fixtures")
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nag-sample-set-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn model() -> Dit<B> {
    let (sd, _) = load_state_dict(
        &fixtures().join("dit_f32/dit_tiny.pt"),
        &LoadOptions::default(),
    )
    .unwrap();
    let hints = DitHints {
        num_heads: Some(4),
        ..DitHints::default()
    };
    Dit::from_state_dict(&sd, &hints, &Default::default())
        .unwrap()
        .0
}

fn cfg() -> SampleConfig {
    SampleConfig {
        sampler: SamplerKind::Ddpm,
        steps: 4,
        eta: 0.0,
        seed: 7,
        path: "linear".into(),
        clip_x0: false,
        threads: 1,
        variance: FixedVariance::Large,
    }
}

fn spec(n: usize, batch: usize) -> SampleSetSpec {
    SampleSetSpec {
        n,
        batch,
        labels: LabelMode::Uniform,
        guidance: Guidance::cfg(1.5),
        identity: serde_json::json!("tiny"),
    }
}

fn run(
    dir: &Path,
    name: &str,
    spec: &SampleSetSpec,
    progress: &mut dyn FnMut(SetProgress),
) -> Result<(PathBuf, usize), SampleSetError> {
    let dit = model();
    let (vae, source) = Vae::<B>::load(&fixtures().join("vae/new"), &Default::default()).unwrap();
    let npz = dir.join(name);
    let summary = sample_set(
        &Sampled::Network(&dit),
        10,
        Some((&vae, source.config.scaling_factor)),
        &cfg(),
        spec,
        &npz,
        &Default::default(),
        progress,
    )?;
    assert_eq!(summary.shape, [spec.n, 32, 32, 3]);
    Ok((npz, summary.resumed))
}

/// `arr_0` of an npz written by `sample_set` (one stored entry).
fn arr_0(npz: &Path) -> (Vec<String>, Vec<u8>) {
    let file = std::fs::File::open(npz).unwrap();
    let mut zip = zip::ZipArchive::new(file).unwrap();
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    let mut entry = zip.by_name("arr_0.npy").unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
    let array = nag_models::npy::parse_npy(&bytes, "arr_0").unwrap();
    assert_eq!(array.shape[1..], [32, 32, 3]);
    let values = array.into_i64().unwrap();
    (names, values.into_iter().map(|v| v as u8).collect())
}

#[test]
fn batch_size_and_interruption_do_not_change_the_bytes() {
    let dir = scratch("resume");
    let (reference, resumed) = run(&dir, "ref.npz", &spec(5, 5), &mut |_| {}).unwrap();
    assert_eq!(resumed, 0);
    let (names, want) = arr_0(&reference);
    assert_eq!(
        names,
        vec!["arr_0.npy".to_string()],
        "nothing else in the npz"
    );
    assert!(
        want.iter().any(|&b| b != want[0]),
        "images are not constant"
    );
    assert!(
        !parts_dir(&reference).exists(),
        "parts are removed at the end"
    );
    let labels = read_npy(&labels_path(&reference))
        .unwrap()
        .into_i64()
        .unwrap();
    assert_eq!(labels.len(), 5);
    assert!(labels.iter().all(|y| (0..10).contains(y)));

    // Batches of 2, interrupted after the second batch (4 samples written) ...
    let interrupted = catch_unwind(AssertUnwindSafe(|| {
        run(&dir, "s.npz", &spec(5, 2), &mut |p| {
            assert!(p.done < 4, "interrupted");
        })
    }));
    assert!(interrupted.is_err());
    assert!(!dir.join("s.npz").exists(), "no half-written npz");
    // ... resumed with batches of 3: the same bytes as one batch of 5.
    let mut seen = Vec::new();
    let (npz, resumed) = run(&dir, "s.npz", &spec(5, 3), &mut |p| seen.push(p.done)).unwrap();
    assert_eq!(resumed, 4);
    assert_eq!(seen, vec![4, 5]);
    assert_eq!(arr_0(&npz).1, want);
    assert_eq!(
        read_npy(&labels_path(&npz)).unwrap().into_i64().unwrap(),
        labels
    );
}

#[test]
fn other_settings_on_resume_and_bad_options_are_errors() {
    let dir = scratch("settings");
    let _ = catch_unwind(AssertUnwindSafe(|| {
        run(&dir, "s.npz", &spec(4, 2), &mut |p| assert!(p.done < 2))
    }));
    let mut other = spec(4, 2);
    other.guidance = Guidance::cfg(4.0);
    let msg = run(&dir, "s.npz", &other, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("other settings") && msg.contains("guidance"),
        "{msg}"
    );

    let mut bad = spec(3, 2);
    bad.labels = LabelMode::Fixed(10);
    let msg = run(&dir, "b.npz", &bad, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("--class 10"), "{msg}");

    // A latent model without a VAE cannot make RGB bytes.
    let dit = model();
    let msg = sample_set(
        &Sampled::Network(&dit),
        10,
        None,
        &cfg(),
        &spec(2, 2),
        &dir.join("latents.npz"),
        &Default::default(),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("--vae"), "{msg}");
}

#[test]
fn label_modes() {
    let uniform = LabelMode::Uniform.labels(0, 0, 2000, 10);
    let mut counts = [0usize; 10];
    uniform.iter().for_each(|&y| counts[y as usize] += 1);
    // i.i.d. uniform: every class present, counts not all equal.
    assert!(
        counts.iter().all(|&c| (140..260).contains(&c)),
        "{counts:?}"
    );
    assert!(counts.iter().any(|&c| c != 200));
    // Batch independence: labels of 1000.. are the same computed alone.
    assert_eq!(
        LabelMode::Uniform.labels(0, 1000, 5, 10),
        uniform[1000..1005]
    );
    assert_eq!(LabelMode::Balanced.labels(0, 8, 4, 10), vec![8, 9, 0, 1]);
    assert_eq!(LabelMode::Fixed(3).labels(0, 0, 2, 10), vec![3, 3]);
}
