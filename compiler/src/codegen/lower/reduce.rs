//! The reductions: block-wide tree sums, the launches built on them (per-channel sums,
//! sums over broadcast dimensions (global average pooling, `sum_to`), losses, the element
//! count of a mean-reduced loss gradient) and the `1/count` scale that the loss gradients
//! read back.

use super::gather::inside;
use super::{dims4, f, reindex, strides, Launch, LowerError, LoweredLaunch, BLOCK};
use crate::codegen::kir::{Buf, Expr, Ty};
use crate::ir::{Graph, NodeId, Op, Reduction};
use crate::passes::fusion::Kernel;

/// Per-channel sum over batch and space: one block per channel.
pub(super) fn lower_channel_sum(
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
    l.accumulate(acc, v);
    l.b.end_for();
    let total = l.tree_sum(&[acc]).remove(0);
    l.b.begin_if(Expr::ThreadId.eq(0));
    let total = l.b.let_(total);
    l.emit_outputs(&channel, &[c], Some((a, total)))?;
    l.b.end_if();
    l.finish(c)
}

/// A sum over the dimensions where the anchor's result has size 1 (all of them for a
/// rank-0 result): one block per result element. Global average pooling divides the sum
/// by the number of elements summed.
pub(super) fn lower_sum(
    graph: &Graph,
    kernel: &Kernel,
    a: NodeId,
    name: &str,
) -> Result<LoweredLaunch, LowerError> {
    let x = graph.operands(a)[0];
    let (xd, yd) = (&graph.node(x).ty.dims, &graph.node(a).ty.dims);
    if !yd.is_empty() && yd.len() != xd.len() {
        return Err(LowerError(format!(
            "cannot sum {xd:?} to {yd:?}: the ranks differ"
        )));
    }
    let kept = |d: usize| !yd.is_empty() && yd[d] == xd[d];
    let x_strides = strides(xd);
    let (summed_dims, summed_strides): (Vec<u64>, Vec<u64>) = (0..xd.len())
        .filter(|&d| !kept(d))
        .map(|d| (xd[d], x_strides[d]))
        .unzip();
    let count: u64 = summed_dims.iter().product();
    let mut l = Launch::new(graph, kernel, name, BLOCK);
    let out = Expr::BlockId;
    // The first input element of result element `out`, then the offsets of the others.
    let base_strides: Vec<u64> = (0..yd.len())
        .map(|d| if kept(d) { x_strides[d] } else { 0 })
        .collect();
    let base = reindex(&mut l, &out, yd, &base_strides);
    let acc = l.b.private(Ty::F32, 1);
    l.b.store(acc, 0, 0.0f32);
    let i = l.b.begin_for(Expr::ThreadId, count, BLOCK as i64);
    let offset = reindex(&mut l, &i, &summed_dims, &summed_strides);
    let v = l.value_at(x, &(base.clone() + offset))?;
    l.accumulate(acc, v);
    l.b.end_for();
    let total = l.tree_sum(&[acc]).remove(0);
    l.b.begin_if(Expr::ThreadId.eq(0));
    let value = match graph.node(a).op {
        Op::GlobalAvgPool2d => l.b.let_(total / f(count as f64)),
        _ => l.b.let_(total),
    };
    l.emit_outputs(&out, yd, Some((a, value)))?;
    l.b.end_if();
    l.finish(yd.iter().product())
}

/// A loss: one block sums the per-element losses and counts the elements that count.
pub(super) fn lower_loss(
    graph: &Graph,
    kernel: &Kernel,
    a: NodeId,
    name: &str,
) -> Result<LoweredLaunch, LowerError> {
    let mut l = Launch::new(graph, kernel, name, BLOCK);
    let loss = l.b.private(Ty::F32, 1);
    let count = l.b.private(Ty::F32, 1);
    l.b.store(loss, 0, 0.0f32);
    l.b.store(count, 0, 0.0f32);
    let reduction = match &graph.node(a).op {
        Op::SoftmaxCrossEntropy {
            ignore_index,
            reduction,
        } => {
            l.softmax_loss_terms(a, *ignore_index, (loss, count))?;
            *reduction
        }
        Op::LeastSquares {
            ignore_value,
            reduction,
        } => {
            l.least_squares_terms(a, *ignore_value, (loss, count))?;
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

/// The number of elements a mean-reduced loss gradient divides by, into `scratch[0]`.
pub(super) fn lower_count(graph: &Graph, a: NodeId) -> Result<LoweredLaunch, LowerError> {
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
    l.accumulate(count, 1.0f32);
    l.b.end_if();
    l.b.end_for();
    let total = l.tree_sum(&[count]).remove(0);
    l.b.begin_if(Expr::ThreadId.eq(0));
    l.b.store(out, 0, total);
    l.b.end_if();
    l.finish(1)
}

impl Launch<'_> {
    /// Each thread's share of a softmax cross-entropy loss (anchor `a`): the terms of its
    /// pixels into `loss`, how many pixels count into `count`.
    fn softmax_loss_terms(
        &mut self,
        a: NodeId,
        ignore_index: i64,
        (loss, count): (Buf, Buf),
    ) -> Result<(), LowerError> {
        let (pred, target) = (self.operand(a, 0), self.operand(a, 1));
        let d = dims4(self.dims(pred))?;
        let (classes, plane) = (d[1], d[2] * d[3]);
        let i = self.b.begin_for(Expr::ThreadId, d[0] * plane, BLOCK as i64);
        let batch = self.b.let_(i.clone() / plane);
        let p = self.b.let_(i.clone() % plane);
        let label = self.value_at(target, &i)?;
        let label = self.b.let_(label.cast(Ty::Index));
        self.b.begin_if(label.clone().ne(ignore_index));
        let (max, sum) = self.softmax_stats(pred, &batch, &p, classes, plane)?;
        let in_range = self.b.let_(inside(&label, classes));
        let index = self.b.let_(Expr::select(
            in_range.clone(),
            (batch * classes + label) * plane + p,
            0,
        ));
        let x = self.value_at(pred, &index)?;
        // A label outside the classes makes the loss NaN (the interpreter refuses it).
        self.accumulate(loss, Expr::select(in_range, sum.log() + max - x, f32::NAN));
        self.accumulate(count, 1.0f32);
        self.b.end_if();
        self.b.end_for();
        Ok(())
    }

    /// Each thread's share of a least-squares loss (anchor `a`): the squared differences
    /// of its elements into `loss`, how many elements count into `count`.
    fn least_squares_terms(
        &mut self,
        a: NodeId,
        ignore_value: f64,
        (loss, count): (Buf, Buf),
    ) -> Result<(), LowerError> {
        let (pred, target) = (self.operand(a, 0), self.operand(a, 1));
        let total: u64 = self.dims(pred).iter().product();
        let i = self.b.begin_for(Expr::ThreadId, total, BLOCK as i64);
        let (p, t) = (self.value_at(pred, &i)?, self.value_at(target, &i)?);
        self.b.begin_if(t.clone().ne(f(ignore_value)));
        let diff = self.b.let_(p - t);
        self.accumulate(loss, diff.clone() * diff);
        self.accumulate(count, 1.0f32);
        self.b.end_if();
        self.b.end_for();
        Ok(())
    }

    /// Block-wide tree reduction (sum) of each thread's `partials[i][0]`; every thread can
    /// read the totals afterwards.
    pub(super) fn tree_sum(&mut self, partials: &[Buf]) -> Vec<Expr> {
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

    /// 1 for a sum; 1/count (0 without any) for a mean, the count read from scratch.
    pub(super) fn loss_scale(&mut self, reduction: Reduction) -> Expr {
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
}
