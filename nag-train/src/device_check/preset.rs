//! The check's two model sizes: the paper's DiT-XL/2 and the CPU dry pass's `tiny`.

use std::str::FromStr;

use nag_models::dit::{DitConfig, ModelError};
use serde::Serialize;

use crate::bench::BenchShape;

/// Model sizes of the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// DiT-XL/2 on 4×32×32 latents, 1000 classes (the paper's network).
    Xl,
    /// The CPU dry pass: the `tiny` DiT on 4×8×8, 10 classes.
    Tiny,
}

impl FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "xl" => Ok(Self::Xl),
            "tiny" => Ok(Self::Tiny),
            _ => Err(format!("unknown preset '{s}' (xl or tiny)")),
        }
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Xl => "xl",
            Self::Tiny => "tiny",
        })
    }
}

impl Preset {
    /// The speed stages' network (depth, hidden, heads, patch, latent side) with `batch`
    /// (default 32 for xl, 2 for tiny) and `iters` repetitions.
    pub fn speed_shape(self, batch: Option<usize>, iters: usize) -> BenchShape {
        let (depth, hidden, heads, patch, size, default_batch) = match self {
            Self::Xl => (28, 1152, 16, 2, 32, 32),
            Self::Tiny => (4, 128, 4, 2, 8, 2),
        };
        BenchShape {
            depth,
            hidden,
            heads,
            patch,
            size,
            batch: batch.unwrap_or(default_batch),
            iters,
        }
    }

    /// Classes of the data the preset stands for.
    pub fn classes(self) -> usize {
        match self {
            Self::Xl => 1000,
            Self::Tiny => 10,
        }
    }

    /// DDPM steps of the sample stage unless given (250 for xl, 5 for tiny).
    pub fn sample_steps(self) -> usize {
        match self {
            Self::Xl => 250,
            Self::Tiny => 5,
        }
    }

    /// The parity stage's network and the sample stage's (DiT-XL/2 and DiT-S/2 for xl, `tiny`
    /// for both in the dry pass).
    pub fn parity_networks(self) -> Result<(DitConfig, DitConfig), ModelError> {
        Ok(match self {
            Self::Xl => (self.network("DiT-XL/2")?, self.network("DiT-S/2")?),
            Self::Tiny => (self.network("tiny")?, self.network("tiny")?),
        })
    }

    /// The sample stage's network.
    pub fn sample_network(self) -> Result<DitConfig, ModelError> {
        self.network(match self {
            Self::Xl => "DiT-XL/2",
            Self::Tiny => "tiny",
        })
    }

    /// A named preset on this preset's latents, with a null class row and a null-t vector.
    fn network(self, name: &str) -> Result<DitConfig, ModelError> {
        let size = self.speed_shape(None, 1).size;
        Ok(DitConfig::preset(name, size, 4, self.classes())?
            .with_class_dropout_prob(0.1)
            .with_null_timestep(true))
    }
}
