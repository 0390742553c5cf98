//! Reading a bundle directory: `bundle.json` parsed and validated, every kernel's PTX file
//! checked to exist. Nothing is compiled or allocated here.

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

    /// The PTX file of a kernel, `DIR/<kernel.ptx>`.
    pub fn ptx_path(&self, kernel: &str) -> Option<PathBuf> {
        self.bundle
            .kernels
            .iter()
            .find(|k| k.name == kernel)
            .map(|k| self.dir.join(&k.ptx))
    }
}

/// Reads and checks `dir/bundle.json` and checks that every kernel's PTX file exists.
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
        let ptx = dir.join(&kernel.ptx);
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
    Ok(LoadedBundle {
        dir: dir.to_path_buf(),
        bundle,
    })
}
