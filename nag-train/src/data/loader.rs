//! A deterministic background batch loader.
//!
//! The loader reads an endless stream of positions `p = 0, 1, 2, …`; position `p` is item
//! `perm_e[p mod len]` of epoch `e = p div len`, where `perm_e` is a permutation seeded by
//! `(seed, e)` (the identity when shuffling is off). Batch `s` holds positions
//! `s·B .. (s+1)·B`, so epochs need not align with batches and no item is dropped. Item `p` gets
//! its augmentation rng from `(seed, p)`. Batch `s` is therefore a pure function of
//! `(dataset, seed, B, s)` ([`batch_at`]): worker threads compute batches in any order and the
//! loader hands them out in step order, so the result is the same for any number of workers
//! and any timing. [`Loader::skip_batches`] / [`LoaderConfig::start_step`] resume at a step.

use std::collections::BTreeMap;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use rand::Rng;

use super::{stream_rng, Batch, DataError, Dataset};

const DOMAIN_PERM: u64 = 0x5045_524D; // "PERM"
const DOMAIN_ITEM: u64 = 0x4954_454D; // "ITEM"

/// Loader settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Items per batch (≥ 1).
    pub batch_size: usize,
    /// Seed of the shuffling and augmentation.
    pub seed: u64,
    /// Worker threads; 0 computes batches on the calling thread.
    pub workers: usize,
    /// Batches computed ahead of the consumer (at least `workers` are in flight).
    pub prefetch: usize,
    /// Shuffle each epoch (else positions follow index order).
    pub shuffle: bool,
    /// Index of the first batch produced (for resuming; with gradient accumulation this is
    /// `optimizer step × micro-batches per step`).
    pub start_step: u64,
    /// Sharding: the loader's batch `k` is batch `k·shards + shard` of the whole stream
    /// (defaults 0 of 1). A data-parallel replica whose share of every step is one contiguous
    /// run of the global batch reads only that.
    pub shard: u64,
    /// See `shard` (≥ 1).
    pub shards: u64,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            seed: 0,
            workers: 2,
            prefetch: 4,
            shuffle: true,
            start_step: 0,
            shard: 0,
            shards: 1,
        }
    }
}

/// Position → index mapping with a small cache of epoch permutations.
struct Order {
    len: usize,
    seed: u64,
    shuffle: bool,
    cache: Mutex<Vec<(u64, Arc<Vec<usize>>)>>,
}

impl Order {
    fn new(len: usize, seed: u64, shuffle: bool) -> Self {
        Self {
            len,
            seed,
            shuffle,
            cache: Mutex::new(Vec::new()),
        }
    }

    fn permutation(&self, epoch: u64) -> Arc<Vec<usize>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, p)) = cache.iter().find(|(e, _)| *e == epoch) {
            return p.clone();
        }
        let mut rng = stream_rng(self.seed, DOMAIN_PERM, epoch);
        let mut perm: Vec<usize> = (0..self.len).collect();
        for i in (1..self.len).rev() {
            perm.swap(i, rng.random_range(0..=i));
        }
        let perm = Arc::new(perm);
        if cache.len() >= 3 {
            cache.remove(0);
        }
        cache.push((epoch, perm.clone()));
        perm
    }

    fn index(&self, position: u64) -> usize {
        let (epoch, offset) = (
            position / self.len as u64,
            (position % self.len as u64) as usize,
        );
        if self.shuffle {
            self.permutation(epoch)[offset]
        } else {
            offset
        }
    }
}

/// Batch `step` of the stream described in the [module docs](self).
pub fn batch_at(
    dataset: &dyn Dataset,
    config: &LoaderConfig,
    step: u64,
) -> Result<Batch, DataError> {
    let order = Order::new(dataset.len(), config.seed, config.shuffle);
    make_batch(dataset, &order, config, step)
}

fn make_batch(
    dataset: &dyn Dataset,
    order: &Order,
    config: &LoaderConfig,
    step: u64,
) -> Result<Batch, DataError> {
    let b = config.batch_size;
    let [c, h, w] = dataset.shape();
    let d = c * h * w;
    if order.len == 0 {
        return Err(DataError::Config(format!("{} is empty", dataset.name())));
    }
    let mut x = Vec::with_capacity(b * d);
    let mut y = Vec::with_capacity(b);
    let stream_batch = step * config.shards.max(1) + config.shard;
    for k in 0..b as u64 {
        let position = stream_batch * b as u64 + k;
        let index = order.index(position);
        let mut rng = stream_rng(config.seed, DOMAIN_ITEM, position);
        let item = dataset.item(index, &mut rng)?;
        if item.x.len() != d {
            return Err(DataError::ItemShape {
                dataset: dataset.name(),
                index,
                expected: d,
                found: item.x.len(),
            });
        }
        x.extend_from_slice(&item.x);
        y.push(item.y);
    }
    Ok(Batch {
        x,
        y,
        shape: [b, c, h, w],
    })
}

struct State {
    next_claim: u64,
    consumed: u64,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

type Produced = (u64, Result<Batch, DataError>);

struct Pipeline {
    shared: Arc<Shared>,
    rx: Receiver<Produced>,
    ready: BTreeMap<u64, Result<Batch, DataError>>,
    handles: Vec<JoinHandle<()>>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop = true;
        self.shared.wake.notify_all();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// A background loader over a dataset; see the [module docs](self). Also an endless
/// [`Iterator`] of batches.
pub struct Loader {
    dataset: Arc<dyn Dataset>,
    order: Arc<Order>,
    config: LoaderConfig,
    next_step: u64,
    pipeline: Option<Pipeline>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("dataset", &self.dataset.name())
            .field("config", &self.config)
            .field("next_step", &self.next_step)
            .finish()
    }
}

impl Loader {
    /// A loader starting at `config.start_step`; threads start with the first batch.
    pub fn new(dataset: Arc<dyn Dataset>, config: LoaderConfig) -> Result<Self, DataError> {
        if config.batch_size == 0 {
            return Err(DataError::Config("batch_size must be >= 1".into()));
        }
        if dataset.is_empty() {
            return Err(DataError::Config(format!("{} is empty", dataset.name())));
        }
        let order = Arc::new(Order::new(dataset.len(), config.seed, config.shuffle));
        Ok(Self {
            next_step: config.start_step,
            dataset,
            order,
            config,
            pipeline: None,
        })
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// The step of the next batch returned.
    pub fn step(&self) -> u64 {
        self.next_step
    }

    /// Epochs (passes over the dataset) completed before batch `step`, fractional.
    pub fn epoch_at(&self, step: u64) -> f64 {
        step as f64 * self.config.batch_size as f64 / self.dataset.len() as f64
    }

    /// Skips `n` batches without computing them (for resuming).
    pub fn skip_batches(&mut self, n: u64) {
        self.seek(self.next_step + n);
    }

    /// Continues at batch `step`.
    pub fn seek(&mut self, step: u64) {
        if step != self.next_step {
            self.pipeline = None;
            self.next_step = step;
        }
    }

    fn start(&self) -> Pipeline {
        let capacity = self.config.prefetch.max(self.config.workers) as u64;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_claim: self.next_step,
                consumed: self.next_step,
                stop: false,
            }),
            wake: Condvar::new(),
        });
        let (tx, rx) = channel::<Produced>();
        let handles = (0..self.config.workers)
            .map(|i| {
                let (shared, tx) = (shared.clone(), tx.clone());
                let (dataset, order) = (self.dataset.clone(), self.order.clone());
                let config = self.config.clone();
                std::thread::Builder::new()
                    .name(format!("nag-loader-{i}"))
                    .spawn(move || loop {
                        let step = {
                            let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                            while !st.stop && st.next_claim >= st.consumed + capacity {
                                st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                            }
                            if st.stop {
                                return;
                            }
                            st.next_claim += 1;
                            st.next_claim - 1
                        };
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            make_batch(dataset.as_ref(), &order, &config, step)
                        }))
                        .unwrap_or_else(|panic| {
                            let msg = panic
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "panic".into());
                            Err(DataError::Worker(format!("batch {step}: {msg}")))
                        });
                        if tx.send((step, result)).is_err() {
                            return;
                        }
                    })
                    .expect("failed to spawn a loader thread")
            })
            .collect();
        Pipeline {
            shared,
            rx,
            ready: BTreeMap::new(),
            handles,
        }
    }

    /// The next batch (batch [`Self::step`]), then advances. An error for one batch does not
    /// stop the loader: the following call returns the next batch.
    pub fn next_batch(&mut self) -> Result<Batch, DataError> {
        let step = self.next_step;
        if self.config.workers == 0 {
            self.next_step += 1;
            return make_batch(self.dataset.as_ref(), &self.order, &self.config, step);
        }
        if self.pipeline.is_none() {
            self.pipeline = Some(self.start());
        }
        let pipe = self.pipeline.as_mut().expect("pipeline started above");
        loop {
            if let Some(result) = pipe.ready.remove(&step) {
                self.next_step += 1;
                pipe.shared
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .consumed = self.next_step;
                pipe.shared.wake.notify_all();
                return result;
            }
            match pipe.rx.recv() {
                Ok((s, r)) => {
                    pipe.ready.insert(s, r);
                }
                Err(_) => {
                    self.pipeline = None;
                    return Err(DataError::Worker("every loader thread stopped".into()));
                }
            }
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.next_batch())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Item, ShapesConfig, ShapesDataset};
    use rand_chacha::ChaCha8Rng;

    /// Item i is [i, random] with label i; slow items at random to shuffle worker timing.
    struct Probe(usize);
    impl Dataset for Probe {
        fn len(&self) -> usize {
            self.0
        }
        fn item(&self, index: usize, rng: &mut ChaCha8Rng) -> Result<Item, DataError> {
            if index % 7 == 3 {
                std::thread::sleep(std::time::Duration::from_micros(300));
            }
            Ok(Item {
                x: vec![index as f32, rng.random::<f32>()],
                y: index as i64,
            })
        }
        fn shape(&self) -> [usize; 3] {
            [1, 1, 2]
        }
        fn num_classes(&self) -> usize {
            self.0
        }
        fn name(&self) -> String {
            "probe".into()
        }
    }

    fn run(ds: Arc<dyn Dataset>, workers: usize, start: u64, n: usize) -> Vec<Batch> {
        let config = LoaderConfig {
            batch_size: 4,
            seed: 11,
            workers,
            prefetch: 3,
            start_step: start,
            ..LoaderConfig::default()
        };
        let mut loader = Loader::new(ds, config).unwrap();
        (0..n).map(|_| loader.next_batch().unwrap()).collect()
    }

    #[test]
    fn batches_do_not_depend_on_workers_and_cover_epochs() {
        let ds: Arc<dyn Dataset> = Arc::new(Probe(10));
        let one = run(ds.clone(), 1, 0, 15);
        assert_eq!(one, run(ds.clone(), 3, 0, 15));
        assert_eq!(one, run(ds.clone(), 0, 0, 15));
        // Resume: starting at step 5 (or skipping 5) continues the same sequence.
        assert_eq!(&one[5..], run(ds.clone(), 2, 5, 10).as_slice());
        let mut loader = Loader::new(
            ds.clone(),
            LoaderConfig {
                batch_size: 4,
                seed: 11,
                workers: 2,
                prefetch: 3,
                ..LoaderConfig::default()
            },
        )
        .unwrap();
        loader.next_batch().unwrap();
        loader.skip_batches(4);
        assert_eq!(loader.next_batch().unwrap(), one[5]);
        // Each epoch (10 positions) visits every index once; 60 positions = 6 epochs.
        let labels: Vec<i64> = one.iter().flat_map(|b| b.y.clone()).collect();
        for epoch in labels.chunks(10) {
            let mut e = epoch.to_vec();
            e.sort();
            assert_eq!(e, (0..10).collect::<Vec<i64>>());
        }
        assert_ne!(labels[..10], labels[10..20], "epochs are reshuffled");
        assert_eq!(one[0].shape, [4, 1, 1, 2]);
        // A different seed gives a different order.
        let other = {
            let config = LoaderConfig {
                batch_size: 4,
                seed: 12,
                workers: 0,
                ..LoaderConfig::default()
            };
            Loader::new(ds, config).unwrap().next_batch().unwrap()
        };
        assert_ne!(other, one[0]);
    }

    #[test]
    fn a_shard_reads_its_own_batches_of_the_stream() {
        let ds: Arc<dyn Dataset> = Arc::new(Probe(10));
        let whole = run(ds.clone(), 1, 0, 12);
        for shard in 0..3u64 {
            for (workers, start) in [(0, 0), (2, 1)] {
                let config = LoaderConfig {
                    batch_size: 4,
                    seed: 11,
                    workers,
                    start_step: start,
                    shard,
                    shards: 3,
                    ..LoaderConfig::default()
                };
                let mut loader = Loader::new(ds.clone(), config).unwrap();
                for k in start..4 {
                    let want = &whole[(k * 3 + shard) as usize];
                    assert_eq!(
                        &loader.next_batch().unwrap(),
                        want,
                        "shard {shard} batch {k}"
                    );
                }
            }
        }
    }

    #[test]
    fn shapes_loader_matches_batch_at() {
        let ds = ShapesDataset::new(ShapesConfig {
            len: 64,
            ..ShapesConfig::default()
        })
        .unwrap();
        let config = LoaderConfig {
            batch_size: 8,
            workers: 2,
            ..LoaderConfig::default()
        };
        let direct = batch_at(&ds, &config, 3).unwrap();
        let mut loader = Loader::new(Arc::new(ds), config).unwrap();
        loader.seek(3);
        assert_eq!(loader.next_batch().unwrap(), direct);
        assert_eq!(direct.shape, [8, 3, 16, 16]);
        assert!(Loader::new(Arc::new(Probe(0)), LoaderConfig::default()).is_err());
    }

    /// Fails on index 2 (error) and panics on index 5; other items are fine.
    struct Flaky;
    impl Dataset for Flaky {
        fn len(&self) -> usize {
            8
        }
        fn item(&self, index: usize, _rng: &mut ChaCha8Rng) -> Result<Item, DataError> {
            match index {
                2 => Err(DataError::Config("bad item".into())),
                5 => panic!("boom"),
                _ => Ok(Item { x: vec![0.0], y: 0 }),
            }
        }
        fn shape(&self) -> [usize; 3] {
            [1, 1, 1]
        }
        fn num_classes(&self) -> usize {
            1
        }
        fn name(&self) -> String {
            "flaky".into()
        }
    }

    #[test]
    fn item_errors_and_panics_fail_only_their_batch() {
        let config = LoaderConfig {
            batch_size: 1,
            shuffle: false,
            workers: 2,
            ..LoaderConfig::default()
        };
        let mut loader = Loader::new(Arc::new(Flaky), config).unwrap();
        let results: Vec<_> = (0..8).map(|_| loader.next_batch()).collect();
        for (i, r) in results.iter().enumerate() {
            match (i, r) {
                (2, Err(DataError::Config(_))) => {}
                (5, Err(DataError::Worker(msg))) => assert!(msg.contains("boom"), "{msg}"),
                (2 | 5, other) => panic!("batch {i}: {other:?}"),
                (_, r) => assert!(r.is_ok(), "batch {i}: {r:?}"),
            }
        }
    }
}
