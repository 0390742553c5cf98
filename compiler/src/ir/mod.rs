//! The graph IR: ops, types, the graph, shape inference, the verifier and the text form.

mod dot;
mod graph;
mod kind;
mod objective;
mod ops;
mod parse;
mod print;
mod shape;
mod types;
mod verify;

pub mod train_config;

pub use dot::to_dot;
pub use graph::{Graph, Loc, Node, NodeId, Output, SourcePos};
pub use kind::{ConvRole, OpKind};
pub use objective::objective_terms;
pub use ops::{escape, format_float, Attr, Op, OpParseError, ParamKind, Reduction};
pub use parse::{parse_graph, ParseError};
pub use print::print_graph;
pub use shape::{broadcasts_to, infer, window_out, ShapeError};
pub use types::{DType, TensorType};
pub use verify::{verify, VerifyError};
