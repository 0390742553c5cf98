//! Kernel IR: the interpreter against plain Rust, and the MLIR printers against mlir-opt-22.

mod common;

use std::time::Instant;

use common::{mlir_opt, run_tool};

use rfnc_compiler::codegen::check::CheckedKernel;
use rfnc_compiler::codegen::kir::{Expr, KernelBuilder, Ty};
use rfnc_compiler::codegen::kir_interp::{run_kernel, KirBuffer};
use rfnc_compiler::codegen::mlir_text::{gpu_module, host_module, GPU_PIPELINE, HOST_PIPELINE};
use rfnc_compiler::rng::splitmix64;

// ----- tools -------------------------------------------------------------------------------

/// Runs mlir-opt on `text` with `args`; fails with its diagnostics on failure.
fn opt(text: &str, args: &[&str], what: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("k.mlir");
    std::fs::write(&path, text).expect("write");
    let path = path.to_string_lossy();
    let args: Vec<&str> = args.iter().copied().chain([path.as_ref()]).collect();
    run_tool(&mlir_opt(), &args, what)
}

/// Both printed forms verify, and the production pipelines lower the host form to the LLVM
/// dialect and the GPU form to NVVM.
fn check_mlir(k: &CheckedKernel, name: &str) {
    let gpu = gpu_module(k, name);
    let host = host_module(k, name);
    opt(&gpu, &[], &format!("{name} (gpu)"));
    opt(&host, &[], &format!("{name} (host)"));
    let llvm = opt(
        &host,
        &[&format!("--pass-pipeline={HOST_PIPELINE}")],
        &format!("{name} (host lowering)"),
    );
    assert!(llvm.contains("llvm.func"), "{llvm}");
    let nvvm = opt(
        &gpu,
        &[&format!("--pass-pipeline={GPU_PIPELINE}")],
        &format!("{name} (gpu lowering)"),
    );
    assert!(nvvm.contains("llvm.func"), "{nvvm}");
}

fn f32s(b: &KirBuffer) -> &[f32] {
    b.as_f32().expect("f32 buffer")
}

fn i32s(b: &KirBuffer) -> &[i32] {
    b.as_i32().expect("i32 buffer")
}

/// Deterministic numbers in [-1, 1).
fn numbers(n: usize, seed: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| (splitmix64(seed ^ i) >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        .collect()
}

// ----- kernels -----------------------------------------------------------------------------

/// `out[i] = max(a[i] * 2 + b[i], 0)` for `i < n`, one thread per element.
fn elementwise(n: u64, block: u32) -> CheckedKernel {
    let mut b = KernelBuilder::new("mul+add+relu", block);
    let x = b.param(Ty::F32, n);
    let y = b.param(Ty::F32, n);
    let out = b.param(Ty::F32, n);
    let i = b.let_(Expr::BlockId * block + Expr::ThreadId);
    b.if_(i.clone().lt(n), |b| {
        let v = b.let_(Expr::load(x, i.clone()) * 2 + Expr::load(y, i.clone()));
        b.store(out, i.clone(), v.max(Expr::f32(0.0)));
    });
    b.finish().into_checked().expect("a valid kernel")
}

/// Sums of `x` per block: a grid-stride loop into a private accumulator, then a tree in
/// shared memory (a uniform loop with a barrier per level).
fn reduction(n: u64, block: u32, grid: u64) -> CheckedKernel {
    assert!(block.is_power_of_two());
    let levels = block.trailing_zeros() as i64;
    let mut b = KernelBuilder::new("sum", block);
    let x = b.param(Ty::F32, n);
    let out = b.param(Ty::F32, grid);
    let acc = b.private(Ty::F32, 1);
    let sh = b.shared(Ty::F32, block as u64);
    b.store(acc, 0, Expr::f32(0.0));
    let first = b.let_(Expr::BlockId * block + Expr::ThreadId);
    b.for_(first, n, (grid * block as u64) as i64, |b, i| {
        b.store(acc, 0, Expr::load(acc, 0) + Expr::load(x, i));
    });
    b.store(sh, Expr::ThreadId, Expr::load(acc, 0));
    b.barrier();
    b.for_(0, levels, 1, |b, level| {
        let half = b.let_(Expr::int(block as i64 / 2).shift_right(level));
        b.if_(Expr::ThreadId.lt(half.clone()), |b| {
            let other = Expr::ThreadId + half.clone();
            b.store(
                sh,
                Expr::ThreadId,
                Expr::load(sh, Expr::ThreadId) + Expr::load(sh, other),
            );
        });
        b.barrier();
    });
    b.if_(Expr::ThreadId.eq(0), |b| {
        b.store(out, Expr::BlockId, Expr::load(sh, 0));
    });
    b.finish().into_checked().expect("a valid kernel")
}

fn reduction_reference(x: &[f32], block: usize, grid: usize) -> Vec<f32> {
    (0..grid)
        .map(|bid| {
            let mut sh: Vec<f32> = (0..block)
                .map(|t| {
                    let mut acc = 0.0f32;
                    let mut i = bid * block + t;
                    while i < x.len() {
                        acc += x[i];
                        i += grid * block;
                    }
                    acc
                })
                .collect();
            let mut half = block / 2;
            while half > 0 {
                for t in 0..half {
                    sh[t] += sh[t + half];
                }
                half /= 2;
            }
            sh[0]
        })
        .collect()
}

/// `C[m x n] = A[m x k] * B[k x n]`: 8 x 8 threads per block, each a 2 x 2 register tile
/// of a 16 x 16 block tile, with 16 x 8 and 8 x 16 tiles of A and B in shared memory.
fn matmul(m: u64, n: u64, k: u64) -> CheckedKernel {
    const T: u64 = 16;
    const TK: u64 = 8;
    assert!(m.is_multiple_of(T) && n.is_multiple_of(T) && k.is_multiple_of(TK));
    let mut b = KernelBuilder::new("matmul", 64);
    let a = b.param(Ty::F32, m * k);
    let bm = b.param(Ty::F32, k * n);
    let c = b.param(Ty::F32, m * n);
    let acc = b.private(Ty::F32, 4);
    let sa = b.shared(Ty::F32, T * TK);
    let sb = b.shared(Ty::F32, TK * T);
    let row0 = b.let_((Expr::BlockId / (n / T) as i64) * T as i64);
    let col0 = b.let_((Expr::BlockId % (n / T) as i64) * T as i64);
    for j in 0..4i64 {
        b.store(acc, j, Expr::f32(0.0));
    }
    b.for_(0, k as i64, TK as i64, |b, k0| {
        // 128 elements of each tile, two per thread.
        for half in 0..2i64 {
            let e = b.let_(Expr::ThreadId + half * 64);
            let (r, q) = (e.clone() / TK as i64, e.clone() % TK as i64);
            let ga = (row0.clone() + r) * k as i64 + k0.clone() + q;
            b.store(sa, e.clone(), Expr::load(a, ga));
            let (r, q) = (e.clone() / T as i64, e.clone() % T as i64);
            let gb = (k0.clone() + r) * n as i64 + col0.clone() + q;
            b.store(sb, e, Expr::load(bm, gb));
        }
        b.barrier();
        let ty = b.let_(Expr::ThreadId / 8);
        let tx = b.let_(Expr::ThreadId % 8);
        b.for_(0, TK as i64, 1, |b, kk| {
            for i in 0..2i64 {
                for j in 0..2i64 {
                    let av = Expr::load(sa, (ty.clone() * 2 + i) * TK as i64 + kk.clone());
                    let bv = Expr::load(sb, kk.clone() * T as i64 + tx.clone() * 2 + j);
                    let slot = i * 2 + j;
                    b.store(acc, slot, Expr::load(acc, slot) + av * bv);
                }
            }
        });
        b.barrier();
    });
    let ty = b.let_(Expr::ThreadId / 8);
    let tx = b.let_(Expr::ThreadId % 8);
    for i in 0..2i64 {
        for j in 0..2i64 {
            let at =
                (row0.clone() + ty.clone() * 2 + i) * n as i64 + col0.clone() + tx.clone() * 2 + j;
            b.store(c, at, Expr::load(acc, i * 2 + j));
        }
    }
    b.finish().into_checked().expect("a valid kernel")
}

fn matmul_reference(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f32;
            for p in 0..k {
                acc += a[i * k + p] * b[p * n + j];
            }
            c[i * n + j] = acc;
        }
    }
    c
}

/// `splitmix64(seed + i)` as two i32 halves, and `(h >> 40) / 2^24` as f32.
fn splitmix(n: u64, seed: u64) -> CheckedKernel {
    let mut b = KernelBuilder::new("splitmix64", 128);
    let lo = b.param(Ty::I32, n);
    let hi = b.param(Ty::I32, n);
    let u = b.param(Ty::F32, n);
    let i = b.let_(Expr::BlockId * 128 + Expr::ThreadId);
    b.if_(i.clone().lt(n), |b| {
        let z = b.let_(i.clone().cast(Ty::I64) + seed);
        let z = b.let_(z + 0x9E37_79B9_7F4A_7C15u64);
        let z = b.let_(z.clone().xor(z.shift_right(30)) * 0xBF58_476D_1CE4_E5B9u64);
        let z = b.let_(z.clone().xor(z.shift_right(27)) * 0x94D0_49BB_1331_11EBu64);
        let h = b.let_(z.clone().xor(z.shift_right(31)));
        b.store(lo, i.clone(), h.clone().cast(Ty::I32));
        b.store(hi, i.clone(), h.clone().shift_right(32).cast(Ty::I32));
        let uniform = h.shift_right(40).cast(Ty::F32) / Expr::f32((1u64 << 24) as f32);
        b.store(u, i.clone(), uniform);
    });
    b.finish().into_checked().expect("a valid kernel")
}

// ----- tests -------------------------------------------------------------------------------

#[test]
fn elementwise_matches_rust() {
    let n = 1000;
    let k = elementwise(n, 256);
    let (x, y) = (numbers(n as usize, 1), numbers(n as usize, 2));
    let mut bufs = vec![
        KirBuffer::F32(x.clone()),
        KirBuffer::F32(y.clone()),
        KirBuffer::F32(vec![f32::NAN; n as usize]),
    ];
    run_kernel(&k, n.div_ceil(256), &mut bufs).unwrap();
    let want: Vec<f32> = (0..n as usize)
        .map(|i| (x[i] * 2.0 + y[i]).max(0.0))
        .collect();
    assert_eq!(f32s(&bufs[2]), &want[..]);
    check_mlir(&k, "mul_add_relu");
}

#[test]
fn block_reduction_matches_rust() {
    let (n, block, grid) = (1000u64, 256u32, 2u64);
    let k = reduction(n, block, grid);
    let x = numbers(n as usize, 3);
    let mut bufs = vec![KirBuffer::F32(x.clone()), KirBuffer::F32(vec![0.0; 2])];
    run_kernel(&k, grid, &mut bufs).unwrap();
    let want = reduction_reference(&x, block as usize, grid as usize);
    assert_eq!(f32s(&bufs[1]), &want[..]);
    let total: f64 = x.iter().map(|&v| v as f64).sum();
    let got: f64 = f32s(&bufs[1]).iter().map(|&v| v as f64).sum();
    assert!((total - got).abs() < 1e-3, "{total} vs {got}");
    check_mlir(&k, "sum");
}

#[test]
fn reduction_snapshots() {
    let k = reduction(1000, 256, 2);
    insta::assert_snapshot!("reduction_gpu", gpu_module(&k, "sum"));
    insta::assert_snapshot!("reduction_host", host_module(&k, "sum"));
}

#[test]
fn tiled_matmul_matches_rust() {
    let (m, n, k) = (32u64, 48u64, 24u64);
    let kernel = matmul(m, n, k);
    let (a, b) = (numbers((m * k) as usize, 4), numbers((k * n) as usize, 5));
    let mut bufs = vec![
        KirBuffer::F32(a.clone()),
        KirBuffer::F32(b.clone()),
        KirBuffer::F32(vec![f32::NAN; (m * n) as usize]),
    ];
    run_kernel(&kernel, (m / 16) * (n / 16), &mut bufs).unwrap();
    let want = matmul_reference(&a, &b, m as usize, n as usize, k as usize);
    assert_eq!(f32s(&bufs[2]), &want[..]);
    check_mlir(&kernel, "matmul");
}

/// The interpreter's speed: a 256 x 256 x 160 matrix product (10.5 million multiply-adds).
#[test]
fn interpreter_speed() {
    let (m, n, k) = (256u64, 256u64, 160u64);
    let kernel = matmul(m, n, k);
    let (a, b) = (numbers((m * k) as usize, 6), numbers((k * n) as usize, 7));
    let mut bufs = vec![
        KirBuffer::F32(a.clone()),
        KirBuffer::F32(b.clone()),
        KirBuffer::F32(vec![0.0; (m * n) as usize]),
    ];
    let start = Instant::now();
    run_kernel(&kernel, (m / 16) * (n / 16), &mut bufs).unwrap();
    let took = start.elapsed();
    eprintln!(
        "interpreter: {} multiply-adds in {:.2} s",
        m * n * k,
        took.as_secs_f64()
    );
    let want = matmul_reference(&a, &b, m as usize, n as usize, k as usize);
    assert_eq!(f32s(&bufs[2]), &want[..]);
}

#[test]
fn splitmix64_matches_rng() {
    let (n, seed) = (300u64, 0x1234_5678_9ABC_DEF0u64);
    let k = splitmix(n, seed);
    let mut bufs = vec![
        KirBuffer::I32(vec![0; n as usize]),
        KirBuffer::I32(vec![0; n as usize]),
        KirBuffer::F32(vec![0.0; n as usize]),
    ];
    run_kernel(&k, n.div_ceil(128), &mut bufs).unwrap();
    for i in 0..n as usize {
        let h = splitmix64(seed.wrapping_add(i as u64));
        assert_eq!(i32s(&bufs[0])[i], h as u32 as i32, "low half of {i}");
        assert_eq!(
            i32s(&bufs[1])[i],
            (h >> 32) as u32 as i32,
            "high half of {i}"
        );
        assert_eq!(f32s(&bufs[2])[i], (h >> 40) as f32 / (1u64 << 24) as f32);
    }
    check_mlir(&k, "splitmix64");
}

#[test]
fn math_functions_match_rust() {
    let n = 64u64;
    let mut b = KernelBuilder::new("math", 64);
    let x = b.param(Ty::F32, n);
    let out = b.param(Ty::F32, 6 * n);
    let i = b.let_(Expr::ThreadId);
    let v = b.let_(Expr::load(x, i.clone()));
    b.store(out, i.clone(), v.clone().exp());
    b.store(out, i.clone() + n, v.clone().log());
    b.store(out, i.clone() + 2 * n, v.clone().sqrt());
    b.store(out, i.clone() + 3 * n, -v.clone());
    b.store(out, i.clone() + 4 * n, v.clone().min(Expr::f32(f32::NAN)));
    let ne = Expr::select(v.clone().ne(v.clone()), Expr::f32(1.0), Expr::f32(0.0));
    b.store(out, i + 5 * n, ne);
    let k = b.finish().into_checked().unwrap();
    let mut xs = numbers(n as usize, 8);
    xs[0] = f32::NAN;
    xs[1] = 0.0;
    xs[2] = f32::INFINITY;
    let mut bufs = vec![
        KirBuffer::F32(xs.clone()),
        KirBuffer::F32(vec![0.0; 6 * n as usize]),
    ];
    run_kernel(&k, 1, &mut bufs).unwrap();
    let got = f32s(&bufs[1]);
    let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    for (i, &v) in xs.iter().enumerate() {
        let n = n as usize;
        assert!(same(got[i], v.exp()), "exp({v})");
        assert!(same(got[i + n], v.ln()), "log({v})");
        assert!(same(got[i + 2 * n], v.sqrt()), "sqrt({v})");
        assert!(same(got[i + 3 * n], -v), "neg({v})");
        assert!(got[i + 4 * n].is_nan(), "min with NaN is NaN");
        assert_eq!(
            got[i + 5 * n],
            if v.is_nan() { 1.0 } else { 0.0 },
            "{v} != {v}"
        );
    }
    check_mlir(&k, "math");
}

#[test]
fn casts_and_integer_semantics() {
    let mut b = KernelBuilder::new("casts", 8);
    let x = b.param(Ty::I32, 8);
    let f = b.param(Ty::F32, 8);
    let out_i = b.param(Ty::I32, 5 * 8);
    let out_f = b.param(Ty::F32, 2 * 8);
    let t = b.let_(Expr::ThreadId);
    let v = b.let_(Expr::load(x, t.clone()));
    // i32 -> index sign-extends; signed division and remainder truncate.
    let wide = b.let_(v.clone().cast(Ty::Index));
    b.store(out_i, t.clone(), (wide.clone() / 3).cast(Ty::I32));
    b.store(out_i, t.clone() + 8, (v.clone() % 3i32).cast(Ty::I32));
    // index -> i64 -> index, i64 shift of a negative value is logical.
    let l = b.let_(wide.clone().cast(Ty::I64));
    b.store(out_i, t.clone() + 16, l.shift_right(60).cast(Ty::I32));
    // f32 -> i32 truncates toward zero; bool -> index.
    let fv = b.let_(Expr::load(f, t.clone()));
    b.store(out_i, t.clone() + 24, fv.clone().cast(Ty::I32));
    let neg = v.clone().lt(0i32).cast(Ty::Index);
    b.store(out_i, t.clone() + 32, (neg + 10).cast(Ty::I32));
    // index and i32 -> f32 are signed.
    b.store(out_f, t.clone(), wide.cast(Ty::F32));
    b.store(out_f, t + 8, v.cast(Ty::F32) * 0.5f32);
    let k = b.finish().into_checked().unwrap();
    let xs = vec![-7, -1, 0, 1, 7, i32::MIN, i32::MAX, -100];
    let fs = vec![-2.7f32, -0.5, 0.0, 0.5, 2.7, 100.9, -100.9, 1e6];
    let mut bufs = vec![
        KirBuffer::I32(xs.clone()),
        KirBuffer::F32(fs.clone()),
        KirBuffer::I32(vec![0; 40]),
        KirBuffer::F32(vec![0.0; 16]),
    ];
    run_kernel(&k, 1, &mut bufs).unwrap();
    let oi = i32s(&bufs[2]);
    let of = f32s(&bufs[3]);
    for t in 0..8 {
        let v = xs[t];
        assert_eq!(oi[t], (v as i64 / 3) as i32);
        assert_eq!(oi[t + 8], v % 3);
        assert_eq!(oi[t + 16], ((v as i64 as u64) >> 60) as i32);
        assert_eq!(oi[t + 24], fs[t] as i32);
        assert_eq!(oi[t + 32], (v < 0) as i32 + 10);
        assert_eq!(of[t], v as f32);
        assert_eq!(of[t + 8], v as f32 * 0.5);
    }
    check_mlir(&k, "casts");
}

#[test]
fn out_of_bounds_is_an_error() {
    let mut b = KernelBuilder::new("oob", 4);
    let x = b.param(Ty::F32, 4);
    let out = b.param(Ty::F32, 4);
    b.store(out, Expr::ThreadId, Expr::load(x, Expr::ThreadId + 1));
    let k = b.finish().into_checked().unwrap();
    let mut bufs = vec![KirBuffer::F32(vec![1.0; 4]), KirBuffer::F32(vec![0.0; 4])];
    let err = run_kernel(&k, 1, &mut bufs).unwrap_err();
    assert!(err.0.contains("parameter 0"), "{err}");
    assert!(err.0.contains("index 4"), "{err}");
    assert!(err.0.contains("thread 3"), "{err}");
    // Threads before the failing one ran.
    assert_eq!(f32s(&bufs[1]), &[1.0, 1.0, 1.0, 0.0]);

    let mut b = KernelBuilder::new("oob", 4);
    let out = b.param(Ty::F32, 4);
    let p = b.private(Ty::F32, 2);
    b.store(p, Expr::ThreadId, Expr::f32(0.0));
    b.store(out, Expr::ThreadId, Expr::load(p, 0));
    let err = run_kernel(
        &b.finish().into_checked().unwrap(),
        1,
        &mut [KirBuffer::F32(vec![0.0; 4])],
    )
    .unwrap_err();
    assert!(err.0.contains("private array 0 at index 2"), "{err}");

    // Wrong buffers are errors too.
    let err = run_kernel(&k, 1, &mut [KirBuffer::F32(vec![0.0; 3])]).unwrap_err();
    assert!(err.0.contains("buffers"), "{err}");
}

/// Four threads each copy 4 elements (16 bytes) at `4t + offset` into shared memory
/// asynchronously (zeros on thread 2), wait, and write them out.
fn wide_copy(offset: i64, width: u32) -> rfnc_compiler::codegen::kir::KernelFn {
    let mut b = KernelBuilder::new("wide", 4);
    let src = b.param(Ty::F32, 20);
    let out = b.param(Ty::F32, 20);
    let s = b.shared(Ty::F32, 20);
    let at = b.let_(Expr::ThreadId * 4 + offset);
    b.async_copy((s, at.clone()), (src, at), Expr::ThreadId.ne(2), width);
    b.async_commit();
    b.async_wait(0);
    b.barrier();
    for i in 0..4 {
        let at = Expr::ThreadId * 4 + i;
        b.store(out, at.clone(), Expr::load(s, at));
    }
    b.finish()
}

#[test]
fn wide_async_copies() {
    let k = wide_copy(0, 4).into_checked().unwrap();
    check_mlir(&k, "wide");
    let src: Vec<f32> = (0..20).map(|i| i as f32).collect();
    let mut bufs = vec![KirBuffer::F32(src.clone()), KirBuffer::F32(vec![-1.0; 20])];
    run_kernel(&k, 1, &mut bufs).unwrap();
    let want: Vec<f32> = (0..20)
        .map(|i| match i {
            8..12 => 0.0,
            16.. => -1.0,
            _ => i as f32,
        })
        .collect();
    assert_eq!(f32s(&bufs[1]), want.as_slice());
    assert!(
        gpu_module(&k, "wide").contains("nvgpu.device_async_copy %arg0[%v0], %shared0[%v0], 4,")
    );
    // 16 bytes at a subscript that is not a multiple of 4: the hardware would fault.
    let k = wide_copy(1, 4).into_checked().unwrap();
    let err = run_kernel(&k, 1, &mut bufs).unwrap_err();
    assert!(
        err.0.contains("16-byte async copy") && err.0.contains("not aligned"),
        "{err}"
    );
    // Only 4- and 16-byte copies exist.
    let err = wide_copy(0, 3).check().map(|_| ()).unwrap_err();
    assert!(err.0.contains("only 1 or 4"), "{err}");
}

#[test]
fn unwritten_shared_memory_reads_nan() {
    let mut b = KernelBuilder::new("uninit", 4);
    let out = b.param(Ty::F32, 8);
    let sh = b.shared(Ty::F32, 4);
    b.if_(Expr::BlockId.eq(0), |b| {
        b.store(sh, Expr::ThreadId, Expr::f32(1.0))
    });
    b.barrier();
    b.store(
        out,
        Expr::BlockId * 4 + Expr::ThreadId,
        Expr::load(sh, Expr::ThreadId),
    );
    let k = b.finish().into_checked().unwrap();
    let mut bufs = vec![KirBuffer::F32(vec![0.0; 8])];
    run_kernel(&k, 2, &mut bufs).unwrap();
    let o = f32s(&bufs[0]);
    assert_eq!(&o[..4], &[1.0; 4]);
    assert!(o[4..].iter().all(|v| v.is_nan()), "{o:?}");
}

/// A block-level value read from a parameter the same stretch stores to is not hoisted:
/// each thread reads after its own store.
#[test]
fn uniform_reads_after_stores_stay_in_the_thread_loop() {
    let mut b = KernelBuilder::new("hoist", 4);
    let buf = b.param(Ty::F32, 4);
    let out = b.param(Ty::F32, 4);
    let scale = b.let_(Expr::load(buf, 3));
    b.store(buf, 0, Expr::f32(5.0));
    let first = b.let_(Expr::load(buf, 0));
    b.store(out, Expr::ThreadId, first * scale);
    let k = b.finish().into_checked().unwrap();
    let mut bufs = vec![
        KirBuffer::F32(vec![1.0, 1.0, 1.0, 2.0]),
        KirBuffer::F32(vec![0.0; 4]),
    ];
    run_kernel(&k, 1, &mut bufs).unwrap();
    assert_eq!(f32s(&bufs[1]), &[10.0; 4]);
    let host = host_module(&k, "hoist");
    let thread_loop = host.find("scf.for %tid0").unwrap();
    let load3 = host.find("memref.load %arg0[%c3]").unwrap();
    let load0 = host.find("memref.load %arg0[%c0]").unwrap();
    assert!(load3 < thread_loop && thread_loop < load0, "{host}");
    check_mlir(&k, "hoist");
}

/// A uniform conditional that contains a barrier runs once per block with its branches
/// split at the barrier.
#[test]
fn uniform_conditional_with_a_barrier() {
    let mut b = KernelBuilder::new("rotate", 8);
    let flag = b.param(Ty::I32, 1);
    let x = b.param(Ty::F32, 16);
    let out = b.param(Ty::F32, 16);
    let sh = b.shared(Ty::F32, 8);
    let on = b.let_(Expr::load(flag, 0).ne(0i32));
    b.if_else(
        on,
        |b| {
            let i = b.let_(Expr::BlockId * 8 + Expr::ThreadId);
            b.store(sh, Expr::ThreadId, Expr::load(x, i));
            b.barrier();
            let next = (Expr::ThreadId + 1) % 8;
            let at = b.let_(Expr::BlockId * 8 + Expr::ThreadId);
            b.store(out, at, Expr::load(sh, next));
        },
        |b| {
            let at = b.let_(Expr::BlockId * 8 + Expr::ThreadId);
            b.store(out, at.clone(), Expr::load(x, at));
        },
    );
    let k = b.finish().into_checked().unwrap();
    let xs: Vec<f32> = (0..16).map(|v| v as f32).collect();
    for on in [0, 1] {
        let mut bufs = vec![
            KirBuffer::I32(vec![on]),
            KirBuffer::F32(xs.clone()),
            KirBuffer::F32(vec![0.0; 16]),
        ];
        run_kernel(&k, 2, &mut bufs).unwrap();
        let want: Vec<f32> = (0..16)
            .map(|i| {
                if on == 1 {
                    xs[i / 8 * 8 + (i + 1) % 8]
                } else {
                    xs[i]
                }
            })
            .collect();
        assert_eq!(f32s(&bufs[2]), &want[..], "flag {on}");
    }
    // The thread-dependent `i` dies on entering the conditional: the checker rejects it.
    let mut b = KernelBuilder::new("bad", 8);
    let out = b.param(Ty::F32, 16);
    let i = b.let_(Expr::BlockId * 8 + Expr::ThreadId);
    b.if_(Expr::BlockId.lt(1), |b| {
        b.store(out, i.clone(), Expr::f32(0.0));
        b.barrier();
    });
    assert!(b
        .finish()
        .into_checked()
        .and_then(|k| run_kernel(&k, 2, &mut [KirBuffer::F32(vec![0.0; 16])]))
        .is_err());
    check_mlir(&k, "rotate");
}

/// A block-level value that must stay in its thread loop (it reads a parameter stored
/// before it in the same stretch) cannot be used after a barrier on the host: the checker
/// refuses the kernel (it runs thread-loop fission), rather than printing invalid MLIR.
#[test]
fn values_that_cannot_cross_a_barrier_are_errors() {
    let mut b = KernelBuilder::new("cross", 4);
    let buf = b.param(Ty::F32, 4);
    b.store(buf, 0, Expr::f32(5.0));
    let first = b.let_(Expr::load(buf, 0));
    b.barrier();
    b.store(buf, Expr::ThreadId, first);
    let err = b.finish().check().unwrap_err();
    assert!(err.0.contains("stretch"), "{err}");
}
