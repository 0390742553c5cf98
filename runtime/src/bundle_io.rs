//! Reading a bundle directory: `bundle.json` parsed and validated, every kernel's PTX file
//! and the host code checked to exist where the bundle says it has them. Nothing is compiled
//! or allocated here.

use std::path::{Path, PathBuf};

use rfnc_bundle::Bundle;

use crate::error::RuntimeError;

/// A bundle read from disk: its plan and where its files are.
#[derive(Clone, Debug)]
pub struct LoadedBundle {
    /// The bundle directory.
    pub dir: PathBuf,
    pub bundle: Bundle,
}

impl LoadedBundle {
    /// `DIR/host.bc`: the kernels compiled for the host.
    pub fn host_bitcode(&self) -> PathBuf {
        self.dir.join("host.bc")
    }

    /// Refuses a device whose code the bundle does not hold (a bundle compiled by `rfnc run
    /// FILE` for the other device).
    pub fn require_code(&self, gpu: bool) -> Result<(), RuntimeError> {
        let (has, what, device) = match gpu {
            true => (self.bundle.gpu_target.is_some(), "PTX", "a GPU"),
            false => (self.bundle.host_code, "host code", "the CPU"),
        };
        if has {
            return Ok(());
        }
        Err(RuntimeError::Bundle {
            path: self.dir.join("bundle.json"),
            message: format!(
                "it holds no {what}, so it cannot run on {device}; compile it with `rfnc compile FILE -o DIR`, which writes both"
            ),
        })
    }
}

/// Reads and checks `dir/bundle.json` and checks that every kernel's PTX file and the host
/// code exist where the bundle has them.
pub fn load_bundle(dir: &Path) -> Result<LoadedBundle, RuntimeError> {
    let path = dir.join("bundle.json");
    let text = std::fs::read_to_string(&path).map_err(|e| RuntimeError::File {
        path: path.clone(),
        message: if e.kind() == std::io::ErrorKind::NotFound {
            "no such file: is this a bundle directory written by `rfnc compile -o DIR`?".to_string()
        } else {
            e.to_string()
        },
    })?;
    let bundle: Bundle = serde_json::from_str(&text).map_err(|e| RuntimeError::Bundle {
        path: path.clone(),
        message: format!("invalid JSON: {e}"),
    })?;
    bundle.validate().map_err(|message| RuntimeError::Bundle {
        path: path.clone(),
        message,
    })?;
    for kernel in &bundle.kernels {
        let Some(ptx) = &kernel.ptx else { continue };
        let ptx = dir.join(ptx);
        if !ptx.is_file() {
            return Err(RuntimeError::File {
                path: ptx,
                message: format!(
                    "the PTX of kernel `{}` is missing; the bundle is incomplete, recompile it",
                    kernel.name
                ),
            });
        }
    }
    let host = dir.join("host.bc");
    if bundle.host_code && !host.is_file() {
        return Err(RuntimeError::File {
            path: host,
            message: "the host code is missing; the bundle is incomplete, recompile it".into(),
        });
    }
    Ok(LoadedBundle {
        dir: dir.to_path_buf(),
        bundle,
    })
}
