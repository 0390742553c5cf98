//! Canonicalisation: the inference graph, dead-code and common-subexpression elimination,
//! and folding frozen batch norm into the preceding conv.
//!
//! Invariants: every pass keeps the graph verified and its outputs' values unchanged (the
//! reference interpreter gives the same results before and after; tests check it). Folding
//! moves the per-channel arithmetic of frozen batch norm into a separate *prepare* program
//! that the runtime runs once when weights are loaded, never per step.

use std::collections::{HashMap, HashSet};

use crate::ir::{objective_terms, Graph, Loc, NodeId, Op, Output, ParamKind, TensorType};

/// The inference graph: the outputs without the objective and its terms (the losses a
/// weighted objective sums), nothing only they needed (the losses, their upsampling, the
/// labels input), and no dropout (the identity at inference).
pub fn inference(graph: &Graph) -> Graph {
    let mut g = graph.clone();
    if let Some(objective) = g.objective.take() {
        let terms = g
            .output(&objective)
            .and_then(|root| objective_terms(&g, root))
            .unwrap_or_default();
        g.outputs
            .retain(|o| o.name != objective && !terms.contains(&o.value));
    }
    let dropouts: Vec<NodeId> = g
        .node_ids()
        .filter(|&id| matches!(g.node(id).op, Op::Dropout { .. }) && g.operands(id).len() == 1)
        .collect();
    for id in dropouts {
        let x = g.operands(id)[0];
        g.replace_uses(id, x);
        g.remove(id);
    }
    dead_code(&mut g);
    g
}

/// Removes every node that no output depends on. Returns how many were removed.
pub fn dead_code(graph: &mut Graph) -> usize {
    let mut live: HashSet<NodeId> = graph.outputs.iter().map(|o| o.value).collect();
    let mut stack: Vec<NodeId> = live.iter().copied().collect();
    while let Some(id) = stack.pop() {
        for o in graph.operands(id) {
            if live.insert(o) {
                stack.push(o);
            }
        }
    }
    let dead: Vec<NodeId> = graph.node_ids().filter(|id| !live.contains(id)).collect();
    for &id in &dead {
        graph.remove(id);
    }
    dead.len()
}

/// Merges computed ops that have the same op, attributes and operands (inputs and
/// parameters are distinct by name, so they never merge). Returns how many were removed.
pub fn common_subexpressions(graph: &mut Graph) -> usize {
    let order = graph.topo_order().expect("verified graphs are acyclic");
    let mut seen: HashMap<String, NodeId> = HashMap::new();
    let mut removed = 0;
    for id in order {
        let node = graph.node(id);
        if node.op.is_leaf() && !matches!(node.op, Op::Constant { .. }) {
            continue;
        }
        let attrs: Vec<String> = node
            .op
            .attrs()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let operands: Vec<String> = graph
            .operands(id)
            .iter()
            .map(|o| o.index().to_string())
            .collect();
        let key = format!(
            "{}|{}|{}",
            node.op.mnemonic(),
            attrs.join(","),
            operands.join(",")
        );
        match seen.get(&key) {
            Some(&first) => {
                graph.replace_uses(id, first);
                graph.remove(id);
                removed += 1;
            }
            None => {
                seen.insert(key, id);
            }
        }
    }
    removed
}

/// An inference graph with batch norm folded away, and the program that computes the
/// folded parameters from the original ones.
pub struct Folded {
    pub graph: Graph,
    /// Inputs: the original conv and batch-norm parameters; outputs: the folded conv
    /// parameters, named as the folded graph's `rfn.param`s.
    pub prepare: Graph,
    /// How many batch norms were folded.
    pub folded: usize,
}

/// Folds every `batch_norm(conv2d(x, w[, b]), mean, var, gamma, beta)` whose conv result
/// has no other use into `conv2d(x, w', b')`, where `w'` and `b'` are new parameters
/// (`<conv>.folded_weight`, `<conv>.folded_bias`) computed by the prepare program.
pub fn fold_batch_norm(graph: &Graph) -> Folded {
    let mut g = graph.clone();
    let mut prepare = Graph::new(format!("{}_prepare", graph.name));
    let mut prepare_params: HashMap<NodeId, NodeId> = HashMap::new();
    let mut folded = 0;
    let order = g.topo_order().expect("verified graphs are acyclic");
    for bn in order {
        let Op::BatchNorm { eps } = g.node(bn).op else {
            continue;
        };
        let bn_ops = g.operands(bn);
        let conv = bn_ops[0];
        let conv_is_output = g.outputs.iter().any(|o| o.value == conv);
        if !matches!(g.node(conv).op, Op::Conv2d { .. })
            || g.users(conv).len() != 1
            || conv_is_output
        {
            continue;
        }
        let conv_ops = g.operands(conv);
        let w = conv_ops[1];
        let Op::Param { name: w_name, .. } = g.node(w).op.clone() else {
            continue;
        };
        let base = w_name
            .strip_suffix(".weight")
            .unwrap_or(&w_name)
            .to_string();
        // The prepare program reads the original parameters.
        let mut leaf = |g: &Graph, prepare: &mut Graph, id: NodeId| -> NodeId {
            *prepare_params.entry(id).or_insert_with(|| {
                let n = g.node(id);
                prepare.add(n.op.clone(), &[], n.ty.clone(), n.loc.clone())
            })
        };
        let pw = leaf(&g, &mut prepare, w);
        let stats: Vec<NodeId> = bn_ops[1..]
            .iter()
            .map(|&p| leaf(&g, &mut prepare, p))
            .collect();
        let loc = g.node(bn).loc.clone();
        let new_w = prepare
            .add_inferred(
                Op::FoldBnWeight { eps },
                &[pw, stats[1], stats[2]],
                loc.clone(),
            )
            .expect("folding fits a verified conv");
        let mut bias_args = stats.clone();
        if let Some(&b) = conv_ops.get(2) {
            bias_args.push(leaf(&g, &mut prepare, b));
        }
        let new_b = prepare
            .add_inferred(Op::FoldBnBias { eps }, &bias_args, loc.clone())
            .expect("per-channel operands");
        let (w_out, b_out) = (
            format!("{base}.folded_weight"),
            format!("{base}.folded_bias"),
        );
        prepare.outputs.push(Output {
            name: w_out.clone(),
            value: new_w,
        });
        prepare.outputs.push(Output {
            name: b_out.clone(),
            value: new_b,
        });

        let w_ty = g.node(w).ty.clone();
        let w_loc = g.node(w).loc.clone();
        let cout = w_ty.dims[0];
        let fw = g.add(
            Op::Param {
                name: w_out,
                kind: ParamKind::ConvWeight,
            },
            &[],
            w_ty,
            w_loc.clone(),
        );
        let fb = g.add(
            Op::Param {
                name: b_out,
                kind: ParamKind::ConvBias,
            },
            &[],
            TensorType::f32(vec![cout]),
            w_loc,
        );
        let conv_op = g.node(conv).op.clone();
        let conv_loc: Loc = g.node(conv).loc.clone();
        let fused = g
            .add_inferred(conv_op, &[conv_ops[0], fw, fb], conv_loc)
            .expect("same conv, new parameters");
        g.replace_uses(bn, fused);
        folded += 1;
    }
    dead_code(&mut g);
    Folded {
        graph: g,
        prepare,
        folded,
    }
}
