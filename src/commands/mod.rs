//! The subcommands, one per file: each calls the driver and prints.

pub mod check;
pub mod compile;
pub mod dataset;
pub mod eval;
pub mod export;
pub mod predict;
pub mod run;
pub mod stats;
pub mod train;
pub mod weights;
