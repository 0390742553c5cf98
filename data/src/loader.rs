//! Batches for training: `Loader` decodes and augments on worker threads ahead of the
//! consumer and hands out batches in a fixed order that depends only on the seed; its
//! `LoaderState` resumes that order exactly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::augment::{train_example, AugmentConfig, Example};
use crate::dataset::{iters_per_epoch, Dataset};
use crate::error::DataError;
use crate::rng::epoch_permutation;

/// Where the data order stands: the next batch starts at `position` of the permutation of
/// epoch `epoch`. Saved with a checkpoint, it resumes the exact data order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LoaderState {
    pub epoch: u64,
    pub position: u64,
}

impl LoaderState {
    /// The state itself when a batch of `batch` fits in the rest of the epoch, else the
    /// start of the next epoch (the partial batch at the end of an epoch is dropped).
    pub fn settle(self, len: usize, batch: usize) -> LoaderState {
        if self.position.saturating_add(batch as u64) > len as u64 {
            LoaderState {
                epoch: self.epoch.saturating_add(1),
                position: 0,
            }
        } else {
            self
        }
    }

    /// The state after a batch of `batch` that starts here.
    pub fn advance(self, len: usize, batch: usize) -> LoaderState {
        let next = LoaderState {
            position: self.position + batch as u64,
            ..self
        };
        next.settle(len, batch)
    }
}

/// A batch of examples of one size, laid out as the training step's inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `N * 3 * H * W`, normalised (the `image` input).
    pub images: Vec<f32>,
    /// `N * H * W` training labels, ignore label 255 (the `labels` input).
    pub labels: Option<Vec<i32>>,
    /// `N * 1 * H * W` depth in metres, 0 = invalid (the `depth_gt` input).
    pub depth: Option<Vec<f32>>,
    /// The dataset index of each example.
    pub samples: Vec<usize>,
    pub height: usize,
    pub width: usize,
}

impl Batch {
    /// N.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Stacks examples of one size and one kind of target (e.g. evaluation examples
    /// padded with [`Example::padded`]).
    pub fn from_examples(examples: Vec<Example>) -> Result<Batch, DataError> {
        let Some(first) = examples.first() else {
            return Err(DataError::Invalid(
                "a batch needs at least one example".into(),
            ));
        };
        let (height, width) = (first.height, first.width);
        let (has_labels, has_depth) = (first.labels.is_some(), first.depth.is_some());
        let mut batch = Batch {
            images: Vec::with_capacity(examples.len() * 3 * height * width),
            labels: has_labels.then(Vec::new),
            depth: has_depth.then(Vec::new),
            samples: Vec::with_capacity(examples.len()),
            height,
            width,
        };
        for e in examples {
            let same_kind = e.labels.is_some() == has_labels && e.depth.is_some() == has_depth;
            if (e.height, e.width) != (height, width) || !same_kind {
                return Err(DataError::Invalid(format!(
                    "sample {} ({}x{}) does not match the batch's first ({height}x{width}, \
                     same kind of target)",
                    e.index, e.height, e.width
                )));
            }
            batch.images.extend_from_slice(&e.image);
            if let (Some(all), Some(l)) = (batch.labels.as_mut(), e.labels) {
                all.extend(l);
            }
            if let (Some(all), Some(d)) = (batch.depth.as_mut(), e.depth) {
                all.extend(d);
            }
            batch.samples.push(e.index);
        }
        Ok(batch)
    }
}

/// What every worker shares.
struct Job {
    dataset: Arc<Dataset>,
    augment: AugmentConfig,
    batch: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
}

impl Job {
    /// The batch that starts at `state`; `perm` caches the order of the epoch it names.
    fn build(
        &self,
        state: LoaderState,
        perm: &mut (Option<u64>, Vec<usize>),
    ) -> Result<Batch, DataError> {
        if perm.0 != Some(state.epoch) {
            let order = epoch_permutation(self.seed, state.epoch, self.dataset.len());
            *perm = (Some(state.epoch), order);
        }
        let mut examples = Vec::with_capacity(self.batch);
        for position in state.position..state.position + self.batch as u64 {
            if self.stop.load(Ordering::Relaxed) {
                return Err(DataError::Invalid("data loader stopped".into()));
            }
            let sample = self.dataset.load(perm.1[position as usize], None)?;
            let (seed, epoch) = (self.seed, state.epoch);
            examples.push(train_example(&sample, &self.augment, seed, epoch, position));
        }
        Batch::from_examples(examples)
    }

    /// Worker `w` of `workers`: builds every `workers`-th batch from `start` on and sends
    /// them in order until the loader is dropped.
    fn run(
        &self,
        w: usize,
        workers: usize,
        start: LoaderState,
        out: SyncSender<Result<Batch, DataError>>,
    ) {
        let (len, batch) = (self.dataset.len(), self.batch);
        let mut state = start;
        for _ in 0..w {
            state = state.advance(len, batch);
        }
        let mut perm = (None, Vec::new());
        while !self.stop.load(Ordering::Relaxed) {
            if out.send(self.build(state, &mut perm)).is_err() {
                break;
            }
            for _ in 0..workers {
                state = state.advance(len, batch);
            }
        }
    }
}

/// Training batches decoded and augmented on worker threads. Batch `k` is built by worker
/// `k % workers` and each worker keeps at most one finished batch queued, so at most
/// `2 * workers` batches are ahead of the consumer. Dropping the loader stops the
/// workers and joins them.
pub struct Loader {
    receivers: Vec<Receiver<Result<Batch, DataError>>>,
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    turn: usize,
    state: LoaderState,
    len: usize,
    batch: usize,
}

impl Loader {
    /// Starts `workers` threads (at least one) producing batches of `batch` from `start`.
    /// Errors: a batch of 0, a dataset smaller than one batch, a bad augmentation.
    pub fn new(
        dataset: Arc<Dataset>,
        augment: AugmentConfig,
        batch: usize,
        seed: u64,
        workers: usize,
        start: LoaderState,
    ) -> Result<Loader, DataError> {
        augment.validate()?;
        let len = dataset.len();
        if batch == 0 || batch > len {
            return Err(DataError::Invalid(format!(
                "batch size {batch} does not fit split `{}` of {} samples ({})",
                dataset.split(),
                len,
                dataset.split_source().display()
            )));
        }
        let start = start.settle(len, batch);
        let stop = Arc::new(AtomicBool::new(false));
        let job = Arc::new(Job {
            dataset,
            augment,
            batch,
            seed,
            stop: stop.clone(),
        });
        let workers = workers.max(1);
        let mut loader = Loader {
            receivers: Vec::new(),
            handles: Vec::new(),
            stop,
            turn: 0,
            state: start,
            len,
            batch,
        };
        for w in 0..workers {
            let (tx, rx) = sync_channel(1);
            let job = job.clone();
            let handle = std::thread::Builder::new()
                .name(format!("rfnc-data-{w}"))
                .spawn(move || job.run(w, workers, start, tx))
                .map_err(|e| {
                    DataError::Invalid(format!("cannot start a data loader thread: {e}"))
                })?;
            loader.receivers.push(rx);
            loader.handles.push(handle);
        }
        Ok(loader)
    }

    /// The next batch, and how long this call waited for it. A batch whose sample failed
    /// to decode is returned as that error (naming the file); the order moves past it
    /// either way, so calling `next` again continues with the following batch.
    #[allow(
        clippy::should_implement_trait,
        reason = "the loader never ends: an Iterator's Option would only add noise"
    )]
    pub fn next(&mut self) -> Result<(Batch, Duration), DataError> {
        let worker = self.turn;
        let started = Instant::now();
        let result = self.receivers[worker].recv();
        let waited = started.elapsed();
        self.turn = (worker + 1) % self.receivers.len();
        self.state = self.state.advance(self.len, self.batch);
        match result {
            Ok(batch) => batch.map(|b| (b, waited)),
            Err(_) => Err(DataError::WorkerStopped(worker)),
        }
    }

    /// Where the next batch starts; a loader created with this state produces exactly the
    /// batches this one would produce next.
    pub fn state(&self) -> LoaderState {
        self.state
    }

    /// Full batches per epoch.
    pub fn iters_per_epoch(&self) -> usize {
        iters_per_epoch(self.len, self.batch)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers makes a worker blocked in `send` return at once.
        self.receivers.clear();
        for handle in self.handles.drain(..) {
            // A worker that panicked has already reported it through `next`.
            let _ = handle.join();
        }
    }
}
