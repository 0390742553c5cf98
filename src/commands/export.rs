//! `rfnc export`: the network's inference graph and its weights as an ONNX model file.

use rfnc_driver::export::{export, ExportOptions, WeightsFrom};
use rfnc_driver::{Error, Network};

use crate::cli::ExportArgs;
use crate::print::print_stdout;

pub fn run(args: &ExportArgs) -> Result<(), Error> {
    let common = &args.common;
    let log = common.log();
    let network = Network::elaborate(&common.source(), &log)?;
    let weights = match (&args.weights, args.init_seed) {
        (Some(path), _) => WeightsFrom::File(path.clone()),
        (None, Some(seed)) => WeightsFrom::Random(seed),
        (None, None) => return Err(Error::message(
            "give the weights to export: --weights W.safetensors, or --init-seed N for random ones",
        )),
    };
    let options = ExportOptions {
        weights,
        output: args.output.clone(),
        opset: args.opset,
        dynamic_size: args.dynamic_size,
        argmax: args.argmax,
        keep_batch_norm: args.keep_batch_norm,
        external_data: args.external_data,
    };
    let report = export(&network, &options, &log)?;
    for note in &report.notes {
        log.note(&format!("note: --dynamic-size: {note}"));
    }
    print_stdout(&report.summary)
}
