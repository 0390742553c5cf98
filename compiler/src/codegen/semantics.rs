//! The meaning of KIR operations, in one place for the checker, the printers and the
//! interpreter: the type of an expression in its context, which operations each type
//! has, and what every conversion does (as the MLIR ops it prints to).
//!
//! Typing: an expression has its own type ([`type_of`]) except a bare integer literal,
//! which takes the type its context wants ([`ty_in`]); a binary operation or comparison
//! takes the type of whichever operand has one ([`operand_ty`], index when neither has).

use super::kir::{ArrayDecl, BinOp, Buf, CmpOp, Expr, KernelFn, MmaShape, Ty, UnOp};
use rfnc_bundle::Precision;

/// The declaration of a buffer, if it is declared.
pub fn buf_decl(k: &KernelFn, buf: Buf) -> Option<ArrayDecl> {
    match buf {
        Buf::Param(i) => k.params.get(i),
        Buf::Shared(i) => k.shared.get(i),
        Buf::Private(i) => k.private.get(i),
    }
    .copied()
}

/// The element type of a buffer.
pub fn buf_elem(k: &KernelFn, buf: Buf) -> Option<Ty> {
    buf_decl(k, buf).map(|d| d.elem)
}

/// The type of `e`; `None` for a bare integer literal (its context decides).
pub fn type_of(k: &KernelFn, e: &Expr) -> Option<Ty> {
    match e {
        Expr::Int(_) => None,
        Expr::F32(_) => Some(Ty::F32),
        Expr::Var(v) => k.vars.get(v.0 as usize).copied(),
        Expr::ThreadId | Expr::BlockId => Some(Ty::Index),
        Expr::Bin(_, a, b) => type_of(k, a).or_else(|| type_of(k, b)),
        Expr::Cmp(..) => Some(Ty::Bool),
        Expr::Select(_, a, b) => type_of(k, a).or_else(|| type_of(k, b)),
        Expr::Load(buf, _) => buf_elem(k, *buf),
        Expr::Unary(_, a) => type_of(k, a),
        Expr::Cast(t, _) => Some(*t),
    }
}

/// The type of `e` where its context wants `want` (integer literals take it).
pub fn ty_in(k: &KernelFn, e: &Expr, want: Ty) -> Ty {
    type_of(k, e).unwrap_or(want)
}

/// The type both operands of a comparison are computed in.
pub fn operand_ty(k: &KernelFn, a: &Expr, b: &Expr) -> Ty {
    type_of(k, a).or_else(|| type_of(k, b)).unwrap_or(Ty::Index)
}

/// The type a converted value is computed in before the conversion.
pub fn cast_source_ty(k: &KernelFn, a: &Expr) -> Ty {
    ty_in(k, a, Ty::Index)
}

/// Whether the binary operation is defined on values of type `t`.
pub fn bin_defined(op: BinOp, t: Ty) -> bool {
    match t {
        Ty::F32 => matches!(
            op,
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Min | BinOp::Max
        ),
        Ty::Bool => matches!(op, BinOp::And | BinOp::Or | BinOp::Xor),
        Ty::Index | Ty::I64 | Ty::I32 => true,
    }
}

/// Whether the comparison is defined on operands of type `t` (booleans: equality only).
pub fn cmp_defined(op: CmpOp, t: Ty) -> bool {
    t != Ty::Bool || matches!(op, CmpOp::Eq | CmpOp::Ne)
}

/// Whether the unary operation is defined on values of type `t`.
pub fn unary_defined(op: UnOp, t: Ty) -> bool {
    match op {
        UnOp::Neg => t != Ty::Bool,
        UnOp::Exp | UnOp::Log | UnOp::Sqrt | UnOp::RoundTf32 | UnOp::RoundBf16 => t == Ty::F32,
        UnOp::Not => t != Ty::F32,
    }
}

/// One primitive conversion (an `arith` op).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CastOp {
    /// `arith.cmpf une, x, 0.0`: f32 to bool.
    FloatNonZero,
    /// `arith.cmpi ne, x, 0`: integer to bool.
    IntNonZero,
    /// `arith.fptosi`: f32 to a signed integer (Rust's saturating `as`).
    FpToSi,
    /// `arith.fptoui`: f32 to an unsigned integer.
    FpToUi,
    /// `arith.sitofp`: signed integer to f32.
    SiToFp,
    /// `arith.uitofp`: unsigned integer (or bool) to f32.
    UiToFp,
    /// `arith.index_cast`: between index and i32 (sign-extending) or i64.
    IndexCast,
    /// `arith.index_castui`: bool to index.
    IndexCastUi,
    /// `arith.extui`: bool to i32 or i64.
    ExtUi,
    /// `arith.extsi`: i32 to i64.
    ExtSi,
    /// `arith.trunci`: i64 to i32.
    TruncI,
}

/// A primitive conversion from one type to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CastStep {
    pub op: CastOp,
    pub from: Ty,
    pub to: Ty,
}

/// The primitive conversions, in order, that convert a `from` value to `to` (none when the
/// types agree). Integers convert by sign extension from i32, to f32 signed from index and
/// i32 and unsigned from i64; values convert to bool by comparison with zero.
pub fn cast_steps(from: Ty, to: Ty) -> Vec<CastStep> {
    let step = |op, from, to| CastStep { op, from, to };
    if from == to {
        return Vec::new();
    }
    match (from, to) {
        (Ty::F32, Ty::Bool) => vec![step(CastOp::FloatNonZero, from, to)],
        (Ty::F32, Ty::Index) => vec![
            step(CastOp::FpToSi, Ty::F32, Ty::I64),
            step(CastOp::IndexCast, Ty::I64, Ty::Index),
        ],
        (Ty::F32, _) if to == Ty::I32 => vec![step(CastOp::FpToSi, from, to)],
        (Ty::F32, _) => vec![step(CastOp::FpToUi, from, to)],
        (Ty::Index, Ty::F32) => vec![
            step(CastOp::IndexCast, Ty::Index, Ty::I64),
            step(CastOp::SiToFp, Ty::I64, Ty::F32),
        ],
        (Ty::I32, Ty::F32) => vec![step(CastOp::SiToFp, from, to)],
        (_, Ty::F32) => vec![step(CastOp::UiToFp, from, to)],
        (_, Ty::Bool) => vec![step(CastOp::IntNonZero, from, to)],
        (Ty::Bool, Ty::Index) => vec![step(CastOp::IndexCastUi, from, to)],
        (Ty::Bool, _) => vec![step(CastOp::ExtUi, from, to)],
        (Ty::I32, Ty::I64) => vec![step(CastOp::ExtSi, from, to)],
        (Ty::I64, Ty::I32) => vec![step(CastOp::TruncI, from, to)],
        _ => vec![step(CastOp::IndexCast, from, to)],
    }
}

impl CastStep {
    /// The step on an integer value as the interpreter holds it (i32 sign-extended,
    /// booleans 0 or 1, index and i64 as their 64 bits), to an integer.
    pub fn int_to_int(self, x: i64) -> i64 {
        match self.op {
            CastOp::IntNonZero => (x != 0) as i64,
            _ if self.to == Ty::I32 => x as i32 as i64,
            _ => x,
        }
    }

    /// Whether [`Self::int_to_int`] leaves every value as it is (the step only changes how
    /// the printed code types it).
    pub fn keeps_int(self) -> bool {
        self.op != CastOp::IntNonZero && self.to != Ty::I32
    }

    /// The step on an integer value, to f32.
    pub fn int_to_float(self, x: i64) -> f32 {
        match self.op {
            CastOp::UiToFp => x as u64 as f32,
            _ => x as f32,
        }
    }

    /// The step on an f32 value, to an integer.
    pub fn float_to_int(self, x: f32) -> i64 {
        match (self.op, self.to) {
            (CastOp::FloatNonZero, _) => (x != 0.0) as i64,
            (CastOp::FpToUi, _) => x as u64 as i64,
            (_, Ty::I32) => x as i32 as i64,
            _ => x as i64,
        }
    }
}

// ----- tensor cores --------------------------------------------------------------------------

/// `x` rounded to TF32 as `cvt.rna.tf32.f32` does: to the nearest value with 10 mantissa
/// bits, ties away from zero (the magnitude's bits plus half of the dropped part, then
/// truncated); infinities and NaNs unchanged.
pub fn round_tf32(x: f32) -> f32 {
    let bits = x.to_bits();
    if bits & 0x7f80_0000 == 0x7f80_0000 {
        return x;
    }
    f32::from_bits(bits.wrapping_add(0x1000) & !0x1fff)
}

/// `x` rounded to BF16 as `cvt.rn.bf16.f32` does: to the nearest value with 7 mantissa
/// bits, ties to even; infinities unchanged, NaNs stay NaNs.
pub fn round_bf16(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let bits = x.to_bits();
    let odd = (bits >> 16) & 1;
    f32::from_bits(bits.wrapping_add(0x7fff + odd) & 0xffff_0000)
}

/// How the convolutions of `precision` round their operands (`None`: not at all).
pub fn rounding(precision: Precision) -> Option<fn(f32) -> f32> {
    match precision {
        Precision::F32 => None,
        Precision::Tf32 => Some(round_tf32),
        Precision::Bf16 => Some(round_bf16),
    }
}

/// An f32 as a TF32 tensor-core operation reads it: the low 13 mantissa bits ignored.
pub fn tf32_operand(x: f32) -> f32 {
    f32::from_bits(x.to_bits() & !0x1fff)
}

impl MmaShape {
    /// The bits of an f32 fragment element that the operation reads (TF32: the top 19;
    /// BF16: the top 16, the half that travels to the tensor core).
    pub fn operand_mask(self) -> u32 {
        match self {
            MmaShape::Tf32M16N8K8 => !0x1fff,
            MmaShape::Bf16M16N8K16 => 0xffff_0000,
        }
    }

    /// Where `A[8 h, k]` lies (`h` 0 or 1): lane and element, in closed form (the host
    /// printer's loop over `k` computes exactly this; equal to [`mma_a_element`]).
    pub fn a_at(self, h: u64, k: u64) -> (u64, u64) {
        let kq = self.k_per_q();
        let (lane, within, half) = ((k % (4 * kq)) / kq, k % kq, k / (4 * kq));
        (lane, within + kq * h + 2 * kq * half)
    }

    /// Where `B[k, e]` lies (`e` < 8): lane and element, in closed form (as
    /// [`Self::a_at`]; equal to [`mma_b_element`]).
    pub fn b_at(self, k: u64, e: u64) -> (u64, u64) {
        let kq = self.k_per_q();
        let (lane, within, half) = ((k % (4 * kq)) / kq, k % kq, k / (4 * kq));
        (4 * e + lane, within + kq * half)
    }

    /// How much `k` a lane's `q = lane % 4` steps (1 for TF32; 2 for BF16, whose lanes hold
    /// pairs along k).
    pub fn k_per_q(self) -> u64 {
        match self {
            MmaShape::Tf32M16N8K8 => 1,
            MmaShape::Bf16M16N8K16 => 2,
        }
    }

    /// Element `i` of a lane's A fragment lies at row `g + a.0`, depth `q * k_per_q + a.1`.
    pub fn a_offsets(self, i: u64) -> (u64, u64) {
        match self {
            MmaShape::Tf32M16N8K8 => (8 * (i % 2), 4 * (i / 2)),
            MmaShape::Bf16M16N8K16 => (8 * ((i / 2) % 2), i % 2 + 8 * (i / 4)),
        }
    }

    /// Element `i` of a lane's B fragment lies at depth `q * k_per_q + b`, column `g`.
    pub fn b_offset(self, i: u64) -> u64 {
        match self {
            MmaShape::Tf32M16N8K8 => 4 * i,
            MmaShape::Bf16M16N8K16 => i % 2 + 8 * (i / 2),
        }
    }
}

/// An element as the operation reads it ([`MmaShape::operand_mask`]).
pub fn mma_operand(shape: MmaShape, x: f32) -> f32 {
    f32::from_bits(x.to_bits() & shape.operand_mask())
}

/// Where element `(row, k)` of the A tile of an [`MmaShape`] lives: `(lane, index)` of the
/// thread's fragment (PTX ISA, "Matrix Fragments for mma.m16n8k8 / m16n8k16"), with
/// `g = lane / 4` and `q = lane % 4`. m16n8k8 (TF32): `a0 = (g, q)`, `a1 = (g + 8, q)`,
/// `a2 = (g, q + 4)`, `a3 = (g + 8, q + 4)`. m16n8k16 (BF16, pairs along k): `a0, a1 =
/// (g, 2q + {0, 1})`, `a2, a3 = (g + 8, 2q + {0, 1})`, `a4, a5 = (g, 2q + 8 + {0, 1})`,
/// `a6, a7 = (g + 8, 2q + 8 + {0, 1})`.
pub fn mma_a_element(shape: MmaShape, row: u64, k: u64) -> (u64, u64) {
    match shape {
        MmaShape::Tf32M16N8K8 => ((row % 8) * 4 + k % 4, row / 8 + 2 * (k / 4)),
        MmaShape::Bf16M16N8K16 => (
            (row % 8) * 4 + (k % 8) / 2,
            k % 2 + 2 * (row / 8) + 4 * (k / 8),
        ),
    }
}

/// Where element `(k, col)` of the B tile lives. TF32: `b0 = (k = q, n = g)`, `b1 = (k =
/// q + 4, n = g)`; BF16: `b0, b1 = (k = 2q + {0, 1}, n = g)`, `b2, b3 = (k = 2q + 8 +
/// {0, 1}, n = g)`.
pub fn mma_b_element(shape: MmaShape, k: u64, col: u64) -> (u64, u64) {
    match shape {
        MmaShape::Tf32M16N8K8 => (col * 4 + k % 4, k / 4),
        MmaShape::Bf16M16N8K16 => (col * 4 + (k % 8) / 2, k % 2 + 2 * (k / 8)),
    }
}

/// The `(row, col)` of the C (and D) tile that element `j` of lane `lane` holds (both
/// shapes): `c0, c1 = (g, 2q + {0, 1})`, `c2, c3 = (g + 8, 2q + {0, 1})`.
pub fn mma_c_element(_shape: MmaShape, lane: u64, j: u64) -> (u64, u64) {
    (lane / 4 + 8 * (j / 2), 2 * (lane % 4) + j % 2)
}

/// The reference model of element `j` of lane `lane`'s D, which the interpreter and the
/// host code compute: `C` plus the products over `k = 0, 1, ...` in order, each operand
/// read as the tensor core reads it, summed in f32 (the hardware sums in an order and with
/// internal precision of its own; the products of rounded operands are exact either way). `a(lane, i)` and `b(lane, i)` read the warp's fragments, `c` is the lane's C.
pub fn mma_element(
    shape: MmaShape,
    lane: u64,
    j: u64,
    c: f32,
    a: impl Fn(u64, u64) -> f32,
    b: impl Fn(u64, u64) -> f32,
) -> f32 {
    let (_, _, kk) = shape.mnk();
    let (row, col) = mma_c_element(shape, lane, j);
    (0..kk).fold(c, |acc, k| {
        let (al, ai) = mma_a_element(shape, row, k);
        let (bl, bi) = mma_b_element(shape, k, col);
        acc + mma_operand(shape, a(al, ai)) * mma_operand(shape, b(bl, bi))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closed forms the host printer computes are the layouts.
    #[test]
    fn closed_forms_are_the_layouts() {
        for shape in [MmaShape::Tf32M16N8K8, MmaShape::Bf16M16N8K16] {
            let (_, n, k_len) = shape.mnk();
            for k in 0..k_len {
                for h in 0..2 {
                    assert_eq!(
                        shape.a_at(h, k),
                        mma_a_element(shape, 8 * h, k),
                        "{shape:?}"
                    );
                }
                for e in 0..n {
                    assert_eq!(shape.b_at(k, e), mma_b_element(shape, k, e), "{shape:?}");
                }
            }
        }
    }

    /// The fragment offsets the GEMM generator uses are the inverse of the layouts.
    #[test]
    fn fragment_offsets_invert_the_layouts() {
        for shape in [MmaShape::Tf32M16N8K8, MmaShape::Bf16M16N8K16] {
            let [la, lb, _] = shape.fragment_lens();
            for lane in 0..32 {
                let (g, q) = (lane / 4, lane % 4);
                for i in 0..la {
                    let (dr, dk) = shape.a_offsets(i);
                    let at = mma_a_element(shape, g + dr, q * shape.k_per_q() + dk);
                    assert_eq!(at, (lane, i), "{shape:?} A lane {lane} element {i}");
                }
                for i in 0..lb {
                    let k = q * shape.k_per_q() + shape.b_offset(i);
                    assert_eq!(mma_b_element(shape, k, g), (lane, i), "{shape:?} B");
                }
            }
        }
    }

    #[test]
    fn rounding_matches_the_hardware_rules() {
        // TF32: ties away from zero; BF16: ties to even.
        let tie = f32::from_bits(0x3f80_1000);
        assert_eq!(round_tf32(tie).to_bits(), 0x3f80_2000);
        assert_eq!(round_tf32(-tie).to_bits(), 0xbf80_2000);
        assert_eq!(
            round_bf16(f32::from_bits(0x3f80_8000)).to_bits(),
            0x3f80_0000
        );
        assert_eq!(
            round_bf16(f32::from_bits(0x3f81_8000)).to_bits(),
            0x3f82_0000
        );
        assert_eq!(
            round_bf16(f32::from_bits(0x3f80_8001)).to_bits(),
            0x3f81_0000
        );
        assert!(round_bf16(f32::from_bits(0x7f80_0001)).is_nan());
        assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
        assert!(round_tf32(f32::NAN).is_nan());
    }
}
