//! Built-in operations: the tensor ops that map onto graph IR ops, shape queries and a few
//! compile-time helpers. Each has one signature (used for argument binding and messages)
//! and one case in [`apply`].

use rfnc_compiler::ir::{Op, ParamKind, Reduction};

use super::{Elab, Value};
use crate::ast::{BaseType, Span};
use crate::diagnostic::{Diagnostic, Result};

#[derive(Clone, Copy)]
pub(crate) enum Default {
    Required,
    /// `none`, for an optional parameter (`tensor?`).
    None,
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(&'static str),
}

impl Default {
    pub fn value(self) -> Option<Value> {
        match self {
            Default::Required => None,
            Default::None => Some(Value::None),
            Default::Int(v) => Some(Value::Int(v)),
            Default::Float(v) => Some(Value::Float(v)),
            Default::Bool(v) => Some(Value::Bool(v)),
            Default::Str(v) => Some(Value::Str(v.into())),
        }
    }
}

pub(crate) struct BuiltinParam {
    pub name: &'static str,
    pub base: BaseType,
    pub optional: bool,
    pub default: Default,
}

pub(crate) struct Builtin {
    pub name: &'static str,
    pub params: &'static [BuiltinParam],
    /// Whether calls create parameters (and so take a scope name with `as`).
    pub creates_params: bool,
}

/// Built-ins that set how the network trains; allowed only in the network body.
pub(crate) const TRAINING_SETTINGS: [&str; 3] = ["sgd", "lr_scale", "freeze"];

impl Builtin {
    pub fn signature(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|p| {
                let ty = format!("{}{}", p.base.name(), if p.optional { "?" } else { "" });
                match p.default {
                    Default::Required => format!("{}: {ty}", p.name),
                    Default::None => format!("{}: {ty} = none", p.name),
                    Default::Int(v) => format!("{}: {ty} = {v}", p.name),
                    Default::Float(v) => format!("{}: {ty} = {v:?}", p.name),
                    Default::Bool(v) => format!("{}: {ty} = {v}", p.name),
                    Default::Str(v) => format!("{}: {ty} = \"{v}\"", p.name),
                }
            })
            .collect();
        format!("{}({})", self.name, params.join(", "))
    }
}

const fn req(name: &'static str, base: BaseType) -> BuiltinParam {
    BuiltinParam {
        name,
        base,
        optional: false,
        default: Default::Required,
    }
}

const fn opt(name: &'static str, base: BaseType, default: Default) -> BuiltinParam {
    BuiltinParam {
        name,
        base,
        optional: false,
        default,
    }
}

/// An optional tensor parameter that defaults to `none`.
const fn maybe_tensor(name: &'static str) -> BuiltinParam {
    BuiltinParam {
        name,
        base: BaseType::Tensor,
        optional: true,
        default: Default::None,
    }
}

use BaseType::{Bool, Float, Int, List, Str, Tensor};

const fn b(name: &'static str, params: &'static [BuiltinParam], creates_params: bool) -> Builtin {
    Builtin {
        name,
        params,
        creates_params,
    }
}

static BUILTINS: &[Builtin] = &[
    b(
        "conv",
        &[
            req("x", Tensor),
            req("out", Int),
            opt("k", Int, Default::Int(3)),
            opt("stride", Int, Default::Int(1)),
            opt("pad", Int, Default::Int(-1)),
            opt("dilation", Int, Default::Int(1)),
            opt("groups", Int, Default::Int(1)),
            opt("bias", Bool, Default::Bool(false)),
        ],
        true,
    ),
    b(
        "batchnorm",
        &[req("x", Tensor), opt("eps", Float, Default::Float(1e-5))],
        true,
    ),
    b("relu", &[req("x", Tensor)], false),
    b("sigmoid", &[req("x", Tensor)], false),
    b("mul", &[req("a", Tensor), req("b", Tensor)], false),
    b(
        "concat",
        &[
            req("a", Tensor),
            req("b", Tensor),
            maybe_tensor("c"),
            maybe_tensor("d"),
            maybe_tensor("e"),
            maybe_tensor("f"),
            maybe_tensor("g"),
            maybe_tensor("h"),
        ],
        false,
    ),
    b(
        "avgpool",
        &[
            req("x", Tensor),
            req("k", Int),
            opt("stride", Int, Default::Int(-1)),
            opt("pad", Int, Default::Int(0)),
            opt("count_include_pad", Bool, Default::Bool(true)),
        ],
        false,
    ),
    b("global_avgpool", &[req("x", Tensor)], false),
    b(
        "dropout",
        &[req("x", Tensor), opt("p", Float, Default::Float(0.5))],
        false,
    ),
    b(
        "maxpool",
        &[
            req("x", Tensor),
            req("k", Int),
            opt("stride", Int, Default::Int(-1)),
            opt("pad", Int, Default::Int(0)),
        ],
        false,
    ),
    b(
        "resize",
        &[
            req("x", Tensor),
            req("h", Int),
            req("w", Int),
            opt("align_corners", Bool, Default::Bool(false)),
        ],
        false,
    ),
    b(
        "rescale",
        &[
            req("x", Tensor),
            req("factor", Float),
            opt("align_corners", Bool, Default::Bool(false)),
        ],
        false,
    ),
    b(
        "softmax_cross_entropy",
        &[
            req("scores", Tensor),
            req("labels", Tensor),
            opt("ignore", Int, Default::Int(255)),
            opt("reduction", Str, Default::Str("mean")),
        ],
        false,
    ),
    b(
        "least_squares",
        &[
            req("pred", Tensor),
            req("target", Tensor),
            opt("ignore", Float, Default::Float(0.0)),
            opt("reduction", Str, Default::Str("sum")),
        ],
        false,
    ),
    b("channels", &[req("x", Tensor)], false),
    b("height", &[req("x", Tensor)], false),
    b("width", &[req("x", Tensor)], false),
    b("batch", &[req("x", Tensor)], false),
    b("len", &[req("xs", List)], false),
    b(
        "sgd",
        &[
            opt("lr", Float, Default::Float(5e-4)),
            opt("momentum", Float, Default::Float(0.9)),
            opt("weight_decay", Float, Default::Float(5e-4)),
        ],
        false,
    ),
    b(
        "lr_scale",
        &[req("pattern", Str), req("factor", Float)],
        false,
    ),
    b("freeze", &[req("pattern", Str)], false),
    b("min", &[req("a", Int), req("b", Int)], false),
    b("max", &[req("a", Int), req("b", Int)], false),
];

pub(crate) fn lookup(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

pub(crate) fn names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|b| b.name)
}

fn positive(name: &str, v: i64, span: Span) -> Result<u64> {
    if v >= 1 {
        Ok(v as u64)
    } else {
        Diagnostic::new(format!("`{name}` must be at least 1"))
            .label(span, format!("this is {v}"))
            .err()
    }
}

fn tensor_of(v: &Value) -> rfnc_compiler::ir::NodeId {
    match v {
        Value::Tensor(id) => *id,
        _ => unreachable!("argument conformed to tensor"),
    }
}

fn int_of(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        _ => unreachable!("argument conformed to int"),
    }
}

fn float_of(v: &Value) -> f64 {
    match v {
        Value::Float(f) => *f,
        Value::Int(i) => *i as f64,
        _ => unreachable!("argument conformed to float"),
    }
}

fn bool_of(v: &Value) -> bool {
    matches!(v, Value::Bool(true))
}

fn reduction(v: &(Value, Span)) -> Result<Reduction> {
    let Value::Str(s) = &v.0 else {
        unreachable!("argument conformed to str")
    };
    Reduction::from_name(s).map_or_else(
        || {
            Diagnostic::new(format!("unknown reduction \"{s}\""))
                .label(v.1, "use \"mean\" or \"sum\"")
                .err()
        },
        Ok,
    )
}

/// Checks, in the terms of the call, that a k x k window fits the input's spatial size.
#[allow(clippy::too_many_arguments)]
fn window_fits(
    el: &Elab,
    what: &str,
    hw: [u64; 2],
    k: u64,
    stride: u64,
    pad: u64,
    dilation: u64,
    (x_span, k_span): (Span, Span),
    x: &Value,
) -> Result<()> {
    let fits = hw.iter().all(|&n| {
        rfnc_compiler::ir::window_out(n, pad, pad, k, stride, dilation).is_some_and(|o| o > 0)
    });
    if fits {
        return Ok(());
    }
    let reach = dilation
        .saturating_mul(k.saturating_sub(1))
        .saturating_add(1);
    let dil = if dilation > 1 {
        format!(" (dilation {dilation}: it spans {reach})")
    } else {
        String::new()
    };
    Diagnostic::new(format!(
        "a {k}x{k} {what}{dil} does not fit a {}x{} input padded by {pad}",
        hw[0], hw[1]
    ))
    .label(k_span, format!("{what} size {k}"))
    .label(x_span, format!("this is {}", x.describe(&el.graph)))
    .hint("use a smaller window, more padding, or a larger --input")
    .err()
}

/// Argument `i`, a tensor, as NCHW dims; an error naming the built-in otherwise.
fn need_nchw(el: &Elab, b: &Builtin, args: &[(Value, Span)], i: usize) -> Result<Vec<u64>> {
    let d = el.graph.node(tensor_of(&args[i].0)).ty.dims.clone();
    if d.len() == 4 {
        return Ok(d);
    }
    Diagnostic::new(format!("`{}` needs an NxCxHxW tensor", b.name))
        .label(
            args[i].1,
            format!("this is {}", args[i].0.describe(&el.graph)),
        )
        .err()
}

/// `maxpool(x, k, stride, pad)` and `avgpool(x, k, stride, pad, count_include_pad)`: a
/// `k`x`k` window, `stride = -1` meaning `k`, `0 <= pad <= k/2` on every side.
fn pool(el: &mut Elab, b: &Builtin, args: &[(Value, Span)], span: Span) -> Result<Value> {
    let spans: Vec<Span> = args.iter().map(|(_, s)| *s).collect();
    let d = need_nchw(el, b, args, 0)?;
    let k = positive("k", int_of(&args[1].0), spans[1])?;
    let stride = match int_of(&args[2].0) {
        -1 => k,
        s => positive("stride", s, spans[2])?,
    };
    let pad = int_of(&args[3].0);
    let average = b.name == "avgpool";
    if pad < 0 || pad as u64 > k / 2 {
        let what = if average { "average-pool" } else { "max-pool" };
        return Diagnostic::new(format!(
            "{what} padding must be between 0 and half the window ({})",
            k / 2
        ))
        .label(spans[3], format!("this is {pad}"))
        .err();
    }
    let pad = pad as u64;
    window_fits(
        el,
        "pooling window",
        [d[2], d[3]],
        k,
        stride,
        pad,
        1,
        (spans[0], spans[1]),
        &args[0].0,
    )?;
    let (kernel, stride, pad) = ([k; 2], [stride; 2], [pad; 4]);
    let op = if average {
        Op::AvgPool2d {
            kernel,
            stride,
            pad,
            count_include_pad: bool_of(&args[4].0),
        }
    } else {
        Op::MaxPool2d {
            kernel,
            stride,
            pad,
        }
    };
    Ok(Value::Tensor(el.emit(
        op,
        &[tensor_of(&args[0].0)],
        span,
        &spans[..1],
    )?))
}

/// `concat(a, b, ...)`: the tensors given (`none`s skipped) joined along the channels.
fn concat(el: &mut Elab, b: &Builtin, args: &[(Value, Span)], span: Span) -> Result<Value> {
    let given: Vec<&(Value, Span)> = args
        .iter()
        .filter(|(v, _)| !matches!(v, Value::None))
        .collect();
    for (i, arg) in args.iter().enumerate() {
        if !matches!(arg.0, Value::None) {
            need_nchw(el, b, args, i)?;
        }
    }
    let operands: Vec<_> = given.iter().map(|(v, _)| tensor_of(v)).collect();
    let spans: Vec<Span> = given.iter().map(|(_, s)| *s).collect();
    Ok(Value::Tensor(el.emit(
        Op::Concat,
        &operands,
        span,
        &spans,
    )?))
}

/// Runs a built-in on conformed arguments (one per parameter, defaults filled in).
pub(crate) fn apply(
    el: &mut Elab,
    b: &Builtin,
    args: Vec<(Value, Span)>,
    segment: &str,
    span: Span,
) -> Result<Value> {
    let spans: Vec<Span> = args.iter().map(|(_, s)| *s).collect();
    let dims = |el: &Elab, i: usize| el.graph.node(tensor_of(&args[i].0)).ty.dims.clone();
    let need_rank = |el: &Elab, i: usize, rank: usize, what: &str| -> Result<Vec<u64>> {
        let d = dims(el, i);
        if d.len() == rank {
            Ok(d)
        } else {
            Diagnostic::new(format!("`{}` needs {what}", b.name))
                .label(
                    spans[i],
                    format!("this is {}", args[i].0.describe(&el.graph)),
                )
                .err()
        }
    };
    let out = match b.name {
        "conv" => {
            let x = tensor_of(&args[0].0);
            let xd = need_rank(el, 0, 4, "an NxCxHxW tensor")?;
            let out = positive("out", int_of(&args[1].0), spans[1])?;
            let k = positive("k", int_of(&args[2].0), spans[2])?;
            let stride = positive("stride", int_of(&args[3].0), spans[3])?;
            let dilation = positive("dilation", int_of(&args[5].0), spans[5])?;
            let groups = positive("groups", int_of(&args[6].0), spans[6])?;
            let pad = match int_of(&args[4].0) {
                -1 => dilation.saturating_mul(k - 1) / 2,
                p if p >= 0 => p as u64,
                p => {
                    return Diagnostic::new("`pad` must be -1 (same) or at least 0")
                        .label(spans[4], format!("this is {p}"))
                        .err()
                }
            };
            if xd[1] % groups != 0 || out % groups != 0 {
                return Diagnostic::new(format!(
                    "groups = {groups} must divide both the input channels ({}) and `out` ({out})",
                    xd[1]
                ))
                .label(spans[6], "groups")
                .label(
                    spans[0],
                    format!("this is {}", args[0].0.describe(&el.graph)),
                )
                .err();
            }
            window_fits(
                el,
                "kernel",
                [xd[2], xd[3]],
                k,
                stride,
                pad,
                dilation,
                (spans[0], spans[2]),
                &args[0].0,
            )?;
            let w = el.param(
                segment,
                "weight",
                ParamKind::ConvWeight,
                vec![out, xd[1] / groups, k, k],
                span,
            )?;
            let mut operands = vec![x, w];
            let mut operand_spans = vec![spans[0], span];
            if bool_of(&args[7].0) {
                operands.push(el.param(segment, "bias", ParamKind::ConvBias, vec![out], span)?);
                operand_spans.push(span);
            }
            let op = Op::Conv2d {
                stride: [stride; 2],
                pad: [pad; 4],
                dilation: [dilation; 2],
                groups,
            };
            Value::Tensor(el.emit_scoped(op, &operands, span, &operand_spans, Some(segment))?)
        }
        "batchnorm" => {
            let x = tensor_of(&args[0].0);
            let c = need_rank(el, 0, 4, "an NxCxHxW tensor")?[1];
            let eps = float_of(&args[1].0);
            if eps.is_nan() || eps <= 0.0 {
                return Diagnostic::new("`eps` must be positive")
                    .label(spans[1], format!("this is {eps}"))
                    .err();
            }
            let mut operands = vec![x];
            for (suffix, kind) in [
                ("running_mean", ParamKind::BnMean),
                ("running_var", ParamKind::BnVar),
                ("weight", ParamKind::BnGamma),
                ("bias", ParamKind::BnBeta),
            ] {
                operands.push(el.param(segment, suffix, kind, vec![c], span)?);
            }
            let operand_spans = [spans[0], span, span, span, span];
            Value::Tensor(el.emit_scoped(
                Op::BatchNorm { eps },
                &operands,
                span,
                &operand_spans,
                Some(segment),
            )?)
        }
        "relu" => Value::Tensor(el.emit(Op::Relu, &[tensor_of(&args[0].0)], span, &spans)?),
        "dropout" => {
            let p = float_of(&args[1].0);
            if !(0.0..1.0).contains(&p) {
                return Diagnostic::new("dropout probability must be in [0, 1)")
                    .label(spans[1], format!("this is {p}"))
                    .err();
            }
            let stream = el.next_stream();
            Value::Tensor(el.emit(
                Op::Dropout {
                    rate: p,
                    seed: 0,
                    stream,
                },
                &[tensor_of(&args[0].0)],
                span,
                &spans,
            )?)
        }
        "maxpool" | "avgpool" => pool(el, b, &args, span)?,
        "global_avgpool" => {
            need_rank(el, 0, 4, "an NxCxHxW tensor")?;
            Value::Tensor(el.emit(Op::GlobalAvgPool2d, &[tensor_of(&args[0].0)], span, &spans)?)
        }
        "sigmoid" => Value::Tensor(el.emit(Op::Sigmoid, &[tensor_of(&args[0].0)], span, &spans)?),
        "mul" => {
            let operands = [tensor_of(&args[0].0), tensor_of(&args[1].0)];
            Value::Tensor(el.emit(Op::Mul, &operands, span, &spans)?)
        }
        "concat" => concat(el, b, &args, span)?,
        "resize" | "rescale" => {
            let x = tensor_of(&args[0].0);
            let d = need_rank(el, 0, 4, "an NxCxHxW tensor")?;
            let (size, align_corners) = if b.name == "resize" {
                let h = positive("h", int_of(&args[1].0), spans[1])?;
                let w = positive("w", int_of(&args[2].0), spans[2])?;
                ([h, w], bool_of(&args[3].0))
            } else {
                let f = float_of(&args[1].0);
                let scaled = |v: u64| (v as f64 * f).floor();
                if f.is_nan()
                    || f <= 0.0
                    || scaled(d[2]) < 1.0
                    || scaled(d[3]) < 1.0
                    || scaled(d[2]) > 1e9
                    || scaled(d[3]) > 1e9
                {
                    return Diagnostic::new(format!("cannot rescale {}x{} by {f}", d[2], d[3]))
                        .label(spans[1], "the result must be at least 1x1")
                        .err();
                }
                (
                    [scaled(d[2]) as u64, scaled(d[3]) as u64],
                    bool_of(&args[2].0),
                )
            };
            if size == [d[2], d[3]] {
                // Resizing to the same size is the identity: no op.
                return Ok(Value::Tensor(x));
            }
            Value::Tensor(el.emit(
                Op::ResizeBilinear {
                    size,
                    align_corners,
                },
                &[x],
                span,
                &spans,
            )?)
        }
        "softmax_cross_entropy" => {
            let ignore_index = int_of(&args[2].0);
            let op = Op::SoftmaxCrossEntropy {
                ignore_index,
                reduction: reduction(&args[3])?,
            };
            Value::Tensor(el.emit(
                op,
                &[tensor_of(&args[0].0), tensor_of(&args[1].0)],
                span,
                &spans,
            )?)
        }
        "least_squares" => {
            let op = Op::LeastSquares {
                ignore_value: float_of(&args[2].0),
                reduction: reduction(&args[3])?,
            };
            Value::Tensor(el.emit(
                op,
                &[tensor_of(&args[0].0), tensor_of(&args[1].0)],
                span,
                &spans,
            )?)
        }
        "channels" => Value::Int(need_rank(el, 0, 4, "an NxCxHxW tensor")?[1] as i64),
        "batch" | "height" | "width" => {
            let d = dims(el, 0);
            if d.len() < 3 {
                return Diagnostic::new(format!(
                    "`{}` needs a tensor with batch and spatial dimensions",
                    b.name
                ))
                .label(
                    spans[0],
                    format!("this is {}", args[0].0.describe(&el.graph)),
                )
                .err();
            }
            let v = match b.name {
                "batch" => d[0],
                "height" => d[d.len() - 2],
                _ => d[d.len() - 1],
            };
            Value::Int(v as i64)
        }
        "len" => match &args[0].0 {
            Value::List(items) => Value::Int(items.len() as i64),
            _ => unreachable!("argument conformed to list"),
        },
        "sgd" => {
            for (i, what) in ["lr", "momentum", "weight_decay"].iter().enumerate() {
                let v = float_of(&args[i].0);
                if !v.is_finite() || v < 0.0 {
                    return Diagnostic::new(format!(
                        "`{what}` must be a finite non-negative number"
                    ))
                    .label(spans[i], format!("this is {v}"))
                    .err();
                }
            }
            if let Some(first) = el.training.sgd_span.replace(span) {
                return Diagnostic::new("the optimizer is set twice")
                    .label(span, "second `sgd`")
                    .label(first, "first `sgd`")
                    .err();
            }
            el.training.config.lr = float_of(&args[0].0);
            el.training.config.momentum = float_of(&args[1].0);
            el.training.config.weight_decay = float_of(&args[2].0);
            Value::None
        }
        "lr_scale" | "freeze" => {
            let Value::Str(pattern) = &args[0].0 else {
                unreachable!("argument conformed to str")
            };
            if pattern.is_empty() {
                return Diagnostic::new("a parameter pattern cannot be empty")
                    .label(spans[0], "empty")
                    .err();
            }
            if b.name == "freeze" {
                el.training.config.frozen.push(pattern.to_string());
            } else {
                let factor = float_of(&args[1].0);
                if !factor.is_finite() || factor < 0.0 {
                    return Diagnostic::new(
                        "a learning-rate scale must be a finite non-negative number",
                    )
                    .label(spans[1], format!("this is {factor}"))
                    .err();
                }
                el.training
                    .config
                    .lr_scales
                    .push((pattern.to_string(), factor));
            }
            el.training
                .pattern_spans
                .push((pattern.to_string(), spans[0]));
            Value::None
        }
        "min" => Value::Int(int_of(&args[0].0).min(int_of(&args[1].0))),
        "max" => Value::Int(int_of(&args[0].0).max(int_of(&args[1].0))),
        other => unreachable!("builtin `{other}` has no implementation"),
    };
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! The tensor built-ins of attention and pooling: what they build and how their
    //! mistakes are reported (title, primary location, labels), in the style of
    //! `tests/diagnostics.rs`.

    use rfnc_compiler::ir::{Graph, Op};

    use crate::{elaborate, load_source, Options};

    fn options() -> Options {
        Options {
            input: vec![1, 3, 16, 16],
            defines: Vec::new(),
        }
    }

    /// The network `body` (after `input x: f32[N, 3, H, W];`) elaborated, or its rendered
    /// error.
    fn compile(body: &str) -> Result<Graph, String> {
        let text = format!("network n {{\n    input x: f32[N, 3, H, W];\n{body}}}\n");
        let program = load_source("main.rfn", text, None).map_err(|(d, s)| d.render(&s))?;
        elaborate(&program, &options()).map_err(|d| d.render(&program.sources))
    }

    fn error(body: &str) -> String {
        match compile(body) {
            Ok(_) => panic!("expected an error:\n{body}"),
            Err(rendered) => rendered,
        }
    }

    fn assert_contains(rendered: &str, parts: &[&str]) {
        for part in parts {
            assert!(rendered.contains(part), "missing {part:?} in:\n{rendered}");
        }
    }

    fn ops(g: &Graph) -> Vec<Op> {
        let order = g.topo_order().expect("acyclic");
        order.into_iter().map(|id| g.node(id).op.clone()).collect()
    }

    #[test]
    fn attention_built_ins_make_their_ops() {
        let g = compile(
            r#"    let a = conv(x, 4, k = 1) as a;
    let gate = sigmoid(global_avgpool(a));
    let p = avgpool(mul(a, gate), 3, stride = 2, pad = 1, count_include_pad = false);
    output y = concat(p, avgpool(x, 2), none, p);
"#,
        )
        .expect("compiles");
        let ops = ops(&g);
        assert!(ops.contains(&Op::GlobalAvgPool2d));
        assert!(ops.contains(&Op::Sigmoid));
        assert!(ops.contains(&Op::Mul));
        assert!(ops.contains(&Op::AvgPool2d {
            kernel: [3, 3],
            stride: [2, 2],
            pad: [1; 4],
            count_include_pad: false,
        }));
        // `stride` defaults to the window and `count_include_pad` to true (PyTorch's).
        assert!(ops.contains(&Op::AvgPool2d {
            kernel: [2, 2],
            stride: [2, 2],
            pad: [0; 4],
            count_include_pad: true,
        }));
        let y = g.output("y").unwrap();
        assert_eq!(g.node(y).op, Op::Concat);
        assert_eq!(g.operands(y).len(), 3, "`none` is skipped");
        assert_eq!(g.node(y).ty.dims, [1, 11, 8, 8]);
    }

    #[test]
    fn concat_of_mismatched_sizes_points_at_both_operands() {
        let r = error("    let small = maxpool(x, 2);\n    output y = concat(x, small);\n");
        assert_contains(
            &r,
            &[
                "Error: cannot concatenate f32[1, 3, 16, 16] and f32[1, 3, 8, 8]: batch, height and width must be equal",
                "main.rfn:4:16",
                "in this operation",
                "this is f32[1, 3, 16, 16]",
                "this is f32[1, 3, 8, 8]",
                "f32[1, 3, 8, 8] made here",
            ],
        );
    }

    #[test]
    fn concat_needs_nchw_tensors_and_at_least_two() {
        let r = error("    output y = concat(x, global_avgpool(x), 3);\n");
        assert_contains(
            &r,
            &[
                "argument `c` of `concat` must be a tensor or none",
                "this is the int 3",
            ],
        );
        let r = error("    input labels: i32[N, H, W];\n    output y = concat(x, labels);\n");
        assert_contains(
            &r,
            &[
                "Error: `concat` needs an NxCxHxW tensor",
                "main.rfn:4:26",
                "this is a tensor i32[1, 16, 16]",
            ],
        );
        let r = error("    output y = concat(x);\n");
        assert_contains(
            &r,
            &[
                "`concat` needs the argument `b`",
                "signature: concat(a: tensor, b: tensor, c: tensor? = none",
            ],
        );
    }

    #[test]
    fn mul_of_incompatible_shapes_says_how_they_broadcast() {
        let r = error(
            "    let y4 = conv(x, 4, k = 1) as c;\n    output y = mul(x, global_avgpool(y4));\n",
        );
        assert_contains(
            &r,
            &[
                "Error: cannot multiply f32[1, 3, 16, 16] and f32[1, 4, 1, 1]: in every dimension the sizes must be equal or one of them 1 (or one operand a scalar)",
                "main.rfn:4:16",
                "this is f32[1, 4, 1, 1]",
            ],
        );
    }

    #[test]
    fn avgpool_checks_its_window() {
        let r = error("    output y = avgpool(x, 3, pad = 2);\n");
        assert_contains(
            &r,
            &[
                "Error: average-pool padding must be between 0 and half the window (1)",
                "main.rfn:3:36",
                "this is 2",
            ],
        );
        let r = error("    output y = avgpool(x, 17);\n");
        assert_contains(
            &r,
            &["Error: a 17x17 pooling window does not fit a 16x16 input padded by 0"],
        );
        let r = error("    output y = avgpool(x, 2, stride = 0);\n");
        assert_contains(&r, &["Error: `stride` must be at least 1"]);
    }

    #[test]
    fn global_avgpool_and_sigmoid_need_real_tensors() {
        let r = error("    input labels: i32[N, H, W];\n    output y = global_avgpool(labels);\n");
        assert_contains(
            &r,
            &[
                "Error: `global_avgpool` needs an NxCxHxW tensor",
                "this is a tensor i32[1, 16, 16]",
            ],
        );
        let r = error("    input labels: i32[N, H, W];\n    output y = sigmoid(labels);\n");
        assert_contains(
            &r,
            &["Error: sigmoid expects an input of element type f32, found i32[1, 16, 16]"],
        );
    }
}
