//! Initialisation rules of a graph's parameters: which [`Init`] each `rfn.param` starts
//! from. The rules are recorded in the bundle, so the runtime makes the same random weights
//! as `rfnc weights` without the graph.
//!
//! Rules: conv weights whose conv feeds a batch norm are He-normal (std = sqrt(2 / fan_in));
//! other conv weights (the RefineNet layers, the classifier) normal with std
//! `1 / sqrt(3 * fan_in)`, the spread of PyTorch's default conv initialisation, so each
//! residual branch starts much smaller than its input and the cascade's many residual sums
//! begin near the identity; conv biases, batch-norm mean and beta, momentum 0; batch-norm
//! variance and gamma 1.

use std::collections::{BTreeMap, HashSet};

pub use rfnc_bundle::Init;

use crate::ir::{Graph, NodeId, Op, ParamKind};

/// One parameter: its name, shape and rule.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInit {
    pub name: String,
    pub dims: Vec<u64>,
    pub init: Init,
}

/// The graph's parameters by name: shape and kind.
pub fn parameters(graph: &Graph) -> BTreeMap<&str, (&[u64], ParamKind)> {
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

/// Whether conv weight `w` feeds a conv whose output feeds a batch norm.
fn feeds_batch_norm(graph: &Graph, w: NodeId) -> bool {
    graph.users(w).into_iter().any(|conv| {
        graph
            .users(conv)
            .into_iter()
            .any(|u| matches!(graph.node(u).op, Op::BatchNorm { .. }))
    })
}

/// Names of the conv weights whose conv output feeds a batch norm.
fn normalised_convs(graph: &Graph) -> HashSet<&str> {
    graph
        .node_ids()
        .filter_map(|id| match &graph.node(id).op {
            Op::Param {
                name,
                kind: ParamKind::ConvWeight,
            } if feeds_batch_norm(graph, id) => Some(name.as_str()),
            _ => None,
        })
        .collect()
}

/// Every parameter of the (forward) graph with its rule, by name.
pub fn param_inits(graph: &Graph) -> Vec<ParamInit> {
    let normalised = normalised_convs(graph);
    parameters(graph)
        .into_iter()
        .map(|(name, (dims, kind))| {
            let init = match kind {
                ParamKind::ConvWeight => {
                    let fan_in = (dims[1] * dims[2] * dims[3]).max(1) as f32;
                    let std = if normalised.contains(name) {
                        (2.0 / fan_in).sqrt()
                    } else {
                        1.0 / (3.0 * fan_in).sqrt()
                    };
                    Init::Normal { std }
                }
                ParamKind::ConvBias
                | ParamKind::BnMean
                | ParamKind::BnBeta
                | ParamKind::Momentum => Init::Zeros,
                ParamKind::BnVar | ParamKind::BnGamma => Init::Ones,
            };
            ParamInit {
                name: name.to_string(),
                dims: dims.to_vec(),
                init,
            }
        })
        .collect()
}
