//! Guidance as a wrapper around the network: a [`GuidedDit`] is a [`DiffusionModel`] whose
//! every evaluation runs the branches of one [`Guidance`] setting in one batched forward and
//! combines them. Samplers never see guidance. With Domain Guidance a second, reference
//! (pre-trained) model evaluates the branches marked [`Branch::reference`], in one batched
//! forward of its own.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use nag_core::guidance::{Branch, Guidance, GuidancePlan};
use nag_core::prediction::Prediction;
use nag_models::dit::{Dit, ModelError, TimeInput};

use crate::sampling::{DiffusionModel, ModelOutput, TimePoint};

/// The value a network with time input `input` is fed for time point `at`: the original DDPM
/// index (continuous samplers on a DDPM model use the continuous index τ·T − 1, T = 1000), or
/// SiT's clock `1 − τ`.
pub fn network_time(input: TimeInput, at: TimePoint) -> f64 {
    match input {
        TimeInput::DdpmIndex => at
            .ddpm_index
            .map_or((at.tau * 1000.0 - 1.0).max(0.0), |i| i as f64),
        TimeInput::SitClock => nag_core::clock::sit_from_tau(at.tau),
    }
}

/// A DiT/SiT with fixed class labels and a guidance setting (and, for DoG, the pre-trained
/// reference model).
pub struct GuidedDit<'a, B: Backend> {
    model: &'a Dit<B>,
    reference: Option<&'a Dit<B>>,
    labels: Tensor<B, 1, Int>,
    guidance: Guidance,
    /// Batch chunks evaluated concurrently per network evaluation (see [`Self::with_threads`]).
    threads: usize,
    /// Network evaluations so far, counted per sample-branch batch (one per `predict`).
    pub calls: usize,
    /// Branch evaluations so far (`calls` × branches), both models.
    pub branch_evals: usize,
    /// Of those, the reference model's.
    pub reference_evals: usize,
}

impl<'a, B: Backend> GuidedDit<'a, B> {
    /// Wraps `model` for labels `labels` (ignored by unconditional models) and `guidance`.
    /// Checks up front that the model can evaluate every branch the guidance may need, so
    /// sampling itself cannot fail half-way.
    pub fn new(model: &'a Dit<B>, labels: &[i64], guidance: Guidance) -> Result<Self, ModelError> {
        Self::build(model, None, labels, guidance)
    }

    /// [`Self::new`] for Domain Guidance: `reference` is the pre-trained model `model` was
    /// fine-tuned from; it evaluates the unconditional branch with its own null class (the
    /// labels of `model`'s label set are not fed to it). It must take the same inputs and
    /// clock, and have a null class.
    pub fn with_reference(
        model: &'a Dit<B>,
        reference: &'a Dit<B>,
        labels: &[i64],
        guidance: Guidance,
    ) -> Result<Self, ModelError> {
        let (m, r) = (model.config(), reference.config());
        if (m.in_channels, m.input_size, m.time_input)
            != (r.in_channels, r.input_size, r.time_input)
        {
            return Err(ModelError::Unsupported(format!(
                "the reference model takes {}×{}×{} inputs ({:?}) but the fine-tuned one \
                 {}×{}×{} ({:?}): DoG needs the model the fine-tuning started from",
                r.in_channels,
                r.input_size,
                r.input_size,
                r.time_input,
                m.in_channels,
                m.input_size,
                m.input_size,
                m.time_input
            )));
        }
        if !r.has_null_class() {
            return Err(ModelError::Unsupported(
                "the reference model has no null class (trained without label dropout): DoG \
                 needs its unconditional output"
                    .into(),
            ));
        }
        Self::build(model, Some(reference), labels, guidance)
    }

    fn build(
        model: &'a Dit<B>,
        reference: Option<&'a Dit<B>>,
        labels: &[i64],
        guidance: Guidance,
    ) -> Result<Self, ModelError> {
        guidance.validate()?;
        // A reference the guidance never asks for (e.g. DoG at s = 1) is simply unused.
        if guidance.uses_reference() && reference.is_none() {
            return Err(ModelError::Unsupported(
                "Domain Guidance needs the pre-trained reference model (--dog PRETRAINED)".into(),
            ));
        }
        let cfg = model.config();
        if guidance.uses_cfg() && !guidance.dog && (cfg.num_classes == 0 || !cfg.has_null_class()) {
            return Err(ModelError::Unsupported(
                "CFG needs a class-conditional model trained with label dropout (a null class); \
                 drop --cfg or use a conditional model"
                    .into(),
            ));
        }
        if guidance.uses_nag() && !cfg.null_timestep {
            return Err(ModelError::Unsupported(
                "NAG needs the learned null-timestep vector: train or fine-tune with \
                 --noise-dropout > 0, or drop --nag"
                    .into(),
            ));
        }
        labels.iter().try_for_each(|&y| cfg.check_label(y))?;
        let device = model.device();
        let labels = Tensor::from_data(TensorData::new(labels.to_vec(), [labels.len()]), &device);
        Ok(Self {
            model,
            reference,
            labels,
            guidance,
            threads: 1,
            calls: 0,
            branch_evals: 0,
            reference_evals: 0,
        })
    }

    /// Splits every network evaluation's batch into up to `threads` contiguous chunks,
    /// evaluated concurrently. On a CPU one forward keeps about one core busy (burn-ndarray is
    /// built without its own threads, see the workspace manifest), so this is how sampling uses
    /// every core; on a GPU leave it at 1. The result does not depend on it: every sample's
    /// arithmetic is the same whatever else is in its batch.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The value the network is fed for time point `at`.
    fn network_time(&self, at: TimePoint) -> f64 {
        network_time(self.model.config().time_input, at)
    }
}

impl<B: Backend> DiffusionModel<B> for GuidedDit<'_, B> {
    fn prediction(&self) -> Prediction {
        match self.model.config().time_input {
            TimeInput::DdpmIndex => Prediction::Eps,
            TimeInput::SitClock => Prediction::Velocity,
        }
    }

    fn predict(&mut self, x: Tensor<B, 4>, at: TimePoint) -> ModelOutput<B> {
        let [n, c, _, _] = x.dims();
        let plan = self.guidance.plan(at.tau);
        self.calls += 1;
        self.branch_evals += plan.len();
        self.reference_evals += plan.branches.iter().filter(|b| b.reference).count();
        let time = self.network_time(at);
        let (model, reference) = (self.model, self.reference);
        let forward = |x: Tensor<B, 4>, labels: Tensor<B, 1, Int>| {
            let t = Tensor::<B, 1>::full([x.dims()[0]], time, &x.device());
            evaluate_plan(model, reference, x, t, labels, &plan)
                .expect("inputs and plan were checked when the GuidedDit was built")
        };
        let chunk = n.div_ceil(self.threads.min(n).max(1));
        let out = if chunk >= n {
            forward(x, self.labels.clone())
        } else {
            let parts: Vec<Tensor<B, 4>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..n)
                    .step_by(chunk)
                    .map(|start| {
                        let len = chunk.min(n - start);
                        let x = x.clone().narrow(0, start, len);
                        let labels = self.labels.clone().narrow(0, start, len);
                        let forward = &forward;
                        scope.spawn(move || forward(x, labels))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a sampling thread panicked"))
                    .collect()
            });
            Tensor::cat(parts, 0)
        };
        let pred = out.clone().narrow(1, 0, c);
        let var_interp = (out.dims()[1] == 2 * c).then(|| out.narrow(1, c, c));
        let pred = match self.model.config().time_input {
            TimeInput::DdpmIndex => pred,
            // SiT predicts dx/dt in its clock; ours is dx/dτ = −dx/dt.
            TimeInput::SitClock => pred.mul_scalar(nag_core::clock::velocity_sign_from_sit()),
        };
        ModelOutput { pred, var_interp }
    }
}

/// Evaluates `plan`'s branches, the guided model's in one batch and the reference model's
/// (DoG) in another, and combines them in plan order ([`Dit::combine_branches`]). The
/// reference is fed zero labels: its only branch is its own null class.
fn evaluate_plan<B: Backend>(
    model: &Dit<B>,
    reference: Option<&Dit<B>>,
    x: Tensor<B, 4>,
    t: Tensor<B, 1>,
    labels: Tensor<B, 1, Int>,
    plan: &GuidancePlan,
) -> Result<Tensor<B, 4>, ModelError> {
    let Some(reference) = reference.filter(|_| plan.branches.iter().any(|b| b.reference)) else {
        return model.forward_guided(x, t, labels, plan);
    };
    type Indexed = Vec<(usize, Branch)>;
    let (theirs, ours): (Indexed, Indexed) = plan
        .branches
        .iter()
        .copied()
        .enumerate()
        .partition(|(_, b)| b.reference);
    let pick = |v: &[(usize, Branch)]| -> Vec<Branch> {
        v.iter().map(|(_, b)| b.on_guided_model()).collect()
    };
    let n = x.dims()[0];
    let zeros = Tensor::<B, 1, Int>::zeros([n], &x.device());
    let mine = model.forward_branches(x.clone(), t.clone(), labels, &pick(&ours))?;
    let refs = reference.forward_branches(x, t, zeros, &pick(&theirs))?;
    let mut outs: Vec<Option<Tensor<B, 4>>> = vec![None; plan.len()];
    for ((i, _), o) in ours.iter().zip(mine).chain(theirs.iter().zip(refs)) {
        outs[*i] = Some(o);
    }
    let outs: Vec<Tensor<B, 4>> = outs
        .into_iter()
        .map(|o| o.expect("every branch evaluated"))
        .collect();
    model.combine_branches(plan, &outs)
}
