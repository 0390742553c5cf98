//! Recomputation for a memory budget: forward values that the backward pass reads are
//! recomputed next to their backward use instead of being kept from the forward pass.
//!
//! Stages, tried in turn until the plan fits the budget: recompute relu outputs; then also
//! max-pool, resize and dropout outputs; then sums, products, sigmoids, concatenations and
//! batch norms; then convolutions
//! ("and more if needed"). For a chosen value `v`, a copy `v'` of its op is added, its
//! operands mapped to their own copies where those exist (so chains recompute together),
//! and every backward use of `v` reads `v'` instead; `v` then dies with its last forward
//! use. Each copy carries a scheduling hint to run after the gradients its backward users
//! also wait for, so it is computed late, where it is needed.
//!
//! Invariants: the training step computes the same values (recomputation is exact: every
//! op is deterministic, dropout included, since its mask depends only on seed, step,
//! stream and element); the forward graph is unchanged; only forward values of the chosen
//! kinds are copied; the extra multiply-accumulates are those of the copied convolutions.

use std::collections::{HashMap, HashSet};

use crate::ir::{ConvRole, Graph, NodeId, Op, OpKind};

/// Which forward ops a stage recomputes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Stage {
    Nothing,
    Relu,
    PoolResizeDropout,
    SumsAndNorms,
    Convolutions,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Nothing,
        Stage::Relu,
        Stage::PoolResizeDropout,
        Stage::SumsAndNorms,
        Stage::Convolutions,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Stage::Nothing => "nothing recomputed",
            Stage::Relu => "relu recomputed",
            Stage::PoolResizeDropout => "relu, pooling, resize and dropout recomputed",
            Stage::SumsAndNorms => "relu, pooling, resize, dropout, sums, products, sigmoids, concatenations and batch norm recomputed",
            Stage::Convolutions => "every forward value recomputed, convolutions included",
        }
    }

    /// Whether this stage recomputes `op`: forward ops only, in the order of the stages.
    fn recomputes(self, op: &Op) -> bool {
        let level = match op.kind() {
            OpKind::Elementwise { forward: true } if matches!(op, Op::Relu) => 1,
            OpKind::Elementwise { forward: true } if matches!(op, Op::Dropout { .. }) => 2,
            OpKind::Pool { grad: false } | OpKind::Resize { grad: false } => 2,
            // add, mul, sigmoid, batch_norm, and concat (a copy of its operands).
            OpKind::Elementwise { forward: true } | OpKind::Concat { grad: false } => 3,
            OpKind::Conv(ConvRole::Forward) => 4,
            // Global pooling's results are tiny: keeping them costs nothing.
            OpKind::Leaf
            | OpKind::Reduce
            | OpKind::Elementwise { forward: false }
            | OpKind::Conv(ConvRole::GradInput | ConvRole::GradWeight)
            | OpKind::Pool { grad: true }
            | OpKind::Concat { grad: true }
            | OpKind::Resize { grad: true }
            | OpKind::ChannelSum
            | OpKind::Loss { .. }
            | OpKind::LossGrad { .. }
            | OpKind::FoldBn => return false,
        };
        level <= self as usize
    }
}

/// A training step with recomputation, and where each copy should be scheduled.
pub struct Rematerialized {
    pub graph: Graph,
    /// `(copy, value it should follow)`: scheduling hints.
    pub after: Vec<(NodeId, NodeId)>,
    pub recomputed: usize,
    pub extra_macs: u64,
}

/// The nodes of the backward pass. With an objective: every computed node the objective
/// does not depend on (gradients and updates; a loss weight, a constant the objective
/// depends on, stays forward even when it is merged with the gradient seed). Without one:
/// everything that depends on a constant (the seed autodiff starts from).
fn backward_nodes(graph: &Graph, order: &[NodeId]) -> HashSet<NodeId> {
    let objective = graph
        .objective
        .as_deref()
        .and_then(|name| graph.output(name));
    if let Some(loss) = objective {
        let forward = ancestors(graph, loss);
        return order
            .iter()
            .copied()
            .filter(|n| !forward.contains(n) && !graph.node(*n).op.is_leaf())
            .collect();
    }
    let mut backward: HashSet<NodeId> = graph
        .node_ids()
        .filter(|&n| matches!(graph.node(n).op, Op::Constant { .. }))
        .collect();
    for &n in order {
        if graph.operands(n).iter().any(|o| backward.contains(o)) {
            backward.insert(n);
        }
    }
    backward
}

/// `to` and every node it depends on.
fn ancestors(graph: &Graph, to: NodeId) -> HashSet<NodeId> {
    let mut seen = HashSet::from([to]);
    let mut stack = vec![to];
    while let Some(n) = stack.pop() {
        for o in graph.operands(n) {
            if seen.insert(o) {
                stack.push(o);
            }
        }
    }
    seen
}

fn descendants(graph: &Graph, from: NodeId) -> HashSet<NodeId> {
    let mut seen = HashSet::from([from]);
    let mut stack = vec![from];
    while let Some(n) = stack.pop() {
        for u in graph.users(n) {
            if seen.insert(u) {
                stack.push(u);
            }
        }
    }
    seen
}

/// Recomputes, for the backward pass, every forward value of the kinds `stage` covers.
pub fn rematerialize(step: &Graph, stage: Stage) -> Rematerialized {
    let mut g = step.clone();
    let order = g.topo_order().expect("verified graphs are acyclic");
    let backward = backward_nodes(&g, &order);
    let mut copies: HashMap<NodeId, NodeId> = HashMap::new();
    let mut after = Vec::new();
    let mut extra_macs = 0u64;
    for &v in &order {
        if backward.contains(&v) || !stage.recomputes(&g.node(v).op) {
            continue;
        }
        let users: Vec<NodeId> = g
            .users(v)
            .into_iter()
            .filter(|u| backward.contains(u))
            .collect();
        if users.is_empty() {
            continue;
        }
        let node = g.node(v).clone();
        let operands: Vec<NodeId> = g
            .operands(v)
            .iter()
            .map(|o| *copies.get(o).unwrap_or(o))
            .collect();
        let copy = g.add(
            node.op.clone(),
            &operands,
            node.ty.clone(),
            node.loc.clone(),
        );
        if let Op::Conv2d { .. } = node.op {
            let w = &g.node(operands[1]).ty.dims;
            extra_macs += node.ty.elements() * w[1] * w[2] * w[3];
        }
        for &u in &users {
            g.replace_use_in(u, v, copy);
        }
        let reachable = descendants(&g, copy);
        for &u in &users {
            for o in g.operands(u) {
                if o != copy && backward.contains(&o) && !reachable.contains(&o) {
                    after.push((copy, o));
                }
            }
        }
        copies.insert(v, copy);
    }
    Rematerialized {
        graph: g,
        after,
        recomputed: copies.len(),
        extra_macs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Loc, Output, ParamKind, Reduction, TensorType};
    use crate::passes::autodiff::gradients;

    /// `loss = least_squares(conv(0.5 * relu(x), w), target)`: a constant in the middle of
    /// the forward pass, and the gradient of `w` as the step's other output.
    fn weighted_step() -> (Graph, NodeId, NodeId) {
        let mut g = Graph::new("step");
        let leaf = |g: &mut Graph, op: Op, dims: &[u64]| {
            g.add(op, &[], TensorType::f32(dims.to_vec()), Loc::default())
        };
        let x = leaf(&mut g, Op::Input { name: "x".into() }, &[1, 2, 4, 4]);
        let target = leaf(&mut g, Op::Input { name: "t".into() }, &[1, 2, 4, 4]);
        let w = leaf(
            &mut g,
            Op::Param {
                name: "w".into(),
                kind: ParamKind::ConvWeight,
            },
            &[2, 2, 1, 1],
        );
        let op = |g: &mut Graph, op: Op, args: &[NodeId]| {
            g.add_inferred(op, args, Loc::default()).unwrap()
        };
        let r = op(&mut g, Op::Relu, &[x]);
        let half = op(&mut g, Op::Constant { value: 0.5 }, &[]);
        let m = op(&mut g, Op::Mul, &[half, r]);
        let conv = Op::Conv2d {
            stride: [1; 2],
            pad: [0; 4],
            dilation: [1; 2],
            groups: 1,
        };
        let y = op(&mut g, conv, &[m, w]);
        let ls = Op::LeastSquares {
            ignore_value: 0.0,
            reduction: Reduction::Sum,
        };
        let loss = op(&mut g, ls, &[y, target]);
        let grad = gradients(&mut g, loss, &[w]).unwrap()[0].unwrap();
        g.outputs = vec![
            Output {
                name: "loss".into(),
                value: loss,
            },
            Output {
                name: "w".into(),
                value: grad,
            },
        ];
        g.objective = Some("loss".into());
        (g, m, grad)
    }

    #[test]
    fn a_forward_constant_does_not_start_the_backward_pass() {
        let (g, m, grad) = weighted_step();
        let order = g.topo_order().unwrap();
        let backward = backward_nodes(&g, &order);
        assert!(!backward.contains(&m), "0.5 * relu(x) is forward");
        assert!(backward.contains(&grad));
        // Recomputation serves the backward pass only: `m` keeps reading the original relu
        // (the gradient ops read the copies).
        let r = rematerialize(&g, Stage::SumsAndNorms);
        assert!(r.recomputed > 0);
        assert_eq!(r.graph.operands(m), g.operands(m));
    }
}
