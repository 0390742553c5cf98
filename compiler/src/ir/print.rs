//! The text form of the graph IR: MLIR's generic operation syntax with an `rfn.` prefix.
//!
//! Invariants: values are numbered `%0, %1, ...` in the deterministic topological order of
//! [`Graph::topo_order`]; attributes print in alphabetical order; every op carries its
//! `loc(...)`. `mlir-opt --allow-unregistered-dialect` accepts the output, and
//! [`crate::ir::parse_graph`] reads it back to a graph that prints identically.

use std::collections::HashMap;
use std::fmt::Write;

use super::{escape, Graph, NodeId};

/// Prints a graph. A graph with a cycle (which the verifier rejects) prints its nodes in
/// index order so that it can still be inspected.
pub fn print_graph(graph: &Graph) -> String {
    let order = graph
        .topo_order()
        .unwrap_or_else(|| graph.node_ids().collect());
    let names: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let value = |n: &NodeId| {
        names
            .get(n)
            .map_or_else(|| "%<missing>".to_string(), |i| format!("%{i}"))
    };

    let mut out = String::new();
    out.push_str("\"rfn.graph\"() ({\n");
    for (i, &id) in order.iter().enumerate() {
        let node = graph.node(id);
        let operands = graph.operands(id);
        let args: Vec<String> = operands.iter().map(value).collect();
        let arg_types: Vec<String> = operands
            .iter()
            .map(|&o| graph.node(o).ty.to_string())
            .collect();
        let _ = write!(
            out,
            "  %{i} = \"rfn.{}\"({})",
            node.op.mnemonic(),
            args.join(", ")
        );
        let attrs = node.op.attrs();
        if !attrs.is_empty() {
            let parts: Vec<String> = attrs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            let _ = write!(out, " {{{}}}", parts.join(", "));
        }
        let _ = writeln!(
            out,
            " : ({}) -> {} {}",
            arg_types.join(", "),
            node.ty,
            node.loc
        );
    }
    let results: Vec<String> = graph.outputs.iter().map(|o| value(&o.value)).collect();
    let result_types: Vec<String> = graph
        .outputs
        .iter()
        .map(|o| {
            if graph.contains(o.value) {
                graph.node(o.value).ty.to_string()
            } else {
                "none".into()
            }
        })
        .collect();
    let output_names: Vec<String> = graph
        .outputs
        .iter()
        .map(|o| format!("\"{}\"", escape(&o.name)))
        .collect();
    let _ = write!(
        out,
        "  \"rfn.return\"({}) {{names = [{}]",
        results.join(", "),
        output_names.join(", ")
    );
    if let Some(objective) = &graph.objective {
        let _ = write!(out, ", objective = \"{}\"", escape(objective));
    }
    let _ = writeln!(out, "}} : ({}) -> ()", result_types.join(", "));
    let _ = writeln!(
        out,
        "}}) {{sym_name = \"{}\"}} : () -> ()",
        escape(&graph.name)
    );
    out
}
