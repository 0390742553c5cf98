//! Broadcasting as plain loops: the elementwise product of operands of different shapes,
//! its adjoint (summing over the broadcast dimensions), and global average pooling, which
//! is that sum scaled.
//!
//! The rule (see `broadcasts_to` in `crate::ir`): a rank-0 scalar broadcasts to any shape;
//! otherwise the ranks are equal and every size is the target's or 1.

use super::tensor::{Real, Tensor};

/// The flat index into a tensor of dims `small` that element `flat` of a tensor of dims
/// `dims` reads when `small` is broadcast to `dims`.
pub fn source_index(flat: usize, dims: &[u64], small: &[u64]) -> usize {
    if small.is_empty() {
        return 0;
    }
    let (mut rest, mut index, mut stride) = (flat, 0usize, 1usize);
    for (&d, &s) in dims.iter().zip(small).rev() {
        let coordinate = rest % d as usize;
        rest /= d as usize;
        if s != 1 {
            index += coordinate * stride;
        }
        stride *= s as usize;
    }
    index
}

/// `a * b` with both broadcast to `out`.
pub fn mul<T: Real>(a: &Tensor<T>, b: &Tensor<T>, out: &[u64]) -> Tensor<T> {
    let n = out.iter().product::<u64>() as usize;
    let data = (0..n)
        .map(|i| a.data[source_index(i, out, &a.dims)] * b.data[source_index(i, out, &b.dims)]);
    Tensor::new(out.to_vec(), data.collect())
}

/// The sum of `x` over the dimensions that `shape` broadcasts along (every element of `x`
/// added to the element of `shape` it was broadcast from).
pub fn sum_to<T: Real>(x: &Tensor<T>, shape: &[u64]) -> Tensor<T> {
    let mut out = Tensor::filled(shape.to_vec(), T::zero());
    for (i, &v) in x.data.iter().enumerate() {
        let o = source_index(i, &x.dims, shape);
        out.data[o] = out.data[o] + v;
    }
    out
}

/// The mean over the spatial dimensions of an NCHW tensor: `[N, C, 1, 1]`.
pub fn global_avg_pool2d<T: Real>(x: &Tensor<T>) -> Tensor<T> {
    let [n, c, h, w] = x.nchw();
    let sums = sum_to(x, &[n as u64, c as u64, 1, 1]);
    let count = T::of((h * w) as f64);
    Tensor::new(
        sums.dims,
        sums.data.into_iter().map(|s| s / count).collect(),
    )
}

/// The adjoint of [`global_avg_pool2d`]: each `dy[n, c]` divided by `h * w` over the plane
/// of size `input_size = [h, w]`.
pub fn global_avg_pool2d_grad<T: Real>(dy: &Tensor<T>, input_size: [u64; 2]) -> Tensor<T> {
    let dims = vec![dy.dims[0], dy.dims[1], input_size[0], input_size[1]];
    let n = dims.iter().product::<u64>() as usize;
    let count = T::of((input_size[0] * input_size[1]) as f64);
    let data = (0..n)
        .map(|i| dy.data[source_index(i, &dims, &dy.dims)] / count)
        .collect();
    Tensor::new(dims, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_index_follows_the_broadcast_dimensions() {
        // [2, 3, 2, 2] from [2, 3, 1, 1]: the plane index.
        let dims = [2, 3, 2, 2];
        let gate = [2, 3, 1, 1];
        let got: Vec<usize> = (0..24).map(|i| source_index(i, &dims, &gate)).collect();
        let want: Vec<usize> = (0..24).map(|i| i / 4).collect();
        assert_eq!(got, want);
        // [1, 2, 3] from [1, 1, 3]: the column; from a scalar: 0.
        assert_eq!(
            (0..6)
                .map(|i| source_index(i, &[1, 2, 3], &[1, 1, 3]))
                .collect::<Vec<_>>(),
            vec![0, 1, 2, 0, 1, 2]
        );
        assert_eq!(source_index(5, &[1, 2, 3], &[]), 0);
    }

    #[test]
    fn sum_to_is_the_adjoint_of_broadcasting() {
        let x = Tensor::new(vec![1, 2, 1, 3], vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(sum_to(&x, &[1, 1, 1, 3]).data, vec![5.0, 7.0, 9.0]);
        assert_eq!(sum_to(&x, &[1, 2, 1, 1]).data, vec![6.0, 15.0]);
        assert_eq!(sum_to(&x, &[]).data, vec![21.0]);
        let m = mul(&x, &Tensor::scalar(2.0), &[1, 2, 1, 3]);
        assert_eq!(m.data, vec![2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
    }
}
