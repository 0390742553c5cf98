//! Reverse-mode automatic differentiation on the graph IR.
//!
//! Given a scalar `loss` and values `wrt`, appends to the graph the ops that compute
//! d loss / d wrt. Stages: (1) mark the nodes on a path from some `wrt` to `loss`; (2) seed
//! the loss's adjoint with the constant 1.0; (3) walk the marked nodes in reverse
//! topological order, applying each op's vector-Jacobian rule ([`vjp`], one entry per op)
//! to its adjoint and summing contributions where a value has several uses (residual
//! connections, CRP sums) with `rfn.add`.
//!
//! Invariants: the forward graph is unchanged (only nodes are added); every added node has
//! the location of the forward op it differentiates; a gradient has its value's type; ops
//! with no rule (gradient and optimizer ops: no second derivatives) are an error, not a
//! silent zero.

use std::collections::{HashMap, HashSet};

use crate::ir::{Graph, Loc, NodeId, Op, ShapeError};

/// Operand adjoints of one op, `None` where not wanted or not differentiable.
type Adjoints = Vec<Option<NodeId>>;

/// Why gradients cannot be formed.
#[derive(Debug, Clone, PartialEq)]
pub struct AutodiffError(pub String);

impl From<ShapeError> for AutodiffError {
    fn from(e: ShapeError) -> Self {
        AutodiffError(format!(
            "internal: a gradient op does not fit: {}",
            e.message
        ))
    }
}

/// Adds the gradient of scalar `loss` with respect to each of `wrt`. Returns one entry per
/// `wrt`: `None` when the loss does not depend on it.
pub fn gradients(
    graph: &mut Graph,
    loss: NodeId,
    wrt: &[NodeId],
) -> Result<Vec<Option<NodeId>>, AutodiffError> {
    if !graph.node(loss).ty.dims.is_empty() {
        return Err(AutodiffError(format!(
            "the loss must be a scalar, not {}",
            graph.node(loss).ty
        )));
    }
    let seed_loc = graph.node(loss).loc.clone();
    let one = graph.add_inferred(Op::Constant { value: 1.0 }, &[], seed_loc)?;
    vector_jacobian(graph, loss, one, wrt)
}

/// The vector-Jacobian product: given `output` and a value `adjoint` of its type, adds the
/// gradients of `sum(output * adjoint)` with respect to each of `wrt`.
pub fn vector_jacobian(
    graph: &mut Graph,
    output: NodeId,
    adjoint_of_output: NodeId,
    wrt: &[NodeId],
) -> Result<Vec<Option<NodeId>>, AutodiffError> {
    if graph.node(output).ty != graph.node(adjoint_of_output).ty {
        return Err(AutodiffError(format!(
            "the adjoint {} does not match the output {}",
            graph.node(adjoint_of_output).ty,
            graph.node(output).ty
        )));
    }
    let order = graph
        .topo_order()
        .ok_or_else(|| AutodiffError("the graph has a cycle".into()))?;
    let marked = on_paths(graph, &order, output, wrt);
    let mut adjoint: HashMap<NodeId, NodeId> = HashMap::new();
    adjoint.insert(output, adjoint_of_output);
    for &id in order.iter().rev() {
        if !marked.contains(&id) || graph.node(id).op.is_leaf() {
            continue;
        }
        let Some(&dy) = adjoint.get(&id) else {
            continue;
        };
        let operands = graph.operands(id);
        let wanted: Vec<bool> = operands.iter().map(|o| marked.contains(o)).collect();
        let contributions = vjp(graph, id, dy, &wanted)?;
        for (operand, grad) in operands.into_iter().zip(contributions) {
            let Some(grad) = grad else { continue };
            let total = match adjoint.get(&operand) {
                Some(&previous) => {
                    let loc = graph.node(operand).loc.clone();
                    graph.add_inferred(Op::Add, &[previous, grad], loc)?
                }
                None => grad,
            };
            adjoint.insert(operand, total);
        }
    }
    Ok(wrt.iter().map(|w| adjoint.get(w).copied()).collect())
}

/// Nodes that depend on some `wrt` and that `loss` depends on.
fn on_paths(graph: &Graph, order: &[NodeId], loss: NodeId, wrt: &[NodeId]) -> HashSet<NodeId> {
    let mut from_wrt: HashSet<NodeId> = wrt.iter().copied().collect();
    for &id in order {
        if graph.operands(id).iter().any(|o| from_wrt.contains(o)) {
            from_wrt.insert(id);
        }
    }
    let mut to_loss: HashSet<NodeId> = HashSet::from([loss]);
    for &id in order.iter().rev() {
        if to_loss.contains(&id) {
            to_loss.extend(graph.operands(id));
        }
    }
    from_wrt.intersection(&to_loss).copied().collect()
}

/// The vector-Jacobian products of node `id` given its output adjoint `dy`: one entry per
/// operand, `None` where not `wanted` or not differentiable (labels, frozen statistics).
///
/// | op | operand adjoints |
/// |---|---|
/// | conv2d(x, w, b) | conv2d_grad_input(dy, w), conv2d_grad_weight(x, dy), channel_sum(dy) |
/// | batch_norm(x, mean, var, gamma, beta) (frozen) | batch_norm_grad(dy, var, gamma); none for the rest |
/// | relu(x) = y | relu_grad(dy, y) |
/// | add(a, b) | dy, dy |
/// | mul(a, b) | mul(dy, b), mul(dy, a), each through sum_to(., shape) when that operand was broadcast |
/// | sigmoid(x) = y | sigmoid_grad(dy, y) |
/// | concat(x1, ..., xk) | slice_channels(dy) at each operand's channels |
/// | max_pool2d(x) | max_pool2d_grad(dy, x) |
/// | avg_pool2d(x) | avg_pool2d_grad(dy) |
/// | global_avg_pool2d(x) | global_avg_pool2d_grad(dy) |
/// | resize_bilinear(x) | resize_bilinear_grad(dy) |
/// | dropout(x[, step]) | dropout(dy[, step]) (the same mask) |
/// | softmax_cross_entropy(s, labels) | softmax_cross_entropy_grad(s, labels, dy); none |
/// | least_squares(p, target) | least_squares_grad(p, target, dy); none |
fn vjp(
    graph: &mut Graph,
    id: NodeId,
    dy: NodeId,
    wanted: &[bool],
) -> Result<Adjoints, AutodiffError> {
    let node = graph.node(id).clone();
    let ops = graph.operands(id);
    let loc: Loc = node.loc.clone();
    let mut out: Vec<Option<NodeId>> = vec![None; ops.len()];
    let mut emit =
        |graph: &mut Graph, slot: usize, op: Op, args: &[NodeId]| -> Result<(), AutodiffError> {
            if wanted[slot] {
                out[slot] = Some(graph.add_inferred(op, args, loc.clone())?);
            }
            Ok(())
        };
    let hw = |graph: &Graph, n: NodeId| {
        let d = &graph.node(n).ty.dims;
        [d[2], d[3]]
    };
    match &node.op {
        Op::Conv2d {
            stride,
            pad,
            dilation,
            groups,
        } => {
            let (stride, pad, dilation, groups) = (*stride, *pad, *dilation, *groups);
            let input_size = hw(graph, ops[0]);
            let kernel = hw(graph, ops[1]);
            emit(
                graph,
                0,
                Op::Conv2dGradInput {
                    stride,
                    pad,
                    dilation,
                    groups,
                    input_size,
                },
                &[dy, ops[1]],
            )?;
            emit(
                graph,
                1,
                Op::Conv2dGradWeight {
                    stride,
                    pad,
                    dilation,
                    groups,
                    kernel,
                },
                &[ops[0], dy],
            )?;
            if ops.len() == 3 {
                emit(graph, 2, Op::ChannelSum, &[dy])?;
            }
        }
        Op::BatchNorm { eps } => emit(
            graph,
            0,
            Op::BatchNormGrad { eps: *eps },
            &[dy, ops[2], ops[3]],
        )?,
        Op::Relu => emit(graph, 0, Op::ReluGrad, &[dy, id])?,
        Op::Sigmoid => emit(graph, 0, Op::SigmoidGrad, &[dy, id])?,
        Op::Mul => return mul_adjoints(graph, id, dy, wanted),
        Op::Concat => {
            let mut start = 0;
            for (slot, &x) in ops.iter().enumerate() {
                let size = graph.node(x).ty.dims[1];
                emit(graph, slot, Op::SliceChannels { start, size }, &[dy])?;
                start += size;
            }
        }
        Op::AvgPool2d {
            kernel,
            stride,
            pad,
            count_include_pad,
        } => {
            let grad = Op::AvgPool2dGrad {
                kernel: *kernel,
                stride: *stride,
                pad: *pad,
                count_include_pad: *count_include_pad,
                input_size: hw(graph, ops[0]),
            };
            emit(graph, 0, grad, &[dy])?
        }
        Op::GlobalAvgPool2d => {
            let input_size = hw(graph, ops[0]);
            emit(graph, 0, Op::GlobalAvgPool2dGrad { input_size }, &[dy])?
        }
        Op::Add => {
            out[0] = wanted[0].then_some(dy);
            out[1] = wanted[1].then_some(dy);
        }
        Op::MaxPool2d {
            kernel,
            stride,
            pad,
        } => emit(
            graph,
            0,
            Op::MaxPool2dGrad {
                kernel: *kernel,
                stride: *stride,
                pad: *pad,
            },
            &[dy, ops[0]],
        )?,
        Op::ResizeBilinear { align_corners, .. } => {
            let input_size = hw(graph, ops[0]);
            emit(
                graph,
                0,
                Op::ResizeBilinearGrad {
                    align_corners: *align_corners,
                    input_size,
                },
                &[dy],
            )?
        }
        Op::Dropout { .. } => {
            let mut args = vec![dy];
            args.extend(ops.get(1).copied());
            emit(graph, 0, node.op.clone(), &args)?
        }
        Op::SoftmaxCrossEntropy {
            ignore_index,
            reduction,
        } => emit(
            graph,
            0,
            Op::SoftmaxCrossEntropyGrad {
                ignore_index: *ignore_index,
                reduction: *reduction,
            },
            &[ops[0], ops[1], dy],
        )?,
        Op::LeastSquares {
            ignore_value,
            reduction,
        } => emit(
            graph,
            0,
            Op::LeastSquaresGrad {
                ignore_value: *ignore_value,
                reduction: *reduction,
            },
            &[ops[0], ops[1], dy],
        )?,
        Op::Input { .. } | Op::Param { .. } | Op::Constant { .. } => {}
        other => {
            return Err(AutodiffError(format!(
                "rfn.{} has no gradient rule (gradient, optimizer and batch-norm folding ops are not differentiated)",
                other.mnemonic()
            )))
        }
    }
    Ok(out)
}

/// `mul(a, b)`: `dy * b` for `a` and `dy * a` for `b`, each summed back to its operand's
/// shape where broadcasting expanded it.
fn mul_adjoints(
    graph: &mut Graph,
    id: NodeId,
    dy: NodeId,
    wanted: &[bool],
) -> Result<Adjoints, AutodiffError> {
    let ops = graph.operands(id);
    let loc = graph.node(id).loc.clone();
    let mut out = vec![None; 2];
    for slot in 0..2 {
        if !wanted[slot] {
            continue;
        }
        let (mine, other) = (ops[slot], ops[1 - slot]);
        let mut grad = graph.add_inferred(Op::Mul, &[dy, other], loc.clone())?;
        let shape = graph.node(mine).ty.dims.clone();
        if graph.node(grad).ty.dims != shape {
            grad = graph.add_inferred(Op::SumTo { shape }, &[grad], loc.clone())?;
        }
        out[slot] = Some(grad);
    }
    Ok(out)
}
