//! `rfnc stats`: parameters, multiply-accumulates and feature memory per component; with
//! `--memory` the planned arena.

use rfnc_compiler::report::{memory_report, render_memory};
use rfnc_driver::plan::{graph, plan};
use rfnc_driver::{Error, Network, Target};

use crate::cli::StatsArgs;
use crate::print::print_stdout;
use crate::stats_report;

pub fn run(args: &StatsArgs) -> Result<(), Error> {
    let common = &args.common;
    let log = common.log();
    // A budget is about the memory plan, so it asks for the memory report.
    let memory = args.memory || args.memory_budget.is_some();
    let target = match args.train {
        true => Target::Train {
            settings: Default::default(),
            budget: args.memory_budget.clone(),
        },
        false => Target::Inference,
    };
    let network = Network::elaborate(&common.source(), &log)?;
    let graph = graph(&network, &target, &log)?;
    let stats = rfnc_compiler::stats::stats(&graph);
    let memory = match memory {
        true => {
            let c = plan(&graph, &target, &log)?;
            Some(memory_report(
                &c.graph,
                &c.fusion,
                &c.plan,
                target.describe(),
            ))
        }
        false => None,
    };
    let text = if args.json {
        stats_report::json(&graph.name, &common.input, &stats, memory.as_ref())
    } else {
        let mut t = stats_report::table(&graph.name, &common.input, &stats);
        if let Some(m) = &memory {
            t.push('\n');
            t.push_str(&render_memory(m));
        }
        t
    };
    print_stdout(&text)
}
