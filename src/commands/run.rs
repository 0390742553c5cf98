//! `rfnc run`: a program compiled to a temporary bundle (or an already compiled bundle)
//! run on the CPU or a GPU; prints the outputs or each training step's loss.

use rfnc_driver::codegen::{compile_bundle, CodegenOptions, DEFAULT_GPU};
use rfnc_driver::frontend::DEFAULT_INPUT;
use rfnc_driver::run::{
    profile_report, run_steps, runtime_failure, save_outputs, start_session, SessionOptions,
};
use rfnc_driver::weights::weights_failure;
use rfnc_driver::{Error, Network};
use rfnc_dsl::Diagnostic;
use rfnc_runtime::{load_bundle, save_weights};

use crate::cli::{DeviceArg, PrecisionArg, RunArgs};
use crate::print::print_stdout;

pub fn run(args: &RunArgs) -> Result<(), Error> {
    let common = &args.common;
    let log = common.log();
    // A directory is a compiled bundle; anything else a program to compile first.
    let staging = tempfile::tempdir()
        .map_err(|e| Error::message(format!("cannot create a temporary directory: {e}")))?;
    let (dir, network) = if common.file.is_dir() {
        refuse_compile_flags(args)?;
        (common.file.clone(), None)
    } else {
        let network = Network::elaborate(&common.source(), &log)?;
        let dir = staging.path().join("bundle");
        // Only the code the device runs: a CPU run needs no libdevice and no GPU tools.
        let options = CodegenOptions::new(&args.gpu, args.precision.into(), !args.no_cache)
            .for_device(args.device == DeviceArg::Cuda);
        compile_bundle(&network, &args.train.target()?, &options, &dir, &log)?;
        (dir, Some(network))
    };
    let loaded = load_bundle(&dir).map_err(runtime_failure)?;
    let device = super::device_of(args.device, args.threads);
    let options = SessionOptions {
        device,
        weights: args.weights.clone(),
        init_seed: args.init_seed,
        train: args.train.train,
        inputs: args.inputs.clone(),
    };
    let forward = network.as_ref().map(|n| &n.forward);
    let (mut session, unused) = start_session(&loaded, forward, &options, &log)?;
    session.set_profiling(args.profile);
    let mut text =
        run_steps(&mut session, args.steps, args.train.train).map_err(runtime_failure)?;
    if let Some(report) = profile_report(&session, 25) {
        text.push_str(&report);
    }
    print_stdout(&text)?;
    if let Some(path) = &args.output {
        save_outputs(&session, path)?;
    }
    if let Some(path) = &args.save_weights {
        let mut trained = session.weights().map_err(runtime_failure)?;
        trained.tensors.extend(unused.tensors);
        save_weights(path, &trained).map_err(weights_failure)?;
    }
    Ok(())
}

/// A bundle is already compiled: flags that shape compilation cannot apply to it.
fn refuse_compile_flags(args: &RunArgs) -> Result<(), Error> {
    let common = &args.common;
    let settings = match args.train.target()? {
        rfnc_driver::Target::Train { settings, .. } => settings.given(),
        rfnc_driver::Target::Inference => None,
    };
    let given = [
        (!common.define.is_empty(), "-D"),
        (common.input != DEFAULT_INPUT, "--input"),
        (args.gpu != DEFAULT_GPU, "--gpu"),
        (args.precision != PrecisionArg::Tf32, "--precision"),
        (args.no_cache, "--no-cache"),
        (args.train.step.memory_budget.is_some(), "--memory-budget"),
    ]
    .into_iter()
    .find_map(|(given, flag)| given.then_some(flag))
    .or(settings);
    match given {
        None => Ok(()),
        Some(flag) => Err(Diagnostic::new(format!(
            "{flag} shapes compilation, but `{}` is an already compiled bundle",
            common.file.display()
        ))
        .hint("recompile the program with the flag (rfnc compile ... -o DIR), or run the .rfn program")
        .into()),
    }
}
