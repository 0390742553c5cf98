//! Kernel generation without LLVM: every example's bundle (inference with its prepare
//! program, and the training step), and that of `tests/programs/attention.rfn` (the
//! attention and pooling ops), is executed launch by launch by the KIR interpreter over
//! the four memory regions, in the GPU's schedule and in the CPU's (its GEMMs by a plain
//! loop), and matches the reference interpreter on the unplanned graph.
//! This checks the lowering of every fused kernel (GEMM convolutions with their prologues
//! and epilogues, gathers, reductions) and the bundle's slots, independently of MLIR.

mod common;

use std::collections::HashMap;

use common::*;
use rfnc_bundle::{Bundle, Gemm, HostLaunch, Launch, LeafRole, Matrix, Program, Region, Slot};
use rfnc_bundle::{Mode, Precision};
use rfnc_compiler::codegen::kir::Ty;
use rfnc_compiler::codegen::kir_interp::{run_kernel, KirBuffer};
use rfnc_compiler::codegen::program::{lower_programs, Lowered};
use rfnc_compiler::interp::Value;
use rfnc_compiler::ir::Graph;
use rfnc_compiler::passes::canonical::inference;
use rfnc_compiler::passes::pipeline::{plan_inference, plan_program, plan_training};

/// The four regions as 32-bit words (f32 and i32 alike).
struct Memory {
    arena: Vec<u32>,
    scratch: Vec<u32>,
    leaves: Vec<u32>,
    packed: Vec<u32>,
}

impl Memory {
    fn region(&mut self, r: Region) -> &mut Vec<u32> {
        match r {
            Region::Arena => &mut self.arena,
            Region::Scratch => &mut self.scratch,
            Region::Leaves => &mut self.leaves,
            Region::Packed => &mut self.packed,
        }
    }
    fn words(&mut self, slot: &Slot) -> &mut [u32] {
        let (start, n) = ((slot.offset / 4) as usize, (slot.bytes / 4) as usize);
        &mut self.region(slot.region)[start..start + n]
    }
}

/// Which launches of a program run: the GPU's, or the CPU's schedule where it has one.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Schedule {
    Gpu,
    Cpu,
}

/// Runs a program's launches; in the CPU's schedule, its pack launches first with `pack`.
fn run_program(
    lowered: &Lowered,
    program: &Program,
    memory: &mut Memory,
    schedule: Schedule,
    pack: bool,
) {
    match (&program.host, schedule) {
        (Some(host), Schedule::Cpu) => {
            let packing = host.pack.iter().filter(|_| pack);
            for (i, launch) in packing.chain(&host.launches).enumerate() {
                match launch {
                    HostLaunch::Kernel(l) => run_launch(lowered, i, l, memory),
                    HostLaunch::Gemm(g) => run_gemm(i, g, memory),
                }
            }
        }
        _ => {
            for (i, launch) in program.launches.iter().enumerate() {
                run_launch(lowered, i, launch, memory);
            }
        }
    }
}

/// A GEMM of the CPU's schedule, in f32 in order of k, every element it touches checked
/// to lie in its slot.
fn run_gemm(i: usize, g: &Gemm, memory: &mut Memory) {
    let at = |x: &Matrix, p: u64, q: u64, r: u64, c: u64| -> usize {
        let index = p * x.batch[0] + q * x.batch[1] + r * x.rows + c * x.cols;
        assert!(index < x.slot.bytes / 4, "gemm {i}: outside its slot");
        index as usize
    };
    let a: Vec<f32> = memory
        .words(&g.a.slot)
        .iter()
        .map(|&w| f32::from_bits(w))
        .collect();
    let b: Vec<f32> = memory
        .words(&g.b.slot)
        .iter()
        .map(|&w| f32::from_bits(w))
        .collect();
    for p in 0..g.batch[0] {
        for q in 0..g.batch[1] {
            let sum = (g.c.batch[0] == 0 && p > 0) || (g.c.batch[1] == 0 && q > 0);
            for r in 0..g.m {
                for c in 0..g.n {
                    let mut acc = 0.0f32;
                    for k in 0..g.k {
                        acc += a[at(&g.a, p, q, r, k)] * b[at(&g.b, p, q, k, c)];
                    }
                    let out = &mut memory.words(&g.c.slot)[at(&g.c, p, q, r, c)];
                    let old = if sum { f32::from_bits(*out) } else { 0.0 };
                    *out = (old + acc).to_bits();
                }
            }
        }
    }
}

fn run_launch(lowered: &Lowered, i: usize, launch: &Launch, memory: &mut Memory) {
    {
        let kernel = lowered
            .kernels
            .iter()
            .find(|k| k.name == launch.kernel)
            .map(|k| &k.kernel)
            .unwrap_or_else(|| panic!("launch {i}: no kernel `{}`", launch.kernel));
        let mut buffers: Vec<KirBuffer> = launch
            .args
            .iter()
            .zip(&kernel.params)
            .map(|(slot, decl)| {
                let words = memory.words(slot);
                assert_eq!(words.len() as u64, decl.len, "launch {i}: slot size");
                match decl.elem {
                    Ty::I32 => KirBuffer::I32(words.iter().map(|&w| w as i32).collect()),
                    _ => KirBuffer::F32(words.iter().map(|&w| f32::from_bits(w)).collect()),
                }
            })
            .collect();
        let before: Vec<Vec<u32>> = buffers.iter().map(bits).collect();
        run_kernel(kernel, launch.grid, &mut buffers)
            .unwrap_or_else(|e| panic!("launch {i} ({}): {e}", kernel.ops));
        for ((slot, buffer), old) in launch.args.iter().zip(&buffers).zip(before) {
            let new = bits(buffer);
            if new != old {
                memory.words(slot).copy_from_slice(&new);
            }
        }
    }
}

fn bits(b: &KirBuffer) -> Vec<u32> {
    match b {
        KirBuffer::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
        KirBuffer::I32(v) => v.iter().map(|&x| x as u32).collect(),
    }
}

/// Runs a lowered bundle with the KIR interpreter in `schedule`: leaves from `feeds`,
/// prepare, main.
fn execute(
    lowered: &Lowered,
    feeds: &HashMap<String, Value<f64>>,
    schedule: Schedule,
) -> HashMap<String, Vec<f64>> {
    let b: &Bundle = &lowered.bundle;
    let arena = b
        .main
        .arena_bytes
        .max(b.prepare.as_ref().map_or(0, |p| p.arena_bytes));
    let scratch = [b.prepare.as_ref(), Some(&b.main)]
        .into_iter()
        .flatten()
        .flat_map(|p| {
            [
                p.scratch_bytes,
                p.host.as_ref().map_or(0, |h| h.scratch_bytes),
            ]
        })
        .max()
        .unwrap_or(0);
    let packed = b.main.host.as_ref().map_or(0, |h| h.packed_bytes);
    let mut memory = Memory {
        arena: vec![f32::NAN.to_bits(); (arena / 4) as usize],
        scratch: vec![f32::NAN.to_bits(); (scratch / 4) as usize],
        leaves: vec![0; (b.leaves_bytes / 4) as usize],
        packed: vec![f32::NAN.to_bits(); (packed / 4) as usize],
    };
    for leaf in &b.leaves {
        let slot = Slot {
            region: Region::Leaves,
            offset: leaf.offset,
            bytes: leaf.bytes(),
        };
        let words: Vec<u32> = match feeds.get(&leaf.name) {
            Some(Value::Real(t)) => t.data.iter().map(|&v| (v as f32).to_bits()).collect(),
            Some(Value::Int(t)) => t.data.iter().map(|&v| v as u32).collect(),
            None if matches!(leaf.role, LeafRole::Folded | LeafRole::Momentum) => continue,
            None => panic!("no feed for leaf `{}`", leaf.name),
        };
        memory.words(&slot).copy_from_slice(&words);
    }
    if let Some(prepare) = &b.prepare {
        run_program(lowered, prepare, &mut memory, schedule, false);
        for output in &prepare.outputs {
            let leaf = b.leaves.iter().find(|l| l.name == output.name).unwrap();
            let value = memory.words(&output.slot).to_vec();
            let slot = Slot {
                region: Region::Leaves,
                offset: leaf.offset,
                bytes: leaf.bytes(),
            };
            memory.words(&slot).copy_from_slice(&value);
        }
    }
    // The weights are packed once, after the prepare program (which folds them).
    run_program(lowered, &b.main, &mut memory, schedule, true);
    b.main
        .outputs
        .iter()
        .map(|o| {
            let v = memory
                .words(&o.slot)
                .iter()
                .map(|&w| f32::from_bits(w) as f64)
                .collect();
            (o.name.clone(), v)
        })
        .collect()
}

fn check_example(example: &str) {
    let (forward, step) = small_graphs(example);
    check_graphs(example, &forward, &step);
}

/// The forward graph and training step of `tests/programs/NAME.rfn` at `input`, exactly
/// as `rfnc compile --train` builds them.
fn program_graphs(name: &str, input: &str) -> (Graph, Graph) {
    let source = rfnc_driver::Source {
        file: std::path::PathBuf::from(format!("tests/programs/{name}.rfn")),
        input: input.into(),
        defines: Vec::new(),
    };
    let log = rfnc_driver::Log::default();
    let network =
        rfnc_driver::Network::elaborate(&source, &log).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    let step = network
        .train_step(&rfnc_driver::TrainSettings::default(), &log)
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    (network.forward, step)
}

/// Inference and the training step in both precisions, against the interpreter in the
/// same precision.
fn check_graphs(example: &str, forward: &Graph, step: &Graph) {
    for precision in [Precision::F32, Precision::Tf32, Precision::Bf16] {
        // Inference, with batch norm folded by the prepare program.
        let main = plan_inference(forward).unwrap();
        let prepare = main.prepare.as_ref().map(|p| plan_program(p).unwrap());
        let lowered = lower_programs(example, Mode::Inference, precision, &main, prepare.as_ref())
            .unwrap_or_else(|e| panic!("{example}: {e}"));
        let what = format!("{example} inference in {}", precision.name());
        let graph = inference(forward);
        assert_matches_interpreter_in(&what, &graph, (Mode::Inference, precision), |f| {
            execute(&lowered, f, Schedule::Gpu)
        });
        if precision == Precision::F32 {
            assert_filters_packed(example, &lowered, true);
            let what = format!("{example} inference, the CPU's schedule");
            assert_matches_interpreter_in(&what, &graph, (Mode::Inference, precision), |f| {
                execute(&lowered, f, Schedule::Cpu)
            });
        }
        // The training step.
        let main = plan_training(step).unwrap();
        let lowered = lower_programs(example, Mode::Train, precision, &main, None)
            .unwrap_or_else(|e| panic!("{example} train: {e}"));
        let what = format!("{example} training step in {}", precision.name());
        assert_matches_interpreter_in(&what, step, (Mode::Train, precision), |f| {
            execute(&lowered, f, Schedule::Gpu)
        });
        // The CPU's schedule multiplies in f32 whatever the GPU's precision.
        if precision == Precision::F32 {
            assert_filters_packed(example, &lowered, false);
            let what = format!("{example} training step, the CPU's schedule");
            assert_matches_interpreter_in(&what, step, (Mode::Train, precision), |f| {
                execute(&lowered, f, Schedule::Cpu)
            });
        }
    }
}

/// Inference transforms its Winograd filters once, in pack launches, and never in a run;
/// the training step (whose weights change every step) every run, and packs nothing.
fn assert_filters_packed(example: &str, lowered: &Lowered, inference: bool) {
    let Some(host) = &lowered.bundle.main.host else {
        return;
    };
    let filters = |launches: &[HostLaunch]| {
        launches
            .iter()
            .filter(|l| matches!(l, HostLaunch::Kernel(k) if k.kernel.starts_with("host_winograd_filter_")))
            .count()
    };
    let (packed, per_run) = (filters(&host.pack), filters(&host.launches));
    assert_eq!(
        packed,
        host.pack.len(),
        "{example}: only filters are packed"
    );
    if inference {
        assert_eq!(
            per_run, 0,
            "{example}: inference transforms filters every run"
        );
        assert_eq!(
            host.packed_bytes > 0,
            packed > 0,
            "{example}: packed region"
        );
    } else {
        assert_eq!(
            (packed, host.packed_bytes),
            (0, 0),
            "{example}: training packs"
        );
    }
}

#[test]
fn tiny_lowers_and_runs() {
    check_example("tiny");
}

/// Concat, mul with broadcast gates, sigmoid, average and global average pooling, and their
/// gradients, through fusion, the memory plan and the kernels.
#[test]
fn attention_program_lowers_and_runs() {
    let (forward, step) = program_graphs("attention", "1x3x32x32");
    let ops: Vec<&str> = step
        .node_ids()
        .map(|id| step.node(id).op.mnemonic())
        .collect();
    for op in [
        "concat",
        "slice_channels",
        "mul",
        "sum_to",
        "sigmoid",
        "sigmoid_grad",
        "avg_pool2d",
        "avg_pool2d_grad",
        "global_avg_pool2d",
        "global_avg_pool2d_grad",
    ] {
        assert!(ops.contains(&op), "the training step uses rfn.{op}");
    }
    check_graphs("attention", &forward, &step);
}

#[test]
fn every_example_lowers_and_runs() {
    for example in EXAMPLES.iter().filter(|e| **e != "tiny") {
        check_example(example);
    }
}

/// Convolutions at every awkward geometry (odd sizes, batch 2), whose CPU schedule splits
/// them into gathers, GEMMs, Winograd transforms and epilogues: each step's every access
/// checked to lie in its slot.
/// 3x3 convolutions on planes large enough for F(4x4, 3x3) (36 products per tile), and
/// their data and weight gradients, at sizes that leave partial tiles in the last row and
/// column.
#[test]
fn winograd_program_lowers_and_runs_in_both_schedules() {
    let (forward, step) = program_graphs("winograd", "2x3x67x61");
    let main = plan_inference(&forward).unwrap();
    let lowered = lower_programs("winograd", Mode::Inference, Precision::F32, &main, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let host = lowered.bundle.main.host.as_ref().unwrap();
    let f4 = host
        .launches
        .iter()
        .filter(|l| matches!(l, HostLaunch::Gemm(g) if g.batch[0] == 36))
        .count();
    assert_eq!(f4, 4, "every convolution runs F(4x4, 3x3)");
    // The weight gradients (the GEMMs that sum the batch into one C) by F(4x4, 3x3)'s
    // adjoint.
    let train = plan_training(&step).unwrap();
    let lowered = lower_programs("winograd", Mode::Train, Precision::F32, &train, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let host = lowered.bundle.main.host.as_ref().unwrap();
    let adjoint: Vec<u64> = host
        .launches
        .iter()
        .filter_map(|l| match l {
            HostLaunch::Gemm(g) if g.c.batch[1] == 0 => Some(g.batch[0]),
            _ => None,
        })
        .collect();
    assert_eq!(
        adjoint, [36; 4],
        "every weight gradient runs F(4x4, 3x3)'s adjoint"
    );
    check_graphs("winograd", &forward, &step);
}

#[test]
fn conv_geometry_lowers_and_runs_in_both_schedules() {
    let (forward, step) = program_graphs("conv_geometry", "2x3x17x11");
    let main = plan_inference(&forward).unwrap();
    let lowered = lower_programs(
        "conv_geometry",
        Mode::Inference,
        Precision::F32,
        &main,
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let host = lowered.bundle.main.host.as_ref().unwrap();
    assert!(!host.pack.is_empty(), "the 3x3 filters are packed");
    check_graphs("conv_geometry", &forward, &step);
}
