//! Guidance: CFG, NAG and both, as one linear combination of model branches.
//!
//! A *branch* is one evaluation of the network with some conditions dropped:
//!
//! | branch        | noise condition | class |
//! |---------------|-----------------|-------|
//! | [`Branch::COND`]      | t   | c |
//! | [`Branch::NULL_CLASS`]| t   | ∅ |
//! | [`Branch::NULL_T`]    | ∅t  | c |
//! | [`Branch::NULL_BOTH`] | ∅t  | ∅ |
//!
//! Every guidance rule here is affine in the branch outputs, so a [`Guidance`] reduces, at a
//! given τ, to coefficients `out = Σ_b k_b·out_b` ([`Guidance::plan`]). Branches whose
//! coefficient is zero are not evaluated, so a sampler batches exactly the branches needed. The
//! same coefficients apply to ε (DiT) or velocity (SiT) outputs, since ε, x̂0, v and score are
//! affine in one another for fixed (x, τ) (REFERENCE §1).
//!
//! Rules, with CFG scale `s` (DiT's convention: `s = 1` is no guidance) and NAG weight `w`
//! (`w = 0` is no guidance):
//! - CFG: `out = out(t,∅) + s·(out(t,c) − out(t,∅))`.
//! - NAG (paper eq. for classifier-free NAG): `out = (w+1)·out(t,c) − w·out(∅t,c)`.
//! - CFG+NAG, three branches (this project's default):
//!   `out = out(t,∅) + s·(out(t,c) − out(t,∅)) + w·(out(t,c) − out(∅t,c))`.
//! - CFG+NAG, four branches: NAG inside both class branches, then CFG:
//!   `n_c = (w+1)·out(t,c) − w·out(∅t,c)`, `n_∅ = (w+1)·out(t,∅) − w·out(∅t,∅)`,
//!   `out = n_∅ + s·(n_c − n_∅)`.
//! - Domain Guidance (DoG, Zhong et al. 2025, arXiv 2504.01521; [`Guidance::dog`]): CFG whose
//!   unconditional branch comes from the *pre-trained* (reference) model `pre` a fine-tuned
//!   model `ft` started from: `out = pre(t,∅) + s·(ft(t,c) − pre(t,∅))`; with NAG (three-branch
//!   form, the fine-tuned model's noise-dropped branch)
//!   `out = pre(t,∅) + s·(ft(t,c) − pre(t,∅)) + w·(ft(t,c) − ft(∅t,c))`.
//!   Such a branch is marked [`Branch::reference`]; the sampler runs each model's branches in
//!   one batch.
//!
//! Each weight can be limited to an interval `[τ_lo, τ_hi]` outside which it is off, and the
//! combination can be limited to the first `k` channels (the reference DiT guides only 3 of its
//! ε channels); channels past `k` come from the (t, c) branch, as do DiT's variance channels.

use alloc::format;
use alloc::vec::Vec;
use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which conditions a network evaluation drops, and which model evaluates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Branch {
    /// The noise condition is replaced by the learned null-timestep embedding.
    pub null_t: bool,
    /// The class label is replaced by the null class.
    pub null_class: bool,
    /// Evaluated by the reference (pre-trained) model instead of the guided one (DoG).
    #[serde(default)]
    pub reference: bool,
}

impl Branch {
    /// (t, c): the conditional output.
    pub const COND: Branch = Branch {
        null_t: false,
        null_class: false,
        reference: false,
    };
    /// (t, ∅): class dropped (CFG's unconditional branch).
    pub const NULL_CLASS: Branch = Branch {
        null_t: false,
        null_class: true,
        reference: false,
    };
    /// (∅t, c): noise condition dropped (NAG's branch).
    pub const NULL_T: Branch = Branch {
        null_t: true,
        null_class: false,
        reference: false,
    };
    /// (∅t, ∅): both dropped (four-branch CFG+NAG).
    pub const NULL_BOTH: Branch = Branch {
        null_t: true,
        null_class: true,
        reference: false,
    };
    /// (t, ∅) of the reference (pre-trained) model: DoG's unconditional branch.
    pub const REFERENCE_NULL_CLASS: Branch = Branch {
        null_t: false,
        null_class: true,
        reference: true,
    };

    /// The same conditions, evaluated by the guided model.
    pub const fn on_guided_model(self) -> Branch {
        Branch {
            reference: false,
            ..self
        }
    }
}

/// A closed interval of τ (paper clock) in which a guidance weight is active.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Lower end τ_lo.
    pub lo: f64,
    /// Upper end τ_hi.
    pub hi: f64,
}

impl Interval {
    /// Whether `tau ∈ [lo, hi]`.
    pub fn contains(&self, tau: f64) -> bool {
        tau >= self.lo && tau <= self.hi
    }
}

/// How CFG and NAG combine when both are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CfgNagForm {
    /// Branches (t,c), (t,∅), (∅t,c): `u + s(c − u) + w(c − n)`.
    #[default]
    ThreeBranch,
    /// Branches (t,c), (t,∅), (∅t,c), (∅t,∅): NAG in both class branches, then CFG.
    FourBranch,
}

/// One guidance setting: drives both which branches a model evaluates and how they combine.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Guidance {
    /// CFG scale `s`; 1 is off (DiT convention: `u + s(c − u)`).
    pub cfg_scale: f64,
    /// NAG weight `w`; 0 is off (`(w+1)·c − w·n`).
    pub nag_scale: f64,
    /// τ interval where CFG is on (everywhere when `None`).
    pub cfg_interval: Option<Interval>,
    /// τ interval where NAG is on (everywhere when `None`).
    pub nag_interval: Option<Interval>,
    /// Guide only the first `k` output channels; the rest come from (t, c).
    pub guided_channels: Option<usize>,
    /// The CFG+NAG form.
    pub form: CfgNagForm,
    /// Domain Guidance: CFG's unconditional branch comes from the reference (pre-trained)
    /// model ([`Branch::REFERENCE_NULL_CLASS`]).
    pub dog: bool,
}

impl Default for Guidance {
    fn default() -> Self {
        Self::none()
    }
}

/// The combination at one τ: branch `i` enters with `coefs[i]`. `branches[0]` is always
/// [`Branch::COND`].
#[derive(Debug, Clone, PartialEq)]
pub struct GuidancePlan {
    /// The branches to evaluate, (t, c) first.
    pub branches: Vec<Branch>,
    /// Coefficient of each branch; they sum to 1.
    pub coefs: Vec<f64>,
    /// Channels the combination applies to (`None` = all).
    pub guided_channels: Option<usize>,
}

impl Guidance {
    /// No guidance: the conditional output.
    pub const fn none() -> Self {
        Self {
            cfg_scale: 1.0,
            nag_scale: 0.0,
            cfg_interval: None,
            nag_interval: None,
            guided_channels: None,
            form: CfgNagForm::ThreeBranch,
            dog: false,
        }
    }

    /// Classifier-free guidance with scale `s`.
    pub const fn cfg(s: f64) -> Self {
        let mut g = Self::none();
        g.cfg_scale = s;
        g
    }

    /// Noise awareness guidance with weight `w`.
    pub const fn nag(w: f64) -> Self {
        let mut g = Self::none();
        g.nag_scale = w;
        g
    }

    /// CFG with scale `s` and NAG with weight `w`, three-branch form.
    pub const fn cfg_nag(s: f64, w: f64) -> Self {
        let mut g = Self::none();
        g.cfg_scale = s;
        g.nag_scale = w;
        g
    }

    /// Domain Guidance with scale `s` (and NAG weight `w`, 0 = off): CFG against the
    /// reference model's unconditional output.
    pub const fn dog(s: f64, w: f64) -> Self {
        let mut g = Self::cfg_nag(s, w);
        g.dog = true;
        g
    }

    /// Checks the setting: finite weights, intervals inside [0, 1] with lo ≤ hi, k ≥ 1, DoG
    /// only in the three-branch form.
    pub fn validate(&self) -> Result<()> {
        if self.dog && self.form == CfgNagForm::FourBranch && self.uses_nag() {
            return Err(Error::OutOfRange {
                name: "form",
                value: 4.0,
                expected: "the three-branch form with DoG (the four-branch form would need the \
                           pre-trained model's noise-dropped branch, which it does not have)",
            });
        }
        if !self.cfg_scale.is_finite() {
            return Err(Error::OutOfRange {
                name: "cfg_scale",
                value: self.cfg_scale,
                expected: "a finite number (1 = off)",
            });
        }
        if !self.nag_scale.is_finite() {
            return Err(Error::OutOfRange {
                name: "nag_scale",
                value: self.nag_scale,
                expected: "a finite number (0 = off)",
            });
        }
        for (name, iv) in [
            ("cfg_interval", self.cfg_interval),
            ("nag_interval", self.nag_interval),
        ] {
            if let Some(iv) = iv {
                let ok = iv.lo.is_finite()
                    && iv.hi.is_finite()
                    && (0.0..=1.0).contains(&iv.lo)
                    && (0.0..=1.0).contains(&iv.hi)
                    && iv.lo <= iv.hi;
                if !ok {
                    return Err(Error::OutOfRange {
                        name,
                        value: if iv.lo > iv.hi { iv.lo - iv.hi } else { iv.lo },
                        expected: "0 ≤ lo ≤ hi ≤ 1 (paper clock: 0 = data, 1 = noise)",
                    });
                }
            }
        }
        if self.guided_channels == Some(0) {
            return Err(Error::OutOfRange {
                name: "guided_channels",
                value: 0.0,
                expected: "at least 1 (or unset to guide all channels)",
            });
        }
        Ok(())
    }

    /// Whether CFG is in use at all (some τ may still switch it off).
    pub fn uses_cfg(&self) -> bool {
        self.cfg_scale != 1.0
    }

    /// Whether NAG is in use at all.
    pub fn uses_nag(&self) -> bool {
        self.nag_scale != 0.0
    }

    /// Whether some τ needs the reference model (DoG with CFG on).
    pub fn uses_reference(&self) -> bool {
        self.dog && self.uses_cfg()
    }

    /// Effective `(s, w)` at τ: a weight is off (s = 1, w = 0) outside its interval.
    pub fn weights_at(&self, tau: f64) -> (f64, f64) {
        let s = match self.cfg_interval {
            Some(iv) if !iv.contains(tau) => 1.0,
            _ => self.cfg_scale,
        };
        let w = match self.nag_interval {
            Some(iv) if !iv.contains(tau) => 0.0,
            _ => self.nag_scale,
        };
        (s, w)
    }

    /// The branches to evaluate at τ and their coefficients. Branches with a zero coefficient
    /// are left out, except (t, c), which is always first (unguided channels and DiT's
    /// variance channels come from it).
    pub fn plan(&self, tau: f64) -> GuidancePlan {
        let (s, w) = self.weights_at(tau);
        // Coefficients of (t,c), (t,∅), (∅t,c), (∅t,∅), from the rules in the module doc.
        let k = match self.form {
            CfgNagForm::ThreeBranch => [s + w, 1.0 - s, -w, 0.0],
            CfgNagForm::FourBranch => {
                [s * (w + 1.0), (1.0 - s) * (w + 1.0), -s * w, -(1.0 - s) * w]
            }
        };
        let unconditional = if self.dog {
            Branch::REFERENCE_NULL_CLASS
        } else {
            Branch::NULL_CLASS
        };
        let all = [
            Branch::COND,
            unconditional,
            Branch::NULL_T,
            Branch::NULL_BOTH,
        ];
        let mut branches = Vec::with_capacity(4);
        let mut coefs = Vec::with_capacity(4);
        for (i, (b, c)) in all.iter().zip(k).enumerate() {
            if i == 0 || c != 0.0 {
                branches.push(*b);
                coefs.push(c);
            }
        }
        GuidancePlan {
            branches,
            coefs,
            guided_channels: self.guided_channels,
        }
    }
}

impl GuidancePlan {
    /// Number of branches.
    pub fn len(&self) -> usize {
        self.branches.len()
    }

    /// Always false: (t, c) is always in the plan.
    pub fn is_empty(&self) -> bool {
        self.branches.is_empty()
    }

    /// Combines branch outputs `outs[i]` (same order as `branches`), each `[N, C, …]` with
    /// channels on dim 1: `Σ_i k_i·outs[i]` on the guided channels, `outs[0]` elsewhere.
    pub fn combine<B: Backend, const D: usize>(
        &self,
        outs: &[Tensor<B, D>],
    ) -> Result<Tensor<B, D>> {
        if outs.len() != self.branches.len() {
            return Err(Error::Shape(format!(
                "guidance plan has {} branches but {} outputs were given",
                self.branches.len(),
                outs.len()
            )));
        }
        let dims = outs[0].dims();
        for o in outs {
            if o.dims() != dims {
                return Err(Error::Shape(format!(
                    "branch outputs differ in shape: {:?} vs {:?}",
                    dims,
                    o.dims()
                )));
            }
        }
        let mut acc = outs[0].clone().mul_scalar(self.coefs[0]);
        for (o, &c) in outs.iter().zip(&self.coefs).skip(1) {
            acc = acc + o.clone().mul_scalar(c);
        }
        match self.guided_channels {
            Some(k) if D >= 2 && k < dims[1] => {
                let channels = dims[1];
                let guided = acc.narrow(1, 0, k);
                let rest = outs[0].clone().narrow(1, k, channels - k);
                Ok(Tensor::cat(alloc::vec![guided, rest], 1))
            }
            _ => Ok(acc),
        }
    }

    /// The same combination over plain slices, for use outside burn. Each `outs[i]` holds
    /// `N × channels × inner` values (row-major, channels second); `out` receives the result.
    pub fn combine_slices(
        &self,
        outs: &[&[f32]],
        channels: usize,
        inner: usize,
        out: &mut [f32],
    ) -> Result<()> {
        if outs.len() != self.branches.len() {
            return Err(Error::Shape(format!(
                "guidance plan has {} branches but {} outputs were given",
                self.branches.len(),
                outs.len()
            )));
        }
        let n = out.len();
        if channels == 0 || inner == 0 || !n.is_multiple_of(channels * inner) {
            return Err(Error::Shape(format!(
                "output length {n} is not a multiple of channels × inner = {channels} × {inner}"
            )));
        }
        if let Some(bad) = outs.iter().find(|o| o.len() != n) {
            return Err(Error::Shape(format!(
                "branch output has {} values, expected {n}",
                bad.len()
            )));
        }
        let k = self.guided_channels.unwrap_or(channels).min(channels);
        for (e, o) in out.iter_mut().enumerate() {
            let channel = (e / inner) % channels;
            if channel < k {
                let mut acc = 0.0f64;
                for (branch, &c) in outs.iter().zip(&self.coefs) {
                    acc += c * branch[e] as f64;
                }
                *o = acc as f32;
            } else {
                *o = outs[0][e];
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use burn_ndarray::NdArray;

    type B = NdArray<f32>;

    fn vals(plan: &GuidancePlan, c: f32, u: f32, n: f32, nb: f32) -> f32 {
        let mut acc = 0.0;
        for (b, k) in plan.branches.iter().zip(&plan.coefs) {
            let v = match *b {
                Branch::COND => c,
                Branch::NULL_CLASS => u,
                Branch::NULL_T => n,
                _ => nb,
            };
            acc += *k as f32 * v;
        }
        acc
    }

    #[test]
    fn zero_weights_give_the_conditional_output() {
        for g in [Guidance::none(), Guidance::cfg(1.0), Guidance::nag(0.0)] {
            let p = g.plan(0.5);
            assert_eq!(p.branches, vec![Branch::COND]);
            assert_eq!(p.coefs, vec![1.0]);
        }
    }

    #[test]
    fn dog_takes_the_unconditional_branch_from_the_reference_model() {
        let dog = Guidance::dog(2.5, 1.5).plan(0.5);
        let cfg_nag = Guidance::cfg_nag(2.5, 1.5).plan(0.5);
        assert_eq!(
            dog.branches,
            [Branch::COND, Branch::REFERENCE_NULL_CLASS, Branch::NULL_T]
        );
        assert_eq!(dog.coefs, cfg_nag.coefs);
        assert_eq!(
            Branch::REFERENCE_NULL_CLASS.on_guided_model(),
            Branch::NULL_CLASS
        );
        // Without CFG DoG needs no reference; the four-branch form with NAG is refused.
        assert!(!Guidance::dog(1.0, 2.0).uses_reference());
        assert!(!Guidance::dog(1.0, 2.0)
            .plan(0.5)
            .branches
            .iter()
            .any(|b| b.reference));
        let mut four = Guidance::dog(2.0, 1.0);
        four.form = CfgNagForm::FourBranch;
        assert!(four.validate().is_err());
        four.nag_scale = 0.0;
        assert!(four.validate().is_ok());
    }

    #[test]
    fn coefficients_match_the_formulas() {
        let (c, u, n, nb) = (1.3f32, -0.4f32, 0.7f32, 2.1f32);
        let s = 4.0f32;
        let w = 3.0f32;
        let cfg = vals(&Guidance::cfg(s as f64).plan(0.5), c, u, n, nb);
        assert!((cfg - (u + s * (c - u))).abs() < 1e-5);
        let nag = vals(&Guidance::nag(w as f64).plan(0.5), c, u, n, nb);
        assert!((nag - ((w + 1.0) * c - w * n)).abs() < 1e-5);
        let both = vals(
            &Guidance::cfg_nag(s as f64, w as f64).plan(0.5),
            c,
            u,
            n,
            nb,
        );
        assert!((both - (u + s * (c - u) + w * (c - n))).abs() < 1e-5);
        let mut g4 = Guidance::cfg_nag(s as f64, w as f64);
        g4.form = CfgNagForm::FourBranch;
        let p4 = g4.plan(0.5);
        assert_eq!(p4.len(), 4);
        let n_c = (w + 1.0) * c - w * n;
        let n_u = (w + 1.0) * u - w * nb;
        assert!((vals(&p4, c, u, n, nb) - (n_u + s * (n_c - n_u))).abs() < 1e-4);
        for p in [p4, Guidance::cfg_nag(2.0, 3.0).plan(0.1)] {
            assert!((p.coefs.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn branches_are_exactly_those_needed() {
        assert_eq!(
            Guidance::cfg(1.5).plan(0.3).branches,
            vec![Branch::COND, Branch::NULL_CLASS]
        );
        assert_eq!(
            Guidance::nag(3.0).plan(0.3).branches,
            vec![Branch::COND, Branch::NULL_T]
        );
        assert_eq!(
            Guidance::cfg_nag(1.5, 2.0).plan(0.3).branches,
            vec![Branch::COND, Branch::NULL_CLASS, Branch::NULL_T]
        );
    }

    #[test]
    fn intervals_switch_weights_off() {
        let mut g = Guidance::cfg_nag(4.0, 3.0);
        g.nag_interval = Some(Interval { lo: 0.0, hi: 0.3 });
        g.cfg_interval = Some(Interval { lo: 0.5, hi: 1.0 });
        assert_eq!(g.weights_at(0.2), (1.0, 3.0));
        assert_eq!(g.weights_at(0.7), (4.0, 0.0));
        assert_eq!(g.plan(0.4).branches, vec![Branch::COND]);
    }

    #[test]
    fn invalid_settings_are_errors() {
        let mut g = Guidance::nag(f64::NAN);
        assert!(g.validate().is_err());
        g = Guidance::nag(1.0);
        g.nag_interval = Some(Interval { lo: 0.8, hi: 0.2 });
        assert!(g.validate().is_err());
        g.nag_interval = None;
        g.guided_channels = Some(0);
        assert!(g.validate().is_err());
        assert!(Guidance::cfg_nag(1.5, 2.0).validate().is_ok());
    }

    #[test]
    fn slices_and_tensors_agree() {
        let device = Default::default();
        let (n, ch, inner) = (2usize, 4usize, 3usize);
        let len = n * ch * inner;
        let mk = |seed: f32| -> Vec<f32> {
            (0..len)
                .map(|i| libm::sinf(seed * (i as f32 + 1.0)))
                .collect()
        };
        let raw = [mk(0.37), mk(1.11), mk(2.03), mk(0.59)];
        for (g, k) in [
            (Guidance::cfg_nag(1.5, 2.0), None),
            (Guidance::nag(3.0), Some(3)),
            (
                Guidance {
                    form: CfgNagForm::FourBranch,
                    ..Guidance::cfg_nag(2.0, 1.0)
                },
                Some(1),
            ),
        ] {
            let mut g = g;
            g.guided_channels = k;
            let plan = g.plan(0.5);
            let outs: Vec<&[f32]> = raw.iter().take(plan.len()).map(|v| v.as_slice()).collect();
            let mut sl = vec![0.0f32; len];
            plan.combine_slices(&outs, ch, inner, &mut sl).unwrap();
            let tensors: Vec<Tensor<B, 3>> = outs
                .iter()
                .map(|o| Tensor::<B, 1>::from_floats(*o, &device).reshape([n, ch, inner]))
                .collect();
            let t = plan.combine(&tensors).unwrap();
            let tv: Vec<f32> = t.into_data().to_vec().unwrap();
            for (a, b) in tv.iter().zip(&sl) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
            if let Some(k) = k {
                // channels ≥ k equal the conditional branch
                for e in 0..len {
                    if (e / inner) % ch >= k {
                        assert_eq!(sl[e], raw[0][e]);
                    }
                }
            }
        }
    }

    #[test]
    fn mismatched_slices_are_errors() {
        let plan = Guidance::nag(1.0).plan(0.5);
        let a = [0.0f32; 6];
        let b = [0.0f32; 5];
        let mut out = [0.0f32; 6];
        assert!(plan.combine_slices(&[&a, &b], 2, 3, &mut out).is_err());
        assert!(plan.combine_slices(&[&a], 2, 3, &mut out).is_err());
        assert!(plan.combine_slices(&[&a, &a], 4, 1, &mut out).is_err());
    }
}
