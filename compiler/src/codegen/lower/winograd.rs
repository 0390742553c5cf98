//! Winograd's minimal filtering F(2x2, 3x3) for the CPU's schedule of a 3x3, stride-1,
//! undilated, ungrouped convolution and its data and weight gradients: 16 multiplies per
//! 2x2 output tile and input channel instead of 36 (2.25x fewer), as 16 GEMMs of
//! `[Co, Ci] x [Ci, tiles]` (the weight gradient: `[Co, tiles] x [tiles, Ci]`).
//!
//! With `d` a 4x4 input tile (rows `2*ty - top ..`, columns `2*tx - left ..`, 0 outside the
//! input) and `g` a 3x3 filter: `V = B^T d B`, `U = G g G^T` and `Y = A^T (U . V) A`, where
//!
//! ```text
//! B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
//! G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
//! A^T = [1 1 1 0; 0 1 -1 -1]
//! ```
//!
//! and the product `U . V` at each of the 16 positions `xi` is summed over input channels:
//! `M[xi][b][co][t] = sum_ci U[xi][co][ci] * V[xi][b][ci][t]`, one GEMM per `xi` and batch.
//! The output transform is the epilogue: one thread per tile reads its 16 values, adds the
//! bias and computes the kernel's fused consumers for its four outputs.
//!
//! The weight gradient is the adjoint of the same algorithm. `Y = A^T (U . V) A` is linear
//! in `U`, and `U` in `g`, so per tile `dL/dU = (A dY A^T) . V` and `dL/dg = G^T (dL/dU) G`.
//! Summed over tiles and batch: `D = A dY A^T` per 2x2 tile of `dy` (0 outside it), `V` as
//! above, 16 GEMMs `M[xi][co][ci] = sum_{b,t} D[xi][b][co][t] * V[xi][b][ci][t]` (the
//! batch summed into one `C`), and `dw = G^T M G` per filter. Exact in exact arithmetic for
//! any size: the forward algorithm equals the direct convolution for every `g`.
//!
//! Accuracy: the transforms only add, subtract and halve, so in f32 the result differs from
//! the direct convolution by a few units in the last place of the tile's partial sums
//! (tests/codegen.rs compares with the reference interpreter at 1e-4 relative).

use super::host_conv::{matrix, HostConv, LoweredGemm};
use super::{Arg, HostStep, Launch, LowerError};
use crate::codegen::gemm::ConvKind;
use crate::codegen::kir::Expr;
use crate::ir::NodeId;

/// Whether a convolution (or its data or weight gradient) is one F(2x2, 3x3) computes:
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

/// The convolution F(2x2, 3x3) computes: `out[b, o] = sum_i conv(input[b, i], filter[o, i])`
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
    /// 2x2 output tiles per plane.
    fn tiles(&self) -> u64 {
        self.ho.div_ceil(2) * self.wo.div_ceil(2)
    }
}

fn f(v: f32) -> Expr {
    Expr::F32(v)
}

/// An `R x C` array of expressions to fill in.
fn zeros<const R: usize, const C: usize>() -> [[Expr; C]; R] {
    std::array::from_fn(|_| std::array::from_fn(|_| f(0.0)))
}

/// `B^T d B` of a 4x4 tile.
fn input_transform(d: &[[Expr; 4]; 4]) -> [[Expr; 4]; 4] {
    let bt = |c: [Expr; 4]| -> [Expr; 4] {
        let [c0, c1, c2, c3] = c;
        [
            c0 - c2.clone(),
            c1.clone() + c2.clone(),
            c2 - c1.clone(),
            c1 - c3,
        ]
    };
    // Columns of d through B^T, then rows through B (the same combination).
    let cols: Vec<[Expr; 4]> = (0..4)
        .map(|j| bt([0, 1, 2, 3].map(|i| d[i][j].clone())))
        .collect();
    let mut v: [[Expr; 4]; 4] = zeros();
    for (i, row) in v.iter_mut().enumerate() {
        *row = bt([0, 1, 2, 3].map(|j| cols[j][i].clone()));
    }
    v
}

/// `G g G^T` of a 3x3 filter.
fn filter_transform(g: &[[Expr; 3]; 3]) -> [[Expr; 4]; 4] {
    let gt = |c: [Expr; 3]| -> [Expr; 4] {
        let [c0, c1, c2] = c;
        [
            c0.clone(),
            f(0.5) * (c0.clone() + c1.clone() + c2.clone()),
            f(0.5) * (c0 - c1 + c2.clone()),
            c2,
        ]
    };
    let cols: Vec<[Expr; 4]> = (0..3)
        .map(|j| gt([0, 1, 2].map(|i| g[i][j].clone())))
        .collect();
    let mut u: [[Expr; 4]; 4] = zeros();
    for (i, row) in u.iter_mut().enumerate() {
        *row = gt([0, 1, 2].map(|j| cols[j][i].clone()));
    }
    u
}

/// The fewest tiles a loop must have to be vectorised: two vectors of 8 (a shorter loop
/// stays scalar; LLVM would refuse to vectorise it by 8 and say so).
const MIN_VECTORISED: u64 = 16;

/// Row `i` (0 or 1) of `A^T`.
const AT: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];

/// Column `r` (0 to 2) of `G`, as `G^T`'s rows.
const GT: [[f32; 4]; 3] = [
    [1.0, 0.5, 0.5, 0.0],
    [0.0, 0.5, -0.5, 0.0],
    [0.0, 0.5, 0.5, 1.0],
];

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

/// `P X P^T` for an `R x C` coefficient matrix `P` and a `C x C` array `X`: `R x R`.
fn sandwich<const R: usize, const C: usize>(
    p: &[[f32; C]; R],
    x: &[[Expr; C]; C],
) -> [[Expr; R]; R] {
    // Rows of P X, then each against the rows of P.
    let rows: [[Expr; C]; R] = std::array::from_fn(|i| {
        std::array::from_fn(|c| combine(&p[i], &x.clone().map(|row| row[c].clone())))
    });
    std::array::from_fn(|i| std::array::from_fn(|j| combine(&p[j], &rows[i])))
}

/// `A = (A^T)^T`, for the output gradient's transform `A dY A^T`.
const A: [[f32; 2]; 4] = [[1.0, 0.0], [1.0, 1.0], [1.0, -1.0], [0.0, -1.0]];

impl HostConv<'_> {
    /// The forward convolution `y = conv(input, w) [+ bias]`, or the data gradient
    /// `dx = conv2d_grad_input(input = dy, w)` (the forward convolution of `dy` with the
    /// rotated, transposed filter, padded by `2 - pad`), by F(2x2, 3x3).
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
        let (tiles, tw) = (geometry.tiles(), wo.div_ceil(2));
        let v = self.winograd_input(&geometry)?;
        // D[xi][b][co][t] = A dY A^T of each 2x2 tile of dy.
        let dy = self.stored(dy)?;
        let grad_transform = |g: &[[Expr; 2]; 2]| sandwich(&A, g);
        let d = self.transform_tiles(
            "host_winograd_grad_output",
            dy,
            nb * co,
            [ho, wo],
            [0, 0],
            [ho.div_ceil(2), tw],
            grad_transform,
        )?;
        // M[xi][co][ci], summed over the batch (C's batch stride 0).
        let m = self.alloc(16 * co * ci);
        self.steps.push(HostStep::Gemm(LoweredGemm {
            m: co,
            n: ci,
            k: tiles,
            batch: [16, nb],
            a: matrix(d, tiles, 1, [nb * co * tiles, co * tiles]),
            // V[xi][b] transposed: rows are tiles, columns input channels.
            b: matrix(v, 1, tiles, [nb * ci * tiles, ci * tiles]),
            c: matrix(m, ci, 1, [co * ci, 0]),
        }));
        // dw = G^T M G and the epilogue, one thread per filter (co, ci).
        let anchor = self.anchor;
        let dims = vec![co, ci, 3, 3];
        self.elementwise("host_winograd_grad_filter", co * ci, |l, flat| {
            let products = Self::scratch_buf(l, m);
            let mut mm: [[Expr; 4]; 4] = zeros();
            for (xi, cell) in mm.iter_mut().flatten().enumerate() {
                let index = flat.clone() + (xi as u64 * co * ci) as i64;
                *cell = l.b.let_(Expr::load(products, index));
            }
            for (tap, value) in sandwich(&GT, &mm).into_iter().flatten().enumerate() {
                let value = l.b.let_(value);
                let element = l.b.let_(flat.clone() * 9 + tap as i64);
                l.emit_outputs(&element, &dims, Some((anchor, value)))?;
            }
            Ok(())
        })
    }

    /// `V[xi][b][ci][t] = B^T d B` of every 4x4 input tile, in scratch.
    fn winograd_input(&mut self, g: &Geometry) -> Result<Arg, LowerError> {
        let tiles = [g.ho.div_ceil(2), g.wo.div_ceil(2)];
        let planes = g.batch * g.c_in;
        let (hw, corner) = ([g.h, g.w], [g.top, g.left]);
        self.transform_tiles(
            "host_winograd_input",
            g.input,
            planes,
            hw,
            corner,
            tiles,
            input_transform,
        )
    }

    /// `out[xi][plane][t]`: `transform` of the `S x S` tile `t` of each plane of `src`
    /// (`[planes, h, w]`; tile `(ty, tx)` starts at row `2 * ty - top`, column
    /// `2 * tx - left`; 0 outside), in scratch. One thread per row of tiles, looping over
    /// its tiles. Tiles whose columns all lie inside the plane load without a column
    /// test (rows outside it are clamped and zeroed by a test that holds for the whole
    /// row), so every address is affine in the tile and their loop (when it has at least
    /// [`MIN_VECTORISED`] tiles) is vectorised: its stride-2 loads are cheaper than LLVM's
    /// cost model thinks (forced, 1.9x faster than the scalar loop, measured).
    #[allow(clippy::too_many_arguments)]
    fn transform_tiles<const S: usize>(
        &mut self,
        step: &str,
        src: Arg,
        planes: u64,
        [h, w]: [u64; 2],
        [top, left]: [i64; 2],
        [th, tw]: [u64; 2],
        transform: fn(&[[Expr; S]; S]) -> [[Expr; 4]; 4],
    ) -> Result<Arg, LowerError> {
        let tiles = th * tw;
        // Tiles [lo, hi) read columns 2 * tx - left .. + S, all inside [0, w).
        let lo = (left.max(0) as u64).div_ceil(2).min(tw);
        let hi = match w as i64 + left - S as i64 {
            end if end >= 0 => (end as u64 / 2 + 1).clamp(lo, tw),
            _ => lo,
        };
        let out = self.alloc(16 * planes * tiles);
        self.elementwise(step, planes * th, |l, row| {
            let at = |l: &mut Launch, e: Expr| l.b.let_(e);
            let plane = at(l, row.clone() / th as i64);
            let y0 = at(l, row.clone() % th as i64 * 2 - top);
            let first = at(
                l,
                plane.clone() * tiles as i64 + row.clone() % th as i64 * tw as i64,
            );
            let input = Self::scratch_buf(l, src);
            let output = Self::scratch_buf(l, out);
            // Per tile row i: whether it lies inside the plane, and where its (clamped)
            // row starts.
            let rows: Vec<(Expr, Expr)> = (0..S)
                .map(|i| {
                    let yy = at(l, y0.clone() + i as i64);
                    let ok = at(l, yy.clone().ge(0).and(yy.clone().lt(h)));
                    let clamped = yy.max(0).min(h as i64 - 1);
                    let start = at(l, (plane.clone() * h as i64 + clamped) * w as i64);
                    (ok, start)
                })
                .collect();
            for (from, to, inside) in [(0, lo, false), (lo, hi, true), (hi, tw, false)] {
                if from >= to {
                    continue;
                }
                let tx = match inside && to - from >= MIN_VECTORISED {
                    true => l.b.begin_vectorized_for(from as i64, to as i64),
                    false => l.b.begin_for(from as i64, to as i64, 1),
                };
                let x0 = at(l, tx.clone() * 2 - left);
                let mut d: [[Expr; S]; S] = zeros();
                for (i, cells) in d.iter_mut().enumerate() {
                    let (row_ok, start) = rows[i].clone();
                    for (j, cell) in cells.iter_mut().enumerate() {
                        let xx = at(l, x0.clone() + j as i64);
                        let v = if inside {
                            Expr::load(input, start.clone() + xx)
                        } else {
                            let ok = xx.clone().ge(0).and(xx.clone().lt(w));
                            let index = Expr::select(ok.clone(), start.clone() + xx, 0);
                            Expr::select(ok, Expr::load(input, index), 0.0f32)
                        };
                        *cell = at(l, Expr::select(row_ok.clone(), v, 0.0f32));
                    }
                }
                for (xi, value) in transform(&d).into_iter().flatten().enumerate() {
                    let value = at(l, value);
                    let index = first.clone() + tx.clone() + (xi as u64 * planes * tiles) as i64;
                    l.b.store(output, index, value);
                }
                l.b.end_for();
            }
            Ok(())
        })?;
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
        let (tiles, tw) = (geometry.tiles(), wo.div_ceil(2));
        let v = self.winograd_input(geometry)?;
        // U[xi][co][ci]: transformed once per change of the weights into the packed region
        // where they do not change between runs, else every run into scratch.
        let packed = self.alloc_packed(w, 16 * co * ci);
        let u = packed.unwrap_or_else(|| self.alloc(16 * co * ci));
        let filter = self.elementwise_launch("host_winograd_filter", co * ci, |l, flat| {
            let weights = Self::scratch_buf(l, w);
            // flat = o * ci + i; the rotated filter reads w[i, o] (w is [ci, co, 3, 3]).
            let first = match rotated {
                false => flat.clone() * 9,
                true => {
                    let (o, i) = (flat.clone() / ci as i64, flat.clone() % ci as i64);
                    l.b.let_((i * co as i64 + o) * 9)
                }
            };
            let mut g: [[Expr; 3]; 3] = zeros();
            for (i, row) in g.iter_mut().enumerate() {
                for (j, cell) in row.iter_mut().enumerate() {
                    let tap = match rotated {
                        false => i * 3 + j,
                        true => (2 - i) * 3 + (2 - j),
                    };
                    *cell = l.b.let_(Expr::load(weights, first.clone() + tap as i64));
                }
            }
            let out = Self::scratch_buf(l, u);
            for (xi, value) in filter_transform(&g).into_iter().flatten().enumerate() {
                let value = l.b.let_(value);
                l.b.store(out, flat.clone() + (xi as u64 * co * ci) as i64, value);
            }
            Ok(())
        })?;
        self.steps.push(match packed {
            Some(_) => HostStep::Pack(filter),
            None => HostStep::Kernel(filter),
        });
        // M[xi][b][co][t]
        let m = self.alloc(16 * nb * co * tiles);
        self.steps.push(HostStep::Gemm(LoweredGemm {
            m: co,
            n: tiles,
            k: ci,
            batch: [16, nb],
            a: matrix(u, ci, 1, [co * ci, 0]),
            b: matrix(v, tiles, 1, [nb * ci * tiles, ci * tiles]),
            c: matrix(m, tiles, 1, [nb * co * tiles, co * tiles]),
        }));
        // The output transform and the epilogue, one thread per row of tiles looping over
        // its tiles: each tile's 16 products read once, its four outputs (those inside y)
        // stored. Where all four are inside (both rows, and the tiles before an odd last
        // column), the loop stores without tests and is vectorised.
        let anchor = self.anchor;
        let dims = vec![nb, co, ho, wo];
        let (th, full) = (ho.div_ceil(2), wo / 2);
        self.elementwise("host_winograd_output", nb * co * th, |l, row| {
            let at = |l: &mut Launch, e: Expr| l.b.let_(e);
            let plane = at(l, row.clone() / th as i64);
            let oy = at(l, row.clone() % th as i64 * 2);
            let first = at(
                l,
                plane.clone() * tiles as i64 + row.clone() % th as i64 * tw as i64,
            );
            let bias = match bias {
                Some(bias) => {
                    let c = at(l, plane.clone() % co as i64);
                    let value = l.value_at(bias, &c)?;
                    Some(at(l, value))
                }
                None => None,
            };
            let products = Self::scratch_buf(l, m);
            // Tiles [from, to), with tests of the second row and of the second column.
            let tiles_of = |l: &mut Launch, from: u64, to: u64, test: [bool; 2]| {
                let tx = match test {
                    [false, false] if to - from >= MIN_VECTORISED => {
                        l.b.begin_vectorized_for(from as i64, to as i64)
                    }
                    _ => l.b.begin_for(from as i64, to as i64, 1),
                };
                let mut mm: [[Expr; 4]; 4] = zeros();
                for (xi, cell) in mm.iter_mut().flatten().enumerate() {
                    let index = first.clone() + tx.clone() + (xi as u64 * nb * co * tiles) as i64;
                    *cell = at(l, Expr::load(products, index));
                }
                for (i, outputs) in sandwich(&AT, &mm).into_iter().enumerate() {
                    for (j, y) in outputs.into_iter().enumerate() {
                        let y = match &bias {
                            Some(bias) => at(l, y + bias.clone()),
                            None => at(l, y),
                        };
                        let (oh, ow) = (
                            at(l, oy.clone() + i as i64),
                            at(l, tx.clone() * 2 + j as i64),
                        );
                        let tested = [
                            (i == 1 && test[0], oh.clone().lt(ho)),
                            (j == 1 && test[1], ow.clone().lt(wo)),
                        ];
                        let tests: Vec<Expr> = tested
                            .into_iter()
                            .filter(|(t, _)| *t)
                            .map(|(_, c)| c)
                            .collect();
                        let guard = tests.into_iter().reduce(|a, b| a.and(b));
                        if let Some(guard) = &guard {
                            l.b.begin_if(guard.clone());
                        }
                        let element = at(l, (plane.clone() * ho as i64 + oh) * wo as i64 + ow);
                        l.emit_outputs(&element, &dims, Some((anchor, y)))?;
                        if guard.is_some() {
                            l.b.end_if();
                        }
                    }
                }
                l.b.end_for();
                Ok::<(), LowerError>(())
            };
            if full > 0 {
                if ho % 2 == 0 {
                    tiles_of(l, 0, full, [false, false])?;
                } else {
                    l.b.begin_if((oy.clone() + 1).lt(ho));
                    tiles_of(l, 0, full, [false, false])?;
                    l.b.begin_else();
                    tiles_of(l, 0, full, [true, false])?;
                    l.b.end_if();
                }
            }
            if full < tw {
                tiles_of(l, full, tw, [ho % 2 == 1, true])?;
            }
            Ok(())
        })
    }
}
