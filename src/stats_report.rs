//! Renders `rfnc stats` as a table or as JSON.

use rfnc_compiler::report::MemoryReport;
use rfnc_compiler::stats::{Cost, Stats};
use serde_json::{json, Map, Value};

const GIB: f64 = (1u64 << 30) as f64;

fn cost_json(c: &Cost) -> Value {
    json!({ "params": c.params, "macs": c.macs, "naive_feature_bytes": c.naive_feature_bytes })
}

pub fn json(network: &str, input: &str, stats: &Stats, memory: Option<&MemoryReport>) -> String {
    let mut components = Map::new();
    for (name, cost) in &stats.components {
        components.insert(name.clone(), cost_json(cost));
    }
    let mut value = json!({
        "network": network,
        "input": input,
        "components": components,
        "total": cost_json(&stats.total),
    });
    if let Some(m) = memory {
        value["memory"] = serde_json::to_value(m).expect("plain numbers and strings");
    }
    format!(
        "{}\n",
        serde_json::to_string_pretty(&value).expect("JSON of plain numbers")
    )
}

pub fn table(network: &str, input: &str, stats: &Stats) -> String {
    let mut out = format!("{network} at input {input}\n");
    out.push_str(&format!(
        "{:<16} {:>14} {:>18} {:>10} {:>14}\n",
        "component", "params", "MACs", "GMACs", "naive memory"
    ));
    let row = |name: &str, c: &Cost| {
        format!(
            "{:<16} {:>14} {:>18} {:>10.2} {:>10.3} GiB\n",
            name,
            c.params,
            c.macs,
            c.macs as f64 / 1e9,
            c.naive_feature_bytes as f64 / GIB
        )
    };
    for (name, cost) in &stats.components {
        out.push_str(&row(name, cost));
    }
    out.push_str(&row("total", &stats.total));
    out.push_str(
        "MACs: k*k*Cin*Cout*Hout*Wout/groups per conv. Naive memory: every op output its own \
         float32 buffer, no reuse.\n",
    );
    out
}
