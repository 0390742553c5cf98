//! Lowering: one fused kernel of the graph becomes one or more kernel launches in KIR.
//!
//! Every op of a fused kernel is computed where its value is needed, at one element index:
//! elementwise ops from their operands at the same index (per-channel operands at the
//! element's channel, scalars at 0, size-1 dimensions at 0), gathers (pooling, bilinear
//! resize, their gradients, concatenation and channel slices, batch-norm folding, loss
//! gradients) by loops over the inputs they read.
//! The kernel's *anchor* decides the launch shape: the convolutions are tiled implicit
//! GEMMs ([`super::gemm`]) whose fused prologue runs where a tile is loaded and whose
//! epilogue runs where a result is stored; channel sums, losses and broadcast sums are
//! block-wide tree reductions; everything else runs one thread per output element. A
//! mean-reduced loss gradient first counts the elements that count, in one extra launch,
//! into scratch.
//!
//! Invariants: the launches of a kernel read only its inputs (and scratch they wrote) and
//! write exactly its outputs, each element once; every value an element needs is loaded
//! before any of the element's outputs is stored (outputs may share storage with inputs
//! that are read only at the same index); the kernels pass [`KernelFn::check`].
//!
//! This module holds the entry point and the `Launch` under construction (its buffers,
//! operands, memoised values and outputs); the launch shapes and the formulas live in:
//!
//! - `elementwise`: the per-element formulas and the one-thread-per-element launch;
//! - `gather`: max- and average pooling, bilinear resize, softmax and their gradients
//!   (loops and taps), and the CPU's schedule of kernels that compute them (passes that
//!   store what every element would search again);
//! - `channels`: concatenation along the channels and its adjoint, the channel slice;
//! - `reduce`: tree sums, the channel-sum, loss, count and broadcast-sum (global pooling,
//!   `sum_to`) launches, the loss scale;
//! - `dropout`: dropout's keep mask (the SplitMix64 chain of `crate::rng`);
//! - `conv`: the glue to the implicit GEMMs of [`super::gemm`];
//! - `host_conv`: the CPU's schedule of a convolution kernel (gather, packed GEMM in the
//!   runtime, epilogue), [`lower_kernel_host`]; `winograd`: its F(2x2, 3x3) and F(4x4, 3x3)
//!   forms for 3x3 stride-1 convolutions.
//!
//! [`KernelFn::check`]: super::kir::KernelFn::check

mod channels;
mod conv;
mod dropout;
mod elementwise;
mod gather;
mod host_conv;
mod reduce;
mod winograd;

pub use host_conv::{HostStep, LoweredGemm, LoweredMatrix};

use std::collections::HashMap;

use super::check::CheckedKernel;
use super::gemm::{Precision, BLOCK};
use super::kir::{Buf, Expr, KernelBuilder, Ty};
use crate::ir::{broadcasts_to, DType, Graph, NodeId, Op, OpKind, Reduction};
use crate::passes::fusion::Kernel;

/// What a kernel argument points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arg {
    /// The storage of a value (an arena slot, or a leaf's slot).
    Value(NodeId),
    /// Bytes of the scratch region.
    Scratch { offset: u64, bytes: u64 },
    /// Bytes of the packed region (weights the CPU's schedule transforms once).
    Packed { offset: u64, bytes: u64 },
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

/// Lowers one fused kernel of `graph` to its launches, convolutions multiplying in
/// `precision`.
pub fn lower_kernel(
    graph: &Graph,
    kernel: &Kernel,
    precision: Precision,
) -> Result<Vec<LoweredLaunch>, LowerError> {
    let name = kernel_ops(graph, kernel);
    let Some(a) = kernel.anchor else {
        return Ok(vec![elementwise::lower(
            graph,
            kernel,
            &name,
            None,
            &Default::default(),
            false,
        )?]);
    };
    match graph.node(a).op.kind() {
        OpKind::Conv(_) => Ok(vec![conv::lower(graph, kernel, a, &name, precision)?]),
        OpKind::ChannelSum => Ok(vec![reduce::lower_channel_sum(graph, kernel, a, &name)?]),
        OpKind::Loss { .. } => Ok(vec![reduce::lower_loss(graph, kernel, a, &name)?]),
        OpKind::Reduce => Ok(vec![reduce::lower_sum(graph, kernel, a, &name)?]),
        OpKind::LossGrad {
            reduction: Reduction::Mean,
        } => {
            let count = reduce::lower_count(graph, a)?;
            let elementwise =
                elementwise::lower(graph, kernel, &name, Some(a), &Default::default(), false)?;
            Ok(vec![count, elementwise])
        }
        OpKind::LossGrad {
            reduction: Reduction::Sum,
        }
        | OpKind::Leaf
        | OpKind::Elementwise { .. }
        | OpKind::Pool { .. }
        | OpKind::Concat { .. }
        | OpKind::Resize { .. }
        | OpKind::FoldBn => Ok(vec![elementwise::lower(
            graph,
            kernel,
            &name,
            None,
            &Default::default(),
            false,
        )?]),
    }
}

/// The CPU's steps for one fused kernel where they differ from the GPU's launches
/// (convolutions; losses and per-channel sums, whose GPU launches reduce in one block per
/// result; kernels with max pools or with max pool, resize or softmax
/// cross-entropy gradients; one-thread-per-element kernels over rows of at least 16);
/// `None` where the CPU runs [`lower_kernel`]'s launches. With `packed` (the parameters do not change
/// between runs: inference), weights a convolution transforms (Winograd filters) go to the
/// packed region from offset `*packed` on, transformed by [`HostStep::Pack`] steps, and
/// `*packed` moves past them.
pub fn lower_kernel_host(
    graph: &Graph,
    kernel: &Kernel,
    packed: Option<&mut u64>,
) -> Result<Option<Vec<HostStep>>, LowerError> {
    let name = kernel_ops(graph, kernel);
    let Some(a) = kernel.anchor else {
        return gather::lower_with_stored(graph, kernel, &name, None);
    };
    match graph.node(a).op.kind() {
        OpKind::Conv(_) => host_conv::lower(graph, kernel, a, &name, packed).map(Some),
        OpKind::Loss { .. } => reduce::lower_loss_host(graph, kernel, a, &name).map(Some),
        OpKind::ChannelSum => Ok(Some(vec![HostStep::Kernel(
            reduce::lower_channel_sum_host(graph, kernel, a, &name)?,
        )])),
        OpKind::Reduce => Ok(None),
        OpKind::LossGrad {
            reduction: Reduction::Mean,
        } => gather::lower_with_stored(graph, kernel, &name, Some(a)),
        // The one-thread-per-element kernels.
        _ => gather::lower_with_stored(graph, kernel, &name, None),
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
    /// Values earlier launches stored for nodes of the kernel (the CPU's schedule; see
    /// `gather::Stored`), read instead of computing them.
    stored: HashMap<NodeId, Arg>,
    /// Where the element index is a row and a column (the CPU's one-thread-per-row
    /// kernels), so that coordinates come from them without dividing the index.
    rows: Option<Rows>,
}

/// An element index `flat = row * width + col` with `col` in `0..width`: the row's
/// coordinates come from `row` alone and the last one is `col`, so that the loop over
/// `col` reads consecutive elements at addresses LLVM sees are consecutive.
#[derive(Clone, Debug)]
struct Rows {
    flat: Expr,
    row: Expr,
    col: Expr,
    width: u64,
}

/// The fewest iterations a loop must have to ask LLVM to vectorise it: two vectors of 8
/// (a shorter loop stays scalar; LLVM would refuse to vectorise it by 8 and say so).
const MIN_VECTORISED: u64 = 16;

/// Threads per block of the CPU's launches whose threads each loop over a row or a plane:
/// few, so that a launch of a few hundred rows or planes still splits over every worker
/// (the CPU splits a launch by blocks).
const LOOPING_BLOCK: u32 = 4;

/// Of `count` windows of `size` cells, window `i` starting at `i * stride - pad`, those
/// `lo..hi` that lie wholly inside `0..extent` (empty at `lo` when none does).
fn inside_windows(count: u64, extent: u64, size: u64, stride: u64, pad: i64) -> (u64, u64) {
    let lo = (pad.max(0) as u64).div_ceil(stride).min(count);
    let hi = match extent as i64 + pad - size as i64 {
        end if end >= 0 => (end as u64 / stride + 1).clamp(lo, count),
        _ => lo,
    };
    (lo, hi)
}

/// `0..count` cut at the windows `lo..hi` wholly inside: `(from, to, inside)` for each
/// part that is not empty.
fn spans(lo: u64, hi: u64, count: u64) -> impl Iterator<Item = (u64, u64, bool)> {
    [(0, lo, false), (lo, hi, true), (hi, count, false)]
        .into_iter()
        .filter(|(from, to, _)| from < to)
}

fn dims4(dims: &[u64]) -> Result<[u64; 4], LowerError> {
    <[u64; 4]>::try_from(dims)
        .map_err(|_| LowerError(format!("expected an NCHW tensor, got {dims:?}")))
}

fn f(v: f64) -> Expr {
    Expr::F32(v as f32)
}

/// Row-major strides of `dims`.
fn strides(dims: &[u64]) -> Vec<u64> {
    let mut out = vec![1u64; dims.len()];
    for d in (0..dims.len().saturating_sub(1)).rev() {
        out[d] = out[d + 1] * dims[d + 1];
    }
    out
}

/// `flat`, a row-major index over `dims`, taken apart into coordinates that are put back
/// together with `strides` (a stride of 0 drops that coordinate): the index of the same
/// element in another layout, such as the operand a broadcast element reads.
fn reindex(l: &mut Launch, flat: &Expr, dims: &[u64], strides: &[u64]) -> Expr {
    let mut index = Expr::Int(0);
    let mut inner = 1u64;
    for (&d, &s) in dims.iter().zip(strides).rev() {
        if d != 1 && s != 0 {
            let coordinate = l.coordinate(flat, inner, d);
            index = index + coordinate * s as i64;
        }
        inner = inner.saturating_mul(d);
    }
    l.b.let_(index)
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
            stored: HashMap::new(),
            rows: None,
        }
    }

    /// `flat / d` (`flat` a non-negative index), from the row alone where `flat` is
    /// [`Rows`]' index and `d` a multiple of its width.
    fn quotient(&self, flat: &Expr, d: u64) -> Expr {
        match &self.rows {
            Some(r) if r.flat == *flat && d.is_multiple_of(r.width) => match d / r.width {
                1 => r.row.clone(),
                q => r.row.clone() / q as i64,
            },
            _ => flat.clone() / d as i64,
        }
    }

    /// `flat % d` (`flat` a non-negative index): `col` plus a multiple of the width where
    /// `flat` is [`Rows`]' index and `d` a multiple of its width.
    fn remainder(&self, flat: &Expr, d: u64) -> Expr {
        match &self.rows {
            Some(r) if r.flat == *flat && d.is_multiple_of(r.width) => match d / r.width {
                1 => r.col.clone(),
                q => r.row.clone() % q as i64 * r.width as i64 + r.col.clone(),
            },
            _ => flat.clone() % d as i64,
        }
    }

    /// The coordinate `(flat / inner) % d` of a row-major index.
    fn coordinate(&self, flat: &Expr, inner: u64, d: u64) -> Expr {
        match &self.rows {
            Some(r) if r.flat == *flat && inner == 1 => self.remainder(flat, d),
            Some(r) if r.flat == *flat && inner.is_multiple_of(r.width) => {
                self.quotient(flat, inner) % d as i64
            }
            _ => flat.clone() / inner as i64 % d as i64,
        }
    }

    /// Opens the loop over the elements `flat` of a row-major tensor of `dims`: one thread
    /// per element, or with `rows` (the CPU's schedule) one per row (all dims but the
    /// last) looping over its columns, vectorised, `flat`'s coordinates
    /// ([`Self::coordinate`]) then coming from the row and the column without dividing it,
    /// in blocks of [`LOOPING_BLOCK`] rows. Rows shorter than [`MIN_VECTORISED`] (a 3x3
    /// filter's) are one thread per element. Call it first (it may change the launch's
    /// block); returns `flat` and the number of blocks; close it with
    /// [`Self::end_elements`].
    fn begin_elements(&mut self, dims: &[u64], rows: bool) -> (Expr, u64) {
        let width = dims.last().copied().unwrap_or(1).max(1);
        let total = dims.iter().product::<u64>();
        let rows = rows && width >= MIN_VECTORISED;
        if rows {
            self.b.set_block(LOOPING_BLOCK);
        }
        let block = self.b.block();
        let thread = self.b.let_(Expr::BlockId * block as i64 + Expr::ThreadId);
        if !rows {
            self.b.begin_if(thread.clone().lt(total));
            return (thread, total.div_ceil(block as u64));
        }
        let (row, count) = (thread, total / width);
        self.b.begin_if(row.clone().lt(count));
        let col = self.b.begin_vectorized_for(0, width as i64);
        let flat = self.b.let_(row.clone() * width as i64 + col.clone());
        self.rows = Some(Rows {
            flat: flat.clone(),
            row,
            col,
            width,
        });
        (flat, count.div_ceil(block as u64))
    }

    /// Closes [`Self::begin_elements`]' loops.
    fn end_elements(&mut self) {
        if self.rows.take().is_some() {
            self.b.end_for();
        }
        self.b.end_if();
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

    /// Operand `i` of `n`.
    fn operand(&self, n: NodeId, i: usize) -> NodeId {
        self.graph.operands(n)[i]
    }

    fn member(&self, n: NodeId) -> bool {
        self.kernel.nodes.contains(&n)
    }

    /// The f32 buffer holding value `n` when the kernel reads it as it is (an input of the
    /// kernel, not a value computed in it, nor a constant).
    fn plain_buf(&mut self, n: NodeId) -> Option<Buf> {
        let node = self.graph.node(n);
        let plain = !self.member(n)
            && !matches!(node.op, Op::Constant { .. })
            && node.ty.dtype == DType::F32;
        plain.then(|| self.buf(n))
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

    /// The buffer of `arg`: a value's own storage or an f32 scratch or packed slot.
    fn arg_buf(&mut self, arg: Arg) -> Buf {
        match arg {
            Arg::Scratch { bytes, .. } | Arg::Packed { bytes, .. } => self.f32_slot(arg, bytes / 4),
            Arg::Value(n) => self.buf(n),
        }
    }

    /// Opens a loop over `from..to` that asks LLVM to vectorise it when `vectorise` and it
    /// has at least [`MIN_VECTORISED`] iterations.
    fn begin_span(&mut self, from: u64, to: u64, vectorise: bool) -> Expr {
        match vectorise && to - from >= MIN_VECTORISED {
            true => self.b.begin_vectorized_for(from as i64, to as i64),
            false => self.b.begin_for(from as i64, to as i64, 1),
        }
    }

    /// The buffer of the value an earlier launch stored for node `n`, if one did (a
    /// parameter of this launch from the first read on).
    fn stored_buf(&mut self, n: NodeId) -> Option<Buf> {
        let arg = *self.stored.get(&n)?;
        Some(self.arg_buf(arg))
    }

    fn scratch(&mut self, offset: u64, len: u64) -> Buf {
        let arg = Arg::Scratch {
            offset,
            bytes: len * 4,
        };
        self.f32_slot(arg, len)
    }

    /// The buffer of `len` f32 at a scratch or packed slot.
    fn f32_slot(&mut self, arg: Arg, len: u64) -> Buf {
        if let Some(&b) = self.bufs.get(&arg) {
            return b;
        }
        let buf = self.b.param(Ty::F32, len);
        self.args.push(arg);
        self.bufs.insert(arg, buf);
        buf
    }

    /// Adds `term` to the one-element accumulator `acc`.
    fn accumulate(&mut self, acc: Buf, term: impl Into<Expr>) {
        let sum = self.b.let_(Expr::load(acc, 0) + term.into());
        self.b.store(acc, 0, sum);
    }

    /// The value of operand `i` of `n`, at the element `flat` of `n` (broadcasting
    /// per-channel vectors, scalars and dimensions of size 1).
    fn operand_at(&mut self, n: NodeId, i: usize, flat: &Expr) -> Result<Expr, LowerError> {
        let operand = self.operand(n, i);
        let own = self.dims(n);
        let theirs = self.dims(operand);
        let index = if theirs == own {
            flat.clone()
        } else if theirs.iter().product::<u64>() == 1 {
            Expr::Int(0)
        } else if theirs.len() == 1 && own.len() == 4 && theirs[0] == own[1] {
            self.b.let_(self.coordinate(flat, own[2] * own[3], own[1]))
        } else if broadcasts_to(theirs, own) {
            let kept: Vec<u64> = strides(theirs)
                .iter()
                .zip(theirs)
                .map(|(&s, &d)| if d == 1 { 0 } else { s })
                .collect();
            reindex(self, flat, own, &kept)
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
}
