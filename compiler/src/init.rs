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
//!
//! Residual branches: batch norm is frozen (the identity at these values), so with plain He
//! weights every residual sum `x + branch(x)` doubles the variance and a ResNet-152 (50
//! residual blocks) ends with logits around 1e6. The last conv of each residual *branch* (a
//! conv -> batch norm feeding an `add` whose other operand is the block's shortcut) is
//! therefore scaled by `1 / sqrt(L)`, `L` the number of such branches: each branch then
//! adds about `1/L` of its input's variance and the whole backbone at most a factor `e`,
//! whatever its depth, in the spirit of Fixup (Zhang et al. 2019). Unlike torchvision's
//! `zero_init_residual` (the branch's batch-norm gamma at 0), the branches stay alive: rfnc
//! never trains batch norm, so a zero gamma would switch a branch off for good. The
//! shortcut of a block with a projection is the conv -> batch norm whose input is an
//! ancestor of the branch's (the block input, which the branch also starts from).

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

/// The conv (weight parameter) behind `v` when `v` is `batch_norm(conv(x, w, ...))`, with
/// the conv's input.
fn conv_bn(graph: &Graph, v: NodeId) -> Option<(NodeId, NodeId)> {
    if !matches!(graph.node(v).op, Op::BatchNorm { .. }) {
        return None;
    }
    let conv = graph.operands(v)[0];
    if !matches!(graph.node(conv).op, Op::Conv2d { .. }) {
        return None;
    }
    let ops = graph.operands(conv);
    Some((ops[1], ops[0]))
}

/// Whether `a` is `b` or among its operands' operands (to `depth` steps back).
fn reaches(graph: &Graph, a: NodeId, b: NodeId, depth: usize) -> bool {
    a == b
        || (depth > 0
            && graph
                .operands(b)
                .iter()
                .any(|&o| reaches(graph, a, o, depth - 1)))
}

/// The weights of the last convs of the residual branches: in `add(p, q)`, `p =
/// batch_norm(conv(u))` is a branch when `q` is not a conv -> batch norm (an identity
/// shortcut), or is one whose input is an ancestor of `u` (a projection shortcut from the
/// block input the branch starts from).
fn residual_branches(graph: &Graph) -> HashSet<NodeId> {
    let mut branches = HashSet::new();
    for id in graph.node_ids() {
        if !matches!(graph.node(id).op, Op::Add) {
            continue;
        }
        let ops = graph.operands(id);
        for (p, q) in [(ops[0], ops[1]), (ops[1], ops[0])] {
            let Some((w, u)) = conv_bn(graph, p) else {
                continue;
            };
            let shortcut = match conv_bn(graph, q) {
                None => true,
                Some((_, v)) => v != u && reaches(graph, v, u, 12),
            };
            if shortcut && matches!(graph.node(w).op, Op::Param { .. }) {
                branches.insert(w);
            }
        }
    }
    branches
}

/// Every parameter of the (forward) graph with its rule, by name.
pub fn param_inits(graph: &Graph) -> Vec<ParamInit> {
    let normalised = normalised_convs(graph);
    let branches: HashSet<&str> = residual_branches(graph)
        .into_iter()
        .filter_map(|w| match &graph.node(w).op {
            Op::Param { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let branch_scale = 1.0 / (branches.len().max(1) as f32).sqrt();
    parameters(graph)
        .into_iter()
        .map(|(name, (dims, kind))| {
            let init = match kind {
                ParamKind::ConvWeight => {
                    let fan_in = (dims[1] * dims[2] * dims[3]).max(1) as f32;
                    let std = if branches.contains(name) {
                        (2.0 / fan_in).sqrt() * branch_scale
                    } else if normalised.contains(name) {
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
