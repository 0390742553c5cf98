//! Code generation without LLVM: fused kernels become kernel IR ([`kir`]), which is
//! checked once ([`check`]), split at its barriers ([`fission`]) and printed as MLIR for the
//! GPU and for the host ([`mlir_text`]) or run by the reference interpreter
//! ([`kir_interp`]); the bundle's contents ([`program`], in the format of the `rfnc-bundle`
//! crate).

pub mod check;
pub mod fission;
pub mod gemm;
pub mod kir;
pub mod kir_interp;
pub mod lower;
pub mod mlir_text;
pub mod program;
pub mod semantics;
