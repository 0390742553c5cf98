//! The rfnc driver: every stage from `.rfn` source to a running bundle, as a library that
//! the `rfnc` binary, the tests and the benchmarks call. The binary only parses arguments
//! and prints; everything it does is here, in pipeline order:
//!
//! - [`frontend`]: load, elaborate and verify a program; settings of a training step merged
//!   over the program's own;
//! - [`plan`]: the choice of inference or training graph, canonicalisation, fusion and
//!   memory planning (within a budget by recomputation);
//! - [`codegen`]: fused kernels to kernel IR, MLIR, LLVM IR, PTX and host code, and the
//!   bundle directory;
//! - [`weights`]: random and loaded weights checked against a graph; [`pretrained`]:
//!   torchvision/timm ResNet backbones imported under the graph's names;
//! - [`export`]: the inference graph and its weights as an ONNX model (`rfnc export`);
//! - [`run`]: a bundle executed on a device with random inputs, steps and outputs;
//! - [`train`]: `rfnc train`, the paper's training protocol on a dataset, with
//!   checkpoints, validation and logs in a work dir;
//! - [`eval`]: a network evaluated on images and dataset splits (`rfnc eval`, `rfnc
//!   predict`, validation); [`predict`]: predictions written as pictures;
//! - [`evaluate`]: the paper's evaluation protocol as pure functions: sliding windows,
//!   scales and flips over a network callback, segmentation and depth metrics;
//! - [`error`]: the one error type, a user's diagnostic or an internal error; [`log`]:
//!   stage timings.

pub mod codegen;
pub mod error;
pub mod eval;
pub mod evaluate;
pub mod export;
pub mod frontend;
pub mod log;
pub mod plan;
pub mod predict;
pub mod pretrained;
pub mod run;
pub mod train;
pub mod weights;

pub use error::Error;
pub use frontend::{Network, Source, TrainSettings};
pub use log::Log;
pub use plan::Target;
