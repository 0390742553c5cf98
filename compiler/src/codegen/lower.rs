//! Lowering: one fused kernel of the graph becomes one or more kernel launches in KIR.
//!
//! Every op of a fused kernel is computed where its value is needed, at one element index:
//! elementwise ops from their operands at the same index (per-channel operands at the
//! element's channel, scalars at 0), gathers (max-pooling, bilinear resize, their
//! gradients, batch-norm folding, loss gradients) by loops over the inputs they read.
//! The kernel's *anchor* decides the launch shape: the convolutions are tiled implicit
//! GEMMs ([`super::gemm`]) whose fused prologue runs where a tile is loaded and whose
//! epilogue runs where a result is stored; channel sums and losses are block-wide tree
//! reductions; everything else runs one thread per output element. A mean-reduced loss
//! gradient first counts the elements that count, in one extra launch, into scratch.
//!
//! Invariants: the launches of a kernel read only its inputs (and scratch they wrote) and
//! write exactly its outputs, each element once; every value an element needs is loaded
//! before any of the element's outputs is stored (outputs may share storage with inputs
//! that are read only at the same index); the kernels pass [`KernelFn::check`].

use std::collections::HashMap;

use super::check::CheckedKernel;
use super::gemm::{conv_kernel, ConvKind, ConvOperand, ConvProblem};
use super::kir::{Buf, Expr, KernelBuilder, Ty};
use crate::ir::{DType, Graph, NodeId, Op, OpKind, Reduction};
use crate::passes::fusion::Kernel;
use crate::rng::splitmix64;

/// Threads per block of the elementwise, gather and reduction kernels.
pub const BLOCK: u32 = 256;

/// What a kernel argument points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arg {
    /// The storage of a value (an arena slot, or a leaf's slot).
    Value(NodeId),
    /// Bytes of the scratch region.
    Scratch { offset: u64, bytes: u64 },
}

/// One launch of a lowered kernel.
#[derive(Clone, Debug)]
pub struct LoweredLaunch {
    pub kernel: CheckedKernel,
    pub grid: u64,
    pub args: Vec<Arg>,
}

/// Why a kernel cannot be lowered (a combination fusion should not have produced).
#[derive(Clone, Debug, PartialEq)]
pub struct LowerError(pub String);

impl std::fmt::Display for LowerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lowers one fused kernel of `graph` to its launches.
pub fn lower_kernel(graph: &Graph, kernel: &Kernel) -> Result<Vec<LoweredLaunch>, LowerError> {
    let name = kernel_ops(graph, kernel);
    let Some(a) = kernel.anchor else {
        return Ok(vec![lower_elementwise(graph, kernel, &name, None)?]);
    };
    match graph.node(a).op.kind() {
        OpKind::Conv(_) => Ok(vec![lower_conv(graph, kernel, a, &name)?]),
        OpKind::ChannelSum => Ok(vec![lower_channel_sum(graph, kernel, a, &name)?]),
        OpKind::Loss { .. } => Ok(vec![lower_loss(graph, kernel, a, &name)?]),
        OpKind::LossGrad {
            reduction: Reduction::Mean,
        } => {
            let count = lower_count(graph, a)?;
            let elementwise = lower_elementwise(graph, kernel, &name, Some(a))?;
            Ok(vec![count, elementwise])
        }
        OpKind::LossGrad {
            reduction: Reduction::Sum,
        }
        | OpKind::Leaf
        | OpKind::Elementwise { .. }
        | OpKind::Pool { .. }
        | OpKind::Resize { .. }
        | OpKind::FoldBn => Ok(vec![lower_elementwise(graph, kernel, &name, None)?]),
    }
}

/// `conv2d+add+relu`: the kernel's ops in order, anchor first.
pub fn kernel_ops(graph: &Graph, kernel: &Kernel) -> String {
    let mut names: Vec<&str> = Vec::new();
    if let Some(a) = kernel.anchor {
        names.push(graph.node(a).op.mnemonic());
    }
    for &n in &kernel.nodes {
        if Some(n) != kernel.anchor {
            names.push(graph.node(n).op.mnemonic());
        }
    }
    names.join("+")
}

/// The launch under construction: its builder, arguments and element-level values.
struct Launch<'g> {
    graph: &'g Graph,
    kernel: &'g Kernel,
    b: KernelBuilder,
    args: Vec<Arg>,
    bufs: HashMap<Arg, Buf>,
    /// Values computed at the current element (memoised so that each op runs once).
    memo: HashMap<NodeId, Expr>,
    /// The scratch slot holding a loss gradient's element count, when it has one.
    count: Option<Buf>,
    /// The element index and nesting depth at which `memo` is valid.
    element: Option<(Expr, usize)>,
}

fn dims4(dims: &[u64]) -> Result<[u64; 4], LowerError> {
    <[u64; 4]>::try_from(dims)
        .map_err(|_| LowerError(format!("expected an NCHW tensor, got {dims:?}")))
}

fn f(v: f64) -> Expr {
    Expr::F32(v as f32)
}

impl<'g> Launch<'g> {
    fn new(graph: &'g Graph, kernel: &'g Kernel, name: &str, block: u32) -> Self {
        Launch {
            graph,
            kernel,
            b: KernelBuilder::new(name, block),
            args: Vec::new(),
            bufs: HashMap::new(),
            memo: HashMap::new(),
            count: None,
            element: None,
        }
    }

    fn finish(self, grid: u64) -> Result<LoweredLaunch, LowerError> {
        let kernel = self.b.finish();
        let ops = kernel.ops.clone();
        let kernel = kernel
            .into_checked()
            .map_err(|e| LowerError(format!("kernel {ops}: {e}")))?;
        Ok(LoweredLaunch {
            kernel,
            grid,
            args: self.args,
        })
    }

    fn dims(&self, n: NodeId) -> &'g [u64] {
        &self.graph.node(n).ty.dims
    }

    fn member(&self, n: NodeId) -> bool {
        self.kernel.nodes.contains(&n)
    }

    /// The buffer holding value `n` (an input or output of the kernel).
    fn buf(&mut self, n: NodeId) -> Buf {
        let arg = Arg::Value(n);
        if let Some(&b) = self.bufs.get(&arg) {
            return b;
        }
        let ty = &self.graph.node(n).ty;
        let elem = match ty.dtype {
            DType::I32 => Ty::I32,
            _ => Ty::F32,
        };
        let buf = self.b.param(elem, ty.elements());
        self.args.push(arg);
        self.bufs.insert(arg, buf);
        buf
    }

    fn scratch(&mut self, offset: u64, len: u64) -> Buf {
        let arg = Arg::Scratch {
            offset,
            bytes: len * 4,
        };
        if let Some(&b) = self.bufs.get(&arg) {
            return b;
        }
        let buf = self.b.param(Ty::F32, len);
        self.args.push(arg);
        self.bufs.insert(arg, buf);
        buf
    }

    /// The value of operand `i` of `n`, at the element `flat` of `n` (broadcasting
    /// per-channel vectors and scalars).
    fn operand_at(&mut self, n: NodeId, i: usize, flat: &Expr) -> Result<Expr, LowerError> {
        let operand = self.graph.operands(n)[i];
        let own = self.dims(n);
        let theirs = self.dims(operand);
        let index = if theirs == own {
            flat.clone()
        } else if theirs.iter().product::<u64>() == 1 {
            Expr::Int(0)
        } else if theirs.len() == 1 && own.len() == 4 && theirs[0] == own[1] {
            self.b
                .let_((flat.clone() / (own[2] * own[3]) as i64) % own[1] as i64)
        } else {
            return Err(LowerError(format!(
                "operand {i} of rfn.{} has shape {theirs:?}, which does not broadcast to {own:?}",
                self.graph.node(n).op.mnemonic()
            )));
        };
        self.value_at(operand, &index)
    }

    /// The value of `n` at flat index `flat` of its own shape.
    fn value_at(&mut self, n: NodeId, flat: &Expr) -> Result<Expr, LowerError> {
        let at_element = self
            .element
            .as_ref()
            .is_some_and(|(e, depth)| e == flat && *depth == self.b.depth());
        if at_element {
            if let Some(v) = self.memo.get(&n) {
                return Ok(v.clone());
            }
        }
        let node = self.graph.node(n);
        if let Op::Constant { value } = node.op {
            return Ok(f(value));
        }
        let value = if self.member(n) {
            self.compute(n, flat)?
        } else {
            let buf = self.buf(n);
            Expr::load(buf, flat.clone())
        };
        let value = self.b.let_(value);
        if at_element {
            self.memo.insert(n, value.clone());
        }
        Ok(value)
    }

    /// Computes member op `n` at `flat`.
    fn compute(&mut self, n: NodeId, flat: &Expr) -> Result<Expr, LowerError> {
        let node = self.graph.node(n);
        let at = |this: &mut Self, i: usize| this.operand_at(n, i, flat);
        Ok(match &node.op {
            Op::Relu => {
                let x = at(self, 0)?;
                Expr::select(x.clone().gt(0.0f32), x, 0.0f32)
            }
            Op::Add => at(self, 0)? + at(self, 1)?,
            Op::BatchNorm { eps } => {
                let (x, mean, var, gamma, beta) = (
                    at(self, 0)?,
                    at(self, 1)?,
                    at(self, 2)?,
                    at(self, 3)?,
                    at(self, 4)?,
                );
                let scale = self.b.let_(gamma / (var + f(*eps)).sqrt());
                (x - mean) * scale + beta
            }
            Op::BatchNormGrad { eps } => {
                let (dy, var, gamma) = (at(self, 0)?, at(self, 1)?, at(self, 2)?);
                dy * (gamma / (var + f(*eps)).sqrt())
            }
            Op::ReluGrad => {
                let (dy, y) = (at(self, 0)?, at(self, 1)?);
                Expr::select(y.gt(0.0f32), dy, 0.0f32)
            }
            Op::Dropout { rate, seed, stream } => {
                let x = at(self, 0)?;
                if self.graph.operands(n).len() < 2 {
                    return Ok(x);
                }
                let step = self.graph.operands(n)[1];
                let step = self.value_at(step, &Expr::Int(0))?.cast(Ty::I64);
                let keep = dropout_keep(&mut self.b, *rate, *seed, *stream, step, flat);
                Expr::select(keep, x * f(1.0 / (1.0 - rate)), 0.0f32)
            }
            Op::SgdMomentum {
                momentum,
                weight_decay,
            } => {
                let (v, g, p) = (at(self, 0)?, at(self, 1)?, at(self, 2)?);
                f(*momentum) * v + g + f(*weight_decay) * p
            }
            Op::SgdStep { lr } => {
                let (p, v) = (at(self, 0)?, at(self, 1)?);
                p - f(*lr) * v
            }
            Op::FoldBnWeight { eps } => {
                let dims = self.dims(n);
                let per_out = dims[1..].iter().product::<u64>() as i64;
                let c = self.b.let_(flat.clone() / per_out);
                let w = at(self, 0)?;
                let var = self.value_at(self.graph.operands(n)[1], &c)?;
                let gamma = self.value_at(self.graph.operands(n)[2], &c)?;
                w * (gamma / (var + f(*eps)).sqrt())
            }
            Op::FoldBnBias { eps } => {
                let (mean, var, gamma, beta) =
                    (at(self, 0)?, at(self, 1)?, at(self, 2)?, at(self, 3)?);
                let b = if self.graph.operands(n).len() > 4 {
                    at(self, 4)?
                } else {
                    Expr::F32(0.0)
                };
                (b - mean) * (gamma / (var + f(*eps)).sqrt()) + beta
            }
            Op::MaxPool2d {
                kernel,
                stride,
                pad,
            } => self.max_pool(n, flat, *kernel, *stride, *pad)?,
            Op::MaxPool2dGrad {
                kernel,
                stride,
                pad,
            } => self.max_pool_grad(n, flat, *kernel, *stride, *pad)?,
            Op::ResizeBilinear { align_corners, .. } => self.resize(n, flat, *align_corners)?,
            Op::ResizeBilinearGrad { align_corners, .. } => {
                self.resize_grad(n, flat, *align_corners)?
            }
            Op::SoftmaxCrossEntropyGrad {
                ignore_index,
                reduction,
            } => self.softmax_grad(n, flat, *ignore_index, *reduction)?,
            Op::LeastSquaresGrad {
                ignore_value,
                reduction,
            } => {
                let (p, t) = (at(self, 0)?, at(self, 1)?);
                let d = self.value_at(self.graph.operands(n)[2], &Expr::Int(0))?;
                let scale = self.loss_scale(*reduction);
                let valid = t.clone().ne(f(*ignore_value));
                Expr::select(valid, f(2.0) * (p - t) * scale * d, 0.0f32)
            }
            Op::Input { .. }
            | Op::Param { .. }
            | Op::Constant { .. }
            | Op::Conv2d { .. }
            | Op::Conv2dGradInput { .. }
            | Op::Conv2dGradWeight { .. }
            | Op::ChannelSum
            | Op::SoftmaxCrossEntropy { .. }
            | Op::LeastSquares { .. } => {
                return Err(LowerError(format!(
                    "rfn.{} cannot be computed element by element inside a fused kernel",
                    node.op.mnemonic()
                )))
            }
        })
    }

    /// 1 for a sum; 1/count (0 without any) for a mean, the count read from scratch.
    fn loss_scale(&mut self, reduction: Reduction) -> Expr {
        match (reduction, self.count) {
            (Reduction::Mean, Some(buf)) => {
                let count = self.b.let_(Expr::load(buf, 0));
                self.b.let_(Expr::select(
                    count.clone().gt(0.0f32),
                    Expr::F32(1.0) / count,
                    0.0f32,
                ))
            }
            _ => Expr::F32(1.0),
        }
    }

    /// Splits an NCHW flat index into (plane = n * C + c, y, x).
    fn plane_yx(&mut self, flat: &Expr, dims: [u64; 4]) -> (Expr, Expr, Expr) {
        let (h, w) = (dims[2] as i64, dims[3] as i64);
        let x = self.b.let_(flat.clone() % w);
        let rest = self.b.let_(flat.clone() / w);
        let y = self.b.let_(rest.clone() % h);
        let plane = self.b.let_(rest / h);
        (plane, y, x)
    }

    /// Runs `f` with the element-level memo enabled for `flat` (values computed at `flat`
    /// at this nesting depth are reused), seeded with the anchor's value.
    fn at_element<T>(
        &mut self,
        flat: &Expr,
        anchor: Option<(NodeId, Expr)>,
        f: impl FnOnce(&mut Self) -> T,
    ) -> T {
        self.memo.clear();
        self.element = Some((flat.clone(), self.b.depth()));
        if let Some((a, v)) = anchor {
            self.memo.insert(a, v);
        }
        let out = f(self);
        self.memo.clear();
        self.element = None;
        out
    }

    /// Computes every output of the kernel at element `flat` (of the domain `dims`), then
    /// stores them all.
    fn emit_outputs(
        &mut self,
        flat: &Expr,
        dims: &[u64],
        anchor: Option<(NodeId, Expr)>,
    ) -> Result<(), LowerError> {
        let outputs = self.kernel.outputs.clone();
        self.at_element(flat, anchor, |this| {
            let mut values = Vec::with_capacity(outputs.len());
            for &o in &outputs {
                if this.dims(o) != dims {
                    return Err(LowerError(format!(
                        "output rfn.{} has shape {:?}, not the kernel's {dims:?}",
                        this.graph.node(o).op.mnemonic(),
                        this.dims(o)
                    )));
                }
                values.push((o, this.value_at(o, flat)?));
            }
            for (o, v) in values {
                let buf = this.buf(o);
                this.b.store(buf, flat.clone(), v);
            }
            Ok(())
        })
    }

    fn max_pool(
        &mut self,
        n: NodeId,
        flat: &Expr,
        kernel: [u64; 2],
        stride: [u64; 2],
        pad: [u64; 4],
    ) -> Result<Expr, LowerError> {
        let input = self.graph.operands(n)[0];
        let (xd, yd) = (dims4(self.dims(input))?, dims4(self.dims(n))?);
        let (plane, oy, ox) = self.plane_yx(flat, yd);
        let best = self.b.private(Ty::F32, 1);
        self.b.store(best, 0, f32::NEG_INFINITY);
        let ky = self.b.begin_for(0, kernel[0], 1);
        let iy = self.b.let_(oy * stride[0] + ky - pad[0]);
        let kx = self.b.begin_for(0, kernel[1], 1);
        let ix = self.b.let_(ox * stride[1] + kx - pad[1]);
        let ok = self.b.let_(inside(&iy, xd[2]).and(inside(&ix, xd[3])));
        let index = self.b.let_(Expr::select(
            ok.clone(),
            (plane * xd[2] + iy) * xd[3] + ix,
            0,
        ));
        let v = self.value_at(input, &index)?;
        let current = self.b.let_(Expr::load(best, 0));
        self.b.begin_if(ok.and(v.clone().gt(current)));
        self.b.store(best, 0, v);
        self.b.end_if();
        self.b.end_for();
        self.b.end_for();
        Ok(Expr::load(best, 0))
    }

    fn max_pool_grad(
        &mut self,
        n: NodeId,
        flat: &Expr,
        kernel: [u64; 2],
        stride: [u64; 2],
        pad: [u64; 4],
    ) -> Result<Expr, LowerError> {
        let (dy, x) = (self.graph.operands(n)[0], self.graph.operands(n)[1]);
        let (xd, yd) = (dims4(self.dims(x))?, dims4(self.dims(dy))?);
        let (plane, iy, ix) = self.plane_yx(flat, xd);
        let acc = self.b.private(Ty::F32, 1);
        let best = self.b.private(Ty::F32, 1);
        let arg = self.b.private(Ty::Index, 1);
        self.b.store(acc, 0, 0.0f32);
        // The windows that contain (iy, ix): oy * stride + ky - pad = iy.
        let window = |b: &mut KernelBuilder, i: &Expr, k: Expr, a: usize, out: u64| {
            let t = b.let_(i.clone() + pad[a] - k);
            let ok = b.let_(
                t.clone()
                    .ge(0)
                    .and((t.clone() % stride[a] as i64).eq(0))
                    .and((t.clone() / stride[a] as i64).lt(out)),
            );
            let o = b.let_(Expr::select(ok.clone(), t / stride[a] as i64, 0));
            (ok, o)
        };
        let ky = self.b.begin_for(0, kernel[0], 1);
        let (ok_y, oy) = window(&mut self.b, &iy, ky, 0, yd[2]);
        let kx = self.b.begin_for(0, kernel[1], 1);
        let (ok_x, ox) = window(&mut self.b, &ix, kx, 1, yd[3]);
        self.b.begin_if(ok_y.and(ok_x));
        // The first maximal element of window (oy, ox).
        self.b.store(best, 0, f32::NEG_INFINITY);
        self.b.store(arg, 0, -1);
        let wy = self.b.begin_for(0, kernel[0], 1);
        let yy = self.b.let_(oy.clone() * stride[0] + wy - pad[0]);
        let wx = self.b.begin_for(0, kernel[1], 1);
        let xx = self.b.let_(ox.clone() * stride[1] + wx - pad[1]);
        let inside_window = self.b.let_(inside(&yy, xd[2]).and(inside(&xx, xd[3])));
        let index = self.b.let_(Expr::select(
            inside_window.clone(),
            (plane.clone() * xd[2] + yy) * xd[3] + xx,
            0,
        ));
        let v = self.value_at(x, &index)?;
        let (current, current_arg) = (
            self.b.let_(Expr::load(best, 0)),
            self.b.let_(Expr::load(arg, 0)),
        );
        self.b
            .begin_if(inside_window.and(current_arg.lt(0).or(v.clone().gt(current))));
        self.b.store(best, 0, v);
        self.b.store(arg, 0, index);
        self.b.end_if();
        self.b.end_for();
        self.b.end_for();
        let winner = self.b.let_(Expr::load(arg, 0));
        self.b.begin_if(winner.eq(flat.clone()));
        let g = self.value_at(dy, &((plane.clone() * yd[2] + oy) * yd[3] + ox))?;
        let sum = self.b.let_(Expr::load(acc, 0) + g);
        self.b.store(acc, 0, sum);
        self.b.end_if();
        self.b.end_if();
        self.b.end_for();
        self.b.end_for();
        Ok(Expr::load(acc, 0))
    }

    fn resize(&mut self, n: NodeId, flat: &Expr, align: bool) -> Result<Expr, LowerError> {
        let input = self.graph.operands(n)[0];
        let (xd, yd) = (dims4(self.dims(input))?, dims4(self.dims(n))?);
        let (plane, oy, ox) = self.plane_yx(flat, yd);
        let (y0, y1, ly) = bilinear_taps(&mut self.b, &oy, xd[2], yd[2], align);
        let (x0, x1, lx) = bilinear_taps(&mut self.b, &ox, xd[3], yd[3], align);
        let row = self.b.let_(plane * xd[2]);
        let tap = |this: &mut Self, y: &Expr, x: &Expr| {
            let index = this.b.let_((row.clone() + y.clone()) * xd[3] + x.clone());
            this.value_at(input, &index)
        };
        let v00 = tap(self, &y0, &x0)?;
        let v01 = tap(self, &y0, &x1)?;
        let v10 = tap(self, &y1, &x0)?;
        let v11 = tap(self, &y1, &x1)?;
        let (hy, hx) = (
            self.b.let_(Expr::F32(1.0) - ly.clone()),
            self.b.let_(Expr::F32(1.0) - lx.clone()),
        );
        Ok(v00 * (hy.clone() * hx.clone())
            + v01 * (hy * lx.clone())
            + v10 * (ly.clone() * hx)
            + v11 * (ly * lx))
    }

    fn resize_grad(&mut self, n: NodeId, flat: &Expr, align: bool) -> Result<Expr, LowerError> {
        let dy = self.graph.operands(n)[0];
        let (xd, yd) = (dims4(self.dims(n))?, dims4(self.dims(dy))?);
        let (plane, iy, ix) = self.plane_yx(flat, xd);
        let acc = self.b.private(Ty::F32, 1);
        self.b.store(acc, 0, 0.0f32);
        // Output rows whose taps can reach input row i: a superset, weights decide.
        let range = |b: &mut KernelBuilder, i: &Expr, input: u64, output: u64| {
            let (num, den) = ratio(input, output, align);
            let lo = b.let_(((i.clone() - 1) * num / den - 2).max(0));
            let hi = b.let_(((i.clone() + 2) * num / den + 2).min(output));
            (lo, hi)
        };
        let (lo_y, hi_y) = range(&mut self.b, &iy, xd[2], yd[2]);
        let (lo_x, hi_x) = range(&mut self.b, &ix, xd[3], yd[3]);
        let oy = self.b.begin_for(lo_y, hi_y, 1);
        let wy = tap_weight(&mut self.b, &oy, &iy, xd[2], yd[2], align);
        let ox = self.b.begin_for(lo_x, hi_x, 1);
        let wx = tap_weight(&mut self.b, &ox, &ix, xd[3], yd[3], align);
        let g = self.value_at(dy, &((plane.clone() * yd[2] + oy) * yd[3] + ox))?;
        let sum = self.b.let_(Expr::load(acc, 0) + g * (wy * wx));
        self.b.store(acc, 0, sum);
        self.b.end_for();
        self.b.end_for();
        Ok(Expr::load(acc, 0))
    }

    fn softmax_grad(
        &mut self,
        n: NodeId,
        flat: &Expr,
        ignore: i64,
        reduction: Reduction,
    ) -> Result<Expr, LowerError> {
        let ops = self.graph.operands(n);
        let (logits, labels, dloss) = (ops[0], ops[1], ops[2]);
        let d = dims4(self.dims(logits))?;
        let (classes, plane) = (d[1], d[2] * d[3]);
        let p = self.b.let_(flat.clone() % plane);
        let rest = self.b.let_(flat.clone() / plane);
        let ch = self.b.let_(rest.clone() % classes);
        let batch = self.b.let_(rest / classes);
        let pixel = self.b.let_(batch.clone() * plane + p.clone());
        let label = self.value_at(labels, &pixel)?;
        let label = self.b.let_(label.cast(Ty::Index));
        let (max, sum) = self.softmax_stats(logits, &batch, &p, classes, plane)?;
        let x = self.value_at(logits, flat)?;
        let softmax = (x - max).exp() / sum;
        let onehot = Expr::select(ch.eq(label.clone()), 1.0f32, 0.0f32);
        let scale = self.loss_scale(reduction);
        let dl = self.value_at(dloss, &Expr::Int(0))?;
        Ok(Expr::select(
            label.ne(ignore),
            (softmax - onehot) * scale * dl,
            0.0f32,
        ))
    }

    /// The maximum logit and the sum of `exp(logit - max)` over the classes of a pixel.
    fn softmax_stats(
        &mut self,
        logits: NodeId,
        batch: &Expr,
        p: &Expr,
        classes: u64,
        plane: u64,
    ) -> Result<(Expr, Expr), LowerError> {
        let max = self.b.private(Ty::F32, 1);
        let sum = self.b.private(Ty::F32, 1);
        self.b.store(max, 0, f32::NEG_INFINITY);
        self.b.store(sum, 0, 0.0f32);
        let k = self.b.begin_for(0, classes, 1);
        let v = self.value_at(logits, &((batch.clone() * classes + k) * plane + p.clone()))?;
        let m = self.b.let_(Expr::load(max, 0).max(v));
        self.b.store(max, 0, m);
        self.b.end_for();
        let m = self.b.let_(Expr::load(max, 0));
        let k = self.b.begin_for(0, classes, 1);
        let v = self.value_at(logits, &((batch.clone() * classes + k) * plane + p.clone()))?;
        let s = self.b.let_(Expr::load(sum, 0) + (v - m.clone()).exp());
        self.b.store(sum, 0, s);
        self.b.end_for();
        let s = self.b.let_(Expr::load(sum, 0));
        Ok((m, s))
    }

    /// Block-wide tree reduction (sum) of each thread's `partials[i][0]`; every thread can
    /// read the totals afterwards.
    fn tree_sum(&mut self, partials: &[Buf]) -> Vec<Expr> {
        let block = self.b.block() as i64;
        let shared: Vec<Buf> = partials
            .iter()
            .map(|_| self.b.shared(Ty::F32, block as u64))
            .collect();
        for (&p, &s) in partials.iter().zip(&shared) {
            self.b.store(s, Expr::ThreadId, Expr::load(p, 0));
        }
        self.b.barrier();
        let mut half = block / 2;
        while half >= 1 {
            self.b.begin_if(Expr::ThreadId.lt(half));
            for &s in &shared {
                let v = Expr::load(s, Expr::ThreadId) + Expr::load(s, Expr::ThreadId + half);
                self.b.store(s, Expr::ThreadId, v);
            }
            self.b.end_if();
            self.b.barrier();
            half /= 2;
        }
        shared.iter().map(|&s| Expr::load(s, 0)).collect()
    }
}

/// Whether index `i` is inside `0..size`.
fn inside(i: &Expr, size: u64) -> Expr {
    i.clone().ge(0).and(i.clone().lt(size))
}

/// `src / dst` positions ratio of a bilinear resize as a fraction.
fn ratio(input: u64, output: u64, align: bool) -> (i64, i64) {
    if align && input > 1 && output > 1 {
        (output as i64 - 1, input as i64 - 1)
    } else {
        (output as i64, input as i64)
    }
}

/// The two source indices and the weight of the second for output position `dst` of a
/// bilinear resize from `input` to `output` (PyTorch's conventions, see interp::kernels),
/// in exact integer arithmetic.
fn bilinear_taps(
    b: &mut KernelBuilder,
    dst: &Expr,
    input: u64,
    output: u64,
    align: bool,
) -> (Expr, Expr, Expr) {
    let (num, den) = if align {
        if output > 1 {
            (dst.clone() * (input as i64 - 1), output as i64 - 1)
        } else {
            (Expr::Int(0), 1)
        }
    } else {
        (
            ((dst.clone() * 2 + 1) * input - output).max(0),
            2 * output as i64,
        )
    };
    let num = b.let_(num);
    let floor = b.let_(num.clone() / den);
    let frac = b.let_((num - floor.clone() * den).cast(Ty::F32) / Expr::F32(den as f32));
    let i0 = b.let_(floor.min(input - 1));
    let i1 = b.let_((i0.clone() + 1).min(input - 1));
    (i0, i1, frac)
}

/// The weight with which output position `o` reads input position `i` along one axis.
fn tap_weight(
    b: &mut KernelBuilder,
    o: &Expr,
    i: &Expr,
    input: u64,
    output: u64,
    align: bool,
) -> Expr {
    let (i0, i1, l) = bilinear_taps(b, o, input, output, align);
    let first = Expr::select(i0.eq(i.clone()), Expr::F32(1.0) - l.clone(), 0.0f32);
    let second = Expr::select(i1.eq(i.clone()), l, 0.0f32);
    b.let_(first + second)
}

/// Dropout's keep decision for element `index` (see crate::rng): the same SplitMix64
/// chain, with the 24-bit uniform compared as an integer against `ceil(rate * 2^24)`.
fn dropout_keep(
    b: &mut KernelBuilder,
    rate: f64,
    seed: u64,
    stream: u64,
    step: Expr,
    index: &Expr,
) -> Expr {
    let key = Expr::Int(splitmix64(seed) as i64).cast(Ty::I64);
    let key = mix(b, key, step);
    let key = mix(b, key, Expr::Int(stream as i64).cast(Ty::I64));
    let h = mix(b, key, index.clone().cast(Ty::I64));
    let threshold = (rate * (1u64 << 24) as f64).ceil() as i64;
    b.let_(h.shift_right(40).ge(Expr::Int(threshold)))
}

fn splitmix(b: &mut KernelBuilder, z: Expr) -> Expr {
    let c = |v: u64| Expr::Int(v as i64);
    let z = b.let_(z + c(0x9E37_79B9_7F4A_7C15));
    let z = b.let_(z.clone().xor(z.shift_right(30)) * c(0xBF58_476D_1CE4_E5B9));
    let z = b.let_(z.clone().xor(z.shift_right(27)) * c(0x94D0_49BB_1331_11EB));
    b.let_(z.clone().xor(z.shift_right(31)))
}

fn mix(b: &mut KernelBuilder, key: Expr, coordinate: Expr) -> Expr {
    let c = splitmix(b, coordinate);
    let k = b.let_(key.xor(c));
    splitmix(b, k)
}

// ----- the launch shapes ---------------------------------------------------------------

/// One thread per element of the kernel's domain (its anchor's shape, else its first
/// output's).
fn lower_elementwise(
    graph: &Graph,
    kernel: &Kernel,
    name: &str,
    counted: Option<NodeId>,
) -> Result<LoweredLaunch, LowerError> {
    let domain_node = kernel
        .anchor
        .or(kernel.outputs.first().copied())
        .ok_or_else(|| LowerError("a kernel without outputs".into()))?;
    let dims = graph.node(domain_node).ty.dims.clone();
    let total: u64 = dims.iter().product();
    let mut l = Launch::new(graph, kernel, name, BLOCK);
    if counted.is_some() {
        l.count = Some(l.scratch(0, 1));
    }
    let flat = l.b.let_(Expr::BlockId * BLOCK as i64 + Expr::ThreadId);
    l.b.begin_if(flat.clone().lt(total));
    l.emit_outputs(&flat, &dims, None)?;
    l.b.end_if();
    l.finish(total.div_ceil(BLOCK as u64))
}

/// Per-channel sum over batch and space: one block per channel.
fn lower_channel_sum(
    graph: &Graph,
    kernel: &Kernel,
    a: NodeId,
    name: &str,
) -> Result<LoweredLaunch, LowerError> {
    let dy = graph.operands(a)[0];
    let [n, c, h, w] = dims4(&graph.node(dy).ty.dims)?;
    let mut l = Launch::new(graph, kernel, name, BLOCK);
    let channel = Expr::BlockId;
    let acc = l.b.private(Ty::F32, 1);
    l.b.store(acc, 0, 0.0f32);
    let i = l.b.begin_for(Expr::ThreadId, n * h * w, BLOCK as i64);
    let batch = l.b.let_(i.clone() / (h * w));
    let p = l.b.let_(i % (h * w));
    let v = l.value_at(dy, &((batch * c + channel.clone()) * (h * w) + p))?;
    let sum = l.b.let_(Expr::load(acc, 0) + v);
    l.b.store(acc, 0, sum);
    l.b.end_for();
    let total = l.tree_sum(&[acc]).remove(0);
    l.b.begin_if(Expr::ThreadId.eq(0));
    let total = l.b.let_(total);
    l.emit_outputs(&channel, &[c], Some((a, total)))?;
    l.b.end_if();
    l.finish(c)
}

/// A loss: one block sums the per-element losses and counts the elements that count.
fn lower_loss(
    graph: &Graph,
    kernel: &Kernel,
    a: NodeId,
    name: &str,
) -> Result<LoweredLaunch, LowerError> {
    let mut l = Launch::new(graph, kernel, name, BLOCK);
    let (pred, target) = (graph.operands(a)[0], graph.operands(a)[1]);
    let d = graph.node(pred).ty.dims.clone();
    let loss = l.b.private(Ty::F32, 1);
    let count = l.b.private(Ty::F32, 1);
    l.b.store(loss, 0, 0.0f32);
    l.b.store(count, 0, 0.0f32);
    let reduction = match &graph.node(a).op {
        Op::SoftmaxCrossEntropy {
            ignore_index,
            reduction,
        } => {
            let d = dims4(&d)?;
            let (classes, plane) = (d[1], d[2] * d[3]);
            let i = l.b.begin_for(Expr::ThreadId, d[0] * plane, BLOCK as i64);
            let batch = l.b.let_(i.clone() / plane);
            let p = l.b.let_(i.clone() % plane);
            let label = l.value_at(target, &i)?;
            let label = l.b.let_(label.cast(Ty::Index));
            l.b.begin_if(label.clone().ne(*ignore_index));
            let (max, sum) = l.softmax_stats(pred, &batch, &p, classes, plane)?;
            let in_range = l.b.let_(inside(&label, classes));
            let index = l.b.let_(Expr::select(
                in_range.clone(),
                (batch * classes + label) * plane + p,
                0,
            ));
            let x = l.value_at(pred, &index)?;
            // A label outside the classes makes the loss NaN (the interpreter refuses it).
            let term = Expr::select(in_range, sum.log() + max - x, f32::NAN);
            let v = l.b.let_(Expr::load(loss, 0) + term);
            l.b.store(loss, 0, v);
            let c1 = l.b.let_(Expr::load(count, 0) + 1.0f32);
            l.b.store(count, 0, c1);
            l.b.end_if();
            l.b.end_for();
            *reduction
        }
        Op::LeastSquares {
            ignore_value,
            reduction,
        } => {
            let total: u64 = d.iter().product();
            let i = l.b.begin_for(Expr::ThreadId, total, BLOCK as i64);
            let (p, t) = (l.value_at(pred, &i)?, l.value_at(target, &i)?);
            l.b.begin_if(t.clone().ne(f(*ignore_value)));
            let diff = l.b.let_(p - t);
            let v = l.b.let_(Expr::load(loss, 0) + diff.clone() * diff);
            l.b.store(loss, 0, v);
            let c1 = l.b.let_(Expr::load(count, 0) + 1.0f32);
            l.b.store(count, 0, c1);
            l.b.end_if();
            l.b.end_for();
            *reduction
        }
        other => {
            return Err(LowerError(format!(
                "rfn.{} is not a loss",
                other.mnemonic()
            )))
        }
    };
    let totals = l.tree_sum(&[loss, count]);
    l.b.begin_if(Expr::ThreadId.eq(0));
    let (total, n) = (l.b.let_(totals[0].clone()), l.b.let_(totals[1].clone()));
    let value = match reduction {
        Reduction::Sum => total,
        Reduction::Mean => {
            l.b.let_(Expr::select(n.clone().gt(0.0f32), total / n, 0.0f32))
        }
    };
    l.emit_outputs(&Expr::Int(0), &[], Some((a, value)))?;
    l.b.end_if();
    l.finish(1)
}

/// The number of elements a mean-reduced loss gradient divides by, into scratch[0].
fn lower_count(graph: &Graph, a: NodeId) -> Result<LoweredLaunch, LowerError> {
    let empty = Kernel {
        nodes: Vec::new(),
        anchor: None,
        inputs: Vec::new(),
        outputs: Vec::new(),
    };
    let name = format!("{}.count", graph.node(a).op.mnemonic());
    let mut l = Launch::new(graph, &empty, &name, BLOCK);
    let target = graph.operands(a)[1];
    let total: u64 = graph.node(target).ty.elements();
    let out = l.scratch(0, 1);
    let count = l.b.private(Ty::F32, 1);
    l.b.store(count, 0, 0.0f32);
    let i = l.b.begin_for(Expr::ThreadId, total, BLOCK as i64);
    let t = l.value_at(target, &i)?;
    let counts = match &graph.node(a).op {
        Op::SoftmaxCrossEntropyGrad { ignore_index, .. } => t.cast(Ty::Index).ne(*ignore_index),
        Op::LeastSquaresGrad { ignore_value, .. } => t.ne(f(*ignore_value)),
        other => {
            return Err(LowerError(format!(
                "rfn.{} counts nothing",
                other.mnemonic()
            )))
        }
    };
    l.b.begin_if(counts);
    let c1 = l.b.let_(Expr::load(count, 0) + 1.0f32);
    l.b.store(count, 0, c1);
    l.b.end_if();
    l.b.end_for();
    let total = l.tree_sum(&[count]).remove(0);
    l.b.begin_if(Expr::ThreadId.eq(0));
    l.b.store(out, 0, total);
    l.b.end_if();
    l.finish(1)
}

/// A convolution or one of its gradients as an implicit GEMM.
fn lower_conv(
    graph: &Graph,
    kernel: &Kernel,
    a: NodeId,
    name: &str,
) -> Result<LoweredLaunch, LowerError> {
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
    // The node behind each GEMM operand, and the three shapes.
    let (x, w, dy, bias, xd, wd, yd) = match kind {
        ConvKind::Forward => (
            Some(ops[0]),
            Some(ops[1]),
            None,
            ops.get(2).copied(),
            dims(ops[0])?,
            dims(ops[1])?,
            dims(a)?,
        ),
        ConvKind::GradInput => (
            None,
            Some(ops[1]),
            Some(ops[0]),
            None,
            dims(a)?,
            dims(ops[1])?,
            dims(ops[0])?,
        ),
        ConvKind::GradWeight => (
            Some(ops[0]),
            None,
            Some(ops[1]),
            None,
            dims(ops[0])?,
            dims(a)?,
            dims(ops[1])?,
        ),
    };
    let problem = ConvProblem {
        kind,
        x: xd,
        w: wd,
        y: yd,
        stride: *stride,
        pad: *pad,
        dilation: *dilation,
        groups: *groups,
        bias: bias.is_some(),
    };
    let result_dims = graph.node(a).ty.dims.clone();
    let mut b = KernelBuilder::new(name, BLOCK);
    let launch = std::cell::RefCell::new(Launch::new(graph, kernel, name, BLOCK));
    let failure: std::cell::RefCell<Option<LowerError>> = std::cell::RefCell::new(None);
    // The closures get the builder from the GEMM generator; the launch's own builder is
    // swapped in while they run so that operand and epilogue code lands in the kernel.
    let with_launch =
        |b: &mut KernelBuilder, f: &mut dyn FnMut(&mut Launch) -> Result<Expr, LowerError>| {
            let mut l = launch.borrow_mut();
            std::mem::swap(b, &mut l.b);
            let out = f(&mut l);
            std::mem::swap(b, &mut l.b);
            out.unwrap_or_else(|e| {
                failure.borrow_mut().get_or_insert(e);
                Expr::F32(0.0)
            })
        };
    let mut load = |b: &mut KernelBuilder, operand: ConvOperand, flat: Expr| {
        let node = match operand {
            ConvOperand::X => x,
            ConvOperand::W => w,
            ConvOperand::Dy => dy,
            ConvOperand::Bias => bias,
        };
        with_launch(b, &mut |l| match node {
            Some(node) => l.value_at(node, &flat),
            None => Err(LowerError(format!(
                "the GEMM asked for {operand:?}, which rfn.{} does not have",
                graph.node(a).op.mnemonic()
            ))),
        })
    };
    let mut store = |b: &mut KernelBuilder, flat: Expr, value: Expr| {
        with_launch(b, &mut |l| {
            let v = l.b.let_(value.clone());
            l.emit_outputs(&flat, &result_dims, Some((a, v)))?;
            Ok(Expr::F32(0.0))
        });
    };
    let grid = conv_kernel(&mut b, &problem, &mut load, &mut store);
    if let Some(e) = failure.into_inner() {
        return Err(e);
    }
    let mut l = launch.into_inner();
    l.b = b;
    l.finish(grid)
}
