//! MLIR: parsing kernel text, lowering it with MLIR's pass pipelines to the LLVM dialect,
//! and translating it to LLVM IR text.
//!
//! Invariants: one [`Mlir`] (an MLIR context with every dialect, pass and LLVM translation
//! registered) per thread; every diagnostic MLIR emits while parsing or running passes is
//! collected and becomes the message of the error.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Once;

use melior::dialect::DialectRegistry;
use melior::ir::{BlockLike, Module};
use melior::pass::PassManager;
use melior::utility::{register_all_dialects, register_all_llvm_translations, register_all_passes};
use melior::Context;

use crate::CodegenError;

/// The pass pipelines live beside the printers whose output they lower, so that the
/// compiler's own tests run exactly these through `mlir-opt`.
pub use rfnc_compiler::codegen::mlir_text::{GPU_PIPELINE, HOST_PIPELINE};

static REGISTER: Once = Once::new();

/// An MLIR context ready for kernels (one per thread).
pub struct Mlir {
    context: Context,
    diagnostics: Rc<RefCell<Vec<String>>>,
}

impl Default for Mlir {
    fn default() -> Self {
        Self::new()
    }
}

impl Mlir {
    pub fn new() -> Self {
        REGISTER.call_once(register_all_passes);
        let registry = DialectRegistry::new();
        register_all_dialects(&registry);
        let context = Context::new();
        context.append_dialect_registry(&registry);
        context.load_all_available_dialects();
        register_all_llvm_translations(&context);
        // Kernels are compiled on several threads already, one context each.
        context.enable_multi_threading(false);
        let diagnostics = Rc::new(RefCell::new(Vec::new()));
        let sink = diagnostics.clone();
        context.attach_diagnostic_handler(move |d| {
            sink.borrow_mut().push(d.to_string());
            true
        });
        Mlir {
            context,
            diagnostics,
        }
    }

    fn failure(&self, stage: &str, fallback: &str) -> CodegenError {
        let messages: Vec<String> = self.diagnostics.borrow_mut().drain(..).collect();
        let message = if messages.is_empty() {
            fallback.to_string()
        } else {
            messages.join("\n")
        };
        CodegenError::new(stage, message)
    }

    fn parse(&self, text: &str, stage: &str) -> Result<Module<'_>, CodegenError> {
        self.diagnostics.borrow_mut().clear();
        // Parsing verifies the module.
        Module::parse(&self.context, text)
            .ok_or_else(|| self.failure(stage, "the MLIR does not parse or verify"))
    }

    fn run_pipeline(
        &self,
        module: &mut Module<'_>,
        pipeline: &str,
        stage: &str,
    ) -> Result<(), CodegenError> {
        let pm = PassManager::new(&self.context);
        // The input was verified when parsed, and MLIR's passes keep it valid; the tests
        // check every emitted module with mlir-opt. Skipping the verifier after each pass
        // halves lowering time.
        pm.enable_verifier(false);
        melior::utility::parse_pass_pipeline(pm.as_operation_pass_manager(), pipeline)
            .map_err(|e| CodegenError::new(stage, format!("bad pass pipeline: {e}")))?;
        pm.run(module)
            .map_err(|_| self.failure(stage, "a lowering pass failed"))
    }

    /// Host form -> LLVM IR text.
    pub fn host_to_llvm_ir(&self, text: &str, name: &str) -> Result<String, CodegenError> {
        let stage = format!("MLIR lowering of host kernel {name}");
        let mut module = self.parse(text, &stage)?;
        self.run_pipeline(&mut module, HOST_PIPELINE, &stage)?;
        translate(&module, &stage)
    }

    /// GPU form -> the kernel module's LLVM dialect (as its own module) -> LLVM IR text.
    pub fn gpu_to_llvm_ir(&self, text: &str, name: &str) -> Result<String, CodegenError> {
        let stage = format!("MLIR lowering of GPU kernel {name}");
        let mut module = self.parse(text, &stage)?;
        self.run_pipeline(&mut module, GPU_PIPELINE, &stage)?;
        // The gpu.module itself is translated: it is a module of the LLVM dialect now.
        let gpu_module = module
            .body()
            .first_operation()
            .ok_or_else(|| CodegenError::new(&stage, "no gpu.module in the module"))?;
        translate_op(gpu_module.to_raw(), &stage)
    }
}

/// The LLVM IR of a module in the LLVM dialect.
fn translate(module: &Module<'_>, stage: &str) -> Result<String, CodegenError> {
    translate_op(module.as_operation().to_raw(), stage)
}

/// The LLVM IR of a module-like operation (builtin.module, gpu.module) in the LLVM dialect.
fn translate_op(op: mlir_sys::MlirOperation, stage: &str) -> Result<String, CodegenError> {
    // SAFETY: the operation is valid for the duration of the call; the returned string is
    // malloc'ed by MLIR and released with free().
    unsafe {
        let raw = mlir_sys::mlirTranslateModuleToLLVMIRToString(op);
        if raw.is_null() {
            return Err(CodegenError::new(stage, "translation to LLVM IR failed"));
        }
        let text = std::ffi::CStr::from_ptr(raw).to_string_lossy().into_owned();
        free(raw as *mut std::ffi::c_void);
        Ok(text)
    }
}

extern "C" {
    fn free(p: *mut std::ffi::c_void);
}
