//! The noise-level estimator `g_φ(τ | x)`: a posterior over the noise level of a state.
//!
//! The paper measures the noise shift of sampled states with such an estimator and uses
//! `∇_x log g_φ(τ | x)` for classifier NAG (REFERENCE §1). Here τ is the paper's clock
//! (`τ = 0` data, `τ = 1` noise) discretised into `K` equal bins, bin `k` covering
//! `[k/K, (k+1)/K)` with centre `(k + 0.5)/K`.
//!
//! Architecture: a DiT trunk with no timestep input. Patch embedding + fixed sin-cos positions,
//! [`DitBlock`]s conditioned on `c` = a learned constant vector (+ the class embedding when
//! class-conditional), a final LayerNorm (no affine), mean-pooling over tokens and
//! `Linear(D, K)` giving the logits of `p(τ | x)`.
//!
//! State-dict keys (PyTorch layouts, DiT names where the module is DiT's):
//! `pos_embed [1, T, D]`, `x_embedder.proj.{weight [D, C, p, p], bias}`, `cond_embed [D]`,
//! `y_embedder.embedding_table.weight [num_classes, D]` (class-conditional only, no null row),
//! `blocks.{i}.*` (as in DiT), `head.weight [K, D]`, `head.bias [K]`.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::dit::{
    block_shapes, check_entries, export_linear, export_tensor, fixed_param, infer_trunk,
    layer_norm, linear, mismatch, sincos_pos_embed_2d, DitBlock, DitConfig, LabelEmbedder, Loader,
    ModelError, PatchEmbed, NORMAL_002, XAVIER,
};
use crate::state_dict::{CheckpointError, StateDict};

/// Kind name used in checkpoint errors.
const KIND: &str = "noise-level estimator";

/// Configuration of a [`NoiseEstimator`].
#[derive(Config, Debug, PartialEq)]
pub struct EstimatorConfig {
    /// Spatial size of the input, `H = W`.
    pub input_size: usize,
    /// Patch size `p`.
    pub patch_size: usize,
    /// Input channels `C`.
    pub in_channels: usize,
    /// Token width `D`.
    pub hidden_size: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Number of τ bins `K`.
    pub num_bins: usize,
    /// Number of classes; 0 = unconditional.
    #[config(default = 0)]
    pub num_classes: usize,
    /// MLP hidden width is `int(D · mlp_ratio)`.
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
}

impl EstimatorConfig {
    /// An estimator with the trunk of a DiT preset ([`DitConfig::preset`], e.g. `"tiny"`,
    /// `"DiT-S/2"`) and `num_bins` τ bins.
    pub fn preset(
        name: &str,
        input_size: usize,
        in_channels: usize,
        num_classes: usize,
        num_bins: usize,
    ) -> Result<Self, ModelError> {
        let d = DitConfig::preset(name, input_size, in_channels, num_classes)?;
        let config = Self::new(
            input_size,
            d.patch_size,
            in_channels,
            d.hidden_size,
            d.depth,
            d.num_heads,
            num_bins,
        )
        .with_num_classes(num_classes)
        .with_mlp_ratio(d.mlp_ratio);
        config.validate()?;
        Ok(config)
    }

    /// The equivalent DiT trunk config (used for validation and shapes).
    fn trunk(&self) -> DitConfig {
        DitConfig::new(
            self.input_size,
            self.patch_size,
            self.in_channels,
            self.hidden_size,
            self.depth,
            self.num_heads,
            self.num_classes,
        )
        .with_mlp_ratio(self.mlp_ratio)
    }

    /// Checks the trunk as [`DitConfig::validate`] does, and `num_bins ≥ 1`.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.trunk().validate()?;
        if self.num_bins == 0 {
            return Err(ModelError::InvalidConfig(
                "num_bins must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Every state-dict entry with its PyTorch shape (see the module docs).
    pub fn state_dict_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let t = self.trunk();
        let d = self.hidden_size;
        let (c, p) = (self.in_channels, self.patch_size);
        let mut v: Vec<(String, Vec<usize>)> = vec![
            ("pos_embed".into(), vec![1, t.num_patches(), d]),
            ("x_embedder.proj.weight".into(), vec![d, c, p, p]),
            ("x_embedder.proj.bias".into(), vec![d]),
            ("cond_embed".into(), vec![d]),
        ];
        if self.num_classes > 0 {
            v.push((
                "y_embedder.embedding_table.weight".into(),
                vec![self.num_classes, d],
            ));
        }
        for i in 0..self.depth {
            block_shapes(&mut v, &format!("blocks.{i}"), d, t.mlp_hidden());
        }
        v.push(("head.weight".into(), vec![self.num_bins, d]));
        v.push(("head.bias".into(), vec![self.num_bins]));
        v
    }

    /// Number of scalars (including the fixed position table), from shapes.
    pub fn param_count(&self) -> usize {
        self.state_dict_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// Builds the estimator: DiT's init for the shared modules (patch conv and block linears
    /// xavier-uniform, zero adaLN layers, label table `N(0, 0.02)`), `cond_embed ~ N(0, 0.02)`,
    /// and an xavier-uniform head with zero bias (a zero head would make every input
    /// gradient vanish at init).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<NoiseEstimator<B>, ModelError> {
        self.validate()?;
        let t = self.trunk();
        let d = self.hidden_size;
        Ok(NoiseEstimator {
            x_embedder: PatchEmbed::new(self.in_channels, d, self.patch_size, device),
            pos_embed: fixed_param(
                sincos_pos_embed_2d(d, t.grid_size()),
                [1, t.num_patches(), d],
                device,
            ),
            cond_embed: NORMAL_002.init([d], device),
            y_embedder: (self.num_classes > 0)
                .then(|| LabelEmbedder::new(self.num_classes, d, false, device)),
            blocks: (0..self.depth)
                .map(|_| DitBlock::new(d, self.num_heads, t.mlp_hidden(), device))
                .collect(),
            head: linear(d, self.num_bins, XAVIER, device),
            config: self.clone(),
        })
    }

    /// Recovers the config from a state dict's shapes: the trunk as for DiT, `num_bins` from
    /// `head.weight`, `num_classes` from the label table rows (0 when absent). Heads come from
    /// `num_heads` or the standard table by hidden size.
    pub fn infer_from_state_dict(
        sd: &StateDict,
        num_heads: Option<usize>,
    ) -> Result<Self, CheckpointError> {
        let trunk = infer_trunk(sd, KIND, num_heads)?;
        let head = sd
            .get("head.weight")
            .ok_or_else(|| CheckpointError::MissingKey {
                key: "head.weight".into(),
                expected_kind: KIND.into(),
            })?;
        let num_bins = match head.shape[..] {
            [k, d] if d == trunk.hidden && k > 0 => k,
            _ => {
                return Err(mismatch(format!(
                    "head.weight has shape {:?}, expected [K, {}]",
                    head.shape, trunk.hidden
                )))
            }
        };
        let num_classes = sd
            .get("y_embedder.embedding_table.weight")
            .map_or(0, |t| t.shape.first().copied().unwrap_or(0));
        let config = Self::new(
            trunk.input_size,
            trunk.patch,
            trunk.in_channels,
            trunk.hidden,
            trunk.depth,
            trunk.num_heads,
            num_bins,
        )
        .with_num_classes(num_classes)
        .with_mlp_ratio(trunk.mlp_ratio);
        config
            .validate()
            .map_err(|e| mismatch(format!("inferred config is invalid: {e}")))?;
        Ok(config)
    }
}

/// The noise-level estimator `g_φ(τ | x)`; build with [`EstimatorConfig::init`].
#[derive(Module, Debug)]
pub struct NoiseEstimator<B: Backend> {
    /// `x_embedder`: patch embedding (DiT's).
    pub x_embedder: PatchEmbed<B>,
    /// `pos_embed [1, T, D]`: fixed 2-D sin-cos table, never trained.
    pub pos_embed: Param<Tensor<B, 3>>,
    /// `cond_embed [D]`: the learned constant conditioning vector.
    pub cond_embed: Param<Tensor<B, 1>>,
    /// `y_embedder`: class table (no null row); `None` when unconditional.
    pub y_embedder: Option<LabelEmbedder<B>>,
    /// `blocks.{i}`: DiT blocks.
    pub blocks: Vec<DitBlock<B>>,
    /// `head`: `Linear(D, K)`.
    pub head: Linear<B>,
    #[module(skip)]
    config: EstimatorConfig,
}

impl<B: Backend> NoiseEstimator<B> {
    /// The config the estimator was built with.
    pub fn config(&self) -> &EstimatorConfig {
        &self.config
    }

    /// Logits of `p(τ | x)` over the `K` bins: `x: [N, C, H, W]`, optional labels `y: [N]` →
    /// `[N, K]`:
    ///
    /// ```text
    /// c = cond_embed (+ y_emb(y));  h = block_i(patch(x) + pos, c) for each block
    /// logits = head(mean_tokens(LN(h)))
    /// ```
    /// Without `y` a class-conditional estimator uses `cond_embed` alone. Unchecked: see
    /// [`Self::try_forward`].
    ///
    /// # Panics
    /// On shapes that disagree with the config.
    pub fn forward(&self, x: Tensor<B, 4>, y: Option<Tensor<B, 1, Int>>) -> Tensor<B, 2> {
        let n = x.dims()[0];
        let d = self.config.hidden_size;
        let h = self.x_embedder.forward(x) + self.pos_embed.val();
        let mut c = self.cond_embed.val().reshape([1, d]).expand([n, d]);
        if let (Some(y_embedder), Some(y)) = (&self.y_embedder, y) {
            c = c + y_embedder.forward(y, None);
        }
        let h = self
            .blocks
            .iter()
            .fold(h, |h, block| block.forward(h, c.clone()));
        let pooled = layer_norm(h).mean_dim(1).reshape([n, d]);
        self.head.forward(pooled)
    }

    /// [`Self::forward`] with the shapes and labels checked (labels are read on the host).
    pub fn try_forward(
        &self,
        x: Tensor<B, 4>,
        y: Option<Tensor<B, 1, Int>>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        let cfg = &self.config;
        let [n, c, h, w] = x.dims();
        if n == 0 || c != cfg.in_channels || h != cfg.input_size || w != cfg.input_size {
            return Err(ModelError::Shape(format!(
                "x has shape {:?}, expected [N ≥ 1, {}, {}, {}]",
                x.dims(),
                cfg.in_channels,
                cfg.input_size,
                cfg.input_size
            )));
        }
        if let Some(y) = &y {
            if cfg.num_classes == 0 {
                return Err(ModelError::InvalidInput(
                    "labels given to an unconditional estimator (num_classes = 0)".into(),
                ));
            }
            if y.dims() != [n] {
                return Err(ModelError::Shape(format!(
                    "y has shape {:?}, expected [{n}]",
                    y.dims()
                )));
            }
            let classes = cfg.num_classes;
            if let Some(bad) = y
                .to_data()
                .iter::<i64>()
                .find(|&v| v < 0 || v as u64 >= classes as u64)
            {
                return Err(ModelError::InvalidInput(format!(
                    "label {bad} outside 0..{classes}"
                )));
            }
        }
        Ok(self.forward(x, y))
    }

    /// `log p(τ-bin | x)`: log-softmax of the logits over bins, `[N, K]`; rows exp-sum to 1.
    /// Differentiable in `x` (classifier NAG guides with `∇_x log g_φ(τ | x)`).
    pub fn log_posterior(&self, x: Tensor<B, 4>, y: Option<Tensor<B, 1, Int>>) -> Tensor<B, 2> {
        log_softmax(self.forward(x, y), 1)
    }

    /// Bin centres `(k + 0.5)/K`, `k < K`, in the paper clock.
    pub fn bin_centres(&self) -> Vec<f64> {
        bin_centres(self.config.num_bins)
    }

    /// Posterior mean of τ from logits `[N, K]`: `Σ_k softmax(logits)_k · (k + 0.5)/K`, `[N]`.
    pub fn expected_tau(&self, logits: Tensor<B, 2>) -> Tensor<B, 1> {
        expected_tau(logits)
    }

    /// The bin index of each `τ ∈ [0, 1]`: `min(⌊τ·K⌋, K − 1)` (clamped at 0), for training
    /// targets. `[N] → [N]`.
    pub fn tau_to_bin(&self, tau: Tensor<B, 1>) -> Tensor<B, 1, Int> {
        let k = self.config.num_bins;
        (tau * k as f64).floor().int().clamp(0, k as i64 - 1)
    }

    /// The state dict (keys in the module docs, PyTorch layouts).
    pub fn to_state_dict(&self) -> StateDict {
        let mut sd = StateDict::new();
        export_tensor(&mut sd, "pos_embed".into(), self.pos_embed.val());
        self.x_embedder.export(&mut sd, "x_embedder");
        export_tensor(&mut sd, "cond_embed".into(), self.cond_embed.val());
        if let Some(y) = &self.y_embedder {
            y.export(&mut sd, "y_embedder");
        }
        for (i, block) in self.blocks.iter().enumerate() {
            block.export(&mut sd, &format!("blocks.{i}"));
        }
        export_linear(&mut sd, "head", &self.head);
        sd
    }

    /// Loads every entry (checked first: missing, mis-shaped and unknown keys are errors).
    pub fn load_state_dict(self, sd: &StateDict) -> Result<Self, CheckpointError> {
        check_entries(sd, &self.config.state_dict_shapes(), &[], KIND)?;
        let ld = Loader { sd, kind: KIND };
        let x_embedder = self.x_embedder.import(&ld, "x_embedder")?;
        let y_embedder = self
            .y_embedder
            .map(|y| y.import(&ld, "y_embedder"))
            .transpose()?;
        let blocks = DitBlock::import_all(self.blocks, &ld)?;
        Ok(Self {
            x_embedder,
            pos_embed: ld.param("pos_embed", self.pos_embed, false)?,
            cond_embed: ld.param("cond_embed", self.cond_embed, true)?,
            y_embedder,
            blocks,
            head: ld.linear("head", self.head)?,
            config: self.config,
        })
    }
}

/// Bin centres `(k + 0.5)/K`, `k < K`.
pub fn bin_centres(num_bins: usize) -> Vec<f64> {
    (0..num_bins)
        .map(|k| (k as f64 + 0.5) / num_bins as f64)
        .collect()
}

/// Posterior mean of τ from logits `[N, K]` over `K` equal bins: `softmax(logits) · centres`.
pub fn expected_tau<B: Backend>(logits: Tensor<B, 2>) -> Tensor<B, 1> {
    let [n, k] = logits.dims();
    let centres: Vec<f32> = bin_centres(k).into_iter().map(|c| c as f32).collect();
    let centres = Tensor::<B, 1>::from_floats(centres.as_slice(), &logits.device()).reshape([1, k]);
    (softmax(logits, 1) * centres).sum_dim(1).reshape([n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use burn_autodiff::Autodiff;
    use burn_ndarray::NdArray;

    type B = NdArray<f32>;
    type AD = Autodiff<NdArray<f32>>;

    fn config(num_classes: usize) -> EstimatorConfig {
        let mut c = EstimatorConfig::preset("tiny", 8, 4, num_classes, 10).unwrap();
        c.depth = 2;
        c
    }

    fn input<BB: Backend>(n: usize) -> Tensor<BB, 4> {
        let v: Vec<f32> = (0..n * 4 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        Tensor::from_data(TensorData::new(v, [n, 4, 8, 8]), &Default::default())
    }

    #[test]
    fn log_posterior_rows_are_distributions() {
        let est = config(0).init::<B>(&Default::default()).unwrap();
        assert_eq!(est.num_params(), config(0).param_count());
        let lp = est.log_posterior(input(3), None);
        assert_eq!(lp.dims(), [3, 10]);
        let p: Vec<f32> = lp.exp().sum_dim(1).into_data().to_vec().unwrap();
        for s in p {
            assert!((s - 1.0).abs() < 1e-5, "{s}");
        }
        let tau: Vec<f32> = est
            .expected_tau(est.forward(input(3), None))
            .into_data()
            .to_vec()
            .unwrap();
        assert!(tau.iter().all(|&t| t > 0.0 && t < 1.0));
    }

    #[test]
    fn expected_tau_and_bins() {
        let device = Default::default();
        assert_eq!(bin_centres(4), vec![0.125, 0.375, 0.625, 0.875]);
        // a confident posterior on bin 2 of 4 gives its centre
        let logits = Tensor::<B, 2>::from_floats([[-50.0, -50.0, 50.0, -50.0], [0.0; 4]], &device);
        let tau: Vec<f32> = expected_tau(logits).into_data().to_vec().unwrap();
        assert!((tau[0] - 0.625).abs() < 1e-5);
        assert!((tau[1] - 0.5).abs() < 1e-5);
        let est = config(0).init::<B>(&device).unwrap();
        let bins: Vec<i64> = est
            .tau_to_bin(Tensor::from_floats([0.0, 0.05, 0.1, 0.999, 1.0], &device))
            .into_data()
            .iter::<i64>()
            .collect();
        assert_eq!(bins, vec![0, 0, 1, 9, 9]);
    }

    #[test]
    fn gradients_flow_to_the_input() {
        let est = config(0).init::<AD>(&Default::default()).unwrap();
        let x = input::<AD>(2).require_grad();
        let lp = est.log_posterior(x.clone(), None);
        let grads = lp.narrow(1, 3, 1).sum().backward();
        let g: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
        assert!(g.iter().all(|v| v.is_finite()));
        assert!(g.iter().any(|&v| v != 0.0));
    }

    #[test]
    fn class_conditional_and_state_dict_round_trip() {
        let device = Default::default();
        let cfg = config(5);
        let est = cfg.init::<B>(&device).unwrap();
        let y = Tensor::<B, 1, Int>::from_ints([0, 4], &device);
        let bad = Tensor::<B, 1, Int>::from_ints([0, 5], &device);
        assert!(est.try_forward(input(2), Some(bad)).is_err());
        assert!(est.try_forward(input(3), Some(y.clone())).is_err());
        let before: Vec<f32> = est
            .try_forward(input(2), Some(y.clone()))
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();

        let sd = est.to_state_dict();
        assert_eq!(sd.num_params(), cfg.param_count());
        assert_eq!(sd.get("head.weight").unwrap().shape, vec![10, 128]);
        assert_eq!(sd.get("cond_embed").unwrap().shape, vec![128]);
        assert_eq!(
            sd.get("y_embedder.embedding_table.weight").unwrap().shape,
            vec![5, 128]
        );
        assert_eq!(
            EstimatorConfig::infer_from_state_dict(&sd, None).unwrap(),
            cfg
        );
        let loaded = cfg
            .init::<B>(&device)
            .unwrap()
            .load_state_dict(&sd)
            .unwrap();
        let after: Vec<f32> = loaded
            .forward(input(2), Some(y))
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(before, after);

        let mut missing = sd.clone();
        missing.tensors.remove("cond_embed");
        assert!(matches!(
            cfg.init::<B>(&device).unwrap().load_state_dict(&missing),
            Err(CheckpointError::MissingKey { .. })
        ));
        // the unconditional estimator rejects labels
        let unconditional = config(0).init::<B>(&device).unwrap();
        let y = Tensor::<B, 1, Int>::from_ints([0, 1], &device);
        assert!(unconditional.try_forward(input(2), Some(y)).is_err());
    }
}
