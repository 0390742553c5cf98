//! Tensor types: an element type and a static shape.

use std::fmt;

/// Element type of a tensor (defined with the bundle format, which records it).
pub use rfnc_bundle::DType;

/// A ranked tensor type with static dimensions, printed as MLIR's `tensor<1x3x64x64xf32>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub dims: Vec<u64>,
}

impl TensorType {
    pub fn new(dtype: DType, dims: impl Into<Vec<u64>>) -> Self {
        TensorType {
            dtype,
            dims: dims.into(),
        }
    }

    pub fn f32(dims: impl Into<Vec<u64>>) -> Self {
        Self::new(DType::F32, dims)
    }

    pub fn scalar_f32() -> Self {
        Self::new(DType::F32, Vec::new())
    }

    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    pub fn bytes(&self) -> u64 {
        self.elements() * self.dtype.bytes()
    }

    /// Shape as `[1, 3, 64, 64]`, for error messages.
    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        format!("{}[{}]", self.dtype.name(), dims.join(", "))
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tensor<")?;
        for d in &self.dims {
            write!(f, "{d}x")?;
        }
        write!(f, "{}>", self.dtype.name())
    }
}
