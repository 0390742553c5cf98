//! The reference interpreter against PyTorch: forward and backward of every fixture in
//! tests/fixtures/torch (made by tools/gen_torch_fixtures.py), in f64 and in f32.
//!
//! Each fixture holds the op's operands, its output `y`, an upstream gradient `grad_y` and
//! the operand gradients of `sum(y * grad_y)`. The op is rebuilt from the fixture's `op` and
//! `attrs` through the IR text parser, so shape inference is checked against PyTorch's
//! output shape too. Gradients are the vector-Jacobian product with `grad_y` fed as the
//! output's adjoint.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use rfnc_compiler::interp::{run, Real, Tensor, Value};
use rfnc_compiler::ir::{parse_graph, verify, Loc, NodeId, Op, Output, TensorType};
use rfnc_compiler::passes::autodiff::vector_jacobian;
use safetensors::{Dtype, SafeTensors};

struct Fixture {
    name: String,
    op: String,
    attrs: String,
    operands: Vec<String>,
    real: HashMap<String, Tensor<f64>>,
    ints: HashMap<String, Tensor<i32>>,
}

fn fixtures() -> Vec<Fixture> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture folder")
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
            let meta = meta.metadata().clone().expect("fixture metadata");
            let file = SafeTensors::deserialize(&bytes).unwrap();
            let mut real = HashMap::new();
            let mut ints = HashMap::new();
            for (name, view) in file.tensors() {
                let dims: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
                match view.dtype() {
                    Dtype::F64 => {
                        let data = view
                            .data()
                            .chunks_exact(8)
                            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                            .collect();
                        real.insert(name, Tensor::new(dims, data));
                    }
                    Dtype::I32 => {
                        let data = view
                            .data()
                            .chunks_exact(4)
                            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                            .collect();
                        ints.insert(name, Tensor::new(dims, data));
                    }
                    other => panic!("{}: unexpected dtype {other:?}", path.display()),
                }
            }
            Fixture {
                name: path.file_stem().unwrap().to_string_lossy().into_owned(),
                op: meta["op"].clone(),
                attrs: meta["attrs"].clone(),
                operands: meta["operands"].split(',').map(str::to_string).collect(),
                real,
                ints,
            }
        })
        .collect()
}

fn ty(dims: &[u64], int: bool) -> String {
    TensorType::new(
        if int {
            rfnc_compiler::ir::DType::I32
        } else {
            rfnc_compiler::ir::DType::F32
        },
        dims.to_vec(),
    )
    .to_string()
}

/// The fixture's op as a graph whose inputs are its operands and whose output is `y`.
fn graph_of(f: &Fixture) -> rfnc_compiler::ir::Graph {
    let mut text = String::from("\"rfn.graph\"() ({\n");
    let mut types = Vec::new();
    for (i, name) in f.operands.iter().enumerate() {
        let (dims, int) = match f.real.get(name) {
            Some(t) => (t.dims.clone(), false),
            None => (f.ints[name].dims.clone(), true),
        };
        let t = ty(&dims, int);
        text +=
            &format!("  %{i} = \"rfn.input\"() {{name = \"{name}\"}} : () -> {t} loc(unknown)\n");
        types.push(t);
    }
    let args: Vec<String> = (0..f.operands.len()).map(|i| format!("%{i}")).collect();
    let y = ty(&f.real["y"].dims, false);
    let n = f.operands.len();
    text += &format!(
        "  %{n} = \"rfn.{}\"({}) {} : ({}) -> {y} loc(unknown)\n",
        f.op,
        args.join(", "),
        f.attrs,
        types.join(", ")
    );
    text += &format!("  \"rfn.return\"(%{n}) {{names = [\"y\"]}} : ({y}) -> ()\n}}) {{sym_name = \"{}\"}} : () -> ()\n", f.name);
    let g = parse_graph(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", f.name));
    let errors = verify(&g);
    assert!(
        errors.is_empty(),
        "{}: shape inference disagrees with PyTorch: {errors:?}",
        f.name
    );
    g
}

fn cast<T: Real>(t: &Tensor<f64>) -> Tensor<T> {
    Tensor::new(t.dims.clone(), t.data.iter().map(|&v| T::of(v)).collect())
}

/// max |a - b| / max |b|: the error relative to the reference's scale.
fn relative_error<T: Real>(actual: &Tensor<T>, expected: &Tensor<f64>) -> f64 {
    assert_eq!(actual.dims, expected.dims);
    let scale = expected
        .data
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(1e-30);
    let worst = common::max_abs_diff(
        actual
            .data
            .iter()
            .map(|a| a.f64())
            .zip(expected.data.iter().copied()),
    );
    if expected.data.iter().all(|v| *v == 0.0) {
        worst
    } else {
        worst / scale
    }
}

fn check<T: Real>(f: &Fixture, tolerance: f64) {
    let mut g = graph_of(f);
    let mut feeds: HashMap<String, Value<T>> = HashMap::new();
    for name in &f.operands {
        match f.real.get(name) {
            Some(t) => feeds.insert(name.clone(), Value::Real(cast(t))),
            None => feeds.insert(name.clone(), Value::Int(f.ints[name].clone())),
        };
    }
    // Forward.
    let y = &run(&g, &feeds).unwrap()[0].1;
    let e = relative_error(y.real(), &f.real["y"]);
    assert!(e < tolerance, "{}: forward relative error {e:e}", f.name);

    // Backward: differentiate w.r.t. every operand that has a reference gradient and that
    // the op differentiates (frozen batch-norm statistics and affine have none).
    let op_node = g.output("y").unwrap();
    let leaves: Vec<(String, NodeId)> = g
        .node_ids()
        .filter_map(|id| match &g.node(id).op {
            Op::Input { name } => Some((name.clone(), id)),
            _ => None,
        })
        .collect();
    let differentiable = |name: &str| !(f.op == "batch_norm" && name != "x");
    let wrt: Vec<(String, NodeId)> = leaves
        .into_iter()
        .filter(|(name, _)| f.real.contains_key(&format!("grad_{name}")) && differentiable(name))
        .collect();
    assert!(!wrt.is_empty(), "{}: nothing to differentiate", f.name);
    let dims = f.real["y"].dims.clone();
    let dy = g.add(
        Op::Input {
            name: "grad_y".into(),
        },
        &[],
        TensorType::f32(dims),
        Loc::default(),
    );
    feeds.insert("grad_y".into(), Value::Real(cast(&f.real["grad_y"])));
    let ids: Vec<NodeId> = wrt.iter().map(|(_, id)| *id).collect();
    let grads = vector_jacobian(&mut g, op_node, dy, &ids).unwrap();
    g.outputs = wrt
        .iter()
        .zip(&grads)
        .map(|((n, _), d)| Output {
            name: n.clone(),
            value: d.expect("gradient"),
        })
        .collect();
    assert!(verify(&g).is_empty(), "{}: {:?}", f.name, verify(&g));
    for (name, value) in run(&g, &feeds).unwrap() {
        let e = relative_error(value.real(), &f.real[&format!("grad_{name}")]);
        assert!(
            e < tolerance,
            "{}: gradient of `{name}` relative error {e:e}",
            f.name
        );
    }
}

#[test]
fn interpreter_matches_pytorch_in_f64() {
    let all = fixtures();
    assert!(all.len() >= 47, "fixtures present: {}", all.len());
    for f in &all {
        check::<f64>(f, 1e-9);
    }
}

#[test]
fn interpreter_matches_pytorch_in_f32() {
    for f in &fixtures() {
        check::<f32>(f, 1e-5);
    }
}

#[test]
fn fixtures_cover_every_op_family() {
    let ops: std::collections::BTreeSet<String> = fixtures().into_iter().map(|f| f.op).collect();
    for op in [
        "conv2d",
        "max_pool2d",
        "resize_bilinear",
        "softmax_cross_entropy",
        "least_squares",
        "batch_norm",
        "relu",
        "concat",
        "mul",
        "sigmoid",
        "avg_pool2d",
        "global_avg_pool2d",
    ] {
        assert!(ops.contains(op), "a fixture for {op}");
    }
}
