//! What the nag-models test binaries share: fixture paths and scratch folders.
#![allow(dead_code)] // each test binary uses a part

use std::path::{Path, PathBuf};

/// `nag-models/tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// A fresh, empty folder `<tmp>/nag-<binary>-<pid>-<test>`, unique per test.
pub fn scratch(binary: &str, test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nag-{binary}-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
