//! The paper's transfer table (fine-tuning a pre-trained model onto a small new domain) in
//! miniature, on `gmm` data whose density is known exactly.
//!
//! 1. A source model is trained on one part of the mixture (e.g. `gmm16:0-4`, five shapes).
//! 2. It is fine-tuned onto another part (`gmm16:5-9`, five other shapes and colours) with a
//!    new label set (`--new-classes`) and noise-condition dropout, as the paper fine-tunes
//!    ImageNet's DiT-XL/2 onto its seven datasets.
//! 3. The fine-tuned model is sampled, from the same seeds and labels, without guidance, with
//!    CFG, and with Domain Guidance against the source model (DoG: the unconditional branch
//!    from the source), each without and with NAG (three-branch form).
//! 4. Each setting is measured against the *target* mixture: exact mean log-density, exact
//!    Fréchet distance in pixels to the mixture's moments, modes covered, label agreement.
//!
//! Typed configuration in, typed rows out; the CLI (`cargo xtask experiment transfer`) prints.

use std::path::Path;

use burn::tensor::backend::AutodiffBackend;
use nag_core::guidance::Guidance;
use serde::Serialize;

use crate::data::{open_gmm, DataOptions, Dataset};
use crate::generate::{load_model, SampleConfig, Sampled, SamplerKind};
use crate::metrics::gmm_metrics::{fd_to_mixture, gmm_metrics};
use crate::train::{finished_run, train, write_atomic, Progress, TrainConfig, TrainEvent};

/// What to run.
#[derive(Debug, Clone)]
pub struct TransferConfig {
    /// Training of the source model (its `data` is the source domain, a `gmm` spec).
    pub source: TrainConfig,
    /// The target domain (a `gmm` spec, e.g. `gmm16:5-9`).
    pub target: String,
    /// Fine-tuning steps on the target.
    pub finetune_steps: u64,
    /// Samples per setting (labels `i mod K`).
    pub n: usize,
    /// Sampling (sampler, steps, seed, …).
    pub sample: SampleConfig,
    /// CFG scale (also DoG's scale).
    pub cfg: f64,
    /// NAG weight of "FT + NAG" (the paper's 3 without CFG).
    pub nag: f64,
    /// NAG weight with CFG or DoG (the paper's 2).
    pub nag_with_cfg: f64,
}

/// `cargo xtask experiment transfer`'s flags (clap, and `--config FILE.toml` by the same
/// names); [`TransferOptions::config`] turns them into a [`TransferConfig`].
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct TransferOptions {
    /// Source domain (a gmm spec with a class range).
    #[arg(long, default_value = "gmm16:0-4")]
    pub source: String,
    /// Target domain (other classes: other shapes and colours).
    #[arg(long, default_value = "gmm16:5-9")]
    pub target: String,
    /// Training steps of the source model.
    #[arg(long, default_value_t = 1000)]
    pub source_steps: u64,
    /// Fine-tuning steps on the target.
    #[arg(long, default_value_t = 400)]
    pub finetune_steps: u64,
    /// Samples per setting.
    #[arg(long, default_value_t = 200)]
    pub n: usize,
    /// DDPM sampling steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// CFG scale, also DoG's (DiT convention, 1 = off).
    #[arg(long, default_value_t = 1.5)]
    pub cfg: f64,
    /// NAG weight alone (the paper's 3).
    #[arg(long, default_value_t = 3.0)]
    pub nag: f64,
    /// NAG weight with CFG or DoG (the paper's 2).
    #[arg(long, default_value_t = 2.0)]
    pub nag_with_cfg: f64,
    /// Seed of training and sampling (the first one with --seeds).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Repeat the whole experiment (training, fine-tuning, sampling) with this many seeds
    /// (seed, seed + 1, …), each in OUT/seed-S, and report mean ± std and NAG's paired effect.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub seeds: u64,
}

impl TransferOptions {
    /// The seeds `seed, seed + 1, …`, `seeds` of them.
    pub fn seed_list(&self) -> Result<Vec<u64>, TransferError> {
        if self.seeds == 0 || self.seed.checked_add(self.seeds - 1).is_none() {
            return Err(TransferError::Config(format!(
                "--seed {} + --seeds {} runs past the largest seed (or --seeds is 0); pick a smaller --seed",
                self.seed, self.seeds
            )));
        }
        Ok((0..self.seeds).map(|i| self.seed + i).collect())
    }

    /// The experiment: the source model is `cargo xtask train`'s default run
    /// ([`TrainConfig::main_job`]) on `source` for `source_steps` (noise dropout 0.1, one
    /// checkpoint at the end, `train_threads` micro-batches at once); sampling is DDPM
    /// ancestral with x̂0 clamped, on `sample_threads` batch chunks.
    pub fn config(
        &self,
        train_threads: usize,
        sample_threads: usize,
    ) -> Result<TransferConfig, TransferError> {
        if self.source_steps == 0 || self.finetune_steps == 0 || self.steps == 0 {
            return Err(TransferError::Config(
                "--source-steps, --finetune-steps and --steps must be at least 1".into(),
            ));
        }
        let source = TrainConfig {
            data: self.source.clone(),
            steps: self.source_steps,
            seed: self.seed,
            noise_dropout: 0.1,
            checkpoint_every: self.source_steps,
            threads: train_threads,
            ..TrainConfig::main_job()
        };
        Ok(TransferConfig {
            source,
            target: self.target.clone(),
            finetune_steps: self.finetune_steps,
            n: self.n,
            sample: SampleConfig {
                sampler: SamplerKind::Ddpm,
                steps: self.steps,
                eta: 0.0,
                seed: self.seed,
                path: "linear".into(),
                clip_x0: true,
                threads: sample_threads,
                variance: crate::sampling::FixedVariance::default(),
            },
            cfg: self.cfg,
            nag: self.nag,
            nag_with_cfg: self.nag_with_cfg,
        })
    }
}

/// One sampled setting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransferRow {
    /// "FT", "FT + NAG", "+ CFG", …
    pub setting: String,
    /// The guidance used.
    pub guidance: Guidance,
    /// Exact mean log-density under the target mixture (nats per image; higher is better).
    pub log_density: f64,
    /// Exact Fréchet distance in pixels to the target mixture's moments (lower is better).
    pub fd: f64,
    /// Target modes with at least 1/(4K) of the samples.
    pub modes_covered: usize,
    /// Share of samples whose most likely component is their label.
    pub label_agreement: f64,
}

/// The whole table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransferResult {
    /// Source and target specs.
    pub source: String,
    /// The target spec.
    pub target: String,
    /// Source training steps.
    pub source_steps: u64,
    /// Fine-tuning steps.
    pub finetune_steps: u64,
    /// The settings, in table order.
    pub rows: Vec<TransferRow>,
    /// `n` real target items: their log-density and FD (the scale of the numbers).
    pub real: TransferRow,
    /// The source model's samples under the target (what fine-tuning starts from).
    pub source_model: TransferRow,
    /// Target classes.
    pub num_classes: usize,
}

/// Errors of the transfer experiment.
pub type TransferError = crate::PipelineError;

/// Where the experiment is.
#[derive(Debug, Clone, Copy)]
pub enum TransferStage {
    /// Training the source model (step, total).
    Source(Progress),
    /// Fine-tuning (step, total).
    Finetune(Progress),
    /// A setting was sampled and measured (index, total).
    Sampled(usize, usize),
}

/// Runs the experiment in `out` (`out/source`, `out/finetuned`; a finished run there with the
/// same configuration is reused).
pub fn transfer_experiment<B: AutodiffBackend>(
    cfg: &TransferConfig,
    out: &Path,
    device: &B::Device,
    progress: &mut dyn FnMut(TransferStage),
) -> Result<TransferResult, TransferError> {
    let opts = DataOptions {
        seed: cfg.source.seed,
        ..DataOptions::default()
    };
    let target = open_gmm(&cfg.target, &opts)?.ok_or_else(|| {
        TransferError::Config(format!(
            "the target '{}' is not a gmm spec (e.g. gmm16:5-9): the exact metrics need it",
            cfg.target
        ))
    })?;
    if open_gmm(&cfg.source.data, &opts)?.is_none() {
        return Err(TransferError::Config(format!(
            "the source '{}' is not a gmm spec (e.g. gmm16:0-4)",
            cfg.source.data
        )));
    }
    if cfg.n < 2 {
        return Err(TransferError::Config("--n must be at least 2".into()));
    }
    // 1. Source.
    let source_dir = out.join("source");
    if !finished_run(&source_dir, &cfg.source) {
        train::<B>(&cfg.source, &source_dir, false, device, |e| {
            if let TrainEvent::Progress(p) = e {
                progress(TransferStage::Source(p))
            }
        })?;
    }
    // 2. Fine-tuning onto the target's label set, noise dropout as the source's.
    let finetune = TrainConfig {
        data: cfg.target.clone(),
        init: Some(source_dir.join("ema.safetensors")),
        new_classes: true,
        steps: cfg.finetune_steps,
        warmup: cfg.source.warmup.min(cfg.finetune_steps / 4),
        checkpoint_every: cfg.finetune_steps,
        ..cfg.source.clone()
    };
    let ft_dir = out.join("finetuned");
    if !finished_run(&ft_dir, &finetune) {
        let _ = std::fs::remove_dir_all(&ft_dir);
        train::<B>(&finetune, &ft_dir, false, device, |e| {
            if let TrainEvent::Progress(p) = e {
                progress(TransferStage::Finetune(p))
            }
        })?;
    }
    let source_model = load_model::<B::InnerBackend>(&source_dir.join("ema.safetensors"), device)?;
    let model = load_model::<B::InnerBackend>(&ft_dir.join("ema.safetensors"), device)?;
    let k = model.config().num_classes;
    let mixture = target.mixture();
    let labels: Vec<i64> = (0..cfg.n as i64).map(|i| i % k.max(1) as i64).collect();
    let measure =
        |setting: &str, guidance: Guidance, x: &[f32]| -> Result<TransferRow, TransferError> {
            let report = gmm_metrics(mixture, x, Some(&labels), None)?;
            Ok(TransferRow {
                setting: setting.into(),
                guidance,
                log_density: report.mean_log_density,
                fd: fd_to_mixture(mixture, x)?,
                modes_covered: report.modes_covered,
                label_agreement: report.label_agreement.unwrap_or(0.0),
            })
        };
    // Real items and the source model's samples (its labels are the source's classes: label
    // agreement is meaningless there and reported as measured).
    let real: Vec<f32> = (0..cfg.n)
        .map(|i| {
            target
                .item(
                    i,
                    &mut crate::data::stream_rng(cfg.source.seed, 0x5245_414c, i as u64),
                )
                .map(|it| it.x)
        })
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    let real_row = measure("real target items", Guidance::none(), &real)?;
    let values = |x: burn::tensor::Tensor<B::InnerBackend, 4>| -> Vec<f32> {
        x.into_data().iter::<f32>().collect()
    };
    let source_labels: Vec<i64> = (0..cfg.n as i64)
        .map(|i| i % source_model.config().num_classes.max(1) as i64)
        .collect();
    let x = Sampled::Network(&source_model).generate(
        &source_labels,
        Guidance::none(),
        &cfg.sample,
        None,
    )?;
    let source_row = measure("source model, no fine-tuning", Guidance::none(), &values(x))?;

    let settings: Vec<(&str, Guidance)> = vec![
        ("FT", Guidance::none()),
        ("FT + NAG", Guidance::nag(cfg.nag)),
        ("FT + CFG", Guidance::cfg(cfg.cfg)),
        (
            "FT + CFG + NAG",
            Guidance::cfg_nag(cfg.cfg, cfg.nag_with_cfg),
        ),
        ("FT + DoG", Guidance::dog(cfg.cfg, 0.0)),
        ("FT + DoG + NAG", Guidance::dog(cfg.cfg, cfg.nag_with_cfg)),
    ];
    let mut rows = Vec::new();
    let total = settings.len();
    for (i, (name, guidance)) in settings.into_iter().enumerate() {
        let sampled = if guidance.dog {
            Sampled::WithReference {
                model: &model,
                reference: &source_model,
            }
        } else {
            Sampled::Network(&model)
        };
        let x = sampled.generate(&labels, guidance, &cfg.sample, None)?;
        rows.push(measure(name, guidance, &values(x))?);
        progress(TransferStage::Sampled(i + 1, total));
    }
    Ok(TransferResult {
        source: cfg.source.data.clone(),
        target: cfg.target.clone(),
        source_steps: cfg.source.steps,
        finetune_steps: cfg.finetune_steps,
        rows,
        real: real_row,
        source_model: source_row,
        num_classes: k,
    })
}

/// Runs [`transfer_experiment`] once per seed (training, fine-tuning and sampling seeds all set
/// to it), each in `out/seed-S` (or `out` itself for a single seed, as before), and summarises
/// the results. `progress` gets the seed's index with each stage.
pub fn transfer_experiment_seeds<B: AutodiffBackend>(
    cfg: &TransferConfig,
    seeds: &[u64],
    out: &Path,
    device: &B::Device,
    progress: &mut dyn FnMut(usize, TransferStage),
) -> Result<TransferSeeds, TransferError> {
    if seeds.is_empty() {
        return Err(TransferError::Config("--seeds must be at least 1".into()));
    }
    let mut runs = Vec::with_capacity(seeds.len());
    for (i, &seed) in seeds.iter().enumerate() {
        let mut one = cfg.clone();
        one.source.seed = seed;
        one.sample.seed = seed;
        let dir = if seeds.len() == 1 {
            out.to_path_buf()
        } else {
            out.join(format!("seed-{seed}"))
        };
        runs.push(transfer_experiment::<B>(
            &one,
            &dir,
            device,
            &mut |stage| progress(i, stage),
        )?);
    }
    Ok(summarize_seeds(seeds, runs))
}

/// Mean and sample standard deviation over seeds (`std` is 0 for one seed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanStd {
    /// Mean over seeds.
    pub mean: f64,
    /// Sample standard deviation (n − 1) over seeds.
    pub std: f64,
}

impl MeanStd {
    /// Of `values` (at least one).
    pub fn of(values: &[f64]) -> Self {
        let n = values.len().max(1) as f64;
        let mean = values.iter().sum::<f64>() / n;
        let std = if values.len() > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Self { mean, std }
    }
}

/// One setting over seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedRow {
    /// The setting's name, as in [`TransferRow::setting`].
    pub setting: String,
    /// Mean log-density over seeds.
    pub log_density: MeanStd,
    /// FD over seeds.
    pub fd: MeanStd,
}

/// What adding NAG does to a setting, paired per seed (same models, seeds and labels).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NagEffect {
    /// The setting without NAG ("FT", "FT + CFG", "FT + DoG").
    pub base: String,
    /// log-density(with NAG) − log-density(without), over seeds (positive: NAG helps).
    pub log_density_gain: MeanStd,
    /// FD(with NAG) − FD(without), over seeds (negative: NAG helps).
    pub fd_change: MeanStd,
    /// Seeds in which NAG raised the log-density.
    pub seeds_log_density_better: usize,
    /// Seeds in which NAG lowered the FD.
    pub seeds_fd_better: usize,
}

/// The table over several seeds (each seed trains its own source and fine-tuned models and
/// samples with its own noise).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransferSeeds {
    /// The seeds, in order.
    pub seeds: Vec<u64>,
    /// Every row (real items and source model first, then the settings) over seeds.
    pub rows: Vec<SeedRow>,
    /// NAG's effect on each base setting, paired per seed.
    pub nag_effect: Vec<NagEffect>,
    /// Each seed's full result.
    pub runs: Vec<TransferResult>,
}

/// Summarises per-seed results of [`transfer_experiment`] (same settings in each).
pub fn summarize_seeds(seeds: &[u64], runs: Vec<TransferResult>) -> TransferSeeds {
    let all_rows = |r: &TransferResult| -> Vec<TransferRow> {
        std::iter::once(r.real.clone())
            .chain(std::iter::once(r.source_model.clone()))
            .chain(r.rows.iter().cloned())
            .collect()
    };
    let per_run: Vec<Vec<TransferRow>> = runs.iter().map(all_rows).collect();
    let names: Vec<String> = per_run
        .first()
        .map(|rows| rows.iter().map(|r| r.setting.clone()).collect())
        .unwrap_or_default();
    let find = |rows: &[TransferRow], name: &str| rows.iter().find(|r| r.setting == name).cloned();
    let rows = names
        .iter()
        .map(|name| {
            let found: Vec<TransferRow> = per_run.iter().filter_map(|r| find(r, name)).collect();
            SeedRow {
                setting: name.clone(),
                log_density: MeanStd::of(&found.iter().map(|r| r.log_density).collect::<Vec<_>>()),
                fd: MeanStd::of(&found.iter().map(|r| r.fd).collect::<Vec<_>>()),
            }
        })
        .collect();
    let nag_effect = ["FT", "FT + CFG", "FT + DoG"]
        .iter()
        .filter_map(|base| {
            let pairs: Vec<(TransferRow, TransferRow)> = per_run
                .iter()
                .filter_map(|r| Some((find(r, base)?, find(r, &format!("{base} + NAG"))?)))
                .collect();
            (!pairs.is_empty()).then(|| {
                let gain: Vec<f64> = pairs
                    .iter()
                    .map(|(a, b)| b.log_density - a.log_density)
                    .collect();
                let change: Vec<f64> = pairs.iter().map(|(a, b)| b.fd - a.fd).collect();
                NagEffect {
                    base: (*base).into(),
                    log_density_gain: MeanStd::of(&gain),
                    fd_change: MeanStd::of(&change),
                    seeds_log_density_better: gain.iter().filter(|g| **g > 0.0).count(),
                    seeds_fd_better: change.iter().filter(|c| **c < 0.0).count(),
                }
            })
        })
        .collect();
    TransferSeeds {
        seeds: seeds.to_vec(),
        rows,
        nag_effect,
        runs,
    }
}

impl TransferResult {
    /// The table as markdown.
    pub fn markdown(&self) -> String {
        let r = self;
        let mut s = format!(
        "source `{}` ({} steps) → target `{}` ({} classes, {} fine-tuning steps); exact metrics \
         under the target mixture\n\n| setting | log-density ↑ | FD ↓ | modes | label agreement |\n\
         |---|---|---|---|---|\n",
        r.source, r.source_steps, r.target, r.num_classes, r.finetune_steps
    );
        for row in std::iter::once(&r.real)
            .chain(std::iter::once(&r.source_model))
            .chain(&r.rows)
        {
            s.push_str(&format!(
                "| {} | {:.1} | {:.2} | {}/{} | {:.2} |\n",
                row.setting,
                row.log_density,
                row.fd,
                row.modes_covered,
                r.num_classes,
                row.label_agreement
            ));
        }
        s
    }
}

impl TransferSeeds {
    /// Writes `results.json` and `table.md` into `out` atomically (one seed: that run's own
    /// files, as before `--seeds`; several: the summary with each run) and returns their texts.
    pub fn write(&self, out: &Path) -> Result<(String, String), TransferError> {
        let (json, md) = if self.runs.len() == 1 {
            (
                serde_json::to_string_pretty(&self.runs[0]),
                self.runs[0].markdown(),
            )
        } else {
            (serde_json::to_string_pretty(self), self.markdown())
        };
        let json = json.map_err(|e| TransferError::Config(format!("results.json: {e}")))?;
        write_atomic(&out.join("results.json"), json.as_bytes())?;
        write_atomic(&out.join("table.md"), md.as_bytes())?;
        Ok((json, md))
    }

    /// The table over seeds as markdown: every row as mean ± std, then NAG's paired effect.
    pub fn markdown(&self) -> String {
        let s = self;
        let first = &s.runs[0];
        let mut t = format!(
        "source `{}` ({} steps) → target `{}` ({} classes, {} fine-tuning steps); exact metrics \
         under the target mixture; mean ± std over seeds {:?}\n\n| setting | log-density ↑ | FD ↓ |\n\
         |---|---|---|\n",
        first.source, first.source_steps, first.target, first.num_classes, first.finetune_steps, s.seeds
    );
        for row in &s.rows {
            t.push_str(&format!(
                "| {} | {:.1} ± {:.1} | {:.2} ± {:.2} |\n",
                row.setting, row.log_density.mean, row.log_density.std, row.fd.mean, row.fd.std
            ));
        }
        t.push_str(
        "\nNAG's effect, paired per seed (same models, noise and labels):\n\n\
         | base | log-density gain | seeds better | FD change | seeds better |\n|---|---|---|---|---|\n",
    );
        for e in &s.nag_effect {
            t.push_str(&format!(
                "| {} | {:+.1} ± {:.1} | {}/{} | {:+.2} ± {:.2} | {}/{} |\n",
                e.base,
                e.log_density_gain.mean,
                e.log_density_gain.std,
                e.seeds_log_density_better,
                s.seeds.len(),
                e.fd_change.mean,
                e.fd_change.std,
                e.seeds_fd_better,
                s.seeds.len()
            ));
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(setting: &str, log_density: f64, fd: f64) -> TransferRow {
        TransferRow {
            setting: setting.into(),
            guidance: Guidance::none(),
            log_density,
            fd,
            modes_covered: 5,
            label_agreement: 1.0,
        }
    }

    fn result(ft: (f64, f64), ft_nag: (f64, f64)) -> TransferResult {
        TransferResult {
            source: "gmm16:0-4".into(),
            target: "gmm16:5-9".into(),
            source_steps: 1,
            finetune_steps: 1,
            rows: vec![row("FT", ft.0, ft.1), row("FT + NAG", ft_nag.0, ft_nag.1)],
            real: row("real target items", 10.0, 1.0),
            source_model: row("source model, no fine-tuning", -10.0, 9.0),
            num_classes: 5,
        }
    }

    #[test]
    fn seeds_summary_pairs_nag_with_its_base_per_seed() {
        let s = summarize_seeds(
            &[0, 1, 2],
            vec![
                result((-100.0, 30.0), (-90.0, 31.0)),
                result((-200.0, 40.0), (-210.0, 38.0)),
                result((-300.0, 50.0), (-280.0, 47.0)),
            ],
        );
        assert_eq!(s.rows.len(), 4);
        assert_eq!(s.rows[2].setting, "FT");
        assert!((s.rows[2].log_density.mean + 200.0).abs() < 1e-12);
        assert!((s.rows[2].log_density.std - 100.0).abs() < 1e-12);
        assert_eq!(s.rows[0].fd.std, 0.0);
        assert_eq!(s.nag_effect.len(), 1, "only FT has a NAG pair here");
        let e = &s.nag_effect[0];
        assert_eq!(e.base, "FT");
        // Gains 10, −10, 20: mean 20/3; FD changes +1, −2, −3.
        assert!((e.log_density_gain.mean - 20.0 / 3.0).abs() < 1e-12);
        assert!((e.fd_change.mean + 4.0 / 3.0).abs() < 1e-12);
        assert_eq!((e.seeds_log_density_better, e.seeds_fd_better), (2, 2));
        assert_eq!(MeanStd::of(&[5.0]).std, 0.0);
    }
}
