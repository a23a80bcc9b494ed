//! The README's experiments as library functions: typed options in, typed results (and their
//! files: `results.json`, `table.md`, plots) out, progress as events.

pub mod nag;
pub mod oracle;

pub use nag::{run_nag_experiment, NagExperimentConfig, NagExperimentEvent, NagResults};

/// Errors of the experiments.
pub type ExperimentError = crate::PipelineError;
