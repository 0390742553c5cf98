//! Text and JSON renderings of fused programs and memory plans (`--emit fused`,
//! `--emit plan`, `rfnc stats --memory`).

use std::collections::HashMap;
use std::fmt::Write;

use crate::ir::{escape, Graph, NodeId};
use crate::passes::fusion::{Fused, FusionReport};
use crate::passes::memory::Plan;

/// The fused program in MLIR generic syntax: leaves first, then one `rfn.kernel` per
/// kernel in schedule order, whose region holds its ops and yields its outputs.
pub fn print_fused(graph: &Graph, fused: &Fused, order: &[usize]) -> String {
    let mut out = String::from("\"rfn.fused\"() ({\n");
    let mut name: HashMap<NodeId, String> = HashMap::new();
    let topo = graph
        .topo_order()
        .unwrap_or_else(|| graph.node_ids().collect());
    for (i, &n) in topo
        .iter()
        .filter(|&&n| graph.node(n).op.is_leaf())
        .enumerate()
    {
        let node = graph.node(n);
        let attrs = render_attrs(graph, n);
        let _ = writeln!(
            out,
            "  %{i} = \"rfn.{}\"(){attrs} : () -> {} {}",
            node.op.mnemonic(),
            node.ty,
            node.loc
        );
        name.insert(n, format!("%{i}"));
    }
    for &k in order {
        let kernel = &fused.kernels[k];
        let arg_types: Vec<String> = kernel
            .inputs
            .iter()
            .map(|&i| graph.node(i).ty.to_string())
            .collect();
        let args: Vec<String> = kernel.inputs.iter().map(|i| name[i].clone()).collect();
        let results: Vec<String> = kernel
            .outputs
            .iter()
            .map(|&o| graph.node(o).ty.to_string())
            .collect();
        let head = if kernel.outputs.len() == 1 {
            format!("%k{k}")
        } else {
            format!("%k{k}:{}", kernel.outputs.len())
        };
        let _ = writeln!(out, "  {head} = \"rfn.kernel\"({}) ({{", args.join(", "));
        let mut local: HashMap<NodeId, String> = HashMap::new();
        let block_args: Vec<String> = kernel
            .inputs
            .iter()
            .enumerate()
            .map(|(j, &i)| {
                local.insert(i, format!("%k{k}_a{j}"));
                format!("%k{k}_a{j}: {}", graph.node(i).ty)
            })
            .collect();
        let _ = writeln!(out, "  ^bb0({}):", block_args.join(", "));
        for (j, &n) in kernel.nodes.iter().enumerate() {
            let node = graph.node(n);
            let ops = graph.operands(n);
            let operands: Vec<String> = ops.iter().map(|o| local[o].clone()).collect();
            let types: Vec<String> = ops.iter().map(|&o| graph.node(o).ty.to_string()).collect();
            let _ = writeln!(
                out,
                "    %k{k}_{j} = \"rfn.{}\"({}){} : ({}) -> {} {}",
                node.op.mnemonic(),
                operands.join(", "),
                render_attrs(graph, n),
                types.join(", "),
                node.ty,
                node.loc
            );
            local.insert(n, format!("%k{k}_{j}"));
        }
        let yields: Vec<String> = kernel.outputs.iter().map(|o| local[o].clone()).collect();
        let _ = writeln!(
            out,
            "    \"rfn.yield\"({}) : ({}) -> ()",
            yields.join(", "),
            results.join(", ")
        );
        let anchor = kernel.anchor.map_or("none".to_string(), |a| {
            graph.node(a).op.mnemonic().to_string()
        });
        let result_types = if results.len() == 1 {
            results[0].clone()
        } else {
            format!("({})", results.join(", "))
        };
        let _ = writeln!(
            out,
            "  }}) {{anchor = \"{anchor}\", ops = {}}} : ({}) -> {result_types}",
            kernel.nodes.len(),
            arg_types.join(", ")
        );
        for (j, &o) in kernel.outputs.iter().enumerate() {
            let n = if kernel.outputs.len() == 1 {
                format!("%k{k}")
            } else {
                format!("%k{k}#{j}")
            };
            name.insert(o, n);
        }
    }
    let values: Vec<String> = graph
        .outputs
        .iter()
        .map(|o| name[&o.value].clone())
        .collect();
    let types: Vec<String> = graph
        .outputs
        .iter()
        .map(|o| graph.node(o.value).ty.to_string())
        .collect();
    let names: Vec<String> = graph
        .outputs
        .iter()
        .map(|o| format!("\"{}\"", escape(&o.name)))
        .collect();
    let _ = writeln!(
        out,
        "  \"rfn.return\"({}) {{names = [{}]}} : ({}) -> ()",
        values.join(", "),
        names.join(", "),
        types.join(", ")
    );
    let _ = writeln!(
        out,
        "}}) {{sym_name = \"{}\"}} : () -> ()",
        escape(&graph.name)
    );
    out
}

fn render_attrs(graph: &Graph, n: NodeId) -> String {
    let attrs = graph.node(n).op.attrs();
    if attrs.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = attrs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    format!(" {{{}}}", parts.join(", "))
}

/// One value live at the peak, for reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LiveValue {
    pub op: String,
    pub scope: String,
    pub location: String,
    pub bytes: u64,
}

/// The memory figures of a plan, for `rfnc stats --memory` (text or JSON).
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemoryReport {
    pub network: String,
    pub mode: &'static str,
    pub ops: usize,
    pub kernels: usize,
    pub bytes_not_written: u64,
    pub arena_bytes: u64,
    pub lower_bound_bytes: u64,
    pub naive_bytes: u64,
    /// Parameters and optimizer state updated in place (outside the arena).
    pub in_place_update_bytes: u64,
    pub plan_to_bound: f64,
    pub naive_to_plan: f64,
    pub placement: &'static str,
    pub peak_step: usize,
    pub peak_live: Vec<LiveValue>,
}

fn describe(graph: &Graph, v: NodeId) -> (String, String, String) {
    let node = graph.node(v);
    let location = node
        .loc
        .pos
        .as_ref()
        .map_or("(no source)".to_string(), |p| {
            format!("{}:{}:{}", p.file, p.line, p.col)
        });
    (
        node.op.mnemonic().to_string(),
        node.loc.scope.clone(),
        location,
    )
}

pub fn memory_report(
    graph: &Graph,
    fusion: &FusionReport,
    plan: &Plan,
    mode: &'static str,
) -> MemoryReport {
    let peak_live = plan
        .peak_live_set()
        .into_iter()
        .map(|s| {
            let storage = &plan.storages[s];
            let v = plan.value_at(s, plan.peak_step);
            let (op, scope, location) = describe(graph, v);
            LiveValue {
                op,
                scope,
                location,
                bytes: storage.bytes,
            }
        })
        .collect();
    let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    MemoryReport {
        network: graph.name.clone(),
        mode,
        ops: fusion.ops,
        kernels: fusion.kernels,
        bytes_not_written: fusion.bytes_not_written,
        arena_bytes: plan.arena_bytes,
        lower_bound_bytes: plan.lower_bound,
        naive_bytes: plan.naive_bytes,
        in_place_update_bytes: plan.in_place_bytes,
        plan_to_bound: ratio(plan.arena_bytes, plan.lower_bound),
        naive_to_plan: ratio(plan.naive_bytes, plan.arena_bytes),
        placement: plan.placement,
        peak_step: plan.peak_step,
        peak_live,
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// The memory summary and the live set at the peak, as text.
pub fn render_memory(report: &MemoryReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({}): {} ops in {} kernels; fusion keeps {} out of memory",
        report.network,
        report.mode,
        report.ops,
        report.kernels,
        mib(report.bytes_not_written)
    );
    let _ = writeln!(
        out,
        "arena        {:>12}  ({} bytes, placement: {})",
        mib(report.arena_bytes),
        report.arena_bytes,
        report.placement
    );
    let _ = writeln!(
        out,
        "lower bound  {:>12}  (plan / bound = {:.3})",
        mib(report.lower_bound_bytes),
        report.plan_to_bound
    );
    let _ = writeln!(
        out,
        "naive        {:>12}  (naive / plan = {:.1}x)",
        mib(report.naive_bytes),
        report.naive_to_plan
    );
    if report.in_place_update_bytes > 0 {
        let _ = writeln!(
            out,
            "updated in place, outside the arena: {} (parameters and momentum)",
            mib(report.in_place_update_bytes)
        );
    }
    let live_total: u64 = report.peak_live.iter().map(|v| v.bytes).sum();
    let _ = writeln!(
        out,
        "live at the peak (step {}): {} values, {}",
        report.peak_step,
        report.peak_live.len(),
        mib(live_total)
    );
    const SHOWN: usize = 16;
    for v in report.peak_live.iter().take(SHOWN) {
        let scope = if v.scope.is_empty() {
            String::new()
        } else {
            format!(" [{}]", v.scope)
        };
        let _ = writeln!(
            out,
            "  {:>12}  rfn.{}{scope}  {}",
            mib(v.bytes),
            v.op,
            v.location
        );
    }
    if report.peak_live.len() > SHOWN {
        let rest: u64 = report.peak_live.iter().skip(SHOWN).map(|v| v.bytes).sum();
        let _ = writeln!(
            out,
            "  ... and {} smaller values ({}); --json lists them all",
            report.peak_live.len() - SHOWN,
            mib(rest)
        );
    }
    out
}

/// `--emit plan`: the summary, then every storage with its offset, size, lifetime and values.
pub fn render_plan(graph: &Graph, fused: &Fused, plan: &Plan, report: &MemoryReport) -> String {
    let mut out = render_memory(report);
    let _ = writeln!(out, "schedule:");
    for (step, &k) in plan.order.iter().enumerate() {
        let kernel = &fused.kernels[k];
        let anchor = kernel.anchor.map_or("elementwise".to_string(), |a| {
            graph.node(a).op.mnemonic().to_string()
        });
        let _ = writeln!(
            out,
            "  step {step:>4}: k{k} {anchor} ({} ops)",
            kernel.nodes.len()
        );
    }
    let _ = writeln!(out, "storages (offset, bytes, live steps, values):");
    let mut by_offset: Vec<usize> = (0..plan.storages.len()).collect();
    by_offset.sort_by_key(|&s| (plan.storages[s].offset, plan.storages[s].start));
    for s in by_offset {
        let st = &plan.storages[s];
        let values: Vec<String> = st
            .values
            .iter()
            .map(|&v| {
                let (op, scope, location) = describe(graph, v);
                format!(
                    "rfn.{op}{} {location}",
                    if scope.is_empty() {
                        String::new()
                    } else {
                        format!(" [{scope}]")
                    }
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "  {:>10} {:>10} [{:>4}, {:>4}]  {}",
            st.offset,
            st.bytes,
            st.start,
            st.end,
            values.join("; then ")
        );
    }
    out
}
