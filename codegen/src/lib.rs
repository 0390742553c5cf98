//! `rfnc-codegen`: the back end of rfnc. MLIR text of a kernel (made by
//! `rfnc_compiler::codegen::mlir`) goes through MLIR's own pass pipelines down to the LLVM
//! dialect, is translated to LLVM IR, and is finished by LLVM through inkwell: PTX for the
//! GPU (libdevice linked where math needs it) and native bitcode for the host executor.
//!
//! Modules, one job each:
//! - [`mlir`]: an MLIR context with captured diagnostics; parse, lower, translate.
//! - [`llvm`]: target machines, O3, internalisation.
//! - [`gpu`]: GPU form -> PTX ([`compile_gpu`]).
//! - [`host`]: host form -> bitcode ([`compile_host`], [`link_host`]).
//! - [`batch`] and [`cache`]: many kernels on several threads behind an on-disk cache.
//! - [`ptxas`]: the `ptxas -v` resource report.
//! - [`error`]: the error type, [`CodegenError`].
//!
//! Nothing here panics on bad MLIR; every failure is a [`CodegenError`] naming the stage,
//! the kernel when known, and MLIR's diagnostics.

pub mod batch;
pub mod cache;
pub mod error;
pub mod gpu;
pub mod host;
pub mod llvm;
pub mod mlir;
pub mod ptxas;

pub use batch::{compile_kernels, CompileOptions, CompiledKernel, KernelSource};
pub use cache::default_cache_dir;
pub use error::{CodegenError, Stage};
pub use gpu::{compile_gpu, gpu_llvm_ir, GpuArtifacts, GpuTarget, GPU_PIPELINE};
pub use host::{compile_host, link_host, HostArtifacts, HOST_PIPELINE};
pub use llvm::llvm_version;
pub use ptxas::{find_ptxas, ptxas_report, PtxasKernel};
