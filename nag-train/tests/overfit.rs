//! A tiny model overfits a fixed batch: model, loss and optimiser wired correctly.

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Int, Tensor, TensorData};
use burn_ndarray::NdArray;
use nag_core::ddpm::DdpmSchedule;
use nag_models::dit::DitConfig;
use nag_train::objective;

type B = burn_autodiff::Autodiff<NdArray<f32>>;

#[test]
fn tiny_model_overfits_a_fixed_batch() {
    let device = Default::default();
    let cfg = DitConfig::new(8, 2, 3, 32, 2, 2, 2).with_learn_sigma(false);
    let mut model = cfg.init::<B>(&device).unwrap();
    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.0)
        .init::<B, nag_models::dit::Dit<B>>();
    let schedule = DdpmSchedule::dit();
    let n = 4;
    // Deterministic data (no draws from burn's process-wide RNG, which other tests seed).
    let wave = |f: f32| -> Tensor<B, 4> {
        let v: Vec<f32> = (0..n * 3 * 64).map(|i| (f * i as f32).sin()).collect();
        Tensor::from_data(TensorData::new(v, [n, 3, 8, 8]), &device)
    };
    let (x0, noise) = (wave(0.37), wave(1.91).mul_scalar(1.3));
    let k = [100usize, 300, 600, 900];
    let x_t = objective::ddpm_q_sample(&schedule, x0.clone(), &k, noise.clone());
    let t = Tensor::<B, 1>::from_data(
        TensorData::new(vec![100f32, 300., 600., 900.], [n]),
        &device,
    );
    let y = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![0i64, 1, 0, 1], [n]), &device);
    let mut first = None;
    let mut last = 0.0f32;
    for _ in 0..150 {
        let out = model.forward(x_t.clone(), t.clone(), y.clone(), None, None);
        let loss =
            objective::ddpm_loss(&schedule, x0.clone(), x_t.clone(), &k, noise.clone(), out).mean();
        last = loss.clone().into_scalar();
        first.get_or_insert(last);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
    }
    let first = first.unwrap();
    assert!(last < first / 10.0, "loss {first} → {last}");
    let _ = model.valid();
}
