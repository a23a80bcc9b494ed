//! One micro-batch of a training step: its random draws from `stream(seed, step)`, its loss and
//! gradients, and running micro-batches concurrently on their own autodiff graphs.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use nag_core::ddpm::DdpmSchedule;
use nag_core::schedule::Schedule;
use nag_models::dit::Dit;
use rand::Rng;

use super::TrainConfig;
use crate::data::{stream_rng, Batch};
use crate::objective;

const DOMAIN_STEP: u64 = 0x5354_4550; // "STEP"

/// Per-step random draws: times, dropout masks and noise, from `stream(seed, step)`.
struct Draws {
    ddpm_k: Vec<usize>,
    tau: Vec<f64>,
    null_t: Vec<bool>,
    null_class: Vec<bool>,
    noise: Vec<f32>,
}

fn draw(cfg: &TrainConfig, step: u64, micro: usize, shape: [usize; 4], ddpm_len: usize) -> Draws {
    let mut rng = stream_rng(cfg.seed, DOMAIN_STEP, step * 1024 + micro as u64);
    let n = shape[0];
    let ddpm_k = (0..n).map(|_| rng.random_range(0..ddpm_len)).collect();
    let tau = (0..n).map(|_| 1.0 - rng.random::<f64>()).collect(); // τ ∈ (0, 1]
    let null_t = (0..n)
        .map(|_| cfg.finetune_uncond_only || rng.random::<f64>() < cfg.noise_dropout)
        .collect();
    let null_class = (0..n)
        .map(|_| rng.random::<f64>() < cfg.class_dropout)
        .collect();
    let len: usize = shape.iter().product();
    let mut noise = Vec::with_capacity(len);
    while noise.len() < len {
        // Box–Muller, both outputs.
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        noise.push((r * th.cos()) as f32);
        if noise.len() < len {
            noise.push((r * th.sin()) as f32);
        }
    }
    Draws {
        ddpm_k,
        tau,
        null_t,
        null_class,
        noise,
    }
}

/// The loss of one micro-batch (on the autodiff backend).
fn micro_loss<B: AutodiffBackend>(
    cfg: &TrainConfig,
    model: &Dit<B>,
    ddpm: &DdpmSchedule,
    interp: Option<&Schedule>,
    x0: Tensor<B, 4>,
    y: Tensor<B, 1, Int>,
    d: &Draws,
) -> Tensor<B, 1> {
    let device = x0.device();
    let shape = x0.dims();
    let n = shape[0];
    let noise = Tensor::<B, 4>::from_data(TensorData::new(d.noise.clone(), shape), &device);
    let null_t = Tensor::<B, 1, Bool>::from_data(TensorData::new(d.null_t.clone(), [n]), &device);
    let null_class =
        Tensor::<B, 1, Bool>::from_data(TensorData::new(d.null_class.clone(), [n]), &device);
    let null_class = (model.config().num_classes > 0).then_some(null_class);
    match interp {
        None => {
            let x_t = objective::ddpm_q_sample(ddpm, x0.clone(), &d.ddpm_k, noise.clone());
            let t: Vec<f32> = d
                .ddpm_k
                .iter()
                .map(|&k| ddpm.model_time(k) as f32)
                .collect();
            let t = Tensor::<B, 1>::from_data(TensorData::new(t, [n]), &device);
            let out = model.forward(x_t.clone(), t, y, Some(null_t), null_class);
            objective::ddpm_loss(ddpm, x0, x_t, &d.ddpm_k, noise, out).mean()
        }
        Some(schedule) => {
            use nag_core::schedule::NoiseSchedule;
            let a: Vec<f64> = d.tau.iter().map(|&t| schedule.alpha(t)).collect();
            let s: Vec<f64> = d.tau.iter().map(|&t| schedule.sigma(t)).collect();
            let x_t = x0.clone() * objective::per_sample::<B>(&a, &device)
                + noise.clone() * objective::per_sample::<B>(&s, &device);
            // SiT is fed its own clock t = 1 − τ.
            let t: Vec<f32> = d
                .tau
                .iter()
                .map(|&tau| nag_core::clock::sit_from_tau(tau) as f32)
                .collect();
            let t = Tensor::<B, 1>::from_data(TensorData::new(t, [n]), &device);
            let out = model.forward(x_t, t, y, Some(null_t), null_class);
            objective::interpolant_loss(
                schedule,
                x0,
                noise,
                &d.tau,
                out,
                cfg.prediction,
                cfg.loss_weight,
            )
            .mean()
        }
    }
}

/// One micro-batch `m` of optimiser step `step`: its loss (already divided by `grad_accum`)
/// and its gradients.
#[allow(clippy::too_many_arguments)]
pub(super) fn micro_step<B: AutodiffBackend>(
    cfg: &TrainConfig,
    step: u64,
    m: usize,
    model: &Dit<B>,
    ddpm: &DdpmSchedule,
    interp: Option<&Schedule>,
    batch: Batch,
    trainable: &[ParamId],
    device: &B::Device,
) -> (f32, GradientsParams) {
    let x0 = Tensor::<B, 4>::from_data(TensorData::new(batch.x, batch.shape), device);
    let y = Tensor::<B, 1, Int>::from_data(TensorData::new(batch.y, [batch.shape[0]]), device);
    let d = draw(cfg, step, m, batch.shape, ddpm.len());
    let loss = micro_loss(cfg, model, ddpm, interp, x0, y, &d).div_scalar(cfg.grad_accum as f64);
    let value: f32 = burn::tensor::ElementConversion::elem(loss.clone().into_scalar());
    let mut grads = loss.backward();
    let grads = GradientsParams::from_params(&mut grads, model, trainable);
    (value, grads)
}

/// The ids of the parameters that require gradients.
pub(super) fn trainable_params<B: AutodiffBackend>(model: &Dit<B>) -> Vec<ParamId> {
    struct Ids(Vec<ParamId>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if param.val().is_require_grad() {
                self.0.push(param.id);
            }
        }
    }
    let mut ids = Ids(Vec::new());
    model.visit(&mut ids);
    ids.0
}

/// `f(model, item)` for every item, concurrently, one thread per item, each on its own
/// autodiff graph: the parameters become fresh leaves over the same data and `ParamId`s, so
/// every thread's `backward` gives gradients of its own loss only, which [`sum_gradients`]
/// adds up. This is how a CPU step uses every core (burn-ndarray is built without threads of
/// its own, see the workspace manifest); one item runs on the calling thread. Results come
/// back in item order and do not depend on how many ran at once.
pub fn on_own_graphs<B, T, R, F>(model: &Dit<B>, items: Vec<T>, f: F) -> Vec<R>
where
    B: AutodiffBackend,
    T: Send,
    R: Send,
    F: Fn(&Dit<B>, T) -> R + Sync,
{
    if items.len() == 1 {
        return items.into_iter().map(|item| f(model, item)).collect();
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .into_iter()
            .map(|item| {
                let local = model.clone().map(&mut FreshLeaves);
                let f = &f;
                scope.spawn(move || f(&local, item))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a training thread panicked"))
            .collect()
    })
}

/// Replaces every parameter by a fresh autodiff leaf over the same data and `ParamId`.
struct FreshLeaves;

impl<B: AutodiffBackend> ModuleMapper<B> for FreshLeaves {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        // Frozen parameters (the fixed sin-cos `pos_embed`) stay frozen.
        param.map(|t| {
            let trainable = t.is_require_grad();
            let leaf = t.detach();
            if trainable {
                leaf.require_grad()
            } else {
                leaf
            }
        })
    }
}

/// Sums two gradient sets parameter by parameter (gradient accumulation).
pub fn sum_gradients<B: AutodiffBackend>(
    a: GradientsParams,
    b: GradientsParams,
    model: &Dit<B>,
) -> GradientsParams {
    let mut acc = burn::optim::GradientsAccumulator::<Dit<B>>::new();
    acc.accumulate(model, a);
    acc.accumulate(model, b);
    acc.grads()
}
