//! Winograd's minimal filtering F(m x m, 3x3) for the CPU's schedule of a 3x3, stride-1,
//! undilated, ungrouped convolution and its data and weight gradients, as `(m + 2)^2`
//! GEMMs of `[Co, Ci] x [Ci, tiles]` (the weight gradient: `[Co, tiles] x [tiles, Ci]`).
//! Forward convolutions and data gradients run F(4x4, 3x3) (36 multiplies per 4x4 output
//! tile and input channel instead of 144: 4x fewer) where a plane has at least
//! [`MIN_F4_TILES`] tiles, else F(2x2, 3x3) (16 per 2x2 tile instead of 36: 2.25x fewer);
//! weight gradients run the same algorithm's adjoint.
//!
//! With `d` an `(m + 2) x (m + 2)` input tile (rows `m*ty - top ..`, columns
//! `m*tx - left ..`, 0 outside the input) and `g` a 3x3 filter: `V = B^T d B`,
//! `U = G g G^T` and `Y = A^T (U . V) A`, where for F(2x2, 3x3)
//!
//! ```text
//! B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
//! G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
//! A^T = [1 1 1 0; 0 1 -1 -1]
//! ```
//!
//! (F(4x4, 3x3)'s are [`F4`]), and the product `U . V` at each of the `(m + 2)^2`
//! positions `xi` is summed over input channels:
//! `M[xi][b][co][t] = sum_ci U[xi][co][ci] * V[xi][b][ci][t]`, one GEMM per `xi` and batch.
//! The output transform is the epilogue: it reads each tile's values, adds the bias and
//! computes the kernel's fused consumers for its outputs. The data transforms (input,
//! output, `dy`'s) run one thread per plane, each row of tiles in two passes (columns,
//! then rows: [`HostConv::transform_tiles`]); the filter transforms one thread per row
//! of filters.
//!
//! The weight gradient is the adjoint of the same algorithm. `Y = A^T (U . V) A` is linear
//! in `U`, and `U` in `g`, so per tile `dL/dU = (A dY A^T) . V` and `dL/dg = G^T (dL/dU) G`.
//! Summed over tiles and batch: `D = A dY A^T` per m x m tile of `dy` (0 outside it), `V`
//! as above, `(m + 2)^2` GEMMs `M[xi][co][ci] = sum_{b,t} D[xi][b][co][t] * V[xi][b][ci][t]` (the
//! batch summed into one `C`), and `dw = G^T M G` per filter. Exact in exact arithmetic for
//! any size: the forward algorithm equals the direct convolution for every `g`.
//!
//! Accuracy: F(2x2, 3x3)'s transforms only add, subtract and halve, so in f32 the result
//! differs from the direct convolution by a few units in the last place of the tile's
//! partial sums; F(4x4, 3x3)'s coefficients (up to 8, and 1/6, 1/24) cost about ten times
//! that, still far inside the 1e-4 relative tests/codegen.rs and tests/lowering.rs hold
//! every program to against the reference interpreter (F(4x4, 3x3)'s weight gradients of
//! `tests/programs/winograd.rfn`, summed over 2 x 272 tiles: 3.5e-6).

use super::host_conv::{matrix, HostConv, LoweredGemm};
use super::{Arg, HostStep, Launch, LowerError, LOOPING_BLOCK};
use crate::codegen::gemm::ConvKind;
use crate::codegen::kir::{Buf, Expr};
use crate::ir::NodeId;

/// Whether a convolution (or its data or weight gradient) is one Winograd computes:
/// 3x3, stride 1, undilated, ungrouped (and for the data gradient, padding at most 2).
pub(super) fn applies(conv: &HostConv) -> bool {
    let p = &conv.p;
    let square = p.w[2] == 3 && p.w[3] == 3 && p.stride == [1, 1] && p.dilation == [1, 1];
    let padded = match p.kind {
        ConvKind::GradInput => p.pad[0] <= 2 && p.pad[1] <= 2,
        _ => true,
    };
    square && padded && p.groups == 1
}

/// The convolution Winograd computes: `out[b, o] = sum_i conv(input[b, i], filter[o, i])`
/// with `top`/`left` padding, the filter read from the weights `w[co, ci, kh, kw]` as is
/// (forward) or transposed and rotated by 180 degrees (`filter[o, i, kh, kw] =
/// w[i, o, 2 - kh, 2 - kw]`: the data gradient is the forward convolution of `dy` with
/// it, padded by `2 - pad`).
struct Geometry {
    input: Arg,
    batch: u64,
    /// Input channels, height, width; output channels, height, width.
    c_in: u64,
    h: u64,
    w: u64,
    c_out: u64,
    ho: u64,
    wo: u64,
    top: i64,
    left: i64,
    rotated: bool,
}

impl Geometry {
    /// `m x m` output tiles per plane.
    fn tiles(&self, m: u64) -> u64 {
        self.ho.div_ceil(m) * self.wo.div_ceil(m)
    }
}

/// Winograd's F(m x m, 3 x 3): the `m x m` outputs of a tile from its `(m + 2) x (m + 2)`
/// inputs, given by three coefficient matrices: `V = B^T d B`, `U = G g G^T`,
/// `Y = A^T (U . V) A`.
struct Algorithm {
    /// Outputs per tile side.
    m: u64,
    /// `B^T`, `(m + 2) x (m + 2)`.
    bt: &'static [&'static [f32]],
    /// `G`, `(m + 2) x 3`.
    g: &'static [&'static [f32]],
    /// `A^T`, `m x (m + 2)`.
    at: &'static [&'static [f32]],
}

impl Algorithm {
    /// The input tile's side, `m + 2`.
    fn t(&self) -> u64 {
        self.m + 2
    }

    /// Products per tile and channel pair, `(m + 2)^2`: one GEMM each.
    fn products(&self) -> u64 {
        self.t() * self.t()
    }
}

/// F(2x2, 3x3): 16 products per 4 outputs; its transforms only add, subtract and halve.
const F2: Algorithm = Algorithm {
    m: 2,
    bt: &[
        &[1.0, 0.0, -1.0, 0.0],
        &[0.0, 1.0, 1.0, 0.0],
        &[0.0, -1.0, 1.0, 0.0],
        &[0.0, 1.0, 0.0, -1.0],
    ],
    g: &[
        &[1.0, 0.0, 0.0],
        &[0.5, 0.5, 0.5],
        &[0.5, -0.5, 0.5],
        &[0.0, 0.0, 1.0],
    ],
    at: &[&[1.0, 1.0, 1.0, 0.0], &[0.0, 1.0, -1.0, -1.0]],
};

/// F(4x4, 3x3) (Lavin and Gray's points 0, +-1, +-2): 36 products per 16 outputs, 1.78x
/// fewer than F(2x2, 3x3); its coefficients up to 8 and 1/24 cost a few more units in the
/// last place.
const F4: Algorithm = Algorithm {
    m: 4,
    bt: &[
        &[4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        &[0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        &[0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        &[0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        &[0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        &[0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ],
    g: &[
        &[0.25, 0.0, 0.0],
        &[-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        &[-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        &[1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        &[1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        &[0.0, 0.0, 1.0],
    ],
    at: &[
        &[1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        &[0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        &[0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        &[0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ],
};

/// The fewest 4x4 tiles per plane for F(4x4, 3x3) (planes of about 64x64 outputs and
/// more); smaller planes run F(2x2, 3x3), whose GEMMs are 4x wider. On refinenet4 at
/// 512x512 (2 cores, AVX2), moving the 32x32 planes (ResNet's layer3) to F(4x4, 3x3) too
/// gained nothing measurable: their GEMMs of 64 columns run at about half the speed.
const MIN_F4_TILES: u64 = 256;

/// The algorithm of a forward (or data gradient) convolution with `ho x wo` outputs.
fn algorithm(ho: u64, wo: u64) -> &'static Algorithm {
    match ho.div_ceil(4) * wo.div_ceil(4) >= MIN_F4_TILES {
        true => &F4,
        false => &F2,
    }
}

fn f(v: f32) -> Expr {
    Expr::F32(v)
}

/// `sum_r row[r] * x[r]` over the nonzero coefficients.
fn combine(row: &[f32], x: &[Expr]) -> Expr {
    row.iter()
        .zip(x)
        .filter(|(c, _)| **c != 0.0)
        .map(|(&c, v)| {
            if c == 1.0 {
                v.clone()
            } else {
                f(c) * v.clone()
            }
        })
        .reduce(|a, b| a + b)
        .unwrap_or_else(|| f(0.0))
}

/// `P X P^T` for an `R x C` coefficient matrix `P` (its rows) and a `C x C` array `X`:
/// `R x R`.
fn sandwich<P: AsRef<[f32]>>(p: &[P], x: &[Vec<Expr>]) -> Vec<Vec<Expr>> {
    // Rows of P X, then each against the rows of P.
    let columns: Vec<Vec<Expr>> = (0..x.len())
        .map(|c| x.iter().map(|row| row[c].clone()).collect())
        .collect();
    let rows: Vec<Vec<Expr>> = p
        .iter()
        .map(|pi| {
            columns
                .iter()
                .map(|col| combine(pi.as_ref(), col))
                .collect()
        })
        .collect();
    rows.iter()
        .map(|row| p.iter().map(|pj| combine(pj.as_ref(), row)).collect())
        .collect()
}

/// The rows of `M^T`.
fn transpose(m: &[&[f32]]) -> Vec<Vec<f32>> {
    (0..m[0].len())
        .map(|c| m.iter().map(|row| row[c]).collect())
        .collect()
}

/// The distance between the blocks of the `xi` products (`[xi][...]`, `n` elements each):
/// `n` rounded up to a cache line and one more line, so that the blocks a transform reads or
/// writes side by side (16 or 36 of them, one per `xi`) never start at addresses equal
/// modulo 4 KiB, which would make them evict each other from the same cache sets.
fn apart(n: u64) -> u64 {
    n.div_ceil(16) * 16 + 16
}

impl HostConv<'_> {
    /// The forward convolution `y = conv(input, w) [+ bias]`, or the data gradient
    /// `dx = conv2d_grad_input(input = dy, w)` (the forward convolution of `dy` with the
    /// rotated, transposed filter, padded by `2 - pad`), by F(4x4, 3x3) or F(2x2, 3x3).
    /// The weight gradient `dw = conv2d_grad_weight(input = x, w = dy)` by the adjoint.
    pub(super) fn winograd(
        &mut self,
        input: NodeId,
        w: NodeId,
        bias: Option<NodeId>,
    ) -> Result<(), LowerError> {
        if self.p.kind == ConvKind::GradWeight {
            return self.winograd_grad_weight(input, w);
        }
        let rotated = self.p.kind == ConvKind::GradInput;
        let (from, to) = match rotated {
            false => (self.p.x, self.p.y),
            true => (self.p.y, self.p.x),
        };
        let pad = |p: u64| if rotated { 2 - p as i64 } else { p as i64 };
        let geometry = Geometry {
            input: self.stored(input)?,
            batch: from[0],
            c_in: from[1],
            h: from[2],
            w: from[3],
            c_out: to[1],
            ho: to[2],
            wo: to[3],
            top: pad(self.p.pad[0]),
            left: pad(self.p.pad[1]),
            rotated,
        };
        let w = self.stored(w)?;
        self.winograd_steps(&geometry, w, bias)
    }

    /// The weight gradient by the adjoint of F(4x4, 3x3) or F(2x2, 3x3) (as the forward
    /// convolution of the same size chooses).
    fn winograd_grad_weight(&mut self, x: NodeId, dy: NodeId) -> Result<(), LowerError> {
        let [nb, ci, h, wd] = self.p.x;
        let [_, co, ho, wo] = self.p.y;
        let geometry = Geometry {
            input: self.stored(x)?,
            batch: nb,
            c_in: ci,
            h,
            w: wd,
            c_out: co,
            ho,
            wo,
            top: self.p.pad[0] as i64,
            left: self.p.pad[1] as i64,
            rotated: false,
        };
        let alg = algorithm(ho, wo);
        let tiles = geometry.tiles(alg.m);
        let products = alg.products();
        let v = self.winograd_input(&geometry, alg)?;
        // D[xi][b][co][t] = A dY A^T of each m x m tile of dy.
        let dy = self.stored(dy)?;
        let a = transpose(alg.at);
        let d = self.transform_tiles(
            "host_winograd_grad_output",
            dy,
            nb * co,
            [ho, wo],
            [0, 0],
            [ho.div_ceil(alg.m), wo.div_ceil(alg.m)],
            alg.m,
            &a,
        )?;
        // M[xi][co][ci], summed over the batch (C's batch stride 0).
        let m = self.alloc(products * apart(co * ci));
        self.steps.push(HostStep::Gemm(LoweredGemm {
            m: co,
            n: ci,
            k: tiles,
            batch: [products, nb],
            a: matrix(d, tiles, 1, [apart(nb * co * tiles), co * tiles]),
            // V[xi][b] transposed: rows are tiles, columns input channels.
            b: matrix(v, 1, tiles, [apart(nb * ci * tiles), ci * tiles]),
            c: matrix(m, ci, 1, [apart(co * ci), 0]),
        }));
        // dw = G^T M G and the epilogue, one thread per output channel co looping over the
        // input channels (vectorised).
        let anchor = self.anchor;
        let dims = vec![co, ci, 3, 3];
        let gt = transpose(alg.g);
        self.elementwise_rows("host_winograd_grad_filter", &[co, ci], |l, flat| {
            let products = Self::scratch_buf(l, m);
            let mm = tile_of(alg.t(), |xi| {
                let index = flat.clone() + (xi * apart(co * ci)) as i64;
                l.b.let_(Expr::load(products, index))
            });
            for (tap, value) in sandwich(&gt, &mm).into_iter().flatten().enumerate() {
                let value = l.b.let_(value);
                let element = l.b.let_(flat.clone() * 9 + tap as i64);
                l.emit_outputs(&element, &dims, Some((anchor, value)))?;
            }
            Ok(())
        })
    }

    /// `V[xi][b][ci][t] = B^T d B` of every input tile, in scratch.
    fn winograd_input(&mut self, g: &Geometry, alg: &Algorithm) -> Result<Arg, LowerError> {
        self.transform_tiles(
            "host_winograd_input",
            g.input,
            g.batch * g.c_in,
            [g.h, g.w],
            [g.top, g.left],
            [g.ho.div_ceil(alg.m), g.wo.div_ceil(alg.m)],
            alg.m,
            alg.bt,
        )
    }

    /// `out[xi][plane][t] = P d P^T` of each `size x size` tile `d` of each plane of `src`
    /// (`[planes, h, w]`; tile `(ty, tx)` starts at row `stride * ty - top`, column
    /// `stride * tx - left`; 0 outside), for the `side x size` coefficients `P`, in
    /// scratch.
    ///
    /// One thread per plane, walking its rows of tiles; each row of tiles in two passes
    /// through a scratch row block of the plane's own (`side` rows of the padded width,
    /// cache-resident): the column transform `R = P d` of every column (`side` outputs
    /// from `size` input rows, contiguous in the column, so vectorised without shuffles),
    /// then the row transform `R P^T` of each tile (`size` values of each of `side` rows,
    /// a stride apart). Each pass keeps a dozen values live; the one-pass transform kept a
    /// whole tile's `size^2` inputs and `side^2` outputs live, more than the 16 vector
    /// registers, and spent most of its time spilling them (measured: see
    /// docs/benchmarks.md).
    #[allow(clippy::too_many_arguments)]
    fn transform_tiles<P: AsRef<[f32]>>(
        &mut self,
        step: &str,
        src: Arg,
        planes: u64,
        [h, w]: [u64; 2],
        [top, left]: [i64; 2],
        [th, tw]: [u64; 2],
        stride: u64,
        p: &[P],
    ) -> Result<Arg, LowerError> {
        let (side, size) = (p.len(), p[0].as_ref().len());
        let tiles = th * tw;
        // The columns the tiles read: padded column c is input column c - left.
        let width = stride * (tw - 1) + size as u64;
        let inside_from = (left.max(0) as u64).min(width);
        let inside_to = ((left + w as i64).max(0) as u64).clamp(inside_from, width);
        let block_arg = self.alloc(planes * side as u64 * width);
        let out = self.alloc((side * side) as u64 * apart(planes * tiles));
        let mut l = self.launch(step, LOOPING_BLOCK);
        let plane =
            l.b.let_(Expr::BlockId * LOOPING_BLOCK as i64 + Expr::ThreadId);
        l.b.begin_if(plane.clone().lt(planes));
        let input = Self::scratch_buf(&mut l, src);
        let block = Self::scratch_buf(&mut l, block_arg);
        let output = Self::scratch_buf(&mut l, out);
        let at = |l: &mut Launch, e: Expr| l.b.let_(e);
        let rows = RowBlock {
            buf: block,
            base: at(&mut l, plane.clone() * (side as u64 * width) as i64),
            width,
        };
        let ty = l.b.begin_for(0, th as i64, 1);
        // Column transform: R[i][c] = sum_k P[i][k] d[k][c] over the tile row's input
        // rows k (rows outside the plane are 0: clamped and zeroed for the whole row).
        let y0 = at(&mut l, ty.clone() * stride as i64 - top);
        let input_rows: Vec<(Expr, Expr)> = (0..size)
            .map(|k| {
                let y = at(&mut l, y0.clone() + k as i64);
                let ok = at(&mut l, y.clone().ge(0).and(y.clone().lt(h)));
                let clamped = y.max(0).min(h as i64 - 1);
                let start = at(
                    &mut l,
                    (plane.clone() * h as i64 + clamped) * w as i64 - left,
                );
                (ok, start)
            })
            .collect();
        rows.columns_from(&mut l, p, input, &input_rows, [inside_from, inside_to]);
        // Row transform of each tile: out[i * side + j] = sum_k R[i][stride * tx + k] P[j][k].
        let first = at(
            &mut l,
            plane.clone() * tiles as i64 + ty.clone() * tw as i64,
        );
        let tx = l.begin_span(0, tw, true);
        rows.tile(&mut l, p, &tx, stride, |l, xi, value| {
            let index = first.clone() + tx.clone() + (xi * apart(planes * tiles)) as i64;
            l.b.store(output, index, value);
        });
        l.b.end_for();
        l.b.end_for();
        l.b.end_if();
        let launch = l.finish(planes.div_ceil(LOOPING_BLOCK as u64))?;
        self.steps.push(HostStep::Kernel(launch));
        Ok(out)
    }

    fn winograd_steps(
        &mut self,
        geometry: &Geometry,
        w: Arg,
        bias: Option<NodeId>,
    ) -> Result<(), LowerError> {
        let &Geometry {
            batch: nb,
            c_in: ci,
            c_out: co,
            ho,
            wo,
            rotated,
            ..
        } = geometry;
        let alg = algorithm(ho, wo);
        let (tiles, products) = (geometry.tiles(alg.m), alg.products());
        let v = self.winograd_input(geometry, alg)?;
        // U[xi]: transformed once per change of the weights into the packed region where
        // they do not change between runs, else every run into scratch. Each filter's
        // transform lies where the filter lies in w: U[xi][co][ci], and for the rotated
        // filter, which reads w[i, o] (w is [ci, co, 3, 3]), U[xi][ci][co] (the GEMM reads
        // it transposed), so that the filters a thread loops over are read one after the
        // other.
        let packed = self.alloc_packed(w, products * apart(co * ci));
        let u = packed.unwrap_or_else(|| self.alloc(products * apart(co * ci)));
        let dims = match rotated {
            false => [co, ci],
            true => [ci, co],
        };
        // One thread per row of filters, looping over the row (vectorised).
        let filter = self.elements_launch("host_winograd_filter", &dims, true, |l, flat| {
            let weights = Self::scratch_buf(l, w);
            let first = l.b.let_(flat.clone() * 9);
            let g = tile_of(3, |tap| {
                let (i, j) = (tap / 3, tap % 3);
                let tap = match rotated {
                    false => i * 3 + j,
                    true => (2 - i) * 3 + (2 - j),
                };
                l.b.let_(Expr::load(weights, first.clone() + tap as i64))
            });
            let out = Self::scratch_buf(l, u);
            for (xi, value) in sandwich(alg.g, &g).into_iter().flatten().enumerate() {
                let value = l.b.let_(value);
                l.b.store(
                    out,
                    flat.clone() + (xi as u64 * apart(co * ci)) as i64,
                    value,
                );
            }
            Ok(())
        })?;
        self.steps.push(match packed {
            Some(_) => HostStep::Pack(filter),
            None => HostStep::Kernel(filter),
        });
        let a = match rotated {
            false => matrix(u, ci, 1, [apart(co * ci), 0]),
            true => matrix(u, 1, co, [apart(co * ci), 0]),
        };
        // M[xi][b][co][t]
        let m = self.alloc(products * apart(nb * co * tiles));
        self.steps.push(HostStep::Gemm(LoweredGemm {
            m: co,
            n: tiles,
            k: ci,
            batch: [products, nb],
            a,
            b: matrix(v, tiles, 1, [apart(nb * ci * tiles), ci * tiles]),
            c: matrix(m, tiles, 1, [apart(nb * co * tiles), co * tiles]),
        }));
        self.winograd_output(geometry, alg, m, bias)
    }

    /// The output transform `Y = A^T M A` and the epilogue. One thread per output plane,
    /// walking its rows of tiles; each row of tiles in two passes through a scratch row
    /// block of the plane's own, as [`Self::transform_tiles`] (and for the same reason:
    /// few values live at once): the column transform `R = A^T M` of every tile (the
    /// tile's products read from their `(m + 2)^2` blocks, contiguous in the tile), then,
    /// output row by output row, the row transform `R A` of every tile with the bias and
    /// the kernel's fused consumers of each output. Output rows past the plane (the last
    /// row of tiles of a plane of `ho` not a multiple of `m`) are skipped; the tiles before
    /// a partial last column store without tests, and their loop is vectorised.
    fn winograd_output(
        &mut self,
        geometry: &Geometry,
        alg: &Algorithm,
        m: Arg,
        bias: Option<NodeId>,
    ) -> Result<(), LowerError> {
        let &Geometry {
            batch: nb,
            c_out: co,
            ho,
            wo,
            ..
        } = geometry;
        let anchor = self.anchor;
        let dims = vec![nb, co, ho, wo];
        let (side, t) = (alg.m, alg.t());
        let (tiles, th, tw) = (geometry.tiles(side), ho.div_ceil(side), wo.div_ceil(side));
        let full = wo / side;
        let planes = nb * co;
        // R[a][j][tx] of the plane's current row of tiles.
        let block_len = side * t * tw;
        let rows = self.alloc(planes * block_len);
        let mut l = self.launch("host_winograd_output", LOOPING_BLOCK);
        let at = |l: &mut Launch, e: Expr| l.b.let_(e);
        let plane = at(
            &mut l,
            Expr::BlockId * LOOPING_BLOCK as i64 + Expr::ThreadId,
        );
        l.b.begin_if(plane.clone().lt(planes));
        let products = Self::scratch_buf(&mut l, m);
        let block = Self::scratch_buf(&mut l, rows);
        let base = at(&mut l, plane.clone() * block_len as i64);
        let r_at =
            |a: u64, j: u64, tx: &Expr| base.clone() + ((a * t + j) * tw) as i64 + tx.clone();
        let bias = match bias {
            Some(bias) => {
                let c = at(&mut l, plane.clone() % co as i64);
                let value = l.value_at(bias, &c)?;
                Some(at(&mut l, value))
            }
            None => None,
        };
        let ty = l.b.begin_for(0, th as i64, 1);
        let first = at(
            &mut l,
            plane.clone() * tiles as i64 + ty.clone() * tw as i64,
        );
        // Column transform: R[a][j] = sum_i A^T[a][i] M[i][j].
        let tx = l.begin_span(0, tw, true);
        for j in 0..t {
            let column: Vec<Expr> = (0..t)
                .map(|i| {
                    let xi = i * t + j;
                    let index = first.clone() + tx.clone() + (xi * apart(planes * tiles)) as i64;
                    at(&mut l, Expr::load(products, index))
                })
                .collect();
            for (a, at_a) in alg.at.iter().enumerate() {
                let value = at(&mut l, combine(at_a, &column));
                l.b.store(block, r_at(a as u64, j, &tx), value);
            }
        }
        l.b.end_for();
        // Row transform and epilogue of output row oy + a.
        let oy = at(&mut l, ty.clone() * side as i64);
        for a in 0..side {
            let row_tested = ho % side != 0 && a > 0;
            if row_tested {
                l.b.begin_if((oy.clone() + a as i64).lt(ho));
            }
            let oh = at(&mut l, oy.clone() + a as i64);
            for (from, to, column_tested) in [(0, full, false), (full, tw, true)] {
                if from >= to {
                    continue;
                }
                let tx = l.begin_span(from, to, !column_tested);
                let r: Vec<Expr> = (0..t)
                    .map(|j| at(&mut l, Expr::load(block, r_at(a, j, &tx))))
                    .collect();
                for (b, at_b) in alg.at.iter().enumerate() {
                    let y = combine(at_b, &r);
                    let y = match &bias {
                        Some(bias) => at(&mut l, y + bias.clone()),
                        None => at(&mut l, y),
                    };
                    let ow = at(&mut l, tx.clone() * side as i64 + b as i64);
                    let guard = column_tested && b > 0;
                    if guard {
                        l.b.begin_if(ow.clone().lt(wo));
                    }
                    let element = at(
                        &mut l,
                        (plane.clone() * ho as i64 + oh.clone()) * wo as i64 + ow,
                    );
                    l.emit_outputs(&element, &dims, Some((anchor, y)))?;
                    if guard {
                        l.b.end_if();
                    }
                }
                l.b.end_for();
            }
            if row_tested {
                l.b.end_if();
            }
        }
        l.b.end_for();
        l.b.end_if();
        let launch = l.finish(planes.div_ceil(LOOPING_BLOCK as u64))?;
        self.steps.push(HostStep::Kernel(launch));
        Ok(())
    }
}

/// A plane's row block in scratch: the column transform `R` of its current row of tiles,
/// `side` rows of `width` columns from `base` on.
struct RowBlock {
    buf: Buf,
    base: Expr,
    width: u64,
}

impl RowBlock {
    /// Stores `R[i][c] = sum_k P[i][k] d[k][c]` of every column `c`: `d[k]` the tile row's
    /// input row `k` (`(whether it lies inside the plane, where column 0 would start)`),
    /// read at columns `inside` and 0 elsewhere (the padding).
    fn columns_from<P: AsRef<[f32]>>(
        &self,
        l: &mut Launch,
        p: &[P],
        input: Buf,
        input_rows: &[(Expr, Expr)],
        [inside_from, inside_to]: [u64; 2],
    ) {
        let size = input_rows.len();
        let columns = [
            (0, inside_from, false),
            (inside_from, inside_to, true),
            (inside_to, self.width, false),
        ];
        for (from, to, inside) in columns.into_iter().filter(|(f, t, _)| f < t) {
            let c = l.begin_span(from, to, inside);
            let d: Vec<Expr> = match inside {
                true => input_rows
                    .iter()
                    .map(|(ok, start)| {
                        let v = Expr::load(input, start.clone() + c.clone());
                        l.b.let_(Expr::select(ok.clone(), v, 0.0f32))
                    })
                    .collect(),
                false => vec![f(0.0); size],
            };
            for (i, pi) in p.iter().enumerate() {
                let value = l.b.let_(combine(pi.as_ref(), &d));
                let index = self.base.clone() + (i as u64 * self.width) as i64 + c.clone();
                l.b.store(self.buf, index, value);
            }
            l.b.end_for();
        }
    }

    /// The row transform of tile `tx` (columns `stride * tx ..`): `store(xi, value)` with
    /// `sum_k R[i][stride * tx + k] P[j][k]` at `xi = i * side + j`, row by row (each
    /// value stored as soon as it is computed: a dozen values live).
    fn tile<P: AsRef<[f32]>>(
        &self,
        l: &mut Launch,
        p: &[P],
        tx: &Expr,
        stride: u64,
        mut store: impl FnMut(&mut Launch, u64, Expr),
    ) {
        let (side, size) = (p.len(), p[0].as_ref().len());
        let x0 = l.b.let_(self.base.clone() + tx.clone() * stride as i64);
        for i in 0..side {
            let r: Vec<Expr> = (0..size)
                .map(|k| {
                    let index = x0.clone() + (i as u64 * self.width + k as u64) as i64;
                    l.b.let_(Expr::load(self.buf, index))
                })
                .collect();
            for (j, pj) in p.iter().enumerate() {
                let value = l.b.let_(combine(pj.as_ref(), &r));
                store(l, (i * side + j) as u64, value);
            }
        }
    }
}

/// A `side x side` tile whose element `k` (row-major) is `cell(k)`.
fn tile_of(side: u64, mut cell: impl FnMut(u64) -> Expr) -> Vec<Vec<Expr>> {
    (0..side)
        .map(|i| (0..side).map(|j| cell(i * side + j)).collect())
        .collect()
}
