//! The on-disk compile cache: PTX and host bitcode of a kernel, keyed by everything that
//! determines them.
//!
//! Invariants: the key is the SHA-256 of (this crate's version, the LLVM version, the GPU
//! architecture, the host CPU, the GPU MLIR, the host MLIR), each field length-prefixed; an
//! entry is `<dir>/<hex>.ptx` plus `<dir>/<hex>.host.bc`, each written to a temporary file
//! in the same directory and renamed into place, so readers never see a partial file; an
//! entry that is missing, unreadable or corrupt is a miss, never an error.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{CodegenError, Stage};

/// The cache directory: `$RFNC_CACHE_DIR`, else `$XDG_CACHE_HOME/rfnc`, else
/// `$HOME/.cache/rfnc`; `None` when none of these is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(d) = var("RFNC_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("rfnc"));
    }
    var("HOME").map(|h| PathBuf::from(h).join(".cache").join("rfnc"))
}

/// The hex cache key of a kernel.
pub fn cache_key(fields: &[&str]) -> String {
    let mut h = Sha256::new();
    for f in fields {
        h.update((f.len() as u64).to_le_bytes());
        h.update(f.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A cached kernel.
pub struct Entry {
    /// The PTX.
    pub ptx: String,
    /// The host bitcode.
    pub host_bitcode: Vec<u8>,
}

/// The entry `key` in `dir`, if it is there and looks sound: PTX mentioning `.entry` and
/// bitcode with the bitcode magic.
pub fn load(dir: &Path, key: &str) -> Option<Entry> {
    let ptx = std::fs::read_to_string(dir.join(format!("{key}.ptx"))).ok()?;
    let host_bitcode = std::fs::read(dir.join(format!("{key}.host.bc"))).ok()?;
    let sound = ptx.contains(".entry") && host_bitcode.starts_with(b"BC\xC0\xDE");
    sound.then_some(Entry { ptx, host_bitcode })
}

/// Stores `entry` under `key` in `dir`, creating `dir` if needed.
pub fn store(dir: &Path, key: &str, entry: &Entry) -> Result<(), CodegenError> {
    std::fs::create_dir_all(dir).map_err(|e| cache_error(dir, e))?;
    write_atomic(dir, &format!("{key}.host.bc"), &entry.host_bitcode)?;
    // The PTX goes last: an entry counts only once both files are there.
    write_atomic(dir, &format!("{key}.ptx"), entry.ptx.as_bytes())
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), CodegenError> {
    use std::io::Write;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)
        .map_err(|e| cache_error(dir, e))?;
    tmp.write_all(bytes)
        .map_err(|e| cache_error(tmp.path(), e))?;
    tmp.persist(dir.join(name))
        .map_err(|e| cache_error(&dir.join(name), e.error))?;
    Ok(())
}

fn cache_error(path: &Path, e: std::io::Error) -> CodegenError {
    CodegenError::new(
        Stage::Cache,
        format!(
            "{}: {e} (set RFNC_CACHE_DIR to a writable directory, or compile without a cache)",
            path.display()
        ),
    )
}
