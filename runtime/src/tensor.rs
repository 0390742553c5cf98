//! Host tensors: what the caller reads back from a session (outputs, leaves).

use rfnc_bundle::DType;

/// Row-major element data of one dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

/// A tensor on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub data: TensorData,
}

impl HostTensor {
    /// Decodes little-endian bytes of `dtype`.
    pub(crate) fn from_bytes(dtype: DType, shape: Vec<u64>, bytes: &[u8]) -> HostTensor {
        let words = bytes.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
        let data = match dtype {
            DType::F32 => TensorData::F32(words.map(f32::from_le_bytes).collect()),
            DType::I32 => TensorData::I32(words.map(i32::from_le_bytes).collect()),
        };
        HostTensor { dtype, shape, data }
    }

    /// The f32 data, if the tensor is f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            TensorData::I32(_) => None,
        }
    }

    /// The i32 data, if the tensor is i32.
    pub fn as_i32(&self) -> Option<&[i32]> {
        match &self.data {
            TensorData::I32(v) => Some(v),
            TensorData::F32(_) => None,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len(),
            TensorData::I32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
