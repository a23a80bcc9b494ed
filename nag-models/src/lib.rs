//! # nag-models
//!
//! Networks for Noise Awareness Guidance (NAG, arXiv 2510.12497), generic over burn backends:
//!
//! - [`dit`]: the DiT network (also SiT) with the learned null-timestep embedding that
//!   classifier-free NAG drops, and a guided forward that batches all guidance branches.
//! - [`estimator`]: the noise-level estimator `g_φ(τ | x)` used to measure the noise shift and
//!   for classifier NAG.
//! - [`kernels`]: fused CPU kernels (attention) behind backend-generic functions.
//! - [`state_dict`]: the framework-neutral state dict models convert to and from.
//! - [`checkpoint`]: checkpoint files (`.pt`, `.safetensors`) ↔ state dicts.
//! - [`npy`]: `.npy` arrays.
//! - [`vae`]: the Stable Diffusion VAE (diffusers `AutoencoderKL`) between images and latents.
//! - [`npz`]: `.npz` archives (listing, small arrays whole, big image batches streamed).
#![warn(missing_docs)]

pub mod checkpoint;
pub mod dit;
pub mod estimator;
pub mod kernels;
pub mod npy;
pub mod npz;
pub mod state_dict;
pub mod vae;

pub use dit::{Dit, DitConfig, DitHints, LoadReport, ModelError, TimeInput};
pub use estimator::{EstimatorConfig, NoiseEstimator};
pub use state_dict::{CheckpointError, StateDict};
pub use vae::{Vae, VaeConfig, VaeError};
