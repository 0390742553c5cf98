//! The kernels of concat, mul (every broadcast), sigmoid, average, global average and max
//! pooling, bilinear resize and of their gradient ops: a forward graph and its gradients
//! are fused, every kernel is lowered to KIR, in the GPU's launches and in the CPU's
//! schedule, and run by the KIR interpreter (values kept per node, no memory plan), and
//! the results match the reference interpreter; fusion classifies the new ops.

mod common;

use std::collections::HashMap;

use rfnc_compiler::codegen::gemm::Precision;
use rfnc_compiler::codegen::kir_interp::{run_kernel, KirBuffer};
use rfnc_compiler::codegen::lower::{
    lower_kernel, lower_kernel_host, Arg, HostStep, LoweredLaunch,
};
use rfnc_compiler::interp::{run, Tensor, Value};
use rfnc_compiler::ir::{Graph, Loc, NodeId, Op, Output, Reduction, TensorType};
use rfnc_compiler::passes::autodiff::gradients;
use rfnc_compiler::passes::fusion::{fuse, Kernel};
use rfnc_compiler::rng::splitmix64;

/// Which launches run: the GPU's, or the CPU's schedule where a kernel has one.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Schedule {
    Gpu,
    Cpu,
}

/// The launches of `kernel` in `schedule` (no convolutions here: no GEMMs, nothing packed).
fn launches(graph: &Graph, kernel: &Kernel, schedule: Schedule) -> Vec<LoweredLaunch> {
    let host = match schedule {
        Schedule::Cpu => lower_kernel_host(graph, kernel, None).unwrap_or_else(|e| panic!("{e}")),
        Schedule::Gpu => None,
    };
    match host {
        Some(steps) => steps
            .into_iter()
            .map(|step| match step {
                HostStep::Kernel(l) => l,
                HostStep::Gemm(_) | HostStep::Pack(_) => panic!("a convolution's step"),
            })
            .collect(),
        None => lower_kernel(graph, kernel, Precision::F32).unwrap_or_else(|e| panic!("{e}")),
    }
}

/// Runs every fused kernel of `graph` in `schedule` with the KIR interpreter; the graph's
/// outputs.
fn run_kernels(
    graph: &Graph,
    feeds: &HashMap<String, Value<f64>>,
    schedule: Schedule,
) -> Vec<(String, Vec<f64>)> {
    let mut values: HashMap<NodeId, KirBuffer> = HashMap::new();
    for id in graph.node_ids() {
        if let Op::Input { name } = &graph.node(id).op {
            let data = feeds[name].real().data.iter().map(|&v| v as f32).collect();
            values.insert(id, KirBuffer::F32(data));
        }
    }
    let mut scratch: Vec<f32> = Vec::new();
    for kernel in &fuse(graph).kernels {
        for launch in launches(graph, kernel, schedule) {
            let mut buffers: Vec<KirBuffer> = launch
                .args
                .iter()
                .map(|arg| match *arg {
                    Arg::Value(n) => values.get(&n).cloned().unwrap_or_else(|| {
                        KirBuffer::F32(vec![f32::NAN; graph.node(n).ty.elements() as usize])
                    }),
                    Arg::Scratch { offset, bytes } => {
                        let end = ((offset + bytes) / 4) as usize;
                        if scratch.len() < end {
                            scratch.resize(end, f32::NAN);
                        }
                        KirBuffer::F32(scratch[(offset / 4) as usize..end].to_vec())
                    }
                    Arg::Packed { .. } => panic!("nothing is packed here"),
                })
                .collect();
            run_kernel(&launch.kernel, launch.grid, &mut buffers)
                .unwrap_or_else(|e| panic!("{}: {e}", launch.kernel.ops));
            for (arg, buffer) in launch.args.iter().zip(buffers) {
                match (*arg, buffer) {
                    (Arg::Value(n), b) if kernel.outputs.contains(&n) => {
                        values.insert(n, b);
                    }
                    (Arg::Scratch { offset, .. }, KirBuffer::F32(v)) => {
                        let start = (offset / 4) as usize;
                        scratch[start..start + v.len()].copy_from_slice(&v);
                    }
                    _ => {}
                }
            }
        }
    }
    graph
        .outputs
        .iter()
        .map(|o| match &values[&o.value] {
            KirBuffer::F32(v) => (o.name.clone(), v.iter().map(|&x| x as f64).collect()),
            KirBuffer::I32(_) => panic!("f32 outputs only"),
        })
        .collect()
}

/// A graph under construction with random real inputs.
struct Builder {
    graph: Graph,
    feeds: HashMap<String, Value<f64>>,
    inputs: Vec<NodeId>,
    counter: u64,
}

impl Builder {
    fn new() -> Self {
        Builder {
            graph: Graph::new("ops"),
            feeds: HashMap::new(),
            inputs: Vec::new(),
            counter: 0,
        }
    }

    fn input(&mut self, name: &str, dims: &[u64]) -> NodeId {
        let id = self.graph.add(
            Op::Input { name: name.into() },
            &[],
            TensorType::f32(dims.to_vec()),
            Loc::default(),
        );
        let n = dims.iter().product::<u64>() as usize;
        let data = (0..n)
            .map(|_| {
                self.counter += 1;
                (splitmix64(self.counter) >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .map(|v| v as f32 as f64)
            .collect();
        self.feeds
            .insert(name.into(), Value::Real(Tensor::new(dims.to_vec(), data)));
        self.inputs.push(id);
        id
    }

    fn op(&mut self, op: Op, args: &[NodeId]) -> NodeId {
        self.graph
            .add_inferred(op, args, Loc::default())
            .expect("op fits")
    }

    /// A least-squares loss of `y` against a random target, and the gradients of every
    /// input but the target as outputs beside the loss.
    fn with_gradients(mut self, y: NodeId) -> (Graph, HashMap<String, Value<f64>>) {
        let wrt = self.inputs.clone();
        let dims = self.graph.node(y).ty.dims.clone();
        let target = self.input("target", &dims);
        let loss = self.op(
            Op::LeastSquares {
                ignore_value: 1e30,
                reduction: Reduction::Sum,
            },
            &[y, target],
        );
        let grads = gradients(&mut self.graph, loss, &wrt).expect("differentiable");
        self.graph.outputs = vec![Output {
            name: "loss".into(),
            value: loss,
        }];
        for (i, g) in grads.into_iter().enumerate() {
            self.graph.outputs.push(Output {
                name: format!("d{i}"),
                value: g.expect("the loss depends on every input"),
            });
        }
        assert_eq!(rfnc_compiler::ir::verify(&self.graph), vec![]);
        (self.graph, self.feeds)
    }
}

/// The kernels, in both schedules, match the reference interpreter.
fn assert_kernels_match(graph: &Graph, feeds: &HashMap<String, Value<f64>>) {
    let want = run(graph, feeds).expect("the interpreter runs");
    for schedule in [Schedule::Gpu, Schedule::Cpu] {
        let got = run_kernels(graph, feeds, schedule);
        for ((name, expected), (_, actual)) in want.iter().zip(&got) {
            let expected = &expected.real().data;
            let scale = expected.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
            let worst = common::max_abs_diff(actual.iter().copied().zip(expected.iter().copied()));
            assert!(
                worst / scale < 1e-5,
                "{schedule:?} schedule: output `{name}` differs by {:e} (relative)",
                worst / scale
            );
        }
    }
}

fn avg_pool(k: u64, stride: u64, pad: [u64; 4], count_include_pad: bool) -> Op {
    Op::AvgPool2d {
        kernel: [k; 2],
        stride: [stride; 2],
        pad,
        count_include_pad,
    }
}

#[test]
fn attention_concat_and_pooling_kernels_match_the_interpreter() {
    let mut b = Builder::new();
    let a = b.input("a", &[2, 3, 7, 6]);
    let x = b.input("x", &[2, 2, 7, 6]);
    let scale = b.input("scale", &[]);
    let pooled = b.op(Op::GlobalAvgPool2d, &[x]);
    let gate = b.op(Op::Sigmoid, &[pooled]);
    let gated = b.op(Op::Mul, &[x, gate]);
    let joined = b.op(Op::Concat, &[a, gated, x]);
    let smooth = b.op(avg_pool(3, 1, [1, 1, 1, 1], false), &[joined]);
    let spatial = b.op(Op::GlobalAvgPool2d, &[smooth]);
    let down = b.op(avg_pool(3, 2, [1, 0, 0, 1], true), &[joined]);
    let scaled = b.op(Op::Mul, &[down, scale]);
    let weight = b.op(Op::Sigmoid, &[scaled]);
    let y = b.op(Op::Mul, &[weight, spatial]);
    let (graph, feeds) = b.with_gradients(y);
    assert_kernels_match(&graph, &feeds);
}

#[test]
fn mutual_broadcast_and_scalar_products_match_the_interpreter() {
    let mut b = Builder::new();
    let map = b.input("map", &[2, 1, 5, 4]);
    let gate = b.input("gate", &[2, 3, 1, 1]);
    let w = b.input("w", &[]);
    let v = b.input("v", &[]);
    let both = b.op(Op::Mul, &[map, gate]);
    let weight = b.op(Op::Mul, &[w, v]);
    let y = b.op(Op::Mul, &[weight, both]);
    let pooled = b.op(avg_pool(2, 2, [0; 4], false), &[y]);
    let (graph, feeds) = b.with_gradients(pooled);
    assert_kernels_match(&graph, &feeds);
}

#[test]
fn fusion_classifies_the_new_ops() {
    let mut b = Builder::new();
    let x = b.input("x", &[1, 4, 6, 6]);
    let y = b.input("y", &[1, 4, 6, 6]);
    let pooled = b.op(Op::GlobalAvgPool2d, &[y]);
    let gate = b.op(Op::Sigmoid, &[pooled]);
    let product = b.op(Op::Mul, &[x, gate]);
    let joined = b.op(Op::Concat, &[product, y]);
    let out = b.op(Op::Sigmoid, &[joined]);
    b.graph.outputs = vec![Output {
        name: "out".into(),
        value: out,
    }];
    let fused = fuse(&b.graph);
    let kernel_of = |n: NodeId| fused.kernel_of[&n];
    // The sigmoid of the pooled values joins the reduction's kernel (an epilogue); the
    // gated product has another shape, so it runs apart; the concatenation is an anchor
    // and the sigmoid after it joins its kernel.
    assert_eq!(kernel_of(pooled), kernel_of(gate));
    assert_ne!(kernel_of(gate), kernel_of(product));
    assert_eq!(kernel_of(joined), kernel_of(out));
    assert_eq!(fused.kernels[kernel_of(joined)].anchor, Some(joined));
    assert_eq!(fused.kernels[kernel_of(pooled)].anchor, Some(pooled));
    assert_eq!(fused.kernels[kernel_of(product)].anchor, None);
}

fn max_pool(k: u64, stride: u64, pad: u64) -> Op {
    Op::MaxPool2d {
        kernel: [k; 2],
        stride: [stride; 2],
        pad: [pad; 4],
    }
}

/// Max pools (the stem's 3x3 stride 2, the CRP's 5x5 stride 1, a 2x2 without padding) on
/// inputs with many ties (five levels), fed through a sigmoid so that the gradient's
/// values differ by position: the gradient goes to each window's first maximum in raster
/// order, in the GPU's one-pass search and in the CPU's two passes (row maxima, then the
/// first largest row) with its scattered sum alike.
#[test]
fn max_pool_gradients_break_ties_as_the_interpreter_does() {
    for (k, stride, pad) in [(3, 2, 1), (5, 1, 2), (2, 2, 0)] {
        let mut b = Builder::new();
        let x = b.input("x", &[2, 3, 9, 8]);
        let Value::Real(t) = b.feeds.get_mut("x").unwrap() else {
            unreachable!("a real input")
        };
        for v in &mut t.data {
            *v = (*v * 2.0).round() / 2.0;
        }
        let pooled = b.op(max_pool(k, stride, pad), &[x]);
        let y = b.op(Op::Sigmoid, &[pooled]);
        let (graph, feeds) = b.with_gradients(y);
        assert_kernels_match(&graph, &feeds);
    }
}

/// Bilinear resizes up by whole and fractional factors and down, both corner conventions,
/// and their adjoints: the CPU's gradient sums a stored column pass over rows.
#[test]
fn resize_gradients_match_the_interpreter() {
    for (size, align_corners) in [([20, 28], false), ([13, 9], true), ([3, 5], false)] {
        let mut b = Builder::new();
        let x = b.input("x", &[2, 3, 5, 7]);
        let up = b.op(
            Op::ResizeBilinear {
                size,
                align_corners,
            },
            &[x],
        );
        let y = b.op(Op::Sigmoid, &[up]);
        let (graph, feeds) = b.with_gradients(y);
        assert_kernels_match(&graph, &feeds);
    }
}
