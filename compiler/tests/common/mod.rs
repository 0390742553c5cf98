//! The LLVM 22 tools the kernel tests run (`mlir-opt`, `mlir-translate`, `opt`, `llc`):
//! looked up in the variable the set-up writes, the Debian location, then the PATH. The
//! set-up installs them, so a missing one fails the test (never a silent pass). And the
//! NaN-safe difference the numeric tests compare with.

#![allow(dead_code)] // each test file uses part of it

use std::path::{Path, PathBuf};
use std::process::Command;

/// `NAME-22` (e.g. `mlir-opt`): `$VAR` when given, `/usr/lib/llvm-22/bin/NAME`, then
/// `NAME-22` on the PATH.
pub fn llvm_tool(name: &str, var: Option<&str>) -> PathBuf {
    let versioned = format!("{name}-22");
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(&versioned))
            .find(|p| p.is_file())
    });
    let candidates = [
        var.and_then(std::env::var_os).map(PathBuf::from),
        Some(PathBuf::from(format!("/usr/lib/llvm-22/bin/{name}"))),
        on_path,
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{versioned} not found: run scripts/setup.sh (./dev test does)"))
}

pub fn mlir_opt() -> PathBuf {
    llvm_tool("mlir-opt", Some("RFNC_MLIR_OPT"))
}

/// Runs `tool ARGS`; fails the test with its diagnostics, naming `what`, unless it succeeds.
/// Returns its standard output.
pub fn run_tool(tool: &Path, args: &[&str], what: &str) -> String {
    let out = Command::new(tool).args(args).output().expect("tool runs");
    assert!(
        out.status.success(),
        "{what}: {} {args:?} failed:\n{}",
        tool.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The largest `|a - b|` over the pairs; infinite where one side holds a NaN or infinity
/// the other does not (`f64::max` would skip a NaN and let it pass).
pub fn max_abs_diff(pairs: impl IntoIterator<Item = (f64, f64)>) -> f64 {
    pairs.into_iter().fold(0.0f64, |m, (a, b)| {
        let same = a == b || (a.is_nan() && b.is_nan());
        match (a - b).abs() {
            _ if same => m,
            d if d.is_nan() => f64::INFINITY,
            d => m.max(d),
        }
    })
}
