//! Weights: one float32 tensor per `rfn.param` of a graph, named by its hierarchical
//! parameter name, stored as safetensors.
//!
//! Invariants: a loaded file is checked tensor by tensor (element type, byte length); a
//! check against a graph reports every missing, extra and mis-shaped tensor by name; saving
//! writes a temporary file beside the target and renames it, so a crash never leaves a
//! truncated weights file in place of a good one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rfnc_compiler::ir::{Graph, Op, ParamKind};
use rfnc_compiler::output::write_atomically;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

/// Named tensors: shape and row-major float32 data.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Weights {
    pub tensors: BTreeMap<String, (Vec<u64>, Vec<f32>)>,
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

/// Reads a safetensors file of float32 tensors.
pub fn load_weights(path: &Path) -> Result<Weights, WeightsError> {
    let bytes = std::fs::read(path).map_err(|e| WeightsError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let format = |message: String| WeightsError::Format {
        path: path.to_path_buf(),
        message,
    };
    let file = SafeTensors::deserialize(&bytes).map_err(|e| format(e.to_string()))?;
    let mut weights = Weights::default();
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

/// The graph's parameters: name -> shape.
fn parameters(graph: &Graph) -> BTreeMap<&str, (&[u64], ParamKind)> {
    graph
        .node_ids()
        .filter_map(|id| match &graph.node(id).op {
            Op::Param { name, kind } => {
                Some((name.as_str(), (graph.node(id).ty.dims.as_slice(), *kind)))
            }
            _ => None,
        })
        .collect()
}

/// Checks that the weights hold exactly the graph's parameters with their shapes.
pub fn check_weights(graph: &Graph, weights: &Weights) -> Result<(), WeightsError> {
    let params = parameters(graph);
    let mut problems = Vec::new();
    for (name, (dims, _)) in &params {
        match weights.tensors.get(*name) {
            None => problems.push(format!("missing tensor `{name}` of shape {dims:?}")),
            Some((shape, _)) if shape.as_slice() != *dims => problems.push(format!(
                "tensor `{name}` has shape {shape:?}, the network needs {dims:?}"
            )),
            Some(_) => {}
        }
    }
    for name in weights.tensors.keys() {
        if !params.contains_key(name.as_str()) {
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

/// SplitMix64: a counter-based generator, so each tensor's values depend only on the seed
/// and the tensor's name, not on the order parameters are visited.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
    })
}

/// Standard normal samples by Box-Muller from the counter stream `(seed, name, index)`.
fn normal(seed: u64, name: &str, index: u64) -> f32 {
    let key = splitmix(seed ^ name_hash(name)).wrapping_add(index.wrapping_mul(2));
    let u1 = ((splitmix(key) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let u2 = ((splitmix(key.wrapping_add(1)) >> 11) as f64) / (1u64 << 53) as f64;
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Standard deviation of conv weights whose conv is not followed by batch norm (the
/// RefineNet layers and the classifier): `1 / sqrt(3 * fan_in)`, the spread of PyTorch's
/// default conv initialisation. Each residual branch then starts much smaller than its
/// input, so the cascade's many residual sums begin near the identity.
fn plain_conv_std(fan_in: f32) -> f32 {
    1.0 / (3.0 * fan_in).sqrt()
}

/// Names of the conv weights whose conv output feeds a batch norm.
fn normalised_convs(graph: &Graph) -> std::collections::HashSet<&str> {
    graph
        .node_ids()
        .filter_map(|id| match &graph.node(id).op {
            Op::Param {
                name,
                kind: ParamKind::ConvWeight,
            } => Some((name.as_str(), id)),
            _ => None,
        })
        .filter(|(_, w)| {
            graph.users(*w).into_iter().any(|conv| {
                graph
                    .users(conv)
                    .into_iter()
                    .any(|u| matches!(graph.node(u).op, Op::BatchNorm { .. }))
            })
        })
        .map(|(name, _)| name)
        .collect()
}

/// Deterministic initial weights: conv weights followed by batch norm He-normal
/// (std = sqrt(2 / fan_in)), other conv weights normal with std `1 / sqrt(3 * fan_in)`, conv
/// biases 0, batch norm as the identity (mean 0, var 1, gamma 1, beta 0), momentum 0.
pub fn init_weights(graph: &Graph, seed: u64) -> Weights {
    let mut weights = Weights::default();
    let normalised = normalised_convs(graph);
    for (name, (dims, kind)) in parameters(graph) {
        let count: u64 = dims.iter().product();
        let data: Vec<f32> = match kind {
            ParamKind::ConvWeight => {
                let fan_in = (dims[1] * dims[2] * dims[3]).max(1) as f32;
                let std = if normalised.contains(name) {
                    (2.0 / fan_in).sqrt()
                } else {
                    plain_conv_std(fan_in)
                };
                (0..count).map(|i| std * normal(seed, name, i)).collect()
            }
            ParamKind::ConvBias | ParamKind::BnMean | ParamKind::BnBeta | ParamKind::Momentum => {
                vec![0.0; count as usize]
            }
            ParamKind::BnVar | ParamKind::BnGamma => vec![1.0; count as usize],
        };
        weights
            .tensors
            .insert(name.to_string(), (dims.to_vec(), data));
    }
    weights
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
    let serialized = safetensors::serialize(views, None).map_err(|e| io(&e))?;
    write_atomically(path, &serialized).map_err(|e| io(&e))
}
