//! Shape inference: the result type of every op from its operand types and attributes.
//!
//! Invariant: `infer` is total over well-formed inputs and returns a [`ShapeError`] naming
//! the offending operand for everything else; it never panics. Elaboration calls it as each
//! op is built (so errors point at `.rfn` source), and the verifier calls it again to check
//! that every recorded type is the inferred one.

use super::{DType, Op, TensorType};

/// Why an op's operands do not fit together.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapeError {
    pub message: String,
    /// Operand indices the message is about, for pointing at where they came from.
    pub operands: Vec<usize>,
}

impl ShapeError {
    fn new(message: impl Into<String>, operands: impl Into<Vec<usize>>) -> Self {
        ShapeError {
            message: message.into(),
            operands: operands.into(),
        }
    }
}

fn expect_rank(
    op: &str,
    what: &str,
    ty: &TensorType,
    rank: usize,
    i: usize,
) -> Result<(), ShapeError> {
    if ty.rank() != rank {
        return Err(ShapeError::new(
            format!(
                "{op} expects {what} of rank {rank}, found {}",
                ty.shape_string()
            ),
            [i],
        ));
    }
    Ok(())
}

fn expect_dtype(
    op: &str,
    what: &str,
    ty: &TensorType,
    dtype: DType,
    i: usize,
) -> Result<(), ShapeError> {
    if ty.dtype != dtype {
        return Err(ShapeError::new(
            format!(
                "{op} expects {what} of element type {}, found {}",
                dtype.name(),
                ty.shape_string()
            ),
            [i],
        ));
    }
    Ok(())
}

/// Output extent of a sliding window: `floor((in + pads - dilation*(k-1) - 1) / stride) + 1`.
pub fn window_out(
    input: u64,
    pad_lo: u64,
    pad_hi: u64,
    kernel: u64,
    stride: u64,
    dilation: u64,
) -> Option<u64> {
    let span = dilation
        .checked_mul(kernel.checked_sub(1)?)?
        .checked_add(1)?;
    let padded = input.checked_add(pad_lo)?.checked_add(pad_hi)?;
    if stride == 0 || padded < span {
        return None;
    }
    Some((padded - span) / stride + 1)
}

/// Infers the result type of `op` applied to operands of types `inputs`.
pub fn infer(op: &Op, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let name = op.mnemonic();
    let (lo, hi) = op.arity();
    if inputs.len() < lo || inputs.len() > hi {
        return Err(ShapeError::new(
            format!("{name} takes {}, found {}", op.arity_text(), inputs.len()),
            Vec::new(),
        ));
    }
    match op {
        Op::Constant { .. } => Ok(TensorType::scalar_f32()),
        Op::Input { .. } | Op::Param { .. } => Err(ShapeError::new(
            format!("the type of {name} is declared, not inferred"),
            Vec::new(),
        )),
        Op::Conv2d {
            stride,
            pad,
            dilation,
            groups,
        } => {
            let (x, w) = (inputs[0], inputs[1]);
            expect_rank(name, "an input", x, 4, 0)?;
            expect_rank(name, "a weight", w, 4, 1)?;
            expect_dtype(name, "an input", x, DType::F32, 0)?;
            expect_dtype(name, "a weight", w, DType::F32, 1)?;
            let (cin, cout) = (x.dims[1], w.dims[0]);
            if *groups == 0 || cout % groups != 0 || w.dims[1] * groups != cin {
                return Err(ShapeError::new(
                    format!(
                        "{name}: input has {cin} channels but the weight {} with groups = {groups} expects {}",
                        w.shape_string(),
                        w.dims[1] * groups
                    ),
                    [0, 1],
                ));
            }
            if let Some(b) = inputs.get(2) {
                expect_dtype(name, "a bias", b, DType::F32, 2)?;
                if b.dims != [cout] {
                    return Err(ShapeError::new(
                        format!(
                            "{name}: bias {} does not match {cout} output channels",
                            b.shape_string()
                        ),
                        [1, 2],
                    ));
                }
            }
            let mut out = vec![x.dims[0], cout, 0, 0];
            for a in 0..2 {
                out[2 + a] = window_out(x.dims[2 + a], pad[a], pad[2 + a], w.dims[2 + a], stride[a], dilation[a])
                    .filter(|&v| v > 0)
                    .ok_or_else(|| {
                        ShapeError::new(
                            format!(
                                "{name}: a {}x{} kernel (dilation {:?}) does not fit the input {} with padding {:?}",
                                w.dims[2], w.dims[3], dilation, x.shape_string(), pad
                            ),
                            [0, 1],
                        )
                    })?;
            }
            Ok(TensorType::f32(out))
        }
        Op::BatchNorm { eps } => {
            let x = inputs[0];
            expect_rank(name, "an input", x, 4, 0)?;
            expect_dtype(name, "an input", x, DType::F32, 0)?;
            if eps.is_nan() || *eps <= 0.0 {
                return Err(ShapeError::new(
                    format!("{name}: eps must be positive, found {eps}"),
                    Vec::new(),
                ));
            }
            for (i, p) in inputs.iter().enumerate().skip(1) {
                if p.dims != [x.dims[1]] || p.dtype != DType::F32 {
                    return Err(ShapeError::new(
                        format!(
                            "{name}: statistic {} does not match the input's {} channels",
                            p.shape_string(),
                            x.dims[1]
                        ),
                        [0, i],
                    ));
                }
            }
            Ok(x.clone())
        }
        Op::Relu => {
            expect_dtype(name, "an input", inputs[0], DType::F32, 0)?;
            Ok(inputs[0].clone())
        }
        Op::Dropout { rate, .. } => {
            expect_dtype(name, "an input", inputs[0], DType::F32, 0)?;
            if let Some(step) = inputs.get(1) {
                expect_rank(name, "a step counter", step, 0, 1)?;
                expect_dtype(name, "a step counter", step, DType::I32, 1)?;
            }
            if !(0.0..1.0).contains(rate) {
                return Err(ShapeError::new(
                    format!("{name}: rate must be in [0, 1), found {rate}"),
                    Vec::new(),
                ));
            }
            Ok(inputs[0].clone())
        }
        Op::Add => {
            let (a, b) = (inputs[0], inputs[1]);
            if a != b {
                return Err(ShapeError::new(
                    format!(
                        "cannot add {} and {}: shapes must be equal",
                        a.shape_string(),
                        b.shape_string()
                    ),
                    [0, 1],
                ));
            }
            expect_dtype(name, "operands", a, DType::F32, 0)?;
            Ok(a.clone())
        }
        Op::MaxPool2d {
            kernel,
            stride,
            pad,
        }
        | Op::AvgPool2d {
            kernel,
            stride,
            pad,
            ..
        } => pool_type(name, inputs[0], *kernel, *stride, *pad),
        Op::Concat => concat_type(name, inputs),
        Op::Mul => broadcast_type(inputs[0], inputs[1]),
        Op::Sigmoid => {
            expect_dtype(name, "an input", inputs[0], DType::F32, 0)?;
            Ok(inputs[0].clone())
        }
        Op::GlobalAvgPool2d => {
            let x = inputs[0];
            expect_rank(name, "an input", x, 4, 0)?;
            expect_dtype(name, "an input", x, DType::F32, 0)?;
            Ok(TensorType::f32([x.dims[0], x.dims[1], 1, 1]))
        }
        Op::SliceChannels { start, size } => slice_channels_type(name, inputs[0], *start, *size),
        Op::SumTo { shape } => sum_to_type(name, inputs[0], shape),
        Op::SigmoidGrad => same_shapes(name, inputs),
        Op::AvgPool2dGrad {
            kernel,
            stride,
            pad,
            count_include_pad,
            input_size,
        } => {
            let dy = inputs[0];
            expect_rank(name, "a gradient", dy, 4, 0)?;
            let x = TensorType::f32([dy.dims[0], dy.dims[1], input_size[0], input_size[1]]);
            let forward = Op::AvgPool2d {
                kernel: *kernel,
                stride: *stride,
                pad: *pad,
                count_include_pad: *count_include_pad,
            };
            same_as_forward(name, &forward, &[&x], dy)?;
            Ok(x)
        }
        Op::GlobalAvgPool2dGrad { input_size } => {
            let dy = inputs[0];
            expect_rank(name, "a gradient", dy, 4, 0)?;
            if input_size.contains(&0) {
                return Err(ShapeError::new(
                    format!("{name}: input size {input_size:?} is empty"),
                    Vec::new(),
                ));
            }
            let x = TensorType::f32([dy.dims[0], dy.dims[1], input_size[0], input_size[1]]);
            same_as_forward(name, &Op::GlobalAvgPool2d, &[&x], dy)?;
            Ok(x)
        }
        Op::ResizeBilinear { size, .. } => {
            let x = inputs[0];
            expect_rank(name, "an input", x, 4, 0)?;
            expect_dtype(name, "an input", x, DType::F32, 0)?;
            if size.contains(&0) {
                return Err(ShapeError::new(
                    format!("{name}: target size {size:?} is empty"),
                    Vec::new(),
                ));
            }
            Ok(TensorType::f32([x.dims[0], x.dims[1], size[0], size[1]]))
        }
        Op::SoftmaxCrossEntropy { .. } => {
            let (logits, labels) = (inputs[0], inputs[1]);
            expect_rank(name, "scores", logits, 4, 0)?;
            expect_dtype(name, "scores", logits, DType::F32, 0)?;
            expect_rank(name, "labels", labels, 3, 1)?;
            expect_dtype(name, "labels", labels, DType::I32, 1)?;
            let want = [logits.dims[0], logits.dims[2], logits.dims[3]];
            if labels.dims != want {
                return Err(ShapeError::new(
                    format!(
                        "{name}: scores {} need labels of shape [{}, {}, {}], found {}",
                        logits.shape_string(),
                        want[0],
                        want[1],
                        want[2],
                        labels.shape_string()
                    ),
                    [0, 1],
                ));
            }
            Ok(TensorType::scalar_f32())
        }
        Op::LeastSquares { .. } => {
            let (pred, target) = (inputs[0], inputs[1]);
            expect_dtype(name, "a prediction", pred, DType::F32, 0)?;
            expect_dtype(name, "a target", target, DType::F32, 1)?;
            if pred.dims != target.dims {
                return Err(ShapeError::new(
                    format!(
                        "{name}: prediction {} and target {} must have the same shape",
                        pred.shape_string(),
                        target.shape_string()
                    ),
                    [0, 1],
                ));
            }
            Ok(TensorType::scalar_f32())
        }
        Op::Conv2dGradInput {
            stride,
            pad,
            dilation,
            groups,
            input_size,
        } => {
            let (dy, w) = (inputs[0], inputs[1]);
            expect_rank(name, "an output gradient", dy, 4, 0)?;
            expect_rank(name, "a weight", w, 4, 1)?;
            let x = TensorType::f32([dy.dims[0], w.dims[1] * groups, input_size[0], input_size[1]]);
            let forward = Op::Conv2d {
                stride: *stride,
                pad: *pad,
                dilation: *dilation,
                groups: *groups,
            };
            same_as_forward(name, &forward, &[&x, w], dy)?;
            Ok(x)
        }
        Op::Conv2dGradWeight {
            stride,
            pad,
            dilation,
            groups,
            kernel,
        } => {
            let (x, dy) = (inputs[0], inputs[1]);
            expect_rank(name, "an input", x, 4, 0)?;
            expect_rank(name, "an output gradient", dy, 4, 1)?;
            if *groups == 0 || x.dims[1] % groups != 0 {
                return Err(ShapeError::new(
                    format!("{name}: groups must divide {} channels", x.dims[1]),
                    [0],
                ));
            }
            let w = TensorType::f32([dy.dims[1], x.dims[1] / groups, kernel[0], kernel[1]]);
            let forward = Op::Conv2d {
                stride: *stride,
                pad: *pad,
                dilation: *dilation,
                groups: *groups,
            };
            same_as_forward(name, &forward, &[x, &w], dy)?;
            Ok(w)
        }
        Op::ChannelSum => {
            expect_rank(name, "a gradient", inputs[0], 4, 0)?;
            expect_dtype(name, "a gradient", inputs[0], DType::F32, 0)?;
            Ok(TensorType::f32([inputs[0].dims[1]]))
        }
        Op::BatchNormGrad { eps } => {
            let dy = inputs[0];
            expect_rank(name, "a gradient", dy, 4, 0)?;
            expect_dtype(name, "a gradient", dy, DType::F32, 0)?;
            if eps.is_nan() || *eps <= 0.0 {
                return Err(ShapeError::new(
                    format!("{name}: eps must be positive, found {eps}"),
                    Vec::new(),
                ));
            }
            for (i, p) in inputs.iter().enumerate().skip(1) {
                if p.dims != [dy.dims[1]] {
                    return Err(ShapeError::new(
                        format!(
                            "{name}: {} does not match {} channels",
                            p.shape_string(),
                            dy.dims[1]
                        ),
                        [0, i],
                    ));
                }
            }
            Ok(dy.clone())
        }
        Op::ReluGrad => same_shapes(name, inputs),
        Op::MaxPool2dGrad {
            kernel,
            stride,
            pad,
        } => {
            let (dy, x) = (inputs[0], inputs[1]);
            let forward = Op::MaxPool2d {
                kernel: *kernel,
                stride: *stride,
                pad: *pad,
            };
            same_as_forward(name, &forward, &[x], dy)?;
            Ok(x.clone())
        }
        Op::ResizeBilinearGrad { input_size, .. } => {
            let dy = inputs[0];
            expect_rank(name, "a gradient", dy, 4, 0)?;
            expect_dtype(name, "a gradient", dy, DType::F32, 0)?;
            if input_size.contains(&0) {
                return Err(ShapeError::new(
                    format!("{name}: input size {input_size:?} is empty"),
                    Vec::new(),
                ));
            }
            Ok(TensorType::f32([
                dy.dims[0],
                dy.dims[1],
                input_size[0],
                input_size[1],
            ]))
        }
        Op::SoftmaxCrossEntropyGrad {
            ignore_index,
            reduction,
        } => {
            let forward = Op::SoftmaxCrossEntropy {
                ignore_index: *ignore_index,
                reduction: *reduction,
            };
            same_as_forward(name, &forward, &inputs[..2], inputs[2])?;
            Ok(inputs[0].clone())
        }
        Op::LeastSquaresGrad {
            ignore_value,
            reduction,
        } => {
            let forward = Op::LeastSquares {
                ignore_value: *ignore_value,
                reduction: *reduction,
            };
            same_as_forward(name, &forward, &inputs[..2], inputs[2])?;
            Ok(inputs[0].clone())
        }
        Op::SgdMomentum { .. } => same_shapes(name, inputs),
        Op::SgdStep { .. } => {
            expect_dtype(name, "the learning-rate factor", inputs[2], DType::F32, 2)?;
            if !inputs[2].dims.is_empty() {
                return Err(ShapeError::new(
                    format!(
                        "{name}: the learning-rate factor must be a scalar, not {}",
                        inputs[2].shape_string()
                    ),
                    [2],
                ));
            }
            same_shapes(name, &inputs[..2])
        }
        Op::FoldBnWeight { .. } => {
            let w = inputs[0];
            expect_rank(name, "a weight", w, 4, 0)?;
            for (i, p) in inputs.iter().enumerate().skip(1) {
                if p.dims != [w.dims[0]] {
                    return Err(ShapeError::new(
                        format!(
                            "{name}: {} does not match {} output channels",
                            p.shape_string(),
                            w.dims[0]
                        ),
                        [0, i],
                    ));
                }
            }
            Ok(w.clone())
        }
        Op::FoldBnBias { .. } => {
            let c = inputs[0].dims.clone();
            for (i, p) in inputs.iter().enumerate() {
                if p.rank() != 1 || p.dims != c {
                    return Err(ShapeError::new(
                        format!("{name}: per-channel operands differ: {}", p.shape_string()),
                        [0, i],
                    ));
                }
            }
            Ok(TensorType::f32(c))
        }
    }
}

/// Max or average pooling of `x`: rank 4 f32, every pad at most half the window, the
/// window formula with dilation 1 for the output size.
fn pool_type(
    name: &str,
    x: &TensorType,
    kernel: [u64; 2],
    stride: [u64; 2],
    pad: [u64; 4],
) -> Result<TensorType, ShapeError> {
    expect_rank(name, "an input", x, 4, 0)?;
    expect_dtype(name, "an input", x, DType::F32, 0)?;
    for a in 0..2 {
        if pad[a] > kernel[a] / 2 || pad[2 + a] > kernel[a] / 2 {
            return Err(ShapeError::new(
                format!(
                    "{name}: padding {:?} is more than half the {}x{} window",
                    pad, kernel[0], kernel[1]
                ),
                Vec::new(),
            ));
        }
    }
    let mut out = x.dims.clone();
    for a in 0..2 {
        out[2 + a] = window_out(x.dims[2 + a], pad[a], pad[2 + a], kernel[a], stride[a], 1)
            .filter(|&v| v > 0)
            .ok_or_else(|| {
                ShapeError::new(
                    format!(
                        "{name}: a {}x{} window with stride {:?} does not fit the input {}",
                        kernel[0],
                        kernel[1],
                        stride,
                        x.shape_string()
                    ),
                    [0],
                )
            })?;
    }
    Ok(TensorType::f32(out))
}

/// Concatenation along the channels: every operand rank 4 f32 with the first's N, H and W;
/// the channel counts add up (without overflowing).
fn concat_type(name: &str, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let first = inputs[0];
    let mut channels = 0u64;
    for (i, t) in inputs.iter().enumerate() {
        expect_rank(name, "inputs", t, 4, i)?;
        expect_dtype(name, "inputs", t, DType::F32, i)?;
        let (n, h, w) = (t.dims[0], t.dims[2], t.dims[3]);
        if [n, h, w] != [first.dims[0], first.dims[2], first.dims[3]] {
            return Err(ShapeError::new(
                format!(
                    "cannot concatenate {} and {}: batch, height and width must be equal",
                    first.shape_string(),
                    t.shape_string()
                ),
                [0, i],
            ));
        }
        channels = channels
            .checked_add(t.dims[1])
            .ok_or_else(|| ShapeError::new(format!("{name}: too many channels"), Vec::new()))?;
    }
    Ok(TensorType::f32([
        first.dims[0],
        channels,
        first.dims[2],
        first.dims[3],
    ]))
}

/// The shape both operands of an elementwise product broadcast to: equal shapes; a rank-0
/// scalar with anything; or equal ranks whose sizes are equal or 1 in every dimension (the
/// result takes the larger). Both f32.
fn broadcast_type(a: &TensorType, b: &TensorType) -> Result<TensorType, ShapeError> {
    expect_dtype("mul", "operands", a, DType::F32, 0)?;
    expect_dtype("mul", "operands", b, DType::F32, 1)?;
    if b.rank() == 0 {
        return Ok(a.clone());
    }
    if a.rank() == 0 {
        return Ok(b.clone());
    }
    let mismatch = || {
        ShapeError::new(
            format!(
                "cannot multiply {} and {}: in every dimension the sizes must be equal or one of them 1 (or one operand a scalar)",
                a.shape_string(),
                b.shape_string()
            ),
            [0, 1],
        )
    };
    if a.rank() != b.rank() {
        return Err(mismatch());
    }
    let dims = a
        .dims
        .iter()
        .zip(&b.dims)
        .map(|(&x, &y)| match (x, y) {
            _ if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(mismatch)?;
    Ok(TensorType::f32(dims))
}

/// Whether a value of type `small` broadcasts to `dims` by [`broadcast_type`]'s rule.
pub fn broadcasts_to(small: &[u64], dims: &[u64]) -> bool {
    small.is_empty()
        || (small.len() == dims.len() && small.iter().zip(dims).all(|(&s, &d)| s == d || s == 1))
}

fn slice_channels_type(
    name: &str,
    x: &TensorType,
    start: u64,
    size: u64,
) -> Result<TensorType, ShapeError> {
    expect_rank(name, "an input", x, 4, 0)?;
    expect_dtype(name, "an input", x, DType::F32, 0)?;
    let fits = start.checked_add(size).is_some_and(|end| end <= x.dims[1]);
    if size == 0 || !fits {
        return Err(ShapeError::new(
            format!(
                "{name}: channels {start}..{} are not a non-empty range of the {} channels of {}",
                start.saturating_add(size),
                x.dims[1],
                x.shape_string()
            ),
            [0],
        ));
    }
    Ok(TensorType::f32([x.dims[0], size, x.dims[2], x.dims[3]]))
}

fn sum_to_type(name: &str, x: &TensorType, shape: &[u64]) -> Result<TensorType, ShapeError> {
    expect_dtype(name, "an input", x, DType::F32, 0)?;
    if !broadcasts_to(shape, &x.dims) {
        return Err(ShapeError::new(
            format!(
                "{name}: {} does not broadcast to {shape:?}: the target needs the input's rank (or rank 0) and each size equal to the input's or 1",
                x.shape_string()
            ),
            [0],
        ));
    }
    Ok(TensorType::f32(shape.to_vec()))
}

/// Checks that the forward op applied to `forward_inputs` produces `dy`'s type (for the
/// gradient ops, whose attributes describe the forward op they differentiate).
fn same_as_forward(
    name: &str,
    forward: &Op,
    forward_inputs: &[&TensorType],
    dy: &TensorType,
) -> Result<(), ShapeError> {
    let y = infer(forward, forward_inputs).map_err(|e| {
        ShapeError::new(
            format!("{name}: the forward op does not fit: {}", e.message),
            [0],
        )
    })?;
    if &y != dy {
        return Err(ShapeError::new(
            format!(
                "{name}: gradient {} does not match the forward result {}",
                dy.shape_string(),
                y.shape_string()
            ),
            [0],
        ));
    }
    Ok(())
}

/// All operands f32 with one shape; the result has it too.
fn same_shapes(name: &str, inputs: &[&TensorType]) -> Result<TensorType, ShapeError> {
    for (i, t) in inputs.iter().enumerate() {
        expect_dtype(name, "operands", t, DType::F32, i)?;
        if t.dims != inputs[0].dims {
            return Err(ShapeError::new(
                format!(
                    "{name}: operands {} and {} differ in shape",
                    inputs[0].shape_string(),
                    t.shape_string()
                ),
                [0, i],
            ));
        }
    }
    Ok(inputs[0].clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Reduction;

    fn conv(stride: u64, pad: u64, dilation: u64, groups: u64) -> Op {
        Op::Conv2d {
            stride: [stride; 2],
            pad: [pad; 4],
            dilation: [dilation; 2],
            groups,
        }
    }

    #[test]
    fn conv_output_sizes_follow_the_window_formula() {
        let x = TensorType::f32([2, 8, 17, 17]);
        let w3 = TensorType::f32([16, 8, 3, 3]);
        let same = infer(&conv(1, 1, 1, 1), &[&x, &w3]).unwrap();
        assert_eq!(same.dims, [2, 16, 17, 17]);
        // floor((17 + 2 - 3) / 2) + 1 = 9
        assert_eq!(
            infer(&conv(2, 1, 1, 1), &[&x, &w3]).unwrap().dims,
            [2, 16, 9, 9]
        );
        // dilation 2: effective window 5; floor((17 + 4 - 5) / 1) + 1 = 17
        assert_eq!(
            infer(&conv(1, 2, 2, 1), &[&x, &w3]).unwrap().dims,
            [2, 16, 17, 17]
        );
        // stem of ResNet: 7x7/2 pad 3 on 512 -> 256
        let img = TensorType::f32([1, 3, 512, 512]);
        let w7 = TensorType::f32([64, 3, 7, 7]);
        assert_eq!(
            infer(&conv(2, 3, 1, 1), &[&img, &w7]).unwrap().dims,
            [1, 64, 256, 256]
        );
        // grouped: weight has Cin/groups input channels
        let wg = TensorType::f32([16, 2, 3, 3]);
        assert_eq!(
            infer(&conv(1, 1, 1, 4), &[&x, &wg]).unwrap().dims,
            [2, 16, 17, 17]
        );
    }

    #[test]
    fn conv_rejects_mismatched_channels_bias_and_windows() {
        let x = TensorType::f32([1, 8, 4, 4]);
        let e = infer(&conv(1, 1, 1, 1), &[&x, &TensorType::f32([16, 4, 3, 3])]).unwrap_err();
        assert_eq!(e.operands, vec![0, 1]);
        assert!(e.message.contains("input has 8 channels"));
        let bias = TensorType::f32([15]);
        let e = infer(
            &conv(1, 1, 1, 1),
            &[&x, &TensorType::f32([16, 8, 3, 3]), &bias],
        )
        .unwrap_err();
        assert!(e.message.contains("does not match 16 output channels"));
        let e = infer(&conv(1, 0, 1, 1), &[&x, &TensorType::f32([16, 8, 5, 5])]).unwrap_err();
        assert!(e.message.contains("does not fit"));
    }

    #[test]
    fn pooling_resize_and_losses() {
        let x = TensorType::f32([1, 4, 256, 256]);
        let pool = Op::MaxPool2d {
            kernel: [3, 3],
            stride: [2, 2],
            pad: [1, 1, 1, 1],
        };
        assert_eq!(infer(&pool, &[&x]).unwrap().dims, [1, 4, 128, 128]);
        let crp = Op::MaxPool2d {
            kernel: [5, 5],
            stride: [1, 1],
            pad: [2, 2, 2, 2],
        };
        assert_eq!(infer(&crp, &[&x]).unwrap().dims, [1, 4, 256, 256]);
        let too_much_pad = Op::MaxPool2d {
            kernel: [3, 3],
            stride: [1, 1],
            pad: [2, 2, 2, 2],
        };
        assert!(infer(&too_much_pad, &[&x]).is_err());
        let up = Op::ResizeBilinear {
            size: [300, 200],
            align_corners: false,
        };
        assert_eq!(infer(&up, &[&x]).unwrap().dims, [1, 4, 300, 200]);
        let labels = TensorType::new(DType::I32, [1, 256, 256]);
        let ce = Op::SoftmaxCrossEntropy {
            ignore_index: 255,
            reduction: Reduction::Mean,
        };
        assert_eq!(
            infer(&ce, &[&x, &labels]).unwrap(),
            TensorType::scalar_f32()
        );
        let wrong = TensorType::new(DType::I32, [1, 128, 256]);
        assert_eq!(infer(&ce, &[&x, &wrong]).unwrap_err().operands, vec![0, 1]);
        let float_labels = TensorType::f32([1, 256, 256]);
        assert!(infer(&ce, &[&x, &float_labels])
            .unwrap_err()
            .message
            .contains("element type i32"));
        let add = infer(&Op::Add, &[&x, &TensorType::f32([1, 4, 256, 255])]).unwrap_err();
        assert!(add
            .message
            .contains("cannot add f32[1, 4, 256, 256] and f32[1, 4, 256, 255]"));
    }

    #[test]
    fn concat_adds_channels_and_names_the_mismatched_operand() {
        let a = TensorType::f32([2, 3, 8, 8]);
        let b = TensorType::f32([2, 5, 8, 8]);
        assert_eq!(
            infer(&Op::Concat, &[&a, &b, &a]).unwrap().dims,
            [2, 11, 8, 8]
        );
        assert_eq!(infer(&Op::Concat, &[&a]).unwrap(), a);
        let e = infer(&Op::Concat, &[&a, &b, &TensorType::f32([2, 5, 4, 8])]).unwrap_err();
        assert_eq!(e.operands, vec![0, 2]);
        assert_eq!(
            e.message,
            "cannot concatenate f32[2, 3, 8, 8] and f32[2, 5, 4, 8]: batch, height and width must be equal"
        );
        let e = infer(&Op::Concat, &[&a, &TensorType::f32([3, 8, 8])]).unwrap_err();
        assert_eq!(e.operands, vec![1]);
        assert!(e.message.contains("rank 4"));
        let labels = TensorType::new(DType::I32, [2, 1, 8, 8]);
        assert!(infer(&Op::Concat, &[&a, &labels])
            .unwrap_err()
            .message
            .contains("element type f32"));
        assert_eq!(
            infer(&Op::Concat, &[]).unwrap_err().message,
            "concat takes at least 1 operand, found 0"
        );
    }

    #[test]
    fn mul_broadcasts_scalars_and_sizes_of_one() {
        let x = TensorType::f32([2, 3, 8, 8]);
        let gate = TensorType::f32([2, 3, 1, 1]);
        let spatial = TensorType::f32([2, 1, 8, 8]);
        let scalar = TensorType::scalar_f32();
        assert_eq!(infer(&Op::Mul, &[&x, &x]).unwrap(), x);
        assert_eq!(infer(&Op::Mul, &[&x, &gate]).unwrap(), x);
        assert_eq!(infer(&Op::Mul, &[&gate, &x]).unwrap(), x);
        assert_eq!(infer(&Op::Mul, &[&spatial, &gate]).unwrap(), x);
        assert_eq!(infer(&Op::Mul, &[&scalar, &x]).unwrap(), x);
        assert_eq!(infer(&Op::Mul, &[&scalar, &scalar]).unwrap(), scalar);
        for bad in [
            TensorType::f32([2, 2, 8, 8]),
            TensorType::f32([3]),
            TensorType::f32([3, 8, 8]),
        ] {
            let e = infer(&Op::Mul, &[&x, &bad]).unwrap_err();
            assert_eq!(e.operands, vec![0, 1]);
            assert!(
                e.message.starts_with("cannot multiply f32[2, 3, 8, 8] and"),
                "{}",
                e.message
            );
        }
        let ints = TensorType::new(DType::I32, [2, 3, 8, 8]);
        assert_eq!(infer(&Op::Mul, &[&x, &ints]).unwrap_err().operands, vec![1]);
    }

    #[test]
    fn average_pooling_and_its_gradients() {
        let x = TensorType::f32([1, 4, 9, 7]);
        let pool = |k: u64, s: u64, p: u64, include: bool| Op::AvgPool2d {
            kernel: [k; 2],
            stride: [s; 2],
            pad: [p; 4],
            count_include_pad: include,
        };
        assert_eq!(
            infer(&pool(3, 2, 1, true), &[&x]).unwrap().dims,
            [1, 4, 5, 4]
        );
        assert_eq!(
            infer(&pool(2, 2, 0, false), &[&x]).unwrap().dims,
            [1, 4, 4, 3]
        );
        assert!(infer(&pool(3, 1, 2, false), &[&x])
            .unwrap_err()
            .message
            .contains("more than half the 3x3 window"));
        assert!(infer(&pool(11, 1, 0, true), &[&x])
            .unwrap_err()
            .message
            .contains("does not fit the input"));
        let grad = Op::AvgPool2dGrad {
            kernel: [3, 3],
            stride: [2, 2],
            pad: [1; 4],
            count_include_pad: true,
            input_size: [9, 7],
        };
        let dy = TensorType::f32([1, 4, 5, 4]);
        assert_eq!(infer(&grad, &[&dy]).unwrap(), x);
        assert!(infer(&grad, &[&TensorType::f32([1, 4, 5, 5])])
            .unwrap_err()
            .message
            .contains("does not match the forward result f32[1, 4, 5, 4]"));
        assert_eq!(
            infer(&Op::GlobalAvgPool2d, &[&x]).unwrap().dims,
            [1, 4, 1, 1]
        );
        assert!(infer(&Op::GlobalAvgPool2d, &[&TensorType::f32([4, 9, 7])]).is_err());
        let back = Op::GlobalAvgPool2dGrad { input_size: [9, 7] };
        assert_eq!(infer(&back, &[&TensorType::f32([1, 4, 1, 1])]).unwrap(), x);
        assert!(infer(&back, &[&TensorType::f32([1, 4, 2, 1])]).is_err());
        let empty = Op::GlobalAvgPool2dGrad { input_size: [0, 7] };
        assert!(infer(&empty, &[&TensorType::f32([1, 4, 1, 1])]).is_err());
    }

    #[test]
    fn gradient_helpers_slice_and_sum() {
        let x = TensorType::f32([2, 6, 4, 4]);
        let slice = |start, size| Op::SliceChannels { start, size };
        assert_eq!(infer(&slice(2, 3), &[&x]).unwrap().dims, [2, 3, 4, 4]);
        assert_eq!(infer(&slice(0, 6), &[&x]).unwrap(), x);
        for (start, size) in [(4, 3), (0, 0), (u64::MAX, 2)] {
            let e = infer(&slice(start, size), &[&x]).unwrap_err();
            assert!(
                e.message
                    .contains("are not a non-empty range of the 6 channels"),
                "{}",
                e.message
            );
        }
        let sum = |shape: &[u64]| Op::SumTo {
            shape: shape.to_vec(),
        };
        assert_eq!(
            infer(&sum(&[2, 6, 1, 1]), &[&x]).unwrap().dims,
            [2, 6, 1, 1]
        );
        assert_eq!(infer(&sum(&[]), &[&x]).unwrap(), TensorType::scalar_f32());
        assert!(infer(&sum(&[6, 1, 1]), &[&x]).is_err());
        assert!(infer(&sum(&[2, 3, 1, 1]), &[&x]).is_err());
        let y = TensorType::f32([2, 6, 4, 4]);
        assert_eq!(infer(&Op::SigmoidGrad, &[&x, &y]).unwrap(), x);
        assert!(infer(&Op::SigmoidGrad, &[&x, &TensorType::f32([2, 6, 4, 3])]).is_err());
    }

    #[test]
    fn window_out_never_overflows() {
        assert_eq!(window_out(u64::MAX, 1, 1, 3, 1, 1), None);
        assert_eq!(window_out(4, 0, 0, u64::MAX, 1, 2), None);
        assert_eq!(window_out(4, 0, 0, 3, 0, 1), None);
    }
}
