use std::fmt;

/// Why code generation failed: the stage and what the tool said.
#[derive(Clone, Debug, PartialEq)]
pub struct CodegenError {
    /// e.g. `MLIR lowering of GPU kernel conv2d_…`.
    pub stage: String,
    pub message: String,
}

impl CodegenError {
    pub fn new(stage: impl Into<String>, message: impl Into<String>) -> Self {
        CodegenError {
            stage: stage.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for CodegenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.stage, self.message)
    }
}

impl std::error::Error for CodegenError {}
