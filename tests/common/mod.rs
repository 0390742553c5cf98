//! Helpers shared by the end-to-end tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use std::collections::HashMap;

use rfnc_bundle::Mode;
use rfnc_compiler::interp::{Precision, Real, Tensor, Value};
use rfnc_compiler::ir::{verify, Graph, NodeId, Op};
use rfnc_compiler::rng::splitmix64;
use rfnc_dsl::{elaborate, load_file, Options, Program};

use rfnc_driver::weights::init_weights;

pub const EXAMPLES: &[&str] = &[
    "tiny",
    "refinenet1",
    "refinenet2",
    "refinenet4",
    "refinenet4_2scale",
    "refinenet4_depth",
];

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Relative path of an example, as users type it (tests run from the workspace root).
pub fn example_path(name: &str) -> PathBuf {
    PathBuf::from("examples").join(format!("{name}.rfn"))
}

pub fn load(path: &Path) -> Program {
    match load_file(path) {
        Ok(p) => p,
        Err((d, sources)) => panic!("{}", d.render(&sources)),
    }
}

/// Elaborates and verifies an example with the given input and `-D` settings.
pub fn graph(name: &str, input: &[u64], defines: &[(&str, &str)]) -> Graph {
    let program = load(&example_path(name));
    let options = Options {
        input: input.to_vec(),
        defines: defines
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let graph = match elaborate(&program, &options) {
        Ok(g) => g,
        Err(d) => panic!("{}", d.render(&program.sources)),
    };
    let errors = verify(&graph);
    assert!(errors.is_empty(), "{name}: verifier: {errors:?}");
    graph
}

/// A synthetic dataset in `layout` (`rfnc dataset`) under a fresh directory: the directory
/// (kept alive by the caller) and the dataset's root.
pub fn dataset(layout: &str, train: usize, val: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join(layout);
    let (t, v) = (train.to_string(), val.to_string());
    let root_arg = root.to_str().unwrap();
    let out = rfnc(&[
        "dataset", layout, "-o", root_arg, "--train", &t, "--val", &v,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    (dir, root)
}

/// The kernel cache every test run of rfnc shares (so each kernel is compiled once).
pub fn test_cache_dir() -> PathBuf {
    root().join("target").join("rfnc-test-cache")
}

/// Runs the rfnc binary from the workspace root, with the tests' kernel cache.
pub fn rfnc<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    rfnc_with_env(args, &[])
}

/// [`rfnc`] with extra environment variables.
pub fn rfnc_with_env<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rfnc"))
        .args(args)
        .current_dir(root())
        .env("RFNC_CACHE_DIR", test_cache_dir())
        .envs(env.iter().copied())
        .output()
        .expect("rfnc runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `mlir-opt-22`: $RFNC_MLIR_OPT, then the Debian location, then PATH. The set-up installs
/// it, so a missing one fails the test (never a silent pass).
pub fn mlir_opt() -> PathBuf {
    let candidates = [
        std::env::var("RFNC_MLIR_OPT").ok().map(PathBuf::from),
        Some(PathBuf::from("/usr/lib/llvm-22/bin/mlir-opt")),
        which("mlir-opt-22"),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .expect(
            "mlir-opt-22 not found: install mlir-22-tools (scripts/setup.sh, run by ./dev test)",
        )
}

/// Feeds `text` to `mlir-opt ARGS -o /dev/null` and fails the test, naming `what`, unless
/// mlir-opt accepts it.
pub fn assert_mlir_opt_accepts(text: &str, args: &[&str], what: &str) {
    use std::io::Write;
    let mut child = Command::new(mlir_opt())
        .args(args)
        .args(["-o", "/dev/null", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mlir-opt starts");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).expect("write to mlir-opt");
    drop(stdin);
    let out = child.wait_with_output().expect("mlir-opt finishes");
    assert!(
        out.status.success(),
        "mlir-opt rejected {what}: {}",
        stderr(&out)
    );
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Deterministic inputs for a graph: initial weights, a random image, labels with a few
/// ignored pixels (or a depth map with holes), and the step counter.
pub fn feeds<T: Real>(graph: &Graph, seed: u64) -> HashMap<String, Value<T>> {
    let mut feeds = HashMap::new();
    for (name, (dims, data)) in init_weights(graph, seed).tensors {
        feeds.insert(
            name,
            Value::Real(Tensor::new(
                dims,
                data.iter().map(|&v| T::of(v as f64)).collect(),
            )),
        );
    }
    let mut counter = seed.wrapping_mul(1000);
    let mut uniform = || {
        counter += 1;
        (splitmix64(counter) >> 11) as f64 / (1u64 << 53) as f64
    };
    for id in graph.node_ids() {
        let node = graph.node(id);
        let Op::Input { name } = &node.op else {
            continue;
        };
        let n = node.ty.elements() as usize;
        let value = match (name.as_str(), node.ty.dtype) {
            ("step", _) => Value::Int(Tensor::scalar(7)),
            ("lr_factor", _) => Value::Real(Tensor::scalar(T::of(0.75))),
            ("labels", _) => Value::Int(Tensor::new(
                node.ty.dims.clone(),
                (0..n)
                    .map(|i| {
                        if i % 17 == 0 {
                            255
                        } else {
                            (uniform() * 3.0) as i32
                        }
                    })
                    .collect(),
            )),
            (_, rfnc_compiler::ir::DType::F32) => Value::Real(Tensor::new(
                node.ty.dims.clone(),
                (0..n)
                    .map(|i| {
                        if name == "depth_gt" && i % 11 == 0 {
                            T::zero()
                        } else {
                            T::of(
                                uniform() * 2.0 - 1.0 + if name == "depth_gt" { 2.0 } else { 0.0 },
                            )
                        }
                    })
                    .collect(),
            )),
            _ => unreachable!("inputs are f32 or labels"),
        };
        feeds.insert(name.clone(), value);
    }
    feeds
}

pub fn trainable(graph: &Graph) -> Vec<(String, NodeId)> {
    let order = graph.topo_order().unwrap();
    order
        .into_iter()
        .filter_map(|id| match &graph.node(id).op {
            Op::Param { name, kind } if kind.is_trainable() => Some((name.clone(), id)),
            _ => None,
        })
        .collect()
}

/// Input of the small end-to-end runs of compiled networks.
pub const SMALL_INPUT: &[u64] = &[1, 3, 32, 32];

/// `-D` settings of the small runs: narrow widths for every RefineNet example.
pub fn small_defines(example: &str) -> Vec<(&'static str, &'static str)> {
    if example == "tiny" {
        Vec::new()
    } else {
        vec![("depth", "50"), ("base_width", "2"), ("refine_width", "4")]
    }
}

/// The forward graph and the training step of an example at the small settings, exactly
/// as `rfnc compile --train` builds them (the network's own SGD settings, seed 0).
pub fn small_graphs(example: &str) -> (Graph, Graph) {
    let source = rfnc_driver::Source {
        file: example_path(example),
        input: SMALL_INPUT
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x"),
        defines: small_defines(example)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
    };
    let log = rfnc_driver::Log::default();
    let network = rfnc_driver::Network::elaborate(&source, &log)
        .unwrap_or_else(|e| panic!("{example}: {e:?}"));
    let step = network
        .train_step(&rfnc_driver::TrainSettings::default(), &log)
        .unwrap_or_else(|e| panic!("{example}: {e:?}"));
    (network.forward, step)
}

/// [`feeds`] with frozen statistics and scales that are not the identity, so that folding
/// batch norm has something to fold.
pub fn perturbed_feeds(graph: &Graph) -> HashMap<String, Value<f64>> {
    let mut feeds: HashMap<String, Value<f64>> = feeds(graph, 9);
    for (k, v) in feeds.iter_mut() {
        if k.ends_with("running_var") || k.ends_with("running_mean") || k.ends_with(".weight") {
            let Value::Real(t) = v else { continue };
            if t.dims.len() == 1 {
                for (i, x) in t.data.iter_mut().enumerate() {
                    *x += 0.1 + (i % 7) as f64 * 0.05;
                }
            }
        }
    }
    feeds
}

/// The largest difference between `got` and `want`, relative to the largest magnitude of
/// `want` (at least `floor`); infinite where one holds a NaN or infinity the other does not
/// (`f64::max` would skip a NaN and let it pass).
pub fn relative_error<T: Into<f64> + Copy>(got: &[T], want: &[T], floor: f64) -> f64 {
    let scale = want.iter().fold(floor, |m, &v| m.max(v.into().abs()));
    let worst = got.iter().zip(want).fold(0.0f64, |m, (&a, &b)| {
        let (a, b): (f64, f64) = (a.into(), b.into());
        let same = a == b || (a.is_nan() && b.is_nan());
        match (a - b).abs() {
            _ if same => m,
            d if d.is_nan() => f64::INFINITY,
            d => m.max(d),
        }
    });
    worst / scale
}

/// Runs `graph` on perturbed feeds with the reference interpreter and with `execute`, and
/// asserts that every output agrees (relative 1e-4).
pub fn assert_matches_interpreter(
    what: &str,
    graph: &Graph,
    execute: impl FnOnce(&HashMap<String, Value<f64>>) -> HashMap<String, Vec<f64>>,
) {
    let feeds = perturbed_feeds(graph);
    let expected = rfnc_compiler::interp::run(graph, &feeds).expect("the interpreter runs");
    assert_outputs_match(what, &execute(&feeds), &expected);
}

/// What a compiled program computes, by the interpreter, with its convolutions multiplying
/// in `precision`. For TF32 and BF16 the convolutions' operands are rounded, the
/// interpreter runs in f32 as the kernels do (in f64, values a kernel computes in f32 would
/// more often round to the neighbouring TF32 or BF16 value: the rounding is discontinuous),
/// and in an inference program batch norm is first folded into the convolutions as the
/// prepare program folds it, so that the folded weights are what is rounded.
pub fn reference_outputs(
    graph: &Graph,
    feeds: &HashMap<String, Value<f64>>,
    mode: Mode,
    precision: Precision,
) -> Vec<(String, Value<f64>)> {
    use rfnc_compiler::interp::{run, run_in};
    if precision == Precision::F32 {
        return run_in(graph, feeds, precision).expect("the interpreter runs");
    }
    let folded = rfnc_compiler::passes::canonical::fold_batch_norm(graph);
    let (graph, feeds) = if mode == Mode::Train || folded.folded == 0 {
        (graph, feeds.clone())
    } else {
        let mut feeds = feeds.clone();
        feeds.extend(
            run(&folded.prepare, &feeds).expect("the interpreter runs the prepare program"),
        );
        (&folded.graph, feeds)
    };
    let feeds: HashMap<String, Value<f32>> =
        feeds.into_iter().map(|(k, v)| (k, convert(v))).collect();
    let outputs = run_in(graph, &feeds, precision).expect("the interpreter runs");
    outputs.into_iter().map(|(k, v)| (k, convert(v))).collect()
}

/// A value in another real type.
fn convert<A: Real, B: Real>(v: Value<A>) -> Value<B> {
    match v {
        Value::Real(t) => Value::Real(Tensor::new(
            t.dims,
            t.data.into_iter().map(|x| B::of(x.f64())).collect(),
        )),
        Value::Int(t) => Value::Int(t),
    }
}

/// [`assert_matches_interpreter`] against [`reference_outputs`] in `precision`, with the
/// tolerance of [`assert_outputs_match_in`].
pub fn assert_matches_interpreter_in(
    what: &str,
    graph: &Graph,
    (mode, precision): (Mode, Precision),
    execute: impl FnOnce(&HashMap<String, Value<f64>>) -> HashMap<String, Vec<f64>>,
) {
    let feeds = perturbed_feeds(graph);
    let expected = reference_outputs(graph, &feeds, mode, precision);
    assert_outputs_match_in(what, (mode, precision), &execute(&feeds), &expected);
}

pub fn assert_outputs_match(
    what: &str,
    actual: &HashMap<String, Vec<f64>>,
    expected: &[(String, Value<f64>)],
) {
    assert_outputs_match_in(what, (Mode::Inference, Precision::F32), actual, expected)
}

/// The largest relative error (against the largest magnitude of each output) allowed
/// between a compiled program of `mode` whose convolutions multiply in `precision` and
/// [`reference_outputs`]: 1e-4, except for training steps on tensor cores: 1e-2. Rounding
/// to TF32 or BF16 is discontinuous: an operand that a kernel sums in another order than
/// the interpreter (differing in the 7th digit) can round to the neighbouring TF32 value,
/// 2^-11 away (BF16: 2^-8), and the gradients, sums of many such products with much
/// cancellation, show it: refinenet4_multitask's TF32 training step differs by 2.6e-3 in
/// a bias gradient's momentum, refinenet1's by 9e-4 in a weight gradient (most examples' by
/// less than 2e-5; BF16's by less than 1e-6). Against an f64 interpreter the steps differ
/// by up to 1.2e-3 (TF32) and 0.45 (BF16, a bias gradient of refinenet4_2scale): the
/// interpreter itself differs that much between f32 and f64. A wrong fragment layout,
/// lane, rounding or wait shows as errors of 0.1 and more; single convolutions on the same
/// rounded operands are held to 1e-4 (compiler/tests/gemm.rs), as is inference, so a
/// missing rounding (5e-4) cannot hide behind this bound. Rerun the figures with
/// `RFNC_TEST_PRINT_ERRORS=1 cargo test --release --test lowering --test codegen --
/// --nocapture` (the f64 ones were measured once, with the interpreter run in both types).
pub fn tolerance(mode: Mode, precision: Precision) -> f64 {
    match (mode, precision) {
        (Mode::Train, Precision::Tf32 | Precision::Bf16) => 1e-2,
        _ => 1e-4,
    }
}

/// [`assert_outputs_match`] within [`tolerance`].
pub fn assert_outputs_match_in(
    what: &str,
    (mode, precision): (Mode, Precision),
    actual: &HashMap<String, Vec<f64>>,
    expected: &[(String, Value<f64>)],
) {
    let bound = tolerance(mode, precision);
    assert_eq!(actual.len(), expected.len(), "{what}: outputs");
    for (name, value) in expected {
        let want = &value.real().data;
        let got = &actual[name];
        assert_eq!(got.len(), want.len(), "{what}: `{name}` size");
        let error = relative_error(got, want, 1e-6);
        // The figures quoted for `tolerance`: RFNC_TEST_PRINT_ERRORS=1 ... -- --nocapture.
        if std::env::var_os("RFNC_TEST_PRINT_ERRORS").is_some() {
            eprintln!("{what}: `{name}` relative error {error:e}");
        }
        assert!(
            error < bound,
            "{what}: output `{name}` differs from the interpreter by {error:e} (relative)"
        );
    }
}
