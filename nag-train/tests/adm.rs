//! The ADM evaluator's statistics ([`nag_train::metrics::adm`]) against an independent
//! numpy/scipy implementation of its formulas (`tests/fixtures/make_adm_fixtures.py`, which
//! wrote `adm_stats.npz`), the `.npz` reader on archives written by numpy itself, and the whole
//! evaluation end to end on tiny image batches with a randomly initialised InceptionV3.

use std::io::Write;
use std::path::{Path, PathBuf};

use nag_models::npz::Npz;
use nag_train::metrics::adm::{
    evaluate, feature_stats, frechet_distance_adm, inception_score, precision_recall,
    read_precomputed_stats, AdmOptions, Progress, IS_SPLIT,
};
use nag_train::metrics::fd::FeatureStats;
use nag_train::metrics::inception::{InceptionV3, INCEPTION_DIM};
use nag_train::metrics::prdc::prdc;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type B = burn_ndarray::NdArray<f32>;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Fixture(Npz);

impl Fixture {
    fn open() -> Self {
        Self(Npz::open(&fixture("adm_stats.npz")).unwrap())
    }
    fn array(&mut self, name: &str) -> (Vec<usize>, Vec<f64>) {
        self.0.read_f64(name).unwrap()
    }
    /// A float32 array of the fixture (exact in f32).
    fn f32s(&mut self, name: &str) -> (usize, Vec<f32>) {
        let (shape, v) = self.array(name);
        (shape[1], v.into_iter().map(|x| x as f32).collect())
    }
    fn scalar(&mut self, name: &str) -> f64 {
        let (shape, v) = self.array(name);
        assert!(shape.is_empty(), "{name}: {shape:?}");
        v[0]
    }
}

fn rel_close(ours: f64, theirs: f64, tol: f64) -> bool {
    (ours - theirs).abs() <= tol * theirs.abs().max(1.0)
}

#[test]
fn mean_and_covariance_match_numpy_cov() {
    let mut f = Fixture::open();
    let (dim, sam) = f.f32s("sam");
    let stats = feature_stats(&sam, dim).unwrap();
    let (_, mu) = f.array("sam_mu");
    let (shape, sigma) = f.array("sam_sigma");
    assert_eq!(shape, vec![dim, dim]);
    let max_mu = stats
        .mean
        .iter()
        .zip(&mu)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let max_sigma = stats
        .cov
        .iter()
        .zip(&sigma)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    // The evaluator's `np.mean` of float32 activations is float32 (ours f64, ~1e-7 apart);
    // `np.cov` works in float64 (ours agrees to rounding).
    assert!(max_mu < 1e-6 && max_sigma < 1e-12, "{max_mu} {max_sigma}");
    assert_eq!(stats.n, 50);
    // n > dim: no low-rank factor; with fewer rows it is kept.
    assert!(stats.factor.is_none());
    assert!(feature_stats(&sam[..8 * dim], dim)
        .unwrap()
        .factor
        .is_some());
}

#[test]
fn frechet_distance_matches_scipy_sqrtm() {
    let mut f = Fixture::open();
    let (dim, sam) = f.f32s("sam");
    let (_, reference) = f.f32s("ref");
    let s = feature_stats(&sam, dim).unwrap();
    let r = feature_stats(&reference, dim).unwrap();
    let fid = frechet_distance_adm(&s, &r).unwrap();
    let expected = f.scalar("fid");
    // 1e-6: the evaluator's μ is float32 (see above); the rest agrees to ~1e-12.
    assert!(rel_close(fid, expected, 1e-6), "{fid} vs scipy {expected}");
    // Reference statistics read as precomputed moments (the path of `mu`/`sigma` in a file).
    let (_, mu) = f.array("ref_mu");
    let (_, sigma) = f.array("ref_sigma");
    let pre = FeatureStats::from_moments(mu, sigma).unwrap();
    let fid_pre = frechet_distance_adm(&s, &pre).unwrap();
    assert!(rel_close(fid_pre, fid, 1e-6), "{fid_pre} vs {fid}");
    // Identical statistics: 0 (the evaluator's value is not clamped, ours neither).
    let same = frechet_distance_adm(&r, &r).unwrap();
    assert!(same.abs() < 1e-9, "{same}");
    // Fewer samples than dimensions (a singular covariance, the low-rank path).
    let few = feature_stats(&sam[..8 * dim], dim).unwrap();
    let fid_few = frechet_distance_adm(&few, &r).unwrap();
    let expected_few = f.scalar("fid_few");
    assert!(
        rel_close(fid_few, expected_few, 1e-6),
        "{fid_few} vs scipy {expected_few}"
    );
    eprintln!("FID {fid} (scipy {expected}); 8 samples {fid_few} (scipy {expected_few})");
}

#[test]
fn inception_score_matches_numpy() {
    let mut f = Fixture::open();
    let (classes, logits) = f.f32s("logits");
    let one = inception_score(&logits, classes, IS_SPLIT).unwrap();
    let split20 = inception_score(&logits, classes, 20).unwrap();
    let (e1, e20) = (f.scalar("is_one_split"), f.scalar("is_split20"));
    assert!(rel_close(one, e1, 1e-9), "{one} vs {e1}");
    assert!(rel_close(split20, e20, 1e-9), "{split20} vs {e20}");
    assert!(inception_score(&logits, classes, 0).is_err());
    assert!(inception_score(&[], classes, 10).is_err());
    // Identical predictions: IS = 1.
    let flat = vec![0.5f32; 4 * classes];
    assert!((inception_score(&flat, classes, 10).unwrap() - 1.0).abs() < 1e-12);
}

#[test]
fn precision_recall_match_numpy_and_prdc() {
    let mut f = Fixture::open();
    let (dim, sam) = f.f32s("sam");
    let (_, reference) = f.f32s("ref");
    let device = Default::default();
    let (p, r) = precision_recall::<B>(&reference, &sam, dim, 3, &device).unwrap();
    assert_eq!((p, r), (f.scalar("precision"), f.scalar("recall")));
    // The same definition as prdc.rs (k-th neighbour, self excluded, `≤`), computed in f64 there.
    let other = prdc(&reference, &sam, dim, 3).unwrap();
    assert_eq!((other.precision, other.recall), (p, r));
    // A set against itself: every point is inside the other's manifold.
    let same = precision_recall::<B>(&sam, &sam, dim, 3, &device).unwrap();
    assert_eq!(same, (1.0, 1.0));
    let msg = precision_recall::<B>(&reference[..3 * dim], &sam, dim, 3, &device)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("more than k"), "{msg}");
}

#[test]
fn npz_written_by_numpy_reads_and_streams() {
    let expected: Vec<u8> = (0..3 * 4 * 5 * 3).map(|i| (i * 37 % 256) as u8).collect();
    for name in ["images_stored.npz", "images_deflated.npz"] {
        let mut npz = Npz::open(&fixture(name)).unwrap();
        assert_eq!(npz.names(), vec!["arr_0".to_string(), "mu".to_string()]);
        let (shape, mu) = npz.read_f64("mu").unwrap();
        assert_eq!((shape, mu), (vec![3], vec![0.1, -2.5, 3.0]));
        let mut rows = npz.images().unwrap();
        assert_eq!(rows.shape(), [3, 4, 5, 3]);
        let mut all = Vec::new();
        while let Some(b) = rows.read_batch(2).unwrap() {
            all.extend(b);
        }
        assert_eq!(all, expected, "{name}");
        drop(rows);
        let whole = npz.read("arr_0").unwrap().into_i64().unwrap();
        assert!(whole
            .iter()
            .zip(&expected)
            .all(|(&a, &b)| a == i64::from(b)));
    }
}

// ---------------------------------------------------------------------------------------------
// End to end

/// `np.savez(path, arr_0=images)` for uint8 `[n, h, w, 3]`, built by hand (the tests do not
/// depend on an npz writer).
fn write_images(path: &Path, shape: [usize; 4], data: &[u8]) {
    let [n, h, w, c] = shape;
    let mut header =
        format!("{{'descr': '|u1', 'fortran_order': False, 'shape': ({n}, {h}, {w}, {c}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    npy.extend_from_slice(data);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    zip.start_file("arr_0.npy", opts).unwrap();
    zip.write_all(&npy).unwrap();
    zip.finish().unwrap();
}

fn random_images(n: usize, side: usize, seed: u64, bias: u8) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n * side * side * 3)
        .map(|i| {
            let smooth = ((i / 3) % side * 255 / side) as u8;
            smooth / 2 + rng.random_range(0..64u8) + bias
        })
        .collect()
}

#[test]
fn evaluate_end_to_end_with_random_weights() {
    let dir = std::env::temp_dir().join(format!("nag-adm-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let side = 16;
    let (reference, samples) = (dir.join("ref.npz"), dir.join("samples.npz"));
    write_images(
        &reference,
        [4, side, side, 3],
        &random_images(4, side, 1, 0),
    );
    write_images(&samples, [4, side, side, 3], &random_images(4, side, 2, 60));

    let device = Default::default();
    let sd = nag_train::metrics::inception::random_state_dict(11);
    let net = InceptionV3::<B>::from_state_dict(&sd, "random", &device)
        .unwrap()
        .with_batch(3);
    let mut stages = Vec::new();
    let mut progress = |p: Progress<'_>| stages.push((p.stage.to_string(), p.done, p.total));
    let opts = AdmOptions::default();
    let report = evaluate(&net, &samples, &reference, &opts, &mut progress).unwrap();
    eprintln!("{report:?}");
    assert_eq!((report.n_samples, report.n_reference), (4, 4));
    assert!(!report.sample_stats_precomputed && !report.reference_stats_precomputed);
    assert!(report.fid.is_finite() && report.fid > 0.0, "{report:?}");
    assert!(report.sfid.is_finite() && report.sfid > 0.0, "{report:?}");
    assert!(
        (1.0..=1008.0).contains(&report.inception_score),
        "{report:?}"
    );
    assert!((0.0..=1.0).contains(&report.precision) && (0.0..=1.0).contains(&report.recall));
    // The reference pass reports each batch of 3, then the samples'.
    assert!(stages.contains(&("reference features".to_string(), 3, 4)));
    assert!(stages.contains(&("reference features".to_string(), 4, 4)));
    assert!(stages.contains(&("sample features".to_string(), 4, 4)));

    // Bad input: no arr_0, a reference with statistics of the wrong size.
    let empty = dir.join("mu_only.npz");
    {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&empty).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        zip.start_file("mu.npy", opts).unwrap();
        let mu =
            nag_models::npy::NpyArray::new(vec![16], nag_models::npy::NpyData::F32(vec![0.0; 16]))
                .unwrap();
        zip.write_all(&nag_models::npy::encode_npy(&mu).unwrap())
            .unwrap();
        zip.start_file("sigma.npy", opts).unwrap();
        let sigma = nag_models::npy::NpyArray::new(
            vec![16, 16],
            nag_models::npy::NpyData::F32(vec![0.0; 256]),
        )
        .unwrap();
        zip.write_all(&nag_models::npy::encode_npy(&sigma).unwrap())
            .unwrap();
        zip.finish().unwrap();
    }
    let msg = evaluate(&net, &samples, &empty, &opts, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("has no arr_0"), "{msg}");
    // Found before any feature pass: no progress was reported.
    let mut calls = 0;
    let _ = evaluate(&net, &empty, &reference, &opts, &mut |_| calls += 1);
    assert_eq!(calls, 0);
    let msg = read_precomputed_stats(&mut Npz::open(&empty).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("mu has shape [16]") && msg.contains("mu [2048]"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).ok();
    let _ = INCEPTION_DIM;
}
