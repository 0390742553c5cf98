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

use crate::stats_report;

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
        /// The stage to print: `ast` (syntax tree of every module), `graph` (the verified
        /// graph IR in MLIR generic syntax), `dot` (the graph for Graphviz), `fused` (the
        /// kernels after canonicalisation and fusion, in schedule order), `plan` (the memory
        /// plan: arena, lower bound, live set at the peak, every buffer's offset and lifetime),
        /// `prepare` (inference: the program run once at weight load that folds frozen batch
        /// norm into the convs)
        #[arg(long, value_enum, default_value_t = Emit::Graph)]
        emit: Emit,
        /// Write to this file (atomically) instead of standard output
        #[arg(short, long, value_name = "PATH")]
        output: Option<PathBuf>,
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

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    Ast,
    Graph,
    Dot,
    Fused,
    Plan,
    Prepare,
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
            if train.memory_budget.is_some() && !matches!(emit, Emit::Fused | Emit::Plan) {
                return Err(Failure::plain(
                    Diagnostic::new("--memory-budget applies to --emit fused and --emit plan")
                        .hint("add --emit plan to see the budgeted plan, or use rfnc stats --memory --train --memory-budget SIZE"),
                ));
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
            };
            emit_text(&text, output.as_deref())
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
