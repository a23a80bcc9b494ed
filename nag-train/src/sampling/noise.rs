//! Sources of Gaussian noise for the samplers.
//!
//! [`SeededNormal`] draws on the CPU from ChaCha8 with a Box–Muller transform computed in f64
//! through `libm` (portable, correctly specified functions), then uploads the f32 values with
//! `Tensor::from_data`. The numbers therefore depend only on the seed and the sequence of shapes
//! requested, never on the backend, the device or the thread count.

use burn::tensor::{backend::Backend, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Something that produces standard normal tensors.
pub trait NoiseSource<B: Backend> {
    /// A tensor of i.i.d. N(0, 1) values of the given `[N, C, H, W]` shape.
    fn normal(&mut self, shape: [usize; 4], device: &B::Device) -> Tensor<B, 4>;
}

impl<B: Backend, T: NoiseSource<B> + ?Sized> NoiseSource<B> for &mut T {
    fn normal(&mut self, shape: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
        (**self).normal(shape, device)
    }
}

/// Zeros instead of noise: turns ancestral/SDE samplers into their noise-free mean paths
/// (debugging, and isolating the deterministic part of a step in tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct ZeroNoise;

impl<B: Backend> NoiseSource<B> for ZeroNoise {
    fn normal(&mut self, shape: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
        Tensor::zeros(shape, device)
    }
}

/// Reproducible standard normal noise: ChaCha8 + Box–Muller on the CPU.
///
/// Two layouts:
/// - [`SeededNormal::new`]: one stream; each call fills the tensor in row-major order.
/// - [`SeededNormal::per_sample`]: row `i` of every tensor comes from its own ChaCha8 stream
///   number `first + i` (same seed), continued from call to call, so the noise a sample sees
///   depends on its global index only, not on how samples are batched.
///
/// Box–Muller: `u1 ∈ (0, 1]`, `u2 ∈ [0, 1)` from the generator's 53-bit floats,
/// `r = √(−2 ln u1)`, values `r·cos 2πu2` then `r·sin 2πu2`; an odd trailing value of a row
/// (per-sample) or of a call (single stream) discards its pair's second value.
#[derive(Debug, Clone)]
pub struct SeededNormal {
    seed: u64,
    layout: Layout,
}

#[derive(Debug, Clone)]
enum Layout {
    Single(Box<ChaCha8Rng>),
    PerSample { first: u64, rows: Vec<ChaCha8Rng> },
}

impl SeededNormal {
    /// One stream seeded with `seed` (`ChaCha8Rng::seed_from_u64`).
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            layout: Layout::Single(Box::new(ChaCha8Rng::seed_from_u64(seed))),
        }
    }

    /// One stream per batch row: row `i` uses stream `first + i` of the seed's ChaCha8
    /// generator (`set_stream`), so sample number `first + i` gets the same noise whatever the
    /// batch size.
    pub fn per_sample(seed: u64, first: u64) -> Self {
        Self {
            seed,
            layout: Layout::PerSample {
                first,
                rows: Vec::new(),
            },
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// `n` standard normal values as f32, on the CPU (per-sample layout: continuing the stream
    /// of sample `first`).
    pub fn normal_vec(&mut self, n: usize) -> Vec<f32> {
        match &mut self.layout {
            Layout::Single(rng) => {
                let mut out = Vec::with_capacity(n);
                fill(rng, n, &mut out);
                out
            }
            Layout::PerSample { first, rows } => {
                // A flat vector is one row.
                ensure_rows(self.seed, *first, rows, 1);
                let mut out = Vec::with_capacity(n);
                fill(&mut rows[0], n, &mut out);
                out
            }
        }
    }
}

fn ensure_rows(seed: u64, first: u64, rows: &mut Vec<ChaCha8Rng>, n: usize) {
    while rows.len() < n {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(first.wrapping_add(rows.len() as u64));
        rows.push(rng);
    }
}

/// Appends `n` Box–Muller normals from `rng` to `out`.
fn fill(rng: &mut ChaCha8Rng, n: usize, out: &mut Vec<f32>) {
    let mut left = n;
    while left > 0 {
        let u1 = 1.0 - rng.random::<f64>();
        let u2 = rng.random::<f64>();
        let r = libm::sqrt(-2.0 * libm::log(u1));
        let theta = 2.0 * core::f64::consts::PI * u2;
        out.push((r * libm::cos(theta)) as f32);
        left -= 1;
        if left > 0 {
            out.push((r * libm::sin(theta)) as f32);
            left -= 1;
        }
    }
}

impl SeededNormal {
    /// `rows × per_row` standard normal values, row-major: what [`NoiseSource::normal`] fills
    /// a `[rows, …]` tensor with (per-sample layout: row `i` continues stream `first + i`).
    pub fn normal_rows(&mut self, rows: usize, per_row: usize) -> Vec<f32> {
        let total = rows * per_row;
        match &mut self.layout {
            Layout::Single(rng) => {
                let mut out = Vec::with_capacity(total);
                fill(rng, total, &mut out);
                out
            }
            Layout::PerSample { first, rows: rngs } => {
                ensure_rows(self.seed, *first, rngs, rows);
                let mut out = Vec::with_capacity(total);
                for rng in rngs.iter_mut().take(rows) {
                    fill(rng, per_row, &mut out);
                }
                out
            }
        }
    }
}

impl<B: Backend> NoiseSource<B> for SeededNormal {
    fn normal(&mut self, shape: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
        let values = self.normal_rows(shape[0], shape[1] * shape[2] * shape[3]);
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}
