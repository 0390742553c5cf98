//! Code generation through MLIR and LLVM: the only crate of the compiler that links them.
//!
//! A kernel arrives as MLIR text in two forms (see `rfnc_compiler::codegen::mlir_text`): a
//! `gpu.module` with one `gpu.func`, and a host `func.func` that runs a range of blocks.
//! [`mlir`] lowers either with MLIR's own passes to the LLVM dialect and translates it to
//! LLVM IR; [`gpu`] links libdevice, optimises and emits PTX with the NVPTX target
//! machine; [`host`] produces host bitcode; [`batch`] compiles many kernels on several
//! threads through a content-addressed [`cache`]; [`ptxas`] reads `ptxas -v`; [`tools`] finds
//! libdevice and `ptxas` where the set-up put them.

pub mod batch;
pub mod cache;
mod error;
pub mod gpu;
pub mod host;
pub mod mlir;
pub mod ptxas;
pub mod tools;

pub use batch::{compile_kernels, CompileOptions, CompiledKernel, KernelSource, Render};
pub use cache::default_cache_dir;
pub use error::CodegenError;
pub use gpu::{compile_gpu, GpuArtifacts, GpuTarget};
pub use host::{compile_host, link_host, link_host_cached};
pub use ptxas::{ptxas_report, ptxas_sass, PtxasKernel};
pub use tools::{find_libdevice, find_nvdisasm, find_ptxas};
