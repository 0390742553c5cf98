//! Code generation without LLVM: fused kernels become kernel IR ([`kir`]), which prints as
//! MLIR for the GPU and for the host; the bundle format the runtime reads.

/// The bundle format lives in its own crate, shared with the runtime.
pub use rfnc_bundle as bundle;
pub mod gemm;
pub mod kir;
pub mod kir_interp;
pub mod lower;
pub mod mlir;
pub mod program;
