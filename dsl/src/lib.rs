//! The `.rfn` language: grammar (pest), typed AST with spans, diagnostics, and elaboration
//! of blocks, loops and imports into the rfnc graph IR.

pub mod ast;
pub mod ast_print;
pub mod diagnostic;
pub mod elab;
pub mod loader;
pub mod parser;
mod prescan;
pub mod source;
pub mod stdlib;
mod suggest;

pub use diagnostic::Diagnostic;
pub use elab::{elaborate, elaborate_with_training, Options};
pub use loader::{load_file, load_source, Program};
pub use source::SourceMap;
pub use suggest::did_you_mean;
