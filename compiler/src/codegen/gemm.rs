//! The three convolutions as tiled implicit GEMMs in kernel IR.
//!
//! Per group `g` a convolution is a matrix product `C[m, n] = sum_k A[m, k] * B[k, n]` whose
//! operands are gathered from the tensors on the fly (nothing is materialised):
//!
//! | kind | M | N | K | A[m, k] | B[k, n] | C[m, n] |
//! |---|---|---|---|---|---|---|
//! | forward | `Cout/G` | `batch*Ho*Wo` | `Cin_g*KH*KW` | `w[g*M + m, k]` | `x` at the tap `k` of output pixel `n` (0 in the padding) | `y`, plus `bias[g*M + m]` |
//! | data gradient | `Cin_g` | `batch*H*W` | `Cout_g*KH*KW` | `w[g*Cout_g + co, m, kh, kw]` | `dy[b, g*Cout_g + co, oh, ow]` with `oh = (ih + top - kh*dh) / sh` when that is exact and in range (else 0) | `dx` |
//! | weight gradient | `Cout_g` | `Cin_g*KH*KW` | `batch*Ho*Wo` | `dy[b, g*M + m, oh, ow]` | `x` at the tap `n` of output pixel `k` | `dw` |
//!
//! Tiling: a block of [`BLOCK`] = 256 threads computes a [`TILE_M`] x [`TILE_N`] = 64 x 64
//! tile of `C`; the grid is `groups * ceil(M/64) * ceil(N/64)` blocks, the block id decoding
//! as `(g * tiles_m + tile_m) * tiles_n + tile_n`. Thread `t` owns a 4 x 4 register tile
//! (a private array read and written only at constant subscripts, so it lives in registers):
//! rows `4*(t/16) .. +4` and columns `4*(t%16) .. +4` of the block tile.
//!
//! The K loop runs over [`TILE_K`] = 16 wide slices. Each slice of A (64 x 16) and of B
//! (16 x 64) is staged in a shared array stored k-major (`s[k][mn]`, rows padded to 68 (f32 kernels) where
//! the stores would otherwise conflict), four elements per thread and operand, through a
//! private staging array: the next slice is fetched from global memory into registers while
//! the current one is multiplied (one barrier after the shared stores, one after the
//! products). Per operand the load layout follows the contiguous direction of the source:
//! *k-fast* (thread `t` loads `k = t%16` of rows `t/16 + 16r`; the weights of the forward
//! conv, `dy` of the weight gradient) or *mn-fast* (column `t%64` at `k = t/64 + 4r`; the
//! gathered input of the forward conv, `dy` of the data gradient). Either way a thread's
//! rows or columns stay fixed for the whole block, so their coordinates (batch, pixel,
//! channel offsets: the divisions) are decoded once per block into private arrays, and a
//! slice decodes only its k coordinates (one per thread for k-fast operands, four for
//! mn-fast ones; all divisions are by constants). Out-of-range rows, columns and k (edge
//! tiles), the zero padding of the input and the missing taps of the data gradient are
//! zeros in the shared tiles; the operand is read at subscript 0 there.
//!
//! The epilogue calls `store` once for every in-range element of `C`, at its flat index in
//! the result (`y`, `dx` or `dw`), with the forward bias already added.
//!
//! The multiply of a slice depends on the [`Precision`]:
//! - `f32`: thread `t` owns a 4 x 4 register tile of `C` (above) and multiplies with f32
//!   fused multiply-adds from the shared tiles.
//! - `tf32` and `bf16`: tensor cores. The slice's elements are rounded to TF32 (BF16) as
//!   they are stored to shared memory; warp `w = t / 32` owns the 32 x 16 corner
//!   `(32 (w / 4), 16 (w % 4))` of the block tile, four 16 x 8 tiles of `mma.m16n8k8`
//!   (`m16n8k16`) ([`Mma`]), so each thread still holds 16 elements of `C` (4 rows x 4
//!   columns, in the C fragment layout). Per slice a thread loads its A and B fragments of
//!   the slice (16 and 8 elements: two k-steps of 8 for TF32, one of 16 for BF16; the
//!   layouts of [`super::semantics::mma_a_element`] and [`super::semantics::mma_b_element`])
//!   from shared memory, then the warp issues 8 (BF16: 4) mma. The shared rows are 72 wide
//!   for TF32 and 68 for BF16 (whose lanes step k by 2), so that the 32 elements of a
//!   fragment load (8 rows x 4 lanes along k) fall in 32 different banks.

use super::kir::{Buf, Expr, KernelBuilder, Mma, MmaShape, Ty};
pub use rfnc_bundle::Precision;

/// Threads per block of a GEMM kernel (the builder must have this block size), and of
/// every other kernel that lowering emits ([`super::lower`]).
pub const BLOCK: u32 = 256;
/// Rows (M) of the block tile.
pub const TILE_M: u64 = 64;
/// Columns (N) of the block tile.
pub const TILE_N: u64 = 64;
/// Depth (K) of one staged slice.
pub const TILE_K: u64 = 16;
/// The register tile of a thread is `REG x REG`.
const REG: u64 = 4;
/// Elements of one operand a thread loads per slice (`64 * 16 / 256`).
const LOADS: u64 = 4;

/// Which convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvKind {
    /// `y = conv2d(x, w) [+ bias]`.
    Forward,
    /// `dx = conv2d_grad_input(dy, w)`.
    GradInput,
    /// `dw = conv2d_grad_weight(x, dy)`.
    GradWeight,
}

/// A convolution: the shapes of its input, weights and output and its geometry (see
/// docs/ir.md; `pad` is [top, left, bottom, right]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvProblem {
    pub kind: ConvKind,
    /// The conv input, NCHW.
    pub x: [u64; 4],
    /// The weights, OIHW (`I` is the channels per group).
    pub w: [u64; 4],
    /// The conv output, NCHW.
    pub y: [u64; 4],
    pub stride: [u64; 2],
    pub pad: [u64; 4],
    pub dilation: [u64; 2],
    pub groups: u64,
    /// Whether the forward conv adds a per-channel bias (ignored for the gradients).
    pub bias: bool,
}

/// An operand of a convolution, read at a flat index of its own layout: `X` and `Dy` in
/// NCHW (the shapes `x` and `y`), `W` in OIHW, `Bias` by channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvOperand {
    X,
    W,
    Dy,
    Bias,
}

impl ConvProblem {
    /// The GEMM of one group: `(M, N, K)`.
    pub fn gemm(&self) -> (u64, u64, u64) {
        let [nb, _, h, w] = self.x;
        let [co, cig, kh, kw] = self.w;
        let [_, _, ho, wo] = self.y;
        let cog = co / self.groups.max(1);
        match self.kind {
            ConvKind::Forward => (cog, nb * ho * wo, cig * kh * kw),
            ConvKind::GradInput => (cig, nb * h * w, cog * kh * kw),
            ConvKind::GradWeight => (cog, cig * kh * kw, nb * ho * wo),
        }
    }

    /// The number of blocks of the kernel: `groups * ceil(M/64) * ceil(N/64)`.
    pub fn grid(&self) -> u64 {
        let (m, n, _) = self.gemm();
        self.groups * m.div_ceil(TILE_M) * n.div_ceil(TILE_N)
    }

    /// Panics unless the shapes are those of one convolution.
    fn validate(&self) {
        let [nb, c, _, _] = self.x;
        let [co, cig, _, _] = self.w;
        let [nby, coy, _, _] = self.y;
        assert!(self.groups >= 1, "groups >= 1");
        assert_eq!(nb, nby, "batch of x and y");
        assert_eq!(co, coy, "channels of w and y");
        assert_eq!(c, cig * self.groups, "channels of x and w");
        assert_eq!(co % self.groups, 0, "groups divide the output channels");
        assert!(self.stride.iter().all(|&s| s >= 1), "stride >= 1");
        assert!(self.dilation.iter().all(|&d| d >= 1), "dilation >= 1");
    }
}

/// How a thread's four loads of an operand slice are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// Thread `t` loads `k = t % 16` of rows `t / 16 + 16 r`.
    KFast,
    /// Thread `t` loads row `t % 64` at `k = t / 64 + 4 r`.
    MnFast,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    A,
    B,
}

/// One GEMM operand as the kernel stages it.
struct Operand {
    side: Side,
    operand: ConvOperand,
    /// M for A, N for B.
    size: u64,
    layout: Layout,
    /// Per-row values decoded once per block (index-typed).
    pre_len: u64,
    /// Row length of the shared tile.
    ld: u64,
}

impl Operand {
    fn new(
        side: Side,
        operand: ConvOperand,
        size: u64,
        layout: (Layout, Precision),
        pre_len: u64,
    ) -> Self {
        let (layout, precision) = layout;
        // k-fast stores hit 16 different k rows at once: pad them off the same bank (68
        // keeps the rows 16-byte aligned for vector reads). Tensor-core fragment loads read
        // 4 k rows x 8 columns: rows 8 banks apart (72) make them conflict-free.
        let ld = match (precision, layout) {
            (Precision::Tf32, _) => TILE_M + 8,
            (Precision::Bf16, _) => TILE_M + 4,
            (Precision::F32, Layout::KFast) => TILE_M + 4,
            (Precision::F32, Layout::MnFast) => TILE_M,
        };
        Operand {
            side,
            operand,
            size,
            layout,
            pre_len,
            ld,
        }
    }

    /// The rows (`r`-th load) a thread handles in a tile, relative to the tile.
    fn mn_local(&self, r: u64) -> Expr {
        match self.layout {
            Layout::KFast => Expr::ThreadId.shift_right(4) + (16 * r),
            Layout::MnFast => Expr::ThreadId.and(Expr::Int(63)),
        }
    }

    /// The k (`r`-th load) a thread handles in a slice, relative to the slice.
    fn k_local(&self, r: u64) -> Expr {
        match self.layout {
            Layout::KFast => Expr::ThreadId.and(Expr::Int(15)),
            Layout::MnFast => Expr::ThreadId.shift_right(6) + (4 * r),
        }
    }

    /// How many distinct rows a thread loads (each with its own decoded values).
    fn rows(&self) -> u64 {
        match self.layout {
            Layout::KFast => LOADS,
            Layout::MnFast => 1,
        }
    }
}

/// The shapes as numbers.
struct Conv {
    kind: ConvKind,
    c: i64,
    h: i64,
    w: i64,
    co: i64,
    cig: i64,
    cog: i64,
    kh: i64,
    kw: i64,
    ho: i64,
    wo: i64,
    sh: i64,
    sw: i64,
    dh: i64,
    dw: i64,
    pt: i64,
    pl: i64,
    bias: bool,
}

// ----- expression helpers that fold constants --------------------------------------------

fn add(a: Expr, b: Expr) -> Expr {
    match (&a, &b) {
        (Expr::Int(0), _) => b,
        (_, Expr::Int(0)) => a,
        (Expr::Int(x), Expr::Int(y)) => Expr::Int(x + y),
        _ => a + b,
    }
}

fn sub(a: Expr, c: i64) -> Expr {
    add(a, Expr::Int(-c))
}

fn mul(a: Expr, c: i64) -> Expr {
    match a {
        _ if c == 0 => Expr::Int(0),
        Expr::Int(x) => Expr::Int(x * c),
        _ if c == 1 => a,
        _ => a * c,
    }
}

fn div(a: Expr, c: i64) -> Expr {
    match a {
        Expr::Int(x) => Expr::Int(x / c),
        _ if c == 1 => a,
        _ => a / c,
    }
}

fn rem(a: Expr, c: i64) -> Expr {
    match a {
        Expr::Int(x) => Expr::Int(x % c),
        _ if c == 1 => Expr::Int(0),
        _ => a % c,
    }
}

fn all(conds: Vec<Expr>) -> Option<Expr> {
    conds.into_iter().reduce(|a, b| a.and(b))
}

impl Conv {
    fn new(p: &ConvProblem) -> Self {
        p.validate();
        let i = |v: u64| v as i64;
        Conv {
            kind: p.kind,
            c: i(p.x[1]),
            h: i(p.x[2]),
            w: i(p.x[3]),
            co: i(p.w[0]),
            cig: i(p.w[1]),
            cog: i(p.w[0] / p.groups),
            kh: i(p.w[2]),
            kw: i(p.w[3]),
            ho: i(p.y[2]),
            wo: i(p.y[3]),
            sh: i(p.stride[0]),
            sw: i(p.stride[1]),
            dh: i(p.dilation[0]),
            dw: i(p.dilation[1]),
            pt: i(p.pad[0]),
            pl: i(p.pad[1]),
            bias: p.bias && p.kind == ConvKind::Forward,
        }
    }

    fn khw(&self) -> i64 {
        self.kh * self.kw
    }

    fn operands(&self, m: u64, n: u64, precision: Precision) -> (Operand, Operand) {
        use ConvOperand::*;
        let (k_fast, mn_fast) = ((Layout::KFast, precision), (Layout::MnFast, precision));
        match self.kind {
            ConvKind::Forward => (
                Operand::new(Side::A, W, m, k_fast, 0),
                Operand::new(Side::B, X, n, mn_fast, 3),
            ),
            ConvKind::GradInput => {
                // w[co, m, kh, kw]: k-contiguous within a kernel window, m-contiguous for 1x1.
                let a = if self.khw() == 1 { mn_fast } else { k_fast };
                (
                    Operand::new(Side::A, W, m, a, 0),
                    Operand::new(Side::B, Dy, n, mn_fast, 3),
                )
            }
            ConvKind::GradWeight => (
                Operand::new(Side::A, Dy, m, k_fast, 0),
                Operand::new(Side::B, X, n, k_fast, 3),
            ),
        }
    }

    /// Whether the input row (or column) `o*s + k*d - pad` of the forward conv can fall
    /// below 0 and at or beyond `size`.
    fn gather_checks(&self, axis: usize) -> (bool, bool) {
        let (out, s, k, d, pad, size) = if axis == 0 {
            (self.ho, self.sh, self.kh, self.dh, self.pt, self.h)
        } else {
            (self.wo, self.sw, self.kw, self.dw, self.pl, self.w)
        };
        (pad > 0, (out - 1) * s + (k - 1) * d - pad >= size)
    }

    /// The k coordinates of the GEMM's depth `k` that the operand addresses use.
    fn decode_k(&self, b: &mut KernelBuilder, k: Expr) -> Vec<Expr> {
        match self.kind {
            ConvKind::Forward | ConvKind::GradInput => {
                // Forward: (ci, kh, kw); data gradient: (co, kh, kw).
                let ch = b.let_(div(k.clone(), self.khw()));
                let t = b.let_(rem(k, self.khw()));
                let kh = div(t.clone(), self.kw);
                let kw = rem(t.clone(), self.kw);
                let hoff = b.let_(mul(kh, self.dh));
                let woff = b.let_(mul(kw, self.dw));
                vec![ch, t, hoff, woff]
            }
            ConvKind::GradWeight => {
                // (batch, output pixel): dy offset, x batch offset, oh*sh, ow*sw.
                let howo = self.ho * self.wo;
                let bb = b.let_(div(k.clone(), howo));
                let p = b.let_(rem(k, howo));
                let dy = b.let_(add(mul(bb.clone(), self.co * howo), p.clone()));
                let xb = b.let_(mul(bb, self.c * self.h * self.w));
                let oh = b.let_(mul(div(p.clone(), self.wo), self.sh));
                let ow = b.let_(mul(rem(p, self.wo), self.sw));
                vec![dy, xb, oh, ow]
            }
        }
    }

    /// The values of row `mn` of an operand decoded once per block.
    fn decode_mn(&self, b: &mut KernelBuilder, op: &Operand, g: &Expr, mn: Expr) -> Vec<Expr> {
        let hw = self.h * self.w;
        let howo = self.ho * self.wo;
        match (self.kind, op.side) {
            (ConvKind::Forward, Side::B) => {
                // n = (batch, oh, ow): x offset of the group's channels, top-left tap.
                let bb = div(mn.clone(), howo);
                let p = b.let_(rem(mn, howo));
                let base = add(mul(bb, self.c), mul(g.clone(), self.cig));
                let oh = div(p.clone(), self.wo);
                let ow = rem(p, self.wo);
                vec![
                    mul(base, hw),
                    sub(mul(oh, self.sh), self.pt),
                    sub(mul(ow, self.sw), self.pl),
                ]
            }
            (ConvKind::GradInput, Side::B) => {
                // n = (batch, ih, iw): dy offset of the group's channels, padded position.
                let bb = div(mn.clone(), hw);
                let p = b.let_(rem(mn, hw));
                let base = add(mul(bb, self.co), mul(g.clone(), self.cog));
                vec![
                    mul(base, howo),
                    add(div(p.clone(), self.w), Expr::Int(self.pt)),
                    add(rem(p, self.w), Expr::Int(self.pl)),
                ]
            }
            (ConvKind::GradWeight, Side::B) => {
                // n = (ci, kh, kw): x channel offset, tap offsets less the padding.
                let ci = div(mn.clone(), self.khw());
                let t = b.let_(rem(mn, self.khw()));
                let ch = add(mul(g.clone(), self.cig), ci);
                vec![
                    mul(ch, hw),
                    sub(mul(div(t.clone(), self.kw), self.dh), self.pt),
                    sub(mul(rem(t, self.kw), self.dw), self.pl),
                ]
            }
            _ => Vec::new(),
        }
    }

    /// Conditions (besides the tile bounds) and the flat index of element `(mn, k)` of an
    /// operand: `row` is `mn` with its decoded values, `depth` is `k` with its own.
    fn address(
        &self,
        b: &mut KernelBuilder,
        op: &Operand,
        g: &Expr,
        row: (Expr, &[Expr]),
        depth: (Expr, &[Expr]),
    ) -> (Vec<Expr>, Expr) {
        let ((mn, pre), (k, kd)) = (row, depth);
        let mut conds = Vec::new();
        let idx = match (self.kind, op.side) {
            (ConvKind::Forward, Side::A) => {
                let row = add(mul(g.clone(), self.cog), mn);
                add(mul(row, self.cig * self.khw()), k)
            }
            (ConvKind::Forward, Side::B) | (ConvKind::GradWeight, Side::B) => {
                self.x_tap(b, pre, kd, &mut conds)
            }
            (ConvKind::GradInput, Side::A) => {
                // w[g*Cout_g + co, m, kh, kw], kd = (co, t, ..).
                let o = add(mul(g.clone(), self.cog), kd[0].clone());
                let row = add(mul(o, self.cig), mn);
                add(mul(row, self.khw()), kd[1].clone())
            }
            (ConvKind::GradInput, Side::B) => self.dy_tap(b, pre, kd, &mut conds),
            (ConvKind::GradWeight, Side::A) => {
                // dy[b, g*M + m, oh, ow], kd = (batch offset + pixel, ..).
                let ch = add(mul(g.clone(), self.cog), mn);
                add(kd[0].clone(), mul(ch, self.ho * self.wo))
            }
        };
        (conds, idx)
    }

    /// The flat index of `x` at a tap of an output pixel (the B operand of the forward conv
    /// and of the weight gradient), pushing the bounds checks the padding needs.
    ///
    /// Forward: `pre` = (x base, ih0, iw0), `kd` = (ci, t, kh*dh, kw*dw). Weight gradient:
    /// `pre` = (x channel base, kh*dh - top, kw*dw - left), `kd` = (dy, x batch base, oh*sh,
    /// ow*sw).
    fn x_tap(
        &self,
        b: &mut KernelBuilder,
        pre: &[Expr],
        kd: &[Expr],
        conds: &mut Vec<Expr>,
    ) -> Expr {
        let (base, ih, iw) = if self.kind == ConvKind::Forward {
            let base = add(pre[0].clone(), mul(kd[0].clone(), self.h * self.w));
            (
                base,
                add(pre[1].clone(), kd[2].clone()),
                add(pre[2].clone(), kd[3].clone()),
            )
        } else {
            let base = add(pre[0].clone(), kd[1].clone());
            (
                base,
                add(kd[2].clone(), pre[1].clone()),
                add(kd[3].clone(), pre[2].clone()),
            )
        };
        let ih = b.let_(ih);
        let iw = b.let_(iw);
        for (axis, v, size) in [(0, &ih, self.h), (1, &iw, self.w)] {
            let (lo, hi) = self.gather_checks(axis);
            if lo {
                conds.push(v.clone().ge(0));
            }
            if hi {
                conds.push(v.clone().lt(size));
            }
        }
        add(base, add(mul(ih, self.w), iw))
    }

    /// The flat index of `dy` at the output pixel that a tap of an input pixel comes from
    /// (the B operand of the data gradient), pushing the checks that the tap exists.
    ///
    /// `pre` = (dy base, ih + top, iw + left), `kd` = (co, t, kh*dh, kw*dw).
    fn dy_tap(
        &self,
        b: &mut KernelBuilder,
        pre: &[Expr],
        kd: &[Expr],
        conds: &mut Vec<Expr>,
    ) -> Expr {
        let oh = self.dy_coord(b, sub_expr(pre[1].clone(), kd[2].clone()), 0, conds);
        let ow = self.dy_coord(b, sub_expr(pre[2].clone(), kd[3].clone()), 1, conds);
        let base = add(pre[0].clone(), mul(kd[0].clone(), self.ho * self.wo));
        add(base, add(mul(oh, self.wo), ow))
    }

    /// The output coordinate `num / stride` along `axis` of a data-gradient tap, where
    /// `num` is the padded input coordinate less the tap offset; the division must be exact
    /// and in range.
    fn dy_coord(
        &self,
        b: &mut KernelBuilder,
        num: Expr,
        axis: usize,
        conds: &mut Vec<Expr>,
    ) -> Expr {
        let (s, k, d, pad, size, out) = if axis == 0 {
            (self.sh, self.kh, self.dh, self.pt, self.h, self.ho)
        } else {
            (self.sw, self.kw, self.dw, self.pl, self.w, self.wo)
        };
        let num = b.let_(num);
        if (k - 1) * d > pad {
            conds.push(num.clone().ge(0));
        }
        if s > 1 {
            conds.push(rem(num.clone(), s).eq(0));
        }
        if size - 1 + pad >= out * s {
            conds.push(num.clone().lt(out * s));
        }
        div(num, s)
    }

    /// The flat result index of `C[m, n]` as `row(m) + col(n)`.
    fn result_row(&self, g: &Expr, m: Expr) -> Expr {
        match self.kind {
            ConvKind::Forward => mul(add(mul(g.clone(), self.cog), m), self.ho * self.wo),
            ConvKind::GradInput => mul(add(mul(g.clone(), self.cig), m), self.h * self.w),
            ConvKind::GradWeight => mul(add(mul(g.clone(), self.cog), m), self.cig * self.khw()),
        }
    }

    fn result_col(&self, n: Expr) -> Expr {
        let plane_channels = |plane: i64, channels: i64| {
            add(
                mul(div(n.clone(), plane), channels * plane),
                rem(n.clone(), plane),
            )
        };
        match self.kind {
            ConvKind::Forward => plane_channels(self.ho * self.wo, self.co),
            ConvKind::GradInput => plane_channels(self.h * self.w, self.c),
            ConvKind::GradWeight => n,
        }
    }
}

fn sub_expr(a: Expr, b: Expr) -> Expr {
    match b {
        Expr::Int(c) => sub(a, c),
        _ => a - b,
    }
}

/// What a GEMM kernel is emitted into, where its operands come from and where its results
/// go; implemented by whoever fuses code around the GEMM.
///
/// `load(operand, flat)` returns the value of `operand` at the flat index `flat` of its own
/// layout (always in bounds); it may emit statements into the builder (a fused prologue)
/// and is called where the value is needed. `store(flat, value)` writes the result element
/// at `flat` (of `y`, `dx` or `dw`); it is called exactly once per element of the result and
/// runs the fused epilogue. An error from either ends [`conv_kernel`] with that error (the
/// builder is then left half-built).
pub trait ConvIo {
    type Error;

    /// The builder the kernel is emitted into (its block size must be [`BLOCK`]).
    fn builder(&mut self) -> &mut KernelBuilder;

    /// The prologue: the value of `operand` at `flat`.
    fn load(&mut self, operand: ConvOperand, flat: Expr) -> Result<Expr, Self::Error>;

    /// The parameter `operand` is read from, when [`Self::load`] would only read it (no
    /// fused prologue): tensor-core kernels then copy it to shared memory asynchronously.
    /// `None` (the default): every element goes through [`Self::load`].
    fn plain(&mut self, operand: ConvOperand) -> Option<Buf> {
        let _ = operand;
        None
    }

    /// The epilogue: writes `value` to the result element `flat`.
    fn store(&mut self, flat: Expr, value: Expr) -> Result<(), Self::Error>;
}

/// Emits a convolution as a tiled implicit GEMM multiplying in `precision` into `io`'s
/// builder (whose block size must be [`BLOCK`]), reading and writing through `io`, and
/// returns the grid (number of blocks).
pub fn conv_kernel<Io: ConvIo + ?Sized>(
    io: &mut Io,
    p: &ConvProblem,
    precision: Precision,
) -> Result<u64, Io::Error> {
    assert_eq!(
        io.builder().block(),
        BLOCK,
        "GEMM kernels run {BLOCK} threads per block"
    );
    let Some(mut gemm) = Gemm::new(io.builder(), p, precision) else {
        return Ok(0);
    };
    if gemm.mma.is_some() {
        gemm.plain = gemm.ops.each_ref().map(|op| io.plain(op.operand));
        if gemm.k_tiles > 0 {
            gemm.fetch(io, Expr::Int(0), Fetch::Async(Expr::Int(0)))?;
            io.builder().async_commit();
        }
    }
    if gemm.k_tiles > 0 {
        gemm.fetch(io, Expr::Int(0), Fetch::Registers)?;
    }
    let kt = io.builder().begin_for(0, gemm.k_tiles as i64, 1);
    match gemm.mma {
        Some(_) => gemm.k_slice_pipelined(io, kt)?,
        None => gemm.k_slice(io, kt)?,
    }
    io.builder().end_for();
    gemm.epilogue(io)?;
    Ok(gemm.grid)
}

/// Which of a slice's elements a fetch reads: those staged through registers (operands
/// with a fused prologue, and every operand of f32 kernels), or those copied asynchronously
/// into the shared stage of the given parity (the plain operands of tensor-core kernels).
enum Fetch {
    Registers,
    Async(Expr),
}

/// A GEMM kernel being emitted: its sizes, its two operands, the arrays it allocated and the
/// block's coordinates (uniform: they cross barriers as plain variables).
struct Gemm {
    conv: Conv,
    /// `(M, N, K)` of one group.
    m_size: u64,
    n_size: u64,
    k_size: u64,
    k_tiles: u64,
    grid: u64,
    /// A and B.
    ops: [Operand; 2],
    /// The shared tile of each operand.
    shared: [Buf; 2],
    /// The thread's register tile of `C`.
    acc: Buf,
    /// The staging registers of the next slice, `LOADS` per operand.
    stage: Buf,
    precision: Precision,
    /// Tensor cores: the operation, and the thread's A and B fragments of a slice.
    mma: Option<(MmaShape, [Buf; 2])>,
    /// Tensor cores: the buffer of each operand that is read plainly (copied to shared
    /// memory asynchronously); the others are staged through registers.
    plain: [Option<Buf>; 2],
    /// The per-row values each operand decodes once per block.
    pre: [Option<Buf>; 2],
    /// The block's group.
    g: Expr,
    /// The origin of the block tile in M and in N.
    m0: Expr,
    n0: Expr,
}

impl Gemm {
    /// Allocates the arrays, decodes the block's tile and the thread's rows, and zeroes the
    /// accumulators; `None` when the grid is empty (nothing is emitted).
    fn new(b: &mut KernelBuilder, p: &ConvProblem, precision: Precision) -> Option<Gemm> {
        let conv = Conv::new(p);
        let (m_size, n_size, k_size) = p.gemm();
        let tiles_m = m_size.div_ceil(TILE_M);
        let tiles_n = n_size.div_ceil(TILE_N);
        let grid = p.groups * tiles_m * tiles_n;
        if grid == 0 {
            return None;
        }
        let (a, bop) = conv.operands(m_size, n_size, precision);
        let ops = [a, bop];
        // Tensor cores: two stages, the next slice landing while this one is multiplied.
        let stages = if mma_shape(precision).is_some() { 2 } else { 1 };
        let shared = ops
            .each_ref()
            .map(|op| b.shared(Ty::F32, stages * TILE_K * op.ld));
        let acc = b.private(Ty::F32, REG * REG);
        let stage = b.private(Ty::F32, 2 * LOADS);
        let mma = mma_shape(precision).map(|shape| {
            let [la, lb, _] = shape.fragment_lens();
            let steps = TILE_K / shape.mnk().2;
            let frags = [
                b.private(Ty::F32, steps * MMA_TILES * la),
                b.private(Ty::F32, steps * MMA_TILES * lb),
            ];
            (shape, frags)
        });
        let pre = ops
            .each_ref()
            .map(|op| (op.pre_len > 0).then(|| b.private(Ty::Index, op.rows() * op.pre_len)));

        // The block's group and tile.
        let per_group = (tiles_m * tiles_n) as i64;
        let g = if p.groups == 1 {
            Expr::Int(0)
        } else {
            b.let_(div(Expr::BlockId, per_group))
        };
        let in_group = if p.groups == 1 {
            Expr::BlockId
        } else {
            b.let_(rem(Expr::BlockId, per_group))
        };
        let m0 = b.let_(mul(div(in_group.clone(), tiles_n as i64), TILE_M as i64));
        let n0 = b.let_(mul(rem(in_group, tiles_n as i64), TILE_N as i64));
        let gemm = Gemm {
            conv,
            m_size,
            n_size,
            k_size,
            k_tiles: k_size.div_ceil(TILE_K),
            grid,
            ops,
            shared,
            acc,
            stage,
            precision,
            mma,
            plain: [None, None],
            pre,
            g,
            m0,
            n0,
        };
        gemm.decode_rows(b);
        for i in 0..REG * REG {
            b.store(gemm.acc, i as i64, Expr::f32(0.0));
        }
        Some(gemm)
    }

    /// The tile origin of an operand's rows.
    fn origin(&self, op: &Operand) -> Expr {
        match op.side {
            Side::A => self.m0.clone(),
            Side::B => self.n0.clone(),
        }
    }

    /// Per-thread row decoding, once per block.
    fn decode_rows(&self, b: &mut KernelBuilder) {
        for (op, pre) in self.ops.iter().zip(&self.pre) {
            let Some(pre) = pre else { continue };
            for r in 0..op.rows() {
                let mn = b.let_(add(self.origin(op), op.mn_local(r)));
                let vals = self.conv.decode_mn(b, op, &self.g, mn);
                for (q, v) in vals.into_iter().enumerate() {
                    b.store(*pre, (r * op.pre_len) as i64 + q as i64, v);
                }
            }
        }
    }

    /// Fetches the slice at depth `k0`: the elements `which` says, into the staging
    /// registers or (asynchronously) into the shared stage.
    fn fetch<Io: ConvIo + ?Sized>(
        &self,
        io: &mut Io,
        k0: Expr,
        which: Fetch,
    ) -> Result<(), Io::Error> {
        let wanted = |s: usize| match which {
            Fetch::Registers => self.plain[s].is_none(),
            Fetch::Async(_) => self.plain[s].is_some(),
        };
        // The one k of the k-fast loads, decoded once.
        let kfast = (0..2)
            .any(|s| wanted(s) && self.ops[s].layout == Layout::KFast)
            .then(|| {
                let b = io.builder();
                let k = b.let_(add(k0.clone(), Expr::ThreadId.and(Expr::Int(15))));
                let kd = self.conv.decode_k(b, k.clone());
                (k, kd)
            });
        for (s, op) in self.ops.iter().enumerate().filter(|(s, _)| wanted(*s)) {
            for r in 0..LOADS {
                let (k, kd) = match (op.layout, &kfast) {
                    (Layout::KFast, Some(kf)) => kf.clone(),
                    _ => {
                        let b = io.builder();
                        let k = b.let_(add(k0.clone(), op.k_local(r)));
                        let kd = self.conv.decode_k(b, k.clone());
                        (k, kd)
                    }
                };
                match (&which, self.plain[s]) {
                    (Fetch::Async(parity), Some(buf)) => {
                        let b = io.builder();
                        let (ok, idx) = self.element(b, s, r, (k, &kd));
                        let at = op.k_local(r) * op.ld as i64 + op.mn_local(r);
                        let at = add(stage_offset(parity.clone(), op), at);
                        let at = b.let_(at);
                        let dst = (self.shared[s], at);
                        match ok {
                            Some(ok) => {
                                let safe = b.let_(Expr::select(ok.clone(), idx, Expr::Int(0)));
                                b.async_copy(dst, (buf, safe), ok);
                            }
                            None => b.async_copy(dst, (buf, idx), Expr::Int(1).ne(0)),
                        }
                    }
                    _ => {
                        let value = self.fetch_one(io, s, r, (k, &kd))?;
                        io.builder()
                            .store(self.stage, (s as u64 * LOADS + r) as i64, value);
                    }
                }
            }
        }
        Ok(())
    }

    /// Where the `r`-th element that the thread fetches of operand `s` lies, at depth `k`
    /// (with its decoded values): the condition that it is not a zero (`None`: always) and
    /// its flat index in the operand (valid only where the condition holds).
    fn element(
        &self,
        b: &mut KernelBuilder,
        s: usize,
        r: u64,
        (k, kd): (Expr, &[Expr]),
    ) -> (Option<Expr>, Expr) {
        let op = &self.ops[s];
        let mn = b.let_(add(self.origin(op), op.mn_local(r)));
        let row = match op.layout {
            Layout::KFast => r,
            Layout::MnFast => 0,
        };
        let vals: Vec<Expr> = match self.pre[s] {
            Some(buf) => (0..op.pre_len)
                .map(|q| Expr::load(buf, (row * op.pre_len + q) as i64))
                .collect(),
            None => Vec::new(),
        };
        let vals: Vec<Expr> = vals.into_iter().map(|v| b.let_(v)).collect();
        let (mut conds, idx) =
            self.conv
                .address(b, op, &self.g, (mn.clone(), &vals), (k.clone(), kd));
        let tile = if op.side == Side::A { TILE_M } else { TILE_N };
        if !op.size.is_multiple_of(tile) {
            conds.insert(0, mn.lt(op.size as i64));
        }
        if !self.k_size.is_multiple_of(TILE_K) {
            conds.insert(0, k.lt(self.k_size as i64));
        }
        (all(conds).map(|ok| b.let_(ok)), idx)
    }

    /// The `r`-th element that the thread fetches of operand `s`, at depth `k` (with its
    /// decoded values); zero out of range.
    fn fetch_one<Io: ConvIo + ?Sized>(
        &self,
        io: &mut Io,
        s: usize,
        r: u64,
        (k, kd): (Expr, &[Expr]),
    ) -> Result<Expr, Io::Error> {
        let op = &self.ops[s];
        let b = io.builder();
        let (ok, idx) = self.element(b, s, r, (k, kd));
        match ok {
            Some(ok) => {
                let safe = b.let_(Expr::select(ok.clone(), idx, Expr::Int(0)));
                let v = io.load(op.operand, safe)?;
                Ok(Expr::select(ok, v, Expr::f32(0.0)))
            }
            None => {
                let idx = b.let_(idx);
                io.load(op.operand, idx)
            }
        }
    }

    /// The body of the K loop at slice `kt`: the staged slice goes to shared memory, the
    /// next one is fetched while this one is multiplied.
    fn k_slice<Io: ConvIo + ?Sized>(&self, io: &mut Io, kt: Expr) -> Result<(), Io::Error> {
        let b = io.builder();
        for (s, op) in self.ops.iter().enumerate() {
            for r in 0..LOADS {
                let at = b.let_(add(mul(op.k_local(r), op.ld as i64), op.mn_local(r)));
                let v = Expr::load(self.stage, (s as u64 * LOADS + r) as i64);
                b.store(self.shared[s], at, v);
            }
        }
        b.barrier();
        if self.k_tiles > 1 {
            b.begin_if((kt.clone() + 1).lt(self.k_tiles as i64));
            self.fetch(io, mul(kt + 1, TILE_K as i64), Fetch::Registers)?;
            io.builder().end_if();
        }
        let b = io.builder();
        self.multiply_fma(b);
        b.barrier();
        Ok(())
    }

    /// The body of the K loop of a tensor-core kernel at slice `kt`, with two shared
    /// stages: the registers staged for slice `kt` go to its stage; the asynchronous copies
    /// of slice `kt + 1` start into the other stage (multiplied from in the previous
    /// iteration, which ended with a barrier); every thread waits until its copies of slice
    /// `kt` (committed one iteration earlier) have landed, and the barrier makes them and
    /// the stores visible; the registers of slice `kt + 1` are fetched while slice `kt` is
    /// multiplied.
    fn k_slice_pipelined<Io: ConvIo + ?Sized>(
        &self,
        io: &mut Io,
        kt: Expr,
    ) -> Result<(), Io::Error> {
        let b = io.builder();
        let parity = b.let_(kt.clone().and(Expr::Int(1)));
        let here = self
            .ops
            .each_ref()
            .map(|op| b.let_(stage_offset(parity.clone(), op)));
        for (s, op) in self
            .ops
            .iter()
            .enumerate()
            .filter(|(s, _)| self.plain[*s].is_none())
        {
            for r in 0..LOADS {
                let at = add(
                    here[s].clone(),
                    op.k_local(r) * op.ld as i64 + op.mn_local(r),
                );
                let at = b.let_(at);
                let v = Expr::load(self.stage, (s as u64 * LOADS + r) as i64);
                b.store(self.shared[s], at, v);
            }
        }
        let more = (kt.clone() + 1).lt(self.k_tiles as i64);
        let next = mul(kt.clone() + 1, TILE_K as i64);
        if self.k_tiles > 1 && self.plain.iter().any(Option::is_some) {
            b.begin_if(more.clone());
            let other = Expr::Int(1) - parity;
            self.fetch(io, next.clone(), Fetch::Async(other))?;
            io.builder().end_if();
        }
        let b = io.builder();
        // A group per iteration (empty after the last slice): waiting for all but the
        // newest completes slice `kt`.
        b.async_commit();
        b.async_wait(1);
        b.barrier();
        if self.k_tiles > 1 && self.plain.iter().any(Option::is_none) {
            b.begin_if(more);
            self.fetch(io, next, Fetch::Registers)?;
            io.builder().end_if();
        }
        let b = io.builder();
        let (shape, frags) = self.mma.expect("a tensor-core kernel");
        self.multiply_mma(b, shape, frags, here);
        b.barrier();
        Ok(())
    }

    /// Tensor cores: the thread's fragments of the slice's k-steps (from the shared stage
    /// at `stage`, rounded as the precision multiplies), then the warp's mma.
    fn multiply_mma(
        &self,
        b: &mut KernelBuilder,
        shape: MmaShape,
        [fa, fb]: [Buf; 2],
        stage: [Expr; 2],
    ) {
        let ([a, bop], [sa, sb]) = (&self.ops, self.shared);
        let round = |v: Expr| match self.precision {
            Precision::Tf32 => v.round_tf32(),
            Precision::Bf16 => v.round_bf16(),
            Precision::F32 => unreachable!("f32 kernels use no tensor cores"),
        };
        let (mm, nn, kk) = shape.mnk();
        let [la, lb, lc] = shape.fragment_lens();
        let (wm, wn, g, q) = warp_coordinates(b, shape);
        let qk = b.let_(mul(q, shape.k_per_q() as i64));
        for ks in 0..TILE_K / kk {
            for t in 0..MMA_TILES {
                for i in 0..la {
                    let (dr, dk) = shape.a_offsets(i);
                    let row = wm.clone() + (t * mm + dr) as i64 + g.clone();
                    let k = qk.clone() + (ks * kk + dk) as i64;
                    let at = add(stage[0].clone(), add(mul(k, a.ld as i64), row));
                    b.store(
                        fa,
                        ((ks * MMA_TILES + t) * la + i) as i64,
                        round(Expr::load(sa, at)),
                    );
                }
                for i in 0..lb {
                    let col = wn.clone() + (t * nn) as i64 + g.clone();
                    let k = qk.clone() + (ks * kk + shape.b_offset(i)) as i64;
                    let at = add(stage[1].clone(), add(mul(k, bop.ld as i64), col));
                    b.store(
                        fb,
                        ((ks * MMA_TILES + t) * lb + i) as i64,
                        round(Expr::load(sb, at)),
                    );
                }
            }
        }
        for ks in 0..TILE_K / kk {
            for mi in 0..MMA_TILES {
                for ni in 0..MMA_TILES {
                    b.mma(Mma {
                        shape,
                        a: (fa, (ks * MMA_TILES + mi) * la),
                        b: (fb, (ks * MMA_TILES + ni) * lb),
                        acc: (self.acc, (mi * MMA_TILES + ni) * lc),
                    });
                }
            }
        }
    }

    /// CUDA cores: the thread's 4 x 4 tile by f32 fused multiply-adds.
    fn multiply_fma(&self, b: &mut KernelBuilder) {
        let ([a, bop], [sa, sb], acc) = (&self.ops, self.shared, self.acc);
        let ty = b.let_(Expr::ThreadId.shift_right(4) * REG as i64);
        let tx = b.let_(Expr::ThreadId.and(Expr::Int(15)) * REG as i64);
        for kk in 0..TILE_K {
            let av: Vec<Expr> = (0..REG)
                .map(|i| b.let_(Expr::load(sa, ty.clone() + (kk * a.ld + i) as i64)))
                .collect();
            let bv: Vec<Expr> = (0..REG)
                .map(|j| b.let_(Expr::load(sb, tx.clone() + (kk * bop.ld + j) as i64)))
                .collect();
            for i in 0..REG {
                for j in 0..REG {
                    let at = (i * REG + j) as i64;
                    let sum = Expr::load(acc, at) + av[i as usize].clone() * bv[j as usize].clone();
                    b.store(acc, at, sum);
                }
            }
        }
    }

    /// The rows and columns (in the block tile) of the thread's 4 x 4 elements of `C`, and
    /// where element `(i, j)` is in the register tile.
    fn c_elements(&self, b: &mut KernelBuilder) -> ([Expr; 4], [Expr; 4], fn(u64, u64) -> u64) {
        let Some((shape, _)) = self.mma else {
            let ty = b.let_(Expr::ThreadId.shift_right(4) * REG as i64);
            let tx = b.let_(Expr::ThreadId.and(Expr::Int(15)) * REG as i64);
            let rows = [0, 1, 2, 3].map(|i| ty.clone() + i);
            let cols = [0, 1, 2, 3].map(|j| tx.clone() + j);
            return (rows, cols, |i, j| i * REG + j);
        };
        // Row i = 2 mi + h: m-tile mi, row g + 8h of it; column j = 2 ni + e: n-tile ni,
        // column 2q + e of it (the C fragment layout of both shapes, element 2h + e).
        let (mm, nn, _) = shape.mnk();
        let (wm, wn, g, q) = warp_coordinates(b, shape);
        let q2 = b.let_(q * 2);
        let rows = [0, 1, 2, 3].map(|i| wm.clone() + g.clone() + ((i / 2) * mm + 8 * (i % 2)));
        let cols = [0, 1, 2, 3].map(|j| wn.clone() + q2.clone() + ((j / 2) * nn + j % 2));
        let at = |i: u64, j: u64| ((i / 2) * MMA_TILES + j / 2) * 4 + 2 * (i % 2) + j % 2;
        (rows, cols, at)
    }

    /// Each in-range element of the thread's register tile, once, with the bias added.
    fn epilogue<Io: ConvIo + ?Sized>(&self, io: &mut Io) -> Result<(), Io::Error> {
        let conv = &self.conv;
        let b = io.builder();
        let (rows, cols, at) = self.c_elements(b);
        let cols: Vec<(Expr, Expr)> = cols
            .into_iter()
            .map(|c| {
                let n = b.let_(add(self.n0.clone(), c));
                let col = b.let_(conv.result_col(n.clone()));
                (n, col)
            })
            .collect();
        let row_ok = !self.m_size.is_multiple_of(TILE_M);
        let col_ok = !self.n_size.is_multiple_of(TILE_N);
        for (i, r) in rows.into_iter().enumerate() {
            let b = io.builder();
            let m = b.let_(add(self.m0.clone(), r));
            if row_ok {
                b.begin_if(m.clone().lt(self.m_size as i64));
            }
            let row = b.let_(conv.result_row(&self.g, m.clone()));
            let bias = if conv.bias {
                let ch = b.let_(add(mul(self.g.clone(), conv.cog), m.clone()));
                Some(io.load(ConvOperand::Bias, ch)?)
            } else {
                None
            };
            for (j, (n, col)) in cols.iter().enumerate() {
                let b = io.builder();
                if col_ok {
                    b.begin_if(n.clone().lt(self.n_size as i64));
                }
                let flat = b.let_(add(row.clone(), col.clone()));
                let mut v = Expr::load(self.acc, at(i as u64, j as u64) as i64);
                if let Some(bias) = &bias {
                    v = v + bias.clone();
                }
                io.store(flat, v)?;
                if col_ok {
                    io.builder().end_if();
                }
            }
            if row_ok {
                io.builder().end_if();
            }
        }
        Ok(())
    }
}

/// The tensor-core operation of a precision's GEMMs (`None`: f32 FMA).
fn mma_shape(precision: Precision) -> Option<MmaShape> {
    match precision {
        Precision::F32 => None,
        Precision::Tf32 => Some(MmaShape::Tf32M16N8K8),
        Precision::Bf16 => Some(MmaShape::Bf16M16N8K16),
    }
}

/// The first element of an operand's shared stage of `parity` (0 or 1).
fn stage_offset(parity: Expr, op: &Operand) -> Expr {
    mul(parity, (TILE_K * op.ld) as i64)
}

/// A warp's corner of the block tile is `MMA_TILES x MMA_TILES` mma tiles (32 x 16).
const MMA_TILES: u64 = 2;

/// The thread's warp corner in the block tile (row, column) and its lane's `g = lane / 4`
/// and `q = lane % 4`.
fn warp_coordinates(b: &mut KernelBuilder, shape: MmaShape) -> (Expr, Expr, Expr, Expr) {
    let (mm, nn, _) = shape.mnk();
    let warp = b.let_(Expr::ThreadId.shift_right(5));
    let wm = b.let_(warp.clone().shift_right(2) * (MMA_TILES * mm) as i64);
    let wn = b.let_(warp.and(Expr::Int(3)) * (MMA_TILES * nn) as i64);
    let g = b.let_(Expr::ThreadId.shift_right(2).and(Expr::Int(7)));
    let q = b.let_(Expr::ThreadId.and(Expr::Int(3)));
    (wm, wn, g, q)
}
