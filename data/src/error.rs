//! The one error type of the crate, `DataError`: every variant about a file names it.

use std::fmt;
use std::path::PathBuf;

/// What went wrong while opening, decoding, augmenting or batching data. Every variant that
/// concerns a file carries its path, and its message starts with that path.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read (missing, permissions, I/O error).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file named by a split does not exist.
    #[error("{}: file not found (named by {})", path.display(), listed_by.display())]
    MissingFile {
        path: PathBuf,
        /// The split list (or, for Cityscapes, the split directory) that named it.
        listed_by: PathBuf,
    },
    /// A split with no samples.
    #[error("{}: the split has no samples", path.display())]
    EmptySplit {
        /// The split list, or the split directory for Cityscapes.
        path: PathBuf,
    },
    /// A malformed line of a split list.
    #[error("{}:{line}: {message}", path.display())]
    BadListLine {
        path: PathBuf,
        /// 1-based.
        line: usize,
        message: String,
    },
    /// Bytes that do not decode as the expected image (unreadable, truncated, unsupported).
    #[error("{}: cannot decode: {message}", path.display())]
    Decode { path: PathBuf, message: String },
    /// A target (labels or depth) whose size differs from its image.
    #[error(
        "{}: is {}x{} (WxH) but its image {} is {}x{}",
        path.display(), size.0, size.1, image.display(), image_size.0, image_size.1
    )]
    SizeMismatch {
        path: PathBuf,
        /// (width, height) of the target.
        size: (usize, usize),
        image: PathBuf,
        /// (width, height) of the image.
        image_size: (usize, usize),
    },
    /// Label values that are neither a class nor the ignore label.
    #[error(
        "{}: {count} pixel(s) hold values that are neither a class nor ignored ({accepted}); \
         the first is {value} at (x {}, y {})",
        path.display(), first.0, first.1
    )]
    BadLabels {
        path: PathBuf,
        /// The value stored in the file at `first`.
        value: u32,
        /// How many pixels hold a bad value.
        count: usize,
        /// (x, y) of the first bad pixel in row-major order.
        first: (usize, usize),
        /// Which stored values are accepted, in words.
        accepted: String,
    },
    /// A PNG whose colour type or bit depth is not the one the layout requires.
    #[error("{}: is {found}; expected {expected}", path.display())]
    PixelFormat {
        path: PathBuf,
        /// What the file is, e.g. "8-bit greyscale".
        found: String,
        /// What it must be, e.g. "16-bit greyscale (depth in millimetres)".
        expected: String,
    },
    /// An image larger than the crate accepts (see [`crate::decode::MAX_PIXELS`]).
    #[error("{}: is {}x{}, more than {} pixels", path.display(), size.0, size.1, crate::decode::MAX_PIXELS)]
    TooLarge { path: PathBuf, size: (usize, usize) },
    /// A file that could not be written (synthetic datasets, encoders).
    #[error("{}: cannot write: {message}", path.display())]
    Write { path: PathBuf, message: String },
    /// A bad argument from the caller (not from a file): batch size 0, crop 0, an index out
    /// of range, a split name with a path separator, a dataset smaller than one batch.
    #[error("{0}")]
    Invalid(String),
    /// A loader worker thread stopped without a result (it panicked); a bug, not bad data.
    #[error("data loader worker {0} stopped unexpectedly")]
    WorkerStopped(usize),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn decode(path: impl Into<PathBuf>, message: impl fmt::Display) -> Self {
        DataError::Decode {
            path: path.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn write(path: impl Into<PathBuf>, message: impl fmt::Display) -> Self {
        DataError::Write {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// The file this error is about, when it is about one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            DataError::Io { path, .. }
            | DataError::MissingFile { path, .. }
            | DataError::EmptySplit { path }
            | DataError::BadListLine { path, .. }
            | DataError::Decode { path, .. }
            | DataError::SizeMismatch { path, .. }
            | DataError::BadLabels { path, .. }
            | DataError::PixelFormat { path, .. }
            | DataError::TooLarge { path, .. }
            | DataError::Write { path, .. } => Some(path),
            DataError::Invalid(_) | DataError::WorkerStopped(_) => None,
        }
    }
}
