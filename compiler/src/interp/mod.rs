//! The reference interpreter: executes any graph on the CPU with the plain loops of
//! [`kernels`], in f32 or f64. It is the oracle for everything later (fusion, memory plan,
//! kernels) and for autodiff (finite differences run on it).
//!
//! Invariants: ops run in the graph's topological order; a value is dropped after its last
//! use; every feed is checked against the graph (name, element type, shape) before anything
//! runs, and data problems (a label out of range) are errors, not panics.

pub mod broadcast;
pub mod kernels;
mod planned;
mod tensor;

use std::collections::HashMap;
use std::fmt;

use crate::codegen::semantics::rounding;
use crate::ir::{DType, Graph, NodeId, Op, OpKind};
use kernels::{AvgPool, ConvGeometry};
pub use planned::run_planned;
pub use rfnc_bundle::Precision;
pub use tensor::{Real, Tensor, Value};

/// Why a graph cannot be run on the values given.
#[derive(Debug, Clone, PartialEq)]
pub struct InterpError(pub String);

impl fmt::Display for InterpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InterpError {}

/// Runs `graph` with values for its inputs and parameters, by name, and returns its outputs
/// in order. Dropout with a step operand uses the `step` value fed to the graph.
pub fn run<T: Real>(
    graph: &Graph,
    feeds: &HashMap<String, Value<T>>,
) -> Result<Vec<(String, Value<T>)>, InterpError> {
    run_in(graph, feeds, Precision::F32)
}

/// [`run`] with the convolutions multiplying in `precision`: for TF32 (BF16) both
/// multiplicands of every convolution and convolution gradient (x and w, dy and w, x and
/// dy) are rounded to TF32 (BF16) first (the oracle of the GPU's tensor-core kernels); sums
/// stay in `T`.
pub fn run_in<T: Real>(
    graph: &Graph,
    feeds: &HashMap<String, Value<T>>,
    precision: Precision,
) -> Result<Vec<(String, Value<T>)>, InterpError> {
    let order = graph
        .topo_order()
        .ok_or_else(|| InterpError("the graph has a cycle".into()))?;
    let mut uses: HashMap<NodeId, usize> = HashMap::new();
    for &id in &order {
        for o in graph.operands(id) {
            *uses.entry(o).or_default() += 1;
        }
    }
    for o in &graph.outputs {
        *uses.entry(o.value).or_default() += 1;
    }
    let mut values: HashMap<NodeId, Value<T>> = HashMap::new();
    for &id in &order {
        let node = graph.node(id);
        let operands = graph.operands(id);
        let value = match &node.op {
            Op::Input { name } | Op::Param { name, .. } => feed(graph, id, name, feeds)?,
            op => {
                let args: Vec<&Value<T>> = operands.iter().map(|o| &values[o]).collect();
                if let (Some(round), OpKind::Conv(_)) = (rounding(precision), op.kind()) {
                    let rounded = [args[0], args[1]].map(|v| rounded_with(v, round));
                    let mut args = args;
                    args[0] = &rounded[0];
                    args[1] = &rounded[1];
                    eval(op, &args, &node.ty.dims)?
                } else {
                    eval(op, &args, &node.ty.dims)?
                }
            }
        };
        for o in operands {
            let left = uses.get_mut(&o).expect("counted");
            *left -= 1;
            if *left == 0 {
                values.remove(&o);
            }
        }
        if uses.get(&id).copied().unwrap_or(0) > 0 {
            values.insert(id, value);
        }
    }
    Ok(graph
        .outputs
        .iter()
        .map(|o| (o.name.clone(), values[&o.value].clone()))
        .collect())
}

pub(crate) fn feed<T: Real>(
    graph: &Graph,
    id: NodeId,
    name: &str,
    feeds: &HashMap<String, Value<T>>,
) -> Result<Value<T>, InterpError> {
    let ty = &graph.node(id).ty;
    let value = feeds.get(name).ok_or_else(|| {
        InterpError(format!(
            "no value given for `{name}` ({})",
            ty.shape_string()
        ))
    })?;
    let dtype_ok = matches!(
        (value, ty.dtype),
        (Value::Real(_), DType::F32) | (Value::Int(_), DType::I32)
    );
    if !dtype_ok || value.dims() != ty.dims.as_slice() {
        return Err(InterpError(format!(
            "`{name}` must be {}, the value given has shape {:?} ({})",
            ty.shape_string(),
            value.dims(),
            if matches!(value, Value::Int(_)) {
                "i32"
            } else {
                "real"
            }
        )));
    }
    Ok(value.clone())
}

/// A real value with every element rounded by `round` (through f32).
fn rounded_with<T: Real>(v: &Value<T>, round: fn(f32) -> f32) -> Value<T> {
    Value::Real(kernels::map(v.real(), |x| {
        T::of(round(x.f64() as f32) as f64)
    }))
}

fn real<T: Real>(t: Tensor<T>) -> Result<Value<T>, InterpError> {
    Ok(Value::Real(t))
}

/// The window geometry of a conv or conv-gradient op.
fn conv_geometry(op: &Op) -> ConvGeometry {
    match op {
        Op::Conv2d {
            stride,
            pad,
            dilation,
            groups,
        }
        | Op::Conv2dGradInput {
            stride,
            pad,
            dilation,
            groups,
            ..
        }
        | Op::Conv2dGradWeight {
            stride,
            pad,
            dilation,
            groups,
            ..
        } => ConvGeometry {
            stride: *stride,
            pad: *pad,
            dilation: *dilation,
            groups: *groups,
        },
        other => unreachable!("rfn.{} has no conv geometry", other.mnemonic()),
    }
}

/// Evaluates one computed op on its operand values.
pub fn eval<T: Real>(op: &Op, args: &[&Value<T>], out: &[u64]) -> Result<Value<T>, InterpError> {
    let r = |i: usize| args[i].real();
    let data_error = |e: kernels::DataError| InterpError(e.0);
    match op {
        Op::Input { .. } | Op::Param { .. } => unreachable!("leaves are fed"),
        Op::Constant { value } => real(Tensor::scalar(T::of(*value))),
        Op::Conv2d { .. } => {
            let g = conv_geometry(op);
            real(kernels::conv2d(
                r(0),
                r(1),
                args.get(2).map(|b| b.real()),
                &g,
                out,
            ))
        }
        Op::Conv2dGradInput { .. } => {
            let g = conv_geometry(op);
            real(kernels::conv2d_grad_input(r(0), r(1), &g, out))
        }
        Op::Conv2dGradWeight { .. } => {
            let g = conv_geometry(op);
            real(kernels::conv2d_grad_weight(r(0), r(1), &g, out))
        }
        Op::ChannelSum => real(kernels::channel_sum(r(0))),
        Op::BatchNorm { eps } => real(kernels::batch_norm(r(0), r(1), r(2), r(3), r(4), *eps)),
        Op::BatchNormGrad { eps } => real(kernels::batch_norm_grad(r(0), r(1), r(2), *eps)),
        Op::Relu => real(kernels::map(r(0), |v| {
            if v > T::zero() {
                v
            } else {
                T::zero()
            }
        })),
        Op::ReluGrad => real(kernels::zip(r(0), r(1), |dy, y| {
            if y > T::zero() {
                dy
            } else {
                T::zero()
            }
        })),
        Op::Add => real(kernels::zip(r(0), r(1), |a, b| a + b)),
        Op::Mul => real(broadcast::mul(r(0), r(1), out)),
        Op::SumTo { shape } => real(broadcast::sum_to(r(0), shape)),
        Op::Sigmoid => real(kernels::map(r(0), |v| T::one() / (T::one() + (-v).exp()))),
        Op::SigmoidGrad => real(kernels::zip(r(0), r(1), |dy, y| dy * y * (T::one() - y))),
        Op::Concat => {
            let xs: Vec<&Tensor<T>> = args.iter().map(|a| a.real()).collect();
            real(kernels::concat(&xs, out))
        }
        Op::SliceChannels { start, size } => real(kernels::slice_channels(r(0), *start, *size)),
        Op::AvgPool2d {
            kernel,
            stride,
            pad,
            count_include_pad,
        } => {
            let pool = AvgPool {
                kernel: *kernel,
                stride: *stride,
                pad: *pad,
                count_include_pad: *count_include_pad,
            };
            real(kernels::avg_pool2d(r(0), &pool, out))
        }
        Op::AvgPool2dGrad {
            kernel,
            stride,
            pad,
            count_include_pad,
            ..
        } => {
            let pool = AvgPool {
                kernel: *kernel,
                stride: *stride,
                pad: *pad,
                count_include_pad: *count_include_pad,
            };
            real(kernels::avg_pool2d_grad(r(0), &pool, out))
        }
        Op::GlobalAvgPool2d => real(broadcast::global_avg_pool2d(r(0))),
        Op::GlobalAvgPool2dGrad { input_size } => {
            real(broadcast::global_avg_pool2d_grad(r(0), *input_size))
        }
        Op::MaxPool2d {
            kernel,
            stride,
            pad,
        } => real(kernels::max_pool2d(r(0), *kernel, *stride, *pad, out)),
        Op::MaxPool2dGrad {
            kernel,
            stride,
            pad,
        } => real(kernels::max_pool2d_grad(r(0), r(1), *kernel, *stride, *pad)),
        Op::ResizeBilinear {
            size,
            align_corners,
        } => real(kernels::resize_bilinear(r(0), *size, *align_corners)),
        Op::ResizeBilinearGrad {
            align_corners,
            input_size,
        } => real(kernels::resize_bilinear_grad(
            r(0),
            *input_size,
            *align_corners,
        )),
        Op::Dropout { rate, seed, stream } => match args.get(1) {
            None => Ok(args[0].clone()),
            Some(step) => {
                let step = step.int().data[0];
                let step = u64::try_from(step)
                    .map_err(|_| InterpError(format!("the step counter is negative ({step})")))?;
                real(kernels::dropout(r(0), *rate, *seed, step, *stream))
            }
        },
        Op::SoftmaxCrossEntropy {
            ignore_index,
            reduction,
        } => {
            let (loss, _) = kernels::softmax_cross_entropy(
                r(0),
                args[1].int(),
                *ignore_index,
                *reduction,
                None,
            )
            .map_err(data_error)?;
            real(Tensor::scalar(loss))
        }
        Op::SoftmaxCrossEntropyGrad {
            ignore_index,
            reduction,
        } => {
            let d = r(2).data[0];
            let (_, g) = kernels::softmax_cross_entropy(
                r(0),
                args[1].int(),
                *ignore_index,
                *reduction,
                Some(d),
            )
            .map_err(data_error)?;
            real(g.expect("gradient requested"))
        }
        Op::LeastSquares {
            ignore_value,
            reduction,
        } => real(Tensor::scalar(
            kernels::least_squares(r(0), r(1), *ignore_value, *reduction, None).0,
        )),
        Op::LeastSquaresGrad {
            ignore_value,
            reduction,
        } => {
            let d = r(2).data[0];
            real(
                kernels::least_squares(r(0), r(1), *ignore_value, *reduction, Some(d))
                    .1
                    .expect("gradient requested"),
            )
        }
        Op::SgdMomentum {
            momentum,
            weight_decay,
        } => {
            let (mu, wd) = (T::of(*momentum), T::of(*weight_decay));
            let v = r(0);
            let data = v
                .data
                .iter()
                .zip(&r(1).data)
                .zip(&r(2).data)
                .map(|((&v, &g), &p)| mu * v + g + wd * p);
            real(Tensor::new(v.dims.clone(), data.collect()))
        }
        Op::SgdStep { lr } => {
            let rate = T::of(*lr) * r(2).data[0];
            real(kernels::zip(r(0), r(1), |p, v| p - rate * v))
        }
        Op::FoldBnWeight { eps } => real(kernels::fold_bn_weight(r(0), r(1), r(2), *eps)),
        Op::FoldBnBias { eps } => real(kernels::fold_bn_bias(
            r(0),
            r(1),
            r(2),
            r(3),
            args.get(4).map(|b| b.real()),
            *eps,
        )),
    }
}
