//! # nag-core
//!
//! The math of Noise Awareness Guidance (NAG, arXiv 2510.12497), with no I/O and no backend:
//! `no_std` + `alloc`, scalar math through `libm`, tensor code generic over burn's
//! `Tensor<B, D>` and, where it matters for embedding elsewhere, over plain `f32` slices.
//!
//! Time convention everywhere in this crate is the paper's: `τ ∈ [0, 1]`, `τ = 0` is data and
//! `τ = 1` is noise, `x_τ = α(τ)·x0 + σ(τ)·ε`. SiT's code runs the other way (`t = 1 − τ`);
//! [`clock`] converts, and nothing else in the crate knows about that clock.
//!
//! - [`schedule`]: continuous schedules (Linear, GVP, VP) behind [`schedule::NoiseSchedule`].
//! - [`ddpm`]: DiT's discrete DDPM tables (linear and cosine β), respacing, posterior and
//!   learned-range variance coefficients.
//! - [`prediction`]: conversions among ε, x̂0, velocity and score.
//! - [`shift`]: the noise shift δ (first order, exact, discrete, and its inverse).
//! - [`guidance`]: CFG, NAG and CFG+NAG as linear combinations of model branches.
//! - [`gmm`]: exact noise-level posterior p(τ | x) for Gaussian-mixture data.
//! - [`oracle`]: exact scores, noise-dropped predictions and classifier signals for that data.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod clock;
pub mod error;
pub mod gmm;
pub mod guidance;
pub mod oracle;
pub mod prediction;
pub mod schedule;
pub mod shift;
#[cfg(test)]
mod test_rng;

pub use error::{Error, Result};
/// DiT's DDPM tables at their historic path (they live in [`schedule::ddpm`]).
pub use schedule::ddpm;
