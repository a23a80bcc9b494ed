//! A contiguous range of another dataset's items (a train split with the rest held out).

use std::ops::Range;
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;

use super::{DataError, Dataset, Item};

/// Items `range` of `inner`, renumbered from 0.
pub struct Subset {
    /// The whole dataset.
    pub inner: Arc<dyn Dataset>,
    /// The items kept.
    pub range: Range<usize>,
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.range.len()
    }
    fn item(&self, index: usize, rng: &mut ChaCha8Rng) -> Result<Item, DataError> {
        if index >= self.range.len() {
            return Err(DataError::Index {
                index,
                len: self.range.len(),
            });
        }
        self.inner.item(self.range.start + index, rng)
    }
    fn shape(&self) -> [usize; 3] {
        self.inner.shape()
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn name(&self) -> String {
        format!(
            "{} [{}..{}]",
            self.inner.name(),
            self.range.start,
            self.range.end
        )
    }
    fn skipped(&self) -> usize {
        self.inner.skipped()
    }
}
