//! An MLIR session: one melior context with every upstream dialect, pass and LLVM
//! translation registered, and a diagnostic handler that captures messages instead of
//! printing them.
//!
//! Invariants: a [`MlirSession`] is used by one thread only (melior contexts are not
//! `Send`); global registration (passes) happens once per process; every entry point
//! returns captured diagnostics in its error and leaves none behind for the next call;
//! translation to LLVM IR happens into a caller-owned inkwell context so that the module can
//! be optimised by inkwell without a round trip through text.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Once;

use inkwell::context::Context as LlvmContext;
use inkwell::module::Module as LlvmModule;
use melior::diagnostic::DiagnosticSeverity;
use melior::dialect::DialectRegistry;
use melior::ir::block::BlockLike;
use melior::ir::operation::OperationLike;
use melior::ir::RegionLike;
use melior::ir::{Location, Module};
use melior::pass::PassManager;
use melior::utility::{
    parse_pass_pipeline, register_all_dialects, register_all_llvm_translations, register_all_passes,
};
use melior::Context;

use crate::error::{CodegenError, Stage};

static REGISTER_PASSES: Once = Once::new();

/// Lines of a diagnostic note kept (notes may print whole functions).
const NOTE_LINES: usize = 30;

/// A melior context set up for rfnc's kernels, with diagnostics captured.
pub struct MlirSession {
    context: Context,
    diagnostics: Rc<RefCell<Vec<String>>>,
}

impl Default for MlirSession {
    fn default() -> Self {
        Self::new()
    }
}

impl MlirSession {
    /// A fresh context with all dialects loaded and LLVM translations registered. MLIR's
    /// own thread pool is disabled: parallelism comes from compiling kernels on several
    /// threads, one session each.
    pub fn new() -> Self {
        REGISTER_PASSES.call_once(register_all_passes);
        let registry = DialectRegistry::new();
        register_all_dialects(&registry);
        let context = Context::new_with_registry(&registry, false);
        context.load_all_available_dialects();
        register_all_llvm_translations(&context);
        let diagnostics = Rc::new(RefCell::new(Vec::new()));
        let sink = diagnostics.clone();
        context.attach_diagnostic_handler(move |d| {
            let severity = match d.severity() {
                DiagnosticSeverity::Error => "error",
                DiagnosticSeverity::Warning => "warning",
                DiagnosticSeverity::Note => "note",
                DiagnosticSeverity::Remark => "remark",
            };
            let mut text = format!("{severity}: {}: {}", d.location(), d);
            for i in 0..d.note_count() {
                if let Ok(note) = d.note(i) {
                    // Notes may dump whole operations; keep the head.
                    let body = note.to_string();
                    let mut short: Vec<&str> = body.lines().take(NOTE_LINES + 1).collect();
                    if short.len() > NOTE_LINES {
                        short[NOTE_LINES] = "...";
                    }
                    text.push_str(&format!(
                        "\n  note: {}: {}",
                        note.location(),
                        short.join("\n")
                    ));
                }
            }
            sink.borrow_mut().push(text);
            true
        });
        MlirSession {
            context,
            diagnostics,
        }
    }

    /// The underlying melior context.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Takes the diagnostics captured so far.
    pub fn take_diagnostics(&self) -> Vec<String> {
        std::mem::take(&mut *self.diagnostics.borrow_mut())
    }

    fn error(&self, stage: Stage, message: impl Into<String>) -> CodegenError {
        CodegenError::new(stage, message).with_diagnostics(self.take_diagnostics())
    }

    /// Parses and verifies `source`.
    pub fn parse(&self, source: &str) -> Result<Module<'_>, CodegenError> {
        self.take_diagnostics();
        let module = Module::parse(&self.context, source)
            .ok_or_else(|| self.error(Stage::Parse, "the MLIR text does not parse"))?;
        if !module.as_operation().verify() {
            return Err(self.error(Stage::Verify, "the MLIR module does not verify"));
        }
        Ok(module)
    }

    /// Runs the textual pass pipeline `pipeline` (rooted at `builtin.module`) on `module`,
    /// then verifies the result.
    pub fn run_pipeline(
        &self,
        module: &mut Module<'_>,
        pipeline: &str,
    ) -> Result<(), CodegenError> {
        self.take_diagnostics();
        let pm = PassManager::new(&self.context);
        parse_pass_pipeline(pm.as_operation_pass_manager(), pipeline).map_err(|e| {
            self.error(
                Stage::Setup,
                format!("the pass pipeline `{pipeline}` does not parse: {e}"),
            )
        })?;
        pm.run(module)
            .map_err(|e| self.error(Stage::Lower, format!("pipeline `{pipeline}`: {e}")))?;
        if !module.as_operation().verify() {
            return Err(self.error(Stage::Lower, "the lowered module does not verify"));
        }
        Ok(())
    }

    /// A fresh builtin module holding clones of the operations inside every `gpu.module`
    /// of `module` (their bodies only: the `gpu.module` wrappers are dropped).
    pub fn extract_gpu_modules(&self, module: &Module<'_>) -> Result<Module<'_>, CodegenError> {
        let out = Module::new(Location::unknown(&self.context));
        let mut found = false;
        let mut op = module.body().first_operation();
        while let Some(o) = op {
            if o.name().as_string_ref().as_str() == Ok("gpu.module") {
                found = true;
                let region = o
                    .region(0)
                    .map_err(|e| self.error(Stage::Translate, format!("gpu.module: {e}")))?;
                let mut block = region.first_block();
                while let Some(b) = block {
                    let mut inner = b.first_operation();
                    while let Some(i) = inner {
                        if i.name().as_string_ref().as_str() != Ok("gpu.module_end") {
                            out.body().append_operation((*i).clone());
                        }
                        inner = i.next_in_block();
                    }
                    block = b.next_in_region();
                }
            }
            op = o.next_in_block();
        }
        if !found {
            return Err(self.error(
                Stage::Translate,
                "the module contains no `gpu.module`; the GPU form is \
                 `module attributes {gpu.container_module} { gpu.module @kernels { gpu.func ... } }`",
            ));
        }
        Ok(out)
    }

    /// Translates `module` (LLVM dialect only, plus NVVM) to LLVM IR in `llvm`.
    pub fn translate<'l>(
        &self,
        module: &Module<'_>,
        llvm: &'l LlvmContext,
    ) -> Result<LlvmModule<'l>, CodegenError> {
        self.take_diagnostics();
        // SAFETY: mlir-sys and inkwell wrap the same LLVM C API (one statically linked
        // LLVM 22), so the context pointer types are layout-identical; the returned module
        // is owned by the caller and lives in `llvm`.
        let raw = unsafe {
            mlir_sys::mlirTranslateModuleToLLVMIR(
                module.as_operation().to_raw(),
                llvm.raw() as mlir_sys::LLVMContextRef,
            )
        };
        if raw.is_null() {
            return Err(self.error(
                Stage::Translate,
                "the LLVM dialect module does not translate to LLVM IR",
            ));
        }
        // SAFETY: `raw` is a fresh, non-null module in `llvm`'s context.
        Ok(unsafe { LlvmModule::new(raw as inkwell::llvm_sys::prelude::LLVMModuleRef) })
    }
}
