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
//! Tiling: a block of [`BLOCK`] = 256 threads computes an `m x n` [`Tile`] of `C`; the grid
//! is `groups * ceil(M/m) * ceil(N/n)` blocks, the block id decoding as
//! `(g * tiles_m + tile_m) * tiles_n + tile_n`. f32 kernels always use 64 x 64
//! ([`Tile::F32`]); tensor-core kernels get a tile per convolution ([`Tile::choose`]: from
//! 128 x 128 for large layers down to 32 x 32 where a larger tile's grid would leave the GPU
//! idle).
//!
//! The K loop runs over slices 16 deep. Each slice of A (`m x 16`) and of B (`16 x n`) is
//! staged in a shared array, k-major (`s[k][mn]`, rows padded so that the tensor cores'
//! fragment loads do not conflict) or, for operands copied 16 bytes at a time along k,
//! mn-major.
//! Per operand the load layout follows the contiguous direction of the source (`Layout`):
//! *k-fast* (thread `t` loads `k = t%16` of rows `t/16 + 16r`; the weights of the forward
//! conv, `dy` of the weight gradient), *mn-fast* (row `t%e` at `k = t/e + (256/e) r`, `e`
//! the tile's extent on the operand's side; the
//! gathered input of the forward conv, `dy` of the data gradient), or their 16-byte forms
//! where 4 neighbours along the contiguous direction are 4 consecutive, aligned elements
//! (`Conv::vector_layout`). Either way a thread's rows or columns stay fixed for the
//! whole block, so their coordinates (batch, pixel, channel offsets: the divisions) are
//! decoded once per block into private arrays, and a slice decodes only its k coordinates
//! (one per thread for k-fast operands; all divisions are by constants). Out-of-range rows,
//! columns and k (edge tiles), the zero padding of the input and the missing taps of the
//! data gradient are zeros in the shared tiles; the operand is read at subscript 0 there.
//!
//! The epilogue calls `store` once for every in-range element of `C`, at its flat index in
//! the result (`y`, `dx` or `dw`), with the forward bias already added.
//!
//! The multiply of a slice depends on the [`Precision`]:
//! - `f32`: thread `t` owns a 4 x 4 register tile of `C` (rows `4*(t/16) .. +4`, columns
//!   `4*(t%16) .. +4`; a private array read and written only at constant subscripts, so it
//!   lives in registers) and multiplies with f32 fused multiply-adds from the shared tiles.
//!   The next slice is fetched into registers while the current one is multiplied (one
//!   barrier after the shared stores, one after the products).
//! - `tf32` and `bf16`: tensor cores. Warp `w = t / 32` owns the corner `(w / 4, w % 4)` of
//!   a 2 x 4 grid of warp tiles, `m/32 x n/32` tiles of 16 x 8 of `mma.m16n8k8`
//!   (`m16n8k16`) ([`Mma`]), each thread holding 4 elements of `C` per mma tile (the C
//!   fragment layout). Per k-step (two of 8 per slice for TF32, one of 16 for BF16) a thread
//!   loads its A and B fragments (the layouts of [`super::semantics::mma_a_element`] and
//!   [`super::semantics::mma_b_element`]) from shared memory, rounded to TF32 (BF16) as
//!   they are read, then the warp issues its mma. The plain operands arrive by `cp.async`
//!   through `stages` shared stages (`Gemm::k_slice_pipelined`); operands with a fused
//!   prologue are staged through registers one slice ahead, into two shared stages.

use super::kir::{Buf, Expr, KernelBuilder, Mma, MmaShape, Ty};
pub use rfnc_bundle::Precision;

/// Threads per block of a GEMM kernel (the builder must have this block size), and of
/// every other kernel that lowering emits ([`super::lower`]).
pub const BLOCK: u32 = 256;
/// The register tile of an f32 thread is `REG x REG`.
const REG: u64 = 4;
/// Warps along M and along N of a tensor-core block (8 warps, [`BLOCK`] threads).
const WARPS_M: u64 = 2;
const WARPS_N: u64 = 4;
/// The most shared memory a kernel declares (statically): 48 KiB.
const SHARED_BYTES: u64 = 48 * 1024;
/// The most shared stages a tensor-core kernel pipelines.
const MAX_STAGES: u64 = 3;
/// Blocks that fill the GPU once: the streaming multiprocessors of an H100 (an A100 has
/// 108). A tile is only chosen when its grid reaches this many blocks, unless no tile's does.
pub const FILL_BLOCKS: u64 = 132;

/// The block tile of a GEMM kernel: a block computes `m x n` elements of `C`, the K loop
/// steps through slices `k` deep, and `stages` shared copies of a slice are in flight (1:
/// the f32 kernels, which stage the next slice in registers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub stages: u64,
}

impl Tile {
    /// The f32 kernels' tile: 64 x 64 x 16, each thread a 4 x 4 register tile.
    pub const F32: Tile = Tile {
        m: 64,
        n: 64,
        k: 16,
        stages: 1,
    };

    /// The tensor-core tiles, largest first: 8 warps (2 along M, 4 along N), each a corner
    /// of `m/32 x n/32` mma tiles (16 x 8 each), 16 deep; as many stages (at most
    /// [`MAX_STAGES`]) as fit in [`SHARED_BYTES`]. (A 128 x 128 tile 32 deep would need
    /// 70 KB for two stages, more than a kernel may declare statically.)
    pub fn tensor_core(precision: Precision) -> Vec<Tile> {
        [
            (128, 128),
            (128, 64),
            (64, 128),
            (64, 64),
            (64, 32),
            (32, 64),
            (32, 32),
        ]
        .into_iter()
        .map(|(m, n)| {
            let mut t = Tile {
                m,
                n,
                k: 16,
                stages: 1,
            };
            // Either order of shared tile (k-major, or mn-major for 16-byte copies).
            let side = |e: u64| (t.k * pitch(precision, e)).max(e * mn_major_pitch(t.k));
            let stage = (side(m) + side(n)) * 4;
            t.stages = (SHARED_BYTES / stage).min(MAX_STAGES);
            t
        })
        .collect()
    }

    /// The tile for convolution `p` multiplying in `precision`: f32 kernels always use
    /// [`Tile::F32`]; tensor-core kernels the largest tile that neither exceeds M or N
    /// (rounded up to 32) nor leaves the GPU underfilled (fewer than [`FILL_BLOCKS`]
    /// blocks), else, when no tile fills the GPU, the one with the most blocks.
    pub fn choose(p: &ConvProblem, precision: Precision) -> Tile {
        if mma_shape(precision).is_none() {
            return Tile::F32;
        }
        let (m, n, _) = p.gemm();
        let fits: Vec<Tile> = Tile::tensor_core(precision)
            .into_iter()
            .filter(|t| {
                t.m <= m.next_multiple_of(32).max(32) && t.n <= n.next_multiple_of(32).max(32)
            })
            .collect();
        let fills = fits.iter().find(|t| p.grid(**t) >= FILL_BLOCKS);
        let most = fits.iter().max_by_key(|t| (p.grid(**t), t.m * t.n));
        *fills.or(most).expect("the 32 x 32 tile always fits")
    }

    /// The mma tiles of a warp along M and N.
    fn warp_tiles(&self, shape: MmaShape) -> (u64, u64) {
        let (mm, nn, _) = shape.mnk();
        (self.m / (WARPS_M * mm), self.n / (WARPS_N * nn))
    }
}

/// The row length of a tensor-core kernel's shared tile `tile` wide (k-major): fragment
/// loads read 4 k rows x 8 columns (TF32; BF16: lanes step k by 2), so rows 8 (4) banks
/// apart make the 32 elements fall in 32 different banks.
fn pitch(precision: Precision, tile: u64) -> u64 {
    match precision {
        Precision::Bf16 => tile + 4,
        _ => tile + 8,
    }
}

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

    /// The number of blocks of the kernel with `tile`: `groups * ceil(M/m) * ceil(N/n)`.
    pub fn grid(&self, tile: Tile) -> u64 {
        let (m, n, _) = self.gemm();
        self.groups * m.div_ceil(tile.m) * n.div_ceil(tile.n)
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

/// How a thread's loads of an operand slice (`tile` rows, `K` deep) are laid out. The
/// shared tile is k-major (`s[k][mn]`) except for [`Layout::VecK`] (`s[mn][k]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// Thread `t` loads `k = t % K` of rows `t / K + (BLOCK / K) r`.
    KFast,
    /// Thread `t` loads row `t % tile` at `k = t / tile + (BLOCK / tile) r`.
    MnFast,
    /// 16-byte copies along k (tensor cores, operands contiguous in k): thread `t` copies
    /// `k = 4 (t % (K/4)) .. + 4` of rows `t / (K/4) + (4 BLOCK / K) r`.
    VecK,
    /// 16-byte copies along mn (tensor cores, operands contiguous in mn): thread `t` copies
    /// rows `4 (t % (tile/4)) .. + 4` at `k = t / (tile/4) + (4 BLOCK / tile) r`.
    VecMn,
}

impl Layout {
    /// Elements per copy or load.
    fn width(self) -> u64 {
        match self {
            Layout::KFast | Layout::MnFast => 1,
            Layout::VecK | Layout::VecMn => 4,
        }
    }
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
    /// The operand's extent in the block tile (`m` for A, `n` for B) and the slice depth.
    tile: u64,
    depth: u64,
    /// Loads (or copies) of a slice per thread, `tile * depth / (BLOCK * width)` rounded up.
    loads: u64,
    /// The threads that load (or copy): all but for small tiles copied 16 bytes at a time.
    active: u64,
    /// Row length of the shared tile.
    ld: u64,
}

impl Operand {
    fn new(
        side: Side,
        operand: ConvOperand,
        size: u64,
        layout: (Layout, Precision, Tile),
        pre_len: u64,
    ) -> Self {
        let (layout, precision, tile) = layout;
        let extent = match side {
            Side::A => tile.m,
            Side::B => tile.n,
        };
        // f32: k-fast stores hit 16 different k rows at once: padded rows spread them over
        // more banks (68 keeps the rows 16-byte aligned for vector reads).
        let ld = match (precision, layout) {
            (Precision::F32, Layout::KFast) => extent + 4,
            (Precision::F32, Layout::MnFast) => extent,
            (_, Layout::VecK) => mn_major_pitch(tile.k),
            _ => pitch(precision, extent),
        };
        let threads = u64::from(BLOCK);
        assert!(
            extent.is_power_of_two() && tile.k.is_power_of_two(),
            "power-of-two tiles"
        );
        assert!(extent * tile.k >= threads && extent <= threads && tile.k <= threads);
        let copies = extent * tile.k / layout.width();
        Operand {
            side,
            operand,
            size,
            layout,
            pre_len,
            tile: extent,
            depth: tile.k,
            loads: copies.div_ceil(threads),
            active: copies.min(threads),
            ld,
        }
    }

    /// The row (first row) of the thread's `r`-th load in a tile, relative to the tile.
    fn mn_local(&self, r: u64) -> Expr {
        let threads = u64::from(BLOCK);
        let step = |per: u64| Expr::Int(((threads / per) * r) as i64);
        match self.layout {
            Layout::KFast => add(thread_div(self.depth), step(self.depth)),
            Layout::MnFast => thread_rem(self.tile),
            Layout::VecK => add(thread_div(self.depth / 4), step(self.depth / 4)),
            Layout::VecMn => mul(thread_rem(self.tile / 4), 4),
        }
    }

    /// The k (first k) of the thread's `r`-th load in a slice, relative to the slice.
    fn k_local(&self, r: u64) -> Expr {
        let threads = u64::from(BLOCK);
        let step = |per: u64| Expr::Int(((threads / per) * r) as i64);
        match self.layout {
            Layout::KFast => thread_rem(self.depth),
            Layout::MnFast => add(thread_div(self.tile), step(self.tile)),
            Layout::VecK => mul(thread_rem(self.depth / 4), 4),
            Layout::VecMn => add(thread_div(self.tile / 4), step(self.tile / 4)),
        }
    }

    /// How many distinct rows a thread loads (each with its own decoded values).
    fn rows(&self) -> u64 {
        match self.layout {
            Layout::KFast | Layout::VecK => self.loads,
            Layout::MnFast | Layout::VecMn => 1,
        }
    }

    /// Where element `(k, mn)` of a slice lies in its shared stage.
    fn index(&self, k: Expr, mn: Expr) -> Expr {
        match self.layout {
            Layout::VecK => add(mul(mn, self.ld as i64), k),
            _ => add(mul(k, self.ld as i64), mn),
        }
    }

    /// The shared offset of the thread's `r`-th load of a slice, in its stage.
    fn shared_at(&self, r: u64) -> Expr {
        self.index(self.k_local(r), self.mn_local(r))
    }

    /// Elements of one shared stage.
    fn stage_len(&self) -> u64 {
        match self.layout {
            Layout::VecK => self.tile * self.ld,
            _ => self.depth * self.ld,
        }
    }
}

/// The row length of an mn-major shared tile `depth` deep: rows 20 banks apart (mod 32)
/// make a TF32 fragment load (8 rows x 4 k) conflict-free and keep rows 16-byte aligned. (BF16
/// fragments, whose lanes step k by 2, would meet 2-way conflicts at any pitch: BF16
/// kernels keep every operand k-major.)
fn mn_major_pitch(depth: u64) -> u64 {
    depth + 4
}

/// `thread id / c` for a power of two `c`.
fn thread_div(c: u64) -> Expr {
    Expr::ThreadId.shift_right(c.trailing_zeros() as i64)
}

/// `thread id % c` for a power of two `c`.
fn thread_rem(c: u64) -> Expr {
    Expr::ThreadId.and(Expr::Int(c as i64 - 1))
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

    /// The two operands; `copied[s]`: operand `s` is copied asynchronously (tensor cores),
    /// so 16 bytes at a time where it is contiguous ([`Self::vector_layout`]).
    fn operands(
        &self,
        sizes: (u64, u64),
        cfg: (Precision, Tile),
        copied: [bool; 2],
    ) -> [Operand; 2] {
        let (precision, tile) = cfg;
        let [a, b] = kind_operands(self.kind);
        let scalar = match self.kind {
            ConvKind::Forward => [Layout::KFast, Layout::MnFast],
            // w[co, m, kh, kw]: k-contiguous within a kernel window, m-contiguous for 1x1.
            ConvKind::GradInput if self.khw() == 1 => [Layout::MnFast, Layout::MnFast],
            ConvKind::GradInput => [Layout::KFast, Layout::MnFast],
            ConvKind::GradWeight => [Layout::KFast, Layout::KFast],
        };
        let layout = |s: usize, side: Side| {
            let vector = copied[s].then(|| self.vector_layout(side)).flatten();
            // BF16: no mn-major tiles (see `mn_major_pitch`).
            let vector = vector.filter(|v| *v != Layout::VecK || precision == Precision::Tf32);
            (vector.unwrap_or(scalar[s]), precision, tile)
        };
        let pre = |side: Side| if side == Side::B { 3 } else { 0 };
        [
            Operand::new(Side::A, a, sizes.0, layout(0, Side::A), pre(Side::A)),
            Operand::new(Side::B, b, sizes.1, layout(1, Side::B), pre(Side::B)),
        ]
    }

    /// Whether a side's operand can be copied 16 bytes at a time, and along which
    /// direction: every aligned group of 4 elements along it is 4 consecutive, 16-byte
    /// aligned elements of the tensor, and either all of them or none are zeros (padding,
    /// edges).
    fn vector_layout(&self, side: Side) -> Option<Layout> {
        // A 1x1 convolution with stride 1 and no padding: x and dy are one pixel per n (or
        // k), contiguous within each image.
        let plain_pixels = self.khw() == 1
            && (self.sh, self.sw) == (1, 1)
            && (self.ho, self.wo) == (self.h, self.w)
            && (self.pt, self.pl) == (0, 0)
            && (self.h * self.w) % 4 == 0;
        match (self.kind, side) {
            // w[row, k], K = Cin_g kh kw.
            (ConvKind::Forward, Side::A) => {
                (self.cig * self.khw() % 4 == 0).then_some(Layout::VecK)
            }
            (ConvKind::Forward, Side::B) => plain_pixels.then_some(Layout::VecMn),
            // w[co, m] of a 1x1 conv.
            (ConvKind::GradInput, Side::A) => {
                (self.khw() == 1 && self.cig % 4 == 0).then_some(Layout::VecMn)
            }
            (ConvKind::GradInput, Side::B) => plain_pixels.then_some(Layout::VecMn),
            // dy[b, m, pixel], k = (b, pixel).
            (ConvKind::GradWeight, Side::A) => {
                ((self.ho * self.wo) % 4 == 0).then_some(Layout::VecK)
            }
            (ConvKind::GradWeight, Side::B) => plain_pixels.then_some(Layout::VecK),
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
/// builder (whose block size must be [`BLOCK`]), reading and writing through `io`, with the
/// tile [`Tile::choose`] picks, and returns the grid (number of blocks).
pub fn conv_kernel<Io: ConvIo + ?Sized>(
    io: &mut Io,
    p: &ConvProblem,
    precision: Precision,
) -> Result<u64, Io::Error> {
    conv_kernel_tiled(io, p, precision, Tile::choose(p, precision))
}

/// [`conv_kernel`] with a given tile: [`Tile::F32`] for f32, one of
/// [`Tile::tensor_core`] (any number of stages from 2) for the tensor-core precisions.
pub fn conv_kernel_tiled<Io: ConvIo + ?Sized>(
    io: &mut Io,
    p: &ConvProblem,
    precision: Precision,
    tile: Tile,
) -> Result<u64, Io::Error> {
    assert_eq!(
        io.builder().block(),
        BLOCK,
        "GEMM kernels run {BLOCK} threads per block"
    );
    match mma_shape(precision) {
        None => assert_eq!(tile, Tile::F32, "f32 kernels use Tile::F32"),
        Some(shape) => assert!(
            tile.stages >= 2
                && tile.m.is_multiple_of(WARPS_M * 16)
                && tile.n.is_multiple_of(WARPS_N * 8)
                && tile.k.is_multiple_of(shape.mnk().2),
            "a tensor-core tile: {tile:?}"
        ),
    }
    // Tensor cores copy the operands read plainly asynchronously.
    let plain = match mma_shape(precision) {
        Some(_) => kind_operands(p.kind).map(|op| io.plain(op)),
        None => [None, None],
    };
    let Some(gemm) = Gemm::new(io.builder(), p, (precision, tile), plain) else {
        return Ok(0);
    };
    let shared: u64 = (0..2)
        .map(|s| gemm.stages[s] * gemm.ops[s].stage_len() * 4)
        .sum();
    assert!(
        shared <= SHARED_BYTES,
        "{tile:?} needs {shared} bytes of shared memory"
    );
    io.builder().set_schedule(gemm.schedule());
    if gemm.mma.is_some() {
        // The first `stages - 1` slices start copying; a group each (empty past the end).
        for slice in 0..tile.stages - 1 {
            if slice < gemm.k_tiles {
                let k0 = Expr::Int((slice * tile.k) as i64);
                gemm.fetch(io, k0, Fetch::Async(Expr::Int(slice as i64)))?;
            }
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

/// The A and B operands of a kind of convolution.
fn kind_operands(kind: ConvKind) -> [ConvOperand; 2] {
    match kind {
        ConvKind::Forward => [ConvOperand::W, ConvOperand::X],
        ConvKind::GradInput => [ConvOperand::W, ConvOperand::Dy],
        ConvKind::GradWeight => [ConvOperand::Dy, ConvOperand::X],
    }
}

/// Which of a slice's elements a fetch reads: those staged through registers (operands
/// with a fused prologue, and every operand of f32 kernels), or those copied asynchronously
/// into the given shared stage (the plain operands of tensor-core kernels).
enum Fetch {
    Registers,
    Async(Expr),
}

/// A GEMM kernel being emitted: its sizes, its two operands, the arrays it allocated and the
/// block's coordinates (uniform: they cross barriers as plain variables).
struct Gemm {
    conv: Conv,
    tile: Tile,
    /// `(M, N, K)` of one group.
    m_size: u64,
    n_size: u64,
    k_size: u64,
    k_tiles: u64,
    grid: u64,
    /// A and B.
    ops: [Operand; 2],
    /// The shared tile of each operand (`stages` stages of a slice).
    shared: [Buf; 2],
    /// The stages of each operand's shared tile: `tile.stages` for operands copied
    /// asynchronously, at most 2 for those staged through registers.
    stages: [u64; 2],
    /// The thread's elements of `C`.
    acc: Buf,
    /// The staging registers of the next slice, `A.loads` then `B.loads`.
    stage: Buf,
    precision: Precision,
    /// Tensor cores: the operation, and the thread's A and B fragments of a k-step.
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
    fn new(
        b: &mut KernelBuilder,
        p: &ConvProblem,
        (precision, tile): (Precision, Tile),
        plain: [Option<Buf>; 2],
    ) -> Option<Gemm> {
        let conv = Conv::new(p);
        let (m_size, n_size, k_size) = p.gemm();
        let tiles_n = n_size.div_ceil(tile.n);
        let grid = p.grid(tile);
        if grid == 0 {
            return None;
        }
        let ops = conv.operands(
            (m_size, n_size),
            (precision, tile),
            plain.map(|p| p.is_some()),
        );
        // Operands staged through registers are stored one slice ahead: two stages do.
        let stages = [0, 1].map(|s| match plain[s] {
            Some(_) => tile.stages,
            None => tile.stages.min(2),
        });
        let shared = [0, 1].map(|s| b.shared(Ty::F32, stages[s] * ops[s].stage_len()));
        let shape = mma_shape(precision);
        let acc_len = match shape {
            Some(shape) => {
                let (tm, tn) = tile.warp_tiles(shape);
                tm * tn * shape.fragment_lens()[2]
            }
            None => REG * REG,
        };
        let acc = b.private(Ty::F32, acc_len);
        let stage = b.private(Ty::F32, ops[0].loads + ops[1].loads);
        let mma = shape.map(|shape| {
            let [la, lb, _] = shape.fragment_lens();
            let (tm, tn) = tile.warp_tiles(shape);
            let frags = [b.private(Ty::F32, tm * la), b.private(Ty::F32, tn * lb)];
            (shape, frags)
        });
        let pre = ops
            .each_ref()
            .map(|op| (op.pre_len > 0).then(|| b.private(Ty::Index, op.rows() * op.pre_len)));

        // The block's group and tile.
        let per_group = grid / p.groups;
        let g = if p.groups == 1 {
            Expr::Int(0)
        } else {
            b.let_(div(Expr::BlockId, per_group as i64))
        };
        let in_group = if p.groups == 1 {
            Expr::BlockId
        } else {
            b.let_(rem(Expr::BlockId, per_group as i64))
        };
        let m0 = b.let_(mul(div(in_group.clone(), tiles_n as i64), tile.m as i64));
        let n0 = b.let_(mul(rem(in_group, tiles_n as i64), tile.n as i64));
        let gemm = Gemm {
            conv,
            tile,
            m_size,
            n_size,
            k_size,
            k_tiles: k_size.div_ceil(tile.k),
            grid,
            ops,
            shared,
            stages,
            acc,
            stage,
            precision,
            mma,
            plain,
            pre,
            g,
            m0,
            n0,
        };
        gemm.decode_rows(b);
        for i in 0..acc_len {
            b.store(gemm.acc, i as i64, Expr::f32(0.0));
        }
        Some(gemm)
    }

    /// The kernel's schedule as `--emit mlir` shows it, e.g. `tile 128x128x16 (tf32 mma,
    /// 2 stages); cp.async: W 16 B, X 4 B`.
    fn schedule(&self) -> String {
        let t = self.tile;
        if self.mma.is_none() {
            return format!("tile {}x{}x{} (f32 fma)", t.m, t.n, t.k);
        }
        let copies: Vec<String> = self
            .ops
            .iter()
            .zip(&self.plain)
            .filter(|(_, plain)| plain.is_some())
            .map(|(op, _)| format!("{:?} {} B", op.operand, 4 * op.layout.width()))
            .collect();
        let copies = match copies.is_empty() {
            true => "none".to_string(),
            false => copies.join(", "),
        };
        format!(
            "tile {}x{}x{} ({} mma, {} stages); cp.async: {copies}",
            t.m,
            t.n,
            t.k,
            self.precision.name(),
            t.stages
        )
    }

    /// The tile origin of an operand's rows.
    fn origin(&self, op: &Operand) -> Expr {
        match op.side {
            Side::A => self.m0.clone(),
            Side::B => self.n0.clone(),
        }
    }

    /// Where operand `s`'s staging registers start.
    fn stage_base(&self, s: usize) -> u64 {
        if s == 0 {
            0
        } else {
            self.ops[0].loads
        }
    }

    /// The first element of stage `index` of an operand's shared tile.
    fn stage_offset(&self, index: Expr, op: &Operand) -> Expr {
        mul(index, op.stage_len() as i64)
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
    /// registers or (asynchronously) into a shared stage.
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
        // Each distinct k (relative to the slice) is decoded once: the k-fast layouts have
        // one per thread, shared by both operands where they agree.
        let mut decoded: Vec<(Expr, (Expr, Vec<Expr>))> = Vec::new();
        for (s, op) in self.ops.iter().enumerate().filter(|(s, _)| wanted(*s)) {
            for r in 0..op.loads {
                let local = op.k_local(r);
                let (k, kd) = match decoded.iter().find(|(l, _)| *l == local) {
                    Some((_, kd)) => kd.clone(),
                    None => {
                        let b = io.builder();
                        let k = b.let_(add(k0.clone(), local.clone()));
                        let kd = self.conv.decode_k(b, k.clone());
                        decoded.push((local, (k.clone(), kd.clone())));
                        (k, kd)
                    }
                };
                match (&which, self.plain[s]) {
                    (Fetch::Async(index), Some(buf)) => {
                        let stage = index.clone();
                        self.copy_one(io.builder(), (s, r), (k, &kd), (buf, stage));
                    }
                    _ => {
                        let value = self.fetch_one(io, s, r, (k, &kd))?;
                        let at = (self.stage_base(s) + r) as i64;
                        io.builder().store(self.stage, at, value);
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts the asynchronous copy of the thread's `r`-th load of operand `s` (`sr`), at
    /// depth `k` (with its decoded values), from `buf` into shared stage `stage`: zeros where
    /// the elements are zeros; nothing on the threads a small tile leaves idle.
    fn copy_one(
        &self,
        b: &mut KernelBuilder,
        (s, r): (usize, u64),
        (k, kd): (Expr, &[Expr]),
        (buf, stage): (Buf, Expr),
    ) {
        let op = &self.ops[s];
        let idle = op.active < u64::from(BLOCK);
        if idle {
            b.begin_if(Expr::ThreadId.lt(op.active as i64));
        }
        let (ok, idx) = self.element(b, s, r, (k, kd));
        let at = b.let_(add(self.stage_offset(stage, op), op.shared_at(r)));
        let dst = (self.shared[s], at);
        let width = op.layout.width() as u32;
        match ok {
            Some(ok) => {
                let safe = b.let_(Expr::select(ok.clone(), idx, Expr::Int(0)));
                b.async_copy(dst, (buf, safe), ok, width);
            }
            None => b.async_copy(dst, (buf, idx), Expr::Int(1).ne(0), width),
        }
        if idle {
            b.end_if();
        }
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
        let row = if op.rows() > 1 { r } else { 0 };
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
        if !op.size.is_multiple_of(op.tile) {
            conds.insert(0, mn.lt(op.size as i64));
        }
        if !self.k_size.is_multiple_of(self.tile.k) {
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

    /// Stores the staging registers of the operands fetched through registers into the
    /// shared stage starting at `here` (per operand).
    fn store_staged(&self, b: &mut KernelBuilder, here: &[Expr; 2]) {
        for (s, op) in self.ops.iter().enumerate() {
            if self.plain[s].is_some() {
                continue;
            }
            for r in 0..op.loads {
                let at = b.let_(add(here[s].clone(), op.shared_at(r)));
                let v = Expr::load(self.stage, (self.stage_base(s) + r) as i64);
                b.store(self.shared[s], at, v);
            }
        }
    }

    /// The body of the K loop at slice `kt` (f32): the staged slice goes to shared memory,
    /// the next one is fetched while this one is multiplied.
    fn k_slice<Io: ConvIo + ?Sized>(&self, io: &mut Io, kt: Expr) -> Result<(), Io::Error> {
        let b = io.builder();
        self.store_staged(b, &[Expr::Int(0), Expr::Int(0)]);
        b.barrier();
        self.fetch_next_registers(io, kt)?;
        let b = io.builder();
        self.multiply_fma(b);
        b.barrier();
        Ok(())
    }

    /// The body of the K loop of a tensor-core kernel at slice `kt`, with `S` shared
    /// stages, slice `j` in stage `j % S` (operands staged through registers: 2 stages,
    /// slice `j` in stage `j % 2`). On entry the copies of slices `kt .. kt + S - 2` are in
    /// flight (a group each, committed in order) and the registers hold slice `kt`'s other
    /// elements, which go to their stage first; every thread waits until at most `S - 2`
    /// of its groups are in flight (so slice `kt`'s have landed); the barrier makes the
    /// copies and stores visible and ends every thread's multiply of slice `kt - 1`, so its
    /// stage `(kt + S - 1) % S` is free for the copies of slice `kt + S - 1`, which start
    /// now (a group, empty past the end); the registers of slice `kt + 1` are fetched while
    /// slice `kt` is multiplied. One barrier per slice: a stage of `S` (2) was last read by
    /// the multiply of slice `kt - S` (`kt - 2`), before the barrier of slice `kt - 1`.
    fn k_slice_pipelined<Io: ConvIo + ?Sized>(
        &self,
        io: &mut Io,
        kt: Expr,
    ) -> Result<(), Io::Error> {
        let stages = self.tile.stages;
        let b = io.builder();
        // Each operand's stage of slice `kt` (one index per distinct stage count).
        let index = |b: &mut KernelBuilder, n: u64| b.let_(rem(kt.clone(), n as i64));
        let first = index(b, self.stages[0]);
        let second = match self.stages[1] == self.stages[0] {
            true => first.clone(),
            false => index(b, self.stages[1]),
        };
        let here = [(0, first), (1, second)]
            .map(|(s, index)| b.let_(self.stage_offset(index, &self.ops[s])));
        self.store_staged(b, &here);
        b.async_wait((stages - 2) as u32);
        b.barrier();
        let ahead = stages - 1;
        if self.k_tiles > ahead && self.plain.iter().any(Option::is_some) {
            b.begin_if((kt.clone() + ahead as i64).lt(self.k_tiles as i64));
            let slot = rem(kt.clone() + ahead as i64, stages as i64);
            let slot = io.builder().let_(slot);
            let k0 = mul(kt.clone() + ahead as i64, self.tile.k as i64);
            self.fetch(io, k0, Fetch::Async(slot))?;
            io.builder().end_if();
        }
        io.builder().async_commit();
        self.fetch_next_registers(io, kt)?;
        let (shape, frags) = self.mma.expect("a tensor-core kernel");
        self.multiply_mma(io.builder(), shape, frags, here);
        Ok(())
    }

    /// Fetches the registers' elements of slice `kt + 1`, where there is one and an operand
    /// goes through registers.
    fn fetch_next_registers<Io: ConvIo + ?Sized>(
        &self,
        io: &mut Io,
        kt: Expr,
    ) -> Result<(), Io::Error> {
        if self.k_tiles <= 1 || self.plain.iter().all(Option::is_some) {
            return Ok(());
        }
        io.builder()
            .begin_if((kt.clone() + 1).lt(self.k_tiles as i64));
        self.fetch(io, mul(kt + 1, self.tile.k as i64), Fetch::Registers)?;
        io.builder().end_if();
        Ok(())
    }

    /// Tensor cores: per k-step of the slice, the thread's fragments (from the shared stage
    /// at `stage`, rounded as the precision multiplies), then the warp's mma (loading each
    /// k-step's fragments just before its mma keeps fewer of them live).
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
        let (tm, tn) = self.tile.warp_tiles(shape);
        for ks in 0..self.tile.k / kk {
            // An mma ends a stretch like a barrier: the thread's coordinates are decoded
            // again after the previous k-step's (LLVM merges the copies).
            let (wm, wn, g, q) = self.warp_coordinates(b, shape);
            let qk = b.let_(mul(q, shape.k_per_q() as i64));
            for t in 0..tm {
                for i in 0..la {
                    let (dr, dk) = shape.a_offsets(i);
                    let row = wm.clone() + (t * mm + dr) as i64 + g.clone();
                    let k = qk.clone() + (ks * kk + dk) as i64;
                    let at = add(stage[0].clone(), a.index(k, row));
                    b.store(fa, (t * la + i) as i64, round(Expr::load(sa, at)));
                }
            }
            for t in 0..tn {
                for i in 0..lb {
                    let col = wn.clone() + (t * nn) as i64 + g.clone();
                    let k = qk.clone() + (ks * kk + shape.b_offset(i)) as i64;
                    let at = add(stage[1].clone(), bop.index(k, col));
                    b.store(fb, (t * lb + i) as i64, round(Expr::load(sb, at)));
                }
            }
            for mi in 0..tm {
                for ni in 0..tn {
                    b.mma(Mma {
                        shape,
                        a: (fa, mi * la),
                        b: (fb, ni * lb),
                        acc: (self.acc, (mi * tn + ni) * lc),
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
        for kk in 0..self.tile.k {
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

    /// The rows and columns (in the block tile) of the thread's elements of `C`, and where
    /// element `(i, j)` (row `i`, column `j` of those) is in the accumulators.
    fn c_elements(&self, b: &mut KernelBuilder) -> (Vec<Expr>, Vec<Expr>, Vec<Vec<u64>>) {
        let Some((shape, _)) = self.mma else {
            let ty = b.let_(Expr::ThreadId.shift_right(4) * REG as i64);
            let tx = b.let_(Expr::ThreadId.and(Expr::Int(15)) * REG as i64);
            let rows = (0..REG).map(|i| ty.clone() + i as i64).collect();
            let cols = (0..REG).map(|j| tx.clone() + j as i64).collect();
            let at = (0..REG)
                .map(|i| (0..REG).map(|j| i * REG + j).collect())
                .collect();
            return (rows, cols, at);
        };
        // Row i = 2 mi + h: m-tile mi, row g + 8h of it; column j = 2 ni + e: n-tile ni,
        // column 2q + e of it (the C fragment layout of both shapes, element 2h + e).
        let (mm, nn, _) = shape.mnk();
        let (tm, tn) = self.tile.warp_tiles(shape);
        let (wm, wn, g, q) = self.warp_coordinates(b, shape);
        let q2 = b.let_(q * 2);
        let rows = (0..2 * tm)
            .map(|i| wm.clone() + g.clone() + ((i / 2) * mm + 8 * (i % 2)) as i64)
            .collect();
        let cols = (0..2 * tn)
            .map(|j| wn.clone() + q2.clone() + ((j / 2) * nn + j % 2) as i64)
            .collect();
        let at = (0..2 * tm)
            .map(|i| {
                (0..2 * tn)
                    .map(|j| ((i / 2) * tn + j / 2) * 4 + 2 * (i % 2) + j % 2)
                    .collect()
            })
            .collect();
        (rows, cols, at)
    }

    /// Each in-range element of the thread's accumulators, once, with the bias added.
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
        let row_ok = !self.m_size.is_multiple_of(self.tile.m);
        let col_ok = !self.n_size.is_multiple_of(self.tile.n);
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
                let mut v = Expr::load(self.acc, at[i][j] as i64);
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

    /// The thread's warp corner in the block tile (row, column) and its lane's `g = lane / 4`
    /// and `q = lane % 4`: warp `w` owns the corner `(w / 4, w % 4)` of the 2 x 4 warp grid.
    fn warp_coordinates(&self, b: &mut KernelBuilder, shape: MmaShape) -> (Expr, Expr, Expr, Expr) {
        let (mm, nn, _) = shape.mnk();
        let (tm, tn) = self.tile.warp_tiles(shape);
        let warp = b.let_(Expr::ThreadId.shift_right(5));
        let wm =
            b.let_(warp.clone().shift_right(WARPS_N.trailing_zeros() as i64) * (tm * mm) as i64);
        let wn = b.let_(warp.and(Expr::Int(WARPS_N as i64 - 1)) * (tn * nn) as i64);
        let g = b.let_(Expr::ThreadId.shift_right(2).and(Expr::Int(7)));
        let q = b.let_(Expr::ThreadId.and(Expr::Int(3)));
        (wm, wn, g, q)
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
