//! `rfnc compile`: the bundle directory, or one stage of the lowering printed.

use rfnc_compiler::ir::{print_graph, to_dot};
use rfnc_compiler::report::{memory_report, print_fused, render_plan};
use rfnc_driver::codegen::{
    bundle_summary, compile_all, lower_to_kernels, render_llvm, render_mlir, render_ptx,
    render_ptx_report, write_bundle, CodegenOptions,
};
use rfnc_driver::plan::{graph, plan};
use rfnc_driver::{Error, Log, Network, Target};
use rfnc_dsl::{ast_print, Diagnostic};

use crate::cli::{CompileArgs, Emit};
use crate::print::{emit_text, print_stdout};

pub fn run(args: &CompileArgs) -> Result<(), Error> {
    // A memory budget shapes the plan, so only the stages after planning use it.
    let planned = matches!(args.emit, Emit::Fused | Emit::Plan) || args.emit.generates_code();
    let target = args.train.target()?;
    if args.train.step.memory_budget.is_some() && !planned {
        return Err(
            Diagnostic::new("--memory-budget applies to the stages after memory planning")
                .hint("add --emit plan to see the budgeted plan, or compile a bundle with -o DIR")
                .into(),
        );
    }
    if args.ptx_report && !matches!(args.emit, Emit::Bundle | Emit::Ptx) {
        return Err(Error::message(
            "--ptx-report needs PTX: use it with the bundle (-o DIR) or --emit ptx",
        ));
    }
    let log = args.common.log();
    let source = args.common.source();
    if args.emit == Emit::Ast {
        source.options()?;
        let program = source.load(&log)?;
        let text = ast_print::print_modules(&program.modules, &program.sources);
        return emit_text(&text, args.output.as_deref());
    }
    let network = Network::elaborate(&source, &log)?;
    if args.emit.generates_code() {
        return generate(args, &network, &target, &log);
    }
    let text = match args.emit {
        Emit::Graph => print_graph(&graph(&network, &target, &log)?),
        Emit::Dot => to_dot(&graph(&network, &target, &log)?),
        Emit::Fused => {
            let c = plan(&graph(&network, &target, &log)?, &target, &log)?;
            print_fused(&c.graph, &c.fused, &c.plan.order)
        }
        Emit::Prepare => prepare_text(&network, &target, &log)?,
        Emit::Plan => {
            let c = plan(&graph(&network, &target, &log)?, &target, &log)?;
            let report = memory_report(&c.graph, &c.fusion, &c.plan, target.describe());
            render_plan(&c.graph, &c.fused, &c.plan, &report)
        }
        Emit::Ast | Emit::Bundle | Emit::Mlir | Emit::MlirHost | Emit::Llvm | Emit::Ptx => {
            unreachable!("handled above")
        }
    };
    emit_text(&text, args.output.as_deref())
}

/// `--emit prepare`: the program that folds batch norm at weight load.
fn prepare_text(network: &Network, target: &Target, log: &Log) -> Result<String, Error> {
    if target.is_train() {
        return Err(Diagnostic::new("--emit prepare is for inference")
            .note("the training step keeps batch norm as a per-channel epilogue, since its conv weights change every step")
            .hint("drop --train to see the prepare program")
            .into());
    }
    let c = plan(&network.forward, target, log)?;
    Ok(match &c.prepare {
        Some(prepare) => print_graph(prepare),
        None => {
            "// no conv followed by batch norm: nothing to fold, no prepare program\n".to_string()
        }
    })
}

/// From kernels on: MLIR, LLVM IR, PTX or the bundle.
fn generate(
    args: &CompileArgs,
    network: &Network,
    target: &Target,
    log: &Log,
) -> Result<(), Error> {
    let mut options = CodegenOptions::new(&args.gpu, args.precision.into(), !args.no_cache);
    // Only the bundle needs host code.
    options.host = args.emit == Emit::Bundle;
    // The program's own errors come first, then the missing output.
    let lowered = lower_to_kernels(network, target, options.precision, log)?;
    let output = args.output.as_deref();
    if args.emit == Emit::Bundle && output.is_none() {
        return Err(Diagnostic::new("the bundle is a directory: give it with -o DIR")
            .hint("for example -o build/refinenet4, or --emit STAGE to print one stage (see --help)")
            .into());
    }
    let text = match args.emit {
        Emit::Mlir => Some(render_mlir(&lowered, false)),
        Emit::MlirHost => Some(render_mlir(&lowered, true)),
        Emit::Llvm => Some(render_llvm(&lowered, &options).map_err(Error::message)?),
        _ => None,
    };
    let compiled = match args.emit {
        Emit::Ptx | Emit::Bundle => {
            Some(compile_all(&lowered, &options, log).map_err(Error::message)?)
        }
        _ => None,
    };
    let text = match (&compiled, args.emit) {
        (Some(c), Emit::Ptx) => Some(render_ptx(&lowered, c)),
        _ => text,
    };
    if let Some(text) = &text {
        emit_text(text, output)?;
    }
    if let (Some(c), Emit::Bundle, Some(dir)) = (&compiled, args.emit, output) {
        let bundle = write_bundle(dir, &lowered, c, &options, log).map_err(Error::message)?;
        print_stdout(&bundle_summary(dir, &bundle))?;
    }
    if args.ptx_report {
        let compiled = compiled.as_deref().unwrap_or_default();
        let report = render_ptx_report(&lowered, compiled, &options.gpu).map_err(Error::message)?;
        if output.is_some() {
            print_stdout(&report)?;
        } else {
            eprint!("{report}");
        }
    }
    Ok(())
}
