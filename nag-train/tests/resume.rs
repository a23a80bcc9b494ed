//! A resumed run equals an uninterrupted one bit for bit: the exported EMA weights, and the
//! final checkpoint's weights, EMA weights, AdamW moments, step and RNG state, and loss log.
//! (Its own test binary: reading a checkpoint back initialises a model outside `train`, which
//! draws from burn's process-wide RNG and would disturb a concurrent run's initialisation.)

mod common;

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::record::{AdaptorRecord, AdaptorRecordV1};
use burn::optim::{AdamW, AdaptiveMomentumState, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::Tensor;
use common::{small_run, B};
use nag_models::{Dit, DitConfig};
use nag_train::train::{train, TrainConfig};

type Rec = NamedMpkFileRecorder<FullPrecisionSettings>;
/// The trainer's optimiser record: AdamW state by parameter id.
type OptimRecord = <OptimizerAdaptor<AdamW, Dit<B>, B> as Optimizer<Dit<B>, B>>::Record;

/// A parameter's shape and value, and its AdamW state (step count, first and second moments)
/// when it has one.
type Entry = (Vec<usize>, Vec<f32>, Option<(usize, Vec<f32>, Vec<f32>)>);

fn values<const D: usize>(t: Tensor<burn_ndarray::NdArray<f32>, D>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

fn moments<const D: usize>(
    m: AdaptiveMomentumState<burn_ndarray::NdArray<f32>, D>,
) -> (usize, Vec<f32>, Vec<f32>) {
    (m.time, values(m.moment_1), values(m.moment_2))
}

/// The parameters of the record `name` ("model" or "ema") in checkpoint directory `dir`, in
/// module order: id, shape, value. The config comes from the run's `ema.json`.
fn params(dir: &Path, name: &str) -> Vec<(ParamId, Vec<usize>, Vec<f32>)> {
    let run = dir.ancestors().nth(2).unwrap();
    let config: DitConfig =
        serde_json::from_str(&std::fs::read_to_string(run.join("ema.json")).unwrap()).unwrap();
    let device = Default::default();
    let model: Dit<B> = config
        .init(&device)
        .unwrap()
        .load_record(Rec::new().load(dir.join(name), &device).unwrap());

    struct Params(Vec<(ParamId, Vec<usize>, Vec<f32>)>);
    impl ModuleVisitor<B> for Params {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val().inner();
            self.0
                .push((param.id, value.dims().to_vec(), values(value)));
        }
    }
    let mut params = Params(Vec::new());
    model.visit(&mut params);
    params.0
}

/// The trained weights of checkpoint directory `dir`, each with its AdamW state from
/// `dir/optim`, matched by burn's random parameter id (which is why the record files
/// themselves differ byte-wise between runs).
fn checkpoint(dir: &Path) -> Vec<Entry> {
    let mut optim: OptimRecord = Rec::new()
        .load(dir.join("optim"), &Default::default())
        .unwrap();
    params(dir, "model")
        .into_iter()
        .map(|(id, shape, value)| {
            let state = optim.remove(&id).map(|AdaptorRecord::V1(r)| match r {
                AdaptorRecordV1::Rank1(s) => moments(s.momentum),
                AdaptorRecordV1::Rank2(s) => moments(s.momentum),
                AdaptorRecordV1::Rank3(s) => moments(s.momentum),
                AdaptorRecordV1::Rank4(s) => moments(s.momentum),
                _ => panic!("a parameter of shape {shape:?} has an unexpected rank"),
            });
            (shape, value, state)
        })
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

    let last = Path::new("checkpoints").join("step-0000004");
    let model = checkpoint(&full.join(&last));
    let trained = model.iter().filter(|e| e.2.is_some()).count();
    // Every parameter but the fixed sin-cos position table has AdamW state from 4 steps.
    assert_eq!(trained, model.len() - 1);
    assert!(model.iter().flat_map(|e| &e.2).all(|s| s.0 == 4));
    let resumed = checkpoint(&split.join(&last));
    assert_eq!(model.len(), resumed.len());
    for (i, (x, y)) in model.iter().zip(&resumed).enumerate() {
        assert!(
            x == y,
            "parameter {i} ({:?}): value or AdamW state differs after resuming",
            x.0
        );
    }
    let ema = |run: &Path| -> Vec<Vec<f32>> {
        let entries = params(&run.join(&last), "ema");
        entries.into_iter().map(|e| e.2).collect()
    };
    assert!(
        ema(&full) == ema(&split),
        "checkpointed EMA weights differ after resuming"
    );
    let state = last.join("state.json");
    assert_eq!(
        std::fs::read(full.join(&state)).unwrap(),
        std::fs::read(split.join(&state)).unwrap(),
        "step / RNG state"
    );
    assert_eq!(
        std::fs::read_to_string(full.join("loss.csv")).unwrap(),
        std::fs::read_to_string(split.join("loss.csv")).unwrap()
    );
    // The comparisons can fail: two more steps change every trained value and moment.
    let earlier = checkpoint(&full.join("checkpoints/step-0000002"));
    for (x, y) in model.iter().zip(&earlier).filter(|(x, _)| x.2.is_some()) {
        assert!(x.1 != y.1 && x.2 != y.2);
    }
    // A different seed gives different weights.
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
