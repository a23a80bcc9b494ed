//! The options that pick the exact `gmm` model (`--model oracle`), shared by `sample`, `shift`
//! and `eval`.

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
    #[command(flatten)]
    pub spec: OracleSpec,
}

impl OracleOpts {
    /// The oracle and its data when `--model oracle` was given; `None` without `--model`;
    /// an error naming the alternatives for any other model name (`others` lists them).
    pub fn build(&self, seed: u64, others: &str) -> Result<Option<(Oracle, GmmDataset)>> {
        match self.model.as_deref() {
            None => Ok(None),
            Some("oracle") => Ok(Some(self.spec.build(seed)?)),
            Some(other) => bail!("--model '{other}': the only model besides {others} is `oracle`"),
        }
    }
}
