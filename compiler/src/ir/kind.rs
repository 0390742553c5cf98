//! What kind of computation each op is: the one classification that fusion,
//! recomputation and lowering share.
//!
//! [`Op::kind`] is an exhaustive `match` over every op, so a new op must be classified
//! before anything compiles; the users match exhaustively over [`OpKind`] in turn.

use super::ops::{Op, Reduction};

/// Which of the three convolutions an op is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvRole {
    /// `conv2d`.
    Forward,
    /// `conv2d_grad_input`.
    GradInput,
    /// `conv2d_grad_weight`.
    GradWeight,
}

/// The kind of computation an op performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Supplied from outside: inputs, parameters, constants.
    Leaf,
    /// Computed element by element from its operands at the same element; an operand of
    /// another shape broadcasts (per-channel statistics, scalars such as the step counter,
    /// sizes of 1). `forward` is false for gradients and the optimiser.
    Elementwise { forward: bool },
    /// A convolution or one of its gradients (an implicit GEMM).
    Conv(ConvRole),
    /// Max or average pooling (`grad`: its gradient): a gather over windows.
    Pool { grad: bool },
    /// Channel concatenation (`grad`: its gradient, a channel slice): a gather that reads
    /// each output channel from one operand.
    Concat { grad: bool },
    /// A sum over the dimensions where the result has size 1 (global average pooling, and
    /// `sum_to`, the gradient of a broadcast operand): a reduction per result element.
    Reduce,
    /// Bilinear resize (`grad`: its adjoint): a gather over taps.
    Resize { grad: bool },
    /// The per-channel sum over batch and space (a reduction).
    ChannelSum,
    /// A loss over all pixels (a reduction to a scalar).
    Loss { reduction: Reduction },
    /// The gradient of a loss with respect to its prediction (a gather over classes).
    LossGrad { reduction: Reduction },
    /// Folding frozen batch norm into a convolution's weights or bias (a gather by channel).
    FoldBn,
}

impl Op {
    /// The kind of computation this op is.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Input { .. } | Op::Param { .. } | Op::Constant { .. } => OpKind::Leaf,
            Op::Relu
            | Op::Add
            | Op::Mul
            | Op::Sigmoid
            | Op::BatchNorm { .. }
            | Op::Dropout { .. } => OpKind::Elementwise { forward: true },
            Op::ReluGrad
            | Op::SigmoidGrad
            | Op::GlobalAvgPool2dGrad { .. }
            | Op::BatchNormGrad { .. }
            | Op::SgdMomentum { .. }
            | Op::SgdStep { .. } => OpKind::Elementwise { forward: false },
            Op::Conv2d { .. } => OpKind::Conv(ConvRole::Forward),
            Op::Conv2dGradInput { .. } => OpKind::Conv(ConvRole::GradInput),
            Op::Conv2dGradWeight { .. } => OpKind::Conv(ConvRole::GradWeight),
            Op::MaxPool2d { .. } | Op::AvgPool2d { .. } => OpKind::Pool { grad: false },
            Op::MaxPool2dGrad { .. } | Op::AvgPool2dGrad { .. } => OpKind::Pool { grad: true },
            Op::Concat => OpKind::Concat { grad: false },
            Op::SliceChannels { .. } => OpKind::Concat { grad: true },
            Op::GlobalAvgPool2d | Op::SumTo { .. } => OpKind::Reduce,
            Op::ResizeBilinear { .. } => OpKind::Resize { grad: false },
            Op::ResizeBilinearGrad { .. } => OpKind::Resize { grad: true },
            Op::ChannelSum => OpKind::ChannelSum,
            Op::SoftmaxCrossEntropy { reduction, .. } | Op::LeastSquares { reduction, .. } => {
                OpKind::Loss {
                    reduction: *reduction,
                }
            }
            Op::SoftmaxCrossEntropyGrad { reduction, .. }
            | Op::LeastSquaresGrad { reduction, .. } => OpKind::LossGrad {
                reduction: *reduction,
            },
            Op::FoldBnWeight { .. } | Op::FoldBnBias { .. } => OpKind::FoldBn,
        }
    }
}

impl OpKind {
    /// Heavy ops that define a fused kernel (a kernel has at most one).
    pub fn is_anchor(self) -> bool {
        match self {
            OpKind::Leaf | OpKind::Elementwise { .. } => false,
            OpKind::Conv(_)
            | OpKind::Pool { .. }
            | OpKind::Concat { .. }
            | OpKind::Reduce
            | OpKind::Resize { .. }
            | OpKind::ChannelSum
            | OpKind::Loss { .. }
            | OpKind::LossGrad { .. }
            | OpKind::FoldBn => true,
        }
    }

    /// Computed element by element (operands of other shapes broadcast).
    pub fn is_elementwise(self) -> bool {
        match self {
            OpKind::Elementwise { .. } => true,
            OpKind::Leaf
            | OpKind::Conv(_)
            | OpKind::Pool { .. }
            | OpKind::Concat { .. }
            | OpKind::Reduce
            | OpKind::Resize { .. }
            | OpKind::ChannelSum
            | OpKind::Loss { .. }
            | OpKind::LossGrad { .. }
            | OpKind::FoldBn => false,
        }
    }
}
