//! Recomputation for a memory budget: forward values that the backward pass reads are
//! recomputed next to their backward use instead of being kept from the forward pass.
//!
//! Stages, tried in turn until the plan fits the budget: recompute relu outputs; then also
//! max-pool, resize and dropout outputs; then sums and batch norms; then convolutions
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
            Stage::SumsAndNorms => "relu, pooling, resize, dropout, sums and batch norm recomputed",
            Stage::Convolutions => "every forward value recomputed, convolutions included",
        }
    }

    /// Whether this stage recomputes `op`: forward ops only, in the order of the stages.
    fn recomputes(self, op: &Op) -> bool {
        let level = match op.kind() {
            OpKind::Elementwise { forward: true } if matches!(op, Op::Relu) => 1,
            OpKind::Elementwise { forward: true } if matches!(op, Op::Dropout { .. }) => 2,
            OpKind::Pool { grad: false } | OpKind::Resize { grad: false } => 2,
            // add and batch_norm.
            OpKind::Elementwise { forward: true } => 3,
            OpKind::Conv(ConvRole::Forward) => 4,
            OpKind::Leaf
            | OpKind::Elementwise { forward: false }
            | OpKind::Conv(ConvRole::GradInput | ConvRole::GradWeight)
            | OpKind::Pool { grad: true }
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

/// The nodes of the backward pass: everything that depends on the gradient seed (the
/// scalar constant autodiff starts from).
fn backward_nodes(graph: &Graph, order: &[NodeId]) -> HashSet<NodeId> {
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
