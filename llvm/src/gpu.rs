//! The GPU path: kernel MLIR -> LLVM IR (MLIR) -> libdevice linked, optimised and compiled
//! to PTX by LLVM's NVPTX target (inkwell).
//!
//! Invariants: the PTX holds exactly one `.entry`, the kernel's name; every other function
//! (libdevice's) is internal and only kept when called; libdevice is linked only when the
//! kernel calls one of its `__nv_*` functions, and its absence then is an error that says
//! where it comes from.

use std::path::PathBuf;

use inkwell::context::Context;
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::OptimizationLevel;

use crate::mlir::Mlir;
use crate::CodegenError;

/// The GPU to generate code for.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuTarget {
    /// `sm_80`, `sm_90`, ...
    pub sm: String,
    /// NVIDIA's libdevice bitcode (`libdevice.10.bc`), needed by kernels that call math
    /// functions; [`crate::find_libdevice`] finds it.
    pub libdevice: Option<PathBuf>,
}

/// What a kernel becomes on the GPU path.
#[derive(Clone, Debug)]
pub struct GpuArtifacts {
    /// The optimised NVPTX LLVM IR (`--emit llvm`).
    pub llvm_ir: String,
    pub ptx: String,
}

pub const NVPTX_TRIPLE: &str = "nvptx64-nvidia-cuda";

/// The LLVM optimisation pipeline for kernels: inlining (libdevice), scalar replacement of
/// the register tiles, redundancy elimination, loop-invariant code motion and clean-up; no
/// loop unrolling or vectorisation (the kernel generator unrolls what should be unrolled),
/// which keeps compile time low.
pub const GPU_PASSES: &str = "globaldce,nvvm-reflect,cgscc(inline),function(sroa,\
early-cse<memssa>,instcombine<no-verify-fixpoint>,simplifycfg,reassociate,loop-mssa(licm),gvn,sccp,instcombine<no-verify-fixpoint>,\
adce,simplifycfg),globaldce";

fn target_machine(sm: &str, stage: &str) -> Result<TargetMachine, CodegenError> {
    Target::initialize_nvptx(&InitializationConfig::default());
    let triple = TargetTriple::create(NVPTX_TRIPLE);
    let target = Target::from_triple(&triple)
        .map_err(|e| CodegenError::new(stage, format!("no NVPTX target in LLVM: {e}")))?;
    target
        .create_target_machine(
            &triple,
            sm,
            "",
            OptimizationLevel::Aggressive,
            RelocMode::Default,
            CodeModel::Default,
        )
        .ok_or_else(|| CodegenError::new(stage, format!("LLVM cannot target `{sm}`")))
}

/// Parses LLVM IR text into `context`.
pub(crate) fn parse_ir<'c>(
    context: &'c Context,
    text: &str,
    name: &str,
    stage: &str,
) -> Result<Module<'c>, CodegenError> {
    let buffer = MemoryBuffer::create_from_memory_range_copy(text.as_bytes(), name);
    context
        .create_module_from_ir(buffer)
        .map_err(|e| CodegenError::new(stage, format!("LLVM does not accept the IR: {e}")))
}

/// Compiles one kernel's GPU-form MLIR (`name` is its kernel function) to PTX.
pub fn compile_gpu_with<'c>(
    mlir: &Mlir,
    context: &'c Context,
    libdevice_cache: &mut Option<Module<'c>>,
    text: &str,
    name: &str,
    target: &GpuTarget,
) -> Result<GpuArtifacts, CodegenError> {
    let ir = mlir.gpu_to_llvm_ir(text, name)?;
    let stage = format!(
        "LLVM NVPTX code generation of kernel {name} for {}",
        target.sm
    );
    let module = parse_ir(context, &ir, name, &stage)?;
    let tm = target_machine(&target.sm, &stage)?;
    module.set_triple(&TargetTriple::create(NVPTX_TRIPLE));
    module.set_data_layout(&tm.get_target_data().get_data_layout());
    let calls_libdevice = module
        .get_functions()
        .any(|f| f.count_basic_blocks() == 0 && f.get_name().to_bytes().starts_with(b"__nv_"));
    if calls_libdevice {
        let path = target.libdevice.as_ref().ok_or_else(|| {
            CodegenError::new(
                &stage,
                "the kernel calls math functions from NVIDIA's libdevice, but no libdevice.10.bc \
                 was found; set RFNC_LIBDEVICE (scripts/setup.sh installs it under .cache/cuda-nvcc)",
            )
        })?;
        // Parsed once per context; each kernel links a copy (linking consumes it).
        if libdevice_cache.is_none() {
            let parsed = Module::parse_bitcode_from_path(path, context).map_err(|e| {
                CodegenError::new(
                    &stage,
                    format!("cannot read libdevice `{}`: {e}", path.display()),
                )
            })?;
            parsed.set_triple(&TargetTriple::create(NVPTX_TRIPLE));
            parsed.set_data_layout(&tm.get_target_data().get_data_layout());
            *libdevice_cache = Some(parsed);
        }
        let libdevice = libdevice_cache.as_ref().expect("parsed above").clone();
        module
            .link_in_module(libdevice)
            .map_err(|e| CodegenError::new(&stage, format!("linking libdevice failed: {e}")))?;
    }
    for f in module.get_functions() {
        if f.count_basic_blocks() > 0 && f.get_name().to_bytes() != name.as_bytes() {
            f.set_linkage(Linkage::Internal);
        }
    }
    module
        .run_passes(GPU_PASSES, &tm, PassBuilderOptions::create())
        .map_err(|e| CodegenError::new(&stage, format!("optimisation failed: {e}")))?;
    let llvm_ir = module.print_to_string().to_string();
    let ptx = tm
        .write_to_memory_buffer(&module, FileType::Assembly)
        .map_err(|e| CodegenError::new(&stage, format!("PTX emission failed: {e}")))?;
    let ptx = String::from_utf8_lossy(ptx.as_slice()).into_owned();
    Ok(GpuArtifacts { llvm_ir, ptx })
}

/// [`compile_gpu_with`] in a fresh MLIR and LLVM context. The kernel's name is read from
/// the `gpu.func` of the text.
pub fn compile_gpu(text: &str, target: &GpuTarget) -> Result<GpuArtifacts, CodegenError> {
    let name = kernel_name(text)
        .ok_or_else(|| CodegenError::new("GPU code generation", "no gpu.func in the MLIR"))?;
    let context = Context::create();
    let mut libdevice = None;
    let result = compile_gpu_with(&Mlir::new(), &context, &mut libdevice, text, &name, target);
    drop(libdevice);
    result
}

/// The symbol of the first `gpu.func @NAME` in MLIR text.
pub fn kernel_name(text: &str) -> Option<String> {
    let rest = &text[text.find("gpu.func @")? + "gpu.func @".len()..];
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))?;
    Some(rest[..end].to_string())
}
