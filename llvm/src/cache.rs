//! The compiled-kernel cache: PTX and host bitcode stored under a hash of everything that
//! determines them (this crate's version, the LLVM version, the GPU, both MLIR texts).
//!
//! Invariants: entries are written atomically (temporary file + rename), so a reader sees a
//! whole entry or none; an entry that cannot be read is treated as missing and rebuilt.

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

/// The cache key of a kernel.
pub fn key(sm: &str, gpu_mlir: &str, host_mlir: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        env!("CARGO_PKG_VERSION"),
        "llvm-22",
        sm,
        gpu_mlir,
        "\0",
        host_mlir,
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The cached PTX and host bitcode for `key`, if both are there.
pub fn load(dir: &Path, key: &str) -> Option<(String, Vec<u8>)> {
    let ptx = std::fs::read_to_string(dir.join(format!("{key}.ptx"))).ok()?;
    let host = std::fs::read(dir.join(format!("{key}.host.bc"))).ok()?;
    (ptx.contains(".entry") && host.starts_with(b"BC")).then_some((ptx, host))
}

/// Stores an entry; failures only cost a recompilation later, so they are ignored.
pub fn store(dir: &Path, key: &str, ptx: &str, host: &[u8]) {
    let write = |name: String, bytes: &[u8]| -> std::io::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(bytes)?;
        tmp.persist(dir.join(name)).map_err(|e| e.error)?;
        Ok(())
    };
    let _ = write(format!("{key}.host.bc"), host)
        .and_then(|_| write(format!("{key}.ptx"), ptx.as_bytes()));
}
