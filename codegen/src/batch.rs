//! Compiling many kernels: a pool of worker threads, each with its own MLIR session (melior
//! and inkwell contexts are not `Send`), in front of the on-disk cache.
//!
//! Invariants: results come back in the order of the input; a kernel found in the cache
//! is not compiled and is marked `cached`; the first failure (in input order) is returned
//! and names its kernel; a failure to write the cache does not fail the compile.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::cache;
use crate::error::CodegenError;
use crate::gpu::{compile_gpu_in, GpuTarget};
use crate::host::compile_host_in;
use crate::llvm::{host_cpu, llvm_version};
use crate::mlir::MlirSession;

/// One kernel in both forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSource {
    /// The kernel's name (the `gpu.func` and `func.func` symbol).
    pub name: String,
    /// The GPU form.
    pub gpu_mlir: String,
    /// The host form.
    pub host_mlir: String,
}

/// How to compile a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOptions {
    /// The GPU to generate code for.
    pub target: GpuTarget,
    /// Where to cache results; `None` compiles everything.
    pub cache_dir: Option<PathBuf>,
    /// Worker threads; 0 means one per available core.
    pub threads: usize,
}

/// One compiled kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledKernel {
    /// The kernel's name.
    pub name: String,
    /// Its PTX.
    pub ptx: String,
    /// The optimised NVPTX LLVM IR; `None` when the kernel came from the cache.
    pub llvm_ir: Option<String>,
    /// The host code as LLVM bitcode.
    pub host_bitcode: Vec<u8>,
    /// Whether it came from the cache.
    pub cached: bool,
}

/// Compiles `kernels` (GPU and host forms) on `options.threads` threads, using and
/// filling the cache.
pub fn compile_kernels(
    kernels: &[KernelSource],
    options: &CompileOptions,
) -> Result<Vec<CompiledKernel>, CodegenError> {
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(kernels.len())
    .max(1);
    let results: Vec<Mutex<Option<Result<CompiledKernel, CodegenError>>>> =
        kernels.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut session: Option<MlirSession> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= kernels.len() || failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = compile_one(&kernels[i], options, &mut session);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                }
            });
        }
    });
    let mut out = Vec::with_capacity(kernels.len());
    for r in results {
        match r.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(Ok(k)) => out.push(k),
            Some(Err(e)) => return Err(e),
            // Skipped after another kernel failed; that failure comes later in the list.
            None => continue,
        }
    }
    Ok(out)
}

fn compile_one(
    k: &KernelSource,
    options: &CompileOptions,
    session: &mut Option<MlirSession>,
) -> Result<CompiledKernel, CodegenError> {
    let key = cache::cache_key(&[
        env!("CARGO_PKG_VERSION"),
        &llvm_version(),
        &options.target.sm,
        &host_cpu(),
        &k.gpu_mlir,
        &k.host_mlir,
    ]);
    if let Some(dir) = &options.cache_dir {
        if let Some(entry) = cache::load(dir, &key) {
            return Ok(CompiledKernel {
                name: k.name.clone(),
                ptx: entry.ptx,
                llvm_ir: None,
                host_bitcode: entry.host_bitcode,
                cached: true,
            });
        }
    }
    let session = session.get_or_insert_with(MlirSession::new);
    let gpu =
        compile_gpu_in(session, &k.gpu_mlir, &options.target).map_err(|e| e.in_kernel(&k.name))?;
    let host = compile_host_in(session, &k.host_mlir).map_err(|e| e.in_kernel(&k.name))?;
    let entry = cache::Entry {
        ptx: gpu.ptx,
        host_bitcode: host.bitcode,
    };
    if let Some(dir) = &options.cache_dir {
        // A cache that cannot be written only costs time later.
        let _ = cache::store(dir, &key, &entry);
    }
    Ok(CompiledKernel {
        name: k.name.clone(),
        ptx: entry.ptx,
        llvm_ir: Some(gpu.llvm_ir),
        host_bitcode: entry.host_bitcode,
        cached: false,
    })
}
