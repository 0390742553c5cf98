//! `ptxas -v`: NVIDIA's PTX assembler checks a module and reports, per kernel, registers,
//! shared memory, stack frame and register spills; `nvdisasm` then shows the machine code
//! (SASS) it assembled, where tensor-core instructions (`HMMA`) and local-memory traffic
//! (`LDL`, `STL`) can be seen without a GPU.

use std::process::Command;

use crate::CodegenError;

/// What `ptxas -v` says about one kernel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PtxasKernel {
    pub name: String,
    pub registers: u32,
    pub shared_bytes: u64,
    pub stack_bytes: u64,
    pub spill_stores_bytes: u64,
    pub spill_loads_bytes: u64,
}

/// Assembles `ptx` for `sm` and returns ptxas's report of each kernel.
pub fn ptxas_report(ptx: &str, sm: &str) -> Result<Vec<PtxasKernel>, CodegenError> {
    let dir = temp_dir()?;
    assemble(ptx, sm, dir.path()).map(|(report, _)| report)
}

/// Assembles `ptx` for `sm` and returns ptxas's report of each kernel and the machine code
/// (SASS) as `nvdisasm -c` prints it.
pub fn ptxas_sass(ptx: &str, sm: &str) -> Result<(Vec<PtxasKernel>, String), CodegenError> {
    let dir = temp_dir()?;
    let (report, cubin) = assemble(ptx, sm, dir.path())?;
    let nvdisasm = crate::tools::find_nvdisasm()?;
    let out = Command::new(&nvdisasm)
        .arg("-c")
        .arg(&cubin)
        .output()
        .map_err(|e| {
            CodegenError::new(
                "nvdisasm",
                format!("cannot run `{}`: {e}", nvdisasm.display()),
            )
        })?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        return Err(CodegenError::new(format!("nvdisasm for {sm}"), text));
    }
    Ok((report, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn temp_dir() -> Result<tempfile::TempDir, CodegenError> {
    tempfile::tempdir()
        .map_err(|e| CodegenError::new("ptxas", format!("no temporary directory: {e}")))
}

/// `ptxas -v` of `ptx` into `dir/kernel.cubin`: the report and the cubin's path.
fn assemble(
    ptx: &str,
    sm: &str,
    dir: &std::path::Path,
) -> Result<(Vec<PtxasKernel>, std::path::PathBuf), CodegenError> {
    let ptxas = crate::tools::find_ptxas()?;
    let input = dir.join("kernel.ptx");
    let cubin = dir.join("kernel.cubin");
    std::fs::write(&input, ptx)
        .map_err(|e| CodegenError::new("ptxas", format!("cannot write the PTX: {e}")))?;
    let out = Command::new(&ptxas)
        .arg("-v")
        .arg("--gpu-name")
        .arg(sm)
        .arg("-o")
        .arg(&cubin)
        .arg(&input)
        .output()
        .map_err(|e| {
            CodegenError::new("ptxas", format!("cannot run `{}`: {e}", ptxas.display()))
        })?;
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(CodegenError::new(format!("ptxas for {sm}"), text));
    }
    Ok((parse_report(&text), cubin))
}

/// Reads the `ptxas info` lines of `ptxas -v`.
pub fn parse_report(text: &str) -> Vec<PtxasKernel> {
    let mut kernels: Vec<PtxasKernel> = Vec::new();
    let number_before = |line: &str, word: &str| -> Option<u64> {
        let at = line.find(word)?;
        line[..at].split_whitespace().last()?.parse().ok()
    };
    for line in text.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            kernels.push(PtxasKernel {
                name,
                ..Default::default()
            });
            continue;
        }
        let Some(k) = kernels.last_mut() else {
            continue;
        };
        if line.contains("bytes stack frame") {
            k.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
            k.spill_stores_bytes = number_before(line, "bytes spill stores").unwrap_or(0);
            k.spill_loads_bytes = number_before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("Used") && line.contains("registers") {
            k.registers = number_before(line, "registers").unwrap_or(0) as u32;
            k.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    kernels
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_ptxas_report() {
        let text = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'relu_1' for 'sm_80'\n\
            ptxas info    : Function properties for relu_1\n\
            \x20   8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
            ptxas info    : Used 40 registers, 8192 bytes smem, 368 bytes cmem[0]\n";
        let k = &super::parse_report(text)[0];
        assert_eq!(k.name, "relu_1");
        assert_eq!((k.registers, k.shared_bytes, k.stack_bytes), (40, 8192, 8));
        assert_eq!((k.spill_stores_bytes, k.spill_loads_bytes), (4, 12));
    }
}
