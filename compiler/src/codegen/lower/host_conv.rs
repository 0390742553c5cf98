//! The CPU's schedule of a convolution kernel: the implicit GEMM of [`crate::codegen::gemm`]
//! split into steps a CPU runs well. A kernel gathers the GEMM's operand into a packed
//! matrix in scratch (`im2col`, with the fused prologue applied while gathering; skipped
//! for 1x1 convolutions of a stored tensor), the runtime's packed GEMM multiplies, and a
//! kernel applies the epilogue (bias, the data gradient's scatter back to pixels, every
//! fused consumer) while storing the kernel's outputs (skipped when the GEMM can write the
//! only output itself). Operands a fused producer computes are stored to scratch first.
//!
//! With `x` `[B, C, H, W]`, `w` `[Co, Ci, KH, KW]` (`Ci = C / G`), `y` `[B, Co, Ho, Wo]`,
//! `K = Ci*KH*KW`, `P = Ho*Wo`, and `col[b, g, k, p]` the input tap `k` (`ci, kh, kw`) of
//! output pixel `p` in group `g` (0 in the padding), per batch `b` and group `g`:
//!
//! | kind | GEMM (m x n x k) | A | B | C |
//! |---|---|---|---|---|
//! | forward | `Co/G x P x K` | `w` | `col` | `y` (then `+ bias`) |
//! | data gradient | `K x P x Co/G` | `w` transposed | `dy` | `col` of `dx`, summed back onto pixels |
//! | weight gradient | `Co/G x K x B*P` | `dy` | `col` transposed | `dw` (summed over `b`) |
//!
//! 3x3, stride-1, undilated, ungrouped convolutions (forward, data and weight gradients)
//! run Winograd's F(2x2, 3x3) instead ([`super::winograd`]).
//!
//! Invariants: the steps read only the kernel's inputs and scratch (or packed slots) they
//! wrote, and write exactly the kernel's outputs (each element once), so they stand in for
//! the GPU's one launch; scratch slots of one kernel's steps do not overlap. A pack step
//! reads only parameters and writes only its own packed slot, which no other step of any
//! kernel writes.

use rfnc_bundle::SLOT_ALIGN;

use super::conv::conv_problem;
use super::gather::{pool_rows, pool_window, Stored};
use super::{Arg, Launch, LowerError, LoweredLaunch, BLOCK};
use crate::codegen::gemm::{ConvKind, ConvProblem};
use crate::codegen::kir::{Buf, Expr};
use crate::ir::{Graph, NodeId, Op};
use crate::passes::fusion::Kernel;

/// A matrix of a host GEMM: its storage and element strides (see `rfnc_bundle::Matrix`).
#[derive(Clone, Debug)]
pub struct LoweredMatrix {
    pub arg: Arg,
    pub rows: u64,
    pub cols: u64,
    pub batch: [u64; 2],
}

/// A GEMM the runtime runs (see `rfnc_bundle::Gemm`).
#[derive(Clone, Debug)]
pub struct LoweredGemm {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub batch: [u64; 2],
    pub a: LoweredMatrix,
    pub b: LoweredMatrix,
    pub c: LoweredMatrix,
}

/// One step of the CPU's schedule of a kernel.
#[derive(Clone, Debug)]
pub enum HostStep {
    Kernel(LoweredLaunch),
    Gemm(LoweredGemm),
    /// A launch that transforms parameters into the packed region: run once per change of
    /// the parameters, not every run.
    Pack(LoweredLaunch),
}

/// The CPU's steps for the conv kernel anchored at `a`.
pub(super) fn lower(
    graph: &Graph,
    kernel: &Kernel,
    a: NodeId,
    name: &str,
    packed: Option<&mut u64>,
) -> Result<Vec<HostStep>, LowerError> {
    let (problem, _) = conv_problem(graph, a)?;
    let ops = graph.operands(a).to_vec();
    let mut conv = HostConv {
        graph,
        kernel,
        anchor: a,
        name,
        g: Geometry::of(&problem),
        p: problem,
        scratch: 0,
        packed: packed.as_deref().copied(),
        steps: Vec::new(),
        pools: Stored::default(),
    };
    conv.pool_rows()?;
    match conv.p.kind {
        ConvKind::Forward => conv.forward(ops[0], ops[1], ops.get(2).copied())?,
        ConvKind::GradInput => conv.grad_input(ops[0], ops[1])?,
        ConvKind::GradWeight => conv.grad_weight(ops[0], ops[1])?,
    }
    if let (Some(end), Some(next)) = (packed, conv.packed) {
        *end = next;
    }
    Ok(conv.steps)
}

/// The sizes every step uses.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: u64,
    groups: u64,
    /// Input channels per group, output channels per group.
    ci: u64,
    co: u64,
    /// Taps of one group: `ci * KH * KW`.
    k: u64,
    /// Output pixels `Ho * Wo`, input pixels `H * W`.
    p: u64,
    p_in: u64,
    /// 1x1, stride 1, no padding: `col` is the input itself.
    pointwise: bool,
}

impl Geometry {
    fn of(p: &ConvProblem) -> Geometry {
        let [batch, c, h, w] = p.x;
        let [co, ci, kh, kw] = p.w;
        let [_, _, ho, wo] = p.y;
        Geometry {
            batch,
            groups: p.groups,
            ci,
            co: co / p.groups,
            k: ci * kh * kw,
            p: ho * wo,
            p_in: h * w,
            pointwise: kh == 1
                && kw == 1
                && p.stride == [1, 1]
                && p.pad == [0; 4]
                && c == ci * p.groups,
        }
    }
}

pub(super) struct HostConv<'g> {
    graph: &'g Graph,
    kernel: &'g Kernel,
    pub(super) anchor: NodeId,
    name: &'g str,
    pub(super) p: ConvProblem,
    g: Geometry,
    /// Scratch bytes taken by the steps so far.
    scratch: u64,
    /// Where the next packed weight goes (`None`: the parameters change between runs).
    packed: Option<u64>,
    pub(super) steps: Vec<HostStep>,
    /// The row maxima of the kernel's max pools, stored by its first steps.
    pools: Stored,
}

/// A GEMM operand: `arg` with element strides `rows`, `cols` and its two batch strides.
pub(super) fn matrix(arg: Arg, rows: u64, cols: u64, batch: [u64; 2]) -> LoweredMatrix {
    LoweredMatrix {
        arg,
        rows,
        cols,
        batch,
    }
}

impl<'g> HostConv<'g> {
    /// A launch of blocks of `block` threads.
    pub(super) fn launch(&self, step: &str, block: u32) -> Launch<'g> {
        let mut l = Launch::new(
            self.graph,
            self.kernel,
            &format!("{step}+{}", self.name),
            block,
        );
        self.pools.attach(&mut l);
        l
    }

    /// The row pass of each max pool the kernel computes (a prologue of the convolution,
    /// such as the CRP's pools), so that every later step's pool reads its row maxima.
    fn pool_rows(&mut self) -> Result<(), LowerError> {
        for &n in &self.kernel.nodes {
            let Some(w) = pool_window(self.graph, n) else {
                continue;
            };
            if !matches!(self.graph.node(n).op, Op::MaxPool2d { .. }) {
                continue;
            }
            let rows = self.alloc(pool_rows(self.graph, n)?);
            let mut l = self.launch("host_pool_rows", BLOCK);
            let out = Self::scratch_buf(&mut l, rows);
            let threads = l.pool_rows_into(n, out, w)?;
            let launch = l.finish(threads.div_ceil(BLOCK as u64))?;
            self.steps.push(HostStep::Kernel(launch));
            self.pools.push(n, rows);
        }
        Ok(())
    }

    /// A fresh scratch slot of `len` f32.
    pub(super) fn alloc(&mut self, len: u64) -> Arg {
        let offset = self.scratch;
        self.scratch += (len * 4).div_ceil(SLOT_ALIGN) * SLOT_ALIGN;
        Arg::Scratch {
            offset,
            bytes: len * 4,
        }
    }

    /// A packed slot of `len` f32 for a transform of the parameter `w` (an input of the
    /// kernel), when parameters do not change between runs; `None` otherwise.
    pub(super) fn alloc_packed(&mut self, w: Arg, len: u64) -> Option<Arg> {
        let offset = self.packed?;
        let Arg::Value(n) = w else { return None };
        if !matches!(self.graph.node(n).op, Op::Param { .. }) {
            return None;
        }
        self.packed = Some(offset + (len * 4).div_ceil(SLOT_ALIGN) * SLOT_ALIGN);
        Some(Arg::Packed {
            offset,
            bytes: len * 4,
        })
    }

    pub(super) fn scratch_buf(l: &mut Launch, arg: Arg) -> Buf {
        l.arg_buf(arg)
    }

    /// A one-thread-per-element kernel over `total` elements: `body` emits element `flat`.
    pub(super) fn elementwise(
        &mut self,
        step: &str,
        total: u64,
        body: impl FnOnce(&mut Launch<'g>, &Expr) -> Result<(), LowerError>,
    ) -> Result<(), LowerError> {
        let launch = self.elements_launch(step, &[total], false, body)?;
        self.steps.push(HostStep::Kernel(launch));
        Ok(())
    }

    /// A kernel over the elements of a tensor of `dims`, one thread per row looping over
    /// its columns (vectorised; [`Launch::begin_elements`]): `body` emits element `flat`.
    pub(super) fn elementwise_rows(
        &mut self,
        step: &str,
        dims: &[u64],
        body: impl FnOnce(&mut Launch<'g>, &Expr) -> Result<(), LowerError>,
    ) -> Result<(), LowerError> {
        let launch = self.elements_launch(step, dims, true, body)?;
        self.steps.push(HostStep::Kernel(launch));
        Ok(())
    }

    /// A launch over the elements of a tensor of `dims` ([`Launch::begin_elements`]).
    pub(super) fn elements_launch(
        &mut self,
        step: &str,
        dims: &[u64],
        rows: bool,
        body: impl FnOnce(&mut Launch<'g>, &Expr) -> Result<(), LowerError>,
    ) -> Result<LoweredLaunch, LowerError> {
        let mut l = self.launch(step, BLOCK);
        let (flat, blocks) = l.begin_elements(dims, rows);
        body(&mut l, &flat)?;
        l.end_elements();
        l.finish(blocks)
    }

    /// Where operand `n` is stored: its own storage, or scratch when the kernel computes it.
    pub(super) fn stored(&mut self, n: NodeId) -> Result<Arg, LowerError> {
        if !self.kernel.nodes.contains(&n) {
            return Ok(Arg::Value(n));
        }
        let dims = self.graph.node(n).ty.dims.clone();
        let out = self.alloc(dims.iter().product());
        self.elementwise_rows("host_operand", &dims, |l, flat| {
            let v = l.value_at(n, flat)?;
            let buf = Self::scratch_buf(l, out);
            l.b.store(buf, flat.clone(), v);
            Ok(())
        })?;
        Ok(out)
    }

    /// `col[b, g, k, p]` of input `x` in scratch, or `x` itself for a pointwise
    /// convolution; with the strides of its `[K, P]` matrices: (k, p, batch b, group g).
    /// A prologue is computed once per element of `x` (stored to scratch first), not once
    /// per tap.
    fn col(&mut self, x: NodeId) -> Result<(Arg, [u64; 4]), LowerError> {
        let g = self.g;
        let x = self.stored(x)?;
        if g.pointwise {
            let c = g.ci * g.groups;
            return Ok((x, [g.p_in, 1, c * g.p_in, g.ci * g.p_in]));
        }
        let p = self.p.clone();
        let [_, c, h, w] = p.x;
        let [_, _, kh, kw] = p.w;
        let [_, _, ho, wo] = p.y;
        // One thread per output row (b, g, k, oh): a loop over its Wo columns.
        let rows = g.batch * g.groups * g.k * ho;
        let out = self.alloc(rows * wo);
        self.elementwise("host_im2col", rows, |l, row| {
            let at = |l: &mut Launch, e: Expr| l.b.let_(e);
            let oh = at(l, row.clone() % ho as i64);
            let plane = at(l, row.clone() / ho as i64);
            let tap = at(l, plane.clone() % g.k as i64);
            let bg = at(l, plane / g.k as i64);
            let ci = at(l, tap.clone() / (kh * kw) as i64);
            let r = at(l, tap % (kh * kw) as i64);
            let ih = at(
                l,
                oh * p.stride[0] as i64 - p.pad[0] as i64
                    + r.clone() / kw as i64 * p.dilation[0] as i64,
            );
            // The column offset of tap `kw` (the input column is `ow * sw + shift`).
            let shift = at(l, r % kw as i64 * p.dilation[1] as i64 - p.pad[1] as i64);
            // b * C + g * Ci + ci, from bg = b * G + g.
            let channel = at(
                l,
                bg.clone() / g.groups as i64 * c as i64 + bg % g.groups as i64 * g.ci as i64 + ci,
            );
            let row_ok = at(l, ih.clone().ge(0).and(ih.clone().lt(h)));
            let start = at(l, (channel * h as i64 + ih) * w as i64);
            let first = at(l, row.clone() * wo as i64);
            let input = Self::scratch_buf(l, x);
            let output = Self::scratch_buf(l, out);
            let ow = l.b.begin_for(0, wo, 1);
            let iw = at(l, ow.clone() * p.stride[1] as i64 + shift);
            let ok = row_ok.and(iw.clone().ge(0)).and(iw.clone().lt(w));
            let v = Expr::load_if(input, ok, start + iw, 0.0f32);
            l.b.store(output, first + ow, v);
            l.b.end_for();
            Ok(())
        })?;
        Ok((out, [g.p, 1, g.groups * g.k * g.p, g.k * g.p]))
    }

    /// Where the GEMM writes the result: the anchor's own storage when it is the kernel's
    /// only output and `plain` (stored as the GEMM leaves it), else `len` f32 of scratch.
    fn result(&mut self, plain: bool, len: u64) -> (Arg, bool) {
        if plain && self.kernel.outputs == [self.anchor] {
            (Arg::Value(self.anchor), true)
        } else {
            (self.alloc(len), false)
        }
    }

    /// The epilogue over the result's elements: the anchor's value at `flat` from
    /// `value`, every output of the kernel stored.
    pub(super) fn epilogue(
        &mut self,
        value: impl FnOnce(&mut Launch<'g>, &Expr) -> Result<Expr, LowerError>,
    ) -> Result<(), LowerError> {
        let dims = self.graph.node(self.anchor).ty.dims.clone();
        let anchor = self.anchor;
        self.elementwise_rows("host_epilogue", &dims.clone(), |l, flat| {
            let v = value(l, flat)?;
            let v = l.b.let_(v);
            l.emit_outputs(flat, &dims, Some((anchor, v)))
        })
    }

    fn forward(&mut self, x: NodeId, w: NodeId, bias: Option<NodeId>) -> Result<(), LowerError> {
        if super::winograd::applies(self) {
            return self.winograd(x, w, bias);
        }
        let g = self.g;
        let w = self.stored(w)?;
        let (col, [ck, cp, cb, cg]) = self.col(x)?;
        let (y, direct) = self.result(bias.is_none(), g.batch * g.co * g.groups * g.p);
        self.steps.push(HostStep::Gemm(LoweredGemm {
            m: g.co,
            n: g.p,
            k: g.k,
            batch: [g.batch, g.groups],
            a: matrix(w, g.k, 1, [0, g.co * g.k]),
            b: matrix(col, ck, cp, [cb, cg]),
            c: matrix(y, g.p, 1, [g.groups * g.co * g.p, g.co * g.p]),
        }));
        if direct {
            return Ok(());
        }
        let channels = g.co * g.groups;
        self.epilogue(|l, flat| {
            let t = Self::scratch_buf(l, y);
            let mut v = Expr::load(t, flat.clone());
            if let Some(bias) = bias {
                let c = l.b.let_(l.coordinate(flat, g.p, channels));
                v = v + l.value_at(bias, &c)?;
            }
            Ok(v)
        })
    }

    fn grad_input(&mut self, dy: NodeId, w: NodeId) -> Result<(), LowerError> {
        if super::winograd::applies(self) {
            return self.winograd(dy, w, None);
        }
        let g = self.g;
        let w = self.stored(w)?;
        let dy = self.stored(dy)?;
        let (col, direct) = self.result(g.pointwise, g.batch * g.groups * g.k * g.p);
        self.steps.push(HostStep::Gemm(LoweredGemm {
            m: g.k,
            n: g.p,
            k: g.co,
            batch: [g.batch, g.groups],
            a: matrix(w, 1, g.k, [0, g.co * g.k]),
            b: matrix(dy, g.p, 1, [g.groups * g.co * g.p, g.co * g.p]),
            c: matrix(col, g.p, 1, [g.groups * g.k * g.p, g.k * g.p]),
        }));
        if direct {
            return Ok(());
        }
        if g.pointwise {
            return self.epilogue(|l, flat| {
                let t = Self::scratch_buf(l, col);
                Ok(Expr::load(t, flat.clone()))
            });
        }
        let p = self.p.clone();
        self.epilogue(|l, flat| Ok(col2im(l, &p, &g, col, flat)))
    }

    fn grad_weight(&mut self, x: NodeId, dy: NodeId) -> Result<(), LowerError> {
        if super::winograd::applies(self) {
            return self.winograd(x, dy, None);
        }
        let g = self.g;
        let dy = self.stored(dy)?;
        let (col, [ck, cp, cb, cg]) = self.col(x)?;
        let (dw, direct) = self.result(true, g.groups * g.co * g.k);
        self.steps.push(HostStep::Gemm(LoweredGemm {
            m: g.co,
            n: g.k,
            k: g.p,
            batch: [g.batch, g.groups],
            a: matrix(dy, g.p, 1, [g.groups * g.co * g.p, g.co * g.p]),
            // col transposed: rows are pixels, columns taps.
            b: matrix(col, cp, ck, [cb, cg]),
            c: matrix(dw, g.k, 1, [0, g.co * g.k]),
        }));
        if direct {
            return Ok(());
        }
        self.epilogue(|l, flat| {
            let t = Self::scratch_buf(l, dw);
            Ok(Expr::load(t, flat.clone()))
        })
    }
}

/// `dx` at `flat` from the GEMM's `col[b, g, k, p]`: the sum over the taps `(kh, kw)` whose
/// output pixel `oh = (ih + top - kh*dh) / sh` (and likewise `ow`) is exact and in range.
fn col2im(l: &mut Launch, p: &ConvProblem, g: &Geometry, col: Arg, flat: &Expr) -> Expr {
    let [_, c, h, w] = p.x;
    let [_, _, kh, kw] = p.w;
    let [_, _, ho, wo] = p.y;
    let t = HostConv::scratch_buf(l, col);
    let at = |l: &mut Launch, e: Expr| l.b.let_(e);
    let iw = l.b.let_(l.remainder(flat, w));
    let ih = l.b.let_(l.coordinate(flat, w, h));
    let channel = l.b.let_(l.coordinate(flat, h * w, c));
    let b = l.b.let_(l.quotient(flat, c * h * w));
    let group = at(l, channel.clone() / g.ci as i64);
    let ci = at(l, channel % g.ci as i64);
    // The start of col[b, group, (ci, 0, 0), 0].
    let base = at(
        l,
        ((b * g.groups as i64 + group) * g.k as i64 + ci * (kh * kw) as i64) * g.p as i64,
    );
    let mut sum = Expr::F32(0.0);
    for i in 0..kh {
        let oh_num = at(l, ih.clone() + p.pad[0] as i64 - (i * p.dilation[0]) as i64);
        let oh = at(l, oh_num.clone() / p.stride[0] as i64);
        let row_ok = oh_num
            .clone()
            .ge(0)
            .and((oh_num % p.stride[0] as i64).eq(0))
            .and(oh.clone().lt(ho));
        let row_ok = at(l, row_ok);
        for j in 0..kw {
            let ow_num = at(l, iw.clone() + p.pad[1] as i64 - (j * p.dilation[1]) as i64);
            let ow = at(l, ow_num.clone() / p.stride[1] as i64);
            let ok = row_ok
                .clone()
                .and(ow_num.clone().ge(0))
                .and((ow_num % p.stride[1] as i64).eq(0))
                .and(ow.clone().lt(wo));
            let ok = at(l, ok);
            let index = base.clone() + ((i * kw + j) * g.p) as i64 + oh.clone() * wo as i64 + ow;
            let v = at(l, Expr::load_if(t, ok, index, 0.0f32));
            sum = sum + v;
        }
    }
    sum
}
