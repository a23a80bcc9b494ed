//! [`read_rate`]: how fast a dataset serves random items to parallel readers, and the resident
//! memory while it does (`cargo xtask latents bench` on a latent store).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

use super::latent_store::resident_memory;
use super::{stream_rng, DataError, Dataset};

/// What [`read_rate`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadRate {
    /// Items read, by all threads together.
    pub items: u64,
    /// Wall-clock seconds of reading.
    pub seconds: f64,
    /// Peak resident memory (`VmRSS`, bytes) sampled every 50 ms while reading; 0 where it
    /// cannot be read.
    pub peak_rss: u64,
}

impl ReadRate {
    /// Items per second.
    pub fn items_per_second(&self) -> f64 {
        self.items as f64 / self.seconds
    }
}

/// Reads random items of `ds` on `threads` threads for about `seconds` (thread `t` draws its
/// indices from `stream_rng(seed, 1, t)`), as the trainer's loader workers do.
pub fn read_rate(
    ds: &dyn Dataset,
    threads: usize,
    seconds: f64,
    seed: u64,
) -> Result<ReadRate, DataError> {
    if threads == 0 || !(seconds.is_finite() && seconds > 0.0) || ds.is_empty() {
        return Err(DataError::Config(format!(
            "read rate: needs at least 1 thread, a time > 0 and items (got {threads} threads, {seconds} s, {} items)",
            ds.len()
        )));
    }
    let n = ds.len();
    let done = AtomicBool::new(false);
    let items = AtomicU64::new(0);
    let peak_rss = AtomicU64::new(0);
    let start = Instant::now();
    let limit = Duration::from_secs_f64(seconds);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Some((rss, _)) = resident_memory() {
                    peak_rss.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let readers: Vec<_> = (0..threads as u64)
            .map(|t| {
                let items = &items;
                s.spawn(move || -> Result<(), DataError> {
                    let mut order = stream_rng(seed, 1, t);
                    let mut checksum = 0f32;
                    let mut k = 0u64;
                    while start.elapsed() < limit {
                        for _ in 0..64 {
                            let index = order.random_range(0..n);
                            let item = ds.item(index, &mut stream_rng(seed, 2, t << 40 | k))?;
                            checksum += item.x.first().copied().unwrap_or(0.0);
                            k += 1;
                        }
                        items.fetch_add(64, Ordering::Relaxed);
                    }
                    std::hint::black_box(checksum);
                    Ok(())
                })
            })
            .collect();
        let results: Vec<Result<(), DataError>> = readers
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect();
        done.store(true, Ordering::Relaxed);
        results.into_iter().collect::<Result<(), DataError>>()
    })?;
    Ok(ReadRate {
        items: items.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
        peak_rss: peak_rss.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{open_dataset, DataOptions};

    #[test]
    fn reads_items_and_refuses_bad_settings() {
        let ds = open_dataset("gmm", &DataOptions::default()).unwrap();
        let r = read_rate(ds.as_ref(), 2, 0.05, 0).unwrap();
        assert!(r.items >= 128 && r.items.is_multiple_of(64), "{r:?}");
        assert!(r.seconds >= 0.05 && r.items_per_second() > 0.0, "{r:?}");
        assert!(read_rate(ds.as_ref(), 0, 1.0, 0).is_err());
        assert!(read_rate(ds.as_ref(), 1, f64::NAN, 0).is_err());
    }
}
