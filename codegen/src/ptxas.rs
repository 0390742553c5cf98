//! `ptxas` as a checker: assembles PTX for an architecture and reports each kernel's
//! registers, shared memory, stack and spills.
//!
//! Invariants: the tool is `$RFNC_PTXAS` if set, else `ptxas` on `PATH`; a missing tool
//! or a failing assembly is a [`CodegenError`] carrying ptxas's own message; the report
//! lists every `.entry` of the PTX, in the order ptxas compiled them.

use std::path::PathBuf;
use std::process::Command;

use crate::error::{CodegenError, Stage};

/// Resource usage of one kernel, as `ptxas -v` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PtxasKernel {
    /// The entry's name.
    pub name: String,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory in bytes.
    pub shared_bytes: u64,
    /// Stack frame in bytes (local memory).
    pub stack_bytes: u64,
    /// Bytes of spill stores.
    pub spill_stores_bytes: u64,
    /// Bytes of spill loads.
    pub spill_loads_bytes: u64,
}

const HOW_TO_GET: &str = "set RFNC_PTXAS to a ptxas binary or put `ptxas` on PATH \
     (scripts/setup.sh installs one from the PyPI wheel nvidia-cuda-nvcc-cu12 into .cache/ \
     and writes RFNC_PTXAS to .cache/env.sh)";

/// The `ptxas` to use: `$RFNC_PTXAS`, else `ptxas` found on `PATH`.
pub fn find_ptxas() -> Result<PathBuf, CodegenError> {
    if let Some(p) = std::env::var_os("RFNC_PTXAS").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(CodegenError::new(
            Stage::Ptxas,
            format!(
                "RFNC_PTXAS is `{}`, which is not a file; {HOW_TO_GET}",
                p.display()
            ),
        ));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("ptxas");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(CodegenError::new(
        Stage::Ptxas,
        format!("ptxas not found; {HOW_TO_GET}"),
    ))
}

/// Assembles `ptx` for `sm` (e.g. `sm_80`) with `ptxas -v` and returns its report.
pub fn ptxas_report(ptx: &str, sm: &str) -> Result<Vec<PtxasKernel>, CodegenError> {
    let ptxas = find_ptxas()?;
    let dir = tempfile::tempdir()
        .map_err(|e| CodegenError::new(Stage::Ptxas, format!("temporary directory: {e}")))?;
    let input = dir.path().join("kernel.ptx");
    let output = dir.path().join("kernel.cubin");
    std::fs::write(&input, ptx).map_err(|e| {
        CodegenError::new(Stage::Ptxas, format!("writing {}: {e}", input.display()))
    })?;
    let out = Command::new(&ptxas)
        .arg("-v")
        .arg("--gpu-name")
        .arg(sm)
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .output()
        .map_err(|e| {
            CodegenError::new(
                Stage::Ptxas,
                format!("cannot run {}: {e}; {HOW_TO_GET}", ptxas.display()),
            )
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(CodegenError::new(
            Stage::Ptxas,
            format!(
                "{} --gpu-name {sm} failed ({}):\n{}{}",
                ptxas.display(),
                out.status,
                stderr.trim_end(),
                String::from_utf8_lossy(&out.stdout).trim_end()
            ),
        ));
    }
    Ok(parse_report(&stderr))
}

/// Parses the `ptxas info` lines of `ptxas -v`.
pub fn parse_report(text: &str) -> Vec<PtxasKernel> {
    let mut kernels: Vec<PtxasKernel> = Vec::new();
    // The function the following "Function properties" / "Used" lines are about, and
    // whether it is an entry (device functions are reported too and skipped).
    let mut current: Option<usize> = None;
    let mut props_for: Option<usize> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            kernels.push(PtxasKernel {
                name,
                ..PtxasKernel::default()
            });
            current = Some(kernels.len() - 1);
        } else if line.contains("Compiling function '") {
            current = None;
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            let name = rest.trim();
            props_for = kernels.iter().position(|k| k.name == name);
        } else if line.contains("bytes stack frame") {
            if let Some(i) = props_for.take() {
                let k = &mut kernels[i];
                k.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
                k.spill_stores_bytes = number_before(line, "bytes spill stores").unwrap_or(0);
                k.spill_loads_bytes = number_before(line, "bytes spill loads").unwrap_or(0);
            }
        } else if line.contains("Used ") && line.contains("registers") {
            if let Some(i) = current {
                let k = &mut kernels[i];
                k.registers = number_before(line, "registers").unwrap_or(0) as u32;
                k.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    kernels
}

/// The integer just before `label` in `line` (`"..., 12 bytes smem"` -> 12).
fn number_before(line: &str, label: &str) -> Option<u64> {
    let head = &line[..line.find(label)?];
    head.split(|c: char| c.is_whitespace() || c == ',')
        .rfind(|w| !w.is_empty())?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_v() {
        let text = "ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'relu_1' for 'sm_80'
ptxas info    : Function properties for relu_1
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 10 registers, 368 bytes cmem[0], 1024 bytes smem
ptxas info    : Compiling entry function 'k2' for 'sm_80'
ptxas info    : Function properties for k2
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 255 registers, 360 bytes cmem[0]
";
        let r = parse_report(text);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            PtxasKernel {
                name: "relu_1".into(),
                registers: 10,
                shared_bytes: 1024,
                stack_bytes: 8,
                spill_stores_bytes: 4,
                spill_loads_bytes: 12
            }
        );
        assert_eq!(r[1].registers, 255);
        assert_eq!(r[1].shared_bytes, 0);
    }
}
