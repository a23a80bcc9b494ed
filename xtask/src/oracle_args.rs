//! The options that pick the exact `gmm` model (`--model oracle`), shared by `sample` and
//! `shift`.

use anyhow::{bail, Result};
use clap::Args;
use nag_train::data::GmmDataset;
use nag_train::oracle::{Oracle, OracleSpec};

/// `--model oracle` and its options.
#[derive(Debug, Args)]
pub struct OracleOpts {
    /// `oracle`: the exact model of the built-in gmm data instead of a network (see
    /// `--oracle-error`, `--nag-form`, `--objective`).
    #[arg(long)]
    pub model: Option<String>,
    /// Oracle: the data (gmm, gmm8, gmm32, …; seed 0).
    #[arg(long, default_value = "gmm")]
    pub data: String,
    /// Oracle: its training objective, which fixes the schedule and what it predicts: ddpm (ε,
    /// DiT's schedule) or linear / gvp / vp (velocity, SiT's paths).
    #[arg(long, default_value = "ddpm")]
    pub objective: String,
    /// Oracle: a controlled error: none, eps-scale:K, eps-scale-cond:K, bias:B, smooth:S.
    #[arg(long, default_value = "none")]
    pub oracle_error: String,
    /// Oracle: the noise-dropped branch, eps (a noise-dropout network's ε average) or score
    /// (classifier NAG with the exact ∇log p(τ|x)).
    #[arg(long, default_value = "eps")]
    pub nag_form: String,
}

impl OracleOpts {
    /// The library's description of the oracle these options pick.
    pub fn spec(&self) -> OracleSpec {
        OracleSpec {
            data: self.data.clone(),
            objective: self.objective.clone(),
            oracle_error: self.oracle_error.clone(),
            nag_form: self.nag_form.clone(),
        }
    }

    /// The oracle and its data when `--model oracle` was given; `None` without `--model`;
    /// an error naming the alternatives for any other model name (`others` lists them).
    pub fn build(&self, seed: u64, others: &str) -> Result<Option<(Oracle, GmmDataset)>> {
        match self.model.as_deref() {
            None => Ok(None),
            Some("oracle") => Ok(Some(self.spec().build(seed)?)),
            Some(other) => bail!("--model '{other}': the only model besides {others} is `oracle`"),
        }
    }
}
