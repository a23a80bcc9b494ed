//! Parity with the official PyTorch DiT in float32 (`tests/fixtures/make_dit_f32_fixtures.py`:
//! a copy of DiT's `models.py`, random weights, torch's own f32 kernels): at t = 0 and 999,
//! with the null label `y = num_classes` that DiT feeds to CFG's unconditional half.

use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};
use burn_ndarray::NdArray;
use nag_models::checkpoint::{load_state_dict, LoadOptions};
use nag_models::dit::timestep_embedding;
use nag_models::npy::read_npy;
use nag_models::{Dit, DitHints};

mod common;

type B = NdArray<f32>;

fn fixture(name: &str) -> PathBuf {
    common::fixture("dit_f32").join(name)
}

fn read(name: &str) -> (Vec<usize>, Vec<f32>) {
    let a = read_npy(&fixture(name)).unwrap_or_else(|e| panic!("{e}"));
    (a.shape.clone(), a.into_f32().unwrap())
}

/// max |a − b| / max |b|.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max);
    diff / want.iter().map(|v| v.abs() as f64).fold(0.0, f64::max)
}

#[test]
fn timestep_features_match_torch_f32() {
    let (_, t) = read("temb_t.npy");
    let (shape, want) = read("temb_expected.npy");
    let got: Vec<f32> = timestep_embedding::<B>(
        Tensor::from_data(TensorData::new(t.clone(), [t.len()]), &Default::default()),
        256,
    )
    .into_data()
    .to_vec()
    .unwrap();
    assert_eq!(shape, vec![t.len(), 256]);
    // Each feature within one f32 ulp of its frequency, times t (+1e-6 for cos/sin of
    // arguments up to ~10³ rad, which implementations round differently by an ulp of the
    // result). The arguments are bit-equal to torch's; its CPU `exp` is not correctly rounded
    // (frequencies 12 and 106 are one ulp off the true value here, CUDA's `exp` differs again),
    // so one ulp per frequency is as close as "the reference's f32" is defined. Frequencies
    // computed in f64, as before, were off by up to 4e-5 at t = 999.
    let half = 128;
    for (row, tv) in t.iter().enumerate() {
        for k in 0..256 {
            let f = (-(10000f64.ln()) * (k % half) as f64 / half as f64).exp();
            let tol = 1e-6 + tv.abs() as f64 * f * f64::from(f32::EPSILON);
            let (g, w) = (got[row * 256 + k], want[row * 256 + k]);
            assert!(
                ((g - w).abs() as f64) <= tol,
                "t = {tv}, feature {k}: {g} vs torch {w} (tolerance {tol:.1e})"
            );
        }
    }
}

#[test]
fn official_dit_matches_torch_f32_at_t0_t999_and_null_label() {
    let device = Default::default();
    let (sd, _) = load_state_dict(&fixture("dit_tiny.pt"), &LoadOptions::default()).unwrap();
    let hints = DitHints {
        num_heads: Some(4),
        ..DitHints::default()
    };
    let (model, _) = Dit::<B>::from_state_dict(&sd, &hints, &device).unwrap();
    let cfg = model.config();
    assert_eq!((cfg.num_classes, cfg.hidden_size, cfg.depth), (10, 32, 2));
    assert!(cfg.has_null_class() && cfg.learn_sigma);

    let (xs, x) = read("x.npy");
    let (_, t) = read("t.npy");
    let y = read_npy(&fixture("y.npy")).unwrap().into_i64().unwrap();
    let (want_shape, want) = read("expected.npy");
    assert_eq!(y, vec![3, 3, 10, 10, 7, 0]);
    let n = xs[0];
    let x = Tensor::<B, 4>::from_data(TensorData::new(x, [n, 4, 8, 8]), &device);
    let tt = Tensor::<B, 1>::from_data(TensorData::new(t.clone(), [n]), &device);
    let yy = Tensor::<B, 1, Int>::from_data(TensorData::new(y.clone(), [n]), &device);
    let out = model.try_forward(x, tt, yy, None, None).unwrap();
    assert_eq!(out.dims().to_vec(), want_shape);
    let got: Vec<f32> = out.into_data().to_vec().unwrap();
    let per = got.len() / n;
    for i in 0..n {
        let r = i * per..(i + 1) * per;
        let err = rel_err(&got[r.clone()], &want[r]);
        assert!(
            err <= 1e-5,
            "sample {i} (t = {}, y = {}): relative error {err:.2e}",
            t[i],
            y[i]
        );
    }
}
