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

/// Links host bitcode modules into one (cached in `cache_dir` when given, keyed by the
/// modules' contents: a change of any kernel, or of the code that printed it, is a miss).
pub fn link_host_cached(
    modules: &[Vec<u8>],
    cache_dir: Option<&std::path::Path>,
) -> Result<Vec<u8>, CodegenError> {
    // Each module with its length, so that no two lists of modules share a key.
    let lengths: Vec<[u8; 8]> = modules
        .iter()
        .map(|m| (m.len() as u64).to_le_bytes())
        .collect();
    let mut parts: Vec<&[u8]> = vec![b"linked host"];
    for (m, len) in modules.iter().zip(&lengths) {
        parts.extend([len.as_slice(), m.as_slice()]);
    }
    let key = crate::cache::key_bytes(&parts);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The linked module is cached by the contents of its parts: different kernels under
    /// the same names (as after a change to the printers) are a miss, not stale code.
    #[test]
    fn linked_code_is_cached_by_content() {
        let cache = tempfile::tempdir().expect("temp dir");
        let kernel = |body: &str| {
            let text = format!(
                "module {{\n  func.func @k(%arg0: memref<1xf32>) {{\n    %c0 = arith.constant 0 : index\n    %v = arith.constant {body} : f32\n    memref.store %v, %arg0[%c0] : memref<1xf32>\n    return\n  }}\n}}\n"
            );
            compile_host(&text, "k").expect("compiles")
        };
        let (one, two) = (kernel("1.0"), kernel("2.0"));
        let first = link_host_cached(std::slice::from_ref(&one), Some(cache.path())).unwrap();
        assert_eq!(
            link_host_cached(std::slice::from_ref(&one), Some(cache.path())).unwrap(),
            first
        );
        let second = link_host_cached(std::slice::from_ref(&two), Some(cache.path())).unwrap();
        assert_ne!(second, first);
        assert_eq!(second, link_host(&[two]).unwrap());
    }
}
