//! The runtime's one error type: every message names the file, leaf, tensor or kernel it is
//! about and, where there is one, what to do about it.

use std::fmt;
use std::path::PathBuf;

/// Why a bundle cannot be loaded or run.
#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeError {
    /// A file of the bundle is missing or unreadable.
    File { path: PathBuf, message: String },
    /// `bundle.json` is not a usable bundle (bad JSON, wrong format or version, inconsistent).
    Bundle { path: PathBuf, message: String },
    /// A leaf cannot take the data given (unknown name, wrong dtype or length, not set).
    Leaf { name: String, message: String },
    /// No output of that name.
    UnknownOutput { name: String, known: Vec<String> },
    /// The weights do not fit the bundle's parameters; every problem is listed.
    Weights { problems: Vec<String> },
    /// The host code (`host.bc`) cannot be compiled or lacks a kernel.
    Jit { path: PathBuf, message: String },
    /// No usable NVIDIA GPU: no driver, no device, or no device with that ordinal.
    NoGpu(String),
    /// A CUDA driver call failed.
    Cuda { during: String, message: String },
    /// Something the runtime does not support (e.g. a kernel with too many arguments).
    Unsupported(String),
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeError::File { path, message } => write!(f, "`{}`: {message}", path.display()),
            RuntimeError::Bundle { path, message } => {
                write!(f, "`{}` is not a usable bundle: {message}", path.display())
            }
            RuntimeError::Leaf { name, message } => write!(f, "leaf `{name}`: {message}"),
            RuntimeError::UnknownOutput { name, known } => write!(
                f,
                "the bundle has no output named `{name}` (outputs: {})",
                list(known)
            ),
            RuntimeError::Weights { problems } => {
                write!(f, "the weights do not match the bundle's parameters:")?;
                for p in problems {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
            RuntimeError::Jit { path, message } => write!(
                f,
                "cannot compile the host code `{}`: {message}",
                path.display()
            ),
            RuntimeError::NoGpu(message) => write!(f, "{message}"),
            RuntimeError::Cuda { during, message } => {
                write!(f, "CUDA error while {during}: {message}")
            }
            RuntimeError::Unsupported(message) => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for RuntimeError {}

/// `a, b, c` (at most 8, then `… (N more)`), or `none`.
pub(crate) fn list(names: &[String]) -> String {
    if names.is_empty() {
        return "none".to_string();
    }
    let shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
    let mut text = shown.join(", ");
    if names.len() > shown.len() {
        text.push_str(&format!(", … ({} more)", names.len() - shown.len()));
    }
    text
}
