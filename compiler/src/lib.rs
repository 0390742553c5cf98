//! The rfnc compiler core: the graph IR (on petgraph), its MLIR-generic text form,
//! shape inference, the verifier and cost statistics.
//!
//! Nothing in this crate links LLVM or MLIR, so the language and IR tests build fast.

pub mod codegen;
pub mod init;
pub mod interp;
pub mod ir;
pub mod passes;
pub mod report;
pub mod rng;
pub mod stats;

/// A hash of the code that generates kernels (kernel IR, lowering, MLIR printers), for
/// cache keys of compiled kernels.
pub const CODEGEN_SOURCE_HASH: &str = env!("RFNC_CODEGEN_SOURCE_HASH");

pub use ir::{Attr, DType, Graph, Loc, NodeId, Op, ParamKind, Reduction, ShapeError, TensorType};
