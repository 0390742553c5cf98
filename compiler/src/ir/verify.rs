//! The verifier: structural and type invariants every graph must satisfy between passes.
//!
//! Checks: the graph is acyclic; every op has its operand slots 0..n filled exactly once with
//! an allowed count; every recorded type equals the one shape inference computes; inputs
//! and parameters have unique, non-empty names; parameter shapes fit their kind; there is at
//! least one output, output names are unique, and the objective (if any) names an output
//! that is a loss.

use std::collections::HashMap;

use super::{infer, DType, Graph, Loc, Op, ParamKind};

/// One violated invariant, with the location of the op that violates it.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyError {
    pub message: String,
    pub loc: Loc,
}

/// Checks every invariant and returns all violations (empty when the graph is valid).
pub fn verify(graph: &Graph) -> Vec<VerifyError> {
    let mut errors = Vec::new();
    let mut err = |message: String, loc: &Loc| {
        errors.push(VerifyError {
            message,
            loc: loc.clone(),
        })
    };
    if graph.topo_order().is_none() {
        err("the graph has a cycle".into(), &Loc::default());
    }
    let mut input_names: HashMap<&str, ()> = HashMap::new();
    let mut param_names: HashMap<&str, ()> = HashMap::new();
    for id in graph.node_ids() {
        let node = graph.node(id);
        let mut slots = graph.operand_slots(id);
        slots.sort_unstable();
        let (lo, hi) = node.op.arity();
        if slots.len() < lo || slots.len() > hi {
            err(
                format!(
                    "rfn.{} has {} operands, expected {}",
                    node.op.mnemonic(),
                    slots.len(),
                    node.op.arity_text()
                ),
                &node.loc,
            );
            continue;
        }
        if slots
            .iter()
            .enumerate()
            .any(|(i, (slot, _))| *slot as usize != i)
        {
            err(
                format!(
                    "rfn.{} has gaps or repeats in its operand slots",
                    node.op.mnemonic()
                ),
                &node.loc,
            );
            continue;
        }
        match &node.op {
            Op::Input { name } => {
                if name.is_empty() || input_names.insert(name, ()).is_some() {
                    err(
                        format!("input name \"{name}\" is empty or used twice"),
                        &node.loc,
                    );
                }
            }
            Op::Param { name, kind } => {
                if name.is_empty() || param_names.insert(name, ()).is_some() {
                    err(
                        format!("parameter name \"{name}\" is empty or used twice"),
                        &node.loc,
                    );
                }
                let rank_ok = match kind {
                    ParamKind::ConvWeight => node.ty.rank() == 4,
                    ParamKind::Momentum => node.ty.rank() >= 1,
                    _ => node.ty.rank() == 1,
                };
                if !rank_ok || node.ty.elements() == 0 || node.ty.dtype != DType::F32 {
                    err(
                        format!(
                            "parameter \"{name}\" of kind {} cannot have type {}",
                            kind.name(),
                            node.ty
                        ),
                        &node.loc,
                    );
                }
            }
            op => {
                let operands = graph.operands(id);
                let types: Vec<_> = operands.iter().map(|&o| &graph.node(o).ty).collect();
                match infer(op, &types) {
                    Ok(ty) if ty == node.ty => {}
                    Ok(ty) => err(
                        format!(
                            "rfn.{} is recorded as {} but its operands give {ty}",
                            op.mnemonic(),
                            node.ty
                        ),
                        &node.loc,
                    ),
                    Err(e) => err(e.message, &node.loc),
                }
            }
        }
    }
    if graph.outputs.is_empty() {
        err("the graph has no outputs".into(), &Loc::default());
    }
    let mut output_names: HashMap<&str, ()> = HashMap::new();
    for o in &graph.outputs {
        if !graph.contains(o.value) {
            err(
                format!(
                    "output \"{}\" refers to a value that does not exist",
                    o.name
                ),
                &Loc::default(),
            );
        }
        if output_names.insert(&o.name, ()).is_some() {
            err(
                format!("output name \"{}\" is used twice", o.name),
                &Loc::default(),
            );
        }
    }
    if let Some(objective) = &graph.objective {
        match graph.output(objective) {
            Some(v) if graph.contains(v) && super::objective_terms(graph, v).is_some() => {}
            Some(_) => err(
                format!("objective \"{objective}\" is not a loss or a weighted sum of losses"),
                &Loc::default(),
            ),
            None => err(
                format!("objective \"{objective}\" is not an output"),
                &Loc::default(),
            ),
        }
    }
    errors
}
