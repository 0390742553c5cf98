//! The host kernels of a bundle (`host.bc`) compiled in-process by LLVM's MCJIT through
//! inkwell, and called by address.
//!
//! Lifetimes: inkwell ties a module and its execution engine to a borrowed `Context`. To keep
//! all three in one struct, the context is boxed and turned into a raw pointer, the module
//! and engine borrow it as `'static`, and [`Drop`] disposes of them in order (module, engine,
//! then the context). Nothing with the fake `'static` lifetime leaves this module: callers
//! only see plain function addresses, valid while the [`HostKernels`] lives.
//!
//! Code quality: MCJIT compiles for a generic CPU and runs no IR optimisation, so before the
//! engine is made every kernel is marked with the host's CPU name and features and the module
//! goes through LLVM's `default<O3>` pipeline for a host target machine (vectorised loops).
//!
//! Math functions the kernels call (`expf`, `logf`, `powf`, ...) are mapped explicitly to
//! Rust implementations, so they resolve whatever the process happens to link.

use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::path::Path;
use std::ptr::NonNull;

use inkwell::attributes::AttributeLoc;
use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{CodeModel, InitializationConfig, RelocMode, Target, TargetMachine};
use inkwell::values::BasicValue;
use inkwell::OptimizationLevel;

use crate::error::RuntimeError;

/// The most pointer arguments a host kernel may take.
pub const MAX_HOST_ARGS: usize = 16;

/// JIT-compiled host kernels, by name.
pub(crate) struct HostKernels {
    // Dropped by hand, in this order, before the context.
    module: ManuallyDrop<Module<'static>>,
    engine: ManuallyDrop<ExecutionEngine<'static>>,
    context: NonNull<Context>,
    addresses: HashMap<String, usize>,
}

// SAFETY: the context, module and engine are only reachable through this struct, and never
// used concurrently: after construction only `addresses` is read. The engine's `Rc` clones
// (one in the module) all live inside this struct and move with it.
unsafe impl Send for HostKernels {}

impl HostKernels {
    /// Compiles `path` and looks up every name of `kernels`.
    pub(crate) fn load(path: &Path, kernels: &[&str]) -> Result<HostKernels, RuntimeError> {
        let jit_error = |message: String| RuntimeError::Jit {
            path: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(RuntimeError::File {
                path: path.to_path_buf(),
                message: "the host code of the bundle is missing; recompile the bundle".to_string(),
            });
        }
        Target::initialize_native(&InitializationConfig::default())
            .map_err(|e| jit_error(format!("LLVM has no native target: {e}")))?;
        let context = NonNull::from(Box::leak(Box::new(Context::create())));
        // SAFETY: the context lives until `Drop` (or the error path below) frees it, after
        // everything borrowing it.
        let ctx: &'static Context = unsafe { context.as_ref() };
        let built = (|| {
            let buffer = MemoryBuffer::create_from_file(path)
                .map_err(|e| jit_error(format!("cannot read: {e}")))?;
            let module = Module::parse_bitcode_from_buffer(&buffer, ctx)
                .map_err(|e| jit_error(format!("not valid LLVM bitcode: {e}")))?;
            let machine =
                host_machine(RelocMode::Default, CodeModel::JITDefault).map_err(jit_error)?;
            optimise_for_host(ctx, &module, &machine, kernels).map_err(jit_error)?;
            let math = declare_math(ctx, &module);
            let engine = module
                .create_jit_execution_engine(OptimizationLevel::Aggressive)
                .map_err(|e| jit_error(e.to_string()))?;
            for (function, address) in math {
                engine.add_global_mapping(&function, address);
            }
            let mut addresses = HashMap::new();
            for &name in kernels {
                if module.get_function(name).is_none() {
                    return Err(jit_error(format!("it has no function for kernel `{name}`")));
                }
                let address = engine
                    .get_function_address(name)
                    .map_err(|e| jit_error(format!("kernel `{name}` did not compile: {e}")))?;
                addresses.insert(name.to_string(), address);
            }
            Ok((module, engine, addresses))
        })();
        match built {
            Ok((module, engine, addresses)) => Ok(HostKernels {
                module: ManuallyDrop::new(module),
                engine: ManuallyDrop::new(engine),
                context,
                addresses,
            }),
            Err(e) => {
                // SAFETY: the closure's module and engine are dropped; nothing borrows it.
                drop(unsafe { Box::from_raw(context.as_ptr()) });
                Err(e)
            }
        }
    }

    /// The address of a kernel's host function.
    pub(crate) fn address(&self, name: &str) -> Option<usize> {
        self.addresses.get(name).copied()
    }
}

impl Drop for HostKernels {
    fn drop(&mut self) {
        // SAFETY: dropped once, in dependency order; the context outlives both.
        unsafe {
            ManuallyDrop::drop(&mut self.module);
            ManuallyDrop::drop(&mut self.engine);
            drop(Box::from_raw(self.context.as_ptr()));
        }
    }
}

/// This CPU's name and features, as LLVM names them.
pub(crate) fn host_cpu() -> (String, String) {
    (
        TargetMachine::get_host_cpu_name().to_string(),
        TargetMachine::get_host_cpu_features().to_string(),
    )
}

/// A target machine for this CPU.
pub(crate) fn host_machine(reloc: RelocMode, model: CodeModel) -> Result<TargetMachine, String> {
    Target::initialize_native(&InitializationConfig::default())
        .map_err(|e| format!("LLVM has no native target: {e}"))?;
    let triple = TargetMachine::get_default_triple();
    let (cpu, features) = host_cpu();
    let target = Target::from_triple(&triple).map_err(|e| format!("no LLVM target: {e}"))?;
    target
        .create_target_machine(
            &triple,
            &cpu,
            &features,
            OptimizationLevel::Aggressive,
            reloc,
            model,
        )
        .ok_or_else(|| format!("LLVM cannot target this CPU ({cpu})"))
}

/// Deletes every defined function of `module` but `kernels` that nothing calls (a
/// kernel calls no other kernel), tunes the rest for the host CPU and runs the
/// `default<O3>` pipeline.
pub(crate) fn optimise_for_host(
    ctx: &Context,
    module: &Module,
    machine: &TargetMachine,
    kernels: &[&str],
) -> Result<(), String> {
    quiet_diagnostics(ctx);
    let triple = TargetMachine::get_default_triple();
    let (cpu, features) = host_cpu();
    let unused: Vec<_> = module
        .get_functions()
        .filter(|f| {
            f.count_basic_blocks() > 0
                && f.as_global_value()
                    .as_pointer_value()
                    .get_first_use()
                    .is_none()
        })
        .filter(|f| !kernels.contains(&f.get_name().to_string_lossy().as_ref()))
        .collect();
    for function in unused {
        // SAFETY: the function has no uses, and no handle to it is kept.
        unsafe { function.delete() };
    }
    for function in module.get_functions() {
        if function.count_basic_blocks() > 0 {
            let attribute = |k, v| ctx.create_string_attribute(k, v);
            function.add_attribute(AttributeLoc::Function, attribute("target-cpu", &cpu));
            function.add_attribute(
                AttributeLoc::Function,
                attribute("target-features", &features),
            );
        }
    }
    module.set_triple(&triple);
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    module
        .run_passes("default<O3>", machine, PassBuilderOptions::create())
        .map_err(|e| format!("optimising: {e}"))
}

/// Keeps LLVM's warnings and remarks about `ctx`'s modules off standard error: a loop the
/// kernels ask to vectorise that LLVM cannot (a fused epilogue's gather, say) stays scalar,
/// which is nothing a user can act on. Errors are still printed.
fn quiet_diagnostics(ctx: &Context) {
    use inkwell::context::AsContextRef;
    use inkwell::llvm_sys::core::{
        LLVMContextSetDiagnosticHandler, LLVMDisposeMessage, LLVMGetDiagInfoDescription,
        LLVMGetDiagInfoSeverity,
    };
    use inkwell::llvm_sys::prelude::LLVMDiagnosticInfoRef;
    use inkwell::llvm_sys::LLVMDiagnosticSeverity;

    extern "C" fn handler(info: LLVMDiagnosticInfoRef, _: *mut std::ffi::c_void) {
        // SAFETY: LLVM passes a valid diagnostic for the duration of the call; the
        // description is a message this function owns and disposes of.
        unsafe {
            if LLVMGetDiagInfoSeverity(info) == LLVMDiagnosticSeverity::LLVMDSError {
                let text = LLVMGetDiagInfoDescription(info);
                eprintln!("LLVM: {}", std::ffi::CStr::from_ptr(text).to_string_lossy());
                LLVMDisposeMessage(text);
            }
        }
    }
    // SAFETY: the handler is a plain function that outlives the context.
    unsafe {
        LLVMContextSetDiagnosticHandler(ctx.as_ctx_ref(), Some(handler), std::ptr::null_mut())
    };
}

/// Calls a host kernel over blocks `first..end`.
///
/// # Safety
/// `address` is a host kernel taking `args.len()` pointers and two `i64`, and every pointer
/// is valid for what the kernel does with it over those blocks.
pub(crate) unsafe fn call_kernel(
    address: usize,
    args: &[*mut u8],
    first: i64,
    end: i64,
) -> Result<(), RuntimeError> {
    macro_rules! ptr {
        ($i:tt) => { *mut u8 };
    }
    macro_rules! call {
        ($($i:tt)*) => {{
            // SAFETY: guaranteed by the caller.
            let f = unsafe {
                std::mem::transmute::<usize, extern "C" fn($(ptr!($i),)* i64, i64)>(address)
            };
            f($(args[$i],)* first, end)
        }};
    }
    match args.len() {
        0 => call!(),
        1 => call!(0),
        2 => call!(0 1),
        3 => call!(0 1 2),
        4 => call!(0 1 2 3),
        5 => call!(0 1 2 3 4),
        6 => call!(0 1 2 3 4 5),
        7 => call!(0 1 2 3 4 5 6),
        8 => call!(0 1 2 3 4 5 6 7),
        9 => call!(0 1 2 3 4 5 6 7 8),
        10 => call!(0 1 2 3 4 5 6 7 8 9),
        11 => call!(0 1 2 3 4 5 6 7 8 9 10),
        12 => call!(0 1 2 3 4 5 6 7 8 9 10 11),
        13 => call!(0 1 2 3 4 5 6 7 8 9 10 11 12),
        14 => call!(0 1 2 3 4 5 6 7 8 9 10 11 12 13),
        15 => call!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14),
        16 => call!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15),
        n => {
            return Err(RuntimeError::Unsupported(format!(
                "a host kernel takes {n} pointer arguments; the CPU executor supports at most {MAX_HOST_ARGS}"
            )))
        }
    }
    Ok(())
}

macro_rules! math_table {
    ($($kind:ident $name:ident = $body:expr;)*) => {
        /// The libm functions kernels may call: (symbol, kind, address of the Rust version).
        fn math_functions() -> Vec<(&'static str, MathKind, usize)> {
            vec![$((stringify!($name), MathKind::$kind, {
                math_fn!($kind $name = $body);
                $name as *const () as usize
            }),)*]
        }
    };
}

macro_rules! math_fn {
    (F1 $name:ident = $body:expr) => {
        extern "C" fn $name(x: f32) -> f32 {
            ($body)(x)
        }
    };
    (F2 $name:ident = $body:expr) => {
        extern "C" fn $name(x: f32, y: f32) -> f32 {
            ($body)(x, y)
        }
    };
    (F3 $name:ident = $body:expr) => {
        extern "C" fn $name(x: f32, y: f32, z: f32) -> f32 {
            ($body)(x, y, z)
        }
    };
    (D1 $name:ident = $body:expr) => {
        extern "C" fn $name(x: f64) -> f64 {
            ($body)(x)
        }
    };
    (D2 $name:ident = $body:expr) => {
        extern "C" fn $name(x: f64, y: f64) -> f64 {
            ($body)(x, y)
        }
    };
    (D3 $name:ident = $body:expr) => {
        extern "C" fn $name(x: f64, y: f64, z: f64) -> f64 {
            ($body)(x, y, z)
        }
    };
}

#[derive(Clone, Copy)]
enum MathKind {
    F1,
    F2,
    F3,
    D1,
    D2,
    D3,
}

math_table! {
    F1 expf = f32::exp;
    F1 exp2f = f32::exp2;
    F1 expm1f = f32::exp_m1;
    F1 logf = f32::ln;
    F1 log2f = f32::log2;
    F1 log10f = f32::log10;
    F1 log1pf = f32::ln_1p;
    F1 sqrtf = f32::sqrt;
    F1 tanhf = f32::tanh;
    F1 sinf = f32::sin;
    F1 cosf = f32::cos;
    F1 tanf = f32::tan;
    F1 fabsf = f32::abs;
    F1 floorf = f32::floor;
    F1 ceilf = f32::ceil;
    F1 roundf = f32::round;
    F1 truncf = f32::trunc;
    F1 rintf = f32::round_ties_even;
    F2 powf = f32::powf;
    F2 fmaxf = f32::max;
    F2 fminf = f32::min;
    F2 fmodf = |x: f32, y: f32| x % y;
    F2 atan2f = f32::atan2;
    F2 copysignf = f32::copysign;
    F3 fmaf = f32::mul_add;
    D1 exp = f64::exp;
    D1 log = f64::ln;
    D1 sqrt = f64::sqrt;
    D1 tanh = f64::tanh;
    D1 floor = f64::floor;
    D1 ceil = f64::ceil;
    D2 pow = f64::powf;
    D2 fmax = f64::max;
    D2 fmin = f64::min;
    D3 fma = f64::mul_add;
}

/// Declares each math function in `module` (unless it has a body there) and returns the
/// declarations with the addresses to map them to.
fn declare_math<'ctx>(
    ctx: &'ctx Context,
    module: &Module<'ctx>,
) -> Vec<(inkwell::values::FunctionValue<'ctx>, usize)> {
    let f32t = ctx.f32_type();
    let f64t = ctx.f64_type();
    let mut out = Vec::new();
    for (name, kind, address) in math_functions() {
        let function = match module.get_function(name) {
            Some(f) if f.count_basic_blocks() > 0 => continue,
            Some(f) => f,
            None => {
                let ty = match kind {
                    MathKind::F1 => f32t.fn_type(&[f32t.into()], false),
                    MathKind::F2 => f32t.fn_type(&[f32t.into(), f32t.into()], false),
                    MathKind::F3 => f32t.fn_type(&[f32t.into(), f32t.into(), f32t.into()], false),
                    MathKind::D1 => f64t.fn_type(&[f64t.into()], false),
                    MathKind::D2 => f64t.fn_type(&[f64t.into(), f64t.into()], false),
                    MathKind::D3 => f64t.fn_type(&[f64t.into(), f64t.into(), f64t.into()], false),
                };
                module.add_function(name, ty, Some(Linkage::External))
            }
        };
        out.push((function, address));
    }
    out
}
