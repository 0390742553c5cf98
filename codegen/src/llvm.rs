//! LLVM-side helpers shared by the GPU and host paths: one-time target initialisation,
//! target machines, the O3 pipeline, internalisation, and the LLVM version.
//!
//! Invariants: targets are initialised once per process before any target machine is
//! made; optimisation always runs `default<O3>` with the module's own target machine so
//! that target-specific passes (NVVMReflect for libdevice) take part.

use std::sync::OnceLock;

use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::OptimizationLevel;

use crate::error::{CodegenError, Stage};

static INIT_TARGETS: OnceLock<Result<(), String>> = OnceLock::new();

/// Registers the NVPTX and the native target, once: LLVM's target registry must not be
/// written while another thread reads it, so both are registered together up front.
fn init_targets() -> Result<(), CodegenError> {
    INIT_TARGETS
        .get_or_init(|| {
            Target::initialize_nvptx(&InitializationConfig::default());
            Target::initialize_native(&InitializationConfig::default())
        })
        .clone()
        .map_err(|e| CodegenError::new(Stage::Setup, format!("LLVM target set-up: {e}")))
}

/// The triple of the GPU code.
pub const NVPTX_TRIPLE: &str = "nvptx64-nvidia-cuda";

/// `major.minor.patch` of the LLVM linked in.
pub fn llvm_version() -> String {
    let (mut major, mut minor, mut patch) = (0u32, 0u32, 0u32);
    // SAFETY: plain out-parameters.
    unsafe { inkwell::llvm_sys::core::LLVMGetVersion(&mut major, &mut minor, &mut patch) };
    format!("{major}.{minor}.{patch}")
}

/// An NVPTX target machine for `sm` (e.g. `sm_80`), optimising at O3.
pub fn nvptx_machine(sm: &str) -> Result<TargetMachine, CodegenError> {
    if !valid_sm(sm) {
        return Err(CodegenError::new(
            Stage::Setup,
            format!("`{sm}` is not a GPU architecture name; expected e.g. `sm_80` or `sm_90`"),
        ));
    }
    init_targets()?;
    let triple = TargetTriple::create(NVPTX_TRIPLE);
    let target = Target::from_triple(&triple)
        .map_err(|e| CodegenError::new(Stage::Setup, format!("no NVPTX target: {e}")))?;
    target
        .create_target_machine(
            &triple,
            sm,
            "",
            OptimizationLevel::Aggressive,
            RelocMode::Default,
            CodeModel::Default,
        )
        .ok_or_else(|| {
            CodegenError::new(
                Stage::Setup,
                format!("LLVM cannot make an NVPTX target machine for `{sm}`"),
            )
        })
}

/// A target machine for the machine this runs on (its CPU and features), at O3.
pub fn native_machine() -> Result<TargetMachine, CodegenError> {
    init_targets()?;
    let triple = TargetMachine::get_default_triple();
    let target = Target::from_triple(&triple)
        .map_err(|e| CodegenError::new(Stage::Setup, format!("no native target: {e}")))?;
    let cpu = TargetMachine::get_host_cpu_name();
    let features = TargetMachine::get_host_cpu_features();
    target
        .create_target_machine(
            &triple,
            &cpu.to_string(),
            &features.to_string(),
            OptimizationLevel::Aggressive,
            RelocMode::PIC,
            CodeModel::Default,
        )
        .ok_or_else(|| CodegenError::new(Stage::Setup, "LLVM cannot make a host target machine"))
}

/// The host CPU name and features, which host code is tuned for (part of cache keys).
pub fn host_cpu() -> String {
    format!(
        "{} {}",
        TargetMachine::get_host_cpu_name(),
        TargetMachine::get_host_cpu_features()
    )
}

/// Sets `module`'s triple and data layout to `machine`'s.
pub fn retarget(module: &Module<'_>, machine: &TargetMachine) {
    module.set_triple(&machine.get_triple());
    module.set_data_layout(&machine.get_target_data().get_data_layout());
}

/// Gives every defined function and global for which `keep` is false internal linkage, so
/// that the optimiser may inline and delete them.
pub fn internalize(module: &Module<'_>, keep: impl Fn(&str) -> bool) {
    for f in module.get_functions() {
        let name = f.get_name().to_string_lossy();
        if f.count_basic_blocks() > 0 && !keep(&name) {
            f.set_linkage(Linkage::Internal);
        }
    }
    for g in module.get_globals() {
        let name = g.get_name().to_string_lossy();
        if g.get_initializer().is_some() && !keep(&name) {
            g.set_linkage(Linkage::Internal);
        }
    }
}

/// Runs `default<O3>` on `module` for `machine`, then verifies it.
pub fn optimize(module: &Module<'_>, machine: &TargetMachine) -> Result<(), CodegenError> {
    module
        .verify()
        .map_err(|e| CodegenError::new(Stage::Translate, format!("invalid LLVM IR: {e}")))?;
    // Dropping unused internal functions first (most of libdevice) saves O3 the work.
    module
        .run_passes(
            "globaldce,default<O3>",
            machine,
            PassBuilderOptions::create(),
        )
        .map_err(|e| CodegenError::new(Stage::Optimize, e.to_string()))?;
    module.verify().map_err(|e| {
        CodegenError::new(
            Stage::Optimize,
            format!("the optimiser produced invalid IR: {e}"),
        )
    })
}

fn valid_sm(sm: &str) -> bool {
    sm.strip_prefix("sm_").is_some_and(|v| {
        let digits = v.trim_end_matches(['a', 'f']);
        !digits.is_empty() && digits.len() <= 3 && digits.bytes().all(|b| b.is_ascii_digit())
    })
}
