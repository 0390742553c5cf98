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
        let want = if lo == hi {
            lo.to_string()
        } else {
            format!("{lo} or {hi}")
        };
        return Err(ShapeError::new(
            format!("{name} takes {want} operands, found {}", inputs.len()),
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
        } => {
            let x = inputs[0];
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
    fn window_out_never_overflows() {
        assert_eq!(window_out(u64::MAX, 1, 1, 3, 1, 1), None);
        assert_eq!(window_out(4, 0, 0, u64::MAX, 1, 2), None);
        assert_eq!(window_out(4, 0, 0, 3, 0, 1), None);
    }
}
