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

/// Initial weights for training from a file that may cover only part of the network (e.g.
/// a pretrained backbone, or another run's checkpoint): every parameter the file holds with
/// the right shape is taken from it, the others are initialised by the graph's rules under
/// `seed` and returned by name. Momentum buffers in the file are dropped (a new run starts
/// its optimizer afresh); a tensor that is not a parameter, or has the wrong shape, is an
/// error listing every such tensor.
pub fn init_from_file(
    graph: &Graph,
    path: &Path,
    seed: u64,
) -> Result<(Weights, Vec<String>), Error> {
    let file = load_weights(path).map_err(weights_failure)?;
    let taken: std::collections::BTreeSet<String> = file.tensors.keys().cloned().collect();
    let mut weights = init_weights(graph, seed);
    let mut problems = Vec::new();
    for (name, (shape, data)) in file.tensors {
        let is_momentum = name
            .strip_suffix(".momentum")
            .is_some_and(|p| weights.tensors.contains_key(p));
        match weights.tensors.get_mut(&name) {
            Some((want, slot)) if *want == shape => *slot = data,
            Some((want, _)) => problems.push(format!(
                "tensor `{name}` has shape {shape:?}, the network needs {want:?}"
            )),
            None if is_momentum => {}
            None => problems.push(format!(
                "extra tensor `{name}` is not a parameter of the network"
            )),
        }
    }
    if !problems.is_empty() {
        return Err(
            weights_failure(WeightsError::Mismatch { problems }).with_title(format!(
                "`{}` does not fit network `{}`",
                path.display(),
                graph.name
            )),
        );
    }
    let initialised = weights
        .tensors
        .keys()
        .filter(|n| !taken.contains(*n))
        .cloned()
        .collect();
    Ok((weights, initialised))
}

/// Splits weights into those of `bundle`'s parameters and the rest: parameters of the
/// network that the compiled program does not use (they reach neither its outputs nor its
/// objective, e.g. a head left out of the loss), kept aside so that saved weights still
/// hold them. Momentum buffers follow their parameter.
pub fn split_unused(weights: Weights, bundle: &rfnc_bundle::Bundle) -> (Weights, Weights) {
    use rfnc_bundle::LeafRole;
    let used: std::collections::HashSet<&str> = bundle
        .leaves
        .iter()
        .filter(|l| matches!(l.role, LeafRole::Param | LeafRole::Momentum))
        .map(|l| l.name.as_str())
        .collect();
    let (mut kept, mut aside) = (Weights::default(), Weights::default());
    kept.metadata = weights.metadata;
    for (name, tensor) in weights.tensors {
        let param = name.strip_suffix(".momentum").unwrap_or(&name);
        if used.contains(name.as_str()) || used.contains(param) {
            kept.tensors.insert(name, tensor);
        } else {
            aside.tensors.insert(name, tensor);
        }
    }
    (kept, aside)
}

/// `a.*, b.*`: the scopes of some parameter names, in order, each once.
pub fn scopes(names: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let mut seen: Vec<String> = Vec::new();
    for n in names {
        let n = n.as_ref();
        let n = n.strip_suffix(".momentum").unwrap_or(n);
        let scope = match n.rsplit_once('.') {
            Some((scope, _)) => scope.rsplit_once('.').map_or(scope, |(s, _)| s),
            None => n,
        };
        if !seen.iter().any(|s| s == scope) {
            seen.push(scope.to_string());
        }
    }
    seen.iter()
        .map(|s| format!("{s}.*"))
        .collect::<Vec<_>>()
        .join(", ")
}
