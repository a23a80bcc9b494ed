//! The GPU check's CPU dry pass (issue 23): `scripts/gpu-check.sh --dry-run` runs every stage
//! of `xtask gpu-check` on the CPU backend with the tiny network and writes a complete
//! report, so a mistake in the script or the binary costs no GPU time. Also: a spent budget
//! leaves every stage listed as missing (the script stops by itself), and bad options are
//! errors naming them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nag-gpu-check-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn script(out: &Path, extra: &[&str]) -> Output {
    Command::new("bash")
        .current_dir(root())
        .arg("scripts/gpu-check.sh")
        .args(["--dry-run", "--bin", XTASK, "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn report(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_dry_pass_runs_every_stage_and_writes_the_report() {
    let out = out_dir("dry");
    let o = script(&out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&out);
    assert_eq!(r["backend_device"], "cpu");
    assert_eq!(r["preset"], "tiny");
    assert_eq!(r["model"]["depth"], 4);
    // cpu against cpu from the same weights and inputs: equal, and not vacuously (the
    // random weights give outputs, losses, gradients and samples that are not 0).
    for part in ["forward", "loss", "grad_norm", "gradients", "sample"] {
        let d = &r["parity"][part];
        assert!(d["max_rel"].as_f64().unwrap() <= 1e-6, "{part}: {d}");
        assert!(d["ref_max_abs"].as_f64().unwrap() > 1e-3, "{part}: {d}");
    }
    assert!(r["parity_max_rel"].as_f64().unwrap() <= 1e-6);
    let burn = r["burn"].as_array().unwrap();
    assert_eq!(burn.len(), 1);
    assert_eq!(burn[0]["precision"], "f32");
    assert!(burn[0]["train_step_ms"].as_f64().unwrap() > 0.0);
    for g in ["nag", "cfg+nag"] {
        assert!(r["sample_images_per_s"][g].as_f64().unwrap() > 0.0, "{r}");
    }
    // PyTorch is measured only where python3 has torch (not on CI).
    let missing: Vec<&str> = r["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(missing.is_empty() || missing == ["torch"], "{missing:?}");
    assert_eq!(r["ratio_train_step"].is_null(), missing == ["torch"]);
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(md.contains("| parity vs CPU, f32"), "{md}");
    assert!(md.contains("cfg+nag (3 branches)"), "{md}");
    for log in ["speed", "parity", "sample", "torch"] {
        assert!(
            out.join("logs").join(format!("{log}.log")).is_file(),
            "{log}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_spent_budget_skips_every_stage_and_still_reports() {
    let out = out_dir("budget");
    let o = script(&out, &["--budget", "0"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("skipped, the budget is spent"),
        "{}",
        text(&o)
    );
    let r = report(&out);
    assert_eq!(r["missing"].as_array().unwrap().len(), 4, "{r}");
    assert!(r["parity_max_rel"].is_null() && r["model"].is_null());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bad_options_are_named() {
    let out = out_dir("bad");
    let o = Command::new("bash")
        .current_dir(root())
        .args(["scripts/gpu-check.sh", "--bin", "/nonexistent/xtask"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("no executable at --bin"), "{}", text(&o));

    let o = script(&out, &["--budget", "soon"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("--budget must be whole seconds"),
        "{}",
        text(&o)
    );

    let run = |args: &[&str]| {
        Command::new(XTASK)
            .arg("gpu-check")
            .args(args)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let o = run(&["--stage", "speed", "--device", "cpu", "--precision", "bf16"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("bf16 needs a CUDA device"),
        "{}",
        text(&o)
    );
    let o = run(&["--stage", "speed", "--device", "cpu", "--precision", "f8"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("unknown precision 'f8'"), "{}", text(&o));
    assert!(!out.join("speed.json").exists());
    let o = Command::new(XTASK)
        .args(["gpu-check", "--stage", "report", "--device", "cpu", "--out"])
        .arg(out.join("never-made"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("run the other stages first"),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&out);
}
