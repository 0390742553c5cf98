//! Command-line interface: argument parsing (clap) and the subcommands.
//!
//! Exit codes: 0 success; 1 a user error (bad program, bad flag, unreadable file), reported
//! as a diagnostic; 70 an internal compiler error (a bug: please report it).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rfnc_compiler::ir::{print_graph, to_dot, verify, Graph};
use rfnc_compiler::output::write_atomically;
use rfnc_compiler::passes::pipeline::{
    compile_inference, compile_training, compile_training_within, BudgetError, Compiled,
};
use rfnc_compiler::passes::render::{memory_report, print_fused, render_memory, render_plan};
use rfnc_compiler::passes::train::{train_step, TrainConfig};
use rfnc_dsl::{
    ast_print, elaborate_with_training, load_file, Diagnostic, Options, Program, SourceMap,
};
use rfnc_runtime::{check_weights, init_weights, load_weights, save_weights, WeightsError};

use crate::codegen_cmd::{
    compile_all, render_llvm, render_mlir, render_ptx, render_ptx_report, write_bundle,
    CodegenOptions,
};
use crate::run_cmd::{random_inputs, run_steps, save_outputs};
use crate::stats_report;
use rfnc_compiler::codegen::bundle::Mode;
use rfnc_compiler::codegen::program::{lower_bundle, Lowered};
use rfnc_compiler::passes::pipeline::compile_program;
use rfnc_runtime::{load_bundle, Device, RuntimeError, Session};

const ABOUT: &str = "Compiler for RefineNet-style dense-prediction networks written in .rfn";

const LONG_ABOUT: &str = "\
Compiler for RefineNet-style dense-prediction networks written in .rfn.

A .rfn program imports building blocks from the standard library (std.resnet,
std.refinenet, ...) and declares one `network` with typed inputs, outputs and a training
objective. rfnc elaborates it into a verified graph IR with static shapes and prints any
stage of the lowering.

Examples:
  rfnc check examples/refinenet4.rfn -D depth=152
  rfnc compile examples/tiny.rfn --input 1x3x64x64 --emit graph -o build/tiny.mlir
  rfnc stats examples/refinenet4.rfn -D depth=101 --json

Exit status: 0 on success, 1 on a user error (reported with its source location),
70 on an internal compiler error.";

#[derive(Parser)]
#[command(name = "rfnc", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse, elaborate and verify a program; report errors or a one-line summary
    Check {
        #[command(flatten)]
        common: Common,
        /// Also check a safetensors weights file: every parameter present, with its shape,
        /// and nothing extra
        #[arg(long, value_name = "W.safetensors")]
        weights: Option<PathBuf>,
    },
    /// Write deterministic random initial weights for the program's parameters as safetensors
    /// (He-normal for convs followed by batch norm, std 1/sqrt(3 fan_in) for other convs,
    /// zero biases, identity batch norm)
    Weights {
        #[command(flatten)]
        common: Common,
        /// The weights file to write (atomically)
        #[arg(short, long, value_name = "PATH")]
        output: PathBuf,
        /// Seed of the random generator; the same seed gives the same weights
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Compile a program and print a stage of the lowering
    Compile {
        #[command(flatten)]
        common: Common,
        /// What to produce. `bundle` (the default) writes the compiled network to the
        /// directory given by -o: bundle.json (arena, leaves, launches, outputs; see
        /// docs/runtime.md), kernels/NAME.ptx and host.bc, which `rfnc run` executes. The
        /// stages print instead: `ast` (syntax tree of every module), `graph` (the verified
        /// graph IR in MLIR generic syntax), `dot` (the graph for Graphviz), `fused` (the
        /// kernels after canonicalisation and fusion, in schedule order), `plan` (the memory
        /// plan: arena, lower bound, live set at the peak, every buffer's offset and lifetime),
        /// `prepare` (inference: the program run once at weight load that folds frozen batch
        /// norm into the convs), `mlir` (every unique kernel as MLIR for the GPU: gpu.func
        /// over arith, scf, memref, math), `mlir-host` (the same kernels as host functions,
        /// as the CPU executor runs them), `llvm` (each kernel's optimised NVPTX LLVM IR),
        /// `ptx` (each kernel's PTX)
        #[arg(long, value_enum, default_value_t = Emit::Bundle)]
        emit: Emit,
        /// Write to this file (atomically) instead of standard output; with the default
        /// `--emit bundle`, the bundle directory to write (never left half-written; an existing
        /// directory is replaced only if it holds a bundle)
        #[arg(short, long, value_name = "PATH")]
        output: Option<PathBuf>,
        /// GPU architecture of the PTX, e.g. sm_80 (A100), sm_90 (H100)
        #[arg(long, value_name = "sm_XX", default_value = "sm_80", value_parser = parse_gpu)]
        gpu: String,
        /// Report each kernel's registers, shared memory, stack and spills from `ptxas -v`
        #[arg(long)]
        ptx_report: bool,
        /// Compile every kernel afresh instead of reusing cached PTX and host code (the cache
        /// is $RFNC_CACHE_DIR, else $XDG_CACHE_HOME/rfnc, else ~/.cache/rfnc)
        #[arg(long)]
        no_cache: bool,
        #[command(flatten)]
        train: TrainArgs,
    },
    /// Compile a program (or take a bundle written by `rfnc compile -o DIR`) and run it on
    /// the CPU or an NVIDIA GPU, with weights from a file or random ones from a seed and
    /// random inputs; prints the outputs, or the loss of each training step
    Run {
        #[command(flatten)]
        common: Common,
        /// Where to run: `cpu` (the host kernels, JIT-compiled, on every core) or `cuda` (the
        /// PTX kernels on GPU 0 through the CUDA driver)
        #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
        device: DeviceArg,
        /// Weights (safetensors, named by the graph's parameter names); without it, random
        /// weights from --init-seed as `rfnc weights` makes them
        #[arg(long, value_name = "W.safetensors")]
        weights: Option<PathBuf>,
        /// Seed of the random weights and of the random inputs
        #[arg(long, default_value_t = 0)]
        init_seed: u64,
        /// CPU threads (default: every core)
        #[arg(long)]
        threads: Option<usize>,
        /// How many times to run: training steps with --train, else repeated inference
        /// runs (each one timed)
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        steps: u32,
        /// With --train: write the trained parameters and momentum buffers here (atomically)
        #[arg(long, value_name = "W.safetensors", requires = "train")]
        save_weights: Option<PathBuf>,
        /// Write the outputs of the last run as safetensors (atomically)
        #[arg(short, long, value_name = "OUT.safetensors")]
        output: Option<PathBuf>,
        /// GPU architecture to compile for (a program, not a bundle)
        #[arg(long, value_name = "sm_XX", default_value = "sm_80", value_parser = parse_gpu)]
        gpu: String,
        /// Compile every kernel afresh instead of using the cache
        #[arg(long)]
        no_cache: bool,
        #[command(flatten)]
        train: TrainArgs,
    },
    /// Report parameters, multiply-accumulates and naive feature memory per component
    Stats {
        #[command(flatten)]
        common: Common,
        /// Also plan memory and report the arena, the lower bound, the naive figure and the
        /// values live at the peak (JSON: a `memory` object)
        #[arg(long)]
        memory: bool,
        /// Report the training step instead of inference
        #[arg(long)]
        train: bool,
        /// With --train: plan the training step within SIZE by recomputation (as for compile)
        #[arg(long, value_name = "SIZE", requires = "train")]
        memory_budget: Option<String>,
        /// Print one JSON object: {"network", "input", "components": {NAME: {params, macs,
        /// naive_feature_bytes}}, "total": {...}}
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct Common {
    /// The .rfn program (its `network` is compiled)
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Shape of the network's first input, NxCxHxW; fixes the symbolic sizes (N, H, W)
    #[arg(long, value_name = "NxCxHxW", default_value = "1x3x512x512")]
    input: String,
    /// Override a `config` value of the program, e.g. -D depth=152 (repeatable)
    #[arg(short = 'D', value_name = "NAME=VALUE")]
    define: Vec<String>,
    /// Print the time of each stage (load, elaborate, verify) on standard error
    #[arg(long)]
    timings: bool,
}

/// The training step: one graph for forward, loss, gradients and the SGD update. Values
/// given here override the network's `sgd(...)`; patterns add to its `lr_scale`/`freeze`.
#[derive(Args)]
struct TrainArgs {
    /// Compile the training step instead of inference: the graph takes parameters, momentum
    /// buffers, the batch and the step counter, and returns the loss, the updated
    /// parameters and the updated momentum buffers
    #[arg(long)]
    train: bool,
    /// Learning rate (default 5e-4, or the network's `sgd(lr = ...)`)
    #[arg(long, requires = "train")]
    lr: Option<f64>,
    /// SGD momentum (default 0.9)
    #[arg(long, requires = "train")]
    momentum: Option<f64>,
    /// L2 weight decay added to every gradient (default 5e-4)
    #[arg(long, requires = "train")]
    weight_decay: Option<f64>,
    /// Train parameters matching PATTERN at lr * FACTOR, e.g. --lr-scale backbone=0.1
    /// (a pattern is a scope such as `backbone`, or uses `*`, such as `*.bias`; repeatable)
    #[arg(long, value_name = "PATTERN=FACTOR", requires = "train")]
    lr_scale: Vec<String>,
    /// Do not train parameters matching PATTERN (repeatable)
    #[arg(long, value_name = "PATTERN", requires = "train")]
    freeze: Vec<String>,
    /// Fit the training step's arena into SIZE (e.g. 700MiB, 3GiB) by recomputing cheap
    /// forward values in the backward pass; reports what was saved, or the smallest budget
    /// that can be met
    #[arg(long, value_name = "SIZE", requires = "train")]
    memory_budget: Option<String>,
    /// Seed of the dropout masks (0 to 2^63 - 1)
    #[arg(long, default_value_t = 0, requires = "train", value_parser = clap::value_parser!(u64).range(0..=i64::MAX as u64))]
    seed: u64,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Emit {
    Bundle,
    Ast,
    Graph,
    Dot,
    Fused,
    Plan,
    Prepare,
    Mlir,
    MlirHost,
    Llvm,
    Ptx,
}

impl Emit {
    /// Whether this stage runs code generation (and so uses --gpu, --ptx-report, the cache).
    fn generates_code(self) -> bool {
        matches!(
            self,
            Emit::Bundle | Emit::Mlir | Emit::MlirHost | Emit::Llvm | Emit::Ptx
        )
    }
}

/// Accepts `sm_XX` GPU architecture names.
fn parse_gpu(text: &str) -> Result<String, String> {
    // sm_80, sm_90, sm_90a, sm_100: two or three digits and an optional feature letter.
    let ok = text.strip_prefix("sm_").is_some_and(|v| {
        let digits = v.trim_end_matches(|c: char| c.is_ascii_lowercase());
        (2..=3).contains(&digits.len())
            && digits.chars().all(|c| c.is_ascii_digit())
            && v.len() - digits.len() <= 1
    });
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}` is not a GPU architecture; expected sm_XX, e.g. sm_80 or sm_90"
        ))
    }
}

/// A failure to report: a diagnostic with the sources it points into, or an internal error.
enum Failure {
    User(Box<Diagnostic>, SourceMap),
    Internal(String),
}

impl Failure {
    fn plain(d: Diagnostic) -> Self {
        Failure::User(Box::new(d), SourceMap::new())
    }
}

pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::User(d, sources)) => {
            eprint!("{}", d.render(&sources));
            ExitCode::from(1)
        }
        Err(Failure::Internal(message)) => {
            eprintln!("internal compiler error: {message}");
            eprintln!("This is a bug in rfnc; please report it with the program that caused it.");
            ExitCode::from(70)
        }
    }
}

fn execute(command: Command) -> Result<(), Failure> {
    match command {
        Command::Check { common, weights } => {
            let graph = build_graph(&common)?;
            if let Some(path) = weights {
                let loaded = load_weights(&path).map_err(weights_failure)?;
                check_weights(&graph, &loaded).map_err(|e| {
                    weights_failure(e).with_title(format!(
                        "`{}` does not fit network `{}`",
                        path.display(),
                        graph.name
                    ))
                })?;
            }
            let stats = rfnc_compiler::stats::stats(&graph);
            print_stdout(&format!(
                "{}: ok ({} ops, {} parameters, {:.2} GMACs at {})\n",
                graph.name,
                graph.len(),
                stats.total.params,
                stats.total.macs as f64 / 1e9,
                common.input
            ))
        }
        Command::Compile {
            common,
            emit,
            output,
            gpu,
            ptx_report,
            no_cache,
            train,
        } => {
            let graph = || {
                if train.train {
                    build_train_graph(&common, &train)
                } else {
                    build_graph(&common)
                }
            };
            // A memory budget shapes the plan, so only the stages after planning use it.
            if train.memory_budget.is_some()
                && !(matches!(emit, Emit::Fused | Emit::Plan) || emit.generates_code())
            {
                return Err(Failure::plain(
                    Diagnostic::new("--memory-budget applies to the stages after memory planning")
                        .hint(
                        "add --emit plan to see the budgeted plan, or compile a bundle with -o DIR",
                    ),
                ));
            }
            if ptx_report && !matches!(emit, Emit::Bundle | Emit::Ptx) {
                return Err(Failure::plain(Diagnostic::new(
                    "--ptx-report needs PTX: use it with the bundle (-o DIR) or --emit ptx",
                )));
            }
            if emit.generates_code() {
                let options = CodegenOptions::new(&gpu, !no_cache);
                return compile_code(
                    &common,
                    &train,
                    emit,
                    output.as_deref(),
                    &options,
                    ptx_report,
                );
            }
            let lowered = || {
                lower(
                    &common,
                    &graph()?,
                    train.train,
                    train.memory_budget.as_deref(),
                )
            };
            let text = match emit {
                Emit::Ast => {
                    options(&common)?;
                    let program = load(&common)?;
                    ast_print::print_modules(&program.modules, &program.sources)
                }
                Emit::Graph => print_graph(&graph()?),
                Emit::Dot => to_dot(&graph()?),
                Emit::Fused => {
                    let c = lowered()?;
                    print_fused(&c.graph, &c.fused, &c.plan.order)
                }
                Emit::Prepare => {
                    if train.train {
                        return Err(Failure::plain(
                            Diagnostic::new("--emit prepare is for inference")
                                .note("the training step keeps batch norm as a per-channel epilogue, since its conv weights change every step")
                                .hint("drop --train to see the prepare program"),
                        ));
                    }
                    let c = lower(&common, &graph()?, false, None)?;
                    match &c.prepare {
                        Some(prepare) => print_graph(prepare),
                        None => "// no conv followed by batch norm: nothing to fold, no prepare program\n".to_string(),
                    }
                }
                Emit::Plan => {
                    let c = lowered()?;
                    let report = memory_report(&c.graph, &c.fusion, &c.plan, mode(train.train));
                    render_plan(&c.graph, &c.fused, &c.plan, &report)
                }
                Emit::Bundle | Emit::Mlir | Emit::MlirHost | Emit::Llvm | Emit::Ptx => {
                    unreachable!("code generation returned above")
                }
            };
            emit_text(&text, output.as_deref())
        }
        Command::Run {
            common,
            device,
            weights,
            init_seed,
            threads,
            steps,
            save_weights: save_to,
            output,
            gpu,
            no_cache,
            train,
        } => {
            let user = |e: String| Failure::plain(Diagnostic::new(e));
            let runtime = |e: RuntimeError| {
                match e {
                RuntimeError::NoGpu(message) => Failure::plain(
                    Diagnostic::new(message)
                        .hint("run on the CPU with --device cpu, or on a machine with an NVIDIA GPU and driver"),
                ),
                other => Failure::plain(Diagnostic::new(other.to_string())),
            }
            };
            // A directory is a compiled bundle; anything else a program to compile first.
            let staging = tempfile::tempdir()
                .map_err(|e| user(format!("cannot create a temporary directory: {e}")))?;
            let (dir, forward) = if common.file.is_dir() {
                // A bundle is already compiled: flags that shape compilation cannot apply.
                let compile_only = [
                    (!common.define.is_empty(), "-D"),
                    (common.input != "1x3x512x512", "--input"),
                    (gpu != "sm_80", "--gpu"),
                    (no_cache, "--no-cache"),
                    (train.lr.is_some(), "--lr"),
                    (train.momentum.is_some(), "--momentum"),
                    (train.weight_decay.is_some(), "--weight-decay"),
                    (!train.lr_scale.is_empty(), "--lr-scale"),
                    (!train.freeze.is_empty(), "--freeze"),
                    (train.memory_budget.is_some(), "--memory-budget"),
                    (train.seed != 0, "--seed"),
                ];
                if let Some((_, flag)) = compile_only.iter().find(|(given, _)| *given) {
                    return Err(Failure::plain(
                        Diagnostic::new(format!(
                            "{flag} shapes compilation, but `{}` is an already compiled bundle",
                            common.file.display()
                        ))
                        .hint("recompile the program with the flag (rfnc compile ... -o DIR), or run the .rfn program"),
                    ));
                }
                (common.file.clone(), None)
            } else {
                let forward = build_graph(&common)?;
                let mut lowered = lower_to_kernels(&common, &train)?;
                lowered.bundle.gpu_target = gpu.clone();
                let options = CodegenOptions::new(&gpu, !no_cache);
                let mut timings = Vec::new();
                let compiled = compile_all(&lowered, &options, true, &mut timings).map_err(user)?;
                let dir = staging.path().join("bundle");
                write_bundle(&dir, &lowered, &compiled, &options, &mut timings).map_err(user)?;
                if common.timings {
                    for (pass, time) in &timings {
                        eprintln!("timing: {pass:<24} {:>9.3} ms", time.as_secs_f64() * 1e3);
                    }
                }
                (dir, Some(forward))
            };
            let loaded = load_bundle(&dir).map_err(runtime)?;
            if train.train != (loaded.bundle.mode == Mode::Train) {
                return Err(Failure::plain(Diagnostic::new(format!(
                    "`{}` is a compiled {} bundle; --train {} it",
                    dir.display(),
                    if loaded.bundle.mode == Mode::Train {
                        "training-step"
                    } else {
                        "inference"
                    },
                    if train.train {
                        "does not match"
                    } else {
                        "is needed to run"
                    }
                ))));
            }
            let weights = match (&weights, &forward) {
                (Some(path), forward) => {
                    let w = load_weights(path).map_err(weights_failure)?;
                    if let Some(graph) = forward {
                        // Momentum buffers (from training) are the session's to check.
                        let mut params = w.clone();
                        params.tensors.retain(|name, _| {
                            !name
                                .strip_suffix(".momentum")
                                .is_some_and(|p| w.tensors.contains_key(p))
                        });
                        check_weights(graph, &params).map_err(|e| {
                            weights_failure(e).with_title(format!(
                                "`{}` does not fit network `{}`",
                                path.display(),
                                graph.name
                            ))
                        })?;
                    }
                    w
                }
                (None, Some(graph)) => init_weights(graph, init_seed),
                (None, None) => {
                    return Err(Failure::plain(
                        Diagnostic::new("a bundle has no graph to make random weights from: give --weights W.safetensors")
                            .hint("`rfnc weights PROGRAM -o W.safetensors` writes random weights; or run the .rfn program instead of the bundle"),
                    ))
                }
            };
            let device = match device {
                DeviceArg::Cpu => Device::Cpu {
                    threads: threads.unwrap_or_else(|| {
                        std::thread::available_parallelism().map_or(1, |n| n.get())
                    }),
                },
                DeviceArg::Cuda => Device::Cuda { ordinal: 0 },
            };
            let start = Instant::now();
            let mut session = Session::new(&loaded, device).map_err(runtime)?;
            report_time(&common, "load bundle (JIT or PTX modules)", start);
            session.load_weights(&weights).map_err(runtime)?;
            random_inputs(&mut session, init_seed).map_err(runtime)?;
            let start = Instant::now();
            session.prepare().map_err(runtime)?;
            report_time(&common, "prepare (fold batch norm)", start);
            let text = run_steps(&mut session, steps, train.train).map_err(runtime)?;
            print_stdout(&text)?;
            if let Some(path) = &output {
                save_outputs(&session, path).map_err(user)?;
            }
            if let Some(path) = &save_to {
                let trained = session.weights().map_err(runtime)?;
                save_weights(path, &trained).map_err(weights_failure)?;
            }
            Ok(())
        }
        Command::Weights {
            common,
            output,
            seed,
        } => {
            let graph = build_graph(&common)?;
            let params = rfnc_compiler::stats::stats(&graph).total.params;
            const MAX_PARAMS: u64 = 1 << 31;
            if params > MAX_PARAMS {
                return Err(Failure::plain(
                    Diagnostic::new(format!(
                        "{params} parameters are too many to initialise in memory"
                    ))
                    .note(format!(
                        "`rfnc weights` writes at most {MAX_PARAMS} parameters (8 GiB)"
                    )),
                ));
            }
            let weights = init_weights(&graph, seed);
            save_weights(&output, &weights).map_err(weights_failure)?;
            print_stdout(&format!(
                "wrote {} tensors to {}\n",
                weights.tensors.len(),
                output.display()
            ))
        }
        Command::Stats {
            common,
            json,
            memory,
            train,
            memory_budget,
        } => {
            // A budget is about the memory plan, so it asks for the memory report.
            let memory = memory || memory_budget.is_some();
            let graph = if train {
                build_train_graph(&common, &TrainArgs::defaults())?
            } else {
                build_graph(&common)?
            };
            let stats = rfnc_compiler::stats::stats(&graph);
            let memory = match memory {
                true => {
                    let c = lower(&common, &graph, train, memory_budget.as_deref())?;
                    Some(memory_report(&c.graph, &c.fusion, &c.plan, mode(train)))
                }
                false => None,
            };
            let text = if json {
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
    }
}

/// The program lowered to kernels: the main program (inference or training step) and, for
/// inference with batch norm, the prepare program.
fn lower_to_kernels(common: &Common, train: &TrainArgs) -> Result<Lowered, Failure> {
    let graph = if train.train {
        build_train_graph(common, train)?
    } else {
        build_graph(common)?
    };
    let main = lower(common, &graph, train.train, train.memory_budget.as_deref())?;
    let start = Instant::now();
    let prepare = main
        .prepare
        .as_ref()
        .map(compile_program)
        .transpose()
        .map_err(|e| Failure::Internal(format!("lowering the prepare program failed: {e}")))?;
    let mode = if train.train {
        Mode::Train
    } else {
        Mode::Inference
    };
    let network = common.file.file_name().map_or_else(
        || common.file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let lowered = lower_bundle(&network, mode, "", &main, prepare.as_ref())
        .map_err(|e| Failure::Internal(format!("kernel generation failed: {e}")))?;
    report_time(common, "kernel generation (KIR)", start);
    Ok(lowered)
}

/// `rfnc compile` from kernels on: MLIR, LLVM IR, PTX or the bundle.
fn compile_code(
    common: &Common,
    train: &TrainArgs,
    emit: Emit,
    output: Option<&Path>,
    options: &CodegenOptions,
    ptx_report: bool,
) -> Result<(), Failure> {
    // The program's own errors come first, then the missing output.
    let mut lowered = lower_to_kernels(common, train)?;
    if emit == Emit::Bundle && output.is_none() {
        return Err(Failure::plain(
            Diagnostic::new("the bundle is a directory: give it with -o DIR").hint(
                "for example -o build/refinenet4, or --emit STAGE to print one stage (see --help)",
            ),
        ));
    }
    lowered.bundle.gpu_target = options.gpu.clone();
    let internal = |e: String| Failure::Internal(e);
    let user = |e: String| Failure::plain(Diagnostic::new(e));
    let mut timings: Vec<(String, std::time::Duration)> = Vec::new();
    let text = match emit {
        Emit::Mlir => Some(render_mlir(&lowered, false).map_err(internal)?),
        Emit::MlirHost => Some(render_mlir(&lowered, true).map_err(internal)?),
        Emit::Llvm => Some(render_llvm(&lowered, options).map_err(user)?),
        _ => None,
    };
    let compiled = match emit {
        Emit::Ptx | Emit::Bundle => {
            Some(compile_all(&lowered, options, emit == Emit::Bundle, &mut timings).map_err(user)?)
        }
        _ => None,
    };
    let text = match (&compiled, emit) {
        (Some(c), Emit::Ptx) => Some(render_ptx(&lowered, c)),
        _ => text,
    };
    if let Some(text) = &text {
        emit_text(text, output)?;
    }
    if let (Some(c), Emit::Bundle, Some(dir)) = (&compiled, emit, output) {
        write_bundle(dir, &lowered, c, options, &mut timings).map_err(user)?;
        let b = &lowered.bundle;
        let launches = b.main.launches.len() + b.prepare.as_ref().map_or(0, |p| p.launches.len());
        print_stdout(&format!(
            "wrote {}: {} ({}), {launches} launches of {} kernels, arena {}, leaves {}, PTX for {}\n",
            dir.display(),
            b.network,
            mode(train.train),
            b.kernels.len(),
            mib(b.main.arena_bytes.max(b.prepare.as_ref().map_or(0, |p| p.arena_bytes))),
            mib(b.leaves_bytes),
            b.gpu_target
        ))?;
    }
    if common.timings {
        for (pass, time) in &timings {
            eprintln!("timing: {pass:<24} {:>9.3} ms", time.as_secs_f64() * 1e3);
        }
    }
    if ptx_report {
        let compiled = compiled.as_deref().unwrap_or_default();
        let report = render_ptx_report(&lowered, compiled, &options.gpu).map_err(user)?;
        if output.is_some() {
            print_stdout(&report)?;
        } else {
            eprint!("{report}");
        }
    }
    Ok(())
}

/// Writes to standard output; a reader that stopped early (`| head`) is not an error.
fn print_stdout(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::plain(Diagnostic::new(format!(
            "cannot write to standard output: {e}"
        )))),
    }
}

/// A weights problem as a diagnostic: the file in the title, one note per problem.
fn weights_failure(e: WeightsError) -> Failure {
    let d = match e {
        WeightsError::Mismatch { problems } => {
            let mut d = Diagnostic::new("the weights do not match the network's parameters");
            const SHOWN: usize = 20;
            for p in problems.iter().take(SHOWN) {
                d = d.note(p.clone());
            }
            if problems.len() > SHOWN {
                d = d.note(format!("... and {} more", problems.len() - SHOWN));
            }
            d.hint("weights are named by the parameter names of `rfnc compile --emit graph`; `rfnc weights` writes a matching file")
        }
        other => Diagnostic::new(other.to_string()),
    };
    Failure::plain(d)
}

impl Failure {
    fn with_title(self, title: String) -> Self {
        match self {
            Failure::User(mut d, s) => {
                d.title = title;
                Failure::User(d, s)
            }
            other => other,
        }
    }
}

fn emit_text(text: &str, output: Option<&Path>) -> Result<(), Failure> {
    match output {
        None => print_stdout(text),
        Some(path) => write_atomically(path, text.as_bytes()).map_err(|e| {
            Failure::plain(Diagnostic::new(format!(
                "cannot write `{}`: {e}",
                path.display()
            )))
        }),
    }
}

fn load(common: &Common) -> Result<Program, Failure> {
    let start = Instant::now();
    let program = load_file(&common.file).map_err(|(d, sources)| Failure::User(d, sources));
    report_time(common, "load (parse + imports)", start);
    program
}

fn report_time(common: &Common, stage: &str, start: Instant) {
    if common.timings {
        eprintln!(
            "timing: {stage:<24} {:>9.3} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
    }
}

/// Loads, elaborates and verifies the program's graph.
fn build_graph(common: &Common) -> Result<Graph, Failure> {
    Ok(elaborate_verified(common)?.0)
}

fn elaborate_verified(common: &Common) -> Result<(Graph, TrainConfig), Failure> {
    let options = options(common)?;
    let program = load(common)?;
    let start = Instant::now();
    let (graph, training) = match elaborate_with_training(&program, &options) {
        Ok(g) => g,
        Err(d) => return Err(Failure::User(d, program.sources)),
    };
    report_time(common, "elaborate + shapes", start);
    verified(common, graph, "elaborated").map(|g| (g, training))
}

/// Runs the verifier; a failure is a compiler bug.
fn verified(common: &Common, graph: Graph, stage: &str) -> Result<Graph, Failure> {
    let start = Instant::now();
    let errors = verify(&graph);
    report_time(common, &format!("verify ({stage})"), start);
    match errors.first() {
        None => Ok(graph),
        Some(first) => Err(Failure::Internal(format!(
            "the {stage} graph fails verification ({} problems); first: {} at {}",
            errors.len(),
            first.message,
            first.loc
        ))),
    }
}

fn mode(train: bool) -> &'static str {
    if train {
        "training step"
    } else {
        "inference"
    }
}

/// Parses a size such as `700MiB`, `3GiB`, `1.5GB` or `123456` (bytes).
fn parse_size(text: &str) -> Result<u64, Diagnostic> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        "t" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "tb" => 1e12,
        _ => f64::NAN,
    };
    match number.parse::<f64>() {
        Ok(v) if scale.is_finite() && v.is_finite() && v * scale >= 1.0 && v * scale < 1e18 => Ok((v * scale) as u64),
        _ => Err(Diagnostic::new(format!("--memory-budget {text}: not a size"))
            .hint("give a positive size of at least 1 byte with a unit, e.g. 700MiB or 3GiB (KiB, MiB, GiB, TiB are powers of 1024; KB, MB, GB, TB of 1000)")),
    }
}

/// A byte count in the largest unit that keeps it readable.
fn mib(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} bytes"),
    }
}

/// Canonicalisation, fusion, scheduling and memory planning (timed with --timings); with
/// `budget`, the training step recomputes forward values until its arena fits.
fn lower(
    common: &Common,
    graph: &Graph,
    train: bool,
    budget: Option<&str>,
) -> Result<Compiled, Failure> {
    let compiled = match (train, budget) {
        (true, Some(text)) => {
            let budget = parse_size(text).map_err(Failure::plain)?;
            match compile_training_within(graph, budget) {
                Ok((compiled, r)) => {
                    eprintln!(
                        "memory budget {}: {}; arena {} -> {} (saved {}), {} values recomputed, {} extra multiply-accumulates",
                        mib(r.budget_bytes),
                        r.stage,
                        mib(r.arena_without_recompute),
                        mib(r.arena_bytes),
                        mib(r.arena_without_recompute - r.arena_bytes),
                        r.recomputed_values,
                        r.extra_macs
                    );
                    Ok(compiled)
                }
                Err(BudgetError::TooSmall { budget, smallest }) => {
                    return Err(Failure::plain(
                        Diagnostic::new(format!(
                            "the training step cannot fit a {} arena: the smallest it can be planned in is {} ({} bytes)",
                            mib(budget),
                            mib(smallest),
                            smallest
                        ))
                        .note("recomputing relu, pooling, resize, dropout, sums, batch norm and convolutions was tried")
                        .hint(format!("use --memory-budget {smallest} (bytes) or more, or a smaller --input")),
                    ))
                }
                Err(BudgetError::Internal(e)) => Err(e),
            }
        }
        (true, None) => compile_training(graph),
        (false, _) => {
            let computed = graph
                .outputs
                .iter()
                .any(|o| Some(&o.name) != graph.objective.as_ref());
            if !computed {
                return Err(Failure::plain(
                    Diagnostic::new(format!("`{}` computes nothing at inference: its only output is the objective", graph.name))
                        .hint("add `output NAME = ...;` for what inference should compute, or use --train"),
                ));
            }
            compile_inference(graph)
        }
    };
    let compiled = compiled.map_err(|e| Failure::Internal(format!("lowering failed: {e}")))?;
    if common.timings {
        for (pass, time) in &compiled.timings {
            eprintln!("timing: {pass:<24} {:>9.3} ms", time.as_secs_f64() * 1e3);
        }
    }
    Ok(compiled)
}

impl TrainArgs {
    /// The training step as the program declares it, with no command-line overrides.
    fn defaults() -> Self {
        TrainArgs {
            train: true,
            lr: None,
            momentum: None,
            weight_decay: None,
            lr_scale: Vec::new(),
            freeze: Vec::new(),
            memory_budget: None,
            seed: 0,
        }
    }
}

/// The training-step graph: the network's settings, overridden by the command line.
fn build_train_graph(common: &Common, args: &TrainArgs) -> Result<Graph, Failure> {
    let (forward, mut config) = elaborate_verified(common)?;
    config.lr = args.lr.unwrap_or(config.lr);
    config.momentum = args.momentum.unwrap_or(config.momentum);
    config.weight_decay = args.weight_decay.unwrap_or(config.weight_decay);
    config.seed = args.seed;
    for entry in &args.lr_scale {
        let parsed = entry
            .rsplit_once('=')
            .and_then(|(p, f)| Some((p.trim().to_string(), f.trim().parse::<f64>().ok()?)));
        match parsed {
            Some((pattern, factor)) if !pattern.is_empty() => {
                config.lr_scales.push((pattern, factor))
            }
            _ => {
                return Err(Failure::plain(
                    Diagnostic::new(format!("--lr-scale {entry}: expected PATTERN=FACTOR"))
                        .hint("for example --lr-scale backbone=0.1"),
                ))
            }
        }
    }
    config.frozen.extend(args.freeze.iter().cloned());
    let start = Instant::now();
    let step = train_step(&forward, &config).map_err(|e| Failure::plain(Diagnostic::new(e.0)))?;
    report_time(common, "autodiff + training step", start);
    verified(common, step, "training-step")
}

fn options(common: &Common) -> Result<Options, Failure> {
    let input = parse_input(&common.input).map_err(Failure::plain)?;
    let mut defines = Vec::new();
    for d in &common.define {
        match d.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() => {
                defines.push((name.trim().to_string(), value.trim().to_string()))
            }
            _ => {
                return Err(Failure::plain(
                    Diagnostic::new(format!("-D {d}: expected NAME=VALUE"))
                        .hint("for example -D depth=152 or -D crp_order=conv_pool"),
                ))
            }
        }
    }
    Ok(Options { input, defines })
}

/// Parses `NxCxHxW` (any number of positive sizes separated by `x`).
fn parse_input(text: &str) -> Result<Vec<u64>, Diagnostic> {
    let bad = |why: String| {
        Diagnostic::new(format!("--input {text}: {why}"))
            .hint("give the first input's sizes separated by `x`, e.g. --input 1x3x512x512")
    };
    let mut dims = Vec::new();
    for part in text.split(['x', 'X']) {
        match part.trim().parse::<u64>() {
            Ok(0) => return Err(bad("sizes must be at least 1".into())),
            Ok(v) if v > (1 << 31) => return Err(bad(format!("{v} is too large"))),
            Ok(v) => dims.push(v),
            Err(_) => return Err(bad(format!("`{part}` is not a size"))),
        }
    }
    Ok(dims)
}

#[cfg(test)]
mod tests {
    use super::parse_input;

    #[test]
    fn input_shapes_parse_and_reject_bad_sizes() {
        assert_eq!(parse_input("1x3x64x64").unwrap(), vec![1, 3, 64, 64]);
        assert!(parse_input("1x3x0x64").is_err());
        assert!(parse_input("1x3xx64").is_err());
        assert!(parse_input("abc").is_err());
    }
}
