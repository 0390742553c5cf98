//! Autodiff checked against central finite differences in f64, op by op on random shapes
//! (odd sizes included). Each op's output feeds a least-squares loss against a random
//! target, so the upstream gradient is random too.

use std::collections::HashMap;

use rfnc_compiler::interp::{run, Tensor, Value};
use rfnc_compiler::ir::{DType, Graph, Loc, NodeId, Op, ParamKind, Reduction, TensorType};
use rfnc_compiler::passes::autodiff::gradients;
use rfnc_compiler::rng::splitmix64;

/// Deterministic pseudo-random numbers in [-1, 1).
struct Rand(u64);

impl Rand {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(1);
        (splitmix64(self.0) >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn tensor(&mut self, dims: &[u64]) -> Tensor<f64> {
        let n = dims.iter().product::<u64>() as usize;
        Tensor::new(dims.to_vec(), (0..n).map(|_| self.next()).collect())
    }
}

/// A test graph: named real leaves (inputs and parameters) plus integer inputs.
struct Case {
    graph: Graph,
    feeds: HashMap<String, Value<f64>>,
    /// Leaves to differentiate with respect to.
    wrt: Vec<(String, NodeId)>,
    rand: Rand,
}

impl Case {
    fn new(seed: u64) -> Self {
        Case {
            graph: Graph::new("grad"),
            feeds: HashMap::new(),
            wrt: Vec::new(),
            rand: Rand(seed),
        }
    }

    fn leaf(&mut self, name: &str, dims: &[u64]) -> NodeId {
        let kind = if dims.len() == 4 {
            ParamKind::ConvWeight
        } else {
            ParamKind::ConvBias
        };
        let id = self.graph.add(
            Op::Param {
                name: name.into(),
                kind,
            },
            &[],
            TensorType::f32(dims.to_vec()),
            Loc::default(),
        );
        let t = self.rand.tensor(dims);
        self.feeds.insert(name.into(), Value::Real(t));
        self.wrt.push((name.into(), id));
        id
    }

    /// A positive per-channel leaf (batch-norm variance) that is not differentiated.
    fn positive(&mut self, name: &str, c: u64) -> NodeId {
        let id = self.graph.add(
            Op::Param {
                name: name.into(),
                kind: ParamKind::BnVar,
            },
            &[],
            TensorType::f32(vec![c]),
            Loc::default(),
        );
        let data = (0..c).map(|_| 0.5 + self.rand.next().abs()).collect();
        self.feeds
            .insert(name.into(), Value::Real(Tensor::new(vec![c], data)));
        id
    }

    fn labels(&mut self, dims: &[u64], classes: i32, ignore_every: usize) -> NodeId {
        let id = self.graph.add(
            Op::Input {
                name: "labels".into(),
            },
            &[],
            TensorType::new(DType::I32, dims.to_vec()),
            Loc::default(),
        );
        let n = dims.iter().product::<u64>() as usize;
        let data = (0..n)
            .map(|i| {
                if ignore_every > 0 && i % ignore_every == 0 {
                    255
                } else {
                    ((self.rand.next() + 1.0) * 0.5 * classes as f64) as i32 % classes
                }
            })
            .collect();
        self.feeds.insert(
            "labels".into(),
            Value::Int(Tensor::new(dims.to_vec(), data)),
        );
        id
    }

    fn step(&mut self, step: i32) -> NodeId {
        let id = self.graph.add(
            Op::Input {
                name: "step".into(),
            },
            &[],
            TensorType::new(DType::I32, vec![]),
            Loc::default(),
        );
        self.feeds
            .insert("step".into(), Value::Int(Tensor::scalar(step)));
        id
    }

    fn op(&mut self, op: Op, args: &[NodeId]) -> NodeId {
        self.graph
            .add_inferred(op, args, Loc::default())
            .expect("op fits")
    }

    /// Finishes with `y` as the loss if it is a scalar, else least squares against a
    /// random target, and checks every `wrt` gradient against finite differences.
    fn check(mut self, y: NodeId) {
        let loss = if self.graph.node(y).ty.dims.is_empty() {
            y
        } else {
            let dims = self.graph.node(y).ty.dims.clone();
            let target = self.graph.add(
                Op::Input {
                    name: "target".into(),
                },
                &[],
                TensorType::f32(dims.clone()),
                Loc::default(),
            );
            let t = self.rand.tensor(&dims);
            self.feeds.insert("target".into(), Value::Real(t));
            self.op(
                Op::LeastSquares {
                    ignore_value: 1e30,
                    reduction: Reduction::Sum,
                },
                &[y, target],
            )
        };
        let mut forward = self.graph.clone();
        forward.outputs = vec![rfnc_compiler::ir::Output {
            name: "loss".into(),
            value: loss,
        }];
        let wrt_ids: Vec<NodeId> = self.wrt.iter().map(|(_, id)| *id).collect();
        let grads = gradients(&mut self.graph, loss, &wrt_ids).expect("differentiable");
        assert!(rfnc_compiler::ir::verify(&forward).is_empty());
        let mut with_grads = self.graph.clone();
        with_grads.outputs = self
            .wrt
            .iter()
            .zip(&grads)
            .map(|((name, _), g)| rfnc_compiler::ir::Output {
                name: name.clone(),
                value: g.expect("loss depends on every leaf"),
            })
            .collect();
        assert!(
            rfnc_compiler::ir::verify(&with_grads).is_empty(),
            "{:?}",
            rfnc_compiler::ir::verify(&with_grads)
        );
        let analytic = run(&with_grads, &self.feeds).expect("runs");
        let loss_at =
            |feeds: &HashMap<String, Value<f64>>| match &run(&forward, feeds).expect("runs")[0].1 {
                Value::Real(t) => t.data[0],
                Value::Int(_) => unreachable!(),
            };
        for ((name, _), (_, grad)) in self.wrt.iter().zip(&analytic) {
            let grad = grad.real().data.clone();
            let base = self.feeds[name].real().clone();
            let h = 1e-6;
            let (mut err2, mut norm2) = (0.0f64, 0.0f64);
            for (i, &g) in grad.iter().enumerate() {
                let mut feeds = self.feeds.clone();
                let mut plus = base.clone();
                plus.data[i] += h;
                feeds.insert(name.clone(), Value::Real(plus));
                let lp = loss_at(&feeds);
                let mut minus = base.clone();
                minus.data[i] -= h;
                feeds.insert(name.clone(), Value::Real(minus));
                let lm = loss_at(&feeds);
                let numeric = (lp - lm) / (2.0 * h);
                err2 += (numeric - g).powi(2);
                norm2 += numeric.powi(2);
            }
            let rel = err2.sqrt() / norm2.sqrt().max(1e-12);
            assert!(rel < 1e-6, "gradient of `{name}`: relative error {rel:e}");
            assert!(norm2 > 0.0, "gradient of `{name}` is not identically zero");
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn conv_case(
    seed: u64,
    x: [u64; 4],
    cout: u64,
    k: u64,
    stride: u64,
    pad: u64,
    dilation: u64,
    groups: u64,
    bias: bool,
) {
    let mut c = Case::new(seed);
    let xi = c.leaf("x", &x);
    let w = c.leaf("w", &[cout, x[1] / groups, k, k]);
    let mut args = vec![xi, w];
    if bias {
        args.push(c.leaf("b", &[cout]));
    }
    let y = c.op(
        Op::Conv2d {
            stride: [stride; 2],
            pad: [pad; 4],
            dilation: [dilation; 2],
            groups,
        },
        &args,
    );
    c.check(y);
}

#[test]
fn conv2d_gradients() {
    conv_case(1, [2, 3, 5, 7], 4, 3, 1, 1, 1, 1, true);
    conv_case(2, [1, 4, 9, 7], 2, 3, 2, 1, 1, 1, false);
    conv_case(3, [1, 4, 7, 6], 4, 3, 1, 2, 2, 2, true);
    conv_case(4, [1, 3, 9, 9], 5, 1, 2, 0, 1, 1, false);
    conv_case(5, [1, 2, 11, 9], 3, 7, 2, 3, 1, 1, true);
    conv_case(6, [1, 4, 5, 5], 4, 3, 1, 1, 1, 4, false);
}

#[test]
fn batch_norm_relu_add_gradients() {
    let mut c = Case::new(10);
    let x = c.leaf("x", &[2, 3, 5, 3]);
    let mean = c.leaf("mean_unused", &[3]);
    c.wrt.pop(); // statistics are frozen: not differentiated
    let var = c.positive("var", 3);
    let gamma = c.leaf("gamma_unused", &[3]);
    c.wrt.pop();
    let beta = c.leaf("beta_unused", &[3]);
    c.wrt.pop();
    let bn = c.op(Op::BatchNorm { eps: 1e-5 }, &[x, mean, var, gamma, beta]);
    let r = c.op(Op::Relu, &[bn]);
    let sum = c.op(Op::Add, &[r, x]); // x used twice: gradients accumulate
    let twice = c.op(Op::Add, &[sum, sum]);
    c.check(twice);
}

#[test]
fn max_pool_gradients() {
    for (seed, dims, k, s, p) in [
        (20, [1, 2, 7, 9], 5, 1, 2),
        (21, [2, 2, 9, 8], 3, 2, 1),
        (22, [1, 1, 5, 5], 2, 2, 0),
    ] {
        let mut c = Case::new(seed);
        let x = c.leaf("x", &dims);
        let y = c.op(
            Op::MaxPool2d {
                kernel: [k; 2],
                stride: [s; 2],
                pad: [p; 4],
            },
            &[x],
        );
        c.check(y);
    }
}

#[test]
fn resize_gradients() {
    for (seed, dims, size, align) in [
        (30, [1, 2, 5, 4], [11, 9], false),
        (31, [1, 2, 5, 4], [11, 9], true),
        (32, [1, 1, 9, 8], [4, 3], false),
        (33, [2, 1, 9, 8], [4, 3], true),
        (34, [1, 1, 1, 5], [3, 7], true),
    ] {
        let mut c = Case::new(seed);
        let x = c.leaf("x", &dims);
        let y = c.op(
            Op::ResizeBilinear {
                size,
                align_corners: align,
            },
            &[x],
        );
        c.check(y);
    }
}

#[test]
fn dropout_gradient_uses_the_forward_mask() {
    let mut c = Case::new(40);
    let x = c.leaf("x", &[1, 3, 5, 5]);
    let step = c.step(3);
    let y = c.op(
        Op::Dropout {
            rate: 0.5,
            seed: 9,
            stream: 2,
        },
        &[x, step],
    );
    c.check(y);
}

#[test]
fn loss_gradients() {
    for reduction in [Reduction::Mean, Reduction::Sum] {
        let mut c = Case::new(50);
        let s = c.leaf("scores", &[2, 4, 3, 5]);
        let labels = c.labels(&[2, 3, 5], 4, 4);
        let loss = c.op(
            Op::SoftmaxCrossEntropy {
                ignore_index: 255,
                reduction,
            },
            &[s, labels],
        );
        c.check(loss);

        let mut c = Case::new(51);
        let p = c.leaf("pred", &[1, 1, 5, 7]);
        let target = c.graph.add(
            Op::Input {
                name: "depth".into(),
            },
            &[],
            TensorType::f32(vec![1, 1, 5, 7]),
            Loc::default(),
        );
        let mut t = c.rand.tensor(&[1, 1, 5, 7]);
        for v in t.data.iter_mut().step_by(3) {
            *v = 0.0; // no ground truth here
        }
        c.feeds.insert("depth".into(), Value::Real(t));
        let loss = c.op(
            Op::LeastSquares {
                ignore_value: 0.0,
                reduction,
            },
            &[p, target],
        );
        c.check(loss);
    }
}

impl Case {
    /// A real input leaf of any rank (a scalar cannot be a parameter) to differentiate.
    fn input(&mut self, name: &str, dims: &[u64]) -> NodeId {
        let id = self.graph.add(
            Op::Input { name: name.into() },
            &[],
            TensorType::f32(dims.to_vec()),
            Loc::default(),
        );
        let t = self.rand.tensor(dims);
        self.feeds.insert(name.into(), Value::Real(t));
        self.wrt.push((name.into(), id));
        id
    }
}

#[test]
fn concat_gradients() {
    let mut c = Case::new(60);
    let a = c.leaf("a", &[2, 2, 3, 5]);
    let b = c.leaf("b", &[2, 3, 3, 5]);
    let d = c.leaf("d", &[2, 1, 3, 5]);
    let y = c.op(Op::Concat, &[a, b, d]);
    c.check(y);
    // The same operand twice: its two slices accumulate.
    let mut c = Case::new(61);
    let x = c.leaf("x", &[1, 2, 4, 3]);
    let y = c.op(Op::Concat, &[x, x]);
    c.check(y);
}

#[test]
fn mul_gradients_with_every_broadcast() {
    for (seed, a, b) in [
        (70, vec![2, 3, 4, 5], vec![2, 3, 4, 5]),
        (71, vec![2, 3, 4, 5], vec![2, 3, 1, 1]),
        (72, vec![2, 3, 1, 1], vec![2, 3, 4, 5]),
        (73, vec![2, 1, 4, 5], vec![2, 3, 1, 1]),
        (74, vec![2, 3, 4, 5], vec![]),
        (75, vec![], vec![]),
    ] {
        let mut c = Case::new(seed);
        let x = c.input("a", &a);
        let g = c.input("b", &b);
        let y = c.op(Op::Mul, &[x, g]);
        c.check(y);
    }
    // A square: both adjoints reach the same leaf.
    let mut c = Case::new(76);
    let x = c.leaf("x", &[1, 2, 3, 3]);
    let y = c.op(Op::Mul, &[x, x]);
    c.check(y);
}

#[test]
fn sigmoid_gradients() {
    let mut c = Case::new(80);
    let x = c.leaf("x", &[2, 3, 4, 5]);
    let y = c.op(Op::Sigmoid, &[x]);
    c.check(y);
}

#[test]
fn avg_pool_gradients() {
    for (seed, dims, k, s, pad, include) in [
        (90, [1, 2, 7, 9], 3, 2, [1, 1, 1, 1], true),
        (91, [1, 2, 7, 9], 3, 2, [1, 1, 1, 1], false),
        (92, [2, 1, 7, 6], 5, 1, [2, 2, 2, 2], false),
        (93, [1, 2, 7, 9], 2, 2, [0, 0, 0, 0], true),
        (94, [1, 1, 7, 9], 3, 2, [1, 0, 0, 1], false),
    ] {
        let mut c = Case::new(seed);
        let x = c.leaf("x", &dims);
        let y = c.op(
            Op::AvgPool2d {
                kernel: [k; 2],
                stride: [s; 2],
                pad,
                count_include_pad: include,
            },
            &[x],
        );
        c.check(y);
    }
}

#[test]
fn global_avg_pool_gradients() {
    let mut c = Case::new(100);
    let x = c.leaf("x", &[2, 3, 5, 7]);
    let y = c.op(Op::GlobalAvgPool2d, &[x]);
    c.check(y);
}

/// Channel attention and a concatenation, as in tests/programs/attention.rfn: every new
/// rule composed, with `a` and `b` reaching the loss along several paths.
#[test]
fn attention_gate_gradients() {
    let mut c = Case::new(110);
    let a = c.leaf("a", &[1, 3, 4, 5]);
    let b = c.leaf("b", &[1, 3, 4, 5]);
    let pooled = c.op(Op::GlobalAvgPool2d, &[b]);
    let gate = c.op(Op::Sigmoid, &[pooled]);
    let gated = c.op(Op::Mul, &[a, gate]);
    let joined = c.op(Op::Concat, &[gated, b]);
    let y = c.op(
        Op::AvgPool2d {
            kernel: [3, 3],
            stride: [1, 1],
            pad: [1, 1, 1, 1],
            count_include_pad: false,
        },
        &[joined],
    );
    c.check(y);
}
