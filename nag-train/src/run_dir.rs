//! A training run's folder on disk: one writer at a time, checkpoints that prove they are
//! whole, and the choice of the checkpoint to resume from.
//!
//! - `.lock`: an OS file lock (`flock` on Unix) held for the whole run, with the holder's pid
//!   inside; the OS releases it when the process dies, so a killed run never blocks the next.
//! - `checkpoints/step-XXXXXXX/`: written as `step-XXXXXXX.partial/`, every file fsynced, then
//!   sealed by `manifest.json` (each file's size and SHA-256, written last and atomically), then
//!   renamed into place. A checkpoint is good only if its manifest verifies.
//! - Resuming takes the newest good checkpoint; a damaged or incomplete newer one is skipped
//!   with the reason, and older ones beyond `keep` are deleted after each new checkpoint.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The name of a checkpoint's manifest, written last.
pub const MANIFEST: &str = "manifest.json";

/// Errors of the run folder.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// Another process holds the run's lock.
    #[error("{dir} is in use by another nag process{holder}: wait for it to finish, stop it, or choose another --out")]
    Locked {
        /// The run folder.
        dir: PathBuf,
        /// " (pid N)" when the holder wrote its pid.
        holder: String,
    },
    /// I/O on a named path.
    #[error("{path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io<T>(path: &Path, r: io::Result<T>) -> Result<T, RunDirError> {
    r.map_err(|source| RunDirError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The run's lock, held until dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Locks `run_dir` (which must exist) for this process, or says who holds it.
    pub fn acquire(run_dir: &Path) -> Result<Self, RunDirError> {
        let path = run_dir.join(".lock");
        let mut file = io(
            &path,
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path),
        )?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!(" (pid {pid})"),
                    Err(_) => String::new(),
                };
                return Err(RunDirError::Locked {
                    dir: run_dir.to_path_buf(),
                    holder,
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(RunDirError::Io { path, source: e }),
        }
        // The pid is for the message of a process that finds the lock taken.
        io(&path, file.set_len(0))?;
        io(&path, file.rewind())?;
        io(&path, write!(file, "{}", std::process::id()))?;
        io(&path, file.flush())?;
        Ok(Self { _file: file })
    }
}

/// One file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// File name inside the checkpoint folder.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the contents, lowercase hex.
    pub sha256: String,
}

/// What a complete checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Its files, sorted by name.
    pub files: Vec<ManifestEntry>,
}

/// SHA-256 and size of a file, read in 1 MiB chunks.
fn digest(path: &Path) -> io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    Ok((bytes, hex))
}

/// Seals the checkpoint folder `dir`: fsyncs every file in it, then writes `manifest.json`
/// (atomically, last) with their sizes and SHA-256.
pub fn seal(dir: &Path) -> Result<Manifest, RunDirError> {
    let mut names: Vec<String> = io(dir, fs::read_dir(dir))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != MANIFEST && !n.contains(".tmp-"))
        .collect();
    names.sort();
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(&name);
        io(&path, File::open(&path).and_then(|f| f.sync_all()))?;
        let (bytes, sha256) = io(&path, digest(&path))?;
        files.push(ManifestEntry {
            name,
            bytes,
            sha256,
        });
    }
    let manifest = Manifest { files };
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
    let path = dir.join(MANIFEST);
    io(
        &path,
        nag_models::checkpoint::write_atomic(&path, |w| w.write_all(&json)),
    )?;
    Ok(manifest)
}

/// Checks the checkpoint folder `dir` against its manifest: `Ok` if every listed file is there
/// with its size and SHA-256, else the first problem in words.
pub fn verify(dir: &Path) -> Result<(), String> {
    let path = dir.join(MANIFEST);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err("it has no manifest.json (its write did not finish)".into())
        }
        Err(e) => return Err(format!("manifest.json cannot be read: {e}")),
    };
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| format!("manifest.json is damaged: {e}"))?;
    if manifest.files.is_empty() {
        return Err("manifest.json lists no files".into());
    }
    for f in &manifest.files {
        if f.name.contains('/') || f.name.contains('\\') || f.name == ".." {
            return Err(format!(
                "manifest.json names '{}' outside the folder",
                f.name
            ));
        }
        let p = dir.join(&f.name);
        let size = match fs::metadata(&p) {
            Ok(m) => m.len(),
            Err(_) => return Err(format!("{} is missing", f.name)),
        };
        if size != f.bytes {
            return Err(format!(
                "{} has {size} bytes, the manifest says {} (truncated or replaced)",
                f.name, f.bytes
            ));
        }
        match digest(&p) {
            Ok((_, sha)) if sha == f.sha256 => {}
            Ok(_) => return Err(format!("{} does not match its checksum (damaged)", f.name)),
            Err(e) => return Err(format!("{} cannot be read: {e}", f.name)),
        }
    }
    Ok(())
}

/// The folder of checkpoint `step`.
pub fn checkpoint_dir(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step-{step:07}"))
}

/// The run's checkpoint folders (`step-N`, not `.partial`), newest first.
pub fn checkpoints(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = fs::read_dir(run_dir.join("checkpoints")) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
            Some((step, e.path()))
        })
        .collect();
    found.sort_by_key(|c| std::cmp::Reverse(c.0));
    found
}

/// A checkpoint that resuming passed over, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The checkpoint folder.
    pub dir: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// Whether `dir` may be resumed from: it verifies against its manifest, or it is the one a
/// run of an older `nag` (no manifests) named in `checkpoints/latest`.
pub fn usable(run_dir: &Path, dir: &Path) -> Result<(), String> {
    match verify(dir) {
        Ok(()) => Ok(()),
        Err(reason) if !dir.join(MANIFEST).exists() => {
            let latest = fs::read_to_string(run_dir.join("checkpoints").join("latest"))
                .map(|l| l.trim().to_string())
                .unwrap_or_default();
            let legacy = latest
                == dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
                && checkpoints(run_dir)
                    .iter()
                    .all(|(_, d)| !d.join(MANIFEST).exists())
                && dir.join("state.json").is_file();
            if legacy {
                Ok(())
            } else {
                Err(reason)
            }
        }
        Err(reason) => Err(reason),
    }
}

/// Deletes all but the `keep` newest checkpoints, and leftover `.partial` folders.
pub fn prune(run_dir: &Path, keep: usize) -> Result<(), RunDirError> {
    for (_, dir) in checkpoints(run_dir).into_iter().skip(keep.max(1)) {
        io(&dir, fs::remove_dir_all(&dir))?;
    }
    if let Ok(entries) = fs::read_dir(run_dir.join("checkpoints")) {
        for e in entries.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().ends_with(".partial") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nag-run-dir-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_sealed_checkpoint_verifies_and_any_damage_is_named() {
        let run = temp("seal");
        let dir = checkpoint_dir(&run, 3);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("model.mpk"), vec![7u8; 5000]).unwrap();
        fs::write(dir.join("state.json"), b"{\"step\":3}").unwrap();
        assert!(verify(&dir).unwrap_err().contains("no manifest"));
        let m = seal(&dir).unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(verify(&dir), Ok(()));
        // Truncated.
        let f = OpenOptions::new()
            .write(true)
            .open(dir.join("model.mpk"))
            .unwrap();
        f.set_len(4000).unwrap();
        assert!(verify(&dir).unwrap_err().contains("truncated"));
        // Same size, other bytes.
        fs::write(dir.join("model.mpk"), vec![8u8; 5000]).unwrap();
        assert!(verify(&dir).unwrap_err().contains("checksum"));
        // Missing.
        fs::remove_file(dir.join("model.mpk")).unwrap();
        assert!(verify(&dir).unwrap_err().contains("missing"));
        // Zero-length manifest.
        fs::write(dir.join(MANIFEST), b"").unwrap();
        assert!(verify(&dir).unwrap_err().contains("damaged"));
        let _ = fs::remove_dir_all(&run);
    }

    #[test]
    fn prune_keeps_the_newest_and_checkpoints_sort_by_step() {
        let run = temp("prune");
        for s in [2u64, 10, 4, 8] {
            fs::create_dir_all(checkpoint_dir(&run, s)).unwrap();
        }
        fs::create_dir_all(run.join("checkpoints/step-0000012.partial")).unwrap();
        let steps: Vec<u64> = checkpoints(&run).iter().map(|c| c.0).collect();
        assert_eq!(steps, vec![10, 8, 4, 2]);
        prune(&run, 2).unwrap();
        let steps: Vec<u64> = checkpoints(&run).iter().map(|c| c.0).collect();
        assert_eq!(steps, vec![10, 8]);
        assert!(!run.join("checkpoints/step-0000012.partial").exists());
        let _ = fs::remove_dir_all(&run);
    }

    #[test]
    fn a_second_lock_names_the_holder_and_a_released_lock_is_free() {
        let run = temp("lock");
        let first = RunLock::acquire(&run).unwrap();
        let err = RunLock::acquire(&run).unwrap_err().to_string();
        assert!(err.contains("in use"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        // The file stays behind, as after a killed process: it does not block.
        assert!(run.join(".lock").exists());
        let _again = RunLock::acquire(&run).unwrap();
        let _ = fs::remove_dir_all(&run);
    }
}
