//! Compiling all the kernels of a network: on several threads (each with its own MLIR and
//! LLVM context, which are not thread-safe), each kernel taken from the cache when it is
//! there. Results come back in the order of the sources.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use inkwell::context::Context;

use crate::gpu::{compile_gpu_with, GpuTarget};
use crate::host::compile_host_with;
use crate::mlir::Mlir;
use crate::{cache, CodegenError};

/// One kernel's MLIR, in both forms.
#[derive(Clone, Debug)]
pub struct KernelSource {
    pub name: String,
    pub gpu_mlir: String,
    pub host_mlir: String,
}

#[derive(Clone, Debug)]
pub struct CompileOptions {
    pub target: GpuTarget,
    pub cache_dir: Option<PathBuf>,
    pub threads: usize,
}

#[derive(Clone, Debug)]
pub struct CompiledKernel {
    pub name: String,
    pub ptx: String,
    pub host_bitcode: Vec<u8>,
    /// Taken from the cache.
    pub cached: bool,
}

fn compile_one(
    mlir: &Mlir,
    source: &KernelSource,
    options: &CompileOptions,
) -> Result<CompiledKernel, CodegenError> {
    let key = cache::key(&options.target.sm, &source.gpu_mlir, &source.host_mlir);
    if let Some(dir) = &options.cache_dir {
        if let Some((ptx, host_bitcode)) = cache::load(dir, &key) {
            return Ok(CompiledKernel {
                name: source.name.clone(),
                ptx,
                host_bitcode,
                cached: true,
            });
        }
    }
    // A fresh LLVM context per kernel keeps memory flat over hundreds of kernels.
    let context = Context::create();
    let gpu = compile_gpu_with(
        mlir,
        &context,
        &source.gpu_mlir,
        &source.name,
        &options.target,
    )?;
    let host_bitcode = compile_host_with(mlir, &context, &source.host_mlir, &source.name)?;
    if let Some(dir) = &options.cache_dir {
        cache::store(dir, &key, &gpu.ptx, &host_bitcode);
    }
    Ok(CompiledKernel {
        name: source.name.clone(),
        ptx: gpu.ptx,
        host_bitcode,
        cached: false,
    })
}

/// Compiles every kernel (PTX and host bitcode); the first error stops the batch.
pub fn compile_kernels(
    sources: &[KernelSource],
    options: &CompileOptions,
) -> Result<Vec<CompiledKernel>, CodegenError> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<CompiledKernel, CodegenError>>>> =
        Mutex::new(vec![None; sources.len()]);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let threads = options.threads.clamp(1, sources.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut mlir: Option<Mlir> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= sources.len() || failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = cache::key(
                        &options.target.sm,
                        &sources[i].gpu_mlir,
                        &sources[i].host_mlir,
                    );
                    let hit = options
                        .cache_dir
                        .as_ref()
                        .and_then(|d| cache::load(d, &key))
                        .map(|(ptx, host_bitcode)| CompiledKernel {
                            name: sources[i].name.clone(),
                            ptx,
                            host_bitcode,
                            cached: true,
                        });
                    let result = match hit {
                        Some(k) => Ok(k),
                        None => {
                            compile_one(mlir.get_or_insert_with(Mlir::new), &sources[i], options)
                        }
                    };
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
