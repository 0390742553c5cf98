//! Finding NVIDIA's tools: `libdevice.10.bc` (math functions for kernels) and `ptxas` (the
//! PTX assembler behind `--ptx-report`).
//!
//! Each is looked up, in order: its variable (`RFNC_LIBDEVICE`, `RFNC_PTXAS`; an empty
//! `RFNC_LIBDEVICE` means "no libdevice"), then where `scripts/setup.sh` puts it (the
//! `nvidia-cuda-nvcc-cu12` wheel under `.cache/cuda-nvcc/` of the checkout this binary was
//! built from, or of a checkout above the running executable), then a CUDA toolkit
//! (`/usr/local/cuda`) and, for `ptxas`, the PATH. So a release binary run directly, without
//! `.cache/env.sh`, finds what the set-up installed.

use std::path::{Path, PathBuf};

/// Where the set-up unpacks the wheel, relative to a checkout.
const WHEEL: &str = ".cache/cuda-nvcc/nvidia/cuda_nvcc";
const LIBDEVICE_IN_WHEEL: &str = "nvvm/libdevice/libdevice.10.bc";
const PTXAS_IN_WHEEL: &str = "bin/ptxas";
const CUDA_TOOLKIT: &str = "/usr/local/cuda";

/// Checkouts that may hold the set-up's tools: the one this crate was built in, then every
/// directory above the running executable (`target/release/rfnc` lies in its checkout).
fn checkouts() -> Vec<PathBuf> {
    let mut roots = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("..")];
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots
}

/// The first existing file among `relative` under each checkout's wheel, then `fallback`.
fn installed(relative: &str, fallback: &str) -> Option<PathBuf> {
    checkouts()
        .into_iter()
        .map(|root| root.join(WHEEL).join(relative))
        .chain([Path::new(CUDA_TOOLKIT).join(fallback)])
        .find(|p| p.is_file())
}

/// `libdevice.10.bc`: `$RFNC_LIBDEVICE` (empty: none), else the set-up's, else the CUDA
/// toolkit's. `None` when there is none; kernels that need it then fail with a message.
pub fn find_libdevice() -> Option<PathBuf> {
    match std::env::var_os("RFNC_LIBDEVICE") {
        Some(p) if p.is_empty() => None,
        Some(p) => Some(PathBuf::from(p)),
        None => installed(LIBDEVICE_IN_WHEEL, "nvvm/libdevice/libdevice.10.bc"),
    }
}

/// `ptxas`: `$RFNC_PTXAS`, else the set-up's, else the CUDA toolkit's, else the PATH.
pub fn find_ptxas() -> Result<PathBuf, crate::CodegenError> {
    let error = |message: String| crate::CodegenError::new("ptxas", message);
    if let Some(p) = std::env::var_os("RFNC_PTXAS").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(error(format!(
            "RFNC_PTXAS is `{}`, which is not a file",
            p.display()
        )));
    }
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("ptxas"))
                .find(|p| p.is_file())
        })
    };
    installed(PTXAS_IN_WHEEL, "bin/ptxas")
        .or_else(on_path)
        .ok_or_else(|| {
            error(
                "ptxas not found: set RFNC_PTXAS or put ptxas on the PATH (scripts/setup.sh \
                 installs it from the nvidia-cuda-nvcc-cu12 wheel into .cache/cuda-nvcc)"
                    .to_string(),
            )
        })
}
