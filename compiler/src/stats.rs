//! Cost statistics of a graph, per component and in total: parameter count,
//! multiply-accumulates and the naive feature memory.
//!
//! Definitions (see docs/ir.md):
//! - params: elements of every `rfn.param` except batch-norm running statistics;
//! - macs: for each conv, `kh*kw*Cin*Cout*Hout*Wout/groups` per image times the batch;
//!   in a training step as much again for each of its gradients (data and weight), and
//!   per parameter element 2 for the momentum update and 1 for the step; other ops count
//!   no multiply-accumulates;
//! - naive feature bytes: every computed op's output as its own buffer (no reuse);
//!   inputs and parameters are not features.
//!
//! A component is the first segment of an op's scope: the name of the top-level block call
//! that made it (`backbone`, `refine4`, `head`), or of a top-level conv / batchnorm call.
//! Ops made directly in the network body (the loss, its upsampling) belong to `network`.
//! Components are listed in order of first appearance.

use std::collections::BTreeMap;

use crate::ir::{Graph, Op};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Cost {
    pub params: u64,
    pub macs: u64,
    pub naive_feature_bytes: u64,
}

impl Cost {
    fn add(&mut self, other: &Cost) {
        // Saturating: absurd programs must not overflow (u64 holds 1.8e19).
        self.params = self.params.saturating_add(other.params);
        self.macs = self.macs.saturating_add(other.macs);
        self.naive_feature_bytes = self
            .naive_feature_bytes
            .saturating_add(other.naive_feature_bytes);
    }
}

/// Costs per component, in order of first appearance, and their total.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    pub components: Vec<(String, Cost)>,
    pub total: Cost,
}

pub const TOP_LEVEL_COMPONENT: &str = "network";

/// The multiply-accumulates of op `id`: a convolution and each of its two gradients do
/// `kh*kw*Cin/groups` per element of the convolution's output, `N*Cout*Hout*Wout` of them;
/// the SGD updates one (`p - lr * v`) or two (`momentum * v + g + decay * p`) per element;
/// everything else none.
fn macs(graph: &Graph, id: crate::ir::NodeId, op: &Op) -> u64 {
    let dims = |n: crate::ir::NodeId| graph.node(n).ty.dims.clone();
    let elements = graph.node(id).ty.elements();
    let ops = graph.operands(id);
    // (the convolution's output, its weight)
    let conv = match op {
        Op::Conv2d { .. } => Some((dims(id), dims(ops[1]))),
        Op::Conv2dGradInput { .. } => Some((dims(ops[0]), dims(ops[1]))),
        Op::Conv2dGradWeight { .. } => Some((dims(ops[1]), dims(id))),
        Op::SgdStep { .. } => return elements,
        Op::SgdMomentum { .. } => return elements.saturating_mul(2),
        _ => None,
    };
    let Some((y, w)) = conv else { return 0 };
    y.iter()
        .chain(&w[1..])
        .fold(1u64, |m, &d| m.saturating_mul(d))
}

/// Computes the statistics of a verified graph.
pub fn stats(graph: &Graph) -> Stats {
    let order = graph
        .topo_order()
        .unwrap_or_else(|| graph.node_ids().collect());
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut result = Stats::default();
    for id in order {
        let node = graph.node(id);
        let mut cost = Cost::default();
        match &node.op {
            Op::Input { .. } => continue,
            Op::Param { kind, .. } => {
                // Batch-norm statistics are buffers, momentum is optimizer state.
                if !kind.is_statistic() && *kind != crate::ir::ParamKind::Momentum {
                    cost.params = node.ty.elements();
                }
            }
            op => {
                cost.naive_feature_bytes = node.ty.bytes();
                cost.macs = macs(graph, id, op);
            }
        }
        let component = match node.loc.component() {
            "" => TOP_LEVEL_COMPONENT,
            c => c,
        };
        let slot = *index.entry(component.to_string()).or_insert_with(|| {
            result
                .components
                .push((component.to_string(), Cost::default()));
            result.components.len() - 1
        });
        result.components[slot].1.add(&cost);
        result.total.add(&cost);
    }
    result
}
