//! `xtask bench --json` reports the guided-step cost of CFG+NAG against CFG (issue 22's
//! `ratio_cfg_nag_vs_cfg`) next to the training-step and forward times. Only the report's
//! shape is checked here: timings are machine-dependent, so no test asserts a speed.

use std::process::Command;

#[test]
fn bench_json_reports_the_guided_step_ratio() {
    let o = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["bench", "--depth", "1", "--hidden", "64", "--heads", "4"])
        .args(["--size", "8", "--batch", "2", "--iters", "1", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in [
        "train_step_ms",
        "forward_ms",
        "cfg_step_ms",
        "cfg_nag_step_ms",
    ] {
        assert!(v["burn"][key].as_f64().unwrap() > 0.0, "{key}: {v}");
    }
    let ratio = v["ratio_cfg_nag_vs_cfg"].as_f64().unwrap();
    let expected =
        v["burn"]["cfg_nag_step_ms"].as_f64().unwrap() / v["burn"]["cfg_step_ms"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9, "{v}");
    // Without --torch there is nothing to compare with.
    assert!(v.get("ratio_train_step").is_none(), "{v}");
}
