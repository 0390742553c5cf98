//! The compiled-kernel cache: PTX and host bitcode stored under a hash of everything that
//! determines them: this crate's version and a hash of the code-generation sources
//! (build.rs), the LLVM version, the GPU, and the kernel's name,
//! which holds a hash of its whole kernel IR (so the MLIR need not even be printed to look
//! a kernel up).
//!
//! Invariants: entries are written atomically (temporary file + rename), so a reader sees a
//! whole entry or none; an entry that cannot be read or looks wrong is treated as missing
//! and rebuilt.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// `$RFNC_CACHE_DIR`, else `$XDG_CACHE_HOME/rfnc`, else `$HOME/.cache/rfnc`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("RFNC_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("rfnc")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("rfnc")))
}

/// A cache key: the hash of the parts, with this compiler's version and LLVM's.
pub fn key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    let version = [
        env!("CARGO_PKG_VERSION"),
        env!("RFNC_CODEGEN_SOURCE_HASH"),
        "llvm-22",
    ];
    for part in version.iter().chain(parts) {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A cached PTX module.
pub fn load_ptx(dir: &Path, key: &str) -> Option<String> {
    let ptx = std::fs::read_to_string(dir.join(format!("{key}.ptx"))).ok()?;
    ptx.contains(".entry").then_some(ptx)
}

/// A cached bitcode module.
pub fn load_bitcode(dir: &Path, key: &str) -> Option<Vec<u8>> {
    let bc = std::fs::read(dir.join(format!("{key}.bc"))).ok()?;
    bc.starts_with(b"BC").then_some(bc)
}

pub fn store_ptx(dir: &Path, key: &str, ptx: &str) {
    store(dir, format!("{key}.ptx"), ptx.as_bytes());
}

pub fn store_bitcode(dir: &Path, key: &str, bc: &[u8]) {
    store(dir, format!("{key}.bc"), bc);
}

/// Stores an entry; failures only cost a recompilation later, so they are ignored.
fn store(dir: &Path, name: String, bytes: &[u8]) {
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(bytes)?;
        tmp.persist(dir.join(name)).map_err(|e| e.error)?;
        Ok(())
    };
    let _ = write();
}
