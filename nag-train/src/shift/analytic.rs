//! The analytic noise shift of a schedule (`cargo xtask shift` without `--run`): δ to first
//! order and exactly, from `σ(τ+δ)² = σ(τ)² + σ_e²` (nag-core's [`shift`](nag_core::shift)), on
//! a grid over τ.

use nag_core::schedule::{NoiseSchedule, Schedule};
use nag_core::shift;
use serde::Serialize;

use super::ShiftError;

/// One grid point of [`AnalyticShift`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalyticRow {
    /// Paper-clock τ.
    pub tau: f64,
    /// DDPM table index (DDPM schedules only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// `σ(τ)` (not serialised: the JSON report predates it).
    #[serde(skip)]
    pub sigma: f64,
    /// First-order δ; `null` where it is undefined.
    pub delta_first_order: Option<f64>,
    /// Exact δ; `null` where σ² + σ_e² is beyond the schedule's range.
    pub delta_exact: Option<f64>,
    /// Discrete shift in table steps (DDPM schedules only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_steps: Option<f64>,
}

/// The shift table of one schedule and error size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalyticShift {
    /// The schedule's name, lower case.
    pub schedule: String,
    /// Standard deviation σ_e of the accumulated error.
    pub sigma_e: f64,
    /// One row per grid point, τ increasing.
    pub rows: Vec<AnalyticRow>,
    /// Whether the schedule is a DDPM table (rows carry `index` and `delta_steps`).
    #[serde(skip)]
    pub ddpm: bool,
}

/// The table `xtask shift` prints: δ to first order and exact at each grid point (DDPM: with
/// the table index and δ in steps); — where there is no solution in range. Each line ends with
/// a newline.
impl std::fmt::Display for AnalyticShift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let report = self;
        let fmt = |v: Option<f64>| v.map_or_else(|| "—".to_string(), |v| format!("{v:.6}"));
        writeln!(
            f,
            "noise shift δ on '{}' for σ_e = {} (σ(τ+δ)² = σ(τ)² + σ_e²; — = no solution in range)",
            report.schedule, report.sigma_e
        )?;
        if report.ddpm {
            writeln!(
                f,
                "{:>6} {:>8} {:>8} {:>12} {:>12} {:>10}",
                "index", "τ", "σ(τ)", "δ 1st order", "δ exact", "δ steps"
            )?;
        } else {
            writeln!(
                f,
                "{:>8} {:>8} {:>12} {:>12}",
                "τ", "σ(τ)", "δ 1st order", "δ exact"
            )?;
        }
        for r in &report.rows {
            if report.ddpm {
                writeln!(
                    f,
                    "{:>6} {:>8.4} {:>8.4} {:>12} {:>12} {:>10}",
                    r.index.unwrap_or(0),
                    r.tau,
                    r.sigma,
                    fmt(r.delta_first_order),
                    fmt(r.delta_exact),
                    r.delta_steps.map_or("—".into(), |v| format!("{v:.2}"))
                )?;
            } else {
                writeln!(
                    f,
                    "{:>8.4} {:>8.4} {:>12} {:>12}",
                    r.tau,
                    r.sigma,
                    fmt(r.delta_first_order),
                    fmt(r.delta_exact)
                )?;
            }
        }
        Ok(())
    }
}

/// δ on `points` grid points of the schedule named `schedule`: DDPM tables at evenly spaced
/// indices `p·(n−1)/(points−1)`, continuous schedules at `τ = p/points`, `p = 1..=points`.
pub fn analytic_shift(
    schedule: &str,
    sigma_e: f64,
    points: usize,
) -> Result<AnalyticShift, ShiftError> {
    if !(sigma_e.is_finite() && sigma_e >= 0.0) {
        return Err(ShiftError::Other(format!(
            "--sigma-e must be a finite number ≥ 0 (got {sigma_e}): it is the standard deviation of the accumulated error"
        )));
    }
    if points == 0 || points > 100_000 {
        return Err(ShiftError::Other(format!(
            "--points must be between 1 and 100000 (got {points})"
        )));
    }
    let named =
        Schedule::from_name(schedule).map_err(|e| ShiftError::Other(format!("--schedule: {e}")))?;
    let row = |tau: f64, index: Option<usize>| AnalyticRow {
        tau,
        index,
        sigma: named.sigma(tau),
        delta_first_order: shift::first_order(&named, tau, sigma_e).ok(),
        delta_exact: shift::exact(&named, tau, sigma_e).ok(),
        delta_steps: match (&named, index) {
            (Schedule::Ddpm(table), Some(i)) => shift::discrete(table, i, sigma_e).ok(),
            _ => None,
        },
    };
    let rows = match &named {
        Schedule::Ddpm(table) => {
            let n = table.len();
            (0..points)
                .map(|p| {
                    let index = if points == 1 {
                        0
                    } else {
                        p * (n - 1) / (points - 1)
                    };
                    row(table.tau(index), Some(index))
                })
                .collect()
        }
        _ => (1..=points)
            .map(|p| row(p as f64 / points as f64, None))
            .collect(),
    };
    Ok(AnalyticShift {
        schedule: schedule.to_ascii_lowercase(),
        sigma_e,
        rows,
        ddpm: matches!(named, Schedule::Ddpm(_)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_and_errors() {
        let t = analytic_shift("DDPM-Linear", 0.05, 3).unwrap();
        assert_eq!(t.schedule, "ddpm-linear");
        assert!(t.ddpm);
        let idx: Vec<_> = t.rows.iter().map(|r| r.index.unwrap()).collect();
        assert_eq!(idx, [0, 499, 999]);
        // (At the last index a shift would leave the table: none there.)
        assert!(t.rows[..2].iter().all(|r| r.delta_steps.is_some()));
        let c = analytic_shift("linear", 0.05, 4).unwrap();
        let taus: Vec<_> = c.rows.iter().map(|r| r.tau).collect();
        assert_eq!(taus, [0.25, 0.5, 0.75, 1.0]);
        // Away from τ = 1 the exact shift is positive and close to first order for small σ_e.
        let r = &c.rows[1];
        let (a, b) = (r.delta_first_order.unwrap(), r.delta_exact.unwrap());
        assert!(a > 0.0 && b > 0.0 && (a - b).abs() < 0.1 * a, "{a} {b}");
        for (s, p, flag) in [
            (-1.0, 3, "--sigma-e"),
            (f64::NAN, 3, "--sigma-e"),
            (0.1, 0, "--points"),
        ] {
            let e = analytic_shift("linear", s, p).unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        }
        let e = analytic_shift("nope", 0.1, 3).unwrap_err().to_string();
        assert!(e.contains("--schedule"), "{e}");
    }
}
