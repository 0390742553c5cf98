//! The compiled-kernel cache: PTX and host bitcode stored under a hash of everything that
//! determines them: this crate's version and a hash of the code-generation sources
//! (build.rs), the LLVM version, the GPU, the libdevice file, and the kernel's name, which
//! holds a hash of its whole kernel IR (so the MLIR need not even be printed to look a
//! kernel up).
//!
//! Invariants: an entry is its bytes followed by their SHA-256, written to a temporary
//! file, flushed to disk and renamed, so a reader sees a whole entry or none; an entry whose
//! checksum does not match (a crash, a disk error, an edit) is treated as missing and
//! rebuilt.

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

/// A cache key: the hash of the parts, with this compiler's version, its code-generation
/// sources and the LLVM it links.
pub fn key(parts: &[&str]) -> String {
    let (major, minor, patch) = inkwell::support::get_llvm_version();
    let llvm = format!("llvm-{major}.{minor}.{patch}");
    let version = [
        env!("CARGO_PKG_VERSION"),
        env!("RFNC_CODEGEN_SOURCE_HASH"),
        llvm.as_str(),
    ];
    let mut h = Sha256::new();
    for part in version.iter().chain(parts) {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Identifies a file by path, size and modification time (for files like libdevice that
/// take part in a key).
pub fn file_identity(path: &Path) -> String {
    let meta = std::fs::metadata(path).ok();
    let size = meta.as_ref().map_or(0, |m| m.len());
    let modified = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{}:{size}:{modified}", path.display())
}

/// The bytes of an entry whose checksum matches.
fn load(dir: &Path, name: String) -> Option<Vec<u8>> {
    let mut bytes = std::fs::read(dir.join(name)).ok()?;
    let split = bytes.len().checked_sub(32)?;
    let sum = Sha256::digest(&bytes[..split]);
    (sum.as_slice() == &bytes[split..]).then(|| {
        bytes.truncate(split);
        bytes
    })
}

/// A cached PTX module.
pub fn load_ptx(dir: &Path, key: &str) -> Option<String> {
    let ptx = String::from_utf8(load(dir, format!("{key}.ptx"))?).ok()?;
    ptx.contains(".entry").then_some(ptx)
}

/// A cached bitcode module.
pub fn load_bitcode(dir: &Path, key: &str) -> Option<Vec<u8>> {
    let bc = load(dir, format!("{key}.bc"))?;
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
        tmp.write_all(&Sha256::digest(bytes))?;
        tmp.as_file().sync_all()?;
        tmp.persist(dir.join(name)).map_err(|e| e.error)?;
        Ok(())
    };
    let _ = write();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_entries_are_misses() {
        let dir = tempfile::tempdir().unwrap();
        store_ptx(dir.path(), "k", ".entry k {}");
        assert_eq!(load_ptx(dir.path(), "k").as_deref(), Some(".entry k {}"));
        let path = dir.path().join("k.ptx");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[2] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(load_ptx(dir.path(), "k"), None);
        std::fs::write(&path, b"BC").unwrap();
        assert_eq!(load_bitcode(dir.path(), "k"), None);
        assert_ne!(key(&["a", "b"]), key(&["ab"]));
    }
}
