//! `rfnc weights`: initial weights as a safetensors file: deterministic random ones, or
//! with `--from-torchvision` pretrained ResNet backbones and random weights for the rest.

use std::path::Path;

use rfnc_driver::pretrained::{import_torchvision, Imported};
use rfnc_driver::weights::{init_weights, weights_failure};
use rfnc_driver::{Error, Network};
use rfnc_dsl::Diagnostic;
use rfnc_runtime::save_weights;

use crate::cli::Common;
use crate::print::print_stdout;

/// At most this many parameters are initialised in memory (8 GiB of f32).
const MAX_PARAMS: u64 = 1 << 31;

pub fn run(
    common: &Common,
    output: &Path,
    seed: u64,
    from_torchvision: Option<&Path>,
) -> Result<(), Error> {
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
    let (weights, summary) = match from_torchvision {
        None => (init_weights(graph, seed), String::new()),
        Some(file) => {
            let imported = import_torchvision(graph, file, seed)?;
            let summary = summary(&imported, file, seed);
            (imported.weights, summary)
        }
    };
    save_weights(output, &weights).map_err(weights_failure)?;
    print_stdout(&format!(
        "{summary}wrote {} tensors to {}\n",
        weights.tensors.len(),
        output.display()
    ))
}

/// What came from the file and what from the rules, e.g.
/// `imported 265 tensors from r50.safetensors into backbone (ignored 55: fc.*, num_batches_tracked)`
/// `initialised 88 tensors by the network's rules (seed 0): refine4.*, ..., head.*`.
fn summary(imported: &Imported, file: &Path, seed: u64) -> String {
    let scopes: Vec<String> = imported
        .backbones
        .iter()
        .map(|b| {
            if b.is_empty() {
                "(top level)".into()
            } else {
                b.clone()
            }
        })
        .collect();
    let each = if scopes.len() > 1 {
        format!(" ({} each)", imported.imported.len() / scopes.len())
    } else {
        String::new()
    };
    let ignored = match imported.ignored.len() {
        0 => String::new(),
        n => format!(" (ignored {n}: fc.*, num_batches_tracked)"),
    };
    let mut text = format!(
        "imported {} tensors{each} from {} into {}{ignored}\n",
        imported.imported.len(),
        file.display(),
        scopes.join(", "),
    );
    let components: Vec<String> = imported
        .initialised_components()
        .iter()
        .map(|c| format!("{c}.*"))
        .collect();
    if components.is_empty() {
        text.push_str("initialised 0 tensors: every parameter came from the file\n");
    } else {
        text.push_str(&format!(
            "initialised {} tensors by the network's rules (seed {seed}): {}\n",
            imported.initialised.len(),
            components.join(", ")
        ));
    }
    text
}
