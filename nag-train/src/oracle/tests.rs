use super::*;
use crate::data::{GmmConfig, GmmDataset};
use burn_ndarray::NdArray;
use nag_core::prediction::conversion;

type B = NdArray<f32>;

fn gmm() -> GmmDataset {
    GmmDataset::new(GmmConfig {
        size: 8,
        classes: 3,
        ..GmmConfig::default()
    })
    .unwrap()
}

#[test]
fn error_specs_parse_and_bad_ones_are_named() {
    assert_eq!(OracleError::parse("none").unwrap(), OracleError::None);
    assert_eq!(
        OracleError::parse("eps-scale:0.1").unwrap(),
        OracleError::EpsScale(0.1)
    );
    assert_eq!(
        OracleError::parse("smooth:0.05").unwrap().label(),
        "smooth:0.05"
    );
    for bad in [
        "eps-scale",
        "eps-scale:1",
        "bias:-1",
        "smooth:x",
        "blur:1",
        "bias:inf",
    ] {
        let e = OracleError::parse(bad).unwrap_err().to_string();
        assert!(e.contains(bad) && e.contains("expected"), "{bad}: {e}");
    }
    assert!(NagForm::parse("eps").is_ok() && NagForm::parse("grad").is_err());
}

/// ε* on the DDPM levels is −σ·score; eps-scale-cond leaves the dropped branch exact and scales
/// the conditioned one; the score form's guided combination is `s + w·∇log p(τ|x)`.
#[test]
fn branches_follow_their_definitions() {
    let data = gmm();
    let mix = data.mixture();
    let ddpm = Schedule::from_name("ddpm-linear").unwrap();
    let exact = Oracle::new(mix, ddpm.clone(), OracleError::None, NagForm::Eps, 0).unwrap();
    let cond_err = Oracle::new(
        mix,
        ddpm.clone(),
        OracleError::EpsScaleCond(0.2),
        NagForm::Eps,
        0,
    )
    .unwrap();
    let score = Oracle::new(mix, ddpm.clone(), OracleError::None, NagForm::Score, 0).unwrap();
    let (x, _) = data.sample_f64(4).unwrap();
    let tau = 0.3;
    let (a, s) = (ddpm.alpha(tau), ddpm.sigma(tau));
    let x: Vec<f64> = x.iter().map(|v| a * v + s * 0.3).collect();
    let eps = exact.branch(&x, tau, Branch::COND, 1);
    let sc = exact.truth().score(&x, a, s, Some(1)).unwrap();
    for (e, v) in eps.iter().zip(&sc) {
        assert!((e + s * v).abs() < 1e-12);
    }
    let scaled = cond_err.branch(&x, tau, Branch::COND, 1);
    for (e, v) in scaled.iter().zip(&eps) {
        assert!((e - 0.8 * v).abs() < 1e-12);
    }
    assert_eq!(
        cond_err.branch(&x, tau, Branch::NULL_T, 1),
        exact.branch(&x, tau, Branch::NULL_T, 1)
    );
    let g = exact.truth().log_posterior_grad(&x, a, s, Some(1)).unwrap();
    let dropped = score.branch(&x, tau, Branch::NULL_T, 1);
    let w = 2.0;
    for i in 0..x.len() {
        let guided_eps = (w + 1.0) * eps[i] - w * dropped[i];
        let guided_score = -guided_eps / s;
        assert!((guided_score - (sc[i] + w * g[i])).abs() < 1e-9 * (1.0 + sc[i].abs()));
    }
    // The ε-form dropped branch differs from the score form's.
    let eps_form = exact.branch(&x, tau, Branch::NULL_T, 1);
    assert!(eps_form
        .iter()
        .zip(&dropped)
        .any(|(a, b)| (a - b).abs() > 1e-6));
}

/// On a SiT path the oracle is a velocity model: its conditioned branch is the exact score
/// converted to a velocity; at α = 0 it is `α'·E[x0] + σ'·x/σ`.
#[test]
fn velocity_oracle_is_the_converted_score() {
    let data = gmm();
    let linear = Schedule::from_name("linear").unwrap();
    let o = Oracle::new(
        data.mixture(),
        linear.clone(),
        OracleError::None,
        NagForm::Eps,
        0,
    )
    .unwrap();
    assert_eq!(o.prediction(), Prediction::Velocity);
    let (x0, _) = data.sample_f64(1).unwrap();
    let tau = 0.6;
    let c = linear.coefficients(tau);
    let x: Vec<f64> = x0.iter().map(|v| c.alpha * v + c.sigma * 0.5).collect();
    let v = o.branch(&x, tau, Branch::NULL_CLASS, 0);
    let s = o.truth().score(&x, c.alpha, c.sigma, None).unwrap();
    let (ca, cb) = conversion(Prediction::Score, Prediction::Velocity, &c).unwrap();
    for i in 0..x.len() {
        assert!((v[i] - (ca * x[i] + cb * s[i])).abs() < 1e-9);
    }
    let v1 = o.branch(&x, 1.0, Branch::NULL_CLASS, 0);
    let m = o.truth().prior_mean(None).unwrap();
    for i in 0..x.len() {
        assert!((v1[i] - (-m[i] + x[i])).abs() < 1e-9);
    }
}

/// The wrapper combines the plan's branches per sample; with w = 0 NAG is exactly no guidance.
#[test]
fn guided_model_evaluates_the_plan() {
    let data = gmm();
    let ddpm = Schedule::from_name("ddpm-linear").unwrap();
    let o = Oracle::new(
        data.mixture(),
        ddpm,
        OracleError::Bias(0.05),
        NagForm::Eps,
        3,
    )
    .unwrap();
    let labels = [0i64, 2];
    let x: Tensor<B, 4> = Tensor::random(
        [2, 3, 8, 8],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &Default::default(),
    );
    let at = TimePoint::continuous(0.4);
    let mut none = OracleModel::new(&o, &labels, Guidance::none()).unwrap();
    let mut zero = OracleModel::new(&o, &labels, Guidance::nag(0.0)).unwrap();
    let mut nag = OracleModel::new(&o, &labels, Guidance::cfg_nag(1.5, 2.0)).unwrap();
    let a = DiffusionModel::<B>::predict(&mut none, x.clone(), at).pred;
    let b = DiffusionModel::<B>::predict(&mut zero, x.clone(), at).pred;
    assert_eq!(a.to_data(), b.to_data());
    let g = DiffusionModel::<B>::predict(&mut nag, x.clone(), at).pred;
    assert_eq!(nag.branch_evals, 3);
    let xs: Vec<f32> = x.to_data().to_vec().unwrap();
    let gs: Vec<f32> = g.to_data().to_vec().unwrap();
    let x1: Vec<f64> = xs[192..].iter().map(|&v| v as f64).collect();
    let (c, u, n) = (
        o.branch(&x1, 0.4, Branch::COND, 2),
        o.branch(&x1, 0.4, Branch::NULL_CLASS, 2),
        o.branch(&x1, 0.4, Branch::NULL_T, 2),
    );
    for i in 0..192 {
        let want = u[i] + 1.5 * (c[i] - u[i]) + 2.0 * (c[i] - n[i]);
        assert!((gs[192 + i] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()));
    }
    assert!(OracleModel::new(&o, &[3], Guidance::none()).is_err());
    assert!(OracleModel::new(&o, &[-1], Guidance::none()).is_err());
}
