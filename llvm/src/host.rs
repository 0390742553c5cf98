//! The host path: kernel MLIR (host form) -> LLVM IR -> bitcode. The runtime optimises it
//! for the CPU it runs on when it JIT-compiles it.

use inkwell::context::Context;

use crate::gpu::parse_ir;
use crate::mlir::Mlir;
use crate::CodegenError;

/// Host bitcode of one kernel.
pub fn compile_host_with(
    mlir: &Mlir,
    context: &Context,
    text: &str,
    name: &str,
) -> Result<Vec<u8>, CodegenError> {
    let ir = mlir.host_to_llvm_ir(text, name)?;
    let stage = format!("LLVM host code of kernel {name}");
    let module = parse_ir(context, &ir, name, &stage)?;
    module
        .verify()
        .map_err(|e| CodegenError::new(&stage, e.to_string()))?;
    Ok(module.write_bitcode_to_memory().as_slice().to_vec())
}

/// [`compile_host_with`] in fresh contexts.
pub fn compile_host(text: &str, name: &str) -> Result<Vec<u8>, CodegenError> {
    compile_host_with(&Mlir::new(), &Context::create(), text, name)
}

/// Links host bitcode modules into one (cached under `key` in `cache_dir` when given).
pub fn link_host_cached(
    modules: &[Vec<u8>],
    key: &str,
    cache_dir: Option<&std::path::Path>,
) -> Result<Vec<u8>, CodegenError> {
    let key = crate::cache::key(&["linked host", key]);
    if let Some(bc) = cache_dir.and_then(|d| crate::cache::load_bitcode(d, &key)) {
        return Ok(bc);
    }
    let linked = link_host(modules)?;
    if let Some(d) = cache_dir {
        crate::cache::store_bitcode(d, &key, &linked);
    }
    Ok(linked)
}

/// Links host bitcode modules into one.
pub fn link_host(modules: &[Vec<u8>]) -> Result<Vec<u8>, CodegenError> {
    let stage = "linking host code";
    let context = Context::create();
    let parse = |(i, bytes): (usize, &Vec<u8>)| {
        let buffer = inkwell::memory_buffer::MemoryBuffer::create_from_memory_range_copy(
            bytes,
            &format!("kernel{i}"),
        );
        inkwell::module::Module::parse_bitcode_from_buffer(&buffer, &context)
            .map_err(|e| CodegenError::new(stage, format!("bad bitcode: {e}")))
    };
    let linked = context.create_module("host");
    for m in modules.iter().enumerate() {
        linked
            .link_in_module(parse(m)?)
            .map_err(|e| CodegenError::new(stage, e.to_string()))?;
    }
    Ok(linked.write_bitcode_to_memory().as_slice().to_vec())
}
