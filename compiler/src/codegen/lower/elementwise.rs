//! The per-element formulas: every op a fused kernel computes at one element index (the
//! gathers delegate to `gather`), and the launch that runs one thread per output element.

use super::gather::{Stored, Window};
use super::{dropout, f, Launch, LowerError, LoweredLaunch, BLOCK};
use crate::codegen::kir::{Expr, Ty};
use crate::ir::{Graph, NodeId, Op, Reduction};
use crate::passes::fusion::Kernel;

/// One thread per element of the kernel's domain (its anchor's shape, else its first
/// output's), or with `rows` (the CPU's schedule) one per row of it looping over the row
/// ([`Launch::begin_elements`]); `counted` is a mean-reduced loss gradient whose count is in
/// scratch; `stored` what earlier launches stored for it (the CPU's schedule).
pub(super) fn lower(
    graph: &Graph,
    kernel: &Kernel,
    name: &str,
    counted: Option<NodeId>,
    stored: &Stored,
    rows: bool,
) -> Result<LoweredLaunch, LowerError> {
    let dims = domain(graph, kernel)?;
    let mut l = Launch::new(graph, kernel, name, BLOCK);
    if counted.is_some() {
        l.count = Some(l.scratch(0, 1));
    }
    stored.attach(&mut l);
    let (flat, blocks) = l.begin_elements(&dims, rows);
    l.emit_outputs(&flat, &dims, None)?;
    l.end_elements();
    l.finish(blocks)
}

/// The shape a one-thread-per-element kernel runs over: its anchor's, else its first
/// output's.
pub(super) fn domain(graph: &Graph, kernel: &Kernel) -> Result<Vec<u64>, LowerError> {
    let node = kernel
        .anchor
        .or(kernel.outputs.first().copied())
        .ok_or_else(|| LowerError("a kernel without outputs".into()))?;
    Ok(graph.node(node).ty.dims.clone())
}

impl Launch<'_> {
    /// Computes member op `n` at `flat`.
    pub(super) fn compute(&mut self, n: NodeId, flat: &Expr) -> Result<Expr, LowerError> {
        let node = self.graph.node(n);
        match &node.op {
            Op::Relu => self.relu(n, flat),
            Op::Add => Ok(self.operand_at(n, 0, flat)? + self.operand_at(n, 1, flat)?),
            Op::Mul => Ok(self.operand_at(n, 0, flat)? * self.operand_at(n, 1, flat)?),
            Op::Sigmoid => {
                let x = self.operand_at(n, 0, flat)?;
                Ok(Expr::F32(1.0) / (Expr::F32(1.0) + (-x).exp()))
            }
            Op::SigmoidGrad => {
                let [dy, y] = self.operands_at(n, flat)?;
                Ok(dy * y.clone() * (Expr::F32(1.0) - y))
            }
            Op::GlobalAvgPool2dGrad { input_size } => {
                let dy = self.operand_at(n, 0, flat)?;
                Ok(dy / f((input_size[0] * input_size[1]) as f64))
            }
            Op::AvgPool2d {
                kernel,
                stride,
                pad,
                count_include_pad,
            } => self.avg_pool(
                n,
                flat,
                Window::new(*kernel, *stride, *pad),
                *count_include_pad,
            ),
            Op::AvgPool2dGrad {
                kernel,
                stride,
                pad,
                count_include_pad,
                ..
            } => self.avg_pool_grad(
                n,
                flat,
                Window::new(*kernel, *stride, *pad),
                *count_include_pad,
            ),
            Op::Concat => self.concat(n, flat),
            Op::SliceChannels { start, .. } => self.slice_channels(n, flat, *start),
            Op::BatchNorm { eps } => self.batch_norm(n, flat, *eps),
            Op::BatchNormGrad { eps } => self.batch_norm_grad(n, flat, *eps),
            Op::ReluGrad => self.relu_grad(n, flat),
            Op::Dropout { rate, seed, stream } => self.dropout(n, flat, *rate, *seed, *stream),
            Op::SgdMomentum {
                momentum,
                weight_decay,
            } => self.sgd_momentum(n, flat, *momentum, *weight_decay),
            Op::SgdStep { lr } => self.sgd_step(n, flat, *lr),
            Op::FoldBnWeight { eps } => self.fold_bn_weight(n, flat, *eps),
            Op::FoldBnBias { eps } => self.fold_bn_bias(n, flat, *eps),
            Op::MaxPool2d {
                kernel,
                stride,
                pad,
            } => self.max_pool(n, flat, Window::new(*kernel, *stride, *pad)),
            Op::MaxPool2dGrad {
                kernel,
                stride,
                pad,
            } => self.max_pool_grad(n, flat, Window::new(*kernel, *stride, *pad)),
            Op::ResizeBilinear { align_corners, .. } => self.resize(n, flat, *align_corners),
            Op::ResizeBilinearGrad { align_corners, .. } => {
                self.resize_grad(n, flat, *align_corners)
            }
            Op::SoftmaxCrossEntropyGrad {
                ignore_index,
                reduction,
            } => self.softmax_grad(n, flat, *ignore_index, *reduction),
            Op::LeastSquaresGrad {
                ignore_value,
                reduction,
            } => self.least_squares_grad(n, flat, *ignore_value, *reduction),
            Op::Input { .. }
            | Op::Param { .. }
            | Op::Constant { .. }
            | Op::Conv2d { .. }
            | Op::Conv2dGradInput { .. }
            | Op::Conv2dGradWeight { .. }
            | Op::ChannelSum
            | Op::GlobalAvgPool2d
            | Op::SumTo { .. }
            | Op::SoftmaxCrossEntropy { .. }
            | Op::LeastSquares { .. } => Err(LowerError(format!(
                "rfn.{} cannot be computed element by element inside a fused kernel",
                node.op.mnemonic()
            ))),
        }
    }

    /// Operands `0..N` of `n` at `flat`, in order.
    fn operands_at<const N: usize>(
        &mut self,
        n: NodeId,
        flat: &Expr,
    ) -> Result<[Expr; N], LowerError> {
        let mut values = [const { Expr::Int(0) }; N];
        for (i, v) in values.iter_mut().enumerate() {
            *v = self.operand_at(n, i, flat)?;
        }
        Ok(values)
    }

    fn relu(&mut self, n: NodeId, flat: &Expr) -> Result<Expr, LowerError> {
        let x = self.operand_at(n, 0, flat)?;
        Ok(Expr::select(x.clone().gt(0.0f32), x, 0.0f32))
    }

    fn relu_grad(&mut self, n: NodeId, flat: &Expr) -> Result<Expr, LowerError> {
        let [dy, y] = self.operands_at(n, flat)?;
        Ok(Expr::select(y.gt(0.0f32), dy, 0.0f32))
    }

    fn batch_norm(&mut self, n: NodeId, flat: &Expr, eps: f64) -> Result<Expr, LowerError> {
        let [x, mean, var, gamma, beta] = self.operands_at(n, flat)?;
        let scale = self.b.let_(gamma / (var + f(eps)).sqrt());
        Ok((x - mean) * scale + beta)
    }

    fn batch_norm_grad(&mut self, n: NodeId, flat: &Expr, eps: f64) -> Result<Expr, LowerError> {
        let [dy, var, gamma] = self.operands_at(n, flat)?;
        Ok(dy * (gamma / (var + f(eps)).sqrt()))
    }

    /// Inverted dropout: kept elements scaled by `1 / (1 - rate)`; the identity without a
    /// step operand.
    fn dropout(
        &mut self,
        n: NodeId,
        flat: &Expr,
        rate: f64,
        seed: u64,
        stream: u64,
    ) -> Result<Expr, LowerError> {
        let x = self.operand_at(n, 0, flat)?;
        if self.graph.operands(n).len() < 2 {
            return Ok(x);
        }
        let step = self
            .value_at(self.operand(n, 1), &Expr::Int(0))?
            .cast(Ty::I64);
        let keep = dropout::keep(&mut self.b, rate, seed, stream, step, flat);
        Ok(Expr::select(keep, x * f(1.0 / (1.0 - rate)), 0.0f32))
    }

    fn sgd_momentum(
        &mut self,
        n: NodeId,
        flat: &Expr,
        momentum: f64,
        weight_decay: f64,
    ) -> Result<Expr, LowerError> {
        let [v, g, p] = self.operands_at(n, flat)?;
        Ok(f(momentum) * v + g + f(weight_decay) * p)
    }

    fn sgd_step(&mut self, n: NodeId, flat: &Expr, lr: f64) -> Result<Expr, LowerError> {
        let [p, v, factor] = self.operands_at(n, flat)?;
        Ok(p - f(lr) * factor * v)
    }

    /// The folded weight: the frozen scale of the weight's output channel applied.
    fn fold_bn_weight(&mut self, n: NodeId, flat: &Expr, eps: f64) -> Result<Expr, LowerError> {
        let dims = self.dims(n);
        let per_out = dims[1..].iter().product::<u64>();
        let c = self.b.let_(self.quotient(flat, per_out));
        let w = self.operand_at(n, 0, flat)?;
        let var = self.value_at(self.operand(n, 1), &c)?;
        let gamma = self.value_at(self.operand(n, 2), &c)?;
        Ok(w * (gamma / (var + f(eps)).sqrt()))
    }

    /// The folded bias (the conv's own bias, when it has one, included).
    fn fold_bn_bias(&mut self, n: NodeId, flat: &Expr, eps: f64) -> Result<Expr, LowerError> {
        let [mean, var, gamma, beta] = self.operands_at(n, flat)?;
        let b = if self.graph.operands(n).len() > 4 {
            self.operand_at(n, 4, flat)?
        } else {
            Expr::F32(0.0)
        };
        Ok((b - mean) * (gamma / (var + f(eps)).sqrt()) + beta)
    }

    fn least_squares_grad(
        &mut self,
        n: NodeId,
        flat: &Expr,
        ignore_value: f64,
        reduction: Reduction,
    ) -> Result<Expr, LowerError> {
        let [p, t] = self.operands_at(n, flat)?;
        let d = self.value_at(self.operand(n, 2), &Expr::Int(0))?;
        let scale = self.loss_scale(reduction);
        let valid = t.clone().ne(f(ignore_value));
        Ok(Expr::select(valid, f(2.0) * (p - t) * scale * d, 0.0f32))
    }
}
