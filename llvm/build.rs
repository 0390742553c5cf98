//! Hashes this crate's sources (its MLIR and LLVM drivers) into `RFNC_CODEGEN_SOURCE_HASH`,
//! part of every cache key: a compiler whose code generation changed never reuses kernels
//! compiled by an older one. The kernel generators (and the pass pipelines, which live beside
//! the MLIR printers) are hashed by their own crate
//! (rfnc-compiler's build.rs), whose hash the caller passes in `CompileOptions::generator`.

include!("../scripts/source_hash.rs");

fn main() {
    emit_source_hash(&["src"]);
}
