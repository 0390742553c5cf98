//! The operations of the graph IR and their attributes.
//!
//! Every op has one result. Its printed name is `rfn.<mnemonic>`; its attributes are listed
//! by [`Op::attrs`] in alphabetical order (the order `mlir-opt` prints them) and read back by
//! [`Op::from_parts`], so that print -> parse -> print is the identity.

use std::fmt;

/// An attribute value in the text form.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Ints(Vec<i64>),
    Strs(Vec<String>),
}

impl Attr {
    fn kind(&self) -> &'static str {
        match self {
            Attr::Int(_) => "an integer",
            Attr::Float(_) => "a float",
            Attr::Bool(_) => "a boolean",
            Attr::Str(_) => "a string",
            Attr::Ints(_) => "an integer array",
            Attr::Strs(_) => "a string array",
        }
    }
}

/// Formats a float so that MLIR's lexer reads it back as a float: always with a `.`.
pub fn format_float(v: f64) -> String {
    let s = format!("{v:?}");
    if s.contains('.') || s.contains("inf") || s.contains("NaN") {
        return s;
    }
    match s.find('e') {
        Some(e) => format!("{}.0{}", &s[..e], &s[e..]),
        None => format!("{s}.0"),
    }
}

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attr::Int(v) => write!(f, "{v}"),
            Attr::Float(v) => write!(f, "{}", format_float(*v)),
            Attr::Bool(v) => write!(f, "{v}"),
            Attr::Str(s) => write!(f, "\"{}\"", escape(s)),
            Attr::Ints(vs) => {
                let parts: Vec<String> = vs.iter().map(|v| v.to_string()).collect();
                write!(f, "[{}]", parts.join(", "))
            }
            Attr::Strs(vs) => {
                let parts: Vec<String> = vs.iter().map(|v| format!("\"{}\"", escape(v))).collect();
                write!(f, "[{}]", parts.join(", "))
            }
        }
    }
}

/// Escapes a string for an MLIR string literal.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// What a parameter tensor is; decides its initialisation and whether training updates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    ConvWeight,
    ConvBias,
    BnMean,
    BnVar,
    BnGamma,
    BnBeta,
    /// Optimizer state: the momentum buffer of the parameter with the same name minus
    /// `.momentum`. Starts at zero.
    Momentum,
}

impl ParamKind {
    pub const ALL: [ParamKind; 7] = [
        ParamKind::ConvWeight,
        ParamKind::ConvBias,
        ParamKind::BnMean,
        ParamKind::BnVar,
        ParamKind::BnGamma,
        ParamKind::BnBeta,
        ParamKind::Momentum,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ParamKind::ConvWeight => "conv_weight",
            ParamKind::ConvBias => "conv_bias",
            ParamKind::BnMean => "bn_mean",
            ParamKind::BnVar => "bn_var",
            ParamKind::BnGamma => "bn_gamma",
            ParamKind::BnBeta => "bn_beta",
            ParamKind::Momentum => "momentum",
        }
    }

    pub fn from_name(s: &str) -> Option<ParamKind> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Running statistics of batch norm are buffers, not learnable parameters
    /// (PyTorch's `parameters()` leaves them out, and so does the parameter count).
    pub fn is_statistic(self) -> bool {
        matches!(self, ParamKind::BnMean | ParamKind::BnVar)
    }

    /// Frozen batch norm is never trained; optimizer state is not a parameter to train.
    pub fn is_trainable(self) -> bool {
        matches!(self, ParamKind::ConvWeight | ParamKind::ConvBias)
    }
}

/// How a loss reduces over the pixels that count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// Sum over valid pixels divided by their number (0 when there are none).
    Mean,
    /// Plain sum over valid pixels.
    Sum,
}

impl Reduction {
    pub fn name(self) -> &'static str {
        match self {
            Reduction::Mean => "mean",
            Reduction::Sum => "sum",
        }
    }

    pub fn from_name(s: &str) -> Option<Reduction> {
        match s {
            "mean" => Some(Reduction::Mean),
            "sum" => Some(Reduction::Sum),
            _ => None,
        }
    }
}

/// One operation of the graph IR. Operands are edges of the graph; see [`crate::ir::Graph`].
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A network input (image, labels), fed at run time.
    Input {
        name: String,
    },
    /// A learned or frozen parameter with a stable hierarchical name.
    Param {
        name: String,
        kind: ParamKind,
    },
    /// `conv2d(x, w[, b])`: NCHW input, OIHW weight, optional per-channel bias.
    Conv2d {
        stride: [u64; 2],
        pad: [u64; 4],
        dilation: [u64; 2],
        groups: u64,
    },
    /// Frozen batch norm `(x - mean) / sqrt(var + eps) * gamma + beta`; operands x, mean, var, gamma, beta.
    BatchNorm {
        eps: f64,
    },
    Relu,
    /// Elementwise sum of two tensors of the same type.
    Add,
    /// Max pooling; padding is -inf, so padded cells never win.
    MaxPool2d {
        kernel: [u64; 2],
        stride: [u64; 2],
        pad: [u64; 4],
    },
    /// Bilinear resize of the two spatial dimensions to `size`.
    ResizeBilinear {
        size: [u64; 2],
        align_corners: bool,
    },
    /// Inverted dropout with drop probability `rate`. With one operand (inference) it is the
    /// identity; with a second operand, the training step counter (i32 scalar), it keeps an
    /// element with probability 1 - rate and scales it by 1 / (1 - rate). The keep decision
    /// is a pure function of (seed, step, stream, element index), so applying the same op to
    /// the upstream gradient reproduces the forward mask exactly.
    Dropout {
        rate: f64,
        seed: u64,
        stream: u64,
    },
    /// Per-pixel softmax cross-entropy of logits NxCxHxW against labels NxHxW (i32).
    SoftmaxCrossEntropy {
        ignore_index: i64,
        reduction: Reduction,
    },
    /// Squared error `sum (pred - target)^2` of a prediction against a target of the same
    /// shape (Nx1xHxW for depth); elements whose target equals `ignore_value` contribute
    /// nothing. `Mean` divides by the number of elements that count (0 if none).
    LeastSquares {
        ignore_value: f64,
        reduction: Reduction,
    },
    /// A scalar f32 constant (`tensor<f32>`).
    Constant {
        value: f64,
    },
    /// Concatenation of NCHW tensors along the channels (same N, H and W), operands in order.
    Concat,
    /// Elementwise product with broadcasting: equal shapes, a rank-0 scalar, or equal ranks
    /// whose sizes are equal or 1 in every dimension.
    Mul,
    /// The logistic function `1 / (1 + exp(-x))`.
    Sigmoid,
    /// Average pooling; `count_include_pad` divides every window by `kh * kw` (PyTorch's
    /// default), otherwise by the number of its cells inside the input.
    AvgPool2d {
        kernel: [u64; 2],
        stride: [u64; 2],
        pad: [u64; 4],
        count_include_pad: bool,
    },
    /// The mean over the spatial dimensions: `NxCxHxW -> NxCx1x1`.
    GlobalAvgPool2d,

    // ----- gradients (made by autodiff) --------------------------------------------------
    /// Gradient of conv2d with respect to its input: `(dy, w) -> dx` of size `input_size`.
    Conv2dGradInput {
        stride: [u64; 2],
        pad: [u64; 4],
        dilation: [u64; 2],
        groups: u64,
        input_size: [u64; 2],
    },
    /// Gradient of conv2d with respect to its weight: `(x, dy) -> dw` with a `kernel` window.
    Conv2dGradWeight {
        stride: [u64; 2],
        pad: [u64; 4],
        dilation: [u64; 2],
        groups: u64,
        kernel: [u64; 2],
    },
    /// Sum over batch and space per channel: `dy (NxCxHxW) -> C` (the gradient of a bias).
    ChannelSum,
    /// Gradient of frozen batch norm w.r.t. its input: `(dy, var, gamma) -> dy * gamma / sqrt(var + eps)`.
    BatchNormGrad {
        eps: f64,
    },
    /// Gradient of relu from its output: `(dy, y) -> dy where y > 0, else 0`.
    ReluGrad,
    /// Gradient of max pooling: `(dy, x) -> dx`; each window's gradient goes to its first
    /// maximal element in row-major order (PyTorch's rule).
    MaxPool2dGrad {
        kernel: [u64; 2],
        stride: [u64; 2],
        pad: [u64; 4],
    },
    /// Adjoint of bilinear resize: `dy -> dx` of spatial size `input_size`.
    ResizeBilinearGrad {
        align_corners: bool,
        input_size: [u64; 2],
    },
    /// `(logits, labels, dloss) -> dlogits` of softmax cross-entropy.
    SoftmaxCrossEntropyGrad {
        ignore_index: i64,
        reduction: Reduction,
    },
    /// `(pred, target, dloss) -> dpred` of least squares.
    LeastSquaresGrad {
        ignore_value: f64,
        reduction: Reduction,
    },
    /// Channels `start..start + size` of an NCHW tensor (the gradient of one concat operand).
    SliceChannels {
        start: u64,
        size: u64,
    },
    /// The sum over the dimensions that broadcasting expanded, down to `shape` (the gradient
    /// of a broadcast `mul` operand); an empty `shape` sums everything to a scalar.
    SumTo {
        shape: Vec<u64>,
    },
    /// Gradient of the sigmoid from its output: `(dy, y) -> dy * y * (1 - y)`.
    SigmoidGrad,
    /// Adjoint of average pooling: `dy -> dx` of spatial size `input_size`.
    AvgPool2dGrad {
        kernel: [u64; 2],
        stride: [u64; 2],
        pad: [u64; 4],
        count_include_pad: bool,
        input_size: [u64; 2],
    },
    /// Adjoint of global average pooling: `dy (NxCx1x1) -> dy / (h * w)` spread over
    /// `input_size = [h, w]`.
    GlobalAvgPool2dGrad {
        input_size: [u64; 2],
    },

    // ----- batch-norm folding (the prepare program, run once when weights load) ---------
    /// `(w, var, gamma) -> w * gamma / sqrt(var + eps)`, per output channel of `w`.
    FoldBnWeight {
        eps: f64,
    },
    /// `(mean, var, gamma, beta[, b]) -> (b - mean) * gamma / sqrt(var + eps) + beta`
    /// (`b` = 0 when absent).
    FoldBnBias {
        eps: f64,
    },

    // ----- optimizer (made by the training step) ---------------------------------------
    /// SGD momentum buffer update: `(v, g, p) -> momentum * v + g + weight_decay * p`.
    SgdMomentum {
        momentum: f64,
        weight_decay: f64,
    },
    /// SGD parameter update: `(p, v, factor) -> p - lr * factor * v`, where `factor` is
    /// the scalar learning-rate schedule of the step (the training step's `lr_factor`).
    SgdStep {
        lr: f64,
    },
}

/// Error from reading an op back from its text form.
#[derive(Debug, Clone, PartialEq)]
pub struct OpParseError(pub String);

impl Op {
    /// The mnemonic after `rfn.`.
    pub fn mnemonic(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::Conv2d { .. } => "conv2d",
            Op::BatchNorm { .. } => "batch_norm",
            Op::Relu => "relu",
            Op::Add => "add",
            Op::MaxPool2d { .. } => "max_pool2d",
            Op::ResizeBilinear { .. } => "resize_bilinear",
            Op::Dropout { .. } => "dropout",
            Op::SoftmaxCrossEntropy { .. } => "softmax_cross_entropy",
            Op::LeastSquares { .. } => "least_squares",
            Op::Constant { .. } => "constant",
            Op::Concat => "concat",
            Op::Mul => "mul",
            Op::Sigmoid => "sigmoid",
            Op::AvgPool2d { .. } => "avg_pool2d",
            Op::GlobalAvgPool2d => "global_avg_pool2d",
            Op::SliceChannels { .. } => "slice_channels",
            Op::SumTo { .. } => "sum_to",
            Op::SigmoidGrad => "sigmoid_grad",
            Op::AvgPool2dGrad { .. } => "avg_pool2d_grad",
            Op::GlobalAvgPool2dGrad { .. } => "global_avg_pool2d_grad",
            Op::Conv2dGradInput { .. } => "conv2d_grad_input",
            Op::Conv2dGradWeight { .. } => "conv2d_grad_weight",
            Op::ChannelSum => "channel_sum",
            Op::BatchNormGrad { .. } => "batch_norm_grad",
            Op::ReluGrad => "relu_grad",
            Op::MaxPool2dGrad { .. } => "max_pool2d_grad",
            Op::ResizeBilinearGrad { .. } => "resize_bilinear_grad",
            Op::SoftmaxCrossEntropyGrad { .. } => "softmax_cross_entropy_grad",
            Op::LeastSquaresGrad { .. } => "least_squares_grad",
            Op::SgdMomentum { .. } => "sgd_momentum",
            Op::SgdStep { .. } => "sgd_step",
            Op::FoldBnWeight { .. } => "fold_bn_weight",
            Op::FoldBnBias { .. } => "fold_bn_bias",
        }
    }

    /// Ops whose value is supplied from outside rather than computed.
    pub fn is_leaf(&self) -> bool {
        matches!(
            self,
            Op::Input { .. } | Op::Param { .. } | Op::Constant { .. }
        )
    }

    pub fn is_loss(&self) -> bool {
        matches!(
            self,
            Op::SoftmaxCrossEntropy { .. } | Op::LeastSquares { .. }
        )
    }

    /// Allowed operand counts, inclusive; `usize::MAX` as the upper bound means "any number"
    /// (`concat`).
    pub fn arity(&self) -> (usize, usize) {
        match self {
            Op::Input { .. } | Op::Param { .. } | Op::Constant { .. } => (0, 0),
            Op::Concat => (1, usize::MAX),
            Op::Conv2d { .. } => (2, 3),
            Op::BatchNorm { .. } => (5, 5),
            Op::Dropout { .. } => (1, 2),
            Op::Relu
            | Op::MaxPool2d { .. }
            | Op::ResizeBilinear { .. }
            | Op::ChannelSum
            | Op::ResizeBilinearGrad { .. }
            | Op::Sigmoid
            | Op::AvgPool2d { .. }
            | Op::GlobalAvgPool2d
            | Op::SliceChannels { .. }
            | Op::SumTo { .. }
            | Op::AvgPool2dGrad { .. }
            | Op::GlobalAvgPool2dGrad { .. } => (1, 1),
            Op::Add
            | Op::Mul
            | Op::SigmoidGrad
            | Op::SoftmaxCrossEntropy { .. }
            | Op::LeastSquares { .. }
            | Op::Conv2dGradInput { .. }
            | Op::Conv2dGradWeight { .. }
            | Op::ReluGrad
            | Op::MaxPool2dGrad { .. } => (2, 2),
            Op::BatchNormGrad { .. }
            | Op::SoftmaxCrossEntropyGrad { .. }
            | Op::LeastSquaresGrad { .. }
            | Op::SgdMomentum { .. }
            | Op::SgdStep { .. }
            | Op::FoldBnWeight { .. } => (3, 3),
            Op::FoldBnBias { .. } => (4, 5),
        }
    }

    /// The allowed operand counts in words: `1 operand`, `2 or 3 operands`, `at least 1
    /// operand`.
    pub fn arity_text(&self) -> String {
        let noun = |n: usize| if n == 1 { "operand" } else { "operands" };
        match self.arity() {
            (lo, usize::MAX) => format!("at least {lo} {}", noun(lo)),
            (lo, hi) if lo == hi => format!("{lo} {}", noun(lo)),
            (lo, hi) => format!("{lo} or {hi} {}", noun(hi)),
        }
    }

    /// Attributes in alphabetical order.
    pub fn attrs(&self) -> Vec<(&'static str, Attr)> {
        let ints = |v: &[u64]| Attr::Ints(v.iter().map(|&x| x as i64).collect());
        match self {
            Op::Input { name } => vec![("name", Attr::Str(name.clone()))],
            Op::Param { name, kind } => vec![
                ("kind", Attr::Str(kind.name().into())),
                ("name", Attr::Str(name.clone())),
            ],
            Op::Conv2d {
                stride,
                pad,
                dilation,
                groups,
            } => vec![
                ("dilation", ints(dilation)),
                ("groups", Attr::Int(*groups as i64)),
                ("pad", ints(pad)),
                ("stride", ints(stride)),
            ],
            Op::Conv2dGradInput {
                stride,
                pad,
                dilation,
                groups,
                input_size,
            } => vec![
                ("dilation", ints(dilation)),
                ("groups", Attr::Int(*groups as i64)),
                ("input_size", ints(input_size)),
                ("pad", ints(pad)),
                ("stride", ints(stride)),
            ],
            Op::Conv2dGradWeight {
                stride,
                pad,
                dilation,
                groups,
                kernel,
            } => vec![
                ("dilation", ints(dilation)),
                ("groups", Attr::Int(*groups as i64)),
                ("kernel", ints(kernel)),
                ("pad", ints(pad)),
                ("stride", ints(stride)),
            ],
            Op::Constant { value } => vec![("value", Attr::Float(*value))],
            Op::ChannelSum | Op::ReluGrad => vec![],
            Op::BatchNormGrad { eps } => vec![("eps", Attr::Float(*eps))],
            Op::MaxPool2dGrad {
                kernel,
                stride,
                pad,
            } => vec![
                ("kernel", ints(kernel)),
                ("pad", ints(pad)),
                ("stride", ints(stride)),
            ],
            Op::ResizeBilinearGrad {
                align_corners,
                input_size,
            } => vec![
                ("align_corners", Attr::Bool(*align_corners)),
                ("input_size", ints(input_size)),
            ],
            Op::SoftmaxCrossEntropyGrad {
                ignore_index,
                reduction,
            } => vec![
                ("ignore_index", Attr::Int(*ignore_index)),
                ("reduction", Attr::Str(reduction.name().into())),
            ],
            Op::LeastSquaresGrad {
                ignore_value,
                reduction,
            } => vec![
                ("ignore_value", Attr::Float(*ignore_value)),
                ("reduction", Attr::Str(reduction.name().into())),
            ],
            Op::SgdMomentum {
                momentum,
                weight_decay,
            } => vec![
                ("momentum", Attr::Float(*momentum)),
                ("weight_decay", Attr::Float(*weight_decay)),
            ],
            Op::SgdStep { lr } => vec![("lr", Attr::Float(*lr))],
            Op::FoldBnWeight { eps } | Op::FoldBnBias { eps } => vec![("eps", Attr::Float(*eps))],
            Op::BatchNorm { eps } => vec![("eps", Attr::Float(*eps))],
            Op::Relu
            | Op::Add
            | Op::Concat
            | Op::Mul
            | Op::Sigmoid
            | Op::GlobalAvgPool2d
            | Op::SigmoidGrad => vec![],
            Op::AvgPool2d {
                kernel,
                stride,
                pad,
                count_include_pad,
            } => vec![
                ("count_include_pad", Attr::Bool(*count_include_pad)),
                ("kernel", ints(kernel)),
                ("pad", ints(pad)),
                ("stride", ints(stride)),
            ],
            Op::AvgPool2dGrad {
                kernel,
                stride,
                pad,
                count_include_pad,
                input_size,
            } => vec![
                ("count_include_pad", Attr::Bool(*count_include_pad)),
                ("input_size", ints(input_size)),
                ("kernel", ints(kernel)),
                ("pad", ints(pad)),
                ("stride", ints(stride)),
            ],
            Op::GlobalAvgPool2dGrad { input_size } => vec![("input_size", ints(input_size))],
            Op::SliceChannels { start, size } => vec![
                ("size", Attr::Int(*size as i64)),
                ("start", Attr::Int(*start as i64)),
            ],
            Op::SumTo { shape } => vec![("shape", ints(shape))],
            Op::MaxPool2d {
                kernel,
                stride,
                pad,
            } => vec![
                ("kernel", ints(kernel)),
                ("pad", ints(pad)),
                ("stride", ints(stride)),
            ],
            Op::ResizeBilinear {
                size,
                align_corners,
            } => vec![
                ("align_corners", Attr::Bool(*align_corners)),
                ("size", ints(size)),
            ],
            Op::Dropout { rate, seed, stream } => vec![
                ("rate", Attr::Float(*rate)),
                ("seed", Attr::Int(*seed as i64)),
                ("stream", Attr::Int(*stream as i64)),
            ],
            Op::SoftmaxCrossEntropy {
                ignore_index,
                reduction,
            } => vec![
                ("ignore_index", Attr::Int(*ignore_index)),
                ("reduction", Attr::Str(reduction.name().into())),
            ],
            Op::LeastSquares {
                ignore_value,
                reduction,
            } => vec![
                ("ignore_value", Attr::Float(*ignore_value)),
                ("reduction", Attr::Str(reduction.name().into())),
            ],
        }
    }

    /// Rebuilds an op from its mnemonic and attributes (the inverse of [`Op::attrs`]).
    pub fn from_parts(mnemonic: &str, attrs: &[(String, Attr)]) -> Result<Op, OpParseError> {
        let mut reader = AttrReader {
            op: mnemonic,
            attrs,
            used: vec![false; attrs.len()],
        };
        let op = match mnemonic {
            "input" => Op::Input {
                name: reader.string("name")?,
            },
            "param" => {
                let kind = reader.string("kind")?;
                let kind = ParamKind::from_name(&kind).ok_or_else(|| {
                    OpParseError(format!("unknown parameter kind \"{kind}\" on rfn.param"))
                })?;
                Op::Param {
                    name: reader.string("name")?,
                    kind,
                }
            }
            "conv2d" => Op::Conv2d {
                dilation: reader.array("dilation")?,
                groups: reader.positive("groups")?,
                pad: reader.array("pad")?,
                stride: reader.array("stride")?,
            },
            "batch_norm" => Op::BatchNorm {
                eps: reader.float("eps")?,
            },
            "relu" => Op::Relu,
            "add" => Op::Add,
            "max_pool2d" => Op::MaxPool2d {
                kernel: reader.array("kernel")?,
                pad: reader.array("pad")?,
                stride: reader.array("stride")?,
            },
            "resize_bilinear" => Op::ResizeBilinear {
                align_corners: reader.boolean("align_corners")?,
                size: reader.array("size")?,
            },
            "dropout" => Op::Dropout {
                rate: reader.float("rate")?,
                seed: reader.non_negative("seed")?,
                stream: reader.non_negative("stream")?,
            },
            "constant" => Op::Constant {
                value: reader.float("value")?,
            },
            "conv2d_grad_input" => Op::Conv2dGradInput {
                dilation: reader.array("dilation")?,
                groups: reader.positive("groups")?,
                input_size: reader.array("input_size")?,
                pad: reader.array("pad")?,
                stride: reader.array("stride")?,
            },
            "conv2d_grad_weight" => Op::Conv2dGradWeight {
                dilation: reader.array("dilation")?,
                groups: reader.positive("groups")?,
                kernel: reader.array("kernel")?,
                pad: reader.array("pad")?,
                stride: reader.array("stride")?,
            },
            "channel_sum" => Op::ChannelSum,
            "batch_norm_grad" => Op::BatchNormGrad {
                eps: reader.float("eps")?,
            },
            "relu_grad" => Op::ReluGrad,
            "max_pool2d_grad" => Op::MaxPool2dGrad {
                kernel: reader.array("kernel")?,
                pad: reader.array("pad")?,
                stride: reader.array("stride")?,
            },
            "resize_bilinear_grad" => Op::ResizeBilinearGrad {
                align_corners: reader.boolean("align_corners")?,
                input_size: reader.array("input_size")?,
            },
            "softmax_cross_entropy_grad" => Op::SoftmaxCrossEntropyGrad {
                ignore_index: reader.int("ignore_index")?,
                reduction: reader.reduction()?,
            },
            "least_squares_grad" => Op::LeastSquaresGrad {
                ignore_value: reader.float("ignore_value")?,
                reduction: reader.reduction()?,
            },
            "sgd_momentum" => Op::SgdMomentum {
                momentum: reader.float("momentum")?,
                weight_decay: reader.float("weight_decay")?,
            },
            "sgd_step" => Op::SgdStep {
                lr: reader.float("lr")?,
            },
            "fold_bn_weight" => Op::FoldBnWeight {
                eps: reader.float("eps")?,
            },
            "fold_bn_bias" => Op::FoldBnBias {
                eps: reader.float("eps")?,
            },
            "softmax_cross_entropy" => Op::SoftmaxCrossEntropy {
                ignore_index: reader.int("ignore_index")?,
                reduction: reader.reduction()?,
            },
            "least_squares" => Op::LeastSquares {
                ignore_value: reader.float("ignore_value")?,
                reduction: reader.reduction()?,
            },
            "concat" => Op::Concat,
            "mul" => Op::Mul,
            "sigmoid" => Op::Sigmoid,
            "sigmoid_grad" => Op::SigmoidGrad,
            "global_avg_pool2d" => Op::GlobalAvgPool2d,
            "avg_pool2d" => Op::AvgPool2d {
                count_include_pad: reader.boolean("count_include_pad")?,
                kernel: reader.array("kernel")?,
                pad: reader.array("pad")?,
                stride: reader.array("stride")?,
            },
            "avg_pool2d_grad" => Op::AvgPool2dGrad {
                count_include_pad: reader.boolean("count_include_pad")?,
                input_size: reader.array("input_size")?,
                kernel: reader.array("kernel")?,
                pad: reader.array("pad")?,
                stride: reader.array("stride")?,
            },
            "global_avg_pool2d_grad" => Op::GlobalAvgPool2dGrad {
                input_size: reader.array("input_size")?,
            },
            "slice_channels" => Op::SliceChannels {
                size: reader.positive("size")?,
                start: reader.non_negative("start")?,
            },
            "sum_to" => Op::SumTo {
                shape: reader.dims("shape")?,
            },
            other => return Err(OpParseError(format!("unknown operation \"rfn.{other}\""))),
        };
        reader.finish()?;
        Ok(op)
    }
}

struct AttrReader<'a> {
    op: &'a str,
    attrs: &'a [(String, Attr)],
    used: Vec<bool>,
}

impl AttrReader<'_> {
    fn get(&mut self, key: &str) -> Result<&Attr, OpParseError> {
        match self.attrs.iter().position(|(k, _)| k == key) {
            Some(i) => {
                self.used[i] = true;
                Ok(&self.attrs[i].1)
            }
            None => Err(OpParseError(format!(
                "rfn.{} needs the attribute `{key}`",
                self.op
            ))),
        }
    }

    fn wrong(&self, key: &str, want: &str, got: &Attr) -> OpParseError {
        OpParseError(format!(
            "attribute `{key}` of rfn.{} must be {want}, found {}",
            self.op,
            got.kind()
        ))
    }

    fn string(&mut self, key: &str) -> Result<String, OpParseError> {
        match self.get(key)?.clone() {
            Attr::Str(s) => Ok(s),
            other => Err(self.wrong(key, "a string", &other)),
        }
    }

    fn int(&mut self, key: &str) -> Result<i64, OpParseError> {
        match self.get(key)?.clone() {
            Attr::Int(v) => Ok(v),
            other => Err(self.wrong(key, "an integer", &other)),
        }
    }

    fn non_negative(&mut self, key: &str) -> Result<u64, OpParseError> {
        let v = self.int(key)?;
        u64::try_from(v)
            .map_err(|_| OpParseError(format!("attribute `{key}` must not be negative")))
    }

    fn positive(&mut self, key: &str) -> Result<u64, OpParseError> {
        match self.non_negative(key)? {
            0 => Err(OpParseError(format!("attribute `{key}` must be positive"))),
            v => Ok(v),
        }
    }

    fn float(&mut self, key: &str) -> Result<f64, OpParseError> {
        match self.get(key)?.clone() {
            Attr::Float(v) => Ok(v),
            Attr::Int(v) => Ok(v as f64),
            other => Err(self.wrong(key, "a float", &other)),
        }
    }

    fn boolean(&mut self, key: &str) -> Result<bool, OpParseError> {
        match self.get(key)?.clone() {
            Attr::Bool(v) => Ok(v),
            other => Err(self.wrong(key, "a boolean", &other)),
        }
    }

    fn array<const N: usize>(&mut self, key: &str) -> Result<[u64; N], OpParseError> {
        let got = self.get(key)?.clone();
        let Attr::Ints(vs) = &got else {
            return Err(self.wrong(key, &format!("an array of {N} integers"), &got));
        };
        if vs.len() != N || vs.iter().any(|&v| v < 0) {
            return Err(self.wrong(key, &format!("an array of {N} non-negative integers"), &got));
        }
        let mut out = [0u64; N];
        for (o, v) in out.iter_mut().zip(vs) {
            *o = *v as u64;
        }
        Ok(out)
    }

    /// An integer array of any length (a shape), every entry non-negative.
    fn dims(&mut self, key: &str) -> Result<Vec<u64>, OpParseError> {
        let got = self.get(key)?.clone();
        match &got {
            Attr::Ints(vs) if vs.iter().all(|&v| v >= 0) => {
                Ok(vs.iter().map(|&v| v as u64).collect())
            }
            _ => Err(self.wrong(key, "an array of non-negative integers", &got)),
        }
    }

    fn reduction(&mut self) -> Result<Reduction, OpParseError> {
        let s = self.string("reduction")?;
        Reduction::from_name(&s).ok_or_else(|| {
            OpParseError(format!(
                "reduction must be \"mean\" or \"sum\", found \"{s}\""
            ))
        })
    }

    fn finish(self) -> Result<(), OpParseError> {
        match self.used.iter().position(|u| !u) {
            Some(i) => Err(OpParseError(format!(
                "rfn.{} has no attribute `{}`",
                self.op, self.attrs[i].0
            ))),
            None => Ok(()),
        }
    }
}
