//! Exponential moving average of a module's weights: `ema ← d·ema + (1 − d)·θ` after every
//! optimiser step (REFERENCE §5: d = 0.9999), with an optional warm-up
//! `d_k = min(d, (1 + k)/(10 + k))` so short runs are not dominated by the initial weights.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{backend::Backend, Tensor};

/// Decay to use after `updates` previous updates.
pub fn decay_at(decay: f64, updates: u64, warmup: bool) -> f64 {
    if warmup {
        decay.min((1.0 + updates as f64) / (10.0 + updates as f64))
    } else {
        decay
    }
}

struct Collect<B: Backend> {
    tensors: Vec<Tensor<B, 1>>,
}

impl<B: Backend> ModuleVisitor<B> for Collect<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.tensors.push(param.val().reshape([-1]));
    }
}

struct Blend<B: Backend> {
    current: std::vec::IntoIter<Tensor<B, 1>>,
    decay: f64,
}

impl<B: Backend> ModuleMapper<B> for Blend<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let theta = self
            .current
            .next()
            .expect("EMA and model have the same structure");
        let decay = self.decay;
        param.map(|ema| {
            let dims = ema.dims();
            (ema.mul_scalar(decay) + theta.reshape(dims).mul_scalar(1.0 - decay)).detach()
        })
    }
}

struct Touch;

impl<B: Backend> ModuleVisitor<B> for Touch {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

/// Reads every float parameter once, so that lazily initialised parameters draw their values
/// now (from the RNG state the caller has set) rather than at first use.
pub fn materialise<B: Backend, M: Module<B>>(module: &M) {
    module.visit(&mut Touch);
}

/// `ema ← d·ema + (1 − d)·model`, parameter by parameter (both modules must share one
/// structure, e.g. the EMA is a copy of the model's initial weights).
pub fn update<B: Backend, M: Module<B>>(ema: M, model: &M, decay: f64) -> M {
    let mut collect = Collect {
        tensors: Vec::new(),
    };
    model.visit(&mut collect);
    let mut blend = Blend {
        current: collect.tensors.into_iter(),
        decay,
    };
    ema.map(&mut blend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn_ndarray::NdArray;

    type B = NdArray<f32>;

    #[test]
    fn update_blends_every_parameter() {
        let device = Default::default();
        let a: Linear<B> = LinearConfig::new(3, 2).init(&device);
        let b: Linear<B> = LinearConfig::new(3, 2).init(&device);
        let wa: Vec<f32> = a.weight.val().into_data().to_vec().unwrap();
        let wb: Vec<f32> = b.weight.val().into_data().to_vec().unwrap();
        let mixed = update(a, &b, 0.75);
        let wm: Vec<f32> = mixed.weight.val().into_data().to_vec().unwrap();
        for ((m, x), y) in wm.iter().zip(&wa).zip(&wb) {
            assert!((m - (0.75 * x + 0.25 * y)).abs() < 1e-6);
        }
    }

    #[test]
    fn warmup_starts_small() {
        assert!((decay_at(0.9999, 0, true) - 0.1).abs() < 1e-12);
        assert_eq!(decay_at(0.9999, 1_000_000, true), 0.9999);
        assert_eq!(decay_at(0.9999, 0, false), 0.9999);
    }
}
