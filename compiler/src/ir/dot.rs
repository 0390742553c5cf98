//! Graphviz output of the graph IR (`rfnc compile --emit dot`).
//!
//! Nodes are labelled with the op, its result type and its scope; parameters are drawn as
//! grey boxes; edges are labelled with the operand index where an op has several.

use std::fmt::Write;

use super::{escape, Graph, Op};

pub fn to_dot(graph: &Graph) -> String {
    let order = graph
        .topo_order()
        .unwrap_or_else(|| graph.node_ids().collect());
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", escape(&graph.name));
    let _ = writeln!(out, "  rankdir=TB;");
    let _ = writeln!(
        out,
        "  node [shape=box, fontname=\"monospace\", fontsize=10];"
    );
    for &id in &order {
        let node = graph.node(id);
        let head = match &node.op {
            Op::Input { name } => format!("input {name}"),
            Op::Param { name, .. } => name.clone(),
            op => op.mnemonic().to_string(),
        };
        let style = match node.op {
            Op::Param { .. } => ", style=filled, fillcolor=\"#eeeeee\"",
            Op::Input { .. } => ", style=filled, fillcolor=\"#cde7ff\"",
            _ => "",
        };
        let mut label = format!("{head}\\n{}", node.ty);
        if !node.loc.scope.is_empty() && !matches!(node.op, Op::Param { .. }) {
            label.push_str(&format!("\\n{}", escape(&node.loc.scope)));
        }
        let _ = writeln!(out, "  n{} [label=\"{label}\"{style}];", id.index());
        let operands = graph.operands(id);
        for (i, src) in operands.iter().enumerate() {
            if operands.len() > 1 {
                let _ = writeln!(
                    out,
                    "  n{} -> n{} [label=\"{i}\"];",
                    src.index(),
                    id.index()
                );
            } else {
                let _ = writeln!(out, "  n{} -> n{};", src.index(), id.index());
            }
        }
    }
    for o in &graph.outputs {
        let _ = writeln!(
            out,
            "  out_{0} [label=\"output {0}\", shape=oval];",
            escape(&o.name)
        );
        let _ = writeln!(out, "  n{} -> out_{};", o.value.index(), escape(&o.name));
    }
    out.push_str("}\n");
    out
}
