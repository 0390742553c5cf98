//! GPU form -> LLVM IR -> PTX.
//!
//! Input: `module attributes {gpu.container_module} { gpu.module @kernels { gpu.func ... kernel } }`
//! with static 1-D memref parameters. Invariants of the output: each `gpu.func ... kernel`
//! becomes a PTX `.entry` of the same name whose parameters are bare pointers (one per
//! memref, in order); libdevice is linked only when the lowered module calls `__nv_*`;
//! everything but the kernels is internal, so the PTX holds the kernels and nothing else
//! callable; the LLVM IR returned is the optimised module the PTX was emitted from.

use std::path::PathBuf;

use inkwell::context::Context as LlvmContext;
use inkwell::module::Module as LlvmModule;
use inkwell::targets::FileType;

use crate::error::{CodegenError, Stage};
use crate::llvm::{internalize, nvptx_machine, optimize, retarget};
use crate::mlir::MlirSession;

/// The MLIR pass pipeline from the GPU form to the LLVM + NVVM dialects. `cf` lowering
/// runs at module level (it does not run nested in `gpu.module`).
pub const GPU_PIPELINE: &str = "builtin.module(gpu.module(convert-scf-to-cf, \
     convert-gpu-to-nvvm{use-bare-ptr-memref-call-conv=1}, canonicalize, cse), \
     convert-cf-to-llvm, reconcile-unrealized-casts)";

/// The LLVM calling convention number of `ptx_kernel`.
const PTX_KERNEL_CC: u32 = 71;

/// What to generate GPU code for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GpuTarget {
    /// The architecture, `sm_80`, `sm_90`, ...
    pub sm: String,
    /// `libdevice.10.bc`, needed only by kernels that call math functions.
    pub libdevice: Option<PathBuf>,
}

impl GpuTarget {
    /// `sm` with libdevice from `$RFNC_LIBDEVICE` when that is set and not empty.
    pub fn from_env(sm: &str) -> Self {
        GpuTarget {
            sm: sm.to_string(),
            libdevice: std::env::var_os("RFNC_LIBDEVICE")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
        }
    }
}

/// The result of [`compile_gpu`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuArtifacts {
    /// The optimised LLVM IR the PTX was emitted from.
    pub llvm_ir: String,
    /// The PTX module.
    pub ptx: String,
}

/// The optimised NVPTX LLVM IR of the GPU-form module `mlir`.
pub fn gpu_llvm_ir(mlir: &str, target: &GpuTarget) -> Result<String, CodegenError> {
    let session = MlirSession::new();
    Ok(compile_gpu_in(&session, mlir, target)?.llvm_ir)
}

/// The optimised LLVM IR and the PTX of the GPU-form module `mlir`.
pub fn compile_gpu(mlir: &str, target: &GpuTarget) -> Result<GpuArtifacts, CodegenError> {
    let session = MlirSession::new();
    compile_gpu_in(&session, mlir, target)
}

/// [`compile_gpu`] in an existing session (one per thread).
pub fn compile_gpu_in(
    session: &MlirSession,
    mlir: &str,
    target: &GpuTarget,
) -> Result<GpuArtifacts, CodegenError> {
    let machine = nvptx_machine(&target.sm)?;
    let mut module = session.parse(mlir)?;
    session.run_pipeline(&mut module, GPU_PIPELINE)?;
    let kernels_only = session.extract_gpu_modules(&module)?;
    let llvm = LlvmContext::create();
    let ir = session.translate(&kernels_only, &llvm)?;
    retarget(&ir, &machine);
    let kernels: Vec<String> = ir
        .get_functions()
        .filter(|f| f.get_call_conventions() == PTX_KERNEL_CC)
        .map(|f| f.get_name().to_string_lossy().into_owned())
        .collect();
    if kernels.is_empty() {
        return Err(CodegenError::new(
            Stage::Translate,
            "the gpu.module has no kernel; mark the gpu.func with `kernel`",
        ));
    }
    link_libdevice(&llvm, &ir, target)?;
    internalize(&ir, |name| kernels.iter().any(|k| k == name));
    optimize(&ir, &machine)?;
    let llvm_ir = ir.print_to_string().to_string();
    let ptx = machine
        .write_to_memory_buffer(&ir, FileType::Assembly)
        .map_err(|e| CodegenError::new(Stage::Emit, format!("NVPTX code generation: {e}")))?;
    let ptx = String::from_utf8_lossy(ptx.as_slice())
        .trim_end_matches('\0')
        .to_string();
    Ok(GpuArtifacts { llvm_ir, ptx })
}

/// Links libdevice into `module` when it declares a `__nv_*` function.
fn link_libdevice<'l>(
    llvm: &'l LlvmContext,
    module: &LlvmModule<'l>,
    target: &GpuTarget,
) -> Result<(), CodegenError> {
    let needed: Vec<String> = module
        .get_functions()
        .filter(|f| f.count_basic_blocks() == 0)
        .map(|f| f.get_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("__nv_"))
        .collect();
    if needed.is_empty() {
        return Ok(());
    }
    let path = target.libdevice.as_ref().ok_or_else(|| {
        CodegenError::new(
            Stage::Setup,
            format!(
                "the kernel calls {} from libdevice, but no libdevice is given: set \
                 RFNC_LIBDEVICE to libdevice.10.bc (scripts/setup.sh installs it under .cache/)",
                needed.join(", ")
            ),
        )
    })?;
    let lib = LlvmModule::parse_bitcode_from_path(path, llvm).map_err(|e| {
        CodegenError::new(
            Stage::Link,
            format!(
                "cannot read libdevice `{}` (from RFNC_LIBDEVICE or GpuTarget.libdevice): {e}",
                path.display()
            ),
        )
    })?;
    lib.set_triple(&module.get_triple());
    lib.set_data_layout(&module.get_data_layout());
    module
        .link_in_module(lib)
        .map_err(|e| CodegenError::new(Stage::Link, format!("linking libdevice: {e}")))
}
