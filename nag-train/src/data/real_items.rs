//! Choosing real items for a metric: `count` distinct indices from a seed, and their values.

use super::{stream_rng, DataError, Dataset};

/// The stream domain of real-item draws ("EVAL").
const DOMAIN_REAL: u64 = 0x4556_414C;

/// SplitMix64: a small deterministic generator for choosing real items.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let z = (self.0 ^ (self.0 >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..hi` (`hi > lo`; the modulo bias is below 2⁻⁴⁰ for any dataset size).
    fn below(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

/// `count` distinct indices of `0..len` (a partial Fisher–Yates shuffle, or rejection of
/// repeats for a small share of a large dataset), or `None` if `len < count`.
pub fn pick_indices(len: usize, count: usize, seed: u64) -> Option<Vec<usize>> {
    if len < count {
        return None;
    }
    let mut rng = SplitMix(seed ^ DOMAIN_REAL);
    if count.saturating_mul(4) >= len {
        let mut all: Vec<usize> = (0..len).collect();
        for i in 0..count {
            let j = rng.below(i, len);
            all.swap(i, j);
        }
        all.truncate(count);
        return Some(all);
    }
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let i = rng.below(0, len);
        if seen.insert(i) {
            out.push(i);
        }
    }
    Some(out)
}

/// Real items `indices` as one flat array and their labels (item `i` drawn from its own
/// stream of `seed`, so the values do not depend on which other items are chosen).
pub fn load_items(
    dataset: &dyn Dataset,
    indices: &[usize],
    seed: u64,
) -> Result<(Vec<f32>, Vec<i64>), DataError> {
    let mut x = Vec::new();
    let mut y = Vec::with_capacity(indices.len());
    for &i in indices {
        let item = dataset.item(i, &mut stream_rng(seed, DOMAIN_REAL, 1 + i as u64))?;
        x.extend(item.x);
        y.push(item.y);
    }
    Ok((x, y))
}

#[cfg(test)]
mod tests {
    use super::pick_indices;

    #[test]
    fn picks_are_distinct_in_range_and_seeded() {
        for (len, count) in [(10, 10), (100, 30), (10_000, 50)] {
            let a = pick_indices(len, count, 7).unwrap();
            let mut s = a.clone();
            s.sort_unstable();
            s.dedup();
            assert_eq!(s.len(), count);
            assert!(a.iter().all(|&i| i < len));
            assert_eq!(a, pick_indices(len, count, 7).unwrap());
            if count < len {
                assert_ne!(a, pick_indices(len, count, 8).unwrap());
            }
        }
        assert!(pick_indices(5, 6, 0).is_none());
    }
}
