//! The one error type of the crate.
//!
//! Invariants: every failure names the stage it happened in; a failure while compiling a
//! named kernel names the kernel; MLIR diagnostics captured during the stage are kept
//! verbatim and printed below the message. Nothing in this crate panics on bad input: bad
//! MLIR, failing passes and failing tools all end up here.

use std::fmt;

/// Where in the pipeline a [`CodegenError`] arose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Parsing the MLIR text.
    Parse,
    /// The MLIR verifier.
    Verify,
    /// An MLIR pass pipeline (lowering to the LLVM dialect).
    Lower,
    /// Translating the LLVM dialect to LLVM IR.
    Translate,
    /// Linking LLVM modules (libdevice, several host modules).
    Link,
    /// The LLVM optimisation pipeline.
    Optimize,
    /// Machine code (PTX) emission or target set-up.
    Emit,
    /// Running `ptxas`, or finding it.
    Ptxas,
    /// Reading or writing the compile cache.
    Cache,
    /// Setting up: missing files, bad options.
    Setup,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Parse => "parsing MLIR",
            Stage::Verify => "verifying MLIR",
            Stage::Lower => "lowering MLIR to the LLVM dialect",
            Stage::Translate => "translating MLIR to LLVM IR",
            Stage::Link => "linking LLVM modules",
            Stage::Optimize => "optimising LLVM IR",
            Stage::Emit => "emitting code",
            Stage::Ptxas => "running ptxas",
            Stage::Cache => "using the compile cache",
            Stage::Setup => "setting up code generation",
        })
    }
}

/// A code generation failure with the stage, the kernel (when known), a message and any
/// MLIR diagnostics captured while the stage ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodegenError {
    /// The stage that failed.
    pub stage: Stage,
    /// The kernel being compiled, when known.
    pub kernel: Option<String>,
    /// What went wrong, and what to do about it where that is known.
    pub message: String,
    /// MLIR diagnostics (`location: message`), in emission order.
    pub diagnostics: Vec<String>,
}

impl CodegenError {
    /// An error of `stage` with `message` and no diagnostics.
    pub fn new(stage: Stage, message: impl Into<String>) -> Self {
        CodegenError {
            stage,
            kernel: None,
            message: message.into(),
            diagnostics: Vec::new(),
        }
    }

    /// The same error with `diagnostics` attached.
    pub fn with_diagnostics(mut self, diagnostics: Vec<String>) -> Self {
        self.diagnostics = diagnostics;
        self
    }

    /// The same error naming `kernel` (an already named kernel is kept).
    pub fn in_kernel(mut self, kernel: &str) -> Self {
        if self.kernel.is_none() {
            self.kernel = Some(kernel.to_string());
        }
        self
    }
}

impl fmt::Display for CodegenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kernel {
            Some(k) => write!(f, "kernel `{k}`: {} failed: {}", self.stage, self.message)?,
            None => write!(f, "{} failed: {}", self.stage, self.message)?,
        }
        for d in &self.diagnostics {
            write!(f, "\n  {}", d.replace('\n', "\n  "))?;
        }
        Ok(())
    }
}

impl std::error::Error for CodegenError {}
