//! Dense row-major tensors for the reference interpreter, generic over f32 and f64.

use num_traits::Float;

/// The element types the interpreter computes in.
pub trait Real: Float + std::fmt::Debug + std::iter::Sum + Send + Sync + 'static {
    fn of(v: f64) -> Self;
    fn f64(self) -> f64;
}

impl Real for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    fn of(v: f64) -> Self {
        v
    }
    fn f64(self) -> f64 {
        self
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T> {
    pub dims: Vec<u64>,
    pub data: Vec<T>,
}

impl<T: Copy> Tensor<T> {
    pub fn new(dims: Vec<u64>, data: Vec<T>) -> Self {
        assert_eq!(
            dims.iter().product::<u64>() as usize,
            data.len(),
            "tensor data matches its shape"
        );
        Tensor { dims, data }
    }

    pub fn filled(dims: Vec<u64>, value: T) -> Self {
        let n = dims.iter().product::<u64>() as usize;
        Tensor {
            dims,
            data: vec![value; n],
        }
    }

    pub fn scalar(value: T) -> Self {
        Tensor {
            dims: Vec::new(),
            data: vec![value],
        }
    }

    /// Dimensions of a rank-4 tensor as usizes.
    pub fn nchw(&self) -> [usize; 4] {
        [
            self.dims[0] as usize,
            self.dims[1] as usize,
            self.dims[2] as usize,
            self.dims[3] as usize,
        ]
    }
}

/// A value during interpretation: real (f32 in the IR) or integer (labels, step counter).
#[derive(Clone, Debug, PartialEq)]
pub enum Value<T> {
    Real(Tensor<T>),
    Int(Tensor<i32>),
}

impl<T: Copy> Value<T> {
    pub fn dims(&self) -> &[u64] {
        match self {
            Value::Real(t) => &t.dims,
            Value::Int(t) => &t.dims,
        }
    }

    pub fn real(&self) -> &Tensor<T> {
        match self {
            Value::Real(t) => t,
            Value::Int(_) => panic!("verified graphs give real operands here"),
        }
    }

    pub fn int(&self) -> &Tensor<i32> {
        match self {
            Value::Int(t) => t,
            Value::Real(_) => panic!("verified graphs give integer operands here"),
        }
    }
}
