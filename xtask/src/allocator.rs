//! glibc malloc settings for the CPU backends' allocation pattern.
//!
//! A CPU training step allocates and frees the same large activation buffers (up to tens of
//! MiB) hundreds of times. glibc's defaults serve every block over its mmap threshold with a
//! fresh `mmap` and give freed memory back to the kernel at once (`munmap`, heap trimming), so
//! each reuse pays zeroed page faults again: on 2 cores that was 6–20 s of system time per 80
//! default training steps, and page faults dominated the elementwise ops. Keeping freed memory
//! in the process (high mmap and trim thresholds, a 64 MiB top pad) took those 80 steps from
//! 32–36 s to 28–32 s with system time 0.3 s; the losses are identical, since only where the
//! bytes live changes. The price is a higher resident set, bounded by the peak working set.
//!
//! Equivalent to `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=…:glibc.malloc.trim_threshold=…`;
//! set here so `cargo xtask` gets it without an environment variable. A no-op off glibc.

/// Applies the settings above; call once, first thing in `main`, before other threads start.
pub fn tune_for_tensors() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc caps the mmap threshold at 32 MiB on 64-bit (HEAP_MAX / 2 on 32-bit); a larger
        // value is rejected, so ask for the cap.
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = 1 << 30;
        const TOP_PAD: libc::c_int = 64 << 20;
        // SAFETY: `mallopt` only changes allocator parameters; it is called before any other
        // thread exists, and a rejected value (return 0) leaves glibc's default in place.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            libc::mallopt(libc::M_TOP_PAD, TOP_PAD);
        }
    }
}
