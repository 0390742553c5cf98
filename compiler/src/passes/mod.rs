//! Passes over the graph IR. Each is a function from a graph to a graph (or an extension of
//! one), documented with the invariants it keeps, and tested on its own.

pub mod autodiff;
pub mod canonical;
pub mod fusion;
pub mod memory;
pub mod pipeline;
pub mod remat;
pub mod train;
