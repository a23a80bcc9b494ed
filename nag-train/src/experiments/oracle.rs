//! `experiment oracle`'s outputs: the markdown table, `results.json` and the plots of an
//! [`OracleStudy`] (the study itself is [`crate::study::oracle_study`]).

use std::path::Path;

use super::ExperimentError;
use crate::image::LinePlot;
use crate::oracle::NagForm;
use crate::report::side_by_side;
use crate::study::{OracleStudy, StudyRow};
use crate::train::write_atomic;

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

/// One setting as a row of the markdown table.
pub fn table_row(r: &StudyRow) -> String {
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

/// `results.json`, `table.md`, `sweep.png` (excess δ, log-density and FD against w),
/// `steps.png` (the same against the number of steps, when several) and `shift.png` (excess δ
/// along sampling for each w of the first group) into `out`, each written atomically.
pub fn write_outputs(out: &Path, s: &OracleStudy, command: &str) -> Result<(), ExperimentError> {
    std::fs::create_dir_all(out)
        .map_err(|e| ExperimentError::Config(format!("creating {}: {e}", out.display())))?;
    let json = serde_json::to_vec_pretty(&Saved {
        command: command.to_string(),
        study: s.clone(),
    })
    .map_err(|e| ExperimentError::Config(format!("encoding results.json: {e}")))?;
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
        })?,
        panel("exact log-density", "nats", &|r| r.log_density)?,
        panel("FD to the exact moments", "FD", &|r| r.fd)?,
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
            )?,
            panel(
                "exact log-density",
                "nats",
                Some(s.real.log_density),
                &|r| r.log_density,
            )?,
            panel("FD to the exact moments", "FD", Some(s.real.fd), &|r| r.fd)?,
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

/// What `results.json` holds: the study and the command that made it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    /// The command line.
    pub command: String,
    /// The study.
    #[serde(flatten)]
    pub study: OracleStudy,
}

/// Reads a `results.json` written by [`write_outputs`] (to re-render its table and plots).
pub fn read_results(path: &Path) -> Result<Saved, ExperimentError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ExperimentError::Config(format!("reading --from-results {}: {e}", path.display()))
    })?;
    serde_json::from_str(&text).map_err(|e| {
        ExperimentError::Config(format!(
            "{}: not the results.json of `experiment oracle`: {e}",
            path.display()
        ))
    })
}
