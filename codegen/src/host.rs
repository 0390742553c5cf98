//! Host form -> optimised native LLVM IR and bitcode, and linking host modules.
//!
//! Input: `module { func.func @NAME(%arg0: memref<..>, ..., %first_block: index,
//! %end_block: index) { ... } }`. Invariants of the output: each function keeps its name and
//! has the C ABI `void NAME(T0*, T1*, ..., int64_t first_block, int64_t end_block)` (bare
//! pointers for memrefs); math becomes LLVM intrinsics, or libm calls where no intrinsic
//! exists, so the code needs nothing but libm at run time; the code is tuned for the CPU
//! compiling it.

use inkwell::context::Context as LlvmContext;
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::module::Module as LlvmModule;

use crate::error::{CodegenError, Stage};
use crate::llvm::{native_machine, optimize, retarget};
use crate::mlir::MlirSession;

/// The MLIR pass pipeline from the host form to the LLVM dialect.
pub const HOST_PIPELINE: &str = "builtin.module(convert-scf-to-cf, \
     convert-math-to-llvm, convert-math-to-libm, convert-arith-to-llvm, convert-index-to-llvm, \
     expand-strided-metadata, finalize-memref-to-llvm, convert-cf-to-llvm, \
     convert-func-to-llvm{use-bare-ptr-memref-call-conv=1}, reconcile-unrealized-casts)";

/// The result of [`compile_host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostArtifacts {
    /// The optimised LLVM IR.
    pub llvm_ir: String,
    /// The same module as LLVM bitcode.
    pub bitcode: Vec<u8>,
}

/// The optimised native LLVM IR and bitcode of the host-form module `mlir`.
pub fn compile_host(mlir: &str) -> Result<HostArtifacts, CodegenError> {
    let session = MlirSession::new();
    compile_host_in(&session, mlir)
}

/// [`compile_host`] in an existing session (one per thread).
pub fn compile_host_in(session: &MlirSession, mlir: &str) -> Result<HostArtifacts, CodegenError> {
    let machine = native_machine()?;
    let mut module = session.parse(mlir)?;
    session.run_pipeline(&mut module, HOST_PIPELINE)?;
    let llvm = LlvmContext::create();
    let ir = session.translate(&module, &llvm)?;
    retarget(&ir, &machine);
    optimize(&ir, &machine)?;
    Ok(HostArtifacts {
        llvm_ir: ir.print_to_string().to_string(),
        bitcode: ir.write_bitcode_to_memory().as_slice().to_vec(),
    })
}

/// Links host bitcode modules into one module's bitcode. Two modules defining the same
/// symbol is an error.
pub fn link_host(modules: &[Vec<u8>]) -> Result<Vec<u8>, CodegenError> {
    let llvm = LlvmContext::create();
    let linked = llvm.create_module("rfnc_host");
    if let Ok(machine) = native_machine() {
        retarget(&linked, &machine);
    }
    for (i, bc) in modules.iter().enumerate() {
        let module = parse_bitcode(&llvm, bc, &format!("host module {i}"))?;
        linked
            .link_in_module(module)
            .map_err(|e| CodegenError::new(Stage::Link, format!("host module {i}: {e}")))?;
    }
    Ok(linked.write_bitcode_to_memory().as_slice().to_vec())
}

/// Parses bitcode `bc` into `llvm`; `what` names it in errors.
pub fn parse_bitcode<'l>(
    llvm: &'l LlvmContext,
    bc: &[u8],
    what: &str,
) -> Result<LlvmModule<'l>, CodegenError> {
    let buffer = MemoryBuffer::create_from_memory_range_copy(bc, what);
    LlvmModule::parse_bitcode_from_buffer(&buffer, llvm)
        .map_err(|e| CodegenError::new(Stage::Link, format!("{what} is not LLVM bitcode: {e}")))
}
