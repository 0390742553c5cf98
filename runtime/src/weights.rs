//! Weights: one float32 tensor per parameter, named by its hierarchical parameter name,
//! stored as safetensors; random ones from per-tensor initialisation rules.
//!
//! Invariants: a loaded file is checked tensor by tensor (element type, byte length); a
//! check against a graph reports every missing, extra and mis-shaped tensor by name; saving
//! writes a temporary file beside the target and renames it, so a crash never leaves a
//! truncated weights file in place of a good one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rfnc_bundle::atomic::write_atomically;
use rfnc_bundle::init::{sample, Init};
use rfnc_bundle::{Bundle, DType, LeafRole};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::tensor::HostTensor;

/// Named tensors: shape and row-major float32 data; and the file's free-form metadata
/// (safetensors `__metadata__`, e.g. a training checkpoint's iteration and data order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Weights {
    pub tensors: BTreeMap<String, (Vec<u64>, Vec<f32>)>,
    pub metadata: BTreeMap<String, String>,
}

/// Why weights cannot be used.
#[derive(Debug, PartialEq)]
pub enum WeightsError {
    /// The file cannot be read or written.
    Io { path: PathBuf, message: String },
    /// The file is not valid safetensors, or a tensor in it is not float32.
    Format { path: PathBuf, message: String },
    /// The tensors do not match the graph's parameters; every problem is listed.
    Mismatch { problems: Vec<String> },
}

impl fmt::Display for WeightsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightsError::Io { path, message } => write!(f, "`{}`: {message}", path.display()),
            WeightsError::Format { path, message } => {
                write!(
                    f,
                    "`{}` is not a usable safetensors weights file: {message}",
                    path.display()
                )
            }
            WeightsError::Mismatch { problems } => {
                write!(f, "the weights do not match the network's parameters:")?;
                for p in problems {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for WeightsError {}

/// The file's bytes, and a `Format` error maker for it.
fn read(path: &Path) -> Result<Vec<u8>, WeightsError> {
    std::fs::read(path).map_err(|e| WeightsError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn format_error(path: &Path, message: String) -> WeightsError {
    WeightsError::Format {
        path: path.to_path_buf(),
        message,
    }
}

/// Parses safetensors bytes; a file of another kind says what it looks like instead of
/// safetensors' "header too large".
fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>, WeightsError> {
    SafeTensors::deserialize(bytes).map_err(|e| {
        let what = if bytes.starts_with(b"PK\x03\x04") {
            "it is a zip archive, as PyTorch's torch.save writes; convert it with safetensors.torch.save_file(torch.load(FILE), OUT)".to_string()
        } else if bytes.starts_with(b"\x80") {
            "it is a Python pickle (an old torch.save format); convert it with safetensors.torch.save_file".to_string()
        } else if bytes.len() < 8 {
            format!("it has {} bytes, fewer than a safetensors header", bytes.len())
        } else {
            format!("it does not start with a safetensors header ({e})")
        };
        format_error(path, format!("not a safetensors file: {what}"))
    })
}

/// Reads a safetensors file of float32 tensors.
pub fn load_weights(path: &Path) -> Result<Weights, WeightsError> {
    let bytes = read(path)?;
    let format = |message: String| format_error(path, message);
    let file = parse(path, &bytes)?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| format(e.to_string()))?;
    let mut weights = Weights {
        metadata: header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        ..Weights::default()
    };
    for (name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(format(format!(
                "tensor `{name}` is {:?}; rfnc weights are F32",
                view.dtype()
            )));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let shape = view.shape().iter().map(|&d| d as u64).collect();
        weights.tensors.insert(name, (shape, data));
    }
    Ok(weights)
}

/// Reads a safetensors file of named f32 and i32 tensors (e.g. a network's inputs, labels
/// included).
pub fn load_tensors(path: &Path) -> Result<BTreeMap<String, HostTensor>, WeightsError> {
    let bytes = read(path)?;
    let format = |message: String| format_error(path, message);
    let file = parse(path, &bytes)?;
    let mut tensors = BTreeMap::new();
    for (name, view) in file.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::I32 => DType::I32,
            other => {
                return Err(format(format!(
                    "tensor `{name}` is {other:?}; inputs are F32 or I32"
                )))
            }
        };
        let shape = view.shape().iter().map(|&d| d as u64).collect();
        tensors.insert(name, HostTensor::from_bytes(dtype, shape, view.data()));
    }
    Ok(tensors)
}

/// Checks that the weights hold exactly the `expected` tensors (name and shape), listing
/// every missing, extra and mis-shaped one.
pub fn check_weights<'a>(
    expected: impl IntoIterator<Item = (&'a str, &'a [u64])>,
    weights: &Weights,
) -> Result<(), WeightsError> {
    let expected: BTreeMap<&str, &[u64]> = expected.into_iter().collect();
    let mut problems = Vec::new();
    for (name, dims) in &expected {
        match weights.tensors.get(*name) {
            None => problems.push(format!("missing tensor `{name}` of shape {dims:?}")),
            Some((shape, _)) if shape.as_slice() != *dims => problems.push(format!(
                "tensor `{name}` has shape {shape:?}, the network needs {dims:?}"
            )),
            Some(_) => {}
        }
    }
    for name in weights.tensors.keys() {
        if !expected.contains_key(name.as_str()) {
            problems.push(format!(
                "extra tensor `{name}` is not a parameter of the network"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(WeightsError::Mismatch { problems })
    }
}

/// Deterministic initial weights: each tensor sampled from its rule (see
/// [`rfnc_bundle::init`]) under `seed`.
pub fn init_weights<'a>(
    rules: impl IntoIterator<Item = (&'a str, &'a [u64], Init)>,
    seed: u64,
) -> Weights {
    let mut weights = Weights::default();
    for (name, dims, rule) in rules {
        let count: u64 = dims.iter().product();
        let data = sample(rule, seed, name, count);
        weights
            .tensors
            .insert(name.to_string(), (dims.to_vec(), data));
    }
    weights
}

/// Random weights for a bundle's parameters from the rules it records.
pub fn bundle_init_weights(bundle: &Bundle, seed: u64) -> Result<Weights, String> {
    let mut rules = Vec::new();
    for leaf in bundle.leaves.iter().filter(|l| l.role == LeafRole::Param) {
        let rule = leaf.init.ok_or_else(|| {
            format!(
                "parameter `{}` has no initialisation rule in the bundle",
                leaf.name
            )
        })?;
        rules.push((leaf.name.as_str(), leaf.shape.as_slice(), rule));
    }
    Ok(init_weights(rules, seed))
}

/// Writes weights as safetensors, atomically (temporary file + rename).
pub fn save_weights(path: &Path, weights: &Weights) -> Result<(), WeightsError> {
    let io = |e: &dyn fmt::Display| WeightsError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let bytes: BTreeMap<&str, Vec<u8>> = weights
        .tensors
        .iter()
        .map(|(name, (_, data))| {
            (
                name.as_str(),
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let mut views = Vec::with_capacity(weights.tensors.len());
    for (name, (shape, _)) in &weights.tensors {
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let view = TensorView::new(Dtype::F32, shape, &bytes[name.as_str()]).map_err(|e| io(&e))?;
        views.push((name.as_str(), view));
    }
    let metadata =
        (!weights.metadata.is_empty()).then(|| weights.metadata.clone().into_iter().collect());
    let serialized = safetensors::serialize(views, metadata).map_err(|e| io(&e))?;
    write_atomically(path, &serialized).map_err(|e| io(&e))
}
