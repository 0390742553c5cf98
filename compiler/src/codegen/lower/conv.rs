//! The glue between a fused kernel and the implicit GEMMs of [`crate::codegen::gemm`]: a
//! convolution anchor becomes a [`ConvProblem`], and the launch supplies the GEMM's operands
//! (the fused prologue) and stores its results (the fused epilogue).

use super::{dims4, Launch, LowerError, LoweredLaunch, BLOCK};
use crate::codegen::gemm::{conv_kernel, ConvIo, ConvKind, ConvOperand, ConvProblem, Precision};
use crate::codegen::kir::{Buf, Expr, KernelBuilder};
use crate::ir::{Graph, NodeId, Op};
use crate::passes::fusion::Kernel;

/// A convolution or one of its gradients as an implicit GEMM multiplying in `precision`.
pub(super) fn lower(
    graph: &Graph,
    kernel: &Kernel,
    a: NodeId,
    name: &str,
    precision: Precision,
) -> Result<LoweredLaunch, LowerError> {
    let (problem, operands) = conv_problem(graph, a)?;
    let mut io = ConvLaunch {
        launch: Launch::new(graph, kernel, name, BLOCK),
        anchor: a,
        operands,
        result_dims: graph.node(a).ty.dims.clone(),
    };
    let grid = conv_kernel(&mut io, &problem, precision)?;
    io.launch.finish(grid)
}

/// The node behind each GEMM operand (`None` where the conv has no such operand).
#[derive(Clone, Copy, Debug)]
pub(super) struct ConvOperands {
    x: Option<NodeId>,
    w: Option<NodeId>,
    dy: Option<NodeId>,
    bias: Option<NodeId>,
}

impl ConvOperands {
    /// The node behind `operand`.
    fn node(&self, operand: ConvOperand) -> Option<NodeId> {
        match operand {
            ConvOperand::X => self.x,
            ConvOperand::W => self.w,
            ConvOperand::Dy => self.dy,
            ConvOperand::Bias => self.bias,
        }
    }
}

/// The GEMM problem of conv anchor `a`, and the nodes behind its operands.
pub(super) fn conv_problem(
    graph: &Graph,
    a: NodeId,
) -> Result<(ConvProblem, ConvOperands), LowerError> {
    let ops = graph.operands(a);
    let dims = |n: NodeId| dims4(&graph.node(n).ty.dims);
    let (kind, stride, pad, dilation, groups) = match &graph.node(a).op {
        Op::Conv2d {
            stride,
            pad,
            dilation,
            groups,
        } => (ConvKind::Forward, stride, pad, dilation, groups),
        Op::Conv2dGradInput {
            stride,
            pad,
            dilation,
            groups,
            ..
        } => (ConvKind::GradInput, stride, pad, dilation, groups),
        Op::Conv2dGradWeight {
            stride,
            pad,
            dilation,
            groups,
            ..
        } => (ConvKind::GradWeight, stride, pad, dilation, groups),
        other => {
            return Err(LowerError(format!(
                "rfn.{} is not a conv",
                other.mnemonic()
            )))
        }
    };
    // The node behind each GEMM operand, and the three shapes (x, w, y).
    let (operands, [x, w, y]) = match kind {
        ConvKind::Forward => (
            ConvOperands {
                x: Some(ops[0]),
                w: Some(ops[1]),
                dy: None,
                bias: ops.get(2).copied(),
            },
            [dims(ops[0])?, dims(ops[1])?, dims(a)?],
        ),
        ConvKind::GradInput => (
            ConvOperands {
                x: None,
                w: Some(ops[1]),
                dy: Some(ops[0]),
                bias: None,
            },
            [dims(a)?, dims(ops[1])?, dims(ops[0])?],
        ),
        ConvKind::GradWeight => (
            ConvOperands {
                x: Some(ops[0]),
                w: None,
                dy: Some(ops[1]),
                bias: None,
            },
            [dims(ops[0])?, dims(a)?, dims(ops[1])?],
        ),
    };
    let problem = ConvProblem {
        kind,
        x,
        w,
        y,
        stride: *stride,
        pad: *pad,
        dilation: *dilation,
        groups: *groups,
        bias: operands.bias.is_some(),
    };
    Ok((problem, operands))
}

/// The launch of a conv anchor as the GEMM sees it.
struct ConvLaunch<'g> {
    launch: Launch<'g>,
    anchor: NodeId,
    operands: ConvOperands,
    /// The shape of the conv's result (`y`, `dx` or `dw`), the kernel's domain.
    result_dims: Vec<u64>,
}

impl ConvIo for ConvLaunch<'_> {
    type Error = LowerError;

    fn builder(&mut self) -> &mut KernelBuilder {
        &mut self.launch.b
    }

    /// The operand's value at `flat`, computing fused producers (the prologue) in place.
    fn load(&mut self, operand: ConvOperand, flat: Expr) -> Result<Expr, LowerError> {
        match self.operands.node(operand) {
            Some(node) => self.launch.value_at(node, &flat),
            None => Err(LowerError(format!(
                "the GEMM asked for {operand:?}, which rfn.{} does not have",
                self.launch.graph.node(self.anchor).op.mnemonic()
            ))),
        }
    }

    /// The buffer of an operand computed by an earlier kernel (or a leaf): read as it is.
    fn plain(&mut self, operand: ConvOperand) -> Option<Buf> {
        let node = self.operands.node(operand)?;
        self.launch.plain_buf(node)
    }

    /// Stores every output of the kernel at result element `flat`, the anchor's value
    /// being the GEMM's (the epilogue).
    fn store(&mut self, flat: Expr, value: Expr) -> Result<(), LowerError> {
        let v = self.launch.b.let_(value);
        self.launch
            .emit_outputs(&flat, &self.result_dims, Some((self.anchor, v)))
    }
}
