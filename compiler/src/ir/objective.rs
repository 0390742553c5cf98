//! The training objective's shape: one loss, or a weighted sum of losses
//! (`seg + 0.5 * depth + 0.4 * aux`), and its terms (the losses it sums).

use super::{Graph, NodeId, Op};

/// The losses that the objective value `root` sums, in order of first appearance: `root`
/// itself when it is a loss; the terms of both sides of an `add`; the terms of the other
/// side of a `mul` by a constant. `None` when `root` is anything else (a scalar that is
/// not a weighted sum of losses).
pub fn objective_terms(graph: &Graph, root: NodeId) -> Option<Vec<NodeId>> {
    let mut terms = Vec::new();
    collect(graph, root, &mut terms, 0)?;
    Some(terms)
}

/// Objectives nest at most this deep (a sum of this many terms at least).
const MAX_DEPTH: usize = 256;

fn collect(graph: &Graph, n: NodeId, terms: &mut Vec<NodeId>, depth: usize) -> Option<()> {
    let node = graph.node(n);
    if depth > MAX_DEPTH || !node.ty.dims.is_empty() {
        return None;
    }
    if node.op.is_loss() {
        if !terms.contains(&n) {
            terms.push(n);
        }
        return Some(());
    }
    let ops = graph.operands(n);
    match node.op {
        Op::Add => {
            collect(graph, ops[0], terms, depth + 1)?;
            collect(graph, ops[1], terms, depth + 1)
        }
        Op::Mul => {
            let constant = |o: NodeId| matches!(graph.node(o).op, Op::Constant { .. });
            match (constant(ops[0]), constant(ops[1])) {
                (true, false) => collect(graph, ops[1], terms, depth + 1),
                (false, true) => collect(graph, ops[0], terms, depth + 1),
                _ => None,
            }
        }
        _ => None,
    }
}
