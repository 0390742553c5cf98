//! The gathers: ops whose element reads a neighbourhood of its inputs through loops and
//! taps (max- and average pooling and their gradients, bilinear resize and its adjoint,
//! the softmax cross-entropy gradient and the softmax statistics the loss shares).

use rfnc_bundle::SLOT_ALIGN;

use super::{
    dims4, elementwise, inside_windows, spans, Arg, HostStep, Launch, LowerError, BLOCK,
    LOOPING_BLOCK, MIN_VECTORISED,
};
use crate::codegen::kir::{Buf, Expr, KernelBuilder, Ty};
use crate::ir::{Graph, NodeId, Op, Reduction};
use crate::passes::fusion::Kernel;

/// Values a one-thread-per-element kernel would otherwise recompute for every element,
/// stored to scratch by earlier launches in the CPU's schedule, by the node they stand
/// for: a max pool's row maxima (see [`pool_rows`]), a max pool gradient whole (see
/// [`scatter_pool_grad`]), a resize gradient's column pass `[planes, Ho, Wi]` (see
/// [`Launch::resize_grad_cols`]), a softmax cross-entropy gradient's per-pixel maximum
/// logit, then sum of `exp(logit - max)`. A node is one op, so it has one stored value.
#[derive(Clone, Debug, Default)]
pub(super) struct Stored {
    values: Vec<(NodeId, Arg)>,
    /// Max pool gradient node -> its windows' row maxima, then their columns (read by
    /// its winner pass only).
    grad_rows: std::collections::HashMap<NodeId, Arg>,
}

impl Stored {
    /// Lets `l` read everything earlier launches stored (a value becomes a parameter of
    /// the launch only where the launch reads it).
    pub(super) fn attach(&self, l: &mut Launch) {
        l.stored.extend(self.values.iter().copied());
    }

    /// Records that node `n`'s stored value is at `arg`.
    pub(super) fn push(&mut self, n: NodeId, arg: Arg) {
        self.values.push((n, arg));
    }
}

/// Elements of the row pass of max pool (or max pool gradient) `n`: one per input row
/// and output column, `[planes, H, Wo]`.
pub(super) fn pool_rows(graph: &Graph, n: NodeId) -> Result<u64, LowerError> {
    let (x, y) = pool_io(graph, n)?;
    Ok(x[0] * x[1] * x[2] * y[3])
}

/// The input and output dims of max pool (or max pool gradient) `n`.
fn pool_io(graph: &Graph, n: NodeId) -> Result<([u64; 4], [u64; 4]), LowerError> {
    let dims = |m: NodeId| dims4(&graph.node(m).ty.dims);
    match graph.node(n).op {
        Op::MaxPool2dGrad { .. } => Ok((dims(graph.operands(n)[1])?, dims(graph.operands(n)[0])?)),
        _ => Ok((dims(graph.operands(n)[0])?, dims(n)?)),
    }
}

/// The window of max pool (or max pool gradient) `n`, if it is one.
pub(super) fn pool_window(graph: &Graph, n: NodeId) -> Option<Window> {
    match graph.node(n).op {
        Op::MaxPool2d {
            kernel,
            stride,
            pad,
        }
        | Op::MaxPool2dGrad {
            kernel,
            stride,
            pad,
        } => Some(Window::new(kernel, stride, pad)),
        _ => None,
    }
}

/// The CPU's schedule of a one-thread-per-element kernel: one thread per row of its
/// domain where rows have at least `MIN_VECTORISED` (16) columns ([`Launch::begin_elements`]).
/// Where it computes max pools, max pool gradients, resize gradients or softmax
/// cross-entropy gradients, launches first store, per such op, what every element of it
/// would otherwise search again, then the kernel reads them:
/// - a max pool's (or its gradient's) row maxima ([`pool_rows`]);
/// - a max pool gradient's window winners ([`Launch::pool_winners_into`]), then the
///   gradient whole: `dy` added at each window's winner, one thread per plane (one
///   winner search per window instead of `k*k` per input element);
/// - a resize gradient's column pass ([`Launch::resize_grad_cols`]): the kernel's row
///   pass then sums `r` instead of `r*r` taps (`r` about 3x the scale factor);
/// - a pixel's softmax maximum and sum: `2*classes` times fewer reads of the logits,
///   which are often a fused bilinear resize.
///
/// `counted` is a mean-reduced loss gradient (its count launch runs first, as on the
/// GPU). `None` for a kernel with none of them and short rows (the CPU runs the GPU's
/// launches).
pub(super) fn lower_with_stored(
    graph: &Graph,
    kernel: &Kernel,
    name: &str,
    counted: Option<NodeId>,
) -> Result<Option<Vec<HostStep>>, LowerError> {
    let mut steps = Vec::new();
    if let Some(a) = counted {
        steps.push(HostStep::Kernel(super::reduce::lower_count(graph, a)?));
    }
    let mut stored = Stored::default();
    // Offset 0 holds a mean-reduced loss gradient's count when the kernel has one.
    let mut offset = SLOT_ALIGN;
    let mut take = |len: u64| {
        let at = offset;
        offset += (len * 4).div_ceil(SLOT_ALIGN) * SLOT_ALIGN;
        Arg::Scratch {
            offset: at,
            bytes: len * 4,
        }
    };
    let elements = |n: NodeId| -> u64 { graph.node(n).ty.dims.iter().product() };
    for &n in &kernel.nodes {
        // A max pool's (or its gradient's) window in two passes: the row maxima (with the
        // first maximum's column for a gradient) of each input row and output column,
        // then the maximum over the window's rows of them: 2k instead of k^2 taps, and a
        // fused input computed k instead of k^2 times.
        if let Some(w) = pool_window(graph, n) {
            let len = pool_rows(graph, n)?;
            let grad = matches!(graph.node(n).op, Op::MaxPool2dGrad { .. });
            let rows = take(if grad { 2 * len } else { len });
            let mut l = Launch::new(graph, kernel, &format!("host_pool_rows+{name}"), BLOCK);
            stored.attach(&mut l);
            let out = l.arg_buf(rows);
            let threads = l.pool_rows_into(n, out, w)?;
            steps.push(HostStep::Kernel(l.finish(threads.div_ceil(BLOCK as u64))?));
            if !grad {
                stored.push(n, rows);
                continue;
            }
            stored.grad_rows.insert(n, rows);
        }
        match graph.node(n).op {
            Op::MaxPool2dGrad {
                kernel: k,
                stride,
                pad,
            } => {
                let winners = take(elements(graph.operands(n)[0]));
                let mut l = Launch::new(graph, kernel, &format!("host_pool_winners+{name}"), BLOCK);
                let rows = l.arg_buf(stored.grad_rows[&n]);
                let out = l.arg_buf(winners);
                let lines = l.pool_winners_into(n, rows, out, Window::new(k, stride, pad))?;
                steps.push(HostStep::Kernel(l.finish(lines.div_ceil(BLOCK as u64))?));
                let grad = take(elements(n));
                let mut l = Launch::new(
                    graph,
                    kernel,
                    &format!("host_pool_scatter+{name}"),
                    LOOPING_BLOCK,
                );
                stored.attach(&mut l);
                let winners = l.arg_buf(winners);
                let out = l.arg_buf(grad);
                let planes = scatter_pool_grad(&mut l, n, winners, out)?;
                let grid = planes.div_ceil(LOOPING_BLOCK as u64);
                steps.push(HostStep::Kernel(l.finish(grid)?));
                stored.push(n, grad);
            }
            Op::ResizeBilinearGrad { align_corners, .. } => {
                let len = resize_cols(graph, n)?;
                let cols = take(len);
                let mut l = Launch::new(graph, kernel, &format!("host_resize_cols+{name}"), BLOCK);
                stored.attach(&mut l);
                let out = l.arg_buf(cols);
                let flat = l.b.let_(Expr::BlockId * BLOCK as i64 + Expr::ThreadId);
                l.b.begin_if(flat.clone().lt(len));
                let v = l.resize_grad_cols(n, &flat, align_corners)?;
                l.b.store(out, flat, v);
                l.b.end_if();
                steps.push(HostStep::Kernel(l.finish(len.div_ceil(BLOCK as u64))?));
                stored.push(n, cols);
            }
            Op::SoftmaxCrossEntropyGrad { .. } => {
                let pixels = elements(graph.operands(n)[1]);
                let stats = take(2 * pixels);
                let mut l =
                    Launch::new(graph, kernel, &format!("host_softmax_stats+{name}"), BLOCK);
                stored.attach(&mut l);
                let out = l.arg_buf(stats);
                let flat = l.b.let_(Expr::BlockId * BLOCK as i64 + Expr::ThreadId);
                l.b.begin_if(flat.clone().lt(pixels));
                let (max, sum) = l.softmax_pixel_stats(n, &flat)?;
                l.b.store(out, flat.clone(), max);
                l.b.store(out, flat + pixels as i64, sum);
                l.b.end_if();
                steps.push(HostStep::Kernel(l.finish(pixels.div_ceil(BLOCK as u64))?));
                stored.push(n, stats);
            }
            _ => {}
        }
    }
    // Rows long enough to vectorise are the CPU's own loops; else the GPU's launch
    // serves, unless something was stored.
    let width = elementwise::domain(graph, kernel)?
        .last()
        .copied()
        .unwrap_or(1);
    let rows = width >= MIN_VECTORISED;
    if stored.values.is_empty() && !rows {
        return Ok(None);
    }
    steps.push(HostStep::Kernel(elementwise::lower(
        graph, kernel, name, counted, &stored, rows,
    )?));
    Ok(Some(steps))
}

/// Max pool gradient `n`, whole, into `out` (its shape): one thread per plane zeroes the
/// plane, then adds each window's `dy` at the window's stored winner
/// ([`Launch::pool_winners_into`]). Each window is searched once, where the GPU's gather
/// searches every window containing an element for each element. The number of planes
/// (threads).
fn scatter_pool_grad(l: &mut Launch, n: NodeId, winners: Buf, out: Buf) -> Result<u64, LowerError> {
    let (xd, yd) = pool_io(l.graph, n)?;
    let dy = l.operand(n, 0);
    let planes = xd[0] * xd[1];
    let (plane_in, plane_out) = (xd[2] * xd[3], yd[2] * yd[3]);
    let plane =
        l.b.let_(Expr::BlockId * LOOPING_BLOCK as i64 + Expr::ThreadId);
    l.b.begin_if(plane.clone().lt(planes));
    let base = l.b.let_(plane.clone() * plane_in as i64);
    let i = l.b.begin_for(0, plane_in, 1);
    l.b.store(out, base.clone() + i, 0.0f32);
    l.b.end_for();
    let j = l.b.begin_for(0, plane_out, 1);
    let window = l.b.let_(plane * plane_out as i64 + j);
    let winner = l.b.let_(Expr::load(winners, window.clone()));
    l.b.begin_if(winner.clone().ge(0.0f32));
    let at = l.b.let_(base + winner.cast(Ty::Index));
    let g = l.value_at(dy, &window)?;
    let sum = l.b.let_(Expr::load(out, at.clone()) + g);
    l.b.store(out, at, sum);
    l.b.end_if();
    l.b.end_for();
    l.b.end_if();
    Ok(planes)
}

/// Elements of the column pass of resize gradient `n`: `[planes, Ho, Wi]`.
fn resize_cols(graph: &Graph, n: NodeId) -> Result<u64, LowerError> {
    let x = dims4(&graph.node(n).ty.dims)?;
    let y = dims4(&graph.node(graph.operands(n)[0]).ty.dims)?;
    Ok(x[0] * x[1] * y[2] * x[3])
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Window {
    kernel: [u64; 2],
    stride: [u64; 2],
    pad: [u64; 4],
}

impl Window {
    pub(super) fn new(kernel: [u64; 2], stride: [u64; 2], pad: [u64; 4]) -> Self {
        Window {
            kernel,
            stride,
            pad,
        }
    }
}

impl Launch<'_> {
    /// Splits an NCHW flat index into (plane = n * C + c, y, x).
    fn plane_yx(&mut self, flat: &Expr, dims: [u64; 4]) -> (Expr, Expr, Expr) {
        let (h, w) = (dims[2] as i64, dims[3]);
        let x = self.b.let_(self.remainder(flat, w));
        let rest = self.b.let_(self.quotient(flat, w));
        let y = self.b.let_(rest.clone() % h);
        let plane = self.b.let_(rest / h);
        (plane, y, x)
    }

    /// The maximum over the window of output element `flat` (padding never wins).
    pub(super) fn max_pool(
        &mut self,
        n: NodeId,
        flat: &Expr,
        w: Window,
    ) -> Result<Expr, LowerError> {
        let input = self.operand(n, 0);
        let (xd, yd) = (dims4(self.dims(input))?, dims4(self.dims(n))?);
        let (plane, oy, ox) = self.plane_yx(flat, yd);
        if let Some(rows) = self.stored_buf(n) {
            // The first maximum over the window's rows of their stored maxima, the rows
            // unrolled into selects (as the row pass does its columns): no private
            // accumulator, and rows outside the plane clamped (their value unused), so a
            // loop over a row's columns vectorises.
            let mut best = Expr::F32(f32::NEG_INFINITY);
            for ky in 0..w.kernel[0] as i64 {
                let iy = self
                    .b
                    .let_(oy.clone() * w.stride[0] as i64 + ky - w.pad[0] as i64);
                let ok = self.b.let_(inside(&iy, xd[2]));
                // Clamped, not selected: the address stays affine in the column.
                let clamped = iy.max(0).min(xd[2] as i64 - 1);
                let index = (plane.clone() * xd[2] + clamped) * yd[3] + ox.clone();
                let v = self.b.let_(Expr::load(rows, index));
                best = self
                    .b
                    .let_(Expr::select(ok.and(v.clone().gt(best.clone())), v, best));
            }
            return Ok(best);
        }
        let best = self.b.private(Ty::F32, 1);
        self.b.store(best, 0, f32::NEG_INFINITY);
        let ky = self.b.begin_for(0, w.kernel[0], 1);
        let iy = self.b.let_(oy * w.stride[0] + ky - w.pad[0]);
        let kx = self.b.begin_for(0, w.kernel[1], 1);
        let ix = self.b.let_(ox * w.stride[1] + kx - w.pad[1]);
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

    /// The gradient at input element `flat`: the sum of `dy` over the windows whose first
    /// maximal element it is (in the CPU's schedule, scattered by an earlier launch).
    pub(super) fn max_pool_grad(
        &mut self,
        n: NodeId,
        flat: &Expr,
        w: Window,
    ) -> Result<Expr, LowerError> {
        if let Some(grad) = self.stored_buf(n) {
            return Ok(Expr::load(grad, flat.clone()));
        }
        let (dy, x) = (self.operand(n, 0), self.operand(n, 1));
        let (xd, yd) = (dims4(self.dims(x))?, dims4(self.dims(dy))?);
        let (plane, iy, ix) = self.plane_yx(flat, xd);
        let acc = self.b.private(Ty::F32, 1);
        let best = self.b.private(Ty::F32, 1);
        let arg = self.b.private(Ty::Index, 1);
        self.b.store(acc, 0, 0.0f32);
        // The windows that contain (iy, ix): oy * stride + ky - pad = iy.
        let ky = self.b.begin_for(0, w.kernel[0], 1);
        let (ok_y, oy) = containing_window(&mut self.b, &iy, ky, w, 0, yd[2]);
        let kx = self.b.begin_for(0, w.kernel[1], 1);
        let (ok_x, ox) = containing_window(&mut self.b, &ix, kx, w, 1, yd[3]);
        self.b.begin_if(ok_y.and(ok_x));
        let winner = self.window_argmax(x, xd, &plane, (&oy, &ox), w, (best, arg))?;
        self.b.begin_if(winner.eq(flat.clone()));
        let g = self.value_at(dy, &((plane.clone() * yd[2] + oy) * yd[3] + ox))?;
        self.accumulate(acc, g);
        self.b.end_if();
        self.b.end_if();
        self.b.end_for();
        self.b.end_for();
        Ok(Expr::load(acc, 0))
    }

    /// The winners of max pool gradient `n`'s windows into `out` (`dy`'s shape), each as
    /// its index in its plane of `x` (as f32, exact for planes under 2^24 elements; -1 for
    /// a window with no cell inside): the first of the window's rows whose stored maximum
    /// (`rows`, the row pass's) is the largest, and that row's stored winning column: the
    /// first maximum in raster order, as [`Self::window_argmax`] finds it. One thread per
    /// output row, the window's rows unrolled into selects, the loop over output columns
    /// vectorised when there are at least `MIN_VECTORISED` (16) (every load in it
    /// is contiguous). The number of threads.
    pub(super) fn pool_winners_into(
        &mut self,
        n: NodeId,
        rows: Buf,
        out: Buf,
        w: Window,
    ) -> Result<u64, LowerError> {
        let (xd, yd) = pool_io(self.graph, n)?;
        let (h, ho, wo) = (xd[2], yd[2], yd[3]);
        let lines = xd[0] * xd[1] * ho;
        // The row pass's columns follow its maxima.
        let columns = (xd[0] * xd[1] * h * wo) as i64;
        let line = self.b.let_(Expr::BlockId * BLOCK as i64 + Expr::ThreadId);
        self.b.begin_if(line.clone().lt(lines));
        let plane = self.b.let_(line.clone() / ho as i64);
        let oy = self.b.let_(line.clone() % ho as i64);
        // Per window row: whether it is inside the plane, and where its row maxima start
        // (a row outside reads the plane's first and never wins).
        let taps: Vec<(Expr, Expr)> = (0..w.kernel[0] as i64)
            .map(|ky| {
                let iy = self
                    .b
                    .let_(oy.clone() * w.stride[0] as i64 + ky - w.pad[0] as i64);
                let ok = self.b.let_(inside(&iy, h));
                let iy = Expr::select(ok.clone(), iy, 0);
                let start = self.b.let_((plane.clone() * h as i64 + iy) * wo as i64);
                (ok, start)
            })
            .collect();
        let ox = self.begin_span(0, wo, true);
        let (mut best, mut winner) = (Expr::F32(f32::NEG_INFINITY), Expr::F32(-1.0));
        for (ok, start) in taps {
            let index = self.b.let_(start + ox.clone());
            let v = self.b.let_(Expr::load(rows, index.clone()));
            let column = self.b.let_(Expr::load(rows, index + columns));
            // No winner yet (-1), or a larger maximum.
            let first = winner.clone().lt(0.0f32).or(v.clone().gt(best.clone()));
            let wins = self.b.let_(ok.and(column.clone().ge(0.0f32)).and(first));
            best = self.b.let_(Expr::select(wins.clone(), v, best));
            winner = self.b.let_(Expr::select(wins, column, winner));
        }
        self.b.store(out, line * wo as i64 + ox, winner);
        self.b.end_for();
        self.b.end_if();
        Ok(lines)
    }

    /// The row pass of max pool (or max pool gradient) `n` into `out` (`[planes, H, Wo]`,
    /// then for a gradient as many winning columns): per input row and output column, the
    /// maximum over the window's columns inside the input (as [`Self::max_pool`]
    /// compares, or for a gradient as [`Self::window_argmax`] does: the first inside
    /// column, then any larger), and for a gradient that column's element index in its
    /// plane (as f32; -1 when no column is inside). Both passes together find what one
    /// pass over the window finds for inputs without NaN. One thread per input row, with
    /// the window's taps unrolled; the output columns whose windows lie inside the row
    /// loop without bounds tests, vectorised when there are at least
    /// `MIN_VECTORISED` (16). The number of threads.
    pub(super) fn pool_rows_into(
        &mut self,
        n: NodeId,
        out: Buf,
        w: Window,
    ) -> Result<u64, LowerError> {
        let (xd, yd) = pool_io(self.graph, n)?;
        let grad = matches!(self.graph.node(n).op, Op::MaxPool2dGrad { .. });
        let x = self.operand(n, if grad { 1 } else { 0 });
        let rows = xd[0] * xd[1] * xd[2];
        let (width, wo) = (xd[3], yd[3]);
        let (k, stride, pad) = (w.kernel[1], w.stride[1], w.pad[1]);
        let row = self.b.let_(Expr::BlockId * BLOCK as i64 + Expr::ThreadId);
        self.b.begin_if(row.clone().lt(rows));
        let start = self.b.let_(row.clone() * width as i64);
        // The plane's element index of the row's first column.
        let column0 = self.b.let_(row.clone() % xd[2] as i64 * width as i64);
        // Output columns [lo, hi) read columns ox * stride - pad .. + k, all in the row.
        let (lo, hi) = inside_windows(wo, width, k, stride, pad as i64);
        for (from, to, clear) in spans(lo, hi, wo) {
            let ox = self.begin_span(from, to, clear);
            let first = self.b.let_(ox.clone() * stride as i64 - pad as i64);
            let (mut best, mut arg) = (Expr::F32(f32::NEG_INFINITY), Expr::F32(-1.0));
            for kx in 0..k as i64 {
                let ix = self.b.let_(first.clone() + kx);
                // Outside the fully inside columns: whether the tap is in the row (a tap
                // outside reads the row's first element and never wins).
                let ok = (!clear).then(|| self.b.let_(inside(&ix, width)));
                let index = match &ok {
                    None => start.clone() + ix.clone(),
                    Some(ok) => Expr::select(ok.clone(), start.clone() + ix.clone(), start.clone()),
                };
                let index = self.b.let_(index);
                let v = self.value_at(x, &index)?;
                let wins = match grad {
                    true => arg.clone().lt(0.0f32).or(v.clone().gt(best.clone())),
                    false => v.clone().gt(best.clone()),
                };
                let wins = self.b.let_(match ok {
                    None => wins,
                    Some(ok) => ok.and(wins),
                });
                best = self.b.let_(Expr::select(wins.clone(), v, best));
                if grad {
                    let column = (column0.clone() + ix).cast(Ty::F32);
                    arg = self.b.let_(Expr::select(wins, column, arg));
                }
            }
            let at = self.b.let_(row.clone() * wo as i64 + ox);
            self.b.store(out, at.clone(), best);
            if grad {
                self.b.store(out, at + (rows * wo) as i64, arg);
            }
            self.b.end_for();
        }
        self.b.end_if();
        Ok(rows)
    }

    /// The average over the window of output element `flat`: the sum of its cells inside
    /// the input over the window's divisor.
    pub(super) fn avg_pool(
        &mut self,
        n: NodeId,
        flat: &Expr,
        w: Window,
        count_include_pad: bool,
    ) -> Result<Expr, LowerError> {
        let input = self.operand(n, 0);
        let (xd, yd) = (dims4(self.dims(input))?, dims4(self.dims(n))?);
        let (plane, oy, ox) = self.plane_yx(flat, yd);
        let acc = self.b.private(Ty::F32, 1);
        self.b.store(acc, 0, 0.0f32);
        let ky = self.b.begin_for(0, w.kernel[0], 1);
        let iy = self.b.let_(oy.clone() * w.stride[0] + ky - w.pad[0]);
        let kx = self.b.begin_for(0, w.kernel[1], 1);
        let ix = self.b.let_(ox.clone() * w.stride[1] + kx - w.pad[1]);
        let ok = self.b.let_(inside(&iy, xd[2]).and(inside(&ix, xd[3])));
        let index = self.b.let_(Expr::select(
            ok.clone(),
            (plane.clone() * xd[2] + iy) * xd[3] + ix,
            0,
        ));
        let v = self.value_at(input, &index)?;
        self.accumulate(acc, Expr::select(ok, v, 0.0f32));
        self.b.end_for();
        self.b.end_for();
        let divisor = self.avg_divisor((&oy, &ox), w, xd, count_include_pad);
        Ok(Expr::load(acc, 0) / divisor)
    }

    /// The adjoint of average pooling at input element `flat`: `dy / divisor` summed over
    /// the windows that contain it.
    pub(super) fn avg_pool_grad(
        &mut self,
        n: NodeId,
        flat: &Expr,
        w: Window,
        count_include_pad: bool,
    ) -> Result<Expr, LowerError> {
        let dy = self.operand(n, 0);
        let (xd, yd) = (dims4(self.dims(n))?, dims4(self.dims(dy))?);
        let (plane, iy, ix) = self.plane_yx(flat, xd);
        let acc = self.b.private(Ty::F32, 1);
        self.b.store(acc, 0, 0.0f32);
        let ky = self.b.begin_for(0, w.kernel[0], 1);
        let (ok_y, oy) = containing_window(&mut self.b, &iy, ky, w, 0, yd[2]);
        let kx = self.b.begin_for(0, w.kernel[1], 1);
        let (ok_x, ox) = containing_window(&mut self.b, &ix, kx, w, 1, yd[3]);
        self.b.begin_if(ok_y.and(ok_x));
        let g = self.value_at(
            dy,
            &((plane.clone() * yd[2] + oy.clone()) * yd[3] + ox.clone()),
        )?;
        let divisor = self.avg_divisor((&oy, &ox), w, xd, count_include_pad);
        self.accumulate(acc, g / divisor);
        self.b.end_if();
        self.b.end_for();
        self.b.end_for();
        Ok(Expr::load(acc, 0))
    }

    /// What the window at `(oy, ox)` is divided by: `kh * kw`, or with
    /// `count_include_pad = false` the number of its cells inside the input.
    fn avg_divisor(
        &mut self,
        (oy, ox): (&Expr, &Expr),
        w: Window,
        xd: [u64; 4],
        count_include_pad: bool,
    ) -> Expr {
        if count_include_pad {
            return Expr::F32((w.kernel[0] * w.kernel[1]) as f32);
        }
        let mut cells = |o: &Expr, axis: usize| {
            let start = self.b.let_(o.clone() * w.stride[axis] - w.pad[axis]);
            let end = (start.clone() + w.kernel[axis]).min(xd[2 + axis]);
            self.b.let_(end - start.max(0))
        };
        let (rows, columns) = (cells(oy, 0), cells(ox, 1));
        self.b.let_((rows * columns).cast(Ty::F32))
    }

    /// The flat index of the first maximal element of window `(oy, ox)` in plane `plane` of
    /// `x` (the element max-pooling picked), found with the scratch registers `best` and
    /// `arg`.
    fn window_argmax(
        &mut self,
        x: NodeId,
        xd: [u64; 4],
        plane: &Expr,
        (oy, ox): (&Expr, &Expr),
        w: Window,
        (best, arg): (Buf, Buf),
    ) -> Result<Expr, LowerError> {
        self.b.store(best, 0, f32::NEG_INFINITY);
        self.b.store(arg, 0, -1);
        let wy = self.b.begin_for(0, w.kernel[0], 1);
        let yy = self.b.let_(oy.clone() * w.stride[0] + wy - w.pad[0]);
        let wx = self.b.begin_for(0, w.kernel[1], 1);
        let xx = self.b.let_(ox.clone() * w.stride[1] + wx - w.pad[1]);
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
        Ok(self.b.let_(Expr::load(arg, 0)))
    }

    /// Bilinear interpolation of the four taps of output element `flat`.
    pub(super) fn resize(
        &mut self,
        n: NodeId,
        flat: &Expr,
        align: bool,
    ) -> Result<Expr, LowerError> {
        let input = self.operand(n, 0);
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

    /// The adjoint of the resize at input element `flat`: `dy` over the output rows and
    /// columns whose taps can reach it, times the tap weights (in the CPU's schedule, over
    /// the rows of the stored column pass).
    pub(super) fn resize_grad(
        &mut self,
        n: NodeId,
        flat: &Expr,
        align: bool,
    ) -> Result<Expr, LowerError> {
        let dy = self.operand(n, 0);
        let (xd, yd) = (dims4(self.dims(n))?, dims4(self.dims(dy))?);
        let (plane, iy, ix) = self.plane_yx(flat, xd);
        let acc = self.b.private(Ty::F32, 1);
        self.b.store(acc, 0, 0.0f32);
        let (lo_y, hi_y) = reach(&mut self.b, &iy, xd[2], yd[2], align);
        let oy = self.b.begin_for(lo_y, hi_y, 1);
        let wy = tap_weight(&mut self.b, &oy, &iy, xd[2], yd[2], align);
        let row = self.b.let_(plane.clone() * yd[2] + oy);
        if let Some(cols) = self.stored_buf(n) {
            let g = Expr::load(cols, row * xd[3] as i64 + ix);
            self.accumulate(acc, g * wy);
        } else {
            let (lo_x, hi_x) = reach(&mut self.b, &ix, xd[3], yd[3], align);
            let ox = self.b.begin_for(lo_x, hi_x, 1);
            let wx = tap_weight(&mut self.b, &ox, &ix, xd[3], yd[3], align);
            let g = self.value_at(dy, &(row * yd[3] as i64 + ox))?;
            self.accumulate(acc, g * (wy * wx));
            self.b.end_for();
        }
        self.b.end_for();
        Ok(Expr::load(acc, 0))
    }

    /// The column pass of resize gradient `n` at element `flat` of `[planes, Ho, Wi]`:
    /// `dy` of that output row over the output columns whose taps can reach input column
    /// `ix`, times the tap weights. The row pass ([`Self::resize_grad`]) sums these over
    /// output rows; together they sum what the one-pass adjoint sums.
    pub(super) fn resize_grad_cols(
        &mut self,
        n: NodeId,
        flat: &Expr,
        align: bool,
    ) -> Result<Expr, LowerError> {
        let dy = self.operand(n, 0);
        let (xd, yd) = (dims4(self.dims(n))?, dims4(self.dims(dy))?);
        let ix = self.b.let_(self.remainder(flat, xd[3]));
        let row = self.b.let_(self.quotient(flat, xd[3]));
        let acc = self.b.private(Ty::F32, 1);
        self.b.store(acc, 0, 0.0f32);
        let (lo_x, hi_x) = reach(&mut self.b, &ix, xd[3], yd[3], align);
        let ox = self.b.begin_for(lo_x, hi_x, 1);
        let wx = tap_weight(&mut self.b, &ox, &ix, xd[3], yd[3], align);
        let g = self.value_at(dy, &(row * yd[3] as i64 + ox))?;
        self.accumulate(acc, g * wx);
        self.b.end_for();
        Ok(Expr::load(acc, 0))
    }

    /// The softmax cross-entropy gradient at logit `flat`: `(softmax - onehot) * scale * d`
    /// (0 at ignored pixels).
    pub(super) fn softmax_grad(
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
        let p = self.b.let_(self.remainder(flat, plane));
        let rest = self.b.let_(self.quotient(flat, plane));
        let ch = self.b.let_(rest.clone() % classes);
        let batch = self.b.let_(rest / classes);
        let pixel = self.b.let_(batch.clone() * plane + p.clone());
        let label = self.value_at(labels, &pixel)?;
        let label = self.b.let_(label.cast(Ty::Index));
        let pixels = d[0] * plane;
        let (max, sum) = match self.stored_buf(n) {
            Some(stats) => (
                self.b.let_(Expr::load(stats, pixel.clone())),
                self.b
                    .let_(Expr::load(stats, pixel.clone() + pixels as i64)),
            ),
            None => self.softmax_stats(logits, &batch, &p, classes, plane)?,
        };
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

    /// The softmax statistics of gradient `n`'s logits at pixel `flat` (of the labels):
    /// what the CPU's schedule stores before the gradient.
    pub(super) fn softmax_pixel_stats(
        &mut self,
        n: NodeId,
        flat: &Expr,
    ) -> Result<(Expr, Expr), LowerError> {
        let logits = self.graph.operands(n)[0];
        let d = dims4(self.dims(logits))?;
        let (classes, plane) = (d[1], d[2] * d[3]);
        let p = self.b.let_(self.remainder(flat, plane));
        let batch = self.b.let_(self.quotient(flat, plane));
        self.softmax_stats(logits, &batch, &p, classes, plane)
    }

    /// The maximum logit and the sum of `exp(logit - max)` over the classes of a pixel.
    pub(super) fn softmax_stats(
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
        self.accumulate(sum, (v - m.clone()).exp());
        self.b.end_for();
        let s = self.b.let_(Expr::load(sum, 0));
        Ok((m, s))
    }
}

/// Whether the window at tap `k` along `axis` contains input position `i`
/// (`o * stride + k - pad = i` for an output position `o` in `0..out`), and that `o`
/// (0 when it does not).
fn containing_window(
    b: &mut KernelBuilder,
    i: &Expr,
    k: Expr,
    w: Window,
    axis: usize,
    out: u64,
) -> (Expr, Expr) {
    let stride = w.stride[axis] as i64;
    let t = b.let_(i.clone() + w.pad[axis] - k);
    let ok = b.let_(
        t.clone()
            .ge(0)
            .and((t.clone() % stride).eq(0))
            .and((t.clone() / stride).lt(out)),
    );
    let o = b.let_(Expr::select(ok.clone(), t / stride, 0));
    (ok, o)
}

/// Whether index `i` is inside `0..size`.
pub(super) fn inside(i: &Expr, size: u64) -> Expr {
    i.clone().ge(0).and(i.clone().lt(size))
}

/// The output positions `lo..hi` whose bilinear taps can reach input position `i` along
/// one axis: a superset (the tap weights decide).
fn reach(b: &mut KernelBuilder, i: &Expr, input: u64, output: u64, align: bool) -> (Expr, Expr) {
    let (num, den) = ratio(input, output, align);
    let lo = b.let_(((i.clone() - 1) * num / den - 2).max(0));
    let hi = b.let_(((i.clone() + 2) * num / den + 2).min(output));
    (lo, hi)
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
