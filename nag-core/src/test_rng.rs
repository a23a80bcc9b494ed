//! A seeded test generator: SplitMix64 uniforms and Box–Muller normals (no_std, no crate).

/// SplitMix64 uniforms and Box–Muller normals.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let z = (self.0 ^ (self.0 >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    pub(crate) fn normal(&mut self) -> f64 {
        let r = libm::sqrt(-2.0 * libm::log(1.0 - self.uniform()));
        r * libm::cos(core::f64::consts::TAU * self.uniform())
    }
    pub(crate) fn normals(&mut self, n: usize, scale: f64) -> alloc::vec::Vec<f64> {
        (0..n).map(|_| scale * self.normal()).collect()
    }
}
