//! rfnc-codegen end to end on hand-written kernels of the two forms the compiler emits:
//! PTX with `.entry` points that ptxas assembles without spills for sm_80 and sm_90, host
//! bitcode that the LLVM JIT runs to the right numbers, errors instead of panics on bad
//! MLIR, and a cache that answers the second time.
//!
//! ptxas and libdevice come from `$RFNC_PTXAS` / `$RFNC_LIBDEVICE` (`.cache/env.sh`); when
//! they are missing the checks that need them are skipped with a note, unless
//! `RFNC_REQUIRE_TOOLS=1`, which makes a missing tool a failure.

use std::time::Instant;

use inkwell::context::Context;
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::module::Module;
use inkwell::OptimizationLevel;
use rfnc_codegen::*;

/// One sample kernel: both forms, and what it computes (input -> expected output).
struct Sample {
    name: &'static str,
    gpu: &'static str,
    host: &'static str,
    n_in: usize,
    n_out: usize,
    blocks: i64,
    reference: fn(&[f32]) -> Vec<f32>,
    uses_libdevice: bool,
}

const RELU_GPU: &str = r#"
module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @relu_0123abcd(%arg0: memref<1000xf32>, %arg1: memref<1000xf32>) kernel attributes {known_block_size = array<i32: 256, 1, 1>} {
      %tid = gpu.thread_id x
      %bid = gpu.block_id x
      %c256 = arith.constant 256 : index
      %c1000 = arith.constant 1000 : index
      %cst0 = arith.constant 0.0 : f32
      %0 = arith.muli %bid, %c256 : index
      %v0 = arith.addi %0, %tid : index
      %1 = arith.cmpi ult, %v0, %c1000 : index
      scf.if %1 {
        %2 = memref.load %arg0[%v0] : memref<1000xf32>
        %3 = arith.maximumf %2, %cst0 : f32
        memref.store %3, %arg1[%v0] : memref<1000xf32>
      }
      gpu.return
    }
  }
}
"#;

const RELU_HOST: &str = r#"
module {
  func.func @relu_0123abcd(%arg0: memref<1000xf32>, %arg1: memref<1000xf32>, %first_block: index, %end_block: index) {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c256 = arith.constant 256 : index
    %c1000 = arith.constant 1000 : index
    %cst0 = arith.constant 0.0 : f32
    scf.for %bid = %first_block to %end_block step %c1 {
      scf.for %tid = %c0 to %c256 step %c1 {
        %0 = arith.muli %bid, %c256 : index
        %v0 = arith.addi %0, %tid : index
        %1 = arith.cmpi ult, %v0, %c1000 : index
        scf.if %1 {
          %2 = memref.load %arg0[%v0] : memref<1000xf32>
          %3 = arith.maximumf %2, %cst0 : f32
          memref.store %3, %arg1[%v0] : memref<1000xf32>
        }
      }
    }
    return
  }
}
"#;

fn relu_ref(x: &[f32]) -> Vec<f32> {
    x.iter().map(|v| v.max(0.0)).collect()
}

/// Each thread squares 4 inputs into a private array (constant indices), sums them into
/// shared memory; after a barrier it writes its right neighbour's sum (cyclically).
const NEIGHBOUR_GPU: &str = r#"
module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @neighbour_sum_9f(%arg0: memref<2048xf32>, %arg1: memref<512xf32>) workgroup(%shared0: memref<256xf32, #gpu.address_space<workgroup>>) kernel attributes {known_block_size = array<i32: 256, 1, 1>} {
      %tid = gpu.thread_id x
      %bid = gpu.block_id x
      %c0 = arith.constant 0 : index
      %c1 = arith.constant 1 : index
      %c2 = arith.constant 2 : index
      %c3 = arith.constant 3 : index
      %c4 = arith.constant 4 : index
      %c256 = arith.constant 256 : index
      %private0 = memref.alloca() : memref<4xf32>
      %0 = arith.muli %bid, %c256 : index
      %v0 = arith.addi %0, %tid : index
      %base = arith.muli %v0, %c4 : index
      %i0 = arith.addi %base, %c0 : index
      %i1 = arith.addi %base, %c1 : index
      %i2 = arith.addi %base, %c2 : index
      %i3 = arith.addi %base, %c3 : index
      %x0 = memref.load %arg0[%i0] : memref<2048xf32>
      %x1 = memref.load %arg0[%i1] : memref<2048xf32>
      %x2 = memref.load %arg0[%i2] : memref<2048xf32>
      %x3 = memref.load %arg0[%i3] : memref<2048xf32>
      %y0 = arith.mulf %x0, %x0 : f32
      %y1 = arith.mulf %x1, %x1 : f32
      %y2 = arith.mulf %x2, %x2 : f32
      %y3 = arith.mulf %x3, %x3 : f32
      memref.store %y0, %private0[%c0] : memref<4xf32>
      memref.store %y1, %private0[%c1] : memref<4xf32>
      memref.store %y2, %private0[%c2] : memref<4xf32>
      memref.store %y3, %private0[%c3] : memref<4xf32>
      %p0 = memref.load %private0[%c0] : memref<4xf32>
      %p1 = memref.load %private0[%c1] : memref<4xf32>
      %p2 = memref.load %private0[%c2] : memref<4xf32>
      %p3 = memref.load %private0[%c3] : memref<4xf32>
      %s01 = arith.addf %p0, %p1 : f32
      %s012 = arith.addf %s01, %p2 : f32
      %s = arith.addf %s012, %p3 : f32
      memref.store %s, %shared0[%tid] : memref<256xf32, #gpu.address_space<workgroup>>
      gpu.barrier
      %t1 = arith.addi %tid, %c1 : index
      %nb = arith.remui %t1, %c256 : index
      %r = memref.load %shared0[%nb] : memref<256xf32, #gpu.address_space<workgroup>>
      memref.store %r, %arg1[%v0] : memref<512xf32>
      gpu.return
    }
  }
}
"#;

const NEIGHBOUR_HOST: &str = r#"
module {
  func.func @neighbour_sum_9f(%arg0: memref<2048xf32>, %arg1: memref<512xf32>, %first_block: index, %end_block: index) {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c2 = arith.constant 2 : index
    %c3 = arith.constant 3 : index
    %c4 = arith.constant 4 : index
    %c256 = arith.constant 256 : index
    %shared0 = memref.alloca() : memref<256xf32>
    %private0 = memref.alloca() : memref<1024xf32>
    scf.for %bid = %first_block to %end_block step %c1 {
      scf.for %tid = %c0 to %c256 step %c1 {
        %0 = arith.muli %bid, %c256 : index
        %v0 = arith.addi %0, %tid : index
        %base = arith.muli %v0, %c4 : index
        %pb = arith.muli %tid, %c4 : index
        %i0 = arith.addi %base, %c0 : index
        %i1 = arith.addi %base, %c1 : index
        %i2 = arith.addi %base, %c2 : index
        %i3 = arith.addi %base, %c3 : index
        %x0 = memref.load %arg0[%i0] : memref<2048xf32>
        %x1 = memref.load %arg0[%i1] : memref<2048xf32>
        %x2 = memref.load %arg0[%i2] : memref<2048xf32>
        %x3 = memref.load %arg0[%i3] : memref<2048xf32>
        %y0 = arith.mulf %x0, %x0 : f32
        %y1 = arith.mulf %x1, %x1 : f32
        %y2 = arith.mulf %x2, %x2 : f32
        %y3 = arith.mulf %x3, %x3 : f32
        %q0 = arith.addi %pb, %c0 : index
        %q1 = arith.addi %pb, %c1 : index
        %q2 = arith.addi %pb, %c2 : index
        %q3 = arith.addi %pb, %c3 : index
        memref.store %y0, %private0[%q0] : memref<1024xf32>
        memref.store %y1, %private0[%q1] : memref<1024xf32>
        memref.store %y2, %private0[%q2] : memref<1024xf32>
        memref.store %y3, %private0[%q3] : memref<1024xf32>
        %p0 = memref.load %private0[%q0] : memref<1024xf32>
        %p1 = memref.load %private0[%q1] : memref<1024xf32>
        %p2 = memref.load %private0[%q2] : memref<1024xf32>
        %p3 = memref.load %private0[%q3] : memref<1024xf32>
        %s01 = arith.addf %p0, %p1 : f32
        %s012 = arith.addf %s01, %p2 : f32
        %s = arith.addf %s012, %p3 : f32
        memref.store %s, %shared0[%tid] : memref<256xf32>
      }
      scf.for %tid = %c0 to %c256 step %c1 {
        %0 = arith.muli %bid, %c256 : index
        %v0 = arith.addi %0, %tid : index
        %t1 = arith.addi %tid, %c1 : index
        %nb = arith.remui %t1, %c256 : index
        %r = memref.load %shared0[%nb] : memref<256xf32>
        memref.store %r, %arg1[%v0] : memref<512xf32>
      }
    }
    return
  }
}
"#;

fn neighbour_ref(x: &[f32]) -> Vec<f32> {
    let sums: Vec<f32> = x
        .chunks(4)
        .map(|c| c[0] * c[0] + c[1] * c[1] + c[2] * c[2] + c[3] * c[3])
        .collect();
    (0..512)
        .map(|i| {
            let (b, t) = (i / 256, i % 256);
            sums[b * 256 + (t + 1) % 256]
        })
        .collect()
}

/// softplus(x) = log(exp(x) + 1) with a bounds check: libdevice's expf and logf on the GPU.
const SOFTPLUS_GPU: &str = r#"
module attributes {gpu.container_module} {
  gpu.module @kernels {
    gpu.func @softplus_77(%arg0: memref<1000xf32>, %arg1: memref<1000xf32>) kernel attributes {known_block_size = array<i32: 128, 1, 1>} {
      %tid = gpu.thread_id x
      %bid = gpu.block_id x
      %c128 = arith.constant 128 : index
      %c1000 = arith.constant 1000 : index
      %cst1 = arith.constant 1.0 : f32
      %0 = arith.muli %bid, %c128 : index
      %v0 = arith.addi %0, %tid : index
      %1 = arith.cmpi ult, %v0, %c1000 : index
      scf.if %1 {
        %2 = memref.load %arg0[%v0] : memref<1000xf32>
        %3 = math.exp %2 : f32
        %4 = arith.addf %3, %cst1 : f32
        %5 = math.log %4 : f32
        memref.store %5, %arg1[%v0] : memref<1000xf32>
      }
      gpu.return
    }
  }
}
"#;

const SOFTPLUS_HOST: &str = r#"
module {
  func.func @softplus_77(%arg0: memref<1000xf32>, %arg1: memref<1000xf32>, %first_block: index, %end_block: index) {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c128 = arith.constant 128 : index
    %c1000 = arith.constant 1000 : index
    %cst1 = arith.constant 1.0 : f32
    scf.for %bid = %first_block to %end_block step %c1 {
      scf.for %tid = %c0 to %c128 step %c1 {
        %0 = arith.muli %bid, %c128 : index
        %v0 = arith.addi %0, %tid : index
        %1 = arith.cmpi ult, %v0, %c1000 : index
        scf.if %1 {
          %2 = memref.load %arg0[%v0] : memref<1000xf32>
          %3 = math.exp %2 : f32
          %4 = arith.addf %3, %cst1 : f32
          %5 = math.log %4 : f32
          memref.store %5, %arg1[%v0] : memref<1000xf32>
        }
      }
    }
    return
  }
}
"#;

fn softplus_ref(x: &[f32]) -> Vec<f32> {
    x.iter().map(|v| (v.exp() + 1.0).ln()).collect()
}

fn samples() -> Vec<Sample> {
    vec![
        Sample {
            name: "relu_0123abcd",
            gpu: RELU_GPU,
            host: RELU_HOST,
            n_in: 1000,
            n_out: 1000,
            blocks: 4,
            reference: relu_ref,
            uses_libdevice: false,
        },
        Sample {
            name: "neighbour_sum_9f",
            gpu: NEIGHBOUR_GPU,
            host: NEIGHBOUR_HOST,
            n_in: 2048,
            n_out: 512,
            blocks: 2,
            reference: neighbour_ref,
            uses_libdevice: false,
        },
        Sample {
            name: "softplus_77",
            gpu: SOFTPLUS_GPU,
            host: SOFTPLUS_HOST,
            n_in: 1000,
            n_out: 1000,
            blocks: 8,
            reference: softplus_ref,
            uses_libdevice: true,
        },
    ]
}

fn require_tools() -> bool {
    std::env::var("RFNC_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// The GPU target, or `None` (after a note) when libdevice is needed but missing.
fn target(sm: &str, needs_libdevice: bool) -> Option<GpuTarget> {
    let t = GpuTarget::from_env(sm);
    let present = t.libdevice.as_ref().is_some_and(|p| p.is_file());
    if needs_libdevice && !present {
        assert!(
            !require_tools(),
            "RFNC_REQUIRE_TOOLS=1 but RFNC_LIBDEVICE is not a file"
        );
        eprintln!("note: RFNC_LIBDEVICE not set or missing; skipping a libdevice check");
        return None;
    }
    Some(t)
}

fn ptxas_available() -> bool {
    match find_ptxas() {
        Ok(_) => true,
        Err(e) => {
            assert!(!require_tools(), "RFNC_REQUIRE_TOOLS=1: {e}");
            eprintln!("note: skipping ptxas checks: {e}");
            false
        }
    }
}

fn input(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 9.0)
        .collect()
}

/// JIT-runs kernel `name` of `bitcode` over blocks `0..blocks` and returns the output.
fn run_host(bitcode: &[u8], name: &str, x: &[f32], n_out: usize, blocks: i64) -> Vec<f32> {
    let context = Context::create();
    let buffer = MemoryBuffer::create_from_memory_range_copy(bitcode, "host");
    let module = Module::parse_bitcode_from_buffer(&buffer, &context).expect("bitcode parses");
    let engine = module
        .create_jit_execution_engine(OptimizationLevel::Default)
        .expect("JIT");
    let mut input = x.to_vec();
    let mut output = vec![f32::NAN; n_out];
    type Kernel = unsafe extern "C" fn(*mut f32, *mut f32, i64, i64);
    unsafe {
        let f = engine.get_function::<Kernel>(name).expect("kernel symbol");
        // Two calls over a split range: the block range parameters must be honoured.
        f.call(input.as_mut_ptr(), output.as_mut_ptr(), 0, blocks / 2);
        f.call(input.as_mut_ptr(), output.as_mut_ptr(), blocks / 2, blocks);
    }
    output
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

#[test]
fn gpu_kernels_compile_to_ptx_entries_without_spills() {
    let check_ptxas = ptxas_available();
    for s in samples() {
        let Some(t) = target("sm_80", s.uses_libdevice) else {
            continue;
        };
        let start = Instant::now();
        let art = compile_gpu(s.gpu, &t).unwrap_or_else(|e| panic!("{}: {e}", s.name));
        eprintln!("{}: MLIR -> PTX in {:?}", s.name, start.elapsed());
        assert!(
            art.ptx.contains(&format!(".entry {}(", s.name)),
            "{}: no .entry in\n{}",
            s.name,
            art.ptx
        );
        assert!(art.llvm_ir.contains("ptx_kernel"), "{}", art.llvm_ir);
        assert!(
            !art.llvm_ir.contains("__nv_"),
            "libdevice is linked and inlined"
        );
        assert_eq!(gpu_llvm_ir(s.gpu, &t).unwrap(), art.llvm_ir);
        if !check_ptxas {
            continue;
        }
        for sm in ["sm_80", "sm_90"] {
            let t = GpuTarget {
                sm: sm.into(),
                ..t.clone()
            };
            let ptx = compile_gpu(s.gpu, &t).unwrap().ptx;
            let report = ptxas_report(&ptx, sm).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(report.len(), 1, "{}: {report:?}", s.name);
            let k = &report[0];
            assert_eq!(k.name, s.name);
            assert_eq!(
                (k.spill_stores_bytes, k.spill_loads_bytes, k.stack_bytes),
                (0, 0, 0),
                "{sm} {}: {k:?}",
                s.name
            );
            assert!(k.registers > 0 && k.registers <= 64, "{k:?}");
            let shared = if s.name.starts_with("neighbour") {
                1024
            } else {
                0
            };
            assert_eq!(k.shared_bytes, shared, "{k:?}");
        }
    }
}

#[test]
fn host_kernels_run_to_the_right_numbers() {
    let mut bitcodes = Vec::new();
    for s in samples() {
        let art = compile_host(s.host).unwrap_or_else(|e| panic!("{}: {e}", s.name));
        assert!(
            art.llvm_ir.contains(&format!("@{}(ptr", s.name)),
            "{}",
            art.llvm_ir
        );
        let x = input(s.n_in);
        let got = run_host(&art.bitcode, s.name, &x, s.n_out, s.blocks);
        assert_close(&got, &(s.reference)(&x), s.name);
        bitcodes.push(art.bitcode);
    }
    // All kernels in one module; each still runs.
    let linked = link_host(&bitcodes).unwrap();
    for s in samples() {
        let x = input(s.n_in);
        let got = run_host(&linked, s.name, &x, s.n_out, s.blocks);
        assert_close(&got, &(s.reference)(&x), &format!("linked {}", s.name));
    }
    // Linking a kernel twice is a clear error.
    let twice = link_host(&[bitcodes[0].clone(), bitcodes[0].clone()]);
    assert!(twice.is_err());
    assert!(link_host(&[b"not bitcode".to_vec()]).is_err());
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let t = GpuTarget {
        sm: "sm_80".into(),
        libdevice: None,
    };
    // Syntax error.
    let e = compile_gpu("module { this is not mlir }", &t).unwrap_err();
    assert_eq!(e.stage, Stage::Parse);
    assert!(!e.diagnostics.is_empty(), "{e}");
    eprintln!("{e}");
    // Type error.
    let bad = RELU_HOST.replace(
        "%3, %arg1[%v0] : memref<1000xf32>",
        "%2, %arg1[%v0] : memref<1000xi32>",
    );
    let e = compile_host(&bad).unwrap_err();
    assert!(matches!(e.stage, Stage::Parse | Stage::Verify), "{e}");
    assert!(e.to_string().contains("error"), "{e}");
    // No gpu.module.
    let e = compile_gpu(RELU_HOST, &t).unwrap_err();
    assert!(e.to_string().contains("gpu.module"), "{e}");
    // A dynamic memref cannot be passed as a bare pointer.
    let dynamic = RELU_GPU
        .replace("%arg0: memref<1000xf32>", "%arg0: memref<?xf32>")
        .replace(
            "%arg0[%v0] : memref<1000xf32>",
            "%arg0[%v0] : memref<?xf32>",
        );
    let e = compile_gpu(&dynamic, &t).unwrap_err();
    assert_eq!(e.stage, Stage::Lower, "{e}");
    eprintln!("{e}");
    // Math without libdevice names the variable to set.
    let e = compile_gpu(SOFTPLUS_GPU, &t).unwrap_err();
    assert!(e.to_string().contains("RFNC_LIBDEVICE"), "{e}");
    assert!(e.to_string().contains("__nv_expf"), "{e}");
    // A bad architecture.
    let e = compile_gpu(
        RELU_GPU,
        &GpuTarget {
            sm: "80".into(),
            libdevice: None,
        },
    )
    .unwrap_err();
    assert_eq!(e.stage, Stage::Setup);
    // Bad PTX is ptxas's message.
    if ptxas_available() {
        let e = ptxas_report(".version 8.0\n.target sm_80\nbogus", "sm_80").unwrap_err();
        assert_eq!(e.stage, Stage::Ptxas);
        assert!(
            e.message.contains("bogus") || e.message.contains("syntax"),
            "{e}"
        );
    }
    // A batch names the failing kernel.
    let kernels = vec![KernelSource {
        name: "broken_1".into(),
        gpu_mlir: "module {".into(),
        host_mlir: RELU_HOST.into(),
    }];
    let options = CompileOptions {
        target: t,
        cache_dir: None,
        threads: 2,
    };
    let e = compile_kernels(&kernels, &options).unwrap_err();
    assert_eq!(e.kernel.as_deref(), Some("broken_1"));
    assert!(e.to_string().starts_with("kernel `broken_1`"), "{e}");
}

#[test]
fn batch_compile_uses_the_cache() {
    let Some(t) = target("sm_80", true) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kernels: Vec<KernelSource> = samples()
        .iter()
        .map(|s| KernelSource {
            name: s.name.into(),
            gpu_mlir: s.gpu.into(),
            host_mlir: s.host.into(),
        })
        .collect();
    let options = CompileOptions {
        target: t,
        cache_dir: Some(dir.path().to_path_buf()),
        threads: 2,
    };
    let start = Instant::now();
    let first = compile_kernels(&kernels, &options).unwrap();
    let cold = start.elapsed();
    assert!(first.iter().all(|k| !k.cached && k.llvm_ir.is_some()));
    let names: Vec<&str> = first.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["relu_0123abcd", "neighbour_sum_9f", "softplus_77"]);

    let start = Instant::now();
    let second = compile_kernels(&kernels, &options).unwrap();
    let warm = start.elapsed();
    eprintln!("3 kernels on 2 threads: cold {cold:?}, cached {warm:?}");
    assert!(second.iter().all(|k| k.cached));
    assert!(warm < cold / 4, "cached {warm:?} vs cold {cold:?}");
    for (a, b) in first.iter().zip(&second) {
        assert_eq!((&a.ptx, &a.host_bitcode), (&b.ptx, &b.host_bitcode));
    }

    // A corrupt entry is compiled again, not an error; the entry is repaired.
    let ptx_files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ptx"))
        .collect();
    assert_eq!(ptx_files.len(), 3);
    for p in &ptx_files {
        std::fs::write(p, "garbage").unwrap();
    }
    let third = compile_kernels(&kernels, &options).unwrap();
    assert!(third.iter().all(|k| !k.cached));
    assert_eq!(third[0].ptx, first[0].ptx);
    let fourth = compile_kernels(&kernels, &options).unwrap();
    assert!(fourth.iter().all(|k| k.cached));

    // A different architecture is a different entry.
    let mut sm90 = options.clone();
    sm90.target.sm = "sm_90".into();
    let other = compile_kernels(&kernels[..1], &sm90).unwrap();
    assert!(!other[0].cached);
}

#[test]
fn default_cache_dir_follows_the_environment() {
    // Only read here: the variables are not changed, so other tests are unaffected.
    let dir = default_cache_dir();
    if let Some(d) = std::env::var_os("RFNC_CACHE_DIR").filter(|d| !d.is_empty()) {
        assert_eq!(dir, Some(d.into()));
    } else if std::env::var_os("HOME").is_some() || std::env::var_os("XDG_CACHE_HOME").is_some() {
        assert!(dir.unwrap().ends_with("rfnc"));
    }
}
