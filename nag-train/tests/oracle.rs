//! The calibrated shift of the exact model: with DiT's 1000-step ancestral sampler and the
//! posterior variance the excess δ is zero within its standard error; with 10 steps and
//! fixed-large variance it is clearly positive.

use burn::tensor::{Tensor, TensorData};
use burn_ndarray::NdArray;
use nag_core::guidance::Guidance;
use nag_core::schedule::Schedule;
use nag_train::data::{Dataset, GmmConfig, GmmDataset};
use nag_train::generate::{SampleConfig, Sampled, SamplerKind};
use nag_train::oracle::{NagForm, Oracle, OracleError};
use nag_train::sampling::{FixedVariance, StepInfo};
use nag_train::shift::{Calibration, ExactMeter, LateShift, ShiftRecorder};

type B = NdArray<f32>;

const N: usize = 48;

fn late_shift(data: &GmmDataset, steps: usize, variance: FixedVariance) -> LateShift {
    let schedule = Schedule::from_name("ddpm-linear").unwrap();
    let oracle = Oracle::new(
        data.mixture(),
        schedule.clone(),
        OracleError::None,
        NagForm::Eps,
        0,
    )
    .unwrap();
    let device = Default::default();
    let [c, h, w] = data.shape();
    let mut real = Vec::new();
    let mut labels = Vec::new();
    for i in 0..N {
        let (x, k) = data.sample_f64(1000 + i).unwrap();
        real.extend(x.iter().map(|&v| v as f32));
        labels.push(k as i64);
    }
    let x0 = Tensor::<B, 4>::from_data(TensorData::new(real, [N, c, h, w]), &device);
    let mut cal = Calibration::new(x0, &labels, schedule.clone(), 7).unwrap();
    let mut meter = ExactMeter::new(data.mixture(), &schedule, 200);
    let mut rec = ShiftRecorder::<B>::new(&mut meter, &labels).with_calibration(&mut cal);
    // Only the late steps enter the late averages: skip measuring the others.
    let sample = SampleConfig {
        sampler: SamplerKind::Ddpm,
        steps,
        eta: 0.0,
        seed: 3,
        path: "linear".into(),
        clip_x0: true,
        threads: 2,
        variance,
    };
    let model = Sampled::Oracle {
        oracle: &oracle,
        shape: [c, h, w],
        device,
    };
    {
        let mut cb = |info: StepInfo<B>| {
            if info.at.tau <= 0.2 {
                rec.observe(info)
            }
        };
        model
            .generate(&labels, Guidance::none(), &sample, Some(&mut cb))
            .unwrap();
    }
    rec.finish().unwrap().late
}

#[test]
fn exact_model_and_sampler_have_no_excess_shift_and_few_steps_do() {
    let data = GmmDataset::new(GmmConfig {
        size: 8,
        classes: 3,
        ..GmmConfig::default()
    })
    .unwrap();
    let exact = late_shift(&data, 1000, FixedVariance::Small);
    let (e, se) = (exact.excess_delta.unwrap(), exact.excess_delta_se.unwrap());
    assert!(se > 0.0 && se < 0.002, "standard error {se}");
    assert!(e.abs() <= 3.0 * se, "1000 steps: excess δ {e} ± {se}");
    let few = late_shift(&data, 10, FixedVariance::Large);
    let (f, fse) = (few.excess_delta.unwrap(), few.excess_delta_se.unwrap());
    assert!(f > 5.0 * fse && f > 0.005, "10 steps: excess δ {f} ± {fse}");
}
