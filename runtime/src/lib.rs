//! The rfnc runtime: execution of compiled bundles, and weights (safetensors, checked
//! against expected shapes or initialised from a bundle's rules and a seed). It reads the
//! bundle through `rfnc-bundle` and links no part of the compiler.
//!
//! A bundle (`rfnc compile -o DIR`) is read by [`load_bundle`] and run by a [`Session`] on a
//! [`Device`]: the CPU (the bundle's host kernels, JIT-compiled with LLVM) or an NVIDIA GPU
//! (its PTX kernels through the CUDA driver, loaded at run time). Modules:
//!
//! - [`bundle_io`]: reading and checking a bundle directory;
//! - [`session`]: leaves, weights, programs and outputs, the same for every device;
//! - `cpu` / `native` / `jit`: the CPU executor, its host code as a cached native library
//!   for this CPU or JIT-compiled; `gpu`: the CUDA executor;
//! - [`tensor`]: host tensors read back; [`error`]: [`RuntimeError`];
//! - [`weights`]: safetensors weights.

pub mod bundle_io;
mod cpu;
pub mod error;
mod executor;
pub mod gpu;
mod host_memory;
mod jit;
mod native;
pub mod session;
pub mod tensor;
pub mod weights;

pub use bundle_io::{load_bundle, LoadedBundle};
pub use error::RuntimeError;
pub use executor::{LaunchTime, ProgramId};
pub use gpu::probe_driver;
pub use jit::MAX_HOST_ARGS;
pub use native::HostOrigin;
pub use session::{Device, Session, Timings};
pub use tensor::{HostTensor, TensorData};
pub use weights::{
    check_weights, init_weights, load_tensors, load_weights, save_weights, Weights, WeightsError,
};
