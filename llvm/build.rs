//! Hashes the sources that decide what a kernel compiles to (the kernel generators and MLIR
//! printers in rfnc-compiler, and this crate's pipelines) into `RFNC_CODEGEN_SOURCE_HASH`,
//! part of every cache key: a compiler whose code generation changed never reuses kernels
//! compiled by an older one.

use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = [root.join("src"), root.join("../compiler/src/codegen")];
    let mut files = Vec::new();
    let mut pending: Vec<std::path::PathBuf> = dirs.to_vec();
    while let Some(dir) = pending.pop() {
        println!("cargo:rerun-if-changed={}", dir.display());
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    pending.push(e.path());
                } else {
                    files.push(e.path());
                }
            }
        }
    }
    files.sort();
    // FNV-1a over the names and contents.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for b in name.as_bytes().iter().chain(&bytes) {
            h = (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    println!("cargo:rustc-env=RFNC_CODEGEN_SOURCE_HASH={h:016x}");
}
