//! Signals the CLI turns into clear behaviour.

/// File-size limit (`ulimit -f`) exceeded: by default SIGXFSZ kills the process with no
/// message; ignored, the write fails with `EFBIG` and the command stops with an error naming
/// the file (as for a full disk). Call once, first thing in `main`.
pub fn ignore_file_size_signal() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: installs the predefined SIG_IGN disposition; no handler code runs.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// During training: the first Ctrl-C / SIGTERM asks the trainer to stop at the next step
/// boundary and write a checkpoint; a second one exits at once (the last checkpoint stays).
pub fn stop_training_on_signal() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static ASKED: AtomicBool = AtomicBool::new(false);
    let installed = ctrlc::set_handler(|| {
        if ASKED.swap(true, Ordering::SeqCst) {
            eprintln!(
                "\nstopping now; the last complete checkpoint is kept (--resume continues from it)"
            );
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step and writing a checkpoint (press Ctrl-C again to stop at once)");
        nag_train::train::request_stop();
    });
    if let Err(e) = installed {
        eprintln!("note: Ctrl-C will stop training without a final checkpoint ({e})");
    }
}
