//! `rfnc weights`: deterministic random initial weights as a safetensors file.

use std::path::Path;

use rfnc_driver::weights::{init_weights, weights_failure};
use rfnc_driver::{Error, Network};
use rfnc_dsl::Diagnostic;
use rfnc_runtime::save_weights;

use crate::cli::Common;
use crate::print::print_stdout;

/// At most this many parameters are initialised in memory (8 GiB of f32).
const MAX_PARAMS: u64 = 1 << 31;

pub fn run(common: &Common, output: &Path, seed: u64) -> Result<(), Error> {
    let network = Network::elaborate(&common.source(), &common.log())?;
    let graph = &network.forward;
    let params = rfnc_compiler::stats::stats(graph).total.params;
    if params > MAX_PARAMS {
        return Err(Diagnostic::new(format!(
            "{params} parameters are too many to initialise in memory"
        ))
        .note(format!(
            "`rfnc weights` writes at most {MAX_PARAMS} parameters (8 GiB)"
        ))
        .into());
    }
    let weights = init_weights(graph, seed);
    save_weights(output, &weights).map_err(weights_failure)?;
    print_stdout(&format!(
        "wrote {} tensors to {}\n",
        weights.tensors.len(),
        output.display()
    ))
}
