//! Training data for rfnc: dataset layouts on disk, decoding, augmentation as RefineNet
//! trains, deterministic batching on worker threads, and synthetic datasets. It feeds a
//! compiled training step whose inputs are `image: f32[N, 3, H, W]` and either
//! `labels: i32[N, H, W]` (segmentation) or `depth_gt: f32[N, 1, H, W]` (depth). The crate
//! depends on no other rfnc crate.
//!
//! - [`dataset`]: the layouts ([`DatasetKind`]) and [`Dataset::open`];
//! - [`sample`]: [`Dataset::load`], one decoded [`Sample`];
//! - [`decode`], [`encode`]: image files to pixels and back;
//! - [`augment`]: [`AugmentConfig`], training and evaluation [`Example`]s;
//! - [`loader`]: [`Loader`], [`Batch`], [`LoaderState`];
//! - [`rng`]: the counter-based randomness everything above draws from;
//! - [`synthetic`]: small datasets written in these layouts.
//!
//! # Layouts
//!
//! `Dataset::open(kind, root, split)` lists one split. Paths below are relative to `root`;
//! `<split>` is a plain name (`train`, `val`, ...; no path separators).
//!
//! | kind (name) | images | targets | split |
//! |---|---|---|---|
//! | `Voc` (`voc`) | `JPEGImages/<id>.jpg` | `SegmentationClass/<id>.png`: palette PNG whose pixel values are the classes 0..=20, 255 ignored | `ImageSets/Segmentation/<split>.txt` |
//! | `VocAug` (`voc_aug`) | `JPEGImages/<id>.jpg` | `SegmentationClassAug/<id>.png`: 8-bit greyscale classes 0..=20, 255 ignored | `ImageSets/Segmentation/train_aug.txt` for split `train`, `ImageSets/Segmentation/<split>.txt` for any other split (e.g. `val`) |
//! | `Cityscapes` (`cityscapes`) | `leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png` | `gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png`: train ids 0..=18, 255 ignored | the directory `leftImg8bit/<split>/`: cities in sorted order, files in sorted order within each |
//! | `NyudDepth` (`nyud_depth`) | `images/<id>.png`, or `images/<id>.jpg` when there is no PNG | `depth/<id>.png`: 16-bit greyscale, millimetres, 0 = no measurement | `<split>.txt` |
//! | `NyudSeg` (`nyud_seg`) | as `NyudDepth` | `labels40/<id>.png`: 8-bit, 0 = unlabelled (ignored), 1..=40 = classes 0..=39 | `<split>.txt` |
//! | `List` (`list`) | per line | per line: a palette or greyscale label PNG | `<split>.txt`, lines `image<TAB>label`, paths relative to `root` (absolute paths are kept) |
//!
//! Classes: VOC 21, Cityscapes 19, NYUD 40; depth has none. A `List` dataset has no
//! number of classes until [`Dataset::with_classes`] gives one (which also narrows any
//! other segmentation layout); without one, every stored value is accepted as a label.
//! The ignore label is 255 ([`IGNORE_LABEL`]) everywhere. The NYUD layout is this
//! crate's own (NYUD has no single standard one): convert the official `.mat` files to
//! these PNGs.
//!
//! Id lists (`Voc`, `VocAug`, NYUD) hold one id per line; blank lines and lines starting
//! with `#` are skipped (also in `List` files), a line with more than one word is an error.
//! A `List` line without a tab, or with other than two non-empty fields, is an error
//! naming the file and line. `open` checks that every file the split names exists
//! (`DataError::MissingFile` names the file and the list or directory that named it) and
//! that the split is not empty (`DataError::EmptySplit` names the list or directory).
//!
//! # Decoding
//!
//! [`Dataset::load`] returns a [`Sample`]: the image as RGB `f32` in [0, 255], HWC
//! ([`Plane`] with 3 channels; greyscale replicated, alpha dropped, 16-bit scaled), any
//! size up to [`decode::MAX_PIXELS`]; and its [`Target`] at the same size: training labels
//! as `u8` (NYUD's stored values already shifted, 0 -> 255) or depth as `f32` metres
//! (millimetres / 1000; 0 stays 0 = invalid). Label PNGs are read as stored indices, never
//! through their palette colours; palette and greyscale PNGs of 1, 2, 4 or 8 bits are
//! accepted. Errors, each naming the file: missing or unreadable file (`Io`), bytes that
//! do not decode, including truncated files (`Decode`; a JPEG is truncated when no
//! end-of-image marker follows its last scan), a target whose size differs from the
//! image's (`SizeMismatch`, both sizes as WxH), label values that are neither a class nor
//! ignored (`BadLabels`: the first bad value, the count of bad pixels and the first one's
//! (x, y)), a label or depth PNG of the wrong kind (`PixelFormat`, e.g. "is an 8-bit
//! greyscale PNG; expected a 16-bit greyscale PNG (depth in millimetres)"). Decoders never
//! panic the caller: the third-party ones run under `catch_unwind`.
//!
//! # Augmentation
//!
//! Training ([`augment::train_example`], as the RefineNet paper trains): scale by a factor
//! drawn uniformly from `scale` (default 0.7..1.3; image bilinear with half-pixel centres,
//! labels and depth nearest, so targets only hold original values; depth values are not
//! changed by the scale), crop `crop` = (height, width) at a uniform random position; when
//! the scaled image is smaller than the crop it is padded at the bottom and right (image:
//! the mean colour, i.e. exactly 0 after normalisation; labels: 255; depth: 0); flip
//! horizontally with probability 1/2 (`flip`, default on); normalise `(x - mean) / std`
//! per channel (defaults: ImageNet's, on the [0, 255] scale) into CHW. Evaluation
//! ([`augment::eval_example`]): the whole image normalised, its target at the original
//! size, no randomness; [`Example::padded`] pads it to a fixed input size and
//! [`Batch::from_examples`] stacks such examples.
//!
//! # Batching and determinism
//!
//! [`Loader`] yields [`Batch`]es: `images` `N*3*H*W`, `labels` `N*H*W` (i32) or `depth`
//! `N*1*H*W`, and the dataset index of each example. The data order and every random
//! choice are pure functions of the seed, never of threads or time:
//!
//! - epoch `e` visits the samples in the order of a Fisher-Yates shuffle driven by a
//!   SplitMix64 stream keyed by (seed, "perm", e) ([`rng::epoch_permutation`]);
//! - the sample at position `p` of epoch `e` is augmented with parameters drawn from the
//!   stream keyed by (seed, "augm", e, p) ([`augment::AugmentParams::draw`]);
//! - a batch is `batch` consecutive positions; an epoch has `len / batch` batches
//!   ([`iters_per_epoch`]): the last partial batch is dropped, so a batch never mixes
//!   epochs and every batch has exactly `batch` examples;
//! - [`Loader::state`] ([`LoaderState`] `{ epoch, position }`, serde) is where the next
//!   batch starts; a loader started from it produces exactly the batches the first one
//!   would have produced next, whatever the number of workers.
//!
//! `workers` threads (at least one) decode and augment ahead of the consumer: batch `k`
//! is built by worker `k % workers`, each worker keeps at most one finished batch queued,
//! and `next` takes them in order, returning the time it waited (data time, to report
//! beside step time). A decode error reaches the caller as the `Err` of `next` for that
//! batch (naming the file); the order moves past it. Dropping the loader stops and joins
//! the workers.
//!
//! # Synthetic data
//!
//! [`synthetic::write_voc`], [`synthetic::write_list`] and [`synthetic::write_nyud`] write
//! small datasets in the layouts above (images 40..=96 pixels a side), deterministic from
//! the seed: discs (class 1) and squares (class 2) on textured backgrounds with 255 bands
//! along their edges ([`synthetic::SEG_CLASSES`] = 3), and rooms of a wall, a floor and
//! spheres lit from the camera, so that shading and brightness follow the depth, with holes of missing depth.

pub mod augment;
pub mod dataset;
pub mod decode;
pub mod encode;
pub mod error;
pub mod loader;
pub mod rng;
pub mod sample;
pub mod synthetic;

pub use augment::{AugmentConfig, Example};
pub use dataset::{iters_per_epoch, Dataset, DatasetKind, SamplePaths, Task, IGNORE_LABEL};
pub use decode::Plane;
pub use error::DataError;
pub use loader::{Batch, Loader, LoaderState};
pub use sample::{Sample, Target};
