//! The InceptionV3 FID architecture: convolution specs, the Inception blocks A–E and the whole
//! network, generic over the convolution type, plus the state-dict keys it reads.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use nag_models::state_dict::StateDict;

use super::layers::{avg_pool_3x3, max_pool_3x3, BasicConv};
use super::INCEPTION_DIM;

/// One `BasicConv2d` as the architecture names it: `<name>.conv.weight [out, in, kh, kw]` and
/// `<name>.bn.{weight, bias, running_mean, running_var} [out]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvSpec {
    /// Key prefix, e.g. `Mixed_5b.branch5x5_1`.
    pub name: String,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride (both directions).
    pub stride: usize,
    /// Zero padding `[ph, pw]`.
    pub padding: [usize; 2],
}

impl ConvSpec {
    /// The state-dict entries of this convolution and their shapes.
    pub fn keys(&self) -> Vec<(String, Vec<usize>)> {
        let [kh, kw] = self.kernel;
        let mut keys = vec![(
            format!("{}.conv.weight", self.name),
            vec![self.c_out, self.c_in, kh, kw],
        )];
        for p in ["weight", "bias", "running_mean", "running_var"] {
            keys.push((format!("{}.bn.{p}", self.name), vec![self.c_out]));
        }
        keys
    }
}

/// Makes one convolution (a loaded [`BasicConv`], or anything else built from the spec).
type Make<'a, C, E> = dyn FnMut(ConvSpec) -> Result<C, E> + 'a;

/// A `1×1` / `k×k` / `(kh, kw)` convolution spec of block `p`, branch `b`.
fn spec(p: &str, b: &str, c_in: usize, c_out: usize, kernel: [usize; 2]) -> ConvSpec {
    let padding = [kernel[0] / 2, kernel[1] / 2];
    ConvSpec {
        name: if p.is_empty() {
            b.to_string()
        } else {
            format!("{p}.{b}")
        },
        c_in,
        c_out,
        kernel,
        stride: 1,
        padding,
    }
}

/// A `k×k`, stride 2, unpadded spec (the reductions).
fn spec_s2(p: &str, b: &str, c_in: usize, c_out: usize, k: usize) -> ConvSpec {
    ConvSpec {
        stride: 2,
        padding: [0, 0],
        ..spec(p, b, c_in, c_out, [k, k])
    }
}

/// A `k×k`, stride 1, unpadded spec (the stem's valid convolutions).
fn spec_valid(p: &str, b: &str, c_in: usize, c_out: usize, k: usize) -> ConvSpec {
    ConvSpec {
        padding: [0, 0],
        ..spec(p, b, c_in, c_out, [k, k])
    }
}

/// pytorch-fid's `FIDInceptionA` (`Mixed_5b/5c/5d`): `in → 64 + 64 + 96 + pool_features`.
#[derive(Debug, Clone)]
pub struct InceptionA<C> {
    /// `branch1x1` (in→64, 1×1).
    pub branch1x1: C,
    /// `branch5x5_1` (in→48, 1×1).
    pub branch5x5_1: C,
    /// `branch5x5_2` (48→64, 5×5, pad 2).
    pub branch5x5_2: C,
    /// `branch3x3dbl_1` (in→64, 1×1).
    pub branch3x3dbl_1: C,
    /// `branch3x3dbl_2` (64→96, 3×3, pad 1).
    pub branch3x3dbl_2: C,
    /// `branch3x3dbl_3` (96→96, 3×3, pad 1).
    pub branch3x3dbl_3: C,
    /// `branch_pool` (in→pool_features, 1×1) after avg-pool 3×3 (count_include_pad=False).
    pub branch_pool: C,
}

impl<C> InceptionA<C> {
    fn new<E>(mk: &mut Make<C, E>, p: &str, c_in: usize, pool: usize) -> Result<Self, E> {
        Ok(Self {
            branch1x1: mk(spec(p, "branch1x1", c_in, 64, [1, 1]))?,
            branch5x5_1: mk(spec(p, "branch5x5_1", c_in, 48, [1, 1]))?,
            branch5x5_2: mk(spec(p, "branch5x5_2", 48, 64, [5, 5]))?,
            branch3x3dbl_1: mk(spec(p, "branch3x3dbl_1", c_in, 64, [1, 1]))?,
            branch3x3dbl_2: mk(spec(p, "branch3x3dbl_2", 64, 96, [3, 3]))?,
            branch3x3dbl_3: mk(spec(p, "branch3x3dbl_3", 96, 96, [3, 3]))?,
            branch_pool: mk(spec(p, "branch_pool", c_in, pool, [1, 1]))?,
        })
    }
}

impl<B: Backend> InceptionA<BasicConv<B>> {
    pub(super) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b5 = self.branch5x5_1.forward(x.clone());
        let b5 = self.branch5x5_2.forward(b5);
        let b3 = self.branch3x3dbl_1.forward(x.clone());
        let b3 = self.branch3x3dbl_2.forward(b3);
        let b3 = self.branch3x3dbl_3.forward(b3);
        let bp = self.branch_pool.forward(avg_pool_3x3(x));
        Tensor::cat(vec![b1, b5, b3, bp], 3)
    }
}

/// torchvision's `InceptionB` (`Mixed_6a`, a reduction 35→17): `in → 384 + 96 + in`.
#[derive(Debug, Clone)]
pub struct InceptionB<C> {
    /// `branch3x3` (in→384, 3×3, stride 2).
    pub branch3x3: C,
    /// `branch3x3dbl_1` (in→64, 1×1).
    pub branch3x3dbl_1: C,
    /// `branch3x3dbl_2` (64→96, 3×3, pad 1).
    pub branch3x3dbl_2: C,
    /// `branch3x3dbl_3` (96→96, 3×3, stride 2).
    pub branch3x3dbl_3: C,
}

impl<C> InceptionB<C> {
    fn new<E>(mk: &mut Make<C, E>, p: &str, c_in: usize) -> Result<Self, E> {
        Ok(Self {
            branch3x3: mk(spec_s2(p, "branch3x3", c_in, 384, 3))?,
            branch3x3dbl_1: mk(spec(p, "branch3x3dbl_1", c_in, 64, [1, 1]))?,
            branch3x3dbl_2: mk(spec(p, "branch3x3dbl_2", 64, 96, [3, 3]))?,
            branch3x3dbl_3: mk(spec_s2(p, "branch3x3dbl_3", 96, 96, 3))?,
        })
    }
}

impl<B: Backend> InceptionB<BasicConv<B>> {
    pub(super) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b3 = self.branch3x3.forward(x.clone());
        let bd = self.branch3x3dbl_1.forward(x.clone());
        let bd = self.branch3x3dbl_2.forward(bd);
        let bd = self.branch3x3dbl_3.forward(bd);
        let bp = max_pool_3x3(x, 2, 0);
        Tensor::cat(vec![b3, bd, bp], 3)
    }
}

/// pytorch-fid's `FIDInceptionC` (`Mixed_6b…6e`, `c7 = channels_7x7`): `in → 4·192`.
#[derive(Debug, Clone)]
pub struct InceptionC<C> {
    /// `branch1x1` (in→192, 1×1).
    pub branch1x1: C,
    /// `branch7x7_1` (in→c7, 1×1).
    pub branch7x7_1: C,
    /// `branch7x7_2` (c7→c7, 1×7, pad (0, 3)).
    pub branch7x7_2: C,
    /// `branch7x7_3` (c7→192, 7×1, pad (3, 0)).
    pub branch7x7_3: C,
    /// `branch7x7dbl_1` (in→c7, 1×1).
    pub branch7x7dbl_1: C,
    /// `branch7x7dbl_2` (c7→c7, 7×1).
    pub branch7x7dbl_2: C,
    /// `branch7x7dbl_3` (c7→c7, 1×7).
    pub branch7x7dbl_3: C,
    /// `branch7x7dbl_4` (c7→c7, 7×1).
    pub branch7x7dbl_4: C,
    /// `branch7x7dbl_5` (c7→192, 1×7).
    pub branch7x7dbl_5: C,
    /// `branch_pool` (in→192, 1×1) after avg-pool 3×3 (count_include_pad=False).
    pub branch_pool: C,
}

impl<C> InceptionC<C> {
    fn new<E>(mk: &mut Make<C, E>, p: &str, c_in: usize, c7: usize) -> Result<Self, E> {
        Ok(Self {
            branch1x1: mk(spec(p, "branch1x1", c_in, 192, [1, 1]))?,
            branch7x7_1: mk(spec(p, "branch7x7_1", c_in, c7, [1, 1]))?,
            branch7x7_2: mk(spec(p, "branch7x7_2", c7, c7, [1, 7]))?,
            branch7x7_3: mk(spec(p, "branch7x7_3", c7, 192, [7, 1]))?,
            branch7x7dbl_1: mk(spec(p, "branch7x7dbl_1", c_in, c7, [1, 1]))?,
            branch7x7dbl_2: mk(spec(p, "branch7x7dbl_2", c7, c7, [7, 1]))?,
            branch7x7dbl_3: mk(spec(p, "branch7x7dbl_3", c7, c7, [1, 7]))?,
            branch7x7dbl_4: mk(spec(p, "branch7x7dbl_4", c7, c7, [7, 1]))?,
            branch7x7dbl_5: mk(spec(p, "branch7x7dbl_5", c7, 192, [1, 7]))?,
            branch_pool: mk(spec(p, "branch_pool", c_in, 192, [1, 1]))?,
        })
    }
}

impl<B: Backend> InceptionC<BasicConv<B>> {
    pub(super) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b7 = self.branch7x7_1.forward(x.clone());
        let b7 = self.branch7x7_2.forward(b7);
        let b7 = self.branch7x7_3.forward(b7);
        let bd = self.branch7x7dbl_1.forward(x.clone());
        let bd = self.branch7x7dbl_2.forward(bd);
        let bd = self.branch7x7dbl_3.forward(bd);
        let bd = self.branch7x7dbl_4.forward(bd);
        let bd = self.branch7x7dbl_5.forward(bd);
        let bp = self.branch_pool.forward(avg_pool_3x3(x));
        Tensor::cat(vec![b1, b7, bd, bp], 3)
    }
}

/// torchvision's `InceptionD` (`Mixed_7a`, a reduction 17→8): `in → 320 + 192 + in`.
#[derive(Debug, Clone)]
pub struct InceptionD<C> {
    /// `branch3x3_1` (in→192, 1×1).
    pub branch3x3_1: C,
    /// `branch3x3_2` (192→320, 3×3, stride 2).
    pub branch3x3_2: C,
    /// `branch7x7x3_1` (in→192, 1×1).
    pub branch7x7x3_1: C,
    /// `branch7x7x3_2` (192→192, 1×7, pad (0, 3)).
    pub branch7x7x3_2: C,
    /// `branch7x7x3_3` (192→192, 7×1, pad (3, 0)).
    pub branch7x7x3_3: C,
    /// `branch7x7x3_4` (192→192, 3×3, stride 2).
    pub branch7x7x3_4: C,
}

impl<C> InceptionD<C> {
    fn new<E>(mk: &mut Make<C, E>, p: &str, c_in: usize) -> Result<Self, E> {
        Ok(Self {
            branch3x3_1: mk(spec(p, "branch3x3_1", c_in, 192, [1, 1]))?,
            branch3x3_2: mk(spec_s2(p, "branch3x3_2", 192, 320, 3))?,
            branch7x7x3_1: mk(spec(p, "branch7x7x3_1", c_in, 192, [1, 1]))?,
            branch7x7x3_2: mk(spec(p, "branch7x7x3_2", 192, 192, [1, 7]))?,
            branch7x7x3_3: mk(spec(p, "branch7x7x3_3", 192, 192, [7, 1]))?,
            branch7x7x3_4: mk(spec_s2(p, "branch7x7x3_4", 192, 192, 3))?,
        })
    }
}

impl<B: Backend> InceptionD<BasicConv<B>> {
    pub(super) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b3 = self.branch3x3_1.forward(x.clone());
        let b3 = self.branch3x3_2.forward(b3);
        let b7 = self.branch7x7x3_1.forward(x.clone());
        let b7 = self.branch7x7x3_2.forward(b7);
        let b7 = self.branch7x7x3_3.forward(b7);
        let b7 = self.branch7x7x3_4.forward(b7);
        let bp = max_pool_3x3(x, 2, 0);
        Tensor::cat(vec![b3, b7, bp], 3)
    }
}

/// The pool of an [`InceptionE`] block's `branch_pool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EPool {
    /// `FIDInceptionE_1` (`Mixed_7b`): avg-pool 3×3, stride 1, pad 1, count_include_pad=False.
    Avg,
    /// `FIDInceptionE_2` (`Mixed_7c`): max-pool 3×3, stride 1, pad 1.
    Max,
}

/// pytorch-fid's `FIDInceptionE_1` / `FIDInceptionE_2` (`Mixed_7b` / `Mixed_7c`):
/// `in → 320 + 768 + 768 + 192 = 2048`.
#[derive(Debug, Clone)]
pub struct InceptionE<C> {
    /// `branch1x1` (in→320, 1×1).
    pub branch1x1: C,
    /// `branch3x3_1` (in→384, 1×1).
    pub branch3x3_1: C,
    /// `branch3x3_2a` (384→384, 1×3, pad (0, 1)).
    pub branch3x3_2a: C,
    /// `branch3x3_2b` (384→384, 3×1, pad (1, 0)).
    pub branch3x3_2b: C,
    /// `branch3x3dbl_1` (in→448, 1×1).
    pub branch3x3dbl_1: C,
    /// `branch3x3dbl_2` (448→384, 3×3, pad 1).
    pub branch3x3dbl_2: C,
    /// `branch3x3dbl_3a` (384→384, 1×3).
    pub branch3x3dbl_3a: C,
    /// `branch3x3dbl_3b` (384→384, 3×1).
    pub branch3x3dbl_3b: C,
    /// `branch_pool` (in→192, 1×1) after the pool.
    pub branch_pool: C,
    /// Which pool precedes `branch_pool`.
    pub pool: EPool,
}

impl<C> InceptionE<C> {
    fn new<E>(mk: &mut Make<C, E>, p: &str, c_in: usize, pool: EPool) -> Result<Self, E> {
        Ok(Self {
            branch1x1: mk(spec(p, "branch1x1", c_in, 320, [1, 1]))?,
            branch3x3_1: mk(spec(p, "branch3x3_1", c_in, 384, [1, 1]))?,
            branch3x3_2a: mk(spec(p, "branch3x3_2a", 384, 384, [1, 3]))?,
            branch3x3_2b: mk(spec(p, "branch3x3_2b", 384, 384, [3, 1]))?,
            branch3x3dbl_1: mk(spec(p, "branch3x3dbl_1", c_in, 448, [1, 1]))?,
            branch3x3dbl_2: mk(spec(p, "branch3x3dbl_2", 448, 384, [3, 3]))?,
            branch3x3dbl_3a: mk(spec(p, "branch3x3dbl_3a", 384, 384, [1, 3]))?,
            branch3x3dbl_3b: mk(spec(p, "branch3x3dbl_3b", 384, 384, [3, 1]))?,
            branch_pool: mk(spec(p, "branch_pool", c_in, 192, [1, 1]))?,
            pool,
        })
    }
}

impl<B: Backend> InceptionE<BasicConv<B>> {
    pub(super) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b3 = self.branch3x3_1.forward(x.clone());
        let b3 = Tensor::cat(
            vec![
                self.branch3x3_2a.forward(b3.clone()),
                self.branch3x3_2b.forward(b3),
            ],
            3,
        );
        let bd = self.branch3x3dbl_1.forward(x.clone());
        let bd = self.branch3x3dbl_2.forward(bd);
        let bd = Tensor::cat(
            vec![
                self.branch3x3dbl_3a.forward(bd.clone()),
                self.branch3x3dbl_3b.forward(bd),
            ],
            3,
        );
        let pooled = match self.pool {
            EPool::Avg => avg_pool_3x3(x),
            EPool::Max => max_pool_3x3(x, 1, 1),
        };
        let bp = self.branch_pool.forward(pooled);
        Tensor::cat(vec![b1, b3, bd, bp], 3)
    }
}

/// The whole network over convolutions of type `C` (a [`BasicConv`] when loaded).
#[derive(Debug, Clone)]
pub struct InceptionNet<C> {
    /// `Conv2d_1a_3x3` (3→32, 3×3, stride 2).
    pub conv2d_1a_3x3: C,
    /// `Conv2d_2a_3x3` (32→32, 3×3).
    pub conv2d_2a_3x3: C,
    /// `Conv2d_2b_3x3` (32→64, 3×3, pad 1).
    pub conv2d_2b_3x3: C,
    /// `Conv2d_3b_1x1` (64→80, 1×1).
    pub conv2d_3b_1x1: C,
    /// `Conv2d_4a_3x3` (80→192, 3×3).
    pub conv2d_4a_3x3: C,
    /// `Mixed_5b` = `FIDInceptionA(192, pool_features=32)`.
    pub mixed_5b: InceptionA<C>,
    /// `Mixed_5c` = `FIDInceptionA(256, pool_features=64)`.
    pub mixed_5c: InceptionA<C>,
    /// `Mixed_5d` = `FIDInceptionA(288, pool_features=64)`.
    pub mixed_5d: InceptionA<C>,
    /// `Mixed_6a` = `InceptionB(288)`.
    pub mixed_6a: InceptionB<C>,
    /// `Mixed_6b` = `FIDInceptionC(768, channels_7x7=128)`.
    pub mixed_6b: InceptionC<C>,
    /// `Mixed_6c` = `FIDInceptionC(768, channels_7x7=160)`.
    pub mixed_6c: InceptionC<C>,
    /// `Mixed_6d` = `FIDInceptionC(768, channels_7x7=160)`.
    pub mixed_6d: InceptionC<C>,
    /// `Mixed_6e` = `FIDInceptionC(768, channels_7x7=192)`.
    pub mixed_6e: InceptionC<C>,
    /// `Mixed_7a` = `InceptionD(768)`.
    pub mixed_7a: InceptionD<C>,
    /// `Mixed_7b` = `FIDInceptionE_1(1280)`.
    pub mixed_7b: InceptionE<C>,
    /// `Mixed_7c` = `FIDInceptionE_2(2048)`.
    pub mixed_7c: InceptionE<C>,
}

impl<C> InceptionNet<C> {
    /// Builds the network, making each convolution (in the order of pytorch-fid's modules).
    pub fn build<E>(mk: &mut Make<C, E>) -> Result<Self, E> {
        Ok(Self {
            conv2d_1a_3x3: mk(spec_s2("", "Conv2d_1a_3x3", 3, 32, 3))?,
            conv2d_2a_3x3: mk(spec_valid("", "Conv2d_2a_3x3", 32, 32, 3))?,
            conv2d_2b_3x3: mk(spec("", "Conv2d_2b_3x3", 32, 64, [3, 3]))?,
            conv2d_3b_1x1: mk(spec("", "Conv2d_3b_1x1", 64, 80, [1, 1]))?,
            conv2d_4a_3x3: mk(spec_valid("", "Conv2d_4a_3x3", 80, 192, 3))?,
            mixed_5b: InceptionA::new(mk, "Mixed_5b", 192, 32)?,
            mixed_5c: InceptionA::new(mk, "Mixed_5c", 256, 64)?,
            mixed_5d: InceptionA::new(mk, "Mixed_5d", 288, 64)?,
            mixed_6a: InceptionB::new(mk, "Mixed_6a", 288)?,
            mixed_6b: InceptionC::new(mk, "Mixed_6b", 768, 128)?,
            mixed_6c: InceptionC::new(mk, "Mixed_6c", 768, 160)?,
            mixed_6d: InceptionC::new(mk, "Mixed_6d", 768, 160)?,
            mixed_6e: InceptionC::new(mk, "Mixed_6e", 768, 192)?,
            mixed_7a: InceptionD::new(mk, "Mixed_7a", 768)?,
            mixed_7b: InceptionE::new(mk, "Mixed_7b", 1280, EPool::Avg)?,
            mixed_7c: InceptionE::new(mk, "Mixed_7c", 2048, EPool::Max)?,
        })
    }
}

/// Every convolution of the network, in module order.
pub fn conv_specs() -> Vec<ConvSpec> {
    let mut specs = Vec::new();
    let mut record = |s: ConvSpec| -> Result<(), std::convert::Infallible> {
        specs.push(s);
        Ok(())
    };
    let Ok(_) = InceptionNet::<()>::build(&mut record);
    specs
}

/// Every state-dict entry the feature network reads, with its shape (`fc.*` and
/// `num_batches_tracked` are not read).
pub fn state_dict_shapes() -> Vec<(String, Vec<usize>)> {
    conv_specs().iter().flat_map(ConvSpec::keys).collect()
}

/// A random state dict with every key the network reads and `fc.weight` (logits), deterministic
/// in `seed`: convolutions uniform in `±√(6/fan_in)`, batch norms near identity. Its features are
/// meaningless; for tests of the plumbing (the real weights are not downloadable here).
pub fn random_state_dict(seed: u64) -> StateDict {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut sd = StateDict::new();
    for s in conv_specs() {
        let [kh, kw] = s.kernel;
        let a = (6.0 / (s.c_in * kh * kw) as f32).sqrt();
        let n = s.c_out * s.c_in * kh * kw;
        let w = (0..n).map(|_| rng.random_range(-a..a)).collect();
        sd.insert(
            format!("{}.conv.weight", s.name),
            vec![s.c_out, s.c_in, kh, kw],
            w,
        );
        for (p, lo, hi) in [
            ("weight", 0.8, 1.2),
            ("bias", -0.1, 0.1),
            ("running_mean", -0.1, 0.1),
            ("running_var", 0.5, 1.5),
        ] {
            let v = (0..s.c_out).map(|_| rng.random_range(lo..hi)).collect();
            sd.insert(format!("{}.bn.{p}", s.name), vec![s.c_out], v);
        }
    }
    let fc = (0..1008 * INCEPTION_DIM)
        .map(|_| rng.random_range(-0.05..0.05))
        .collect();
    sd.insert("fc.weight", vec![1008, INCEPTION_DIM], fc);
    sd
}
