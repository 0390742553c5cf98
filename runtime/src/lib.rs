//! The rfnc runtime. So far: weights, stored as safetensors under the graph IR's parameter
//! names, loaded and checked against a graph, or initialised deterministically from a seed.

pub mod weights;

pub use weights::{check_weights, init_weights, load_weights, save_weights, Weights, WeightsError};
