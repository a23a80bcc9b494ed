//! Guided sampling end to end on a random tiny DiT: splitting the batch over threads
//! ([`SampleConfig::threads`]) must not change a single bit of the samples.

use burn_ndarray::NdArray;
use nag_core::guidance::Guidance;
use nag_models::{Dit, DitConfig};
use nag_train::generate::{generate, SampleConfig, SamplerKind};

type B = NdArray<f32>;

/// Deterministic values in `[-scale, scale]` (xorshift).
fn pseudo(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * scale
        })
        .collect()
}

/// The tiny preset at 8×8×3 with every weight but the position table pseudo-random, so that
/// every branch (class, null class, null timestep) gives a different, non-zero output.
fn random_tiny() -> Dit<B> {
    let config = DitConfig::preset("tiny", 8, 3, 10).unwrap();
    let device = Default::default();
    let mut sd = config.init::<B>(&device).unwrap().to_state_dict();
    for (i, (key, t)) in sd.tensors.iter_mut().enumerate() {
        if key != "pos_embed" {
            t.data = pseudo(i as u64 + 1, t.data.len(), 0.1);
        }
    }
    config
        .init::<B>(&device)
        .unwrap()
        .load_state_dict(&sd)
        .unwrap()
        .0
}

#[test]
fn threads_do_not_change_the_samples() {
    let model = random_tiny();
    let labels = [0, 3, 7, 9, 1];
    for (sampler, steps) in [(SamplerKind::Ddpm, 6), (SamplerKind::Ddim, 4)] {
        let sample = |labels: &[i64], threads: usize| {
            let cfg = SampleConfig {
                sampler,
                steps,
                eta: 0.5,
                seed: 11,
                path: "linear".into(),
                clip_x0: true,
                threads,
            };
            generate(&model, labels, Guidance::cfg_nag(2.0, 1.5), &cfg, None)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        let one = sample(&labels, 1);
        assert!(one.iter().all(|v| v.is_finite()));
        let again = sample(&labels, 1);
        assert_eq!(one, again, "{sampler:?}: same seed, same samples");
        // 5 samples in chunks of 3 + 2, and of 1 each (more threads than samples).
        for threads in [2, 8] {
            let split = sample(&labels, threads);
            assert_eq!(
                one, split,
                "{sampler:?}: threads = {threads} changed the samples"
            );
        }
        // The samples do depend on the labels (the chunks' labels must follow their rows).
        let swapped = sample(&[9, 3, 7, 0, 1], 2);
        let per = one.len() / labels.len();
        assert_eq!(one[per..3 * per], swapped[per..3 * per], "{sampler:?}");
        assert_ne!(one[..per], swapped[..per], "{sampler:?}: label 0 vs 9");
    }
}
