//! Hand-made bundles for the runtime tests: element-wise kernels over `N` floats, written as
//! LLVM IR for the host (assembled to `host.bc` with inkwell) and as PTX for the GPU.

#![allow(dead_code)]

use std::path::Path;

use inkwell::context::Context;
use inkwell::memory_buffer::MemoryBuffer;
use rfnc_bundle::*;

/// Elements of every tensor of the test bundles.
pub const N: u64 = 10;
/// Threads per block (elements per block on the host): grid = ceil(N / BLOCK) = 3.
pub const BLOCK: u64 = 4;
pub const GRID: u64 = N.div_ceil(BLOCK);

/// An element-wise kernel: `inputs` operands, one output, `host` the LLVM IR computing `%r`
/// from `%a0..`, `ptx` the PTX computing `%f0` from `%f1..` (inputs).
pub struct Elementwise {
    pub name: &'static str,
    pub inputs: usize,
    pub host: &'static str,
    pub ptx: &'static str,
}

pub const RELU: Elementwise = Elementwise {
    name: "relu",
    inputs: 1,
    host: "%r = call float @llvm.maxnum.f32(float %a0, float 0.0)",
    ptx: "max.f32 %f0, %f1, 0f00000000;",
};

pub const ADD: Elementwise = Elementwise {
    name: "add",
    inputs: 2,
    host: "%r = fadd float %a0, %a1",
    ptx: "add.f32 %f0, %f1, %f2;",
};

/// `exp` through the LLVM intrinsic, which the host backend lowers to a call of `expf`.
pub const EXP: Elementwise = Elementwise {
    name: "exp_k",
    inputs: 1,
    host: "%r = call float @llvm.exp.f32(float %a0)",
    ptx: "mul.f32 %f3, %f1, 0f3FB8AA3B;\n    ex2.approx.f32 %f0, %f3;",
};

/// `log` by a direct call of libm's `logf`.
pub const LOG: Elementwise = Elementwise {
    name: "log_k",
    inputs: 1,
    host: "%r = call float @logf(float %a0)",
    ptx: "lg2.approx.f32 %f3, %f1;\n    mul.f32 %f0, %f3, 0f3F317218;",
};

/// The host function of a kernel: `void name(ptr a0.., ptr out, i64 first, i64 end)`.
pub fn host_ir(kernel: &Elementwise) -> String {
    let params: Vec<String> = (0..kernel.inputs)
        .map(|i| format!("ptr %p{i}"))
        .chain(["ptr %out".to_string()])
        .collect();
    let loads: String = (0..kernel.inputs)
        .map(|i| {
            format!(
                "  %q{i} = getelementptr float, ptr %p{i}, i64 %i\n  %a{i} = load float, ptr %q{i}\n"
            )
        })
        .collect();
    format!(
        r#"
define void @{name}({params}, i64 %first, i64 %end) {{
entry:
  %s = mul i64 %first, {BLOCK}
  %e0 = mul i64 %end, {BLOCK}
  %lt = icmp slt i64 %e0, {N}
  %e = select i1 %lt, i64 %e0, i64 {N}
  br label %check
check:
  %i = phi i64 [ %s, %entry ], [ %next, %body ]
  %c = icmp slt i64 %i, %e
  br i1 %c, label %body, label %exit
body:
{loads}  {op}
  %po = getelementptr float, ptr %out, i64 %i
  store float %r, ptr %po
  %next = add i64 %i, 1
  br label %check
exit:
  ret void
}}
"#,
        name = kernel.name,
        params = params.join(", "),
        op = kernel.host,
    )
}

/// PTX of a kernel for sm_80: thread `i = ctaid * ntid + tid` computes element `i < N`.
pub fn ptx(kernel: &Elementwise) -> String {
    let name = kernel.name;
    let params: Vec<String> = (0..=kernel.inputs)
        .map(|i| format!("    .param .u64 {name}_param_{i}"))
        .collect();
    let mut loads = String::new();
    for i in 0..kernel.inputs {
        loads.push_str(&format!(
            "    ld.param.u64 %rd10, [{name}_param_{i}];\n    cvta.to.global.u64 %rd11, %rd10;\n    add.s64 %rd12, %rd11, %rd1;\n    ld.global.f32 %f{}, [%rd12];\n",
            i + 1
        ));
    }
    format!(
        r#".version 7.0
.target sm_80
.address_size 64

.visible .entry {name}(
{params}
)
{{
    .reg .pred %p<2>;
    .reg .f32 %f<8>;
    .reg .b32 %r<5>;
    .reg .b64 %rd<16>;

    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mad.lo.s32 %r4, %r1, %r2, %r3;
    setp.ge.s32 %p1, %r4, {N};
    @%p1 bra DONE;
    mul.wide.s32 %rd1, %r4, 4;
{loads}    {op}
    ld.param.u64 %rd10, [{name}_param_{out}];
    cvta.to.global.u64 %rd11, %rd10;
    add.s64 %rd12, %rd11, %rd1;
    st.global.f32 [%rd12], %f0;
DONE:
    ret;
}}
"#,
        params = params.join(",\n"),
        op = kernel.ptx,
        out = kernel.inputs,
    )
}

/// Writes `dir/host.bc` (all kernels in one module) and `dir/kernels/<name>.ptx`.
pub fn write_kernels(dir: &Path, kernels: &[&Elementwise]) -> Vec<KernelInfo> {
    let mut ir = String::from(
        "declare float @llvm.maxnum.f32(float, float)\ndeclare float @llvm.exp.f32(float)\ndeclare float @logf(float)\n",
    );
    for k in kernels {
        ir.push_str(&host_ir(k));
    }
    let context = Context::create();
    let buffer = MemoryBuffer::create_from_memory_range_copy(ir.as_bytes(), "host");
    let module = context
        .create_module_from_ir(buffer)
        .unwrap_or_else(|e| panic!("bad test IR: {e}\n{ir}"));
    module.verify().expect("test IR verifies");
    assert!(module.write_bitcode_to_path(dir.join("host.bc")));
    std::fs::create_dir_all(dir.join("kernels")).unwrap();
    kernels
        .iter()
        .map(|k| {
            let file = format!("kernels/{}.ptx", k.name);
            std::fs::write(dir.join(&file), ptx(k)).unwrap();
            KernelInfo {
                name: k.name.to_string(),
                ptx: Some(file),
                block: BLOCK as u32,
                params: k.inputs as u32 + 1,
                shared_bytes: 0,
                ops: k.name.to_string(),
                schedule: String::new(),
                host_only: false,
            }
        })
        .collect()
}

pub const BYTES: u64 = N * 4;

pub fn slot(region: Region, offset: u64) -> Slot {
    Slot {
        region,
        offset,
        bytes: BYTES,
    }
}

pub fn leaf(name: &str, role: LeafRole, dtype: DType, shape: Vec<u64>, offset: u64) -> Leaf {
    Leaf {
        name: name.to_string(),
        role,
        dtype,
        shape,
        offset,
        classes: None,
        ignore_label: None,
        init: (role == LeafRole::Param).then_some(rfnc_bundle::Init::Normal { std: 0.5 }),
    }
}

pub fn launch(kernel: &Elementwise, args: Vec<Slot>) -> Launch {
    Launch {
        kernel: kernel.name.to_string(),
        grid: GRID,
        args,
    }
}

pub fn output(name: &str, slot: Slot) -> BundleOutput {
    BundleOutput {
        name: name.to_string(),
        dtype: DType::F32,
        shape: vec![N],
        slot,
    }
}

/// Inference bundle: `y = relu(x)`, `z = y + exp(p)` where `p.folded = exp(p)` is computed by
/// the prepare program, and `w = log(x2)`. Leaves: inputs `x`, `x2` and `step` (i32, unused),
/// parameter `p`, folded `p.folded`.
pub fn inference_bundle(dir: &Path) -> Bundle {
    let kernels = write_kernels(dir, &[&RELU, &ADD, &EXP, &LOG]);
    let leaves = vec![
        leaf("x", LeafRole::Input, DType::F32, vec![2, 5], 0),
        leaf("x2", LeafRole::Input, DType::F32, vec![N], 256),
        leaf("step", LeafRole::Input, DType::I32, vec![1], 512),
        leaf("p", LeafRole::Param, DType::F32, vec![N], 768),
        leaf("p.folded", LeafRole::Folded, DType::F32, vec![N], 1024),
    ];
    let l = |o| slot(Region::Leaves, o);
    let a = |o| slot(Region::Arena, o);
    let bundle = Bundle {
        format: BUNDLE_FORMAT.to_string(),
        version: BUNDLE_VERSION,
        network: "test.rfn".to_string(),
        mode: Mode::Inference,
        gpu_target: Some("sm_80".to_string()),
        host_code: true,
        precision: Precision::F32,
        leaves,
        leaves_bytes: 1280,
        kernels,
        prepare: Some(Program {
            arena_bytes: 256,
            scratch_bytes: 0,
            launches: vec![launch(&EXP, vec![l(768), a(0)])],
            outputs: vec![output("p.folded", a(0))],
            host: None,
        }),
        main: Program {
            arena_bytes: 768,
            scratch_bytes: 0,
            launches: vec![
                launch(&RELU, vec![l(0), a(0)]),
                launch(&ADD, vec![a(0), l(1024), a(256)]),
                launch(&LOG, vec![l(256), a(512)]),
            ],
            outputs: vec![output("y", a(0)), output("z", a(256)), output("w", a(512))],
            host: None,
        },
    };
    write_bundle(dir, &bundle);
    bundle
}

/// Training-like bundle: one "step" is `p <- p + x`, written over the leaf `p`; leaves
/// `x` (input), `p` (parameter), `p.momentum` (momentum, unused).
pub fn train_bundle(dir: &Path) -> Bundle {
    let kernels = write_kernels(dir, &[&ADD]);
    let leaves = vec![
        leaf("x", LeafRole::Input, DType::F32, vec![N], 0),
        leaf("p", LeafRole::Param, DType::F32, vec![N], 256),
        leaf("p.momentum", LeafRole::Momentum, DType::F32, vec![N], 512),
    ];
    let l = |o| slot(Region::Leaves, o);
    let bundle = Bundle {
        format: BUNDLE_FORMAT.to_string(),
        version: BUNDLE_VERSION,
        network: "test.rfn".to_string(),
        mode: Mode::Train,
        gpu_target: Some("sm_80".to_string()),
        host_code: true,
        precision: Precision::F32,
        leaves,
        leaves_bytes: 768,
        kernels,
        prepare: None,
        main: Program {
            arena_bytes: 0,
            scratch_bytes: 0,
            launches: vec![launch(&ADD, vec![l(0), l(256), l(256)])],
            outputs: vec![output("p", l(256))],
            host: None,
        },
    };
    write_bundle(dir, &bundle);
    bundle
}

pub fn write_bundle(dir: &Path, bundle: &Bundle) {
    std::fs::write(
        dir.join("bundle.json"),
        serde_json::to_string_pretty(bundle).unwrap(),
    )
    .unwrap();
}

pub fn x_values() -> Vec<f32> {
    (0..N).map(|i| i as f32 - 4.5).collect()
}

pub fn p_values() -> Vec<f32> {
    (0..N).map(|i| i as f32 * 0.25 - 1.0).collect()
}

pub fn x2_values() -> Vec<f32> {
    (0..N).map(|i| 0.5 + i as f32).collect()
}

/// Loads the inference bundle's weights (`p`) and inputs (`x`, `x2`, the step counter).
pub fn feed_inference(session: &mut rfnc_runtime::Session, step: i32) {
    let weights = rfnc_runtime::Weights {
        tensors: std::collections::BTreeMap::from([("p".to_string(), (vec![N], p_values()))]),
        ..rfnc_runtime::Weights::default()
    };
    session.load_weights(&weights).unwrap();
    session.set_leaf_f32("x", &x_values()).unwrap();
    session.set_leaf_f32("x2", &x2_values()).unwrap();
    session.set_leaf_i32("step", &[step]).unwrap();
}
