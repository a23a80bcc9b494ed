use super::*;
use crate::gmm::tests::mixture;
use crate::test_rng::Rng;

/// Central differences of `f` at `x`, step `h`.
fn grad_fd(f: impl Fn(&[f64]) -> f64, x: &[f64], h: f64) -> Vec<f64> {
    (0..x.len())
        .map(|i| {
            let (mut p, mut m) = (x.to_vec(), x.to_vec());
            p[i] += h;
            m[i] -= h;
            (f(&p) - f(&m)) / (2.0 * h)
        })
        .collect()
}

fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    let scale = b.iter().map(|v| v.abs()).fold(1.0, f64::max);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * scale, "{what}[{i}]: {x} vs {y}");
    }
}

/// The single-component mixture of component `k` (weight 1).
fn component(gm: &GaussianMixture, k: usize) -> GaussianMixture {
    let (mean, ut) = (gm.mean(k).unwrap().to_vec(), gm.factor(k).unwrap().to_vec());
    GaussianMixture::new(gm.dim(), vec![1.0], vec![mean], gm.s(), vec![ut]).unwrap()
}

const LEVELS: [(f64, f64); 5] = [
    (0.99, 0.14),
    (0.9, 0.43),
    (0.7, 0.71),
    (0.4, 0.92),
    (0.1, 1.0),
];

#[test]
fn score_is_the_gradient_of_the_log_density() {
    let mut rng = Rng(11);
    let gm = mixture(&mut rng, 6, &[2, 0, 1], 1.2);
    let oracle = ScoreOracle::new(gm.clone(), &LEVELS, None).unwrap();
    for &(a, s) in &LEVELS {
        let x = rng.normals(6, 1.0);
        let fd = grad_fd(|v| gm.log_density(v, a, s).unwrap(), &x, 1e-5);
        assert_close(&oracle.score(&x, a, s, None).unwrap(), &fd, 1e-6, "score");
        for k in 0..3 {
            let ck = component(&gm, k);
            let fd = grad_fd(|v| ck.log_density(v, a, s).unwrap(), &x, 1e-5);
            let sk = oracle.score(&x, a, s, Some(k)).unwrap();
            assert_close(&sk, &fd, 1e-6, "class score");
        }
    }
}

#[test]
fn dropped_branch_is_the_posterior_average_over_levels() {
    let mut rng = Rng(12);
    let gm = mixture(&mut rng, 5, &[1, 2], 1.0);
    let prior = [0.0, -0.5, 0.3, f64::NEG_INFINITY, 0.1];
    let oracle = ScoreOracle::new(gm.clone(), &LEVELS, Some(&prior)).unwrap();
    let x = rng.normals(5, 1.0);
    for class in [None, Some(1)] {
        let post = oracle.level_posterior(&x, class).unwrap();
        assert!((post.iter().sum::<f64>() - 1.0).abs() < 1e-12 && post[3] == 0.0);
        // Direct: the posterior from the grid likelihoods of the (class) mixture.
        let which = class.map_or(gm.clone(), |k| component(&gm, k));
        let direct = which
            .posterior_over_grid(&x, &LEVELS, Some(&prior))
            .unwrap();
        assert_close(&post, &direct, 1e-12, "level posterior");
        // ε-form: Σ_j p_j (−σ_j s_j), against the naive sum.
        let eps = oracle.dropped(&x, class, |j| (0.0, -LEVELS[j].1)).unwrap();
        let mut naive = vec![0.0; 5];
        for (j, &(a, s)) in LEVELS.iter().enumerate() {
            let sj = oracle.score(&x, a, s, class).unwrap();
            naive
                .iter_mut()
                .zip(&sj)
                .for_each(|(n, v)| *n -= post[j] * s * v);
        }
        assert_close(&eps, &naive, 1e-12, "dropped ε");
        // An x term passes through: Σ_j p_j (2 x) = 2 x.
        let two_x = oracle.dropped(&x, class, |_| (2.0, 0.0)).unwrap();
        assert_close(
            &two_x,
            &x.iter().map(|v| 2.0 * v).collect::<Vec<_>>(),
            1e-12,
            "x",
        );
    }
}

#[test]
fn classifier_signal_is_the_gradient_of_the_log_level_posterior() {
    let mut rng = Rng(13);
    let gm = mixture(&mut rng, 4, &[1, 1, 0], 1.0);
    let oracle = ScoreOracle::new(gm.clone(), &LEVELS, None).unwrap();
    let x = rng.normals(4, 0.8);
    let (a, s) = LEVELS[2];
    let log_post = |v: &[f64]| {
        let ll = gm.log_likelihood_grid(v, &LEVELS).unwrap();
        gm.log_density(v, a, s).unwrap() - log_sum_exp(&ll)
    };
    let fd = grad_fd(log_post, &x, 1e-5);
    let g = oracle.log_posterior_grad(&x, a, s, None).unwrap();
    assert_close(&g, &fd, 1e-6, "∇ log p(τ|x)");
}

/// Monte Carlo in one dimension: bin draws of `x = α x0 + σ ε` around a few points and average
/// ε; Tweedie's ε* at fixed τ and the noise-dropped ε_∅ over uniform levels must match the bin
/// averages within their standard errors.
#[test]
fn exact_predictions_match_monte_carlo_bin_averages() {
    let means = vec![vec![-1.0], vec![0.8]];
    let gm = GaussianMixture::new(1, vec![0.3, 0.7], means, 0.3, vec![vec![], vec![0.4]]).unwrap();
    let levels: Vec<(f64, f64)> = (0..8)
        .map(|j| {
            let t = (j as f64 + 0.5) / 8.0;
            (1.0 - t, t)
        })
        .collect();
    let oracle = ScoreOracle::new(gm.clone(), &levels, None).unwrap();
    let centres = [-0.9, -0.3, 0.2, 0.7];
    let half = 0.01;
    let mut rng = Rng(14);
    let n = 400_000;
    // (sum ε, sum ε², count) per centre, for the fixed level 3 and for uniform levels.
    let mut fixed = [(0.0, 0.0, 0usize); 4];
    let mut mixed = [(0.0, 0.0, 0usize); 4];
    let mut x0 = [0.0];
    for _ in 0..n {
        gm.sample(rng.uniform(), &[rng.normal(), rng.normal()], &mut x0)
            .unwrap();
        let eps = rng.normal();
        let j = (rng.uniform() * 8.0) as usize;
        for (level, acc) in [(3, &mut fixed), (j, &mut mixed)] {
            let (a, s) = levels[level];
            let x = a * x0[0] + s * eps;
            if let Some(b) = centres.iter().position(|c| (x - c).abs() < half) {
                acc[b].0 += eps;
                acc[b].1 += eps * eps;
                acc[b].2 += 1;
            }
        }
    }
    let (a3, s3) = levels[3];
    for (b, &c) in centres.iter().enumerate() {
        let exact_fixed = -s3 * oracle.score(&[c], a3, s3, None).unwrap()[0];
        let exact_mixed = oracle.dropped(&[c], None, |j| (0.0, -levels[j].1)).unwrap()[0];
        for ((sum, sq, m), exact, what) in [
            (fixed[b], exact_fixed, "ε*"),
            (mixed[b], exact_mixed, "ε_∅"),
        ] {
            let mean = sum / m as f64;
            let se = ((sq / m as f64 - mean * mean) / m as f64).sqrt();
            assert!(m > 500, "{what} at {c}: only {m} draws in the bin");
            assert!(
                (mean - exact).abs() < 4.0 * se + 0.01,
                "{what} at x = {c}: Monte Carlo {mean} ± {se}, exact {exact}"
            );
        }
    }
}

#[test]
fn convolved_mixture_is_the_noised_data() {
    let mut rng = Rng(15);
    let gm = mixture(&mut rng, 5, &[2, 1], 1.0);
    let wide = gm.convolved(0.3).unwrap();
    let x = rng.normals(5, 1.0);
    let (a, b) = (
        wide.log_density(&x, 1.0, 0.0).unwrap(),
        gm.log_density(&x, 1.0, 0.3).unwrap(),
    );
    assert!((a - b).abs() < 1e-10, "{a} vs {b}");
    assert!(gm.convolved(-1.0).is_err() && gm.convolved(f64::NAN).is_err());
}

#[test]
fn bad_input_is_an_error() {
    let mut rng = Rng(16);
    let gm = mixture(&mut rng, 3, &[1, 0], 1.0);
    assert!(ScoreOracle::new(gm.clone(), &[], None).is_err());
    assert!(ScoreOracle::new(gm.clone(), &LEVELS, Some(&[0.0])).is_err());
    assert!(ScoreOracle::new(gm.clone(), &[(0.0, 0.0)], None).is_err());
    let oracle = ScoreOracle::new(gm, &LEVELS, None).unwrap();
    assert!(oracle.score(&[0.0; 3], 0.5, 0.5, Some(2)).is_err());
    assert!(oracle.score(&[0.0; 2], 0.5, 0.5, None).is_err());
    assert!(oracle
        .dropped(&[f64::NAN, 0.0, 0.0], None, |_| (0.0, 1.0))
        .is_err());
    assert!(oracle
        .dropped(&[0.0; 3], None, |_| (f64::NAN, 1.0))
        .is_err());
}
