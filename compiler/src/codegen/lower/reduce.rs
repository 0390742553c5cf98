//! The reductions: block-wide tree sums, the launches built on them (per-channel sums,
//! sums over broadcast dimensions (global average pooling, `sum_to`), losses, the element
//! count of a mean-reduced loss gradient) and the `1/count` scale that the loss gradients
//! read back.

use super::gather::inside;
use super::{
    dims4, f, reindex, strides, Arg, HostStep, Launch, LowerError, LoweredLaunch, BLOCK,
    LOOPING_BLOCK,
};
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

/// Partial sums a thread of the CPU's channel sum keeps: two AVX2 vectors.
const LANES: u64 = 16;

/// The CPU's per-channel sum: one thread per channel (blocks of [`LOOPING_BLOCK`]), each
/// plane summed into [`LANES`] partial sums, element `j` of a run of `LANES` into partial
/// sum `j` (a loop LLVM vectorises: in strict floating point it keeps a single running sum
/// scalar), then the plane's last `hw % LANES` elements into the first, and the partial
/// sums added pairwise. The GPU's launch runs one block per channel, which on the CPU reads
/// a plane 256 elements apart per thread.
pub(super) fn lower_channel_sum_host(
    graph: &Graph,
    kernel: &Kernel,
    a: NodeId,
    name: &str,
) -> Result<LoweredLaunch, LowerError> {
    let dy = graph.operands(a)[0];
    let [n, c, h, w] = dims4(&graph.node(dy).ty.dims)?;
    let hw = h * w;
    let mut l = Launch::new(
        graph,
        kernel,
        &format!("host_channel_sum+{name}"),
        LOOPING_BLOCK,
    );
    let channel =
        l.b.let_(Expr::BlockId * LOOPING_BLOCK as i64 + Expr::ThreadId);
    l.b.begin_if(channel.clone().lt(c));
    let acc = l.b.private(Ty::F32, LANES);
    for lane in 0..LANES {
        l.b.store(acc, lane as i64, 0.0f32);
    }
    let batch = l.b.begin_for(0, n as i64, 1);
    let plane = l.b.let_((batch * c as i64 + channel.clone()) * hw as i64);
    let runs = hw / LANES;
    if runs > 0 {
        let run = l.b.begin_for(0, runs as i64, 1);
        let first = l.b.let_(plane.clone() + run * LANES as i64);
        let lane = l.b.begin_vectorized_for(0, LANES as i64);
        let v = l.value_at(dy, &(first + lane.clone()))?;
        let sum = l.b.let_(Expr::load(acc, lane.clone()) + v);
        l.b.store(acc, lane, sum);
        l.b.end_for();
        l.b.end_for();
    }
    if hw % LANES != 0 {
        let j = l.b.begin_for((runs * LANES) as i64, hw as i64, 1);
        let v = l.value_at(dy, &(plane + j))?;
        l.accumulate(acc, v);
        l.b.end_for();
    }
    l.b.end_for();
    let mut sums: Vec<Expr> = (0..LANES).map(|j| Expr::load(acc, j as i64)).collect();
    while sums.len() > 1 {
        let half = sums.len() / 2;
        sums = (0..half)
            .map(|j| l.b.let_(sums[j].clone() + sums[j + half].clone()))
            .collect();
    }
    let total = l.b.let_(sums.remove(0));
    l.emit_outputs(&channel, &[c], Some((a, total)))?;
    l.b.end_if();
    l.finish(c.div_ceil(LOOPING_BLOCK as u64))
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
    let i =
        l.b.begin_for(Expr::ThreadId, loss_elements(graph, a), BLOCK as i64);
    let (term, reduction) = l.begin_loss_term(a, &i)?;
    l.accumulate(loss, term);
    l.accumulate(count, 1.0f32);
    l.b.end_if();
    l.b.end_for();
    let totals = l.tree_sum(&[loss, count]);
    l.b.begin_if(Expr::ThreadId.eq(0));
    let (total, n) = (l.b.let_(totals[0].clone()), l.b.let_(totals[1].clone()));
    l.emit_loss(a, reduction, total, n)?;
    l.b.end_if();
    l.finish(1)
}

/// The CPU's loss: one thread per row of the target (blocks of [`LOOPING_BLOCK`], on
/// every worker) sums its elements' terms and counts the elements that count into scratch;
/// then one thread sums the rows' sums in order. Two levels of sums of a few hundred terms
/// each round about as little as the GPU's tree (a single running sum over 2^18 pixels
/// moved refinenet4's loss by 1e-5 relative). The GPU's launch sums in one block, which the
/// CPU runs on one worker.
pub(super) fn lower_loss_host(
    graph: &Graph,
    kernel: &Kernel,
    a: NodeId,
    name: &str,
) -> Result<Vec<HostStep>, LowerError> {
    let target = &graph.node(graph.operands(a)[1]).ty.dims;
    let width = target.last().copied().unwrap_or(1).max(1);
    let rows = loss_elements(graph, a) / width;
    let sums = Arg::Scratch {
        offset: 0,
        bytes: 2 * rows * 4,
    };
    let mut l = Launch::new(
        graph,
        kernel,
        &format!("host_loss_rows+{name}"),
        LOOPING_BLOCK,
    );
    let out = l.arg_buf(sums);
    let row =
        l.b.let_(Expr::BlockId * LOOPING_BLOCK as i64 + Expr::ThreadId);
    l.b.begin_if(row.clone().lt(rows));
    let (loss, count) = (l.b.private(Ty::F32, 1), l.b.private(Ty::F32, 1));
    l.b.store(loss, 0, 0.0f32);
    l.b.store(count, 0, 0.0f32);
    let col = l.b.begin_for(0, width as i64, 1);
    let i = l.b.let_(row.clone() * width as i64 + col);
    let (term, reduction) = l.begin_loss_term(a, &i)?;
    l.accumulate(loss, term);
    l.accumulate(count, 1.0f32);
    l.b.end_if();
    l.b.end_for();
    l.b.store(out, row.clone(), Expr::load(loss, 0));
    l.b.store(out, row + rows as i64, Expr::load(count, 0));
    l.b.end_if();
    let each = l.finish(rows.div_ceil(LOOPING_BLOCK as u64))?;
    let mut l = Launch::new(graph, kernel, &format!("host_loss_sum+{name}"), 1);
    let buf = l.arg_buf(sums);
    let (loss, count) = (l.b.private(Ty::F32, 1), l.b.private(Ty::F32, 1));
    l.b.store(loss, 0, 0.0f32);
    l.b.store(count, 0, 0.0f32);
    let r = l.b.begin_for(0, rows as i64, 1);
    l.accumulate(loss, Expr::load(buf, r.clone()));
    l.accumulate(count, Expr::load(buf, r + rows as i64));
    l.b.end_for();
    let (total, n) = (
        l.b.let_(Expr::load(loss, 0)),
        l.b.let_(Expr::load(count, 0)),
    );
    l.emit_loss(a, reduction, total, n)?;
    Ok(vec![HostStep::Kernel(each), HostStep::Kernel(l.finish(1)?)])
}

/// The elements of loss `a`'s terms: its target's (a pixel's label, or a target value).
fn loss_elements(graph: &Graph, a: NodeId) -> u64 {
    graph.node(graph.operands(a)[1]).ty.elements()
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
    /// Opens the test that pixel `i` of softmax cross-entropy loss `a` counts (its label is
    /// not `ignore_index`) and returns the pixel's term inside it; close it with
    /// `self.b.end_if()`.
    fn begin_softmax_loss_term(
        &mut self,
        a: NodeId,
        ignore_index: i64,
        i: &Expr,
    ) -> Result<Expr, LowerError> {
        let (pred, target) = (self.operand(a, 0), self.operand(a, 1));
        let d = dims4(self.dims(pred))?;
        let (classes, plane) = (d[1], d[2] * d[3]);
        let batch = self.b.let_(i.clone() / plane);
        let p = self.b.let_(i.clone() % plane);
        let label = self.value_at(target, i)?;
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
        Ok(Expr::select(in_range, sum.log() + max - x, f32::NAN))
    }

    /// Opens the test that element `i` of least-squares loss `a` counts (its target is
    /// not `ignore_value`) and returns its squared difference inside it; close it with
    /// `self.b.end_if()`.
    fn begin_least_squares_term(
        &mut self,
        a: NodeId,
        ignore_value: f64,
        i: &Expr,
    ) -> Result<Expr, LowerError> {
        let (pred, target) = (self.operand(a, 0), self.operand(a, 1));
        let (p, t) = (self.value_at(pred, i)?, self.value_at(target, i)?);
        self.b.begin_if(t.clone().ne(f(ignore_value)));
        let diff = self.b.let_(p - t);
        Ok(diff.clone() * diff)
    }

    /// Opens the test that element `i` of loss `a` counts and returns its term inside it
    /// (close it with `self.b.end_if()`), with the loss's reduction.
    fn begin_loss_term(&mut self, a: NodeId, i: &Expr) -> Result<(Expr, Reduction), LowerError> {
        match &self.graph.node(a).op {
            &Op::SoftmaxCrossEntropy {
                ignore_index,
                reduction,
            } => Ok((self.begin_softmax_loss_term(a, ignore_index, i)?, reduction)),
            &Op::LeastSquares {
                ignore_value,
                reduction,
            } => Ok((
                self.begin_least_squares_term(a, ignore_value, i)?,
                reduction,
            )),
            other => Err(LowerError(format!(
                "rfn.{} is not a loss",
                other.mnemonic()
            ))),
        }
    }

    /// Stores loss `a` from the sum of its terms `total` over the `n` elements that count.
    fn emit_loss(
        &mut self,
        a: NodeId,
        reduction: Reduction,
        total: Expr,
        n: Expr,
    ) -> Result<(), LowerError> {
        let value = match reduction {
            Reduction::Sum => total,
            Reduction::Mean => self
                .b
                .let_(Expr::select(n.clone().gt(0.0f32), total / n, 0.0f32)),
        };
        self.emit_outputs(&Expr::Int(0), &[], Some((a, value)))
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
