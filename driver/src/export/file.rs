//! Writing the model: one protobuf file, or, when it would pass protobuf's 2 GiB limit (or
//! `--external-data` asks for it), the model plus `MODEL.data` beside it holding every
//! initializer of 1 KiB or more at 4096-byte aligned offsets (ONNX's external data,
//! which ONNX Runtime maps into memory and TensorRT reads). Both files are written
//! atomically, the data first.

use std::path::{Path, PathBuf};

use prost::Message;
use rfnc_bundle::atomic::write_atomically;

use super::proto::{entry, ModelProto, EXTERNAL};
use crate::error::{Error, Result};

/// The largest message protobuf readers accept: 2 GiB - 1 bytes.
const PROTOBUF_LIMIT: usize = i32::MAX as usize;
/// Smaller initializers stay in the model (as `onnx.save_model` does by default).
const EXTERNAL_MIN_BYTES: usize = 1024;
/// Offsets in the data file are multiples of this (a page), so readers can map it.
const ALIGN: usize = 4096;

/// What was written.
pub struct Written {
    pub model_bytes: u64,
    /// The external data file and its size.
    pub data: Option<(PathBuf, u64)>,
}

/// Writes `model` to `path`, with external data when needed or `force_external`.
pub fn write(mut model: ModelProto, path: &Path, force_external: bool) -> Result<Written> {
    let external = force_external || model.encoded_len() > PROTOBUF_LIMIT;
    let mut data_file = None;
    if external {
        let (name, bytes) = externalise(&mut model, path)?;
        let data_path = path.with_file_name(&name);
        write_atomically(&data_path, &bytes).map_err(|e| cannot_write(&data_path, e))?;
        data_file = Some((data_path, bytes.len() as u64));
    }
    if model.encoded_len() > PROTOBUF_LIMIT {
        return Err(Error::message(format!(
            "the model's graph alone is {} bytes, more than protobuf's limit of 2 GiB",
            model.encoded_len()
        )));
    }
    let bytes = model.encode_to_vec();
    write_atomically(path, &bytes).map_err(|e| cannot_write(path, e))?;
    Ok(Written {
        model_bytes: bytes.len() as u64,
        data: data_file,
    })
}

/// Moves the data of every initializer of at least [`EXTERNAL_MIN_BYTES`] into one
/// buffer; returns the data file's name (relative to the model, as ONNX requires) and it.
fn externalise(model: &mut ModelProto, path: &Path) -> Result<(String, Vec<u8>)> {
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::message(format!("`{}` is not a file name", path.display())))?;
    let name = format!("{}.data", file_name.to_string_lossy());
    let mut data = Vec::new();
    let graph = model.graph.as_mut().expect("the model has a graph");
    for t in graph
        .initializer
        .iter_mut()
        .filter(|t| t.raw_data.len() >= EXTERNAL_MIN_BYTES)
    {
        data.resize(data.len().div_ceil(ALIGN) * ALIGN, 0);
        let offset = data.len();
        data.extend_from_slice(&t.raw_data);
        t.external_data = vec![
            entry("location", name.clone()),
            entry("offset", offset.to_string()),
            entry("length", t.raw_data.len().to_string()),
        ];
        t.data_location = EXTERNAL;
        t.raw_data = Vec::new();
    }
    Ok((name, data))
}

fn cannot_write(path: &Path, e: std::io::Error) -> Error {
    Error::message(format!("cannot write `{}`: {e}", path.display()))
}
