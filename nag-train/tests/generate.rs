//! Guided sampling end to end on a random tiny DiT: each step runs exactly the branches its
//! guidance needs in one network evaluation, and splitting the batch over threads
//! ([`SampleConfig::threads`]) does not change a single bit of the samples.

use burn::tensor::{Tensor, TensorData};
use burn_ndarray::NdArray;
use nag_core::ddpm::DdpmSchedule;
use nag_core::guidance::{CfgNagForm, Guidance, Interval};
use nag_core::prediction::Prediction;
use nag_models::{Dit, DitConfig};
use nag_train::generate::{generate, SampleConfig, SamplerKind};
use nag_train::guided::GuidedDit;
use nag_train::sampling::{
    sample_ddim, DdimOptions, DiffusionModel, ModelOutput, TimePoint, ZeroNoise,
};

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
    random_tiny_seeded(0)
}

/// [`random_tiny`] with other pseudo-random weights for `offset ≠ 0`.
fn random_tiny_seeded(offset: u64) -> Dit<B> {
    let config = DitConfig::preset("tiny", 8, 3, 10).unwrap();
    let device = Default::default();
    let mut sd = config.init::<B>(&device).unwrap().to_state_dict();
    for (i, (key, t)) in sd.tensors.iter_mut().enumerate() {
        if key != "pos_embed" {
            t.data = pseudo(i as u64 + 1 + offset, t.data.len(), 0.1);
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
                variance: nag_train::sampling::FixedVariance::default(),
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

/// A [`GuidedDit`] that records, for every network evaluation, its τ and how many branches
/// it ran.
struct Recorded<'m> {
    guided: GuidedDit<'m, B>,
    steps: Vec<(f64, usize)>,
}

impl DiffusionModel<B> for Recorded<'_> {
    fn prediction(&self) -> Prediction {
        self.guided.prediction()
    }
    fn predict(&mut self, x: Tensor<B, 4>, at: TimePoint) -> ModelOutput<B> {
        let (calls, evals) = (self.guided.calls, self.guided.branch_evals);
        let out = self.guided.predict(x, at);
        assert_eq!(
            self.guided.calls,
            calls + 1,
            "one network evaluation per predict"
        );
        self.steps.push((at.tau, self.guided.branch_evals - evals));
        out
    }
}

/// One DDIM run of 10 steps on 2 samples: (τ, branches) of every network evaluation, and the
/// samples.
fn recorded_run(model: &Dit<B>, guidance: Guidance) -> (Vec<(f64, usize)>, Vec<f32>) {
    let (steps, samples, _) = recorded_guided(GuidedDit::new(model, &[2, 5], guidance).unwrap());
    (steps, samples)
}

/// [`recorded_run`] of any wrapper; also returns the reference model's branch evaluations.
fn recorded_guided(guided: GuidedDit<'_, B>) -> (Vec<(f64, usize)>, Vec<f32>, usize) {
    let schedule = DdpmSchedule::dit().with_steps(10).unwrap();
    let mut recorded = Recorded {
        guided,
        steps: Vec::new(),
    };
    let x = Tensor::<B, 4>::from_data(
        TensorData::new(pseudo(5, 2 * 3 * 8 * 8, 1.0), [2, 3, 8, 8]),
        &Default::default(),
    );
    let out = sample_ddim(
        &mut recorded,
        &schedule,
        x,
        &DdimOptions::default(),
        &mut ZeroNoise,
        None,
    )
    .unwrap();
    let reference_evals = recorded.guided.reference_evals;
    (
        recorded.steps,
        out.into_data().to_vec::<f32>().unwrap(),
        reference_evals,
    )
}

/// Domain Guidance: with the same model as its own reference it is CFG to the last bit (the
/// reference's branch runs in a batch of its own, and a sample's arithmetic does not depend on
/// its batch); each step runs the plan's three branches, one of them on the reference; another
/// reference changes the samples.
#[test]
fn dog_with_the_model_as_its_own_reference_is_cfg_to_the_last_bit() {
    let model = random_tiny();
    let labels = [2, 5];
    let (cfg_steps, cfg, _) =
        recorded_guided(GuidedDit::new(&model, &labels, Guidance::cfg_nag(2.0, 1.5)).unwrap());
    let (dog_steps, dog, reference_evals) = recorded_guided(
        GuidedDit::with_reference(&model, &model, &labels, Guidance::dog(2.0, 1.5)).unwrap(),
    );
    assert!(dog == cfg, "DoG with the same model differs from CFG+NAG");
    assert_eq!(dog_steps, cfg_steps);
    assert!(dog_steps.iter().all(|s| s.1 == 3));
    assert_eq!(reference_evals, 10, "one reference branch per step");

    let other = random_tiny_seeded(100);
    let (_, moved, _) = recorded_guided(
        GuidedDit::with_reference(&model, &other, &labels, Guidance::dog(2.0, 1.5)).unwrap(),
    );
    assert!(moved != cfg, "another reference changes the samples");

    // DoG without a reference, and a reference without a null class, are errors.
    assert!(GuidedDit::new(&model, &labels, Guidance::dog(2.0, 0.0)).is_err());
    let no_null = DitConfig::preset("tiny", 8, 3, 10)
        .unwrap()
        .with_class_dropout_prob(0.0)
        .init::<B>(&Default::default())
        .unwrap();
    let msg = GuidedDit::with_reference(&model, &no_null, &labels, Guidance::dog(2.0, 0.0))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("null class"), "{msg}");
}

#[test]
fn every_step_batches_exactly_the_branches_its_guidance_needs() {
    let model = random_tiny();
    let branches = |steps: &[(f64, usize)]| steps.iter().map(|s| s.1).collect::<Vec<_>>();
    let (steps, none) = recorded_run(&model, Guidance::none());
    assert_eq!(
        branches(&steps),
        [1; 10],
        "no guidance: one branch per step"
    );
    let mut four = Guidance::cfg_nag(2.0, 1.5);
    four.form = CfgNagForm::FourBranch;
    for (name, g, k) in [
        ("cfg", Guidance::cfg(2.0), 2),
        ("nag", Guidance::nag(1.5), 2),
        ("cfg+nag", Guidance::cfg_nag(2.0, 1.5), 3),
        ("cfg+nag four-branch", four, 4),
    ] {
        let (steps, samples) = recorded_run(&model, g);
        assert_eq!(branches(&steps), [k; 10], "{name}: {k} branches every step");
        assert!(samples.iter().all(|v| v.is_finite()), "{name}");
        assert_ne!(
            samples, none,
            "{name}: the extra branches change the samples"
        );
    }
    // NAG only late in sampling, τ ∈ [0, 0.45]: the null-timestep branch joins exactly there.
    let mut late = Guidance::nag(1.5);
    late.nag_interval = Some(Interval { lo: 0.0, hi: 0.45 });
    let (steps, samples) = recorded_run(&model, late);
    assert_eq!(steps.len(), 10);
    assert_eq!(steps[0].0, 1.0, "sampling starts at pure noise");
    for &(tau, k) in &steps {
        assert_eq!(k, if tau <= 0.45 { 2 } else { 1 }, "τ = {tau}");
    }
    assert!(steps.iter().any(|s| s.1 == 1) && steps.iter().any(|s| s.1 == 2));
    assert_ne!(samples, none);
}

#[test]
fn every_sampler_runs_on_a_dit() {
    // DiT predicts ε; the continuous samplers must stop short of τ = 0, where ε says nothing
    // about the velocity (the ODE once failed there).
    let model = random_tiny();
    for (sampler, steps) in [
        (SamplerKind::Ddpm, 4),
        (SamplerKind::Ddim, 4),
        (SamplerKind::Sde, 4),
        (SamplerKind::Ode, 4),
        (SamplerKind::Ode, 0),
    ] {
        let cfg = SampleConfig {
            sampler,
            steps,
            eta: 0.0,
            seed: 1,
            path: "linear".into(),
            clip_x0: true,
            threads: 1,
            variance: nag_train::sampling::FixedVariance::default(),
        };
        let x = generate(&model, &[1, 4], Guidance::nag(1.0), &cfg, None)
            .unwrap_or_else(|e| panic!("{sampler:?} with {steps} steps: {e}"));
        assert_eq!(x.dims(), [2, 3, 8, 8]);
        let v = x.into_data().to_vec::<f32>().unwrap();
        assert!(v.iter().all(|v| v.is_finite()), "{sampler:?}");
    }
}
