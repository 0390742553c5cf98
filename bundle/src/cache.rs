//! The on-disk cache that compiler and runtime share: where it is, and entries written so
//! that a reader sees a whole entry or none. The compiler keeps compiled kernels there, the
//! runtime the host code it compiled for this CPU.
//!
//! Invariants: an entry is its bytes followed by their SHA-256, written to a temporary file,
//! flushed to disk and renamed; an entry whose checksum does not match (a crash, a disk
//! error, an edit) reads as missing, so it is rebuilt.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// `$RFNC_CACHE_DIR`, else `$XDG_CACHE_HOME/rfnc`, else `$HOME/.cache/rfnc`; `None` when
/// none is set (an empty variable counts as unset).
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

/// SHA-256 of `parts`, each followed by a 0 byte, as hex: a cache key.
pub fn key(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part);
        h.update([0u8]);
    }
    hex(&h.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of entry `name` in `dir` when its checksum matches.
pub fn load(dir: &Path, name: &str) -> Option<Vec<u8>> {
    let mut bytes = std::fs::read(dir.join(name)).ok()?;
    let split = bytes.len().checked_sub(32)?;
    let sum = Sha256::digest(&bytes[..split]);
    (sum.as_slice() == &bytes[split..]).then(|| {
        bytes.truncate(split);
        bytes
    })
}

/// Stores entry `name`; failures only cost a recompilation later, so they are ignored.
pub fn store(dir: &Path, name: &str, bytes: &[u8]) {
    let write = || -> std::io::Result<()> {
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
        store(dir.path(), "k.bin", b"payload");
        assert_eq!(load(dir.path(), "k.bin").as_deref(), Some(&b"payload"[..]));
        let path = dir.path().join("k.bin");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[2] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(load(dir.path(), "k.bin"), None);
        assert_eq!(load(dir.path(), "missing"), None);
        assert_ne!(key(&[b"a", b"b"]), key(&[b"ab"]));
    }
}
