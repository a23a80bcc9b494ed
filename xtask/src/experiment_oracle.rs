//! `cargo xtask experiment oracle`: parses the lists, runs [`oracle_study`], prints one row per
//! setting (or `--json`), writes `results.json`, `table.md` and the plots.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use nag_backends::{dispatch, BackendTask, DeviceSpec};
use nag_core::guidance::Interval;
use nag_train::generate::{parse_variance, SamplerKind};
use nag_train::image::LinePlot;
use nag_train::oracle::{NagForm, OracleError};
use nag_train::study::{oracle_study, OracleStudy, OracleStudyConfig, StudyRow};
use nag_train::train::write_atomic;

use nag_train::report::side_by_side;

/// Arguments of `cargo xtask experiment oracle`. Every list is comma-separated; the study
/// measures their product.
#[derive(Debug, Args)]
pub struct OracleArgs {
    /// Sampling steps (a list: `10,50,250`).
    #[arg(long, value_delimiter = ',', default_value = "50")]
    pub steps: Vec<usize>,
    /// Trajectories per setting.
    #[arg(long, default_value_t = 256)]
    pub n: usize,
    /// NAG weights.
    #[arg(long, value_delimiter = ',', default_value = "0,0.5,1,2,3,4")]
    pub nag: Vec<f64>,
    /// The oracle's noise-dropped branch: eps (a noise-dropout network's ε average), score
    /// (classifier NAG with the exact ∇log p(τ|x)), estimator (classifier NAG with a trained
    /// g_φ, needs --estimator), or several: `eps,score`.
    #[arg(long, value_delimiter = ',', default_value = "eps")]
    pub nag_form: Vec<String>,
    /// Errors of the oracle: none, eps-scale:K, eps-scale-cond:K, bias:B, smooth:S (a list).
    #[arg(long, value_delimiter = ',', default_value = "none")]
    pub oracle_error: Vec<String>,
    /// DDPM fixed variance: small (β̃_t), large (β_t, DiT's default without variance
    /// channels), or both: `small,large`.
    #[arg(long, value_delimiter = ',', default_value = "large")]
    pub variance: Vec<String>,
    /// NAG τ intervals `lo:hi` (paper clock), or `all`: e.g. `all,0:0.3,0.3:1`.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub nag_interval: Vec<String>,
    /// Trained runs on the same data (`cargo xtask train --data gmm`), measured next to the
    /// oracle, with their branches' error against the oracle's.
    #[arg(long, value_delimiter = ',')]
    pub runs: Vec<PathBuf>,
    /// A noise-level estimator trained on the same data (`cargo xtask estimator train --data
    /// gmm`), for `--nag-form estimator` (classifier NAG with its ∇log g_φ(τ|x)).
    #[arg(long)]
    pub estimator: Option<PathBuf>,
    /// The data: gmm, gmm8, gmm32, … (seed 0).
    #[arg(long, default_value = "gmm")]
    pub data: String,
    /// The oracle's objective: ddpm (ε, DiT's schedule) or linear / gvp / vp (velocity).
    #[arg(long, default_value = "ddpm")]
    pub objective: String,
    /// Sampler (default: ddpm for ddpm, sde otherwise).
    #[arg(long)]
    pub sampler: Option<String>,
    /// Seed of the trajectories, the real items and the calibration noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder.
    #[arg(long, default_value = "runs/experiment-oracle")]
    pub out: PathBuf,
    /// Re-render `table.md` and the plots (and rewrite `results.json`) from a saved
    /// `results.json` into `--out`, without measuring anything.
    #[arg(long)]
    pub from_results: Option<PathBuf>,
    /// Print one JSON object (`{"settings": [...]}`) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Device: cpu, flex, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn parse_interval(s: &str) -> Result<Option<Interval>> {
    if s == "all" {
        return Ok(None);
    }
    let parsed = s
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<f64>().ok()?, b.parse::<f64>().ok()?)));
    match parsed {
        Some((lo, hi)) if (0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi) && lo <= hi => {
            Ok(Some(Interval { lo, hi }))
        }
        _ => {
            bail!("--nag-interval '{s}': expected all or lo:hi with 0 ≤ lo ≤ hi ≤ 1 (paper clock)")
        }
    }
}

fn config(args: &OracleArgs, spec: DeviceSpec) -> Result<OracleStudyConfig> {
    Ok(OracleStudyConfig {
        data: args.data.clone(),
        objective: args.objective.clone(),
        sampler: args
            .sampler
            .as_deref()
            .map(SamplerKind::parse)
            .transpose()?,
        steps: args.steps.clone(),
        n: args.n,
        nag: args.nag.clone(),
        forms: args
            .nag_form
            .iter()
            .map(|f| NagForm::parse(f))
            .collect::<Result<_, _>>()?,
        errors: args
            .oracle_error
            .iter()
            .map(|e| OracleError::parse(e))
            .collect::<Result<_, _>>()?,
        variances: args
            .variance
            .iter()
            .map(|v| parse_variance(v))
            .collect::<Result<_, _>>()?,
        intervals: args
            .nag_interval
            .iter()
            .map(|i| parse_interval(i))
            .collect::<Result<_>>()?,
        runs: args.runs.clone(),
        estimator: args.estimator.clone(),
        seed: args.seed,
        threads: spec.concurrent_batches(),
    })
}

struct Task<'a> {
    cfg: &'a OracleStudyConfig,
    quiet: bool,
}

impl BackendTask for Task<'_> {
    type Output = Result<OracleStudy>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<OracleStudy> {
        let quiet = self.quiet;
        let mut progress = |row: &StudyRow| {
            if !quiet {
                eprintln!("{}  ({:.0}s)", table_row(row), row.seconds);
            }
        };
        Ok(oracle_study::<B>(self.cfg, &device, &mut progress)?)
    }
}

fn form_name(f: NagForm) -> &'static str {
    match f {
        NagForm::Eps => "eps",
        NagForm::Score => "score",
        NagForm::Estimator => "estimator",
    }
}

fn interval_name(i: Option<[f64; 2]>) -> String {
    i.map_or("all".into(), |[lo, hi]| format!("{lo}:{hi}"))
}

fn table_row(r: &StudyRow) -> String {
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {:+.4} ± {:.4} | {:+.4} | {:.1} | {:.1} | {} | {:.2} |",
        r.model,
        r.steps,
        r.variance,
        r.error,
        form_name(r.form),
        interval_name(r.interval),
        r.nag,
        r.excess_delta_late,
        r.excess_delta_late_se,
        r.delta_late,
        r.log_density,
        r.fd,
        r.modes,
        r.label_agreement
    )
}

/// The table as markdown.
pub fn markdown(s: &OracleStudy, command: &str) -> String {
    let mut t = String::from(
        "| model | steps | variance | error | form | NAG τ range | w | excess δ, last 20 % | raw δ | log-density (real: last row) | FD ↓ | modes | label agreement |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &s.settings {
        t.push_str(&table_row(r));
        t.push('\n');
    }
    t.push_str(&format!(
        "| real data | — | — | — | — | — | — | — | — | {:.1} | {:.1} (n = {}) | {} | — |\n",
        s.real.log_density, s.real.fd, s.n, s.real.modes
    ));
    if !s.branch_errors.is_empty() {
        t.push_str(
            "\nTrained networks against the oracle along their unguided trajectories \
             (relative squared error, `Σ|ε_net − ε_oracle|² / Σ|ε_oracle|²`):\n\n\
             | run | steps | (t, c) branch, last 20 % | (∅t, c) branch, last 20 % | (t, c), all steps | (∅t, c), all steps |\n|---|---|---|---|---|---|\n",
        );
        for b in &s.branch_errors {
            t.push_str(&format!(
                "| {} | {} | {:.4} | {:.4} | {:.4} | {:.4} |\n",
                b.model, b.steps, b.cond_late, b.dropped_late, b.cond_all, b.dropped_all
            ));
        }
    }
    t.push_str(&format!(
        "\n{} trajectories per setting, {} sampler, exact δ calibrated against forward-noised data; made by `{command}` in {:.1} min.\n",
        s.n,
        format!("{:?}", s.sampler).to_lowercase(),
        s.seconds / 60.0
    ));
    t
}

/// Rows grouped by everything but the NAG weight, in order of appearance.
fn groups(s: &OracleStudy) -> Vec<(String, Vec<&StudyRow>)> {
    let mut out: Vec<(String, Vec<&StudyRow>)> = Vec::new();
    for r in &s.settings {
        let model = if r.model == "oracle" {
            "oracle".to_string()
        } else {
            Path::new(&r.model)
                .file_name()
                .map_or(r.model.clone(), |f| f.to_string_lossy().into_owned())
        };
        let key = format!(
            "{model} {} {} {} {} {}",
            r.error,
            form_name(r.form),
            r.steps,
            r.variance,
            interval_name(r.interval)
        );
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(r),
            None => out.push((key, vec![r])),
        }
    }
    out
}

fn write_outputs(out: &Path, s: &OracleStudy, command: &str) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_vec_pretty(&Saved {
        command: command.to_string(),
        study: s.clone(),
    })?;
    write_atomic(&out.join("results.json"), &json)?;
    write_atomic(&out.join("table.md"), markdown(s, command).as_bytes())?;
    let gs = groups(s);
    let panel = |title: &str, y: &str, f: &dyn Fn(&StudyRow) -> f64| {
        let mut p = LinePlot::new(title);
        p.width = 480;
        p.height = 360;
        p.x_label = "NAG weight w".into();
        p.y_label = y.into();
        for (name, rows) in &gs {
            p.add_series(name, rows.iter().map(|r| (r.nag, f(r))).collect());
        }
        p.render()
    };
    let sweep = side_by_side(&[
        panel("excess noise shift, last 20 %", "excess delta", &|r| {
            r.excess_delta_late
        }),
        panel("exact log-density", "nats", &|r| r.log_density),
        panel("FD to the exact moments", "FD", &|r| r.fd),
    ]);
    write_atomic(&out.join("sweep.png"), &sweep.encode_png()?)?;
    // Against the number of steps, one series per setting but the steps.
    let mut step_values: Vec<usize> = s.settings.iter().map(|r| r.steps).collect();
    step_values.sort_unstable();
    step_values.dedup();
    if step_values.len() > 1 {
        let mut series: Vec<(String, Vec<&StudyRow>)> = Vec::new();
        for r in &s.settings {
            let key = format!(
                "{} {} {} {} w={}",
                r.error,
                form_name(r.form),
                r.variance,
                interval_name(r.interval),
                r.nag
            );
            match series.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(r),
                None => series.push((key, vec![r])),
            }
        }
        let (lo, hi) = (
            (step_values[0] as f64).log10(),
            (step_values[step_values.len() - 1] as f64).log10(),
        );
        let panel = |title: &str, y: &str, real: Option<f64>, f: &dyn Fn(&StudyRow) -> f64| {
            let mut p = LinePlot::new(title);
            p.width = 480;
            p.height = 360;
            p.x_label = "log10 sampling steps".into();
            p.y_label = y.into();
            if let Some(v) = real {
                p.add_series("real data", vec![(lo, v), (hi, v)]);
            }
            for (name, rows) in &series {
                p.add_series(
                    name,
                    rows.iter()
                        .map(|r| ((r.steps as f64).log10(), f(r)))
                        .collect(),
                );
            }
            p.render()
        };
        let img = side_by_side(&[
            panel(
                "excess noise shift, last 20 %",
                "excess delta",
                Some(0.0),
                &|r| r.excess_delta_late,
            ),
            panel(
                "exact log-density",
                "nats",
                Some(s.real.log_density),
                &|r| r.log_density,
            ),
            panel("FD to the exact moments", "FD", Some(s.real.fd), &|r| r.fd),
        ]);
        write_atomic(&out.join("steps.png"), &img.encode_png()?)?;
    }
    // Excess δ along sampling for every w of the first group.
    if let Some((name, rows)) = gs
        .first()
        .filter(|(_, rows)| rows.iter().all(|r| !r.shift.is_empty()))
    {
        let mut p = LinePlot::new(&format!("excess noise shift along sampling: {name}"));
        p.x_label = "nominal noise level".into();
        p.y_label = "excess delta".into();
        for r in rows {
            p.add_series(
                &format!("w = {}", r.nag),
                r.shift
                    .iter()
                    .filter_map(|st| Some((st.tau, st.excess_delta?)))
                    .collect(),
            );
        }
        p.save(&out.join("shift.png"))?;
    }
    Ok(())
}

/// What `results.json` holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    command: String,
    #[serde(flatten)]
    study: OracleStudy,
}

/// Runs `cargo xtask experiment oracle`.
pub fn run(args: &OracleArgs) -> Result<()> {
    if let Some(path) = &args.from_results {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --from-results {}", path.display()))?;
        let saved: Saved = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not the results.json of `experiment oracle`",
                path.display()
            )
        })?;
        write_outputs(&args.out, &saved.study, &saved.command)?;
        println!("{}", markdown(&saved.study, &saved.command));
        println!("re-rendered {} from {}", args.out.display(), path.display());
        return Ok(());
    }
    let spec = DeviceSpec::parse(&args.device)?;
    let cfg = config(args, spec)?;
    let study = dispatch(
        spec,
        Task {
            cfg: &cfg,
            quiet: args.json,
        },
    )??;
    let command = std::iter::once("cargo xtask experiment".to_string())
        .chain(std::env::args().skip(2))
        .collect::<Vec<_>>()
        .join(" ");
    write_outputs(&args.out, &study, &command)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&study)?);
    } else {
        println!("{}", markdown(&study, &command));
        println!(
            "wrote {0}/results.json, {0}/table.md, {0}/sweep.png, {0}/shift.png",
            args.out.display()
        );
    }
    Ok(())
}
