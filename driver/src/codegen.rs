//! Code generation: a planned program lowered to kernel IR (with the prepare program that
//! folds batch norm), the kernels as MLIR (GPU and host forms), LLVM IR and PTX, the bundle
//! directory, and the `ptxas` resource report.
//!
//! Invariant: every bundle written records each parameter's initialisation rule, so it runs
//! with random weights by itself.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use rfnc_bundle::atomic::{write_atomically, write_dir_atomically};
use rfnc_bundle::{Bundle, HostLaunch, LeafRole, Mode, Precision};
use rfnc_compiler::codegen::mlir_text::{gpu_module, host_module};
use rfnc_compiler::codegen::program::{lower_programs, Lowered, NamedKernel};
use rfnc_compiler::init::param_inits;
use rfnc_compiler::passes::pipeline::plan_program;
use rfnc_llvm::{
    compile_gpu, compile_kernels, default_cache_dir, find_libdevice, link_host_cached,
    ptxas_report, CompileOptions, CompiledKernel, GpuTarget, KernelSource,
};

use crate::error::Error;
use crate::frontend::Network;
use crate::log::Log;
use crate::plan::{graph, plan, Target};

/// The program lowered to kernels: the main program (inference or training step) and, for
/// inference with batch norm, the prepare program; each parameter leaf carries its
/// initialisation rule.
/// The GPU's convolutions multiply in `precision`.
pub fn lower_to_kernels(
    network: &Network,
    target: &Target,
    precision: Precision,
    log: &Log,
) -> Result<Lowered, Error> {
    let graph = graph(network, target, log)?;
    let main = plan(&graph, target, log)?;
    let start = Instant::now();
    let prepare = main
        .prepare
        .as_ref()
        .map(plan_program)
        .transpose()
        .map_err(|e| Error::internal(format!("lowering the prepare program failed: {e}")))?;
    let mode = match target {
        Target::Train { .. } => Mode::Train,
        Target::Inference => Mode::Inference,
    };
    let mut lowered = lower_programs(
        &network.source.name(),
        mode,
        precision,
        &main,
        prepare.as_ref(),
    )
    .map_err(|e| Error::internal(format!("kernel generation failed: {e}")))?;
    record_inits(network, &mut lowered.bundle)?;
    log.since("kernel generation (KIR)", start);
    Ok(lowered)
}

/// Gives every parameter leaf the initialisation rule of the forward graph's parameter.
fn record_inits(network: &Network, bundle: &mut Bundle) -> Result<(), Error> {
    let rules: HashMap<String, rfnc_bundle::Init> = param_inits(&network.forward)
        .into_iter()
        .map(|p| (p.name, p.init))
        .collect();
    for leaf in bundle
        .leaves
        .iter_mut()
        .filter(|l| l.role == LeafRole::Param)
    {
        let rule = rules.get(&leaf.name).ok_or_else(|| {
            Error::internal(format!(
                "bundle parameter `{}` is not a parameter of the forward graph",
                leaf.name
            ))
        })?;
        leaf.init = Some(*rule);
    }
    Ok(())
}

/// The GPU architecture PTX is generated for unless `--gpu` says otherwise (A100).
pub const DEFAULT_GPU: &str = "sm_80";

/// How to generate code.
pub struct CodegenOptions {
    /// `sm_80`, `sm_90`, ...
    pub gpu: String,
    /// How the GPU's convolutions multiply.
    pub precision: Precision,
    /// Generate PTX for `gpu`.
    pub ptx: bool,
    /// Generate host code for the CPU executor.
    pub host: bool,
    /// Compiled kernels are cached here by content hash (`None`: no cache).
    pub cache: Option<std::path::PathBuf>,
    pub threads: usize,
}

impl CodegenOptions {
    /// PTX for `gpu` (convolutions multiplying in `precision`) and host code.
    pub fn new(gpu: &str, precision: Precision, use_cache: bool) -> Self {
        CodegenOptions {
            gpu: gpu.to_string(),
            precision,
            ptx: true,
            host: true,
            cache: if use_cache { default_cache_dir() } else { None },
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// Only the code one device runs: PTX for a GPU, host code for the CPU (which then needs
    /// neither libdevice nor a GPU tool).
    pub fn for_device(self, gpu: bool) -> Self {
        CodegenOptions {
            ptx: gpu,
            host: !gpu,
            ..self
        }
    }

    /// The GPU target; refused where the precision needs tensor-core instructions the
    /// architecture lacks (TF32 and BF16 `mma.sync`: sm_80 and later).
    fn target(&self) -> Result<GpuTarget, String> {
        let generation: u32 = self
            .gpu
            .trim_start_matches("sm_")
            .trim_end_matches(char::is_alphabetic)
            .parse()
            .unwrap_or(0);
        if self.ptx && self.precision != Precision::F32 && generation < 80 {
            return Err(format!(
                "--precision {} needs tensor cores with TF32 and BF16 (sm_80 and later); {} \
                 has none: compile with --precision f32 or for a newer GPU (--gpu sm_80)",
                self.precision.name(),
                self.gpu
            ));
        }
        Ok(GpuTarget {
            sm: self.gpu.clone(),
            libdevice: find_libdevice(),
        })
    }
}

/// How many launches use each kernel.
fn launch_counts(bundle: &Bundle) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    let programs = || bundle.prepare.iter().chain([&bundle.main]);
    for launch in programs().flat_map(|p| &p.launches) {
        *counts.entry(launch.kernel.as_str()).or_default() += 1;
    }
    // The CPU-only kernels are counted in the CPU's schedule.
    let host_only: HashSet<&str> = bundle
        .kernels
        .iter()
        .filter(|k| k.host_only)
        .map(|k| k.name.as_str())
        .collect();
    for program in programs().filter_map(|p| p.host.as_ref()) {
        for launch in &program.launches {
            if let HostLaunch::Kernel(l) = launch {
                if host_only.contains(l.kernel.as_str()) {
                    *counts.entry(l.kernel.as_str()).or_default() += 1;
                }
            }
        }
    }
    counts
}

fn header(out: &mut String, k: &NamedKernel, launches: usize) {
    let _ = writeln!(
        out,
        "// kernel {}: {} ({} threads per block, launched {} time{}){}",
        k.name,
        k.kernel.ops,
        k.kernel.block,
        launches,
        if launches == 1 { "" } else { "s" },
        match k.kernel.schedule.as_str() {
            "" => String::new(),
            s => format!("; {s}"),
        }
    );
}

/// Every unique kernel as MLIR, one module each, separated by `// -----` (the separator of
/// `mlir-opt --split-input-file`).
pub fn render_mlir(lowered: &Lowered, host: bool) -> String {
    let counts = launch_counts(&lowered.bundle);
    let mut out = String::new();
    let kernels = lowered.kernels.iter().filter(|k| host || !k.host_only);
    for (i, k) in kernels.enumerate() {
        if i > 0 {
            out.push_str("\n// -----\n\n");
        }
        header(
            &mut out,
            k,
            counts.get(k.name.as_str()).copied().unwrap_or(0),
        );
        out.push_str(&if host {
            host_module(&k.kernel, &k.name)
        } else {
            gpu_module(&k.kernel, &k.name)
        });
    }
    out
}

/// The MLIR of one kernel, in both forms.
fn source(k: &NamedKernel) -> KernelSource {
    KernelSource {
        gpu_mlir: (!k.host_only).then(|| gpu_module(&k.kernel, &k.name)),
        host_mlir: host_module(&k.kernel, &k.name),
    }
}

/// Every kernel's optimised NVPTX LLVM IR.
pub fn render_llvm(lowered: &Lowered, options: &CodegenOptions) -> Result<String, String> {
    let counts = launch_counts(&lowered.bundle);
    let target = options.target()?;
    let mut out = String::new();
    for k in &lowered.kernels {
        header(
            &mut out,
            k,
            counts.get(k.name.as_str()).copied().unwrap_or(0),
        );
        let Some(gpu_mlir) = source(k).gpu_mlir else {
            continue;
        };
        let artifacts = compile_gpu(&gpu_mlir, &target).map_err(|e| e.to_string())?;
        out.push_str(&artifacts.llvm_ir);
        out.push('\n');
    }
    Ok(out)
}

/// Compiles every kernel to PTX and to host code, as `options` ask (in parallel, through the
/// cache).
pub fn compile_all(
    lowered: &Lowered,
    options: &CodegenOptions,
    log: &Log,
) -> Result<Vec<CompiledKernel>, String> {
    let start = Instant::now();
    let names: Vec<String> = lowered.kernels.iter().map(|k| k.name.clone()).collect();
    let render = |i: usize| Ok(source(&lowered.kernels[i]));
    let compiled = compile_kernels(
        &names,
        &render,
        &CompileOptions {
            target: options.target()?,
            cache_dir: options.cache.clone(),
            generator: rfnc_compiler::CODEGEN_SOURCE_HASH.to_string(),
            threads: options.threads,
            ptx: options.ptx,
            host: options.host,
        },
    )
    .map_err(|e| e.to_string())?;
    let cached = compiled.iter().filter(|k| k.cached).count();
    let what = match (options.ptx, options.host) {
        (true, true) => "PTX + host",
        (true, false) => "PTX",
        (false, _) => "host",
    };
    log.since(
        &format!(
            "MLIR -> LLVM -> {what} ({} kernels, {cached} cached)",
            compiled.len()
        ),
        start,
    );
    Ok(compiled)
}

/// Every kernel's PTX, one module after the other.
pub fn render_ptx(lowered: &Lowered, compiled: &[CompiledKernel]) -> String {
    let counts = launch_counts(&lowered.bundle);
    let mut out = String::new();
    for (k, c) in lowered.kernels.iter().zip(compiled) {
        if k.host_only {
            continue;
        }
        header(
            &mut out,
            k,
            counts.get(k.name.as_str()).copied().unwrap_or(0),
        );
        out.push_str(&c.ptx);
        out.push('\n');
    }
    out
}

/// Whether `dir` holds a bundle (so writing a new one over it loses nothing).
fn is_bundle(dir: &Path) -> bool {
    dir.join("bundle.json").is_file()
}

/// Writes the bundle directory atomically: bundle.json, kernels/NAME.ptx (with PTX),
/// host.bc (with host code). Returns the bundle as written, which records the code it has.
pub fn write_bundle(
    dir: &Path,
    lowered: &Lowered,
    compiled: &[CompiledKernel],
    options: &CodegenOptions,
    log: &Log,
) -> Result<Bundle, String> {
    let mut bundle = lowered.bundle.clone();
    let mut files = Vec::new();
    if options.host {
        let start = Instant::now();
        let bitcode: Vec<Vec<u8>> = compiled.iter().map(|c| c.host_bitcode.clone()).collect();
        let host =
            link_host_cached(&bitcode, options.cache.as_deref()).map_err(|e| e.to_string())?;
        log.since("link host code", start);
        files.push(("host.bc".to_string(), host));
        bundle.host_code = true;
    }
    if options.ptx {
        bundle.gpu_target = Some(options.gpu.clone());
        for (info, c) in bundle.kernels.iter_mut().zip(compiled) {
            if info.host_only {
                continue;
            }
            let path = format!("kernels/{}.ptx", info.name);
            files.push((path.clone(), c.ptx.clone().into_bytes()));
            info.ptx = Some(path);
        }
    }
    bundle
        .validate()
        .map_err(|e| format!("internal error: the bundle to write is inconsistent: {e}"))?;
    let start = Instant::now();
    let json = serde_json::to_string_pretty(&bundle)
        .map_err(|e| format!("cannot serialise the bundle: {e}"))?;
    files.push(("bundle.json".to_string(), json.into_bytes()));
    write_dir_atomically(dir, &files, is_bundle)
        .map_err(|e| format!("cannot write the bundle `{}`: {e}", dir.display()))?;
    log.since("write bundle", start);
    Ok(bundle)
}

/// `ptxas -v` for every kernel: registers, shared memory, stack and spills.
pub fn render_ptx_report(
    lowered: &Lowered,
    compiled: &[CompiledKernel],
    gpu: &str,
) -> Result<String, String> {
    let counts = launch_counts(&lowered.bundle);
    let mut out = format!(
        "ptxas report for {gpu} ({} kernels)\n{:<52} {:>8} {:>5} {:>10} {:>7} {:>12} {:>12}\n",
        compiled.iter().filter(|c| !c.ptx.is_empty()).count(),
        "kernel",
        "launches",
        "regs",
        "shared B",
        "stack B",
        "spill st B",
        "spill ld B"
    );
    let mut spilling = 0;
    for c in compiled.iter().filter(|c| !c.ptx.is_empty()) {
        for r in ptxas_report(&c.ptx, gpu).map_err(|e| e.to_string())? {
            if r.spill_stores_bytes + r.spill_loads_bytes > 0 {
                spilling += 1;
            }
            let _ = writeln!(
                out,
                "{:<52} {:>8} {:>5} {:>10} {:>7} {:>12} {:>12}",
                r.name,
                counts.get(r.name.as_str()).copied().unwrap_or(0),
                r.registers,
                r.shared_bytes,
                r.stack_bytes,
                r.spill_stores_bytes,
                r.spill_loads_bytes
            );
        }
    }
    let _ = writeln!(out, "{spilling} kernels spill registers");
    Ok(out)
}

/// What `rfnc compile -o DIR` reports of a bundle it wrote.
pub fn bundle_summary(dir: &Path, bundle: &Bundle) -> String {
    let launches =
        bundle.main.launches.len() + bundle.prepare.as_ref().map_or(0, |p| p.launches.len());
    let arena = bundle
        .main
        .arena_bytes
        .max(bundle.prepare.as_ref().map_or(0, |p| p.arena_bytes));
    let mode = match bundle.mode {
        Mode::Train => "training step",
        Mode::Inference => "inference",
    };
    let code = match (&bundle.gpu_target, bundle.host_code) {
        (Some(gpu), true) => format!("PTX for {gpu} and host code"),
        (Some(gpu), false) => format!("PTX for {gpu}"),
        (None, _) => "host code".to_string(),
    };
    // The CPU's weights transformed once (Winograd filters), beside the leaves.
    let packed = match bundle.main.host.as_ref().map_or(0, |h| h.packed_bytes) {
        0 => String::new(),
        bytes => format!(" (+ {} packed on the CPU)", crate::plan::mib(bytes)),
    };
    format!(
        "wrote {}: {} ({mode}), {launches} launches of {} kernels, arena {}, leaves {}{packed}, {code}\n",
        dir.display(),
        bundle.network,
        bundle.kernels.len(),
        crate::plan::mib(arena),
        crate::plan::mib(bundle.leaves_bytes),
    )
}

/// SHA-256 (hex) of a graph's IR text: identifies a program (checkpoints, bundle keys).
pub fn program_hash(graph: &rfnc_compiler::ir::Graph) -> String {
    use sha2::{Digest, Sha256};
    let text = rfnc_compiler::ir::print_graph(graph);
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compiles `network` for `target` into `dir` unless `dir` already holds that program
/// compiled the same way (device code, GPU) by this rfnc, as its `key` file records.
/// Returns whether it compiled.
pub fn ensure_bundle(
    network: &Network,
    target: &Target,
    options: &CodegenOptions,
    dir: &Path,
    log: &Log,
) -> Result<bool, Error> {
    let graph = crate::plan::graph(network, target, log)?;
    let key = format!(
        "{} {} {} {} {} ptx={} host={} {}",
        program_hash(&graph),
        env!("CARGO_PKG_VERSION"),
        rfnc_compiler::CODEGEN_SOURCE_HASH,
        options.gpu,
        options.precision.name(),
        options.ptx,
        options.host,
        target.describe()
    );
    let key_file = dir.join("key");
    let current = std::fs::read_to_string(&key_file).is_ok_and(|k| k == key);
    if current && rfnc_runtime::load_bundle(dir).is_ok() {
        return Ok(false);
    }
    compile_bundle(network, target, options, dir, log)?;
    write_atomically(&key_file, key.as_bytes())
        .map_err(|e| Error::message(format!("`{}`: {e}", key_file.display())))?;
    Ok(true)
}

/// Compiles a program into the bundle directory `dir` (the code `options` ask for),
/// returning the bundle as written.
pub fn compile_bundle(
    network: &Network,
    target: &Target,
    options: &CodegenOptions,
    dir: &Path,
    log: &Log,
) -> Result<Bundle, Error> {
    let lowered = lower_to_kernels(network, target, options.precision, log)?;
    let compiled = compile_all(&lowered, options, log).map_err(Error::message)?;
    write_bundle(dir, &lowered, &compiled, options, log).map_err(Error::message)
}
