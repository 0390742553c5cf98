//! Code generation without LLVM: fused kernels become kernel IR ([`kir`]), which prints as
//! MLIR for the GPU and for the host; the bundle format the runtime reads.

pub mod bundle;
pub mod gemm;
pub mod kir;
pub mod kir_interp;
pub mod lower;
pub mod mlir;
pub mod program;
