//! Dropout's random keep mask in KIR: the SplitMix64 chain of `crate::rng`, so that the
//! masks are bit-identical to the interpreter's.

use crate::codegen::kir::{Expr, KernelBuilder, Ty};
use crate::rng::splitmix64;

/// Dropout's keep decision for element `index` (see crate::rng): the same SplitMix64
/// chain, with the 24-bit uniform compared as an integer against `ceil(rate * 2^24)`.
pub(super) fn keep(
    b: &mut KernelBuilder,
    rate: f64,
    seed: u64,
    stream: u64,
    step: Expr,
    index: &Expr,
) -> Expr {
    let key = Expr::Int(splitmix64(seed) as i64).cast(Ty::I64);
    let key = mix(b, key, step);
    let key = mix(b, key, Expr::Int(stream as i64).cast(Ty::I64));
    let h = mix(b, key, index.clone().cast(Ty::I64));
    let threshold = (rate * (1u64 << 24) as f64).ceil() as i64;
    b.let_(h.shift_right(40).ge(Expr::Int(threshold)))
}

/// One SplitMix64 output step applied to `z`.
fn splitmix(b: &mut KernelBuilder, z: Expr) -> Expr {
    let c = |v: u64| Expr::Int(v as i64);
    let z = b.let_(z + c(0x9E37_79B9_7F4A_7C15));
    let z = b.let_(z.clone().xor(z.shift_right(30)) * c(0xBF58_476D_1CE4_E5B9));
    let z = b.let_(z.clone().xor(z.shift_right(27)) * c(0x94D0_49BB_1331_11EB));
    b.let_(z.clone().xor(z.shift_right(31)))
}

/// Folds one coordinate into the key: `splitmix(key ^ splitmix(coordinate))`.
fn mix(b: &mut KernelBuilder, key: Expr, coordinate: Expr) -> Expr {
    let c = splitmix(b, coordinate);
    let k = b.let_(key.xor(c));
    splitmix(b, k)
}
