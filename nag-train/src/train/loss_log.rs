//! The run's loss log: `loss.csv` (read back on resume, rewritten as it grows) and its plot
//! `loss.png`.

use std::fs;
use std::path::Path;

use super::{write_atomic, TrainError};

pub(super) fn read_loss_log(path: &Path, upto: u64) -> Vec<(u64, f64)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut it = l.split(',');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .filter(|(s, _)| *s <= upto)
        .collect()
}

pub(super) fn write_loss_log(path: &Path, log: &[(u64, f64)]) -> Result<(), TrainError> {
    let mut s = String::from("step,loss\n");
    for (step, loss) in log {
        s.push_str(&format!("{step},{loss}\n"));
    }
    write_atomic(path, s.as_bytes())
}

pub(super) fn write_loss_plot(path: &Path, log: &[(u64, f64)]) -> Result<(), TrainError> {
    if log.len() < 2 {
        return Ok(());
    }
    let points: Vec<(f64, f64)> = log.iter().map(|&(s, l)| (s as f64, l)).collect();
    let mut plot = crate::image::LinePlot::new("training loss");
    plot.x_label = "step".into();
    plot.y_label = "loss".into();
    plot.log_y = true;
    plot.add_series("loss", points);
    plot.save(path).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(crate::error_chain(&e)),
    })
}
