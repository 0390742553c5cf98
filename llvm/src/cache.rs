//! The compiled-kernel cache: PTX and host bitcode stored under a hash of everything that
//! determines them: this crate's version and a hash of the code-generation sources
//! (build.rs), the LLVM version, the GPU, the libdevice file, and the kernel's name, which
//! holds a hash of its whole kernel IR (so the MLIR need not even be printed to look a
//! kernel up).
//!
//! Entries are checksummed and written atomically ([`rfnc_bundle::cache`]): a damaged one
//! is a miss and is rebuilt.

use std::path::Path;

pub use rfnc_bundle::cache::default_cache_dir;
use rfnc_bundle::cache::{load, store};

/// A cache key: the hash of the parts, with this compiler's version, its code-generation
/// sources and the LLVM it links.
pub fn key(parts: &[&str]) -> String {
    let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    key_bytes(&parts)
}

/// [`key`] of binary parts.
pub fn key_bytes(parts: &[&[u8]]) -> String {
    let (major, minor, patch) = inkwell::support::get_llvm_version();
    let llvm = format!("llvm-{major}.{minor}.{patch}");
    let version = [
        env!("CARGO_PKG_VERSION"),
        env!("RFNC_CODEGEN_SOURCE_HASH"),
        llvm.as_str(),
    ];
    let all: Vec<&[u8]> = version
        .iter()
        .map(|p| p.as_bytes())
        .chain(parts.iter().copied())
        .collect();
    rfnc_bundle::cache::key(&all)
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

/// A cached PTX module.
pub fn load_ptx(dir: &Path, key: &str) -> Option<String> {
    let ptx = String::from_utf8(load(dir, &format!("{key}.ptx"))?).ok()?;
    ptx.contains(".entry").then_some(ptx)
}

/// A cached bitcode module.
pub fn load_bitcode(dir: &Path, key: &str) -> Option<Vec<u8>> {
    let bc = load(dir, &format!("{key}.bc"))?;
    bc.starts_with(b"BC").then_some(bc)
}

pub fn store_ptx(dir: &Path, key: &str, ptx: &str) {
    store(dir, &format!("{key}.ptx"), ptx.as_bytes());
}

pub fn store_bitcode(dir: &Path, key: &str, bc: &[u8]) {
    store(dir, &format!("{key}.bc"), bc);
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
