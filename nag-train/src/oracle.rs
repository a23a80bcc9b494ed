//! `--model oracle`: the exact model of the built-in `gmm` data as a [`DiffusionModel`], with
//! guidance (CFG, NAG in its ε and score forms) and controlled errors.
//!
//! What each branch returns, at a state `x` of nominal level τ (`α, σ`; `α', σ'` for velocity):
//! - noise-conditioned branches `(t, c)`, `(t, ∅)`: Tweedie's `ε̂ = −σ·s(x|τ[, c])`
//!   ([`ScoreOracle::score`] of the model's mixture), with the [`OracleError`] applied to ε̂, then
//!   converted to the model's prediction: ε for DDPM (DiT) models, the velocity
//!   `v = α'·x̂0 + σ'·ε̂`, `x̂0 = (x − σ ε̂)/α` for the SiT paths (`x̂0 = E[x0]` where α = 0).
//! - noise-dropped branches `(∅t, c)`, `(∅t, ∅)`, [`NagForm::Eps`]: what a network trained with
//!   noise dropout learns, the posterior average of the (erroneous) prediction over its training
//!   levels, `Σ_j p(τ_j | x[, c])·pred(x, τ_j)` ([`ScoreOracle::dropped`]); the levels are the
//!   1000 DDPM timesteps, or 1000 midpoints of `[0, 1]` for the SiT paths, uniform prior.
//! - the same branches, [`NagForm::Score`]: classifier NAG with the exact classifier,
//!   `s_guided = s(x|τ) + w·∇ₓ log p(τ|x)`; written as a dropped branch
//!   `pred(∅t) = pred(t) − b_τ·∇ₓ log p(τ|x)` (`b_τ` the score's coefficient in the prediction:
//!   `−σ` for ε) so that the guidance plan's `(w+1)·pred(t) − w·pred(∅t)` is exactly the
//!   classifier form. The classifier is the true data's ([`Oracle::truth`]), also when the model
//!   has an error. Where α = 0 a velocity carries no score term and this form adds nothing.
//!
//! The two forms differ: the ε-form averages `ε_j = −σ_j·s_j` over levels, the score form
//! averages `s_j` and rescales by the current `σ`.

use burn::tensor::{backend::Backend, Tensor, TensorData};
use nag_core::ddpm::DdpmSchedule;
use nag_core::gmm::GaussianMixture;
use nag_core::guidance::{Branch, Guidance};
use nag_core::oracle::ScoreOracle;
use nag_core::prediction::Prediction;
use nag_core::schedule::{NoiseSchedule, Schedule};
use serde::Serialize;

use crate::data::{normal, stream_rng, GmmDataset};
use crate::metrics::par_map;
use crate::sampling::{DiffusionModel, ModelOutput, TimePoint};

const DOMAIN_BIAS: u64 = 0x4F52_4249; // "ORBI"

/// Number of training levels of the noise-dropped branch on the SiT paths.
pub const CONTINUOUS_LEVELS: usize = 1000;

/// Errors of the oracle's configuration.
#[derive(Debug, thiserror::Error)]
pub enum OracleConfigError {
    /// An option is malformed or out of range.
    #[error("{0}")]
    Config(String),
    /// nag-core rejected the mixture or a level.
    #[error(transparent)]
    Core(#[from] nag_core::Error),
    /// The data could not be opened.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
}

/// The options that pick the exact model (`--model oracle`): its data and how it errs
/// ([`OracleError::parse`], [`NagForm`]).
#[derive(Debug, Clone, PartialEq, Serialize, clap::Args)]
pub struct OracleSpec {
    /// Oracle: the data (gmm, gmm8, gmm32, …; seed 0).
    #[arg(long, default_value = "gmm")]
    pub data: String,
    /// Oracle: its training objective, which fixes the schedule and what it predicts: ddpm (ε,
    /// DiT's schedule) or linear / gvp / vp (velocity, SiT's paths).
    #[arg(long, default_value = "ddpm")]
    pub objective: String,
    /// Oracle: a controlled error: none, eps-scale:K, eps-scale-cond:K, bias:B, smooth:S.
    #[arg(long, default_value = "none")]
    pub oracle_error: String,
    /// Oracle: the noise-dropped branch, eps (a noise-dropout network's ε average) or score
    /// (classifier NAG with the exact ∇log p(τ|x)).
    #[arg(long, default_value = "eps")]
    pub nag_form: String,
}

/// `--model oracle` and its options: the exact model chosen instead of a network.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct OracleChoice {
    /// `oracle`: the exact model of the built-in gmm data instead of a network (see
    /// `--oracle-error`, `--nag-form`, `--objective`).
    #[arg(long)]
    pub model: Option<String>,
    /// Its data and errors.
    #[command(flatten)]
    pub spec: OracleSpec,
}

impl OracleChoice {
    /// The spec when `--model oracle` was given; `None` without `--model`; an error naming
    /// the alternatives (`others`, e.g. "--run") for any other model name.
    pub fn chosen(&self, others: &str) -> Result<Option<&OracleSpec>, OracleConfigError> {
        match self.model.as_deref() {
            None => Ok(None),
            Some("oracle") => Ok(Some(&self.spec)),
            Some(other) => Err(OracleConfigError::Config(format!(
                "--model '{other}': the only model besides {others} is `oracle`"
            ))),
        }
    }
}

impl OracleSpec {
    /// `oracle (DATA, error ERROR, NAG form FORM)`: how reports name it.
    pub fn describe(&self) -> String {
        let (data, error, form) = (&self.data, &self.oracle_error, &self.nag_form);
        format!("oracle ({data}, error {error}, NAG form {form})")
    }

    /// The oracle and its data.
    pub fn build(&self, seed: u64) -> Result<(Oracle, GmmDataset), OracleConfigError> {
        let Some(gmm) = crate::data::open_gmm(&self.data, &crate::data::DataOptions::default())?
        else {
            return Err(OracleConfigError::Config(format!(
                "--model oracle needs built-in gmm data (--data gmm, gmm8, gmm32, …), not '{}'",
                self.data
            )));
        };
        let oracle = Oracle::from_specs(
            &gmm,
            &self.objective,
            &self.oracle_error,
            &self.nag_form,
            seed,
        )?;
        Ok((oracle, gmm))
    }

    /// How reports name it: `oracle (gmm, ddpm, error none, NAG form eps)`.
    pub fn label(&self) -> String {
        format!(
            "oracle ({}, {}, error {}, NAG form {})",
            self.data, self.objective, self.oracle_error, self.nag_form
        )
    }
}

/// A controlled error of the oracle model (`--oracle-error`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "kebab-case")]
pub enum OracleError {
    /// The exact model.
    None,
    /// `eps-scale:K`: ε̂·(1 − K) in every branch (an under-denoising network; the dropped
    /// branch is the posterior average of the scaled ε).
    EpsScale(f64),
    /// `eps-scale-cond:K`: ε̂·(1 − K) in the noise-conditioned branches only; the noise-dropped
    /// branches are exact.
    EpsScaleCond(f64),
    /// `bias:B`: ε̂ + B·√d·u in every branch, `u` a fixed unit direction (from the seed).
    Bias(f64),
    /// `smooth:S`: the exact model of the data convolved with `N(0, S²I)` (an underfit network
    /// that leaves extra noise).
    Smooth(f64),
}

impl OracleError {
    /// Parses `none`, `eps-scale:K`, `eps-scale-cond:K`, `bias:B` or `smooth:S`.
    pub fn parse(spec: &str) -> Result<Self, OracleConfigError> {
        let bad = |why: &str| {
            OracleConfigError::Config(format!(
                "--oracle-error '{spec}': {why} (expected none, eps-scale:K, eps-scale-cond:K, bias:B or smooth:S)"
            ))
        };
        if spec == "none" {
            return Ok(Self::None);
        }
        let (kind, value) = spec.split_once(':').ok_or_else(|| bad("no ':VALUE'"))?;
        let v: f64 = value
            .parse()
            .map_err(|_| bad("the value is not a number"))?;
        if !v.is_finite() {
            return Err(bad("the value must be finite"));
        }
        match kind {
            "eps-scale" | "eps-scale-cond" if v >= 1.0 => Err(bad("K must be < 1")),
            "bias" | "smooth" if v < 0.0 => Err(bad("the value must be ≥ 0")),
            "eps-scale" => Ok(Self::EpsScale(v)),
            "eps-scale-cond" => Ok(Self::EpsScaleCond(v)),
            "bias" => Ok(Self::Bias(v)),
            "smooth" => Ok(Self::Smooth(v)),
            _ => Err(bad("unknown kind")),
        }
    }

    /// The spec string (`eps-scale:0.1`).
    pub fn label(&self) -> String {
        match self {
            Self::None => "none".into(),
            Self::EpsScale(v) => format!("eps-scale:{v}"),
            Self::EpsScaleCond(v) => format!("eps-scale-cond:{v}"),
            Self::Bias(v) => format!("bias:{v}"),
            Self::Smooth(v) => format!("smooth:{v}"),
        }
    }

    /// The factor on ε̂ in a branch (noise-dropped or not).
    fn eps_factor(&self, dropped: bool) -> f64 {
        match *self {
            Self::EpsScale(k) => 1.0 - k,
            Self::EpsScaleCond(k) if !dropped => 1.0 - k,
            _ => 1.0,
        }
    }
}

/// How the oracle's noise-dropped branch is formed (`--nag-form`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NagForm {
    /// The ε-space (prediction-space) average a noise-dropout network learns.
    #[default]
    Eps,
    /// Classifier NAG with the exact `∇ₓ log p(τ|x)` (score space).
    Score,
    /// Classifier NAG with a trained estimator's `∇ₓ log g_φ(τ|x)`
    /// ([`crate::classifier_nag::ClassifierNag`]); not a branch of the oracle.
    Estimator,
}

impl NagForm {
    /// Parses `eps` or `score`.
    pub fn parse(s: &str) -> Result<Self, OracleConfigError> {
        match s {
            "eps" => Ok(Self::Eps),
            "score" => Ok(Self::Score),
            "estimator" => Ok(Self::Estimator),
            _ => Err(OracleConfigError::Config(format!(
                "--nag-form '{s}': expected eps, score or estimator"
            ))),
        }
    }
}

/// The exact model of a Gaussian mixture under one schedule, with an error and a NAG form.
/// Immutable and shared by the threads of one evaluation.
#[derive(Debug, Clone)]
pub struct Oracle {
    /// What the model believes the data is (the data itself, or convolved for `smooth`).
    model: ScoreOracle,
    /// The true data (the classifier of the score form).
    truth: ScoreOracle,
    schedule: Schedule,
    prediction: Prediction,
    /// Training levels `(α_j, σ_j, α'_j, σ'_j)`.
    levels: Vec<[f64; 4]>,
    error: OracleError,
    form: NagForm,
    /// `B·√d·u` for `bias:B`.
    bias: Option<Vec<f64>>,
}

impl Oracle {
    /// The oracle of `mixture` on `schedule`: an ε-model on the 1000 DDPM levels when the
    /// schedule is DDPM, a velocity model on 1000 midpoint levels otherwise. `seed` fixes the
    /// bias direction.
    pub fn new(
        mixture: &GaussianMixture,
        schedule: Schedule,
        error: OracleError,
        form: NagForm,
        seed: u64,
    ) -> Result<Self, OracleConfigError> {
        if form == NagForm::Estimator {
            return Err(OracleConfigError::Config(
                "--nag-form estimator is classifier NAG with a trained g_φ: here, only `experiment oracle --estimator DIR` runs it".into(),
            ));
        }
        let (prediction, taus): (Prediction, Vec<f64>) = match &schedule {
            Schedule::Ddpm(_) => {
                let table = DdpmSchedule::dit();
                (
                    Prediction::Eps,
                    (0..table.len()).map(|k| table.tau(k)).collect(),
                )
            }
            _ => (
                Prediction::Velocity,
                (0..CONTINUOUS_LEVELS)
                    .map(|j| (j as f64 + 0.5) / CONTINUOUS_LEVELS as f64)
                    .collect(),
            ),
        };
        let levels: Vec<[f64; 4]> = taus
            .iter()
            .map(|&t| {
                let c = schedule.coefficients(t);
                [c.alpha, c.sigma, c.d_alpha, c.d_sigma]
            })
            .collect();
        let pairs: Vec<(f64, f64)> = levels.iter().map(|l| (l[0], l[1])).collect();
        let believed = match error {
            OracleError::Smooth(s) => mixture.convolved(s)?,
            _ => mixture.clone(),
        };
        let bias = match error {
            OracleError::Bias(b) => {
                let mut rng = stream_rng(seed, DOMAIN_BIAS, 0);
                let u: Vec<f64> = (0..mixture.dim()).map(|_| normal(&mut rng)).collect();
                let norm = u.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-300);
                let scale = b * (mixture.dim() as f64).sqrt() / norm;
                Some(u.iter().map(|v| v * scale).collect())
            }
            _ => None,
        };
        Ok(Self {
            model: ScoreOracle::new(believed, &pairs, None)?,
            truth: ScoreOracle::new(mixture.clone(), &pairs, None)?,
            schedule,
            prediction,
            levels,
            error,
            form,
            bias,
        })
    }

    /// The oracle of `data` for a training objective (`ddpm`: DiT's schedule and ε; `linear`,
    /// `gvp`, `vp`: SiT's paths and velocity), from command-line specs.
    pub fn from_specs(
        data: &GmmDataset,
        objective: &str,
        error: &str,
        form: &str,
        seed: u64,
    ) -> Result<Self, OracleConfigError> {
        let schedule = match objective {
            "ddpm" => Schedule::from_name("ddpm-linear")?,
            "linear" | "gvp" | "vp" => Schedule::from_name(objective)?,
            _ => {
                return Err(OracleConfigError::Config(format!(
                    "--objective '{objective}' for the oracle: expected ddpm, linear, gvp or vp"
                )))
            }
        };
        let (error, form) = (OracleError::parse(error)?, NagForm::parse(form)?);
        Self::new(data.mixture(), schedule, error, form, seed)
    }

    /// What the branches return: ε (DDPM) or the velocity `dx/dτ` (SiT paths).
    pub fn prediction(&self) -> Prediction {
        self.prediction
    }

    /// The true data's exact quantities (the classifier of the score form).
    pub fn truth(&self) -> &ScoreOracle {
        &self.truth
    }

    /// Number of classes (mixture components).
    pub fn num_classes(&self) -> usize {
        self.truth.mixture().num_components()
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// `(x0, ε)` weights of the prediction and, for velocity, the conversion
    /// `pred = a·x + e·ε̂` through `x̂0 = (x − σ ε̂)/α`: returns `(a, e)`; `None` where α = 0.
    fn eps_to_pred(
        &self,
        alpha: f64,
        sigma: f64,
        d_alpha: f64,
        d_sigma: f64,
    ) -> Option<(f64, f64)> {
        match self.prediction {
            Prediction::Velocity => {
                (alpha > 0.0).then(|| (d_alpha / alpha, d_sigma - d_alpha * sigma / alpha))
            }
            _ => Some((0.0, 1.0)),
        }
    }

    /// The model's noise-conditioned prediction at `x` (f64, one sample) and level τ.
    fn conditioned(&self, x: &[f64], tau: f64, class: Option<usize>) -> Vec<f64> {
        let c = self.schedule.coefficients(tau);
        let s = self
            .model
            .score(x, c.alpha, c.sigma, class)
            .expect("state and class were checked");
        let f = self.error.eps_factor(false);
        let mut eps: Vec<f64> = s.iter().map(|v| -f * c.sigma * v).collect();
        if let Some(b) = &self.bias {
            eps.iter_mut().zip(b).for_each(|(e, bi)| *e += bi);
        }
        match self.eps_to_pred(c.alpha, c.sigma, c.d_alpha, c.d_sigma) {
            Some((a, e)) => x.iter().zip(&eps).map(|(xi, ei)| a * xi + e * ei).collect(),
            None => {
                // α = 0 (velocity only): x̂0 = E[x0], v = α'·E[x0] + σ'·ε̂.
                let m = self.model.prior_mean(class).expect("class was checked");
                m.iter()
                    .zip(&eps)
                    .map(|(mi, ei)| c.d_alpha * mi + c.d_sigma * ei)
                    .collect()
            }
        }
    }

    /// The noise-dropped prediction at `x` (the form's; see the module docs).
    fn dropped(&self, x: &[f64], tau: f64, class: Option<usize>) -> Vec<f64> {
        match self.form {
            NagForm::Eps | NagForm::Estimator => {
                let f = self.error.eps_factor(true);
                // pred_j = a_j x + e_j ε̂_j, ε̂_j = −f σ_j s_j (+ bias).
                let coef = |j: usize| {
                    let [a, s, da, ds] = self.levels[j];
                    self.eps_to_pred(a, s, da, ds)
                        .expect("training levels have α > 0")
                };
                let mut out = self
                    .model
                    .dropped(x, class, |j| {
                        let (a, e) = coef(j);
                        (a, -e * f * self.levels[j][1])
                    })
                    .expect("state and class were checked");
                if let Some(b) = &self.bias {
                    let post = self
                        .model
                        .level_posterior(x, class)
                        .expect("state and class were checked");
                    let eb: f64 = post.iter().enumerate().map(|(j, p)| p * coef(j).1).sum();
                    out.iter_mut().zip(b).for_each(|(o, bi)| *o += eb * bi);
                }
                out
            }
            NagForm::Score => {
                let mut out = self.conditioned(x, tau, class);
                let c = self.schedule.coefficients(tau);
                let Some((_, e)) = self.eps_to_pred(c.alpha, c.sigma, c.d_alpha, c.d_sigma) else {
                    return out;
                };
                // ε = −σ s, so the score's coefficient in the prediction is −σ·e.
                let b_tau = -c.sigma * e;
                let g = self
                    .truth
                    .log_posterior_grad(x, c.alpha, c.sigma, class)
                    .expect("state and class were checked");
                out.iter_mut().zip(&g).for_each(|(o, gi)| *o -= b_tau * gi);
                out
            }
        }
    }

    /// One branch's prediction at `x` (one sample, f64), level τ, for `label`.
    pub fn branch(&self, x: &[f64], tau: f64, branch: Branch, label: usize) -> Vec<f64> {
        let class = (!branch.null_class).then_some(label);
        if branch.null_t {
            self.dropped(x, tau, class)
        } else {
            self.conditioned(x, tau, class)
        }
    }
}

/// The oracle with fixed labels and a guidance setting, as samplers see a model.
pub struct OracleModel<'a> {
    oracle: &'a Oracle,
    labels: Vec<usize>,
    guidance: Guidance,
    /// Model evaluations so far (one per `predict`).
    pub calls: usize,
    /// Branch evaluations so far.
    pub branch_evals: usize,
}

impl<'a> OracleModel<'a> {
    /// Wraps `oracle` for `labels` (classes `0..K`) and `guidance`; checks both up front.
    pub fn new(
        oracle: &'a Oracle,
        labels: &[i64],
        guidance: Guidance,
    ) -> Result<Self, OracleConfigError> {
        guidance.validate()?;
        let k = oracle.num_classes() as i64;
        let labels = labels
            .iter()
            .map(|&y| {
                usize::try_from(y)
                    .ok()
                    .filter(|&y| (y as i64) < k)
                    .ok_or_else(|| {
                        OracleConfigError::Config(format!(
                            "label {y} is outside 0..{k} (the gmm data's classes)"
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            oracle,
            labels,
            guidance,
            calls: 0,
            branch_evals: 0,
        })
    }
}

impl<B: Backend> DiffusionModel<B> for OracleModel<'_> {
    fn prediction(&self) -> Prediction {
        self.oracle.prediction
    }

    fn predict(&mut self, x: Tensor<B, 4>, at: TimePoint) -> ModelOutput<B> {
        let dims = x.dims();
        let [n, c, h, w] = dims;
        let d = c * h * w;
        assert_eq!(
            d,
            self.oracle.truth.mixture().dim(),
            "the oracle's state size is the gmm data's"
        );
        let plan = self.guidance.plan(at.tau);
        self.calls += 1;
        self.branch_evals += plan.branches.len();
        let values: Vec<f32> = x
            .to_data()
            .convert::<f32>()
            .to_vec()
            .expect("a float tensor reads as f32");
        let guided = plan.guided_channels.map_or(d, |k| k.min(c) * h * w);
        let rows = par_map(n, |i| {
            let xi: Vec<f64> = values[i * d..(i + 1) * d]
                .iter()
                .map(|&v| v as f64)
                .collect();
            let mut out = vec![0.0f64; d];
            for (bi, (&branch, &k)) in plan.branches.iter().zip(&plan.coefs).enumerate() {
                let p = self.oracle.branch(&xi, at.tau, branch, self.labels[i]);
                if bi == 0 {
                    // (t, c) first: the unguided channels come from it.
                    out[guided..].copy_from_slice(&p[guided..]);
                }
                out[..guided]
                    .iter_mut()
                    .zip(&p[..guided])
                    .for_each(|(o, v)| *o += k * v);
            }
            out.into_iter().map(|v| v as f32).collect::<Vec<f32>>()
        });
        let data = TensorData::new(rows.concat(), dims);
        ModelOutput::new(Tensor::from_data(data, &x.device()))
    }
}

#[cfg(test)]
mod tests;
