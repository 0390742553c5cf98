//! Native host code: a bundle's host kernels (`host.bc`) optimised for this CPU (as the JIT
//! does), compiled to an object by LLVM and linked into a shared library by the system C
//! compiler (`$CC`, else `cc`), kept in the shared cache (`<cache>/host/`) under a key of
//! the host code, the CPU, its features and LLVM. A later load of the same bundle on the
//! same kind of CPU opens the cached library instead of compiling: milliseconds instead of
//! seconds. A bundle moved to another kind of CPU compiles for that one (and says so); with
//! no cache directory or no C compiler, the in-process JIT ([`crate::jit`]) runs instead.
//!
//! Invariant: a cached library is opened only when its SHA-256 matches the checksummed
//! record written beside it after it was linked, so a truncated or edited file is rebuilt,
//! never loaded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use inkwell::context::Context;
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::module::Module;
use inkwell::targets::{CodeModel, FileType, RelocMode};
use rfnc_bundle::cache;
use sha2::{Digest, Sha256};

use crate::error::RuntimeError;
use crate::jit::{host_cpu, host_machine, optimise_for_host, HostKernels};

/// Where the host kernels came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostOrigin {
    /// A library compiled earlier for this CPU, from the cache.
    Cached,
    /// Compiled and linked now for this CPU, and cached.
    Compiled,
    /// The in-process JIT (no cache directory or no C compiler).
    Jit,
}

/// The host kernels, native or JIT-compiled.
pub(crate) enum HostCode {
    Native {
        // Kept open while the addresses are used.
        _library: libloading::Library,
        addresses: HashMap<String, usize>,
    },
    Jit(HostKernels),
}

impl HostCode {
    pub(crate) fn address(&self, name: &str) -> Option<usize> {
        match self {
            HostCode::Native { addresses, .. } => addresses.get(name).copied(),
            HostCode::Jit(k) => k.address(name),
        }
    }
}

/// The host kernels `kernels` of the bundle whose host code is `path` (its other
/// functions are left out), each looked up.
pub(crate) fn load_host(
    path: &Path,
    kernels: &[&str],
) -> Result<(HostCode, HostOrigin), RuntimeError> {
    let jit = || {
        Ok((
            HostCode::Jit(HostKernels::load(path, kernels)?),
            HostOrigin::Jit,
        ))
    };
    let Some(dir) = cache::default_cache_dir().map(|d| d.join("host")) else {
        return jit();
    };
    let Ok(bitcode) = std::fs::read(path) else {
        return jit(); // the JIT reports the missing file
    };
    let (cpu, features) = host_cpu();
    let (major, minor, patch) = inkwell::support::get_llvm_version();
    let llvm = format!("{major}.{minor}.{patch}");
    let key = cache::key(&[
        b"rfnc-host-library-1",
        env!("CARGO_PKG_VERSION").as_bytes(),
        llvm.as_bytes(),
        cpu.as_bytes(),
        features.as_bytes(),
        &bitcode,
        kernels.join(" ").as_bytes(),
    ]);
    let library = dir.join(format!("{key}.so"));
    let sum = format!("{key}.so.sha256");
    if verified(&library, &dir, &sum) {
        if let Ok(code) = open(&library, kernels) {
            return Ok((code, HostOrigin::Cached));
        }
    }
    let error = |message: String| RuntimeError::Jit {
        path: path.to_path_buf(),
        message,
    };
    let Some(linked) = compile(path, &bitcode, kernels).map_err(error)? else {
        return jit();
    };
    rfnc_bundle::atomic::write_atomically(&library, &linked).map_err(|e| {
        error(format!(
            "cannot cache the host library `{}`: {e}",
            library.display()
        ))
    })?;
    cache::store(&dir, &sum, &Sha256::digest(&linked));
    let code = open(&library, kernels).map_err(error)?;
    Ok((code, HostOrigin::Compiled))
}

/// Whether `library` exists and its SHA-256 is the one recorded beside it.
fn verified(library: &Path, dir: &Path, sum: &str) -> bool {
    let (Ok(bytes), Some(recorded)) = (std::fs::read(library), cache::load(dir, sum)) else {
        return false;
    };
    Sha256::digest(&bytes).as_slice() == recorded.as_slice()
}

/// Opens a library and looks up every kernel.
fn open(library: &Path, kernels: &[&str]) -> Result<HostCode, String> {
    // SAFETY: the library is one rfnc linked from the bundle's host code (checksum
    // verified); its initialisers are the C runtime's.
    let lib = unsafe { libloading::Library::new(library) }
        .map_err(|e| format!("cannot open `{}`: {e}", library.display()))?;
    let mut addresses = HashMap::new();
    for &name in kernels {
        // SAFETY: only the address is taken; it is called through `call_kernel`.
        let symbol = unsafe { lib.get::<*const ()>(name.as_bytes()) }
            .map_err(|_| format!("it has no function for kernel `{name}`"))?;
        addresses.insert(name.to_string(), *symbol as usize);
    }
    Ok(HostCode::Native {
        _library: lib,
        addresses,
    })
}

/// The shared library of `path`'s host code (its functions `kernels`) for this CPU;
/// `None` when no C compiler links it (the caller falls back to the JIT).
fn compile(path: &Path, bitcode: &[u8], kernels: &[&str]) -> Result<Option<Vec<u8>>, String> {
    let work =
        tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let object = work.path().join("host.o");
    {
        let ctx = Context::create();
        let buffer = MemoryBuffer::create_from_memory_range_copy(bitcode, "host");
        let module = Module::parse_bitcode_from_buffer(&buffer, &ctx)
            .map_err(|e| format!("not valid LLVM bitcode: {e}"))?;
        let machine = host_machine(RelocMode::PIC, CodeModel::Default)?;
        optimise_for_host(&ctx, &module, &machine, kernels)?;
        machine
            .write_to_file(&module, FileType::Object, &object)
            .map_err(|e| format!("cannot emit the host object of `{}`: {e}", path.display()))?;
    }
    let library = work.path().join("host.so");
    let cc = std::env::var_os("CC")
        .filter(|c| !c.is_empty())
        .map_or_else(|| PathBuf::from("cc"), PathBuf::from);
    let linked = Command::new(&cc)
        .args(["-shared", "-o"])
        .arg(&library)
        .arg(&object)
        .arg("-lm")
        .output();
    match linked {
        Ok(out) if out.status.success() => std::fs::read(&library)
            .map(Some)
            .map_err(|e| format!("cannot read the linked host library: {e}")),
        // No C compiler, or it failed: the JIT needs neither.
        _ => Ok(None),
    }
}
