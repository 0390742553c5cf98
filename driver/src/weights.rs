//! Weights against a graph: random initial weights from the graph's initialisation rules,
//! a loaded file checked against the graph's parameters, and weight problems as diagnostics.

use std::path::Path;

use rfnc_compiler::init::{param_inits, parameters};
use rfnc_compiler::ir::Graph;
use rfnc_dsl::Diagnostic;
use rfnc_runtime::{load_weights, Weights, WeightsError};

use crate::error::Error;

/// Deterministic initial weights for the graph's parameters (the values a bundle of the
/// same network makes from the rules it records).
pub fn init_weights(graph: &Graph, seed: u64) -> Weights {
    let rules = param_inits(graph);
    rfnc_runtime::init_weights(
        rules
            .iter()
            .map(|p| (p.name.as_str(), p.dims.as_slice(), p.init)),
        seed,
    )
}

/// Checks that the weights hold exactly the graph's parameters with their shapes.
pub fn check_weights(graph: &Graph, weights: &Weights) -> Result<(), WeightsError> {
    let params = parameters(graph);
    rfnc_runtime::check_weights(params.iter().map(|(n, (d, _))| (*n, *d)), weights)
}

/// Loads a weights file and checks it against `graph`; momentum buffers saved by training
/// (`NAME.momentum` beside a parameter `NAME`) are accepted and left to the session.
pub fn load_for(graph: &Graph, path: &Path) -> Result<Weights, Error> {
    let w = load_weights(path).map_err(weights_failure)?;
    let mut params = w.clone();
    params.tensors.retain(|name, _| {
        !name
            .strip_suffix(".momentum")
            .is_some_and(|p| w.tensors.contains_key(p))
    });
    check_weights(graph, &params).map_err(|e| {
        weights_failure(e).with_title(format!(
            "`{}` does not fit network `{}`",
            path.display(),
            graph.name
        ))
    })?;
    Ok(w)
}

/// A weights problem as a diagnostic: the file in the title, one note per problem.
pub fn weights_failure(e: WeightsError) -> Error {
    let d = match e {
        WeightsError::Mismatch { problems } => {
            let mut d = Diagnostic::new("the weights do not match the network's parameters");
            const SHOWN: usize = 20;
            for p in problems.iter().take(SHOWN) {
                d = d.note(p.clone());
            }
            if problems.len() > SHOWN {
                d = d.note(format!("... and {} more", problems.len() - SHOWN));
            }
            d.hint("weights are named by the parameter names of `rfnc compile --emit graph`; `rfnc weights` writes a matching file")
        }
        other => Diagnostic::new(other.to_string()),
    };
    Error::user(d)
}
