//! The graph that is exported and the values of its parameters: the inference graph with
//! frozen batch norm folded into the convs (unless it is kept), and the folded weights
//! computed from the network's weights by the same prepare program the runtime runs.

use std::collections::{BTreeMap, HashMap};

use rfnc_compiler::interp::{self, Tensor, Value};
use rfnc_compiler::ir::{Graph, Op};
use rfnc_compiler::passes::canonical::{fold_batch_norm, inference};
use rfnc_runtime::Weights;

use crate::error::{Error, Result};

/// The inference graph to export.
pub struct Lowered {
    pub graph: Graph,
    /// Computes the folded conv parameters from the original ones (none when batch norm
    /// is kept).
    pub prepare: Option<Graph>,
    /// How many batch norms were folded into their convs.
    pub folded: usize,
}

/// The inference graph of `forward` (no objective, no dropout), with batch norm folded
/// into the preceding convs unless `keep_batch_norm`.
pub fn lower(forward: &Graph, keep_batch_norm: bool) -> Lowered {
    let graph = inference(forward);
    if keep_batch_norm {
        return Lowered {
            graph,
            prepare: None,
            folded: 0,
        };
    }
    let f = fold_batch_norm(&graph);
    Lowered {
        graph: f.graph,
        prepare: Some(f.prepare),
        folded: f.folded,
    }
}

/// Every parameter of the lowered graph with its f32 values: taken from `weights`, or
/// computed by the prepare program (in f64, rounded once to f32).
pub fn values(lowered: &Lowered, weights: &Weights) -> Result<BTreeMap<String, Vec<f32>>> {
    let mut folded = HashMap::new();
    if let Some(prepare) = &lowered.prepare {
        folded = run_prepare(prepare, weights)?;
    }
    let mut out = BTreeMap::new();
    for id in lowered.graph.node_ids() {
        let Op::Param { name, .. } = &lowered.graph.node(id).op else {
            continue;
        };
        let data = match (folded.remove(name), weights.tensors.get(name)) {
            (Some(data), _) => data,
            (None, Some((_, data))) => data.clone(),
            (None, None) => {
                return Err(Error::internal(format!(
                    "export: parameter `{name}` has no value after loading the weights"
                )))
            }
        };
        out.insert(name.clone(), data);
    }
    Ok(out)
}

/// Runs the batch-norm folding program on the weights it reads.
fn run_prepare(prepare: &Graph, weights: &Weights) -> Result<HashMap<String, Vec<f32>>> {
    let mut feeds: HashMap<String, Value<f64>> = HashMap::new();
    for id in prepare.node_ids() {
        if let Op::Param { name, .. } = &prepare.node(id).op {
            let (dims, data) = weights.tensors.get(name).ok_or_else(|| {
                Error::internal(format!(
                    "export: folding needs `{name}`, not in the weights"
                ))
            })?;
            let data = data.iter().map(|&v| v as f64).collect();
            feeds.insert(name.clone(), Value::Real(Tensor::new(dims.clone(), data)));
        }
    }
    let outputs = interp::run(prepare, &feeds)
        .map_err(|e| Error::internal(format!("export: folding batch norm failed: {e}")))?;
    Ok(outputs
        .into_iter()
        .map(|(name, v)| (name, v.real().data.iter().map(|&x| x as f32).collect()))
        .collect())
}
