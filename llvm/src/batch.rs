//! Compiling all the kernels of a network: on several threads (each with its own MLIR and
//! LLVM context, which are not thread-safe), each kernel taken from the cache when it is
//! there. A cache entry is keyed by the SHA-256 of the kernel's MLIR text (the exact input
//! of compilation, a stable encoding of its kernel IR), the generator's source hash, the
//! GPU and libdevice. Results come back in the order of the kernels.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use inkwell::context::Context;
use inkwell::module::Module;

use crate::gpu::{compile_gpu_with, GpuTarget};
use crate::host::compile_host_with;
use crate::mlir::Mlir;
use crate::{cache, CodegenError};

/// One kernel's MLIR, in both forms.
#[derive(Clone, Debug)]
pub struct KernelSource {
    /// `None` for a kernel only the CPU runs (no PTX).
    pub gpu_mlir: Option<String>,
    pub host_mlir: String,
}

#[derive(Clone, Debug)]
pub struct CompileOptions {
    pub target: GpuTarget,
    pub cache_dir: Option<PathBuf>,
    /// Identifies the code that generated the MLIR (the compiler's source hash): part of
    /// every cache key.
    pub generator: String,
    pub threads: usize,
    /// Compile PTX (for the GPU executor).
    pub ptx: bool,
    /// Compile host code (for the CPU executor).
    pub host: bool,
}

#[derive(Clone, Debug)]
pub struct CompiledKernel {
    pub name: String,
    /// Empty when PTX was not asked for.
    pub ptx: String,
    /// Empty when host code was not asked for.
    pub host_bitcode: Vec<u8>,
    /// Everything came from the cache.
    pub cached: bool,
}

/// The MLIR of kernel `i` (it keys the cache, so it is printed for every kernel).
pub type Render<'a> = dyn Fn(usize) -> Result<KernelSource, CodegenError> + Sync + 'a;

struct Worker<'c> {
    mlir: Option<Mlir>,
    context: &'c Context,
    libdevice: Option<Module<'c>>,
}

impl Worker<'_> {
    fn compile(
        &mut self,
        name: &str,
        i: usize,
        render: &Render,
        options: &CompileOptions,
    ) -> Result<CompiledKernel, CodegenError> {
        let libdevice = options
            .target
            .libdevice
            .as_deref()
            .map(cache::file_identity)
            .unwrap_or_default();
        let source = render(i)?;
        let generator = options.generator.as_str();
        let gpu_key = cache::key(&[
            "ptx",
            generator,
            &options.target.sm,
            &libdevice,
            source.gpu_mlir.as_deref().unwrap_or(""),
        ]);
        let host_key = cache::key(&["host", generator, &source.host_mlir]);
        let dir = options.cache_dir.as_deref();
        let mut ptx = match (options.ptx, &source.gpu_mlir) {
            (true, Some(_)) => dir.and_then(|d| cache::load_ptx(d, &gpu_key)),
            _ => Some(String::new()),
        };
        let mut host = match options.host {
            true => dir.and_then(|d| cache::load_bitcode(d, &host_key)),
            false => Some(Vec::new()),
        };
        let cached = ptx.is_some() && host.is_some();
        if !cached {
            let mlir = self.mlir.get_or_insert_with(Mlir::new);
            if let (None, Some(gpu_mlir)) = (&ptx, &source.gpu_mlir) {
                let gpu = compile_gpu_with(
                    mlir,
                    self.context,
                    &mut self.libdevice,
                    gpu_mlir,
                    name,
                    &options.target,
                )?;
                if let Some(d) = dir {
                    cache::store_ptx(d, &gpu_key, &gpu.ptx);
                }
                ptx = Some(gpu.ptx);
            }
            if host.is_none() {
                let bc = compile_host_with(mlir, self.context, &source.host_mlir, name)?;
                if let Some(d) = dir {
                    cache::store_bitcode(d, &host_key, &bc);
                }
                host = Some(bc);
            }
        }
        Ok(CompiledKernel {
            name: name.to_string(),
            ptx: ptx.expect("compiled or cached"),
            host_bitcode: host.expect("compiled or cached"),
            cached,
        })
    }
}

/// Compiles every kernel (PTX and host bitcode, as asked); the first error stops the
/// batch. `names[i]` is kernel `i`'s symbol.
pub fn compile_kernels(
    names: &[String],
    render: &Render,
    options: &CompileOptions,
) -> Result<Vec<CompiledKernel>, CodegenError> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<CompiledKernel, CodegenError>>>> =
        Mutex::new(vec![None; names.len()]);
    let failed = AtomicBool::new(false);
    let threads = options.threads.clamp(1, names.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let context = Context::create();
                let mut worker = Worker {
                    mlir: None,
                    context: &context,
                    libdevice: None,
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= names.len() || failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let result = worker.compile(&names[i], i, render, options);
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    results.lock().expect("no panics while holding the lock")[i] = Some(result);
                }
            });
        }
    });
    let results = results
        .into_inner()
        .expect("no panics while holding the lock");
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Some(r) => out.push(r?),
            None => {
                return Err(CodegenError::new(
                    "compiling kernels",
                    "stopped after an earlier kernel failed",
                ))
            }
        }
    }
    Ok(out)
}
