//! `rfnc check`: parse, elaborate and verify; optionally check a weights file.

use std::path::Path;

use rfnc_driver::weights::load_for;
use rfnc_driver::{Error, Network};

use crate::cli::Common;
use crate::print::print_stdout;

pub fn run(common: &Common, weights: Option<&Path>) -> Result<(), Error> {
    let network = Network::elaborate(&common.source(), &common.log())?;
    let graph = &network.forward;
    if let Some(path) = weights {
        load_for(graph, path)?;
    }
    let stats = rfnc_compiler::stats::stats(graph);
    print_stdout(&format!(
        "{}: ok ({} ops, {} parameters, {:.2} GMACs at {})\n",
        graph.name,
        graph.len(),
        stats.total.params,
        stats.total.macs as f64 / 1e9,
        common.input
    ))
}
