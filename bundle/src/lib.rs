//! The bundle: the contract between the rfnc compiler, which writes it, and the runtime,
//! which reads and executes it. Nothing here knows the graph IR; the crate depends on serde
//! (the schema) and tempfile (atomic output) only, so the runtime links no compiler.
//!
//! - [`schema`]: `bundle.json` (leaves, kernels, launches, outputs) and its validation;
//! - [`init`]: each parameter's initialisation rule and the deterministic sampler that
//!   turns a rule into values, so a bundle runs with random weights by itself and `rfnc
//!   weights` writes exactly the same numbers;
//! - [`rng`]: the counter-based generator both sides share;
//! - [`atomic`]: files and directories written so that a crash never leaves half of one;
//! - [`cache`]: the cache directory compiler and runtime share, and checksummed entries.

pub mod atomic;
pub mod cache;
pub mod init;
pub mod rng;
pub mod schema;

pub use init::Init;
pub use schema::*;
