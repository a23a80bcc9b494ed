//! Tests of the InceptionV3 port: architecture keys, weight checks, plumbing and (with the real
//! weights) parity with pytorch-fid.

use super::weights::{identify_state_dict, require_fid_weights};
use super::*;
use std::path::Path;

use crate::metrics::fd::{frechet_distance, FeatureStats};
use burn::tensor::{Tensor, TensorData};
use burn_ndarray::NdArray;
use nag_models::checkpoint::{load_state_dict, LoadOptions};
use nag_models::state_dict::StateDict;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type B = NdArray<f32>;

/// A random state dict with every key (He-uniform convolutions, BN near identity,
/// positive running variances) plus the unused `fc.*` / `num_batches_tracked`.
fn random_state_dict(seed: u64) -> StateDict {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut sd = StateDict::new();
    for s in conv_specs() {
        let [kh, kw] = s.kernel;
        let fan_in = (s.c_in * kh * kw) as f32;
        let a = (6.0 / fan_in).sqrt();
        let n = s.c_out * s.c_in * kh * kw;
        let w = (0..n).map(|_| rng.random_range(-a..a)).collect();
        sd.insert(
            format!("{}.conv.weight", s.name),
            vec![s.c_out, s.c_in, kh, kw],
            w,
        );
        let mut bn = |p: &str, lo: f32, hi: f32| {
            let v = (0..s.c_out).map(|_| rng.random_range(lo..hi)).collect();
            sd.insert(format!("{}.bn.{p}", s.name), vec![s.c_out], v);
        };
        bn("weight", 0.8, 1.2);
        bn("bias", -0.1, 0.1);
        bn("running_mean", -0.1, 0.1);
        bn("running_var", 0.5, 1.5);
        sd.insert(
            format!("{}.bn.num_batches_tracked", s.name),
            vec![],
            vec![0.0],
        );
    }
    sd.insert("fc.weight", vec![1008, 2048], vec![0.0; 1008 * 2048]);
    sd.insert("fc.bias", vec![1008], vec![0.0; 1008]);
    sd
}

/// Two distinct 1-channel 16×16 images in [−1, 1].
fn images() -> Vec<f32> {
    (0..2 * 16 * 16)
        .map(|i| {
            let (b, p) = (i / 256, i % 256);
            let (y, x) = ((p / 16) as f32, (p % 16) as f32);
            if b == 0 {
                (x / 7.5 - 1.0).clamp(-1.0, 1.0)
            } else {
                ((x * 0.7 + y * 0.3).sin()).clamp(-1.0, 1.0)
            }
        })
        .collect()
}

#[test]
fn architecture_keys() {
    let shapes = state_dict_shapes();
    assert_eq!(conv_specs().len(), 94);
    assert_eq!(shapes.len(), 94 * 5);
    let has = |k: &str, s: &[usize]| shapes.iter().any(|(a, b)| a == k && b == s);
    assert!(has("Conv2d_1a_3x3.conv.weight", &[32, 3, 3, 3]));
    assert!(has("Mixed_5b.branch5x5_1.conv.weight", &[48, 192, 1, 1]));
    assert!(has("Mixed_6b.branch7x7_2.conv.weight", &[128, 128, 1, 7]));
    assert!(has("Mixed_7c.branch_pool.conv.weight", &[192, 2048, 1, 1]));
    assert!(has("Mixed_7b.branch3x3dbl_3b.bn.running_var", &[384]));
    // About 21.8 M parameters without fc (23.9 M with it, as torchvision's count).
    let params: usize = shapes
        .iter()
        .filter(|(k, _)| k.ends_with("conv.weight") || k.ends_with("bn.weight"))
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    assert!((21_700_000..21_900_000).contains(&params), "{params}");
}

#[test]
fn features_from_a_safetensors_file() {
    let sd = random_state_dict(7);
    let dir = std::env::temp_dir().join(format!("nag-inception-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("inception.safetensors");
    nag_models::checkpoint::save_safetensors(&sd, &path, &Default::default()).unwrap();
    assert_eq!(
        check_inception(Some(&path)).unwrap(),
        InceptionWeights::PytorchFid
    );
    let device = Default::default();
    let net = InceptionV3::<B>::load(&path, &device).unwrap();
    std::fs::remove_dir_all(&dir).ok();

    let x = images();
    let f1 = net.features_from_slice(&x, [2, 1, 16, 16]).unwrap();
    assert_eq!(f1.len(), 2 * INCEPTION_DIM);
    assert!(f1.iter().all(|v| v.is_finite() && *v >= 0.0));
    assert!(f1.iter().any(|v| *v > 0.0));
    // Deterministic, and batching does not change the result.
    let f2 = net
        .clone()
        .with_batch(1)
        .features_from_slice(&x, [2, 1, 16, 16])
        .unwrap();
    let diff = f1
        .iter()
        .zip(&f2)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        diff <= 1e-5 * f1.iter().fold(1.0f32, |m, v| m.max(*v)),
        "{diff}"
    );
    // Different images, different features.
    let (a, b) = f1.split_at(INCEPTION_DIM);
    let d: f32 = a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum();
    assert!(d > 1e-3, "{d}");
    // FD of the set against itself, in all 2048 dimensions (the low-rank path: n ≪ d).
    let stats = FeatureStats::from_features(&f1, INCEPTION_DIM).unwrap();
    assert!(stats.factor.is_some());
    let fd = frechet_distance(&stats, &stats).unwrap();
    assert!(fd.abs() < 1e-6 * (1.0 + stats.trace()), "{fd}");
}

#[test]
fn missing_or_misshapen_keys_are_named() {
    let device = Default::default();
    let mut sd = random_state_dict(3);
    let key = "Mixed_6c.branch7x7dbl_3.bn.running_var";
    sd.tensors.remove(key);
    let msg = InceptionV3::<B>::from_state_dict(&sd, "w.safetensors", &device)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(key) && msg.contains("w.safetensors") && msg.contains("[160]"),
        "{msg}"
    );

    let mut sd = random_state_dict(3);
    let key = "Mixed_5b.branch5x5_2.conv.weight";
    sd.insert(key, vec![64, 48, 3, 3], vec![0.0; 64 * 48 * 9]);
    let msg = InceptionV3::<B>::from_state_dict(&sd, "w.safetensors", &device)
        .unwrap_err()
        .to_string();
    assert!(msg.contains(key) && msg.contains("[64, 48, 5, 5]"), "{msg}");
}

#[test]
fn never_pretends() {
    let msg = check_inception(None).unwrap_err().to_string();
    assert!(
        msg.contains("--inception PATH") && msg.contains(PT_FID_WEIGHTS),
        "{msg}"
    );
    let missing = Path::new("/nonexistent/pt_inception.pth");
    assert!(check_inception(Some(missing)).is_err());
    let mut sd = StateDict::new();
    sd.insert(
        "Conv2d_1a_3x3.conv.weight",
        vec![32, 3, 3, 3],
        vec![0.0; 864],
    );
    sd.insert(
        "Mixed_7c.branch_pool.conv.weight",
        vec![192, 2048, 1, 1],
        vec![0.0; 192 * 2048],
    );
    sd.insert("fc.weight", vec![1000, 2048], vec![0.0; 1000 * 2048]);
    let kind = identify_state_dict(&sd, "tv.pth").unwrap();
    assert_eq!(kind, InceptionWeights::Torchvision);
    let msg = require_fid_weights(kind, "tv.pth").unwrap_err().to_string();
    assert!(
        msg.contains("torchvision") && msg.contains(PT_FID_WEIGHTS),
        "{msg}"
    );
    const { assert!(INCEPTION_AVAILABLE) };
}

/// Parity with pytorch-fid (local only, needs files): `NAG_INCEPTION_PARITY=DIR` with
/// `DIR/weights.safetensors` (a randomly initialised `fid_inception_v3()` state dict) and
/// `DIR/io.safetensors` (inputs `x1, x2, x3` in [−1, 1] and pytorch-fid's
/// `InceptionV3([3], normalize_input=False)` features `f1, f2, f3`; 1-channel inputs
/// repeated to 3 there). Prints the largest absolute difference. When the files also hold
/// `s1..s3` (`Mixed_6d.branch1x1[:, :7]` in NHWC order, `[N, 2023]`) and `l1..l3`
/// (`pool · fc.weightᵀ`, `[N, 1008]`), as `nag-train/tests/fixtures/make_inception_parity.py
/// DIR` writes them, the ADM outputs ([`InceptionV3::forward_adm`], [`InceptionV3::logits`])
/// are checked too.
#[test]
#[ignore = "needs NAG_INCEPTION_PARITY=DIR with files made by PyTorch"]
fn parity_with_pytorch_fid() {
    let Some(dir) = std::env::var_os("NAG_INCEPTION_PARITY") else {
        eprintln!("NAG_INCEPTION_PARITY not set; skipped");
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let device = Default::default();
    let net = InceptionV3::<B>::load(&dir.join("weights.safetensors"), &device).unwrap();
    let (io, _) = load_state_dict(&dir.join("io.safetensors"), &LoadOptions::default()).unwrap();
    for i in 1..=3 {
        let x = io.get(&format!("x{i}")).unwrap();
        let f = io.get(&format!("f{i}")).unwrap();
        let shape: [usize; 4] = x.shape.clone().try_into().unwrap();
        let ours = net.features_from_slice(&x.data, shape).unwrap();
        let max_abs = ours
            .iter()
            .zip(&f.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let scale = f.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        eprintln!("x{i} {shape:?}: max |rust − pytorch| = {max_abs:e} (max |feature| {scale})");
        assert!(max_abs <= 1e-4 * scale.max(1.0), "x{i}: {max_abs}");
        let (Some(sp), Some(lg)) = (io.get(&format!("s{i}")), io.get(&format!("l{i}"))) else {
            continue;
        };
        let t = Tensor::<B, 4>::from_data(TensorData::new(x.data.clone(), shape), &device);
        let (pool, spatial) = net.forward_adm(t);
        let logits = net.logits(pool).unwrap();
        for (name, ours, theirs) in [
            ("mixed_6/conv[..., :7]", spatial, sp),
            ("logits", logits, lg),
        ] {
            let ours: Vec<f32> = ours.into_data().iter::<f32>().collect();
            assert_eq!(ours.len(), theirs.data.len(), "x{i} {name}");
            let max_abs = ours
                .iter()
                .zip(&theirs.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            let scale = theirs.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            eprintln!("x{i} {name}: max |rust − pytorch| = {max_abs:e} (max |value| {scale})");
            assert!(max_abs <= 1e-4 * scale.max(1.0), "x{i} {name}: {max_abs}");
        }
    }
}
