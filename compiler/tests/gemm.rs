//! Convolutions as tiled implicit GEMMs (codegen::gemm), in every precision (f32 FMA, TF32
//! and BF16 tensor cores, with and without asynchronous copies): the kernels run in the KIR
//! interpreter and match the reference convolutions on odd shapes (for tensor cores, the
//! reference on rounded operands), store every result element exactly once, pass the KIR
//! checker, and compile to PTX that uses no local memory (and the precision's `mma.sync`,
//! and `cp.async` for operands copied asynchronously).

use std::convert::Infallible;
use std::path::PathBuf;

mod common;

use common::{llvm_tool, mlir_opt, run_tool};

use rfnc_compiler::codegen::check::CheckedKernel;
use rfnc_compiler::codegen::gemm::{
    conv_kernel_tiled, ConvIo, ConvKind, ConvOperand, ConvProblem, Precision, Tile, BLOCK,
    FILL_BLOCKS,
};
use rfnc_compiler::codegen::kir::{Buf, Expr, KernelBuilder, Ty};
use rfnc_compiler::codegen::kir_interp::{run_kernel, KirBuffer};
use rfnc_compiler::codegen::mlir_text::{gpu_module, GPU_PIPELINE};
use rfnc_compiler::codegen::semantics::rounding;
use rfnc_compiler::interp::kernels::{conv2d, conv2d_grad_input, conv2d_grad_weight, ConvGeometry};
use rfnc_compiler::interp::Tensor;
use rfnc_compiler::rng::splitmix64;

/// Deterministic numbers in [-1, 1).
fn numbers(n: u64, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| (splitmix64(seed ^ i) >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        .collect()
}

/// One convolution geometry (the output shape follows).
#[derive(Clone, Copy, Debug)]
struct Case {
    x: [u64; 4],
    w: [u64; 4],
    stride: [u64; 2],
    pad: [u64; 4],
    dilation: [u64; 2],
    groups: u64,
}

impl Case {
    fn y(&self) -> [u64; 4] {
        let out = |size: u64, k: u64, s: u64, d: u64, lo: u64, hi: u64| {
            (size + lo + hi - d * (k - 1) - 1) / s + 1
        };
        [
            self.x[0],
            self.w[0],
            out(
                self.x[2],
                self.w[2],
                self.stride[0],
                self.dilation[0],
                self.pad[0],
                self.pad[2],
            ),
            out(
                self.x[3],
                self.w[3],
                self.stride[1],
                self.dilation[1],
                self.pad[1],
                self.pad[3],
            ),
        ]
    }

    fn problem(&self, kind: ConvKind, bias: bool) -> ConvProblem {
        ConvProblem {
            kind,
            x: self.x,
            w: self.w,
            y: self.y(),
            stride: self.stride,
            pad: self.pad,
            dilation: self.dilation,
            groups: self.groups,
            bias,
        }
    }

    fn geometry(&self) -> ConvGeometry {
        ConvGeometry {
            stride: self.stride,
            pad: self.pad,
            dilation: self.dilation,
            groups: self.groups,
        }
    }
}

fn len(d: [u64; 4]) -> u64 {
    d.iter().product()
}

/// Plain loads from the params, and a store that also counts the writes of each element.
struct PlainIo {
    b: KernelBuilder,
    x: Buf,
    w: Buf,
    bias: Buf,
    dy: Buf,
    out: Buf,
    count: Buf,
    /// The operands tensor-core kernels may copy asynchronously.
    plain: &'static [ConvOperand],
}

impl PlainIo {
    fn buf(&self, op: ConvOperand) -> Buf {
        match op {
            ConvOperand::X => self.x,
            ConvOperand::W => self.w,
            ConvOperand::Dy => self.dy,
            ConvOperand::Bias => self.bias,
        }
    }
}

impl ConvIo for PlainIo {
    type Error = Infallible;

    fn builder(&mut self) -> &mut KernelBuilder {
        &mut self.b
    }

    fn load(&mut self, op: ConvOperand, idx: Expr) -> Result<Expr, Infallible> {
        let buf = self.buf(op);
        Ok(self.b.let_(Expr::load(buf, idx)))
    }

    fn plain(&mut self, op: ConvOperand) -> Option<Buf> {
        self.plain.contains(&op).then(|| self.buf(op))
    }

    fn store(&mut self, idx: Expr, v: Expr) -> Result<(), Infallible> {
        let (out, count) = (self.out, self.count);
        self.b.store(out, idx.clone(), v);
        self.b.store(count, idx.clone(), Expr::load(count, idx) + 1);
        Ok(())
    }
}

/// How a kernel is built: its precision, the operands it may copy asynchronously, and its
/// tile.
type Variant = (Precision, &'static [ConvOperand], Tile);

const fn tile(m: u64, n: u64, stages: u64) -> Tile {
    Tile {
        m,
        n,
        k: 16,
        stages,
    }
}

/// Every precision; tensor cores with every operand copied asynchronously, none, and each
/// mix, on the largest and smaller tiles (32 wide: half the threads copy 16 bytes each),
/// 2, 3 and 4 stages.
const VARIANTS: [Variant; 6] = [
    (Precision::F32, &[], Tile::F32),
    (
        Precision::Tf32,
        &[ConvOperand::X, ConvOperand::W, ConvOperand::Dy],
        tile(128, 128, 2),
    ),
    (Precision::Tf32, &[], tile(64, 64, 3)),
    (
        Precision::Bf16,
        &[ConvOperand::W, ConvOperand::Dy],
        tile(32, 64, 3),
    ),
    (Precision::Bf16, &[ConvOperand::X], tile(64, 32, 4)),
    (
        Precision::Tf32,
        &[ConvOperand::W, ConvOperand::Dy],
        tile(32, 32, 3),
    ),
];

/// The kernel with params x, w, bias, dy, out (f32) and count (i32): plain loads, and a
/// store that also counts the writes of each element.
fn build(p: &ConvProblem, (precision, plain, tile): Variant) -> (CheckedKernel, u64) {
    let result = match p.kind {
        ConvKind::Forward => p.y,
        ConvKind::GradInput => p.x,
        ConvKind::GradWeight => p.w,
    };
    let mut b = KernelBuilder::new("conv", BLOCK);
    let x = b.param(Ty::F32, len(p.x));
    let w = b.param(Ty::F32, len(p.w));
    let bias = b.param(Ty::F32, p.w[0]);
    let dy = b.param(Ty::F32, len(p.y));
    let out = b.param(Ty::F32, len(result));
    let count = b.param(Ty::I32, len(result));
    let mut io = PlainIo {
        b,
        x,
        w,
        bias,
        dy,
        out,
        count,
        plain,
    };
    let Ok(grid) = conv_kernel_tiled(&mut io, p, precision, tile);
    let k = io.b.finish();
    assert_eq!(k.check().map(|_| ()), Ok(()), "{:?}", p);
    let k = k.into_checked().expect("checked");
    assert_eq!(grid, p.grid(tile));
    (k, grid)
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The reference result on `(x, w, bias, dy)`.
fn reference(case: &Case, kind: ConvKind, bias: bool, data: [&[f64]; 4]) -> Vec<f64> {
    let t = |d: [u64; 4], v: &[f64]| Tensor::new(d.to_vec(), v.to_vec());
    let g = case.geometry();
    let (x, w, dy) = (t(case.x, data[0]), t(case.w, data[1]), t(case.y(), data[3]));
    let b = Tensor::new(vec![case.w[0]], data[2].to_vec());
    match kind {
        ConvKind::Forward => conv2d(&x, &w, bias.then_some(&b), &g, &case.y()).data,
        ConvKind::GradInput => conv2d_grad_input(&dy, &w, &g, &case.x).data,
        ConvKind::GradWeight => conv2d_grad_weight(&x, &dy, &g, &case.w).data,
    }
}

/// Runs one kind on one case in the interpreter and checks it against the reference (on
/// the operands rounded as the precision multiplies them).
fn check(name: &str, case: &Case, kind: ConvKind, bias: bool, variant: Variant) {
    let precision = variant.0;
    let name = &format!(
        "{name} {} (async {:?}, {}x{}, {} stages)",
        precision.name(),
        variant.1,
        variant.2.m,
        variant.2.n,
        variant.2.stages
    );
    let p = case.problem(kind, bias);
    let (k, grid) = build(&p, variant);
    let seed = splitmix64(name.len() as u64 ^ (kind as u64) << 8);
    let x = numbers(len(case.x), seed);
    let w = numbers(len(case.w), seed ^ 1);
    let bv = numbers(case.w[0], seed ^ 2);
    let dy = numbers(len(case.y()), seed ^ 3);
    let out_len = match kind {
        ConvKind::Forward => len(case.y()),
        ConvKind::GradInput => len(case.x),
        ConvKind::GradWeight => len(case.w),
    } as usize;
    let mut params = vec![
        KirBuffer::F32(x.clone()),
        KirBuffer::F32(w.clone()),
        KirBuffer::F32(bv.clone()),
        KirBuffer::F32(dy.clone()),
        KirBuffer::F32(vec![f32::NAN; out_len]),
        KirBuffer::I32(vec![0; out_len]),
    ];
    run_kernel(&k, grid, &mut params).unwrap_or_else(|e| panic!("{name} {kind:?}: {e}"));
    let got = params[4].as_f32().expect("f32").to_vec();
    let count = params[5].as_i32().expect("i32");
    let bad: Vec<usize> = (0..out_len).filter(|&i| count[i] != 1).collect();
    assert!(
        bad.is_empty(),
        "{name} {kind:?}: {} elements not written exactly once (first {:?}: {})",
        bad.len(),
        bad[0],
        count[bad[0]]
    );

    let operand = |v: &[f32]| match rounding(precision) {
        None => to64(v),
        Some(round) => v.iter().map(|&x| round(x) as f64).collect(),
    };
    let data = [operand(&x), operand(&w), to64(&bv), operand(&dy)];
    let want = reference(case, kind, bias, [&data[0], &data[1], &data[2], &data[3]]);
    // The sum of the magnitudes of each element's terms bounds its rounding error.
    let abs: Vec<Vec<f64>> = data
        .iter()
        .map(|v| v.iter().map(|x| x.abs()).collect())
        .collect();
    let scale = reference(case, kind, bias, [&abs[0], &abs[1], &abs[2], &abs[3]]);
    let mut worst = 0.0f64;
    for i in 0..out_len {
        let err = (got[i] as f64 - want[i]).abs() / scale[i].max(1e-30);
        assert!(
            err < 1e-4 || (got[i] as f64 - want[i]).abs() < 1e-30,
            "{name} {kind:?}: element {i}: got {} want {} (relative {err:e})",
            got[i],
            want[i]
        );
        worst = worst.max(err);
    }
    let peak = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let max_err = (0..out_len).fold(0.0f64, |m, i| m.max((got[i] as f64 - want[i]).abs()));
    assert!(
        max_err <= 1e-4 * peak.max(1e-30),
        "{name} {kind:?}: {max_err} vs peak {peak}"
    );
    eprintln!(
        "{name} {kind:?}: M,N,K = {:?}, grid {grid}, worst relative error {worst:.2e}",
        p.gemm()
    );
}

fn check_all(name: &str, case: Case) {
    for variant in VARIANTS {
        check(name, &case, ConvKind::Forward, true, variant);
        check(name, &case, ConvKind::Forward, false, variant);
        check(name, &case, ConvKind::GradInput, false, variant);
        check(name, &case, ConvKind::GradWeight, false, variant);
    }
}

fn case(x: [u64; 4], w: [u64; 4]) -> Case {
    Case {
        x,
        w,
        stride: [1, 1],
        pad: [0; 4],
        dilation: [1, 1],
        groups: 1,
    }
}

#[test]
fn conv3x3_same_padding_many_tiles() {
    // M = 70 (two row tiles), N = 2*9*11 = 198 (four column tiles), K = 45 (three slices).
    let c = Case {
        pad: [1, 1, 1, 1],
        ..case([2, 5, 9, 11], [70, 5, 3, 3])
    };
    check_all("3x3", c);
}

#[test]
fn conv3x3_stride2() {
    let c = Case {
        stride: [2, 2],
        pad: [1, 1, 1, 1],
        ..case([2, 3, 13, 10], [5, 3, 3, 3])
    };
    check_all("3x3 stride 2", c);
}

#[test]
fn asymmetric_pads_and_dilation() {
    let c = Case {
        pad: [0, 2, 1, 0],
        dilation: [2, 2],
        ..case([2, 4, 12, 7], [6, 4, 3, 3])
    };
    check_all("asymmetric dilated", c);
    let c = Case {
        pad: [2, 1, 0, 3],
        stride: [2, 1],
        dilation: [1, 2],
        ..case([1, 3, 11, 9], [7, 3, 3, 2])
    };
    check_all("asymmetric mixed", c);
    // Bottom and right pads beyond the taps: output rows that read only padding.
    let c = Case {
        pad: [0, 0, 3, 4],
        ..case([2, 2, 5, 6], [3, 2, 2, 2])
    };
    check_all("trailing padding", c);
}

#[test]
fn grouped() {
    let c = Case {
        stride: [2, 2],
        pad: [2, 1, 2, 0],
        dilation: [2, 2],
        groups: 2,
        ..case([2, 6, 11, 9], [10, 3, 3, 3])
    };
    check_all("groups 2", c);
    // Depthwise.
    let c = Case {
        pad: [1, 1, 1, 1],
        groups: 4,
        ..case([2, 4, 7, 8], [4, 1, 3, 3])
    };
    check_all("depthwise", c);
    // Groups with several row tiles each.
    let c = Case {
        groups: 2,
        ..case([1, 4, 5, 3], [140, 2, 1, 1])
    };
    check_all("groups 2 wide", c);
}

#[test]
fn pointwise() {
    // K = 70: not a multiple of the slice.
    check_all("1x1", case([2, 70, 7, 9], [3, 70, 1, 1]));
    // Stride larger than the kernel: the data gradient has rows no tap reaches.
    let c = Case {
        stride: [3, 2],
        ..case([2, 5, 10, 7], [65, 5, 1, 1])
    };
    check_all("1x1 stride 3x2", c);
}

#[test]
fn conv7x7_stride2() {
    // K = 3*49 = 147; the weight gradient's K = 2*10*10 = 200.
    let c = Case {
        stride: [2, 2],
        pad: [3, 3, 3, 3],
        ..case([2, 3, 19, 19], [8, 3, 7, 7])
    };
    check_all("7x7 stride 2", c);
}

#[test]
fn large_k_weight_gradient() {
    // The weight gradient of a 3x3 conv over a batch of 17x17 images: K = 578.
    let c = Case {
        pad: [1, 1, 1, 1],
        ..case([2, 3, 17, 17], [4, 3, 3, 3])
    };
    for variant in VARIANTS {
        check("large K", &c, ConvKind::GradWeight, false, variant);
    }
}

#[test]
fn exact_tiles() {
    // M, N and K multiples of the 64 x 64 tiles in every kind: no bounds checks are emitted
    // there.
    check_all("exact", case([2, 16, 8, 8], [64, 16, 1, 1]));
}

#[test]
fn grid_and_problem_sizes() {
    let c = Case {
        groups: 2,
        pad: [1, 1, 1, 1],
        ..case([2, 6, 9, 11], [130, 3, 3, 3])
    };
    let p = c.problem(ConvKind::Forward, true);
    assert_eq!(p.gemm(), (65, 2 * 9 * 11, 27));
    assert_eq!(p.grid(Tile::F32), 2 * 2 * 4);
    assert_eq!(p.grid(tile(32, 64, 3)), 2 * 3 * 4);
    let p = c.problem(ConvKind::GradInput, false);
    assert_eq!(p.gemm(), (3, 2 * 9 * 11, 65 * 9));
    let p = c.problem(ConvKind::GradWeight, false);
    assert_eq!(p.gemm(), (65, 27, 2 * 9 * 11));
    assert_eq!(p.grid(Tile::F32), 2 * 2);
}

#[test]
fn contiguous_operands() {
    // 16-byte copies (where copied asynchronously): the weights of the forward conv
    // (K = 12, 36: multiples of 4 but not of the slice) and dy of the weight gradient (36
    // and 60 pixels per image) along k; x and dy of the 1x1 conv along n; with edge tiles.
    check_all("wide 1x1", case([2, 12, 6, 6], [70, 12, 1, 1]));
    let c = Case {
        pad: [1, 1, 1, 1],
        ..case([2, 4, 6, 10], [40, 4, 3, 3])
    };
    check_all("wide 3x3", c);
    // Grouped 1x1: 8 input channels per group (the data gradient's M, along which its
    // weights are copied), 4 output channels per group.
    let c = Case {
        groups: 2,
        ..case([1, 16, 4, 4], [8, 8, 1, 1])
    };
    check_all("wide grouped", c);
}

#[test]
fn every_tensor_core_tile() {
    // Each tile of both precisions, every operand copied asynchronously, on a shape with
    // edge tiles in M, N and K.
    let c = Case {
        pad: [1, 1, 1, 1],
        ..case([2, 5, 9, 11], [70, 5, 3, 3])
    };
    let all: &'static [ConvOperand] = &[ConvOperand::X, ConvOperand::W, ConvOperand::Dy];
    for precision in [Precision::Tf32, Precision::Bf16] {
        for t in Tile::tensor_core(precision) {
            for kind in [ConvKind::Forward, ConvKind::GradInput, ConvKind::GradWeight] {
                check("tile", &c, kind, true, (precision, all, t));
            }
        }
    }
}

#[test]
fn tile_choice() {
    let conv = |x: [u64; 4], w: [u64; 4]| case(x, w).problem(ConvKind::Forward, false);
    for precision in [Precision::Tf32, Precision::Bf16] {
        let tiles = Tile::tensor_core(precision);
        // Shared memory within the static limit; as many stages as fit, at most 3.
        for t in &tiles {
            // k-major (pitch m + 8) or mn-major (pitch k + 4) shared tiles.
            let side = |e: u64| (t.k * (e + 8)).max(e * (t.k + 4));
            let bytes = t.stages * (side(t.m) + side(t.n)) * 4;
            assert!(bytes <= 48 * 1024 && t.stages >= 2, "{t:?}: {bytes} bytes");
        }
        assert_eq!(tiles[0], tile(128, 128, 2));
        assert!(tiles.contains(&tile(64, 64, 3)));
        let choose = |p: &ConvProblem| Tile::choose(p, precision);
        // A large layer (ResNet layer 1 at batch 8, 512x512: M = 256, N = 8 * 128 * 128).
        let big = conv([8, 64, 128, 128], [256, 64, 1, 1]);
        assert_eq!(choose(&big), tiles[0]);
        // M = 21 classes: 32 rows, the widest tile that still fills the GPU.
        let classes = conv([1, 256, 128, 128], [21, 256, 3, 3]);
        let t = choose(&classes);
        assert_eq!((t.m, t.n), (32, 64));
        assert!(classes.grid(t) >= FILL_BLOCKS);
        // Batch 1 at 1/32 of 512 (16 x 16 pixels), 512 channels: no tile fills the GPU,
        // the one with the most blocks is chosen.
        let small = conv([1, 2048, 16, 16], [512, 2048, 1, 1]);
        let t = choose(&small);
        assert_eq!((t.m, t.n), (32, 32));
        assert!(small.grid(t) < FILL_BLOCKS);
        // M = 512, N = 4096: 128 x 128 tiles make 128 blocks, too few; 128 x 64 fill it.
        let mid = conv([1, 512, 64, 64], [512, 512, 1, 1]);
        let t = choose(&mid);
        assert_eq!((t.m, t.n), (128, 64));
        assert!(mid.grid(t) >= FILL_BLOCKS && mid.grid(tiles[0]) < FILL_BLOCKS);
    }
    let any = conv([8, 64, 128, 128], [256, 64, 1, 1]);
    assert_eq!(Tile::choose(&any, Precision::F32), Tile::F32);
}

// ----- PTX --------------------------------------------------------------------------------

/// The GPU form of each kind and precision lowers through NVVM and LLVM to PTX for sm_80
/// and sm_90 whose register tiles, fragments, staging registers and decoded coordinates all
/// stay in registers: no local memory (`.local`, a local depot) at all; TF32 kernels
/// multiply with `mma.sync` on operands rounded by `cvt.rna.tf32.f32`, f32 ones never do;
/// operands read plainly arrive by `cp.async`.
#[test]
fn ptx_uses_no_local_memory() {
    let mlir_opt = mlir_opt();
    let translate = llvm_tool("mlir-translate", None);
    let opt = llvm_tool("opt", None);
    let llc = llvm_tool("llc", None);
    // No operand of any kind is contiguous here (4-byte copies); every operand of every
    // kind is in the 1x1 convolution (16-byte copies).
    let strided = Case {
        stride: [2, 2],
        pad: [1, 1, 1, 1],
        groups: 2,
        ..case([2, 6, 13, 11], [70, 3, 3, 3])
    };
    let pointwise = case([2, 16, 8, 8], [64, 16, 1, 1]);
    let dir = tempfile::tempdir().expect("temp dir");
    let kinds = [ConvKind::Forward, ConvKind::GradInput, ConvKind::GradWeight];
    let all = [(strided, false), (pointwise, true)]
        .into_iter()
        .flat_map(|c| kinds.into_iter().map(move |k| (c, k)))
        .flat_map(|ck| VARIANTS.into_iter().enumerate().map(move |v| (ck, v)));
    for (((c, wide), kind), (i, variant)) in all {
        let precision = variant.0;
        let (k, _) = build(&c.problem(kind, kind == ConvKind::Forward), variant);
        let name = format!("{kind:?}_{}_{i}_{}", precision.name(), c.w[2]).to_lowercase();
        let gpu = gpu_module(&k, &name);
        let path = |ext: &str| dir.path().join(format!("{name}.{ext}"));
        let p = |ext: &str| path(ext).to_string_lossy().into_owned();
        std::fs::write(path("mlir"), gpu).expect("write");
        run_tool(
            &mlir_opt,
            &[
                &format!("--pass-pipeline={GPU_PIPELINE}"),
                &p("mlir"),
                "-o",
                &p("nvvm.mlir"),
            ],
            &name,
        );
        // The device module alone, as LLVM IR.
        let nvvm = std::fs::read_to_string(path("nvvm.mlir")).expect("read");
        let start = nvvm.find("gpu.module").expect("gpu.module");
        let body = &nvvm[nvvm[start..].find('{').expect("{") + start + 1..];
        let end = body.rfind('}').expect("}");
        let inner = &body[..end];
        let inner = &inner[..inner.rfind('}').expect("}")];
        std::fs::write(path("dev.mlir"), format!("module {{\n{inner}\n}}\n")).expect("write");
        run_tool(
            &translate,
            &["--mlir-to-llvmir", &p("dev.mlir"), "-o", &p("ll")],
            &name,
        );
        for sm in ["sm_80", "sm_90"] {
            let ptx = path(&format!("{sm}.ptx"));
            run_tool(
                &opt,
                &[
                    "-O3",
                    "-mtriple=nvptx64-nvidia-cuda",
                    &format!("-mcpu={sm}"),
                    &p("ll"),
                    "-o",
                    &p("opt.bc"),
                ],
                &name,
            );
            run_tool(
                &llc,
                &[
                    "-O3",
                    "-mtriple=nvptx64-nvidia-cuda",
                    &format!("-mcpu={sm}"),
                    &p("opt.bc"),
                    "-o",
                    &ptx.to_string_lossy(),
                ],
                &name,
            );
            let text = std::fs::read_to_string(&ptx).expect("ptx");
            if let Some(keep) = std::env::var_os("RFNC_GEMM_PTX_DIR") {
                let keep = PathBuf::from(keep);
                std::fs::copy(&ptx, keep.join(format!("{name}.{sm}.ptx"))).expect("copy");
                std::fs::copy(path("ll"), keep.join(format!("{name}.ll"))).expect("copy");
            }
            assert!(text.contains(".entry"), "{name} {sm}: no kernel in the PTX");
            assert!(
                text.contains("bar.sync"),
                "{name} {sm}: no barrier in the PTX"
            );
            // Every shared array 16-byte aligned (16-byte copies land there).
            assert!(
                text.lines()
                    .filter(|l| l.contains(".shared .align"))
                    .all(|l| l.contains(".shared .align 16 ")),
                "{name} {sm}: shared arrays not 16-byte aligned"
            );
            assert!(
                !text.contains(".local") && !text.contains("__local_depot"),
                "{name} {sm}: the PTX uses local memory:\n{text}"
            );
            let tf32 = [
                "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
                "cvt.rna.tf32.f32",
            ];
            let bf16 = ["mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"];
            for (op, wanted) in tf32
                .iter()
                .map(|op| (op, precision == Precision::Tf32))
                .chain(bf16.iter().map(|op| (op, precision == Precision::Bf16)))
            {
                assert_eq!(text.contains(op), wanted, "{name} {sm}: `{op}` in the PTX");
            }
            // (m/32) x (n/32) mma per k-step, 2 (BF16: 1) k-steps per slice of 16 (LLVM
            // may unroll the K loop).
            let mma = text.matches("mma.sync").count();
            let t = variant.2;
            let steps = if precision == Precision::Bf16 { 1 } else { 2 };
            let per_slice = ((t.m / 32) * (t.n / 32) * steps) as usize;
            assert!(mma.is_multiple_of(per_slice), "{name} {sm}: {mma} mma.sync");
            // Operands the kernel reads plainly are copied by zero-filling cp.async, whose
            // groups a tensor-core kernel commits and waits for in every iteration.
            let operands = match kind {
                ConvKind::Forward => [ConvOperand::W, ConvOperand::X],
                ConvKind::GradInput => [ConvOperand::W, ConvOperand::Dy],
                ConvKind::GradWeight => [ConvOperand::Dy, ConvOperand::X],
            };
            let copied: Vec<usize> = (0..2)
                .filter(|&s| precision != Precision::F32 && variant.1.contains(&operands[s]))
                .collect();
            // 16 bytes at a time where the operands are contiguous, else 4; in the 1x1
            // conv the forward weights and both operands of the weight gradient are
            // contiguous along k, which BF16 kernels copy 4 bytes at a time (they keep
            // their shared tiles k-major).
            let along_k = |s: usize| match kind {
                ConvKind::Forward => s == 0,
                ConvKind::GradInput => false,
                ConvKind::GradWeight => true,
            };
            let width = |s: usize| {
                if wide && !(along_k(s) && precision == Precision::Bf16) {
                    16
                } else {
                    4
                }
            };
            let sized = |bytes: usize| {
                text.lines()
                    .any(|l| l.contains("cp.async.") && l.contains(&format!("], {bytes},")))
            };
            for bytes in [4, 16] {
                assert_eq!(
                    sized(bytes),
                    copied.iter().any(|&s| width(s) == bytes),
                    "{name} {sm}: {bytes}-byte copies"
                );
            }
            let groups = precision != Precision::F32;
            assert_eq!(text.contains("cp.async.wait_group"), groups, "{name} {sm}");
        }
    }
}
